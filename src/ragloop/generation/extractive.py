"""The span reader: an extractive reader on a pretrained encoder (DPR's reader, Karpukhin et al. 2020;
REALM and ORQA, Guu et al. 2020, Lee et al. 2019). It reads each (question, passage) pair as one
cross-encoded input and scores every token as an answer's start and end, and the passage as a whole
(a selection head on [CLS]). Its answers are spans of the passages, never free text.

    >>> from ragloop.generation.extractive import SpanReader, span_marginal_nll
    >>> reader = SpanReader.from_pretrained("bundled:all-MiniLM-L6-v2")   # fresh span and passage heads
    >>> batch = reader.build_inputs(["who wrote hamlet?"], [[passage_a, passage_b]])   # row b*K + k
    >>> start, end, select = reader(batch)                                # [B*K, L], [B*K, L], [B*K]
    >>> reader.read(["who wrote hamlet?"], [[passage_a, passage_b]], doc_logprobs, max_answer_tokens=16)
    [Reading(text='Shakespeare', copied=[{'start': 0, 'end': 11, 'text': 'Shakespeare'}, None])]

How much each passage counts, log p(z|x) = log_softmax over the k of (the retriever's log p(z|x) + the
reader's passage score); a span's probability in its passage factorises into a start and an end
softmax over the passage's tokens. When answering, each passage is also weighed by its span mass, so a
span's joint probability is one softmax over the spans of all k passages (shared normalisation: scores
compare across passages; `passage_logprobs`). Training maximises the marginal likelihood of the gold
answer over the k passages and over every span of each that matches it (`span_marginal_nll`), so the
retriever's question encoder learns from the reader through p(z|x), as in RAG. Answering scores the
best spans of every passage by log p(z|x) + start + end (at most `max_answer_tokens` long) and adds up
the probability of the same answer (normalised as SQuAD's metric does) found in several places.

Saved as the encoder's own folder plus `span_heads.safetensors` and `ragloop_span_reader.json`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ragloop.constants import DEFAULT_ENCODER
from ragloop.data.qa import normalize_answer
from ragloop.errors import RagloopError, first_line
from ragloop.quiet import quiet_transformers

log = logging.getLogger(__name__)

READER_FILE = "ragloop_span_reader.json"
HEADS_FILE = "span_heads.safetensors"
MASKED = -1e4  # a logit no real score reaches: positions outside the passage (softmax weight ~0, no NaN)
SPANS_PER_PASSAGE = 8  # best spans of each passage an answer is chosen among


@dataclass
class Reading:
    """One question's answer: the text, and for each of its k passages the span of that passage where
    the answer was found ({"start", "end", "text"}, character offsets into the passage text) or None."""

    text: str
    copied: list[dict | None]


class SpanReader(torch.nn.Module):
    """Encoder + a start/end head over its tokens + a passage head over [CLS] (module docstring)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer, name: str = "", max_source_length: int = 256,
                 max_target_length: int = 16) -> None:
        super().__init__()
        self.model, self.tokenizer, self.name = encoder, tokenizer, name
        hidden = encoder.config.hidden_size
        self.span_head = torch.nn.Linear(hidden, 2)
        self.select_head = torch.nn.Linear(hidden, 1)
        for head in (self.span_head, self.select_head):
            torch.nn.init.normal_(head.weight, std=0.02)
            torch.nn.init.zeros_(head.bias)
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.fresh_heads = True  # heads not loaded from a saved reader: they train at the new-layer rate

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    @quiet_transformers()
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_ENCODER) -> SpanReader:
        """A folder this class saved, or any Hugging Face encoder by name or path (the bundled MiniLM:
        `bundled:all-MiniLM-L6-v2`), whose heads then start fresh."""
        from transformers import AutoModel, AutoTokenizer

        from ragloop.retrieval.encoders import resolve_source

        name_or_path = os.fspath(name_or_path)
        folder = Path(name_or_path)
        saved = json.loads((folder / READER_FILE).read_text()) if (folder / READER_FILE).is_file() else None
        source = name_or_path if saved else resolve_source(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            encoder = AutoModel.from_pretrained(source)
        except Exception as e:  # missing folder, unknown name, truncated or corrupt weights
            raise RagloopError(f"could not load span reader {name_or_path!r}: {first_line(e)}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise RagloopError(f"span reader {name_or_path!r}: needs a fast tokenizer (character offsets)")
        reader = cls(encoder, tokenizer, name_or_path)
        if saved:
            reader.name = saved["name"]
            reader.max_source_length, reader.max_target_length = saved["max_source_length"], saved["max_target_length"]
            reader._load_heads(folder / HEADS_FILE)
        return reader.eval()

    def _load_heads(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            self.span_head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("span.")})
            self.select_head.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("select.")})
        except Exception as e:
            raise RagloopError(f"{path}: could not load the span reader's heads: {first_line(e)}") from None
        self.fresh_heads = False

    @quiet_transformers()
    def save_pretrained(self, path: str | Path) -> None:
        """Encoder, tokenizer, heads and settings into `path` (loads back with `from_pretrained`)."""
        from safetensors.torch import save_file

        from ragloop.quantize import refuse_quantized

        refuse_quantized(self.model, "save", f"span reader {self.name!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        heads = {f"span.{k}": v for k, v in self.span_head.state_dict().items()}
        heads.update({f"select.{k}": v for k, v in self.select_head.state_dict().items()})
        save_file({k: v.contiguous() for k, v in heads.items()}, str(path / HEADS_FILE))
        settings = {"name": self.name, "max_source_length": self.max_source_length,
                    "max_target_length": self.max_target_length}
        (path / READER_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # -- what the RAG model asks of its reader model -----------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.span_head.weight.device

    def untrained_parameters(self) -> list[torch.nn.Parameter]:
        """The fresh heads (they train at the new-layer learning rate); none once trained and saved."""
        return [*self.span_head.parameters(), *self.select_head.parameters()] if self.fresh_heads else []

    def quantize(self, mode: str | None = "int8", lm_head: bool = False) -> SpanReader:
        """int8 dynamic quantization of the encoder's linear layers (the heads stay float; `lm_head`: no
        LM head here, ignored). None does nothing. Returns self."""
        from ragloop.quantize import quantize_linear

        quantize_linear(self.model, mode, what=f"span reader {self.name!r}")  # None, or done already: nothing
        return self

    @property
    def quantization(self) -> str | None:
        from ragloop.quantize import quantization

        return quantization(self.model)

    lm_head_quantized = False  # no LM head: what reports read of any reader model

    # -- reading -------------------------------------------------------------------------------

    def build_inputs(self, questions: list[str], passages: list[list]) -> dict[str, torch.Tensor]:
        """(question, passage text) pairs, row b*K + k, truncated to `max_source_length` tokens; with
        each token's character offsets in its passage, a mask of the passage's tokens, and masks of
        those that start and end a word (a span never starts or ends inside one: "can" in "canopies")."""
        firsts = [q for q, ps in zip(questions, passages) for _ in ps]
        seconds = [p.text for ps in passages for p in ps]
        enc = self.tokenizer(firsts, seconds, truncation="longest_first", max_length=self.max_source_length,
                             padding=True, return_offsets_mapping=True, return_tensors="pt")
        out = {name: enc[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in enc}
        out["offsets"] = enc["offset_mapping"]
        out.update(_boundaries(enc, len(firsts)))
        return {name: t.to(self.device) for name, t in out.items()}

    def forward(self, inputs: dict[str, torch.Tensor], hidden: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start and end logits [N, L] (MASKED but where a passage word starts / ends) and passage scores
        [N], float32; from the encoder's `hidden` states [N, L, H] when given."""
        if hidden is None:
            hidden = self.model(**_model_inputs(inputs)).last_hidden_state
        start, end = self.span_head(hidden).float().unbind(-1)
        select = self.select_head(hidden[:, 0]).float().squeeze(-1)
        return start.masked_fill(~inputs["start_mask"], MASKED), end.masked_fill(~inputs["end_mask"], MASKED), select

    def loss(self, questions: list[str], passages: list[list], answers: list[str],
             doc_logprobs: torch.Tensor) -> torch.Tensor:
        """−log p(answer|x) per question [B] (`span_marginal_nll`); 0 where no passage holds the answer.

        Only the passages that hold a gold span are encoded with gradient: the others enter the loss by
        their passage score alone (p(z|x)'s normaliser), which trains the passage head but not the
        encoder there; a question with no gold span is not encoded at all (its loss is 0 anyway). The
        loss is the same as encoding everything with gradient; the step costs about half."""
        inputs = self.build_inputs(questions, passages)
        shape = doc_logprobs.shape
        gold = gold_span_mask(answers, passages, inputs, self.max_target_length).to(self.device)
        holds = gold.flatten(2).any(-1)  # [B, K]
        needed = holds.any(-1, keepdim=True).expand(shape).flatten()
        start, end, select = self(inputs, self._hidden(inputs, holds.flatten(), needed))
        return span_marginal_nll(doc_logprobs, select.view(shape), start.view(*shape, -1), end.view(*shape, -1), gold)

    def _hidden(self, inputs: dict[str, torch.Tensor], learn: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
        """Encoder states [N, L, H]: rows in `learn` with gradient, the other `needed` rows without, the
        rest zeros. Row 0 always learns, so every parameter gets a gradient (DDP needs one on every rank)."""
        learn = learn.clone()
        learn[0] = True
        rows = {True: learn.nonzero().squeeze(1), False: (needed & ~learn).nonzero().squeeze(1)}
        n, length = inputs["input_ids"].shape
        hidden = torch.zeros(n, length, self.model.config.hidden_size, device=self.device)
        for grad, idx in rows.items():
            if len(idx):
                with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                    part = self.model(**_model_inputs(inputs, idx)).last_hidden_state
                hidden = hidden.index_copy(0, idx, part.to(hidden.dtype))
        return hidden

    @torch.no_grad()
    def passage_scores(self, questions: list[str], passages: list[list]) -> torch.Tensor:
        """[B, K] how this reader ranks each question's passages, as DPR's reader does with its selection
        head: the passage score plus the log of the passage's span mass (`reader_scores`), the part of
        p(z|x) the reader adds to the retriever's when answering."""
        inputs = self.build_inputs(questions, passages)
        start, end, select = self(inputs)
        return reader_scores(select, start, end).view(len(questions), -1)

    @torch.no_grad()
    def read(self, questions: list[str], passages: list[list], doc_logprobs: torch.Tensor,
             max_answer_tokens: int | None = None) -> list[Reading]:
        """The best answer of each question over its k passages (module docstring)."""
        inputs = self.build_inputs(questions, passages)
        start, end, select = self(inputs)
        k = doc_logprobs.shape[1]
        length = start.shape[1]
        passage = passage_logprobs(doc_logprobs.to(select.device), select.view(-1, k), start.view(-1, k, length),
                                   end.view(-1, k, length))
        spans = best_spans(start, end, max_answer_tokens or self.max_target_length, SPANS_PER_PASSAGE)
        offsets = inputs["offsets"].tolist()
        return [_choose([(passage[b, j].item() + score, j, ps[j].text, offsets[b * k + j][i][0],
                          offsets[b * k + j][e][1]) for j in range(k) for score, i, e in spans[b * k + j]], k)
                for b, ps in enumerate(passages)]


# -- the loss, span search and answer choice (pure functions, tested on their own) -------------------


def _model_inputs(inputs: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What the encoder reads of `inputs`, all rows or those in `rows`."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {k: inputs[k] if rows is None else inputs[k][rows] for k in names if k in inputs}


def span_marginal_nll(doc_logprobs: torch.Tensor, select: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                      gold: torch.Tensor) -> torch.Tensor:
    """−log Σ_z p(z|x) Σ_{(i,j) gold in z} p_start(i|z) p_end(j|z), per question [B], float32.

    doc_logprobs [B, K]: the retriever's log p(z|x); select [B, K]: the reader's passage scores, so
    p(z|x) = softmax(doc_logprobs + select) over the k; start, end [B, K, L]: token logits; gold
    [B, K, L, L] bool: (i, j) spans the gold answer. A question whose passages hold no gold span gets 0
    (and no gradient). Spans are normalised per passage here (DPR, REALM); answering compares them
    across passages (`passage_logprobs`): training with that shared normalisation measured worse (the
    passages without the answer are encoded without gradient, so only the heads could lower their mass)."""
    p_z = torch.log_softmax(doc_logprobs.float() + select.float(), dim=-1)
    ls, le = torch.log_softmax(start.float(), dim=-1), torch.log_softmax(end.float(), dim=-1)
    pair = (ls.unsqueeze(-1) + le.unsqueeze(-2)).masked_fill(~gold, MASKED * 1e5)  # [B, K, L, L]
    in_passage = pair.flatten(2).logsumexp(-1)  # [B, K]
    nll = -(p_z + in_passage).logsumexp(-1)
    return torch.where(gold.flatten(1).any(-1), nll, torch.zeros_like(nll))


def passage_logprobs(doc_logprobs: torch.Tensor, select: torch.Tensor, start: torch.Tensor,
                     end: torch.Tensor) -> torch.Tensor:
    """log p(z|x) [B, K] for answering, from the retriever's log p(z|x), the passage scores [B, K] and
    the span logits [B, K, L]: each passage also weighed by its span mass, so that p(z|x) p(i|z) p(j|z)
    ∝ exp(doc + select + start_i + end_j) is one softmax over the spans of all k passages and span scores
    compare across passages (shared normalisation, Clark & Gardner 2018; +0.06 dev F1 in the demo)."""
    return torch.log_softmax(doc_logprobs.float() + reader_scores(select, start, end), dim=-1)


def reader_scores(select: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The reader's own log-weight of each passage [...]: its passage score plus the log of its span mass,
    log Σ_i exp(start_i) + log Σ_j exp(end_j), from select [...] and start, end [..., L]."""
    return select.float() + start.float().logsumexp(-1) + end.float().logsumexp(-1)


def answer_char_spans(text: str, answer: str) -> list[tuple[int, int]]:
    """Every (start, end) where `answer` occurs in `text`: exactly, or else ignoring case."""
    answer = answer.strip()
    if not answer:
        return []
    for haystack, needle in ((text, answer), (text.lower(), answer.lower())):
        found, at = [], haystack.find(needle)
        while at >= 0:
            found.append((at, at + len(needle)))
            at = haystack.find(needle, at + 1)
        if found:
            return found
    return []


def gold_span_mask(answers: list[str], passages: list[list], inputs: dict[str, torch.Tensor],
                   max_tokens: int) -> torch.Tensor:
    """[B, K, L, L] bool: token spans (i, j) of passage z that cover an occurrence of the question's answer
    (`inputs` from `SpanReader.build_inputs`); spans cut off by truncation, longer than `max_tokens`
    tokens, or starting or ending inside a word are left out (the reader could never answer them)."""
    k, length = len(passages[0]), inputs["offsets"].shape[1]
    gold = torch.zeros(len(passages), k, length, length, dtype=torch.bool)
    offsets, inside = inputs["offsets"].tolist(), inputs["passage_mask"].tolist()
    starts, ends = inputs["start_mask"].tolist(), inputs["end_mask"].tolist()
    for b, (answer, ps) in enumerate(zip(answers, passages)):
        for j, p in enumerate(ps):
            row = b * k + j
            for cs, ce in answer_char_spans(p.text, answer):
                i, e = token_span(offsets[row], inside[row], cs, ce)
                if i is not None and e - i < max_tokens and starts[row][i] and ends[row][e]:
                    gold[b, j, i, e] = True
    return gold


def _boundaries(enc, rows: int) -> dict[str, torch.Tensor]:
    """passage_mask, start_mask, end_mask [rows, L] of a tokenizer batch of (question, passage) pairs."""
    masks: dict[str, list] = {"passage_mask": [], "start_mask": [], "end_mask": []}
    for r in range(rows):
        seq, words = enc.sequence_ids(r), enc.word_ids(r)
        inside = [s == 1 for s in seq]
        before, after = [None, *words[:-1]], [*words[1:], None]
        masks["passage_mask"].append(inside)
        masks["start_mask"].append([a and w != b for a, w, b in zip(inside, words, before)])
        masks["end_mask"].append([a and w != n for a, w, n in zip(inside, words, after)])
    return {name: torch.tensor(m, dtype=torch.bool) for name, m in masks.items()}


def token_span(offsets: list, in_passage: list, cs: int, ce: int) -> tuple[int | None, int | None]:
    """The first and last passage tokens covering characters [cs, ce), or (None, None) if truncated away."""
    tokens = [t for t, ((s, e), inside) in enumerate(zip(offsets, in_passage)) if inside and e > cs and s < ce]
    return (tokens[0], tokens[-1]) if tokens else (None, None)


def best_spans(start: torch.Tensor, end: torch.Tensor, max_tokens: int, top: int) -> list[list[tuple]]:
    """Per row of start/end logits [N, L], the `top` spans (log p_start + log p_end, i, j) with
    i <= j < i + max_tokens inside the passage, best first."""
    ls, le = torch.log_softmax(start, dim=-1), torch.log_softmax(end, dim=-1)
    length = start.shape[1]
    i, j = torch.arange(length).unsqueeze(1), torch.arange(length).unsqueeze(0)
    band = ((j >= i) & (j - i < max_tokens)).to(start.device)
    valid = (start > MASKED / 2).unsqueeze(-1) & (end > MASKED / 2).unsqueeze(-2) & band
    pair = (ls.unsqueeze(-1) + le.unsqueeze(-2)).masked_fill(~valid, float("-inf"))
    scores, flat = pair.flatten(1).topk(min(top, length * length), dim=-1)
    return [[(s, f // length, f % length) for s, f in zip(srow, frow) if s != float("-inf")]
            for srow, frow in zip(scores.tolist(), flat.tolist())]


def _choose(candidates: list[tuple], k: int) -> Reading:
    """The answer whose occurrences (score, passage, text, start, end) add up to the most probability:
    the same normalised string found in several places counts once with their summed probability."""
    if not candidates:
        return Reading("", [None] * k)
    totals: dict[str, torch.Tensor] = {}
    for score, _, text, cs, ce in candidates:
        key = normalize_answer(text[cs:ce]) or text[cs:ce]
        totals[key] = torch.logaddexp(totals[key], torch.tensor(score)) if key in totals else torch.tensor(score)
    best_key = max(totals, key=lambda key: totals[key].item())
    copied: list[dict | None] = [None] * k
    answer = None
    for _score, j, text, cs, ce in sorted(candidates, key=lambda c: -c[0]):
        if copied[j] is None and (normalize_answer(text[cs:ce]) or text[cs:ce]) == best_key:
            copied[j] = {"start": cs, "end": ce, "text": text[cs:ce]}
            answer = answer or text[cs:ce]  # the text of its best-scoring occurrence
    return Reading(answer or "", copied)
