"""A retrieval index on disk: FAISS vectors + SQLite passage store + BM25 + a manifest.

    >>> index = Index.build(passages, BiEncoder.from_pretrained(), "runs/idx", factory="HNSW32")
    >>> index = Index.load("runs/idx")             # verifies the manifest and (fast) checksums
    >>> Index.load("runs/idx", verify="full")      # the sha256 of every file
    >>> Retriever(index).retrieve(["who won?"], k=5)  # searching goes through the Retriever

A compressed index that keeps its recall: the exact vectors stay on disk (memory-mapped) and re-rank
the FAISS candidates, so RAM holds only the codes:

    >>> Index.build(passages, encoder, "runs/idx", factory="OPQ64,IVF1024,PQ64x4fs", refine="disk",
    ...             refine_factor=8)

Builds stream: `passages` may be any iterable (a generator over a million passages); they are encoded
`chunk_size` at a time, each chunk's vectors appended to vectors.npy and its passages to the SQLite store,
then FAISS is trained on `train_size` vectors spread evenly over the file (all of them in a smaller
corpus) and filled chunk by chunk from the file. Peak
RAM is one chunk plus the FAISS index (plus the training sample, and BM25, which bm25s builds in memory
from all texts: skip it with `with_bm25=False` for the largest corpora).

The vectors live in a backend (backend.py: FAISS today); this module owns the folder around it.

Layout of the folder:
    manifest.json     encoders (name, dim, pooling, normalisation, a probe vector), FAISS factory, refine
                      stage, passage count, size and sha256 of every file (+ a sampled digest of files
                      over 64 MiB, for the fast check on load), ragloop version
    index.faiss       inner-product FAISS index; FAISS row i is passage row i in the store
    vectors.npy       only with refine "disk": the exact vectors, row i = FAISS row i (float32 or float16)
    passages.sqlite   passage id, doc id, title, text
    bm25/             bm25s sparse index over "title text"

Sharded building, for a corpus too big for one process, is in shards.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ragloop._version import __version__
from ragloop.config import INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import checksum_files, only_replace, read_manifest_json, verify_files
from ragloop.retrieval.backend import DEFAULT_SEARCH_PARAMS, FaissBackend
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.store import PassageStore
from ragloop.retrieval.vecfile import NpyAppender, open_vectors, read_blocks, sample_rows

if TYPE_CHECKING:  # encoders import torch: loaded only where a model is used, so BM25 search stays light
    from ragloop.retrieval.encoders import BiEncoder, Encoder

log = logging.getLogger(__name__)

MANIFEST, STORE_FILE, BM25_DIR, VECTORS_FILE = "manifest.json", "passages.sqlite", "bm25", "vectors.npy"
CHUNK_SIZE, REFINE_FACTOR = INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR
TRAIN_SIZE = 100_000  # vectors (spread evenly over the corpus) that train IVF centroids / PQ codebooks / OPQ
REFINE_KINDS, REFINE_DTYPES = ("disk",), ("float32", "float16")
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

    @property
    def refine(self) -> dict | None:
        """The refine stage ({"kind": "disk", "factor", "dtype"}) or None."""
        return self.manifest["index"].get("refine")

    def build_options(self) -> dict:
        """The `Index.build` options that rebuild this index the same way (type, search and refine)."""
        refine = self.refine or {}
        return {"factory": self.factory, "search_params": self.manifest["index"].get("search_params"),
                "with_bm25": self.bm25 is not None, "refine": refine.get("kind"),
                "refine_factor": refine.get("factor", REFINE_FACTOR), "refine_dtype": refine.get("dtype", "float32")}

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        passages: Iterable[Passage],
        encoder: BiEncoder,
        out_dir: str | Path,
        factory: str = "Flat",
        batch_size: int = 64,
        search_params: dict | None = None,
        with_bm25: bool = True,
        progress: bool | None = None,
        extra: dict | None = None,
        refine: str | None = None,
        refine_factor: int = REFINE_FACTOR,
        refine_dtype: str = "float32",
        chunk_size: int = CHUNK_SIZE,
        train_size: int = TRAIN_SIZE,
    ) -> Index:
        """Encode, index and save to `out_dir` atomically (written under a temporary name, then renamed),
        streaming: `passages` (a list or any iterable) are encoded `chunk_size` at a time. `refine="disk"`
        keeps the exact vectors in the folder (vectors.npy, `refine_dtype`) to re-rank FAISS's top
        k * `refine_factor`."""
        if isinstance(passages, list) and not passages:
            raise RagloopError("cannot build an index from an empty corpus")
        check_batch_size(batch_size)
        check_chunk_size(chunk_size, train_size)
        out_dir = Path(out_dir)
        if out_dir.exists():
            check_replaceable(out_dir)  # fail before the encoding work, not after
        params = with_default_search_params(search_params)
        settings = refine_settings(refine, refine_factor, refine_dtype)
        FaissBackend.create(factory, encoder.passage.dim, params)  # a bad factory string fails before the encoding
        total = len(passages) if hasattr(passages, "__len__") else None

        def encoded() -> Iterator[tuple[list[Passage], np.ndarray]]:
            disable = None if progress is None else not progress  # None: a bar only on a TTY
            with tqdm(total=total, desc="encoding passages", unit="passage", disable=disable) as bar:
                for chunk in _chunks(passages, chunk_size):
                    titles, texts = passage_inputs(chunk)
                    yield chunk, encoder.encode_passages(titles, texts, batch_size=batch_size, progress=False)
                    bar.update(len(chunk))

        return cls._build(encoded(), encoder.passage.dim, factory, encoder_entry(encoder), out_dir, params,
                          with_bm25, extra, settings, train_size)

    @classmethod
    def from_vectors(cls, passages: list[Passage], vectors: np.ndarray, factory: str, encoder: dict,
                     out_dir: Path, params: dict, with_bm25: bool, extra: dict | None,
                     refine: dict | None = None, chunk_size: int = CHUNK_SIZE,
                     train_size: int = TRAIN_SIZE) -> Index:
        """Index `vectors` (row i is passages[i]) in a new backend and write the folder atomically, the
        way `build` does. `encoder` is the manifest's encoder entry (`encoder_entry`); `refine` the
        manifest's refine entry (`refine_settings`) or None."""
        if len(passages) != len(vectors):
            raise RagloopError(f"{out_dir}: {len(passages)} passages but {len(vectors)} vectors")
        check_chunk_size(chunk_size, train_size)
        chunks = ((passages[i : i + chunk_size], vectors[i : i + chunk_size])
                  for i in range(0, len(passages), chunk_size))
        return cls._build(chunks, vectors.shape[1], factory, encoder, out_dir, params, with_bm25, extra, refine,
                          train_size)

    @classmethod
    def _build(cls, chunks: Iterable[tuple[list[Passage], np.ndarray]], dim: int, factory: str, encoder: dict,
               out_dir: Path, params: dict, with_bm25: bool, extra: dict | None, refine: dict | None,
               train_size: int) -> Index:
        """Every build: passages and vectors to disk chunk by chunk, then FAISS trained on `train_size`
        vectors spread over the file and filled from it, then BM25, checksums and the manifest."""
        with atomic_dir(out_dir, may_replace=check_replaceable) as tmp:
            dtype = refine["dtype"] if refine else "float32"
            rows = _write_chunks(tmp, chunks, dim, dtype, first_row=0)
            if not rows:
                raise RagloopError("cannot build an index from an empty corpus")
            # plain reads, not a memory map: pages already added do not stay in the resident set
            no_direct_map = np.empty((0, dim), np.float32) if refine else None  # refine reads vectors.npy instead
            backend = FaissBackend.create(factory, dim, params, exact=no_direct_map)
            if not backend.index.is_trained:  # Flat / HNSW need no sample
                backend.train(sample_rows(tmp / VECTORS_FILE, train_size))
            for block in read_blocks(tmp / VECTORS_FILE, CHUNK_SIZE):
                backend.add(block)
            if not refine:
                (tmp / VECTORS_FILE).unlink()
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "ragloop_version": __version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "encoder": encoder,
                "index": {"factory": factory, "metric": "inner_product", "dim": dim, "search_params": params,
                          "refine": refine},
                "passages": rows,
                "bm25": {"language": "english"} if with_bm25 else None,
                **(extra or {}),
            }
            _finish(tmp, backend, manifest, with_bm25)
        log.info("index: %d passages -> %s (%s%s)", rows, out_dir, factory,
                 f", refine {refine['kind']} x{refine['factor']}" if refine else "")
        return cls.load(out_dir, verify="size")  # just written and checksummed

    def add(self, passages: list[Passage], encoder: BiEncoder | None = None, batch_size: int = 64,
            progress: bool | None = None) -> int:
        """Add new passages (ids already present are skipped); the folder is rewritten atomically.
        Returns the number added. Without `encoder`, the manifest's encoders (quantized if the build
        was); a given one must match the build's precision."""
        check_batch_size(batch_size)
        if self.changed_in_memory and self.refine:
            raise RagloopError(f"{self.path}: its vectors were re-encoded in memory (reencode) but its vectors.npy on "
                              "disk holds the old ones; adding now would mix the two: load the folder again first")
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
        refine = self.refine
        with atomic_dir(self.path, may_replace=check_replaceable) as tmp:
            shutil.copyfile(self.store.path, tmp / STORE_FILE)
            if refine:  # the exact vectors grow with the index: the old rows, then the new ones
                shutil.copyfile(self.path / VECTORS_FILE, tmp / VECTORS_FILE)
            _write_chunks(tmp, [(new, vectors)], self.dim, refine["dtype"] if refine else None, first_row=len(self))
            _finish(tmp, backend, manifest, with_bm25=self.bm25 is not None)
        self.store.close()
        fresh = Index.load(self.path, verify="size")
        self.__dict__.update(fresh.__dict__)
        return len(new)

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, verify: bool | str = "fast") -> Index:
        """Open an index folder, checking its files against the manifest. `verify`: "fast" (the default:
        every file's size, the sha256 of files up to 64 MiB and a sampled digest of larger ones, so a
        million-passage index opens in about a second), "full" or True (the sha256 of every file),
        "size" or False (sizes only). Truncated, missing or swapped files are a RagloopError naming them."""
        path = Path(path)
        manifest = read_manifest(path)
        verify_files(path, manifest.get("files", {}), MANIFEST, checksums=verify)
        try:
            settings = manifest["index"]
            refine = settings.get("refine")
            exact = open_vectors(path / VECTORS_FILE, manifest["passages"], settings["dim"]) if refine else None
            backend = FaissBackend.load(path / FaissBackend.FILE, settings["factory"], settings.get("search_params"),
                                        exact=exact, refine_factor=refine["factor"] if refine else 1)
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
        """Stored passage vectors (exact for Flat/HNSW and with refine "disk", PQ-decoded approximations
        for compressed indexes without)."""
        return self.backend.vectors(rows)

    def reencode(self, encoder: Encoder, batch_size: int = 64, progress: bool | None = None) -> None:
        """Re-encode every stored passage with `encoder` (a trained passage encoder of the same dim) into a
        fresh backend of the same type, in memory: the folder on disk is unchanged until it is saved again
        (`RAG.save_pretrained` writes it). The same code as a build: `FaissBackend.fill`."""
        if encoder.dim != self.dim:
            raise RagloopError(f"{self.path}: passage encoder has dim {encoder.dim}, the index {self.dim}")
        titles, texts = passage_inputs(list(self.store))
        vectors = encoder.encode(titles, texts, batch_size=batch_size, progress=progress, desc="re-indexing passages")
        refine = self.refine  # the new exact vectors stay in RAM until the folder is written again
        self.backend = FaissBackend.create(self.factory, self.dim, self.backend.search_params,
                                           exact=vectors if refine else None,
                                           refine_factor=refine["factor"] if refine else 1).fill(vectors)
        self.generation, self.changed_in_memory = next(_GENERATIONS), True


