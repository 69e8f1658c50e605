"""The reranker's score combined with the first stage's evidence, one saved combination per first-stage mode.

A cross-encoder trained on little data can rank worse at the top than the first stage it reorders (on
the bundled dev questions BM25's gold@1 is 0.775, BM25 reranked 0.745). What the first stage knew is
kept as two features of each candidate, and the final score of a candidate is

    final = w_rerank * z(reranker score) + w_rank * -log(first-stage rank) + w_score * z(first-stage score)

where z is a z-score over the question's candidates (0 where they all score the same) and the rank
counts from 1 in the first stage's order. The weights are fitted per first-stage mode (dense, bm25,
hybrid) on held-out questions by `fit_weights`: a grid over (w_rank, w_score) with w_rerank = 1 (only
their ratio orders candidates), keeping the best gold@1 (mrr@10 breaks ties, then the smaller weights).
When that best point does not beat the first stage's own gold@1 on the held-out questions by more than
chance (a one-sided sign test over the questions where exactly one of the two has gold at the top,
p < 0.05: with the best of 63 points picked on the same questions, a reranker that is pure noise still
"wins" by a question or two), the mode's entry says `"use": "first_stage"` and the rerank stage keeps
the first stage's order for that mode.

    >>> from ragloop.retrieval.rerank_fusion import fit_weights, read_combinations
    >>> combo = fit_weights("bm25", rerank_scores, first_scores, gold)   # per-question arrays, first-stage order
    >>> combo.use, combo.weights, combo.held_out["gold@1"]
    ('combination', {'rerank': 1.0, 'first_stage_rank': 1.5, 'first_stage_score': 0.5},
     {'first_stage': 0.775, 'rerank': 0.745, 'combination': 0.81})
    >>> combo.final(rerank_scores[0], first_scores[0])                    # one question's final scores

A reranker folder keeps them in ragloop_reranker.json under "combination" ({mode: entry}, `entries`);
`Reranker.from_pretrained` reads them back (`read_combinations`) and `Retriever` applies the one of its
mode. A mode without an entry (old folders, hub cross-encoders) is reranked by the cross-encoder alone.
`ragloop.training.rerank_fit` fits them for a trained reranker.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ragloop.constants import SEARCH_MODES
from ragloop.errors import RagloopError

FEATURES = ("rerank", "first_stage_rank", "first_stage_score")
USES = ("combination", "first_stage")  # what a saved entry says the rerank stage does for its mode
RANK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SCORE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
MRR_DEPTH = 10
SIGN_TEST_P = 0.05  # a combination is used only where it beats the first stage at this level


@dataclass(frozen=True)
class Combination:
    """One first-stage mode's saved combination: what the rerank stage does (`use`), the weights of the
    FEATURES, and what they measured on the held-out questions ({"questions", "gold@1": {"first_stage",
    "rerank", "combination"}, "mrr@10": {...}})."""

    mode: str
    use: str
    weights: dict[str, float]
    held_out: dict = field(default_factory=dict)

    def final(self, rerank: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Final float32 scores of one question's candidates, given in the first stage's order."""
        w = np.array([self.weights[f] for f in FEATURES], dtype=np.float64)
        return (features(rerank, first) @ w).astype(np.float32)

    def to_dict(self) -> dict:
        return {"use": self.use, "weights": dict(self.weights), "held_out": self.held_out}

    def reason(self) -> str:
        """Why the mode falls back (or not), from the held-out figures, for the log."""
        gold, n = self.held_out.get("gold@1", {}), self.held_out.get("questions")
        return (f"on {n} held-out questions no combination beat the first stage's gold@1 "
                f"{gold.get('first_stage')} by more than chance (plain rerank {gold.get('rerank')}, best "
                f"combination {gold.get('combination')})")


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over one question's candidates; zeros where they are all equal (or just one)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std() if len(x) else 0.0
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def features(rerank: np.ndarray, first: np.ndarray) -> np.ndarray:
    """[n, 3] FEATURES of one question's n candidates, in the first stage's order."""
    rerank, first = np.asarray(rerank), np.asarray(first)
    if rerank.shape != first.shape or rerank.ndim != 1:
        raise ValueError(f"rerank scores {rerank.shape} and first-stage scores {first.shape} must be one 1-d shape")
    return np.stack([zscore(rerank), -np.log(np.arange(1, len(first) + 1, dtype=np.float64)), zscore(first)], axis=1)


