"""The LibreTranslate-compatible API under /libretranslate (service/libretranslate.py, docs/libretranslate.md), on the
toy model (into fr it reverses the words, into de it rotates them left, into en it copies them: loadtest/toy_task.py).

In-process tests run the real app; the last tests drive a real `python -m service` process with the LibreTranslate
client library from PyPI, `libretranslatepy`."""

from __future__ import annotations

import json
import urllib.error

import httpx
import pytest
from libretranslatepy import LibreTranslateAPI

from service import libretranslate
from service.languages import NAMES
from service.model_dir import read_manifest
from tests.helpers import AppClient, build_app, metric_value

TRANSLATE, DETECT, LANGUAGES = "/libretranslate/translate", "/libretranslate/detect", "/libretranslate/languages"
SENTENCE, REVERSED = "alpha bravo charlie.", "charlie bravo alpha."  # en -> fr
ESPERANTO = "Kiel vi fartas? Mi fartas bone, dankon."  # detected as eo at 0.9799, which the model lacks



@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir, max_records=3, max_text_chars=60, max_body_bytes=4096)) as client:
        yield client


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text("good-key\n")
    return path


def expected_languages(model_dir) -> list[dict]:
    codes = read_manifest(model_dir).languages
    return [{"code": c, "name": NAMES[c], "targets": [t for t in codes if t != c]} for c in codes]


# --- POST /translate


