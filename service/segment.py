"""Split a text into sentences for translation and join the translations back.

Line and paragraph breaks are kept exactly as they were; sentences within a line are joined with
one space (or none for target languages written without spaces). Sentences are the unit of
batching and caching: a long document becomes many small engine inputs that share batches.

Sentence boundaries within a line come from sentencex (Wikimedia's rule-based segmenter, in Rust:
per-language abbreviation lists, number/ellipsis/quote rules, unknown languages fall back to
English). Measured against the alternatives on tests/fixtures/segment_cases.py (30 cases:
abbreviations in en/de/fr/es, numbers, ellipses, quotes, CJK, danda) and on adversarial lines
(space/tab runs, ".", "!?", "。", "a. ", "Dr. ", quotes; time for 20k characters over time for 1k,
where 20 is linear and 400 quadratic), one call of each library, 2 cores, Python 3.11:

    library              cases  "alpha bravo charlie."  20k English  worst 20k/1k time
    regex (before)       12/30    1.1 us                  34 ns/char  ~30 (its line split: ~380)
    sentencex 1.0.32     28/30    1.5 us                   5 ns/char  ~20 on those; see below
    pysbd 0.3.4          25/30   73 us                  6700 ns/char  270 ("a. " * n)
    blingfire 0.1.8      25/30    2.2 us                  23 ns/char   28; English-only, 2021, numpy
    sentence-splitter    24/30   28 us                   760 ns/char  340 ("." * n)
    syntok 1.4.4         22/30   16 us                   730 ns/char   20; no CJK, keeps "a. b" whole
    nupunkt 0.8.0        22/30    3.4 us                  65 ns/char  200 ("!?" * n)

split() as a whole, before -> after: "alpha bravo charlie." 2.4 -> 1.9 us; 20k characters of
English 0.83 -> 0.18 ms; the 16k-space record of the 2 MB request 180 -> 0.02 ms; worst 20k/1k
time in tests/test_segment.py ~380 -> under 45.

sentencex needs guards, all found by fuzzing it and all tested:
- It is quadratic on some lines: each unmatched opening quote searches to the end of the text
  (8k "“" take 12 ms, 32k take 160 ms), and CJK full stops with no space after them cost time in
  proportion to the text (16k characters of Japanese: 1.4 us a character). So a line longer than
  _WINDOW is fed to it a window at a time (see _settled); the work grows linearly, at worst about
  0.5 us a character ("あ。" or "“." repeated), 0.15 us for ordinary Japanese, 0.01 for English.
- A run of 32 or more spaces is shown to it as one space, so a sentence with a long run inside
  (the 2 MB request of "alpha" + 15,990 spaces + "bravo" records) stays one sentence.
- It panics (a pyo3 PanicException, which is a BaseException) on a letter, a multi-byte space and
  a full stop, e.g. "S\\u00a0.". Every non-ASCII space is shown to it as " ", one for one, and
  sentences are cut from the original text. Should another panic turn up, that window becomes one
  sentence instead of failing the request.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

import sentencex

log = logging.getLogger(__name__)

# Target languages written without spaces between sentences.
NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "km", "my"})
# sentencex's own fallback for codes it does not know; its English rules are the most complete.
DEFAULT_LANGUAGE = "en"
# Characters per sentencex call. Its quadratic cases cost about window² per window, its typical
# case the same per character at any size; a sentence is cut only when it spans more than
# _WINDOW - _LOOKAHEAD - _WINDOW / 4 = 640 characters, near where the engine cuts it into chunks.
_WINDOW = 1024
# How far past a boundary sentencex may look to decide it (the next words, a short quote).
_LOOKAHEAD = _WINDOW // 8
# 32 spaces and the whitespace after them are shown to sentencex as one space (see _shown). A
# literal start lets re skip ahead at C speed and never retry inside a run (r"\s{32,}" costs
# 5 ns a character of prose and 30 inside runs of 31); a run of tabs alone is left as it is.
_LONG_SPACE = re.compile(" " * 32 + r"(\s*)")
# The Unicode White_Space characters outside ASCII (str.isspace() is true for exactly these and
# the ASCII ones; tests check it). sentencex mis-slices them (see above).
_WIDE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


@dataclass(frozen=True)
class Segmented:
    """A text as lines of sentences, with the exact separators between lines."""

    lines: tuple[tuple[str, ...], ...]
    separators: tuple[str, ...]  # separators[i] stands after lines[i]; len = len(lines) - 1
    leading: str = ""
    trailing: str = ""

    @property
    def sentences(self) -> list[str]:
        return [sentence for line in self.lines for sentence in line]


def split(text: str, *, language: str | None = None) -> Segmented:
    """Splits `text` into lines and sentences; `language` is the source language code, if known."""
    stripped = text.strip()
    if not stripped:
        return Segmented(lines=(), separators=(), leading=text)
    leading = text[: len(text) - len(text.lstrip())]
    trailing = text[len(text.rstrip()) :]
    contents, separators = _lines(stripped)
    code = language or DEFAULT_LANGUAGE
    lines = tuple(_sentences(line, code) for line in contents)
    return Segmented(lines=lines, separators=separators, leading=leading, trailing=trailing)


def _lines(text: str) -> tuple[list[str], tuple[str, ...]]:
    """Cuts a text without surrounding whitespace at every whitespace run that holds a newline.

    str.split and strip, not a regex: r"\\s*\\n\\s*" retries from every space of a long run of
    spaces without a newline, which made 20k spaces take 0.3 s.
    """
    if "\n" not in text:
        return [text], ()
    contents: list[str] = []
    separators: list[str] = []
    gap: list[str] = []  # the separator so far: the previous line's tail, then blank lines
    for piece in text.split("\n"):
        content = piece.strip()
        if not content:
            gap.append(piece)
            continue
        head = len(piece) - len(piece.lstrip())
        if contents:
            gap.append(piece[:head])
            separators.append("\n".join(gap))
        contents.append(content)
        gap = [piece[head + len(content) :]]
    return contents, tuple(separators)


def _sentences(line: str, language: str) -> tuple[str, ...]:
    """The sentences of one line (no newlines, no surrounding whitespace)."""
    if line.isascii() and len(line) <= _WINDOW:  # the common case, in one call
        return tuple(sentence for piece in _segment(language, line) if (sentence := piece.strip()))
    shown, to_line = _shown(line)
    ends = _ends(shown, language)
    return tuple(
        sentence for first, last in zip([0, *ends], ends) if (sentence := line[to_line(first) : to_line(last)].strip())
    )


def _shown(line: str) -> tuple[str, Callable[[int], int]]:
    """The line as sentencex is shown it, and the map from its offsets back to the line's.

    A long run of spaces becomes one space, so a sentence with thousands of spaces inside stays one
    sentence (the tokenizer collapses the run anyway) rather than filling windows. Non-ASCII spaces
    become " " one for one, since sentencex panics on some of them.
    """
    parts = _LONG_SPACE.split(line)  # text, the rest of a run after its 32 spaces, text, ...
    if len(parts) == 1:
        return (line if line.isascii() else _WIDE_SPACE.sub(" ", line)), _same
    texts = parts[::2]
    shown = " ".join(texts)
    marks = [end + run for run, end in enumerate(accumulate(map(len, texts[:-1])))]  # each run's space
    removed = list(accumulate((31 + len(rest) for rest in parts[1::2]), initial=0))
    return (shown if shown.isascii() else _WIDE_SPACE.sub(" ", shown)), lambda at: at + removed[bisect_left(marks, at)]


def _same(offset: int) -> int:
    return offset


def _ends(shown: str, language: str) -> list[int]:
    """Where each sentence of `shown` ends, found a window at a time."""
    ends: list[int] = []
    start, size = 0, len(shown)
    while start < size:
        end = min(size, start + _WINDOW)
        found = list(accumulate(map(len, _segment(language, shown[start:end])), initial=start))[1:]
        if end < size:
            found = _settled(found, start, end, shown)
        ends += found
        start = found[-1]
    return ends


def _settled(ends: list[int], start: int, end: int, shown: str) -> list[int]:
    """The sentence ends found in a window that the text after the window cannot move.

    Whether "3." ends a sentence can depend on the next word ("3. Oktober"), so ends within
    _LOOKAHEAD of the window's end are found again by the next window, which starts after the
    last settled end. That end is at least a quarter window on, or one sentence fills the window
    and is cut at a space instead: either way the next window starts at least _WINDOW / 4 later.
    """
    limit = end - _LOOKAHEAD
    settled = [e for e in ends if e <= limit]
    if settled and settled[-1] - start >= _WINDOW // 4:
        return settled
    cut = shown.rfind(" ", start + _WINDOW // 2, limit)  # inside the sentence that spans `limit`
    return [*settled, cut if cut >= 0 else limit]


def _segment(language: str, text: str) -> list[str]:
    """sentencex's pieces of `text` (they add up to `text`), or `text` whole if it panics."""
    try:
        return sentencex.segment(language, text) or [text]
    except BaseException as error:  # a Rust panic arrives as pyo3's PanicException(BaseException)
        if type(error).__name__ != "PanicException":
            raise
        log.warning("sentencex panicked on a %d-character window; kept it as one sentence", len(text))
        return [text]


def join(segmented: Segmented, translations: list[str], target_lang: str) -> str:
    """Rebuilds the text from one translation per sentence, in `segmented.sentences` order."""
    if len(translations) != len(segmented.sentences):
        raise ValueError(f"{len(translations)} translations for {len(segmented.sentences)} sentences")
    glue = "" if target_lang in NO_SPACE_LANGUAGES else " "
    pieces, position = [segmented.leading], 0
    for index, line in enumerate(segmented.lines):
        pieces.append(glue.join(translations[position : position + len(line)]))
        position += len(line)
        if index < len(segmented.separators):
            pieces.append(segmented.separators[index])
    pieces.append(segmented.trailing)
    return "".join(pieces)
