"""X-Request-Id: a caller's plain id is echoed and logged; anything else (quotes, line breaks, control or
non-ASCII characters, over 128 characters) is replaced by a generated id in the response header and in the
request's log line, so a client cannot forge log lines or break a log pipeline's JSON."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from service.logs import JsonFormatter
from tests.helpers import AppClient, build_app

FORGED = {
    "quotes": b'abc", "level": "error',
    "newline": b"abc\ndef",
    "forged log line": b'abc\r\n{"level": "error", "message": "request"}',
    "space": b"abc def",
    "control character": b"abc\x1b[31m",
    "non-ASCII letter": "abcé".encode("latin-1"),
    "129 characters": b"a" * 129,
    "empty": b"",
}
PLAIN = ["abc", "req-123_ABC", "Z" * 128]


@pytest.fixture
async def client(toy_model_dir):
    async with AppClient(build_app(toy_model_dir)) as client:
        yield client


async def translate_with_id(client: AppClient, caplog, request_id: bytes) -> tuple[httpx.Response, dict]:
    """One translation sent with X-Request-Id `request_id`: the response, and its request log line as the
    service writes it (JsonFormatter), parsed back."""
    caplog.clear()
    body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}
    response = await client.http.post("/translation", json=body, headers=[(b"x-request-id", request_id)])
    assert response.status_code == 200
    [record] = [r for r in caplog.records if r.name == "service.requests"]
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\r" not in line  # one line, whatever the caller sent
    return response, json.loads(line)


def plain(request_id: str) -> bool:
    return 0 < len(request_id) <= 128 and request_id.isascii() and request_id.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
async def test_a_forged_request_id_is_replaced_by_a_generated_one(client, caplog, forged):
    caplog.set_level(logging.INFO, logger="service.requests")
    first, first_line = await translate_with_id(client, caplog, forged)
    second, second_line = await translate_with_id(client, caplog, forged)
    for response, line in ((first, first_line), (second, second_line)):
        generated = response.headers["x-request-id"]
        assert plain(generated) and generated.encode() != forged
        assert line["request_id"] == generated  # the log line names the id the caller was given
        assert line["message"] == "request" and line["level"] == "info"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]  # generated afresh each time


@pytest.mark.parametrize("request_id", PLAIN, ids=["short", "dashes and underscores", "128 characters"])
async def test_a_plain_request_id_is_echoed_and_logged(client, caplog, request_id):
    caplog.set_level(logging.INFO, logger="service.requests")
    response, line = await translate_with_id(client, caplog, request_id.encode())
    assert response.headers["x-request-id"] == request_id
    assert line["request_id"] == request_id


@pytest.mark.slow
def test_a_forged_request_id_never_reaches_the_log_file_of_a_real_service(toy_model_dir, start_service):
    service = start_service(toy_model_dir)
    forged = 'x" "level": "error' + "a" * 130
    body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}
    response = httpx.post(f"{service.url}/translation", json=body, headers={"x-request-id": forged}, timeout=30)
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert plain(generated) and generated != forged
    service.stop()  # the log is complete once the process has exited
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    assert [line["request_id"] for line in lines if line.get("message") == "request"] == [generated]
    assert "a" * 100 not in service.log()  # not in any form, escaped or cut short
