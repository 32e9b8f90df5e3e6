"""The repository root, and paths shown relative to it in reports, logs and saved results.

The benchmarks and the reliability runs work in a checkout (models/, reports/ and docs/ live beside the code),
so the root is found from this file.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def relative(path: Path | str) -> str:
    """`path` relative to the repository root when it lies inside it, else as given: reports and saved
    results name `models/...` and `reports/...`, not one machine's absolute paths."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
