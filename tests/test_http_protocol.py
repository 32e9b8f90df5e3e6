"""The service's HTTP protocol: holding refused connections, timeouts, JSON protocol errors, request heads measured
one at a time (pipelining, the head limit)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import pytest

from loadtest.toy_task import expected_translation
from service.http_protocol import HOLD_READING, MAX_HEAD_BYTES
from tests.helpers import TinyServer, metric_value, read_responses, wait_for


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
    service = start_service(toy_model_dir, env={"MT_MAX_PENDING_BODIES": "1"})
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps({"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow, socket.create_connection(("127.0.0.1", port), timeout=10) as eager:
        # The slow client takes the only body slot: its body trickles in.
        full = request("/translation", body)
        slow.sendall(full[:-10])
        wait_for(lambda: pending_bodies(service.url) == 1, timeout=10, what="the slow request's body pending")
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


def pending_bodies(url: str) -> float:
    """The service's requests still sending their body, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), "translation_pending_bodies")


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


# --- request heads measured one at a time: pipelining and the head limit


def echo_app(delay: float = 0.0):
    """An app that reads each request's body and answers (after `delay` seconds) `PATH?QUERY SIZE`."""

    async def echo(scope, receive, send):
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if delay:
            await asyncio.sleep(delay)
        body = f"{scope['path']}?{scope['query_string'].decode()} {size}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return echo


# What a browser-like client sends besides the request line: 600 such heads are well over MAX_HEAD_BYTES.
CLIENT_HEADERS = "Host: t\r\nUser-Agent: pipelining-test/1.0\r\nAccept: application/json\r\nX-Request-Id: {i:06d}\r\n"
TOY_BODY = b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}'


def pipelined_request(kind: str, i: int) -> bytes:
    """Request `i` of a pipeline: a GET, a POST with a Content-Length body, or a POST with a chunked body."""
    headers = CLIENT_HEADERS.format(i=i)
    if kind == "get":
        return f"GET /healthz?i={i} HTTP/1.1\r\n{headers}\r\n".encode()
    if kind == "post":
        return f"POST /translation?i={i} HTTP/1.1\r\n{headers}Content-Length: {len(TOY_BODY)}\r\n\r\n".encode() + TOY_BODY
    return f"POST /chunked?i={i} HTTP/1.1\r\n{headers}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n".encode()


BODY_SIZES = {"get": 0, "post": len(TOY_BODY), "chunked": 8}
PATHS = {"get": "/healthz", "post": "/translation", "chunked": "/chunked"}


@pytest.mark.parametrize("kind", ["get", "post", "chunked"])
def test_600_pipelined_requests_in_one_write_are_all_answered_in_order(kind):
    data = b"".join(pipelined_request(kind, i) for i in range(600))
    assert len(data) > MAX_HEAD_BYTES  # counted by the read, as before, this came to 431 and nothing answered
    with TinyServer(echo_app()) as server, server.connect() as connection:
        connection.sendall(data)
        responses, _ = read_responses(connection, 600, timeout=30)
    assert len(responses) == 600
    assert [(status, body) for status, _, body in responses] == [
        (200, f"{PATHS[kind]}?i={i} {BODY_SIZES[kind]}".encode()) for i in range(600)
    ]


def head_of(size: int, path: str = "/exact") -> bytes:
    """A complete GET head of exactly `size` bytes, its blank line included."""
    short = f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {'p' * (size - len(short))}\r\n\r\n".encode()


def send_in_pieces(connection: socket.socket, data: bytes, piece: int = 1000) -> None:
    """Sends `data` in small writes, each on its own (the server reads the head in many reads)."""
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for start in range(0, len(data), piece):
        connection.sendall(data[start:start + piece])
        time.sleep(0.001)


TOO_LARGE = {"error": {"code": "headers_too_large", "message": f"the request head is over {MAX_HEAD_BYTES} bytes"}}


