"""The two runtimes the harness drives the supervisor on, and what differs between them.

:class:`Profile` is what a run knows before any example starts (timings, what guests can do,
whether networks and the scheduler are in play). A :class:`Backend` is one example's side of the
kernel: what the supervisor is given to run on, how the harness makes a guest act by itself, how
it waits for an operation, and how it reads the kernel's state back to compare it with the model.

- :class:`FakeBackend`: the in-memory kernel (:class:`~supervisor.testing.fakeruntime.FakeRuntime`)
  and a :class:`trio.testing.MockClock` that moves only when the harness says so. Every step ends
  quiescent and deterministic, so timed phases (STOPPING before its deadline, RESTARTING and
  REBOOTING during backoff) are observable.
- :class:`RealBackend`: :class:`~supervisor.guest.linux.LinuxRuntime` with busybox guests whose
  init polls ``/tmp/cmd`` in its own root, a NAT network whose host side (bridge, nft table,
  dnsmasq) lives in a sandbox network namespace, and real time: after each operation the harness
  polls until the supervisor reaches the model's settled state.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import attrs
import trio
import trio.testing

from supervisor import gc, nsutil
from supervisor.daemon import Supervisor
from supervisor.errors import RuntimeFailure
from supervisor.guest.cgroups import (
    CgroupLayout,
    GuestCgroup,
    detect_layout,
    find_leftovers,
)
from supervisor.guest.procs import nspid
from supervisor.lifecycle import RestartPolicy
from supervisor.model import (
    AddressRange,
    Bridge,
    CpuTune,
    Domain,
    Filesystem,
    Forward,
    Interface,
    Network,
    NetworkIp,
    OsSpec,
)
from supervisor.net import nftables
from supervisor.net.dnsmasq import DnsmasqFiles
from supervisor.net.names import nft_table
from supervisor.net.subsystem import dnsmasq_pids
from supervisor.runtime import Runtime
from supervisor.testing.fakeruntime import FakeRuntime, GuestEndHow
from supervisor.testing.stress.events import EventLog
from supervisor.testing.stress.model import ACTIVE, WITH_PROCESS, Definition, GuestModel, Model

RuntimeKind = Literal["fake", "real"]

#: how long the real runtime may take to reach the model's settled state after one operation
REAL_SETTLE_TIMEOUT = 15.0
#: the one network the real runtime defines, and the ``cpu_shares`` values schedinfo sets
NETWORK = "n0"
SHARES = (512, 1024, 2048)

#: a busybox init that polls a command file (the real runtime's in-guest actions)
GUEST_LOOP = (
    "while :; do "
    "if [ -e /tmp/cmd ]; then c=$(cat /tmp/cmd); rm -f /tmp/cmd; "
    'case "$c" in reboot) reboot -f;; poweroff) poweroff -f;; crash) exit 3;; esac; fi; '
    "sleep 0.05; done"
)


@attrs.frozen
class Profile:
    """What differs between the runtimes for a whole run (times are dyadic fractions, so the
    model's sums equal the mock clock's exactly)."""

    kind: RuntimeKind
    policy: RestartPolicy
    shutdown_timeout: float
    #: how a guest can end by itself (the real busybox loop cannot exit 0 on its own)
    ends: tuple[GuestEndHow, ...]
    #: the phases in which a guest can act by itself (the fake one also while it is stopping:
    #: its guest ignores TERM for exactly as long as the harness wants)
    acts_while: frozenset[str]
    #: networks, NICs and the scheduler are in play (the fake runtime has neither subsystem)
    networking: bool


FAKE = Profile(
    kind="fake",
    policy=RestartPolicy(max_restarts=3, window=1e9, backoff_base=0.25, backoff_cap=1.0),
    shutdown_timeout=0.5,
    ends=("reboot", "poweroff", "crash", "exit0"),
    acts_while=frozenset({"running", "stopping"}),
    networking=False,
)
REAL = Profile(
    kind="real",
    policy=RestartPolicy(max_restarts=3, window=1e9, backoff_base=0.0625, backoff_cap=0.25),
    shutdown_timeout=0.4,
    ends=("reboot", "poweroff", "crash"),
    acts_while=frozenset({"running"}),
    networking=True,
)
PROFILES: Mapping[RuntimeKind, Profile] = {"fake": FAKE, "real": REAL}


def guest_domain(roots: Mapping[str, Path], name: str, d: Definition) -> Domain:
    """The domain the harness defines: a busybox init that polls /tmp/cmd (and may trap TERM).

    A NIC-bearing guest gets one ``<interface type='network'>`` on :data:`NETWORK` (and so its
    own named namespace); every other guest a private, empty one (``privnet``). ``roots``: the
    real runtime's busybox root of each guest (the fake one runs no files).
    """
    script = ("trap 'exit 0' TERM; " if d.traps else "") + GUEST_LOOP
    fs: tuple[Filesystem, ...] = ()
    if name in roots:
        fs = (Filesystem(source=str(roots[name]), target="/"),)
    return Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=fs,
        privnet=not d.nic,
        interfaces=(Interface(type="network", source=NETWORK),) if d.nic else (),
        cputune=CpuTune(shares=d.shares) if d.shares is not None else None,
        on_poweroff=d.on_poweroff,
        on_reboot=d.on_reboot,
        on_crash=d.on_crash,
    )


def stress_network(prefix: str, n: int) -> Network:
    """The real runtime's NAT network: bridge ``<prefix>b0``, 10.213.(200 + n % 50).0/24.

    Its DHCP range covers far more than any run's guests (the guests get their address with
    the NIC; the range is what the allocator hands out from).
    """
    net = f"10.213.{200 + n % 50}"
    return Network(
        name=NETWORK,
        bridge=Bridge(name=f"{prefix}b0", stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"{net}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"{net}.2", f"{net}.254"),),
            ),
        ),
    )


class Backend(Protocol):
    """One example's side of the kernel (see the module docstring)."""

    @property
    def clock(self) -> trio.testing.MockClock | None:
        """The trio clock the supervisor runs on, when the harness moves time itself."""
        ...

    @property
    def runtime(self) -> Runtime | None:
        """What the first supervisor runs on (None: it makes its own LinuxRuntime)."""
        ...

    @property
    def host_netns(self) -> str | None:
        """Where the supervisor puts host-side network objects (None: no networking)."""
        ...

    async def wait_done(self, done: trio.Event, scope: trio.CancelScope) -> None:
        """Wait until the operation that sets ``done`` has finished; fail if it cannot."""
        ...

    def settle_model(self, model: Model) -> None:
        """Move the model to the time at which the harness compares it with the supervisor."""
        ...

    async def observe(self, problems: Callable[[], Awaitable[list[str]]]) -> list[str]:
        """What still disagrees with the model once the supervisor had its chance to settle."""
        ...

    def guest_problems(self, sup: Supervisor, name: str, g: GuestModel | None) -> list[str]:
        """Where the kernel's view of guest ``name`` disagrees with the model's ``g``."""
        ...

    async def network_problems(self, sup: Supervisor, model: Model, log: EventLog) -> list[str]:
        """Where the network's kernel side or its events disagree with the model."""
        ...

    async def guest_acts(self, name: str, how: GuestEndHow) -> None:
        """Make guest ``name``'s init reboot, power off, crash or exit by itself."""
        ...

    async def destroy_all(self, sup: Supervisor) -> None:
        """After the example, destroy what still runs (through the supervisor) if it matters."""
        ...

    def release(self) -> None:
        """Drop what the backend made on the host for this example."""
        ...

    def sweep(self, names: tuple[str, ...]) -> object:
        """What is left in the kernel once the supervisor stopped (falsy: nothing), removed."""
        ...


