"""The translation cache: LRU order, the byte budget (accounted and measured), the key digest, and
the Redis layer's fail-open back-off against a fake client and a fake clock."""

from __future__ import annotations

import gc
import json
import logging
import random
import subprocess
import sys
import textwrap
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import pytest

from loadtest.paths import ROOT
from service.cache import (
    ENTRY_OVERHEAD,
    CacheKey,
    LruCache,
    RedisCache,
    cache_key,
    entry_bytes,
)

EMOJI = "😀🎉"  # 4 bytes a character in a str: the costliest text per character


def key(sentence: str, source: str = "en", target: str = "fr") -> CacheKey:
    return (source, target, sentence)


def emoji_text(i: int, chars: int) -> str:
    return f"{i} " + EMOJI * (chars // 2)


# --- the LRU ---------------------------------------------------------------------------------


async def test_a_get_refreshes_recency_so_the_least_recently_used_entry_leaves_first():
    cache = LruCache(max_bytes=3 * entry_bytes("v-a"))
    await cache.set_many([(key("a"), "v-a"), (key("b"), "v-b"), (key("c"), "v-c")])
    assert await cache.get_many([key("a")]) == ["v-a"]  # a is now the most recent; b the least

    await cache.set_many([(key("d"), "v-d")])

    assert await cache.get_many([key("a"), key("b"), key("c"), key("d")]) == ["v-a", None, "v-c", "v-d"]
    assert len(cache) == 3
    assert cache.evictions == 1


async def test_storing_a_key_again_refreshes_its_recency_too():
    cache = LruCache(max_bytes=3 * entry_bytes("v-a"))
    await cache.set_many([(key("a"), "v-a"), (key("b"), "v-b"), (key("c"), "v-c")])
    await cache.set_many([(key("a"), "w-a")])  # a is the most recent now, with its new value

    await cache.set_many([(key("d"), "v-d")])

    assert await cache.get_many([key("a"), key("b"), key("c"), key("d")]) == ["w-a", None, "v-c", "v-d"]
    assert cache.evictions == 1


async def test_a_random_workload_matches_a_reference_lru_step_by_step():
    """Gets and sets of random sentences with values of random sizes, against a plain model of an LRU bounded
    by bytes: the same entries in the same order, the same evictions, and never above the budget."""
    rng = random.Random(20)
    budget = 40 * entry_bytes("x" * 20)
    cache = LruCache(max_bytes=budget)
    model: OrderedDict[str, str] = OrderedDict()  # sentence -> value, least recently used first
    evictions = 0
    for step in range(3000):
        sentence = f"s{rng.randrange(120)}"
        if rng.random() < 0.4:
            expected = model.get(sentence)
            if expected is not None:
                model.move_to_end(sentence)
            assert await cache.get_many([key(sentence)]) == [expected], step
        else:
            value = "v" * rng.randrange(1, 60)
            model.pop(sentence, None)
            model[sentence] = value
            while sum(map(entry_bytes, model.values())) > budget:
                model.popitem(last=False)
                evictions += 1
            await cache.set_many([(key(sentence), value)])
        assert cache.used_bytes == sum(map(entry_bytes, model.values())) <= budget, step
        assert (len(cache), cache.evictions) == (len(model), evictions), step
    assert evictions > 500  # the budget was what bounded the cache, over and over
    assert await cache.get_many([key(s) for s in model]) == list(model.values())


async def test_the_byte_budget_evicts_as_many_entries_as_a_large_one_needs():
    small = entry_bytes("x")
    cache = LruCache(max_bytes=10 * small)
    await cache.set_many([(key(f"s{i}"), "x") for i in range(10)])
    assert len(cache) == 10 and cache.used_bytes == 10 * small

    big = "y" * (3 * small)  # costs a bit more than 3 small entries: 4 must leave
    await cache.set_many([(key("big"), big)])

    assert await cache.get_many([key(f"s{i}") for i in range(5)]) == [None] * 4 + ["x"]
    assert cache.used_bytes == 6 * small + entry_bytes(big) <= cache.max_bytes
    assert cache.evictions == 4


async def test_the_accounting_follows_replacements_and_close():
    cache = LruCache(max_bytes=1_000_000)
    await cache.set_many([(key("a"), "short")])
    await cache.set_many([(key("a"), "a longer translation")])
    assert len(cache) == 1
    assert cache.used_bytes == entry_bytes("a longer translation")
    assert await cache.get_many([key("a")]) == ["a longer translation"]

    await cache.close()
    assert len(cache) == 0 and cache.used_bytes == 0


async def test_an_entry_larger_than_the_whole_budget_is_not_stored_and_evicts_nothing():
    cache = LruCache(max_bytes=2 * entry_bytes("v"), max_entry_chars=100_000)
    await cache.set_many([(key("a"), "v")])
    await cache.set_many([(key("huge"), "z" * 10_000)])
    assert await cache.get_many([key("a"), key("huge")]) == ["v", None]
    assert cache.evictions == 0


async def test_sentences_over_max_entry_chars_are_not_cached():
    cache = LruCache(max_bytes=1_000_000, max_entry_chars=10)
    await cache.set_many([(key("x" * 10), "at the limit"), (key("x" * 11), "over it")])
    assert await cache.get_many([key("x" * 10), key("x" * 11)]) == ["at the limit", None]
    assert len(cache) == 1


async def test_the_default_keeps_20000_character_sentences_out():
    cache = LruCache()
    sentence = emoji_text(0, 20_000)
    await cache.set_many([(key(sentence), sentence)])
    assert len(cache) == 0 and cache.used_bytes == 0


async def test_the_optional_entry_cap_still_bounds_the_count():
    cache = LruCache(2)  # the positional entry cap, as runtime builds it from MT_CACHE_SIZE
    await cache.set_many([(key(s), s) for s in "abc"])
    assert await cache.get_many([key(s) for s in "abc"]) == [None, "b", "c"]


@pytest.mark.parametrize("limits", [{"max_bytes": 0}, {"max_entries": 0}])
async def test_a_zero_budget_disables_the_cache(limits):
    cache = LruCache(**limits)
    assert not cache.enabled
    await cache.set_many([(key("a"), "v")])
    assert await cache.get_many([key("a")]) == [None]
    assert len(cache) == 0 and cache.used_bytes == 0


def test_negative_limits_are_refused():
    with pytest.raises(ValueError):
        LruCache(max_bytes=-1)


# --- the key -----------------------------------------------------------------------------------


def test_the_key_is_a_16_byte_digest_that_only_the_same_triple_shares():
    assert cache_key(key("hello")) == cache_key(("en", "fr", "hel" + "lo"))
    assert len(cache_key(key("hello"))) == 16
    distinct = [
        ("en", "fr", "hello"), ("en", "de", "hello"), ("fr", "en", "hello"), ("en", "fr", "hello "),
        # Would collide if the parts were simply concatenated or joined with a separator they may contain.
        ("en", "frx", "y"), ("en", "fr", "xy"), ("enf", "r", "xy"), ("en", "fr:", "y"), ("en:fr", "", "y"),
        ("en", "fr\x00", "y"), ("en", "fr", "\x00y"),
    ]
    assert len({cache_key(k) for k in distinct}) == len(distinct)


async def test_a_lone_surrogate_is_a_key_like_any_other():
    cache = LruCache()
    await cache.set_many([(key("\ud800"), "v")])
    assert await cache.get_many([key("\ud800"), key("\udc00")]) == ["v", None]


async def test_the_cache_does_not_hold_the_sentence():
    cache = LruCache(max_entry_chars=10_000)
    sentence = emoji_text(1, 5_000)  # ~20 KB as a str
    await cache.set_many([(key("warm-up"), "v")])  # the table exists before we measure
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await cache.set_many([(key(sentence), "short")])
        del sentence
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 2
    assert retained < 1_000  # the digest, the value and a table slot; not the 20 KB sentence


# --- memory, measured ----------------------------------------------------------------------------


async def flood(cache: LruCache, count: int, chars) -> int:
    """Inserts `count` distinct entries; returns the most tracemalloc saw retained above the start."""
    gc.collect()
    tracemalloc.start()
    try:
        start, worst = tracemalloc.get_traced_memory()[0], 0
        for i in range(count):
            sentence = emoji_text(i, chars(i))
            value = sentence[::-1]
            await cache.set_many([(key(sentence), value)])
            del sentence, value
            assert cache.used_bytes <= cache.max_bytes
            worst = max(worst, tracemalloc.get_traced_memory()[0] - start)
    finally:
        tracemalloc.stop()
    return worst


async def test_a_flood_of_large_distinct_entries_retains_no_more_than_the_budget():
    budget = 2_000_000
    cache = LruCache(max_bytes=budget, max_entry_chars=10_000)
    worst = await flood(cache, 1_000, lambda i: 5_000)  # ~20 MB of translations through a 2 MB cache
    assert len(cache) == budget // entry_bytes(emoji_text(0, 5_000)[::-1])  # it is full, not empty
    assert worst <= budget + 16_384


@pytest.mark.parametrize("budget", [300_000, 1_000_000, 2_000_000])
async def test_entry_overhead_covers_what_small_entries_really_cost(budget):
    # With short sentences the dict's bookkeeping, not the text, is most of an entry's cost: this
    # checks ENTRY_OVERHEAD against the real table through its growth cycle under churn.
    cache = LruCache(max_bytes=budget)
    worst = await flood(cache, 6 * budget // 300, lambda i: 10 + i % 60)
    assert len(cache) > budget // (ENTRY_OVERHEAD + 400)
    assert worst <= budget + 16_384


RSS_FLOOD = textwrap.dedent(
    """
    import asyncio, gc, json, random, sys
    from service.cache import LruCache

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    async def main(budget, total, low, high):
        cache = LruCache(max_bytes=budget, max_entry_chars=1_000_000)
        rng, inserted, i = random.Random(1), 0, 0
        before = peak = rss()
        while inserted < total:
            sentence = f"{i} " + "😀🎉" * (rng.randint(low, high) // 2)
            value = sentence[::-1]
            await cache.set_many([(("en", "fr", sentence), value)])
            inserted += sys.getsizeof(value)
            i += 1
            if i % 256 == 0:
                peak = max(peak, rss())
        del sentence, value
        gc.collect()
        print(json.dumps({"inserts": i, "entries": len(cache), "used": cache.used_bytes,
                          "growth": rss() - before, "peak_growth": max(peak, rss()) - before}))

    asyncio.run(main(*map(int, sys.argv[1:])))
    """
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize(
    ("total", "low", "high"),
    [(500_000_000, 50, 20_000), (150_000_000, 10, 200)],  # mixed large texts; many short sentences
    ids=["large-mixed", "short"],
)
def test_rss_grows_by_no_more_than_the_budget_under_a_flood(total, low, high):
    budget = 50_000_000
    result = subprocess.run(
        [sys.executable, "-c", RSS_FLOOD, str(budget), str(total), str(low), str(high)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    measured = json.loads(result.stdout)
    assert measured["used"] <= budget
    # Measured: 49-54 MB of growth for 500 MB of large mixed texts, 48 MB for short sentences.
    # The margin is the allocator's fragmentation between differently sized texts.
    assert measured["peak_growth"] <= budget * 1.15, measured


# --- Redis, faked --------------------------------------------------------------------------------


class FakeRedis:
    """Stands in for redis.asyncio.Redis: a dict, and a switch that makes every call fail."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.failing = False
        self.calls = 0
        self.closed = False

    async def mget(self, keys):
        self._call()
        return [self.data.get(k) for k in keys]

    def pipeline(self, transaction=True):
        return FakePipeline(self)

    async def aclose(self):
        self.closed = True

    def _call(self):
        self.calls += 1
        if self.failing:
            raise ConnectionError("connection refused")


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis, self._pending = redis, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def set(self, name, value, ex=None):
        assert ex is not None  # every entry expires
        self._pending.append((name, value))

    async def execute(self):
        self._redis._call()
        self._redis.data.update(self._pending)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def redis_cache(fake: FakeRedis, clock=None, statuses=None, **local) -> RedisCache:
    return RedisCache(
        namespace="model-a",
        local=LruCache(**local),
        ttl_seconds=60,
        client=fake,
        clock=clock or FakeClock(),
        on_status=(statuses.append if statuses is not None else lambda up: None),
    )


async def test_values_from_redis_fill_the_local_lru():
    fake = FakeRedis()
    first, second = redis_cache(fake), redis_cache(fake)  # two replicas, one Redis
    await first.set_many([(key("hello"), "bonjour")])

    assert await second.get_many([key("hello"), key("other")]) == ["bonjour", None]
    assert fake.calls == 2  # first's write, second's read

    fake.failing = True  # the second lookup never reaches Redis: the local LRU has it now
    assert await second.get_many([key("hello")]) == ["bonjour"]
    assert fake.calls == 2


async def test_redis_keys_are_the_shared_digest_under_the_model_namespace():
    fake = FakeRedis()
    sentence = "a sentence"
    await redis_cache(fake).set_many([(key(sentence), "une phrase")])
    [stored] = fake.data
    assert stored.endswith(":" + cache_key(key(sentence)).hex())
    assert sentence not in stored
    other_model = RedisCache(namespace="model-b", local=LruCache(), ttl_seconds=60, client=fake)
    assert await other_model.get_many([key(sentence)]) == [None]


async def test_over_long_sentences_skip_redis_too():
    fake = FakeRedis()
    cache = redis_cache(fake, max_entry_chars=5)
    await cache.set_many([(key("too long"), "v")])
    assert await cache.get_many([key("too long")]) == [None]
    assert fake.calls == 0 and fake.data == {}


async def test_an_outage_is_reported_skipped_during_the_back_off_and_recovered(caplog):
    fake, clock, statuses = FakeRedis(), FakeClock(), []
    cache = redis_cache(fake, clock, statuses)
    fake.failing = True
    caplog.set_level(logging.INFO, logger="service.cache")

    # A failing call: answered without Redis, status down, one warning.
    assert await cache.get_many([key("a")]) == [None]
    await cache.set_many([(key("b"), "v-b")])  # inside the back-off: not tried, but cached locally
    assert fake.calls == 1 and statuses == [False]
    assert await cache.get_many([key("b")]) == ["v-b"]

    clock.now += RedisCache.BACKOFF_SECONDS - 0.01
    assert await cache.get_many([key("a")]) == [None]
    assert fake.calls == 1  # still in the back-off window

    clock.now += 0.02  # the window is over; Redis is tried again and still fails
    assert await cache.get_many([key("a")]) == [None]
    assert fake.calls == 2 and statuses == [False, False]  # each failure is counted (cache_errors)
    clock.now += RedisCache.BACKOFF_SECONDS - 0.01  # and each failure starts a new back-off
    assert await cache.get_many([key("a")]) == [None]
    assert fake.calls == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "redis cache unavailable" in warnings[0].getMessage()

    fake.failing = False
    await redis_cache(fake).set_many([(key("a"), "v-a")])  # another replica translated it meanwhile
    clock.now += RedisCache.BACKOFF_SECONDS
    assert await cache.get_many([key("a")]) == ["v-a"]
    assert statuses[-1] is True
    assert any(r.getMessage() == "redis cache is back" for r in caplog.records)


async def test_a_failed_write_starts_the_back_off_too():
    fake, clock, statuses = FakeRedis(), FakeClock(), []
    cache = redis_cache(fake, clock, statuses)
    fake.failing = True

    await cache.set_many([(key("a"), "v-a")])
    assert fake.calls == 1 and statuses == [False]
    assert await cache.get_many([key("a"), key("b")]) == ["v-a", None]  # the local LRU kept it; Redis left alone
    assert fake.calls == 1

    fake.failing = False
    clock.now += RedisCache.BACKOFF_SECONDS
    await cache.set_many([(key("c"), "v-c")])
    assert fake.calls == 2 and statuses == [False, True]
    assert list(fake.data.values()) == [b"v-c"]


async def test_close_closes_the_client():
    fake = FakeRedis()
    cache = redis_cache(fake)
    await cache.set_many([(key("a"), "v")])
    await cache.close()
    assert fake.closed
