"""The runtime behind the HTTP edge: engine, batcher, cache and pipeline, their start and their stop.

The server listens at once and the model loads in a worker thread, so /healthz answers and /readyz
says 503 "starting" during a slow load; the runtime turns "ready" only after a warm-up translation
has gone through the same batcher and engine as real traffic. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from service import __version__
from service.admission import Admission
from service.batcher import Batcher, BatchStats
from service.cache import Cache, LruCache, RedisCache
from service.detect import LanguageDetector
from service.engine import Engine, Job, Translation
from service.errors import RETRY_AFTER_SECONDS, NotServing
from service.metrics import Metrics
from service.model_dir import Manifest
from service.pipeline import Pipeline
from service.settings import Settings
from service.tracing import Tracing

log = logging.getLogger("service")

WARM_UP_TEXT = "Hello world."


class Status(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"  # the model could not load


@dataclass(frozen=True)
class Serving:
    """The runtime's working parts, published together once the model has loaded and warmed up."""

    engine: Engine
    batcher: Batcher[Job, Translation]
    cache: Cache
    pipeline: Pipeline


class Runtime:
    """Status: starting -> ready -> draining; failed if the model could not load. `serving` is None until
    the start succeeds, then the same object for the runtime's life."""

    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        *,
        load_engine: Callable[[], Engine],
        on_fatal: Callable[[str], None] = lambda reason: None,
        tracing: Tracing | None = None,
    ) -> None:
        if not settings.resolved:
            raise ValueError("settings must be resolved for a device first (Settings.for_device)")
        settings.check_languages(manifest.languages)
        self.settings = settings
        self.manifest = manifest
        self.languages = frozenset(manifest.languages)
        self.metrics = Metrics()
        self.status = Status.STARTING
        self.serving: Serving | None = None
        self.admission = Admission(settings, accepting=self.accepting)
        self.tracing = tracing  # None: tracing is off (service/tracing.py)
        self._load_engine = load_engine
        self._on_fatal = on_fatal
        self._starting: asyncio.Task | None = None
        self.metrics.queue_capacity.set(settings.max_queue)
        self.metrics.queue_depth.set_function(lambda: self.serving.batcher.queue_depth if self.serving else 0)
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.metrics.pending_bodies.set_function(lambda: self.admission.pending_bodies)
        self.metrics.build_info.info(
            {
                "version": __version__,
                "model_source": manifest.source,
                "model_revision": manifest.source_revision or "",
                "quantization": manifest.quantization,
            }
        )

    def set_status(self, status: Status | str) -> None:
        self.status = Status(status)
        self.metrics.ready.set(1 if self.status is Status.READY else 0)

    @property
    def draining(self) -> bool:
        return self.status is Status.DRAINING

    def accepting(self) -> Serving:
        """The working parts, if requests may be served now; else NotServing. While draining, requests
        still arrive until the load balancer has noticed /readyz: they are served."""
        serving = self.serving
        if serving is None or self.status not in (Status.READY, Status.DRAINING):
            raise NotServing(f"the service is {self.status}; retry shortly", retry_after=RETRY_AFTER_SECONDS)
        return serving

    @property
    def ready(self) -> bool:
        return self.status is Status.READY and self.serving is not None and self.serving.batcher.alive

    @property
    def alive(self) -> bool:
        # Liveness: the process answers, and once started, the batcher's loop is alive.
        if self.status is Status.FAILED:
            return False
        return self.serving is None or self.serving.batcher.alive or self.status is Status.DRAINING

    # --- lifecycle
    def begin(self) -> None:
        """Starts loading in the background; returns at once."""
        self._starting = asyncio.create_task(self._start(), name="model-start")

    async def stop(self) -> None:
        """Finishes queued and running work, then closes the batcher and the cache."""
        if self.status is not Status.FAILED:
            self.set_status(Status.DRAINING)
        if self._starting is not None:
            self._starting.cancel()
            try:
                await self._starting
            except BaseException:  # noqa: BLE001 - a start cut short by the stop is expected
                pass
        if self.serving is not None:
            await self.serving.batcher.close()
            await self.serving.cache.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports the last spans (bounded by OTEL_BSP_EXPORT_TIMEOUT)
        log.info("stopped: every accepted request was answered")

    async def _start(self) -> None:
        settings = self.settings
        threads_before = _native_thread_ids()
        batcher = None
        try:
            engine = await asyncio.to_thread(self._load_engine)
            detector = await asyncio.to_thread(self._load_detector)
            cache = _build_cache(settings, engine.fingerprint, self.metrics)
            batcher = _build_batcher(settings, engine, self.metrics, self.tracing)
            batcher.start()
            pipeline = Pipeline(
                engine, batcher, cache, self.metrics, settings.request_window, detector=detector,
                check_every=settings.language_check_every, fair=settings.scheduling == "fair",
                patience=settings.queue_timeout_seconds, tracing=self.tracing,
            )  # fmt: skip
            warm_up_lang = "en" if "en" in self.languages else self.manifest.languages[0]
            await batcher.submit(engine.encode(WARM_UP_TEXT, warm_up_lang, warm_up_lang))
        except Exception as error:  # noqa: BLE001 - reported, and the process is told to stop
            self.set_status(Status.FAILED)
            log.error("model failed to start: %s: %s", error.__class__.__name__, error)
            if batcher is not None:
                await batcher.close()
            self._on_fatal(str(error))
            return
        self.serving = Serving(engine, batcher, cache, pipeline)
        # The engine's own threads are those that appeared while it loaded and warmed up and that
        # Python did not start: their CPU time is the engine's (translation_engine_cpu_seconds_total).
        python_threads = {thread.native_id for thread in threading.enumerate()}
        self.metrics.watch_engine_threads(_native_thread_ids() - threads_before - python_threads)
        if self.status is Status.STARTING:
            self.set_status(Status.READY)
            log.info(
                "ready: %s on %s (%s, %d×%d threads, batches of %d sentences / %d tokens, queue %d)",
                self.manifest.source, engine.device, engine.compute_type, settings.inter_threads,
                settings.intra_threads, settings.max_batch_size, settings.max_batch_tokens, settings.max_queue,
            )

    def _load_detector(self) -> LanguageDetector:
        detector = LanguageDetector(
            self.languages, self.settings.auto_fallback_lang, min_confidence=self.settings.auto_min_confidence
        )
        detector.load()
        return detector


