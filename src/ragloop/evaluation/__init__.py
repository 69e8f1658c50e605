"""Evaluation: SQuAD EM/F1 for answers; hit@k, gold@k and MRR for retrieval.

Names load on first use (`ragloop._lazy`): retrieval metrics never import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragloop._lazy import lazy_exports

_EXPORTS = {
    "evaluate_answers": "ragloop.evaluation.answers",
    "evaluate_retrieval": "ragloop.evaluation.retrieval",
    "exact_match": "ragloop.evaluation.metrics",
    "f1_score": "ragloop.evaluation.metrics",
    "has_answer": "ragloop.evaluation.metrics",
    "normalize_answer": "ragloop.evaluation.metrics",
}
__all__ = ["evaluate_answers", "evaluate_retrieval", "exact_match", "f1_score", "has_answer", "normalize_answer"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from ragloop.evaluation.answers import evaluate_answers
    from ragloop.evaluation.metrics import exact_match, f1_score, has_answer, normalize_answer
    from ragloop.evaluation.retrieval import evaluate_retrieval
