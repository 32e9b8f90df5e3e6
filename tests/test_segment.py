import random
import re
import time

from service import segment


def test_sentences_split_on_end_punctuation():
    seg = segment.split("alpha bravo. charlie delta! echo? foxtrot")
    assert seg.sentences == ["alpha bravo.", "charlie delta!", "echo?", "foxtrot"]


def test_paragraph_and_line_breaks_are_kept_exactly():
    text = "alpha. bravo.\n\ncharlie.\n  delta."
    seg = segment.split(text)
    assert seg.sentences == ["alpha.", "bravo.", "charlie.", "delta."]
    assert segment.join(seg, ["A.", "B.", "C.", "D."], "fr") == "A. B.\n\nC.\n  D."


def test_cjk_full_stops_split_without_spaces_and_join_without_spaces():
    seg = segment.split("人生は箱だ。チョコレートだ。")
    assert seg.sentences == ["人生は箱だ。", "チョコレートだ。"]
    assert segment.join(seg, ["x。", "y。"], "ja") == "x。y。"


def test_empty_and_blank_texts_have_no_sentences_and_come_back_unchanged():
    for text in ("", "   ", "\n\n", " \n" * 10_000):
        seg = segment.split(text)
        assert seg.sentences == []
        assert segment.join(seg, [], "en") == text


def test_surrounding_whitespace_is_kept():
    seg = segment.split("  alpha.  ")
    assert segment.join(seg, ["A."], "en") == "  A.  "


def test_closing_quotes_stay_with_their_sentence():
    assert segment.split('He said "stop." Then he left.').sentences == ['He said "stop."', "Then he left."]


def test_separators_keep_tabs_carriage_returns_and_blank_lines_verbatim():
    text = "\talpha. bravo. \r\n \t\n\ncharlie.\r\ndelta.\t"
    seg = segment.split(text)
    assert seg.lines == (("alpha.", "bravo."), ("charlie.",), ("delta.",))
    assert seg.separators == (" \r\n \t\n\n", "\r\n")
    assert (seg.leading, seg.trailing) == ("\t", "\t")
    assert segment.join(seg, seg.sentences, "en") == text


_OLD_LINE_BREAK = re.compile(r"(\s*\n\s*)")  # the rule lines followed before; fine on short texts


def test_lines_and_separators_follow_whitespace_runs_that_hold_a_newline():
    rng = random.Random(7)
    alphabet = [" ", "\t", "\n", "\r", "\u00a0", "\u2028", "\x0b", "a", "b.", "。"]
    for _ in range(3_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        seg = segment.split(text)
        parts = _OLD_LINE_BREAK.split(text.strip()) if text.strip() else []
        assert seg.separators == tuple(parts[1::2])
        assert [_visible("".join(line)) for line in seg.lines] == [_visible(part) for part in parts[::2]]
        if text.strip():
            assert seg.leading + text.strip() + seg.trailing == text
        else:
            assert (seg.leading, seg.trailing) == (text, "")


def _visible(text: str) -> str:
    return "".join(text.split())


def _cost(text: str, calls: int) -> float:
    """Best of 7 of `calls` splits of `text`, each measurement repeated until it spans 2 ms."""
    def once(loops: int) -> float:
        start = time.perf_counter()
        for _ in range(loops * calls):
            segment.split(text)
        return time.perf_counter() - start

    loops = 1
    while once(loops) < 0.002:
        loops *= 2
    return min(once(loops) for _ in range(7)) / loops


ADVERSARIAL = {
    "spaces after a full stop": lambda n: "a." + " " * n + "b",
    "spaces between words": lambda n: "alpha" + " " * n + "bravo",
    "runs of 31 spaces": lambda n: ("a" + " " * 31) * (n // 32),
    "runs of 32 spaces": lambda n: ("a" + " " * 32) * (n // 33),
    "double spaces": lambda n: "a.  " * (n // 4),
    "tabs": lambda n: "a" + "\t" * n + "b",
    "newlines": lambda n: "\n" * n,
    "space-newline pairs": lambda n: " \n" * (n // 2),
    "short lines": lambda n: "a.\n" * (n // 3),
    "mixed whitespace and punctuation": lambda n: " .\t!\n?" * (n // 6),
    "full stops": lambda n: "." * n,
    "!?": lambda n: "!?" * (n // 2),
    "CJK full stops": lambda n: "。" * n,
    "CJK punctuation": lambda n: "。！？" * (n // 3),
    "CJK sentences without spaces": lambda n: "あ。" * (n // 2),
    "short sentences": lambda n: "a. " * (n // 3),
    "abbreviations": lambda n: "Dr. " * (n // 4),
    "unmatched opening quotes": lambda n: "“" * n,
    "guillemets": lambda n: "« " * (n // 2),
    "quote full stops": lambda n: "“." * (n // 2),
    "wide spaces": lambda n: "S\u00a0." * (n // 3),
}


def test_splitting_is_linear_in_the_text_length():
    """The one timed test: 20x the text must cost about 20x the time, not 400x (quadratic).

    Twenty 1k-character texts against one 20k text, best of 7: a linear splitter scores about 1;
    the threshold of 3 (60x the time for 20x the text) leaves room for a noisy 2-core machine.
    """
    ratios = {}
    for name, make in ADVERSARIAL.items():
        ratios[name] = _cost(make(20_000), 1) / _cost(make(1_000), 20)
    assert max(ratios.values()) < 3, ratios
