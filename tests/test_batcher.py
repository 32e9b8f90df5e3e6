"""The batcher on its own, driven by fake batch callables (no engine, no web framework).

The batch calls run in the batcher's worker threads; the tests hold them open with a threading.Event
and wait for conditions (`until`) rather than for fixed times.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher, BatcherClosed, BatchStats, QueueFull, QueueTimeout
from tests.helpers import until, wait_for


class Recorder:
    """A fake batch call that records its batches and can be held open or made to fail."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on or set()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[str]) -> list[str]:
        with self._lock:
            self.batches.append(list(items))
            number = len(self.batches)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            assert self.release.wait(10), "a test never released its batch"
            if number in self.fail_on:
                raise RuntimeError(f"batch {number} exploded")
            return [item.upper() for item in items]
        finally:
            with self._lock:
                self.running -= 1


def make(run, **overrides) -> Batcher[str, str]:
    options = dict(max_batch_size=8, max_batch_cost=1000, max_queue=100, cost=len, key=lambda item: item)
    options.update(overrides)
    batcher = Batcher(run, **options)
    batcher.start()
    return batcher


async def values(batcher, items):
    return [outcome.value for outcome in await batcher.submit(items)]


async def test_lone_request_runs_at_once_and_results_keep_order():
    run = Recorder()
    batcher = make(run)
    assert await values(batcher, ["b", "a", "c"]) == ["B", "A", "C"]
    assert run.batches == [["b", "a", "c"]]
    await batcher.close()


async def test_requests_arriving_while_a_batch_runs_share_the_next_batch():
    run = Recorder()
    batcher = make(run)
    run.release.clear()
    first = asyncio.create_task(values(batcher, ["one"]))
    await until(lambda: run.running == 1)  # "one" is now running alone
    later = [asyncio.create_task(values(batcher, [f"x{i}"])) for i in range(5)]
    await until(lambda: batcher.queue_depth == 5)
    run.release.set()
    assert await first == ["ONE"]
    assert [await task for task in later] == [[f"X{i}"] for i in range(5)]
    assert run.batches == [["one"], [f"x{i}" for i in range(5)]]
    await batcher.close()


async def test_batches_respect_size_and_cost_budget():
    run = Recorder()
    batcher = make(run, max_batch_size=3, max_batch_cost=6)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)
    rest = asyncio.create_task(values(batcher, ["aa", "bb", "cc", "d", "e", "f", "g"]))
    await until(lambda: batcher.queue_depth == 7)
    run.release.set()
    await blocker
    assert await rest == ["AA", "BB", "CC", "D", "E", "F", "G"]
    # cost = len: "aa"+"bb"+"cc" = 6 fills the budget; then 3 items cap the next batch.
    assert run.batches[1:] == [["aa", "bb", "cc"], ["d", "e", "f"], ["g"]]
    await batcher.close()


async def test_an_item_over_the_cost_budget_still_runs_alone():
    run = Recorder()
    batcher = make(run, max_batch_cost=3)
    assert await values(batcher, ["toolong", "x"]) == ["TOOLONG", "X"]
    assert run.batches == [["toolong"], ["x"]]
    await batcher.close()


async def test_identical_items_in_flight_are_computed_once():
    run = Recorder()
    batcher = make(run)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)
    a = asyncio.create_task(values(batcher, ["same", "other", "same"]))
    b = asyncio.create_task(values(batcher, ["same"]))
    await until(lambda: batcher.queue_depth == 2)
    await asyncio.sleep(0)  # b has queued too
    run.release.set()
    await blocker
    assert await a == ["SAME", "OTHER", "SAME"]
    assert await b == ["SAME"]
    assert run.batches[1] == ["same", "other"]
    await batcher.close()


async def test_a_failing_batch_fails_only_its_callers_and_the_worker_goes_on():
    run = Recorder(fail_on={2})
    batcher = make(run)
    run.release.clear()
    first = asyncio.create_task(values(batcher, ["ok"]))
    await until(lambda: run.running == 1)
    doomed = [asyncio.create_task(values(batcher, [f"d{i}"])) for i in range(3)]
    await until(lambda: batcher.queue_depth == 3)
    run.release.set()
    assert await first == ["OK"]
    for task in doomed:
        with pytest.raises(RuntimeError, match="batch 2 exploded"):
            await task
    assert batcher.alive
    assert await values(batcher, ["after"]) == ["AFTER"]
    await batcher.close()


