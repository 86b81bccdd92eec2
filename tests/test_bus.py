"""The trio event bus: ordering, overflow (gap/drop), hooks, statistics, and a stateful model."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from supervisor.bus import (
    CHECKPOINT_EVERY,
    Bus,
    Gap,
    PrepareFailed,
    ReleaseFailed,
    ReleaseTimeout,
    Subscription,
    SubscriptionDropped,
)
from supervisor.errors import RuntimeFailure
from supervisor.events import Event, InvalidEvent


def _drain(sub: Subscription) -> list[Event | Gap]:
    out: list[Event | Gap] = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


def _seqs(items: list[Event | Gap]) -> list[int | tuple[int, int]]:
    return [(i.first_seq, i.last_seq) if isinstance(i, Gap) else i.seq for i in items]


# --------------------------------------------------------------------------- publish & order


def test_publish_assigns_seq_from_first_seq_and_wall_time() -> None:
    """Sequence numbers continue from first_seq; time is the wall clock."""
    bus: Bus[None] = Bus(first_seq=41)
    before = time.time()
    event = bus.publish_nowait("domain", "web1", "STARTED", "BOOTED", {"pid": 7})
    after = time.time()
    assert (41, 41) == (event.seq, bus.last_seq)
    assert (True, (("pid", 7),)) == (before <= event.time <= after, event.data)
    assert "42 web1 REBOOT" == bus.publish_nowait("domain", "web1", "REBOOT").line()


def test_invalid_event_is_refused_and_consumes_no_seq() -> None:
    """An undefined triple raises InvalidEvent; nothing is delivered, seq is not used up."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s")
    with pytest.raises(InvalidEvent):
        bus.publish_nowait("domain", "w", "STARTED", "PAUSED")
    assert ([], 0) == (_drain(sub), bus.last_seq)


async def test_all_subscribers_see_the_same_order() -> None:
    """Concurrent subscribers each receive every event in the global order."""
    bus: Bus[None] = Bus()
    got: dict[str, list[int]] = {}

    async def consume(sub: Subscription) -> None:
        async with sub:
            got[sub.name] = [item.seq async for item in sub if isinstance(item, Event)]

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(consume, bus.subscribe(f"s{i}"))
            for n in range(300):
                bus.publish_nowait("domain", f"g{n % 3}", "STARTED", "BOOTED")
                if n % 7 == 0:
                    await trio.lowlevel.checkpoint()
            bus.close()
    expected = list(range(1, 301))
    assert {f"s{i}": expected for i in range(4)} == got


def test_filters_by_kind_and_name() -> None:
    """kinds and names restrict what a subscriber receives; None in names admits unnamed."""
    bus: Bus[None] = Bus()
    nets = bus.subscribe("nets", kinds=["network"])
    web = bus.subscribe("web", names=["web1"])
    sup = bus.subscribe("sup", names=[None])  # type: ignore[list-item]
    bus.publish_nowait("domain", "web1", "STARTED", "BOOTED")
    bus.publish_nowait("network", "nat", "STARTED")
    bus.publish_nowait("domain", "db", "STARTED", "BOOTED")
    bus.publish_nowait("supervisor", None, "STARTED")
    assert ([2], [1], [4]) == (_seqs(_drain(nets)), _seqs(_drain(web)), _seqs(_drain(sup)))


# --------------------------------------------------------------------------- overflow


