"""Schemathesis against the running service's own /openapi.json: generated requests, every check.

`schemathesis run` (4.x) with every check on, its coverage phase (edge cases derived from the schema:
missing fields, wrong types, boundary lengths, unexpected methods) and its fuzzing phase (random valid
and invalid bodies). Every request and check result comes back in its NDJSON report, from which the step
counts the cases, the statuses, the 5xx and the responses that break the document.

One configuration choice, written to `schemathesis.toml` next to the reports: 413 counts as a proper
rejection of a body over the document's limits (records over maxItems, a text over maxLength), and as
a proper answer to a valid body that is too big to take (over MT_MAX_BODY_BYTES, or more sentences than
the queue holds). The README and the document both give 413 for exactly these; schemathesis' defaults
expect 400 or 422 for the one and a 2xx for the other.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from loadtest.paths import relative
from loadtest.reliability.common import log

CONFIG = """# Written by loadtest/reliability/spec.py. 413 is the documented answer to bodies over the limits.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
"""
# The checks of a response against the document (the rest look for server errors or API-wide bugs).
SERVER_ERROR_CHECK = "not_a_server_error"


def command(url: str, work_dir: Path, *, max_examples: int, seed: int, workers: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(work_dir / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(max_examples), "--seed", str(seed), "--continue-on-failure", "--no-shrink",
        "--workers", str(workers), "--generation-database", "none", "--request-timeout", "30",
        "--report", "ndjson,json", "--report-dir", str(work_dir / "reports"), "--no-color",
    ]


def run(url: str, work_dir: Path, *, max_examples: int = 900, seed: int = 20261123, timeout_s: float = 400.0) -> dict:
    """Runs schemathesis against the service at `url`; returns its figures (and writes its reports under
    `work_dir`)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "schemathesis.toml").write_text(CONFIG)
    reports = work_dir / "reports"
    for old in reports.glob("*"):
        old.unlink()
    argv = command(url, work_dir, max_examples=max_examples, seed=seed)
    started = time.monotonic()
    completed = subprocess.run(argv, cwd=work_dir, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.monotonic() - started
    (work_dir / "schemathesis.out").write_text(completed.stdout + completed.stderr)
    ndjson = sorted(reports.glob("*.ndjson"))
    if not ndjson:
        raise RuntimeError(f"schemathesis wrote no report (exit {completed.returncode}):\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
    result = summarize(ndjson[-1])
    summary = json.loads(sorted(reports.glob("*.json"))[-1].read_text()) if list(reports.glob("*.json")) else {}
    result.update(
        seconds=round(seconds, 1),
        exit_code=completed.returncode,
        version=summary.get("schemathesis_version", ""),
        seed=seed,
        max_examples=max_examples,
        errors=[str(e)[:300] for e in summary.get("errors", [])],
        command="schemathesis " + " ".join(_readable(a) for a in argv[3:]),
    )
    log(f"schemathesis: {result['cases']} cases in {seconds:.0f} s, {result['server_errors']} 5xx, "
        f"{result['violations']} violating the document ({len(result['failures'])} kinds)")
    return result


def summarize(ndjson: Path) -> dict:
    """Cases, statuses and failing checks from schemathesis' NDJSON event stream."""
    cases = 0
    statuses: Counter[str] = Counter()
    by_operation: Counter[str] = Counter()
    by_phase: Counter[str] = Counter()
    server_errors = 0
    violating: set[str] = set()
    failures: dict[tuple[str, str], dict] = {}
    with open(ndjson, encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if not finished:
                continue
            recorder = finished.get("recorder", {})
            interactions = recorder.get("interactions", {})
            label = recorder.get("label", "?")
            for interaction in interactions.values():
                cases += 1
                by_operation[label] += 1
                by_phase[finished.get("phase", "?")] += 1
                response = interaction.get("response") or {}
                status = response.get("status_code")
                statuses[str(status)] += 1
                if isinstance(status, int) and status >= 500:
                    server_errors += 1
            for case_id, checks in recorder.get("checks", {}).items():
                for check in checks:
                    if check.get("status") != "failure":
                        continue
                    info = (check.get("failure_info") or {}).get("failure", {})
                    if check["name"] != SERVER_ERROR_CHECK:
                        violating.add(f"{label}/{case_id}")
                    key = (check["name"], info.get("title", ""))
                    entry = failures.setdefault(key, {
                        "check": check["name"], "code": info.get("code", ""), "title": info.get("title", ""),
                        "message": info.get("message", "").split("\n")[0], "operations": set(), "cases": 0, "examples": [],
                        "answers": Counter(),
                    })
                    entry["cases"] += 1
                    entry["operations"].add(label)
                    entry["answers"][_answer(interactions.get(case_id))] += 1
                    if len(entry["examples"]) < 20:
                        entry["examples"].append(_example(recorder, case_id, interactions.get(case_id)))
    for entry in failures.values():
        entry["operations"] = sorted(entry["operations"])
        entry["examples"] = sorted(entry["examples"], key=lambda e: len(e.get("body", "")))[:3]  # the shortest first
        entry["answers"] = dict(entry["answers"].most_common(5))
    return {
        "cases": cases,
        "by_operation": dict(by_operation.most_common()),
        "by_phase": dict(by_phase),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": server_errors,
        "violations": len(violating),
        "failures": sorted(failures.values(), key=lambda f: -f["cases"]),
    }


def _example(recorder: dict, case_id: str, interaction: dict | None) -> dict:
    case = (recorder.get("cases", {}).get(case_id) or {}).get("value", {})
    example = {"method": case.get("method", ""), "path": case.get("path", "")}
    if "body" in case:
        example["body"] = json.dumps(case["body"], ensure_ascii=True)[:400]
    response = (interaction or {}).get("response") or {}
    if response:
        example["status"] = response.get("status_code")
        content = (response.get("content") or {}).get("$base64")
        if content:
            example["response"] = base64.b64decode(content).decode("utf-8", "replace")[:300]
    return example


def _answer(interaction: dict | None) -> str:
    """The response, with numbers and quoted values masked, so that one cause reads as one line."""
    import re

    response = (interaction or {}).get("response") or {}
    content = (response.get("content") or {}).get("$base64")
    text = base64.b64decode(content).decode("utf-8", "replace") if content else ""
    text = re.sub(r"'[^']*'", "'…'", text)
    return f"{response.get('status_code')} " + re.sub(r"-?\d+(\.\d+)?", "N", text)[:200]


def _readable(arg: str) -> str:
    try:
        return relative(arg) if arg.startswith("/") else arg
    except ValueError:
        return arg
