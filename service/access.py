"""Who may call, and how much: optional API keys and per-client fair-use limits.

- API keys come from a file, one per line (blank lines and `#` comments ignored). The file is re-read
  when it changes (checked at most once a second), so keys rotate without a restart. A presented key is
  compared with every configured key in constant time, so timing says nothing about valid keys.
- Each client (its key, or its address when keys are off) may get a token bucket of requests per second,
  a cap on its sentences in flight and a cap on its requests still sending their body, so one client
  cannot fill the whole queue nor, through the autoscaler, push the deployment to its maximum. Each is
  off until configured: behind a proxy without keys, every user may share one address. The table of
  clients is bounded in entries and bytes (least recently seen go first).
- Failed authentications are throttled per address (AuthThrottle).

Domain code: it raises nothing HTTP-shaped; the edge maps its answers to 401 and 429.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
MAX_TRACKED_CLIENTS = 10_000


class ApiKeys:
    """The keys in `path`; `check(presented)` is True for a configured key. Never logs a key."""

    def __init__(self, path: Path, *, clock=time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._keys: tuple[bytes, ...] = ()
        self._signature: tuple[float, int] | None = None
        self._checked_at = -math.inf
        self._reload(force=True)
        if not self._keys:
            log.warning("API keys are on but %s holds no key: every request will get 401", path)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, presented: str) -> bool:
        self._maybe_reload()
        candidate = presented.encode()
        matched = False
        for key in self._keys:  # no early exit: the time taken doesn't depend on which key matched
            matched |= hmac.compare_digest(candidate, key)
        return matched

    @staticmethod
    def client_id(key: str) -> str:
        """A stable, non-secret name for a key's client (for limits and logs)."""
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at >= RELOAD_CHECK_SECONDS:
            self._checked_at = now
            self._reload()

    def _reload(self, force: bool = False) -> None:
        try:
            status = os.stat(self._path)
        except OSError as error:
            if force:
                raise AccessError(f"cannot read the API keys file {self._path}: {error.strerror}") from None
            log.error("cannot read the API keys file %s (%s); keeping the %d keys loaded", self._path, error.strerror, len(self._keys))
            return
        signature = (status.st_mtime, status.st_size)
        if signature == self._signature and not force:
            return
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            if force:
                raise AccessError(f"cannot read the API keys file {self._path}: {error}") from None
            log.error("cannot read the API keys file %s (%s); keeping the keys loaded", self._path, error)
            return
        keys = tuple(
            line.strip().encode() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
        )
        if self._signature is not None:
            log.info("API keys reloaded from %s: %d keys", self._path, len(keys))
        self._keys, self._signature = keys, signature


class AccessError(ValueError):
    """The access settings can't work (for example an unreadable keys file)."""


# The client table's bounds: entries, and bytes (names are bounded too: a key's hash or a parsed address).
MAX_CLIENT_TABLE_BYTES = 4 * 1024 * 1024
_ENTRY_BYTES = 200  # a table slot, its bucket and counters, beside the name itself


@dataclass
class _Client:
    tokens: float
    updated: float
    sentences: int = 0
    pending_bodies: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.sentences or self.pending_bodies)


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: int  # whole seconds, at least 1


class _ClientTable:
    """Per-client state, least recently seen first, bounded in entries and in bytes. A client with work in
    flight is never forgotten (its counts must come back down)."""

    def __init__(self, burst: float, clock) -> None:
        self._burst = burst
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, name: str) -> _Client | None:
        return self._clients.get(name)

    def __getitem__(self, name: str) -> _Client:
        state = self._clients.get(name)
        if state is not None:
            self._clients.move_to_end(name)
            return state
        state = self._clients[name] = _Client(tokens=self._burst, updated=self._clock())
        self._bytes += len(name) + _ENTRY_BYTES
        while len(self._clients) > MAX_TRACKED_CLIENTS or self._bytes > MAX_CLIENT_TABLE_BYTES:
            oldest, old_state = next(iter(self._clients.items()))
            if old_state.busy or oldest == name:
                break  # everyone left is busy: bounded by what is in flight, which other limits bound
            del self._clients[oldest]
            self._bytes -= len(oldest) + _ENTRY_BYTES
        return state