def _native_thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # not Linux: the engine's CPU metric stays empty
        return set()


def _build_cache(settings: Settings, namespace: str, metrics: Metrics) -> Cache:
    local = LruCache(settings.cache_size, max_bytes=settings.cache_max_bytes, max_entry_chars=settings.cache_max_entry_chars)
    metrics.watch_cache(local)
    if not settings.redis_url:
        return local
    return RedisCache(
        settings.redis_url,
        namespace=namespace,
        local=local,
        timeout_seconds=settings.redis_timeout_ms / 1000,
        ttl_seconds=settings.redis_ttl_seconds,
        on_status=metrics.cache_status,
    )


def _build_batcher(settings: Settings, engine: Engine, metrics: Metrics, tracing: Tracing | None) -> Batcher[Job, Translation]:
    def run_batch(jobs: list[Job]) -> list[Translation]:
        # Runs in a batcher worker thread; the engine releases the GIL while it computes.
        translations = engine.translate(jobs)
        metrics.output_tokens.inc(sum(len(t.tokens) for t in translations))
        # Drift signals, counted once per sentence the engine translates.
        metrics.observe_engine_sentences(
            [len(job.pieces) for job in jobs],
            [len(translation.tokens) for translation in translations],
            sum(engine.unknown_pieces(job) for job in jobs),
        )
        return translations

    def on_batch(stats: BatchStats) -> None:
        metrics.batch_size.observe(stats.size)
        metrics.batch_tokens.observe(stats.cost)
        metrics.inference_duration.observe(stats.seconds)
        metrics.input_tokens.inc(stats.cost)
        if tracing is not None and stats.tags:  # a batch that served traced requests
            tracing.record_batch(stats.seconds, stats.size, stats.cost, stats.tags, stats.failed)

    return Batcher(
        run_batch,
        max_batch_size=settings.max_batch_size if settings.batching else 1,
        max_batch_cost=settings.max_batch_tokens,
        max_queue=settings.max_queue,
        concurrency=settings.inter_threads,
        queue_timeout=settings.queue_timeout_seconds,
        cost=lambda job: len(job.source),
        key=lambda job: job,
        on_batch=on_batch,
        on_wait=metrics.queue_duration.observe,
    )