def test_gap_marker_has_exact_range_and_position() -> None:
    """Missed events become one Gap placed before the next event that fits."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("slow", buffer=3)
    for _ in range(5):
        bus.publish_nowait("domain", "w", "REBOOT")
    assert [1] == _seqs([sub.receive_nowait()])
    bus.publish_nowait("domain", "w", "REBOOT")  # seq 6 fits again
    assert [2, 3, (4, 5), 6] == _seqs(_drain(sub))
    stats = sub.statistics()
    assert (1, 2, 4, 0) == (stats.gaps, stats.missed, stats.delivered, stats.buffered)


def test_gap_is_delivered_once_the_buffer_is_drained() -> None:
    """With nothing published after the overflow, the Gap follows the buffered events."""
    bus: Bus[None] = Bus(first_seq=10)
    sub = bus.subscribe("slow", buffer=2)
    for _ in range(6):
        bus.publish_nowait("domain", "w", "REBOOT")
    assert [10, 11, (12, 15)] == _seqs(_drain(sub))


def test_gap_range_spans_filtered_sequence_numbers() -> None:
    """A gap runs from the first to the last missed seq, including seqs the filter skips."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("w only", buffer=1, names=["w"])
    bus.publish_nowait("domain", "w", "REBOOT")  # 1 buffered
    bus.publish_nowait("domain", "w", "REBOOT")  # 2 missed
    bus.publish_nowait("domain", "x", "REBOOT")  # 3 filtered out
    bus.publish_nowait("domain", "w", "REBOOT")  # 4 missed
    assert [1, (2, 4)] == _seqs(_drain(sub))


def test_drop_mode_disconnects_after_the_buffered_events() -> None:
    """overflow='drop' delivers what was buffered, then raises SubscriptionDropped."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("strict", buffer=2, overflow="drop")
    for _ in range(4):
        bus.publish_nowait("domain", "w", "REBOOT")
    assert [1, 2] == _seqs([sub.receive_nowait(), sub.receive_nowait()])
    with pytest.raises(SubscriptionDropped) as info:
        sub.receive_nowait()
    stats = bus.statistics()
    assert (3, (), 1) == (info.value.first_missed_seq, stats.subscribers, stats.dropped_subscribers)
    assert isinstance(info.value, trio.BrokenResourceError)


async def test_drop_mode_ends_async_iteration_with_the_error() -> None:
    """A parked async-for reader of a dropped subscription gets SubscriptionDropped."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("strict", buffer=1, overflow="drop")
    seen: list[int | str] = []

    async def reader() -> None:
        try:
            async for item in sub:
                assert isinstance(item, Event)
                seen.append(item.seq)
        except SubscriptionDropped as exc:
            seen.append(f"dropped at {exc.first_missed_seq}")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                bus.publish_nowait("domain", "w", "REBOOT")
    assert [1, "dropped at 2"] == seen


async def test_publisher_never_blocks_on_a_subscriber_that_never_reads() -> None:
    """A reader gets all events while a never-reading subscriber just records a gap."""
    bus: Bus[None] = Bus()
    lazy = bus.subscribe("lazy", buffer=10)
    total = 5000
    seen: list[int] = []

    async def reader(sub: Subscription) -> None:
        async for item in sub:
            assert isinstance(item, Event)
            seen.append(item.seq)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, bus.subscribe("eager", buffer=total))
            for _ in range(total):
                bus.publish_nowait("domain", "w", "REBOOT")
            bus.close()
    assert (list(range(1, total + 1)), [*range(1, 11), (11, total)]) == (
        seen,
        _seqs(_drain(lazy)),
    )


async def test_parked_receive_is_woken_by_publish_and_cancellable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """receive() waits for the next event; a parked receive can be cancelled cleanly."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s")
    with trio.move_on_after(1) as scope:
        await sub.receive()
    assert (True, False) == (scope.cancelled_caught, sub.statistics().waiting)
    got: list[Event | Gap] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            got.append(await sub.receive())

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert sub.statistics().waiting
        bus.publish_nowait("domain", "w", "REBOOT")
    assert [1] == _seqs(got)


async def test_async_for_honours_cancellation_within_a_burst() -> None:
    """A consumer draining a long burst is still cancellable within CHECKPOINT_EVERY items."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s", buffer=10_000)
    for _ in range(5000):
        bus.publish_nowait("domain", "w", "REBOOT")
    count = 0
    with trio.CancelScope() as scope:
        scope.cancel()
        async for _ in sub:
            count += 1
    assert (True, True) == (scope.cancelled_caught, count <= CHECKPOINT_EVERY)


