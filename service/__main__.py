"""`python -m service --model-dir DIR`: settings -> checks -> open-file limit and connection cap -> uvicorn.

Signals: SIGTERM, SIGINT and SIGHUP each start a graceful drain (GracefulServer): /readyz turns 503, the service
keeps serving for MT_SHUTDOWN_DELAY_SECONDS, stops accepting, answers every accepted request (up to
MT_DRAIN_SECONDS) and exits 0. SIGHUP is a drain too, not a reload and not death: a closed terminal or a
supervisor passing it on loses no request in flight (by default SIGHUP kills a process at once, exit 129).

Descriptors: at start the open-file soft limit is raised to the hard limit, and open connections are capped
below it (MT_MAX_CONNECTIONS; 0 = the limit less a reserve, see connection_limit). A connection beyond the cap
may still ask for /healthz or /readyz; anything else gets 503 too_many_connections (service/http_protocol.py).

What this relies on in uvicorn (0.54), checked by tests/test_uvicorn_guard.py: uvicorn.Config's arguments used
below (http= a protocol class, ws="none", loop="uvloop", lifespan, timeout_graceful_shutdown, timeout_keep_alive,
proxy_headers, log_config, access_log); uvicorn.Server.run(), .should_exit, .handle_exit(sig, frame) (sets
should_exit; appends the signal to ._captured_signals, a list), .capture_signals() (a context manager that installs
handle_exit for SIGINT and SIGTERM, restores the previous handlers and then re-raises the captured signals), and
Server.shutdown calling shutdown() on every open connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import threading

import uvicorn

from service import logs
from service.access import AccessError
from service.app import create_app
from service.engine import Engine, EngineError, resolve_compute_type, resolve_device
from service.http_protocol import ConnectionLimit, protocol_class
from service.model_dir import ModelDirError, read_manifest
from service.runtime import Status
from service.settings import Settings, SettingsError
from service.tracing import Tracing, TracingConfigError

log = logging.getLogger("service")

# Descriptors kept for what the process opens besides connections: the model's files while it loads, the log,
# Redis connections, the listening socket, the event loop's own, CUDA's device files. The CPU service on the toy
# model holds 14 at rest; 128 leaves room for a GPU and a Redis pool. With a small limit, an eighth is kept.
FD_RESERVE = 128
# Signals that start a graceful drain, beyond uvicorn's SIGINT and SIGTERM.
DRAIN_SIGNALS = (signal.SIGHUP,)


class GracefulServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT/SIGHUP: report not-ready at once, keep serving for `delay` seconds,
    then let uvicorn stop accepting and finish every accepted request (up to drain_seconds).
    A stop asked for by a signal that drains cleanly exits 0."""

    def __init__(self, config: uvicorn.Config, on_draining, delay: float) -> None:
        super().__init__(config)
        self._on_draining = on_draining
        self._delay = delay
        self._draining = False
        self.exit_code = 0

    def handle_exit(self, sig, frame) -> None:
        if self._draining or self._delay <= 0:
            if not self._draining:
                self._draining = True
                self._on_draining()
            return super().handle_exit(sig, frame)
        self._draining = True
        self._on_draining()
        log.info("draining: not ready; closing in %.1fs", self._delay)
        threading.Timer(self._delay, super().handle_exit, args=(sig, frame)).start()

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn handles SIGINT and SIGTERM; SIGHUP would kill the process at once, losing requests in flight.
        # Signals can only be handled in the main thread (uvicorn checks the same).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS} if in_main else {}
        try:
            with super().capture_signals():
                yield
                # uvicorn re-raises the caught signal once it has shut down, so the process dies "killed by
                # SIGTERM" (143) even after a clean drain; a clean stop is a success.
                self._captured_signals.clear()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.should_exit = True


