"""service/markup.py: what is translated and what is kept, the byte-for-byte round trip, tag placement and its
fallbacks; and loadtest/tag_placement.py on the toy model."""

from __future__ import annotations

import logging
import random
from collections import Counter
from html.parser import HTMLParser

import pytest

from service.markup import VOID, InlineSpan, Unit, UnitTranslation, extract, identity, render, text_for_detection

REVERSED3 = [(2, 0), (1, 1), (0, 2)]


def units(html: str) -> list[tuple]:
    return [(unit.kind, unit.text, [(s.start, s.end, s.kind, s.open, s.close, s.parent) for s in unit.spans]) for unit in extract(html).units]


def translate(html: str, *translations: tuple[str, list[tuple[int, int]] | None]) -> str:
    return render(extract(html), [UnitTranslation(text, alignment) for text, alignment in translations])


# ---------------------------------------------------------------------------------------------- extract


def test_a_block_is_one_unit_with_its_inline_spans():
    expected = Unit("alpha bravo charlie.", "text", (InlineSpan(0, 5, "element", "<b>", "</b>"),))
    assert extract("<p><b>alpha</b> bravo charlie.</p>").units == (expected,)
    assert units('<p>alpha <a href="/x" title="Home page">bravo <i>charlie</i></a> delta.</p>') == [
        ("text", "alpha bravo charlie delta.", [
            (6, 19, "element", '<a href="/x" title="Home page">', "</a>", -1),
            (12, 19, "element", "<i>", "</i>", 0),
        ]),
        ("attribute", "Home page", []),
    ]  # fmt: skip


def test_entities_are_decoded_and_edges_stay_outside():
    assert units("<p>Tom &amp; Jerry&#39;s &nbsp;cat &lt;3</p>") == [("text", "Tom & Jerry's \xa0cat <3", [])]
    # Leading/trailing whitespace, and an element that wraps every word, stay in the markup.
    assert units("<p> <b> alpha  bravo </b>\n</p>") == [("text", "alpha  bravo", [])]
    assert units('<li><a href="/"><img src=i.png></a> alpha</li>') == [("text", "alpha", [])]
    # An element before the first word that does not wrap them all is a span; the whitespace inside it is dropped.
    assert units("<p><b> alpha</b> bravo</p>") == [("text", "alpha bravo", [(0, 5, "element", "<b>", "</b>", -1)])]


def test_blocks_split_units_and_inline_elements_do_not():
    assert [text for _, text, _ in units("<div>alpha<p>bravo <em>charlie</em></p>delta<ul><li>echo<li>golf</ul></div>")] == [
        "alpha", "bravo charlie", "delta", "echo", "golf",
    ]  # fmt: skip
    assert [text for _, text, _ in units("<table><tr><td>alpha</td><td>1.5</td><td> - </td></tr></table>")] == ["alpha"]


def test_markers_are_zero_width_and_a_line_break_separates_words():
    assert units("<p>alpha<br>bravo <img src=x.png> charlie<!-- c --> <wbr>delta</p>") == [
        ("text", "alpha\nbravo  charlie delta", [
            (5, 5, "marker", "<br>", "", -1),
            (12, 12, "marker", "<img src=x.png>", "", -1),
            (20, 20, "marker", "<!-- c -->", "", -1),
            (21, 21, "marker", "<wbr>", "", -1),
        ]),
    ]  # fmt: skip
    # An element that holds no word is one marker, kept as it is.
    assert units("<p>alpha <a href=x> <img src=y> </a>bravo</p>") == [
        ("text", "alpha   bravo", [(6, 6, "marker", "<a href=x> <img src=y> </a>", "", -1)]),
    ]


def test_untranslated_elements_are_kept_whole():
    html = (
        "<pre>alpha <b>bravo</b></pre><script>var a = '<p>x</p>';</script><style>p { x: y }</style>"
        "<p>Run <code>make  all</code> now <kbd>Ctrl</kbd>+<samp>x</samp> <var>n</var>ame, <textarea>alpha</textarea> ok</p>"
    )
    assert units(html) == [
        ("text", "Run make  all now Ctrl+x ame,  ok", [
            (4, 13, "kept", "<code>make  all</code>", "", -1),
            (18, 22, "kept", "<kbd>Ctrl</kbd>", "", -1),
            (23, 24, "kept", "<samp>x</samp>", "", -1),
            (25, 25, "marker", "<var>n</var>", "", -1),  # glued to letters: no text, zero width
            (30, 30, "marker", "<textarea>alpha</textarea>", "", -1),  # no text to give
        ]),
    ]  # fmt: skip


