"""One immutable Settings object, built once at start from command-line flags and MT_* variables.

Every field is documented where it is declared, and the same declaration drives the CLI flag,
the environment variable and validation. A bad value stops the start with a message naming the
option. Nothing here is read at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.cors import parse_origins
from service.identity import TrustedProxies

ENV_PREFIX = "MT_"
DEVICES = ("auto", "cpu", "cuda")
COMPUTE_TYPES = ("auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "float16", "bfloat16", "float32")
LOG_LEVELS = ("debug", "info", "warning", "error")
SCHEDULING = ("fair", "fifo")

# Defaults that depend on the device, used where a setting is left at 0 (see docs/benchmarks.md).
# cpu: measured on 2 cores with the full-size 418M model. Two single-threaded workers beat one
#   two-threaded worker; batches of 16 beat 32 (with two workers the first free one took the whole
#   queue); 2048 tokens only binds on long inputs. A 2-core replica translates about 8 sentences/s,
#   so a queue of 128 is already ~16 s of work: deeper queues only turned into latency. Measured again with
#   fair scheduling (issue 16): at 64 clients the service reached 0.93-0.94 of the best offline configuration
#   at 16, and 32 was no faster (docs/benchmarks.md, "The CPU batch defaults").
# cuda: measured on one H100 (issue 8): the service's best settings (batches of 256 sentences and
#   16,384 tokens, 2 workers); float16 ran 12% faster than int8_float16 (compute_type auto).
#   An H100 translates ~2,500 sentences/s, so 4,096 queued sentences are under 2 s of work.
DEVICE_DEFAULTS: dict[str, dict[str, int]] = {
    "cpu": {"inter_threads": 2, "max_batch_size": 16, "max_batch_tokens": 2048, "max_queue": 128},
    "cuda": {"inter_threads": 2, "max_batch_size": 256, "max_batch_tokens": 16384, "max_queue": 4096},
}


class SettingsError(ValueError):
    """A setting has a bad value; the message names the flag and the variable."""


def _opt(default, help: str, *, minimum: float | None = None, choices: Sequence[str] | None = None):
    return field(default=default, metadata={"help": help, "minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class Settings:
    model_dir: Path = _opt(None, "model directory written by `python -m convert`")
    host: str = _opt("0.0.0.0", "address to listen on")
    port: int = _opt(9527, "port to listen on", minimum=1)
    device: str = _opt("auto", "cuda when a GPU is present, else cpu", choices=DEVICES)
    compute_type: str = _opt("auto", "auto = float16 on cuda, int8 on cpu", choices=COMPUTE_TYPES)
    # 0 = the device's default (DEVICE_DEFAULTS below, measured per device); any other value wins.
    inter_threads: int = _opt(0, "CTranslate2 workers: engine calls that run in parallel (0 = by device)", minimum=0)
    intra_threads: int = _opt(1, "threads per CTranslate2 worker (0 = CTranslate2's default of 4)", minimum=0)
    beam_size: int = _opt(2, "beam size (1 = greedy)", minimum=1)
    max_decoding_length: int = _opt(0, "longest translation in tokens (0 = 256, or less where the model's positions allow less)", minimum=0)
    max_batch_size: int = _opt(0, "most sentences in one engine call (0 = by device)", minimum=0)
    max_batch_tokens: int = _opt(0, "most source tokens in one engine call (0 = by device)", minimum=0)
    batching: bool = _opt(True, "pack sentences of concurrent requests into shared engine calls (off: one sentence per call)")
    scheduling: str = _opt("fair", "how batches are formed from the queue: fair (clients, then their requests, take turns "
                           "by cost) or fifo (first come, first served; for comparison)", choices=SCHEDULING)
    max_queue: int = _opt(0, "sentences waiting for the engine before new requests get 429 (0 = by device); a request "
                          "holds at most two batches' worth of it at once, however long", minimum=0)
    max_in_flight: int = _opt(0, "requests being served at once before new ones get 429 unread (0 = max_queue)", minimum=0)
    queue_timeout_seconds: float = _opt(
        30.0, "a sentence that waited this long for the engine is not translated: its request gets 503 (0 = no limit)",
        minimum=0,
    )
    max_records: int = _opt(128, "most records in one request (more: 413)", minimum=1)
    max_text_chars: int = _opt(20000, "longest text of one record in characters (more: 413)", minimum=1)
    max_body_bytes: int = _opt(2 * 1024 * 1024, "largest request body in bytes (more: 413)", minimum=1)
    api_keys_file: str = _opt("", "file of API keys, one per line, re-read when it changes; set = every call but the "
                              "probes, the web page, /docs and /openapi.json needs `Authorization: Bearer KEY` (empty: open)")
    metrics_require_key: bool = _opt(False, "with API keys on, /metrics needs a key too")
    # Per-client limits: a client is its API key, or (keys off) its address as seen through trusted proxies.
    # Every one is off (0) unless set: behind a proxy without keys, all users may be one address.
    client_rate_per_second: float = _opt(0.0, "requests/s one client (key, or address when keys are off) may send; "
                                         "more get 429 (0 = no limit)", minimum=0)
    client_burst: int = _opt(20, "requests a client may send at once above its rate", minimum=1)
    client_max_sentences: int = _opt(0, "sentences one client may have in flight; more get 429 (0 = no limit)", minimum=0)
    client_max_pending_bodies: int = _opt(0, "requests one client may have still sending their body; more get 429 "
                                          "(0 = no limit)", minimum=0)
    max_pending_bodies: int = _opt(512, "requests still sending their body, all clients together; more get 429. They hold "
                                   "no in-flight slot or queue room until the body is in", minimum=1)
    auth_failures_per_second: float = _opt(1.0, "with API keys on, failed authentications one address may make per second "
                                           "after its burst; more get 429 (0 = no throttle)", minimum=0)
    auth_failure_burst: int = _opt(20, "failed authentications one address may make at once", minimum=1)
    forwarded_allow_ips: str = _opt("127.0.0.1", "proxies whose X-Forwarded-For names the client: comma-separated "
                                    "addresses or networks (10.0.0.0/8). * trusts any caller and lets anyone pick "
                                    "their address: unsafe where per-address limits matter")
    cors_origins: str = _opt("", "origins whose browser apps may call the API (CORS): comma-separated "
                             "scheme://host[:port], or * for any (empty: CORS off)")
    max_connections: int = _opt(0, "open connections before new ones get 503 and close (probes are still served); "
                                "0 = by the open-file limit, which the service raises to its hard limit at start",
                                minimum=0)
    # Memory is bounded by bytes (the budget must fit the pod beside the model); the count cap is far
    # above what the budget holds for ordinary sentences and stays for MT_CACHE_SIZE=0 (cache off).
    cache_max_bytes: int = _opt(256 * 1024 * 1024, "in-process cache budget in bytes, entries' real memory (0 disables it)", minimum=0)
    cache_max_entry_chars: int = _opt(1000, "sentences longer than this are not cached", minimum=0)
    cache_size: int = _opt(1_000_000, "most in-process cache entries (0 disables the cache)", minimum=0)
    redis_url: str = _opt("", "Redis URL for a cache shared by all replicas, e.g. redis://redis:6379/0 (empty: none)")
    redis_timeout_ms: int = _opt(50, "Redis command timeout; slower answers count as an outage", minimum=1)
    redis_ttl_seconds: int = _opt(7 * 24 * 3600, "how long translations live in Redis", minimum=1)
    auto_fallback_lang: str = _opt("en", 'with fromLang "auto", the language of a text with no letters or no confident '
                                   "detection (reported with confidence 0)")
    auto_min_confidence: float = _opt(0.2, "a detection less confident than this is no detection (the fallback applies)",
                                      minimum=0)
    language_check_every: int = _opt(100, "in explicit mode, detect every Nth sentence to count fromLang mismatches "
                                     "(translation_language_mismatches_total; 0 = never)", minimum=0)
    header_timeout_seconds: float = _opt(
        10.0, "a connection must send a complete request head this soon after opening or starting it (else 408, closed)",
        minimum=0.1,
    )
    body_timeout_seconds: float = _opt(30.0, "a request body must arrive this soon after its head (else 408, closed)", minimum=0.1)
    # Longer than a load balancer's usual 60 s, so the proxy, not the service, closes idle connections:
    # a server that closes first races the proxy's next request on that connection.
    idle_timeout_seconds: float = _opt(75.0, "idle keep-alive connections are closed after this long", minimum=0.1)
    drain_seconds: float = _opt(30.0, "on SIGTERM, longest wait for accepted requests to finish", minimum=0)
    shutdown_delay_seconds: float = _opt(0.0, "on SIGTERM, keep serving this long with /readyz at 503 before closing", minimum=0)
    log_level: str = _opt("info", "log level", choices=LOG_LEVELS)
    log_text: bool = _opt(False, "include source texts in error logs (off: texts never reach the logs)")

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Flags win over MT_* variables, which win over the defaults."""
        environ = {} if environ is None else environ
        parser = _parser(environ)
        namespace = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = getattr(namespace, spec.name)
            values[spec.name] = _coerce(spec, raw) if raw is not None else spec.default
        if values["model_dir"] is None:
            raise SettingsError(f"--model-dir (or {ENV_PREFIX}MODEL_DIR) is required")
        return cls(**values)

    def for_device(self, device: str) -> Settings:
        """These settings with every 0 ("by device") replaced by `device`'s default; max_in_flight
        left at 0 becomes max_queue (every request in flight holds at least one queued sentence)."""
        if device not in DEVICE_DEFAULTS:
            raise SettingsError(f"no defaults for device {device!r}; choose one of {', '.join(DEVICE_DEFAULTS)}")
        filled: dict[str, Any] = {name: value for name, value in DEVICE_DEFAULTS[device].items() if getattr(self, name) == 0}
        resolved = dataclasses.replace(self, **filled)
        if resolved.max_in_flight == 0:
            resolved = dataclasses.replace(resolved, max_in_flight=resolved.max_queue)
        return resolved

    @property
    def request_window(self) -> int:
        """Sentences one request may have queued or running at once: two batches' worth, one computing while the
        next waits (never more than the queue). A larger request is fed to the engine a window at a time
        (service/feeder.py), so the queue bounds load, not the size of a request."""
        return min(2 * self.max_batch_size, self.max_queue)

    @property
    def resolved(self) -> bool:
        return all(getattr(self, name) for name in (*DEVICE_DEFAULTS["cpu"], "max_in_flight"))

    def check_languages(self, languages: Sequence[str]) -> None:
        """Checks the settings that name a language against the model's (known only once it is read)."""
        if self.auto_fallback_lang not in languages:
            raise SettingsError(
                f"{_names('auto_fallback_lang')} must be one of the model's languages, got {self.auto_fallback_lang!r}"
            )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value, meta = getattr(self, spec.name), spec.metadata
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise SettingsError(f"{_names(spec.name)} must be at least {meta['minimum']}, got {value}")
            if meta["choices"] and value not in meta["choices"]:
                raise SettingsError(f"{_names(spec.name)} must be one of {', '.join(meta['choices'])}, got {value!r}")
        if self.port > 65535:
            raise SettingsError(f"{_names('port')} must be at most 65535, got {self.port}")
        if self.auto_min_confidence > 1:
            raise SettingsError(f"{_names('auto_min_confidence')} must be at most 1, got {self.auto_min_confidence}")
        try:
            TrustedProxies(self.forwarded_allow_ips)
        except ValueError as error:
            raise SettingsError(f"{_names('forwarded_allow_ips')}: {error}") from None
        try:
            parse_origins(self.cors_origins)
        except ValueError as error:
            raise SettingsError(f"{_names('cors_origins')}: {error}") from None
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"{_names('redis_url')} must start with redis://, rediss:// or unix://")


def _names(name: str) -> str:
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})"


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=f"Serve a converted M2M100 model. Every option can also be set as {ENV_PREFIX}<OPTION>.",
    )
    for spec in dataclasses.fields(Settings):
        env_name = f"{ENV_PREFIX}{spec.name.upper()}"
        default = f"default: {spec.default}" if spec.default is not None else "required"
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            # Raw strings: converted and checked in one place (_coerce) for flags and variables alike.
            default=environ.get(env_name),
            metavar=env_name,
            help=f"{spec.metadata['help']} ({default})",
        )
    return parser


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _coerce(spec: dataclasses.Field, raw: str):
    kind = type(spec.default) if spec.default is not None else Path
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError
            return lowered in _TRUE
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        return raw.strip()
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a value")
        raise SettingsError(f"{_names(spec.name)} must be {expected}, got {raw!r}") from None
