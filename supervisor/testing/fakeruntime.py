"""An in-memory :class:`~supervisor.runtime.Runtime`: cgroups and guest processes as Python objects.

Why it exists: the stateful stress harness (:mod:`supervisor.testing.stress`) drives the real
:class:`~supervisor.daemon.Supervisor` through thousands of operations; with real guests each
start costs milliseconds and each guest-initiated end needs a real process to act. This fake
keeps the *kernel's* side in dictionaries, so the supervisor code under test is the same and only
the kernel is imagined. It is never a stand-in where a test checks real behaviour.

What it imitates (the semantics the supervisor relies on)
---------------------------------------------------------
- A cgroup is a name (``<prefix>-<name>``) in the runtime; every :class:`FakeCgroup` handle with
  that name sees the same state, as two ``GuestCgroup`` objects see the same directories.
  ``create`` is idempotent, ``remove`` of a missing cgroup is a no-op and of a populated one fails
  (the kernel's EBUSY, which the real code gives up on with :class:`RuntimeFailure`).
- A guest is three processes in its cgroup: the wrapper (our child), the guest's init (PID 1 of
  its pid namespace) and one daemon the init started. When init ends the kernel ends the whole
  pid namespace and the wrapper reports init's status, so all three go at once.
- Signals to init behave as for a pid namespace's init: a signal it has no handler for is
  ignored, except SIGKILL. **Convention:** a guest whose ``os.initargs`` contain the word
  ``trap`` (as ``sh -c "trap 'exit 0' TERM; ..."`` does) handles SIGTERM by exiting 0; no other
  handlers exist.
- A frozen cgroup's processes cannot act: a handled signal or a guest-initiated end
  (:meth:`FakeRuntime.guest_ends`) is held until thaw. SIGKILL (and so ``kill_all``) ends frozen
  processes too, as the cgroup v2 ``cgroup.kill`` the real runtime uses does.
- Guest-initiated ends: :meth:`FakeRuntime.guest_ends` with ``"reboot"`` (init killed by SIGHUP,
  what reboot(2) RESTART does to a namespace's init), ``"poweroff"`` (SIGINT), ``"crash"``
  (SIGSEGV) or ``"exit0"`` (exit status 0).
- Failure injection: :meth:`FakeRuntime.fail_next` makes the next ``cgroup.create``, ``spawn``,
  ``kill_all``, ``remove``, ``freeze`` or ``thaw`` raise :class:`RuntimeFailure`.

Every async method passes through a trio checkpoint, so cancellation can land where it could on
the real runtime. No trio object is made before the first async call, so a runtime can be built
outside ``trio.run``.
"""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from collections.abc import Iterator
from types import TracebackType
from typing import Literal

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.guest.cgroups import CgroupLayout, cgroup_dir_name
from supervisor.model import Domain
from supervisor.runtime import CgroupHandle, GuestExit, NamespaceJoin, Namespaces

FailOp = Literal["cgroup.create", "spawn", "kill_all", "remove", "freeze", "thaw"]
FAIL_OPS: tuple[FailOp, ...] = ("cgroup.create", "spawn", "kill_all", "remove", "freeze", "thaw")
GuestEndHow = Literal["reboot", "poweroff", "crash", "exit0"]

#: how each guest-initiated end reaches the wrapper: (exit status, signal)
_ENDS: dict[str, GuestExit] = {
    "reboot": GuestExit(signal=signal.SIGHUP),
    "poweroff": GuestExit(signal=signal.SIGINT),
    "crash": GuestExit(signal=signal.SIGSEGV),
    "exit0": GuestExit(status=0),
}


def handles_term(domain: Domain) -> bool:
    """Whether the fake init of ``domain`` handles SIGTERM (the ``trap`` convention)."""
    return any("trap" in arg for arg in domain.os.initargs)


@attrs.define(eq=False)
class _CgroupState:
    """What the kernel knows about one cgroup."""

    members: set[int] = attrs.Factory(set)
    frozen: bool = False


