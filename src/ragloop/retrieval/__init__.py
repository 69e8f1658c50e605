"""Retrieval: encoders, the FAISS index folder, the passage store, BM25, hybrid fusion and reranking."""

from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.encoders import DEFAULT_ENCODER, BiEncoder, Encoder
from ragloop.retrieval.index import Index
from ragloop.retrieval.rerank import Reranker
from ragloop.retrieval.retriever import Hit, Retriever
from ragloop.retrieval.store import PassageStore

__all__ = ["DEFAULT_ENCODER", "BM25Index", "BiEncoder", "Encoder", "Hit", "Index", "PassageStore", "Reranker",
           "Retriever"]
