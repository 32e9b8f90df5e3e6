"""The tracing deployment, offline: k8s/components/tracing (an OpenTelemetry collector) through the overlay
k8s/overlays/tracing. It renders with `kubectl kustomize` and validates strictly (kubernetes-validate, the
CLI `make k8s-validate` runs); the service's OTEL_* environment points at the collector's Service, on the
port its OTLP/HTTP receiver listens on, and the service's own tracing setup accepts it; the collector's
pipeline references only components it defines, all of them in the image's distribution; the
NetworkPolicies admit the service's spans to the collector and the collector's to its backend; the
collector's pod is locked down like the service's, probed on its health_check extension, and labelled.

Without kubectl the tests skip with a reason; with CI set they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import yaml

from tests.k8s_helpers import (
    K8S,
    KUBERNETES_VERSION,
    NAMESPACE,
    RECOMMENDED_LABELS,
    ROOT,
    config_map,
    container_env,
    one,
    quantity,
    render,
    render_dir,
    require_tool,
    selects,
    server_container,
    server_deployment,
    validate_strictly,
)
from tests.otel_collector import COLLECTOR_VERSION, check_pipelines

OVERLAY = "tracing"
COMPONENT = K8S / "components" / "tracing"
COLLECTOR = "otel-collector"
COLLECTOR_LABELS = {"app.kubernetes.io/name": "opentelemetry-collector", "app.kubernetes.io/component": "tracing"}
ENV_REFERENCE = re.compile(r"\$\{env:(\w+)\}")


def docs():
    return render(OVERLAY)


def collector_deployment(rendered=None) -> dict:
    return one(rendered or docs(), "Deployment", COLLECTOR)


def collector_container(rendered=None) -> dict:
    (container,) = collector_deployment(rendered)["spec"]["template"]["spec"]["containers"]
    return container


def collector_config(rendered=None) -> dict:
    data = config_map(rendered or docs(), "otel-collector-config")["data"]
    assert set(data) == {"collector.yaml"}
    return yaml.safe_load(data["collector.yaml"])


def collector_env(rendered=None) -> dict[str, str]:
    """What the collector's container gets: envFrom ConfigMaps (by rendered name), then env (downward API
    entries as `fieldRef:<path>`)."""
    rendered = rendered or docs()
    container = collector_container(rendered)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(rendered, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[item["name"]] = f"fieldRef:{field}" if field else item["value"]
    return env


def strings(node) -> list[str]:
    """Every string value in a parsed YAML document (not its comments)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return [node] if isinstance(node, str) else []


def container_ports(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def server_env() -> dict[str, str]:
    return container_env(docs(), server_container(docs()))


def endpoint() -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(server_env()["OTEL_EXPORTER_OTLP_ENDPOINT"])


def admits(rule: dict, labels: dict, port: int) -> bool:
    """Whether one NetworkPolicy rule (ingress `from` or egress `to`) admits pods with `labels` in the policy's
    own namespace on TCP `port`."""
    peers = rule.get("from", rule.get("to"))
    peer_ok = peers is None or any(set(peer) == {"podSelector"} and selects(peer["podSelector"], labels) for peer in peers)
    ports_ok = "ports" not in rule or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in rule["ports"])
    return peer_ok and ports_ok


# --- rendering and validation ------------------------------------------------------------------------------


def test_the_overlay_renders_and_validates_strictly():
    rendered = docs()
    for doc in rendered:
        validate_strictly(doc, f"{OVERLAY}: {doc['kind']}/{doc['metadata']['name']}")
    # And through the kubernetes-validate CLI, on the rendered overlay as a whole. (`make k8s-validate` renders
    # every kustomization under k8s/, this overlay included.)
    validator = Path(os.environ.get("KUBERNETES_VALIDATE", ROOT / ".venv" / "bin" / "kubernetes-validate"))
    if not validator.exists():
        validator = Path(shutil.which("kubernetes-validate") or validator)
    kubectl = require_tool("kubectl")
    manifest = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / OVERLAY)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    result = subprocess.run([str(validator), "--strict", "--quiet", "-k", KUBERNETES_VERSION, "-"], input=manifest,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_overlay_is_the_cpu_flavour_plus_the_collector():
    def names(rendered) -> set[tuple[str, str]]:
        return {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])) for d in rendered}

    added = names(docs()) - names(render("cpu"))
    assert added == {("ServiceAccount", COLLECTOR), ("Deployment", COLLECTOR), ("Service", COLLECTOR),
                     ("NetworkPolicy", COLLECTOR), ("ConfigMap", "otel-collector-config"), ("ConfigMap", "otel-collector-env")}
    assert names(render("cpu")) <= names(docs())
    # The translation server is the cpu flavour's, with the OpenTelemetry variables added and nothing else.
    cpu, traced = server_container(render("cpu")), server_container(docs())
    assert {k: v for k, v in traced.items() if k != "env"} == {k: v for k, v in cpu.items() if k != "env"}
    assert {item["name"] for item in traced["env"]} - {item["name"] for item in cpu.get("env", [])} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
        "K8S_POD_NAME", "K8S_NAMESPACE_NAME", "K8S_NODE_NAME",
    }


