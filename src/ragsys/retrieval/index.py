"""A retrieval index on disk: FAISS vectors + SQLite passage store + BM25 + a manifest.

    >>> index = Index.build(passages, BiEncoder.from_pretrained(), "runs/idx", factory="HNSW32")
    >>> index = Index.load("runs/idx")             # verifies the manifest and checksums
    >>> scores, rows = index.search(vectors, k=5)
    >>> index.store.get_rows(rows[0])

Layout of the folder:
    manifest.json     encoders (name, dim, pooling, normalisation, a probe vector), FAISS factory,
                      passage count, sha256 of every file, ragsys version
    index.faiss       inner-product FAISS index; FAISS row i is passage row i in the store
    passages.sqlite   passage id, doc id, title, text
    bm25/             bm25s sparse index over "title text"
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from pathlib import Path

import faiss
import numpy as np

from ragsys import __version__
from ragsys.data.corpus import Passage
from ragsys.errors import RagsysError
from ragsys.io import (
    atomic_dir,
    atomic_write_json,
    checksum_files,
    only_replace,
    read_manifest_json,
    verify_files,
)
from ragsys.retrieval.bm25 import BM25Index
from ragsys.retrieval.encoders import BiEncoder, Encoder
from ragsys.retrieval.store import PassageStore

log = logging.getLogger(__name__)

MANIFEST, FAISS_FILE, STORE_FILE, BM25_DIR = "manifest.json", "index.faiss", "passages.sqlite", "bm25"
FORMAT = "ragsys-index"
FORMAT_VERSION = 1
PROBE_COSINE = 0.999


def passage_inputs(passages: list[Passage]) -> tuple[list[str], list[str]]:
    return [p.title for p in passages], [p.text for p in passages]


def bm25_text(p: Passage) -> str:
    return f"{p.title} {p.text}" if p.title else p.text


def _make_faiss(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise RagsysError(f"FAISS index type {factory!r} is not valid ({msg[:120]})") from None


def _train(index: faiss.Index, factory: str, vectors: np.ndarray) -> None:
    """Train IVF centroids / PQ codebooks; too few passages for them is the user's error, said plainly."""
    if index.is_trained:
        return
    need = 1
    if m := re.search(r"IVF(\d+)", factory):
        need = max(need, int(m.group(1)))
    if m := re.search(r"PQ\d+(?:x(\d+))?", factory):
        need = max(need, 2 ** int(m.group(1) or 8))
    if len(vectors) < need:
        raise RagsysError(
            f"FAISS index type {factory!r} needs at least {need} passages to train, got {len(vectors)}; "
            "use fewer IVF lists / PQ bits, or 'Flat' / 'HNSW32' for a small corpus"
        )
    log.info("training FAISS %s on %d vectors", factory, len(vectors))
    try:
        index.train(vectors)
    except RuntimeError as e:
        raise RagsysError(f"FAISS could not train {factory!r}: {str(e).strip().splitlines()[-1][:200]}") from None


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
    ivf.make_direct_map()


