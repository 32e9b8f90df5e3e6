"""The field cases of identity: the service behind a pooling reverse proxy, and forged `X-Forwarded-For`.

- `behind_nginx`: nginx configured as ingress-nginx is (loadtest/reliability/nginx.py) in front of the service.
  Client A floods through it (wrk, `flood_connections` connections, retrying at once); client B sends one request
  every 50 ms through it, and its latency and refusals are what is measured. With API keys on (A and B) and a
  per-client rate, A gets 429s; the question is whether A's refusals delay B, whose requests share nginx's pooled
  upstream connections with A's (a Retry-After hold on such a connection stalls whichever request comes next on
  it). Without keys and with the defaults, every user behind the proxy is one address: B must not be refused.
- `forged_forwarded`: requests from 127.0.0.1 (a trusted proxy by default), each with a distinct 50 KB
  `X-Forwarded-For` of garbage, of many addresses, or of both, with per-address limits on (so the client table is
  used) and the request log at info: the service's RSS growth and its log's growth.

Shared with loadtest/reliability/hostile_clients.py: the two API keys, the paced client (B), wrk with a count of
answers by status, a process's CPU time.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import os
import random
import re
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.edge.wrk import WrkMissing
from loadtest.reliability.common import Service, body, exact, log, toy_sentences
from loadtest.reliability.nginx import Nginx, wait_until_proxied
from loadtest.stats import nearest_rank as quantile

KEY_A = "reliability-key-a-4f1c2e"
KEY_B = "reliability-key-b-93d0a7"
# B sends one request every 50 ms (20/s); with keys on, every client may send CLIENT_RATE/s (B uses half of it,
# A's flood is hundreds of times over it and gets 429s).
B_INTERVAL_S = 0.05
CLIENT_RATE = 40.0
B_P99_TARGET_MS = 300.0
# A's requests carry 2 records: 48 connections then hold up to 96 sentences, past half the cpu queue of 128 (a
# per-client share of it would refuse B beside A) yet short of the whole (overload would refuse anyone).
FLOOD_CONNECTIONS = 48
FLOOD_RECORDS = 2
FORWARDED_HEADER_BYTES = 50_000
FORWARDED_PER = 3000  # the targets are per this many requests
RSS_TARGET_MB = 40.0
LOG_TARGET_MB = 10.0


# --- shared by the field cases


def write_keys(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# reliability: client A, client B\n{KEY_A}\n{KEY_B}\n")
    return path


def keys_env(work_dir: Path) -> dict[str, str]:
    return {"MT_API_KEYS_FILE": str(write_keys(work_dir / "keys.txt"))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    at: float  # seconds after the client started
    status: int  # 0: no answer (a transport error)
    ms: float
    exact: bool
    error: str = ""


def paced(url: str, *, seconds: float, interval: float = B_INTERVAL_S, key: str | None = None, offset: int = 0,
          stop: threading.Event | None = None, timeout: float = 10.0) -> list[Sample]:
    """One request every `interval` seconds (no catch-up burst after a slow one) on a kept-alive connection,
    reconnecting after a transport error, for `seconds` or until `stop`: single-sentence toy translations,
    each checked exactly. A 429 is recorded and the next request goes on schedule (B is measured, not polite)."""
    sentences = toy_sentences(40, offset=offset)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    samples: list[Sample] = []
    host = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=timeout)
    started = time.monotonic()
    next_at = started
    try:
        while time.monotonic() - started < seconds and not (stop and stop.is_set()):
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sentence = sentences[len(samples) % len(sentences)]
            began = time.monotonic()
            next_at = began + interval
            try:
                connection.request("POST", "/translation", json.dumps(body([sentence])), headers)
                response = connection.getresponse()
                data = response.read()
                text = _first_text(data) if response.status == 200 else None
                samples.append(Sample(began - started, response.status, (time.monotonic() - began) * 1000,
                                      text == exact(sentence, "fr")))
            except (OSError, http.client.HTTPException) as error:
                samples.append(Sample(began - started, 0, (time.monotonic() - began) * 1000, False,
                                      f"{type(error).__name__}: {error}"))
                connection.close()
                connection = http.client.HTTPConnection(host, timeout=timeout)
    finally:
        connection.close()
    return samples


def _first_text(data: bytes) -> str | None:
    try:
        return json.loads(data)["result"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def summarize(samples: list[Sample]) -> dict:
    """Sent, answered 200, refusals (anything else, a transport error included), statuses, latency."""
    latencies = [s.ms for s in samples]
    statuses = collections.Counter(s.status for s in samples)
    ok = [s for s in samples if s.status == 200]
    return {
        "sent": len(samples),
        "answered_200": len(ok),
        "refused": len(samples) - len(ok),
        "answered_share": len(ok) / len(samples) if samples else float("nan"),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "inexact": sum(1 for s in ok if not s.exact),
        "errors": sorted({s.error for s in samples if s.error})[:5],
        "p50_ms": quantile(latencies, 0.5),
        "p99_ms": quantile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "over_300_ms": sum(1 for ms in latencies if ms > B_P99_TARGET_MS),
    }


# wrk with a count of answers by status (wrk itself only counts "non-2xx"). Each thread counts in its own Lua
# state; done() (in the main state) adds up the threads' tables. `authorization` is a Lua expression evaluated
# per request (`i` counts this thread's requests, `id` numbers the thread), or nil for no header.
_WRK_SCRIPT = """
local bodies = %(bodies)s
local i = 0
local threads = {}
local next_id = 0
id = 0
counts = {}
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end
function request()
  i = i + 1
  local headers = {["Content-Type"] = "application/json"}
  local authorization = %(authorization)s
  if authorization then headers["Authorization"] = authorization end
  return wrk.format("POST", "/translation", headers, bodies[i %% #bodies + 1])
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("counts")) do total[code] = (total[code] or 0) + n end
  end
  for code, n in pairs(total) do io.write(string.format("status %%d %%d\\n", code, n)) end
  io.write(string.format("duration_us %%d\\n", summary.duration))
  io.write(string.format("socket_errors %%d %%d %%d %%d\\n", summary.errors.connect, summary.errors.read,
                         summary.errors.write, summary.errors.timeout))
end
"""


def wrk_script(path: Path, texts: list[str], authorization: str = "nil", records: int = 1) -> Path:
    """A wrk script of toy translations of `records` records each, cycling through `texts`, counting answers
    by status."""
    documents = [body(texts[i:i + records]) for i in range(0, len(texts) - records + 1, records)]
    bodies = ", ".join(lua_string(json.dumps(document, ensure_ascii=False)) for document in documents)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_WRK_SCRIPT % {"bodies": "{" + bodies + "}", "authorization": authorization})
    return path


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_statuses(url: str, script: Path, *, connections: int, seconds: float, threads: int = 1) -> dict:
    """One wrk run (whole seconds; it stops itself, a margin bounds the wait): requests, answers by status,
    socket errors, and wrk's own CPU time per thread (near 1.0 means the client, not the server, was the limit)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkMissing("wrk is not installed: `apt-get install wrk` (scripts/install_system_deps.sh installs it)")
    seconds = max(1, round(seconds))
    command = [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout=10s", "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk exited with {completed.returncode}: {completed.stderr[-2000:]}")
    output = completed.stdout
    statuses = {int(code): int(n) for code, n in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)}
    duration = re.search(r"^duration_us (\d+)$", output, re.MULTILINE)
    errors = re.search(r"^socket_errors (\d+) (\d+) (\d+) (\d+)$", output, re.MULTILINE)
    if duration is None or errors is None:
        raise ValueError(f"no counts in wrk's output:\n{output}")
    wall = int(duration.group(1)) / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "connections": connections,
        "seconds": wall,
        "answers": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": sum(int(g) for g in errors.groups()),
        "client_cpu_per_thread": cpu / wall / threads if wall else float("nan"),
    }


