"""The retrieval cache: question vectors and search results remembered per question.

    >>> from ragloop.retrieval.cache import RetrievalCache
    >>> r = Retriever.from_index("runs/idx", cache=RetrievalCache(max_entries=4096, max_bytes=64 << 20))
    >>> r.retrieve(["Who won Super Bowl 50?"], k=5)      # searched
    >>> r.retrieve(["Who won Super Bowl 50?"], k=5)      # from the cache: the same rows, scores, passages
    >>> r.cache.stats()["results"]["hit_rate"]
    0.5

`RetrievalCache` is a `ragloop.cache.Memo` (one LRU bounded in entries and bytes) that a `Retriever`
wraps its own search with (`Retriever.retrieve`); this module builds the keys, from what it knows of
an index and a retriever. What the retriever remembers:

    results      a question's row (rows, scores, passages), for `retrieve` calls that encode their own
                 questions. A caller that passes `vectors=` is never served from the cache: its vectors
                 are its own (they may come from an encoder in training).
    embeddings   a question's vector from the retriever's own question encoder (not while it trains).

Callers above the retriever may keep their own kinds in the same memo (the kind "answers" is reported
from the start; `answers=False` turns it off).

The key of every entry holds everything its value depends on, so nothing is invalidated by hand and
nothing stale is served:

    the question, k, the mode (and fusion and weight for hybrid), `pad_with_dense`
    the index          `Index.state_stamp`: new for every loaded index object and on every in-memory
                       change (`Index.add` reloads, `Index.reencode` bumps it); swapping
                       `retriever.index` swaps it too. And its FAISS search parameters.
    the encoder        `module_state` (ragloop/cache/fingerprint.py): changes with every in-place update
    the reranker       its name, max length, depth, saved combinations, the object and `module_state` of its model

On disk (`directory=`, for `ragloop eval --cache-dir` / `eval-retrieval --cache-dir`; a
`ragloop.cache.DiskStore` of at most `max_disk_bytes`) results are keyed by content instead, so they
survive the process: the index manifest's file checksums (an index changed in memory by `reencode` is
not cached on disk), a hash of the encoder's and reranker's weights, and the same settings. Each set
of settings is one `.npz` file holding the questions, rows and scores.

A cached result equals the uncached one computed in the same batch. Results depend on batching in
their last float bits (encoders pad a batch; FAISS switches to BLAS for bigger batches), so a
question searched alone and the same question searched in a batch can differ there, with or
without a cache; only the questions missing from the cache are computed, together, in one batch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ragloop.cache import DISK_MAX_BYTES, DiskStore, Memo, content_digest, module_state, stamp, weights_digest
from ragloop.constants import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, reads_question_vectors

if TYPE_CHECKING:
    from ragloop.retrieval.index import Index

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "KINDS", "RESULT_FIELDS", "RetrievalCache", "disk_setup",
           "index_digest", "index_state", "module_state", "results_settings", "results_setup", "search_setup",
           "weights_digest"]

DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES = CACHE_MAX_ENTRIES, CACHE_MAX_BYTES
KINDS = ("results", "embeddings", "answers")  # reported by `stats` from the start
RESULT_FIELDS = {"rows": np.int64, "scores": np.float32}  # what a disk file holds per question


class Retriever(Protocol):
    """What the keys read of a `ragloop.retrieval.retriever.Retriever` (this module sits below it)."""

    index: Index
    fusion: str
    weight: float
    reranker: Any

    @property
    def question_encoder(self) -> Any: ...

    def depth_for(self, k: int) -> int: ...


class RetrievalCache(Memo):
    """Question vectors and retrieval results in one LRU of at most `max_entries` entries and `max_bytes`
    bytes; optionally results also on disk under `directory` (at most `max_disk_bytes`). See the module
    doc. `answers=False` keeps the kind "answers" out of it (callers above compute theirs every time)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES,
                 directory: str | os.PathLike | None = None, answers: bool = True,
                 max_disk_bytes: int = DISK_MAX_BYTES) -> None:
        super().__init__(max_entries, max_bytes, kinds=KINDS, off=() if answers else ("answers",))
        self.disk = DiskStore(directory, max_disk_bytes, key_field="questions") if directory is not None else None

    def stats(self) -> dict:
        """`Memo.stats`, and the disk store's directory, hits and misses when there is one."""
        out = super().stats()
        if self.disk is not None:
            out["disk"] = self.disk.stats()
        return out


