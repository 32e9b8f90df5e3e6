"""The Dockerfile, offline (no Docker engine here): it converts and serves with exactly the commands
`make convert` and `make serve` run, its run stages install only the run-time lock (hash-checked) and the
project's wheel, and it runs as a numeric non-root user with a health check on /readyz.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest

from loadtest.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"
MODEL_DIR = "/models/m2m100"
PORT = "9527"
RUN_STAGES = ("cpu", "gpu")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages in order; continuation lines joined, comment lines dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments (also inside continuations, as Docker does) and blank lines
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            stages.append(Stage(match.group(2) or str(len(stages)), match.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}, stages


def run_command(args: str) -> list[str]:
    """A RUN instruction's shell command as words, without its --mount/--network flags."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def stage_arg_default(stage: Stage, name: str) -> str | None:
    for args in stage.all("ARG"):
        key, _, default = args.partition("=")
        if key == name:
            return default or None
    return None


def make_dry_run(target: str, *variables: str) -> list[str]:
    """The words of the command `make -n TARGET` prints for TARGET (prerequisites' lines skipped)."""
    if shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("make is not installed; CI must not skip this test")
        pytest.skip("make is not installed")
    if not (ROOT / "Makefile").exists():
        pytest.fail("no Makefile: the Dockerfile's commands must match `make convert` / `make serve`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "-n", target, *variables], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    marker = {"convert": ["-m", "convert"], "serve": ["-m", "service"]}[target]
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]
    matching = [words for words in commands if words[1:3] == marker]
    assert len(matching) == 1, f"`make -n {target}` printed:\n{result.stdout}"
    return matching[0]


def _files_read(dynamic) -> list[str]:
    """Every `file = [...]` under [tool.setuptools.dynamic] (dependencies, optional-dependencies.*)."""
    if isinstance(dynamic, dict):
        return list(dynamic.get("file", [])) + [path for key, value in dynamic.items() if key != "file" for path in _files_read(value)]
    return []


def test_convert_runs_what_make_convert_runs(dockerfile):
    # $$ is make's escape: make sees SOURCE=$SOURCE and prints the shell variable, as in the Dockerfile.
    expected = make_dry_run("convert", "SOURCE=$$SOURCE", f"MODEL_DIR={MODEL_DIR}", "QUANTIZATION=$$QUANTIZATION", "PYTHON=python")
    assert expected == ["python", "-m", "convert", "$SOURCE", MODEL_DIR, "--quantization", "$QUANTIZATION"]
    _, by_name, stages = dockerfile
    converts = [(s.name, run_command(args)) for s in stages for args in s.all("RUN") if " -m convert " in f" {args} "]
    assert {name for name, _ in converts} == {"model-cpu", "model-gpu"}
    for name, words in converts:
        assert words == expected, f"stage {name}"


def test_cmd_runs_what_make_serve_runs(dockerfile):
    expected = make_dry_run("serve", f"MODEL_DIR={MODEL_DIR}", "HOST=0.0.0.0", f"PORT={PORT}", "PYTHON=python")
    _, by_name, _ = dockerfile
    for name in RUN_STAGES:
        [cmd] = by_name[name].all("CMD")
        assert json.loads(cmd) == expected, f"stage {name}: CMD must be the exec form of `make serve`"


def test_build_args_and_stage_layout(dockerfile):
    global_args, by_name, stages = dockerfile
    assert stages[-1].name == "cpu", "the default target (last stage) is the CPU image"
    assert global_args["SOURCE"] == "facebook/m2m100_418M"
    assert stage_arg_default(by_name["model-cpu"], "QUANTIZATION") == "int8"
    assert stage_arg_default(by_name["model-gpu"], "QUANTIZATION") == "float16"
    # Pinned by digest, with the tag kept for people.
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", global_args["PYTHON_IMAGE"])
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04@sha256:[0-9a-f]{64}", global_args["CUDA_IMAGE"])
    assert by_name["converter"].base == by_name["cpu"].base == "${PYTHON_IMAGE}"
    assert by_name["gpu"].base == "${CUDA_IMAGE}"
    assert by_name["model-cpu"].base == by_name["model-gpu"].base == "converter"
    [install] = [a for a in by_name["converter"].all("RUN") if "pip install" in a]
    assert re.findall(r"-r\s+(\S+)", install) == ["requirements/runtime.txt", "requirements/convert.txt"]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install, "torch from PyPI is the CUDA build"
    # The lock is the run stages' business: a new lock must not invalidate the conversion's layers.
    copied = {word for args in by_name["converter"].all("COPY") for word in args.split()[:-1]}
    assert {"requirements/runtime.txt", "requirements/convert.txt"} <= copied
    assert not any(word.rstrip("/") in ("requirements", "requirements/runtime.lock") for word in copied)


def test_the_converter_has_every_service_module_convert_imports(dockerfile):
    _, by_name, _ = dockerfile
    copied = {word for args in by_name["converter"].all("COPY") for word in args.split()[:-1]}
    imported = {
        f"service/{module}.py"
        for path in (ROOT / "convert").glob("*.py")
        for module in re.findall(r"^\s*from service\.(\w+) import", path.read_text(), re.MULTILINE)
    }
    assert imported and imported | {"service/__init__.py"} <= copied
    for module in imported:
        assert not re.search(r"^\s*(from|import) service\b", (ROOT / module).read_text(), re.MULTILINE), (
            f"{module} imports other service modules, which the converter stage does not copy"
        )


