"""The Istio component (k8s/components/istio, rendered by k8s/overlays/istio), offline.

Every object validates against Istio 1.30.3's (and cert-manager's, prometheus-operator's) CRD schemas, strictly,
and broken ones are refused. Then what the schemas can't say: the routes are the Ingress's, the timeouts agree with
the service's settings, retries happen only where a request can't have reached a pod (or is a cheap GET), the
connection pool closes idle connections before the service does and never limits below what the pods admit, mTLS is
STRICT and only the gateway may call, the service trusts exactly the sidecar in X-Forwarded-For (checked with the
service's own parser), and Prometheus still gets the metrics with the job the alerts use.

No mesh here: nothing proves that istiod accepts the objects (its webhook checks more than the schemas) or that the
sidecar connects from 127.0.0.6 in a real pod (docs/deployment.md, first-deployment checklist).
"""

from __future__ import annotations

import copy
import math
import re
from functools import cache

import pytest
import yaml

from scripts import validate_manifests
from service.identity import Caller, TrustedProxies
from service.openapi import openapi_document
from service.settings import Settings
from tests.k8s_helpers import (
    K8S,
    KUBERNETES_VERSION,
    NAMESPACE,
    config_map,
    container_env,
    one,
    public_prefixes,
    render,
    require_tool,
    selects,
    server_container,
    server_deployment,
)

OVERLAY = "istio"
HELMFILE = K8S / "cluster" / "addons" / "helmfile.yaml"
SCHEMAS = K8S / "schemas"
ALERTS = K8S / "components" / "monitoring" / "alerts.rules.yml"
ISTIO_KINDS = {
    ("networking.istio.io/v1", "Gateway"), ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"), ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
}  # fmt: skip
# Envoy's retry conditions Istio accepts (istio/istio 1.30.3 pkg/config/validation/validation.go,
# supportedRetryOnPolicies), besides HTTP status codes.
ISTIO_RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}  # fmt: skip
# The conditions under which the request cannot have reached the service: the only ones a costly POST may be retried on.
BEFORE_THE_REQUEST = {"connect-failure", "refused-stream", "reset-before-request"}
# What a cheap, idempotent GET may also be retried on.
IDEMPOTENT = BEFORE_THE_REQUEST | {"reset", "503"}
# Where the sidecar connects to the service from (Istio's inbound passthrough bind addresses, and localhost).
SIDECAR_ADDRESSES = ("127.0.0.6", "::6", "127.0.0.1", "::1")


@cache
def docs() -> tuple[dict, ...]:
    require_tool("kubectl")
    return render(OVERLAY)


def obj(kind: str, name: str | None = None) -> dict:
    return one(docs(), kind, name)


def env() -> dict[str, str]:
    return container_env(docs(), server_container(docs()))


def seconds(duration: str) -> float:
    """An Istio (protobuf) duration: 30s, 1.5s, 500ms, 1m."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"not a duration: {duration!r}"
    return float(match.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def settings(overlay_docs) -> Settings:
    """The service's settings in a rendered overlay, resolved for its device."""
    variables = container_env(overlay_docs, server_container(overlay_docs))
    loaded = Settings.load(["--model-dir", "unused"], {k: v for k, v in variables.items() if k.startswith("MT_")})
    return loaded.for_device("cuda" if variables.get("MT_DEVICE") == "cuda" else "cpu")


def helmfile_release(name: str) -> dict:
    (release,) = [r for r in yaml.safe_load(HELMFILE.read_text())["releases"] if r["name"] == name]
    return release


def ingress() -> dict:
    """The Ingress the component replaces: the same overlay without the component (the cpu flavour)."""
    return one(render("cpu"), "Ingress", "translation")


# The Ingress's path types as the VirtualService's URI matches.
URI_MATCH = {"Exact": "exact", "Prefix": "prefix"}


def ingress_paths() -> set[tuple[str, str]]:
    """The Ingress's paths as (exact | prefix, path)."""
    return {(URI_MATCH[p["pathType"]], p["path"]) for rule in ingress()["spec"]["rules"] for p in rule["http"]["paths"]}