@attrs.frozen
class Leftovers:
    """What exists in the fake kernel: live pids and cgroup names (both empty when clean)."""

    processes: tuple[int, ...]
    cgroups: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.processes or self.cgroups)


@attrs.frozen
class FakeStatistics:
    """Counters of one fake runtime."""

    spawned: int
    live_guests: int
    cgroups: int
    signals: int
    injected_failures: int


@attrs.define(eq=False)
class FakeProcess:
    """One fake guest: wrapper, init and a daemon in the guest's cgroup (a ProcessHandle)."""

    runtime: FakeRuntime
    domain: Domain
    cgroup_name: str
    wrapper_pid: int
    init_pid: int | None
    namespaces: Namespaces | None
    pids: frozenset[int]
    exit: GuestExit | None = None
    #: ends and handled signals held while the cgroup is frozen, applied in order on thaw
    held: list[GuestExit] = attrs.Factory(list)
    _ended: trio.Event | None = None

    def _event(self) -> trio.Event:
        if self._ended is None:
            self._ended = trio.Event()
            if self.exit is not None:
                self._ended.set()
        return self._ended

    @property
    def alive(self) -> bool:
        return self.exit is None

    async def wait(self) -> GuestExit:
        """Wait until init ended; how it ended (the wrapper reports init's status)."""
        await self._event().wait()
        assert self.exit is not None
        return self.exit

    def send_signal(self, sig: int) -> None:
        """Signal init as the kernel would a pid namespace's init (see the module docstring)."""
        if self.exit is not None:
            raise RuntimeFailure(f"pid {self.init_pid} is no longer the guest's init")
        self.runtime.signals += 1
        if sig == signal.SIGKILL:
            self._end(GuestExit(signal=signal.SIGKILL))
        elif sig == signal.SIGTERM and handles_term(self.domain):
            self._act(GuestExit(status=0))
        # any other signal: init has no handler, the kernel drops it

    def take_console(self) -> int | None:
        """No console: a fake guest writes nothing anyone could read."""
        return None

    def _act(self, how: GuestExit) -> None:
        """Something the guest itself does: held while frozen."""
        if self.runtime.cgroup_frozen(self.cgroup_name):
            self.held.append(how)
        else:
            self._end(how)

    def _end(self, how: GuestExit) -> None:
        if self.exit is not None:
            return
        self.exit = how
        self.held.clear()
        self.runtime._forget(self)
        if self._ended is not None:
            self._ended.set()


@attrs.define(eq=False)
class FakeCgroup:
    """A handle on a fake cgroup (a CgroupHandle); the state lives in the runtime."""

    runtime: FakeRuntime
    prefix: str
    name: str

    @property
    def dirname(self) -> str:
        return cgroup_dir_name(self.prefix, self.name)

    @property
    def exists(self) -> bool:
        return self.dirname in self.runtime.cgroups

    @property
    def members(self) -> frozenset[int]:
        state = self.runtime.cgroups.get(self.dirname)
        return frozenset(state.members) if state else frozenset()

    @property
    def frozen(self) -> bool:
        return self.runtime.cgroup_frozen(self.dirname)

    def _state(self) -> _CgroupState:
        try:
            return self.runtime.cgroups[self.dirname]
        except KeyError:
            raise RuntimeFailure(f"cgroup {self.dirname} does not exist") from None

    def create(self) -> bool:
        self.runtime._check("cgroup.create")
        made = self.dirname not in self.runtime.cgroups
        self.runtime.cgroups.setdefault(self.dirname, _CgroupState())
        return made

    def apply_limits(self, domain: Domain) -> None:
        """The fake kernel enforces no limits; writing them needs the cgroup, as for real."""
        self._state()

    def controller_dir(self, controller: str) -> str | None:
        """No controller has files here: subsystems leave a fake cgroup alone."""
        return None

    def pids(self) -> set[int]:
        state = self.runtime.cgroups.get(self.dirname)
        return set(state.members) if state else set()

    def is_frozen(self) -> bool:
        return self._state().frozen

    async def freeze(self) -> None:
        await trio.lowlevel.checkpoint()
        self.runtime._check("freeze")
        self._state().frozen = True

    async def thaw(self) -> None:
        await trio.lowlevel.checkpoint()
        self.runtime._check("thaw")
        self._state().frozen = False
        for proc in list(self.runtime.processes_in(self.dirname)):
            while proc.held and proc.alive:
                proc._end(proc.held.pop(0))

    async def kill_all(self, *, wait: bool = True) -> None:
        await trio.lowlevel.checkpoint()
        self.runtime._check("kill_all")
        for proc in list(self.runtime.processes_in(self.dirname)):
            self.runtime.signals += 1
            proc._end(GuestExit(signal=signal.SIGKILL))

    async def remove(self) -> None:
        await trio.lowlevel.checkpoint()
        self.runtime._check("remove")
        state = self.runtime.cgroups.get(self.dirname)
        if state is None:
            return
        if state.members:
            raise RuntimeFailure(
                f"cannot remove cgroup {self.dirname}: still has {sorted(state.members)}"
            )
        del self.runtime.cgroups[self.dirname]


