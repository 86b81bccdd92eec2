"""Integration tests of networks and NICs: real bridges, veths, nftables and dnsmasq, as root.

Every host-side object lives in a sandbox namespace the test creates (``<prefix>h``); guests are
plain named namespaces (``<prefix>g<N>``); everything is removed in the fixtures' finally.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from supervisor.errors import ConflictError, InvalidOperation
from supervisor.model import (
    AddressRange,
    Bridge,
    Domain,
    Forward,
    Interface,
    IpAddress,
    Network,
    NetworkIp,
    Route,
)
from supervisor.net import nftables
from supervisor.net.dnsmasq import lease_lines
from supervisor.net.networks import HostNet, RunningNetwork, run_network
from supervisor.net.nics import AddressBook, plumb, unplumb

pytestmark = pytest.mark.root


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output."""
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def netns_names(prefix: str) -> list[str]:
    """Named namespaces carrying the prefix."""
    out = sh("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in out if line.startswith(prefix)]


@pytest.fixture
async def host(prefix: str, tmp_path: Path) -> AsyncIterator[HostNet]:
    """A sandbox host namespace with its netlink worker; removes every <prefix> netns after."""
    sh("ip", "netns", "add", f"{prefix}h")
    sh("ip", "-n", f"{prefix}h", "link", "set", "lo", "up")
    hn = await HostNet.open(prefix, f"/run/netns/{prefix}h", tmp_path)
    try:
        yield hn
    finally:
        await hn.aclose()
        for name in netns_names(prefix):
            sh("ip", "netns", "del", name, check=False)


def guest_ns(prefix: str, n: int) -> str:
    """Create a guest namespace and return its path."""
    sh("ip", "netns", "add", f"{prefix}g{n}")
    return f"/run/netns/{prefix}g{n}"


def in_guest(prefix: str, n: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command inside guest n's namespace."""
    return sh("ip", "netns", "exec", f"{prefix}g{n}", *argv, check=False)


def nat_net(name: str, third: int, mode: str | None = "nat") -> Network:
    """A network 10.77.<third>.0/24 with a DHCP range."""
    return Network(
        name=name,
        forward=Forward(mode=mode) if mode else None,  # type: ignore[arg-type]
        domain_name="test",
        ips=(
            NetworkIp(
                address=f"10.77.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.77.{third}.10", f"10.77.{third}.200"),),
            ),
        ),
    )


def link_names(ns: str) -> list[str]:
    """The names of a namespace's links."""
    return sorted(
        line.split(": ")[1].split("@")[0]
        for line in sh("ip", "-n", ns, "-o", "link").stdout.splitlines()
    )


def guest(name: str, *ifaces: Interface) -> Domain:
    """A domain with the given interfaces."""
    return Domain(name=name, interfaces=ifaces)


async def test_nat_network_two_guests_dhcp_ping_dns(host: HostNet, prefix: str) -> None:
    """Two guests on a NAT network get addresses by DHCP, ping each other, resolve names."""
    book = AddressBook()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("lan", 1))
            assert [f"{prefix}_lan"] == [
                t for t in await nftables.list_tables(host.netns) if t.startswith(prefix)
            ]
            nets = {"lan": net}
            nics = {}
            for n in (1, 2):
                path = guest_ns(prefix, n)
                dom = guest(f"{prefix}d{n}", Interface(type="network", source="lan"))
                nics[n] = await plumb(host, dom, path, nets, book)
            addr = {n: nics[n][0].addresses[0].split("/")[0] for n in (1, 2)}
            for n in (1, 2):
                udhcpc = ("/bin/busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-s")
                out = await trio.to_thread.run_sync(
                    functools.partial(
                        in_guest, prefix, n, *udhcpc, "/bin/true", "-x", f"hostname:{prefix}d{n}"
                    )
                )
                assert 0 == out.returncode, out.stderr
                assert f"lease of {addr[n]} obtained" in out.stdout + out.stderr
            assert (
                0 == in_guest(prefix, 1, "/bin/busybox", "ping", "-c3", "-w3", addr[2]).returncode
            )
            assert (
                0
                == in_guest(prefix, 2, "/bin/busybox", "ping", "-c3", "-w3", "10.77.1.1").returncode
            )
            leases = {(mac, ip) for mac, ip, _ in lease_lines(net.dnsmasq.files)}  # type: ignore[union-attr]
            assert {(nics[n][0].mac, addr[n]) for n in (1, 2)} == leases
            look = in_guest(prefix, 1, "/bin/busybox", "nslookup", f"{prefix}d2", "10.77.1.1")
            assert addr[2] in look.stdout, look.stdout + look.stderr

            # dnsmasq killed: restarted, leases kept
            assert net.dnsmasq is not None
            old = net.dnsmasq.statistics().pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            # polled: the restart is observable only through its pid, and it answers once it
            # has written its pid file
            while True:
                new = net.dnsmasq.statistics().pid
                try:
                    written = net.dnsmasq.files.pid.read_text().strip()
                except FileNotFoundError:
                    written = ""
                if new not in (None, old) and written == str(new):
                    break
                await trio.sleep(0.02)
            assert 1 == net.dnsmasq.statistics().restarts
            assert leases == {(m, i) for m, i, _ in lease_lines(net.dnsmasq.files)}
            look = in_guest(prefix, 2, "/bin/busybox", "nslookup", f"{prefix}d1", "10.77.1.1")
            assert addr[1] in look.stdout

            for n in (1, 2):
                await unplumb(host, nics[n], nets, book)
            assert () == book.state.entries
            await net.stop()
    assert [] == [t for t in await nftables.list_tables(host.netns) if t.startswith(prefix)]
    links = sh("ip", "-n", f"{prefix}h", "-o", "link").stdout
    assert prefix not in links


