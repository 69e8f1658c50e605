"""Retrieval quality on QA data: hit@k (an answer string is in the top k), gold@k (the question's own
paragraph is in the top k) and mrr@10 (reciprocal rank of the first gold passage within 10).

hit@k is only meaningful when the answers occur in the text: questions whose answers are not in their
own context paragraph (a file whose answers were rewritten, or columns mixed up) are counted in
"answers_not_in_context" and logged as a warning; when every question with a context has that
problem the data is refused, since hit@k would be 0 by construction."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from ragloop.constants import reads_question_vectors
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample
from ragloop.errors import RagloopError
from ragloop.evaluation.metrics import has_answer
from ragloop.retrieval.retriever import Retriever, check_k

log = logging.getLogger(__name__)


def evaluate_retrieval(
    retriever: Retriever,
    examples: list[QAExample],
    ks: tuple[int, ...] = (1, 5, 20),
    mode: str = "dense",
    progress: bool | None = None,
    rankings: dict | None = None,
) -> dict:
    """Returns {"mode", "questions", "answers_not_in_context", "hit@k"..., "gold@k"..., "mrr@10"} (plus
    "reranker", "rerank_use" and "rerank_quantize" when there is one). A k beyond the index size scores the
    whole index (hit@20 of a 12-passage index is hit@12); with a reranker whose depth is set, k runs up to
    that depth: it can only rank what it was given. A `rankings` dict is filled with {question id: the hits
    scored, best first} (evaluation/files.py writes them as a TREC run)."""
    if not examples:
        raise RagloopError("no questions to evaluate")
    ks = tuple(check_k(k) for k in ks)
    missing = answers_not_in_context(examples)
    depth = min(max(max(ks), 10), len(retriever.index))
    if retriever.reranker is not None and retriever.rerank_depth is not None:
        depth = min(depth, retriever.rerank_depth)
        ks = tuple(k for k in ks if k <= depth) or (depth,)
    got = retriever.retrieve([e.question for e in examples], depth, mode, progress=progress)
    if rankings is not None:
        rankings.update((ex.id, hits) for ex, hits in zip(examples, got.hits()))
    answer = [first_rank(ranked, lambda p, ex=ex: has_answer(ex.answers, p.text))
              for ex, ranked in zip(examples, got.passages)]
    gold = gold_ranks(examples, got.passages)
    result: dict = {"mode": mode, "questions": len(examples), "answers_not_in_context": missing}
    stages = retriever.describe()
    if stages["reranker"] is not None:
        result["reranker"] = stages["reranker"]
        if stages.get("rerank_use"):  # "rerank", "combination" or "first_stage" (a saved fallback) for this mode
            result["rerank_use"] = stages["rerank_use"][mode]
        if stages.get("rerank_quantize"):
            result["rerank_quantize"] = stages["rerank_quantize"]
    if stages["quantize"] and reads_question_vectors(mode):  # the question encoder's precision (BM25 reads no model)
        result["quantize"] = stages["quantize"]
    result.update({f"hit@{k}": within(answer, k) for k in ks})
    result.update({f"gold@{k}": within(gold, k) for k in ks})
    result["mrr@10"] = mrr(gold, 10)
    return result


def first_rank(ranked: Sequence[Passage], match: Callable[[Passage], bool]) -> int | None:
    """The rank (from 1) of the first passage that `match`es, or None."""
    return next((rank for rank, p in enumerate(ranked, 1) if match(p)), None)


def gold_ranks(examples: Sequence[QAExample], rankings: Sequence[Sequence[Passage]]) -> list[int | None]:
    """Per question, the rank of the first passage of its own paragraph (same doc_id) in its ranking."""
    return [first_rank(ranked, lambda p, ex=ex: p.doc_id == ex.doc_id) for ex, ranked in zip(examples, rankings)]


def within(ranks: Sequence[int | None], k: int) -> float:
    """The share of questions whose first hit ranks within k (hit@k or gold@k), to 4 places."""
    return round(sum(r is not None and r <= k for r in ranks) / len(ranks), 4)


def mrr(ranks: Sequence[int | None], depth: int = 10) -> float:
    """Mean reciprocal rank of the first hit within `depth` (0 beyond it), to 4 places."""
    return round(sum(1.0 / r for r in ranks if r is not None and r <= depth) / len(ranks), 4)


def answers_not_in_context(examples: list[QAExample], refuse_all: bool = True) -> int:
    """How many questions with a context paragraph have no answer in it; a warning names the first.
    With `refuse_all`, data where that is every such question is a RagloopError."""
    with_context = [ex for ex in examples if ex.context]
    missing = [ex for ex in with_context if not has_answer(ex.answers, ex.context)]
    if refuse_all and missing and len(missing) == len(with_context):
        first = missing[0]
        raise RagloopError(f"{first.source or 'the QA data'}: none of the {len(with_context)} questions has an "
                           f"answer in its context paragraph (question {first.id!r}: {first.answers[0]!r}); "
                           "hit@k would be 0 by construction: are the answers and contexts from the same file?")
    if missing:
        first = missing[0]
        _warn_once(first.source or "QA data", len(missing), len(with_context), first.id, first.answers[0])
    return len(missing)


@functools.lru_cache(maxsize=64)
def _warn_once(source: str, missing: int, total: int, first_id: str, answer: str) -> None:
    """The warning of `answers_not_in_context`, said once for the same questions (a table of three search
    modes scores them three times)."""
    log.warning("%s: %d of %d questions have no answer in their context paragraph (first: %r, answer %r); "
                "hit@k cannot count them", source, missing, total, first_id, answer)
