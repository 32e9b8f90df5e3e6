"""docker-compose.yml and make dev, offline: there is no Docker engine here, so the file is checked against
the Compose specification's schema and against the rest of the repository: the Dockerfile target it
builds, the Redis image the cluster runs, the settings the service reads, the alert rules and the
dashboard it mounts (promtool on the Prometheus config laid out as the container sees it), the
labels the dashboard and the alerts select, and the traces' path: the service's OTEL_* variables, the
OpenTelemetry collector's pipeline and Jaeger.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest
import yaml

from loadtest.paths import ROOT
from tests.otel_collector import COLLECTOR_IMAGE, check_pipelines
from tests.test_dockerfile import parse_dockerfile

COMPOSE_FILE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "k8s" / "components" / "monitoring"
REDIS_MANIFEST = ROOT / "k8s" / "components" / "redis" / "redis.yaml"
SERVICES = {"translation", "redis", "prometheus", "grafana", "otel-collector", "jaeger"}
# Published ports: container port and the host port it gets by default; the variable that moves it.
PORTS = {"translation": 9527, "prometheus": 9090, "grafana": 3000, "jaeger": 16686, "otel-collector": 4318}
PORT_VARIABLES = {"translation": "DEV_API_PORT", "prometheus": "DEV_PROMETHEUS_PORT", "grafana": "DEV_GRAFANA_PORT",
                  "jaeger": "DEV_JAEGER_PORT", "otel-collector": "DEV_OTLP_PORT"}
# Images without a shell or any tool to run a health check with (FROM scratch): the collector. Nothing may wait
# for them to be healthy; they are only started.
NO_HEALTHCHECK = {"otel-collector"}
COLLECTOR_CONFIG = ROOT / "deploy" / "compose" / "otel-collector" / "config.yaml"
# Jaeger v2's built-in all-in-one configuration (cmd/jaeger/internal/all-in-one.yaml at v2.20.0): OTLP in on
# 4317 (gRPC) and 4318 (HTTP), the UI on 16686, the healthcheckv2 extension on 13133 (/status).
JAEGER_OTLP_PORTS = {"grpc": 4317, "http": 4318}
# The OpenTelemetry SDK variables the service reads (service/tracing.py), beside its own MT_* settings.
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED",
}
# Labels a scrape through the ServiceMonitor attaches in a cluster (not the service's own metric labels).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Pinned: a tag and its digest (as the Dockerfile and the cluster's Redis are), or an exact x.y.z tag.
PINNED = re.compile(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}|[a-z0-9./-]+:v?\d+\.\d+\.\d+")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR}, ${VAR:-default} and $$, with `env` as the environment (empty: the defaults)."""
    env = env or {}
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{(\w+)(:-([^}]*))?\}", one, value)


@cache
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose() -> dict:
    return interpolate(raw_compose())


def service(name: str) -> dict:
    return compose()["services"][name]


def bind_mounts(name: str) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service(name).get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE_FILE.parent / source).resolve(), target))
    return mounts


def container_path(name: str, target: str, tmp_path: Path) -> Path:
    """The service's bind mounts copied into tmp_path at their container paths; `target` within them."""
    for source, mounted_at in bind_mounts(name):
        destination = tmp_path / mounted_at.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    return tmp_path / target.lstrip("/")


def published(name: str) -> list[tuple[str, int, int]]:
    result = []
    for port in service(name).get("ports", []):
        address, host, container = str(port).rsplit(":", 2) if str(port).count(":") == 2 else ("", *str(port).split(":"))
        result.append((address, int(host), int(container)))
    return result


def dockerfile_stages() -> dict:
    _, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    return {stage.name: stage for stage in stages}


def promql_queries() -> list[str]:
    """Every query of the dashboard (panels and variables) and of the alert rules."""
    queries: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    queries.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads((MONITORING / "dashboard.json").read_text()))
    rules = yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())
    queries += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return queries


