"""Monitoring, offline: the alert rules pass promtool (syntax and unit tests), the PrometheusRule is
the rules file, the dashboard and adapter queries parse, and every metric they name is one the
service really exports (a real service process on the toy model is scraped).

promtool comes from the `prometheus` Debian package (scripts/install_system_deps.sh). Without it
the promtool tests skip with a reason; with CI set they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from loadtest.paths import ROOT

MONITORING = ROOT / "k8s" / "components" / "monitoring"
RULES_FILE = MONITORING / "alerts.rules.yml"
RULES_TESTS = MONITORING / "alerts.test.yml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
ADAPTER_RULES = MONITORING / "adapter-rules.yaml"
CONTRACTS = ROOT / "docs" / "contracts.md"

# Metrics the queries may use that the service does not export: kube-state-metrics' HPA series
# (TranslationAutoscalerAtMax). Keep this list small and explicit.
OTHER_METRICS = {
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}
# prometheus-client's process collector (Linux).
PROCESS_METRICS = {
    "process_cpu_seconds_total", "process_start_time_seconds", "process_resident_memory_bytes",
    "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
}  # fmt: skip
SERVICE_METRIC = re.compile(r"\b((?:translation|process)_\w+?)(?=[{\[)\s]|$)")
ANY_SELECTOR = re.compile(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(?=[{\[])")
SUFFIX = re.compile(r"_(bucket|sum|count|total|created)$")


def require_promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian: apt-get install prometheus; make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must not skip this test")
        pytest.skip(message)
    return path


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([require_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# --- the queries ---------------------------------------------------------------------------------


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # label_values(SELECTOR, label): the selector is the PromQL part.
            found[f"variable {variable['name']}"] = re.fullmatch(r"label_values\((.*),\s*\w+\)", query).group(1)
    return found


def adapter_expressions() -> dict[str, str]:
    found = {}
    for i, rule in enumerate(yaml.safe_load(ADAPTER_RULES.read_text())["rules"]):
        series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
        found[f"adapter rule {i} seriesQuery"] = rule["seriesQuery"]
        # The adapter's template, filled in as it would for one pod of the HPA.
        found[f"adapter rule {i} metricsQuery"] = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="translation", pod=~"translation-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
    return found


def all_expressions() -> dict[str, str]:
    return {**rule_expressions(), **dashboard_expressions(), **adapter_expressions()}


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$namespace", "translation")


def without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def service_metric_names(expr: str) -> set[str]:
    return set(SERVICE_METRIC.findall(without_strings(expr)))


def base_name(name: str) -> str:
    return SUFFIX.sub("", name)


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES_FILE.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts():
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_adapter_queries_are_valid_promql(tmp_path):
    """promtool parses every query when it is written as a recording rule."""
    queries = {**dashboard_expressions(), **adapter_expressions()}
    rules = [{"record": f"check:query_{i}", "expr": grafana_to_promql(expr)} for i, expr in enumerate(queries.values())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, f"{list(queries)}\n{result.stdout}{result.stderr}"


def test_prometheusrule_spec_is_the_rules_file():
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text()), (
        "prometheusrule.yaml differs from alerts.rules.yml: python k8s/components/monitoring/render_prometheusrule.py"
    )
    result = subprocess.run(
        [sys.executable, str(MONITORING / "render_prometheusrule.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- what the alerts and the dashboard cover ------------------------------------------------------


def test_alerts_cover_the_failure_modes():
    rules = rule_expressions()
    text = {name: " ".join(expr.split()) for name, expr in rules.items()}

    def alert_using(*needles: str) -> str:
        found = [name for name, expr in text.items() if all(n in expr for n in needles)]
        assert found, f"no alert uses {needles}"
        return found[0]

    alert_using('translation_requests_total{job="translation", status=~"5.."}', "translation_requests_total")
    alert_using("histogram_quantile(0.99", "translation_request_duration_seconds_bucket")
    alert_using("translation_queue_depth", "translation_queue_capacity")
    alert_using("translation_ready", "absent(")
    alert_using("changes(process_start_time_seconds")
    alert_using("translation_cache_up")
    alert_using("rate(translation_cache_errors_total")
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# Drift (issue 10): what arrives and what comes out changes while every request still answers 200.
DRIFT_ALERTS = {
    # alert: what its expression must contain (the signal, and the guards that make it meaningful)
    "TranslationLengthRatioOutOfBand": (
        "rate(translation_length_ratio_sum", "rate(translation_length_ratio_count", "< 0.5", "> 2",
    ),
    "TranslationLanguageMismatchHigh": (
        "rate(translation_language_mismatches_total", "translation_language_checks_total", "> 0.2",
        "increase(translation_language_checks_total",
    ),
    "TranslationUnknownPiecesSpike": (
        "rate(translation_unknown_pieces_total", "rate(translation_source_pieces_total", "[1d]", "3 *",
    ),
    "TranslationSourceLanguageDominating": (
        "sum by (namespace, language) (rate(translation_source_sentences_total", "offset", "> 0.8", ">= 0.5",
    ),
}  # fmt: skip


def test_alerts_cover_drift():
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
    unit_tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    cases = [test for case in unit_tests for test in case.get("alert_rule_test", [])]
    for name, needles in DRIFT_ALERTS.items():
        assert name in rules, f"no alert {name}"
        rule = rules[name]
        expr = " ".join(rule["expr"].split())
        for needle in needles:
            assert needle in expr, f"{name}: {needle!r} not in {expr}"
        # Per-pod series are summed before any ratio or comparison, and a traffic floor guards each.
        summed = re.findall(r"sum by \([\w, ]*\) \((?:rate|increase)\(", expr)
        assert len(summed) == expr.count("rate(") + expr.count("increase("), f"{name}: a rate not summed: {expr}"
        assert " and on (namespace)" in expr, f"{name}: no traffic floor"
        assert rule.get("for"), f"{name} has no for:"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        # alerts.test.yml shows it firing, and staying quiet (normal traffic or too little of it).
        outcomes = {bool(test.get("exp_alerts")) for test in cases if test["alertname"] == name}
        assert outcomes == {True, False}, f"alerts.test.yml must show {name} both firing and not firing"


def test_dashboard_shows_the_service():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    joined = " ".join(" ".join(e.split()) for e in dashboard_expressions().values())
    for needle in (
        "rate(translation_requests_total",  # request rate
        "histogram_quantile(0.5, sum by (le) (rate(translation_request_duration_seconds_bucket",  # latency
        "histogram_quantile(0.95, sum by (le) (rate(translation_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(translation_request_duration_seconds_bucket",
        "translation_batch_size_bucket",  # batch size
        "translation_queue_depth",  # queue
        "rate(translation_input_tokens_total",  # tokens/s
        "rate(translation_output_tokens_total",
        "rate(translation_cache_hits_total",  # cache hit ratio
        "rate(translation_cache_misses_total",
        'status=~"5.."',  # errors
        # drift
        "sum by (language, mode) (rate(translation_source_sentences_total",  # source language mix
        "sum by (language) (rate(translation_target_sentences_total",  # target language mix
        "translation_source_length_tokens_bucket",  # source length
        "translation_length_ratio_bucket",  # length ratio quantiles
        "rate(translation_length_ratio_sum",  # and its mean (what the alert uses)
        "rate(translation_unknown_pieces_total",  # unknown-piece rate
        "rate(translation_source_pieces_total",
        "rate(translation_language_mismatches_total",  # mismatch rate
        "rate(translation_language_checks_total",
        "sum by (outcome) (rate(translation_language_detections_total",  # detection outcomes
        "sum by (status) (rate(translation_detect_requests_total",  # POST /detect
        "translation_build_info",  # what runs
    ):
        assert needle in joined, needle
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t.get("expr") for t in panel.get("targets", [])), panel["title"]
    # The drift panels sit under their own (expanded) row.
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    drift = next((row for row in rows if row["title"] == "Drift"), None)
    assert drift is not None and not drift.get("collapsed"), "no expanded Drift row"
    below = [p for p in dashboard["panels"] if p["gridPos"]["y"] > drift["gridPos"]["y"]]
    titles = " ".join(p["title"] for p in below)
    for title in (
        "source language", "target language", "Source length", "Length ratio", "Unknown-piece", "mismatch",
        "detections", "Build info",
    ):  # fmt: skip
        assert title in titles, f"no Drift panel about {title!r}"
    # No two panels overlap.
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine and g["x"] + g["w"] <= 24, f"{panel['title']} overlaps another panel"
        cells |= mine


# --- metric names --------------------------------------------------------------------------------


def test_every_query_names_only_service_or_allowlisted_metrics():
    for where, expr in all_expressions().items():
        for name in ANY_SELECTOR.findall(without_strings(grafana_to_promql(expr))):
            assert re.match(r"(translation|process)_", name) or name in OTHER_METRICS, f"{where}: unexpected metric {name}"


def test_metric_names_are_in_the_contract():
    contract = set(re.findall(r"\btranslation_\w+", CONTRACTS.read_text()))
    assert contract, "docs/contracts.md lists no translation_* metric"
    used = set().union(*(service_metric_names(e) for e in all_expressions().values()))
    assert used
    for name in sorted(used):
        if name.startswith("process_"):
            assert name in PROCESS_METRICS or base_name(name) + "_total" in PROCESS_METRICS, name
        else:
            assert name in contract or base_name(name) in contract, f"{name} is not a metric of docs/contracts.md"


@pytest.mark.slow
def test_metric_names_are_exported_by_the_service(toy_model_dir, start_service):
    from prometheus_client.parser import text_string_to_metric_families

    service = start_service(toy_model_dir)
    # One translation, so that labelled series (translation_requests_total{status}) exist too.
    body = json.dumps({"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": 1, "text": "alpha bravo."}]}})
    request = urllib.request.Request(
        f"{service.url}/translation", data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    # The parser names counters without _total; the *_created gauges prometheus-client adds are skipped.
    families = {f.name: f.type for f in text_string_to_metric_families(exposition) if not f.name.endswith("_created")}

    for where, expr in all_expressions().items():
        for name in service_metric_names(expr):
            base = base_name(name)
            assert base in families, f"{where}: {name} is not exported by the service (has: {sorted(families)})"
            kind = families[base]
            if name.endswith("_bucket"):
                assert kind == "histogram", f"{where}: {name} but {base} is a {kind}"
            if name.endswith("_total"):
                assert kind == "counter", f"{where}: {name} but {base} is a {kind}"
            if name == base and kind in ("histogram", "counter"):
                pytest.fail(f"{where}: {name} is a {kind}; query its _bucket/_sum/_count or _total series")
