"""HTML in, translatable units out, and back: markup kept byte for byte, inline tags put on the aligned words.

    plan = extract(html)                                   # parse once (stdlib HTMLParser, convert_charrefs=False)
    texts = [unit.text for unit in plan.units]             # translate these (words: str.split() tokens)
    html_out = render(plan, [UnitTranslation(text, alignment) for ...])   # one per unit, same order

Every byte of the source is accounted for by the parser's events (absolute offsets from getpos() and a
line-start table; bytes the parser skips stay with the event before them), so everything that is not
translated text is copied from the source: tags with their attribute order, quoting and entities, comments,
doctype, CDATA and processing instructions, whitespace between blocks. extract() checks that its layout
rebuilds the source; should it not (a parser quirk not foreseen here), it logs a warning and returns the
document as one untranslated piece. Cost, pure Python: about 0.3 ms per paragraph-sized block for extract +
render (32 kB of HTML in 600 blocks: 120 + 55 ms), so callers run it off the event loop for big documents.
docs/html.md has the user's view.

Units (`Unit`), in document order of their first character:
- "text": the text of one block, i.e. a run of text and inline elements (`INLINE`, `VOID_INLINE`, kept
  elements, comments) between two block boundaries (any other tag: p, div, li, td, h1, title, unknown tags...).
  Entities are decoded; whitespace is the source's, minus the run's leading and trailing whitespace, which
  stays in the markup with any tag or comment standing before the first or after the last word (an inline
  element that wraps all the words, `<p><b>all of it</b></p>`, stays outside the translation too). A <br>
  gives the text a "\n" so the words on either side stay apart. A run without a letter outside kept elements
  is not a unit. `spans` say where the inline markup was (`InlineSpan`).
- "attribute": the value of alt, title, placeholder or aria-label (decoded, no spans) when it has a letter.

Not translated, content kept byte for byte: `KEPT_TEXT` (code, kbd, samp, var), `KEPT_OPAQUE` (script, style,
textarea, svg, math), `KEPT_BLOCK` (pre), and any element with translate="no" or the class "notranslate"
(inherited; translate="yes" on a descendant turns translation back on, except inside the kept tags, which
stay kept). The attributes of a kept tag itself are still translated (`<code title="...">`); those of a
translate="no" element are not. A kept element inside a sentence is one span of kind "kept": the text of
KEPT_TEXT and translate="no" elements stays in the unit's text, so the engine reads the sentence whole
("Run make now"), and on output the target words aligned to it are replaced by the element's source bytes.
When such an element is glued to letters or digits ("<code>f</code>oo") or is KEPT_OPAQUE, it gives no text
and is a zero-width marker instead. Inline elements nested deeper than MAX_INLINE_DEPTH are markers too.

Words (for alignments and placement) are the whitespace-separated tokens of a text (`str.split()`), so
punctuation belongs to the word it touches: "charlie." is one word. Inside a word, the leading and trailing
characters that are not letters, digits or marks are its punctuation, the rest its core. Word indices do not
change if whitespace is normalized (" ".join(text.split())), which the pipeline may do before translating.

Placement (render), for each unit:
- Unchanged: a translation equal to the unit's text, with no alignment or one that does not reorder words
  (no two links cross), is written from the source bytes, entities and all; so the round trip
  `render(plan, identity(plan))` returns the source byte for byte.
- "element" and "kept" spans: a span covers the source words its characters overlap; its target words are
  those aligned to them, within its parent's target words. Parents are placed before their children; among
  siblings, those whose target words are contiguous go first, then the others, each group in source order.
  A span wraps the hull [first, last] of its target words when no sibling placed before it took any word of
  the hull, otherwise the free run of words holding most of its target words (trimmed to them). The tags go
  around the target words' cores, taking in the first word's leading (the last word's trailing) punctuation
  only when the source span took in that of its first (last) word:
  `<b>alpha</b> bravo charlie.` -> `charlie bravo <b>alpha</b>.`; `<b>charlie.</b>` -> `<b>charlie</b> ...`.
  A kept span's source bytes replace those cores instead of wrapping them.
- Zero-width: "marker" spans (void inline elements such as <br> and <img>, comments, elements that hold no
  word, end tags whose start tag is in another block) and spans left without a target word go next to the
  target word aligned to the source word they touch, on the same side of its core or punctuation as in the
  source (between two words: right after the first); with no aligned word, at the gap between target words at
  the same relative position within the parent. One that would fall inside a placed sibling goes right after
  it. A span without a target word is written there as an empty element (its tags together, with the markers
  it held): the fallback when the alignment is unsure.
- No alignment (None): a monotonic proportional one (`_proportional`). Pairs out of range are ignored.
Whatever the alignment, each tag is written exactly once and spans nest as in the source, so well-formed input
gives well-formed output. Text is re-escaped minimally: & < > in text; & and the quote in attribute values
(an unquoted value that is translated gets double quotes).
"""

