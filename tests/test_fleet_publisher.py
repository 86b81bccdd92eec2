"""The fleet publisher against a real nats-server: outbox, cursor, resume, outages, misfits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from supervisor.bus import Bus
from supervisor.fleet.bridge import open_loop_thread
from supervisor.fleet.publisher import FleetPublisher, cursor_path, run_publisher
from supervisor.hooks import GuestContext
from supervisor.journal import Journal, Retention
from supervisor.testing.natsserver import NatsServer, StoredMessage, read_stream
from tests.fleet_helpers import nats

__all__ = ["nats"]


class Host:
    """A journal and a bus as the daemon wires them, standing in for one supervisor."""

    def __init__(self, state: Path, **journal_args: object) -> None:
        self.state = state
        self.journal = Journal.open(state / "journal", **journal_args)  # type: ignore[arg-type]
        self.bus: Bus[GuestContext] = Bus(first_seq=self.journal.last_seq() + 1)
        self.bus.add_sink(self.journal.append)

    def lifecycle(self, name: str) -> None:
        self.bus.publish_nowait("domain", name, "DEFINED", "ADDED")
        self.bus.publish_nowait("domain", name, "STARTED", "BOOTED")
        self.bus.publish_nowait("domain", name, "STOPPED", "DESTROYED")

    def close(self) -> None:
        self.journal.close()


@asynccontextmanager
async def publishing(host: Host, url: str, name: str = "h1") -> AsyncIterator[FleetPublisher]:
    async with trio.open_nursery() as nursery:
        publisher: FleetPublisher = await nursery.start(
            lambda task_status: run_publisher(
                host.journal,
                servers=(url,),
                host=name,
                stream="GUESTS",
                state_dir=host.state,
                task_status=task_status,
            )
        )
        yield publisher
        nursery.cancel_scope.cancel()


async def stored(url: str) -> list[StoredMessage]:
    return await trio.to_thread.run_sync(read_stream, url)


def host_seqs(messages: list[StoredMessage], host: str) -> list[int]:
    return [int(m.record()["seq"]) for m in messages if m.record()["host"] == host]  # type: ignore[call-overload]


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_bridge_returns_results_errors_and_cancels() -> None:
    """A coroutine's result and exception cross the bridge; trio cancellation cancels it."""
    cancelled = asyncio.Event()

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise KeyError("nope")

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    with trio.fail_after(10):
        async with open_loop_thread() as bridge:
            assert 5 == await bridge.run(add, 2, 3)
            with pytest.raises(KeyError, match="nope"):
                await bridge.run(fail)
            with trio.move_on_after(0.05) as scope:
                await bridge.run(hang)
            assert scope.cancelled_caught

            async def was_cancelled() -> bool:
                await asyncio.wait_for(cancelled.wait(), 5)
                return True

            assert await bridge.run(was_cancelled)
        assert not bridge.thread.is_alive()


async def test_every_record_once_in_order(tmp_path: Path, nats: NatsServer) -> None:
    """Each journal record is one message: subject, payload (+host), msg id, order; cursor kept."""
    host = Host(tmp_path / "a")
    host.lifecycle("web")
    with trio.fail_after(30):
        async with publishing(host, nats.url) as publisher:
            await publisher.wait_caught_up()
            host.bus.publish_nowait("network", "n.1", "STARTED")
            await publisher.wait_caught_up()
            stats = publisher.statistics()
    messages = await stored(nats.url)
    assert [1, 2, 3, 4] == host_seqs(messages, "h1")
    assert [
        "guests.h1.web.DEFINED",
        "guests.h1.web.STARTED",
        "guests.h1.web.STOPPED",
        "networks.h1.n%2E1.STARTED",
    ] == [m.subject for m in messages]
    assert ["h1:1", "h1:2", "h1:3", "h1:4"] == [m.msg_id for m in messages]
    journal = [dict(r) for r in host.journal.read_since(0)]
    assert [{**r, "host": "h1"} for r in journal] == [m.record() for m in messages]
    assert 4 == json.loads(cursor_path(host.state, "GUESTS").read_bytes())["seq"]
    assert (4, 0, "publishing") == (stats.published_seq, stats.lag_events, stats.state)
    host.close()