def served(uri: tuple[str, str]) -> frozenset[str]:
    """The methods the service answers at an exact path (its OpenAPI document) or below a prefix."""
    kind, path = uri
    if kind == "prefix":
        return public_prefixes()[path]
    operations = openapi_document(Settings.load(["--model-dir", "unused"], {}), ["en", "fr"])["paths"][path]
    return frozenset(method.upper() for method in operations)


def routes() -> dict[str, tuple[tuple[str, str], frozenset[str], dict]]:
    """The VirtualService's routes by name: the (exact | prefix, path) each matches, the methods of the service's
    that reach it (those it matches, less those an earlier route of the same path took), and the route."""
    found, taken = {}, {}
    for route in obj("VirtualService")["spec"]["http"]:
        uris, restricted = set(), set()
        for match in route["match"]:
            assert set(match) <= {"uri", "method"}, f"{route['name']}: by path (and method) only, as the Ingress"
            ((kind, path),) = match["uri"].items()
            uris.add((kind, path))
            if "method" in match:
                assert set(match["method"]) == {"exact"}, route["name"]
                restricted.add(match["method"]["exact"])
        (uri,) = uris
        assert uri[0] in URI_MATCH.values(), f"{route['name']}: {uri[0]}: exact or prefix, as the Ingress's paths"
        # With a method match in one of them, every match of the route names a method.
        assert not restricted or len(restricted) == len(route["match"]), route["name"]
        reaching = (frozenset(restricted) if restricted else served(uri)) - taken.get(uri, frozenset())
        assert reaching, f"{route['name']}: no method of the service reaches it"
        taken[uri] = taken.get(uri, frozenset()) | reaching
        found[route["name"]] = (uri, reaching, route)
    return found


# --- schemas -------------------------------------------------------------------------------------


def test_the_overlay_validates_against_the_crd_schemas():
    kinds = {(d["apiVersion"], d["kind"]) for d in docs()}
    assert ISTIO_KINDS <= kinds
    assert {("monitoring.coreos.com/v1", "PodMonitor"), ("cert-manager.io/v1", "Certificate")} <= kinds
    for doc in docs():
        errors = validate_manifests.validate_object(doc, KUBERNETES_VERSION, SCHEMAS)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"


def _broken(kind: str, change) -> list[str]:
    doc = copy.deepcopy(obj(kind))
    change(doc)
    return validate_manifests.validate_object(doc, KUBERNETES_VERSION, SCHEMAS)


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("VirtualService", lambda d: d["spec"]["http"][0]["retries"].update(retryOnn="5xx")),  # unknown field
        ("VirtualService", lambda d: d["spec"]["http"][0]["retries"].update(attempts="two")),
        ("VirtualService", lambda d: d["spec"]["http"][0].update(timeouts="30s")),
        ("VirtualService", lambda d: d["spec"].update(http={"name": "x"})),
        ("DestinationRule", lambda d: d["spec"]["trafficPolicy"]["connectionPool"]["http"].update(idleTimout="60s")),
        ("DestinationRule", lambda d: d["spec"]["trafficPolicy"]["loadBalancer"].update(simple="FASTEST")),
        ("DestinationRule", lambda d: d["spec"]["trafficPolicy"]["outlierDetection"].update(maxEjectionPercent="50%")),
        ("PeerAuthentication", lambda d: d["spec"]["mtls"].update(mode="STRICTEST")),
        ("PeerAuthentication", lambda d: d["spec"].update(mTLS={"mode": "STRICT"})),
        ("AuthorizationPolicy", lambda d: d["spec"].update(action="PERMIT")),
        ("Gateway", lambda d: d["spec"]["servers"][0]["tls"].update(mode="STRICT")),
        ("PodMonitor", lambda d: d["spec"].update(podMetricsEndpoints="x")),
        ("Certificate", lambda d: d["spec"].update(dnsName=["a.example.com"])),
        ("VirtualService", lambda d: d.update(apiVersion="networking.istio.io/v1beta2")),  # no schema: an error too
    ],
)
def test_the_schemas_refuse_broken_objects(kind, change):
    assert _broken(kind, change)


