"""`make bench QUICK=1` end to end on the toy model: every section measured, results.json read back into its
types, the report and the plots written; the saved form's round trip; and the load client split over two
processes, merged."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.bench.config import Config
from loadtest.bench.report import NOTES_BEGIN, NOTES_END
from loadtest.bench.results import BenchResults, Machine
from loadtest.paths import ROOT, relative
from service.settings import Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCH_TIMEOUT = 120


def run_bench(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "loadtest.bench", *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def quick_bench(toy_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    document = out / "benchmarks.md"
    # A document with notes already in it: regeneration must keep them.
    document.write_text(f"# old\n\n{NOTES_BEGIN}\nHand-written: keep me.\n{NOTES_END}\n", encoding="utf-8")
    run_bench("--quick", "--model-dir", toy_model_dir, "--output", document, "--work-dir", out / "work")
    results = BenchResults.from_json((out / "work" / "results.json").read_text())
    return document, results, out


def finite_positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_engine_rows_are_warmed_at_their_exact_shape_and_repeated(quick_bench):
    _, results, _ = quick_bench
    engine = results.engine
    assert engine is not None
    rows, tokens = engine.rows, engine.tokens
    assert engine.reference == "transformers float32"
    names = {r.engine for r in rows}
    assert len(names) == 2 and engine.reference in names  # CTranslate2 at the CPU's compute type, and transformers
    assert engine.batches == (1, 16)
    assert sorted((r.batch, r.beam, r.engine) for r in rows) == sorted(
        (batch, beam, name) for batch in (1, 16) for beam in (1, 4) for name in names
    )
    for r in rows:
        # The untimed warm-up ran the very call that was timed: same inputs, batch, beam and length.
        assert r.warmup_shape == r.shape, r
        assert (r.shape.sentences, r.shape.beam_size) == (r.batch, r.beam)
        assert r.shape.min_decoding_length == r.shape.max_decoding_length == tokens + 1
        assert r.repeats >= 3 and len(r.seconds_runs) == r.repeats
        # Same work in every run: exactly batch x N output tokens.
        assert r.output_tokens_runs == (r.batch * tokens,) * r.repeats
        assert r.seconds == min(r.seconds_runs)  # "best of"
        assert r.tokens_per_s == pytest.approx(r.output_tokens / r.seconds)
        runs_per_s = [tokens / seconds for tokens, seconds in zip(r.output_tokens_runs, r.seconds_runs, strict=True)]
        assert r.median_tokens_per_s == pytest.approx(statistics.median(runs_per_s))  # "median of"
    for name in names:
        digests = {(r.batch, r.beam): r.shape.inputs for r in rows if r.engine == name}
        assert digests[1, 1] == digests[1, 4] != digests[16, 1] == digests[16, 4]  # the same sentences for both beams


@pytest.mark.slow
def test_engine_ratios_are_against_the_reference_at_the_same_batch_and_beam(quick_bench):
    _, results, _ = quick_bench
    engine = results.engine
    assert engine is not None
    compared = 0
    for r in engine.rows:
        reference = engine.row(r.batch, r.beam, engine.reference)
        if r.engine == engine.reference:
            assert r.ratio is None and r.median_ratio is None, r  # it would be 1 by definition
            continue
        assert finite_positive(r.ratio) and finite_positive(r.median_ratio), r
        assert r.ratio == pytest.approx(r.tokens_per_s / reference.tokens_per_s)
        assert r.median_ratio == pytest.approx(r.median_tokens_per_s / reference.median_tokens_per_s)
        compared += 1
    assert compared == len(engine.rows) // 2 == 4


@pytest.mark.slow
def test_baseline_service_is_measured_with_exact_outputs(quick_bench):
    _, results, _ = quick_bench
    base = results.baseline
    assert base is not None
    assert [r.clients for r in base.rows] == [1, 4, 16, 64]
    assert base.fixed_length is False and base.beam_size == results.service_settings.beam_size
    for row in base.rows:
        ours, theirs = row.service, row.baseline
        for side in (ours, theirs):
            assert side.statuses == {"200": side.requests} and side.sent == side.requests, side
            # Every answer is the toy task's exact translation (loadtest/toy_task.py).
            assert side.checked == side.exact == side.requests, side
            assert finite_positive(side.tokens_per_s) and finite_positive(side.p50_ms)
        assert ours.requests == theirs.requests == max(8, 2 * row.clients)
        # Same outputs, counted the same way (translation_output_tokens_total on both): the same token count.
        assert ours.output_tokens == theirs.output_tokens > 0
        assert row.tokens_per_s_ratio == pytest.approx(ours.tokens_per_s / theirs.tokens_per_s)
        assert row.p50_ratio == pytest.approx(theirs.p50_ms / ours.p50_ms)
        # The baseline runs one request at a time: with more clients its requests queue behind each other.
        if row.clients >= 16:
            assert theirs.queue_p50_ms > theirs.inference_p50_ms
    baseline = results.server("baseline (transformers)")
    assert baseline is not None
    assert baseline.memory_kib["VmHWM"] > 100 * 1024  # torch is loaded in it
    assert baseline.cold_start_s is not None and 0 < baseline.cold_start_s < 120
    assert "loadtest.bench.baseline_service --checkpoint" in base.command


@pytest.mark.slow
def test_service_sections_are_measured(quick_bench):
    _, results, _ = quick_bench
    assert results.concurrency is not None
    conc = results.concurrency.rows
    assert [r.clients for r in conc] == [1, 4, 16, 64]
    for row in conc:
        assert row.failures == 0 and row.sent == row.requests, row
        assert row.client_processes == 1 and row.checked is None
        assert finite_positive(row.tokens_per_s) and finite_positive(row.p99_ms)
        assert row.p50_ms <= row.p99_ms
    eff = results.efficiency
    assert eff is not None
    assert finite_positive(eff.ratio) and finite_positive(eff.best_offline_tokens_per_s)
    assert eff.ratio == pytest.approx(eff.service_tokens_per_s / eff.best_offline_tokens_per_s)
    assert eff.best_offline_tokens_per_s == max(r.tokens_per_s for r in eff.offline)
    assert (eff.clients, eff.service_tokens_per_s) == (conc[-1].clients, conc[-1].tokens_per_s)  # the most clients
    assert len(eff.offline) >= 2
    bat = results.batching
    assert bat is not None
    assert bat.on.failures == bat.off.failures == 0
    assert bat.gain == pytest.approx(bat.on.tokens_per_s / bat.off.tokens_per_s)
    lone = results.lone
    assert lone is not None
    assert lone.failures == 0 and lone.samples >= 10
    assert finite_positive(lone.service_p50_ms) and finite_positive(lone.offline_p50_ms)
    assert math.isfinite(lone.overhead_median_ms)
    defaults = results.server("defaults")
    assert defaults is not None
    assert defaults.memory_kib["VmHWM"] > 10 * 1024  # a real process, not a zero
    assert defaults.cold_start_s is not None and 0 < defaults.cold_start_s < 60
    assert [s.name for s in results.footprint] == ["defaults", "baseline (transformers)", "batching off"]
    assert results.settings is not None
    labels = [row.label for row in results.settings]
    assert labels[0] == "defaults" and len(labels) >= 2
    # A tiny queue under more clients than it holds answers some requests with 429, and only with 429.
    tiny_queue = results.settings[-1]
    assert set(tiny_queue.statuses) <= {"200", "429"}
    assert set(results.load) >= {"engine", "service", "settings", "end"}
    assert results.elapsed_s is not None and results.elapsed_s > 0


@pytest.mark.slow
def test_results_json_is_the_types_saved_form(quick_bench):
    _, results, out = quick_bench
    saved = (out / "work" / "results.json").read_text()
    assert results.to_json() == saved  # read back and written again: the same bytes
    data = json.loads(saved)
    assert data["config"]["quick"] is True and data["config"]["hf_dir"] == "tests/fixtures/toy-m2m100"
    assert "host" not in data["service_settings"] and "port" not in data["service_settings"]
    assert results.config == replace(Config.quick_mode(), model_dir=results.config.model_dir,
                                     output=results.config.output, work_dir=results.config.work_dir)
    assert results.config.work_dir == out / "work"


@pytest.mark.slow
def test_report_has_every_section_and_the_plots(quick_bench):
    document, results, _ = quick_bench
    text = document.read_text(encoding="utf-8")
    for heading in ("## Key figures", "## Machine and method", "## a. Engine", "## b. Service efficiency", "## c. Batching gain",
                    "## d. Latency of a lone request", "## e. Throughput and latency against concurrency",
                    "## f. Memory and cold start", "## g. Settings tried",
                    "## h. The service against a plain transformers service", "## GPU"):
        assert heading in text, heading
    assert "quick mode" in text and results.machine.cpu in text
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


@pytest.mark.slow
def test_report_only_rewrites_the_same_report_from_results_json(quick_bench, toy_model_dir, tmp_path):
    document, _, out = quick_bench
    copy = tmp_path / "benchmarks.md"
    shutil.copy(document, copy)  # its notes are carried over, as from the original
    run_bench("--quick", "--report-only", "--model-dir", toy_model_dir, "--work-dir", out / "work", "--output", copy)
    assert copy.read_text(encoding="utf-8") == document.read_text(encoding="utf-8")


def test_nan_and_infinity_survive_the_round_trip(tmp_path):
    """An unmeasurable figure is NaN (no successful request, a zero divisor): it is saved as JSON's NaN/Infinity
    extension and read back as a float, not dropped or turned into a string."""
    from loadtest.bench.results import Batching, Efficiency, LoadRow, OfflineRow

    def load(tokens_per_s: float) -> LoadRow:
        return LoadRow(clients=4, requests=8, sent=8, failures=8, statuses={"503": 8}, seconds=0.5, output_tokens=0.0,
                       tokens_per_s=tokens_per_s, requests_per_s=0.0, p50_ms=math.nan, p99_ms=math.nan,
                       queue_p50_ms=math.nan, inference_p50_ms=math.nan, client_processes=1, clients_per_process=(4,))

    machine = Machine(device="cpu: test", cpu="test", cores=2, usable_cores=2, int8_flags=("avx2",), memory_gib=1.0,
                      gpu="", os="Linux", python="3.11", versions={"ctranslate2": "4"}, commit="abc", load_average_at_start="0")
    results = BenchResults(
        config=replace(Config.quick_mode(), work_dir=tmp_path), machine=machine, started_at="now",
        service_settings=Settings(model_dir=ROOT / "models" / "x"),
        efficiency=Efficiency(clients=4, sentences=8, service_tokens_per_s=10.0, service_output_tokens=5.0,
                              offline=(OfflineRow(1, 2, 16, 8, 0.0, 0, math.inf, 1, (math.inf,)),),
                              best_offline_tokens_per_s=math.inf, client_processes=1, ratio=0.0),
        batching=Batching(on=load(1.0), off=load(0.0), gain=math.nan),
    ).with_server("defaults", cold_start_s=math.nan)
    text = results.to_json()
    assert '"gain": NaN' in text and '"best_offline_tokens_per_s": Infinity' in text
    assert f'"work_dir": "{tmp_path}"' in text and '"model_dir": "models/x"' in text  # outside / inside the repo
    back = BenchResults.from_json(text)
    assert back.batching is not None and math.isnan(back.batching.gain) and math.isnan(back.batching.off.p99_ms)
    assert back.efficiency is not None and back.efficiency.offline[0].tokens_per_s_runs == (math.inf,)
    assert back.service_settings.model_dir == ROOT / "models" / "x" and back.config.work_dir == tmp_path
    assert back.lone is None and back.settings is None and back.elapsed_s is None  # sections that did not run
    server = back.server("defaults")
    assert server is not None and server.cold_start_s is not None and math.isnan(server.cold_start_s)
    assert back.to_json() == text
    assert relative(ROOT / "models" / "x") == "models/x" and relative(tmp_path) == str(tmp_path)


def test_results_written_before_the_footprint_type_still_read():
    """results.json from before the typed results kept memory and cold start as two maps by server name."""
    results = BenchResults.from_json(json.dumps({
        "config": {"quick": True}, "started_at": "then",
        "machine": {"device": "cpu: x", "cpu": "x", "cores": 2, "usable_cores": 2, "int8_flags": [], "memory_gib": 1.0,
                    "gpu": "", "os": "Linux", "python": "3.11", "versions": {}, "commit": "abc", "load_average_at_start": "0"},
        "service_settings": {"model_dir": "models/x", "beam_size": 2, "a_setting_since_removed": 1},
        "cold_start_s": {"defaults": 1.5, "batching off": 2.0},
        "memory_kib": {"defaults": {"VmHWM": 2048}, "baseline (transformers)": {"VmHWM": 4096, "VmRSS": 1024}},
    }))
    assert [(s.name, s.cold_start_s, s.peak_rss_mib) for s in results.footprint] == [
        ("defaults", 1.5, 2.0), ("batching off", 2.0, 0.0), ("baseline (transformers)", None, 4.0)]
    assert results.config.quick is True and results.service_settings.beam_size == 2
    with pytest.raises(ValueError, match="unknown fields"):  # the bench's own types are read strictly
        BenchResults.from_json(json.dumps({"config": {"quick": True, "no_such_field": 1}}))


@pytest.mark.slow
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
