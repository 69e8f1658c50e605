"""A retrieval index on disk: FAISS vectors + SQLite passage store + BM25 + a manifest.

    >>> index = Index.build(passages, BiEncoder.from_pretrained(), "runs/idx", factory="HNSW32")
    >>> index = Index.load("runs/idx")             # verifies the manifest and checksums
    >>> scores, rows = index.search(vectors, k=5)
    >>> index.store.get_rows(rows[0])

Layout of the folder:
    manifest.json     encoders (name, dim, pooling, normalisation, a probe vector), FAISS factory,
                      passage count, sha256 of every file, ragloop version
    index.faiss       inner-product FAISS index; FAISS row i is passage row i in the store
    passages.sqlite   passage id, doc id, title, text
    bm25/             bm25s sparse index over "title text"

Sharded building, for a corpus too big for one process: every shard encodes a contiguous slice of
the passages into `OUT.shards/shard-I-of-N/` (vectors.npy, passages.sqlite, shard.json), then a merge
checks that the shards fit together and writes one index folder equal to a single-process build:

    >>> Index.build_shard(passages, encoder, "runs/idx", num_shards=2, shard_id=0)   # on one machine
    >>> Index.build_shard(passages, encoder, "runs/idx", num_shards=2, shard_id=1)   # on another
    >>> index = Index.merge_shards("runs/idx")                                       # runs/idx, shards removed
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ragloop import __version__
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
from ragloop.retrieval.bm25 import BM25Index
from ragloop.retrieval.store import PassageStore

if TYPE_CHECKING:  # encoders import torch: loaded only where a model is used, so BM25 search stays light
    from ragloop.retrieval.encoders import BiEncoder, Encoder

log = logging.getLogger(__name__)

MANIFEST, FAISS_FILE, STORE_FILE, BM25_DIR = "manifest.json", "index.faiss", "passages.sqlite", "bm25"
FORMAT = "ragloop-index"
FORMAT_VERSION = 1
PROBE_COSINE = 0.999
SHARD_FILE, VECTORS_FILE, SHARD_FORMAT = "shard.json", "vectors.npy", "ragloop-index-shard"
SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)")


def passage_inputs(passages: list[Passage]) -> tuple[list[str], list[str]]:
    return [p.title for p in passages], [p.text for p in passages]


def bm25_text(p: Passage) -> str:
    return f"{p.title} {p.text}" if p.title else p.text


def _make_faiss(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise RagloopError(f"FAISS index type {factory!r} is not valid ({msg[:120]})") from None


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
        raise RagloopError(
            f"FAISS index type {factory!r} needs at least {need} passages to train, got {len(vectors)}; "
            "use fewer IVF lists / PQ bits, or 'Flat' / 'HNSW32' for a small corpus"
        )
    log.info("training FAISS %s on %d vectors", factory, len(vectors))
    _skip_polysemous_training(index)
    try:
        index.train(vectors)
    except RuntimeError as e:
        raise RagloopError(f"FAISS could not train {factory!r}: {str(e).strip().splitlines()[-1][:200]}") from None


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
            raise RagloopError("cannot build an index from an empty corpus")
        _check_batch_size(batch_size)
        out_dir = Path(out_dir)
        if out_dir.exists():
            _check_replaceable(out_dir)  # fail before the encoding work, not after
        index = _make_faiss(factory, encoder.passage.dim)
        titles, texts = passage_inputs(passages)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        return cls._from_vectors(passages, vectors, index, factory, _encoder_entry(encoder), out_dir,
                                 _search_params(search_params), with_bm25, extra)

    @classmethod
    def _from_vectors(cls, passages: list[Passage], vectors: np.ndarray, index: faiss.Index, factory: str,
                      encoder_entry: dict, out_dir: Path, params: dict, with_bm25: bool, extra: dict | None) -> Index:
        """Train and fill `index` with `vectors` (row i is passages[i]); write the folder atomically."""
        _train(index, factory, vectors)
        index.add(vectors)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragloop_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": encoder_entry,
            "index": {"factory": factory, "metric": "inner_product", "dim": int(index.d), "search_params": params},
            "passages": len(passages),
            "bm25": {"language": "english"} if with_bm25 else None,
            **(extra or {}),
        }
        with atomic_dir(out_dir, may_replace=_check_replaceable) as tmp:
            _write(tmp, index, passages, manifest, first_row=0, with_bm25=with_bm25, store_from=None)
        log.info("index: %d passages -> %s (%s)", len(passages), out_dir, factory)
        return cls.load(out_dir)

    # -- sharded building -------------------------------------------------------------------

    @staticmethod
    def build_shard(
        passages: list[Passage],
        encoder: BiEncoder,
        out_dir: str | Path,
        num_shards: int,
        shard_id: int,
        factory: str = "Flat",
        batch_size: int = 64,
        search_params: dict | None = None,
        with_bm25: bool = True,
        progress: bool | None = None,
        extra: dict | None = None,
    ) -> Path:
        """Encode shard `shard_id` of `num_shards` (a contiguous slice of `passages`, the whole corpus in
        the same order in every shard) into `shard_path(out_dir, shard_id, num_shards)`, atomically.
        `merge_shards(out_dir)` joins the shards into the index `build` would write. Returns the folder."""
        if not passages:
            raise RagloopError("cannot build an index from an empty corpus")
        _check_batch_size(batch_size)
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise RagloopError(f"--shard-id must be in 0..{num_shards - 1} and --num-shards at least 1 "
                              f"(got shard {shard_id} of {num_shards})")
        out_dir = Path(out_dir)
        if out_dir.exists():
            _check_replaceable(out_dir)  # the merge would refuse it: say so before the encoding work
        _make_faiss(factory, encoder.passage.dim)  # a bad factory string fails now, not at the merge
        start, end = shard_bounds(len(passages), num_shards, shard_id)
        mine = passages[start:end]
        titles, texts = passage_inputs(mine)
        vectors = encoder.encode_passages(titles, texts, batch_size=batch_size, progress=progress)
        meta = {
            "format": SHARD_FORMAT,
            "format_version": FORMAT_VERSION,
            "ragloop_version": __version__,
            "shard_id": shard_id,
            "num_shards": num_shards,
            "first_row": start,
            "passages": len(mine),
            "corpus": {"passages": len(passages), "sha256": corpus_sha256(passages)},
            "encoder": _encoder_entry(encoder),
            "index": {"factory": factory, "dim": encoder.passage.dim, "search_params": _search_params(search_params)},
            "bm25": with_bm25,
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

    @classmethod
    def merge_shards(cls, out_dir: str | Path, num_shards: int | None = None, keep_shards: bool = False) -> Index:
        """Join the shards in `OUT.shards/` into the index folder `out_dir` (FAISS + passage store + BM25
        + manifest, as `build` writes them), after checking that every shard is there, intact, and built
        from the same corpus with the same encoder and settings. The shards are removed afterwards
        unless `keep_shards`."""
        out_dir = Path(out_dir)
        if out_dir.exists():
            _check_replaceable(out_dir)
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
        factory = first["index"]["factory"]
        index = _make_faiss(factory, first["index"]["dim"])
        merged = cls._from_vectors(passages, vectors, index, factory, first["encoder"], out_dir,
                                   first["index"]["search_params"], first["bm25"], first["extra"])
        if not keep_shards:
            for path in shards:
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                shards_root(out_dir).rmdir()  # only when nothing else is left in it
        log.info("merged %d shards -> %s", len(shards), out_dir)
        return merged

    def add(self, passages: list[Passage], encoder: BiEncoder | None = None, batch_size: int = 64,
            progress: bool | None = None) -> int:
        """Add new passages (ids already present are skipped); the folder is rewritten atomically.
        Returns the number added."""
        _check_batch_size(batch_size)
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
            raise RagloopError(f"{path / FAISS_FILE}: not a readable FAISS index") from None
        store = PassageStore(path / STORE_FILE)
        try:  # the store's connection is closed on every way out but success
            bm25 = BM25Index.load(path / BM25_DIR, manifest["bm25"]["language"]) if manifest.get("bm25") else None
            if index.ntotal != manifest["passages"] or len(store) != manifest["passages"]:
                raise RagloopError(
                    f"{path}: manifest says {manifest['passages']} passages, FAISS has {index.ntotal}, "
                    f"store has {len(store)}"
                )
            return cls(path, index, store, manifest, bm25)
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

    # -- search -----------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k); rows are -1 past the end of a small index."""
        return self.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored passage vectors (exact for Flat/HNSW, PQ-decoded approximations for IVF-PQ)."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = self.faiss.reconstruct_batch(np.maximum(flat, 0))
        return out.reshape(*np.shape(rows), self.dim)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise RagloopError(f"--batch-size must be at least 1 (got {batch_size})")


def _search_params(given: dict | None) -> dict:
    params = {"efSearch": 128, "nprobe": 16}
    params.update(given or {})
    return params


# -- shards -----------------------------------------------------------------------------------


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
    if spec != {k: v for k, v in b.items() if k != "probe"}:
        return False
    pa, pb = np.asarray(a["probe"], dtype=np.float32), np.asarray(b["probe"], dtype=np.float32)
    return float(pa @ pb / max(np.linalg.norm(pa) * np.linalg.norm(pb), 1e-12)) >= PROBE_COSINE


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
    with PassageStore(folder / STORE_FILE, readonly=False) as store:
        store.add(passages, first_row)
        if with_bm25:
            BM25Index.build([bm25_text(p) for p in store]).save(folder / BM25_DIR)
    faiss.write_index(index, str(folder / FAISS_FILE))
    manifest["files"] = checksum_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    atomic_write_json(folder / MANIFEST, manifest)


def read_manifest(path: Path) -> dict:
    return read_manifest_json(path, MANIFEST, FORMAT, FORMAT_VERSION, "ragloop index",
                              "; build one with `ragloop index`")


_check_replaceable = only_replace(MANIFEST, "ragloop index")  # an earlier index or an empty folder
