#!/usr/bin/env python3
"""Checks a translation service through its public API: it answers, and it translates for real.

    python scripts/health_check.py https://translation.example.com [--from en --to fr] [--text "..."]
    TRANSLATION_API_KEY=... python scripts/health_check.py https://...      # when API keys are on

It calls only routes the Ingress serves (k8s/base/ingress.yaml: /translation, /languages), so it
works against the public URL as well as against `make serve`, a pod or `make dev`:

1. POST /translation with one record until the answer is no longer "not yet", for up to --wait
   seconds. Retried: no connection, 502/503/504 (a model still loading answers 503 not_ready; an
   ingress with no ready pod behind it answers 503 itself) and 429 (after its Retry-After). Any
   other answer is final: 401 (a missing or refused key), 404 (wrong URL), 422 (a language the model
   lacks) fail at once.
2. The answer must be 200 with the record's id and a non-empty text.
3. GET /languages must list both languages; a 404 there (route not public) is reported, not failed.

The API key is read from the environment variable named by --api-key-env (never from the command
line, where it would show in process lists and CI logs) and sent as `Authorization: Bearer KEY`.
Exit status 0 when all pass, 1 otherwise (one line says which step failed). Standard library only,
so it runs anywhere there is a Python 3: a laptop, a CI job, `kubectl debug`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

RECORD_ID = "health-check"
DEFAULT_KEY_ENV = "TRANSLATION_API_KEY"
# Answers that mean "not yet": the model is loading, the ingress has no ready pod, or all are busy.
RETRIED = frozenset({429, 502, 503, 504})
RETRY_SECONDS = 1.0


class CheckFailed(Exception):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: urllib would turn a redirected POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Answer:
    """One HTTP answer: status, parsed JSON body (None if it was not JSON), a short description."""

    def __init__(self, status: int, raw: bytes, headers) -> None:
        self.status = status
        self.headers = headers
        try:
            self.body = json.loads(raw) if raw else {}
        except ValueError:
            self.body = None
        self.raw = raw

    @property
    def error_code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code", "") if isinstance(error, dict) else ""

    def describe(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            error = self.body["error"]
            return f"{self.status} {error.get('code', '')}: {error.get('message', '')}"
        if self.body is None:  # a proxy's own page, e.g. the ingress' "503 Service Temporarily Unavailable"
            text = " ".join(self.raw.decode("utf-8", "replace").split())
            return f"{self.status} (not JSON: {text[:120]!r})"
        return f"{self.status} {json.dumps(self.body)[:200]}"


def request(method: str, url: str, body: dict | None, key: str | None, timeout: float) -> Answer:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"accept": "application/json", "x-request-id": RECORD_ID}
    if data is not None:
        headers["content-type"] = "application/json"
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return Answer(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), error.headers)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CheckFailed(f"{method} {url}: {reason}") from None


def translation_body(source: str, target: str, text: str) -> dict:
    return {"payload": {"fromLang": source, "toLang": target, "records": [{"id": RECORD_ID, "text": text}]}}


def final_failure(answer: Answer, url: str, key_env: str, have_key: bool) -> str:
    """What a final non-200 answer means, for the one line the check prints."""
    if answer.status == 401:
        hint = f"the key in {key_env} was refused" if have_key else f"API keys are on: set {key_env}"
        return f"POST {url}: {answer.describe()} ({hint})"
    if 300 <= answer.status < 400:
        location = answer.headers.get("Location", "?") if answer.headers else "?"
        return f"POST {url}: {answer.status} redirect to {location}: use that URL"
    if answer.status == 404:
        return f"POST {url}: {answer.describe()} (is the URL the service's base URL?)"
    return f"POST {url}: {answer.describe()}"


def translate_when_ready(base: str, source: str, target: str, text: str, key: str | None, key_env: str,
                         wait: float, timeout: float) -> tuple[str, float]:
    """POST /translation until an answer is final; returns the translated text and the last call's ms."""
    url = f"{base}/translation"
    deadline = time.monotonic() + wait
    last = ""
    while True:
        started = time.perf_counter()
        pause = RETRY_SECONDS
        try:
            answer = request("POST", url, translation_body(source, target, text), key, timeout)
        except CheckFailed as error:
            now = str(error)
        else:
            if answer.status not in RETRIED:
                if answer.status != 200:
                    raise CheckFailed(final_failure(answer, url, key_env, key is not None))
                return check_result(url, answer), (time.perf_counter() - started) * 1000
            now = answer.describe()
            retry_after = answer.headers.get("Retry-After") if answer.headers else None
            if retry_after and retry_after.isdigit():
                pause = max(pause, float(retry_after))
        if now != last:  # one line per change, not one per attempt
            print(f"wait {now} (retrying for up to {wait:.0f}s)", flush=True)
            last = now
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CheckFailed(f"{url} not ready after {wait:.0f}s (last: {last})")
        time.sleep(min(pause, remaining))


def check_result(url: str, answer: Answer) -> str:
    result = answer.body.get("result") if isinstance(answer.body, dict) else None
    if not (isinstance(result, list) and len(result) == 1 and isinstance(result[0], dict)):
        raise CheckFailed(f"POST {url}: expected one result record, got {answer.describe()}")
    record = result[0]
    if record.get("id") != RECORD_ID or not isinstance(record.get("text"), str) or not record["text"].strip():
        raise CheckFailed(f"POST {url}: expected id {RECORD_ID!r} and a non-empty text, got {record!r}")
    return record["text"]


def check_languages(base: str, source: str, target: str, key: str | None, timeout: float) -> str:
    """The status line for GET /languages; raises CheckFailed when it answers wrongly."""
    url = f"{base}/languages"
    answer = request("GET", url, None, key, timeout)
    if answer.status == 404:
        return f"skip {url}: 404, not routed here"
    languages = answer.body.get("languages") if answer.status == 200 and isinstance(answer.body, dict) else None
    if not isinstance(languages, list):
        raise CheckFailed(f"GET {url}: expected 200 with a list of languages, got {answer.describe()}")
    missing = [lang for lang in (source, target) if lang not in languages]
    if missing:
        raise CheckFailed(f"GET {url}: {', '.join(missing)} not among the model's {len(languages)} languages")
    return f"ok   {url}: {len(languages)} languages, {source} and {target} among them"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL of the service: the public URL, or e.g. http://127.0.0.1:9527")
    parser.add_argument("--from", dest="source", default="en", help="source language (default: %(default)s)")
    parser.add_argument("--to", dest="target", default="fr", help="target language (default: %(default)s)")
    parser.add_argument("--text", default="Hello world.", help="text to translate (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds to keep retrying while the service is not ready (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call (default: %(default)s)")
    parser.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, metavar="NAME",
                        help="environment variable holding the API key, if any (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.text.strip():
        parser.error("--text must not be empty")
    base = args.url.rstrip("/")
    key = os.environ.get(args.api_key_env, "").strip() or None
    try:
        translated, elapsed = translate_when_ready(
            base, args.source, args.target, args.text, key, args.api_key_env, args.wait, args.timeout
        )
        print(f"ok   {base}/translation {args.source}->{args.target} in {elapsed:.0f} ms: "
              f"{args.text!r} -> {translated!r}", flush=True)
        print(check_languages(base, args.source, args.target, key, args.timeout), flush=True)
    except CheckFailed as error:
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
