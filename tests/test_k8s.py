"""The Kubernetes manifests, offline: every overlay renders with `kubectl kustomize`, validates
against the Kubernetes API schemas (kubernetes-validate, strict), and keeps the deployment
policies of docs/deployment.md: per hardware flavour (cpu, gpu), per environment (dev, staging,
prod), the recommended labels, and the Fluent Bit log pipeline. No cluster is needed.

Without kubectl the rendering tests skip with a reason; with CI set they fail instead.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import subprocess
from datetime import datetime

import pytest
import yaml

import service
from service.identity import Caller, TrustedProxies
from service.logs import JsonFormatter
from service.openapi import openapi_document
from service.settings import Settings
from tests.k8s_helpers import (
    GPU_OVERLAYS,
    K8S,
    MANIFEST_IMAGE,
    NAMESPACE,
    RECOMMENDED_LABELS,
    ROOT,
    config_map,
    container_env,
    fluent_bit_config,
    fluent_bit_matches,
    one,
    pods,
    public_prefixes,
    quantity,
    render,
    render_dir,
    require_tool,
    selects,
    server_container,
    server_deployment,
    tolerates,
    validate_strictly,
    workloads,
)

ENVIRONMENTS = ("dev", "staging", "prod")
OVERLAYS = ("cpu", "gpu", "cpu-full", "monitoring", "istio", "tracing", *ENVIRONMENTS)
# The overlays of the service behind the Ingress (istio replaces it with the Istio gateway: tests/test_istio.py).
SERVICE_OVERLAYS = ("cpu", "gpu", "cpu-full", "tracing", *ENVIRONMENTS)
# The overlays with the OpenTelemetry collector beside the service (tests/test_tracing_deploy.py checks it).
TRACING_OVERLAYS = ("tracing",)
# app.kubernetes.io/instance per overlay: the environments name themselves, the flavours are "translation".
INSTANCES = {"dev": "translation-dev", "staging": "translation-staging", "prod": "translation-prod"}
PORT = 9527
LOGGING_NAMESPACE = "logging"
# Endpoints that stay inside the cluster: the probes (kubelet) and /metrics (Prometheus, admitted by the NetworkPolicy).
INTERNAL_PATHS = {"/healthz", "/readyz", "/metrics"}
# Requests below the Ingress's Prefix paths that must reach the service: assets, and LibreTranslate's API as its
# clients call it (a base URL ending in "/" joined with "/translate" doubles the slash; service/libretranslate.py).
PUBLIC_REQUESTS = (
    "/static/app.js", "/docs/swagger-ui.css", "/libretranslate/translate", "/libretranslate//translate",
    "/libretranslate/detect", "/libretranslate/languages",
)  # fmt: skip
# ingress-nginx annotations that change what a path matches or where it goes: regular-expression paths (use-regex,
# and rewrite-target, which implies it: case-insensitive regular expressions for every path of the host, an Exact
# path then matches as a prefix), a redirect of / (app-root), and nginx configuration of its own (snippets).
PATH_CHANGING_ANNOTATIONS = {"use-regex", "rewrite-target", "app-root", "configuration-snippet", "server-snippet"}
# The ingress-nginx controller's Helm values, and the cluster the gpu-based environments run in.
INGRESS_NGINX_VALUES = K8S / "cluster" / "addons" / "values" / "ingress-nginx.yaml"
CLUSTER_CONFIG = K8S / "cluster" / "cluster.yaml"
# The environments that run in k8s/cluster/cluster.yaml, whose pod network is known (the VPC).
EKS_ENVIRONMENTS = ("staging", "prod")
# The pod network of kind, minikube and kubeadm with flannel: the overlays that don't know their cluster must trust it.
COMMON_POD_CIDR = "10.244.0.0/16"
# Objects of other projects we deploy carry their own version (the recommended labels' convention for a
# dependency): app.kubernetes.io/name -> the container whose image tag it must agree with.
THIRD_PARTY = {"redis": "redis", "fluent-bit": "fluent-bit", "opentelemetry-collector": "otel-collector"}


# --- rendering and schema validation -------------------------------------------------------------


def test_every_overlay_directory_is_tested():
    assert sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    """Every object, custom resources included (against k8s/schemas: scripts/validate_manifests.py)."""
    docs = render(overlay)
    assert docs, f"k8s/overlays/{overlay} renders nothing"
    for doc in docs:
        validate_strictly(doc, f"{overlay}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}")


def test_monitoring_resources_find_what_they_watch():
    """What the CRD schemas can't say: each ServiceMonitor scrapes /metrics on a port of the Service it selects
    (where it is rendered next to the service), and each rule is an alert or a recording rule, not both;
    tests/test_monitoring.py checks the rules themselves with promtool."""
    monitors = 0
    for overlay in OVERLAYS:
        docs = render(overlay)
        for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
            monitors += 1
            spec = monitor["spec"]
            assert monitor["metadata"]["namespace"] == NAMESPACE and spec["endpoints"], overlay
            assert all(endpoint["path"] == "/metrics" for endpoint in spec["endpoints"]), overlay
            services = [d for d in docs if d["kind"] == "Service" and selects(spec["selector"], d["metadata"].get("labels", {}))]
            if any(d["kind"] == "Deployment" for d in docs):  # rendered next to the service: it must find it
                assert services, f"{overlay}: the ServiceMonitor selects no Service"
                for endpoint in spec["endpoints"]:
                    assert all(endpoint["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services), overlay
        for rules in (d for d in docs if d["kind"] == "PrometheusRule"):
            for group in rules["spec"]["groups"]:
                assert all(("alert" in rule) != ("record" in rule) for rule in group["rules"]), f"{overlay}: {group['name']}"
    assert monitors, "no overlay renders a ServiceMonitor"


# --- policies of the translation deployment -----------------------------------------------------


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_namespace_enforces_restricted_pod_security(overlay):
    docs = render(overlay)
    namespace = one(docs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in cluster_scoped} <= {NAMESPACE, "monitoring", LOGGING_NAMESPACE}
    # The log agent needs hostPath (privileged namespace): alone there, and only where logs are shipped.
    in_logging = [d for d in docs if d["metadata"].get("namespace") == LOGGING_NAMESPACE]
    assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "fluent-bit" for d in in_logging)
    assert bool(in_logging) == (overlay in ("staging", "prod"))


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
    for pdb in [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "translation"]:
        assert selects(pdb["spec"]["selector"], labels)  # dev has none (test_autoscaler)
    assert selects(one(docs, "NetworkPolicy", "translation")["spec"]["podSelector"], labels)
    service_ports = {p["name"]: p for p in one(docs, "Service", "translation")["spec"]["ports"]}
    assert service_ports["http"]["port"] == PORT and service_ports["http"]["targetPort"] in ("http", PORT)


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_autoscaler(overlay):
    docs = render(overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "translation")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "translation"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    metrics = hpa["spec"]["metrics"]
    custom = [m["pods"] for m in metrics if m["type"] == "Pods"]
    resource = {m["resource"]["name"] for m in metrics if m["type"] == "Resource"}
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if overlay == "dev":
        # A dev cluster has metrics-server but rarely prometheus-adapter; one pod needs no PDB.
        assert (custom, resource, pdbs) == ([], {"cpu"}, [])
        return
    assert [m["metric"]["name"] for m in custom] == ["translation_in_flight_requests"]
    assert custom[0]["target"]["type"] == "AverageValue"
    if overlay in GPU_OVERLAYS:
        assert resource == set(), "GPU pods scale on the custom metric only"
    else:
        assert resource == {"cpu"}
        assert hpa["spec"]["minReplicas"] >= 2
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
    assert cpu_container["image"] == f"{MANIFEST_IMAGE}:{service.__version__}"
    assert gpu_container["image"] == f"{MANIFEST_IMAGE}:{service.__version__}-gpu"
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
    # The collector's OTLP ports where it runs beside the service (test_tracing_deploy.py checks the rule's peers).
    otlp = [("TCP", 4317), ("TCP", 4318)] if overlay in TRACING_OVERLAYS else []
    assert egress_ports == sorted([("TCP", 53), ("TCP", 6379), ("UDP", 53), *otlp]), "DNS, Redis (and the collector) only"
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
    assert not {key.rsplit("/", 1)[1] for key in annotations if key.startswith("nginx.ingress.kubernetes.io/")} & PATH_CHANGING_ANNOTATIONS
    paths = {p["path"]: p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert "/translation" in paths
    assert not INTERNAL_PATHS & set(paths), "the probes and the metrics stay inside"
    assert paths["/"]["pathType"] == "Exact", "the web page only: a Prefix / would route everything, /metrics too"
    for path in paths.values():
        assert path["backend"]["service"] == {"name": "translation", "port": {"name": "http"}}


def _public_paths() -> set[str]:
    """Every path the service documents (its OpenAPI document lists every route), less the internal ones."""
    paths = set(openapi_document(Settings.load(["--model-dir", "unused"], {}), ["en", "fr"])["paths"])
    assert INTERNAL_PATHS <= paths, "the internal endpoints moved: update INTERNAL_PATHS"
    return paths - INTERNAL_PATHS


def _ingress_matches(path: dict, request: str) -> bool:
    """The Ingress API's matching (networking.k8s.io/v1 HTTPIngressPath): Exact, the whole path as it is; Prefix,
    whole path elements split by "/" (a trailing "/" ignored: /static/ matches /static and /static/app.js, not
    /staticx)."""
    if path["pathType"] == "Exact":
        return request == path["path"]
    assert path["pathType"] == "Prefix", path
    prefix = [element for element in path["path"].split("/") if element]
    return [element for element in request.split("/") if element][: len(prefix)] == prefix


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_ingress_routes_every_public_endpoint_and_nothing_internal(overlay):
    ingress = one(render(overlay), "Ingress", "translation")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    exact = {p["path"] for p in paths if p["pathType"] == "Exact"}
    prefix = {p["path"] for p in paths if p["pathType"] == "Prefix"}
    assert len(exact) + len(prefix) == len(paths), "Exact or Prefix, each path once (ImplementationSpecific is ingress-nginx's regex)"
    # Every path the service documents, each Exact, / included: a Prefix / would be a catch-all that reaches /metrics.
    assert exact == _public_paths(), "route every public endpoint (or add it to INTERNAL_PATHS), and only those"
    assert {"/translation", "/detect", "/languages", "/openapi.json", "/"} <= exact
    # Prefix only where everything below is public: the assets, LibreTranslate's API.
    assert prefix == set(public_prefixes()), "a Prefix path only for the prefixes of tests/k8s_helpers.py's public_prefixes"
    assert "/" not in prefix and "defaultBackend" not in ingress["spec"]
    for request in PUBLIC_REQUESTS:
        assert any(_ingress_matches(p, request) for p in paths), f"{request} is not routed"
    for internal in INTERNAL_PATHS:
        for request in (internal, f"{internal}/", f"{internal}/x"):
            routed = [p["path"] for p in paths if _ingress_matches(p, request)]
            assert not routed, f"{request} is routed by {routed}"


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER_CONFIG.read_text())


def _pod_network(overlay: str) -> ipaddress.IPv4Network:
    """Where the ingress controller's pods connect from: the VPC in the EKS cluster (the VPC CNI gives pods VPC
    addresses), else the usual pod network of a small cluster."""
    return ipaddress.ip_network(_cluster()["vpc"]["cidr"] if overlay in EKS_ENVIRONMENTS else COMMON_POD_CIDR)


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_the_service_sees_the_real_client_behind_the_ingress(overlay):
    """Every overlay has the Ingress, so every one needs it: the ingress controller's pods may name the client in
    X-Forwarded-For (per-address limits, the failed-authentication throttle, the request log, and no Retry-After
    hold on the controller's pooled connections), and nobody else may."""
    docs = render(overlay)
    trusted = container_env(docs, server_container(docs))["MT_FORWARDED_ALLOW_IPS"]
    networks = [ipaddress.ip_network(entry.strip()) for entry in trusted.split(",")]  # never "*"
    assert all(network.is_private for network in networks), "trust only private networks (the pod network)"
    pod_network = _pod_network(overlay)
    if overlay in EKS_ENVIRONMENTS:
        assert networks == [pod_network], "narrowed to the cluster's VPC (k8s/cluster/cluster.yaml vpc.cidr)"
    assert any(pod_network.subnet_of(network) for network in networks)
    proxies = TrustedProxies(trusted)
    controller_pod, client = str(pod_network.network_address + 1234), "203.0.113.7"
    # What ingress-nginx sends with k8s/cluster/addons/values/ingress-nginx.yaml: the address it saw, nothing else.
    assert proxies.caller(controller_pod, client.encode()) == Caller(client, proxied=True)
    # Had it appended to the client's header instead (compute-full-forwarded-for), a forged entry is ignored.
    assert proxies.caller(controller_pod, f"198.51.100.1, {client}".encode()) == Caller(client, proxied=True)
    # Anything that is not a trusted proxy is its own address, whatever it sends.
    assert proxies.caller(client, b"198.51.100.1") == Caller(client, proxied=False)
    # Trusting a range is safe only because the NetworkPolicy admits only the controller (and Prometheus) to 9527.
    [rule] = one(docs, "NetworkPolicy", "translation")["spec"]["ingress"]
    admitted = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
    assert admitted == {_ingress_nginx_namespace(), "monitoring"}


def _ingress_nginx_namespace() -> str:
    """The namespace the values file's install command puts the controller in."""
    (namespace,) = set(re.findall(r"helm install ingress-nginx \S+ -n (\S+)", INGRESS_NGINX_VALUES.read_text()))
    return namespace


def test_ingress_nginx_passes_the_client_address():
    """The controller must see the client (externalTrafficPolicy Local, or the PROXY protocol on both sides) and
    pass only what it saw (use-forwarded-headers off: a client's own X-Forwarded-For is not believed)."""
    values = yaml.safe_load(INGRESS_NGINX_VALUES.read_text())["controller"]
    config, service_spec = values["config"], values["service"]
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values are strings: quote them"
    assert config["use-forwarded-headers"] == "false"
    proxy_protocol = config.get("use-proxy-protocol", "false") == "true"
    balancer_proxy_protocol = service_spec.get("annotations", {}).get("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol")
    assert proxy_protocol == (balancer_proxy_protocol == "*"), "the PROXY protocol on both sides or on neither"
    assert service_spec["type"] == "LoadBalancer"
    assert service_spec.get("externalTrafficPolicy") == "Local" or proxy_protocol, "else nodes rewrite the client's address"
    # It runs on the system nodes of k8s/cluster/cluster.yaml, at most one pod per node and at least two.
    (system,) = [group for group in _cluster()["managedNodeGroups"] if group["name"] == "system"]
    assert values["nodeSelector"].items() <= system["labels"].items() and not system.get("taints")
    assert 2 <= values["replicaCount"] <= system["minSize"]
    assert values["minAvailable"] < values["replicaCount"]
    # The cluster steps install it with these values, where the NetworkPolicy looks for it.
    install = rf"helm install ingress-nginx \S+ -n {_ingress_nginx_namespace()} --create-namespace\s+-f {INGRESS_NGINX_VALUES.relative_to(ROOT)}"
    assert re.search(install, (ROOT / "docs" / "deployment.md").read_text())


def test_the_cluster_enforces_network_policies():
    """The VPC CNI ignores NetworkPolicy objects unless told to enforce them; the trust above depends on them."""
    (cni,) = [addon for addon in _cluster()["addons"] if addon["name"] == "vpc-cni"]
    assert json.loads(cni["configurationValues"])["enableNetworkPolicy"] == "true"


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


# --- labels and version --------------------------------------------------------------------------


def _image_version(docs, container_name: str) -> str:
    """The version in the tag of the image of the container `container_name` ("redis:7.4-alpine@..." -> "7.4")."""
    images = [c["image"] for w in workloads(docs) for c in w["spec"]["template"]["spec"]["containers"] if c["name"] == container_name]
    assert len(set(images)) == 1, images
    return re.match(r"[^:]+:v?([0-9][0-9.]*)", images[0]).group(1).rstrip(".")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_carries_the_recommended_labels(overlay):
    """instance and version on every object, all six recommended labels on every pod template; the
    version is service/__init__.py's __version__, or a dependency's own (Redis, Fluent Bit) from its image."""
    docs = render(overlay)
    instance = INSTANCES.get(overlay, "translation")
    for doc in docs:
        what = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels", {})
        missing = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"} - set(labels)
        assert not missing, f"{what} lacks {sorted(missing)}"
        assert labels["app.kubernetes.io/instance"] == instance, what
        assert labels["app.kubernetes.io/part-of"] == "translation", what
        assert labels["app.kubernetes.io/managed-by"] == "kustomize", what
        name = labels["app.kubernetes.io/name"]
        if name in THIRD_PARTY:
            assert labels["app.kubernetes.io/version"] == _image_version(docs, THIRD_PARTY[name]), what
        else:
            assert name == "translation", what
            assert labels["app.kubernetes.io/version"] == service.__version__, what
    for workload in workloads(docs):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert set(RECOMMENDED_LABELS) <= set(template_labels), f"{overlay}: {workload['metadata']['name']}'s pod template"
        assert {k: template_labels[k] for k in RECOMMENDED_LABELS} == {k: workload["metadata"]["labels"][k] for k in RECOMMENDED_LABELS}


def _selectors(node, path=""):
    """Every label selector in an object: (where, the labels it requires)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("selector", "podSelector", "labelSelector") and isinstance(value, dict):
                yield f"{path}.{key}", value.get("matchLabels", value if key == "selector" and "matchLabels" not in value else {})
            yield from _selectors(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _selectors(item, f"{path}[{index}]")


# The selectors as they were before the recommended labels: a Deployment's selector is immutable, and one
# that named the version or the instance would orphan the running pods at the next release.
SELECTORS = {
    ("Deployment", "translation"): {"app.kubernetes.io/name": "translation", "app.kubernetes.io/component": "server"},
    ("Deployment", "redis"): {"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": "cache"},
    ("DaemonSet", "fluent-bit"): {"app.kubernetes.io/name": "fluent-bit", "app.kubernetes.io/component": "logging"},
    ("Deployment", "otel-collector"): {"app.kubernetes.io/name": "opentelemetry-collector", "app.kubernetes.io/component": "tracing"},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_name_only_what_never_changes(overlay):
    docs = render(overlay)
    for workload in workloads(docs):
        key = (workload["kind"], workload["metadata"]["name"])
        assert workload["spec"]["selector"] == {"matchLabels": SELECTORS[key]}, f"{overlay}: {key} selector changed"
    found = 0
    for doc in docs:
        for where, labels in _selectors(doc.get("spec", {})):
            found += 1
            volatile = set(labels) & {
                "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
            }
            assert not volatile, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} spec{where} selects on {sorted(volatile)}"
    assert found >= (1 if overlay == "monitoring" else 4)


# --- environments --------------------------------------------------------------------------------


def _environment(name: str) -> dict:
    """What differs between the environments, read from the rendered overlay."""
    docs = render(name)
    container = server_container(docs)
    env = container_env(docs, container)
    hpa = one(docs, "HorizontalPodAutoscaler", "translation")
    pod = server_deployment(docs)["spec"]["template"]["spec"]
    logging_env = config_map(docs, "fluent-bit-env")["data"] if any(d["kind"] == "DaemonSet" for d in docs) else None
    return {
        "tag": container["image"].rsplit(":", 1)[1],
        "log_level": env["MT_LOG_LEVEL"],
        "api_keys": "MT_API_KEYS_FILE" in env,
        "redis": any(d["kind"] == "Deployment" and d["metadata"]["name"] == "redis" for d in docs),
        "monitoring": any(d["kind"] == "ServiceMonitor" for d in docs),
        "gpus": quantity(container["resources"]["limits"].get("nvidia.com/gpu", 0)),
        "cpu": quantity(container["resources"]["limits"]["cpu"]),
        "memory": quantity(container["resources"]["limits"]["memory"]),
        "replicas": (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]),
        "pdb": [d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"],
        "zones": [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"],
        "host": one(docs, "Ingress", "translation")["spec"]["rules"][0]["host"],
        "logs": logging_env,
        "namespace": server_deployment(docs)["metadata"]["namespace"],
    }


def test_environments_differ_where_real_environments_do():
    dev, staging, prod = (_environment(name) for name in ENVIRONMENTS)
    # One environment per cluster, each in the namespace `make deploy` and the runbooks assume.
    assert dev["namespace"] == staging["namespace"] == prod["namespace"] == NAMESPACE
    # dev: small CPU pod(s) for one developer, debug logs, keys off, nothing shared.
    assert dev["tag"] == "main" and dev["log_level"] == "debug"
    assert not dev["api_keys"] and not dev["redis"] and not dev["monitoring"] and dev["logs"] is None
    assert dev["gpus"] == 0 and dev["replicas"] == (1, 2) and dev["pdb"] == []
    assert (dev["cpu"], dev["memory"]) < (prod["cpu"], prod["memory"])
    # staging and prod: the same pods on GPUs with every production component, at different scales.
    for environment in (staging, prod):
        assert environment["log_level"] == "info" and environment["api_keys"] and environment["redis"]
        assert environment["monitoring"] and environment["logs"] is not None and environment["gpus"] == 1
    assert (staging["cpu"], staging["memory"], staging["gpus"]) == (prod["cpu"], prod["memory"], prod["gpus"])
    assert staging["tag"] == "main-gpu" and prod["tag"] == f"{service.__version__}-gpu"
    assert staging["replicas"][0] < prod["replicas"][0] and staging["replicas"][1] < prod["replicas"][1]
    # prod keeps at least two pods through a drain, and spreads over zones (spot is reclaimed per zone).
    (pdb,) = prod["pdb"]
    assert prod["replicas"][0] - pdb["maxUnavailable"] >= 2
    assert [c["whenUnsatisfiable"] for c in prod["zones"]] == ["ScheduleAnyway"] and staging["zones"] == []
    # Each environment its own host name, log group and retention.
    assert len({dev["host"], staging["host"], prod["host"]}) == 3 and prod["host"] == "translation.example.com"
    assert staging["logs"]["LOG_GROUP_NAME"] == "/translation/staging" and prod["logs"]["LOG_GROUP_NAME"] == "/translation/prod"
    assert int(staging["logs"]["LOG_RETENTION_DAYS"]) < int(prod["logs"]["LOG_RETENTION_DAYS"])


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_environment_builds_on_its_hardware_overlay(name):
    """dev on cpu, staging and prod on gpu: the engine settings are the hardware overlay's."""
    base = "cpu" if name == "dev" else "gpu"
    env, base_env = (container_env(render(o), server_container(render(o))) for o in (name, base))
    assert (env["MT_DEVICE"], env["MT_COMPUTE_TYPE"]) == (base_env["MT_DEVICE"], base_env["MT_COMPUTE_TYPE"])
    if base == "gpu":
        assert server_deployment(render(name))["spec"]["template"]["spec"]["nodeSelector"] == \
            server_deployment(render("gpu"))["spec"]["template"]["spec"]["nodeSelector"]


# --- log shipping (components/logging) -----------------------------------------------------------

# The service's log lines (service/logs.py): the keys every line has, and those the request log adds.
REQUEST_FIELDS = {"request_id": "3f2a9c", "client": "team-a", "records": 2, "from_lang": "en", "to_lang": "fr",
                  "status": 200, "latency_ms": 12.5}
# The CRI log format, as Fluent Bit's built-in "cri" parser reads it (time stream partial-flag log).
CRI_LINE = re.compile(r"^(?P<time>[^ ]+) (?P<stream>stdout|stderr) (?P<_p>[FP]) (?P<log>.*)$")


def _service_log_lines() -> list[str]:
    """Lines as the service writes them: a request log line, a plain warning, an error with a traceback."""
    formatter = JsonFormatter()
    request = logging.LogRecord("service.requests", logging.INFO, __file__, 1, "request", None, None)
    request.fields = dict(REQUEST_FIELDS)
    warning = logging.LogRecord("service.batcher", logging.WARNING, __file__, 1, "batch of %d took %.1f s", (3, 2.5), None)
    try:
        raise RuntimeError("engine failed")
    except RuntimeError:
        import sys

        failure = logging.LogRecord("service.app", logging.ERROR, __file__, 1, "unexpected error", None, sys.exc_info())
    return [formatter.format(record) for record in (request, warning, failure)]


def _parse_as_fluent_bit(parser: dict, line: str) -> tuple[dict, datetime]:
    """What the pipeline makes of one container log line: the cri parser, then the parser filter's JSON parser
    with its time_key and time_format (Fluent Bit's %L, fractional seconds, is Python's %f)."""
    cri = CRI_LINE.match(f"2026-08-22T13:06:00.123456789Z stdout F {line}").groupdict()
    assert parser["format"] == "json"
    record = json.loads(cri["log"])
    stamp = datetime.strptime(record[parser["time_key"]], parser["time_format"].replace("%L", "%f"))
    if parser.get("time_keep") in (False, "off"):
        del record[parser["time_key"]]
    # reserve_data: the other keys of the line stay beside the fields; the parsed key (log) goes.
    merged = {key: value for key, value in cri.items() if key != "log"}
    merged.update(record)
    return merged, stamp


def _pipeline(docs) -> tuple[dict, dict, dict]:
    main, output = fluent_bit_config(docs)
    return main, main["pipeline"], output["pipeline"]


def test_fluent_bit_parses_the_lines_the_service_writes():
    """Real lines from service/logs.py through the parser that fluent-bit.yaml defines: every field the service
    writes comes out as a field with its JSON type, and the service's time becomes the record's timestamp."""
    main, pipeline, _ = _pipeline(render("prod"))
    (parser,) = [p for p in main["parsers"] if p["name"] == "translation_json"]
    (parser_filter,) = [f for f in pipeline["filters"] if f["name"] == "parser"]
    assert parser_filter["parser"] == "translation_json"
    assert parser_filter["key_name"] == "log", "the cri/docker parsers leave the line in `log`"
    assert parser_filter["reserve_data"] in (True, "on"), "keep stream and the Kubernetes keys beside the fields"
    lines = _service_log_lines()
    for line in lines:
        written = json.loads(line)
        record, stamp = _parse_as_fluent_bit(parser, line)
        assert parser["time_key"] in written, "the service must write the parser's time_key"
        assert stamp == datetime.strptime(written["time"], "%Y-%m-%dT%H:%M:%S.%fZ"), "the service's time, to the millisecond"
        for key, value in written.items():
            if key != parser["time_key"]:
                assert record[key] == value, f"{key} lost or changed by the pipeline"
    request, _ = _parse_as_fluent_bit(parser, lines[0])
    assert {"level", "logger", "message", *REQUEST_FIELDS} <= set(request)
    assert isinstance(request["status"], int) and isinstance(request["latency_ms"], float)
    assert "Traceback" in _parse_as_fluent_bit(parser, lines[2])[0]["exception"]
    # No filter drops a field the service writes.
    for step in pipeline["filters"]:
        removed = {step.get("remove")} if step["name"] == "modify" else set()
        assert not removed & ({"time", "level", "logger", "message", "exception", "stream"} | set(REQUEST_FIELDS))


def test_fluent_bit_tails_only_the_translation_server():
    """The input's path matches the server containers' log files (named <pod>_<namespace>_<container>-<id>.log
    by the kubelet) and no other pod's; every filter and the output match the input's tag."""
    docs = render("prod")
    main, pipeline, output = _pipeline(docs)
    (tail,) = pipeline["inputs"]
    assert tail["name"] == "tail" and set(tail["multiline.parser"].replace(" ", "").split(",")) == {"cri", "docker"}
    server = server_deployment(docs)

    def file_of(pod: str, namespace: str, container: str) -> str:
        return f"/var/log/containers/{pod}_{namespace}_{container}-0123456789abcdef.log"

    ours = file_of(f"{server['metadata']['name']}-6d4f9c7b8-x2x9z", server["metadata"]["namespace"], server_container(docs)["name"])
    assert fluent_bit_matches(tail["path"], ours)
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if workload is not server:
                other = file_of(f"{workload['metadata']['name']}-5f7d-abcde", workload["metadata"]["namespace"], container["name"])
                assert not fluent_bit_matches(tail["path"], other), other
    assert not fluent_bit_matches(tail["path"], file_of("translation-6d4f-x", "default", "server"))
    tag = tail["tag"].replace("*", ours.replace("/", ".")[1:])
    (kubernetes,) = [f for f in pipeline["filters"] if f["name"] == "kubernetes"]
    assert tag.startswith(kubernetes["kube_tag_prefix"]) and tag[len(kubernetes["kube_tag_prefix"]):] == ours.rsplit("/", 1)[1]
    assert all(fluent_bit_matches(step["match"], tag) for step in pipeline["filters"] + output["outputs"])
    assert main["includes"] == ["output.yaml"]


def _variables(node) -> set[str]:
    """The ${NAME} variables a parsed configuration reads (in values; comments are not read)."""
    if isinstance(node, dict):
        return set().union(*(_variables(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_variables(item) for item in node))
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", str(node)))


@pytest.mark.parametrize("backend", ["cloudwatch", "loki", "elasticsearch"])
def test_log_backend_is_switched_by_a_component(backend, tmp_path):
    """prod ships to CloudWatch; listing logging/loki or logging/elasticsearch after the logging component
    switches output.yaml alone. Each renders and validates, and every ${VAR} the configuration reads is set."""
    if backend == "cloudwatch":
        docs = render("prod")
    else:
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            # kustomize takes relative paths only.
            "resources": [os.path.relpath(K8S / "overlays" / "prod", tmp_path)],
            "components": [os.path.relpath(K8S / "components" / "logging" / backend, tmp_path)],
        }))
        docs = render_dir(tmp_path)
    for doc in docs:
        validate_strictly(doc, f"prod + {backend}: {doc['kind']}/{doc['metadata']['name']}")
    _, _, output = _pipeline(docs)
    (sink,) = output["outputs"]
    assert sink["name"] == {"cloudwatch": "cloudwatch_logs", "loki": "loki", "elasticsearch": "es"}[backend]
    daemonset = one(docs, "DaemonSet", "fluent-bit")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    defined = set(container_env(docs, container))
    secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    data = config_map(docs, "fluent-bit-config")["data"]
    used = _variables([yaml.safe_load(data["fluent-bit.yaml"]), yaml.safe_load(data["output.yaml"])])
    if backend == "elasticsearch":  # credentials from a Secret created out of band, never from a ConfigMap
        assert secrets == ["fluent-bit-elasticsearch"] and {"ES_USER", "ES_PASSWORD"} <= used
        used -= {"ES_USER", "ES_PASSWORD"}
    else:
        assert secrets == []
    assert used and used <= defined, f"unset: {sorted(used - defined)}"
    if backend == "loki":  # stream labels: low-cardinality fields the service writes, never request_id
        labels = dict(item.strip().split("=", 1) for item in sink["labels"].split(","))
        assert labels["level"] == "$level" and not {"request_id", "client"} & set(labels)
    if backend == "cloudwatch":
        assert sink["log_group_name"] == "${LOG_GROUP_NAME}" and "$kubernetes['pod_name']" in sink["log_stream_template"]


