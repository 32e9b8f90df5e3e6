"""Rendering and reading the Kubernetes manifests, for tests/test_k8s.py and tests/test_cluster.py: kubectl
kustomize (cached per directory), strict schema validation (scripts/validate_manifests.py: the API's kinds and the
custom resources of k8s/schemas), the public routes, and small readers of the rendered objects."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from loadtest.paths import ROOT

K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.33"
NAMESPACE = "translation"
MANIFEST_IMAGE = "ghcr.io/example-org/m2m100-ct2-service"
# The overlays whose pods run on GPU nodes (tests/test_cluster.py checks them against the node group).
GPU_OVERLAYS = ("gpu", "staging", "prod")
# The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels).
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it: scripts/install_system_deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must not skip this test")
        pytest.skip(message)
    return path


@cache
def _render(directory: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [shutil.which("kubectl"), "kustomize", directory], capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_dir(directory: Path) -> tuple[dict, ...]:
    """What `kubectl kustomize DIRECTORY` renders, one dict per object."""
    require_tool("kubectl")
    return _render(str(directory))


def render(overlay: str) -> tuple[dict, ...]:
    return render_dir(K8S / "overlays" / overlay)


def validate_strictly(doc: dict, what: str) -> None:
    """Fails the test unless `doc` is a valid object of KUBERNETES_VERSION (no unknown fields): a built-in kind
    against the API's schemas, a custom resource against its CRD's (k8s/schemas; a kind without one fails)."""
    from scripts.validate_manifests import validate_object

    errors = validate_object(doc, KUBERNETES_VERSION)
    if errors:
        pytest.fail(f"{what} is not a valid object for Kubernetes {KUBERNETES_VERSION}:\n  " + "\n  ".join(errors))


def public_prefixes() -> dict[str, frozenset[str]]:
    """The path prefixes the Ingress routes as Prefix paths, each with the methods the service answers below it:
    the web page's assets and Swagger UI's (service/webpage.py, service/apidocs.py: one GET route each, /PREFIX{name},
    which matches no "/"), and LibreTranslate's API (service/libretranslate.py: every path below /libretranslate/)."""
    from service import apidocs, libretranslate, webpage

    found: dict[str, frozenset[str]] = {}
    for prefix in (webpage.ASSETS_PREFIX, apidocs.ASSETS_PREFIX):
        below = [route for route in (*webpage.routes(), *apidocs.routes()) if route.path.startswith(prefix)]
        assert [route.path for route in below] == [prefix + "{name}"], f"more than the assets under {prefix}"
        found[prefix] = frozenset(below[0].methods)
    # LibreTranslate's GET routes (languages, frontend/settings, health), its POST ones (translate, detect, and the
    # two it answers 403 "disabled"): libretranslate.serve.
    get = {"GET", "HEAD"} if libretranslate._GET else set()
    found[libretranslate.PREFIX + "/"] = frozenset(get | {"POST"})
    return found


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_deployment(docs) -> dict:
    return one(docs, "Deployment", "translation")


def server_container(docs) -> dict:
    containers = server_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def config_map(docs, name: str) -> dict:
    """The generated ConfigMap `name` (its rendered name carries a content hash)."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one ConfigMap {name}, found {len(found)}"
    return found[0]


def container_env(docs, container: dict) -> dict[str, str]:
    """The environment a container gets: its envFrom ConfigMaps, then its env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
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


def workloads(docs) -> list[dict]:
    """Every object with a pod template."""
    return [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")]


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' rule (ToleratesTaint): some toleration matches the taint's key, value and effect."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint["effect"]:
            continue
        if toleration.get("key") and toleration["key"] != taint["key"]:
            continue
        operator = toleration.get("operator", "Equal")
        if operator == "Exists" or (operator == "Equal" and toleration.get("value", "") == taint.get("value", "")):
            return True
    return False


def fluent_bit_config(docs) -> tuple[dict, dict]:
    """(fluent-bit.yaml, output.yaml) from the rendered logging component, parsed."""
    data = config_map(docs, "fluent-bit-config")["data"]
    assert set(data) == {"fluent-bit.yaml", "output.yaml"}
    return yaml.safe_load(data["fluent-bit.yaml"]), yaml.safe_load(data["output.yaml"])


def fluent_bit_matches(pattern: str, tag: str) -> bool:
    """Fluent Bit's `match`: a wildcard pattern over the whole tag."""
    return fnmatch.fnmatchcase(tag, pattern)
