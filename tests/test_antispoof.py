"""Anti-spoofing on bridge ports, as root: the attacks a guest's root can make, tried for real.

Issue 14: on a NAT network one guest added a neighbour's address and took over its traffic (the
gateway's neighbour entry pointed at the attacker's MAC). Every test here lets an attacking guest
do what its root may do inside its own network namespace (add addresses, change its MAC, send
forged ARP, NDP, DHCP and router messages) and checks that the victim keeps its traffic while
the attacker's own traffic still flows. A guest whose interface opts out
(``<filterref filter='vsv-allow-all'/>``) is plumbed as every NIC was before: the same attacks
then succeed, which is the issue reproduced.

Everything host-side lives in a sandbox namespace the test creates; the guests' namespaces are
named with the test's prefix; the fixtures remove everything, also on failure.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import trio

from supervisor import nsutil
from supervisor.daemon import Supervisor
from supervisor.errors import ConflictError
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import (
    AddressRange,
    Bridge,
    Domain,
    Filesystem,
    Forward,
    Interface,
    IpAddress,
    Network,
    NetworkIp,
    OsSpec,
)
from supervisor.net import names, nftables
from supervisor.net.networks import HostNet, RunningNetwork, run_network
from supervisor.net.nics import AddressBook, plumb, unplumb
from tests import test_net_daemon, test_net_integration

pytestmark = pytest.mark.root

IDLE = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
#: a ping that must get through: up to 3 s, since after a forged packet was dropped the guest's
#: neighbour entry for the destination may have to be resolved again
PING_OK = ("/bin/busybox", "ping", "-c2", "-w3")
#: a ping that must not
PING_ONCE = ("/bin/busybox", "ping", "-c1", "-W1")
VICTIM_MAC = "52:54:00:aa:00:01"
ATTACKER_MAC = "52:54:00:aa:00:02"


def sh(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


async def ash(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """:func:`sh` on a thread, so trio (and the supervisor in it) goes on meanwhile."""
    return await trio.to_thread.run_sync(functools.partial(sh, *argv, check=check))


def lan(prefix: str, third: int) -> Network:
    return Network(
        name="lan",
        bridge=Bridge(name=f"{prefix}b0", stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.214.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.214.{third}.100", f"10.214.{third}.200"),),
            ),
        ),
    )


def idle_guest(name: str, root: Path, iface: Interface) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", IDLE)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        interfaces=(iface,),
    )


# the network daemon tests' sandbox and supervisor (ended, and its guests released, before
# the leftover check)
sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup


class Lan:
    """A NAT network with a victim and an attacker on it, run by a real supervisor."""

    def __init__(self, sup: Supervisor, prefix: str, sandbox: str, third: int) -> None:
        self.sup, self.prefix, self.sandbox = sup, prefix, sandbox
        self.gw = f"10.214.{third}.1"
        self.victim_ip = f"10.214.{third}.10"
        self.attacker_ip = f"10.214.{third}.20"
        self.bridge = f"{prefix}b0"
        self.table = f"{prefix}_lan"

    async def start(self, root: Path, attacker_filter: str | None = None) -> None:
        await self.sup.define_network(lan(self.prefix, int(self.gw.split(".")[2])))
        await self.sup.start_network("lan")
        victim = Interface(
            type="network",
            source="lan",
            mac=VICTIM_MAC,
            ips=(IpAddress(self.victim_ip, 24),),
        )
        attacker = Interface(
            type="network",
            source="lan",
            mac=ATTACKER_MAC,
            ips=(IpAddress(self.attacker_ip, 24),),
            filterref=attacker_filter,  # type: ignore[arg-type]
        )
        await self.sup.define_domain(idle_guest("victim", root, victim))
        await self.sup.define_domain(idle_guest("attacker", root, attacker))
        await self.sup.start_domain("victim")
        await self.sup.start_domain("attacker")

    async def guest(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """A command in a guest's network namespace, as the guest's root could run it."""
        return await ash("ip", "netns", "exec", f"{self.prefix}-{name}", *argv)

    async def ping(self, name: str, dst: str, source: str | None = None) -> bool:
        via = ("-I", source) if source else ()
        done = await self.guest(name, *PING_OK, *via, dst)
        return done.returncode == 0

    async def forge(self, name: str, dst: str, source: str) -> None:
        """Pings that the attacker sends for their side effects (ARP, the host's neighbour
        table, the bridge's forwarding table), not for an answer."""
        await self.guest(name, "/bin/busybox", "ping", "-c2", "-W1", "-I", source, dst)

    async def neighbour(self, address: str) -> str | None:
        """The MAC the host (the sandbox: the guests' gateway) has for an address."""
        out = await ash("ip", "-n", self.sandbox, "-j", "neigh", "show", address, check=True)
        entries = [e for e in json.loads(out.stdout or "[]") if "lladdr" in e]
        return entries[0]["lladdr"] if entries else None

    async def fdb_port(self, mac: str) -> str | None:
        """The bridge port the bridge forwards a MAC to."""
        out = await ash("bridge", "-n", self.sandbox, "-j", "fdb", "show", "br", self.bridge)
        found = [e["ifname"] for e in json.loads(out.stdout or "[]") if e.get("mac") == mac]
        return found[0] if found else None

    def host_if(self, name: str) -> str:
        nics = self.sup.guests[name].ctx.records.net.nics  # type: ignore[union-attr]
        return nics[0].host_if

    async def counters(self) -> dict[str, int]:
        return await nftables.counters(str(nsutil.netns_path(self.sandbox)), self.table)

    async def python(self, name: str, code: str, *args: str) -> None:
        """Python in a guest's namespace, forging packets as the guest's root could."""
        done = await self.guest(name, sys.executable, "-c", textwrap.dedent(code), *args)
        assert 0 == done.returncode, done.stderr


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    return Path(prepare_busybox_root(str(tmp_path / "root")))


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "opted-out"])
async def test_address_takeover(
    sup: Supervisor, prefix: str, sandbox: str, busybox_root: Path, guarded: bool
) -> None:
    """The issue's attack: the attacker adds the victim's address and talks from it.

    Guarded, its ARP and IPv4 from that address never reach the bridge: the gateway keeps the
    victim's MAC for the victim's address, the victim keeps its traffic, and the attacker's own
    address still works. Opted out, the gateway's entry points at the attacker (the issue).
    """
    net = Lan(sup, prefix, sandbox, 71 if guarded else 72)
    await net.start(busybox_root, None if guarded else "vsv-allow-all")
    with trio.fail_after(60):
        assert await net.ping("victim", net.gw)
        assert VICTIM_MAC == await net.neighbour(net.victim_ip)
        assert await net.ping("attacker", net.gw)

        await net.guest("attacker", "ip", "addr", "add", f"{net.victim_ip}/24", "dev", "eth0")
        await net.forge("attacker", net.gw, source=net.victim_ip)
        await net.guest(
            "attacker", "/bin/busybox", "arping", "-U", "-c2", "-I", "eth0", "-s",
            net.victim_ip, net.victim_ip,
        )  # fmt: skip

        if not guarded:
            assert ATTACKER_MAC == await net.neighbour(net.victim_ip)  # taken over
            return
        assert VICTIM_MAC == await net.neighbour(net.victim_ip)
        assert await net.ping("victim", net.gw)
        assert await net.ping("attacker", net.gw, source=net.attacker_ip)
        dropped = await net.counters()
        assert dropped["IPv4 source"] > 0
        assert dropped["ARP sender address"] > 0
        assert 0 == dropped["source MAC"]


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "opted-out"])
async def test_mac_takeover(
    sup: Supervisor, prefix: str, sandbox: str, busybox_root: Path, guarded: bool
) -> None:
    """The attacker takes the victim's MAC: guarded, its frames are dropped before the bridge
    learns from them, so the bridge keeps sending the victim's frames to the victim's port;
    once the attacker takes its own MAC back, its traffic flows again."""
    net = Lan(sup, prefix, sandbox, 73 if guarded else 74)
    await net.start(busybox_root, None if guarded else "vsv-allow-all")
    victim_port, attacker_port = net.host_if("victim"), net.host_if("attacker")
    with trio.fail_after(60):
        assert await net.ping("victim", net.gw)
        assert victim_port == await net.fdb_port(VICTIM_MAC)

        async def set_mac(mac: str) -> None:
            for step in (["down"], ["address", mac], ["up"]):
                await net.guest("attacker", "ip", "link", "set", "eth0", *step)

        await set_mac(VICTIM_MAC)
        await net.forge("attacker", net.gw, source=net.attacker_ip)
        await net.guest("attacker", "ip", "addr", "add", f"{net.victim_ip}/24", "dev", "eth0")
        await net.forge("attacker", net.gw, source=net.victim_ip)

        if not guarded:
            assert attacker_port == await net.fdb_port(VICTIM_MAC)  # taken over
            return
        assert victim_port == await net.fdb_port(VICTIM_MAC)
        assert VICTIM_MAC == await net.neighbour(net.victim_ip)
        assert await net.ping("victim", net.gw)
        assert (await net.counters())["source MAC"] > 0

        await set_mac(ATTACKER_MAC)
        await net.guest("attacker", "ip", "addr", "del", f"{net.victim_ip}/24", "dev", "eth0")
        assert await net.ping("attacker", net.gw)
        assert await net.ping("victim", net.gw)