from __future__ import annotations

import html
import logging
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal

log = logging.getLogger(__name__)

INLINE = frozenset(
    "a abbr acronym b bdi bdo big blink cite data del dfn em font i ins label mark nobr q rp rt ruby s small "
    "span strike strong sub sup time tt u".split()
)
VOID_INLINE = frozenset({"br", "img", "wbr", "input"})  # zero-width markers inside a sentence
KEPT_TEXT = frozenset({"code", "kbd", "samp", "var"})  # inline, kept; their text gives the engine context
KEPT_OPAQUE = frozenset({"script", "style", "textarea", "svg", "math"})  # kept, no text
KEPT_BLOCK = frozenset({"pre"})  # kept and a block boundary
VOID = frozenset("area base br col embed hr img input keygen link meta param source track wbr".split())
TRANSLATED_ATTRIBUTES = frozenset({"alt", "title", "placeholder", "aria-label"})
# Inline elements nested deeper than this in one sentence keep their tags as zero-width markers (placement recurses).
MAX_INLINE_DEPTH = 32

UnitKind = Literal["text", "attribute"]
SpanKind = Literal["element", "kept", "marker"]


@dataclass(frozen=True)
class AttributeSlot:
    """A translated attribute value inside a tag: `raw` is the value's source bytes, quotes included."""

    unit: int  # the plan's slot id (see HtmlPlan.slot_units)
    raw: str


Part = str | AttributeSlot  # source bytes, or an attribute value to render


@dataclass(frozen=True)
class InlineSpan:
    """Inline markup inside a text unit, at character offsets [start, end) of the unit's text.

    kind "element": an inline element; `open`/`close` are its tags' source bytes ("" when closed implicitly).
    kind "kept": an untranslated element; `open` is all its source bytes, [start, end) the text it gave.
    kind "marker": zero width (start == end); `open` is its source bytes (void element, comment, stray tag).
    `parent` is the index in Unit.spans of the enclosing element span, -1 at the top."""

    start: int
    end: int
    kind: SpanKind
    open: str
    close: str = ""
    parent: int = -1
    open_parts: tuple[Part, ...] = field(default=(), repr=False, compare=False)  # `open` with attribute slots


@dataclass(frozen=True)
class Unit:
    text: str
    kind: UnitKind = "text"
    spans: tuple[InlineSpan, ...] = ()


@dataclass(frozen=True)
class UnitTranslation:
    """A unit's translation; `alignment`: (source word, target word) pairs, words being str.split() tokens of
    the unit's text and of `text` (service.alignment.word_alignment); None: no alignment (proportional)."""

    text: str
    alignment: Sequence[tuple[int, int]] | None = None


@dataclass(frozen=True)
class TextSlot:
    """Where a text unit goes; `items` is its source layout, used when it is not translated differently."""

    unit: int
    items: tuple[Part, ...]


@dataclass(frozen=True)
class HtmlPlan:
    source: str
    units: tuple[Unit, ...]
    layout: tuple[Part | TextSlot, ...] = field(repr=False)
    slot_units: tuple[int, ...] = field(repr=False)  # slot id -> index in units


def identity_alignment(text: str) -> list[tuple[int, int]]:
    return [(index, index) for index in range(len(text.split()))]


def identity(plan: HtmlPlan) -> list[UnitTranslation]:
    """Each unit translated into itself (the round trip)."""
    return [UnitTranslation(unit.text, identity_alignment(unit.text)) for unit in plan.units]


def text_for_detection(source: str) -> str:
    """The document's translatable text, one unit a line, for language detection on HTML."""
    return "\n".join(unit.text for unit in extract(source).units)


# ---------------------------------------------------------------------------------------------- parsing


