"""A retrieval index on disk: FAISS vectors + SQLite passage store + BM25 + a manifest.

    >>> index = Index.build(passages, BiEncoder.from_pretrained(), "runs/idx", factory="HNSW32")
    >>> index = Index.load("runs/idx")             # verifies the manifest and (fast) checksums
    >>> Index.load("runs/idx", verify="full")      # the sha256 of every file
    >>> Retriever(index).retrieve(["who won?"], k=5)  # searching goes through the Retriever

A compressed index that keeps its recall: the exact vectors stay on disk (memory-mapped) and re-rank
the FAISS candidates, so RAM holds only the codes:

    >>> Index.build(passages, encoder, "runs/idx", factory="OPQ64,IVF1024,PQ64x4fs", refine="disk",
    ...             refine_factor=8)
    >>> Index.build(passages, encoder, "runs/idx", IndexSettings(factory="HNSW32", with_bm25=False))

Every build option lives in one checked object, `IndexSettings` (settings.py); the keyword arguments
above are mapped onto it.

Builds stream: `passages` may be any iterable (a generator over a million passages); they are encoded
`chunk_size` at a time, each chunk's vectors appended to vectors.npy and its passages to the SQLite store,
then FAISS is trained on `train_size` vectors spread evenly over the file (all of them in a smaller
corpus) and filled chunk by chunk from the file. Peak
RAM is one chunk plus the FAISS index (plus the training sample, and BM25, which bm25s builds in memory
from all texts: skip it with `with_bm25=False` for the largest corpora).

The vectors live in a backend (backend.py: FAISS today); the folder's files and how a build writes them
are in folder.py; this module is the `Index` object over them.

Sharded building, for a corpus too big for one process, is in shards.py.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, writer_lock
from ragloop.manifest import verify_files
from ragloop.quiet import bar_disabled
from ragloop.retrieval.backend import FaissBackend
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.folder import (
    BM25_DIR,
    MANIFEST,
    STORE_FILE,
    check_replaceable,
    check_target,
    encoder_entry,
    finish,
    passage_inputs,
    read_manifest,
    same_weights,
    write_chunks,
    write_index,
)
from ragloop.retrieval.settings import (
    VECTORS_FILE,
    IndexSettings,
)
from ragloop.retrieval.store import PassageStore
from ragloop.retrieval.vecfile import open_vectors

if TYPE_CHECKING:  # encoders import torch: loaded only where a model is used, so BM25 search stays light
    from ragloop.retrieval.encoders import BiEncoder, Encoder

log = logging.getLogger(__name__)

_STATE_STAMPS = itertools.count(1)  # process-unique stamps: what a retrieval cache keys an index's contents by


class Index:
    """A loaded index folder. Build with `Index.build`, open with `Index.load`."""

    def __init__(self, path: Path, backend: FaissBackend, store: PassageStore, manifest: dict,
                 bm25: BM25Index | None) -> None:
        self.path = path
        self.backend = backend
        self.store = store
        self.manifest = manifest
        self.bm25 = bm25
        # `state_stamp` identifies what the index holds in this process, and a retrieval cache (cache.py)
        # keys results by it: a new one for every loaded object and every in-memory change (`add` reloads,
        # `reencode` bumps it), so a changed index never serves stale hits. `changed_in_memory`: the
        # vectors no longer match the folder's checksums (on-disk caches skip).
        self.state_stamp = next(_STATE_STAMPS)
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

    def settings(self) -> IndexSettings:
        """The settings this index was built with, as its manifest records them."""
        return IndexSettings.from_manifest(self.manifest)

    def build_options(self) -> dict:
        """The `Index.build` options that rebuild this index the same way (type, search and refine)."""
        return self.settings().build_options()

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, passages: Iterable[Passage], encoder: BiEncoder, out_dir: str | Path,
              settings: IndexSettings | str | None = None, *, progress: bool | None = None,
              extra: dict | None = None, **options: Any) -> Index:
        """Encode, index and save to `out_dir` atomically (written under a temporary name, then renamed),
        streaming: `passages` (a list or any iterable) are encoded `settings.chunk_size` at a time.
        `settings`: an `IndexSettings` (or a factory string); `options`: its fields as keyword arguments
        (factory=, batch_size=, search_params=, with_bm25=, refine=, refine_factor=, refine_dtype=,
        chunk_size=, train_size=, quantize=), applied on top. `extra`: more manifest entries."""
        settings = IndexSettings.of(settings, **options)
        if isinstance(passages, list) and not passages:
            raise RagloopError("cannot build an index from an empty corpus")
        out_dir = Path(out_dir)
        check_target(out_dir)  # fail before the encoding work, not after
        if settings.quantize:
            encoder.passage.quantize(settings.quantize)
        # a bad factory string fails before the encoding
        FaissBackend.create(settings.factory, encoder.passage.dim, settings.search_params_or_defaults())
        total = len(passages) if hasattr(passages, "__len__") else None

        def encoded() -> Iterator[tuple[list[Passage], np.ndarray]]:
            disable = bar_disabled(progress)
            with tqdm(total=total, desc="encoding passages", unit="passage", disable=disable) as bar:
                for chunk in _chunks(passages, settings.chunk_size):
                    titles, texts = passage_inputs(chunk)
                    yield chunk, encoder.encode_passages(titles, texts, batch_size=settings.batch_size,
                                                         progress=False)
                    bar.update(len(chunk))

        write_index(encoded(), encoder.passage.dim, encoder_entry(encoder), out_dir, settings, extra)
        return cls.load(out_dir, verify="size")  # just written and checksummed

    @classmethod
    def from_vectors(cls, passages: list[Passage], vectors: np.ndarray, encoder: dict, out_dir: str | Path,
                     settings: IndexSettings | None = None, extra: dict | None = None) -> Index:
        """Index `vectors` (row i is passages[i]) in a new backend and write the folder atomically, the
        way `build` does. `encoder` is the manifest's encoder entry (`encoder_entry`)."""
        settings = settings or IndexSettings()
        if len(passages) != len(vectors):
            raise RagloopError(f"{out_dir}: {len(passages)} passages but {len(vectors)} vectors")
        size = settings.chunk_size
        chunks = ((passages[i : i + size], vectors[i : i + size]) for i in range(0, len(passages), size))
        write_index(chunks, vectors.shape[1], encoder, Path(out_dir), settings, extra)
        return cls.load(out_dir, verify="size")

    def add(self, passages: list[Passage], encoder: BiEncoder | None = None, batch_size: int = 64,
            progress: bool | None = None) -> int:
        """Add new passages (ids already present are skipped); the folder is rewritten atomically.
        Returns the number added. Without `encoder`, the manifest's encoders (quantized if the build
        was); a given one must match the build's precision.

        Writers of one folder take turns (`ragloop.io.writer_lock`, `.NAME.lock` beside it): a second
        one logs that it waits, and fails after `io.WRITER_WAIT_SECONDS` with an error saying another
        writer holds the index. One that loaded the folder before another writer changed it adds to the
        folder as it is now (reloaded), so nothing either added is lost."""
        check_batch_size(batch_size)
        with writer_lock(self.path, "index"):
            self._reload_if_rewritten()
            return self._add(passages, encoder, batch_size, progress)

    def _add(self, passages: list[Passage], encoder: BiEncoder | None, batch_size: int,
             progress: bool | None) -> int:
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
            write_chunks(tmp, [(new, vectors)], self.dim, refine["dtype"] if refine else None, first_row=len(self))
            finish(tmp, backend, manifest, with_bm25=self.bm25 is not None)
        self._reload()
        return len(new)

    def _reload_if_rewritten(self) -> None:
        """Another writer changed the folder since this object loaded it (its manifest differs): reload it."""
        if read_manifest(self.path) == self.manifest:
            return
        if self.changed_in_memory:
            raise RagloopError(f"{self.path}: another writer changed the index since it was loaded, and these vectors "
                               "were re-encoded in memory (reencode): load the folder again first")
        log.warning("%s: another writer changed the index since it was loaded; adding to it as it is now", self.path)
        self._reload()

    def _reload(self) -> None:
        """This object becomes the folder as it is on disk (just written, or changed by another writer)."""
        self.store.close()
        self.__dict__.update(Index.load(self.path, verify="size").__dict__)

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
        if same_weights(encoder.probe(), built["probe"]):
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
        self.state_stamp, self.changed_in_memory = next(_STATE_STAMPS), True


def _precision(quantize: str | None) -> str:
    return f"quantized ({quantize})" if quantize else "in full precision"


def check_batch_size(batch_size: int) -> None:
    """A batch size of at least 1 (the rule `IndexSettings` checks), for `add` and `reencode`."""
    IndexSettings(batch_size=batch_size)


def _chunks(items: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


