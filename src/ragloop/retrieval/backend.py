"""The vector side of an index folder: FAISS today, one class per backend.

An `Index` (index.py) owns the folder, the manifest, the passage store and BM25; it talks to its
vectors only through this interface, so another vector library is one more class like `FaissBackend`:

    >>> backend = FaissBackend.create("HNSW32", dim=384, search_params={"efSearch": 128})
    >>> backend.fill(vectors)                  # trains (IVF/PQ) if needed, then adds; row i is vectors[i]
    >>> scores, rows = backend.search(queries, k=5)   # rows are -1 past the end of a small index
    >>> backend.vectors(rows)                  # stored vectors (PQ-decoded for compressed indexes)
    >>> backend.save(folder / FaissBackend.FILE); FaissBackend.load(folder / FaissBackend.FILE, "HNSW32", {})

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

DEFAULT_SEARCH_PARAMS = {"efSearch": 128, "nprobe": 16}


class FaissBackend:
    """A FAISS index (any factory string, inner product) behind search / add / vectors / train."""

    FILE = "index.faiss"

    def __init__(self, index: faiss.Index, factory: str, search_params: dict | None = None) -> None:
        self.index = index
        self.factory = factory
        self.search_params = dict(search_params or {})
        set_search_params(index, self.search_params)
        enable_reconstruct(index)

    @classmethod
    def create(cls, factory: str, dim: int, search_params: dict | None = None) -> FaissBackend:
        """An empty index; a factory string FAISS does not know is the user's error, said plainly."""
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
            raise RagloopError(f"FAISS index type {factory!r} is not valid ({msg[:120]})") from None
        return cls(index, factory, search_params)

    @classmethod
    def load(cls, file: Path, factory: str, search_params: dict | None = None) -> FaissBackend:
        try:
            index = faiss.read_index(str(file))
        except RuntimeError:
            raise RagloopError(f"{file}: not a readable FAISS index") from None
        return cls(index, factory, search_params)

    def save(self, file: Path) -> None:
        faiss.write_index(self.index, str(file))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def clone(self) -> FaissBackend:
        return FaissBackend(faiss.clone_index(self.index), self.factory, self.search_params)

    def train(self, vectors: np.ndarray) -> None:
        """Train IVF centroids / PQ codebooks; too few passages for them is the user's error, said plainly."""
        if self.index.is_trained:
            return
        need = 1
        if m := re.search(r"IVF(\d+)", self.factory):
            need = max(need, int(m.group(1)))
        if m := re.search(r"PQ\d+(?:x(\d+))?", self.factory):
            need = max(need, 2 ** int(m.group(1) or 8))
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
        enable_reconstruct(self.index)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def fill(self, vectors: np.ndarray) -> FaissBackend:
        """Train if the index type needs it, then add: what every build of an index does."""
        self.train(vectors)
        self.add(vectors)
        return self

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k); rows are -1 past the end of a small index."""
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors (exact for Flat/HNSW, PQ-decoded approximations for IVF-PQ); row -1 gives row 0's."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = self.index.reconstruct_batch(np.maximum(flat, 0))
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


def set_search_params(index: faiss.Index, params: dict) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        with contextlib.suppress(RuntimeError):  # the parameter does not apply to this index type
            space.set_index_parameter(index, name, value)


def enable_reconstruct(index: faiss.Index) -> None:
    """IVF indexes can only return stored vectors (RAG recomputes q·d from them) with a direct map."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index: reconstruct works as is
    if index.is_trained:
        ivf.make_direct_map()
