"""The fleet publisher: the journal is the outbox, JetStream the destination (trio).

Theory of operation
-------------------
The journal already holds every event, durably and in order, before anyone sees it
(docs/events.md); the publisher only has to remember how far the stream has acknowledged it.
That position, the *cursor*, is the last ``seq`` the stream acked, kept in
``STATE_DIR/fleet/cursor.json``. The publisher:

1. waits until the client is connected, checks the stream (creating it if missing), and asks it
   for the newest ``seq`` it holds for this host (:meth:`Broker.last_seq`); it resumes after
   that, or after its cursor when the stream holds nothing of this host
   (:func:`~supervisor.fleet.subjects.resume_after`). Asking
   on every (re)connection, not only at start, means that a publish whose ack was lost in an
   outage is not sent again when the stream has it;
2. publishes the records after the cursor one at a time, each with ``Nats-Msg-Id =
   <host>:<seq>``, waiting for each ack before sending the next (a batch of them per crossing
   to the asyncio thread), and moves the cursor only over acknowledged records. One at a
   time because JetStream orders what one connection sends, but a
   pipelined publish that fails (a cluster's stream leader changing) while the next one
   succeeds would put the host's events out of order; lifecycle events come at a rate far
   below what acked one-at-a-time publishing sustains (bench/bench_fleet.py);
3. writes the cursor once per batch of acked records (a stale cursor costs repeats, which the
   stream drops by message id, and step 1 corrects it anyway);
4. on any failure (no server, a timeout, an error ack) goes back to 1 after a back-off.

A broker outage therefore never reaches the supervisor: the journal's listener only sets a
trio event, the publisher runs in its own task, and nats-py on its own thread
(:mod:`supervisor.fleet.bridge`). The publisher lags instead, and says so in
:meth:`FleetPublisher.statistics` (``vsv info``, the API's ``statistics``).

Records that the journal's retention removed before they were published come out of the
journal as a gap record, and are published as such (``hosts.<host>.GAP``): a consumer sees
the hole named, never a silent one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.fleet.broker import BatchResult, BrokerUnavailable
from supervisor.fleet.subjects import (
    FleetConfigError,
    StreamShape,
    cursor_document,
    msg_id,
    parse_cursor,
    payload_of,
    resume_after,
    subject_of,
)
from supervisor.journal import Entry, Journal

_log = logging.getLogger("vsv.fleet")

#: records read from the journal and published per round (the cursor is written per round)
BATCH = 256
#: back-off after a failure: from the first value, doubled up to the second (seconds)
BACKOFF = (0.2, 5.0)
#: a stream that does not fit (or a host id in use elsewhere) is checked again this often
CONFIG_RETRY = 30.0


class Broker(Protocol):
    """What the publisher needs of a broker (:class:`~supervisor.fleet.broker.NatsBroker`)."""

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout: float = ...) -> None: ...

    async def ensure_stream(self) -> StreamShape: ...

    async def last_seq(self, host: str) -> int: ...

    async def publish_batch(self, items: list[tuple[str, bytes, str]]) -> BatchResult: ...


@attrs.frozen
class PublisherStatistics:
    """A snapshot of the publisher, for ``vsv info`` and the API's ``statistics``."""

    host: str
    stream: str
    state: str  # connecting, publishing, down, error
    connected: bool
    published_seq: int  # the cursor: the last seq the stream acknowledged
    journal_seq: int
    lag_events: int  # journal records not yet acknowledged
    lag_seconds: float  # how long the oldest of them has waited (0 when caught up)
    published: int  # acks received since the supervisor started
    duplicates: int  # of them, acks for a message the stream already had
    outages: int  # times the publisher lost the broker
    last_error: str | None


