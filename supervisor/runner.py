"""One guest, one runner: the task that owns a guest's state and carries out what the table says.

Theory of operation
-------------------
A :class:`GuestRunner` holds one defined domain: its definition (and a pending one stored while
it runs), its :class:`~supervisor.lifecycle.Lifecycle`, and while it runs its runtime handles
(cgroup, process or adopted init, hook context). Everything that changes the guest's state goes
through one queue, the runner's *inbox*, and is handled by one task, in order:

- *commands* from the API side (start, shutdown, destroy, reboot, suspend, resume, adopt, lost):
  the caller posts one and waits for its reply, which carries any error (an input the table has
  no row for, a failed kill...). A start is answered when the boot attempt settles (the guest
  runs, or its start failed and was rolled back); a destroy when the guest is released.
- *facts* that the runner's child tasks observed: a boot attempt ended (init runs, or it
  failed), init ended, the shutdown deadline or a restart's backoff delay passed.

For each message the runner feeds the table one input, publishes the step's events and performs
its actions; quick ones (signal, freeze, kill, release) inline, long ones as child tasks that
report back as facts: the boot (cgroup, limits, ``prepare`` hooks, spawn), the watch over init,
and the timers. Each child carries a ticket; cancelling a child takes its ticket back, so a
fact that was already on its way when the child was cancelled is recognised and dropped.

The task exists only while the guest has something going on: a command starts it, and it ends
when the guest is at rest (SHUTOFF or PRESERVED) with nothing queued, so thousands of defined
but stopped guests cost no task. A failure of the supervisor's own code while handling a message
is the table's FAILED_HARD: the guest is released and reported, the supervisor stays up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from supervisor import lifecycle as lc
from supervisor import nsutil
from supervisor.bus import Bus
from supervisor.console import GuestConsole, KeptConsoles, open_peer
from supervisor.errors import InvalidDocument, RuntimeFailure, VsvError
from supervisor.events import DataPairs
from supervisor.facade import DomainStatus
from supervisor.hooks import GuestContext
from supervisor.lifecycle import Action, EndKind, GuestEnd, Input, Lifecycle, Phase
from supervisor.model import Domain
from supervisor.runtime import (
    CgroupHandle,
    GuestExit,
    NamespaceJoin,
    PendingSpawn,
    ProcessHandle,
    Runtime,
)
from supervisor.store import RunStore
from supervisor.xml import format_domain, parse_domain

log = logging.getLogger("vsv.runner")

Launcher = Callable[[Callable[[], Awaitable[None]]], None]

#: phases in which a guest has nothing in flight (no task is needed for it)
AT_REST = frozenset({Phase.SHUTOFF, Phase.PRESERVED})


def _boot_key(init_pid: int | None, pidns: int) -> str:
    """Which boot of a guest a kept console belongs to: its init and pid namespace."""
    return f"{init_pid}:{pidns}"


def guest_log_file(run_dir: Path, name: str) -> Path:
    """Where a guest's stdout and stderr go."""
    return run_dir / "logs" / f"{name}.log"


@attrs.frozen
class RunnerEnv:
    """What every runner shares: the kernel side, the bus, the run records, the settings."""

    runtime: Runtime
    bus: Bus[GuestContext]
    runs: RunStore
    prefix: str
    run_dir: Path
    shutdown_timeout: float
    shutdown_signal: int
    restart_policy: lc.RestartPolicy
    #: starts a task in the guests' nursery (the daemon's)
    launch: Launcher
    #: what a guest's stdout and stderr are to be (its log relay's FIFO, supervisor/logrelay.py);
    #: None: the log file itself
    log_target: Callable[[str], Path] | None = None
    #: the guest is released: its log relay drains and ends
    log_done: Callable[[str], None] | None = None
    #: a guest log's cap (0: none), held by the console relay for a guest with a console
    log_max_bytes: int = 0
    #: a running guest's init pid and namespace inodes by kind, by name (None: not running);
    #: for the namespaces ``<lxc:namespace>`` shares
    peers: Callable[[str], tuple[int, Mapping[str, int]] | None] = lambda _name: None
    #: where copies of the consoles' ptys outlive the supervisor (None: nowhere)
    consoles: KeptConsoles | None = None


