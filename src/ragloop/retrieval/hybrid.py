"""Fuse ranked lists from dense and BM25 retrieval.

Reciprocal-rank fusion (Cormack et al. 2009) needs no score calibration:
    score(d) = w / (c + rank_dense(d)) + (1 - w) / (c + rank_bm25(d))
Normalised-score fusion min-max scales each list per query, then mixes:
    score(d) = w * dense'(d) + (1 - w) * bm25'(d)      (0 for a list that missed d)
`w` is the dense weight in both.
"""

from __future__ import annotations

import math

import numpy as np

from ragloop.errors import RagloopError

FUSIONS = ("rrf", "score")


def check_fusion(method: str, weight: float) -> None:
    """A known fusion method and a dense weight in [0, 1] (NaN, infinities and bools refused)."""
    if method not in FUSIONS:
        raise RagloopError(f"unknown fusion method {method!r}; choose one of {', '.join(FUSIONS)}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
            or not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise RagloopError(f"the dense weight of hybrid fusion must be a number in [0, 1] (got {weight!r})")


def fuse(
    dense: tuple[np.ndarray, np.ndarray],
    sparse: tuple[np.ndarray, np.ndarray],
    k: int,
    method: str = "rrf",
    weight: float = 0.5,
    rrf_c: int = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """Each input is (scores, rows) of shape (n_queries, depth), rows -1 for no hit. Returns the top k."""
    check_fusion(method, weight)
    n = dense[1].shape[0]
    out_scores = np.zeros((n, k), dtype=np.float32)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        combined: dict[int, float] = {}
        for (scores, rows), w in ((dense, weight), (sparse, 1.0 - weight)):
            valid = rows[q] >= 0
            r, s = rows[q][valid], scores[q][valid]
            if not len(r):
                continue
            if method == "rrf":
                contrib = w / (rrf_c + np.arange(1, len(r) + 1))
            else:
                span = s.max() - s.min()
                contrib = w * ((s - s.min()) / span if span > 0 else np.ones_like(s))
            for row, c in zip(r.tolist(), contrib.tolist()):
                combined[row] = combined.get(row, 0.0) + c
        best = sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for j, (row, score) in enumerate(best):
            out_rows[q, j], out_scores[q, j] = row, score
    return out_scores, out_rows
