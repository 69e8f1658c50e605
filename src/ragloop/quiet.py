"""What a user sees of progress: ragloop's own bars on when asked, transformers' bars kept out.

    >>> tqdm(items, disable=bar_disabled(progress))   # progress None: a bar only on a TTY

    >>> from ragloop.quiet import quiet_transformers
    >>> with quiet_transformers():
    ...     model = AutoModel.from_pretrained(path)   # no "Loading weights" bar

transformers draws a bar each time it loads or saves weights ("Loading weights", "Writing model
shards"): opening one index or one RAG folder drew two or three. To someone who asked ragloop for
an index or a model they are noise; ragloop draws its own bars where a person waits (encoding,
training, evaluation). The bars are off only while ragloop itself loads or saves a model, and the
setting the user had is restored afterwards, so the user's own `from_pretrained` calls keep theirs.
Warnings are left alone: ragloop avoids deprecated transformers arguments instead of hiding them.

    >>> with keep_log_level("bm25s"):
    ...     import bm25s                               # it sets its logger to DEBUG; the level set before stays
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0  # nested or concurrent (server threads) loads share one switch
_restore = False


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars inside the block (also usable as a decorator)."""
    global _depth, _restore
    from transformers.utils import logging as hf_logging

    with _lock:
        if _depth == 0:
            _restore = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore:
                hf_logging.enable_progress_bar()


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's `disable` for a `progress` flag: True shows a bar, False hides it, None leaves it to tqdm
    (a bar only when the output is a terminal)."""
    return None if progress is None else not progress


@contextlib.contextmanager
def keep_log_level(name: str) -> Iterator[None]:
    """The logger `name` keeps its level through the block: for importing a library that sets its own
    logger's level when imported (bm25s: DEBUG), which would undo what the application chose."""
    logger = logging.getLogger(name)
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)
