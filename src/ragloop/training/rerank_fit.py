"""Fit a reranker's combinations with the first stage's evidence (retrieval/rerank_fusion.py) on held-out
questions, at the end of training or afterwards on a saved reranker folder.

    >>> from ragloop.training.rerank_fit import fit_combinations, fit_held_out, first_stage_runs, refit_folder
    >>> fit_held_out(reranker, held_out, passages)     # all in one: sets reranker.combinations, returns them
    >>> reranker.write_files(folder)                   # a trainer's output: "combination" in ragloop_reranker.json

or step by step:

    >>> passages = context_passages(held_out, chunk_words=100)          # what the questions are searched in
    >>> runs = first_stage_runs(held_out, passages, depth=20)            # {mode: (scores, rows)}, rows into passages
    >>> reranker.combinations = fit_combinations(reranker, held_out, passages, runs)
    >>> reranker.write_files(folder)                                      # "combination" in ragloop_reranker.json
    >>> refit_folder("runs/reranker", "dev.json")                         # a trained folder: its json rewritten

`fit_combinations` scores each question's candidates once (the union over the modes) and fits each
mode's weights with `rerank_fusion.fit_weights`; a mode whose best combination does not beat its first
stage's held-out gold@1 is saved as `"use": "first_stage"`. A candidate is gold when it is a passage of
the question's own paragraph (its doc_id), as `evaluate_retrieval`'s gold@k counts.

`first_stage_runs` searches `passages` as `Retriever` does, through a temporary index built with
`encoder` (default: the bundled MiniLM, the default index encoder), hybrid fused by `fusion`/`weight`:
the combination is fitted on the first stage it will be applied to, as far as held-out data allow.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ragloop.config import EVAL_DEPTH
from ragloop.constants import DEFAULT_ENCODER, SEARCH_MODES
from ragloop.data.corpus import Passage
from ragloop.data.qa import QAExample, context_passages, load_qa, sample_evenly
from ragloop.errors import RagloopError
from ragloop.io import atomic_write_json
from ragloop.retrieval.encoders import BiEncoder
from ragloop.retrieval.index import Index
from ragloop.retrieval.rerank import SETTINGS_FILE, Reranker
from ragloop.retrieval.rerank_fusion import Combination, entries, fit_weights
from ragloop.retrieval.retriever import Retriever

log = logging.getLogger(__name__)

Runs = dict[str, tuple[np.ndarray, np.ndarray]]  # mode -> (scores [Q, D], rows [Q, D] into the passages; -1: none)


def fit_combinations(reranker: Reranker, examples: list[QAExample], passages: list[Passage], runs: Runs,
                     progress: bool | None = None) -> dict[str, Combination]:
    """{mode: Combination} fitted on held-out `examples` (each with its context paragraph) over `runs`, the
    first stage's candidates per mode (`first_stage_runs`, or a trainer's own) as rows into `passages`."""
    _check_runs(examples, runs)
    union = [sorted({int(r) for _, rows in runs.values() for r in rows[q] if r >= 0}) for q in range(len(examples))]
    scored = reranker.score([ex.question for ex in examples], [[passages[r] for r in rs] for rs in union],
                            progress=progress)
    by_row = [dict(zip(rs, s.tolist())) for rs, s in zip(union, scored)]
    out = {}
    for mode, (scores, rows) in runs.items():
        rerank, first, gold = [], [], []
        for q, ex in enumerate(examples):
            found = [int(r) for r in rows[q] if r >= 0]
            rerank.append(np.array([by_row[q][r] for r in found], dtype=np.float32))
            first.append(np.asarray(scores[q][: len(found)], dtype=np.float64))
            gold.append(np.array([passages[r].doc_id == ex.doc_id for r in found], dtype=bool))
        out[mode] = combo = fit_weights(mode, rerank, first, gold)
        g = combo.held_out["gold@1"]
        log.info("%s: held-out gold@1 first stage %.3f, reranked %.3f, combined %.3f (weights %s) -> %s", mode,
                 g["first_stage"], g["rerank"], g["combination"], combo.weights, combo.use)
    return out


def _check_runs(examples: list[QAExample], runs: Runs) -> None:
    if not examples or not runs:
        raise RagloopError("fitting a reranker's combinations needs held-out questions and first-stage runs")
    missing = next((ex for ex in examples if not ex.doc_id), None)
    if missing is not None:
        raise RagloopError(f"held-out question {missing.id!r} has no context paragraph, so no gold passage")
    for mode, (scores, rows) in runs.items():
        if mode not in SEARCH_MODES:
            raise RagloopError(f"first-stage run for unknown mode {mode!r}; choose among {', '.join(SEARCH_MODES)}")
        if np.shape(rows)[0] != len(examples) or np.shape(scores) != np.shape(rows):
            raise RagloopError(f"{mode} run: scores {np.shape(scores)} and rows {np.shape(rows)} for "
                               f"{len(examples)} questions")


def first_stage_runs(examples: list[QAExample], passages: list[Passage], depth: int = EVAL_DEPTH,
                     modes: tuple[str, ...] = SEARCH_MODES, encoder: str | os.PathLike = DEFAULT_ENCODER,
                     fusion: str = "rrf", weight: float = 0.5, progress: bool | None = None) -> Runs:
    """Each mode's top `depth` of `passages` for the examples' questions, searched as `Retriever` searches
    (a temporary index; rows are positions in `passages`)."""
    questions = [ex.question for ex in examples]
    with tempfile.TemporaryDirectory(prefix="ragloop-rerank-fit-") as tmp:
        bi_encoder = BiEncoder.from_pretrained(encoder)
        index = Index.build(passages, bi_encoder, Path(tmp) / "index", progress=progress)
        retriever = Retriever(index, bi_encoder.question, fusion=fusion, weight=weight)
        depth = min(depth, len(index))
        vectors = bi_encoder.question.encode(questions, batch_size=128, progress=progress)
        runs = {}
        for mode in modes:
            got = retriever.retrieve(questions, depth, mode, vectors=vectors)
            runs[mode] = (got.scores, _positions(got.rows, index, passages))
    return runs


def _positions(rows: np.ndarray, index: Index, passages: list[Passage]) -> np.ndarray:
    """Index rows as positions in `passages` (the index keeps them in order; checked by id)."""
    ids = {p.id: i for i, p in enumerate(passages)}
    wanted = sorted({int(r) for r in rows.reshape(-1) if r >= 0})
    by_row = {r: ids[p.id] for r, p in zip(wanted, index.store.get_rows(wanted))}
    return np.vectorize(lambda r: by_row.get(int(r), -1), otypes=[np.int64])(rows)


def fit_held_out(reranker: Reranker, examples: list[QAExample], passages: list[Passage], depth: int = EVAL_DEPTH,
                 encoder: str | os.PathLike = DEFAULT_ENCODER, progress: bool | None = None) -> dict[str, Combination]:
    """`first_stage_runs` then `fit_combinations` for every mode; the result is also set as
    `reranker.combinations`, so the reranker's next `write_files` / `save_pretrained` saves it."""
    runs = first_stage_runs(examples, passages, depth, encoder=encoder, progress=progress)
    reranker.combinations = fit_combinations(reranker, examples, passages, runs, progress=progress)
    return reranker.combinations