_NA = """
    import socket, struct, sys
    src, target, mac, ifname = sys.argv[1:]
    index = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.bind((src, 0, 0, index))
    tlla = bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))
    na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, target)
    for _ in range(3):
        s.sendto(na + tlla, ("ff02::1", 0, 0, index))
"""

_RA = """
    import socket, struct, sys
    src, ifname = sys.argv[1:]
    index = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.bind((src, 0, 0, index))
    s.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0), ("ff02::1", 0, 0, index))
"""

_UDP6 = """
    import socket, sys
    src, ifname = sys.argv[1:]
    index = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((src, 0, 0, index))
    s.sendto(b"from an address not mine", ("ff02::1", 9, 0, index))
"""

_DHCP = """
    import socket, sys
    sport, dport, chaddr = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    s.bind(("", sport))
    op = 1 if dport == 67 else 2
    mac = bytes.fromhex(chaddr.replace(":", ""))
    bootp = bytes([op, 1, 6, 0]) + b"\\x12\\x34\\x56\\x78" + bytes(20) + mac + bytes(10 + 192)
    s.sendto(bootp + b"\\x63\\x82\\x53\\x63\\xff", ("255.255.255.255", dport))
"""


async def _link_local(net: Lan, name: str, netns: str | None = None, dev: str = "eth0") -> str:
    """A guest's link-local address (or the bridge's: ``netns``, ``dev``), once it has passed
    duplicate address detection."""
    netns = netns or f"{net.prefix}-{name}"
    while True:
        out = await ash("ip", "-n", netns, "-6", "-j", "addr", "show", "dev", dev)
        for entry in json.loads(out.stdout or "[]"):
            for a in entry.get("addr_info", []):
                if a["local"].startswith("fe80:") and not a.get("tentative"):
                    return str(a["local"])
        await trio.sleep(0.1)


