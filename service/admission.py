"""The one admission step: may this request be served, and what does it hold while it is.

Everything a request takes from shared capacity is taken through one Permit, in the order the request
can use it, and given back by the permit when the request ends, whatever happens (TEI's
`Infer::try_acquire_permit`):

1. On the request head (`Admission.enter`): the runtime is serving; the API key is valid (failed
   attempts throttled per address); the client is within its rate; a body slot is free, in total and
   for this client. A request still sending its body holds only a body slot, so connections that stall
   mid-body can't take the in-flight slots or queue room that ready requests need.
2. Once the body is in (`Permit.body_received`): an in-flight slot.
3. Once its sentences are counted (`Permit.take_sentences`): room in the queue for its first window (a
   request is fed to the engine at most `settings.request_window` sentences at a time, however long it is;
   later windows wait for room), and the client's share. The queue bounds load, never request size.

Domain code: it raises service/errors.py's errors; the edge maps them to statuses in one table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.access import ApiKeys, AuthThrottle, FairUse
from service.errors import (
    RETRY_AFTER_SECONDS,
    AtCapacity,
    OverClientShare,
    TooManyAuthFailures,
    Unauthenticated,
)
from service.identity import Caller, TrustedProxies
from service.settings import Settings

if TYPE_CHECKING:
    from service.runtime import Serving

log = logging.getLogger("service")


class Admission:
    """Readiness, API keys, per-client limits, the body-slot and in-flight bounds and queue room."""

    def __init__(self, settings: Settings, *, accepting: Callable[[], Serving], clock=time.monotonic) -> None:
        """`accepting()` returns the published runtime parts, or raises NotServing."""
        self._accepting = accepting
        self._max_in_flight = settings.max_in_flight
        self._max_pending_bodies = settings.max_pending_bodies
        self._max_queue = settings.max_queue
        self._window = settings.request_window
        # An unreadable keys file stops the start (AccessError).
        self.keys = ApiKeys(Path(settings.api_keys_file)) if settings.api_keys_file else None
        self.proxies = TrustedProxies(settings.forwarded_allow_ips)
        self.fair_use = FairUse(
            rate=settings.client_rate_per_second,
            burst=settings.client_burst,
            max_sentences=settings.client_max_sentences,
            max_pending_bodies=settings.client_max_pending_bodies,
            clock=clock,
        )
        self._auth_failures = AuthThrottle(rate=settings.auth_failures_per_second, burst=settings.auth_failure_burst, clock=clock)
        self.in_flight = 0  # requests whose body is in, being served
        self.pending_bodies = 0  # requests admitted on their head whose body is still arriving
        self.reserved = 0  # the windows of the requests being served (each at most settings.request_window)

    def caller(self, peer: tuple[str, int] | None, forwarded_for: bytes | None) -> Caller:
        return self.proxies.caller(peer[0] if peer else "unknown", forwarded_for)

    def authenticate(self, caller: Caller, authorization: str) -> str:
        """The client's name for per-client limits: its key's, or its address when keys are off."""
        keys = self.keys
        if keys is None:
            return "addr:" + caller.address
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key and keys.check(key):
            return keys.client_id(key)
        refusal = self._auth_failures.failed(caller.address)
        if refusal is not None:
            raise TooManyAuthFailures(f"{refusal.reason}; retry later", retry_after=refusal.retry_after)
        raise Unauthenticated("missing or invalid API key: send `Authorization: Bearer <key>`")

    def enter(self, caller: Caller, authorization: str) -> Permit:
        """Admits a request on its head, holding a body slot; raises the ServiceError that refuses it."""
        serving = self._accepting()
        client = self.authenticate(caller, authorization)
        self._admit_rate(client)
        return self._hold_body_slot(serving, caller, client)

    def enter_before_key(self, caller: Caller) -> Permit:
        """Admits a request whose API key comes in its body (LibreTranslate's `api_key`): a body slot, counted for its
        address until `Permit.authenticate` has read the key."""
        return self._hold_body_slot(self._accepting(), caller, "addr:" + caller.address)

    def _admit_rate(self, client: str) -> None:
        refusal = self.fair_use.admit_request(client)
        if refusal is not None:
            raise OverClientShare(f"{refusal.reason}; retry shortly", retry_after=refusal.retry_after)

    def _hold_body_slot(self, serving: Serving, caller: Caller, client: str) -> Permit:
        if self.pending_bodies >= self._max_pending_bodies:
            raise AtCapacity(
                f"the service has {self.pending_bodies} requests still sending their body; retry shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )
        refusal = self.fair_use.hold_pending_body(client)
        if refusal is not None:
            raise OverClientShare(f"{refusal.reason}; retry shortly", retry_after=refusal.retry_after)
        self.pending_bodies += 1
        return Permit(self, serving, caller, client)


class Permit:
    """What one request holds; `release()` (or leaving its `with`) gives back all of it, once."""

    __slots__ = ("_admission", "_body_slot", "_in_flight", "_sentences", "caller", "client", "serving")

    def __init__(self, admission: Admission, serving: Serving, caller: Caller, client: str) -> None:
        self._admission = admission
        self.serving = serving
        self.caller = caller
        self.client = client
        self._body_slot = True
        self._in_flight = False
        self._sentences = 0

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def authenticate(self, authorization: str) -> None:
        """For a permit from `enter_before_key`: the key (`Bearer KEY`) read from the body, and the client's rate.
        Call it after `body_received`, which gave back the body slot counted for the address."""
        admission = self._admission
        self.client = admission.authenticate(self.caller, authorization)
        admission._admit_rate(self.client)

    def body_received(self) -> None:
        """The body is in: trades the body slot for an in-flight slot (AtCapacity if none is free)."""
        admission = self._admission
        self._release_body_slot()
        if admission.in_flight >= admission._max_in_flight:
            raise AtCapacity("the service is at capacity; retry shortly", retry_after=RETRY_AFTER_SECONDS)
        admission.in_flight += 1
        self._in_flight = True

    def take_sentences(self, sentences: int) -> None:
        """Room in the queue now for this request's first window (`sentences`, or the window if fewer), within the
        client's share; refused before any work when the queue is full. Later windows wait for room as it frees
        (service/feeder.py): a request once admitted is never refused half-way."""
        admission = self._admission
        window = min(sentences, admission._window)
        if not self.serving.batcher.has_room(window):
            raise AtCapacity("the service is at capacity; retry shortly", retry_after=RETRY_AFTER_SECONDS)
        refusal = admission.fair_use.hold_sentences(self.client, window)
        if refusal is not None:
            raise OverClientShare(f"{refusal.reason}; retry shortly", retry_after=refusal.retry_after)
        admission.reserved += window
        self._sentences += window

    def release(self) -> None:
        admission = self._admission
        self._release_body_slot()
        if self._in_flight:
            self._in_flight = False
            admission.in_flight -= 1
        if self._sentences:
            admission.reserved -= self._sentences
            admission.fair_use.release_sentences(self.client, self._sentences)
            self._sentences = 0

    def _release_body_slot(self) -> None:
        if self._body_slot:
            self._body_slot = False
            self._admission.pending_bodies -= 1
            self._admission.fair_use.release_pending_body(self.client)
