"""The project as one installable distribution: the wheel holds the packages and the console scripts, `pip install .`
works in a fresh virtual environment and serves from there, requirements/runtime.lock pins what
requirements/runtime.txt pins plus every transitive dependency with hashes, and no module patches sys.path.

The wheel is built from a copy of exactly what the Dockerfile's wheel stage copies, so the image's build context
is proven sufficient too (and the shared checkout gets no build/ or *.egg-info from the tests).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import service
from loadtest.harness import HOST, ROOT, ServerProcess
from loadtest.toy_task import expected_translation
from tests.test_dockerfile import DOCKERFILE, parse_dockerfile

TOP_LEVEL_PACKAGES = ("service", "convert", "loadtest")
CONSOLE_SCRIPTS = {
    "m2m100-serve": "service.__main__:main",
    "m2m100-convert": "convert.__main__:main",
    "m2m100-openapi": "service.openapi:main",
}
RUNTIME_TXT = ROOT / "requirements" / "runtime.txt"
LOCK = ROOT / "requirements" / "runtime.lock"
# The modules moved out of scripts/ and tests/fixtures/ so that everything imports them as packages.
MOVED_MODULES = ("loadtest.toy_task", "loadtest.bench_sentences", "convert.tokenizer_files", "convert.staging")
# Walked for sys.path patches.
SOURCE_DIRS = ("service", "convert", "loadtest", "scripts", "tests")
PIP_TIMEOUT = 300


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: float = PIP_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would let a fresh venv see the checkout or our venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}


@dataclass
class ConsoleScriptServer(ServerProcess):
    """The service started through an installed console script (`script`) instead of `python -m service`."""

    script: Path | None = None

    @property
    def command(self) -> list[str]:
        return [str(self.script), *self.args, "--host", HOST, "--port", str(self.port)]


def fresh_venv(path: Path) -> Path:
    """A new virtual environment (no system site-packages) with its own pip; returns its bin/ directory."""
    run([sys.executable, "-m", "venv", str(path)], cwd=path.parent, timeout=120)
    return path / "bin"


# --- requirements files ---------------------------------------------------------------------------------------------


def runtime_pins() -> dict[str, str]:
    pins = {}
    for line in RUNTIME_TXT.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        [specifier] = requirement.specifier  # exactly one, and ==: the service runs on known versions
        assert specifier.operator == "==", line
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


@dataclass(frozen=True)
class Locked:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        [specifier] = self.requirement.specifier
        assert specifier.operator == "==", str(self.requirement)
        return specifier.version

    def applies_here(self) -> bool:
        return self.requirement.marker is None or self.requirement.marker.evaluate()


def lock_entries() -> list[Locked]:
    """The lock's requirements, continuation lines joined, each with its --hash options."""
    logical, current = [], ""
    for line in LOCK.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the lock ends inside a continued line"
    entries = []
    for line in logical:
        head, *hashes = line.split("--hash=")
        assert not head.lstrip().startswith("-"), f"no pip options in the lock: {line[:80]}"
        entries.append(Locked(Requirement(head.strip()), tuple(h.strip() for h in hashes)))
    return entries


def test_runtime_requirements_are_exactly_pinned():
    pins = runtime_pins()
    assert {"ctranslate2", "sentencepiece", "starlette", "uvicorn"} <= set(pins)


def test_the_lock_pins_what_runtime_txt_pins_and_hashes_every_requirement():
    entries = lock_entries()
    locked = {(e.name, e.version) for e in entries}
    missing = {name: version for name, version in runtime_pins().items() if (name, version) not in locked}
    assert not missing, f"requirements/runtime.lock disagrees with runtime.txt on {missing}: run `make lock`"
    for entry in entries:
        assert entry.hashes, f"{entry.requirement} has no hash"
        for digest in entry.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{entry.requirement}: {digest!r}"
    # One version per name wherever the lock applies (here: this interpreter and platform).
    here = [e.name for e in entries if e.applies_here()]
    assert len(here) == len(set(here))


