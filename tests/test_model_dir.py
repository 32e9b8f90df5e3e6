"""The model-directory format (service/model_dir.py): a manifest written is read back the same, and every way a
directory can be unusable gives ModelDirError with a message that says what is wrong and what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.model_dir import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    REQUIRED_FILES,
    Manifest,
    ModelDirError,
    SpecialTokens,
    read_manifest,
    write_manifest,
)

MANIFEST = Manifest(
    source="facebook/m2m100_418M",
    quantization="int8",
    languages=("en", "fr", "de"),
    max_input_length=1024,
    max_decoding_length=1023,
    source_revision="abc123",
    tools={"ctranslate2": "4.5.0"},
    created_at="2024-01-01T00:00:00Z",
)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A complete model directory: placeholder model files and a valid manifest."""
    directory = tmp_path / "model"
    directory.mkdir()
    for name in REQUIRED_FILES:
        if name != MANIFEST_NAME:
            (directory / name).write_bytes(b"placeholder")
    write_manifest(directory, MANIFEST)
    return directory


def rewrite(directory: Path, change) -> None:
    """Edits the manifest as JSON: change(data) mutates the dict in place."""
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def error_of(directory: Path) -> str:
    with pytest.raises(ModelDirError) as caught:
        read_manifest(directory)
    return str(caught.value)


def test_a_manifest_reads_back_as_written(model_dir):
    assert read_manifest(model_dir) == MANIFEST
    assert read_manifest(str(model_dir)) == MANIFEST  # a str path works too
    assert json.loads((model_dir / MANIFEST_NAME).read_text())["format_version"] == FORMAT_VERSION


def test_optional_fields_take_their_defaults(model_dir):
    def keep_only_required(data):
        for name in ("architecture", "special_tokens", "source_revision", "tools", "created_at"):
            del data[name]

    rewrite(model_dir, keep_only_required)
    manifest = read_manifest(model_dir)
    assert manifest.special_tokens == SpecialTokens() and manifest.special_tokens.language_token("ja") == "__ja__"
    assert (manifest.architecture, manifest.source_revision, manifest.tools, manifest.created_at) == (
        "M2M100ForConditionalGeneration", None, {}, "",
    )


def test_a_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    assert error_of(missing) == f"model directory {missing} does not exist; create it with `python -m convert`"


def test_a_file_instead_of_a_directory(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    assert error_of(path) == f"model directory {path} does not exist; create it with `python -m convert`"


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_each_missing_file_is_named(model_dir, missing):
    (model_dir / missing).unlink()
    assert error_of(model_dir) == (
        f"model directory {model_dir} is incomplete (missing {missing}); re-create it with `python -m convert`"
    )


def test_every_missing_file_is_named_at_once(model_dir):
    for name in ("model.bin", "config.json"):
        (model_dir / name).unlink()
    assert "(missing model.bin, config.json)" in error_of(model_dir)


def test_a_manifest_that_is_not_json(model_dir):
    (model_dir / MANIFEST_NAME).write_text('{"source": "x",', encoding="utf-8")
    message = error_of(model_dir)
    assert message.startswith(f"cannot read {model_dir / MANIFEST_NAME}: ")
    assert re.search(r"line 1 column \d+", message)  # where the JSON broke


def test_a_manifest_that_is_not_utf8(model_dir):
    (model_dir / MANIFEST_NAME).write_bytes(b'{"source": "\xff"}')
    assert error_of(model_dir).startswith(f"cannot read {model_dir / MANIFEST_NAME}: ")


def test_a_manifest_that_is_not_an_object(model_dir):
    (model_dir / MANIFEST_NAME).write_text("[1, 2]", encoding="utf-8")
    assert error_of(model_dir) == f"{model_dir / MANIFEST_NAME} is not a JSON object"


@pytest.mark.parametrize("version", [0, 2, None])
def test_another_format_version(model_dir, version):
    def set_version(data):
        if version is None:
            del data["format_version"]  # a manifest from before versions were written
        else:
            data["format_version"] = version

    rewrite(model_dir, set_version)
    shown = 0 if version is None else version
    assert error_of(model_dir) == (
        f"manifest format_version {shown} is not supported (expected {FORMAT_VERSION}); "
        "re-run `python -m convert` with this version of the project"
    )


@pytest.mark.parametrize("field", ["source", "quantization", "languages", "max_input_length", "max_decoding_length"])
def test_each_missing_required_field_is_named(model_dir, field):
    rewrite(model_dir, lambda data: data.pop(field))
    assert error_of(model_dir) == f"manifest is missing the field '{field}'"


def test_an_empty_language_list(model_dir):
    rewrite(model_dir, lambda data: data.update(languages=[]))
    assert error_of(model_dir) == "manifest lists no languages"


@pytest.mark.parametrize("value", [0, -5, "1024", 3.5, True, None])
@pytest.mark.parametrize("field", ["max_input_length", "max_decoding_length"])
def test_lengths_must_be_positive_integers(model_dir, field, value):
    rewrite(model_dir, lambda data: data.update({field: value}))
    assert error_of(model_dir) == f"manifest field {field!r} must be a positive integer, got {value!r}"


def test_malformed_special_tokens(model_dir):
    rewrite(model_dir, lambda data: data.update(special_tokens={"bos": "<s>", "sep": "</sep>"}))
    message = error_of(model_dir)
    assert message.startswith("manifest has a malformed field: ") and "'sep'" in message


@pytest.mark.parametrize("languages", [5, "en", ["en", 7], ["en", ""], {"en": True}])
def test_a_languages_field_that_is_not_a_list_of_codes(model_dir, languages):
    # A string is iterable: "en" once read as the two languages "e" and "n".
    rewrite(model_dir, lambda data: data.update(languages=languages))
    assert error_of(model_dir) == f"manifest field 'languages' must be a list of language codes, got {languages!r}"
