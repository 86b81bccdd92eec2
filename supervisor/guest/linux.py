"""The real :class:`~supervisor.runtime.Runtime`: cgroups v1/v2/hybrid, namespaces, embryos.

:class:`LinuxRuntime` is an async context manager. Made, it detects the cgroup layout, loads the
device allowlist program and probes what a spawn plan needs of the host; entered
(``async with LinuxRuntime() as rt``), it starts its :class:`~supervisor.guest.spawn.SpawnPool`:
the fork servers (so that their interpreter start is not on the first guest's start) and the
spare embryos, topped up by tasks in the pool's own nursery while it is open. Leaving it kills
and reaps every spare and stops the servers; guests already started are not touched (their init
is the supervisor's child, in cgroups of its own). The supervisor enters the runtime around its
nursery, so the pools live and die with it.
"""

from __future__ import annotations

from types import TracebackType

import attrs

from supervisor.guest import procs, spawn
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout
from supervisor.guest.devices import DEFAULT_DEVICE_RULES, DeviceProgram
from supervisor.model import Domain
from supervisor.runtime import CgroupHandle, NamespaceJoin, PendingSpawn, ProcessHandle


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

    Entering it again while it is open (a supervisor given a runtime its caller opened) only
    counts: the outermost exit closes the pool. It can be entered again after it was left (a
    successor supervisor in the same process), with a new pool.
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
    #: the fork servers and spare embryos, running while the runtime is open
    pool: spawn.SpawnPool = attrs.field(init=False, factory=spawn.SpawnPool)
    _depth: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        # first, so that a kernel refusing the program stops the runtime before anything runs
        if self.layout.unified is not None:
            self.device_program = DeviceProgram.load(DEFAULT_DEVICE_RULES)
        self.host = spawn.HostView.probe(hidden=self.hidden, layout=self.layout)

    async def __aenter__(self) -> LinuxRuntime:
        if self._depth == 0:
            await self.pool.__aenter__()
        self._depth += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            await self.pool.__aexit__(exc_type, exc, tb)

    def cgroup_layout(self) -> CgroupLayout:
        return self.layout

    def cgroup(self, prefix: str, name: str) -> GuestCgroup:
        program = self.device_program if self.restrict_devices else None
        return GuestCgroup(
            self.layout,
            prefix,
            name,
            device_program=program,
            restrict_devices=self.restrict_devices,
        )

    async def begin_spawn(
        self, domain: Domain, *, log_path: str | None, joins: tuple[NamespaceJoin, ...] = ()
    ) -> PendingSpawn:
        return _LinuxPending(
            await spawn.begin_spawn(
                self.pool,
                domain,
                log_path=log_path,
                host=self.host,
                layers=self.layers,
                joins=joins,
            )
        )

    async def wait_pid_exit(self, pid: int) -> None:
        await procs.wait_pid_exit(pid)
        procs.reap_if_child(pid)

    def pid_is_guest_init(self, pid: int, pidns_inode: int) -> bool:
        return procs.pid_is_guest_init(pid, pidns_inode)

    def signal_guest_init(self, pid: int, pidns_inode: int, sig: int) -> bool:
        return procs.signal_guest_init(pid, pidns_inode, sig)
