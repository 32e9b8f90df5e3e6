"""The cluster add-ons and the schemas that check what runs on them, offline.

k8s/cluster/addons/helmfile.yaml installs, at exact versions, what the manifests expect of a cluster: ingress-nginx,
kube-prometheus-stack, prometheus-adapter, cert-manager (+ its ClusterIssuers), NVIDIA's device plugin, and Istio when
asked for. These tests hold the releases to what the manifests assume (namespaces the NetworkPolicy admits, the label
Prometheus selects, the adapter rule the HPA's metric needs, the GPU nodes' label and taint), and hold
`make k8s-validate` to validating every object, custom resources against the vendored CRD schemas (k8s/schemas/),
strictly, none skipped.

No cluster, no helm, no helmfile here: nothing proves the charts install (docs/deployment.md, "What was and wasn't
run"). The chart versions' values were checked once, by hand, against those charts' values.yaml.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import stat
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from scripts import crd_to_schema, validate_manifests
from tests.k8s_helpers import (
    GPU_OVERLAYS,
    K8S,
    KUBERNETES_VERSION,
    ROOT,
    one,
    render,
    render_dir,
    require_tool,
    server_deployment,
    tolerates,
)

ADDONS = K8S / "cluster" / "addons"
HELMFILE = ADDONS / "helmfile.yaml"
CLUSTER_ISSUERS = ADDONS / "cluster-issuers"
CLUSTER = K8S / "cluster" / "cluster.yaml"
ADAPTER_RULES = K8S / "components" / "monitoring" / "adapter-rules.yaml"
SCHEMAS = K8S / "schemas"
DOCS = ROOT / "docs" / "deployment.md"
# Each release and what it is for; a release added to the helmfile must be added here (and tested).
RELEASES = {
    "kube-prometheus-stack",
    "prometheus-adapter",
    "ingress-nginx",
    "cert-manager",
    "nvidia-device-plugin",
    "istio-base",
    "istio-cni",
    "istiod",
    "istio-ingressgateway",
}
ISTIO_RELEASES = {"istio-base", "istio-cni", "istiod", "istio-ingressgateway"}
# An exact chart version: no range (~1.2, ^1.2, 1.x, >=1.2, *), no prerelease.
EXACT_VERSION = re.compile(r"v?\d+\.\d+\.\d+")


@cache
def helmfile() -> dict:
    return yaml.safe_load(HELMFILE.read_text())


def releases() -> dict[str, dict]:
    return {release["name"]: release for release in helmfile()["releases"]}


def release(name: str) -> dict:
    return releases()[name]


def values(name: str) -> dict:
    (path,) = release(name)["values"]
    return yaml.safe_load((ADDONS / path).read_text())


def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def node_group(name: str) -> dict:
    (group,) = [g for g in cluster()["managedNodeGroups"] if g["name"] == name]
    return group


def admitted_namespaces(rule: dict) -> set[str]:
    return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}


# --- the helmfile --------------------------------------------------------------------------------


def test_every_release_is_known_and_pinned_to_an_exact_chart_version():
    assert set(releases()) == RELEASES, "a release added or removed: update RELEASES and test what it is for"
    repositories = {repo["name"]: repo["url"] for repo in helmfile()["repositories"]}
    assert all(url.startswith("https://") for url in repositories.values())
    used = set()
    for name, spec in releases().items():
        assert EXACT_VERSION.fullmatch(str(spec["version"])), f"{name}: {spec['version']!r} is not an exact version"
        repository, _, chart = spec["chart"].partition("/")
        assert repository in repositories and chart, f"{name}: {spec['chart']} is not <repository>/<chart>"
        used.add(repository)
        assert spec["namespace"], name
    assert used == set(repositories), "every repository is used"
    # Ready before the next release starts: a CRD before its objects, a webhook before what it admits.
    assert helmfile()["helmDefaults"]["wait"] is True


def test_every_release_has_its_own_values_file():
    files = {path.name for path in (ADDONS / "values").iterdir()}
    for name, spec in releases().items():
        assert spec["values"] == [f"values/{name}.yaml"], f"{name}: one values file, values/{name}.yaml"
        assert isinstance(values(name), dict) and values(name), name
    assert files == {f"{name}.yaml" for name in RELEASES}, "no values file without its release"


def test_needs_name_releases_and_the_operator_comes_before_its_objects():
    known = {f"{spec['namespace']}/{name}" for name, spec in releases().items()}
    for name, spec in releases().items():
        assert set(spec.get("needs", [])) <= known, name
    # A chart that makes a ServiceMonitor needs the Prometheus operator's CRDs first.
    operator = f"{release('kube-prometheus-stack')['namespace']}/kube-prometheus-stack"
    for name in ("ingress-nginx", "cert-manager", "prometheus-adapter"):
        assert operator in release(name)["needs"], name
    assert values("ingress-nginx")["controller"]["metrics"]["serviceMonitor"]["enabled"] is True
    assert values("cert-manager")["prometheus"]["servicemonitor"]["enabled"] is True


def test_istio_is_opt_in_and_one_version():
    """The Istio releases are skipped unless asked for (--state-values-set istio.enabled=true); the rest always run."""
    state_values = {key: value for entry in helmfile()["values"] for key, value in entry.items()}
    assert state_values["istio"]["enabled"] is False
    for name, spec in releases().items():
        assert spec.get("condition") == ("istio.enabled" if name in ISTIO_RELEASES else None), name
    assert len({release(name)["version"] for name in ISTIO_RELEASES}) == 1, "istio charts move together"
    assert all(release(name)["chart"].startswith("istio/") for name in ISTIO_RELEASES)
    assert "istio-system/istio-cni" in release("istiod")["needs"]


def test_the_schemas_are_the_pinned_releases_crds():
    """k8s/schemas/README.md says which release each schema comes from: the versions the helmfile pins."""
    readme = (SCHEMAS / "README.md").read_text()
    assert f"kube-prometheus-stack {release('kube-prometheus-stack')['version']}" in readme
    assert f"cert-manager {release('cert-manager')['version']}" in readme
    assert f"Istio base {release('istio-base')['version']}" in readme
    assert f"istio/istio, tag `{release('istio-base')['version']}`" in readme
    for path in SCHEMAS.rglob("*.json"):
        assert f"`{path.parent.name}/{path.name}`" in readme or f"`{path.name}`" in readme, f"README: where {path} comes from"


# --- what the manifests expect of the add-ons ----------------------------------------------------


def test_the_network_policy_admits_the_namespaces_the_releases_run_in():
    [rule] = one(render("cpu"), "NetworkPolicy", "translation")["spec"]["ingress"]
    assert admitted_namespaces(rule) == {release("ingress-nginx")["namespace"], release("kube-prometheus-stack")["namespace"]}


def test_monitoring_objects_carry_the_label_prometheus_selects():
    """kube-prometheus-stack's Prometheus selects `release: <its release name>` (the *NilUsesHelmValues defaults)."""
    spec = values("kube-prometheus-stack")["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is True
    assert spec["podMonitorSelectorNilUsesHelmValues"] is True and spec["ruleSelectorNilUsesHelmValues"] is True
    docs = render("monitoring")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(render("istio"), "PodMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for name in ("ingress-nginx",):
        assert values(name)["controller"]["metrics"]["serviceMonitor"]["additionalLabels"] == {"release": "kube-prometheus-stack"}
    assert values("cert-manager")["prometheus"]["servicemonitor"]["labels"] == {"release": "kube-prometheus-stack"}
    # Grafana's sidecar loads the dashboard ConfigMap by its label.
    sidecar = values("kube-prometheus-stack")["grafana"]["sidecar"]["dashboards"]
    dashboard = one(docs, "ConfigMap", "translation-dashboard")
    assert dashboard["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
    assert dashboard["metadata"]["namespace"] == release("kube-prometheus-stack")["namespace"]


def _hpa_pods_metrics() -> dict[str, set[str]]:
    metrics = {}
    for overlay in ("cpu", "gpu", "dev", "staging", "prod", "istio"):
        hpa = one(render(overlay), "HorizontalPodAutoscaler", "translation")
        metrics[overlay] = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    return metrics


def _produced(rule: dict) -> tuple[str, str]:
    """(the series a prometheus-adapter rule reads, the metric it serves): the adapter's naming rule, `as` with $N
    taken from `matches` applied to the series name (default $1 if `matches` has a group, else $0)."""
    (series,) = re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
    match = re.search(rule["name"]["matches"], series)
    assert match, f"{rule['name']['matches']} does not match {series}"
    template = rule["name"].get("as") or ("$1" if match.re.groups else "$0")
    return series, re.sub(r"\$(\d+)", lambda ref: match.group(int(ref.group(1))) or "", template)


def test_prometheus_adapter_serves_the_metric_the_hpa_asks_for():
    adapter = values("prometheus-adapter")
    # Word for word the rules of the monitoring component (which its ConfigMap carries for a hand-made adapter).
    assert adapter["rules"]["custom"] == yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    served = {}
    for rule in adapter["rules"]["custom"]:
        series, name = _produced(rule)
        served[name] = rule
        # A Pods metric: the rule must map the series' pod and namespace labels to those resources.
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
    wanted = _hpa_pods_metrics()
    assert wanted["prod"] == {"translation_in_flight_requests"}
    for overlay, names in wanted.items():
        assert names <= set(served), f"{overlay}'s HPA asks for {sorted(names - set(served))}, which no adapter rule serves"
    # From kube-prometheus-stack's Prometheus: the chart names its Service <release>-prometheus, port 9090.
    kps = release("kube-prometheus-stack")
    assert adapter["prometheus"] == {"url": f"http://kube-prometheus-stack-prometheus.{kps['namespace']}.svc", "port": 9090}
    assert adapter["rules"]["default"] is False


def test_device_plugin_lands_only_on_the_gpu_nodes():
    plugin = values("nvidia-device-plugin")
    (gpu,) = [g for g in cluster()["managedNodeGroups"] if g.get("taints")]
    (taint,) = gpu["taints"]
    system = node_group("system")
    # The node group's label, not the system nodes'; its taint, tolerated.
    assert plugin["nodeSelector"].items() <= gpu["labels"].items()
    assert not plugin["nodeSelector"].items() <= system["labels"].items()
    assert tolerates(plugin["tolerations"], taint)
    # Exactly what the GPU pods select and tolerate.
    for overlay in GPU_OVERLAYS:
        pod = server_deployment(render(overlay))["spec"]["template"]["spec"]
        assert plugin["nodeSelector"] == pod["nodeSelector"], overlay
        assert plugin["tolerations"] == pod["tolerations"], overlay
    assert plugin["gfd"]["enabled"] is False and plugin["nfd"]["enabled"] is False


def test_eksctl_leaves_the_device_plugin_to_the_helmfile():
    """eksctl installs its own device plugin (unpinned, no nodeSelector) unless told not to; two would fight over
    nvidia.com/gpu on every GPU node."""
    creates = re.findall(r"^eksctl create cluster .*$", DOCS.read_text(), flags=re.MULTILINE)
    assert creates and all("--install-nvidia-plugin=false" in line for line in creates), creates
    assert "--install-nvidia-plugin=false" in CLUSTER.read_text()


def test_add_ons_run_on_the_system_nodes():
    system = node_group("system")["labels"]
    selectors = {
        "ingress-nginx": values("ingress-nginx")["controller"]["nodeSelector"],
        "prometheus": values("kube-prometheus-stack")["prometheus"]["prometheusSpec"]["nodeSelector"],
        "prometheus-operator": values("kube-prometheus-stack")["prometheusOperator"]["nodeSelector"],
        "grafana": values("kube-prometheus-stack")["grafana"]["nodeSelector"],
        "prometheus-adapter": values("prometheus-adapter")["nodeSelector"],
        "cert-manager": values("cert-manager")["global"]["nodeSelector"],
        "istiod": values("istiod")["nodeSelector"],
        "istio-ingressgateway": values("istio-ingressgateway")["nodeSelector"],
    }
    for name, selector in selectors.items():
        assert selector and selector.items() <= system.items(), name
    # Two of what the translation pods' traffic or scaling depends on, one of which may be drained.
    assert values("prometheus-adapter")["replicas"] >= 2 and values("prometheus-adapter")["podDisruptionBudget"]["enabled"]
    assert values("istio-ingressgateway")["autoscaling"]["minReplicas"] >= 2


def test_the_istio_gateway_keeps_the_client_address():
    """As for ingress-nginx (tests/test_k8s.py): the gateway appends the address it saw to X-Forwarded-For."""
    service = values("istio-ingressgateway")["service"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"
    assert service["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"


def test_istio_sidecars_need_no_privileges():
    """The translation namespace enforces the restricted Pod Security Standard: with the Istio CNI agent the
    injected containers need no NET_ADMIN (istiod's injector reads cni.enabled as pilot.cni.enabled)."""
    assert values("istiod")["cni"]["enabled"] is True
    assert values("istio-cni")["chained"] is True
    namespace = one(render("istio"), "Namespace", "translation")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_cluster_issuers_answer_through_the_ingress_and_the_istio_gateway():
    issuers = render_dir(CLUSTER_ISSUERS)
    assert {d["kind"] for d in issuers} == {"ClusterIssuer"}
    ingress_class = one(render("cpu"), "Ingress", "translation")["spec"]["ingressClassName"]
    for issuer in issuers:
        assert "namespace" not in issuer["metadata"], "cluster-scoped"
        acme = issuer["spec"]["acme"]
        assert acme["server"].startswith("https://acme-") and acme["server"].endswith("api.letsencrypt.org/directory")
        default = [s for s in acme["solvers"] if "selector" not in s]
        assert [s["http01"]["ingress"]["ingressClassName"] for s in default] == [ingress_class]
    names = {d["metadata"]["name"] for d in issuers}
    certificate = one(render("istio"), "Certificate")
    assert certificate["spec"]["issuerRef"]["kind"] == "ClusterIssuer" and certificate["spec"]["issuerRef"]["name"] in names
    issuer = one(issuers, "ClusterIssuer", certificate["spec"]["issuerRef"]["name"])
    picked = [
        s
        for s in issuer["spec"]["acme"]["solvers"]
        if s.get("selector", {}).get("matchLabels", {}).items() <= certificate["metadata"]["labels"].items() and "selector" in s
    ]
    assert [s["http01"]["ingress"]["class"] for s in picked] == ["istio"], "the Istio gateway's certificate is answered there"


def test_make_cluster_addons_runs_helmfile_then_the_issuers(tmp_path):
    log = tmp_path / "calls"
    stubs = {}
    for name, code in (("helmfile", 0), ("kubectl", 0), ("failing-helmfile", 3)):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@" >> {log}\nexit {code}\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
        stubs[name] = stub

    def make(*args: str) -> subprocess.CompletedProcess:
        log.write_text("")
        return subprocess.run(
            ["make", "-s", "cluster-addons", f"KUBECTL={stubs['kubectl']}", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
        )

    result = make(f"HELMFILE={stubs['helmfile']}")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        f"helmfile --file {HELMFILE.relative_to(ROOT)} sync",
        f"kubectl apply -k {CLUSTER_ISSUERS.relative_to(ROOT)}",
    ]
    make(f"HELMFILE={stubs['helmfile']}", "HELMFILE_ARGS=--state-values-set istio.enabled=true apply")
    assert log.read_text().splitlines()[0].endswith("--state-values-set istio.enabled=true apply")
    # The issuers need cert-manager's webhook: nothing is applied when helmfile failed.
    result = make(f"HELMFILE={stubs['failing-helmfile']}")
    assert result.returncode != 0 and "kubectl" not in log.read_text()


# --- the schemas and scripts/crd_to_schema.py ----------------------------------------------------


def _schema_files() -> list[Path]:
    return sorted(SCHEMAS.rglob("*.json"))


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_every_schema_is_a_strict_json_schema_of_its_kind(path):
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    group, (kind, version) = path.parent.name, path.stem.rsplit("_", 1)
    assert schema["properties"]["apiVersion"]["enum"] == [f"{group}/{version}"]
    assert schema["properties"]["kind"]["enum"][0].lower() == kind
    assert schema["additionalProperties"] is False and {"apiVersion", "kind", "metadata"} <= set(schema["required"])
    assert path.read_text() == crd_to_schema.dump(schema), "written by scripts/crd_to_schema.py (sorted, indented)"


def _crd(openapi: dict) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced",
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": openapi}},
                              {"name": "v0", "served": False, "storage": False, "schema": {"openAPIV3Schema": openapi}}]},
    }  # fmt: skip


WIDGET = {
    "type": "object", "description": "A widget.",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "size": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True, "description": "kept out"},
                "mode": {"type": "string", "pattern": "^(?i)(on|off)$"},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "description": {"type": "string"},
            },
            "oneOf": [{"properties": {"port": {}}, "required": ["port"]}, {"properties": {"size": {}}, "required": ["size"]}],
        },
    },
}  # fmt: skip


