"""Convert an M2M100 checkpoint (hub id or local directory) into a self-contained model directory.

torch and transformers are imported here only, lazily, so that `--help` and input checks are fast.
The output is written to a temporary sibling directory and renamed into place at the end: an
interrupted or failed run never leaves a half-written model where the service would look.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from convert.staging import publish, staging_directory
from service.model_dir import SENTENCEPIECE_NAME, Manifest, SpecialTokens, write_manifest

# The quantizations CTranslate2 can store; which ones *run* depends on the device.
QUANTIZATIONS = ("int8", "int8_float16", "int8_float32", "float16", "float32")
DEFAULT_SOURCE = "facebook/m2m100_418M"
M2M100_MODEL_TYPE = "m2m_100"
M2M100_LANGUAGE_COUNT = 100
# What a checkpoint directory must hold besides the weights.
CHECKPOINT_FILES = ("config.json", "vocab.json", SENTENCEPIECE_NAME)
# Files fetched from the hub: configs, tokenizer, and one weights format (safetensors preferred).
HUB_METADATA_PATTERNS = ("*.json", "*.model")

Progress = Callable[[str], None]


class ConversionError(Exception):
    """A conversion that cannot proceed; the message is one line meant for the user."""


def convert(
    source: str,
    output: Path | str,
    quantization: str = "int8",
    force: bool = False,
    progress: Progress = lambda line: None,
) -> Manifest:
    """Converts `source` into the model directory `output` and returns its manifest."""
    started = time.monotonic()
    output = Path(output)
    if quantization not in QUANTIZATIONS:
        raise ConversionError(f"unknown quantization {quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    if output.exists() and not force:
        raise ConversionError(f"output {output} already exists; pass --force to overwrite it")
    _require_build_dependencies()

    progress(f"resolving checkpoint {source}")
    checkpoint, revision = _resolve_checkpoint(source)
    config = _check_checkpoint(checkpoint)

    tokenizer = _load_tokenizer(checkpoint)
    languages = _check_tokenizer(tokenizer)

    with staging_directory(output) as staging:
        progress(f"loading checkpoint and converting to CTranslate2 ({quantization})")
        _convert_weights(checkpoint, staging, quantization)

        progress("verifying the vocabulary and writing the manifest")
        _check_vocabulary(staging, tokenizer, languages, expected_size=int(config["vocab_size"]))
        shutil.copyfile(checkpoint / SENTENCEPIECE_NAME, staging / SENTENCEPIECE_NAME)
        manifest = _build_manifest(source, revision, quantization, languages, config)
        write_manifest(staging, manifest)

        # An existing output (only with --force) is replaced last.
        publish(staging, output)
    size_mb = sum(f.stat().st_size for f in output.iterdir()) / 1e6
    progress(f"done in {time.monotonic() - started:.1f}s: {output} ({size_mb:.1f} MB)")
    return manifest


def _resolve_checkpoint(source: str) -> tuple[Path, str | None]:
    """Returns a local checkpoint directory and, for the hub, the commit it came from."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConversionError(f"{source} is a file; SOURCE must be a checkpoint directory or a hub id")
        return local, None
    if _looks_like_path(source):
        raise ConversionError(f"checkpoint directory {source} does not exist")
    return _download_from_hub(source)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a local path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _download_from_hub(repo_id: str) -> tuple[Path, str | None]:
    import huggingface_hub
    from huggingface_hub import errors
    from huggingface_hub.utils import logging as hub_logging

    # The hub client logs every retry as a warning; the one line we raise says it all.
    hub_logging.set_verbosity_error()
    local_hint = (
        "download the checkpoint elsewhere and convert from the local directory instead: "
        f"python -m convert /path/to/{repo_id.split('/')[-1]} OUTPUT_DIR"
    )
    try:
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            # Offline: only a copy already in the local hub cache can be used.
            path = huggingface_hub.snapshot_download(repo_id, local_files_only=True)
            return Path(path), None
        api = huggingface_hub.HfApi()
        info = api.model_info(repo_id)
        files = {sibling.rfilename for sibling in info.siblings or []}
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        path = huggingface_hub.snapshot_download(
            repo_id, revision=info.sha, allow_patterns=[*HUB_METADATA_PATTERNS, *weights]
        )
        return Path(path), info.sha
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as error:
        raise ConversionError(f"{repo_id} is not an accessible model on the Hugging Face hub ({error.__class__.__name__})") from None
    except errors.LocalEntryNotFoundError:
        raise ConversionError(f"the Hugging Face hub is disabled (HF_HUB_OFFLINE) and {repo_id} is not cached; {local_hint}") from None
    except Exception as error:  # noqa: BLE001 - every other failure here is the network or the hub
        raise ConversionError(f"the Hugging Face hub is unreachable ({_first_line(error)}); {local_hint}") from None


