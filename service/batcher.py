"""A standalone dynamic batcher: packs items from concurrent callers into shared batch calls.

- One queue, bounded: `submit` fails fast with QueueFull instead of letting latency grow without end.
- A batch is bounded by an item count and a cost budget (source tokens). A lone item runs at once;
  while batches run, new items queue up and form the next batch as soon as a slot frees.
- `concurrency` batch calls may run at the same time (one per engine worker).
- Identical items (same key) that are queued or running are computed once and shared.
- Items whose every caller has gone (cancelled) are dropped before they reach a batch.
- With a queue timeout, an item that waited longer than that fails with QueueTimeout instead of
  being computed late (Triton's queue policy): under overload, its caller has likely given up.
- A batch call that raises fails every item in that batch; the worker loop itself never dies.

It knows nothing of the web framework or the engine: `run_batch` is any async callable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue cannot take these items now; try again later."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new items."""


class QueueTimeout(Exception):
    """An item waited longer than the queue timeout and was not computed."""


@dataclass(frozen=True)
class BatchStats:
    size: int
    cost: int
    seconds: float
    failed: bool


@dataclass(frozen=True)
class Outcome(Generic[Result]):
    value: Result
    queue_seconds: float
    inference_seconds: float


@dataclass(eq=False)
class _Entry(Generic[Item, Result]):
    item: Item
    key: Hashable
    cost: int
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)
    waiters: int = 1


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch_size: int,
        max_batch_cost: int,
        max_queue: int,
        concurrency: int = 1,
        queue_timeout: float = 0.0,
        cost: Callable[[Item], int] = lambda item: 1,
        key: Callable[[Item], Hashable] = id,
        on_batch: Callable[[BatchStats], None] = lambda stats: None,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        if min(max_batch_size, max_batch_cost, max_queue, concurrency) < 1:
            raise ValueError("batch size, batch cost, queue size and concurrency must be positive")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_batch_cost = max_batch_cost
        self._max_queue = max_queue
        self._concurrency = concurrency
        self._queue_timeout = queue_timeout
        self._cost = cost
        self._key = key
        self._on_batch = on_batch
        self._on_wait = on_wait
        self._pending: deque[_Entry] = deque()
        self._by_key: dict[Hashable, _Entry] = {}
        self._running: set[asyncio.Task] = set()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closing = False

    # --- state, for health checks and metrics
    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def has_room(self, items: int) -> bool:
        """Whether `items` new items would fit in the queue now: a cheap check before costly work."""
        return len(self._pending) + items <= self._max_queue

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    # --- lifecycle
    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

    async def close(self) -> None:
        """Stops taking items, finishes everything queued and running, then stops the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker

    # --- submitting
    async def submit(self, items: Sequence[Item]) -> list[Outcome[Result]]:
        """Queues all items (all or none), waits for their results in order.

        Raises QueueFull or BatcherClosed before queueing anything, or the batch call's exception.
        Cancelling the caller withdraws its interest: items nobody waits for are not computed.
        """
        entries = self._enqueue(items)
        try:
            # shield: one caller leaving must not cancel a result that others share.
            if len(entries) == 1:  # the common case, without gather's extra future
                return [await asyncio.shield(entries[0].future)]
            return list(await asyncio.gather(*(asyncio.shield(entry.future) for entry in entries)))
        except asyncio.CancelledError:
            for entry in entries:
                entry.waiters -= 1
            raise

    def _enqueue(self, items: Sequence[Item]) -> list[_Entry]:
        if self._closing:
            raise BatcherClosed("the service is shutting down")
        keyed = [(self._key(item), item) for item in items]
        new_keys = {key for key, _ in keyed if key not in self._by_key}
        if len(self._pending) + len(new_keys) > self._max_queue:
            raise QueueFull(f"{len(self._pending)} items queued, room for {self._max_queue}")
        loop = asyncio.get_running_loop()
        entries = []
        for key, item in keyed:
            entry = self._by_key.get(key)
            if entry is None:
                entry = _Entry(item=item, key=key, cost=self._cost(item), future=loop.create_future(), waiters=0)
                self._by_key[key] = entry
                self._pending.append(entry)
            entry.waiters += 1
            entries.append(entry)
        if entries:
            self._wakeup.set()
        return entries

    # --- the worker
    async def _work(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        while True:
            await slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                slots.release()
                raise
            if batch is None:
                slots.release()
                break
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: slots.release())
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _next_batch(self) -> list[_Entry] | None:
        """Waits for work; returns None once closing with nothing left."""
        while True:
            self._drop_abandoned()
            if self._pending:
                break
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        batch, cost = [], 0
        expired_before = time.perf_counter() - self._queue_timeout if self._queue_timeout > 0 else float("-inf")
        while self._pending and len(batch) < self._max_batch_size:
            entry = self._pending[0]
            if batch and cost + entry.cost > self._max_batch_cost:
                break
            self._pending.popleft()
            if entry.waiters <= 0:
                self._forget(entry)
                entry.future.cancel()
                continue
            if entry.enqueued_at < expired_before:
                self._forget(entry)
                entry.future.set_exception(QueueTimeout(f"waited over {self._queue_timeout:g}s for the engine"))
                continue
            batch.append(entry)
            cost += entry.cost
        return batch or await self._next_batch()

    def _drop_abandoned(self) -> None:
        while self._pending and self._pending[0].waiters <= 0:
            entry = self._pending.popleft()
            self._forget(entry)
            entry.future.cancel()

    def _forget(self, entry: _Entry) -> None:
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]

    async def _execute(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        failed = True
        try:
            results = await self._run_batch([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch call returned {len(results)} results for {len(batch)} items")
            seconds = time.perf_counter() - started
            for entry, value in zip(batch, results):
                if not entry.future.done():
                    entry.future.set_result(Outcome(value, started - entry.enqueued_at, seconds))
            failed = False
        except Exception as error:  # noqa: BLE001 - the error belongs to this batch's callers
            log.error("batch of %d items failed: %s: %s", len(batch), error.__class__.__name__, error)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
        finally:
            for entry in batch:
                self._forget(entry)
            _call_hook(self._on_batch, BatchStats(len(batch), sum(e.cost for e in batch), time.perf_counter() - started, failed))
            for entry in batch:
                _call_hook(self._on_wait, started - entry.enqueued_at)


def _call_hook(hook: Callable, *args) -> None:
    try:
        hook(*args)
    except Exception:  # noqa: BLE001 - a metrics hook must never take the worker down
        log.exception("batcher hook %s failed", getattr(hook, "__name__", hook))
