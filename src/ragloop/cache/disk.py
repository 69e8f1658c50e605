"""A disk store: arrays per key, one `.npz` file per set of settings, bounded in bytes.

    >>> from ragloop.cache import DiskStore
    >>> store = DiskStore("runs/cache", max_bytes=1 << 30, key_field="questions")
    >>> got = store.lookup({"kind": "retrieve", "k": 5, "index": "9f2c..."}, ["q1", "q2", "q1"],
    ...                    compute=lambda qs: {"rows": rows_for(qs), "scores": scores_for(qs)},
    ...                    dtypes={"rows": np.int64, "scores": np.float32})
    >>> got["rows"].shape                        # [3, K]: q1's row twice; only missing keys computed
    (3, 5)

`settings` (a JSON-able dict) holds everything the values depend on that must survive the process
(content digests of weights and index files, see fingerprint.py); its hash names the file. A file holds
`key_field` (the keys as UTF-8 JSON) and one array per field, all of the same shape [N, ...], row i
belonging to key i. Files are written atomically; one that cannot be read, or whose arrays disagree
with its keys or `dtypes`, is logged and treated as empty (then rewritten). A file that cannot be
written only makes the next run slower.

Size cap: after each write, while the folder's `.npz` files together exceed `max_bytes`, the least
recently used file (by modification time; a read refreshes it) is deleted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragloop.cache.fingerprint import content_digest
from ragloop.checks import whole
from ragloop.errors import RagloopError
from ragloop.io import atomic_write_bytes

log = logging.getLogger(__name__)

DISK_MAX_BYTES = 1 << 30  # the store's default size cap: 1 GiB
_OWN_FILE = re.compile(r"[0-9a-f]{32}\.npz")  # the names `file_for` gives
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)


class DiskStore:
    """Arrays per key under `directory`, one `.npz` per settings, at most `max_bytes` in all (see the
    module doc). `hits` and `misses` count keys asked for."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int = DISK_MAX_BYTES, key_field: str = "keys") -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise RagloopError(f"cache directory {self.directory} is a file")
        self.max_bytes, self.key_field = whole(max_bytes, "disk cache max_bytes", low=0), key_field
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()

    def stats(self) -> dict:
        return {"directory": str(self.directory), "hits": self.hits, "misses": self.misses,
                "max_bytes": self.max_bytes, "evictions": self.evictions}

    def file_for(self, settings: Mapping) -> Path:
        return self.directory / f"{content_digest(settings, 32)}.npz"

    def lookup(self, settings: Mapping, keys: Sequence[str], compute: Callable[[list[str]], Mapping[str, np.ndarray]],
               dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One row per key of each field in `dtypes`: the stored ones, the rest from one `compute(missing)`
        call (each missing key once), added to the file. One lookup at a time per store."""
        file = self.file_for(settings)
        with self._lock:
            stored_keys, stored = self._read(file, dtypes)
            where = {key: i for i, key in enumerate(stored_keys)}
            missing = list(dict.fromkeys(key for key in keys if key not in where))
            n_missing = sum(key not in where for key in keys)
            self.hits += len(keys) - n_missing
            self.misses += n_missing
            if missing:
                new = compute(missing)
                stored = {f: np.concatenate([stored[f], np.asarray(new[f], dtype=dt)]) if stored
                          else np.asarray(new[f], dtype=dt) for f, dt in dtypes.items()}
                stored_keys = [*stored_keys, *missing]
                where = {key: i for i, key in enumerate(stored_keys)}
                self._write(file, stored_keys, stored)
            pick = [where[key] for key in keys]
            return {f: values[pick].copy() for f, values in stored.items()}

    def _read(self, file: Path, dtypes: Mapping[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
        if not file.is_file():
            return [], {}
        try:
            with np.load(file, allow_pickle=False) as data:
                keys = json.loads(bytes(data[self.key_field]).decode("utf-8"))
                arrays = {f: data[f] for f in dtypes}
            shapes = {a.shape for a in arrays.values()}
            ok = (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and len(shapes) == 1
                  and all(a.ndim >= 1 and a.shape[0] == len(keys) and a.dtype == np.dtype(dtypes[f])
                          for f, a in arrays.items()))
            if not ok:
                raise ValueError("arrays and keys disagree")
            with contextlib.suppress(OSError):  # a read-only or shared folder is still read
                os.utime(file)  # recently used: evicted last
            return keys, arrays
        except _UNREADABLE as e:
            log.warning("cache file %s is unreadable (%s: %s); ignoring it", file, type(e).__name__, str(e)[:120])
            return [], {}

    def _write(self, file: Path, keys: list[str], arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{self.key_field: np.frombuffer(json.dumps(keys).encode("utf-8"), dtype=np.uint8)}, **arrays)
        try:
            atomic_write_bytes(file, buf.getvalue())
            self._evict()
        except OSError as e:  # a cache that cannot be written is only a slower run
            log.warning("cannot write the cache file %s (%s)", file, e)

    def _evict(self) -> None:
        """Delete the least recently used files until the folder is within `max_bytes`."""
        files = []
        for f in self.directory.glob("*.npz"):
            if not _OWN_FILE.fullmatch(f.name):  # only what this store wrote: never a user's other files
                continue
            try:
                st = f.stat()
            except OSError:  # deleted meanwhile (another process)
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            self.evictions += 1
            log.info("cache file %s evicted (the cache folder is over %d bytes)", f, self.max_bytes)