def labels_in(query: str) -> tuple[set[str], dict[str, set[str]]]:
    """Labels a query groups or joins by, and the values its equality matchers require, per label."""
    grouped: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", query):
        grouped |= {label.strip() for label in clause.split(",") if label.strip()}
    for argument in re.findall(r"label_values\([^,]*,\s*(\w+)\s*\)", query):
        grouped.add(argument)
    matched: dict[str, set[str]] = {}
    for block in re.findall(r"\{([^{}]*)\}", query):
        for label, operator, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', block):
            matched.setdefault(label, set())
            if operator == "=":
                matched[label].add(value)
    return grouped, matched


# --- the file itself ---------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(compose()["services"]) == SERVICES


def test_the_service_is_built_from_the_dockerfile_cpu_target():
    build = service("translation")["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == ROOT
    stages = dockerfile_stages()
    assert build["target"] == "cpu" and "cpu" in stages
    # The build arguments are the Dockerfile's, with its defaults (make dev passes the Makefile's).
    model = stages["model-cpu"]
    declared = {arg.partition("=")[0]: arg.partition("=")[2] for arg in model.all("ARG")}
    assert set(build["args"]) <= set(declared)
    assert build["args"]["QUANTIZATION"] == declared["QUANTIZATION"] == "int8"
    global_args, _ = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert build["args"]["SOURCE"] == global_args["SOURCE"]
    assert service("translation")["pull_policy"] == "build", "a locally built image, never pulled"


def test_every_pulled_image_is_pinned():
    for name, spec in compose()["services"].items():
        if "build" in spec:
            continue
        image = spec["image"]
        assert PINNED.fullmatch(image), f"{name}: {image} is not pinned to an exact version (or a digest)"
    # The cache the cluster runs, to the digest.
    redis_manifest = [doc for doc in yaml.safe_load_all(REDIS_MANIFEST.read_text()) if doc and doc["kind"] == "Deployment"]
    cluster_image = redis_manifest[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "@sha256:" in cluster_image and service("redis")["image"] == cluster_image


def test_ports_are_published_on_loopback_only():
    exposed = {int(port) for port in dockerfile_stages()["cpu"].all("EXPOSE")}
    assert exposed == {PORTS["translation"]}
    for name, port in PORTS.items():
        assert published(name) == [("127.0.0.1", port, port)], name
    assert not published("redis"), "Redis is for the service only"
    assert {name for name in SERVICES if published(name)} == set(PORTS)
    # The host ports move with DEV_*_PORT (make dev passes them on).
    for name, variable in PORT_VARIABLES.items():
        moved = interpolate(raw_compose(), {variable: "19600"})["services"][name]["ports"]
        assert moved == [f"127.0.0.1:19600:{PORTS[name]}"], name


def test_every_service_has_a_healthcheck_and_waits_on_what_it_needs():
    services = compose()["services"]
    for name, spec in services.items():
        test = spec.get("healthcheck", {}).get("test")
        if name in NO_HEALTHCHECK:
            assert test is None, f"{name}: its image has no shell or tool to run a health check with"
        else:
            assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1, f"{name} has no healthcheck"
        for dependency, condition in spec.get("depends_on", {}).items():
            assert dependency in services and condition["condition"] in CONDITIONS, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]
    assert services["translation"]["depends_on"] == {
        "redis": {"condition": "service_healthy"}, "otel-collector": {"condition": "service_started"},
    }
    assert services["otel-collector"]["depends_on"] == {"jaeger": {"condition": "service_healthy"}}
    assert services["jaeger"]["healthcheck"]["test"][-1] == "http://127.0.0.1:13133/status"
    assert services["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    # The service's is the image's own (the Dockerfile's HEALTHCHECK on /readyz).
    (healthcheck,) = dockerfile_stages()["cpu"].all("HEALTHCHECK")
    image_command = json.loads(healthcheck.partition(" CMD ")[2])
    assert services["translation"]["healthcheck"]["test"] == ["CMD", *image_command]
    assert "/readyz" in image_command[-1]
    assert services["prometheus"]["healthcheck"]["test"][-1].endswith(":9090/-/ready")
    assert services["grafana"]["healthcheck"]["test"][-1].endswith(":3000/api/health")


def test_every_mounted_host_path_exists_and_named_volumes_are_declared():
    spec = compose()
    mounted = 0
    for name, definition in spec["services"].items():
        for source, _ in bind_mounts(name):
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            assert ROOT in source.parents, f"{name} mounts {source} from outside the repository"
            mounted += 1
        for volume in definition.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if not source.startswith((".", "/")):
                assert source in spec.get("volumes", {}), f"{name}: volume {source} is not declared"
    assert mounted == 6


def test_the_service_environment_uses_only_real_settings():
    from service.settings import ENV_PREFIX, Settings, SettingsError

    environment = service("translation")["environment"]
    known = {f"{ENV_PREFIX}{spec.name.upper()}" for spec in fields(Settings)}
    settings = {name: value for name, value in environment.items() if not name.startswith("OTEL_")}
    assert set(settings) <= known, f"not settings: {set(settings) - known}"
    assert set(environment) - set(settings) <= OTEL_VARIABLES, "OTEL_* variables the service does not read"
    try:
        Settings.load(["--model-dir", "/models/m2m100"], settings)
    except SettingsError as error:
        pytest.fail(f"docker-compose.yml gives the service a bad setting: {error}")
    redis = urllib.parse.urlsplit(environment["MT_REDIS_URL"])
    assert redis.hostname == "redis" and redis.port == 6379 and "redis" in compose()["services"]


# --- Prometheus and Grafana ----------------------------------------------------------------------


def prometheus_config(tmp_path: Path) -> Path:
    command = service("prometheus")["command"]
    (flag,) = [arg for arg in command if arg.startswith("--config.file=")]
    return container_path("prometheus", flag.partition("=")[2], tmp_path)


def test_prometheus_config_passes_promtool_as_mounted(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (make test installs it: scripts/install_system_deps.sh)"
    config = prometheus_config(tmp_path)
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The rule file resolved where the container finds it, and it is the cluster's, all of it.
    rules = yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert "SUCCESS: 1 rule files found" in output and f"SUCCESS: {count} rules found" in output, output


def test_scrape_labels_match_what_the_dashboard_and_alerts_select(tmp_path):
    config = yaml.safe_load(prometheus_config(tmp_path).read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "translation"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (static,) = job["static_configs"]
    assert static["targets"] == [f"translation:{PORTS['translation']}"]
    provided = {"job", "instance", *static.get("labels", {})}

    used: set[str] = set()
    jobs: set[str] = set()
    for query in promql_queries():
        grouped, matched = labels_in(query)
        used |= (grouped | set(matched)) & TARGET_LABELS
        jobs |= matched.get("job", set())
    assert jobs == {job["job_name"]}, f"the queries select jobs {jobs}"
    assert {"namespace", "pod"} <= used
    assert used <= provided, f"the queries use target labels this scrape does not give: {used - provided}"


def test_grafana_provisions_the_datasource_and_the_dashboard(tmp_path):
    provisioning = {target: source for source, target in bind_mounts("grafana")}
    datasources_dir = container_path("grafana", "/etc/grafana/provisioning/datasources", tmp_path)
    (datasources_file,) = datasources_dir.glob("*.yml")
    (datasource,) = yaml.safe_load(datasources_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    url = urllib.parse.urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port == PORTS["prometheus"]

    (providers_file,) = (tmp_path / "etc/grafana/provisioning/dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(providers_file.read_text())["providers"]
    assert provider["type"] == "file"
    dashboards = list((tmp_path / provider["options"]["path"].lstrip("/")).glob("*.json"))
    assert [path.name for path in dashboards] == ["translation.json"]
    assert provisioning["/etc/grafana/dashboards/translation.json"] == MONITORING / "dashboard.json"
    dashboard = json.loads(dashboards[0].read_text())
    assert dashboard["uid"] and dashboard["title"]
    # The dashboard's datasource variable picks a datasource of the provisioned type.
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == datasource["type"]
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (tmp_path / home.lstrip("/")).is_file()


# --- make dev ------------------------------------------------------------------------------------


def make(*args: str, compose_command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", *args, f"COMPOSE={compose_command}"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )


def test_make_dev_runs_compose_and_prints_the_urls(tmp_path):
    log = tmp_path / "compose.log"
    stub = tmp_path / "compose"
    # Records what `docker compose` would be asked, and what docker-compose.yml would read from the environment.
    stub.write_text(f'#!/bin/sh\necho "$SOURCE|$DEV_API_PORT|$*" >> {log}\n')
    stub.chmod(0o755)

    up = make("dev", "SOURCE=./checkpoints/toy", "DEV_API_PORT=9600", compose_command=str(stub))
    assert up.returncode == 0, up.stdout + up.stderr
    calls = log.read_text().splitlines()
    assert calls[0].endswith("|version")
    assert calls[1] == "./checkpoints/toy|9600|up --build --detach --wait --wait-timeout 600"
    assert "http://127.0.0.1:9600/translation" in up.stdout and "http://127.0.0.1:3000" in up.stdout

    down = make("dev-down", "DEV_VOLUMES=1", compose_command=str(stub))
    assert down.returncode == 0 and log.read_text().splitlines()[-1].endswith("|down --remove-orphans --volumes")

    missing = make("dev", compose_command="false")
    assert missing.returncode != 0 and "needs Docker with the compose plugin" in missing.stderr


# --- traces: the service -> the OpenTelemetry collector -> Jaeger -----------------------------------------


def collector_config(tmp_path: Path) -> dict:
    """The collector's config as the container reads it (its --config flag, through the bind mount)."""
    (flag,) = [arg for arg in service("otel-collector")["command"] if arg.startswith("--config=")]
    return yaml.safe_load(container_path("otel-collector", flag.partition("=")[2], tmp_path).read_text())


def test_the_service_sends_its_spans_to_the_collector_over_otlp_http(tmp_path, monkeypatch):
    from service.tracing import DEFAULT_SERVICE_NAME, Tracing

    environment = service("translation")["environment"]
    url = urllib.parse.urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert url.scheme == "http" and url.hostname == "otel-collector" and url.path in ("", "/")
    assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert environment["OTEL_SERVICE_NAME"] == DEFAULT_SERVICE_NAME
    # The port is the one the collector's OTLP receiver listens on for HTTP, on every interface of its container.
    host, _, port = collector_config(tmp_path)["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rpartition(":")
    assert host == "0.0.0.0" and url.port == int(port)
    # The service's own tracing setup takes this environment (the SDK's exporter reads os.environ itself).
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("OTEL_"):
            monkeypatch.setenv(name, value)
    tracing = Tracing.from_environment(os.environ)
    try:
        assert tracing is not None and tracing.exporter_name == "otlp"
    finally:
        tracing.shutdown()


def test_the_collector_pipeline_references_only_defined_components(tmp_path):
    assert service("otel-collector")["image"] == COLLECTOR_IMAGE, \
        "a new collector version: check COLLECTOR_COMPONENTS (tests/otel_collector.py) against its distribution's manifest"
    config = collector_config(tmp_path)
    check_pipelines(config)
    pipelines = config["service"]["pipelines"]
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"] and 0 < limiter["spike_limit_mib"] < limiter["limit_mib"]
    # Exported to Jaeger, over OTLP/gRPC on the port Jaeger receives it on, and to the log (debug).
    exporters = pipelines["traces"]["exporters"]
    assert "debug" in exporters
    (jaeger,) = [config["exporters"][name] for name in exporters if name.split("/")[0] in ("otlp_grpc", "otlp")]
    host, _, port = jaeger["endpoint"].rpartition(":")
    assert host == "jaeger" and host in compose()["services"] and int(port) == JAEGER_OTLP_PORTS["grpc"]
    assert jaeger["tls"]["insecure"] is True, "plain gRPC on the compose network"


def test_the_collector_publishes_otlp_http_only_and_on_loopback(tmp_path):
    config = collector_config(tmp_path)
    protocols = config["receivers"]["otlp"]["protocols"]
    listening = {name: int(spec["endpoint"].rpartition(":")[2]) for name, spec in protocols.items()}
    assert listening == {"grpc": 4317, "http": 4318}
    # 4318 on the host's loopback (a service run with make serve can trace into the stack); 4317 only inside.
    assert published("otel-collector") == [("127.0.0.1", PORTS["otel-collector"], listening["http"])]
    assert [target for _, target in bind_mounts("otel-collector")] == ["/etc/otelcol/config.yaml"]
    assert all(mount.endswith(":ro") for mount in service("otel-collector")["volumes"])