def fit_weights(mode: str, rerank: list[np.ndarray], first: list[np.ndarray], gold: list[np.ndarray]
                ) -> Combination:
    """The combination for `mode` fitted on held-out questions: per question, its candidates' reranker
    scores, first-stage scores and gold flags (its own paragraph), all in the first stage's order. A
    question with no gold candidate counts as a miss for every ranking."""
    if not len(rerank) == len(first) == len(gold) or not rerank:
        raise RagloopError(f"fitting the {mode} combination needs held-out questions with as many score lists as "
                           f"gold lists (got {len(rerank)}, {len(first)}, {len(gold)})")
    feats, is_gold, empty = _padded(rerank, first, gold)
    if not feats.shape[1]:
        raise RagloopError(f"fitting the {mode} combination: the first stage found no candidate for any question")

    def ranked(w_rank: float, w_score: float) -> tuple[float, float, np.ndarray]:
        return _gold1_mrr(np.where(empty, -np.inf, feats @ np.array([1.0, w_rank, w_score])), is_gold)

    grid = {(b, c): ranked(b, c)[:2] for b, c in itertools.product(RANK_WEIGHTS, SCORE_WEIGHTS)}
    (b, c), best = max(grid.items(), key=lambda kv: (kv[1], -(kv[0][0] + kv[0][1])))
    first_stage = (float(is_gold[:, 0].mean()), _mrr(is_gold))
    plain = grid[(0.0, 0.0)]
    top_right = ranked(b, c)[2]
    wins, losses = int((top_right & ~is_gold[:, 0]).sum()), int((~top_right & is_gold[:, 0]).sum())
    p_value = sign_test(wins, losses)
    use = "combination" if wins > losses and p_value < SIGN_TEST_P else "first_stage"
    held_out = {"questions": len(rerank), "depth": int(feats.shape[1]),
                "against_first_stage": {"wins": wins, "losses": losses, "p": round(p_value, 4)},
                "gold@1": {"first_stage": round(first_stage[0], 4), "rerank": round(plain[0], 4),
                           "combination": round(best[0], 4)},
                f"mrr@{MRR_DEPTH}": {"first_stage": round(first_stage[1], 4), "rerank": round(plain[1], 4),
                                     "combination": round(best[1], 4)}}
    return Combination(mode, use, dict(zip(FEATURES, (1.0, b, c))), held_out)


def _padded(rerank, first, gold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[Q, D, 3] features, [Q, D] gold flags, and [Q, D] True past a question's candidates."""
    depth = max(len(g) for g in gold)
    feats = np.zeros((len(gold), depth, len(FEATURES)))
    is_gold = np.zeros((len(gold), depth), dtype=bool)
    empty = np.ones((len(gold), depth), dtype=bool)
    for q, (r, f, g) in enumerate(zip(rerank, first, gold)):
        if not len(r) == len(f) == len(g):
            raise RagloopError(f"held-out question {q}: {len(r)} reranker scores, {len(f)} first-stage scores and "
                               f"{len(g)} gold flags")
        if len(g):
            feats[q, : len(g)] = features(r, f)
            is_gold[q, : len(g)] = np.asarray(g, dtype=bool)
            empty[q, : len(g)] = False
    return feats, is_gold, empty


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of at least `wins` wins in wins + losses fair coin flips."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def _gold1_mrr(final: np.ndarray, is_gold: np.ndarray) -> tuple[float, float, np.ndarray]:
    """gold@1 and mrr@10 of [Q, D] final scores (ties in the first stage's order), and per question whether
    gold is on top."""
    order = np.argsort(-final, axis=1, kind="stable")
    ranked = np.take_along_axis(is_gold, order, axis=1)
    return float(ranked[:, 0].mean()), _mrr(ranked), ranked[:, 0]


def _mrr(ranked_gold: np.ndarray) -> float:
    """mrr@10 of [Q, D] gold flags in ranked order."""
    hit = ranked_gold[:, :MRR_DEPTH]
    found = hit.any(axis=1)
    return float(np.where(found, 1.0 / (hit.argmax(axis=1) + 1), 0.0).mean())


# -- the saved form -------------------------------------------------------------------------------


def entries(combinations: dict[str, Combination]) -> dict:
    """The "combination" entry of ragloop_reranker.json: {mode: {"use", "weights", "held_out"}}."""
    return {mode: c.to_dict() for mode, c in sorted(combinations.items())}


def read_combinations(entry, where: str) -> dict[str, Combination]:
    """The combinations saved under "combination" in `where` (a folder's settings file), checked: a known
    mode, a known use, the three weights as finite numbers. None or {}: none."""
    if not entry:
        return {}
    if not isinstance(entry, dict):
        raise RagloopError(f"{where}: 'combination' must be a mapping of search mode to combination")
    out = {}
    for mode, value in entry.items():
        if mode not in SEARCH_MODES:
            raise RagloopError(f"{where}: combination for unknown search mode {mode!r} ({', '.join(SEARCH_MODES)})")
        if not isinstance(value, dict) or value.get("use") not in USES:
            raise RagloopError(f"{where}: combination {mode!r} needs 'use' = one of {', '.join(USES)}")
        weights = value.get("weights")
        if not isinstance(weights, dict) or set(weights) != set(FEATURES) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights.values()):
            raise RagloopError(f"{where}: combination {mode!r} needs finite 'weights' for {', '.join(FEATURES)} "
                               f"(got {weights!r:.120})")
        out[mode] = Combination(mode, value["use"], {f: float(weights[f]) for f in FEATURES},
                                dict(value.get("held_out") or {}))
    return out
