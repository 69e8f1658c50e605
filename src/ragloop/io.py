"""Atomic file and directory writes: a crash never leaves a half-written file in place of a good one.

A folder is written as `.NAME.tmp-PID-HOST-XXXX` beside its target, every file in it fsynced, then
the old target is renamed to `.NAME.old-PID-HOST`, the new one renamed into place and the old one
deleted. A process killed anywhere in between (kill -9, power loss) leaves either the old or the new
target; what it left beside it is tidied by the next writer or reader of that target (`recover`): a
target missing while a dead writer's `.NAME.old-PID-HOST` exists is renamed back, a dead writer's
temporaries are removed. Only writers on this machine are judged (by PID); what a process on another
machine sharing the folder left is never touched.

    >>> atomic_write_json("runs/rag/summary.json", {"em": 0.41})
    >>> with atomic_dir("runs/index") as tmp:      # a folder: written in tmp, renamed into place at the end
    ...     (tmp / "index.faiss").write_bytes(data)
    >>> recover("runs/index")                      # what a killed writer of runs/index left, tidied

Two writers of one target, whose writes each read what is there first (adding to an index), take turns
under `writer_lock`: an flock on the target itself (no lock file is left anywhere). The second waits,
saying so, up to WRITER_WAIT_SECONDS, then fails naming the target; when the first replaced the target
by rename meanwhile, the second locks the new one.

    >>> with writer_lock("runs/index", "index"):   # read runs/index, then replace it with atomic_dir
    ...     ...

Folders described by a JSON manifest (sizes and digests checked on load) are `ragloop.manifest`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from ragloop.errors import RagloopError

try:
    import fcntl
except ImportError:  # Windows: writers are not locked
    fcntl = None

log = logging.getLogger(__name__)

WRITER_WAIT_SECONDS = 600.0  # how long a writer waits for another one of the same target
LOCK_POLL_SECONDS = 0.05

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
def atomic_dir(target: str | Path, may_replace: Callable[[Path], object] = lambda p: True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` by rename.

    `may_replace(target)` is called before an existing `target` is replaced; it raises to refuse
    (`ragloop.manifest.only_replace`). On any error the temporary folder is removed and `target` is
    untouched. The old `target` is moved aside first and deleted only after the new one is in place.

        >>> with atomic_dir("runs/index") as tmp:
        ...     (tmp / "manifest.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    with _writing_to(target):
        tmp = _temp_beside(target, folder=True)
        old = None
        try:
            yield tmp
            _fsync_tree(tmp)
            if target.exists():
                may_replace(target)
                old = target.parent / _this_writers(target, "old")
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


@contextlib.contextmanager
def writer_lock(target: str | Path, what: str = "folder", wait: float | None = None) -> Iterator[None]:
    """Hold the lock of `target` (a `what`) while reading and rewriting it: one writer at a time, across
    processes and threads. Held by another writer: logs that it waits, waits up to `wait` seconds
    (default WRITER_WAIT_SECONDS), then raises a RagloopError saying another writer holds it. A target
    that does not exist yet needs no lock (its writer renames it into place whole)."""
    fd = None if fcntl is None else _lock(Path(target), what, WRITER_WAIT_SECONDS if wait is None else wait)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _lock(target: Path, what: str, wait: float) -> int | None:
    """A descriptor of `target` holding its flock, or None (no such target; no flock here). A writer
    replaces the target by rename while others wait on the old one: they lock the new one instead."""
    deadline = None
    while True:
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if _flocked(fd):
                if os.path.samestat(os.fstat(fd), os.stat(target)):
                    return fd
                # else replaced by the writer before us: the next round locks what is there now
            else:
                if deadline is None:
                    deadline = time.monotonic() + wait
                    log.warning("%s: another writer is writing this %s; waiting for it (up to %g s)", target, what,
                                wait)
                if time.monotonic() >= deadline:
                    raise RagloopError(f"{target}: another writer holds this {what} (it is locked); waited {wait:g} "
                                       "s: try again when it is done")
                time.sleep(LOCK_POLL_SECONDS)
        except FileNotFoundError:  # removed while we waited: nothing left to lock
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _flocked(fd: int) -> bool:
    """An exclusive flock on `fd` taken (True), or held by another open file (False). Where there is no
    flock (NFS may refuse it on a folder; Windows has none) the write goes ahead unlocked, as it always did."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        log.debug("no lock on %s (%s): writing unlocked", fd, e.strerror or e)
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    with _writing_to(path):
        tmp = _temp_beside(path, folder=False)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            _remove(tmp)
            raise


def _temp_beside(target: Path, folder: bool) -> Path:
    """A new empty file or folder beside `target`, named `.NAME.tmp-PID-HOST-XXXX` (what `_leftovers` reads),
    with the mode a plain create under the umask gives: mkstemp/mkdtemp make it 0600/0700, and others could
    not read the result."""
    prefix = _this_writers(target, "tmp") + "-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        os.chmod(tmp, (0o777 if folder else 0o666) & ~current_umask())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


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


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Write `obj` as indented JSON with sorted keys and a final newline, atomically (`atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The hex sha256 of a file's content, read `block` bytes at a time."""
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


def _this_writers(target: Path, kind: str) -> str:
    """`.NAME.old-PID-HOST` or `.NAME.tmp-PID-HOST` (mkstemp/mkdtemp add `-XXXX`): this process's "old" copy
    or temporary beside `target`, as `_parse_leftover` reads it back."""
    return f".{target.name}.{kind}-{os.getpid()}-{HOST}"


def _parse_leftover(target: Path, name: str) -> tuple[str, int, str] | None:
    """("old" or "tmp", writer's PID, writer's host) when `name` is what `_this_writers` makes for `target`.

    An older ragloop's `.NAME.old-PID` counts as this machine's; its `.NAME.tmp-XXXX` (no PID), and every
    other name, give None."""
    for kind in ("old", "tmp"):
        prefix = f".{target.name}.{kind}-"
        if name.startswith(prefix):
            pid, _, rest = name[len(prefix):].partition("-")
            host = (rest or HOST) if kind == "old" else rest.rpartition("-")[0]  # tmp: HOST-XXXX
            return (kind, int(pid), host) if pid.isdigit() and host else None
    return None


def _leftovers(target: Path) -> tuple[list[tuple[Path, bool]], list[tuple[Path, bool]]]:
    """([(.NAME.old-PID-HOST, stale)], [(.NAME.tmp-PID-HOST-XXXX, stale)]) beside `target`; stale: its writer
    ran on this machine and is gone. Names of other forms (older ragloop: `.NAME.tmp-XXXX`) are left alone."""
    found: dict[str, list[tuple[Path, bool]]] = {"old": [], "tmp": []}
    try:
        entries = [e.name for e in os.scandir(target.parent)]
    except OSError:
        return found["old"], found["tmp"]
    mine = _writing.get(os.path.abspath(target), 0) > 0
    for name in entries:
        if parsed := _parse_leftover(target, name):
            kind, pid, host = parsed
            found[kind].append((target.parent / name, _stale(pid, host, mine)))
    return found["old"], found["tmp"]


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
            if not (Path(root) / name).is_symlink():
                _fsync(Path(root) / name)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    """fsync a folder (its entries: a rename in it is durable); best effort, as not every OS allows it."""
    with contextlib.suppress(OSError):
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
