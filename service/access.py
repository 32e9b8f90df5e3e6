"""Who may call, and how much: optional API keys and per-client fair-use limits.

- API keys come from a file, one per line (blank lines and `#` comments ignored). The file is re-read
  when it changes (checked at most once a second), so keys rotate without a restart. A presented key is
  compared with every configured key in constant time, so timing says nothing about valid keys.
- Each client (its key, or its address when keys are off) gets a token bucket of requests per second
  and a cap on its sentences in flight, so one client cannot fill the whole queue nor, through the
  autoscaler, push the deployment to its maximum. The table of clients is bounded (least recently seen
  go first), so many addresses can't grow memory without end.

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


@dataclass
class _Client:
    tokens: float
    updated: float
    sentences: int = 0


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: int  # whole seconds, at least 1


class FairUse:
    """Per-client token bucket (requests/s, with a burst) and a cap on sentences in flight.

    A rate of 0 or a cap of 0 turns that limit off.
    """

    def __init__(self, *, rate: float, burst: int, max_sentences: int, clock=time.monotonic) -> None:
        self._rate = rate
        self._burst = max(burst, 1)
        self._max_sentences = max_sentences
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0 or self._max_sentences > 0

    def admit_request(self, client: str) -> Refusal | None:
        """Takes one request token, or says why not and when to retry."""
        if self._rate <= 0:
            return None
        state = self._client(client)
        now = self._clock()
        state.tokens = min(self._burst, state.tokens + (now - state.updated) * self._rate)
        state.updated = now
        if state.tokens >= 1:
            state.tokens -= 1
            return None
        wait = (1 - state.tokens) / self._rate
        return Refusal(f"this client is over its {self._rate:g} requests/s", max(1, math.ceil(wait)))

    def hold_sentences(self, client: str, sentences: int) -> Refusal | None:
        """Counts `sentences` as this client's, in flight, unless that would pass its cap."""
        if self._max_sentences <= 0:
            return None
        state = self._client(client)
        if state.sentences + sentences > self._max_sentences and state.sentences > 0:
            return Refusal(f"this client has {state.sentences} sentences in flight, its limit is {self._max_sentences}", 1)
        state.sentences += sentences  # a single request over the cap still runs when the client has nothing else
        return None

    def release_sentences(self, client: str, sentences: int) -> None:
        state = self._clients.get(client)
        if state is not None:
            state.sentences = max(0, state.sentences - sentences)

    def _client(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client(tokens=self._burst, updated=self._clock())
            while len(self._clients) > MAX_TRACKED_CLIENTS:
                oldest, old_state = next(iter(self._clients.items()))
                if old_state.sentences:  # never forget a client with work in flight
                    self._clients.move_to_end(oldest)
                    break
                del self._clients[oldest]
        else:
            self._clients.move_to_end(client)
        return state
