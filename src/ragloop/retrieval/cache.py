"""A retrieval cache: question vectors, search results and answers, remembered per question.

    >>> from ragloop.retrieval.cache import RetrievalCache
    >>> r = Retriever.from_index("runs/idx", cache=RetrievalCache(max_entries=4096, max_bytes=64 << 20))
    >>> r.retrieve(["Who won Super Bowl 50?"], k=5)      # searched
    >>> r.retrieve(["Who won Super Bowl 50?"], k=5)      # from the cache: the same rows, scores, passages
    >>> r.cache.stats()["results"]["hit_rate"]
    0.5

What is cached, each in one LRU bounded both in entries and in bytes (least recently used goes first):

    results      a question's Retrieved row (rows, scores, passages), for `Retriever.retrieve` calls that
                 encode their own questions. A caller that passes `vectors=` (the RAG model, whose
                 question encoder may be training) is never served from the cache: its vectors are its own.
    embeddings   a question's vector from the retriever's own question encoder (not while it trains).
    answers      a question's `Answer` from `RAG.answer`, when the model's retriever holds the cache.

The key of every entry holds everything its value depends on, so nothing is ever invalidated by
hand and nothing stale is served:

    the question, k, the mode (and fusion and weight for hybrid), `fill`
    the index          `Index.generation`: new for every loaded index object and on every in-memory
                       change (`Index.add` reloads, `Index.reencode` bumps it); swapping `retriever.index`
                       or `model.index` swaps it too. And its FAISS search parameters.
    the encoder        `module_state`: an identity stamp of the module object plus every parameter's and
                       buffer's (id, version counter, data pointer). torch bumps a tensor's version on
                       every in-place change (optimizer steps, `load_state_dict`), so a trained encoder
                       keys differently from the one before. (Writes through `tensor.data` bypass the
                       version counter; nothing in ragloop makes them.)
    the reranker       its name, max length, depth and `module_state` of its model
    answers also       `module_state` of the whole RAG model (generator, question encoder, copy head),
                       its config, num_beams and max_new_tokens

The on-disk cache (`directory=`, for `ragloop eval --cache-dir` / `eval-retrieval --cache-dir`) keys
by content instead, so it survives the process: the index manifest's file checksums (an index
changed in memory by `reencode` is not cached on disk), a hash of the encoder's and reranker's
weights, and the same settings. Each set of settings is one `.npz` file (written atomically) holding
the questions, rows and scores; an unreadable or inconsistent file is logged and ignored, and
rewritten.

A cached result equals the uncached one computed in the same batch. Results depend on batching in
their last float bits (encoders pad a batch; FAISS switches to BLAS for bigger batches), so a
question searched alone and the same question searched in a batch can differ there, with or
without a cache; only the questions missing from the cache are computed, together, in one batch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragloop.constants import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES
from ragloop.errors import RagloopError
from ragloop.io import atomic_write_bytes

if TYPE_CHECKING:
    from ragloop.model import RAG, Answer
    from ragloop.retrieval.index import Index
    from ragloop.retrieval.retriever import Retrieved, Retriever

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES = CACHE_MAX_ENTRIES, CACHE_MAX_BYTES
KINDS = ("results", "embeddings", "answers")
ENTRY_OVERHEAD = 256  # bytes charged per entry beyond its arrays and strings (key, tuple, dict slots)

# -- fingerprints ---------------------------------------------------------------------------------

_STAMPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NEXT_STAMP = itertools.count(1)
_stamp_lock = threading.Lock()


def _stamp(obj) -> int:
    """A number unique to this object for its lifetime (unlike `id`, never reused by a later object)."""
    with _stamp_lock:
        try:
            return _STAMPS[obj]
        except KeyError:
            _STAMPS[obj] = stamp = next(_NEXT_STAMP)
            return stamp


def module_state(module) -> tuple[int, int]:
    """Changes whenever a parameter or buffer of `module` is changed in place or replaced (see the
    module docstring). Cheap: one pass over the tensors' metadata, no data is read."""
    import torch

    tensors = itertools.chain(module.parameters(), module.buffers())
    return _stamp(module), hash(tuple((id(t), t._version, t.data_ptr()) for t in tensors
                                      if isinstance(t, torch.Tensor)))


def index_state(index: Index) -> tuple:
    return index.generation, tuple(sorted((str(k), str(v)) for k, v in index.backend.search_params.items()))


_DIGESTS: dict[tuple[int, int], str] = {}


