"""The HTTP edge: the app, its routes, and the lifespan that starts and stops the runtime.

The runtime (engine, batcher, cache, pipeline, warm-up, drain) is service/runtime.py and knows
nothing of HTTP; the hot POST paths are service/endpoints.py, dispatched ahead of Starlette's
middleware and routing. Every other route is an ordinary Starlette handler here, reading the
runtime from `request.app.runtime`. Errors have one shape and one status table (service/schema.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import apidocs, info, languages, webpage
from service.cors import Cors, parse_origins
from service.endpoints import (
    POST_HANDLERS,
    detection,
    header,
    header_list,
    new_request_id,
    note_refusal,
    request_log,
    send_json,
    translation,
)
from service.engine import Engine
from service.errors import ServiceError
from service.libretranslate import route as libretranslate_route
from service.model_dir import Manifest
from service.openapi import openapi_document
from service.runtime import Runtime
from service.schema import ApiError, MethodNotAllowed, NotFound, api_error
from service.settings import Settings
from service.tracing import Tracing

log = logging.getLogger("service")

# Open whatever the API keys say: probes must reach them, and a browser must load the web page, the API docs and
# the document they render before it can send a key (the page's and Swagger UI's own requests carry it).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})
OPEN_PREFIXES = (webpage.ASSETS_PREFIX, apidocs.ASSETS_PREFIX)


class TranslationApp(Starlette):
    """Starlette, with the hot POST routes dispatched before the middleware stack, and the API-key check
    in front of every route but the probes."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.state.service = runtime
        self.language_list = _language_list(runtime.manifest)
        origins = parse_origins(runtime.settings.cors_origins)
        # CORS, when configured, goes in front of everything, the hot paths too; off, it costs nothing.
        self._entry: ASGIApp = Cors(self._dispatch, origins) if origins else self._dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = POST_HANDLERS.get(scope["path"]) if scope["method"] == "POST" else None
            # LibreTranslate's API (/libretranslate/...), every method, ahead of the native key check: its keys may
            # come in the body, and its language list is open, as in LibreTranslate.
            handler = handler or libretranslate_route(scope["path"])
            if handler is not None:
                await handler(self.runtime, scope, receive, send)
                return
            if self.runtime.admission.keys is not None and _needs_key(scope["path"], self.runtime):
                if not await _authenticated(self.runtime, scope, send):
                    return
        await super().__call__(scope, receive, send)


async def _authenticated(runtime: Runtime, scope: Scope, send: Send) -> bool:
    """The API-key check in front of the ordinary routes; answers the refusal itself (401, or 429 for an
    address that failed too often) and logs it with the caller's address."""
    admission = runtime.admission
    caller = admission.caller(scope.get("client"), header(scope, b"x-forwarded-for"))
    authorization = header(scope, b"authorization")
    try:
        admission.authenticate(caller, authorization.decode("latin-1") if authorization else "")
    except ServiceError as domain_error:
        error = api_error(domain_error)
        note_refusal(scope, caller, None, error, error.status)
        request_id = new_request_id()
        await send_json(send, error.status, error.body(), request_id, time.perf_counter(), header_list(error))
        request_log.info("request", extra={"fields": {
            "request_id": request_id, "address": caller.address, "path": scope["path"], "status": error.status,
        }})  # fmt: skip
        return False
    return True


def create_app(
    settings: Settings,
    manifest: Manifest,
    *,
    load_engine: Callable[[], Engine],
    on_fatal: Callable[[str], None] = lambda reason: None,
    tracing: Tracing | None = None,
) -> TranslationApp:
    """`load_engine` runs in a worker thread at start; `on_fatal` is told if it fails; `tracing`: None is off
    (service/tracing.py). `settings` must be resolved for the device (Settings.for_device)."""
    runtime = Runtime(settings, manifest, load_engine=load_engine, on_fatal=on_fatal, tracing=tracing)
    app = TranslationApp(
        runtime,
        routes=[
            Route("/translation", _translation_route, methods=["POST"]),
            Route("/detect", _detect_route, methods=["POST"]),
            Route("/languages", _languages, methods=["GET"]),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", _readyz, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
            Route("/openapi.json", _openapi, methods=["GET"]),
            Route("/info", _info, methods=["GET"]),
            *apidocs.routes(),
            *webpage.routes(),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=_lifespan,
    )
    # No "/path/" -> "/path" redirects: Starlette builds their Location from the request's Host header.
    app.router.redirect_slashes = False
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    runtime = _runtime(app)
    runtime.begin()
    try:
        yield
    finally:
        await runtime.stop()


def _runtime(app: Any) -> Runtime:
    assert isinstance(app, TranslationApp)
    return app.runtime


def _needs_key(path: str, runtime: Runtime) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return False
    return path != "/metrics" or runtime.settings.metrics_require_key


def _language_list(manifest: Manifest) -> dict[str, Any]:
    detectable = languages.detectable(manifest.languages)
    return {
        "languages": list(manifest.languages),  # the first contract's field: codes only
        "details": [
            {"code": code, "name": languages.name(code), "source": True, "target": True, "detectable": code in detectable}
            for code in manifest.languages
        ],
    }


# --- routes


async def _languages(request: Request) -> Response:
    app = request.app
    assert isinstance(app, TranslationApp)
    return JSONResponse(app.language_list)


async def _healthz(request: Request) -> Response:
    alive = _runtime(request.app).alive
    return JSONResponse({"status": "alive" if alive else "dead"}, status_code=200 if alive else 503)


async def _readyz(request: Request) -> Response:
    runtime = _runtime(request.app)
    ready = runtime.ready
    return JSONResponse({"status": "ready" if ready else str(runtime.status)}, status_code=200 if ready else 503)


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(_runtime(request.app).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _openapi(request: Request) -> Response:
    runtime = _runtime(request.app)
    return JSONResponse(openapi_document(runtime.settings, runtime.manifest.languages))


async def _info(request: Request) -> Response:
    return JSONResponse(info.info_document(_runtime(request.app)))


# Reached only when the fast dispatch in TranslationApp.__call__ is bypassed (a mounted sub-app, say).
async def _translation_route(scope: Scope, receive: Receive, send: Send) -> None:
    await translation(_runtime(scope["app"]), scope, receive, send)


async def _detect_route(scope: Scope, receive: Receive, send: Send) -> None:
    await detection(_runtime(scope["app"]), scope, receive, send)


# --- errors outside the hot paths, in the one JSON shape


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        return _error_response(NotFound(f"no route {request.url.path}; see /openapi.json"))
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return _error_response(MethodNotAllowed(message, headers={"Allow": allowed}))
    return _error_response(ApiError(str(error.detail)))


async def _unexpected_error(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return _error_response(ApiError("internal error; see the server log"))


def _error_response(error: ApiError) -> Response:
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=error.headers)
