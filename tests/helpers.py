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
from loadtest.toy_compute import toy_environment

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


def build_app(model_dir: Path, wrap_engine=None, tracing=None, **overrides):
    """The real app in-process on the converted toy model; `wrap_engine` may replace the engine; `tracing` is a
    service.tracing.Tracing (None: off)."""
    from service.app import create_app
    from service.engine import Engine
    from service.model_dir import read_manifest
    from service.settings import Settings

    argv = ["--model-dir", str(model_dir)]
    for name, value in overrides.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    settings = Settings.load(argv, {}).for_device("cpu")
    manifest = read_manifest(model_dir)

    compute_type = toy_environment(model_dir, {}).get("MT_COMPUTE_TYPE", "int8")

    def load_engine():
        engine = Engine.load(
            model_dir, manifest, device="cpu", compute_type=compute_type, inter_threads=settings.inter_threads,
            intra_threads=settings.intra_threads, beam_size=settings.beam_size,
            max_decoding_length=settings.max_decoding_length,
        )
        return wrap_engine(engine) if wrap_engine else engine

    return create_app(settings, manifest, load_engine=load_engine, tracing=tracing)


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


# --- the connection layer: uvicorn with the service's protocol around any ASGI app, and raw HTTP/1.1 answers


class TinyServer:
    """uvicorn with the service's protocol (service/http_protocol.py) on a free loopback port, in a thread, around
    an ASGI app. `protocol` overrides protocol_class's arguments; `keep_alive` is uvicorn's idle timeout."""

    def __init__(self, app, **protocol) -> None:
        import uvicorn

        from service.http_protocol import protocol_class

        self.port = free_port()
        options = {"header_timeout": 10.0, "body_timeout": 10.0, "draining": lambda: False, **protocol}
        keep_alive = options.pop("keep_alive", 5.0)
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="uvloop", http=protocol_class(**options),
                                     lifespan="off", log_level="warning", timeout_keep_alive=keep_alive, ws="none")
        self._serving = contextlib.ExitStack()

    def __enter__(self) -> TinyServer:
        self._serving.enter_context(uvicorn_in_thread(self.config))
        return self

    def __exit__(self, *exc) -> None:
        self._serving.close()

    def connect(self, timeout: float = 5.0):
        import socket

        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def read_responses(connection, count: int, timeout: float = 30.0) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """Reads up to `count` HTTP/1.1 responses with a Content-Length from a socket, until `count` are in, the
    connection closes, or `timeout` seconds pass: ([(status, headers in lower case, body)], bytes left over)."""
    deadline = time.monotonic() + timeout
    responses: list[tuple[int, dict[str, str], bytes]] = []
    data = b""
    while len(responses) < count:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if separator:
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
            length = int(headers.get("content-length", "0"))
            if len(rest) >= length:
                responses.append((int(status_line.split()[1]), headers, rest[:length]))
                data = rest[length:]
                continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        connection.settimeout(left)
        try:
            chunk = connection.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return responses, data