@attrs.define(eq=False)
class FakeBackend:
    """The in-memory kernel and a clock that stands still until the harness moves it."""

    prefix: str
    fake: FakeRuntime = attrs.Factory(FakeRuntime)
    clock: trio.testing.MockClock = attrs.Factory(trio.testing.MockClock)

    @property
    def runtime(self) -> FakeRuntime:
        return self.fake

    @property
    def host_netns(self) -> None:
        return None

    async def wait_done(self, done: trio.Event, scope: trio.CancelScope) -> None:
        """The mock clock stands still: an operation still running once every task is blocked
        waits for time, which the harness never lets an API call do."""
        await trio.testing.wait_all_tasks_blocked()
        if not done.is_set():
            scope.cancel()
            raise AssertionError("the operation blocked (it waits for time to pass)")

    def settle_model(self, model: Model) -> None:
        """Nothing: time moves only with the ``advance_clock`` operation, in both."""

    async def observe(self, problems: Callable[[], Awaitable[list[str]]]) -> list[str]:
        """Every task is blocked after an operation: what disagrees now always will."""
        return await problems()

    def guest_problems(self, sup: Supervisor, name: str, g: GuestModel | None) -> list[str]:
        """Cgroup and processes exist exactly while the model says, frozen exactly if paused."""
        active = g is not None and g.phase in ACTIVE
        running = g is not None and g.phase in WITH_PROCESS
        paused = g is not None and g.phase == "paused"
        out: list[str] = []
        cg = self.fake.cgroup(self.prefix, name)
        proc = self.fake.guest_of(name)
        if cg.exists != active:
            out.append(f"{name} ({g and g.phase}): cgroup exists={cg.exists}")
        if (proc is not None) != running:
            out.append(f"{name} ({g and g.phase}): init alive={proc is not None}")
        if proc is not None and set(proc.pids) != set(cg.members):
            out.append(f"{name}: cgroup members {cg.members} != {proc.pids}")
        if cg.frozen != paused:
            out.append(f"{name} ({g and g.phase}): frozen={cg.frozen}")
        return out

    async def network_problems(self, sup: Supervisor, model: Model, log: EventLog) -> list[str]:
        """None: the fake runtime runs no networks."""
        return []

    async def guest_acts(self, name: str, how: GuestEndHow) -> None:
        self.fake.guest_ends(name, how)
        await trio.lowlevel.checkpoint()

    async def destroy_all(self, sup: Supervisor) -> None:
        """Nothing: the fake kernel goes with the example (and a failed example's supervisor
        could wait forever on a clock nobody moves)."""

    def release(self) -> None:
        """Nothing: the fake kernel holds nothing of the host."""

    def sweep(self, names: tuple[str, ...]) -> object:
        return self.fake.leftovers()

    async def jump(self, seconds: float) -> None:
        """Move the mock clock; the timers that are due fire as the supervisor runs next."""
        self.clock.jump(seconds)
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class RealBackend:
    """Real cgroups and guests; host-side networking in the sandbox namespace ``sandbox``."""

    prefix: str
    #: the example's directory (the supervisor's state and run dirs are inside)
    directory: Path
    #: each guest's busybox root (shared by the run's examples)
    roots: Mapping[str, Path]
    layout: CgroupLayout
    sandbox: str
    host_netns: str

    @classmethod
    def open(cls, prefix: str, directory: Path, roots: Mapping[str, Path]) -> RealBackend:
        """Detect the cgroup layout and create the sandbox namespace."""
        for root in roots.values():
            # a command an earlier example wrote but no guest read (that example failed) must
            # not make a guest of this one act on its own
            (root / "tmp" / "cmd").unlink(missing_ok=True)
        layout = detect_layout()
        sandbox = f"{prefix}-sbx"
        host_netns = str(nsutil.create_netns(sandbox))
        return cls(prefix, directory, roots, layout, sandbox, host_netns)

    @property
    def clock(self) -> None:
        return None

    @property
    def runtime(self) -> None:
        return None

    async def wait_done(self, done: trio.Event, scope: trio.CancelScope) -> None:
        with trio.fail_after(REAL_SETTLE_TIMEOUT):
            await done.wait()

    def settle_model(self, model: Model) -> None:
        """Time is real: by the time the supervisor has settled, every timer has fired."""
        model.advance(math.inf)

    async def observe(self, problems: Callable[[], Awaitable[list[str]]]) -> list[str]:
        """Poll until nothing disagrees, for at most :data:`REAL_SETTLE_TIMEOUT`."""
        found: list[str] = []
        with trio.move_on_after(REAL_SETTLE_TIMEOUT):
            while True:
                found = await problems()
                if not found:
                    return []
                await trio.sleep(0.01)
        return found

    def guest_problems(self, sup: Supervisor, name: str, g: GuestModel | None) -> list[str]:
        """Cgroup directories, ``cgroup.procs``, the freezer, the NIC's named namespace,
        ``cpu.shares`` and the init pid (``/proc``) agree with the model."""
        active = g is not None and g.phase in ACTIVE
        running = g is not None and g.phase in WITH_PROCESS
        paused = g is not None and g.phase == "paused"
        out: list[str] = []
        real = GuestCgroup(self.layout, self.prefix, name)
        exists = [os.path.isdir(p) for p in real.paths()]
        if any(exists) != active or (active and not all(exists)):
            out.append(f"{name} ({g and g.phase}): cgroup dirs exist {exists}")
        pids = real.pids()
        if bool(pids) != running:
            out.append(f"{name} ({g and g.phase}): processes {sorted(pids)}")
        if active and all(exists) and real.is_frozen() != paused:
            out.append(f"{name} ({g and g.phase}): frozen={real.is_frozen()}")
        nic = g is not None and g.definition.nic
        netns = nsutil.netns_exists(f"{self.prefix}-{name}")
        if netns != (nic and active):
            out.append(f"{name} ({g and g.phase}, nic={nic}): netns exists={netns}")
        if running and g is not None and g.shares is not None:
            cpu = real.controller_dir("cpu")
            shares = Path(cpu, "cpu.shares") if cpu is not None else None
            if shares is not None and shares.exists():
                got = int(shares.read_text())
                if got != g.shares:
                    out.append(f"{name}: cpu.shares {got}, expected {g.shares}")
        if running and name in sup.guests:
            init = sup.domain_status(name).init_pid
            try:
                alive = init is not None and init in pids and nspid(init)[-1] == 1
            except (OSError, RuntimeFailure, IndexError):
                alive = False
            if not alive:
                out.append(f"{name}: init pid {init} is not a live guest init in {pids}")
        return out

    async def network_problems(self, sup: Supervisor, model: Model, log: EventLog) -> list[str]:
        """The network's kernel side agrees with the model (in the sandbox namespace).

        Its nft table and its dnsmasq exist exactly while it runs; the bridge's ports are
        exactly the host ends of the NIC guests plugged in while it ran (not those whose
        NIC dangles since a net-destroy); plugged guests' addresses differ.
        """
        out: list[str] = []
        got_events = log.networks.get(NETWORK, [])
        if got_events != model.net_events:
            out.append(f"network events: {got_events} != expected {model.net_events}")
        sandbox = str(nsutil.netns_path(self.sandbox))
        tables = await nftables.list_tables(sandbox)
        table = nft_table(self.prefix, NETWORK)
        if (table in tables) != model.net_running:
            out.append(f"nft table {table} in {tables}, network running={model.net_running}")
        pids = dnsmasq_pids(str(self._dnsmasq_conf()))
        if len(pids) != int(model.net_running):
            out.append(f"dnsmasq {pids}, network running={model.net_running}")
        plugged = sorted(n for n, g in model.guests.items() if g.attached and g.phase in ACTIVE)
        want_ports: set[str] = set()
        addresses: dict[str, str] = {}
        for n in plugged:
            nics = sup.domain_interfaces(n)
            if not nics:  # not plumbed yet (a restart in progress): settle again
                out.append(f"{n}: no NIC yet, plugged in the model")
                continue
            nic = nics[0]
            want_ports.add(str(nic["host_if"]))
            for a in nic["addresses"]:
                if a["address"] in addresses:
                    out.append(f"{n} and {addresses[a['address']]} both have {a['address']}")
                addresses[a["address"]] = n
        ports = await self._bridge_ports()
        if ports != want_ports:
            out.append(f"bridge ports {sorted(ports)} != {sorted(want_ports)} of {plugged}")
        return out

    async def _bridge_ports(self) -> set[str]:
        """``ip -n SANDBOX -o link show master BRIDGE``: its ports (none: no bridge)."""
        result = await trio.run_process(
            ["ip", "-n", self.sandbox, "-o", "link", "show", "master", f"{self.prefix}b0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            return set()
        return {
            line.split(":")[1].strip().split("@")[0]
            for line in result.stdout.decode().splitlines()
            if line.strip()
        }

    def _dnsmasq_conf(self) -> Path:
        return DnsmasqFiles.in_dir(self.directory / "run" / "net", self.prefix, NETWORK).conf

    async def guest_acts(self, name: str, how: GuestEndHow) -> None:
        """Write the command the guest's init loop polls for (atomically, by a rename)."""
        root = self.roots[name]
        tmp = root / "tmp" / "cmd.new"
        tmp.write_text(how + "\n")
        tmp.rename(root / "tmp" / "cmd")

    async def destroy_all(self, sup: Supervisor) -> None:
        """Real guests outlive the example: destroy whatever the supervisor still has."""
        with trio.move_on_after(20):
            for name, guest in list(sup.guests.items()):
                if guest.busy or guest.cgroup is not None:
                    with contextlib.suppress(Exception):
                        await sup.destroy_domain(name)

    def release(self) -> None:
        """Drop the sandbox namespace (bridge and veths go with it), guests' namespaces and a
        dnsmasq a failed run left."""
        for pid in dnsmasq_pids(str(self._dnsmasq_conf())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for ns in nsutil.list_netns(self.prefix + "-"):
            nsutil.delete_netns(ns)

    def sweep(self, names: tuple[str, ...]) -> object:
        """The run's cgroups, then anything with its prefix (:func:`supervisor.gc.find`)."""
        leaks: object = find_leftovers(self.layout, self.prefix)
        if leaks:
            trio.run(_remove_cgroups, self.layout, self.prefix, names)
        self.release()
        found = gc.find(self.prefix)
        if found:
            leaks = [leaks, found]
            gc.remove(found)
        return leaks


async def _remove_cgroups(layout: CgroupLayout, prefix: str, names: tuple[str, ...]) -> None:
    """Last resort after a failed real run: kill and remove the run's cgroups."""
    for name in names:
        cg = GuestCgroup(layout, prefix, name)
        with contextlib.suppress(RuntimeFailure):
            await cg.thaw()  # frozen tasks on a v1 freezer die only once thawed
        with contextlib.suppress(RuntimeFailure):
            await cg.kill_all()
            await cg.remove()


def open_backend(
    profile: Profile, prefix: str, directory: Path, roots: Mapping[str, Path]
) -> FakeBackend | RealBackend:
    """One example's backend for ``profile``."""
    if profile.kind == "fake":
        return FakeBackend(prefix)
    return RealBackend.open(prefix, directory, roots)
