"""What the tests share besides fixtures: the app in-process (build_app, AppClient), a slow engine to hold work
in flight, and an async wait with a deadline. Servers as processes, free ports, readiness and the Prometheus
reader are loadtest/harness.py's, shared with the benchmarks, and re-exported here for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtest.harness import (
    ServerProcess,
    free_port,
    metric_value,
    start_redis,
    wait_for,
)
from loadtest.paths import ROOT

__all__ = [
    "ROOT", "TOY_CHECKPOINT", "AppClient", "ServerProcess", "SlowEngine", "build_app", "free_port", "metric_value",
    "start_redis", "until", "uvicorn_in_thread", "wait_for",
]

TOY_CHECKPOINT = ROOT / "tests" / "fixtures" / "toy-m2m100"
APP_START_TIMEOUT = 30.0


@contextlib.contextmanager
def uvicorn_in_thread(config, timeout: float = 10.0) -> Iterator:
    """A uvicorn.Server for `config` running in a daemon thread: yielded once it has started (a bounded wait),
    asked to exit and joined afterwards."""
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=timeout, interval=0.01, what="uvicorn's start")
        if not server.started:
            raise RuntimeError("uvicorn stopped before it started (see the test's log output)")
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout)


async def until(condition: Callable[[], object], seconds: float = 5.0, what: str = "condition") -> None:
    """Waits, yielding to the event loop, until condition() holds (checked every millisecond), or fails the test."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {seconds:g} s")
        await asyncio.sleep(0.001)


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
    """An httpx client on the app inside its lifespan, ready for traffic. `runtime` is the app's runtime, for
    tests that wait on its state (requests in flight, the batcher's queue) rather than sleep."""

    def __init__(self, app) -> None:
        import httpx

        self.app = app
        self.runtime = app.runtime
        self._lifespan = app.router.lifespan_context(app)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    async def __aenter__(self):
        await self._lifespan.__aenter__()
        await until(lambda: self.runtime.status != "starting", APP_START_TIMEOUT, "the end of the app's start")
        readiness = await self.http.get("/readyz")
        if readiness.status_code != 200:
            raise RuntimeError(f"app not ready: {readiness.status_code} {readiness.text}")
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()
        await self._lifespan.__aexit__(*exc)

    @property
    def engine(self):
        """The engine the runtime loaded (the wrapper, when build_app was given `wrap_engine`)."""
        return self.runtime.serving.engine

    async def translate(self, from_lang: str, to_lang: str, texts: list[str], **kwargs):
        records = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
        return await self.http.post(
            "/translation", json={"payload": {"fromLang": from_lang, "toLang": to_lang, "records": records}}, **kwargs
        )


class SlowEngine:
    """Wraps the real engine: each engine call takes `delay` seconds more (a busy machine), and the sources of
    each call's jobs are recorded in `batches`, so a test can wait until a batch runs instead of sleeping."""

    def __init__(self, engine, delay: float) -> None:
        self._engine, self._delay = engine, delay
        self.batches: list[list[list[str]]] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def translate(self, jobs):
        self.batches.append([job.source for job in jobs])
        time.sleep(self._delay)
        return self._engine.translate(jobs)
