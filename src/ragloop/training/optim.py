"""How the three trainers (RAG, retriever, reranker) optimise, written once: parameter groups, the
10x learning rate of new layers, AdamW with its linear warmup and decay, and the precision policy.

    >>> new = {id(p) for p in model.head.parameters()}
    >>> groups = param_groups(model.parameters(), (new, new_layer_lr(5e-5)), weight_decay=0.01)
    >>> optimizer = adamw(groups, lr=5e-5)
    >>> scheduler = linear_schedule(optimizer, warmup_steps=20, total=200)
    >>> autocast_dtype("auto", "cpu")      # None (fp32): "auto" picks bf16 on a GPU that has it only
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ragloop.errors import RagloopError

NEW_LAYER_LR_FACTOR = 10


def new_layer_lr(learning_rate: float, given: float | None = None) -> float:
    """The learning rate of parameters a warm start leaves untrained (a fresh classification head, a
    BERT2BERT's cross-attention): `given`, else 10x the body's. They start from noise and must move far in
    few steps: with 10x, the bundled BERT2BERT's dev F1 after 320 steps went from 0.02 to 0.045
    (`python -m bench.experiments --only generator`), and at the body's rate a reranker's fresh head
    barely moves in a CPU budget."""
    return NEW_LAYER_LR_FACTOR * learning_rate if given is None else given


def param_groups(params: Iterable[torch.nn.Parameter], *subsets: tuple[set[int], float],
                 weight_decay: float | None = None) -> list[dict]:
    """AdamW groups of the trainable `params`: first the rest (at the optimizer's rate), then one group per
    subset (ids of parameters, its learning rate; the first subset holding a parameter takes it). With
    `weight_decay`, each group splits into matrices (decayed) and vectors (biases and norms: decaying them
    only shrinks what layer norms learned). Empty groups stay, so an optimizer's saved state lines up with
    its groups whatever a run freezes."""
    groups: list[dict] = [{"params": []}] + [{"params": [], "lr": lr} for _, lr in subsets]
    for p in {id(p): p for p in params if p.requires_grad}.values():  # a shared parameter once
        groups[next((i for i, (ids, _) in enumerate(subsets, 1) if id(p) in ids), 0)]["params"].append(p)
    if weight_decay is None:
        return groups
    return [{**g, "params": [p for p in g["params"] if (p.dim() >= 2) == matrix],
             "weight_decay": weight_decay if matrix else 0.0} for g in groups for matrix in (True, False)]


def adamw(groups: list[dict], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW, fused where torch has it on every device (2.4+): one kernel for all parameters, where the
    per-tensor loop costs seconds per step on a CPU."""
    fused = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total: int):
    """Linear warmup over `warmup_steps` (at most the whole run), then linear decay to 0 at `total`."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, min(warmup_steps, total), total)


# -- precision ------------------------------------------------------------------------------------


def cpu_has_bf16() -> bool:
    """A CPU with native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast trains
    faster than fp32 (about 1.25x on the ragloop dev machines)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on `device_type` ("cuda" or "cpu"), None for fp32. "auto" (the one
    meaning for every trainer): bf16 on a GPU that has it, else fp32 — on a CPU too, whether or not it has
    native bf16, so that a run's numbers do not depend on which CPU it met (`cpu_has_bf16` tells whether
    asking for "bf16" pays there); "bf16", "fp16" (a CUDA GPU only) and "fp32" as they say."""
    if precision == "auto":
        return torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and device_type != "cuda":
        raise RagloopError("--precision fp16 needs a CUDA GPU; use bf16 (or fp32) on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def accelerate_precision(precision: str, device_type: str) -> str:
    """`autocast_dtype` as accelerate's `mixed_precision` ("bf16", "fp16" or "no")."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast_dtype(precision, device_type), "no")