# --- the service -> the collector ----------------------------------------------------------------------------


def test_the_service_exports_to_the_collector_service_on_its_otlp_http_port():
    from service.tracing import DEFAULT_SERVICE_NAME

    rendered = docs()
    env = server_env()
    url = endpoint()
    service = one(rendered, "Service", COLLECTOR)
    # http://<service>.<namespace>.svc:<port>: the Service's DNS name, in the namespace it is created in.
    assert url.scheme == "http" and url.path in ("", "/")
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert service["metadata"]["namespace"] == server_deployment(rendered)["metadata"]["namespace"] == NAMESPACE
    # OTLP over HTTP, so the port is the Service's otlp-http port, which leads to the container port the OTLP
    # receiver's http protocol listens on.
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    ports = {port["port"]: port for port in service["spec"]["ports"]}
    assert url.port in ports and ports[url.port]["name"] == "otlp-http"
    target = ports[url.port]["targetPort"]
    container_port = container_ports(collector_container(rendered)).get(target, target)
    _, receiver_port = host_port(collector_config(rendered)["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    assert container_port == receiver_port
    assert selects({"matchLabels": service["spec"]["selector"]}, collector_deployment(rendered)["spec"]["template"]["metadata"]["labels"])
    assert env["OTEL_SERVICE_NAME"] == DEFAULT_SERVICE_NAME


def expanded_server_env() -> dict[str, str]:
    """The server's env entries as the kubelet expands them: downward API values made up, $(VAR) of an earlier
    entry substituted; fails on a reference to a variable not defined before it (Kubernetes would leave it as is)."""
    fields = {"metadata.name": "translation-6d4f9c7b8-x2x9z", "metadata.namespace": NAMESPACE, "spec.nodeName": "ip-10-0-1-2"}
    env: dict[str, str] = {}
    for item in server_container(docs())["env"]:
        if "valueFrom" in item:
            field = item["valueFrom"].get("fieldRef", {}).get("fieldPath")
            env[item["name"]] = fields.get(field, "from-a-secret")
            continue

        references = re.findall(r"\$\((\w+)\)", item["value"])
        undefined = [name for name in references if name not in env]
        assert not undefined, f"{item['name']} uses $({undefined[0]}) before it is defined"
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], item["value"])
    return env


def test_the_service_accepts_the_environment_and_names_its_pod(monkeypatch):
    from opentelemetry.sdk.resources import Resource

    from service.tracing import Tracing

    env = expanded_server_env()
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    otel = {name: value for name, value in env.items() if name.startswith("OTEL_")}
    for name, value in otel.items():
        monkeypatch.setenv(name, value)  # the SDK's exporters and Resource read os.environ themselves
    tracing = Tracing.from_environment(os.environ)
    try:
        assert tracing is not None and tracing.exporter_name == "otlp"
    finally:
        tracing.shutdown()
    attributes = Resource.create().attributes
    assert attributes["service.name"] == env["OTEL_SERVICE_NAME"]
    assert attributes["k8s.pod.name"] == "translation-6d4f9c7b8-x2x9z"
    assert attributes["k8s.namespace.name"] == NAMESPACE and attributes["k8s.node.name"] == "ip-10-0-1-2"


# --- the collector's configuration ---------------------------------------------------------------------------


def test_the_collector_pipeline_references_only_defined_components_of_its_distribution():
    config = collector_config()
    check_pipelines(config)
    service = config["service"]
    assert "extensions" in service
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"] and 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 90
    # The default debug exporter, and the backend's otlp exporter.
    exporters = service["pipelines"]["traces"]["exporters"]
    assert "debug" in exporters and any(name.split("/")[0] in ("otlp_grpc", "otlp") for name in exporters)


