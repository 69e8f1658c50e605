"""The passages and raw doc scores the RAG model reads for a batch of questions, from the on-disk cache
of its retriever when it has one (`ragloop eval --cache-dir`). For evaluation: no gradient.

    >>> from ragloop.contexts import rag_contexts
    >>> rag.retriever.cache = RetrievalCache(directory="runs/cache")
    >>> passages, doc_scores = rag_contexts(rag, ["who wrote hamlet?"], k=5)   # [B][K] passages, [B, K] scores
    >>> passages, doc_scores = rag_contexts(rag, ["who wrote hamlet?"], k=5)   # read back, not retrieved

Without a disk store (or where no content identifies the setup: an index changed in memory, a
reranker without weights) this is `model.retrieve(questions, k)`. On disk the settings hold, besides
the retriever's (`disk_setup`: the index's checksums, the mode's settings, the reranker's weights),
what only the RAG model knows: its search mode, and the weights of its question encoder and, when it
trains it, its passage encoder (they make the doc scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ragloop.cache import weights_digest
from ragloop.data.corpus import Passage
from ragloop.retrieval.cache import RESULT_FIELDS, disk_setup
from ragloop.retrieval.retriever import passages_to_read

if TYPE_CHECKING:
    from ragloop.model import RAG


def rag_contexts(model: RAG, questions: Sequence[str], k: int | None) -> tuple[list[list[Passage]], torch.Tensor]:
    """The passages [B][K] and raw doc scores [B, K] `model.retrieve(questions, k)` gives, read from the
    disk store of `model.retriever.cache` when it has one (the missing questions retrieved and added)."""
    retriever = getattr(model, "retriever", None)
    disk = getattr(getattr(retriever, "cache", None), "disk", None)
    asked = model.config.n_docs if k is None else k
    common = disk_setup(retriever, asked, retriever.mode) if disk else None
    if common is None:
        got = model.retrieve(questions, k)
        return got.passages, got.doc_scores
    k = passages_to_read(k, model.config.n_docs, len(model.index), model.index.path)
    trained_passages = model.config.train_passage_encoder and model.passage_encoder is not None
    settings = {"kind": "rag", "k": k, "search_mode": model.config.search_mode, **common,
                "question_encoder": weights_digest(model.question_encoder),
                "passage_encoder": weights_digest(model.passage_encoder) if trained_passages else None}

    def compute(missing: list[str]) -> dict[str, np.ndarray]:
        got = model.retrieve(missing, k)
        return {"rows": got.rows, "scores": got.doc_scores.detach().float().cpu().numpy()}

    stored = disk.lookup(settings, list(questions), compute, RESULT_FIELDS)
    return retriever.passages(stored["rows"]), torch.from_numpy(stored["scores"])
