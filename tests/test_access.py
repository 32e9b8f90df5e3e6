"""API keys and per-client fair use: unit tests of service/access.py and the edge's 401/429 through the app."""

from __future__ import annotations

import asyncio
import os

import pytest

from service.access import AccessError, ApiKeys, FairUse
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
        assert metric_value(metrics, "translation_requests_total", 'status="401"') == 3


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


async def test_one_client_cannot_fill_the_whole_queue(toy_model_dir):
    # Keys off: the client is its address. A queue of 8 gives each client at most 4 sentences in flight.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), max_queue=8, inter_threads=1)
    async with AppClient(app) as client:
        client.engine.batches.clear()  # the warm-up
        first = asyncio.create_task(client.translate("en", "fr", ["alpha.", "bravo.", "charlie."]))
        await until(lambda: client.engine.batches, what="the first request's batch running")
        refused = await client.translate("en", "fr", ["delta. echo."])
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "code": "rate_limited", "message": "this client has 3 sentences in flight, its limit is 4; retry shortly",
        }
        assert (await first).status_code == 200
        assert (await client.translate("en", "fr", ["delta. echo."])).status_code == 200  # its share is back
