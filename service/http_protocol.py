"""uvicorn's httptools protocol, plus what an ASGI app can't do from inside: guard the connection itself.

- Hold after a refusal. Under overload, clients that retry at once after a 429 turn the event loop into
  a refusal machine: each refusal costs tens of microseconds and the connection is ready again at once,
  so accepted requests starve (measured: good throughput fell to a third). A handler can ask, through its
  ASGI scope (HOLD_READING), that the connection's *next* request not be read for a while: the 429 leaves
  at once, Retry-After is enforced for clients that ignore it, and the kernel keeps the next request at no
  CPU cost. Clients that honour Retry-After never notice.
- Timeouts. A request head must be complete within `header_timeout` of the connection opening or of its
  first byte (slowloris), and its body within `body_timeout` of the head; otherwise the client gets 408
  and the connection closes. Idle keep-alive connections close after uvicorn's `timeout_keep_alive`.
- Protocol errors get the service's JSON error shape (uvicorn answers them in text/plain), after the
  answer to every request that came before them on the connection (pipelining).
- Request heads are measured one at a time. A head over MAX_HEAD_BYTES gets 431 however it arrives (one
  read, many, or pipelined behind other requests; httptools buffers a head whole, so without a bound each
  connection could hold megabytes), and any number of small pipelined requests in one read are all served,
  in order. httptools reports no offsets, so where a head begins inside a read is worked out from where the
  request before it ended: its head's blank line plus its Content-Length body (see _head_size).
- A connection cap (ConnectionLimit, MT_MAX_CONNECTIONS). Connections are counted across the server. A new
  connection beyond the cap is an overflow connection: it has OVERFLOW_HEAD_SECONDS to send its head; a GET
  of /healthz or /readyz is served (then the connection closes), anything else gets a fast 503
  too_many_connections and the connection closes. Beyond the ceiling (what the open-file limit leaves) a new
  connection first closes the oldest connection that has not sent a byte (idle sockets yield to a probe or a
  request), and if there is none, gets that 503 at once, unread: the process must never run out of
  descriptors, because libuv answers EMFILE in accept by resetting waiting connections, probes included.
  Refusals are logged at most once every REFUSAL_LOG_SECONDS, with counts.
- Upgrade requests are served as the HTTP/1.1 they also are. The service speaks neither websocket nor
  h2c, and RFC 9110 lets a server ignore Upgrade; but httptools stops parsing at one, dropping the body
  of, say, `curl --http2 -d @body.json`. So an Upgrade header is renamed before the parser sees it.
- A drain that loses nothing. While the service drains, every response says `Connection: close`, so
  keep-alive clients move elsewhere. When uvicorn then closes idle connections, a connection whose next
  request has begun to arrive is served (and closed after its response) instead of being reset; an
  idle one gets a short grace for a request already on its way.

What this relies on in uvicorn (0.54) and httptools (0.9); tests/test_uvicorn_guard.py checks each, so an
upgrade that changes one fails there, loudly, and not in production:
  uvicorn.protocols.http.httptools_impl
    STATUS_LINE                   dict: status -> b"HTTP/1.1 503 Service Unavailable\\r\\n"
    HttpToolsProtocol             asyncio.Protocol; created per connection with (config, server_state, app_state, _loop)
      connection_made(transport)  sets .transport, .flow; adds the protocol to server_state.connections
      connection_lost(exc)        removes it; tells a running cycle the client is gone
      data_received(data)         feeds .parser; on httptools.HttpParserError calls send_400_response(msg)
      on_message_begin()          new .url (bytes), .headers (list of (name, value)), .scope
      on_headers_complete()       makes .cycle and starts it, or queues it in .pipeline and pauses reading
      on_body(body), on_message_complete()   hand the body to .cycle
      on_response_complete()      the cycle's on_response: starts the next pipelined request or, with none,
                                  arms the idle keep-alive timeout; resumes reading
      send_400_response(msg)      uvicorn's text/plain 400 (replaced here)
      shutdown()                  called by Server.shutdown on every connection: closes an idle one, lets a
                                  running request finish with keep_alive = False
      .cycle, .pipeline (deque), .flow, .transport, .loop, .parser (get_method()), .url, .headers
    RequestResponseCycle          .scope, .keep_alive, .response_started, .response_complete, .disconnected,
                                  .message_event (asyncio.Event); keep_alive False closes after the response
  uvicorn.protocols.http.flow_control.FlowControl   pause_reading(), resume_reading()
  httptools.HttpRequestParser     calls the protocol's on_message_begin (at the first byte that is not CR or
                                  LF), on_url, on_header, on_headers_complete, on_body, on_chunk_header (each
                                  chunk of a chunked body), on_message_complete; needs CRLF line ends, so a
                                  head ends at its first b"\\r\\n\\r\\n"
  (service/__main__.py relies on uvicorn.Config(http=<class>, ws="none", ...), uvicorn.Server.run,
  capture_signals, handle_exit, _captured_signals and should_exit; listed there.)
"""

