"""/docs (Swagger UI, its assets served by the service) and /info (the effective settings), in-process on the toy model."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import jsonschema
import pytest

from loadtest.toy_compute import toy_environment
from service import __version__, apidocs
from service.info import INFO_SCHEMA, info_document
from tests.helpers import AppClient, build_app

KEY = "docs-test-key"
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png"}


@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        yield client


class References(HTMLParser):
    """Every URL the page refers to, and whether it holds any inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        for name, value in attrs:
            if name in ("src", "href", "action", "data"):
                self.urls.append(value or "")
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}")
        if tag == "style":
            self.inline.append("style")

    def handle_data(self, data):
        if self._tag == "script" and data.strip():
            self.inline.append("script")


async def test_docs_loads_only_its_own_assets_each_served_with_its_type(client):
    response = await client.http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy and "http" not in policy
    assert response.headers["cache-control"] == "no-cache"
    page = References()
    page.feed(response.text)
    assert not page.inline, "no inline script or style: the CSP allows none"
    assert page.urls and all(url.startswith("docs/") for url in page.urls), page.urls
    names = set()
    for url in page.urls:
        # Relative to the page: /docs/... here, /prefix/docs/... behind a proxy that mounts the service under one.
        resolved = urlsplit(urljoin("http://test/docs", url))
        assert resolved.netloc == "test" and resolved.path.startswith(apidocs.ASSETS_PREFIX)
        asset = await client.http.get(resolved.path + "?" + resolved.query)
        assert asset.status_code == 200, url
        name = resolved.path.removeprefix(apidocs.ASSETS_PREFIX)
        assert asset.headers["content-type"] == CONTENT_TYPES[name[name.rindex(".") :]], name
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-content-type-options"] == "nosniff"
        etag = asset.headers["etag"].strip('"')
        assert resolved.query == f"v={etag}", "a new content is a new URL"
        names.add(name)
    assert {"swagger-ui.css", "swagger-ui-bundle.js", apidocs.INITIALIZER} <= names
    initializer = (await client.http.get(apidocs.ASSETS_PREFIX + apidocs.INITIALIZER)).text
    assert 'url: "openapi.json"' in initializer and "validatorUrl: null" in initializer
    assert "http" not in initializer, "no outside URL"


async def test_the_bundle_is_swagger_ui_5_which_renders_openapi_3_1(client):
    bundle = (await client.http.get("/docs/swagger-ui-bundle.js")).text
    assert 'PACKAGE_VERSION:"5.' in bundle
    assert (await client.http.get("/openapi.json")).json()["openapi"].startswith("3.1.")


async def test_an_asset_the_browser_holds_is_not_sent_again(client):
    first = await client.http.get("/docs/swagger-ui.css")
    again = await client.http.get("/docs/swagger-ui.css", headers={"if-none-match": f'W/"x", {first.headers["etag"]}'})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", first.headers["etag"])
    other = await client.http.get("/docs/swagger-ui.css", headers={"if-none-match": '"stale"'})
    assert other.status_code == 200 and other.content == first.content


@pytest.mark.parametrize(
    "path",
    [
        "/docs/%2e%2e/app.py",  # /docs/../app.py once decoded
        "/docs/..%2Fservice%2Fapp.py",
        "/docs/..%5Capp.py",
        "/docs/%2Fetc%2Fpasswd",
        "/docs/",
        "/docs/sub/swagger-ui.css",
        # In the package, and not needed by the page: not served.
        "/docs/swagger-editor-bundle.js",
        "/docs/oauth2-redirect.html",
        "/docs/index.html",
    ],
)
async def test_only_the_listed_files_are_served(client, path):
    response = await client.http.get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


