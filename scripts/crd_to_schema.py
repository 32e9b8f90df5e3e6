#!/usr/bin/env python3
"""CustomResourceDefinitions -> JSON schemas, one file per kind and version, for scripts/validate_manifests.py.

    python scripts/crd_to_schema.py --out k8s/schemas --kind VirtualService --version v1 crd-all.gen.yaml
    python scripts/crd_to_schema.py --out k8s/schemas --check ...     # exit 1 if a vendored file differs

Each served version's `openAPIV3Schema` becomes `<out>/<group>/<kind>_<version>.json` (lower case), the layout of
datreeio/CRDs-catalog and of kubeconform's `{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json`. The
conversion follows kubeconform's scripts/openapi2jsonschema.py, made exact where that is loose:

- strict: every object node that lists `properties` gets `additionalProperties: false` (a misspelt field is an
  error, as with `kubectl --validate=strict`), the root included (kubeconform's DENY_ROOT_ADDITIONAL_PROPERTIES),
  except where the CRD says `x-kubernetes-preserve-unknown-fields: true`. Only the structural nodes are closed
  (properties, items, additionalProperties), never the branches of allOf/anyOf/oneOf/not, which restate a subset
  of the fields they constrain. The root also states apiVersion, kind (this version and kind only) and metadata,
  which the API server adds to every CRD's schema;
- `x-kubernetes-int-or-string: true` (and the old `format: int-or-string`) accepts an integer or a string;
- `nullable: true` accepts null;
- patterns are written so that Python's `re` reads them as the API server's Go `regexp` does;
- descriptions are dropped (--keep-descriptions keeps them): a third or more of the bytes, and none of the checks.

What a JSON schema cannot say stays with the API server: CEL rules (`x-kubernetes-validations`, kept in the file
for reference), defaults, and the operators' own admission webhooks.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

# Keys whose value is one subschema, and keys whose value is a list of subschemas (JSON schema / OpenAPI v3).
_STRUCTURAL_ONE = ("items", "additionalProperties")
_LOGICAL_MANY = ("allOf", "anyOf", "oneOf")
_LOGICAL_ONE = ("not",)


def crds(texts: Iterable[str]) -> Iterator[dict]:
    """Every CustomResourceDefinition in the YAML streams (lists of them too)."""
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict):
                continue
            for item in doc.get("items", [doc]) if doc.get("kind") == "List" else [doc]:
                if item.get("kind") == "CustomResourceDefinition":
                    yield item


def to_json_schema(openapi: dict, api_version: str, kind: str, *, keep_descriptions: bool = False) -> dict:
    """One version's openAPIV3Schema as a strict JSON schema (see the module's docstring). The API server adds
    apiVersion, kind and metadata to every custom resource's schema whether the CRD lists them or not (Istio's
    don't): the root states them, with this version and kind as the only values, so that closing it is right."""
    schema = _node(copy.deepcopy(openapi), structural=True, keep_descriptions=keep_descriptions)
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "enum": [api_version]}
    properties["kind"] = {"type": "string", "enum": [kind]}
    properties.setdefault("metadata", {"type": "object"})
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema.setdefault("type", "object")
    if not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


def _node(schema: Any, *, structural: bool, keep_descriptions: bool) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and not keep_descriptions:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _node(sub, structural=structural, keep_descriptions=keep_descriptions) for name, sub in value.items()}
        elif key in _STRUCTURAL_ONE and isinstance(value, dict):
            out[key] = _node(value, structural=structural, keep_descriptions=keep_descriptions)
        elif key in _LOGICAL_MANY and isinstance(value, list):
            out[key] = [_node(sub, structural=False, keep_descriptions=keep_descriptions) for sub in value]
        elif key in _LOGICAL_ONE and isinstance(value, dict):
            out[key] = _node(value, structural=False, keep_descriptions=keep_descriptions)
        else:
            out[key] = value
    if isinstance(out.get("pattern"), str):
        out["pattern"] = _portable_pattern(out["pattern"])
    if out.get("x-kubernetes-int-or-string") or out.get("format") == "int-or-string":
        out.pop("type", None)
        if out.get("format") == "int-or-string":
            out.pop("format")
        if not any(key in out for key in _LOGICAL_MANY):
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if structural and "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _portable_pattern(pattern: str) -> str:
    """The API server's patterns are Go (RE2) expressions, which take inline flags anywhere; Python's take global
    flags only at the start. `^(?i)(abort|warn)?$` (PrometheusRule) becomes `(?i)^(abort|warn)?$`: the same
    expression for both."""
    match = re.match(r"\^(\(\?[a-zA-Z]+\))", pattern)
    return f"{match.group(1)}^{pattern[match.end() :]}" if match else pattern


def schemas(crd: dict, *, versions: Iterable[str] = (), keep_descriptions: bool = False) -> Iterator[tuple[str, dict]]:
    """(relative path, schema) for each served version of one CRD (of `versions` only, if any)."""
    versions = set(versions)
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    for version in spec.get("versions", []):
        openapi = version.get("schema", {}).get("openAPIV3Schema")
        if openapi is None or not version.get("served", True) or (versions and version["name"] not in versions):
            continue
        schema = to_json_schema(openapi, f"{group}/{version['name']}", kind, keep_descriptions=keep_descriptions)
        yield f"{group}/{kind.lower()}_{version['name']}.json", schema


def dump(schema: dict) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="YAML files holding CustomResourceDefinitions")
    parser.add_argument("--out", type=Path, default=Path("k8s/schemas"), help="schema directory (default: k8s/schemas)")
    parser.add_argument("--kind", action="append", default=[], help="only this kind (repeatable; default: every CRD)")
    parser.add_argument("--version", action="append", default=[], help="only this API version, e.g. v1 (repeatable; default: every served one)")
    parser.add_argument("--keep-descriptions", action="store_true", help="keep the fields' descriptions")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or differs")
    args = parser.parse_args(argv)

    wanted = {kind.lower() for kind in args.kind}
    seen: set[str] = set()
    stale = []
    for crd in crds(path.read_text() for path in args.files):
        kind = crd["spec"]["names"]["kind"]
        if wanted and kind.lower() not in wanted:
            continue
        seen.add(kind.lower())
        for relative, schema in schemas(crd, versions=args.version, keep_descriptions=args.keep_descriptions):
            target = args.out / relative
            text = dump(schema)
            if args.check:
                if not target.is_file() or target.read_text() != text:
                    stale.append(str(target))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(target)
    missing = wanted - seen
    if missing:
        print(f"no CustomResourceDefinition for: {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    if stale:
        print("differs from its CRD (regenerate it):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
