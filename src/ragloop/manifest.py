"""Folders described by a JSON manifest (an index, a saved RAG model, a checkpoint): each file's size and
digest are written beside it and checked on load, the manifest's format and version are checked on read.

    >>> files = checksum_files(folder, sorted(folder.iterdir()))      # when writing the folder
    >>> meta = read_manifest_json(folder, "manifest.json", "ragloop-index", 3, "ragloop index")
    >>> verify_files(folder, meta["files"], "manifest.json", checksums="fast")   # RagloopError if changed
    >>> with atomic_dir(folder, may_replace=only_replace("manifest.json", "ragloop index")) as tmp: ...
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ragloop import io  # io.sha256_file through the module: a test or benchmark that wraps it sees every hash
from ragloop.errors import RagloopError
from ragloop.io import interrupted_hint, recover

SAMPLE_ABOVE = 64 << 20  # files larger than this also get a sampled digest, for the fast check on load
SAMPLE_BLOCKS, SAMPLE_BLOCK = 16, 1 << 20
VERIFY_MODES = ("full", "fast", "size")


def sample_sha256(path: str | Path) -> str:
    """sha256 of a file's size and 16 blocks of 1 MiB spread evenly over it (first and last included):
    reads 16 MiB whatever the size, and changes when a file is swapped for another of the same size."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(SAMPLE_BLOCKS):
            f.seek(max(0, size - SAMPLE_BLOCK) * i // (SAMPLE_BLOCKS - 1))
            h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def checksum_files(folder: Path, files: list[Path]) -> dict:
    """{relative path: {"bytes", "sha256"}} for a manifest, plus "sample_sha256" for files over 64 MiB."""
    out = {}
    for p in files:
        size = p.stat().st_size
        out[str(p.relative_to(folder))] = {"bytes": size, "sha256": io.sha256_file(p)}
        if size > SAMPLE_ABOVE:
            out[str(p.relative_to(folder))]["sample_sha256"] = sample_sha256(p)
    return out


def verify_files(folder: Path, files: dict, manifest_name: str, checksums: bool | str = True) -> None:
    """Every file the manifest lists exists with its size, and its content checked as `checksums` says:
    True or "full": the sha256 of every file; "fast": the sha256 of files up to 64 MiB and a sampled
    digest of larger ones (their full sha256 when the manifest has no sampled digest); False or "size":
    sizes only. A truncated or swapped file fails every mode but "size" (which still catches truncation)."""
    mode = ("full" if checksums else "size") if isinstance(checksums, bool) else checksums
    if mode not in VERIFY_MODES:
        raise RagloopError(f"verify must be one of {', '.join(VERIFY_MODES)} (got {checksums!r})")
    where = folder / manifest_name
    if not isinstance(files, dict):
        raise RagloopError(f"{where}: corrupt ('files' is not an object)")
    for name, meta in files.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int) or not isinstance(
                meta.get("sha256"), str):
            raise RagloopError(f"{where}: corrupt (bad entry for {name!r})")
        f = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise RagloopError(f"{where}: corrupt (file {name!r} is outside the folder)")
        if not f.is_file():
            raise RagloopError(f"{f}: missing (listed in {manifest_name})")
        ok = f.stat().st_size == meta["bytes"]
        if ok and mode == "fast" and isinstance(meta.get("sample_sha256"), str):
            ok = sample_sha256(f) == meta["sample_sha256"]
        elif ok and mode != "size":
            ok = io.sha256_file(f) == meta["sha256"]
        if not ok:
            raise RagloopError(f"{f}: does not match the checksum in {manifest_name} (truncated, corrupt or changed)")


def legacy_name(name: str) -> str:
    """What a file or format was called before the project was renamed from ragsys: read, never written."""
    return name.replace("ragloop", "ragsys", 1)


def read_manifest_json(folder: Path, name: str, fmt: str, version: int, what: str, hint: str = "") -> dict:
    """Read `folder/name`, a JSON object whose "format" is `fmt` and "format_version" at most `version`."""
    folder = Path(folder)
    recover(folder)  # a write of this folder killed between its renames: the previous version is back
    if not folder.is_dir():
        raise RagloopError(f"{folder}: no such {what} folder{interrupted_hint(folder)}")
    f = folder / name
    if not f.is_file():
        raise RagloopError(f"{folder}: not a {what} (no {name}){hint}")
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge numbers
        raise RagloopError(f"{f}: corrupt {name} ({str(e)[:200]})") from None
    except OSError as e:
        raise RagloopError(f"{f}: cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (fmt, legacy_name(fmt)):
        raise RagloopError(f"{f}: not a {what} {name}")
    if not isinstance(meta.get("format_version", 0), int):
        raise RagloopError(f"{f}: corrupt {name} (format_version is not a number)")
    if meta.get("format_version", 0) > version:
        raise RagloopError(f"{f}: format {meta['format_version']} is newer than this ragloop reads")
    return meta


def only_replace(marker: str, what: str) -> Callable[[Path], None]:
    """A `may_replace` check for `atomic_dir`: only an empty folder or one holding `marker` is replaced."""

    def check(target: Path) -> None:
        if target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file()):
            return
        raise RagloopError(f"{target}: exists and is not a {what}; refusing to overwrite it")

    return check
