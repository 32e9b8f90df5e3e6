"""Tracing (service/tracing.py): the caller's W3C trace continued, the spans of a request (cache, detection, queue,
engine), the engine batch linked to every request it served, the trace id in the request log, and export over
OTLP (http/protobuf and grpc) to a collector configured only by the OpenTelemetry SDK's environment variables."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from loadtest.harness import HOST, free_port
from loadtest.toy_task import expected_translation
from service.tracing import Tracing, TracingConfigError, provider, trace_id_of
from tests.helpers import ROOT, AppClient, SlowEngine, build_app, until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    """The service's provider (its sampler, from OTEL_TRACES_SAMPLER) with the spans kept in memory."""
    exporter = InMemorySpanExporter()
    traced = provider()
    traced.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(traced, "memory"), exporter


def by_name(spans) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def children_of(spans, parent) -> list[str]:
    return sorted(s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id)


# --- off, and its configuration


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "x"},  # a name alone configures nothing to export to
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_tracing_is_off_unless_the_environment_asks_for_it(environ):
    assert Tracing.from_environment(environ) is None


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "'udp'"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER must be one of otlp, console, none"),
    ],
)
def test_a_configuration_the_service_cannot_honour_is_refused_with_its_name(environ, named):
    with pytest.raises(TracingConfigError, match=named):
        Tracing.from_environment(environ)


