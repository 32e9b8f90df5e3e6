"""What the figures were measured on: CPU, cores, memory, GPU, software versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from loadtest.paths import ROOT

PACKAGES = ("ctranslate2", "torch", "transformers", "sentencepiece", "starlette", "uvicorn", "httpx", "locust")
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    return model, flags


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _gpu() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _cuda_device() -> str:
    """The GPU the engines run on (device 0), as torch names it; CTranslate2's count of the GPUs it sees.
    Both are asked because either may be built without CUDA while the other has it."""
    parts = []
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            parts.append(f"{props.name}, {props.total_memory / 1024**3:.0f} GiB, CUDA {torch.version.cuda}")
        else:
            parts.append("torch sees no CUDA device")
    except ImportError:
        parts.append("torch not installed")
    try:
        import ctranslate2

        parts.append(f"CTranslate2 sees {ctranslate2.get_cuda_device_count()} CUDA device(s)")
    except ImportError:
        parts.append("ctranslate2 not installed")
    return "; ".join(parts)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe(device: str = "cpu") -> dict:
    """The machine; `device` (cpu or cuda) is the one the figures are measured on, named in "device"."""
    model, flags = _cpuinfo()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "device": f"cuda: {_cuda_device()}" if device == "cuda" else f"cpu: {model}",
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "int8_flags": [flag for flag in INT8_FLAGS if flag in flags],
        "memory_gib": round(_memory_gib(), 1),
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "commit": _git_commit(),
        "load_average_at_start": load_average(),
    }