async def test_isolated_networks_do_not_reach_each_other(host: HostNet, prefix: str) -> None:
    """A guest on an isolated network cannot reach a guest on another network."""
    book = AddressBook()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(run_network, host, nat_net("isoa", 2, mode=None))
            b = await nursery.start(run_network, host, nat_net("isob", 3, mode=None))
            nets = {"isoa": a, "isob": b}
            na = await plumb(
                host,
                guest("ga", Interface(type="network", source="isoa")),
                guest_ns(prefix, 1),
                nets,
                book,
            )
            nb = await plumb(
                host,
                guest("gb", Interface(type="network", source="isob")),
                guest_ns(prefix, 2),
                nets,
                book,
            )
            target = nb[0].addresses[0].split("/")[0]
            assert (
                0
                == in_guest(prefix, 1, "/bin/busybox", "ping", "-c3", "-w3", "10.77.2.1").returncode
            )
            assert 0 != in_guest(prefix, 1, "/bin/busybox", "ping", "-c1", "-W1", target).returncode
            await unplumb(host, na + nb, nets, book)
            await a.stop()
            await b.stop()


async def test_routed_network_routes_without_nat(host: HostNet, prefix: str) -> None:
    """On a routed network the far side sees the guest's own address (no masquerade)."""
    book = AddressBook()
    h = f"{prefix}h"
    sh("ip", "netns", "add", f"{prefix}p")
    sh(
        "ip",
        "-n",
        h,
        "link",
        "add",
        f"{prefix}up",
        "type",
        "veth",
        "peer",
        "name",
        f"{prefix}wr",
        "netns",
        f"{prefix}p",
    )
    sh("ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", f"{prefix}up")
    sh("ip", "-n", h, "link", "set", f"{prefix}up", "up")
    sh("ip", "-n", f"{prefix}p", "addr", "add", "192.0.2.2/24", "dev", f"{prefix}wr")
    sh("ip", "-n", f"{prefix}p", "link", "set", f"{prefix}wr", "up")
    sh("ip", "-n", f"{prefix}p", "route", "add", "10.77.4.0/24", "via", "192.0.2.1")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = await nursery.start(run_network, host, nat_net("rt", 4, mode="route"))
            nics = await plumb(
                host,
                guest("gr", Interface(type="network", source="rt")),
                guest_ns(prefix, 1),
                {"rt": net},
                book,
            )
            # the peer answers only if it sees the guest's address and can route back to it
            assert (
                0
                == in_guest(prefix, 1, "/bin/busybox", "ping", "-c3", "-w3", "192.0.2.2").returncode
            )
            await unplumb(host, nics, {"rt": net}, book)
            await net.stop()


