"""The RAG model (Lewis et al. 2020): a retriever and a seq2seq generator trained end to end.

    p(y|x) = Σ_z p(z|x) p(y|x,z)          RAG-Sequence: one passage z for the whole answer
    p(y|x) = Π_t Σ_z p(z|x) p(y_t|x,z,y<t) RAG-Token: the passage may change at every token
    p(y|x) = Π_t p(y_t|x,z_1..z_K,y<t)     FiD (Izacard & Grave 2021): one decoder reads all k passages

    >>> from ragloop.model import RAG, RAGConfig
    >>> rag = RAG.from_index("runs/squad-index", generator="t5-base", config=RAGConfig(n_docs=5, mode="token"))
    >>> out = rag(["who wrote hamlet?"], ["Shakespeare"])         # out.loss: mean NLL, differentiable
    >>> out.loss.backward()                                        # reaches the question encoder and the generator
    >>> rag.generate(["who wrote hamlet?"], num_beams=4)           # ['shakespeare']
    >>> rag.answer("who wrote hamlet?").passages[0]["title"]     # and ["copied"]: the span the answer copied
    >>> rag.save_pretrained("runs/rag"); rag = RAG.from_pretrained("runs/rag")

The model holds a `Retriever` (retrieval/retriever.py), the one retrieval path: its search mode
(dense, bm25, hybrid) and optional reranker choose WHICH k passages a question reads (no gradient).
How much each of those k passages counts, p(z|x), is always softmax(scale · q·d) over them, with q
from the question encoder and d the index's stored vector, so the generator's loss trains the
question encoder whatever chose the passages.
The passage side stays frozen unless `train_passage_encoder` is set (then the retrieved passages are
re-encoded with gradient, and `reindex` refreshes the FAISS vectors every so often).

How the generator reads the k passages is a reader mode, one entry of `READERS`: its loss (given the
generator, its inputs, the answer's labels and p(z|x)) and its decoder (generation/decoding.py,
generation/fusion.py); `RAGConfig.mode` names the entry, and `forward` and `generate` use it. The RAG
modes train the question encoder through their marginal over p(z|x). FiD has no p(z|x) in its
likelihood: its question encoder learns by perplexity distillation (Atlas, Izacard et al. 2022),
KL(softmax(log p(y|x,z) / T) || p(z|x)) over the k passages (`distillation_loss`), added to the
reader's NLL; each part trains only its own side.

Saved folder:
    rag_config.json      RAGConfig, encoder specs, generator name, sha256 of every model file
    question_encoder/    the (fine-tuned) question encoder
    generator/           the seq2seq model and tokenizer
    passage_encoder/     only when the passage encoder is trained
    index/               a ragloop index folder (its own manifest and checksums)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from ragloop._torch import eval_mode
from ragloop._version import __version__
from ragloop.config import RAGConfig  # the model's settings (re-exported: ragloop.model.RAGConfig)
from ragloop.constants import READER_MODES, score_scale
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.generation.decoding import sequence_decode, token_beam_search
from ragloop.generation.fusion import fid_decode, fused_token_logprobs
from ragloop.generation.generator import BUNDLED_GENERATOR, IGNORE_INDEX, Generator
from ragloop.generation.spans import copied_spans
from ragloop.io import (
    atomic_dir,
    atomic_write_json,
    checksum_files,
    legacy_name,
    only_replace,
    read_manifest_json,
    verify_files,
)
from ragloop.retrieval.encoders import BiEncoder, Encoder
from ragloop.retrieval.index import Index
from ragloop.retrieval.retriever import Retriever, check_k, check_questions

if TYPE_CHECKING:
    from ragloop.retrieval.rerank import Reranker

log = logging.getLogger(__name__)

CONFIG_FILE = "rag_config.json"
QUESTION_DIR, PASSAGE_DIR, GENERATOR_DIR, INDEX_DIR = "question_encoder", "passage_encoder", "generator", "index"
RERANKER_DIR = "reranker"
ENCODER_FILE = "ragloop_encoder.json"
FORMAT, FORMAT_VERSION = "ragloop-rag", 1


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
    """One reader mode: the loss that trains it and the decoder that answers with it. A new mode is
    one entry of `READERS` (its name also in `ragloop.config.READER_MODES`) and its tests;
    `RAGConfig.mode` names one.

        loss(generator, inputs, labels [B, T], doc_logprobs [B, K], config) -> ReaderLoss
        decode(generator, inputs, doc_logprobs [B, K], num_beams, max_new_tokens, config) -> ids per question

    `inputs` comes from `Generator.build_inputs` (row b*K + k: question b with passage k); `labels`
    from `Generator.tokenize_targets` (pads -100). `fused`: the decoder reads a question's k encodings
    side by side (FiD), so the copied spans of an answer are found over that fused source too."""

    loss: Callable[[Generator, dict, torch.Tensor, torch.Tensor, RAGConfig], ReaderLoss]
    decode: Callable[[Generator, dict, torch.Tensor, int, int, RAGConfig], list[list[int]]]
    fused: bool = False


def passage_token_logprobs(gen: Generator, inputs: dict, labels: torch.Tensor, k: int,
                           encoder_outputs=None) -> torch.Tensor:
    """log p(gold y_t | x, z, y<t) [B, K, T], each passage read on its own (0 at padded targets).
    Give `encoder_outputs` [B*K, L, H] of `inputs` to skip the encoder."""
    token_logprobs = gen(inputs["input_ids"], inputs["attention_mask"], labels.repeat_interleave(k, dim=0),
                         encoder_outputs=encoder_outputs)
    return token_logprobs.view(labels.shape[0], k, -1)


def _marginal_loss(loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
    """A RAG mode's reader loss: `loss` over each passage's gold-token log-probs; the marginal over
    p(z|x) trains the retriever too."""

    def reader_loss(gen: Generator, inputs: dict, labels: torch.Tensor, doc_logprobs: torch.Tensor,
                    config: RAGConfig) -> ReaderLoss:
        token_logprobs = passage_token_logprobs(gen, inputs, labels, doc_logprobs.shape[1])
        return ReaderLoss(loss(doc_logprobs, token_logprobs, labels != IGNORE_INDEX))

    return reader_loss


def fid_loss(gen: Generator, inputs: dict, labels: torch.Tensor, doc_logprobs: torch.Tensor,
             config: RAGConfig) -> ReaderLoss:
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
    return sequence_decode(gen, inputs, doc_logprobs, num_beams, max_new_tokens, config.rescore_batch_size)


def _decode_token(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                  max_new_tokens: int, config: RAGConfig) -> list[list[int]]:
    return token_beam_search(gen, inputs, doc_logprobs, num_beams, max_new_tokens)


def _decode_fid(gen: Generator, inputs: dict, doc_logprobs: torch.Tensor, num_beams: int,
                max_new_tokens: int, config: RAGConfig) -> list[list[int]]:
    return fid_decode(gen, inputs, doc_logprobs.shape[1], num_beams, max_new_tokens)


READERS: dict[str, Reader] = {
    # one passage for the whole answer
    "sequence": Reader(loss=_marginal_loss(rag_sequence_loss), decode=_decode_sequence),
    # the passage may change at every token
    "token": Reader(loss=_marginal_loss(rag_token_loss), decode=_decode_token),
    # all k passages' encoder states read by one decoder pass; the retriever learns by distillation
    "fid": Reader(loss=fid_loss, decode=_decode_fid, fused=True),
}
MODES = tuple(READERS)
if set(MODES) != set(READER_MODES):  # the CLI offers READER_MODES without importing this module
    raise RuntimeError(f"ragloop.config.READER_MODES {sorted(READER_MODES)} and model.READERS {sorted(MODES)} differ")


# -- results --------------------------------------------------------------------------------------


@dataclass
class Retrieval:
    """The passages for a batch of questions and how much the model trusts each one."""

    passages: list[list[Passage]]  # [B][K]
    doc_scores: torch.Tensor  # [B, K] raw q·d scores (differentiable w.r.t. the question encoder)
    doc_logprobs: torch.Tensor  # [B, K] log p(z|x)
    rows: np.ndarray | None = None  # [B, K] index rows; None for passages given by the caller


@dataclass
class RAGOutput:
    loss: torch.Tensor  # scalar: mean of `losses`
    losses: torch.Tensor  # [B] negative log-likelihood of each answer (+ the retriever's own loss, FiD)
    doc_scores: torch.Tensor  # [B, K]
    doc_logprobs: torch.Tensor  # [B, K]
    passages: list[list[Passage]] = field(default_factory=list)
    reader_loss: torch.Tensor | None = None  # scalar, no gradient: the mean answer NLL part of `loss`
    retriever_loss: torch.Tensor | None = None  # scalar, no gradient: FiD's distillation part (None: none)


@dataclass
class Answer:
    question: str
    answer: str
    # id, title, text, source, score (q·d), best first; copied: the span of text the answer copied
    # ({"start", "end", "text"}: text[start:end], generation/spans.py) or None (always without a copy head)
    passages: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


# -- the model ------------------------------------------------------------------------------------


class RAG(torch.nn.Module):
    """Question encoder + index + generator. See the module docstring for usage."""

    def __init__(self, index: Index, question_encoder: Encoder, generator: Generator,
                 config: RAGConfig | None = None, passage_encoder: Encoder | None = None,
                 reranker: Reranker | None = None) -> None:
        """`reranker`: an already loaded `config.rerank` (else it is loaded by name or path)."""
        super().__init__()
        self.config = config or RAGConfig()
        if question_encoder.dim != index.dim:
            raise RagloopError(f"{index.path}: index vectors have dim {index.dim}, question encoder "
                              f"{question_encoder.spec.name!r} has dim {question_encoder.dim}")
        self.question_encoder = question_encoder
        self.retriever = Retriever(index, question_encoder, mode=self.config.search_mode)
        self.retriever.set_reranker(reranker if reranker is not None else self.config.rerank, self.config.rerank_depth)
        self.generator = generator
        generator.max_source_length = self.config.max_source_length  # the config is the one source of truth
        generator.max_target_length = self.config.max_target_length
        self.passage_encoder: Encoder | None = None
        if self.config.train_passage_encoder:
            self.passage_encoder = passage_encoder if passage_encoder is not None else index.load_encoder().passage
        elif passage_encoder is not None:
            log.warning("passage encoder ignored: config.train_passage_encoder is false (the index stays frozen)")
        self._reindexed = False

    @property
    def index(self) -> Index:
        return self.retriever.index

    @index.setter
    def index(self, index: Index) -> None:
        """Read from another index folder (built with this question encoder or the one it was tuned from)."""
        index.check_question_encoder(self.question_encoder, allow_finetuned=True)
        self.retriever.index = index

    @classmethod
    def from_index(cls, index: str | os.PathLike | Index, generator: str | os.PathLike | Generator = BUNDLED_GENERATOR,
                   config: RAGConfig | None = None, question_encoder: str | os.PathLike | Encoder | None = None) -> RAG:
        """A new RAG model over an index folder: its own question encoder (or the one given, checked
        against it) and a generator by name or path."""
        index = index if isinstance(index, Index) else Index.load(index)
        if question_encoder is None:
            question_encoder = index.load_encoder().question
        elif isinstance(question_encoder, (str, os.PathLike)):
            question_encoder = BiEncoder.from_pretrained(question_encoder).question
        index.check_question_encoder(question_encoder, allow_finetuned=True)
        if isinstance(generator, (str, os.PathLike)):
            generator = Generator.from_pretrained(generator)
        return cls(index, question_encoder, generator, config)

    def quantize(self, mode: str | None = "int8", lm_head: bool = False) -> RAG:
        """Quantize the question encoder and the generator (and a trained passage encoder) for inference:
        "int8" dynamic quantization of their linear layers on CPU, the LM head only with `lm_head`
        (ragloop/quantize.py). None does nothing. Returns self; it answers, but cannot train or save."""
        self.retriever.quantize(mode)  # the retriever holds this model's question encoder
        self.generator.quantize(mode, lm_head=lm_head)
        if self.passage_encoder is not None:
            self.passage_encoder.quantize(mode)
        return self

    @property
    def quantization(self) -> str | None:
        """What `quantize` applied to the generator ("int8", "bf16"/"fp16" on CUDA), None at full precision."""
        return self.generator.quantization

    def describe(self) -> dict:
        """What this model is, for reports (`/health`, logs): reader, generator, encoder, precision, retrieval."""
        return {"rag_mode": self.config.mode, "n_docs": self.config.n_docs, "generator": self.generator.name,
                "question_encoder": self.question_encoder.spec.name, "quantize": self.quantization,
                "lm_head_quantized": self.generator.lm_head_quantized, "retrieval": self.retriever.describe()}

    @property
    def reader(self) -> Reader:
        """The entry of `READERS` that `config.mode` names: its loss trains, its decoder answers."""
        return READERS[self.config.mode]

    @property
    def score_scale(self) -> float:
        return score_scale(self.question_encoder.spec.normalize, self.config.doc_score_scale)

    # -- retrieval ------------------------------------------------------------------------------

    def embed_questions(self, questions: Sequence[str]) -> torch.Tensor:
        """Question vectors [B, D], differentiable (unlike `Encoder.encode`)."""
        return self.question_encoder.embed(list(questions))

    def doc_logprobs(self, doc_scores: torch.Tensor) -> torch.Tensor:
        """log p(z|x) over the k passages of each question, float32."""
        return torch.log_softmax(doc_scores.float() * self.score_scale, dim=-1)

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> Retrieval:
        """Top-k passages per question from the retriever (no gradient), with scores recomputed as q·d."""
        questions = check_questions(questions)
        k = min(check_k(self.config.n_docs if k is None else k), len(self.index))
        q = self.embed_questions(questions)
        got = self.retriever.retrieve(questions, k, vectors=q.detach().float().cpu().numpy(), fill=True)
        rows, passages = got.rows, got.passages
        if self.config.train_passage_encoder and self.passage_encoder is not None:
            flat = [p for ps in passages for p in ps]
            d = self.passage_encoder.embed([p.title for p in flat], [p.text for p in flat])
            d = d.view(len(questions), k, -1)
        else:
            d = torch.from_numpy(self.index.vectors(rows)).to(q.device)
        scores = torch.einsum("bd,bkd->bk", q, d.to(q.dtype))
        return Retrieval(passages, scores, self.doc_logprobs(scores), rows)

    def _contexts(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]] | None,
                  doc_scores: torch.Tensor | None, k: int | None = None) -> Retrieval:
        """Retrieve, or wrap passages the caller gives (oracle / given context) into a `Retrieval`.
        Given passages get a uniform p(z|x) unless `doc_scores` [B, K] (raw scores) come with them."""
        if passages is None:
            if doc_scores is not None:
                raise RagloopError("doc_scores are only meaningful together with passages")
            return self.retrieve(questions, k)
        questions = check_questions(questions)
        passages = [list(ps) for ps in passages]
        if len(passages) != len(questions):
            raise RagloopError(f"{len(questions)} questions but {len(passages)} lists of passages")
        sizes = {len(ps) for ps in passages}
        if len(sizes) != 1 or 0 in sizes:
            raise RagloopError(f"every question needs the same, non-zero number of passages (got {sorted(sizes)})")
        shape = (len(questions), sizes.pop())
        if doc_scores is None:
            doc_scores = torch.zeros(shape, device=self.generator.device)
        doc_scores = torch.as_tensor(doc_scores, device=self.generator.device)
        if tuple(doc_scores.shape) != shape:
            raise RagloopError(f"doc_scores has shape {tuple(doc_scores.shape)}, passages give {shape}")
        return Retrieval(passages, doc_scores, self.doc_logprobs(doc_scores))

    # -- training -------------------------------------------------------------------------------

    def forward(self, questions: Sequence[str], answers: Sequence[str],
                passages: Sequence[Sequence[Passage]] | None = None,
                doc_scores: torch.Tensor | None = None) -> RAGOutput:
        """Negative log-likelihood of `answers` under `config.mode` (marginal over p(z|x) in the RAG
        modes; FiD adds its retriever's distillation loss while p(z|x) carries a gradient).

        Passages are retrieved unless given: `passages` is one equally long list of passages per
        question (oracle or given context), with p(z|x) uniform unless `doc_scores` [B, K] (raw
        relevance scores, like `RAGOutput.doc_scores`) come with them."""
        if torch.is_grad_enabled() and self.quantization is not None:
            from ragloop.quantize import refuse_quantized

            refuse_quantized(self.generator.model, "train", "this RAG model")
        questions, answers = check_questions(questions), _as_list(answers)
        if len(answers) != len(questions):
            raise RagloopError(f"{len(questions)} questions but {len(answers)} answers")
        ctx = self._contexts(questions, passages, doc_scores)
        gen = self.generator
        inputs = {name: t.to(gen.device) for name, t in gen.build_inputs(questions, ctx.passages).items()}
        labels = gen.tokenize_targets(answers).to(gen.device)
        doc_logprobs = ctx.doc_logprobs.to(gen.device)
        parts = self.reader.loss(gen, inputs, labels, doc_logprobs, self.config)
        losses = parts.nll if parts.retriever is None else parts.nll + parts.retriever
        return RAGOutput(losses.mean(), losses, ctx.doc_scores, doc_logprobs, ctx.passages,
                         reader_loss=parts.nll.detach().mean(),
                         retriever_loss=None if parts.retriever is None else parts.retriever.detach().mean())

    def reindex(self, passage_encoder: Encoder | None = None, batch_size: int = 64,
                progress: bool | None = None) -> None:
        """Re-encode every stored passage with the (trained) passage encoder into a fresh FAISS index
        of the same type, in memory. The trainer calls this every N steps; `save_pretrained` writes it."""
        if not self.config.train_passage_encoder:
            raise RagloopError("reindex needs config.train_passage_encoder = True (the passage side is frozen)")
        encoder = passage_encoder if passage_encoder is not None else self.passage_encoder
        if encoder is None:
            raise RagloopError("reindex needs a passage encoder")
        with eval_mode(encoder):
            self.index.reencode(encoder, batch_size=batch_size, progress=progress)
        self.passage_encoder = encoder
        self._reindexed = True
        log.info("re-indexed %d passages with the trained passage encoder", len(self.index))

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, questions: Sequence[str], num_beams: int = 1, max_new_tokens: int = 32,
                 passages: Sequence[Sequence[Passage]] | None = None,
                 doc_scores: torch.Tensor | None = None) -> list[str]:
        """One answer per question, decoded the way `config.mode` models p(y|x): RAG-Token by beam
        search (greedy at num_beams=1) on the per-token marginal; RAG-Sequence by `num_beams` candidates
        from each passage (a generator with a copy head: the best beam of each passage), each re-scored
        over all k passages; FiD by beam search (greedy at num_beams=1) on one decoder reading all k
        passages. `passages`/`doc_scores` as in `forward`."""
        if num_beams < 1 or max_new_tokens < 1:
            raise RagloopError(f"num_beams and max_new_tokens must be >= 1 (got {num_beams}, {max_new_tokens})")
        questions = check_questions(questions)
        with eval_mode(self):
            ctx = self._contexts(questions, passages, doc_scores)
            return self.generator.decode(self._generate_ids(questions, ctx, num_beams, max_new_tokens))

    def _generate_ids(self, questions: list[str], ctx: Retrieval, num_beams: int,
                      max_new_tokens: int) -> list[list[int]]:
        gen = self.generator
        inputs = {name: t.to(gen.device) for name, t in gen.build_inputs(questions, ctx.passages).items()}
        doc_logprobs = ctx.doc_logprobs.to(gen.device)
        return self.reader.decode(gen, inputs, doc_logprobs, num_beams, max_new_tokens, self.config)

    def answer(self, question_or_questions: str | Sequence[str], k: int | None = None, num_beams: int = 1,
               max_new_tokens: int = 32) -> Answer | list[Answer]:
        """Retrieve, generate, and return the answer with the passages it was drawn from. With a cache on
        the retriever (`model.retriever.cache`, see retrieval/cache.py), a question asked before with the
        same k and decoding settings, of the same weights and index, is answered from it."""
        single = isinstance(question_or_questions, str)
        questions = check_questions(question_or_questions)
        if self.retriever.cache is not None:
            answers = self.retriever.cache.answers(self, questions, k, num_beams, max_new_tokens,
                                                   lambda qs: self._answer(qs, k, num_beams, max_new_tokens))
        else:
            answers = self._answer(questions, k, num_beams, max_new_tokens)
        return answers[0] if single else answers

    def _answer(self, questions: list[str], k: int | None, num_beams: int, max_new_tokens: int) -> list[Answer]:
        with torch.no_grad(), eval_mode(self), self.generator.reusing_encodings():  # spans reuse the encoding
            ctx = self.retrieve(questions, k)
            ids = self._generate_ids(questions, ctx, num_beams, max_new_tokens)
            texts = self.generator.decode(ids)
            copied = copied_spans(self.generator, questions, ctx.passages, ids, fused=self.reader.fused)
        scores = ctx.doc_scores.float().cpu().tolist()
        answers = [
            Answer(q, text, [{"id": p.id, "title": p.title, "text": p.text, "source": p.source, "score": s,
                              "copied": c} for p, s, c in zip(ps, ss, cs)])
            for q, text, ps, ss, cs in zip(questions, texts, ctx.passages, scores, copied)
        ]
        return answers

    # -- saving and loading ---------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write a self-contained folder atomically (see the module docstring for its layout)."""
        if self.quantization is not None or self.question_encoder.quantization is not None:
            from ragloop.quantize import refuse_quantized

            refuse_quantized(self.generator.model if self.quantization else self.question_encoder.model, "save",
                             "this RAG model")
        path = Path(path)
        index_inside = _is_within(self.index.path, path)
        with atomic_dir(path, may_replace=_check_replaceable) as tmp, eval_mode(self):
            self.question_encoder.save_pretrained(tmp / QUESTION_DIR)
            self.generator.save_pretrained(tmp / GENERATOR_DIR)
            if self.passage_encoder is not None:
                self.passage_encoder.save_pretrained(tmp / PASSAGE_DIR)
            if self.retriever.reranker is not None:
                (tmp / RERANKER_DIR).mkdir()
                self.retriever.reranker.save_into(tmp / RERANKER_DIR)
            if self._reindexed:  # the FAISS vectors changed in memory: write an index that matches them
                built = Index.build(self.index.store, BiEncoder(self.question_encoder, self.passage_encoder),
                                    tmp / INDEX_DIR, progress=False, **self.index.build_options())
                built.store.close()
            else:
                _copy_tree(self.index.path, tmp / INDEX_DIR, link=index_inside)
            files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp).parts[0] != INDEX_DIR)
            atomic_write_json(tmp / CONFIG_FILE, {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "ragloop_version": __version__,
                "config": self._saved_config(),
                "question_encoder": self.question_encoder.spec.to_dict(),
                "passage_encoder": self.passage_encoder.spec.to_dict() if self.passage_encoder is not None else None,
                "generator": self.generator.name,
                "files": checksum_files(tmp, files),
            })
        log.info("saved RAG model to %s", path)

    def _saved_config(self) -> dict:
        """The config as the model now retrieves: a mode or reranker set on its retriever after it was
        built (`model.retriever.set_reranker`, `--rerank`) is saved, and loads back."""
        r = self.retriever
        return dict(self.config.to_dict(), search_mode=r.mode, rerank=r.reranker.name if r.reranker else None,
                    rerank_depth=r.rerank_depth if r.reranker else None)

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool | str = "fast") -> RAG:
        """Load a folder written by `save_pretrained`, its files checked against the manifests: `verify`
        "fast" (sizes, sha256 up to 64 MiB, a sampled digest of larger files), "full"/True (the sha256 of
        every file) or "size"/False (`ragloop.io.verify_files`)."""
        path = Path(path)
        meta = _read_meta(path)
        config = RAGConfig.from_dict(meta.get("config", {}), where=str(path / CONFIG_FILE))
        verify_files(path, meta.get("files", {}), CONFIG_FILE, checksums=verify)
        index = Index.load(path / INDEX_DIR, verify=verify)
        question_encoder = _load_encoder(path / QUESTION_DIR)
        passage_encoder = _load_encoder(path / PASSAGE_DIR) if (path / PASSAGE_DIR).is_dir() else None
        generator = Generator.from_pretrained(str(path / GENERATOR_DIR))
        index.check_question_encoder(question_encoder, allow_finetuned=True)
        reranker = None
        if config.rerank is not None:  # saved inside the folder; the name it had is kept for reports
            from ragloop.retrieval.rerank import Reranker

            if not (path / RERANKER_DIR).is_dir():
                raise RagloopError(f"{path / RERANKER_DIR}: missing (the config names reranker {config.rerank!r})")
            reranker = Reranker.from_pretrained(path / RERANKER_DIR)
            reranker.name = config.rerank
        return cls(index, question_encoder, generator, config, passage_encoder=passage_encoder, reranker=reranker)


