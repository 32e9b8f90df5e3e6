"""`python -m loadtest.bench`: run the benchmarks and write the report (see loadtest/bench/run.py).

    python -m loadtest.bench                 full run on models/bench-m2m100-418m -> docs/benchmarks.md, docs/img/
    python -m loadtest.bench --quick         the toy checkpoint, ~1 minute -> reports/bench-quick/
    python -m loadtest.bench --device cuda   on a GPU: CTranslate2 float16/int8_float16 vs transformers float16 at
                                             batches 1-256, 4,096 sentences from up to 1,024 clients in 4 client
                                             processes, the service with its cuda defaults
    python -m loadtest.bench --sections engine,baseline --engine-batches 1 --baseline-concurrency 1
                                             a part of it, smaller
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from loadtest.bench.config import SECTIONS, Config
from loadtest.bench.results import BenchResults
from loadtest.bench.run import Bench, ensure_toy_model, log


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy checkpoint, small counts, output under reports/bench-quick/")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", type=Path, help="Markdown file to write (plots go to img/ beside it)")
    parser.add_argument("--work-dir", type=Path, help="service logs and results.json")
    parser.add_argument("--model-dir", type=Path, help="converted model directory the service and CTranslate2 load")
    parser.add_argument("--hf-dir", type=Path, help="the Hugging Face checkpoint transformers loads")
    parser.add_argument("--tokens", type=int, help="output tokens per translation (N)")
    parser.add_argument("--concurrency", type=_ints, help="client counts, e.g. 1,4,16,64")
    parser.add_argument("--engine-batches", type=_ints, help="section a batch sizes (cpu: 1,16; cuda: 1,16,64,256)")
    parser.add_argument("--engine-repeats", type=int, help="timed runs per engine row after its warm-up (default 3)")
    parser.add_argument("--client-processes", type=int, help="load-client processes (cpu: 1; cuda: 4)")
    parser.add_argument("--baseline-concurrency", type=_ints, help="client counts for the transformers baseline (section h)")
    parser.add_argument("--baseline-max-requests", type=int, help="at most this many sentences per baseline client count")
    parser.add_argument("--sections", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--no-settings", action="store_true", help="skip the settings sweep")
    parser.add_argument("--set", dest="service_overrides", action="append", default=[], metavar="MT_NAME=VALUE",
                        help="a service setting for every benchmarked service (repeatable), e.g. --set MT_MAX_BATCH_SIZE=16")
    parser.add_argument("--command", help="the command to show in the report")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: rewrite the report from <work-dir>/results.json")
    args = parser.parse_args(argv)

    config = Config.quick_mode(args.device) if args.quick else Config.full_mode(args.device)
    overrides = {
        "output": args.output, "work_dir": args.work_dir, "model_dir": args.model_dir, "hf_dir": args.hf_dir,
        "tokens": args.tokens, "concurrency": args.concurrency, "command": args.command,
        "engine_batches": args.engine_batches, "engine_repeats": args.engine_repeats,
        "client_processes": args.client_processes, "baseline_concurrency": args.baseline_concurrency,
        "baseline_max_requests": args.baseline_max_requests,
    }
    for name in ("engine_repeats", "client_processes", "baseline_max_requests"):
        if overrides[name] is not None and overrides[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    pairs = dict(config.service_overrides)  # --set adds to (or replaces) the mode's own, e.g. the cuda sweep's
    for item in args.service_overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("MT_"):
            parser.error(f"--set needs MT_NAME=VALUE, got {item!r}")
        pairs[name] = value
    overrides["service_overrides"] = tuple(pairs.items())
    if args.sections:
        unknown = set(args.sections.split(",")) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        overrides["sections"] = tuple(s for s in SECTIONS if s in args.sections.split(","))
    if args.no_settings:
        overrides["sections"] = tuple(s for s in overrides.get("sections", config.sections) if s != "settings")
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})

    if args.report_only:
        from loadtest.bench import report

        results = BenchResults.from_json((config.work_dir / "results.json").read_text())
        for path in report.write(results, config):
            log(f"wrote {path}")
        return 0
    if config.quick and args.model_dir is None:
        ensure_toy_model(config.model_dir)
    for path, what in ((config.model_dir / "manifest.json", "model directory"), (config.hf_dir / "config.json", "checkpoint")):
        if not path.is_file():
            print(f"bench: no {what} at {path.parent}" + ("" if config.quick else "; run `make bench-checkpoint` first"), file=sys.stderr)
            return 2

    from loadtest.bench import report

    results = Bench(config).run()
    for path in report.write(results, config):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
