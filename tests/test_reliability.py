"""`make reliability` at small scale: schemathesis, every hostile input, a tiny overload, Redis killed under
load, SIGTERM under 30 clients (through the CLI and its report), a soak of seconds, the field cases (behind
nginx, stalled bodies, forged X-Forwarded-For, pipelining, guessed keys, idle connections under a descriptor
limit, SIGHUP); and the checks themselves, shown to catch what they are for."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from loadtest.bench.server import Service
from loadtest.reliability import field, hostile, hostile_clients, nginx, overload, raw, redis_kill, report, soak, spec
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

HOSTILE_NAMES = [case.name for case in hostile.cases()]


# --- schemathesis


def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(toy_model_dir, tmp_path):
    with Service.ct2(toy_model_dir, {}, tmp_path / "service.log") as service:
        result = spec.run(service.url, tmp_path / "schemathesis", max_examples=40, timeout_s=120)
        assert service.process.poll() is None
    # The coverage phase alone derives a few hundred cases from the document; fuzzing adds ~40 per operation.
    assert result["cases"] >= 100
    assert {"200", "422"} <= set(result["statuses"]), "real translations and real refusals were exercised"
    assert result["errors"] == []
    assert result["server_errors"] == 0
    assert result["violations"] == 0, [(f["check"], f["cases"], f["answers"]) for f in result["failures"]]
    assert result["exit_code"] == 0


# --- hostile inputs


@pytest.fixture(scope="module")
def hostile_service(toy_model_dir, tmp_path_factory):
    with Service.ct2(toy_model_dir, hostile.SERVICE_ENV, tmp_path_factory.mktemp("hostile") / "service.log") as service:
        yield service
        assert service.process.poll() is None, "the service died during the hostile set"


@pytest.fixture(scope="module")
def hostile_cases() -> dict[str, hostile.Case]:
    return {case.name: case for case in hostile.cases()}


def test_the_hostile_set_is_large_named_and_covers_every_group():
    assert len(HOSTILE_NAMES) >= 100
    assert len(set(HOSTILE_NAMES)) == len(HOSTILE_NAMES)
    groups = {case.group for case in hostile.cases()}
    assert groups >= {"malformed JSON", "wrong types", "ids", "texts", "limits", "content types", "framing",
                      "slow clients", "methods and paths", "headers"}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_input(hostile_service, hostile_cases, name):
    """Expected status, the error shape, no 5xx or traceback, exact translations, healthy afterwards."""
    result = hostile.run(hostile_service.url, [hostile_cases[name]])
    (row,) = result["rows"]
    assert row["problems"] == [], f"{name}: got {row['statuses']} {row['codes']}"


def _response(status: int, body: bytes, content_type: str = "application/json", **headers) -> raw.Response:
    return raw.Response(status, "", [("content-type", content_type), *headers.items()], body)


def test_the_hostile_checks_catch_what_they_are_for():
    case = hostile.Case("x", "g", expect=(hostile.INVALID,))
    good = raw.Exchange([_response(422, b'{"error":{"code":"validation_error","message":"m"}}')], seconds=0.01)
    assert hostile.check(case, good) == []
    broken = {
        "a 5xx": _response(500, b'{"error":{"code":"internal_error","message":"m"}}'),
        "not expected": _response(400, b'{"error":{"code":"malformed_json","message":"m"}}'),
        "a traceback": _response(422, b'{"error":{"code":"validation_error","message":"Traceback (most recent call last)"}}'),
        "not the shape": _response(422, b'{"detail":"bad"}'),
        "extra keys": _response(422, b'{"error":{"code":"validation_error","message":"m","trace":"x"}}'),
        "a code for another status": _response(422, b'{"error":{"code":"not_found","message":"m"}}'),
        "text/plain": _response(422, b"Unprocessable", "text/plain"),
    }
    for what, response in broken.items():
        assert hostile.check(case, raw.Exchange([response], seconds=0.01)), what
    assert hostile.check(case, raw.Exchange([], seconds=0.01)) == ["no response"]
    assert hostile.check(hostile.Case("x", "g", expect=(hostile.NOT_ALLOWED,)), raw.Exchange(
        [_response(405, b'{"error":{"code":"method_not_allowed","message":"m"}}')], seconds=0.01)) == ["405 without Allow"]
    translated = hostile.Case("x", "g", texts=("bravo alpha",), ids=("1",))
    assert hostile.check(translated, raw.Exchange([_response(200, b'{"result":[{"id":"1","text":"bravo alpha"}]}')], seconds=0.01)) == []
    assert hostile.check(translated, raw.Exchange([_response(200, b'{"result":[{"id":"1","text":"alpha bravo"}]}')], seconds=0.01))
    assert hostile.check(translated, raw.Exchange([_response(200, b'{"result":[{"id":1,"text":"bravo alpha"}]}')], seconds=0.01))
    slow = hostile.Case("x", "g", expect=(hostile.TIMEOUT,), closes=True, seconds=(0.9, 4.0))
    timed_out = _response(408, b'{"error":{"code":"request_timeout","message":"m"}}')
    assert hostile.check(slow, raw.Exchange([timed_out], closed=True, seconds=1.0)) == []
    assert hostile.check(slow, raw.Exchange([timed_out], closed=False, seconds=1.0)) == ["the connection was left open"]
    assert hostile.check(slow, raw.Exchange([timed_out], closed=True, seconds=9.0))


# --- overload, Redis, soak


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")
def test_a_tiny_overload_refuses_the_flood_cheaply_and_keeps_serving(toy_model_dir, tmp_path):
    # 1,000 flood connections: each refused one is held for its Retry-After (1 s), so the refusals per second
    # are about the connection count; with 400 only ~5% of requests were refused and the probe, ~30 requests,
    # went unrefused one run in five.
    result = overload.run(toy_model_dir, tmp_path, seconds=2, warm_up_seconds=1, queue=64, capacity_connections=32,
                          flood_connections=1000, probe_requests=50)
    figures = json.dumps(result)  # every assertion shows them: two seconds on a shared machine are noisy
    assert result["capacity_non_2xx"] == 0 and result["capacity_socket_errors"] == 0, figures  # below the queue nobody is refused
    assert result["flood_refused_share"] > 0, figures  # the flood was refused, in part
    assert result["flood_socket_errors"] == 0, figures
    assert result["probe"]["refused"] >= 1 and result["probe"]["other_statuses"] == [], figures
    assert math.isfinite(result["probe"]["refused_p50_ms"]), figures
    # This only catches a collapse (once 0.02 of capacity), not the 0.7 target of the full run.
    assert result["ratio"] > 0.3, figures
    # Capacity and flood alternate; the ratio is the rounds' median, and the table shows that round.
    ratios = sorted(r["ratio"] for r in result["rounds"])
    assert len(ratios) == 3 and result["ratio"] == ratios[1], figures
    assert {"capacity_good_per_s": result["capacity_good_per_s"], "flood_good_per_s": result["flood_good_per_s"],
            "ratio": result["ratio"]} in result["rounds"], figures
    assert result["alive_after"], figures


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (make test installs it)")
def test_killing_redis_mid_load_fails_no_request_and_both_replicas_report_it(toy_model_dir, tmp_path):
    result = redis_kill.run(toy_model_dir, tmp_path, clients=8, seconds=4.0, kill_at=1.5)
    assert result["redis_keys_before_kill"] > 0, "the replicas shared their translations through Redis"
    assert result["requests_before_kill"] > 50 and result["requests_after_kill"] > 50
    assert result["failed"] == 0, result["failures"]
    assert result["inexact"] == 0
    assert result["cache_up_before"] == [1.0, 1.0]
    assert result["cache_up_after"] == [0.0, 0.0]
    assert all(errors >= 1 for errors in result["cache_errors_after"])
    assert result["ready_after"] == [200, 200] and result["alive_after"] == [True, True]


def test_a_short_soak_fails_nothing_and_memory_stays_flat(toy_model_dir, tmp_path):
    result = soak.run(toy_model_dir, tmp_path, seconds=6.0, rate=60.0)
    assert result["requests"] == 360
    assert result["failed"] == 0, result["failures"]
    assert result["cache_hits"] > 0 and result["cache_misses"] > 0
    assert math.isfinite(result["p99_first_ms"]) and math.isfinite(result["p99_last_ms"])
    assert result["rss_growth"] < 0.1  # 5% is the target over minutes; seconds carry more allocator noise
    assert result["open_fds_after"] <= result["open_fds_before"] + 5
    assert result["alive_after"]


# --- SIGTERM, through the CLI and its report


def test_sigterm_under_30_clients_through_the_cli_resets_nothing_and_reports_it(toy_model_dir, tmp_path):
    output, results = tmp_path / "reliability.md", tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest.reliability", "--steps", "sigterm", "--sigterm-clients", "30",
         "--model-dir", str(toy_model_dir), "--work-dir", str(tmp_path), "--output", str(output), "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    figures = json.loads(results.read_text())
    term = figures["steps"]["sigterm"]
    assert term["resets"] == 0, term["reset_errors"]
    assert term["not_200"] == 0 and term["inexact"] == 0
    assert term["answered_after_sigterm"] > 0  # the load straddled the signal
    assert term["connection_close_answers"] > 0  # draining answers sent keep-alive clients on
    assert term["refused_connects"] > 0 and not term["clients_hit_deadline"]  # then the listener closed
    assert term["readyz_503_after_ms"] < 1000
    assert term["exit_code"] == 0 and term["drained_log_line"] and term["tracebacks_in_log"] == 0
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = output.read_text()
    assert "## Key figures" in text and "## Machine" in text and "## 1. SIGTERM under load" in text
    assert "| SIGTERM under 30 keep-alive clients: resets | 0 | 0 | met |" in text


def test_the_report_says_missed_and_not_run_and_the_cli_exits_1(monkeypatch, tmp_path):
    results = {
        "machine": {"cpu": "cpu", "usable_cores": 2, "memory_gib": 1.0, "commit": "abc", "load_average_at_start": "0",
                    "versions": {}},
        "started": "now", "command": "make reliability", "seconds": 1.0, "arguments": {},
        "steps": {
            "sigterm": {"clients": 30, "answered": 10, "answered_after_sigterm": 2, "not_200": 1, "not_200_statuses": [503],
                        "inexact": 0, "resets": 2, "reset_errors": [], "refused_connects": 30, "connection_close_answers": 1,
                        "readyz_503_after_ms": 5.0, "p99_ms": 1.0, "exit_code": 0, "exit_after_sigterm_s": 1.0,
                        "clients_hit_deadline": False, "drained_log_line": True, "tracebacks_in_log": 0},
            "redis": {"error": "RedisMissing: redis-server is not installed"},
        },
    }
    figures = {f["figure"]: f["status"] for f in report.key_figures(results)}
    assert figures["SIGTERM under 30 keep-alive clients: resets"] == "missed"
    assert figures["SIGTERM: answered requests not 200 or inexact"] == "missed"
    assert figures["SIGTERM: exit status"] == "met"
    assert figures["step `redis`"] == "not run"
    text = report.render(results)
    assert "| SIGTERM under 30 keep-alive clients: resets | 2 | 0 | missed |" in text
    assert "Could not run: `RedisMissing: redis-server is not installed`" in text

    from loadtest.reliability import __main__ as cli

    monkeypatch.setattr(cli, "run_step", lambda name, *_: results["steps"][name])
    argv = ["--steps", "sigterm", "--model-dir", str(tmp_path), "--work-dir", str(tmp_path),
            "--output", str(tmp_path / "r.md"), "--results", str(tmp_path / "r.json")]
    assert cli.main(argv) == 1
    assert "missed" in (tmp_path / "r.md").read_text()


# --- the field cases (issue 15). Each runs small and asserts on counts and statuses, never on timing; the
# timed targets (B's p99, RSS, 401s per second...) are the full run's (make reliability, docs/reliability.md).

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")


def _rendered(name: str, step: dict) -> tuple[dict[str, str], str]:
    """The step through the report: its key figures (figure -> status) and its Markdown."""
    results = {"machine": {"cpu": "cpu", "usable_cores": 2, "memory_gib": 1.0, "commit": "abc", "load_average_at_start": "0",
                           "versions": {}},
               "started": "now", "command": "pytest", "seconds": 1.0, "arguments": {}, "steps": {name: step}}
    figures = report.key_figures(results)
    assert figures and all(f["step"] == name for f in figures), figures
    return {f["figure"]: f["status"] for f in figures}, report.render(results)


def test_the_nginx_config_is_ingress_nginx_s_pooled_keepalive_on_loopback(tmp_path):
    config = nginx.nginx_config(tmp_path, listen_port=8081, upstream_port=9527)
    for line in ("keepalive 32;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "listen 127.0.0.1:8081;",
                 "server 127.0.0.1:9527;", "daemon off;", f"error_log {tmp_path}/error.log"):
        assert line in config, line
    assert "0.0.0.0" not in config and "listen 80" not in config


@needs_nginx
@needs_wrk
def test_behind_nginx_a_flood_does_not_refuse_client_b(toy_model_dir, tmp_path):
    result = field.nginx_step(toy_model_dir, tmp_path, seconds=3)
    keyed, open_ = result["keys"], result["open"]
    figures = json.dumps(result)
    for run in (keyed, open_):
        assert run["alive_after"] and run["a"]["socket_errors"] == 0, figures
        assert run["b"]["sent"] >= 20 and run["b"]["inexact"] == 0, figures
        assert math.isfinite(run["b"]["p99_ms"]), figures
        assert set(run["a"]["statuses"]) <= {"200", "429"}, figures
    # With keys, A is far over its rate and is refused; B, at half of its own, is never refused.
    assert keyed["a"]["refused_429"] > 0, figures
    assert keyed["b"]["refused"] == 0, figures
    # Defaults: no per-client limit, and A's 48 x 2 sentences fit the queue: nobody is refused.
    assert open_["b"]["refused"] == 0 and "429" not in open_["a"]["statuses"], figures
    statuses, text = _rendered("nginx", result)
    assert statuses["behind nginx, keys: B's requests refused or failed"] == "met"
    assert "## 1. Behind nginx with pooled upstream keep-alive" in text


def test_stalled_bodies_from_one_key_do_not_lock_out_another(toy_model_dir, tmp_path):
    result = hostile_clients.stalled_step(toy_model_dir, tmp_path, connections=128, seconds=2)
    plain, capped = result["no_cap"], result["cap"]
    figures = json.dumps(result)
    for run in (plain, capped):
        assert run["a_open_failures"] == 0 and run["alive_after"], figures
        assert run["b"]["sent"] >= 20, figures
        assert run["b"]["refused"] == 0, figures  # >= 99% of a few dozen: every one
    assert plain["a_refused_at_once"] == 0 and plain["a_waiting"] == 128, figures  # stalled, not refused
    assert capped["a_refused_at_once"] == 128 - 64 and capped["a_waiting"] == 64, figures
    statuses, text = _rendered("stalled", result)
    assert set(statuses.values()) == {"met"}
    assert "## 1. Stalled bodies" in text


def test_forged_forwarded_values_are_distinct_hostile_and_sized():
    values = field.ForgedValues(size=5000)
    made = [values.value(i) for i in range(30)]
    assert len(set(made)) == 30
    assert all(4900 <= len(v) <= 5000 for v in made)
    assert {values.kind(i) for i in range(3)} == {"garbage", "addresses", "mixed"}
    assert "," not in made[0] and made[1].count(",") > 100 and made[1].endswith("198.0.0.1")


def test_forged_forwarded_headers_are_answered_and_the_log_stays_small(toy_model_dir, tmp_path):
    result = field.forged_forwarded(toy_model_dir, tmp_path, requests=300, warm_up=30)
    figures = json.dumps({k: v for k, v in result.items() if k != "errors"})
    assert result["answered"] == 300 and result["alive_after"], result["errors"]
    assert set(result["statuses"]) <= {"200", "429"}, figures
    assert result["log_lines"] >= 300, figures  # a line per request (info)
    # The log's size is not timing: a header value in a log line shows at once. RSS is left to the full run.
    assert result["longest_log_line_bytes"] < 4096, figures
    assert result["log_growth_per_3000_mb"] <= field.LOG_TARGET_MB, figures
    _, text = _rendered("forwarded", result)
    assert "## 1. Forged X-Forwarded-For" in text


def test_600_pipelined_requests_are_all_answered_in_order(toy_model_dir, tmp_path):
    result = hostile_clients.pipelined_step(toy_model_dir, tmp_path, requests=600)
    for what in ("translations", "healthz"):
        run = result[what]
        assert run["answered"] == 600 and run["statuses"] == {"200": 600}, (what, run)
    assert result["translations"]["in_order"] == 600
    assert result["alive_after"]
    statuses, _ = _rendered("pipelined", result)
    assert set(statuses.values()) == {"met"}


@needs_wrk
def test_guessing_api_keys_is_throttled_and_a_valid_key_still_served(toy_model_dir, tmp_path):
    result = hostile_clients.wrong_keys(toy_model_dir, tmp_path, connections=100, seconds=2)
    figures = json.dumps(result)
    assert set(result["statuses"]) <= {"401", "429"} and result["socket_errors"] == 0, figures
    assert result["statuses"].get("401", 0) >= 1 and result["statuses"].get("429", 0) >= 1, figures  # a burst, then 429
    # ~20 guesses and one a second pass the throttle: hundreds of times under the bar, not a timing question.
    assert result["unauthorized_per_s"] <= hostile_clients.WRONG_KEY_401_PER_S_TARGET, figures
    assert result["valid_key_probes"] >= 2 and result["valid_key_statuses"] == {"200": result["valid_key_probes"]}, figures
    assert result["log_lines_naming_the_address"] > 0, figures  # failed authentication is logged with the address
    assert result["healthz_after"] == 200 and result["alive_after"], figures
    statuses, _ = _rendered("wrongkeys", result)
    assert set(statuses.values()) == {"met"}


def test_healthz_answers_with_1100_idle_connections_under_a_1024_descriptor_limit(toy_model_dir, tmp_path):
    result = hostile_clients.idle_connections(toy_model_dir, tmp_path, idle=1100, nofile=1024)
    figures = json.dumps(result)
    assert result["service_open_files_limit"] == "1024:1024" and result["opened"] == 1100, figures
    assert result["healthz"] == 200 and result["readyz"] == 200, figures
    # Past the service's connection cap (below 1,024) idle connections get a fast 503 or are closed (the oldest
    # silent ones make room for new connections), never reset.
    assert result["idle_refused_503"] + result["idle_closed_without_answer"] >= 1100 - 1024, figures
    assert result["after_close_healthz"] == 200 and result["after_close_translation"] == 200, figures
    assert result["alive_after"], figures
    _rendered("descriptors", result)


def test_sighup_under_load_loses_no_request(toy_model_dir, tmp_path):
    result = hostile_clients.sighup(toy_model_dir, tmp_path, clients=8)
    figures = json.dumps(result)
    assert result["answered_after_sighup"] > 0, figures  # the load straddled the signal
    assert result["not_200"] == 0 and result["inexact"] == 0, figures
    # A request on a connection the service had served on, then dropped, is a loss every time. A connection
    # opened just as the listener closes can be reset from the backlog: counted by the full run, too racy here.
    assert result["resets"] - result["resets_on_fresh_connections"] == 0, figures
    assert result["outcome"] in ("drained: exit 0", "ignored: kept serving"), figures
    assert result["tracebacks_in_log"] == 0, figures
    _rendered("sighup", result)


def test_the_field_steps_run_through_the_cli_and_its_report(toy_model_dir, tmp_path):
    output, results = tmp_path / "field.md", tmp_path / "field.json"
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest.reliability", "--steps", "pipelined", "--model-dir", str(toy_model_dir),
         "--work-dir", str(tmp_path), "--output", str(output), "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    step = json.loads(results.read_text())["steps"]["pipelined"]
    assert "error" not in step, step
    text = output.read_text()
    assert "## 1. Pipelining" in text and "pipelined in one write on one connection" in text
    assert completed.returncode == (0 if step["translations"]["met"] and step["healthz"]["met"] else 1), completed.stderr[-3000:]

    from loadtest.reliability import __main__ as cli

    assert set(cli.FIELD_STEPS) <= set(cli.STEPS) and cli.STEPS[-1] == "soak"
