"""`make bench QUICK=1` end to end on the toy model: every section measured, the report and the plots written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench.report import NOTES_BEGIN, NOTES_END

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH_TIMEOUT = 120
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(toy_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    document = out / "benchmarks.md"
    # A document with notes already in it: regeneration must keep them.
    document.write_text(f"# old\n\n{NOTES_BEGIN}\nHand-written: keep me.\n{NOTES_END}\n", encoding="utf-8")
    command = [sys.executable, "-m", "loadtest.bench", "--quick", "--model-dir", str(toy_model_dir),
               "--output", str(document), "--work-dir", str(out / "work")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "work" / "results.json").read_text())
    return document, results, out


def finite_positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_engine_pairs_do_the_same_work(quick_bench):
    _, results, _ = quick_bench
    rows = results["engine"]["rows"]
    assert {r["beam"] for r in rows} == {1, 4}
    for beam in (1, 4):
        pair = [r for r in rows if r["beam"] == beam]
        assert {r["engine"] for r in pair} == {"ctranslate2 int8", "transformers float32"}
        # Same inputs, same lengths: exactly sentences x N output tokens on both sides.
        expected = results["engine"]["sentences"] * results["engine"]["tokens"]
        assert [r["output_tokens"] for r in pair] == [expected, expected]
        assert all(finite_positive(r["tokens_per_s"]) and finite_positive(r["ratio"]) for r in pair)
        assert next(r for r in pair if r["engine"].startswith("transformers"))["ratio"] == pytest.approx(1.0)


def test_service_sections_are_measured(quick_bench):
    _, results, _ = quick_bench
    conc = results["concurrency"]["rows"]
    assert [r["clients"] for r in conc] == [1, 4, 16, 64]
    for row in conc:
        assert row["failures"] == 0, row
        assert finite_positive(row["tokens_per_s"]) and finite_positive(row["p99_ms"])
        assert row["p50_ms"] <= row["p99_ms"]
    eff = results["efficiency"]
    assert finite_positive(eff["ratio"]) and finite_positive(eff["best_offline_tokens_per_s"])
    assert eff["ratio"] == pytest.approx(eff["service_tokens_per_s"] / eff["best_offline_tokens_per_s"])
    assert len(eff["offline"]) >= 2
    bat = results["batching"]
    assert bat["on"]["failures"] == bat["off"]["failures"] == 0
    assert bat["gain"] == pytest.approx(bat["on"]["tokens_per_s"] / bat["off"]["tokens_per_s"])
    lone = results["lone"]
    assert lone["failures"] == 0 and lone["samples"] >= 10
    assert finite_positive(lone["service_p50_ms"]) and finite_positive(lone["offline_p50_ms"])
    assert math.isfinite(lone["overhead_median_ms"])
    assert results["memory_kib"]["defaults"]["VmHWM"] > 10 * 1024  # a real process, not a zero
    assert 0 < results["cold_start_s"]["defaults"] < 60
    labels = [row["label"] for row in results["settings"]]
    assert labels[0] == "defaults" and len(labels) >= 2
    # A tiny queue under more clients than it holds answers some requests with 429, and only with 429.
    tiny_queue = results["settings"][-1]
    assert set(tiny_queue["statuses"]) <= {"200", "429"}


def test_report_has_every_section_and_the_plots(quick_bench):
    document, results, _ = quick_bench
    text = document.read_text(encoding="utf-8")
    for heading in ("## Key figures", "## Machine and method", "## a. Engine", "## b. Service efficiency", "## c. Batching gain",
                    "## d. Latency of a lone request", "## e. Throughput and latency against concurrency",
                    "## f. Memory and cold start", "## g. Settings tried", "## GPU"):
        assert heading in text, heading
    assert "quick mode" in text and results["machine"]["cpu"] in text
    assert "| greedy | ctranslate2 int8 |" in text and "| beam 4 | transformers float32 |" in text
    assert "Not measured yet" in text and "DEVICE=cuda" in text
    assert "make bench QUICK=1" in text
    assert f"{NOTES_BEGIN}\nHand-written: keep me.\n{NOTES_END}" in text
    for name in ("engine.png", "concurrency.png", "settings.png"):
        plot = document.parent / "img" / name
        assert plot.read_bytes()[:8] == PNG_MAGIC, name
        assert plot.stat().st_size > 5000, name
        assert f"(img/{name})" in text
