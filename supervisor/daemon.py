"""The supervisor: the registry of guests and the wiring around them.

Theory of operation
-------------------
:class:`Supervisor` keeps one :class:`~supervisor.runner.GuestRunner` per defined domain (its
registry) and wires them to the rest: the runtime (the kernel side), the bus, the network and
scheduler subsystems, the config and run stores. What a guest does and when is the runner's
business: an API call (start, shutdown, destroy, reboot, suspend, resume) is a command posted to
the guest's runner, whose one task feeds the lifecycle table and carries out what it says. A
failure in one guest's runner is reported for that guest (``STOPPED FAILED``): it never reaches
the nursery, so it cannot take down another guest or the supervisor.

At start-up the supervisor loads the stored definitions, takes over the networks and then the
guests a predecessor left (:mod:`supervisor.adoption`), and serves until cancelled.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import trio

from supervisor import adoption, nsutil
from supervisor import lifecycle as lc
from supervisor.bus import Bus, Gap, PrepareFailed
from supervisor.console import GuestConsole, KeptConsoles, NoConsole
from supervisor.errors import (
    ConflictError,
    InvalidDocument,
    InvalidOperation,
    NotFound,
    RuntimeFailure,
    VsvError,
)
from supervisor.facade import DomainStatus, Lease, NetworkStatus, memory_view
from supervisor.fleet.subjects import FleetSettings
from supervisor.guest.linux import LinuxRuntime
from supervisor.guest.ptykeeper import SOCKET_NAME as KEEPER_SOCKET
from supervisor.guest.ptykeeper import ConsoleKeeper
from supervisor.hooks import GuestContext
from supervisor.journal import Journal
from supervisor.lifecycle import Phase
from supervisor.logrelay import LogRelays, cut_back
from supervisor.metrics import Histogram, RequestCounts, Snapshot
from supervisor.model import CONTEXT_ID_MAX, CONTEXT_ID_MIN, Domain, MemTune, Network
from supervisor.net.nics import PlumbedNic
from supervisor.net.subsystem import NetworkSubsystem, require_network
from supervisor.runner import GuestRunner, RunnerEnv, guest_log_file
from supervisor.runtime import CgroupHandle, Runtime
from supervisor.sched.params import apply_to_domain, parse_value
from supervisor.sched.subsystem import SchedSubsystem, resolve_flags
from supervisor.stats import STATE_NUMBERS, Stats, StatSources, read_many, sources_for
from supervisor.store import ConfigStore, RunStore

if TYPE_CHECKING:
    from supervisor.fleet.publisher import FleetPublisher
    from supervisor.journal import Journal

log = logging.getLogger("vsv.daemon")

DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: a guest's log (its stdout and stderr, in the run dir) is cut back beyond this size
DEFAULT_LOG_MAX_BYTES = 8 << 20
#: how often the running guests' log sizes are checked
LOG_CHECK_INTERVAL = 2.0
#: at a stop, how long the fleet publisher may take to send the last events (broker connected)
FLEET_DRAIN_TIMEOUT = 2.0


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
    #: the resolv.conf networks forward DNS to: derived from the host namespace (the host's
    #: /etc/resolv.conf, or a sandbox's /etc/netns/NAME/resolv.conf), a path, or None (none)
    resolv_file: str | None = "derived"
    #: False: no network subsystem (guests with <interface> then fail to start)
    networking: bool = True
    net: NetworkSubsystem | None = None
    #: CPU limits and the idle-time tuner (runtimes with real cgroups only)
    sched: SchedSubsystem | None = None
    #: the size at which a guest's log is cut back (0: never): supervisor/logrelay.py, and
    #: :meth:`_cap_logs` for guests that write to the file itself (started by an older version)
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    logs: LogRelays | None = None
    log_check_interval: float = LOG_CHECK_INTERVAL
    _bus: Bus[GuestContext] = attrs.Factory(Bus)
    #: the registry: one runner per defined domain
    guests: dict[str, GuestRunner] = attrs.Factory(dict)
    #: names of the guests re-adopted from a previous supervisor at start-up
    adopted: list[str] = attrs.Factory(list)
    config: ConfigStore = attrs.field(init=False)
    runs: RunStore = attrs.field(init=False)
    #: the fleet publisher's statistics (``--nats``), shown under ``fleet``
    fleet_statistics: Callable[[], Mapping[str, object]] | None = None
    _env: RunnerEnv | None = None
    _spawn: trio.MemorySendChannel[Callable[[], Awaitable[None]]] | None = None
    #: starts asked for (the API, autostart, --start) and done, failed, and how long each took
    #: the event journal the bus writes to (the daemon's), for the metrics' journal counters
    journal: Journal | None = None
    starts: int = 0
    start_failures: int = 0
    start_latency: Histogram = attrs.Factory(Histogram)

    def __attrs_post_init__(self) -> None:
        self.config = ConfigStore(self.state_dir)
        self.runs = RunStore(self.run_dir)

    @property
    def bus(self) -> Bus[GuestContext]:
        return self._bus

    # ------------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load definitions, re-adopt what a predecessor left, then serve until cancelled.

        Guest runners run in a nursery inside this task; callers start it with
        ``nursery.start`` and can call the operations once it is started.
        """
        if self.runtime is None:
            hidden = (str(self.state_dir), str(self.run_dir), *self.hidden_paths)
            self.runtime = LinuxRuntime(hidden=hidden)
        runtime = self.runtime
        layout = runtime.cgroup_layout()
        if layout is not None:
            self.sched = SchedSubsystem.open(self._bus, layout)
        self.config.ensure()
        self.runs.ensure()
        if self.log_max_bytes > 0:
            self.logs = LogRelays(self.run_dir, self.log_max_bytes)
        keeper_cgroups = (
            tuple(os.path.join(h, f"{self.prefix}.console-keeper") for h in layout.hierarchies())
            if layout is not None
            else ()
        )
        consoles = KeptConsoles(ConsoleKeeper(str(self.run_dir / KEEPER_SOCKET), keeper_cgroups))
        self._env = RunnerEnv(
            log_target=self.logs.target if self.logs is not None else None,
            log_done=self.logs.stop if self.logs is not None else None,
            log_max_bytes=self.log_max_bytes,
            runtime=runtime,
            bus=self._bus,
            runs=self.runs,
            prefix=self.prefix,
            run_dir=self.run_dir,
            shutdown_timeout=self.shutdown_timeout,
            shutdown_signal=self.shutdown_signal,
            restart_policy=self.restart_policy,
            launch=self._launch,
            peers=self._peer_namespaces,
            consoles=consoles,
        )
        domains, problems = self.config.load_domains()
        for problem in problems:
            log.warning("ignoring stored definition: %s", problem)
        for domain in domains:
            self.guests[domain.name] = self._new_runner(domain)
        self._load_transient()
        send, receive = trio.open_memory_channel[Callable[[], Awaitable[None]]](math.inf)
        self.adopted = adoption.adoptable(self.runs, runtime, self.guests)
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
                resolv_file=self.resolv_file,
            )
        try:
            # the runtime's pools (fork servers, spare embryos) live as long as the guests' nursery
            async with runtime, trio.open_nursery() as top:
                if self.sched is not None:
                    await top.start(self.sched.run)
                if self.net is not None:
                    await top.start(self.net.run)
                if self.log_max_bytes > 0:
                    top.start_soon(self._cap_logs)
                async with trio.open_nursery() as guests:
                    guests.start_soon(self._spawner, receive)
                    self._spawn = send
                    if self.logs is not None:
                        self.logs.launch = self._launch
                    await adoption.take_over(
                        runs=self.runs,
                        runtime=runtime,
                        bus=self._bus,
                        prefix=self.prefix,
                        run_dir=self.run_dir,
                        runners=self.guests,
                        sched=self.sched,
                        net=self.net,
                    )
                    for guest in list(self.guests.values()):
                        if guest.active and self.logs is not None:
                            # a predecessor's guest writing to its FIFO: drain it from here on
                            self.logs.resume(guest.domain.name)
                        if guest.transient:
                            guest.pending = None  # adoption kept its stored one: it has none
                            self._launch(partial(self._forget_when_stopped, guest))
                    # kept consoles of guests not adopted (ended while no supervisor ran)
                    consoles.prune({n for n in self.adopted if self._console_relayed(n)})
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._spawn = None
            idle = consoles.close()
            if idle is not False and keeper_cgroups:
                # None: the keeper did not answer; its cgroups go if nothing is in them
                with trio.CancelScope(shield=True):
                    await _remove_keeper_cgroups(keeper_cgroups, 5.0 if idle else 1.0)
            if self.net is not None:
                with trio.CancelScope(shield=True):
                    await self.net.aclose()

    def _load_transient(self) -> None:
        """Runners for the transient guests a predecessor left (their run records carry the
        live definition, there being no stored one), so that they are adopted like the rest."""
        from supervisor.xml import parse_domain

        for name, record in self.runs.read_all("domains").items():
            text = record.get("live_domain")
            if not record.get("transient") or name in self.guests or not isinstance(text, str):
                continue
            try:
                domain = parse_domain(text)
            except InvalidDocument as exc:
                log.warning("transient guest %s: unreadable run record: %s", name, exc)
                continue
            if domain.name == name:
                guest = self._new_runner(domain)
                guest.transient = True
                self.guests[name] = guest

    async def _spawner(
        self, receive: trio.MemoryReceiveChannel[Callable[[], Awaitable[None]]]
    ) -> None:
        # The guests' nursery is owned by run(); runners reach it through this channel so the
        # nursery object is never stored on the supervisor.
        async with trio.open_nursery() as nursery:
            async for fn in receive:
                nursery.start_soon(fn)

    def _launch(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._spawn is None:
            raise InvalidOperation("the supervisor is not running")
        self._spawn.send_nowait(fn)

    def _new_runner(self, domain: Domain) -> GuestRunner:
        if self._env is None:
            raise InvalidOperation("the supervisor is not running")
        return GuestRunner(domain, self._env)

    def _guest(self, name: str) -> GuestRunner:
        try:
            return self.guests[name]
        except KeyError:
            raise NotFound(f"domain {name!r} is not defined") from None

    # ------------------------------------------------------------------------ definitions

    def list_domains(self) -> list[DomainStatus]:
        return [self.guests[n].status() for n in sorted(self.guests)]

    def domain_status(self, name: str) -> DomainStatus:
        return self._guest(name).status()

    def get_domain(self, name: str) -> Domain:
        return self._guest(name).domain

    def _check_conflicts(self, domain: Domain) -> None:
        for other in self.guests.values():
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
                used = {g.domain.id for g in self.guests.values()}
                changes["id"] = next(
                    i for i in range(CONTEXT_ID_MIN, CONTEXT_ID_MAX + 1) if i not in used
                )
        return attrs.evolve(domain, **changes) if changes else domain

    def _peer_namespaces(self, name: str) -> tuple[int, dict[str, int]] | None:
        """A running guest's init pid and namespace inodes (for ``<lxc:namespace>``), whether
        this supervisor started it or adopted it; None when it has no live init."""
        guest = self.guests.get(name)
        if guest is None or guest.phase not in (Phase.RUNNING, Phase.PAUSED):
            return None
        pid = guest.status().init_pid
        if pid is None:
            return None
        namespaces = guest.process.namespaces if guest.process is not None else None
        if namespaces is not None:
            return pid, dict(attrs.asdict(namespaces))
        if guest.adopted_namespaces is not None:
            return pid, dict(guest.adopted_namespaces)
        return None

    async def define_domain(self, domain: Domain) -> Domain:
        """Add or update a definition (DEFINED ADDED / UPDATED); refuses duplicates.

        Updating a running guest changes its stored definition; the running guest keeps the
        old one until it is next started.
        """
        from supervisor.validate import check_domain, host_problems

        # the host's rules too (an architecture other than this one's), which `vsv validate`
        # cannot know for the host a document is meant for
        problems = check_domain(domain) + [str(p) for p in host_problems(domain)]
        if problems:
            raise InvalidDocument(problems)
        previous = self.guests.get(domain.name)
        if (
            previous is not None
            and domain.uuid is not None
            and previous.domain.uuid not in (None, domain.uuid)
        ):
            raise ConflictError(
                f"domain {domain.name} exists with uuid {previous.domain.uuid}, not {domain.uuid}"
            )
        domain = self._complete(domain, previous.domain if previous else None)
        self._check_conflicts(domain)
        if self.net is not None:  # static NIC addresses against the networks and other domains
            from supervisor.net.addresses import domain_problems, raise_problems

            others = [g.domain for g in self.guests.values()]
            raise_problems(domain_problems(domain, self.net.service.table.definitions, others))
        self.config.save_domain(domain)
        if previous is None:
            self.guests[domain.name] = self._new_runner(domain)
            detail = "ADDED"
        else:
            # a transient guest (made by create, or undefined while running) becomes
            # persistent: it stays when it stops, as libvirt's virDomainDefineXML does
            detail = "ADDED" if previous.transient else "UPDATED"
            previous.transient = False
            previous.redefine(domain)
        self._bus.publish_nowait("domain", domain.name, "DEFINED", detail)
        return domain

    async def undefine_domain(self, name: str) -> None:
        """Remove the stored definition. A stopped guest is gone at once; an active one runs on
        as a transient guest (its live definition only) and is gone when it stops, as libvirt
        does (UNDEFINED REMOVED now, nothing more at its end)."""
        guest = self._guest(name)
        if guest.transient:
            raise InvalidOperation(f"domain {name} is transient: it has no definition to remove")
        self.config.remove_domain(name)
        if guest.phase is Phase.SHUTOFF and not guest.busy:
            del self.guests[name]
        else:
            guest.make_transient()
            self._launch(partial(self._forget_when_stopped, guest))
        self._bus.publish_nowait("domain", name, "UNDEFINED", "REMOVED")

    async def create_domain(self, domain: Domain) -> DomainStatus:
        """``vsv create``: start a guest from a definition that is not stored (transient). It
        is gone from the registry when it stops; a define of the same name makes it
        persistent. Events: STARTED BOOTED (no DEFINED), then its STOPPED."""
        from supervisor.validate import check_domain

        problems = check_domain(domain)
        if problems:
            raise InvalidDocument(problems)
        if domain.name in self.guests:
            raise ConflictError(f"domain {domain.name} already exists: use start")
        domain = self._complete(domain, None)
        self._check_conflicts(domain)
        guest = self._new_runner(domain)
        guest.make_transient()
        self.guests[domain.name] = guest
        try:
            return await self.start_domain(domain.name)
        finally:
            self._launch(partial(self._forget_when_stopped, guest))

    async def _forget_when_stopped(self, guest: GuestRunner) -> None:
        """Remove a transient guest from the registry once it has stopped (and been released);
        not if it was made persistent meanwhile."""

        def done(g: GuestRunner) -> bool:
            return not g.transient or (g.phase is Phase.SHUTOFF and not g.busy)

        await guest.wait_until(done)
        name = guest.domain.name
        if guest.transient and self.guests.get(name) is guest:
            del self.guests[name]

    def get_domain_config(self, name: str) -> Domain:
        """The stored (inactive) definition: the one the next start boots; for a transient
        guest, which has none, the live one (virsh dumpxml --inactive)."""
        guest = self._guest(name)
        return guest.pending if guest.pending is not None else guest.domain

    async def set_autostart(self, name: str, autostart: bool) -> None:
        guest = self._guest(name)
        if guest.transient:
            raise InvalidOperation(f"domain {name} is transient: it cannot autostart")
        domain = attrs.evolve(guest.domain, autostart=autostart)
        self.config.save_domain(domain)
        guest.domain = domain

    # ------------------------------------------------------------------------ operations

    async def start_domain(self, name: str) -> DomainStatus:
        """Start the guest and wait until it runs (STARTED BOOTED) or failed to start."""
        guest = self._guest(name)
        if self.stopping:
            raise InvalidOperation(f"domain {name}: the supervisor is stopping, no guest starts")
        if self._running_id_conflict(guest):
            raise ConflictError(
                f"domain {name}: context id {guest.domain.id} is in use by a running guest"
            )
        began = time.monotonic()
        try:
            await guest.start()
        except PrepareFailed as error:
            # a hook refused the start on purpose (an address in use, a network not running):
            # the caller gets that error, 409 and its message, not a 500 with a Python repr
            self.start_failures += 1
            cause = error.cause
            if isinstance(cause, ConflictError | InvalidOperation | NotFound):
                text = str(cause)
                raise type(cause)(
                    text if text.startswith(f"{name}: ") else f"domain {name}: {text}"
                ) from error
            raise
        except VsvError:
            self.start_failures += 1
            raise
        except Exception as error:
            self.start_failures += 1
            raise RuntimeFailure(f"domain {name}: start failed: {error}") from error
        self.starts += 1
        self.start_latency.observe(time.monotonic() - began)
        return guest.status()

    def _running_id_conflict(self, guest: GuestRunner) -> bool:
        if guest.domain.id is None:
            return False
        return any(
            g is not guest and g.domain.id == guest.domain.id and g.phase is not Phase.SHUTOFF
            for g in self.guests.values()
        )

    async def shutdown_domain(self, name: str, *, timeout: float | None = None) -> None:
        """Ask init to power off (SIGTERM by default); kill it after ``timeout`` seconds.

        Returns once the request is made; the end is reported as events.
        """
        await self._guest(name).shutdown(self.shutdown_timeout if timeout is None else timeout)

    async def destroy_domain(self, name: str) -> None:
        """Kill every process of the guest (its whole cgroup) and wait until it is released."""
        await self._guest(name).destroy()

    async def reboot_domain(self, name: str) -> None:
        """Restart the guest in place: its processes are killed and init respawned (REBOOT)."""
        await self._guest(name).reboot()

    async def suspend_domain(self, name: str) -> None:
        await self._guest(name).suspend()

    async def resume_domain(self, name: str) -> None:
        await self._guest(name).resume()

    # ------------------------------------------------------------------------ guests' logs

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
            for guest in list(self.guests.values()):
                if not guest.active:
                    continue
                if self.logs is not None and self.logs.relaying(guest.domain.name):
                    continue  # its relay holds the cap at every write
                if self._console_relayed(guest.domain.name):
                    continue  # so does its console relay
                path = guest_log_file(self.run_dir, guest.domain.name)
                try:
                    if os.stat(path).st_size <= self.log_max_bytes:
                        continue
                    keep = self.log_max_bytes // 2
                    await trio.to_thread.run_sync(cut_back, path, keep)
                except OSError as exc:
                    if not isinstance(exc, FileNotFoundError):
                        log.warning("guest %s: log %s: %s", guest.domain.name, path, exc)

    def domain_log_path(self, name: str) -> str | None:
        self._guest(name)
        return str(guest_log_file(self.run_dir, name))

    def _console_relayed(self, name: str) -> bool:
        guest = self.guests.get(name)
        return guest is not None and guest.console is not None and guest.console.relaying

    def domain_console(self, name: str) -> GuestConsole:
        guest = self._guest(name)
        if not guest.domain.consoles:
            raise NoConsole(
                f"domain {name!r} has no console (its definition has no <console type='pty'/>)"
            )
        console = guest.console
        if console is not None and console.live:
            return console
        if guest.adopted_pid is not None:
            raise InvalidOperation(
                f"domain {name!r}: its console was not kept when the previous supervisor "
                "ended (see the log); it is served again from the guest's next start"
            )
        raise InvalidOperation(f"domain {name!r} is not running")

    # ------------------------------------------------------------------------ whole-supervisor

    async def start_autostart(self) -> None:
        """Start every domain marked autostart that is not running (failures are reported)."""
        async with trio.open_nursery() as nursery:
            for guest in list(self.guests.values()):
                if guest.domain.autostart and guest.phase is Phase.SHUTOFF:
                    nursery.start_soon(self._start_quietly, guest.domain.name)

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
        rolled back. Repeated until no guest is active, so that a start that was about to
        begin when the signal came cannot leave a guest running. A preserved guest (ended,
        resources kept for inspection) is destroyed: nothing outlives the supervisor.
        """
        self.stopping = True

        def settled(g: GuestRunner) -> bool:
            return g.phase is not Phase.STARTING

        def stopped(g: GuestRunner) -> bool:
            return g.phase is Phase.SHUTOFF and not g.busy

        with trio.move_on_after(timeout + 10):
            while busy := [g for g in self.guests.values() if not stopped(g)]:
                for guest in busy:
                    await guest.wait_until(settled)
                for guest in busy:
                    with contextlib.suppress(VsvError):
                        if guest.phase is Phase.PAUSED:
                            await guest.resume()
                        if guest.phase is Phase.RUNNING:
                            await guest.shutdown(timeout)
                        elif guest.phase is not Phase.STOPPING:
                            await guest.destroy()
                with trio.move_on_after(timeout + 5):
                    for guest in busy:
                        await guest.wait_until(stopped)
                for guest in busy:
                    if not stopped(guest):
                        with contextlib.suppress(VsvError):
                            await guest.destroy()
                        await guest.wait_until(stopped)

    # ------------------------------------------------------------------------ views

    def domain_interfaces(self, name: str) -> list[dict[str, Any]]:
        """What each NIC really got (MAC, guest name, address) while the guest runs; the
        definition's static values otherwise."""
        guest = self._guest(name)
        plumbed: dict[int, PlumbedNic] = {}
        if guest.ctx is not None and guest.ctx.records.net is not None:
            for plumbed_nic in guest.ctx.records.net.nics:
                if plumbed_nic.type != "hostdev":  # host NICs lent: not <interface> rows
                    plumbed[plumbed_nic.index] = plumbed_nic
        rows: list[dict[str, Any]] = []
        for index, iface in enumerate(guest.domain.interfaces):
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

    def _live_cgroup(self, guest: GuestRunner) -> CgroupHandle | None:
        running = guest.phase in (Phase.RUNNING, Phase.PAUSED, Phase.STOPPING)
        return guest.cgroup if running else None

    def schedinfo(self, name: str) -> Mapping[str, object]:
        guest = self._guest(name)
        return self._sched().schedinfo(guest.domain, self._live_cgroup(guest))

    async def set_schedinfo(
        self, name: str, params: Mapping[str, str], *, live: bool, config: bool
    ) -> Mapping[str, object]:
        """virsh schedinfo --set: live (the running guest's cgroup), config (the definition).

        With neither flag: live when the guest runs, else config (libvirt's "current").
        """
        guest = self._guest(name)
        cgroup = self._live_cgroup(guest)
        live, config = resolve_flags(live, config, running=cgroup is not None)
        running = guest.domain
        # the stored definition: a pending one (redefined, or changed live-only) or the running
        persistent = guest.pending if guest.pending is not None else running
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
            # a live-only change lasts until the guest stops; then the stored one applies
            guest.set_live(new, stored)
        elif config:
            guest.set_stored(stored)
        return info

    async def domain_stats(self, names: Sequence[str] | None = None) -> list[tuple[str, Stats]]:
        """Every (or each named) guest's figures; the files are read in a worker thread, all
        guests in one go (supervisor/stats.py)."""
        chosen = (
            [self._guest(n) for n in names]
            if names is not None
            else [self.guests[n] for n in sorted(self.guests)]
        )
        layout = self.runtime.cgroup_layout() if self.runtime is not None else None
        sources: dict[str, StatSources] = {}
        answers: list[tuple[str, Stats]] = []
        for guest in chosen:
            status = guest.status()
            head: Stats = {
                "state.state": STATE_NUMBERS.get(status.state, 0),
                "state.reason": status.reason,
            }
            if guest.domain.memory_kib is not None:
                head["balloon.maximum"] = guest.domain.memory_kib
            answers.append((guest.domain.name, head))
            cgroup = self._live_cgroup(guest)
            if layout is None or cgroup is None:
                continue
            nics: list[tuple[str, str]] = []
            if guest.ctx is not None and guest.ctx.records.net is not None:
                for nic in sorted(guest.ctx.records.net.nics, key=lambda n: n.index):
                    nics.append((nic.host_if, nic.guest_if or f"eth{nic.index}"))
            sources[guest.domain.name] = sources_for(
                layout,
                cgroup,
                init_pid=status.init_pid,
                nics=nics,
                loan=self.sched.loan(guest.domain.name) if self.sched is not None else None,
            )
        if sources:
            figures = await trio.to_thread.run_sync(read_many, sources)
            for name, head in answers:
                head.update(figures.get(name, {}))
        return answers

    def memory_params(self, name: str) -> dict[str, object]:
        """``memtune``/``setmem``'s view: the live values of a running guest, else the stored."""
        guest = self._guest(name)
        running = self._live_cgroup(guest) is not None
        return memory_view(guest.domain if running else self.get_domain_config(name), running)

    async def set_memory(
        self,
        name: str,
        *,
        current_kib: int | None = None,
        memtune: Mapping[str, int] | None = None,
        live: bool,
        config: bool,
    ) -> dict[str, object]:
        """``vsv setmem`` (``current_kib``) and ``vsv memtune`` (``memtune``: hard_limit_kib,
        soft_limit_kib, swap_hard_limit_kib), live and/or in the stored definition; neither
        flag: live when the guest runs, else config (libvirt's "current").

        For a container the balloon is the memory limit (libvirt's LXC driver): setmem sets
        ``<currentMemory>`` and the hard limit together. A live change writes the cgroup's
        limits and publishes one TUNABLE naming what changed (KiB)."""
        from supervisor.validate import check_domain

        guest = self._guest(name)
        cgroup = self._live_cgroup(guest)
        live, config = resolve_flags(live, config, running=cgroup is not None)
        if live and cgroup is None:
            raise InvalidOperation(f"domain {name} is not running: use --config")
        if config and guest.transient:
            raise InvalidOperation(f"domain {name} is transient: it has no stored definition")
        changes = dict(memtune or {})
        if current_kib is not None:
            changes["hard_limit_kib"] = current_kib

        def changed(domain: Domain) -> Domain:
            tune = attrs.evolve(domain.memtune or MemTune(), **changes)
            new = attrs.evolve(domain, memtune=tune)
            if current_kib is not None:
                new = attrs.evolve(new, current_memory_kib=current_kib)
            problems = check_domain(new)
            if problems:
                raise InvalidDocument(problems)
            return new

        running = guest.domain
        persistent = self.get_domain_config(name)
        new_live = changed(running) if live else running
        new_stored = changed(persistent) if config else persistent
        if live:
            assert cgroup is not None
            cgroup.apply_limits(new_live)
        if config:
            self.config.save_domain(new_stored)
        if live:
            guest.set_live(new_live, new_stored if not guest.transient else new_live)
            if guest.transient:
                guest.pending = None
            data: dict[str, int] = {}
            before, after = running.memtune or MemTune(), new_live.memtune or MemTune()
            for key in ("hard_limit", "soft_limit", "swap_hard_limit"):
                value = getattr(after, f"{key}_kib")
                if value is not None and value != getattr(before, f"{key}_kib"):
                    data[f"memtune.{key}"] = value
            if current_kib is not None and current_kib != running.current_memory_kib:
                data["balloon.current"] = current_kib
            if data:
                self._bus.publish_nowait("domain", name, "TUNABLE", None, data)
        elif config:
            guest.set_stored(new_stored)
        return memory_view(new_live if live else new_stored, live)

    async def set_network_autostart(self, name: str, autostart: bool) -> None:
        await require_network(self.net, name).set_autostart(name, autostart)

    def list_networks(self) -> list[NetworkStatus]:
        return [] if self.net is None else self.net.list_networks()

    def get_network(self, name: str) -> Network:
        return require_network(self.net, name).get_network(name)

    async def define_network(self, network: Network) -> Network:
        domains = [g.domain for g in self.guests.values()]
        return require_network(self.net, network.name).define_network(network, domains)

    async def undefine_network(self, name: str) -> None:
        require_network(self.net, name).undefine_network(name)

    async def start_network(self, name: str) -> None:
        await require_network(self.net, name).start_network(name)

    async def destroy_network(self, name: str) -> None:
        await require_network(self.net, name).destroy_network(name)

    def network_leases(self, name: str) -> list[Lease]:
        return require_network(self.net, name).leases(name)

    async def metrics_snapshot(self, requests: RequestCounts | None = None) -> Snapshot:
        """What a ``/metrics`` scrape reports (supervisor/metrics.py): the counters and states
        taken in one step, then every guest's figures."""
        counters = self.statistics()
        bus = attrs.asdict(self._bus.statistics(), recurse=True)
        sched = self.sched.statistics() if self.sched is not None else None
        tuner = sched.get("tuner") if sched is not None else None
        requests_now = dict(requests.counts) if requests is not None else {}
        figures = await self.domain_stats()
        states = {n: g.life.status.state.name for n, g in self.guests.items()}
        return Snapshot(
            domains=[(name, states.get(name, "SHUTOFF"), f) for name, f in figures],
            states=counters["states"],  # type: ignore[arg-type]
            starts=self.starts,
            start_failures=self.start_failures,
            start_latency=self.start_latency,
            bus=bus,
            journal=attrs.asdict(self.journal.statistics()) if self.journal is not None else {},
            requests=requests_now,
            tuner=tuner if isinstance(tuner, dict) else None,
        )

    def statistics(self) -> Mapping[str, object]:
        states: dict[str, int] = {}
        for guest in self.guests.values():
            key = guest.life.status.state.name
            states[key] = states.get(key, 0) + 1
        return {
            "prefix": self.prefix,
            "domains": len(self.guests),
            "states": states,
            "bus": attrs.asdict(self._bus.statistics(), recurse=True),
            "sched": self.sched.statistics() if self.sched is not None else None,
            "fleet": self.fleet_statistics() if self.fleet_statistics is not None else None,
            "consoles": self._console_statistics(),
        }

    def _console_statistics(self) -> dict[str, int]:
        """How many guests' consoles are relayed now, and how many have a client attached."""
        consoles = [g.console for g in self.guests.values() if g.console is not None]
        return {
            "live": sum(1 for c in consoles if c.live),
            "attached": sum(1 for c in consoles if c.session is not None),
        }


async def _remove_keeper_cgroups(paths: tuple[str, ...], timeout: float) -> None:
    """The console keeper's cgroups, once it has left them (it exits when it holds nothing and
    is told so)."""
    from supervisor.guest.cgroups import remove_dirs

    try:
        await remove_dirs(reversed(paths), timeout=timeout)
    except RuntimeFailure as exc:
        log.warning("the console keeper's cgroup: %s", exc)


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
    #: the resolv.conf networks forward DNS to ("derived": from the host namespace; None: none)
    resolv_file: str | None = "derived"
    #: caps of open API connections per socket (None: derived from the descriptor limit; see
    #: supervisor/api/limits.py)
    api_max_connections: int | None = None
    api_ro_max_connections: int | None = None
    #: serve /metrics (Prometheus) on this (host, port); None: off
    metrics_listen: tuple[str, int] | None = None
    #: publish the journal to NATS JetStream (``--nats``; docs/fleet.md)
    fleet: FleetSettings | None = None


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
    listeners = None
    if opts.socket is not None:
        from supervisor.api.server import bind_api

        # bound before anything is made or runs (see ApiListeners): a second supervisor, or a
        # socket path that cannot be served, stops here with one line and leaves nothing behind
        # (no journal, no namespace); a client that connects once the supervisor announced
        # itself waits in the backlog to be served
        try:
            listeners = bind_api(
                opts.socket,
                opts.ro_socket,
                opts.socket_group,
                make_under=str(opts.run_dir),
            )
        except VsvError as exc:
            print(f"vsv daemon: {exc}", file=sys.stderr)
            return 1
    metrics_sock = None
    if opts.metrics_listen is not None:
        from supervisor.metrics import bind_metrics

        try:
            metrics_sock = bind_metrics(*opts.metrics_listen)
        except VsvError as exc:
            if listeners is not None:
                listeners.close()
            print(f"vsv daemon: {exc}", file=sys.stderr)
            return 1
    created_netns = False
    host_netns: str | None = None
    from supervisor import sdnotify
    from supervisor.journal import Journal

    try:
        if opts.netns is not None:
            if not nsutil.netns_exists(opts.netns):
                nsutil.create_netns(opts.netns)
                created_netns = True
            host_netns = str(nsutil.netns_path(opts.netns))
        # The journal numbers on from where the previous supervisor stopped; every event is in
        # it before anyone can see it (a bus sink), so a consumer resuming with since=N misses
        # nothing.
        journal = Journal.open(opts.state_dir / "journal")
    except BaseException:
        if listeners is not None:
            listeners.close()
        if metrics_sock is not None:
            metrics_sock.close()
        if created_netns:
            nsutil.delete_netns(opts.netns or "")
        raise
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
        journal=journal,
        log_max_bytes=opts.log_max_bytes,
        resolv_file=opts.resolv_file,
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
                fleet = await _start_fleet(nursery, opts, journal, sup)
                await nursery.start(sup.run)  # publishes the supervisor's STARTED first
                requests = RequestCounts()
                if listeners is not None:
                    from supervisor.api.server import serve_api

                    await nursery.start(
                        partial(
                            serve_api,
                            sup,
                            journal,
                            listeners=listeners,
                            max_connections=opts.api_max_connections,
                            ro_max_connections=opts.api_ro_max_connections,
                            requests=requests,
                        )
                    )
                if metrics_sock is not None:
                    from supervisor.metrics import serve_metrics

                    await nursery.start(
                        serve_metrics, metrics_sock, partial(sup.metrics_snapshot, requests)
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
                    {"keep_guests": opts.keep_guests},
                )
                await trio.lowlevel.checkpoint()
                if fleet is not None and fleet.state == "publishing":
                    # the last events (our own STOPPED) go out if the broker is there now; an
                    # absent one costs nothing here, they wait in the journal for the next run
                    with trio.move_on_after(FLEET_DRAIN_TIMEOUT):
                        await fleet.wait_caught_up()
                nursery.cancel_scope.cancel()
    finally:
        if listeners is not None:
            listeners.close()
        if metrics_sock is not None:
            metrics_sock.close()
        journal.close()
        if created_netns and not opts.keep_guests:
            nsutil.delete_netns(opts.netns or "")
    return 0


async def _start_fleet(
    nursery: trio.Nursery, opts: DaemonOptions, journal: Journal, sup: Supervisor
) -> FleetPublisher | None:
    """Start the fleet publisher when ``--nats`` asks for it (nats-py is imported only then)."""
    if opts.fleet is None:
        return None
    from supervisor.fleet.publisher import run_publisher

    settings = opts.fleet
    publisher: FleetPublisher = await nursery.start(
        partial(
            run_publisher,
            journal,
            servers=settings.servers,
            host=settings.host,
            stream=settings.stream,
            state_dir=opts.state_dir,
            creds=settings.creds,
            replicas=settings.replicas,
        )
    )
    sup.fleet_statistics = lambda: attrs.asdict(publisher.statistics())
    return publisher


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
