"""The hostile-input set: named requests a careless or malicious client sends, each with what it must get.

Every case is sent on its own connection, with raw sockets (so broken framing, slow bytes, pipelining,
odd versions and absurd headers are sent exactly as written), and checked:

- each response has an expected status: 200, or a 4xx the README documents for that input;
- never a 5xx, never a traceback in a body;
- every error (status >= 400 with a body) is `{"error": {"code", "message"}}` as JSON, with a code the
  README's table gives for that status, and a 405 names the allowed methods;
- a 200 translation has one result per record, exact where the toy model's answer is known;
- afterwards the service is healthy: /healthz answers 200 within 100 ms on a fresh connection and a
  normal translation is exact.

The service under test runs with short head and body timeouts (`SERVICE_ENV`) so that the slow cases take
about a second each. The largest allowed request also has /healthz polled while it is processed.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.reliability import raw
from loadtest.reliability.common import HEALTHZ_TARGET_MS, body, exact, health, log, port_of, toy_sentences

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
SERVICE_ENV = {"MT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S), "MT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S)}
MAX_BODY = 2 * 1024 * 1024  # MT_MAX_BODY_BYTES' default
MAX_TEXT = 20000  # MT_MAX_TEXT_CHARS' default
MAX_RECORDS = 128  # MT_MAX_RECORDS' default

OK, BAD, NOT_FOUND, NOT_ALLOWED = frozenset({200}), frozenset({400}), frozenset({404}), frozenset({405})
TIMEOUT, TOO_LARGE, MEDIA, INVALID = frozenset({408}), frozenset({413}), frozenset({415}), frozenset({422})


def _codes_by_status() -> dict[int, set[str]]:
    from service.schema import ERRORS

    table: dict[int, set[str]] = {}
    for error in ERRORS:
        table.setdefault(error.status, set()).add(error.code)
    return table


CODES = _codes_by_status()
DOCUMENTED = frozenset(status for status in CODES if status < 500) | {200}


@dataclass(frozen=True)
class Case:
    """One hostile request. `parts`: (seconds to wait, bytes to send) in order. `expect`: the statuses each
    response may have, in order (the last set applies to any further ones). `texts`: the exact translations
    a 200 must carry, one per record; `ids`: the ids it must echo; `answers`: for pipelined one-record
    translations, each response's translation in order. `closes`: the server must close the connection after.
    `silent_ok`: the server may close without answering (nothing complete was asked). `action`: a custom
    sender for what one connection's bytes can't express."""

    name: str
    group: str
    parts: tuple[tuple[float, bytes], ...] = ()
    expect: tuple[frozenset[int], ...] = (OK,)
    responses: int = 1
    head_only: bool = False
    texts: tuple[str, ...] | None = None
    ids: tuple | None = None
    answers: tuple[str, ...] | None = None
    closes: bool | None = None
    silent_ok: bool = False
    seconds: tuple[float, float] = (0.0, 10.0)
    watch_healthz: bool = False
    exact_count: bool = True
    action: Callable[[int], raw.Exchange] | None = field(default=None, compare=False)
    note: str = ""


# --- request builders


def request(
    body_bytes: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/translation",
    version: str = "HTTP/1.1",
    content_type: str | None = "application/json",
    headers: list[tuple[str, str]] | None = None,
    length: bool = True,
) -> bytes:
    """Raw request bytes: a Host, the content type and a Content-Length (unless told not to), then `headers`."""
    lines = [f"{method} {path} {version}".encode("latin-1"), b"Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}".encode("latin-1"))
    if length:
        lines.append(f"Content-Length: {len(body_bytes)}".encode())
    for name, value in headers or []:
        lines.append(name.encode("latin-1") + b": " + value.encode("utf-8"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body_bytes


def jdump(document) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def translate(texts: list[str], to_lang: str = "fr", **kwargs) -> bytes:
    return jdump(body(texts, "en", to_lang, **kwargs))


def chunked(data: bytes, size: int = 65536, extension: str = "", trailers: str = "") -> bytes:
    pieces = [f"{len(data[i:i + size]):x}{extension}\r\n".encode() + data[i:i + size] + b"\r\n" for i in range(0, len(data), size)]
    return b"".join(pieces) + b"0\r\n" + trailers.encode() + b"\r\n"


def once(data: bytes) -> tuple[tuple[float, bytes], ...]:
    return ((0.0, data),)


def trickle(data: bytes, pieces: int, interval: float) -> tuple[tuple[float, bytes], ...]:
    step = max(1, len(data) // pieces)
    return tuple((interval if i else 0.0, data[i:i + step]) for i in range(0, len(data), step))


ALPHA = "alpha bravo"
ALPHA_FR = exact(ALPHA, "fr")
VALID = translate([ALPHA])


def post(document_bytes: bytes, **kwargs) -> tuple[tuple[float, bytes], ...]:
    return once(request(document_bytes, **kwargs))


def raw_json(text: str) -> bytes:
    """A translation body whose record text is `text` written verbatim into the JSON (escapes kept as given)."""
    return b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": "' + text.encode("latin-1") + b'"}]}}'


def with_record(record: str) -> bytes:
    """A body with one record written verbatim (to send ids and texts JSON encoders won't write)."""
    return b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [' + record.encode() + b"]}}"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def padded_body(size: int) -> bytes:
    """A valid one-record translation body of exactly `size` bytes (padded with an unknown field)."""
    base = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": ALPHA}]}, "pad": ""}
    empty = len(jdump(base))
    return jdump({**base, "pad": "x" * (size - empty)})


def _distinct_words(count: int) -> str:
    """`count` distinct toy sentences in one text (each is a sentence to translate)."""
    return " ".join(s if s.endswith(".") else s + "." for s in toy_sentences(count))


# --- custom senders


def _idle_connections(port: int, count: int = 200) -> raw.Exchange:
    """`count` connections that send nothing: each must be closed by the server (header timeout)."""
    outcome = raw.Exchange()
    started = time.monotonic()
    deadline = started + HEADER_TIMEOUT_S + 5
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    still_open = 0
    try:
        for sock in sockets:  # they time out together, so reading them one after another takes no longer
            data = b""
            try:
                while True:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                still_open += 1
            except ConnectionResetError:
                pass
            outcome.responses.extend(raw.parse_responses(data) if data else [])
    finally:
        for sock in sockets:
            sock.close()
    outcome.closed = still_open == 0
    if still_open:
        outcome.error = f"timeout: {still_open} of {count} idle connections still open after {deadline - started:.1f} s"
    outcome.seconds = time.monotonic() - started
    return outcome


def _abort_mid_body(port: int) -> raw.Exchange:
    """Sends a head and most of the body, then hangs up: nobody to answer; the service must not mind."""
    started = time.monotonic()
    data = request(translate(toy_sentences(64)))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data[: len(data) - 100])
    return raw.Exchange(closed=True, seconds=time.monotonic() - started)


def _abort_after_request(port: int) -> raw.Exchange:
    """Sends a whole 128-record request and hangs up at once (with an RST): its work is withdrawn."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(translate(toy_sentences(128, offset=300))))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return raw.Exchange(closed=True, seconds=time.monotonic() - started)


def _half_closed(port: int) -> raw.Exchange:
    """Sends a request, then shuts down its sending side: the answer must still come."""
    outcome = raw.Exchange()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(VALID))
        sock.shutdown(socket.SHUT_WR)
        reader = raw._Reader(sock, started + 10)
        try:
            response = raw.read_response(reader)
            if response is not None:
                outcome.responses.append(response)
        except (TimeoutError, ValueError, ConnectionResetError) as error:
            outcome.error = repr(error)
    outcome.seconds = time.monotonic() - started
    return outcome


# --- the set

BIDI = "\u202ealpha bravo\u202c \u2067charlie\u2069 \u200fdelta\u200e"
ZERO_WIDTH = "al\u200bpha\u200c bra\u200dvo\ufeff"
EMOJI = "alpha 😀 bravo 👩‍👩‍👧‍👦 🇫🇷 ❤️ charlie"
MIXED_SCRIPTS = "alpha مرحبا 你好 שלום नमस्ते bravo。 ¿qué? ﷽"


def cases() -> list[Case]:
    out: list[Case] = []

    def add(name, group, parts=(), expect=(OK,), **kwargs):
        out.append(Case(name, group, parts, expect if isinstance(expect, tuple) else (expect,), **kwargs))

    # --- malformed JSON: 400 malformed_json
    g = "malformed JSON"
    for name, data in [
        ("empty body", b""),
        ("whitespace only", b" \r\n\t "),
        ("an unclosed object", b"{"),
        ("truncated after a key", b'{"payload": '),
        ("truncated mid-string", b'{"payload": {"fromLang": "e'),
        ("a trailing comma", b'{"payload": {"fromLang": "en", "toLang": "fr", "records": [],}}'),
        ("single quotes", b"{'payload': {}}"),
        ("unquoted keys", b'{payload: {fromLang: "en"}}'),
        ("a NaN literal", b'{"payload": NaN}'),
        ("an Infinity literal", b'{"x": Infinity, "payload": {}}'),
        ("a comment", b'// comment\n{"payload": {}}'),
        ("two documents", VALID + VALID),
        ("a byte order mark", b"\xef\xbb\xbf" + VALID),
        ("invalid UTF-8 bytes in a text", raw_json("alpha \xff\xfe bravo")),
        ("an overlong UTF-8 encoding", raw_json("alpha \xc0\xaf")),
        ("a surrogate encoded in UTF-8", raw_json("\xed\xa0\x80")),
        ("a lone high surrogate escape", raw_json("alpha \\ud800 bravo")),
        ("a lone low surrogate escape", raw_json("alpha \\udc00 bravo")),
        ("a reversed surrogate pair", raw_json("\\udc00\\ud800")),
        ("a truncated unicode escape", raw_json("\\u12")),
        ("an invalid escape", raw_json("\\x41")),
        ("a raw NUL byte in a string", raw_json("alpha\x00bravo")),
        ("a raw tab in a string", raw_json("alpha\tbravo")),
        ("a raw newline in a string", raw_json("alpha\nbravo")),
        ("a NUL byte after the document", VALID + b"\x00"),
        ("UTF-16 with a BOM", b"\xff\xfe" + VALID.decode().encode("utf-16-le")),
        ("UTF-32", VALID.decode().encode("utf-32")),
        ("nesting 1,100 deep", b'{"payload": ' + nested(1100).encode() + b"}"),
        ("nesting 100,000 deep (unclosed)", b"[" * 100_000),
        ("64 KiB of random bytes", random.Random(7).randbytes(65536)),
        ("the literal undefined", b"undefined"),
    ]:
        add(name, g, post(data), BAD)

    # Valid JSON that orjson declines (a number no double holds) is read exactly: it fails on its shape, not its number.
    add("a number that overflows a double", "malformed JSON", post(b'{"x": 1e999, "payload": {}}'), INVALID)

    # --- wrong shapes and types: 422
    g = "wrong types"
    for name, document in [
        ("the body is an array", []),
        ("the body is a string", "payload"),
        ("the body is a number", 7),
        ("the body is null", None),
        ("the body is true", True),
        ("no payload", {}),
        ("payload is an array", {"payload": []}),
        ("payload is a string", {"payload": "en"}),
        ("payload is null", {"payload": None}),
        ("payload is a number", {"payload": 1}),
        ("no fromLang", {"payload": {"toLang": "fr", "records": []}}),
        ("no records", {"payload": {"fromLang": "en", "toLang": "fr"}}),
        ("records is an object", {"payload": {"fromLang": "en", "toLang": "fr", "records": {"id": "1", "text": ALPHA}}}),
        ("records is a string", {"payload": {"fromLang": "en", "toLang": "fr", "records": ALPHA}}),
        ("records is null", {"payload": {"fromLang": "en", "toLang": "fr", "records": None}}),
        ("a record is null", {"payload": {"fromLang": "en", "toLang": "fr", "records": [None]}}),
        ("a record is a string", {"payload": {"fromLang": "en", "toLang": "fr", "records": [ALPHA]}}),
        ("a record is an array", {"payload": {"fromLang": "en", "toLang": "fr", "records": [["1", ALPHA]]}}),
        ("a record without id", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"text": ALPHA}]}}),
        ("a record without text", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1"}]}}),
        ("text is a number", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": 5}]}}),
        ("text is null", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": None}]}}),
        ("text is an array", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": [ALPHA]}]}}),
        ("text is an object", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": {"t": ALPHA}}]}}),
        ("text is true", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": True}]}}),
        ("id is null", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": None, "text": ALPHA}]}}),
        ("id is true", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": True, "text": ALPHA}]}}),
        ("id is an array", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": [1], "text": ALPHA}]}}),
        ("id is an object", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": {}, "text": ALPHA}]}}),
        ("id is a fraction", {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": 1.5, "text": ALPHA}]}}),
        ("fromLang is a number", {"payload": {"fromLang": 1, "toLang": "fr", "records": []}}),
        ("fromLang is null", {"payload": {"fromLang": None, "toLang": "fr", "records": []}}),
        ("toLang is an array", {"payload": {"fromLang": "en", "toLang": ["fr"], "records": []}}),
        ("toLang is an object", {"payload": {"fromLang": "en", "toLang": {"code": "fr"}, "records": []}}),
        ("fromLang is empty", {"payload": {"fromLang": "", "toLang": "fr", "records": []}}),
        ("fromLang is unknown", {"payload": {"fromLang": "xx", "toLang": "fr", "records": []}}),
        ("toLang in capitals", {"payload": {"fromLang": "en", "toLang": "FR", "records": []}}),
        ("toLang with a trailing space", {"payload": {"fromLang": "en", "toLang": "fr ", "records": []}}),
        ("toLang with a NUL", {"payload": {"fromLang": "en", "toLang": "fr\u0000", "records": []}}),
        ("toLang is a path", {"payload": {"fromLang": "en", "toLang": "../../etc/passwd", "records": []}}),
        ("fromLang of 10,000 characters", {"payload": {"fromLang": "e" * 10000, "toLang": "fr", "records": []}}),
    ]:
        add(name, g, post(jdump(document)), INVALID)

    # --- ids at and beyond 64 bits (README: integers echoed exactly within 64 bits, larger ones 422)
    g = "ids"
    for name, literal, expect, echoed in [
        ("id 2^64 - 1 (the largest)", str(2**64 - 1), OK, 2**64 - 1),
        ("id -2^63 (the smallest)", str(-(2**63)), OK, -(2**63)),
        ("id 2^64 (beyond 64 bits)", str(2**64), INVALID, None),
        ("id -2^63 - 1 (beyond 64 bits)", str(-(2**63) - 1), INVALID, None),
        ("id 10^30", "1" + "0" * 30, INVALID, None),
        ("id of 400 digits", "9" * 400, frozenset({400, 422}), None),
        # JSON Schema's integer admits both (the document's ids are integers): each is the integer it equals.
        ("id 1e3 (an exponent)", "1e3", OK, 1000),
        ("id 2.0 (an integer with a zero fraction)", "2.0", OK, 2),
        # A double would read this as 1.0; the service reads ids written with a fraction from their exact digits.
        ("id 1.0000000000000000001 (a fraction finer than a double)", "1.0000000000000000001", INVALID, None),
        ("id -0", "-0", OK, 0),
        ("id of 100,000 characters", json.dumps("i" * 100_000), OK, "i" * 100_000),
        ("id with a NUL and emoji", json.dumps("a\u0000😀"), OK, "a\u0000😀"),
    ]:
        add(name, g, post(with_record(f'{{"id": {literal}, "text": "{ALPHA}"}}')), expect,
            texts=(ALPHA_FR,) if 200 in expect and echoed is not None else None,
            ids=(echoed,) if 200 in expect and echoed is not None else None,
            note="the README: integers are echoed exactly within 64 bits, larger ones and fractions get 422" if expect == INVALID else "")
    # Past 2^53 a double no longer holds every integer: the id must come back with its own digits, not a double's.
    add("id 2^53 + 1 written 9007199254740993.0", g, post(with_record(f'{{"id": 9007199254740993.0, "text": "{ALPHA}"}}')),
        OK, texts=(ALPHA_FR,), ids=(9007199254740993,), note="read from its exact digits, echoed unchanged")
    add("100 records with the same id", g, post(translate([ALPHA] * 100, ids=["same"] * 100)), OK,
        texts=(ALPHA_FR,) * 100, ids=("same",) * 100)

    # --- unknown fields, duplicates, nesting: ignored (200)
    g = "unknown fields"
    extra = {"payload": {**body([ALPHA])["payload"], "extra": {"a": [1, 2, {"b": None}]}}, "version": 2}
    add("unknown fields at every level", g, post(jdump({**extra, "payload": {**extra["payload"], "records": [
        {"id": "1", "text": ALPHA, "lang": "en", "meta": {"x": 1}}]}})), OK, texts=(ALPHA_FR,))
    add("an unknown field nested 1,000 deep", g, post(jdump(body([ALPHA]))[:-1] + b', "deep": ' + nested(1000).encode() + b"}"),
        OK, texts=(ALPHA_FR,))
    add("50,000 unknown keys in payload", g, post(jdump({"payload": {**body([ALPHA])["payload"], **{f"k{i}": i for i in range(50_000)}}})),
        OK, texts=(ALPHA_FR,))
    add("a 1.5 MB unknown string", g, post(jdump({**body([ALPHA]), "blob": "z" * 1_500_000})), OK, texts=(ALPHA_FR,))
    add("a 4,000-digit number in an unknown field", g, post(jdump(body([ALPHA]))[:-1] + b', "n": ' + b"7" * 4000 + b"}"),
        frozenset({200, 400}), note="JSON allows it; a parser may refuse a number no double holds")
    add("duplicate payload keys (the last wins)", g, post(b'{"payload": {"fromLang": "xx"}, ' + jdump(body([ALPHA]))[1:]), OK, texts=(ALPHA_FR,))
    add("duplicate text keys", g, post(with_record(f'{{"id": "1", "text": 5, "text": "{ALPHA}"}}')), OK, texts=(ALPHA_FR,))

    # --- texts: empty, whitespace runs, punctuation runs, Unicode oddities (200, or 413 where documented)
    g = "texts"
    add("an empty records list", g, post(translate([])), OK, texts=())
    add("an empty text", g, post(translate([""])), OK, texts=("",))
    for name, text in [
        ("20,000 spaces", " " * MAX_TEXT),
        ("20,000 newlines", "\n" * MAX_TEXT),
        ("10,000 CRLFs", "\r\n" * (MAX_TEXT // 2)),
        ("20,000 tabs", "\t" * MAX_TEXT),
        ("20,000 mixed Unicode spaces", (" \t\n\u00a0\u3000\u2028\u2029\x85" * MAX_TEXT)[:MAX_TEXT]),
    ]:
        add(name, g, post(translate([text])), OK, texts=(text,), note="whitespace is kept as it is")
    spaced = "alpha" + " " * (MAX_TEXT - 10) + "bravo"
    add("two words 19,990 spaces apart", g, post(translate([spaced])), OK, texts=("bravo alpha",))
    add("one sentence on 3,333 lines", g, post(translate(["alpha\n" * 3333])), OK, texts=("alpha\n" * 3333,))
    add("one sentence repeated 1,538 times", g, post(translate(["alpha bravo. " * 1538])), OK, texts=("bravo alpha. " * 1538,))
    for name, text in [
        ("20,000 full stops", "." * MAX_TEXT),
        ("10,000 '!?'", "!?" * (MAX_TEXT // 2)),
        ("20,000 ideographic full stops", "。" * MAX_TEXT),
        ("20,000 dandas", "।" * MAX_TEXT),
        ("20,000 unmatched opening quotes", "“" * MAX_TEXT),
        ("'a. ' 6,666 times", "a. " * 6666),
        ("20,000 zero-width spaces", "\u200b" * MAX_TEXT),
        ("20,000 right-to-left overrides", "\u202e" * MAX_TEXT),
        ("20,000 emoji", "😀" * MAX_TEXT),
        ("10,000 combining accents", "e\u0301" * (MAX_TEXT // 2)),
        ("20,000 escaped NULs", "\u0000" * MAX_TEXT),
        ("20,000 control characters", "".join(chr(c) for c in range(1, 32) if c not in (9, 10, 13)) * 689),
        ("a word of 20,000 letters", "a" * MAX_TEXT),
        ("3,333 words without a full stop", "alpha " * 3333),
        ("a letter, a no-break space and a full stop", "S\u00a0."),
        ("noncharacters and private use", "\uffff\U0010ffff\ue000\U000f0000 alpha"),
        ("bidi controls", BIDI),
        ("zero-width characters inside words", ZERO_WIDTH),
        ("emoji sequences", EMOJI),
        ("mixed scripts", MIXED_SCRIPTS),
    ]:
        add(name, g, post(translate([text])), OK)
    add("a surrogate pair escape (an emoji)", g, post(raw_json("\\ud83d\\ude00 alpha")), OK)
    add("more distinct sentences than the queue holds", g, post(translate([_distinct_words(300)])), OK,
        note="served whole, a window of the queue at a time")
    add("a text of 20,001 characters", g, post(translate(["a" * (MAX_TEXT + 1)])), TOO_LARGE)
    add("20,001 emoji (characters, not bytes)", g, post(translate(["😀" * (MAX_TEXT + 1)])), TOO_LARGE)

    # --- records and body size limits
    g = "limits"
    sentences = toy_sentences(MAX_RECORDS, offset=500)
    add("128 records", g, post(translate(sentences)), OK, texts=tuple(exact(s, "fr") for s in sentences))
    add("129 records", g, post(translate(toy_sentences(MAX_RECORDS + 1))), TOO_LARGE)
    # 128 different texts (so neither the cache nor de-duplication shortens the work), each two words 15,990
    # spaces apart: 2 MB, the most the default limits let through. /healthz is polled while it is processed.
    pairs = toy_sentences(MAX_RECORDS, offset=1000)
    spread = [" ".join(p.split()[:1]) + " " * 15990 + " ".join(p.split()[1:]) for p in pairs]
    add("the largest allowed request: 128 different texts of 16,000 characters (2 MB)", g, post(translate(spread)), OK,
        texts=tuple(exact(p, "fr") for p in pairs), watch_healthz=True)
    for name, size, expect in [
        ("a body 1 byte under the limit", MAX_BODY - 1, OK),
        ("a body exactly at the limit", MAX_BODY, OK),
        ("a body 1 byte over the limit", MAX_BODY + 1, TOO_LARGE),
    ]:
        add(name, g, post(padded_body(size)), expect, texts=(ALPHA_FR,) if expect == OK else None)
    add("a chunked body exactly at the limit", g,
        once(request(chunked(padded_body(MAX_BODY)), length=False, headers=[("Transfer-Encoding", "chunked")])), OK, texts=(ALPHA_FR,))
    add("a chunked body 1 byte over the limit", g,
        once(request(chunked(padded_body(MAX_BODY + 1)), length=False, headers=[("Transfer-Encoding", "chunked")])), TOO_LARGE)
    add("a chunked body of 8 MiB", g,
        once(request(chunked(b" " * (4 * MAX_BODY)), length=False, headers=[("Transfer-Encoding", "chunked")])), TOO_LARGE)
    add("Content-Length 3 MiB, no body sent", g, once(request(headers=[("Content-Length", str(3 * 1024 * 1024))], length=False)), TOO_LARGE)
    add("Expect: 100-continue over the limit", g,
        once(request(headers=[("Content-Length", str(MAX_BODY + 1)), ("Expect", "100-continue")], length=False)), TOO_LARGE)
    add("a refused body, then a valid request on the same connection", g, once(request(b"x" * (MAX_BODY + 1)) + request(VALID)),
        (TOO_LARGE, OK), responses=2)

    # --- content types
    g = "content types"
    for name, content_type, expect in [
        ("text/plain", "text/plain", MEDIA),
        ("form-urlencoded", "application/x-www-form-urlencoded", MEDIA),
        ("multipart", "multipart/form-data; boundary=x", MEDIA),
        ("XML", "application/xml", MEDIA),
        ("application/jsonx", "application/jsonx", MEDIA),
        ("application/problem+json", "application/problem+json", frozenset({200, 415})),
        ("JSON with a charset", "application/json; charset=utf-8", OK),
        ("JSON in capitals", "APPLICATION/JSON", OK),
        ("JSON declared UTF-16 but sent as UTF-8", "application/json; charset=utf-16", OK),
        ("an empty content type", "", frozenset({200, 415})),
        ("a content type with 2,000 parameters", "application/json" + "; p=v" * 2000, OK),
    ]:
        add(f"content type {name}", g, post(VALID, content_type=content_type), expect, texts=(ALPHA_FR,) if expect == OK else None)
    add("no content type", g, post(VALID, content_type=None), OK, texts=(ALPHA_FR,))
    add("two content types, the last text/plain", g, post(VALID, headers=[("Content-Type", "text/plain")]), frozenset({200, 415}))
    add("a gzip body declared with Content-Encoding", g,
        post(__import__("gzip").compress(VALID), headers=[("Content-Encoding", "gzip")]), frozenset({400, 415}))

    # --- framing
    g = "framing"
    te = [("Transfer-Encoding", "chunked")]
    add("chunked, no Content-Length", g, once(request(chunked(VALID), length=False, headers=te)), OK, texts=(ALPHA_FR,))
    add("chunked in 1-byte chunks", g, once(request(chunked(VALID, 1), length=False, headers=te)), OK, texts=(ALPHA_FR,))
    add("chunked with extensions and trailers", g,
        once(request(chunked(VALID, 16, ";ext=1", "X-Trailer: t\r\n"), length=False, headers=te)), OK, texts=(ALPHA_FR,))
    broken_body = "a framing error inside this request's own body: 400 at once, not 408 after MT_BODY_TIMEOUT_SECONDS"
    add("a chunk size that is not hex", g, once(request(b"zz\r\n" + VALID + b"\r\n0\r\n\r\n", length=False, headers=te)), BAD,
        note=broken_body)
    add("a chunk size that overflows", g, once(request(b"f" * 40 + b"\r\nx\r\n0\r\n\r\n", length=False, headers=te)), BAD,
        note=broken_body)
    add("Content-Length and Transfer-Encoding both", g,
        once(request(chunked(VALID), length=False, headers=[("Content-Length", "5"), *te])), BAD, closes=True)
    add("Transfer-Encoding gzip", g, once(request(VALID, length=False, headers=[("Transfer-Encoding", "gzip")])), BAD,
        note=broken_body)
    add("two different Content-Lengths", g, once(request(VALID, headers=[("Content-Length", "3")])), BAD, closes=True)
    add("a negative Content-Length", g, once(request(VALID, length=False, headers=[("Content-Length", "-1")])), BAD)
    add("a Content-Length with a plus sign", g, once(request(VALID, length=False, headers=[("Content-Length", f"+{len(VALID)}")])), BAD)
    add("a Content-Length of 23 digits", g, once(request(VALID, length=False, headers=[("Content-Length", "9" * 23)])), BAD)
    add("a Content-Length that is not a number", g, once(request(VALID, length=False, headers=[("Content-Length", "ten")])), BAD)
    add("a Content-Length shorter than the body", g, once(request(VALID, length=False, headers=[("Content-Length", "10")])),
        (BAD,), responses=2, exact_count=False, note="the rest of the body is read as a next request, which is not HTTP")
    add("Expect: 100-continue", g,
        ((0.0, request(headers=[("Content-Length", str(len(VALID))), ("Expect", "100-continue")], length=False)), (0.2, VALID)),
        OK, texts=(ALPHA_FR,))
    add("HTTP/1.0", g, post(VALID, version="HTTP/1.0"), OK, texts=(ALPHA_FR,), closes=True)
    add("HTTP/1.0 asking for keep-alive", g, post(VALID, version="HTTP/1.0", headers=[("Connection", "keep-alive")]), OK, texts=(ALPHA_FR,))
    add("HTTP/1.1 with Connection: close", g, post(VALID, headers=[("Connection", "close")]), OK, texts=(ALPHA_FR,), closes=True)
    add("HTTP/0.9", g, once(b"GET /healthz\r\n"), frozenset({400, 408}), silent_ok=True)
    add("HTTP/1.2", g, post(VALID, version="HTTP/1.2"), BAD)
    add("HTTP/9.9", g, post(VALID, version="HTTP/9.9"), BAD)
    add("the HTTP/2 preface", g, once(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), BAD)
    add("a TLS ClientHello", g, once(bytes.fromhex("16030100a5010000a10303") + bytes(64)), BAD)
    add("empty lines only", g, once(b"\r\n\r\n\r\n"), TIMEOUT, silent_ok=True, closes=True,
        seconds=(HEADER_TIMEOUT_S * 0.9, HEADER_TIMEOUT_S + 3),
        note="blank lines may precede a request line, but they must not stop the head timer: otherwise one CRLF holds a connection open for good")
    add("three pipelined translations", g, once(b"".join(request(translate([s])) for s in toy_sentences(3, offset=700))),
        (OK,), responses=3, answers=tuple(exact(s, "fr") for s in toy_sentences(3, offset=700)))
    add("a translation, a 422 and a translation pipelined", g, once(request(VALID) + request(b"[]") + request(VALID)),
        (OK, INVALID, OK), responses=3, answers=(ALPHA_FR, "", ALPHA_FR))
    add("20 pipelined GET /healthz", g, once(request(method="GET", path="/healthz", content_type=None, length=False) * 20), (OK,), responses=20)
    add("a translation pipelined with a line that is not HTTP", g, once(request(VALID) + b"GARBAGE\r\n\r\n"), (OK, BAD), responses=2,
        answers=(ALPHA_FR, ""),
        closes=True, note="the translation was asked first, so its answer comes first, then 400 for the garbage; a client "
        "reads the first answer as its translation's")

    # --- slow clients (the service runs with 1 s head and body timeouts here)
    g = "slow clients"
    head = b"POST /translation HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    add("a request head that never ends", g, ((0.0, head), *((0.3, b"X-Slow-%d: 1\r\n" % i) for i in range(10))), TIMEOUT,
        closes=True, seconds=(HEADER_TIMEOUT_S * 0.9, HEADER_TIMEOUT_S + 3))
    add("a slow head that completes in time", g, trickle(request(VALID), 5, HEADER_TIMEOUT_S / 10), OK, texts=(ALPHA_FR,))
    add("a body that stops half-way", g, once(request(VALID)[:-20]), TIMEOUT, closes=True,
        seconds=(BODY_TIMEOUT_S * 0.9, BODY_TIMEOUT_S + 3))
    add("a body sent a byte every 0.2 s", g,
        ((0.0, request(VALID)[: -len(VALID)]), *((0.2, VALID[i:i + 1]) for i in range(20))), TIMEOUT, closes=True,
        seconds=(BODY_TIMEOUT_S * 0.9, BODY_TIMEOUT_S + 5))
    add("a chunked body that never ends", g, once(request(b"10\r\n" + VALID[:16] + b"\r\n", length=False, headers=te)), TIMEOUT,
        closes=True, seconds=(BODY_TIMEOUT_S * 0.9, BODY_TIMEOUT_S + 3))
    add("a connection that sends nothing", g, (), TIMEOUT, silent_ok=True, closes=True,
        seconds=(HEADER_TIMEOUT_S * 0.9, HEADER_TIMEOUT_S + 3))
    add("200 connections that send nothing", g, expect=TIMEOUT, silent_ok=True, closes=True, action=_idle_connections,
        seconds=(0.0, HEADER_TIMEOUT_S + 6))
    add("a client that hangs up mid-body", g, expect=OK, silent_ok=True, action=_abort_mid_body)
    add("a client that resets right after a 128-record request", g, expect=OK, silent_ok=True, action=_abort_after_request)
    add("a client that half-closes after its request", g, expect=OK, action=_half_closed)

    # --- methods and paths
    g = "methods and paths"
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        add(f"{method} /translation", g, once(request(method=method, content_type=None, length=method in ("PUT", "PATCH"))), NOT_ALLOWED)
    add("HEAD /translation", g, once(request(method="HEAD", content_type=None, length=False)), NOT_ALLOWED, head_only=True)
    add("CONNECT", g, once(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"), BAD)
    add("an unknown method", g, post(VALID, method="BREW"), BAD)
    add("a lower-case method", g, post(VALID, method="post"), BAD)
    add("POST /healthz", g, post(VALID, path="/healthz"), NOT_ALLOWED)
    add("POST /openapi.json", g, post(VALID, path="/openapi.json"), NOT_ALLOWED)
    add("GET /metrics with a body", g, once(request(b"x" * 1000, method="GET", path="/metrics")), OK)
    for name, path, expect in [
        ("/translation/ (a trailing slash)", "/translation/", NOT_FOUND),
        ("//translation", "//translation", NOT_FOUND),
        ("/Translation", "/Translation", NOT_FOUND),
        ("/translation;x", "/translation;x", NOT_FOUND),
        ("/translation%2F", "/translation%2F", NOT_FOUND),
        ("/translation?x=1&x=2", "/translation?x=1&x=2", OK),
        ("/translation#fragment", "/translation#fragment", OK),
        ("a percent-encoded letter: /%74ranslation", "/%74ranslation", frozenset({200, 404})),
        ("an absolute URI", "http://evil.example/translation", OK),
        ("path traversal", "/../../../../etc/passwd", NOT_FOUND),
        ("encoded path traversal", "/%2e%2e/%2e%2e/etc/passwd", NOT_FOUND),
        ("encoded slashes", "/..%2f..%2fetc%2fpasswd", NOT_FOUND),
        ("backslashes", "/..\\..\\windows\\win.ini", frozenset({400, 404})),
        ("a NUL in the path", "/translation%00", NOT_FOUND),
        ("a path of 8,000 characters", "/" + "a" * 8000, NOT_FOUND),
        ("a path of 100,000 characters", "/" + "a" * 100_000, frozenset({431})),  # a head over 64 KiB
        ("the asterisk form", "*", frozenset({400, 404})),
    ]:
        add(f"POST {name}", g, post(VALID, path=path), expect, texts=(ALPHA_FR,) if expect == OK else None)

    # --- language detection (fromLang "auto", POST /detect): bounded work whatever the text
    g = "language detection"
    rng = random.Random(11)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz      ") for _ in range(MAX_TEXT))
    for name, text, count in [
        ("random letters, the longest texts that fit the body limit", letters, 100),
        ("a combining mark stack on every letter", ("a" + "\u0301\u0302\u0303" * 30) * 150, 8),
        ("right-to-left overrides and five scripts", "\u202eabc\u202d Привет مرحبا 你好 שלום " * 500, 8),
        ("only emoji and digits", "😀123 " * 4000, 8),
        ("private-use characters", "\ue000\ue001" * 5000, 8),
    ]:
        add(f"/detect: {name}", g, post(jdump({"texts": [text] * count}), path="/detect"), OK)
        records = [{"id": str(i), "text": text} for i in range(count)]
        # The toy model's 64 positions turn long texts into more chunks than the queue holds (413), and a text
        # may read as a language the model lacks (422): both are documented answers, never a stall.
        add(f"fromLang auto: {name}", g, post(jdump({"payload": {"fromLang": "auto", "toLang": "fr", "records": records}})),
            frozenset({200, 413, 422}))
    add("/detect: 129 texts", g, post(jdump({"texts": ["a"] * 129}), path="/detect"), TOO_LARGE)
    add("/detect: a text that is a number", g, post(jdump({"texts": [7]}), path="/detect"), INVALID)
    add("/detect: no texts field", g, post(jdump({"text": "hello"}), path="/detect"), INVALID)
    add("fromLang auto with toLang auto", g, post(jdump({"payload": {"fromLang": "auto", "toLang": "auto", "records": []}})),
        INVALID)

    # --- headers
    g = "headers"
    add("5,000 headers", g, post(VALID, headers=[(f"X-H{i}", "v") for i in range(5000)]), frozenset({200, 400, 431}))
    add("a header of 1 MB", g, post(VALID, headers=[("X-Big", "v" * 1_000_000)]), frozenset({200, 400, 431}))
    add("a header of 16 MB", g, post(VALID, headers=[("X-Huge", "v" * 16_000_000)]), frozenset({400, 431}), closes=True,
        note="a request head needs a size limit: without one, each such connection holds its head in memory (a few "
        "hundred such connections: gigabytes)")
    add("a NUL in a header value", g, post(VALID, headers=[("X-A", "a\x00b")]), BAD)
    add("a header line without a colon", g, once(request(VALID).replace(b"Host: 127.0.0.1", b"Host 127.0.0.1")), BAD)
    add("a space in a header name", g, post(VALID, headers=[("X A", "b")]), BAD)
    add("an obsolete folded header", g, post(VALID, headers=[("X-A", "a\r\n b")]), BAD)
    add("UTF-8 in a header value", g, post(VALID, headers=[("X-A", "é😀")]), OK, texts=(ALPHA_FR,))
    add("no Host", g, once(request(VALID).replace(b"Host: 127.0.0.1\r\n", b"")), frozenset({200, 400}))
    add("two Hosts", g, post(VALID, headers=[("Host", "evil.example")]), frozenset({200, 400}))
    add("an X-Request-Id of 10,000 characters", g, post(VALID, headers=[("X-Request-Id", "r" * 10000)]), OK, texts=(ALPHA_FR,))
    add("an X-Request-Id that forges a log line", g, post(VALID, headers=[("X-Request-Id", 'x" "status": 200, "injected')]), OK,
        texts=(ALPHA_FR,))
    add("a 100,000-character Authorization (keys off)", g, post(VALID, headers=[("Authorization", "Bearer " + "k" * 100_000)]),
        frozenset({431}), note="a head over 64 KiB")
    add("a garbage Authorization (keys off)", g, post(VALID, headers=[("Authorization", "Bearer " + "k" * 1000 + " ;,= garbage")]), OK,
        texts=(ALPHA_FR,))
    add("a garbage X-Forwarded-For", g, post(VALID, headers=[("X-Forwarded-For", "999.999.1.1, ::zz, <script>")]), OK,
        texts=(ALPHA_FR,))
    # A server that does not upgrade serves the request as plain HTTP/1.1, body included (RFC 9110 7.8).
    # `curl --http2 http://...` sends the h2c one with every request, a POST's body too.
    add("a POST asking to upgrade to websocket", g, post(VALID, headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]),
        frozenset({200, 400}), texts=(ALPHA_FR,), note="not a websocket handshake: served as HTTP/1.1, or refused in the JSON shape")
    add("a POST asking to upgrade to h2c (what curl --http2 sends)", g,
        post(VALID, headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")]),
        OK, texts=(ALPHA_FR,), note="`curl --http2 http://.../translation -d @body.json` sends this: the body must not be dropped")
    handshake = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    add("a websocket handshake on /healthz", g, once(request(method="GET", path="/healthz", content_type=None, length=False,
                                                            headers=handshake)), frozenset({200, 400, 404}),
        note="the service speaks no websocket: a plain answer or an error in the JSON shape")
    add("a websocket handshake on /translation", g, once(request(method="GET", content_type=None, length=False, headers=handshake)),
        frozenset({400, 404, 405}), note="the service speaks no websocket: an error in the JSON shape, from the README's table")
    return out


# --- running and checking


def check(case: Case, outcome: raw.Exchange) -> list[str]:
    """What is wrong with what `case` got back (empty: nothing)."""
    problems = []
    responses = outcome.responses
    if outcome.error and not (case.silent_ok and not responses and outcome.closed):
        problems.append(f"connection: {outcome.error}")
    if not responses and not case.silent_ok:
        problems.append("no response")
    if case.responses > 1 and case.exact_count and len(responses) != case.responses:
        problems.append(f"{len(responses)} responses, expected {case.responses}: statuses {[r.status for r in responses]}")
    for index, response in enumerate(responses):
        allowed = case.expect[min(index, len(case.expect) - 1)]
        where = f"response {index + 1}: " if len(responses) > 1 else ""
        if response.status >= 500:
            problems.append(f"{where}a {response.status}")
        if response.status not in allowed:
            problems.append(f"{where}status {response.status}, expected {'/'.join(map(str, sorted(allowed)))}")
        if response.status not in DOCUMENTED:
            problems.append(f"{where}status {response.status} is not in the README's table")
        if b"Traceback" in response.body or b'File "/' in response.body:
            problems.append(f"{where}a traceback in the body")
        if response.status >= 400 and response.body:
            problems.extend(where + p for p in _error_shape(response))
        if response.status >= 400 and not response.body and not case.head_only:
            problems.append(f"{where}an error without a body")
        if response.status == 405 and not response.header("allow"):
            problems.append(f"{where}405 without Allow")
        if response.status == 200 and case.texts is not None:
            problems.extend(where + p for p in _translations(case, response))
    problems.extend(_answers(case, outcome))
    if case.closes and not outcome.closed:
        problems.append("the connection was left open")
    low, high = case.seconds
    if not low <= outcome.seconds <= high + 0.5:
        problems.append(f"took {outcome.seconds:.2f} s, expected {low:g}-{high:g} s")
    return problems


def _error_shape(response: raw.Response) -> list[str]:
    if not (response.header("content-type") or "").startswith("application/json"):
        return [f"error content-type {response.header('content-type')!r}"]
    try:
        document = json.loads(response.body)
    except ValueError:
        return [f"error body is not JSON: {response.body[:100]!r}"]
    error = document.get("error") if isinstance(document, dict) else None
    if not (isinstance(document, dict) and set(document) == {"error"} and isinstance(error, dict) and set(error) == {"code", "message"}
            and isinstance(error["code"], str) and isinstance(error["message"], str)):
        return [f"error body not in the shape {{\"error\": {{\"code\", \"message\"}}}}: {response.body[:200]!r}"]
    if error["code"] not in CODES.get(response.status, set()):
        return [f"code {error['code']!r} is not one the README gives for {response.status}"]
    return []


def _translations(case: Case, response: raw.Response) -> list[str]:
    try:
        result = json.loads(response.body)["result"]
    except (ValueError, KeyError, TypeError):
        return [f"a 200 without a result: {response.body[:200]!r}"]
    texts = [record.get("text") if isinstance(record, dict) else None for record in result]
    if len(texts) != len(case.texts):
        return [f"{len(texts)} results, expected {len(case.texts)}"]
    problems = []
    if texts != list(case.texts):
        wrong = next(i for i, (a, b) in enumerate(zip(texts, case.texts)) if a != b)
        problems.append(f"result {wrong} is {str(texts[wrong])[:80]!r}, expected {case.texts[wrong][:80]!r}")
    if case.ids is not None and [record.get("id") for record in result] != list(case.ids):
        got = [str(record.get("id"))[:40] for record in result][:3]
        problems.append(f"ids echoed as {got}, expected {[str(i)[:40] for i in case.ids][:3]}")
    return problems


def _answers(case: Case, outcome: raw.Exchange) -> list[str]:
    """Pipelined translations: each response carries its own request's translation (order kept)."""
    problems = []
    for index, (response, text) in enumerate(zip(outcome.responses, case.answers or ())):
        if response.status != 200 or not text:
            continue
        try:
            got = json.loads(response.body)["result"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            got = None
        if got != text:
            problems.append(f"response {index + 1} translated to {got!r}, expected {text!r} (answers out of order?)")
    return problems


def perform(case: Case, port: int) -> raw.Exchange:
    if case.action is not None:
        return case.action(port)
    if not case.parts:  # connect and send nothing
        return raw.exchange(port, (), responses=1, timeout=HEADER_TIMEOUT_S + 5)
    timeout = max(5.0, case.seconds[1] + 2)
    # Wait to see the connection closed only where the case says it must be.
    return raw.exchange(port, case.parts, responses=case.responses, head_only=case.head_only, timeout=timeout,
                        check_closed=1.0 if case.closes else 0.0)


def _watched(case: Case, port: int, url: str) -> tuple[raw.Exchange, list[float]]:
    """Performs `case` while polling /healthz back to back on a kept-alive connection: (outcome, latencies ms)."""
    import http.client

    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("outcome", perform(case, port)))
    latencies: list[float] = []
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    worker.start()
    try:
        while worker.is_alive():
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.001)
    finally:
        worker.join(60)
        connection.close()
    return box["outcome"], latencies


