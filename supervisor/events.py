"""Event values: libvirt's event model with libvirt's numeric codes, plus the supervisor's own.

Why libvirt's names and numbers: people and tools that know ``virsh event`` should recognise
every event, and a consumer translating to libvirt's C enums needs the exact codes. The codes
below are those of ``include/libvirt/libvirt-domain.h`` and ``libvirt-network.h``.

Three kinds of event share one value type, :class:`Event`:

``domain``
    lifecycle events (``type`` is an :class:`EventType` name with a detail from the matching
    detail enum, e.g. ``STARTED``/``BOOTED``) and the non-lifecycle ids ``REBOOT``, ``TUNABLE``
    and ``CONTROL_ERROR`` (no detail; their libvirt *event id* tells them apart).
``network``
    ``DEFINED``, ``UNDEFINED``, ``STARTED``, ``STOPPED`` (libvirt's network lifecycle events carry
    no meaningful detail, so ``detail`` is ``None``).
``supervisor``
    ``STARTED`` and ``STOPPED`` of the supervisor itself, so that consumers of a durable event
    stream can tell that a restart happened (libvirt has no such event). ``name`` is optional
    (an instance name, if the daemon has one).

The one-line human form (:meth:`Event.line`) is ``SEQ NAME TYPE [DETAIL]``; the name of a network
is written ``net:NAME`` and the supervisor ``@supervisor`` (``@supervisor:NAME`` when it has a
name), so a domain and a network of the same name cannot be confused::

    12 web1 STARTED BOOTED
    13 web1 REBOOT
    14 web1 STOPPED SHUTDOWN
    15 net:demo-nat STARTED
    16 @supervisor STOPPED

``data`` never appears in the line; it is in the JSON form (:meth:`Event.to_json_dict`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast, get_args

import attrs

from supervisor.errors import VsvError

EventKind = Literal["domain", "network", "supervisor"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
#: one value of an event's ``data``: numbers and booleans are JSON numbers and booleans
#: (``exit_code``, ``pid``, ``restart_delay``, ``cputune.shares``...), the rest strings
DataValue = str | int | float | bool
DataPairs = tuple[tuple[str, DataValue], ...]
_SCALARS = (str, int, float, bool)


class InvalidEvent(VsvError, ValueError):
    """A kind/type/detail combination libvirt (or the supervisor) does not define."""


class EventId(enum.IntEnum):
    """libvirt's ``virDomainEventID``: which callback family an event belongs to."""

    LIFECYCLE = 0
    REBOOT = 1
    CONTROL_ERROR = 7
    DEVICE_REMOVED = 15
    TUNABLE = 17
    DEVICE_ADDED = 19
    METADATA_CHANGE = 23


class EventType(enum.IntEnum):
    """libvirt's ``virDomainEventType`` (domain lifecycle event types)."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class DefinedDetail(enum.IntEnum):
    """``virDomainEventDefinedDetailType``."""

    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class UndefinedDetail(enum.IntEnum):
    """``virDomainEventUndefinedDetailType``."""

    REMOVED = 0
    RENAMED = 1


class StartedDetail(enum.IntEnum):
    """``virDomainEventStartedDetailType``."""

    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class SuspendedDetail(enum.IntEnum):
    """``virDomainEventSuspendedDetailType``."""

    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6


class ResumedDetail(enum.IntEnum):
    """``virDomainEventResumedDetailType``."""

    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2


class StoppedDetail(enum.IntEnum):
    """``virDomainEventStoppedDetailType``."""

    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


class ShutdownDetail(enum.IntEnum):
    """``virDomainEventShutdownDetailType``: who asked for the shutdown that just finished."""

    FINISHED = 0
    GUEST = 1
    HOST = 2


class PMSuspendedDetail(enum.IntEnum):
    """``virDomainEventPMSuspendedDetailType``."""

    MEMORY = 0
    DISK = 1


class CrashedDetail(enum.IntEnum):
    """``virDomainEventCrashedDetailType``."""

    PANICKED = 0
    CRASHLOADED = 1


class NetworkEventType(enum.IntEnum):
    """libvirt's ``virNetworkEventLifecycleType``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3


class SupervisorEventType(enum.IntEnum):
    """The supervisor's own start and stop (no libvirt equivalent; codes are ours)."""

    STARTED = 0
    STOPPED = 1


