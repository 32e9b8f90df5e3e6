"""What the reliability steps share: the toy model, request bodies and their exact translations, health
checks, metrics, quantiles and the log."""

from __future__ import annotations

import http.client
import json
import sys
import time
from pathlib import Path

from loadtest.bench.server import Service  # noqa: F401 - re-exported for the steps
from loadtest.harness import metric_samples, proc_status
from loadtest.paths import ROOT
from loadtest.toy_task import WORDS, expected_translation

WORK_DIR = ROOT / "reports" / "reliability"
MODEL_DIR = WORK_DIR / "toy-int8"
# /healthz must answer this fast after every hostile request (and while the largest one is processed).
HEALTHZ_TARGET_MS = 100.0


def log(message: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_model(model_dir: Path = MODEL_DIR) -> Path:
    """The toy checkpoint converted to int8 (kept between runs)."""
    from loadtest.bench.run import ensure_toy_model

    ensure_toy_model(model_dir)
    return model_dir


def body(texts: list[str], from_lang: str = "en", to_lang: str = "fr", ids: list | None = None) -> dict:
    ids = ids if ids is not None else [str(i) for i in range(len(texts))]
    return {"payload": {"fromLang": from_lang, "toLang": to_lang,
                        "records": [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]}}


def toy_sentences(count: int, offset: int = 0) -> list[str]:
    """`count` distinct in-task sentences of 2 to 4 words (the first two spell the index in base 20),
    every other one with a final full stop: the toy model translates each exactly."""
    out = []
    for i in range(offset, offset + count):
        words = [WORDS[i % 20], WORDS[(i // 20) % 20]] + [WORDS[(i * 7 + k) % 20] for k in range((i // 400) % 3)]
        out.append(" ".join(words) + ("." if i % 2 else ""))
    return out


def exact(text: str, to_lang: str) -> str:
    return expected_translation(text, to_lang)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get(url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """GET on a fresh connection: (status, body, seconds including the connect)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - started
    finally:
        connection.close()


def post_json(url: str, document: dict, timeout: float = 30.0) -> tuple[int, dict | None]:
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=timeout)
    try:
        connection.request("POST", "/translation", json.dumps(document), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, None
    finally:
        connection.close()


def health(url: str, sentence: str = "alpha bravo") -> dict:
    """/healthz on a fresh connection (status and milliseconds), then one translation into fr, which must
    be exact (the toy model reverses the words)."""
    try:
        status, _, seconds = get(url, "/healthz", timeout=5)
    except OSError as error:
        return {"ok": False, "healthz_ms": float("nan"), "problem": f"/healthz failed: {error!r}"}
    problem = ""
    if status != 200:
        problem = f"/healthz answered {status}"
    elif seconds * 1000 > HEALTHZ_TARGET_MS:
        problem = f"/healthz took {seconds * 1000:.0f} ms"
    else:
        try:
            got, document = post_json(url, body([sentence]), timeout=10)
            if got == 429:  # a well-behaved client waits Retry-After (1 s) once: work of a client just gone may drain
                time.sleep(1.0)
                got, document = post_json(url, body([sentence]), timeout=10)
        except OSError as error:
            got, document = 0, None
            problem = f"translation failed: {error!r}"
        expected = {"result": [{"id": "0", "text": exact(sentence, "fr")}]}
        if not problem and (got != 200 or document != expected):
            problem = f"translation of {sentence!r} gave {got} {document!r}, expected {expected!r}"
    return {"ok": not problem, "healthz_ms": seconds * 1000, "problem": problem}


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics, keyed `name` or `name{labels}` (loadtest.harness.metric_samples)."""
    _, data, _ = get(url, "/metrics")
    return metric_samples(data.decode())


def rss_mib(pid: int) -> float:
    return proc_status(pid).get("VmRSS", 0) / 1024
