"""Readers: how the reader model reads a question's k passages. One entry of `READERS` per reader mode
(`RAGConfig.mode`), each a loss that trains it and a decoder (or, extractive, a span search) that
answers with it, and how its model loads.

    p(y|x) = Σ_z p(z|x) p(y|x,z)          RAG-Sequence: one passage z for the whole answer
    p(y|x) = Π_t Σ_z p(z|x) p(y_t|x,z,y<t) RAG-Token: the passage may change at every token
    p(y|x) = Π_t p(y_t|x,z_1..z_K,y<t)     FiD (Izacard & Grave 2021): one decoder reads all k passages
    p(y|x) = Σ_z p(z|x) Σ_{s=y in z} p(s|x,z)  span: spans of the passages (extractive.py, REALM/ORQA)

    >>> from ragloop.generation.readers import READERS
    >>> reader = READERS["token"]
    >>> gen = reader.load("bundled:minilm-bert2bert")             # the reader's model: a Generator here
    >>> parts = reader.loss(gen, questions, passages, answers, doc_logprobs, config)
    >>> (parts.nll if parts.retriever is None else parts.nll + parts.retriever).mean().backward()
    >>> inputs = gen.build_inputs(questions, passages)            # row b*K + k: question b, passage k
    >>> gen.decode(reader.decode(gen, inputs, doc_logprobs, 4, 32, config))   # one answer a question
    >>> READERS["span"].read(span_reader, questions, passages, doc_logprobs, 16, config)   # extractive

`doc_logprobs` [B, K] is log p(z|x) of each question's passages (the RAG model computes it from the
question encoder). The RAG modes train the question encoder through their marginal over p(z|x). FiD
has no p(z|x) in its likelihood: its question encoder learns by perplexity distillation (Atlas,
Izacard et al. 2022), KL(softmax(log p(y|x,z) / T) || p(z|x)) over the k passages
(`distillation_loss`), added to the reader's NLL; each part trains only its own side.

A new reader mode is one entry of `READERS`, its name and description in
`ragloop.constants.READER_MODES` (a test checks they agree), and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.modeling_outputs import BaseModelOutput

from ragloop.constants import DEFAULT_ENCODER, DEFAULT_GENERATOR
from ragloop.generation.constrain import answer_constraint
from ragloop.generation.decoding import sequence_decode, token_beam_search
from ragloop.generation.extractive import Reading, SpanReader
from ragloop.generation.fusion import fid_decode, fused_token_logprobs
from ragloop.generation.generator import IGNORE_INDEX, Generator
from ragloop.generation.pruning import greedy_token_decode

if TYPE_CHECKING:
    from ragloop.config import RAGConfig

__all__ = ["READERS", "Reader", "ReaderLoss", "distillation_loss", "fid_loss", "passage_token_logprobs",
           "rag_sequence_loss", "rag_token_loss", "span_loss"]


# -- losses ---------------------------------------------------------------------------------------


def rag_sequence_loss(doc_logprobs: torch.Tensor, token_logprobs: torch.Tensor,
                      target_mask: torch.Tensor) -> torch.Tensor:
    """−log Σ_z p(z|x) Π_t p(y_t|x,z,y<t), per example [B].

    doc_logprobs [B, K] = log p(z|x); token_logprobs [B, K, T] = log p(gold y_t|x,z,y<t);
    target_mask [B, T] is true at real target positions. Computed in float32.
    """
    mask = target_mask.bool().unsqueeze(1)
    seq = token_logprobs.float().masked_fill(~mask, 0.0).sum(-1)  # [B, K]
    return -torch.logsumexp(doc_logprobs.float() + seq, dim=1)


def rag_token_loss(doc_logprobs: torch.Tensor, token_logprobs: torch.Tensor,
                   target_mask: torch.Tensor) -> torch.Tensor:
    """−Σ_t log Σ_z p(z|x) p(y_t|x,z,y<t), per example [B]. Same shapes as `rag_sequence_loss`."""
    mask = target_mask.bool()
    tokens = token_logprobs.float().masked_fill(~mask.unsqueeze(1), 0.0)
    per_position = torch.logsumexp(doc_logprobs.float().unsqueeze(-1) + tokens, dim=1)  # [B, T]
    return -per_position.masked_fill(~mask, 0.0).sum(-1)


def distillation_loss(doc_logprobs: torch.Tensor, passage_scores: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(p_target || p_retr) per example [B] (Atlas' perplexity distillation, Izacard et al. 2022).

    doc_logprobs [B, K] = log p_retr(z|x), the retriever's; passage_scores [B, K] = log p(y|x,z) of the
    gold answer given each passage alone, from the reader; p_target = softmax(passage_scores / T) over
    the k passages. The target carries no gradient: only the retriever learns from this loss."""
    target = torch.log_softmax(passage_scores.detach().float() / temperature, dim=-1)
    return (target.exp() * (target - doc_logprobs.float())).sum(-1)


