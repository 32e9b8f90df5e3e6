"""Hostile clients at the connection level: what one client's connections can do to everyone else's.

- `stalled_bodies`: 128 connections with key A send a request head (Content-Length, a few body bytes) and then
  nothing; meanwhile key B sends ordinary requests. A stalled body must not hold capacity B needs. With
  MT_CLIENT_MAX_PENDING_BODIES set, A's connections past it are refused with 429 at once.
- `pipelined`: hundreds of small requests in one write on one connection; every one must be answered, in order.
- `wrong_keys`: 100 connections guessing API keys as fast as they can (wrk). Failed authentication must be
  throttled per address (429 after a burst), and a valid key from the same address still served.
- `idle_connections`: the service under a 1,024 open-file limit and 1,100 idle connections: /healthz on a new
  connection must still answer; the connections past the service's cap are refused (503, closed).
- `sighup`: SIGHUP under a steady load must lose no request (ignored, or a drain like SIGTERM's).

Each returns its figures with `met` against its target; loadtest/reliability/report.py renders them.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

from loadtest.harness import HOST
from loadtest.reliability import raw
from loadtest.reliability.common import Service, body, exact, get, log, port_of, toy_sentences
from loadtest.reliability.field import (
    B_INTERVAL_S,
    KEY_A,
    KEY_B,
    cpu_seconds,
    keys_env,
    lua_string,
    paced,
    summarize,
    wrk_script,
    wrk_statuses,
)
from loadtest.reliability.hostile import request, translate
from loadtest.stats import nearest_rank as quantile

B_ANSWERED_TARGET = 0.99
WRONG_KEY_401_PER_S_TARGET = 500.0
HEALTHZ_PROBE_TIMEOUT_S = 1.0  # a kubelet probe's default timeoutSeconds


# --- 2. stalled bodies


def _stalled_head(declared: int, sent: bytes) -> bytes:
    return (f"POST /translation HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY_A}\r\nContent-Length: {declared}\r\n\r\n").encode() + sent


def _first_answers(sockets: list[socket.socket], wait: float) -> dict[int, bytes]:
    """What each socket (by index) has received within `wait` seconds: b"" once closed without bytes."""
    received: dict[int, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0 and len(received) < len(sockets):
            for key, _ in selector.select(remaining):
                index = key.data
                try:
                    data = key.fileobj.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                received[index] = received.get(index, b"") + data
                selector.unregister(key.fileobj)
    return received


def _status_of(data: bytes) -> str:
    """"503" from b"HTTP/1.1 503 ...", "closed" for nothing."""
    if not data:
        return "closed"
    parts = data.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 and data.startswith(b"HTTP/") else "garbage"


def stalled_bodies(model_dir: Path, work_dir: Path, *, connections: int = 128, seconds: float = 10.0, client_cap: int = 0,
                   interval: float = B_INTERVAL_S, declared: int = 4096) -> dict:
    """`connections` stalled uploads from key A (a head declaring `declared` bytes, then 16 of them), then key B
    sends a request every `interval` for `seconds`. With `client_cap`, MT_CLIENT_MAX_PENDING_BODIES=`client_cap`:
    A's connections past it must get 429 within a second of their head."""
    variant = f"cap {client_cap}" if client_cap else "no cap"
    work_dir.mkdir(parents=True, exist_ok=True)
    env = keys_env(work_dir) | {"MT_LOG_LEVEL": "warning"}
    if client_cap:
        env["MT_CLIENT_MAX_PENDING_BODIES"] = str(client_cap)
    head = _stalled_head(declared, b'{"payload": {"fr')
    stalled: list[socket.socket] = []
    open_failures: list[str] = []
    with Service.ct2(model_dir, env, work_dir / f"service-stalled-{client_cap}.log") as service:
        try:
            for _ in range(connections):
                try:
                    sock = socket.create_connection((HOST, service.port), timeout=5)
                    sock.sendall(head)
                    stalled.append(sock)
                except OSError as error:
                    open_failures.append(f"{type(error).__name__}: {error}")
            early = _first_answers(stalled, 1.5)  # "at once": within 1.5 s of the last head
            samples = paced(service.url, seconds=seconds, interval=interval, key=KEY_B)
            alive = service.process.poll() is None
        finally:
            for sock in stalled:
                sock.close()
    early_statuses = collections.Counter(_status_of(data) for data in early.values())
    b = summarize(samples)
    refused_at_once = early_statuses.get("429", 0)
    result = {
        "variant": variant,
        "connections": connections,
        "client_cap": client_cap,
        "declared_bytes": declared,
        "seconds": seconds,
        "a_open_failures": len(open_failures),
        "a_open_errors": open_failures[:3],
        "a_answered_at_once": dict(early_statuses),
        "a_refused_at_once": refused_at_once,
        "a_waiting": len(stalled) - len(early),
        "b": b,
        "alive_after": alive,
    }
    result["met"] = b["answered_share"] >= B_ANSWERED_TARGET and (not client_cap or refused_at_once == connections - client_cap)
    log(f"stalled ({variant}): {connections} stalled bodies from A, {refused_at_once} refused at once, "
        f"{result['a_waiting']} waiting; B {b['answered_200']} of {b['sent']} answered ({b['statuses']})")
    return result


