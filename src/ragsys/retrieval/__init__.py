"""Retrieval: encoders, the FAISS index folder, the passage store, BM25 and hybrid fusion."""

from ragsys.retrieval.bm25 import BM25Index
from ragsys.retrieval.encoders import DEFAULT_ENCODER, BiEncoder, Encoder
from ragsys.retrieval.index import Index
from ragsys.retrieval.retriever import Hit, Retriever
from ragsys.retrieval.store import PassageStore

__all__ = ["DEFAULT_ENCODER", "BM25Index", "BiEncoder", "Encoder", "Hit", "Index", "PassageStore", "Retriever"]