def raise_open_file_limit() -> tuple[int, int]:
    """Raises the open-file soft limit to the hard limit (a container's default soft limit is often 1,024 while
    its hard limit is far higher); returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limit(configured: int, open_files: int) -> tuple[ConnectionLimit, str | None]:
    """The connection cap for an open-file limit, and a warning when the configured cap had to be lowered.

    The budget is the limit less a reserve for the process's other descriptors (FD_RESERVE, or an eighth of a
    small limit): MT_MAX_CONNECTIONS=0 means the budget, and a configured cap above it is lowered to it. The
    ceiling, halfway between the budget and the limit, bounds the overflow connections that wait for a probe's
    head; beyond it a new connection is refused at once, so accept never meets EMFILE."""
    budget = max(1, open_files - FD_RESERVE, open_files * 7 // 8)
    ceiling = budget + max(0, open_files - budget) // 2
    warning = None
    cap = configured or budget
    if cap > budget:
        warning = (
            f"MT_MAX_CONNECTIONS={configured} is more than the open-file limit of {open_files} allows; "
            f"connections are capped at {budget} (raise the hard limit, ulimit -Hn, to allow more)"
        )
        cap = budget
    return ConnectionLimit(cap=cap, ceiling=ceiling), warning


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load(argv, os.environ)
        manifest = read_manifest(settings.model_dir)
        settings.check_languages(manifest.languages)
        # Fail fast on a device or compute type that can't work, before listening.
        device = resolve_device(settings.device)
        compute_type = resolve_compute_type(device, settings.compute_type)
        settings = settings.for_device(device)
        tracing = Tracing.from_environment(os.environ)
    except (SettingsError, ModelDirError, EngineError, TracingConfigError) as error:
        print(f"service: error: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)

    def load_engine() -> Engine:
        return Engine.load(
            settings.model_dir,
            manifest,
            device=device,
            compute_type=compute_type,
            inter_threads=settings.inter_threads,
            intra_threads=settings.intra_threads,
            beam_size=settings.beam_size,
            max_decoding_length=settings.max_decoding_length,
        )

    server_box: list[GracefulServer] = []
    try:
        app = create_app(settings, manifest, load_engine=load_engine, on_fatal=lambda reason: server_box[0].fail(reason), tracing=tracing)
    except AccessError as error:
        print(f"service: error: {error}", file=sys.stderr)
        return 2
    # Before the model loads (in the lifespan) and before listening; after every check that can stop the start.
    before, open_files = raise_open_file_limit()
    connections, warning = connection_limit(settings.max_connections, open_files)
    log.info(
        "open files: limit %d (%s, hard limit %d); connections capped at %d (%s), refused at once beyond %d",
        open_files, f"raised from {before}" if open_files > before else "not raised",
        resource.getrlimit(resource.RLIMIT_NOFILE)[1], connections.cap,
        "MT_MAX_CONNECTIONS" if settings.max_connections and not warning else "the open-file limit less a reserve",
        connections.ceiling,
    )
    if warning:
        log.warning(warning)
    if tracing is not None:
        log.info("tracing: on, exporting spans with %s (OTEL_* variables)", tracing.exporter_name)
    runtime = app.runtime
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # uvicorn types these as int but uses them as float delays (asyncio timeouts, call_later).
        timeout_graceful_shutdown=settings.drain_seconds or None,  # type: ignore[arg-type]
        timeout_keep_alive=settings.idle_timeout_seconds,  # type: ignore[arg-type]
        # The client behind a proxy is found by the admission step (service/identity.py), which parses and
        # bounds X-Forwarded-For and needs the real peer: uvicorn's rewrite would put the raw header there.
        proxy_headers=False,
        lifespan="on",
        # No websocket upgrades: the service speaks none, and an upgraded connection would leave our protocol
        # (and the connection count) behind.
        ws="none",
        # uvloop and httptools (C) instead of asyncio and h11 (pure Python): about 3x less CPU per
        # request at the HTTP layer, measured with `make bench-edge` (docs/benchmarks-edge.md).
        loop="uvloop",
        http=protocol_class(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            draining=lambda: runtime.draining,
            connection_limit=connections,
        ),
    )
    server = GracefulServer(config, on_draining=lambda: runtime.set_status(Status.DRAINING), delay=settings.shutdown_delay_seconds)
    server_box.append(server)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
