"""The scheduler subsystem on the bus: limits in prepare, live schedinfo changes, TUNABLE events.

Guests are real v1 cgroups named with the test's prefix (made with ``GuestCgroup``, removed in the
fixture's finally); the hooks run through a real :class:`~supervisor.bus.Bus`. Expected file
values are written out as numbers (HZ 250: one tick is 4000 us), not recomputed by the mapping.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from supervisor.bus import Bus
from supervisor.errors import InvalidOperation
from supervisor.events import Event
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout
from supervisor.hooks import GuestContext
from supervisor.model import CpuTune, Domain, TokenBucket
from supervisor.sched import cgroupcpu as cc
from supervisor.sched.params import InvalidParameter
from supervisor.sched.subsystem import HOOK_ORDER, SchedSubsystem, cpu_paths, resolve_flags
from supervisor.sched.tuner import Sample, cgroup_sampler

BUSY = ["/bin/busybox", "sh", "-c", "while :; do :; done"]
QUARTER = TokenBucket(fill_rate=1, interval=4)
LENDER = TokenBucket(fill_rate=1, interval=4, fill_rate2=3, interval2=4)


@pytest.mark.parametrize(
    ("flags", "running", "expected"),
    [
        ((False, False), True, (True, False)),
        ((False, False), False, (False, True)),
        ((True, False), False, (True, False)),
        ((False, True), True, (False, True)),
        ((True, True), True, (True, True)),
    ],
)
def test_resolve_flags_follows_libvirt(
    flags: tuple[bool, bool], running: bool, expected: tuple[bool, bool]
) -> None:
    """No flag means live for a running guest and config otherwise; given flags are kept."""
    assert expected == resolve_flags(*flags, running=running)


def test_schedinfo_config_view_without_a_cgroup() -> None:
    """A guest that does not run shows the values the mapping would apply, and every loss."""
    sub = SchedSubsystem(bus=Bus(), layout=detect_layout(), hz=250, host_cpus=2)
    domain = Domain(name="g", vcpu=1, scheduler=TokenBucket(fill_rate=1, interval=4, tokens_min=5))
    info = sub.schedinfo(domain, None)
    losses = info["losses"]
    assert isinstance(losses, list)
    assert (
        ("posix", "config", 256, 16000, 4000, 1, 4, 5, 1, 250),
        ["scheduler.tokens_min"],
        False,
    ) == (
        tuple(
            info[k]
            for k in (
                "scheduler",
                "state",
                "cpu_shares",
                "vcpu_period",
                "vcpu_quota",
                "fill_rate",
                "interval",
                "tokens_min",
                "cpus",
                "hz",
            )
        ),
        [x["parameter"] for x in losses],
        "accounting" in info,
    )


# --------------------------------------------------------------------------- real cgroups


@pytest.fixture
def layout() -> CgroupLayout:
    """The machine's cgroup layout (v1 cpu and cpuacct here)."""
    return detect_layout()


@pytest.fixture
async def guests(
    prefix: str, layout: CgroupLayout, tmp_path: Path
) -> AsyncIterator[Callable[[Domain], GuestContext]]:
    """Makes a guest context with a real cgroup; kills and removes every cgroup afterwards."""
    made: list[GuestCgroup] = []

    def make(domain: Domain) -> GuestContext:
        cg = GuestCgroup(layout, prefix, domain.name)
        made.append(cg)
        cg.create()
        return GuestContext(domain, cg, prefix, tmp_path)

    try:
        yield make
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            for cg in made:
                await cg.kill_all()
                await cg.remove()


