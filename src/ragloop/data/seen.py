"""What the corpus duplicate check has seen, kept on disk: a private temporary SQLite database, so reading
a corpus of any size holds only a batch of keys in RAM.

    >>> with SeenKeys() as seen:
    ...     seen.add_documents([("d1", "3f2a9c...", "docs.jsonl:1")])   # (doc id, content id of its text, where)
    ...     seen.add_texts(["77ab01..."])                                # content ids of passages kept
    ...     seen.documents(["d1", "d2"])        # {"d1": ("3f2a9c...", "docs.jsonl:1")}: those seen, from disk
    ...     seen.texts(["77ab01...", "00ff"])   # {"77ab01..."}

`corpus.iter_passages` asks once per batch of documents. The database is SQLite's temporary kind (an
empty file name): its file lives in the temporary folder (SQLITE_TMPDIR or TMPDIR, else /var/tmp or
/tmp), is unlinked as soon as it is created and so vanishes with the connection or the process, and
takes about 100 bytes a document on disk. RAM: its page cache, CACHE_KIB at most.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

CACHE_KIB = 16 * 1024  # SQLite's page cache for the database: bounded, whatever the corpus size
BOUND_PARAMETERS = 900  # keys per query: under SQLite's bound-parameter limit on every build

SCHEMA = """
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -{cache_kib};
CREATE TABLE documents (doc_id TEXT PRIMARY KEY, text_key TEXT NOT NULL, place TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE texts (key TEXT PRIMARY KEY) WITHOUT ROWID;
"""


class SeenKeys:
    """Document ids (with their text's content id and where they were read) and passage content ids."""

    def __init__(self) -> None:
        # "": a private temporary database on disk (not ":memory:"); one reader, but maybe another thread
        self.db = sqlite3.connect("", check_same_thread=False)
        self.db.executescript(SCHEMA.format(cache_kib=CACHE_KIB))

    def documents(self, doc_ids: list[str]) -> dict[str, tuple[str, str]]:
        """{doc id: (content id of its text, where it was read)} for those of `doc_ids` added before."""
        return {doc_id: (key, place) for doc_id, key, place in
                self._select("SELECT doc_id, text_key, place FROM documents WHERE doc_id IN ({})", doc_ids)}

    def texts(self, keys: list[str]) -> set[str]:
        """Those of `keys` added before."""
        return {key for (key,) in self._select("SELECT key FROM texts WHERE key IN ({})", keys)}

    def _select(self, sql: str, keys: list[str]) -> Iterable[tuple]:
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), BOUND_PARAMETERS):
            part = unique[start : start + BOUND_PARAMETERS]
            yield from self.db.execute(sql.format(",".join("?" * len(part))), part)

    def add_documents(self, rows: list[tuple[str, str, str]]) -> None:
        """(doc id, content id of its text, where it was read), each doc id new."""
        with self.db:
            self.db.executemany("INSERT INTO documents (doc_id, text_key, place) VALUES (?, ?, ?)", rows)

    def add_texts(self, keys: list[str]) -> None:
        with self.db:
            self.db.executemany("INSERT INTO texts (key) VALUES (?)", ((key,) for key in keys))

    def close(self) -> None:
        """Close the connection, which removes the database (again: a no-op)."""
        self.db.close()

    def __enter__(self) -> SeenKeys:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
