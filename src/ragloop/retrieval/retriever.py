"""The one retrieval path: questions in, ranked passages out.

Every part of ragloop that retrieves (CLI search and eval, the RAG model in training and answering,
the server, `rag_system.py`, the benchmarks) calls `Retriever.retrieve`. It runs in stages:

    first stage   dense (FAISS), bm25, or hybrid (both, fused by rank or by normalised score)
    reranker      optional: a cross-encoder rescores the first stage's top `rerank_depth`; where its folder
                  saved a combination for the mode (rerank_fusion.py) the final score also weighs the first
                  stage's rank and score, or, where none beat the first stage on held-out questions, the
                  first stage's order is kept (`describe()["rerank_use"]` says which, per mode)

    >>> from ragloop import Retriever
    >>> r = Retriever.from_index("runs/squad-index", mode="hybrid")
    >>> got = r.retrieve(["Who won Super Bowl 50?"], k=5)
    >>> got.passages[0][0].title, got.scores[0][0]
    >>> r.search("Who won Super Bowl 50?", k=5)[0]      # the same as `Hit`s
    >>> r.search("Who won Super Bowl 50?")              # k left out: 5, or every passage of a smaller index

An explicit k larger than the index is an error (the caller asked for more than there is); the default
k is lowered to the index's size, and the retriever says so once in its log.

Scores are the last stage's: inner products (dense), BM25 scores, fused scores (hybrid), the
reranker's logits, or a saved combination's final scores (the first stage's where it falls back).
The RAG model passes its own question vectors (`vectors=`), so a question is encoded once, and
recomputes q·d over the rows it gets back for p(z|x).

With a cache (`cache=RetrievalCache(...)` or `cache_size=N`), `retrieve` wraps its own search with it:
results and question vectors are remembered per question under keys built in cache.py, and only the
questions missing from it are searched, in one batch. A caller's own `vectors=` are never served from it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ragloop.cache import module_state
from ragloop.constants import DEFAULT_SEARCH_K, FUSION_DEPTH, RERANK_DEPTH, SEARCH_MODES, reads_question_vectors
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.retrieval.cache import RESULT_FIELDS, RetrievalCache, results_settings, results_setup
from ragloop.retrieval.hybrid import check_fusion, fuse
from ragloop.retrieval.index import Index

if TYPE_CHECKING:  # encoders and the reranker import torch; BM25-only search never needs them
    from ragloop.retrieval.encoders import Encoder
    from ragloop.retrieval.rerank import Reranker

log = logging.getLogger(__name__)


@dataclass
class Hit:
    passage: Passage
    score: float
    row: int

    def to_dict(self) -> dict:
        p = self.passage
        return {"id": p.id, "doc_id": p.doc_id, "title": p.title, "text": p.text, "source": p.source,
                "score": self.score}


@dataclass
class Retrieved:
    """One retrieval for a batch of B questions, best first. `rows` and `scores` are [B, K] arrays;
    a row is -1 (and its score -inf) where fewer than K passages were found. `passages[b]` holds the
    found ones only, in rank order."""

    rows: np.ndarray
    scores: np.ndarray
    passages: list[list[Passage]]

    def hits(self) -> list[list[Hit]]:
        return [
            [Hit(p, float(s), int(r)) for p, s, r in zip(ps, srow, rrow)]
            for ps, srow, rrow in zip(self.passages, self.scores, self.rows)
        ]


def check_questions(questions) -> list[str]:
    """The questions as a list of non-empty strings, or one error naming the first that is not."""
    if isinstance(questions, str):
        questions = [questions]
    elif isinstance(questions, (bytes, bytearray, Mapping, set, frozenset)) or not hasattr(questions, "__iter__"):
        raise RagloopError(f"questions must be a string or a list of strings (got {type(questions).__name__})")
    questions = list(questions)
    for i, q in enumerate(questions):
        if not isinstance(q, str):
            raise RagloopError(f"question {i} is not a string (got {type(q).__name__})")
        if not q.strip():
            raise RagloopError(f"question {i} is empty")
    return questions


def passages_to_read(k, default: int, size: int, where: str | os.PathLike | None = None) -> int:
    """The k a search or a model reads: an explicit `k` checked against the index's `size` (larger is an
    error); None is `default` (a model's n_docs, a search's DEFAULT_SEARCH_K), lowered to what a smaller
    index holds."""
    if k is not None:
        return check_k(k, size, where)
    return check_k(max(min(check_k(default, name="n_docs"), size), 1), size, where)  # an empty index: one error


def check_k(k, size: int | None = None, where: str | os.PathLike | None = None, name: str = "k") -> int:
    """k as an int >= 1 (not a bool, a float or NaN), and at most `size` (the passages `where` holds)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise RagloopError(f"{name} must be a whole number >= 1 (got {k!r})")
    k = int(k)
    if k < 1:
        raise RagloopError(f"{name} must be at least 1 (got {k})")
    if size is not None and k > size:
        raise RagloopError(f"{name}={k} but {where} holds {size} passages")
    return k


