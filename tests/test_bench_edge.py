"""`make bench-edge QUICK=1` end to end: wrk against the reference app and the toy service, then overload."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from loadtest.edge import wrk
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.80ms  775.15us  15.70ms   86.32%
  Latency Distribution
     50%    6.50ms
     75%    7.10ms
     90%    7.90ms
     99%  950.00us
  18765 requests in 2.00s, 3.40MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 765
Requests/sec:   9382.50
"""


def test_wrk_output_is_read_with_units():
    result = wrk.parse(WRK_OUTPUT, 64)
    assert (result.requests, result.seconds, result.non_2xx, result.socket_errors) == (18765, 2.0, 765, 3)
    assert result.latency_p50_ms == 6.5 and result.latency_p99_ms == pytest.approx(0.95)
    assert result.good_per_s == (18765 - 765) / 2.0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")
def test_quick_edge_benchmark_measures_both_servers_and_the_overload(tmp_path):
    output = tmp_path / "edge.md"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.edge", "--quick", "--output", str(output), "--baseline", "HEAD"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((ROOT / "reports" / "bench-edge-quick" / "results.json").read_text())
    (reference,), (service,), (fast,) = results["reference"], results["service"], results["reference_fast"]
    assert reference["non_2xx"] == 0 and service["non_2xx"] == 0 and fast["non_2xx"] == 0
    assert fast["cpu_us_per_request"] > 0
    assert reference["requests_per_s"] > 0 and service["requests_per_s"] > 0
    # The engine's threads did the translating, and the rest is what the edge costs.
    assert 0 < service["engine_us_per_request"] < service["cpu_us_per_request"]
    assert math.isfinite(results["ratio"]) and results["ratio"] > 0
    overload = results["overload"]
    assert overload["capacity_non_2xx"] == 0  # below the queue, nobody is refused
    assert overload["overload_good_per_s"] > 0
    assert overload["overload_requests_per_s"] > overload["overload_good_per_s"]  # refusals happened
    assert overload["probe"]["refused"] >= 1 and math.isfinite(overload["probe"]["refused_p50_ms"])
    assert overload["rss_before_mib"] > 0 and len(overload["rss_again_mib"]) == 1 and overload["rss_again_mib"][0] > 0
    # The same load on the service with tracing on (spans exported to a sink) and on a worktree of HEAD.
    assert set(results["traced"]) == {"1", "0.1"}
    (traced,), (sampled,), (at_head,) = results["traced"]["1"], results["traced"]["0.1"], results["baselines"]["HEAD"]
    for row in (traced, sampled, at_head):
        assert row["non_2xx"] == 0 and 0 < row["engine_us_per_request"] < row["cpu_us_per_request"]
    assert not (ROOT / "reports" / "bench-edge-quick" / "trees" / "HEAD").exists()  # the worktree was removed
    traced_log = (ROOT / "reports" / "bench-edge-quick" / "service-traced-1.log").read_text()
    assert "tracing: on, exporting spans with otlp" in traced_log
    report = output.read_text()
    assert "| this service, tracing on (OTLP/HTTP to a local sink, every request sampled) |" in report
    assert "| this service, tracing on (OTLP/HTTP to a local sink, 10% of requests sampled) |" in report
    assert "| the service at HEAD (a git worktree of it) |" in report
    for heading in ("## Key figures", "## 1. CPU per request", "## 1b. What tracing costs", "## 2. Overload", "## Machine"):
        assert heading in report
    assert f"**{results['ratio']:.2f}×**" in report
