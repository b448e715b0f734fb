"""The Ingress's calls: requests queued while the calls in flight run go together in the next call.

Each request stays whole (an item); this only decides how many handle calls carry them, since a call
costs CPU whatever it carries. The model replica forms the batches (serve_app/deployments/model.py).
A call is formed when a slot frees up and holds everything queued by then: a lone request goes out at
once, and under load a call grows to whatever arrived while the previous one ran. `gather_s`: while
another call is still running (the service is busy, so more requests are on their way: the clients just
answered send their next ones), a call that is not full waits that long for them before it goes. Pure
asyncio (no Ray), so it is unit-tested directly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """More items are waiting than `max_queued`: the caller should shed load (429 + Retry-After), not wait."""


class Coalescer(Generic[Item, Result]):
    #: Weight of the newest call in the service-rate estimate (an exponential moving average).
    RATE_WEIGHT = 0.2
    #: Retry-After is kept within these seconds.
    RETRY_AFTER_RANGE = (1, 60)

    def __init__(
        self,
        handler: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        max_size: int,
        slots: int = 1,
        size_of: Callable[[Item], int] = lambda item: 1,
        max_queued: int | None = None,
        gather_s: float = 0.0,
    ) -> None:
        if max_size < 1 or slots < 1 or (max_queued is not None and max_queued < 1):
            raise ValueError("max_size, slots and max_queued must be >= 1")
        if gather_s < 0:
            raise ValueError("gather_s must be >= 0")
        self.gather_s = gather_s
        self.handler = handler
        self.max_size = max_size
        self.max_queued = max_queued
        self.size_of = size_of
        self.slots = slots
        self._slots = asyncio.Semaphore(slots)
        self._in_flight = 0  # summed size of the items in running calls
        self._rate: float | None = None  # items per second per call slot, measured
        self._queue: deque[tuple[Item, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: Item) -> Result:
        """Queue one item; resolves with its result, or raises the batch's exception (or the exception the
        handler returned in this item's place). Raises QueueFull at once when `max_queued` items are already
        waiting."""
        if self.max_queued is not None and len(self._queue) >= self.max_queued:
            self._drop_cancelled()  # callers that timed out or left no longer hold a place
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} requests already waiting")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._form_batches())
        return await future

    def _drop_cancelled(self) -> None:
        # A queued future is only ever finished by its caller giving up (cancellation); results come after
        # `_take_batch` has taken it off the queue.
        self._queue = deque(entry for entry in self._queue if not entry[1].done())

    def retry_after_s(self) -> int:
        """Seconds until the work queued and running now is done, at the measured service rate (1 before
        any call finished), within RETRY_AFTER_RANGE: what a refused client should wait."""
        low, high = self.RETRY_AFTER_RANGE
        if not self._rate:
            return low
        backlog = self._in_flight + sum(self.size_of(item) for item, future in self._queue if not future.done())
        return max(low, min(high, math.ceil(backlog / (self._rate * self.slots))))

    def _take_batch(self, size: int = 0) -> list[tuple[Item, asyncio.Future]]:
        """Queued items, in order, while they fit in `max_size` after `size` (at least one when size is 0)."""
        batch: list[tuple[Item, asyncio.Future]] = []
        while self._queue:
            item, future = self._queue[0]
            if future.cancelled():  # its caller gave up (timeout, disconnect): drop it
                self._queue.popleft()
                continue
            item_size = self.size_of(item)
            if (batch or size) and size + item_size > self.max_size:
                break
            self._queue.popleft()
            batch.append((item, future))
            size += item_size
        return batch

    async def _form_batches(self) -> None:
        while True:
            await self._slots.acquire()
            batch: list[tuple[Item, asyncio.Future]] = []
            while not batch:
                batch = self._take_batch()
                if not batch:
                    self._arrived.clear()
                    await self._arrived.wait()
            if self.gather_s and self._in_flight:
                size = sum(self.size_of(item) for item, _ in batch)
                if size < self.max_size:
                    await asyncio.sleep(self.gather_s)
                    batch += self._take_batch(size)
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        released = False
        size = sum(self.size_of(item) for item, _ in batch)
        self._in_flight += size
        started = time.monotonic()
        try:
            results = await self.handler([item for item, _ in batch])
            elapsed = time.monotonic() - started
            if elapsed > 0:
                rate = size / elapsed
                self._rate = rate if self._rate is None else self._rate + self.RATE_WEIGHT * (rate - self._rate)
            if len(results) != len(batch):
                raise RuntimeError(f"handler returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller in the batch gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            # Send the next batch before answering this one: answering wakes every caller (each then
            # writes its HTTP response), and the model would sit idle behind all of them. Releasing the
            # slot and yielding once lets `_form_batches` take the queue and start the next call first.
            self._slots.release()
            released = True
            await asyncio.sleep(0)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):  # the handler failed this item alone
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= size
            if not released:
                self._slots.release()
