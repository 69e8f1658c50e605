"""What the framework adapters share: importing the framework (or one error naming ragloop's extra for
it), building the wrapped `Retriever`, and a hit's metadata.

    >>> retrievers = require("langchain_core.retrievers", "langchain", "langchain-core")
    >>> hit_metadata(hit)
    {'score': 12.3, 'id': '...', 'title': 'Super Bowl 50', 'source': 'dev.json', 'doc_id': '...', 'row': 4}
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ragloop.errors import RagloopError
from ragloop.retrieval.retriever import Hit, Retriever, check_k


def require(module: str, extra: str, package: str) -> ModuleType:
    """`module` imported, or a RagloopError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RagloopError(f"this needs {package} ({module} could not be imported: {e}); "
                           f"install it with: pip install 'ragloop[{extra}]'") from None


def checked_retriever(retriever, k) -> tuple[Retriever, int]:
    """(the ragloop `Retriever`, k) after checking both: one clear error for anything else."""
    if not isinstance(retriever, Retriever):
        raise RagloopError(f"retriever must be a ragloop Retriever (got {type(retriever).__name__}); open an index "
                           "with `from_index(path)`")
    return retriever, check_k(k)


def open_retriever(path: str | os.PathLike, **kwargs) -> Retriever:
    """`Retriever.from_index(path, **kwargs)`: mode, fusion, weight, rerank, rerank_depth, encoder, quantize."""
    return Retriever.from_index(path, **kwargs)


def hit_metadata(hit: Hit) -> dict:
    """The metadata a framework document carries for one hit (the text goes in the document itself)."""
    p = hit.passage
    return {"score": hit.score, "id": p.id, "title": p.title, "source": p.source, "doc_id": p.doc_id, "row": hit.row}