def _precision(quantize: str | None) -> str:
    return f"quantized ({quantize})" if quantize else "in full precision"


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise RagloopError(f"--batch-size must be at least 1 (got {batch_size})")


def check_chunk_size(chunk_size: int, train_size: int) -> None:
    if chunk_size < 1:
        raise RagloopError(f"--chunk-size must be at least 1 (got {chunk_size})")
    if train_size < 1:
        raise RagloopError(f"train_size must be at least 1 (got {train_size})")


def refine_settings(kind: str | None, factor: int = REFINE_FACTOR, dtype: str = "float32") -> dict | None:
    """The manifest's refine entry for `--refine KIND --refine-factor F --refine-dtype D`, checked."""
    if kind in (None, "none"):
        return None
    if kind not in REFINE_KINDS:
        raise RagloopError(f"--refine must be one of none, {', '.join(REFINE_KINDS)} (got {kind!r})")
    if not isinstance(factor, int) or factor < 1:
        raise RagloopError(f"--refine-factor must be a whole number of at least 1 (got {factor!r})")
    if dtype not in REFINE_DTYPES:
        raise RagloopError(f"--refine-dtype must be one of {', '.join(REFINE_DTYPES)} (got {dtype!r})")
    return {"kind": kind, "factor": factor, "dtype": dtype, "file": VECTORS_FILE}


