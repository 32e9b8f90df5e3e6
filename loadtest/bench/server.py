"""The servers a benchmark starts as their own processes (loadtest/harness.py starts, times and stops them):
this project's service and the plain transformers baseline, both quiet (warnings only) unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from loadtest.harness import ServerProcess


class Service(ServerProcess):
    """A benchmarked server. `Service.ct2` is this project's service, `Service.baseline` the plain transformers
    one (loadtest/bench/baseline_service.py): both started, timed and stopped the same way, their cold start
    (process start -> first /readyz 200) in `cold_start_s` and their memory from `memory_kib()`."""

    # Logging a line per request would be part of what is measured: benchmarks log warnings only (env overrides).
    base_env: ClassVar[dict[str, str]] = {"MT_LOG_LEVEL": "warning"}

    @classmethod
    def ct2(cls, model_dir: Path, env: dict[str, str], log_path: Path | None = None) -> Service:
        return cls.service(model_dir, env, log_path)

    @classmethod
    def baseline(
        cls, checkpoint: Path, *, device: str, beam_size: int, max_new_tokens: int, min_new_tokens: int,
        log_path: Path | None = None,
    ) -> Service:
        args = ("--checkpoint", str(checkpoint), "--device", device, "--beam-size", str(beam_size),
                "--max-new-tokens", str(max_new_tokens), "--min-new-tokens", str(min_new_tokens))
        return cls("loadtest.bench.baseline_service", args, {}, log_path)
