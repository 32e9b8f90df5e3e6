"""The OpenAPI document: every endpoint, the request and response shapes, and every error."""

from __future__ import annotations

from functools import cache

from service.schema import ERRORS
from service.settings import Settings

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_TIMING_HEADERS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in {
        "x-request-id": "request id (the caller's X-Request-Id if plain, else generated)",
        "x-queue-time": "milliseconds the request's sentences waited for the engine (the longest)",
        "x-inference-time": "milliseconds of the engine call(s) that served the request (the longest)",
        "x-total-time": "milliseconds spent in the service",
    }.items()
}


def _errors(*statuses: int) -> dict:
    out = {}
    for status in statuses:
        codes = sorted({e.code for e in ERRORS if e.status == status})
        out[str(status)] = {
            "description": "error codes: " + ", ".join(codes),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return out


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def _document(max_records: int, max_text_chars: int, max_body_bytes: int) -> dict:
    record = {
        "type": "object",
        "required": ["id", "text"],
        "properties": {
            "id": {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "echoed unchanged"},
            "text": {"type": "string", "maxLength": max_text_chars},
        },
    }
    request = {
        "type": "object",
        "required": ["payload"],
        "properties": {
            "payload": {
                "type": "object",
                "required": ["fromLang", "toLang", "records"],
                "properties": {
                    "fromLang": {"type": "string", "description": "source language code (GET /languages)"},
                    "toLang": {"type": "string", "description": "target language code (GET /languages)"},
                    "records": {"type": "array", "maxItems": max_records, "items": record},
                },
            }
        },
    }
    result = {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "array", "items": record, "description": "one per record, in order"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "M2M100 translation service", "version": "1.0.0"},
        "paths": {
            "/translation": {
                "post": {
                    "summary": "Translate records",
                    "description": f"Request bodies over {max_body_bytes} bytes get 413.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                    "responses": {
                        "200": {**_json(result, "translations, one per record"), "headers": _TIMING_HEADERS},
                        **_errors(400, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            "/languages": {
                "get": {
                    "summary": "Supported language codes",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"languages": {"type": "array", "items": {"type": "string"}}}},
                            "the codes fromLang and toLang accept",
                        )
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process and its batcher loop are alive",
                    "responses": {"200": {"description": "alive"}, "503": {"description": "dead: restart me"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: model loaded and a warm-up translation done",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "starting or draining"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {"schemas": {"Error": _ERROR}},
    }


def openapi_document(settings: Settings) -> dict:
    return _document(settings.max_records, settings.max_text_chars, settings.max_body_bytes)
