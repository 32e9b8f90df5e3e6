"""Swagger UI at /docs for the service's OpenAPI document, its assets packaged with the service (no CDN).

The page at /docs refers to everything by relative URLs: its assets under docs/, the document as openapi.json.
Behind a proxy that mounts the service under a prefix (/mt/docs -> /docs) the same page then loads /mt/docs/... and
/mt/openapi.json, and Swagger UI sends "Try it out" calls beside the document, under the prefix too.

No inline script or style: the page's Content-Security-Policy allows this origin only (and data: images, which
Swagger UI's stylesheet uses for its icons), and its start-up script is a file here (INITIALIZER).

The assets are Swagger UI 5's (it renders OpenAPI 3.1; Swagger UI 4 refuses a document that is not 3.0), from the
swagger-ui-py package's static files. Only the files the page needs are served, by name from a fixed table: no
directory is exposed, so no path can reach another file. They are read once, on the first request for one, and
served from memory with a long cache lifetime: their URLs carry a digest of their content (?v=...), so a new
version is a new URL.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# Every Swagger UI asset is under this path; app.py leaves it open whatever the API keys say.
ASSETS_PREFIX = "/docs/"
PAGE_PATH = "/docs"
# The distribution whose files are served, and where they lie in it.
SWAGGER_UI_PACKAGE, SWAGGER_UI_FOLDER = "swagger_ui", "static"
# Served files: name -> content type. Only these are ever read.
PACKAGED = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "index.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
INITIALIZER = "init.js"
# BaseLayout, not the standalone preset: its top bar only adds a box to load some other document. No validator
# badge (it would call validator.swagger.io), and no query-string configuration (Swagger UI's default, kept).
_INITIALIZER_JS = b"""\
// Starts Swagger UI on this service's OpenAPI document (service/apidocs.py); a file, as the CSP allows no inline script.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    deepLinking: true,
    displayRequestDuration: true,
    validatorUrl: null,
    queryConfigEnabled: false,
  });
});
"""
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
_PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_ASSET_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        return cls(body, media_type, hashlib.sha256(body).hexdigest()[:16])


def swagger_ui_dir() -> Path:
    """The packaged Swagger UI files, found without importing the package (it would import its web handlers)."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {SWAGGER_UI_PACKAGE} package (Swagger UI's assets for /docs) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / SWAGGER_UI_FOLDER


@functools.cache
def assets() -> dict[str, Asset]:
    folder = swagger_ui_dir()
    served = {name: Asset.of((folder / name).read_bytes(), media_type) for name, media_type in PACKAGED.items()}
    served[INITIALIZER] = Asset.of(_INITIALIZER_JS, "text/javascript; charset=utf-8")
    return served


def page(served: dict[str, Asset]) -> str:
    def url(name: str) -> str:
        return f"docs/{name}?v={served[name].etag}"

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>M2M100 translation service: API</title>
<link rel="stylesheet" href="{url("swagger-ui.css")}">
<link rel="stylesheet" href="{url("index.css")}">
<link rel="icon" type="image/png" href="{url("favicon-32x32.png")}">
</head>
<body>
<div id="swagger-ui"><noscript>Swagger UI needs JavaScript; the document itself is at openapi.json.</noscript></div>
<script src="{url("swagger-ui-bundle.js")}"></script>
<script src="{url(INITIALIZER)}"></script>
</body>
</html>
"""


async def _loaded() -> dict[str, Asset]:
    if assets.cache_info().currsize:
        return assets()
    return await run_in_threadpool(assets)  # about 2 MB from disk, once: off the event loop


async def _page(request: Request) -> Response:
    return Response(page(await _loaded()), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


async def _asset(request: Request) -> Response:
    asset = (await _loaded()).get(request.path_params["name"])
    if asset is None:
        raise HTTPException(404)  # the one not_found answer (app.py)
    etag = f'"{asset.etag}"'
    headers = {"cache-control": _ASSET_CACHE, "etag": etag, "x-content-type-options": "nosniff"}
    if etag in (tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def routes() -> list[BaseRoute]:
    return [
        Route(PAGE_PATH, _page, methods=["GET"]),
        # {name} matches no "/": nothing below this folder, and only PACKAGED's names, are ever served.
        Route(ASSETS_PREFIX + "{name}", _asset, methods=["GET"]),
    ]
