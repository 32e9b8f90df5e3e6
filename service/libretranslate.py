"""LibreTranslate's API under /libretranslate, so its clients work unchanged with the base URL
`http://HOST:9527/libretranslate/` (docs/libretranslate.md).

Shapes, parameters, messages and statuses follow LibreTranslate 1.9's `libretranslate/app.py`:
- `POST /translate` reads `q` (a string, or a list of strings in JSON), `source` (a code or "auto"),
  `target`, `format` ("text" | "html"), `alternatives`, `api_key`; it answers `{"translatedText": ...}`, with
  `detectedLanguage` when source is "auto" and `alternatives` when asked for (lists for a list `q`).
- `POST /detect` reads `q` and answers a list of `{"confidence": 0-100, "language": code}`.
- `GET /languages` answers `[{"code", "name", "targets"}]`; it is open, as LibreTranslate's is.
- Bodies are JSON, or form fields (url-encoded or multipart) merged after the query string's, as Flask's
  `request.values`: a form carries one `q` (its first), and its line endings become LF.
- Errors are `{"error": "message"}`: 400 for what the request got wrong (the service's 413, 415 and 422), 403 for
  a missing or invalid API key (401), 429 ("Slowdown: ...", with Retry-After), 500, and the service's 503.

The work is the native API's: one admission permit (service/admission.py) taken like `endpoints._serve` takes it,
then the same pipeline, batcher, cache and limits. LibreTranslate clients send their key as `api_key` in the body:
then the request is admitted on its head for its address only (`enter_before_key`) and its key is checked once
the body is in, before anything is validated (as LibreTranslate's `access_check` runs first). A request with an
`Authorization: Bearer KEY` header is checked on its head, as on /translation.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from service import errors, languages
from service.admission import Permit
from service.detect import Detection
from service.endpoints import (
    ClientGone,
    RequestContext,
    _Headers,
    _read_body,
    _unless_client_leaves,
    begin_trace,
    end_trace,
    header,
    header_list,
    new_request_id,
    note_refusal,
    request_log,
    send_json,
)
from service.errors import ServiceError
from service.offload import run_sized
from service.runtime import Runtime
from service.schema import (
    MAX_ALTERNATIVES,
    ApiError,
    Limits,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    UnsupportedLanguage,
    UnsupportedMediaType,
    ValidationFailed,
    api_error,
)

log = logging.getLogger("service")

PREFIX = "/libretranslate"

# The service's statuses as LibreTranslate answers them; any other is kept (404, 405, 429, 500, 503).
_STATUS = {401: 403, 413: 400, 415: 400, 422: 400}
# Codes LibreTranslate's clients may send for one of the model's languages (its aliases, lower-cased as it does).
_ALIASES = {"zh-hans": "zh"}
# What LibreTranslate answers where the feature is off, which it is here (docs/libretranslate.md).
_DISABLED = {
    "/translate_file": "Files translation are disabled on this server.",
    "/suggest": "Suggestions are disabled on this server.",
}
_FORM_TYPES = ("application/x-www-form-urlencoded", "")
_MULTIPART = "multipart/form-data"


class Handler(Protocol):
    """The signature of endpoints.POST_HANDLERS' handlers."""

    def __call__(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]: ...


def route(path: str) -> Handler | None:
    """The handler of every request (any method) to a path under /libretranslate; None for other paths. These
    paths answer in LibreTranslate's shapes, keys checked here, so the app dispatches them ahead of its own
    routes and key check."""
    if path.startswith(PREFIX) and (len(path) == len(PREFIX) or path[len(PREFIX)] == "/"):
        return serve
    return None


