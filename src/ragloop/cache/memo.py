"""A memo: values remembered by key in one LRU bounded both in entries and in bytes, thread-safe.

    >>> from ragloop.cache import Memo
    >>> memo = Memo(max_entries=4096, max_bytes=64 << 20)
    >>> memo.get_many("squares", setup=("v1",), items=[3, 4, 3], compute=lambda xs: [x * x for x in xs])
    [9, 16, 9]                                  # compute([3, 4]): each missing item once, in one call
    >>> memo.stats()["squares"]
    {'hits': 0, 'misses': 3, 'hit_rate': 0.0}

An entry's key is (kind, setup, item): `kind` names what is remembered (hits and misses are counted
per kind), `setup` everything the value depends on besides the item (weights, settings; see
fingerprint.py), so nothing is invalidated by hand. The least recently used entry goes first when
either bound is passed; a value bigger than `max_bytes` alone is not kept. Sizes are estimates
(`approx_size`: arrays by their bytes, strings by their length, containers and dataclasses by their
parts) plus a fixed overhead per entry.

Values are stored as `compute` returns them and handed out through `copy` (default: as they are), so a
caller that may change what it gets passes a copy function. `compute` runs outside the lock: two
threads missing the same item at once may both compute it; both get equal values.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any

from ragloop.checks import whole
from ragloop.constants import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES

ENTRY_OVERHEAD = 256  # bytes charged per entry beyond its value and item (key tuple, dict slots)


def approx_size(value: Any) -> int:
    """Estimated bytes held by `value`: numpy arrays by `nbytes`, text by length, containers and
    dataclasses by their parts (plus a little per object)."""
    if value is None or isinstance(value, bool | int | float):
        return 8
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):  # numpy arrays (torch tensors are not kept here)
        return int(value.nbytes)
    if isinstance(value, dict):
        return 64 + sum(approx_size(k) + approx_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 56 + sum(approx_size(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return 64 + sum(approx_size(getattr(value, f.name)) for f in dataclasses.fields(value))
    return sys.getsizeof(value)


class _LRU:
    """An ordered dict bounded in entries and in (estimated) bytes; the least recently used go first."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Any:
        item = self.items.get(key)
        if item is None:
            return None
        self.items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes:  # would evict everything and still not fit
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.items[key] = (value, size)
        self.bytes += size
        while len(self.items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self.items.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


class Memo:
    """Values by (kind, setup, item) in one LRU of at most `max_entries` entries and `max_bytes` bytes.
    `kinds` are reported by `stats` from the start (others once used); kinds in `off` are never
    remembered (`get_many` just computes them)."""

    def __init__(self, max_entries: int = CACHE_MAX_ENTRIES, max_bytes: int = CACHE_MAX_BYTES,
                 kinds: Sequence[str] = (), off: Collection[str] = ()) -> None:
        self._lru = _LRU(whole(max_entries, "cache max_entries", low=0), whole(max_bytes, "cache max_bytes", low=0))
        self._lock = threading.RLock()
        self.off = frozenset(off)
        self.hits: dict[str, int] = dict.fromkeys(kinds, 0)
        self.misses: dict[str, int] = dict.fromkeys(kinds, 0)

    def __len__(self) -> int:
        return len(self._lru.items)

    @property
    def nbytes(self) -> int:
        return self._lru.bytes

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def stats(self) -> dict:
        """Entries, bytes, limits, evictions, and hits / misses / hit rate per kind and in total."""
        with self._lock:
            out: dict = {"entries": len(self._lru.items), "bytes": self._lru.bytes,
                         "max_entries": self._lru.max_entries, "max_bytes": self._lru.max_bytes,
                         "evictions": self._lru.evictions}
            for kind in (*self.hits, "total"):
                hits = sum(self.hits.values()) if kind == "total" else self.hits[kind]
                misses = sum(self.misses.values()) if kind == "total" else self.misses[kind]
                out[kind] = {"hits": hits, "misses": misses,
                             "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None}
            return out

    def get_many(self, kind: str, setup: Hashable, items: Sequence[Hashable], compute: Callable[[list], list],
                 size: Callable[[Any], int] = approx_size, copy: Callable[[Any], Any] | None = None) -> list:
        """One value per item: remembered ones where (kind, setup, item) is known, the rest from one
        `compute(missing_items)` call (each missing item once, in first-seen order), then remembered."""
        if kind in self.off:
            return compute(list(items))
        copy = copy or (lambda v: v)
        out: list = [None] * len(items)
        missing: dict[Hashable, list[int]] = {}
        with self._lock:
            for i, item in enumerate(items):
                value = self._lru.get((kind, setup, item))
                if value is None:
                    missing.setdefault(item, []).append(i)
                else:
                    out[i] = copy(value)
            n_missing = sum(map(len, missing.values()))
            self.hits[kind] = self.hits.get(kind, 0) + len(items) - n_missing
            self.misses[kind] = self.misses.get(kind, 0) + n_missing
        if missing:
            computed = compute(list(missing))
            with self._lock:
                for (item, places), value in zip(missing.items(), computed, strict=True):
                    self._lru.put((kind, setup, item), value, size(value) + approx_size(item) + ENTRY_OVERHEAD)
                    for i in places:
                        out[i] = copy(value)
        return out
