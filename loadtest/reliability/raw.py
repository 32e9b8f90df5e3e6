"""A raw-socket HTTP/1.x client for requests httpx won't send: broken framing, slow or pipelined bytes,
odd versions and headers. It writes exactly the bytes it is given and reads whatever comes back."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


@dataclass
class Exchange:
    """What one connection got back: the responses in order, whether the server closed it, and how long
    it all took. `error` says why reading stopped early (a reset, a timeout, unparseable bytes)."""

    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    seconds: float = 0.0
    error: str = ""
    leftover: bytes = b""


class _Reader:
    def __init__(self, sock: socket.socket | None, deadline: float, buffer: bytes = b"") -> None:
        self.sock, self.deadline, self.buffer, self.eof = sock, deadline, buffer, sock is None

    def _fill(self) -> bool:
        if self.eof:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete response before the deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self._fill():
                return None
        data, _, self.buffer = self.buffer.partition(marker)
        return data

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


def read_response(reader: _Reader, *, head_only: bool = False) -> Response | None:
    """One response (1xx interim responses skipped); None if the connection closed before a status line."""
    while True:
        head = reader.until(b"\r\n\r\n")
        if head is None:
            if reader.buffer:
                raise ValueError(f"incomplete response head: {reader.buffer[:200]!r}")
            return None
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ValueError(f"not an HTTP status line: {lines[0][:200]!r}")
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = Response(int(code), reason, headers, b"", version)
        if 100 <= response.status < 200:
            continue
        break
    if head_only or response.status in (204, 304):
        return response
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size_line = reader.until(b"\r\n")
            if size_line is None:
                raise ValueError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                reader.until(b"\r\n")  # no trailers from this server
                break
            chunks.append(reader.exactly(size) or b"")
            reader.exactly(2)
        response.body = b"".join(chunks)
    elif response.header("content-length") is not None:
        length = int(response.header("content-length"))
        body = reader.exactly(length)
        if body is None:
            raise ValueError(f"connection closed {length - len(reader.buffer)} bytes short of the body")
        response.body = body
    else:
        response.body = reader.rest()
    return response


def parse_responses(data: bytes) -> list[Response]:
    """The responses in bytes already received whole (up to the connection's end)."""
    reader, responses = _Reader(None, float("inf"), data), []
    while (response := read_response(reader)) is not None:
        responses.append(response)
    return responses


def exchange(
    port: int,
    parts: tuple[tuple[float, bytes], ...],
    *,
    responses: int = 1,
    head_only: bool = False,
    timeout: float = 15.0,
    check_closed: float = 0.3,
    host: str = "127.0.0.1",
) -> Exchange:
    """Opens a connection, sends each (delay, bytes) part after its delay, then reads up to `responses`
    responses. Afterwards waits up to `check_closed` seconds to see whether the server closes it."""
    outcome = Exchange()
    started = time.monotonic()
    deadline = started + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = _Reader(sock, deadline)
        try:
            for delay, data in parts:
                if delay:
                    time.sleep(delay)
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server answered and closed early (a 413 before the body): read what it said
            for _ in range(responses):
                response = read_response(reader, head_only=head_only)
                if response is None:
                    break
                outcome.responses.append(response)
            if reader.eof:
                outcome.closed = True
            else:
                reader.deadline = min(deadline, time.monotonic() + check_closed)
                try:
                    outcome.leftover = reader.rest()
                    outcome.closed = True
                except TimeoutError:
                    outcome.leftover = reader.buffer
        except TimeoutError as error:
            outcome.error = f"timeout: {error}"
        except (ConnectionResetError, BrokenPipeError) as error:
            outcome.error = f"reset: {error}"
            outcome.closed = True
        except ValueError as error:
            outcome.error = f"unparseable: {error}"
    outcome.seconds = time.monotonic() - started
    return outcome