from __future__ import annotations

import logging
import math
import re
from asyncio import TimerHandle
from collections import OrderedDict
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.schema import ApiError, BadRequest, HeadersTooLarge, RequestTimeout, TooManyConnections

log = logging.getLogger("service")

# Scope key an ASGI handler sets (seconds) on a response after which its connection is not read.
HOLD_READING = "m2m100.hold_reading_seconds"
# How long an idle connection may still send a request once the server has begun to close.
DRAIN_GRACE_SECONDS = 1.0
# The largest request head (request line and headers, up to and with its blank line) read; nginx's default
# allows 4 x 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# After refusing a request mid-way, read and drop what the client still sends for this long before closing:
# closing with unread bytes makes the kernel send a reset, which can destroy the answer before it is read.
LINGER_SECONDS = 2.0
# A connection opened beyond the connection cap must send its request head this soon (or sooner, with a
# shorter header_timeout): it holds a descriptor the cap is there to keep free.
OVERFLOW_HEAD_SECONDS = 1.0
# What an overflow connection may still ask for (with GET): a liveness probe must never kill a busy pod.
PROBE_PATHS = (b"/healthz", b"/readyz")
# Refused connections are logged at most once this often (with how many since the last line).
REFUSAL_LOG_SECONDS = 10.0

_END_OF_HEAD = b"\r\n\r\n"
_REQUEST_LINE = re.compile(rb"[^\r\n]")  # httptools skips empty lines before a request line


def _error_response(error: ApiError) -> bytes:
    body = error.body()
    extra = b"".join(f"{name.lower()}: {value}\r\n".encode("latin-1") for name, value in error.headers.items())
    head = (
        b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" + extra
        + b"connection: close\r\n\r\n"
    )
    return STATUS_LINE[error.status] + head + body


