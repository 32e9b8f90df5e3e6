"""Servers as processes, for the tests and the benchmarks alike: free loopback ports, `python -m MODULE` started
with its output in a log file, readiness polled on /readyz with a deadline (and the cold start timed), memory
from /proc, a graceful stop; redis-server the same way; and the one reader of Prometheus text expositions.

Every server listens on 127.0.0.1 only, and every wait here is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from loadtest.paths import ROOT, relative

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 4000  # how much of a failed server's log an error message shows

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.02, what: str = "the condition") -> T:
    """Calls `condition` until it returns something true, and returns that; TimeoutError after `timeout` seconds.
    An exception from `condition` ends the wait at once (a server that died will not become ready)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def is_ready(url: str) -> bool:
    """Whether GET {url}/readyz answers 200 now."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:  # refused, not yet listening, or an HTTP error status such as 503
        return False


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
class ServerProcess:
    """`python -m MODULE ARGS --host 127.0.0.1 --port PORT` with `env` added to this process's environment,
    stdout and stderr into `log_path` (or nowhere). `start` returns once /readyz says 200, having timed the
    cold start; `stop` sends SIGTERM and waits for a graceful exit (SIGKILL after `timeout`)."""

    module: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None
    cold_start_s: float = float("nan")  # process start -> first /readyz 200
    cwd: Path | None = None  # where `python -m MODULE` runs (and so which tree's MODULE it imports); None: this one
    # Environment every server of this kind gets, under `env` (subclasses set it; not shown by describe()).
    base_env: ClassVar[dict[str, str]] = {}

    @classmethod
    def service(
        cls, model_dir: Path, env: dict[str, str] | None = None, log_path: Path | None = None, args: tuple[str, ...] = ()
    ) -> Self:
        """This project's service (`python -m service`) on a model directory (on the toy model, at the compute type
        that is exact on this CPU unless `env` names one: loadtest/toy_compute.py)."""
        from loadtest.toy_compute import toy_environment

        return cls("service", ("--model-dir", str(model_dir), *args), toy_environment(model_dir, dict(env or {})), log_path)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, "--host", HOST, "--port", str(self.port)]

    def describe(self) -> str:
        """The command line as a person would type it (relative paths, environment settings first)."""
        settings = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        args = " ".join(relative(a) if Path(a).is_absolute() else a for a in self.args)
        return f"{settings} .venv/bin/python -m {self.module} {args} --host {HOST} --port PORT".strip()

    def start(self, timeout: float = 300.0) -> Self:
        if self.process is not None and self.process.poll() is None:
            return self  # already running (`with server.start():` must not start a second, unstoppable one)
        self.port = self.port or free_port()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.base_env, **self.env}
        started = time.perf_counter()
        with open(self.log_path, "wb") if self.log_path else contextlib.nullcontext(subprocess.DEVNULL) as log:
            # The child has its own copy of the file: ours is closed once it has started.
            self.process = subprocess.Popen(self.command, cwd=self.cwd or ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._ready, timeout=timeout, what=f"{self.module} ready on {self.url}/readyz")
        except TimeoutError as error:
            self.stop()
            raise RuntimeError(f"{error}{self._log_note()}") from None
        self.cold_start_s = time.perf_counter() - started
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.process.returncode}{self._log_note()}")
        return is_ready(self.url)

    def log(self) -> str:
        """What the server has written so far ("" without a log file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _log_note(self) -> str:
        if self.log_path is None:
            return ""
        return f"; log {self.log_path}:\n{self.log()[-LOG_TAIL_CHARS:]}"

    def memory_kib(self) -> dict[str, int]:
        return proc_status(self.process.pid) if self.process else {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signals the server (SIGTERM: a graceful stop), waits up to `timeout` s, then kills it; its exit code."""
        return stop_process(self.process, sig, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(process: subprocess.Popen | None, sig: int, timeout: float) -> int | None:
    """Signals a server process, waits up to `timeout` s, then kills it; its exit code (None: never started)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(10)


class RedisMissing(RuntimeError):
    """redis-server is not installed."""


def start_redis(work_dir: Path, timeout: float = 10.0) -> tuple[subprocess.Popen, int]:
    """redis-server on a free loopback port, no persistence, answering PING: (process, port)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisMissing("redis-server is not installed (scripts/install_system_deps.sh installs it)")
    import redis

    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(work_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            return bool(redis.Redis(host=HOST, port=port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, timeout=timeout, interval=0.05, what="redis-server answering PING")
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return process, port


# --- Prometheus text


def metric_samples(exposition: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, keyed `name` when unlabelled, else `name{k="v",...}` with
    the labels sorted by name."""
    return {
        _sample_key(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def metric_value(exposition: str, name: str, labels: str = "") -> float:
    """One sample's value (0 if absent): `name` and exactly the labels `labels` (`k="v",...`, in any order)."""
    wanted = {}
    if labels:
        [family] = text_string_to_metric_families(f"{name}{{{labels}}} 0\n")
        wanted = family.samples[0].labels
    return metric_samples(exposition).get(_sample_key(name, wanted), 0.0)


def _sample_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