# -- in-process keys ------------------------------------------------------------------------------


def index_state(index: Index) -> tuple:
    return index.state_stamp, tuple(sorted((str(k), str(v)) for k, v in index.backend.search_params.items()))


def _mode_setup(retriever: Retriever, mode: str) -> tuple:
    return (retriever.fusion, retriever.weight) if mode == "hybrid" else ()


def _reranker_setup(retriever: Retriever, k: int) -> tuple | None:
    r = retriever.reranker
    if r is None:
        return None
    model = getattr(r, "model", None)  # a stand-in without a torch model is known by its object alone
    return (r.name, getattr(r, "max_length", None), retriever.depth_for(k), _combinations(r), stamp(r),
            module_state(model) if model is not None else None)


def _combinations(reranker) -> tuple:
    """A reranker's saved combinations (rerank_fusion.py) as a key: they change what the rerank stage returns."""
    saved = getattr(reranker, "combinations", None) or {}
    return tuple(sorted((mode, c.use, *c.weights.values()) for mode, c in saved.items()))


def search_setup(retriever: Retriever, k: int, mode: str) -> tuple:
    """What a top-k search in `mode` depends on besides the question and its vector: the index, the
    mode's own settings and the reranker."""
    return index_state(retriever.index), _mode_setup(retriever, mode), _reranker_setup(retriever, k)


def results_setup(retriever: Retriever, k: int, mode: str, pad_with_dense: bool) -> tuple:
    """The key of a `retrieve(question, k, mode, pad_with_dense=...)` result besides the question."""
    dense = reads_question_vectors(mode, pad_with_dense)
    encoder_state = module_state(retriever.question_encoder) if dense else None
    return k, mode, pad_with_dense, search_setup(retriever, k, mode), encoder_state


# -- on-disk keys ---------------------------------------------------------------------------------


def index_digest(index: Index) -> str | None:
    """The index folder's identity (its manifest's checksums), or None once its vectors changed in memory."""
    if index.changed_in_memory:
        return None
    m = index.manifest
    return content_digest([m.get("files"), m.get("passages"), m["index"].get("factory"), index.backend.search_params])


def disk_setup(retriever: Retriever, k: int, mode: str) -> dict | None:
    """`search_setup` by content, to outlive the process; None where no content identifies it (an index
    changed in memory, a reranker without weights)."""
    index_id, r = index_digest(retriever.index), retriever.reranker
    if index_id is None or (r is not None and getattr(r, "model", None) is None):
        return None
    reranker = None if r is None else [weights_digest(r.model), getattr(r, "max_length", None), retriever.depth_for(k),
                                       list(_combinations(r))]
    return {"index": index_id, "mode_setup": list(_mode_setup(retriever, mode)), "reranker": reranker}


def results_settings(retriever: Retriever, k: int, mode: str, pad_with_dense: bool) -> dict | None:
    """The disk file's settings for `retrieve(questions, k, mode, pad_with_dense=...)` results (None: not on disk)."""
    common = disk_setup(retriever, k, mode)
    if common is None:
        return None
    dense = reads_question_vectors(mode, pad_with_dense)
    encoder = retriever.question_encoder if dense else None
    # "fill" is pad_with_dense's old name, kept so that existing cache files keep matching
    return {"kind": "retrieve", "k": k, "mode": mode, "fill": pad_with_dense, **common,
            "encoder": weights_digest(encoder) if dense else None,
            "encoder_spec": encoder.spec.to_dict() if dense else None}
