"""Swagger UI at /docs for the service's OpenAPI document, its assets packaged with the service (no CDN)."""

from __future__ import annotations

from starlette.routing import BaseRoute

# Every Swagger UI asset is under this path; app.py leaves it open whatever the API keys say.
ASSETS_PREFIX = "/docs/"


def routes() -> list[BaseRoute]:
    return []
