"""Event values: libvirt codes, the line form and the JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.events import (
    CODES,
    Codes,
    Event,
    EventId,
    EventType,
    InvalidEvent,
    NetworkEventType,
    ShutdownDetail,
    StartedDetail,
    StoppedDetail,
    codes_of,
    to_data,
)


def test_lifecycle_codes_are_libvirts() -> None:
    """The enums carry libvirt's numbers for the types and details the supervisor emits."""
    expected = {
        "DEFINED": 0,
        "UNDEFINED": 1,
        "STARTED": 2,
        "SUSPENDED": 3,
        "RESUMED": 4,
        "STOPPED": 5,
        "SHUTDOWN": 6,
        "PMSUSPENDED": 7,
        "CRASHED": 8,
    }
    assert expected == {t.name: int(t) for t in EventType}
    assert (0, 1, 2, 5) == (
        StartedDetail.BOOTED,
        StoppedDetail.DESTROYED,
        StoppedDetail.CRASHED,
        StoppedDetail.FAILED,
    )
    assert (0, 1, 2) == tuple(ShutdownDetail)
    assert (0, 1, 2, 3) == tuple(NetworkEventType)
    assert (1, 17) == (EventId.REBOOT, EventId.TUNABLE)


def test_codes_of_lifecycle_and_other_events() -> None:
    """codes_of gives event id, type code and detail code, None where libvirt has none."""
    assert Codes(0, 5, 2) == codes_of("domain", "STOPPED", "CRASHED")
    assert Codes(1, None, None) == codes_of("domain", "REBOOT", None)
    assert Codes(17, None, None) == codes_of("domain", "TUNABLE", None)
    assert Codes(0, 2, None) == codes_of("network", "STARTED", None)
    assert Codes(None, 1, None) == codes_of("supervisor", "STOPPED", None)


@pytest.mark.parametrize(
    ("kind", "etype", "detail", "fragment"),
    [
        ("host", "STARTED", None, "unknown event kind 'host'"),
        ("domain", "EXPLODED", None, "unknown domain event type 'EXPLODED'"),
        ("domain", "STARTED", "PAUSED", "cannot have detail 'PAUSED'"),
        ("domain", "STARTED", None, "cannot have detail None"),
        ("network", "SUSPENDED", None, "unknown network event type 'SUSPENDED'"),
    ],
)
def test_invalid_triples_are_refused(
    kind: str, etype: str, detail: str | None, fragment: str
) -> None:
    """An undefined kind/type/detail raises InvalidEvent naming the offending part."""
    with pytest.raises(InvalidEvent) as info:
        codes_of(kind, etype, detail)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (Event(12, 0.0, "domain", "web1", "STARTED", "BOOTED"), "12 web1 STARTED BOOTED"),
        (Event(13, 0.0, "domain", "web1", "REBOOT"), "13 web1 REBOOT"),
        (Event(14, 0.0, "domain", "web1", "STOPPED", "SHUTDOWN"), "14 web1 STOPPED SHUTDOWN"),
        (Event(15, 0.0, "network", "demo-nat", "STARTED"), "15 net:demo-nat STARTED"),
        (Event(16, 0.0, "supervisor", None, "STOPPED"), "16 @supervisor STOPPED"),
        (Event(17, 0.0, "supervisor", "main", "STARTED"), "17 @supervisor:main STARTED"),
        (
            Event(18, 0.0, "domain", "w", "STOPPED", "CRASHED", (("reason", "x"),)),
            "18 w STOPPED CRASHED",
        ),
    ],
)
def test_line_form(event: Event, line: str) -> None:
    """line() is SEQ NAME TYPE [DETAIL], networks as net:NAME, data never shown."""
    assert line == event.line()


def test_json_dict_has_the_documented_keys() -> None:
    """to_json_dict carries names, libvirt codes and data as an object."""
    event = Event(7, 1700000000.5, "domain", "web1", "STOPPED", "CRASHED", (("signal", "SIGSEGV"),))
    expected = {
        "seq": 7,
        "time": 1700000000.5,
        "kind": "domain",
        "name": "web1",
        "domain": "web1",
        "network": None,
        "type": "STOPPED",
        "detail": "CRASHED",
        "data": {"signal": "SIGSEGV"},
        "event_id": 0,
        "type_code": 5,
        "detail_code": 2,
    }
    assert expected == event.to_json_dict()


_triples = st.sampled_from(sorted(CODES, key=str))
_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
_values = st.one_of(
    _names,
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_data = st.dictionaries(_names, _values, max_size=3)


@given(
    triple=_triples,
    seq=st.integers(0, 2**53),
    time=st.floats(0, 2e9, allow_nan=False),
    name=_names,
    data=_data,
)
def test_json_round_trip(
    triple: tuple[str, str, str | None],
    seq: int,
    time: float,
    name: str,
    data: dict[str, str | int | float | bool],
) -> None:
    """Every valid event survives to_json_dict -> json text -> from_json_dict unchanged, the
    types of its data's values included."""
    kind, etype, detail = triple
    event_name = None if kind == "supervisor" else name
    event = Event(seq, time, kind, event_name, etype, detail, to_data(data))  # type: ignore[arg-type]
    text = json.dumps(event.to_json_dict())
    back = Event.from_json_dict(json.loads(text))
    assert (event, [type(v) for _, v in event.data]) == (back, [type(v) for _, v in back.data])


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"type_code": 4}, "type_code is 5"),
        ({"seq": -1}, "seq must be a non-negative integer"),
        ({"data": {"a": [1]}}, "must map strings to strings, numbers or booleans"),
        ({"data": {"a": None}}, "must map strings to strings, numbers or booleans"),
        ({"detail": "BOOTED"}, "cannot have detail 'BOOTED'"),
        ({"name": None, "domain": None}, "needs a name"),
    ],
)
def test_from_json_dict_rejects_bad_documents(patch: dict[str, object], fragment: str) -> None:
    """from_json_dict validates fields and code consistency, naming what is wrong."""
    doc = Event(3, 1.0, "domain", "w", "STOPPED", "SHUTDOWN").to_json_dict()
    doc.update(patch)
    with pytest.raises(InvalidEvent) as info:
        Event.from_json_dict(doc)
    assert fragment in str(info.value)


def test_from_json_dict_accepts_domain_key_without_name() -> None:
    """A document naming the guest only under 'domain' is understood."""
    doc = {"seq": 1, "time": 2, "kind": "domain", "domain": "w", "type": "REBOOT"}
    assert Event(1, 2.0, "domain", "w", "REBOOT") == Event.from_json_dict(doc)


def test_to_data_keeps_numbers_and_booleans_and_refuses_duplicates() -> None:
    """Numbers and booleans stay typed, other values become text; duplicate keys are refused."""
    assert (("a", 1), ("b", "x"), ("c", True), ("d", 0.5)) == to_data(
        {"a": 1, "b": "x", "c": True, "d": 0.5}
    )
    assert (("cputune.shares", 512),) == to_data([("cputune.shares", 512)])
    assert (("p", "/x"), ("n", "None"), ("f", "inf")) == to_data(
        {"p": Path("/x"), "n": None, "f": float("inf")}
    )
    assert [bool, int] == [type(v) for _, v in to_data({"t": True, "i": 1})]
    with pytest.raises(InvalidEvent):
        to_data([("a", "1"), ("a", "2")])


def test_event_get_reads_data() -> None:
    """Event.get returns a data field or the default."""
    event = Event(1, 0.0, "domain", "w", "STOPPED", "CRASHED", (("reason", "r"),))
    assert ("r", None, "d") == (event.get("reason"), event.get("x"), event.get("x", "d"))
