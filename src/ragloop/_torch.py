"""Small torch helpers shared by the model, the generator and their callers (imports no ragloop module).

    >>> from ragloop._torch import eval_mode
    >>> with eval_mode(model):          # no dropout inside; each submodule's own mode restored after
    ...     ids = model.generate(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Switch modules to eval (no dropout) for a block, then restore each submodule's own mode."""
    before = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in before:
            m.training = mode
