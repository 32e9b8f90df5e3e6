"""The OpenTelemetry collector the compose stack and the k8s tracing component both run: the components of its
distribution, and the checks every collector configuration of ours must pass."""

from __future__ import annotations

# The components of the core distribution (otel/opentelemetry-collector) at the version both pin:
# github.com/open-telemetry/opentelemetry-collector-releases, distributions/otelcol/manifest.yaml at v0.159.0
# (otlp_grpc and otlp_http since 0.14x; `otlp` and `otlphttp` remain as deprecated aliases). Bumping an image
# fails the tests that compare it with COLLECTOR_VERSION until this list is checked again.
COLLECTOR_VERSION = "0.159.0"
COLLECTOR_IMAGE = f"otel/opentelemetry-collector:{COLLECTOR_VERSION}"
COLLECTOR_COMPONENTS = {
    "receivers": {"nop", "otlp", "hostmetrics", "jaeger", "kafka", "prometheus", "zipkin"},
    "processors": {"batch", "memory_limiter", "attributes", "resource", "span", "probabilistic_sampler", "filter"},
    "exporters": {"debug", "nop", "otlp_grpc", "otlp", "otlp_http", "otlphttp", "file", "kafka", "prometheus",
                  "prometheusremotewrite", "zipkin"},
    "extensions": {"zpages", "health_check", "pprof"},
    "connectors": {"forward"},
}


def check_pipelines(config: dict) -> dict[str, set[str]]:
    """Asserts that a collector config has one traces pipeline using exactly the components it defines, each of
    the pinned distribution, memory_limiter first (refuse before buffering) and batch last; returns what it defines."""
    service = config["service"]
    defined = {kind: set(config.get(kind) or {}) for kind in COLLECTOR_COMPONENTS}
    assert set(service.get("extensions", [])) <= defined["extensions"], "service.extensions names an undefined extension"
    assert set(service["pipelines"]) == {"traces"}, "the service exports traces only"
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in used:
            missing = set(pipeline.get(kind, [])) - defined[kind]
            assert not missing, f"pipeline {name} uses {kind} that are not defined: {missing}"
            used[kind] |= set(pipeline.get(kind, []))
    for kind in used:
        assert used[kind] == defined[kind], f"defined but unused {kind}: {defined[kind] - used[kind]}"
    # Every component exists in the distribution the image is (type = the part before a "/").
    for kind, names in defined.items():
        unknown = {name for name in names if name.split("/")[0] not in COLLECTOR_COMPONENTS[kind]}
        assert not unknown, f"{kind} not in the core distribution {COLLECTOR_VERSION}: {unknown}"
    processors = service["pipelines"]["traces"]["processors"]
    assert processors[0] == "memory_limiter" and processors[-1] == "batch"
    return defined
