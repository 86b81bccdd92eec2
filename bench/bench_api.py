"""Control API benchmarks, each figure beside its floor measured in the same run.

1. start/destroy through the API (stdlib client, kept-alive connection) beside the same call
   made in-process on the facade;
2. event delivery latency (p50/p99, from the event's timestamp to its arrival in a consumer) to
   1 and 10 consumers at 1,000 events/s, and burst throughput (events/s until every consumer has
   all of them);
3. the wall time of ``vsv list`` as a whole process, beside ``python -c pass``.

The facade is the in-memory fake (supervisor/testing/fakefacade.py), so these figures are the
API's own cost; against the real daemon the start/destroy figures add the guest's start cost.

Writes the figures to bench/results/api.json as well.

Run: .venv/bin/python bench/bench_api.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.api.client import Client
from supervisor.api.pyclient import TrioClient
from tests.fake_supervisor import Running, running_api

#: bench/results, or the directory in $VSV_BENCH_RESULTS (report.py --smoke)
RESULTS = (
    Path(os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    / "api.json"
)
#: every printed figure by a stable key, for bench/results/api.json (read by bench/report.py)
FIGURES: dict[str, dict[str, float]] = {}

XML = b"<domain type='lxc'><name>b1</name><os><type>exe</type><init>/bin/sh</init></os></domain>"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def record(key: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    FIGURES[key] = {
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"median {statistics.median(ms):7.3f} ms  p99 {pct(ms, 99):7.3f} ms  "
        f"min {min(ms):7.3f}  max {max(ms):7.3f}  (n={len(ms)})"
    )


async def bench_actions(run: Running, n: int) -> None:
    def over_api() -> tuple[list[float], list[float]]:
        starts, destroys = [], []
        with Client(run.rw) as c:
            c.send_xml("/v1/domains", XML)
            for _ in range(n):
                t = time.perf_counter()
                c.send_json("POST", "/v1/domains/b1/start")
                starts.append(time.perf_counter() - t)
                t = time.perf_counter()
                c.send_json("POST", "/v1/domains/b1/destroy")
                destroys.append(time.perf_counter() - t)
        return starts, destroys

    starts, destroys = await trio.to_thread.run_sync(over_api)
    local_s, local_d = [], []
    for _ in range(n):
        t = time.perf_counter()
        await run.fake.start_domain("b1")
        local_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        await run.fake.destroy_domain("b1")
        local_d.append(time.perf_counter() - t)
    record("start_via_api", starts)
    record("start_in_process", local_s)
    record("destroy_via_api", destroys)
    record("destroy_in_process", local_d)
    print("start   via API      ", fmt(starts))
    print("start   in-process   ", fmt(local_s))
    print("destroy via API      ", fmt(destroys))
    print("destroy in-process   ", fmt(local_d))


async def consumer(path: str, since: int, n: int, lat: list[float], done: trio.Event) -> None:
    async with TrioClient(path) as c, aclosing(c.events(since, heartbeat=1.0)) as events:
        got = 0
        async for event in events:
            lat.append(time.time() - event["time"])
            got += 1
            if got == n:
                break
    done.set()


async def bench_delivery(run: Running, consumers: int, rate: float, seconds: float) -> None:
    n = int(rate * seconds)
    since = run.journal.last_seq()
    lats: list[list[float]] = [[] for _ in range(consumers)]
    dones = [trio.Event() for _ in range(consumers)]
    async with trio.open_nursery() as nursery:
        for lat, done in zip(lats, dones, strict=True):
            nursery.start_soon(consumer, run.ro, since, n, lat, done)
        await trio.sleep(0.2)
        start = trio.current_time()
        for i in range(n):
            await trio.sleep_until(start + i / rate)
            run.fake.emit("domain", "b1", "STARTED", "BOOTED")
        for done in dones:
            await done.wait()
    every = [x for lat in lats for x in lat]
    record(f"delivery_{consumers}_consumers_at_{rate:.0f}_per_s", every)
    print(f"delivery {consumers:2d} consumer(s) at {rate:.0f} ev/s ", fmt(every))


async def bench_burst(run: Running, consumers: int, n: int) -> None:
    since = run.journal.last_seq()
    dones = [trio.Event() for _ in range(consumers)]
    async with trio.open_nursery() as nursery:
        for done in dones:
            nursery.start_soon(consumer, run.ro, since, n, [], done)
        await trio.sleep(0.2)
        t = time.perf_counter()
        for i in range(n):
            run.fake.emit("domain", "b1", "STARTED", "BOOTED")
            if i % 100 == 99:
                await trio.lowlevel.checkpoint()
        for done in dones:
            await done.wait()
        elapsed = time.perf_counter() - t
    FIGURES[f"burst_{consumers}_consumers"] = {"events": n, "events_per_s": round(n / elapsed)}
    print(
        f"burst    {consumers:2d} consumer(s): {n} events in {elapsed:.3f} s "
        f"= {n / elapsed:,.0f} ev/s each"
    )


async def bench_cli(run: Running, n: int) -> None:
    async def wall(argv: list[str]) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await trio.run_process(argv, capture_stdout=True)
            out.append(time.perf_counter() - t)
        return out

    root = str(Path(__file__).resolve().parent.parent)
    floor = await wall([sys.executable, "-c", "pass"])
    cli = await wall(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {root!r}); "
            "from supervisor.clientcli import main; sys.exit(main())",
            "--socket",
            run.ro,
            "list",
            "--all",
        ]
    )
    record("python_c_pass", floor)
    record("vsv_list_all", cli)
    print("python -c pass       ", fmt(floor))
    print("vsv list --all       ", fmt(cli))


async def main(quick: bool) -> None:
    d = Path(tempfile.mkdtemp(prefix="vsvb", dir="/tmp"))
    try:
        async with running_api(d) as run:
            await bench_actions(run, 100 if quick else 1000)
            seconds = 1.0 if quick else 3.0
            await bench_delivery(run, 1, 1000, seconds)
            await bench_delivery(run, 10, 1000, seconds)
            await bench_burst(run, 1, 5000 if quick else 20000)
            await bench_burst(run, 10, 5000 if quick else 20000)
            await bench_cli(run, 5 if quick else 20)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {"quick": quick, "loadavg_after": os.getloadavg(), **FIGURES}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    trio.run(main, parser.parse_args().quick)