def weights_digest(module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, bytes): the weights' identity across
    processes, for the on-disk cache. Remembered per `module_state`, so it is computed once per weights."""
    import torch

    state = module_state(module)
    if state not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        for name, value in sorted(module.state_dict().items(), key=lambda kv: kv[0]):
            for t in _plain_tensors(value):
                t = t.detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if len(_DIGESTS) > 64:  # stale states of weights that changed since
            _DIGESTS.clear()
        _DIGESTS[state] = h.hexdigest()
    return _DIGESTS[state]


def _plain_tensors(value):
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


def index_digest(index: Index) -> str | None:
    """The index folder's identity (its manifest's checksums), or None once its vectors changed in memory."""
    if index.changed_in_memory:
        return None
    m = index.manifest
    blob = json.dumps([m.get("files"), m.get("passages"), m["index"].get("factory"),
                       index.backend.search_params], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- the LRU --------------------------------------------------------------------------------------


class _LRU:
    """An ordered dict bounded in entries and in (estimated) bytes; the least recently used go first."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def get(self, key: Hashable):
        item = self.items.get(key)
        if item is None:
            return None
        self.items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value, size: int) -> None:
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


# -- the cache ------------------------------------------------------------------------------------


class RetrievalCache:
    """Question vectors, retrieval results and answers in one LRU of at most `max_entries` entries and
    `max_bytes` bytes; optionally, retrieval results also on disk under `directory`. See the module doc.
    `answers=False` leaves `RAG.answer` uncached (only retrieval is cached)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES,
                 directory: str | Path | None = None, answers: bool = True) -> None:
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RagloopError(f"cache {name} must be a whole number >= 0 (got {value!r})")
        self._lru = _LRU(max_entries, max_bytes)
        self._lock = threading.RLock()
        self.cache_answers = answers
        self.disk = DiskCache(directory) if directory is not None else None
        self.hits = dict.fromkeys(KINDS, 0)
        self.misses = dict.fromkeys(KINDS, 0)

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
            for kind in (*KINDS, "total"):
                hits = sum(self.hits.values()) if kind == "total" else self.hits[kind]
                misses = sum(self.misses.values()) if kind == "total" else self.misses[kind]
                out[kind] = {"hits": hits, "misses": misses,
                             "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None}
            if self.disk is not None:
                out["disk"] = {"directory": str(self.disk.directory), "hits": self.disk.hits,
                               "misses": self.disk.misses}
            return out

    def memo(self, kind: str, questions: Sequence[str], setup: Hashable, compute: Callable[[list[str]], list],
             size: Callable[[Any], int], copy: Callable[[Any], Any]) -> list:
        """One value per question: from the cache where (kind, setup, question) is there, the rest from
        one `compute(missing_questions)` call (each missing question once). Values are stored as computed
        and handed out through `copy`, so no caller can change what the cache holds."""
        out: list = [None] * len(questions)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, q in enumerate(questions):
                value = self._lru.get((kind, setup, q))
                if value is None:
                    missing.setdefault(q, []).append(i)
                else:
                    out[i] = copy(value)
            self.hits[kind] += len(questions) - sum(map(len, missing.values()))
            self.misses[kind] += sum(map(len, missing.values()))
        if missing:
            computed = compute(list(missing))
            with self._lock:
                for (q, places), value in zip(missing.items(), computed):
                    self._lru.put((kind, setup, q), value, size(value) + 2 * len(q) + ENTRY_OVERHEAD)
                    for i in places:
                        out[i] = copy(value)
        return out

    # -- retrieval -----------------------------------------------------------------------------

    def retrieve(self, retriever: Retriever, questions: list[str], k: int, mode: str, fill: bool,
                 progress: bool | None) -> Retrieved:
        """`retriever.retrieve` through the cache (checked arguments, no caller vectors)."""
        from ragloop.retrieval.retriever import Retrieved

        dense = mode != "bm25" or fill
        encoder = retriever.question_encoder if dense else None
        setup = (k, mode, fill, index_state(retriever.index), _mode_setup(retriever, mode),
                 module_state(encoder) if dense else None, _reranker_setup(retriever, k))

        def encode(missing: list[str]) -> np.ndarray | None:
            return self.question_vectors(encoder, missing, progress) if dense else None

        def search(missing: list[str]) -> list:
            if self.disk is not None:  # questions found on disk are not even encoded
                got = self.disk.retrieve(retriever, missing, k, mode, fill, encode, progress)
            else:
                got = retriever._retrieve(missing, k, mode, encode(missing), fill, progress)
            return [(got.rows[b].copy(), got.scores[b].copy(), tuple(got.passages[b])) for b in range(len(missing))]

        rows = self.memo("results", questions, setup, search, _result_size, lambda v: v)
        return Retrieved(np.stack([r[0] for r in rows]).copy(), np.stack([r[1] for r in rows]).copy(),
                         [list(r[2]) for r in rows])

    def question_vectors(self, encoder, questions: list[str], progress: bool | None) -> np.ndarray:
        """The encoder's vectors for `questions`, remembered while the encoder is in eval mode."""

        def encode(missing: list[str]) -> list:
            return list(encoder.encode(missing, batch_size=128, progress=progress, desc="encoding questions"))

        if encoder.training:  # weights change every step: remembering them would only push out the rest
            return np.stack(encode(questions))
        vecs = self.memo("embeddings", questions, module_state(encoder), encode, lambda v: v.nbytes, lambda v: v)
        return np.stack(vecs).astype(np.float32, copy=True)

    # -- answers -------------------------------------------------------------------------------

    def answers(self, model: RAG, questions: list[str], k: int | None, num_beams: int, max_new_tokens: int,
                compute: Callable[[list[str]], list]) -> list:
        """`RAG.answer` through the cache; `compute` answers the questions that are not cached."""
        if not self.cache_answers:
            return compute(questions)
        retriever = model.retriever
        setup = (k, num_beams, max_new_tokens, module_state(model), index_state(retriever.index),
                 _mode_setup(retriever, retriever.mode), _reranker_setup(retriever, k or model.config.n_docs),
                 json.dumps(model.config.to_dict(), sort_keys=True, default=str))

        def copy(a: Answer) -> Answer:  # a passage's `copied` span is a dict too
            return replace(a, passages=deepcopy(a.passages))

        return self.memo("answers", questions, setup, compute, _answer_size, copy)


