"""Texts in, texts out: detect -> segment -> admit -> cache -> tokenize -> batcher -> detokenize -> cache -> join.

fromLang "auto": each text's language is detected on its own (service/detect.py), so one request
may mix languages; its sentences are cached under the detected language and share engine calls with
every other pair. In explicit mode, every `check_every`-th sentence is detected too, to count
clients that send another language than they declare (translation_language_mismatches_total).

Refuse before work: the sentence count is known right after splitting, so a request that cannot fit
the queue is refused (413 if it never could, 429 if not now) before any cache lookup or tokenizing;
under overload a refusal then costs microseconds and the event loop stays free for accepted work.

The event loop only routes: a large request (service/offload.py decides, once per request) is split,
tokenized and joined in worker threads, so one big request never stalls the others (or /healthz).
Small requests, nearly all of them, stay inline, where a thread hop would cost more than the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service import segment
from service.batcher import Batcher, BatcherClosed, QueueFull, QueueTimeout
from service.cache import Cache
from service.detect import Detection, LanguageDetector
from service.engine import Engine, Job, Translation
from service.errors import (
    RETRY_AFTER_SECONDS,
    AtCapacity,
    EngineFailure,
    NotServing,
    QueueWaitExpired,
    TooMuchWork,
    UnsupportedSource,
)
from service.languages import AUTO, name
from service.metrics import Metrics
from service.offload import run_sized

# A sampled sentence counts as a mismatch only when the detector is this sure: short sentences and
# names are often guessed wrong with low confidence, and would make the signal noise.
MISMATCH_CONFIDENCE = 0.8


class SentenceAdmission(Protocol):
    """The request's admission permit (service/admission.py): room for its sentences, or a ServiceError."""

    def take_sentences(self, sentences: int) -> None: ...


@dataclass(frozen=True)
class PipelineResult:
    texts: list[str]
    sentences: int
    cache_hits: int
    input_tokens: int
    output_tokens: int
    queue_seconds: float
    inference_seconds: float
    detections: list[Detection] | None = None  # auto mode: one per text