class Retriever:
    """An index, a question encoder (loaded on first dense use), a search mode, an optional reranker and
    an optional cache (`cache=RetrievalCache(...)`, or `cache_size=N` entries; see cache.py): results
    and question vectors remembered per question, keyed by everything they depend on."""

    def __init__(self, index: Index, question_encoder: Encoder | None = None, mode: str = "dense",
                 fusion: str = "rrf", weight: float = 0.5, reranker: Reranker | None = None,
                 rerank_depth: int | None = None, cache: RetrievalCache | None = None,
                 cache_size: int | None = None) -> None:
        _check_mode(mode)
        check_fusion(fusion, weight)
        if cache is None and cache_size is not None:
            cache = RetrievalCache(max_entries=cache_size)
        self.cache = cache
        self.index = index
        self._question_encoder = question_encoder
        self.mode = mode
        self.fusion = fusion
        self.weight = float(weight)
        self._quantize: str | None = None
        self._said_default_k = False
        self.set_reranker(reranker, rerank_depth)

    def quantize(self, mode: str | None = "int8") -> Retriever:
        """Quantize the question encoder and the reranker for inference ("int8"; None does nothing): now if
        loaded, else when they are (BM25-only search never loads the encoder; a reranker set later is
        quantized when set). Returns self."""
        from ragloop.quantize import check_mode

        if check_mode(mode) is not None:
            self._quantize = mode
            if self._question_encoder is not None:
                self._question_encoder.quantize(mode)
            if self.reranker is not None:
                self.reranker.quantize(mode)
        return self

    @classmethod
    def from_index(cls, path: str | os.PathLike, encoder: str | os.PathLike | None = None, verify: bool | str = "fast",
                   rerank: str | os.PathLike | None = None, quantize: str | None = None, **kwargs) -> Retriever:
        """Open an index folder. `encoder` overrides the question encoder recorded in its manifest and
        is checked against it (another model or dimension is an error); `rerank` names a cross-encoder;
        `quantize="int8"` quantizes the question encoder and the reranker for inference (ragloop/quantize.py)."""
        index = Index.load(path, verify=verify)
        question = None
        if encoder is not None:
            from ragloop.retrieval.encoders import BiEncoder

            question = BiEncoder.from_pretrained(encoder).question
            index.check_question_encoder(question)
        depth = kwargs.pop("rerank_depth", None)
        retriever = cls(index, question, **kwargs)
        retriever.quantize(quantize)
        if rerank is not None or depth is not None:
            retriever.set_reranker(rerank if rerank is not None else retriever.reranker, depth)
        return retriever

    def set_reranker(self, reranker: Reranker | str | os.PathLike | None, depth: int | None = None) -> None:
        """Rerank the first stage's top `depth` (default max(k, 20)) with a cross-encoder: a loaded
        `Reranker`, or a name or path to load one from (quantized as the retriever is). None removes the stage."""
        if depth is not None:
            check_k(depth, name="rerank depth")
            if reranker is None:
                raise RagloopError("a rerank depth needs a reranker")
        if isinstance(reranker, str | os.PathLike):
            from ragloop.retrieval.rerank import Reranker

            reranker = Reranker.from_pretrained(reranker)
        if reranker is not None and self._quantize is not None:
            reranker.quantize(self._quantize)
        self.reranker, self.rerank_depth = reranker, depth
        self._said_fallback: set[str] = set()

    @property
    def question_encoder(self) -> Encoder:
        """Loaded on first dense use, so BM25-only search never loads a model."""
        if self._question_encoder is None:
            encoder = self.index.load_encoder().question
            self.index.check_question_encoder(encoder)  # the weights at that name may have changed
            self._question_encoder = encoder.quantize(self._quantize)
        return self._question_encoder

    def describe(self) -> dict:
        """What this retriever does, for reports (`/health`, eval output, saved RAG configs). An unset rerank
        depth is reported as the rule it follows, "max(k, 20)"."""
        return {"mode": self.mode, "fusion": self.fusion if self.mode == "hybrid" else None,
                "weight": self.weight if self.mode == "hybrid" else None,
                "reranker": self.reranker.name if self.reranker else None,
                "rerank_depth": (self.rerank_depth if self.rerank_depth is not None else f"max(k, {RERANK_DEPTH})")
                if self.reranker else None,
                "rerank_use": {m: self.rerank_use(m) for m in SEARCH_MODES} if self.reranker else None,
                "rerank_quantize": getattr(self.reranker, "quantization", None) if self.reranker else None,
                "quantize": (self._question_encoder.quantization if self._question_encoder is not None
                             else self._quantize)}

    def rerank_use(self, mode: str) -> str | None:
        """What the rerank stage does for first-stage `mode`: "rerank" (the cross-encoder's order), "combination"
        (its saved combination with the first stage's evidence), "first_stage" (kept: nothing beat it on the
        held-out questions), or None without a reranker."""
        if self.reranker is None:
            return None
        combination = self._combination(mode)
        return "rerank" if combination is None else combination.use

    def _combination(self, mode: str):
        """The reranker's saved combination for `mode` (rerank_fusion.Combination), or None: a stand-in
        reranker without `combination` has none."""
        return getattr(self.reranker, "combination", lambda m: None)(mode)

    def depth_for(self, k: int) -> int:
        """How many first-stage candidates a reranker sees for a top-k request."""
        if self.reranker is None:
            return k
        if self.rerank_depth is None:
            return max(k, RERANK_DEPTH)
        if self.rerank_depth < k:
            raise RagloopError(f"the rerank depth ({self.rerank_depth}) is smaller than k ({k}); "
                               "a reranker can only reorder the candidates it is given")
        return self.rerank_depth

    def resolve_k(self, k: int | None) -> int:
        """k checked against the index: an explicit k larger than it is an error; None is DEFAULT_SEARCH_K,
        lowered to the index's size when it holds fewer passages (said once, in the log)."""
        size = len(self.index)
        if k is None and size < DEFAULT_SEARCH_K and not self._said_default_k:
            log.info("%s holds %d passage%s, fewer than the default k=%d: returning all of them", self.index.path,
                     size, "" if size == 1 else "s", DEFAULT_SEARCH_K)
            self._said_default_k = True
        return passages_to_read(k, DEFAULT_SEARCH_K, size, self.index.path)

    # -- the one way in -----------------------------------------------------------------------

    def retrieve(self, questions: str | list[str], k: int | None = None, mode: str | None = None, *,
                 vectors: np.ndarray | None = None, pad_with_dense: bool = False,
                 progress: bool | None = False) -> Retrieved:
        """Top-k passages for each question through every stage (k None: `resolve_k`'s default). `mode`
        overrides the retriever's;
        `vectors` are the questions' dense vectors when the caller has them; `pad_with_dense` tops up a
        list that BM25 left short with the best dense rows, so every question gets exactly k passages."""
        questions = check_questions(questions)
        mode = self.mode if mode is None else mode
        _check_mode(mode)
        k = self.resolve_k(k)
        self.depth_for(k)  # a depth below k is an error, cached or not
        if vectors is not None and np.shape(vectors) != (len(questions), self.index.dim):
            raise RagloopError(f"vectors have shape {np.shape(vectors)}; {len(questions)} questions against "
                               f"{self.index.path} need ({len(questions)}, {self.index.dim})")
        if self.cache is not None and vectors is None:  # a caller's own vectors are never served from a cache
            return self._retrieve_cached(questions, k, mode, pad_with_dense, progress)
        return self._retrieve(questions, k, mode, vectors, pad_with_dense, progress)

    def _retrieve_cached(self, questions: list[str], k: int, mode: str, pad_with_dense: bool,
                         progress: bool | None) -> Retrieved:
        """`_retrieve` through `self.cache`: remembered rows per question, the missing ones searched together
        (from the disk store first, when the cache has one: questions found there are not even encoded)."""
        dense = reads_question_vectors(mode, pad_with_dense)

        def encode(missing: list[str]) -> np.ndarray | None:
            return self._question_vectors(missing, progress) if dense else None

        def search(missing: list[str]) -> list:
            settings = results_settings(self, k, mode, pad_with_dense) if self.cache.disk is not None else None
            if settings is None:
                got = self._retrieve(missing, k, mode, encode(missing), pad_with_dense, progress)
            else:
                def compute(qs: list[str]) -> dict:
                    got = self._retrieve(qs, k, mode, encode(qs), pad_with_dense, progress)
                    return {"rows": got.rows, "scores": got.scores}

                stored = self.cache.disk.lookup(settings, missing, compute, RESULT_FIELDS)
                got = Retrieved(stored["rows"], stored["scores"], self.passages(stored["rows"]))
            return [(got.rows[b].copy(), got.scores[b].copy(), tuple(got.passages[b])) for b in range(len(missing))]

        rows = self.cache.get_many("results", results_setup(self, k, mode, pad_with_dense), questions, search)
        return Retrieved(np.stack([r[0] for r in rows]).copy(), np.stack([r[1] for r in rows]).copy(),
                         [list(r[2]) for r in rows])

    def _question_vectors(self, questions: list[str], progress: bool | None) -> np.ndarray:
        """The question encoder's vectors, remembered in `self.cache` while the encoder is in eval mode."""
        encoder = self.question_encoder
        if encoder.training:  # weights change every step: remembering them would only push out the rest
            return self._encode(questions, progress)
        vectors = self.cache.get_many("embeddings", module_state(encoder), questions,
                                      lambda missing: list(self._encode(missing, progress)))
        return np.stack(vectors).astype(np.float32, copy=True)

    def _encode(self, questions: list[str], progress: bool | None) -> np.ndarray:
        return self.question_encoder.encode(questions, batch_size=128, progress=progress, desc="encoding questions")

    def _retrieve(self, questions: list[str], k: int, mode: str, vectors: np.ndarray | None, pad_with_dense: bool,
                  progress: bool | None) -> Retrieved:
        """`retrieve` on checked arguments, without the cache."""
        depth = min(self.depth_for(k), len(self.index))
        if vectors is None and reads_question_vectors(mode, pad_with_dense):
            vectors = self._encode(questions, progress)
        scores, rows = self._first_stage(questions, depth, mode, vectors)
        if pad_with_dense and (rows < 0).any():
            rows, scores = _fill_missing(rows, scores, self.index.search(vectors, depth)[1], self.index.path)
        passages = self.passages(rows)
        if self.reranker is not None:
            scores, rows, passages = self._rerank(questions, passages, rows, scores, mode, progress)
        return Retrieved(rows[:, :k], scores[:, :k], [ps[:k] for ps in passages])

    def search(self, questions: str | list[str], k: int | None = None, mode: str | None = None) -> list[list[Hit]]:
        """`retrieve` as `Hit`s (passage, score, row), one list per question."""
        return self.retrieve(questions, k, mode).hits()

    # -- stages -------------------------------------------------------------------------------

    def _first_stage(self, questions: list[str], depth: int, mode: str,
                     vectors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if mode != "dense" and self.index.bm25 is None:
            raise RagloopError(f"{self.index.path}: built without BM25; rebuild it to use mode {mode!r}")
        if mode == "bm25":
            scores, rows = self.index.bm25.search(questions, depth)
        elif mode == "dense":
            scores, rows = self.index.search(vectors, depth)
        else:
            wide = min(max(depth, FUSION_DEPTH), len(self.index))
            scores, rows = fuse(self.index.search(vectors, wide), self.index.bm25.search(questions, wide), depth,
                                self.fusion, self.weight)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return scores, rows.astype(np.int64)

    def passages(self, rows: np.ndarray) -> list[list[Passage]]:
        """The index's passages at `rows` [B, K], per question, skipping -1 (nothing found)."""
        wanted = sorted({int(r) for r in rows.reshape(-1) if r >= 0})
        by_row = dict(zip(wanted, self.index.store.get_rows(wanted)))
        return [[by_row[int(r)] for r in row if r >= 0] for row in rows]

    def _rerank(self, questions: list[str], passages: list[list[Passage]], rows: np.ndarray, scores: np.ndarray,
                mode: str, progress: bool | None) -> tuple[np.ndarray, np.ndarray, list[list[Passage]]]:
        """The first stage's candidates reordered by the reranker, or by its saved combination for `mode`
        with the first stage's rank and score; kept as they are where the combination falls back."""
        combination = self._combination(mode)
        if combination is not None and combination.use == "first_stage":
            if mode not in self._said_fallback:
                self._said_fallback.add(mode)
                log.info("reranker %s: keeping the %s first stage's order (%s)", self.reranker.name, mode,
                         combination.reason())
            return scores, rows, passages
        scored = self.reranker.score(questions, passages, progress=progress)
        out_scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        out_rows = np.full(rows.shape, -1, dtype=np.int64)
        out_passages = []
        for b, (ps, s) in enumerate(zip(passages, scored)):
            s = np.asarray(s, dtype=np.float32)
            if not np.isfinite(s).all():
                raise RagloopError(f"reranker {self.reranker.name!r} gave a non-finite score for question {b}")
            found = rows[b] >= 0
            if combination is not None:
                s = combination.final(s, scores[b][found])
            order = np.argsort(-s, kind="stable")
            out_rows[b, : len(order)] = rows[b][found][order]
            out_scores[b, : len(order)] = s[order]
            out_passages.append([ps[i] for i in order])
        return out_scores, out_rows, out_passages


def _check_mode(mode: str) -> None:
    if mode not in SEARCH_MODES:
        raise RagloopError(f"unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")


def _fill_missing(rows: np.ndarray, scores: np.ndarray, dense_rows: np.ndarray,
                  where: os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Fill -1 slots (BM25 found fewer than asked) with the best dense rows not already taken; their
    score is the list's lowest, so they rank last."""
    rows, scores = rows.copy(), scores.copy()
    for b in np.nonzero((rows < 0).any(axis=1))[0]:
        taken = {int(r) for r in rows[b] if r >= 0}
        spare = iter(int(r) for r in dense_rows[b] if r >= 0 and int(r) not in taken)
        low = min((float(s) for s in scores[b] if math.isfinite(s)), default=0.0)
        for j in np.nonzero(rows[b] < 0)[0]:
            nxt = next(spare, None)
            if nxt is None:
                raise RagloopError(f"{where}: search returned fewer than {rows.shape[1]} passages")
            rows[b, j], scores[b, j] = nxt, low
    return rows, scores
