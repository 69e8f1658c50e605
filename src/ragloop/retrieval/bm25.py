"""BM25 over the same passages as the dense index (bm25s: sparse-matrix BM25, English stemming)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import Stemmer

from ragloop.errors import RagloopError
from ragloop.quiet import keep_log_level

with keep_log_level("bm25s"):  # bm25s sets its logger to DEBUG when imported: the level chosen before stays
    import bm25s


class BM25Index:
    """    >>> bm25 = BM25Index.build(["title. passage text", ...])
    >>> scores, rows = bm25.search(["who wrote hamlet"], k=10)   # rows: -1 where nothing matched
    """

    def __init__(self, retriever: bm25s.BM25, language: str = "english") -> None:
        self.retriever = retriever
        self.language = language
        self.stemmer = Stemmer.Stemmer(language)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False)

    @classmethod
    def build(cls, texts: list[str], language: str = "english") -> BM25Index:
        index = cls(bm25s.BM25(), language)
        index.retriever.index(index._tokens(texts), show_progress=False)
        return index

    def save(self, path: str | Path) -> None:
        self.retriever.save(str(path))

    @classmethod
    def load(cls, path: str | Path, language: str = "english") -> BM25Index:
        try:
            return cls(bm25s.BM25.load(str(path)), language)
        except Exception as e:
            raise RagloopError(f"{path}: cannot read the BM25 index ({type(e).__name__}: {e})") from None

    @property
    def size(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (len(queries), k); rows are -1 where fewer than k passages match."""
        k_eff = min(k, self.size)
        vocab = self.retriever.vocab_dict
        tokens = [[t for t in q if t in vocab] for q in self._tokens(queries)]
        scores = np.zeros((len(queries), k), dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        todo = [i for i, t in enumerate(tokens) if t]
        if todo and k_eff:
            docs, sc = self.retriever.retrieve([tokens[i] for i in todo], k=k_eff, show_progress=False, n_threads=1)
            hit = sc > 0
            scores[todo, :k_eff] = np.where(hit, sc, 0.0)
            rows[todo, :k_eff] = np.where(hit, docs, -1)
        return scores, rows
