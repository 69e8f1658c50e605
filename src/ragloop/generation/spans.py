"""Sources you can point at: the characters of each passage that a generator's copy head copied.

    >>> from ragloop.generation.spans import copied_spans
    >>> copied_spans(gen, ["who wrote hamlet?"], [[passage_a, passage_b]], [answer_ids])
    [[None, {'start': 0, 'end': 11, 'text': 'Shakespeare'}]]      # passage_b.text[0:11] was copied

`RAG.answer` calls it for every answer: each passage dict gets `copied`, a span of its `text` or None.

How: after the answer is decoded (by any reader), its tokens go through ONE teacher-forced decoder
pass over each source row. Where the copy head gave a token more of its probability than the
vocabulary did ((1 - g) p_copy > g p_vocab), the token counts as copied, from the position holding it
that the copy attention weighs most (`CopyHead.copied_from`). A position map (source position ->
passage, characters of that passage's text, from the tokenizer's offset mapping) turns positions into
characters; positions outside the passage text (the question, " title: … context: ", special tokens,
padding) are ignored. Positions next to each other merge into a run; a passage's span runs from the
first character of its longest run (the earliest of equally long ones) to the last, so it may take in
the spaces between tokens. A generator without a copy head copies nothing: every span is None, no
error (its answers cannot be pointed at this way). The cost is one decoder pass over the k rows: inside
`RAG.answer` the encoder's outputs are the ones the answer was decoded from
(`Generator.reusing_encodings`): about +12% on `RAG.answer` (bundled generator, k = 5, answers of up
to 8 tokens, measured on a shared 2-core machine).

Layouts. RAG-Sequence and RAG-Token read one passage a row, as `Generator.build_inputs` lays them
out (`row_maps`, and `copied_spans` does the whole job). A reader that reads a question's k passages
as one source (Fusion-in-Decoder: the k rows' encodings side by side, each `width` positions) maps
its fused positions with `fuse(row_maps(...)[b*K:(b+1)*K], width)`, finds the copied positions of
its own encoding with `copy_positions`, and reads the spans with `spans_from_positions`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ragloop.errors import RagloopError
from ragloop.generation.inputs import PassageLike, format_passage

if TYPE_CHECKING:
    from ragloop.generation.generator import Generator

log = logging.getLogger(__name__)

Span = dict  # {"start": int, "end": int, "text": str}: passage.text[start:end]
PositionMap = dict[int, tuple[int, int, int]]  # source position -> (passage index, start, end in its text)
_warned: set[str] = set()  # tokenizer classes already reported as giving no offsets (warn once, not per answer)


def text_offsets(gen: Generator, passage: PassageLike) -> list[tuple[int, int] | None]:
    """For each token of `gen.passage_ids(passage)`: its characters [start, end) in `passage.text`, or
    None where it belongs to the " title: … context: " part. Empty when the tokenizer has no offset
    mapping (a slow, Python tokenizer)."""
    formatted = format_passage(passage.title, passage.text)
    text_start = len(formatted) - len(passage.text)
    try:
        encoded = gen.tokenizer(formatted, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # transformers' slow tokenizers have no offsets
        name = type(gen.tokenizer).__name__
        if name not in _warned:
            _warned.add(name)
            log.warning("tokenizer %s gives no character offsets: answers carry no copied spans", name)
        return []
    if encoded["input_ids"] != gen.passage_ids(passage):
        log.warning("passage %r tokenizes differently with offsets: no copied span for it", passage.id)
        return []
    return [(start - text_start, end - text_start) if start >= text_start and end > start else None
            for start, end in encoded["offset_mapping"]]


def row_maps(gen: Generator, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]]) -> list[PositionMap]:
    """One position map for each row of `gen.build_inputs(questions, passages)` (row b*K + k:
    question b with passage k), its passage numbered k."""
    positions = iter(gen.passage_positions(questions, passages))
    maps = []
    for ps in passages:
        for k, p in enumerate(ps):
            maps.append({pos: (k, *chars) for pos, chars in zip(next(positions), text_offsets(gen, p))
                         if chars is not None})
    return maps


def fuse(maps: Sequence[PositionMap], width: int) -> PositionMap:
    """The position map of rows laid side by side, each `width` positions (Fusion-in-Decoder's source:
    a question's k encodings concatenated): row i's position p is position i * width + p."""
    return {i * width + pos: where for i, m in enumerate(maps) for pos, where in m.items()}


@torch.no_grad()
def copy_positions(gen: Generator, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   answers: Sequence[Sequence[int]], encoder_outputs=None) -> list[list[int]]:
    """The source positions each row's answer tokens were copied from (see the module docstring), one
    list a row, by one teacher-forced pass of `answers[row]` over the row. `input_ids` and
    `attention_mask` [N, S] are the source as the decoder reads it; give `encoder_outputs`
    (a `BaseModelOutput` of [N, S, H] states) when the source is not one `encode` call of `input_ids` (a fused source).
    Empty lists for a generator without a copy head. Special tokens in `answers` are skipped."""
    if gen.copy_head is None:
        return [[] for _ in answers]
    special = set(gen.tokenizer.all_special_ids)
    tokens = [[t for t in a if t not in special] for a in answers]
    if not any(tokens):
        return [[] for _ in answers]
    device = gen.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if encoder_outputs is None:
        encoder_outputs = gen.encode(input_ids, attention_mask)
    labels = gen.pad_labels(tokens).to(device)
    gold = labels.clamp(min=0)
    out = gen.model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                    decoder_input_ids=gen.decoder_inputs(labels), use_cache=False, return_dict=True,
                    output_hidden_states=True)
    keys, copyable = gen._copy_inputs(encoder_outputs, input_ids, attention_mask)
    source = gen.copy_head.copied_from(out.logits, out.decoder_hidden_states[-1], keys, input_ids, copyable, gold)
    source = source.masked_fill(labels < 0, -1).tolist()
    return [[pos for pos in row if pos >= 0] for row in source]


def spans_from_positions(positions: Iterable[int], position_map: PositionMap,
                         texts: Sequence[str]) -> list[Span | None]:
    """One span (or None) for each of the passages `texts`: the copied `positions` that the map places
    in a passage's text, merged into runs of neighbouring positions, the longest run taken."""
    runs: list[list[list[int]]] = [[] for _ in texts]  # per passage: runs of positions
    for pos in sorted(set(positions)):
        if pos not in position_map:
            continue
        passage_runs = runs[position_map[pos][0]]
        if passage_runs and passage_runs[-1][-1] == pos - 1:
            passage_runs[-1].append(pos)
        else:
            passage_runs.append([pos])
    spans: list[Span | None] = []
    for text, passage_runs in zip(texts, runs):
        if not passage_runs:
            spans.append(None)
            continue
        best = max(passage_runs, key=len)  # the first of the longest
        start, end = position_map[best[0]][1], position_map[best[-1]][2]
        spans.append({"start": start, "end": end, "text": text[start:end]})
    return spans


def copied_spans(gen: Generator, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                 answers: Sequence[Sequence[int]], fused: bool = False) -> list[list[Span | None]]:
    """For each question b and each of its passages: the span of the passage's text that answer b
    (token ids, as decoded) copied, or None. All None for a generator without a copy head. `fused`:
    the answer was written from a question's k encodings side by side (Fusion-in-Decoder), so the
    teacher-forced pass reads that fused source, as the reader did, and one copy distribution spans
    all k passages."""
    if gen.copy_head is None:
        log.debug("generator %r has no copy head: answers carry no copied spans", gen.name)
        return [[None] * len(ps) for ps in passages]
    if fused:
        return _fused_copied_spans(gen, questions, passages, answers)
    rows = [answers[b] for b, ps in enumerate(passages) for _ in ps]
    inputs = gen.build_inputs(questions, passages)
    positions = copy_positions(gen, inputs["input_ids"], inputs["attention_mask"], rows)
    maps = row_maps(gen, questions, passages)
    out, row = [], 0
    for ps in passages:
        texts = [p.text for p in ps]
        found = [spans_from_positions(positions[row + k], maps[row + k], texts)[k] for k in range(len(ps))]
        out.append(found)
        row += len(ps)
    return out


def _fused_copied_spans(gen: Generator, questions: Sequence[str], passages: Sequence[Sequence[PassageLike]],
                        answers: Sequence[Sequence[int]]) -> list[list[Span | None]]:
    from ragloop.generation.fusion import fuse as fuse_states

    k = len(passages[0]) if passages else 0
    if any(len(ps) != k for ps in passages):
        raise RagloopError("a fused (FiD) source needs the same number of passages for every question")
    if k == 0:
        return [[] for _ in passages]
    inputs = gen.build_inputs(questions, passages)
    states, fused_inputs = fuse_states(gen.encode(inputs["input_ids"], inputs["attention_mask"]), inputs, k)
    positions = copy_positions(gen, fused_inputs["input_ids"], fused_inputs["attention_mask"], answers,
                               encoder_outputs=states)
    maps, width = row_maps(gen, questions, passages), inputs["input_ids"].shape[1]
    return [spans_from_positions(positions[b], fuse(maps[b * k:(b + 1) * k], width), [p.text for p in ps])
            for b, ps in enumerate(passages)]