class ConnectionLimit:
    """The server's open connections, counted by the protocol. Beyond `cap` (0: no cap) a new connection is an
    overflow connection, served only for a probe; beyond `ceiling` (0: none) a new one is refused at once, unread.
    service/__main__.py derives both from the open-file limit."""

    def __init__(self, cap: int = 0, ceiling: int = 0) -> None:
        self.cap = cap
        self.ceiling = ceiling
        self.open = 0
        # Connections that have not sent a byte yet, oldest first: at the ceiling, the oldest of them is closed to
        # make room, so idle sockets held open by a client (a slowloris, a pool opened and never used) cannot keep a
        # probe or a real request out. A connection that has sent anything is never closed for another.
        self.silent: OrderedDict[object, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0  # connections refused since the start
        self._unreported = 0  # ... since the last log line
        self._reported_at = -math.inf

    @property
    def over_cap(self) -> bool:
        return 0 < self.cap < self.open

    @property
    def over_ceiling(self) -> bool:
        return 0 < self.ceiling < self.open

    def note_refused(self, now: float) -> None:
        """Counts a refused connection; logs the count at most once every REFUSAL_LOG_SECONDS (a flood of
        connections must not become a flood of log lines)."""
        self.refused += 1
        self._unreported += 1
        if now - self._reported_at >= REFUSAL_LOG_SECONDS:
            log.warning(
                "too many connections: %d open, the cap is %d (MT_MAX_CONNECTIONS); %d refused since the last report "
                "(503, or closed for want of a head), %d since the start; /healthz and /readyz are still served",
                self.open, self.cap, self._unreported, self.refused,
            )
            self._reported_at = now
            self._unreported = 0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Configured by `protocol_class`, which binds the timeouts, the draining flag and the connection limit."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    draining: Callable[[], bool] = staticmethod(lambda: False)
    connection_limit: ConnectionLimit = ConnectionLimit()

    _timer: TimerHandle | None = None
    _timing: str = ""  # what the armed timer waits for: "head", "body" or ""
    _head_pending = False  # a request head has begun and is not complete
    _body_pending = False  # a head is complete, its body is not
    _chunked_body = False  # the current request's body is chunked: the parser hides its size on the wire
    _closing_after_request = False  # the server is shutting down: serve what has begun, then close
    _overflow = False  # opened beyond the connection cap: one probe, then closed
    _silent = True  # no byte received yet (ConnectionLimit.silent)
    _stopped = False  # no further request is read: what still arrives is dropped until the connection closes
    _deferred_error: ApiError | None = None  # a protocol error to send once the requests before it are answered
    # Head accounting (see _head_size): the read being parsed; where in it the next request can begin at the
    # earliest (None: unknown, after a chunked body), counted from the end of the head that began at _after_head
    # when that is not -1 (worked out only if another request begins in the same read); where the current head
    # began in it (0: in an earlier read; None: unknown); the current head's bytes in earlier reads; the last bytes
    # of the read before, where the head's blank line may have begun.
    _chunk = b""
    _mark: int | None = 0
    _after_head = -1
    _head_start: int | None = 0
    _head_bytes = 0
    _tail = b""

    # --- the connection
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        limit = self.connection_limit
        limit.open += 1
        if limit.over_cap:
            self._overflow = True
            if limit.over_ceiling and not self._evict_a_silent_connection():
                # Not a descriptor to spare for waiting on its head: the 503 goes out at once, unread.
                self._refuse_overflow(linger=False)
                return
        limit.silent[self] = None
        self._arm("head")  # a fresh connection owes us a request head

    def _evict_a_silent_connection(self) -> bool:
        """Closes the oldest connection that has not sent a byte, making room for this one; False if none."""
        limit = self.connection_limit
        while limit.silent:
            victim, _ = limit.silent.popitem(last=False)
            transport = getattr(victim, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
                limit.evicted += 1
                limit.note_refused(self.loop.time())
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection_limit.open -= 1
        self.connection_limit.silent.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._silent:
            self._silent = False
            self.connection_limit.silent.pop(self, None)
        if self._stopped:
            return
        if not self._head_pending and not self._body_pending and b"pgrade" in data:
            data = _ignore_upgrade(data)
        # A request can begin at the start of this read, unless it is inside a chunked body.
        self._chunk = data
        self._mark = None if self._body_pending and self._chunked_body else 0
        self._after_head = -1
        if self._head_pending:
            self._head_start = 0
        super().data_received(data)
        self._chunk = b""
        # Timers are set here, once per read, not per parser event: a request that arrives whole (nearly
        # all of them) arms and cancels nothing.
        if self._stopped or self.transport.is_closing():
            return
        if self._head_pending:
            # A head is still incomplete: its bytes in this read are from where it began to the end.
            start = self._head_start
            if start is None:  # it began after a chunked body: after that body's last blank line, at the earliest
                last = data.rfind(_END_OF_HEAD)
                start = last + 4 if last >= 0 else 0
            self._head_bytes += len(data) - start
            self._head_start = 0
            self._tail = data[-3:]
            if self._head_bytes > MAX_HEAD_BYTES:
                self._stop_with(HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes"))
            elif self._timing != "head":
                self._arm("head")
        elif self._body_pending:
            if self._timing != "body":
                self._arm("body")
        elif self.cycle is None or self.cycle.response_complete:
            # Idle, yet bytes came (blank lines before a request line, which the parser skips): they start
            # the head clock, or a stream of empty lines would hold the connection open for good.
            if self._timing != "head":
                self._arm("head")
        elif self._timing:
            self._disarm()

    # --- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._stopped:
            return
        self._head_pending = True
        self._head_bytes = 0
        self._chunked_body = False
        start, chunk = self._mark, self._chunk
        if start is not None and self._after_head >= 0:
            start += _end_of_head(chunk, self._after_head)  # a request before this one in the same read
        self._after_head = -1
        if start is not None and start < len(chunk) and chunk[start] in b"\r\n":
            found = _REQUEST_LINE.search(chunk, start)  # empty lines before the request line are no part of it
            start = found.start() if found else len(chunk)
        self._head_start = start

    def on_headers_complete(self) -> None:
        if self._stopped:
            return
        self._head_pending = False
        start = self._head_start
        if start is not None and not self._head_bytes and len(self._chunk) - start <= MAX_HEAD_BYTES:
            # Nearly every head: it began in this read, and what is left of the read is within the limit. Where
            # it ends is worked out only if another request begins in this read (in on_message_begin).
            self._after_head = start
            self._mark = 0
        elif self._head_size() > MAX_HEAD_BYTES:
            self._stop_with(HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes"))
            return
        if self._overflow and not self._serves_overflow_request():
            return
        self._body_pending = True
        super().on_headers_complete()
        if (self._overflow or self._closing_after_request or self.draining()) and self.cycle is not None:
            self.cycle.keep_alive = False  # uvicorn then answers with Connection: close, and closes

    def on_body(self, body: bytes) -> None:
        if self._stopped:
            return
        if self._mark is not None:
            self._mark += len(body)  # a Content-Length body: as many bytes on the wire as in the body
        super().on_body(body)

    def on_chunk_header(self) -> None:
        """httptools calls this for each chunk of a chunked body, whose framing hides its size on the wire."""
        self._chunked_body = True
        self._mark = None

    def on_message_complete(self) -> None:
        if self._stopped:
            return
        self._body_pending = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        last = not self.pipeline
        super().on_response_complete()  # starts the next pipelined request, or arms uvicorn's idle keep-alive timeout
        if self._deferred_error is not None:
            if last:  # every request before the error is answered
                self._refuse(self._deferred_error)
            return
        cycle = self.cycle
        hold = cycle.scope.get(HOLD_READING) if cycle is not None else None
        if isinstance(hold, float) and hold > 0 and not self.transport.is_closing():
            self.flow.pause_reading()
            self.loop.call_later(hold, self._resume_reading)

    def _resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.flow.resume_reading()

    # --- head sizes
    def _head_size(self) -> int:
        """The bytes of the head just completed, from its request line to its blank line; sets where the next
        request can begin in this read (self._mark: after this head, then after its body, in on_body).

        httptools reports no offsets. A head begins where the request before it in the same read ended (the end
        of that one's head, at its first blank line, plus its Content-Length body, counted in on_body), or at the
        start of a read, or, after a chunked body whose framing the parser hides, after the read's last blank
        line at the earliest (a head has none until it is complete). So what is counted is exact, except after
        a chunked body in the same read, where it is at worst more than the head (never less) for a head still
        incomplete, and what the parser read of it (all but the spaces around header values) for one complete."""
        chunk, start = self._chunk, self._head_start
        if start is None:
            # It began after a chunked body in this read, at an offset the parser hides: count what the parser
            # read of it (all but the spaces around header values), and measure the next head the same way.
            return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if start == 0 and self._head_bytes:
            # It began in an earlier read, and its blank line may straddle the two.
            straddle = (self._tail + chunk[:3]).find(_END_OF_HEAD)
            end = straddle + 4 - len(self._tail) if straddle >= 0 else _end_of_head(chunk, 0)
        else:
            end = _end_of_head(chunk, start)
        self._mark = end
        return self._head_bytes + end - start

    # --- the connection cap
    def _serves_overflow_request(self) -> bool:
        """Whether the request whose head just arrived on an overflow connection is served: a probe, if it is the
        connection's first request. Anything else is refused, or (behind a probe) never read."""
        if self.cycle is not None:
            self._stopped = True  # the connection closes after the first request's answer
            self.flow.pause_reading()
            return False
        if self.parser.get_method() == b"GET" and self.url.partition(b"?")[0] in PROBE_PATHS:
            return True
        self._refuse_overflow()
        return False

    def _refuse_overflow(self, *, linger: bool = True) -> None:
        self.connection_limit.note_refused(self.loop.time())
        error = TooManyConnections("the service has too many open connections; retry shortly", headers={"Retry-After": "1"})
        self._refuse(error, linger=linger)

    # --- timeouts
    def _arm(self, waiting_for: str) -> None:
        self._disarm()
        self._timing = waiting_for
        if waiting_for == "head":
            seconds = min(self.header_timeout, OVERFLOW_HEAD_SECONDS) if self._overflow else self.header_timeout
            self._timer = self.loop.call_later(seconds, self._timed_out, "no complete request head")
        else:
            self._timer = self.loop.call_later(self.body_timeout, self._timed_out, "the request body did not arrive in time")

    def _disarm(self) -> None:
        self._timing = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, reason: str) -> None:
        self._timer = None
        self._timing = ""
        if self.transport.is_closing():
            return
        if self._head_pending and self.cycle is not None and not self.cycle.response_complete:
            # Pipelined requests before this head are still being answered, and uvicorn does not read while
            # they are: the client is not the one late. The clock starts again.
            self._arm("head")
            return
        if self._overflow:
            self.connection_limit.note_refused(self.loop.time())
        # A fresh connection or a new request gets its 408; a request already answered (a 429 sent before
        # its body was read) gets no second answer.
        answered = self._body_pending and self.cycle is not None and self.cycle.response_started
        if (self._head_pending or self._body_pending) and not answered:
            self.transport.write(_error_response(RequestTimeout(f"request timed out: {reason}")))
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may be waiting for the body: tell it the client is gone.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # --- errors in the JSON shape
    def send_400_response(self, msg: str) -> None:
        if self._body_pending and self.cycle is not None and not self.cycle.response_complete:
            # The bad bytes are inside this request's own body (say, broken chunked framing): it can never be
            # complete. The app hears the client is gone; the client gets its 400 now, not a 408 later.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self._refuse(BadRequest(msg))
            return
        self._stop_with(BadRequest(msg))

    def _stop_with(self, error: ApiError) -> None:
        """Reads no further request; `error` is answered once every request before it is, and the connection closes."""
        if self.cycle is not None and not self.cycle.response_complete:
            # Requests before the bad bytes are still being answered: their answers go first.
            self._disarm()
            self._stopped = True
            self._head_pending = self._body_pending = False
            self._deferred_error = error
            self.flow.pause_reading()
        else:
            self._refuse(error)

    def _refuse(self, error: ApiError, *, linger: bool = True) -> None:
        """Answers `error` and closes: at once if the client has sent everything (or `linger` is off), else after a
        lingering read."""
        self._disarm()
        self._stopped = True
        self._head_pending = self._body_pending = False
        if self.transport.is_closing():
            return
        self.transport.write(_error_response(error))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end of stream: the client reads both
            self.flow.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    # --- shutdown
    def shutdown(self) -> None:
        """uvicorn calls this on every connection once it stops accepting."""
        self._closing_after_request = True
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # a request in flight: answered, then closed
        elif not self._head_pending:
            # Idle: a request may be on its way. Close after a short grace unless one begins.
            self.loop.call_later(DRAIN_GRACE_SECONDS, self._close_if_idle)

    def _close_if_idle(self) -> None:
        idle = not self._head_pending and not self._body_pending and (self.cycle is None or self.cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()


def protocol_class(
    *,
    header_timeout: float,
    body_timeout: float,
    draining: Callable[[], bool],
    connection_limit: ConnectionLimit | None = None,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol uvicorn should use (Config(http=...)), bound to these settings; every connection it makes
    counts in `connection_limit` (a new one, with no cap, when None)."""
    return type(
        "ServiceHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "draining": staticmethod(draining),
            "connection_limit": connection_limit if connection_limit is not None else ConnectionLimit(),
        },
    )


def _end_of_head(chunk: bytes, start: int) -> int:
    """The offset just past the first blank line at or after `start` (the end of a head httptools completed)."""
    found = chunk.find(_END_OF_HEAD, start)
    return found + 4 if found >= 0 else len(chunk)


def _ignore_upgrade(data: bytes) -> bytes:
    """The chunk with any Upgrade header of its first request head renamed, so the parser reads the request
    (and its body) as plain HTTP/1.1."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    lines = head.split(b"\r\n")
    renamed = [b"X-Ignored-" + line if line[:8].lower() == b"upgrade:" else line for line in lines]
    if renamed == lines:
        return data
    return b"\r\n".join(renamed) + data[len(head):]