def test_translate_no_is_inherited_and_translate_yes_turns_it_back_on():
    html = (
        '<div translate="no" title="Kept">alpha <p>bravo</p><p translate="yes" title="Told">charlie '
        '<b class="x notranslate">Acme Corp</b> delta</p></div><p>echo <span translate=no>golf</span></p>'
        "<pre translate=yes>hotel</pre>"
    )
    assert units(html) == [
        ("attribute", "Told", []),
        ("text", "charlie Acme Corp delta", [(8, 17, "kept", '<b class="x notranslate">Acme Corp</b>', "", -1)]),
        ("text", "echo golf", [(5, 9, "kept", "<span translate=no>golf</span>", "", -1)]),
    ]


def test_translated_attributes_and_the_title():
    html = (
        "<html><head><title>Tom &amp; Jerry</title><meta name=description content='Not this'></head>"
        "<body><img src=a.png alt='A cat' title=Cat><input placeholder=\"Your name\" aria-label=Name value=Send>"
        '<a title="" href="x">1</a><code title="Copy it">x = 1</code></body></html>'
    )
    assert units(html) == [
        ("text", "Tom & Jerry", []),
        ("attribute", "A cat", []),
        ("attribute", "Cat", []),
        ("attribute", "Your name", []),
        ("attribute", "Name", []),
        ("attribute", "Copy it", []),
    ]


def test_text_for_detection_is_the_text_without_the_markup():
    html = "<html><head><title>Bonjour</title><script>var x = 'hello';</script></head><body><p>le <b>monde</b></p><img alt='un chat'></body></html>"
    assert text_for_detection(html) == "Bonjour\nle monde\nun chat"


# ---------------------------------------------------------------------------------------------- round trip

CORPUS = [
    "",
    "plain text, no markup &amp; an entity",
    "<!DOCTYPE html>\n<html lang=en>\n<head>\n  <meta charset=utf-8>\n  <title>Tom &amp; Jerry&#39;s page</title>\n"
    '  <link rel="stylesheet" href="a.css?x=1&amp;y=2">\n  <style>\n    p > b { color: red }\n  </style>\n</head>\n'
    "<body>\n  <!-- a comment -->\n  <h1 class='title'>Hello,&nbsp;<em>world</em>!</h1>\n</body>\n</html>\n",
    "<P CLASS=X>Upper <B>case</B> tags</P><BR/><IMG SRC=x.png ALT=Logo>",
    "<p>unclosed paragraph\n<p>another <i>one</i>\n<ul><li>first<li>second <b>bold\n</ul>",
    "<div><p>alpha <b>bravo <i>charlie <u>delta</u></i></b> echo.</p>\n\n   \n<p>  </p></div>",
    "<table>\n  <tr><th>Name</th><th>Qty</th></tr>\n  <tr><td>Apples &amp; pears</td><td>12</td></tr>\n</table>",
    "<p>line one<br>line two<br/>line three<br />\n</p>",
    "<p title=\"double\" data-x='single' data-y=bare data-z>attributes &quot;quoted&quot;</p>",
    "<img alt='It&#39;s a &quot;cat&quot;' src=\"c.png\"><input placeholder=Search&hellip; aria-label='Search box'>",
    "<p>&#169; 2024 &#x2014; &copy; &unknown; &amp &lt;tag&gt; AT&T &#0; &</p>",
    "<![CDATA[ raw <b>data</b> ]]><?php echo 'x'; ?><!doctype html><!bogus>",
    "<p>Run <code>make &amp;&amp; make install</code> now, then <kbd>Ctrl</kbd>+<kbd>C</kbd>.</p>",
    "<pre>  keep\n\t<b>this</b>   as is </pre><script>if (a < b && c > d) { x = '</p>'; }</script>",
    '<div translate="no">Brand <span translate="yes">is <b>great</b></span></div><p class="notranslate">Acme</p>',
    "<p>stray </b> end tags </i></span> and </p></p> extra</p>",
    "<b>bold <div>block inside inline</div> tail</b>",
    "<p>a <b>b</p> c</b> d",
    "text with < lone angle and a <3 heart and a</>gap",
    "<p>unterminated &x and &#",
    "<p>entity cut off at the end &am",
    "<svg viewBox='0 0 1 1'><title>icon</title><path d='M0 0'/></svg><math><mi>x</mi></math> after",
    "<p>tab\tseparated\r\nwindows line\r\nends</p>",
    "<!-- only a comment -->",
    "<p>" + "<b>deep " * 40 + "</p>",
    "<p>ünïcödé <b>wörds</b> — “quotes” ok? «oui»</p>",
]


