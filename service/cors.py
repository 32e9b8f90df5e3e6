"""CORS for browser apps on other origins (MT_CORS_ORIGINS; off when empty): Starlette's middleware, in front of
every route, hot paths included, with a refused preflight answered in the service's JSON error shape.

Keys travel in the Authorization header, never in cookies, so credentials stay off and `*` is safe to allow.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from service.schema import CorsRefused

ALLOWED_METHODS = ("GET", "POST")
# What a browser app sends besides the CORS-safelisted headers: the key, its own request id, trace context.
ALLOWED_HEADERS = ("Authorization", "X-Request-Id", "traceparent", "tracestate")
# What it may read of an answer besides the safelisted ones: the request id, the timings, when to retry.
EXPOSED_HEADERS = ("X-Request-Id", "X-Queue-Time", "X-Inference-Time", "X-Total-Time", "Retry-After")
PREFLIGHT_MAX_AGE_SECONDS = 600


def parse_origins(value: str) -> tuple[str, ...]:
    """The comma-separated origins of MT_CORS_ORIGINS: `*`, or each scheme://host[:port] with no path; raises
    ValueError naming the first bad one."""
    origins = tuple(origin.strip() for origin in value.split(",") if origin.strip())
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path), nor *")
    return origins


class Cors(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_SECONDS,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        # Starlette says "Disallowed CORS origin" in plain text; say which part, in the one error shape.
        failed = bytes(answer.body).decode().removeprefix("Disallowed CORS ")
        error = CorsRefused(
            f"cross-origin request refused ({failed}): origin {request_headers['origin']!r}, method "
            f"{request_headers['access-control-request-method']!r}; allowed origins are set by MT_CORS_ORIGINS, "
            f"methods {', '.join(ALLOWED_METHODS)}, headers {', '.join(ALLOWED_HEADERS)}"
        )
        headers = {name: value for name, value in answer.headers.items() if name.lower().startswith(("vary", "access-"))}
        return Response(error.body(), status_code=error.status, media_type="application/json", headers=headers)
