"""The memo: each missing item computed once per call, bounded in entries and bytes, counted per kind,
copies handed out, safe under threads."""

import threading

import numpy as np
import pytest

from ragloop.cache import Memo, approx_size
from ragloop.constants import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES
from ragloop.errors import RagloopError


def squares(calls):
    def compute(xs):
        calls.append(list(xs))
        return [x * x for x in xs]
    return compute


def test_only_missing_items_are_computed_in_one_call_each_once():
    memo, calls = Memo(), []
    assert memo.get_many("sq", "v1", [3, 4, 3], squares(calls)) == [9, 16, 9]
    assert memo.get_many("sq", "v1", [5, 3, 4, 5], squares(calls)) == [25, 9, 16, 25]
    assert calls == [[3, 4], [5]]
    stats = memo.stats()
    assert stats["sq"] == {"hits": 2, "misses": 5, "hit_rate": round(2 / 7, 4)}
    assert stats["total"] == stats["sq"] and stats["entries"] == 3 == len(memo)


def test_another_setup_or_kind_is_another_key():
    memo, calls = Memo(), []
    memo.get_many("sq", "v1", [2], squares(calls))
    memo.get_many("sq", "v2", [2], squares(calls))
    memo.get_many("other", "v1", [2], squares(calls))
    assert calls == [[2], [2], [2]]


def test_defaults_come_from_constants_and_bad_bounds_are_refused():
    stats = Memo(kinds=("a", "b")).stats()
    assert (stats["max_entries"], stats["max_bytes"]) == (CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)
    assert stats["a"] == stats["b"] == {"hits": 0, "misses": 0, "hit_rate": None}
    for bad, problem in ((-1, "must be at least 0"), (1.5, "expected a whole number"), (True, "expected a whole"),
                         ("4", "expected a whole")):
        with pytest.raises(RagloopError, match=f"cache max_entries:? {problem}"):
            Memo(max_entries=bad)


def test_bounded_in_entries_least_recently_used_first():
    memo, calls = Memo(max_entries=2), []
    for x in (1, 2, 1, 3):  # 1 used again before 3 arrives: 2 goes
        memo.get_many("sq", None, [x], squares(calls))
    memo.get_many("sq", None, [1, 3], squares(calls))
    memo.get_many("sq", None, [2], squares(calls))
    assert calls == [[1], [2], [3], [2]] and memo.stats()["evictions"] == 2


def test_bounded_in_bytes_and_too_big_values_are_not_kept():
    big = np.zeros(1000, dtype=np.float32)
    memo = Memo(max_bytes=approx_size(big) + 1000)
    memo.get_many("v", None, ["a", "b"], lambda xs: [big.copy() for _ in xs])
    assert len(memo) == 1 and memo.nbytes <= memo.stats()["max_bytes"]
    tiny = Memo(max_bytes=10)
    tiny.get_many("v", None, ["a"], lambda xs: [big for _ in xs])
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_values_go_out_through_copy_and_off_kinds_are_not_remembered():
    memo = Memo(off=("answers",))
    got = memo.get_many("lists", None, ["a"], lambda xs: [[1, 2] for _ in xs], copy=list)
    got[0].append(3)
    assert memo.get_many("lists", None, ["a"], pytest.fail, copy=list) == [[1, 2]]
    calls = []
    memo.get_many("answers", None, [1, 1], squares(calls))
    memo.get_many("answers", None, [1], squares(calls))
    assert calls == [[1, 1], [1]] and "answers" not in memo.stats()


def test_threads_share_one_memo():
    memo = Memo(max_entries=50)
    errors = []

    def work(offset):
        try:
            for i in range(200):
                item = (i + offset) % 80
                assert memo.get_many("sq", None, [item], lambda xs: [x * x for x in xs]) == [item * item]
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = memo.stats()
    assert not errors and len(memo) <= 50 and stats["sq"]["hits"] + stats["sq"]["misses"] == 800
