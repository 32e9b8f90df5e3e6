"""`python -m convert SOURCE OUTPUT_DIR [--quantization Q] [--force]`: a thin CLI over convert()."""

from __future__ import annotations

import argparse
import sys

from convert.m2m100 import DEFAULT_SOURCE, QUANTIZATIONS, ConversionError, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert an M2M100 checkpoint into a CTranslate2 model directory for the service.",
    )
    parser.add_argument(
        "source",
        help=f"hub id (e.g. {DEFAULT_SOURCE}, facebook/m2m100_1.2B) or a local Hugging Face checkpoint directory",
    )
    parser.add_argument("output_dir", help="model directory to create")
    parser.add_argument(
        "--quantization",
        default="int8",
        choices=QUANTIZATIONS,
        help="weight type: int8 for CPU, float16 or int8_float16 for GPU (default: int8)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT_DIR if it exists")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(f"[convert] {line}", file=sys.stderr, flush=True)

    try:
        convert(args.source, args.output_dir, args.quantization, args.force, progress=progress)
    except ConversionError as error:
        print(f"convert: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