@pytest.mark.parametrize(
    "header, expected",
    [
        (TRACEPARENT.encode(), TRACE_ID),
        (TRACEPARENT.upper().encode(), TRACE_ID),
        (f"00-{'0' * 32}-{PARENT_ID}-01".encode(), None),  # the all-zero trace id is invalid
        (f"ff-{TRACE_ID}-{PARENT_ID}-01".encode(), None),  # version ff is forbidden
        (b"00-not-a-trace", None),
        (f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01".encode(), None),
        (None, None),
    ],
)
def test_trace_ids_are_read_only_from_valid_traceparents(header, expected):
    assert trace_id_of(header) == expected


async def test_with_tracing_off_the_request_log_still_carries_the_callers_trace_id(toy_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="service.requests")
    async with AppClient(build_app(toy_model_dir)) as client:
        assert client.runtime.tracing is None
        await client.translate("en", "fr", ["alpha bravo."], headers={"traceparent": TRACEPARENT})
        await client.translate("en", "fr", ["alpha bravo."], headers={"traceparent": "00-garbage"})
    logged = [record.fields for record in caplog.records if record.name == "service.requests"]
    assert logged[0]["trace_id"] == TRACE_ID
    assert "trace_id" not in logged[1]


# --- the spans of a request (in-process, spans kept in memory)


async def test_a_translation_continues_the_callers_trace_with_its_steps_as_children(toy_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="service.requests")
    tracing, exporter = memory_tracing()
    async with AppClient(build_app(toy_model_dir, tracing=tracing)) as client:
        exporter.clear()  # the warm-up
        response = await client.translate("en", "fr", ["alpha bravo charlie."], headers={"traceparent": TRACEPARENT})
        assert response.json()["result"][0]["text"] == "charlie bravo alpha."
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    [server] = named["POST /translation"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["request.sentences"] == 1 and server.attributes["request.records"] == 1
    assert server.attributes["translation.from"] == "en" and server.attributes["translation.to"] == "fr"
    assert children_of(spans, server) == ["cache lookup", "engine", "queue"]
    [queue], [engine] = named["queue"], named["engine"]
    assert queue.start_time <= queue.end_time == engine.start_time <= engine.end_time
    assert server.start_time <= queue.start_time and engine.end_time <= server.end_time
    # The engine batch is a trace of its own, linked to the request it served.
    [batch] = named["engine batch"]
    assert batch.parent is None and batch.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert batch.attributes["batch.sentences"] == 1 and batch.attributes["batch.requests"] == 1
    [logged] = [record.fields for record in caplog.records if record.name == "service.requests"]
    assert logged["trace_id"] == TRACE_ID


async def test_one_engine_batch_is_linked_to_every_request_it_served(toy_model_dir):
    tracing, exporter = memory_tracing()
    # One worker, slowed: the first request's batch runs while the next three queue, and they share the next batch.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), tracing=tracing, inter_threads=1)
    async with AppClient(app) as client:
        exporter.clear()
        first = asyncio.ensure_future(client.translate("en", "fr", ["juliet kilo."]))
        await until(lambda: len(client.engine.batches) == 2, 5, "the first batch")  # the warm-up, then it
        texts = ["alpha bravo.", "charlie delta.", "alpha bravo."]  # the third shares the first's sentence
        responses = await asyncio.gather(*(client.translate("en", "fr", [text]) for text in texts))
        await first
    assert [r.json()["result"][0]["text"] for r in responses] == [expected_translation(t, "fr") for t in texts]
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    servers = {s.context.span_id: s for s in named["POST /translation"]}
    assert len(servers) == 4 and len({s.context.trace_id for s in servers.values()}) == 4
    shared = [batch for batch in named["engine batch"] if batch.attributes["batch.sentences"] == 2]
    assert len(shared) == 1
    linked = {link.context.span_id for link in shared[0].links}
    # Three requests, two distinct sentences: the batch is linked to all three.
    assert len(linked) == 3 and linked <= set(servers)


async def test_sampled_out_requests_cost_no_child_spans_and_a_sampled_ones_batch_is_always_recorded(toy_model_dir, monkeypatch):
    # A ratio of 0: a new trace is never sampled; a caller's sampled traceparent still is (parent-based).
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracing, exporter = memory_tracing()
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), tracing=tracing, inter_threads=1)
    async with AppClient(app) as client:
        exporter.clear()
        await client.translate("auto", "fr", ["alpha bravo."])  # not sampled: nothing at all
        assert exporter.get_finished_spans() == ()
        # Two requests in one batch, one sampled: the batch (a new root, which the ratio alone would drop) is kept,
        # linked to the sampled request only.
        first = asyncio.ensure_future(client.translate("en", "fr", ["juliet kilo."]))
        await until(lambda: len(client.engine.batches) == 3, 5, "the first batch")  # warm-up, the auto one, it
        both = await asyncio.gather(
            client.translate("en", "fr", ["charlie delta."], headers={"traceparent": TRACEPARENT}),
            client.translate("en", "fr", ["echo foxtrot."]),
        )
        await first
    assert [r.json()["result"][0]["text"] for r in both] == ["delta charlie.", "foxtrot echo."]
    named = by_name(exporter.get_finished_spans())
    [server] = named["POST /translation"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    [batch] = named["engine batch"]
    assert batch.attributes["batch.sentences"] == 2
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert set(named) == {"POST /translation", "cache lookup", "queue", "engine", "engine batch"}


async def test_detection_and_cache_hits_have_their_spans_and_a_hit_never_queues(toy_model_dir):
    tracing, exporter = memory_tracing()
    async with AppClient(build_app(toy_model_dir, tracing=tracing)) as client:
        await client.translate("auto", "fr", ["alpha bravo charlie."])
        exporter.clear()
        await client.translate("auto", "fr", ["alpha bravo charlie."])  # detected as before: a cache hit
        detect = await client.http.post("/detect", json={"texts": ["alpha bravo"]})
        assert detect.status_code == 200
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    [server] = named["POST /translation"]
    assert children_of(spans, server) == ["cache lookup", "detect language"]
    assert server.attributes["request.cache_hits"] == 1
    assert "engine batch" not in named
    [detect_span] = named["POST /detect"]
    assert children_of(spans, detect_span) == ["detect language"]
    assert detect_span.attributes["request.texts"] == 1


async def test_refusals_and_the_libretranslate_api_are_traced_too(toy_model_dir):
    tracing, exporter = memory_tracing()
    async with AppClient(build_app(toy_model_dir, tracing=tracing)) as client:
        exporter.clear()
        bad = await client.http.post("/translation", json={"payload": {"fromLang": "en"}}, headers={"traceparent": TRACEPARENT})
        assert bad.status_code == 422
        libre = await client.http.post("/libretranslate/translate", json={"q": "alpha bravo", "source": "en", "target": "fr"})
        assert libre.json() == {"translatedText": "bravo alpha"}
    named = by_name(exporter.get_finished_spans())
    [refused] = named["POST /translation"]
    assert refused.attributes["http.response.status_code"] == 422
    assert format(refused.context.trace_id, "032x") == TRACE_ID
    assert refused.status.is_ok  # a client's mistake is not the server's error
    [translated] = named["POST /libretranslate/translate"]
    assert translated.attributes["http.response.status_code"] == 200
    assert "engine batch" in named


# --- export: the real service, configured by OTEL_* variables, to a collector on 127.0.0.1


class OtlpHttpCollector:
    """A minimal OTLP/HTTP trace receiver: POST /v1/traces with protobuf bodies, kept decoded."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                message = trace_service_pb2.ExportTraceServiceRequest()
                message.ParseFromString(body)
                received.paths.append(self.path)
                received.requests.append(message)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpHttpCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class OtlpGrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        import grpc

        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"{HOST}:{self.port}")

    def Export(self, request, context):  # the gRPC method's name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> OtlpGrpcCollector:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


def exported(collector) -> Iterator[tuple[dict, object]]:
    """(resource attributes, span) for every span the collector received."""
    for request in list(collector.requests):
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield attributes, span


def wait_for_span(collector, name: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for attributes, span in exported(collector):
            if span.name == name and span.trace_id.hex() == TRACE_ID:
                return attributes, span
        time.sleep(0.05)
    raise AssertionError(f"no {name} span of trace {TRACE_ID} reached the collector in {seconds} s")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_service_exports_its_spans_to_the_collector_the_environment_names(toy_model_dir, start_service, tmp_path, protocol):
    collector = OtlpHttpCollector() if protocol == "http/protobuf" else OtlpGrpcCollector()
    with collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": "translation-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms instead of 5 s
        }
        service = start_service(toy_model_dir, env=env)
        body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo charlie."}]}}
        response = httpx.post(f"{service.url}/translation", json=body, headers={"traceparent": TRACEPARENT}, timeout=30)
        assert response.json() == {"result": [{"id": "1", "text": "charlie bravo alpha."}]}
        resource, server = wait_for_span(collector, "POST /translation")
        assert resource["service.name"] == "translation-under-test"
        assert resource["deployment.environment"] == "test"
        assert server.parent_span_id.hex() == PARENT_ID
        names = {span.name for _, span in exported(collector) if span.trace_id.hex() == TRACE_ID}
        assert {"cache lookup", "queue", "engine"} <= names
        deadline = time.monotonic() + 20
        while not any(
            span.name == "engine batch" and any(link.span_id == server.span_id for link in span.links)
            for _, span in exported(collector)
        ):
            assert time.monotonic() < deadline, "no engine batch span linked to the request"
            time.sleep(0.05)
        if protocol == "http/protobuf":
            assert set(collector.paths) == {"/v1/traces"}
        service.stop(timeout=15)
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("message") == "request" and line.get("trace_id") == TRACE_ID for line in lines)
    assert any("tracing: on" in line.get("message", "") for line in lines)


def test_an_unusable_tracing_configuration_stops_the_start_with_a_clear_message(toy_model_dir):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(toy_model_dir), "--host", HOST, "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL must be one of http/protobuf, grpc, got 'http/json'" in result.stderr