async def test_two_receivers_on_one_subscription_are_refused() -> None:
    """Only one task may wait on a subscription at a time."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await sub.receive()
        nursery.cancel_scope.cancel()


async def test_leaving_async_with_unsubscribes() -> None:
    """Exiting the subscription's async-with detaches it from the bus."""
    bus: Bus[None] = Bus()
    async with bus.subscribe("s") as sub:
        assert ("s",) == tuple(s.name for s in bus.statistics().subscribers)
    bus.publish_nowait("domain", "w", "REBOOT")
    assert ((), []) == (bus.statistics().subscribers, [i async for i in sub])


async def test_close_ends_iteration_after_draining_and_refuses_publishing() -> None:
    """bus.close(): readers finish the buffer then stop; later publish/subscribe raise."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s")
    bus.publish_nowait("domain", "w", "REBOOT")
    bus.close()
    assert [1] == _seqs([i async for i in sub])
    with pytest.raises(trio.EndOfChannel):
        await sub.receive()
    with pytest.raises(trio.ClosedResourceError):
        bus.publish_nowait("domain", "w", "REBOOT")
    with pytest.raises(trio.ClosedResourceError):
        bus.subscribe("late")


def test_subscribe_validates_arguments() -> None:
    """A zero buffer or an unknown overflow mode is refused."""
    bus: Bus[None] = Bus()
    with pytest.raises(ValueError, match="buffer"):
        bus.subscribe("s", buffer=0)
    with pytest.raises(ValueError, match="overflow"):
        bus.subscribe("s", overflow="block")  # type: ignore[arg-type]


async def test_publish_is_publish_nowait_plus_checkpoint() -> None:
    """The async publish delivers like publish_nowait and returns the event."""
    bus: Bus[None] = Bus()
    sub = bus.subscribe("s")
    event = await bus.publish("network", "nat", "STOPPED")
    assert ("1 net:nat STOPPED", [1]) == (event.line(), _seqs(_drain(sub)))


# --------------------------------------------------------------------------- hooks


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def hooks(self, bus: Bus[str], name: str, order: int, *, fail_prepare: bool = False) -> None:
        async def prepare(ctx: str) -> None:
            await trio.lowlevel.checkpoint()
            self.calls.append(f"prepare {name} {ctx}")
            if fail_prepare:
                raise OSError(f"{name} cannot")

        async def release(ctx: str) -> None:
            await trio.lowlevel.checkpoint()
            self.calls.append(f"release {name} {ctx}")

        bus.add_hooks(name, prepare=prepare, release=release, order=order)


async def test_prepare_runs_in_order_and_release_in_reverse() -> None:
    """Lower order prepares first, ties in registration order; release is the reverse."""
    bus: Bus[str] = Bus()
    rec = _Recorder()
    rec.hooks(bus, "sched", 20)
    rec.hooks(bus, "net", 10)
    rec.hooks(bus, "cgroup", 10)
    await bus.run_prepare("g1")
    await bus.run_release("g1")
    names = ["net", "cgroup", "sched"]
    expected = [f"prepare {n} g1" for n in names] + [f"release {n} g1" for n in reversed(names)]
    assert expected == rec.calls


async def test_prepare_failure_releases_exactly_the_prepared_in_reverse() -> None:
    """A failing prepare undoes the hooks before it, newest first, and raises PrepareFailed."""
    bus: Bus[str] = Bus()
    rec = _Recorder()
    for i, name in enumerate(["a", "b", "c", "d"]):
        rec.hooks(bus, name, i, fail_prepare=(name == "c"))

    async def only_release(ctx: str) -> None:
        rec.calls.append(f"release-only {ctx}")

    bus.add_hooks("r", release=only_release, order=1)  # after b, before c
    with pytest.raises(PrepareFailed) as info:
        await bus.run_prepare("g")
    expected = [
        "prepare a g",
        "prepare b g",
        "prepare c g",
        "release-only g",
        "release b g",
        "release a g",
    ]
    assert expected == rec.calls
    err = info.value
    assert ("c", OSError, (), True) == (
        err.hook,
        type(err.cause),
        err.release_errors,
        isinstance(err, RuntimeFailure),
    )


async def test_cancelled_prepare_still_releases_and_propagates_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling run_prepare undoes the prepared hooks (shielded) and stays a cancellation."""
    bus: Bus[str] = Bus()
    rec = _Recorder()
    rec.hooks(bus, "a", 0)

    async def hang(ctx: str) -> None:
        await trio.sleep_forever()

    bus.add_hooks("slow", prepare=hang, order=1)
    with trio.move_on_after(5) as scope:
        await bus.run_prepare("g")
    assert (True, ["prepare a g", "release a g"]) == (scope.cancelled_caught, rec.calls)


