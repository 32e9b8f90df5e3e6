"""A light closed-loop HTTP client for the benchmarks: C concurrent clients, one sentence per request.

Each client takes the next sentence from a shared list, posts it as a single-record request, waits for the
answer, and takes the next, until the list is used up or the time limit is reached. Latency is measured here
(client side); the service's timing headers are kept too. Output tokens come from the service's own counter
(translation_output_tokens_total, read from /metrics before and after), so nothing is re-tokenized here.

Raw asyncio HTTP/1.1 over kept-alive connections and nothing else: the client shares the machine's cores with
the server, so it must be cheap. One Python process still tops out at a few thousand requests/s, which a GPU
service can exceed, so `run_closed_loop(..., processes=P)` splits the clients and sentences over P processes
and merges their samples (wall time: first request sent to last response read, across all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from loadtest.harness import metric_value

OUTPUT_TOKENS = "translation_output_tokens_total"


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine (Linux), so the send and receive times of
    several client processes can be merged into one wall time."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Sample:
    latency_ms: float  # client side: request sent -> response read
    status: int
    server_total_ms: float = 0.0  # x-total-time
    queue_ms: float = 0.0  # x-queue-time
    inference_ms: float = 0.0  # x-inference-time
    index: int = -1  # which text of the load (closed loop)
    sent_at: float = float("nan")  # now() when sent and when answered (or failed)
    done_at: float = float("nan")
    exact: bool | None = None  # the translation is the known right one; None: not checked or not known


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # texts in the load; those sent are len(samples)
    seconds: float  # first request sent -> last response read, across every client process
    output_tokens: float
    samples: list[Sample] = field(default_factory=list)
    processes: int = 1
    clients_per_process: list[int] = field(default_factory=list)

    @property
    def unsent(self) -> int:
        """Texts left when the time limit stopped the clients."""
        return self.requests - len(self.samples)

    @property
    def exact(self) -> int:
        return sum(1 for s in self.samples if s.exact)

    @property
    def checked(self) -> int:
        return sum(1 for s in self.samples if s.exact is not None)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def failures(self) -> int:
        return sum(1 for s in self.samples if s.status != 200)

    @property
    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for sample in self.samples:
            counts[sample.status] = counts.get(sample.status, 0) + 1
        return counts

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.ok) / self.seconds if self.seconds > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile([s.latency_ms for s in self.ok], q)

    def server(self, attribute: str, q: float) -> float:
        return percentile([getattr(s, attribute) for s in self.ok], q)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def body(text: str, from_lang: str, to_lang: str) -> bytes:
    return json.dumps({"payload": {"fromLang": from_lang, "toLang": to_lang, "records": [{"id": 0, "text": text}]}}).encode()


class Connection:
    """One kept-alive HTTP/1.1 connection, raw asyncio: a few microseconds per request, where a full HTTP
    client library costs a millisecond or more of the CPU the server needs on a small machine."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        await self._open()
        return self

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def __aexit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def request(self, method: str, path: str, content: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self._reader.at_eof() or self._writer.is_closing():
            await self._open()  # the server closed an idle keep-alive connection (uvicorn: after 5 s)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
        self._writer.write(head.encode("latin-1") + b"\r\n" + content)
        return await asyncio.wait_for(self._response(), self.timeout)

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            await self._reader.readuntil(b"\r\n")
            payload = b"".join(chunks)
        else:
            payload = b""
        return status, headers, payload


async def metric(url: str, name: str) -> float:
    """One unlabelled sample of the service's Prometheus exposition (0 if absent)."""
    async with Connection(url, 60.0) as connection:
        status, _, payload = await connection.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return metric_value(payload.decode(), name)


async def post_one(
    connection: Connection, text: str, from_lang: str, to_lang: str, index: int = -1, expected: str | None = None
) -> Sample:
    """One single-record request; with `expected`, the answer's text is compared with it (exact)."""
    content = body(text, from_lang, to_lang)
    sent = now()
    status, headers, payload = await connection.request("POST", "/translation", content)
    done = now()

    def header(name: str) -> float:
        try:
            return float(headers.get(name, "0"))
        except ValueError:
            return 0.0

    exact = None
    if expected is not None:
        try:
            exact = status == 200 and json.loads(payload)["result"][0]["text"] == expected
        except (ValueError, KeyError, IndexError, TypeError):
            exact = False
    return Sample(
        (done - sent) * 1000, status, header("x-total-time"), header("x-queue-time"), header("x-inference-time"),
        index, sent, done, exact,
    )


async def lone(
    url: str,
    texts: Sequence[str],
    from_lang: str,
    to_lang: str,
    before_each: Callable[[int], None] | None = None,
    after_each: Callable[[int], None] | None = None,
) -> list[Sample]:
    """One request at a time on one kept-alive connection; `before_each(i)` and `after_each(i)` run
    (blocking, nothing else is in flight) around request i."""
    async with Connection(url) as connection:
        samples = []
        for index, text in enumerate(texts):
            if before_each is not None:
                before_each(index)
            samples.append(await post_one(connection, text, from_lang, to_lang))
            if after_each is not None:
                after_each(index)
        return samples


def run_lone(url: str, texts: Sequence[str], from_lang: str, to_lang: str, before_each=None, after_each=None) -> list[Sample]:
    return asyncio.run(lone(url, texts, from_lang, to_lang, before_each, after_each))


async def _clients(
    url: str,
    texts: Sequence[str],
    indices: Sequence[int],
    concurrency: int,
    from_lang: str,
    to_lang: str,
    request_timeout: float,
    time_limit: float,
    check: str | None,
) -> list[Sample]:
    """`concurrency` clients (one connection each) share `texts`; after `time_limit` seconds they take no new one.
    `check` names a loadtest.texts source whose known translations the answers are compared with."""
    expected: list[str | None] = [None] * len(texts)
    if check:
        from loadtest.texts import TextSource

        source = TextSource(check)
        expected = [source.expected(text, to_lang, from_lang) for text in texts]
    pending = list(reversed(range(len(texts))))
    samples: list[Sample] = []
    deadline = now() + time_limit

    async def worker() -> None:
        async with Connection(url, request_timeout) as connection:
            while pending and now() < deadline:
                i = pending.pop()
                sent = now()
                try:
                    samples.append(await post_one(connection, texts[i], from_lang, to_lang, indices[i], expected[i]))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    samples.append(Sample(float("nan"), 0, index=indices[i], sent_at=sent, done_at=now()))
                    return  # the connection is in an unknown state: this client stops

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


_barrier = None  # set in each client process: they all start sending together


def _init_process(barrier) -> None:
    global _barrier
    _barrier = barrier


def _process_share(args: tuple) -> list[Sample]:
    _barrier.wait(timeout=120)  # every process started and imported: none gets a head start
    return asyncio.run(_clients(*args))


def split(count: int, parts: int) -> list[int]:
    """`count` as `parts` near-equal shares, larger first: split(10, 4) == [3, 3, 2, 2]."""
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def run_closed_loop(
    url: str,
    texts: Sequence[str],
    concurrency: int,
    *,
    processes: int = 1,
    from_lang: str = "en",
    to_lang: str = "fr",
    timeout: float = 600.0,
    time_limit: float = 600.0,
    check: str | None = None,
) -> LoadResult:
    """Sends every text once (until `time_limit`), from `concurrency` clients spread over `processes` processes;
    returns the merged samples and rates. Each process gets its share of the clients and, in proportion, of the
    texts (a contiguous slice: `Sample.index` points back into `texts`)."""
    tokens_before = asyncio.run(metric(url, OUTPUT_TOKENS))
    processes = max(1, min(processes, concurrency))
    clients = split(concurrency, processes)
    if processes == 1:
        samples = asyncio.run(_clients(url, texts, range(len(texts)), concurrency, from_lang, to_lang, timeout, time_limit, check))
    else:
        # Texts in proportion to clients, so that every process runs about as long as the others.
        bounds = [len(texts) * sum(clients[:i]) // concurrency for i in range(processes + 1)]
        shares = [
            (url, texts[lo:hi], range(lo, hi), n, from_lang, to_lang, timeout, time_limit, check)
            for n, lo, hi in zip(clients, bounds, bounds[1:])
        ]
        # spawn, not fork: the bench process may hold threads (CTranslate2, torch) that fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(processes)
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_process, initargs=(barrier,)) as pool:
            samples = [sample for share in pool.map(_process_share, shares) for sample in share]
    tokens = asyncio.run(metric(url, OUTPUT_TOKENS)) - tokens_before
    seconds = max((s.done_at for s in samples), default=0.0) - min((s.sent_at for s in samples), default=0.0)
    return LoadResult(concurrency, len(texts), seconds, tokens, samples, processes, clients)