def _mode_setup(retriever: Retriever, mode: str) -> tuple:
    return (retriever.fusion, retriever.weight) if mode == "hybrid" else ()


def _reranker_setup(retriever: Retriever, k: int) -> tuple | None:
    r = retriever.reranker
    if r is None:
        return None
    model = getattr(r, "model", None)  # a stand-in without a torch model is known by its object alone
    return (r.name, getattr(r, "max_length", None), retriever.depth_for(k), _stamp(r),
            module_state(model) if model is not None else None)


def _text_bytes(p) -> int:
    return sum(len(s) for s in (p.id, p.doc_id, p.title, p.text, p.source)) + 200


def _result_size(value) -> int:
    rows, scores, passages = value
    return rows.nbytes + scores.nbytes + sum(_text_bytes(p) for p in passages)


def _answer_size(a) -> int:
    return len(a.question) + len(a.answer) + sum(len(str(v)) + 64 for p in a.passages for v in p.values())


# -- on disk --------------------------------------------------------------------------------------


class DiskCache:
    """Retrieval results on disk: one `.npz` per set of settings (index, encoder and reranker digests,
    k, mode, ...), holding `questions` (UTF-8 JSON), `rows` and `scores`. Written atomically; a file that
    cannot be read, or whose arrays disagree, is logged and treated as empty (then rewritten)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise RagloopError(f"cache directory {self.directory} is a file")
        self.hits = self.misses = 0

    def retrieve(self, retriever: Retriever, questions: list[str], k: int, mode: str, fill: bool,
                 encode: Callable[[list[str]], np.ndarray | None], progress: bool | None) -> Retrieved:
        from ragloop.retrieval.retriever import Retrieved

        dense = mode != "bm25" or fill
        try:
            reranker, index_id = _reranker_digest(retriever, k), index_digest(retriever.index)
        except _NoDigest:
            reranker = index_id = None
        settings = {"kind": "retrieve", "k": k, "mode": mode, "fill": fill, "index": index_id,
                    "mode_setup": list(_mode_setup(retriever, mode)),
                    "encoder": weights_digest(retriever.question_encoder) if dense else None,
                    "encoder_spec": retriever.question_encoder.spec.to_dict() if dense else None,
                    "reranker": reranker}

        def compute(missing: list[str]) -> tuple[np.ndarray, np.ndarray]:
            got = retriever._retrieve(missing, k, mode, encode(missing), fill, progress)
            return got.rows, got.scores

        if index_id is None:  # vectors changed in memory (or an unhashable reranker): nothing on disk fits
            return retriever._retrieve(questions, k, mode, encode(questions), fill, progress)
        rows, scores = self.lookup(settings, questions, compute)
        return Retrieved(rows, scores, retriever._passages(rows))

    def lookup(self, settings: dict, questions: list[str],
               compute: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores [B, K] for `questions`: those in the file for `settings`, the rest computed (in
        one call, each question once) and added to the file."""
        file = self.directory / (hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
                                 + ".npz")
        stored_q, stored_rows, stored_scores = self._read(file)
        where = {q: i for i, q in enumerate(stored_q)}
        missing = list(dict.fromkeys(q for q in questions if q not in where))
        absent = set(missing)
        self.misses += sum(q in absent for q in questions)
        self.hits += len(questions) - sum(q in absent for q in questions)
        if missing:
            new_rows, new_scores = compute(missing)
            if stored_rows is None:
                stored_rows, stored_scores = new_rows, new_scores
            else:
                stored_rows = np.concatenate([stored_rows, new_rows])
                stored_scores = np.concatenate([stored_scores, new_scores])
            stored_q = [*stored_q, *missing]
            where = {q: i for i, q in enumerate(stored_q)}
            self._write(file, stored_q, stored_rows, stored_scores)
        pick = [where[q] for q in questions]
        return stored_rows[pick].copy(), stored_scores[pick].copy()

    def _read(self, file: Path) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
        if not file.is_file():
            return [], None, None
        try:
            with np.load(file, allow_pickle=False) as data:
                questions = json.loads(bytes(data["questions"]).decode("utf-8"))
                rows, scores = data["rows"], data["scores"]
            ok = (isinstance(questions, list) and all(isinstance(q, str) for q in questions)
                  and rows.ndim == 2 and rows.shape == scores.shape and rows.shape[0] == len(questions)
                  and rows.dtype == np.int64 and scores.dtype == np.float32)
            if not ok:
                raise ValueError("arrays and questions disagree")
            return questions, rows, scores
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            log.warning("retrieval cache %s is unreadable (%s: %s); ignoring it", file, type(e).__name__,
                        str(e)[:120])
            return [], None, None

    def _write(self, file: Path, questions: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, questions=np.frombuffer(json.dumps(questions).encode("utf-8"), dtype=np.uint8),
                 rows=rows.astype(np.int64), scores=scores.astype(np.float32))
        try:
            atomic_write_bytes(file, buf.getvalue())
        except OSError as e:  # a cache that cannot be written is only a slower run
            log.warning("cannot write the retrieval cache %s (%s)", file, e)


