"""The RAG model (Lewis et al. 2020): a retriever and a seq2seq generator trained end to end.

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

How the generator reads the k passages (RAG-Sequence, RAG-Token, FiD) is a reader mode, one entry of
`READERS` (generation/readers.py): its loss and its decoder; `RAGConfig.mode` names the entry, and
`forward` and `generate` use it. The saved folder's format is model_io.py's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ragloop import model_io
from ragloop._torch import eval_mode
from ragloop.answer_cache import cached_answers
from ragloop.config import RAGConfig  # the model's settings (re-exported: ragloop.model.RAGConfig)
from ragloop.constants import score_scale
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.generation.generator import BUNDLED_GENERATOR, Generator
from ragloop.generation.readers import READERS, Reader
from ragloop.generation.spans import copied_spans
from ragloop.retrieval.encoders import BiEncoder, Encoder
from ragloop.retrieval.index import Index
from ragloop.retrieval.retriever import Retriever, check_questions, passages_to_read

if TYPE_CHECKING:
    from ragloop.retrieval.rerank import Reranker

log = logging.getLogger(__name__)


# -- results --------------------------------------------------------------------------------------


@dataclass
class Contexts:
    """What the reader reads for a batch of questions: the passages and how much the model trusts each
    one, p(z|x) (unlike the retriever's `Retrieved`, its rows and first-stage scores)."""

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
    """Question encoder + index + generator, the library's model (see the module docstring); `rag_system.RAG`
    in the repository root is the original script's interface to it (a subclass, `OriginalRAG`)."""

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
        return self.question_encoder.encode_with_grad(list(questions))

    def doc_logprobs(self, doc_scores: torch.Tensor) -> torch.Tensor:
        """log p(z|x) over the k passages of each question, float32."""
        return torch.log_softmax(doc_scores.float() * self.score_scale, dim=-1)

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> Contexts:
        """Top-k passages per question from the retriever (no gradient), with scores recomputed as q·d."""
        questions = check_questions(questions)
        k = passages_to_read(k, self.config.n_docs, len(self.index), self.index.path)
        q = self.embed_questions(questions)
        got = self.retriever.retrieve(questions, k, vectors=q.detach().float().cpu().numpy(), pad_with_dense=True)
        rows, passages = got.rows, got.passages
        if self.config.train_passage_encoder and self.passage_encoder is not None:
            flat = [p for ps in passages for p in ps]
            d = self.passage_encoder.encode_with_grad([p.title for p in flat], [p.text for p in flat])
            d = d.view(len(questions), k, -1)
        else:
            d = torch.from_numpy(self.index.vectors(rows)).to(q.device)
        scores = torch.einsum("bd,bkd->bk", q, d.to(q.dtype))
        return Contexts(passages, scores, self.doc_logprobs(scores), rows)

    def _contexts(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]] | None,
                  doc_scores: torch.Tensor | None, k: int | None = None) -> Contexts:
        """Retrieve, or wrap passages the caller gives (oracle / given context) into `Contexts`.
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
        return Contexts(passages, doc_scores, self.doc_logprobs(doc_scores))

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
        doc_logprobs = ctx.doc_logprobs.to(self.generator.device)
        parts = self.reader.loss(self.generator, questions, ctx.passages, answers, doc_logprobs, self.config)
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
            return self._read(questions, ctx, num_beams, max_new_tokens, spans=False)[0]

    def _read(self, questions: list[str], ctx: Contexts, num_beams: int, max_new_tokens: int,
              spans: bool) -> tuple[list[str], list[list[dict | None]]]:
        """The answers, and with `spans` each passage's copied span ([] without): an extractive reader
        reads them off the passages; a generative one decodes, then finds what it copied."""
        if self.reader.read is not None:
            got = self.reader.read(self.generator, questions, ctx.passages, ctx.doc_logprobs, max_new_tokens,
                                   self.config)
            return [r.text for r in got], [r.copied for r in got]
        with self.generator.reusing_encodings():  # the spans' pass reuses the decoder's encoding
            ids = self._generate_ids(questions, ctx, num_beams, max_new_tokens)
            texts = self.generator.decode(ids)
            if not spans:
                return texts, []
            return texts, copied_spans(self.generator, questions, ctx.passages, ids, fused=self.reader.fused)

    def _generate_ids(self, questions: list[str], ctx: Contexts, num_beams: int,
                      max_new_tokens: int) -> list[list[int]]:
        gen = self.generator
        inputs = {name: t.to(gen.device) for name, t in gen.build_inputs(questions, ctx.passages).items()}
        doc_logprobs = ctx.doc_logprobs.to(gen.device)
        return self.reader.decode(gen, inputs, doc_logprobs, num_beams, max_new_tokens, self.config)

    def answer(self, question_or_questions: str | Sequence[str], k: int | None = None, num_beams: int = 1,
               max_new_tokens: int = 32) -> Answer | list[Answer]:
        """Retrieve, generate, and return the answer with the passages it was drawn from. With a cache on
        the retriever (`model.retriever.cache`, see answer_cache.py), a question asked before with the
        same k and decoding settings, of the same weights and index, is answered from it."""
        single = isinstance(question_or_questions, str)
        questions = check_questions(question_or_questions)
        answers = cached_answers(self, questions, k, num_beams, max_new_tokens,
                                 lambda qs: self._answer(qs, k, num_beams, max_new_tokens))
        return answers[0] if single else answers

    def _answer(self, questions: list[str], k: int | None, num_beams: int, max_new_tokens: int) -> list[Answer]:
        with torch.no_grad(), eval_mode(self):
            ctx = self.retrieve(questions, k)
            texts, copied = self._read(questions, ctx, num_beams, max_new_tokens, spans=True)
        scores = ctx.doc_scores.float().cpu().tolist()
        answers = [
            Answer(q, text, [{"id": p.id, "title": p.title, "text": p.text, "source": p.source, "score": s,
                              "copied": c} for p, s, c in zip(ps, ss, cs)])
            for q, text, ps, ss, cs in zip(questions, texts, ctx.passages, scores, copied)
        ]
        return answers

    def token_usage(self, answer: Answer) -> dict[str, int]:
        """What an answer cost, in the reader's tokens (OpenAI's `usage`): `prompt_tokens`, the tokens
        the reader read (the question with each of the answer's passages, as its `build_inputs` gives them:
        special tokens counted, what `max_source_length` cut not), `completion_tokens`, the answer's own
        tokens (no special tokens), and `total_tokens`, their sum."""
        passages = [Passage(p["id"], p["title"], p["text"]) for p in answer.passages]
        prompt = int(self.generator.build_inputs([answer.question], [passages])["attention_mask"].sum()) \
            if passages else 0
        completion = len(self.generator.tokenizer(answer.answer, add_special_tokens=False)["input_ids"])
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- saving and loading ---------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write a self-contained folder atomically (its layout: ragloop/model_io.py)."""
        if self.quantization is not None or self.question_encoder.quantization is not None:
            from ragloop.quantize import refuse_quantized

            refuse_quantized(self.generator.model if self.quantization else self.question_encoder.model, "save",
                             "this RAG model")
        with eval_mode(self):
            model_io.save_rag(self, path, reindexed=self._reindexed)

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool | str = "fast") -> RAG:
        """Load a folder written by `save_pretrained`, its files checked against the manifests: `verify`
        "fast" (sizes, sha256 up to 64 MiB, a sampled digest of larger files), "full"/True (the sha256 of
        every file) or "size"/False (`ragloop.manifest.verify_files`)."""
        return cls(**model_io.load_parts(path, verify))


# -- helpers --------------------------------------------------------------------------------------


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, (bytes, bytearray, Mapping)):
        raise RagloopError(f"expected a string or a list of strings (got {type(texts).__name__})")
    return [texts] if isinstance(texts, str) else list(texts)