def test_crd_to_schema_makes_strict_schemas_the_api_server_would_agree_with(tmp_path):
    (crd_file := tmp_path / "crd.yaml").write_text(yaml.safe_dump_all([_crd(WIDGET), {"kind": "ConfigMap"}]))
    out = tmp_path / "schemas"
    assert crd_to_schema.main(["--out", str(out), str(crd_file)]) == 0
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.json")] == ["example.com/widget_v1.json"], "served versions only"
    schema = json.loads((out / "example.com" / "widget_v1.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    good = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {
            "port": "http",
            "note": None,
            "mode": "ON",
            "extra": {"anything": 1},
            "labels": {"a": "b"},
            "items": [{"name": "x"}],
            "description": "a field, not a keyword",
        },
    }
    assert not list(validator.iter_errors(good))
    for size in (3, "50%"):  # int-or-string, and the other branch of the oneOf
        other = copy.deepcopy(good)
        del other["spec"]["port"]
        other["spec"]["size"] = size
        assert not list(validator.iter_errors(other)), size
    broken = {
        "a misspelt field": {"spec": {"port": 1, "prot": 1}},
        "a misspelt field in a list": {"spec": {"port": 1, "items": [{"nmae": "x"}]}},
        "a misspelt top-level field": {"sepc": {}},
        "another kind": {"kind": "Gadget"},
        "another version": {"apiVersion": "example.com/v2"},
        "a string for an object": {"spec": "x"},
        "a value the Go pattern refuses": {"spec": {"port": 1, "mode": "maybe"}},
        "neither branch of a oneOf": {"spec": {"note": "x"}},
        "both branches of a oneOf": {"spec": {"port": 1, "size": 1}},
    }
    for what, change in broken.items():
        doc = copy.deepcopy(good)
        for key, value in change.items():
            doc[key] = value
        assert list(validator.iter_errors(doc)), f"{what} must be rejected"
    no_metadata = {k: v for k, v in good.items() if k != "metadata"}
    assert list(validator.iter_errors(no_metadata))
    assert "description" not in json.dumps(schema["properties"]["spec"]["properties"]["note"])
    assert schema["properties"]["spec"]["properties"]["description"] == {"type": "string"}, "a field named description stays"
    # --check: the vendored file is what the CRD gives, and a changed CRD is noticed.
    assert crd_to_schema.main(["--out", str(out), "--check", str(crd_file)]) == 0
    changed = copy.deepcopy(WIDGET)
    changed["properties"]["spec"]["properties"]["size"] = {"type": "integer"}
    crd_file.write_text(yaml.safe_dump(_crd(changed)))
    assert crd_to_schema.main(["--out", str(out), "--check", str(crd_file)]) == 1
    assert crd_to_schema.main(["--out", str(out), "--kind", "Gizmo", str(crd_file)]) == 2


