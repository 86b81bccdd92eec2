"""Bus fan-out benchmark: publish N events, 10 in-process subscribers read every one.

Measures the whole path a notification takes: ``publish_nowait`` (numbering, stamping, building
the frozen Event, appending to each subscriber's buffer, waking parked readers) plus every
subscriber's ``async for`` receiving it. The publisher yields after each batch (smaller than the
buffers) so nothing overflows; the run fails if any subscriber saw a gap or a wrong sequence.
Prints events/s (events published per second, each delivered to all subscribers) and writes
bench/results/bus.json. Usage: ``python bench/bench_bus.py [--events N] [--subscribers K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import trio
import trio.testing

from supervisor.bus import Bus, Gap, Subscription

#: bench/results, or the directory in $VSV_BENCH_RESULTS (report.py --smoke)
RESULTS = (
    pathlib.Path(os.environ.get("VSV_BENCH_RESULTS") or pathlib.Path(__file__).parent / "results")
    / "bus.json"
)


async def _consume(sub: Subscription, total: int, first: int, done: list[int]) -> None:
    expected = first
    async with sub:
        async for item in sub:
            if isinstance(item, Gap) or item.seq != expected:
                raise AssertionError(f"{sub.name}: expected seq {expected}, got {item!r}")
            expected += 1
            if expected == first + total:
                break
    done.append(expected - first)


async def one_run(events: int, subscribers: int, batch: int) -> float:
    """Seconds to publish ``events`` and have all ``subscribers`` receive them."""
    bus: Bus[None] = Bus()
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            sub = bus.subscribe(f"s{i}", buffer=batch * 2)
            nursery.start_soon(_consume, sub, events, 1, done)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        publish = bus.publish_nowait
        sent = 0
        while sent < events:
            n = min(batch, events - sent)
            for _ in range(n):
                publish("domain", "web1", "STARTED", "BOOTED")
            sent += n
            await trio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - start
    if done != [events] * subscribers:
        raise AssertionError(f"subscribers received {done}, expected {events} each")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    rates = []
    for _ in range(args.runs):
        elapsed = trio.run(one_run, args.events, args.subscribers, args.batch)
        rates.append(args.events / elapsed)
    result = {
        "benchmark": "bus fan-out: publish_nowait + async-for delivery",
        "events": args.events,
        "subscribers": args.subscribers,
        "batch": args.batch,
        "runs": args.runs,
        "events_per_s_median": round(statistics.median(rates)),
        "events_per_s_min": round(min(rates)),
        "events_per_s_max": round(max(rates)),
        "deliveries_per_s_median": round(statistics.median(rates) * args.subscribers),
        # other work on the machine skews this benchmark a lot (2 vCPUs here): record the load
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "target_events_per_s": 200_000,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['events_per_s_median']:,} events/s to {args.subscribers} subscribers "
        f"(median of {args.runs}; min {result['events_per_s_min']:,}, "
        f"max {result['events_per_s_max']:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