# -- readers: how the generator reads k passages ------------------------------------------------


@dataclass
class ReaderLoss:
    """What a reader's loss returns: `nll` [B], the answer's negative log-likelihood under the reader;
    `retriever` [B], a separate loss that trains the retriever, or None where `nll` trains it too
    (the RAG modes marginalise over p(z|x)). The model trains on their sum."""

    nll: torch.Tensor
    retriever: torch.Tensor | None = None


@dataclass
class Reader:
    """One reader mode: the loss that trains it and how it answers. A new mode is one entry of
    `READERS` (its name and description also in `ragloop.constants.READER_MODES`, which the CLI reads
    without torch) and its tests; `RAGConfig.mode` names one.

        loss(model, questions, passages [B][K], answers, doc_logprobs [B, K], config) -> ReaderLoss
        decode(generator, inputs, doc_logprobs [B, K], num_beams, max_new_tokens, config) -> ids per question
        read(model, questions, passages, doc_logprobs, max_new_tokens, config) -> Reading per question

    A generative mode decodes token ids (`inputs` from `Generator.build_inputs`, row b*K + k: question
    b with passage k), which the model turns into text and copied spans; an extractive one `read`s
    answers as spans of the passages instead (`decode` None). `load(name_or_path)` loads the mode's
    model (`default_model` unless told otherwise). `fused`: the decoder reads a question's k encodings
    side by side (FiD), so the copied spans of an answer are found over that fused source too."""

    loss: Callable[..., ReaderLoss]
    decode: Callable[[Generator, dict, torch.Tensor, int, int, RAGConfig], list[list[int]]] | None = None
    fused: bool = False
    read: Callable[..., list[Reading]] | None = None
    load: Callable[[str], Generator | SpanReader] = Generator.from_pretrained
    default_model: str = DEFAULT_GENERATOR

    @property
    def extractive(self) -> bool:
        """Whether its answers are spans of the passages read (so it has nothing to say closed book)."""
        return self.read is not None


def passage_token_logprobs(gen: Generator, inputs: dict, labels: torch.Tensor, k: int,
                           encoder_outputs=None) -> torch.Tensor:
    """log p(gold y_t | x, z, y<t) [B, K, T], each passage read on its own (0 at padded targets).
    Give `encoder_outputs` [B*K, L, H] of `inputs` to skip the encoder."""
    token_logprobs = gen(inputs["input_ids"], inputs["attention_mask"], labels.repeat_interleave(k, dim=0),
                         encoder_outputs=encoder_outputs)
    return token_logprobs.view(labels.shape[0], k, -1)


def _on_tokens(loss: Callable[[Generator, dict, torch.Tensor, torch.Tensor, RAGConfig], ReaderLoss]):
    """A generative mode's loss from text: the generator's inputs (row b*K + k) and gold token labels
    (pads -100) built, then `loss(gen, inputs, labels, doc_logprobs, config)`."""

    def from_text(gen: Generator, questions: list[str], passages: list[list], answers: list[str],
                  doc_logprobs: torch.Tensor, config: RAGConfig) -> ReaderLoss:
        inputs = {name: t.to(gen.device) for name, t in gen.build_inputs(questions, passages).items()}
        labels = gen.tokenize_targets(answers).to(gen.device)
        return loss(gen, inputs, labels, doc_logprobs.to(gen.device), config)

    return from_text


