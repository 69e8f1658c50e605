"""Training data for retrieval models: each question's positive passage and its negatives.

    >>> passages, items = build_items(load_qa("train.json"), hard_negatives=2)            # BM25 only
    >>> passages, items = build_items(examples, hard_negatives=2, dense_negatives=2,
    ...                               dense_encoder=Encoder.from_pretrained())          # BM25 + dense
    >>> passages[items[0].positive], [passages[r] for r in items[0].negatives]
    >>> passages, items = build_items(examples, sources={"hybrid": 2, "random": 1}, dense_encoder=encoder,
    ...                               unanswerable=v2_unanswerable)                     # any mix of sources

The passages are the examples' paragraphs chunked as `ragloop index` chunks them. A question's
positive is the chunk of its own paragraph that holds the answer. A negative is a passage that a
source (`training.rankings`: BM25, dense, their RRF hybrid, or random) ranks high for the question but
that comes from another paragraph and does not contain any answer string (DPR's has-answer test on
"title text"); each source adds its share, skipping what an earlier one chose. An unanswerable
question (SQuAD v2.0's `is_impossible`) is an item with no positive (`positive is None`) whose one
negative is the chunk of its own paragraph that BM25 ranks highest for it: a passage on the topic
that does not answer it, so it is never a positive. Shared by the retriever trainer (BM25 negatives)
and the reranker trainer (`--negative_sources`).
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
from ragloop.retrieval.encoders import Encoder
from ragloop.retrieval.folder import bm25_text
from ragloop.training.rankings import Rankings

log = logging.getLogger(__name__)

BM25_DEPTH = 20  # passages looked at per question beyond the number of negatives wanted (every source)


@dataclass
class TrainItem:
    """One training question: rows into the passage list for its positive (None: an unanswerable
    question, which brings negatives only) and its negatives."""

    question: str
    doc_id: str
    positive: int | None
    negatives: list[int]


def split_evenly(n: int, sources: list[str]) -> dict[str, int]:
    """`n` negatives shared among `sources` as evenly as can be, the first ones taking the remainder."""
    return {s: n // len(sources) + (i < n % len(sources)) for i, s in enumerate(sources)}


def build_items(examples: list[QAExample], chunk_words: int = 100, hard_negatives: int = 1,
                where: str = "training data", dense_negatives: int = 0, dense_encoder: Encoder | None = None,
                progress: bool | None = False, *, sources: dict[str, int] | None = None,
                unanswerable: list[QAExample] = (), seed: int = 0) -> tuple[list[Passage], list[TrainItem]]:
    """Passages of the examples' paragraphs (the unanswerable ones' too), and per question its positive,
    then its negatives: `sources` ({source: how many}, in order), by default `hard_negatives` from BM25
    then `dense_negatives` from `dense_encoder`. The unanswerable questions' items come last."""
    with_context = [ex for ex in examples if ex.context]
    if not with_context:
        raise RagloopError(f"{where}: no question has a context paragraph; training needs each question's own "
                          "paragraph as its positive")
    if any(not ex.answers for ex in with_context):
        raise ValueError("an unanswerable question can never be a positive: pass it as `unanswerable`")
    passages = context_passages(with_context + [ex for ex in unanswerable if ex.context], chunk_words)
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
    sources = sources if sources is not None else {"bm25": hard_negatives, "dense": dense_negatives}
    rankings = Rankings([it.question for it in items], passages, dense_encoder, seed, progress)
    texts = [bm25_text(p) for p in passages]
    depth = BM25_DEPTH + sum(sources.values())
    for source, n in sources.items():
        if n > 0:
            _take(items, answers, passages, texts, rankings.rows(source, depth), n, source)
    log.info("training data: %d questions, %d passages (%d questions without a passage of their own)",
             len(items), len(passages), len(with_context) - len(items))
    return passages, items + unanswerable_items(unanswerable, passages, rows_of)


def unanswerable_items(examples: list[QAExample], passages: list[Passage],
                       rows_of: dict[str, list[int]]) -> list[TrainItem]:
    """An item per unanswerable question with a passage of its own: no positive, and as its negative
    the chunk of its own paragraph that BM25 ranks highest for it (its first chunk if none matches)."""
    asked = [ex for ex in examples if ex.context and rows_of.get(ex.doc_id)]
    if not asked:
        return []
    ranked = Rankings([ex.question for ex in asked], passages).rows("bm25", BM25_DEPTH).tolist()
    items = []
    for ex, rows in zip(asked, ranked):
        own = next((r for r in rows if r >= 0 and passages[r].doc_id == ex.doc_id), rows_of[ex.doc_id][0])
        items.append(TrainItem(ex.question, ex.doc_id, None, [own]))
    log.info("%d unanswerable questions, each with its own paragraph as a negative", len(items))
    return items


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
        log.info("%d of %d questions have fewer than %d %s negatives", missing, len(items), n, source)
