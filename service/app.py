"""The HTTP edge: routes, the translation endpoint, and the lifespan that starts and stops the runtime.

`POST /translation` is the hot path: it is served by a plain ASGI handler, ahead of Starlette's
middleware and routing, because at thousands of requests per second those layers cost more CPU than
the service's own work (docs/benchmarks.md, "HTTP edge"). Every other route is ordinary Starlette.

Refuse before work: a request over the in-flight limit gets 429 before its body is read, and the
pipeline refuses a request whose sentences don't fit the queue before any cache lookup or tokenizing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from service import languages
from service.batcher import BatcherClosed
from service.engine import Engine
from service.http_protocol import HOLD_READING
from service.model_dir import Manifest
from service.openapi import openapi_document
from service.pipeline import RETRY_AFTER_SECONDS, in_thread
from service.runtime import Runtime
from service.schema import (
    ApiError,
    Limits,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    TranslationFailed,
    Unauthorized,
    UnsupportedMediaType,
    encode_detections,
    encode_result,
    parse_detect_request,
    parse_translation_request,
)
from service.settings import Settings

log = logging.getLogger("service")
request_log = logging.getLogger("service.requests")

_JSON = (b"content-type", b"application/json")
# Bodies above this are parsed and answered off the event loop (service/pipeline.py says why).
LARGE_BODY_BYTES = 16 * 1024


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


# Open whatever the API keys say: probes must reach them.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class TranslationApp(Starlette):
    """Starlette, with POST /translation dispatched before the middleware stack, and the API-key check
    in front of every route but the probes."""

    def __init__(self, runtime: Runtime, **kwargs) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.state.service = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST" and scope["path"] in POST_HANDLERS:
                await POST_HANDLERS[scope["path"]](self.runtime, scope, receive, send)
                return
            if self.runtime.keys is not None and _needs_key(scope["path"], self.runtime):
                try:
                    _authorize(self.runtime, scope, _bearer(scope))
                except Unauthorized as error:
                    await _send(send, 401, error.body(), _new_request_id(), time.perf_counter(), _header_list(error))
                    return
        await super().__call__(scope, receive, send)


def _needs_key(path: str, runtime: Runtime) -> bool:
    if path in OPEN_PATHS:
        return False
    return path != "/metrics" or runtime.settings.metrics_require_key


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return ""


def _authorize(runtime: Runtime, scope: Scope, authorization: str) -> str:
    """The client's name for fair-use limits: its key's, or its address when keys are off.
    Raises Unauthorized for a missing or wrong key (the message never hints at valid keys)."""
    keys = runtime.keys
    if keys is None:
        client = scope.get("client")
        return f"addr:{client[0]}" if client else "addr:unknown"
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or not keys.check(key):
        raise Unauthorized(
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": 'Bearer realm="translation"'},
        )
    return keys.client_id(key)


def _header_list(error: ApiError) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]


def create_app(
    settings: Settings,
    manifest: Manifest,
    *,
    load_engine: Callable[[], Engine],
    on_fatal: Callable[[str], None] = lambda reason: None,
) -> TranslationApp:
    """`load_engine` runs in a worker thread at start; `on_fatal` is told if it fails.
    `settings` must be resolved for the device (Settings.for_device)."""
    runtime = Runtime(settings, manifest, load_engine=load_engine, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        runtime.begin()
        try:
            yield
        finally:
            await runtime.stop()

    detectable = languages.detectable(manifest.languages)
    language_list = {
        "languages": list(manifest.languages),  # the first contract's field: codes only
        "details": [
            {"code": code, "name": languages.name(code), "source": True, "target": True, "detectable": code in detectable}
            for code in manifest.languages
        ],
    }

    async def languages_route(request: Request) -> Response:
        return JSONResponse(language_list)

    async def healthz(request: Request) -> Response:
        alive = runtime.alive
        return JSONResponse({"status": "alive" if alive else "dead"}, status_code=200 if alive else 503)

    async def readyz(request: Request) -> Response:
        ready = runtime.ready
        return JSONResponse({"status": "ready" if ready else runtime.status}, status_code=200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(settings, manifest.languages))

    async def translation_route(scope: Scope, receive: Receive, send: Send) -> None:
        await translation(runtime, scope, receive, send)  # reached only when the fast dispatch is bypassed

    async def detect_route(scope: Scope, receive: Receive, send: Send) -> None:
        await detection(runtime, scope, receive, send)  # likewise

    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return _error_response(NotFound(f"no route {request.url.path}; see /openapi.json"))
        if error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
            return _error_response(MethodNotAllowed(message, headers={"Allow": allowed}))
        return _error_response(ApiError(str(error.detail)))

    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(ApiError("internal error; see the server log"))

    app = TranslationApp(
        runtime,
        routes=[
            Route("/translation", translation_route, methods=["POST"]),
            Route("/detect", detect_route, methods=["POST"]),
            Route("/languages", languages_route, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    # No "/path/" -> "/path" redirects: Starlette builds their Location from the request's Host header.
    app.router.redirect_slashes = False
    return app


# --- POST /translation and POST /detect, as plain ASGI handlers

# The work of one endpoint: (runtime, headers, receive, log fields, timing headers) -> response body.
Work = Callable[[Runtime, "_Headers", Receive, dict, list], Awaitable[bytes]]


async def translation(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _translate, runtime.metrics.count_request)


async def detection(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _detect, runtime.metrics.count_detect_request)


async def _serve(
    runtime: Runtime, scope: Scope, receive: Receive, send: Send, work: Work, count: Callable[[int], None]
) -> None:
    """What every POST endpoint shares: readiness, key, fair use, the in-flight bound, errors, metrics, the log."""
    started = time.perf_counter()
    headers = _Headers(scope)
    request_id = headers.request_id or _new_request_id()
    info: dict = {"request_id": request_id}
    timing: list[tuple[bytes, bytes]] = []
    counted = False
    try:
        if not runtime.serving:
            raise NotReady(f"the service is {runtime.status}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        client = _authorize(runtime, scope, headers.authorization)
        refusal = runtime.fair_use.admit_request(client)
        if refusal is not None:
            raise RateLimited(f"{refusal.reason}; retry shortly", headers={"Retry-After": str(refusal.retry_after)})
        info["client"] = client
        if runtime.in_flight >= runtime.settings.max_in_flight:
            raise Overloaded("the service is at capacity; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        runtime.in_flight += 1
        counted = True
        body = await work(runtime, headers, receive, info, timing)
        status = 200
        await _send(send, 200, body, request_id, started, timing, close=runtime.status == "draining")
    except ApiError as error:
        status = error.status
        if isinstance(error, Overloaded | RateLimited):
            # Enforce Retry-After on this connection: its next request is read only after it (see
            # service/http_protocol.py), so clients that retry at once can't starve accepted work.
            scope[HOLD_READING] = float(error.headers.get("Retry-After", RETRY_AFTER_SECONDS))
        if status >= 500:
            log.error("request %s failed: %s", request_id, error.message)
        await _send(send, status, error.body(), request_id, started, _header_list(error), close=runtime.status == "draining")
    except ClientGone:
        status = 499  # nginx's code for it: nobody is left to answer
        info["client_gone"] = True
    except Exception:  # noqa: BLE001 - never a traceback to the client
        status = 500
        log.exception("unexpected error on %s (request %s)", scope["path"], request_id)
        await _send(send, 500, ApiError("internal error; see the server log").body(), request_id, started, [])
    finally:
        if counted:
            runtime.in_flight -= 1
    elapsed = time.perf_counter() - started
    count(status)
    if work is _translate:
        runtime.metrics.request_duration.observe(elapsed)
    if request_log.isEnabledFor(logging.INFO):
        info["status"] = status
        info["latency_ms"] = round(elapsed * 1000, 3)
        request_log.info("request", extra={"fields": info})


async def _translate(runtime: Runtime, headers: _Headers, receive: Receive, info: dict, timing: list) -> bytes:
    settings = runtime.settings
    if headers.content_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type must be application/json, got {headers.content_type}")
    body = await _read_body(receive, headers.content_length, settings.max_body_bytes)
    large = len(body) > LARGE_BODY_BYTES
    limits = Limits(settings.max_records, settings.max_text_chars)
    parse_args = (body, runtime.languages, limits)
    parsed = await in_thread(parse_translation_request, *parse_args) if large else parse_translation_request(*parse_args)
    info.update(records=len(parsed.records), from_lang=parsed.from_lang, to_lang=parsed.to_lang)
    pipeline = runtime.pipeline
    assert pipeline is not None  # runtime.serving
    texts = [record.text for record in parsed.records]
    try:
        work = pipeline.translate(parsed.from_lang, parsed.to_lang, texts, client=info.get("client", ""))
        result = await _unless_client_leaves(work, receive)
    except (ApiError, ClientGone):
        raise
    except BatcherClosed as error:
        raise NotReady(str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except Exception as error:  # noqa: BLE001 - an engine failure fails this request only
        detail = f"{error.__class__.__name__}: {error}"
        if settings.log_text:
            detail += f" (texts: {texts!r})"
        raise TranslationFailed(f"translation failed ({detail})") from None
    info.update(
        sentences=result.sentences,
        cache_hits=result.cache_hits,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
    )
    timing.append((b"x-queue-time", f"{result.queue_seconds * 1000:.3f}".encode()))
    timing.append((b"x-inference-time", f"{result.inference_seconds * 1000:.3f}".encode()))
    ids = [record.id for record in parsed.records]
    encode_args = (ids, result.texts, result.detections)
    return await in_thread(encode_result, *encode_args) if large else encode_result(*encode_args)


async def _detect(runtime: Runtime, headers: _Headers, receive: Receive, info: dict, timing: list) -> bytes:
    settings = runtime.settings
    if headers.content_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type must be application/json, got {headers.content_type}")
    body = await _read_body(receive, headers.content_length, settings.max_body_bytes)
    limits = Limits(settings.max_records, settings.max_text_chars)
    # Detection reads at most DEFAULT_MAX_CHARS of each text: the bound that decides a thread hop.
    large = len(body) > LARGE_BODY_BYTES
    texts = await in_thread(parse_detect_request, body, limits) if large else parse_detect_request(body, limits)
    info.update(texts=len(texts))
    pipeline = runtime.pipeline
    assert pipeline is not None  # runtime.serving
    detections = await in_thread(pipeline.detect, texts) if large else pipeline.detect(texts)
    return encode_detections(detections)


async def _unless_client_leaves(work, receive: Receive):
    """Awaits `work` in this task; if the client hangs up meanwhile, cancels it (its queued sentences are
    withdrawn, not translated) and raises ClientGone. One watcher task per request, no more."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # the server is cancelling this request, not the client
        task.uncancel()
        raise ClientGone() from None
    finally:
        watcher.cancel()


