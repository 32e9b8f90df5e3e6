"""`python -m loadtest.edge` (`make bench-edge`): what the HTTP edge costs, and how overload degrades.

1. edge      The service (toy model, cache off, so every request goes through tokenizer, batcher and
             engine) and the fixed reference (loadtest/edge/reference_app.py: bare Starlette on plain
             uvicorn, h11 + asyncio) under the same wrk load, alternately, `rounds` times. CPU per request
             comes from /proc (utime + stime); for the service, the engine's own threads are subtracted
             (translation_engine_cpu_seconds_total), leaving what the edge and the pipeline cost.
   Beside them, in the same rounds: the service with tracing on (OTLP over HTTP to a local sink, every
             request sampled, then one in ten), and the service of each `--baseline` git revision (a worktree of it), so that
             what a change costs per request is measured side by side on the same load.
2. overload  The service with a queue of 512 sentences: good requests/s with `capacity_connections`
             clients, then with `overload_connections` clients that retry at once after a 429, while a
             probe client times single requests; RSS before and after.

Figures go to stdout, `<work-dir>/results.json` and a Markdown report (default docs/benchmarks-edge.md).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from loadtest.bench import machine
from loadtest.bench.server import Service
from loadtest.edge import wrk
from loadtest.harness import metric_value
from loadtest.paths import ROOT
from loadtest.stats import nearest_rank
from loadtest.texts import TextSource

TOY_HF_DIR = ROOT / "tests" / "fixtures" / "toy-m2m100"
ENGINE_CPU = "translation_engine_cpu_seconds_total"


@dataclass(frozen=True)
class EdgeConfig:
    model_dir: Path = ROOT / "reports" / "bench-edge" / "toy-int8"
    output: Path = ROOT / "docs" / "benchmarks-edge.md"
    work_dir: Path = ROOT / "reports" / "bench-edge"
    seconds: float = 10.0
    warm_up_seconds: float = 2.0
    rounds: int = 3
    connections: int = 64
    bodies: int = 2048
    overload_queue: int = 512
    capacity_connections: int = 256
    overload_connections: int = 2000
    probe_requests: int = 300  # at most; the probe stops with the overload run
    repeat_floods: int = 4  # further floods, to tell an allocator's high-water mark from a leak
    tracing_ratios: tuple[float, ...] = (1.0, 0.1)  # also measure the service with tracing on, sampling these shares
    baselines: tuple[str, ...] = ()  # git revisions whose service is measured beside this one
    command: str = "make bench-edge"

    @classmethod
    def quick(cls) -> EdgeConfig:
        """Seconds instead of a minute, for the tests: the figures are only indicative. 1,000 flood connections:
        each refused one is held for its Retry-After, so refusals per second are about the connection count, and
        with 400 the probe client went unrefused in about one run in five."""
        work = ROOT / "reports" / "bench-edge-quick"
        return cls(model_dir=work / "toy-int8", output=work / "benchmarks-edge.md", work_dir=work, seconds=2.0,
                   warm_up_seconds=1.0, rounds=1, overload_queue=64, capacity_connections=32, overload_connections=1000,
                   probe_requests=100, repeat_floods=1,
                   command="make bench-edge QUICK=1")


@dataclass
class CpuRow:
    server: str
    requests_per_s: float
    cpu_us_per_request: float  # the whole process
    engine_us_per_request: float = 0.0  # the engine's own threads (service only)
    non_2xx: int = 0

    @property
    def edge_us_per_request(self) -> float:
        return self.cpu_us_per_request - self.engine_us_per_request


@dataclass
class Results:
    config: dict
    machine: dict
    reference: list[CpuRow] = field(default_factory=list)
    service: list[CpuRow] = field(default_factory=list)
    # The same reference app on the service's server stack: how much of the service's cost is the server's.
    reference_fast: list[CpuRow] = field(default_factory=list)
    traced: dict[str, list[CpuRow]] = field(default_factory=dict)  # sampled share -> the service with tracing on
    baselines: dict[str, list[CpuRow]] = field(default_factory=dict)  # revision -> its service's rounds
    overload: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        reference = statistics.median(r.cpu_us_per_request for r in self.reference)
        return statistics.median(r.edge_us_per_request for r in self.service) / reference


def log(message: str) -> None:
    print(f"[bench-edge {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str, name: str) -> float:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return metric_value(text, name)


def measure(server: Service, script: Path, config: EdgeConfig, *, label: str, engine: bool) -> CpuRow:
    wrk.run(server.url, script, connections=config.connections, seconds=config.warm_up_seconds)
    pid = server.process.pid
    cpu_before, engine_before = cpu_seconds(pid), scrape(server.url, ENGINE_CPU) if engine else 0.0
    result = wrk.run(server.url, script, connections=config.connections, seconds=config.seconds)
    cpu_after, engine_after = cpu_seconds(pid), scrape(server.url, ENGINE_CPU) if engine else 0.0
    row = CpuRow(
        server=label,
        requests_per_s=result.requests_per_s,
        cpu_us_per_request=(cpu_after - cpu_before) / result.requests * 1e6,
        engine_us_per_request=(engine_after - engine_before) / result.requests * 1e6,
        non_2xx=result.non_2xx,
    )
    log(f"{label}: {row.requests_per_s:,.0f} requests/s, {row.cpu_us_per_request:.0f} µs CPU per request "
        f"({row.edge_us_per_request:.0f} outside the engine), non-2xx {row.non_2xx}")
    return row


def probe(url: str, body: bytes, stop: threading.Event, limit: int) -> list[tuple[int, float]]:
    """Sequential single requests on one kept-alive connection, as a well-behaved client sends them
    (it waits Retry-After after a 429): (status, milliseconds) each."""
    samples: list[tuple[int, float]] = []
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        while not stop.is_set() and len(samples) < limit:
            started = time.perf_counter()
            connection.request("POST", "/translation", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            samples.append((response.status, (time.perf_counter() - started) * 1000))
            retry_after = response.getheader("retry-after")
            stop.wait(float(retry_after) if response.status == 429 and retry_after else 0.01)
    finally:
        connection.close()
    return samples


def overload(config: EdgeConfig, script: Path, probe_body: bytes) -> dict:
    # wrk's connections all come from one address but stand for many clients: no per-client share.
    env = {"MT_CACHE_SIZE": "0", "MT_MAX_QUEUE": str(config.overload_queue), "MT_LOG_LEVEL": "warning",
           "MT_CLIENT_MAX_SENTENCES": str(config.overload_queue)}
    with Service.ct2(config.model_dir, env, config.work_dir / "service-overload.log") as service:
        wrk.run(service.url, script, connections=config.connections, seconds=config.warm_up_seconds)
        capacity = wrk.run(service.url, script, connections=config.capacity_connections, seconds=config.seconds)
        rss_before = service.memory_kib().get("VmRSS", 0)
        log(f"capacity, {config.capacity_connections} clients: {capacity.good_per_s:,.0f} good requests/s")
        stop, samples = threading.Event(), []
        prober = threading.Thread(target=lambda: samples.extend(probe(service.url, probe_body, stop, config.probe_requests)))
        prober.start()
        try:
            flood = wrk.run(service.url, script, connections=config.overload_connections, seconds=config.seconds)
        finally:
            stop.set()
            prober.join(60)
        rss_after = service.memory_kib().get("VmRSS", 0)
        # More floods: memory that keeps growing would show here, past the first flood's buffers.
        again, rss_again = [], []
        for _ in range(config.repeat_floods):
            again.append(wrk.run(service.url, script, connections=config.overload_connections, seconds=config.seconds).good_per_s)
            rss_again.append(service.memory_kib().get("VmRSS", 0) / 1024)
    refused = [ms for status, ms in samples if status == 429]
    served = [ms for status, ms in samples if status == 200]
    result = {
        "queue": config.overload_queue,
        "capacity_connections": config.capacity_connections,
        "capacity_good_per_s": capacity.good_per_s,
        "capacity_non_2xx": capacity.non_2xx,
        "overload_connections": config.overload_connections,
        "overload_requests_per_s": flood.requests_per_s,
        "overload_good_per_s": flood.good_per_s,
        "overload_socket_errors": flood.socket_errors,
        "ratio": flood.good_per_s / capacity.good_per_s if capacity.good_per_s else float("nan"),
        "probe": {"requests": len(samples), "refused": len(refused), "served": len(served),
                  "refused_p50_ms": nearest_rank(refused, 0.5), "refused_p99_ms": nearest_rank(refused, 0.99),
                  "served_p50_ms": nearest_rank(served, 0.5), "served_p99_ms": nearest_rank(served, 0.99)},
        "again_good_per_s": again,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_again_mib": rss_again,
    }
    log(f"overload, {config.overload_connections} clients: {flood.good_per_s:,.0f} good requests/s "
        f"(ratio {result['ratio']:.2f}); 429 p50 {result['probe']['refused_p50_ms']:.1f} ms; "
        f"RSS {result['rss_before_mib']:.0f} -> {result['rss_after_mib']:.0f} -> "
        + " -> ".join(f"{mib:.0f}" for mib in rss_again) + " MiB over the floods")
    return result


def run(config: EdgeConfig) -> Results:
    config.work_dir.mkdir(parents=True, exist_ok=True)
    ensure_toy_model(config.model_dir)
    bodies = _bodies(config.bodies)
    script = wrk.write_script(config.work_dir / "translation.lua", bodies)
    results = Results(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}, machine=machine.describe())
    reference = _reference("asyncio", "h11", config.work_dir / "reference.log")
    reference_fast = _reference("uvloop", "httptools", config.work_dir / "reference-fast.log")
    # Production logging (one JSON line per request) stays on: it is part of what a request costs.
    service_env = {"MT_CACHE_SIZE": "0", "MT_LOG_LEVEL": "info", "MT_CLIENT_MAX_SENTENCES": "100000"}
    service = Service.ct2(config.model_dir, service_env, config.work_dir / "service.log")
    with contextlib.ExitStack() as stack:
        for server in (reference, reference_fast, service):
            stack.enter_context(server)
        traced = {}
        if config.tracing_ratios:
            sink = stack.enter_context(_otlp_sink())
        for ratio in config.tracing_ratios:
            # Parent-based: a caller's sampled flag wins; wrk sends no traceparent, so the ratio decides.
            tracing_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_SERVICE_NAME": "bench-edge",
                           "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}"}
            log_path = config.work_dir / f"service-traced-{ratio:g}.log"
            traced[f"{ratio:g}"] = stack.enter_context(Service.ct2(config.model_dir, {**service_env, **tracing_env}, log_path))
            results.traced[f"{ratio:g}"] = []
        baselines = {}
        for revision in config.baselines:
            tree = stack.enter_context(_worktree(revision, config.work_dir / "trees"))
            baseline = Service.ct2(config.model_dir, service_env, config.work_dir / f"service-{revision}.log")
            baseline.cwd = tree
            baselines[revision] = stack.enter_context(baseline)
            results.baselines[revision] = []
        for round_ in range(config.rounds):
            log(f"edge, round {round_ + 1} of {config.rounds}")
            results.reference.append(measure(reference, script, config, label="reference", engine=False))
            results.service.append(measure(service, script, config, label="service", engine=True))
            results.reference_fast.append(measure(reference_fast, script, config, label="reference on uvloop + httptools", engine=False))
            for ratio, server in traced.items():
                label = f"service, tracing on, {float(ratio):.0%} sampled"
                results.traced[ratio].append(measure(server, script, config, label=label, engine=True))
            for revision, server in baselines.items():
                results.baselines[revision].append(measure(server, script, config, label=f"service at {revision}", engine=True))
    log(f"edge ratio: {results.ratio:.2f} (service CPU outside the engine / reference CPU, medians)")
    results.overload = overload(config, script, json.dumps(bodies[0]).encode())
    (config.work_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    return results


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that takes every export and keeps nothing (an empty ExportTraceServiceResponse is
    zero bytes of protobuf): what the service spends on its spans, not a collector, is what is measured."""

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _worktree(revision: str, parent: Path) -> Iterator[Path]:
    """A detached git worktree of `revision` (its service is started from there), removed afterwards."""
    tree = parent / revision.replace("/", "_")
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False, capture_output=True)