async def serve(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    path, method = scope["path"][len(PREFIX) :], scope["method"]
    while "//" in path:  # a base URL with a trailing slash, joined with "/translate" (Flask merges them too)
        path = path.replace("//", "/")
    if path == "/translate" and method == "POST":
        await _serve(runtime, scope, receive, send, _translate, runtime.metrics.count_request)
    elif path == "/detect" and method == "POST":
        await _serve(runtime, scope, receive, send, _detect, runtime.metrics.count_detect_request)
    elif path in _GET and method in ("GET", "HEAD"):
        status, body = _GET[path](runtime)
        await _answer(runtime, scope, send, status, body)
    elif path in _DISABLED and method == "POST":
        await _answer(runtime, scope, send, 403, _error_body(_DISABLED[path]))
    elif path in _GET or path in _DISABLED or path in ("/translate", "/detect"):
        allowed = "GET, HEAD" if path in _GET else "POST"
        error = MethodNotAllowed(f"{method} is not allowed on {scope['path']}; allowed: {allowed}", headers={"Allow": allowed})
        await _answer(runtime, scope, send, error.status, _error_body(error.message), header_list(error))
    else:
        message = f"no route {scope['path']}; this LibreTranslate API serves {PREFIX}/translate, /detect and /languages"
        await _answer(runtime, scope, send, NotFound.status, _error_body(message))


# --- the two POST routes: admission, body, answer, metrics and the request log, as endpoints._serve


@dataclass(frozen=True, slots=True)
class _Fields:
    """A request's parameters: a JSON object's members, or form fields (strings, the first of each name)."""

    values: dict[str, Any]
    json: bool


# The work of one route once admitted, its body parsed and its key checked: -> the answer's body.
_Work = Callable[[Runtime, Permit, _Fields, Receive, RequestContext], Awaitable[bytes]]


async def _serve(
    runtime: Runtime, scope: Scope, receive: Receive, send: Send, work: _Work, count: Callable[[int, str], None]
) -> None:
    headers = _Headers(scope)
    context = RequestContext(headers.request_id or new_request_id(), time.perf_counter())
    admission = runtime.admission
    caller = admission.caller(scope.get("client"), headers.forwarded_for)
    context.address = caller.address
    key_in_body = admission.keys is not None and not headers.authorization
    key_presented = bool(headers.authorization)
    status, reason = 200, "ok"
    trace = begin_trace(runtime, scope, headers.traceparent, headers.tracestate, context)
    try:
        try:
            permit = admission.enter_before_key(caller) if key_in_body else admission.enter(caller, headers.authorization)
            with permit:
                context.client = permit.client
                kind = _body_kind(headers.content_type)  # refused before the body is read
                body = await _read_body(receive, headers.content_length, runtime.settings.max_body_bytes)
                permit.body_received()
                context.size = len(body)
                content_type = header(scope, b"content-type") or b""
                fields = await run_sized(context.size, _parse_fields, kind, content_type, body, scope["query_string"])
                if key_in_body:
                    key = fields.values.get("api_key")
                    key_presented = key not in (None, "")
                    permit.authenticate("Bearer " + key if isinstance(key, str) else "Bearer ")
                    context.client = permit.client
                answer = await work(runtime, permit, fields, receive, context)
        except errors.Unauthenticated:
            raise _key_refusal(key_presented) from None
        except ServiceError as error:
            raise api_error(error) from None
        await send_json(send, 200, answer, context.request_id, context.started, context.timing, close=runtime.draining)
    except ApiError as error:
        status, reason = _STATUS.get(error.status, error.status), error.code
        note_refusal(scope, caller, context, error, status)
        message = "Slowdown: " + error.message if status == 429 else error.message
        extra = [item for item in header_list(error) if item[0] != b"www-authenticate"]
        await send_json(send, status, _error_body(message), context.request_id, context.started, extra, close=runtime.draining)
    except ClientGone:
        status, reason = 499, "client_gone"
        context.client_gone = True
    except Exception:
        status, reason = 500, "internal_error"
        log.exception("unexpected error on %s (request %s)", scope["path"], context.request_id)
        await send_json(send, 500, _error_body("internal error; see the server log"), context.request_id, context.started, [])
    count(status, reason)
    end_trace(runtime, trace, status, context)
    if work is _translate:
        runtime.metrics.request_duration.observe(time.perf_counter() - context.started)
    if request_log.isEnabledFor(logging.INFO):
        logged = context.log_fields(status)
        logged["path"] = scope["path"]
        request_log.info("request", extra={"fields": logged})


class _Forbidden(ApiError):
    """A missing or invalid API key, in LibreTranslate's words and status."""

    status, code = 403, "unauthorized"


def _key_refusal(presented: bool) -> _Forbidden:
    if presented:
        return _Forbidden("Invalid API key")
    return _Forbidden("Invalid request: missing api_key parameter; this server requires an API key")


# --- the body


def _body_kind(content_type: str) -> str:
    if content_type == "application/json" or (content_type.startswith("application/") and content_type.endswith("+json")):
        return "json"
    if content_type in _FORM_TYPES:
        return "form"
    if content_type == _MULTIPART:
        return "multipart"
    raise UnsupportedMediaType(
        f"Invalid request: content type {content_type} is not supported; "
        "send application/json, application/x-www-form-urlencoded or multipart/form-data"
    )


def _parse_fields(kind: str, content_type: bytes, body: bytes, query: bytes) -> _Fields:
    """The request's parameters. CPU work that grows with the body: large bodies run it in a thread."""
    if kind == "json":
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise MalformedJson(f"Invalid request: the body is not valid JSON ({error})") from None
        if not isinstance(document, dict):
            raise ValidationFailed("Invalid JSON format")  # LibreTranslate's words for a body that is no object
        return _Fields(document, json=True)
    values: dict[str, Any] = {}
    for name, value in _form_pairs(query):  # Flask's request.values: the query string's fields first
        values.setdefault(name, value)
    for name, value in _multipart_pairs(content_type, body) if kind == "multipart" else _form_pairs(body):
        values.setdefault(name, value)
    return _Fields(values, json=False)


def _form_pairs(data: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(data.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed("Invalid request: the form fields are not valid UTF-8") from None


def _multipart_pairs(content_type: bytes, body: bytes) -> list[tuple[str, str]]:
    """The text fields of a multipart/form-data body (what a browser's FormData sends; LibreTranslate's own web
    page does). Files are refused: there is no /translate_file here."""
    message = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    assert isinstance(message, EmailMessage)
    if not message.is_multipart() or message.defects:
        raise ValidationFailed("Invalid request: the multipart/form-data body cannot be read")
    pairs = []
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValidationFailed("Invalid request: a multipart/form-data part has no field name")
        if part.get_filename() is not None:
            raise ValidationFailed(f"Invalid request: files are not supported (field {name})")
        payload = part.get_payload(decode=True)
        try:
            value = payload.decode(part.get_content_charset() or "utf-8") if isinstance(payload, bytes) else ""
        except (LookupError, UnicodeDecodeError):
            raise ValidationFailed(f"Invalid request: field {name} is not valid text") from None
        pairs.append((name, value))
    return pairs


# --- POST /translate


@dataclass(frozen=True, slots=True)
class _TranslateRequest:
    texts: list[str]
    batch: bool  # q was a list: every field of the answer is a list
    source: str
    target: str
    html: bool
    alternatives: int


async def _translate(runtime: Runtime, permit: Permit, fields: _Fields, receive: Receive, context: RequestContext) -> bytes:
    settings = runtime.settings
    limits = Limits(settings.max_records, settings.max_text_chars)
    request = await run_sized(context.size, _translate_request, fields, runtime.languages, limits)
    context.records, context.from_lang, context.to_lang = len(request.texts), request.source, request.target
    if settings.log_text:
        context.texts = request.texts  # for the error log only (MT_LOG_TEXT)
    # LibreTranslate gives no alternatives for HTML ("not supported for html yet"): an empty list each, as it does.
    alternatives = 0 if request.html else request.alternatives
    work = permit.serving.pipeline.translate(
        request.source, request.target, request.texts, permit, size=context.size, alternatives=alternatives, html=request.html
    )
    try:
        result = await _unless_client_leaves(work, receive)
    except errors.UnsupportedSource as error:
        where = _where(request.batch, error.index)
        named = f"{error.name} ({error.language})" if error.name != error.language else error.language
        raise UnsupportedLanguage(
            f"{where} looks like {named}, confidence {_percent(error.confidence)}, which is not supported; "
            "send source explicitly if the detection is wrong"
        ) from None
    context.sentences, context.cache_hits = result.sentences, result.cache_hits
    context.input_tokens, context.output_tokens = result.input_tokens, result.output_tokens
    context.timing.append((b"x-queue-time", f"{result.queue_seconds * 1000:.3f}".encode()))
    context.timing.append((b"x-inference-time", f"{result.inference_seconds * 1000:.3f}".encode()))
    others = result.alternatives if result.alternatives is not None else [[] for _ in result.texts]
    return await run_sized(context.size, _encode_translation, request, result.texts, result.detections, others)


def _translate_request(fields: _Fields, codes: frozenset[str], limits: Limits) -> _TranslateRequest:
    """Checked in LibreTranslate's order, with its messages where it has one."""
    values = fields.values
    q = values.get("q")
    if not q:
        raise ValidationFailed(_missing("q"))
    source = _code(values, "source")
    target = _code(values, "target")
    alternatives = _alternatives(values.get("alternatives", 0))
    texts = _texts(q, limits, form=not fields.json)
    if source != languages.AUTO and source not in codes:
        raise UnsupportedLanguage(f"{_shown(source)} is not supported")
    if target not in codes:
        raise UnsupportedLanguage(f"{_shown(target)} is not supported")
    text_format = values.get("format") or "text"
    if text_format not in ("text", "html"):
        raise ValidationFailed(f"{_shown(text_format)} format is not supported")
    return _TranslateRequest(texts, isinstance(q, list), source, target, text_format == "html", alternatives)


def _missing(name: str) -> str:
    return f"Invalid request: missing {name} parameter"


def _code(values: dict[str, Any], name: str) -> str:
    value = values.get(name)
    if not value:
        raise ValidationFailed(_missing(name))
    if not isinstance(value, str):
        raise ValidationFailed(f"Invalid request: {name} must be a language code (a string)")
    code = value.lower()  # LibreTranslate compares codes in lower case
    return _ALIASES.get(code, code)


def _alternatives(value: Any) -> int:
    """LibreTranslate's reading: an integer or its digits; below 0 counts as 0; at most the service's bound."""
    number: int | None = None
    if value is None:
        number = 0
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and len(value) <= 20:
        try:
            number = int(value)
        except ValueError:
            pass
    if number is None:
        raise ValidationFailed("Invalid request: alternatives parameter is not a number")
    if number > MAX_ALTERNATIVES:
        raise ValidationFailed(f"Invalid request: alternatives parameter must be <= {MAX_ALTERNATIVES}")
    return max(0, number)


def _texts(q: Any, limits: Limits, *, form: bool = False) -> list[str]:
    """`q` as a list of texts, within the limits of /translation (records per request, characters per text). In a
    form, line endings become LF first (LibreTranslate's rule, so that limits count alike)."""
    batch = isinstance(q, list)
    if isinstance(q, str):
        texts = [q]
    elif isinstance(q, list):
        if len(q) > limits.max_records:
            raise ValidationFailed(f"Invalid request: q has {len(q)} texts; the limit is {limits.max_records}")
        for index, text in enumerate(q):
            if not isinstance(text, str):
                raise ValidationFailed(f"Invalid request: {_where(batch, index)} must be a string, got {_type_name(text)}")
        texts = q
    else:
        raise ValidationFailed(f"Invalid request: q must be a string or a list of strings, got {_type_name(q)}")
    if form:
        texts = ["\n".join(text.splitlines()) for text in texts]
    for index, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise ValidationFailed(
                f"Invalid request: {_where(batch, index)} has {len(text)} characters; the limit is {limits.max_text_chars}"
            )
    return texts


def _where(batch: bool, index: int) -> str:
    return f"q[{index}]" if batch else "q"


def _encode_translation(
    request: _TranslateRequest, texts: list[str], detections: list[Detection] | None, alternatives: list[list[str]]
) -> bytes:
    answer: dict[str, Any] = {"translatedText": texts if request.batch else texts[0]}
    if detections is not None:
        detected = [_detection(d) for d in detections]
        answer["detectedLanguage"] = detected if request.batch else detected[0]
    if request.alternatives > 0:
        # As LibreTranslate's filter_unique: no repeats, neither the main text nor an empty one.
        others = [list(dict.fromkeys(o for o in own if o and o != main)) for main, own in zip(texts, alternatives)]
        answer["alternatives"] = others if request.batch else others[0]
    return orjson.dumps(answer)


# --- POST /detect


async def _detect(runtime: Runtime, permit: Permit, fields: _Fields, receive: Receive, context: RequestContext) -> bytes:
    settings = runtime.settings
    q = fields.values.get("q")
    if not q:
        raise ValidationFailed(_missing("q"))
    texts = _texts(q, Limits(settings.max_records, settings.max_text_chars))
    context.texts_count = len(texts)
    # Detection reads at most the first 1,000 characters of each text: the body's size bounds the work.
    detections = await run_sized(context.size, permit.serving.pipeline.detect, texts)
    if isinstance(q, str):
        return orjson.dumps([_detection(detections[0])])
    return orjson.dumps(_merged(detections, [len(text) for text in texts]))


def _merged(detections: list[Detection], lengths: list[int]) -> list[dict[str, Any]]:
    """LibreTranslate's answer for a list: one candidate per language, its confidence averaged over the texts
    detected as it, sorted by that confidence weighted by the share of the characters those texts hold."""
    by_language: dict[str, list[tuple[float, int]]] = {}
    for detection, length in zip(detections, lengths):
        by_language.setdefault(detection.language, []).append((detection.confidence, length))
    total = sum(lengths)
    candidates = []
    for language, seen in by_language.items():
        confidence = sum(c for c, _ in seen) / len(seen)
        weight = confidence * sum(n for _, n in seen) / total if total else 0.0
        candidates.append((weight, {"confidence": _percent(confidence), "language": language}))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)  # stable: ties keep the texts' order
    return [candidate for _, candidate in candidates]


def _detection(detection: Detection) -> dict[str, Any]:
    return {"confidence": _percent(detection.confidence), "language": detection.language}


def _percent(confidence: float) -> float:
    """The detector's 0-1 confidence on LibreTranslate's 0-100 scale."""
    return round(confidence * 100, 2)


# --- the GET routes: open, as LibreTranslate's are (no key, no rate limit), and cheap


def _languages(runtime: Runtime) -> tuple[int, bytes]:
    return 200, _languages_body(runtime.manifest.languages)


@functools.lru_cache(maxsize=4)
def _languages_body(codes: tuple[str, ...]) -> bytes:
    # Every language of the model translates into every other one.
    return orjson.dumps([{"code": c, "name": languages.name(c), "targets": [t for t in codes if t != c]} for c in codes])


def _frontend_settings(runtime: Runtime) -> tuple[int, bytes]:
    """What LibreTranslate's web page (and clients that read it for limits) load first."""
    codes = runtime.manifest.languages
    target = "en" if "en" in codes else codes[0]
    keys = runtime.admission.keys is not None
    return 200, orjson.dumps({
        "charLimit": runtime.settings.max_text_chars,
        "frontendTimeout": 500,
        "apiKeys": keys,
        "keyRequired": keys,
        "suggestions": False,
        "filesTranslation": False,
        "supportedFilesFormat": [],
        "language": {
            "source": {"code": languages.AUTO, "name": "Auto Detect"},
            "target": {"code": target, "name": languages.name(target)},
        },
    })  # fmt: skip


def _health(runtime: Runtime) -> tuple[int, bytes]:
    if runtime.ready:
        return 200, b'{"status":"ok"}'
    return 503, _error_body(f"not ready: {runtime.status}")


_GET: dict[str, Callable[[Runtime], tuple[int, bytes]]] = {
    "/languages": _languages,
    "/frontend/settings": _frontend_settings,
    "/health": _health,
}


# --- answers


async def _answer(runtime: Runtime, scope: Scope, send: Send, status: int, body: bytes, extra: list | None = None) -> None:
    request_id = _Headers(scope).request_id or new_request_id()
    await send_json(send, status, body, request_id, time.perf_counter(), extra or [], close=runtime.draining)


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _shown(value: Any) -> str:
    """A value for an error message: a string as itself (its first 40 characters), anything else by its type."""
    if isinstance(value, str):
        return value[:40]
    return _type_name(value)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
