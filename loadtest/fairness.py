"""Fair scheduling, measured: an interactive client beside bulk documents, fair against first-come (FIFO).

    .venv/bin/python -m loadtest.fairness --model-dir DIR [--bulk-clients 16] [--sentences 120] [--seconds 20]

For each scheduling (MT_SCHEDULING=fair and fifo, one service each, the same settings otherwise, side by side
in one run): a probe client sends one single-sentence request every PROBE_INTERVAL seconds, first alone, then
while `bulk_clients` clients each send `sentences`-sentence documents back to back (closed loop). Reported:
the probe's p50/p99 alone and beside the bulk load, refusals, and the bulk throughput (sentences/s), so the
interactive target (p99 beside the bulk <= max(5x alone, 50 ms), none refused) and the throughput cost of
fairness (bulk sentences/s within 10% of FIFO) are read from one table.

Every service listens on 127.0.0.1 and every loop stops by its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest.harness import ServerProcess
from loadtest.stats import nearest_rank
from loadtest.toy_task import random_sentence

PROBE_INTERVAL = 0.05
WARM_UP_SECONDS = 2.0


@dataclass
class Phase:
    probe_ms: list[float] = field(default_factory=list)
    probe_refused: int = 0
    probe_failed: int = 0
    bulk_sentences: int = 0
    bulk_requests: int = 0
    bulk_refused: int = 0
    bulk_failed: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        latencies = sorted(self.probe_ms)
        return {
            "probe_requests": len(latencies),
            "probe_p50_ms": round(nearest_rank(latencies, 0.5), 1) if latencies else None,
            "probe_p99_ms": round(nearest_rank(latencies, 0.99), 1) if latencies else None,
            "probe_refused": self.probe_refused,
            "probe_failed": self.probe_failed,
            "bulk_requests": self.bulk_requests,
            "bulk_refused": self.bulk_refused,
            "bulk_failed": self.bulk_failed,
            "bulk_sentences_per_s": round(self.bulk_sentences / self.seconds, 2) if self.seconds else 0.0,
        }


def _body(texts: list[str], to_lang: str) -> dict:
    return {"payload": {"fromLang": "en", "toLang": to_lang, "records": [{"id": str(i), "text": t} for i, t in enumerate(texts)]}}


async def _probe(client: httpx.AsyncClient, phase: Phase, deadline: float, rng: random.Random) -> None:
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            response = await client.post("/translation", json=_body([random_sentence(rng, 2, 6)], "fr"))
            if response.status_code == 200:
                phase.probe_ms.append((time.perf_counter() - started) * 1000)
            elif response.status_code == 429:
                phase.probe_refused += 1
            else:
                phase.probe_failed += 1
        except httpx.HTTPError:
            phase.probe_failed += 1
        next_at += PROBE_INTERVAL
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _bulk(client: httpx.AsyncClient, phase: Phase, deadline: float, sentences: int, rng: random.Random) -> None:
    while time.monotonic() < deadline:
        # Distinct sentences every time, so the cache never answers for the engine.
        document = " ".join(random_sentence(rng, 3, 8, dot_probability=1.0) for _ in range(sentences))
        try:
            response = await client.post("/translation", json=_body([document], "de"))
        except httpx.HTTPError:
            phase.bulk_failed += 1
            continue
        if time.monotonic() > deadline:
            return  # finished after the window closed: not counted
        if response.status_code == 200:
            phase.bulk_requests += 1
            phase.bulk_sentences += sentences
        elif response.status_code == 429:
            phase.bulk_refused += 1
            await asyncio.sleep(1.0)
        else:
            phase.bulk_failed += 1


async def _run_phase(url: str, seconds: float, bulk_clients: int, sentences: int, seed: int) -> Phase:
    phase = Phase()
    limits = httpx.Limits(max_connections=bulk_clients + 4)
    timeout = httpx.Timeout(600.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        # The bulk load first, given time to fill the queue, then the probe measures beside it.
        bulk_deadline = time.monotonic() + WARM_UP_SECONDS * (1 if bulk_clients else 0) + seconds
        bulk = [
            asyncio.create_task(_bulk(client, phase, bulk_deadline, sentences, random.Random(seed + index)))
            for index in range(bulk_clients)
        ]
        if bulk:
            await asyncio.sleep(WARM_UP_SECONDS)
        started = time.monotonic()
        await _probe(client, phase, started + seconds, random.Random(seed))
        phase.seconds = time.monotonic() - started
        for task in bulk:
            task.cancel()
        await asyncio.gather(*bulk, return_exceptions=True)
    return phase


def measure(model_dir: Path, scheduling: str, env: dict[str, str], seconds: float, bulk_clients: int, sentences: int,
            log_dir: Path) -> dict:
    service_env = {**env, "MT_SCHEDULING": scheduling, "MT_CACHE_SIZE": "0", "MT_LOG_LEVEL": "warning"}
    with ServerProcess.service(model_dir, service_env, log_dir / f"service-{scheduling}.log") as service:
        alone = asyncio.run(_run_phase(service.url, seconds, 0, sentences, seed=1))
        loaded = asyncio.run(_run_phase(service.url, seconds, bulk_clients, sentences, seed=2))
    return {"scheduling": scheduling, "alone": alone.summary(), "beside_bulk": loaded.summary()}


def verdict(rows: list[dict]) -> dict:
    fair = next(row for row in rows if row["scheduling"] == "fair")
    fifo = next((row for row in rows if row["scheduling"] == "fifo"), None)
    alone, loaded = fair["alone"]["probe_p99_ms"], fair["beside_bulk"]["probe_p99_ms"]
    bound = max(5 * alone, 50.0)
    out = {
        "probe_p99_bound_ms": round(bound, 1),
        "interactive_met": loaded is not None and loaded <= bound and fair["beside_bulk"]["probe_refused"] == 0
        and fair["beside_bulk"]["bulk_refused"] == 0,
    }
    if fifo is not None and fifo["beside_bulk"]["bulk_sentences_per_s"]:
        ratio = fair["beside_bulk"]["bulk_sentences_per_s"] / fifo["beside_bulk"]["bulk_sentences_per_s"]
        out["bulk_throughput_fair_over_fifo"] = round(ratio, 3)
        out["throughput_met"] = ratio >= 0.9
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Model `{result['model']}`, {result['bulk_clients']} bulk clients of {result['sentences']}-sentence documents, "
        f"a probe of one sentence every {PROBE_INTERVAL * 1000:.0f} ms for {result['seconds']:g} s; settings "
        f"{result['env'] or 'the defaults'}. Command: `{result['command']}`.",
        "",
        "| scheduling | probe p50 / p99 alone (ms) | probe p50 / p99 beside the bulk (ms) | refused (probe / bulk) | bulk sentences/s |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        a, b = row["alone"], row["beside_bulk"]
        lines.append(
            f"| {row['scheduling']} | {a['probe_p50_ms']} / {a['probe_p99_ms']} | {b['probe_p50_ms']} / {b['probe_p99_ms']} | "
            f"{b['probe_refused']} / {b['bulk_refused']} | {b['bulk_sentences_per_s']} |"
        )
    v = result["verdict"]
    lines += ["", f"Interactive target (fair): p99 beside the bulk ≤ {v['probe_p99_bound_ms']} ms with none refused: "
              f"**{'met' if v['interactive_met'] else 'missed'}**."]
    if "bulk_throughput_fair_over_fifo" in v:
        lines.append(f"Bulk throughput, fair ÷ FIFO: **{v['bulk_throughput_fair_over_fifo']}** (target ≥ 0.9: "
                     f"{'met' if v['throughput_met'] else 'missed'}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--bulk-clients", type=int, default=16)
    parser.add_argument("--sentences", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-queue", type=int, default=2048)
    parser.add_argument("--env", action="append", default=[], help="more service settings, NAME=VALUE")
    parser.add_argument("--scheduling", action="append", choices=("fair", "fifo"), help="default: both")
    parser.add_argument("--output", type=Path, help="markdown report; the JSON goes beside it")
    parser.add_argument("--log-dir", type=Path, default=Path("reports/fairness"))
    args = parser.parse_args(argv)
    env = {"MT_MAX_QUEUE": str(args.max_queue), **dict(item.split("=", 1) for item in args.env)}
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(args.model_dir, scheduling, env, args.seconds, args.bulk_clients, args.sentences, args.log_dir)
        for scheduling in (args.scheduling or ["fair", "fifo"])
    ]
    result = {
        "model": str(args.model_dir), "bulk_clients": args.bulk_clients, "sentences": args.sentences,
        "seconds": args.seconds, "env": " ".join(f"{k}={v}" for k, v in env.items()), "rows": rows,
        "verdict": verdict(rows), "command": "python -m loadtest.fairness " + " ".join(argv or sys.argv[1:]),
    }
    report = markdown(result)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())