class _Recorder(HTMLParser):
    """Records the parser's events with their absolute start offsets; nothing else."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self.events: list[tuple] = []
        self._line_starts = [0]
        position = source.find("\n")
        while position >= 0:
            self._line_starts.append(position + 1)
            position = source.find("\n", position + 1)

    def _at(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", self._at(), tag, attrs, self.get_starttag_text() or "", False))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", self._at(), tag, attrs, self.get_starttag_text() or "", True))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", self._at(), tag))

    def handle_data(self, data: str) -> None:
        self.events.append(("data", self._at(), data))

    def handle_entityref(self, name: str) -> None:
        self.events.append(("ref", self._at(), "&" + name))

    def handle_charref(self, name: str) -> None:
        self.events.append(("ref", self._at(), "&#" + name))

    def handle_comment(self, data: str) -> None:
        self.events.append(("other", self._at()))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("other", self._at()))

    def handle_pi(self, data: str) -> None:
        self.events.append(("other", self._at()))

    def unknown_decl(self, data: str) -> None:
        self.events.append(("other", self._at()))


def extract(source: str) -> HtmlPlan:
    """Parses `source` into its translatable units and the layout that rebuilds it (see the module docstring)."""
    recorder = _Recorder(source)
    recorder.feed(source)
    recorder.close()
    builder = _Builder()
    events = recorder.events
    first = events[0][1] if events else len(source)
    if first > 0:  # bytes the parser skipped before its first event (e.g. "</>")
        builder.raw(source[:first])
    for index, event in enumerate(events):
        end = events[index + 1][1] if index + 1 < len(events) else len(source)
        builder.event(event, source[event[1] : end])
    builder.finish()
    plan = builder.plan(source)
    if render(plan, identity(plan)) != source:  # the parser's offsets did not add up: keep it all as it is
        log.warning("HTML layout did not rebuild the source (%d characters); it is left untranslated", len(source))
        return HtmlPlan(source, (), (source,), ())
    return plan


@dataclass(eq=False)
class _Element:
    tag: str
    state: str  # "on", "soft" (translate="no" / notranslate) or "hard" (inside a kept element)
    span: int = -1  # the span id it opened in the current run, -1 if none


@dataclass
class _Item:
    kind: str  # "text", "open", "close", "marker", "kept"
    parts: list[Part]
    text: str = ""
    span: int = -1  # open/close: the span id
    offset: int = 0  # source offset, for the units' order


@dataclass
class _Capture:
    depth: int  # stack index of the kept element
    parts: list[Part]
    text: list[str]
    gives_text: bool
    offset: int


class _Builder:
    def __init__(self) -> None:
        self.layout: list[Part | TextSlot] = []
        self.units: list[tuple[int, Unit]] = []  # (source offset, unit) by slot id
        self.stack: list[_Element] = []
        self.open_tags: dict[str, int] = {}  # tag -> how many are on the stack (stray end tags cost O(1))
        self.open_spans: list[_Element] = []  # the stack's elements with a span in the current run, in order
        self.run: list[_Item] = []
        self.next_span = 0
        self.capture: _Capture | None = None
        self.offset = 0  # source offset of the current event

    # -- the outside world

    def add(self, kind: str, parts: list[Part], text: str = "", span: int = -1) -> None:
        self.run.append(_Item(kind, parts, text, span, self.offset))

    def raw(self, raw: str) -> None:
        if self.capture is not None:
            self.capture.parts.append(raw)
        else:
            self.flush()
            self.layout.append(raw)

    def plan(self, source: str) -> HtmlPlan:
        order = sorted(range(len(self.units)), key=lambda slot: self.units[slot][0])
        slot_units = [0] * len(order)
        for position, slot in enumerate(order):
            slot_units[slot] = position
        return HtmlPlan(source, tuple(self.units[slot][1] for slot in order), tuple(self.layout), tuple(slot_units))

    def push(self, element: _Element) -> None:
        self.stack.append(element)
        self.open_tags[element.tag] = self.open_tags.get(element.tag, 0) + 1
        if element.span >= 0:
            self.open_spans.append(element)

    def pop_to(self, index: int) -> None:
        for element in self.stack[index:]:
            self.open_tags[element.tag] -= 1
            if element.span >= 0:  # one of the last: open_spans is in the stack's order
                position = len(self.open_spans) - 1
                while self.open_spans[position] is not element:
                    position -= 1
                del self.open_spans[position]
        del self.stack[index:]

    def find(self, tag: str) -> int:
        if not self.open_tags.get(tag):
            return -1
        return next(index for index in range(len(self.stack) - 1, -1, -1) if self.stack[index].tag == tag)

    @property
    def state(self) -> str:
        return self.stack[-1].state if self.stack else "on"

    # -- events

    def event(self, event: tuple, raw: str) -> None:
        kind, self.offset = event[0], event[1]
        if kind == "start":
            _, _, tag, attrs, tag_text, self_closing = event
            if not raw.startswith(tag_text):
                self.raw(raw)  # not expected from the parser; keep it as it is
                return
            self.start(tag, attrs, tag_text, self_closing, raw[len(tag_text) :])
        elif kind == "end":
            self.end(event[2], raw)
        elif kind in ("data", "ref"):
            text = event[2]
            if kind == "ref" and raw[len(text) : len(text) + 1] == ";":
                text += ";"
            if not raw.startswith(text):
                self.raw(raw)
                return
            self.text(text, html.unescape(text) if kind == "ref" else text, raw[len(text) :])
        else:
            self.other(raw)

    def start(self, tag: str, attrs: list[tuple[str, str | None]], tag_text: str, self_closing: bool, extra: str) -> None:
        void = self_closing or tag in VOID
        if self.capture is not None:
            self.capture.parts.append(tag_text + extra)
            if not void:
                self.push(_Element(tag, "hard"))
            return
        parent = self.state
        values = dict(attrs)
        translate = (values.get("translate") or "").strip().lower() if "translate" in values else None
        classes = (values.get("class") or "").split()
        if parent == "hard":
            own = "hard"
        elif translate == "no" or "notranslate" in classes:
            own = "soft"
        elif translate in ("yes", ""):
            own = "on"
        else:
            own = parent
        parts: list[Part] = self.tag_parts(tag_text, attrs) if own == "on" else [tag_text]
        if extra:
            parts.append(extra)
        if tag in KEPT_TEXT | KEPT_OPAQUE | KEPT_BLOCK and own != "hard":
            own = "hard"
        if parent == "on" and tag in VOID_INLINE and void:
            self.add("marker", parts, "\n" if tag == "br" else "")  # a line break separates words
        elif parent == "on" and own != "on" and (tag in INLINE or tag in KEPT_TEXT or tag in KEPT_OPAQUE):
            self.capture = _Capture(len(self.stack), parts, [], tag not in KEPT_OPAQUE, self.offset)
            if void:
                self.finish_capture()
            else:
                self.push(_Element(tag, own))
        elif parent == "on" and tag in INLINE and not void and len(self.open_spans) < MAX_INLINE_DEPTH:
            self.add("open", parts, span=self.next_span)
            self.push(_Element(tag, own, span=self.next_span))
            self.next_span += 1
        elif parent == "on" and tag in INLINE:  # <b/> (which the browser leaves open), or too deep: zero width
            self.add("marker", parts)
            if not void:
                self.push(_Element(tag, own))
        else:
            self.flush()
            self.layout.extend(parts)
            if not void:
                self.push(_Element(tag, own))

    def end(self, tag: str, raw: str) -> None:
        match = self.find(tag)
        capture = self.capture
        if capture is not None:
            if match < 0 or match > capture.depth:  # inside the kept element, or stray
                capture.parts.append(raw)
                if match >= 0:
                    self.pop_to(match)
                return
            if match == capture.depth:
                capture.parts.append(raw)
                self.finish_capture()
                self.pop_to(match)
                return
            self.finish_capture()  # an ancestor closes: the kept element ends here, implicitly
            self.pop_to(capture.depth)
        if match < 0:
            if self.state == "on" and (tag in INLINE or tag in VOID_INLINE):
                self.add("marker", [raw])
            else:
                self.raw(raw)
            return
        for element in reversed(self.stack[match + 1 :]):  # closed implicitly by this end tag
            if element.span >= 0:
                self.add("close", [], span=element.span)
        element = self.stack[match]
        self.pop_to(match)
        if element.span >= 0:
            self.add("close", [raw], span=element.span)
        elif tag in INLINE and self.state == "on" and element.state == "on":
            self.add("marker", [raw])  # its start tag is in an earlier block
        else:
            self.raw(raw)

    def text(self, text: str, decoded: str, extra: str) -> None:
        if self.capture is not None:
            self.capture.parts.append(text + extra)
            self.capture.text.append(decoded)
            return
        if self.state != "on" or _looks_like_markup(decoded):
            self.raw(text + extra)
            return
        self.add("text", [text], decoded)
        if extra:  # bytes the parser skipped: kept where they are, as a marker
            self.add("marker", [extra])

    def other(self, raw: str) -> None:
        if self.capture is not None:
            self.capture.parts.append(raw)
        elif self.state == "on":
            self.add("marker", [raw])
        else:
            self.raw(raw)

    def finish(self) -> None:
        if self.capture is not None:
            self.finish_capture()
        self.flush()

    def finish_capture(self) -> None:
        capture = self.capture
        assert capture is not None
        self.capture = None
        text = "".join(capture.text) if capture.gives_text else ""
        parts: list[Part] = [_join(capture.parts)] if all(isinstance(part, str) for part in capture.parts) else capture.parts
        self.run.append(_Item("kept", parts, text, offset=capture.offset))

    def tag_parts(self, tag_text: str, attrs: list[tuple[str, str | None]]) -> list[Part]:
        """The start tag with a slot for each translated attribute value that has a letter."""
        found = _scan_attributes(tag_text)
        if found is None or [(name, value) for name, value, _, _ in found] != attrs:
            return [tag_text]
        parts: list[Part] = []
        cursor = 0
        for name, value, start, end in found:
            if name in TRANSLATED_ATTRIBUTES and value and _has_letter(value):
                parts.append(tag_text[cursor:start])
                slot = len(self.units)
                self.units.append((self.offset + start, Unit(value, "attribute")))
                parts.append(AttributeSlot(slot, tag_text[start:end]))
                cursor = end
        parts.append(tag_text[cursor:])
        return [part for part in parts if part != ""]

    # -- runs

    def flush(self) -> None:
        """Ends the current run: a text unit if it has a letter, raw layout otherwise."""
        for element in reversed(self.open_spans):  # inline elements still open close implicitly at the boundary
            self.add("close", [], span=element.span)
            element.span = -1
        self.open_spans.clear()
        items, self.run = self.run, []
        if not items:
            return
        _settle_kept_text(items)
        if not any(_has_letter(item.text) for item in items if item.kind == "text"):
            self.layout.extend(part for item in items for part in item.parts)
            return
        prefix, middle, suffix = _split_edges(items)
        self.layout.extend(prefix)
        slot = len(self.units)
        unit, layout_items = _unit_from(middle)
        self.units.append((middle[0].offset, unit))
        self.layout.append(TextSlot(slot, layout_items))
        self.layout.extend(suffix)


def _join(parts: Sequence[Part]) -> str:
    return "".join(part if isinstance(part, str) else part.raw for part in parts)


def _has_letter(text: str) -> bool:
    return any(character.isalpha() for character in text)


def _looks_like_markup(text: str) -> bool:
    """Text holding "<" + a tag-like character: the parser gave up on the rest of the document (Python 3.11
    does after "&#" with no ";" later), so it is kept as it is rather than translated."""
    position = text.find("<")
    while position >= 0:
        following = text[position + 1 : position + 2]
        if following.isalpha() or following in ("/", "!", "?"):
            return True
        position = text.find("<", position + 1)
    return False


def _scan_attributes(tag_text: str) -> list[tuple[str, str | None, int, int]] | None:
    """(name, decoded value, value start, value end) of each attribute of a start tag, the value's bytes with
    its quotes, following html.parser's own tolerant rules; the caller checks the result against the
    parser's attrs and keeps the tag whole when they differ."""
    length = len(tag_text)
    position = 1
    while position < length and tag_text[position] not in "\t\n\r\f />\x00":
        position += 1
    found: list[tuple[str, str | None, int, int]] = []

    def skip_separators(at: int) -> int:
        while at < length and (tag_text[at].isspace() or (tag_text[at] == "/" and tag_text[at + 1 : at + 2] != ">")):
            at += 1
        return at

    position = skip_separators(position)
    while position < length and tag_text[position] != ">" and not tag_text.startswith("/>", position):
        name_end = position + 1
        while name_end < length and not tag_text[name_end].isspace() and tag_text[name_end] not in "/=>":
            name_end += 1
        name = tag_text[position:name_end].lower()
        cursor = name_end
        while cursor < length and tag_text[cursor].isspace():
            cursor += 1
        value: str | None = None
        start = end = -1
        if cursor < length and tag_text[cursor] == "=":
            while cursor < length and tag_text[cursor] == "=":
                cursor += 1
            while cursor < length and tag_text[cursor].isspace():
                cursor += 1
            quote = tag_text[cursor : cursor + 1]
            if quote in ("'", '"'):
                close = tag_text.find(quote, cursor + 1)
                if close < 0:
                    return None
                start, end = cursor, close + 1
                value = tag_text[cursor + 1 : close]
            else:
                end = cursor
                while end < length and tag_text[end] != ">" and not tag_text[end].isspace():
                    end += 1
                start, value = cursor, tag_text[cursor:end]
            name_end = end
        found.append((name, html.unescape(value) if value else value, start, end))
        position = skip_separators(name_end)
    return found


