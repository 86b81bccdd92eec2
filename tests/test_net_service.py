"""Network definitions and lifecycle: the pure table, and the service with events as root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from supervisor.errors import ConflictError, InvalidOperation, NotFound
from supervisor.model import AddressRange, Bridge, Forward, Network, NetworkIp
from supervisor.net import nftables
from supervisor.net.networks import HostNet
from supervisor.net.service import NetworkService, NetworkTable


def lan(name: str, third: int, bridge: str | None = None) -> Network:
    """A NAT network 10.78.<third>.0/24."""
    return Network(
        name=name,
        bridge=Bridge(name=bridge),
        forward=Forward(),
        ips=(
            NetworkIp(
                f"10.78.{third}.1",
                24,
                dhcp_ranges=(AddressRange(f"10.78.{third}.10", f"10.78.{third}.20"),),
            ),
        ),
    )


def test_define_fills_bridge_and_refuses_collisions() -> None:
    """Define generates a prefixed bridge name and refuses a second user of a bridge or subnet."""
    table = NetworkTable(prefix="vsvq")
    net, event = table.define(lan("a", 1))
    assert ("DEFINED", True) == (event, (net.bridge.name or "").startswith("vsvq"))
    with pytest.raises(ConflictError, match="overlaps"):
        table.define(lan("b", 1))
    with pytest.raises(ConflictError, match="bridge"):
        table.define(lan("c", 2, bridge=net.bridge.name))
    assert ["a"] == list(table.definitions)


def test_autostart_and_undefine() -> None:
    """Autostart marks are listed; undefine removes; unknown names raise NotFound."""
    table = NetworkTable(prefix="vsvq")
    table.define(lan("b", 2))
    table.define(lan("a", 1))
    table.set_autostart("b", True)
    assert ["b"] == table.autostart_names()
    assert "UNDEFINED" == table.undefine("b")
    with pytest.raises(NotFound):
        table.undefine("b")


@pytest.fixture
async def host(prefix: str, tmp_path: Path) -> AsyncIterator[HostNet]:
    """A sandbox host namespace, deleted afterwards."""
    await trio.run_process(["ip", "netns", "add", f"{prefix}h"])
    hn = await HostNet.open(prefix, f"/run/netns/{prefix}h", tmp_path)
    try:
        yield hn
    finally:
        await hn.aclose()
        await trio.run_process(["ip", "netns", "del", f"{prefix}h"], check=False)


@pytest.mark.root
async def test_service_lifecycle_events(host: HostNet, prefix: str) -> None:
    """Start/stop emit STARTED/STOPPED, the nft table exists exactly while the network runs."""
    events: list[tuple[str, str]] = []
    svc = NetworkService(
        host=host, table=NetworkTable(prefix), emit=lambda n, t: events.append((n, t))
    )
    svc.define(lan("x", 3))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await svc.start("x", nursery)
            assert [f"{prefix}_x"] == [
                t for t in await nftables.list_tables(host.netns) if t.startswith(prefix)
            ]
            with pytest.raises(InvalidOperation):
                svc.undefine("x")
            await svc.stop("x")
            assert [] == [t for t in await nftables.list_tables(host.netns) if t.startswith(prefix)]
            assert {} == svc.running
    svc.undefine("x")
    assert [("x", "DEFINED"), ("x", "STARTED"), ("x", "STOPPED"), ("x", "UNDEFINED")] == events
