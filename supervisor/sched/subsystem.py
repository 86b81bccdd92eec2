"""The scheduler subsystem as a bus subscriber: CPU limits in ``prepare``, live changes, the tuner.

Theory of operation
-------------------
A guest's CPU limits must be in force before its init runs a single instruction, so they are
written in a ``prepare`` hook (``sched``, order 5: before the network's 10; nothing the network
does depends on it, but a guest that cannot get its CPU limits should fail before anything else
is plumbed). What was applied, and everything that could not be applied as asked (the losses),
goes into the guest's hook records, so ``schedinfo`` and a restarted supervisor can show it.

Guests whose bucket has an idle pair (``fill_rate2``/``interval2``) are registered with the
idle-time :class:`~supervisor.sched.tuner.Tuner`; :meth:`SchedSubsystem.run` steps it every
``tuner_period`` seconds while at least one such guest runs and sleeps on an event otherwise, so
a host without idle-time guests pays nothing. Each quota the tuner changes is published as a
``TUNABLE`` event whose data carries a ``reason``.

``schedinfo``/``set_schedinfo`` are the facade's view. The daemon resolves libvirt's flag rule
first (:func:`resolve_flags`: neither ``--live`` nor ``--config`` means live if the guest runs,
else config), passes the guest's cgroup when it runs, and saves the returned domain when
``config`` is set. A live change writes the new limits at once, resets the tuner's loan for the
guest (the written quota is the guarantee) and publishes exactly one ``TUNABLE`` event. A bad
parameter raises :class:`~supervisor.sched.params.InvalidParameter` before anything is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervisor.errors import InvalidOperation, RuntimeFailure, VsvError
from supervisor.events import DataValue
from supervisor.guest.cgroups import CgroupLayout
from supervisor.hooks import GuestContext, SchedRecord
from supervisor.model import Domain
from supervisor.runtime import CgroupHandle
from supervisor.sched import cgroupcpu
from supervisor.sched.mapping import (
    DEFAULT_HZ,
    CgroupVersion,
    CpuLimits,
    CpuMapping,
    Loss,
    cgroup_files,
    map_domain,
)
from supervisor.sched.params import PARAMS, InvalidParameter, Value, apply_to_domain, parse_value
from supervisor.sched.tuner import (
    QuotaChange,
    Sample,
    TunedGuest,
    Tuner,
    TunerConfig,
    TunerState,
    cgroup_sampler,
    tuned_guest,
)

if TYPE_CHECKING:
    from supervisor.bus import Bus

log = logging.getLogger("vsv.sched")

#: before the network (10): CPU limits are the cheapest thing to set and to fail on
HOOK_ORDER = 5
HOOK_NAME = "sched"

Sampler = Callable[[list[str]], Awaitable[Sample]]


def resolve_flags(live: bool, config: bool, *, running: bool) -> tuple[bool, bool]:
    """libvirt's rule for ``schedinfo --set``: no flag means the current state (live if running).

    Returns ``(live, config)``; ``live`` on a guest that does not run is refused later by
    :meth:`SchedSubsystem.set_schedinfo` with an :class:`InvalidOperation`.
    """
    if not live and not config:
        return (True, False) if running else (False, True)
    return live, config


def cpu_paths(cgroup: CgroupHandle) -> cgroupcpu.CpuPaths | None:
    """Where a guest's ``cpu`` (and separate v1 ``cpuacct``) files are; None without a controller
    (or for a cgroup that is not the kernel's: an in-memory runtime's).

    ``cpuacct`` is kept only when it is a different directory (separate v1 mounts).
    """
    cpu = cgroup.controller_dir("cpu")
    if cpu is None:
        return None
    acct = cgroup.controller_dir("cpuacct")
    return cgroupcpu.CpuPaths(
        cpu=Path(cpu), cpuacct=None if acct is None or acct == cpu else Path(acct)
    )


def _loss_dict(loss: Loss) -> dict[str, str]:
    return attrs.asdict(loss)


def _limits_dict(limits: CpuLimits) -> dict[str, int | None]:
    return {
        "period_us": limits.period_us,
        "quota_us": limits.quota_us,
        "burst_us": limits.burst_us,
        "shares": limits.shares,
    }


def _libvirt_view(limits: CpuLimits) -> dict[str, int]:
    """libvirt's three ``posix`` parameters for some limits (quota -1 = unlimited)."""
    return {
        "cpu_shares": limits.shares,
        "vcpu_period": limits.period_us,
        "vcpu_quota": -1 if limits.quota_us is None else limits.quota_us,
    }


