"""The reliability steps at small scale: schemathesis, every hostile input, a tiny overload, Redis killed
under load, a soak of seconds; and the hostile checks themselves, shown to catch what they are for."""

from __future__ import annotations

import math
import shutil

import pytest

from loadtest.bench.server import Service
from loadtest.reliability import hostile, overload, raw, redis_kill, soak, spec

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
    result = overload.run(toy_model_dir, tmp_path, seconds=2, warm_up_seconds=1, queue=64, capacity_connections=32,
                          flood_connections=400, probe_requests=50)
    assert result["capacity_non_2xx"] == 0 and result["capacity_socket_errors"] == 0  # below the queue nobody is refused
    assert result["flood_refused_share"] > 0  # the flood was refused, in part
    assert result["flood_socket_errors"] == 0
    assert result["probe"]["refused"] >= 1 and result["probe"]["other_statuses"] == []
    assert math.isfinite(result["probe"]["refused_p50_ms"])
    # Two seconds on a shared machine are noisy: this only catches a collapse (once 0.02 of capacity).
    assert result["ratio"] > 0.3, result
    assert result["alive_after"]


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
