"""The model-directory format: what `convert` writes and the service reads.

A model directory is self-contained: the CTranslate2 model (model.bin, config.json,
shared_vocabulary.json), the SentencePiece model, and `manifest.json`. The manifest carries
everything the service needs to know about the model so that it never needs transformers,
torch or the hub at run time. This module must stay free of heavy imports: both the
converter and the service import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
SENTENCEPIECE_NAME = "sentencepiece.bpe.model"
VOCABULARY_NAME = "shared_vocabulary.json"
FORMAT_VERSION = 1
# The files a complete model directory must hold; the CTranslate2 vocabulary file name is the
# one CTranslate2 4.x writes for models with a shared source/target vocabulary.
REQUIRED_FILES = ("model.bin", "config.json", VOCABULARY_NAME, SENTENCEPIECE_NAME, MANIFEST_NAME)


class ModelDirError(ValueError):
    """The directory is not a usable model directory; the message says why."""


@dataclass(frozen=True)
class SpecialTokens:
    bos: str = "<s>"
    eos: str = "</s>"
    pad: str = "<pad>"
    unk: str = "<unk>"
    # M2M100 marks languages with tokens like "__en__".
    language_token_format: str = "__{lang}__"

    def language_token(self, lang: str) -> str:
        return self.language_token_format.format(lang=lang)


@dataclass(frozen=True)
class Manifest:
    source: str
    quantization: str
    languages: tuple[str, ...]
    # Longest token sequence (language token and </s> included) the encoder has positions for.
    max_input_length: int
    # Longest target the decoder has positions for (the target language prefix excluded).
    max_decoding_length: int
    architecture: str = "M2M100ForConditionalGeneration"
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    source_revision: str | None = None
    tools: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["languages"] = list(self.languages)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            version = int(data.get("format_version", 0))
            if version != FORMAT_VERSION:
                raise ModelDirError(
                    f"manifest format_version {version} is not supported (expected {FORMAT_VERSION}); "
                    "re-run `python -m convert` with this version of the project"
                )
            listed = data["languages"]
            # A string is iterable too: "en" must not become ("e", "n").
            if not isinstance(listed, list) or not all(isinstance(code, str) and code for code in listed):
                raise ModelDirError(f"manifest field 'languages' must be a list of language codes, got {listed!r}")
            languages = tuple(listed)
            if not languages:
                raise ModelDirError("manifest lists no languages")
            return cls(
                source=str(data["source"]),
                quantization=str(data["quantization"]),
                languages=languages,
                max_input_length=_positive_int(data, "max_input_length"),
                max_decoding_length=_positive_int(data, "max_decoding_length"),
                architecture=str(data.get("architecture", cls.architecture)),
                special_tokens=SpecialTokens(**data.get("special_tokens", {})),
                source_revision=data.get("source_revision"),
                tools=dict(data.get("tools", {})),
                created_at=str(data.get("created_at", "")),
                format_version=version,
            )
        except KeyError as missing:
            raise ModelDirError(f"manifest is missing the field {missing}") from None
        except TypeError as error:
            raise ModelDirError(f"manifest has a malformed field: {error}") from None


def _positive_int(data: dict, key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelDirError(f"manifest field {key!r} must be a positive integer, got {value!r}")
    return value


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Reads and checks a model directory; raises ModelDirError with a readable reason."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"model directory {directory} does not exist; create it with `python -m convert`")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelDirError(
            f"model directory {directory} is incomplete (missing {', '.join(missing)}); "
            "re-create it with `python -m convert`"
        )
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelDirError(f"cannot read {directory / MANIFEST_NAME}: {error}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{directory / MANIFEST_NAME} is not a JSON object")
    return Manifest.from_dict(data)
