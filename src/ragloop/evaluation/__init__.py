"""Evaluation: SQuAD EM/F1 for answers; hit@k, gold@k and MRR for retrieval."""

from ragloop.evaluation.answers import evaluate_answers
from ragloop.evaluation.metrics import exact_match, f1_score, has_answer, normalize_answer
from ragloop.evaluation.retrieval import evaluate_retrieval

__all__ = ["evaluate_answers", "evaluate_retrieval", "exact_match", "f1_score", "has_answer", "normalize_answer"]
