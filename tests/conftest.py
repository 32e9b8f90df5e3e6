"""Shared fixtures: the toy checkpoint converted once per session, and real service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOY_CHECKPOINT = ROOT / "tests" / "fixtures" / "toy-m2m100"
SERVICE_START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """The toy checkpoint converted to int8, as the service loads it."""
    from convert.m2m100 import convert

    output = tmp_path_factory.mktemp("models") / "toy-int8"
    convert(str(TOY_CHECKPOINT), output, "int8")
    return output


@dataclass
class ServiceProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = SERVICE_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service not ready after {timeout}s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def start_service(tmp_path) -> Iterator:
    """start_service(model_dir, env=None, args=()) -> ServiceProcess on a free 127.0.0.1 port, ready."""
    started: list[ServiceProcess] = []

    def start(model_dir: Path, env: dict | None = None, args: tuple[str, ...] = ()) -> ServiceProcess:
        port = free_port()
        log_path = tmp_path / f"service-{port}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [sys.executable, "-m", "service", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                   "--port", str(port), *args]
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
        handle = ServiceProcess(f"http://127.0.0.1:{port}", process, log_path)
        started.append(handle)
        wait_until_ready(handle.url, process, log_path)
        return handle

    yield start
    for handle in started:
        handle.stop(timeout=15)


def build_app(model_dir: Path, wrap_engine=None, **overrides):
    """The real app in-process on the converted toy model; `wrap_engine` may replace the engine."""
    from service.app import create_app
    from service.engine import Engine
    from service.model_dir import read_manifest
    from service.settings import Settings

    argv = ["--model-dir", str(model_dir)]
    for name, value in overrides.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    settings = Settings.load(argv, {}).for_device("cpu")
    manifest = read_manifest(model_dir)

    def load_engine():
        engine = Engine.load(
            model_dir, manifest, device="cpu", compute_type="int8", inter_threads=settings.inter_threads,
            intra_threads=settings.intra_threads, beam_size=settings.beam_size,
            max_decoding_length=settings.max_decoding_length,
        )
        return wrap_engine(engine) if wrap_engine else engine

    return create_app(settings, manifest, load_engine=load_engine)


class AppClient:
    """An httpx client on the app inside its lifespan, ready for traffic."""

    def __init__(self, app) -> None:
        import httpx

        self.app = app
        self._lifespan = app.router.lifespan_context(app)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    async def __aenter__(self):
        import asyncio

        await self._lifespan.__aenter__()
        for _ in range(500):
            if (await self.http.get("/readyz")).status_code == 200:
                return self
            await asyncio.sleep(0.01)
        raise RuntimeError(f"app not ready: {(await self.http.get('/readyz')).text}")

    async def __aexit__(self, *exc):
        await self.http.aclose()
        await self._lifespan.__aexit__(*exc)

    async def translate(self, from_lang: str, to_lang: str, texts: list[str], **kwargs):
        records = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
        return await self.http.post(
            "/translation", json={"payload": {"fromLang": from_lang, "toLang": to_lang, "records": records}}, **kwargs
        )


def metric_value(exposition: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0