@contextlib.asynccontextmanager
async def running(sub: SchedSubsystem) -> AsyncIterator[SchedSubsystem]:
    """The subsystem's task in a nursery, cancelled on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sub.run)
        try:
            yield sub
        finally:
            nursery.cancel_scope.cancel()


def real_cgroup(ctx: GuestContext) -> GuestCgroup:
    """The guest's cgroup: a real one in these tests (the context's type admits fakes)."""
    assert isinstance(ctx.cgroup, GuestCgroup)
    return ctx.cgroup


def cpu_files(ctx: GuestContext) -> tuple[str, str, str]:
    """(cfs_period_us, cfs_quota_us, shares) as the kernel reports them."""
    paths = cpu_paths(real_cgroup(ctx))
    assert paths is not None
    return tuple(  # type: ignore[return-value]
        (paths.cpu / f).read_text().strip()
        for f in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares")
    )


def drain(sub: Any) -> list[Event]:
    """Every event buffered in a subscription right now."""
    out: list[Event] = []
    while True:
        try:
            item = sub.receive_nowait()
        except trio.WouldBlock:
            return out
        assert isinstance(item, Event)
        out.append(item)


@pytest.mark.root
async def test_prepare_applies_token_bucket(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """A 1-per-4-ticks bucket on one CPU becomes a 4000/16000 us quota and weight 256 in prepare."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    ctx = guests(Domain(name="q", vcpu=1, scheduler=QUARTER))
    with trio.fail_after(10):
        async with running(sub):
            hooks = [(h.name, h.order) for h in bus.statistics().hooks]
            await bus.run_prepare(ctx)
            files = cpu_files(ctx)
            assert ctx.records.sched is not None
            record = json.loads(json.dumps(ctx.records.sched.to_json()))
            await bus.run_release(ctx)
            after_release = (sub.statistics()["guests"], ctx.records.sched is not None)
        hooks_after = [h.name for h in bus.statistics().hooks]
    assert (
        [("sched", HOOK_ORDER)],
        ("16000", "4000", "256"),
        {"period_us": 16000, "quota_us": 4000, "burst_us": 0, "shares": 256},
        [],
        (0, False),
        [],
    ) == (hooks, files, record["applied"], record["losses"], after_release, hooks_after)


