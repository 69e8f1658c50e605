"""SQuAD's answer normalisation and metrics, and DPR's has-answer test for retrieval.

    >>> exact_match("the Denver Broncos", ["Denver Broncos"])
    1.0
    >>> round(f1_score("Broncos of Denver", ["Denver Broncos"]), 2)
    0.8
"""

from __future__ import annotations

from collections import Counter

from ragloop.data.qa import normalize_answer  # re-exported: the metrics' normalisation

__all__ = ["exact_match", "f1_score", "has_answer", "normalize_answer"]


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    """Token-overlap F1 against the best-matching gold answer."""
    p = normalize_answer(prediction).split()
    return max((_f1(p, normalize_answer(g).split()) for g in golds), default=0.0)


def has_answer(answers: list[str], text: str) -> bool:
    """True if a normalised answer occurs as a whole-token span of the normalised text."""
    haystack = f" {normalize_answer(text)} "
    return any(n and f" {n} " in haystack for n in map(normalize_answer, answers))
