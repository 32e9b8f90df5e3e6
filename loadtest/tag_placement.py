"""Tag placement, measured on the toy model, where the right answer is known (loadtest/toy_task.py).

    .venv/bin/python -m loadtest.tag_placement --model-dir DIR [--samples 500] [--seed 0]

DIR is a converted toy checkpoint (`.venv/bin/python -m convert tests/fixtures/toy-m2m100 DIR --quantization int8`).
Each sample is one `<p>` holding a toy sentence of 2-8 words (a final "." half of the time) with 1-2 inline
tags (<b>, <i>, <a href="..">, <span class="x">, never the same twice in a sample) around a word or a run of
1-3 words, the second one nested in the first or beside it; some samples spell a letter as a character
reference (&#97;lpha) or separate two words with &nbsp;, and a tag that ends on the last word takes the "."
in half the cases. Every sample is translated into fr (the toy model reverses the words) and de (it moves the
first word to the end) through service.markup and service.alignment, with CTranslate2 called directly
(beam 2, return_attention=True), as the service would.

Placement is judged on the outputs whose text is the toy rule's exact answer (the toy model itself gets about
94% of random fr sentences and 99.5% of de ones exactly right; "exact text" gives the share here): a tag is on
the right words when the target words it wraps are the images of its source words under the toy rule. Into de
a run that holds the first word but not the last has an image in two pieces, which one tag cannot wrap; the
documented fallback (docs/html.md) wraps their hull, or one piece when the hull would take a sibling's words,
and such a tag counts as right when it does exactly that; the table gives those tags on their own. An output
is well-formed when its tags balance and it holds exactly the source's tags (same start tags byte for byte,
same end tags); that is judged on every output. A column also gives placement over every tag, counting the
tags of outputs with a wrong text as wrong: a lower bound.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from loadtest.toy_task import LANG_RULES, WORDS
from service.alignment import word_alignment
from service.markup import VOID, UnitTranslation, extract, render

TAGS: tuple[tuple[str, str], ...] = (
    ("<b>", "</b>"),
    ("<i>", "</i>"),
    ('<a href="/p/{n}?x=1&amp;y=2">', "</a>"),
    ('<span class="x">', "</span>"),
)
LANGUAGES = ("fr", "de")


@dataclass(frozen=True)
class Tag:
    open: str
    close: str
    first: int  # source words [first, last]
    last: int
    takes_dot: bool


@dataclass(frozen=True)
class Sample:
    html: str
    words: tuple[str, ...]
    dot: bool
    tags: tuple[Tag, ...]


@dataclass
class Tally:
    all_tags: int = 0  # tags of every output
    tags: int = 0  # tags of the outputs whose text is exact
    right: int = 0
    split_tags: int = 0  # of which, tags whose image is in two pieces (de)
    split_right: int = 0
    outputs: int = 0
    well_formed: int = 0
    exact_text: int = 0

    def add(self, other: Tally) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def generate(count: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [_sample(rng, index) for index in range(count)]


def _sample(rng: random.Random, index: int) -> Sample:
    words = tuple(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    dot = rng.random() < 0.5
    kinds = rng.sample(TAGS, rng.randint(1, 2))
    length = rng.randint(1, min(3, len(words)))
    first = rng.randint(0, len(words) - length)
    runs = [(first, first + length - 1)]
    if len(kinds) == 2:
        outer_first, outer_last = runs[0]
        if outer_last > outer_first and rng.random() < 0.5:  # nested inside the first
            inner_first = rng.randint(outer_first, outer_last)
            runs.append((inner_first, rng.randint(inner_first, outer_last)))
        else:  # beside it
            free = [position for position in range(len(words)) if not outer_first <= position <= outer_last]
            if free:
                start = rng.choice(free)
                end = start
                while end + 1 < len(words) and end + 1 not in range(outer_first, outer_last + 1) and end - start < 1 and rng.random() < 0.5:
                    end += 1
                runs.append((start, end))
            else:
                kinds = kinds[:1]
    tags = tuple(
        Tag(kind[0].format(n=index), kind[1], run_first, run_last, dot and run_last == len(words) - 1 and rng.random() < 0.5)
        for kind, run_first, run_last in ((kinds[k], *runs[k]) for k in range(len(kinds)))
    )
    if len(tags) == 2 and tags[0].takes_dot != tags[1].takes_dot and tags[1].last == tags[0].last:
        tags = (tags[0], Tag(tags[1].open, tags[1].close, tags[1].first, tags[1].last, tags[0].takes_dot))  # nest cleanly
    return Sample(_html(words, dot, tags, rng), words, dot, tags)


def _html(words: Sequence[str], dot: bool, tags: Sequence[Tag], rng: random.Random) -> str:
    # Outer tags open first and close last; tags[0] is the outer one when nested.
    pieces = []
    for position, word in enumerate(words):
        if position:
            pieces.append("&nbsp;" if rng.random() < 0.05 else " ")
        pieces.extend(tag.open for tag in tags if tag.first == position)
        if rng.random() < 0.08:
            word = f"&#{ord(word[0])};{word[1:]}"
        pieces.append(word)
        last = position == len(words) - 1
        closing = [tag for tag in reversed(tags) if tag.last == position]
        pieces.extend(tag.close for tag in closing if not tag.takes_dot)
        if last and dot:
            pieces.append(".")
        pieces.extend(tag.close for tag in closing if tag.takes_dot)
    return "<p>" + "".join(pieces) + "</p>"


def image(rule_name: str, count: int, first: int, last: int) -> list[int]:
    """Target positions of source words [first, last] under the toy rule."""
    order = LANG_RULES[rule_name](list(range(count)))  # order[target] = source
    return sorted(target for target, source in enumerate(order) if first <= source <= last)


class _Reader(HTMLParser):
    """The output's text and, for each start tag, the character range it wraps; whether the tags balance."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.length = 0
        self.stack: list[tuple[str, str, int]] = []
        self.ranges: dict[str, tuple[int, int]] = {}
        self.tags: Counter[str] = Counter()
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list) -> None:
        raw = self.get_starttag_text() or ""
        self.tags[raw] += 1
        if tag not in VOID:
            self.stack.append((tag, raw, self.length))

    def handle_endtag(self, tag: str) -> None:
        self.tags["</" + tag + ">"] += 1
        if not self.stack or self.stack[-1][0] != tag:
            self.balanced = False
            return
        _, raw, start = self.stack.pop()
        self.ranges[raw] = (start, self.length)

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        self.length += len(data)


