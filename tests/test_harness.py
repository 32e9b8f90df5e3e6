"""loadtest/harness.py, which the tests and the benchmarks share: servers as processes (ready when /readyz says
200, their exit or silence reported with their log, a graceful stop), bounded waits, and the Prometheus reader."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from loadtest.harness import (
    ServerProcess,
    free_port,
    is_ready,
    metric_samples,
    metric_value,
    wait_for,
)
from loadtest.paths import ROOT

TEST_APP = """
import asyncio, contextlib, os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def readyz(request):
    return Response(status_code=int(os.environ["READY_STATUS"]))

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    if os.environ.get("HANG_ON_STOP"):
        await asyncio.sleep(3600)
    with open(os.environ["STOPPED_FILE"], "w") as stopped:
        stopped.write("shut down cleanly")

app = Starlette(routes=[Route("/readyz", readyz)], lifespan=lifespan)
"""


def harness_app(tmp_path, **env: str) -> ServerProcess:
    """uvicorn serving a small app whose /readyz answers READY_STATUS, and whose shutdown hangs with HANG_ON_STOP
    or else writes tmp_path/stopped."""
    (tmp_path / "harness_app.py").write_text(TEST_APP)
    args = ("harness_app:app", "--app-dir", str(tmp_path), "--log-level", "warning")
    environment = {"READY_STATUS": "200", "STOPPED_FILE": str(tmp_path / "stopped"), **env}
    return ServerProcess("uvicorn", args, environment, tmp_path / "app.log")


def test_a_server_is_started_ready_timed_measured_and_stopped_gracefully(tmp_path):
    server = harness_app(tmp_path)
    with server:
        assert server.url == f"http://127.0.0.1:{server.port}" and is_ready(server.url)
        assert 0 < server.cold_start_s < 60
        assert server.memory_kib()["VmRSS"] > 1024  # a live process's resident memory, in KiB
    # SIGTERM: the app's shutdown ran; uvicorn then re-raises the signal it stopped for, so the code is -15.
    assert (tmp_path / "stopped").read_text() == "shut down cleanly"
    assert server.process.returncode == -signal.SIGTERM
    assert not is_ready(server.url)
    assert server.memory_kib() == {}  # gone


def test_starting_a_running_server_again_starts_no_second_process(tmp_path):
    server = harness_app(tmp_path)
    with server.start() as same:  # `with` starts it too: one process, which the `with` stops
        first = server.process
        assert same is server and server.process is first and first.poll() is None
    assert first.poll() is not None


def test_stop_returns_the_exit_code_and_is_harmless_twice(tmp_path):
    server = harness_app(tmp_path).start(timeout=60)
    assert server.stop(signal.SIGINT) == 0  # uvicorn exits 0 after Ctrl-C
    assert server.stop() == 0
    assert ServerProcess("service").stop() is None  # never started


def test_stop_kills_a_server_that_does_not_stop_in_time(tmp_path):
    server = harness_app(tmp_path, HANG_ON_STOP="1").start(timeout=60)
    started = time.monotonic()
    assert server.stop(timeout=1) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    assert not (tmp_path / "stopped").exists()


def test_a_server_that_exits_is_reported_at_once_with_its_log(tmp_path):
    server = ServerProcess("loadtest.no_such_module", log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"loadtest.no_such_module exited with 1; log .*server.log:\n.*No module named"):
        server.start(timeout=60)
    assert time.monotonic() - started < 30  # not the whole timeout


def test_a_server_that_never_gets_ready_is_stopped_at_the_deadline(tmp_path):
    server = harness_app(tmp_path, READY_STATUS="503")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"uvicorn ready on http://127.0.0.1:\d+/readyz not reached within 2 s; log "):
        server.start(timeout=2)
    assert 2 <= time.monotonic() - started < 30
    assert server.process.returncode is not None  # not left running


def test_describe_shows_the_command_as_typed_with_relative_paths(tmp_path):
    server = ServerProcess.service(ROOT / "models" / "toy", {"MT_CACHE_SIZE": "0", "MT_BEAM_SIZE": "1"}, args=("--x", "1"))
    assert server.describe() == (
        "MT_BEAM_SIZE=1 MT_CACHE_SIZE=0 .venv/bin/python -m service --model-dir models/toy --x 1 "
        "--host 127.0.0.1 --port PORT"
    )
    assert ServerProcess.service(tmp_path).describe().endswith(f"--model-dir {tmp_path} --host 127.0.0.1 --port PORT")


def test_free_port_is_free_on_loopback():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # would raise if taken


def test_wait_for_returns_the_first_true_value_and_gives_up_at_the_deadline():
    answers = iter([0, None, "", 7])
    assert wait_for(lambda: next(answers), timeout=5, interval=0) == 7
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="the moon not reached within 0.2 s"):
        wait_for(lambda: False, timeout=0.2, interval=0.01, what="the moon")
    assert 0.2 <= time.monotonic() - started < 2


def test_wait_for_lets_an_error_end_the_wait():
    def broken():
        raise RuntimeError("server exited")

    with pytest.raises(RuntimeError, match="server exited"):
        wait_for(broken, timeout=60)


@pytest.fixture
def exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter("demo_requests", "requests", ["status", "route"], registry=registry)
    requests.labels(status="200", route="/t").inc(3)
    requests.labels(status="429", route="/t").inc()
    Gauge("demo_ready", "ready", registry=registry).set(1)
    Histogram("demo_size", "size", buckets=(1, 4), registry=registry).observe(2)
    return generate_latest(registry).decode()


def test_metric_value_reads_one_sample_whatever_the_label_order(exposition):
    assert metric_value(exposition, "demo_ready") == 1
    assert metric_value(exposition, "demo_requests_total", 'status="200",route="/t"') == 3
    assert metric_value(exposition, "demo_requests_total", 'route="/t", status="429"') == 1
    assert metric_value(exposition, "demo_size_bucket", 'le="1.0"') == 0
    assert metric_value(exposition, "demo_size_bucket", 'le="4.0"') == 1
    assert metric_value(exposition, "demo_size_count") == 1


def test_metric_value_is_zero_for_an_absent_sample_or_a_partial_label_set(exposition):
    assert metric_value(exposition, "demo_missing") == 0
    assert metric_value(exposition, "demo_requests_total", 'status="200"') == 0  # route left out: another series
    assert metric_value(exposition, "demo_requests_total") == 0  # only labelled series exist


def test_metric_samples_keys_every_sample_with_sorted_labels(exposition):
    samples = metric_samples(exposition)
    assert samples['demo_requests_total{route="/t",status="200"}'] == 3
    assert samples["demo_ready"] == 1
    assert 'demo_size_bucket{le="+Inf"}' in samples
