"""Fleet events benchmark: the publisher beside bare nats-py, end-to-end latency, and guest
starts with a broker that is down beside starts without ``--nats``, all in one run.

1. **Publish throughput**: N journal records published by the fleet publisher (acked one at a
   time, cursor written per batch, through the trio-asyncio bridge) beside a bare nats-py
   publisher doing the same JetStream publishes with acks and message ids on its own loop
   (the floor; the nats-server package ships no ``nats bench``), and beside bare nats-py
   pipelining (``publish_async``; info: the rate one-at-a-time gives up for per-host order).
2. **End-to-end latency**: a supervisor on the fake runtime starts and destroys a guest; a
   JetStream consumer (ordered push consumer on its own loop) receives each event; latency is
   the receive time minus the event's ``time`` (same clock): p50 and p99.
3. **Start with the broker down** (root, real guests on a busybox root): start+STARTED of one
   guest, the supervisor with a publisher whose broker is down beside the same supervisor
   without one, interleaved rounds, medians. The publisher must not slow the supervisor.

Writes bench/results/fleet.json (or $VSV_BENCH_RESULTS/fleet.json).
Usage: ``python bench/bench_fleet.py [--events N] [--latency N] [--starts N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

# the checkout's own code, not an installed copy (report.py runs this from the repo)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.bus import Bus
from supervisor.daemon import Supervisor
from supervisor.fleet.publisher import FleetPublisher, run_publisher
from supervisor.fleet.subjects import STREAM_SUBJECTS, msg_id
from supervisor.hooks import GuestContext
from supervisor.journal import Journal
from supervisor.model import Domain, Filesystem, OsSpec
from supervisor.testing.fakeruntime import FakeRuntime
from supervisor.testing.natsserver import NatsServer, nats_server

RESULTS = (
    pathlib.Path(os.environ.get("VSV_BENCH_RESULTS") or pathlib.Path(__file__).parent / "results")
    / "fleet.json"
)
PREFIX = f"vsvbf{os.getpid() % 10000}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1. throughput -----------------------------------------------------------------------------


def bare_nats(url: str, events: int, pipelined: bool) -> float:
    """Events/s of a bare nats-py JetStream publisher (acks, message ids) on its own loop."""

    async def run() -> float:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        host = f"bare-{'pipelined' if pipelined else 'acked'}-{os.getpid()}-{time.monotonic_ns()}"
        body = json.dumps({"seq": 0, "kind": "domain", "type": "STARTED", "x": "y" * 200}).encode()
        t0 = time.perf_counter()
        if pipelined:
            futures = [
                await js.publish_async(
                    f"guests.{host}.g.STARTED", body, headers={"Nats-Msg-Id": msg_id(host, i)}
                )
                for i in range(1, events + 1)
            ]
            await asyncio.gather(*futures)
        else:
            for i in range(1, events + 1):
                await js.publish(
                    f"guests.{host}.g.STARTED", body, headers={"Nats-Msg-Id": msg_id(host, i)}
                )
        dt = time.perf_counter() - t0
        await nc.close()
        return events / dt

    return asyncio.run(run())


async def ours(url: str, directory: Path, events: int, host: str) -> float:
    """Events/s of the fleet publisher catching up on ``events`` journal records."""
    journal = Journal.open(directory / "journal")
    bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
    bus.add_sink(journal.append)
    bus.publish_nowait("supervisor", None, "STARTED")
    async with trio.open_nursery() as nursery:
        publisher: FleetPublisher = await nursery.start(
            lambda task_status: run_publisher(
                journal,
                servers=(url,),
                host=host,
                stream="GUESTS",
                state_dir=directory,
                task_status=task_status,
            )
        )
        await publisher.wait_caught_up()  # connected, stream checked
        t0 = time.perf_counter()
        for i in range(events):
            bus.publish_nowait("domain", f"g{i % 10}", "STARTED", "BOOTED")
        await publisher.wait_caught_up()
        dt = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    journal.close()
    return events / dt


async def ensure_stream(url: str) -> None:
    async def run() -> None:
        import nats

        nc = await nats.connect(url)
        await nc.jetstream().add_stream(
            name="GUESTS", subjects=list(STREAM_SUBJECTS), duplicate_window=3600
        )
        await nc.close()

    await trio.to_thread.run_sync(asyncio.run, run())


# -- 2. latency --------------------------------------------------------------------------------


class Consumer:
    """An ordered JetStream consumer on its own thread and loop, noting each event's delay."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.delays: list[float] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),))
        self.thread.start()
        self.ready.wait(30)

    async def main(self) -> None:
        import nats

        self.stop = asyncio.Event()
        nc = await nats.connect(self.url)
        js = nc.jetstream()

        async def on_msg(msg: Any) -> None:
            record = json.loads(msg.data)
            if record.get("host") == "lat":
                self.delays.append(time.time() - float(record["time"]))

        sub = await js.subscribe("guests.lat.>", cb=on_msg, ordered_consumer=True)
        self.ready.set()
        await self.stop.wait()
        await sub.unsubscribe()
        await nc.close()

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()


