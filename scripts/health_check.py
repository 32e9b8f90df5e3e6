#!/usr/bin/env python3
"""Smoke-checks a running translation service: ready, and translating for real.

    python scripts/health_check.py http://127.0.0.1:9527 [--from en --to fr] [--text "..."]

1. GET /readyz until it answers 200 (up to --wait seconds: a pod may still be loading its model);
2. GET /languages, to pick a language pair the model has (en -> fr by default);
3. POST /translation with one record and check the answer: 200, the record's id back, a text.

Exit status 0 when all pass, 1 otherwise (one line says which step failed). Standard library only,
so it runs anywhere there is a Python 3: a laptop, a CI job, `kubectl debug`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

RECORD_ID = "health-check"


class CheckFailed(Exception):
    pass


def request(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", "x-request-id": "health-check"} if data else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CheckFailed(f"{method} {url}: {reason}") from None
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        raise CheckFailed(f"{method} {url}: {status} with a body that is not JSON: {raw[:200]!r}") from None


def wait_ready(base: str, wait: float, timeout: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            status, body = request("GET", f"{base}/readyz", timeout=timeout)
            if status == 200:
                return
            last = f"{status} {body.get('status', body)}"
        except CheckFailed as error:
            last = str(error)
        if time.monotonic() >= deadline:
            raise CheckFailed(f"/readyz not ready after {wait:.0f}s (last: {last})")
        time.sleep(1.0)


def pick_pair(base: str, source: str | None, target: str | None, timeout: float) -> tuple[str, str]:
    status, body = request("GET", f"{base}/languages", timeout=timeout)
    languages = body.get("languages") if status == 200 else None
    if not isinstance(languages, list) or len(languages) < 2:
        raise CheckFailed(f"/languages: {status}, expected a list of at least two languages, got {body!r}")
    source = source or ("en" if "en" in languages else languages[0])
    target = target or ("fr" if "fr" in languages and source != "fr" else next(l for l in languages if l != source))
    for name, lang in (("--from", source), ("--to", target)):
        if lang not in languages:
            raise CheckFailed(f"{name} {lang!r} is not one of the model's languages {languages}")
    return source, target


def check_translation(base: str, source: str, target: str, text: str, timeout: float) -> str:
    body = {"payload": {"fromLang": source, "toLang": target, "records": [{"id": RECORD_ID, "text": text}]}}
    status, answer = request("POST", f"{base}/translation", body, timeout=timeout)
    if status != 200:
        raise CheckFailed(f"POST /translation: {status} {answer.get('error', answer)}")
    result = answer.get("result")
    if not (isinstance(result, list) and len(result) == 1 and isinstance(result[0], dict)):
        raise CheckFailed(f"POST /translation: expected one result record, got {answer!r}")
    record = result[0]
    if record.get("id") != RECORD_ID or not isinstance(record.get("text"), str) or not record["text"].strip():
        raise CheckFailed(f"POST /translation: expected id {RECORD_ID!r} and a non-empty text, got {record!r}")
    return record["text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL of the service, e.g. http://127.0.0.1:9527")
    parser.add_argument("--from", dest="source", help="source language (default: en)")
    parser.add_argument("--to", dest="target", help="target language (default: fr, else another one)")
    parser.add_argument("--text", default="Hello world.", help="text to translate (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for /readyz (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call (default: %(default)s)")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        wait_ready(base, args.wait, min(args.timeout, 5.0))
        print(f"ok   {base}/readyz: 200")
        source, target = pick_pair(base, args.source, args.target, args.timeout)
        started = time.perf_counter()
        translated = check_translation(base, source, target, args.text, args.timeout)
        elapsed = (time.perf_counter() - started) * 1000
        print(f"ok   {base}/translation {source}->{target} in {elapsed:.0f} ms: {args.text!r} -> {translated!r}")
    except CheckFailed as error:
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
