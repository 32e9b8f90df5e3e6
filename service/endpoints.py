"""The hot paths, `POST /translation` and `POST /detect`, as plain ASGI handlers.

They run ahead of Starlette's middleware and routing (service/app.py dispatches to them), because at
thousands of requests per second those layers cost more CPU than the service's own work
(docs/edge.md). One handler frame (`_serve`) does what both share: admission (one permit,
service/admission.py), the body, the error answer, metrics and the request log.

Refuse before work: readiness, the key and the client's rate are decided on the request head, before
its body is read; the in-flight bound once the body is in (a stalled body holds only a body slot); and
the pipeline asks for queue room once it has counted the sentences, before any cache lookup or tokenizing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from service.admission import Permit
from service.errors import RETRY_AFTER_SECONDS, ServiceError
from service.http_protocol import HOLD_READING
from service.identity import Caller
from service.offload import run_sized
from service.runtime import Runtime
from service.schema import (
    ApiError,
    Limits,
    PayloadTooLarge,
    UnsupportedMediaType,
    api_error,
    encode_detections,
    encode_result,
    parse_detect_request,
    parse_translation_request,
)
from service.tracing import trace_id_of

log = logging.getLogger("service")
request_log = logging.getLogger("service.requests")

_JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass(slots=True)
class RequestContext:
    """One request as the edge sees it: who asked, what the work found out (for the request log), and the
    timing headers of its answer. The work functions fill it in; `_serve` logs it."""

    request_id: str
    started: float
    address: str = ""
    client: str = ""
    size: int = 0  # body bytes: decides where the request's CPU work runs (service/offload.py)
    records: int | None = None
    from_lang: str | None = None
    to_lang: str | None = None
    sentences: int | None = None
    cache_hits: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    texts_count: int | None = None
    trace_id: str | None = None  # the request's trace (its span's, or with tracing off the caller's traceparent's)
    client_gone: bool = False
    texts: list[str] | None = None  # MT_LOG_TEXT only, for the error log; never in the request log
    timing: list[tuple[bytes, bytes]] = field(default_factory=list)

    def log_fields(self, status: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"request_id": self.request_id, "address": self.address}
        if self.client:
            fields["client"] = self.client
        for name in _LOGGED:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.client_gone:
            fields["client_gone"] = True
        fields["status"] = status
        fields["latency_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        return fields

    def span_attributes(self) -> dict[str, Any]:
        attributes = {}
        for name, attribute in _SPAN_ATTRIBUTES.items():
            value = getattr(self, name)
            if value:
                attributes[attribute] = value
        return attributes


def begin_trace(
    runtime: Runtime, scope: Scope, traceparent: bytes | None, tracestate: bytes | None, context: RequestContext
) -> tuple[Any, Any] | None:
    """Starts the request's span when tracing is on (None when off); either way the request log gets the trace id."""
    tracing = runtime.tracing
    if tracing is None:
        context.trace_id = trace_id_of(traceparent) if traceparent is not None else None
        return None
    span, token = tracing.enter_request(scope["method"], scope["path"], traceparent, tracestate)
    context.trace_id = tracing.trace_id(span)
    return span, token


def end_trace(runtime: Runtime, trace: tuple[Any, Any] | None, status: int, context: RequestContext) -> None:
    if trace is not None and runtime.tracing is not None:
        runtime.tracing.leave_request(*trace, status, context.span_attributes())


_LOGGED = (
    "records", "from_lang", "to_lang", "sentences", "cache_hits", "input_tokens", "output_tokens", "texts_count", "trace_id",
)  # fmt: skip
# What the request's span carries besides its status (service/tracing.py), when known.
_SPAN_ATTRIBUTES = {
    "request_id": "request.id", "client": "client.id", "records": "request.records", "from_lang": "translation.from",
    "to_lang": "translation.to", "sentences": "request.sentences", "cache_hits": "request.cache_hits",
    "input_tokens": "request.input_tokens", "output_tokens": "request.output_tokens", "texts_count": "request.texts",
}  # fmt: skip

# The work of one endpoint, once admitted and its body in: (runtime, permit, body, receive, context) -> answer.
Work = Callable[[Runtime, Permit, bytes, Receive, RequestContext], Awaitable[bytes]]


async def translation(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _translate, runtime.metrics.count_request)


