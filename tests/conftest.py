"""Fixtures only: the toy checkpoint converted once per session, and real service processes. The helpers they
and the tests use are in tests/helpers.py and loadtest/harness.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TOY_CHECKPOINT, ServerProcess

SERVICE_START_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """The toy checkpoint converted to int8, as the service loads it."""
    from convert.m2m100 import convert

    output = tmp_path_factory.mktemp("models") / "toy-int8"
    convert(str(TOY_CHECKPOINT), output, "int8")
    return output


@pytest.fixture
def start_service(tmp_path) -> Iterator:
    """start_service(model_dir, env=None, args=()) -> a ServerProcess of `python -m service` on a free 127.0.0.1
    port, ready (its log in tmp_path); each is stopped with SIGTERM after the test."""
    started: list[ServerProcess] = []

    def start(model_dir: Path, env: dict | None = None, args: tuple[str, ...] = ()) -> ServerProcess:
        service = ServerProcess.service(model_dir, env, tmp_path / f"service-{len(started) + 1}.log", args)
        started.append(service)
        return service.start(SERVICE_START_TIMEOUT)

    yield start
    for service in started:
        service.stop(timeout=15)
