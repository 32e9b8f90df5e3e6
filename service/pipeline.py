"""Texts in, texts out: detect -> segment -> admit -> cache -> tokenize -> batcher -> detokenize -> cache -> join.

fromLang "auto": each text's language is detected on its own (service/detect.py), so one request
may mix languages; its sentences are cached under the detected language and share engine calls with
every other pair. In explicit mode, every `check_every`-th sentence is detected too, to count
clients that send another language than they declare (translation_language_mismatches_total).

Refuse before work: the sentence count is known right after splitting, so a request whose window of
the queue is not free now is refused (429) before any cache lookup or tokenizing; under overload a
refusal then costs microseconds and the event loop stays free for accepted work. A request of any size
within the documented limits is then fed to the engine a window at a time (`_translate_misses`).

The event loop only routes: a large request (service/offload.py decides, once per request) is split,
tokenized and joined in worker threads, so one big request never stalls the others (or /healthz).
Small requests, nearly all of them, stay inline, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import orjson

from service import markup, segment
from service.alignment import join_alignments, word_alignment, word_count
from service.batcher import Batcher
from service.cache import Cache
from service.detect import Detection, LanguageDetector
from service.engine import Engine, Job, Translation
from service.errors import UnsupportedSource
from service.feeder import Chunks, Wanted, feed
from service.languages import AUTO, name
from service.metrics import Metrics
from service.offload import run_sized
from service.tracing import NO_SPAN, Tracing

# A sampled sentence counts as a mismatch only when the detector is this sure: short sentences and
# names are often guessed wrong with low confidence, and would make the signal noise.
MISMATCH_CONFIDENCE = 0.8


class SentenceAdmission(Protocol):
    """The request's admission permit (service/admission.py): room for its sentences, or a ServiceError."""

    client: str

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
    alternatives: list[list[str]] | None = None  # when asked: up to N other translations per text