def _reference(loop: str, http: str, log_path: Path) -> Service:
    return Service("uvicorn", ("loadtest.edge.reference_app:app", "--loop", loop, "--http", http,
                               "--no-access-log", "--log-level", "warning"), {}, log_path)


def _bodies(count: int) -> list[dict]:
    texts = TextSource("toy").sentences(count, seed=7, short=True)
    return [{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": str(i), "text": t}]}} for i, t in enumerate(texts)]


def _jsonable(results: Results) -> dict:
    return {**asdict(results), "ratio": results.ratio,
            "service_edge_us": [r.edge_us_per_request for r in results.service]}


def ensure_toy_model(model_dir: Path) -> None:
    from loadtest.bench.run import ensure_toy_model as ensure

    ensure(model_dir)


def report(results: Results, config: EdgeConfig) -> str:
    from loadtest.edge.report import render

    return render(results, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per run, output under reports/bench-edge-quick/")
    parser.add_argument("--output", type=Path, help="Markdown report to write")
    parser.add_argument("--seconds", type=float, help="length of each timed wrk run")
    parser.add_argument("--rounds", type=int, help="alternating reference/service rounds")
    parser.add_argument("--overload-connections", type=int, help="clients in the overload run")
    parser.add_argument("--no-tracing", action="store_true", help="skip the services with tracing on")
    parser.add_argument("--baseline", action="append", default=[], metavar="REVISION",
                        help="also measure the service of this git revision (a worktree), side by side; repeatable")
    args = parser.parse_args(argv)
    config = EdgeConfig.quick() if args.quick else EdgeConfig()
    overrides = {"output": args.output, "seconds": args.seconds, "rounds": args.rounds,
                 "overload_connections": args.overload_connections, "tracing_ratios": () if args.no_tracing else None,
                 "baselines": tuple(args.baseline) or None}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    given = list(sys.argv[1:] if argv is None else argv)
    if given and not (given == ["--quick"] or args.quick):  # the report names the command that made it
        config = replace(config, command=" ".join([".venv/bin/python -m loadtest.edge", *given]))
    try:
        results = run(config)
    except wrk.WrkMissing as error:
        print(f"bench-edge: {error}", file=sys.stderr)
        return 2
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(report(results, config))
    log(f"wrote {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
