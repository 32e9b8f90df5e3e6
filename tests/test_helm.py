"""The Helm chart (deploy/helm/m2m100-translation), offline, with a real `helm` binary: it lints (--strict),
renders every values file into objects that validate strictly against the Kubernetes API schemas and, for the
Prometheus operator's kinds, their CRDs' (scripts/validate_manifests.py, k8s/schemas), its values.schema.json
refuses bad values with a message naming them, and every rendering equals what `kubectl kustomize` renders for the
same settings, object by object, so the chart and k8s/ cannot drift apart.

helm comes from the helm-binary package (requirements/dev.txt: the official build, in .venv/bin). Without it,
or without kubectl, these tests skip with a reason; with CI set they fail instead.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import service
from service.settings import ENV_PREFIX, Settings
from tests.k8s_helpers import (
    K8S,
    KUBERNETES_VERSION,
    NAMESPACE,
    ROOT,
    config_map,
    one,
    render,
    render_dir,
    server_container,
    server_deployment,
    validate_strictly,
)

CHART = ROOT / "deploy" / "helm" / "m2m100-translation"
HELM_PACKAGE = "helm-binary"
# The overlay each values file stands for, and the release name that gives its objects the overlay's
# app.kubernetes.io/instance (Helm's instance label is the release name).
CASES = {
    "default": ("cpu", "translation", None),
    "gpu": ("gpu", "translation", "ci/gpu-values.yaml"),
    "cpu-full": ("cpu-full", "translation", "ci/cpu-full-values.yaml"),
    "dev": ("dev", "translation-dev", "ci/dev-values.yaml"),
    "staging": ("staging", "translation-staging", "ci/staging-values.yaml"),
    "prod": ("prod", "translation-prod", "ci/prod-values.yaml"),
}
# The chart's copies of component files (Helm reads no file outside the chart), and the originals.
COPIES = {
    "files/alerts.rules.yml": "components/monitoring/alerts.rules.yml",
    "files/dashboard.json": "components/monitoring/dashboard.json",
    "files/adapter-rules.yaml": "components/monitoring/adapter-rules.yaml",
    "files/fluent-bit.yaml": "components/logging/fluent-bit.yaml",
    "files/output-cloudwatch.yaml": "components/logging/output-cloudwatch.yaml",
    "files/output-loki.yaml": "components/logging/loki/output.yaml",
    "files/output-elasticsearch.yaml": "components/logging/elasticsearch/output.yaml",
}
# kustomize's generated ConfigMaps carry a hash of their content in their name ("translation-config-gd7c895hdg").
HASHED_NAME = re.compile(r"(?P<base>.+)-[a-z0-9]{10}")


# --- helm ---------------------------------------------------------------------------------------


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must not skip this test")
    pytest.skip(message)


@functools.cache
def _find_helm() -> str | None:
    """$HELM, else the helm that helm-binary installs next to this Python (.venv/bin), else helm on PATH."""
    for candidate in (os.environ.get("HELM"), str(Path(sys.executable).parent / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def helm_binary() -> str:
    helm = _find_helm()
    if helm is None:
        _missing(f"helm is not installed (make venv-dev installs it: {HELM_PACKAGE} in requirements/dev.txt; or set HELM=/path/to/helm)")
    return helm


@functools.cache
def _helm_home() -> str:
    home = tempfile.mkdtemp(prefix="helm-test-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def run_helm(*args: str) -> subprocess.CompletedProcess:
    # Helm's own directories in a throwaway place: no repository, plugin or cache of the user's is read or written.
    env = {**os.environ, **{f"HELM_{kind}_HOME": os.path.join(_helm_home(), kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120, env=env)


def _template_args(release: str, values: tuple[str, ...], sets: tuple[str, ...], namespace: str) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["--values", str(CHART / path)]
    for item in sets:
        args += ["--set", item]
    return args


@functools.cache
def _render_chart(release: str, values: tuple[str, ...], sets: tuple[str, ...], namespace: str) -> tuple[dict, ...]:
    result = run_helm(*_template_args(release, values, sets, namespace))
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_chart(release: str = "translation", values=(), sets=(), namespace: str = NAMESPACE) -> tuple[dict, ...]:
    """What `helm template RELEASE CHART -n NAMESPACE -f VALUES --set SETS` renders, one dict per object."""
    return copy.deepcopy(_render_chart(release, tuple(values), tuple(sets), namespace))


def render_case(case: str) -> tuple[dict, ...]:
    _, release, values = CASES[case]
    return render_chart(release, [values] if values else [])


def template_error(*sets: str) -> str:
    """helm template's error for values that must be refused."""
    result = run_helm(*_template_args("translation", (), sets, NAMESPACE))
    assert result.returncode != 0, f"helm accepted {sets}"
    return result.stderr