# -- helpers --------------------------------------------------------------------------------------


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, (bytes, bytearray, Mapping)):
        raise RagloopError(f"expected a string or a list of strings (got {type(texts).__name__})")
    return [texts] if isinstance(texts, str) else list(texts)


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        Path(inner).resolve().relative_to(Path(outer).resolve())
        return True
    except ValueError:
        return False


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    """Copy a folder; with `link`, hard-link files where possible (the source is about to be replaced)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy if link else shutil.copy2)


_check_replaceable = only_replace(CONFIG_FILE, "saved RAG model")


def _read_meta(path: Path) -> dict:
    return read_manifest_json(path, CONFIG_FILE, FORMAT, FORMAT_VERSION, "saved RAG model")


def _load_encoder(folder: Path) -> Encoder:
    """An encoder saved inside a RAG folder keeps the name it had when the index was built, so the
    index accepts it as a fine-tuned version of its own question encoder."""
    spec_file = folder / ENCODER_FILE
    if not spec_file.is_file():
        spec_file = folder / legacy_name(ENCODER_FILE)
    if not spec_file.is_file():
        raise RagloopError(f"{spec_file}: missing")
    encoder = Encoder.from_pretrained(str(folder))
    try:
        encoder.spec.name = json.loads(spec_file.read_text())["name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
        raise RagloopError(f"{spec_file}: corrupt encoder spec ({e})") from None
    return encoder