async def test_docs_are_open_with_keys_on_and_info_needs_a_key(toy_model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    async with AppClient(build_app(toy_model_dir, api_keys_file=keys)) as client:
        for path in ("/docs", "/docs/swagger-ui-bundle.js", f"/docs/{apidocs.INITIALIZER}", "/openapi.json"):
            assert (await client.http.get(path)).status_code == 200, path
        refused = await client.http.get("/info")
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
        served = await client.http.get("/info", headers={"authorization": f"Bearer {KEY}"})
        assert served.status_code == 200 and served.json()["api_keys"] is True
        # Swagger UI's Authorize: the document declares the bearer scheme, and which paths need no key.
        document = (await client.http.get("/openapi.json")).json()
        assert document["components"]["securitySchemes"]["apiKey"] == {
            "type": "http", "scheme": "bearer", "description": "when MT_API_KEYS_FILE is set"
        }  # fmt: skip
        assert "security" not in document["paths"]["/info"]["get"]  # the document's default: a key when keys are on
        for path in ("/docs", "/", "/openapi.json", "/healthz", "/readyz"):
            assert document["paths"][path]["get"]["security"] == [], path


async def test_info_is_the_effective_settings_of_the_toy_model(toy_model_dir):
    app = build_app(toy_model_dir, max_batch_size=8, max_records=10, scheduling="fifo", beam_size=1, cache_size=0)
    async with AppClient(app) as client:
        response = await client.http.get("/info")
        assert response.status_code == 200
        compute_type = client.engine.compute_type  # as CTranslate2 reports it: int8 runs as int8_float32 on a CPU
        assert compute_type.startswith(toy_environment(toy_model_dir, {}).get("MT_COMPUTE_TYPE", "int8"))
        assert response.json() == {
            "version": __version__,
            "model": {
                "source": str(client.runtime.manifest.source),
                "revision": None,
                "quantization": "int8",
                "architecture": "M2M100ForConditionalGeneration",
                "max_input_length": 64,
            },
            "device": "cpu",
            "compute_type": compute_type,
            "languages": 100,
            "api_keys": False,
            "decoding": {"beam_size": 1, "max_decoding_length": 62},  # the toy model's positions allow 62, not 256
            "limits": {
                "max_records": 10, "max_text_chars": 20000, "max_body_bytes": 2 * 1024 * 1024, "max_alternatives": 5,
                "client_rate_per_second": 0.0, "client_burst": 20, "client_max_sentences": 0,
                "client_max_pending_bodies": 0, "max_in_flight": 128, "max_pending_bodies": 512,
                "queue_timeout_seconds": 30.0, "header_timeout_seconds": 10.0, "body_timeout_seconds": 30.0,
                "idle_timeout_seconds": 75.0,
            },
            "batching": {
                "enabled": True, "scheduling": "fifo", "max_batch_size": 8, "max_batch_tokens": 2048, "max_queue": 128,
                "request_window": 16, "workers": 2, "threads_per_worker": 1,
            },
            "cache": {"max_bytes": 0, "max_entry_chars": 1000, "shared": False},
            "detection": {"fallback_language": "en", "min_confidence": 0.2},
        }  # fmt: skip


async def test_info_follows_the_settings(toy_model_dir):
    app = build_app(toy_model_dir, batching="false", max_queue=40, inter_threads=1, auto_fallback_lang="fr")
    async with AppClient(app) as client:
        info = (await client.http.get("/info")).json()
    assert info["batching"]["enabled"] is False
    assert info["batching"]["max_batch_size"] == 1  # what the batcher is given with batching off
    assert (info["batching"]["max_queue"], info["limits"]["max_in_flight"]) == (40, 40)  # in flight follows the queue
    assert info["batching"]["workers"] == 1
    assert info["detection"]["fallback_language"] == "fr"


async def test_info_matches_its_schema_in_the_openapi_document_key_for_key(client):
    document = (await client.http.get("/openapi.json")).json()
    schema = document["paths"]["/info"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == INFO_SCHEMA
    ready = (await client.http.get("/info")).json()
    starting = info_document(build_app(client.runtime.settings.model_dir).runtime)  # no engine yet
    assert (starting["device"], starting["compute_type"]) == (None, None)
    for info in (ready, starting):
        jsonschema.Draft202012Validator(schema).validate(info)
        _same_keys(info, schema, "info")


def _same_keys(value, schema, where):
    """The document has exactly the fields the schema lists, at every level: a fixed shape."""
    if schema.get("type") != "object":
        return
    assert set(value) == set(schema["properties"]) == set(schema["required"]), where
    for name, field in schema["properties"].items():
        _same_keys(value[name], field, f"{where}.{name}")