def namespace_joins(
    domain: Domain, peers: Callable[[str], tuple[int, Mapping[str, int]] | None]
) -> tuple[NamespaceJoin, ...]:
    """The namespaces a guest's ``<lxc:namespace>`` joins, found now: another guest's (its init
    must run) or a named netns (it must exist). A start fails, naming the element, otherwise:
    the guest would else get namespaces of its own, which its document did not ask for."""
    out: list[NamespaceJoin] = []
    for share in domain.shared_namespaces:
        element = f"<lxc:share{share.kind} type='{share.type}' value='{share.value}'>"
        if share.type == "netns":
            path = str(nsutil.netns_path(share.value))
            if not nsutil.netns_exists(share.value):
                raise RuntimeFailure(f"{element}: there is no network namespace {share.value}")
            out.append(NamespaceJoin(share.kind, path, os.stat(path).st_ino))
            continue
        found = peers(share.value)
        if found is None:
            raise RuntimeFailure(f"{element}: guest {share.value} is not running")
        pid, inodes = found
        inode = inodes.get(share.kind)
        if not inode:
            raise RuntimeFailure(f"{element}: the namespaces of guest {share.value} are unknown")
        out.append(NamespaceJoin(share.kind, f"/proc/{pid}/ns/{share.kind}", inode))
    return tuple(out)


