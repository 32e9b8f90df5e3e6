"""Translation cache: (fromLang, toLang, sentence) -> translation.

An in-process LRU answers first; with a Redis URL, a shared Redis sits behind it so replicas
share their work. Redis is an optimisation, never a dependency: an error or a slow answer counts
as an outage (metrics and one log line), the request goes on without it, and Redis is left alone
for a short back-off so that an outage does not add a timeout to every request.

Memory is bounded by bytes, not entries: one client sending distinct 20,000-character texts once
filled an entry-bounded LRU with 186 KB entries (3.8 GB). So the LRU keeps a 16-byte digest of
the key instead of the sentence, counts what each entry really costs, evicts until the total fits
`max_bytes`, and does not cache sentences longer than `max_entry_chars` at all.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)

CacheKey = tuple[str, str, str]  # (source language, target language, sentence)

DIGEST_SIZE = 16  # 128 bits: an accidental collision is out of reach for any cache size we can hold
# A sentence longer than this is not cached (neither in-process nor in Redis). The segmenter cuts
# texts into sentences, and natural sentences stay far below 1,000 characters; longer "sentences"
# are unpunctuated runs (lists, logs, emoji floods) that rarely repeat verbatim but cost the most.
# It also caps the hashing a lookup does on the event loop.
DEFAULT_MAX_ENTRY_CHARS = 1000
# Per process. Fits the cpu pod (4 GiB, model process 0.6-1.3 GiB) with room for requests in flight,
# and holds about half a million typical sentences (~500 bytes an entry, overhead included).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# What an entry costs besides sys.getsizeof(digest) + sys.getsizeof(value), measured with tracemalloc
# on CPython 3.11, holding n entries while inserting 6n distinct ones, for n from 64 to 60,000: the
# OrderedDict's share (hash-table entry and index, fast-node slot, linked-list node) is 71-246 bytes
# an entry depending on where the table is in its grow-and-compact cycle (median 194). Add up to 38
# bytes of allocator rounding of the digest (49 -> 64) and the value. A table resize briefly holds
# the old and the new table: up to ~120 bytes more an entry for that moment. Checked by
# tests/test_cache.py::test_entry_overhead_covers_what_small_entries_really_cost.
ENTRY_OVERHEAD = 288
_DIGEST_BYTES = sys.getsizeof(bytes(DIGEST_SIZE))


def cache_key(key: CacheKey) -> bytes:
    """The one key function of both caches: a digest of the triple, never the sentence itself.

    Each part is length-prefixed, so no two triples encode alike ("a", "bc") vs ("ab", "c").
    surrogatepass keeps a lone surrogate (valid in a str, not in UTF-8) from raising.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for part in key:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


def entry_bytes(value: str) -> int:
    """What one cached translation costs in memory: digest + value + bookkeeping."""
    return _DIGEST_BYTES + sys.getsizeof(value) + ENTRY_OVERHEAD


class Cache(Protocol):
    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]: ...
    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None: ...
    async def close(self) -> None: ...


class LruCache:
    """Least-recently-used entries leave first until the entries fit `max_bytes` (and `max_entries`).

    `max_entries`: an optional count cap kept for MT_CACHE_SIZE (None: bytes alone bound it; 0, like
    max_bytes=0, disables the cache). Runs on the event loop only: no locks.
    """

    def __init__(
        self,
        max_entries: int | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entry_chars: int = DEFAULT_MAX_ENTRY_CHARS,
    ) -> None:
        if max_bytes < 0 or (max_entries is not None and max_entries < 0) or max_entry_chars < 0:
            raise ValueError("cache limits must not be negative")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_entry_chars = max_entry_chars
        self.evictions = 0  # entries dropped to make room (a counter for metrics)
        self._used = 0
        self._entries: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        """The bytes the entries held now account for; never above max_bytes."""
        return self._used

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries != 0

    def cacheable(self, key: CacheKey) -> bool:
        """Whether a key is short enough to cache at all (Redis follows the same rule)."""
        return len(key[2]) <= self.max_entry_chars

    def lookup(self, digest: bytes) -> str | None:
        value = self._entries.get(digest)
        if value is not None:
            self._entries.move_to_end(digest)
        return value

    def store(self, digest: bytes, value: str) -> bool:
        """Stores one entry, evicting the least recently used ones; False when it cannot fit at all."""
        if not self.enabled:
            return False
        old = self._entries.pop(digest, None)
        if old is not None:
            self._used -= entry_bytes(old)
        cost = entry_bytes(value)
        if cost > self.max_bytes:
            return False
        self._entries[digest] = value
        self._used += cost
        limit = self.max_entries
        while self._used > self.max_bytes or (limit is not None and len(self._entries) > limit):
            _, evicted = self._entries.popitem(last=False)
            self._used -= entry_bytes(evicted)
            self.evictions += 1
        return True

    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]:
        if not self._entries:  # also the disabled cache: no hashing at all
            return [None] * len(keys)
        return [self.lookup(cache_key(key)) if self.cacheable(key) else None for key in keys]

    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None:
        if not self.enabled:
            return
        for key, value in items:
            if self.cacheable(key):
                self.store(cache_key(key), value)

    async def close(self) -> None:
        self._entries.clear()
        self._used = 0