async def test_wrong_result_count_is_a_batch_error_not_a_hang():
    def short(items):
        return items[:-1]

    batcher = make(short)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await batcher.submit(["a", "b"])
    assert batcher.alive
    await batcher.close()


async def test_items_of_callers_that_left_are_not_computed():
    run = Recorder()
    batcher = make(run)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)
    gone = asyncio.create_task(values(batcher, ["gone1", "shared"]))
    stays = asyncio.create_task(values(batcher, ["shared"]))
    await until(lambda: batcher.queue_depth == 2)
    await asyncio.sleep(0)  # stays has queued too
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    run.release.set()
    await blocker
    assert await stays == ["SHARED"]
    assert run.batches == [["z"], ["shared"]]
    await batcher.close()


async def test_full_queue_refuses_all_or_nothing():
    run = Recorder()
    batcher = make(run, max_queue=3)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)  # "z" left the queue: it is running
    waiting = asyncio.create_task(values(batcher, ["a", "b"]))
    await until(lambda: batcher.queue_depth == 2)
    assert batcher.has_room(1) and not batcher.has_room(2)
    with pytest.raises(QueueFull):
        await batcher.submit(["c", "d"])
    assert batcher.queue_depth == 2  # nothing of the refused request was queued
    run.release.set()
    await blocker
    assert await waiting == ["A", "B"]
    await batcher.close()


async def test_concurrency_runs_batches_in_parallel():
    run = Recorder()
    batcher = make(run, max_batch_size=1, concurrency=2)
    run.release.clear()
    tasks = [asyncio.create_task(values(batcher, [f"p{i}"])) for i in range(4)]
    await until(lambda: run.running == 2)
    await asyncio.sleep(0.02)  # kept: a third batch would have started by now if the limit let it
    assert run.running == 2  # and no more
    run.release.set()
    assert [await t for t in tasks] == [[f"P{i}"] for i in range(4)]
    assert run.max_running == 2
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_items():
    run = Recorder()
    batcher = make(run, max_batch_size=1)
    run.release.clear()
    tasks = [asyncio.create_task(values(batcher, [f"q{i}"])) for i in range(3)]
    await until(lambda: run.running == 1 and batcher.queue_depth == 2)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(BatcherClosed):
        await batcher.submit(["late"])
    run.release.set()
    await closing
    assert [await t for t in tasks] == [["Q0"], ["Q1"], ["Q2"]]
    assert not batcher.alive


async def test_hooks_report_batches_and_waits_and_a_broken_hook_does_not_kill_the_worker():
    seen: list[BatchStats] = []
    waits: list[float] = []

    def on_batch(stats):
        seen.append(stats)
        raise ValueError("metrics backend down")

    batcher = make(Recorder(), on_batch=on_batch, on_wait=waits.append)
    assert await values(batcher, ["ab", "c"]) == ["AB", "C"]
    assert await values(batcher, ["d"]) == ["D"]
    assert [(s.size, s.cost, s.failed) for s in seen] == [(2, 3, False), (1, 1, False)]
    assert len(waits) == 3  # waits are reported even though on_batch raised
    await batcher.close()


async def test_outcomes_carry_queue_and_inference_time():
    started = threading.Event()

    def slow(items):
        started.set()
        time.sleep(0.05)
        return items

    batcher = make(slow)
    first = asyncio.create_task(batcher.submit(["a"]))
    await until(started.is_set)
    second = await batcher.submit(["b"])
    (a,) = await first
    assert a.inference_seconds >= 0.04 and a.queue_seconds < 0.02
    assert second[0].queue_seconds >= 0.02
    await batcher.close()


async def test_items_that_waited_past_the_queue_timeout_fail_and_are_not_computed():
    run = Recorder()
    batcher = make(run, queue_timeout=0.05)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)
    late = asyncio.create_task(values(batcher, ["late"]))
    await until(lambda: batcher.queue_depth == 1)
    await asyncio.sleep(0.1)  # "late" now waits longer than the timeout
    run.release.set()
    assert await blocker == ["Z"]
    with pytest.raises(QueueTimeout, match="waited over 0.05s"):
        await late
    assert run.batches == [["z"]]
    assert await values(batcher, ["fresh"]) == ["FRESH"]
    await batcher.close()


