"""The field's file formats out, so results can be checked with the usual tools:

    SQuAD predictions   {question id: answer} JSON, as the official SQuAD v1.1 `evaluate-v1.1.py` reads it
    TREC run            one line per retrieved passage, "qid Q0 docid rank score tag", for trec_eval,
                        ranx or pytrec_eval (ranks from 1, scores descending within a question)

    >>> write_predictions("preds.json", {"56be4db0acb8001400a502ec": "Denver Broncos"})
    >>> write_trec_run("run.txt", {"56be4db0acb8001400a502ec": hits}, tag="ragloop-bm25")

Both are written atomically (ragloop.io). `ragloop eval --predictions` and `ragloop eval-retrieval --run`
call these with what they scored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ragloop.errors import RagloopError
from ragloop.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from ragloop.retrieval.retriever import Hit


def write_predictions(path: str | os.PathLike, predictions: Mapping[str, str]) -> None:
    """{question id: predicted answer} as one JSON object, as SQuAD's official evaluation script reads it."""
    atomic_write_json(path, {str(qid): str(answer) for qid, answer in predictions.items()})


def trec_lines(rankings: Mapping[str, Sequence[Hit]], tag: str) -> list[str]:
    """TREC run lines for {question id: hits best first}; an id or tag with white space (which would
    split a column) is one RagloopError naming it."""
    _one_token(tag, "run tag")
    lines = []
    for qid, hits in rankings.items():
        _one_token(qid, "question id")
        for rank, hit in enumerate(hits, start=1):
            lines.append(f"{qid} Q0 {_one_token(hit.passage.id, 'passage id')} {rank} {float(hit.score)!r} {tag}")
    return lines


def write_trec_run(path: str | os.PathLike, rankings: Mapping[str, Sequence[Hit]], tag: str) -> None:
    """A TREC run file of {question id: hits best first} (`trec_lines`)."""
    atomic_write_bytes(path, "".join(line + "\n" for line in trec_lines(rankings, tag)).encode("utf-8"))


def _one_token(value: str, what: str) -> str:
    if not value or len(str(value).split()) != 1 or str(value) != str(value).strip():
        raise RagloopError(f"a TREC run file needs each {what} to be one word without white space (got {value!r})")
    return str(value)
