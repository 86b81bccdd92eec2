"""IPv6 on a network as libvirt runs it, as root: DHCPv6 with router advertisements, SLAAC.

The world is made of namespaces the test creates: a sandbox ``<prefix>h`` for the host, where
the network and its dnsmasq run, and guests ``<prefix>g<N>`` plumbed onto it. The guests' DHCPv6
client is a small one below (standard library only: busybox as Debian builds it has no
``udhcpc6``); the kernel of the guest's namespace takes the router advertisements, as any
guest's would. Anti-spoofing is on, so a guest can use an address only once dnsmasq has leased
it to the guest's MAC (or it is derived from that MAC).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
import sys
import textwrap

import pytest
import trio

from supervisor.model import (
    AddressRange,
    DhcpHost,
    Domain,
    Forward,
    Interface,
    IpAddress,
    Network,
    NetworkIp,
)
from supervisor.net import nftables
from supervisor.net.networks import HostNet, RunningNetwork, run_network
from supervisor.net.nics import AddressBook, plumb, unplumb
from tests import test_net_integration

pytestmark = pytest.mark.root

#: a DHCPv6 client (RFC 8415): solicit, advertise, request, reply; prints the address it got
DHCP6_CLIENT = r"""
import os, socket, struct, sys
dev, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
index = socket.if_nametoindex(dev)
duid = struct.pack("!HH", 3, 1) + mac  # DUID-LL, Ethernet
def opt(code, data): return struct.pack("!HH", code, len(data)) + data
def options(data):
    out, pos = {}, 0
    while pos + 4 <= len(data):
        code, size = struct.unpack_from("!HH", data, pos)
        out.setdefault(code, data[pos + 4:pos + 4 + size]); pos += 4 + size
    return out
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.bind(("::", 546, 0, index))
s.settimeout(2)
def exchange(kind, body, want):
    for _ in range(10):
        xid = os.urandom(3)
        s.sendto(bytes([kind]) + xid + body, ("ff02::1:2", 547, 0, index))
        try:
            while True:
                data, _src = s.recvfrom(4096)
                if data[0] == want and data[1:4] == xid:
                    return options(data[4:])
        except socket.timeout:
            continue
    sys.exit("no answer to DHCPv6 message %d" % kind)
ia = struct.pack("!III", 1, 0, 0)
base = opt(1, duid) + opt(8, b"\0\0")
adv = exchange(1, base + opt(3, ia), 2)  # solicit -> advertise
offered = options(adv[3][12:])[5]  # IA_NA -> IAADDR
reply = exchange(3, base + opt(2, adv[2]) + opt(3, ia + opt(5, offered)), 7)  # request -> reply
print(socket.inet_ntop(socket.AF_INET6, options(reply[3][12:])[5][:16]))
"""


def sh(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


async def ash(*argv: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(functools.partial(sh, *argv))


# the sandbox host namespace of the network integration tests
host = test_net_integration.host


def dual_stack(name: str, third: int, v6: NetworkIp) -> Network:
    return Network(
        name=name,
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.217.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.217.{third}.100", f"10.217.{third}.200"),),
            ),
            v6,
        ),
    )


async def in_guest(prefix: str, n: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return await ash("ip", "netns", "exec", f"{prefix}g{n}", *argv)


async def wait_default_route(prefix: str, n: int) -> dict[str, object]:
    """The guest's IPv6 default route, once its kernel has taken a router advertisement."""
    while True:
        out = await in_guest(prefix, n, "ip", "-6", "-j", "route", "show", "default")
        routes = json.loads(out.stdout or "[]")
        if routes:
            return dict(routes[0])
        await trio.sleep(0.2)


async def wait_address(prefix: str, n: int, net: ipaddress.IPv6Network) -> str:
    """An address of ``net`` on the guest's eth0 that has passed duplicate address detection."""
    while True:
        out = await in_guest(prefix, n, "ip", "-6", "-j", "addr", "show", "dev", "eth0")
        for entry in json.loads(out.stdout or "[]"):
            for a in entry.get("addr_info", []):
                if ipaddress.ip_address(a["local"]) in net and not a.get("tentative"):
                    return str(a["local"])
        await trio.sleep(0.2)


async def guest_on(
    host: HostNet, prefix: str, n: int, net: RunningNetwork, book: AddressBook, mac: str
) -> tuple[object, ...]:
    sh("ip", "netns", "add", f"{prefix}g{n}", check=True)
    iface = Interface(type="network", source=net.network.name, mac=mac)
    return await plumb(
        host, Domain(name=f"g{n}", interfaces=(iface,)), f"/run/netns/{prefix}g{n}",
        {net.network.name: net}, book,
    )  # fmt: skip


async def dhcp6(prefix: str, n: int, mac: str) -> str:
    await wait_address(prefix, n, ipaddress.IPv6Network("fe80::/64"))  # the client's source
    done = await in_guest(prefix, n, sys.executable, "-c", textwrap.dedent(DHCP6_CLIENT),
                          "eth0", mac)  # fmt: skip
    assert 0 == done.returncode, done.stderr
    return done.stdout.strip()


