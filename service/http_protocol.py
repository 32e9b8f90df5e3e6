"""uvicorn's httptools protocol, plus one thing the app can't do through ASGI: hold a connection.

Under overload, clients that retry at once after a 429 turn the event loop into a refusal machine:
every refused connection is ready again in microseconds, each refusal costs tens of microseconds,
and accepted requests starve (measured: good throughput fell to a third). So a refusal can ask,
through its ASGI scope (HOLD_READING), that the connection's *next* request not be read for a while:
the 429 itself leaves at once, and Retry-After is enforced for clients that ignore it. The kernel
keeps the next request meanwhile, at no CPU cost. Clients that honour Retry-After never notice.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Scope key an ASGI handler sets (seconds) on a response after which its connection is not read.
HOLD_READING = "m2m100.hold_reading_seconds"


class HoldingHttpToolsProtocol(HttpToolsProtocol):
    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        hold = cycle.scope.get(HOLD_READING) if cycle is not None else None
        if hold and not self.transport.is_closing():
            self.flow.pause_reading()
            self.loop.call_later(hold, self._resume_reading)

    def _resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.flow.resume_reading()
