"""Overload: good throughput with far more clients than the service can serve, all retrying at once.

The service runs with a queue of 512 sentences and the cache off (every request reaches the engine).
wrk is one address standing for many clients, so the per-client cap is raised to the whole queue
(MT_CLIENT_MAX_SENTENCES=512); otherwise the fair-use limit, not the overload path, would be measured.
Capacity is wrk with `capacity_connections` (enough to keep the queue busy, few enough that nobody is
refused), then `flood_connections` that retry the moment they get a 429. Meanwhile a well-behaved client
(loadtest/edge's probe: one connection, waits Retry-After after a 429) times its requests. Capacity and
flood alternate for `rounds` rounds and the ratio is the median of the rounds' ratios: one 10-second pair
on a shared machine ranged from 0.67 to 0.84 in one afternoon.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

from loadtest.edge import wrk
from loadtest.edge.__main__ import probe
from loadtest.harness import wait_for
from loadtest.reliability.common import Service, log, rss_mib, scrape
from loadtest.stats import nearest_rank as quantile
from loadtest.texts import TextSource

QUEUE = 512
RETRY_AFTER_SECONDS = 1  # what the service's 429s say (service/pipeline.py)
TARGET_RATIO = 0.7


def env(queue: int = QUEUE) -> dict[str, str]:
    return {"MT_CACHE_SIZE": "0", "MT_MAX_QUEUE": str(queue), "MT_CLIENT_MAX_SENTENCES": str(queue), "MT_LOG_LEVEL": "warning"}


def bodies(count: int = 2048) -> list[dict]:
    texts = TextSource("toy").sentences(count, seed=7, short=True)
    return [{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": str(i), "text": t}]}} for i, t in enumerate(texts)]


def run(model_dir: Path, work_dir: Path, *, seconds: float = 10.0, warm_up_seconds: float = 2.0, queue: int = QUEUE,
        capacity_connections: int = 256, flood_connections: int = 2000, probe_requests: int = 300, rounds: int = 3) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    requests = bodies()
    script = wrk.write_script(work_dir / "overload.lua", requests)
    probe_body = json.dumps(requests[0]).encode()
    service = Service.ct2(model_dir, env(queue), work_dir / "service-overload.log")
    pairs: list[tuple[wrk.WrkResult, wrk.WrkResult]] = []
    samples: list[tuple[int, float]] = []
    with service:
        wrk.run(service.url, script, connections=64, seconds=warm_up_seconds)
        rss_before = rss_mib(service.process.pid)
        for round_ in range(rounds):
            _wait_until_idle(service.url)  # a flood's accepted requests must not count against the next capacity run
            capacity = wrk.run(service.url, script, connections=capacity_connections, seconds=seconds)
            log(f"overload, round {round_ + 1} of {rounds}: capacity with {capacity_connections} connections "
                f"{capacity.good_per_s:,.0f} good requests/s (non-2xx {capacity.non_2xx})")
            stop = threading.Event()
            prober = threading.Thread(target=lambda stop=stop: samples.extend(probe(service.url, probe_body, stop, probe_requests)))
            prober.start()
            try:
                flood = wrk.run(service.url, script, connections=flood_connections, seconds=seconds)
            finally:
                stop.set()
                prober.join(60)
            pairs.append((capacity, flood))
        rss_after = rss_mib(service.process.pid)
        alive = service.process.poll() is None
    ratios = [f.good_per_s / c.good_per_s if c.good_per_s else float("nan") for c, f in pairs]
    ratio = statistics.median(ratios)
    # The figures of the round whose ratio is the median (the upper middle one for an even count).
    capacity, flood = pairs[sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]]
    refused = [ms for status, ms in samples if status == 429]
    served = [ms for status, ms in samples if status == 200]
    other = [status for status, _ in samples if status not in (200, 429)]
    result = {
        "queue": queue,
        "seconds": seconds,
        "capacity_connections": capacity_connections,
        "capacity_good_per_s": capacity.good_per_s,
        "capacity_requests_per_s": capacity.requests_per_s,
        "capacity_non_2xx": capacity.non_2xx,
        "capacity_socket_errors": capacity.socket_errors,
        "capacity_p99_ms": capacity.latency_p99_ms,
        "flood_connections": flood_connections,
        "flood_requests_per_s": flood.requests_per_s,
        "flood_good_per_s": flood.good_per_s,
        "flood_refused_share": flood.non_2xx / flood.requests if flood.requests else float("nan"),
        "flood_socket_errors": flood.socket_errors,
        "ratio": ratio,
        "rounds": [{"capacity_good_per_s": c.good_per_s, "flood_good_per_s": f.good_per_s, "ratio": r}
                   for (c, f), r in zip(pairs, ratios)],
        "target_ratio": TARGET_RATIO,
        "probe": {
            "requests": len(samples), "refused": len(refused), "served": len(served), "other_statuses": other,
            "refused_p50_ms": quantile(refused, 0.5), "refused_p99_ms": quantile(refused, 0.99),
            "served_p50_ms": quantile(served, 0.5), "served_p99_ms": quantile(served, 0.99),
        },
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "alive_after": alive,
    }
    log(f"overload: {flood_connections} connections retrying at once, ratios {', '.join(f'{r:.2f}' for r in ratios)}: median "
        f"{ratio:.2f}; probe: 429 p50 {result['probe']['refused_p50_ms']:.1f} ms, p99 {result['probe']['refused_p99_ms']:.1f} ms "
        f"({len(refused)} refused, {len(served)} served)")
    return result


def _wait_until_idle(url: str, timeout: float = 30.0) -> None:
    """Until nothing is in flight or queued: the previous flood's requests are answered or withdrawn. The service
    holds a refused connection's next request unread for its Retry-After (1 s), and a request the flood left in
    such a connection is read, and served to nobody, when the hold ends: so idle twice, the hold apart."""

    def idle() -> bool:
        samples = scrape(url)
        return samples.get("translation_in_flight_requests", 1) == 0 and samples.get("translation_queue_depth", 1) == 0

    wait_for(idle, timeout=timeout, interval=0.05, what="an idle service after the flood")
    time.sleep(RETRY_AFTER_SECONDS + 0.2)
    wait_for(idle, timeout=timeout, interval=0.05, what="an idle service after the held connections")