def _settle_kept_text(items: list[_Item]) -> None:
    """A kept element glued to letters or digits around it gives no text (it becomes zero width)."""
    text = "".join(item.text for item in items)
    glued = []
    offset = 0
    for item in items:
        if item.kind == "kept" and item.text:
            before = text[offset - 1 : offset] if offset else ""
            after = text[offset + len(item.text) : offset + len(item.text) + 1]
            if before.isalnum() or after.isalnum() or not item.text.strip():
                glued.append(item)
        offset += len(item.text)
    for item in glued:
        item.kind, item.text = "marker", ""


def _split_edges(items: list[_Item]) -> tuple[list[Part], list[_Item], list[Part]]:
    """The run's leading and trailing whitespace and markup (including inline elements that wrap every word)
    stay outside the unit."""
    def hoistable(item: _Item) -> bool:
        return not item.text.strip() if item.kind in ("text", "kept") else True

    head = 0
    while head < len(items) and hoistable(items[head]):
        head += 1
    tail = len(items)
    while tail > head and hoistable(items[tail - 1]):
        tail -= 1
    opens = {item.span: index for index, item in enumerate(items) if item.kind == "open"}
    closes = {item.span: index for index, item in enumerate(items) if item.kind == "close"}
    while True:  # an element leaves the unit only with both its tags
        bad_open = min((index for span, index in opens.items() if index < head and head <= closes[span] < tail), default=head)
        bad_close = max((index for span, index in closes.items() if index >= tail and head <= opens[span] < tail), default=tail - 1)
        if bad_open == head and bad_close == tail - 1:
            break
        head, tail = min(head, bad_open), max(tail, bad_close + 1)
    prefix = [part for item in items[:head] for part in item.parts]
    suffix = [part for item in items[tail:] for part in item.parts]
    middle = items[head:tail]
    # Leading/trailing whitespace of the edge text items (raw == text for plain data) goes outside too.
    if middle and middle[0].kind == "text" and middle[0].parts == [middle[0].text]:
        text = middle[0].text
        stripped = text.lstrip()
        if stripped != text:
            prefix.append(text[: len(text) - len(stripped)])
            middle[0] = _Item("text", [stripped], stripped, offset=middle[0].offset)
    if middle and middle[-1].kind == "text" and middle[-1].parts == [middle[-1].text]:
        text = middle[-1].text
        stripped = text.rstrip()
        if stripped != text:
            suffix.insert(0, text[len(stripped) :])
            middle[-1] = _Item("text", [stripped], stripped, offset=middle[-1].offset)
    return prefix, middle, suffix