def stalled_step(model_dir: Path, work_dir: Path, *, connections: int = 128, seconds: float = 10.0, client_cap: int = 64) -> dict:
    return {
        "no_cap": stalled_bodies(model_dir, work_dir, connections=connections, seconds=seconds),
        "cap": stalled_bodies(model_dir, work_dir, connections=connections, seconds=seconds, client_cap=client_cap),
        "b_answered_target": B_ANSWERED_TARGET,
    }


# --- 4. pipelining


# The headers python-requests sends with every request: small requests are rarely smaller than this. (Without
# them, 600 translations are 124 KB, which arrived in one read and hid a head-size counter that added up reads.)
CLIENT_HEADERS = [("User-Agent", "python-requests/2.32.3"), ("Accept-Encoding", "gzip, deflate"), ("Accept", "*/*"),
                  ("Connection", "keep-alive")]


def pipelined(url: str, *, requests: int = 600, what: str = "translations") -> dict:
    """`requests` requests in one write on one connection, then every answer read: the status lines counted, and
    for translations each answer's record id checked against its request's (ids 0, 1, 2 ... in order)."""
    if what == "translations":
        sentences = toy_sentences(requests, offset=3000)
        data = b"".join(request(translate([s], ids=[f"p{i}"]), headers=CLIENT_HEADERS) for i, s in enumerate(sentences))
    else:
        sentences = []
        data = request(method="GET", path="/healthz", content_type=None, length=False, headers=CLIENT_HEADERS) * requests
    outcome = raw.exchange(port_of(url), ((0.0, data),), responses=requests, timeout=60.0, check_closed=0.2)
    statuses = collections.Counter(response.status for response in outcome.responses)
    in_order = 0
    for index, response in enumerate(outcome.responses[:len(sentences)]):
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            in_order += json.loads(response.body)["result"][0]["id"] == f"p{index}"
    return {
        "what": what,
        "requests": requests,
        "bytes": len(data),
        "answered": len(outcome.responses),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "in_order": in_order if what == "translations" else None,
        "closed": outcome.closed,
        "error": outcome.error,
        "seconds": outcome.seconds,
        "met": statuses.get(200, 0) == requests and (what != "translations" or in_order == requests),
    }


def pipelined_step(model_dir: Path, work_dir: Path, *, requests: int = 600) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    with Service.ct2(model_dir, {}, work_dir / "service-pipelined.log") as service:
        result = {what: pipelined(service.url, requests=requests, what=what) for what in ("translations", "healthz")}
        result["alive_after"] = service.process.poll() is None
    for what in ("translations", "healthz"):
        r = result[what]
        log(f"pipelined {what}: {r['answered']} of {requests} answered ({r['statuses']}) in {r['seconds']:.1f} s {r['error']}")
    return result


# --- 5. wrong keys


def _valid_key_probes(url: str, stop: threading.Event, every: float, samples: list) -> None:
    """A request with a valid key from the same address every `every` seconds, each on a fresh connection."""
    while not stop.wait(every):
        started = time.monotonic()
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
        try:
            connection.request("POST", "/translation", json.dumps(body(["alpha bravo"])),
                               {"Content-Type": "application/json", "Authorization": f"Bearer {KEY_A}"})
            response = connection.getresponse()
            response.read()
            samples.append((response.status, (time.monotonic() - started) * 1000))
        except (OSError, http.client.HTTPException):
            samples.append((0, (time.monotonic() - started) * 1000))
        finally:
            connection.close()