async def test_batches_keep_running_while_the_event_loop_is_busy():
    """The worker threads take and run batches on their own: a blocked event loop doesn't stop them."""
    calls: list[float] = []

    def timed(items):
        calls.append(time.monotonic())
        return items

    batcher = make(timed, max_batch_size=1)
    tasks = [asyncio.create_task(batcher.submit([f"b{i}"])) for i in range(5)]
    await asyncio.sleep(0)  # all five are queued
    # The event loop is stuck (a flood of requests): this blocking wait never yields to it, so the five
    # batches can only run on the worker threads.
    wait_for(lambda: len(calls) == 5, timeout=5, interval=0.005, what="five batches run while the loop is blocked")
    assert [(await task)[0].value for task in tasks] == [f"b{i}" for i in range(5)]
    await batcher.close()


async def test_a_withdrawn_callers_items_free_their_queue_room_at_once():
    run = Recorder()
    batcher = make(run, max_queue=3)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["z"]))
    await until(lambda: run.running == 1)
    leaving = asyncio.create_task(values(batcher, ["a", "b", "c"]))
    await until(lambda: batcher.queue_depth == 3)
    assert not batcher.has_room(1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert batcher.queue_depth == 0 and batcher.has_room(3)  # no worker had to look first
    run.release.set()
    assert await blocker == ["Z"]
    assert await values(batcher, ["d"]) == ["D"]
    assert run.batches == [["z"], ["d"]]
    await batcher.close()


# --- fair scheduling: deficit round-robin across clients, round-robin across a client's requests


async def test_a_lone_request_behind_a_queued_document_goes_into_the_next_batch():
    run = Recorder()
    batcher = make(run, max_batch_size=4, max_batch_cost=400)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["block"]))
    await until(lambda: run.running == 1)
    document = asyncio.create_task(values(batcher, [f"doc{i:02}" for i in range(12)]))
    await until(lambda: batcher.queue_depth == 12)
    probe = asyncio.create_task(values(batcher, ["probe"]))
    await until(lambda: batcher.queue_depth == 13)
    run.release.set()
    assert await probe == ["PROBE"]
    await document, await blocker
    # FIFO would have run doc00-03, doc04-07, doc08-11, then the probe: here it shares the very next batch.
    assert "probe" in run.batches[1] and len(run.batches[1]) == 4
    assert [len(batch) for batch in run.batches[1:]] == [4, 4, 4, 1]  # batches still fill
    await batcher.close()


async def test_requests_of_one_client_take_turns_and_so_do_clients():
    run = Recorder()
    batcher = make(run, max_batch_size=6, max_batch_cost=600)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["block"]))
    await until(lambda: run.running == 1)
    a1 = asyncio.create_task(batcher.submit([f"a1-{i}" for i in range(4)], client="a", request=1))
    a2 = asyncio.create_task(batcher.submit([f"a2-{i}" for i in range(4)], client="a", request=2))
    b1 = asyncio.create_task(batcher.submit([f"b1-{i}" for i in range(4)], client="b", request=1))
    await until(lambda: batcher.queue_depth == 12)
    run.release.set()
    await asyncio.gather(a1, a2, b1, blocker)
    # Clients alternate (equal costs), and client a's turns alternate between its two requests.
    assert run.batches[1] == ["a1-0", "b1-0", "a2-0", "b1-1", "a1-1", "b1-2"]
    await batcher.close()


async def test_clients_share_batches_by_cost_not_by_count():
    # Client "long" queues items of cost 40, client "short" items of cost 10: each turn earns the same quantum,
    # so over a batch the short client sends about four items for each long one.
    run = Recorder()
    batcher = make(run, max_batch_size=100, max_batch_cost=400, cost=lambda item: 40 if item.startswith("L") else 10)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["S-block"]))
    await until(lambda: run.running == 1)
    long = asyncio.create_task(batcher.submit([f"L{i:02}" for i in range(20)], client="long"))
    short = asyncio.create_task(batcher.submit([f"S{i:02}" for i in range(40)], client="short"))
    await until(lambda: batcher.queue_depth == 60)
    run.release.set()
    await asyncio.gather(long, short, blocker)
    second = run.batches[1]
    longs, shorts = sum(i.startswith("L") for i in second), sum(i.startswith("S") for i in second)
    assert 40 * longs + 10 * shorts <= 400
    assert abs(40 * longs - 10 * shorts) <= 40  # equal cost, within one item
    await batcher.close()