def _take_token(state: _Client, rate: float, burst: int, now: float) -> float | None:
    """Takes one token from a bucket of `burst` refilled at `rate`/s; None if taken, else seconds to wait."""
    state.tokens = min(burst, state.tokens + (now - state.updated) * rate)
    state.updated = now
    if state.tokens >= 1:
        state.tokens -= 1
        return None
    return (1 - state.tokens) / rate


class FairUse:
    """Per-client limits, each off at 0: a token bucket of requests per second (with a burst), a cap on
    sentences in flight, and a cap on requests still sending their body."""

    def __init__(
        self, *, rate: float, burst: int, max_sentences: int, max_pending_bodies: int = 0, clock=time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = max(burst, 1)
        self._max_sentences = max_sentences
        self._max_pending_bodies = max_pending_bodies
        self._clock = clock
        self._clients = _ClientTable(self._burst, clock)

    @property
    def tracked(self) -> int:
        return len(self._clients)

    @property
    def tracked_bytes(self) -> int:
        return self._clients.bytes

    def admit_request(self, client: str) -> Refusal | None:
        """Takes one request token, or says why not and when to retry."""
        if self._rate <= 0:
            return None
        wait = _take_token(self._clients[client], self._rate, self._burst, self._clock())
        if wait is None:
            return None
        return Refusal(f"this client is over its {self._rate:g} requests/s", max(1, math.ceil(wait)))

    def hold_pending_body(self, client: str) -> Refusal | None:
        """Counts one more request of this client as still sending its body, unless that passes its cap."""
        if self._max_pending_bodies <= 0:
            return None
        state = self._clients[client]
        if state.pending_bodies >= self._max_pending_bodies:
            return Refusal(f"this client has {state.pending_bodies} requests still sending their body, its limit "
                           f"is {self._max_pending_bodies}", 1)
        state.pending_bodies += 1
        return None

    def release_pending_body(self, client: str) -> None:
        state = self._clients.get(client)
        if state is not None:
            state.pending_bodies = max(0, state.pending_bodies - 1)

    def hold_sentences(self, client: str, sentences: int) -> Refusal | None:
        """Counts `sentences` as this client's, in flight, unless that would pass its cap."""
        if self._max_sentences <= 0:
            return None
        state = self._clients[client]
        if state.sentences + sentences > self._max_sentences and state.sentences > 0:
            return Refusal(f"this client has {state.sentences} sentences in flight, its limit is {self._max_sentences}", 1)
        state.sentences += sentences  # a single request over the cap still runs when the client has nothing else
        return None

    def release_sentences(self, client: str, sentences: int) -> None:
        state = self._clients.get(client)
        if state is not None:
            state.sentences = max(0, state.sentences - sentences)


class AuthThrottle:
    """Failed authentications per address: a burst, then `rate` per second; beyond that the address is
    refused before its key is even answered with 401, so keys can't be guessed at line speed. A valid key
    is never refused here (the check comes after the key is compared)."""

    def __init__(self, *, rate: float, burst: int, clock=time.monotonic) -> None:
        self._rate = rate
        self._burst = max(burst, 1)
        self._clock = clock
        self._addresses = _ClientTable(self._burst, clock)

    def failed(self, address: str) -> Refusal | None:
        """Records a failed authentication; a Refusal if the address is over its budget."""
        if self._rate <= 0:
            return None
        wait = _take_token(self._addresses[address], self._rate, self._burst, self._clock())
        if wait is None:
            return None
        return Refusal("too many failed authentications from this address", max(1, math.ceil(wait)))
