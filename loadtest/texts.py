"""Texts for load tests and benchmarks, from two sources:

- `toy`: sentences of the toy checkpoint's task (loadtest/toy_task.py), which the toy model translates exactly;
- `english`: English-like sentences in the benchmark checkpoint's synthetic vocabulary (loadtest/bench_sentences.py),
  which tokenize into realistic piece counts with that model (and are plain English-looking text for a real one).

Pure standard library: Locust users and the benchmark client import it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TEXT_SOURCES = ("toy", "english")

# (fromLang, toLang) pairs per text source. The toy model translates into en (copy), fr (reverse) and
# de (rotate); any of en/fr/de/es works as its source. For English-like text the pairs are what a
# real deployment sees most: English out to several languages, and a few back into English.
PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    # German is no toy *source*: German rules don't end a sentence before a lowercase word (right for real German,
    # whose sentences start with a capital), and every toy sentence is lowercase.
    "toy": (("en", "fr"), ("en", "de"), ("fr", "en"), ("es", "fr"), ("es", "de")),
    "english": (("en", "fr"), ("en", "de"), ("en", "es"), ("en", "ja"), ("de", "en"), ("fr", "en")),
}


@dataclass(frozen=True)
class TextSource:
    """Short sentences and long multi-sentence texts of one kind, deterministic for a seed."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in TEXT_SOURCES:
            raise ValueError(f"unknown text source {self.name!r}; choose one of {', '.join(TEXT_SOURCES)}")

    def sentence(self, rng: random.Random, short: bool = False) -> str:
        if self.name == "toy":
            from loadtest.toy_task import MAX_WORDS, random_sentence

            return random_sentence(rng, 1, 3 if short else MAX_WORDS, dot_probability=0.5)
        from loadtest.bench_sentences import sentence

        return sentence(rng, 3, 8) if short else sentence(rng, 6, 24)

    def long_text(self, rng: random.Random, sentences: tuple[int, int] = (3, 8)) -> str:
        """Several sentences, with a paragraph break in the middle: the service splits and re-joins them."""
        count = rng.randint(*sentences)
        parts = [self._terminated(self.sentence(rng)) for _ in range(count)]
        middle = count // 2
        return " ".join(parts[:middle]) + "\n\n" + " ".join(parts[middle:]) if middle else " ".join(parts)

    def _terminated(self, text: str) -> str:
        # A sentence inside a longer text needs its full stop, or the service can't tell where it ends.
        return text if text.endswith((".", "!", "?")) else text + "."

    def sentences(self, n: int, seed: int, short: bool = False) -> list[str]:
        """`n` distinct sentences (distinct, so no cache or in-flight de-duplication can absorb them)."""
        rng, seen, out = random.Random(seed), set(), []
        attempts = 0
        while len(out) < n:
            text = self.sentence(rng, short)
            attempts += 1
            if text not in seen:
                seen.add(text)
                out.append(text)
            elif attempts > 100 * n:
                raise RuntimeError(f"cannot draw {n} distinct {self.name} sentences")
        return out

    def matches(self, text: str, translation: str, to_lang: str, mode: str = "words", from_lang: str | None = None) -> bool:
        """Whether `translation` is right for `text`, where that is known (toy text into en/fr/de).

        mode "exact": the exact expected output. mode "words": the same words, in any order and ignoring
        full stops; the toy model occasionally drops a final "." (a model error, not a service error),
        while a service that mixed up results between records or requests gives other words.
        mode "off", or a text whose translation is unknown: always True.
        """
        expected = None if mode == "off" else self.expected(text, to_lang, from_lang)
        if expected is None:
            return True
        if mode == "exact":
            return translation == expected
        return sorted(translation.replace(".", " ").split()) == sorted(expected.replace(".", " ").split())

    def expected(self, text: str, to_lang: str, from_lang: str | None = None) -> str | None:
        """The exact translation where it is known (toy text into en/fr/de), else None. Sentences are split as
        the service splits them, with the source language's rules."""
        if self.name != "toy":
            return None
        from loadtest.toy_task import LANG_RULES, expected_translation
        from service import segment

        if to_lang not in LANG_RULES:
            return None
        segmented = segment.split(text, language=from_lang)
        return segment.join(segmented, [expected_translation(s, to_lang) for s in segmented.sentences], to_lang)
