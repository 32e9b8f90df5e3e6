"""`make bench QUICK=1` end to end on the toy model: every section measured, the report and the plots written;
and the load client split over two processes, merged."""

from __future__ import annotations

import json
import math
import statistics
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


def test_engine_rows_are_warmed_at_their_exact_shape_and_repeated(quick_bench):
    _, results, _ = quick_bench
    engine = results["engine"]
    rows, tokens = engine["rows"], engine["tokens"]
    engines = ("ctranslate2 int8", "transformers float32")
    assert engine["batches"] == [1, 16]
    assert sorted((r["batch"], r["beam"], r["engine"]) for r in rows) == sorted(
        (batch, beam, name) for batch in (1, 16) for beam in (1, 4) for name in engines
    )
    for r in rows:
        shape = r["shape"]
        # The untimed warm-up ran the very call that was timed: same inputs, batch, beam and length.
        assert r["warmup_shape"] == shape, r
        assert (shape["sentences"], shape["beam_size"]) == (r["batch"], r["beam"])
        assert shape["min_decoding_length"] == shape["max_decoding_length"] == tokens + 1
        assert r["repeats"] >= 3 and len(r["seconds_runs"]) == r["repeats"]
        # Same work in every run: exactly batch x N output tokens.
        assert r["output_tokens_runs"] == [r["batch"] * tokens] * r["repeats"]
        assert r["seconds"] == min(r["seconds_runs"])  # "best of"
        assert r["tokens_per_s"] == pytest.approx(r["output_tokens"] / r["seconds"])
        assert min(r["seconds_runs"]) <= statistics.median(r["seconds_runs"])
    for name in engines:
        digests = {(r["batch"], r["beam"]): r["shape"]["inputs"] for r in rows if r["engine"] == name}
        assert digests[1, 1] == digests[1, 4] != digests[16, 1] == digests[16, 4]  # the same sentences for both beams
    for batch in (1, 16):
        for beam in (1, 4):
            ct2, hf = (next(r for r in rows if (r["batch"], r["beam"], r["engine"]) == (batch, beam, name)) for name in engines)
            assert hf["ratio"] is None  # the reference
            assert finite_positive(ct2["ratio"])
            assert ct2["ratio"] == pytest.approx(ct2["tokens_per_s"] / hf["tokens_per_s"])
            assert ct2["median_ratio"] == pytest.approx(ct2["median_tokens_per_s"] / hf["median_tokens_per_s"])


def test_baseline_service_is_measured_with_exact_outputs(quick_bench):
    _, results, _ = quick_bench
    base = results["baseline"]
    assert [r["clients"] for r in base["rows"]] == [1, 4, 16, 64]
    assert base["fixed_length"] is False and base["beam_size"] == results["service_settings"]["beam_size"]
    for row in base["rows"]:
        ours, theirs = row["service"], row["baseline"]
        for side in (ours, theirs):
            assert side["statuses"] == {"200": side["requests"]} and side["sent"] == side["requests"], side
            # Every answer is the toy task's exact translation (tests/fixtures/toy_task.py).
            assert side["checked"] == side["exact"] == side["requests"], side
            assert finite_positive(side["tokens_per_s"]) and finite_positive(side["p50_ms"])
        assert ours["requests"] == theirs["requests"] == max(8, 2 * row["clients"])
        # Same outputs, counted the same way (translation_output_tokens_total on both): the same token count.
        assert ours["output_tokens"] == theirs["output_tokens"] > 0
        assert row["tokens_per_s_ratio"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"])
        assert row["p50_ratio"] == pytest.approx(theirs["p50_ms"] / ours["p50_ms"])
        # The baseline runs one request at a time: with more clients its requests queue behind each other.
        if row["clients"] >= 16:
            assert theirs["queue_p50_ms"] > theirs["inference_p50_ms"]
    assert results["memory_kib"]["baseline (transformers)"]["VmHWM"] > 100 * 1024  # torch is loaded in it
    assert 0 < results["cold_start_s"]["baseline (transformers)"] < 120
    assert "loadtest.bench.baseline_service --checkpoint" in base["command"]


def test_service_sections_are_measured(quick_bench):
    _, results, _ = quick_bench
    conc = results["concurrency"]["rows"]
    assert [r["clients"] for r in conc] == [1, 4, 16, 64]
    for row in conc:
        assert row["failures"] == 0 and row["sent"] == row["requests"], row
        assert row["client_processes"] == 1
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
                    "## f. Memory and cold start", "## g. Settings tried",
                    "## h. The service against a plain transformers service", "## GPU"):
        assert heading in text, heading
    assert "quick mode" in text and results["machine"]["cpu"] in text
    assert "| 1 | greedy | ctranslate2 int8 |" in text and "| 16 | beam 4 | transformers float32 |" in text
    assert "untimed, on **exactly the call it is timed on**" in text and "**3 timed runs**" in text
    assert "device measured | cpu: " in text
    assert "Not measured yet" in text and "DEVICE=cuda" in text
    assert "make bench QUICK=1" in text
    assert f"{NOTES_BEGIN}\nHand-written: keep me.\n{NOTES_END}" in text
    for name in ("engine.png", "concurrency.png", "settings.png"):
        plot = document.parent / "img" / name
        assert plot.read_bytes()[:8] == PNG_MAGIC, name
        assert plot.stat().st_size > 5000, name
        assert f"(img/{name})" in text


def test_closed_loop_over_two_processes_merges_their_samples(toy_model_dir, tmp_path):
    from loadtest.bench.client import run_closed_loop
    from loadtest.bench.server import Service
    from loadtest.texts import TextSource

    texts = TextSource("toy").sentences(200, seed=7)
    with Service.ct2(toy_model_dir, {"MT_CACHE_SIZE": "0"}, tmp_path / "service.log") as service:
        one = run_closed_loop(service.url, texts, 8, processes=1, check="toy")
        two = run_closed_loop(service.url, texts, 8, processes=2, check="toy")
    assert (one.processes, two.processes, two.clients_per_process) == (1, 2, [4, 4])
    for result in (one, two):
        assert sorted(s.index for s in result.samples) == list(range(200))  # every text sent exactly once
        assert result.statuses == {200: 200} and result.exact == result.checked == 200
        # Wall time: first request sent to last response read, over both processes.
        assert result.seconds == max(s.done_at for s in result.samples) - min(s.sent_at for s in result.samples)
        assert result.seconds * 1000 >= max(s.latency_ms for s in result.samples)
    assert two.output_tokens == one.output_tokens > 0  # the same work, counted by the service
    # Each process took its own half and both ran at once: the second half started before the first half was
    # all sent. (One process sends the texts in order, so there it is the other way round.)
    def overlap(result) -> bool:
        first = max(s.sent_at for s in result.samples if s.index < 100)
        second = min(s.sent_at for s in result.samples if s.index >= 100)
        return second < first

    assert overlap(two) and not overlap(one)
