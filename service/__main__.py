"""`python -m service --model-dir DIR`: settings -> checks -> uvicorn with a graceful SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

import uvicorn

from service import logs
from service.access import AccessError
from service.app import create_app
from service.engine import Engine, EngineError, resolve_compute_type, resolve_device
from service.http_protocol import protocol_class
from service.model_dir import ModelDirError, read_manifest
from service.settings import Settings, SettingsError

log = logging.getLogger("service")


class GracefulServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: report not-ready at once, keep serving for `delay` seconds,
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
        with super().capture_signals():
            yield
            # uvicorn re-raises the caught signal once it has shut down, so the process dies "killed by
            # SIGTERM" (143) even after a clean drain; a clean stop is a success.
            self._captured_signals.clear()

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load(argv, os.environ)
        manifest = read_manifest(settings.model_dir)
        settings.check_languages(manifest.languages)
        # Fail fast on a device or compute type that can't work, before listening.
        device = resolve_device(settings.device)
        compute_type = resolve_compute_type(device, settings.compute_type)
        settings = settings.for_device(device)
    except (SettingsError, ModelDirError, EngineError) as error:
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
        app = create_app(settings, manifest, load_engine=load_engine, on_fatal=lambda reason: server_box[0].fail(reason))
    except AccessError as error:
        print(f"service: error: {error}", file=sys.stderr)
        return 2
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
        forwarded_allow_ips=settings.forwarded_allow_ips,
        lifespan="on",
        # uvloop and httptools (C) instead of asyncio and h11 (pure Python): about 3x less CPU per
        # request at the HTTP layer, measured with `make bench-edge` (docs/benchmarks-edge.md).
        loop="uvloop",
        http=protocol_class(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            draining=lambda: runtime.status == "draining",
        ),
    )
    server = GracefulServer(config, on_draining=lambda: app.state.service.set_status("draining"), delay=settings.shutdown_delay_seconds)
    server_box.append(server)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
