"""The pure core of fleet events: subjects, message ids, payloads, the stream's shape, resuming.

Theory of operation
-------------------
A host's journal is numbered ``1, 2, 3...`` (``seq``) and never renumbered, so ``(host, seq)``
names one event in the whole fleet. The publisher sends each journal record as one JetStream
message whose ``Nats-Msg-Id`` is ``<host>:<seq>``: a message sent twice (a publish whose ack was
lost, a supervisor killed between the ack and saving its cursor) is stored once, because the
server drops a repeated id within the stream's duplicate window.

Subjects say what a consumer filters on, so they carry the host and the object:
``guests.<host>.<domain>.<TYPE>``, ``networks.<host>.<network>.<TYPE>`` and, for what concerns
the host as a whole (the supervisor's own STARTED/STOPPED, and a gap record for events that the
journal's retention removed before they were published), ``hosts.<host>.<TYPE>``. Every journal
record has a subject, so a host's messages are the whole of its journal: a consumer can check
that a host's ``seq`` rises without holes.

NATS subjects are dot-separated tokens, and ``*`` and ``>`` are wildcards. A domain name may
contain any of them (it may hold a ``.``; see supervisor/validate.py), so a name is written as a
*token*: every byte other than ASCII letters, digits, ``-`` and ``_`` becomes ``%XX`` (UTF-8),
which is reversible and leaves ordinary names as they are. Host ids are restricted to those
characters, so they need no encoding.

Nothing here does I/O or imports nats-py: the edge (:mod:`supervisor.fleet.broker`) and the
consumer (:mod:`supervisor.fleet.consume`) call these functions.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from supervisor.errors import VsvError

DEFAULT_STREAM = "GUESTS"
FAMILIES = ("guests", "networks", "hosts")
#: the stream's subjects: every family, every host
STREAM_SUBJECTS = tuple(f"{family}.>" for family in FAMILIES)
#: the duplicate window a created stream gets (seconds). The publisher does not lean on it to
#: resume (it asks the stream where this host stands whenever it (re)connects); it covers a
#: publish in flight when the connection broke, which the client may send again after it
#: reconnects, so it must outlast an outage: an hour, while the server's memory for message ids
#: stays small (ids of an hour of every host's events).
DEFAULT_DUPLICATE_WINDOW = 3600.0
#: an existing stream with a shorter window is refused: NATS's own default (2 min) is the least
MIN_DUPLICATE_WINDOW = 120.0

_HOST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FleetConfigError(VsvError, ValueError):
    """The fleet settings, or the stream on the server, do not fit (the message says how)."""


# --------------------------------------------------------------------------- names


def check_host_id(host: str) -> str:
    """``host`` if it can be a subject token as it is, else :class:`FleetConfigError`."""
    if not _HOST_ID.fullmatch(host):
        raise FleetConfigError(
            f"host id {host!r}: expected 1..64 of A-Z a-z 0-9 '-' '_' (it is a NATS subject token)"
        )
    return host


def check_stream_name(name: str) -> str:
    """``name`` if JetStream accepts it as a stream name, else :class:`FleetConfigError`."""
    if not _STREAM_NAME.fullmatch(name):
        raise FleetConfigError(f"stream name {name!r}: expected 1..64 of A-Z a-z 0-9 '-' '_'")
    return name


def default_host_id() -> str:
    """The machine's short host name made into a valid host id (other characters become '-')."""
    short = socket.gethostname().split(".", 1)[0] or "host"
    return re.sub(r"[^A-Za-z0-9_-]", "-", short)[:64]


