"""Pure mapping of the VServer token bucket and libvirt's ``<cputune>`` onto cgroup CPU files.

Theory of operation
-------------------
A VServer bucket grants ``fill_rate`` ticks of CPU every ``interval`` ticks, on each CPU it covers.
CFS bandwidth control grants ``quota`` microseconds every ``period`` microseconds, summed over all
CPUs of the cgroup. With ``t`` = one tick in microseconds (``1e6 / hz``), ``R = fill_rate /
interval`` and ``N`` = the number of CPUs the bucket covers:

- period ``P = interval * t``, kept inside the kernel's 1000..1000000 us;
- quota ``Q = P * N * R`` (the hard cap), at least 1000 us: when the rate is too small for that, the
  period is lengthened first, so the rate survives and only the granularity is lost;
- burst ``B = N * tokens_max * t - Q``, clamped to ``0..Q`` (the kernel caps burst at the quota);
- the relative weight follows the same rate: ``shares = 1024 * N * R`` (one CPU's worth of rate
  weighs as much as an ordinary cgroup), so two contending guests split a CPU in the ratio of
  their fill rates even when neither hits its cap. ``prio_bias`` scales that weight by
  ``1.25 ** -prio_bias``, the step between two nice levels.

``<cputune>`` values given explicitly win over the values derived from the bucket: a libvirt user
who writes ``<shares>`` means that number. The result is a version-neutral :class:`CpuLimits`
plus every :class:`Loss`: what was asked, what is applied instead, and why. The per-version file
values (:func:`v1_files`, :func:`v2_files`) add their own range losses. Nothing lossy is silent.

All arithmetic is exact (``Fraction``) until the final rounding to integers, so that a lossless
case round-trips (:func:`bucket_from_limits`, :func:`limits_from_v1`, :func:`limits_from_v2`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Literal

import attrs

from supervisor.model import CpuTune, Domain, TokenBucket

CgroupVersion = Literal[1, 2]

#: Tick rate assumed for VServer token units unless the caller knows the kernel's CONFIG_HZ.
DEFAULT_HZ = 250

PERIOD_MIN_US = 1_000
PERIOD_MAX_US = 1_000_000
PERIOD_DEFAULT_US = 100_000
QUOTA_MIN_US = 1_000
QUOTA_MAX_US = 2**44 - 1
SHARES_MIN = 2
SHARES_MAX = 262_144
SHARES_DEFAULT = 1024
WEIGHT_MIN = 1
WEIGHT_MAX = 10_000
WEIGHT_DEFAULT = 100
NICE_MIN = -20
NICE_MAX = 19

#: VServer's defaults for an unconfigured bucket: 1 token every 4 ticks, idle pair 1 per 8.
DEFAULT_FILL_RATE = 1
DEFAULT_INTERVAL = 4
DEFAULT_FILL_RATE2 = 1
DEFAULT_INTERVAL2 = 8


@attrs.frozen
class Loss:
    """One thing the kernel cannot express as asked: reported to the API and ``schedinfo``."""

    parameter: str
    requested: str
    applied: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.parameter}: requested {self.requested}, applied {self.applied} ({self.reason})"
        )


@attrs.frozen
class CpuLimits:
    """Version-neutral CFS settings; ``quota_us`` None means unlimited.

    ``shares`` is on libvirt's ``cpu_shares`` scale (1024 = default); the v2 weight is derived.
    """

    period_us: int = PERIOD_DEFAULT_US
    quota_us: int | None = None
    burst_us: int = 0
    shares: int = SHARES_DEFAULT


@attrs.frozen
class CpuMapping:
    """The outcome of mapping one guest's CPU settings.

    ``guaranteed`` and ``idle_rate`` are in CPUs (None: no bucket rate); the tuner lends up to
    ``idle_rate`` on top of ``guaranteed`` while the host is idle.
    """

    limits: CpuLimits
    losses: tuple[Loss, ...] = ()
    guaranteed: Fraction | None = None
    idle_rate: Fraction | None = None
    ncpus: int = 1


def _round(x: Fraction) -> int:
    """Round half up: deterministic and monotonic, unlike banker's rounding."""
    return math.floor(x + Fraction(1, 2))


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def tick_us(hz: int) -> Fraction:
    """One scheduler tick in microseconds."""
    if hz <= 0:
        raise ValueError(f"hz must be positive, got {hz}")
    return Fraction(1_000_000, hz)


