"""Every uvicorn and httptools name that service/http_protocol.py and service/__main__.py rely on still exists and
behaves as they assume (the lists are in those modules' docstrings). An upgrade that changes one fails here, with the
name in the test, instead of as a silent change in timeouts, limits, pipelining or drains in production."""

from __future__ import annotations

import asyncio
import collections
import inspect
import signal
from collections.abc import Iterator

import httptools
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import HANDLED_SIGNALS, ServerState

from service.__main__ import DRAIN_SIGNALS, GracefulServer
from service.http_protocol import protocol_class
from tests.helpers import until


class FakeTransport(asyncio.Transport):
    """What uvicorn's protocol calls on a transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self.eof = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


class GatedApp:
    """An ASGI app that answers 200 "ok" to each request once `gate` is set; records the scopes it saw."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def new_protocol(app, protocol: type[HttpToolsProtocol] = HttpToolsProtocol, **config) -> tuple[HttpToolsProtocol, FakeTransport]:
    """A connected protocol of `protocol` around `app`, on the running loop, as uvicorn's Server makes one."""
    options = {"lifespan": "off", "ws": "none", "timeout_keep_alive": 5, **config}
    instance = protocol(config=uvicorn.Config(app, **options), server_state=ServerState(), app_state={},
                        _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    instance.connection_made(transport)
    return instance, transport


GET = b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"


# --- uvicorn.protocols.http.httptools_impl


def test_status_lines_are_whole_http_1_1_status_lines():
    assert STATUS_LINE[400] == b"HTTP/1.1 400 Bad Request\r\n"
    assert STATUS_LINE[408] == b"HTTP/1.1 408 Request Timeout\r\n"
    assert STATUS_LINE[431] == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert STATUS_LINE[503] == b"HTTP/1.1 503 Service Unavailable\r\n"


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("__init__", ["self", "config", "server_state", "app_state", "_loop"]),
        ("connection_made", ["self", "transport"]),
        ("connection_lost", ["self", "exc"]),
        ("data_received", ["self", "data"]),
        ("on_message_begin", ["self"]),
        ("on_headers_complete", ["self"]),
        ("on_body", ["self", "body"]),
        ("on_message_complete", ["self"]),
        ("on_response_complete", ["self"]),
        ("send_400_response", ["self", "msg"]),
        ("shutdown", ["self"]),
    ],
)
def test_the_methods_the_service_overrides_keep_their_signatures(name, parameters):
    assert list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters) == parameters


def test_uvicorn_defines_no_chunk_callback_the_service_would_shadow():
    assert not hasattr(HttpToolsProtocol, "on_chunk_header")


async def test_a_request_makes_a_cycle_with_the_attributes_the_service_reads():
    app = GatedApp()
    protocol, transport = new_protocol(app)
    assert protocol.transport is transport and isinstance(protocol.flow, FlowControl)
    assert protocol.loop is asyncio.get_running_loop()
    assert protocol.cycle is None and isinstance(protocol.pipeline, collections.deque) and not protocol.pipeline
    assert protocol in protocol.server_state.connections

    protocol.data_received(GET)
    cycle = protocol.cycle
    assert isinstance(cycle, RequestResponseCycle)
    assert (protocol.url, protocol.headers, protocol.parser.get_method()) == (b"/a?x=1", [(b"host", b"t")], b"GET")
    assert (cycle.keep_alive, cycle.response_started, cycle.response_complete, cycle.disconnected) == (True, False, False, False)
    assert isinstance(cycle.message_event, asyncio.Event)
    await until(lambda: app.scopes, what="the app called")
    assert app.scopes[0] is cycle.scope  # what a handler puts in its scope (HOLD_READING) the protocol reads there
    app.gate.set()
    await until(lambda: cycle.response_complete, what="the response")
    assert cycle.response_started and bytes(transport.written).startswith(STATUS_LINE[200])


async def test_on_response_complete_arms_the_idle_keep_alive_timeout():
    app = GatedApp()
    app.gate.set()
    protocol, transport = new_protocol(app, timeout_keep_alive=0.05)
    protocol.data_received(GET)
    await until(lambda: protocol.cycle.response_complete, what="the response")
    assert not transport.closed
    await until(lambda: transport.closed, seconds=2, what="the keep-alive timeout closing the idle connection")