def wrong_keys(model_dir: Path, work_dir: Path, *, connections: int = 100, seconds: float = 5.0, probe_every: float = 0.5) -> dict:
    """wrk with `connections` connections for `seconds`, every request with a different wrong key; meanwhile
    a valid key from the same address (127.0.0.1) every `probe_every` s. The service logs at info (its
    default), so the log's growth under the flood is part of the cost."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = keys_env(work_dir) | {"MT_LOG_LEVEL": "info"}
    log_path = work_dir / "service-wrong-keys.log"
    # `id` numbers wrk's thread, `i` counts its requests: every guess differs.
    script = wrk_script(work_dir / "wrong-keys.lua", toy_sentences(64, offset=5000), lua_string("Bearer guess-") + ' .. id .. "-" .. i')
    probes: list[tuple[int, float]] = []
    with Service.ct2(model_dir, env, log_path) as service:
        pid = service.process.pid
        log_before = log_path.stat().st_size
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        stop = threading.Event()
        prober = threading.Thread(target=_valid_key_probes, args=(service.url, stop, probe_every, probes))
        prober.start()
        try:
            flood = wrk_statuses(service.url, script, connections=connections, seconds=seconds)
        finally:
            stop.set()
            prober.join(30)
        service_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        try:
            healthz_after: int | str = get(service.url, "/healthz", timeout=5)[0]
        except OSError as error:
            healthz_after = type(error).__name__
        alive = service.process.poll() is None
    grown = log_path.read_bytes()[log_before:]
    statuses = flood["statuses"]
    per_s = {code: n / flood["seconds"] for code, n in statuses.items()}
    result = {
        "connections": connections,
        "seconds": flood["seconds"],
        "answers": flood["answers"],
        "statuses": statuses,
        "unauthorized_per_s": per_s.get("401", 0.0),
        "throttled_per_s": per_s.get("429", 0.0),
        "socket_errors": flood["socket_errors"],
        "client_cpu_per_thread": flood["client_cpu_per_thread"],
        "service_cpu_share": service_cpu,
        "valid_key_probes": len(probes),
        "valid_key_statuses": dict(collections.Counter(str(status) for status, _ in probes)),
        "valid_key_p99_ms": quantile([ms for _, ms in probes], 0.99),
        "log_growth_mb": len(grown) / 1e6,
        "log_lines": grown.count(b"\n"),
        "log_lines_naming_the_address": sum(1 for line in grown.splitlines() if b"127.0.0.1" in line),
        "healthz_after": healthz_after,
        "alive_after": alive,
        "target_per_s": WRONG_KEY_401_PER_S_TARGET,
    }
    result["met"] = result["unauthorized_per_s"] <= WRONG_KEY_401_PER_S_TARGET and bool(probes) and all(s == 200 for s, _ in probes)
    log(f"wrong keys: {connections} connections for {flood['seconds']:.1f} s: {result['unauthorized_per_s']:,.0f} 401/s, "
        f"{result['throttled_per_s']:,.0f} 429/s; valid key {result['valid_key_statuses']}; wrk CPU "
        f"{flood['client_cpu_per_thread']:.0%} of its thread, service {service_cpu:.0%} of a core")
    return result


# --- 6. idle connections under a descriptor limit


class LimitedService(Service):
    """The service started with RLIMIT_NOFILE soft = hard = `nofile` (as `ulimit -n` would), then exec'd:
    same process, so the pid, its /proc entries and its signals are the service's."""

    nofile: ClassVar[int] = 1024

    @property
    def command(self) -> list[str]:
        limit = self.nofile
        code = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
                "os.execv(sys.argv[1], sys.argv[1:])")
        return [sys.executable, "-c", code, *super().command]


def _open_files_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        return f"{soft}:{hard}"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _timed(url: str, method: str, path: str, timeout: float) -> tuple[int | str, float]:
    """(status, or what went wrong, and milliseconds) on a fresh connection. Raw bytes: an answer the service
    sends before reading the body (a 503 and close) is still read, where http.client would stop at the broken pipe."""
    if method == "POST":
        data = translate(["alpha bravo"])
        message = request(data, path=path)
    else:
        message = request(method=method, path=path, content_type=None, length=False)
    started = time.monotonic()
    try:
        outcome = raw.exchange(port_of(url), ((0.0, message),), timeout=timeout, check_closed=0.0)
    except OSError as error:
        return type(error).__name__, (time.monotonic() - started) * 1000
    seconds = outcome.seconds if outcome.responses else time.monotonic() - started
    if outcome.responses:
        return outcome.responses[0].status, seconds * 1000
    return outcome.error or "closed without an answer", seconds * 1000