# --- make k8s-validate ---------------------------------------------------------------------------


def _validate(doc: dict) -> list[str]:
    return validate_manifests.validate_object(doc, KUBERNETES_VERSION, SCHEMAS)


def test_crd_schemas_accept_the_real_objects_and_reject_broken_ones():
    docs = render("monitoring")
    monitor, rule = one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    assert _validate(monitor) == [] and _validate(rule) == []
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"] = "x"
    assert any("endpoints" in error for error in _validate(broken))
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # it is `interval`
    assert any("scrapeInterval" in error for error in _validate(broken))
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert _validate(broken)
    broken = copy.deepcopy(rule)
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("expr" in error for error in _validate(broken))
    broken = copy.deepcopy(rule)
    broken["metadata"]["labelz"] = {"a": "b"}  # metadata is checked as the API's ObjectMeta
    assert any("labelz" in error for error in _validate(broken))
    issuer = render_dir(CLUSTER_ISSUERS)[0]
    assert _validate(issuer) == []
    broken = copy.deepcopy(issuer)
    broken["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClass"] = "nginx"  # it is ingressClassName
    assert _validate(broken)
    # A kind without a schema is an error, not a warning.
    probe = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Probe", "metadata": {"name": "p"}, "spec": {}}
    (error,) = _validate(probe)
    assert error.startswith("no schema for monitoring.coreos.com/v1 Probe")
    # Built-in kinds still go to the API schemas, strictly.
    service = copy.deepcopy(one(render("cpu"), "Service", "translation"))  # render() is cached: never edit its documents
    assert _validate(service) == []
    service["spec"]["prots"] = []
    assert _validate(service)
    assert validate_manifests.is_builtin("v1") and validate_manifests.is_builtin("apps/v1")
    assert validate_manifests.is_builtin("networking.k8s.io/v1") and not validate_manifests.is_builtin("networking.istio.io/v1")