def cpus_covered(domain: Domain, host_cpus: int) -> int:
    """How many CPUs a guest's bucket covers: per-CPU entries, else ``<vcpu>``, else the host's."""
    if domain.scheduler is not None and domain.scheduler.cpus:
        return len(domain.scheduler.cpus)
    if domain.vcpu is not None and domain.vcpu > 0:
        return domain.vcpu
    return max(1, host_cpus)


def idle_enabled(bucket: TokenBucket) -> bool:
    """Whether the idle-time pair applies: ``idle_time`` on, or unset with ``fill_rate2`` given."""
    if bucket.idle_time is not None:
        return bucket.idle_time
    return bucket.fill_rate2 is not None


def _bucket_rates(
    bucket: TokenBucket, ncpus: int, losses: list[Loss]
) -> tuple[Fraction, int, Fraction | None, int]:
    """(total rate in CPUs, interval used for the period, idle rate in CPUs, CPUs covered)."""
    fill = bucket.fill_rate if bucket.fill_rate is not None else DEFAULT_FILL_RATE
    interval = bucket.interval if bucket.interval is not None else DEFAULT_INTERVAL
    fill2 = bucket.fill_rate2 if bucket.fill_rate2 is not None else DEFAULT_FILL_RATE2
    interval2 = bucket.interval2 if bucket.interval2 is not None else DEFAULT_INTERVAL2
    top_idle = idle_enabled(bucket)
    if not bucket.cpus:
        rate = Fraction(fill, interval) * ncpus
        idle = Fraction(fill2, interval2) * ncpus if top_idle else None
        if ncpus > 1:
            losses.append(
                Loss(
                    "scheduler.fill_rate",
                    f"{fill}/{interval} on each of {ncpus} CPUs",
                    f"{_fmt(rate)} CPUs in total",
                    "CFS caps the sum over all CPUs, not each CPU",
                )
            )
        return rate, interval, idle, ncpus
    rate = Fraction(0)
    idle_total = Fraction(0)
    any_idle = False
    intervals: list[int] = []
    for entry in bucket.cpus:
        f = entry.fill_rate if entry.fill_rate is not None else fill
        i = entry.interval if entry.interval is not None else interval
        rate += Fraction(f, i)
        intervals.append(i)
        e_idle = (
            entry.idle_time
            if entry.idle_time is not None
            else (top_idle or entry.fill_rate2 is not None)
        )
        if e_idle:
            any_idle = True
            f2 = entry.fill_rate2 if entry.fill_rate2 is not None else fill2
            i2 = entry.interval2 if entry.interval2 is not None else interval2
            idle_total += Fraction(f2, i2)
    n = len(bucket.cpus)
    losses.append(
        Loss(
            "scheduler.cpu",
            f"{n} per-CPU buckets",
            f"one cap of {_fmt(rate)} CPUs in total",
            "cgroups have one bandwidth pool per group, not one per CPU",
        )
    )
    used_interval = min(intervals)
    if len(set(intervals)) > 1:
        losses.append(
            Loss(
                "scheduler.cpu.interval",
                ",".join(str(i) for i in intervals),
                str(used_interval),
                "one period for all CPUs: the finest interval is used",
            )
        )
    return rate, used_interval, (idle_total if any_idle else None), n


def _normalize_bucket(bucket: TokenBucket, hz: int, losses: list[Loss]) -> TokenBucket:
    """Apply VServer's own rules on set: tokens_max <= 0 is HZ; tokens_min is at most tokens_max."""
    tmax = bucket.tokens_max
    if tmax is not None and tmax <= 0:
        losses.append(Loss("scheduler.tokens_max", str(tmax), str(hz), "VServer treats <= 0 as HZ"))
        tmax = hz
    tmin = bucket.tokens_min
    if tmin is not None and tmax is not None and tmin > tmax:
        losses.append(
            Loss(
                "scheduler.tokens_min",
                str(tmin),
                str(tmax),
                "VServer caps tokens_min at tokens_max",
            )
        )
        tmin = tmax
    return attrs.evolve(bucket, tokens_max=tmax, tokens_min=tmin)


