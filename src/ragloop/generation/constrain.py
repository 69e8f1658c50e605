"""Answers held to the passages (`RAGConfig.constrain = "spans"`, `--constrain spans`): the decoder may
write only token sequences that occur in the question's k passages, under greedy and beam search, in
every reader (RAG-Sequence, RAG-Token, FiD).

    >>> from ragloop.generation.constrain import answer_constraint, span_mask
    >>> inputs = gen.build_inputs(questions, passages)          # row b*K + k: question b, passage k
    >>> spans = answer_constraint(gen, inputs, k, "spans")      # one `PassageSpans` a question (None: "none")
    >>> spans[0].allowed([])                                    # the tokens an answer may begin with
    >>> spans[0].allowed([t1, t2])                              # what may follow t1 t2 (eos among them)
    >>> logprobs + span_mask([spans[0], spans[0]], [[], [t1]], vocab, device)   # -inf where not allowed
    >>> token_beam_search(gen, inputs, doc_logprobs, 4, 32, constraint=spans)   # sequence_decode, fid_decode too

Which tokens. An answer is written in the generator's own tokens, so the passages are taken in them
too: each input row as `build_inputs` laid it out, its tokens after the row's last " context:"
(`CONTEXT_MARKER`), that is the passage's text as the generator read it (cut where
`max_source_length` cut the row). WordPiece and SentencePiece split text at whitespace before they
split words (a byte-level BPE keeps a word's leading space in its first token), so a stretch of the
passage that begins and ends at token boundaries is tokenised as an answer just as inside the
passage; what is lost is only an answer that would split one of the passage's tokens. A passage whose
own text holds " context:" is held to what follows its last one: still a stretch of the passage.

What may be written. An answer begins at any of those tokens but a WordPiece continuation ("##s",
which would decode with its "##"), goes on with the token that follows in the passage (special
tokens and the ends of passages cut the text into runs that no answer crosses), and may end (eos)
after any non-empty prefix. The allowed set is the union over the question's k passages: RAG-Token
and FiD read all k at every step; RAG-Sequence writes candidates from each passage apart but
re-scores each over all k, so each passage's candidates are held to the same union. A question whose
passages have no text (all cut away) may only end at once: an empty answer.

How. `PassageSpans` is the prefix trie of every stretch of the passages without its nodes built: the
runs laid end to end behind separators, and for a prefix the positions right after its occurrences
(memoised per prefix: a search extends its prefixes one token a step), so the tokens allowed next are
the tokens at those positions. `span_mask` turns them into a [rows, vocab] mask of 0 / -inf that the
searches add to the final log-probs (after a copy head has mixed in its copy distribution);
transformers' `generate` (RAG-Sequence's candidates without a copy head) takes it as a logits
processor (`SpanProcessor`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor

from ragloop.constants import ANSWER_CONSTRAINTS
from ragloop.errors import RagloopError
from ragloop.generation.inputs import CONTEXT_MARKER, is_wordpiece


class _Tokenizing(Protocol):
    """What a constraint needs of the generator (`Generator` is one): its tokenizer and end token."""

    tokenizer: Any
    eos_token_id: int | None

log = logging.getLogger(__name__)

SEPARATOR = -1  # between runs of passage tokens: no token id, so no prefix runs across it


class PassageSpans:
    """One question's allowed answers: every stretch of its passages' token `runs`, beginning anywhere
    but at a token of `no_start`, ending in `eos_token_id` (see the module docstring)."""

    def __init__(self, runs: Sequence[Sequence[int]], eos_token_id: int, no_start: Collection[int] = ()) -> None:
        self.eos_token_id = eos_token_id
        self.tokens = [t for run in runs if run for t in (*run, SEPARATOR)]
        starts = [p for p, t in enumerate(self.tokens) if t != SEPARATOR and t not in no_start]
        self._ends: dict[tuple[int, ...], list[int]] = {(): starts}

    def ends(self, prefix: Sequence[int]) -> list[int]:
        """The positions right after each occurrence of `prefix` that begins where an answer may."""
        key = tuple(prefix)
        known = len(key)
        while key[:known] not in self._ends:  # the longest prefix already walked (in a search: all but one token)
            known -= 1
        for i in range(known, len(key)):
            self._ends[key[: i + 1]] = [p + 1 for p in self._ends[key[:i]] if self.tokens[p] == key[i]]
        return self._ends[key]

    def allowed(self, prefix: Sequence[int]) -> set[int]:
        """The tokens that may follow `prefix`: the passage tokens after its occurrences, and eos once it
        is a non-empty stretch of a passage. Nothing after a prefix that is none; only eos, at once,
        where the passages hold no text."""
        if not self._ends[()]:
            return {self.eos_token_id}
        ends = self.ends(prefix)
        nxt = {self.tokens[p] for p in ends} - {SEPARATOR}
        return nxt | {self.eos_token_id} if prefix and ends else nxt

    def accepts(self, answer: Sequence[int]) -> bool:
        """Whether a search could have written `answer` (token ids, ending in eos or cut short; a search
        writes at least one token)."""
        return bool(answer) and all(token in self.allowed(answer[:i]) for i, token in enumerate(answer))


def span_mask(spans: Sequence[PassageSpans], prefixes: Sequence[Sequence[int]], vocab: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(prefixes), vocab] float32: 0 where row i may write the token after `prefixes[i]` under
    `spans[i]`, -inf elsewhere."""
    rows: list[int] = []
    cols: list[int] = []
    for row, (allowed_spans, prefix) in enumerate(zip(spans, prefixes)):
        allowed = [t for t in allowed_spans.allowed(prefix) if t < vocab]
        rows += [row] * len(allowed)
        cols += allowed
    mask = torch.full((len(prefixes), vocab), float("-inf"), device=device)
    mask[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)] = 0
    return mask