async def test_ndp_router_and_dhcp_server_messages(
    sup: Supervisor, prefix: str, sandbox: str, busybox_root: Path
) -> None:
    """IPv6 and DHCP forgeries: a neighbour advertisement for the victim's address, a source
    the attacker does not own, a router advertisement, a DHCP server's reply, a DHCP request
    for another MAC. All are dropped (each counted under its own name), while the guests' own
    IPv6 (link-local, derived from the MAC) works."""
    net = Lan(sup, prefix, sandbox, 75)
    await net.start(busybox_root)
    with trio.fail_after(60):
        victim_ll = await _link_local(net, "victim")
        attacker_ll = await _link_local(net, "attacker")
        await _link_local(net, "host", sandbox, net.bridge)
        assert victim_ll == nftables.eui64_address("fe80::/64", VICTIM_MAC)
        # the host learns the victim's link-local address (the victim's NA passes)
        ping6 = await ash(
            "ip", "netns", "exec", sandbox, "/bin/busybox", "ping6", "-c3", "-w3", "-I",
            net.bridge, victim_ll,
        )  # fmt: skip
        assert 0 == ping6.returncode, ping6.stdout + ping6.stderr
        assert VICTIM_MAC == await net.neighbour(victim_ll)

        await net.python("attacker", _NA, attacker_ll, victim_ll, ATTACKER_MAC, "eth0")
        await net.python("attacker", _RA, attacker_ll, "eth0")
        await net.guest("attacker", "ip", "-6", "addr", "add", f"{victim_ll}/64", "dev", "eth0",
                        "nodad")  # fmt: skip
        await net.python("attacker", _UDP6, victim_ll, "eth0")
        for sport, dport, chaddr in ((67, 68, ATTACKER_MAC), (68, 67, VICTIM_MAC)):
            await net.python("attacker", _DHCP, str(sport), str(dport), chaddr)

        assert VICTIM_MAC == await net.neighbour(victim_ll)
        dropped = await net.counters()
        for reason in ("NA target", "router message", "IPv6 source", "DHCP server"):
            assert dropped[reason] > 0, (reason, dropped)
        assert dropped["DHCP client MAC"] > 0, dropped
        ping6 = await ash(
            "ip", "netns", "exec", sandbox, "/bin/busybox", "ping6", "-c3", "-w3", "-I",
            net.bridge, attacker_ll,
        )  # fmt: skip
        assert 0 == ping6.returncode


