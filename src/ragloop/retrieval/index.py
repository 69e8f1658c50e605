"""A retrieval index on disk: FAISS vectors + SQLite passage store + BM25 + a manifest.

    >>> index = Index.build(passages, BiEncoder.from_pretrained(), "runs/idx", factory="HNSW32")
    >>> index = Index.load("runs/idx")             # verifies the manifest and checksums
    >>> Retriever(index).retrieve(["who won?"], k=5)  # searching goes through the Retriever

The vectors live in a backend (backend.py: FAISS today); this module owns the folder around it.

Layout of the folder:
    manifest.json     encoders (name, dim, pooling, normalisation, a probe vector), FAISS factory,
                      passage count, sha256 of every file, ragloop version
    index.faiss       inner-product FAISS index; FAISS row i is passage row i in the store
    passages.sqlite   passage id, doc id, title, text
    bm25/             bm25s sparse index over "title text"

Sharded building, for a corpus too big for one process, is in shards.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragloop._version import __version__
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import (
    atomic_dir,
    atomic_write_json,
    checksum_files,
    only_replace,
    read_manifest_json,
    verify_files,
)
from ragloop.retrieval.backend import DEFAULT_SEARCH_PARAMS, FaissBackend
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.store import PassageStore

if TYPE_CHECKING:  # encoders import torch: loaded only where a model is used, so BM25 search stays light
    from ragloop.retrieval.encoders import BiEncoder, Encoder

log = logging.getLogger(__name__)

MANIFEST, STORE_FILE, BM25_DIR = "manifest.json", "passages.sqlite", "bm25"
FORMAT = "ragloop-index"
FORMAT_VERSION = 1
PROBE_COSINE = 0.999
_GENERATIONS = itertools.count(1)  # process-unique stamps: what a retrieval cache keys an index's contents by


def passage_inputs(passages: list[Passage]) -> tuple[list[str], list[str]]:
    return [p.title for p in passages], [p.text for p in passages]


def bm25_text(p: Passage) -> str:
    return f"{p.title} {p.text}" if p.title else p.text


class Index:
    """A loaded index folder. Build with `Index.build`, open with `Index.load`."""

    def __init__(self, path: Path, backend: FaissBackend, store: PassageStore, manifest: dict,
                 bm25: BM25Index | None) -> None:
        self.path = path
        self.backend = backend
        self.store = store
        self.manifest = manifest
        self.bm25 = bm25
        # A retrieval cache (cache.py) keys results by `generation`: a new one for every loaded object and
        # every in-memory change (`add` reloads, `reencode` bumps it), so a changed index never serves stale
        # hits. `changed_in_memory`: the vectors no longer match the folder's checksums (on-disk caches skip).
        self.generation = next(_GENERATIONS)
        self.changed_in_memory = False

    def __len__(self) -> int:
        return len(self.backend)

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def factory(self) -> str:
        return self.manifest["index"]["factory"]

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
            raise RagloopError("cannot build an index from an empty corpus")
        check_batch_size(batch_size)
        out_dir = Path(out_dir)
        if out_dir.exists():
            check_replaceable(out_dir)  # fail before the encoding work, not after
        params = with_default_search_params(search_params)
        FaissBackend.create(factory, encoder.passage.dim, params)  # a bad factory string fails before the encoding
        titles, texts = passage_inputs(passages)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        return cls.from_vectors(passages, vectors, factory, encoder_entry(encoder), out_dir, params, with_bm25, extra)

    @classmethod
    def from_vectors(cls, passages: list[Passage], vectors: np.ndarray, factory: str, encoder: dict,
                     out_dir: Path, params: dict, with_bm25: bool, extra: dict | None) -> Index:
        """Index `vectors` (row i is passages[i]) in a new backend and write the folder atomically.
        `encoder` is the manifest's encoder entry (`encoder_entry`)."""
        backend = FaissBackend.create(factory, vectors.shape[1], params).fill(vectors)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragloop_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": encoder,
            "index": {"factory": factory, "metric": "inner_product", "dim": backend.dim, "search_params": params},
            "passages": len(passages),
            "bm25": {"language": "english"} if with_bm25 else None,
            **(extra or {}),
        }
        with atomic_dir(out_dir, may_replace=check_replaceable) as tmp:
            _write(tmp, backend, passages, manifest, first_row=0, with_bm25=with_bm25, store_from=None)
        log.info("index: %d passages -> %s (%s)", len(passages), out_dir, factory)
        return cls.load(out_dir)

    def add(self, passages: list[Passage], encoder: BiEncoder | None = None, batch_size: int = 64,
            progress: bool | None = None) -> int:
        """Add new passages (ids already present are skipped); the folder is rewritten atomically.
        Returns the number added. Without `encoder`, the manifest's encoders (quantized if the build
        was); a given one must match the build's precision."""
        check_batch_size(batch_size)
        built = self.manifest["encoder"]["passage"].get("quantize")
        if encoder is None:  # the recorded encoders, quantized as the build was
            encoder = self.load_encoder()
            if built:
                encoder.passage.quantize("int8")
        self.check_passage_encoder(encoder.passage)
        if encoder.passage.quantization != built:
            raise RagloopError(f"{self.path}: its vectors were encoded {_precision(built)}; adding passages "
                              f"encoded {_precision(encoder.passage.quantization)} would mix the two: "
                              "add with the same --quantize as the build")
        known = self.store.existing_ids([p.id for p in passages])
        new = [p for p in passages if p.id not in known]
        if not new:
            return 0
        titles, texts = passage_inputs(new)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        backend = self.backend.clone()
        backend.add(vectors)
        manifest = dict(self.manifest, passages=len(self) + len(new))
        with atomic_dir(self.path, may_replace=check_replaceable) as tmp:
            _write(tmp, backend, new, manifest, first_row=len(self), with_bm25=self.bm25 is not None,
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
            settings = manifest["index"]
            backend = FaissBackend.load(path / FaissBackend.FILE, settings["factory"], settings.get("search_params"))
        except (KeyError, TypeError, AttributeError) as e:  # valid JSON, but not the structure ragloop writes
            raise RagloopError(f"{path / MANIFEST}: corrupt ({type(e).__name__}: {str(e)[:120]})") from None
        store = PassageStore(path / STORE_FILE)
        try:  # the store's connection is closed on every way out but success
            bm25 = BM25Index.load(path / BM25_DIR, manifest["bm25"]["language"]) if manifest.get("bm25") else None
            if len(backend) != manifest["passages"] or len(store) != manifest["passages"]:
                raise RagloopError(
                    f"{path}: manifest says {manifest['passages']} passages, FAISS has {len(backend)}, "
                    f"store has {len(store)}"
                )
            return cls(path, backend, store, manifest, bm25)
        except (KeyError, TypeError, AttributeError) as e:  # valid JSON, but not the structure ragloop writes
            store.close()
            raise RagloopError(f"{path / MANIFEST}: corrupt ({type(e).__name__}: {str(e)[:120]})") from None
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the passage store's database connection. `with Index.load(path) as index:` does it too."""
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load_encoder(self) -> BiEncoder:
        """The encoders that built this index, by the names recorded in the manifest."""
        from ragloop.retrieval.encoders import BiEncoder

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
            raise RagloopError(
                f"{self.path}: index was built with {side} encoder {built['name']!r} (dim {self.dim}); "
                f"{encoder.spec.name!r} has dim {encoder.dim}"
            )
        probe = np.asarray(built["probe"], dtype=np.float32)
        mine = encoder.probe()
        cos = float(mine @ probe / max(np.linalg.norm(mine) * np.linalg.norm(probe), 1e-12))
        if cos >= PROBE_COSINE:
            return
        if encoder.spec.name != built["name"] or not allow_finetuned:
            raise RagloopError(
                f"{self.path}: index was built with {side} encoder {built['name']!r}, but the {side} "
                f"encoder given is {encoder.spec.name!r} with other weights; query with the same encoder "
                "or rebuild the index"
            )

    # -- vectors ----------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k), from the vector backend; rows are -1 past the end of a small
        index. Questions go through `Retriever.retrieve`; this is its dense stage."""
        return self.backend.search(vectors, k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored passage vectors (exact for Flat/HNSW, PQ-decoded approximations for IVF-PQ)."""
        return self.backend.vectors(rows)

    def reencode(self, encoder: Encoder, batch_size: int = 64, progress: bool | None = None) -> None:
        """Re-encode every stored passage with `encoder` (a trained passage encoder of the same dim) into a
        fresh backend of the same type, in memory: the folder on disk is unchanged until it is saved again
        (`RAG.save_pretrained` writes it). The same code as a build: `FaissBackend.fill`."""
        if encoder.dim != self.dim:
            raise RagloopError(f"{self.path}: passage encoder has dim {encoder.dim}, the index {self.dim}")
        titles, texts = passage_inputs(list(self.store))
        vectors = encoder.encode(titles, texts, batch_size=batch_size, progress=progress, desc="re-indexing passages")
        self.backend = FaissBackend.create(self.factory, self.dim, self.backend.search_params).fill(vectors)
        self.generation, self.changed_in_memory = next(_GENERATIONS), True


def _precision(quantize: str | None) -> str:
    return f"quantized ({quantize})" if quantize else "in full precision"


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise RagloopError(f"--batch-size must be at least 1 (got {batch_size})")


def with_default_search_params(given: dict | None) -> dict:
    return {**DEFAULT_SEARCH_PARAMS, **(given or {})}


def encoder_entry(encoder: BiEncoder) -> dict:
    """The manifest's record of the encoders: spec and a probe vector that fingerprints the weights
    (of the float32 weights, for a quantized encoder). A passage encoder that encoded the vectors
    quantized is recorded as such ("quantize": "int8"); the question side is whatever queries it."""
    entry = {
        side: {**enc.spec.to_dict(), "probe": [round(float(x), 6) for x in enc.probe()]}
        for side, enc in (("passage", encoder.passage), ("question", encoder.question))
    }
    if encoder.passage.quantization is not None:
        entry["passage"]["quantize"] = encoder.passage.quantization
    return entry


def _write(folder: Path, backend: FaissBackend, passages: list[Passage], manifest: dict, first_row: int,
           with_bm25: bool, store_from: Path | None) -> None:
    if store_from is not None:
        shutil.copyfile(store_from, folder / STORE_FILE)
    with PassageStore(folder / STORE_FILE, readonly=False) as store:
        store.add(passages, first_row)
        if with_bm25:
            BM25Index.build([bm25_text(p) for p in store]).save(folder / BM25_DIR)
    backend.save(folder / FaissBackend.FILE)
    manifest["files"] = checksum_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    atomic_write_json(folder / MANIFEST, manifest)


def read_manifest(path: Path) -> dict:
    return read_manifest_json(path, MANIFEST, FORMAT, FORMAT_VERSION, "ragloop index",
                              "; build one with `ragloop index`")


check_replaceable = only_replace(MANIFEST, "ragloop index")  # an earlier index or an empty folder
