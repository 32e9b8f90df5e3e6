"""The web page at / (text in, translation out) and its assets, served by the service itself.

The page is service/web/index.html; its script, style sheet and icon are the other files in service/web/, served
under ASSETS_PREFIX from memory (a few KB, read once when the app is built; only those names exist, so no path
from a request ever reaches the file system). The page names each asset with a digest of its content
(`/static/app.js?v=...`): an asset asked for with its current digest may be cached for a year, anything else is
revalidated, so a new release is never mixed with a cached old script. The page itself is always revalidated.

The page talks to the native API only (GET /languages, POST /translation) with the browser's own fetch; its
Content-Security-Policy allows nothing but this origin, and no inline script or style.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# Every asset the page loads is under this path; app.py leaves it open whatever the API keys say.
ASSETS_PREFIX = "/static/"

PAGE = "index.html"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Only this origin, for everything; no plugins, no <base>, no framing. No 'unsafe-inline': the page has no inline
# script or style (tests/test_web_page.py checks the served HTML).
CONTENT_SECURITY_POLICY = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
REVALIDATE = "no-cache"  # may be stored, but asked again (a 304 when unchanged) before each use
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # a digest of body: the `v` the page asks for, and the ETag

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        return cls(body, media_type, hashlib.sha256(body).hexdigest()[:16])

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


class WebPage:
    """The page and its assets, read from the package once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        if PAGE not in files:
            raise RuntimeError(f"service/web/{PAGE} is missing: the package was built without its web files")
        self.assets: dict[str, Asset] = {}
        for name, body in files.items():
            if name == PAGE:
                continue
            suffix = name[name.rfind(".") :] if "." in name else ""
            if suffix not in MEDIA_TYPES:
                raise RuntimeError(f"service/web/{name}: no media type for {suffix or 'a name without a suffix'}")
            self.assets[name] = Asset.of(body, MEDIA_TYPES[suffix])
        html = files[PAGE].decode("utf-8")
        # {{app.js}} in the page -> /static/app.js?v=DIGEST
        for name, asset in self.assets.items():
            html = html.replace("{{" + name + "}}", f"{ASSETS_PREFIX}{name}?v={asset.version}")
        if "{{" in html:
            unknown = html[html.index("{{") :].split("}}", 1)[0] + "}}"
            raise RuntimeError(f"service/web/{PAGE} names an asset that is not in service/web/: {unknown}")
        self.page = Asset.of(html.encode("utf-8"), "text/html; charset=utf-8")

    @classmethod
    def from_package(cls) -> WebPage:
        folder = resources.files("service").joinpath("web")
        entries = list(folder.iterdir()) if folder.is_dir() else []
        # Hidden files (an editor's swap file, say) are not part of the page.
        return cls({entry.name: entry.read_bytes() for entry in entries if entry.is_file() and not entry.name.startswith(".")})

    async def serve_page(self, request: Request) -> Response:
        return _respond(request, self.page, REVALIDATE)

    async def serve_asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            raise HTTPException(404)  # the app's handler answers in the one JSON error shape
        versioned = request.query_params.get("v") == asset.version
        return _respond(request, asset, IMMUTABLE if versioned else REVALIDATE)


def _respond(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    etags = _etags(request.headers.get("if-none-match", ""))
    if asset.etag in etags or "*" in etags:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _etags(if_none_match: str) -> set[str]:
    """The entity tags of an If-None-Match header, weak ones as strong (a GET compares weakly)."""
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()}


def routes() -> list[BaseRoute]:
    """GET / (the page) and GET /static/NAME (its assets); HEAD is answered too (Starlette adds it to GET)."""
    web = WebPage.from_package()
    return [
        Route("/", web.serve_page, methods=["GET"]),
        Route(ASSETS_PREFIX + "{name}", web.serve_asset, methods=["GET"]),
    ]