#: detail enum of each domain lifecycle event type
LIFECYCLE_DETAILS: Mapping[EventType, type[enum.IntEnum]] = {
    EventType.DEFINED: DefinedDetail,
    EventType.UNDEFINED: UndefinedDetail,
    EventType.STARTED: StartedDetail,
    EventType.SUSPENDED: SuspendedDetail,
    EventType.RESUMED: ResumedDetail,
    EventType.STOPPED: StoppedDetail,
    EventType.SHUTDOWN: ShutdownDetail,
    EventType.PMSUSPENDED: PMSuspendedDetail,
    EventType.CRASHED: CrashedDetail,
}

#: domain events outside the lifecycle family: type name -> libvirt event id (no detail)
DOMAIN_OTHER_TYPES: Mapping[str, EventId] = {
    "REBOOT": EventId.REBOOT,
    "TUNABLE": EventId.TUNABLE,
    "CONTROL_ERROR": EventId.CONTROL_ERROR,
}


@attrs.frozen
class Codes:
    """The numeric view of an event: libvirt event id, type code and detail code.

    ``event_id`` is ``None`` for supervisor events (not a libvirt callback family);
    ``type_code``/``detail_code`` are ``None`` where libvirt has no such number (REBOOT, TUNABLE
    and CONTROL_ERROR have neither; network events have no detail).
    """

    event_id: int | None
    type_code: int | None
    detail_code: int | None


def _build_codes() -> dict[tuple[str, str, str | None], Codes]:
    table: dict[tuple[str, str, str | None], Codes] = {}
    for etype, details in LIFECYCLE_DETAILS.items():
        for detail in details:
            table["domain", etype.name, detail.name] = Codes(
                int(EventId.LIFECYCLE), int(etype), int(detail)
            )
    for name, eid in DOMAIN_OTHER_TYPES.items():
        table["domain", name, None] = Codes(int(eid), None, None)
    for ntype in NetworkEventType:
        table["network", ntype.name, None] = Codes(0, int(ntype), None)
    for stype in SupervisorEventType:
        table["supervisor", stype.name, None] = Codes(None, int(stype), None)
    return table


#: every valid (kind, type, detail) with its codes; membership is the validity check
CODES: Mapping[tuple[str, str, str | None], Codes] = _build_codes()


def codes_of(kind: str, type: str, detail: str | None) -> Codes:
    """The numeric codes of a (kind, type, detail) triple; :class:`InvalidEvent` if undefined."""
    try:
        return CODES[kind, type, detail]
    except KeyError:
        raise InvalidEvent(_invalid_message(kind, type, detail)) from None


def _invalid_message(kind: str, type: str, detail: str | None) -> str:
    if kind not in EVENT_KINDS:
        return f"unknown event kind {kind!r}; allowed: {', '.join(EVENT_KINDS)}"
    types = sorted({t for k, t, _ in CODES if k == kind})
    if type not in types:
        return f"unknown {kind} event type {type!r}; allowed: {', '.join(types)}"
    details = [str(d) for k, t, d in CODES if k == kind and t == type]
    return f"{kind} event {type} cannot have detail {detail!r}; allowed: {', '.join(details)}"


def data_value(value: object) -> DataValue:
    """One data value as it is kept: a string, a whole or finite number, a boolean; anything
    else (an enum, a path, None, an infinite float) as its text."""
    kind = type(value)
    if kind is str or kind is bool or kind is int:
        return cast(DataValue, value)
    if kind is float and math.isfinite(cast(float, value)):
        return cast(float, value)
    return str(value)


def to_data(value: Mapping[str, object] | Iterable[tuple[str, object]] | None) -> DataPairs:
    """Normalise extra event fields to a tuple of ``(key, value)`` pairs, keys unique.

    Numbers and booleans stay numbers and booleans, so that a consumer reads ``exit_code`` as
    the number it is (JSON keeps the type); other values become strings. A tuple of pairs of
    these types passes through unchanged (the bus's hot path); anything else is converted.
    """
    if value is None:
        return ()
    if type(value) is tuple and all(
        type(p) is tuple
        and len(p) == 2
        and type(p[0]) is str
        and type(p[1]) in _SCALARS
        and (type(p[1]) is not float or math.isfinite(p[1]))
        for p in value
    ):
        pairs = cast(DataPairs, value)
    else:
        items = value.items() if isinstance(value, Mapping) else value
        pairs = tuple((str(k), data_value(v)) for k, v in items)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidEvent(f"duplicate keys in event data: {keys}")
    return pairs


