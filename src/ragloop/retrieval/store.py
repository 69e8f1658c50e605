"""The passage store: SQLite, random access by FAISS row or passage id, texts stay on disk.

A damaged database file is a `RagloopError` naming the file, whenever SQLite notices it. Stores
written before passages recorded their `source` (no such column) load as they are, with source "";
one opened for writing (adding passages to an old index) gains the column.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ragloop.data.corpus import Passage
from ragloop.errors import RagloopError

SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
    row INTEGER PRIMARY KEY,   -- the passage's row in the FAISS index
    id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT ''  -- the file or dataset the passage was read from
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_id);
"""


class PassageStore:
    """    >>> with PassageStore(dir / "passages.sqlite") as store:
    ...     store.get_rows([0, 7])      # the passages FAISS returned
    ...     store.get_ids(["3f2a-0"])
    """

    def __init__(self, path: str | Path, readonly: bool = True) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise RagloopError(f"{self.path}: passage store not found")
        # a URI, percent-encoded, so a folder named "run#1" or "a?b" opens the right file
        uri = self.path.absolute().as_uri() + ("?mode=ro" if readonly else "")
        self.db = None
        try:
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            if readonly:
                self.db.execute("SELECT count(*) FROM passages").fetchone()
            else:
                self.db.executescript(SCHEMA)
                if not self._has_source():
                    self.db.execute("ALTER TABLE passages ADD COLUMN source TEXT NOT NULL DEFAULT ''")
                    self.db.commit()
            # an old store keeps loading: its passages have no recorded source
            self._source = "source" if self._has_source() else "''"
        except sqlite3.Error as e:
            self.close()
            raise RagloopError(f"{self.path}: not a readable passage store ({e})") from None

    def _has_source(self) -> bool:
        return any(col[1] == "source" for col in self.db.execute("PRAGMA table_info(passages)"))

    def __enter__(self) -> PassageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite noticing a damaged file mid-query: one RagloopError naming the file."""
        try:
            yield
        except sqlite3.IntegrityError as e:
            raise RagloopError(f"{self.path}: passages with the same id or row ({e})") from None
        except sqlite3.ProgrammingError:  # used after close(): a bug in the caller, not bad input
            raise
        except sqlite3.Error as e:
            raise RagloopError(f"{self.path}: passage store is damaged or unreadable ({e})") from None

    def __len__(self) -> int:
        with self._errors():
            return self.db.execute("SELECT count(*) FROM passages").fetchone()[0]

    def add(self, passages: Iterable[Passage], first_row: int) -> None:
        rows = ((first_row + i, p.id, p.doc_id, p.title, p.text, p.source or "") for i, p in enumerate(passages))
        with self._errors(), self.db:
            self.db.executemany("INSERT INTO passages(row, id, doc_id, title, text, source) VALUES (?,?,?,?,?,?)",
                                rows)

    def _fetch(self, column: str, keys: list) -> dict:
        found = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT row, id, doc_id, title, text, {self._source} FROM passages WHERE {column} IN ({marks})"
            with self._errors():
                for row, pid, doc_id, title, text, source in self.db.execute(sql, chunk):
                    found[row if column == "row" else pid] = Passage(pid, title, text, doc_id, source)
        return found

    def get_rows(self, rows: list[int]) -> list[Passage]:
        keys = [int(r) for r in rows]
        return self._get("row", keys, lambda m: f"rows {m[:5]} are missing (index and store disagree)")

    def get_ids(self, ids: list[str]) -> list[Passage]:
        return self._get("id", list(ids), lambda m: f"no passage with id {m[0]!r}")

    def _get(self, column: str, keys: list, missing_message) -> list[Passage]:
        """The passages for `keys` of `column`, in order; all must exist (else `missing_message(missing)`)."""
        found = self._fetch(column, sorted(set(keys)))
        missing = [key for key in keys if key not in found]
        if missing:
            raise RagloopError(f"{self.path}: {missing_message(missing)}")
        return [found[key] for key in keys]

    def existing_ids(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            sql = f"SELECT id FROM passages WHERE id IN ({','.join('?' * len(chunk))})"
            with self._errors():
                found.update(r[0] for r in self.db.execute(sql, chunk))
        return found

    def __iter__(self) -> Iterator[Passage]:
        with self._errors():
            rows = self.db.execute(f"SELECT id, doc_id, title, text, {self._source} FROM passages ORDER BY row")
            for pid, doc_id, title, text, source in rows:
                yield Passage(pid, title, text, doc_id, source)

    def close(self) -> None:
        """Close the connection (again: a no-op)."""
        if self.db is not None:
            self.db.close()