def test_the_lock_holds_every_transitive_dependency_and_nothing_else():
    """Walks the requirements of the installed distributions (this venv has the runtime set installed at the
    lock's versions) from runtime.txt's names; every name reached must be locked, and every lock entry that
    applies here must be reached. `pip check` in test_the_image_recipe_... proves the same on a fresh install."""
    entries = lock_entries()
    locked_here = {e.name for e in entries if e.applies_here()}
    reached, queue = set(), list(runtime_pins())
    while queue:
        name = queue.pop()
        if name in reached:
            continue
        reached.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(canonicalize_name(requirement.name))
    assert reached - locked_here == set(), "dependencies missing from the lock: run `make lock`"
    assert locked_here - reached == set(), "lock entries nothing here needs: run `make lock`"


def test_make_lock_regenerates_the_lock_with_hashes_from_runtime_txt():
    header = LOCK.read_text().splitlines()[:2]
    assert "make lock" in "\n".join(header), "the lock's header says how to regenerate it"
    result = run(["make", "-n", "lock", "VENV=/nonexistent"], cwd=ROOT,
                 env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")}, timeout=60)
    [command] = [shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines() if " pip compile " in line]
    assert command[0].endswith("/uv") and command[1:3] == ["pip", "compile"]
    assert [word for word in command[3:] if not word.startswith("-")][0] == "requirements/runtime.txt"
    assert "--generate-hashes" in command and "--universal" in command
    assert command[command.index("--output-file") + 1] == "requirements/runtime.lock"
    assert command[command.index("--custom-compile-command") + 1] == "make lock"
    # uv comes with the dev extra, which the target installs first.
    assert any(canonicalize_name(Requirement(line).name) == "uv"
               for line in (ROOT / "requirements" / "dev.txt").read_text().splitlines() if line.strip() and line[0] != "#")


# --- no sys.path patches -------------------------------------------------------------------------------------------


def _patches_sys_path(tree: ast.AST) -> list[int]:
    """Lines that call sys.path.<method>(...) or assign to sys.path / sys.path[...]."""

    def is_sys_path(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if is_sys_path(target) or isinstance(target, ast.Subscript) and is_sys_path(target.value):
                    lines.append(node.lineno)
    return sorted(lines)


def test_the_sys_path_check_finds_patches():
    code = "import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path[:0] = ['z']\nsys.path += ['w']\nprint(sys.path)\n"
    assert _patches_sys_path(ast.parse(code)) == [2, 3, 4, 5]


def test_no_module_patches_sys_path():
    offenders = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            lines = _patches_sys_path(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            if lines:
                offenders[str(path.relative_to(ROOT))] = lines
    assert offenders == {}, "import the project's packages instead (the venv has the project installed)"


# --- the wheel -----------------------------------------------------------------------------------------------------


def wheel_stage_sources() -> list[str]:
    """What the Dockerfile's wheel stage copies into its build directory."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    [stage] = [s for s in stages if s.name == "wheel"]
    return [word for args in stage.all("COPY") for word in args.split()[:-1]]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("source")
    for source in wheel_stage_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, tree / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, tree / source)
    return tree


@pytest.fixture(scope="module")
def wheel(source_tree, tmp_path_factory) -> Path:
    """`pip wheel . --no-deps`, as the Dockerfile's wheel stage runs it."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--wheel-dir", str(dist)], cwd=source_tree)
    [built] = dist.glob("*.whl")
    return built


def packages_on_disk() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL_PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_the_wheel_holds_every_package_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"m2m100_ct2_service-{service.__version__}.dist-info"
    assert wheel.name == f"m2m100_ct2_service-{service.__version__}-py3-none-any.whl"
    assert {name.split("/")[0] for name in names} == {*TOP_LEVEL_PACKAGES, dist_info}
    in_wheel = {".".join(name.split("/")[:-1]) for name in names if name.endswith("/__init__.py")}
    assert in_wheel == packages_on_disk()
    modules = {name for name in names if name.endswith(".py")}
    for module in MOVED_MODULES:
        assert module.replace(".", "/") + ".py" in modules
    on_disk = {str(p.relative_to(ROOT)) for top in TOP_LEVEL_PACKAGES for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules == on_disk


def test_the_wheel_declares_the_console_scripts_version_and_dependencies(wheel):
    archive = zipfile.ZipFile(wheel)
    dist_info = f"m2m100_ct2_service-{service.__version__}.dist-info"
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry_points.split("[console_scripts]")[1], re.MULTILINE))
    assert scripts == CONSOLE_SCRIPTS
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target

    metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    assert metadata["Name"] == "m2m100-ct2-service" and metadata["Version"] == service.__version__
    assert set(metadata.get_all("Provides-Extra")) == {"convert", "dev"}
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    base = {canonicalize_name(r.name): str(r.specifier) for r in requires if r.marker is None}
    assert base == {name: f"=={version}" for name, version in runtime_pins().items()}

    def extra(name: str) -> set[str]:
        return {canonicalize_name(r.name) for r in requires if r.marker and r.marker.evaluate({"extra": name})} - set(base)

    assert {"torch", "transformers"} == extra("convert")
    assert {"torch", "transformers", "pytest", "locust", "uv"} <= extra("dev")


# --- fresh installs (network or pip's cache for the dependencies) -----------------------------------------------------


@pytest.mark.slow
def test_pip_install_dot_into_a_fresh_venv_runs_the_console_scripts_and_serves(source_tree, toy_model_dir, tmp_path):
    """What a newcomer runs: `pip install .` in a new venv, then the console scripts, from outside the checkout."""
    bin_dir = fresh_venv(tmp_path / "venv")
    env = clean_env()
    run([str(bin_dir / "python"), "-m", "pip", "install", "."], cwd=source_tree, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # The packages (moved helpers included) import from the venv, not from a checkout.
    code = f"import {', '.join(MOVED_MODULES)}, service; print(service.__file__)"
    location = run([str(bin_dir / "python"), "-c", code], cwd=elsewhere, env=env).stdout.strip()
    assert Path(location).is_relative_to(tmp_path / "venv"), location
    # Only the runtime set: no torch, no transformers.
    freeze = run([str(bin_dir / "python"), "-m", "pip", "freeze"], cwd=elsewhere, env=env).stdout
    assert not re.search(r"^(torch|transformers)==", freeze, re.MULTILINE | re.IGNORECASE)

    serve_help = run([str(bin_dir / "m2m100-serve"), "--help"], cwd=elsewhere, env=env).stdout
    assert "--model-dir" in serve_help and "MT_MODEL_DIR" in serve_help
    convert_help = run([str(bin_dir / "m2m100-convert"), "--help"], cwd=elsewhere, env=env).stdout
    assert "--quantization" in convert_help and "--force" in convert_help
    document = json.loads(run([str(bin_dir / "m2m100-openapi"), "--model-dir", str(toy_model_dir)], cwd=elsewhere, env=env).stdout)
    assert document["info"]["version"] == service.__version__

    # And it serves: the installed console script, on the toy model (only the runtime set), one real translation.
    server = ConsoleScriptServer("service", ("--model-dir", str(toy_model_dir)), log_path=tmp_path / "serve.log",
                                 script=bin_dir / "m2m100-serve")
    try:
        server.start(timeout=60)
        text = "alpha bravo charlie."
        body = {"payload": {"fromLang": "en", "toLang": "fr", "records": [{"id": "1", "text": text}]}}
        request = urllib.request.Request(f"{server.url}/translation", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["result"] == [{"id": "1", "text": expected_translation(text, "fr")}]
    finally:
        assert server.stop(timeout=15) == 0, server.log()


@pytest.mark.slow
def test_the_image_recipe_installs_the_lock_with_hashes_and_it_is_complete(wheel, tmp_path):
    """What the Dockerfile's run stages do: the lock with --require-hashes, then the wheel with --no-deps. `pip check`
    then proves the lock holds every dependency of every package in it (the wheel's included)."""
    bin_dir = fresh_venv(tmp_path / "venv")
    env = clean_env()
    python = str(bin_dir / "python")
    run([python, "-m", "pip", "install", "--require-hashes", "-r", str(LOCK)], cwd=tmp_path, env=env)
    run([python, "-m", "pip", "install", "--no-deps", str(wheel)], cwd=tmp_path, env=env)
    run([python, "-m", "pip", "check"], cwd=tmp_path, env=env)

    installed = dict(
        line.split("==") for line in run([python, "-m", "pip", "freeze", "--exclude", "m2m100-ct2-service"], cwd=tmp_path, env=env).stdout.split()
    )
    expected = {e.name: e.version for e in lock_entries() if e.applies_here()}
    assert {canonicalize_name(name): version for name, version in installed.items()} == expected
    serve_help = run([str(bin_dir / "m2m100-serve"), "--help"], cwd=tmp_path, env=env).stdout
    assert "--model-dir" in serve_help
