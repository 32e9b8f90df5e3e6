"""Writes prometheusrule.yaml from alerts.rules.yml: the PrometheusRule's spec is the rules file.

    python k8s/components/monitoring/render_prometheusrule.py          # rewrite
    python k8s/components/monitoring/render_prometheusrule.py --check  # exit 1 if out of date

alerts.rules.yml stays the source (promtool checks and unit-tests it); tests/test_monitoring.py
fails when the two differ. Needs PyYAML (in requirements/dev.txt through kubernetes-validate).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.rules.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = "# Generated from alerts.rules.yml by render_prometheusrule.py; edit that file, not this one.\n"
METADATA = {
    "name": "translation",
    "namespace": "translation",
    "labels": {
        "app.kubernetes.io/name": "translation",
        "app.kubernetes.io/part-of": "translation",
        "app.kubernetes.io/managed-by": "kustomize",
        # = service/__init__.py's __version__ (tests/test_k8s.py checks it).
        "app.kubernetes.io/version": "0.1.0",
        # The label kube-prometheus-stack's Prometheus selects rules by (release name); adjust.
        "release": "kube-prometheus-stack",
    },
}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line PromQL stays readable as a literal block.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    spec = yaml.safe_load(RULES.read_text())
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": METADATA,
        "spec": spec,
    }
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.name} is out of date; run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