@pytest.mark.parametrize("stage", RUN_STAGES)
def test_run_stage_installs_the_lock_then_the_wheel_without_deps(dockerfile, stage):
    _, by_name, _ = dockerfile
    s = by_name[stage]
    installs = [a for a in s.all("RUN") if "pip install" in a]
    assert len(installs) == 2, "the lock, then the project"
    lock, project = (run_command(args) for args in installs)
    # Every dependency from the lock, each file checked against its hash; nothing resolved at build time.
    assert lock[:2] == ["pip", "install"] and "--require-hashes" in lock
    assert re.findall(r"-r\s+(\S+)", installs[0]) == ["requirements/runtime.lock"]
    assert not re.search(r"\b(torch|transformers)\b", installs[0])
    # Then the project's wheel from the wheel stage, --no-deps: the lock already holds its dependencies.
    assert project[:2] == ["pip", "install"] and "--no-deps" in project and project[-1] == "/tmp/dist/*.whl"
    assert "--mount=type=bind,from=wheel,source=/dist,target=/tmp/dist" in installs[1]
    sources = set()
    for args in s.all("COPY"):
        words = args.split()
        if words[0].startswith("--from="):
            assert words[0] == f"--from=model-{stage}" and words[1:] == [MODEL_DIR, MODEL_DIR]
        else:
            sources.update(words[:-1])
    assert sources == {"requirements/runtime.lock"}, "no sources, tests or checkpoints in the image: the wheel has the code"


def test_the_wheel_stage_builds_the_project_from_what_pyproject_names(dockerfile):
    _, by_name, _ = dockerfile
    wheel = by_name["wheel"]
    assert wheel.base == "${PYTHON_IMAGE}"
    [build] = [run_command(args) for args in wheel.all("RUN")]
    assert build[:2] == ["pip", "wheel"] and "--no-deps" in build and build[-1] == "."
    assert build[build.index("--wheel-dir") + 1] == "/dist"
    copied = {args.split()[0].rstrip("/") for args in wheel.all("COPY")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    top_level = {name for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"] if "." not in name}
    read_files = {path.split("/")[0] for path in _files_read(pyproject["tool"]["setuptools"]["dynamic"])}
    assert "requirements" in read_files
    assert copied == {"pyproject.toml"} | top_level | read_files, "the wheel stage copies what the build reads"


def test_runtime_requirements_have_no_torch_or_transformers():
    def requirements(path: Path) -> list[str]:
        names = []
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("-r"):
                names += requirements(path.parent / line[2:].strip())
            elif line and not line.startswith("-"):  # a lock's --hash lines
                names.append(re.split(r"[<>=!~\[; ]", line)[0].lower())
        return names

    for name in ("runtime.txt", "runtime.lock"):
        names = requirements(ROOT / "requirements" / name)
        assert "ctranslate2" in names and "sentencepiece" in names, name
        assert not {"torch", "transformers"} & set(names), name


@pytest.mark.parametrize("stage", RUN_STAGES)
def test_run_stage_user_port_env_and_healthcheck(dockerfile, stage):
    _, by_name, _ = dockerfile
    s = by_name[stage]
    [user] = s.all("USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "USER must be numeric (runAsNonRoot can only verify a number)"
    assert user.split(":")[0] == "10001"
    assert s.all("EXPOSE") == [PORT]
    env = " ".join(s.all("ENV"))
    assert f"MT_MODEL_DIR={MODEL_DIR}" in env and "HF_HUB_OFFLINE=1" in env
    if stage == "gpu":
        assert "MT_COMPUTE_TYPE=float16" in env and "MT_DEVICE=cuda" in env
    [healthcheck] = s.all("HEALTHCHECK")
    assert "/readyz" in healthcheck and "urllib.request" in healthcheck
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")
    # USER comes after everything that needs root.
    keywords = [kw for kw, _ in s.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw in ("RUN", "COPY"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one path: the last matching pattern wins; ! re-includes."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        pattern = pattern[3:] if pattern.startswith("**/") else pattern
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))] + parts
        if any(fnmatch(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete(dockerfile):
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    _, _, stages = dockerfile
    for stage in stages:
        for args in stage.all("COPY"):
            words = args.split()
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                if "[" in source:  # the optional checkpoints/ glob
                    source = source.replace("[s]", "s")
                assert not _ignored(source.rstrip("/") + "/x.py" if source.endswith("/") else source, patterns), source
    for path in (".venv/bin/python", "models/m2m100/model.bin", "reports/x.json", ".git/HEAD",
                 "tests/fixtures/toy-m2m100/model.safetensors", "k8s/base/deployment.yaml", "service/__pycache__/app.cpython-311.pyc"):
        assert _ignored(path, patterns), f"{path} must stay out of the build context"


def test_make_build_targets_pick_the_stages():
    if shutil.which("make") is None or not (ROOT / "Makefile").exists():
        pytest.skip("make or the Makefile is missing")
    result = subprocess.run(["make", "-n", "build", "build-gpu", "TAG=t", "IMAGE=x/y"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cpu, gpu = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("docker build")]
    assert cpu[cpu.index("--target") + 1] == "cpu" and cpu[cpu.index("-t") + 1] == "x/y:t"
    assert gpu[gpu.index("--target") + 1] == "gpu" and gpu[gpu.index("-t") + 1] == "x/y:t-gpu"
    assert "QUANTIZATION=float16" in gpu
