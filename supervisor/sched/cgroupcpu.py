"""Thin edge: the cgroup CPU files of one guest (v1 or v2), accounting, and host idle time.

Everything here is a plain file read or write; the decisions live in :mod:`.mapping` and
:mod:`.tuner`. OSErrors are translated into :class:`~supervisor.errors.RuntimeFailure` naming the
file and the value, because "Invalid argument" alone does not say which of four files refused.

On cgroup v1 the ``cpu`` and ``cpuacct`` controllers may be mounted separately (they are on the
project's machines), so a guest is addressed by :class:`CpuPaths` with both directories.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path

import attrs

from supervisor.errors import RuntimeFailure
from supervisor.model import Domain
from supervisor.sched.mapping import (
    DEFAULT_HZ,
    CgroupVersion,
    CpuLimits,
    CpuMapping,
    Loss,
    cgroup_files,
    limits_from_v1,
    limits_from_v2,
    map_domain,
)

V1_FILES = ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.cfs_burst_us", "cpu.shares")
V2_FILES = ("cpu.max", "cpu.max.burst", "cpu.weight")


@attrs.frozen
class CpuPaths:
    """Where one guest's CPU files are: the ``cpu`` directory, and v1's ``cpuacct`` if separate."""

    cpu: Path
    cpuacct: Path | None = None


@attrs.frozen
class CpuStat:
    """Cumulative accounting of one cgroup (all counters since the cgroup was created)."""

    usage_ns: int
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_ns: int = 0


@attrs.frozen
class HostIdle:
    """Cumulative idle and total CPU time of a set of CPUs, in seconds, from ``/proc/stat``."""

    idle_s: float
    total_s: float
    ncpus: int


def detect_version(cpu_dir: Path) -> CgroupVersion:
    """Which controller interface a directory offers (v2 has ``cpu.max``, v1 ``cfs_quota_us``)."""
    if (cpu_dir / "cpu.max").exists():
        return 2
    if (cpu_dir / "cpu.cfs_quota_us").exists():
        return 1
    raise RuntimeFailure(f"{cpu_dir}: no cpu controller files (cpu.max or cpu.cfs_quota_us)")


#: the files write_limits writes into a fresh cgroup, in order (burst last, see write_limits)
_WRITE_ORDER: dict[CgroupVersion, tuple[str, ...]] = {
    1: ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares", "cpu.cfs_burst_us"),
    2: ("cpu.max", "cpu.weight", "cpu.max.burst"),
}


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise RuntimeFailure(f"writing {value!r} to {path}: {e.strerror or e}") from e


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise RuntimeFailure(f"reading {path}: {e.strerror or e}") from e


def write_limits(
    cpu_dir: Path, limits: CpuLimits, version: CgroupVersion | None = None, *, fresh: bool = False
) -> tuple[Loss, ...]:
    """Apply ``limits`` to a cgroup; returns the per-version range losses of what was written.

    Order matters to the kernel: burst must stay within the quota at every step, so it is zeroed
    first and written last. A burst file that the kernel lacks (before 5.14) is skipped.
    ``fresh``: the cgroup was just made, so its files hold the kernel's defaults and only the
    values that differ are written (in the same order); most guests set no CPU limit at all,
    and each write is a file open on every start's path.
    """
    version = version or detect_version(cpu_dir)
    files, losses = cgroup_files(limits, version)
    if fresh:
        defaults, _ = cgroup_files(CpuLimits(), version)
        for name in _WRITE_ORDER[version]:
            # a burst file is last in the order, and missing before Linux 5.14
            if files[name] != defaults[name] and (cpu_dir / name).exists():
                _write(cpu_dir / name, files[name])
        return losses
    if version == 1:
        burst = cpu_dir / "cpu.cfs_burst_us"
        has_burst = burst.exists()
        if has_burst:
            _write(burst, "0")
        # v1 checks quota against the period being written: set the quota to unlimited first.
        _write(cpu_dir / "cpu.cfs_quota_us", "-1")
        _write(cpu_dir / "cpu.cfs_period_us", files["cpu.cfs_period_us"])
        _write(cpu_dir / "cpu.cfs_quota_us", files["cpu.cfs_quota_us"])
        _write(cpu_dir / "cpu.shares", files["cpu.shares"])
        if has_burst:
            _write(burst, files["cpu.cfs_burst_us"])
    else:
        burst = cpu_dir / "cpu.max.burst"
        has_burst = burst.exists()
        if has_burst:
            _write(burst, "0")
        _write(cpu_dir / "cpu.max", files["cpu.max"])
        _write(cpu_dir / "cpu.weight", files["cpu.weight"])
        if has_burst:
            _write(burst, files["cpu.max.burst"])
    return losses


def write_bandwidth(
    cpu_dir: Path,
    period_us: int,
    quota_us: int | None,
    shares: int | None = None,
    version: CgroupVersion | None = None,
) -> None:
    """The tuner's fast path: change quota (and optionally weight) without touching the burst."""
    version = version or detect_version(cpu_dir)
    current = read_limits(cpu_dir, version)
    limits = attrs.evolve(
        current,
        period_us=period_us,
        quota_us=quota_us,
        burst_us=0 if quota_us is None else min(current.burst_us, quota_us),
        shares=current.shares if shares is None else shares,
    )
    files, _ = cgroup_files(limits, version)
    # the kernel refuses a quota below the current burst: lower the burst first (never raised here)
    burst_name = "cpu.cfs_burst_us" if version == 1 else "cpu.max.burst"
    if limits.burst_us < current.burst_us:
        _write(cpu_dir / burst_name, str(limits.burst_us))
    if version == 1:
        _write(cpu_dir / "cpu.cfs_period_us", files["cpu.cfs_period_us"])
        _write(cpu_dir / "cpu.cfs_quota_us", files["cpu.cfs_quota_us"])
        if shares is not None:
            _write(cpu_dir / "cpu.shares", files["cpu.shares"])
    else:
        _write(cpu_dir / "cpu.max", files["cpu.max"])
        if shares is not None:
            _write(cpu_dir / "cpu.weight", files["cpu.weight"])


