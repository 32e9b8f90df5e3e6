"""Service-level objectives for a load test: evaluate them, print a PASS/FAIL table, exit non-zero on a miss.

Used two ways, with the same rules:
- by loadtest/locustfile.py when Locust quits (the `--slo-*` options), which sets Locust's exit code;
- standalone on a Locust stats CSV written earlier:

    python -m loadtest.slo reports/load-test/locust_stats.csv [--max-failure-ratio 0] [--p99-ms 2000] [--min-rps 10]

Exit status: 0 every objective met, 1 one or more missed, 2 the CSV has no row for the endpoint.
Pure standard library: no Locust import, so tests and CI can run it anywhere.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The Locust stats row the objectives apply to: every POST /translation (the locustfile names them all so).
ENDPOINT_TYPE = "POST"
ENDPOINT_NAME = "/translation"


@dataclass(frozen=True)
class Objectives:
    max_failure_ratio: float = 0.0  # failed requests / requests
    p99_ms: float = 2000.0  # 99th percentile of the client-side latency must be below this
    min_rps: float = 10.0  # requests per second over the whole run

    @classmethod
    def from_env(cls, environ=os.environ) -> Objectives:
        """MAX_FAILURE_RATIO, P99_MS, MIN_RPS (the make variables) override the defaults."""
        defaults = cls()
        return cls(
            max_failure_ratio=float(environ.get("MAX_FAILURE_RATIO", defaults.max_failure_ratio)),
            p99_ms=float(environ.get("P99_MS", defaults.p99_ms)),
            min_rps=float(environ.get("MIN_RPS", defaults.min_rps)),
        )


@dataclass(frozen=True)
class Observed:
    requests: int
    failures: int
    p99_ms: float
    rps: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    observed: str
    passed: bool


def evaluate(observed: Observed, objectives: Objectives) -> list[Check]:
    """One check per objective; a run without a single request fails every one of them."""
    ran = observed.requests > 0
    return [
        Check("requests", "> 0", f"{observed.requests}", ran),
        Check(
            "failure ratio",
            f"<= {objectives.max_failure_ratio:g}",
            f"{observed.failure_ratio:.4f} ({observed.failures} failed)",
            ran and observed.failure_ratio <= objectives.max_failure_ratio,
        ),
        Check("p99 latency", f"< {objectives.p99_ms:g} ms", f"{observed.p99_ms:g} ms", ran and observed.p99_ms < objectives.p99_ms),
        Check("throughput", f">= {objectives.min_rps:g} req/s", f"{observed.rps:.2f} req/s", ran and observed.rps >= objectives.min_rps),
    ]


def passed(checks: Sequence[Check]) -> bool:
    return all(check.passed for check in checks)


def format_table(checks: Sequence[Check], title: str = f"SLO {ENDPOINT_TYPE} {ENDPOINT_NAME}") -> str:
    rows = [("objective", "target", "observed", "result")] + [
        (c.name, c.target, c.observed, "PASS" if c.passed else "FAIL") for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [title, line]
    for index, row in enumerate(rows):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if index == 0:
            out.append(line)
    out.append(line)
    out.append(f"SLO {'PASS' if passed(checks) else 'FAIL'}")
    return "\n".join(out)


def read_stats_csv(path: Path | str, name: str = ENDPOINT_NAME, type_: str = ENDPOINT_TYPE) -> Observed | None:
    """The row of `type_ name` in a Locust `*_stats.csv`, or None if there is none."""
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("Type") == type_ and row.get("Name") == name:
                p99 = row.get("99%", "N/A")
                return Observed(
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    p99_ms=float(p99) if p99 not in ("", "N/A") else float("inf"),
                    rps=float(row["Requests/s"]),
                )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Objectives.from_env()
    parser = argparse.ArgumentParser(prog="python -m loadtest.slo", description=__doc__.split("\n\n")[0])
    parser.add_argument("stats_csv", type=Path, help="Locust's <prefix>_stats.csv")
    parser.add_argument("--max-failure-ratio", type=float, default=defaults.max_failure_ratio, help="(env MAX_FAILURE_RATIO; default %(default)s)")
    parser.add_argument("--p99-ms", type=float, default=defaults.p99_ms, help="(env P99_MS; default %(default)s)")
    parser.add_argument("--min-rps", type=float, default=defaults.min_rps, help="(env MIN_RPS; default %(default)s)")
    parser.add_argument("--name", default=ENDPOINT_NAME, help="stats row name (default %(default)s)")
    parser.add_argument("--type", dest="type_", default=ENDPOINT_TYPE, help="stats row type (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.stats_csv.is_file():
        print(f"slo: no such file: {args.stats_csv}", file=sys.stderr)
        return 2
    observed = read_stats_csv(args.stats_csv, args.name, args.type_)
    if observed is None:
        print(f"slo: {args.stats_csv} has no row {args.type_} {args.name}", file=sys.stderr)
        return 2
    checks = evaluate(observed, Objectives(args.max_failure_ratio, args.p99_ms, args.min_rps))
    print(format_table(checks))
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
