"""Fingerprints: what a cache key holds so that nothing stale is ever served.

    >>> from ragloop.cache.fingerprint import module_state, stamp, weights_digest
    >>> key = (stamp(index), module_state(encoder.model))   # in-process: changes on every in-place update
    >>> weights_digest(encoder.model)                        # across processes: a hash of the weights
    '3f0c...'

`stamp(obj)`           a number unique to the object for its lifetime (unlike `id`, never reused).
`module_state(module)` the module's stamp plus every parameter's and buffer's (id, version counter, data
                       pointer). torch bumps a tensor's version on every in-place change (optimizer
                       steps, `load_state_dict`), so a trained module keys differently from the one
                       before. Writes through `tensor.data` bypass the version counter; nothing in
                       ragloop makes them. Cheap: tensor metadata only, no data is read.
`weights_digest(module)` a hash of every parameter and buffer (names, shapes, dtypes, bytes), for keys
                       that must survive the process (the disk store); remembered per `module_state`.
`content_digest(value)` a hash of a JSON-able value (settings dicts).

torch is imported inside the functions that need it: a BM25-only process never loads it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import weakref
from collections.abc import Iterator
from typing import Any

_STAMPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NEXT_STAMP = itertools.count(1)
_lock = threading.Lock()
_DIGESTS: dict[tuple[int, int], str] = {}
_MAX_DIGESTS = 64  # digests of weights that changed since are dropped past this many


def stamp(obj: Any) -> int:
    """A number unique to this object for its lifetime (unlike `id`, never reused by a later object)."""
    with _lock:
        try:
            return _STAMPS[obj]
        except KeyError:
            _STAMPS[obj] = value = next(_NEXT_STAMP)
            return value


def module_state(module: Any) -> tuple[int, int]:
    """Changes whenever a parameter or buffer of the torch `module` is changed in place or replaced."""
    import torch

    tensors = itertools.chain(module.parameters(), module.buffers())
    return stamp(module), hash(tuple((id(t), t._version, t.data_ptr()) for t in tensors
                                     if isinstance(t, torch.Tensor)))


def weights_digest(module: Any) -> str:
    """A hash of every parameter and buffer of the torch `module`: its weights' identity across processes.
    Computed once per `module_state`."""
    import torch

    state = module_state(module)
    with _lock:
        known = _DIGESTS.get(state)
    if known is not None:
        return known
    h = hashlib.blake2b(digest_size=16)
    for name, value in sorted(module.state_dict().items(), key=lambda kv: kv[0]):
        for t in _plain_tensors(value):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    with _lock:
        if len(_DIGESTS) >= _MAX_DIGESTS:
            _DIGESTS.clear()
        _DIGESTS[state] = digest = h.hexdigest()
    return digest


def _plain_tensors(value: Any) -> Iterator[Any]:
    """The ordinary tensors in a state-dict value: int8-quantized layers store tuples of quantized
    tensors (their integers and scales are what identifies them) and dtypes beside their weights."""
    import torch

    if isinstance(value, tuple | list):
        for v in value:
            yield from _plain_tensors(v)
    elif isinstance(value, torch.Tensor) and value.is_quantized:
        yield value.int_repr()
        if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            yield value.q_per_channel_scales()
            yield value.q_per_channel_zero_points()
        else:
            yield torch.tensor([value.q_scale(), value.q_zero_point()], dtype=torch.float64)
    elif isinstance(value, torch.Tensor):
        yield value


def content_digest(value: Any, length: int = 64) -> str:
    """sha256 of `value` as sorted-key JSON (non-JSON values by `str`), its first `length` hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]
