"""The cgroup CPU edge: v2 files on a fake tree, v1 on real cgroups, /proc/stat and cpu.stat."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.errors import RuntimeFailure
from supervisor.model import Domain, TokenBucket
from supervisor.sched import cgroupcpu as cc
from supervisor.sched.mapping import CpuLimits, map_scheduler

V1_CPU = Path("/sys/fs/cgroup/cpu")
V1_ACCT = Path("/sys/fs/cgroup/cpuacct")


@pytest.fixture
def fake_v2(tmp_path: Path) -> Path:
    """A directory that looks like a v2 cgroup with the cpu controller (kernel defaults)."""
    d = tmp_path / "guest"
    d.mkdir()
    defaults = {"cpu.max": "max 100000", "cpu.max.burst": "0", "cpu.weight": "100",
                "cpu.weight.nice": "0"}  # fmt: skip
    for name, value in defaults.items():
        (d / name).write_text(value + "\n")
    (d / "cpu.stat").write_text(
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 3\n"
        "throttled_usec 250\nnr_bursts 0\nburst_usec 0\n"
    )
    return d


def test_v2_write_then_read_back(fake_v2: Path) -> None:
    """Limits written to a v2 tree are the files' contents and read back unchanged."""
    limits = map_scheduler(TokenBucket(fill_rate=1, interval=4, tokens_max=2), None).limits
    losses = cc.write_limits(fake_v2, limits)
    assert (
        (),
        "4000 16000",
        "4000",
        "25",
        limits,
    ) == (
        losses,
        (fake_v2 / "cpu.max").read_text(),
        (fake_v2 / "cpu.max.burst").read_text(),
        (fake_v2 / "cpu.weight").read_text(),
        cc.read_limits(fake_v2),
    )


def test_apply_domain_writes_mapping_and_reports_file_losses(fake_v2: Path) -> None:
    """prepare's step writes the domain's mapped limits and returns v2's own losses too."""
    domain = Domain(name="g", scheduler=TokenBucket(fill_rate=1, interval=3))
    mapping, file_losses = cc.apply_domain(fake_v2, domain, hz=250, host_cpus=1)
    assert ("4000 12000", "33", ["cpu.weight"]) == (
        (fake_v2 / "cpu.max").read_text(),
        (fake_v2 / "cpu.weight").read_text(),
        [x.parameter for x in file_losses],
    )
    assert (341, 338) == (mapping.limits.shares, cc.read_limits(fake_v2).shares)


def test_v2_bandwidth_fast_path_keeps_burst_within_quota(fake_v2: Path) -> None:
    """The tuner's write changes quota and weight; the burst never exceeds the new quota."""
    cc.write_limits(fake_v2, CpuLimits(period_us=16000, quota_us=8000, burst_us=8000, shares=256))
    cc.write_bandwidth(fake_v2, 16000, 4000, shares=512)
    assert CpuLimits(period_us=16000, quota_us=4000, burst_us=4000, shares=512) == cc.read_limits(
        fake_v2
    )


def test_v2_cpu_stat(fake_v2: Path) -> None:
    """v2 cpu.stat's microsecond counters become the nanosecond CpuStat."""
    assert cc.CpuStat(usage_ns=1_500_000, nr_periods=7, nr_throttled=3, throttled_ns=250_000) == (
        cc.read_stat(cc.CpuPaths(cpu=fake_v2))
    )


def test_unknown_directory_is_a_runtime_failure(tmp_path: Path) -> None:
    """A directory without cpu controller files is refused with its path in the message."""
    with pytest.raises(RuntimeFailure, match=str(tmp_path)):
        cc.detect_version(tmp_path)


