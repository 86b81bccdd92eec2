"""A network's DNS as libvirt serves it, as root: upstream resolution, forwarders, records.

Every test builds its world in namespaces it makes: a sandbox ``<prefix>h`` standing for the
host, where the network and its dnsmasq run; an upstream resolver (a dnsmasq of the test's own)
in ``<prefix>u``, reached from the sandbox over a veth, standing for the host's resolvers; and
guests ``<prefix>g<N>``. The network's dnsmasq learns the upstream resolver from a resolv.conf
the test writes and hands to ``run_network`` (``resolv_file``, as the daemon derives it from
the host namespace), so no query ever leaves the namespaces the test made.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from supervisor.model import (
    AddressRange,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Domain,
    Forward,
    Interface,
    Network,
    NetworkIp,
)
from supervisor.net.networks import HostNet, RunningNetwork, run_network
from supervisor.net.nics import AddressBook, plumb, unplumb

pytestmark = pytest.mark.root

UPSTREAM = "198.51.100.53"
#: what the upstream resolver answers (and the network's dnsmasq does not know by itself)
UPSTREAM_NAMES = {
    "www.upstream.example": "203.0.113.7",
    "plainname": "203.0.113.8",
    "x.lan.test": "203.0.113.9",
    "www.fwd.example": "203.0.113.10",
    "www.kept.example": "203.0.113.11",
}


def sh(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


async def ash(*argv: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(functools.partial(sh, *argv))


@pytest.fixture
def upstream(prefix: str, tmp_path: Path) -> Iterator[Path]:
    """The sandbox host ``<prefix>h`` wired to a resolver in ``<prefix>u``; yields a
    resolv.conf naming that resolver. Everything is removed afterwards, also on failure."""
    h, u = f"{prefix}h", f"{prefix}u"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for ns in (h, u):
            sh("ip", "netns", "add", ns, check=True)
            sh("ip", "-n", ns, "link", "set", "lo", "up", check=True)
        sh("ip", "-n", h, "link", "add", f"{prefix}u0", "type", "veth", "peer", "name",
           f"{prefix}u1", "netns", u, check=True)  # fmt: skip
        sh("ip", "-n", h, "addr", "add", "198.51.100.1/24", "dev", f"{prefix}u0", check=True)
        sh("ip", "-n", u, "addr", "add", f"{UPSTREAM}/24", "dev", f"{prefix}u1", check=True)
        sh("ip", "-n", h, "link", "set", f"{prefix}u0", "up", check=True)
        sh("ip", "-n", u, "link", "set", f"{prefix}u1", "up", check=True)
        records = [f"--host-record={name},{ip}" for name, ip in UPSTREAM_NAMES.items()]
        pid = tmp_path / f"{prefix}-upstream.pid"
        with (tmp_path / "upstream.log").open("w") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", u, "/usr/sbin/dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
             f"--listen-address={UPSTREAM}", "--user=root", f"--pid-file={pid}",
             "--log-facility=-", "--log-queries", *records],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {UPSTREAM}\n")
        yield resolv
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for ns in (u, h):
            sh("ip", "netns", "del", ns)
        for line in sh("ip", "netns", "list").stdout.splitlines():
            if line.startswith(prefix):
                sh("ip", "netns", "del", line.split()[0])


@pytest.fixture
async def host(prefix: str, tmp_path: Path, upstream: Path) -> AsyncIterator[HostNet]:
    (tmp_path / "run").mkdir()
    hn = await HostNet.open(prefix, f"/run/netns/{prefix}h", tmp_path / "run")
    try:
        yield hn
    finally:
        await hn.aclose()


def nat(name: str, third: int, **kw: object) -> Network:
    return Network(
        name=name,
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.216.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.216.{third}.100", f"10.216.{third}.200"),),
            ),
        ),
        **kw,  # type: ignore[arg-type]
    )


async def lookup(prefix: str, server: str, name: str, kind: str = "a") -> str:
    """busybox nslookup in the guest, asking the network's dnsmasq; its output."""
    done = await ash("ip", "netns", "exec", f"{prefix}g1", "/bin/busybox", "nslookup",
                     f"-type={kind}", name, server)  # fmt: skip
    return done.stdout + done.stderr


def answers(output: str) -> list[str]:
    """The addresses of the answer section of busybox nslookup's output."""
    after = output.split("Name:", 1)[1] if "Name:" in output else ""
    return re.findall(r"Address: (\S+)", after)


class Guest:
    """A network with one guest on it; the guest asks the network's dnsmasq."""

    def __init__(self, host: HostNet, prefix: str, network: Network) -> None:
        self.host, self.prefix, self.network = host, prefix, network
        self.gateway = network.ips[0].address

    async def run(self, nursery: trio.Nursery, resolv_file: str | None) -> None:
        self.net: RunningNetwork = await nursery.start(
            functools.partial(run_network, self.host, self.network, resolv_file=resolv_file)
        )
        sh("ip", "netns", "add", f"{self.prefix}g1", check=True)
        self.book = AddressBook()
        dom = Domain(name="g1", interfaces=(Interface(type="network", source=self.network.name),))
        self.nics = await plumb(
            self.host, dom, f"/run/netns/{self.prefix}g1", {self.network.name: self.net}, self.book
        )

    async def stop(self) -> None:
        await unplumb(self.host, self.nics, {self.network.name: self.net}, self.book)
        await self.net.stop()
        sh("ip", "netns", "del", f"{self.prefix}g1", check=True)

    async def a(self, name: str) -> list[str]:
        return answers(await lookup(self.prefix, self.gateway, name))