# --- 1. behind nginx


def behind_nginx(model_dir: Path, work_dir: Path, *, keys: bool, seconds: float = 10.0, flood_connections: int = FLOOD_CONNECTIONS,
                 records: int = FLOOD_RECORDS, interval: float = B_INTERVAL_S, rate: float = CLIENT_RATE) -> dict:
    """A floods through nginx for `seconds`; B, through the same nginx, sends a request every `interval` from
    0.5 s into the flood until 0.5 s before its end. With `keys`: API keys A and B and MT_CLIENT_RATE_PER_SECOND
    = `rate`; without: the defaults (no per-client limits). A's requests carry `records` sentences; connections
    times records stays below the cpu queue (128 sentences), so any refusal B gets comes from identity and
    limits, not overload."""
    variant = "keys" if keys else "open"
    work_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {"MT_LOG_LEVEL": "warning"}
    if keys:
        env |= keys_env(work_dir) | {"MT_CLIENT_RATE_PER_SECOND": f"{rate:g}"}
    service = Service.ct2(model_dir, env, work_dir / f"service-nginx-{variant}.log")
    authorization = lua_string(f"Bearer {KEY_A}") if keys else "nil"
    script = wrk_script(work_dir / f"flood-{variant}.lua", toy_sentences(512, offset=1000), authorization, records)
    with service, Nginx(work_dir / f"nginx-{variant}", service.port) as proxy:
        wait_until_proxied(proxy.url)
        # B's sentences once through the proxy, at B's pace: the timed requests find them translated.
        warm = paced(proxy.url, seconds=2.0, interval=interval, key=KEY_B if keys else None)
        flood: dict = {}
        cpu_before = cpu_seconds(service.process.pid)
        flooding = threading.Thread(target=lambda: flood.update(
            wrk_statuses(proxy.url, script, connections=flood_connections, seconds=seconds)))
        flood_started = time.monotonic()
        flooding.start()
        try:
            time.sleep(0.5)
            samples = paced(proxy.url, seconds=max(0.5, seconds - 1.0), interval=interval, key=KEY_B if keys else None)
        finally:
            flooding.join(seconds + 90)
        cpu = cpu_seconds(service.process.pid) - cpu_before
        wall = time.monotonic() - flood_started
        alive = service.process.poll() is None
        nginx_log = proxy.error_lines()
    b = summarize(samples)
    refused_a = flood.get("statuses", {}).get("429", 0)
    result = {
        "variant": variant,
        "service_env": {k: v for k, v in env.items() if k != "MT_API_KEYS_FILE"} | ({"MT_API_KEYS_FILE": "keys A and B"} if keys else {}),
        "seconds": seconds,
        "interval_ms": interval * 1000,
        "flood_connections": flood_connections,
        "flood_records": records,
        "nginx_keepalive": proxy.keepalive,
        "a": flood | {"refused_429": refused_a, "per_s": flood.get("answers", 0) / flood["seconds"] if flood.get("seconds") else float("nan")},
        "b": b,
        "b_warm_up_statuses": dict(collections.Counter(str(s.status) for s in warm)),
        "service_cpu_share": cpu / wall if wall else float("nan"),
        "nginx_error_log": nginx_log,
        "alive_after": alive,
    }
    result["met"] = b["refused"] == 0 and (not keys or b["p99_ms"] <= B_P99_TARGET_MS)
    log(f"nginx ({variant}): A {flood.get('answers', 0):,} answers ({refused_a:,} refused) on {flood_connections} connections; "
        f"B {b['answered_200']} of {b['sent']} answered, p99 {b['p99_ms']:.0f} ms, max {b['max_ms']:.0f} ms")
    return result