@dataclass(frozen=True)
class _Prepared:
    languages: list[str]  # each segmented piece's source language
    segmented: list[segment.Segmented]  # one per text, or in HTML one per translatable unit
    unique: list[tuple[str, str]]  # distinct (language, sentence) pairs, in order
    detections: list[Detection] | None
    plans: list[markup.HtmlPlan] | None = None  # HTML: one per text; its units are `segmented`, in order


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        batcher: Batcher[Job, Translation],
        cache: Cache,
        metrics: Metrics,
        window: int,
        detector: LanguageDetector | None = None,
        check_every: int = 0,
        fair: bool = True,
        patience: float = 30.0,
        tracing: Tracing | None = None,
    ):
        self._detector = detector
        self._check_every = check_every if detector is not None else 0
        self._sampled = 0  # sentences seen in explicit mode, for the 1-in-check_every sample
        self._engine = engine
        self._batcher = batcher
        self._cache = cache
        self._metrics = metrics
        self._window = window
        self._fair = fair  # False: every request joins one first-come queue (MT_SCHEDULING=fifo, for comparison)
        self._patience = patience  # how long a window may wait for room in the queue (the queue timeout)
        self._tracing = tracing  # None: off, and every step below skips it at the cost of one test

    async def translate(
        self,
        from_lang: str,
        to_lang: str,
        texts: list[str],
        admission: SentenceAdmission,
        *,
        size: int,
        alternatives: int = 0,
        html: bool = False,
    ) -> PipelineResult:
        """`from_lang` may be AUTO: then each text's language is detected (UnsupportedSource if the
        model lacks it) and the result carries the detections. `alternatives`: up to that many other
        translations per text. `html`: texts are HTML documents; only their text is translated, and the
        markup is kept (service/markup.py). `admission` is asked for room once the sentences are counted;
        `size` (the request's bytes) decides where the CPU work runs. Raises the ServiceError that says why
        a request is refused or failed (service/errors.py)."""
        prepared = await run_sized(size, self._prepare, texts, from_lang, html)
        asked_alternatives = alternatives
        if html:
            alternatives = 0  # not computed for HTML (as LibreTranslate): each text gets an empty list
        admission.take_sentences(len(prepared.unique))
        self._metrics.count_sentences(prepared.unique, from_lang, to_lang)
        result = await self._translate(to_lang, prepared, size, admission.client, alternatives)
        self._metrics.observe_request_queue(len(prepared.unique), result.queue_seconds)
        if html and asked_alternatives:
            result = dataclasses.replace(result, alternatives=[[] for _ in texts])
        return result

    def detect(self, texts: list[str]) -> list[Detection]:
        """Each text's language (POST /detect); CPU work: callers run large requests in a thread."""
        if self._detector is None:
            raise RuntimeError("language detection is not loaded")
        tracing = self._tracing if self._traced() is not None else None
        with tracing.span("detect language", texts=len(texts)) if tracing else NO_SPAN:
            detections = [self._detector.detect(text) for text in texts]
        self._metrics.count_detections(detections)
        return detections

    def _traced(self) -> object | None:
        """The request's span when tracing is on and this request is sampled, else None (its steps are not traced)."""
        return self._tracing.sampled() if self._tracing is not None else None

    def _prepare(self, texts: list[str], from_lang: str, html: bool) -> _Prepared:
        detections = None
        plans = [markup.extract(text) for text in texts] if html else None
        if from_lang == AUTO:
            # HTML is detected on its text, never its markup.
            detections = self.detect([markup.text_for_detection(text) for text in texts] if html else texts)
            for index, detection in enumerate(detections):
                if detection.outcome == "unsupported":
                    raise UnsupportedSource(index, detection.language, name(detection.language), detection.confidence)
            languages = [detection.language for detection in detections]
        else:
            languages = [from_lang] * len(texts)
        if plans is not None:  # the units of every document, each in its document's language
            languages = [language for language, plan in zip(languages, plans) for _ in plan.units]
            # Line breaks inside a unit are layout, not sentence ends: the words (and so the alignment) are kept.
            texts = [" ".join(unit.text.split()) for plan in plans for unit in plan.units]
        # The source language picks the abbreviation rules ("z. B." in German, "p. ej." in Spanish).
        segmented = [segment.split(text, language=language) for text, language in zip(texts, languages)]
        # Each distinct sentence is looked up, translated and cached once per request.
        unique = list(dict.fromkeys((lang, s) for lang, seg in zip(languages, segmented) for s in seg.sentences))
        if detections is None and self._check_every:
            self._check_sample(unique, from_lang)
        return _Prepared(languages, segmented, unique, detections, plans)

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

    async def _translate(
        self, to_lang: str, prepared: _Prepared, size: int, client: str, alternatives: int
    ) -> PipelineResult:
        unique = prepared.unique
        html = prepared.plans is not None
        # What is cached depends on what was asked: the text alone, the text and its word alignment (HTML), the
        # alternatives. Each has its own key: the target slot names the variant.
        main_slot = f"{to_lang}|html" if html else to_lang
        slots = [main_slot] + ([f"{to_lang}|alt{alternatives}"] if alternatives else [])
        keys = [(lang, slot, sentence) for slot in slots for lang, sentence in unique]
        request_span = self._traced()
        tracing = self._tracing if request_span is not None else None
        with tracing.span("cache lookup", keys=len(keys)) if tracing else NO_SPAN:
            found = await self._cache.get_many(keys)
        main_found, alt_found = found[: len(unique)], found[len(unique) :]
        wanted = [Wanted(lang, s, attention=html) for (lang, s), value in zip(unique, main_found) if value is None]
        wanted += [Wanted(lang, s, hypotheses=alternatives + 1) for (lang, s), value in zip(unique, alt_found) if value is None]
        self._metrics.cache_hits.inc(len(keys) - len(wanted))
        self._metrics.cache_misses.inc(len(wanted))

        chunks, work = await feed(
            self._batcher, self._engine, wanted, to_lang, window=self._window, size=size, client=client, fair=self._fair,
            patience=self._patience,
            tag=request_span,
        )
        if tracing:
            for queued_at, jobs, waited, engine_seconds in work.windows:
                engine_start = queued_at + int(waited * 1e9)
                tracing.record("queue", queued_at, engine_start, sentences=jobs)
                tracing.record("engine", engine_start, engine_start + int(engine_seconds * 1e9), sentences=jobs)
        glue = "" if to_lang in segment.NO_SPACE_LANGUAGES else " "
        computed = [_cache_value(w, parts, glue) for w, parts in zip(wanted, chunks)]
        await self._cache.set_many(
            [((w.language, main_slot if w.hypotheses == 1 else slots[1], w.sentence), v) for w, v in zip(wanted, computed)]
        )
        by_key = {(w.hypotheses, w.language, w.sentence): v for w, v in zip(wanted, computed)}
        mains = {pair: value if value is not None else by_key[(1, *pair)] for pair, value in zip(unique, main_found)}
        alts = (
            {pair: value if value is not None else by_key[(alternatives + 1, *pair)] for pair, value in zip(unique, alt_found)}
            if alternatives else None
        )
        texts, others = await run_sized(size, _compose, prepared, mains, alts, alternatives, to_lang)
        return PipelineResult(
            texts=texts,
            sentences=len(unique),
            cache_hits=len(keys) - len(wanted),
            input_tokens=work.input_tokens,
            output_tokens=work.output_tokens,
            queue_seconds=work.queue_seconds,
            inference_seconds=work.inference_seconds,
            detections=prepared.detections,
            alternatives=others,
        )


