"""The Locust load test runs headless against a real toy service, records the timing headers, and its
SLO checks (in Locust's quitting event and in the standalone checker) fail when an objective is missed."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import slo
from tests.helpers import ROOT, ServerProcess

LOCUST_TIMEOUT = 60


def run_locust(url: str, prefix: Path, seconds: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
        "--host", url, "--users", "8", "--spawn-rate", "8", "--run-time", f"{seconds}s", "--stop-timeout", "5s",
        "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", "--text-source", "toy", "--verify", "words", *args,
    ]
    environment = {k: v for k, v in os.environ.items() if k not in ("MAX_FAILURE_RATIO", "P99_MS", "MIN_RPS")}
    return subprocess.run(command, cwd=ROOT, env={**environment, **(env or {})}, capture_output=True, text=True, timeout=LOCUST_TIMEOUT)


def rows(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtest.slo", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def toy_service(toy_model_dir, tmp_path_factory):
    """One toy service for the module (start_service is function-scoped). Locust's users all come from
    127.0.0.1 but stand for many clients: no per-client share."""
    log_path = tmp_path_factory.mktemp("loadtest") / "service.log"
    service = ServerProcess.service(toy_model_dir, {"MT_CLIENT_MAX_SENTENCES": "100000"}, log_path)
    try:
        yield service.start(timeout=60)
    finally:
        service.stop(timeout=15)


@pytest.fixture(scope="module")
def passing_run(toy_service, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("locust") / "run"
    result = run_locust(toy_service.url, prefix, 5, "--slo-p99-ms", "30000", "--slo-min-rps", "1")
    return prefix, result


@pytest.mark.slow
def test_locust_run_writes_reports_without_failures(passing_run, toy_service):
    prefix, result = passing_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + toy_service.log()
    for suffix in ("_stats.csv", "_final_stats.csv", "_failures.csv", "_stats_history.csv", ".html"):
        assert Path(f"{prefix}{suffix}").is_file(), suffix
    assert "<html" in Path(f"{prefix}.html").read_text(encoding="utf-8").lower()
    stats = rows(Path(f"{prefix}_final_stats.csv"))
    post = stats[("POST", "/translation")]
    assert int(post["Request Count"]) >= 20
    assert int(post["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    assert "SLO PASS" in output and "FAIL" not in output


@pytest.mark.slow
def test_timing_headers_are_recorded(passing_run):
    prefix, _ = passing_run
    stats = rows(Path(f"{prefix}_final_stats.csv"))
    post = int(stats[("POST", "/translation")]["Request Count"])
    total = stats[("TIMING", "total-time")]
    assert int(total["Request Count"]) == post  # one per successful response
    for name in ("queue-time", "inference-time"):
        assert int(stats[("TIMING", name)]["Request Count"]) > 0, name
    # The server's own time never exceeds what the client saw.
    assert float(total["Average Response Time"]) <= float(stats[("POST", "/translation")]["Average Response Time"])
    assert float(stats[("TIMING", "inference-time")]["Max Response Time"]) > 0


@pytest.mark.slow
def test_checker_passes_and_fails_on_the_csv(passing_run):
    prefix, _ = passing_run
    final = f"{prefix}_final_stats.csv"
    ok = checker(final, "--p99-ms", "30000", "--min-rps", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "SLO PASS" in ok.stdout
    impossible = checker(final, "--min-rps", "100000")
    assert impossible.returncode == 1
    assert "FAIL" in impossible.stdout and "throughput" in impossible.stdout
    # Locust's periodic stats file works too; a missing row is an error of its own.
    assert checker(f"{prefix}_stats.csv", "--p99-ms", "30000", "--min-rps", "0").returncode == 0
    assert checker(final, "--name", "/nope").returncode == 2


@pytest.mark.slow
def test_impossible_slo_fails_the_locust_run(toy_service, tmp_path):
    prefix = tmp_path / "impossible"
    result = run_locust(toy_service.url, prefix, 3, env={"MIN_RPS": "100000", "P99_MS": "30000"})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "SLO FAIL" in output and ">= 100000 req/s" in output
    assert int(rows(Path(f"{prefix}_final_stats.csv"))[("POST", "/translation")]["Failure Count"]) == 0


def test_slo_rules():
    objectives = slo.Objectives(max_failure_ratio=0.0, p99_ms=2000, min_rps=10)
    assert slo.passed(slo.evaluate(slo.Observed(requests=100, failures=0, p99_ms=1999, rps=10), objectives))
    assert not slo.passed(slo.evaluate(slo.Observed(requests=100, failures=1, p99_ms=10, rps=50), objectives))
    assert not slo.passed(slo.evaluate(slo.Observed(requests=100, failures=0, p99_ms=2000, rps=50), objectives))
    assert not slo.passed(slo.evaluate(slo.Observed(requests=100, failures=0, p99_ms=10, rps=9.9), objectives))
    assert not slo.passed(slo.evaluate(slo.Observed(requests=0, failures=0, p99_ms=0, rps=0), objectives))
    loose = slo.Objectives(max_failure_ratio=0.05, p99_ms=2000, min_rps=1)
    assert slo.passed(slo.evaluate(slo.Observed(requests=100, failures=5, p99_ms=10, rps=5), loose))
    table = slo.format_table(slo.evaluate(slo.Observed(100, 0, 10, 50), objectives))
    assert "PASS" in table and "| throughput" in table
    assert slo.Objectives.from_env({"MIN_RPS": "3", "P99_MS": "500"}) == slo.Objectives(0.0, 500.0, 3.0)


def test_toy_texts_are_checked_by_words():
    from loadtest.texts import TextSource

    toy = TextSource("toy")
    assert toy.matches("alpha bravo charlie.", "charlie bravo alpha.", "fr", "exact")
    assert toy.matches("alpha bravo charlie.", "charlie bravo alpha", "fr", "words")  # a lost full stop
    assert not toy.matches("alpha bravo charlie.", "charlie bravo alpha", "fr", "exact")
    assert not toy.matches("alpha bravo charlie.", "delta echo golf.", "fr", "words")  # someone else's result
    assert toy.matches("alpha bravo charlie.", "anything", "ja", "words")  # no rule: unknown
    long = toy.long_text(__import__("random").Random(1))
    assert toy.expected(long, "en") == long  # copy into en, sentence by sentence, breaks kept
    assert len(set(TextSource("english").sentences(50, seed=3))) == 50