def nginx_step(model_dir: Path, work_dir: Path, *, seconds: float = 10.0, flood_connections: int = FLOOD_CONNECTIONS) -> dict:
    """Both variants: API keys with a per-client rate, and the defaults."""
    return {
        "keys": behind_nginx(model_dir, work_dir, keys=True, seconds=seconds, flood_connections=flood_connections),
        "open": behind_nginx(model_dir, work_dir, keys=False, seconds=seconds, flood_connections=flood_connections),
        "b_p99_target_ms": B_P99_TARGET_MS,
    }


# --- 3. forged X-Forwarded-For


def _address_pool(rng: random.Random, count: int) -> str:
    raw = rng.randbytes(4 * count)
    return ", ".join(".".join(map(str, raw[i:i + 4])) for i in range(0, len(raw), 4))


def _mixed_pool(rng: random.Random, count: int) -> str:
    tokens = ("unknown", "999.1.2.3", "1.2.3.4:8080", "[2001:db8::1]", "::ffff:10.0.0.1", "2001:db8::zz", "_hidden",
              "10.0.0.1/8", "0x7f000001", "localhost", "", " ", "1.2.3", "256.256.256.256", "fe80::1%eth0")
    words = []
    for _ in range(count):
        if rng.random() < 0.5:
            words.append(rng.choice(tokens))
        else:
            words.append(".".join(map(str, rng.randbytes(4))))
    return ", ".join(words)


