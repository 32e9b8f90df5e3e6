"""SIGTERM under full load: what a rolling update does to the clients of a replica.

`clients` keep-alive clients (httpx AsyncClient each with max_connections=1) send translations back to
back; after `load_seconds` the service gets SIGTERM with MT_SHUTDOWN_DELAY_SECONDS=1. It must answer every
request it accepted (with Connection: close while draining, so clients move on), then close its listener:
from then on a client's connect is refused (httpx.ConnectError, fine: that client would go to another
replica). Any other transport error is a reset: a request the service accepted and dropped.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from loadtest.reliability.common import Service, body, exact, log, toy_sentences
from loadtest.stats import nearest_rank as quantile


async def _clients(service: Service, *, clients: int, load_seconds: float, limit_seconds: float) -> dict:
    import httpx

    sentences = toy_sentences(60, offset=40)
    started = time.monotonic()
    deadline = started + limit_seconds  # every client stops by then, whatever happens
    signalled: dict[str, float] = {}
    readiness: list[tuple[float, int]] = []

    async def client(index: int) -> dict:
        answers, resets, refused = [], [], 0
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as http:
            turn = index
            while time.monotonic() < deadline:
                sentence = sentences[turn % len(sentences)]
                turn += 1
                began = time.monotonic()
                try:
                    response = await http.post("/translation", json=body([sentence]))
                except httpx.ConnectError:
                    refused += 1  # the listener has closed: refused before a byte was read
                    break
                except httpx.TransportError as error:  # a reset, or a connection closed under a request
                    resets.append((time.monotonic() - started, f"{type(error).__name__}: {error}".strip(": ")))
                    break
                answers.append((began - started, sentence, response.status_code, _text(response),
                                response.headers.get("connection", ""), time.monotonic() - began))
        return {"answers": answers, "resets": resets, "refused": refused}

    async def terminate() -> None:
        await asyncio.sleep(load_seconds)
        service.process.send_signal(signal.SIGTERM)
        signalled["at"] = time.monotonic() - started
        signalled["monotonic"] = time.monotonic()
        async with httpx.AsyncClient(base_url=service.url, timeout=2) as probe:
            for _ in range(50):  # within the shutdown delay /readyz must turn 503
                try:
                    status = (await probe.get("/readyz")).status_code
                except httpx.TransportError:
                    break
                readiness.append((time.monotonic() - started, status))
                if status == 503:
                    break
                await asyncio.sleep(0.02)

    *outcomes, _ = await asyncio.gather(*(client(i) for i in range(clients)), terminate())
    return {"outcomes": outcomes, "signalled_at": signalled.get("at", float("nan")),
            "signalled_monotonic": signalled.get("monotonic", float("nan")), "readiness": readiness,
            "hit_deadline": time.monotonic() >= deadline}


def _text(response) -> str | None:
    try:
        return response.json()["result"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def run(model_dir: Path, work_dir: Path, *, clients: int = 30, load_seconds: float = 2.0, limit_seconds: float = 30.0) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "service-sigterm.log"
    service = Service.ct2(model_dir, {"MT_SHUTDOWN_DELAY_SECONDS": "1", "MT_LOG_LEVEL": "info"}, log_path).start()
    try:
        outcome = asyncio.run(_clients(service, clients=clients, load_seconds=load_seconds, limit_seconds=limit_seconds))
        exit_code = service.process.wait(60)
        # An upper bound: the wait starts once every client has stopped.
        exit_seconds = time.monotonic() - outcome["signalled_monotonic"]
    finally:
        service.stop()
    answers = [a for o in outcome["outcomes"] for a in o["answers"]]
    resets = [r for o in outcome["outcomes"] for r in o["resets"]]
    after = [a for a in answers if a[0] >= outcome["signalled_at"]]
    not_ok = [a for a in answers if a[2] != 200]
    inexact = [a for a in answers if a[2] == 200 and a[3] != exact(a[1], "fr")]
    readiness = outcome["readiness"]
    log_text = log_path.read_text(errors="replace")
    result = {
        "clients": clients,
        "answered": len(answers),
        "answered_after_sigterm": len(after),
        "not_200": len(not_ok),
        "not_200_statuses": sorted({a[2] for a in not_ok}),
        "inexact": len(inexact),
        "resets": len(resets),
        # When each reset came, in seconds after the signal (the listener closes after the 1 s delay).
        "reset_errors": [f"{error} at {t - outcome['signalled_at']:.3f} s" for t, error in resets[:10]],
        "refused_connects": sum(o["refused"] for o in outcome["outcomes"]),
        "connection_close_answers": sum(1 for a in answers if a[4].lower() == "close"),
        "readyz_503_after_ms": next(((t - outcome["signalled_at"]) * 1000 for t, s in readiness if s == 503), float("nan")),
        "p99_ms": quantile([a[5] * 1000 for a in answers], 0.99),
        "exit_code": exit_code,
        "exit_after_sigterm_s": exit_seconds,
        "clients_hit_deadline": outcome["hit_deadline"],
        "drained_log_line": "stopped: every accepted request was answered" in log_text,
        "tracebacks_in_log": log_text.count("Traceback"),
    }
    log(f"sigterm: {len(answers)} answered ({len(after)} after SIGTERM), {len(resets)} resets, {len(not_ok)} not 200, "
        f"{len(inexact)} inexact, exit {exit_code} after {exit_seconds:.1f} s")
    return result
