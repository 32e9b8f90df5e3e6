"""Whole documents within the documented limits, on the CPU and GPU defaults, and fair scheduling beside them:
the queue bounds load (windows), never the size of a request."""

from __future__ import annotations

import asyncio
import random

import pytest

from loadtest.toy_task import expected_translation, random_sentence
from service.settings import DEVICE_DEFAULTS
from tests.helpers import AppClient, SlowEngine, build_app, metric_value, until

# Each device's queue and batch defaults, run on the CPU engine (the toy model's answers do not depend on them).
DEFAULTS = {device: {name: DEVICE_DEFAULTS[device][name] for name in ("max_queue", "max_batch_size", "max_batch_tokens")}
            for device in DEVICE_DEFAULTS}


def document(rng: random.Random, chars: int) -> tuple[str, list[str]]:
    """A text of just under `chars` characters of toy sentences, and its sentences."""
    sentences: list[str] = []
    while True:
        sentence = random_sentence(rng, min_words=3, max_words=8, dot_probability=1.0)
        if sum(len(s) + 1 for s in sentences) + len(sentence) > chars:
            return " ".join(sentences), sentences
        sentences.append(sentence)


def expected_document(sentences: list[str], to_lang: str) -> str:
    return " ".join(expected_translation(sentence, to_lang) for sentence in sentences)


@pytest.mark.slow
@pytest.mark.parametrize("device", sorted(DEFAULTS))
async def test_a_19000_character_text_is_translated_whole_and_exactly(toy_model_dir, device):
    rng = random.Random(19_000)
    text, sentences = document(rng, 19_000)
    assert 18_900 < len(text) <= 19_000 and len(sentences) > 500  # far above the CPU queue of 128
    async with AppClient(build_app(toy_model_dir, **DEFAULTS[device])) as client:
        response = await client.translate("en", "fr", [text])
        assert response.status_code == 200, response.text
        assert response.json()["result"][0]["text"] == expected_document(sentences, "fr")
        metrics = (await client.http.get("/metrics")).text
        # Fed to the engine a window at a time: never more than two batches of it queued.
        assert metric_value(metrics, "translation_batch_size_count") >= len(set(sentences)) / DEFAULTS[device]["max_batch_size"]
        assert client.runtime.admission.reserved == 0 and client.runtime.serving.batcher.queue_depth == 0


@pytest.mark.slow
@pytest.mark.parametrize("device", sorted(DEFAULTS))
async def test_128_records_of_12_sentences_are_translated_exactly_in_order(toy_model_dir, device):
    rng = random.Random(128)
    records = [[random_sentence(rng, min_words=2, max_words=6, dot_probability=1.0) for _ in range(12)] for _ in range(128)]
    async with AppClient(build_app(toy_model_dir, **DEFAULTS[device])) as client:
        response = await client.translate("en", "de", [" ".join(record) for record in records])
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert [item["id"] for item in result] == [str(i) for i in range(128)]
        assert [item["text"] for item in result] == [expected_document(record, "de") for record in records]


async def test_a_document_larger_than_the_queue_waits_for_room_instead_of_being_refused(toy_model_dir):
    # A queue of 8 and batches of 2: a request holds a window of 4; a 40-sentence document runs in ten windows.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.02), max_queue=8, max_batch_size=2, inter_threads=1)
    rng = random.Random(40)
    sentences = [random_sentence(rng, min_words=2, max_words=5, dot_probability=1.0) for _ in range(40)]
    async with AppClient(app) as client:
        client.engine.batches.clear()
        task = asyncio.create_task(client.translate("en", "fr", [" ".join(sentences)]))
        await until(lambda: client.runtime.admission.reserved == 4, what="the document's window reserved")
        depths = []
        while not task.done():
            depths.append(client.runtime.serving.batcher.queue_depth)
            await asyncio.sleep(0.005)
        assert max(depths) <= 4  # never more than its window queued, however long it is
        assert (await task).json()["result"][0]["text"] == expected_document(sentences, "fr")
        assert len(client.engine.batches) >= 20 and all(len(batch) <= 2 for batch in client.engine.batches)
        assert client.runtime.admission.reserved == 0


async def test_a_full_queue_still_refuses_new_work_with_429(toy_model_dir):
    # The queue bound stays overload protection: one sentence runs, two wait in a queue of 2; the next gets 429,
    # while a document already admitted waits for room for its later windows instead of failing half-way.
    app = build_app(toy_model_dir, wrap_engine=lambda e: SlowEngine(e, 0.2), max_queue=2, max_batch_size=1, inter_threads=1)
    text = " ".join(f"alpha bravo {w}." for w in ("charlie", "delta", "echo", "golf", "hotel", "india"))
    async with AppClient(app) as client:
        document = asyncio.create_task(client.translate("en", "fr", [text]))
        await until(lambda: client.engine.batches, what="the document's first sentence running")
        singles = [asyncio.create_task(client.translate("en", "fr", [f"{w} mike."])) for w in ("kilo",)]
        await until(lambda: client.runtime.serving.batcher.queue_depth == 2, what="the queue full")
        refused = await client.translate("en", "fr", ["november oscar."])
        assert refused.status_code == 429
        assert refused.json()["error"] == {"code": "overloaded", "message": "the service is at capacity; retry shortly"}
        assert [(await task).json()["result"][0]["text"] for task in singles] == ["mike kilo."]
        assert (await document).json()["result"][0]["text"] == " ".join(
            f"{w} bravo alpha." for w in ("charlie", "delta", "echo", "golf", "hotel", "india")
        )
        assert (await client.translate("en", "fr", ["november oscar."])).json()["result"][0]["text"] == "oscar november."


async def probe_beside_documents(model_dir, scheduling: str) -> tuple[int, str]:
    """Four 30-sentence documents keep the queue busy; then one single-sentence request: how many engine calls ran
    while it was served, and the metrics afterwards."""
    app = build_app(model_dir, wrap_engine=lambda e: SlowEngine(e, 0.05), max_queue=256, max_batch_size=4,
                    inter_threads=1, scheduling=scheduling)
    rng = random.Random(4)
    documents = [[random_sentence(rng, min_words=2, max_words=5, dot_probability=1.0) for _ in range(30)] for _ in range(4)]
    async with AppClient(app) as client:
        client.engine.batches.clear()
        bulk = [asyncio.create_task(client.translate("en", "fr", [" ".join(d)])) for d in documents]
        await until(lambda: client.runtime.serving.batcher.queue_depth >= 16, what="the documents queued")
        batches_before = len(client.engine.batches)
        probe = await client.translate("en", "fr", ["november oscar."])
        assert probe.json()["result"][0]["text"] == "oscar november."
        waited = len(client.engine.batches) - batches_before
        for task, sentences in zip(bulk, documents):
            assert (await task).json()["result"][0]["text"] == expected_document(sentences, "fr")
        return waited, (await client.http.get("/metrics")).text


async def test_an_interactive_request_is_served_while_documents_are_queued(toy_model_dir):
    fair, metrics = await probe_beside_documents(toy_model_dir, "fair")
    fifo, _ = await probe_beside_documents(toy_model_dir, "fifo")
    # First come, first served: every queued sentence (16 or more, 4 per batch) runs before the probe's. Fair: the
    # batch running when it arrived, perhaps the one formed while it was being prepared, then its own.
    assert fair <= 3 < 5 <= fifo
    assert metric_value(metrics, "translation_request_queue_seconds_count", 'size="1"') == 1
    assert metric_value(metrics, "translation_request_queue_seconds_count", 'size="17-128"') == 4
