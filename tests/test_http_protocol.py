"""The service's HTTP protocol: holding refused connections, timeouts, JSON protocol errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.request

import uvicorn

from service.http_protocol import HOLD_READING, protocol_class
from tests.helpers import free_port, metric_value, uvicorn_in_thread, wait_for


async def tiny_app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 429 if scope["path"] == "/refuse" else 200
    if status == 429:
        scope[HOLD_READING] = 0.5
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def exchange(connection: socket.socket, request: bytes) -> tuple[bytes, float]:
    """Sends one request, reads one whole (2-byte body) response; returns it and the seconds it took."""
    started = time.perf_counter()
    connection.sendall(request)
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"{}")):
        chunk = connection.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data, time.perf_counter() - started


def request(path: str, body: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class TinyServer:
    """uvicorn with the service's protocol on a free loopback port, in a thread, around an ASGI app."""

    def __init__(self, app, **protocol) -> None:
        self.port = free_port()
        options = {"header_timeout": 10.0, "body_timeout": 10.0, "draining": lambda: False, **protocol}
        keep_alive = options.pop("keep_alive", 5.0)
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="uvloop", http=protocol_class(**options),
                                     lifespan="off", log_level="warning", timeout_keep_alive=keep_alive)
        self._serving = contextlib.ExitStack()

    def __enter__(self) -> TinyServer:
        self._serving.enter_context(uvicorn_in_thread(self.config))
        return self

    def __exit__(self, *exc) -> None:
        self._serving.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


def test_the_next_request_on_a_refused_connection_is_read_after_the_hold():
    with TinyServer(tiny_app) as server:
        with server.connect() as connection:
            ok, first = exchange(connection, request("/ok"))
            refused, refusal = exchange(connection, request("/refuse"))
            after, held = exchange(connection, request("/ok"))
        with server.connect() as other:
            _, elsewhere = exchange(other, request("/ok"))
    assert ok.startswith(b"HTTP/1.1 200") and refused.startswith(b"HTTP/1.1 429") and after.startswith(b"HTTP/1.1 200")
    assert first < 0.3 and refusal < 0.3  # the 429 itself is not delayed
    assert held >= 0.45  # the same connection's next request waited out the hold
    assert elsewhere < 0.3  # other connections are not held