@attrs.define(eq=False)
class _FakePending:
    """A begun start (a PendingSpawn): nothing to do early in memory, so ``finish`` does it
    all."""

    runtime: FakeRuntime
    domain: Domain
    log_path: str | None

    @property
    def netns_source(self) -> str | None:
        return None

    async def finish(self, cgroup: CgroupHandle, *, netns_path: str | None) -> FakeProcess:
        return await self.runtime.spawn(
            self.domain, cgroup, log_path=self.log_path, netns_path=netns_path
        )

    async def abort(self) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class FakeRuntime:
    """The in-memory kernel: cgroups by name, live guest processes by pid."""

    cgroups: dict[str, _CgroupState] = attrs.Factory(dict)
    #: live guests by init pid
    guests: dict[int, FakeProcess] = attrs.Factory(dict)
    #: every domain definition spawned, in order (name, domain)
    spawn_log: list[tuple[str, Domain]] = attrs.Factory(list)
    signals: int = 0
    injected: int = 0
    _failures: Counter[str] = attrs.Factory(Counter)
    _pids: Iterator[int] = attrs.Factory(lambda: itertools.count(1000))
    _inodes: Iterator[int] = attrs.Factory(lambda: itertools.count(4026540000))

    # -- the Runtime protocol ------------------------------------------------------------------

    async def __aenter__(self) -> FakeRuntime:
        """Nothing to keep open in memory (a runtime can serve one supervisor after another)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def cgroup_layout(self) -> CgroupLayout | None:
        """No real cgroups: no subsystem writes cgroup files for a fake guest."""
        return None

    def cgroup(self, prefix: str, name: str) -> FakeCgroup:
        return FakeCgroup(self, prefix, name)

    async def begin_spawn(
        self, domain: Domain, *, log_path: str | None, joins: tuple[NamespaceJoin, ...] = ()
    ) -> _FakePending:
        """Nothing to start early in memory: the whole spawn happens in ``finish`` (an
        in-memory guest has no namespaces to join)."""
        await trio.lowlevel.checkpoint()
        return _FakePending(self, domain, log_path)

    async def spawn(
        self,
        domain: Domain,
        cgroup: CgroupHandle,
        *,
        log_path: str | None,
        netns_path: str | None,
    ) -> FakeProcess:
        """The whole start in one step (what a begun start's ``finish`` does; not part of the
        Runtime protocol): the guest's three processes, in ``cgroup``."""
        await trio.lowlevel.checkpoint()
        self._check("spawn")
        state = self.cgroups.get(cgroup.dirname)
        if state is None:
            raise RuntimeFailure(f"cannot join cgroup {cgroup.dirname}: it does not exist")
        wrapper, init, daemon = next(self._pids), next(self._pids), next(self._pids)
        ns = Namespaces(*(next(self._inodes) for _ in range(6)))
        proc = FakeProcess(
            runtime=self,
            domain=domain,
            cgroup_name=cgroup.dirname,
            wrapper_pid=wrapper,
            init_pid=init,
            namespaces=ns,
            pids=frozenset((wrapper, init, daemon)),
        )
        state.members.update(proc.pids)
        self.guests[init] = proc
        self.spawn_log.append((domain.name, domain))
        await trio.lowlevel.checkpoint()
        return proc

    async def wait_pid_exit(self, pid: int) -> None:
        proc = self.guests.get(pid)
        if proc is None:
            await trio.lowlevel.checkpoint()
            return
        await proc.wait()

    def pid_is_guest_init(self, pid: int, pidns_inode: int) -> bool:
        proc = self.guests.get(pid)
        return (
            proc is not None
            and proc.namespaces is not None
            and (proc.namespaces.pid == pidns_inode)
        )

    def signal_guest_init(self, pid: int, pidns_inode: int, sig: int) -> bool:
        if not self.pid_is_guest_init(pid, pidns_inode):
            return False
        self.guests[pid].send_signal(sig)
        return True

    # -- driving guests ------------------------------------------------------------------------

    def guest_of(self, name: str) -> FakeProcess | None:
        """The live guest whose domain is ``name`` (None if it has no live init)."""
        for proc in self.guests.values():
            if proc.domain.name == name:
                return proc
        return None

    def guest_ends(self, name: str, how: GuestEndHow) -> None:
        """Make guest ``name`` end from inside: reboot, poweroff, crash or exit0.

        A frozen guest acts when it is thawed. Raises LookupError when it has no live init.
        """
        proc = self.guest_of(name)
        if proc is None:
            raise LookupError(f"guest {name} has no live init")
        proc._act(_ENDS[how])

    def fail_next(self, op: FailOp, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` raise RuntimeFailure."""
        if op not in FAIL_OPS:
            raise ValueError(f"unknown operation {op!r}; known: {', '.join(FAIL_OPS)}")
        self._failures[op] += times

    def pending_failures(self) -> dict[str, int]:
        """Injected failures not consumed yet."""
        return {op: n for op, n in self._failures.items() if n > 0}

    def clear_failures(self) -> None:
        self._failures.clear()

    # -- views ---------------------------------------------------------------------------------

    def cgroup_frozen(self, dirname: str) -> bool:
        state = self.cgroups.get(dirname)
        return state is not None and state.frozen

    def processes_in(self, dirname: str) -> list[FakeProcess]:
        return [p for p in self.guests.values() if p.cgroup_name == dirname]

    def leftovers(self) -> Leftovers:
        """Live processes and existing cgroups (empty after a clean teardown)."""
        pids = sorted(p for proc in self.guests.values() for p in proc.pids)
        return Leftovers(processes=tuple(pids), cgroups=tuple(sorted(self.cgroups)))

    def statistics(self) -> FakeStatistics:
        return FakeStatistics(
            spawned=len(self.spawn_log),
            live_guests=len(self.guests),
            cgroups=len(self.cgroups),
            signals=self.signals,
            injected_failures=self.injected,
        )

    # -- internals -----------------------------------------------------------------------------

    def _check(self, op: FailOp) -> None:
        if self._failures[op] > 0:
            self._failures[op] -= 1
            self.injected += 1
            raise RuntimeFailure(f"injected failure: {op}")

    def _forget(self, proc: FakeProcess) -> None:
        if proc.init_pid is not None:
            self.guests.pop(proc.init_pid, None)
        state = self.cgroups.get(proc.cgroup_name)
        if state is not None:
            state.members.difference_update(proc.pids)