def _reranker_digest(retriever: Retriever, k: int) -> list | None:
    r = retriever.reranker
    if r is None:
        return None
    if getattr(r, "model", None) is None:
        raise _NoDigest  # no weights to fingerprint across processes: not cached on disk
    return [weights_digest(r.model), getattr(r, "max_length", None), retriever.depth_for(k)]


class _NoDigest(Exception):
    pass


def rag_contexts(model: RAG, questions: list[str], k: int | None):
    """The passages and raw doc scores [B, K] `model.retrieve` gives, from the on-disk cache of
    `model.retriever.cache` when it has one (keyed by the index, the question (and trained passage)
    encoder weights, the reranker and the retrieval settings). For evaluation: no gradient."""
    import torch

    cache = getattr(getattr(model, "retriever", None), "cache", None)
    disk = cache.disk if cache is not None else None
    index_id = index_digest(model.index) if disk is not None else None
    reranker = None
    if index_id is not None:
        try:
            reranker = _reranker_digest(model.retriever, model.config.n_docs if k is None else k)
        except _NoDigest:
            index_id = None
    if index_id is None:
        got = model.retrieve(questions, k)
        return got.passages, got.doc_scores
    from ragloop.retrieval.retriever import check_k

    k = min(check_k(model.config.n_docs if k is None else k), len(model.index))
    retriever = model.retriever
    settings = {"kind": "rag", "k": k, "index": index_id, "search_mode": model.config.search_mode,
                "mode_setup": list(_mode_setup(retriever, retriever.mode)),
                "question_encoder": weights_digest(model.question_encoder),
                "passage_encoder": (weights_digest(model.passage_encoder)
                                    if model.config.train_passage_encoder and model.passage_encoder is not None
                                    else None),
                "reranker": reranker}

    def compute(missing: list[str]) -> tuple[np.ndarray, np.ndarray]:
        got = model.retrieve(missing, k)
        return got.rows.astype(np.int64), got.doc_scores.detach().float().cpu().numpy()

    rows, scores = disk.lookup(settings, questions, compute)
    return retriever._passages(rows), torch.from_numpy(scores)
