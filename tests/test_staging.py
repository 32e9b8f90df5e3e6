"""convert/staging.py: a directory is built beside its destination and appears there whole or not at all."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from convert.staging import publish, staging_directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_published_directory_replaces_the_old_one_and_leaves_nothing_beside_it(tmp_path):
    output = tmp_path / "models" / "out"  # the parent is created
    with staging_directory(output) as staging:
        (staging / "a.txt").write_text("first")
        publish(staging, output)
    with staging_directory(output) as staging:
        assert staging.parent == output.parent and staging.name.startswith(".out.partial-")
        (staging / "b.txt").write_text("second")
        assert (output / "a.txt").read_text() == "first"  # the old one serves until the swap
        publish(staging, output)
    assert sorted(p.name for p in output.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["out"]


def test_a_failed_build_leaves_the_previous_output_and_no_staging(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("previous")
    with pytest.raises(RuntimeError, match="disk full"), staging_directory(output) as staging:
        (staging / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in output.iterdir()) == ["keep.txt"]


def test_without_publish_nothing_reaches_the_output(tmp_path):
    """A build whose checks failed returns without publishing (the toy checkpoint's trainer does this)."""
    output = tmp_path / "out"
    with staging_directory(output) as staging:
        (staging / "model.bin").write_bytes(b"not exact")
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_is_replaced(tmp_path):
    output = tmp_path / "out"
    output.write_text("a file")
    with staging_directory(output) as staging:
        (staging / "manifest.json").write_text("{}")
        publish(staging, output)
    assert output.is_dir() and [p.name for p in output.iterdir()] == ["manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_published_tree_is_readable_by_everyone(tmp_path):
    """mkdtemp makes the staging directory 0700 and some writers make 0600 files: left so, only the builder's user
    could load the model. Read (and, for directories, traverse) bits are added; nothing else changes."""
    output = tmp_path / "out"
    with staging_directory(output) as staging:
        assert mode(staging) == 0o700
        (staging / "sub").mkdir(mode=0o700)
        (staging / "sub" / "weights.bin").write_bytes(b"w")
        (staging / "sub" / "weights.bin").chmod(0o600)
        (staging / "run.sh").write_text("#!/bin/sh\n")
        (staging / "run.sh").chmod(0o700)
        publish(staging, output)
    assert mode(output) == 0o755
    assert mode(output / "sub") == 0o755
    assert mode(output / "sub" / "weights.bin") == 0o644
    assert mode(output / "run.sh") == 0o744  # executable for its owner only, as written; readable by all
