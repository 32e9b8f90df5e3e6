"""Starts a server (the service, or the transformers baseline) as its own process for a benchmark, times its
cold start, reads its memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) ... from /proc/PID/status, in KiB (empty off Linux or once gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key.startswith("Vm"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


@dataclass
class Service:
    """A server process, `python -m MODULE ARGS --host 127.0.0.1 --port PORT`, with its environment; `start`
    returns once /readyz says 200. `Service.ct2` is this project's service, `Service.baseline` the plain
    transformers one (loadtest/bench/baseline_service.py): both started, timed and stopped the same way."""

    module: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None
    cold_start_s: float = float("nan")  # process start -> first /readyz 200

    @classmethod
    def ct2(cls, model_dir: Path, env: dict[str, str], log_path: Path | None = None) -> Service:
        return cls("service", ("--model-dir", str(model_dir)), env, log_path)

    @classmethod
    def baseline(
        cls, checkpoint: Path, *, device: str, beam_size: int, max_new_tokens: int, min_new_tokens: int,
        log_path: Path | None = None,
    ) -> Service:
        args = ("--checkpoint", str(checkpoint), "--device", device, "--beam-size", str(beam_size),
                "--max-new-tokens", str(max_new_tokens), "--min-new-tokens", str(min_new_tokens))
        return cls("loadtest.bench.baseline_service", args, {}, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--host", "127.0.0.1", "--port", str(self.port)]

    def describe(self) -> str:
        """The command line as a person would type it (relative paths, environment settings first)."""
        settings = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        args = " ".join(_relative(Path(a)) if Path(a).is_absolute() else a for a in self.args)
        return f"{settings} .venv/bin/python -m {self.module} {args} --host 127.0.0.1 --port PORT".strip()

    def start(self, timeout: float = 300.0) -> Service:
        self.port = self.port or free_port()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "MT_LOG_LEVEL": "warning", **self.env}
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
        started = time.perf_counter()
        try:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        self.cold_start_s = time.perf_counter() - started
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.module} not ready after {timeout:.0f}s; log: {self.log_path}")

    def memory_kib(self) -> dict[str, int]:
        return proc_status(self.process.pid) if self.process else {}

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