def run(url: str, selected: list[Case] | None = None) -> dict:
    """Sends every case to the service at `url` (started with SERVICE_ENV), checks each, and the service's
    health after each. Returns the figures and every case's outcome."""
    port = port_of(url)
    selected = cases() if selected is None else selected
    rows, healthz_ms, watched_ms = [], [], []
    started = time.monotonic()
    for index, case in enumerate(selected):
        watch_problems = []
        if case.watch_healthz:
            outcome, latencies = _watched(case, port, url)
            watched_ms.extend(latencies)
            if max(latencies, default=0.0) > HEALTHZ_TARGET_MS:
                watch_problems.append(f"/healthz took up to {max(latencies):.0f} ms while this was processed")
        else:
            try:
                outcome = perform(case, port)
            except OSError as error:  # the service is gone, or refuses connections
                outcome = raw.Exchange(error=f"could not send: {error!r}")
        problems = check(case, outcome) + watch_problems
        # A different sentence each time, so the check goes through the engine rather than the cache.
        after = health(url, toy_sentences(1, offset=900 + index % 300)[0])
        healthz_ms.append(after["healthz_ms"])
        if not after["ok"]:
            problems.append(f"afterwards: {after['problem']}")
        rows.append({
            "name": case.name, "group": case.group,
            "statuses": [r.status for r in outcome.responses],
            "codes": [_code(r) for r in outcome.responses],
            "expected": ["/".join(map(str, sorted(e))) for e in case.expect],
            "seconds": round(outcome.seconds, 3), "closed": outcome.closed,
            "problems": problems, "note": case.note,
        })
        if problems:
            log(f"hostile: {case.name}: " + "; ".join(problems))
    failed = [row for row in rows if row["problems"]]
    statuses: dict[str, int] = {}
    for row in rows:
        for status in row["statuses"]:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "cases": len(rows),
        "groups": sorted({row["group"] for row in rows}),
        "passed": len(rows) - len(failed),
        "failed": [{"name": r["name"], "problems": r["problems"], "statuses": r["statuses"]} for r in failed],
        "server_errors": sum(1 for row in rows for s in row["statuses"] if s >= 500),
        "statuses": dict(sorted(statuses.items())),
        "healthz_after_max_ms": max(healthz_ms, default=float("nan")),
        "healthz_after_p50_ms": sorted(healthz_ms)[len(healthz_ms) // 2] if healthz_ms else float("nan"),
        "healthz_during_largest_max_ms": max(watched_ms, default=float("nan")),
        "healthz_during_largest_polls": len(watched_ms),
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
    }


def _code(response: raw.Response) -> str:
    try:
        return json.loads(response.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""