def _cache_value(wanted: Wanted, chunks: Chunks, glue: str) -> str:
    """What the cache keeps of a computed sentence: its text; or, in HTML, its text and word alignment; or, for
    alternatives, every hypothesis's text (JSON). A sentence cut into chunks is joined back."""
    if wanted.hypotheses > 1:
        hypotheses = [
            glue.join(t.hypotheses[k] if k < len(t.hypotheses) else t.text for _, t in chunks) for k in range(wanted.hypotheses)
        ]
        return orjson.dumps(hypotheses).decode()
    text = glue.join(translation.text for _, translation in chunks)
    if not wanted.attention:
        return text
    parts = [
        (word_count(job.pieces), word_count(t.tokens), word_alignment(job.pieces, t.tokens, t.attention or ()))
        for job, t in chunks
    ]
    return orjson.dumps({"text": text, "alignment": join_alignments(parts)}).decode()


def _compose(
    prepared: _Prepared,
    mains: dict[tuple[str, str], str],
    alts: dict[tuple[str, str], str] | None,
    alternatives: int,
    to_lang: str,
) -> tuple[list[str], list[list[str]] | None]:
    """The texts back from their sentences' translations: re-joined, or in HTML re-rendered around the markup;
    and each text's alternatives: the k-th is its sentences joined with each one's k-th hypothesis (its main
    translation where it has fewer), kept when it differs from the main text and from those before it."""
    if prepared.plans is not None:
        return _compose_html(prepared, mains, to_lang), None
    texts = _join_all(prepared.languages, prepared.segmented, mains, to_lang)
    if alts is None:
        return texts, None
    hypotheses = {pair: orjson.loads(value) for pair, value in alts.items()}
    others: list[list[str]] = []
    for lang, seg, main in zip(prepared.languages, prepared.segmented, texts):
        found: list[str] = []
        for k in range(alternatives + 1):
            picked = [hypotheses[(lang, s)][k] if k < len(hypotheses[(lang, s)]) else mains[(lang, s)] for s in seg.sentences]
            candidate = segment.join(seg, picked, to_lang)
            if candidate != main and candidate not in found and len(found) < alternatives:
                found.append(candidate)
        others.append(found)
    return texts, others


def _compose_html(prepared: _Prepared, mains: dict[tuple[str, str], str], to_lang: str) -> list[str]:
    assert prepared.plans is not None
    decoded = {pair: orjson.loads(value) for pair, value in mains.items()}
    units: list[markup.UnitTranslation] = []
    for lang, seg in zip(prepared.languages, prepared.segmented):
        sentences = [decoded[(lang, s)] for s in seg.sentences]
        text = segment.join(seg, [sentence["text"] for sentence in sentences], to_lang)
        alignment = join_alignments(
            (len(s.split()), len(sentence["text"].split()), [tuple(pair) for pair in sentence["alignment"]])
            for s, sentence in zip(seg.sentences, sentences)
        )
        units.append(markup.UnitTranslation(text, alignment))
    documents, start = [], 0
    for plan in prepared.plans:
        documents.append(markup.render(plan, units[start : start + len(plan.units)]))
        start += len(plan.units)
    return documents


def _join_all(
    languages: list[str], segmented: list[segment.Segmented], translated: dict[tuple[str, str], str], to_lang: str
) -> list[str]:
    return [
        segment.join(seg, [translated[(lang, s)] for s in seg.sentences], to_lang)
        for lang, seg in zip(languages, segmented)
    ]
