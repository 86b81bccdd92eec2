"""The event bus: one global order of events, awaited hooks, and bounded notifications (trio).

Why two kinds of delivery. Some subscribers must act *before* a guest runs and *after* it is gone
(network plumbing, cgroup limits): they register **hooks**, which the runner awaits in a fixed
order and which may fail and abort a start. Everyone else (journal, API event streams, the
scheduler's bookkeeping) only needs to *hear* what happened: they **subscribe** to notifications,
each with its own bounded buffer, so the supervisor never waits for a slow consumer.

Ordering. :meth:`Bus.publish_nowait` is synchronous: it assigns the next sequence number and the
wall-clock time, builds the frozen :class:`~supervisor.events.Event` and appends it to every
matching subscriber's buffer before returning. Every subscriber therefore sees the same global
order (filtered by its ``kinds``/``names``). ``first_seq`` is configurable so a journal can keep
numbering across supervisor restarts.

Overflow. A subscriber whose buffer holds ``buffer`` events misses the next ones:

- ``overflow='gap'``: the missed events are summarised as one :class:`Gap` ``(first_seq,
  last_seq)`` placed where they would have been, i.e. delivered after the events already buffered
  and before the next event that fits (or as soon as the buffer has been drained, if nothing else
  arrives). The range runs from the first to the last missed sequence number; numbers in between
  that the subscriber's filter would have skipped anyway are inside the range too. The consumer
  can fetch the range from the journal.
- ``overflow='drop'``: the subscriber is disconnected at the first missed event: it still gets
  what was buffered, then iteration raises :class:`SubscriptionDropped` carrying the first
  missed sequence number.

Speed. Each subscriber is a deque plus at most one parked task; a publish is an append per
subscriber and a reschedule only for subscribers that are actually waiting. A receive that finds
an item in the buffer returns it without a scheduling round-trip (it still honours cancellation),
so a busy consumer drains its buffer in one go. See bench/bench_bus.py.
"""

from __future__ import annotations

import logging
import time as _time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import attrs
import trio

from supervisor.errors import RuntimeFailure, VsvError
from supervisor.events import CODES, DataPairs, Event, EventKind, codes_of, to_data

CtxT = TypeVar("CtxT")
Overflow = Literal["gap", "drop"]
Hook = Callable[[CtxT], Awaitable[object]]
_log = logging.getLogger("vsv.bus")

#: how long one release hook may take by default (seconds), also during a prepare rollback
DEFAULT_RELEASE_TIMEOUT = 10.0
#: ``async for`` checks for cancellation at least once per this many items
CHECKPOINT_EVERY = 64


# --------------------------------------------------------------------------- values and errors


@attrs.frozen
class Gap:
    """Marker: the subscriber missed the events numbered ``first_seq..last_seq`` (inclusive)."""

    first_seq: int
    last_seq: int


class SubscriptionDropped(VsvError, trio.BrokenResourceError):
    """The subscriber overflowed with ``overflow='drop'`` and was disconnected.

    ``first_missed_seq`` is where a consumer resumes from the journal.
    """

    def __init__(self, name: str, first_missed_seq: int) -> None:
        self.name = name
        self.first_missed_seq = first_missed_seq
        super().__init__(
            f"subscriber {name!r} was too slow and was disconnected; "
            f"first missed event: {first_missed_seq}"
        )


class PrepareFailed(RuntimeFailure):
    """A prepare hook failed; the hooks that had prepared were released (reverse order).

    ``release_errors`` lists ``(hook name, error)`` for release hooks that failed during that
    rollback; the cause is also chained as ``__cause__``.
    """

    def __init__(
        self,
        hook: str,
        cause: BaseException,
        release_errors: tuple[tuple[str, BaseException], ...] = (),
    ) -> None:
        self.hook = hook
        self.cause = cause
        self.release_errors = release_errors
        msg = f"prepare hook {hook!r} failed: {cause!r}"
        if release_errors:
            msg += "; and during rollback: " + ", ".join(
                f"{name}: {err!r}" for name, err in release_errors
            )
        super().__init__(msg)


class ReleaseFailed(RuntimeFailure):
    """Some release hooks failed or timed out; all of them were run regardless."""

    def __init__(self, errors: tuple[tuple[str, BaseException], ...]) -> None:
        self.errors = errors
        super().__init__(
            "release hooks failed: " + ", ".join(f"{name}: {err!r}" for name, err in errors)
        )


class ReleaseTimeout(VsvError, TimeoutError):
    """A release hook did not finish within its deadline and was cancelled."""