@dataclass(frozen=True)
class _Prepared:
    languages: list[str]  # each text's source language
    segmented: list[segment.Segmented]
    unique: list[tuple[str, str]]  # distinct (language, sentence) pairs, in order
    detections: list[Detection] | None


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        batcher: Batcher[Job, Translation],
        cache: Cache,
        metrics: Metrics,
        max_queue: int,
        detector: LanguageDetector | None = None,
        check_every: int = 0,
    ):
        self._detector = detector
        self._check_every = check_every if detector is not None else 0
        self._sampled = 0  # sentences seen in explicit mode, for the 1-in-check_every sample
        self._engine = engine
        self._batcher = batcher
        self._cache = cache
        self._metrics = metrics
        self._max_queue = max_queue

    async def translate(
        self, from_lang: str, to_lang: str, texts: list[str], admission: SentenceAdmission, *, size: int
    ) -> PipelineResult:
        """`from_lang` may be AUTO: then each text's language is detected (UnsupportedSource if the
        model lacks it) and the result carries the detections. `admission` is asked for room once the
        sentences are counted; `size` (the request's bytes) decides where the CPU work runs. Raises the
        ServiceError that says why a request is refused or failed (service/errors.py)."""
        prepared = await run_sized(size, self._prepare, texts, from_lang)
        admission.take_sentences(len(prepared.unique))
        self._metrics.count_sentences(prepared.unique, from_lang, to_lang)
        return await self._translate(to_lang, prepared, size)

    def detect(self, texts: list[str]) -> list[Detection]:
        """Each text's language (POST /detect); CPU work: callers run large requests in a thread."""
        if self._detector is None:
            raise RuntimeError("language detection is not loaded")
        detections = [self._detector.detect(text) for text in texts]
        self._metrics.count_detections(detections)
        return detections

    def _prepare(self, texts: list[str], from_lang: str) -> _Prepared:
        detections = None
        if from_lang == AUTO:
            detections = self.detect(texts)
            for index, detection in enumerate(detections):
                if detection.outcome == "unsupported":
                    raise UnsupportedSource(index, detection.language, name(detection.language), detection.confidence)
            languages = [detection.language for detection in detections]
        else:
            languages = [from_lang] * len(texts)
        # The source language picks the abbreviation rules ("z. B." in German, "p. ej." in Spanish).
        segmented = [segment.split(text, language=language) for text, language in zip(texts, languages)]
        # Each distinct sentence is looked up, translated and cached once per request.
        unique = list(dict.fromkeys((lang, s) for lang, seg in zip(languages, segmented) for s in seg.sentences))
        if detections is None and self._check_every:
            self._check_sample(unique, from_lang)
        return _Prepared(languages, segmented, unique, detections)

    def _check_sample(self, unique: list[tuple[str, str]], declared: str) -> None:
        """Detects every check_every-th sentence of the running count; a cheap drift signal."""
        assert self._detector is not None
        every, first = self._check_every, self._sampled
        self._sampled += len(unique)
        for index in range(-first % every, len(unique), every):
            detection = self._detector.detect(unique[index][1])
            mismatch = (
                detection.outcome != "fallback"
                and detection.language != declared
                and detection.confidence >= MISMATCH_CONFIDENCE
            )
            self._metrics.count_language_check(mismatch)

    async def _translate(self, to_lang: str, prepared: _Prepared, size: int) -> PipelineResult:
        unique = prepared.unique
        keys = [(lang, to_lang, sentence) for lang, sentence in unique]
        found = await self._cache.get_many(keys)
        misses = [pair for pair, value in zip(unique, found) if value is None]
        self._metrics.cache_hits.inc(len(unique) - len(misses))
        self._metrics.cache_misses.inc(len(misses))

        jobs_per_sentence = await run_sized(size, _encode_all, self._engine, misses, to_lang)
        jobs = [job for chunk in jobs_per_sentence for job in chunk]
        if len(jobs) > self._max_queue:  # long sentences cut into chunks can still overflow it
            raise self._too_large(len(jobs))
        try:
            outcomes = await self._batcher.submit(jobs) if jobs else []
        except QueueFull:
            raise _at_capacity() from None
        except QueueTimeout as error:
            raise QueueWaitExpired(f"the service is behind: {error}; retry shortly", retry_after=RETRY_AFTER_SECONDS) from None
        except BatcherClosed as error:
            raise NotServing(str(error), retry_after=RETRY_AFTER_SECONDS) from None
        except Exception as error:  # an engine failure fails this request's batch only
            raise EngineFailure(f"translation failed ({error.__class__.__name__}: {error})") from error

        glue = "" if to_lang in segment.NO_SPACE_LANGUAGES else " "
        translated: dict[tuple[str, str], str] = {}
        position = 0
        for pair, chunk in zip(misses, jobs_per_sentence):
            parts = outcomes[position : position + len(chunk)]
            translated[pair] = glue.join(outcome.value.text for outcome in parts)
            position += len(chunk)
        await self._cache.set_many([((lang, to_lang, s), t) for (lang, s), t in translated.items()])
        for pair, value in zip(unique, found):
            if value is not None:
                translated[pair] = value

        joined = await run_sized(size, _join_all, prepared.languages, prepared.segmented, translated, to_lang)
        return PipelineResult(
            texts=joined,
            sentences=len(unique),
            cache_hits=len(unique) - len(misses),
            input_tokens=sum(len(job.source) for job in jobs),
            output_tokens=sum(len(outcome.value.tokens) for outcome in outcomes),
            queue_seconds=max((o.queue_seconds for o in outcomes), default=0.0),
            inference_seconds=max((o.inference_seconds for o in outcomes), default=0.0),
            detections=prepared.detections,
        )

    def _too_large(self, sentences: int) -> TooMuchWork:
        return TooMuchWork(f"the texts make {sentences} sentences to translate; at most {self._max_queue} fit in one request")


def _at_capacity() -> AtCapacity:
    return AtCapacity("the service is at capacity; retry shortly", retry_after=RETRY_AFTER_SECONDS)


def _encode_all(engine: Engine, pairs: list[tuple[str, str]], to_lang: str) -> list[list[Job]]:
    return [engine.encode(sentence, lang, to_lang) for lang, sentence in pairs]


def _join_all(
    languages: list[str], segmented: list[segment.Segmented], translated: dict[tuple[str, str], str], to_lang: str
) -> list[str]:
    return [
        segment.join(seg, [translated[(lang, s)] for s in seg.sentences], to_lang)
        for lang, seg in zip(languages, segmented)
    ]
