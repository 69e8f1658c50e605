"""The disk store: arrays per key in one .npz per settings, read back across instances, corrupt files
ignored, a size cap with the least recently used file evicted first."""

import os

import numpy as np
import pytest

from ragloop.cache import DiskStore
from ragloop.errors import RagloopError

FIELDS = {"rows": np.int64, "scores": np.float32}


def rows_for(calls):
    def compute(keys):
        calls.append(list(keys))
        n = np.array([[len(k), len(k) + 1] for k in keys])
        return {"rows": n, "scores": n / 2}
    return compute


def test_missing_keys_are_computed_once_and_kept_across_instances(tmp_path):
    calls = []
    got = DiskStore(tmp_path).lookup({"k": 2}, ["a", "bb", "a"], rows_for(calls), FIELDS)
    assert got["rows"].tolist() == [[1, 2], [2, 3], [1, 2]] and got["scores"].dtype == np.float32
    again = DiskStore(tmp_path)
    got = again.lookup({"k": 2}, ["bb", "ccc"], rows_for(calls), FIELDS)
    assert got["rows"].tolist() == [[2, 3], [3, 4]]
    assert calls == [["a", "bb"], ["ccc"]] and (again.hits, again.misses) == (1, 1)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    DiskStore(tmp_path).lookup({"k": 3}, ["a"], rows_for(calls), FIELDS)  # other settings: another file
    assert len(list(tmp_path.glob("*.npz"))) == 2 and calls[-1] == ["a"]


def test_a_corrupt_file_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog):
    store, calls = DiskStore(tmp_path, key_field="questions"), []
    store.lookup({"k": 2}, ["a"], rows_for(calls), FIELDS)
    store.file_for({"k": 2}).write_bytes(b"not a zip file")
    assert store.lookup({"k": 2}, ["a"], rows_for(calls), FIELDS)["rows"].tolist() == [[1, 2]]
    assert "unreadable" in caplog.text and calls == [["a"], ["a"]]
    with np.load(store.file_for({"k": 2})) as data:
        assert sorted(data.files) == ["questions", "rows", "scores"]


def test_files_beyond_the_cap_are_evicted_least_recently_used_first(tmp_path):
    store, calls = DiskStore(tmp_path), []
    store.lookup({"k": 1}, ["a"], rows_for(calls), FIELDS)
    one = store.file_for({"k": 1}).stat().st_size
    store = DiskStore(tmp_path, max_bytes=2 * one + one // 2)  # room for two files
    store.lookup({"k": 2}, ["a"], rows_for(calls), FIELDS)
    os.utime(store.file_for({"k": 1}), (1, 1))
    os.utime(store.file_for({"k": 2}), (2, 2))
    store.lookup({"k": 1}, ["a"], rows_for(calls), FIELDS)  # a read: now the most recently used
    store.lookup({"k": 3}, ["a"], rows_for(calls), FIELDS)
    assert not store.file_for({"k": 2}).exists() and store.file_for({"k": 1}).exists()
    assert store.stats()["evictions"] == 1


def test_a_file_in_place_of_the_directory_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RagloopError, match="is a file"):
        DiskStore(tmp_path / "f")


def test_eviction_never_touches_files_the_store_did_not_write(tmp_path):
    mine = tmp_path / "results-of-my-own.npz"
    mine.write_bytes(b"x" * 10_000)  # a user's file in the --cache-dir, larger than the cap
    store = DiskStore(tmp_path, max_bytes=1)
    store.lookup({"k": 1}, ["a"], rows_for([]), FIELDS)
    assert mine.exists() and not store.file_for({"k": 1}).exists()  # its own file went, over the cap


def test_a_file_whose_time_cannot_be_touched_is_still_served(tmp_path, monkeypatch):
    calls = []
    DiskStore(tmp_path).lookup({"k": 2}, ["a"], rows_for(calls), FIELDS)

    def refuse(*args, **kwargs):  # a read-only or another user's cache folder
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "utime", refuse)
    store = DiskStore(tmp_path)
    assert store.lookup({"k": 2}, ["a"], rows_for(calls), FIELDS)["rows"].tolist() == [[1, 2]]
    assert calls == [["a"]] and store.hits == 1
