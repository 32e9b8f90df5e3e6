"""Word alignment from the engine's attention, for putting inline HTML tags back (service/markup.py).

What CTranslate2 4.8 returns (measured on the toy M2M100, int8 on CPU, beam 1 and 2, batches mixing lengths):
`translate_batch(source, target_prefix=[["__fr__"]], return_attention=True)` gives, per hypothesis, one row per
token of `result.hypotheses[k]` *including* the target-language prefix (row 0 is the step that emitted
"__fr__"; no row for the final </s>), and one column per source token *including* the source-language token
and </s> (["__en__", *pieces, "</s>"]), unpadded: each sentence of a batch has its own width. Row i is the
attention of the step that produced hypothesis token i. The values are the converted model's alignment
head(s) (by default, which convert/ keeps: the first head of the last decoder layer), each row summing to 1,
except the prefix row, which is not the sentence's own in a batch of different lengths (there it repeated
another sentence's row, cut to this sentence's width): it is never read.

Words, both sides: a SentencePiece piece starting with "▁" starts a word, every other piece continues the
current one; a group of pieces that is only "▁" (whitespace) is no word. These are exactly the
whitespace-separated tokens (`str.split()`) of the detokenized text, punctuation included: "charlie." is one
word, made of the pieces "▁charlie" and ".". Chunks of a long sentence or sentences of a text are aligned one
by one and joined with `join_alignments`.

The rule: target word t is aligned to the source word s that maximizes
    score(t, s) = max over the pieces p of t of (sum over the pieces q of s of attention[p][q]),
ignoring the language-token and </s> columns (no renormalization: a piece that looks at them, such as a final
"." on the toy model, simply scores low everywhere and does not dilute its word). score(t, s) in [0, 1] is the
link's confidence; `word_alignment` keeps the links whose confidence is at least `min_confidence`, so a target
word that attends to no source word in particular is left unaligned (markup's fallback places its tags).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WORD_START = "\u2581"  # SentencePiece's "▁"
DEFAULT_MIN_CONFIDENCE = 0.2


@dataclass(frozen=True)
class WordLink:
    source: int  # source word index
    target: int  # target word index
    confidence: float  # score(target, source) in [0, 1], see the module docstring


def piece_words(pieces: Sequence[str]) -> list[int]:
    """The word index of each piece; -1 for a piece of a group that is only whitespace (a lone "▁")."""
    groups: list[int] = []  # group index of each piece
    for index, piece in enumerate(pieces):
        groups.append(groups[-1] + (1 if piece.startswith(WORD_START) else 0) if index else 0)
    has_text = [False] * (groups[-1] + 1 if groups else 0)
    for group, piece in zip(groups, pieces):
        if piece.replace(WORD_START, "").strip():
            has_text[group] = True
    word_of_group: list[int] = []
    words = 0
    for text in has_text:
        word_of_group.append(words if text else -1)
        words += text
    return [word_of_group[group] for group in groups]


def word_count(pieces: Sequence[str]) -> int:
    """How many words (whitespace-separated tokens of the detokenized text) `pieces` make."""
    owners = [owner for owner in piece_words(pieces) if owner >= 0]
    return owners[-1] + 1 if owners else 0


def word_links(source_pieces: Sequence[str], target_pieces: Sequence[str], attention: Sequence[Sequence[float]]) -> list[WordLink]:
    """One link per target word that has a source word to look at, with its confidence, in target order.

    `source_pieces`: the sentence's pieces, without the language token and </s>. `target_pieces`: the hypothesis
    without the target-language prefix. `attention`: CTranslate2's matrix for that hypothesis, either as returned
    (len(target_pieces) + 1 rows, prefix row first; len(source_pieces) + 2 columns, language token first and
    </s> last) or already trimmed (len(target_pieces) rows, len(source_pieces) columns). ValueError otherwise.
    """
    rows = len(attention)
    if rows == len(target_pieces) + 1:
        row_offset = 1
    elif rows == len(target_pieces):
        row_offset = 0
    else:
        raise ValueError(f"attention has {rows} rows for {len(target_pieces)} target pieces")
    columns = len(attention[0]) if rows else len(source_pieces) + 2
    if columns == len(source_pieces) + 2:
        column_offset = 1
    elif columns == len(source_pieces):
        column_offset = 0
    else:
        raise ValueError(f"attention has {columns} columns for {len(source_pieces)} source pieces")
    source_owner = piece_words(source_pieces)
    source_words = max(source_owner, default=-1) + 1
    best: dict[int, list[float]] = {}  # target word -> score per source word
    for piece_index, target_word in enumerate(piece_words(target_pieces)):
        if target_word < 0:
            continue
        row = attention[piece_index + row_offset]
        sums = [0.0] * source_words
        for source_index, source_word in enumerate(source_owner):
            if source_word >= 0:
                sums[source_word] += float(row[source_index + column_offset])
        scores = best.setdefault(target_word, [0.0] * source_words)
        for word in range(source_words):
            if sums[word] > scores[word]:
                scores[word] = sums[word]
    links = []
    for target_word in sorted(best):
        scores = best[target_word]
        if scores:
            source_word = max(range(len(scores)), key=scores.__getitem__)
            links.append(WordLink(source_word, target_word, min(1.0, scores[source_word])))
    return links


def word_alignment(
    source_pieces: Sequence[str],
    target_pieces: Sequence[str],
    attention: Sequence[Sequence[float]],
    *,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
) -> list[tuple[int, int]]:
    """(source word, target word) pairs, one per target word whose link's confidence is >= min_confidence."""
    return [(link.source, link.target) for link in word_links(source_pieces, target_pieces, attention) if link.confidence >= min_confidence]


def join_alignments(parts: Iterable[tuple[int, int, Sequence[tuple[int, int]]]]) -> list[tuple[int, int]]:
    """The alignment of a text made of consecutive parts (sentences, or chunks cut between words), from each
    part's (source word count, target word count, alignment). Right when the text's words are the parts' words
    in order, i.e. parts are cut at whitespace and their translations joined with whitespace."""
    joined: list[tuple[int, int]] = []
    source_offset = target_offset = 0
    for source_words, target_words, pairs in parts:
        joined.extend((source + source_offset, target + target_offset) for source, target in pairs)
        source_offset += source_words
        target_offset += target_words
    return joined
