"""format "html" and alternatives through the API, on the toy model (into fr it reverses the words, into de it
rotates them left, into en it copies them: loadtest/toy_task.py)."""

from __future__ import annotations

import pytest

from tests.helpers import AppClient, build_app, metric_value


@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        yield client


async def post(client, records, to_lang="fr", from_lang="en", **options):
    payload = {"fromLang": from_lang, "toLang": to_lang, "records": [{"id": str(i), "text": t} for i, t in enumerate(records)]}
    return await client.http.post("/translation", json={"payload": {**payload, **options}})


async def test_html_keeps_the_markup_and_puts_inline_tags_on_their_words(client):
    response = await post(client, ["<p><b>alpha</b> bravo charlie.</p>", '<p>delta <a href="/x?a=1&amp;b=2">echo</a> golf.</p>'],
                          format="html")
    assert response.status_code == 200, response.text
    assert [r["text"] for r in response.json()["result"]] == [
        "<p>charlie bravo <b>alpha</b>.</p>",
        '<p>golf <a href="/x?a=1&amp;b=2">echo</a> delta.</p>',
    ]


async def test_html_leaves_code_scripts_and_notranslate_alone_and_translates_attributes(client):
    page = (
        "<!DOCTYPE html>\n<html><head><title>alpha bravo</title><style>p { color: red }</style></head>\n"
        "<body>\n  <!-- kilo lima -->\n  <p>charlie delta.</p>\n  <pre>echo foxtrot</pre>\n"
        '  <p translate="no">golf hotel.</p>\n  <p class="x notranslate">india juliet.</p>\n'
        '  <img alt="kilo lima" src="a.png">\n  <script>var alpha = "bravo";</script>\n</body></html>\n'
    )
    response = await post(client, [page], format="html")
    assert response.json()["result"][0]["text"] == (
        "<!DOCTYPE html>\n<html><head><title>bravo alpha</title><style>p { color: red }</style></head>\n"
        "<body>\n  <!-- kilo lima -->\n  <p>delta charlie.</p>\n  <pre>echo foxtrot</pre>\n"
        '  <p translate="no">golf hotel.</p>\n  <p class="x notranslate">india juliet.</p>\n'
        '  <img alt="lima kilo" src="a.png">\n  <script>var alpha = "bravo";</script>\n</body></html>\n'
    )


async def test_text_format_is_byte_for_byte_the_contract_and_markup_is_text_there(client):
    response = await post(client, ["alpha bravo."], format="text")
    assert response.content == b'{"result":[{"id":"0","text":"bravo alpha."}]}'


async def test_alternatives_with_html_are_an_empty_list_each(client):
    response = await post(client, ["<p>alpha bravo.</p>", "<i>charlie</i>"], format="html", alternatives=2)
    assert response.json() == {"result": [
        {"id": "0", "text": "<p>bravo alpha.</p>", "alternatives": []},
        {"id": "1", "text": "<i>charlie</i>", "alternatives": []},
    ]}


async def test_html_in_auto_mode_is_detected_on_its_text(client):
    response = await post(client, ["<p><b>alpha</b> bravo charlie.</p>"], from_lang="auto", format="html")
    item = response.json()["result"][0]
    assert item["text"] == "<p>charlie bravo <b>alpha</b>.</p>" and "detectedLanguage" in item


async def test_alternatives_are_other_translations_and_the_main_text_is_unchanged(client):
    plain = await post(client, ["alpha bravo charlie.", "delta echo"])
    asked = await post(client, ["alpha bravo charlie.", "delta echo"], alternatives=3)
    assert asked.status_code == 200, asked.text
    main = [r["text"] for r in plain.json()["result"]]
    items = asked.json()["result"]
    assert [r["text"] for r in items] == main == ["charlie bravo alpha.", "echo delta"]
    for item in items:
        others = item["alternatives"]
        assert isinstance(others, list) and 1 <= len(others) <= 3
        assert item["text"] not in others and len(set(others)) == len(others)
    # Cached under their own key: the same request again is served from the cache, with the same alternatives.
    before = metric_value((await client.http.get("/metrics")).text, "translation_cache_hits_total")
    again = await post(client, ["alpha bravo charlie.", "delta echo"], alternatives=3)
    assert again.json() == asked.json()
    after = metric_value((await client.http.get("/metrics")).text, "translation_cache_hits_total")
    assert after - before == 4  # two main texts and two alternative lists
    # Fewer alternatives are another variant, not a slice of the cached one.
    one = (await post(client, ["alpha bravo charlie."], alternatives=1)).json()["result"][0]
    assert one["text"] == "charlie bravo alpha." and len(one["alternatives"]) == 1


@pytest.mark.parametrize(("options", "message"), [
    ({"format": "xml"}, "payload.format must be one of text, html, got 'xml'"),
    ({"format": 1}, "payload.format must be one of text, html, got a number"),
    ({"alternatives": 6}, "payload.alternatives must be an integer from 0 to 5, got 6"),
    ({"alternatives": -1}, "payload.alternatives must be an integer from 0 to 5, got -1"),
    ({"alternatives": "2"}, "payload.alternatives must be an integer from 0 to 5, got '2'"),
    ({"alternatives": True}, "payload.alternatives must be an integer from 0 to 5, got a boolean"),
    ({"alternatives": 1.5}, "payload.alternatives must be an integer from 0 to 5, got a number"),
    ({"alternatives": 7.0}, "payload.alternatives must be an integer from 0 to 5, got 7.0"),
])
async def test_bad_format_and_alternatives_get_422(client, options, message):
    response = await post(client, ["alpha"], **options)
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "validation_error", "message": message}
