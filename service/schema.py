"""The edge of the API: request parsing and validation, the error tree, and response encoding.

Every error the service returns is an ApiError subclass; its class fixes the HTTP status and
the code, and every error body has one shape: {"error": {"code": "...", "message": "..."}}.
The domain raises its own errors (service/errors.py); `api_error` is the one table that turns
them into ApiErrors.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from service import errors
from service.detect import Detection
from service.languages import AUTO


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})


class BadRequest(ApiError):
    """Not HTTP the server can parse (answered by service/http_protocol.py, before the app)."""

    status, code = 400, "bad_request"


class MalformedJson(ApiError):
    status, code = 400, "malformed_json"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class CorsRefused(ApiError):
    """A browser's CORS preflight from an origin, or for a method or header, that MT_CORS_ORIGINS does not allow."""

    status, code = 403, "cors_refused"


class RequestTimeout(ApiError):
    """The request head or body did not arrive in time (answered by service/http_protocol.py)."""

    status, code = 408, "request_timeout"


class HeadersTooLarge(ApiError):
    """The request head is over the server's limit (answered by service/http_protocol.py)."""

    status, code = 431, "headers_too_large"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class UnsupportedLanguage(ValidationFailed):
    code = "unsupported_language"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Overloaded(ApiError):
    status, code = 429, "overloaded"


class RateLimited(ApiError):
    """This client is over its own share (rate, sentences or bodies in flight), or its address failed
    authentication too often; others are served."""

    status, code = 429, "rate_limited"


class TranslationFailed(ApiError):
    status, code = 500, "translation_failed"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class QueueExpired(ApiError):
    status, code = 503, "queue_timeout"


class TooManyConnections(ApiError):
    """A new connection beyond the connection cap asked for more than a probe (answered by service/http_protocol.py)."""

    status, code = 503, "too_many_connections"


# The domain's errors as the API answers them.
DOMAIN_ERRORS: dict[type[errors.ServiceError], type[ApiError]] = {
    errors.AtCapacity: Overloaded,
    errors.OverClientShare: RateLimited,
    errors.QueueWaitExpired: QueueExpired,
    errors.NotServing: NotReady,
    errors.EngineFailure: TranslationFailed,
    errors.UnsupportedSource: UnsupportedLanguage,
    errors.Unauthenticated: Unauthorized,
    errors.TooManyAuthFailures: RateLimited,
}
# Headers an answer of that class always carries.
_ERROR_HEADERS: dict[type[ApiError], dict[str, str]] = {Unauthorized: {"WWW-Authenticate": 'Bearer realm="translation"'}}


def api_error(error: errors.ServiceError) -> ApiError:
    """The ApiError (status, code, message, Retry-After) that answers a domain error."""
    kind = DOMAIN_ERRORS.get(type(error), ApiError)
    headers = dict(_ERROR_HEADERS.get(kind, {}))
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    message = error.message
    if isinstance(error, errors.UnsupportedSource):
        named = f"{error.name} ({error.language})" if error.name != error.language else f'"{error.language}"'
        message = (
            f"payload.records[{error.index}].text looks like {named}, confidence {error.confidence}, which the model "
            "cannot translate; send fromLang explicitly if the detection is wrong"
        )
    return kind(message, headers=headers)


# The status table, for the OpenAPI document and the docs: status -> (code, when).
ERRORS: tuple[type[ApiError], ...] = (
    BadRequest, MalformedJson, Unauthorized, CorsRefused, NotFound, MethodNotAllowed, RequestTimeout, PayloadTooLarge,
    HeadersTooLarge, UnsupportedMediaType, ValidationFailed, UnsupportedLanguage, Overloaded, RateLimited, TranslationFailed,
    NotReady, QueueExpired, TooManyConnections,
    ApiError,
)


# Integer ids orjson keeps exactly: signed 64-bit up to unsigned 64-bit.
ID_MINIMUM, ID_MAXIMUM = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class Record:
    id: str | int
    text: str


@dataclass(frozen=True)
class TranslationRequest:
    from_lang: str
    to_lang: str
    records: tuple[Record, ...]
    format: str = "text"  # "html": records are HTML documents; the markup is kept
    alternatives: int = 0  # up to this many other translations per record


FORMATS = ("text", "html")
# Each alternative widens the beam by one hypothesis for every sentence: a bound keeps the cost known.
MAX_ALTERNATIVES = 5


