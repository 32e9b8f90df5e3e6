"""The HTTP API in-process (ASGI) on the converted toy model: contract, errors, batching, metrics."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from loadtest.toy_task import expected_translation
from tests.helpers import ROOT, AppClient, SlowEngine, build_app, metric_value, until

SENTENCES = ["alpha bravo charlie.", "delta echo", "foxtrot golf hotel india.", "juliet"]


@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        yield client


async def test_contract_exact_translations_in_order_with_ids_echoed(client):
    body = {
        "payload": {
            "fromLang": "en",
            "toLang": "fr",
            "records": [
                {"id": "123", "text": "alpha bravo charlie."},
                {"id": 7, "text": "delta echo"},
                {"id": "123", "text": "foxtrot golf hotel india."},
            ],
        }
    }
    response = await client.http.post("/translation", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "result": [
            {"id": "123", "text": "charlie bravo alpha."},
            {"id": 7, "text": "echo delta"},
            {"id": "123", "text": "india hotel golf foxtrot."},
        ]
    }
    for header in ("x-request-id", "x-queue-time", "x-inference-time", "x-total-time"):
        assert header in response.headers
    assert float(response.headers["x-total-time"]) >= float(response.headers["x-inference-time"]) > 0


@pytest.mark.parametrize("source, target", [("en", "en"), ("en", "fr"), ("fr", "de"), ("de", "en"), ("es", "fr")])
async def test_language_tokens_steer_the_output(client, source, target):
    response = await client.translate(source, target, SENTENCES)
    assert response.status_code == 200
    assert [r["text"] for r in response.json()["result"]] == [expected_translation(s, target) for s in SENTENCES]


async def test_long_texts_are_split_into_sentences_and_rejoined_keeping_paragraphs(client):
    text = "alpha bravo. charlie delta echo.\n\nfoxtrot golf hotel.\nindia juliet."
    response = await client.translate("en", "fr", [text])
    assert response.json()["result"][0]["text"] == "bravo alpha. echo delta charlie.\n\nhotel golf foxtrot.\njuliet india."


async def test_a_sentence_longer_than_the_model_takes_is_chunked_not_refused(client):
    # The toy model has 64 positions; 150 words without a full stop must still translate.
    text = " ".join(["alpha"] * 150)
    before = metric_value((await client.http.get("/metrics")).text, "translation_batch_size_count")
    response = await client.translate("en", "en", [text])
    assert response.status_code == 200
    assert response.json()["result"][0]["text"].startswith("alpha")
    metrics = (await client.http.get("/metrics")).text
    assert metric_value(metrics, "translation_batch_size_count") == before + 1
    assert metric_value(metrics, "translation_batch_size_sum") >= 3  # 150 pieces in chunks of at most 62


async def test_empty_records_and_empty_texts(client):
    empty = await client.http.post("/translation", json={"payload": {"fromLang": "en", "toLang": "fr", "records": []}})
    assert empty.status_code == 200 and empty.json() == {"result": []}
    response = await client.translate("en", "fr", ["", "alpha bravo", "  "])
    assert response.json()["result"] == [{"id": "0", "text": ""}, {"id": "1", "text": "bravo alpha"}, {"id": "2", "text": "  "}]


async def test_repeated_sentences_are_cached_and_metrics_move(client):
    await client.translate("en", "de", ["alpha bravo charlie."])
    response = await client.translate("en", "de", ["alpha bravo charlie.", "alpha bravo charlie."])
    assert [r["text"] for r in response.json()["result"]] == ["bravo charlie alpha."] * 2
    assert float(response.headers["x-inference-time"]) == 0  # answered from the cache
    metrics = (await client.http.get("/metrics")).text
    assert metric_value(metrics, "translation_cache_hits_total") >= 1
    assert metric_value(metrics, "translation_cache_misses_total") >= 1
    assert metric_value(metrics, "translation_requests_total", 'status="200",reason="ok"') == 2
    assert metric_value(metrics, "translation_request_duration_seconds_count") == 2
    assert metric_value(metrics, "translation_input_tokens_total") > 0
    assert metric_value(metrics, "translation_output_tokens_total") > 0
    assert metric_value(metrics, "translation_ready") == 1
    assert metric_value(metrics, "translation_cache_up") == 1
    assert metric_value(metrics, "translation_queue_capacity") == 128  # the cpu default


async def test_concurrent_requests_share_batches(toy_model_dir):
    # A slower engine keeps the first batch running while the other 31 requests arrive (0.2 s: on a busy shared
    # machine 0.05 s was sometimes over before the last copies of a sentence were submitted, which then ran again).
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.2), inter_threads=1)
    async with AppClient(app) as client:
        texts = [[f"{w} bravo charlie."] for w in ("alpha", "delta", "echo", "golf", "hotel", "india", "kilo", "lima")]
        responses = await asyncio.gather(*(client.translate("en", "fr", t) for t in texts * 4))
        for response, text in zip(responses, texts * 4):
            assert response.json()["result"][0]["text"] == expected_translation(text[0], "fr")
        metrics = (await client.http.get("/metrics")).text
        batches = metric_value(metrics, "translation_batch_size_count")
        assert metric_value(metrics, "translation_batch_size_sum") == 8 + 1  # 8 distinct + warm-up
        assert batches < 8 + 1  # some batches held more than one sentence


async def test_endpoints_besides_translation(client):
    languages = (await client.http.get("/languages")).json()["languages"]
    assert len(languages) == 100 and "en" in languages and "ja" in languages
    assert (await client.http.get("/healthz")).json() == {"status": "alive"}
    assert (await client.http.get("/readyz")).json() == {"status": "ready"}
    document = (await client.http.get("/openapi.json")).json()
    assert set(document["paths"]) == {
        "/translation", "/detect", "/languages", "/info", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/",
    }  # fmt: skip
    responses = document["paths"]["/translation"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "408", "413", "415", "422", "429", "431", "500", "503"}
    assert "unsupported_language" in responses["422"]["description"]


def payload(**changes):
    body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha"}]}}
    body["payload"].update(changes)
    return body


@pytest.mark.parametrize(
    "body, status, code, message",
    [
        (b"{not json", 400, "malformed_json", "request body is not valid JSON"),
        (b"[1, 2]", 422, "validation_error", "request body must be a JSON object, got an array"),
        (b"{}", 422, "validation_error", "missing field: payload"),
        ({"payload": "x"}, 422, "validation_error", "payload must be an object, got a string"),
        ({"payload": {"fromLang": "en", "toLang": "fr"}}, 422, "validation_error", "missing field: payload.records"),
        (payload(records={"id": 1}), 422, "validation_error", "payload.records must be an array, got an object"),
        (payload(records=[{"text": "a"}]), 422, "validation_error", "missing field: payload.records[0].id"),
        (payload(records=[{"id": "1", "text": "a"}, {"id": "2"}]), 422, "validation_error", "missing field: payload.records[1].text"),
        (payload(records=[{"id": "1", "text": 5}]), 422, "validation_error", "payload.records[0].text must be a string, got a number"),
        (payload(records=[{"id": None, "text": "a"}]), 422, "validation_error", "payload.records[0].id must be a string or an integer, got null"),
        (payload(records=["alpha"]), 422, "validation_error", "payload.records[0] must be an object with id and text, got a string"),
        (payload(fromLang="xx"), 422, "unsupported_language", "payload.fromLang 'xx' is not a supported language; GET /languages lists them"),
        (payload(toLang="klingon"), 422, "unsupported_language", "payload.toLang 'klingon' is not a supported language; GET /languages lists them"),
        (payload(toLang=None), 422, "validation_error", "missing field: payload.toLang (a language code; GET /languages lists them)"),
        (payload(fromLang=3), 422, "validation_error", "payload.fromLang must be a string language code, got a number"),
        (payload(records=[{"id": str(i), "text": "a"} for i in range(129)]), 413, "payload_too_large",
         "payload.records has 129 records; the limit is 128 per request"),
        (payload(records=[{"id": "1", "text": "a" * 20001}]), 413, "payload_too_large",
         "payload.records[0].text has 20001 characters; the limit is 20000"),
    ],
)
async def test_bad_requests_get_their_status_code_and_message(client, body, status, code, message):
    if isinstance(body, bytes):
        response = await client.http.post("/translation", content=body, headers={"content-type": "application/json"})
    else:
        response = await client.http.post("/translation", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(message)
    assert "Traceback" not in response.text


async def test_body_over_the_limit_is_refused_before_it_is_read(toy_model_dir):
    async with AppClient(build_app(toy_model_dir, max_body_bytes=1000)) as client:
        big = orjson.dumps(payload(records=[{"id": "1", "text": "alpha " * 300}]))
        response = await client.http.post("/translation", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "payload_too_large", "message": f"request body is {len(big)} bytes; the limit is 1000",
        }

        async def chunks():  # no content-length: refused while streaming
            for _ in range(50):
                yield b" " * 100

        streamed = await client.http.post("/translation", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json()["error"]["message"] == "request body exceeds the limit of 1000 bytes"


async def test_other_http_errors_use_the_same_shape(client):
    response = await client.http.post("/translation", content=b"x", headers={"content-type": "text/plain"})
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")
    response = await client.http.get("/nope")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = await client.http.get("/translation")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"] == "GET is not allowed on /translation; allowed: POST"


async def test_no_redirect_is_built_from_the_host_header(client):
    response = await client.http.post("/translation/", json=payload(), headers={"host": "evil.example"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert "location" not in response.headers


async def test_the_served_openapi_document_is_the_committed_one(client):
    committed = orjson.loads((ROOT / "docs" / "openapi.json").read_bytes())
    served = (await client.http.get("/openapi.json")).json()
    assert served == committed
    request = served["paths"]["/translation"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    languages = (await client.http.get("/languages")).json()["languages"]
    payload = request["properties"]["payload"]["properties"]
    assert payload["fromLang"]["enum"] == ["auto", *languages]
    assert payload["toLang"]["enum"] == languages


async def test_unknown_fields_are_ignored_as_documented(client):
    body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": 7, "text": "alpha bravo", "note": "x"}],
                        "priority": "high"}, "client": "test"}
    response = await client.http.post("/translation", json=body)
    assert response.json() == {"result": [{"id": 7, "text": "bravo alpha"}]}


async def test_integer_ids_keep_64_bits_and_larger_ones_get_a_clear_422(client):
    largest = 2**64 - 1
    response = await client.http.post("/translation", json=payload(records=[{"id": largest, "text": "alpha"}]))
    assert response.json()["result"][0]["id"] == largest
    too_big = b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": 18446744073709551616, "text": "a"}]}}'
    response = await client.http.post("/translation", content=too_big, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "payload.records[0].id must be a string or an integer within 64 bits, got 18446744073709551616; "
        "send larger ids as strings"
    )


async def test_overload_gets_429_with_retry_after_and_accepted_requests_complete(toy_model_dir):
    # One test client stands for many: its own share (client_max_sentences) must not be what refuses it.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.2), max_queue=4, max_batch_size=2, inter_threads=1,
                    client_max_sentences=100)
    async with AppClient(app) as client:
        texts = [[f"alpha {w}"] for w in ("bravo", "charlie", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike")]
        responses = await asyncio.gather(*(client.translate("en", "fr", t) for t in texts))
        statuses = [r.status_code for r in responses]
        assert statuses.count(429) > 0 and statuses.count(200) > 0
        for response, text in zip(responses, texts):
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"] == {"code": "overloaded", "message": "the service is at capacity; retry shortly"}
            else:
                assert response.json()["result"][0]["text"] == expected_translation(text[0], "fr")


async def test_a_request_larger_than_the_whole_queue_is_served_whole(toy_model_dir):
    # The queue bounds load, not request size: a request holds a window of it (here the whole queue of 3).
    async with AppClient(build_app(toy_model_dir, max_queue=3)) as client:
        assert client.runtime.settings.request_window == 3
        response = await client.translate("en", "fr", ["alpha.", "bravo.", "charlie.", "delta.", "echo golf."])
        assert [r["text"] for r in response.json()["result"]] == ["alpha.", "bravo.", "charlie.", "delta.", "golf echo."]


class FailingEngine(SlowEngine):
    """Raises for any batch holding the word "kilo"."""

    def translate(self, jobs):
        time.sleep(self._delay)
        if any("▁kilo" in job.source for job in jobs):
            raise RuntimeError("CUDA error: out of memory")
        return self._engine.translate(jobs)


async def test_an_engine_error_fails_only_that_batchs_requests_and_service_goes_on(toy_model_dir):
    app = build_app(toy_model_dir, wrap_engine=lambda e: FailingEngine(e, 0.05), batching="off", inter_threads=1)
    async with AppClient(app) as client:
        doomed, fine = await asyncio.gather(client.translate("en", "fr", ["kilo alpha"]), client.translate("en", "fr", ["alpha bravo"]))
        assert doomed.status_code == 500
        assert doomed.json()["error"]["code"] == "translation_failed"
        assert "RuntimeError: CUDA error: out of memory" in doomed.json()["error"]["message"]
        assert "Traceback" not in doomed.text
        assert fine.json()["result"][0]["text"] == "bravo alpha"
        after = await client.translate("en", "fr", ["charlie delta"])
        assert after.json()["result"][0]["text"] == "delta charlie"
        assert (await client.http.get("/healthz")).status_code == 200
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_requests_total", 'status="500",reason="translation_failed"') == 1


async def test_a_client_that_leaves_is_not_translated(toy_model_dir):
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.3), inter_threads=1)
    async with AppClient(app) as client:
        batches = client.engine.batches
        batches.clear()  # the warm-up
        blocker = asyncio.create_task(client.translate("en", "fr", ["alpha"]))
        await until(lambda: batches, what="the first batch running")
        leaver = asyncio.create_task(client.translate("en", "fr", ["bravo charlie delta"]))
        await until(lambda: client.runtime.serving.batcher.queue_depth == 1, what="the second sentence queued")
        leaver.cancel()  # the client hangs up while its sentence waits in the queue
        with pytest.raises(asyncio.CancelledError):
            await leaver
        assert client.runtime.serving.batcher.queue_depth == 0  # withdrawn at once
        assert (await blocker).status_code == 200
        # The queue is first in, first out: had the sentence stayed, it would run no later than this one.
        assert (await client.translate("en", "fr", ["echo golf"])).status_code == 200
        assert len(batches) == 2
        assert not any("▁delta" in source for batch in batches for source in batch)


class CountingEngine(SlowEngine):
    """Counts tokenizer calls (encode), so a test can tell whether a request reached tokenizing."""

    encoded = 0

    def encode(self, sentence, source_lang, target_lang, **options):
        CountingEngine.encoded += 1
        return self._engine.encode(sentence, source_lang, target_lang, **options)


async def test_over_the_in_flight_limit_429_comes_before_any_work(toy_model_dir):
    app = build_app(toy_model_dir, wrap_engine=lambda e: CountingEngine(e, 0.3), max_in_flight=1, inter_threads=1)
    async with AppClient(app) as client:
        first = asyncio.create_task(client.translate("en", "fr", ["alpha bravo"]))
        await until(lambda: client.runtime.admission.in_flight == 1, what="the first request holding the only slot")
        encoded = CountingEngine.encoded
        refused = await client.translate("en", "fr", ["charlie delta"])
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {"code": "overloaded", "message": "the service is at capacity; retry shortly"}
        assert CountingEngine.encoded == encoded  # refused on counts alone: nothing tokenized
        assert (await first).json()["result"][0]["text"] == "bravo alpha"
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_requests_total", 'status="429",reason="overloaded"') == 1
        assert metric_value(metrics, "translation_in_flight_requests") == 0


async def test_a_stalled_body_holds_no_in_flight_slot(toy_model_dir):
    # One in-flight slot; a request whose body never finishes must not take it from a ready request.
    app = build_app(toy_model_dir, max_in_flight=1)
    async with AppClient(app) as client:
        release = asyncio.Event()

        async def stalled_body():
            yield b'{"payload": '
            await release.wait()
            yield orjson.dumps({"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}) + b"}"

        stalled = asyncio.create_task(
            client.http.post("/translation", content=stalled_body(), headers={"content-type": "application/json"})
        )
        await until(lambda: client.runtime.admission.pending_bodies == 1, what="the stalled request admitted on its head")
        assert client.runtime.admission.in_flight == 0
        served = await client.translate("en", "fr", ["charlie delta"])
        assert served.json()["result"][0]["text"] == "delta charlie"
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_pending_bodies") == 1
        release.set()
        assert (await stalled).json()["result"][0]["text"] == "bravo alpha"
        assert client.runtime.admission.pending_bodies == 0 and client.runtime.admission.in_flight == 0


async def test_requests_still_sending_their_body_are_bounded_in_total_and_per_client(toy_model_dir):
    app = build_app(toy_model_dir, max_pending_bodies=2, client_max_pending_bodies=1)
    async with AppClient(app) as client:
        release = asyncio.Event()

        async def stalled_body():
            yield b'{"payload": '
            await release.wait()
            yield orjson.dumps({"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha"}]}) + b"}"

        def post_stalled(address: str):
            # httpx's ASGI transport connects from 127.0.0.1, the default trusted proxy: the header names the client.
            headers = {"content-type": "application/json", "x-forwarded-for": address}
            return asyncio.create_task(client.http.post("/translation", content=stalled_body(), headers=headers))

        first = post_stalled("192.0.2.1")
        await until(lambda: client.runtime.admission.pending_bodies == 1, what="the first body pending")
        same_client = await client.http.post(
            "/translation", content=stalled_body(), headers={"content-type": "application/json", "x-forwarded-for": "192.0.2.1"}
        )
        assert same_client.status_code == 429
        assert same_client.json()["error"] == {
            "code": "rate_limited",
            "message": "this client has 1 requests still sending their body, its limit is 1; retry shortly",
        }
        second = post_stalled("192.0.2.2")
        await until(lambda: client.runtime.admission.pending_bodies == 2, what="the second body pending")
        third = await client.translate("en", "fr", ["alpha"], headers={"x-forwarded-for": "192.0.2.3"})
        assert third.status_code == 429
        assert third.json()["error"] == {
            "code": "overloaded", "message": "the service has 2 requests still sending their body; retry shortly",
        }
        release.set()
        assert [(await task).status_code for task in (first, second)] == [200, 200]
        assert (await client.translate("en", "fr", ["alpha bravo"])).json()["result"][0]["text"] == "bravo alpha"


async def test_a_full_queue_refuses_before_the_cache_lookup_and_tokenizing(toy_model_dir):
    app = build_app(toy_model_dir, wrap_engine=lambda e: CountingEngine(e, 0.3), max_queue=2, max_batch_size=1, inter_threads=1,
                    client_max_sentences=100)
    async with AppClient(app) as client:
        client.engine.batches.clear()  # the warm-up
        first = asyncio.create_task(client.translate("en", "fr", ["alpha.", "bravo.", "charlie."]))
        # "alpha." runs and "bravo." waits (a window of 2); "kilo." fills the queue of 2.
        await until(lambda: client.engine.batches and client.runtime.serving.batcher.queue_depth == 1, what="alpha. running")
        second = asyncio.create_task(client.translate("en", "fr", ["kilo."]))
        await until(lambda: client.runtime.serving.batcher.queue_depth == 2, what="the queue full")
        before = (await client.http.get("/metrics")).text
        encoded = CountingEngine.encoded
        refused = await client.translate("en", "fr", ["delta echo. golf hotel."])  # two sentences
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        after = (await client.http.get("/metrics")).text
        assert CountingEngine.encoded == encoded  # never tokenized
        for name in ("translation_cache_misses_total", "translation_cache_hits_total"):  # never looked up
            assert metric_value(after, name) == metric_value(before, name)
        assert [r["text"] for r in (await first).json()["result"]] == ["alpha.", "bravo.", "charlie."]
        assert (await second).json()["result"][0]["text"] == "kilo."


async def test_a_sentence_that_waited_past_the_queue_timeout_gets_503_and_is_not_translated(toy_model_dir):
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.4), queue_timeout_seconds=0.1, inter_threads=1)
    async with AppClient(app) as client:
        calls = client.engine.batches
        calls.clear()  # the warm-up
        first = asyncio.create_task(client.translate("en", "fr", ["alpha"]))
        await until(lambda: calls, what="the first batch running")
        late = await client.translate("en", "fr", ["bravo charlie delta"])
        assert late.status_code == 503
        assert late.headers["retry-after"] == "1"
        assert late.json()["error"] == {
            "code": "queue_timeout", "message": "the service is behind: waited over 0.1s for the engine; retry shortly",
        }
        assert (await first).status_code == 200
        assert not any("▁delta" in source for batch in calls for source in batch)
        # The service goes on: the next request is served.
        assert (await client.translate("en", "fr", ["echo golf"])).json()["result"][0]["text"] == "golf echo"


async def test_the_cache_stays_within_its_byte_budget_and_its_metrics_move(toy_model_dir):
    async with AppClient(build_app(toy_model_dir, cache_max_bytes=2000)) as client:
        words = ["alpha", "bravo", "charlie", "delta", "echo", "golf", "hotel", "india"]
        for first in words:
            response = await client.translate("en", "fr", [f"{first} {w}" for w in words])
            assert response.status_code == 200
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_cache_max_bytes") == 2000
        assert 0 < metric_value(metrics, "translation_cache_bytes") <= 2000
        assert metric_value(metrics, "translation_cache_entries") >= 1
        assert metric_value(metrics, "translation_cache_evictions_total") > 0  # 64 sentences don't fit 2,000 bytes


async def test_an_integral_number_id_is_the_integer_it_equals_exactly_however_it_is_written(client):
    # JSON Schema's integer includes 2.0 and 2e3. A double would round 9007199254740993.0 to ...992 and
    # 1.0000000000000000001 to 1.0: such ids are read from their exact digits, never changed.
    ids = b"2.0, -7e3, 9007199254740993.0, -9007199254740992.0, 18446744073709551615.0, 1.8e19"
    records = b", ".join(b'{"id": ' + i.strip() + b', "text": "a"}' for i in ids.split(b","))
    body = b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [' + records + b"]}}"
    response = await client.http.post("/translation", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert b'"id":9007199254740993,' in response.content  # the digits, not a double's neighbour
    assert [r["id"] for r in response.json()["result"]] == [
        2, -7000, 9007199254740993, -9007199254740992, 18446744073709551615, 18000000000000000000,
    ]
    for literal, written in ((b"2.5", "2.5"), (b"1.0000000000000000001", "1.0000000000000000001"), (b"1e300", "1E+300"),
                             (b"18446744073709551616.0", "18446744073709551616.0"), (b"-9.3e18", "-9.3E+18")):
        body = b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": ' + literal + b', "text": "a"}]}}'
        response = await client.http.post("/translation", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, literal
        assert response.json()["error"]["message"] == (
            f"payload.records[0].id must be a string or an integer within 64 bits, got {written}; send larger ids as strings"
        )


async def test_numbers_and_nesting_in_unknown_fields_never_fail_a_request(client):
    def post(extra: bytes, record_id: bytes = b'"1"'):
        body = (b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": ' + record_id
                + b', "text": "alpha bravo"}]}, "extra": ' + extra + b"}")
        return client.http.post("/translation", content=body, headers={"content-type": "application/json"})

    # Numbers no double holds, in a field the service does not read: valid JSON, translated as usual.
    for extra in (b"1e400", b"-1e400", b"9" * 5000, b"[1e999, {\"n\": 123456789012345678901234567890}]"):
        response = await post(extra)
        assert response.status_code == 200, (extra[:20], response.text)
        assert response.json() == {"result": [{"id": "1", "text": "bravo alpha"}]}
    # An id written 2.0 is read from its exact digits, beside whatever the body nests elsewhere.
    deep = b"[" * 900 + b"]" * 900
    response = await post(deep, b"2.0")
    assert response.status_code == 200 and response.json() == {"result": [{"id": 2, "text": "bravo alpha"}]}
    # Deeper than the exact reading goes (orjson's own limit is 1,024): a 422 that says what to send instead.
    too_deep = b"[" * 1020 + b"]" * 1020
    response = await post(too_deep, b"2.0")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "request body nests too deeply to read its numbers exactly; send ids as strings or integers without "
                   "a decimal point, and numbers no larger than a double holds",
    }
    # What orjson refuses stays refused on the exact path too: NaN, lone surrogates.
    for extra in (b"NaN", b'"\\ud800"'):
        response = await post(extra + b", \"x\": 1e400")
        assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_json", extra