class _Reply:
    """The answer to one command: nothing, or the error the caller gets."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


@attrs.frozen
class _Command:
    input: Input
    reply: _Reply
    #: SHUTDOWN: seconds before the guest is killed; LOST: the reason
    timeout: float | None = None
    reason: str = ""


@attrs.frozen
class Adoptee:
    """A live guest a previous supervisor started, as its run record describes it."""

    cgroup: CgroupHandle
    ctx: GuestContext
    init_pid: int
    pidns: int
    namespaces: dict[str, int]
    started_at: float | None
    frozen: bool


@attrs.frozen
class _Adopt:
    adoptee: Adoptee
    reply: _Reply


FactKind = Literal["booted", "ended", "deadline", "restart-due"]


@attrs.frozen
class _Fact:
    kind: FactKind
    ticket: int
    exit: GuestExit | None = None
    error: BaseException | None = None


_Message = _Command | _Adopt | _Fact


def _after_release(step: lc.Step, emit: lc.Emit) -> bool:
    """A STOPPED of a step that releases the guest: published once the release is done."""
    return emit.type == "STOPPED" and Action.RELEASE in step.actions


@attrs.define(eq=False)
class GuestRunner:
    """One defined guest and the task that runs it (see the module docstring)."""

    domain: Domain
    env: RunnerEnv
    life: Lifecycle = attrs.field(init=False)
    #: a definition stored while the guest ran; it replaces ``domain`` once the guest stops
    pending: Domain | None = None
    cgroup: CgroupHandle | None = None
    process: ProcessHandle | None = None
    #: an adopted guest's init (a previous supervisor's child), its pid namespace inode (which
    #: tells it from a process that reused the pid) and every namespace the record named
    adopted_pid: int | None = None
    adopted_pidns: int | None = None
    adopted_namespaces: dict[str, int] | None = None
    ctx: GuestContext | None = None
    started_at: float | None = None
    restarts: int = 0
    #: why the last start failed (None: it did not)
    start_error: BaseException | None = None
    #: no stored definition (vsv create, or undefined while it ran): gone when it stops
    transient: bool = False
    #: the guest's console (a domain with a ``<console>``, from its first boot on): kept across
    #: reboots, so an attached client sees the next boot; relayed while the guest runs
    console: GuestConsole | None = None
    _killed_by_us: bool = False
    _reboot_requested: bool = False
    _send: trio.MemorySendChannel[_Message] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[_Message] = attrs.field(init=False)
    #: the number of the runner's task while one runs (0: none); each launch gets a new one, so
    #: a task ending after the next was launched cannot mark the runner idle
    _task: int = 0
    _launches: int = 0
    _children: trio.Nursery | None = None
    #: the ticket of each kind of child now wanted; a fact with another ticket is stale
    _tickets: dict[FactKind, int] = attrs.Factory(dict)
    _scopes: dict[FactKind, trio.CancelScope] = attrs.Factory(dict)
    _start_waiters: list[_Reply] = attrs.Factory(list)
    _rest_waiters: list[_Reply] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self.life = Lifecycle.for_domain(self.domain, self.env.restart_policy)
        self._send, self._receive = trio.open_memory_channel[_Message](math.inf)

    # ------------------------------------------------------------------------ reading

    @property
    def phase(self) -> Phase:
        return self.life.phase

    @property
    def at_rest(self) -> bool:
        """Nothing in flight: stopped, or preserved after its end."""
        return self.life.phase in AT_REST

    @property
    def active(self) -> bool:
        """The guest has processes or a start, stop or restart in flight."""
        return not self.at_rest

    @property
    def busy(self) -> bool:
        """The runner's task runs: something is in flight or being handled (a guest whose
        phase is SHUTOFF may still be being released)."""
        return self._task != 0

    def status(self) -> DomainStatus:
        pid = self.adopted_pid
        if self.process is not None:
            pid = self.process.init_pid
        return DomainStatus(
            persistent=not self.transient,
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

    async def wait_until(self, done: Callable[[GuestRunner], bool]) -> None:
        """Wait until ``done(self)`` holds (checked after each message the runner handles)."""
        while not done(self):
            await self._changed.wait()

    # ------------------------------------------------------------------------ definitions

    def redefine(self, domain: Domain) -> None:
        """A new stored definition: at once when the guest is stopped, else from its next start
        (libvirt's persistent vs live definition); autostart counts at once either way."""
        if self.life.phase is Phase.SHUTOFF:
            self.pending = None
            self._run_with(domain)
        else:
            self.pending = domain
            self.domain = attrs.evolve(self.domain, autostart=domain.autostart)
            self.rerecord()

    def make_transient(self) -> None:
        """The guest has no stored definition any more (or never had one): its live definition
        is all there is; the run record says so, for a successor to adopt it as such."""
        self.transient = True
        self.pending = None
        self.rerecord()

    def set_live(self, live: Domain, stored: Domain) -> None:
        """The running guest now runs ``live`` (a live change); ``stored`` applies once it stops."""
        self.domain = live
        if self.ctx is not None:
            self.ctx.domain = live
        self.pending = None if stored == live else stored
        self.rerecord()

    def set_stored(self, stored: Domain) -> None:
        """A stored-only change: at once when stopped, else from the next start."""
        if self.life.phase is Phase.SHUTOFF:
            self.domain = stored
        else:
            self.pending = stored
            self.rerecord()

    def _run_with(self, domain: Domain) -> None:
        """Make ``domain`` the guest's definition, its end-of-life policies included."""
        self.domain = domain
        self.life.set_policies(domain)

    def _take_pending(self) -> None:
        """Make the stored definition the one the guest boots from (it stopped, or restarts)."""
        if self.pending is not None:
            domain, self.pending = self.pending, None
            self._run_with(domain)

    def restore_live(self, record: Mapping[str, Any]) -> None:
        """An adopted guest gets back the definition it was running with (see :meth:`record`)."""
        text = record.get("live_domain")
        if not isinstance(text, str):
            return
        try:
            live = parse_domain(text)
        except InvalidDocument as exc:
            log.warning(
                "guest %s: unreadable live definition in its run record: %s", self.domain.name, exc
            )
            return
        if live.name == self.domain.name:
            self.pending = self.domain
            self._run_with(live)

    # ------------------------------------------------------------------------ commands

    async def start(self) -> None:
        """Start the guest; returns once it runs, raises why its start failed."""
        await self._command(Input.START)

    async def shutdown(self, timeout: float) -> None:
        """Ask init to power off; it is killed if it has not ended after ``timeout`` seconds."""
        await self._command(Input.SHUTDOWN, timeout=timeout)

    async def destroy(self) -> None:
        """Kill every process of the guest; returns once it is released."""
        await self._command(Input.DESTROY)

    async def reboot(self) -> None:
        await self._command(Input.REBOOT)

    async def suspend(self) -> None:
        await self._command(Input.SUSPEND)

    async def resume(self) -> None:
        await self._command(Input.RESUME)

    async def lost(self, reason: str) -> None:
        """A restarted supervisor cleaned up the remains of this guest (its init was gone)."""
        await self._command(Input.LOST, reason=reason)

    async def adopt(self, adoptee: Adoptee) -> None:
        """Take over a guest a previous supervisor left running, and watch its init."""
        reply = _Reply()
        self._post(_Adopt(adoptee, reply))
        await reply.wait()

    async def _command(
        self, input: Input, *, timeout: float | None = None, reason: str = ""
    ) -> None:
        reply = _Reply()
        self._post(_Command(input, reply, timeout, reason))
        await reply.wait()

    def _post(self, message: _Message) -> None:
        self._send.send_nowait(message)
        if not self._task:
            self._launches += 1
            self._task = self._launches
            self.env.launch(functools.partial(self._run, self._task))

    # ------------------------------------------------------------------------ the task

    async def _run(self, me: int) -> None:
        """Handle messages until the guest is at rest with nothing queued."""
        children: trio.Nursery | None = None
        try:
            async with trio.open_nursery() as children:
                self._children = children
                while not (self.at_rest and self._receive.statistics().current_buffer_used == 0):
                    message = await self._receive.receive()
                    try:
                        await self._handle(message)
                    except Exception as exc:
                        log.exception("guest %s: supervisor error", self.domain.name)
                        with trio.CancelScope(shield=True):
                            await self._fail_hard(exc)
                        if isinstance(message, _Command | _Adopt):
                            message.reply.set(RuntimeFailure(f"supervisor error: {exc}"))
                    self._settled()
                # at rest: a command posted from here on starts a new task
                self._task = 0
                self._notify()
                children.cancel_scope.cancel()
        finally:
            if self._children is children:
                self._children = None
            if self._task == me:  # ended otherwise (cancelled with the supervisor)
                self._task = 0

    def _settled(self) -> None:
        """After each message: a stopped guest boots next from the stored definition; waiters
        for rest are answered; whoever waits for a change looks again."""
        if self.life.phase is Phase.SHUTOFF:
            self._take_pending()
        if self.at_rest:
            for reply in self._rest_waiters:
                reply.set()
            self._rest_waiters.clear()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _handle(self, message: _Message) -> None:
        if isinstance(message, _Fact):
            if self._tickets.get(message.kind) == message.ticket:
                self._scopes.pop(message.kind, None)
                await self._on_fact(message)
        elif isinstance(message, _Adopt):
            self._on_adopt(message.adoptee)
            message.reply.set()
        else:
            await self._on_command(message)

    async def _on_command(self, cmd: _Command) -> None:
        data = (("reason", cmd.reason),) if cmd.reason else ()
        try:
            step = self._apply(cmd.input, data=data)
        except VsvError as exc:  # no row for this input now: nothing changed
            cmd.reply.set(exc)
            return
        if cmd.input is Input.START:
            self.start_error = None
            self._start_waiters.append(cmd.reply)
        try:
            await self._perform(step, timeout=cmd.timeout)
            if (
                cmd.input is Input.DESTROY
                and step.previous is Phase.DESTROYING
                and Action.KILL not in step.actions
            ):
                # a destroy whose kill failed (or is still running): kill again rather than
                # wait for an end that may never come
                await self._kill()
        except VsvError as exc:
            if cmd.reply in self._start_waiters:
                self._start_waiters.remove(cmd.reply)
            cmd.reply.set(exc)
            return
        if cmd.input is Input.DESTROY and not self.at_rest:
            self._rest_waiters.append(cmd.reply)
        elif cmd.input is not Input.START:
            cmd.reply.set()

    def _on_adopt(self, adoptee: Adoptee) -> None:
        self.cgroup = adoptee.cgroup
        self.ctx = adoptee.ctx
        self.adopted_pid = adoptee.init_pid
        self.adopted_pidns = adoptee.pidns
        self.adopted_namespaces = dict(adoptee.namespaces)
        self.started_at = adoptee.started_at
        self._apply(Input.ADOPT_PAUSED if adoptee.frozen else Input.ADOPT)
        self._child("ended", self._watch)
        kept = self.env.consoles
        if self.domain.consoles and kept is not None:
            # the console the previous supervisor relayed, if its keeper held a copy
            fds = kept.take(self.domain.name, _boot_key(adoptee.init_pid, adoptee.pidns))
            if fds is not None:
                self._relay_console(fds[0], fds[1])

    async def _on_fact(self, fact: _Fact) -> None:
        if fact.kind == "booted":
            await self._on_booted(fact.error)
        elif fact.kind == "ended":
            self._cancel("deadline")
            end = self._classify(fact.exit)
            self.process = None
            self.adopted_pid = self.adopted_pidns = self.adopted_namespaces = None
            await self._perform(self._apply(end.input, end))
        elif fact.kind == "deadline":
            await self._perform(self._apply(Input.SHUTDOWN_TIMEOUT))
        elif fact.kind == "restart-due" and self.life.phase is Phase.RESTARTING:
            await self._perform(self._apply(Input.RESTART_DUE))

    async def _on_booted(self, error: BaseException | None) -> None:
        if error is not None:
            self.start_error = error
            log.warning("guest %s: start failed: %s", self.domain.name, error)
            step = self._apply(Input.START_FAILED)
            await self._perform(step)  # released before the caller hears of it
            self._answer_starts(error)
            return
        self._killed_by_us = False
        self._reboot_requested = False
        self.started_at = time.time()
        step = self._apply(Input.STARTED)
        self.record()
        self._answer_starts(None)
        self._child("ended", self._watch)
        await self._perform(step)

    def _answer_starts(self, error: BaseException | None) -> None:
        for reply in self._start_waiters:
            reply.set(error)
        self._start_waiters.clear()

    def _apply(self, input: Input, end: GuestEnd | None = None, data: DataPairs = ()) -> lc.Step:
        """Feed the table one input and publish the step's events, but a STOPPED of a step that
        releases the guest: :meth:`_perform` publishes it once the release is done."""
        step = self.life.apply(input, now=time.monotonic(), end=end, data=data)
        self._emit(e for e in step.events if not _after_release(step, e))
        return step

    def _publish(self, step: lc.Step) -> None:
        self._emit(step.events)

    def _emit(self, emits: Iterable[lc.Emit]) -> None:
        for emit in emits:
            self.env.bus.publish_nowait(
                "domain", self.domain.name, emit.type, emit.detail, emit.data
            )

    # ------------------------------------------------------------------------ actions

    async def _perform(self, step: lc.Step, *, timeout: float | None = None) -> None:
        """Carry out the step's actions in order (long ones as child tasks); a STOPPED that
        :meth:`_apply` held back goes out after the release, as libvirt sends its stop event
        after the domain's cleanup: whoever hears it may reuse what the guest held (its
        address, its NIC, a lent host device)."""
        held = [e for e in step.events if _after_release(step, e)]
        try:
            await self._perform_actions(step, timeout)
        finally:
            self._emit(held)

    async def _perform_actions(self, step: lc.Step, timeout: float | None) -> None:
        for action in step.actions:
            if action is Action.START:
                if step.previous is Phase.RESTARTING:
                    # a restart is a new boot: it uses the stored definition (libvirt drops
                    # live-only changes when a guest stops, and this guest did stop)
                    self.restarts += 1
                    self._take_pending()
                self._child("booted", self._boot)
            elif action is Action.RESPAWN:
                self.restarts += 1
                self._child("booted", self._boot, True, step.delay)
            elif action is Action.ASK_SHUTDOWN:
                self._signal_init(self.env.shutdown_signal)
                wait = self.env.shutdown_timeout if timeout is None else timeout
                self._child("deadline", self._after, wait)
            elif action is Action.ASK_REBOOT:
                self._reboot_requested = True
                await self._kill(wait=False)
            elif action is Action.KILL:
                # a start in flight is cancelled but still reports (START_FAILED, or STARTED if
                # it was too far along): the table decides what that means now
                self._cancel("booted", keep_ticket=True)
                await self._kill()
                if self.life.phase is Phase.STOPPING:
                    # the guest ignored the shutdown: kill again after another deadline
                    self._child("deadline", self._after, self.env.shutdown_timeout)
            elif action is Action.FREEZE and self.cgroup is not None:
                await self.cgroup.freeze()
            elif action is Action.THAW and self.cgroup is not None:
                await self.cgroup.thaw()
            elif action is Action.RELEASE:
                with trio.CancelScope(shield=True):
                    await self._release()
            elif action is Action.SCHEDULE_RESTART:
                self._child("restart-due", self._after, step.delay)
            elif action is Action.CANCEL_RESTART:
                self._cancel("restart-due")

    def _child(self, kind: FactKind, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(ticket, scope, *args)`` as a child that reports one fact of ``kind``."""
        assert self._children is not None
        self._cancel(kind)
        ticket = self._tickets.get(kind, 0) + 1
        self._tickets[kind] = ticket
        scope = trio.CancelScope()
        self._scopes[kind] = scope
        self._children.start_soon(fn, kind, ticket, scope, *args)

    def _cancel(self, kind: FactKind, *, keep_ticket: bool = False) -> None:
        """Cancel the child of ``kind`` (if any) and, unless told not to, take back its ticket
        (what it may still report is then dropped)."""
        scope = self._scopes.get(kind) if keep_ticket else self._scopes.pop(kind, None)
        if scope is not None:
            scope.cancel()
        if not keep_ticket:
            self._tickets[kind] = self._tickets.get(kind, 0) + 1

    def _report(self, kind: FactKind, ticket: int, **what: Any) -> None:
        self._send.send_nowait(_Fact(kind, ticket, **what))

    async def _after(
        self, kind: FactKind, ticket: int, scope: trio.CancelScope, delay: float
    ) -> None:
        """A timer: the fact ``kind`` after ``delay`` seconds unless cancelled."""
        with scope:
            await trio.sleep(delay)
            self._report(kind, ticket)

    async def _watch(self, kind: FactKind, ticket: int, scope: trio.CancelScope) -> None:
        """Wait for init to end (our child, or an adopted guest's init through a pidfd)."""
        with scope:
            result: GuestExit | None = None
            if self.process is not None:
                result = await self.process.wait()
            else:
                assert self.adopted_pid is not None
                await self.env.runtime.wait_pid_exit(self.adopted_pid)
            self._report(kind, ticket, exit=result)

    async def _boot(
        self,
        kind: FactKind,
        ticket: int,
        scope: trio.CancelScope,
        keep_resources: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Prepare and spawn (after ``delay``); report ``booted`` with the error, if any.

        ``keep_resources``: a respawn after an in-guest reboot; cgroup and hooks' resources stay.
        """
        env = self.env
        domain = self.domain
        pending: PendingSpawn | None = None
        error: BaseException | None = None
        try:
            with scope:
                await trio.sleep(delay)
                if keep_resources and self.cgroup is not None:
                    # leftovers of the previous init (a pid namespace dies with its init)
                    await self.cgroup.kill_all()
                if self.console is not None:
                    await self.console.stop_relay()  # what the previous boot left, logged first
                # the guest's process gets going (its mounts) while the cgroup is made and the
                # prepare hooks run; finish() then puts it in the cgroup and lets init run
                if env.log_target is not None and not domain.consoles:
                    # the FIFO a relay drains into the capped log; a guest with a console
                    # writes to its pty instead, which the console's relay logs
                    log_path = env.log_target(domain.name)
                else:
                    log_path = guest_log_file(env.run_dir, domain.name)
                    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                joins = namespace_joins(domain, env.peers) if domain.shared_namespaces else ()
                pending = await env.runtime.begin_spawn(domain, log_path=str(log_path), joins=joins)
                if not keep_resources:
                    cgroup = env.runtime.cgroup(env.prefix, domain.name)
                    # recorded before anything is made: a supervisor killed from here on
                    # leaves a record its successor cleans up after (no init pid: not alive)
                    env.runs.write(
                        "domains",
                        domain.name,
                        {"name": domain.name, "prefix": env.prefix, "cgroup": cgroup.dirname},
                    )
                    self.cgroup = cgroup
                    fresh = cgroup.create()
                    cgroup.apply_limits(domain)
                    self.ctx = GuestContext(
                        domain,
                        cgroup,
                        env.prefix,
                        env.run_dir,
                        fresh_cgroup=fresh,
                        netns_source=pending.netns_source,
                    )
                    await env.bus.run_prepare(self.ctx)
                    self.ctx.prepared = True
                assert self.cgroup is not None
                finishing, pending = pending, None
                self.process = await finishing.finish(
                    self.cgroup, netns_path=self.ctx.netns_path if self.ctx else None
                )
                master = self.process.take_console()
                if master is not None:
                    self._serve_console(master)
            if scope.cancelled_caught:
                raise RuntimeFailure(f"start of {domain.name} was cancelled")  # noqa: TRY301
        except Exception as exc:
            error = exc
        finally:
            if pending is not None:  # failed or cancelled before finish(): drop the embryo
                with trio.CancelScope(shield=True):
                    await pending.abort()
        self._report(kind, ticket, error=error)

    def _serve_console(self, master: int) -> None:
        """Relay the new boot's console (its pty's ``master``, ours now) and keep a copy of
        its ends where it outlives the supervisor (the console keeper, in a task of its own:
        the first console waits for the keeper to start, which no start should)."""
        try:
            peer = open_peer(master)
        except OSError:
            peer = -1  # the relay tries again, and logs why it cannot
        copies = [os.dup(fd) for fd in (master, peer)] if peer >= 0 else []
        self._relay_console(master, peer)
        process = self.process
        kept = self.env.consoles
        if copies and kept is not None and process is not None and process.namespaces:
            key = _boot_key(process.init_pid, process.namespaces.pid)
            kept.want(self.domain.name, key)
            assert self._children is not None
            self._children.start_soon(kept.keep, self.domain.name, key, copies)  # closes them
        else:
            for fd in copies:
                os.close(fd)

    def _relay_console(self, master: int, peer: int) -> None:
        """Relay a console (its ends are the relay's from here on) as a child task: to the
        guest's log always, and to the attached client."""
        if self.console is None:
            self.console = GuestConsole(self.domain.name)
        relay = self.console.begin_relay()
        log_path = str(guest_log_file(self.env.run_dir, self.domain.name))
        assert self._children is not None
        self._children.start_soon(
            functools.partial(
                self.console.run_relay,
                relay,
                master,
                log_path,
                peer,
                log_max_bytes=self.env.log_max_bytes,
            )
        )

    def _signal_init(self, sig: int) -> None:
        with contextlib.suppress(RuntimeFailure, ProcessLookupError):
            if self.process is not None:
                self.process.send_signal(sig)
            elif self.adopted_pid is not None and self.adopted_pidns is not None:
                self.env.runtime.signal_guest_init(self.adopted_pid, self.adopted_pidns, sig)

    async def _kill(self, *, wait: bool = True) -> None:
        self._killed_by_us = True
        if self.cgroup is not None:
            await self.cgroup.kill_all(wait=wait)

    def _classify(self, exit_: GuestExit | None) -> GuestEnd:
        if self._reboot_requested:
            return GuestEnd(EndKind.REBOOT, signal=signal.SIGHUP)
        if exit_ is None:
            # an adopted guest is not our child: how it ended went to whoever reaped it
            if self._killed_by_us:
                return GuestEnd(EndKind.KILLED, signal=signal.SIGKILL)
            return GuestEnd(EndKind.POWEROFF, exit_code=0)
        status: lc.ExitStatus = (
            (True, exit_.status, 0) if exit_.status is not None else (False, 0, exit_.signal or 0)
        )
        return lc.classify_exit(status, killed_by_us=self._killed_by_us)

    async def _release(self) -> None:
        """Undo everything a boot did: processes, hooks' resources, cgroup, run record."""
        name = self.domain.name
        if self.cgroup is not None:
            try:
                await self.cgroup.kill_all()
            except RuntimeFailure as exc:
                log.warning("guest %s: kill on release: %s", name, exc)
        if self.console is not None:
            await self.console.stop_relay()
            self.console.end_session("stopped", f"domain {name!r} stopped")
        if self.domain.consoles and self.env.consoles is not None:
            self.env.consoles.drop(name)
        if self.ctx is not None and self.ctx.prepared:
            try:
                await self.env.bus.run_release(self.ctx)
            except VsvError as exc:
                log.warning("guest %s: release hooks: %s", name, exc)
        if self.cgroup is not None:
            try:
                await self.cgroup.remove()
            except RuntimeFailure as exc:
                log.warning("guest %s: cgroup removal: %s", name, exc)
        self.cgroup = None
        self.ctx = None
        self.process = None
        self.adopted_pid = self.adopted_pidns = self.adopted_namespaces = None
        self.started_at = None
        self.env.runs.remove("domains", name)
        if self.env.log_done is not None:
            self.env.log_done(name)

    async def _fail_hard(self, exc: BaseException) -> None:
        """The supervisor's own code failed for this guest: stop its children, release it,
        report it through the table (FAILED_HARD), answer whoever waits; the supervisor stays."""
        self.start_error = exc
        for kind in list(self._scopes):
            self._cancel(kind)
        try:
            step = self.life.apply(
                Input.FAILED_HARD, now=time.monotonic(), data=(("error", str(exc)[:200]),)
            )
            await self._release()  # the step's RELEASE (its CANCEL_RESTART is done above)
            self._publish(step)
        except Exception:
            log.exception("guest %s: cleaning up after a supervisor error", self.domain.name)
        self._answer_starts(exc)

    # ------------------------------------------------------------------------ run records

    def record(self) -> None:
        """Write the run record: what a successor needs to adopt or clean up the guest."""
        proc = self.process
        record: dict[str, Any] = {
            "name": self.domain.name,
            "uuid": self.domain.uuid,
            "prefix": self.env.prefix,
            "started_at": self.started_at,
            "cgroup": self.cgroup.dirname if self.cgroup else None,
            "hooks": self.ctx.records.to_json() if self.ctx else {},
        }
        if proc is not None:
            record["wrapper_pid"] = proc.wrapper_pid
            record["init_pid"] = proc.init_pid
            record["namespaces"] = attrs.asdict(proc.namespaces) if proc.namespaces else None
        elif self.adopted_pid is not None:
            record["wrapper_pid"] = record["init_pid"] = self.adopted_pid
            record["namespaces"] = self.adopted_namespaces
        if self.pending is not None or self.transient:
            # the running guest's definition is not the stored one (redefined, or changed
            # live), or there is no stored one: a successor that adopts the guest must keep it,
            # as libvirt keeps the live XML of a running domain across a daemon restart
            record["live_domain"] = format_domain(self.domain)
        if self.transient:
            record["transient"] = True
        self.env.runs.write("domains", self.domain.name, record)

    def rerecord(self) -> None:
        """Write the run record again after a change, if the guest has one (it runs)."""
        if self.process is not None or self.adopted_pid is not None:
            self.record()
