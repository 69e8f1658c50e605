"""Length-grouped batches: examples of similar length share a batch, so padding stays small, while
the order still changes every epoch. Deterministic in (seed, epoch), which exact resume relies on."""

from __future__ import annotations

import random


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                           group_factor: int = 50) -> list[list[int]]:
    """Shuffle, cut into mega-batches of `group_factor` batches, sort each by length (longest first),
    cut into batches, then shuffle the batches."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
