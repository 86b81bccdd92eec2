"""Networks through the supervisor: real guests on a NAT network, DHCP, DNS, restart survival.

Everything host-side happens in a sandbox network namespace the test creates.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from supervisor import nsutil
from supervisor.daemon import Supervisor
from supervisor.errors import ConflictError, InvalidDocument
from supervisor.guest.cgroups import detect_layout, find_leftovers
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
from supervisor.xml import format_domain, format_network
from tests.fake_supervisor import short_tmpdir

pytestmark = pytest.mark.root

DHCP_INIT = (
    "ip addr flush dev eth0; "
    "udhcpc -i eth0 -n -q -t 10 -T 1 -s /usr/share/udhcpc/default.script >/tmp/dhcp.log 2>&1; "
    "ip -4 -o addr show dev eth0 > /tmp/addr.tmp; mv /tmp/addr.tmp /tmp/addr; "
    "trap 'exit 0' TERM; while :; do sleep 0.1; done"
)


def lan(prefix: str, third: int, last: int = 150) -> Network:
    return Network(
        name="lan",
        bridge=Bridge(name=f"{prefix}b0", stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.213.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.213.{third}.100", f"10.213.{third}.{last}"),),
            ),
        ),
    )


def nic_guest(name: str, root: Path, script: str) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        interfaces=(Interface(type="network", source="lan"),),
    )


@pytest.fixture
def sandbox(prefix: str) -> Iterator[str]:
    """A network namespace standing for the host; removed afterwards."""
    name = f"{prefix}-sbx"
    nsutil.create_netns(name)
    try:
        yield name
    finally:
        nsutil.delete_netns(name)


@pytest.fixture
async def sup(
    tmp_path: Path, prefix: str, sandbox: str, nursery: trio.Nursery
) -> AsyncIterator[Supervisor]:
    s = Supervisor(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        prefix=prefix,
        host_netns=str(nsutil.netns_path(sandbox)),
        shutdown_timeout=3,
    )
    running = trio.CancelScope()
    ended = trio.Event()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with running:
                await s.run(task_status=task_status)
        finally:
            ended.set()

    await nursery.start(run)
    try:
        yield s
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            for g in list(s.guests.values()):
                if g.status().state != "SHUTOFF":
                    await s.destroy_domain(g.domain.name)
                while g.busy:  # a guest that ended by itself may still be being released
                    await trio.sleep(0.02)
            if s.net is not None:
                await s.net.stop_all()
            # the supervisor's end removes what lives as long as it does (a console keeper)
            running.cancel()
            await ended.wait()
        assert find_leftovers(detect_layout(), prefix) == []
        assert nsutil.list_netns(prefix) == [sandbox]


def _link_index(ns: str, name: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", name], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(out)[0]["ifindex"])


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "/bin/busybox", *cmd],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_two_guests_dhcp_ping_dns(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """Two guests get addresses by DHCP, ping each other and the bridge; leases and DNS work."""
    await sup.define_network(lan(prefix, 61))
    await sup.start_network("lan")
    roots = {n: Path(prepare_busybox_root(str(tmp_path / f"root-{n}"))) for n in ("ga", "gb")}
    for n, root in roots.items():
        await sup.define_domain(nic_guest(n, root, DHCP_INIT))
    async with trio.open_nursery() as nursery:
        for n in roots:
            nursery.start_soon(sup.start_domain, n)
    addr: dict[str, str] = {}
    with trio.fail_after(20):
        for n, root in roots.items():
            while not (root / "tmp" / "addr").exists():
                await trio.sleep(0.05)
            fields = (root / "tmp" / "addr").read_text().split()
            addr[n] = fields[fields.index("inet") + 1].split("/")[0]
    assert all(a.startswith("10.213.61.1") for a in addr.values()), addr
    assert addr["ga"] != addr["gb"]
    dhcp_log = (roots["ga"] / "tmp" / "dhcp.log").read_text()
    assert "lease of" in dhcp_log or "obtained" in dhcp_log, dhcp_log
    ping = in_ns(f"{prefix}-ga", "ping", "-c1", "-W2", addr["gb"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for n in roots:
        gw = in_ns(f"{prefix}-{n}", "ping", "-c1", "-W2", "10.213.61.1")
        assert gw.returncode == 0, gw.stdout
    leases = {(lease.ip, lease.domain is not None) for lease in sup.network_leases("lan")}
    assert {(addr["ga"], True), (addr["gb"], True)} <= leases
    dns = in_ns(f"{prefix}-ga", "nslookup", "gb", "10.213.61.1")
    assert addr["gb"] in dns.stdout, dns.stdout + dns.stderr


async def test_isolated_network_table_lifetime(sup: Supervisor, prefix: str, sandbox: str) -> None:
    """The NAT network's nftables table exists exactly while the network runs."""

    def tables() -> str:
        return subprocess.run(
            ["ip", "netns", "exec", sandbox, "nft", "list", "tables"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    await sup.define_network(lan(prefix, 62))
    assert prefix not in tables()
    await sup.start_network("lan")
    assert prefix in tables()
    await sup.destroy_network("lan")
    assert prefix not in tables()


# ---------------------------------------------------------------------------- restart survival


class Daemon:
    def __init__(self, base: Path, prefix: str, *start: str, extra: tuple[str, ...] = ()) -> None:
        self.log = open(base / "daemon.log", "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "supervisor", "daemon",
                "--state-dir", str(base / "state"), "--run-dir", str(base / "run"),
                "--prefix", prefix, "--netns", f"{prefix}-sbx",
                "--socket", str(base / "rw.sock"), "--ro-socket", str(base / "ro.sock"),
                "--shutdown-timeout", "3",
                *extra,
                *(("--start", *start) if start else ()),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.base = base

    def vsv(self, *args: str) -> object:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(self.base / "rw.sock"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(done.stdout)

    def wait_running(self, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.vsv("domstate", name, "--json")
                if isinstance(state, dict) and state.get("state") == "RUNNING":
                    return
            except subprocess.CalledProcessError:
                pass
            assert time.monotonic() < deadline, (self.base / "daemon.log").read_text()
            time.sleep(0.1)

    def close(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def test_sigkill_keeps_guest_network_and_allocations(prefix: str) -> None:
    """After SIGKILL, the restarted supervisor re-attaches the guest: same address, reachable,
    and that address is not handed to a new guest."""
    base = short_tmpdir()
    root = Path(prepare_busybox_root(str(base / "rootfs")))
    loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    (base / "lan.xml").write_text(format_network(lan(prefix, 63)))
    (base / "g1.xml").write_text(format_domain(nic_guest("g1", root, loop)))
    (base / "g2.xml").write_text(format_domain(nic_guest("g2", root, loop)))
    daemons: list[Daemon] = []
    try:
        first = Daemon(base, prefix, str(base / "lan.xml"), str(base / "g1.xml"))
        daemons.append(first)
        first.wait_running("g1")
        before = first.vsv("domifaddr", "g1", "--json")
        assert isinstance(before, list)
        g1_ip = before[0]["addresses"][0]["address"]
        first.close(signal.SIGKILL)

        second = Daemon(base, prefix)
        daemons.append(second)
        second.wait_running("g1")
        nets = second.vsv("net-list", "--json")
        assert isinstance(nets, list)
        assert [(n["name"], n["active"]) for n in nets] == [("lan", True)]
        ping = in_ns(f"{prefix}-sbx", "ping", "-c1", "-W2", g1_ip)
        assert ping.returncode == 0, ping.stdout
        second.vsv("define", str(base / "g2.xml"), "--json")
        second.vsv("start", "g2", "--json")
        g2 = second.vsv("domifaddr", "g2", "--json")
        assert isinstance(g2, list)
        assert g2[0]["addresses"][0]["address"] != g1_ip
        assert second.close() == 0
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            if not d.log.closed:
                d.log.close()
        if nsutil.netns_exists(f"{prefix}-sbx"):
            nsutil.delete_netns(f"{prefix}-sbx")
        shutil.rmtree(base, ignore_errors=True)
    assert find_leftovers(detect_layout(), prefix) == []
    assert nsutil.list_netns(prefix) == []


def test_keep_guests_upgrade_restart(prefix: str) -> None:
    """--keep-guests: SIGTERM leaves the guest running and reachable; the next supervisor
    re-adopts it with its address, and a normal stop then leaves nothing."""
    base = short_tmpdir()
    root = Path(prepare_busybox_root(str(base / "rootfs")))
    loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    (base / "lan.xml").write_text(format_network(lan(prefix, 66)))
    (base / "g1.xml").write_text(format_domain(nic_guest("g1", root, loop)))
    daemons: list[Daemon] = []
    try:
        first = Daemon(
            base, prefix, str(base / "lan.xml"), str(base / "g1.xml"), extra=("--keep-guests",)
        )
        daemons.append(first)
        first.wait_running("g1")
        rows = first.vsv("domifaddr", "g1", "--json")
        assert isinstance(rows, list)
        g1_ip = rows[0]["addresses"][0]["address"]
        bridge_before = _link_index(f"{prefix}-sbx", f"{prefix}b0")
        assert first.close(signal.SIGTERM) == 0
        # between supervisors: the guest still runs and still answers through the bridge
        assert in_ns(f"{prefix}-sbx", "ping", "-c1", "-W2", g1_ip).returncode == 0
        second = Daemon(base, prefix)
        daemons.append(second)
        second.wait_running("g1")
        again = second.vsv("domifaddr", "g1", "--json")
        assert isinstance(again, list)
        assert again[0]["addresses"][0]["address"] == g1_ip
        assert in_ns(f"{prefix}-sbx", "ping", "-c1", "-W2", g1_ip).returncode == 0
        # taken over in place: the same bridge (the guests' ports never left it)
        assert _link_index(f"{prefix}-sbx", f"{prefix}b0") == bridge_before
        assert second.close() == 0
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            if not d.log.closed:
                d.log.close()
        if nsutil.netns_exists(f"{prefix}-sbx"):
            nsutil.delete_netns(f"{prefix}-sbx")
        shutil.rmtree(base, ignore_errors=True)
    assert find_leftovers(detect_layout(), prefix) == []
    assert nsutil.list_netns(prefix) == []


async def test_hundred_nic_guests_concurrently(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """100 guests with a NIC each on one bridge, started and stopped concurrently: each gets
    its own address, and nothing is left (links, namespaces, allocations, cgroups)."""
    await sup.define_network(lan(prefix, 67, last=250))
    await sup.start_network("lan")
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    loop = "trap 'exit 0' TERM; while :; do sleep 1; done"
    names = [f"n{i:03d}" for i in range(100)]
    for n in names:
        await sup.define_domain(nic_guest(n, root, loop))
    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(sup.start_domain, n)
    addresses = {
        a["address"] for n in names for row in sup.domain_interfaces(n) for a in row["addresses"]
    }
    assert len(addresses) == 100
    links = subprocess.run(
        ["ip", "-n", sandbox, "-o", "link", "show", "master", f"{prefix}b0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(links) == 100
    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(sup.destroy_domain, n)
    assert sup.net is not None
    assert list(sup.net.service.allocations().on("lan")) == []
    left = subprocess.run(
        ["ip", "-n", sandbox, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.split(": ")[1].split("@")[0] for line in left.splitlines()] == [
        "lo",
        f"{prefix}b0",
    ]
    assert nsutil.list_netns(prefix) == [sandbox]


async def test_net_destroy_then_start_replugs_running_guests(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """net-destroy leaves a running guest unplugged but keeps its address; net-start plugs it
    back, reachable at the same address (libvirt leaves it unplugged)."""
    await sup.define_network(lan(prefix, 68))
    await sup.start_network("lan")
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(nic_guest("p1", root, "trap 'exit 0' TERM; while :; do sleep 1; done"))
    await sup.start_domain("p1")
    ip = sup.domain_interfaces("p1")[0]["addresses"][0]["address"]
    assert in_ns(sandbox, "ping", "-c1", "-W2", ip).returncode == 0
    await sup.destroy_network("lan")
    assert sup.domain_status("p1").state == "RUNNING"
    assert sup.net is not None
    assert [a.address for a in sup.net.service.allocations().on("lan")] == [ip]
    await sup.start_network("lan")
    assert in_ns(sandbox, "ping", "-c1", "-W2", ip).returncode == 0
    await sup.destroy_domain("p1")
    assert list(sup.net.service.allocations().on("lan")) == []


async def test_vserver_ip_isolation_through_the_supervisor(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A vserver-dialect guest with <interface type='vserver'>: only its address, reaches a
    test host beyond the uplink, cannot bind another address; nothing is left after it stops."""
    peer = f"{prefix}-peer"
    uplink = f"{prefix}up"

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    nsutil.create_netns(peer)
    try:
        sh("ip", "-n", sandbox, "link", "add", uplink, "type", "veth", "peer", "name",
           f"{prefix}wr", "netns", peer)  # fmt: skip
        sh("ip", "-n", sandbox, "addr", "add", "10.213.91.1/24", "dev", uplink)
        sh("ip", "-n", sandbox, "link", "set", uplink, "up")
        sh("ip", "-n", peer, "addr", "add", "10.213.91.2/24", "dev", f"{prefix}wr")
        sh("ip", "-n", peer, "link", "set", f"{prefix}wr", "up")
        root = Path(prepare_busybox_root(str(tmp_path / "root")))
        script = (
            "ip -4 -o addr show > /tmp/addr; "
            "if ping -c1 -W3 10.213.91.2 >/dev/null 2>&1; then echo ok > /tmp/ping; "
            "else echo fail > /tmp/ping; fi; "
            "trap 'exit 0' TERM; while :; do sleep 0.1; done"
        )
        domain = Domain(
            name="gv",
            type="vserver",
            id=4301,
            os=OsSpec(init="/bin/sh", initargs=("-c", script)),
            filesystems=(Filesystem(source=str(root), target="/"),),
            interfaces=(
                Interface(type="vserver", source=uplink, ips=(IpAddress("10.213.91.10", 24),)),
            ),
        )
        await sup.define_domain(domain)
        await sup.start_domain("gv")
        with trio.fail_after(10):
            while not (root / "tmp" / "ping").exists():
                await trio.sleep(0.05)
        assert (root / "tmp" / "ping").read_text().strip() == "ok"
        addrs = [w for w in (root / "tmp" / "addr").read_text().split() if w.startswith("10.")]
        assert addrs == ["10.213.91.10/24"]
        rows = sup.domain_interfaces("gv")
        assert (rows[0]["mode"], [a["address"] for a in rows[0]["addresses"]]) == (
            "routed-veth",
            ["10.213.91.10"],
        )
        bind = subprocess.run(
            ["ip", "netns", "exec", f"{prefix}-gv", sys.executable, "-c",
             "import socket,errno\ns=socket.socket()\ntry: s.bind(('10.213.91.11',0))\n"
             "except OSError as e: print(errno.errorcode[e.errno])"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert bind.stdout.strip() == "EADDRNOTAVAIL"
        await sup.destroy_domain("gv")
        tables = subprocess.run(
            ["ip", "netns", "exec", sandbox, "nft", "list", "tables"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert prefix not in tables
    finally:
        nsutil.delete_netns(peer)


async def test_the_gateway_keeps_its_mac_while_guests_come_and_go(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A network gets a bridge MAC of its own at definition (kept by a redefinition), so the
    guests' gateway address does not follow the lowest MAC of the bridge's ports."""
    defined = await sup.define_network(lan(prefix, 69))
    assert defined.mac is not None
    assert (await sup.define_network(lan(prefix, 69))).mac == defined.mac
    assert f'<mac address="{defined.mac}"/>' in format_network(sup.get_network("lan"))
    await sup.start_network("lan")

    def bridge_mac() -> str:
        out = subprocess.run(
            ["ip", "-n", sandbox, "-j", "link", "show", f"{prefix}b0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return str(json.loads(out)[0]["address"])

    assert bridge_mac() == defined.mac
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    names = [f"m{i}" for i in range(4)]
    for name in names:
        await sup.define_domain(
            nic_guest(name, root, "trap 'exit 0' TERM; while :; do sleep 1; done")
        )
        await sup.start_domain(name)
        assert bridge_mac() == defined.mac
    for name in names:
        await sup.destroy_domain(name)
        assert bridge_mac() == defined.mac


async def test_a_successor_takes_a_network_over_in_place_unless_it_was_redefined(
    tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A supervisor started after one that left its network up keeps that very bridge; a
    network redefined meanwhile is built again from the new definition instead."""
    host_netns = str(nsutil.netns_path(sandbox))

    def make() -> Supervisor:
        return Supervisor(
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            prefix=prefix,
            host_netns=host_netns,
        )

    scopes: list[tuple[trio.CancelScope, trio.Event]] = []

    async def successor_of(sup: Supervisor) -> Supervisor:
        assert sup.net is not None
        sup.net.detach()  # as `vsv daemon --keep-guests` leaves it
        scope, ended = scopes[-1]
        scope.cancel()
        await ended.wait()
        return make()

    async with trio.open_nursery() as nursery:

        async def serve(s: Supervisor, *, task_status: trio.TaskStatus[None]) -> None:
            ended = trio.Event()
            try:
                with trio.CancelScope() as scope:
                    scopes.append((scope, ended))
                    await s.run(task_status=task_status)
            finally:
                ended.set()

        first = make()
        await nursery.start(serve, first)
        await first.define_network(lan(prefix, 70))
        await first.start_network("lan")
        bridge = _link_index(sandbox, f"{prefix}b0")

        second = await successor_of(first)
        await nursery.start(serve, second)
        assert [n.name for n in second.list_networks() if n.active] == ["lan"]
        assert _link_index(sandbox, f"{prefix}b0") == bridge  # the same bridge

        await second.define_network(lan(prefix, 70, last=140))  # a smaller DHCP range
        third = await successor_of(second)
        await nursery.start(serve, third)
        assert [n.name for n in third.list_networks() if n.active] == ["lan"]
        assert _link_index(sandbox, f"{prefix}b0") != bridge  # built again
        await third.destroy_network("lan")
        nursery.cancel_scope.cancel()


async def test_a_clean_stop_leaves_no_network_files(
    tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A supervisor that stops cleanly (its guests shut down, its networks stopped) leaves
    nothing in its run dir's ``net/``: no dnsmasq config, hosts, leases, log, pid or hook."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    run_dir = tmp_path / "run"
    s = Supervisor(
        state_dir=tmp_path / "state",
        run_dir=run_dir,
        prefix=prefix,
        host_netns=str(nsutil.netns_path(sandbox)),
        shutdown_timeout=3,
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(s.run)
            await s.define_network(lan(prefix, 62))
            await s.start_network("lan")
            await s.define_domain(nic_guest("gf", root, DHCP_INIT))
            await s.start_domain("gf")
            while not (root / "tmp" / "addr").exists():
                await trio.sleep(0.05)
            assert list((run_dir / "net").iterdir())  # dnsmasq's files while it runs
            await s.shutdown_all(3)
            nursery.cancel_scope.cancel()
    assert [] == sorted(p.name for p in (run_dir / "net").iterdir())
    assert find_leftovers(detect_layout(), prefix) == []


async def test_static_addresses_checked_at_define(sup: Supervisor, prefix: str) -> None:
    """A second domain with the first one's static address, the gateway's, or a prefix other
    than the network's is refused at define (409 or 400 naming the field), and so is a
    net-define whose range would now cover a domain's address; none of it waits for a start."""
    await sup.define_network(lan(prefix, 63))

    def static(name: str, address: str, prefix_len: int | None = None) -> Domain:
        iface = Interface(type="network", source="lan", ips=(IpAddress(address, prefix_len),))
        return Domain(name=name, type="lxc", interfaces=(iface,))

    await sup.define_domain(static("sa", "10.213.63.10"))
    with pytest.raises(ConflictError, match="already domain sa's"):
        await sup.define_domain(static("sb", "10.213.63.10"))
    with pytest.raises(ConflictError, match="the guests' gateway"):
        await sup.define_domain(static("sb", "10.213.63.1"))
    with pytest.raises(InvalidDocument, match=r"ip\[1\]/@prefix: prefix 16 disagrees"):
        await sup.define_domain(static("sb", "10.213.63.11", 16))
    assert "sb" not in sup.guests
    await sup.define_domain(static("sb", "10.213.63.11", 24))
    wider = lan(prefix, 63)
    wider = attrs.evolve(
        wider,
        ips=(
            attrs.evolve(wider.ips[0], dhcp_ranges=(AddressRange("10.213.63.5", "10.213.63.50"),)),
        ),
    )
    with pytest.raises(ConflictError, match="domain sa: devices/interface"):
        await sup.define_network(wider)


async def test_an_address_taken_at_start_is_a_conflict_not_a_failure(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """On a network without a DHCP range the supervisor picks a running guest's address from
    the whole subnet; a stopped domain whose static address was picked meanwhile cannot start:
    409 ``conflict`` naming the address, not a 500 with a Python exception's text."""
    net = attrs.evolve(lan(prefix, 64), ips=(NetworkIp(address="10.213.64.1", prefix=24),))
    await sup.define_network(net)
    await sup.start_network("lan")
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    idle = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    await sup.define_domain(nic_guest("dyn", root, idle))
    static = nic_guest("fix", root, idle)
    iface = attrs.evolve(static.interfaces[0], ips=(IpAddress("10.213.64.2", 24),))
    await sup.define_domain(attrs.evolve(static, interfaces=(iface,)))
    await sup.start_domain("dyn")  # takes the subnet's first free address, .2
    with pytest.raises(ConflictError, match=r"domain fix: .*10\.213\.64\.2"):
        await sup.start_domain("fix")


async def test_a_namespace_mount_point_left_by_a_crash_does_not_block_the_guest(
    tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A supervisor killed between making a guest's ``/run/netns`` file and mounting the
    namespace on it leaves a plain file. Its successor removes it, both when it cleans up the
    interrupted start (the run record made before anything else) and when the guest starts
    again; before, the file was not seen as a namespace, stayed, and the guest could not start
    ("exists already")."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    script = "trap 'exit 0' TERM; while :; do sleep 1; done"

    def supervisor() -> Supervisor:
        return Supervisor(
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            prefix=prefix,
            host_netns=str(nsutil.netns_path(sandbox)),
            shutdown_timeout=3,
        )

    def stale(name: str) -> Path:
        path = nsutil.netns_path(f"{prefix}-{name}")
        path.touch()
        assert not nsutil.netns_exists(f"{prefix}-{name}")
        return path

    first, second = supervisor(), supervisor()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await first.define_network(lan(prefix, 61))
            await first.define_domain(nic_guest("st1", root, script))
            await first.define_domain(nic_guest("st2", root, script))
            nursery.cancel_scope.cancel()
        # st2's start was interrupted right after its mount point was made
        record = {"name": "st2", "prefix": prefix, "cgroup": f"{prefix}-st2"}
        (tmp_path / "run" / "domains" / "st2.json").write_text(json.dumps(record))
        st1, st2 = stale("st1"), stale("st2")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(second.run)
                assert not st2.exists()
                assert "SHUTOFF" == second.domain_status("st2").state
                await second.start_network("lan")
                await second.start_domain("st1")
                assert nsutil.netns_exists(f"{prefix}-st1")
                await second.destroy_domain("st1")
                assert not st1.exists()
                await second.shutdown_all(3)
                if second.net is not None:
                    await second.net.stop_all()
                nursery.cancel_scope.cancel()
        finally:
            for path in (st1, st2):
                nsutil.delete_netns(path.name)
