"""The pure token-bucket / cputune mapping: kernel ranges, monotonicity, round trips, losses."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from supervisor.model import CpuBucket, CpuTune, Domain, TokenBucket
from supervisor.sched import mapping as m

HZS = st.sampled_from([100, 250, 300, 1000])

buckets = st.builds(
    TokenBucket,
    fill_rate=st.none() | st.integers(1, 100_000),
    interval=st.none() | st.integers(1, 1_000_000),
    tokens=st.none() | st.integers(0, 10_000),
    tokens_min=st.none() | st.integers(-10, 10_000),
    tokens_max=st.none() | st.integers(-10, 100_000),
    prio_bias=st.none() | st.integers(-20, 19),
    idle_time=st.none() | st.booleans(),
    fill_rate2=st.none() | st.integers(0, 1000),
    interval2=st.none() | st.integers(1, 1000),
    cpus=st.lists(
        st.builds(
            CpuBucket,
            cpu=st.integers(0, 63),
            fill_rate=st.none() | st.integers(1, 100),
            interval=st.none() | st.integers(1, 1000),
        ),
        max_size=3,
    ).map(tuple),
)
cputunes = st.none() | st.builds(
    CpuTune,
    shares=st.none() | st.integers(0, 10**6),
    period=st.none() | st.integers(0, 2 * 10**6),
    quota=st.none() | st.integers(-5, 2**45),
)


def _in_v1_ranges(files: dict[str, str]) -> bool:
    period = int(files["cpu.cfs_period_us"])
    quota = int(files["cpu.cfs_quota_us"])
    burst = int(files["cpu.cfs_burst_us"])
    shares = int(files["cpu.shares"])
    quota_ok = quota == -1 or (m.QUOTA_MIN_US <= quota <= m.QUOTA_MAX_US)
    burst_ok = (
        burst == 0 if quota == -1 else 0 <= burst <= quota and quota + burst <= m.QUOTA_MAX_US
    )
    return (
        m.PERIOD_MIN_US <= period <= m.PERIOD_MAX_US
        and quota_ok
        and burst_ok
        and m.SHARES_MIN <= shares <= m.SHARES_MAX
    )


def _in_v2_ranges(files: dict[str, str]) -> bool:
    quota_s, period_s = files["cpu.max"].split()
    quota = -1 if quota_s == "max" else int(quota_s)
    return (
        _in_v1_ranges(
            {
                "cpu.cfs_period_us": period_s,
                "cpu.cfs_quota_us": str(quota),
                "cpu.cfs_burst_us": files["cpu.max.burst"],
                "cpu.shares": "1024",
            }
        )
        and m.WEIGHT_MIN <= int(files["cpu.weight"]) <= m.WEIGHT_MAX
    )


@given(buckets | st.none(), cputunes, HZS, st.integers(1, 16))
def test_files_always_inside_kernel_ranges(
    bucket: TokenBucket | None, tune: CpuTune | None, hz: int, ncpus: int
) -> None:
    """Whatever the input, every v1 and v2 value written is inside the kernel's range."""
    limits = m.map_scheduler(bucket, tune, hz=hz, ncpus=ncpus).limits
    assert (True, True) == (
        _in_v1_ranges(m.v1_files(limits)[0]),
        _in_v2_ranges(m.v2_files(limits)[0]),
    )


def _rate(limits: m.CpuLimits) -> Fraction:
    assert limits.quota_us is not None
    return Fraction(limits.quota_us, limits.period_us)


@given(
    st.integers(1, 10_000),
    st.integers(1, 10_000),
    st.integers(1, 100_000),
    HZS,
    st.integers(1, 8),
    st.none() | st.integers(-20, 19),
)
def test_monotonic_in_fill_rate(
    a: int, b: int, interval: int, hz: int, ncpus: int, bias: int | None
) -> None:
    """A larger fill rate never yields a smaller applied rate (quota/period) or weight."""
    lo, hi = sorted((a, b))
    la = m.map_scheduler(
        TokenBucket(fill_rate=lo, interval=interval, prio_bias=bias), None, hz=hz, ncpus=ncpus
    ).limits
    lb = m.map_scheduler(
        TokenBucket(fill_rate=hi, interval=interval, prio_bias=bias), None, hz=hz, ncpus=ncpus
    ).limits
    assert (True, True) == (_rate(la) <= _rate(lb), la.shares <= lb.shares)


@given(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), st.integers(1, 2000), st.data())
def test_lossless_bucket_round_trips(interval: int, fill: int, data: st.DataObject) -> None:
    """A bucket in CFS's exact domain maps without losses and maps back to itself."""
    tmax = data.draw(st.none() | st.integers(fill, 2 * fill))
    bucket = TokenBucket(fill_rate=fill, interval=interval, tokens_max=tmax)
    mapped = m.map_scheduler(bucket, None, hz=250, ncpus=1)
    back = m.bucket_from_limits(mapped.limits, hz=250, ncpus=1)
    expected_tmax = None if tmax in (None, fill) else tmax
    assert ((), TokenBucket(fill_rate=fill, interval=interval, tokens_max=expected_tmax)) == (
        mapped.losses,
        back,
    )


@given(st.integers(1, 100_000), st.integers(1, 1_000_000), st.none() | st.integers(-5, 10**6), HZS)
def test_lossy_bucket_reports_loss(fill: int, interval: int, tmax: int | None, hz: int) -> None:
    """When the applied limits do not map back to the bucket asked for, a loss is reported."""
    bucket = TokenBucket(fill_rate=fill, interval=interval, tokens_max=tmax)
    mapped = m.map_scheduler(bucket, None, hz=hz, ncpus=1)
    back = m.bucket_from_limits(mapped.limits, hz=hz, ncpus=1)
    exact = back is not None and (back.fill_rate, back.interval) == (fill, interval)
    exact = exact and back is not None and back.tokens_max in (None if tmax == fill else tmax, None)
    if tmax is not None and tmax != fill:
        exact = exact and back is not None and back.tokens_max == tmax
    assert exact or mapped.losses, (bucket, mapped)