async def test_vserver_nic_isolation(host: HostNet, prefix: str) -> None:
    """A vserver guest has only its addresses, cannot bind others, forged packets are dropped."""
    h, p = f"{prefix}h", f"{prefix}p"
    sh("ip", "netns", "add", p)
    sh(
        "ip",
        "-n",
        h,
        "link",
        "add",
        f"{prefix}up",
        "type",
        "veth",
        "peer",
        "name",
        f"{prefix}wr",
        "netns",
        p,
    )
    sh("ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", f"{prefix}up")
    sh("ip", "-n", h, "link", "set", f"{prefix}up", "up")
    sh("ip", "-n", p, "addr", "add", "192.0.2.2/24", "dev", f"{prefix}wr")
    sh("ip", "-n", p, "link", "set", f"{prefix}wr", "up")
    book = AddressBook()
    iface = Interface(type="vserver", source=f"{prefix}up", ips=(IpAddress("192.0.2.10", 24),))
    with trio.fail_after(30):
        nics = await plumb(host, guest("gv", iface), guest_ns(prefix, 1), {}, book)
        assert "routed-veth" == nics[0].mode
        shown = in_guest(prefix, 1, "ip", "-4", "-o", "addr").stdout
        assert ["192.0.2.10/24"] == [w for w in shown.split() if w.startswith("192.")]
        assert (
            0 == in_guest(prefix, 1, "/bin/busybox", "ping", "-c3", "-w3", "192.0.2.2").returncode
        )
        bind = in_guest(
            prefix,
            1,
            "python3",
            "-c",
            "import socket,errno\ns=socket.socket()\n"
            "try: s.bind(('192.0.2.11',0))\nexcept OSError as e: print(errno.errorcode[e.errno])",
        )
        assert "EADDRNOTAVAIL" == bind.stdout.strip()
        # the guest (root in its namespace) forges a source: nothing reaches the wire
        in_guest(prefix, 1, "ip", "addr", "add", "192.0.2.99/32", "dev", "eth0")
        assert (
            0
            != in_guest(
                prefix, 1, "/bin/busybox", "ping", "-c1", "-W1", "-I", "192.0.2.99", "192.0.2.2"
            ).returncode
        )
        assert 0 < await nftables.drop_count(host.netns, nics[0].table or "")
        await unplumb(host, nics, {}, book)
    assert [] == [t for t in await nftables.list_tables(host.netns) if t.startswith(prefix)]


async def test_failed_plumbing_leaves_nothing(host: HostNet, prefix: str) -> None:
    """A NIC whose name is already taken aborts with a clear error and leaves nothing behind."""
    book = AddressBook()
    taken = f"{prefix}taken"
    sh("ip", "-n", f"{prefix}h", "link", "add", taken, "type", "bridge")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = await nursery.start(run_network, host, nat_net("fl", 5))
            dom = guest(
                "gf",
                Interface(type="network", source="fl"),
                Interface(type="network", source="fl", target_dev=taken),
            )
            with pytest.raises(ConflictError, match=f"{taken}.*already exists"):
                await plumb(host, dom, guest_ns(prefix, 1), {"fl": net}, book)
            assert () == book.state.entries
            assert {} == net.dnsmasq.live_hosts
            links = sh("ip", "-n", f"{prefix}h", "-o", "link").stdout
            assert [taken] == [
                w.rstrip(":").split("@")[0]
                for w in links.split()
                if w.startswith(prefix) and not w.startswith(f"{prefix}br")
            ]
            assert "eth0" not in in_guest(prefix, 1, "ip", "-o", "link").stdout
            await net.stop()


async def test_hundred_guests_concurrently(host: HostNet, prefix: str) -> None:
    """100 guests plumbed and unplumbed concurrently on one bridge: distinct addresses, no leak."""
    book = AddressBook()
    paths = [guest_ns(prefix, n) for n in range(100)]
    results = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net = await nursery.start(run_network, host, nat_net("many", 6))
            nets = {"many": net}

            async def one(n: int) -> None:
                dom = guest(f"g{n}", Interface(type="network", source="many"))
                results[n] = await plumb(host, dom, paths[n], nets, book)

            async with trio.open_nursery() as inner:
                for n in range(100):
                    inner.start_soon(one, n)
            assert 100 == len({r[0].addresses[0] for r in results.values()})
            async with trio.open_nursery() as inner:
                for n in range(100):
                    inner.start_soon(unplumb, host, results[n], nets, book)
            assert () == book.state.entries
            await net.stop()
    links = sh("ip", "-n", f"{prefix}h", "-o", "link").stdout
    assert prefix not in links