class _Headers:
    """The request headers the handler needs, found in one pass over the ASGI list."""

    __slots__ = ("content_type", "content_length", "request_id", "authorization")

    def __init__(self, scope: Scope) -> None:
        self.content_type = "application/json"
        self.content_length: int | None = None
        self.request_id = ""
        self.authorization = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value.decode("latin-1").split(";")[0].strip().lower()
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif name == b"x-request-id":
                self.request_id = _plain_request_id(value)
            elif name == b"authorization":
                self.authorization = value.decode("latin-1")


def _plain_request_id(value: bytes) -> str:
    # Accept a caller's id only if it is short and plain, so it can't forge log lines.
    text = value.decode("latin-1")
    if 0 < len(text) <= 128 and text.replace("-", "").replace("_", "").isalnum() and text.isascii():
        return text
    return ""


# Generated ids: a random per-process prefix and a counter; unique, and cheaper than uuid4 per request.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


async def _read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """Reads the body, refusing it as soon as it is known to exceed `limit`: never reads it whole first."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def _send(
    send: Send, status: int, body: bytes, request_id: str, started: float, extra: list, *, close: bool = False
) -> None:
    headers = [
        _JSON,
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
        (b"x-total-time", f"{(time.perf_counter() - started) * 1000:.3f}".encode()),
    ]
    if close:  # draining: keep-alive clients move to another replica before this one closes
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# POST routes served ahead of Starlette (the hot paths).
POST_HANDLERS = {"/translation": translation, "/detect": detection}


def _error_response(error: ApiError) -> Response:
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=error.headers)