class Index:
    """A loaded index folder. Build with `Index.build`, open with `Index.load`."""

    def __init__(self, path: Path, faiss_index: faiss.Index, store: PassageStore, manifest: dict,
                 bm25: BM25Index | None) -> None:
        self.path = path
        self.faiss = faiss_index
        self.store = store
        self.manifest = manifest
        self.bm25 = bm25
        set_search_params(self.faiss, manifest["index"].get("search_params", {}))
        enable_reconstruct(self.faiss)

    def __len__(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        passages: list[Passage],
        encoder: BiEncoder,
        out_dir: str | Path,
        factory: str = "Flat",
        batch_size: int = 64,
        search_params: dict | None = None,
        with_bm25: bool = True,
        progress: bool | None = None,
        extra: dict | None = None,
    ) -> Index:
        """Encode, index and save to `out_dir` atomically (written under a temporary name, then renamed)."""
        if not passages:
            raise RagsysError("cannot build an index from an empty corpus")
        out_dir = Path(out_dir)
        if out_dir.exists():
            _check_replaceable(out_dir)  # fail before the encoding work, not after
        index = _make_faiss(factory, encoder.passage.dim)
        titles, texts = passage_inputs(passages)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        _train(index, factory, vectors)
        index.add(vectors)
        params = {"efSearch": 128, "nprobe": 16}
        params.update(search_params or {})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragsys_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": _encoder_entry(encoder),
            "index": {"factory": factory, "metric": "inner_product", "dim": encoder.passage.dim,
                      "search_params": params},
            "passages": len(passages),
            "bm25": {"language": "english"} if with_bm25 else None,
            **(extra or {}),
        }
        with atomic_dir(out_dir, may_replace=_check_replaceable) as tmp:
            _write(tmp, index, passages, manifest, first_row=0, with_bm25=with_bm25, store_from=None)
        log.info("index: %d passages -> %s (%s)", len(passages), out_dir, factory)
        return cls.load(out_dir)

    def add(self, passages: list[Passage], encoder: BiEncoder | None = None, batch_size: int = 64,
            progress: bool | None = None) -> int:
        """Add new passages (ids already present are skipped); the folder is rewritten atomically.
        Returns the number added."""
        encoder = encoder or self.load_encoder()
        self.check_passage_encoder(encoder.passage)
        known = self.store.existing_ids([p.id for p in passages])
        new = [p for p in passages if p.id not in known]
        if not new:
            return 0
        titles, texts = passage_inputs(new)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        index = faiss.clone_index(self.faiss)
        index.add(vectors)
        manifest = dict(self.manifest, passages=len(self) + len(new))
        with atomic_dir(self.path, may_replace=_check_replaceable) as tmp:
            _write(tmp, index, new, manifest, first_row=len(self), with_bm25=self.bm25 is not None,
                   store_from=self.store.path)
        self.store.close()
        fresh = Index.load(self.path)
        self.__dict__.update(fresh.__dict__)
        return len(new)

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Index:
        """Open an index folder; with `verify`, every file's sha256 is checked against the manifest."""
        path = Path(path)
        manifest = read_manifest(path)
        verify_files(path, manifest.get("files", {}), MANIFEST, checksums=verify)
        try:
            index = faiss.read_index(str(path / FAISS_FILE))
        except RuntimeError:
            raise RagsysError(f"{path / FAISS_FILE}: not a readable FAISS index") from None
        store = PassageStore(path / STORE_FILE)
        bm25 = BM25Index.load(path / BM25_DIR, manifest["bm25"]["language"]) if manifest.get("bm25") else None
        if index.ntotal != manifest["passages"] or len(store) != manifest["passages"]:
            raise RagsysError(
                f"{path}: manifest says {manifest['passages']} passages, FAISS has {index.ntotal}, "
                f"store has {len(store)}"
            )
        return cls(path, index, store, manifest, bm25)

    def load_encoder(self) -> BiEncoder:
        """The encoders that built this index, by the names recorded in the manifest."""
        entry = self.manifest["encoder"]
        return BiEncoder.from_pretrained(entry["passage"]["name"], entry["question"]["name"])

    # -- checks -----------------------------------------------------------------------------

    def check_passage_encoder(self, encoder: Encoder) -> None:
        self._check(encoder, "passage")

    def check_question_encoder(self, encoder: Encoder, allow_finetuned: bool = False) -> None:
        self._check(encoder, "question", allow_finetuned)

    def _check(self, encoder: Encoder, side: str, allow_finetuned: bool = False) -> None:
        built = self.manifest["encoder"][side]
        if encoder.dim != self.dim:
            raise RagsysError(
                f"{self.path}: index was built with {side} encoder {built['name']!r} (dim {self.dim}); "
                f"{encoder.spec.name!r} has dim {encoder.dim}"
            )
        probe = np.asarray(built["probe"], dtype=np.float32)
        mine = encoder.probe()
        cos = float(mine @ probe / max(np.linalg.norm(mine) * np.linalg.norm(probe), 1e-12))
        if cos >= PROBE_COSINE:
            return
        if encoder.spec.name != built["name"] or not allow_finetuned:
            raise RagsysError(
                f"{self.path}: index was built with {side} encoder {built['name']!r}, but the {side} "
                f"encoder given is {encoder.spec.name!r} with other weights; query with the same encoder "
                "or rebuild the index"
            )

    # -- search -----------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k); rows are -1 past the end of a small index."""
        return self.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored passage vectors (exact for Flat/HNSW, PQ-decoded approximations for IVF-PQ)."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = self.faiss.reconstruct_batch(np.maximum(flat, 0))
        return out.reshape(*np.shape(rows), self.dim)


def _encoder_entry(encoder: BiEncoder) -> dict:
    return {
        side: {**enc.spec.to_dict(), "probe": [round(float(x), 6) for x in enc.probe()]}
        for side, enc in (("passage", encoder.passage), ("question", encoder.question))
    }


def _write(folder: Path, index: faiss.Index, passages: list[Passage], manifest: dict, first_row: int,
           with_bm25: bool, store_from: Path | None) -> None:
    if store_from is not None:
        import shutil

        shutil.copyfile(store_from, folder / STORE_FILE)
    store = PassageStore(folder / STORE_FILE, readonly=False)
    store.add(passages, first_row)
    if with_bm25:
        BM25Index.build([bm25_text(p) for p in store]).save(folder / BM25_DIR)
    store.close()
    faiss.write_index(index, str(folder / FAISS_FILE))
    manifest["files"] = checksum_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    atomic_write_json(folder / MANIFEST, manifest)


def read_manifest(path: Path) -> dict:
    return read_manifest_json(path, MANIFEST, FORMAT, FORMAT_VERSION, "ragsys index",
                              "; build one with `ragsys index`")


_check_replaceable = only_replace(MANIFEST, "ragsys index")  # an earlier index or an empty folder
