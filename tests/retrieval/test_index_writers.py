"""Two writers of one index folder (`ragloop index ... --add` twice at once): they take turns on the
folder's lock, and each one's passages end up in the index."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

import ragloop
import ragloop.io
from ragloop import Index, RagloopError
from ragloop.io import writer_lock


@pytest.fixture
def folder(eight_passage_index):
    eight_passage_index.close()
    return eight_passage_index.path


def _ids(path) -> list[str]:
    with Index.load(path) as index:
        return [p.id for p in index.store]


class _Said(logging.Handler):
    """Sets `event` once a record with `words` in it is logged (from any thread)."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words, self.event = words, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


def test_a_writer_that_loaded_the_index_before_another_wrote_it_adds_to_what_is_there(folder, passages, encoder,
                                                                                      caplog):
    """Was: UNIQUE constraint failed: passages.row (or, a moment earlier, the first writer's passages lost)."""
    first, second = Index.load(folder), Index.load(folder)
    assert first.add(passages[8:12], encoder) == 4
    with caplog.at_level(logging.WARNING, logger="ragloop"):
        assert second.add(passages[10:], encoder) == len(passages) - 12  # 10 and 11 are there now
    assert "another writer changed the index" in caplog.text
    assert len(second) == len(passages) and _ids(folder) == [p.id for p in passages]
    first.close(), second.close()


def test_two_threads_adding_at_once_both_succeed_in_turn(folder, passages, encoder):
    halves, results, errors = (passages[8:12], passages[12:]), [], []
    start = threading.Barrier(2)

    def add(batch):
        try:
            with Index.load(folder) as index:
                start.wait()
                results.append(index.add(batch, encoder))
        except BaseException as e:  # the test fails below, naming it
            errors.append(e)

    threads = [threading.Thread(target=add, args=(half,)) for half in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [4, 5]
    assert sorted(_ids(folder)) == sorted(p.id for p in passages)


def test_a_second_writer_says_it_waits_then_adds_when_the_first_is_done(folder, passages, encoder):
    said = _Said("another writer is writing this index")
    logging.getLogger("ragloop").addHandler(said)
    results = []
    try:
        with writer_lock(folder, "index"):  # the first writer, busy
            waiting = threading.Thread(target=lambda: results.append(Index.load(folder).add(passages[8:], encoder)))
            waiting.start()
            assert said.event.wait(60), "the second writer never said it waits"
            assert not results  # still waiting
        waiting.join()
    finally:
        logging.getLogger("ragloop").removeHandler(said)
    assert results == [len(passages) - 8] and _ids(folder) == [p.id for p in passages]


def test_a_writer_that_waits_past_its_limit_gets_a_clear_error(folder, passages, encoder, monkeypatch):
    monkeypatch.setattr(ragloop.io, "WRITER_WAIT_SECONDS", 0.2)
    index = Index.load(folder)
    with writer_lock(folder, "index"), pytest.raises(RagloopError, match="another writer holds this index"):
        index.add(passages[8:], encoder)
    index.close()
    assert _ids(folder) == [p.id for p in passages[:8]]  # nothing half-written


HOLDER = """
import sys
from ragloop.io import writer_lock
with writer_lock(sys.argv[1], "index"):
    print("locked", flush=True)
    sys.stdin.readline()  # until the test says to let go
"""


def test_a_writer_in_another_process_holds_the_index_until_it_lets_go(folder, passages, encoder, monkeypatch):
    """Another process (as another `ragloop index --add` would) holds the lock: an add times out with the
    clear error, and goes through once that process lets go."""
    monkeypatch.setattr(ragloop.io, "WRITER_WAIT_SECONDS", 0.2)
    here = os.path.dirname(os.path.dirname(ragloop.__file__))  # this ragloop, in the child too
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": here})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with Index.load(folder) as index, pytest.raises(RagloopError, match="another writer holds this index"):
            index.add(passages[8:], encoder)
    finally:
        holder.communicate("go\n", timeout=60)
    with Index.load(folder) as index:
        assert index.add(passages[8:], encoder) == len(passages) - 8
    assert _ids(folder) == [p.id for p in passages]