@pytest.mark.parametrize("html", CORPUS)
def test_the_identity_translation_gives_the_source_byte_for_byte(html, caplog):
    with caplog.at_level(logging.WARNING, logger="service.markup"):
        plan = extract(html)
    assert not caplog.records  # no fallback: the plan itself rebuilds the source
    assert render(plan, identity(plan)) == html


def test_the_corpus_has_units_where_expected():
    assert [unit.text for unit in extract(CORPUS[2]).units] == ["Tom & Jerry's page", "Hello,\xa0world!"]
    assert [unit.text for unit in extract(CORPUS[11]).units] == []
    assert [unit.text for unit in extract(CORPUS[14]).units] == ["is great"]


# ---------------------------------------------------------------------------------------------- placement


def test_tags_go_on_the_aligned_words():
    assert translate("<p><b>alpha</b> bravo charlie.</p>", ("charlie bravo alpha.", REVERSED3)) == "<p>charlie bravo <b>alpha</b>.</p>"
    assert translate("<p>alpha <b>bravo charlie</b>.</p>", ("bravo charlie alpha.", [(1, 0), (2, 1), (0, 2)])) == "<p><b>bravo charlie</b> alpha.</p>"
    assert (
        translate(
            '<p>alpha <a href="/x" title="Home page">bravo <i>charlie</i></a> delta.</p>',
            ("delta charlie bravo alpha.", [(3, 0), (2, 1), (1, 2), (0, 3)]),
            ("Accueil", None),
        )
        == '<p>delta <a href="/x" title="Accueil"><i>charlie</i> bravo</a> alpha.</p>'
    )


def test_punctuation_goes_with_the_tag_only_if_the_source_tag_took_it():
    assert translate("<p>alpha bravo <b>charlie.</b></p>", ("charlie bravo alpha.", REVERSED3)) == "<p><b>charlie</b> bravo alpha.</p>"
    assert translate("<p>alpha bravo <b>charlie</b>.</p>", ("charlie. bravo alpha", REVERSED3)) == "<p><b>charlie</b>. bravo alpha</p>"
    assert translate("<p><b>(alpha)</b> bravo</p>", ("bravo (alpha)", [(0, 1), (1, 0)])) == "<p>bravo <b>(alpha)</b></p>"
    assert translate("<p>(<b>alpha</b>) bravo</p>", ("bravo (alpha)", [(0, 1), (1, 0)])) == "<p>bravo (<b>alpha</b>)</p>"


def test_kept_elements_replace_their_aligned_words():
    assert translate("<p>Run <code>make</code> now</p>", ("maintenant make lancez", REVERSED3)) == "<p>maintenant <code>make</code> lancez</p>"
    identical = [(0, 0), (1, 1), (2, 2)]
    assert translate("<p>Run <code>make</code> now</p>", ("Lancez faire maintenant", identical)) == "<p>Lancez <code>make</code> maintenant</p>"


def test_markers_stay_next_to_their_word():
    assert translate("<p>alpha<br>bravo charlie</p>", ("charlie bravo alpha", REVERSED3)) == "<p>charlie bravo alpha<br></p>"
    assert (
        translate('<p>alpha <img src=x.png alt="A cat"> bravo.</p>', ("bravo alpha.", [(1, 0), (0, 1)]), ("Un chat", None))
        == '<p>bravo alpha<img src=x.png alt="Un chat">.</p>'
    )


def test_text_and_attributes_are_escaped_minimally():
    assert (
        translate("<p><img alt='cat' title=x src=y>alpha</p>", ("l'chat", None), ('say "hi" & go', None), ("a < b & c", None))
        == "<p><img alt='l&#39;chat' title=\"say &quot;hi&quot; &amp; go\" src=y>a &lt; b &amp; c</p>"
    )