def _check_checkpoint(checkpoint: Path) -> dict:
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    if "config.json" in missing:
        raise ConversionError(f"{checkpoint} is not a Hugging Face checkpoint: config.json is missing")
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConversionError(f"{checkpoint / 'config.json'} is not valid JSON: {error}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != M2M100_MODEL_TYPE:
        raise ConversionError(f"{checkpoint} is not an M2M100 checkpoint (model_type is {model_type!r}, expected 'm2m_100')")
    if missing:
        raise ConversionError(f"{checkpoint} lacks the M2M100 tokenizer files: {', '.join(missing)}")
    return config


# Conversion needs what only the `convert` extra installs; the service image and `pip install .` lack them.
BUILD_DEPENDENCIES = ("torch", "transformers", "huggingface_hub")


def _require_build_dependencies() -> None:
    missing = [name for name in BUILD_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConversionError(
            f"conversion needs {', '.join(missing)}, which this environment lacks: install the convert extra "
            "(pip install '.[convert]', or make venv-convert); the service image carries only the run time"
        )


def _load_tokenizer(checkpoint: Path):
    # The same class CTranslate2's converter uses, loaded first: a wrong tokenizer fails in seconds.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds here
        raise ConversionError(f"cannot load the tokenizer of {checkpoint}: {_first_line(error)}") from None


def _convert_weights(checkpoint: Path, staging: Path, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(checkpoint)).convert(str(staging), quantization=quantization, force=True)
    except Exception as error:  # noqa: BLE001 - the converter raises bare ValueError/RuntimeError/OSError
        raise ConversionError(f"CTranslate2 could not convert {checkpoint}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def _check_tokenizer(tokenizer) -> tuple[str, ...]:
    """The tokenizer must know the 100 M2M100 language codes, or the vocabulary won't line up."""
    lang_code_to_id = getattr(tokenizer, "lang_code_to_id", None)
    if not lang_code_to_id:
        raise ConversionError(
            f"the tokenizer ({tokenizer.__class__.__name__}) has no M2M100 language codes; "
            "an M2M100 checkpoint needs tokenizer_config.json with tokenizer_class M2M100Tokenizer"
        )
    if len(lang_code_to_id) != M2M100_LANGUAGE_COUNT:
        raise ConversionError(
            f"the tokenizer lists {len(lang_code_to_id)} language codes, an M2M100 tokenizer lists "
            f"{M2M100_LANGUAGE_COUNT} (check language_codes in tokenizer_config.json)"
        )
    return tuple(lang_code_to_id)


def _check_vocabulary(staging: Path, tokenizer, languages: tuple[str, ...], expected_size: int) -> None:
    """A token at the wrong id converts silently and translates garbage: check the ones that matter."""
    vocabulary = json.loads((staging / "shared_vocabulary.json").read_text(encoding="utf-8"))
    if len(vocabulary) != expected_size:
        raise ConversionError(f"converted vocabulary has {len(vocabulary)} tokens, the model expects {expected_size}")
    wrong = [
        code
        for code in languages
        if vocabulary[tokenizer.get_lang_id(code)] != tokenizer.lang_code_to_token[code]
    ]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        token = getattr(tokenizer, name)
        if vocabulary[tokenizer.convert_tokens_to_ids(token)] != token:
            wrong.append(token)
    if wrong:
        raise ConversionError(f"converted vocabulary puts these tokens at the wrong ids: {', '.join(wrong[:10])}")


def _build_manifest(source: str, revision: str | None, quantization: str, languages, config: dict) -> Manifest:
    import ctranslate2
    import sentencepiece
    import torch
    import transformers

    positions = int(config["max_position_embeddings"])
    return Manifest(
        source=source,
        source_revision=revision,
        quantization=quantization,
        languages=tuple(languages),
        max_input_length=positions,
        # The decoder's positions also hold the start token and the target language prefix.
        max_decoding_length=positions - 2,
        special_tokens=SpecialTokens(),
        tools={
            "ctranslate2": ctranslate2.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "sentencepiece": sentencepiece.__version__,
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