async def detection(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    await _serve(runtime, scope, receive, send, _detect, runtime.metrics.count_detect_request)


# POST routes served ahead of Starlette (the hot paths).
POST_HANDLERS = {"/translation": translation, "/detect": detection}


async def _serve(
    runtime: Runtime, scope: Scope, receive: Receive, send: Send, work: Work, count: Callable[[int, str], None]
) -> None:
    headers = _Headers(scope)
    context = RequestContext(headers.request_id or new_request_id(), time.perf_counter())
    admission = runtime.admission
    caller = admission.caller(scope.get("client"), headers.forwarded_for)
    context.address = caller.address
    status, reason = 200, "ok"
    trace = begin_trace(runtime, scope, headers.traceparent, headers.tracestate, context)
    try:
        try:
            with admission.enter(caller, headers.authorization) as permit:
                context.client = permit.client
                body = await _read_json_body(headers, receive, runtime.settings.max_body_bytes)
                permit.body_received()
                context.size = len(body)
                answer = await work(runtime, permit, body, receive, context)
        except ServiceError as error:
            raise api_error(error) from None
        await send_json(send, 200, answer, context.request_id, context.started, context.timing, close=runtime.draining)
    except ApiError as error:
        status, reason = error.status, error.code
        note_refusal(scope, caller, context, error, status)
        await send_json(
            send, status, error.body(), context.request_id, context.started, header_list(error), close=runtime.draining
        )
    except ClientGone:
        status, reason = 499, "client_gone"  # nginx's code for it: nobody is left to answer
        context.client_gone = True
    except Exception:
        status, reason = 500, "internal_error"
        log.exception("unexpected error on %s (request %s)", scope["path"], context.request_id)
        await send_json(send, 500, ApiError("internal error; see the server log").body(), context.request_id, context.started, [])
    count(status, reason)
    end_trace(runtime, trace, status, context)
    if work is _translate:
        runtime.metrics.request_duration.observe(time.perf_counter() - context.started)
    if request_log.isEnabledFor(logging.INFO):
        request_log.info("request", extra={"fields": context.log_fields(status)})


async def _translate(runtime: Runtime, permit: Permit, body: bytes, receive: Receive, context: RequestContext) -> bytes:
    settings = runtime.settings
    limits = Limits(settings.max_records, settings.max_text_chars)
    parsed = await run_sized(context.size, parse_translation_request, body, runtime.languages, limits)
    context.records, context.from_lang, context.to_lang = len(parsed.records), parsed.from_lang, parsed.to_lang
    texts = [record.text for record in parsed.records]
    if settings.log_text:
        context.texts = texts  # for the error log only (MT_LOG_TEXT)
    work = permit.serving.pipeline.translate(
        parsed.from_lang, parsed.to_lang, texts, permit, size=context.size, alternatives=parsed.alternatives,
        html=parsed.format == "html",
    )
    result = await _unless_client_leaves(work, receive)
    context.sentences, context.cache_hits = result.sentences, result.cache_hits
    context.input_tokens, context.output_tokens = result.input_tokens, result.output_tokens
    context.timing.append((b"x-queue-time", f"{result.queue_seconds * 1000:.3f}".encode()))
    context.timing.append((b"x-inference-time", f"{result.inference_seconds * 1000:.3f}".encode()))
    ids = [record.id for record in parsed.records]
    return await run_sized(context.size, encode_result, ids, result.texts, result.detections, result.alternatives)


async def _detect(runtime: Runtime, permit: Permit, body: bytes, receive: Receive, context: RequestContext) -> bytes:
    settings = runtime.settings
    limits = Limits(settings.max_records, settings.max_text_chars)
    # Detection reads at most the first 1,000 characters of each text: the body's size bounds the work.
    texts = await run_sized(context.size, parse_detect_request, body, limits)
    context.texts_count = len(texts)
    detections = await run_sized(context.size, permit.serving.pipeline.detect, texts)
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


def note_refusal(scope: Scope, caller: Caller, context: RequestContext | None, error: ApiError, status: int) -> None:
    """What every refused or failed request does besides answering: after a 429, enforce Retry-After on this
    connection (its next request is read only after it, see service/http_protocol.py), so clients that retry at
    once can't starve accepted work, but never on a trusted proxy's connection, which carries other clients'
    requests; and log a server-side failure."""
    if status == 429 and not caller.proxied:
        scope[HOLD_READING] = float(error.headers.get("Retry-After", RETRY_AFTER_SECONDS))
    if status >= 500 and context is not None:
        texts = f" (texts: {context.texts!r})" if context.texts is not None else ""
        log.error("request %s failed: %s%s", context.request_id, error.message, texts)


# --- who is asking


def header(scope: Scope, wanted: bytes) -> bytes | None:
    """One request header's raw value (the first, if repeated), or None."""
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


class _Headers:
    """The request headers the handler needs, found in one pass over the ASGI list."""

    __slots__ = ("authorization", "content_length", "content_type", "forwarded_for", "request_id", "traceparent", "tracestate")

    def __init__(self, scope: Scope) -> None:
        self.content_type = "application/json"
        self.content_length: int | None = None
        self.request_id = ""
        self.authorization = ""
        self.forwarded_for: bytes | None = None
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value.decode("latin-1").split(";")[0].strip().lower()
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif name == b"x-request-id":
                self.request_id = plain_request_id(value)
            elif name == b"authorization":
                self.authorization = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                self.forwarded_for = value
            elif name == b"traceparent":
                self.traceparent = value
            elif name == b"tracestate":
                self.tracestate = value


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
