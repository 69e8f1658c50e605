"""The vector side of an index folder: FAISS today, one class per backend.

An `Index` (index.py, with folder.py for the manifest) owns the folder, the passage store and BM25; it talks to its
vectors only through this interface, so another vector library is one more class like `FaissBackend`:

    >>> backend = FaissBackend.create("HNSW32", dim=384, search_params={"efSearch": 128})
    >>> backend.fill(vectors)                  # trains (IVF/PQ) if needed, then adds; row i is vectors[i]
    >>> scores, rows = backend.search(queries, k=5)   # rows are -1 past the end of a small index
    >>> backend.vectors(rows)                  # stored vectors (PQ-decoded for compressed indexes)
    >>> backend.save(folder / FaissBackend.FILE); FaissBackend.load(folder / FaissBackend.FILE, "HNSW32", {})

Compressed indexes (IVF-PQ, "OPQ64,IVF1024,PQ64", 4-bit fast-scan "IVF1024,PQ64x4fs") can re-rank: with
`exact` set (the full vectors, usually `np.load("vectors.npy", mmap_mode="r")`, so they stay on disk),
`search` asks FAISS for k * refine_factor candidates and re-scores them exactly, and `vectors` returns
the exact vectors instead of decoded codes:

    >>> backend = FaissBackend.load(file, "IVF1024,PQ64x4fs", {"nprobe": 16},
    ...                             exact=np.load(folder / "vectors.npy", mmap_mode="r"), refine_factor=4)

Inner product throughout: encoders that expect cosine similarity normalise their vectors.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import faiss
import numpy as np

from ragloop.errors import RagloopError

log = logging.getLogger(__name__)

REFINE_BATCH = 256  # queries re-scored at once: bounds the (queries x candidates x dim) float32 block


class FaissBackend:
    """A FAISS index (any factory string, inner product) behind search / add / vectors / train."""

    FILE = "index.faiss"

    def __init__(self, index: faiss.Index, factory: str, search_params: dict | None = None,
                 exact: np.ndarray | None = None, refine_factor: int = 1) -> None:
        self.index = index
        self.factory = factory
        self.search_params = dict(search_params or {})
        # exact vectors for re-ranking (row i = FAISS row i), in RAM or memory-mapped; None: no refine stage
        self.exact = exact
        self.refine_factor = max(1, int(refine_factor))
        set_search_params(index, self.search_params)
        if exact is None:  # with exact vectors, no direct map: vectors() reads them (8 bytes a row saved)
            enable_reconstruct(index)

    @classmethod
    def create(cls, factory: str, dim: int, search_params: dict | None = None,
               exact: np.ndarray | None = None, refine_factor: int = 1) -> FaissBackend:
        """An empty index; a factory string FAISS does not know is the user's error, said plainly."""
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
            raise RagloopError(f"FAISS index type {factory!r} is not valid ({msg[:120]})") from None
        return cls(index, factory, search_params, exact, refine_factor)

    @classmethod
    def load(cls, file: Path, factory: str, search_params: dict | None = None,
             exact: np.ndarray | None = None, refine_factor: int = 1) -> FaissBackend:
        try:
            index = faiss.read_index(str(file))
        except RuntimeError:
            raise RagloopError(f"{file}: not a readable FAISS index") from None
        return cls(index, factory, search_params, exact, refine_factor)

    def save(self, file: Path) -> None:
        faiss.write_index(self.index, str(file))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def clone(self) -> FaissBackend:
        """A copy of the FAISS index (the exact vectors, read-only, are shared)."""
        return FaissBackend(faiss.clone_index(self.index), self.factory, self.search_params, self.exact,
                            self.refine_factor)

    def train(self, vectors: np.ndarray) -> None:
        """Train IVF centroids / PQ codebooks / OPQ rotations; too few passages for them is the user's error,
        said plainly."""
        if self.index.is_trained:
            return
        need = 1
        if m := re.search(r"IVF(\d+)", self.factory):
            need = max(need, int(m.group(1)))
        for bits in re.findall(r"(?<![OA-Z])PQ\d+(?:x(\d+))?", self.factory):  # not OPQ64's "PQ64"
            need = max(need, 2 ** int(bits or 8))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) < need:
            raise RagloopError(
                f"FAISS index type {self.factory!r} needs at least {need} passages to train, got {len(vectors)}; "
                "use fewer IVF lists / PQ bits, or 'Flat' / 'HNSW32' for a small corpus"
            )
        log.info("training FAISS %s on %d vectors", self.factory, len(vectors))
        _skip_polysemous_training(self.index)
        try:
            self.index.train(vectors)
        except RuntimeError as e:
            raise RagloopError(f"FAISS could not train {self.factory!r}: "
                               f"{str(e).strip().splitlines()[-1][:200]}") from None
        set_search_params(self.index, self.search_params)
        if self.exact is None:
            enable_reconstruct(self.index)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def fill(self, vectors: np.ndarray) -> FaissBackend:
        """Train if the index type needs it, then add: what every build of an index does."""
        self.train(vectors)
        self.add(vectors)
        return self

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k); rows are -1 past the end of a small index. With exact vectors,
        FAISS's top k * refine_factor are re-scored exactly and the best k returned."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.exact is None:
            return self.index.search(queries, k)
        scores, rows = self.index.search(queries, k * self.refine_factor)
        return self._rescore(queries, rows, k)

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact q·d of every candidate row (each distinct row read once, in file order), best k first."""
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), REFINE_BATCH):
            block, q = rows[start : start + REFINE_BATCH], queries[start : start + REFINE_BATCH]
            distinct, where = np.unique(np.maximum(block, 0), return_inverse=True)
            exact = np.asarray(self.exact[distinct], dtype=np.float32)
            scores = np.einsum("nkd,nd->nk", exact[where.reshape(block.shape)], q)
            scores[block < 0] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            width = top.shape[1]
            out_scores[start : start + len(q), :width] = np.take_along_axis(scores, top, axis=1)
            out_rows[start : start + len(q), :width] = np.take_along_axis(block, top, axis=1)
        out_rows[~np.isfinite(out_scores)] = -1
        return out_scores, out_rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors: exact for Flat/HNSW and with exact vectors (the refine stage), PQ-decoded
        approximations for compressed indexes without; row -1 gives row 0's."""
        flat = np.maximum(np.asarray(rows, dtype=np.int64).reshape(-1), 0)
        if self.exact is not None:
            out = np.asarray(self.exact[flat], dtype=np.float32)
        elif is_fast_scan(self.index):  # FAISS 1.15 crashes reconstructing a fast-scan index read from disk
            raise RagloopError(f"FAISS index type {self.factory!r} (4-bit fast-scan) cannot return its stored "
                               "vectors, which RAG needs to score passages; build it with --refine disk, "
                               "which keeps the exact vectors on disk")
        else:
            try:
                out = self.index.reconstruct_batch(flat)
            except RuntimeError as e:
                raise RagloopError(f"FAISS index type {self.factory!r} cannot return its stored vectors "
                                   f"({str(e).strip().splitlines()[-1][:120]}); build it with --refine disk, "
                                   "which keeps the exact vectors on disk") from None
        return out.reshape(*np.shape(rows), self.dim)


def _skip_polysemous_training(index: faiss.Index) -> None:
    """The factory turns on polysemous training for "...PQ" indexes: it only reorders the PQ centroids
    so that Hamming distances between codes can pre-filter (`polysemous_ht`), which ragloop never uses,
    and costs ~1 s per sub-quantizer (a minute for PQ48). Search results are the same without it."""
    try:
        inner = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        inner = faiss.downcast_index(index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def is_fast_scan(index: faiss.Index) -> bool:
    """Whether the codes are 4-bit fast-scan ("...PQ64x4fs"), under any OPQ / pre-transform."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return "FastScan" in type(inner).__name__


def set_search_params(index: faiss.Index, params: dict) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        with contextlib.suppress(RuntimeError):  # the parameter does not apply to this index type
            space.set_index_parameter(index, name, value)


def enable_reconstruct(index: faiss.Index) -> None:
    """IVF indexes can only return stored vectors (RAG recomputes q·d from them) with a direct map."""
    if is_fast_scan(index):
        return  # no reconstruct for these (see FaissBackend.vectors): no direct map either
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index: reconstruct works as is
    if index.is_trained:
        ivf.make_direct_map()
