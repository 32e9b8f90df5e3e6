"""`make run`, `make venv-convert` and `make test` install torch's CPU build where PyTorch's CPU index answers, and
still install offline from pip's configured sources (Makefile: TORCH_INDEX_URL, TORCH_INDEX_TIMEOUT). No internet
needed: the recipes are read with `make -n`, then run for real with a stand-in for the venv's python that records
the pip command and runs everything else (the reachability probe) with this interpreter, against an index on
loopback that answers, a closed port, and a server that accepts connections and never answers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.paths import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
FLAG = f"--extra-index-url '{CPU_INDEX}'"


def _make(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("make is not installed; CI must not skip this test")
        pytest.skip("make is not installed")
    # Neither an outer make's flags nor a TORCH_INDEX_* from the caller's environment may change the recipe.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "TORCH_INDEX_"))}
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
                          env={**clean, **(env or {})})


def _pip_lines(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if " -m pip install " in line and "--upgrade pip" not in line]


# --- what the recipes say (make -n) ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["venv-convert", "venv-dev", "run", "test"])
def test_targets_that_install_torch_add_the_cpu_index(target, tmp_path):
    result = _make("-n", target, f"VENV={tmp_path / 'venv'}")
    assert result.returncode == 0, result.stderr
    lines = [line for line in _pip_lines(result.stdout) if "-e '.[" in line]  # run: once per sub-make under -n
    assert lines, f"make -n {target}:\n{result.stdout}"
    for line in lines:
        assert FLAG in line, f"make -n {target}:\n{result.stdout}"
        # Only behind the probe: the flag is used where the index answered, pip alone otherwise.
        assert line.startswith("if ") and f"'{CPU_INDEX}' '3'; then" in line and "; else " in line


def test_the_runtime_venv_has_no_torch_and_no_index(tmp_path):
    result = _make("-n", "venv", f"VENV={tmp_path / 'venv'}")
    assert result.returncode == 0, result.stderr
    assert _pip_lines(result.stdout) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.'"]


def test_an_empty_index_url_installs_from_the_configured_sources_alone(tmp_path):
    result = _make("-n", "venv-dev", f"VENV={tmp_path / 'venv'}", "TORCH_INDEX_URL=")
    assert result.returncode == 0, result.stderr
    assert _pip_lines(result.stdout) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.[dev]'"]


# --- what the recipes do ----------------------------------------------------------------------------


class _Index(BaseHTTPRequestHandler):
    status = 200

    def do_HEAD(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python logs `-m pip ...` calls instead of running them, and runs anything else (the probe)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then printf \'%s\\n\' "$*" >> "$PIP_LOG"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    return venv


def _install(venv, extra: str, index_url: str, timeout_s: str = "3") -> tuple[subprocess.CompletedProcess, list[str], float]:
    log = venv.parent / "pip.log"
    started = time.monotonic()
    result = _make(f"VENV={venv}", f"{venv}/.installed-{extra}", f"TORCH_INDEX_URL={index_url}",
                   f"TORCH_INDEX_TIMEOUT={timeout_s}", env={"PIP_LOG": str(log)})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (venv / f".installed-{extra}").exists()
    return result, log.read_text().splitlines(), elapsed


@pytest.mark.parametrize("status", [200, 404])
def test_an_index_that_answers_is_added(fake_venv, status):
    handler = type("Handler", (_Index,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
        result, pip, _ = _install(fake_venv, "convert", url)
    finally:
        server.shutdown()
        server.server_close()
    assert pip == [f"-m pip install -q -e .[convert] --extra-index-url {url}"]
    assert "not reachable" not in result.stderr


def test_a_refused_index_falls_back_at_once(fake_venv):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result, pip, elapsed = _install(fake_venv, "dev", f"http://127.0.0.1:{port}/whl/cpu")
    assert pip == ["-m pip install -q -e .[dev]"]
    assert f"127.0.0.1:{port}/whl/cpu is not reachable (waited up to 3 s)" in result.stderr
    assert elapsed < 3, "a refused connection must not wait out the timeout"


def test_a_silent_index_costs_the_timeout_and_no_more(fake_venv):
    """A server that accepts and never answers (a firewall that holds the connection, a dead proxy): pip alone
    after TORCH_INDEX_TIMEOUT, instead of pip's own retries of every package page (minutes)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu"
        result, pip, elapsed = _install(fake_venv, "convert", url, timeout_s="1")
    assert pip == ["-m pip install -q -e .[convert]"]
    assert "is not reachable (waited up to 1 s)" in result.stderr
    assert 1 <= elapsed < 8


def test_the_runtime_venv_never_probes(fake_venv):
    # An index that would hang: the runtime extra has no torch, so it is never asked.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        result, pip, elapsed = _install(fake_venv, "runtime", f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout_s="5")
    assert pip == ["-m pip install -q -e ."] and elapsed < 5 and "not reachable" not in result.stderr


def test_the_image_converts_with_the_same_index():
    """The Dockerfile's converter stage installs torch from the index the make targets use."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"--extra-index-url\s+(\S+)", dockerfile)) == {CPU_INDEX}
