"""English-like synthetic sentences for benchmarks, from the word list the benchmark checkpoint's
SentencePiece model was trained on (scripts/make_bench_checkpoint.py), so that benchmark inputs tokenize into
realistic piece counts: frequent words are one piece, rare words two or more, as with a real 128k vocabulary.

    from loadtest.bench_sentences import sentences
    sentences(100, seed=0, min_words=8, max_words=24)

Pure standard library (no torch): the load tests (loadtest/texts.py) and the checkpoint builder import it.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import bisect
import itertools
import random
from functools import lru_cache

# Real English function words, most frequent first: they give sentences English-like rhythm and piece counts.
FUNCTION_WORDS: tuple[str, ...] = tuple(
    """the of and to a in is that for it was on with as be by at this are from or have an they which one
    you were her all she there would their we him been has when who will more no if out so said what up its
    about into than them can only other new some could time these two may then do first any my now such like
    our over man me even most made after also did many before must through back years where much your way
    well down should because each just those people how too little state good very make world still own see
    men work long get here between both life being under never day same another know while last might us
    great old year off come since against go came right used take three""".split()
)

# Content words are made of English-like syllables; a fixed seed makes the list the same everywhere.
_ONSETS = (
    "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sm sn sp st str "
    "sw th tr tw wh"
).split()
_VOWELS = "a e i o u a e i o u a e i o y ea ee oo ou ai".split()
_CODAS = ["", "", "", "", "", "n", "r", "s", "t", "l", "m", "n", "r", "nd", "ng", "nt", "st", "ck", "ll", "sh", "th"]
_SUFFIXES = ["", "", "", "", "", "", "", "s", "s", "ed", "ing", "er", "ly", "ion", "ness", "ment", "able"]
CONTENT_WORD_COUNT = 20000
WORD_LIST_SEED = 1234
ZIPF_EXPONENT = 1.05
PUNCTUATION_END = (".", ".", ".", ".", ".", ".", "?", "!")
COMMA_PROBABILITY = 0.08


def _make_word(rng: random.Random) -> str:
    syllables = rng.choices((1, 2, 3, 4), weights=(42, 38, 16, 4))[0]
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
    return word + rng.choice(_SUFFIXES)


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """All words, most frequent first: the function words, then CONTENT_WORD_COUNT made-up content words."""
    rng = random.Random(WORD_LIST_SEED)
    seen = set(FUNCTION_WORDS)
    content: list[str] = []
    while len(content) < CONTENT_WORD_COUNT:
        word = _make_word(rng)
        if 2 <= len(word) <= 14 and word not in seen:
            seen.add(word)
            content.append(word)
    # Frequent words are short (Zipf's law of abbreviation); sorted() is stable, so ties keep the seeded order.
    content = sorted(content, key=len)
    # Interleave so that frequent ranks mix function words with common content words, as in real text.
    merged: list[str] = []
    function_iter, content_iter = iter(FUNCTION_WORDS), iter(content)
    for rank in itertools.count():
        source = function_iter if rank % 3 != 2 else content_iter
        word = next(source, None)
        if word is None:
            break
        merged.append(word)
    merged.extend(content_iter)
    return tuple(merged)


@lru_cache(maxsize=1)
def _cumulative_weights() -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / (rank + 2.7) ** ZIPF_EXPONENT for rank in range(len(words()))))


def sentence(rng: random.Random, min_words: int = 6, max_words: int = 24) -> str:
    """One sentence: Zipf-distributed words, a capital letter, occasional commas, final punctuation."""
    vocabulary, cumulative = words(), _cumulative_weights()
    total = cumulative[-1]
    count = rng.randint(min_words, max_words)
    picked = [vocabulary[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(count)]
    parts = []
    for index, word in enumerate(picked):
        if index < count - 1 and index > 0 and rng.random() < COMMA_PROBABILITY:
            word += ","
        parts.append(word)
    parts[0] = parts[0].capitalize()
    return " ".join(parts) + rng.choice(PUNCTUATION_END)


def sentences(n: int, seed: int = 0, min_words: int = 6, max_words: int = 24) -> list[str]:
    """`n` sentences of `min_words`..`max_words` words; the same list for the same arguments."""
    if n < 0 or min_words < 1 or max_words < min_words:
        raise ValueError(f"need n >= 0 and 1 <= min_words <= max_words, got {n}, {min_words}, {max_words}")
    rng = random.Random(seed)
    return [sentence(rng, min_words, max_words) for _ in range(n)]


def corpus(lines: int, seed: int) -> list[str]:
    """The SentencePiece training corpus of the benchmark checkpoint (short and long sentences mixed)."""
    return sentences(lines, seed=seed, min_words=3, max_words=30)


if __name__ == "__main__":
    for line in sentences(5, seed=0):
        print(line)
