"""Holding a refused connection: the 429 leaves at once, the connection's next request is read later."""

from __future__ import annotations

import json
import socket
import threading
import time

import uvicorn

from service.http_protocol import HOLD_READING, HoldingHttpToolsProtocol
from tests.conftest import free_port


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


def test_the_next_request_on_a_refused_connection_is_read_after_the_hold():
    port = free_port()
    config = uvicorn.Config(tiny_app, host="127.0.0.1", port=port, loop="uvloop", http=HoldingHttpToolsProtocol,
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            ok, first = exchange(connection, request("/ok"))
            refused, refusal = exchange(connection, request("/refuse"))
            after, held = exchange(connection, request("/ok"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
            _, elsewhere = exchange(other, request("/ok"))
    finally:
        server.should_exit = True
        thread.join(10)
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
        time.sleep(0.3)
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