async def test_translate_answers_json_form_and_multipart_bodies_alike(client):
    fields = {"q": SENTENCE, "source": "en", "target": "fr"}
    for body in ({"json": fields}, {"data": fields}, {"files": {name: (None, value) for name, value in fields.items()}}):
        response = await client.http.post(TRANSLATE, **body)
        assert response.status_code == 200, response.text
        assert response.content == b'{"translatedText":"charlie bravo alpha."}'
        assert response.headers["content-type"] == "application/json"
        assert "x-queue-time" in response.headers and "x-request-id" in response.headers
    # A base URL with a trailing slash joined with "/translate" reaches the same route.
    response = await client.http.post("/libretranslate//translate", data=fields)
    assert response.json() == {"translatedText": REVERSED}
    # Flask's request.values: fields may come in the query string too, and take precedence over the form's.
    response = await client.http.post(TRANSLATE + "?source=en&target=de", data={"q": SENTENCE, "target": "fr"})
    assert response.json() == {"translatedText": "bravo charlie alpha."}
    # A form carries one q (its first), as LibreTranslate reads it; codes are compared in lower case.
    response = await client.http.post(TRANSLATE, content=b"q=alpha+bravo&q=delta&source=EN&target=Fr",
                                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.json() == {"translatedText": "bravo alpha"}


async def test_a_list_q_gets_lists_and_auto_gets_detected_languages(client):
    response = await client.http.post(TRANSLATE, json={"q": [SENTENCE, "delta echo", ""], "source": "en", "target": "de"})
    assert response.json() == {"translatedText": ["bravo charlie alpha.", "echo delta", ""]}
    # source auto: detectedLanguage, on LibreTranslate's 0-100 scale, one per text for a list.
    detected = client.runtime.serving.pipeline.detect([SENTENCE, "delta echo"])
    shown = [{"confidence": round(d.confidence * 100, 2), "language": d.language} for d in detected]
    response = await client.http.post(TRANSLATE, json={"q": SENTENCE, "source": "auto", "target": "fr"})
    assert response.json() == {"translatedText": REVERSED, "detectedLanguage": shown[0]}
    assert list(response.json()) == ["translatedText", "detectedLanguage"]
    response = await client.http.post(TRANSLATE, json={"q": [SENTENCE, "delta echo"], "source": "auto", "target": "fr"})
    assert response.json() == {"translatedText": [REVERSED, "echo delta"], "detectedLanguage": shown}
    # A form's line endings become LF (LibreTranslate's rule): CRLF and LF texts translate alike.
    crlf = await client.http.post(TRANSLATE, data={"q": "alpha bravo.\r\ncharlie delta.", "source": "en", "target": "fr"})
    lf = await client.http.post(TRANSLATE, data={"q": "alpha bravo.\ncharlie delta.", "source": "en", "target": "fr"})
    assert crlf.json() == lf.json() == {"translatedText": "bravo alpha.\ndelta charlie."}


async def test_same_cache_and_metrics_as_the_native_api(client):
    native = await client.translate("en", "fr", ["kilo lima mike."])
    assert native.json()["result"][0]["text"] == "mike lima kilo."
    before = metric_value((await client.http.get("/metrics")).text, "translation_cache_hits_total")
    response = await client.http.post(TRANSLATE, data={"q": "kilo lima mike.", "source": "en", "target": "fr"})
    assert response.json() == {"translatedText": "mike lima kilo."}
    metrics = (await client.http.get("/metrics")).text
    assert metric_value(metrics, "translation_cache_hits_total") - before == 1  # the sentence the native call cached
    assert metric_value(metrics, "translation_requests_total", 'status="200",reason="ok"') == 2


async def test_a_text_the_model_cannot_translate_from_gets_400(client):
    response = await client.http.post(TRANSLATE, json={"q": ["delta echo", ESPERANTO], "source": "auto", "target": "fr"})
    assert response.status_code == 400
    assert response.json() == {"error": 'q[1] looks like eo, confidence 97.99, which is not supported; '
                                        "send source explicitly if the detection is wrong"}


BAD_TRANSLATIONS = [
    ({"json": {"source": "en", "target": "fr"}}, "Invalid request: missing q parameter"),
    ({"json": {"q": "", "source": "en", "target": "fr"}}, "Invalid request: missing q parameter"),
    ({"json": {"q": [], "source": "en", "target": "fr"}}, "Invalid request: missing q parameter"),
    ({"data": {"q": SENTENCE, "target": "fr"}}, "Invalid request: missing source parameter"),
    ({"json": {"q": SENTENCE, "source": "en"}}, "Invalid request: missing target parameter"),
    ({"json": {"q": SENTENCE, "source": "en", "target": 7}}, "Invalid request: target must be a language code (a string)"),
    ({"json": {"q": SENTENCE, "source": "xx", "target": "fr"}}, "xx is not supported"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "auto"}}, "auto is not supported"),
    ({"data": {"q": SENTENCE, "source": "en", "target": "q" * 100}}, "q" * 40 + " is not supported"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "fr", "format": "pdf"}}, "pdf format is not supported"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "fr", "format": 1}}, "a number format is not supported"),
    ({"data": {"q": SENTENCE, "source": "en", "target": "fr", "alternatives": "some"}},
     "Invalid request: alternatives parameter is not a number"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "fr", "alternatives": True}},
     "Invalid request: alternatives parameter is not a number"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "fr", "alternatives": 1.5}},
     "Invalid request: alternatives parameter is not a number"),
    ({"json": {"q": SENTENCE, "source": "en", "target": "fr", "alternatives": 6}},
     "Invalid request: alternatives parameter must be <= 5"),
    ({"json": {"q": 12, "source": "en", "target": "fr"}}, "Invalid request: q must be a string or a list of strings, got a number"),
    ({"json": {"q": [SENTENCE, None], "source": "en", "target": "fr"}}, "Invalid request: q[1] must be a string, got null"),
    ({"json": {"q": ["alpha"] * 4, "source": "en", "target": "fr"}}, "Invalid request: q has 4 texts; the limit is 3"),
    ({"json": {"q": "alpha " * 11, "source": "en", "target": "fr"}}, "Invalid request: q has 66 characters; the limit is 60"),
    ({"json": {"q": ["alpha", "bravo " * 11], "source": "en", "target": "fr"}},
     "Invalid request: q[1] has 66 characters; the limit is 60"),
    ({"json": [SENTENCE]}, "Invalid JSON format"),
    ({"content": b'{"q": ', "headers": {"content-type": "application/json"}},
     "Invalid request: the body is not valid JSON (unexpected end of data: line 1 column 7 (char 6))"),
    ({"content": b"q=alpha", "headers": {"content-type": "text/plain"}},
     "Invalid request: content type text/plain is not supported; "
     "send application/json, application/x-www-form-urlencoded or multipart/form-data"),
    ({"content": b"q=\xff", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     "Invalid request: the form fields are not valid UTF-8"),
    ({"content": b"q=%FF&source=en&target=fr", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     "Invalid request: the form fields are not valid UTF-8"),
    ({"files": {"q": ("a.txt", b"alpha"), "source": (None, "en")}}, "Invalid request: files are not supported (field q)"),
    ({"data": {"q": "x" * 5000, "source": "en", "target": "fr"}}, "request body is 5022 bytes; the limit is 4096"),
]


@pytest.mark.parametrize(("request_options", "message"), BAD_TRANSLATIONS)
async def test_bad_translation_requests_get_400_and_the_message(client, request_options, message):
    response = await client.http.post(TRANSLATE, **request_options)
    assert (response.status_code, response.json()) == (400, {"error": message})


async def test_bad_requests_are_counted_and_logged_under_their_path(client, caplog):
    with caplog.at_level("INFO", logger="service.requests"):
        response = await client.http.post(TRANSLATE, json={"q": SENTENCE, "source": "en", "target": "xx"}, headers={"x-request-id": "lt-1"})
    assert response.status_code == 400 and response.headers["x-request-id"] == "lt-1"
    logged = [record.fields for record in caplog.records if record.name == "service.requests"]
    assert [(f["request_id"], f["path"], f["status"]) for f in logged] == [("lt-1", TRANSLATE, 400)]
    metrics = (await client.http.get("/metrics")).text
    assert metric_value(metrics, "translation_requests_total", 'status="400",reason="unsupported_language"') == 1


async def test_alternatives_are_the_native_apis_in_libretranslates_shape(client):
    native = await client.http.post("/translation", json={"payload": {
        "fromLang": "en", "toLang": "fr", "alternatives": 3,
        "records": [{"id": "0", "text": SENTENCE}, {"id": "1", "text": "delta echo"}],
    }})  # fmt: skip
    expected = [item["alternatives"] for item in native.json()["result"]]
    assert all(1 <= len(others) <= 3 for others in expected)
    one = await client.http.post(TRANSLATE, data={"q": SENTENCE, "source": "en", "target": "fr", "alternatives": "3"})
    assert one.json() == {"translatedText": REVERSED, "alternatives": expected[0]}
    both = await client.http.post(TRANSLATE, json={"q": [SENTENCE, "delta echo"], "source": "en", "target": "fr", "alternatives": 3})
    assert both.json() == {"translatedText": [REVERSED, "echo delta"], "alternatives": expected}
    # Below 0 counts as none (LibreTranslate's max(0, n)); 0 gives no alternatives field.
    for count in (-2, 0):
        response = await client.http.post(TRANSLATE, json={"q": SENTENCE, "source": "en", "target": "fr", "alternatives": count})
        assert response.json() == {"translatedText": REVERSED}


async def test_html_keeps_the_markup_and_has_no_alternatives_as_in_libretranslate(client):
    page = "<p><b>alpha</b> bravo charlie.</p>"
    response = await client.http.post(TRANSLATE, json={"q": page, "source": "en", "target": "fr", "format": "html"})
    assert response.json() == {"translatedText": "<p>charlie bravo <b>alpha</b>.</p>"}
    response = await client.http.post(TRANSLATE, data={"q": page, "source": "en", "target": "fr", "format": "html", "alternatives": 3})
    assert response.json() == {"translatedText": "<p>charlie bravo <b>alpha</b>.</p>", "alternatives": []}
    response = await client.http.post(TRANSLATE, json={"q": [page], "source": "en", "target": "fr", "format": "html", "alternatives": 2})
    assert response.json() == {"translatedText": ["<p>charlie bravo <b>alpha</b>.</p>"], "alternatives": [[]]}


# --- POST /detect, GET /languages and the other paths


async def test_detect_answers_libretranslates_list(client):
    texts = ["The weather is lovely today and we go outside.", "Das Wetter ist heute sehr schön.", "It rains a lot in this city."]
    detected = client.runtime.serving.pipeline.detect(texts)
    assert [d.language for d in detected] == ["en", "de", "en"]
    percent = [round(d.confidence * 100, 2) for d in detected]
    for body in ({"json": {"q": texts[0]}}, {"data": {"q": texts[0]}}):
        response = await client.http.post(DETECT, **body)
        assert response.json() == [{"confidence": percent[0], "language": "en"}]
    # A list: one candidate per language, its confidence averaged, by confidence times its share of the characters.
    response = await client.http.post(DETECT, json={"q": texts})
    english = (detected[0].confidence + detected[2].confidence) / 2
    assert response.json() == [{"confidence": round(english * 100, 2), "language": "en"}, {"confidence": percent[1], "language": "de"}]
    # A language the model lacks is named, as on /detect; a text with no letters gets the fallback at 0.
    response = await client.http.post(DETECT, json={"q": ESPERANTO})
    assert response.json() == [{"confidence": 97.99, "language": "eo"}]
    assert (await client.http.post(DETECT, data={"q": "1234"})).json() == [{"confidence": 0.0, "language": "en"}]
    for body, message in (
        ({"json": {}}, "Invalid request: missing q parameter"),
        ({"data": {"q": ""}}, "Invalid request: missing q parameter"),
        ({"json": {"q": {"text": "x"}}}, "Invalid request: q must be a string or a list of strings, got an object"),
        ({"json": {"q": ["a", "b", "c", "d"]}}, "Invalid request: q has 4 texts; the limit is 3"),
    ):
        response = await client.http.post(DETECT, **body)
        assert (response.status_code, response.json()) == (400, {"error": message})
    metrics = (await client.http.get("/metrics")).text
    assert metric_value(metrics, "translation_detect_requests_total", 'status="200",reason="ok"') == 5


async def test_languages_lists_every_other_language_as_a_target_and_takes_a_form_body(client, toy_model_dir):
    expected = expected_languages(toy_model_dir)
    assert len(expected) == 100 and expected[0]["targets"][:3] == ["am", "ar", "ast"]
    plain = await client.http.get(LANGUAGES)
    # libretranslatepy sends its GET with a url-encoded body (empty, or its api_key).
    with_body = await client.http.request("GET", LANGUAGES, content=b"api_key=anything",
                                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert plain.status_code == with_body.status_code == 200
    assert plain.json() == with_body.json() == expected


async def test_the_other_paths_answer_in_libretranslates_shape(client):
    settings = await client.http.get("/libretranslate/frontend/settings")
    assert settings.json() == {
        "charLimit": 60, "frontendTimeout": 500, "apiKeys": False, "keyRequired": False, "suggestions": False,
        "filesTranslation": False, "supportedFilesFormat": [],
        "language": {"source": {"code": "auto", "name": "Auto Detect"}, "target": {"code": "en", "name": "English"}},
    }
    assert (await client.http.get("/libretranslate/health")).json() == {"status": "ok"}
    # What LibreTranslate itself answers with these features off.
    suggest = await client.http.post("/libretranslate/suggest", data={"q": "a", "s": "b", "source": "en", "target": "fr"})
    assert (suggest.status_code, suggest.json()) == (403, {"error": "Suggestions are disabled on this server."})
    upload = await client.http.post("/libretranslate/translate_file", files={"file": ("a.txt", b"alpha")})
    assert (upload.status_code, upload.json()) == (403, {"error": "Files translation are disabled on this server."})
    wrong = await client.http.get(TRANSLATE)
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert wrong.json() == {"error": "GET is not allowed on /libretranslate/translate; allowed: POST"}
    assert (await client.http.post(LANGUAGES)).json() == {"error": "POST is not allowed on /libretranslate/languages; allowed: GET, HEAD"}
    missing = await client.http.get("/libretranslate/spec")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "no route /libretranslate/spec; this LibreTranslate API serves /libretranslate/translate, /detect and /languages",
    }
    assert libretranslate.route("/libretranslateX") is None and libretranslate.route("/translation") is None


async def test_before_the_service_is_ready_requests_get_503(toy_model_dir):
    app = build_app(toy_model_dir)  # its lifespan not started: the runtime is still "starting"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.post(TRANSLATE, data={"q": SENTENCE, "source": "en", "target": "fr"})
        assert (response.status_code, response.json()) == (503, {"error": "the service is starting; retry shortly"})
        assert response.headers["retry-after"] == "1"
        health = await http.get("/libretranslate/health")
        assert (health.status_code, health.json()) == (503, {"error": "not ready: starting"})
        assert (await http.get(LANGUAGES)).status_code == 200


# --- API keys and refusals


async def test_with_keys_the_api_key_comes_in_the_body_or_the_authorization_header(toy_model_dir, keys_file):
    async with AppClient(build_app(toy_model_dir, api_keys_file=keys_file)) as client:
        fields = {"q": SENTENCE, "source": "en", "target": "fr"}
        for body in ({"json": {**fields, "api_key": "good-key"}}, {"data": {**fields, "api_key": "good-key"}},
                     {"json": fields, "headers": {"authorization": "Bearer good-key"}}):
            response = await client.http.post(TRANSLATE, **body)
            assert response.json() == {"translatedText": REVERSED}
        detected = await client.http.post(DETECT, data={"q": "The weather is lovely today.", "api_key": "good-key"})
        assert detected.json()[0]["language"] == "en"
        missing = "Invalid request: missing api_key parameter; this server requires an API key"
        for path, body, message in (
            (TRANSLATE, {"json": fields}, missing),
            (TRANSLATE, {"json": {**fields, "api_key": ""}}, missing),
            (TRANSLATE, {"data": {**fields, "api_key": "wrong-key"}}, "Invalid API key"),
            (TRANSLATE, {"json": {**fields, "api_key": 1}}, "Invalid API key"),
            (TRANSLATE, {"json": {**fields, "api_key": "good-key"}, "headers": {"authorization": "Bearer wrong"}}, "Invalid API key"),
            (DETECT, {"data": {"q": "hello"}}, missing),
            # The key is checked before the fields, as LibreTranslate's access_check runs first.
            (TRANSLATE, {"json": {"api_key": "wrong-key"}}, "Invalid API key"),
        ):
            response = await client.http.post(path, **body)
            assert (response.status_code, response.json()) == (403, {"error": message})
            assert "www-authenticate" not in response.headers
        # /languages (and the settings page) stay open, as LibreTranslate's are.
        assert (await client.http.get(LANGUAGES)).status_code == 200
        settings = (await client.http.get("/libretranslate/frontend/settings")).json()
        assert settings["apiKeys"] is settings["keyRequired"] is True
        metrics = (await client.http.get("/metrics")).text
        assert metric_value(metrics, "translation_requests_total", 'status="403",reason="unauthorized"') == 6


async def test_refusals_are_429_slowdown_with_retry_after(toy_model_dir, keys_file):
    app = build_app(toy_model_dir, api_keys_file=keys_file, auth_failures_per_second=1, auth_failure_burst=2)
    async with AppClient(app) as client:
        wrong = {"q": SENTENCE, "source": "en", "target": "fr", "api_key": "guess"}
        statuses = [(await client.http.post(TRANSLATE, data=wrong)).status_code for _ in range(3)]
        assert statuses == [403, 403, 429]
        refused = await client.http.post(TRANSLATE, data=wrong)
        assert refused.json() == {"error": "Slowdown: too many failed authentications from this address; retry later"}
        assert refused.headers["retry-after"] == "1"
    async with AppClient(build_app(toy_model_dir, client_rate_per_second=1, client_burst=2)) as client:
        fields = {"q": SENTENCE, "source": "en", "target": "fr"}
        statuses = [(await client.http.post(TRANSLATE, json=fields)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await client.http.post(DETECT, json={"q": "alpha"})  # one budget for every route of a client
        assert refused.json() == {"error": "Slowdown: this client is over its 1 requests/s; retry shortly"}
        assert refused.headers["retry-after"] == "1"


# --- a real service process and a real LibreTranslate client (needs the routes registered in service/app.py)


def _http_error(call) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call()
    return refused.value.code, json.loads(refused.value.read())


@pytest.mark.slow
def test_libretranslatepy_against_a_running_service(toy_model_dir, start_service, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("good-key\n")
    open_service = start_service(toy_model_dir)
    keyed_service = start_service(toy_model_dir, env={"MT_API_KEYS_FILE": str(keys)})

    api = LibreTranslateAPI(f"{open_service.url}/libretranslate/")
    assert api.translate(SENTENCE, "en", "fr") == REVERSED
    assert api.translate(SENTENCE, "en", "de") == "bravo charlie alpha."
    assert api.detect("The weather is lovely today and we go outside.") == [{"confidence": 96.18, "language": "en"}]
    assert api.languages() == expected_languages(toy_model_dir)
    assert _http_error(lambda: api.translate(SENTENCE, "en", "xx")) == (400, {"error": "xx is not supported"})

    keyed = LibreTranslateAPI(f"{keyed_service.url}/libretranslate", api_key="good-key")  # no trailing slash: added
    assert keyed.translate(SENTENCE, "en", "fr") == REVERSED
    assert keyed.detect("The weather is lovely today and we go outside.")[0]["language"] == "en"
    assert keyed.languages() == expected_languages(toy_model_dir)
    anonymous = LibreTranslateAPI(f"{keyed_service.url}/libretranslate/")
    assert _http_error(lambda: anonymous.translate(SENTENCE, "en", "fr")) == (
        403, {"error": "Invalid request: missing api_key parameter; this server requires an API key"},
    )
    assert _http_error(lambda: LibreTranslateAPI(f"{keyed_service.url}/libretranslate/", api_key="bad").detect("hello")) == (
        403, {"error": "Invalid API key"},
    )
    assert anonymous.languages() == expected_languages(toy_model_dir)  # open, as LibreTranslate's
