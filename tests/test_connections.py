"""Connections as a hostile client (or a busy proxy) can spend them: the connection cap (MT_MAX_CONNECTIONS) under
the open-file limit, probes served beyond it, refusals logged without flooding; and SIGHUP, which drains like
SIGTERM instead of dropping the request in flight."""

from __future__ import annotations

import json
import logging
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest.toy_task import expected_translation
from service.__main__ import connection_limit
from service.http_protocol import OVERFLOW_HEAD_SECONDS, ConnectionLimit
from tests.helpers import ROOT, ServerProcess, TinyServer, metric_value, read_responses, wait_for

TOO_MANY = {"error": {"code": "too_many_connections", "message": "the service has too many open connections; retry shortly"}}
TOY_BODY = json.dumps({"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "alpha bravo"}]}}).encode()
TRANSLATION = (f"POST /translation HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(TOY_BODY)}\r\n\r\n"
               .encode() + TOY_BODY)


async def probe_app(scope, receive, send):
    """Answers every GET with {"path": PATH}, as the service answers its probes."""
    if scope["type"] != "http":
        return
    body = json.dumps({"path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def ask(connection: socket.socket, data: bytes) -> tuple[int, dict[str, str], bytes]:
    connection.sendall(data)
    [response], _ = read_responses(connection, 1, timeout=10)
    return response


def closed_by_server(connection: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server closes the connection within `timeout` seconds (anything unread before is skipped)."""
    connection.settimeout(timeout)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return False
    return True


# --- the cap, on the protocol alone


def test_beyond_the_cap_a_probe_is_served_and_closed_and_anything_else_gets_503():
    limit = ConnectionLimit(cap=2, ceiling=10)
    with TinyServer(probe_app, connection_limit=limit) as server:
        normal = [server.connect(), server.connect()]
        wait_for(lambda: limit.open == 2, timeout=5, what="two connections counted")
        for path in ("/healthz", "/readyz"):
            with server.connect() as overflow:
                status, headers, body = ask(overflow, get(path))
                assert (status, json.loads(body), headers["connection"]) == (200, {"path": path}, "close")
                assert closed_by_server(overflow)
        for data in (TRANSLATION, get("/languages"), get("/healthz/x"), b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"):
            with server.connect() as overflow:
                status, headers, body = ask(overflow, data)
                assert (status, json.loads(body)) == (503, TOO_MANY)
                assert (headers["connection"], headers["retry-after"], headers["content-type"]) == ("close", "1", "application/json")
                assert closed_by_server(overflow)
        # The connections under the cap are served as ever, and kept alive.
        status, headers, _ = ask(normal[0], get("/languages"))
        assert status == 200 and "connection" not in headers
        assert limit.refused == 4
        for connection in normal:
            connection.close()
        wait_for(lambda: limit.open == 0, timeout=5, what="every connection uncounted")
        # Below the cap again: a new connection is an ordinary one.
        with server.connect() as again:
            status, headers, _ = ask(again, TRANSLATION)
            assert status == 200 and "connection" not in headers
    assert limit.open == 0


def test_an_overflow_connection_that_sends_nothing_is_closed_after_about_a_second():
    limit = ConnectionLimit(cap=1, ceiling=10)
    with TinyServer(probe_app, connection_limit=limit) as server, server.connect(), server.connect() as overflow:
        started = time.monotonic()
        overflow.settimeout(5)
        assert overflow.recv(1) == b""  # closed, silently: nothing was asked
        waited = time.monotonic() - started
    assert OVERFLOW_HEAD_SECONDS - 0.2 <= waited < OVERFLOW_HEAD_SECONDS + 2
    assert limit.refused == 1


def test_a_request_pipelined_behind_a_probe_on_an_overflow_connection_is_not_served():
    limit = ConnectionLimit(cap=1, ceiling=10)
    with TinyServer(probe_app, connection_limit=limit) as server, server.connect(), server.connect() as overflow:
        overflow.sendall(get("/healthz") + TRANSLATION)
        responses, rest = read_responses(overflow, 2, timeout=5)
    assert [(status, json.loads(body)) for status, _, body in responses] == [(200, {"path": "/healthz"})] and rest == b""


def test_beyond_the_ceiling_a_new_connection_gets_503_at_once_unread():
    # The two connections before it have begun a request: none is silent, so none makes room.
    limit = ConnectionLimit(cap=1, ceiling=2)
    with TinyServer(probe_app, connection_limit=limit) as server, server.connect() as first, server.connect() as second:
        for connection in (first, second):
            connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: limit.open == 2 and not limit.silent, timeout=5, what="two busy connections counted")
        with server.connect() as third:
            started = time.monotonic()
            responses, rest = read_responses(third, 1, timeout=5)
            closed = closed_by_server(third)
            waited = time.monotonic() - started
    assert [(status, json.loads(body)) for status, _, body in responses] == [(503, TOO_MANY)] and closed
    assert waited < 1  # no wait for a head: that would hold a descriptor the process may not have


def test_beyond_the_ceiling_the_oldest_silent_connection_makes_room_for_a_probe():
    limit = ConnectionLimit(cap=1, ceiling=2)
    with TinyServer(probe_app, connection_limit=limit) as server, server.connect() as silent, server.connect() as busy:
        busy.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: limit.open == 2 and len(limit.silent) == 1, timeout=5, what="one silent, one busy connection")
        with server.connect() as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            responses, _ = read_responses(probe, 1, timeout=5)
        assert [(status, json.loads(body)) for status, _, body in responses] == [(200, {"path": "/healthz"})]
        assert closed_by_server(silent) and limit.evicted == 1  # the silent one was closed, unanswered
        assert not closed_by_server(busy, timeout=0.2)  # a connection that has sent something is never closed for another


def test_refused_connections_are_logged_at_most_once_every_10_seconds(caplog):
    limit = ConnectionLimit(cap=5, ceiling=9)
    limit.open = 7
    with caplog.at_level(logging.WARNING, logger="service"):
        for second in range(25):
            limit.note_refused(1000.0 + second)
    lines = [record.getMessage() for record in caplog.records if record.name == "service"]
    assert lines == [
        "too many connections: 7 open, the cap is 5 (MT_MAX_CONNECTIONS); 1 refused since the last report "
        "(503, or closed for want of a head), 1 since the start; /healthz and /readyz are still served",
        "too many connections: 7 open, the cap is 5 (MT_MAX_CONNECTIONS); 10 refused since the last report "
        "(503, or closed for want of a head), 11 since the start; /healthz and /readyz are still served",
        "too many connections: 7 open, the cap is 5 (MT_MAX_CONNECTIONS); 10 refused since the last report "
        "(503, or closed for want of a head), 21 since the start; /healthz and /readyz are still served",
    ]


def test_a_connection_flood_beyond_the_cap_logs_one_line(caplog):
    limit = ConnectionLimit(cap=1, ceiling=0)
    with caplog.at_level(logging.WARNING, logger="service"), TinyServer(probe_app, connection_limit=limit) as server:
        with server.connect():
            for _ in range(20):
                with server.connect() as overflow:
                    assert ask(overflow, TRANSLATION)[0] == 503
    assert limit.refused == 20
    assert len([record for record in caplog.records if "too many connections" in record.getMessage()]) == 1


# --- the cap from the open-file limit (service/__main__.py)


@pytest.mark.parametrize(
    "configured, open_files, cap, ceiling",
    [
        (0, 1024, 896, 960),  # the limit less 128, and half of those 128 for overflow connections waiting for a head
        (0, 1 << 20, (1 << 20) - 128, (1 << 20) - 64),
        (0, 256, 224, 240),  # a small limit keeps an eighth
        (100, 1024, 100, 960),  # a lower cap, as configured
        (896, 1024, 896, 960),
    ],
)
def test_the_cap_is_the_configured_one_or_the_open_file_limit_less_a_reserve(configured, open_files, cap, ceiling):
    limit, warning = connection_limit(configured, open_files)
    assert (limit.cap, limit.ceiling, warning) == (cap, ceiling, None)


def test_a_configured_cap_above_what_the_open_file_limit_allows_is_lowered_with_a_warning():
    limit, warning = connection_limit(5000, 1024)
    assert (limit.cap, limit.ceiling) == (896, 960)
    assert warning == ("MT_MAX_CONNECTIONS=5000 is more than the open-file limit of 1024 allows; connections are capped "
                       "at 896 (raise the hard limit, ulimit -Hn, to allow more)")


def limited(command: list[str], soft: int, hard: int) -> list[str]:
    """`command` run with these open-file limits, as a container might start it."""
    return ["bash", "-c", f'ulimit -Sn {soft} && ulimit -Hn {hard} && exec "$@"', "bash", *command]


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit():
    code = "from service.__main__ import raise_open_file_limit; print(raise_open_file_limit())"
    result = subprocess.run(limited([sys.executable, "-c", code], 256, 4096), cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "(256, 4096)"


# --- the service as a process


@dataclass
class LimitedService(ServerProcess):
    """The service started with these open-file limits (soft, hard)."""

    soft: int = 1024
    hard: int = 1024

    @property
    def command(self) -> list[str]:
        return limited(super().command, self.soft, self.hard)


def open_files_limit(pid: int) -> tuple[int, int]:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def service_port(service: ServerProcess) -> int:
    return int(service.url.rsplit(":", 1)[1])


@pytest.mark.slow
def test_the_service_raises_its_open_file_limit_and_lowers_a_cap_above_it(toy_model_dir, tmp_path):
    service = LimitedService.service(toy_model_dir, {"MT_MAX_CONNECTIONS": "5000"}, tmp_path / "service.log")
    service.soft, service.hard = 512, 2048
    with service:
        assert open_files_limit(service.process.pid) == (2048, 2048)
        log = service.log()
    assert "open files: limit 2048 (raised from 512, hard limit 2048); connections capped at 1920" in log
    assert "MT_MAX_CONNECTIONS=5000 is more than the open-file limit of 2048 allows; connections are capped at 1920" in log


@pytest.mark.slow
def test_the_service_serves_probes_beyond_its_cap_and_refuses_the_rest(toy_model_dir, start_service):
    service = start_service(toy_model_dir, env={"MT_MAX_CONNECTIONS": "2"})
    port = service_port(service)
    connect = lambda: socket.create_connection(("127.0.0.1", port), timeout=10)  # noqa: E731
    with connect() as first, connect() as second:
        for path, expected in (("/healthz", {"status": "alive"}), ("/readyz", {"status": "ready"})):
            with connect() as probe:
                status, headers, body = ask(probe, get(path))
                assert (status, json.loads(body), headers["connection"]) == (200, expected, "close")
        with connect() as refused:
            status, headers, body = ask(refused, TRANSLATION)
            assert (status, json.loads(body), headers["connection"], headers["retry-after"]) == (503, TOO_MANY, "close", "1")
        # The two connections under the cap translate as ever.
        for connection in (first, second):
            status, _, body = ask(connection, TRANSLATION)
            assert (status, json.loads(body)["result"]) == (200, [{"id": "1", "text": expected_translation("alpha bravo", "fr")}])
    # Closed: a new connection is served again.
    wait_for(lambda: translate_status(port) == 200, timeout=10, what="translations served once the connections closed")
    assert "too many connections: 3 open, the cap is 2 (MT_MAX_CONNECTIONS); 1 refused since the last report" in service.log()


def translate_status(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        return ask(connection, TRANSLATION)[0]


@pytest.fixture
def many_files():
    """This process may open a few thousand sockets (its soft limit raised towards its hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1500:
        pytest.skip(f"the test needs 1,500 descriptors, the hard limit is {hard}")
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_healthz_answers_beside_1100_idle_connections_under_a_1024_descriptor_limit(toy_model_dir, tmp_path, many_files):
    # Idle connections stay open for a minute (the head timeout), beyond the test.
    service = LimitedService.service(toy_model_dir, {"MT_HEADER_TIMEOUT_SECONDS": "60"}, tmp_path / "service.log")
    with service:
        port = service_port(service)
        assert open_files_limit(service.process.pid) == (1024, 1024)
        idle: list[socket.socket] = []
        try:
            for _ in range(1100):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            # At once, while all of them are open: past the ceiling (960) each new connection first closes the oldest
            # silent one, so a probe is served (and closed after), and anything else gets 503.
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                    status, headers, body = ask(probe, get("/healthz"))
                latencies.append(time.perf_counter() - started)
                assert (status, json.loads(body), headers["connection"]) == (200, {"status": "alive"}, "close")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                assert ask(probe, get("/readyz"))[0] == 200
            with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
                status, _, body = ask(refused, TRANSLATION)
                assert (status, json.loads(body)) == (503, TOO_MANY)
            # Beyond the cap (1024 less 128) connections are closed once their second for a head is over. Nothing was
            # reset: each idle connection is open (within the cap), or was closed after a 503 or nothing.
            wait_for(lambda: len(readable(idle)) >= 1100 - 896, timeout=10, what="the connections beyond the cap closed")
            time.sleep(1.5)  # the last overflow connections' second for a head
            outcomes = [outcome(connection) for connection in idle]
            assert 0 < outcomes.count("open") <= 896
            assert outcomes.count("open") + outcomes.count("503") + outcomes.count("closed") == 1100 and "reset" not in outcomes
        finally:
            for connection in idle:
                connection.close()
        wait_for(lambda: translate_status(port) == 200, timeout=10, what="translations once the idle connections closed")
        log = service.log()
    assert "Too many open files" not in log and "EMFILE" not in log
    assert "open files: limit 1024 (not raised, hard limit 1024); connections capped at 896" in log
    assert len(re.findall("too many connections: ", log)) == 1  # one line for the whole flood
    print(f"/healthz beside 1,100 idle connections (1,024 descriptors): median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)}; idle: {outcomes.count('open')} open, "
          f"{outcomes.count('503')} refused with 503 at once, {outcomes.count('closed')} closed after their head time")


def readable(connections: list[socket.socket]) -> list[socket.socket]:
    """The connections with something to read (data or an end of stream) now."""
    poller = select.poll()
    by_fd = {connection.fileno(): connection for connection in connections}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


def outcome(connection: socket.socket) -> str:
    """'open' (nothing to read), '503' (a 503 then the end), 'closed' (the end, nothing before) or 'reset'."""
    connection.setblocking(False)
    data = b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except BlockingIOError:
        return "open" if not data else "unfinished"
    except ConnectionResetError:
        return "reset"
    return "503" if data.startswith(b"HTTP/1.1 503 ") else ("closed" if not data else "other")


# --- SIGHUP


@pytest.mark.slow
def test_sighup_drains_like_sigterm_the_request_in_flight_is_answered_and_the_exit_code_is_0(toy_model_dir, start_service):
    service = start_service(toy_model_dir)
    with socket.create_connection(("127.0.0.1", service_port(service)), timeout=10) as connection:
        connection.sendall(TRANSLATION[:-10])  # a request in flight, its body still arriving
        wait_for(lambda: pending_bodies(service.url) == 1, timeout=10, what="the request in flight")
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "Shutting down" in service.log(), timeout=10, what="the drain begun")
        assert service.process.poll() is None  # not killed (SIGHUP's default: exit 129)
        connection.sendall(TRANSLATION[-10:])
        status, headers, body = read_responses(connection, 1, timeout=10)[0][0]
    assert (status, json.loads(body)["result"], headers["connection"]) == (200, [{"id": "1", "text": "bravo alpha"}], "close")
    assert service.process.wait(30) == 0
    assert "stopped: every accepted request was answered" in service.log()


def pending_bodies(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), "translation_pending_bodies")
