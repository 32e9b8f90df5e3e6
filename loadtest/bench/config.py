"""What a benchmark run measures and where: one Config (the full run, the quick run, and their CPU and GPU
sizes), the sections, and the model directories. run.py measures with it, report.py writes with it, and
__main__.py builds it from the command line."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtest.paths import ROOT

SECTIONS = ("engine", "lone", "concurrency", "efficiency", "batching", "baseline", "settings")
BENCH_MODEL_DIR = ROOT / "models" / "bench-m2m100-418m" / "ct2-int8"
BENCH_HF_DIR = ROOT / "models" / "bench-m2m100-418m" / "hf"
TOY_HF_DIR = ROOT / "tests" / "fixtures" / "toy-m2m100"


@dataclass(frozen=True)
class Config:
    """One run's sizes and places. The defaults are the full CPU run; full_mode/quick_mode give the others."""

    quick: bool = False
    device: str = "cpu"
    model_dir: Path = BENCH_MODEL_DIR
    hf_dir: Path = BENCH_HF_DIR
    text_source: str = "english"
    output: Path = ROOT / "docs" / "benchmarks.md"
    work_dir: Path = ROOT / "reports" / "bench"
    tokens: int = 24  # N: output tokens per translation (after the language token)
    pair: tuple[str, str] = ("en", "fr")
    # a. One batch of B distinct sentences per row. 256 sentences of the 418M model through transformers
    # float32 on 2 cores would take minutes per run: the CPU default stops at 16.
    engine_batches: tuple[int, ...] = (1, 16)
    engine_beams: tuple[int, ...] = (1, 4)
    engine_repeats: int = 3  # timed runs per row, after one untimed run at the same shape
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests_per_client: int = 2
    min_requests: int = 8
    # Load-client processes; each runs its share of the clients. One Python process tops out at a few thousand
    # requests/s, fine for a CPU service; a GPU service needs several so that the client is not the limit.
    client_processes: int = 1
    efficiency_repeats: int = 1  # offline runs per configuration (each ~20 s with the 418M model on 2 cores)
    lone_samples: int = 20
    batching_clients: int = 16
    batching_requests: int = 32
    # h. The transformers baseline serves one request at a time: a subset of the client counts, and at most
    # `baseline_max_requests` sentences per count, keep it to minutes.
    baseline_concurrency: tuple[int, ...] = (1, 16)
    baseline_max_requests: int = 32
    # Random weights rarely emit </s>: forcing exactly N tokens (min_new_tokens = max_new_tokens = N + 1) makes
    # the baseline's work equal to the service's. The toy model does stop: unforced, its outputs are checked.
    baseline_fixed_length: bool = True
    load_time_limit: float = 600.0  # seconds: clients take no new sentence after this (every load is bounded)
    settings_clients: int = 32
    settings_requests: int = 96
    settings_rounds: int = 2
    # (label, MT_* overrides, clients or 0 for settings_clients)
    settings_lone: int = 3  # lone requests timed on each settings service before its load
    settings: tuple[tuple[str, dict[str, str], int], ...] = (
        ("defaults", {}, 0),
        ("1 worker x 2 threads", {"MT_INTER_THREADS": "1", "MT_INTRA_THREADS": "2"}, 0),
        ("MT_MAX_BATCH_SIZE=8", {"MT_MAX_BATCH_SIZE": "8"}, 0),
        ("MT_MAX_BATCH_SIZE=32", {"MT_MAX_BATCH_SIZE": "32"}, 0),
        ("MT_MAX_BATCH_TOKENS=256", {"MT_MAX_BATCH_TOKENS": "256"}, 0),
        ("MT_MAX_QUEUE=16, 64 clients", {"MT_MAX_QUEUE": "16"}, 64),
    )
    sections: tuple[str, ...] = SECTIONS
    command: str = "make bench"
    service_overrides: tuple[tuple[str, str], ...] = ()  # MT_* settings for every benchmarked service

    @property
    def img_dir(self) -> Path:
        return self.output.parent / "img"

    @classmethod
    def full_mode(cls, device: str = "cpu", **overrides: Any) -> Config:
        """The 418M benchmark checkpoint; on cuda, GPU-sized workloads. The service runs with its own per-device
        defaults (`--device cuda` and nothing else), as the gpu overlay deploys it."""
        base = cls(device=device)
        if device == "cuda":
            base = replace(
                base,
                engine_batches=(1, 16, 64, 256),
                concurrency=(1, 16, 64, 256, 1024),
                requests_per_client=4,  # 4,096 sentences at 1,024 clients: the efficiency workload
                min_requests=64,
                client_processes=4,
                efficiency_repeats=3,
                batching_clients=256,
                batching_requests=1024,
                baseline_concurrency=(1, 16, 64, 256),
                baseline_max_requests=256,
                settings_clients=256,
                settings_requests=1024,
                settings=(
                    ("defaults", {}, 0),
                    ("MT_COMPUTE_TYPE=int8_float16", {"MT_COMPUTE_TYPE": "int8_float16"}, 0),
                    ("1 worker", {"MT_INTER_THREADS": "1"}, 0),
                    ("4 workers", {"MT_INTER_THREADS": "4"}, 0),
                    ("MT_MAX_BATCH_SIZE=128", {"MT_MAX_BATCH_SIZE": "128"}, 0),
                    ("MT_MAX_BATCH_SIZE=512", {"MT_MAX_BATCH_SIZE": "512", "MT_MAX_BATCH_TOKENS": "32768"}, 0),
                    ("MT_MAX_QUEUE=64, 1024 clients", {"MT_MAX_QUEUE": "64"}, 1024),
                ),
                command="make bench DEVICE=cuda",
            )
        return replace(base, **overrides)

    @classmethod
    def quick_mode(cls, device: str = "cpu", **overrides: Any) -> Config:
        """The toy checkpoint, small counts: checks the whole pipeline in about a minute (figures meaningless)."""
        base = cls(
            quick=True,
            device=device,
            model_dir=ROOT / "reports" / "bench-quick" / "toy-int8",
            hf_dir=TOY_HF_DIR,
            text_source="toy",
            output=ROOT / "reports" / "bench-quick" / "benchmarks.md",
            work_dir=ROOT / "reports" / "bench-quick",
            tokens=16,
            pair=("en", "fr"),
            engine_batches=(1, 16),
            engine_repeats=3,
            requests_per_client=2,
            efficiency_repeats=3,
            lone_samples=15,
            batching_clients=16,
            batching_requests=32,
            baseline_concurrency=(1, 4, 16, 64),
            baseline_max_requests=128,
            baseline_fixed_length=False,
            load_time_limit=60.0,
            settings_clients=16,
            settings_requests=32,
            settings_rounds=1,
            settings=(
                ("defaults", {}, 0),
                ("1 worker x 2 threads", {"MT_INTER_THREADS": "1", "MT_INTRA_THREADS": "2"}, 0),
                ("MT_MAX_QUEUE=4, 16 clients", {"MT_MAX_QUEUE": "4"}, 16),
            ),
            command="make bench QUICK=1" + (" DEVICE=cuda" if device == "cuda" else ""),
        )
        return replace(base, **overrides)
