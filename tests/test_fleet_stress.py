"""`vsv stress --fleet`: the harness's fleet mode runs and its checks hold (a real nats-server)."""

from __future__ import annotations

import io

import pytest

from supervisor.testing.natsserver import NatsServer
from supervisor.testing.stress.fleet import run_fleet_stress
from tests.fleet_helpers import nats

__all__ = ["nats"]


@pytest.mark.parametrize("seed", [1, 7])
def test_fleet_stress_passes(seed: int, nats: NatsServer) -> None:
    """Random operations on two hosts with broker restarts: the stream matches the model."""
    out = io.StringIO()
    assert 0 == run_fleet_stress(seed, 150, 2, out), out.getvalue()
    assert "stress --fleet passed" in out.getvalue()
    assert "broker-" in out.getvalue()