async def test_clean_traffic_keeps_to_ipv4(
    sup: Supervisor, prefix: str, sandbox: str, busybox_root: Path
) -> None:
    """libvirt's clean-traffic: IPv4 and ARP work, IPv6 neither leaves nor reaches the guest."""
    net = Lan(sup, prefix, sandbox, 76)
    await net.start(busybox_root, "clean-traffic")
    with trio.fail_after(60):
        assert await net.ping("attacker", net.gw)
        attacker_ll = await _link_local(net, "attacker")
        await _link_local(net, "host", sandbox, net.bridge)
        ping6 = await ash(
            "ip", "netns", "exec", sandbox, "/bin/busybox", "ping6", "-c1", "-W1", "-I",
            net.bridge, attacker_ll,
        )  # fmt: skip
        assert 0 != ping6.returncode
        dropped = await net.counters()
        assert dropped["clean-traffic in"] > 0
        assert dropped["clean-traffic out"] > 0


# ---------------------------------------------------------------------------- below the daemon


# the sandbox host namespace of the network integration tests
host = test_net_integration.host


guest_ns = test_net_integration.guest_ns


async def in_guest(prefix: str, n: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return await ash("ip", "netns", "exec", f"{prefix}g{n}", *argv)


def nat_net(name: str, third: int) -> Network:
    return Network(
        name=name,
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.215.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.215.{third}.10", f"10.215.{third}.200"),),
            ),
        ),
    )


async def _leases(host: HostNet, table: str) -> str:
    out = await ash("ip", "netns", "exec", f"{host.prefix}h", "nft", "list", "set", "bridge",
                    table, "lease4", check=True)  # fmt: skip
    return out.stdout


