"""Split a text into sentences for translation and join the translations back.

Line and paragraph breaks are kept exactly as they were; sentences within a line are joined with
one space (or none for target languages written without spaces). Sentences are the unit of
batching and caching: a long document becomes many small engine inputs that share batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at ., !, ? or their full-width forms (optionally followed by closing quotes or
# brackets) before whitespace; CJK full stops end a sentence even without a following space.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))\s+|(?<=[。！？])\s*")
_LINE_BREAK = re.compile(r"(\s*\n\s*)")
# Target languages written without spaces between sentences.
NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "km", "my"})


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


def split(text: str) -> Segmented:
    stripped = text.strip()
    if not stripped:
        return Segmented(lines=(), separators=(), leading=text)
    leading = text[: len(text) - len(text.lstrip())]
    trailing = text[len(text.rstrip()) :]
    parts = _LINE_BREAK.split(stripped)
    lines = tuple(_sentences(line) for line in parts[::2])
    return Segmented(lines=lines, separators=tuple(parts[1::2]), leading=leading, trailing=trailing)


def _sentences(line: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _SENTENCE_END.split(line) if part.strip())


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
