"""Schemathesis and the hostile-input set against a real service; the hostile checks themselves, shown to
catch what they are for."""

from __future__ import annotations

import pytest

from loadtest.bench.server import Service
from loadtest.reliability import hostile, raw, spec

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