# --- normalising both renderings to what must agree ---------------------------------------------


def _replace_strings(node, mapping: dict[str, str]):
    if isinstance(node, dict):
        return {key: _replace_strings(value, mapping) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_strings(item, mapping) for item in node]
    return mapping.get(node, node) if isinstance(node, str) else node


def _metadatas(doc: dict):
    yield doc["metadata"]
    template = doc.get("spec", {}).get("template")
    if isinstance(template, dict) and "metadata" in template:
        yield template["metadata"]


def normalise(docs, tool: str, configmaps: set[str] = frozenset()) -> dict[tuple[str, str, str], dict]:
    """Objects by (kind, namespace, name), less what differs between the tools by design:

    - managed-by is "Helm" or "kustomize", and Helm adds helm.sh/chart (the recommended labels for a chart);
    - kustomize names a generated ConfigMap after its content (translation-config-<hash>) so that a change rolls
      the pods; the chart's ConfigMaps keep their names (translation-config), and a checksum/* annotation of the
      pod template rolls them instead. Hashed names (and every reference to them) become the plain name.
    """
    docs = [copy.deepcopy(doc) for doc in docs]
    if tool == "kustomize":
        renames = {}
        for doc in docs:
            match = HASHED_NAME.fullmatch(doc["metadata"]["name"])
            if doc["kind"] == "ConfigMap" and match and match["base"] in configmaps:
                renames[doc["metadata"]["name"]] = match["base"]
        docs = [_replace_strings(doc, renames) for doc in docs]
    managed_by = {"helm": "Helm", "kustomize": "kustomize"}[tool]
    objects = {}
    for doc in docs:
        for metadata in _metadatas(doc):
            labels = metadata.get("labels", {})
            what = f"{tool}: {doc['kind']}/{doc['metadata']['name']}"
            assert labels.get("app.kubernetes.io/managed-by") == managed_by, what
            labels.pop("app.kubernetes.io/managed-by")
            if tool == "helm":
                assert labels.pop("helm.sh/chart") == f"m2m100-translation-{_chart()['version']}", what
                annotations = metadata.get("annotations", {})
                for key in [k for k in annotations if k.startswith("checksum/")]:
                    del annotations[key]
                if "annotations" in metadata and not annotations:
                    del metadata["annotations"]
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in objects, f"{tool} renders {key} twice"
        objects[key] = doc
    return objects


def differences(kustomize, helm, path: str = "") -> list[str]:
    """Where two parsed objects differ, as readable paths."""
    if isinstance(kustomize, dict) and isinstance(helm, dict):
        found = []
        for key in sorted(set(kustomize) | set(helm), key=str):
            where = f"{path}.{key}"
            if key not in helm:
                found.append(f"{where}: only in kustomize: {kustomize[key]!r:.200}")
            elif key not in kustomize:
                found.append(f"{where}: only in helm: {helm[key]!r:.200}")
            else:
                found += differences(kustomize[key], helm[key], where)
        return found
    if isinstance(kustomize, list) and isinstance(helm, list) and len(kustomize) == len(helm):
        return [diff for index, pair in enumerate(zip(kustomize, helm)) for diff in differences(*pair, f"{path}[{index}]")]
    if kustomize != helm or type(kustomize) is not type(helm):
        return [f"{path}: kustomize {kustomize!r:.300} != helm {helm!r:.300}"]
    return []


def assert_same_objects(kustomize_docs, helm_docs, what: str) -> None:
    helm = normalise(helm_docs, "helm")
    kustomize = normalise(kustomize_docs, "kustomize", {name for kind, _, name in helm if kind == "ConfigMap"})
    # The release's own namespace: `helm install -n NAMESPACE` needs it before the chart is applied, so the chart
    # renders it only with namespace.create (test_namespace_object_matches_the_overlays).
    kustomize.pop(("Namespace", "", NAMESPACE), None)
    only = {"kustomize": sorted(set(kustomize) - set(helm)), "helm": sorted(set(helm) - set(kustomize))}
    assert not only["kustomize"] and not only["helm"], f"{what}: objects rendered by one side only: {only}"
    found = [f"{key[0]}/{key[2]}{diff}" for key, doc in kustomize.items() for diff in differences(doc, helm[key])]
    assert not found, f"{what}: the chart differs from the overlay (update deploy/helm/ or k8s/):\n" + "\n".join(found)


