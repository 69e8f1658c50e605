"""A .npy file written as the vectors come, for index builds that never hold all vectors in RAM.

    >>> with NpyAppender(folder / "vectors.npy", dim=384, dtype="float32") as out:
    ...     for chunk in chunks:
    ...         out.append(chunk)                       # (n, 384), any float dtype
    >>> np.load(folder / "vectors.npy", mmap_mode="r").shape   # (rows, 384), read from disk on demand
    >>> for block in read_blocks(folder / "vectors.npy", 4096):  # plain reads: no mapped pages stay resident
    ...     index.add(block)
    >>> with NpyAppender.extend(folder / "vectors.npy") as out:   # add rows to an existing file
    ...     out.append(more)

The file is a standard .npy (format 1.0) with a fixed 128-byte header that is rewritten with the final
row count on close, so the row count need not be known in advance. A writer that dies leaves a header
saying 0 rows (or the count of an earlier close), never a header promising rows that are not there.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ragloop.errors import RagloopError

HEADER_BYTES = 128  # magic (6) + version (2) + header length (2) + dict + padding + "\n"; a multiple of 64


def npy_header(rows: int, dim: int, dtype: np.dtype) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": (int(rows), int(dim))}).encode("latin1")
    pad = HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:  # cannot happen below 10**40 rows; said plainly rather than writing a broken file
        raise ValueError(f"npy header for shape ({rows}, {dim}) does not fit in {HEADER_BYTES} bytes")
    return np.lib.format.magic(1, 0) + struct.pack("<H", HEADER_BYTES - 10) + text + b" " * pad + b"\n"


class NpyAppender:
    """Append (n, dim) blocks to a .npy file; `close` (or leaving the `with`) writes the final header."""

    def __init__(self, path: str | Path, dim: int, dtype: str | np.dtype = "float32") -> None:
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        self.rows = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(npy_header(0, self.dim, self.dtype))

    @classmethod
    def extend(cls, path: str | Path) -> NpyAppender:
        """Open a file this class wrote (or any C-order 2-D .npy with a 128-byte header) to add rows."""
        path = Path(path)
        rows, dim, dtype, offset = read_npy_shape(path)
        if offset != HEADER_BYTES:
            raise RagloopError(f"{path}: not a vectors file ragloop can append to (header of {offset} bytes)")
        out = cls.__new__(cls)
        out.path, out.dim, out.dtype, out.rows = path, dim, dtype, rows
        out._file = open(path, "r+b")  # noqa: SIM115 (closed by close())
        out._file.seek(HEADER_BYTES + rows * dim * dtype.itemsize)
        out._file.truncate()
        return out

    def append(self, vectors: np.ndarray) -> None:
        block = np.ascontiguousarray(vectors, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise RagloopError(f"{self.path}: vectors of shape {block.shape} do not fit rows of dim {self.dim}")
        self._file.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(npy_header(self.rows, self.dim, self.dtype))
        self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_npy_shape(path: Path) -> tuple[int, int, np.dtype, int]:
    """(rows, dim, dtype, data offset) of a 2-D C-order .npy, or a RagloopError naming the file."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise ValueError(f"npy format {version}")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise RagloopError(f"{path}: not a readable vectors file ({str(e)[:120]})") from None
    if fortran or len(shape) != 2:
        raise RagloopError(f"{path}: not a 2-D C-order vectors file (shape {shape})")
    return int(shape[0]), int(shape[1]), np.dtype(dtype), offset


def open_vectors(path: Path, rows: int, dim: int) -> np.ndarray:
    """The vectors in `path`, memory-mapped read-only, checked to be `rows` x `dim` and complete."""
    found_rows, found_dim, dtype, offset = read_npy_shape(path)
    if (found_rows, found_dim) != (rows, dim):
        raise RagloopError(f"{path}: holds {found_rows} x {found_dim} vectors, the index {rows} x {dim}")
    need = offset + rows * dim * dtype.itemsize
    if path.stat().st_size < need:
        raise RagloopError(f"{path}: truncated ({path.stat().st_size} bytes, {rows} x {dim} {dtype} need {need})")
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise RagloopError(f"{path}: not a readable vectors file ({str(e)[:120]})") from None


def sample_rows(path: Path, count: int) -> np.ndarray:
    """`count` rows spread evenly over the whole file (all of them, in order, when it holds no more), as
    float32: a training sample that sees the end of a sorted corpus as well as its start."""
    rows, dim, _, _ = read_npy_shape(path)
    if count >= rows:
        return np.concatenate(list(read_blocks(path, 65_536))) if rows else np.zeros((0, dim), np.float32)
    picks = np.unique(np.linspace(0, rows - 1, count).round().astype(np.int64))
    # plain block reads, not a memory map: mapped pages would count in the resident set (at 1M passages
    # a spread sample touches most of the file's pages)
    out, start = [], 0
    for block in read_blocks(path, 65_536):
        inside = picks[(picks >= start) & (picks < start + len(block))]
        out.append(block[inside - start])
        start += len(block)
    return np.concatenate(out)


def read_blocks(path: Path, rows_per_block: int, stop: int | None = None):
    """Rows [0, stop) of a 2-D .npy, `rows_per_block` at a time, as float32 arrays read with plain file
    reads: unlike a memory map, pages already used do not count in this process's resident set."""
    rows, dim, dtype, offset = read_npy_shape(path)
    stop = rows if stop is None else min(stop, rows)
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, stop, rows_per_block):
            count = min(rows_per_block, stop - start)
            block = np.fromfile(f, dtype=dtype, count=count * dim)
            if len(block) != count * dim:
                raise RagloopError(f"{path}: truncated (row {start + len(block) // dim} of {rows})")
            yield block.reshape(count, dim).astype(np.float32, copy=False)
