"""The optimisation loop the small trainers share (retriever, reranker): shuffled batches of item
indices, a loss per batch, clipping, AdamW + scheduler steps, a progress bar and a log line every
`logging_steps` with the window's mean loss.

    >>> total = total_steps(cfg, len(items))
    >>> losses, seconds = run_steps(lambda idx: loss_of([items[i] for i in idx]), len(items), total, cfg,
    ...                             params, optimizer, scheduler, "training reranker", progress)

`cfg` needs batch_size, num_epochs, max_steps, max_grad_norm, logging_steps and seed. The RAG trainer
(trainer.py) has its own loop: it adds accumulation, mixed precision, DDP, evaluation and checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ragloop.quiet import bar_disabled

log = logging.getLogger(__name__)


def total_steps(cfg, n_items: int) -> int:
    """`cfg.max_steps` if set (and not 0), else `cfg.num_epochs` passes over `n_items` in batches."""
    return cfg.max_steps or math.ceil(n_items / cfg.batch_size) * cfg.num_epochs


def run_steps(loss_fn: Callable[[list[int]], torch.Tensor], n_items: int, total: int, cfg, params: list,
              optimizer: torch.optim.Optimizer, scheduler, desc: str,
              progress: bool | None = None, on_step: Callable[[int], None] | None = None
              ) -> tuple[list[float], float]:
    """Run `total` optimizer steps; each epoch is a fresh permutation seeded by (seed, epoch); `on_step(step)`
    after each (the reranker trainer scores its held-out split there). Returns (the loss of every step,
    seconds)."""
    steps_per_epoch = math.ceil(n_items / cfg.batch_size)
    losses: list[float] = []
    step, t0 = 0, time.time()
    bar = tqdm(total=total, desc=desc, unit="step", disable=bar_disabled(progress))
    while step < total:
        order = np.random.default_rng([cfg.seed, step // steps_per_epoch]).permutation(n_items).tolist()
        for start in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            loss = loss_fn(order[start : start + cfg.batch_size])
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            lr = scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if step % cfg.logging_steps == 0 or step == total:
                log.info("step %d/%d loss %.4f (mean of last %d: %.4f) lr %.2e, %.1fs", step, total, losses[-1],
                         min(cfg.logging_steps, step), np.mean(losses[-cfg.logging_steps:]), lr, time.time() - t0)
            if on_step is not None:
                on_step(step)
    bar.close()
    return losses, round(time.time() - t0, 1)
