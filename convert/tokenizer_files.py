"""Tokenizer files laid out exactly like facebook/m2m100_418M's, for checkpoints the project builds itself
(the toy test checkpoint and the full-size benchmark one: tests/fixtures/train_toy_m2m100.py,
scripts/make_bench_checkpoint.py). Build time only: it needs sentencepiece and transformers (the convert extra).

vocab.json follows fairseq: <s> <pad> </s> <unk> at ids 0-3, then the SentencePiece pieces; M2M100Tokenizer
appends the 100 language tokens, and the model has 8 more rows for fairseq's madeup words. Those are counted
(num_madeup_words), never listed: CTranslate2 appends madeupword0..7 itself, and listing them makes 8 too many.
"""

from __future__ import annotations

import json
from pathlib import Path

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in fairseq dictionaries
NUM_MADEUP_WORDS = 8


def write_m2m100_tokenizer(directory: Path, spm_model: bytes, *, model_max_length: int, vocab_json_size: int = 0) -> int:
    """Writes sentencepiece.bpe.model, vocab.json, special_tokens_map.json and tokenizer_config.json.

    With `vocab_json_size`, vocab.json is padded with filler entries to that size (standing for the pieces of
    the real model's other languages: the rows exist, nothing produces them). Returns the number of pieces.
    """
    import sentencepiece as spm
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    (directory / "sentencepiece.bpe.model").write_bytes(spm_model)
    processor = spm.SentencePieceProcessor(model_proto=spm_model)
    vocab = {token: index for index, token in enumerate(FAIRSEQ_SPECIALS)}
    for index in range(processor.get_piece_size()):
        if processor.is_control(index) or processor.is_unknown(index):
            continue  # SentencePiece's own <unk> <s> </s>: fairseq puts its specials first instead
        vocab[processor.id_to_piece(index)] = len(vocab)
    pieces = len(vocab) - len(FAIRSEQ_SPECIALS)
    filler = 0
    while len(vocab) < vocab_json_size:
        vocab.setdefault(f"<filler{filler:06d}>", len(vocab))
        filler += 1
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    language_tokens = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>"}
    special_tokens_map: dict[str, object] = {**specials, "additional_special_tokens": language_tokens}
    tokenizer_config: dict[str, object] = {
        "tokenizer_class": "M2M100Tokenizer",
        "src_lang": None,
        "tgt_lang": None,
        **specials,
        "language_codes": "m2m100",
        "sp_model_kwargs": {},
        "num_madeup_words": NUM_MADEUP_WORDS,
        "model_max_length": model_max_length,
        "additional_special_tokens": language_tokens,
    }
    for name, data in (("special_tokens_map.json", special_tokens_map), ("tokenizer_config.json", tokenizer_config)):
        (directory / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return pieces
