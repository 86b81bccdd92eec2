"""The seam between the supervisor and the kernel: cgroups and guest processes.

:class:`~supervisor.daemon.Supervisor` talks to guests only through a :class:`Runtime`, and this
module holds nothing but that seam: the protocols and the result types they return
(:class:`GuestExit`, :class:`Namespaces`). It imports nothing of ``supervisor.guest``, so the
daemon and the subsystems can depend on it without depending on a runtime.
:class:`~supervisor.guest.linux.LinuxRuntime` is the real one (cgroups, namespaces, embryos made
by fork servers it owns while open); :mod:`supervisor.testing.fakeruntime` keeps everything in
memory so the property-based stress harness can run thousands of operations a second against
the same supervisor code. The fake never stands in for the real one where real behaviour is what
a test checks.

The supervisor asks a runtime what it can do (:meth:`Runtime.cgroup_layout`,
:meth:`CgroupHandle.controller_dir`) rather than checking which runtime it has.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

import attrs

from supervisor.model import Domain

if TYPE_CHECKING:
    from supervisor.guest.cgroups import CgroupLayout


@attrs.frozen
class GuestExit:
    """How the guest's init ended, as its wrapper reports it: an exit status or a signal."""

    status: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, rc: int) -> GuestExit:
        """From a subprocess-style return code (negative = killed by that signal)."""
        return cls(signal=-rc) if rc < 0 else cls(status=rc)


@attrs.frozen
class Namespaces:
    """Inode numbers of the guest init's namespaces, to record in a run dir."""

    pid: int
    mnt: int
    uts: int
    ipc: int
    net: int
    cgroup: int


@attrs.frozen
class NamespaceJoin:
    """A namespace a guest joins instead of making its own (``<lxc:namespace>``): ``kind``
    (net, ipc, uts), the file to open (``/proc/PID/ns/KIND`` of another guest's init, a named
    netns), and the namespace's inode, which the file must still have when it is opened (a pid
    reused by then names another process's namespace); 0: not checked."""

    kind: str
    path: str
    inode: int


class CgroupHandle(Protocol):
    """One guest's cgroup (in every hierarchy the runtime uses)."""

    @property
    def dirname(self) -> str: ...
    def create(self) -> bool: ...
    def apply_limits(self, domain: Domain) -> None: ...
    def controller_dir(self, controller: str) -> str | None:
        """The directory holding ``controller``'s files for this guest (``cpu``, ``cpuacct``,
        ...), or None: the machine has no such controller, or the cgroup is not the kernel's
        (an in-memory runtime's)."""
        ...

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
    def take_console(self) -> int | None:
        """The master of the guest's console pty (a domain with a ``<console>``), handed over
        once: the caller owns the descriptor from then on. None: no console."""
        ...


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
    """Makes cgroups and guest processes, and watches processes it did not start.

    An async context manager: what it keeps to start guests quickly (the real one's fork
    servers and spare embryos) lives from ``__aenter__`` to ``__aexit__``, which the supervisor
    wraps around its own life. Starts need it open.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def cgroup_layout(self) -> CgroupLayout | None:
        """The host's cgroup layout when guests get real cgroups; None for an in-memory
        runtime (then no subsystem writes cgroup files)."""
        ...

    def cgroup(self, prefix: str, name: str) -> CgroupHandle: ...

    async def begin_spawn(
        self, domain: Domain, *, log_path: str | None, joins: tuple[NamespaceJoin, ...] = ()
    ) -> PendingSpawn:
        """Start work on the guest's process that needs neither its cgroup nor its network,
        so that it overlaps the supervisor's own preparation; ``joins``: the namespaces it
        joins instead of making them."""
        ...

    async def wait_pid_exit(self, pid: int) -> None: ...

    def pid_is_guest_init(self, pid: int, pidns_inode: int) -> bool: ...

    def signal_guest_init(self, pid: int, pidns_inode: int, sig: int) -> bool:
        """Send ``sig`` to an adopted guest's init if ``pid`` still is PID 1 of that pid
        namespace: False (nothing sent) when it is gone or the pid now names another process."""
        ...
