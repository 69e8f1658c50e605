"""Atomic file and directory writes: a crash never leaves a half-written file in place of a good one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(target: str | Path, may_replace=lambda p: True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` by rename.

    On any error the temporary folder is removed and `target` is untouched. The old `target` is
    moved aside first and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            may_replace(target)
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- folders described by a JSON manifest (index, saved RAG model, checkpoint) -------------------


def checksum_files(folder: Path, files: list[Path]) -> dict:
    """{relative path: {"bytes", "sha256"}} for a manifest."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}


def verify_files(folder: Path, files: dict, manifest_name: str, checksums: bool = True) -> None:
    """Every file the manifest lists exists with its size and (with `checksums`) its sha256."""
    from ragsys.errors import RagsysError

    for name, meta in files.items():
        f = folder / name
        if not f.is_file():
            raise RagsysError(f"{f}: missing (listed in {manifest_name})")
        if f.stat().st_size != meta["bytes"] or (checksums and sha256_file(f) != meta["sha256"]):
            raise RagsysError(f"{f}: does not match the checksum in {manifest_name} (truncated, corrupt or changed)")


def read_manifest_json(folder: Path, name: str, fmt: str, version: int, what: str, hint: str = "") -> dict:
    """Read `folder/name`, a JSON object whose "format" is `fmt` and "format_version" at most `version`."""
    from ragsys.errors import RagsysError

    if not folder.is_dir():
        raise RagsysError(f"{folder}: no such {what} folder")
    f = folder / name
    if not f.is_file():
        raise RagsysError(f"{folder}: not a {what} (no {name}){hint}")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagsysError(f"{f}: corrupt {name} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise RagsysError(f"{f}: not a {what} {name}")
    if meta.get("format_version", 0) > version:
        raise RagsysError(f"{f}: format {meta['format_version']} is newer than this ragsys reads")
    return meta


def only_replace(marker: str, what: str):
    """A `may_replace` check for `atomic_dir`: only an empty folder or one holding `marker` is replaced."""

    def check(target: Path) -> None:
        from ragsys.errors import RagsysError

        if target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file()):
            return
        raise RagsysError(f"{target}: exists and is not a {what}; refusing to overwrite it")

    return check
