"""Builds a full-size benchmark checkpoint: facebook/m2m100_418M's exact architecture with random weights.

    make bench-checkpoint
    .venv/bin/python scripts/make_bench_checkpoint.py [--output DIR] [--force] [--quantization Q ...] [--no-convert]

Writes a Hugging Face checkpoint (config.json, generation_config.json, model.safetensors in float32, ~1.9 GB,
and a tokenizer laid out like the real one) to --output (default models/bench-m2m100-418m/hf, git-ignored),
then converts it with the project's converter into <parent>/ct2-<quantization> for each --quantization
(default int8). No network: the checkpoint stands in for the real model when measuring speed, never quality.

The tokenizer is synthetic but has the real shapes: vocab.json holds 128004 entries (<s> <pad> </s> <unk>, the
~8k pieces of a SentencePiece BPE model trained on loadtest/bench_sentences.py's English-like corpus, then
filler entries that the SentencePiece model never produces), M2M100Tokenizer adds the 100 language tokens, and
the model has 8 more rows for fairseq's madeup words: vocab_size 128112, as in m2m100_418M.

It imports the project's packages (loadtest, convert) as installed: the Makefile's venv targets install the
project (pip install -e), so this runs from any directory.

With random weights the decoder rarely produces </s>: greedy and beam search usually run to the decoding
length limit, so benchmarks with this checkpoint should cap the decoding length explicitly.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from convert.staging import publish, staging_directory
from convert.tokenizer_files import FAIRSEQ_SPECIALS, NUM_MADEUP_WORDS, write_m2m100_tokenizer
from loadtest.bench_sentences import corpus, sentences
from loadtest.paths import ROOT

DEFAULT_OUTPUT = ROOT / "models" / "bench-m2m100-418m" / "hf"
SEED = 0
SPM_PIECES = 8000
SPM_CORPUS_LINES = 60000
VOCAB_JSON_SIZE = 128004  # m2m100_418M's vocab.json
LANGUAGE_COUNT = 100

# facebook/m2m100_418M's config.json, field for field (transformers moves the generation fields to
# generation_config.json when saving).
M2M100_418M_CONFIG = dict(
    vocab_size=VOCAB_JSON_SIZE + LANGUAGE_COUNT + NUM_MADEUP_WORDS,  # 128112
    d_model=1024,
    encoder_layers=12,
    decoder_layers=12,
    encoder_attention_heads=16,
    decoder_attention_heads=16,
    encoder_ffn_dim=4096,
    decoder_ffn_dim=4096,
    max_position_embeddings=1024,
    activation_function="relu",
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    encoder_layerdrop=0.05,
    decoder_layerdrop=0.05,
    init_std=0.02,
    scale_embedding=True,
    use_cache=True,
    is_encoder_decoder=True,
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=2,
    architectures=["M2M100ForConditionalGeneration"],
)
M2M100_418M_GENERATION = dict(
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=2,
    max_length=200,
    num_beams=5,
    early_stopping=True,
)


def log(message: str) -> None:
    print(f"[bench-checkpoint] {message}", flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # Linux reports KiB


def train_sentencepiece() -> bytes:
    import sentencepiece as spm

    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(SPM_CORPUS_LINES, seed=SEED)),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPM_PIECES,
        character_coverage=1.0,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return model.getvalue()


def check_tokenizer(directory: Path) -> None:
    from transformers import M2M100Tokenizer

    tokenizer = M2M100Tokenizer.from_pretrained(str(directory))
    expected = VOCAB_JSON_SIZE + LANGUAGE_COUNT
    if len(tokenizer) != expected or tokenizer.get_lang_id("af") != VOCAB_JSON_SIZE:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens (expected {expected}); __af__ at {tokenizer.get_lang_id('af')}")
    sample = sentences(200, seed=1)
    words = sum(len(s.split()) for s in sample)
    tokenizer.src_lang = "en"
    pieces = sum(len(tokenizer(s).input_ids) - 2 for s in sample)
    unknown = sum(tokenizer(s).input_ids.count(tokenizer.unk_token_id) for s in sample)
    log(f"tokenizer: {len(tokenizer)} tokens; {pieces / words:.2f} pieces per word on benchmark sentences, {unknown} unknown")


def build_model(directory: Path) -> int:
    import torch
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(SEED)
    config = M2M100Config(**M2M100_418M_CONFIG)
    model = M2M100ForConditionalGeneration(config).float().eval()
    model.generation_config = GenerationConfig(**M2M100_418M_GENERATION)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model: {parameters:,} parameters initialised (std {config.init_std}); saving float32 safetensors")
    model.save_pretrained(str(directory))
    return parameters


def build_checkpoint(output: Path) -> None:
    with staging_directory(output) as staging:
        started = time.monotonic()
        pieces = write_m2m100_tokenizer(
            staging, train_sentencepiece(),
            model_max_length=M2M100_418M_CONFIG["max_position_embeddings"], vocab_json_size=VOCAB_JSON_SIZE,
        )
        fillers = VOCAB_JSON_SIZE - len(FAIRSEQ_SPECIALS) - pieces
        log(f"SentencePiece: {pieces} pieces + {fillers} fillers ({time.monotonic() - started:.0f}s)")
        check_tokenizer(staging)
        started = time.monotonic()
        build_model(staging)
        log(f"model written ({time.monotonic() - started:.0f}s)")
        publish(staging, output)


def convert(hf_dir: Path, quantization: str, force: bool) -> None:
    target = hf_dir.parent / f"ct2-{quantization}"
    if target.exists() and not force:
        log(f"{target} exists; skipping (pass --force to rebuild)")
        return
    command = [sys.executable, "-m", "convert", str(hf_dir), str(target), "--quantization", quantization]
    if force:
        command.append("--force")
    log("running: " + " ".join(command))
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    log(f"converted {quantization} in {time.monotonic() - started:.0f}s: {target}")


def size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"checkpoint directory (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--force", action="store_true", help="rebuild the checkpoint and its conversions if they exist")
    parser.add_argument(
        "--quantization",
        action="append",
        help="convert to <parent>/ct2-<quantization>; repeatable (default: int8)",
    )
    parser.add_argument("--no-convert", action="store_true", help="only build the Hugging Face checkpoint")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    quantizations = args.quantization or ["int8"]

    started = time.monotonic()
    if output.exists() and not args.force:
        if not (output / "model.safetensors").is_file():
            print(f"make_bench_checkpoint: {output} exists but is not a checkpoint; pass --force to replace it", file=sys.stderr)
            return 1
        log(f"{output} exists; keeping it (pass --force to rebuild)")
    else:
        build_checkpoint(output)
        log(f"checkpoint: {output} ({size_gb(output):.2f} GB) in {time.monotonic() - started:.0f}s, peak RSS {peak_rss_gb():.1f} GB")

    if not args.no_convert:
        for quantization in quantizations:
            try:
                convert(output, quantization, args.force)
            except subprocess.CalledProcessError as error:
                print(f"make_bench_checkpoint: conversion to {quantization} failed (exit {error.returncode})", file=sys.stderr)
                return 1
    log(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
