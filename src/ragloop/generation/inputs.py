"""Generator inputs: "question: … title: … context: …" in, token ids out, and answer tokens back to text.

    >>> gen = Generator.from_pretrained("bundled:minilm-bert2bert")    # a Generator is GeneratorInputs
    >>> batch = gen.build_inputs(["who wrote hamlet?"], [[passage_a, passage_b]])   # input_ids [1*2, L]
    >>> labels = gen.tokenize_targets(["Shakespeare"])                               # [1, T], pads = -100
    >>> gen.decoder_inputs(labels)                                                   # teacher forcing
    >>> gen.decode(gen.generate(batch))                                              # one text a row

The question comes first, so truncating to `max_source_length` only ever cuts the passage. Passages
are tokenised once and cached by passage id and content (the `PASSAGE_TOKEN_CACHE_ENTRIES` most recently
used, ragloop/constants.py); a question is tokenised once per call and
joined to each of its passages' cached ids, with the tokenizer's own special tokens around the pair
(`… </s>` for T5, `[CLS] … [SEP]` for BERT-style tokenizers). A WordPiece decode gets the spaces it
adds inside numbers and hyphenated words taken out again (`join_wordpiece_punctuation`).

A passage is anything with `id`, `title`, `text`: the generator never knows where it came from.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import suppress
from typing import Protocol

import torch

from ragloop.constants import PASSAGE_TOKEN_CACHE_ENTRIES
from ragloop.errors import RagloopError

IGNORE_INDEX = -100
CONTEXT_MARKER = " context:"  # what comes right before a passage's text in its formatted input


class PassageLike(Protocol):
    id: str
    title: str
    text: str


def format_question(question: str) -> str:
    return f"question: {question}"


def format_passage(title: str, text: str) -> str:
    """The passage half of the input; it follows the question, hence the leading space."""
    return f" title: {title}{CONTEXT_MARKER} {text}"


class GeneratorInputs:
    """Formatting, collation and the passage token cache of a `Generator` (which inherits them).

    The host class holds `tokenizer`, `max_source_length`, `max_target_length` and the
    `pad_token_id`, `eos_token_id` and `decoder_start_token_id` it reads from its model (read on
    every call, so a changed model config counts), and calls `_init_inputs()` once its tokenizer is set.
    """

    def _init_inputs(self) -> None:
        self._prefix, self._suffix = _special_affixes(self.tokenizer)
        self._wordpiece = is_wordpiece(self.tokenizer)
        self._passage_cache: OrderedDict[tuple[str, int], list[int]] = OrderedDict()
        self.passage_cache_size = PASSAGE_TOKEN_CACHE_ENTRIES

    def passage_ids(self, passage: PassageLike) -> list[int]:
        """Token ids of " title: … context: …" (no special tokens), cached by passage id and content
        (a given context or another index may reuse an id for another text); the cache keeps the
        `passage_cache_size` most recently used passages."""
        key = (passage.id, hash((passage.title, passage.text)))
        cache = self._passage_cache
        ids = cache.get(key)
        if ids is not None:
            with suppress(KeyError):  # another thread may have just dropped it
                cache.move_to_end(key)
            return ids
        ids = self.tokenizer(format_passage(passage.title, passage.text), add_special_tokens=False)["input_ids"]
        cache[key] = ids
        with suppress(KeyError):
            while len(cache) > self.passage_cache_size:
                cache.popitem(last=False)
        return ids

    def clear_cache(self) -> None:
        self._passage_cache.clear()

    def build_inputs(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]]) -> dict:
        """`input_ids` and `attention_mask` of shape [sum of passages, L] (row b*K + k is question b
        with its k-th passage), right-padded to the longest row, each row at most `max_source_length`."""
        return self._pad([row for row, _ in self._rows(questions, passages)])

    def passage_positions(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]]) -> list[range]:
        """For each row of `build_inputs(questions, passages)`, the positions that hold its passage's
        tokens (`passage_ids`, in order; those past `max_source_length` were cut)."""
        return [positions for _, positions in self._rows(questions, passages)]

    def _rows(self, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]]):
        """(token ids, passage positions) of each row: [prefix] question passage [suffix], cut to fit."""
        if len(questions) != len(passages):
            raise RagloopError(f"{len(questions)} questions but {len(passages)} lists of passages")
        budget = self.max_source_length - len(self._prefix) - len(self._suffix)
        if budget < 1:
            raise RagloopError(f"max_source_length {self.max_source_length} leaves no room for any input token")
        q_ids = self.tokenizer([format_question(q) for q in questions], add_special_tokens=False)["input_ids"]
        rows = []
        for q, ps in zip(q_ids, passages):
            for p in ps:
                kept = (q + self.passage_ids(p))[:budget]
                start = len(self._prefix) + len(q)
                rows.append((self._prefix + kept + self._suffix, range(start, len(self._prefix) + len(kept))))
        return rows

    def _pad(self, rows: list[list[int]]) -> dict:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def tokenize_targets(self, answers: Sequence[str]) -> torch.Tensor:
        """labels [B, T]: answer tokens then eos, truncated to `max_target_length`; pads are -100."""
        ids = self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        return self.pad_labels([a[: self.max_target_length - 1] + [self.eos_token_id] for a in ids])

    @staticmethod
    def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(1, max(len(s) for s in sequences))
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(sequences):
            labels[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        return labels

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels shifted right behind the decoder start token (teacher forcing)."""
        shifted = labels.new_full(labels.shape, self.pad_token_id)
        shifted[:, 0] = self.decoder_start_token_id
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, self.pad_token_id)
        return shifted

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        texts = [self.tokenizer.decode(list(s), skip_special_tokens=True,
                                       clean_up_tokenization_spaces=self._wordpiece).strip() for s in sequences]
        return [join_wordpiece_punctuation(t) for t in texts] if self._wordpiece else texts


_JOINED = [  # WordPiece decoding puts spaces around every punctuation mark; these never had them
    (re.compile(r"\s*([-\u2010-\u2015/])\s*"), r"\1"),  # post-war, 1981-82, and/or
    (re.compile(r"(?<=\d), (?=\d{3}\b)"), ","),  # 1,000 (not a list such as 1999, 2000)
    (re.compile(r"(?<=\d) ?([.:]) (?=\d)"), r"\1"),  # 5.5, 10:30
    (re.compile(r"\b(?:u\. [skn]|a\. [md]|p\. m|d\. c|b\. c|e\. u)\.", re.IGNORECASE),
     lambda m: m.group(0).replace(". ", ".")),  # u.s., p.m., but not initials: j. s. bach stays apart
]


def join_wordpiece_punctuation(text: str) -> str:
    """Undo the spaces a WordPiece decode adds inside numbers and hyphenated words ("1, 000" ->
    "1,000", "post - war" -> "post-war"), which SQuAD's normalisation would otherwise split into two
    words, so a right answer scored lower than it is."""
    for pattern, repl in _JOINED:
        text = pattern.sub(repl, text)
    return text


def is_wordpiece(tokenizer) -> bool:
    """True for BERT-style tokenizers, whose pieces inside a word start with "##" and whose decode
    cannot know where the text had no spaces."""
    ids = tokenizer("ragloop probe", add_special_tokens=False)["input_ids"]
    return any(str(t).startswith("##") for t in tokenizer.convert_ids_to_tokens(ids))


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS]/[SEP], or </s>)."""
    probe = "ragloop probe"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            return full[:start], full[start + len(body) :]
    raise RagloopError(f"cannot tell where tokenizer {type(tokenizer).__name__} puts its special tokens")