def test_an_unchanged_unit_keeps_its_source_bytes_unless_the_alignment_reorders():
    assert translate("<p><b>&#103;olf</b> golf</p>", ("golf golf", [(0, 0), (1, 1)])) == "<p><b>&#103;olf</b> golf</p>"
    assert translate("<p><b>&#103;olf</b> golf</p>", ("golf golf", None)) == "<p><b>&#103;olf</b> golf</p>"
    assert translate("<p><b>golf</b> golf</p>", ("golf golf", [(1, 0), (0, 1)])) == "<p>golf <b>golf</b></p>"


def test_fallbacks_when_the_alignment_is_unsure():
    # No aligned word: an empty element at the proportional position.
    assert translate("<p>alpha <b>bravo</b> charlie</p>", ("X Y", [(0, 0), (2, 1)])) == "<p>X <b></b>Y</p>"
    assert translate("<p><b>alpha</b> bravo</p>", ("", [])) == "<p><b></b></p>"
    # Aligned words in two pieces: their hull when free, else the free piece holding most of them.
    assert translate("<p><b>alpha bravo</b> charlie</p>", ("X Y Z", [(0, 0), (1, 2), (2, 1)])) == "<p><b>X Y Z</b></p>"
    crossed = [(0, 0), (1, 2), (2, 1), (3, 3)]
    assert translate("<p><b>alpha bravo</b> <i>charlie</i> delta</p>", ("X Y Z W", crossed)) == "<p><b>X</b> <i>Y</i> Z W</p>"
    # A child stays inside its parent's words: here the parent keeps one piece, the child is left with none.
    assert translate("<p><b>alpha <i>bravo</i></b> charlie</p>", ("X Y Z", [(0, 0), (1, 2), (2, 1)])) == "<p><b>X Y <i>Z</i></b></p>"
    assert (
        translate("<p><b>alpha <i>bravo</i></b> <u>charlie</u></p>", ("X Y Z", [(0, 0), (1, 2), (2, 1)]))
        == "<p><b>X<i></i></b> <u>Y</u> Z</p>"
    )
    # No alignment: proportional; pairs out of range are ignored.
    assert translate("<p><b>alpha</b> bravo charlie delta</p>", ("W X Y Z", None)) == "<p><b>W</b> X Y Z</p>"
    assert translate("<p>alpha bravo <b>charlie</b> delta</p>", ("W X Y Z", None)) == "<p>W X <b>Y</b> Z</p>"
    assert translate("<p><b>alpha</b> bravo</p>", ("X Y", [(0, 0), (7, 1), (1, 9), (-1, 0)])) == "<p><b>X</b> Y</p>"


def test_translations_must_match_the_units():
    with pytest.raises(ValueError, match="1 translations for 2 units"):
        translate("<p>alpha</p><p>bravo</p>", ("x", None))


# ---------------------------------------------------------------------------------------------- any HTML