async def test_nat_guest_resolves_upstream_names(
    host: HostNet, prefix: str, upstream: Path
) -> None:
    """As libvirt's: the network's dnsmasq forwards what it cannot answer to the host's
    resolvers (here the resolv.conf naming the test's upstream resolver), and answers its own
    ``<dns><host>``, ``<srv>`` and ``<txt>`` records and its guests' names itself."""
    network = nat(
        "dn",
        1,
        domain_name="lan.test",
        dns_hosts=(DnsHost("10.216.1.50", ("web1", "www.lan.test")),),
        dns_srvs=(DnsSrv("http", "tcp", "lan.test", "web1.lan.test", 8080, 10, 20),),
        dns_txts=(DnsTxt("motd.lan.test", "hello from the network"),),
    )
    g = Guest(host, prefix, network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await g.run(nursery, str(upstream))
            assert ["203.0.113.7"] == await g.a("www.upstream.example")
            assert ["203.0.113.9"] == await g.a("x.lan.test")  # not localOnly: forwarded
            assert ["10.216.1.50"] == await g.a("web1")
            assert ["10.216.1.50"] == await g.a("www.lan.test")
            own = g.nics[0].addresses[0].split("/")[0]
            assert [own] == await g.a("g1.lan.test")  # a guest's name, expand-hosts
            srv = await lookup(prefix, g.gateway, "_http._tcp.lan.test", "srv")
            assert "10 20 8080 web1.lan.test" in srv, srv
            txt = await lookup(prefix, g.gateway, "motd.lan.test", "txt")
            assert "hello from the network" in txt, txt
            await g.stop()


async def test_forwarders_local_only_and_plain_names(
    host: HostNet, prefix: str, upstream: Path
) -> None:
    """``<forwarder domain addr>`` sends a domain to a server even with no upstream at all;
    ``<forwarder domain>`` alone keeps it local; ``<domain localOnly='yes'>`` keeps the
    network's domain local; ``forwardPlainNames='no'`` keeps names without a dot local."""
    network = nat(
        "df",
        2,
        domain_name="lan.test",
        domain_local_only=True,
        dns_forward_plain_names=False,
        dns_forwarders=(
            DnsForwarder(addr=UPSTREAM, domain="fwd.example"),
            DnsForwarder(domain="kept.example"),
        ),
    )
    g = Guest(host, prefix, network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await g.run(nursery, None)  # no upstream resolv.conf: only the forwarder
            assert ["203.0.113.10"] == await g.a("www.fwd.example")
            assert [] == await g.a("www.kept.example")
            assert [] == await g.a("www.upstream.example")  # nothing else goes out
            assert [] == await g.a("x.lan.test")
            await g.stop()

    # the same names with the host's resolvers and no local-only settings: all answered
    network = nat("dg", 3, domain_name="lan.test")
    g = Guest(host, prefix, network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await g.run(nursery, str(upstream))
            assert ["203.0.113.8"] == await g.a("plainname")
            assert ["203.0.113.11"] == await g.a("www.kept.example")
            await g.stop()


async def test_a_forwarder_without_domain_replaces_the_host_resolvers(
    host: HostNet, prefix: str, upstream: Path, tmp_path: Path
) -> None:
    """``<forwarder addr>`` alone takes every query the network cannot answer (``no-resolv``,
    as libvirt): the host's resolv.conf, here naming a resolver that does not exist, is not
    read."""
    nowhere = tmp_path / "nowhere.conf"
    nowhere.write_text("nameserver 198.51.100.99\n")
    network = nat("dw", 4, dns_forwarders=(DnsForwarder(addr=UPSTREAM),))
    g = Guest(host, prefix, network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await g.run(nursery, str(nowhere))
            assert ["203.0.113.7"] == await g.a("www.upstream.example")
            await g.stop()


async def test_dns_disabled_keeps_dhcp(host: HostNet, prefix: str, upstream: Path) -> None:
    """``<dns enable='no'>``: nothing answers DNS on the network, DHCP still does."""
    network = nat("dd", 5, dns_enable=False)
    g = Guest(host, prefix, network)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await g.run(nursery, str(upstream))
            out = await lookup(prefix, g.gateway, "www.upstream.example")
            assert [] == answers(out), out
            own = g.nics[0].addresses[0].split("/")[0]
            leased = await ash("ip", "netns", "exec", f"{prefix}g1", "/bin/busybox", "udhcpc",
                               "-i", "eth0", "-n", "-q", "-t", "5", "-s", "/bin/true")  # fmt: skip
            assert f"lease of {own} obtained" in leased.stdout + leased.stderr
            await g.stop()