def test_the_service_holds_a_connection_it_refused_for_overload(toy_model_dir, start_service):
    service = start_service(toy_model_dir, env={"MT_MAX_IN_FLIGHT": "1"})
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps({"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow, socket.create_connection(("127.0.0.1", port), timeout=10) as eager:
        # The slow client takes the only slot: its request is in flight while its body trickles in.
        full = request("/translation", body)
        slow.sendall(full[:-10])
        wait_for(lambda: in_flight(service.url) == 1, timeout=10, what="the slow request in flight")
        refused, refusal = exchange_json(eager, request("/translation", body))
        assert refused.startswith(b"HTTP/1.1 429") and b"retry-after: 1" in refused.lower()
        slow.sendall(full[-10:])
        answered, _ = exchange_json(slow, b"")
        assert answered.startswith(b"HTTP/1.1 200") and b'"text":"bravo alpha"' in answered
        # The refused client retries at once on the same connection: read only after Retry-After.
        retried, held = exchange_json(eager, request("/translation", body))
    assert retried.startswith(b"HTTP/1.1 200")
    assert refusal < 0.5
    assert held >= 0.6  # about 1 s, less the time the slow request took


def in_flight(url: str) -> float:
    """The service's requests in flight, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), "translation_in_flight_requests")


def exchange_json(connection: socket.socket, data: bytes) -> tuple[bytes, float]:
    """Sends `data` (maybe nothing) and reads one response whose body is JSON with a content-length."""
    started = time.perf_counter()
    if data:
        connection.sendall(data)
    received = b""
    while True:
        head, separator, rest = received.partition(b"\r\n\r\n")
        if separator:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            if len(rest) >= length:
                return received, time.perf_counter() - started
        chunk = connection.recv(65536)
        assert chunk, "connection closed"
        received += chunk


def read_until_closed(connection: socket.socket) -> tuple[bytes, float]:
    started, data = time.perf_counter(), b""
    while chunk := connection.recv(4096):
        data += chunk
    return data, time.perf_counter() - started


def json_body(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout():
    with TinyServer(tiny_app, header_timeout=0.3) as server, server.connect() as connection:
        data, waited = read_until_closed(connection)
    assert data == b""  # nothing was asked, nothing is answered
    assert 0.25 <= waited < 3


def test_a_slow_request_head_gets_408_in_the_error_shape_and_is_closed():
    with TinyServer(tiny_app, header_timeout=0.3) as server, server.connect() as connection:
        connection.sendall(b"POST /ok HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # and then nothing more
        data, waited = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 408")
    assert json_body(data) == {"error": {"code": "request_timeout", "message": "request timed out: no complete request head"}}
    assert waited < 3


def body_reader(seen: list[str]):
    """An app that reads a request's body to its end, recording each ASGI message type it receives."""

    async def reader(scope, receive, send):
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    return reader


def test_a_slow_body_gets_408_and_the_app_hears_the_client_is_gone():
    seen: list[str] = []
    reader = body_reader(seen)

    with TinyServer(reader, body_timeout=0.3) as server, server.connect() as connection:
        connection.sendall(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        data, waited = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 408")
    assert json_body(data)["error"]["message"] == "request timed out: the request body did not arrive in time"
    assert waited < 3
    assert seen[-1] == "http.disconnect"


def test_an_idle_keep_alive_connection_is_closed():
    with TinyServer(tiny_app, keep_alive=0.3) as server, server.connect() as connection:
        response, _ = exchange(connection, request("/ok"))
        assert response.startswith(b"HTTP/1.1 200")
        data, waited = read_until_closed(connection)
    assert data == b"" and waited < 3


def test_a_malformed_request_gets_400_in_the_error_shape():
    with TinyServer(tiny_app) as server, server.connect() as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data, _ = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in data
    assert json_body(data)["error"]["code"] == "bad_request"


def test_the_service_applies_its_header_timeout(toy_model_dir, start_service):
    service = start_service(toy_model_dir, env={"MT_HEADER_TIMEOUT_SECONDS": "0.5"})
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /translation HTTP/1.1\r\nHost: t\r\n")
        data, waited = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 408") and waited < 5


def test_blank_lines_do_not_hold_a_connection_open():
    with TinyServer(tiny_app, header_timeout=0.4) as server, server.connect() as connection:
        deadline = time.monotonic() + 1.5
        closed_after = None
        while time.monotonic() < deadline:  # an empty line every 100 ms, as a slowloris would
            try:
                connection.sendall(b"\r\n")
                connection.settimeout(0.1)
                if connection.recv(1024) == b"":
                    closed_after = time.monotonic()
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic()
                break
    assert closed_after is not None, "the connection should have been closed"


def test_a_request_head_over_the_limit_gets_431():
    with TinyServer(tiny_app) as server, server.connect() as connection:
        connection.sendall(b"POST /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (200 * 1024))
        data, _ = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 431")
    assert json_body(data)["error"]["code"] == "headers_too_large"


def test_garbage_after_a_request_is_answered_after_that_request():
    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    with TinyServer(slow) as server, server.connect() as connection:
        connection.sendall(request("/ok") + b"THIS IS NOT HTTP\r\n\r\n")
        data, _ = read_until_closed(connection)
    first, _, rest = data.partition(b"{}")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 400") and json_body(rest)["error"]["code"] == "bad_request"


def test_an_upgrade_request_is_served_as_plain_http():
    bodies: list[bytes] = []

    async def echo(scope, receive, send):
        if scope["type"] != "http":
            return
        message = await receive()
        bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    body = b'{"payload": 1}'
    head = (b"POST /ok HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with TinyServer(echo) as server, server.connect() as connection:
        response, _ = exchange(connection, head + body)
    assert response.startswith(b"HTTP/1.1 200")
    assert bodies == [body]  # what curl --http2 sends over http:// is not dropped


def test_broken_chunked_framing_inside_a_body_gets_400_at_once():
    seen: list[str] = []
    reader = body_reader(seen)

    with TinyServer(reader, body_timeout=5) as server, server.connect() as connection:
        connection.sendall(b"POST /ok HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n")
        data, waited = read_until_closed(connection)
    assert data.startswith(b"HTTP/1.1 400") and json_body(data)["error"]["code"] == "bad_request"
    assert waited < 2  # not the 5 s body timeout
    assert seen[-1] == "http.disconnect"