def _chunks(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


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


def _write_chunks(folder: Path, chunks: Iterable[tuple[list[Passage], np.ndarray]], dim: int, dtype: str | None,
                  first_row: int) -> int:
    """Append each chunk's passages to folder/passages.sqlite (rows from `first_row`) and, unless `dtype`
    is None, its vectors to folder/vectors.npy (a new file when first_row is 0, else the copied one).
    Returns the number of passages written."""
    store = PassageStore(folder / STORE_FILE, readonly=False)
    out = None
    try:
        if dtype is not None:
            out = NpyAppender(folder / VECTORS_FILE, dim, dtype) if first_row == 0 else \
                NpyAppender.extend(folder / VECTORS_FILE)
        written = 0
        for passages, vectors in chunks:
            if len(passages) != len(vectors):
                raise RagloopError(f"{folder}: {len(passages)} passages but {len(vectors)} vectors in a chunk")
            store.add(passages, first_row + written)
            if out is not None:
                out.append(vectors)
            written += len(passages)
        return written
    finally:
        store.close()
        if out is not None:
            out.close()


def _finish(folder: Path, backend: FaissBackend, manifest: dict, with_bm25: bool) -> None:
    """BM25 over the stored passages (bm25s holds every text's tokens in RAM: O(N)), the FAISS file,
    checksums and the manifest."""
    if with_bm25:
        with PassageStore(folder / STORE_FILE) as store:
            BM25Index.build([bm25_text(p) for p in store]).save(folder / BM25_DIR)
    backend.save(folder / FaissBackend.FILE)
    manifest["files"] = checksum_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    atomic_write_json(folder / MANIFEST, manifest)


def read_manifest(path: Path) -> dict:
    return read_manifest_json(path, MANIFEST, FORMAT, FORMAT_VERSION, "ragloop index",
                              "; build one with `ragloop index`")


check_replaceable = only_replace(MANIFEST, "ragloop index")  # an earlier index or an empty folder
