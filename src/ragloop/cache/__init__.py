"""Caching as a leaf: a memo (in-memory LRU), a disk store, and the fingerprints their keys are made of.

    >>> from ragloop.cache import Memo, module_state
    >>> memo = Memo()                                      # 4096 entries, 64 MiB (ragloop.constants)
    >>> memo.get_many("vectors", module_state(encoder.model), questions, encode)

It imports nothing from ragloop but errors, io and constants: each layer above builds its own keys
(retrieval/cache.py for searches, answer_cache.py for answers) and wraps its own work with it.

    memo.py         Memo: values by (kind, setup, item), bounded in entries and bytes, hit/miss stats
    disk.py         DiskStore: arrays per key, one .npz per settings, a size cap with LRU eviction
    fingerprint.py  stamp, module_state, weights_digest, content_digest
"""

from ragloop.cache.disk import DISK_MAX_BYTES, DiskStore
from ragloop.cache.fingerprint import content_digest, module_state, stamp, weights_digest
from ragloop.cache.memo import Memo, approx_size

__all__ = ["DISK_MAX_BYTES", "DiskStore", "Memo", "approx_size", "content_digest", "module_state", "stamp",
           "weights_digest"]
