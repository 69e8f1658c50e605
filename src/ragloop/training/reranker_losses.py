"""The reranker's two losses, over one relevance logit per (question, passage) pair of a batch.

    >>> pairs = batch_pairs(batch)                 # (question, passage row) per pair, item by item
    >>> flat = model_logits(pairs)                 # one logit per pair, in that order
    >>> listwise_loss(flat, batch)                 # or bce_loss(flat, batch, pos_weight=3.0)

A batch is `TrainItem`s; each brings its positive (if any) then its negatives, in that order.

- listwise (Gao et al. 2021's LCE, sentence-transformers' listwise cross-encoder training): per
  answerable question, the softmax cross-entropy of its positive within its group (positive + its
  negatives). An unanswerable question's pair (its own paragraph) has no group of its own: it joins
  every group of the batch as one more negative, so that its score is pushed below each positive.
  A batch of unanswerable questions only gives a zero loss (with a gradient of zeros).
- bce: binary cross-entropy per pair (1 for a positive, 0 for every negative and unanswerable pair),
  positives weighed by `pos_weight` (the trainer passes the negatives per positive, as
  sentence-transformers' BinaryCrossEntropyLoss examples do), averaged over the pairs.
"""

from __future__ import annotations

import torch

from ragloop.training.negatives import TrainItem


def batch_pairs(batch: list[TrainItem]) -> list[tuple[str, int]]:
    """(question, passage row) of every pair of the batch: each item's positive (if any), then its negatives."""
    return [(it.question, r) for it in batch for r in _rows(it)]


def _rows(it: TrainItem) -> list[int]:
    return ([] if it.positive is None else [it.positive]) + list(it.negatives)


def listwise_loss(flat: torch.Tensor, batch: list[TrainItem]) -> torch.Tensor:
    """Mean softmax cross-entropy of each answerable item's positive among its group and every
    unanswerable pair of the batch (see the module)."""
    groups, extra, start = [], [], 0
    for it in batch:
        n = len(_rows(it))
        if it.positive is None:
            extra.extend(range(start, start + n))
        else:
            groups.append((start, n))
        start += n
    if not groups:
        return flat.sum() * 0.0
    width = max(n for _, n in groups)
    scores = torch.full((len(groups), width + len(extra)), float("-inf"), device=flat.device, dtype=flat.dtype)
    for i, (s, n) in enumerate(groups):
        scores[i, :n] = flat[s : s + n]
    if extra:
        scores[:, width:] = flat[extra].unsqueeze(0)
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(groups), dtype=torch.long, device=flat.device))


def bce_loss(flat: torch.Tensor, batch: list[TrainItem], pos_weight: float) -> torch.Tensor:
    """Mean binary cross-entropy of every pair, positives weighed by `pos_weight`."""
    labels = torch.tensor([float(it.positive is not None and j == 0) for it in batch for j in range(len(_rows(it)))],
                          device=flat.device, dtype=flat.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(
        flat, labels, pos_weight=torch.tensor(pos_weight, device=flat.device, dtype=flat.dtype))