async def latency(url: str, directory: Path, n: int) -> dict[str, Any]:
    """p50/p99 from a lifecycle change (fake runtime) to a fleet consumer, in ms."""
    consumer = await trio.to_thread.run_sync(Consumer, url)
    journal = Journal.open(directory / "state" / "journal")
    bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
    bus.add_sink(journal.append)
    sup = Supervisor(
        state_dir=directory / "state",
        run_dir=directory / "run",
        prefix=f"{PREFIX}l",
        runtime=FakeRuntime(),
        networking=False,
        bus=bus,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            publisher: FleetPublisher = await nursery.start(
                lambda task_status: run_publisher(
                    journal,
                    servers=(url,),
                    host="lat",
                    stream="GUESTS",
                    state_dir=directory / "state",
                    task_status=task_status,
                )
            )
            await sup.define_domain(
                Domain(name="g", type="vserver", os=OsSpec(init="/bin/true"), privnet=True)
            )
            for _ in range(n // 2):
                await sup.start_domain("g")
                await publisher.wait_caught_up()
                await trio.sleep(0.005)
                await sup.destroy_domain("g")
                await publisher.wait_caught_up()
                await trio.sleep(0.005)
            expected = 1 + 2 * (n // 2)
            with trio.move_on_after(30):
                while len(consumer.delays) < expected:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(consumer.close)
        journal.close()
    delays = [d * 1000 for d in consumer.delays[1:]]  # the first: DEFINED, before warm-up
    return {
        "events": len(delays),
        "p50_ms": round(_pct(delays, 0.5), 3),
        "p99_ms": round(_pct(delays, 0.99), 3),
        "max_ms": round(max(delays), 3),
    }


# -- 3. starts with the broker down ------------------------------------------------------------


async def starts_broker_down(
    server: NatsServer, directory: Path, rounds: int, per_round: int
) -> dict[str, Any] | None:
    """Median start (call -> STARTED) without a publisher and with one whose broker is down."""
    if os.geteuid() != 0:
        return None
    from supervisor.guest.rootfs import prepare_busybox_root

    root = prepare_busybox_root(str(directory / "rootfs"))
    dead_url = server.url
    server.stop()
    journal = Journal.open(directory / "state" / "journal")
    bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
    bus.add_sink(journal.append)
    sup = Supervisor(
        state_dir=directory / "state", run_dir=directory / "run", prefix=PREFIX, bus=bus
    )
    times: dict[str, list[float]] = {"without": [], "broker_down": []}
    lag = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            await sup.define_domain(
                Domain(
                    name="s",
                    type="vserver",
                    os=OsSpec(init="/bin/sh", initargs=("-c", "while :; do sleep 1; done")),
                    filesystems=(Filesystem(source=root, target="/"),),
                    privnet=True,
                )
            )
            for _ in range(2):  # warm-up
                await sup.start_domain("s")
                await sup.destroy_domain("s")
            for r in range(rounds):
                order = ("without", "broker_down") if r % 2 == 0 else ("broker_down", "without")
                for mode in order:
                    scope = trio.CancelScope()
                    publisher: FleetPublisher | None = None
                    if mode == "broker_down":
                        publisher = await nursery.start(
                            partial(_publisher_in, scope, journal, dead_url, directory)
                        )
                        while publisher.state != "down":
                            await trio.sleep(0.01)
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        await sup.start_domain("s")
                        times[mode].append(time.perf_counter() - t0)
                        await sup.destroy_domain("s")
                    if publisher is not None:
                        lag = publisher.statistics().lag_events
                    scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                if sup.guests["s"].cgroup is not None:
                    await sup.destroy_domain("s")
            nursery.cancel_scope.cancel()
    journal.close()
    out: dict[str, Any] = {"starts_each": len(times["without"]), "lag_events_reported": lag}
    for mode, values in times.items():
        out[mode] = {
            "median_ms": round(statistics.median(values) * 1000, 3),
            "min_ms": round(min(values) * 1000, 3),
            "max_ms": round(max(values) * 1000, 3),
        }
    out["ratio"] = round(out["broker_down"]["median_ms"] / out["without"]["median_ms"], 3)
    return out


async def _publisher_in(
    scope: trio.CancelScope,
    journal: Journal,
    url: str,
    directory: Path,
    *,
    task_status: trio.TaskStatus[FleetPublisher] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A publisher that lives in ``scope`` (the round's), so the round can end it."""
    with scope:
        await run_publisher(
            journal,
            servers=(url,),
            host="down",
            stream="GUESTS",
            state_dir=directory / "state",
            task_status=task_status,
        )


# -- main --------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"events": args.events, "cpus": os.cpu_count()}
    with nats_server(tmp / "nats") as server:
        await ensure_stream(server.url)
        rates: dict[str, list[float]] = {"ours": [], "bare": [], "bare_pipelined": []}
        for r in range(args.runs):
            rates["bare"].append(
                await trio.to_thread.run_sync(bare_nats, server.url, args.events, False)
            )
            rates["ours"].append(await ours(server.url, tmp / f"ours{r}", args.events, f"ours{r}"))
            rates["bare_pipelined"].append(
                await trio.to_thread.run_sync(bare_nats, server.url, args.events, True)
            )
        results["throughput"] = {
            k: {"median": round(statistics.median(v)), "min": round(min(v)), "max": round(max(v))}
            for k, v in rates.items()
        }
        results["throughput"]["ratio"] = round(
            results["throughput"]["ours"]["median"] / results["throughput"]["bare"]["median"], 3
        )
        results["latency"] = await latency(server.url, tmp / "lat", args.latency)
        results["start_broker_down"] = await starts_broker_down(
            server, tmp / "down", args.runs, args.starts
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs/rounds")
    parser.add_argument("--latency", type=int, default=400, help="events for the latency")
    parser.add_argument("--starts", type=int, default=10, help="starts per mode and round")
    args = parser.parse_args()
    # report.py ends a benchmark that overran with SIGTERM: unwind as for ^C, so the guest, the
    # nats-server and the temporary directory are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    with tempfile.TemporaryDirectory(prefix="vsv-bench-fleet-") as tmp:
        results = trio.run(measure, args, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    t = results["throughput"]
    print(
        f"publish: ours {t['ours']['median']:,}/s, bare nats-py {t['bare']['median']:,}/s "
        f"(x{t['ratio']}), bare pipelined {t['bare_pipelined']['median']:,}/s"
    )
    lat = results["latency"]
    print(f"latency to a fleet consumer: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    down = results["start_broker_down"]
    if down:
        print(
            f"start: without --nats {down['without']['median_ms']} ms, broker down "
            f"{down['broker_down']['median_ms']} ms (x{down['ratio']}), "
            f"lag reported {down['lag_events_reported']}"
        )
    else:
        print("start with the broker down: needs root (skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