def _unit_from(middle: list[_Item]) -> tuple[Unit, tuple[Part, ...]]:
    text = "".join(item.text for item in middle)
    lead = len(text) - len(text.lstrip())
    unit_text = text.strip()

    def clamp(offset: int) -> int:
        return min(max(offset - lead, 0), len(unit_text))

    spans: list[InlineSpan] = []
    opened: dict[int, tuple[int, int, int]] = {}  # span id -> (index in spans, offset, index in middle)
    parents: list[int] = []  # indices in spans of the enclosing elements
    offset = 0
    for position, item in enumerate(middle):
        parent = parents[-1] if parents else -1
        if item.kind == "open":
            opened[item.span] = (len(spans), offset, position)
            parents.append(len(spans))
            spans.append(InlineSpan(clamp(offset), clamp(offset), "marker", _join(item.parts), "", parent, tuple(item.parts)))
        elif item.kind == "close" and item.span in opened:
            index, start, opener = opened.pop(item.span)
            parents.remove(index)
            parent = spans[index].parent
            if text[start:offset].strip():
                open_parts = tuple(middle[opener].parts)
                spans[index] = InlineSpan(clamp(start), clamp(offset), "element", _join(open_parts), _join(item.parts), parent, open_parts)
            else:  # no word inside: the element and what it holds are one zero-width marker, kept as they are
                del spans[index:]
                whole = tuple(part for inner in middle[opener : position + 1] for part in inner.parts)
                spans.append(InlineSpan(clamp(start), clamp(start), "marker", _join(whole), "", parent, whole))
        elif item.kind == "kept" and item.text:
            spans.append(InlineSpan(clamp(offset), clamp(offset + len(item.text)), "kept", _join(item.parts), "", parent, tuple(item.parts)))
        elif item.kind != "text" and item.parts:
            spans.append(InlineSpan(clamp(offset), clamp(offset), "marker", _join(item.parts), "", parent, tuple(item.parts)))
        offset += len(item.text)
    layout = tuple(part for item in middle for part in item.parts)
    return Unit(unit_text, "text", tuple(spans)), layout


