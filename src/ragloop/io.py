"""Atomic file and directory writes: a crash never leaves a half-written file in place of a good one.

A folder is written as `.NAME.tmp-PID-HOST-XXXX` beside its target, every file in it fsynced, then
the old target is renamed to `.NAME.old-PID-HOST`, the new one renamed into place and the old one
deleted. A process killed anywhere in between (kill -9, power loss) leaves either the old or the new
target; what it left beside it is tidied by the next writer or reader of that target (`recover`): a
target missing while a dead writer's `.NAME.old-PID-HOST` exists is renamed back, a dead writer's
temporaries are removed. Only writers on this machine are judged (by PID); what a process on another
machine sharing the folder left is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"
_writing: Counter[str] = Counter()  # targets this process is writing now: their leftovers are not stale
_writing_lock = threading.Lock()


@contextlib.contextmanager
def _writing_to(target: Path) -> Iterator[None]:
    key = os.path.abspath(target)
    with _writing_lock:
        _writing[key] += 1
    try:
        yield
    finally:
        with _writing_lock:
            _writing[key] -= 1
            if not _writing[key]:
                del _writing[key]


@contextlib.contextmanager
def atomic_dir(target: str | Path, may_replace=lambda p: True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` by rename.

    On any error the temporary folder is removed and `target` is untouched. The old `target` is
    moved aside first and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    with _writing_to(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-{HOST}-", dir=target.parent))
        old = None
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700: others could not read the result
            yield tmp
            _fsync_tree(tmp)
            if target.exists():
                may_replace(target)
                old = target.parent / f".{target.name}.old-{os.getpid()}-{HOST}"
                if old.exists():
                    _remove(old)
                os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            if old is not None:
                _remove(old)
        except BaseException:
            if old is not None and old.exists() and not os.path.lexists(target):
                with contextlib.suppress(OSError):  # the new one never got into place: put the old one back
                    os.rename(old, target)
            _remove(tmp)
            raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    with _writing_to(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-{HOST}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600, whatever the umask
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


_umask_lock = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere it is set and put back under a lock; a file another thread creates in that instant gets
    the stricter 0o077 mask, never a wider mode than the umask allows.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# -- what a killed writer leaves behind -------------------------------------------------------


def recover(target: str | Path) -> None:
    """Tidy what writers of `target` that have died left beside it.

    If `target` is missing and a dead writer's `.NAME.old-PID-HOST` exists, the writer was killed
    between moving the old version aside and moving the new one in: the old version is renamed back.
    Then the dead writers' `.NAME.old-*` and `.NAME.tmp-*` leftovers are removed. Live writers' files,
    and those of writers on other machines, are never touched. Best effort: on a read-only file
    system nothing changes.
    """
    target = Path(target)
    if not target.name:
        return
    olds, tmps = _leftovers(target)
    olds, tmps = [p for p, stale in olds if stale], [p for p, stale in tmps if stale]
    if olds and not os.path.lexists(target):
        newest = max(olds, key=_mtime)
        try:
            os.rename(newest, target)
        except OSError as e:
            log.warning("%s is missing; a killed write left the previous version in %s (could not rename it "
                        "back: %s)", target, newest, e.strerror or e)
            return
        _fsync_dir(target.parent)
        olds.remove(newest)
        log.warning("%s: restored the previous version, which a killed write had left in %s", target, newest.name)
    for leftover in olds + tmps:
        log.info("removing %s, left by a killed write", leftover)
        _remove(leftover)


def interrupted_hint(target: str | Path) -> str:
    """'; an interrupted write left the previous version in X' when such a copy exists beside `target`."""
    olds, _ = _leftovers(Path(target))
    if not olds:
        return ""
    return f"; an interrupted write left the previous version in {max((p for p, _ in olds), key=_mtime)}"


def _leftovers(target: Path) -> tuple[list[tuple[Path, bool]], list[tuple[Path, bool]]]:
    """([(.NAME.old-PID-HOST, stale)], [(.NAME.tmp-PID-HOST-XXXX, stale)]) beside `target`; stale: its writer
    ran on this machine and is gone. Names of other forms (older ragloop: `.NAME.tmp-XXXX`) are left alone."""
    old_prefix, tmp_prefix = f".{target.name}.old-", f".{target.name}.tmp-"
    olds: list[tuple[Path, bool]] = []
    tmps: list[tuple[Path, bool]] = []
    try:
        entries = [e.name for e in os.scandir(target.parent)]
    except OSError:
        return olds, tmps
    mine = _writing.get(os.path.abspath(target), 0) > 0
    for name in entries:
        if name.startswith(old_prefix):
            pid, _, host = name[len(old_prefix):].partition("-")  # PID-HOST, or PID alone (older ragloop)
            if pid.isdigit():
                olds.append((target.parent / name, _stale(int(pid), host or HOST, mine)))
        elif name.startswith(tmp_prefix):
            pid, _, rest = name[len(tmp_prefix):].partition("-")
            host = rest.rpartition("-")[0]
            if pid.isdigit() and host:
                tmps.append((target.parent / name, _stale(int(pid), host, mine)))
    return olds, tmps


def _stale(pid: int, host: str, writing: bool) -> bool:
    """Whether a leftover of writer `pid` on `host` is abandoned: its writer is gone."""
    if host != HOST:
        return False  # another machine's process: no way to tell from here
    if pid == os.getpid():  # this process, writing the target now; or an earlier one with the same PID
        return not writing
    return not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether process `pid` (on this machine) is running; unknown counts as alive."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :][:1] != "Z"
    except (OSError, ValueError):
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, so the rename never publishes unwritten data."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))


def _fsync_file(path: Path) -> None:
    if path.is_symlink():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- folders described by a JSON manifest (index, saved RAG model, checkpoint) -------------------


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
        out[str(p.relative_to(folder))] = {"bytes": size, "sha256": sha256_file(p)}
        if size > SAMPLE_ABOVE:
            out[str(p.relative_to(folder))]["sample_sha256"] = sample_sha256(p)
    return out


def verify_files(folder: Path, files: dict, manifest_name: str, checksums: bool | str = True) -> None:
    """Every file the manifest lists exists with its size, and its content checked as `checksums` says:
    True or "full": the sha256 of every file; "fast": the sha256 of files up to 64 MiB and a sampled
    digest of larger ones (their full sha256 when the manifest has no sampled digest); False or "size":
    sizes only. A truncated or swapped file fails every mode but "size" (which still catches truncation)."""
    from ragloop.errors import RagloopError

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
            ok = sha256_file(f) == meta["sha256"]
        if not ok:
            raise RagloopError(f"{f}: does not match the checksum in {manifest_name} (truncated, corrupt or changed)")


def legacy_name(name: str) -> str:
    """What a file or format was called before the project was renamed from ragsys: read, never written."""
    return name.replace("ragloop", "ragsys", 1)


def read_manifest_json(folder: Path, name: str, fmt: str, version: int, what: str, hint: str = "") -> dict:
    """Read `folder/name`, a JSON object whose "format" is `fmt` and "format_version" at most `version`."""
    from ragloop.errors import RagloopError

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


def only_replace(marker: str, what: str):
    """A `may_replace` check for `atomic_dir`: only an empty folder or one holding `marker` is replaced."""

    def check(target: Path) -> None:
        from ragloop.errors import RagloopError

        if target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file()):
            return
        raise RagloopError(f"{target}: exists and is not a {what}; refusing to overwrite it")

    return check