# --- routes and timeouts -------------------------------------------------------------------------


def test_the_virtual_service_routes_what_the_ingress_routes():
    service = obj("VirtualService")["spec"]
    routed = {uri for uri, _, _ in routes().values()}
    assert routed == ingress_paths(), "the Ingress's public paths, Exact as exact and Prefix as prefix, no more (not /healthz, /readyz, /metrics)"
    # A path split by method ends with a route for every other method: none gets the gateway's 404.
    last = {uri: route for uri, _, route in routes().values()}
    assert all(all("method" not in match for match in route["match"]) for route in last.values())
    assert routes()["libretranslate-get"][1] == {"GET", "HEAD"} and routes()["libretranslate"][1] == {"POST"}
    assert service["hosts"] == [rule["host"] for rule in ingress()["spec"]["rules"]]
    assert service["gateways"] == [obj("Gateway")["metadata"]["name"]]
    backend = one(docs(), "Service", "translation")
    port = next(p["port"] for p in backend["spec"]["ports"] if p["name"] == "http")
    for _, _, route in routes().values():
        (destination,) = route["route"]
        assert destination["destination"] == {"host": f"translation.{NAMESPACE}.svc.cluster.local", "port": {"number": port}}
    assert "Ingress" not in {d["kind"] for d in docs()}, "the gateway replaces the Ingress"


def test_timeouts_agree_with_the_service_and_the_ingress():
    annotations = ingress()["metadata"]["annotations"]
    read_timeout = float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    drain = float(env()["MT_DRAIN_SECONDS"])
    for path, (_, reaching, route) in routes().items():
        timeout = seconds(route["timeout"])
        assert 0 < timeout <= drain, f"{path}: a request in flight at SIGTERM must finish before the pod stops"
        if reaching & {"POST"}:
            assert timeout == read_timeout, f"{path}: as long as through the Ingress"
        else:
            assert timeout <= read_timeout
            retries = route["retries"]
            assert seconds(retries["perTryTimeout"]) * (retries["attempts"] + 1) <= timeout, f"{path}: every try fits"


def test_retries_only_where_they_are_safe():
    for path, (_, reaching, route) in routes().items():
        retries = route["retries"]  # written out: Istio's default would retry on 503
        conditions = set(retries["retryOn"].split(","))
        assert all(c in ISTIO_RETRY_ON or c.isdigit() for c in conditions), f"{path}: {conditions - ISTIO_RETRY_ON}"
        assert 1 <= retries["attempts"] <= 2
        assert not conditions & {"5xx", "gateway-error", "retriable-4xx", "envoy-ratelimited", "429", "retriable-status-codes"}
        if reaching & {"POST"}:
            # A costly POST that reached a pod is never sent to a second one, and a slow one is not cut short.
            assert conditions <= BEFORE_THE_REQUEST, f"{path}: {conditions - BEFORE_THE_REQUEST}"
            assert "perTryTimeout" not in retries
        else:
            assert reaching <= {"GET", "HEAD"} and conditions <= IDEMPOTENT, path


# --- DestinationRule -----------------------------------------------------------------------------


