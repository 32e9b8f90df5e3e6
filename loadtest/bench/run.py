"""The measurements. Every pair that is compared is measured in this one run, side by side, and reported as a
ratio; absolute figures belong to the machine and device they were taken on (machine.describe()).

a. engine       CTranslate2 at each compute type vs transformers generate, same inputs, same output lengths
                (EOS suppressed to exactly N tokens), greedy and beam 4, at each batch size of `engine_batches`:
                every engine warmed at the exact timed shape, then the best (and median) of `engine_repeats`.
b. efficiency   service output tokens/s under many concurrent single-record clients / the best offline
                translate_batch tokens/s on the same sentences with the same beam size and decoding length.
c. batching     the same load with MT_BATCHING=off and on.
d. latency      a lone short request: service latency vs the offline batch-of-one time, paired per sentence.
e. concurrency  throughput and latency at each client count of `concurrency`.
f. footprint    peak RSS (VmHWM) of each server process and its cold start (process start -> /readyz 200).
g. settings     other service settings under the same load (full mode).
h. baseline     the service vs a plain transformers service (baseline_service.py), same single-record load.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.bench import machine
from loadtest.bench.client import median, percentile, run_closed_loop, run_lone
from loadtest.bench.config import TOY_HF_DIR, Config
from loadtest.bench.engines import Ct2Engine, HfEngine, Timed
from loadtest.bench.results import (
    Baseline,
    BaselineRow,
    Batching,
    BenchResults,
    Concurrency,
    Efficiency,
    EngineRow,
    EngineSection,
    LoadRow,
    Lone,
    Machine,
    OfflineRow,
    SettingsRow,
)
from loadtest.bench.server import Service
from loadtest.paths import relative
from loadtest.texts import TextSource


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.texts = TextSource(config.text_source)
        described = Machine.from_dict(machine.describe(config.device))
        started_at = time.strftime("%Y-%m-%d %H:%M %Z")
        self.started = time.perf_counter()
        self._texts_by_clients: dict[int, list[str]] = {}
        config.work_dir.mkdir(parents=True, exist_ok=True)
        from service.settings import Settings

        # The service's settings as it will resolve them: the offline runs copy them.
        self.settings = Settings.load(["--model-dir", str(config.model_dir)], self.service_env()).for_device(config.device)
        # Each section replaces its part as it is measured (save() writes what there is so far).
        self.results = BenchResults(config=config, machine=described, started_at=started_at, service_settings=self.settings)

    # --- helpers
    @property
    def max_decoding_length(self) -> int:
        return self.config.tokens + 1  # the language token + N tokens

    def service_env(self, **overrides: str) -> dict[str, str]:
        """What every benchmarked service runs with: no cache (every request is real work), the decoding length
        capped (random weights rarely emit </s>), no per-client share (the load client's connections stand for
        many clients from one address), the bench's device; then the overrides."""
        return {
            "MT_CACHE_SIZE": "0",
            "MT_CLIENT_MAX_SENTENCES": "1000000",
            "MT_MAX_DECODING_LENGTH": str(self.max_decoding_length),
            "MT_DEVICE": self.config.device,
            **dict(self.config.service_overrides),
            **overrides,
        }

    def service(self, name: str, **overrides: str) -> Service:
        return Service.ct2(self.config.model_dir, self.service_env(**overrides), self.config.work_dir / f"service-{name}.log")

    def baseline_service(self) -> Service:
        """The transformers baseline with the service's beam size and decoding length."""
        length = self.max_decoding_length
        return Service.baseline(
            self.config.hf_dir, device=self.config.device, beam_size=self.settings.beam_size, max_new_tokens=length,
            min_new_tokens=length if self.config.baseline_fixed_length else 0,
            log_path=self.config.work_dir / "baseline-service.log",
        )

    def offline_engine(self, inter_threads: int, intra_threads: int) -> Ct2Engine:
        """CTranslate2 as the service runs it, warmed up with one sentence at the service's beam and length."""
        from service.engine import resolve_compute_type

        engine = Ct2Engine(
            self.config.model_dir,
            device=self.config.device,
            compute_type=resolve_compute_type(self.config.device, self.settings.compute_type),
            inter_threads=inter_threads,
            intra_threads=intra_threads,
        )
        warm = engine.encode(self.texts.sentences(1, seed=999), self.config.pair[0])
        engine.translate(warm, self.config.pair[1], beam_size=self.settings.beam_size, max_decoding_length=self.max_decoding_length)
        return engine

    def sentences(self, n: int, seed: int, short: bool = False) -> list[str]:
        return self.texts.sentences(n, seed=seed, short=short)

    def requests_for(self, clients: int) -> int:
        return max(self.config.min_requests, clients * self.config.requests_per_client)

    def texts_for(self, clients: int) -> list[str]:
        """The sentences of the load at `clients` clients: the same in sections b, e and h."""
        if clients not in self._texts_by_clients:
            self._texts_by_clients[clients] = self.sentences(self.requests_for(clients), seed=100 + clients)
        return self._texts_by_clients[clients]

    def save(self) -> Path:
        path = self.config.work_dir / "results.json"
        path.write_text(self.results.to_json())
        return path

    def record(self, **parts: Any) -> None:
        """Sets parts of the results; a section's own footprint entries, recorded while it ran, are kept."""
        self.results = replace(self.results, **parts)

    def mark(self, section: str) -> None:
        self.save()  # what is measured so far survives a later failure
        self.results = replace(self.results, load={**self.results.load, section: machine.load_average()})
        log(f"{section} (load average {machine.load_average()}, {time.perf_counter() - self.started:.0f}s so far)")

    # --- the run
    def run(self) -> BenchResults:
        config = self.config
        sections = set(config.sections)
        if "engine" in sections:
            self.mark("engine")
            self.record(engine=self.engine())
        service_sections = sections & {"lone", "concurrency", "efficiency", "batching", "baseline"}
        if service_sections:
            self.mark("service")
            with self.service("defaults") as service:
                self.results = self.results.with_server("defaults", cold_start_s=service.cold_start_s)
                if "lone" in sections:
                    self.mark("lone")
                    self.record(lone=self.lone(service))
                if sections & {"concurrency", "efficiency"}:
                    self.mark("concurrency")
                    self.record(concurrency=self.concurrency(service))
                batching_on = None
                if "batching" in sections:
                    self.mark("batching on")
                    batching_on = self.load(service, config.batching_clients, self.sentences(config.batching_requests, seed=31))
                if "baseline" in sections:
                    self.mark("baseline")
                    self.record(baseline=self.baseline(service))
                self.results = self.results.with_server("defaults", memory_kib=service.memory_kib())
            if "efficiency" in sections:
                self.mark("efficiency (offline)")
                self.record(efficiency=self.efficiency())
            if batching_on is not None:
                self.mark("batching off")
                self.record(batching=self.batching(batching_on))
        if "settings" in sections and config.settings:
            self.mark("settings")
            self.record(settings=self.settings_sweep())
        elapsed = time.perf_counter() - self.started
        self.results = replace(self.results, load={**self.results.load, "end": machine.load_average()}, elapsed_s=elapsed)
        self.save()
        log(f"done in {elapsed:.0f}s")
        return self.results

    # --- a. engine
    def engine(self) -> EngineSection:
        """Each row: one batch of B distinct sentences, one beam, one engine. Every engine first runs the exact
        call it will be timed on (same sentences, batch, beam, decoding length), untimed; then the engines take
        turns, `engine_repeats` rounds, so that a noisy moment on a shared machine hits them alike."""
        config = self.config
        cores = self.results.machine.usable_cores
        src, tgt = config.pair
        length = self.max_decoding_length
        if config.device == "cuda":
            compute_types, hf_dtype, threads = ("float16", "int8_float16"), "float16", (1, 1)
        else:
            from service.engine import resolve_compute_type

            compute_types, hf_dtype, threads = (resolve_compute_type("cpu", self.settings.compute_type),), "float32", (1, cores)
        all_texts = self.sentences(max(config.engine_batches), seed=11)
        log(f"engine: loading transformers ({hf_dtype}) from {relative(config.hf_dir)}")
        hf = HfEngine(config.hf_dir, device=config.device, dtype=hf_dtype)
        ct2 = {
            ct: Ct2Engine(config.model_dir, device=config.device, compute_type=ct, inter_threads=threads[0], intra_threads=threads[1])
            for ct in compute_types
        }
        reference = f"transformers {hf_dtype}"
        rows: list[EngineRow] = []
        for batch in config.engine_batches:
            texts = all_texts[:batch]
            sources = next(iter(ct2.values())).encode(texts, src)
            for beam in config.engine_beams:
                # Each call binds its engine, inputs and beam now (default arguments): they run in this iteration.
                calls: dict[str, Callable[[], Timed]] = {
                    f"ctranslate2 {ct}": (
                        lambda e=engine, b=beam, x=sources: e.translate(x, tgt, beam_size=b, max_decoding_length=length, min_decoding_length=length)
                    )
                    for ct, engine in ct2.items()
                }
                calls[reference] = lambda b=beam, x=texts: hf.translate(x, src, tgt, beam_size=b, new_tokens=config.tokens)
                warm = {name: call() for name, call in calls.items()}
                runs: dict[str, list[Timed]] = {name: [] for name in calls}
                for _ in range(config.engine_repeats):
                    for name, call in calls.items():
                        runs[name].append(call())
                best = {name: min(timed, key=lambda t: t.seconds) for name, timed in runs.items()}
                medians = {name: statistics.median(t.tokens_per_second for t in timed) for name, timed in runs.items()}
                for name, timed in runs.items():
                    shapes = {t.shape for t in timed}
                    if len(shapes) != 1:
                        raise RuntimeError(f"engine {name}: the timed runs differ in shape: {shapes}")
                    row = EngineRow(
                        batch=batch, beam=beam, engine=name, sentences=batch,
                        seconds=best[name].seconds, seconds_runs=tuple(t.seconds for t in timed),
                        output_tokens=best[name].output_tokens, output_tokens_runs=tuple(t.output_tokens for t in timed),
                        tokens_per_s=best[name].tokens_per_second, median_tokens_per_s=medians[name],
                        warmup_shape=warm[name].shape, shape=timed[0].shape, repeats=len(timed),
                        # The reference row has no ratio: it would be 1 by definition.
                        ratio=None if name == reference else best[name].tokens_per_second / best[reference].tokens_per_second,
                        median_ratio=None if name == reference else medians[name] / medians[reference],
                    )
                    rows.append(row)
                    log(f"engine: batch {batch} beam {beam} {name}: best {row.tokens_per_s:.1f} tokens/s, median "
                        f"{row.median_tokens_per_s:.1f} ({row.output_tokens} tokens, best {row.seconds:.3f}s of {len(timed)})")
        hf.close()
        for engine in ct2.values():
            engine.close()
        return EngineSection(
            tokens=config.tokens, ct2_threads=threads, hf_dtype=hf_dtype, reference=reference,
            batches=tuple(config.engine_batches), repeats=config.engine_repeats, statistic="best",
            torch_threads=cores if config.device == "cpu" else None, rows=tuple(rows),
        )

    # --- d. a lone short request
    def lone(self, service: Service) -> Lone:
        texts = self.sentences(self.config.lone_samples, seed=21, short=True)
        engine = self.offline_engine(self.settings.inter_threads, self.settings.intra_threads)
        sources = [engine.encode_as_service([text], *self.config.pair, self.max_decoding_length) for text in texts]
        run_lone(service.url, self.sentences(2, seed=22, short=True), *self.config.pair)  # warm-up
        offline: list[float] = []

        def run_offline(index: int) -> None:
            timed = engine.translate(sources[index], self.config.pair[1], beam_size=self.settings.beam_size,
                                     max_decoding_length=self.max_decoding_length)
            offline.append(timed.seconds * 1000)

        # Paired: each sentence offline (batch of one) and through the service, one after the other; offline first
        # for even sentences and second for odd ones, so that an order effect cancels out.
        samples = run_lone(
            service.url, texts, *self.config.pair,
            before_each=lambda i: run_offline(i) if i % 2 == 0 else None,
            after_each=lambda i: run_offline(i) if i % 2 == 1 else None,
        )
        engine.close()
        ok = [s for s in samples if s.status == 200]
        service_ms = [s.latency_ms for s in ok]
        overhead = [s.latency_ms - o for s, o in zip(samples, offline) if s.status == 200]
        return Lone(
            samples=len(texts), failures=len(samples) - len(ok),
            offline_p50_ms=percentile(offline, 0.5), offline_p99_ms=percentile(offline, 0.99),
            service_p50_ms=percentile(service_ms, 0.5), service_p99_ms=percentile(service_ms, 0.99),
            overhead_median_ms=median(overhead), overhead_p99_ms=percentile(overhead, 0.99),
            # Standard error of that median (1.25 sigma / sqrt n): how finely this machine's noise lets it be known.
            overhead_se_ms=1.2533 * statistics.stdev(overhead) / math.sqrt(len(overhead)) if len(overhead) > 1 else float("nan"),
            # Everything but the engine call, from the service's own headers: client latency - x-inference-time.
            outside_engine_median_ms=median([s.latency_ms - s.inference_ms for s in ok]),
            server_non_engine_median_ms=median([s.server_total_ms - s.inference_ms for s in ok]),
            http_client_median_ms=median([s.latency_ms - s.server_total_ms for s in ok]),
            engine_call_vs_offline_median_ms=median([s.inference_ms - o for s, o in zip(samples, offline) if s.status == 200]),
            queue_median_ms=median([s.queue_ms for s in ok]),
        )

    # --- e. concurrency
    def concurrency(self, service: Service) -> Concurrency:
        self.load(service, 4, self.sentences(4, seed=98), quiet=True)  # warm-up
        rows = tuple(self.load(service, clients, self.texts_for(clients)) for clients in self.config.concurrency)
        return Concurrency(rows=rows, client_processes=self.config.client_processes)

    def load(self, service: Service, clients: int, texts: list[str], *, check: bool = False, quiet: bool = False) -> LoadRow:
        """Closed loop, `clients` clients over `client_processes` processes; `check`: compare the answers with the
        known translations (toy text), counting the exact ones."""
        config = self.config
        result = run_closed_loop(
            service.url, texts, clients, processes=config.client_processes, from_lang=config.pair[0], to_lang=config.pair[1],
            time_limit=config.load_time_limit, check=config.text_source if check else None,
        )
        row = LoadRow(
            clients=clients, requests=result.requests, sent=len(result.samples), failures=result.failures,
            statuses={str(k): v for k, v in result.statuses.items()},
            seconds=result.seconds, output_tokens=result.output_tokens,
            tokens_per_s=result.tokens_per_second, requests_per_s=result.requests_per_second,
            p50_ms=result.latency(0.5), p99_ms=result.latency(0.99),
            queue_p50_ms=result.server("queue_ms", 0.5), inference_p50_ms=result.server("inference_ms", 0.5),
            client_processes=result.processes, clients_per_process=tuple(result.clients_per_process),
            checked=result.checked if check else None, exact=result.exact if check else None,
        )
        if not quiet:
            log(f"load: {clients} clients ({result.processes} client processes), {result.requests} requests: "
                f"{row.tokens_per_s:.1f} tokens/s, p50 {row.p50_ms:.0f} ms, p99 {row.p99_ms:.0f} ms, "
                f"failures {row.failures}" + (f", exact {result.exact}/{result.checked}" if result.checked else ""))
        return row

    # --- b. efficiency: the service against the best offline run on the same sentences
    def efficiency(self) -> Efficiency:
        if self.results.concurrency is None:
            raise RuntimeError("efficiency needs the concurrency section's loads")
        service_row = max(self.results.concurrency.rows, key=lambda r: r.clients)
        texts = self.texts_for(service_row.clients)
        cores = self.results.machine.usable_cores
        s = self.settings
        # The service's own split and batch size, another batch size, and one worker with every core (CPU) or
        # one worker with the biggest batch (GPU).
        if self.config.device == "cuda":
            other = 256 if s.max_batch_size < 256 else 64
            candidates = [(s.inter_threads, s.intra_threads, s.max_batch_size), (s.inter_threads, s.intra_threads, other),
                          (1, s.intra_threads, max(s.max_batch_size, other))]
        else:
            other = 16 if s.max_batch_size >= 32 else 32
            candidates = [(s.inter_threads, s.intra_threads, s.max_batch_size), (s.inter_threads, s.intra_threads, other),
                          (1, cores, max(s.max_batch_size, other))]
        offline: list[OfflineRow] = []
        for inter, intra, batch in dict.fromkeys(candidates):
            engine = self.offline_engine(inter, intra)
            sources = engine.encode_as_service(texts, *self.config.pair, self.max_decoding_length)

            def run(inputs: list[list[str]], engine: Ct2Engine = engine, batch: int = batch) -> Timed:
                return engine.translate(inputs, self.config.pair[1], beam_size=s.beam_size,
                                        max_decoding_length=self.max_decoding_length, max_batch_size=batch)

            # Warm-up: `inter` full batches of the timed call's shape (batch size, beam, length), one per worker.
            run(sources[: batch * inter])
            timed = [run(sources) for _ in range(self.config.efficiency_repeats)]
            engine.close()
            best = min(timed, key=lambda t: t.seconds)
            offline.append(OfflineRow(
                inter_threads=inter, intra_threads=intra, max_batch_size=batch, inputs=len(sources),
                seconds=best.seconds, output_tokens=best.output_tokens, tokens_per_s=best.tokens_per_second,
                runs=len(timed), tokens_per_s_runs=tuple(t.tokens_per_second for t in timed),
            ))
            log(f"offline {inter}x{intra} max_batch_size {batch}: {best.tokens_per_second:.1f} tokens/s (best of {len(timed)})")
        fastest = max(offline, key=lambda r: r.tokens_per_s)
        return Efficiency(
            clients=service_row.clients, sentences=len(texts), service_tokens_per_s=service_row.tokens_per_s,
            service_output_tokens=service_row.output_tokens, offline=tuple(offline), best_offline_tokens_per_s=fastest.tokens_per_s,
            client_processes=service_row.client_processes,
            ratio=service_row.tokens_per_s / fastest.tokens_per_s if fastest.tokens_per_s else float("nan"),
        )

    # --- h. the service against a plain transformers service
    def baseline(self, service: Service) -> Baseline:
        """The same single-record closed loop on the service and on the baseline, each client count back to back,
        the same sentences on both (those of section e, at most `baseline_max_requests`)."""
        config = self.config
        rows: list[BaselineRow] = []
        with self.baseline_service() as baseline:
            self.results = self.results.with_server("baseline (transformers)", cold_start_s=baseline.cold_start_s)
            self.load(baseline, 4, self.sentences(4, seed=98), quiet=True)  # warm-up, as the service had
            for clients in config.baseline_concurrency:
                texts = self.texts_for(clients)[: config.baseline_max_requests]
                ours = self.load(service, clients, texts, check=True)
                theirs = self.load(baseline, clients, texts, check=True)
                rows.append(BaselineRow(
                    clients=clients, service=ours, baseline=theirs,
                    tokens_per_s_ratio=_ratio(ours.tokens_per_s, theirs.tokens_per_s),
                    p50_ratio=_ratio(theirs.p50_ms, ours.p50_ms),  # > 1: the baseline is slower
                    p99_ratio=_ratio(theirs.p99_ms, ours.p99_ms),
                ))
                log(f"baseline: {clients} clients: service/baseline tokens/s {rows[-1].tokens_per_s_ratio:.2f}x, "
                    f"baseline/service p50 {rows[-1].p50_ratio:.2f}x")
            self.results = self.results.with_server("baseline (transformers)", memory_kib=baseline.memory_kib())
        return Baseline(
            rows=tuple(rows), command=baseline.describe(), beam_size=self.settings.beam_size,
            fixed_length=config.baseline_fixed_length, dtype="float16" if config.device == "cuda" else "float32",
        )

    # --- c. batching off vs on (on: measured on the defaults service just before)
    def batching(self, on: LoadRow) -> Batching:
        texts = self.sentences(self.config.batching_requests, seed=31)
        with self.service("batching-off", MT_BATCHING="off") as service:
            self.results = self.results.with_server("batching off", cold_start_s=service.cold_start_s)
            off = self.load(service, self.config.batching_clients, texts)
            self.results = self.results.with_server("batching off", memory_kib=service.memory_kib())
        return Batching(on=on, off=off, gain=on.tokens_per_s / off.tokens_per_s if off.tokens_per_s else float("nan"))

    # --- g. other settings, same load
    def settings_sweep(self) -> tuple[SettingsRow, ...]:
        """Each setting in a fresh service under the same load; `settings_rounds` interleaved rounds
        (A B C ... A B C ...) so that a burst of noise on a shared machine hits every setting alike."""
        texts = self.sentences(self.config.settings_requests, seed=41)
        runs: dict[str, list[_Round]] = {}
        for round_ in range(self.config.settings_rounds):
            for label, overrides, clients in self.config.settings:
                clients = clients or self.config.settings_clients
                log(f"settings: {label} (round {round_ + 1} of {self.config.settings_rounds})")
                with self.service("settings-" + _slug(label), **overrides) as service:
                    lone = run_lone(service.url, self.sentences(self.config.settings_lone, seed=51, short=True), *self.config.pair)
                    row = self.load(service, clients, texts)
                    memory = service.memory_kib()
                runs.setdefault(label, []).append(_Round(
                    load=row, cold_start_s=service.cold_start_s, peak_rss_mib=memory.get("VmHWM", 0) / 1024,
                    lone_ms=median([sample.latency_ms for sample in lone if sample.status == 200]),
                ))
        rows = []
        for label, overrides, _ in self.config.settings:
            measured = runs[label]
            statuses: dict[str, int] = {}
            for run in measured:
                for status, count in run.load.statuses.items():
                    statuses[status] = statuses.get(status, 0) + count
            rows.append(SettingsRow(
                label=label, env=overrides, clients=measured[0].load.clients, requests=measured[0].load.requests,
                rounds=len(measured), statuses=statuses,
                tokens_per_s=median([r.load.tokens_per_s for r in measured]),
                tokens_per_s_runs=tuple(r.load.tokens_per_s for r in measured),
                p50_ms=median([r.load.p50_ms for r in measured]), p99_ms=median([r.load.p99_ms for r in measured]),
                peak_rss_mib=max(r.peak_rss_mib for r in measured), cold_start_s=median([r.cold_start_s for r in measured]),
                lone_ms=median([r.lone_ms for r in measured]),
            ))
        return tuple(rows)


@dataclass(frozen=True)
class _Round:
    """One setting's service in one round of the sweep."""

    load: LoadRow
    cold_start_s: float
    peak_rss_mib: float
    lone_ms: float


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def ensure_toy_model(model_dir: Path) -> None:
    """Quick mode: the toy checkpoint converted to int8 (kept between runs)."""
    from service.model_dir import read_manifest

    try:
        read_manifest(model_dir)
        return
    except Exception:  # noqa: BLE001 - missing or stale: convert again
        pass
    from convert.m2m100 import convert

    log(f"converting {relative(TOY_HF_DIR)} to {relative(model_dir)}")
    convert(str(TOY_HF_DIR), model_dir, "int8", force=True)