async def test_keep_alive_false_closes_the_connection_after_its_response():
    app = GatedApp()
    protocol, transport = new_protocol(app)
    protocol.data_received(GET)
    protocol.cycle.keep_alive = False
    app.gate.set()
    await until(lambda: transport.closed, what="the close after the response")
    assert b"connection: close\r\n" in bytes(transport.written)


async def test_a_pipelined_request_is_queued_with_reading_paused_and_started_by_on_response_complete():
    app = GatedApp()
    protocol, transport = new_protocol(app)
    protocol.data_received(GET + b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(protocol.pipeline) == 1 and protocol.flow.read_paused and not transport.reading
    app.gate.set()
    await until(lambda: len(app.scopes) == 2 and protocol.cycle.response_complete, what="both answered")
    assert not protocol.pipeline and [scope["path"] for scope in app.scopes] == ["/a", "/b"]
    assert not protocol.flow.read_paused  # on_response_complete resumed reading


async def test_a_parser_error_calls_send_400_response_with_a_message():
    messages: list[str] = []

    class Recording(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            messages.append(msg)

    protocol, _ = new_protocol(GatedApp(), Recording)
    protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    assert len(messages) == 1 and isinstance(messages[0], str)


async def test_shutdown_closes_an_idle_connection_and_lets_a_running_request_finish_without_keep_alive():
    idle, idle_transport = new_protocol(GatedApp())
    idle.shutdown()
    assert idle_transport.closed
    app = GatedApp()
    busy, busy_transport = new_protocol(app)
    busy.data_received(GET)
    busy.shutdown()
    assert busy.cycle.keep_alive is False and not busy_transport.closed
    app.gate.set()
    await until(lambda: busy_transport.closed, what="the close after the answer")


async def test_connection_lost_forgets_the_connection_and_tells_a_running_request():
    protocol, _ = new_protocol(GatedApp())
    protocol.data_received(GET)
    protocol.connection_lost(None)
    assert protocol not in protocol.server_state.connections
    assert protocol.cycle.disconnected and protocol.cycle.message_event.is_set()


async def test_flow_control_pauses_and_resumes_the_transport():
    protocol, transport = new_protocol(GatedApp())
    protocol.flow.pause_reading()
    assert not transport.reading and protocol.flow.read_paused
    protocol.flow.resume_reading()
    assert transport.reading and not protocol.flow.read_paused


async def test_the_parser_calls_the_service_protocols_chunk_callback():
    # httptools looks its callbacks up on the object uvicorn hands it: the subclass's on_chunk_header is called.
    cls = protocol_class(header_timeout=10, body_timeout=10, draining=lambda: False)
    protocol, _ = new_protocol(GatedApp(), cls)
    protocol.data_received(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert protocol._chunked_body and protocol._mark is None


# --- httptools


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_message_begin(self) -> None:
        self.events.append("begin")

    def on_url(self, url: bytes) -> None:
        self.events.append(("url", url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.events.append(("header", name, value))

    def on_headers_complete(self) -> None:
        self.events.append("headers complete")

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", body))

    def on_chunk_header(self) -> None:
        self.events.append("chunk")

    def on_message_complete(self) -> None:
        self.events.append("complete")


def test_httptools_begins_a_message_at_its_first_byte_that_is_not_an_empty_line():
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(b"\r\n\r\n")
    assert recorder.events == []
    parser.feed_data(b"G")
    assert recorder.events == ["begin"]
    parser.feed_data(b"ET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert recorder.events == ["begin", ("url", b"/x"), ("header", b"Host", b"t"), "headers complete", "complete"]


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\nHost: t\n\n", b"GET / HTTP/1.1\r\nHost: t\n\n"])
def test_httptools_needs_crlf_so_a_head_ends_at_its_first_blank_line(head):
    with pytest.raises(httptools.HttpParserError):
        httptools.HttpRequestParser(Recorder()).feed_data(head)


def test_httptools_calls_on_chunk_header_for_each_chunk_and_on_body_with_the_body_bytes():
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert recorder.events[-4:] == ["chunk", ("body", b"hello"), "chunk", "complete"]
    recorder.events.clear()
    parser.feed_data(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert recorder.events[-2:] == [("body", b"abc"), "complete"]


# --- uvicorn.Config and uvicorn.Server (service/__main__.py)


def test_config_takes_the_arguments_the_service_passes():
    parameters = inspect.signature(uvicorn.Config).parameters
    for name in ("app", "host", "port", "log_config", "access_log", "timeout_graceful_shutdown", "timeout_keep_alive",
                 "proxy_headers", "lifespan", "loop", "http", "ws", "log_level"):
        assert name in parameters, name
    cls = protocol_class(header_timeout=10, body_timeout=10, draining=lambda: False)
    config = uvicorn.Config(GatedApp(), http=cls, ws="none", loop="uvloop", lifespan="on")
    config.load()
    assert config.http_protocol_class is cls and config.ws_protocol_class is None
    # proxy_headers=False leaves the peer in scope["client"]: service/identity.py reads X-Forwarded-For itself.
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    assert isinstance(config.loaded_app, ProxyHeadersMiddleware)  # uvicorn's default would rewrite it
    plain = uvicorn.Config(GatedApp(), http=cls, ws="none", loop="uvloop", lifespan="on", proxy_headers=False)
    plain.load()
    assert not isinstance(plain.loaded_app, ProxyHeadersMiddleware)


def test_uvicorn_handles_sigint_and_sigterm_but_not_sighup():
    assert signal.SIGINT in HANDLED_SIGNALS and signal.SIGTERM in HANDLED_SIGNALS
    assert not set(DRAIN_SIGNALS) & set(HANDLED_SIGNALS)  # if uvicorn takes SIGHUP over, look at what it does


@pytest.fixture
def recorded_signals() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP handled by a recorder for the test (so a re-raised one is seen, not fatal)."""
    received: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in watched}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_handle_exit_asks_to_exit_and_records_the_signal_in_a_list():
    server = uvicorn.Server(uvicorn.Config(GatedApp()))
    assert server._captured_signals == [] and isinstance(server._captured_signals, list)
    assert server.should_exit is False and server.started is False
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit is True and server._captured_signals == [signal.SIGTERM]
    assert callable(server.run)


def test_capture_signals_installs_handle_exit_then_restores_the_handlers_and_re_raises(recorded_signals):
    server = uvicorn.Server(uvicorn.Config(GatedApp()))
    before = signal.getsignal(signal.SIGTERM)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        assert signal.getsignal(signal.SIGINT) == server.handle_exit
        server.handle_exit(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) is before
    assert recorded_signals == [signal.SIGTERM]  # why GracefulServer clears _captured_signals after a clean drain


def test_the_service_drains_on_sighup_exits_cleanly_and_restores_the_handlers(recorded_signals):
    drains: list[bool] = []
    server = GracefulServer(uvicorn.Config(GatedApp()), on_draining=lambda: drains.append(True), delay=0)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    with server.capture_signals():
        assert signal.getsignal(signal.SIGHUP) == server.handle_exit
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        server.handle_exit(signal.SIGHUP, None)
        assert server.should_exit and drains == [True]
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert recorded_signals == []  # nothing re-raised: a drained stop exits 0


async def test_server_shutdown_calls_shutdown_on_every_connection():
    shut: list[str] = []
    server = uvicorn.Server(uvicorn.Config(GatedApp(), timeout_graceful_shutdown=2))

    class Connection:
        def __init__(self, name: str) -> None:
            self.name = name

        def shutdown(self) -> None:
            shut.append(self.name)
            server.server_state.connections.discard(self)  # type: ignore[arg-type]

    class Lifespan:
        async def shutdown(self) -> None:
            shut.append("lifespan")

    server.servers = []
    server.lifespan = Lifespan()  # type: ignore[assignment]
    server.server_state.connections.update({Connection("a"), Connection("b")})  # type: ignore[arg-type]
    await server.shutdown()
    assert sorted(shut[:2]) == ["a", "b"] and shut[2:] == ["lifespan"]