def read(html: str) -> _Reader:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    reader.balanced = reader.balanced and not reader.stack
    return reader


def wrapped_words(text: str, start: int, end: int) -> list[int]:
    words, position = [], 0
    for index, word in enumerate(text.split()):
        position = text.index(word, position)
        if position < end and start < position + len(word):
            words.append(index)
        position += len(word)
    return words


def score(sample: Sample, output: str, language: str) -> Tally:
    tally = Tally(outputs=1)
    source, result = read(sample.html), read(output)
    tally.well_formed = int(result.balanced and result.tags == source.tags)
    text = "".join(result.text)
    expected = " ".join(LANG_RULES[language](list(sample.words))) + ("." if sample.dot else "")
    tally.exact_text = int(" ".join(text.split()) == expected)
    tally.all_tags = len(sample.tags)
    if not tally.exact_text:
        return tally
    for tag in sample.tags:
        want = image(language, len(sample.words), tag.first, tag.last)
        got = wrapped_words(text, *result.ranges[tag.open]) if tag.open in result.ranges else []
        split = want != list(range(want[0], want[-1] + 1))
        if split:  # the hull, or one piece of the image
            pieces: list[list[int]] = []
            for position in want:
                if pieces and position == pieces[-1][-1] + 1:
                    pieces[-1].append(position)
                else:
                    pieces.append([position])
            right = int(got == list(range(want[0], want[-1] + 1)) or got in pieces)
        else:
            right = int(got == want)
        tally.tags += 1
        tally.right += right
        tally.split_tags += split
        tally.split_right += right if split else 0
    return tally


def translate_units(
    translator, tokenizer, texts: list[str], language: str, max_input_length: int, max_decoding_length: int, aligned: bool = True
) -> list[UnitTranslation]:
    """Each text as one sentence: pieces in, hypothesis + attention out, word alignment, as the service would."""
    sources = [tokenizer.encode(" ".join(text.split()), out_type=str) for text in texts]
    results = translator.translate_batch(
        [["__en__", *pieces, "</s>"] for pieces in sources],
        target_prefix=[[f"__{language}__"]] * len(sources),
        beam_size=2,
        return_attention=True,
        max_batch_size=64,
        max_input_length=max_input_length,
        max_decoding_length=max_decoding_length,
    )
    translations = []
    for pieces, result in zip(sources, results):
        target = result.hypotheses[0][1:]
        alignment = word_alignment(pieces, target, result.attention[0]) if aligned else None
        translations.append(UnitTranslation(tokenizer.decode_pieces(target), alignment))
    return translations


def measure(model_dir: Path, samples: Sequence[Sample], aligned: bool = True) -> dict[str, Tally]:
    import ctranslate2
    import sentencepiece

    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type="int8", inter_threads=1, intra_threads=2)
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "sentencepiece.bpe.model"))
    plans = [extract(sample.html) for sample in samples]
    texts = [unit.text for plan in plans for unit in plan.units]
    tallies = {}
    for language in LANGUAGES:
        translations = translate_units(
            translator, tokenizer, texts, language, manifest["max_input_length"], manifest["max_decoding_length"], aligned
        )  # fmt: skip
        tally = Tally()
        cursor = 0
        for sample, plan in zip(samples, plans):
            output = render(plan, translations[cursor : cursor + len(plan.units)])
            cursor += len(plan.units)
            tally.add(score(sample, output, language))
        tallies[language] = tally
    return tallies


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part}/{whole})" if whole else "-"


def table(tallies: dict[str, Tally]) -> str:
    total = Tally()
    for tally in tallies.values():
        total.add(tally)
    rows = [*tallies.items(), ("all", total)]
    lines = [
        "| into | tags on the right words | image in one piece | image in two pieces (fallback) "
        "| every tag, wrong text counted wrong | well-formed, every tag kept | exact text |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, tally in rows:
        lines.append(
            f"| {name} | {_percent(tally.right, tally.tags)} | {_percent(tally.right - tally.split_right, tally.tags - tally.split_tags)} "
            f"| {_percent(tally.split_right, tally.split_tags)} | {_percent(tally.right, tally.all_tags)} "
            f"| {_percent(tally.well_formed, tally.outputs)} "
            f"| {_percent(tally.exact_text, tally.outputs)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a converted toy checkpoint")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--without-alignment", action="store_true", help="the baseline: no attention, proportional placement")
    args = parser.parse_args(argv)
    samples = generate(args.samples, args.seed)
    tallies = measure(args.model_dir, samples, aligned=not args.without_alignment)
    how = "without alignment (proportional)" if args.without_alignment else "aligned by attention"
    print(f"{args.samples} samples, seed {args.seed}, model {args.model_dir}, {how}\n")
    print(table(tallies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
