"""Distributed tracing with OpenTelemetry: the caller's W3C trace continued, and where a request spent its time.

Off unless the OpenTelemetry SDK's own environment variables ask for it (an OTLP endpoint, or
OTEL_TRACES_EXPORTER naming an exporter), so that any tool that configures OpenTelemetry configures this
service: OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf, the
default, or grpc), OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* and OTEL_SDK_DISABLED are read by the SDK itself. Off, the SDK is
not even imported, and the hot path pays one `is None` test per step.

The spans of one request: `POST /translation` (server, child of the caller's `traceparent`) and under it
`detect language`, `cache lookup`, then per window of sentences `queue` (waiting for the engine) and
`engine` (the engine calls that served it). An engine batch serves many requests at once, so it is a span
of its own, `engine batch`, linked to the span of every request it served (OpenTelemetry's model for
batch work). Queue and engine spans are recorded after the fact with their measured start and end.

Sampling is the SDK's (OTEL_TRACES_SAMPLER, parent-based by default, so a caller's decision is kept), with one
addition: an engine batch is recorded when any request it served is, whatever the sampler would say of a new
root, so a sampled request always finds its batch. A request that is not sampled costs its span's start and end
and nothing more: no child spans, no batch links.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from service import __version__

log = logging.getLogger("service")

DEFAULT_SERVICE_NAME = "m2m100-translation"
BATCH_SPAN = "engine batch"
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")
# What a disabled step enters instead of a span: one shared, reusable no-op.
NO_SPAN = contextlib.nullcontext()


class TracingConfigError(ValueError):
    """An OTEL_* variable has a value this service cannot honour; the message names it."""


def trace_id_of(traceparent: bytes | None) -> str | None:
    """The trace id of a valid W3C traceparent (version-traceid-parentid-flags), else None: logged even when
    tracing is off, so that the caller's trace finds this service's log lines."""
    if traceparent is None or len(traceparent) < 55:
        return None
    parts = traceparent.decode("latin-1").strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    trace_id = parts[1].lower()
    if trace_id == "0" * 32 or not all(c in "0123456789abcdef" for c in trace_id):
        return None
    return trace_id


class Tracing:
    """The service's tracer: an SDK TracerProvider of its own (no global state), a batch span processor and
    the exporter the environment names. Build it with `from_environment`."""

    def __init__(self, provider: Any, exporter_name: str) -> None:
        """`provider`: an SDK TracerProvider with its span processor, best made by `provider()` (its sampler)."""
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("service", __version__)
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self.exporter_name = exporter_name

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing | None:
        """Tracing as the OTEL_* variables configure it, or None when they leave it off. Raises
        TracingConfigError for a value the service cannot honour (an unknown protocol, say)."""
        exporter_name = _exporter_name(environ)
        if exporter_name == "none":
            return None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = _exporter(exporter_name, environ)
        traced = provider(environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME)
        traced.add_span_processor(BatchSpanProcessor(exporter))
        return cls(traced, exporter_name)

    # --- a request's span (the hot paths call these)
    def enter_request(self, method: str, path: str, traceparent: bytes | None, tracestate: bytes | None) -> tuple[Any, Any]:
        """Starts the request's server span as a child of the caller's trace (if its traceparent is valid) and
        makes it current; returns (span, token) for `leave_request`."""
        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(
            f"{method} {path}", context=parent, kind=self._server,
            attributes={"http.request.method": method, "url.path": path},
        )  # fmt: skip
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def leave_request(self, span: Any, token: Any, status: int, attributes: Mapping[str, Any]) -> None:
        self._context.detach(token)
        span.set_attribute("http.response.status_code", status)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(self._error)
        span.end()

    @staticmethod
    def trace_id(span: Any) -> str:
        return format(span.get_span_context().trace_id, "032x")

    # --- steps inside a request
    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child of the current span around a step (cache lookup, detection)."""
        with self._tracer.start_as_current_span(name, attributes=attributes):
            yield

    def sampled(self) -> Any:
        """The current span (the request's) if it is recorded, else None: an unsampled request's steps cost nothing.
        The span serves as the batcher's tag, to link the engine batches to the requests they serve."""
        span = self._trace.get_current_span()
        return span if span.is_recording() else None

    def record(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A child of the current span that already happened (a window's time in the queue, in the engine)."""
        self._tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)

    def record_batch(self, seconds: float, size: int, tokens: int, served: Sequence[Any], failed: bool) -> None:
        """An engine batch that just ended, linked to the span of every request it served (called in the
        batcher's worker thread; the SDK is thread-safe)."""
        end = time.time_ns()
        contexts = (span.get_span_context() for span in served)
        links = [self._trace.Link(context) for context in contexts if context.is_valid]
        span = self._tracer.start_span(
            BATCH_SPAN, context=self._trace.set_span_in_context(self._trace.INVALID_SPAN), links=links,
            start_time=end - int(seconds * 1e9),
            attributes={"batch.sentences": size, "batch.source_tokens": tokens, "batch.requests": len(links)},
        )  # fmt: skip
        if failed:
            span.set_status(self._error)
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Exports what is still buffered (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stops the exporter."""
        try:
            self._provider.shutdown()
        except Exception:
            log.exception("tracing: shutdown failed")


def provider(service_name: str = DEFAULT_SERVICE_NAME) -> Any:
    """An SDK TracerProvider with the resource (OTEL_RESOURCE_ATTRIBUTES added) and the sampler OTEL_TRACES_SAMPLER
    names, made to record every engine batch that serves a recorded request. No span processor yet."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; these are only the defaults.
    resource = Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: __version__})
    configured = TracerProvider(resource=resource, shutdown_on_exit=False).sampler  # the one OTEL_TRACES_SAMPLER names
    return TracerProvider(resource=resource, sampler=_batch_follows_its_requests(configured))


def _batch_follows_its_requests(inner: Any) -> Any:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class BatchFollowsItsRequests(Sampler):
        """`inner`, except that an engine batch linked to a sampled request is sampled (it is a new root: a
        ratio sampler would otherwise drop most batches of the requests it kept)."""

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
            if name == BATCH_SPAN and links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"BatchFollowsItsRequests{{{inner.get_description()}}}"

    return BatchFollowsItsRequests()


def _exporter_name(environ: Mapping[str, str]) -> str:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        if named not in EXPORTERS:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, got {named!r}")
        return named
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return "otlp" if endpoint else "none"


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r} (the Python SDK has no http/json exporter)"
        )
    # The exporters read their endpoint, headers, timeout, compression and certificates from OTEL_* themselves.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
