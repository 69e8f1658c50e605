"""The big real corpus the compress and stream sections measure on (`python -m bench --big DIR`).

DIR is what `python -m bench.scripts.make_corpus` writes, corpus.jsonl (>= 100k passages of ~100 words) and
questions.jsonl ({"question", "answers", ...}), plus index/, a Flat ragloop index of the corpus (MiniLM;
`ragloop index DIR/corpus.jsonl --out DIR/index --index-type Flat --chunk-words 100`, about 1.5 hours on
2 cores; its manifest appears only when the build has finished). Without it, the sections fall back to the 2,001 bundled
SQuAD dev passages and say so in their tables: a goal needs >= 100k real passages to be judged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.suite.common import say

DEFAULT_BIG = Path(os.environ.get("RAGLOOP_BENCH_BIG", "~/.cache/ragloop/bench-big")).expanduser()
GOAL_PASSAGES = 100_000


@dataclass
class Corpus:
    """Real passage vectors (row i = passage i), the passages' texts on demand, question vectors + answers."""

    name: str
    vectors: np.ndarray
    texts: callable  # rows -> list of passage texts
    questions: np.ndarray
    answers: list[list[str]]
    corpus_file: Path | None  # corpus.jsonl, for real streaming builds; None for the bundled data
    real_big: bool  # >= GOAL_PASSAGES real passages: the goal can be judged

    def __len__(self) -> int:
        return len(self.vectors)


def missing_reason(big: Path) -> str | None:
    """Why `big` cannot be used, or None."""
    for name in ("corpus.jsonl", "questions.jsonl", "index/manifest.json"):  # a manifest: the build finished
        if not (big / name).exists():
            return (f"{big / name} is missing (create it with `python -m bench.scripts.make_corpus --out {big}` and "
                    f"`ragloop index {big}/corpus.jsonl --out {big}/index --index-type Flat --chunk-words 100`, "
                    "or pass --big DIR)")
    return None


def load(ctx, limit: int | None, questions: int) -> Corpus:
    """The big corpus (its first `limit` passages), or the bundled dev passages when it is missing."""
    big = getattr(ctx, "big", None) or DEFAULT_BIG
    reason = missing_reason(big)
    if reason is None:
        return _load_big(big, limit, questions)
    passages = ctx.dev_passages
    note = f"big corpus not used: {reason}; measured on {len(passages):,} bundled SQuAD dev passages instead"
    say(f"  {note}")
    if note not in ctx.notes:
        ctx.notes.append(note)
    examples = ctx.quality_examples[:questions]
    queries = ctx.minilm.encode_questions([e.question for e in examples])
    return Corpus(f"{len(passages):,} bundled SQuAD dev passages (big corpus missing)",
                  np.ascontiguousarray(ctx.dev_vectors), lambda rows: [passages[r].text for r in rows], queries,
                  [e.answers for e in examples], None, False)


def _load_big(big: Path, limit: int | None, questions: int) -> Corpus:
    from ragloop import Index
    from ragloop.retrieval.encoders import BiEncoder

    index = Index.load(big / "index", verify="size")
    n = len(index) if limit is None else min(limit, len(index))
    say(f"  big corpus {big}: reading {n:,} of {len(index):,} vectors back from its Flat index ...")
    vectors = index.backend.index.reconstruct_n(0, n)
    rows = []
    with open(big / "questions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    step = max(1, len(rows) // questions)
    rows = rows[::step][:questions]
    entry = index.manifest["encoder"]
    encoder = BiEncoder.from_pretrained(entry["passage"]["name"], entry["question"]["name"])
    q = encoder.encode_questions([r["question"] for r in rows])
    store = index.store
    return Corpus(f"{big.name}: {n:,} real passages", vectors, lambda r: [p.text for p in store.get_rows(list(r))],
                  q, [list(r["answers"]) for r in rows], big / "corpus.jsonl", n >= GOAL_PASSAGES)
