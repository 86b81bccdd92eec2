"""The idle-time tuner's pure decision function and its runner, on synthetic samples."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor.model import TokenBucket
from supervisor.sched.cgroupcpu import CpuStat, HostIdle
from supervisor.sched.mapping import map_scheduler
from supervisor.sched.tuner import (
    QuotaChange,
    Sample,
    TunedGuest,
    Tuner,
    TunerState,
    decide,
    quota_for,
    tuned_guest,
)

PERIOD = 100_000


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, TunedGuest], TunerState, dict[str, float], int]:
    """Guests, a state with loans, and per-guest usage that respects each current quota."""
    n = draw(st.integers(1, 4))
    guests: dict[str, TunedGuest] = {}
    loans: dict[str, float] = {}
    for i in range(n):
        g = TunedGuest(
            name=f"g{i}",
            period_us=PERIOD,
            guaranteed=draw(st.floats(0.05, 1.0)),
            idle_rate=draw(st.floats(0.0, 1.0)),
            shares=draw(st.none() | st.integers(2, 4096)),
        )
        guests[g.name] = g
        loans[g.name] = draw(st.floats(0.0, 1.0)) * g.idle_rate
    ncpus = draw(st.integers(1, 2))
    return guests, TunerState(last=None, loans=loans), loans, ncpus


def _samples(
    guests: Mapping[str, TunedGuest],
    usage: Mapping[str, float],
    throttled: Mapping[str, bool],
    idle: float,
    ncpus: int,
    step: int,
) -> Sample:
    """The cumulative counters after ``step`` seconds of a constant workload."""
    return Sample(
        now=float(step),
        host=HostIdle(idle_s=idle * step, total_s=float(ncpus * step), ncpus=ncpus),
        guests={
            g: CpuStat(
                usage_ns=round(usage[g] * 1e9 * step),
                nr_periods=10 * step,
                nr_throttled=(10 if throttled[g] else 0) * step,
            )
            for g in guests
        },
    )


@given(scenarios(), st.data())
def test_invariants_of_one_step(
    scenario: tuple[dict[str, TunedGuest], TunerState, dict[str, float], int],
    data: st.DataObject,
) -> None:
    """Loans stay within idle capacity and idle rates; no quota goes below the guarantee."""
    guests, state, loans, ncpus = scenario
    usage = {
        g: data.draw(st.floats(0.0, min(1.0, guests[g].guaranteed + loans[g]))) for g in guests
    }
    throttled = {g: data.draw(st.booleans()) for g in guests}
    idle = data.draw(st.floats(0.0, 1.0)) * max(0.0, ncpus - sum(usage.values()))
    first = decide(state, guests, _samples(guests, usage, throttled, idle, ncpus, 1))
    d = decide(first.state, guests, _samples(guests, usage, throttled, idle, ncpus, 2))
    used = sum(min(loans[g], max(0.0, usage[g] - guests[g].guaranteed)) for g in guests)
    new = d.state.loans
    assert (True, True, True) == (
        sum(new.values()) <= idle + used + 1e-6,
        all(0.0 <= new[g] <= guests[g].idle_rate + 1e-9 for g in guests),
        all(c.new_quota_us >= quota_for(guests[c.guest], 0.0) for c in d.changes),
    )


def test_a_loan_below_the_quotas_resolution_is_still_taken_back() -> None:
    """A loan too small to change the quota (0.5 us here) is forgotten once the host has no
    idle CPU, rather than kept for ever (found by test_invariants_of_one_step)."""
    g = TunedGuest(name="g0", period_us=PERIOD, guaranteed=1.0, idle_rate=0.5, shares=None)
    guests = {"g0": g}
    state = TunerState(last=None, loans={"g0": 5e-06})
    samples = [_samples(guests, {"g0": 0.0}, {"g0": False}, 0.0, 1, step) for step in (1, 2)]
    d = decide(decide(state, guests, samples[0]).state, guests, samples[1])
    assert ({"g0": 0.0}, ()) == (dict(d.state.loans), d.changes)


@given(scenarios(), st.data())
def test_converges_on_steady_input(
    scenario: tuple[dict[str, TunedGuest], TunerState, dict[str, float], int],
    data: st.DataObject,
) -> None:
    """Fed the same workload again and again, the tuner stops changing quotas."""
    guests, state, _, ncpus = scenario
    usage = {g: data.draw(st.floats(0.0, guests[g].guaranteed)) for g in guests}
    throttled = {g: data.draw(st.booleans()) for g in guests}
    idle = data.draw(st.floats(0.0, 1.0)) * max(0.0, ncpus - sum(usage.values()))
    changes_per_step = []
    for step in range(1, 60):
        d = decide(state, guests, _samples(guests, usage, throttled, idle, ncpus, step))
        state = d.state
        changes_per_step.append(len(d.changes))
    assert [0] * 10 == changes_per_step[-10:]


def _cfs_one_cpu(quotas: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """A tiny model of CFS on one CPU: weighted shares of busy groups, each capped at its quota."""
    share: dict[str, float] = dict.fromkeys(quotas, 0.0)
    left, active = 1.0, set(quotas)
    while active and left > 1e-9:
        total_w = sum(weights[g] for g in active)
        capped = {g for g in active if share[g] + left * weights[g] / total_w >= quotas[g]}
        if not capped:
            for g in active:
                share[g] += left * weights[g] / total_w
            break
        for g in capped:
            left -= quotas[g] - share[g]
            share[g] = quotas[g]
        active -= capped
    return share


def test_lends_on_idle_and_reclaims_under_contention_in_a_cfs_model() -> None:
    """Alone, a throttled borrower gets a loan; a busy neighbour takes it back in a few periods."""
    b = tuned_guest(
        "b",
        map_scheduler(
            TokenBucket(fill_rate=1, interval=4, fill_rate2=3, interval2=4), None, ncpus=1
        ),
    )
    c = tuned_guest("c", map_scheduler(TokenBucket(fill_rate=3, interval=4), None, ncpus=1))
    assert b is not None
    assert c is None  # no idle pair: not tuned, but it is a contender in the model
    guests = {"b": b}
    state = TunerState()
    usage_ns = {"b": 0, "c": 0}
    idle_s = 0.0
    history: list[tuple[float, float]] = []
    for step in range(30):
        busy = {"b"} if step < 15 else {"b", "c"}
        loan = state.loans.get("b", 0.0)
        quotas = {"b": b.guaranteed + loan, "c": 0.75}
        weights = {"b": 256 * (b.guaranteed + loan) / b.guaranteed, "c": 768.0}
        share = _cfs_one_cpu({g: quotas[g] for g in busy}, {g: weights[g] for g in busy})
        for g, s in share.items():
            usage_ns[g] += round(s * 0.2e9)
        idle_s += 0.2 * (1 - sum(share.values()))
        sample = Sample(
            now=0.2 * step,
            host=HostIdle(idle_s=idle_s, total_s=0.2 * step, ncpus=1),
            guests={
                "b": CpuStat(
                    usage_ns=usage_ns["b"],
                    nr_periods=12 * step,
                    nr_throttled=12 * step if share["b"] >= quotas["b"] - 1e-9 else 0,
                )
            },
        )
        state = decide(state, guests, sample).state
        history.append((share.get("b", 0.0), state.loans.get("b", 0.0)))
    lent_alone = history[14][0]
    reclaimed_at = next(i for i in range(15, 30) if history[i][1] == 0.0)
    assert (True, True, 0.25) == (
        lent_alone > 0.8,
        reclaimed_at - 15 <= 6,
        round(history[-1][0], 2),
    )


async def test_runner_samples_decides_and_applies(autojump_clock: trio.abc.Clock) -> None:
    """The runner feeds samples to decide() every period and hands each change to the applier."""
    guest = TunedGuest(name="b", period_us=PERIOD, guaranteed=0.25, idle_rate=0.75, shares=256)
    applied: list[QuotaChange] = []

    async def sampler(names: list[str]) -> Sample:
        now = trio.current_time()
        return Sample(
            now=now,
            host=HostIdle(idle_s=0.75 * now, total_s=now, ncpus=1),
            guests={
                "b": CpuStat(
                    usage_ns=round(0.25e9 * now),
                    nr_periods=round(now * 10),
                    nr_throttled=round(now * 10),
                )
            },
        )

    async def applier(change: QuotaChange) -> None:
        applied.append(change)

    tuner = Tuner(guests=lambda: {"b": guest}, sampler=sampler, applier=applier, period=0.2)
    with trio.move_on_after(1.05):
        await tuner.run()
    first = applied[0]
    assert ("b", 25_000, 85_000, 870, 6) == (
        first.guest,
        first.old_quota_us,
        first.new_quota_us,
        first.tunable()["cputune.shares"],
        tuner.statistics().steps,
    )


@pytest.mark.parametrize("first_call", [True, False])
def test_first_sample_only_records(first_call: bool) -> None:
    """Without a previous sample (or with no elapsed time) nothing is decided."""
    guest = TunedGuest(name="b", period_us=PERIOD, guaranteed=0.25, idle_rate=0.75)
    s = Sample(now=1.0, host=HostIdle(1.0, 1.0, 1), guests={"b": CpuStat(usage_ns=0)})
    state = TunerState() if first_call else TunerState(last=s)
    assert () == decide(state, {"b": guest}, s).changes
