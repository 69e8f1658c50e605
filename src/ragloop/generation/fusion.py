"""Fusion-in-Decoder (Izacard & Grave 2021): the k passages of a question are encoded apart and read
together, by one decoder pass over all their encoder states.

    >>> from ragloop.generation.fusion import fid_decode, fuse, fused_token_logprobs
    >>> inputs = gen.build_inputs(questions, passages)       # [B*K, L]: question b with passage k, row b*K + k
    >>> encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])    # each pair on its own
    >>> fused, fused_inputs = fuse(encoded, inputs, k)       # states [B, K*L, H]; input_ids, mask [B, K*L]
    >>> fused_token_logprobs(gen, inputs, labels, k)         # log p(gold y_t | x, z_1..z_K, y<t) [B, T]
    >>> fid_decode(gen, inputs, k, num_beams=4, max_new_tokens=32)   # [B] token ids, one answer a question

Fusing is a reshape: the K rows of a question, each right-padded to the batch's L, become one row of
K*L positions whose padding stays masked. The source token ids are fused the same way, so a copy
head (`CopyHead`) copies from the tokens of all k passages. Decoding reuses decoding.py's beam search
on the fused states (one row a question), so any seq2seq generator works, with or without a copy head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers.modeling_outputs import BaseModelOutput

from ragloop._torch import eval_mode
from ragloop.errors import RagloopError
from ragloop.generation.decoding import beam_search

if TYPE_CHECKING:
    from ragloop.generation.constrain import PassageSpans
    from ragloop.generation.generator import Generator


def fuse(encoded, inputs: dict, k: int) -> tuple[BaseModelOutput, dict]:
    """(encoder outputs [B, K*L, H], {input_ids, attention_mask} [B, K*L]) from the per-pair encoder
    outputs [B*K, L, H] of `inputs` (from `build_inputs`, B questions with k passages each)."""
    rows, length = inputs["input_ids"].shape
    if k < 1 or rows % k:
        raise RagloopError(f"fusion-in-decoder: {rows} input rows are not k={k} passages for each question")
    hidden = encoded.last_hidden_state
    if tuple(hidden.shape[:2]) != (rows, length):
        raise RagloopError(f"fusion-in-decoder: encoder states of shape {tuple(hidden.shape)} do not match "
                           f"inputs of shape {(rows, length)}")
    batch_size = rows // k
    fused = BaseModelOutput(last_hidden_state=hidden.reshape(batch_size, k * length, hidden.shape[-1]))
    return fused, {name: inputs[name].reshape(batch_size, k * length) for name in ("input_ids", "attention_mask")}


def fused_token_logprobs(gen: Generator, inputs: dict, labels: torch.Tensor, k: int,
                         encoded=None) -> torch.Tensor:
    """log p(gold y_t | x, z_1..z_K, y<t) [B, T] in float32 (0 at padded targets), one decoder pass per
    question over its k fused passages. Give `encoded` (from `gen.encode(...)` of `inputs`) to skip
    the encoder."""
    if encoded is None:
        encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
    fused, fused_inputs = fuse(encoded, inputs, k)
    return gen(fused_inputs["input_ids"], fused_inputs["attention_mask"], labels, encoder_outputs=fused)


def fid_decode(gen: Generator, inputs: dict, k: int, num_beams: int, max_new_tokens: int,
               constraint: Sequence[PassageSpans] | None = None) -> list[list[int]]:
    """The best beam (greedy at num_beams=1) of each question, decoded over its k fused passages;
    the encoder runs once a (question, passage) pair. With a `constraint` (one a question, from
    `constrain.answer_constraint`), answers are held to it. Runs in eval mode (no dropout); call it
    under `torch.no_grad()`."""
    inputs = {name: t.to(gen.device) for name, t in inputs.items()}
    with eval_mode(gen):
        encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
        fused, fused_inputs = fuse(encoded, inputs, k)
        return beam_search(gen, fused_inputs, num_beams, max_new_tokens, encoded=fused, constraint=constraint)
