"""The durable event journal: numbering across reopen, torn tails, retention and gap records."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.journal import Journal, Retention, SegmentInfo, gap_record, segments_to_drop

NOW = time.time()


def ev(seq: int, t: float = NOW, domain: str = "web1", type_: str = "STARTED") -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "domain",
        "domain": domain,
        "type": type_,
        "detail": "BOOTED",
        "time": t,
        "data": {},
    }


def seqs(records: list[Any]) -> list[int]:
    return [r["seq"] for r in records]


def test_append_and_read_since_is_exclusive(tmp_path: Path) -> None:
    """read_since(n) yields the records after n, in order."""
    j = Journal.open(tmp_path)
    for s in range(1, 6):
        j.append(ev(s))
    assert [3, 4, 5] == seqs(list(j.read_since(2)))
    assert [] == seqs(list(j.read_since(5)))
    assert 5 == j.last_seq()


def test_numbering_survives_reopen(tmp_path: Path) -> None:
    """A reopened journal reports the last seq and keeps every record readable."""
    j = Journal.open(tmp_path, segment_events=3)
    for s in range(1, 8):
        j.append(ev(s))
    j.close()
    j2 = Journal.open(tmp_path, segment_events=3)
    assert 7 == j2.last_seq()
    assert list(range(1, 8)) == seqs(list(j2.read_since(0)))
    j2.append(ev(8))
    assert [8] == seqs(list(j2.read_since(7)))


def test_seq_must_rise(tmp_path: Path) -> None:
    """Appending a seq not above last_seq is refused."""
    j = Journal.open(tmp_path)
    j.append(ev(1))
    with pytest.raises(ValueError, match="above 1"):
        j.append(ev(1))


def test_torn_last_line_is_cut_on_reopen(tmp_path: Path) -> None:
    """A crash mid-write leaves a torn line; reopening drops it and appends on a clean line."""
    j = Journal.open(tmp_path)
    for s in range(1, 4):
        j.append(ev(s))
    j.close()
    (seg,) = sorted(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"seq":4,"kind":"dom')
    j2 = Journal.open(tmp_path)
    assert 3 == j2.last_seq()
    j2.append(ev(4))
    j2.close()
    lines = seg.read_bytes().splitlines()
    assert [1, 2, 3, 4] == [json.loads(line)["seq"] for line in lines]


def test_numbering_survives_pruning_everything(tmp_path: Path) -> None:
    """Even with all old segments gone, the numbering continues after a reopen."""
    j = Journal.open(tmp_path, segment_events=2, retention=Retention(max_events=2, max_age=None))
    for s in range(1, 10):
        j.append(ev(s))
    j.close()
    for seg in tmp_path.glob("seg-*.jsonl"):
        seg.unlink()
    j2 = Journal.open(tmp_path)
    assert 9 == j2.last_seq()
    assert [gap_record(1, 9)] == list(j2.read_since(0))


def test_gap_record_when_since_is_older_than_retention(tmp_path: Path) -> None:
    """A reader behind retention gets one gap record, then the contiguous rest."""
    j = Journal.open(tmp_path, segment_events=10, retention=Retention(max_events=15, max_age=None))
    for s in range(1, 51):
        j.append(ev(s))
    first = j.first_seq()
    assert first is not None
    assert 1 < first
    out = list(j.read_since(3))
    assert gap_record(4, first - 1) == out[0]
    assert list(range(first, 51)) == seqs(out[1:])


def test_age_retention(tmp_path: Path) -> None:
    """Segments whose newest record is older than max_age are removed on prune."""
    now = [1000.0]
    j = Journal.open(
        tmp_path,
        segment_events=2,
        retention=Retention(max_events=None, max_age=100.0),
        clock=lambda: now[0],
    )
    for s in range(1, 5):
        j.append(ev(s, t=1000.0))
    for s in range(5, 7):
        j.append(ev(s, t=1200.0))
    now[0] = 1250.0
    j.prune()
    assert 5 == j.first_seq()
    assert [gap_record(1, 4), ev(5, 1200.0), ev(6, 1200.0)] == list(j.read_since(0))


def test_listener_is_called_after_append(tmp_path: Path) -> None:
    """Listeners see each appended seq, and stop after removal."""
    j = Journal.open(tmp_path)
    seen: list[int] = []
    remove = j.add_listener(seen.append)
    j.append(ev(1))
    remove()
    j.append(ev(2))
    assert [1] == seen


def test_reads_from_disk_beyond_the_memory_tail(tmp_path: Path) -> None:
    """A reader older than the in-memory tail is served from the segment files."""
    j = Journal.open(tmp_path, segment_events=7, tail_events=5, retention=Retention(None, None))
    for s in range(1, 41):
        j.append(ev(s))
    assert list(range(11, 41)) == seqs(list(j.read_since(10)))
    assert [11, 12, 13] == [e.seq for e in j.entries_since(10, limit=3)]


@st.composite
def segment_lists(draw: st.DrawFn) -> list[SegmentInfo]:
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=8))
    times = sorted(draw(st.lists(st.floats(0, 1000), min_size=len(sizes), max_size=len(sizes))))
    out = []
    first = draw(st.integers(1, 100))
    for size, t in zip(sizes, times, strict=True):
        out.append(SegmentInfo(first, first + size - 1, t, Path(f"s{first}")))
        first += size
    return out


@given(
    segs=segment_lists(),
    max_events=st.none() | st.integers(1, 30),
    max_age=st.none() | st.floats(0, 1000),
    now=st.floats(0, 2000),
)
@settings(max_examples=300)
def test_segments_to_drop_properties(
    segs: list[SegmentInfo], max_events: int | None, max_age: float | None, now: float
) -> None:
    """Retention drops an oldest-first prefix, never the newest segment, never a kept record."""
    last = segs[-1].last_seq
    drop = segments_to_drop(segs, last_seq=last, now=now, retention=Retention(max_events, max_age))
    assert segs[: len(drop)] == drop
    assert len(segs) > len(drop)
    for info in drop:
        by_count = max_events is not None and info.last_seq <= last - max_events
        by_age = (
            max_age is not None and info.last_time is not None and info.last_time < now - max_age
        )
        assert True is (by_count or by_age)
    if max_events is not None and max_age is None:
        kept = sum(s.last_seq - s.first_seq + 1 for s in segs[len(drop) :])
        assert True is (kept >= min(max_events, last - segs[0].first_seq + 1))


@given(
    n=st.integers(0, 60),
    seg=st.integers(1, 9),
    keep=st.integers(1, 40),
    since=st.integers(0, 70),
)
@settings(max_examples=60, deadline=None)
def test_read_since_has_no_silent_hole(
    tmp_path_factory: Any, n: int, seg: int, keep: int, since: int
) -> None:
    """Whatever was pruned, read_since(k) covers k+1..last exactly once, gap records included."""
    d = tmp_path_factory.mktemp("j")
    j = Journal.open(d, segment_events=seg, retention=Retention(max_events=keep, max_age=None))
    for s in range(1, n + 1):
        j.append(ev(s))
    covered: list[int] = []
    for r in j.read_since(since):
        if r["kind"] == "gap":
            covered.extend(range(r["data"]["first_missing"], r["data"]["last_missing"] + 1))
        else:
            covered.append(r["seq"])
    assert list(range(since + 1, n + 1)) == covered
    j.close()


async def test_bus_events_journal_and_numbering_continues(tmp_path: Path) -> None:
    """Bus events (the real Event value) are journaled; a new bus continues from last_seq."""
    from supervisor.bus import Bus

    j = Journal.open(tmp_path)
    bus: Bus[object] = Bus(first_seq=j.last_seq() + 1)
    j.append(bus.publish_nowait("supervisor", None, "STARTED"))
    j.append(bus.publish_nowait("domain", "web1", "STARTED", "BOOTED"))
    j.close()
    j2 = Journal.open(tmp_path)
    bus2: Bus[object] = Bus(first_seq=j2.last_seq() + 1)
    j2.append(bus2.publish_nowait("domain", "web1", "STOPPED", "DESTROYED"))
    got = [(r["seq"], r["kind"], r["domain"], r["type"]) for r in j2.read_since(0)]
    assert [
        (1, "supervisor", None, "STARTED"),
        (2, "domain", "web1", "STARTED"),
        (3, "domain", "web1", "STOPPED"),
    ] == got