@pytest.mark.parametrize("lose_cursor", [False, True])
async def test_restart_resumes_without_repeats(
    tmp_path: Path, nats: NatsServer, lose_cursor: bool
) -> None:
    """A new publisher resumes from its cursor, or without one from the stream's last seq."""
    host = Host(tmp_path / "a")
    host.lifecycle("one")
    with trio.fail_after(30):
        async with publishing(host, nats.url) as publisher:
            await publisher.wait_caught_up()
        host.lifecycle("two")
        if lose_cursor:
            cursor_path(host.state, "GUESTS").unlink()
        async with publishing(host, nats.url) as publisher:
            await publisher.wait_caught_up()
            assert 0 == publisher.statistics().duplicates
    assert [1, 2, 3, 4, 5, 6] == host_seqs(await stored(nats.url), "h1")
    host.close()


async def test_broker_down_lags_then_catches_up(tmp_path: Path, nats: NatsServer) -> None:
    """With the broker down the publisher reports its lag; when it returns, it catches up."""
    nats.stop()
    host = Host(tmp_path / "a")
    with trio.fail_after(60):
        async with publishing(host, nats.url) as publisher:
            host.lifecycle("web")
            await wait_until(lambda: publisher.statistics().state == "down")
            stats = publisher.statistics()
            assert (3, 0, False) == (stats.lag_events, stats.published_seq, stats.connected)
            assert stats.last_error
            await trio.to_thread.run_sync(nats.start)
            await publisher.wait_caught_up()
            assert 0 == publisher.statistics().lag_events
    assert [1, 2, 3] == host_seqs(await stored(nats.url), "h1")
    host.close()


async def test_two_hosts_share_the_stream(tmp_path: Path, nats: NatsServer) -> None:
    """Two journals under two host ids: each host's events once, in its own order."""
    a, b = Host(tmp_path / "a"), Host(tmp_path / "b")
    with trio.fail_after(30):
        async with publishing(a, nats.url, "ha") as pa, publishing(b, nats.url, "hb") as pb:
            for i in range(5):
                a.lifecycle(f"a{i}")
                b.lifecycle(f"b{i}")
                await trio.lowlevel.checkpoint()
            await pa.wait_caught_up()
            await pb.wait_caught_up()
    messages = await stored(nats.url)
    assert list(range(1, 16)) == host_seqs(messages, "ha")
    assert list(range(1, 16)) == host_seqs(messages, "hb")
    a.close()
    b.close()


async def test_a_stream_that_does_not_fit_is_an_error(tmp_path: Path, nats: NatsServer) -> None:
    """An existing GUESTS stream in memory storage is refused, named, and nothing published."""

    async def make_bad_stream() -> None:
        import nats as nats_py
        from nats.js import api

        nc = await nats_py.connect(nats.url)
        await nc.jetstream().add_stream(
            name="GUESTS", subjects=["guests.>"], storage=api.StorageType.MEMORY
        )
        await nc.close()

    await trio.to_thread.run_sync(asyncio.run, make_bad_stream())
    host = Host(tmp_path / "a")
    host.lifecycle("web")
    with trio.fail_after(30):
        async with publishing(host, nats.url) as publisher:
            await wait_until(lambda: publisher.statistics().state == "error")
            error = publisher.statistics().last_error or ""
    assert "stream GUESTS does not fit" in error
    assert "storage is memory" in error
    assert "networks.>" in error
    assert [] == await stored(nats.url)
    host.close()


async def test_a_host_id_used_by_another_journal_is_an_error(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A second journal publishing as the same host (stream ahead of it) stops with an error."""
    first, second = Host(tmp_path / "a"), Host(tmp_path / "b")
    first.lifecycle("x")
    first.lifecycle("y")
    second.lifecycle("z")
    with trio.fail_after(30):
        async with publishing(first, nats.url) as publisher:
            await publisher.wait_caught_up()
        async with publishing(second, nats.url) as publisher:
            await wait_until(lambda: publisher.statistics().state == "error")
            assert "another supervisor" in (publisher.statistics().last_error or "")
    assert [1, 2, 3, 4, 5, 6] == host_seqs(await stored(nats.url), "h1")
    first.close()
    second.close()


async def test_events_pruned_before_publishing_arrive_as_a_gap(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Records the journal's retention removed unpublished are one GAP message, then the rest."""
    host = Host(tmp_path / "a", retention=Retention(max_events=3, max_age=None), segment_events=2)
    for i in range(4):
        host.lifecycle(f"g{i}")
    first = host.journal.first_seq()
    assert first is not None
    assert first > 1
    with trio.fail_after(30):
        async with publishing(host, nats.url) as publisher:
            await publisher.wait_caught_up()
    messages = await stored(nats.url)
    gap = messages[0].record()
    assert ("hosts.h1.GAP", "gap") == (messages[0].subject, gap["kind"])
    assert {"first_missing": 1, "last_missing": first - 1} == gap["data"]
    assert list(range(first, 13)) == host_seqs(messages, "h1")[1:]
    host.close()
