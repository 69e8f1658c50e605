"""Micro-batching: requests that arrive close together share one model call.

    >>> batcher = MicroBatcher(lambda questions, k: model.answer(questions, k=k), max_batch=16, max_wait_ms=10)
    >>> answer = await batcher.submit("Who won Super Bowl 50?", key=2)      # inside the event loop

One worker task takes the first waiting request, then collects more for up to `max_wait_ms` (or
until `max_batch` are in hand), groups them by key (requests with another `k` cannot share a call)
and runs `fn(items, key)` once per group in a thread, so the event loop keeps accepting requests
while the model works. While a batch runs, new requests queue up; the next batch takes them at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragloop.errors import RagloopError

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """What the batcher has done so far (shown by `GET /health`, read by the load benchmark)."""

    batches: int = 0  # model calls
    items: int = 0  # requests answered in them
    max_batch_size: int = 0
    errors: int = 0  # model calls that raised
    busy_s: float = 0.0  # seconds spent inside the model
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many calls had it

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.max_batch_size = max(self.max_batch_size, size)
        self.busy_s += seconds
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.items,
            "mean_batch_size": round(self.items / self.batches, 3) if self.batches else 0.0,
            "max_batch_size": self.max_batch_size,
            "errors": self.errors,
            "busy_s": round(self.busy_s, 3),
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class _Pending:
    item: Any
    key: Hashable
    future: asyncio.Future


class MicroBatcher:
    """Collect concurrent `submit` calls into batched `fn(items, key) -> results` calls.

    `fn` gets a list of items sharing one key and must return one result per item, in order. It runs
    in `executor` (a one-thread pool by default: the model sees one call at a time). If a batched call
    raises, each of its items is retried alone, so one bad request cannot fail its neighbours.
    """

    def __init__(self, fn: Callable[[list[Any], Hashable], Sequence[Any]], max_batch: int = 16,
                 max_wait_ms: float = 10.0, executor: concurrent.futures.Executor | None = None) -> None:
        if max_batch < 1:
            raise RagloopError(f"max batch size must be at least 1 (got {max_batch})")
        if not 0 <= max_wait_ms <= 10_000:
            raise RagloopError(f"max wait must be between 0 and 10000 ms (got {max_wait_ms})")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ragloop-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Any, key: Hashable = None) -> Any:
        """Queue one item and wait for its result (or the exception its call raised)."""
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, key, future))
        return await future

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._loop, self._queue = loop, asyncio.Queue()
        self._worker = loop.create_task(self._work(), name="ragloop-micro-batcher")

    async def stop(self) -> None:
        """Cancel the worker, fail what is still queued, and shut an executor of our own down."""
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("the server is shutting down"))
        self._worker = self._queue = self._loop = None
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the worker -----------------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            groups: dict[Hashable, list[_Pending]] = {}
            for pending in batch:
                if not pending.future.done():  # a client that went away needs no answer
                    groups.setdefault(pending.key, []).append(pending)
            for key, group in groups.items():
                await self._call(key, group)

    async def _call(self, key: Hashable, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self.executor, self._checked, [p.item for p in group], key)
        except Exception as e:  # handed to the waiting requests, never lost
            self.stats.errors += 1
            if len(group) > 1:
                log.info("a batch of %d failed (%s); retrying its requests one by one", len(group), e)
                for pending in group:
                    await self._call(key, [pending])
                return
            if not group[0].future.done():
                group[0].future.set_exception(e)
            return
        self.stats.record(len(group), time.perf_counter() - start)
        for pending, result in zip(group, results):
            if not pending.future.done():
                pending.future.set_result(result)

    def _checked(self, items: list[Any], key: Hashable) -> list[Any]:
        results = list(self.fn(items, key))
        if len(results) != len(items):
            raise RuntimeError(f"batched call returned {len(results)} results for {len(items)} items")
        return results
