"""The seam between the supervisor and the kernel: cgroups and guest processes.

:class:`~supervisor.daemon.Supervisor` talks to guests only through a :class:`Runtime`.
:class:`LinuxRuntime` is the real one (cgroups, namespaces, embryos made by a fork server);
:mod:`supervisor.fakeruntime` keeps everything in memory so the property-based stress harness
can run thousands of operations a second against the same supervisor code. The fake never stands
in for the real one where real behaviour is what a test checks.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from supervisor.guest import procs, spawn
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout
from supervisor.guest.devices import DEFAULT_DEVICE_RULES, DeviceProgram
from supervisor.guest.spawn import GuestExit, Namespaces, spawn_init
from supervisor.model import Domain


class CgroupHandle(Protocol):
    """One guest's cgroup (in every hierarchy the runtime uses)."""

    @property
    def dirname(self) -> str: ...
    def create(self) -> bool: ...
    def apply_limits(self, domain: Domain) -> None: ...
    def pids(self) -> set[int]: ...
    def is_frozen(self) -> bool: ...
    async def freeze(self) -> None: ...
    async def thaw(self) -> None: ...
    async def kill_all(self, *, wait: bool = True) -> None: ...
    async def remove(self) -> None: ...


class ProcessHandle(Protocol):
    """A running guest init (and whatever wraps it)."""

    @property
    def init_pid(self) -> int | None: ...
    @property
    def wrapper_pid(self) -> int: ...
    @property
    def namespaces(self) -> Namespaces | None: ...
    async def wait(self) -> GuestExit: ...
    def send_signal(self, sig: int) -> None: ...


class PendingSpawn(Protocol):
    """A start begun before its cgroup and prepare hooks are done (see ``begin_spawn``)."""

    @property
    def netns_source(self) -> str | None:
        """A network namespace the guest's process was born in, which a network hook must name
        and plumb instead of making one (a guest in a user namespace of its own), or None."""
        ...

    async def finish(self, cgroup: CgroupHandle, *, netns_path: str | None) -> ProcessHandle: ...
    async def abort(self) -> None: ...


class Runtime(Protocol):
    """Makes cgroups and guest processes, and watches processes it did not start."""

    def cgroup(self, prefix: str, name: str) -> CgroupHandle: ...

    async def begin_spawn(self, domain: Domain, *, log_path: str | None) -> PendingSpawn:
        """Start work on the guest's process that needs neither its cgroup nor its network,
        so that it overlaps the supervisor's own preparation."""
        ...

    async def spawn(
        self,
        domain: Domain,
        cgroup: CgroupHandle,
        *,
        log_path: str | None,
        netns_path: str | None,
    ) -> ProcessHandle: ...

    async def wait_pid_exit(self, pid: int) -> None: ...

    def pid_is_guest_init(self, pid: int, pidns_inode: int) -> bool: ...

    def signal_guest_init(self, pid: int, pidns_inode: int, sig: int) -> bool:
        """Send ``sig`` to an adopted guest's init if ``pid`` still is PID 1 of that pid
        namespace: False (nothing sent) when it is gone or the pid now names another process."""
        ...


@attrs.define(eq=False)
class DeferredSpawn:
    """A :class:`PendingSpawn` that does everything in ``finish``: for runtimes with nothing to
    start early."""

    runtime: Runtime
    domain: Domain
    log_path: str | None

    @property
    def netns_source(self) -> str | None:
        return None

    async def finish(self, cgroup: CgroupHandle, *, netns_path: str | None) -> ProcessHandle:
        return await self.runtime.spawn(
            self.domain, cgroup, log_path=self.log_path, netns_path=netns_path
        )

    async def abort(self) -> None:
        pass


@attrs.define(eq=False)
class _LinuxPending:
    """:class:`spawn.PendingStart` behind the protocol's cgroup type."""

    pending: spawn.PendingStart

    @property
    def netns_source(self) -> str | None:
        return self.pending.netns_source

    async def finish(self, cgroup: CgroupHandle, *, netns_path: str | None) -> ProcessHandle:
        if not isinstance(cgroup, GuestCgroup):
            await self.pending.abort()
            raise TypeError(f"LinuxRuntime needs a GuestCgroup, got {type(cgroup).__name__}")
        return await self.pending.finish(cgroup, netns_path=netns_path)

    async def abort(self) -> None:
        await self.pending.abort()


@attrs.define(eq=False)
class LinuxRuntime:
    """The real runtime: cgroup v1/v2/hybrid as detected, namespaces, embryos.

    ``hidden``: host paths no guest without a root filesystem may see (the supervisor's state
    and run dirs, its API sockets; see ``spawn.HostView``).
    """

    layout: CgroupLayout = attrs.Factory(detect_layout)
    hidden: tuple[str, ...] = ()
    host: spawn.HostView = attrs.field(init=False)
    #: for measurement only (bench/bench_confine.py prices each confinement layer by leaving it
    #: out); the supervisor never sets these, and nothing a user writes reaches them
    layers: spawn.Layers = spawn.ALL_LAYERS
    restrict_devices: bool = True
    #: the device allowlist program every guest cgroup gets on the unified hierarchy (None
    #: without one): loaded here once, because the verifier's run must not land on each start
    device_program: DeviceProgram | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # first, so that a kernel refusing the program stops the runtime before anything runs
        if self.layout.unified is not None:
            self.device_program = DeviceProgram.load(DEFAULT_DEVICE_RULES)
        self.host = spawn.HostView.probe(hidden=self.hidden, layout=self.layout)
        # the fork server's interpreter start (~50 ms) must not land on the first guest's start
        spawn.start_fork_server()

    def cgroup(self, prefix: str, name: str) -> GuestCgroup:
        program = self.device_program if self.restrict_devices else None
        return GuestCgroup(
            self.layout,
            prefix,
            name,
            device_program=program,
            restrict_devices=self.restrict_devices,
        )

    async def begin_spawn(self, domain: Domain, *, log_path: str | None) -> PendingSpawn:
        return _LinuxPending(
            await spawn.begin_spawn(domain, log_path=log_path, host=self.host, layers=self.layers)
        )

    async def spawn(
        self,
        domain: Domain,
        cgroup: CgroupHandle,
        *,
        log_path: str | None,
        netns_path: str | None,
    ) -> ProcessHandle:
        if not isinstance(cgroup, GuestCgroup):
            raise TypeError(f"LinuxRuntime needs a GuestCgroup, got {type(cgroup).__name__}")
        return await spawn_init(
            domain,
            cgroup,
            log_path=log_path,
            netns_path=netns_path,
            host=self.host,
            layers=self.layers,
        )

    async def wait_pid_exit(self, pid: int) -> None:
        await procs.wait_pid_exit(pid)
        procs.reap_if_child(pid)

    def pid_is_guest_init(self, pid: int, pidns_inode: int) -> bool:
        return procs.pid_is_guest_init(pid, pidns_inode)

    def signal_guest_init(self, pid: int, pidns_inode: int, sig: int) -> bool:
        return procs.signal_guest_init(pid, pidns_inode, sig)