async def test_dhcpv6_address_and_default_route_by_ra(host: HostNet, prefix: str) -> None:
    """An IPv6 ``<range>``: a guest gets a DHCPv6 address from it (a ``<host id=>`` its
    reserved one) and its default route from the network's router advertisements; the guard
    lets the leased address through for the guest's MAC."""
    mac1, mac2 = "52:54:00:17:00:01", "52:54:00:17:00:02"
    v6 = NetworkIp(
        address="fd00:217:1::1",
        prefix=64,
        family="ipv6",
        dhcp_ranges=(AddressRange("fd00:217:1::100", "fd00:217:1::1ff"),),
        dhcp_hosts=(DhcpHost(ip="fd00:217:1::55", id="00:03:00:01:" + mac2),),
    )
    book = AddressBook()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, dual_stack("v6", 1, v6))
            nics = [
                await guest_on(host, prefix, 1, net, book, mac1),
                await guest_on(host, prefix, 2, net, book, mac2),
            ]
            leased = await dhcp6(prefix, 1, mac1)
            assert ipaddress.ip_address(leased) in ipaddress.ip_network("fd00:217:1::100/120")
            assert "fd00:217:1::55" == await dhcp6(prefix, 2, mac2)
            route = await wait_default_route(prefix, 1)
            assert str(route["gateway"]).startswith("fe80:")
            assert "ra" == route.get("protocol")
            await in_guest(prefix, 1, "ip", "-6", "addr", "add", f"{leased}/128", "dev", "eth0",
                           "nodad")  # fmt: skip
            ping = await in_guest(prefix, 1, "/bin/busybox", "ping6", "-c2", "-w5", "-I", leased,
                                  "fd00:217:1::1")  # fmt: skip
            assert 0 == ping.returncode, ping.stdout + ping.stderr
            # the guard knew the address from dnsmasq's lease, not from the supervisor
            listed = await ash("ip", "netns", "exec", f"{prefix}h", "nft", "list", "set",
                               "bridge", net.guard or "", "lease6")  # fmt: skip
            hexed = "0x" + ipaddress.IPv6Address(leased).packed.hex()
            assert f"{mac1} . {hexed}" in listed.stdout
            # another guest's address is not the guest's to use
            await in_guest(prefix, 1, "ip", "-6", "addr", "add", "fd00:217:1::55/128", "dev",
                           "eth0", "nodad")  # fmt: skip
            forged = await in_guest(prefix, 1, "/bin/busybox", "ping6", "-c1", "-W1", "-I",
                                    "fd00:217:1::55", "fd00:217:1::1")  # fmt: skip
            assert 0 != forged.returncode
            for nic in nics:
                await unplumb(host, nic, {"v6": net}, book)  # type: ignore[arg-type]
            await net.stop()


async def test_slaac_without_dhcp(host: HostNet, prefix: str) -> None:
    """An IPv6 ``<ip>`` without ``<dhcp>``: router advertisements for SLAAC only; the guest
    makes its address from the prefix and its MAC (which the guard knows) and routes by RA;
    another guest's static IPv6 ``<ip>`` is configured with the network's prefix length."""
    mac = "52:54:00:17:01:01"
    v6 = NetworkIp(address="fd00:217:2::1", prefix=64, family="ipv6")
    book = AddressBook()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, dual_stack("sl", 2, v6))
            nic = await guest_on(host, prefix, 1, net, book, mac)
            address = await wait_address(prefix, 1, ipaddress.IPv6Network("fd00:217:2::/64"))
            assert nftables.eui64_address("fd00:217:2::/64", mac) == address
            route = await wait_default_route(prefix, 1)
            assert str(route["gateway"]).startswith("fe80:")
            ping = await in_guest(prefix, 1, "/bin/busybox", "ping6", "-c2", "-w5", "-I", address,
                                  "fd00:217:2::1")  # fmt: skip
            assert 0 == ping.returncode, ping.stdout + ping.stderr
            # a static IPv6 <ip> on the network is configured in the guest and let through
            sh("ip", "netns", "add", f"{prefix}g2", check=True)
            fixed = Interface(type="network", source="sl", ips=(IpAddress("fd00:217:2::77"),))
            two = await plumb(
                host, Domain(name="g2", interfaces=(fixed,)), f"/run/netns/{prefix}g2",
                {"sl": net}, book,
            )  # fmt: skip
            shown = await in_guest(prefix, 2, "ip", "-6", "addr", "show", "dev", "eth0")
            assert "fd00:217:2::77/64" in shown.stdout, shown.stdout
            await wait_address(prefix, 2, ipaddress.IPv6Network("fd00:217:2::77/128"))
            await wait_default_route(prefix, 2)
            ping = await in_guest(prefix, 2, "/bin/busybox", "ping6", "-c2", "-w5", "-I",
                                  "fd00:217:2::77", "fd00:217:2::1")  # fmt: skip
            assert 0 == ping.returncode, ping.stdout + ping.stderr
            for nics in (nic, two):
                await unplumb(host, nics, {"sl": net}, book)  # type: ignore[arg-type]
            await net.stop()