# ---------------------------------------------------------------------------------------------- rendering


def render(plan: HtmlPlan, translations: Sequence[UnitTranslation]) -> str:
    """The document with each unit replaced by its translation (one per unit, in plan.units' order)."""
    if len(translations) != len(plan.units):
        raise ValueError(f"{len(translations)} translations for {len(plan.units)} units")
    out: list[str] = []

    def part(item: Part) -> str:
        if isinstance(item, str):
            return item
        unit = plan.units[plan.slot_units[item.unit]]
        translated = translations[plan.slot_units[item.unit]].text
        if translated == unit.text:
            return item.raw
        quote = item.raw[0] if item.raw[:1] in ("'", '"') else '"'
        return quote + translated.replace("&", "&amp;").replace(quote, "&quot;" if quote == '"' else "&#39;") + quote

    for item in plan.layout:
        if isinstance(item, TextSlot):
            index = plan.slot_units[item.unit]
            unit, translation = plan.units[index], translations[index]
            if translation.text == unit.text and _monotonic(translation.alignment):
                out.extend(part(piece) for piece in item.items)
            else:
                out.append(_Placement(unit, translation, part).render())
        else:
            out.append(part(item))
    return "".join(out)


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    core_start: int
    core_end: int


def _words(text: str) -> list[_Word]:
    """The str.split() tokens of `text` with their offsets and cores (see the module docstring)."""
    words = []
    position = 0
    for token in text.split():
        start = text.index(token, position)
        position = start + len(token)
        core_start, core_end = start, position
        while core_start < core_end and not _is_word_character(text[core_start]):
            core_start += 1
        while core_end > core_start and not _is_word_character(text[core_end - 1]):
            core_end -= 1
        words.append(_Word(start, position, core_start, core_end) if core_start < core_end else _Word(start, position, start, position))
    return words


