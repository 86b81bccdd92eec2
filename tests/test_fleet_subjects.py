"""The fleet's pure core: subject tokens, subjects, payloads, stream checks, resuming."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.fleet.subjects import (
    FleetConfigError,
    StreamShape,
    check_host_id,
    consumer_filter,
    cursor_document,
    decode_token,
    encode_token,
    matches,
    msg_id,
    parse_cursor,
    payload_of,
    redact,
    resume_after,
    servers_of,
    stream_problems,
    subject_covers,
    subject_of,
)

GOOD = StreamShape(
    name="GUESTS",
    subjects=("guests.>", "networks.>", "hosts.>"),
    storage="file",
    retention="limits",
    duplicate_window=3600.0,
)


@given(st.text(min_size=1))
def test_token_round_trip(name: str) -> None:
    """Any name encodes to one token without '.', '*', '>' or whitespace, and decodes back."""
    token = encode_token(name)
    assert not set(token) & set(".*> \t\r\n")
    assert name == decode_token(token)


def test_plain_names_stay_as_they_are() -> None:
    """Ordinary names are their own token; dots and wildcards are escaped."""
    assert "web-1_a" == encode_token("web-1_a")
    assert "a%2Eb%2A%3E" == encode_token("a.b*>")


def test_subjects_by_kind() -> None:
    """Domains on guests.*, networks on networks.*, the supervisor and gaps on hosts.*."""
    assert "guests.h1.web.STARTED" == subject_of(
        {"kind": "domain", "name": "web", "type": "STARTED"}, "h1"
    )
    assert "networks.h1.n%2E1.STOPPED" == subject_of(
        {"kind": "network", "name": "n.1", "type": "STOPPED"}, "h1"
    )
    assert "hosts.h1.STARTED" == subject_of(
        {"kind": "supervisor", "name": None, "type": "STARTED"}, "h1"
    )
    assert "hosts.h1.GAP" == subject_of({"kind": "gap", "type": "GAP"}, "h1")


def test_payload_is_the_record_plus_host() -> None:
    """The body is the local stream's JSON with ``host`` added; the id is host:seq."""
    record = {"seq": 7, "kind": "domain", "name": "web", "type": "STARTED"}
    assert {**record, "host": "h1"} == json.loads(payload_of(record, "h1"))
    assert "h1:7" == msg_id("h1", 7)


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a b", "x" * 65, "é"])
def test_host_ids_must_be_tokens(bad: str) -> None:
    """A host id is 1..64 of [A-Za-z0-9_-]: anything else is refused with the rule."""
    with pytest.raises(FleetConfigError, match=r"expected 1\.\.64"):
        check_host_id(bad)


def test_stream_checks() -> None:
    """A fitting stream passes; each misfit is named."""
    import attrs

    assert [] == stream_problems(GOOD)
    assert [] == stream_problems(attrs.evolve(GOOD, subjects=(">",)))
    bad = attrs.evolve(
        GOOD, storage="memory", retention="workqueue", subjects=("guests.>",), duplicate_window=60
    )
    problems = " ".join(stream_problems(bad))
    for part in ("storage is memory", "retention is workqueue", "networks.>", "duplicate window"):
        assert part in problems


def test_subject_covers() -> None:
    """Wildcard subset rules as JetStream applies them to a stream's subjects."""
    assert subject_covers("guests.>", "guests.>")
    assert subject_covers(">", "hosts.>")
    assert subject_covers("guests.*.>", "guests.h.>")
    assert not subject_covers("guests.*", "guests.>")
    assert not subject_covers("guests.h1.>", "guests.>")


def test_resume_after() -> None:
    """The stream's word wins when it has any; the cursor only over an empty stream; a stream
    ahead of the journal is a reused host id."""
    assert 5 == resume_after(None, 5, 10, "h")
    assert 8 == resume_after(7, 8, 10, "h")
    assert 5 == resume_after(7, 5, 10, "h")
    assert 7 == resume_after(7, 0, 10, "h")
    assert 0 == resume_after(None, 0, 0, "h")
    with pytest.raises(FleetConfigError, match="another supervisor"):
        resume_after(3, 12, 10, "h")


def test_cursor_belongs_to_host_and_stream() -> None:
    """A cursor is read back only for the host and stream it was written for."""
    doc = cursor_document("h1", "GUESTS", 42)
    assert 42 == parse_cursor(doc, "h1", "GUESTS")
    assert parse_cursor(doc, "h2", "GUESTS") is None
    assert parse_cursor(doc, "h1", "OTHER") is None
    assert parse_cursor(b"{torn", "h1", "GUESTS") is None
    assert parse_cursor(None, "h1", "GUESTS") is None


def test_consumer_filters() -> None:
    """--domain filters on the server; --host alone on the client (NATS 2.9: one filter)."""
    assert consumer_filter(None, None) is None
    assert "guests.*.web.>" == consumer_filter(None, "web")
    assert "guests.h1.a%2Eb.>" == consumer_filter("h1", "a.b")
    assert matches("networks.h1.n.STARTED", "h1", None)
    assert not matches("networks.h2.n.STARTED", "h1", None)
    assert matches("guests.h2.a%2Eb.STARTED", None, "a.b")
    assert not matches("hosts.h2.STARTED", None, "web")


def test_servers_and_redaction() -> None:
    """URL lists take bare host:port; credentials in a URL never reach logs."""
    assert ["nats://a:1", "tls://b:2"] == servers_of("a:1, tls://b:2")
    assert "nats://***@h:4222" == redact("nats://u:p@h:4222")
    with pytest.raises(FleetConfigError):
        servers_of(" , ")


def test_daemon_fleet_options() -> None:
    """`vsv daemon --nats` options are parsed and checked before anything starts."""
    from supervisor.cli import build_parser
    from supervisor.fleet.cli import daemon_settings
    from supervisor.fleet.subjects import FleetSettings

    parser = build_parser()
    assert daemon_settings(parser.parse_args(["daemon"])) is None
    args = parser.parse_args(["daemon", "--nats", "n1:4222,nats://n2:4222", "--host-id", "r1-07"])
    assert FleetSettings(servers=("nats://n1:4222", "nats://n2:4222"), host="r1-07") == (
        daemon_settings(args)
    )
    bad = daemon_settings(parser.parse_args(["daemon", "--nats", "n1", "--host-id", "a.b"]))
    assert isinstance(bad, str)
    assert "host id 'a.b'" in bad
