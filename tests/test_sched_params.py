"""schedinfo parameters: parsing k=v with clear errors, model updates, TUNABLE change sets."""

from __future__ import annotations

import pytest

from supervisor.model import CpuTune, Domain, TokenBucket
from supervisor.sched import params as p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu_shares=512", ("cpu_shares", 512)),
        ("vcpu_quota=-5", ("vcpu_quota", -1)),
        ("vcpu_period= 20000", ("vcpu_period", 20000)),
        ("idle_time=on", ("idle_time", True)),
        ("prio_bias=-3", ("prio_bias", -3)),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, p.Value]) -> None:
    """Valid k=v pairs parse to the parameter's typed value (negative quota = unlimited)."""
    assert expected == p.parse_assignment(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cpu_shares=1", "cpu_shares=1 is out of range; allowed 2..262144"),
        ("vcpu_period=999", "allowed 1000..1000000"),
        ("vcpu_quota=10", "a negative number (unlimited) or 1000..17592186044415"),
        ("fill_rate=x", "fill_rate='x': not an integer; allowed 1..2147483647"),
        ("idle_time=maybe", "idle_time='maybe': expected yes/no"),
        ("bogus=1", "unknown scheduler parameter 'bogus'"),
        ("cpu_shares", "expected NAME=VALUE"),
    ],
)
def test_parse_errors_name_parameter_and_range(text: str, fragment: str) -> None:
    """A bad k=v raises InvalidParameter naming the parameter and the allowed values."""
    with pytest.raises(p.InvalidParameter) as info:
        p.parse_assignment(text)
    assert True is (fragment in str(info.value)), str(info.value)


def test_duplicate_parameter_is_an_error() -> None:
    """Giving a parameter twice is refused instead of silently keeping the last value."""
    with pytest.raises(p.InvalidParameter, match="given twice"):
        p.parse_assignments(["fill_rate=1", "fill_rate=2"])


def test_apply_reports_only_real_changes() -> None:
    """Only parameters whose value changes appear in the TUNABLE set, under libvirt's keys."""
    domain = Domain(
        name="g",
        cputune=CpuTune(shares=1024),
        scheduler=TokenBucket(fill_rate=1, interval=4),
    )
    values = p.parse_assignments(["cpu_shares=1024", "vcpu_quota=-1", "fill_rate=3"])
    new, changed = p.apply_to_domain(domain, values)
    assert (
        {"cputune.vcpu_quota": -1, "scheduler.fill_rate": 3},
        CpuTune(shares=1024, quota=-1),
        TokenBucket(fill_rate=3, interval=4),
    ) == (dict(changed), new.cputune, new.scheduler)


def test_apply_creates_missing_sections() -> None:
    """Setting a bucket parameter on a domain without <scheduler> creates one."""
    new, changed = p.apply_to_domain(Domain(name="g"), {"fill_rate2": 3, "idle_time": True})
    assert (
        TokenBucket(fill_rate2=3, idle_time=True),
        {"scheduler.fill_rate2", "scheduler.idle_time"},
    ) == (
        new.scheduler,
        set(changed),
    )


def test_schedinfo_shows_libvirt_names_bucket_and_losses() -> None:
    """schedinfo lists cpu_shares/vcpu_period/vcpu_quota, the bucket, and every loss."""
    domain = Domain(name="g", scheduler=TokenBucket(fill_rate=1, interval=4, tokens_min=5))
    info = p.schedinfo(domain, hz=250, host_cpus=1)
    text = info.format()
    assert (
        ("256", "16000", "4000", "1", "5"),
        True,
    ) == (
        tuple(
            dict(info.params)[k]
            for k in ("cpu_shares", "vcpu_period", "vcpu_quota", "fill_rate", "tokens_min")
        ),
        "lossy: scheduler.tokens_min" in text and text.startswith("Scheduler"),
    )