class _Tags(HTMLParser):
    """The multiset of tags (translated attribute values blanked) and whether they balance."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.stack: list[str] = []
        self.balanced = True
        self.feed(html)
        self.close()
        self.balanced = self.balanced and not self.stack

    def handle_starttag(self, tag, attrs):
        self.tags[repr((tag, [(name, "?" if name in ("alt", "title", "placeholder", "aria-label") else value) for name, value in attrs]))] += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[repr((tag, "/"))] += 1

    def handle_endtag(self, tag):
        self.tags["/" + tag] += 1
        if tag not in VOID:
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()
            else:
                self.balanced = False


def _random_document(rng: random.Random, well_formed: bool) -> str:
    words = ["alpha", "bravo.", "(charlie)", "delta,", "&amp;", "&#39;echo", "&nbsp;", "x&lt;y", "2024"]

    def text(count: int) -> str:
        return rng.choice([" ", "  ", "\n"]).join(rng.choice(words) for _ in range(count))

    def inline(depth: int) -> str:
        roll = rng.random()
        if depth > 2 or roll < 0.4:
            return text(rng.randint(1, 4))
        if roll < 0.5:
            return rng.choice(["<br>", "<br/>", "<img src=x alt='a cat'>", "<!-- c -->", "<wbr>", "<input placeholder=Name>"])
        if roll < 0.6:
            return rng.choice(["<code>x = 1</code>", "<kbd>Ctrl</kbd>", '<span translate="no">Acme</span>', "<script>a<b</script>"])
        tag = rng.choice(["b", "i", "em", "a", "span", "sub", "Q"])
        attributes = rng.choice(["", " href=/x", " title='Go there'", ' class="c" title=Tip'])
        inner = " ".join(inline(depth + 1) for _ in range(rng.randint(1, 3)))
        close = f"</{tag}>" if well_formed or rng.random() < 0.7 else ""
        return f"<{tag}{attributes}>{inner}{close}"

    blocks = []
    for _ in range(rng.randint(1, 4)):
        tag = rng.choice(["p", "div", "li", "td", "h2", "title"])
        blocks.append(f"<{tag}>{rng.choice(['', ' '])}{' '.join(inline(0) for _ in range(rng.randint(1, 3)))}</{tag}>")
        if rng.random() < 0.2:
            blocks.append(rng.choice(["<pre> keep <b>x</b> </pre>", "\n  \n", "<hr>", "<div translate=no>alpha <p translate=yes>bravo</p></div>"]))
    return "\n".join(blocks)


def _random_translation(rng: random.Random, text: str) -> UnitTranslation:
    words = text.split()
    order = list(range(len(words)))
    rng.shuffle(order) if rng.random() < 0.5 else order.reverse()
    kept = sorted(rng.sample(range(len(words)), rng.randint(0, len(words)))) if rng.random() < 0.3 else list(range(len(words)))
    target = [words[order[position]].upper() for position in kept] + (["<&>"] if rng.random() < 0.1 else [])
    alignment: list[tuple[int, int]] | None = [(order[position], index) for index, position in enumerate(kept)]
    if rng.random() < 0.2:
        alignment = [(rng.randrange(len(words) + 2), rng.randrange(len(target) + 2)) for _ in words]
    elif rng.random() < 0.1:
        alignment = None
    return UnitTranslation(" ".join(target), alignment)


def test_any_translation_keeps_every_tag_and_well_formed_input_stays_well_formed():
    rng = random.Random(7)
    for _ in range(400):
        well_formed = rng.random() < 0.7
        html = _random_document(rng, well_formed)
        plan = extract(html)
        assert render(plan, identity(plan)) == html
        output = render(plan, [_random_translation(rng, unit.text) for unit in plan.units])
        source, result = _Tags(html), _Tags(output)
        assert result.tags == source.tags, (html, output)
        assert result.balanced or not source.balanced, (html, output)


# ---------------------------------------------------------------------------------------------- the toy model


@pytest.mark.slow
def test_tag_placement_on_the_toy_model(toy_model_dir, capsys):
    from loadtest import tag_placement

    tallies = tag_placement.measure(toy_model_dir, tag_placement.generate(100, seed=3))
    for language, tally in tallies.items():
        assert tally.outputs == 100, language
        assert tally.well_formed == tally.outputs, language
        assert tally.exact_text >= 90, language  # the toy model's own accuracy, about 94% into fr
        assert tally.right >= 0.9 * tally.tags, language

    assert tag_placement.main(["--model-dir", str(toy_model_dir), "--samples", "20"]) == 0
    assert "| all |" in capsys.readouterr().out


@pytest.mark.slow
def test_the_examples_of_the_issue_on_the_toy_model(toy_model_dir):
    import ctranslate2
    import sentencepiece

    from loadtest.tag_placement import translate_units

    translator = ctranslate2.Translator(str(toy_model_dir), device="cpu", compute_type="int8")
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(toy_model_dir / "sentencepiece.bpe.model"))
    cases = {
        ("<p><b>alpha</b> bravo charlie.</p>", "fr"): "<p>charlie bravo <b>alpha</b>.</p>",
        ("<p><b>alpha</b> bravo charlie.</p>", "de"): "<p>bravo charlie <b>alpha</b>.</p>",
        ('<p>alpha <a href="/x?a=1&amp;b=2">bravo <i>charlie</i></a> delta.</p>', "fr"): (
            '<p>delta <a href="/x?a=1&amp;b=2"><i>charlie</i> bravo</a> alpha.</p>'
        ),
        ("<p>alpha <code>bravo</code> charlie</p>", "fr"): "<p>charlie <code>bravo</code> alpha</p>",
        ("<p>alpha <b>bravo</b> charlie</p>", "en"): "<p>alpha <b>bravo</b> charlie</p>",
    }
    for (html, language), expected in cases.items():
        plan = extract(html)
        translations = translate_units(translator, tokenizer, [unit.text for unit in plan.units], language, 64, 62)
        assert render(plan, translations) == expected, (html, language)