async def test_leases_are_followed(host: HostNet, prefix: str) -> None:
    """DHCP from 0.0.0.0 works before the guest has an address; an address dnsmasq leases to
    the guest's MAC is let through while the lease lasts, and not once it is released."""
    book = AddressBook()
    gw = "10.215.1.1"
    leased = "10.215.1.150"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("dl", 1))
            nets = {"dl": net}
            nics = await plumb(
                host, Domain(name="gd", interfaces=(Interface(type="network", source="dl"),)),
                guest_ns(prefix, 1), nets, book,
            )  # fmt: skip
            nic = nics[0]
            assert net.guard is not None
            # dnsmasq forgets the guest's reservation: what it leases now is a dynamic address
            await net.remove_host(nic.owner)
            await in_guest(prefix, 1, "ip", "addr", "flush", "dev", "eth0")
            await in_guest(prefix, 1, "ip", "addr", "add", f"{leased}/24", "dev", "eth0")
            ping = ("-I", leased, gw)
            assert 0 != (await in_guest(prefix, 1, *PING_ONCE, *ping)).returncode  # not yet
            await in_guest(prefix, 1, "ip", "addr", "flush", "dev", "eth0")

            # a DHCP client that releases its lease when it ends (-R)
            client = await trio.lowlevel.open_process(
                ["ip", "netns", "exec", f"{prefix}g1", "/bin/busybox", "udhcpc", "-i", "eth0",
                 "-f", "-R", "-s", "/bin/true", "-r", leased],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                while f"{nic.mac} . {leased}" not in await _leases(host, net.guard):
                    await trio.sleep(0.05)  # the hook runs once dnsmasq has answered
                await in_guest(prefix, 1, "ip", "addr", "add", f"{leased}/24", "dev", "eth0")
                assert 0 == (await in_guest(prefix, 1, *PING_OK, *ping)).returncode
            finally:
                client.terminate()
                with trio.CancelScope(shield=True):
                    await client.wait()
            while f"{nic.mac} . {leased}" in await _leases(host, net.guard):
                await trio.sleep(0.05)
            assert 0 != (await in_guest(prefix, 1, *PING_ONCE, *ping)).returncode
            dropped = await nftables.counters(host.netns, net.guard)
            assert dropped["IPv4 source"] > 0

            await unplumb(host, nics, nets, book)
            await net.stop()


async def test_lease_elements_expire_with_the_lease(host: HostNet, prefix: str) -> None:
    """The hook gives a lease's element the lease's remaining time: the kernel drops it then,
    whatever happens to dnsmasq or the supervisor meanwhile."""
    table = f"{prefix}_t"
    ruleset = nftables.antispoof_ruleset(table)
    await nftables.apply_script(host.netns, nftables.replace_script(table, ruleset, "bridge"))
    hook = host.run_dir / "hook"
    hook.write_text(nftables.lease_hook_script(table, sys.executable))
    hook.chmod(0o700)
    try:
        run = ("ip", "netns", "exec", f"{prefix}h", "env", "DNSMASQ_TIME_REMAINING=2", str(hook))
        done = await ash(*run, "add", VICTIM_MAC, "10.215.2.9", "h")
        assert 0 == done.returncode, done.stderr
        six = await ash(*run[:4], "env", f"DNSMASQ_MAC={VICTIM_MAC}", str(hook), "old", "1",
                        "fd00::9", "h")  # fmt: skip
        assert 0 == six.returncode, six.stderr
        listed = (await ash(*run[:4], "nft", "list", "table", "bridge", table)).stdout
        assert f"{VICTIM_MAC} . 10.215.2.9 timeout 2s" in listed
        assert f"{VICTIM_MAC} . 0xfd000000000000000000000000000009" in listed
        with trio.fail_after(10):
            while "10.215.2.9" in (await ash(*run[:4], "nft", "list", "table", "bridge",
                                             table)).stdout:  # fmt: skip
                await trio.sleep(0.2)
    finally:
        await nftables.delete(host.netns, table, "bridge")


async def test_host_bridge_nic_has_its_own_guard(host: HostNet, prefix: str) -> None:
    """A NIC on a bridge the supervisor does not own gets a guard table of its own while it is
    plumbed. With ``<ip>`` its sources are checked; without, its MAC still is."""
    h = f"{prefix}h"
    br = f"{prefix}hb"
    sh("ip", "-n", h, "link", "add", br, "type", "bridge", check=True)
    sh("ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", br, check=True)
    sh("ip", "-n", h, "link", "set", br, "up", check=True)
    book = AddressBook()
    with_ip = Interface(type="bridge", source=br, ips=(IpAddress("192.0.2.10", 24),))
    without = Interface(type="bridge", source=br, mac=ATTACKER_MAC)
    with trio.fail_after(60):
        one = await plumb(host, Domain(name="gb1", interfaces=(with_ip,)), guest_ns(prefix, 1),
                          {}, book)  # fmt: skip
        two = await plumb(host, Domain(name="gb2", interfaces=(without,)), guest_ns(prefix, 2),
                          {}, book)  # fmt: skip
        tables = [n.guard_table for n in (*one, *two)]
        assert [f"{prefix}_{one[0].host_if}", f"{prefix}_{two[0].host_if}"] == tables
        assert not two[0].ip_checked
        await in_guest(prefix, 2, "ip", "addr", "add", "192.0.2.20/24", "dev", "eth0")
        assert 0 == (await in_guest(prefix, 1, *PING_OK, "192.0.2.1")).returncode
        assert 0 == (await in_guest(prefix, 2, *PING_OK, "192.0.2.1")).returncode  # unchecked
        await in_guest(prefix, 1, "ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")
        forged = (*PING_ONCE, "-I", "192.0.2.11", "192.0.2.1")
        assert 0 != (await in_guest(prefix, 1, *forged)).returncode
        for step in (["down"], ["address", VICTIM_MAC], ["up"]):
            await in_guest(prefix, 2, "ip", "link", "set", "eth0", *step)
        assert 0 != (await in_guest(prefix, 2, *PING_ONCE, "192.0.2.1")).returncode
        first = await nftables.counters(host.netns, tables[0] or "")
        second = await nftables.counters(host.netns, tables[1] or "")
        assert first["IPv4 source"] > 0
        assert second["source MAC"] > 0
        await unplumb(host, one, {}, book)
        await unplumb(host, two, {}, book)
    listed = (await ash("ip", "netns", "exec", h, "nft", "list", "tables", "bridge")).stdout
    assert prefix not in listed


async def test_takeover_keeps_ports_guarded(host: HostNet, prefix: str) -> None:
    """A network left up for a successor (``--keep-guests``) and taken over in place keeps its
    guard's elements through the reload: the port is never unguarded."""
    book = AddressBook()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("tk", 3))
            nics = await plumb(
                host, Domain(name="gt", interfaces=(Interface(type="network", source="tk"),)),
                guest_ns(prefix, 1), {"tk": net}, book,
            )  # fmt: skip
            host.keep = True
            await net.stop()
            host.keep = False
            again: RunningNetwork = await nursery.start(
                functools.partial(run_network, host, nat_net("tk", 3), adopt=True)
            )
            assert again.guard is not None
            listed = (await ash("ip", "netns", "exec", f"{prefix}h", "nft", "list", "set",
                                "bridge", again.guard, "ports")).stdout  # fmt: skip
            assert f'"{nics[0].host_if}"' in listed
            await in_guest(prefix, 1, "ip", "addr", "add", "10.215.3.99/24", "dev", "eth0")
            forged = (*PING_ONCE, "-I", "10.215.3.99", "10.215.3.1")
            assert 0 != (await in_guest(prefix, 1, *forged)).returncode
            assert 0 == (await in_guest(prefix, 1, *PING_OK, "10.215.3.1")).returncode
            await unplumb(host, nics, {"tk": again}, book)
            listed = (await ash("ip", "netns", "exec", f"{prefix}h", "nft", "list", "set",
                                "bridge", again.guard, "ports")).stdout  # fmt: skip
            assert nics[0].host_if not in listed
            await again.stop()