def _quota_for(period: Fraction, rate: Fraction, losses: list[Loss], what: str) -> tuple[int, int]:
    """(period, quota) for a rate, lengthening the period when the quota would be under 1000 us."""
    p = Fraction(_round(min(max(period, Fraction(PERIOD_MIN_US)), Fraction(PERIOD_MAX_US))))
    if p != period:
        why = (
            "period range 1000..1000000 us"
            if not PERIOD_MIN_US <= period <= PERIOD_MAX_US
            else "period rounded to whole microseconds"
        )
        losses.append(Loss(f"{what}.period", f"{_fmt(period)}us", f"{_fmt(p)}us", why))
    q = p * rate
    if q < QUOTA_MIN_US and p < PERIOD_MAX_US:
        longer = min(Fraction(PERIOD_MAX_US), Fraction(math.ceil(QUOTA_MIN_US / rate)))
        losses.append(
            Loss(
                f"{what}.period",
                f"{_fmt(p)}us",
                f"{_fmt(longer)}us",
                "lengthened so the quota reaches the kernel's 1000 us minimum",
            )
        )
        p = longer
        q = p * rate
    quota = _round(q)
    if quota < QUOTA_MIN_US:
        losses.append(
            Loss(
                f"{what}.rate",
                f"{_fmt(rate)} CPUs",
                f"{_fmt(Fraction(QUOTA_MIN_US) / p)} CPUs",
                "quota below the kernel's 1000 us minimum even at the longest period",
            )
        )
        quota = QUOTA_MIN_US
    elif quota > QUOTA_MAX_US:
        losses.append(Loss(f"{what}.rate", f"{_fmt(rate)} CPUs", "2^44-1 us", "quota maximum"))
        quota = QUOTA_MAX_US
    elif quota != q:
        losses.append(
            Loss(
                f"{what}.rate", f"{_fmt(q)}us", f"{quota}us", "quota rounded to whole microseconds"
            )
        )
    return _round(p), quota


def map_scheduler(
    bucket: TokenBucket | None,
    cputune: CpuTune | None,
    *,
    hz: int = DEFAULT_HZ,
    ncpus: int = 1,
) -> CpuMapping:
    """Map a token bucket and/or ``<cputune>`` onto CFS limits, reporting every loss.

    ``ncpus`` is the number of CPUs a bucket without per-CPU entries covers (see
    :func:`cpus_covered`). With neither input, the kernel defaults are returned unchanged.
    """
    losses: list[Loss] = []
    t = tick_us(hz)
    limits = CpuLimits()
    guaranteed: Fraction | None = None
    idle_rate: Fraction | None = None
    covered = ncpus
    if bucket is not None:
        bucket = _normalize_bucket(bucket, hz, losses)
        rate, interval, idle_rate, covered = _bucket_rates(bucket, ncpus, losses)
        guaranteed = rate
        period, quota = _quota_for(interval * t, rate, losses, "scheduler")
        burst = 0
        if bucket.tokens_max is not None:
            raw = covered * bucket.tokens_max * t - quota
            burst_f = min(max(raw, Fraction(0)), Fraction(quota), Fraction(QUOTA_MAX_US - quota))
            burst = _round(burst_f)
            if burst != raw:
                why = (
                    "bucket smaller than one period's fill: CFS always grants the full quota"
                    if raw < 0
                    else "the kernel caps burst at the quota"
                )
                losses.append(
                    Loss("scheduler.tokens_max", f"{_fmt(raw)}us burst", f"{burst}us", why)
                )
        shares_f = SHARES_DEFAULT * rate
        if bucket.prio_bias:
            shares_f = shares_f * Fraction(4, 5) ** bucket.prio_bias
            losses.append(
                Loss(
                    "scheduler.prio_bias",
                    str(bucket.prio_bias),
                    f"weight factor 1.25^{-bucket.prio_bias}",
                    "static weight: VServer's priority followed the bucket's fill level",
                )
            )
        shares = _round(shares_f)
        # rounding to whole shares moves a weight by < 0.5% once it is >= 100; below, say so
        if shares_f and abs(shares - shares_f) / shares_f > Fraction(1, 200):
            losses.append(
                Loss("scheduler.shares", _fmt(shares_f), str(shares), "shares are whole numbers")
            )
        if bucket.tokens is not None:
            losses.append(
                Loss(
                    "scheduler.tokens",
                    str(bucket.tokens),
                    "full quota at each period",
                    "CFS has no initial token count",
                )
            )
        if bucket.tokens_min is not None:
            losses.append(
                Loss(
                    "scheduler.tokens_min",
                    str(bucket.tokens_min),
                    f"release at the next period ({period}us)",
                    "CFS has no hold hysteresis",
                )
            )
        limits = CpuLimits(period_us=period, quota_us=quota, burst_us=burst, shares=shares)
    if cputune is not None:
        limits = _apply_cputune(limits, cputune, guaranteed, losses, bucket is not None)
    return CpuMapping(
        limits=limits,
        losses=tuple(losses),
        guaranteed=guaranteed,
        idle_rate=idle_rate,
        ncpus=covered,
    )


