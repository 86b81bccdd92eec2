"""The supervisor: definitions, one trio task per running guest, events on the bus.

Theory of operation
-------------------
:class:`Supervisor` owns a :class:`GuestSlot` per defined domain. A slot holds the domain's
:class:`~supervisor.lifecycle.Lifecycle` (the pure table that decides what every request and
every end of init means) and the runtime handles (cgroup, process). The rule is simple: **every
change of a slot goes through** ``Lifecycle.apply``; this module only carries out the actions the
table returns and publishes the events it lists, so the event sequences are the table's.

- API calls (start, shutdown, destroy, reboot, suspend, resume) apply their input at once and do
  the quick actions themselves (signal init, freeze, kill the cgroup). START launches the guest's
  task in the guests' nursery.
- The guest task (:meth:`Supervisor._guest_task`) boots the guest (cgroup, limits, ``prepare``
  hooks, spawn), waits for init to end (with the shutdown deadline, if one is armed), classifies
  the end, and then releases, respawns or schedules a restart as the table says. A failure in
  one guest's task is caught there and reported as ``STOPPED FAILED``: it never reaches the
  nursery, so it cannot take down another guest or the supervisor.
- Runtime state of every running guest is written to the run dir (pids, namespace inodes,
  cgroup). A supervisor that starts and finds records re-adopts live guests (watching their init
  through a pidfd) and cleans up after dead ones, reporting each.

The daemon (:func:`run_daemon`) wraps this: it prints events one per line, starts autostart
guests, and on SIGINT/SIGTERM shuts every guest down within a deadline (then kills) and exits 0;
``--keep-guests`` leaves them running for an upgrade-restart instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from supervisor import lifecycle as lc
from supervisor import nsutil
from supervisor.bus import Bus, Gap
from supervisor.errors import (
    ConflictError,
    InvalidDocument,
    InvalidOperation,
    NotFound,
    RuntimeFailure,
    VsvError,
)
from supervisor.facade import DomainStatus, Lease, NetworkStatus
from supervisor.guest.cgroups import GuestCgroup
from supervisor.guest.spawn import GuestExit
from supervisor.hooks import GuestContext, HookRecords
from supervisor.lifecycle import Action, EndKind, GuestEnd, Input, Lifecycle, Phase
from supervisor.model import CONTEXT_ID_MAX, CONTEXT_ID_MIN, Domain, Network
from supervisor.net.nics import PlumbedNic
from supervisor.net.subsystem import NetworkSubsystem, require_network
from supervisor.runtime import (
    CgroupHandle,
    LinuxRuntime,
    PendingSpawn,
    ProcessHandle,
    Runtime,
)
from supervisor.sched.params import apply_to_domain, parse_value
from supervisor.sched.subsystem import SchedSubsystem, resolve_flags
from supervisor.store import ConfigStore, RunStore, atomic_write
from supervisor.xml import format_domain, parse_domain

log = logging.getLogger("vsv.daemon")

DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: a guest's log (its stdout and stderr, in the run dir) is cut back beyond this size
DEFAULT_LOG_MAX_BYTES = 8 << 20
#: how often the running guests' log sizes are checked
LOG_CHECK_INTERVAL = 2.0


@attrs.define(eq=False)
class GuestSlot:
    """One defined domain and, while it runs, its runtime handles."""

    domain: Domain
    life: Lifecycle
    cgroup: CgroupHandle | None = None
    process: ProcessHandle | None = None
    #: pid of an adopted guest's init (not our child: a previous supervisor started it), and
    #: the inode of its pid namespace, which tells it from a process that reused the pid
    adopted_pid: int | None = None
    adopted_pidns: int | None = None
    #: every namespace inode the predecessor recorded (written again into the run record)
    adopted_namespaces: dict[str, int] | None = None
    ctx: GuestContext | None = None
    started_at: float | None = None
    restarts: int = 0
    task_running: bool = False
    #: set by API calls that kill the guest: the end is then ours, not the guest's
    killed_by_us: bool = False
    reboot_requested: bool = False
    #: cancel scope of the wait for init's end; its deadline is the shutdown timeout
    wait_scope: trio.CancelScope | None = None
    start_scope: trio.CancelScope | None = None
    restart_scope: trio.CancelScope | None = None
    #: set whenever a boot attempt finishes (STARTED or failed) and when the task ends
    settled: trio.Event = attrs.Factory(trio.Event)
    start_error: BaseException | None = None
    task_done: trio.Event = attrs.Factory(trio.Event)
    #: a definition stored while the guest ran; it replaces ``domain`` once the guest stops
    pending: Domain | None = None

    def failure(self) -> BaseException | None:
        """Why the last start failed (None: it did not)."""
        return self.start_error

    def status(self) -> DomainStatus:
        pid = self.adopted_pid
        if self.process is not None:
            pid = self.process.init_pid
        return DomainStatus(
            name=self.domain.name,
            id=self.domain.id,
            uuid=self.domain.uuid,
            type=self.domain.type,
            state=self.life.status.state.name,
            reason=self.life.status.reason.name,
            autostart=self.domain.autostart,
            init_pid=pid,
            started_at=self.started_at,
            restarts=self.restarts,
        )


Spawner = Callable[[Callable[..., Awaitable[Any]], tuple[Any, ...]], None]


@attrs.define(eq=False)
class Supervisor:
    """The running supervisor (implements :class:`supervisor.facade.SupervisorFacade`)."""

    state_dir: Path
    run_dir: Path
    prefix: str = "vsv"
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    shutdown_signal: int = signal.SIGTERM
    restart_policy: lc.RestartPolicy = attrs.Factory(lc.RestartPolicy)
    #: the kernel side (None: the real one, made when the supervisor runs)
    runtime: Runtime | None = None
    #: host paths guests must not see besides the state and run dirs (the API sockets)
    hidden_paths: tuple[str, ...] = ()
    #: publish the supervisor's own STARTED (the daemon does): first of everything this
    #: supervisor publishes, before what taking over networks and guests reports
    announce: bool = False
    #: set by shutdown_all: no guest starts any more
    stopping: bool = False
    #: where host-side networking happens: None = our own namespace, else a netns path
    host_netns: str | None = None
    #: False: no network subsystem (guests with <interface> then fail to start)
    networking: bool = True
    net: NetworkSubsystem | None = None
    #: CPU limits and the idle-time tuner (real runtime only)
    sched: SchedSubsystem | None = None
    #: the size at which a guest's log is cut back (0: never); see :meth:`_cap_logs`
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_check_interval: float = LOG_CHECK_INTERVAL
    _bus: Bus[GuestContext] = attrs.Factory(Bus)
    slots: dict[str, GuestSlot] = attrs.Factory(dict)
    #: names of the guests re-adopted from a previous supervisor at start-up
    adopted: list[str] = attrs.Factory(list)
    config: ConfigStore = attrs.field(init=False)
    runs: RunStore = attrs.field(init=False)
    _spawn: trio.MemorySendChannel[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None = (
        None
    )

    def __attrs_post_init__(self) -> None:
        self.config = ConfigStore(self.state_dir)
        self.runs = RunStore(self.run_dir)

    @property
    def bus(self) -> Bus[GuestContext]:
        return self._bus

    # ------------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load definitions, re-adopt what a predecessor left, then serve until cancelled.

        Guest tasks run in a nursery inside this task; callers start it with ``nursery.start``
        and can call the operations once it is started.
        """
        if self.runtime is None:
            hidden = (str(self.state_dir), str(self.run_dir), *self.hidden_paths)
            self.runtime = LinuxRuntime(hidden=hidden)
        if isinstance(self.runtime, LinuxRuntime):
            self.sched = SchedSubsystem.open(self._bus, self.runtime.layout)
        self.config.ensure()
        self.runs.ensure()
        domains, problems = self.config.load_domains()
        for problem in problems:
            log.warning("ignoring stored definition: %s", problem)
        for domain in domains:
            self.slots[domain.name] = self._new_slot(domain)
        send, receive = trio.open_memory_channel[
            tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]
        ](math.inf)
        self.adopted = self._adoptable()
        if self.announce:
            self._bus.publish_nowait(
                "supervisor",
                None,
                "STARTED",
                None,
                {"pid": os.getpid(), "adopted": ",".join(self.adopted)},
            )
        if self.networking:
            self.net = await NetworkSubsystem.open(
                self._bus,
                prefix=self.prefix,
                host_netns=self.host_netns,
                run_dir=self.run_dir,
                config=self.config,
                runs=self.runs,
            )
        try:
            async with trio.open_nursery() as top:
                if self.sched is not None:
                    await top.start(self.sched.run)
                if self.net is not None:
                    await top.start(self.net.run)
                if self.log_max_bytes > 0:
                    top.start_soon(self._cap_logs)
                async with trio.open_nursery() as guests:
                    guests.start_soon(self._spawner, receive)
                    self._spawn = send
                    await self._adopt_leftovers()
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._spawn = None
            if self.net is not None:
                with trio.CancelScope(shield=True):
                    await self.net.aclose()

    async def _spawner(
        self,
        receive: trio.MemoryReceiveChannel[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]],
    ) -> None:
        # The guests' nursery is owned by run(); tasks reach it through this channel so the
        # nursery object is never stored on the supervisor.
        async with trio.open_nursery() as nursery:
            async for fn, args in receive:
                nursery.start_soon(fn, *args)

    def _launch(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._spawn is None:
            raise InvalidOperation("the supervisor is not running")
        self._spawn.send_nowait((fn, args))

    @staticmethod
    def _take_pending(slot: GuestSlot) -> None:
        """Make the stored definition the one the guest boots from (it stopped, or restarts)."""
        if slot.pending is None:
            return
        domain, slot.pending = slot.pending, None
        Supervisor._run_with(slot, domain)

    @staticmethod
    def _run_with(slot: GuestSlot, domain: Domain) -> None:
        """Make ``domain`` the guest's definition, its end-of-life policies included."""
        slot.domain = domain
        slot.life.set_policies(domain)

    def _replace_definition(self, slot: GuestSlot, domain: Domain) -> None:
        """Swap in a new definition for a stopped guest, keeping its state and reason."""
        slot.pending = None
        self._run_with(slot, domain)

    def _new_slot(self, domain: Domain) -> GuestSlot:
        return GuestSlot(domain=domain, life=Lifecycle.for_domain(domain, self.restart_policy))

    def _slot(self, name: str) -> GuestSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise NotFound(f"domain {name!r} is not defined") from None

    def _publish_step(self, name: str, step: lc.Step) -> None:
        for emit in step.events:
            self._bus.publish_nowait("domain", name, emit.type, emit.detail, emit.data)

    def _apply(
        self,
        slot: GuestSlot,
        input: Input,
        end: GuestEnd | None = None,
        data: tuple[tuple[str, str], ...] = (),
    ) -> lc.Step:
        step = slot.life.apply(input, now=time.monotonic(), end=end, data=data)
        self._publish_step(slot.domain.name, step)
        return step

    # ------------------------------------------------------------------------ definitions

    def list_domains(self) -> list[DomainStatus]:
        return [self.slots[n].status() for n in sorted(self.slots)]

    def domain_status(self, name: str) -> DomainStatus:
        return self._slot(name).status()

    def get_domain(self, name: str) -> Domain:
        return self._slot(name).domain

    def _check_conflicts(self, domain: Domain) -> None:
        for other in self.slots.values():
            d = other.domain
            if d.name == domain.name:
                continue
            if domain.uuid is not None and d.uuid == domain.uuid:
                raise ConflictError(
                    f"domain {domain.name}: uuid {domain.uuid} is already used by {d.name}"
                )
            if domain.id is not None and d.id == domain.id:
                raise ConflictError(
                    f"domain {domain.name}: context id {domain.id} is already used by {d.name}"
                )

    def _complete(self, domain: Domain, previous: Domain | None) -> Domain:
        """Fill what a definition may leave out: uuid and (vserver dialect) context id."""
        import uuid as uuidlib

        changes: dict[str, Any] = {}
        if domain.uuid is None:
            changes["uuid"] = previous.uuid if previous else str(uuidlib.uuid4())
        if domain.id is None and domain.type == "vserver":
            if previous is not None and previous.id is not None:
                changes["id"] = previous.id
            else:
                used = {s.domain.id for s in self.slots.values()}
                changes["id"] = next(
                    i for i in range(CONTEXT_ID_MIN, CONTEXT_ID_MAX + 1) if i not in used
                )
        return attrs.evolve(domain, **changes) if changes else domain

    async def define_domain(self, domain: Domain) -> Domain:
        """Add or update a definition (DEFINED ADDED / UPDATED); refuses duplicates.

        Updating a running guest changes its stored definition; the running guest keeps the
        old one until it is next started.
        """
        from supervisor.validate import check_domain

        problems = check_domain(domain)
        if problems:
            raise InvalidDocument(problems)
        previous = self.slots.get(domain.name)
        if (
            previous is not None
            and domain.uuid is not None
            and previous.domain.uuid
            not in (
                None,
                domain.uuid,
            )
        ):
            raise ConflictError(
                f"domain {domain.name} exists with uuid {previous.domain.uuid}, not {domain.uuid}"
            )
        domain = self._complete(domain, previous.domain if previous else None)
        self._check_conflicts(domain)
        self.config.save_domain(domain)
        if previous is None:
            self.slots[domain.name] = self._new_slot(domain)
            detail = "ADDED"
        else:
            if previous.life.phase is Phase.SHUTOFF and not previous.task_running:
                self._replace_definition(previous, domain)
            else:
                # a running guest keeps the definition it started with; the new one is used
                # from its next start (as libvirt's "persistent config" vs "live config")
                previous.pending = domain
                previous.domain = attrs.evolve(previous.domain, autostart=domain.autostart)
                self._rerecord(previous)
            detail = "UPDATED"
        self._bus.publish_nowait("domain", domain.name, "DEFINED", detail)
        return domain

    async def undefine_domain(self, name: str) -> None:
        slot = self._slot(name)
        if slot.life.phase is not Phase.SHUTOFF or slot.task_running:
            raise InvalidOperation(
                f"domain {name} is {slot.life.status.state.name.lower()}: stop it first"
            )
        self.config.remove_domain(name)
        del self.slots[name]
        self._bus.publish_nowait("domain", name, "UNDEFINED", "REMOVED")

    async def set_autostart(self, name: str, autostart: bool) -> None:
        slot = self._slot(name)
        domain = attrs.evolve(slot.domain, autostart=autostart)
        self.config.save_domain(domain)
        slot.domain = domain

    # ------------------------------------------------------------------------ operations

    async def start_domain(self, name: str) -> DomainStatus:
        """Start the guest and wait until it runs (STARTED BOOTED) or failed to start."""
        slot = self._slot(name)
        if self.stopping:
            raise InvalidOperation(f"domain {name}: the supervisor is stopping, no guest starts")
        if self._running_id_conflict(slot):
            raise ConflictError(
                f"domain {name}: context id {slot.domain.id} is in use by a running guest"
            )
        step = slot.life.apply(Input.START, now=time.monotonic())
        self._publish_step(name, step)
        slot.settled = trio.Event()
        slot.start_error = None
        if Action.CANCEL_RESTART in step.actions and slot.restart_scope is not None:
            slot.restart_scope.cancel()  # the waiting task proceeds to boot
        else:
            slot.task_done = trio.Event()
            slot.task_running = True
            self._launch(self._guest_task, slot)
        await slot.settled.wait()
        error = slot.failure()
        if error is not None:
            if isinstance(error, VsvError):
                raise error
            raise RuntimeFailure(f"domain {name}: start failed: {error}") from error
        return slot.status()

    def _running_id_conflict(self, slot: GuestSlot) -> bool:
        if slot.domain.id is None:
            return False
        return any(
            s is not slot and s.domain.id == slot.domain.id and s.life.phase is not Phase.SHUTOFF
            for s in self.slots.values()
        )

    async def shutdown_domain(self, name: str, *, timeout: float | None = None) -> None:
        """Ask init to power off (SIGTERM by default); kill it after ``timeout`` seconds.

        Returns once the request is made; the end is reported as events.
        """
        slot = self._slot(name)
        step = self._apply(slot, Input.SHUTDOWN)
        if Action.CANCEL_RESTART in step.actions and slot.restart_scope is not None:
            slot.restart_scope.cancel()
        if Action.ASK_SHUTDOWN in step.actions:
            deadline = trio.current_time() + (self.shutdown_timeout if timeout is None else timeout)
            if slot.wait_scope is not None:
                slot.wait_scope.deadline = deadline
            self._signal_init(slot, self.shutdown_signal)

    async def destroy_domain(self, name: str) -> None:
        """Kill every process of the guest (its whole cgroup) and wait until it is released."""
        slot = self._slot(name)
        step = self._apply(slot, Input.DESTROY)
        await self._do_actions(slot, step)
        if step.previous is Phase.DESTROYING and Action.KILL not in step.actions:
            # a destroy whose kill failed (or is still running): kill again rather than wait
            # for an end that may never come
            await self._kill(slot)
        if slot.task_running:
            await slot.task_done.wait()

    async def reboot_domain(self, name: str) -> None:
        """Restart the guest in place: its processes are killed and init respawned (REBOOT)."""
        slot = self._slot(name)
        step = self._apply(slot, Input.REBOOT)
        if Action.ASK_REBOOT in step.actions:
            slot.reboot_requested = True
            await self._kill(slot, wait=False)

    async def suspend_domain(self, name: str) -> None:
        slot = self._slot(name)
        step = self._apply(slot, Input.SUSPEND)
        await self._do_actions(slot, step)

    async def resume_domain(self, name: str) -> None:
        slot = self._slot(name)
        step = self._apply(slot, Input.RESUME)
        await self._do_actions(slot, step)

    async def _do_actions(self, slot: GuestSlot, step: lc.Step) -> None:
        """The quick actions an API call carries out itself."""
        for action in step.actions:
            if action is Action.KILL:
                if slot.start_scope is not None:
                    slot.start_scope.cancel()
                await self._kill(slot)
            elif action is Action.FREEZE and slot.cgroup is not None:
                await slot.cgroup.freeze()
            elif action is Action.THAW and slot.cgroup is not None:
                await slot.cgroup.thaw()
            elif action is Action.CANCEL_RESTART and slot.restart_scope is not None:
                slot.restart_scope.cancel()
            elif action is Action.RELEASE and not slot.task_running:
                await self._release(slot)
                # a preserved guest's task is long gone: its stop ends the live definition here
                if slot.life.phase is Phase.SHUTOFF:
                    self._take_pending(slot)

    def _signal_init(self, slot: GuestSlot, sig: int) -> None:
        with contextlib.suppress(RuntimeFailure, ProcessLookupError):
            if slot.process is not None:
                slot.process.send_signal(sig)
            elif slot.adopted_pid is not None and slot.adopted_pidns is not None:
                assert self.runtime is not None
                self.runtime.signal_guest_init(slot.adopted_pid, slot.adopted_pidns, sig)

    async def _kill(self, slot: GuestSlot, *, wait: bool = True) -> None:
        slot.killed_by_us = True
        if slot.cgroup is not None:
            await slot.cgroup.kill_all(wait=wait)

    # ------------------------------------------------------------------------ the guest task

    async def _guest_task(self, slot: GuestSlot, adopted: bool = False) -> None:
        """Run one guest from START (or adoption) until it is released for good."""
        name = slot.domain.name
        try:
            respawn = adopted
            while True:
                if not respawn and not await self._boot(slot):
                    return
                respawn = False
                exit_ = await self._wait_end(slot)
                end = self._classify(slot, exit_)
                slot.process = None
                slot.adopted_pid = slot.adopted_pidns = slot.adopted_namespaces = None
                step = self._apply(slot, end.input, end)
                again = await self._after_end(slot, step)
                if again is None:
                    return
                respawn = again
        except Exception as exc:
            log.exception("guest %s: supervisor error", name)
            with trio.CancelScope(shield=True):
                await self._fail_hard(slot, exc)
        finally:
            slot.task_running = False
            if slot.life.phase is Phase.SHUTOFF:
                self._take_pending(slot)
            slot.settled.set()
            slot.task_done.set()

    async def _boot(self, slot: GuestSlot, *, keep_resources: bool = False) -> bool:
        """Prepare and spawn; True when init runs. A failure is reported and released here."""
        domain = slot.domain
        pending: PendingSpawn | None = None
        try:
            with trio.CancelScope() as scope:
                slot.start_scope = scope
                assert self.runtime is not None
                # the guest's process gets going (its mounts) while the cgroup is made and the
                # prepare hooks run; finish() then puts it in the cgroup and lets init run
                pending = await self.runtime.begin_spawn(
                    domain, log_path=str(self._log_path(domain.name))
                )
                if not keep_resources:
                    cgroup = self.runtime.cgroup(self.prefix, domain.name)
                    # recorded before anything is made: a supervisor killed from here on
                    # leaves a record its successor cleans up after (no init pid: not alive)
                    self.runs.write(
                        "domains",
                        domain.name,
                        {"name": domain.name, "prefix": self.prefix, "cgroup": cgroup.dirname},
                    )
                    slot.cgroup = cgroup
                    fresh = cgroup.create()
                    cgroup.apply_limits(domain)
                    slot.ctx = GuestContext(
                        domain,
                        cgroup,
                        self.prefix,
                        self.run_dir,
                        fresh_cgroup=fresh,
                        netns_source=pending.netns_source,
                    )
                    await self._bus.run_prepare(slot.ctx)
                    slot.ctx.prepared = True
                assert slot.cgroup is not None
                finishing, pending = pending, None
                slot.process = await finishing.finish(
                    slot.cgroup, netns_path=slot.ctx.netns_path if slot.ctx else None
                )
            slot.start_scope = None
            if scope.cancelled_caught:
                raise RuntimeFailure(f"start of {domain.name} was cancelled")  # noqa: TRY301
        except Exception as exc:
            slot.start_scope = None
            slot.start_error = exc
            log.warning("guest %s: start failed: %s", domain.name, exc)
            step = self._apply(slot, Input.START_FAILED)
            if Action.RELEASE in step.actions:
                with trio.CancelScope(shield=True):
                    await self._release(slot)
            slot.settled.set()
            return False
        finally:
            if pending is not None:  # failed or cancelled before finish(): drop the embryo
                with trio.CancelScope(shield=True):
                    await pending.abort()
        slot.killed_by_us = False
        slot.reboot_requested = False
        slot.started_at = time.time()
        step = self._apply(slot, Input.STARTED)
        self._record(slot)
        slot.settled.set()
        if Action.KILL in step.actions:
            await self._kill(slot)
        return True

    async def _cap_logs(self) -> None:
        """Keep every running guest's log under ``log_max_bytes``.

        The guests write their logs themselves (the file is their stdout and stderr), so a
        chatty guest could fill the run dir, which is memory on a tmpfs. Like logrotate's
        copytruncate: the newest half goes to ``NAME.log.1`` and the log is emptied; the guest's
        descriptor appends, so its next line lands at the new start. Lines written between the
        copy and the truncation are lost, which is the price of not relaying every byte.
        """
        while True:
            await trio.sleep(self.log_check_interval)
            for slot in list(self.slots.values()):
                if not slot.task_running:
                    continue
                path = self._log_file(slot.domain.name)
                try:
                    if os.stat(path).st_size <= self.log_max_bytes:
                        continue
                    keep = self.log_max_bytes // 2
                    await trio.to_thread.run_sync(cut_back_log, path, keep)
                except OSError as exc:
                    if not isinstance(exc, FileNotFoundError):
                        log.warning("guest %s: log %s: %s", slot.domain.name, path, exc)

    def _log_path(self, name: str) -> Path:
        """The guest's log file, its directory made if missing."""
        path = self._log_file(name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def _log_file(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def domain_log_path(self, name: str) -> str | None:
        self._slot(name)
        return str(self._log_file(name))

    async def _wait_end(self, slot: GuestSlot) -> GuestExit | None:
        """Wait for init to end; a shutdown deadline that passes escalates to a kill."""
        while True:
            with trio.CancelScope() as scope:
                slot.wait_scope = scope
                if slot.life.phase is Phase.STOPPING:
                    scope.deadline = trio.current_time() + self.shutdown_timeout
                if slot.process is not None:
                    result: GuestExit | None = await slot.process.wait()
                else:
                    assert slot.adopted_pid is not None
                    assert self.runtime is not None
                    await self.runtime.wait_pid_exit(slot.adopted_pid)
                    result = None
            slot.wait_scope = None
            if not scope.cancelled_caught:
                return result
            # the shutdown timeout passed: escalate
            step = self._apply(slot, Input.SHUTDOWN_TIMEOUT)
            await self._do_actions(slot, step)

    def _classify(self, slot: GuestSlot, exit_: GuestExit | None) -> GuestEnd:
        if slot.reboot_requested:
            return GuestEnd(EndKind.REBOOT, signal=signal.SIGHUP)
        if exit_ is None:
            # an adopted guest is not our child: how it ended went to whoever reaped it
            if slot.killed_by_us:
                return GuestEnd(EndKind.KILLED, signal=signal.SIGKILL)
            return GuestEnd(EndKind.POWEROFF, exit_code=0)
        status: lc.ExitStatus = (
            (True, exit_.status, 0) if exit_.status is not None else (False, 0, exit_.signal or 0)
        )
        return lc.classify_exit(status, killed_by_us=slot.killed_by_us)

    async def _after_end(self, slot: GuestSlot, step: lc.Step) -> bool | None:
        """Carry out what the table says after init ended.

        Returns None when the task is done, False to boot again from scratch, True to respawn
        init with the resources kept.
        """
        for action in step.actions:
            if action is Action.THAW and slot.cgroup is not None:
                await slot.cgroup.thaw()
            elif action is Action.RELEASE:
                with trio.CancelScope(shield=True):
                    await self._release(slot)
            elif action is Action.RESPAWN:
                await trio.sleep(step.delay)
                slot.restarts += 1
                # leftovers of the previous init (a pid namespace dies with its init)
                if slot.cgroup is not None:
                    await slot.cgroup.kill_all()
                if not await self._boot(slot, keep_resources=True):
                    return None
                return True
            elif action is Action.SCHEDULE_RESTART:
                with trio.CancelScope() as scope:
                    slot.restart_scope = scope
                    await trio.sleep(step.delay)
                slot.restart_scope = None
                if slot.life.phase is Phase.RESTARTING:
                    self._apply(slot, Input.RESTART_DUE)
                if slot.life.phase is not Phase.STARTING:
                    return None
                slot.restarts += 1
                # a restart is a new boot: it uses the stored definition (libvirt drops live-only
                # changes when a guest stops, and this guest did stop)
                self._take_pending(slot)
                return False
        return None

    async def _release(self, slot: GuestSlot) -> None:
        """Undo everything a boot did: processes, hooks' resources, cgroup, run record."""
        if slot.cgroup is not None:
            try:
                await slot.cgroup.kill_all()
            except RuntimeFailure as exc:
                log.warning("guest %s: kill on release: %s", slot.domain.name, exc)
        if slot.ctx is not None and slot.ctx.prepared:
            try:
                await self._bus.run_release(slot.ctx)
            except VsvError as exc:
                log.warning("guest %s: release hooks: %s", slot.domain.name, exc)
        if slot.cgroup is not None:
            try:
                await slot.cgroup.remove()
            except RuntimeFailure as exc:
                log.warning("guest %s: cgroup removal: %s", slot.domain.name, exc)
        slot.cgroup = None
        slot.ctx = None
        slot.process = None
        slot.adopted_pid = slot.adopted_pidns = slot.adopted_namespaces = None
        slot.started_at = None
        self.runs.remove("domains", slot.domain.name)

    async def _fail_hard(self, slot: GuestSlot, exc: BaseException) -> None:
        """The supervisor's own code failed for this guest: clean up, report, stay up."""
        slot.start_error = exc
        step = slot.life.apply(
            Input.FAILED_HARD, now=time.monotonic(), data=(("error", str(exc)[:200]),)
        )
        if Action.CANCEL_RESTART in step.actions and slot.restart_scope is not None:
            slot.restart_scope.cancel()
        await self._release(slot)  # the step's RELEASE
        with contextlib.suppress(Exception):
            self._publish_step(slot.domain.name, step)

    # ------------------------------------------------------------------------ run records

    def _record(self, slot: GuestSlot) -> None:
        proc = slot.process
        record: dict[str, Any] = {
            "name": slot.domain.name,
            "uuid": slot.domain.uuid,
            "prefix": self.prefix,
            "started_at": slot.started_at,
            "cgroup": slot.cgroup.dirname if slot.cgroup else None,
            "hooks": slot.ctx.records.to_json() if slot.ctx else {},
        }
        if proc is not None:
            record["wrapper_pid"] = proc.wrapper_pid
            record["init_pid"] = proc.init_pid
            record["namespaces"] = attrs.asdict(proc.namespaces) if proc.namespaces else None
        elif slot.adopted_pid is not None:
            record["wrapper_pid"] = record["init_pid"] = slot.adopted_pid
            record["namespaces"] = slot.adopted_namespaces
        if slot.pending is not None:
            # the running guest's definition is not the stored one (redefined, or changed
            # live): a successor that adopts the guest must keep it, as libvirt keeps the live
            # XML of a running domain across a daemon restart
            record["live_domain"] = format_domain(slot.domain)
        self.runs.write("domains", slot.domain.name, record)

    def _rerecord(self, slot: GuestSlot) -> None:
        """Write the run record again after a change, if the guest has one (it runs)."""
        if slot.process is not None or slot.adopted_pid is not None:
            self._record(slot)

    @staticmethod
    def _restore_live(slot: GuestSlot, record: Mapping[str, Any]) -> None:
        """An adopted guest gets back the definition it was running with (see ``_record``)."""
        text = record.get("live_domain")
        if not isinstance(text, str):
            return
        try:
            live = parse_domain(text)
        except InvalidDocument as exc:
            log.warning(
                "guest %s: unreadable live definition in its run record: %s", slot.domain.name, exc
            )
            return
        if live.name != slot.domain.name:
            return
        slot.pending = slot.domain
        Supervisor._run_with(slot, live)

    def _adoptable(self) -> list[str]:
        """The guests a predecessor left running that this supervisor will adopt (those still
        defined whose recorded init is alive): known before anything is taken over, so that
        the supervisor's STARTED, which names them, comes first."""
        runtime = self.runtime
        assert runtime is not None
        out = []
        for name, record in sorted(self.runs.read_all("domains").items()):
            init_pid = record.get("init_pid")
            namespaces = record.get("namespaces") or {}
            if (
                name in self.slots
                and isinstance(init_pid, int)
                and isinstance(namespaces.get("pid"), int)
                and runtime.pid_is_guest_init(init_pid, namespaces["pid"])
            ):
                out.append(name)
        return out

    async def _adopt_leftovers(self) -> None:
        """Re-adopt guests a previous supervisor left running; clean up after dead ones."""
        runtime = self.runtime
        assert runtime is not None
        for name, record in self.runs.read_all("domains").items():
            slot = self.slots.get(name)
            init_pid = record.get("init_pid")
            namespaces = record.get("namespaces") or {}
            alive = (
                isinstance(init_pid, int)
                and isinstance(namespaces.get("pid"), int)
                and runtime.pid_is_guest_init(init_pid, namespaces["pid"])
            )
            cgroup = runtime.cgroup(self.prefix, name)
            if alive and slot is not None:
                self._restore_live(slot, record)
            domain = slot.domain if slot else Domain(name=name)
            # whatever it recorded was prepared: release must undo it, adopted or not
            ctx = GuestContext(
                domain,
                cgroup,
                self.prefix,
                self.run_dir,
                HookRecords.from_json(record.get("hooks")),
                prepared=True,
            )
            if alive and slot is not None and isinstance(init_pid, int):
                slot.cgroup = cgroup
                slot.ctx = ctx
                slot.adopted_pid = init_pid
                slot.adopted_pidns = namespaces["pid"]
                slot.adopted_namespaces = dict(namespaces)
                slot.started_at = record.get("started_at")
                frozen = False
                with contextlib.suppress(RuntimeFailure):
                    frozen = cgroup.is_frozen()
                self._apply(slot, Input.ADOPT_PAUSED if frozen else Input.ADOPT)
                if self.sched is not None:
                    try:
                        await self.sched.adopt(ctx)
                    except VsvError as exc:
                        log.warning("guest %s: re-applying CPU limits: %s", name, exc)
                if self.net is not None:
                    await self.net.adopt(ctx)
                slot.task_done = trio.Event()
                slot.task_running = True
                self._launch(self._guest_task, slot, True)
                continue
            # dead (or no longer defined): clean up what it held and report it
            with trio.CancelScope(shield=True):
                # whatever is still in the cgroup (a half-started guest, a daemon the dead
                # init left) goes
                with contextlib.suppress(RuntimeFailure):
                    await cgroup.kill_all()
                with contextlib.suppress(VsvError):
                    await self._bus.run_release(ctx)
                with contextlib.suppress(RuntimeFailure):
                    await cgroup.remove()
            self.runs.remove("domains", name)
            why = (
                "no-definition"
                if alive
                else "start-interrupted"
                if init_pid is None
                else "ended-while-supervisor-down"
            )
            # a guest no longer defined has no machine of its own: a throwaway one says the same
            life = slot.life if slot is not None else Lifecycle()
            step = life.apply(Input.LOST, now=time.monotonic(), data=(("reason", why),))
            self._publish_step(name, step)

    # ------------------------------------------------------------------------ whole-supervisor

    async def start_autostart(self) -> None:
        """Start every domain marked autostart that is not running (failures are reported)."""
        async with trio.open_nursery() as nursery:
            for slot in list(self.slots.values()):
                if slot.domain.autostart and slot.life.phase is Phase.SHUTOFF:
                    nursery.start_soon(self._start_quietly, slot.domain.name)

    async def _start_quietly(self, name: str) -> None:
        try:
            await self.start_domain(name)
        except VsvError as exc:
            if not self.stopping:
                log.warning("autostart of %s failed: %s", name, exc)

    async def shutdown_all(self, timeout: float) -> None:
        """Shut every running guest down gracefully; kill what is left after ``timeout``.

        From here on no guest starts (:attr:`stopping`). A start in flight is waited for:
        the guest then runs and is shut down like the others, or its start failed and was
        rolled back. Repeated until no guest task is left, so that a start that was about to
        begin when the signal came cannot leave a guest running.
        """
        self.stopping = True
        with trio.move_on_after(timeout + 10):
            while running := [s for s in self.slots.values() if s.task_running]:
                for slot in running:
                    if slot.life.phase is Phase.STARTING:
                        await slot.settled.wait()
                for slot in running:
                    with contextlib.suppress(VsvError):
                        if slot.life.phase in (Phase.RUNNING, Phase.PAUSED):
                            if slot.life.phase is Phase.PAUSED:
                                await self.resume_domain(slot.domain.name)
                            await self.shutdown_domain(slot.domain.name, timeout=timeout)
                        elif slot.life.phase not in (Phase.STOPPING, Phase.SHUTOFF):
                            await self.destroy_domain(slot.domain.name)
                with trio.move_on_after(timeout + 5):
                    for slot in running:
                        await slot.task_done.wait()
                for slot in running:
                    if slot.task_running:
                        with contextlib.suppress(VsvError):
                            await self.destroy_domain(slot.domain.name)
                        await slot.task_done.wait()

    # ------------------------------------------------------------------------ not yet served

    def domain_interfaces(self, name: str) -> list[dict[str, Any]]:
        """What each NIC really got (MAC, guest name, address) while the guest runs; the
        definition's static values otherwise."""
        slot = self._slot(name)
        plumbed: dict[int, PlumbedNic] = {}
        if slot.ctx is not None and slot.ctx.records.net is not None:
            for plumbed_nic in slot.ctx.records.net.nics:
                plumbed[plumbed_nic.index] = plumbed_nic
        rows: list[dict[str, Any]] = []
        for index, iface in enumerate(slot.domain.interfaces):
            nic = plumbed.get(index)
            if nic is not None:
                addresses = [
                    {
                        "address": cidr.split("/")[0],
                        "prefix": int(cidr.split("/")[1]) if "/" in cidr else None,
                        "family": "ipv6" if ":" in cidr else "ipv4",
                        "origin": "allocated" if not iface.ips else "static",
                    }
                    for cidr in nic.addresses
                ]
            else:
                addresses = [
                    {
                        "address": ip.address,
                        "prefix": ip.prefix,
                        "family": ip.family or ("ipv6" if ":" in ip.address else "ipv4"),
                        "origin": "static",
                    }
                    for ip in iface.ips
                ]
            rows.append(
                {
                    "name": (nic.guest_if if nic else None) or iface.guest_dev or f"eth{index}",
                    "type": iface.type,
                    "source": iface.source,
                    "mac": (nic.mac if nic else None) or iface.mac,
                    "host_if": nic.host_if if nic else None,
                    "mode": nic.mode if nic else None,
                    "addresses": addresses,
                }
            )
        return rows

    def _sched(self) -> SchedSubsystem:
        if self.sched is None:
            raise InvalidOperation("the scheduler subsystem is not available in this runtime")
        return self.sched

    def _live_cgroup(self, slot: GuestSlot) -> GuestCgroup | None:
        running = slot.life.phase in (Phase.RUNNING, Phase.PAUSED, Phase.STOPPING)
        return slot.cgroup if running and isinstance(slot.cgroup, GuestCgroup) else None

    def schedinfo(self, name: str) -> Mapping[str, object]:
        slot = self._slot(name)
        return self._sched().schedinfo(slot.domain, self._live_cgroup(slot))

    async def set_schedinfo(
        self, name: str, params: Mapping[str, str], *, live: bool, config: bool
    ) -> Mapping[str, object]:
        """virsh schedinfo --set: live (the running guest's cgroup), config (the definition).

        With neither flag: live when the guest runs, else config (libvirt's "current").
        """
        slot = self._slot(name)
        cgroup = self._live_cgroup(slot)
        live, config = resolve_flags(live, config, running=cgroup is not None)
        running = slot.domain
        # the stored definition: a pending one (redefined, or changed live-only) or the running
        persistent = slot.pending if slot.pending is not None else running
        new, info = await self._sched().set_schedinfo(
            running, cgroup, params, live=live, config=config
        )
        stored = persistent
        if config:
            if persistent is running:
                stored = new
            else:
                values = {k: parse_value(k, v) for k, v in params.items()}
                stored, _ = apply_to_domain(persistent, values)
            self.config.save_domain(stored)
        if live:
            slot.domain = new
            if slot.ctx is not None:
                slot.ctx.domain = new
            # a live-only change lasts until the guest stops; then the stored one applies
            slot.pending = None if stored == new else stored
            self._rerecord(slot)
        elif config:
            if slot.life.phase is Phase.SHUTOFF and not slot.task_running:
                slot.domain = stored
            else:
                slot.pending = stored
                self._rerecord(slot)
        return info

    def list_networks(self) -> list[NetworkStatus]:
        return [] if self.net is None else self.net.list_networks()

    def get_network(self, name: str) -> Network:
        return require_network(self.net, name).get_network(name)

    async def define_network(self, network: Network) -> Network:
        return require_network(self.net, network.name).define_network(network)

    async def undefine_network(self, name: str) -> None:
        require_network(self.net, name).undefine_network(name)

    async def start_network(self, name: str) -> None:
        await require_network(self.net, name).start_network(name)

    async def destroy_network(self, name: str) -> None:
        await require_network(self.net, name).destroy_network(name)

    def network_leases(self, name: str) -> list[Lease]:
        return require_network(self.net, name).leases(name)

    def statistics(self) -> Mapping[str, object]:
        states: dict[str, int] = {}
        for slot in self.slots.values():
            key = slot.life.status.state.name
            states[key] = states.get(key, 0) + 1
        return {
            "prefix": self.prefix,
            "domains": len(self.slots),
            "states": states,
            "bus": attrs.asdict(self._bus.statistics(), recurse=True),
            "sched": self.sched.statistics() if self.sched is not None else None,
        }


# ---------------------------------------------------------------------------- the daemon


async def print_events(
    bus: Bus[Any], out: TextIO, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Print every event as one line (``12 web1 STARTED BOOTED``), flushing each."""
    async with bus.subscribe("stdout", buffer=100_000) as sub:
        task_status.started()
        async for item in sub:
            if isinstance(item, Gap):
                line = f"# missed events {item.first_seq}..{item.last_seq}"
            else:
                line = item.line()
            try:
                out.write(line + "\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                # whoever read our stdout is gone (`vsv daemon | grep ...` and a Ctrl-C): the
                # events are still in the journal; the supervisor must go on stopping its guests
                log.warning("stdout is closed; events are no longer printed")
                with contextlib.suppress(OSError, ValueError):
                    # and the interpreter's own flush at exit must not fail on it either
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, out.fileno())
                    os.close(devnull)
                return


@attrs.frozen
class DaemonOptions:
    state_dir: Path
    run_dir: Path
    prefix: str = "vsv"
    start: tuple[str, ...] = ()
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    stop_timeout: float = 15.0
    shutdown_signal: int = signal.SIGTERM
    keep_guests: bool = False
    #: sandbox mode: do host-side networking in this named network namespace
    netns: str | None = None
    #: the control API's sockets (None: no API)
    socket: str | None = None
    ro_socket: str | None = None
    socket_group: str | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    #: caps of open API connections per socket (None: derived from the descriptor limit; see
    #: supervisor/api/limits.py)
    api_max_connections: int | None = None
    api_ro_max_connections: int | None = None


def _read_documents(paths: tuple[str, ...]) -> tuple[list[Domain], list[Network]] | None:
    """Parse the --start documents; print every problem and return None if any is bad."""
    from supervisor.xml import parse_document

    domains: list[Domain] = []
    networks: list[Network] = []
    ok = True
    for path in paths:
        try:
            doc = parse_document(Path(path).read_bytes(), path=path)
        except InvalidDocument as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            ok = False
            continue
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            ok = False
            continue
        (domains if isinstance(doc, Domain) else networks).append(doc)  # type: ignore[arg-type]
    return (domains, networks) if ok else None


async def run_daemon(opts: DaemonOptions, *, out: TextIO = sys.stdout) -> int:
    """The foreground supervisor; returns the exit status (0 after a signal-initiated stop)."""
    documents = _read_documents(opts.start)
    if documents is None:
        return 1
    domains, networks = documents
    from supervisor.api.limits import raise_nofile_limit

    # before anything opens files: the API's connection caps are planned from this limit
    nofile_before, nofile = raise_nofile_limit()
    log.info(
        "descriptor limit (RLIMIT_NOFILE): %d%s",
        nofile,
        f" (raised from {nofile_before})" if nofile != nofile_before else "",
        extra={"nofile": nofile, "nofile_before": nofile_before},
    )
    created_netns = False
    host_netns: str | None = None
    if opts.netns is not None:
        if not nsutil.netns_exists(opts.netns):
            nsutil.create_netns(opts.netns)
            created_netns = True
        host_netns = str(nsutil.netns_path(opts.netns))
    from supervisor import sdnotify
    from supervisor.journal import Journal

    # The journal numbers on from where the previous supervisor stopped; every event is in it
    # before anyone can see it (a bus sink), so a consumer resuming with since=N misses nothing.
    journal = Journal.open(opts.state_dir / "journal")
    bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
    bus.add_sink(journal.append)
    sup = Supervisor(
        state_dir=opts.state_dir,
        run_dir=opts.run_dir,
        prefix=opts.prefix,
        shutdown_timeout=opts.shutdown_timeout,
        shutdown_signal=opts.shutdown_signal,
        host_netns=host_netns,
        bus=bus,
        announce=True,
        log_max_bytes=opts.log_max_bytes,
        # no guest may see them (a guest without a root filesystem sees the host's tree)
        hidden_paths=tuple(p for p in (opts.socket, opts.ro_socket) if p is not None),
    )
    from supervisor import stopsignals

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            # one that came before we listened (see supervisor.stopsignals) counts as well
            early = stopsignals.take()
            async with trio.open_nursery() as nursery:
                await nursery.start(print_events, sup.bus, out)
                await nursery.start(sup.run)  # publishes the supervisor's STARTED first
                if opts.socket is not None:
                    from supervisor.api.server import serve_api

                    await nursery.start(
                        partial(
                            serve_api,
                            sup,
                            journal,
                            socket_path=opts.socket,
                            ro_socket_path=opts.ro_socket,
                            group=opts.socket_group,
                            max_connections=opts.api_max_connections,
                            ro_max_connections=opts.api_ro_max_connections,
                        )
                    )
                early = early or stopsignals.take()
                if early is None:
                    await _bring_up(sup, domains, networks)
                    nursery.start_soon(sup.start_autostart)
                    for domain in domains:
                        nursery.start_soon(sup._start_quietly, domain.name)
                    sdnotify.ready()
                    early = stopsignals.take()
                if early is not None:
                    log.info("received %s during start-up", signal.Signals(early).name)
                else:
                    async for signum in signals:
                        log.info("received %s", signal.Signals(signum).name)
                        break
                sdnotify.stopping()
                if not opts.keep_guests:
                    await sup.shutdown_all(opts.stop_timeout)
                    if sup.net is not None:
                        await sup.net.stop_all()
                elif sup.net is not None:
                    sup.net.detach()
                sup.bus.publish_nowait(
                    "supervisor",
                    None,
                    "STOPPED",
                    None,
                    {"keep_guests": str(opts.keep_guests).lower()},
                )
                await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
    finally:
        journal.close()
        if created_netns and not opts.keep_guests:
            nsutil.delete_netns(opts.netns or "")
    return 0


async def _bring_up(sup: Supervisor, domains: list[Domain], networks: list[Network]) -> None:
    """Define the --start documents, then start networks (autostart ones and given ones)."""
    for network in networks:
        try:
            await sup.define_network(network)
        except VsvError as exc:
            print(f"define network {network.name}: {exc}", file=sys.stderr)
    for domain in domains:
        try:
            await sup.define_domain(domain)
        except VsvError as exc:
            print(f"define {domain.name}: {exc}", file=sys.stderr)
    if sup.net is not None:
        await sup.net.start_autostart()
        for network in networks:
            if network.name not in sup.net.service.running:
                try:
                    await sup.start_network(network.name)
                except VsvError as exc:
                    print(f"start network {network.name}: {exc}", file=sys.stderr)


def cut_back_log(path: Path, keep: int) -> None:
    """Move the newest ``keep`` bytes of ``path`` (from a line start) to ``path.1``; empty it."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(size - keep - 1, 0)  # one byte more: is the cut at a line start?
        f.seek(start)
        tail = f.read(size - start)
    if start > 0:
        cut = tail.find(b"\n")
        tail = tail[cut + 1 :] if cut >= 0 else tail[1:]
    rotated = path.with_name(path.name + ".1")
    atomic_write(rotated, tail, mode=0o640, durable=False)
    os.truncate(path, 0)
