"""CORS (MT_CORS_ORIGINS, service/cors.py): preflights answered for allowed origins only, the CORS headers on real
answers (hot paths, LibreTranslate's API and errors included), and nothing of it when it is off."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError
from tests.helpers import AppClient, build_app

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
BODY = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo charlie."}]}}


@pytest.fixture
async def cors_client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir, cors_origins=f"{APP}, http://localhost:3000")) as client:
        yield client


async def test_a_preflight_from_an_allowed_origin_is_answered(cors_client):
    response = await cors_client.http.options("/translation", headers={"origin": APP, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert set(response.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
    allowed = {h.lower() for h in response.headers["access-control-allow-headers"].split(", ")}
    assert {"authorization", "content-type", "x-request-id", "traceparent", "tracestate"} <= allowed
    assert response.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in response.headers  # keys are headers, never cookies
    second = await cors_client.http.options("/detect", headers={"origin": "http://localhost:3000", **PREFLIGHT})
    assert second.headers["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({"origin": OTHER, **PREFLIGHT}, "origin"),
        ({"origin": APP, "access-control-request-method": "DELETE"}, "method"),
        ({"origin": APP, "access-control-request-method": "POST", "access-control-request-headers": "x-secret"}, "headers"),
    ],
)
async def test_a_preflight_the_settings_do_not_allow_is_refused_in_the_error_shape(cors_client, headers, refused):
    response = await cors_client.http.options("/translation", headers=headers)
    assert response.status_code == 403
    # Only an allowed origin may read why (a method or header it may not use).
    assert response.headers.get("access-control-allow-origin") == (None if refused == "origin" else APP)
    error = response.json()["error"]
    assert error["code"] == "cors_refused"
    assert error["message"].startswith(f"cross-origin request refused ({refused}): origin {headers['origin']!r}")
    assert "MT_CORS_ORIGINS" in error["message"]


async def test_real_answers_carry_the_cors_headers_for_allowed_origins_only(cors_client):
    response = await cors_client.http.post("/translation", json=BODY, headers={"origin": APP})
    assert response.json() == {"result": [{"id": "1", "text": "charlie bravo alpha."}]}
    assert response.headers["access-control-allow-origin"] == APP
    assert "Origin" in response.headers["vary"]
    exposed = {h.lower() for h in response.headers["access-control-expose-headers"].split(", ")}
    assert exposed == {"x-request-id", "x-queue-time", "x-inference-time", "x-total-time", "retry-after"}
    # Another origin gets its answer (CORS is the browser's check), but nothing that lets its page read it.
    other = await cors_client.http.post("/translation", json=BODY, headers={"origin": OTHER})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    # Same-origin and non-browser callers send no Origin: no CORS headers.
    plain = await cors_client.http.post("/translation", json=BODY)
    assert not [name for name in plain.headers if name.startswith("access-control-")]


async def test_every_kind_of_route_and_errors_carry_them_so_a_page_can_read_the_error(toy_model_dir):
    app = build_app(toy_model_dir, cors_origins="*", api_keys_file="")
    async with AppClient(app) as client:
        languages = await client.http.get("/languages", headers={"origin": OTHER})
        assert languages.headers["access-control-allow-origin"] == "*"
        libre = await client.http.post("/libretranslate/translate", json={"q": "alpha bravo", "source": "en", "target": "fr"},
                                        headers={"origin": OTHER})  # fmt: skip
        assert libre.json() == {"translatedText": "bravo alpha"}
        assert libre.headers["access-control-allow-origin"] == "*"
        bad = await client.http.post("/translation", json={"payload": {}}, headers={"origin": OTHER})
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == "*"
        preflight = await client.http.options("/libretranslate/translate", headers={"origin": OTHER, **PREFLIGHT})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"


async def test_with_api_keys_the_preflight_needs_no_key_and_a_refusal_is_readable(toy_model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("secret-key\n")
    app = build_app(toy_model_dir, cors_origins=APP, api_keys_file=str(keys))
    async with AppClient(app) as client:
        preflight = await client.http.options("/translation", headers={"origin": APP, **PREFLIGHT})
        assert preflight.status_code == 200  # a browser never sends the key with a preflight
        refused = await client.http.post("/translation", json=BODY, headers={"origin": APP})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP
        info = await client.http.get("/languages", headers={"origin": APP})
        assert info.status_code == 401 and info.headers["access-control-allow-origin"] == APP
        served = await client.http.post("/translation", json=BODY, headers={"origin": APP, "authorization": "Bearer secret-key"})
        assert served.status_code == 200 and served.headers["access-control-allow-origin"] == APP


async def test_off_by_default_no_preflight_and_no_headers(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        preflight = await client.http.options("/translation", headers={"origin": APP, **PREFLIGHT})
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers
        response = await client.http.post("/translation", json=BODY, headers={"origin": APP})
        assert response.status_code == 200
        assert not [name for name in response.headers if name.startswith("access-control-")]


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/path", "ftp://x.example", "https://"])
def test_a_value_that_is_not_an_origin_stops_the_start(value):
    with pytest.raises(SettingsError, match=r"--cors-origins \(MT_CORS_ORIGINS\): .* is not an origin"):
        Settings.load(["--model-dir", "m"], {"MT_CORS_ORIGINS": f"https://ok.example, {value}"})