@given(
    st.integers(m.SHARES_MIN, m.SHARES_MAX),
    st.integers(m.PERIOD_MIN_US, m.PERIOD_MAX_US),
    st.just(-1) | st.integers(m.QUOTA_MIN_US, m.QUOTA_MAX_US),
)
def test_cputune_round_trips_through_v1(shares: int, period: int, quota: int) -> None:
    """In-range cputune values are applied as given, without losses, and read back from v1."""
    mapped = m.map_scheduler(None, CpuTune(shares=shares, period=period, quota=quota))
    files, losses = m.v1_files(mapped.limits)
    back = m.limits_from_v1(files)
    assert ((), (), shares, period, None if quota < 0 else quota) == (
        mapped.losses,
        losses,
        back.shares,
        back.period_us,
        back.quota_us,
    )


@given(st.integers(m.SHARES_MIN, m.SHARES_MAX))
def test_v2_weight_round_trip_or_loss(shares: int) -> None:
    """v2's weight reproduces the shares exactly, or the coarser weight is reported as a loss."""
    limits = m.CpuLimits(shares=shares)
    files, losses = m.v2_files(limits)
    back = m.limits_from_v2(files)
    assert (back == limits) != bool(losses), (limits, back, losses)


def test_default_bucket_at_250_hz() -> None:
    """VServer's default 1 token per 4 ticks is a quarter CPU: 4 ms every 16 ms, weight 256."""
    mapped = m.map_scheduler(TokenBucket(), None, hz=250, ncpus=1)
    assert (m.CpuLimits(period_us=16_000, quota_us=4_000, burst_us=0, shares=256), ()) == (
        mapped.limits,
        mapped.losses,
    )


def test_fill_rate_ratio_becomes_share_ratio() -> None:
    """Fill rates 1:3 give weights 1:3 in both cgroup versions."""
    a = m.map_scheduler(TokenBucket(fill_rate=1, interval=2), None).limits
    b = m.map_scheduler(TokenBucket(fill_rate=3, interval=2), None).limits
    assert ((512, 1536), ("50", "150")) == (
        (a.shares, b.shares),
        (m.v2_files(a)[0]["cpu.weight"], m.v2_files(b)[0]["cpu.weight"]),
    )


def test_tiny_rate_lengthens_period_instead_of_raising_rate() -> None:
    """1 token per 1000 ticks keeps its rate: the period grows to 1 s, the quota stays >= 1 ms."""
    mapped = m.map_scheduler(TokenBucket(fill_rate=1, interval=1000), None, hz=250)
    assert (m.PERIOD_MAX_US, 1000, ["scheduler.period", "scheduler.shares"]) == (
        mapped.limits.period_us,
        mapped.limits.quota_us,
        [x.parameter for x in mapped.losses],
    )


def test_unrepresentable_bucket_features_are_reported() -> None:
    """tokens, tokens_min, an oversize tokens_max and prio_bias each produce a named loss."""
    bucket = TokenBucket(
        fill_rate=1, interval=4, tokens=10, tokens_min=5, tokens_max=125, prio_bias=2
    )
    mapped = m.map_scheduler(bucket, None, hz=250)
    assert {
        "scheduler.tokens",
        "scheduler.tokens_min",
        "scheduler.tokens_max",
        "scheduler.prio_bias",
    } == {x.parameter for x in mapped.losses}


def test_cputune_overrides_bucket_and_says_so() -> None:
    """Explicit cputune shares/quota win over the bucket's derived values, with a loss each."""
    mapped = m.map_scheduler(
        TokenBucket(fill_rate=1, interval=4), CpuTune(shares=2048, quota=8000), hz=250
    )
    assert (m.CpuLimits(period_us=16_000, quota_us=8_000, shares=2048), 2) == (
        mapped.limits,
        len([x for x in mapped.losses if x.parameter == "scheduler.fill_rate"]),
    )


def test_per_cpu_buckets_sum_and_report() -> None:
    """Per-CPU entries become one cap of their summed rate, reported as a loss."""
    bucket = TokenBucket(
        fill_rate=1, interval=4, cpus=(CpuBucket(cpu=0), CpuBucket(cpu=1, fill_rate=3))
    )
    mapped = m.map_domain(Domain(name="g", scheduler=bucket), hz=250, host_cpus=8)
    assert (16_000, 16_000, 2, True) == (
        mapped.limits.period_us,
        mapped.limits.quota_us,
        mapped.ncpus,
        any(x.parameter == "scheduler.cpu" for x in mapped.losses),
    )


def test_idle_pair_gives_idle_rate() -> None:
    """fill_rate2/interval2 become the idle rate the tuner may lend, only when enabled."""
    on = m.map_scheduler(TokenBucket(fill_rate2=3, interval2=4), None)
    off = m.map_scheduler(TokenBucket(fill_rate2=3, interval2=4, idle_time=False), None)
    assert (Fraction(3, 4), None) == (on.idle_rate, off.idle_rate)


def test_weight_conversion_systemd_rule() -> None:
    """Shares convert to weight as shares*100/1024, clamped to 1..10000."""
    assert [1, 100, 25, 10000] == [m.weight_from_shares(s) for s in (2, 1024, 256, 262144)]