async def test_release_collects_errors_and_timeouts_and_runs_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run_release runs every hook despite failures and hangs, then raises them all."""
    bus: Bus[str] = Bus()
    ran: list[str] = []

    async def ok(ctx: str) -> None:
        ran.append("ok")

    async def boom(ctx: str) -> None:
        ran.append("boom")
        raise ValueError("boom")

    async def hang(ctx: str) -> None:
        ran.append("hang")
        await trio.sleep_forever()

    bus.add_hooks("first", release=ok, order=0)
    bus.add_hooks("second", release=boom, order=1)
    bus.add_hooks("third", release=hang, order=2)
    with pytest.raises(ReleaseFailed) as info:
        await bus.run_release("g", hook_timeout=3)
    assert ["hang", "boom", "ok"] == ran
    kinds = [(name, type(err)) for name, err in info.value.errors]
    assert [("third", ReleaseTimeout), ("second", ValueError)] == kinds
    assert 3.0 == trio.current_time()


async def test_release_is_shielded_from_an_outer_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An outer cancellation does not interrupt release hooks (they finish)."""
    bus: Bus[str] = Bus()
    done: list[str] = []

    async def slow(ctx: str) -> None:
        await trio.sleep(2)
        done.append(ctx)

    bus.add_hooks("slow", release=slow)
    with trio.move_on_after(1):
        await bus.run_release("g")
    assert ["g"] == done


def test_hook_registration_rules_and_statistics() -> None:
    """Duplicate names and empty pairs are refused; statistics list hooks in run order."""
    bus: Bus[str] = Bus()

    async def noop(ctx: str) -> None:
        return None

    bus.add_hooks("net", prepare=noop, release=noop, order=5)
    bus.add_hooks("journal", release=noop, order=1)
    with pytest.raises(ValueError, match="already"):
        bus.add_hooks("net", prepare=noop)
    with pytest.raises(ValueError, match="give prepare"):
        bus.add_hooks("empty")
    hooks = [(h.name, h.order, h.prepare, h.release) for h in bus.statistics().hooks]
    assert [("journal", 1, False, True), ("net", 5, True, True)] == hooks
    bus.remove_hooks("journal")
    with pytest.raises(KeyError):
        bus.remove_hooks("journal")
    assert ["net"] == [h.name for h in bus.statistics().hooks]


# --------------------------------------------------------------------------- stateful model


class _SubModel:
    """A subscriber as a list of what it should still receive; independent of the bus code."""

    def __init__(self, buffer: int, overflow: str, names: frozenset[str] | None) -> None:
        self.buffer = buffer
        self.overflow = overflow
        self.names = names
        self.items: list[int | tuple[int, int]] = []
        self.pending: list[int] = []  # missed seqs not yet turned into a marker
        self.dropped_at: int | None = None
        self.closed = False

    def offer(self, seq: int, name: str) -> None:
        if self.closed or self.dropped_at is not None:
            return
        if self.names is not None and name not in self.names:
            return
        if sum(1 for i in self.items if isinstance(i, int)) >= self.buffer:
            if self.overflow == "drop":
                self.dropped_at = seq
            else:
                self.pending.append(seq)
            return
        if self.pending:
            self.items.append((self.pending[0], self.pending[-1]))
            self.pending = []
        self.items.append(seq)

    def take(self) -> int | tuple[int, int] | str:
        if self.items:
            return self.items.pop(0)
        if self.pending:
            gap = (self.pending[0], self.pending[-1])
            self.pending = []
            return gap
        if self.dropped_at is not None:
            return f"dropped {self.dropped_at}"
        return "closed" if self.closed else "empty"