def _apply_cputune(
    limits: CpuLimits,
    tune: CpuTune,
    rate: Fraction | None,
    losses: list[Loss],
    have_bucket: bool,
) -> CpuLimits:
    """Overlay explicit ``<cputune>`` values; the bucket keeps its rate where cputune is silent."""
    shares = limits.shares
    if tune.shares is not None:
        if have_bucket and tune.shares != limits.shares:
            losses.append(
                Loss(
                    "scheduler.fill_rate",
                    f"weight {limits.shares}",
                    f"cputune.shares {tune.shares}",
                    "explicit cputune.shares wins over the weight derived from the fill rate",
                )
            )
        shares = tune.shares
    period = limits.period_us
    quota = limits.quota_us
    burst = limits.burst_us
    if tune.period is not None:
        p = min(max(tune.period, PERIOD_MIN_US), PERIOD_MAX_US)
        if p != tune.period:
            losses.append(
                Loss("cputune.period", str(tune.period), str(p), "period range 1000..1000000 us")
            )
        period = p
        if rate is not None and tune.quota is None:
            _, quota = _quota_for(Fraction(period), rate, losses, "scheduler")
            burst = min(burst, quota)
    if tune.quota is not None:
        if have_bucket:
            losses.append(
                Loss(
                    "scheduler.fill_rate",
                    f"quota {quota}",
                    f"cputune.quota {tune.quota}",
                    "explicit cputune.quota wins over the quota derived from the fill rate",
                )
            )
        if tune.quota <= 0:
            quota = None
            burst = 0
        else:
            q = min(max(tune.quota, QUOTA_MIN_US), QUOTA_MAX_US)
            if q != tune.quota:
                losses.append(
                    Loss("cputune.quota", str(tune.quota), str(q), "quota range 1000..2^44-1 us")
                )
            quota = q
            burst = min(burst, quota)
    if quota is not None and burst > QUOTA_MAX_US - quota:
        # the kernel refuses quota + burst above 2^44-1 (an explicit quota near the top)
        losses.append(
            Loss(
                "scheduler.tokens_max",
                f"{burst}us burst",
                f"{QUOTA_MAX_US - quota}us",
                "quota + burst may not exceed 2^44-1 us",
            )
        )
        burst = QUOTA_MAX_US - quota
    return CpuLimits(period_us=period, quota_us=quota, burst_us=burst, shares=shares)


def map_domain(domain: Domain, *, hz: int = DEFAULT_HZ, host_cpus: int = 1) -> CpuMapping:
    """Map a domain's ``<scheduler>`` and ``<cputune>``; see :func:`map_scheduler`."""
    return map_scheduler(
        domain.scheduler, domain.cputune, hz=hz, ncpus=cpus_covered(domain, host_cpus)
    )


def weight_from_shares(shares: int) -> int:
    """systemd's conversion of v1 shares to a v2 weight, rounded to nearest."""
    return min(
        max(_round(Fraction(shares * WEIGHT_DEFAULT, SHARES_DEFAULT)), WEIGHT_MIN), WEIGHT_MAX
    )


