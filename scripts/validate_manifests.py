#!/usr/bin/env python3
"""Render every kustomization and validate every object it renders, strictly, offline; none is skipped.

    python scripts/validate_manifests.py [--kubernetes-version 1.33] [--schemas k8s/schemas] [PATH ...]

PATH is a kustomization directory, or a directory searched for them (default: k8s): every directory under it whose
kustomization.yaml is a Kustomization (not a Component) is rendered with `kubectl kustomize` (--kustomize). Then
each object is checked against one schema, with unknown fields as errors:

- built-in kinds (the core group, and groups that are bare words or end in .k8s.io) against the Kubernetes API
  schemas of --kubernetes-version (kubernetes-validate --strict);
- custom resources against k8s/schemas/<group>/<kind>_<version>.json, which scripts/crd_to_schema.py makes from the
  CRDs of the exact releases k8s/cluster/addons/helmfile.yaml installs (k8s/schemas/README.md), and their metadata
  against the built-in ObjectMeta schema (a CRD's schema says only `metadata: object`).

An object whose kind has no schema is an error, never a warning: add the CRD's schema, or the object can't be
checked. Exit status 1 when anything is invalid, 2 when a directory doesn't render. tests/ import this module.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "k8s" / "schemas"
KUBERNETES_VERSION = "1.33"
KUSTOMIZE = "kubectl kustomize"


def group_and_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def is_builtin(api_version: str) -> bool:
    """The Kubernetes API's own groups: core ("v1"), bare words (apps, batch, policy, autoscaling) and *.k8s.io.
    Anything else (monitoring.coreos.com, networking.istio.io, cert-manager.io) is a custom resource."""
    group, _ = group_and_version(api_version)
    return group == "" or "." not in group or group.endswith(".k8s.io")


def schema_path(api_version: str, kind: str, schemas: Path = SCHEMAS) -> Path:
    group, version = group_and_version(api_version)
    return schemas / group / f"{kind.lower()}_{version}.json"


@cache
def _validator(path: Path) -> jsonschema.protocols.Validator:
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def _where(path: Iterable) -> str:
    return ".".join(str(part) for part in path) or "(root)"


def validate_object(doc: dict, kubernetes_version: str = KUBERNETES_VERSION, schemas: Path = SCHEMAS) -> list[str]:
    """Every reason `doc` is not a valid object; empty when it is."""
    from kubernetes_validate import utils as kv

    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["no apiVersion or kind"]
    if is_builtin(api_version):
        try:
            kv.validate(doc, kubernetes_version, strict=True)
        except kv.SchemaNotFoundError:
            return [f"{api_version} {kind} is not a Kubernetes {kubernetes_version} kind"]
        except kv.ValidationError as error:
            return [f"{_where(error.path)}: {error.message}"]
        return []
    path = schema_path(api_version, kind, schemas)
    if not path.is_file():
        return [
            f"no schema for {api_version} {kind}: add {_shown(path)} (scripts/crd_to_schema.py, from the CRD of the release that installs the kind)"
        ]
    errors = [f"{_where(e.absolute_path)}: {e.message}" for e in sorted(_validator(path).iter_errors(doc), key=lambda e: list(map(str, e.path)))]
    # The metadata as a built-in object's: a ConfigMap's metadata is exactly ObjectMeta.
    try:
        kv.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}, kubernetes_version, strict=True)
    except kv.ValidationError as error:
        errors.append(f"{_where(error.path)}: {error.message}")
    return errors


def _shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it."""
    resolved = path.resolve()
    return resolved.relative_to(ROOT) if ROOT in resolved.parents else path


def kustomizations(path: Path) -> list[Path]:
    """`path` if it is a kustomization, else every Kustomization (not Component) directory under it, sorted."""
    if (path / "kustomization.yaml").is_file():
        return [path]
    found = []
    for file in sorted(path.rglob("kustomization.yaml")):
        if (yaml.safe_load(file.read_text()) or {}).get("kind", "Kustomization") == "Kustomization":
            found.append(file.parent)
    return found


def render(directory: Path, kustomize: Sequence[str] = tuple(shlex.split(KUSTOMIZE))) -> list[dict]:
    result = subprocess.run([*kustomize, str(directory)], capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RenderError(f"{' '.join(kustomize)} {directory} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    pass


@dataclass
class Report:
    directory: Path
    objects: int = 0
    kinds: set[tuple[str, str]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def validate_directory(
    directory: Path, kubernetes_version: str = KUBERNETES_VERSION, schemas: Path = SCHEMAS, kustomize: Sequence[str] = tuple(shlex.split(KUSTOMIZE))
) -> Report:
    report = Report(directory)
    for doc in render(directory, kustomize):
        report.objects += 1
        report.kinds.add((doc.get("apiVersion", ""), doc.get("kind", "")))
        name = doc.get("metadata", {}).get("name")
        report.errors += [f"{doc.get('kind')}/{name}: {error}" for error in validate_object(doc, kubernetes_version, schemas)]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "k8s"], help="kustomizations, or directories to search (default: k8s)")
    parser.add_argument("-k", "--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="custom resources' schemas (default: k8s/schemas)")
    parser.add_argument("--kustomize", default=KUSTOMIZE, help=f"renders a directory (default: {KUSTOMIZE})")
    args = parser.parse_args(argv)

    directories = [d for path in args.paths for d in kustomizations(path)]
    if not directories:
        print(f"no kustomization under {' '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    status = 0
    for directory in directories:
        shown = _shown(directory)
        try:
            report = validate_directory(directory, args.kubernetes_version, args.schemas, shlex.split(args.kustomize))
        except RenderError as error:
            print(f"{shown}: {error}", file=sys.stderr)
            status = max(status, 2)
            continue
        custom = sorted(f"{kind} ({api})" for api, kind in report.kinds if not is_builtin(api))
        print(
            f"{shown}: {report.objects} objects"
            + (f", custom: {', '.join(custom)}" if custom else "")
            + (f", {len(report.errors)} INVALID" if report.errors else ", valid")
        )
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
        if report.errors:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
