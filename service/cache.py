"""Translation cache: (fromLang, toLang, sentence) -> translation.

An in-process LRU answers first; with a Redis URL, a shared Redis sits behind it so replicas
share their work. Redis is an optimisation, never a dependency: an error or a slow answer counts
as an outage (metrics and one log line), the request goes on without it, and Redis is left alone
for a short back-off so that an outage does not add a timeout to every request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

CacheKey = tuple[str, str, str]  # (source language, target language, sentence)


class Cache(Protocol):
    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]: ...
    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None: ...
    async def close(self) -> None: ...


class LruCache:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[CacheKey, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]:
        found = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            found.append(value)
        return found

    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None:
        if self._capacity == 0:
            return
        for key, value in items:
            self._entries[key] = value
            self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Redis behind the LRU; fails open."""

    BACKOFF_SECONDS = 5.0

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        local: LruCache,
        timeout_seconds: float,
        ttl_seconds: int,
        on_status: Callable[[bool], None] = lambda up: None,
    ) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._prefix = f"mt:{hashlib.sha1(namespace.encode()).hexdigest()[:12]}:"
        self._local = local
        self._ttl = ttl_seconds
        self._on_status = on_status
        self._skip_until = 0.0
        self._up = True

    def _key(self, key: CacheKey) -> str:
        source, target, sentence = key
        return f"{self._prefix}{source}:{target}:{hashlib.sha256(sentence.encode()).hexdigest()}"

    async def get_many(self, keys: Sequence[CacheKey]) -> list[str | None]:
        found = await self._local.get_many(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing or not self._available():
            return found
        try:
            remote = await self._client.mget([self._key(keys[i]) for i in missing])
        except Exception as error:  # noqa: BLE001 - any Redis failure means: go on without it
            self._failed(error)
            return found
        self._succeeded()
        recovered = []
        for i, value in zip(missing, remote):
            if value is not None:
                found[i] = value.decode("utf-8")
                recovered.append((keys[i], found[i]))
        await self._local.set_many(recovered)
        return found

    async def set_many(self, items: Sequence[tuple[CacheKey, str]]) -> None:
        await self._local.set_many(items)
        if not items or not self._available():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self._key(key), value.encode("utf-8"), ex=self._ttl)
                await pipe.execute()
        except Exception as error:  # noqa: BLE001
            self._failed(error)
            return
        self._succeeded()

    async def close(self) -> None:
        await self._client.aclose()

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, error: Exception) -> None:
        self._skip_until = time.monotonic() + self.BACKOFF_SECONDS
        if self._up:
            log.warning("redis cache unavailable, serving without it: %s: %s", error.__class__.__name__, error)
        self._up = False
        self._on_status(False)

    def _succeeded(self) -> None:
        if not self._up:
            log.info("redis cache is back")
        self._up = True
        self._on_status(True)