@attrs.define(eq=False)
class FleetPublisher:
    """Publishes the journal to the stream; run :meth:`run` as a task."""

    journal: Journal
    broker: Broker
    host: str
    stream: str
    cursor_path: Path
    batch: int = BATCH
    clock: Callable[[], float] = time.monotonic
    state: str = "connecting"
    last_error: str | None = None
    _acked: int = 0
    _published: int = 0
    _duplicates: int = 0
    _outages: int = 0
    _behind_since: float | None = None
    _wake: trio.Event = attrs.Factory(trio.Event)
    _progress: trio.Event = attrs.Factory(trio.Event)

    def _now(self) -> float:
        return self.clock()

    # ------------------------------------------------------------------------ the task

    async def run(
        self, *, task_status: trio.TaskStatus[FleetPublisher] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish until cancelled; never raises for a broker's failure."""
        try:
            data: bytes | None = self.cursor_path.read_bytes()
        except OSError:
            data = None
        cursor = parse_cursor(data, self.host, self.stream)
        self._acked = cursor or 0
        if self._acked < self.journal.last_seq():
            self._behind_since = self._now()
        remove = self.journal.add_listener(self._on_append)
        task_status.started(self)
        backoff = BACKOFF[0]
        try:
            while True:
                try:
                    await self._connect(cursor)
                    backoff = BACKOFF[0]
                    await self._publish_forever()
                except BrokerUnavailable as exc:
                    if self.state != "down":
                        self._outages += 1
                        _log.warning("fleet: broker unavailable, publishing lags: %s", exc)
                    self.state = "down"
                    self.last_error = str(exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF[1])
                except FleetConfigError as exc:
                    if self.last_error != str(exc):
                        _log.error("fleet: not publishing: %s", exc)
                    self.state = "error"
                    self.last_error = str(exc)
                    await trio.sleep(CONFIG_RETRY)
                cursor = self._acked
        finally:
            remove()

    async def _connect(self, cursor: int | None) -> None:
        self.state = "connecting"
        await self.broker.wait_connected()
        await self.broker.ensure_stream()
        stream_last = await self.broker.last_seq(self.host)
        self._acked = resume_after(cursor, stream_last, self.journal.last_seq(), self.host)
        if cursor is not None and self._acked < cursor:
            _log.warning(
                "fleet: stream %s holds this host's events only up to %d, the cursor says %d: "
                "publishing them again",
                self.stream,
                self._acked,
                cursor,
            )
        self._save_cursor()
        self.state = "publishing"
        self.last_error = None

    async def _publish_forever(self) -> None:
        while True:
            entries = await self._next_batch()
            items = [
                (
                    subject_of(e.record, self.host),
                    payload_of(e.record, self.host),
                    msg_id(self.host, e.seq),
                )
                for e in entries
            ]
            result = await self.broker.publish_batch(items)
            if result.acked:
                self._acked = entries[result.acked - 1].seq
                self._published += result.acked
                self._duplicates += result.duplicates
                self._save_cursor()
            if result.error is not None:
                raise result.error
            if self._acked >= self.journal.last_seq():
                self._behind_since = None
            self._progress.set()
            self._progress = trio.Event()

    async def _next_batch(self) -> list[Entry]:
        while True:
            if self._acked < self.journal.last_seq():
                read = self.journal.entries_reader(self._acked, limit=self.batch)
                if read is None:
                    entries = self.journal.entries_since(self._acked, limit=self.batch)
                else:
                    entries = await trio.to_thread.run_sync(read)
                if entries:
                    return entries
            self._wake = trio.Event()
            await self._wake.wait()

    def _on_append(self, seq: int) -> None:
        """The journal's listener: called for every append, in the supervisor's path; cheap."""
        if self._behind_since is None:
            self._behind_since = self._now()
        self._wake.set()

    def _save_cursor(self) -> None:
        from supervisor.store import atomic_write

        try:
            self.cursor_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(
                self.cursor_path,
                cursor_document(self.host, self.stream, self._acked),
                mode=0o600,
                durable=False,
            )
        except (OSError, RuntimeFailure) as exc:
            # a cursor that is not written is stale, not wrong: the stream knows where we are
            _log.warning("fleet: cannot write the cursor: %s", exc)

    # ------------------------------------------------------------------------ views

    @property
    def published_seq(self) -> int:
        return self._acked

    def caught_up(self) -> bool:
        return self._acked >= self.journal.last_seq()

    async def wait_caught_up(self) -> None:
        """Return once every record journaled so far is acknowledged by the stream."""
        target = self.journal.last_seq()
        while self._acked < target:
            await self._progress.wait()

    def statistics(self) -> PublisherStatistics:
        last = self.journal.last_seq()
        lag = max(0, last - self._acked)
        waited = 0.0
        if lag and self._behind_since is not None:
            waited = max(0.0, self._now() - self._behind_since)
        return PublisherStatistics(
            host=self.host,
            stream=self.stream,
            state=self.state,
            connected=self.broker.connected,
            published_seq=self._acked,
            journal_seq=last,
            lag_events=lag,
            lag_seconds=round(waited, 3),
            published=self._published,
            duplicates=self._duplicates,
            outages=self._outages,
            last_error=self.last_error,
        )


async def run_publisher(
    journal: Journal,
    *,
    servers: tuple[str, ...],
    host: str,
    stream: str,
    state_dir: Path,
    creds: str | None = None,
    replicas: int = 1,
    task_status: trio.TaskStatus[FleetPublisher] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a publisher, with its asyncio thread and NATS client, until cancelled.

    Reports the :class:`FleetPublisher` (for statistics) once it runs. On cancellation the
    client is closed and the thread joined, shielded and bounded, so a broker that does not
    answer cannot hold up the supervisor's exit.
    """
    from supervisor.fleet.bridge import open_loop_thread
    from supervisor.fleet.broker import BrokerSettings, NatsBroker

    settings = BrokerSettings(
        servers=servers, stream=stream, creds=creds, name=f"vsv {host}", replicas=replicas
    )
    async with open_loop_thread("vsv-nats") as bridge:
        broker = NatsBroker(bridge, settings)
        publisher = FleetPublisher(
            journal=journal,
            broker=broker,
            host=host,
            stream=stream,
            cursor_path=cursor_path(state_dir, stream),
        )
        try:
            await publisher.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await broker.close()


def cursor_path(state_dir: Path, stream: str) -> Path:
    """Where the publisher keeps its cursor for ``stream``."""
    return state_dir / "fleet" / f"cursor-{stream}.json"
