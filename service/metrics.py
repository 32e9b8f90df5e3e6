"""Prometheus metrics of the service (names fixed in docs/contracts.md; k8s alerts use them).

Each app owns its registry, so several apps (tests) can live in one process. Phases are timed
separately (queue, inference, whole request) and sizes use power-of-two buckets.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.cache import LruCache
from service.detect import OUTCOMES, Detection
from service.languages import AUTO

# Seconds: from a cache hit (sub-millisecond) to a long document on a busy CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
POWERS_OF_TWO = tuple(float(2**i) for i in range(0, 11))  # 1 .. 1024
TOKEN_BUCKETS = tuple(float(2**i) for i in range(2, 15))  # 4 .. 16384
# Output/input tokens of one sentence: a healthy pair sits near 1 (0.6-1.6 for most language pairs);
# a model that stops early or loops shows up at the ends.
# Request size classes for queue-wait fairness, by distinct sentences: (at most, label).
SIZE_CLASSES = ((1, "1"), (16, "2-16"), (128, "17-128"), (float("inf"), "129+"))
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "translation_requests",
            "Translation requests by HTTP status and reason (ok, or the error code: a 429 is overloaded or rate_limited)",
            ["status", "reason"], registry=registry,
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
        self.request_queue = Histogram(
            "translation_request_queue_seconds",
            "Longest wait of a request's sentences for an engine call, by request size in distinct sentences (fairness: "
            "small requests should not wait behind large ones)", ["size"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self._request_queue_children = {name: self.request_queue.labels(size=name) for _, name in SIZE_CLASSES}
        self.queue_depth = Gauge("translation_queue_depth", "Sentences waiting for the engine", registry=registry)
        self.queue_capacity = Gauge(
            "translation_queue_capacity", "Sentences that may wait before requests get 429", registry=registry
        )
        self.in_flight = Gauge(
            "translation_in_flight_requests", "Requests whose body is in, being served", registry=registry
        )
        self.pending_bodies = Gauge(
            "translation_pending_bodies", "Requests admitted on their head whose body is still arriving", registry=registry
        )
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
        self._requests_by_status: dict[tuple[int, str], Counter] = {}
        self.detect_requests = Counter(
            "translation_detect_requests", "Language detection requests (POST /detect) by HTTP status and reason",
            ["status", "reason"], registry=registry,
        )
        self._detect_requests_by_status: dict[tuple[int, str], Counter] = {}
        self._drift_metrics(registry)

    def _drift_metrics(self, registry: CollectorRegistry) -> None:
        """What arrives and what comes out, to notice drift (docs/contracts.md; alerts in k8s/components/monitoring)."""
        self.source_sentences = Counter(
            "translation_source_sentences", "Distinct sentences per request by source language (detected in auto mode)",
            ["language", "mode"], registry=registry,
        )
        self.target_sentences = Counter(
            "translation_target_sentences", "Distinct sentences per request by target language", ["language"],
            registry=registry,
        )
        self.source_length = Histogram(
            "translation_source_length_tokens", "SentencePiece pieces of each sentence the engine translates",
            buckets=POWERS_OF_TWO, registry=registry,
        )
        self.length_ratio = Histogram(
            "translation_length_ratio", "Output tokens / input tokens of each sentence the engine translates",
            buckets=RATIO_BUCKETS, registry=registry,
        )
        self.source_pieces = Counter(
            "translation_source_pieces", "SentencePiece pieces of the sentences the engine translates", registry=registry
        )
        self.unknown_pieces = Counter(
            "translation_unknown_pieces", "Of translation_source_pieces_total, those the model's vocabulary lacks",
            registry=registry,
        )
        self.language_checks = Counter(
            "translation_language_checks", "Explicit-mode sentences sampled for language detection", registry=registry
        )
        self.language_mismatches = Counter(
            "translation_language_mismatches",
            "Sampled explicit-mode sentences confidently detected as another language than fromLang", registry=registry,
        )
        self.detections = Counter(
            "translation_language_detections", "Texts run through language detection, by outcome", ["outcome"],
            registry=registry,
        )
        self.build_info = Info(
            "translation_build", "The service version and the model it serves", registry=registry
        )
        self._sentence_children: dict[tuple[str, str], Counter] = {}
        self._target_children: dict[str, Counter] = {}
        self._detection_children = {outcome: self.detections.labels(outcome=outcome) for outcome in OUTCOMES}

    def count_sentences(self, pairs: Sequence[tuple[str, str]], from_lang: str, to_lang: str) -> None:
        """A request's distinct (source language, sentence) pairs; `from_lang` "auto" counts them as auto mode."""
        if not pairs:
            return
        if from_lang == AUTO:
            for language, count in collections.Counter(language for language, _ in pairs).items():
                self._sentence_child(language, "auto").inc(count)
        else:
            self._sentence_child(from_lang, "explicit").inc(len(pairs))
        _child(self._target_children, self.target_sentences, to_lang, language=to_lang).inc(len(pairs))

    def _sentence_child(self, language: str, mode: str) -> Counter:
        return _child(self._sentence_children, self.source_sentences, (language, mode), language=language, mode=mode)

    def count_detections(self, detections: Iterable[Detection]) -> None:
        for outcome, count in collections.Counter(d.outcome for d in detections).items():
            self._detection_children[outcome].inc(count)

    def count_language_check(self, mismatch: bool) -> None:
        self.language_checks.inc()
        if mismatch:
            self.language_mismatches.inc()

    def observe_engine_sentences(self, lengths: Sequence[int], outputs: Sequence[int], unknown: int) -> None:
        """One engine call's sentences: source pieces (language token and </s> excluded) and output tokens."""
        for length, output in zip(lengths, outputs):
            self.source_length.observe(length)
            if length:
                self.length_ratio.observe(output / length)
        self.source_pieces.inc(sum(lengths))
        self.unknown_pieces.inc(unknown)

    def observe_request_queue(self, sentences: int, seconds: float) -> None:
        for limit, name in SIZE_CLASSES:
            if sentences <= limit:
                self._request_queue_children[name].observe(seconds)
                return

    def count_detect_request(self, status: int, reason: str) -> None:
        key = (status, reason)
        _child(self._detect_requests_by_status, self.detect_requests, key, status=str(status), reason=reason).inc()

    def count_request(self, status: int, reason: str) -> None:
        """One finished request (the labelled child is looked up once per status and reason, not per request)."""
        _child(self._requests_by_status, self.requests, (status, reason), status=str(status), reason=reason).inc()

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


def _child(children: dict[Any, Counter], metric: Counter, key: Any, **labels: str) -> Counter:
    """A labelled child, looked up in `children` (labels() costs a lock and a dict build per call)."""
    child = children.get(key)
    if child is None:
        child = children[key] = metric.labels(**labels)
    return child


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
