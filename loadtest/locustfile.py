"""Locust load test for POST /translation with a realistic traffic mix.

    make load-test [URL=http://127.0.0.1:9527] [USERS=10] [SPAWN_RATE=10] [DURATION=60s] [TEXT_SOURCE=english|toy]
    .venv/bin/python -m locust -f loadtest/locustfile.py --headless --host URL -u 10 -r 10 -t 60s \
        --csv reports/load-test/locust --html reports/load-test/report.html --text-source toy

The mix (task weights): one short sentence (5), one long multi-sentence text (2), 16 short records in one
request (2), 16 records mixing short sentences and long texts (1). A share of all texts (--repeat-share,
default 0.3) comes from a small pool of hot texts, which the service's cache should absorb. Each request
picks one of several language pairs (loadtest/texts.py); a share of requests (--auto-share, default 0.2)
sends fromLang "auto" instead, and each of its results must carry a detectedLanguage (explicit ones must not).

--text-source toy uses the toy checkpoint's words (loadtest/toy_task.py) and checks every
translation against the expected output (--verify words: the same words, which catches results mixed up
between records or requests while tolerating the toy model's occasional lost full stop; exact; off); english uses
English-like sentences in the benchmark checkpoint's vocabulary (any real M2M100 model accepts them too).

Every HTTP request is named "/translation", so Locust's stats have one row for the objectives. The service's
timing headers are recorded as extra Locust entries of type TIMING, in milliseconds: "total-time"
(x-total-time, every response), "queue-time" and "inference-time" (x-queue-time, x-inference-time, for
responses that needed the engine; fully cached ones report 0 and are counted as "cache-only" instead).
They appear in the stats CSVs and the HTML report; note that Locust's "Aggregated" row mixes them with the
HTTP requests, so read the POST row for request figures.

When Locust quits, the objectives (--slo-max-failure-ratio, --slo-p99-ms, --slo-min-rps; environment
MAX_FAILURE_RATIO, P99_MS, MIN_RPS) are checked on the POST /translation row, a PASS/FAIL table is printed,
and the exit code is 1 if one is missed (--no-slo-check: Locust's own exit code). With --csv PREFIX it also
writes PREFIX_final_stats.csv, the complete final stats (python -m loadtest.slo can re-check either file).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
import urllib.request

from locust import HttpUser, events, task

from loadtest import slo
from loadtest.texts import PAIRS, TEXT_SOURCES, TextSource

log = logging.getLogger("loadtest")

ENDPOINT = "/translation"
TIMING = "TIMING"
HEADERS = {"queue-time": "x-queue-time", "inference-time": "x-inference-time", "total-time": "x-total-time"}
RECORDS_PER_BATCH = 16
HOT_POOL_SIZE = 12


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    defaults = slo.Objectives.from_env()
    parser.add_argument("--text-source", choices=TEXT_SOURCES, default="english", env_var="LOCUST_TEXT_SOURCE",
                        help="toy: the toy checkpoint's words (translations verified); english: English-like text")
    parser.add_argument("--repeat-share", type=float, default=0.3, env_var="LOCUST_REPEAT_SHARE",
                        help="share of texts drawn from a small pool of hot texts the cache should absorb")
    parser.add_argument("--auto-share", type=float, default=0.2, env_var="LOCUST_AUTO_SHARE",
                        help='share of requests sent with fromLang "auto" (source-language detection)')
    parser.add_argument("--wait-min", type=float, default=0.05, env_var="LOCUST_WAIT_MIN", help="think time, seconds")
    parser.add_argument("--wait-max", type=float, default=0.25, env_var="LOCUST_WAIT_MAX", help="think time, seconds")
    parser.add_argument("--verify", choices=("words", "exact", "off"), default="words", env_var="LOCUST_VERIFY",
                        help="toy text: check each translation (words: same words, any order; exact: exact output)")
    parser.add_argument("--seed", type=int, default=0, env_var="LOCUST_SEED", help="seed of the text generators")
    parser.add_argument("--slo-max-failure-ratio", type=float, default=defaults.max_failure_ratio, env_var="MAX_FAILURE_RATIO")
    parser.add_argument("--slo-p99-ms", type=float, default=defaults.p99_ms, env_var="P99_MS")
    parser.add_argument("--slo-min-rps", type=float, default=defaults.min_rps, env_var="MIN_RPS")
    parser.add_argument("--no-slo-check", action="store_true", default=False, help="leave the exit code to Locust")


class _Shared:
    """What every user shares: the text source, the language pairs the server supports, the hot pool."""

    source: TextSource | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    hot: tuple[str, ...] = ()
    cache_only = 0


@events.test_start.add_listener
def _on_test_start(environment, **_) -> None:
    options = environment.parsed_options
    source = TextSource(options.text_source if options else "english")
    pairs = PAIRS[source.name]
    if environment.host:
        try:
            with urllib.request.urlopen(f"{environment.host.rstrip('/')}/languages", timeout=10) as response:
                languages = set(json.load(response)["languages"])
            supported = tuple(p for p in pairs if p[0] in languages and p[1] in languages)
            if supported:
                pairs = supported
            else:
                log.error("the server supports none of %s; sending them anyway", pairs)
        except (OSError, ValueError, KeyError) as error:
            log.warning("could not read %s/languages (%s); using every pair", environment.host, error)
    rng = random.Random((options.seed if options else 0) + 1)
    _Shared.source, _Shared.pairs, _Shared.cache_only = source, pairs, 0
    _Shared.hot = tuple(source.sentence(rng) for _ in range(HOT_POOL_SIZE))
    log.info("text source %s, pairs %s", source.name, ", ".join(f"{a}->{b}" for a, b in pairs))


@events.quitting.add_listener
def _on_quitting(environment, **_) -> None:
    options = environment.parsed_options
    if options is None or options.no_slo_check:
        return
    entry = environment.stats.get(ENDPOINT, "POST")
    observed = slo.Observed(
        requests=entry.num_requests,
        failures=entry.num_failures,
        p99_ms=float(entry.get_response_time_percentile(0.99) or 0) if entry.num_requests else float("inf"),
        rps=entry.total_rps,
    )
    objectives = slo.Objectives(options.slo_max_failure_ratio, options.slo_p99_ms, options.slo_min_rps)
    checks = slo.evaluate(observed, objectives)
    timing = ", ".join(
        f"{name} p50 {e.get_response_time_percentile(0.5)} ms p99 {e.get_response_time_percentile(0.99)} ms"
        for name in HEADERS
        if (e := environment.stats.get(name, TIMING)).num_requests
    )
    print(f"\nserver timing headers: {timing or 'none recorded'}; cache-only responses: {_Shared.cache_only}", file=sys.stderr)
    print(slo.format_table(checks), file=sys.stderr)
    _write_final_stats(environment)
    environment.process_exit_code = 0 if slo.passed(checks) else 1


def _write_final_stats(environment) -> None:
    """<csv prefix>_final_stats.csv: the stats at the very end. Locust rewrites <prefix>_stats.csv once a
    second while it runs, so that file can miss the last second; this one has every request."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    with open(f"{prefix}_final_stats.csv", "w", newline="", encoding="utf-8") as handle:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(handle))


