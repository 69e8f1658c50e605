"""Data parallelism under a launcher: `torchrun` or `accelerate launch` start one process per GPU (or
per CPU slot) and set RANK / WORLD_SIZE / LOCAL_RANK; ragloop reads them through accelerate. Nothing
here starts processes.

    torchrun --nproc_per_node 4 -m ragloop train ...        # 4 GPUs: global batch 4 x --batch_size
    accelerate launch --num_processes 2 --cpu -m ragloop train ...   # 2 CPU processes (gloo)

How a global batch is split (`rank_share`): every process builds the same length-grouped batches of
P x B examples (deterministic in seed and epoch) and takes every P-th one, starting at its rank.
Its loss is weighted so that DDP's gradient average is exactly the gradient of the global batch's
mean loss, so P processes with --batch_size B train like one process with --batch_size P*B.
"""

from __future__ import annotations

import atexit
import logging
import os

import torch

log = logging.getLogger(__name__)

_exit_hook = False


def launched_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cpu_distributed() -> bool:
    """Whether to ask accelerate for CPU processes (gloo). `accelerate launch --cpu` asks itself; under
    plain `torchrun` on a machine without a GPU accelerate would otherwise run every process alone."""
    return launched_world_size() > 1 and not torch.cuda.is_available()


def destroy_process_group_at_exit() -> None:
    """Tear the process group down when the interpreter exits (gloo aborts the process otherwise),
    without ending it under a caller that still uses it."""
    global _exit_hook
    if _exit_hook:
        return
    _exit_hook = True

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def rank_share(batch: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's examples of a global batch and the weight for its (mean) loss.

    Process r takes batch[r::world] (strided, so every process gets short and long examples alike) and
    weights its mean loss by world * n_r / n: DDP averages gradients over processes, which then gives
    (1/n) Σ ∇loss_i, the gradient of the global batch's mean loss, even for a short last batch. A
    process left with nothing (a last batch smaller than `world`) runs the batch's first example at
    weight 0, so every process still takes part in the gradient all-reduce.
    """
    if world == 1:
        return list(batch), 1.0
    mine = list(batch[rank::world])
    if not mine:
        return list(batch[:1]), 0.0
    return mine, world * len(mine) / len(batch)


def freeze_unused_parameters(model: torch.nn.Module, loss_fn) -> list[str]:
    """Freeze trainable parameters that get no gradient from the training loss; returns their names.

    DDP (with find_unused_parameters=False, the fast default) fails on a parameter that never receives
    a gradient, such as the BERT pooler of a mean-pooled MiniLM question encoder or of a BERT2BERT
    generator's encoder. One probe backward (`loss_fn()` returns a loss of the model) finds them; they
    would never change anyway (AdamW skips parameters without a gradient), so freezing them changes no
    numbers and spares DDP the per-step graph search that find_unused_parameters=True would cost.
    """
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    unused = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for _, p in unused:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return [name for name, _ in unused]