def _tunable_of_limits(old: CpuLimits, new: CpuLimits) -> dict[str, int]:
    """The ``cputune.*`` TUNABLE keys whose kernel value differs between two limits."""
    out: dict[str, int] = {}
    before, after = _libvirt_view(old), _libvirt_view(new)
    for name, key in (
        ("cpu_shares", "cputune.shares"),
        ("vcpu_period", "cputune.vcpu_period"),
        ("vcpu_quota", "cputune.vcpu_quota"),
    ):
        if before[name] != after[name]:
            out[key] = after[name]
    return out


@attrs.define(eq=False)
class _Guest:
    """What the subsystem holds for one running guest."""

    ctx: GuestContext | None
    paths: cgroupcpu.CpuPaths
    version: CgroupVersion
    mapping: CpuMapping
    losses: tuple[Loss, ...]
    tuned: TunedGuest | None


@attrs.frozen
class SchedStatistics:
    """Counters of the subsystem (the tuner's own are nested)."""

    hz: int
    host_cpus: int
    guests: int
    tuned: tuple[str, ...]
    tuner_active: bool
    prepared: int
    live_changes: int
    tunable_events: int
    tuner_errors: int


@attrs.define(eq=False)
class SchedSubsystem:
    """CPU limits and the idle-time tuner for the guests of one supervisor."""

    bus: Bus[Any]
    layout: CgroupLayout
    hz: int
    host_cpus: int
    tuner_period: float = 1.0
    tuner_config: TunerConfig = attrs.field(factory=TunerConfig)
    #: CPUs whose idle time the tuner lends (None: every CPU in ``/proc/stat``)
    tuner_cpus: tuple[int, ...] | None = None
    #: the tuner's sampler; None reads the kernel (:func:`~.tuner.cgroup_sampler`)
    sampler: Sampler | None = None
    _guests: dict[str, _Guest] = attrs.field(factory=dict)
    _tuner: Tuner | None = None
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _tuner_active: bool = False
    _prepared: int = 0
    _live_changes: int = 0
    _tunable_events: int = 0
    _tuner_errors: int = 0

    @classmethod
    def open(
        cls,
        bus: Bus[Any],
        layout: CgroupLayout,
        *,
        hz: int | None = None,
        tuner_period: float = 1.0,
        tuner_config: TunerConfig | None = None,
    ) -> SchedSubsystem:
        """Find HZ (``CONFIG_HZ``, else 250) and the CPUs the supervisor (and its guests) may use.

        Guests inherit the supervisor's CPU affinity, so that set is both the ``host_cpus`` a
        bucket without ``<vcpu>`` covers and the set whose idle time the tuner lends.
        """
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        return cls(
            bus=bus,
            layout=layout,
            hz=hz or cgroupcpu.read_config_hz() or DEFAULT_HZ,
            host_cpus=len(cpus),
            tuner_period=tuner_period,
            tuner_config=tuner_config or TunerConfig(),
            tuner_cpus=cpus,
        )

    def __attrs_post_init__(self) -> None:
        self._tuner = Tuner(
            guests=self._tuned_guests,
            sampler=self.sampler or cgroup_sampler(self._tuned_paths, self.tuner_cpus),
            applier=self._apply_change,
            period=self.tuner_period,
            config=self.tuner_config,
        )

    # ------------------------------------------------------------------------ the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register the hooks and run the tuner while some guest has an idle rate.

        Cancel the task to stop; the hooks are removed on the way out (guests started later get
        no CPU limits, which is why the daemon runs this for its whole life).
        """
        self.bus.add_hooks(
            HOOK_NAME, prepare=self._prepare, release=self._release, order=HOOK_ORDER
        )
        try:
            task_status.started()
            while True:
                if not self._tuned_guests():
                    self._tuner_active = False
                    self._reset_tuner()
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                self._tuner_active = True
                await self._tuner_step()
                await trio.sleep(self.tuner_period)
        finally:
            self._tuner_active = False
            self.bus.remove_hooks(HOOK_NAME)

    async def _tuner_step(self) -> None:
        """One tuner step; a kernel refusal is logged, never the end of the subsystem."""
        assert self._tuner is not None
        try:
            await self._tuner.step()
        except VsvError as exc:
            self._tuner_errors += 1
            log.warning("idle-time tuner step failed: %s", exc)

    def _reset_tuner(self) -> None:
        """Forget the last sample: after a pause its window would span the pause."""
        if self._tuner is not None:
            self._tuner.state = TunerState()

    def _forget_loan(self, name: str) -> None:
        """Drop a guest's loan and last counters (its cgroup was rewritten or is new)."""
        if self._tuner is None:
            return
        state = self._tuner.state
        last = state.last
        if last is not None and name in last.guests:
            last = attrs.evolve(last, guests={k: v for k, v in last.guests.items() if k != name})
        self._tuner.state = TunerState(
            last=last, loans={k: v for k, v in state.loans.items() if k != name}
        )

    def _tuned_guests(self) -> dict[str, TunedGuest]:
        return {n: g.tuned for n, g in self._guests.items() if g.tuned is not None}

    def _tuned_paths(self) -> dict[str, cgroupcpu.CpuPaths]:
        return {n: g.paths for n, g in self._guests.items() if g.tuned is not None}

    async def _apply_change(self, change: QuotaChange) -> None:
        """The tuner's applier: write the quota (and weight), then publish TUNABLE with a reason."""
        guest = self._guests.get(change.guest)
        if guest is None:
            return
        try:
            cgroupcpu.write_bandwidth(
                guest.paths.cpu,
                change.period_us,
                change.new_quota_us,
                shares=change.shares,
                version=guest.version,
            )
        except RuntimeFailure as exc:  # the guest is stopping: its cgroup goes away
            self._tuner_errors += 1
            log.info("tuner: %s: %s", change.guest, exc)
            return
        self._publish(change.guest, change.tunable())

    def _publish(self, name: str, data: Mapping[str, DataValue]) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self.bus.publish_nowait("domain", name, "TUNABLE", None, data)
            self._tunable_events += 1

    def _register(
        self,
        name: str,
        ctx: GuestContext | None,
        paths: cgroupcpu.CpuPaths,
        version: CgroupVersion,
        mapping: CpuMapping,
        losses: tuple[Loss, ...],
    ) -> None:
        self._forget_loan(name)
        tuned = tuned_guest(name, mapping)
        self._guests[name] = _Guest(ctx, paths, version, mapping, losses, tuned)
        if tuned is not None:
            self._wake.set()

    # ------------------------------------------------------------------------ guest hooks

    def _record(self, mapping: CpuMapping, losses: tuple[Loss, ...], version: int) -> SchedRecord:
        return SchedRecord(
            hz=self.hz,
            cpus=mapping.ncpus,
            cgroup_version=version,
            applied=_limits_dict(mapping.limits),
            losses=tuple(_loss_dict(x) for x in losses),
            tuned=mapping.idle_rate is not None and mapping.limits.quota_us is not None,
        )

    def _apply(
        self, domain: Domain, paths: cgroupcpu.CpuPaths, *, fresh: bool = False
    ) -> tuple[CpuMapping, tuple[Loss, ...], CgroupVersion]:
        version = cgroupcpu.detect_version(paths.cpu)
        mapping, file_losses = cgroupcpu.apply_domain(
            paths.cpu, domain, hz=self.hz, host_cpus=self.host_cpus, version=version, fresh=fresh
        )
        return mapping, mapping.losses + file_losses, version

    async def _prepare(self, ctx: GuestContext) -> None:
        """Write the guest's CPU limits before init runs; record them and the losses."""
        domain = ctx.domain
        paths = cpu_paths(ctx.cgroup)
        if paths is None:
            # no cpu files for this guest: the machine has no cpu controller (an error for a
            # domain that asks for CPU limits), or the cgroup is not the kernel's (an in-memory
            # runtime's, left alone: there is nothing to write)
            wants = domain.scheduler is not None or domain.cputune is not None
            if wants and self.layout.controller_hierarchy("cpu") is None:
                raise RuntimeFailure(
                    f"{domain.name}: <scheduler>/<cputune> need the cpu cgroup controller, "
                    "which this machine does not offer"
                )
            return
        mapping, losses, version = self._apply(domain, paths, fresh=ctx.fresh_cgroup)
        for loss in losses:
            log.info("guest %s: lossy CPU setting: %s", domain.name, loss)
        ctx.records.sched = self._record(mapping, losses, version)
        self._register(domain.name, ctx, paths, version, mapping, losses)
        self._prepared += 1

    async def _release(self, ctx: GuestContext) -> None:
        """Forget the guest; its cgroup (and so its limits) is removed by the daemon."""
        self._guests.pop(ctx.domain.name, None)
        self._forget_loan(ctx.domain.name)
        ctx.records.sched = None

    async def adopt(self, ctx: GuestContext) -> None:
        """Take over a guest a previous supervisor started: re-apply its limits, tune it again.

        Re-applying drops whatever loan the predecessor had granted (the tuner starts over).
        """
        await self._prepare(ctx)

    # ------------------------------------------------------------------------ facade

    def schedinfo(self, domain: Domain, cgroup: CgroupHandle | None) -> dict[str, object]:
        """The ``schedinfo`` view of a guest: ``cgroup`` given (it runs) = live, else config.

        Keys: ``scheduler`` ("posix"), ``state`` ("live"/"config"), libvirt's ``cpu_shares``,
        ``vcpu_period``, ``vcpu_quota`` (what the kernel applies when live, what would be applied
        otherwise), the bucket's parameters (None = unset) and ``cpus`` when the domain has a
        ``<scheduler>``, ``hz``, ``applied`` (the CFS limits), ``losses`` (list of
        ``{parameter, requested, applied, reason}``), and when live ``cgroup_version``,
        ``accounting`` (``usage_ns``, ``nr_periods``, ``nr_throttled``, ``throttled_ns``) and,
        for a tuned guest, ``tuner`` (``guaranteed``, ``idle_rate``, ``loan`` in CPUs).
        """
        mapping = map_domain(domain, hz=self.hz, host_cpus=self.host_cpus)
        paths = None if cgroup is None else cpu_paths(cgroup)
        if cgroup is not None and paths is None and (domain.scheduler or domain.cputune):
            raise RuntimeFailure("this machine has no cpu cgroup controller")
        version: CgroupVersion = 2 if "cpu" in self.layout.v2_controllers else 1
        applied = mapping.limits
        accounting: dict[str, int] | None = None
        if paths is not None:
            version = cgroupcpu.detect_version(paths.cpu)
            applied = cgroupcpu.read_limits(paths.cpu, version)
            accounting = attrs.asdict(cgroupcpu.read_stat(paths))
        _, file_losses = cgroup_files(mapping.limits, version)
        out: dict[str, object] = {
            "scheduler": "posix",
            "state": "config" if cgroup is None else "live",
            **_libvirt_view(applied),
        }
        bucket = domain.scheduler
        if bucket is not None:
            for spec in PARAMS.values():
                if spec.section == "scheduler":
                    out[spec.name] = getattr(bucket, spec.field)
            out["cpus"] = mapping.ncpus
        out["hz"] = self.hz
        out["applied"] = _limits_dict(applied)
        out["losses"] = [_loss_dict(x) for x in mapping.losses + file_losses]
        if cgroup is not None:
            out["cgroup_version"] = version
            out["accounting"] = accounting
            guest = self._guests.get(domain.name)
            if guest is not None and guest.tuned is not None and self._tuner is not None:
                out["tuner"] = {
                    "guaranteed": guest.tuned.guaranteed,
                    "idle_rate": guest.tuned.idle_rate,
                    "loan": self._tuner.state.loans.get(domain.name, 0.0),
                }
        return out

    async def set_schedinfo(
        self,
        domain: Domain,
        cgroup: CgroupHandle | None,
        params: Mapping[str, str],
        *,
        live: bool,
        config: bool,
    ) -> tuple[Domain, dict[str, object]]:
        """Change scheduler parameters; returns the new domain and its ``schedinfo`` view.

        ``live``/``config`` are already resolved (:func:`resolve_flags`); the caller saves the
        returned domain when ``config`` is set and keeps it as the running definition when
        ``live`` is. Parsing and checking happen before anything is written, so a bad parameter
        changes nothing. A live change that the kernel refuses is rolled back to the limits in
        force before it.
        """
        if not live and not config:
            raise InvalidOperation("schedinfo: give live, config or both")
        if not params:
            raise InvalidParameter(f"no parameters given; known: {', '.join(PARAMS)}")
        values: dict[str, Value] = {name: parse_value(name, raw) for name, raw in params.items()}
        new_domain, changed = apply_to_domain(domain, values)
        if not live:
            return new_domain, self.schedinfo(new_domain, None)
        if cgroup is None:
            raise InvalidOperation(
                f"domain {domain.name!r} is not running: its scheduler parameters can only be "
                "changed in the config"
            )
        paths = cpu_paths(cgroup)
        if paths is None:
            raise RuntimeFailure("this machine has no cpu cgroup controller")
        self._set_live(domain, new_domain, paths, changed)
        return new_domain, self.schedinfo(new_domain, cgroup)

    def _set_live(
        self,
        domain: Domain,
        new_domain: Domain,
        paths: cgroupcpu.CpuPaths,
        changed: Mapping[str, Value],
    ) -> None:
        """Write the new limits (rolling back on a refusal), retune, publish one TUNABLE."""
        name = domain.name
        version = cgroupcpu.detect_version(paths.cpu)
        before = cgroupcpu.read_limits(paths.cpu, version)
        mapping = map_domain(new_domain, hz=self.hz, host_cpus=self.host_cpus)
        try:
            file_losses = cgroupcpu.write_limits(paths.cpu, mapping.limits, version)
        except RuntimeFailure:
            with contextlib.suppress(RuntimeFailure):
                cgroupcpu.write_limits(paths.cpu, before, version)
            raise
        losses = mapping.losses + file_losses
        previous = self._guests.get(name)
        ctx = previous.ctx if previous is not None else None
        self._register(name, ctx, paths, version, mapping, losses)
        if ctx is not None:
            ctx.records.sched = self._record(mapping, losses, version)
        self._live_changes += 1
        data: dict[str, DataValue] = dict(changed)
        data.update(_tunable_of_limits(before, mapping.limits))
        if not data:
            return
        if losses:
            data["losses"] = "; ".join(str(x) for x in losses)
        self._publish(name, data)

    def loan(self, name: str) -> float | None:
        """The CPUs the tuner lends a running token-bucket guest now (0.0 when none); None for
        a guest it does not tune."""
        guest = self._guests.get(name)
        if guest is None or guest.tuned is None or self._tuner is None:
            return None
        return self._tuner.state.loans.get(name, 0.0)

    def statistics(self) -> dict[str, object]:
        """The subsystem's counters and the tuner's (steps, changes, own CPU time, loans)."""
        assert self._tuner is not None
        stats = SchedStatistics(
            hz=self.hz,
            host_cpus=self.host_cpus,
            guests=len(self._guests),
            tuned=tuple(sorted(self._tuned_guests())),
            tuner_active=self._tuner_active,
            prepared=self._prepared,
            live_changes=self._live_changes,
            tunable_events=self._tunable_events,
            tuner_errors=self._tuner_errors,
        )
        out: dict[str, object] = attrs.asdict(stats)
        out["tuner"] = attrs.asdict(self._tuner.statistics())
        return out
