"""API keys and per-client fair use: unit tests of service/access.py and the edge's 401/429 through the app."""

from __future__ import annotations

import asyncio
import os

import pytest

from service.access import AccessError, ApiKeys, AuthThrottle, FairUse, Refusal
from tests.helpers import AppClient, SlowEngine, build_app, metric_value, until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_read_from_a_file_and_reloaded_when_it_changes(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team a\nalpha-key\n\n  bravo-key  \n")
    clock = Clock()
    keys = ApiKeys(path, clock=clock)
    assert len(keys) == 2
    assert keys.check("alpha-key") and keys.check("bravo-key")
    assert not keys.check("alpha") and not keys.check("") and not keys.check("# team a")
    path.write_text("charlie-key\n")
    os.utime(path, (1, 1))  # a different mtime even within the same second
    assert keys.check("alpha-key")  # not re-read before a second has passed
    clock.now += 1.5
    assert keys.check("charlie-key") and not keys.check("alpha-key")
    path.unlink()
    clock.now += 1.5
    assert keys.check("charlie-key")  # a file that went away keeps the keys loaded (and logs)


def test_an_unreadable_keys_file_stops_the_start(tmp_path):
    with pytest.raises(AccessError, match="cannot read the API keys file"):
        ApiKeys(tmp_path / "missing")


def test_a_client_name_for_a_key_does_not_reveal_it():
    name = ApiKeys.client_id("alpha-key")
    assert name.startswith("key:") and "alpha" not in name and name == ApiKeys.client_id("alpha-key")


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    fair = FairUse(rate=2, burst=3, max_sentences=0, clock=clock)
    assert [fair.admit_request("a") for _ in range(3)] == [None, None, None]
    refused = fair.admit_request("a")
    assert refused is not None and refused.retry_after == 1 and "2 requests/s" in refused.reason
    assert fair.admit_request("b") is None  # others have their own bucket
    clock.now += 0.5  # one token back
    assert fair.admit_request("a") is None and fair.admit_request("a") is not None


def test_sentences_in_flight_are_capped_per_client():
    fair = FairUse(rate=0, burst=1, max_sentences=10)
    assert fair.hold_sentences("a", 8) is None
    assert fair.hold_sentences("a", 3) is not None  # 11 > 10
    assert fair.hold_sentences("b", 10) is None
    fair.release_sentences("a", 8)
    assert fair.hold_sentences("a", 3) is None
    assert FairUse(rate=0, burst=1, max_sentences=10).hold_sentences("c", 50) is None  # alone, a big request runs


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text("good-key\n")
    return path


async def test_with_keys_every_route_but_the_probes_needs_one(toy_model_dir, keys_file):
    async with AppClient(build_app(toy_model_dir, api_keys_file=keys_file)) as client:
        for headers in ({}, {"authorization": "Bearer wrong-key"}, {"authorization": "Basic good-key"}):
            response = await client.translate("en", "fr", ["alpha bravo"], headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == {
                "code": "unauthorized", "message": "missing or invalid API key: send `Authorization: Bearer <key>`",
            }
            assert response.headers["www-authenticate"] == 'Bearer realm="translation"'
            assert (await client.http.get("/languages", headers=headers)).status_code == 401
        good = {"authorization": "Bearer good-key"}
        response = await client.translate("en", "fr", ["alpha bravo"], headers=good)
        assert response.json()["result"][0]["text"] == "bravo alpha"
        assert (await client.http.get("/languages", headers=good)).status_code == 200
        assert (await client.http.get("/healthz")).status_code == 200
        assert (await client.http.get("/readyz")).status_code == 200
        metrics = (await client.http.get("/metrics")).text  # open unless metrics_require_key
        assert metric_value(metrics, "translation_requests_total", 'status="401",reason="unauthorized"') == 3


async def test_metrics_can_be_put_behind_a_key(toy_model_dir, keys_file):
    async with AppClient(build_app(toy_model_dir, api_keys_file=keys_file, metrics_require_key="true")) as client:
        assert (await client.http.get("/metrics")).status_code == 401
        assert (await client.http.get("/metrics", headers={"authorization": "Bearer good-key"})).status_code == 200


async def test_a_client_over_its_rate_gets_429_while_another_key_is_served(toy_model_dir, tmp_path):
    path = tmp_path / "api-keys"
    path.write_text("greedy\npolite\n")
    app = build_app(toy_model_dir, api_keys_file=path, client_rate_per_second=1, client_burst=2)
    async with AppClient(app) as client:
        greedy = {"authorization": "Bearer greedy"}
        statuses = [(await client.translate("en", "fr", ["alpha"], headers=greedy)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await client.translate("en", "fr", ["alpha"], headers=greedy)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.json()["error"]["message"] == "this client is over its 1 requests/s; retry shortly"
        assert refused.headers["retry-after"] == "1"
        polite = await client.translate("en", "fr", ["alpha bravo"], headers={"authorization": "Bearer polite"})
        assert polite.json()["result"][0]["text"] == "bravo alpha"


async def test_with_a_sentence_cap_one_client_cannot_fill_the_whole_queue(toy_model_dir):
    # Keys off: the client is its address. A queue of 8, and each client at most 4 sentences in flight.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), max_queue=8, inter_threads=1, client_max_sentences=4)
    async with AppClient(app) as client:
        client.engine.batches.clear()  # the warm-up
        first = asyncio.create_task(client.translate("en", "fr", ["alpha.", "bravo.", "charlie."]))
        await until(lambda: client.engine.batches, what="the first request's batch running")
        refused = await client.translate("en", "fr", ["delta. echo."])
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "code": "rate_limited", "message": "this client has 3 sentences in flight, its limit is 4; retry shortly",
        }
        other = await client.translate("en", "fr", ["delta. echo."], headers={"x-forwarded-for": "192.0.2.9"})
        assert other.json()["result"][0]["text"] == "delta. echo."  # another address behind the trusted proxy
        assert (await first).status_code == 200
        assert (await client.translate("en", "fr", ["delta. echo."])).status_code == 200  # its share is back
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_requests_total", 'status="429",reason="rate_limited"') == 1


async def test_by_default_no_per_client_limit_applies(toy_model_dir):
    # Behind a proxy without keys, every user can be one client: only the queue bounds the work.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), max_queue=8, inter_threads=1)
    settings = app.runtime.settings
    assert (settings.client_max_sentences, settings.client_rate_per_second, settings.client_max_pending_bodies) == (0, 0, 0)
    async with AppClient(app) as client:
        client.engine.batches.clear()
        first = asyncio.create_task(client.translate("en", "fr", ["alpha.", "bravo.", "charlie."]))
        await until(lambda: client.engine.batches, what="the first request's batch running")
        second = await client.translate("en", "fr", ["delta. echo. golf. kilo."])
        assert second.status_code == 200
        assert (await first).status_code == 200


def test_fair_use_client_table_is_bounded_in_bytes(monkeypatch):
    from service import access

    monkeypatch.setattr(access, "MAX_CLIENT_TABLE_BYTES", 10_000)
    fair = FairUse(rate=1, burst=1, max_sentences=0)
    for index in range(1000):
        fair.admit_request(f"addr:{'x' * 100}{index}")
    assert fair.tracked_bytes <= 10_000 and fair.tracked < 100
    assert fair.tracked_bytes > 10_000 - 400  # it fills up to the budget, no further


def test_busy_clients_are_never_forgotten(monkeypatch):
    from service import access

    monkeypatch.setattr(access, "MAX_TRACKED_CLIENTS", 2)
    fair = FairUse(rate=0, burst=1, max_sentences=10, max_pending_bodies=1)
    assert fair.hold_sentences("a", 5) is None and fair.hold_pending_body("b") is None
    for index in range(10):
        fair.hold_sentences(f"other{index}", 1)
        fair.release_sentences(f"other{index}", 1)
    assert fair.hold_sentences("a", 6) is not None  # still counted: 5 in flight
    assert fair.hold_pending_body("b") is not None


def test_failed_authentications_are_throttled_per_address():
    clock = Clock()
    throttle = AuthThrottle(rate=1, burst=3, clock=clock)
    assert [throttle.failed("192.0.2.1") for _ in range(3)] == [None, None, None]
    refused = throttle.failed("192.0.2.1")
    assert refused == Refusal("too many failed authentications from this address", 1)
    assert throttle.failed("192.0.2.2") is None  # another address has its own budget
    clock.now += 1
    assert throttle.failed("192.0.2.1") is None and throttle.failed("192.0.2.1") is not None
    assert AuthThrottle(rate=0, burst=1).failed("x") is None  # 0: off


async def test_a_wrong_key_flood_gets_429_while_a_valid_key_from_the_same_address_is_served(toy_model_dir, keys_file, caplog):
    app = build_app(toy_model_dir, api_keys_file=keys_file, auth_failures_per_second=1, auth_failure_burst=3)
    async with AppClient(app) as client:
        wrong = {"authorization": "Bearer guess"}
        with caplog.at_level("INFO", logger="service.requests"):
            statuses = [(await client.translate("en", "fr", ["alpha"], headers=wrong)).status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        refused = await client.translate("en", "fr", ["alpha"], headers=wrong)
        assert refused.json()["error"] == {
            "code": "rate_limited", "message": "too many failed authentications from this address; retry later",
        }
        assert refused.headers["retry-after"] == "1"
        assert (await client.http.get("/languages", headers=wrong)).status_code == 429  # every route shares the budget
        good = await client.translate("en", "fr", ["alpha bravo"], headers={"authorization": "Bearer good-key"})
        assert good.json()["result"][0]["text"] == "bravo alpha"
        other_address = await client.translate("en", "fr", ["alpha"], headers={**wrong, "x-forwarded-for": "192.0.2.7"})
        assert other_address.status_code == 401
        logged = [record.fields for record in caplog.records if record.name == "service.requests"]
        assert [(f["status"], f["address"]) for f in logged[:4]] == [(401, "127.0.0.1")] * 3 + [(429, "127.0.0.1")]