async def test_network_nic_routes_and_link_down(host: HostNet, prefix: str) -> None:
    """A ``type='network'`` NIC's ``<route>``s are put in the guest, and its own default route
    (``address='0.0.0.0'``, libvirt's prefix 0) replaces the one through the bridge;
    ``<link state='down'>`` leaves the host end down, so the guest's end has no carrier."""
    book = AddressBook()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("rt", 41))
            nets = {"rt": net}
            routed = Interface(
                type="network",
                source="rt",
                ips=(IpAddress("10.77.41.20", 24),),
                routes=(
                    Route("0.0.0.0", 0, "10.77.41.254"),
                    Route("192.0.2.0", 24, "10.77.41.1"),
                ),
            )
            one = await plumb(host, guest("g1", routed), guest_ns(prefix, 1), nets, book)
            shown = in_guest(prefix, 1, "ip", "-4", "route", "show").stdout
            assert "default via 10.77.41.254 dev eth0" in shown, shown
            assert "192.0.2.0/24 via 10.77.41.1 dev eth0" in shown, shown
            assert 0 == in_guest(prefix, 1, "/bin/busybox", "ping", "-c1", "-W2",
                                 "10.77.41.1").returncode  # fmt: skip

            down = Interface(type="network", source="rt", link_up=False)
            two = await plumb(host, guest("g2", down), guest_ns(prefix, 2), nets, book)
            link = sh("ip", "-n", f"{prefix}h", "-j", "link", "show", two[0].host_if).stdout
            assert '"operstate":"DOWN"' in link.replace(" ", ""), link
            inside = in_guest(prefix, 2, "ip", "link", "show", "eth0").stdout
            assert "NO-CARRIER" in inside, inside
            assert 0 != in_guest(prefix, 2, "/bin/busybox", "ping", "-c1", "-W1",
                                 "10.77.41.1").returncode  # fmt: skip
            for nics in (one, two):
                await unplumb(host, nics, nets, book)
            await net.stop()


async def test_link_down_refused_where_it_cannot_apply(host: HostNet, prefix: str) -> None:
    """``<link state='down'>`` on an interface whose host end holds routes (ethernet) is
    refused with the element named, never silently ignored; nothing is left behind."""
    book = AddressBook()
    down = Interface(type="ethernet", link_up=False)
    with pytest.raises(InvalidOperation, match="<link state='down'>"):
        await plumb(host, guest("g1", down), guest_ns(prefix, 1), {}, book)
    assert [] == [
        line
        for line in sh("ip", "-n", f"{prefix}h", "-o", "link").stdout.splitlines()
        if prefix in line
    ]


async def test_forward_mode_bridge_puts_guests_on_the_host_bridge(
    host: HostNet, prefix: str
) -> None:
    """``forward mode='bridge'``: guests' veths join the administrator's existing bridge and
    nothing else is made (no bridge, address, forwarding table or dnsmasq); the bridge stays
    at stop. With ``<port isolated='yes'/>`` two guests reach the host's bridge, not each
    other; the guests' ports are guarded (a forged source is dropped). A missing bridge is
    refused naming it."""
    h = f"{prefix}h"
    admin = f"{prefix}adm"
    sh("ip", "-n", h, "link", "add", admin, "type", "bridge")
    sh("ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", admin)
    sh("ip", "-n", h, "link", "set", admin, "up")
    before = link_names(h)
    network = Network(
        name="hb",
        forward=Forward(mode="bridge"),
        bridge=Bridge(name=admin),
        port_isolated=True,
    )
    book = AddressBook()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, network)
            nets = {"hb": net}
            assert (admin, None, None) == (net.bridge, net.table, net.dnsmasq)
            nics = []
            for n in (1, 2):
                iface = Interface(
                    type="network", source="hb", ips=(IpAddress(f"192.0.2.1{n}", 24),)
                )
                nics.append(
                    await plumb(host, guest(f"g{n}", iface), guest_ns(prefix, n), nets, book)
                )
            masters = {
                nic[0].host_if: sh("ip", "-n", h, "-o", "link", "show", nic[0].host_if).stdout
                for nic in nics
            }
            assert all(f"master {admin}" in line for line in masters.values()), masters
            for n in (1, 2):
                ping = in_guest(prefix, n, "/bin/busybox", "ping", "-c1", "-W2", "192.0.2.1")
                assert 0 == ping.returncode, ping.stdout + ping.stderr
            isolated = in_guest(prefix, 1, "/bin/busybox", "ping", "-c1", "-W1", "192.0.2.12")
            assert 0 != isolated.returncode
            in_guest(prefix, 1, "ip", "addr", "add", "192.0.2.99/24", "dev", "eth0")
            forged = in_guest(prefix, 1, "/bin/busybox", "ping", "-c1", "-W1", "-I",
                              "192.0.2.99", "192.0.2.1")  # fmt: skip
            assert 0 != forged.returncode
            tables = sh("ip", "netns", "exec", h, "nft", "list", "tables").stdout
            assert [f"table bridge {prefix}_hb"] == tables.split("\n")[:-1]
            for nic in nics:
                await unplumb(host, nic, nets, book)
            await net.stop()
    assert before == link_names(h)
    assert "" == sh("ip", "netns", "exec", h, "nft", "list", "tables").stdout
    assert [] == list(host.run_dir.glob(f"{prefix}-hb.*"))

    missing = attrs.evolve(network, bridge=Bridge(name=f"{prefix}none"))
    with pytest.raises(InvalidOperation, match=f"<bridge name='{prefix}none'>"):
        await run_network(host, missing)  # refused before it would start
