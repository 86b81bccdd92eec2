"""Event streams under load: many consumers, a killed one, a stalled one, a supervisor restart."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from supervisor.api.pyclient import Client, TrioClient
from tests.fake_supervisor import Running, ServerThread, running_api, short_tmpdir

N_EVENTS = 10_000


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = short_tmpdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def produce(run: Running, n: int, *, per_tick: int = 50) -> float:
    """Emit n events, yielding to the loop every per_tick; returns the wall time it took."""
    start = time.perf_counter()
    for i in range(n):
        run.fake.emit("domain", f"d{i % 7}", "STARTED", "BOOTED", {"i": i})
        if i % per_tick == per_tick - 1:
            await trio.lowlevel.checkpoint()
    return time.perf_counter() - start


async def consume(path: str, since: int, n: int, out: list[int]) -> None:
    async with TrioClient(path) as c, aclosing(c.events(since, heartbeat=1.0)) as events:
        async for event in events:
            out.append(event["seq"])
            if len(out) >= n:
                return


async def test_ten_consumers_each_get_everything_in_order(sockdir: Path) -> None:
    """10 consumers reading while 10,000 events are produced each get all of them, in order."""
    async with running_api(sockdir) as run:
        got: list[list[int]] = [[] for _ in range(10)]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for out in got:
                    nursery.start_soon(consume, run.ro, 0, N_EVENTS, out)
                await trio.sleep(0.05)
                await produce(run, N_EVENTS)
        assert [list(range(1, N_EVENTS + 1))] * 10 == got


async def test_killed_consumer_resumes_with_since(sockdir: Path) -> None:
    """A consumer killed mid-stream and restarted with since=last misses none and repeats none."""
    async with running_api(sockdir) as run:
        first: list[int] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, run, N_EVENTS)
                await consume(run.ro, 0, 3000, first)  # hangs up mid-stream
            assert 3000 == len(first)
            second: list[int] = []
            await consume(run.ro, first[-1], N_EVENTS - len(first), second)
        assert list(range(1, N_EVENTS + 1)) == first + second


async def _stall(path: str, ready: trio.Event) -> None:
    """Open a followed stream from seq 0 and never read it."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"GET /v1/events?since=0&follow=true HTTP/1.1\r\nHost: vsv\r\n\r\n")
        ready.set()
        await trio.sleep_forever()


async def _round(run: Running, stalled: int) -> tuple[float, float]:
    """(producer wall time, time until 5 readers have everything) with `stalled` stuck readers."""
    base = run.journal.last_seq()
    got: list[list[int]] = [[] for _ in range(5)]
    async with trio.open_nursery() as nursery:
        for _ in range(stalled):
            ready = trio.Event()
            nursery.start_soon(_stall, run.ro, ready)
            await ready.wait()
        start = time.perf_counter()
        async with trio.open_nursery() as readers:
            for out in got:
                readers.start_soon(consume, run.ro, base, N_EVENTS, out)
            produced = await produce(run, N_EVENTS)
        delivered = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    assert [list(range(base + 1, base + N_EVENTS + 1))] * 5 == got
    return produced, delivered


async def test_stalled_consumer_slows_nobody(sockdir: Path) -> None:
    """Readers that stop reading do not slow the producer or the other readers (measured)."""
    async with running_api(sockdir) as run:
        with trio.fail_after(120):
            await _round(run, 0)  # warm-up
            free = await _round(run, 0)
            stuck = await _round(run, 3)
    # generous bound for a noisy machine; the real figures are in bench/bench_api.py
    assert True is (stuck[0] < 2 * free[0] + 0.2), (free, stuck)
    assert True is (stuck[1] < 2 * free[1] + 0.5), (free, stuck)


def test_restart_between_reads_loses_and_repeats_nothing(sockdir: Path) -> None:
    """A sync consumer iterating across a supervisor restart sees every event exactly once."""
    server = ServerThread(sockdir, heartbeat=0.2).start()
    seen: list[int] = []
    errors: list[BaseException] = []

    def emit(k: int) -> None:
        for _ in range(k):
            run = server.running
            assert run is not None
            server.call(lambda r=run: r.fake.emit("domain", "web1", "STARTED", "BOOTED"))

    def operator() -> None:
        try:
            emit(300)
            time.sleep(0.3)
            server.stop()
            time.sleep(0.3)  # the consumer finds no supervisor for a while
            server.start()
            emit(300)
        except BaseException as exc:
            errors.append(exc)

    try:
        with Client(server.ro) as c:
            events = c.events(0, heartbeat=0.2, reconnect_delay=0.05, give_up_after=10)
            worker = threading.Thread(target=operator)
            worker.start()
            for event in events:
                seen.append(event["seq"])
                if len(seen) == 600:
                    break
            events.close()
            worker.join(10)
    finally:
        server.stop()
    assert [] == errors
    assert list(range(1, 601)) == seen


def _restart_info(server: ServerThread) -> Any:
    run = server.running
    assert run is not None
    return run.journal.last_seq()


def test_numbering_continues_after_restart(sockdir: Path) -> None:
    """After a restart the journal (and so the stream) continues from the last seq."""
    server = ServerThread(sockdir).start()
    try:
        run = server.running
        assert run is not None
        server.call(lambda: run.fake.emit("supervisor", None, "STOPPED", "SHUTDOWN"))
        server.stop()
        server.start()
        assert 1 == server.call(_restart_info, server)
        run2 = server.running
        assert run2 is not None
        assert 2 == server.call(lambda: run2.fake.emit("supervisor", None, "STARTED", "BOOT"))
    finally:
        server.stop()
