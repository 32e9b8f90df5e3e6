"""The compute type at which the toy model gives the toy task's exact outputs on this CPU.

CTranslate2's int8 GEMM on x86 (oneDNN) shifts activations to u8 and multiplies u8 × s8 pairs; without AVX-512
VNNI (an AVX2-only CPU, such as the AMD EPYC machines here) those pairs are summed in 16 bits and saturate. The
real 418M model shrugs that noise off; the toy model (d_model 64) does not: on such a CPU 1-3% of its int8
translations change a word, while on a VNNI CPU and in float32 all are exact. Tests, load tests and the
reliability suite assert exact toy outputs, so on such a CPU they run the same int8-converted model directory at
compute type float32 (its weights dequantized on load): the conversion and every service path are tested exactly,
only the engine's kernels differ. The benchmarks on the full-size checkpoint keep int8.
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

from loadtest.toy_task import LANG_RULES, SOURCE_LANGS, expected_translation, random_sentence

TOY_SOURCE_SUFFIX = "toy-m2m100"
PROBE_SENTENCES = 300
PROBE_SEED = 1234


def is_toy_model(model_dir: Path) -> bool:
    try:
        manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return str(manifest.get("source", "")).rstrip("/").endswith(TOY_SOURCE_SUFFIX)


@functools.cache
def exact_compute_type(model_dir: Path) -> str:
    """"int8" when the int8 engine is exact on a fixed sample of the toy task on this CPU, else "float32"."""
    from service.engine import Engine
    from service.model_dir import read_manifest

    try:
        manifest = read_manifest(Path(model_dir))
        engine = Engine.load(
            Path(model_dir), manifest, device="cpu", compute_type="int8", inter_threads=1, intra_threads=1, beam_size=2,
            max_decoding_length=0,
        )
    except Exception:  # noqa: BLE001 - a broken model directory: the service under test reports it itself
        return "int8"
    rng = random.Random(PROBE_SEED)
    jobs, expected = [], []
    for index in range(PROBE_SENTENCES):
        text = random_sentence(rng)
        target = sorted(LANG_RULES)[index % len(LANG_RULES)]
        source = SOURCE_LANGS[index % len(SOURCE_LANGS)]
        [job] = engine.encode(text, source, target)
        jobs.append(job)
        expected.append(expected_translation(text, target))
    outputs = [translation.text for translation in engine.translate(jobs)]
    return "int8" if outputs == expected else "float32"


def toy_environment(model_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for a service on `model_dir`, with MT_COMPUTE_TYPE set to the exact one when it is the toy model and
    neither the caller nor this process's environment chose one (MT_COMPUTE_TYPE=int8 in the environment keeps
    a benchmark comparable across CPUs)."""
    if "MT_COMPUTE_TYPE" in env or "MT_COMPUTE_TYPE" in os.environ or not is_toy_model(model_dir):
        return env
    return {**env, "MT_COMPUTE_TYPE": exact_compute_type(Path(model_dir))}
