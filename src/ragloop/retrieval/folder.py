"""An index folder on disk: its files, its manifest, and how a build writes them.

    >>> rows = write_index(chunks, dim, encoder_entry(encoder), Path("runs/idx"), IndexSettings(), extra=None)
    >>> read_manifest(Path("runs/idx"))["passages"] == rows
    True
    >>> check_replaceable(Path("runs/idx"))   # an earlier index or an empty folder may be replaced
    >>> check_target("runs/idx")              # that, or nothing there yet: checked before any encoding

`Index` (index.py) builds, loads and searches through these; shards.py writes shards of the same kind.

Layout of the folder:
    manifest.json     encoders (name, dim, pooling, normalisation, a probe vector), FAISS factory, refine
                      stage, passage count, size and sha256 of every file (+ a sampled digest of files
                      over 64 MiB, for the fast check on load), ragloop version
    index.faiss       inner-product FAISS index; FAISS row i is passage row i in the store
    vectors.npy       only with refine "disk": the exact vectors, row i = FAISS row i (float32 or float16)
    passages.sqlite   passage id, doc id, title, text
    bm25/             bm25s sparse index over "title text"
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragloop._version import __version__
from ragloop.constants import INDEX_CHUNK_SIZE
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json, writer_lock
from ragloop.manifest import checksum_files, only_replace, read_manifest_json
from ragloop.retrieval.backend import FaissBackend
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.settings import VECTORS_FILE, IndexSettings
from ragloop.retrieval.store import PassageStore
from ragloop.retrieval.vecfile import NpyAppender, read_blocks, sample_rows

if TYPE_CHECKING:  # encoders import torch: loaded only where a model is used
    from ragloop.retrieval.encoders import BiEncoder

log = logging.getLogger(__name__)

MANIFEST, STORE_FILE, BM25_DIR = "manifest.json", "passages.sqlite", "bm25"
FORMAT = "ragloop-index"
FORMAT_VERSION = 1
PROBE_COSINE = 0.999  # probe vectors at least this close: the same encoder weights


def passage_inputs(passages: list[Passage]) -> tuple[list[str], list[str]]:
    return [p.title for p in passages], [p.text for p in passages]


def bm25_text(p: Passage) -> str:
    return f"{p.title} {p.text}" if p.title else p.text


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


def same_weights(probe: list[float] | np.ndarray, other: list[float] | np.ndarray) -> bool:
    """Whether two encoders' probe vectors (`encoder_entry`) say the same weights (cosine >= PROBE_COSINE)."""
    a, b = np.asarray(probe, dtype=np.float32), np.asarray(other, dtype=np.float32)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)) >= PROBE_COSINE


def write_index(chunks: Iterable[tuple[list[Passage], np.ndarray]], dim: int, encoder: dict, out_dir: Path,
                settings: IndexSettings, extra: dict | None) -> int:
    """Every build: passages and vectors to disk chunk by chunk, then FAISS trained on `train_size`
    vectors spread over the file and filled from it, then BM25, checksums and the manifest, all in a
    temporary folder renamed to `out_dir` at the end. Returns the number of passages."""
    refine, params = settings.refine_entry(), settings.search_params_or_defaults()
    # an index is not replaced while another writer adds to it (io.writer_lock)
    with writer_lock(out_dir, "index"), atomic_dir(out_dir, may_replace=check_replaceable) as tmp:
        rows = write_chunks(tmp, chunks, dim, settings.refine_dtype if refine else "float32", first_row=0)
        if not rows:
            raise RagloopError("cannot build an index from an empty corpus")
        # plain reads, not a memory map: pages already added do not stay in the resident set
        no_direct_map = np.empty((0, dim), np.float32) if refine else None  # refine reads vectors.npy instead
        backend = FaissBackend.create(settings.factory, dim, params, exact=no_direct_map)
        if not backend.index.is_trained:  # Flat / HNSW need no sample
            backend.train(sample_rows(tmp / VECTORS_FILE, settings.train_size))
        for block in read_blocks(tmp / VECTORS_FILE, INDEX_CHUNK_SIZE):
            backend.add(block)
        if not refine:
            (tmp / VECTORS_FILE).unlink()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragloop_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "encoder": encoder,
            "index": {"factory": settings.factory, "metric": "inner_product", "dim": dim,
                      "search_params": params, "refine": refine},
            "passages": rows,
            "bm25": {"language": "english"} if settings.with_bm25 else None,
            **(extra or {}),
        }
        finish(tmp, backend, manifest, settings.with_bm25)
    log.debug("index: %d passages -> %s (%s%s)", rows, out_dir, settings.factory,
              f", refine {refine['kind']} x{refine['factor']}" if refine else "")
    return rows


def write_chunks(folder: Path, chunks: Iterable[tuple[list[Passage], np.ndarray]], dim: int, dtype: str | None,
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


def finish(folder: Path, backend: FaissBackend, manifest: dict, with_bm25: bool) -> None:
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


def check_target(out_dir: str | Path) -> None:
    """A new index may be written at `out_dir`: nothing is there yet (and the nearest existing path
    above it is a folder), or an earlier index or an empty folder is (`check_replaceable`). Builds call it
    before any encoding, the CLI before a model loads."""
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        check_replaceable(out_dir)
        return
    above = next((p for p in out_dir.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise RagloopError(f"{out_dir}: cannot be written, {above} is a file, not a folder")
