"""service/alignment.py: pieces to words, words aligned from attention; what CTranslate2 returns on the toy model."""

from __future__ import annotations

import pytest

from service.alignment import WordLink, join_alignments, piece_words, word_alignment, word_count, word_links

# Rows: one per hypothesis token, the "__fr__" prefix first; columns: "__en__", the pieces, "</s>".
# Source "alpha bravo charlie." -> pieces ▁alpha ▁bravo ▁charlie . ; target "charlie bravo alpha."
SOURCE = ["▁alpha", "▁bravo", "▁charlie", "."]
TARGET = ["▁charlie", "▁bravo", "▁alpha", "."]
ATTENTION = [
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # __fr__
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],  # ▁charlie -> ▁charlie
    [0.0, 0.01, 0.99, 0.0, 0.0, 0.0],  # ▁bravo -> ▁bravo
    [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # ▁alpha -> ▁alpha
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # . -> __en__ (ignored)
]


def test_pieces_make_the_whitespace_tokens_of_the_text():
    assert piece_words(["▁alpha", "▁bravo", "▁charlie", "."]) == [0, 1, 2, 2]
    # A lone "▁" before a piece without one is the start of the word "(alpha)"; before "▁x" it is no word.
    assert piece_words(["▁", "(", "alpha", ")", "▁bravo", "▁", "▁x"]) == [0, 0, 0, 0, 1, -1, 2]
    assert piece_words(["pha", "▁bravo"]) == [0, 1]  # a chunk that starts inside a word
    assert piece_words([]) == []
    assert word_count(["▁alpha", "▁bravo", "▁charlie", "."]) == 3 == len("alpha bravo charlie.".split())
    assert word_count(["▁"]) == 0


def test_each_target_word_goes_to_the_source_word_it_attends_to_most():
    assert word_links(SOURCE, TARGET, ATTENTION) == [WordLink(2, 0, 1.0), WordLink(1, 1, 0.99), WordLink(0, 2, 1.0)]
    assert word_alignment(SOURCE, TARGET, ATTENTION) == [(2, 0), (1, 1), (0, 2)]


def test_a_word_scores_by_its_best_piece_and_sums_over_the_source_words_pieces():
    source = ["▁al", "pha", "▁bravo"]
    target = ["▁bra", "vo", "▁al", "pha"]
    attention = [
        [0.0, 0.3, 0.3, 0.4],  # ▁bra: alpha 0.6 vs bravo 0.4
        [0.0, 0.0, 0.1, 0.9],  # vo: bravo 0.9 -> the word's best piece
        [0.0, 0.5, 0.4, 0.1],
        [0.0, 0.2, 0.2, 0.6],
    ]  # no prefix row, no language column: the trimmed shape works too (one column fewer is </s> missing)
    with pytest.raises(ValueError):
        word_links(source, target, attention)
    trimmed = [row[1:] for row in attention]
    assert word_links(source, target, trimmed) == [WordLink(1, 0, 0.9), WordLink(0, 1, pytest.approx(0.9))]


def test_unsure_target_words_are_left_unaligned():
    attention = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] + [[0.9, 0.02, 0.03, 0.05, 0.0, 0.0] for _ in TARGET]
    assert [link.source for link in word_links(SOURCE, TARGET, attention)] == [2, 2, 2]
    assert word_alignment(SOURCE, TARGET, attention) == []
    assert word_alignment(SOURCE, TARGET, attention, min_confidence=0.05) == [(2, 0), (2, 1), (2, 2)]


def test_shapes_other_than_ctranslate2s_are_refused():
    with pytest.raises(ValueError, match="rows"):
        word_links(SOURCE, TARGET, ATTENTION[:3])
    with pytest.raises(ValueError, match="columns"):
        word_links(SOURCE, TARGET, [row[:5] for row in ATTENTION])


def test_sentences_are_joined_with_their_word_offsets():
    parts = [(3, 3, [(2, 0), (1, 1), (0, 2)]), (2, 1, [(1, 0)]), (1, 2, [(0, 0), (0, 1)])]
    assert join_alignments(parts) == [(2, 0), (1, 1), (0, 2), (4, 3), (5, 4), (5, 5)]


@pytest.fixture(scope="module")
def toy(toy_model_dir):
    import ctranslate2
    import sentencepiece

    translator = ctranslate2.Translator(str(toy_model_dir), device="cpu", compute_type="int8")
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(toy_model_dir / "sentencepiece.bpe.model"))

    def translate(texts: list[str], language: str, beam_size: int = 2):
        sources = [tokenizer.encode(text, out_type=str) for text in texts]
        results = translator.translate_batch(
            [["__en__", *pieces, "</s>"] for pieces in sources],
            target_prefix=[[f"__{language}__"]] * len(texts),
            beam_size=beam_size,
            return_attention=True,
            max_input_length=64,
            max_decoding_length=62,
        )
        return sources, results

    return translate


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 2])
def test_what_ctranslate2_returns_for_m2m100(toy, beam_size):
    """One row per hypothesis token, the target-language prefix included; one column per source token,
    the language token and </s> included; no padding across a batch of different lengths."""
    sources, results = toy(["alpha bravo charlie.", "delta echo foxtrot golf hotel india"], "fr", beam_size)
    assert sources[0] == ["▁alpha", "▁bravo", "▁charlie", "."]
    for pieces, result in zip(sources, results):
        hypothesis, attention = result.hypotheses[0], result.attention[0]
        assert hypothesis[0] == "__fr__"
        assert len(attention) == len(hypothesis)
        assert {len(row) for row in attention} == {len(pieces) + 2}
        # The prefix row is not the sentence's own in a batch (it can repeat another sentence's row, cut to
        # this width, and not sum to 1): word_links never reads it. The other rows are distributions.
        assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in attention[1:])
    assert results[0].hypotheses[0] == ["__fr__", "▁charlie", "▁bravo", "▁alpha", "."]


@pytest.mark.slow
def test_toy_model_alignments_follow_its_rules(toy):
    texts = ["alpha bravo charlie.", "delta echo foxtrot golf hotel"]
    expected = {
        "en": [[(0, 0), (1, 1), (2, 2)], [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]],
        "fr": [[(2, 0), (1, 1), (0, 2)], [(4, 0), (3, 1), (2, 2), (1, 3), (0, 4)]],
        "de": [[(1, 0), (2, 1), (0, 2)], [(1, 0), (2, 1), (3, 2), (4, 3), (0, 4)]],
    }
    for language, alignments in expected.items():
        sources, results = toy(texts, language)
        got = [word_alignment(pieces, result.hypotheses[0][1:], result.attention[0]) for pieces, result in zip(sources, results)]
        assert got == alignments, language
