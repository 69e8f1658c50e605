"""A LlamaIndex retriever over a ragloop index (`pip install 'ragloop[llamaindex]'`).

    >>> from ragloop.integrations.llamaindex import RagloopRetriever
    >>> retriever = RagloopRetriever.from_index("runs/idx", k=4, mode="bm25")
    >>> nodes = retriever.retrieve("who won Super Bowl 50?")        # or: await retriever.aretrieve(...)
    >>> nodes[0].score, nodes[0].node.text, nodes[0].node.metadata["title"]

Or wrap a `Retriever` you already have: `RagloopRetriever(Retriever.from_index(...), k=4)`. Each
`NodeWithScore` holds a `TextNode` (id_: the passage id, text: its text; score, id, title, source, doc_id
and row in `metadata`, of which only title and source are shown to an LLM or an embedder), best first.
"""

from __future__ import annotations

import os
from typing import Any

from ragloop.integrations.common import checked_retriever, hit_metadata, open_retriever, require

_retrievers = require("llama_index.core.retrievers", "llamaindex", "llama-index-core")
_schema = require("llama_index.core.schema", "llamaindex", "llama-index-core")

HIDDEN = ["score", "id", "doc_id", "row"]  # metadata a reader of the node's content does not need


class RagloopRetriever(_retrievers.BaseRetriever):
    """LlamaIndex's `BaseRetriever` (retrieve, aretrieve, query engines) returning ragloop's top `k` passages."""

    def __init__(self, retriever, k: int = 4, mode: str | None = None, **base_kwargs: Any) -> None:
        self.retriever, self.k = checked_retriever(retriever, k)
        self.mode = mode
        super().__init__(**base_kwargs)

    @classmethod
    def from_index(cls, path: str | os.PathLike, k: int = 4, **retriever_kwargs: Any) -> RagloopRetriever:
        """Open an index folder; `retriever_kwargs` go to `Retriever.from_index` (mode, rerank, ...)."""
        return cls(open_retriever(path, **retriever_kwargs), k=k)

    def _retrieve(self, query_bundle) -> list:
        hits = self.retriever.search(query_bundle.query_str, k=self.k, mode=self.mode)[0]
        return [_schema.NodeWithScore(node=_schema.TextNode(id_=h.passage.id, text=h.passage.text,
                                                            metadata=hit_metadata(h),
                                                            excluded_llm_metadata_keys=HIDDEN,
                                                            excluded_embed_metadata_keys=HIDDEN),
                                      score=h.score) for h in hits]
