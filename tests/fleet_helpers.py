"""Shared pieces of the fleet tests: a real nats-server per test, and waiting on conditions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.testing.natsserver import NatsServer, find_nats_server, nats_server


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream on 127.0.0.1, its own store and port; killed at teardown."""
    if find_nats_server() is None:
        if os.environ.get("VSV_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail("nats-server is not installed (scripts/setup.sh installs it)")
        pytest.skip("nats-server is not installed")
    with nats_server(tmp_path / "nats") as server:
        yield server


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (blocking) until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
