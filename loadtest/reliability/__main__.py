"""`python -m loadtest.reliability` (`make reliability`, `make soak`): the service under hostile and failing
conditions, on the toy model on loopback, each step bounded in count and time.

    spec      schemathesis against /openapi.json: generated cases, 0 5xx, 0 responses off the document
    hostile   the hostile-input set (loadtest/reliability/hostile.py), health checked after each case
    overload  capacity vs 2,000 connections retrying at once (wrk), 429 latency for a polite client
    redis     two replicas on one redis-server, killed with SIGKILL mid-load
    sigterm   SIGTERM under 30 keep-alive clients at full load
    nginx     behind nginx with pooled upstream keep-alive: client B's latency and refusals while client A floods
    stalled   128 stalled request bodies from key A beside key B's requests (and with a per-client cap of 64)
    forwarded 3,000 requests with distinct 50 KB forged X-Forwarded-For: RSS and log growth
    pipelined 600 small requests pipelined on one connection: all answered
    wrongkeys 100 connections guessing API keys: 401s per second, a valid key from the same address served
    descriptors  1,100 idle connections under a 1,024 open-file limit: /healthz still answers
    sighup    SIGHUP under a steady load: nothing lost
    soak      a steady mixed load at a fixed rate (SOAK_SECONDS), failures, p99 drift, RSS growth

Figures go to `--results` (JSON) and a Markdown report (`--output`). Exit status: 0 when every target is
met, 1 when one is missed or a step could not run (the report says which), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

from loadtest.bench import machine
from loadtest.paths import relative
from loadtest.reliability import report
from loadtest.reliability.common import ROOT, WORK_DIR, Service, ensure_model, log

STEPS = ("spec", "hostile", "overload", "redis", "sigterm", "nginx", "stalled", "forwarded", "pipelined", "wrongkeys",
         "descriptors", "sighup", "soak")
# The field cases of issue 15 (`make reliability-field` runs these alone).
FIELD_STEPS = ("nginx", "stalled", "forwarded", "pipelined", "wrongkeys", "descriptors", "sighup")


def run_step(name: str, args: argparse.Namespace, model_dir: Path, work_dir: Path) -> dict:
    if name == "spec":
        from loadtest.reliability import spec

        with Service.ct2(model_dir, {}, work_dir / "service-spec.log") as service:
            result = spec.run(service.url, work_dir / "schemathesis", max_examples=args.spec_examples)
            result["service_alive_after"] = service.process.poll() is None
        return result
    if name == "hostile":
        from loadtest.reliability import hostile

        with Service.ct2(model_dir, hostile.SERVICE_ENV, work_dir / "service-hostile.log") as service:
            result = hostile.run(service.url)
        result["service_env"] = hostile.SERVICE_ENV
        return result
    if name == "overload":
        from loadtest.reliability import overload

        return overload.run(model_dir, work_dir, seconds=args.overload_seconds,
                            capacity_connections=args.capacity_connections, flood_connections=args.flood_connections)
    if name == "redis":
        from loadtest.reliability import redis_kill

        return redis_kill.run(model_dir, work_dir / "redis", seconds=args.redis_seconds, kill_at=args.redis_seconds / 3)
    if name == "sigterm":
        from loadtest.reliability import sigterm

        return sigterm.run(model_dir, work_dir, clients=args.sigterm_clients)
    if name == "nginx":
        from loadtest.reliability import field

        return field.nginx_step(model_dir, work_dir / "nginx", seconds=args.nginx_seconds, flood_connections=args.nginx_connections)
    if name == "stalled":
        from loadtest.reliability import hostile_clients

        return hostile_clients.stalled_step(model_dir, work_dir / "stalled", connections=args.stalled_connections,
                                            seconds=args.stalled_seconds)
    if name == "forwarded":
        from loadtest.reliability import field

        return field.forged_forwarded(model_dir, work_dir / "forwarded", requests=args.forwarded_requests)
    if name == "pipelined":
        from loadtest.reliability import hostile_clients

        return hostile_clients.pipelined_step(model_dir, work_dir / "pipelined", requests=args.pipelined_requests)
    if name == "wrongkeys":
        from loadtest.reliability import hostile_clients

        return hostile_clients.wrong_keys(model_dir, work_dir / "wrongkeys", connections=args.wrongkeys_connections,
                                          seconds=args.wrongkeys_seconds)
    if name == "descriptors":
        from loadtest.reliability import hostile_clients

        return hostile_clients.idle_connections(model_dir, work_dir / "descriptors", idle=args.idle_connections,
                                                nofile=args.idle_nofile)
    if name == "sighup":
        from loadtest.reliability import hostile_clients

        return hostile_clients.sighup(model_dir, work_dir / "sighup", clients=args.sighup_clients)
    if name == "soak":
        from loadtest.reliability import soak

        return soak.run(model_dir, work_dir / "soak", seconds=args.soak_seconds, rate=args.soak_rate)
    raise ValueError(f"unknown step {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.reliability", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated, of {', '.join(STEPS)}; `field` = {','.join(FIELD_STEPS)} (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md", help="Markdown report")
    parser.add_argument("--results", type=Path, default=WORK_DIR / "results.json", help="JSON figures")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help="logs, reports, the converted toy model")
    parser.add_argument("--model-dir", type=Path, help="a converted toy model (default: converted into the work dir)")
    parser.add_argument("--command", default="make reliability", help="the command named in the report")
    parser.add_argument("--spec-examples", type=int, default=900, help="schemathesis cases per operation (fuzzing)")
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--capacity-connections", type=int, default=256)
    parser.add_argument("--flood-connections", type=int, default=2000)
    parser.add_argument("--redis-seconds", type=float, default=12.0)
    parser.add_argument("--sigterm-clients", type=int, default=30)
    parser.add_argument("--nginx-seconds", type=float, default=10.0, help="client A's flood through nginx, per variant")
    parser.add_argument("--nginx-connections", type=int, default=48, help="client A's connections to nginx")
    parser.add_argument("--stalled-connections", type=int, default=128)
    parser.add_argument("--stalled-seconds", type=float, default=10.0, help="client B's requests beside the stalled bodies")
    parser.add_argument("--forwarded-requests", type=int, default=3000)
    parser.add_argument("--pipelined-requests", type=int, default=600)
    parser.add_argument("--wrongkeys-connections", type=int, default=100)
    parser.add_argument("--wrongkeys-seconds", type=float, default=5.0)
    parser.add_argument("--idle-connections", type=int, default=1100)
    parser.add_argument("--idle-nofile", type=int, default=1024, help="the service's open-file limit (soft and hard)")
    parser.add_argument("--sighup-clients", type=int, default=8)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--soak-rate", type=float, default=200.0, help="requests per second")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    steps = [step for s in steps for step in (FIELD_STEPS if s == "field" else (s,))]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps: {', '.join(unknown)}")
    if args.soak_seconds < 10:
        parser.error("--soak-seconds must be at least 10")

    started = time.monotonic()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or ensure_model(args.work_dir / "toy-int8")
    results: dict = {"machine": machine.describe(), "started": time.strftime("%Y-%m-%d %H:%M %Z"), "command": args.command,
                     "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "steps": {}}
    for name in steps:
        log(f"step {name}")
        step_started = time.monotonic()
        try:
            results["steps"][name] = run_step(name, args, model_dir, args.work_dir)
        except Exception as error:  # noqa: BLE001 - recorded; the other steps still run
            log(f"step {name} could not run: {error.__class__.__name__}: {error}")
            results["steps"][name] = {"error": f"{error.__class__.__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        results["steps"][name]["step_seconds"] = round(time.monotonic() - step_started, 1)
    results["seconds"] = round(time.monotonic() - started, 1)
    figures = report.key_figures(results)
    results["key_figures"] = figures
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False) + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report.render(results))
    missed = [f for f in figures if f["status"] in ("missed", "not run")]
    log(f"wrote {relative(args.output)} and {relative(args.results)} in {results['seconds']:.0f} s")
    for figure in figures:
        log(f"  {figure['status']:>8}  {figure['figure']}: {figure['value']} (target {figure['target']})")
    return 1 if missed else 0


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