class TranslationUser(HttpUser):
    def wait_time(self) -> float:
        options = self.environment.parsed_options
        low, high = (options.wait_min, options.wait_max) if options else (0.05, 0.25)
        return random.uniform(low, max(low, high))

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random(random.getrandbits(64) if options is None else options.seed * 7919 + id(self))
        self.repeat_share = options.repeat_share if options else 0.3
        self.verify = options.verify if options else "words"
        self.auto_share = options.auto_share if options else 0.2

    # --- texts
    def _short(self) -> str:
        if _Shared.hot and self.rng.random() < self.repeat_share:
            return self.rng.choice(_Shared.hot)
        return _Shared.source.sentence(self.rng, short=self.rng.random() < 0.5)

    def _long(self) -> str:
        return _Shared.source.long_text(self.rng)

    # --- the mix
    @task(5)
    def one_short(self) -> None:
        self._post([self._short()])

    @task(2)
    def one_long(self) -> None:
        self._post([self._long()])

    @task(2)
    def batch_short(self) -> None:
        self._post([self._short() for _ in range(RECORDS_PER_BATCH)])

    @task(1)
    def batch_mixed(self) -> None:
        self._post([self._long() if self.rng.random() < 0.25 else self._short() for _ in range(RECORDS_PER_BATCH)])

    # --- one request, checked, with its timing headers recorded
    def _post(self, texts: list[str]) -> None:
        from_lang, to_lang = self.rng.choice(_Shared.pairs)
        if self.rng.random() < self.auto_share:
            from_lang = "auto"
        records = [{"id": f"r{i}", "text": text} for i, text in enumerate(texts)]
        body = {"payload": {"fromLang": from_lang, "toLang": to_lang, "records": records}}
        with self.client.post(ENDPOINT, json=body, name=ENDPOINT, catch_response=True) as response:
            problem = self._check(response, records, from_lang, to_lang)
            if problem:
                response.failure(problem)
                return
            response.success()
        self._record_timings(response)

    def _check(self, response, records: list[dict], from_lang: str, to_lang: str) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        missing = [h for h in HEADERS.values() if h not in response.headers]
        if missing:
            return f"missing timing headers: {', '.join(missing)}"
        try:
            result = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            return f"not a translation result: {response.text[:200]}"
        if [r.get("id") for r in result] != [r["id"] for r in records]:
            return "result ids do not match the records"
        for record, item in zip(records, result):
            detected = item.get("detectedLanguage")
            if (from_lang == "auto") != isinstance(detected, dict):
                return f"detectedLanguage {'missing' if from_lang == 'auto' else 'present'} with fromLang {from_lang}: {item}"
            # The language the service split this text with: the detected one in auto mode.
            source_lang = detected.get("language") if detected is not None else from_lang
            if not _Shared.source.matches(record["text"], str(item.get("text")), to_lang, self.verify, source_lang):
                expected = _Shared.source.expected(record["text"], to_lang, source_lang)
                return f"wrong translation into {to_lang}: {record['text']!r} -> {item.get('text')!r}, expected {expected!r}"
        return None

    def _record_timings(self, response) -> None:
        values = {name: float(response.headers[header]) for name, header in HEADERS.items()}
        fire = self.environment.events.request.fire
        fire(request_type=TIMING, name="total-time", response_time=values["total-time"], response_length=0,
             exception=None, context={})
        if values["inference-time"] <= 0:
            _Shared.cache_only += 1
            return
        for name in ("queue-time", "inference-time"):
            fire(request_type=TIMING, name=name, response_time=values[name], response_length=0, exception=None, context={})