async def test_isolated_ports_cannot_reach_each_other(host: HostNet, prefix: str) -> None:
    """``<port isolated='yes'/>``: two guests on the network reach the gateway, not each other
    (the bridge port flag, set on each guest's port before the guest's end comes up)."""
    book = AddressBook()
    network = attrs.evolve(nat_net("iso", 4), port_isolated=True)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, network)
            nets = {"iso": net}
            nics = [
                await plumb(
                    host,
                    Domain(name=f"gi{n}", interfaces=(Interface(type="network", source="iso"),)),
                    guest_ns(prefix, n),
                    nets,
                    book,
                )
                for n in (1, 2)
            ]
            addr = [nic[0].addresses[0].split("/")[0] for nic in nics]
            for n in (1, 2):
                assert 0 == (await in_guest(prefix, n, *PING_OK, "10.215.4.1")).returncode
            assert 0 != (await in_guest(prefix, 1, *PING_ONCE, addr[1])).returncode
            assert 0 != (await in_guest(prefix, 2, *PING_ONCE, addr[0])).returncode
            shown = await ash("bridge", "-n", f"{prefix}h", "-d", "-j", "link", "show")
            flags = {e["ifname"]: e.get("isolated") for e in json.loads(shown.stdout)}
            assert {True} == {flags[nic[0].host_if] for nic in nics}
            for nic in nics:
                await unplumb(host, nic, nets, book)
            await net.stop()


