"""First-stage rankings over a passage list held in memory: BM25, dense (exact q·d), hybrid (the two
fused by reciprocal rank, `ragloop.retrieval.hybrid.fuse`) and random. What the trainers draw negatives
from and what the reranker trainer's held-out split is scored over.

    >>> rankings = Rankings(questions, passages, dense_encoder=Encoder.from_pretrained(), seed=42)
    >>> rankings.rows("hybrid", depth=20)          # (n_questions, 20) passage rows, best first
    >>> rankings.rows("bm25", 20)                  # BM25's index is built once, the dense encodings too

A ranking is rows into `passages` (-1 where fewer passages than `depth` were found). Dense and hybrid
need a dense encoder; random draws each question's rows from a generator seeded by `seed`.
"""

from __future__ import annotations

import numpy as np

from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.encoders import Encoder
from ragloop.retrieval.folder import bm25_text
from ragloop.retrieval.hybrid import fuse

SOURCES = ("bm25", "dense", "hybrid", "random")


class Rankings:
    """The rankings of `questions` over `passages` by each source, each computed once at the deepest depth
    asked for so far (a shallower one is its prefix)."""

    def __init__(self, questions: list[str], passages: list[Passage], dense_encoder: Encoder | None = None,
                 seed: int = 0, progress: bool | None = False) -> None:
        self.questions, self.passages = questions, passages
        self.encoder, self.seed, self.progress = dense_encoder, seed, progress
        self._index: BM25Index | None = None
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None
        self._done: dict[str, np.ndarray] = {}

    def rows(self, source: str, depth: int) -> np.ndarray:
        """The top `depth` rows per question by `source` (one of SOURCES)."""
        if source not in SOURCES:
            raise RagloopError(f"unknown ranking {source!r}; choose one of {', '.join(SOURCES)}")
        depth = min(depth, len(self.passages))
        done = self._done.get(source)
        if done is None or done.shape[1] < depth:
            done = self._done[source] = getattr(self, f"_{source}")(depth)
        return done[:, :depth]

    def _bm25(self, depth: int) -> np.ndarray:
        if self._index is None:
            self._index = BM25Index.build([bm25_text(p) for p in self.passages])
        return self._index.search(self.questions, depth)[1]

    def _dense(self, depth: int, chunk: int = 1024) -> np.ndarray:
        """Exact inner products, in memory."""
        q, vectors = self._encoded()
        out = np.empty((len(self.questions), depth), dtype=np.int64)
        for start in range(0, len(self.questions), chunk):
            scores = q[start : start + chunk] @ vectors.T
            top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        return out

    def _hybrid(self, depth: int) -> np.ndarray:
        """Reciprocal-rank fusion (equal weights) of the dense and BM25 top `depth`: ranks only, no scores."""
        dense, sparse = self.rows("dense", depth), self.rows("bm25", depth)
        zeros = np.zeros(dense.shape, dtype=np.float32)
        return fuse((zeros, dense), (zeros[:, : sparse.shape[1]], sparse), depth, "rrf", 0.5)[1]

    def _random(self, depth: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, len(self.passages)])
        return np.stack([rng.choice(len(self.passages), depth, replace=False) for _ in self.questions]) \
            if self.questions else np.empty((0, depth), dtype=np.int64)

    def _encoded(self) -> tuple[np.ndarray, np.ndarray]:
        if self.encoder is None:
            raise RagloopError("dense and hybrid rankings need a dense encoder (--dense_encoder)")
        if self._vectors is None:
            ps = self.passages
            vectors = self.encoder.encode([p.title for p in ps], [p.text for p in ps], progress=self.progress,
                                          desc="encoding passages")
            q = self.encoder.encode(self.questions, progress=self.progress, desc="encoding questions")
            self._vectors = (q, vectors)
        return self._vectors
