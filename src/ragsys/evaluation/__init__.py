"""Evaluation: SQuAD EM/F1 for answers; hit@k, gold@k and MRR for retrieval."""

from ragsys.evaluation.answers import evaluate_answers
from ragsys.evaluation.metrics import exact_match, f1_score, has_answer, normalize_answer
from ragsys.evaluation.retrieval import evaluate_retrieval

__all__ = ["evaluate_answers", "evaluate_retrieval", "exact_match", "f1_score", "has_answer", "normalize_answer"]