@functools.cache
def _chart() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# --- the chart ----------------------------------------------------------------------------------


def test_helm_is_a_real_helm_3():
    result = run_helm("version", "--short")
    assert result.returncode == 0, result.stderr
    assert re.match(r"v3\.\d+\.\d+\+g[0-9a-f]{7}", result.stdout.strip()), result.stdout


def test_chart_metadata():
    chart = _chart()
    assert chart["apiVersion"] == "v2" and chart["name"] == CHART.name == "m2m100-translation"
    assert chart["appVersion"] == service.__version__, "appVersion is the service's release (the default image tag)"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])


@pytest.mark.parametrize("relative", sorted(COPIES))
def test_files_are_copies_of_the_components(relative):
    """Helm reads no file outside the chart: the rules, dashboard, adapter rules and Fluent Bit configuration are
    copies of k8s/components/*, byte for byte."""
    original = K8S / COPIES[relative]
    assert (CHART / relative).read_bytes() == original.read_bytes(), (
        f"out of date: cp {original.relative_to(ROOT)} {(CHART / relative).relative_to(ROOT)}"
    )


def test_every_file_is_used_and_tested():
    files = {str(p.relative_to(CHART)) for p in (CHART / "files").iterdir()}
    assert files == set(COPIES)
    templates = "".join(p.read_text() for p in (CHART / "templates").iterdir())
    assert all(f'"{name}"' in templates for name in COPIES), "every copied file is read by a template"


def test_every_ci_values_file_is_tested():
    assert sorted(p.name for p in (CHART / "ci").iterdir()) == sorted(values.split("/")[1] for *_, values in CASES.values() if values)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(case):
    *_, values = CASES[case]
    result = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBERNETES_VERSION, *(["--values", str(CHART / values)] if values else []))
    assert result.returncode == 0, f"helm lint --strict {values or ''}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_and_validates_strictly(case):
    """Every object, the ServiceMonitor and PrometheusRule included (against k8s/schemas, as `make k8s-validate`)."""
    docs = render_case(case)
    assert docs
    for doc in docs:
        validate_strictly(doc, f"helm {case}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}")
    if case in ("cpu-full", "staging", "prod"):
        assert {"ServiceMonitor", "PrometheusRule"} <= {doc["kind"] for doc in docs}, "the custom resources are validated too"


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_matches_the_overlay(case):
    """Helm with the case's values renders what `kubectl kustomize k8s/overlays/<overlay>` renders: the same
    objects (kinds, names, namespaces) and, in each, the same images, probes, resources, settings, ports, security
    contexts, scheduling, autoscaler, labels and selectors; only managed-by, helm.sh/chart and the way a changed
    ConfigMap rolls the pods differ (normalise)."""
    overlay, _, _ = CASES[case]
    assert_same_objects(render(overlay), render_case(case), f"{case} values vs k8s/overlays/{overlay}")