def _is_word_character(character: str) -> bool:
    return unicodedata.category(character)[0] in "LNM"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class _Node:
    span: InlineSpan
    order: int
    children: list[_Node]
    first: int = -1  # covered source words [first, last]; -1: zero width
    last: int = -1
    start: int = 0  # placed character range in the target text
    end: int = 0


class _Placement:
    """One unit's translation with its inline markup placed (the rules are in the module docstring)."""

    def __init__(self, unit: Unit, translation: UnitTranslation, part: Callable[[Part], str]) -> None:
        self.part = part
        self.source = _words(unit.text)
        self.source_starts = [word.start for word in self.source]
        source_ends = [word.end for word in self.source]
        self.text = translation.text
        self.target = _words(self.text)
        targets: list[list[int]] = [[] for _ in self.source]
        pairs = translation.alignment if translation.alignment is not None else _proportional(len(self.source), len(self.target))
        for source, target in pairs:
            if 0 <= source < len(self.source) and 0 <= target < len(self.target):
                targets[source].append(target)
        self.targets = targets
        self.root: list[_Node] = []
        nodes: list[_Node] = []
        for order, span in enumerate(unit.spans):
            node = _Node(span, order, [])
            first = bisect_right(source_ends, span.start)  # the first word ending after the span starts
            last = bisect_left(self.source_starts, span.end) - 1  # the last word starting before it ends
            if first <= last and span.kind != "marker":
                node.first, node.last = first, last
            nodes.append(node)
            (nodes[span.parent].children if span.parent >= 0 else self.root).append(node)

    def render(self) -> str:
        self.place(self.root, 0, len(self.target) - 1, 0, len(self.source) - 1, 0, len(self.text))
        return self.emit(self.root, 0, len(self.text))

    # -- where

    def place(self, nodes: list[_Node], low: int, high: int, source_low: int, source_high: int, start: int, end: int) -> None:
        """Places `nodes` (siblings) in target words [low, high], characters [start, end]."""
        free = [True] * max(0, high - low + 1)  # target words no placed sibling has taken
        wanted = {node.order: self.aligned(node, low, high) for node in nodes if node.first >= 0}

        def scattered(node: _Node) -> bool:
            words = wanted[node.order]
            return not words or words[-1] - words[0] + 1 != len(words)

        # Siblings whose aligned words are contiguous first: a hull must not take another span's words.
        ranged = sorted((node for node in nodes if node.first >= 0), key=lambda node: (scattered(node), node.order))
        placed: list[_Node] = []
        for node in ranged:
            run = self.run_for(wanted[node.order], low, free)
            if run is None:
                node.first = -1  # nothing to wrap: zero width
                continue
            first, last = self.target[run[0]], self.target[run[1]]
            source_first, source_last = self.source[node.first], self.source[node.last]
            keeps_lead = source_first.core_start > source_first.start and node.span.start <= source_first.start
            keeps_trail = source_last.core_end < source_last.end and node.span.end >= source_last.end
            node.start = max(start, first.start if keeps_lead else first.core_start)
            node.end = min(end, last.end if keeps_trail else last.core_end)
            if node.end <= node.start:
                node.first = -1
                continue
            free[run[0] - low : run[1] - low + 1] = [False] * (run[1] - run[0] + 1)
            placed.append(node)
            self.place(node.children, run[0], run[1], node.first, node.last, node.start, node.end)
        placed.sort(key=lambda node: node.start)
        placed_starts = [node.start for node in placed]
        for node in nodes:
            if node.first < 0:
                position = self.anchor(node, low, high, source_low, source_high, start, end)
                before = bisect_left(placed_starts, position) - 1  # the last placed sibling starting before it
                if before >= 0 and position < placed[before].end:
                    position = placed[before].end  # not inside a sibling: right after it
                node.start = node.end = position
                self.place(node.children, high + 1, high, 0, -1, position, position)  # all zero width inside

    def aligned(self, node: _Node, low: int, high: int) -> list[int]:
        """The target words in [low, high] aligned to the node's source words, in order."""
        return sorted({target for source in range(node.first, node.last + 1) for target in self.targets[source] if low <= target <= high})

    @staticmethod
    def run_for(wanted: list[int], low: int, free: list[bool]) -> tuple[int, int] | None:
        """The target words a span wraps: the hull of its aligned words if free, else the free run holding
        most of them (trimmed to them); None if none is free."""
        if not wanted:
            return None
        if all(free[wanted[0] - low : wanted[-1] - low + 1]):
            return wanted[0], wanted[-1]
        wanted_set = set(wanted)
        best: list[int] = []
        group: list[int] = []
        for index in range(low, low + len(free) + 1):
            if index < low + len(free) and free[index - low]:
                if index in wanted_set:
                    group.append(index)
                continue
            if len(group) > len(best):
                best = group
            group = []
        return (best[0], best[-1]) if best else None

    def anchor(self, node: _Node, low: int, high: int, source_low: int, source_high: int, start: int, end: int) -> int:
        """The character position of a zero-width node."""
        offset = node.span.start
        word, side = self.source_anchor(offset)
        if word >= 0:
            targets = [t for t in self.targets[word] if low <= t <= high]
            if targets:
                aligned = self.target[min(targets) if side.startswith("before") else max(targets)]
                position = {"before": aligned.start, "before core": aligned.core_start, "after core": aligned.core_end, "after": aligned.end}[side]
                return min(max(position, start), end)
        if low > high or source_high < source_low:
            return start
        # The gap between words at the same relative position: gap g is before target word g.
        gap = (word if word >= 0 else source_low) + (1 if side.startswith("after") else 0)
        fraction = (min(max(gap, source_low), source_high + 1) - source_low) / (source_high - source_low + 1)
        index = low + int(fraction * (high - low + 1) + 0.5)
        position = self.target[index].start if index <= high else self.target[high].core_end
        return min(max(position, start), end)

    def source_anchor(self, offset: int) -> tuple[int, str]:
        """The source word a zero-width item at `offset` sticks to, and on which side of the word ("before",
        "after": outside its punctuation; "before core", "after core": inside it). Outside a word that has no
        punctuation on that side counts as inside, so the target word's own punctuation stays outside."""
        index = bisect_right(self.source_starts, offset) - 1  # the last word starting at or before
        if index < 0:
            if not self.source:
                return -1, "before"
            index, offset = 0, self.source[0].start
        word = self.source[index]
        if offset <= word.start:
            return index, "before" if word.core_start > word.start else "before core"
        if offset <= word.core_start:
            return index, "before core"
        if offset <= word.core_end or offset < word.end:
            return index, "after core" if offset <= word.core_end else "after"
        return index, "after" if word.core_end < word.end else "after core"

    # -- what

    def emit(self, nodes: list[_Node], start: int, end: int) -> str:
        out = []
        cursor = start
        for node in sorted(nodes, key=lambda n: (n.start, n.first >= 0, n.order)):
            out.append(_escape(self.text[cursor : node.start]))
            span = node.span
            if span.kind == "element":
                out.append(self.parts(span.open_parts))
                out.append(self.emit(node.children, node.start, node.end))
                out.append(span.close)
            else:
                out.append(self.parts(span.open_parts))
            cursor = max(cursor, node.end)
        out.append(_escape(self.text[cursor:end]))
        return "".join(out)

    def parts(self, parts: Sequence[Part]) -> str:
        return "".join(self.part(piece) for piece in parts)


def _monotonic(alignment: Sequence[tuple[int, int]] | None) -> bool:
    """Whether the alignment keeps the word order (no two links cross)."""
    if alignment is None:
        return True
    targets = [target for _, target in sorted(alignment)]
    return all(earlier <= later for earlier, later in zip(targets, targets[1:]))


def _proportional(source_words: int, target_words: int) -> list[tuple[int, int]]:
    """A monotonic alignment for want of one: each word to the word at the same relative position."""
    if not source_words or not target_words:
        return []
    pairs = {(target * source_words // target_words, target) for target in range(target_words)}
    pairs |= {(source, source * target_words // source_words) for source in range(source_words)}
    return sorted(pairs)