def test_k8s_validate_renders_every_kustomization_and_skips_nothing():
    require_tool("kubectl")
    found = validate_manifests.kustomizations(K8S)
    expected = {K8S / "overlays" / p.name for p in (K8S / "overlays").iterdir() if p.is_dir()}
    expected |= {K8S / "cluster" / "autoscaler", CLUSTER_ISSUERS}
    assert expected <= set(found)
    assert not any(p.is_relative_to(K8S / "components") for p in found), "components render inside their overlays"
    result = subprocess.run(["make", "-s", "k8s-validate"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for directory in found:
        (line,) = [line for line in lines if line.startswith(f"{directory.relative_to(ROOT)}:")]
        assert line.endswith(", valid"), line
    custom = {kind for line in lines for kind in re.findall(r"(\w+) \([a-z0-9.-]+\.[a-z]+/v\w+\)", line)}
    assert {
        "ServiceMonitor",
        "PrometheusRule",
        "PodMonitor",
        "ClusterIssuer",
        "Certificate",
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "PeerAuthentication",
        "AuthorizationPolicy",
    } <= custom
    assert "WARN" not in result.stdout + result.stderr and "couldn't find" not in (result.stdout + result.stderr).lower()


def test_k8s_validate_fails_on_a_kind_it_cannot_check(tmp_path):
    require_tool("kubectl")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["probe.yaml"],
    }))  # fmt: skip
    (tmp_path / "probe.yaml").write_text(
        yaml.safe_dump({"apiVersion": "monitoring.coreos.com/v1", "kind": "Probe", "metadata": {"name": "p", "namespace": "n"}, "spec": {}})
    )
    command = ["make", "-s", "k8s-validate"]
    # The target's own command line, on this directory instead of k8s/.
    printed = subprocess.run([*command, "-n"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    (line,) = [line for line in printed.splitlines() if "validate_manifests.py" in line]
    words = shlex.split(line)
    assert words[-1] == "k8s"
    result = subprocess.run([*words[:-1], str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 1 and "no schema for monitoring.coreos.com/v1 Probe" in result.stderr
    assert "INVALID" in result.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    assert subprocess.run([*words[:-1], str(broken)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120).returncode == 2


def test_a_missing_kubectl_fails_in_ci_and_skips_elsewhere(monkeypatch):
    """The rendering tests above need kubectl: CI (CI=true) must run them, so there a missing one is a failure."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("kubectl")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool("kubectl")
