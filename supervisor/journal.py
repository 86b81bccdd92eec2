"""The durable event journal: every bus event, in sequence order, on disk.

Theory of operation
-------------------
The bus numbers events; the journal only persists them, so that an outside consumer can resume
from the last sequence number it saw, also across a supervisor restart, and so that a restarted
supervisor continues the numbering (:meth:`Journal.last_seq`).

On disk the journal is a directory of *segments*, JSON-lines files named after the sequence
number of their first record (``seg-00000000000000000001.jsonl``), plus ``state.json`` holding
the highest sequence number ever appended (written when a segment is closed or pruned), so the
numbering keeps rising even when retention has removed every record. Only the newest segment is
written to; it is rotated when it holds ``segment_events`` records.

Crash safety: a record is one line written with a single ``write(2)``. A crash can leave at most
the last line torn (no newline, or not JSON); :meth:`Journal.open` truncates such a tail, so the
next append starts on a clean line.

fsync policy: every append reaches the kernel before :meth:`append` returns (the supervisor
process can die at any moment without losing an appended event). Whether it reaches the disk is
``fsync``: ``"always"`` fsyncs every append (survives a power loss, costs a disk flush per
event), ``"rotate"`` (the default) fsyncs when a segment is closed and at :meth:`close` (a
kernel crash or power loss may lose the last, still open segment's unsynced tail).

Retention removes whole closed segments once every record in them is beyond the limits
(``max_events`` most recent records, ``max_age`` seconds); the decision is the pure function
:func:`segments_to_drop`. A reader asking for records older than what is kept gets an explicit
gap record (:func:`gap_record`) naming the missing range, never a silent hole.

Recent records are also kept in memory (``tail_events``), so live consumers are served without
reading the disk.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

from supervisor.errors import RuntimeFailure

FsyncPolicy = Literal["always", "rotate"]

_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"
_STATE_FILE = "state.json"


class JournalEvent(Protocol):
    """What the journal accepts besides a plain mapping: an event value that can serialise."""

    @property
    def seq(self) -> int: ...

    def to_json_dict(self) -> dict[str, Any]: ...


@attrs.frozen
class Retention:
    """How much of the past the journal keeps; ``None`` means no limit of that kind."""

    max_events: int | None = 100_000
    max_age: float | None = 30 * 24 * 3600.0


@attrs.frozen
class SegmentInfo:
    """What retention needs to know about one segment file, without reading it again."""

    first_seq: int
    last_seq: int  # first_seq - 1 for an empty segment
    last_time: float | None
    path: Path


@attrs.frozen
class Entry:
    """One stored record: its sequence number, its parsed form and its serialised line."""

    seq: int
    record: Mapping[str, Any]
    line: bytes  # the JSON text with the trailing newline


@attrs.frozen
class JournalStatistics:
    """A snapshot for ``/v1/supervisor`` and the benchmarks."""

    first_seq: int | None
    last_seq: int
    segments: int
    tail_events: int
    appended: int
    pruned_segments: int


def segments_to_drop(
    segments: Sequence[SegmentInfo], *, last_seq: int, now: float, retention: Retention
) -> list[SegmentInfo]:
    """The closed segments that retention removes (pure; the newest segment is never removed).

    A segment goes when all its records are older than the ``max_events`` most recent ones, or
    when its newest record is older than ``max_age``. Segments are removed oldest first and only
    as a prefix, so the kept records always form one contiguous range.
    """
    drop: list[SegmentInfo] = []
    for info in segments[:-1]:
        too_many = (
            retention.max_events is not None and info.last_seq <= last_seq - retention.max_events
        )
        too_old = (
            retention.max_age is not None
            and info.last_time is not None
            and info.last_time < now - retention.max_age
        )
        if not (too_many or too_old):
            break
        drop.append(info)
    return drop


def gap_record(first_missing: int, last_missing: int) -> dict[str, Any]:
    """The record a reader gets in place of events that retention removed.

    It has the event shape (so consumers need one code path) with ``kind`` ``"gap"`` and
    ``seq`` the last missing number: a consumer that remembers the last ``seq`` it saw resumes
    after the gap.
    """
    return {
        "seq": last_missing,
        "kind": "gap",
        "domain": None,
        "type": "GAP",
        "detail": "PRUNED",
        "time": None,
        "data": {"first_missing": first_missing, "last_missing": last_missing},
    }


def _segment_name(first_seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{first_seq:020d}{_SEGMENT_SUFFIX}"


def _parse_line(line: bytes) -> Mapping[str, Any] | None:
    """A record, or None for a line that is torn or not a journal record."""
    if not line.endswith(b"\n"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("seq"), int):
        return None
    return value


def _record_time(record: Mapping[str, Any]) -> float | None:
    value = record.get("time")
    return float(value) if isinstance(value, int | float) else None


def _as_record(event: Mapping[str, Any] | JournalEvent) -> Mapping[str, Any]:
    if isinstance(event, Mapping):
        return event
    return event.to_json_dict()


@attrs.define(eq=False)
class Journal:
    """An open journal directory; create it with :meth:`open`.

    Not thread-safe: the supervisor appends and the API reads from the same trio thread.
    Listeners registered with :meth:`add_listener` are called after every append (the API uses
    this to wake its event streams); they must be cheap and must not raise.
    """

    directory: Path
    retention: Retention
    segment_events: int
    fsync: FsyncPolicy
    clock: Callable[[], float]
    _segments: list[SegmentInfo]
    _tail: list[Entry]
    _tail_events: int
    _fd: int
    _active_count: int
    _last_seq: int
    _appended: int = 0
    _pruned: int = 0
    _listeners: list[Callable[[int], None]] = attrs.field(factory=list)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        retention: Retention | None = None,
        segment_events: int = 10_000,
        tail_events: int = 10_000,
        fsync: FsyncPolicy = "rotate",
        clock: Callable[[], float] = time.time,
    ) -> Journal:
        """Open (creating if needed) the journal in ``directory``, repairing a torn last line."""
        path = Path(directory)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            floor = _read_state(path)
            names = sorted(
                p.name
                for p in path.iterdir()
                if p.name.startswith(_SEGMENT_PREFIX) and p.name.endswith(_SEGMENT_SUFFIX)
            )
            segments: list[SegmentInfo] = []
            tail: list[Entry] = []
            for i, name in enumerate(names):
                seg_path = path / name
                first = int(name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)])
                if i == len(names) - 1:
                    entries = _load_active(seg_path)
                    tail.extend(entries[-max(1, tail_events) :])
                    last = entries[-1].seq if entries else first - 1
                    last_time = _record_time(entries[-1].record) if entries else None
                    active_count = len(entries)
                else:
                    last, last_time = _last_of_closed(seg_path, first)
                segments.append(SegmentInfo(first, last, last_time, seg_path))
            last_seq = max([floor] + [s.last_seq for s in segments])
            if not segments:
                seg_path = path / _segment_name(last_seq + 1)
                segments.append(SegmentInfo(last_seq + 1, last_seq, None, seg_path))
                active_count = 0
            fd = os.open(
                segments[-1].path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise RuntimeFailure(f"{path}: cannot open journal: {exc.strerror or exc}") from exc
        journal = cls(
            directory=path,
            retention=retention if retention is not None else Retention(),
            segment_events=max(1, segment_events),
            fsync=fsync,
            clock=clock,
            segments=segments,
            tail=tail,
            tail_events=max(1, tail_events),
            fd=fd,
            active_count=active_count,
            last_seq=last_seq,
        )
        journal.prune()
        return journal

    # --- writing -------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The highest sequence number ever appended (0 for a new journal).

        The bus numbers the next event ``last_seq() + 1``, so numbers keep rising across
        restarts.
        """
        return self._last_seq

    def first_seq(self) -> int | None:
        """The oldest sequence number still kept, or None when the journal holds no record."""
        for info in self._segments:
            if info.last_seq >= info.first_seq:
                return info.first_seq
        return None

    def append(self, event: Mapping[str, Any] | JournalEvent) -> None:
        """Persist one event (its JSON dict form, with the ``seq`` the bus gave it).

        Raises ValueError when ``seq`` does not rise: a journal with holes or repeats would
        break every consumer's resume.
        """
        record = _as_record(event)
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= self._last_seq:
            raise ValueError(f"journal: seq must be an integer above {self._last_seq}, got {seq!r}")
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        if self._active_count >= self.segment_events:
            self._rotate(seq)
        try:
            _write_all(self._fd, line)
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError as exc:
            raise RuntimeFailure(
                f"{self._segments[-1].path}: cannot append: {exc.strerror or exc}"
            ) from exc
        active = self._segments[-1]
        self._segments[-1] = attrs.evolve(active, last_seq=seq, last_time=_record_time(record))
        self._active_count += 1
        self._last_seq = seq
        self._appended += 1
        self._tail.append(Entry(seq, record, line))
        if len(self._tail) >= 2 * self._tail_events:
            del self._tail[: len(self._tail) - self._tail_events]
        for listener in tuple(self._listeners):
            listener(seq)

    def add_listener(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(seq)`` after each append; returns the function that unregisters it."""
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    def prune(self) -> int:
        """Apply retention now; returns how many segments were removed."""
        drop = segments_to_drop(
            self._segments, last_seq=self._last_seq, now=self.clock(), retention=self.retention
        )
        for info in drop:
            try:
                info.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise RuntimeFailure(f"{info.path}: cannot remove: {exc.strerror or exc}") from exc
        if drop:
            del self._segments[: len(drop)]
            self._pruned += len(drop)
            self._write_state()
            first = self.first_seq()
            if first is not None:
                del self._tail[: bisect.bisect_left(self._tail, first, key=_entry_seq)]
        return len(drop)

    def close(self) -> None:
        """Flush the open segment to disk and close it."""
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        self._write_state()

    def _rotate(self, next_seq: int) -> None:
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            path = self.directory / _segment_name(next_seq)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise RuntimeFailure(
                f"{self.directory}: cannot rotate journal: {exc.strerror or exc}"
            ) from exc
        self._segments.append(SegmentInfo(next_seq, next_seq - 1, None, path))
        self._active_count = 0
        self._write_state()
        self.prune()

    def _write_state(self) -> None:
        from supervisor.store import atomic_write

        data = json.dumps({"last_seq": self._last_seq}).encode()
        atomic_write(self.directory / _STATE_FILE, data, mode=0o600)

    # --- reading -------------------------------------------------------------------------

    def read_since(self, since: int, *, limit: int | None = None) -> Iterator[Mapping[str, Any]]:
        """The records with ``seq > since``, oldest first, as parsed dicts.

        When records after ``since`` were removed by retention, the first item is a
        :func:`gap_record` for the missing range.
        """
        for entry in self.entries_since(since, limit=limit):
            yield entry.record

    def entries_since(self, since: int, *, limit: int | None = None) -> list[Entry]:
        """Like :meth:`read_since` but with each record's serialised line, and eager.

        Eager (a list) so that a caller in an event loop holds no open file across awaits;
        ``limit`` bounds the work of one call (a gap record counts as one).
        """
        out: list[Entry] = []
        cap = limit if limit is not None else (1 << 62)
        if cap <= 0 or since >= self._last_seq:
            return out
        first = self.first_seq()
        if first is None or since < first - 1:
            last_missing = (first - 1) if first is not None else self._last_seq
            gap = gap_record(since + 1, last_missing)
            line = (json.dumps(gap, separators=(",", ":"), sort_keys=True) + "\n").encode()
            out.append(Entry(last_missing, gap, line))
            since = last_missing
            if len(out) >= cap or first is None:
                return out
        if self._tail and self._tail[0].seq <= since + 1:
            start = bisect.bisect_right(self._tail, since, key=_entry_seq)
            out.extend(self._tail[start : start + cap - len(out)])
            return out
        for info in self._segments:
            if info.last_seq <= since:
                continue
            for entry in _read_segment(info.path):
                if entry.seq > since:
                    out.append(entry)
                    since = entry.seq
                    if len(out) >= cap:
                        return out
        return out

    def entries_reader(self, since: int, *, limit: int) -> Callable[[], list[Entry]] | None:
        """None when :meth:`entries_since` would answer from memory (call it: it is cheap),
        else a function that reads the same records from the segment files alone.

        For a reader far behind (the fleet publisher after a long broker outage): the function
        touches only the files of the segments as they are now, so it can run on a worker
        thread while the journal goes on appending; segments are append-only, a torn last line
        ends the read, and one removed by retention meanwhile reads as empty (the next call
        then gets the gap record).
        """
        first = self.first_seq()
        if (
            limit <= 0
            or since >= self._last_seq
            or first is None
            or since < first - 1
            or (self._tail and self._tail[0].seq <= since + 1)
        ):
            return None
        paths = [info.path for info in self._segments if info.last_seq > since]

        def read() -> list[Entry]:
            out: list[Entry] = []
            for path in paths:
                for entry in _read_segment(path):
                    if entry.seq > since:
                        out.append(entry)
                        if len(out) >= limit:
                            return out
            return out

        return read

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            first_seq=self.first_seq(),
            last_seq=self._last_seq,
            segments=len(self._segments),
            tail_events=len(self._tail),
            appended=self._appended,
            pruned_segments=self._pruned,
        )


def _entry_seq(entry: Entry) -> int:
    return entry.seq


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_state(directory: Path) -> int:
    try:
        value = json.loads((directory / _STATE_FILE).read_bytes())
    except FileNotFoundError:
        return 0
    except ValueError:
        return 0
    last = value.get("last_seq") if isinstance(value, dict) else None
    return last if isinstance(last, int) else 0


def _read_segment(path: Path) -> Iterator[Entry]:
    try:
        with open(path, "rb") as f:
            for line in f:
                record = _parse_line(line)
                if record is None:
                    return
                yield Entry(record["seq"], record, line)
    except FileNotFoundError:
        return


def _load_active(path: Path) -> list[Entry]:
    """Every record of the newest segment; a torn or garbled tail is cut off the file."""
    entries: list[Entry] = []
    good = 0
    with open(path, "rb") as f:
        for line in f:
            record = _parse_line(line)
            if record is None or (entries and record["seq"] <= entries[-1].seq):
                break
            entries.append(Entry(record["seq"], record, line))
            good += len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return entries


def _last_of_closed(path: Path, first: int) -> tuple[int, float | None]:
    """The last seq and time of a closed segment, read from its end."""
    size = path.stat().st_size
    block = 4096
    with open(path, "rb") as f:
        while True:
            start = max(0, size - block)
            f.seek(start)
            data = f.read(size - start)
            lines = data.splitlines(keepends=True)
            candidates = lines if start == 0 else lines[1:]
            for line in reversed(candidates):
                record = _parse_line(line)
                if record is not None:
                    return record["seq"], _record_time(record)
            if start == 0:
                return first - 1, None
            block *= 4
