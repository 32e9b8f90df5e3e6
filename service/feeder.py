"""A request's sentences through the engine in windows, so any request within the limits is served whole.

At most `window` of one request's jobs are queued or running at once, in two halves: one computing while
the next waits. A document of any size then holds a bounded share of the queue, is tokenized a window at
a time (memory bounded), and takes turns in the batcher with every other request instead of filling the
queue ahead of them. Its first window needs room at once (admission checked it); later ones wait for room
as it frees, so a request once admitted is never refused half-way. If the request fails or its client
leaves, what it still had queued is withdrawn.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.batcher import Batcher, BatcherClosed, Outcome, QueueFull, QueueTimeout
from service.engine import Engine, Job, Translation
from service.errors import RETRY_AFTER_SECONDS, AtCapacity, EngineFailure, NotServing, QueueWaitExpired
from service.offload import run_sized


@dataclass(frozen=True)
class Wanted:
    """One sentence to translate, and what of it: how many hypotheses (alternatives), and attention (HTML)."""

    language: str
    sentence: str
    hypotheses: int = 1
    attention: bool = False


@dataclass
class EngineWork:
    """What the engine did for one request: tokens, and its longest queue wait and engine call."""

    input_tokens: int = 0
    output_tokens: int = 0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    # Traced requests only: per window, (queued at, in wall-clock ns; jobs; its longest queue wait; its longest
    # engine call), for the request's queue and engine spans.
    windows: list[tuple[int, int, float, float]] = field(default_factory=list)


_FIFO = object()  # the one queue every request joins without fair scheduling
# How often a window that found the queue full looks again (a batch takes far longer than this to run).
ROOM_POLL_SECONDS = 0.01

# Each wanted sentence's chunks (a long sentence is cut into several jobs), with their translations.
Chunks = list[tuple[Job, Translation]]


async def feed(
    batcher: Batcher[Job, Translation],
    engine: Engine,
    wanted: Sequence[Wanted],
    to_lang: str,
    *,
    window: int,
    size: int,
    client: str,
    fair: bool = True,
    patience: float = 30.0,
    tag: object = None,
) -> tuple[list[Chunks], EngineWork]:
    """Translates `wanted` through `batcher`, at most `window` jobs of it at a time; raises the ServiceError
    that says why it failed. `size` (the request's bytes) decides where tokenizing runs (service/offload.py);
    `patience`: how long a window waits for room in the queue (0: for ever) before the request fails with
    QueueWaitExpired, as a queued sentence would. `tag` goes with every window to the batcher (the request's
    trace context, for the engine batch spans); given, the windows' times are kept in EngineWork.windows."""
    half = max(1, window // 2)
    # The batcher's queue for this request, across its windows; without fairness, one queue for everyone (FIFO).
    request = object() if fair else _FIFO
    client = client if fair else ""
    chunks: list[Chunks] = [[] for _ in wanted]
    work = EngineWork()
    in_flight: deque[tuple[list[int], list[Job], asyncio.Task, int]] = deque()
    sent: list[bool] = []
    # A long request's later windows leave a quarter of the queue free: new requests, interactive ones
    # first among them, are admitted beside it instead of finding the queue full of its windows.
    headroom = batcher.max_queue // 4
    # A request of less than half a window is short (interactive): the batcher runs it in a batch of short requests
    # only, as soon as a worker frees, instead of in one filled with documents' sentences (one batch's wait, not two).
    short = fair and len(wanted) < half

    async def finish(owners: list[int], jobs: list[Job], task: asyncio.Task, queued_at: int) -> None:
        outcomes: list[Outcome[Translation]] = await _engine_call(task)
        for owner, job, outcome in zip(owners, jobs, outcomes):
            chunks[owner].append((job, outcome.value))
            work.output_tokens += len(outcome.value.tokens)
            work.queue_seconds = max(work.queue_seconds, outcome.queue_seconds)
            work.inference_seconds = max(work.inference_seconds, outcome.inference_seconds)
        if tag is not None:
            waited = max(outcome.queue_seconds for outcome in outcomes)
            work.windows.append((queued_at, len(jobs), waited, max(outcome.inference_seconds for outcome in outcomes)))

    def send(owners: list[int], jobs: list[Job]) -> None:
        work.input_tokens += sum(len(job.source) for job in jobs)
        later = bool(sent)
        sent.append(True)
        submitting = _submit(batcher, jobs, client, request, later=later, headroom=headroom, patience=patience, tag=tag, short=short)
        in_flight.append((owners, jobs, asyncio.ensure_future(submitting), time.time_ns() if tag is not None else 0))

    try:
        jobs: list[Job] = []
        owners: list[int] = []
        for start in range(0, len(wanted), half):
            encoded = await run_sized(size, _encode_all, engine, wanted[start : start + half], to_lang)
            for offset, sentence_jobs in enumerate(encoded):
                for job in sentence_jobs:  # a long sentence's chunks may fall into two windows
                    jobs.append(job)
                    owners.append(start + offset)
                    if len(jobs) == half:
                        send(owners, jobs)
                        jobs, owners = [], []
                        if len(in_flight) == 2:
                            await finish(*in_flight.popleft())
        if jobs:
            send(owners, jobs)
        while in_flight:
            await finish(*in_flight.popleft())
    finally:
        if in_flight:  # failed or cancelled: nothing else of this request is computed
            for _, _, task, _ in in_flight:
                task.cancel()
            await asyncio.gather(*(task for _, _, task, _ in in_flight), return_exceptions=True)
    return chunks, work


async def _submit(
    batcher: Batcher[Job, Translation],
    jobs: list[Job],
    client: str,
    request: object,
    *,
    later: bool,
    headroom: int,
    patience: float,
    tag: object = None,
    short: bool = False,
) -> list[Outcome[Translation]]:
    """Queues a window once there is room for it (and `headroom` beside it). Admission saw room for the first
    window a moment ago, but other requests may have taken it meanwhile: it waits rather than being refused
    half-way, for at most `patience` seconds, the queue timeout."""
    deadline = time.monotonic() + patience if patience > 0 else float("inf")
    while True:
        try:
            return await batcher.submit(
                jobs, client=client, request=request, headroom=headroom if later else 0, new_request=not later, tag=tag,
                short=short,
            )
        except QueueFull:
            if time.monotonic() > deadline:
                raise QueueTimeout(f"waited over {patience:g}s for room in the queue") from None
            await asyncio.sleep(ROOM_POLL_SECONDS)


async def _engine_call(task: asyncio.Task) -> list:
    """A window's outcomes, with the batcher's failures said in the domain's words."""
    try:
        return await task
    except QueueFull:
        raise AtCapacity("the service is at capacity; retry shortly", retry_after=RETRY_AFTER_SECONDS) from None
    except QueueTimeout as error:
        raise QueueWaitExpired(f"the service is behind: {error}; retry shortly", retry_after=RETRY_AFTER_SECONDS) from None
    except BatcherClosed as error:
        raise NotServing(str(error), retry_after=RETRY_AFTER_SECONDS) from None
    except asyncio.CancelledError:
        raise
    except Exception as error:  # an engine failure fails this request's batch only
        raise EngineFailure(f"translation failed ({error.__class__.__name__}: {error})") from error


def _encode_all(engine: Engine, wanted: Sequence[Wanted], to_lang: str) -> list[list[Job]]:
    return [
        engine.encode(w.sentence, w.language, to_lang, hypotheses=w.hypotheses, attention=w.attention) for w in wanted
    ]