@contextlib.contextmanager
def _own_open_files(needed: int):
    """This process's soft open-file limit raised to `needed` (within its hard limit) while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, needed)) if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def idle_connections(model_dir: Path, work_dir: Path, *, idle: int = 1100, nofile: int = 1024) -> dict:
    """The service under RLIMIT_NOFILE `nofile`; `idle` connections opened that send nothing (well inside the
    10 s header timeout); then /healthz, /readyz and a translation on new connections; then what each idle
    connection got; then, with them closed, whether the service serves again."""
    work_dir.mkdir(parents=True, exist_ok=True)
    service_class = type("LimitedService", (LimitedService,), {"nofile": nofile})
    service = service_class.service(model_dir, {"MT_LOG_LEVEL": "warning"}, work_dir / "service-idle.log")
    idle_sockets: list[socket.socket] = []
    connect_failures: collections.Counter = collections.Counter()
    with _own_open_files(idle + 512) as own_limit, service:
        pid = service.process.pid
        limit = _open_files_limit(pid)
        fds_before = _open_fds(pid)
        try:
            opened_at = time.monotonic()
            for _ in range(idle):
                try:
                    idle_sockets.append(socket.create_connection((HOST, service.port), timeout=2))
                except OSError as error:
                    connect_failures[type(error).__name__] += 1
            open_seconds = time.monotonic() - opened_at
            time.sleep(0.3)  # the service accepts (or refuses) what is in its backlog
            fds_during = _open_fds(pid)
            healthz, healthz_ms = _timed(service.url, "GET", "/healthz", timeout=5)
            readyz, readyz_ms = _timed(service.url, "GET", "/readyz", timeout=5)
            translation, translation_ms = _timed(service.url, "POST", "/translation", timeout=5)
            got = _first_answers(idle_sockets, 0.5)
            probed_within_s = time.monotonic() - opened_at
        finally:
            for sock in idle_sockets:
                sock.close()
        time.sleep(0.5)
        after_healthz, _ = _timed(service.url, "GET", "/healthz", timeout=5)
        after_translation, _ = _timed(service.url, "POST", "/translation", timeout=5)
        fds_after = _open_fds(pid)
        alive = service.process.poll() is None
    idle_statuses = collections.Counter(_status_of(data) for data in got.values())
    result = {
        "idle": idle,
        "service_open_files_limit": limit,
        "client_open_files_limit": own_limit,
        "connect_failures": dict(connect_failures),
        "opened": len(idle_sockets),
        "open_seconds": open_seconds,
        "service_fds_before": fds_before,
        "service_fds_during": fds_during,
        "service_fds_after": fds_after,
        "healthz": healthz,
        "healthz_ms": healthz_ms,
        "readyz": readyz,
        "readyz_ms": readyz_ms,
        "translation": translation,
        "translation_ms": translation_ms,
        "idle_answered": dict(idle_statuses),
        "idle_refused_503": idle_statuses.get("503", 0),
        "idle_closed_without_answer": idle_statuses.get("closed", 0),
        "idle_still_open": len(idle_sockets) - len(got),
        "probed_within_s": probed_within_s,
        "after_close_healthz": after_healthz,
        "after_close_translation": after_translation,
        "alive_after": alive,
        "healthz_target_ms": HEALTHZ_PROBE_TIMEOUT_S * 1000,
    }
    result["met"] = healthz == 200 and healthz_ms <= HEALTHZ_PROBE_TIMEOUT_S * 1000
    log(f"idle connections: limit {limit}, {len(idle_sockets)} of {idle} opened; /healthz {healthz} in {healthz_ms:.0f} ms, "
        f"/readyz {readyz}, translation {translation}; idle ones: {dict(idle_statuses)}, {result['idle_still_open']} open; "
        f"afterwards /healthz {after_healthz}, translation {after_translation}")
    return result


# --- 7. SIGHUP


def _steady_client(url: str, index: int, deadline: float, started: float, out: dict) -> None:
    """Translations back to back on one kept-alive connection until an answer says `Connection: close` (the
    service is draining: the client moves to another replica, as it would through a load balancer, which stops
    sending new connections here once /readyz says 503), the listener refuses a connect, or `deadline`. A
    transport error on a request is a request lost (a reset)."""
    sentences = toy_sentences(30, offset=6000 + 30 * index)
    answers, resets, refused, moved = [], [], 0, False
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    turn = 0
    try:
        while time.monotonic() < deadline:
            sentence = sentences[turn % len(sentences)]
            turn += 1
            began = time.monotonic()
            fresh = connection.sock is None  # this request opens the connection (http.client connects lazily)
            try:
                connection.request("POST", "/translation", json.dumps(body([sentence])), {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
            except ConnectionRefusedError:
                refused += 1  # no connection: this client would go to another replica
                break
            except (OSError, http.client.HTTPException) as error:
                resets.append((began - started, f"{type(error).__name__}: {error}", fresh))
                break
            text = None
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                text = json.loads(data)["result"][0]["text"]
            answers.append((began - started, response.status, text == exact(sentence, "fr"), time.monotonic() - started))
            if response.getheader("connection", "").lower() == "close":
                moved = True
                break  # draining: this client goes to another replica
    finally:
        connection.close()
    out[index] = {"answers": answers, "resets": resets, "refused": refused, "moved": moved}


def sighup(model_dir: Path, work_dir: Path, *, clients: int = 8, load_seconds: float = 2.0, after_seconds: float = 5.0,
           sig: signal.Signals = signal.SIGHUP) -> dict:
    """`clients` keep-alive clients; SIGHUP after `load_seconds`; the clients go on until refused or
    `after_seconds` after the signal. Then: exited (and how), or still running (then it must still serve, and
    is stopped with SIGTERM). Either way, every request sent must have been answered 200."""
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "service-sighup.log"
    service = Service.ct2(model_dir, {"MT_SHUTDOWN_DELAY_SECONDS": "1", "MT_LOG_LEVEL": "info"}, log_path).start()
    outcomes: dict[int, dict] = {}
    try:
        started = time.monotonic()
        deadline = started + load_seconds + after_seconds
        threads = [threading.Thread(target=_steady_client, args=(service.url, i, deadline, started, outcomes)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(load_seconds)
        signalled_at = time.monotonic() - started
        service.process.send_signal(sig)
        for thread in threads:
            thread.join(after_seconds + 60)
        # A client refused a connect: the listener closed, so the service is on its way out (give it the drain);
        # none was: it ignored the signal (a second is plenty to tell).
        going = any(o["refused"] or o["moved"] for o in outcomes.values()) or service.process.poll() is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(30 if going else 1)
        exit_code = service.process.poll()
        still_running = exit_code is None
        serving_after = None
        if still_running:
            try:
                serving_after = get(service.url, "/healthz", timeout=5)[0]
            except OSError as error:
                serving_after = type(error).__name__
        exited_after = time.monotonic() - started - signalled_at if not still_running else float("nan")
    finally:
        sigterm_exit = service.stop()
    answers = [a for o in outcomes.values() for a in o["answers"]]
    resets = [r for o in outcomes.values() for r in o["resets"]]
    not_200 = [a for a in answers if a[1] != 200]
    if still_running:
        outcome = "ignored: kept serving" if serving_after == 200 else f"ignored, but /healthz said {serving_after}"
    elif exit_code == 0:
        outcome = "drained: exit 0"
    elif exit_code is not None and exit_code < 0:
        outcome = f"killed by signal {-exit_code} ({signal.Signals(-exit_code).name})"
    else:
        outcome = f"exit {exit_code}"
    log_text = log_path.read_text(errors="replace")
    result = {
        "clients": clients,
        "answered": len(answers),
        # Answered once the signal was in: the requests in flight then, and any sent during the drain.
        "answered_after_sighup": sum(1 for a in answers if a[3] >= signalled_at),
        "moved_on_close": sum(1 for o in outcomes.values() if o["moved"]),
        "not_200": len(not_200),
        "not_200_statuses": sorted({a[1] for a in not_200}),
        "inexact": sum(1 for a in answers if a[1] == 200 and not a[2]),
        "resets": len(resets),
        # A reset on a connection this request opened: the kernel took it into the listen backlog, the service
        # never accepted it, and closing the listener reset it. Lost all the same to the client (its request was
        # sent), but not a request the service read and dropped; the sigterm step's clients meet it too.
        "resets_on_fresh_connections": sum(1 for *_, fresh in resets if fresh),
        "reset_errors": [f"{error} at {t - signalled_at:+.3f} s{' (fresh connection)' if fresh else ''}"
                         for t, error, fresh in resets[:10]],
        "refused_connects": sum(o["refused"] for o in outcomes.values()),
        "outcome": outcome,
        "exit_code": None if still_running else exit_code,
        "exit_after_sighup_s": exited_after,
        "still_running": still_running,
        "exit_code_after_sigterm": sigterm_exit if still_running else None,
        "drained_log_line": "stopped: every accepted request was answered" in log_text,
        "tracebacks_in_log": log_text.count("Traceback"),
    }
    result["met"] = (not resets and not not_200 and result["inexact"] == 0
                     and (exit_code == 0 or (still_running and serving_after == 200)))
    log(f"sighup: {len(answers)} answered ({result['answered_after_sighup']} after SIGHUP), {len(resets)} resets, "
        f"{len(not_200)} not 200; {outcome}")
    return result