def _marginal_loss(loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
    """A RAG mode's reader loss: `loss` over each passage's gold-token log-probs; the marginal over
    p(z|x) trains the retriever too."""

    def reader_loss(gen: Generator, inputs: dict, labels: torch.Tensor, doc_logprobs: torch.Tensor,
                    config: RAGConfig) -> ReaderLoss:
        token_logprobs = passage_token_logprobs(gen, inputs, labels, doc_logprobs.shape[1])
        return ReaderLoss(loss(doc_logprobs, token_logprobs, labels != IGNORE_INDEX))

    return _on_tokens(reader_loss)


def fid_loss(gen: Generator, inputs: dict, labels: torch.Tensor, doc_logprobs: torch.Tensor,
             config: RAGConfig) -> ReaderLoss:  # on token ids: READERS wraps it with `_on_tokens`
    """Fusion-in-Decoder: the NLL of the answer from one decoder pass over all k passages' encoder
    states (the reader's only gradient), and, when p(z|x) carries a gradient (the question or
    passage encoder trains), `distillation_loss` towards the reader's likelihood of the answer given
    each passage alone, scored under no_grad on the same encoder states (the retriever's only gradient).
    A frozen retriever costs no distillation pass."""
    k = doc_logprobs.shape[1]
    encoded = gen.encode(inputs["input_ids"], inputs["attention_mask"])
    nll = -fused_token_logprobs(gen, inputs, labels, k, encoded=encoded).sum(-1)
    if not doc_logprobs.requires_grad:
        return ReaderLoss(nll)
    with torch.no_grad():
        alone = BaseModelOutput(last_hidden_state=encoded.last_hidden_state.detach())
        passage_scores = passage_token_logprobs(gen, inputs, labels, k, encoder_outputs=alone).sum(-1)
    return ReaderLoss(nll, distillation_loss(doc_logprobs, passage_scores, config.distill_temperature))


def _decode_sequence(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                     max_new_tokens: int, config: RAGConfig) -> list[list[int]]:
    return sequence_decode(gen, inputs, doc_logprobs, num_beams, max_new_tokens, config.rescore_batch_size,
                           answer_constraint(gen, inputs, doc_logprobs.shape[1], config.constrain))


def _decode_token(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                  max_new_tokens: int, config: RAGConfig) -> list[list[int]]:
    """Greedy: the same answers, leaving out the passages a bound proves idle (pruning.py)."""
    constraint = answer_constraint(gen, inputs, doc_logprobs.shape[1], config.constrain)
    if num_beams == 1:
        return greedy_token_decode(gen, inputs, doc_logprobs, max_new_tokens, constraint, config.prune_mass)
    return token_beam_search(gen, inputs, doc_logprobs, num_beams, max_new_tokens, constraint=constraint)


def _decode_fid(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                max_new_tokens: int, config: RAGConfig) -> list[list[int]]:
    k = doc_logprobs.shape[1]
    return fid_decode(gen, inputs, k, num_beams, max_new_tokens, answer_constraint(gen, inputs, k, config.constrain))


def span_loss(reader: SpanReader, questions: list[str], passages: list[list], answers: list[str],
              doc_logprobs: torch.Tensor, config: RAGConfig) -> ReaderLoss:
    """The span reader's marginal NLL over the k passages and every span matching the answer
    (`extractive.span_marginal_nll`); the retriever learns through p(z|x) in it, as in the RAG modes."""
    return ReaderLoss(reader.loss(questions, passages, answers, doc_logprobs.to(reader.device)))


def _read_spans(reader: SpanReader, questions: list[str], passages: list[list], doc_logprobs: torch.Tensor,
                max_new_tokens: int, config: RAGConfig) -> list[Reading]:
    return reader.read(questions, passages, doc_logprobs, min(max_new_tokens, config.max_target_length))


READERS: dict[str, Reader] = {
    # one passage for the whole answer
    "sequence": Reader(loss=_marginal_loss(rag_sequence_loss), decode=_decode_sequence),
    # the passage may change at every token
    "token": Reader(loss=_marginal_loss(rag_token_loss), decode=_decode_token),
    # all k passages' encoder states read by one decoder pass; the retriever learns by distillation
    "fid": Reader(loss=_on_tokens(fid_loss), decode=_decode_fid, fused=True),
    # extractive: the best span of the k passages, scored with p(z|x) and the reader's start/end heads
    "span": Reader(loss=span_loss, read=_read_spans, load=SpanReader.from_pretrained, default_model=DEFAULT_ENCODER),
}
