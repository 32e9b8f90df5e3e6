"""The fixed reference for the edge benchmark: a bare Starlette app that parses the same JSON and answers a
fixed body. It runs on plain uvicorn (h11, asyncio loop) whatever server the service uses, so the ratio
"service CPU per request / reference CPU per request" keeps one meaning across changes to the service.

    python -m uvicorn loadtest.edge.reference_app:app --host 127.0.0.1 --port PORT --loop asyncio --http h11
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FIXED_BODY = json.dumps({"result": [{"id": "1", "text": "alpha bravo charlie."}]}).encode()


async def translation(request: Request) -> Response:
    json.loads(await request.body())
    return Response(FIXED_BODY, media_type="application/json")


async def readyz(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


app = Starlette(routes=[Route("/translation", translation, methods=["POST"]), Route("/readyz", readyz)])
