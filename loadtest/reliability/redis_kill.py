"""The shared cache dies under load: two replicas share a real redis-server, which is killed with SIGKILL
mid-load. Redis is an optimisation, never a dependency: no request may fail, every translation must stay
exact, and both replicas must report the outage (translation_cache_up 0) and stay ready.

The load is `clients` asyncio clients (httpx, one connection each) alternating between the replicas. Half
their sentences come from a small shared pool, so one replica finds in Redis what the other translated;
half are fresh, so every replica keeps asking Redis (a local hit never reaches it, and the outage would go
unseen).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

from loadtest.harness import start_redis
from loadtest.reliability.common import Service, body, get, log, scrape
from loadtest.stats import nearest_rank as quantile
from loadtest.texts import TextSource
from loadtest.toy_task import expected_translation

TARGETS = ("en", "fr", "de")


def redis_keys(port: int) -> int:
    import redis

    return int(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).dbsize())


async def _load(urls: list[str], *, clients: int, seconds: float, kill_at: float, kill: Callable[[], int],
                max_requests: int) -> dict:
    import httpx

    rng = random.Random(11)
    source = TextSource("toy")
    shared = source.sentences(200, seed=5)
    fresh = iter(source.sentences(max_requests, seed=6))
    started = time.monotonic()
    deadline = started + seconds
    records: list[tuple[float, int, str, bool, float]] = []  # (t, replica, status or error, exact, seconds)
    killed: dict[str, float] = {}

    async def killer() -> None:
        await asyncio.sleep(kill_at)
        killed["keys"] = kill()  # counts the keys, then kills
        killed["at"] = time.monotonic() - started

    async def client(index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            turn = index
            while time.monotonic() < deadline and len(records) < max_requests:
                replica = turn % len(urls)
                turn += 1
                text = rng.choice(shared) if rng.random() < 0.5 else next(fresh, rng.choice(shared))
                target = TARGETS[turn % 3]
                began = time.monotonic()
                try:
                    response = await http.post(f"{urls[replica]}/translation", json=body([text], "en", target))
                except httpx.HTTPError as error:
                    records.append((began - started, replica, type(error).__name__, False, time.monotonic() - began))
                    continue
                exact = response.status_code == 200 and response.json()["result"][0]["text"] == expected_translation(text, target)
                records.append((began - started, replica, str(response.status_code), exact, time.monotonic() - began))

    await asyncio.gather(killer(), *(client(i) for i in range(clients)))
    return {"records": records, "killed": killed}


def run(model_dir: Path, work_dir: Path, *, clients: int = 16, seconds: float = 12.0, kill_at: float = 4.0,
        max_requests: int = 200_000) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    redis_process, port = start_redis(work_dir)
    env = {"MT_REDIS_URL": f"redis://127.0.0.1:{port}/0", "MT_LOG_LEVEL": "warning"}
    try:
        with Service.ct2(model_dir, env, work_dir / "service-redis-1.log") as first, \
                Service.ct2(model_dir, env, work_dir / "service-redis-2.log") as second:
            before = [scrape(s.url) for s in (first, second)]

            def kill() -> int:
                keys = redis_keys(port)  # what the replicas shared until now
                redis_process.kill()  # SIGKILL: no goodbye to its clients
                redis_process.wait(5)
                return keys

            outcome = asyncio.run(_load([first.url, second.url], clients=clients, seconds=seconds, kill_at=kill_at,
                                        kill=kill, max_requests=max_requests))
            after = [scrape(s.url) for s in (first, second)]
            ready = [get(s.url, "/readyz")[0] for s in (first, second)]
            alive = [s.process.poll() is None for s in (first, second)]
    finally:
        if redis_process.poll() is None:
            redis_process.kill()
            redis_process.wait(5)
    records, killed = outcome["records"], outcome["killed"]
    kill_t = killed.get("at", float("nan"))
    pre = [r for r in records if r[0] < kill_t]
    post = [r for r in records if r[0] >= kill_t]
    failed = [r for r in records if r[2] != "200"]
    inexact = [r for r in records if r[2] == "200" and not r[3]]
    result = {
        "clients": clients,
        "seconds": seconds,
        "killed_at_s": kill_t,
        "redis_keys_before_kill": int(killed.get("keys", -1)),
        "requests": len(records),
        "requests_before_kill": len(pre),
        "requests_after_kill": len(post),
        "failed": len(failed),
        "failures": sorted({r[2] for r in failed}),
        "inexact": len(inexact),
        "p50_ms_before": quantile([r[4] * 1000 for r in pre], 0.5),
        "p99_ms_before": quantile([r[4] * 1000 for r in pre], 0.99),
        "p50_ms_after": quantile([r[4] * 1000 for r in post], 0.5),
        "p99_ms_after": quantile([r[4] * 1000 for r in post], 0.99),
        "max_ms_after": max((r[4] * 1000 for r in post), default=float("nan")),
        "cache_up_before": [m.get("translation_cache_up", float("nan")) for m in before],
        "cache_up_after": [m.get("translation_cache_up", float("nan")) for m in after],
        "cache_errors_after": [m.get("translation_cache_errors_total", float("nan")) for m in after],
        "cache_hits": [m.get("translation_cache_hits_total", float("nan")) for m in after],
        "ready_after": ready,
        "alive_after": alive,
    }
    log(f"redis kill: {len(records)} requests ({len(post)} after the kill at {kill_t:.1f} s), {len(failed)} failed, "
        f"{len(inexact)} inexact; cache_up {result['cache_up_before']} -> {result['cache_up_after']}; "
        f"p99 {result['p99_ms_before']:.0f} -> {result['p99_ms_after']:.0f} ms")
    return result
