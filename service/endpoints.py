"""The hot paths, `POST /translation` and `POST /detect`, as plain ASGI handlers.

They run ahead of Starlette's middleware and routing (service/app.py dispatches to them), because at
thousands of requests per second those layers cost more CPU than the service's own work
(docs/edge.md). One handler frame (`_serve`) does what both share: readiness, the API key, fair use,
the in-flight bound, the error answer, metrics and the request log.

Refuse before work: a request over the in-flight limit gets 429 before its body is read, and the
pipeline refuses a request whose sentences don't fit the queue before any cache lookup or tokenizing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from service.errors import ServiceError
from service.http_protocol import HOLD_READING
from service.pipeline import RETRY_AFTER_SECONDS, in_thread
from service.runtime import Runtime
from service.schema import (
    ApiError,
    Limits,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    api_error,
    encode_detections,
    encode_result,
    parse_detect_request,
    parse_translation_request,
)

log = logging.getLogger("service")
request_log = logging.getLogger("service.requests")

_JSON = (b"content-type", b"application/json")
# Bodies above this are parsed and answered off the event loop (service/pipeline.py says why).
LARGE_BODY_BYTES = 16 * 1024


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


# The work of one endpoint: (runtime, headers, receive, log fields, timing headers) -> response body.
Work = Callable[[Runtime, "_Headers", Receive, dict[str, Any], list[tuple[bytes, bytes]]], Awaitable[bytes]]


async def translation(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _translate, runtime.metrics.count_request)


async def detection(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _detect, runtime.metrics.count_detect_request)


# POST routes served ahead of Starlette (the hot paths).
POST_HANDLERS = {"/translation": translation, "/detect": detection}


async def _serve(
    runtime: Runtime, scope: Scope, receive: Receive, send: Send, work: Work, count: Callable[[int], None]
) -> None:
    started = time.perf_counter()
    headers = _Headers(scope)
    request_id = headers.request_id or new_request_id()
    info: dict[str, Any] = {"request_id": request_id}
    timing: list[tuple[bytes, bytes]] = []
    counted = False
    try:
        try:
            if not runtime.serving:
                raise NotReady(f"the service is {runtime.status}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            client = authorize(runtime, scope, headers.authorization)
            refusal = runtime.fair_use.admit_request(client)
            if refusal is not None:
                raise RateLimited(f"{refusal.reason}; retry shortly", headers={"Retry-After": str(refusal.retry_after)})
            info["client"] = client
            if runtime.in_flight >= runtime.settings.max_in_flight:
                raise Overloaded("the service is at capacity; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            runtime.in_flight += 1
            counted = True
            body = await work(runtime, headers, receive, info, timing)
        except ServiceError as error:
            raise api_error(error) from None
        status = 200
        await send_json(send, 200, body, request_id, started, timing, close=runtime.status == "draining")
    except ApiError as error:
        status = error.status
        if isinstance(error, Overloaded | RateLimited):
            # Enforce Retry-After on this connection: its next request is read only after it (see
            # service/http_protocol.py), so clients that retry at once can't starve accepted work.
            scope[HOLD_READING] = float(error.headers.get("Retry-After", RETRY_AFTER_SECONDS))
        if status >= 500:
            texts = f" (texts: {info['texts']!r})" if runtime.settings.log_text and "texts" in info else ""
            log.error("request %s failed: %s%s", request_id, error.message, texts)
        await send_json(send, status, error.body(), request_id, started, header_list(error), close=runtime.status == "draining")
    except ClientGone:
        status = 499  # nginx's code for it: nobody is left to answer
        info["client_gone"] = True
    except Exception:
        status = 500
        log.exception("unexpected error on %s (request %s)", scope["path"], request_id)
        await send_json(send, 500, ApiError("internal error; see the server log").body(), request_id, started, [])
    finally:
        if counted:
            runtime.in_flight -= 1
    elapsed = time.perf_counter() - started
    count(status)
    if work is _translate:
        runtime.metrics.request_duration.observe(elapsed)
    if request_log.isEnabledFor(logging.INFO):
        info.pop("texts", None)  # never in the request log
        info["status"] = status
        info["latency_ms"] = round(elapsed * 1000, 3)
        request_log.info("request", extra={"fields": info})


async def _translate(runtime: Runtime, headers: _Headers, receive: Receive, info: dict, timing: list) -> bytes:
    settings = runtime.settings
    body = await _read_json_body(headers, receive, settings.max_body_bytes)
    large = len(body) > LARGE_BODY_BYTES
    limits = Limits(settings.max_records, settings.max_text_chars)
    parse_args = (body, runtime.languages, limits)
    parsed = await in_thread(parse_translation_request, *parse_args) if large else parse_translation_request(*parse_args)
    info.update(records=len(parsed.records), from_lang=parsed.from_lang, to_lang=parsed.to_lang)
    pipeline = runtime.pipeline
    assert pipeline is not None  # runtime.serving
    texts = [record.text for record in parsed.records]
    if settings.log_text:
        info["texts"] = texts  # for the error log only (MT_LOG_TEXT)
    work = pipeline.translate(parsed.from_lang, parsed.to_lang, texts, client=info.get("client", ""))
    result = await _unless_client_leaves(work, receive)
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
    body = await _read_json_body(headers, receive, settings.max_body_bytes)
    limits = Limits(settings.max_records, settings.max_text_chars)
    # Detection reads at most the first 1,000 characters of each text: the body's size bounds the work.
    large = len(body) > LARGE_BODY_BYTES
    texts = await in_thread(parse_detect_request, body, limits) if large else parse_detect_request(body, limits)
    info.update(texts_count=len(texts))
    pipeline = runtime.pipeline
    assert pipeline is not None  # runtime.serving
    detections = await in_thread(pipeline.detect, texts) if large else pipeline.detect(texts)
    return encode_detections(detections)


async def _read_json_body(headers: _Headers, receive: Receive, limit: int) -> bytes:
    if headers.content_type not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type must be application/json, got {headers.content_type}")
    return await _read_body(receive, headers.content_length, limit)


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


# --- who is asking


def bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return ""


def authorize(runtime: Runtime, scope: Scope, authorization: str) -> str:
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


class _Headers:
    """The request headers the handler needs, found in one pass over the ASGI list."""

    __slots__ = ("authorization", "content_length", "content_type", "request_id")

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
                self.request_id = plain_request_id(value)
            elif name == b"authorization":
                self.authorization = value.decode("latin-1")


def plain_request_id(value: bytes) -> str:
    """A caller's id, accepted only if it is short and plain, so it can't forge log lines; else ""."""
    text = value.decode("latin-1")
    if 0 < len(text) <= 128 and text.replace("-", "").replace("_", "").isalnum() and text.isascii():
        return text
    return ""


# Generated ids: a random per-process prefix and a counter; unique, and cheaper than uuid4 per request.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


# --- the body in, the answer out


async def _read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """Reads the body, refusing it as soon as it is known to exceed `limit`: never reads it whole first."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
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


def header_list(error: ApiError) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]


async def send_json(
    send: Send, status: int, body: bytes, request_id: str, started: float, extra: list, *, close: bool = False
) -> None:
    """An answer in the hot path's shape (also the key check's 401 in front of the other routes)."""
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
