"""The Starlette app: routes, error handling, and the lifespan that owns the engine and the batcher.

The server listens at once and loads the model in the background, so /healthz answers and
/readyz says 503 "starting" during a slow load; /readyz turns 200 only after a warm-up
translation has gone through the same batcher and engine as real traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from service.batcher import Batcher, BatcherClosed, BatchStats
from service.cache import Cache, LruCache, RedisCache
from service.engine import Engine, Job, Translation
from service.metrics import Metrics
from service.model_dir import Manifest
from service.openapi import openapi_document
from service.pipeline import Pipeline
from service.schema import (
    ApiError,
    Limits,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    TranslationFailed,
    UnsupportedMediaType,
    encode_result,
    parse_translation_request,
)
from service.settings import Settings

log = logging.getLogger("service")
request_log = logging.getLogger("service.requests")

WARM_UP_TEXT = "Hello world."


@dataclass
class ServiceState:
    settings: Settings
    manifest: Manifest
    metrics: Metrics = field(default_factory=Metrics)
    status: str = "starting"  # starting -> ready -> draining; "failed" if the model could not load
    engine: Engine | None = None
    batcher: Batcher[Job, Translation] | None = None
    pipeline: Pipeline | None = None
    cache: Cache | None = None

    def set_status(self, status: str) -> None:
        self.status = status
        self.metrics.ready.set(1 if status == "ready" else 0)


def create_app(
    settings: Settings,
    manifest: Manifest,
    *,
    load_engine: Callable[[], Engine],
    on_fatal: Callable[[str], None] = lambda reason: None,
) -> Starlette:
    """`load_engine` runs in a worker thread at start; `on_fatal` is told if it fails."""
    state = ServiceState(settings, manifest)
    limits = Limits(settings.max_records, settings.max_text_chars)
    languages = frozenset(manifest.languages)

    async def start() -> None:
        try:
            engine = await asyncio.to_thread(load_engine)
            state.engine = engine
            state.cache = _build_cache(settings, engine.fingerprint, state.metrics)
            state.batcher = _build_batcher(settings, engine, state.metrics)
            state.batcher.start()
            state.pipeline = Pipeline(engine, state.batcher, state.cache, state.metrics, settings.max_queue)
            warm_up_lang = "en" if "en" in languages else manifest.languages[0]
            await state.batcher.submit(engine.encode(WARM_UP_TEXT, warm_up_lang, warm_up_lang))
        except Exception as error:  # noqa: BLE001 - reported, and the process is told to stop
            state.set_status("failed")
            log.error("model failed to start: %s: %s", error.__class__.__name__, error)
            on_fatal(str(error))
            return
        if state.status == "starting":
            state.set_status("ready")
            log.info("ready: %s on %s (%s)", manifest.source, engine.device, engine.compute_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state.metrics.queue_capacity.set(settings.max_queue)
        state.metrics.queue_depth.set_function(lambda: state.batcher.queue_depth if state.batcher else 0)
        starting = asyncio.create_task(start(), name="model-start")
        try:
            yield
        finally:
            if state.status != "failed":
                state.set_status("draining")
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            if state.batcher is not None:
                await state.batcher.close()
            if state.cache is not None:
                await state.cache.close()
            log.info("stopped: every accepted request was answered")

    async def translation(request: Request) -> Response:
        started = time.perf_counter()
        request_id = _request_id(request)
        state.metrics.in_flight.inc()
        info: dict = {"request_id": request_id}
        status = 500
        try:
            response = await _translate(request, info)
            status = response.status_code
        except ApiError as error:
            response = _error_response(error)
            status = error.status
            if error.status >= 500:
                log.error("request %s failed: %s", request_id, error.message)
        except ClientDisconnect:
            response, status = Response(status_code=499), 499
        finally:
            state.metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        state.metrics.requests.labels(status=str(status)).inc()
        state.metrics.request_duration.observe(elapsed)
        response.headers["x-request-id"] = request_id
        response.headers["x-total-time"] = f"{elapsed * 1000:.3f}"
        request_log.info(
            "request", extra={"fields": {**info, "status": status, "latency_ms": round(elapsed * 1000, 3)}}
        )
        return response

    async def _translate(request: Request, info: dict) -> Response:
        # While draining, requests still arrive until the load balancer has noticed /readyz: serve them.
        if state.status not in ("ready", "draining") or state.pipeline is None:
            raise NotReady(f"the service is {state.status}; retry shortly", headers={"Retry-After": "1"})
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", ""):
            raise UnsupportedMediaType(f"content-type must be application/json, got {content_type}")
        body = await _read_body(request, settings.max_body_bytes)
        parsed = parse_translation_request(body, languages, limits)
        info.update(records=len(parsed.records), from_lang=parsed.from_lang, to_lang=parsed.to_lang)
        work = asyncio.ensure_future(
            state.pipeline.translate(parsed.from_lang, parsed.to_lang, [r.text for r in parsed.records])
        )
        # A client that hangs up withdraws its sentences from the queue: they are not translated.
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()  # the server gave up on this request: so do we
            raise
        finally:
            gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            info["client_gone"] = True
            raise ClientDisconnect()
        try:
            result = work.result()
        except ApiError:
            raise
        except BatcherClosed as error:
            raise NotReady(str(error), headers={"Retry-After": "1"}) from None
        except Exception as error:  # noqa: BLE001 - an engine failure fails this request only
            detail = f"{error.__class__.__name__}: {error}"
            if settings.log_text:
                detail += f" (texts: {[r.text for r in parsed.records]!r})"
            raise TranslationFailed(f"translation failed ({detail})") from None
        info.update(
            sentences=result.sentences,
            cache_hits=result.cache_hits,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )
        response = Response(
            encode_result([r.id for r in parsed.records], result.texts), media_type="application/json"
        )
        response.headers["x-queue-time"] = f"{result.queue_seconds * 1000:.3f}"
        response.headers["x-inference-time"] = f"{result.inference_seconds * 1000:.3f}"
        return response

    async def languages_route(request: Request) -> Response:
        return JSONResponse({"languages": list(manifest.languages)})

    async def healthz(request: Request) -> Response:
        # Liveness: the process answers, and once started, the batcher's loop is alive.
        alive = state.status != "failed" and (state.batcher is None or state.batcher.alive or state.status == "draining")
        return JSONResponse({"status": "alive" if alive else "dead"}, status_code=200 if alive else 503)

    async def readyz(request: Request) -> Response:
        ready = state.status == "ready" and state.batcher is not None and state.batcher.alive
        return JSONResponse({"status": state.status if not ready else "ready"}, status_code=200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(settings))

    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return _error_response(NotFound(f"no route {request.url.path}; see /openapi.json"))
        if error.status_code == 405:
            return _error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return _error_response(ApiError(str(error.detail)))

    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(ApiError("internal error; see the server log"))

    app = Starlette(
        routes=[
            Route("/translation", translation, methods=["POST"]),
            Route("/languages", languages_route, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.state.service = state
    return app


def _build_cache(settings: Settings, namespace: str, metrics: Metrics) -> Cache:
    local = LruCache(settings.cache_size)
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


def _build_batcher(settings: Settings, engine: Engine, metrics: Metrics) -> Batcher[Job, Translation]:
    async def run_batch(jobs: list[Job]) -> list[Translation]:
        # The engine releases the GIL: a worker thread keeps the event loop free meanwhile.
        translations = await asyncio.to_thread(engine.translate, jobs)
        metrics.output_tokens.inc(sum(len(t.tokens) for t in translations))
        return translations

    def on_batch(stats: BatchStats) -> None:
        metrics.batch_size.observe(stats.size)
        metrics.batch_tokens.observe(stats.cost)
        metrics.inference_duration.observe(stats.seconds)
        metrics.input_tokens.inc(stats.cost)

    return Batcher(
        run_batch,
        max_batch_size=settings.max_batch_size if settings.batching else 1,
        max_batch_cost=settings.max_batch_tokens,
        max_queue=settings.max_queue,
        concurrency=settings.inter_threads,
        cost=lambda job: len(job.source),
        key=lambda job: job,
        on_batch=on_batch,
        on_wait=metrics.queue_duration.observe,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """Reads the body, refusing it as soon as it is known to exceed `limit`: never reads it whole first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    # Accept a caller's id only if it is short and plain, so it can't forge log lines.
    if 0 < len(given) <= 128 and given.replace("-", "").replace("_", "").isalnum():
        return given
    return uuid.uuid4().hex


def _error_response(error: ApiError) -> Response:
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=error.headers)