def test_fluent_bit_daemonset():
    """On every node (the GPU nodes' taint included), reading /var/log only, with read-only API access, the
    configuration mounted where its command reads it, in a namespace of its own."""
    docs = render("prod")
    daemonset = one(docs, "DaemonSet", "fluent-bit")
    assert daemonset["metadata"]["namespace"] == LOGGING_NAMESPACE
    namespace = one(docs, "Namespace", LOGGING_NAMESPACE)["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "privileged"  # hostPath
    spec = daemonset["spec"]["template"]["spec"]
    gpu_taint = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}  # k8s/cluster/cluster.yaml
    assert tolerates(spec["tolerations"], gpu_taint)
    (container,) = spec["containers"]
    assert container["image"].startswith("cr.fluentbit.io/fluent/fluent-bit:") and not container["image"].endswith(":latest")
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/var/log"]["name"]]["hostPath"]["path"] == "/var/log" and mounts["/var/log"]["readOnly"] is True
    config = mounts["/fluent-bit/etc"]
    assert volumes[config["name"]]["configMap"]["name"] == config_map(docs, "fluent-bit-config")["metadata"]["name"]
    assert container["args"] == ["--config=/fluent-bit/etc/fluent-bit.yaml"]
    main, pipeline, _ = _pipeline(docs)
    (tail,) = pipeline["inputs"]
    state = mounts["/var/lib/fluent-bit"]
    assert tail["db"].startswith(state["mountPath"] + "/") and "hostPath" in volumes[state["name"]], "offsets must outlive the pod"
    assert main["service"]["grace"] < spec["terminationGracePeriodSeconds"]
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert main["service"]["http_server"] in (True, "on") and main["service"]["health_check"] in (True, "on")
    assert {p["port"] for p in probes.values()} == {"http"} and container["ports"][0]["containerPort"] == main["service"]["http_port"]
    # RBAC: the kubernetes filter reads pods and namespaces, nothing more.
    service_account = spec["serviceAccountName"]
    binding = one(docs, "ClusterRoleBinding", "translation-fluent-bit")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": LOGGING_NAMESPACE}]
    role = one(docs, "ClusterRole", binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}]
    assert one(docs, "ServiceAccount", service_account)["metadata"]["namespace"] == LOGGING_NAMESPACE


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
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert server_container(docs)["image"] == "registry.example/team/mt:sha-1234567-gpu"

