"""The soak: a steady mixed load at a fixed, moderate rate for a long time, watching for what only time shows:
failures that start late, latency that creeps up, memory or file descriptors that keep growing.

An open-loop asyncio client (httpx) starts request i at i / rate seconds, whatever the earlier ones are
doing (a closed loop would slow down with the service and hide a slowdown); at most `max_in_flight` are
outstanding, and a start that had to wait for a slot is counted late. The mix, by request:

    60%  one short sentence          25%  4 to 8 records          10%  a long text (3-8 sentences, a
    paragraph break)                  5%  an unsupported language (must get 422)

from en into en, fr and de, half the texts from a pool of 300 (mostly cache hits) and half fresh (misses). Every 200 is
checked word for word against the toy model's known answer.

The in-process cache is capped at MT_CACHE_SIZE=500 entries for the soak, so it is full and evicting
after the warm-up: memory that grows after that is not the cache filling up (the default of 20,000
entries of toy sentences takes minutes to fill at this rate) but something that would grow without end.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.reliability.common import Service, body, log, rss_mib, scrape
from loadtest.stats import nearest_rank as quantile
from loadtest.texts import TextSource

TARGETS = ("en", "fr", "de")
RSS_GROWTH_TARGET = 0.05
CACHE_SIZE = 500


def _request(rng: random.Random, source: TextSource, pool: list[str], fresh) -> tuple[dict, list[str] | None, str, int]:
    """(body, the texts, target language, expected status) of one request of the mix."""
    target = rng.choice(TARGETS)
    kind = rng.random()

    def text() -> str:
        return rng.choice(pool) if rng.random() < 0.5 else next(fresh)

    if kind < 0.05:
        return body([text()], "en", "xx"), None, "xx", 422
    if kind < 0.15:
        texts = [source.long_text(rng)]
    elif kind < 0.40:
        texts = [text() for _ in range(rng.randint(4, 8))]
    else:
        texts = [text()]
    # From "en" always: the segmenter applies the source language's rules, and the toy's lower-case words
    # read as one long sentence under, say, German ones (a full stop before a lower-case word).
    return body(texts, "en", target), texts, target, 200


@dataclass
class Samples:
    """One entry per request, in flat arrays: a ten-minute run keeps 120,000 of them, and as many tuples
    would give the client's garbage collector pauses that show up as the service's latency."""

    scheduled: array = field(default_factory=lambda: array("d"))  # seconds after the start
    seconds: array = field(default_factory=lambda: array("d"))
    failures: Counter = field(default_factory=Counter)  # what went wrong -> how often
    late: int = 0  # starts that found max_in_flight requests outstanding

    def add(self, scheduled: float, seconds: float, problem: str) -> None:
        self.scheduled.append(scheduled)
        self.seconds.append(seconds)
        if problem:
            self.failures[problem] += 1


async def _drive(url: str, *, seconds: float, rate: float, max_in_flight: int, seed: int) -> Samples:
    import httpx

    rng = random.Random(seed)
    source = TextSource("toy")
    pool = source.sentences(300, seed=seed + 1)
    fresh_rng = random.Random(seed + 2)
    fresh = iter(lambda: source.sentence(fresh_rng), None)  # endless, nearly all distinct
    total = int(seconds * rate)
    slots = asyncio.Semaphore(max_in_flight)
    samples = Samples()
    pending: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        async def one(scheduled: float, document: dict, texts, target: str, expected: int) -> None:
            began = time.monotonic()
            try:
                response = await http.post("/translation", json=document)
            except httpx.HTTPError as error:
                samples.add(scheduled, time.monotonic() - began, type(error).__name__)
                return
            finally:
                slots.release()
            elapsed = time.monotonic() - began
            problem = ""
            if response.status_code != expected:
                problem = f"status {response.status_code} {_code(response)}".strip()
            elif expected == 200:
                got = [r["text"] for r in response.json()["result"]]
                if got != [source.expected(t, target) for t in texts]:
                    problem = "inexact translation"
            samples.add(scheduled, elapsed, problem)

        gc.collect()
        gc.freeze()  # what exists now lives to the end: keep it out of every collection
        started = time.monotonic()
        try:
            for i in range(total):
                scheduled = i / rate
                delay = started + scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if slots.locked():
                    samples.late += 1
                await slots.acquire()
                task = asyncio.create_task(one(scheduled, *_request(rng, source, pool, fresh)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            gc.unfreeze()
    return samples


def _code(response) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def run(model_dir: Path, work_dir: Path, *, seconds: float = 60.0, rate: float = 100.0, max_in_flight: int = 64,
        seed: int = 1) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    # One address stands for many clients here, as wrk does in the overload step: the per-client cap on
    # sentences in flight is lifted (the queue still bounds the work), or a brief stall of the machine would
    # turn into 429 rate_limited for "the one client" rather than show what the service does.
    env = {"MT_CACHE_SIZE": str(CACHE_SIZE), "MT_CLIENT_MAX_SENTENCES": "100000", "MT_LOG_LEVEL": "info"}
    service = Service.ct2(model_dir, env, work_dir / "service-soak.log")
    rss: list[tuple[float, float]] = []
    with service:
        before = scrape(service.url)
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                rss.append((time.monotonic() - started, rss_mib(service.process.pid)))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            samples = asyncio.run(_drive(service.url, seconds=seconds, rate=rate, max_in_flight=max_in_flight, seed=seed))
        finally:
            stop.set()
            sampler.join(5)
        elapsed = time.monotonic() - started
        after = scrape(service.url)
        alive = service.process.poll() is None
    window = seconds / 10
    warm_up = min(max(5.0, window), seconds / 3)
    latencies = [x * 1000 for x in samples.seconds]
    first = [ms for t, ms in zip(samples.scheduled, latencies) if warm_up <= t < warm_up + window]
    last = [ms for t, ms in zip(samples.scheduled, latencies) if t >= seconds - window]
    rss_first = [m for t, m in rss if warm_up <= t < warm_up + window]
    rss_last = [m for t, m in rss if t >= seconds - window]
    rss_reference, rss_final = quantile(rss_first, 0.5), quantile(rss_last, 0.5)
    failures = dict(samples.failures)
    requests = len(samples.seconds)
    result = {
        "seconds": seconds,
        "rate": rate,
        "requests": requests,
        "achieved_per_s": requests / elapsed if elapsed else float("nan"),
        "late_starts": samples.late,
        "failed": sum(failures.values()),
        "failures": failures,
        "p50_ms": quantile(latencies, 0.5),
        "p99_ms": quantile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "window_s": window,
        "warm_up_s": warm_up,
        "p99_first_ms": quantile(first, 0.99),
        "p99_last_ms": quantile(last, 0.99),
        "p99_drift": quantile(last, 0.99) / quantile(first, 0.99) if first and last else float("nan"),
        # The whole curve, one p99 per tenth of the run: a trend shows here, a passing disturbance too.
        "p99_by_tenth_ms": [round(quantile([ms for t, ms in zip(samples.scheduled, latencies)
                                            if k * window <= t < (k + 1) * window], 0.99), 1) for k in range(10)],
        "rss_after_warm_up_mib": rss_reference,
        "rss_end_mib": rss_final,
        "rss_max_mib": max((m for _, m in rss), default=float("nan")),
        "rss_growth": (rss_final - rss_reference) / rss_reference if rss_first and rss_last else float("nan"),
        "rss_series_mib": [round(m, 1) for _, m in rss[:: max(1, len(rss) // 40)]],
        "open_fds_before": before.get("process_open_fds", float("nan")),
        "open_fds_after": after.get("process_open_fds", float("nan")),
        "cache_hits": after.get("translation_cache_hits_total", 0.0) - before.get("translation_cache_hits_total", 0.0),
        "cache_misses": after.get("translation_cache_misses_total", 0.0) - before.get("translation_cache_misses_total", 0.0),
        "alive_after": alive,
        "cache_size": CACHE_SIZE,
        # The machine may be shared: other work on it shows up as latency here, so say how busy it was.
        "load_average_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    log(f"soak: {requests} requests over {elapsed:.0f} s ({result['achieved_per_s']:.0f}/s), {result['failed']} failed; "
        f"p99 {result['p99_first_ms']:.0f} -> {result['p99_last_ms']:.0f} ms; RSS {rss_reference:.1f} -> {rss_final:.1f} MiB "
        f"({result['rss_growth'] * 100:+.1f}%)")
    return result
