"""Sharded index building, for a corpus too big for one process.

Every shard encodes a contiguous slice of the passages into `OUT.shards/shard-I-of-N/` (vectors.npy,
passages.sqlite, shard.json); a merge checks that the shards fit together and writes one index folder
equal to a single-process build:

    >>> build_shard(passages, encoder, "runs/idx", num_shards=2, shard_id=0)   # on one machine
    >>> build_shard(passages, encoder, "runs/idx", num_shards=2, shard_id=1)   # on another
    >>> index = merge_shards("runs/idx")                                       # runs/idx, shards removed

Under torchrun/accelerate, `ragloop index` runs one shard per process and merges on the main one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ragloop._version import __version__
from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError
from ragloop.io import atomic_dir, atomic_write_json
from ragloop.manifest import checksum_files, only_replace, read_manifest_json, verify_files
from ragloop.retrieval.backend import FaissBackend
from ragloop.retrieval.encoders import BiEncoder
from ragloop.retrieval.folder import (
    FORMAT_VERSION,
    STORE_FILE,
    check_target,
    encoder_entry,
    passage_inputs,
    same_weights,
)
from ragloop.retrieval.index import Index
from ragloop.retrieval.settings import VECTORS_FILE, IndexSettings
from ragloop.retrieval.store import PassageStore

log = logging.getLogger(__name__)

SHARD_FILE, SHARD_FORMAT = "shard.json", "ragloop-index-shard"
SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)")


def build_shard(passages: list[Passage], encoder: BiEncoder, out_dir: str | Path, num_shards: int, shard_id: int,
                settings: IndexSettings | str | None = None, *, progress: bool | None = None,
                extra: dict | None = None, **options: Any) -> Path:
    """Encode shard `shard_id` of `num_shards` (a contiguous slice of `passages`, the whole corpus in
    the same order in every shard) into `shard_path(out_dir, shard_id, num_shards)`, atomically.
    `merge_shards(out_dir)` joins the shards into the index `build` would write. Returns the folder.
    `settings` and `options` as for `Index.build`; a refine stage is not supported for sharded builds."""
    settings = IndexSettings.of(settings, **options)
    if not passages:
        raise RagloopError("cannot build an index from an empty corpus")
    if settings.refine:
        raise RagloopError("sharded builds do not take a refine stage yet: build the index in one process")
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise RagloopError(f"--shard-id must be in 0..{num_shards - 1} and --num-shards at least 1 "
                          f"(got shard {shard_id} of {num_shards})")
    out_dir = Path(out_dir)
    check_target(out_dir)  # the merge would refuse it: say so before the encoding work
    FaissBackend.create(settings.factory, encoder.passage.dim)  # a bad factory string fails now, not at the merge
    if settings.quantize:
        encoder.passage.quantize(settings.quantize)
    start, end = shard_bounds(len(passages), num_shards, shard_id)
    mine = passages[start:end]
    titles, texts = passage_inputs(mine)
    vectors = encoder.encode_passages(titles, texts, batch_size=settings.batch_size, progress=progress)
    meta = {
        "format": SHARD_FORMAT,
        "format_version": FORMAT_VERSION,
        "ragloop_version": __version__,
        "shard_id": shard_id,
        "num_shards": num_shards,
        "first_row": start,
        "passages": len(mine),
        "corpus": {"passages": len(passages), "sha256": corpus_sha256(passages)},
        "encoder": encoder_entry(encoder),
        "index": {"factory": settings.factory, "dim": encoder.passage.dim,
                  "search_params": settings.search_params_or_defaults()},
        "bm25": settings.with_bm25,
        "extra": extra or {},
    }
    path = shard_path(out_dir, shard_id, num_shards)
    with atomic_dir(path, may_replace=only_replace(SHARD_FILE, "ragloop index shard")) as tmp:
        np.save(tmp / VECTORS_FILE, vectors)
        store = PassageStore(tmp / STORE_FILE, readonly=False)
        store.add(mine, start)
        store.close()
        meta["files"] = checksum_files(tmp, sorted(p for p in tmp.iterdir() if p.is_file()))
        atomic_write_json(tmp / SHARD_FILE, meta)
    log.info("index shard %d of %d: passages %d..%d -> %s", shard_id, num_shards, start, end, path)
    return path


def merge_shards(out_dir: str | Path, num_shards: int | None = None, keep_shards: bool = False) -> Index:
    """Join the shards in `OUT.shards/` into the index folder `out_dir` (FAISS + passage store + BM25
    + manifest, as `build` writes them), after checking that every shard is there, intact, and built
    from the same corpus with the same encoder and settings. The shards are removed afterwards
    unless `keep_shards`."""
    out_dir = Path(out_dir)
    check_target(out_dir)
    shards = _find_shards(out_dir, num_shards)
    metas = [_read_shard(path) for path in shards]
    _check_shards(shards, metas)
    first = metas[0]
    vectors = np.concatenate([np.load(path / VECTORS_FILE) for path in shards]).astype(np.float32, copy=False)
    passages: list[Passage] = []
    for path in shards:
        store = PassageStore(path / STORE_FILE)
        passages.extend(store)
        store.close()
    settings = IndexSettings(factory=first["index"]["factory"], search_params=first["index"]["search_params"],
                             with_bm25=first["bm25"])
    merged = Index.from_vectors(passages, vectors, first["encoder"], out_dir, settings, first["extra"])
    if not keep_shards:
        for path in shards:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            shards_root(out_dir).rmdir()  # only when nothing else is left in it
    log.info("merged %d shards -> %s", len(shards), out_dir)
    return merged


def shard_bounds(n: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """Rows [start, end) of shard `shard_id`: contiguous, sizes differing by at most one."""
    return n * shard_id // num_shards, n * (shard_id + 1) // num_shards


def shards_root(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.shards"


def shard_path(out_dir: str | Path, shard_id: int, num_shards: int) -> Path:
    return shards_root(out_dir) / f"shard-{shard_id}-of-{num_shards}"


def corpus_sha256(passages: list[Passage]) -> str:
    """A fingerprint of the whole corpus in order, so shards of different corpora do not merge."""
    h = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.doc_id, p.title, p.text):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def _find_shards(out_dir: Path, num_shards: int | None) -> list[Path]:
    """shard-0-of-N ... shard-(N-1)-of-N, or a one-line error naming the shard that is missing or odd."""
    if num_shards is not None and num_shards < 1:
        raise RagloopError(f"--num-shards must be at least 1 (got {num_shards})")
    root = shards_root(out_dir)
    found = {}
    if root.is_dir():
        for path in sorted(root.iterdir()):
            m = SHARD_NAME.fullmatch(path.name)
            if m and path.is_dir():
                found[path] = (int(m.group(1)), int(m.group(2)))
    if not found:
        raise RagloopError(f"{root}: no index shards to merge; build them first with "
                          f"`ragloop index CORPUS --out {out_dir} --num-shards N --shard-id I`")
    counts = sorted({n for _, n in found.values()})
    if num_shards is None:
        if len(counts) > 1:  # name a shard of the less common --num-shards
            tally = {n: sum(1 for _, m in found.values() if m == n) for n in counts}
            odd = min(counts, key=lambda n: (tally[n], n))
            path = next(p for p, (_, n) in found.items() if n == odd)
            raise RagloopError(f"{path}: built with --num-shards {odd}, other shards in {root} with "
                              f"{', '.join(str(n) for n in counts if n != odd)}; remove the stale shards "
                              "(or merge with --num-shards N)")
        num_shards = counts[0]
    for shard_id in range(num_shards):
        path = shard_path(out_dir, shard_id, num_shards)
        if path not in found:
            raise RagloopError(f"{path}: missing; shard {shard_id} of {num_shards} was not built (or failed): run "
                              f"`ragloop index CORPUS --out {out_dir} --num-shards {num_shards} --shard-id {shard_id}`")
    return [shard_path(out_dir, i, num_shards) for i in range(num_shards)]


def _read_shard(path: Path) -> dict:
    meta = read_manifest_json(path, SHARD_FILE, SHARD_FORMAT, FORMAT_VERSION, "ragloop index shard")
    verify_files(path, meta.get("files", {}), SHARD_FILE)
    m = SHARD_NAME.fullmatch(path.name)
    if (meta.get("shard_id"), meta.get("num_shards")) != (int(m.group(1)), int(m.group(2))):
        raise RagloopError(f"{path}: {SHARD_FILE} says shard {meta.get('shard_id')} of {meta.get('num_shards')}, "
                          "not what the folder name says (renamed?)")
    return meta


def _check_shards(paths: list[Path], metas: list[dict]) -> None:
    """Every shard against shard 0: same corpus, encoder and settings; rows that follow on."""
    first = metas[0]
    row = 0
    for path, meta in zip(paths, metas):
        if meta["corpus"] != first["corpus"]:
            raise RagloopError(f"{path}: built from another corpus than {paths[0].name} ({meta['corpus']['passages']} "
                              f"vs {first['corpus']['passages']} passages, or other texts); rebuild it")
        for side in ("passage", "question"):
            mine, theirs = meta["encoder"][side], first["encoder"][side]
            if not _same_encoder(mine, theirs):
                other = " (same name, other weights)" if mine["name"] == theirs["name"] else ""
                raise RagloopError(f"{path}: encoded with {side} encoder {mine['name']!r}{other}, {paths[0].name} "
                                  f"with {theirs['name']!r}; rebuild the shards with one encoder")
        for key in ("index", "bm25", "extra"):
            if meta[key] != first[key]:
                raise RagloopError(f"{path}: built with other settings than {paths[0].name} ({key}: {meta[key]} vs "
                                  f"{first[key]}); rebuild it with the same options")
        if meta["first_row"] != row:
            raise RagloopError(f"{path}: starts at passage {meta['first_row']}, expected {row}")
        row += meta["passages"]
    if row != first["corpus"]["passages"]:
        raise RagloopError(f"{paths[0].parent}: shards hold {row} passages, "
                          f"the corpus {first['corpus']['passages']}")


def _same_encoder(a: dict, b: dict) -> bool:
    spec = {k: v for k, v in a.items() if k != "probe"}
    return spec == {k: v for k, v in b.items() if k != "probe"} and same_weights(a["probe"], b["probe"])
