"""Retrieval quality on QA data: hit@k (an answer string is in the top k), gold@k (the question's own
paragraph is in the top k) and mrr@10 (reciprocal rank of the first gold passage within 10)."""

from __future__ import annotations

import logging

from ragloop.data.qa import QAExample
from ragloop.evaluation.metrics import has_answer
from ragloop.retrieval.retriever import Retriever

log = logging.getLogger(__name__)


def evaluate_retrieval(
    retriever: Retriever,
    examples: list[QAExample],
    ks: tuple[int, ...] = (1, 5, 20),
    mode: str = "dense",
    progress: bool | None = None,
) -> dict:
    """Returns {"mode", "questions", "hit@k"..., "gold@k"..., "mrr@10"} (plus "reranker" when there is one).
    With a reranker whose depth is set, k runs up to that depth: it can only rank what it was given."""
    depth = min(max(max(ks), 10), len(retriever.index))
    if retriever.reranker is not None and retriever.rerank_depth is not None:
        depth = min(depth, retriever.rerank_depth)
        ks = tuple(k for k in ks if k <= depth) or (depth,)
    got = retriever.retrieve([e.question for e in examples], depth, mode, progress=progress)
    hit = {k: 0 for k in ks}
    gold = {k: 0 for k in ks}
    rr = 0.0
    for ex, ranked in zip(examples, got.passages):
        first_answer = first_gold = None
        for rank, p in enumerate(ranked, 1):
            if first_gold is None and p.doc_id == ex.doc_id:
                first_gold = rank
            if first_answer is None and has_answer(ex.answers, p.text):
                first_answer = rank
            if first_gold is not None and first_answer is not None:
                break
        for k in ks:
            hit[k] += first_answer is not None and first_answer <= k
            gold[k] += first_gold is not None and first_gold <= k
        if first_gold is not None and first_gold <= 10:
            rr += 1.0 / first_gold
    n = len(examples)
    result: dict = {"mode": mode, "questions": n}
    if retriever.reranker is not None:
        result["reranker"] = retriever.reranker.name
    for k in ks:
        result[f"hit@{k}"] = round(hit[k] / n, 4)
    for k in ks:
        result[f"gold@{k}"] = round(gold[k] / n, 4)
    result["mrr@10"] = round(rr / n, 4)
    return result
