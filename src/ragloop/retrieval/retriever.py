"""Search an index: dense (FAISS), sparse (BM25) or hybrid.

    >>> from ragloop import Retriever
    >>> r = Retriever.from_index("runs/squad-index")
    >>> hits = r.search(["Who won Super Bowl 50?"], k=5, mode="hybrid")[0]
    >>> hits[0].passage.title, hits[0].score
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.retrieval.hybrid import fuse
from ragloop.retrieval.index import Index

if TYPE_CHECKING:  # encoders import torch; BM25-only search never needs them
    from ragloop.retrieval.encoders import Encoder

MODES = ("dense", "bm25", "hybrid")
FUSION_DEPTH = 100


@dataclass
class Hit:
    passage: Passage
    score: float
    row: int

    def to_dict(self) -> dict:
        p = self.passage
        return {"id": p.id, "doc_id": p.doc_id, "title": p.title, "text": p.text, "score": self.score}


def check_questions(questions: list[str]) -> None:
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise RagloopError(f"question {i} is empty")


class Retriever:
    """Questions in, ranked passages out. One encoder object is reused for every call."""

    def __init__(self, index: Index, question_encoder: Encoder | None = None, fusion: str = "rrf",
                 weight: float = 0.5) -> None:
        self.index = index
        self._question_encoder = question_encoder
        self.fusion = fusion
        self.weight = weight

    @classmethod
    def from_index(cls, path: str | Path, encoder: str | None = None, verify: bool = True, **kwargs) -> Retriever:
        """Open an index folder. `encoder` overrides the question encoder recorded in its manifest and
        is checked against it (another model or dimension is an error)."""
        index = Index.load(path, verify=verify)
        question = None
        if encoder is not None:
            from ragloop.retrieval.encoders import BiEncoder

            question = BiEncoder.from_pretrained(encoder).question
            index.check_question_encoder(question)
        return cls(index, question, **kwargs)

    @property
    def question_encoder(self) -> Encoder:
        """Loaded on first dense use, so BM25-only search never loads a model."""
        if self._question_encoder is None:
            encoder = self.index.load_encoder().question
            self.index.check_question_encoder(encoder)  # the weights at that name may have changed
            self._question_encoder = encoder
        return self._question_encoder

    def encode(self, questions: list[str], batch_size: int = 128, progress: bool | None = False) -> np.ndarray:
        return self.question_encoder.encode(questions, batch_size=batch_size, progress=progress,
                                            desc="encoding questions")

    def search_rows(self, questions: list[str], k: int = 5, mode: str = "dense",
                    progress: bool | None = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) arrays of shape (len(questions), k); rows are -1 where nothing was found."""
        if mode not in MODES:
            raise RagloopError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        if k < 1:
            raise RagloopError(f"k must be at least 1 (got {k})")
        check_questions(questions)
        if mode in ("bm25", "hybrid") and self.index.bm25 is None:
            raise RagloopError(f"{self.index.path}: built without BM25; rebuild it to use mode {mode!r}")
        depth = max(k, FUSION_DEPTH) if mode == "hybrid" else k
        if mode == "bm25":
            return self.index.bm25.search(questions, k)
        dense = self.index.search(self.encode(questions, progress=progress), depth)
        if mode == "dense":
            return dense
        return fuse(dense, self.index.bm25.search(questions, depth), k, self.fusion, self.weight)

    def search(self, questions: str | list[str], k: int = 5, mode: str = "dense") -> list[list[Hit]]:
        single = isinstance(questions, str)
        batch = [questions] if single else list(questions)
        scores, rows = self.search_rows(batch, k, mode)
        wanted = [int(r) for r in rows.reshape(-1) if r >= 0]
        passages = dict(zip(wanted, self.index.store.get_rows(wanted)))
        out = [
            [Hit(passages[int(r)], float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores, rows)
        ]
        return out
