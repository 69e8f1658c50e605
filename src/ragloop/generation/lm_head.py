"""The LM head of a decoding step, computed weight first: the same logits, several times faster on CPU.

    >>> from ragloop.generation.lm_head import weight_first
    >>> with torch.no_grad(), weight_first(gen.model):
    ...     out = gen.model(encoder_outputs=..., decoder_input_ids=tokens[:, -1:], ...)   # out.logits as before

A decoding step multiplies a few rows of hidden states (k passages × beams, one position each) by the
vocabulary-sized output matrix W [V, d]. `F.linear(x, W)` computes x Wᵀ, and for a handful of rows
CPU BLAS runs that product several times slower than W xᵀ, the same numbers with W as the left
operand (the bench's T5, V = 30,522, d = 256, 5 rows: about 5.5 ms against 1.5 ms a step on the
2-core bench machine). The LM head dominates a small model's decoding step, so this is where a
greedy answer spends much of its time.

The logits are the same dot products; only the order of the additions inside each may differ, as it
does already between batches of different sizes (`F.linear(x, W)[:1]` and `F.linear(x[:1], W)` differ
in the last bits): an answer can change only where two tokens tie to float32 rounding. Only a plain
`nn.Linear` output layer is swapped (a quantized one is left as it is), only without gradient, and
only for the duration of the block; the module's weights and state dict are untouched.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch


@contextmanager
def weight_first(model: torch.nn.Module):
    """Within the block (and without gradient), `model`'s output embedding computes W xᵀ instead of
    x Wᵀ. Nothing changes for a model without a plain `nn.Linear` output layer, or under a block that
    already swapped it (the outer one restores it)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not torch.nn.Linear or torch.is_grad_enabled() or "forward" in vars(head):
        yield
        return
    head.forward = types.MethodType(_forward, head)
    try:
        yield
    finally:
        vars(head).pop("forward", None)  # another thread's block may have restored it already


def _forward(head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    logits = (head.weight @ flat.T).T.contiguous()
    if head.bias is not None:
        logits = logits + head.bias
    return logits.view(*x.shape[:-1], head.out_features)
