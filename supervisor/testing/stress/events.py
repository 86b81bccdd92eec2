"""The event stream as the harness sees it: its own log, checked as events arrive, and slow
consumers whose gaps and drops are checked against that log.

The model says which events each domain must have had (:attr:`.model.Model.events`); these
classes say whether the stream that carried them is sound: sequence numbers rise by one, each
domain's and each network's events follow their grammar, and a consumer that falls behind is
told exactly what it missed.
"""

from __future__ import annotations

from typing import Literal

import attrs
import trio

from supervisor.bus import Gap, Subscription, SubscriptionDropped
from supervisor.events import Event
from supervisor.testing.stress.model import text_of

#: the events of a network's history that say whether it runs (see EventLog)
RUN_MARKS = ("STARTED", "STOPPED")


@attrs.define
class EventLog:
    """The events the harness's own subscriber saw, with the grammar checked as they arrive."""

    events: list[Event] = attrs.Factory(list)
    by_name: dict[str, list[str]] = attrs.Factory(dict)
    active: set[str] = attrs.Factory(set)
    defined: set[str] = attrs.Factory(set)
    last_seq: int | None = None
    #: the network events' types, in order, per network
    networks: dict[str, list[str]] = attrs.Factory(dict)

    def add(self, item: Event | Gap) -> None:
        """Take the next item of the harness's subscription, whose buffer never overflows: a gap
        there, a jump in the numbering or an event out of grammar fails the run at once."""
        if isinstance(item, Gap):
            # a failed check, not a wrong argument type
            raise AssertionError(f"the harness's subscriber missed events: {item}")  # noqa: TRY004
        e = item
        if self.last_seq is not None and e.seq != self.last_seq + 1:
            raise AssertionError(f"sequence jumps from {self.last_seq} to {e.seq}: {e.line()}")
        self.last_seq = e.seq
        self.events.append(e)
        if e.kind == "network" and e.name is not None:
            self._network_grammar(e)
            self.networks.setdefault(e.name, []).append(e.type)
            return
        if e.kind != "domain" or e.name is None:
            return
        self._grammar(e)
        self.by_name.setdefault(e.name, []).append(text_of(e))

    def _network_grammar(self, e: Event) -> None:
        """DEFINED first; STARTED and STOPPED alternate, also across supervisor restarts (a
        network taken over in place gets no second STARTED); UNDEFINED only while stopped."""
        seen = self.networks.get(e.name or "", [])
        last_run = next((t for t in reversed(seen) if t in RUN_MARKS), "STOPPED")
        defined = bool(seen) and seen[-1] != "UNDEFINED"
        ok = {
            "DEFINED": True,
            "UNDEFINED": defined and last_run == "STOPPED",
            "STARTED": defined and last_run == "STOPPED",
            "STOPPED": defined and last_run == "STARTED",
        }.get(e.type, False)
        if not ok:
            raise AssertionError(f"network event {e.line()} after {seen}")

    def _grammar(self, e: Event) -> None:
        name = e.name
        assert name is not None
        what = f"event {e.line()}"
        if e.type == "DEFINED":
            if (e.detail == "ADDED") == (name in self.defined):
                raise AssertionError(f"{what}: domain defined={name in self.defined}")
            self.defined.add(name)
            return
        if name not in self.defined:
            raise AssertionError(f"{what} for a domain that is not defined")
        if e.type == "UNDEFINED":
            if name in self.active:
                raise AssertionError(f"{what} while the domain is active")
            self.defined.discard(name)
        elif e.type == "STARTED":
            if name in self.active:
                raise AssertionError(f"{what}: STARTED while already active")
            self.active.add(name)
        elif e.type == "STOPPED":
            attempt = e.get("reason") in ("start-failed", "start-cancelled")
            if name not in self.active and not attempt:
                raise AssertionError(f"{what}: STOPPED while not active")
            self.active.discard(name)
        elif name not in self.active:
            raise AssertionError(f"{what} while the domain is not active")


@attrs.define
class Consumer:
    """An extra subscriber that reads only when told: it falls behind, gets gaps or is dropped."""

    sub: Subscription
    overflow: Literal["gap", "drop"]
    #: the first sequence number it can see, then the next one it must account for
    next_seq: int
    dropped: bool = False

    def drain(self, log: EventLog) -> None:
        """Read what is buffered; check it against the harness's own log."""
        by_seq = {e.seq: e for e in log.events}
        while True:
            try:
                item = self.sub.receive_nowait()
            except trio.WouldBlock:
                return
            except trio.EndOfChannel:
                return
            except SubscriptionDropped as exc:
                if self.overflow != "drop" or exc.first_missed_seq != self.next_seq:
                    raise AssertionError(
                        f"consumer {self.sub.name}: dropped at {exc.first_missed_seq}, "
                        f"expected {self.next_seq} ({self.overflow})"
                    ) from exc
                self.dropped = True
                return
            if isinstance(item, Gap):
                if self.overflow != "gap" or item.first_seq != self.next_seq:
                    raise AssertionError(
                        f"consumer {self.sub.name}: gap {item} but next is {self.next_seq}"
                    )
                self.next_seq = item.last_seq + 1
                continue
            if item.seq != self.next_seq or by_seq.get(item.seq) != item:
                raise AssertionError(
                    f"consumer {self.sub.name}: got {item.line()} (seq {item.seq}), "
                    f"expected seq {self.next_seq}"
                )
            self.next_seq += 1
