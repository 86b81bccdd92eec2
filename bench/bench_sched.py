"""Scheduler benchmark: configured vs measured CPU share on real cgroups, and the tuner's cost.

Run as root from the repository root: ``.venv/bin/python -m bench.bench_sched [--seconds S]``.
Prints markdown tables:

1. hard caps: one busy guest per rate next to a minimum-weight hog on the same CPU;
2. weights: two busy guests with fill rates a:b on one CPU (caps not binding), measured a/(a+b);
3. the tuner: CPU time of ``decide()`` per step for N guests, and of a whole real step
   (sampling the kernel, deciding, writing) in a live run.

Everything created carries a ``vsvbench`` prefix and is removed at the end (also on error).
The figures are also written to bench/results/sched.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import trio

from supervisor.model import TokenBucket
from supervisor.sched.cgroupcpu import CpuStat, HostIdle
from supervisor.sched.mapping import CpuLimits, map_scheduler
from supervisor.sched.tuner import (
    Sample,
    TunedGuest,
    Tuner,
    TunerState,
    cgroup_applier,
    cgroup_sampler,
    decide,
    tuned_guest,
)
from tests.test_sched_integration import Lab, _measure

#: bench/results, or the directory in $VSV_BENCH_RESULTS (report.py --smoke)
RESULTS = (
    Path(os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    / "sched.json"
)
#: every figure in the printed tables, for bench/results/sched.json (read by bench/report.py)
FIGURES: dict[str, list[dict[str, Any]]] = {"caps": [], "weights": [], "decide": [], "live": []}


def caps(seconds: float) -> list[str]:
    rows = ["| fill_rate/interval | configured | measured | error |", "|---|---|---|---|"]
    for fill, interval in ((1, 8), (1, 4), (1, 2), (3, 4)):
        lab = Lab(prefix=f"vsvbench{secrets.token_hex(2)}")
        try:
            limits = map_scheduler(TokenBucket(fill_rate=fill, interval=interval), None).limits
            g = lab.group("g", limits)
            hog = lab.group("hog", CpuLimits(shares=2))
            lab.busy(hog)
            lab.busy(g)
            time.sleep(0.3)
            (used, _) = _measure([g, hog], seconds)
        finally:
            lab.close()
        want = fill / interval
        FIGURES["caps"].append(
            {
                "fill_rate": fill,
                "interval": interval,
                "configured": want,
                "measured": round(used, 4),
            }
        )
        rows.append(
            f"| {fill}/{interval} | {want:.4f} | {used:.4f} | {100 * (used - want) / want:+.2f}% |"
        )
    return rows


def weights(seconds: float) -> list[str]:
    rows = ["| fill rates a:b (interval 2) | configured a/(a+b) | measured | error |",
            "|---|---|---|---|"]  # fmt: skip
    for a, b in ((1, 1), (1, 2), (1, 3), (1, 7)):
        lab = Lab(prefix=f"vsvbench{secrets.token_hex(2)}")
        try:
            ga = lab.group("a", map_scheduler(TokenBucket(fill_rate=a, interval=2), None).limits)
            gb = lab.group("b", map_scheduler(TokenBucket(fill_rate=b, interval=2), None).limits)
            lab.busy(ga)
            lab.busy(gb)
            time.sleep(0.3)
            ua, ub = _measure([ga, gb], seconds)
        finally:
            lab.close()
        want = a / (a + b)
        got = ua / (ua + ub)
        FIGURES["weights"].append(
            {"a": a, "b": b, "configured": round(want, 4), "measured": round(got, 4)}
        )
        rows.append(f"| {a}:{b} | {want:.4f} | {got:.4f} | {100 * (got - want) / want:+.2f}% |")
    return rows


def decide_cost() -> list[str]:
    rows = ["| guests | decide() per step (us), median of 2000 |", "|---|---|"]
    for n in (1, 10, 100):
        guests = {f"g{i}": TunedGuest(f"g{i}", 100_000, 0.25, 0.5, 256) for i in range(n)}
        state = TunerState()
        times = []
        for step in range(1, 2001):
            sample = Sample(
                now=float(step),
                host=HostIdle(idle_s=0.5 * step, total_s=2.0 * step, ncpus=2),
                guests={
                    g: CpuStat(
                        usage_ns=250_000_000 * step,
                        nr_periods=10 * step,
                        nr_throttled=(step % 3) * step,
                    )
                    for g in guests
                },
            )
            t0 = time.perf_counter()
            state = decide(state, guests, sample).state
            times.append(time.perf_counter() - t0)
        FIGURES["decide"].append(
            {"guests": n, "us_per_step": round(1e6 * statistics.median(times), 1)}
        )
        rows.append(f"| {n} | {1e6 * statistics.median(times):.1f} |")
    return rows


async def live_tuner_cost(seconds: float) -> list[str]:
    lab = Lab(prefix=f"vsvbench{secrets.token_hex(2)}")
    try:
        mapping = map_scheduler(
            TokenBucket(fill_rate=1, interval=4, fill_rate2=3, interval2=4), None, ncpus=1
        )
        g = lab.group("b", mapping.limits)
        guest = tuned_guest("b", mapping)
        assert guest is not None
        paths = {"b": g}
        tuner = Tuner(
            guests=lambda: {"b": guest},
            sampler=cgroup_sampler(lambda: paths, cpus=[lab.cpu]),
            applier=cgroup_applier(lambda: paths),
            period=0.2,
        )
        lab.busy(g)
        with trio.move_on_after(seconds):
            await tuner.run()
        st = tuner.statistics()
    finally:
        lab.close()
    per_step = 1e6 * st.step_cpu_s / max(1, st.steps)
    share = st.step_cpu_s / seconds
    FIGURES["live"].append(
        {
            "guests": 1,
            "seconds": seconds,
            "steps": st.steps,
            "changes": st.changes,
            "cpu_us_per_step": round(per_step),
            "cpu_share": share,
            "period_s": 0.2,
        }
    )
    return [
        "| live run | steps | changes | CPU per step (us) | tuner CPU share at 200 ms period |",
        "|---|---|---|---|---|",
        f"| 1 guest, {seconds:.0f} s | {st.steps} | {st.changes} | {per_step:.0f} | "
        f"{100 * share:.4f}% |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window per row")
    args = parser.parse_args()
    print("## Hard caps (guest vs minimum-weight hog, one CPU)\n")
    print("\n".join(caps(args.seconds)))
    print("\n## Weights (two busy guests, one CPU)\n")
    print("\n".join(weights(args.seconds)))
    print("\n## Tuner cost\n")
    print("\n".join(decide_cost()))
    print()
    print("\n".join(trio.run(live_tuner_cost, max(3.0, args.seconds))))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {"seconds": args.seconds, "loadavg_after": os.getloadavg(), **FIGURES}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