def test_the_collector_image_is_the_version_checked():
    image = collector_container()["image"]
    assert image == f"otel/opentelemetry-collector:{COLLECTOR_VERSION}", "update COLLECTOR_COMPONENTS for a new version"
    labels = collector_deployment()["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == COLLECTOR_VERSION


def test_every_variable_the_config_reads_is_given_to_the_collector():
    rendered = docs()
    env = collector_env(rendered)
    config = collector_config(rendered)
    referenced = set(ENV_REFERENCE.findall(" ".join(strings(config))))
    assert referenced == {"MY_POD_IP", "TRACES_BACKEND_ENDPOINT", "TRACES_BACKEND_INSECURE"}
    assert referenced <= set(env), f"not in the collector's environment: {referenced - set(env)}"
    assert env["MY_POD_IP"] == "fieldRef:status.podIP"
    # The values to change (the ConfigMap otel-collector-env): a host:port, and a boolean.
    backend_host, backend_port = host_port(env["TRACES_BACKEND_ENDPOINT"])
    assert backend_host and not backend_host.startswith(("http://", "https://")) and 0 < backend_port < 65536
    assert env["TRACES_BACKEND_INSECURE"] in ("true", "false")
    backend = next(spec for name, spec in config["exporters"].items() if name.split("/")[0] == "otlp_grpc")
    assert backend["endpoint"] == "${env:TRACES_BACKEND_ENDPOINT}" and backend["tls"]["insecure"] == "${env:TRACES_BACKEND_INSECURE}"


def test_the_collector_listens_where_the_service_and_the_probes_reach_it():
    rendered = docs()
    config = collector_config(rendered)
    ports = container_ports(collector_container(rendered))
    protocols = config["receivers"]["otlp"]["protocols"]
    # On the pod's address (not the default localhost, unreachable from other pods and from the kubelet).
    for name, protocol in (("otlp-grpc", "grpc"), ("otlp-http", "http")):
        host, port = host_port(protocols[protocol]["endpoint"])
        assert host == "${env:MY_POD_IP}" and ports[name] == port, protocol
    host, health_port = host_port(config["extensions"]["health_check"]["endpoint"])
    assert host == "${env:MY_POD_IP}" and ports["health"] == health_port == 13133
    container = collector_container(rendered)
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == health_port and get["path"] == config["extensions"]["health_check"].get("path", "/")
    # The ConfigMap is mounted where --config reads it.
    (argument,) = [arg for arg in container["args"] if arg.startswith("--config=")]
    (mount,) = container["volumeMounts"]
    assert argument == f"--config={mount['mountPath']}/collector.yaml" and mount["readOnly"] is True
    volumes = {v["name"]: v for v in collector_deployment(rendered)["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == config_map(rendered, "otel-collector-config")["metadata"]["name"]


# --- network policies ----------------------------------------------------------------------------------------


def test_the_network_policies_admit_the_spans_and_nothing_more():
    rendered = docs()
    server_labels = server_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    collector_labels = collector_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    port = endpoint().port
    # Out of the translation pods: to the collector's pods on the endpoint's port (the base allows only DNS and Redis).
    server_policy = one(rendered, "NetworkPolicy", "translation")["spec"]
    assert selects(server_policy["podSelector"], server_labels)
    assert any(admits(rule, collector_labels, port) for rule in server_policy["egress"])
    assert all(rule.get("to") for rule in server_policy["egress"]), "no egress rule of the server may allow every destination"
    added = [rule for rule in server_policy["egress"] if any(selects(peer.get("podSelector", {}), collector_labels) for peer in rule["to"])]
    assert len(added) == 1 and sorted(p["port"] for p in added[0]["ports"]) == [4317, 4318]
    # Into the collector's pods: from the translation pods on the same port; nothing else comes in.
    policy = one(rendered, "NetworkPolicy", COLLECTOR)
    assert policy["metadata"]["namespace"] == server_deployment(rendered)["metadata"]["namespace"], "podSelector peers are same-namespace"
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and selects(spec["podSelector"], collector_labels)
    assert any(admits(rule, server_labels, port) for rule in spec["ingress"])
    assert not any(admits(rule, {"app.kubernetes.io/name": "someone-else"}, port) for rule in spec["ingress"])
    assert all(rule.get("from") for rule in spec["ingress"])
    # Out of the collector: DNS, and the backend's port.
    _, backend_port = host_port(collector_env(rendered)["TRACES_BACKEND_ENDPOINT"])
    egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", backend_port)} <= egress_ports
    assert all(rule.get("ports") for rule in spec["egress"]), "every egress rule of the collector names its ports"


# --- the collector's pod -------------------------------------------------------------------------------------


def test_the_collector_pod_is_locked_down_like_the_service():
    rendered = docs()
    deployment = collector_deployment(rendered)
    spec = deployment["spec"]["template"]["spec"]
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["runAsUser"] == 10001, "the image's own user (its Dockerfile: USER 10001)"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert one(rendered, "ServiceAccount", spec["serviceAccountName"])["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    container = collector_container(rendered)
    assert container["securityContext"] == server_container(rendered)["securityContext"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] and {"cpu", "memory"} <= set(resources["limits"])
    # The Go runtime's soft limit is below the container's, so it collects before the kernel kills it.
    gomemlimit = quantity(container_env(rendered, container)["GOMEMLIMIT"].replace("MiB", "Mi"))
    assert 0.6 * quantity(resources["limits"]["memory"]) <= gomemlimit < quantity(resources["limits"]["memory"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_collector_objects_carry_the_recommended_labels_and_stable_selectors():
    rendered = docs()
    ours = [d for d in rendered if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "opentelemetry-collector"]
    assert {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])) for d in ours} == {
        ("ServiceAccount", COLLECTOR), ("Deployment", COLLECTOR), ("Service", COLLECTOR), ("NetworkPolicy", COLLECTOR),
        ("ConfigMap", "otel-collector-config"), ("ConfigMap", "otel-collector-env"),
    }
    for doc in ours:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "translation" and labels["app.kubernetes.io/part-of"] == "translation"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize" and labels["app.kubernetes.io/version"] == COLLECTOR_VERSION
        assert doc["metadata"]["namespace"] == NAMESPACE
    deployment = collector_deployment(rendered)
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert {k: template[k] for k in RECOMMENDED_LABELS} == {k: deployment["metadata"]["labels"][k] for k in RECOMMENDED_LABELS}
    # Selectors name only what never changes (a Deployment's selector is immutable).
    assert deployment["spec"]["selector"] == {"matchLabels": COLLECTOR_LABELS}
    assert one(rendered, "Service", COLLECTOR)["spec"]["selector"] == COLLECTOR_LABELS
    assert one(rendered, "NetworkPolicy", COLLECTOR)["spec"]["podSelector"] == {"matchLabels": COLLECTOR_LABELS}


# --- the component elsewhere ---------------------------------------------------------------------------------


def test_the_component_adds_to_the_production_overlay_beside_redis(tmp_path):
    """Listed in prod (GPU pods, Redis, API keys, monitoring, logging), it adds its rules to theirs."""
    overlay = tmp_path / "prod-tracing"
    overlay.mkdir()
    relative = Path(os.path.relpath(K8S, overlay))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(relative / "overlays" / "prod")], "components": [str(relative / "components" / "tracing")],
    }))
    rendered = render_dir(overlay)
    names = {item["name"] for item in server_container(rendered)["env"]}
    assert {"MT_REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES"} <= names
    egress = one(rendered, "NetworkPolicy", "translation")["spec"]["egress"]
    assert sorted(p["port"] for rule in egress for p in rule["ports"]) == [53, 53, 4317, 4318, 6379]
    for doc in rendered:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):  # custom resources: tests/test_k8s.py
            validate_strictly(doc, f"prod + tracing: {doc['kind']}/{doc['metadata']['name']}")


def test_the_component_is_documented():
    text = (ROOT / "docs" / "tracing.md").read_text()
    section = text.split("## Deploying a collector", 1)[1]
    for needle in ("k8s/components/tracing", "k8s/overlays/tracing", "TRACES_BACKEND_ENDPOINT", "TRACES_BACKEND_INSECURE",
                   "otel-collector-env", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert needle in section, f"docs/tracing.md, Deploying a collector: {needle}"
    assert (COMPONENT / "kustomization.yaml").read_text().count("TRACES_BACKEND_ENDPOINT") >= 1
