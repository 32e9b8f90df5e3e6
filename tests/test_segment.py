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
    for text in ("", "   ", "\n\n"):
        seg = segment.split(text)
        assert seg.sentences == []
        assert segment.join(seg, [], "en") == text


def test_surrounding_whitespace_is_kept():
    seg = segment.split("  alpha.  ")
    assert segment.join(seg, ["A."], "en") == "  A.  "


def test_closing_quotes_stay_with_their_sentence():
    assert segment.split('He said "stop." Then he left.').sentences == ['He said "stop."', "Then he left."]