@dataclass(frozen=True)
class Limits:
    max_records: int
    max_text_chars: int


def parse_translation_request(body: bytes, languages: Collection[str], limits: Limits) -> TranslationRequest:
    """Parses and validates a request body; raises the ApiError that says what is wrong and where."""
    try:
        return _translation_request(_json_object(body), languages, limits)
    except _InexactNumber:
        # An id orjson read as a double may have lost digits (9007199254740993.0 reads as ...992, and
        # 1.0000000000000000001 as 1.0): read the body again with every number exact. Only requests with an id
        # written with a decimal point or an exponent take this path, so it costs the usual request nothing.
        return _translation_request(_exact_json_object(body), languages, limits)


class _InexactNumber(Exception):
    """A number was read as a double that may not hold it exactly."""


def _translation_request(document: dict, languages: Collection[str], limits: Limits) -> TranslationRequest:
    payload = document.get("payload")
    if payload is None:
        raise ValidationFailed("missing field: payload")
    if not isinstance(payload, dict):
        raise ValidationFailed(f"payload must be an object, got {_type_name(payload)}")
    from_lang = _language(payload, "fromLang", languages, allow_auto=True)
    to_lang = _language(payload, "toLang", languages)
    records = _bounded_array(payload.get("records"), "payload.records", "records", limits.max_records)
    text_format = payload.get("format", "text")
    if text_format not in FORMATS:
        raise ValidationFailed(f"payload.format must be one of {', '.join(FORMATS)}, got {_shown(text_format)}")
    alternatives = _alternatives(payload.get("alternatives", 0), "payload.alternatives")
    parsed = tuple(_record(i, r, limits) for i, r in enumerate(records))
    return TranslationRequest(from_lang, to_lang, parsed, text_format, alternatives)


def _alternatives(value: Any, where: str) -> int:
    # JSON Schema's integer includes 2.0: such a number is the integer it equals.
    if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal) or not float(value).is_integer():
        raise ValidationFailed(f"{where} must be an integer from 0 to {MAX_ALTERNATIVES}, got {_shown(value)}")
    if not 0 <= value <= MAX_ALTERNATIVES:
        raise ValidationFailed(f"{where} must be an integer from 0 to {MAX_ALTERNATIVES}, got {value}")
    return int(value)


def _shown(value: Any) -> str:
    """A value for an error message: a short string as itself, anything else by its type."""
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return _type_name(value)


def _json_object(body: bytes) -> dict:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not str(error).startswith(_OUT_OF_RANGE):
            raise MalformedJson(f"request body is not valid JSON: {error}") from None
        # A number no double holds (1e400), in some field: valid JSON all the same; read it exactly.
        return _exact_json_object(body)
    if not isinstance(document, dict):
        raise ValidationFailed(f"request body must be a JSON object, got {_type_name(document)}")
    return document


# orjson's message for a number too large for a double (valid JSON, which it declines to read).
_OUT_OF_RANGE = "number is infinity when parsed as double"
# The exact reading nests one Python call per level; orjson's own limit is 1,024 levels.
MAX_EXACT_DEPTH_MESSAGE = (
    "request body nests too deeply to read its numbers exactly; send ids as strings or integers without a decimal "
    "point, and numbers no larger than a double holds"
)


