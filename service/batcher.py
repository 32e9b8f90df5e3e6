"""A standalone dynamic batcher: packs items from concurrent callers into shared batch calls.

- One bounded queue: `submit` fails fast with QueueFull instead of letting latency grow without end.
- Fair, not first-come: the queue is kept per client and, within a client, per request. Batches are
  formed item by item from the client that has been served the least cost (source tokens) so far, a
  start-time fair queue (the fair queuing of network schedulers; vLLM and Triton schedule by priority
  or fairness for the same reason), and a client's requests take turns. A client that arrives starts
  level with the least-served active one, so it gets no credit for having been idle; a client's new
  requests go before its requests that have had a turn (first come first served among them). A
  one-sentence request arriving behind bulk documents goes into the next batch instead of waiting for
  every queued document; batches still fill, since every client with work is served in turn.
- A batch is bounded by an item count and a cost budget (source tokens). A lone item runs at once;
  while batches run, new items queue up and form the next batch as soon as a worker frees.
- `concurrency` worker threads each run one blocking batch call at a time (one per engine worker).
- Identical items (same key) that are queued or running are computed once and shared.
- Items whose every caller has gone (cancelled) are dropped before they reach a batch.
- With a queue timeout, an item that waited longer than that fails with QueueTimeout instead of
  being computed late (Triton's queue policy): under overload, its caller has likely given up.
- A batch call that raises fails every item in that batch; a worker never dies.

Why threads and not event-loop tasks: the batch cycle (take a batch, run it, take the next) must not
wait for the event loop. Under a flood of requests one loop iteration can take tens of milliseconds,
and an asyncio worker needs several iterations per batch, so a fast engine (a GPU, or the toy model)
would sit idle between batches and good throughput would collapse. Here the workers take batches and
run them on their own; the loop is needed only to queue items and, once per batch, to hand out results.

It knows nothing of the web framework or the engine: `run_batch` is any blocking callable.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
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
    tags: tuple = ()  # the `tag` of every submit the batch served (trace contexts, to link the batch to its requests)


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
    queue: deque | None = None  # the request queue it waits in; None once taken or withdrawn
    place: tuple[Hashable, Hashable] = (None, None)  # (client, request) of that queue
    tags: list | None = None  # the submitters' tags, when they gave one
    short: bool = False  # from a short request (interactive): see Batcher.submit


class _Flow:
    """One client's queued entries: a queue per request, and the cost it has been served (its virtual time);
    `turn` tells its current place in the batcher's heap from stale ones. Requests that have not had a turn
    yet (`fresh`, first come first served) go before those in the rotation (`requests`, round-robin)."""

    __slots__ = ("fresh", "requests", "served", "turn")

    def __init__(self, served: float) -> None:
        self.fresh: OrderedDict[Hashable, deque[_Entry]] = OrderedDict()
        self.requests: OrderedDict[Hashable, deque[_Entry]] = OrderedDict()
        self.served = served
        self.turn = 0

    def __bool__(self) -> bool:
        return bool(self.fresh or self.requests)

    def queue_of(self, request: Hashable) -> deque[_Entry] | None:
        queue = self.fresh.get(request)
        return queue if queue is not None else self.requests.get(request)

    def drop(self, request: Hashable) -> None:
        if request in self.fresh:
            del self.fresh[request]
        else:
            del self.requests[request]


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
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
        # Guarded by _lock: the queues, the key index, the waiter counts and _closing.
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._flows: dict[Hashable, _Flow] = {}  # clients with queued work
        self._turns: list[tuple[float, int, Hashable]] = []  # heap of (served, turn, client): least served first
        self._turn_counter = itertools.count()
        self._virtual_time = 0.0  # the served cost of the last client picked: where newcomers start
        self._queued = 0
        self._by_key: dict[Hashable, _Entry] = {}
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- state, for health checks and metrics
    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def max_queue(self) -> int:
        return self._max_queue

    def has_room(self, items: int) -> bool:
        """Whether `items` new items would fit in the queue now: a cheap check before costly work."""
        return self._queued + items <= self._max_queue

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # --- lifecycle
    def start(self) -> None:
        """Starts the workers; call it from the event loop that will submit and await."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{index}", daemon=True) for index in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Stops taking items, finishes everything queued and running, then stops the workers."""
        with self._lock:
            self._closing = True
            self._work_ready.notify_all()
        threads = list(self._threads)
        if threads:
            await asyncio.to_thread(_join_all, threads)
            await asyncio.sleep(0)  # the workers' last hand-outs run on the loop

    # --- submitting (on the event loop)
    async def submit(
        self,
        items: Sequence[Item],
        *,
        client: Hashable = None,
        request: Hashable = None,
        headroom: int = 0,
        new_request: bool = True,
        tag: object = None,
        short: bool = False,
    ) -> list[Outcome[Result]]:
        """Queues all items (all or none), waits for their results in order.

        `client` and `request` name the queues the items wait in (batches take turns across clients, then
        across a client's requests); a request left None is this call alone. `headroom`: the items are
        queued only if that much room is left after them (a long request's later windows leave room for
        new requests); `new_request`: these are the request's first items (a later window says False); `tag`: any
        value the batch hook should see for every batch these items run in (BatchStats.tags); `short`: these items
        are a whole short request (an interactive one): a batch that starts with short items takes only short
        items, so the request runs at once in a small batch instead of in one filled with documents' sentences.
        Raises QueueFull or BatcherClosed before queueing anything, or the batch call's exception.
        Cancelling the caller withdraws its interest: items nobody waits for are not computed.
        """
        entries = self._enqueue(items, client, object() if request is None else request, headroom, new_request, tag, short)
        try:
            # shield: one caller leaving must not cancel a result that others share.
            if len(entries) == 1:  # the common case, without gather's extra future
                return [await asyncio.shield(entries[0].future)]
            return list(await asyncio.gather(*(asyncio.shield(entry.future) for entry in entries)))
        except asyncio.CancelledError:
            with self._lock:
                for entry in entries:
                    entry.waiters -= 1
                    if entry.waiters == 0:
                        # Withdrawn at once, not when a worker next looks: a departed client's sentences must
                        # not hold queue room (and turn the next request away with 429).
                        self._forget(entry)
                        if entry.queue is not None:  # else already taken into a batch
                            self._withdraw(entry)
            raise

    def _withdraw(self, entry: _Entry) -> None:
        """Takes a queued entry out of its request queue, dropping queues and clients left empty."""
        queue = entry.queue
        assert queue is not None
        queue.remove(entry)
        entry.queue = None
        self._queued -= 1
        if not queue:
            client, request = entry.place
            flow = self._flows[client]
            flow.drop(request)
            if not flow:
                del self._flows[client]

    def _enqueue(
        self,
        items: Sequence[Item],
        client: Hashable,
        request: Hashable,
        headroom: int = 0,
        new_request: bool = True,
        tag: object = None,
        short: bool = False,
    ) -> list[_Entry]:
        keyed = [(self._key(item), item) for item in items]
        loop = self._loop or asyncio.get_running_loop()
        entries = []
        with self._lock:
            if self._closing:
                raise BatcherClosed("the service is shutting down")
            new_keys = {key for key, _ in keyed if key not in self._by_key}
            if self._queued + len(new_keys) > self._max_queue - headroom:
                raise QueueFull(f"{self._queued} items queued, room for {self._max_queue}")
            queue: deque[_Entry] | None = None
            for key, item in keyed:
                entry = self._by_key.get(key)
                if entry is None:
                    if queue is None:
                        flow = self._flows.get(client)
                        if flow is None:
                            flow = self._flows[client] = _Flow(self._virtual_time)
                            self._schedule(client, flow)
                        queue = flow.queue_of(request)
                        if queue is None:
                            # A request's first items go before the client's requests that have had a turn (first
                            # come first served among such newcomers): a short request is into the next batch. A
                            # long request's later windows join the rotation.
                            queue = deque()
                            (flow.fresh if new_request else flow.requests)[request] = queue
                    entry = _Entry(item=item, key=key, cost=self._cost(item), future=loop.create_future(), waiters=0, short=short)
                    entry.queue, entry.place = queue, (client, request)
                    self._by_key[key] = entry
                    queue.append(entry)
                    self._queued += 1
                entry.waiters += 1
                if tag is not None:
                    if entry.tags is None:
                        entry.tags = [tag]
                    else:
                        entry.tags.append(tag)  # repeats are dropped per batch (_execute)
                entries.append(entry)
            if entries:
                self._work_ready.notify()
        return entries

    # --- the workers (threads)
    def _work(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            batch, expired = taken
            try:
                if expired:
                    timeout = QueueTimeout(f"waited over {self._queue_timeout:g}s for the engine")
                    self._hand_out(expired, None, timeout, 0.0, 0.0)
                if batch:
                    self._execute(batch)
            except Exception as failure:
                log.exception("batcher worker error; going on")
                # Whatever failed, nobody is left waiting: callers not yet answered get the error.
                self._hand_out(batch, None, failure, 0.0, 0.0)

    def _next_batch(self) -> tuple[list[_Entry], list[_Entry]] | None:
        """Waits for work; returns (batch, expired entries), or None once closing with nothing left."""
        with self._lock:
            while not self._queued:
                if self._closing:
                    return None
                self._work_ready.wait()
            batch: list[_Entry] = []
            expired: list[_Entry] = []
            cost = 0
            short_only = False  # the batch began with a short request's items: it takes no others
            expired_before = time.perf_counter() - self._queue_timeout if self._queue_timeout > 0 else float("-inf")
            while self._turns and len(batch) < self._max_batch_size:
                served, turn, client = self._turns[0]
                flow = self._flows.get(client)
                if flow is None or flow.turn != turn:
                    heapq.heappop(self._turns)  # stale: the client left or was rescheduled
                    continue
                fresh = bool(flow.fresh)
                request, queue = next(iter((flow.fresh or flow.requests).items()))
                entry = queue[0]
                abandoned = entry.waiters <= 0  # every caller left: dropped, never computed
                late = not abandoned and entry.enqueued_at < expired_before
                if not (abandoned or late) and batch and (cost + entry.cost > self._max_batch_cost or short_only and not entry.short):
                    break  # the batch is full by cost, or short and this is not; this client stays first in line
                heapq.heappop(self._turns)
                queue.popleft()
                entry.queue = None
                self._queued -= 1
                if abandoned or late:
                    self._forget(entry)
                    if late:
                        expired.append(entry)
                else:
                    self._virtual_time = flow.served
                    flow.served += entry.cost
                    short_only = short_only or (not batch and entry.short)
                    batch.append(entry)
                    cost += entry.cost
                if fresh:
                    del flow.fresh[request]
                    if queue:
                        flow.requests[request] = queue  # had its turn: into the rotation
                elif queue:
                    flow.requests.move_to_end(request)  # the client's requests take turns
                else:
                    del flow.requests[request]
                if flow:
                    self._schedule(client, flow)
                else:
                    del self._flows[client]  # an idle client keeps no credit
            if self._queued:
                self._work_ready.notify()  # more work: wake another idle worker
            return batch, expired

    def _schedule(self, client: Hashable, flow: _Flow) -> None:
        """Puts the client in line by its served cost; ties go to the one that has waited longest."""
        flow.turn = next(self._turn_counter)
        heapq.heappush(self._turns, (flow.served, flow.turn, client))

    def _forget(self, entry: _Entry) -> None:
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]

    def _execute(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        results: Sequence | None = None
        error: BaseException | None = None
        try:
            results = self._run_batch([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch call returned {len(results)} results for {len(batch)} items")
        except Exception as failure:  # noqa: BLE001 - the error belongs to this batch's callers
            log.error("batch of %d items failed: %s: %s", len(batch), failure.__class__.__name__, failure)
            results, error = None, failure
        seconds = time.perf_counter() - started
        with self._lock:
            for entry in batch:
                self._forget(entry)
        # Hooks first (metrics), so that a caller who has its answer also finds it counted.
        tags = {id(tag): tag for entry in batch if entry.tags for tag in entry.tags}  # by identity: any value may be a tag
        _call_hook(self._on_batch, BatchStats(len(batch), sum(e.cost for e in batch), seconds, error is not None, tuple(tags.values())))
        for entry in batch:
            _call_hook(self._on_wait, started - entry.enqueued_at)
        self._hand_out(batch, results, error, started, seconds)

    def _hand_out(self, batch: list[_Entry], results: Sequence | None, error: BaseException | None, started: float, seconds: float) -> None:
        """Resolves the batch's futures on the event loop: one loop callback per batch."""

        def resolve() -> None:
            for index, entry in enumerate(batch):
                if entry.future.done():
                    continue
                if error is not None or results is None:
                    entry.future.set_exception(error or RuntimeError("the batch produced no results"))
                else:
                    entry.future.set_result(Outcome(results[index], started - entry.enqueued_at, seconds))

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass


def _call_hook(hook: Callable, *args) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("batcher hook %s failed", getattr(hook, "__name__", hook))


def _join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()
