"""Prometheus metrics of the service (names fixed in docs/contracts.md; k8s alerts use them).

Each app owns its registry, so several apps (tests) can live in one process. Phases are timed
separately (queue, inference, whole request) and sizes use power-of-two buckets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.cache import LruCache

# Seconds: from a cache hit (sub-millisecond) to a long document on a busy CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
POWERS_OF_TWO = tuple(float(2**i) for i in range(0, 11))  # 1 .. 1024
TOKEN_BUCKETS = tuple(float(2**i) for i in range(2, 15))  # 4 .. 16384


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "translation_requests", "Translation requests by HTTP status", ["status"], registry=registry
        )
        self.request_duration = Histogram(
            "translation_request_duration_seconds", "Time to answer a translation request",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_duration = Histogram(
            "translation_queue_duration_seconds", "Time a sentence waited for an engine call",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.inference_duration = Histogram(
            "translation_inference_duration_seconds", "Duration of one engine call (translate_batch)",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "translation_batch_size", "Sentences per engine call", buckets=POWERS_OF_TWO, registry=registry
        )
        self.batch_tokens = Histogram(
            "translation_batch_tokens", "Source tokens per engine call", buckets=TOKEN_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge("translation_queue_depth", "Sentences waiting for the engine", registry=registry)
        self.queue_capacity = Gauge(
            "translation_queue_capacity", "Sentences that may wait before requests get 429", registry=registry
        )
        self.in_flight = Gauge("translation_in_flight_requests", "Translation requests being served", registry=registry)
        self.input_tokens = Counter("translation_input_tokens", "Source tokens translated by the engine", registry=registry)
        self.output_tokens = Counter("translation_output_tokens", "Target tokens produced by the engine", registry=registry)
        self.cache_hits = Counter("translation_cache_hits", "Sentences answered from the cache", registry=registry)
        self.cache_misses = Counter("translation_cache_misses", "Sentences not in the cache", registry=registry)
        self.cache_errors = Counter("translation_cache_errors", "Failed shared-cache (Redis) calls", registry=registry)
        self.cache_up = Gauge(
            "translation_cache_up", "1 while the shared cache answers (or none is configured), 0 in an outage",
            registry=registry,
        )
        self.ready = Gauge("translation_ready", "1 when ready for traffic, 0 while starting or draining", registry=registry)
        self.cache_up.set(1)
        self._engine_cpu = ThreadCpuCollector(
            "translation_engine_cpu_seconds",
            "CPU time of the engine's own threads (CTranslate2 workers); process_cpu_seconds_total minus this "
            "is what the HTTP edge and the pipeline cost",
        )
        registry.register(self._engine_cpu)
        self.cache_bytes = Gauge("translation_cache_bytes", "Memory the in-process cache holds (its accounting)", registry=registry)
        self.cache_entries = Gauge("translation_cache_entries", "Entries in the in-process cache", registry=registry)
        self.cache_max_bytes = Gauge("translation_cache_max_bytes", "The in-process cache's byte budget", registry=registry)
        self._cache_evictions = _CacheEvictions()
        registry.register(self._cache_evictions)
        self._requests_by_status: dict[int, Counter] = {}

    def count_request(self, status: int) -> None:
        """One finished request (the labelled child is looked up once per status, not per request)."""
        child = self._requests_by_status.get(status)
        if child is None:
            child = self._requests_by_status[status] = self.requests.labels(status=str(status))
        child.inc()

    def watch_cache(self, cache: LruCache) -> None:
        """The in-process cache's size against its byte budget, and its evictions."""
        self.cache_bytes.set_function(lambda: cache.used_bytes)
        self.cache_entries.set_function(lambda: len(cache))
        self.cache_max_bytes.set(cache.max_bytes)
        self._cache_evictions.cache = cache

    def watch_engine_threads(self, thread_ids: Iterable[int]) -> None:
        self._engine_cpu.watch(thread_ids)

    def cache_status(self, up: bool) -> None:
        self.cache_up.set(1 if up else 0)
        if not up:
            self.cache_errors.inc()


class ThreadCpuCollector(Collector):
    """A counter of the CPU seconds of some native threads of this process (Linux /proc; empty elsewhere).

    A thread that has ended keeps its last reading, so the counter never goes down.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        self._last: dict[int, float] = {}
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def watch(self, thread_ids: Iterable[int]) -> None:
        for tid in thread_ids:
            self._last.setdefault(tid, 0.0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        for tid in self._last:
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as handle:
                    # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
                    fields = handle.read().rpartition(b")")[2].split()
                self._last[tid] = (int(fields[11]) + int(fields[12])) / self._ticks
            except (OSError, IndexError, ValueError):
                pass
        family = CounterMetricFamily(self._name, self._documentation)
        family.add_metric([], sum(self._last.values()))
        yield family


class _CacheEvictions(Collector):
    """translation_cache_evictions_total, read from the cache's own running count."""

    cache: LruCache | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("translation_cache_evictions", "Entries evicted from the in-process cache to fit its budget")
        family.add_metric([], self.cache.evictions if self.cache is not None else 0)
        yield family