@pytest.mark.parametrize(
    "arrival", ["one write", "many writes", "behind pipelined bodies", "behind a body and empty lines", "split at its blank line"]
)
@pytest.mark.parametrize("size", [MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1])
def test_a_head_of_the_limit_is_served_and_one_byte_more_gets_431_however_it_arrives(arrival, size):
    head = head_of(size)
    before = {
        "behind pipelined bodies": [pipelined_request("post", i) for i in range(50)],
        # Empty lines before a request line (some clients end a body with one) are skipped, and not counted.
        "behind a body and empty lines": [pipelined_request("post", 0) + b"\r\n\r\n\r\n"],
    }.get(arrival, [])
    with TinyServer(echo_app(delay=0.002)) as server, server.connect() as connection:
        if arrival == "many writes":
            send_in_pieces(connection, head)
        elif arrival == "split at its blank line":
            connection.sendall(head[:-2])
            time.sleep(0.05)
            connection.sendall(head[-2:])
        else:
            connection.sendall(b"".join(before) + head)
        responses, rest = read_responses(connection, len(before) + 1, timeout=20)
        closed = size > MAX_HEAD_BYTES and connection.recv(1) == b""
    # Whatever came before the head is answered first, in order.
    answers = [(status, body) for status, _, body in responses[:-1]]
    assert answers == [(200, f"/translation?i={i} {len(TOY_BODY)}".encode()) for i in range(len(before))]
    status, headers, body = responses[-1]
    if size <= MAX_HEAD_BYTES:
        assert (status, body) == (200, b"/exact? 0")
    else:
        assert (status, json.loads(body), headers["connection"]) == (431, TOO_LARGE, "close")
        assert rest == b"" and closed


def test_an_oversized_head_still_arriving_behind_slow_pipelined_requests_gets_431_after_their_answers():
    with TinyServer(echo_app(delay=0.1)) as server, server.connect() as connection:
        connection.sendall(b"".join(pipelined_request("get", i) for i in range(3)) + b"GET /big HTTP/1.1\r\nX-Big: " + b"b" * (200 * 1024))
        responses, _ = read_responses(connection, 4, timeout=10)
    assert [(status, body) for status, _, body in responses[:3]] == [(200, f"/healthz?i={i} 0".encode()) for i in range(3)]
    assert (responses[3][0], json.loads(responses[3][2])) == (431, TOO_LARGE)


def test_an_oversized_head_after_a_chunked_request_in_the_same_write_gets_431():
    # After a chunked body the parser hides where the next head begins; it is measured from what was parsed.
    with TinyServer(echo_app()) as server, server.connect() as connection:
        connection.sendall(pipelined_request("chunked", 0) + head_of(MAX_HEAD_BYTES + 1024))
        responses, _ = read_responses(connection, 2, timeout=10)
    assert [status for status, _, _ in responses] == [200, 431]
    assert responses[0][2] == b"/chunked?i=0 8" and json.loads(responses[1][2]) == TOO_LARGE


def test_the_head_clock_of_a_request_behind_slow_pipelined_answers_waits_for_them():
    # uvicorn reads nothing while pipelined requests are answered: a head left incomplete behind them is not late
    # until they are; its 408 then follows their answers.
    with TinyServer(echo_app(delay=0.4), header_timeout=0.3) as server, server.connect() as connection:
        connection.sendall(pipelined_request("get", 0) + pipelined_request("get", 1) + b"GET /late HTTP/1.1\r\nHost: t\r\n")
        responses, _ = read_responses(connection, 3, timeout=10)
    assert [status for status, _, _ in responses] == [200, 200, 408]
    assert json.loads(responses[2][2])["error"]["code"] == "request_timeout"


@pytest.mark.slow
def test_600_pipelined_translations_and_probes_on_one_connection_are_all_answered_in_order(toy_model_dir, start_service):
    service = start_service(toy_model_dir)
    port = int(service.url.rsplit(":", 1)[1])
    texts = ["alpha bravo", "charlie delta echo.", "foxtrot"]

    def one(i: int) -> bytes:
        if i % 2:
            return f"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: r{i}\r\n\r\n".encode()
        body = json.dumps({"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": i, "text": texts[i % 3]}]}}).encode()
        return f"POST /translation HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    data = b"".join(one(i) for i in range(600))
    assert len(data) > MAX_HEAD_BYTES
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        responses, _ = read_responses(connection, 600, timeout=120)
    seconds = time.perf_counter() - started
    assert len(responses) == 600, f"{len(responses)} of 600 answered"
    for i, (status, _, body) in enumerate(responses):
        if i % 2:
            assert (status, json.loads(body)) == (200, {"status": "alive"}), i
        else:
            assert (status, json.loads(body)["result"]) == (200, [{"id": i, "text": expected_translation(texts[i % 3], "fr")}]), i
    print(f"600 pipelined requests ({len(data)} bytes in one write) answered in order in {seconds:.2f} s")