def encode_token(name: str) -> str:
    """``name`` as one subject token: bytes other than ``[A-Za-z0-9_-]`` written ``%XX``."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in name.encode())


def decode_token(token: str) -> str:
    """The name :func:`encode_token` made ``token`` from."""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%" and _is_hex(token[i + 1 : i + 3]):
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(token[i].encode())
            i += 1
    return out.decode(errors="replace")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def subject_of(record: Mapping[str, Any], host: str) -> str:
    """The subject a journal record is published on (see the module's docstring)."""
    etype = encode_token(str(record.get("type")))
    kind = record.get("kind")
    name = record.get("name")
    if kind == "domain" and isinstance(name, str):
        return f"guests.{host}.{encode_token(name)}.{etype}"
    if kind == "network" and isinstance(name, str):
        return f"networks.{host}.{encode_token(name)}.{etype}"
    return f"hosts.{host}.{etype}"


def msg_id(host: str, seq: int) -> str:
    """The ``Nats-Msg-Id`` of a host's event ``seq``: the server's key for dropping repeats."""
    return f"{host}:{seq}"


def payload_of(record: Mapping[str, Any], host: str) -> bytes:
    """The message body: the local stream's JSON form of the record plus ``host``."""
    return json.dumps({**record, "host": host}, separators=(",", ":"), sort_keys=True).encode()


def host_subjects(host: str) -> tuple[str, ...]:
    """The subjects that hold one host's messages, one per family."""
    return tuple(f"{family}.{host}.>" for family in FAMILIES)


def consumer_filter(host: str | None, domain: str | None) -> str | None:
    """The one filter subject a consumer can ask the server for, or None for the whole stream.

    ``--domain`` narrows to ``guests.*.<domain>.>`` (with ``--host``, that host's). A host alone
    spans three families; NATS 2.9 (Debian 12's) takes a single filter subject, so that case
    reads the whole stream and :func:`matches` filters on the client.
    """
    if domain is not None:
        return f"guests.{host or '*'}.{encode_token(domain)}.>"
    return None


def matches(subject: str, host: str | None, domain: str | None) -> bool:
    """True when a message on ``subject`` is one a consumer asked for (client-side filter)."""
    tokens = subject.split(".")
    if len(tokens) < 3:
        return False
    if host is not None and tokens[1] != host:
        return False
    if domain is not None:
        return tokens[0] == "guests" and len(tokens) >= 4 and decode_token(tokens[2]) == domain
    return True


def subject_covers(pattern: str, subject: str) -> bool:
    """True when every subject matching ``subject`` (which may hold wildcards) matches
    ``pattern``: ``>`` covers one or more tokens, ``*`` one token (and a ``*`` in
    ``subject`` only where ``pattern`` has a wildcard too)."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        s = s_tokens[i]
        if s == ">":
            return False
        if p != "*" and p != s:
            return False
    return len(p_tokens) == len(s_tokens)


# --------------------------------------------------------------------------- the stream


@attrs.frozen
class StreamShape:
    """What the publisher needs of the stream, in plain values read from its configuration."""

    name: str
    subjects: tuple[str, ...]
    storage: str  # "file" or "memory"
    retention: str  # "limits", "interest" or "workqueue"
    duplicate_window: float  # seconds
    no_ack: bool = False
    sealed: bool = False
    mirror: bool = False


def stream_problems(shape: StreamShape) -> list[str]:
    """Why an existing stream cannot hold fleet events (empty: it can).

    File storage, because memory storage loses every event when the server restarts; the limits
    policy, because the others delete a message once consumed and a fleet stream is read by
    many consumers and replayed; acks, because the publisher moves its cursor on them; our
    subjects, or publishes would find no stream; a duplicate window of at least
    :data:`MIN_DUPLICATE_WINDOW`.
    """
    problems: list[str] = []
    if shape.storage != "file":
        problems.append(f"storage is {shape.storage}, expected file (events must survive restarts)")
    if shape.retention != "limits":
        problems.append(
            f"retention is {shape.retention}, expected limits (events stay for every consumer)"
        )
    if shape.no_ack:
        problems.append("no_ack is set, expected publish acks")
    if shape.sealed:
        problems.append("the stream is sealed")
    if shape.mirror:
        problems.append("the stream is a mirror and takes no publishes")
    missing = [s for s in STREAM_SUBJECTS if not any(subject_covers(p, s) for p in shape.subjects)]
    if missing:
        problems.append(
            f"subjects {list(shape.subjects)} do not cover {missing} "
            f"(expected {list(STREAM_SUBJECTS)})"
        )
    if shape.duplicate_window < MIN_DUPLICATE_WINDOW:
        problems.append(
            f"duplicate window is {shape.duplicate_window:g} s, expected at least "
            f"{MIN_DUPLICATE_WINDOW:g} s"
        )
    return problems


def check_stream(shape: StreamShape) -> None:
    """Raise :class:`FleetConfigError` naming every problem :func:`stream_problems` finds."""
    problems = stream_problems(shape)
    if problems:
        raise FleetConfigError(
            f"stream {shape.name} does not fit fleet events: " + "; ".join(problems)
        )


# --------------------------------------------------------------------------- resuming


def cursor_document(host: str, stream: str, seq: int) -> bytes:
    """The cursor file's content: the last ``seq`` the stream acknowledged, for this host and
    stream (a cursor written for another host id or stream is not this one's)."""
    return json.dumps({"host": host, "stream": stream, "seq": seq}, sort_keys=True).encode()


def parse_cursor(data: bytes | None, host: str, stream: str) -> int | None:
    """The acknowledged ``seq`` in a cursor file, or None when missing, unreadable or another
    host's or stream's."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("host") != host or value.get("stream") != stream:
        return None
    seq = value.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


def resume_after(cursor: int | None, stream_last: int, journal_last: int, host: str) -> int:
    """The ``seq`` after which publishing goes on.

    The stream knows best what it holds, so its last ``seq`` for this host wins when it has
    any: ahead of the cursor, it holds publishes whose acks were lost (a crash after the
    publish, an outage); behind it, it lost messages it had acknowledged (a server's disk), and
    they are published again. Only a stream with nothing of this host (new, or purged) leaves
    the cursor to decide, so a journal is not replayed whole into it; without a cursor either,
    everything the journal holds is published.

    A stream that holds more of this host than its journal ever had means another journal
    publishes under the same host id: its events would be taken for repeats and dropped, so
    that is an error rather than a silent loss.
    """
    if stream_last > journal_last:
        raise FleetConfigError(
            f"the stream already holds events up to seq {stream_last} for host {host!r}, but "
            f"this journal ends at {journal_last}: another supervisor (or an earlier state dir) "
            "publishes as this host; give this one its own --host-id"
        )
    if stream_last > 0:
        return stream_last
    return cursor or 0


def seq_of_payload(data: bytes) -> int | None:
    """The ``seq`` in a message body, or None when it is not one of ours."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def servers_of(urls: str | Sequence[str]) -> list[str]:
    """``URL[,URL...]`` as a list, each with a scheme (``host:port`` means ``nats://host:port``)."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        url = item.strip()
        if not url:
            continue
        out.append(url if "://" in url else f"nats://{url}")
    if not out:
        raise FleetConfigError("--nats: expected URL[,URL...], got nothing")
    return out


def redact(url: str) -> str:
    """A server URL without the user and password it may carry (for logs and statistics)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


@attrs.frozen
class FleetSettings:
    """``vsv daemon``'s fleet options, checked (see :mod:`supervisor.fleet.cli`)."""

    servers: tuple[str, ...]
    host: str
    stream: str = DEFAULT_STREAM
    creds: str | None = None
    replicas: int = 1
