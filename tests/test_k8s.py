"""The Kubernetes manifests, offline: every overlay renders with `kubectl kustomize`, validates
against the Kubernetes API schemas (kubernetes-validate, strict), and keeps the deployment
policies of docs/deployment.md. No cluster is needed.

Without kubectl the rendering tests skip with a reason; with CI set they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu-full", "monitoring")
SERVICE_OVERLAYS = ("cpu", "gpu", "cpu-full")
KUBERNETES_VERSION = "1.33"
NAMESPACE = "translation"
PORT = 9527
MANIFEST_IMAGE = "ghcr.io/example-org/m2m100-ct2-service"
# Custom resources kubernetes-validate has no schema for; _check_custom_resource checks them.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it: scripts/install_system_deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must not skip this test")
        pytest.skip(message)
    return path


@cache
def _render(overlay: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [shutil.which("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> tuple[dict, ...]:
    require_tool("kubectl")
    return _render(overlay)


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_deployment(docs) -> dict:
    return one(docs, "Deployment", "translation")


def server_container(docs) -> dict:
    containers = server_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def container_env(docs, container: dict) -> dict[str, str]:
    """The environment a container gets: its envFrom ConfigMaps, then its env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name)["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def quantity(value) -> float:
    """A Kubernetes quantity as a number: "2" -> 2, "500m" -> 0.5, "4Gi" -> 4 * 2**30."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pods(docs) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] == "Deployment"]


# --- rendering and schema validation -------------------------------------------------------------


def test_every_overlay_directory_is_tested():
    assert sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    from kubernetes_validate import utils as kv

    docs = render(overlay)
    assert docs, f"k8s/overlays/{overlay} renders nothing"
    for doc in docs:
        what = f"{overlay}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            with pytest.raises(kv.SchemaNotFoundError):  # if it ever ships CRD schemas, validate them too
                kv.validate(doc, KUBERNETES_VERSION, strict=True)
            _check_custom_resource(doc, docs)
            continue
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            pytest.fail(f"{what}: unknown kind {doc.get('apiVersion')} {doc.get('kind')}")
        except kv.ValidationError as error:
            pytest.fail(f"{what} is not a valid Kubernetes {KUBERNETES_VERSION} object: {error.message} at {list(error.path)}")


def _check_custom_resource(doc: dict, docs) -> None:
    metadata = doc.get("metadata", {})
    assert metadata.get("name") and metadata.get("namespace") == NAMESPACE
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
        assert spec["endpoints"], "a ServiceMonitor needs endpoints"
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}
            assert endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        services = [d for d in docs if d["kind"] == "Service" and selects(spec["selector"], d["metadata"].get("labels", {}))]
        if any(d["kind"] == "Deployment" for d in docs):  # rendered next to the service: it must find it
            assert services, "the ServiceMonitor selects no Service"
            for endpoint in spec["endpoints"]:
                assert all(endpoint["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services)
    else:  # PrometheusRule; tests/test_monitoring.py checks the rules themselves with promtool
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str)


# --- policies of the translation deployment -----------------------------------------------------


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_namespace_enforces_restricted_pod_security(overlay):
    namespace = one(render(overlay), "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in render(overlay) if d["kind"] != "Namespace"} <= {NAMESPACE, "monitoring"}


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_pod_meets_the_restricted_profile(overlay):
    for name, template in pods(render(overlay)):
        spec = template["spec"]
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            assert context["readOnlyRootFilesystem"] is True, name
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], f"{name}: requests must equal limits (Guaranteed QoS)"
            assert {"cpu", "memory"} <= set(resources["limits"]), name


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_server_pod_security_and_volumes(overlay):
    docs = render(overlay)
    spec = server_deployment(docs)["spec"]["template"]["spec"]
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (10001, 10001, 10001)
    container = server_container(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "read-only root: /tmp must be an emptyDir"
    service_account = one(docs, "ServiceAccount", spec["serviceAccountName"])
    assert service_account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_probes_rollout_and_graceful_shutdown(overlay):
    docs = render(overlay)
    deployment = server_deployment(docs)
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = server_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths = {kind: probe["httpGet"]["path"] for kind, probe in probes.items()}
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert all(ports.get(p["httpGet"]["port"], p["httpGet"]["port"]) == PORT for p in probes.values())
    startup = probes["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 300, "allow 5 minutes for the model to load"

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep"
    pre_stop = float(command[1])
    drain = float(container_env(docs, container)["MT_DRAIN_SECONDS"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 5 <= pre_stop <= 20
    assert grace >= pre_stop + drain + 10, "grace must cover preStop, the drain, and closing the engine"
    assert deployment["spec"]["progressDeadlineSeconds"] >= startup["failureThreshold"] * startup["periodSeconds"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_thread_settings_match_the_cpu_limit(overlay):
    docs = render(overlay)
    container = server_container(docs)
    env = container_env(docs, container)
    cpus = quantity(container["resources"]["limits"]["cpu"])
    assert cpus == int(cpus) >= 1, "a whole number of CPUs, so the engine threads can match it"
    assert int(env["MT_INTER_THREADS"]) * int(env["MT_INTRA_THREADS"]) == cpus
    assert int(env["MT_INTRA_THREADS"]) >= 1, "0 would mean CTranslate2's default of 4 threads"


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_spread_over_nodes(overlay):
    template = server_deployment(render(overlay))["spec"]["template"]
    constraints = template["spec"]["topologySpreadConstraints"]
    by_key = {c["topologyKey"]: c for c in constraints}
    assert "kubernetes.io/hostname" in by_key
    assert selects(by_key["kubernetes.io/hostname"]["labelSelector"], template["metadata"]["labels"])


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_selectors_find_the_server_pods(overlay):
    docs = render(overlay)
    labels = server_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert selects(server_deployment(docs)["spec"]["selector"], labels)
    assert one(docs, "Service", "translation")["spec"]["selector"].items() <= labels.items()
    assert selects(one(docs, "PodDisruptionBudget", "translation")["spec"]["selector"], labels)
    assert selects(one(docs, "NetworkPolicy", "translation")["spec"]["podSelector"], labels)
    service_ports = {p["name"]: p for p in one(docs, "Service", "translation")["spec"]["ports"]}
    assert service_ports["http"]["port"] == PORT and service_ports["http"]["targetPort"] in ("http", PORT)


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_autoscaler(overlay):
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "translation")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "translation"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    metrics = hpa["spec"]["metrics"]
    custom = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [m["metric"]["name"] for m in custom] == ["translation_in_flight_requests"]
    assert custom[0]["target"]["type"] == "AverageValue"
    resource = {m["resource"]["name"] for m in metrics if m["type"] == "Resource"}
    if overlay.startswith("gpu"):
        assert resource == set(), "GPU pods scale on the custom metric only"
    else:
        assert resource == {"cpu"}
    pdb = one(docs, "PodDisruptionBudget", "translation")
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable", 0) < hpa["spec"]["minReplicas"]


def test_adapter_rules_serve_the_autoscaler_metrics():
    """Every Pods metric of every HPA is served by a prometheus-adapter rule we ship, per pod."""
    rules = yaml.safe_load((K8S / "components" / "monitoring" / "adapter-rules.yaml").read_text())["rules"]
    served = {}
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        served[rule.get("name", {}).get("as", series)] = rule
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    for overlay in SERVICE_OVERLAYS:
        hpa = one(render(overlay), "HorizontalPodAutoscaler", "translation")
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served, f"{overlay}: no adapter rule serves it"


def test_cpu_and_gpu_sizing():
    cpu, gpu = render("cpu"), render("gpu")
    cpu_container, gpu_container = server_container(cpu), server_container(gpu)
    cpu_env, gpu_env = container_env(cpu, cpu_container), container_env(gpu, gpu_container)
    assert cpu_container["image"] == f"{MANIFEST_IMAGE}:0.1.0"
    assert gpu_container["image"] == f"{MANIFEST_IMAGE}:0.1.0-gpu"
    assert (cpu_env["MT_DEVICE"], cpu_env["MT_COMPUTE_TYPE"]) == ("cpu", "int8")
    assert (gpu_env["MT_DEVICE"], gpu_env["MT_COMPUTE_TYPE"]) == ("cuda", "float16")
    # Batch sizes and the queue come from the service's per-device defaults, not from the manifests.
    for name in ("MT_MAX_QUEUE", "MT_MAX_BATCH_SIZE", "MT_MAX_BATCH_TOKENS"):
        assert name not in cpu_env and name not in gpu_env
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    gpu_pod = server_deployment(gpu)["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    assert gpu_pod["nodeSelector"], "GPU pods go to GPU nodes"
    assert "tolerations" not in server_deployment(cpu)["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_network_policy(overlay):
    docs = render(overlay)
    policy = one(docs, "NetworkPolicy", "translation")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": PORT}]
    sources = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in ingress["from"]}
    assert sources == {"ingress-nginx", "monitoring"}
    assert all(set(peer) == {"namespaceSelector"} for peer in ingress["from"])
    egress_ports = sorted((p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"])
    assert egress_ports == [("TCP", 53), ("TCP", 6379), ("UDP", 53)], "DNS and Redis only"
    assert all(rule.get("to") for rule in policy["egress"]), "no egress rule may allow every destination"


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_ingress_matches_the_service_limits(overlay):
    docs = render(overlay)
    ingress = one(docs, "Ingress", "translation")
    env = container_env(docs, server_container(docs))
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert quantity(annotations["nginx.ingress.kubernetes.io/proxy-body-size"].replace("m", "Mi")) == int(env["MT_MAX_BODY_BYTES"])
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) <= float(env["MT_DRAIN_SECONDS"])
    paths = {p["path"]: p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert "/translation" in paths
    assert not {"/metrics", "/healthz", "/readyz", "/"} & set(paths), "only the API is public"
    for path in paths.values():
        assert path["backend"]["service"] == {"name": "translation", "port": {"name": "http"}}


def test_redis_component():
    docs = render("cpu-full")
    server = server_container(docs)
    # The URL, with the password, comes from the Secret, not from the ConfigMap.
    assert "MT_REDIS_URL" not in one(docs, "ConfigMap", server["envFrom"][0]["configMapRef"]["name"])["data"]
    (url,) = [item for item in server["env"] if item["name"] == "MT_REDIS_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "translation-redis", "key": "url"}
    service = one(docs, "Service", "redis")
    assert service["metadata"]["namespace"] == "translation"
    assert 6379 in {p["port"] for p in service["spec"]["ports"]}
    redis_pod = one(docs, "Deployment", "redis")["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, redis_pod["metadata"]["labels"])
    # The server's egress rule for Redis and Redis' ingress rule match each other's pods.
    server_labels = server_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    server_egress = [r for r in one(docs, "NetworkPolicy", "translation")["spec"]["egress"] if any(p["port"] == 6379 for p in r["ports"])]
    assert any(selects(peer["podSelector"], redis_pod["metadata"]["labels"]) for r in server_egress for peer in r["to"])
    redis_policy = one(docs, "NetworkPolicy", "redis")["spec"]
    assert selects(redis_policy["podSelector"], redis_pod["metadata"]["labels"])
    assert any(selects(peer["podSelector"], server_labels) for r in redis_policy["ingress"] for peer in r["from"])
    # Without the component there is no Redis and no MT_REDIS_URL.
    assert "MT_REDIS_URL" not in container_env(render("cpu"), server_container(render("cpu")))
    # Third-party images are pinned by digest (ours is set per deploy by `make deploy`).
    (redis_container,) = redis_pod["spec"]["containers"]
    assert re.fullmatch(r"redis:7\.\d+-alpine@sha256:[0-9a-f]{64}", redis_container["image"])
    # A password from the same Secret, and protected mode.
    args = redis_container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--protected-mode") + 1] == "yes"
    secrets = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in redis_container["env"]}
    assert secrets["REDIS_PASSWORD"] == secrets["REDISCLI_AUTH"] == {"name": "translation-redis", "key": "password"}


def test_api_keys_component_mounts_the_secret_where_the_service_reads_it():
    docs = render("cpu-full")
    server = server_container(docs)
    keys_file = container_env(docs, server)["MT_API_KEYS_FILE"]
    (mount,) = [m for m in server["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True and "subPath" not in mount  # a subPath mount would never see a rotation
    volumes = {v["name"]: v for v in server_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "translation-api-keys"
    assert keys_file.rsplit("/", 1)[1] == "api-keys"
    assert "MT_API_KEYS_FILE" not in container_env(render("cpu"), server_container(render("cpu")))  # off by default


def test_monitoring_objects_land_where_their_controllers_look():
    docs = render("monitoring")
    dashboard = one(docs, "ConfigMap", "translation-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboard["data"]) == {"translation.json"}
    adapter = one(docs, "ConfigMap", "prometheus-adapter-translation-rules")
    assert yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "ServiceMonitor", "PrometheusRule"}


# --- mk/deploy.mk --------------------------------------------------------------------------------


def test_make_deploy_sets_the_image_without_editing_k8s(tmp_path):
    """`make deploy` applies the overlay through a generated kustomization that swaps the image."""
    kubectl = require_tool("kubectl")
    require_tool("make")
    stub = tmp_path / "kubectl"
    # Renders what `kubectl apply -k DIR` would apply; ignores `rollout status`.
    stub.write_text(f'#!/bin/sh\nif [ "$1" = apply ]; then exec "{kubectl}" kustomize "$3"; fi\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["make", "-s", "deploy", "OVERLAY=gpu", "IMAGE=registry.example/team/mt", "TAG=sha-1234567", f"KUBECTL={stub}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert server_container(docs)["image"] == "registry.example/team/mt:sha-1234567-gpu"

