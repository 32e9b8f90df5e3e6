"""GET /info: what this replica serves (version, model, device, limits, batching), as TGI's /info does."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.runtime import Runtime


def info_document(runtime: Runtime) -> dict[str, Any]:
    return {"version": __version__}
