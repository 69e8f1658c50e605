"""Training data for retrieval models: each question's positive passage and its hard negatives.

    >>> passages, items = build_items(load_qa("train.json"), hard_negatives=2)            # BM25 only
    >>> passages, items = build_items(examples, hard_negatives=2, dense_negatives=2,
    ...                               dense_encoder=Encoder.from_pretrained())          # BM25 + dense
    >>> passages[items[0].positive], [passages[r] for r in items[0].negatives]

The passages are the examples' paragraphs chunked as `ragloop index` chunks them. A question's
positive is the chunk of its own paragraph that holds the answer. A hard negative is a passage that
the first stage ranks high for the question (BM25, or a dense encoder) but that comes from another
paragraph and does not contain any answer string (DPR's has-answer test on "title text"). Shared by
the retriever trainer (in-batch + BM25 negatives) and the reranker trainer (BM25 + dense groups).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample, context_passages
from ragloop.errors import RagloopError
from ragloop.evaluation.metrics import has_answer
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.encoders import Encoder
from ragloop.retrieval.folder import bm25_text

log = logging.getLogger(__name__)

BM25_DEPTH = 20  # passages looked at per question beyond the number of negatives wanted (BM25 and dense)


@dataclass
class TrainItem:
    """One training question: rows into the passage list for its positive and hard negatives."""

    question: str
    doc_id: str
    positive: int
    negatives: list[int]


def build_items(examples: list[QAExample], chunk_words: int = 100, hard_negatives: int = 1,
                where: str = "training data", dense_negatives: int = 0, dense_encoder: Encoder | None = None,
                progress: bool | None = False) -> tuple[list[Passage], list[TrainItem]]:
    """Passages of the examples' paragraphs, and per question its positive, then up to `hard_negatives`
    BM25 negatives, then up to `dense_negatives` negatives ranked high by `dense_encoder` (ones BM25
    already chose are skipped)."""
    with_context = [ex for ex in examples if ex.context]
    if not with_context:
        raise RagloopError(f"{where}: no question has a context paragraph; training needs each question's own "
                          "paragraph as its positive")
    passages = context_passages(with_context, chunk_words)
    if len(passages) < 2:
        raise RagloopError(f"{where}: all {len(with_context)} questions share one paragraph; training needs "
                          "questions from at least two paragraphs (other paragraphs are the negatives)")
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, p in enumerate(passages):
        rows_of[p.doc_id].append(row)
    items, answers = [], []
    for ex in with_context:
        rows = rows_of.get(ex.doc_id)
        if not rows:  # its every chunk duplicated another paragraph's: no passage of its own
            continue
        positive = next((r for r in rows if has_answer(ex.answers, passages[r].text)), rows[0])
        items.append(TrainItem(ex.question, ex.doc_id, positive, []))
        answers.append(ex.answers)
    texts = [bm25_text(p) for p in passages]
    questions = [it.question for it in items]
    if hard_negatives > 0:
        _, ranked = BM25Index.build(texts).search(questions, min(len(passages), BM25_DEPTH + hard_negatives))
        _take(items, answers, passages, texts, ranked, hard_negatives, "BM25")
    if dense_negatives > 0:
        if dense_encoder is None:
            raise ValueError("dense_negatives needs a dense_encoder")
        ranked = dense_ranking(dense_encoder, questions, passages, BM25_DEPTH + hard_negatives + dense_negatives,
                               progress)
        _take(items, answers, passages, texts, ranked, dense_negatives, f"dense ({dense_encoder.spec.name})")
    log.info("training data: %d questions, %d passages (%d questions without a passage of their own)",
             len(items), len(passages), len(with_context) - len(items))
    return passages, items


def _take(items: list[TrainItem], answers: list[list[str]], passages: list[Passage], texts: list[str],
          ranked: np.ndarray, n: int, source: str) -> None:
    """Append to each item up to n of its ranked rows that are neither its own paragraph nor hold an answer."""
    missing = 0
    for it, golds, rows in zip(items, answers, ranked.tolist()):
        chosen = set(it.negatives)
        want = len(it.negatives) + n
        for r in rows:
            if r < 0 or len(it.negatives) == want:
                break
            if r not in chosen and passages[r].doc_id != it.doc_id and not has_answer(golds, texts[r]):
                it.negatives.append(r)
                chosen.add(r)
        missing += len(it.negatives) < want
    if missing:
        log.info("%d of %d questions have fewer than %d %s hard negatives", missing, len(items), n, source)


def dense_ranking(encoder: Encoder, questions: list[str], passages: list[Passage], depth: int,
                  progress: bool | None = False, chunk: int = 1024) -> np.ndarray:
    """Rows of the `depth` passages with the highest q·d for each question (exact, in memory)."""
    depth = min(depth, len(passages))
    vectors = encoder.encode([p.title for p in passages], [p.text for p in passages], progress=progress,
                             desc="encoding passages for dense negatives")
    q = encoder.encode(questions, progress=progress, desc="encoding questions for dense negatives")
    out = np.empty((len(questions), depth), dtype=np.int64)
    for start in range(0, len(questions), chunk):
        scores = q[start : start + chunk] @ vectors.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out