def test_parse_proc_stat_selects_cpus() -> None:
    """Idle (idle + iowait) and total ticks are summed over the chosen CPUs only."""
    text = (
        "cpu  30 0 30 200 10 0 0 0 0 0\n"
        "cpu0 10 0 10 100 5 0 0 0 0 0\n"
        "cpu1 20 0 20 100 5 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    assert cc.HostIdle(idle_s=1.05, total_s=1.45, ncpus=1) == cc.parse_proc_stat(text, [1], 100)


def test_read_config_hz(tmp_path: Path) -> None:
    """CONFIG_HZ is read from /boot/config-<release>; a missing file gives None."""
    (tmp_path / "config-x").write_text("CONFIG_HZ_250=y\nCONFIG_HZ=250\n")
    assert (250, None) == (
        cc.read_config_hz("x", boot=tmp_path),
        cc.read_config_hz("y", boot=tmp_path),
    )


@pytest.fixture
def v1_group(prefix: str) -> Iterator[cc.CpuPaths]:
    """A real v1 cpu + cpuacct cgroup pair, removed afterwards."""
    paths = cc.CpuPaths(cpu=V1_CPU / f"{prefix}-edge", cpuacct=V1_ACCT / f"{prefix}-edge")
    paths.cpu.mkdir()
    assert paths.cpuacct is not None
    paths.cpuacct.mkdir()
    try:
        yield paths
    finally:
        for d in (paths.cpu, paths.cpuacct):
            os.rmdir(d)


@pytest.mark.root
def test_v1_real_cgroup_write_read(v1_group: cc.CpuPaths) -> None:
    """The kernel accepts the mapped v1 values and reports them back; accounting starts at 0."""
    limits = map_scheduler(TokenBucket(fill_rate=1, interval=4, tokens_max=2), None).limits
    cc.write_limits(v1_group.cpu, limits)
    written = cc.read_limits(v1_group.cpu)
    cc.write_bandwidth(v1_group.cpu, 20000, 2000, shares=128)
    assert (
        limits,
        CpuLimits(period_us=20000, quota_us=2000, burst_us=2000, shares=128),
        0,
    ) == (written, cc.read_limits(v1_group.cpu), cc.read_stat(v1_group).usage_ns)


@pytest.mark.root
def test_v1_kernel_refusal_names_file(v1_group: cc.CpuPaths) -> None:
    """A value the kernel refuses surfaces as RuntimeFailure naming the file and value."""
    with pytest.raises(RuntimeFailure, match=r"cpu\.cfs_period_us"):
        cc._write(v1_group.cpu / "cpu.cfs_period_us", "10")


FRESH_CASES = [
    CpuLimits(),
    CpuLimits(shares=256),
    CpuLimits(quota_us=25000),
    CpuLimits(period_us=20000, quota_us=5000, burst_us=5000, shares=2048),
    CpuLimits(period_us=1000, quota_us=2000),
]


@pytest.mark.parametrize("limits", FRESH_CASES)
def test_v2_fresh_write_skips_defaults_and_reads_back(fake_v2: Path, limits: CpuLimits) -> None:
    """Into a fresh cgroup only non-default files are written, and it reads back as asked."""
    defaults = {f: (fake_v2 / f).read_text() for f in ("cpu.max", "cpu.weight", "cpu.max.burst")}
    for f in defaults:  # fresh mode never reads: a marker shows which files it wrote
        (fake_v2 / f).write_text("untouched\n")
    cc.write_limits(fake_v2, limits, 2, fresh=True)
    touched = {f for f in defaults if (fake_v2 / f).read_text() != "untouched\n"}
    for f in defaults.keys() - touched:
        (fake_v2 / f).write_text(defaults[f])
    expected = {
        f
        for f, differs in (
            ("cpu.max", limits.quota_us is not None or limits.period_us != 100000),
            ("cpu.weight", limits.shares != 1024),
            ("cpu.max.burst", limits.burst_us != 0),
        )
        if differs
    }
    assert (expected, limits) == (touched, cc.read_limits(fake_v2, 2))


@pytest.mark.root
@pytest.mark.parametrize("limits", FRESH_CASES)
def test_v1_fresh_write_equals_full_write(prefix: str, limits: CpuLimits) -> None:
    """On the real kernel, a fresh cgroup written with fresh=True ends up as a full write does."""
    made: list[Path] = []
    try:
        for name, fresh in (("full", False), ("fresh", True)):
            d = V1_CPU / f"{prefix}-{name}"
            d.mkdir()
            made.append(d)
            cc.write_limits(d, limits, 1, fresh=fresh)
        assert cc.read_limits(made[0], 1) == cc.read_limits(made[1], 1)
        assert limits == cc.read_limits(made[1], 1)
    finally:
        for d in made:
            os.rmdir(d)