def shares_from_weight(weight: int) -> int:
    """The inverse of :func:`weight_from_shares` (exact only for multiples of 256/25)."""
    return _round(Fraction(weight * SHARES_DEFAULT, WEIGHT_DEFAULT))


def v1_files(limits: CpuLimits) -> tuple[dict[str, str], tuple[Loss, ...]]:
    """The cgroup v1 ``cpu`` controller files for ``limits``, and the range losses of v1."""
    losses: list[Loss] = []
    shares = min(max(limits.shares, SHARES_MIN), SHARES_MAX)
    if shares != limits.shares:
        losses.append(Loss("cpu.shares", str(limits.shares), str(shares), "range 2..262144"))
    files = {
        "cpu.cfs_period_us": str(limits.period_us),
        "cpu.cfs_quota_us": "-1" if limits.quota_us is None else str(limits.quota_us),
        "cpu.cfs_burst_us": str(limits.burst_us),
        "cpu.shares": str(shares),
    }
    return files, tuple(losses)


def v2_files(limits: CpuLimits) -> tuple[dict[str, str], tuple[Loss, ...]]:
    """The cgroup v2 ``cpu`` controller files for ``limits``, and the losses of v2's weight scale.

    ``cpu.weight.nice`` is a second view of ``cpu.weight`` in the kernel: writing both would let
    the last one win, so only ``cpu.weight`` is written (``prio_bias`` is already folded in).
    """
    losses: list[Loss] = []
    weight = weight_from_shares(limits.shares)
    if shares_from_weight(weight) != limits.shares:
        losses.append(
            Loss(
                "cpu.weight",
                f"shares {limits.shares}",
                f"weight {weight} (= shares {shares_from_weight(weight)})",
                "cpu.weight 1..10000 is coarser than cpu.shares",
            )
        )
    quota = "max" if limits.quota_us is None else str(limits.quota_us)
    files = {
        "cpu.max": f"{quota} {limits.period_us}",
        "cpu.max.burst": str(limits.burst_us),
        "cpu.weight": str(weight),
    }
    return files, tuple(losses)


def cgroup_files(
    limits: CpuLimits, version: CgroupVersion
) -> tuple[dict[str, str], tuple[Loss, ...]]:
    """Dispatch to :func:`v1_files` or :func:`v2_files`."""
    return v1_files(limits) if version == 1 else v2_files(limits)


def limits_from_v1(files: Mapping[str, str]) -> CpuLimits:
    """Read back :class:`CpuLimits` from v1 file contents (as :func:`v1_files` writes them)."""
    quota = int(files["cpu.cfs_quota_us"])
    return CpuLimits(
        period_us=int(files["cpu.cfs_period_us"]),
        quota_us=None if quota < 0 else quota,
        burst_us=int(files.get("cpu.cfs_burst_us", "0")),
        shares=int(files["cpu.shares"]),
    )


def limits_from_v2(files: Mapping[str, str]) -> CpuLimits:
    """Read back :class:`CpuLimits` from v2 file contents (as :func:`v2_files` writes them)."""
    quota_s, period_s = files["cpu.max"].split()
    return CpuLimits(
        period_us=int(period_s),
        quota_us=None if quota_s == "max" else int(quota_s),
        burst_us=int(files.get("cpu.max.burst", "0")),
        shares=shares_from_weight(int(files["cpu.weight"])),
    )


def bucket_from_limits(
    limits: CpuLimits, *, hz: int = DEFAULT_HZ, ncpus: int = 1
) -> TokenBucket | None:
    """The token bucket that maps onto ``limits`` exactly, or None if no whole-tick bucket does.

    Used to show applied values in bucket terms and to check that lossless cases round-trip.
    """
    if limits.quota_us is None:
        return None
    t = tick_us(hz)
    interval = Fraction(limits.period_us) / t
    fill = Fraction(limits.quota_us) / (t * ncpus)
    tmax = Fraction(limits.quota_us + limits.burst_us) / (t * ncpus)
    if any(x.denominator != 1 for x in (interval, fill, tmax)):
        return None
    return TokenBucket(
        fill_rate=int(fill),
        interval=int(interval),
        tokens_max=int(tmax) if limits.burst_us else None,
    )