def read_limits(cpu_dir: Path, version: CgroupVersion | None = None) -> CpuLimits:
    """What the kernel currently applies, as :class:`CpuLimits`."""
    version = version or detect_version(cpu_dir)
    names = V1_FILES if version == 1 else V2_FILES
    files = {n: _read(cpu_dir / n) for n in names if (cpu_dir / n).exists()}
    try:
        return limits_from_v1(files) if version == 1 else limits_from_v2(files)
    except (KeyError, ValueError) as e:
        raise RuntimeFailure(f"{cpu_dir}: unreadable cpu controller files: {e}") from e


def _parse_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_stat(paths: CpuPaths) -> CpuStat:
    """Usage and throttling of a cgroup: v2 ``cpu.stat``; v1 ``cpu.stat`` + ``cpuacct.usage``."""
    stat = _parse_keyed(_read(paths.cpu / "cpu.stat"))
    if "usage_usec" in stat:
        return CpuStat(
            usage_ns=stat["usage_usec"] * 1000,
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            throttled_ns=stat.get("throttled_usec", 0) * 1000,
        )
    acct = paths.cpuacct or paths.cpu
    usage = _read(acct / "cpuacct.usage")
    return CpuStat(
        usage_ns=int(usage),
        nr_periods=stat.get("nr_periods", 0),
        nr_throttled=stat.get("nr_throttled", 0),
        throttled_ns=stat.get("throttled_time", 0),
    )


def parse_proc_stat(text: str, cpus: Iterable[int] | None, clk_tck: int) -> HostIdle:
    """Idle (idle + iowait) and total time of the chosen CPUs (None: all) from ``/proc/stat``."""
    wanted = None if cpus is None else {f"cpu{c}" for c in cpus}
    idle = total = 0
    n = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if wanted is not None and fields[0] not in wanted:
            continue
        values = [int(v) for v in fields[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        idle += values[3] + (values[4] if len(values) > 4 else 0)
        total += sum(values[:8])
        n += 1
    if n == 0:
        raise RuntimeFailure(f"/proc/stat has none of the CPUs {sorted(wanted or ())}")
    return HostIdle(idle_s=idle / clk_tck, total_s=total / clk_tck, ncpus=n)


def read_host_idle(cpus: Iterable[int] | None = None, proc_stat: str = "/proc/stat") -> HostIdle:
    """Host idle time of a CPU set: the tuner lends only what is idle where the guests can run."""
    return parse_proc_stat(_read(Path(proc_stat)), cpus, os.sysconf("SC_CLK_TCK"))


def read_config_hz(release: str | None = None, boot: Path = Path("/boot")) -> int | None:
    """CONFIG_HZ of the running kernel from ``/boot/config-<release>``, None if unknown."""
    release = release or platform.release()
    try:
        text = (boot / f"config-{release}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CONFIG_HZ="):
            return int(line.split("=", 1)[1])
    return None


def apply_domain(
    cpu_dir: Path,
    domain: Domain,
    *,
    hz: int = DEFAULT_HZ,
    host_cpus: int = 1,
    version: CgroupVersion | None = None,
    fresh: bool = False,
) -> tuple[CpuMapping, tuple[Loss, ...]]:
    """The ``prepare`` step: map a domain's CPU settings and write them to its cgroup.

    Returns the mapping (with its losses) and the per-version losses of the files written, so
    the caller can report everything that could not be applied as asked.
    """
    mapping = map_domain(domain, hz=hz, host_cpus=host_cpus)
    return mapping, write_limits(cpu_dir, mapping.limits, version, fresh=fresh)
