"""Fault drills: the supervisor killed, its helpers killed, the kernel or the disk failing.

Each drill runs under its own name prefix, with host-side networking in a sandbox namespace the
test creates. What every drill asserts in the end is the operator's promise: every guest is
either running and known (re-adopted) or stopped with its end reported, nothing is half-done,
and nothing carrying the prefix is left once the supervisor has stopped.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor import gc, nsutil
from supervisor.api.client import Client, ClientError
from supervisor.daemon import Supervisor
from supervisor.errors import RuntimeFailure
from supervisor.guest.cgroups import cgroup_dir_name, detect_layout
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, Interface, OsSpec
from supervisor.net import rtnl
from supervisor.runner import GuestRunner
from supervisor.store import ConfigStore
from supervisor.testing.fakeruntime import FailOp, FakeRuntime, Leftovers
from supervisor.xml import format_domain, format_network
from tests.fake_supervisor import short_tmpdir
from tests.test_net_daemon import DHCP_INIT, lan, nic_guest

REPO = Path(__file__).resolve().parent.parent
LEAKCHECK = "/work/shared/tools/leakcheck"
#: a guest that powers off on SIGTERM within one loop turn (50 ms)
LOOP = "trap 'exit 0' TERM; while :; do sleep 0.05; done"
#: the drills' random kill points are reproducible: VSV_DRILL_SEED=N replays a run
SEED = int(os.environ.get("VSV_DRILL_SEED", "20240607"))


# ---------------------------------------------------------------------------- daemon harness


class Daemon:
    """A `vsv daemon` process on fixed dirs (so a successor finds what it left) and its API."""

    def __init__(self, base: Path, prefix: str, *start: str) -> None:
        self.base = base
        self.sock = str(base / "rw.sock")
        self.log = open(base / "daemon.log", "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "supervisor", "daemon",
                "--state-dir", str(base / "state"), "--run-dir", str(base / "run"),
                "--prefix", prefix, "--netns", f"{prefix}-sbx",
                "--socket", self.sock, "--ro-socket", str(base / "ro.sock"),
                "--shutdown-timeout", "3", "--stop-timeout", "5",
                *(("--start", *start) if start else ()),
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.api = Client(self.sock, timeout=30)

    def wait_ready(self, timeout: float = 20) -> None:
        """Wait until the API answers (adoption and network restarts are done by then)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_text()
            try:
                self.api.get_json("/v1/supervisor")
                return
            except (ClientError, OSError):
                self.api.close()
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.01)

    def log_text(self) -> str:
        return (self.base / "daemon.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no clean-up code of the supervisor runs."""
        self.proc.kill()
        self.proc.wait(10)
        self.api.close()

    def close(self, sig: int = signal.SIGTERM) -> int:
        """Stop the daemon (SIGTERM: guests shut down, networks stopped); its exit status."""
        self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def fire(sock: str, method: str, path: str) -> socket.socket:
    """Send one API request without waiting for its answer (the daemon is killed meanwhile)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: vsv\r\nContent-Length: 0\r\n\r\n".encode())
    return s


@pytest.fixture
def world(prefix: str) -> Iterator[dict[str, Any]]:
    """A short base dir, a busybox root, the sandbox namespace; torn down whatever happens."""
    base = short_tmpdir()
    sandbox = f"{prefix}-sbx"
    nsutil.create_netns(sandbox)
    daemons: list[Daemon] = []
    try:
        root = Path(prepare_busybox_root(str(base / "rootfs")))
        yield {"base": base, "root": root, "sandbox": sandbox, "daemons": daemons}
    finally:
        for d in daemons:
            d.api.close()
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            if not d.log.closed:
                d.log.close()
        # what a failed drill left is removed here so the next drill starts clean; the prefix
        # fixture still reports it as a leak (it runs after this)
        if nsutil.netns_exists(sandbox):
            nsutil.delete_netns(sandbox)
        shutil.rmtree(base, ignore_errors=True)


def start_daemon(world: dict[str, Any], prefix: str, *start: str) -> Daemon:
    d = Daemon(world["base"], prefix, *start)
    world["daemons"].append(d)
    d.wait_ready()
    return d


def guest_doc(base: Path, name: str, root: Path, script: str = LOOP) -> Path:
    d = Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        privnet=True,
    )
    path = base / f"{name}.xml"
    path.write_text(format_domain(d))
    return path


def leakcheck(prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEAKCHECK, "--prefix", prefix], capture_output=True, text=True, timeout=60, check=False
    )


# ---------------------------------------------------------------------------- what must hold


def domain_states(api: Client) -> dict[str, str]:
    return {row["name"]: row["state"] for row in api.get_json("/v1/domains")["domains"]}


def network_active(api: Client) -> dict[str, bool]:
    return {row["name"]: row["active"] for row in api.get_json("/v1/networks")["networks"]}


def settled_states(api: Client, timeout: float = 10) -> dict[str, str]:
    """Domain states once none is in between (RUNNING or SHUTOFF only); fails on a stuck one."""
    deadline = time.monotonic() + timeout
    while True:
        states = domain_states(api)
        if set(states.values()) <= {"RUNNING", "SHUTOFF"}:
            return states
        assert time.monotonic() < deadline, f"a guest stays in between: {states}"
        time.sleep(0.02)


def lifecycle_events(api: Client) -> dict[str, list[str]]:
    """Every domain's STARTED/STOPPED events from the journal, in order, as ``TYPE DETAIL``."""
    out: dict[str, list[str]] = {}
    for record in api.events(since=0):
        if record.get("kind") == "domain" and record.get("type") in ("STARTED", "STOPPED"):
            out.setdefault(record["domain"], []).append(f"{record['type']} {record['detail']}")
    return out


def reported(events: list[str]) -> str:
    """How the journal leaves a guest: "running" (last is STARTED), "stopped" or "never"."""
    if not events:
        return "never"
    return "running" if events[-1].startswith("STARTED") else "stopped"


def unexpected_objects(
    prefix: str, sandbox: str, running: set[str], networks_up: bool
) -> list[gc.Leftover]:
    """What exists with the prefix beyond what the supervisor's current state accounts for.

    Accounted for: the sandbox namespace; each running guest's cgroup (every hierarchy), the
    processes in it and its named network namespace (guests with NICs); while the network runs,
    its bridge and nftables table in the sandbox and its dnsmasq. Anything else is a leak or a
    half-done operation.
    """
    guest_dirs = {cgroup_dir_name(prefix, n) for n in running}
    guest_netns = {f"{prefix}-{n}" for n in running}
    extra = []
    for item in gc.find(prefix, netns=sandbox):
        if item.kind == "netns" and (item.name == sandbox or item.name in guest_netns):
            continue
        if item.kind == "cgroup" and os.path.basename(item.name) in guest_dirs:
            continue
        if item.kind == "process":
            if os.path.basename(item.where) in guest_dirs:
                continue
            if networks_up and "dnsmasq" in item.name:
                continue
        if networks_up and item.kind in ("link", "nft") and item.where == sandbox:
            continue
        extra.append(item)
    return extra


def check_consistent(d: Daemon, prefix: str, sandbox: str, context: str) -> None:
    """The drill's invariant after a restart: every guest running and known or stopped with its
    end reported, and no object with the prefix beyond what that state accounts for."""
    states = settled_states(d.api)
    events = lifecycle_events(d.api)
    run_dir = d.base / "run" / "domains"
    for name, state in states.items():
        record = run_dir / f"{name}.json"
        expected = "running" if state == "RUNNING" else reported(events.get(name, []))
        # RUNNING: the journal's last word is STARTED; SHUTOFF: never started or STOPPED reported
        assert (name, expected) == (name, reported(events.get(name, []))), (context, events)
        if state == "RUNNING":
            assert (name, True) == (name, record.exists()), context
            pid = json.loads(record.read_text())["init_pid"]
            assert (name, True) == (name, Path(f"/proc/{pid}").exists()), context
        else:
            assert (name, False) == (name, record.exists()), context
    running = {n for n, s in states.items() if s == "RUNNING"}
    up = network_active(d.api).get("lan", False)
    unexplained = unexpected_objects(prefix, sandbox, running, up)
    assert [] == unexplained, "\n".join(
        [context, f"states {states}, network up {up}", *map(str, unexplained)]
    )
    if up:
        found = {(x.kind, x.name) for x in gc.find(prefix, netns=sandbox)}
        assert ("link", True) == ("link", ("link", f"{prefix}b0") in found), context


# ---------------------------------------------------------------------------- drill 1


@pytest.mark.root
def test_sigkill_during_start_shutdown_and_network_start(
    world: dict[str, Any], prefix: str
) -> None:
    """SIGKILL at random points of start, shutdown and net-start: a successor accounts for all."""
    base, sandbox = world["base"], world["sandbox"]
    rng = random.Random(SEED)
    iterations = 21
    (base / "lan.xml").write_text(format_network(lan(prefix, 71)))
    docs = [guest_doc(base, n, world["root"]) for n in ("ga", "gb")]
    d = start_daemon(world, prefix)
    d.api.send_xml("/v1/networks", (base / "lan.xml").read_bytes())
    for doc in docs:
        d.api.send_xml("/v1/domains", doc.read_bytes())
    d.api.send_json("POST", "/v1/domains/ga/start")
    counts = {"start": 0, "shutdown": 0, "net-start": 0}
    for i in range(iterations):
        # one guest running, one shut off, the network down: then all three at once
        states = domain_states(d.api)
        if states["ga"] == states["gb"]:
            if states["ga"] == "RUNNING":
                d.api.send_json("POST", "/v1/domains/gb/destroy")
            else:
                d.api.send_json("POST", "/v1/domains/ga/start")
            states = domain_states(d.api)
        if network_active(d.api)["lan"]:
            d.api.send_json("POST", "/v1/networks/lan/destroy")
        requests = [("POST", "/v1/networks/lan/start")]
        for name, state in states.items():
            action = "shutdown" if state == "RUNNING" else "start"
            requests.append(("POST", f"/v1/domains/{name}/{action}"))
            counts[action] += 1
        counts["net-start"] += 1
        rng.shuffle(requests)
        delay = rng.uniform(0, 0.06)
        sockets: list[socket.socket] = []
        try:
            for method, path in requests:
                sockets.append(fire(d.sock, method, path))
            time.sleep(delay)
            d.kill()
        finally:
            for s in sockets:
                s.close()
        d = start_daemon(world, prefix)
        check_consistent(d, prefix, sandbox, f"seed {SEED} iteration {i} delay {delay:.4f}")
    assert {"start": True, "shutdown": True, "net-start": True} == {
        k: v >= 20 for k, v in counts.items()
    }
    assert 0 == d.close()
    assert [] == [(x.kind, x.name) for x in gc.find(prefix, netns=sandbox) if x.name != sandbox]
    nsutil.delete_netns(sandbox)
    assert [] == gc.find(prefix)
    check = leakcheck(prefix)
    assert (0, "") == (check.returncode, check.stderr), check.stdout


def cgroup_exists(prefix: str, name: str) -> bool:
    """Whether the guest's cgroup directory exists in any mounted hierarchy."""
    layout = detect_layout()
    return any(
        os.path.isdir(os.path.join(h, cgroup_dir_name(prefix, name))) for h in layout.hierarchies()
    )


def kill_when(d: Daemon, request: tuple[str, str], ready: Callable[[], bool]) -> None:
    """Send ``request`` and SIGKILL the daemon the moment ``ready()`` holds."""
    s = fire(d.sock, *request)
    try:
        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline, d.log_text()
        d.kill()
    finally:
        s.close()


def successor_leftovers(world: dict[str, Any], prefix: str) -> list[gc.Leftover]:
    """Start a successor daemon; what it leaves unaccounted for (then everything is removed)."""
    sandbox = world["sandbox"]
    d = start_daemon(world, prefix)
    try:
        states = settled_states(d.api)
        running = {n for n, s in states.items() if s == "RUNNING"}
        up = network_active(d.api).get("lan", False)
        return unexpected_objects(prefix, sandbox, running, up)
    finally:
        assert 0 == d.close()
        gc.remove([x for x in gc.find(prefix, netns=sandbox) if x.name != sandbox])


@pytest.mark.root
def test_sigkill_once_the_guest_cgroup_exists(world: dict[str, Any], prefix: str) -> None:
    """Killed the moment a starting guest's cgroup exists: the successor removes or adopts it."""
    doc = guest_doc(world["base"], "gs", world["root"])
    d = start_daemon(world, prefix)
    d.api.send_xml("/v1/domains", doc.read_bytes())
    kill_when(d, ("POST", "/v1/domains/gs/start"), lambda: cgroup_exists(prefix, "gs"))
    assert [] == successor_leftovers(world, prefix)


@pytest.mark.root
def test_sigkill_once_the_network_bridge_exists(world: dict[str, Any], prefix: str) -> None:
    """Killed while a network starts (bridge and table made): the successor removes them."""
    base = world["base"]
    (base / "lan.xml").write_text(format_network(lan(prefix, 74)))
    d = start_daemon(world, prefix)
    d.api.send_xml("/v1/networks", (base / "lan.xml").read_bytes())
    conf = base / "run" / "net" / f"{prefix}-lan.conf"  # written once bridge and table exist
    kill_when(d, ("POST", "/v1/networks/lan/start"), conf.exists)
    assert [] == successor_leftovers(world, prefix)


# ---------------------------------------------------------------------------- drills 2 and 3


def dnsmasq_pids(prefix: str) -> list[int]:
    """Live dnsmasq processes serving one of the prefix's networks (found by their conf file),
    without the helper each forks for its lease hook (a dnsmasq whose parent is one)."""
    pids: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv and argv[0].endswith("dnsmasq") and gc.is_prefix_dnsmasq(argv, prefix):
            pids[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return sorted(pid for pid, parent in pids.items() if parent not in pids)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def netns_run(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a busybox applet inside a namespace the test's supervisor made."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, "/bin/busybox", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def dhcp_guest_then_kill_dnsmasq(world: dict[str, Any], prefix: str) -> tuple[Daemon, str, int]:
    """A running network and a DHCP guest; then dnsmasq SIGKILLed and back with a new pid.

    Returns the daemon, the guest's address and the new dnsmasq's pid.
    """
    base, root = world["base"], world["root"]
    (base / "lan.xml").write_text(format_network(lan(prefix, 73)))
    (base / "gd.xml").write_text(format_domain(nic_guest("gd", root, DHCP_INIT)))
    d = start_daemon(world, prefix)
    d.api.send_xml("/v1/networks", (base / "lan.xml").read_bytes())
    d.api.send_json("POST", "/v1/networks/lan/start")
    d.api.send_xml("/v1/domains", (base / "gd.xml").read_bytes())
    d.api.send_json("POST", "/v1/domains/gd/start")
    wait_for("the guest's DHCP address", (root / "tmp" / "addr").exists, 20)
    fields = (root / "tmp" / "addr").read_text().split()
    ip = fields[fields.index("inet") + 1].split("/")[0]
    (old,) = dnsmasq_pids(prefix)
    os.kill(old, signal.SIGKILL)
    found: list[int] = []

    def one_new() -> bool:
        # one reading for both the test and the result: a dnsmasq seen once may be gone
        # (or joined by its lease helper) at the next look
        found[:] = dnsmasq_pids(prefix)
        return len(found) == 1 and found != [old]

    wait_for("a new dnsmasq", one_new)
    (new,) = found
    return d, ip, new


def lease_ips(world: dict[str, Any], prefix: str) -> list[str]:
    leases = world["base"] / "run" / "net" / f"{prefix}-lan.leases"
    return [line.split()[2] for line in leases.read_text().splitlines()]


@pytest.mark.root
def test_dnsmasq_killed_is_restarted_and_guests_keep_addresses(
    world: dict[str, Any], prefix: str
) -> None:
    """SIGKILLed dnsmasq comes back (new pid, same leases); the guest keeps its address."""
    sandbox = world["sandbox"]
    d, ip, _ = dhcp_guest_then_kill_dnsmasq(world, prefix)
    assert [ip] == lease_ips(world, prefix)
    ping = netns_run(sandbox, "ping", "-c1", "-W2", ip)
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    addr = netns_run(f"{prefix}-gd", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f"inet {ip}/24" in addr.stdout
    # the new dnsmasq serves DHCP and hands the guest the same address again
    renew = netns_run(
        f"{prefix}-gd", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "1", "-r", ip,
        "-s", "/bin/true",
    )  # fmt: skip
    assert 0 == renew.returncode, renew.stdout + renew.stderr
    assert f"lease of {ip} obtained" in renew.stdout + renew.stderr
    assert [ip] == lease_ips(world, prefix)
    assert 0 == d.close()
    assert [] == dnsmasq_pids(prefix)
    assert [] == [(x.kind, x.name) for x in gc.find(prefix, netns=sandbox) if x.name != sandbox]


@pytest.mark.root
def test_successor_after_a_dnsmasq_restart(world: dict[str, Any], prefix: str) -> None:
    """Supervisor SIGKILLed after dnsmasq was restarted: the successor runs the network again."""
    sandbox = world["sandbox"]
    d, ip, _ = dhcp_guest_then_kill_dnsmasq(world, prefix)
    d.kill()
    try:
        d = start_daemon(world, prefix)
        assert {"gd": "RUNNING"} == settled_states(d.api)
        assert 1 == len(dnsmasq_pids(prefix))
        assert [] == unexpected_objects(prefix, sandbox, {"gd"}, True)
        assert 0 == netns_run(sandbox, "ping", "-c1", "-W2", ip).returncode
        assert 0 == d.close()
    finally:
        if d.proc.poll() is None:
            d.close()
        gc.remove([x for x in gc.find(prefix, netns=sandbox) if x.name != sandbox])


@pytest.mark.root
def test_guest_init_killed_from_outside_is_a_crash(world: dict[str, Any], prefix: str) -> None:
    """Guest init SIGKILLed by someone else: STOPPED CRASHED, released, supervisor unharmed."""
    doc = guest_doc(world["base"], "gk", world["root"])
    d = start_daemon(world, prefix)
    d.api.send_xml("/v1/domains", doc.read_bytes())
    d.api.send_json("POST", "/v1/domains/gk/start")
    record = world["base"] / "run" / "domains" / "gk.json"
    pid = json.loads(record.read_text())["init_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for("the guest to stop", lambda: domain_states(d.api)["gk"] == "SHUTOFF")
    state = d.api.get_json("/v1/domains/gk/state")
    assert ("SHUTOFF", "CRASHED") == (state["state"], state["reason"])
    assert ["STARTED BOOTED", "STOPPED CRASHED"] == lifecycle_events(d.api)["gk"]
    assert (False, False) == (cgroup_exists(prefix, "gk"), record.exists())
    assert [] == [(x.kind, x.name) for x in gc.find(prefix) if x.name != world["sandbox"]]
    d.api.send_json("POST", "/v1/domains/gk/start")  # the supervisor is unharmed
    assert "RUNNING" == domain_states(d.api)["gk"]
    assert 0 == d.close()
    assert (False, False) == (cgroup_exists(prefix, "gk"), record.exists())


# ---------------------------------------------------------------------------- drill 4: injected


@pytest.fixture
async def fake(tmp_path: Path, nursery: trio.Nursery) -> tuple[Supervisor, FakeRuntime, list[str]]:
    """A real Supervisor over the in-memory kernel; every event line is collected."""
    rt = FakeRuntime()
    sup = Supervisor(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        prefix="vsvtfake",
        runtime=rt,
        networking=False,
    )
    lines: list[str] = []
    sup.bus.add_sink(lambda event: lines.append(event.line().split(" ", 1)[1]))
    await nursery.start(sup.run)
    for name in ("f1", "f2"):
        await sup.define_domain(
            Domain(
                name=name,
                type="lxc",
                os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
                filesystems=(Filesystem(source="/", target="/"),),
            )
        )
    return sup, rt, lines


def clean(rt: FakeRuntime) -> Leftovers:
    """What the fake kernel holds when nothing is left over (``rt`` for readability)."""
    del rt
    return Leftovers(processes=(), cgroups=())


@pytest.mark.parametrize("op", ["cgroup.create", "spawn"])
async def test_injected_start_failure_aborts_cleanly(
    fake: tuple[Supervisor, FakeRuntime, list[str]], op: FailOp
) -> None:
    """A failing cgroup creation or spawn: start fails, STOPPED FAILED, nothing left over."""
    sup, rt, lines = fake
    rt.fail_next(op)
    with pytest.raises(RuntimeFailure, match=f"injected failure: {op}"):
        await sup.start_domain("f1")
    status = sup.domain_status("f1")
    assert ("SHUTOFF", "FAILED") == (status.state, status.reason)
    assert ["f1 STOPPED FAILED"] == [x for x in lines if x.startswith("f1 ") and "DEFINED" not in x]
    assert clean(rt) == rt.leftovers()
    assert {} == sup.runs.read_all("domains")
    assert "RUNNING" == (await sup.start_domain("f1")).state  # nothing in the way of a retry
    await sup.destroy_domain("f1")
    assert clean(rt) == rt.leftovers()


async def test_a_bug_in_the_supervisor_fails_the_guest_through_the_table(
    fake: tuple[Supervisor, FakeRuntime, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The supervisor's own code failing for one guest: FAILED_HARD releases it, reports
    STOPPED FAILED reason=supervisor-error, and the supervisor and the guest's next start go on."""
    sup, rt, lines = fake
    await sup.start_domain("f1")
    data: list[dict[str, Any]] = []
    sup.bus.add_sink(lambda event: data.append(dict(event.data)))

    def broken(*args: object) -> None:
        raise ValueError("a bug after the end")

    monkeypatch.setattr(GuestRunner, "_classify", broken)  # the guest is still RUNNING here
    rt.guest_ends("f1", "crash")
    with trio.fail_after(5):
        await sup.guests["f1"].wait_until(lambda g: not g.busy)
    status = sup.domain_status("f1")
    assert ("SHUTOFF", "FAILED") == (status.state, status.reason)
    assert "f1 STOPPED FAILED" == lines[-1]
    assert {"reason": "supervisor-error", "error": "a bug after the end"} == data[-1]
    assert "guest f1: supervisor error" in caplog.text
    assert (clean(rt), {}) == (rt.leftovers(), sup.runs.read_all("domains"))
    monkeypatch.undo()
    assert "RUNNING" == (await sup.start_domain("f1")).state
    await sup.destroy_domain("f1")
    assert clean(rt) == rt.leftovers()


@pytest.mark.parametrize("stop", ["destroy", "shutdown"])
async def test_injected_cgroup_removal_failure_is_logged(
    fake: tuple[Supervisor, FakeRuntime, list[str]], stop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing cgroup removal at release: logged, the stop still reported, the next run heals."""
    sup, rt, lines = fake
    await sup.start_domain("f1")
    rt.fail_next("remove")
    with trio.fail_after(5):
        if stop == "destroy":
            await sup.destroy_domain("f1")
        else:
            await sup.shutdown_domain("f1")
            await sup.guests["f1"].wait_until(lambda g: not g.busy)
    expected = "f1 STOPPED DESTROYED" if stop == "destroy" else "f1 STOPPED SHUTDOWN"
    assert expected == lines[-1]
    assert ["guest f1: cgroup removal: injected failure: remove"] == [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    ]
    assert Leftovers(processes=(), cgroups=("vsvtfake-f1",)) == rt.leftovers()
    await sup.start_domain("f1")
    await sup.destroy_domain("f1")
    assert clean(rt) == rt.leftovers()


async def test_injected_kill_failure_on_destroy_is_reported(
    fake: tuple[Supervisor, FakeRuntime, list[str]],
) -> None:
    """A failing kill on destroy is the caller's error; the supervisor and other guests go on."""
    sup, rt, _ = fake
    await sup.start_domain("f1")
    rt.fail_next("kill_all")
    with pytest.raises(RuntimeFailure, match="injected failure: kill_all"):
        await sup.destroy_domain("f1")
    assert rt.guest_of("f1") is not None  # nothing was killed
    assert "RUNNING" == (await sup.start_domain("f2")).state
    await sup.destroy_domain("f2")
    assert rt.guest_of("f2") is None


async def test_destroy_after_a_failed_kill_kills(
    fake: tuple[Supervisor, FakeRuntime, list[str]],
) -> None:
    """After a destroy whose kill failed, destroying again kills the guest."""
    sup, rt, _ = fake
    await sup.start_domain("f1")
    rt.fail_next("kill_all")
    with pytest.raises(RuntimeFailure):
        await sup.destroy_domain("f1")
    with trio.fail_after(2):
        await sup.destroy_domain("f1")
    assert ("SHUTOFF", clean(rt)) == (sup.domain_status("f1").state, rt.leftovers())


@pytest.mark.root
async def test_netlink_failure_on_the_second_nic_undoes_the_start(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Netlink fails plumbing the second NIC: start fails, first NIC, netns, address all undone."""
    sandbox = f"{prefix}-sbx"
    nsutil.create_netns(sandbox)
    try:
        sup = Supervisor(
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            prefix=prefix,
            host_netns=str(nsutil.netns_path(sandbox)),
            shutdown_timeout=3,
        )
        lines: list[str] = []
        sup.bus.add_sink(lambda event: lines.append(event.line().split(" ", 1)[1]))
        root = Path(prepare_busybox_root(str(tmp_path / "rootfs")))
        two = Domain(
            name="g2",
            type="lxc",
            os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
            filesystems=(Filesystem(source=str(root), target="/"),),
            interfaces=(Interface(type="network", source="lan"),) * 2,
        )
        real = rtnl.Rtnl.set_up
        raised: list[str] = []

        def eth1_fails(self: rtnl.Rtnl, index: int, **kwargs: Any) -> None:
            # the second NIC's veth exists (its guest end is being configured) when this fails
            if kwargs.get("what") == "eth1":
                raised.append("eth1")
                raise RuntimeFailure("injected netlink failure bringing up eth1")
            real(self, index, **kwargs)

        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert sup.net is not None
            try:
                await sup.define_network(lan(prefix, 75))
                await sup.start_network("lan")
                await sup.define_domain(two)
                before = {(x.kind, x.name) for x in await gc.find_async(prefix, netns=sandbox)}
                monkeypatch.setattr(rtnl.Rtnl, "set_up", eth1_fails)
                with pytest.raises(RuntimeFailure, match="injected netlink failure"):
                    await sup.start_domain("g2")
                status = sup.domain_status("g2")
                assert ("SHUTOFF", "FAILED") == (status.state, status.reason)
                assert "g2 STOPPED FAILED" == lines[-1]
                after = {(x.kind, x.name) for x in await gc.find_async(prefix, netns=sandbox)}
                assert (["eth1"], before) == (raised, after)  # both veths are gone again
                assert () == sup.net.service.allocations().on("lan")
                hosts = tmp_path / "run" / "net" / f"{prefix}-lan.hostsfile"
                assert "" == hosts.read_text().strip()
                monkeypatch.undo()
                assert "RUNNING" == (await sup.start_domain("g2")).state  # nothing in the way
                assert 2 == len(sup.domain_interfaces("g2"))
                await sup.destroy_domain("g2")
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    if sup.guests["g2"].busy:
                        await sup.destroy_domain("g2")
                    await sup.net.stop_all()
                nursery.cancel_scope.cancel()
    finally:
        nsutil.delete_netns(sandbox)


# ---------------------------------------------------------------------------- drill 5: full disk


def write_until_error(fd: int, chunk: bytes) -> int | None:
    """Append ``chunk`` to ``fd`` until a write fails; that failure's errno."""
    while True:
        try:
            os.write(fd, chunk)
        except OSError as exc:
            return exc.errno


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (b"x" * 4096, b"x"):
            assert errno.ENOSPC == write_until_error(fd, chunk)
    finally:
        os.close(fd)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def a_domain(script: str = LOOP) -> Domain:
    return Domain(
        name="w",
        type="lxc",
        uuid="6a0c4b0e-5f3e-4d7e-9d59-0d4c9e6f1a21",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source="/", target="/"),),
    )


@pytest.mark.root
def test_full_disk_keeps_the_previous_definition(small_fs: Path) -> None:
    """Saving a definition on a full disk fails naming the file; the old one stays whole."""
    store = ConfigStore(small_fs)
    store.save_domain(a_domain())
    path = small_fs / "domains" / "w.xml"
    original = path.read_bytes()
    fill(small_fs / "filler")
    bigger = a_domain(LOOP + " # " + "x" * 8000)  # needs pages the disk no longer has
    with pytest.raises(RuntimeFailure, match=f"{path}: cannot write: No space left on device"):
        store.save_domain(bigger)
    assert original == path.read_bytes()
    assert ([a_domain()], []) == store.load_domains()
    assert ["w.xml"] == sorted(p.name for p in (small_fs / "domains").iterdir())


@pytest.mark.root
async def test_full_disk_redefine_through_the_supervisor(small_fs: Path, tmp_path: Path) -> None:
    """Redefining on a full disk: an error, the running definition and the file unchanged."""
    ConfigStore(small_fs).save_domain(a_domain())
    path = small_fs / "domains" / "w.xml"
    original = path.read_bytes()
    sup = Supervisor(
        state_dir=small_fs, run_dir=tmp_path / "run", runtime=FakeRuntime(), networking=False
    )
    lines: list[str] = []
    sup.bus.add_sink(lambda event: lines.append(event.line().split(" ", 1)[1]))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        fill(small_fs / "filler")
        with pytest.raises(RuntimeFailure, match=f"{path}: cannot write"):
            await sup.define_domain(a_domain("exit 0 # " + "y" * 8000))
        assert (a_domain(), original, []) == (sup.get_domain("w"), path.read_bytes(), lines)
        (small_fs / "filler").unlink()  # space again: the same request now succeeds
        await sup.define_domain(a_domain("exit 0 # " + "y" * 8000))
        assert ["w DEFINED UPDATED"] == lines
        assert [] == [p.name for p in (small_fs / "domains").iterdir() if p.name.startswith(".")]
        nursery.cancel_scope.cancel()