@attrs.frozen
class Event:
    """One event: immutable, numbered by the bus (``seq``), stamped with wall-clock ``time``.

    Build events through :meth:`supervisor.bus.Bus.publish_nowait` (which assigns ``seq`` and
    ``time`` and validates the kind/type/detail triple) or :meth:`from_json_dict`; the plain
    constructor does not validate, to keep the bus's hot path cheap.
    """

    seq: int
    time: float
    kind: EventKind
    name: str | None
    type: str
    detail: str | None = None
    data: DataPairs = ()

    @property
    def codes(self) -> Codes:
        """libvirt's numeric codes for this event (see :class:`Codes`)."""
        return codes_of(self.kind, self.type, self.detail)

    def get(self, key: str, default: DataValue | None = None) -> DataValue | None:
        """The value of one ``data`` field, or ``default``."""
        for k, v in self.data:
            if k == key:
                return v
        return default

    def subject(self) -> str:
        """How the line form names the event's object: ``web1``, ``net:NAME``, ``@supervisor``."""
        if self.kind == "domain":
            return self.name or "-"
        if self.kind == "network":
            return f"net:{self.name}"
        return "@supervisor" if self.name is None else f"@supervisor:{self.name}"

    def line(self) -> str:
        """The human/stdout form ``SEQ NAME TYPE [DETAIL]``, e.g. ``12 web1 STARTED BOOTED``."""
        head = f"{self.seq} {self.subject()} {self.type}"
        return head if self.detail is None else f"{head} {self.detail}"

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``domain``/``network`` repeat ``name`` for that kind, else None."""
        codes = self.codes
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "name": self.name,
            "domain": self.name if self.kind == "domain" else None,
            "network": self.name if self.kind == "network" else None,
            "type": self.type,
            "detail": self.detail,
            "data": dict(self.data),
            "event_id": codes.event_id,
            "type_code": codes.type_code,
            "detail_code": codes.detail_code,
        }

    @classmethod
    def from_json_dict(cls, obj: Mapping[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_json_dict` output; validates every field.

        Numeric codes are derived from the names; if the document carries codes they must agree
        (a mismatch means the producer and this module disagree about libvirt's numbering).
        """
        try:
            seq = obj["seq"]
            time = obj["time"]
            kind = obj["kind"]
            etype = obj["type"]
        except KeyError as exc:
            raise InvalidEvent(f"event document lacks key {exc.args[0]!r}") from None
        detail = obj.get("detail")
        name = obj.get("name")
        if name is None and kind in ("domain", "network"):
            name = obj.get(kind)
        if type(seq) is not int or seq < 0:
            raise InvalidEvent(f"event seq must be a non-negative integer, got {seq!r}")
        if not isinstance(time, int | float) or isinstance(time, bool):
            raise InvalidEvent(f"event time must be a number, got {time!r}")
        for label, value in (("name", name), ("type", etype), ("detail", detail)):
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"event {label} must be a string, got {value!r}")
        if kind in ("domain", "network") and name is None:
            raise InvalidEvent(f"a {kind} event needs a name")
        codes = codes_of(kind, etype, detail)
        for key in ("event_id", "type_code", "detail_code"):
            if key in obj and obj[key] != getattr(codes, key):
                raise InvalidEvent(
                    f"{kind} event {etype} {detail}: {key} is {getattr(codes, key)!r}, "
                    f"document says {obj[key]!r}"
                )
        raw = obj.get("data") or {}
        if not isinstance(raw, Mapping):
            raise InvalidEvent(f"event data must be an object, got {raw!r}")
        for k, v in raw.items():
            if not isinstance(k, str) or type(v) not in _SCALARS:
                raise InvalidEvent(
                    f"event data must map strings to strings, numbers or booleans, got {k!r}: {v!r}"
                )
            if type(v) is float and not math.isfinite(v):
                raise InvalidEvent(f"event data {k!r} must be a finite number, got {v!r}")
        return cls(seq, float(time), kind, name, etype, detail, to_data(raw))