def _exact_json_object(body: bytes) -> dict:
    """The body read with every number exact (decimal.Decimal), for the rare bodies orjson can't read exactly.
    Held to orjson's rules otherwise: no NaN or Infinity literals, no lone surrogates in strings."""
    try:
        document = json.loads(body, parse_float=decimal.Decimal, parse_int=decimal.Decimal, parse_constant=_no_constant)
        _refuse_lone_surrogates(document)
    except RecursionError:
        raise ValidationFailed(MAX_EXACT_DEPTH_MESSAGE) from None
    except ValueError as error:
        raise MalformedJson(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValidationFailed(f"request body must be a JSON object, got {_type_name(document)}")
    return document


def _refuse_lone_surrogates(document: Any) -> None:
    """ValueError for a string (or key) holding a lone surrogate, which orjson refuses and no engine can encode.
    Iterative: the document may nest as deep as the parser allowed."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("str is not valid UTF-8: surrogates not allowed") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _bounded_array(value: Any, where: str, items: str, limit: int, kind: str = "an array") -> list:
    """`value` as a list of at most `limit` items; `where` names the field in messages."""
    if value is None:
        raise ValidationFailed(f"missing field: {where}" + (f" ({kind})" if kind != "an array" else ""))
    if not isinstance(value, list):
        raise ValidationFailed(f"{where} must be {kind}, got {_type_name(value)}")
    if len(value) > limit:
        raise PayloadTooLarge(f"{where} has {len(value)} {items}; the limit is {limit} per request")
    return value


def _language(payload: dict, name: str, languages: Collection[str], *, allow_auto: bool = False) -> str:
    value = payload.get(name)
    if value is None:
        raise ValidationFailed(f"missing field: payload.{name} (a language code; GET /languages lists them)")
    if not isinstance(value, str):
        raise ValidationFailed(f"payload.{name} must be a string language code, got {_type_name(value)}")
    if value == AUTO:
        if allow_auto:
            return value
        raise UnsupportedLanguage(f"payload.{name} cannot be {AUTO!r}: name the language to translate into")
    if value not in languages:
        raise UnsupportedLanguage(f"payload.{name} {value!r} is not a supported language; GET /languages lists them")
    return value


def parse_detect_request(body: bytes, limits: Limits) -> list[str]:
    """Parses and validates a POST /detect body, {"texts": [...]}, under the same limits as records."""
    texts = _bounded_array(_json_object(body).get("texts"), "texts", "items", limits.max_records, "an array of strings")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationFailed(f"texts[{index}] must be a string, got {_type_name(text)}")
        if len(text) > limits.max_text_chars:
            raise PayloadTooLarge(f"texts[{index}] has {len(text)} characters; the limit is {limits.max_text_chars}")
    return texts


def _record(index: int, record: Any, limits: Limits) -> Record:
    where = f"payload.records[{index}]"
    if not isinstance(record, dict):
        raise ValidationFailed(f"{where} must be an object with id and text, got {_type_name(record)}")
    if "id" not in record:
        raise ValidationFailed(f"missing field: {where}.id")
    record_id = _id(record["id"], where)
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        raise ValidationFailed(f"{where}.id must be a string or an integer, got {_type_name(record_id)}")
    if "text" not in record:
        raise ValidationFailed(f"missing field: {where}.text")
    text = record["text"]
    if not isinstance(text, str):
        raise ValidationFailed(f"{where}.text must be a string, got {_type_name(text)}")
    if len(text) > limits.max_text_chars:
        raise PayloadTooLarge(f"{where}.text has {len(text)} characters; the limit is {limits.max_text_chars}")
    return Record(record_id, text)


def _id(value: Any, where: str) -> Any:
    """JSON Schema's integer includes 2.0: such an id is the integer it equals, echoed as an integer. A fraction
    is no integer, and an integer must fit 64 bits (signed or unsigned) to be echoed exactly."""
    if isinstance(value, float):
        raise _InexactNumber  # the double may have rounded what was written: read the exact digits
    written = str(value)
    if isinstance(value, decimal.Decimal):  # the exact reading (parse_translation_request)
        # Bounded before converting: an exponent like 1e300 must not become a 300-digit integer.
        if not value.is_finite() or value != value.to_integral_value() or abs(value) > ID_MAXIMUM:
            raise _bad_id(where, written)
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not ID_MINIMUM <= value <= ID_MAXIMUM:
        raise _bad_id(where, written)
    return value


def _bad_id(where: str, written: str) -> ValidationFailed:
    return ValidationFailed(f"{where}.id must be a string or an integer within 64 bits, got {written}; send larger ids as strings")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float | decimal.Decimal) else type(value).__name__
    )


def encode_result(
    ids: list[str | int],
    texts: list[str],
    detections: list[Detection] | None = None,
    alternatives: list[list[str]] | None = None,
) -> bytes:
    """The response body; in auto mode (`detections` given) each item also says what was detected, and with
    alternatives asked, each item lists them."""
    if detections is None and alternatives is None:  # byte for byte the fixed contract
        return orjson.dumps({"result": [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]})
    items: list[dict[str, Any]] = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
    if detections is not None:
        for item, d in zip(items, detections, strict=True):
            item["detectedLanguage"] = {"language": d.language, "confidence": d.confidence}
    if alternatives is not None:
        for item, others in zip(items, alternatives, strict=True):
            item["alternatives"] = others
    return orjson.dumps({"result": items})


def encode_detections(detections: list[Detection]) -> bytes:
    return orjson.dumps({"result": [{"language": d.language, "confidence": d.confidence} for d in detections]})