def beam_mask(constraint: Sequence[PassageSpans], seqs: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, nb, V] `span_mask` of every beam of a search: `seqs` [B, nb, S] holds each beam's tokens
    behind the decoder start token, `constraint[b]` question b's spans."""
    batch_size, nb = seqs.shape[:2]
    spans = [constraint[b] for b in range(batch_size) for _ in range(nb)]
    prefixes = seqs[:, :, 1:].reshape(batch_size * nb, -1).tolist()
    return span_mask(spans, prefixes, vocab, seqs.device).view(batch_size, nb, vocab)


class SpanProcessor(LogitsProcessor):
    """`span_mask` as a logits processor for transformers' `generate`: its row r (input row
    r // num_beams) is held to `spans[r // num_beams]`; the decoder start token is no part of a prefix."""

    def __init__(self, spans: Sequence[PassageSpans], num_beams: int) -> None:
        self.spans, self.num_beams = spans, num_beams

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = [self.spans[r // self.num_beams] for r in range(input_ids.shape[0])]
        mask = span_mask(rows, input_ids[:, 1:].tolist(), scores.shape[-1], scores.device)
        return scores + mask.to(scores.dtype)


def answer_constraint(gen: _Tokenizing, inputs: dict, k: int, constrain: str | None) -> list[PassageSpans] | None:
    """What the decoders hold answers to under `RAGConfig.constrain`: None for None (no constraint);
    for "spans", one `PassageSpans` a question of `inputs` (from `build_inputs`, k rows a question),
    the union of its rows' passage text."""
    if constrain is None:
        return None
    if constrain not in ANSWER_CONSTRAINTS:
        raise RagloopError(f"constrain: {constrain!r} is not one of {', '.join(ANSWER_CONSTRAINTS)}")
    marker = gen.tokenizer(CONTEXT_MARKER, add_special_tokens=False)["input_ids"]
    special = set(gen.tokenizer.all_special_ids)
    rows = [text_runs([t for t, real in zip(ids, mask) if real], marker, special)
            for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())]
    if not all(rows):
        log.debug("%d of %d input rows hold no passage text to answer from", sum(not r for r in rows), len(rows))
    no_start = _continuations(gen.tokenizer, {t for runs in rows for run in runs for t in run})
    return [PassageSpans([run for runs in rows[b * k : (b + 1) * k] for run in runs], gen.eos_token_id, no_start)
            for b in range(len(rows) // k)]


def text_runs(row: Sequence[int], marker: Sequence[int], special: Collection[int]) -> list[list[int]]:
    """The passage text of one input row (its real tokens): the tokens after the row's last `marker`,
    cut into runs at special tokens. None found (no marker: the row was cut before the text): []."""
    width = len(marker)
    found = [i + width for i in range(len(row) - width + 1) if list(row[i : i + width]) == list(marker)]
    runs: list[list[int]] = [[]]
    for token in row[found[-1]:] if found else ():
        if token in special:
            runs.append([])
        else:
            runs[-1].append(token)
    return [run for run in runs if run]


def _continuations(tokenizer, ids: set[int]) -> set[int]:
    """Those of `ids` that continue a word under a WordPiece tokenizer ("##s"): no answer begins with one."""
    if not ids or not is_wordpiece(tokenizer):
        return set()
    ordered = sorted(ids)
    return {t for t, piece in zip(ordered, tokenizer.convert_ids_to_tokens(ordered)) if str(piece).startswith("##")}
