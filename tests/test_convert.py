"""The conversion pipeline on the trained toy checkpoint: faithful, exact, and safe on bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import ctranslate2
import pytest

from convert.m2m100 import QUANTIZATIONS, ConversionError, convert
from loadtest.toy_compute import exact_compute_type
from loadtest.toy_task import WORDS, expected_translation
from service.model_dir import read_manifest
from tests.helpers import ROOT, TOY_CHECKPOINT

CPU_QUANTIZATIONS = [q for q in QUANTIZATIONS if q in ctranslate2.get_supported_compute_types("cpu")]
TARGETS = ("en", "fr", "de")


def toy_tokenizer():
    from transformers import M2M100Tokenizer

    return M2M100Tokenizer.from_pretrained(str(TOY_CHECKPOINT))


def sentences(count: int, seed: int, max_words: int = 8) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
        out.append(words + ("." if rng.random() < 0.5 else ""))
    return out


def ct2_translate(model_dir: Path, texts: list[str], source: str, target: str, compute_type: str = "default"):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "sentencepiece.bpe.model"))
    translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type)
    batch = [[f"__{source}__", *sp.encode(text, out_type=str), "</s>"] for text in texts]
    results = translator.translate_batch(batch, target_prefix=[[f"__{target}__"]] * len(texts), beam_size=1)
    return [result.hypotheses[0][1:] for result in results], sp


def snapshot(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture(scope="module")
def float32_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("f32") / "toy-float32"
    convert(str(TOY_CHECKPOINT), output, "float32")
    return output


@pytest.mark.parametrize("quantization", CPU_QUANTIZATIONS)
def test_toy_converts_at_every_cpu_quantization(tmp_path, quantization):
    output = tmp_path / f"toy-{quantization}"
    manifest = convert(str(TOY_CHECKPOINT), output, quantization)

    assert snapshot(output) == {"model.bin", "config.json", "shared_vocabulary.json", "sentencepiece.bpe.model", "manifest.json"}
    assert read_manifest(output) == manifest
    assert manifest.quantization == quantization
    assert manifest.source == str(TOY_CHECKPOINT)
    assert len(manifest.languages) == 100 and manifest.languages[:3] == ("af", "am", "ar")
    assert manifest.max_input_length == 64 and manifest.max_decoding_length == 62
    assert set(manifest.tools) == {"ctranslate2", "transformers", "torch", "sentencepiece"}

    tokenizer = toy_tokenizer()
    vocabulary = json.loads((output / "shared_vocabulary.json").read_text())
    config = json.loads((TOY_CHECKPOINT / "config.json").read_text())
    assert len(vocabulary) == config["vocab_size"] == len(tokenizer) + 8
    assert vocabulary[-8:] == [f"madeupword{i}" for i in range(8)]  # CTranslate2 names them so
    for code in manifest.languages:
        assert vocabulary[tokenizer.get_lang_id(code)] == f"__{code}__"
    assert vocabulary[:4] == ["<s>", "<pad>", "</s>", "<unk>"]

    outputs, sp = ct2_translate(output, ["alpha bravo charlie."], "en", "fr")
    assert sp.decode_pieces(outputs[0]) == "charlie bravo alpha."


def test_float32_conversion_decodes_exactly_like_transformers_generate(float32_dir):
    """The proof the pipeline is faithful: same tokens as transformers, token for token."""
    import torch
    from transformers import M2M100ForConditionalGeneration

    tokenizer = toy_tokenizer()
    model = M2M100ForConditionalGeneration.from_pretrained(str(TOY_CHECKPOINT)).eval()
    # In-task sentences, plus longer ones the model never saw: outputs may be anything, but equal.
    texts = sentences(12, seed=7) + sentences(4, seed=8, max_words=14)
    pairs = [("en", "fr"), ("fr", "en"), ("de", "de"), ("es", "fr"), ("en", "de")]
    for source, target in pairs:
        tokenizer.src_lang = source
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            generated = model.generate(
                **encoded, forced_bos_token_id=tokenizer.get_lang_id(target), num_beams=1, do_sample=False, max_new_tokens=60
            )
        reference = []
        for row in generated.tolist():
            ids = row[2:]  # decoder start </s>, then the forced target-language token
            reference.append([i for i in ids if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)])
        ours, _ = ct2_translate(float32_dir, texts, source, target, compute_type="float32")
        assert [tokenizer.convert_tokens_to_ids(tokens) for tokens in ours] == reference, (source, target)


def test_int8_conversion_gives_the_toy_tasks_exact_outputs(toy_model_dir):
    # The int8 weights, computed at the compute type that is exact on this CPU (int8 where CTranslate2's int8 GEMM
    # does not saturate, float32 on the dequantized weights where it does: loadtest/toy_compute.py).
    compute_type = exact_compute_type(toy_model_dir)
    texts = sentences(60, seed=11)
    for target in TARGETS:
        outputs, sp = ct2_translate(toy_model_dir, texts, "en", target, compute_type=compute_type)
        assert [sp.decode_pieces(tokens) for tokens in outputs] == [expected_translation(t, target) for t in texts]


# --- refusing bad input, leaving nothing behind


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def copy_toy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(TOY_CHECKPOINT, tmp_path / "checkpoint"))


def test_refuses_to_overwrite_without_force_and_replaces_with_it(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = run_cli(str(TOY_CHECKPOINT), str(output))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"convert: error: output {output} already exists; pass --force to overwrite it"
    assert snapshot(output) == {"keep.txt"}

    result = run_cli(str(TOY_CHECKPOINT), str(output), "--force")
    assert result.returncode == 0, result.stderr
    assert "manifest.json" in snapshot(output) and "keep.txt" not in snapshot(output)
    assert snapshot(tmp_path) == {"out"}  # no staging or old copies left around
    # One progress line per stage (transformers adds its own weight-loading bar in between).
    stages = [line.split(" ")[1] for line in result.stderr.splitlines() if line.startswith("[convert] ")]
    assert stages == ["resolving", "loading", "verifying", "done"]


@pytest.mark.parametrize(
    "prepare, message",
    [
        (lambda tmp: (str(tmp / "missing"), None), "checkpoint directory {tmp}/missing does not exist"),
        (lambda tmp: (str(tmp / "file.txt"), (tmp / "file.txt").write_text("x")),
         "{tmp}/file.txt is a file; SOURCE must be a checkpoint directory or a hub id"),
        (lambda tmp: (str(tmp), None), "{tmp} is not a Hugging Face checkpoint: config.json is missing"),
    ],
)
def test_bad_sources_get_one_clear_line(tmp_path, prepare, message):
    source, _ = prepare(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli(source, str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "convert: error: " + message.format(tmp=tmp_path)
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before


def test_a_checkpoint_that_is_not_m2m100_is_refused(tmp_path):
    checkpoint = copy_toy(tmp_path)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "bart"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"is not an M2M100 checkpoint \(model_type is 'bart', expected 'm2m_100'\)"):
        convert(str(checkpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_files_are_named(tmp_path):
    checkpoint = copy_toy(tmp_path)
    (checkpoint / "sentencepiece.bpe.model").unlink()
    with pytest.raises(ConversionError, match="lacks the M2M100 tokenizer files: sentencepiece.bpe.model"):
        convert(str(checkpoint), tmp_path / "out")


def test_a_tokenizer_without_the_100_language_codes_is_refused(tmp_path):
    checkpoint = copy_toy(tmp_path)
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    config["language_codes"] = "wmt21"  # the 8-language WMT21 list instead of M2M100's 100
    config.pop("additional_special_tokens", None)
    config.pop("extra_special_tokens", None)
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(config))
    before = snapshot(tmp_path)
    with pytest.raises(ConversionError, match="the tokenizer lists 8 language codes, an M2M100 tokenizer lists 100"):
        convert(str(checkpoint), tmp_path / "out")
    assert snapshot(tmp_path) == before


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="unknown quantization 'int4'; choose one of: int8, int8_float16"):
        convert(str(TOY_CHECKPOINT), tmp_path / "out", "int4")
    result = run_cli(str(TOY_CHECKPOINT), str(tmp_path / "out"), "--quantization", "int4")
    assert result.returncode == 2 and "invalid choice: 'int4'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_the_convert_extra_the_cli_says_what_to_install(tmp_path):
    # As in the service image or after `pip install .`: torch and transformers cannot be imported.
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import importlib.util; find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name in ('torch', 'transformers') else find(name, *a)\n"
        "from convert.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(TOY_CHECKPOINT), str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "convert: error: conversion needs torch, transformers, which this environment lacks: install the convert extra "
        "(pip install '.[convert]', or make venv-convert); the service image carries only the run time"
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_unreachable_hub_says_so_and_how_to_convert_locally(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    result = run_cli("facebook/m2m100_418M", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("convert: error: the Hugging Face hub is unreachable (")
    assert last.endswith("convert from the local directory instead: python -m convert /path/to/m2m100_418M OUTPUT_DIR")
    assert not (tmp_path / "out").exists()


def test_offline_mode_without_a_cached_copy_says_so(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("facebook/m2m100_1.2B", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    assert "the Hugging Face hub is disabled (HF_HUB_OFFLINE) and facebook/m2m100_1.2B is not cached" in result.stderr


def test_a_failure_during_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    import convert.m2m100 as module

    def explode(checkpoint, staging, quantization):
        (staging / "model.bin").write_bytes(b"half")
        raise ConversionError("disk full")

    monkeypatch.setattr(module, "_convert_weights", explode)
    with pytest.raises(ConversionError, match="disk full"):
        convert(str(TOY_CHECKPOINT), tmp_path / "out")
    assert snapshot(tmp_path) == set()