class BusMachine(RuleBasedStateMachine):
    """publish/subscribe/read/unsubscribe against per-subscriber queue models."""

    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.bus: Bus[None] = Bus(first_seq=5)
        self.models: dict[int, _SubModel] = {}
        self.handles: dict[int, Subscription] = {}
        self.next_seq = 5

    @rule(
        target=subs,
        buffer=st.integers(1, 4),
        overflow=st.sampled_from(["gap", "drop"]),
        names=st.none() | st.just(frozenset({"a"})),
    )
    def subscribe(self, buffer: int, overflow: str, names: frozenset[str] | None) -> int:
        sub = self.bus.subscribe(
            f"s{len(self.handles)}",
            buffer=buffer,
            overflow=overflow,  # type: ignore[arg-type]
            names=names,
        )
        key = len(self.handles)
        self.handles[key] = sub
        self.models[key] = _SubModel(buffer, overflow, names)
        return key

    @rule(name=st.sampled_from(["a", "b"]), count=st.integers(1, 6))
    def publish(self, name: str, count: int) -> None:
        for _ in range(count):
            event = self.bus.publish_nowait("domain", name, "REBOOT")
            assert self.next_seq == event.seq
            for model in self.models.values():
                model.offer(event.seq, name)
            self.next_seq += 1

    @rule(key=subs, count=st.integers(1, 5))
    def read(self, key: int, count: int) -> None:
        sub, model = self.handles[key], self.models[key]
        for _ in range(count):
            expected = model.take()
            try:
                item = sub.receive_nowait()
                actual: int | tuple[int, int] | str = _seqs([item])[0]
            except trio.WouldBlock:
                actual = "empty"
            except trio.EndOfChannel:
                actual = "closed"
            except SubscriptionDropped as exc:
                actual = f"dropped {exc.first_missed_seq}"
            assert expected == actual

    @rule(key=subs)
    def unsubscribe(self, key: int) -> None:
        self.handles[key].unsubscribe()
        self.models[key].closed = True

    @invariant()
    def statistics_agree(self) -> None:
        stats = self.bus.statistics()
        assert self.next_seq - 1 == stats.last_seq
        attached = {s.name for s in stats.subscribers}
        for key, model in self.models.items():
            expected_attached = not model.closed and model.dropped_at is None
            assert expected_attached == (f"s{key}" in attached)
            buffered = sum(1 for i in model.items if isinstance(i, int))
            assert buffered == self.handles[key].statistics().buffered


TestBusMachine = BusMachine.TestCase
TestBusMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


async def test_sink_sees_every_event_before_subscribers() -> None:
    """A sink is called synchronously, in order, before any subscriber can receive the event."""
    bus: Bus[None] = Bus(first_seq=41)
    seen: list[int] = []
    async with bus.subscribe("s") as sub:
        bus.add_sink(lambda e: seen.append(e.seq))
        first = bus.publish_nowait("domain", "a", "STARTED", "BOOTED")
        assert seen == [41]
        bus.publish_nowait("domain", "a", "STOPPED", "SHUTDOWN")
        assert seen == [41, 42]
        assert (await sub.receive()) == first


async def test_failing_sink_does_not_stop_publishing() -> None:
    """A sink that raises is counted; the event still reaches subscribers."""
    bus: Bus[None] = Bus()

    def broken(_: object) -> None:
        raise OSError("disk full")

    bus.add_sink(broken)
    async with bus.subscribe("s") as sub:
        event = bus.publish_nowait("domain", "a", "STARTED", "BOOTED")
        assert bus.sink_errors == 1
        assert (await sub.receive()) == event