class RedisClient(Protocol):
    """The part of redis.asyncio.Redis this cache uses (tests pass a fake)."""

    async def mget(self, keys: list[str]) -> list[bytes | None]: ...
    def pipeline(self, transaction: bool = ...) -> Any: ...
    async def aclose(self) -> None: ...


def _connect(url: str, timeout_seconds: float) -> RedisClient:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return cast(RedisClient, client)  # it has every method RedisClient names


class RedisCache:
    """Redis behind the LRU; fails open."""

    BACKOFF_SECONDS = 5.0

    def __init__(
        self,
        url: str = "",
        *,
        namespace: str,
        local: LruCache,
        timeout_seconds: float = 0.05,
        ttl_seconds: int,
        on_status: Callable[[bool], None] = lambda up: None,
        client: RedisClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client: RedisClient = client if client is not None else _connect(url, timeout_seconds)
        # The namespace (the model's fingerprint) keeps replicas of different models apart.
        self._prefix = f"mt:{hashlib.sha1(namespace.encode()).hexdigest()[:12]}:"
        self._local = local
        self._ttl = ttl_seconds
        self._on_status = on_status
        self._clock = clock
        self._skip_until = 0.0
        self._up = True

    def _key(self, digest: bytes) -> str:
        return self._prefix + digest.hex()

    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]:
        found: list[str | None] = [None] * len(keys)
        missing: list[tuple[int, bytes]] = []
        for i, key in enumerate(keys):
            if self._local.cacheable(key):
                digest = cache_key(key)
                found[i] = self._local.lookup(digest)
                if found[i] is None:
                    missing.append((i, digest))
        if not missing or not self._available():
            return found
        try:
            remote = await self._client.mget([self._key(digest) for _, digest in missing])
        except Exception as error:  # noqa: BLE001 - any Redis failure means: go on without it
            self._failed(error)
            return found
        self._succeeded()
        for (i, digest), value in zip(missing, remote):
            if value is not None:
                found[i] = text = value.decode("utf-8")
                self._local.store(digest, text)
        return found

    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None:
        entries = [(cache_key(key), value) for key, value in items if self._local.cacheable(key)]
        for digest, value in entries:
            self._local.store(digest, value)
        if not entries or not self._available():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for digest, value in entries:
                    pipe.set(self._key(digest), value.encode("utf-8"), ex=self._ttl)
                await pipe.execute()
        except Exception as error:  # noqa: BLE001
            self._failed(error)
            return
        self._succeeded()

    async def close(self) -> None:
        await self._local.close()
        await self._client.aclose()

    def _available(self) -> bool:
        return self._clock() >= self._skip_until

    def _failed(self, error: Exception) -> None:
        self._skip_until = self._clock() + self.BACKOFF_SECONDS
        if self._up:
            log.warning("redis cache unavailable, serving without it: %s: %s", error.__class__.__name__, error)
        self._up = False
        self._on_status(False)

    def _succeeded(self) -> None:
        if not self._up:
            log.info("redis cache is back")
        self._up = True
        self._on_status(True)
