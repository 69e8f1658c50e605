"""Lazy package attributes: `from ragloop import RAG` works, but torch and transformers load only when
a name that needs them is first used, so `ragloop --help` or a BM25 search starts in a fraction of a
second.

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"RAG": "ragloop.model", "Index": "ragloop.retrieval.index"})

A package's `__init__.py` calls this with {public name: module that defines it}; the first access
imports that module and caches the attribute in the package, so later accesses cost nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for the package module `package`, resolving `names` on first use."""

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:  # a submodule, as `import ragloop; ragloop.retrieval.Index` reached it before
            if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
