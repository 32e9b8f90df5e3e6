"""Build a directory in a staging sibling, then rename it into place, so that a failed or interrupted build never
leaves a half-written directory where readers look:

    with staging_directory(output) as staging:
        ...                          # write everything into `staging`, check it
        publish(staging, output)     # only once it is right; without this call nothing reaches `output`

The converter (convert/m2m100.py), the benchmark checkpoint (scripts/make_bench_checkpoint.py) and the toy
checkpoint (tests/fixtures/train_toy_m2m100.py) all build their output this way. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging_directory(output: Path | str) -> Iterator[Path]:
    """An empty directory beside `output`, removed on the way out whatever happened (what was published is no
    longer there to remove). Beside, not in /tmp: the final rename must stay on one file system to be atomic."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, output: Path | str) -> None:
    """Swaps the finished `staging` in as `output`. A previous `output` is moved aside first and removed only
    once the new one is in place, so `output` is never missing for longer than two renames.

    The tree is made readable by everyone first: mkdtemp creates the directory 0700 and some writers create 0600
    files, which would leave a model that only its builder's user can load (a service running as another user,
    a container's non-root user reading a mounted volume)."""
    output = Path(output)
    _readable_by_all(staging)
    previous = None
    if output.exists() or output.is_symlink():
        previous = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(previous)
    staging.rename(output)
    if previous is None:
        return
    if previous.is_dir() and not previous.is_symlink():
        shutil.rmtree(previous, ignore_errors=True)
    else:
        previous.unlink()


def _readable_by_all(root: Path) -> None:
    root.chmod(root.stat().st_mode | 0o555)
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories:
            path = Path(directory, name)
            path.chmod(path.stat().st_mode | 0o555)
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)