async def test_a_withdrawn_request_leaves_no_empty_turn_behind():
    run = Recorder()
    batcher = make(run, max_batch_size=2)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["block"]))
    await until(lambda: run.running == 1)
    leaving = asyncio.create_task(batcher.submit(["x", "y"], client="gone"))
    staying = asyncio.create_task(batcher.submit(["p", "q", "r"], client="here"))
    await until(lambda: batcher.queue_depth == 5)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    run.release.set()
    assert [o.value for o in await staying] == ["P", "Q", "R"]
    assert await blocker == ["BLOCK"]
    assert run.batches[1:] == [["p", "q"], ["r"]]
    await batcher.close()


async def test_the_batch_hook_sees_the_tag_of_every_submit_it_served_once_each():
    seen: list[BatchStats] = []
    run = Recorder()
    run.release.clear()
    batcher = make(run, on_batch=seen.append, concurrency=1)
    first = asyncio.ensure_future(batcher.submit(["x"], tag="first"))
    await until(lambda: len(run.batches) == 1)
    # Tags need not be hashable (a trace context is not); one shared item carries both of its callers' tags.
    unhashable = ["request", 2]
    waiting = [
        asyncio.ensure_future(batcher.submit(["a", "b"], tag=unhashable)),
        asyncio.ensure_future(batcher.submit(["a"], tag="third")),
        asyncio.ensure_future(batcher.submit(["c"])),  # untagged
    ]
    await until(lambda: batcher.queue_depth == 3)
    run.release.set()
    await first
    for outcome in await asyncio.gather(*waiting):
        assert outcome
    await batcher.close()
    assert [stats.tags for stats in seen] == [("first",), (unhashable, "third")]


async def test_a_worker_error_outside_the_batch_call_fails_its_callers_instead_of_leaving_them_waiting(monkeypatch):
    batcher = make(Recorder())
    original = batcher._execute
    calls = []

    def broken(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("bookkeeping failed")
        original(batch)

    monkeypatch.setattr(batcher, "_execute", broken)
    with pytest.raises(RuntimeError, match="bookkeeping failed"):
        await asyncio.wait_for(batcher.submit(["x"]), 5)
    assert await values(batcher, ["y"]) == ["Y"]  # the worker went on
    await batcher.close()


async def test_a_short_request_runs_in_a_batch_of_short_requests_only_and_documents_still_fill_theirs():
    run = Recorder()
    batcher = make(run, max_batch_size=4, max_batch_cost=400, concurrency=1)
    run.release.clear()
    document = asyncio.create_task(batcher.submit([f"doc{i:02}" for i in range(12)], client="bulk"))
    await until(lambda: run.running == 1 and batcher.queue_depth == 8)  # its first batch runs, 8 sentences wait
    probes = [asyncio.create_task(batcher.submit([name], client=name, short=True)) for name in ("p1", "p2")]
    await until(lambda: batcher.queue_depth == 10)
    run.release.set()
    assert [[o.value for o in await probe] for probe in probes] == [["P1"], ["P2"]]
    await document
    # The two short requests run together at once, without the document's sentences (which would make their batch
    # as slow as a full one); the document's batches still fill.
    assert run.batches[1] == ["p1", "p2"]
    assert [len(batch) for batch in run.batches] == [4, 2, 4, 4]
    await batcher.close()


async def test_a_batch_that_began_with_a_document_still_takes_a_short_request():
    run = Recorder()
    batcher = make(run, max_batch_size=4, max_batch_cost=400, concurrency=1)
    run.release.clear()
    blocker = asyncio.create_task(values(batcher, ["block"]))
    await until(lambda: run.running == 1)
    document = asyncio.create_task(batcher.submit([f"doc{i}" for i in range(6)], client="bulk"))
    await until(lambda: batcher.queue_depth == 6)
    # The document's client was served first (the blocker's client is new): the probe's client comes next in line.
    probe = asyncio.create_task(batcher.submit(["probe"], client="probe", short=True))
    await until(lambda: batcher.queue_depth == 7)
    run.release.set()
    await probe, await document, await blocker
    assert run.batches[1][0] == "doc0" and "probe" in run.batches[1] and len(run.batches[1]) == 4
    await batcher.close()
