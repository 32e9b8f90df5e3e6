"""The OpenAPI document: every endpoint, the request and response shapes, and every error.

It says what the service does: the language enum is the model's, the limits are the settings', ids are
strings or integers in orjson's range, and unknown fields are ignored (so that additive extensions never
break an older server). docs/openapi.json is this document for the default settings and M2M100's 100
languages (`python -m service.openapi --model-dir DIR > docs/openapi.json`); a test keeps them equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import cache

from service import __version__
from service.info import INFO_SCHEMA
from service.languages import AUTO
from service.schema import ERRORS, FORMATS, ID_MAXIMUM, ID_MINIMUM, MAX_ALTERNATIVES
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


# Open whatever the API keys say (service/app.py's OPEN_PATHS).
_OPEN: list[dict] = []


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def _document(max_records: int, max_text_chars: int, max_body_bytes: int, languages: tuple[str, ...]) -> dict:
    record_id = {
        "oneOf": [{"type": "string"}, {"type": "integer", "minimum": ID_MINIMUM, "maximum": ID_MAXIMUM}],
        "description": (
            "echoed exactly; a number written 2.0 or 2e3 is the integer it equals; fractions, and integers beyond 64 bits "
            "however written, are refused with 422 (send them as strings)"
        ),
    }
    record = {
        "type": "object",
        "required": ["id", "text"],
        "description": "unknown fields are ignored",
        "properties": {"id": record_id, "text": {"type": "string", "maxLength": max_text_chars}},
    }
    # A translation may be longer than its source: no maxLength here.
    alternatives = {
        "type": "array",
        "items": {"type": "string"},
        "maxItems": MAX_ALTERNATIVES,
        "description": "only when the request asked for alternatives: other translations, distinct from text and each other",
    }
    translated_properties = {"id": record_id, "text": {"type": "string"}, "alternatives": alternatives}
    translated = {"type": "object", "required": ["id", "text"], "properties": translated_properties}
    language = {"type": "string", "enum": list(languages)}
    detected = {
        "type": "object",
        "required": ["language", "confidence"],
        "properties": {
            "language": {"type": "string", "description": "a language code; in /detect, also one the model lacks"},
            "confidence": {
                "type": "number", "minimum": 0, "maximum": 1,
                "description": "0 when the text had no letters or no confident guess: then the language is the fallback (MT_AUTO_FALLBACK_LANG)",
            },
        },
    }  # fmt: skip
    translated_auto = {
        **translated,
        "required": ["id", "text", "detectedLanguage"],
        "properties": {**translated_properties, "detectedLanguage": detected},
        "description": 'with fromLang "auto" only: what was detected for this record',
    }
    request = {
        "type": "object",
        "required": ["payload"],
        "properties": {
            "payload": {
                "type": "object",
                "required": ["fromLang", "toLang", "records"],
                "description": "unknown fields are ignored",
                "properties": {
                    "fromLang": {
                        "type": "string",
                        "enum": [AUTO, *languages],
                        "description": f'source language code (GET /languages), or "{AUTO}": each record\'s language is detected',
                    },
                    "toLang": {**language, "description": "target language code (GET /languages)"},
                    "records": {"type": "array", "maxItems": max_records, "items": record},
                    "format": {
                        "type": "string",
                        "enum": list(FORMATS),
                        "default": "text",
                        "description": "html: each text is an HTML document; its markup is kept byte for byte and only its "
                        "text (and alt, title, placeholder, aria-label) is translated",
                    },
                    "alternatives": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_ALTERNATIVES,
                        "default": 0,
                        "description": "up to this many other translations per record (with format html: an empty list each)",
                    },
                },
            }
        },
        "description": "unknown fields are ignored",
    }
    result = {
        "type": "object",
        "required": ["result"],
        "properties": {
            "result": {
                "type": "array",
                # Explicit mode answers exactly the first contract's items; auto mode adds detectedLanguage.
                "items": {"anyOf": [translated, translated_auto]},
                "description": "one per record, in order",
            }
        },
    }
    detect_request = {
        "type": "object",
        "required": ["texts"],
        "description": "unknown fields are ignored",
        "properties": {"texts": {"type": "array", "maxItems": max_records, "items": {"type": "string", "maxLength": max_text_chars}}},
    }
    detect_result = {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "array", "items": detected, "description": "one per text, in order"}},
    }
    language_details = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["code", "name", "source", "target", "detectable"],
            "properties": {
                "code": language,
                "name": {"type": "string", "description": "English name"},
                "source": {"type": "boolean", "description": "usable as fromLang"},
                "target": {"type": "boolean", "description": "usable as toLang"},
                "detectable": {"type": "boolean", "description": f'fromLang "{AUTO}" and /detect can name it'},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "M2M100 translation service", "version": __version__},
        "paths": {
            "/translation": {
                "post": {
                    "summary": "Translate records",
                    "description": f"Request bodies over {max_body_bytes} bytes get 413.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                    "responses": {
                        "200": {**_json(result, "translations, one per record"), "headers": _TIMING_HEADERS},
                        **_errors(400, 401, 408, 413, 415, 422, 429, 431, 500, 503),
                    },
                }
            },
            "/detect": {
                "post": {
                    "summary": "Detect the language of texts",
                    "description": f"Same limits and errors as /translation; bodies over {max_body_bytes} bytes get 413.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": detect_request}}},
                    "responses": {
                        "200": _json(detect_result, "one detection per text"),
                        **_errors(400, 401, 408, 413, 415, 422, 429, 431, 500, 503),
                    },
                }
            },
            "/languages": {
                "get": {
                    "summary": "Supported languages: codes, and names with their uses",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["languages", "details"],
                                "properties": {
                                    "languages": {"type": "array", "items": language},
                                    "details": language_details,
                                },
                            },
                            "languages: the codes fromLang and toLang accept; details: the same, named",
                        )
                    },
                }
            },
            "/info": {
                "get": {
                    "summary": "This replica: version, model, device, compute type, limits and batching settings",
                    "responses": {"200": _json(INFO_SCHEMA, "the effective settings, no secrets"), **_errors(401, 429)},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process and its batcher loop are alive",
                    "security": _OPEN,
                    "responses": {"200": {"description": "alive"}, "503": {"description": "dead: restart me"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: model loaded and a warm-up translation done",
                    "security": _OPEN,
                    "responses": {"200": {"description": "ready"}, "503": {"description": "starting or draining"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (with API keys on, open unless MT_METRICS_REQUIRE_KEY)",
                    "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "security": _OPEN, "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/docs": {
                "get": {
                    "summary": "This document in Swagger UI (its assets, under /docs/, are served by the service)",
                    "security": _OPEN,
                    "responses": {"200": {"description": "an HTML page", "content": {"text/html": {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "The web page: text in, translation out (its assets are under /static/)",
                    "security": _OPEN,
                    "responses": {"200": {"description": "an HTML page", "content": {"text/html": {}}}},
                }
            },
        },
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "when MT_API_KEYS_FILE is set"}},
        },
        # Keys are optional (off by default): either a key or none. The paths marked open never need one.
        "security": [{"apiKey": []}, {}],
    }


def openapi_document(settings: Settings, languages: Sequence[str]) -> dict:
    return _document(settings.max_records, settings.max_text_chars, settings.max_body_bytes, tuple(languages))


def main(argv: list[str] | None = None) -> int:
    """Prints the document for the default settings and a model directory's languages."""
    from service.model_dir import read_manifest

    parser = argparse.ArgumentParser(prog="python -m service.openapi", description=main.__doc__)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args(argv)
    settings = Settings.load(["--model-dir", args.model_dir], {})
    json.dump(openapi_document(settings, read_manifest(settings.model_dir).languages), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
