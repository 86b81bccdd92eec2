"""The NIC kinds besides a veth on a network, through a real Supervisor with a sandbox netns:
``bridge`` (a veth into an existing bridge), ``ethernet`` (a routed veth with libvirt's two
sides) and taps (VM-style guests).

Everything host-side happens in the sandbox namespace the ``sandbox`` fixture makes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor.daemon import Supervisor
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, Interface, IpAddress, OsSpec, Route
from supervisor.net import names
from tests import test_net_daemon
from tests.test_net_daemon import in_ns, lan

# the fixtures, bound here so pytest finds them for this module's tests
sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup

LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def ip(ns: str, *args: str) -> Any:
    """``ip -j ARGS`` in namespace ``ns``, parsed."""
    done = subprocess.run(
        ["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True, timeout=10
    )
    return json.loads(done.stdout or "[]")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def guest(name: str, root: Path, iface: Interface) -> Domain:
    """A container guest idling in a loop with the one NIC ``iface``."""
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        interfaces=(iface,),
    )


def link_names(ns: str) -> list[str]:
    return sorted(link["ifname"] for link in ip(ns, "link", "show"))


def inet(ns: str, dev: str, family: str = "inet") -> list[str]:
    """The IPv4 addresses on ``dev`` in ``ns`` as ``a.b.c.d/len``."""
    (link,) = ip(ns, "addr", "show", "dev", dev)
    return sorted(
        f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == family
    )


def inet6(ns: str, dev: str) -> list[str]:
    """The global IPv6 addresses on ``dev`` in ``ns`` (not the link-local ones)."""
    return [a for a in inet(ns, dev, "inet6") if not a.startswith("fe80:")]


@pytest.mark.parametrize(
    ("target_dev", "expected"),
    [
        (None, False),
        ("tap0", True),
        ("vsvt1234tap0", True),
        ("vsvt1234v0", False),
        ("vsvt9999tap0", False),
        ("mytap", False),
        ("vsvt1234", False),
    ],
)
def test_names_tap_rule(target_dev: str | None, expected: bool) -> None:
    """A <target dev> names a tap when, with the prefix taken off its front, it begins 'tap'."""
    assert expected == names.names_tap("vsvt1234", target_dev)


@pytest.mark.root
async def test_bridge_interface_enslaves_to_existing_bridge(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """type='bridge': the host veth end is a port of the existing bridge, the guest end holds
    the <ip>s (without a prefix, libvirt's natural one) and reaches the bridge's address;
    after destroy the port is gone, the bridge stays."""
    bridge = f"{prefix}xbr"
    sh("ip", "-n", sandbox, "link", "add", bridge, "type", "bridge")
    sh("ip", "-n", sandbox, "addr", "add", "10.213.94.1/24", "dev", bridge)
    sh("ip", "-n", sandbox, "link", "set", bridge, "up")
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    # the second address has no prefix: libvirt's natural one, class B's /16 (it was /24)
    ips = (IpAddress("10.213.94.10", 24), IpAddress("172.20.94.10"))
    iface = Interface(type="bridge", source=bridge, ips=ips)
    await sup.define_domain(guest("gbr", root, iface))
    await sup.start_domain("gbr")

    (row,) = sup.domain_interfaces("gbr")
    host_if = row["host_if"]
    assert (row["mode"], [a["address"] for a in row["addresses"]]) == (
        "veth-bridge",
        ["10.213.94.10", "172.20.94.10"],
    )
    assert [host_if] == [link["ifname"] for link in ip(sandbox, "link", "show", "master", bridge)]
    assert ["10.213.94.10/24", "172.20.94.10/16"] == inet(f"{prefix}-gbr", "eth0")
    ping = in_ns(f"{prefix}-gbr", "ping", "-c1", "-W2", "10.213.94.1")
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    back = in_ns(sandbox, "ping", "-c1", "-W2", "10.213.94.10")
    assert 0 == back.returncode, back.stdout + back.stderr

    await sup.destroy_domain("gbr")
    assert [] == ip(sandbox, "link", "show", "master", bridge)
    assert ["lo", bridge] == link_names(sandbox)


@pytest.mark.root
async def test_ethernet_interface_has_libvirts_sides(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """type='ethernet' (libvirt's meaning): no bridge; the top-level <ip> (with its peer) and
    <route> configure the guest's end, <source><ip> and <source><route> the host's; traffic
    flows between the two ends, the guest's default route leads to the host and the host's
    route to a subnet behind the guest; destroy removes the veth."""
    sh("ip", "-n", sandbox, "link", "set", "lo", "up")
    sh("ip", "-n", sandbox, "addr", "add", "10.213.97.1/32", "dev", "lo")  # beyond the link
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    iface = Interface(
        type="ethernet",
        ips=(IpAddress("10.213.95.2", 32, peer="10.213.95.1"), IpAddress("fd00:95::2", 64)),
        routes=(Route("0.0.0.0", 0, "10.213.95.1"),),
        host_ips=(IpAddress("10.213.95.1", 32, peer="10.213.95.2"), IpAddress("fd00:95::1", 64)),
        host_routes=(Route("10.213.96.0", 24, "10.213.95.2"),),
    )
    await sup.define_domain(guest("geth", root, iface))
    await sup.start_domain("geth")

    (row,) = sup.domain_interfaces("geth")
    host_if = row["host_if"]
    assert ("veth-ethernet", ["10.213.95.2", "fd00:95::2"]) == (
        row["mode"],
        [a["address"] for a in row["addresses"]],
    )
    (host_link,) = ip(sandbox, "-d", "link", "show", "dev", host_if)
    assert ("veth", None) == (host_link["linkinfo"]["info_kind"], host_link.get("master"))
    guest_ns = f"{prefix}-geth"
    assert (["10.213.95.1/32"], ["10.213.95.2/32"]) == (
        inet(sandbox, host_if),
        inet(guest_ns, "eth0"),
    )
    assert (["fd00:95::1/64"], ["fd00:95::2/64"]) == (
        inet6(sandbox, host_if),
        inet6(guest_ns, "eth0"),
    )
    host_routes = [
        (r["dst"], r.get("gateway")) for r in ip(sandbox, "route", "show", "dev", host_if)
    ]
    assert ("10.213.96.0/24", "10.213.95.2") in host_routes
    guest_routes = [
        (r["dst"], r.get("gateway")) for r in ip(guest_ns, "route", "show", "dev", "eth0")
    ]
    assert ("default", "10.213.95.1") in guest_routes

    # the two ends reach each other, over the peers' routes
    ping = in_ns(guest_ns, "ping", "-c1", "-W2", "10.213.95.1")
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    ping = in_ns(sandbox, "ping", "-c1", "-W2", "10.213.95.2")
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    # the guest's default route leads to the host's other addresses
    ping = in_ns(guest_ns, "ping", "-c1", "-W2", "10.213.97.1")
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    # and the host's <source><route> to an address behind the guest
    in_ns(guest_ns, "ip", "addr", "add", "10.213.96.7/32", "dev", "lo")
    ping = in_ns(sandbox, "ping", "-c1", "-W2", "10.213.96.7")
    assert 0 == ping.returncode, ping.stdout + ping.stderr

    await sup.destroy_domain("geth")
    assert ["lo"] == link_names(sandbox)


@pytest.mark.root
async def test_tap_on_a_network(sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str) -> None:
    """<target dev='<prefix>tap0'> on a network: a tap in the host enslaved to the bridge, the
    guest MAC with first byte 0xFE, the bridge's MTU, a DHCP reservation; all gone on destroy."""
    await sup.define_network(lan(prefix, 97))
    await sup.start_network("lan")
    bridge = f"{prefix}b0"
    sh("ip", "-n", sandbox, "link", "set", bridge, "mtu", "1400")  # not the 1500 a tap starts with
    tap = f"{prefix}tap0"
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    iface = Interface(type="network", source="lan", mac="52:54:00:ab:cd:ef", target_dev=tap)
    await sup.define_domain(guest("gtap", root, iface))
    await sup.start_domain("gtap")

    (row,) = sup.domain_interfaces("gtap")
    assert ("tap", tap, "52:54:00:ab:cd:ef") == (row["mode"], row["host_if"], row["mac"])
    (link,) = ip(sandbox, "-d", "link", "show", "dev", tap)
    assert ("tun", "tap", bridge, "fe:54:00:ab:cd:ef", 1400) == (
        link["linkinfo"]["info_kind"],
        link["linkinfo"]["info_data"]["type"],
        link.get("master"),
        link["address"],
        link["mtu"],
    )
    assert sup.net is not None
    (alloc,) = sup.net.service.allocations().on("lan")
    assert (
        "52:54:00:ab:cd:ef",
        [alloc.address],
    ) == (alloc.mac, [a["address"] for a in row["addresses"]])
    # a container guest of a tap NIC gets no veth end
    assert ["lo"] == link_names(f"{prefix}-gtap")

    await sup.destroy_domain("gtap")
    assert [] == list(sup.net.service.allocations().on("lan"))
    assert ["lo", bridge] == link_names(sandbox)


@pytest.mark.root
async def test_tap_on_ethernet_takes_host_addresses(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """type='ethernet' with a tap <target dev>: an unenslaved tap, up, holding the <source>'s
    <ip> and <route> as the veth's host end would (the top-level ones are the VM's to
    configure); gone on destroy."""
    tap = f"{prefix}tap1"
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    iface = Interface(
        type="ethernet",
        target_dev=tap,
        ips=(IpAddress("10.213.98.2", 24),),
        host_ips=(IpAddress("10.213.98.1", 24),),
        host_routes=(Route("10.213.99.0", 24, "10.213.98.2"),),
    )
    await sup.define_domain(guest("gte", root, iface))
    await sup.start_domain("gte")

    (row,) = sup.domain_interfaces("gte")
    assert ("tap", tap, []) == (row["mode"], row["host_if"], row["addresses"])
    (link,) = ip(sandbox, "-d", "link", "show", "dev", tap)
    assert ("tun", None, "fe") == (
        link["linkinfo"]["info_kind"],
        link.get("master"),
        link["address"][:2],
    )
    assert "UP" in link["flags"]
    assert ["10.213.98.1/24"] == inet(sandbox, tap)
    routes = [(r["dst"], r.get("gateway")) for r in ip(sandbox, "route", "show", "dev", tap)]
    assert ("10.213.99.0/24", "10.213.98.2") in routes

    await sup.destroy_domain("gte")
    assert ["lo"] == link_names(sandbox)