def refit_folder(folder: str | os.PathLike, qa_file: str | os.PathLike, max_questions: int = 300,
                 depth: int = EVAL_DEPTH, chunk_words: int = 100, encoder: str | os.PathLike = DEFAULT_ENCODER,
                 progress: bool | None = None) -> dict[str, Combination]:
    """Fit the combinations of the reranker saved in `folder` on `max_questions` questions of `qa_file`
    (spread over it; searched in all its paragraphs) and rewrite the folder's ragloop_reranker.json
    atomically with them (the weights are untouched). Returns them."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise RagloopError(f"{folder}: not a reranker folder (no config.json)")
    reranker = Reranker.from_pretrained(folder)
    examples = [ex for ex in load_qa(qa_file) if ex.context]
    if not examples:
        raise RagloopError(f"{qa_file}: no question has a context paragraph to fit a combination on")
    passages = context_passages(examples, chunk_words)
    held_out = sample_evenly(examples, max_questions)
    combos = fit_held_out(reranker, held_out, passages, depth, encoder=encoder, progress=progress)
    path = folder / SETTINGS_FILE
    settings = json.loads(path.read_text()) if path.is_file() else reranker.settings()
    atomic_write_json(path, {**settings, "combination": entries(combos)})
    log.info("combinations fitted on %d questions of %s -> %s", len(held_out), qa_file, path)
    return combos