class ForgedValues:
    """Distinct `size`-byte `X-Forwarded-For` values, in three kinds by `i % 3`: one garbage token (no address,
    no comma); a long list of addresses ending in one unique to `i` (a new client each time, to a parser that
    believes it); addresses mixed with junk tokens, ending in a unique junk token of a third of the size. The
    lists are slices of two pools built once, so making them costs the client little."""

    KINDS = ("garbage", "addresses", "mixed")

    def __init__(self, size: int = FORWARDED_HEADER_BYTES, seed: int = 15) -> None:
        rng = random.Random(seed)
        self.size = size
        self.addresses = _address_pool(rng, size // 7 + 2000)
        self.mixed = _mixed_pool(rng, size // 5 + 2000)

    def kind(self, i: int) -> str:
        return self.KINDS[i % 3]

    def value(self, i: int) -> str:
        kind = self.kind(i)
        if kind == "garbage":
            raw = random.Random(i).randbytes(self.size)
            return base64.b64encode(raw).decode()[: self.size]
        if kind == "addresses":
            pool, last = self.addresses, f", 198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        else:  # junk in the rightmost place, where a naive parser finds its client
            pool, last = self.mixed, ", " + base64.b64encode(random.Random(i).randbytes(self.size // 3)).decode()
        start = (i * 7919) % (len(pool) - self.size)
        head = pool[start:start + self.size - len(last)]
        head = head[head.find(", ") + 2:head.rfind(", ")]  # whole items only: a few bytes under `size`
        return head + last


def _forged_sender(url: str, values: ForgedValues, indices: range, outcome: dict, lock: threading.Lock) -> None:
    host = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=30)
    document = json.dumps(body(["alpha bravo"]))
    statuses: collections.Counter = collections.Counter()
    errors: list[str] = []
    try:
        for i in indices:
            try:
                connection.request("POST", "/translation", document,
                                   {"Content-Type": "application/json", "X-Forwarded-For": values.value(i)})
                response = connection.getresponse()
                response.read()
                statuses[response.status] += 1
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as error:
                statuses[0] += 1
                errors.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection(host, timeout=30)
    finally:
        connection.close()
    with lock:
        outcome["statuses"].update(statuses)
        outcome["errors"].extend(errors[:5])


def _send_forged(url: str, values: ForgedValues, start: int, count: int, connections: int) -> dict:
    outcome: dict = {"statuses": collections.Counter(), "errors": []}
    lock = threading.Lock()
    workers = [threading.Thread(target=_forged_sender, args=(url, values, range(start + w, start + count, connections), outcome, lock))
               for w in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(600)
    return outcome


def forged_forwarded(model_dir: Path, work_dir: Path, *, requests: int = FORWARDED_PER, connections: int = 8,
                     header_bytes: int = FORWARDED_HEADER_BYTES, rate: float = 100.0, warm_up: int = 300) -> dict:
    """`warm_up` forged requests, then RSS and log size, then `requests` more (distinct values throughout),
    then RSS and log size again. Per-address limits are on (MT_CLIENT_RATE_PER_SECOND=`rate`) so that every
    client the service believes in takes a row in its table; the log is at info (a line per request)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {"MT_CLIENT_RATE_PER_SECOND": f"{rate:g}", "MT_LOG_LEVEL": "info"}
    log_path = work_dir / "service-forwarded.log"
    values = ForgedValues(header_bytes)
    with Service.ct2(model_dir, env, log_path) as service:
        pid = service.process.pid
        _send_forged(service.url, values, 10_000_000, warm_up, connections)  # values never reused below
        time.sleep(0.5)
        rss_before = service.memory_kib().get("VmRSS", 0)
        log_before = log_path.stat().st_size
        started = time.monotonic()
        outcome = _send_forged(service.url, values, 0, requests, connections)
        seconds = time.monotonic() - started
        time.sleep(0.5)
        memory = service.memory_kib()
        rss_after = memory.get("VmRSS", 0)
        log_after = log_path.stat().st_size
        alive = service.process.poll() is None
        cpu = cpu_seconds(pid)
    with open(log_path, "rb") as handle:
        handle.seek(log_before)
        grown = handle.read(log_after - log_before)
    lines = grown.splitlines()
    rss_growth_mb = (rss_after - rss_before) * 1024 / 1e6
    log_growth_mb = (log_after - log_before) / 1e6
    scale = FORWARDED_PER / requests if requests else float("nan")
    statuses = outcome["statuses"]
    result = {
        "requests": requests,
        "warm_up": warm_up,
        "connections": connections,
        "header_bytes": header_bytes,
        "kinds": list(ForgedValues.KINDS),
        "service_env": env,
        "seconds": seconds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered": requests - statuses.get(0, 0),
        "errors": outcome["errors"][:5],
        "rss_before_mb": rss_before * 1024 / 1e6,
        "rss_after_mb": rss_after * 1024 / 1e6,
        "rss_peak_mb": memory.get("VmHWM", 0) * 1024 / 1e6,
        "rss_growth_mb": rss_growth_mb,
        "log_growth_mb": log_growth_mb,
        "rss_growth_per_3000_mb": rss_growth_mb * scale,
        "log_growth_per_3000_mb": log_growth_mb * scale,
        "log_lines": len(lines),
        "longest_log_line_bytes": max((len(line) for line in lines), default=0),
        "service_cpu_seconds": cpu,
        "alive_after": alive,
        "rss_target_mb": RSS_TARGET_MB,
        "log_target_mb": LOG_TARGET_MB,
    }
    result["met"] = result["rss_growth_per_3000_mb"] <= RSS_TARGET_MB and result["log_growth_per_3000_mb"] <= LOG_TARGET_MB
    log(f"forwarded: {requests:,} requests with distinct {header_bytes:,}-byte X-Forwarded-For in {seconds:.1f} s: RSS "
        f"+{rss_growth_mb:.1f} MB, log +{log_growth_mb:.1f} MB (longest line {result['longest_log_line_bytes']:,} bytes); "
        f"statuses {result['statuses']}")
    return result
