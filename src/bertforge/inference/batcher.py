"""Micro-batching for the HTTP service: requests from many clients coalesce into one model call.

Each request puts (key, items) on a bounded queue and awaits its future. One worker takes the oldest
request, then keeps collecting requests with the same key (same pipeline and options) for at most
`max_wait_s` or until `max_items` items, runs them as one batch in a single model thread, and hands
every request its slice of the results. A full queue rejects at once (the caller answers 503) instead
of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class Overloaded(RuntimeError):
    """The queue is full: the service is at capacity."""


@dataclass
class _Request:
    key: Hashable
    items: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # recent batch sizes (bounded)


class MicroBatcher:
    """Args:
        run_batch: (key, items) -> results, one per item, in order; runs in the model thread.
        max_items: Most items (texts) in one model call.
        max_wait_s: How long the first request of a batch waits for company.
        max_queue: Most requests waiting; beyond it `submit` raises Overloaded.
    """

    def __init__(self, run_batch: Callable[[Hashable, list], list], *, max_items: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 256) -> None:
        self.run_batch = run_batch
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertforge-model")
        self.stats = BatchStats()
        self._held: _Request | None = None  # a request taken from the queue that did not fit the last batch
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, key: Hashable, items: list) -> list:
        request = _Request(key, items, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests already waiting") from None
        return await request.future

    async def run_alone(self, fn: Callable[[], object]) -> object:
        """Run one call on the model thread (for requests that are not batched)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            request, self._held = self._held, None
            return request
        try:
            if timeout is None:
                return await self.queue.get()
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch = [first]
            count = len(first.items)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_items:
                request = await self._next(max(0.0, deadline - loop.time()))
                if request is None:
                    break
                if request.key != first.key or count + len(request.items) > self.max_items:
                    self._held = request  # starts the next batch
                    break
                batch.append(request)
                count += len(request.items)
            live = [r for r in batch if not r.future.done()]  # timed-out callers no longer wait
            if not live:
                continue
            items = [item for r in live for item in r.items]
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, first.key, items)
            except Exception as exc:  # handed to each caller, who turns it into an HTTP answer
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.batch_sizes = (self.stats.batch_sizes + [len(items)])[-1000:]
            start = 0
            for r in live:
                if not r.future.done():
                    r.future.set_result(results[start : start + len(r.items)])
                start += len(r.items)