@pytest.mark.root
async def test_prepare_applies_cputune(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """<cputune> shares/period/quota are written to the cgroup as given."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    ctx = guests(Domain(name="t", cputune=CpuTune(shares=512, period=50000, quota=25000)))
    with trio.fail_after(10):
        async with running(sub):
            await bus.run_prepare(ctx)
            files = cpu_files(ctx)
            await bus.run_release(ctx)
    assert ("50000", "25000", "512") == files


@pytest.mark.root
async def test_set_schedinfo_live_writes_and_publishes_one_tunable(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """A live set rewrites the cgroup and publishes exactly one TUNABLE with the changed keys."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    domain = Domain(name="l", vcpu=1, scheduler=QUARTER)
    ctx = guests(domain)
    with trio.fail_after(10):
        async with running(sub):
            await bus.run_prepare(ctx)
            async with bus.subscribe("t", kinds=["domain"]) as events:
                new, info = await sub.set_schedinfo(
                    domain,
                    real_cgroup(ctx),
                    {"vcpu_period": "20000", "fill_rate": "2"},
                    live=True,
                    config=False,
                )
                published = drain(events)
            files = cpu_files(ctx)
            assert ctx.records.sched is not None
            record = ctx.records.sched.applied
            await bus.run_release(ctx)
    assert (
        ("20000", "10000", "512"),
        [("l", "TUNABLE")],
        {
            "cputune.vcpu_period": 20000,
            "cputune.vcpu_quota": 10000,
            "cputune.shares": 512,
            "scheduler.fill_rate": 2,
        },
        (CpuTune(period=20000), TokenBucket(fill_rate=2, interval=4)),
        ("live", 512, 20000, 10000),
        {"period_us": 20000, "quota_us": 10000, "burst_us": 0, "shares": 512},
    ) == (
        files,
        [(e.name, e.type) for e in published],
        dict(published[0].data),
        (new.cputune, new.scheduler),
        (info["state"], info["cpu_shares"], info["vcpu_period"], info["vcpu_quota"]),
        record,
    )


@pytest.mark.root
async def test_bad_parameter_changes_nothing(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """An out-of-range value names the parameter and range; no file changes, no event."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    domain = Domain(name="b", vcpu=1, scheduler=QUARTER)
    ctx = guests(domain)
    with trio.fail_after(10):
        async with running(sub):
            await bus.run_prepare(ctx)
            before = cpu_files(ctx)
            async with bus.subscribe("t", kinds=["domain"]) as events:
                with pytest.raises(InvalidParameter) as bad:
                    await sub.set_schedinfo(
                        domain,
                        real_cgroup(ctx),
                        {"cpu_shares": "4096", "interval": "0"},
                        live=True,
                        config=True,
                    )
                with pytest.raises(InvalidOperation, match="not running"):
                    await sub.set_schedinfo(
                        domain, None, {"cpu_shares": "4096"}, live=True, config=False
                    )
                published = drain(events)
            after = cpu_files(ctx)
            await bus.run_release(ctx)
    assert (True, True, before, []) == (
        "interval=0" in str(bad.value),
        "1..2147483647" in str(bad.value),
        after,
        published,
    )


@pytest.mark.root
async def test_config_only_set_leaves_the_running_guest_alone(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """config=True, live=False returns the new domain but writes no file and publishes nothing."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    domain = Domain(name="c", vcpu=1, scheduler=QUARTER)
    ctx = guests(domain)
    with trio.fail_after(10):
        async with running(sub):
            await bus.run_prepare(ctx)
            async with bus.subscribe("t", kinds=["domain"]) as events:
                new, info = await sub.set_schedinfo(
                    domain, real_cgroup(ctx), {"cpu_shares": "300"}, live=False, config=True
                )
                published = drain(events)
            files = cpu_files(ctx)
            await bus.run_release(ctx)
    assert (CpuTune(shares=300), ("config", 300), ("16000", "4000", "256"), []) == (
        new.cputune,
        (info["state"], info["cpu_shares"]),
        files,
        published,
    )


@pytest.mark.root
async def test_schedinfo_live_view_has_losses_and_accounting(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """A running lossy bucket shows read-back values, its losses and cpu.stat/cpuacct counters."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem.open(bus, layout, hz=250)
    domain = Domain(
        name="s", vcpu=1, scheduler=TokenBucket(fill_rate=1, interval=4, tokens_min=5, tokens=7)
    )
    ctx = guests(domain)
    with trio.fail_after(10):
        async with running(sub):
            await bus.run_prepare(ctx)
            info = sub.schedinfo(domain, real_cgroup(ctx))
            assert ctx.records.sched is not None
            recorded = [x["parameter"] for x in ctx.records.sched.losses]
            await bus.run_release(ctx)
    losses = info["losses"]
    accounting = info["accounting"]
    assert isinstance(losses, list)
    assert isinstance(accounting, dict)
    assert (
        ("posix", "live", 1, 256, 16000, 4000, 5, 7),
        ["scheduler.tokens", "scheduler.tokens_min"],
        ["scheduler.tokens", "scheduler.tokens_min"],
        {"usage_ns", "nr_periods", "nr_throttled", "throttled_ns"},
    ) == (
        tuple(
            info[k]
            for k in (
                "scheduler",
                "state",
                "cgroup_version",
                "cpu_shares",
                "vcpu_period",
                "vcpu_quota",
                "tokens_min",
                "tokens",
            )
        ),
        [x["parameter"] for x in losses],
        recorded,
        set(accounting),
    )


# --------------------------------------------------------------------------- the tuner


def throttled_sampler(guest: str) -> Callable[[list[str]], Any]:
    """A sampler for an idle CPU (90% idle) and a guest throttled in every period."""
    step = 0

    async def sample(names: list[str]) -> Sample:
        nonlocal step
        step += 1
        stat = cc.CpuStat(usage_ns=step * 50_000_000, nr_periods=step * 10, nr_throttled=step * 10)
        return Sample(
            now=trio.current_time(),
            host=cc.HostIdle(idle_s=step * 0.9, total_s=step * 1.0, ncpus=1),
            guests={n: stat for n in names if n == guest},
        )

    return sample


@pytest.mark.root
async def test_tuner_lends_and_publishes_tunable_with_reason(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """With an idle host and a throttled guest the tuner raises its real quota and says why.

    The host and guest counters are synthetic; the quota is written to the real cgroup.
    """
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem(
        bus=bus,
        layout=layout,
        hz=250,
        host_cpus=1,
        tuner_period=0.02,
        sampler=throttled_sampler("lend"),
    )
    ctx = guests(Domain(name="lend", vcpu=1, scheduler=LENDER))
    with trio.fail_after(10):
        async with running(sub):
            idle_before = sub.statistics()["tuner_active"]
            async with bus.subscribe("t", kinds=["domain"]) as events:
                await bus.run_prepare(ctx)
                event = await events.receive()
            files = cpu_files(ctx)
            active = sub.statistics()["tuner_active"]
            await bus.run_release(ctx)
            await trio.sleep(0.1)
            idle_after = sub.statistics()["tuner_active"]
    assert isinstance(event, Event)
    quota = int(event.get("cputune.vcpu_quota") or 0)
    assert (
        ("lend", "TUNABLE", True, "16000"),
        (True, files[1]),
        (False, True, False),
    ) == (
        (event.name, event.type, str(event.get("reason") or "").startswith("lend:"), files[0]),
        (4000 < quota <= 16000, str(quota)),
        (idle_before, active, idle_after),
    )


@pytest.fixture
def busy_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Busy loops started by a test, killed and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def idle_host(real: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """The real sampler's guest counters, with a host that is 90% idle (the machine is shared)."""
    step = 0

    async def sample(names: list[str]) -> Sample:
        nonlocal step
        step += 1
        got: Sample = await real(names)
        host = cc.HostIdle(idle_s=step * 0.9, total_s=step * 1.0, ncpus=1)
        return attrs.evolve(got, host=host)

    return sample


@pytest.mark.root
async def test_tuner_lends_to_a_really_throttled_guest(
    layout: CgroupLayout,
    guests: Callable[[Domain], GuestContext],
    busy_procs: list[subprocess.Popen[bytes]],
) -> None:
    """A busy loop throttled at 1/4 CPU (real cpu.stat) is lent quota, with a TUNABLE reason.

    Host idle is synthetic: other work on this shared machine makes real idle time a coin toss
    (tests/test_sched_integration.py measures the real thing). The weight is the maximum, so the
    loop gets its quarter CPU, and is throttled, whatever else runs.
    """
    bus: Bus[GuestContext] = Bus()
    paths: dict[str, cc.CpuPaths] = {}
    sub = SchedSubsystem(
        bus=bus,
        layout=layout,
        hz=250,
        host_cpus=1,
        tuner_period=0.2,
        sampler=idle_host(cgroup_sampler(lambda: paths, None)),
    )
    domain = Domain(name="real", vcpu=1, scheduler=LENDER, cputune=CpuTune(shares=262144))
    ctx = guests(domain)
    item: object = None
    with trio.fail_after(10):
        async with running(sub):
            async with bus.subscribe("t", kinds=["domain"]) as events:
                await bus.run_prepare(ctx)
                paths["real"] = cpu_paths(real_cgroup(ctx))  # type: ignore[assignment]
                proc = subprocess.Popen(BUSY)  # noqa: ASYNC220 (a child we kill in the fixture)
                busy_procs.append(proc)
                real_cgroup(ctx).attach(proc.pid)
                with trio.move_on_after(5):
                    async for item in events:
                        if isinstance(item, Event) and item.type == "TUNABLE":
                            break
                files = cpu_files(ctx)
                throttled = cc.read_stat(paths["real"]).nr_throttled
            await bus.run_release(ctx)
    assert isinstance(item, Event)
    assert (True, True, True) == (
        str(item.get("reason") or "").startswith("lend:"),
        int(files[1]) > 4000,
        throttled > 0,
    )


@pytest.mark.root
async def test_live_set_resets_the_loan(
    layout: CgroupLayout, guests: Callable[[Domain], GuestContext]
) -> None:
    """After a lend, a live set writes the new guarantee and the tuner's loan starts from zero."""
    bus: Bus[GuestContext] = Bus()
    sub = SchedSubsystem(
        bus=bus,
        layout=layout,
        hz=250,
        host_cpus=1,
        tuner_period=0.02,
        sampler=throttled_sampler("r"),
    )
    domain = Domain(name="r", vcpu=1, scheduler=LENDER)
    ctx = guests(domain)
    with trio.fail_after(10):
        async with running(sub):
            async with bus.subscribe("t", kinds=["domain"]) as events:
                await bus.run_prepare(ctx)
                await events.receive()
            lent = cpu_files(ctx)[1]
            _, info = await sub.set_schedinfo(
                domain, real_cgroup(ctx), {"cpu_shares": "300"}, live=True, config=False
            )
            files = cpu_files(ctx)
            await bus.run_release(ctx)
    assert (
        True,
        ("16000", "4000", "300"),
        {"guaranteed": 0.25, "idle_rate": 0.75, "loan": 0.0},
    ) == (
        int(lent) > 4000,
        files,
        info["tuner"],
    )
