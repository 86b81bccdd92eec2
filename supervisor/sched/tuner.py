"""The idle-time tuner: lends spare CPU to throttled guests, takes it back under contention.

Theory of operation
-------------------
VServer credited held contexts ``fill_rate2`` tokens per ``interval2`` while a CPU would otherwise
go idle. No static cgroup value says "more while idle", so a periodic task does it: each period it
samples host idle time (over the CPUs the guests run on) and every tuned guest's ``cpu.stat``, and
the pure function :func:`decide` turns two consecutive samples into new quotas.

All rates are in CPUs. A guest has a ``guaranteed`` rate (its hard ``fill_rate/interval`` cap) and
an ``idle_rate`` (``fill_rate2/interval2``); its quota is ``(guaranteed + loan) * period`` with
``0 <= loan <= idle_rate``, so the tuner can never take a guest below its guarantee. Its weight
follows the same rate (as in :mod:`.mapping`), so a loan is consistent in both knobs.

Per period, with ``idle`` = idle CPUs measured in the window and ``used`` = the part of each loan a
guest actually ran on:

1. capacity = ``idle + sum(used)``: what would be idle without the loans. The sum of loans never
   exceeds it (loans nobody uses are trimmed at once: this also reclaims from a guest whose
   newcomer neighbour out-weighs it).
2. contention: ``idle < low_water`` means someone wants the CPU the loans hold: every loan is
   halved (and dropped below ``min_loan``), so a loan of one CPU is gone within ~5 periods even
   when the borrower keeps running on it.
3. lending: ``idle > reserve + min_step`` lends ``idle - reserve`` to throttled guests with room
   that used at least ``busy_ratio`` of their quota, in proportion to their idle rates
   (water-filling up to each one's ``idle_rate``).
4. otherwise hold. The gap between ``low_water`` and ``reserve`` is the hysteresis band: after
   lending, ``reserve`` stays idle, so measurement noise does not flip the tuner between lending
   and reclaiming; and changes smaller than ``min_step`` are not made.

On steady input this converges: lending only grows towards a fixed target, reclaiming only
shrinks towards zero, and the band holds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.sched.cgroupcpu import (
    CpuPaths,
    CpuStat,
    HostIdle,
    read_host_idle,
    read_stat,
    write_bandwidth,
)
from supervisor.sched.mapping import SHARES_MAX, SHARES_MIN, CpuMapping


@attrs.frozen
class TunerConfig:
    """Thresholds in CPUs (of the tuner's CPU set); see the module docstring."""

    low_water: float = 0.05
    reserve: float = 0.15
    min_step: float = 0.03
    min_loan: float = 0.02
    #: fraction of CFS periods throttled in a window that counts as "wants more"
    throttle_ratio: float = 0.05
    #: a throttled guest must also have used this fraction of its current quota to be lent more
    #: (throttling while using far less is a burst at a period edge, not a lasting demand; lending
    #: on it would make the tuner lend and trim by turns)
    busy_ratio: float = 0.8
    #: fraction of each loan kept per contended period
    reclaim_factor: float = 0.5


@attrs.frozen
class TunedGuest:
    """What the tuner needs to know about one guest (see :func:`tuned_guest`)."""

    name: str
    period_us: int
    guaranteed: float
    idle_rate: float
    #: weight at the guaranteed rate (None: the tuner leaves the weight alone)
    shares: int | None = None


def tuned_guest(name: str, mapping: CpuMapping) -> TunedGuest | None:
    """A guest the tuner can lend to, or None when it has no bucket rate or no idle pair."""
    if mapping.guaranteed is None or not mapping.idle_rate or mapping.limits.quota_us is None:
        return None
    # the applied quota may differ from the exact rate (clamps): the guarantee is what's applied
    guaranteed = mapping.limits.quota_us / mapping.limits.period_us
    return TunedGuest(
        name=name,
        period_us=mapping.limits.period_us,
        guaranteed=guaranteed,
        idle_rate=float(mapping.idle_rate),
        shares=mapping.limits.shares,
    )


@attrs.frozen
class Sample:
    """One observation: host idle of the CPU set and every tuned guest's counters, at ``now``."""

    now: float
    host: HostIdle
    guests: Mapping[str, CpuStat]


@attrs.frozen
class GuestWindow:
    """What one guest did between two samples."""

    usage: float
    throttled: bool


@attrs.frozen
class TunerState:
    """The tuner's memory between periods: the last sample and the loans in force."""

    last: Sample | None = None
    loans: Mapping[str, float] = attrs.field(factory=dict)


@attrs.frozen
class QuotaChange:
    """A decided change of one guest's bandwidth: the subsystem applies it and emits TUNABLE."""

    guest: str
    period_us: int
    old_quota_us: int
    new_quota_us: int
    shares: int | None
    loan: float
    reason: str

    def tunable(self) -> dict[str, str | int | float]:
        """The TUNABLE event parameters (libvirt names) of this change, numbers as numbers."""
        out: dict[str, str | int | float] = {
            "cputune.vcpu_period": self.period_us,
            "cputune.vcpu_quota": self.new_quota_us,
        }
        if self.shares is not None:
            out["cputune.shares"] = self.shares
        out["scheduler.loan"] = round(self.loan, 3)
        out["reason"] = self.reason
        return out


@attrs.frozen
class Decision:
    """The outcome of :func:`decide`: the state to keep and the changes to apply."""

    state: TunerState
    changes: tuple[QuotaChange, ...] = ()
    idle: float | None = None


def quota_for(guest: TunedGuest, loan: float) -> int:
    """The quota (us) for a guest's guaranteed rate plus a loan."""
    return max(1000, round((guest.guaranteed + loan) * guest.period_us))


def shares_for(guest: TunedGuest, loan: float) -> int | None:
    """The weight for guaranteed + loan, scaled from the guest's weight at its guarantee."""
    if guest.shares is None or guest.guaranteed <= 0:
        return guest.shares
    s = round(guest.shares * (guest.guaranteed + loan) / guest.guaranteed)
    return min(max(s, SHARES_MIN), SHARES_MAX)


def _window(prev: CpuStat, cur: CpuStat, dt: float, throttle_ratio: float) -> GuestWindow:
    usage = max(0, cur.usage_ns - prev.usage_ns) / 1e9 / dt
    periods = cur.nr_periods - prev.nr_periods
    throttled = cur.nr_throttled - prev.nr_throttled
    return GuestWindow(
        usage=usage,
        throttled=periods > 0 and throttled > 0 and throttled >= throttle_ratio * periods,
    )


def _fill(room: dict[str, float], weights: dict[str, float], amount: float) -> dict[str, float]:
    """Water-filling: share ``amount`` in proportion to ``weights``, none beyond its ``room``."""
    given = dict.fromkeys(room, 0.0)
    open_ = {g for g in room if room[g] > 0 and weights[g] > 0}
    while amount > 1e-9 and open_:
        total_w = sum(weights[g] for g in open_)
        spent = 0.0
        for g in sorted(open_):
            share = amount * weights[g] / total_w
            take = min(share, room[g] - given[g])
            given[g] += take
            spent += take
        amount -= spent
        open_ = {g for g in open_ if room[g] - given[g] > 1e-9}
        if spent <= 1e-12:
            break
    return given


def decide(
    state: TunerState,
    guests: Mapping[str, TunedGuest],
    sample: Sample,
    config: TunerConfig = TunerConfig(),
) -> Decision:
    """One tuner step: two samples (``state.last`` and ``sample``) in, new quotas out.

    Pure: time comes only from ``sample.now``. The first call (no previous sample), a sample with
    no elapsed time, and guests without a previous counter only record and change nothing.
    """
    loans = {g: state.loans.get(g, 0.0) for g in guests}
    prev = state.last
    new_state_loans: dict[str, float]
    if prev is None or sample.now <= prev.now:
        return Decision(TunerState(last=sample, loans=loans))
    dt = sample.now - prev.now
    host_dt = sample.host.total_s - prev.host.total_s
    idle_frac = (sample.host.idle_s - prev.host.idle_s) / host_dt if host_dt > 0 else 0.0
    idle = max(0.0, min(1.0, idle_frac)) * sample.host.ncpus
    windows: dict[str, GuestWindow] = {}
    for g in guests:
        if g in prev.guests and g in sample.guests:
            windows[g] = _window(prev.guests[g], sample.guests[g], dt, config.throttle_ratio)
    used = {
        g: min(loans[g], max(0.0, windows[g].usage - guests[g].guaranteed)) if g in windows else 0.0
        for g in guests
    }
    capacity = idle + sum(used.values())
    new = dict(loans)
    reasons = dict.fromkeys(guests, "")
    if idle < config.low_water:
        for g in guests:
            if new[g] > 0:
                kept = new[g] * config.reclaim_factor
                new[g] = kept if kept >= config.min_loan else 0.0
                reasons[g] = f"reclaim: host idle {idle:.2f} CPU below {config.low_water:.2f}"
    elif idle > config.reserve + config.min_step:
        wanting = {
            g
            for g in guests
            if g in windows
            and windows[g].throttled
            and guests[g].idle_rate > new[g]
            and windows[g].usage >= config.busy_ratio * (guests[g].guaranteed + new[g])
        }
        room = {g: guests[g].idle_rate - new[g] for g in wanting}
        given = _fill(room, {g: guests[g].idle_rate for g in wanting}, idle - config.reserve)
        for g, extra in given.items():
            if extra >= config.min_step or (extra > 0 and new[g] + extra >= guests[g].idle_rate):
                new[g] += extra
                reasons[g] = f"lend: throttled, host idle {idle:.2f} CPU"
    total = sum(new.values())
    if total > capacity + 1e-9:
        scale = capacity / total if total > 0 else 0.0
        for g in guests:
            if new[g] > 0:
                trimmed = new[g] * scale
                new[g] = trimmed if trimmed >= config.min_loan else 0.0
                reasons[g] = reasons[g] or (
                    f"trim: loans {total:.2f} CPU exceed idle capacity {capacity:.2f} CPU"
                )
    changes: list[QuotaChange] = []
    new_state_loans = {}
    for g, guest in guests.items():
        old_q, new_q = quota_for(guest, loans[g]), quota_for(guest, new[g])
        if old_q == new_q:
            # no quota change to apply: a loan taken back is still forgotten (one below the
            # quota's microsecond was kept for ever, lent out of idle time the host no longer
            # had), one grown is not lent until it moves the quota
            new_state_loans[g] = min(loans[g], new[g])
            continue
        new_state_loans[g] = new[g]
        changes.append(
            QuotaChange(
                guest=g,
                period_us=guest.period_us,
                old_quota_us=old_q,
                new_quota_us=new_q,
                shares=shares_for(guest, new[g]),
                loan=new[g],
                reason=reasons[g],
            )
        )
    return Decision(TunerState(last=sample, loans=new_state_loans), tuple(changes), idle)


@attrs.frozen
class TunerStatistics:
    """How much the tuner has done and what it cost (its own CPU time, for the benchmark)."""

    steps: int
    changes: int
    #: thread CPU time in :func:`decide` alone, and in whole steps (sampling and applying too)
    decide_cpu_s: float
    step_cpu_s: float
    loans: Mapping[str, float]


@attrs.define(eq=False)
class Tuner:
    """The thin runner around :func:`decide`: sample, decide, apply, sleep; nothing else.

    ``guests`` is asked each period (guests come and go), ``sampler`` reads the kernel,
    ``applier`` writes a change and publishes its TUNABLE event.
    """

    guests: Callable[[], Mapping[str, TunedGuest]]
    sampler: Callable[[list[str]], Awaitable[Sample]]
    applier: Callable[[QuotaChange], Awaitable[None]]
    period: float = 1.0
    config: TunerConfig = attrs.field(factory=TunerConfig)
    state: TunerState = attrs.field(factory=TunerState)
    _steps: int = 0
    _changes: int = 0
    _decide_cpu_s: float = 0.0
    _step_cpu_s: float = 0.0

    async def step(self) -> Decision:
        """Run one period's sample/decide/apply."""
        s0 = time.thread_time()
        guests = self.guests()
        sample = await self.sampler(sorted(guests))
        t0 = time.thread_time()
        decision = decide(self.state, guests, sample, self.config)
        self._decide_cpu_s += time.thread_time() - t0
        for change in decision.changes:
            await self.applier(change)
        self.state = decision.state
        self._step_cpu_s += time.thread_time() - s0
        self._steps += 1
        self._changes += len(decision.changes)
        return decision

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tune forever, one step per ``period``; cancel the task to stop."""
        task_status.started()
        while True:
            await self.step()
            await trio.sleep(self.period)

    def statistics(self) -> TunerStatistics:
        """Steps and changes so far, and the CPU time spent in the tuner's own code."""
        return TunerStatistics(
            steps=self._steps,
            changes=self._changes,
            decide_cpu_s=self._decide_cpu_s,
            step_cpu_s=self._step_cpu_s,
            loans=dict(self.state.loans),
        )


def cgroup_sampler(
    paths: Callable[[], Mapping[str, CpuPaths]], cpus: Iterable[int] | None = None
) -> Callable[[list[str]], Awaitable[Sample]]:
    """A sampler reading the real kernel: host idle of ``cpus`` and each guest's counters.

    The reads are a few small sysfs/procfs files, cheap enough to do on the trio thread. A guest
    whose cgroup has vanished (it just stopped) is left out of the sample instead of failing.
    """
    cpu_set = None if cpus is None else tuple(cpus)

    async def sample(names: list[str]) -> Sample:
        where = paths()
        stats: dict[str, CpuStat] = {}
        for name in names:
            if name in where:
                try:
                    stats[name] = read_stat(where[name])
                except RuntimeFailure:
                    continue
        return Sample(now=trio.current_time(), host=read_host_idle(cpu_set), guests=stats)

    return sample


def cgroup_applier(
    paths: Callable[[], Mapping[str, CpuPaths]],
    publish: Callable[[QuotaChange], None] | None = None,
) -> Callable[[QuotaChange], Awaitable[None]]:
    """An applier writing a change to the guest's cgroup, then publishing it (TUNABLE)."""

    async def apply(change: QuotaChange) -> None:
        where = paths().get(change.guest)
        if where is None:
            return
        write_bandwidth(where.cpu, change.period_us, change.new_quota_us, shares=change.shares)
        if publish is not None:
            publish(change)

    return apply