async def test_port_guarded_under_the_name_it_got(host: HostNet, prefix: str) -> None:
    """The guard is put in under the name the worker picks for the link: when the usual name is
    taken by another interface, the port gets another name, the guard follows it, and the
    interface that holds the usual name is left alone (never listed, never taken out)."""
    book = AddressBook()
    dom = Domain(name="gn", interfaces=(Interface(type="network", source="nm"),))
    taken = names.host_ifname(prefix, "gn", 0, 0)
    sh("ip", "-n", f"{prefix}h", "link", "add", taken, "type", "bridge", check=True)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("nm", 5))
            assert net.guard is not None
            nics = await plumb(host, dom, guest_ns(prefix, 1), {"nm": net}, book)
            assert taken != nics[0].host_if
            listed = (await ash("ip", "netns", "exec", f"{prefix}h", "nft", "list", "set",
                                "bridge", net.guard, "ports")).stdout  # fmt: skip
            assert f'"{nics[0].host_if}"' in listed
            assert f'"{taken}"' not in listed
            assert 0 == (await in_guest(prefix, 1, *PING_OK, "10.215.5.1")).returncode
            await unplumb(host, nics, {"nm": net}, book)
            await net.stop()


async def test_a_nic_refused_its_name_leaves_the_holder_guarded(host: HostNet, prefix: str) -> None:
    """A second guest whose ``<target dev>`` names a running guest's port is refused, and the
    running guest's port stays guarded (the refused NIC never touched the guard's elements)."""
    book = AddressBook()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, nat_net("td", 6))
            assert net.guard is not None
            first = await plumb(
                host, Domain(name="ga", interfaces=(Interface(type="network", source="td"),)),
                guest_ns(prefix, 1), {"td": net}, book,
            )  # fmt: skip
            port = first[0].host_if
            thief = Interface(type="network", source="td", target_dev=port)
            with pytest.raises(ConflictError, match=port):
                await plumb(host, Domain(name="gb", interfaces=(thief,)), guest_ns(prefix, 2),
                            {"td": net}, book)  # fmt: skip
            listed = (await ash("ip", "netns", "exec", f"{prefix}h", "nft", "list", "set",
                                "bridge", net.guard, "ports")).stdout  # fmt: skip
            assert f'"{port}"' in listed
            await in_guest(prefix, 1, "ip", "addr", "add", "10.215.6.99/24", "dev", "eth0")
            forged = (*PING_ONCE, "-I", "10.215.6.99", "10.215.6.1")
            assert 0 != (await in_guest(prefix, 1, *forged)).returncode
            await unplumb(host, first, {"td": net}, book)
            await net.stop()
