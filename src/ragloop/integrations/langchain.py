"""A LangChain retriever over a ragloop index (`pip install 'ragloop[langchain]'`).

    >>> from ragloop.integrations.langchain import RagloopRetriever
    >>> retriever = RagloopRetriever.from_index("runs/idx", k=4, mode="hybrid", rerank="runs/reranker")
    >>> docs = retriever.invoke("who won Super Bowl 50?")            # or: await retriever.ainvoke(...)
    >>> docs[0].page_content, docs[0].metadata["score"], docs[0].metadata["title"]

Or wrap a `Retriever` you already have: `RagloopRetriever(retriever=Retriever.from_index(...), k=4)`.
Each `Document` holds a passage's text, its id as `Document.id`, and score, id, title, source, doc_id
and row in `metadata`, best first. `mode` (dense, bm25, hybrid; None: the Retriever's own) overrides
the wrapped Retriever's search mode for this adapter only.
"""

from __future__ import annotations

import os
from typing import Any

from ragloop.integrations.common import checked_retriever, hit_metadata, open_retriever, require

_retrievers = require("langchain_core.retrievers", "langchain", "langchain-core")
_documents = require("langchain_core.documents", "langchain", "langchain-core")


class RagloopRetriever(_retrievers.BaseRetriever):
    """LangChain's `BaseRetriever` (invoke, ainvoke, batch, runnables) returning ragloop's top `k` passages."""

    retriever: Any  # a ragloop Retriever (pydantic cannot check it; __init__ does)
    k: int = 4
    mode: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retriever, self.k = checked_retriever(self.retriever, self.k)

    @classmethod
    def from_index(cls, path: str | os.PathLike, k: int = 4, **retriever_kwargs: Any) -> RagloopRetriever:
        """Open an index folder; `retriever_kwargs` go to `Retriever.from_index` (mode, rerank, ...)."""
        return cls(retriever=open_retriever(path, **retriever_kwargs), k=k)

    def _get_relevant_documents(self, query: str, *, run_manager: Any = None) -> list:
        hits = self.retriever.search(query, k=self.k, mode=self.mode)[0]
        return [_documents.Document(page_content=h.passage.text, id=h.passage.id, metadata=hit_metadata(h))
                for h in hits]
