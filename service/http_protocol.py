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
  answer to any request that came before them on the connection; a request head over MAX_HEAD_BYTES
  gets 431 (httptools buffers a head whole, so without a bound each connection could hold megabytes).
- Upgrade requests are served as the HTTP/1.1 they also are. The service speaks neither websocket nor
  h2c, and RFC 9110 lets a server ignore Upgrade; but httptools stops parsing at one, dropping the body
  of, say, `curl --http2 -d @body.json`. So an Upgrade header is renamed before the parser sees it.
- A drain that loses nothing. While the service drains, every response says `Connection: close`, so
  keep-alive clients move elsewhere. When uvicorn then closes idle connections, a connection whose next
  request has begun to arrive is served (and closed after its response) instead of being reset; an
  idle one gets a short grace for a request already on its way.
"""

from __future__ import annotations

from asyncio import TimerHandle
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.schema import ApiError, BadRequest, HeadersTooLarge, RequestTimeout

# Scope key an ASGI handler sets (seconds) on a response after which its connection is not read.
HOLD_READING = "m2m100.hold_reading_seconds"
# How long an idle connection may still send a request once the server has begun to close.
DRAIN_GRACE_SECONDS = 1.0
# The largest request head (request line and headers) read; nginx's default allows 4 x 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# After refusing a request mid-way, read and drop what the client still sends for this long before closing:
# closing with unread bytes makes the kernel send a reset, which can destroy the answer before it is read.
LINGER_SECONDS = 2.0


def _error_response(error: ApiError) -> bytes:
    body = error.body()
    head = (
        b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
    )
    return STATUS_LINE[error.status] + head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Configured by `protocol_class`, which binds the timeouts and the draining flag."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    draining: Callable[[], bool] = staticmethod(lambda: False)

    _timer: TimerHandle | None = None
    _timing: str = ""  # what the armed timer waits for: "head", "body" or ""
    _head_pending = False  # a request head has begun and is not complete
    _body_pending = False  # a head is complete, its body is not
    _closing_after_request = False  # the server is shutting down: serve what has begun, then close
    _head_bytes = 0  # bytes received while the current request head was incomplete
    _deferred_error: ApiError | None = None  # a protocol error to send once the request before it is answered
    _discarding = False  # refused: what still arrives is read and dropped until the connection closes

    # --- the connection
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm("head")  # a fresh connection owes us a request head

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if not self._head_pending and not self._body_pending and b"pgrade" in data:
            data = _ignore_upgrade(data)
        super().data_received(data)
        # Timers are set here, once per chunk, not per parser event: a request that arrives whole (nearly
        # all of them) arms and cancels nothing.
        if self.transport.is_closing():
            return
        if self._head_pending:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(HeadersTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes"))
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
        self._head_pending = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._body_pending = True
        super().on_headers_complete()
        if (self._closing_after_request or self.draining()) and self.cycle is not None:
            self.cycle.keep_alive = False  # uvicorn then answers with Connection: close

    def on_message_complete(self) -> None:
        self._body_pending = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's idle keep-alive timeout
        if self._deferred_error is not None:
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

    # --- timeouts
    def _arm(self, waiting_for: str) -> None:
        self._disarm()
        self._timing = waiting_for
        if waiting_for == "head":
            self._timer = self.loop.call_later(self.header_timeout, self._timed_out, "no complete request head")
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
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering and not self._body_pending:
            # A whole request before the bad bytes is still being answered: its answer goes first.
            self._deferred_error = BadRequest(msg)
            self.flow.pause_reading()
            return
        if answering:
            # The bad bytes are inside this request's own body (say, broken chunked framing): it can never be
            # complete. The app hears the client is gone; the client gets its 400 now, not a 408 later.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._refuse(BadRequest(msg))

    def _refuse(self, error: ApiError) -> None:
        """Answers `error` and closes: at once if the client has sent everything, else after a lingering read."""
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(_error_response(error))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end of stream: the client reads both
            self._discarding = True
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
    *, header_timeout: float, body_timeout: float, draining: Callable[[], bool]
) -> type[GuardedHttpToolsProtocol]:
    """The protocol uvicorn should use (Config(http=...)), bound to these settings."""
    return type(
        "ServiceHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout, "draining": staticmethod(draining)},
    )


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