def test_the_connection_pool_closes_first_and_never_limits_below_the_service():
    rule = obj("DestinationRule")
    assert rule["spec"]["host"] == f"translation.{NAMESPACE}.svc.cluster.local"
    policy = rule["spec"]["trafficPolicy"]
    pool = policy["connectionPool"]
    # The proxy closes an idle connection before the service's idle timeout does, never races it.
    assert seconds(pool["http"]["idleTimeout"]) < settings(docs()).idle_timeout_seconds
    connect = float(ingress()["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-connect-timeout"])
    assert seconds(pool["tcp"]["connectTimeout"]) == connect
    assert pool["http"]["maxRequestsPerConnection"] == 0, "keep-alive"
    # Above what all pods admit together, in every flavour the component may be used with: the service's 429
    # (with Retry-After) is the limit, not Envoy's circuit breaker (a bare 503).
    for overlay in ("cpu", "gpu", "prod", OVERLAY):
        overlay_docs = render(overlay)
        hpa = one(overlay_docs, "HorizontalPodAutoscaler", "translation")
        admitted = settings(overlay_docs).max_in_flight * hpa["spec"]["maxReplicas"]
        assert pool["http"]["http2MaxRequests"] >= admitted, overlay
        assert pool["tcp"]["maxConnections"] >= admitted, overlay
    assert pool["http"]["maxRetries"] < pool["http"]["http2MaxRequests"]
    assert policy["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert policy["tls"] == {"mode": "ISTIO_MUTUAL"}


def test_outlier_detection_ejects_gone_pods_not_busy_ones():
    outlier = obj("DestinationRule")["spec"]["trafficPolicy"]["outlierDetection"]
    # Connection failures only: the service's 5xx (503 queue_timeout) mean overloaded, not gone.
    assert outlier["splitExternalLocalOriginErrors"] is True and outlier["consecutiveLocalOriginFailures"] >= 1
    assert outlier["consecutive5xxErrors"] == 0 and "consecutiveGatewayErrors" not in outlier
    assert seconds(outlier["interval"]) > 0 and seconds(outlier["baseEjectionTime"]) > 0
    # Never so many pods out that fewer than half serve, whatever the pod count.
    for overlay in ("cpu", "prod", OVERLAY):
        minimum = one(render(overlay), "HorizontalPodAutoscaler", "translation")["spec"]["minReplicas"]
        assert minimum - math.floor(minimum * outlier["maxEjectionPercent"] / 100) >= math.ceil(minimum / 2), overlay


# --- mTLS, authorization, client addresses -------------------------------------------------------


def test_mtls_is_strict_for_the_translation_pods():
    policy = obj("PeerAuthentication")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["mtls"] == {"mode": "STRICT"}
    assert "portLevelMtls" not in policy["spec"], "no port in plain text"
    selector = policy["spec"].get("selector")
    assert selector is None or selects(selector, server_deployment(docs())["spec"]["template"]["metadata"]["labels"])
    assert obj("DestinationRule")["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"


def test_only_the_gateway_may_call_the_service():
    gateway = helmfile_release("istio-ingressgateway")
    policy = obj("AuthorizationPolicy")["spec"]
    assert selects(policy["selector"], server_deployment(docs())["spec"]["template"]["metadata"]["labels"])
    assert policy["action"] == "ALLOW"
    (rule,) = policy["rules"]
    (source,) = rule["from"]
    # The gateway chart's ServiceAccount is named after its release (serviceAccount.name unset).
    assert source["source"] == {"principals": [f"cluster.local/ns/{gateway['namespace']}/sa/{gateway['name']}"]}
    (operation,) = rule["to"]
    assert operation["operation"] == {"ports": [str(server_container(docs())["ports"][0]["containerPort"])]}


def test_the_service_trusts_the_sidecar_and_nothing_else():
    """The sidecar connects from 127.0.0.6 (::6) and passes X-Forwarded-For as the gateway wrote it: the forged
    part the client sent, then the address the gateway saw."""
    trusted = env()["MT_FORWARDED_ALLOW_IPS"]
    assert "*" not in trusted
    proxies = TrustedProxies(trusted)
    client = "203.0.113.7"
    for sidecar in SIDECAR_ADDRESSES:
        assert proxies.caller(sidecar, f"198.51.100.1, {client}".encode()) == Caller(client, proxied=True), sidecar
        assert proxies.caller(sidecar, client.encode()) == Caller(client, proxied=True), sidecar
    # The agent's metrics scrape and the probes (localhost, no header) are themselves.
    assert proxies.caller("127.0.0.1", None) == Caller("127.0.0.1", proxied=False)
    # Nothing outside the pod is believed: in the mesh every connection comes through the sidecar.
    for peer in ("10.1.2.3", "192.168.4.5", client):
        assert proxies.caller(peer, b"198.51.100.1") == Caller(peer, proxied=False), peer


def test_the_gateway_serves_https_with_cert_managers_certificate():
    gateway, certificate = obj("Gateway"), obj("Certificate")
    release = helmfile_release("istio-ingressgateway")
    # The gateway chart labels its pods istio: <release name without istio->.
    assert gateway["spec"]["selector"] == {"istio": release["name"].removeprefix("istio-")}
    (server,) = gateway["spec"]["servers"]
    assert server["port"]["protocol"] == "HTTPS" and server["port"]["number"] == 443
    assert server["tls"]["mode"] == "SIMPLE" and server["tls"]["minProtocolVersion"] in ("TLSV1_2", "TLSV1_3")
    assert server["hosts"] == obj("VirtualService")["spec"]["hosts"]
    # The Secret is read where the gateway's pods run.
    assert server["tls"]["credentialName"] == certificate["spec"]["secretName"]
    assert certificate["metadata"]["namespace"] == release["namespace"]
    assert certificate["spec"]["dnsNames"] == server["hosts"]


# --- the pods ------------------------------------------------------------------------------------


def test_the_sidecar_keeps_the_pod_guaranteed_and_draining():
    template = server_deployment(docs())["spec"]["template"]
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    annotations = template["metadata"]["annotations"]
    # A native sidecar outlives the server: the drain after SIGTERM still has its proxy.
    assert annotations["sidecar.istio.io/nativeSidecar"] == "true"
    assert annotations["sidecar.istio.io/proxyCPU"] == annotations["sidecar.istio.io/proxyCPULimit"]
    assert annotations["sidecar.istio.io/proxyMemory"] == annotations["sidecar.istio.io/proxyMemoryLimit"]
    resources = server_container(docs())["resources"]
    assert resources["requests"] == resources["limits"]
    # The namespace is not labelled for injection: only the server pods are meshed (not Redis).
    assert "istio-injection" not in one(docs(), "Namespace", NAMESPACE)["metadata"]["labels"]


def test_prometheus_still_gets_the_metrics_under_strict_mtls():
    template = server_deployment(docs())["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    port = next(p for p in server_container(docs())["ports"] if p["name"] == "http")["containerPort"]
    # The sidecar agent reads the service's /metrics here (Istio's metrics merging).
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    assert "/metrics" in openapi_document(Settings.load(["--model-dir", "unused"], {}), ["en"])["paths"]
    monitor = obj("PodMonitor")["spec"]
    assert selects(monitor["selector"], template["metadata"]["labels"])
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/stats/prometheus" and endpoint["port"] == "http-envoy-prom"
    (relabel,) = endpoint["relabelings"]
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_ip"], "targetLabel": "__address__", "replacement": "$1:15020"}
    # job = the pod's label value: what the alerts select on.
    job = template["metadata"]["labels"][monitor["jobLabel"]]
    assert f'job="{job}"' in ALERTS.read_text()
    # 9527 is mTLS-only now: no ServiceMonitor scraping it in plain text.
    assert "ServiceMonitor" not in {d["kind"] for d in docs()}


def test_the_network_policy_follows_the_mesh():
    policy = obj("NetworkPolicy", "translation")["spec"]
    gateway, prometheus, istiod = (helmfile_release(n)["namespace"] for n in ("istio-ingressgateway", "kube-prometheus-stack", "istiod"))
    port = server_container(docs())["ports"][0]["containerPort"]
    ingress_rules = {
        (rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], p["port"])
        for rule in policy["ingress"]
        for p in rule["ports"]
    }
    assert ingress_rules == {(gateway, port), (prometheus, 15020)}
    assert all(len(rule["from"]) == 1 for rule in policy["ingress"])
    egress = {
        (peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"), p["port"])
        for rule in policy["egress"]
        for peer in rule["to"]
        for p in rule["ports"]
    }
    assert (istiod, 15012) in egress, "the sidecar's configuration and certificates"
    assert ("kube-system", 53) in egress


def test_the_component_settings_win_over_the_flavours():
    """The component's X-Forwarded-For trust replaces the flavour's pod networks (a generated ConfigMap merge)."""
    data = config_map(docs(), "translation-config")["data"]
    assert data["MT_FORWARDED_ALLOW_IPS"].split(",") == ["127.0.0.1", "127.0.0.6", "::1", "::6"]
    assert data["MT_DEVICE"] == "cpu"