@pytest.mark.parametrize("backend", ["loki", "elasticsearch"])
def test_log_backend_matches_the_logging_subcomponent(backend, tmp_path):
    """logging.output switches output.yaml (and the variables it reads) as listing k8s/components/logging/<backend>
    after the logging component does."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "prod", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / "logging" / backend, tmp_path)],
    }))  # fmt: skip
    helm = render_chart("translation-prod", ["ci/prod-values.yaml"], [f"logging.output={backend}"])
    assert_same_objects(render_dir(tmp_path), helm, f"prod values + logging.output={backend} vs prod + logging/{backend}")


def test_namespace_object_matches_the_overlays():
    """namespace.create renders the namespace with the restricted Pod Security Standard, as k8s/base does."""
    assert not [d for d in render_chart() if d["kind"] == "Namespace"]
    helm = normalise([one(render_chart(sets=["namespace.create=true"]), "Namespace", NAMESPACE)], "helm")
    kustomize = normalise([one(render("cpu"), "Namespace", NAMESPACE)], "kustomize")
    assert kustomize == helm


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory) -> Path:
    """A copy of the chart whose one template renders NOTES.txt into a ConfigMap: helm template skips NOTES.txt,
    and `helm install --dry-run` needs a cluster."""
    chart = tmp_path_factory.mktemp("notes") / CHART.name
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n'
    )
    return chart


@pytest.mark.parametrize("case", sorted(CASES))
def test_notes_render(case, notes_chart):
    """What `helm install` prints renders with every values file, and names the Secrets the pods wait for."""
    _, release, values = CASES[case]
    args = ["template", release, str(notes_chart), "--namespace", NAMESPACE, "--show-only", "templates/notes.yaml"]
    result = run_helm(*args, *(["--values", str(notes_chart / values)] if values else []))
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["data"]["notes"]
    assert f"release {release} in namespace {NAMESPACE}" in notes
    assert server_container(render_case(case))["image"] in notes
    for secret in ("translation-api-keys", "translation-redis"):
        assert (secret in notes) == (case in ("cpu-full", "staging", "prod")), f"{case}: {secret}"


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_service_accepts_the_settings(case):
    """Every MT_* variable the chart sets is one of the service's settings (an unknown one would be ignored), and
    the service's own parser accepts the values."""
    docs = render_case(case)
    container = server_container(docs)
    env = dict(config_map(docs, "translation-config")["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "redis://:password@redis:6379/0" if item["name"] == "MT_REDIS_URL" else "")
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - known
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    Settings.load(["--model-dir", "unused"], env)


def test_the_image_follows_flavour_and_tag():
    assert server_container(render_chart())["image"] == f"ghcr.io/example-org/m2m100-ct2-service:{service.__version__}"
    assert server_container(render_chart(sets=["flavour=gpu"]))["image"].endswith(f":{service.__version__}-gpu")
    image = server_container(render_chart(sets=["flavour=gpu", "image.repository=registry.example/mt", "image.tag=sha-1234567-gpu"]))["image"]
    assert image == "registry.example/mt:sha-1234567-gpu"


def test_replicas_without_the_autoscaler():
    docs = render_chart(sets=["autoscaling.enabled=false", "replicaCount=3"])
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert server_deployment(docs)["spec"]["replicas"] == 3
    assert "replicas" not in server_deployment(render_chart())["spec"], "the HPA owns the replica count"


def test_logging_tails_the_release_namespace():
    """The Fluent Bit input reads the server containers of the namespace the chart is installed in."""
    docs = render_chart("translation-prod", ["ci/prod-values.yaml"], namespace="mt")
    pipeline = yaml.safe_load(config_map(docs, "fluent-bit-config")["data"]["fluent-bit.yaml"])
    (tail,) = pipeline["pipeline"]["inputs"]
    assert tail["path"] == "/var/log/containers/*_mt_server-*.log"


# Bad values and what helm must say about them (values.schema.json, or the templates' own checks).
REFUSED = {
    "flavour=tpu": ["flavour", "cpu", "gpu"],
    "replicaCount=-1": ["replicaCount", "greater than or equal to 0"],
    "replicas=2": ["replicas", "additional"],
    "autoscaling.maxReplica=4": ["maxReplica", "additional"],
    "autoscaling.minReplicas=0": ["minReplicas", "greater than or equal to 1"],
    "config.MT_BEAM_SIZE=4": ["MT_BEAM_SIZE", "string"],
    "config.beam_size=4": ["beam_size"],
    "ingress.tls=true": ["tls", "object"],
    "logging.output=syslog": ["output", "cloudwatch"],
    "image.pullPolicy=Sometimes": ["pullPolicy", "IfNotPresent"],
}


@pytest.mark.parametrize("setting", sorted(REFUSED))
def test_the_schema_refuses_bad_values(setting):
    message = template_error(setting)
    assert "values don't meet the specifications of the schema" in message, message
    for word in REFUSED[setting]:
        assert word.lower() in message.lower(), f"{setting}: the message does not say {word!r}:\n{message}"


def test_the_templates_refuse_what_the_schema_cannot():
    message = template_error("autoscaling.inFlightRequests.enabled=false", "autoscaling.cpuUtilization=0")
    assert "no metric left" in message
    message = template_error("autoscaling.minReplicas=5", "autoscaling.maxReplicas=3")
    assert "maxReplicas (3) is below autoscaling.minReplicas (5)" in message


# --- mk/helm.mk ---------------------------------------------------------------------------------


def test_make_helm_template_renders_the_chart():
    if shutil.which("make") is None:
        _missing("make is not installed")
    result = subprocess.run(
        [
            "make",
            "-s",
            "helm-template",
            f"HELM={helm_binary()}",
            f"HELM_VALUES={(CHART / 'ci' / 'prod-values.yaml').relative_to(ROOT)}",
            "HELM_RELEASE=translation-prod",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    assert normalise(docs, "helm") == normalise(render_case("prod"), "helm")


def test_make_helm_sync_copies_what_the_test_compares():
    """`make helm-sync` copies the same files that test_files_are_copies_of_the_components compares."""
    pairs = re.findall(r"^\s*(files/\S+)=k8s/(\S+)", (ROOT / "mk" / "helm.mk").read_text(), re.MULTILINE)
    assert dict(pairs) == COPIES
