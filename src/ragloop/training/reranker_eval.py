"""How well a reranker reorders a first stage's candidates: gold@k and mrr@10 of the question's own
paragraph in each first stage's top 20 (`training.rankings` over passages in memory), before and after
reranking.

    >>> rankings = Rankings([ex.question for ex in heldout], passages, dense_encoder=encoder)
    >>> scores = rerank_scores(reranker, heldout, passages, rankings, ("bm25", "hybrid"))
    >>> scores["bm25"]["gold@1"], scores["bm25"]["reranked gold@1"], scores["hybrid"]["reranked mrr@10"]
    >>> evaluate_reranker(reranker, "dev.json", max_questions=200)   # a QA file over its own paragraphs

A pair that two first stages both propose is scored once.
"""

from __future__ import annotations

import numpy as np

from ragloop.config import EVAL_DEPTH
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample, context_passages, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.evaluation.retrieval import gold_ranks, mrr, within
from ragloop.retrieval.rerank import Reranker, passage_text
from ragloop.training.rankings import Rankings

KS = (1, 5)


def metrics(examples: list[QAExample], rankings: list[list[Passage]], prefix: str = "") -> dict[str, float]:
    """gold@1, gold@5 and mrr@10 of the examples' own paragraphs in `rankings`, keys prefixed."""
    gold = gold_ranks(examples, rankings)
    return {**{f"{prefix}gold@{k}": within(gold, k) for k in KS}, f"{prefix}mrr@10": mrr(gold, 10)}


def rerank_scores(reranker: Reranker, examples: list[QAExample], passages: list[Passage], rankings: Rankings,
                  stages: tuple[str, ...] = ("bm25",), depth: int = EVAL_DEPTH, progress: bool | None = False
                  ) -> dict[str, dict[str, float]]:
    """Per first stage: its metrics over its top `depth` and the same candidates reranked ("reranked ...")."""
    candidates = {s: [[r for r in rows if r >= 0] for rows in rankings.rows(s, depth).tolist()] for s in stages}
    pairs = sorted({(i, r) for rows in candidates.values() for i, ranked in enumerate(rows) for r in ranked})
    scores = reranker.predict([(examples[i].question, passage_text(passages[r])) for i, r in pairs],
                              show_progress_bar=progress) if pairs else np.empty(0, dtype=np.float32)
    score_of = dict(zip(pairs, np.atleast_1d(scores).tolist()))
    out = {}
    for stage, rows in candidates.items():
        before = [[passages[r] for r in ranked] for ranked in rows]
        after = [[passages[r] for r in sorted(ranked, key=lambda r, i=i: -score_of[(i, r)])]
                 for i, ranked in enumerate(rows)]  # sorted is stable: ties keep the first stage's order
        out[stage] = {"questions": len(examples), "candidates": min(depth, len(passages)), **metrics(examples, before),
                      **metrics(examples, after, "reranked ")}
    return out


def evaluate_reranker(reranker: Reranker, qa_file: str, max_questions: int = 200, chunk_words: int = 100,
                      progress: bool | None = None) -> dict:
    """gold@1, gold@5 and mrr@10 (the question's own paragraph) of `qa_file`'s questions over its own
    paragraphs: BM25's top 20 ("bm25 ..."), and the same 20 reranked ("reranked ...")."""
    examples = sample_evenly([ex for ex in load_qa(qa_file) if ex.context], max_questions)
    if not examples:
        raise RagloopError(f"{qa_file}: no question has a context paragraph to retrieve")
    passages = context_passages(examples, chunk_words)
    rankings = Rankings([ex.question for ex in examples], passages)
    scores = rerank_scores(reranker, examples, passages, rankings, ("bm25",), progress=progress)["bm25"]
    return {k if k.startswith(("reranked", "questions", "candidates")) else f"bm25 {k}": v for k, v in scores.items()}
