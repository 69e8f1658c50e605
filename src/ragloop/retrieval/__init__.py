"""Retrieval: encoders, the FAISS index folder, the passage store, BM25, hybrid fusion and reranking.

Names load on first use (`ragloop._lazy`), so a BM25 search never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragloop._lazy import lazy_exports

_EXPORTS = {
    "BM25Index": "ragloop.retrieval.bm25",
    "DEFAULT_ENCODER": "ragloop.retrieval.encoders",
    "BiEncoder": "ragloop.retrieval.encoders",
    "Encoder": "ragloop.retrieval.encoders",
    "Index": "ragloop.retrieval.index",
    "IndexSettings": "ragloop.retrieval.settings",
    "Hit": "ragloop.retrieval.retriever",
    "Retriever": "ragloop.retrieval.retriever",
    "PassageStore": "ragloop.retrieval.store",
    "Reranker": "ragloop.retrieval.rerank",
}
__all__ = ["DEFAULT_ENCODER", "BM25Index", "BiEncoder", "Encoder", "Hit", "Index", "IndexSettings", "PassageStore",
           "Reranker", "Retriever"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from ragloop.retrieval.bm25 import BM25Index
    from ragloop.retrieval.encoders import DEFAULT_ENCODER, BiEncoder, Encoder
    from ragloop.retrieval.index import Index
    from ragloop.retrieval.rerank import Reranker
    from ragloop.retrieval.retriever import Hit, Retriever
    from ragloop.retrieval.settings import IndexSettings
    from ragloop.retrieval.store import PassageStore
