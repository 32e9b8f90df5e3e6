"""Texts in, texts out: segment -> admit -> cache -> tokenize -> batcher -> detokenize -> cache -> join.

Refuse before work: the sentence count is known right after splitting, so a request that cannot fit
the queue is refused (413 if it never could, 429 if not now) before any cache lookup or tokenizing;
under overload a refusal then costs microseconds and the event loop stays free for accepted work.

The event loop only routes: a request with more than INLINE_CHARS of text is split, tokenized and
joined in a worker thread, so one big request never stalls the others (or /healthz). Small requests,
nearly all of them, stay inline, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from service import segment
from service.access import FairUse
from service.batcher import Batcher, QueueFull, QueueTimeout
from service.cache import Cache
from service.engine import Engine, Job, Translation
from service.metrics import Metrics
from service.schema import Overloaded, PayloadTooLarge, QueueExpired, RateLimited

RETRY_AFTER_SECONDS = 1
# Above this many characters in a request, its CPU work leaves the event loop. Splitting and tokenizing
# run at a few hundred ns per character, so 4,096 characters stay well under a millisecond inline.
INLINE_CHARS = 4096

T = TypeVar("T")


async def in_thread(work: Callable[..., T], *args) -> T:
    """`work(*args)` in a worker thread, for large requests; small ones call `work` inline (no coroutine,
    no thread hop: on the hot path both cost more than the work)."""
    return await asyncio.to_thread(work, *args)


@dataclass(frozen=True)
class PipelineResult:
    texts: list[str]
    sentences: int
    cache_hits: int
    input_tokens: int
    output_tokens: int
    queue_seconds: float
    inference_seconds: float


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        batcher: Batcher[Job, Translation],
        cache: Cache,
        metrics: Metrics,
        max_queue: int,
        fair_use: FairUse | None = None,
    ):
        self._fair_use = fair_use or FairUse(rate=0, burst=1, max_sentences=0)
        self._engine = engine
        self._batcher = batcher
        self._cache = cache
        self._metrics = metrics
        self._max_queue = max_queue

    async def translate(self, from_lang: str, to_lang: str, texts: list[str], client: str = "") -> PipelineResult:
        large = sum(map(len, texts)) > INLINE_CHARS
        segmented = await in_thread(_split_all, texts, from_lang) if large else _split_all(texts, from_lang)
        # Each distinct sentence is looked up, translated and cached once per request.
        unique = list(dict.fromkeys(s for seg in segmented for s in seg.sentences))
        self._admit(len(unique))
        refusal = self._fair_use.hold_sentences(client, len(unique))
        if refusal is not None:
            raise RateLimited(f"{refusal.reason}; retry shortly", headers={"Retry-After": str(refusal.retry_after)})
        try:
            return await self._translate(from_lang, to_lang, segmented, unique, large)
        finally:
            self._fair_use.release_sentences(client, len(unique))

    async def _translate(
        self, from_lang: str, to_lang: str, segmented: list[segment.Segmented], unique: list[str], large: bool
    ) -> PipelineResult:
        keys = [(from_lang, to_lang, sentence) for sentence in unique]
        found = await self._cache.get_many(keys)
        misses = [sentence for sentence, value in zip(unique, found) if value is None]
        self._metrics.cache_hits.inc(len(unique) - len(misses))
        self._metrics.cache_misses.inc(len(misses))

        encode_args = (self._engine, misses, from_lang, to_lang)
        jobs_per_sentence = await in_thread(_encode_all, *encode_args) if large else _encode_all(*encode_args)
        jobs = [job for chunk in jobs_per_sentence for job in chunk]
        if len(jobs) > self._max_queue:  # long sentences cut into chunks can still overflow it
            raise self._too_large(len(jobs))
        try:
            outcomes = await self._batcher.submit(jobs) if jobs else []
        except QueueFull:
            raise _overloaded() from None
        except QueueTimeout as error:
            raise QueueExpired(
                f"the service is behind: {error}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            ) from None

        glue = "" if to_lang in segment.NO_SPACE_LANGUAGES else " "
        translated, position = {}, 0
        for sentence, chunk in zip(misses, jobs_per_sentence):
            parts = outcomes[position : position + len(chunk)]
            translated[sentence] = glue.join(outcome.value.text for outcome in parts)
            position += len(chunk)
        await self._cache.set_many([((from_lang, to_lang, s), t) for s, t in translated.items()])
        for sentence, value in zip(unique, found):
            if value is not None:
                translated[sentence] = value

        join_args = (segmented, translated, to_lang)
        joined = await in_thread(_join_all, *join_args) if large else _join_all(*join_args)
        return PipelineResult(
            texts=joined,
            sentences=len(unique),
            cache_hits=len(unique) - len(misses),
            input_tokens=sum(len(job.source) for job in jobs),
            output_tokens=sum(len(outcome.value.tokens) for outcome in outcomes),
            queue_seconds=max((o.queue_seconds for o in outcomes), default=0.0),
            inference_seconds=max((o.inference_seconds for o in outcomes), default=0.0),
        )

    def _admit(self, sentences: int) -> None:
        if sentences > self._max_queue:
            raise self._too_large(sentences)
        if not self._batcher.has_room(sentences):
            raise _overloaded()

    def _too_large(self, sentences: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the texts make {sentences} sentences to translate; at most {self._max_queue} fit in one request"
        )


def _overloaded() -> Overloaded:
    return Overloaded("the service is at capacity; retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _split_all(texts: list[str], language: str) -> list[segment.Segmented]:
    # The source language picks the abbreviation rules ("z. B." in German, "p. ej." in Spanish).
    return [segment.split(text, language=language) for text in texts]


def _encode_all(engine: Engine, sentences: list[str], from_lang: str, to_lang: str) -> list[list[Job]]:
    return [engine.encode(sentence, from_lang, to_lang) for sentence in sentences]


def _join_all(segmented: list[segment.Segmented], translated: dict[str, str], to_lang: str) -> list[str]:
    return [segment.join(seg, [translated[s] for s in seg.sentences], to_lang) for seg in segmented]
