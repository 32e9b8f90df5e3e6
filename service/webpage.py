"""The web page at / (text in, translation out) and its assets, served by the service itself."""

from __future__ import annotations

from starlette.routing import BaseRoute

# Every asset the page loads is under this path; app.py leaves it open whatever the API keys say.
ASSETS_PREFIX = "/static/"


def routes() -> list[BaseRoute]:
    return []
