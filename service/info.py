"""GET /info: what this replica serves (version, model, device, limits, batching), as TGI's /info does.

One fixed shape, documented by INFO_SCHEMA (service/openapi.py puts it in the OpenAPI document): every value is the
effective one (device defaults filled in, the engine's own device and compute type), never a secret (no key, no
Redis URL: only whether they are set). The device and compute type are null until the model has loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service import __version__
from service.schema import MAX_ALTERNATIVES

if TYPE_CHECKING:
    from service.runtime import Runtime


def info_document(runtime: Runtime) -> dict[str, Any]:
    from service.engine import DEFAULT_MAX_DECODING_LENGTH

    settings, manifest, serving = runtime.settings, runtime.manifest, runtime.serving
    return {
        "version": __version__,
        "model": {
            "source": manifest.source,
            "revision": manifest.source_revision,
            "quantization": manifest.quantization,
            "architecture": manifest.architecture,
            "max_input_length": manifest.max_input_length,
        },
        "device": serving.engine.device if serving else None,
        "compute_type": serving.engine.compute_type if serving else None,
        "languages": len(manifest.languages),
        "api_keys": bool(settings.api_keys_file),
        "decoding": {
            "beam_size": settings.beam_size,
            # What Engine.load settles on: the setting, or 256 capped by the model's positions.
            "max_decoding_length": settings.max_decoding_length or min(DEFAULT_MAX_DECODING_LENGTH, manifest.max_decoding_length),
        },
        "limits": {
            "max_records": settings.max_records,
            "max_text_chars": settings.max_text_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_alternatives": MAX_ALTERNATIVES,
            "client_rate_per_second": settings.client_rate_per_second,
            "client_burst": settings.client_burst,
            "client_max_sentences": settings.client_max_sentences,
            "client_max_pending_bodies": settings.client_max_pending_bodies,
            "max_in_flight": settings.max_in_flight,
            "max_pending_bodies": settings.max_pending_bodies,
            "queue_timeout_seconds": settings.queue_timeout_seconds,
            "header_timeout_seconds": settings.header_timeout_seconds,
            "body_timeout_seconds": settings.body_timeout_seconds,
            "idle_timeout_seconds": settings.idle_timeout_seconds,
        },
        "batching": {
            "enabled": settings.batching,
            "scheduling": settings.scheduling,
            # With batching off the batcher is given batches of one (service/runtime.py).
            "max_batch_size": settings.max_batch_size if settings.batching else 1,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_queue": settings.max_queue,
            "request_window": settings.request_window,
            "workers": settings.inter_threads,
            "threads_per_worker": settings.intra_threads,
        },
        "cache": {
            "max_bytes": settings.cache_max_bytes if settings.cache_size else 0,
            "max_entry_chars": settings.cache_max_entry_chars,
            "shared": bool(settings.redis_url),
        },
        "detection": {
            "fallback_language": settings.auto_fallback_lang,
            "min_confidence": settings.auto_min_confidence,
        },
    }


def _object(description: str, properties: dict[str, dict]) -> dict:
    return {"type": "object", "description": description, "required": list(properties), "properties": properties}


def _integer(description: str, minimum: int = 0) -> dict:
    return {"type": "integer", "minimum": minimum, "description": description}


def _number(description: str) -> dict:
    return {"type": "number", "minimum": 0, "description": description}


# The shape of info_document, for the OpenAPI document; tests/test_docs_info.py checks both agree, key for key.
INFO_SCHEMA = _object(
    "this replica: every value the effective one; more fields may be added",
    {
        "version": {"type": "string", "description": "the service's version"},
        "model": _object(
            "the model directory's manifest",
            {
                "source": {"type": "string", "description": "the checkpoint it was converted from (hub id or path)"},
                "revision": {"type": ["string", "null"], "description": "the checkpoint's revision, when known"},
                "quantization": {"type": "string", "description": "the weights' type on disk (int8, float16...)"},
                "architecture": {"type": "string"},
                "max_input_length": _integer("longest source in tokens the encoder has positions for", 1),
            },
        ),
        "device": {"type": ["string", "null"], "description": "cpu or cuda; null until the model has loaded"},
        "compute_type": {
            "type": ["string", "null"],
            "description": "as CTranslate2 runs it (int8 on a CPU runs as int8_float32); null until the model has loaded",
        },
        "languages": _integer("how many languages (GET /languages lists them)", 1),
        "api_keys": {"type": "boolean", "description": "calls need `Authorization: Bearer KEY` (MT_API_KEYS_FILE)"},
        "decoding": _object(
            "how translations are searched",
            {
                "beam_size": _integer("MT_BEAM_SIZE (1 = greedy)", 1),
                "max_decoding_length": _integer("longest translation of one sentence in tokens", 1),
            },
        ),
        "limits": _object(
            "what a request and a client may send (0 = no limit where a setting allows 0)",
            {
                "max_records": _integer("records or texts in one request (MT_MAX_RECORDS; more: 413)", 1),
                "max_text_chars": _integer("characters in one text (MT_MAX_TEXT_CHARS; more: 413)", 1),
                "max_body_bytes": _integer("bytes in one request body (MT_MAX_BODY_BYTES; more: 413)", 1),
                "max_alternatives": _integer("most alternatives a request may ask for"),
                "client_rate_per_second": _number("requests/s per client (MT_CLIENT_RATE_PER_SECOND; more: 429)"),
                "client_burst": _integer("requests a client may send at once above its rate (MT_CLIENT_BURST)", 1),
                "client_max_sentences": _integer("sentences in flight per client (MT_CLIENT_MAX_SENTENCES; more: 429)"),
                "client_max_pending_bodies": _integer(
                    "requests per client still sending their body (MT_CLIENT_MAX_PENDING_BODIES; more: 429)"
                ),
                "max_in_flight": _integer("requests served at once (MT_MAX_IN_FLIGHT; more: 429)", 1),
                "max_pending_bodies": _integer("requests still sending their body (MT_MAX_PENDING_BODIES; more: 429)", 1),
                "queue_timeout_seconds": _number("longest wait for the engine (MT_QUEUE_TIMEOUT_SECONDS; then 503)"),
                "header_timeout_seconds": _number("time to send a request head (MT_HEADER_TIMEOUT_SECONDS; then 408)"),
                "body_timeout_seconds": _number("time to send a body after its head (MT_BODY_TIMEOUT_SECONDS; then 408)"),
                "idle_timeout_seconds": _number("idle keep-alive connections close after this (MT_IDLE_TIMEOUT_SECONDS)"),
            },
        ),
        "batching": _object(
            "how sentences of concurrent requests share engine calls",
            {
                "enabled": {"type": "boolean", "description": "MT_BATCHING (off: one sentence per engine call)"},
                "scheduling": {"type": "string", "enum": ["fair", "fifo"], "description": "MT_SCHEDULING"},
                "max_batch_size": _integer("sentences in one engine call (MT_MAX_BATCH_SIZE; 1 with batching off)", 1),
                "max_batch_tokens": _integer("source tokens in one engine call (MT_MAX_BATCH_TOKENS)", 1),
                "max_queue": _integer("sentences waiting for the engine (MT_MAX_QUEUE; more: 429)", 1),
                "request_window": _integer("sentences one request may have queued or running at once", 1),
                "workers": _integer("engine calls that run in parallel (MT_INTER_THREADS)", 1),
                "threads_per_worker": _integer("threads per engine call (MT_INTRA_THREADS; 0 = CTranslate2's default)"),
            },
        ),
        "cache": _object(
            "translations of sentences already seen",
            {
                "max_bytes": _integer("in-process cache budget (MT_CACHE_MAX_BYTES; 0: no cache)"),
                "max_entry_chars": _integer("longer sentences are not cached (MT_CACHE_MAX_ENTRY_CHARS)"),
                "shared": {"type": "boolean", "description": "a Redis cache is shared by the replicas (MT_REDIS_URL)"},
            },
        ),
        "detection": _object(
            'fromLang "auto" and POST /detect',
            {
                "fallback_language": {"type": "string", "description": "the language of an undetectable text"},
                "min_confidence": {
                    "type": "number", "minimum": 0, "maximum": 1,
                    "description": "less confident detections fall back (MT_AUTO_MIN_CONFIDENCE)",
                },
            },
        ),
    },
)  # fmt: skip