@attrs.frozen
class SubscriptionStatistics:
    """One subscriber's counters (see :meth:`Subscription.statistics`)."""

    name: str
    buffer: int
    overflow: Overflow
    buffered: int  # events waiting in the buffer (gap markers not counted)
    delivered: int  # events handed to the consumer
    gaps: int  # gap episodes (markers created)
    missed: int  # events missed because the buffer was full
    dropped: bool
    closed: bool
    waiting: bool  # a task is parked in receive()


@attrs.frozen
class HookStatistics:
    """A registered hook pair."""

    name: str
    order: int
    prepare: bool
    release: bool


@attrs.frozen
class BusStatistics:
    """A snapshot of the bus."""

    last_seq: int
    published: int
    subscribers: tuple[SubscriptionStatistics, ...]
    hooks: tuple[HookStatistics, ...]
    dropped_subscribers: int  # subscribers disconnected for overflowing so far
    closed: bool


@attrs.frozen
class _HookEntry(Generic[CtxT]):
    name: str
    order: int
    serial: int
    prepare: Hook[CtxT] | None
    release: Hook[CtxT] | None


# --------------------------------------------------------------------------- subscription


def _abort_wait(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


class Subscription:
    """A subscriber's bounded buffer; ``async with`` it and ``async for`` over it.

    Created (and already receiving) by :meth:`Bus.subscribe`; leaving the ``async with`` block or
    calling :meth:`unsubscribe` detaches it. Iteration yields :class:`Event` and :class:`Gap`
    items; it ends when the subscription is closed (by the consumer or by :meth:`Bus.close`)
    after the buffer has been drained, and raises :class:`SubscriptionDropped` after a drop.
    """

    __slots__ = (
        "_bus",
        "_closed",
        "_delivered",
        "_dropped_at",
        "_fast",
        "_gap_first",
        "_gap_last",
        "_gaps",
        "_missed",
        "_nevents",
        "_queue",
        "_waiter",
        "buffer",
        "kinds",
        "name",
        "names",
        "overflow",
    )

    def __init__(
        self,
        bus: Bus[Any],
        name: str,
        buffer: int,
        overflow: Overflow,
        kinds: frozenset[str] | None,
        names: frozenset[str] | None,
    ) -> None:
        self._bus = bus
        self.name = name
        self.buffer = buffer
        self.overflow = overflow
        self.kinds = kinds
        self.names = names
        self._queue: deque[Event | Gap] = deque()
        self._nevents = 0
        # a pending gap is the range gap_first..gap_last; none pending while gap_last < gap_first
        self._gap_first = 0
        self._gap_last = -1
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False
        self._dropped_at: int | None = None
        self._delivered = 0
        self._fast = 0
        self._gaps = 0
        self._missed = 0

    # -- producer side (called by the bus, synchronous, never blocks)

    def _offer(self, event: Event) -> None:
        if self._nevents >= self.buffer:
            self._missed += 1
            if self.overflow == "drop":
                self._dropped_at = event.seq
                self._bus._detach(self)
                self._wake()
            elif self._gap_last < self._gap_first:
                self._gap_first = self._gap_last = event.seq
                self._gaps += 1
            else:
                self._gap_last = event.seq
            return
        if self._gap_last >= self._gap_first:
            self._queue.append(Gap(self._gap_first, self._gap_last))
            self._gap_last = self._gap_first - 1
        self._queue.append(event)
        self._nevents += 1
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None

    # -- consumer side

    def receive_nowait(self) -> Event | Gap:
        """The next item; :class:`trio.WouldBlock` if none yet.

        Raises :class:`trio.EndOfChannel` once closed and drained, :class:`SubscriptionDropped`
        once dropped and drained.
        """
        queue = self._queue
        if queue:
            item = queue.popleft()
            if type(item) is Event:
                self._nevents -= 1
                self._delivered += 1
            return item
        if self._gap_last >= self._gap_first:
            gap = Gap(self._gap_first, self._gap_last)
            self._gap_last = self._gap_first - 1
            return gap
        if self._dropped_at is not None:
            raise SubscriptionDropped(self.name, self._dropped_at)
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event | Gap:
        """Wait for the next item (see :meth:`receive_nowait` for the end conditions)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                pass
            if self._waiter is not None:
                raise trio.BusyResourceError(f"another task is receiving from {self.name!r}")
            self._waiter = trio.lowlevel.current_task()
            try:
                await trio.lowlevel.wait_task_rescheduled(_abort_wait)
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[Event | Gap]:
        return self

    async def __anext__(self) -> Event | Gap:
        # Fast path: an item already buffered is returned without touching trio, so a consumer
        # drains a burst cheaply. Every CHECKPOINT_EVERY-th item goes through receive(), which
        # checks for cancellation; the task yields to the scheduler when its buffer is empty, so
        # it holds the CPU for at most one buffer's worth of items.
        queue = self._queue
        if queue and self._fast < CHECKPOINT_EVERY:
            item = queue.popleft()
            if type(item) is Event:
                self._nevents -= 1
                self._delivered += 1
            self._fast += 1
            return item
        self._fast = 0
        try:
            item = await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        return item

    def unsubscribe(self) -> None:
        """Detach from the bus; buffered items can still be read, then iteration ends."""
        self._bus._detach(self)
        self._closed = True
        self._wake()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unsubscribe()

    def statistics(self) -> SubscriptionStatistics:
        """This subscriber's counters."""
        return SubscriptionStatistics(
            name=self.name,
            buffer=self.buffer,
            overflow=self.overflow,
            buffered=self._nevents,
            delivered=self._delivered,
            gaps=self._gaps,
            missed=self._missed,
            dropped=self._dropped_at is not None,
            closed=self._closed,
            waiting=self._waiter is not None,
        )


# --------------------------------------------------------------------------- bus


class Bus(Generic[CtxT]):
    """Events in one global order, fanned out to subscribers; prepare/release hooks.

    ``CtxT`` is whatever the runner passes to hooks (a per-guest context); the bus never looks
    inside it.
    """

    def __init__(self, first_seq: int = 1) -> None:
        if first_seq < 0:
            raise ValueError(f"first_seq must be >= 0, got {first_seq}")
        self._next_seq = first_seq
        self._published = 0
        self._subs: tuple[Subscription, ...] = ()
        self._hooks: list[_HookEntry[CtxT]] = []
        self._serial = 0
        self._closed = False
        self._dropped = 0
        self._sinks: tuple[Callable[[Event], object], ...] = ()
        self.sink_errors = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the last event published (``first_seq - 1`` before any)."""
        return self._next_seq - 1

    # -- notifications

    def publish_nowait(
        self,
        kind: EventKind,
        name: str | None,
        type: str,
        detail: str | None = None,
        data: DataPairs | Mapping[str, object] | Iterable[tuple[str, object]] = (),
    ) -> Event:
        """Number, stamp and fan out one event; never blocks, returns the event.

        Raises :class:`~supervisor.events.InvalidEvent` for a triple libvirt does not define
        (nothing is published then) and :class:`trio.ClosedResourceError` after :meth:`close`.
        """
        if (kind, type, detail) not in CODES:
            codes_of(kind, type, detail)  # raises with a helpful message
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        pairs: DataPairs = to_data(data) if data else ()
        seq = self._next_seq
        self._next_seq = seq + 1
        self._published += 1
        event = Event(seq, _time.time(), kind, name, type, detail, pairs)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                # a sink (the journal) that fails must not stop the supervisor's own work;
                # the failure is counted and logged, subscribers still get the event
                self.sink_errors += 1
                _log.exception("bus sink %r failed for event %d", sink, seq)
        for sub in self._subs:
            if (sub.kinds is None or kind in sub.kinds) and (
                sub.names is None or name in sub.names
            ):
                sub._offer(event)
        return event

    async def publish(
        self,
        kind: EventKind,
        name: str | None,
        type: str,
        detail: str | None = None,
        data: DataPairs | Mapping[str, object] | Iterable[tuple[str, object]] = (),
    ) -> Event:
        """:meth:`publish_nowait` followed by a checkpoint (for loops that publish a lot)."""
        event = self.publish_nowait(kind, name, type, detail, data)
        await trio.lowlevel.checkpoint()
        return event

    def add_sink(self, sink: Callable[[Event], object]) -> None:
        """Call ``sink(event)`` synchronously for every event, after numbering, before fan-out.

        For the durable journal: an event is on disk before any subscriber (or API stream) can
        see it, and in exactly the bus's order. A sink must be quick and must not publish.
        """
        self._sinks = (*self._sinks, sink)

    def subscribe(
        self,
        name: str,
        *,
        buffer: int = 1000,
        overflow: Overflow = "gap",
        kinds: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
    ) -> Subscription:
        """A new subscriber, receiving every event published from now on that matches.

        ``kinds``/``names`` restrict by event kind and by domain/network name (None: all).
        Events with no name (supervisor events) pass a ``names`` filter only if it contains None.
        """
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        if overflow not in ("gap", "drop"):
            raise ValueError(f"overflow must be 'gap' or 'drop', got {overflow!r}")
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        sub = Subscription(
            self,
            name,
            buffer,
            overflow,
            None if kinds is None else frozenset(kinds),
            None if names is None else frozenset(names),
        )
        self._subs = (*self._subs, sub)
        return sub

    def _detach(self, sub: Subscription) -> None:
        if sub in self._subs:
            if sub._dropped_at is not None:
                self._dropped += 1
            self._subs = tuple(s for s in self._subs if s is not sub)

    def close(self) -> None:
        """No more events: subscribers end after draining; later publishes raise."""
        self._closed = True
        for sub in self._subs:
            sub._closed = True
            sub._wake()
        self._subs = ()

    # -- hooks

    def add_hooks(
        self,
        name: str,
        *,
        prepare: Hook[CtxT] | None = None,
        release: Hook[CtxT] | None = None,
        order: int = 0,
    ) -> None:
        """Register a prepare/release pair; lower ``order`` prepares first and releases last.

        Hooks with equal order run in registration order. A release hook must tolerate being
        called for a context it did not prepare (``run_release`` after a supervisor restart).
        """
        if any(h.name == name for h in self._hooks):
            raise ValueError(f"hooks named {name!r} are already registered")
        if prepare is None and release is None:
            raise ValueError(f"hooks {name!r}: give prepare, release or both")
        self._serial += 1
        self._hooks.append(_HookEntry(name, order, self._serial, prepare, release))
        self._hooks.sort(key=lambda h: (h.order, h.serial))

    def remove_hooks(self, name: str) -> None:
        """Unregister the hooks called ``name`` (KeyError if there are none)."""
        for i, h in enumerate(self._hooks):
            if h.name == name:
                del self._hooks[i]
                return
        raise KeyError(name)

    async def run_prepare(
        self, ctx: CtxT, *, release_timeout: float = DEFAULT_RELEASE_TIMEOUT
    ) -> None:
        """Run every prepare hook in order; on a failure undo and raise :class:`PrepareFailed`.

        The undo runs the release hook of every entry *before* the failing one, in reverse
        order, shielded (each bounded by ``release_timeout``). The failing hook's own release is
        not called: a prepare that fails must clean up its own partial work. If the prepare is
        cancelled, the same undo happens and the cancellation propagates unchanged.
        """
        done: list[_HookEntry[CtxT]] = []
        for hook in list(self._hooks):
            if hook.prepare is not None:
                try:
                    await hook.prepare(ctx)
                except BaseException as exc:
                    errors = await self._release_entries(reversed(done), ctx, release_timeout)
                    if isinstance(exc, Exception):
                        raise PrepareFailed(hook.name, exc, errors) from exc
                    raise
            done.append(hook)

    async def run_release(
        self, ctx: CtxT, *, hook_timeout: float = DEFAULT_RELEASE_TIMEOUT
    ) -> None:
        """Run every release hook in reverse order, shielded, each within ``hook_timeout`` s.

        Failures (and timeouts, as :class:`ReleaseTimeout`) do not stop the others; they are
        raised together afterwards as :class:`ReleaseFailed`.
        """
        errors = await self._release_entries(reversed(list(self._hooks)), ctx, hook_timeout)
        if errors:
            raise ReleaseFailed(errors)

    async def _release_entries(
        self, hooks: Iterable[_HookEntry[CtxT]], ctx: CtxT, hook_timeout: float
    ) -> tuple[tuple[str, BaseException], ...]:
        errors: list[tuple[str, BaseException]] = []
        for hook in hooks:
            if hook.release is None:
                continue
            with trio.CancelScope(
                shield=True, deadline=trio.current_time() + hook_timeout
            ) as scope:
                try:
                    await hook.release(ctx)
                except Exception as exc:
                    errors.append((hook.name, exc))
            if scope.cancelled_caught:
                errors.append(
                    (
                        hook.name,
                        ReleaseTimeout(f"release hook {hook.name!r} took > {hook_timeout}s"),
                    )
                )
        return tuple(errors)

    # -- introspection

    def statistics(self) -> BusStatistics:
        """A frozen snapshot: last seq, published count, subscribers, hooks."""
        return BusStatistics(
            last_seq=self.last_seq,
            published=self._published,
            subscribers=tuple(s.statistics() for s in self._subs),
            hooks=tuple(
                HookStatistics(h.name, h.order, h.prepare is not None, h.release is not None)
                for h in self._hooks
            ),
            dropped_subscribers=self._dropped,
            closed=self._closed,
        )
