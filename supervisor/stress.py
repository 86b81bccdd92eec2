"""``vsv stress``: a stateful stress harness that drives the real Supervisor against a tiny model.

Theory of operation
-------------------
A hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine` (:class:`SupervisorMachine`)
picks random operations: define (an active guest's new definition waits for its next fresh
boot) / undefine / start / shutdown / destroy / reboot / suspend / resume, guest-initiated
reboot / poweroff / crash / exit, starts that fail in the runtime, time passing (shutdown
deadlines, restart backoff), event consumers that connect, fall behind and disconnect, and the
supervisor replaced by a new one on the same state and run dirs, as an
upgrade does: it must re-adopt every running and paused guest with the definition and CPU
shares it runs with, report a preserved one whose init is gone, take over the network that
ran (same bridge, the adopted guests' NICs still on it) and keep numbering events where the old
one stopped. Each operation goes to a real :class:`~supervisor.daemon.Supervisor` *and* to
:class:`Model`, a small independent re-statement of the lifecycle contract (docs/lifecycle.md:
the libvirt state each guest must be in and the exact events each operation must produce). It
does not use :mod:`supervisor.lifecycle`, so a wrong row in the table is caught, not copied.

After every step the harness checks that

- each guest's ``(state, reason)`` from ``Supervisor.domain_status`` is the model's, and an
  operation the model calls illegal was refused (InvalidOperation / NotFound) with no event;
- the runtime agrees: processes and cgroups exist exactly for the guests the model says are
  active, frozen exactly for paused ones (fake: the in-memory kernel; real: cgroup directories,
  ``cgroup.procs``, ``/proc``);
- the event stream is consistent: sequence numbers rise by one across all events, every
  domain's events are exactly the model's, and a per-domain grammar holds (STARTED only while
  inactive, STOPPED only while active except the STOPPED that ends a start attempt, nothing
  after UNDEFINED until a new DEFINED ADDED); a slow consumer gets the same events with gap
  markers covering exactly what it missed, or is dropped with the right resume point;

and at teardown everything is destroyed and undefined, every STARTED has had its STOPPED, and
nothing is left (fake: :meth:`FakeRuntime.leftovers`; real: no cgroup directory and no process
with the run's prefix).

Two runtimes. ``fake`` runs the supervisor in ``trio.run`` with a :class:`trio.testing.MockClock`
that only moves when the ``advance_clock`` rule says so; after each operation the harness waits
until every task is blocked, so every step ends in a deterministic, quiescent state and timed
phases (STOPPING before its deadline, RESTARTING and REBOOTING during backoff) are observable.
``real`` uses :class:`~supervisor.runtime.LinuxRuntime` with busybox guests whose init polls
``/tmp/cmd`` in its own root every 50 ms and does ``reboot -f``, ``poweroff -f`` or ``exit 3``
when told; there time is real, so after each operation the harness waits (``trio.fail_after``)
until the supervisor reaches the model's settled state.

The real runtime also drives networking and the scheduler. Each example creates a sandbox
network namespace (``<prefix>-sbx``) and runs the supervisor with ``host_netns`` set to it, so
every host-side object (bridge ``<prefix>b0``, nft table, dnsmasq) lives there and the host's
own interfaces are never touched. One NAT network (:data:`NETWORK`) is defined and started at
the beginning; ``net_start``/``net_destroy`` toggle it. Some guests carry a NIC on it (the
others a private, empty namespace): a NIC guest's start, or its automatic restart, fails with
STOPPED FAILED (reason start-failed) while the network is down. Destroying the network leaves
its running guests running with a dangling NIC (no bridge port), and a later ``net_start`` does
not plug them back: only their next fresh boot does (libvirt's ``net-destroy`` behaves alike).
``schedinfo`` sets ``cpu_shares`` live: one TUNABLE ``cputune.shares`` when the value changes,
none when it does not, InvalidOperation when the guest does not run. After every step the
harness checks, besides the above: each NIC guest's named namespace exists exactly while it is
active; the bridge's ports (``ip -n SANDBOX link show master BRIDGE``) are exactly the host ends
of the plugged guests, whose addresses differ; the network's nft table and its one dnsmasq
exist exactly while it runs; its events are the model's (DEFINED, STARTED/STOPPED alternating,
UNDEFINED); running guests' ``cpu.shares`` is the model's. At the end of each example nothing
with the example's prefix is left (:func:`supervisor.gc.find`).

Hypothesis runs in the calling thread; the supervisor runs in ``trio.run`` on a helper thread
(one per example), and every rule calls into it with :func:`trio.from_thread.run`. A run of
``steps`` steps is split into rounds of hypothesis examples of at most ``EPISODE_STEPS`` steps;
everything is derived from ``seed``, so ``vsv stress --seed N --steps M ...`` replays a run, and a
failure prints that line and hypothesis's shrunk program (the failing steps).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import trio
import trio.testing

from supervisor.bus import Bus, Gap, PrepareFailed, Subscription, SubscriptionDropped
from supervisor.errors import InvalidOperation, NotFound, RuntimeFailure
from supervisor.events import Event
from supervisor.lifecycle import RestartPolicy
from supervisor.model import (
    AddressRange,
    Bridge,
    CpuTune,
    Domain,
    Filesystem,
    Forward,
    Interface,
    LifecycleAction,
    Network,
    NetworkIp,
    OsSpec,
)

RuntimeKind = Literal["fake", "real"]
T = TypeVar("T")

#: at most this many steps per hypothesis example (hypothesis's buffer caps long examples, and
#: short examples shrink well)
EPISODE_STEPS = 100
MIN_EPISODE_STEPS = 20
#: times are dyadic fractions so the model's sums equal the mock clock's exactly
SHUTDOWN_TIMEOUT_FAKE = 0.5
SHUTDOWN_TIMEOUT_REAL = 0.4
POLICY_FAKE = RestartPolicy(max_restarts=3, window=1e9, backoff_base=0.25, backoff_cap=1.0)
POLICY_REAL = RestartPolicy(max_restarts=3, window=1e9, backoff_base=0.0625, backoff_cap=0.25)
CLOCK_STEPS = (0.125, 0.375, 1.0, 4.0)
#: how long the real runtime may take to reach the model's settled state after one operation
REAL_SETTLE_TIMEOUT = 15.0

#: Supervisor bugs the harness found and tolerates by default, so a run still tests everything
#: else (``vsv stress --strict`` checks the documented behaviour instead). Remove an entry once
#: the supervisor is fixed.
#: - ``redefine-resets-reason``: define_domain() on a stopped domain reports SHUTOFF/UNKNOWN
#:   afterwards instead of keeping the reason (it reads the reason from the new Lifecycle).
#: - ``kill-frozen-hybrid`` (real runtime): destroy of a suspended guest fails after 5 s with
#:   "still has processes" on a host with the v1 freezer and the v2 ``cgroup.kill``: the
#:   kill lands on frozen tasks, which die only when thawed. The harness resumes first.
#: - ``live-schedinfo-persists`` (real runtime, fixed): a live-only ``set_schedinfo`` used to
#:   survive the guest's stop; libvirt drops it then, and so does the supervisor now.
KNOWN_ISSUES: frozenset[str] = frozenset()

ACTIONS: tuple[LifecycleAction, ...] = ("destroy", "restart", "preserve")
ACTIVE = frozenset({"running", "paused", "stopping", "rebooting", "preserved"})
#: the entries of a network's event history that say whether it runs (see EventLog)
RUN_MARKS = ("STARTED", "STOPPED", "RESTART")
#: phases with no timer pending and no operation half done: a supervisor restart keeps them
SETTLED = frozenset({"shutoff", "running", "paused", "preserved"})
WITH_PROCESS = frozenset({"running", "paused", "stopping"})

#: how often each operation is drawn (relative)
OPERATION_WEIGHTS = {
    "define": 2,
    "undefine": 2,
    "start": 6,
    "start_fails": 1,
    "shutdown": 3,
    "destroy": 3,
    "reboot": 2,
    "suspend": 2,
    "resume": 2,
    "guest_acts": 5,
    "advance_clock": 3,
    "consumer_connects": 1,
    "consumer_reads": 1,
    # real runtime only (appended last, so the fake runtime's draws stay as they were)
    "net_start": 2,
    "net_destroy": 1,
    "schedinfo": 3,
    # the supervisor replaced by a new one that re-adopts the running guests
    "restart": 1,
}
#: operations only the fake runtime can do (failure injection, a clock the harness moves)
FAKE_ONLY = frozenset({"start_fails", "advance_clock"})
#: operations only the real runtime does (the fake one has no network or scheduler subsystem)
REAL_ONLY = frozenset({"net_start", "net_destroy", "schedinfo"})
#: the one network the real runtime defines, and the ``cpu_shares`` values schedinfo sets
NETWORK = "n0"
SHARES = (512, 1024, 2048)

#: a busybox init that polls a command file (the real runtime's in-guest actions)
GUEST_LOOP = (
    "while :; do "
    "if [ -e /tmp/cmd ]; then c=$(cat /tmp/cmd); rm -f /tmp/cmd; "
    'case "$c" in reboot) reboot -f;; poweroff) poweroff -f;; crash) exit 3;; esac; fi; '
    "sleep 0.05; done"
)


# =============================================================================== the model


class Illegal(Exception):
    """The model says the operation must be refused (``kind``: 'invalid' or 'missing')."""

    def __init__(self, kind: Literal["invalid", "missing"]) -> None:
        super().__init__(kind)
        self.kind = kind


@attrs.define
class Definition:
    """What the harness defines: lifecycle policy, whether init traps TERM, NIC and CPU shares.

    ``nic`` and ``shares`` are drawn for the real runtime only (the fake one has no network or
    scheduler subsystem): a NIC on :data:`NETWORK`, and ``<cputune><shares>`` (None: none).
    """

    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: LifecycleAction = "destroy"
    traps: bool = True
    nic: bool = False
    shares: int | None = None


@attrs.define
class GuestModel:
    """The model of one guest."""

    name: str
    definition: Definition
    phase: str = "shutoff"
    state: str = "SHUTOFF"
    reason: str = "UNKNOWN"
    #: automatic restarts since the last person-initiated start (the restart budget)
    restarts: int = 0
    #: when the pending timer fires: restart (restarting), respawn (rebooting), kill (stopping)
    due: float | None = None
    #: its NIC's host end is a port of the network's bridge (False: no NIC, or the network
    #: was destroyed under the running guest and its NIC dangles)
    attached: bool = False
    #: the ``cpu_shares`` in force while it runs (the definition's at each fresh boot)
    shares: int | None = None
    #: the last live ``cpu_shares`` since the last definition (quirk live-schedinfo-persists)
    live_shares: int | None = None
    #: a definition stored while the guest was active: it takes over at the next fresh boot
    #: (start, or a scheduled restart); the guest runs, reboots and ends under its own
    pending: Definition | None = None
    #: its init was started by an earlier supervisor: when it ends by itself, the supervisor
    #: (not its parent) cannot tell how, and takes it for a poweroff
    adopted: bool = False

    def set(self, phase: str, state: str, reason: str, due: float | None = None) -> None:
        self.phase, self.state, self.reason, self.due = phase, state, reason, due
        if phase == "shutoff":
            self.take_pending()

    def take_pending(self) -> None:
        """Once stopped (or at a scheduled restart's fresh boot) the guest has the definition
        stored last; live-only changes are gone."""
        if self.pending is not None:
            self.definition, self.pending = self.pending, None
            self.live_shares = None

    @property
    def holds_nic(self) -> bool:
        """Whether the guest still holds a plumbed NIC (its resources are not released)."""
        return self.definition.nic and self.phase in ACTIVE


def event_text(
    type_: str,
    detail: str | None = None,
    *,
    reason: str | None = None,
    end: str | None = None,
    delay: float | None = None,
    params: dict[str, str] | None = None,
) -> str:
    """How the harness compares events: ``TYPE DETAIL [reason=..] [end=..] [delay=..]``.

    ``params``: a TUNABLE's changed parameters, all of them (``cputune.shares=512``).
    """
    parts = [type_] + ([detail] if detail else [])
    parts += [f"{k}={v}" for k, v in sorted((params or {}).items())]
    if reason:
        parts.append(f"reason={reason}")
    if end:
        parts.append(f"end={end}")
    if delay is not None:
        parts.append(f"delay={delay:g}")
    return " ".join(parts)


def text_of(event: Event) -> str:
    delay = event.get("restart_delay")
    params = None
    if event.type == "TUNABLE":
        params = {k: str(v) for k, v in event.data if k != "reason"}
    return event_text(
        event.type,
        event.detail,
        reason=event.get("reason"),
        end=event.get("end"),
        delay=float(delay) if delay is not None else None,
        params=params,
    )


@attrs.define
class Model:
    """The lifecycle contract, restated small: guests, their states, the events expected.

    Pure: time is ``now`` (the mock clock's reading), moved by :meth:`advance`.
    """

    policy: RestartPolicy
    shutdown_timeout: float
    #: known supervisor bugs the model mirrors (see :data:`KNOWN_ISSUES`)
    quirks: frozenset[str] = frozenset()
    guests: dict[str, GuestModel] = attrs.Factory(dict)
    #: every event each domain must have had, in order (``event_text`` form)
    events: dict[str, list[str]] = attrs.Factory(dict)
    now: float = 0.0
    #: the one network (real runtime): defined, running, and its events (types) in order
    net_defined: bool = False
    net_running: bool = False
    net_events: list[str] = attrs.Factory(list)

    def _emit(self, name: str, *texts: str) -> None:
        self.events.setdefault(name, []).extend(texts)

    def _get(self, name: str) -> GuestModel:
        g = self.guests.get(name)
        if g is None:
            raise Illegal("missing")
        return g

    # -- definitions

    def define(self, name: str, definition: Definition) -> None:
        g = self.guests.get(name)
        if g is None:
            self.guests[name] = GuestModel(name, definition)
            self._emit(name, event_text("DEFINED", "ADDED"))
            return
        if g.phase != "shutoff":
            g.pending = definition
            self._emit(name, event_text("DEFINED", "UPDATED"))
            return
        g.definition = definition
        g.pending = None
        g.restarts = 0
        g.live_shares = None
        if "redefine-resets-reason" in self.quirks:
            g.reason = "UNKNOWN"
        self._emit(name, event_text("DEFINED", "UPDATED"))

    def undefine(self, name: str) -> None:
        g = self._get(name)
        if g.phase != "shutoff":
            raise Illegal("invalid")
        del self.guests[name]
        self._emit(name, event_text("UNDEFINED", "REMOVED"))

    # -- the network

    def define_network(self) -> None:
        if self.net_defined:
            raise Illegal("invalid")  # the harness defines it once (redefinition not modelled)
        self.net_defined = True
        self.net_events.append("DEFINED")

    def undefine_network(self) -> None:
        if not self.net_defined:
            raise Illegal("missing")
        if self.net_running:
            raise Illegal("invalid")
        self.net_defined = False
        self.net_events.append("UNDEFINED")

    def start_network(self) -> None:
        if not self.net_defined:
            raise Illegal("missing")
        if self.net_running:
            raise Illegal("invalid")
        self.net_running = True
        self.net_events.append("STARTED")
        # the supervisor plugs the NICs of guests that kept running back into the new bridge
        for g in self.guests.values():
            if g.holds_nic:
                g.attached = True

    def destroy_network(self) -> None:
        """Stop the network. Running guests keep running; their NICs dangle off no bridge.

        That is what the supervisor does (as libvirt's ``net-destroy``): nothing tells the
        guests; they keep their addresses, and a later ``net-start`` plugs them back in.
        """
        if not self.net_defined:
            raise Illegal("missing")
        if not self.net_running:
            raise Illegal("invalid")
        self.net_running = False
        self.net_events.append("STOPPED")
        for g in self.guests.values():
            g.attached = False

    def start_fails(self, name: str) -> bool:
        """Whether a start of ``name`` now must fail: its NIC's network is not running."""
        g = self.guests.get(name)
        if g is None:
            return False
        boots_with = g.pending if g.pending is not None else g.definition
        return boots_with.nic and not self.net_running

    # -- operations

    def _boot(self, g: GuestModel) -> None:
        """A fresh boot: resources made anew from the definition (NIC plugged, shares)."""
        g.set("running", "RUNNING", "BOOTED")
        g.adopted = False
        g.attached = g.definition.nic and self.net_running
        g.shares = g.definition.shares
        if "live-schedinfo-persists" in self.quirks and g.live_shares is not None:
            g.shares = g.live_shares
        self._emit(g.name, event_text("STARTED", "BOOTED"))

    def _boot_fails(self, g: GuestModel) -> None:
        g.set("shutoff", "SHUTOFF", "FAILED")
        self._emit(g.name, event_text("STOPPED", "FAILED", reason="start-failed"))

    def start(self, name: str, *, fails: bool = False) -> None:
        g = self._get(name)
        if g.phase not in ("shutoff", "restarting"):
            raise Illegal("invalid")
        g.restarts = 0
        g.take_pending()  # a guest waiting for its scheduled restart still had it pending
        if fails or self.start_fails(name):
            self._boot_fails(g)
        else:
            self._boot(g)

    def set_shares(self, name: str, shares: int) -> None:
        """``schedinfo --set cpu_shares=N --live``: one TUNABLE when the value changes."""
        g = self._get(name)
        if g.phase not in WITH_PROCESS:
            raise Illegal("invalid")
        g.live_shares = shares
        if g.shares != shares:
            g.shares = shares
            self._emit(name, event_text("TUNABLE", params={"cputune.shares": str(shares)}))

    def shutdown(self, name: str) -> None:
        g = self._get(name)
        if g.phase == "running":
            if g.definition.traps:
                g.set("shutoff", "SHUTOFF", "SHUTDOWN")
                self._emit(name, event_text("STOPPED", "SHUTDOWN", end="poweroff"))
            else:
                g.set("stopping", "SHUTDOWN", "USER", self.now + self.shutdown_timeout)
        elif g.phase == "stopping":
            pass
        elif g.phase == "restarting":
            g.phase, g.due = "shutoff", None
            g.take_pending()
        else:
            raise Illegal("invalid")

    def destroy(self, name: str) -> None:
        g = self._get(name)
        if g.phase in WITH_PROCESS:
            g.set("shutoff", "SHUTOFF", "DESTROYED")
            self._emit(name, event_text("STOPPED", "DESTROYED", end="killed"))
        elif g.phase == "preserved":
            g.set("shutoff", "SHUTOFF", "DESTROYED")
            self._emit(name, event_text("STOPPED", "DESTROYED"))
        elif g.phase == "restarting":
            g.phase, g.due = "shutoff", None
            g.take_pending()
        else:
            raise Illegal("invalid")

    def suspend(self, name: str) -> None:
        g = self._get(name)
        if g.phase != "running":
            raise Illegal("invalid")
        g.set("paused", "PAUSED", "USER")
        self._emit(name, event_text("SUSPENDED", "PAUSED"))

    def resume(self, name: str) -> None:
        g = self._get(name)
        if g.phase != "paused":
            raise Illegal("invalid")
        g.set("running", "RUNNING", "UNPAUSED")
        self._emit(name, event_text("RESUMED", "UNPAUSED"))

    def reboot(self, name: str) -> None:
        g = self._get(name)
        if g.phase != "running":
            raise Illegal("invalid")
        self.guest_ends(name, "reboot", requested=True)

    def guest_ends(self, name: str, how: str, *, requested: bool = False) -> None:
        """init ended (``how``: reboot, poweroff, crash, exit0), by itself unless ``requested``
        (an API reboot: the supervisor knows what it asked for, adopted guest or not)."""
        g = self._get(name)
        end = {"exit0": "poweroff"}.get(how, how)
        if g.adopted and not requested:
            end = "poweroff"
        g.adopted = False
        if g.phase == "stopping":
            g.set("shutoff", "SHUTOFF", "SHUTDOWN")
            self._emit(name, event_text("STOPPED", "SHUTDOWN", end=end))
            return
        if g.phase not in ("running", "paused"):
            raise Illegal("invalid")
        d = g.definition
        action = {"poweroff": d.on_poweroff, "reboot": d.on_reboot, "crash": d.on_crash}[end]
        delay: float | None = None
        reason: str | None = None
        if action == "restart":
            if g.restarts >= self.policy.max_restarts:
                action, reason = "destroy", "restart-budget-exhausted"
            else:
                delay = self.policy.delay(g.restarts)
                g.restarts += 1

        def ev(type_: str, detail: str | None, why: str | None = None) -> str:
            return event_text(type_, detail, reason=why, end=end, delay=delay)

        if end == "crash":
            if action == "destroy":
                g.set("shutoff", "SHUTOFF", "CRASHED")
                self._emit(name, ev("STOPPED", "CRASHED", reason))
            elif action == "restart":
                assert delay is not None
                g.set("restarting", "SHUTOFF", "CRASHED", self.now + delay)
                self._emit(name, ev("STOPPED", "CRASHED"))
            else:
                g.set("preserved", "CRASHED", "PANICKED")
                self._emit(name, ev("CRASHED", "PANICKED"))
        elif action == "destroy":
            g.set("shutoff", "SHUTOFF", "SHUTDOWN")
            self._emit(name, ev("SHUTDOWN", "GUEST"), ev("STOPPED", "SHUTDOWN", reason))
        elif action == "preserve":
            g.set("preserved", "SHUTDOWN", "UNKNOWN")
            self._emit(name, ev("SHUTDOWN", "GUEST"))
        elif end == "reboot":
            assert delay is not None
            g.set("rebooting", "RUNNING", "BOOTED", self.now + delay)
            self._emit(name, ev("REBOOT", None))
        else:
            assert delay is not None
            g.set("restarting", "SHUTOFF", "SHUTDOWN", self.now + delay)
            self._emit(name, ev("SHUTDOWN", "GUEST"), ev("STOPPED", "SHUTDOWN"))
        self.settle()

    def restart_supervisor(self) -> None:
        """A new supervisor replaces the old one (every guest settled, see :data:`SETTLED`).

        Running and paused guests are re-adopted as RUNNING/PAUSED with reason UNKNOWN and no
        event; their restart budgets start again. A preserved guest (init gone, resources kept)
        is cleaned up and reported ``STOPPED FAILED reason=ended-while-supervisor-down``. A
        stopped guest's reason is not kept across the restart. A running guest keeps its live
        ``cpu_shares``, and a NIC that dangled since a net-destroy stays unplugged.
        """
        if any(g.phase not in SETTLED for g in self.guests.values()):
            raise Illegal("invalid")
        if self.net_defined:
            # a network that ran is taken over in place (same bridge, new dnsmasq) and STARTED,
            # and the adopted guests' NICs are plugged into it
            self.net_events.append("RESTART")
            if self.net_running:
                self.net_events.append("STARTED")
        for g in self.guests.values():
            g.restarts = 0
            if g.phase in ("running", "paused"):
                g.set(g.phase, g.state, "UNKNOWN")
                g.adopted = True
            elif g.phase == "preserved":
                g.set("shutoff", "SHUTOFF", "FAILED")
                self._emit(
                    g.name,
                    event_text("STOPPED", "FAILED", reason="ended-while-supervisor-down"),
                )
            else:
                g.reason = "UNKNOWN"

    # -- time

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds pass (``math.inf``: until no timer is pending)."""
        if dt == math.inf:
            while True:
                pending = [g.due for g in self.guests.values() if g.due is not None]
                if not pending:
                    return
                self.now = max(self.now, min(pending))
                self.settle()
        self.now += dt
        self.settle()

    def settle(self) -> None:
        """Fire every timer that is due."""
        for g in self.guests.values():
            if g.due is None or g.due > self.now:
                continue
            if g.phase == "restarting":
                g.take_pending()
                if self.start_fails(g.name):
                    self._boot_fails(g)
                else:
                    self._boot(g)
            elif g.phase == "rebooting":
                g.set("running", "RUNNING", "BOOTED")
            elif g.phase == "stopping":
                g.set("shutoff", "SHUTOFF", "DESTROYED")
                self._emit(
                    g.name,
                    event_text("STOPPED", "DESTROYED", reason="shutdown-timeout", end="killed"),
                )

    def timers_pending(self) -> bool:
        return any(g.due is not None for g in self.guests.values())


# =============================================================================== event checks


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

    def supervisor_restarted(self) -> None:
        """A new supervisor took over: it tears down and starts again the networks that ran
        (without a STOPPED), so each defined network's history gets a RESTART mark."""
        for seen in self.networks.values():
            if seen and seen[-1] != "UNDEFINED":
                seen.append("RESTART")

    def _network_grammar(self, e: Event) -> None:
        """DEFINED first; STARTED and STOPPED alternate (a RESTART mark counts as a STOPPED);
        UNDEFINED only while stopped."""
        seen = self.networks.get(e.name or "", [])
        last_run = next(
            ("STOPPED" if t == "RESTART" else t for t in reversed(seen) if t in RUN_MARKS),
            "STOPPED",
        )
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


# =============================================================================== the trio side


class TrioThread:
    """``trio.run`` on a helper thread, called into from the hypothesis thread."""

    def __init__(self, clock: trio.abc.Clock | None) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(clock,), daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self, clock: trio.abc.Clock | None) -> None:
        async def host() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(host, clock=clock)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def call(self, afn: Callable[[], Awaitable[T]]) -> T:
        """Run ``afn()`` in the trio thread and return its result."""
        if self._error is not None:
            raise AssertionError(f"the supervisor's trio loop died: {self._error!r}")
        try:
            return trio.from_thread.run(afn, trio_token=self._token)
        except trio.RunFinishedError:
            raise AssertionError(f"the supervisor's trio loop died: {self._error!r}") from None

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(30)
        if self._error is not None:
            raise AssertionError(f"the supervisor's trio loop died: {self._error!r}")


# =============================================================================== the machine


@attrs.define
class RunContext:
    """What one ``run_stress`` shares between its examples (real guests' roots, counters)."""

    runtime: RuntimeKind
    guests: int
    workdir: Path
    quirks: frozenset[str] = KNOWN_ISSUES
    steps: int = 0
    examples: int = 0
    #: examples run in the current round (its first is hypothesis's all-simplest example)
    round_examples: int = 0
    #: operations carried out (counted examples only): "start", "start:refused", ...
    ops: Counter[str] = attrs.Factory(Counter)
    roots: dict[str, Path] = attrs.Factory(dict)


def guest_domain(ctx: RunContext, name: str, d: Definition) -> Domain:
    """The domain the harness defines: a busybox init that polls /tmp/cmd (and may trap TERM).

    A NIC-bearing guest gets one ``<interface type='network'>`` on :data:`NETWORK` (and so its
    own named namespace); every other guest a private, empty one (``privnet``).
    """
    script = ("trap 'exit 0' TERM; " if d.traps else "") + GUEST_LOOP
    fs: tuple[Filesystem, ...] = ()
    if name in ctx.roots:
        fs = (Filesystem(source=str(ctx.roots[name]), target="/"),)
    return Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=fs,
        privnet=not d.nic,
        interfaces=(Interface(type="network", source=NETWORK),) if d.nic else (),
        cputune=CpuTune(shares=d.shares) if d.shares is not None else None,
        on_poweroff=d.on_poweroff,
        on_reboot=d.on_reboot,
        on_crash=d.on_crash,
    )


def stress_network(prefix: str, n: int) -> Network:
    """The real runtime's NAT network: bridge ``<prefix>b0``, 10.213.(200 + n % 50).0/24.

    Its DHCP range covers far more than any run's guests (the guests get their address with
    the NIC; the range is what the allocator hands out from).
    """
    net = f"10.213.{200 + n % 50}"
    return Network(
        name=NETWORK,
        bridge=Bridge(name=f"{prefix}b0", stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"{net}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"{net}.2", f"{net}.254"),),
            ),
        ),
    )


def _make_machine(ctx: RunContext) -> type[Any]:
    """The state machine class for one run (hypothesis needs a class; it closes over ``ctx``)."""
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

    from supervisor import gc, nsutil
    from supervisor.daemon import Supervisor
    from supervisor.fakeruntime import FakeRuntime
    from supervisor.guest.cgroups import GuestCgroup, detect_layout, find_leftovers
    from supervisor.guest.procs import nspid
    from supervisor.net import nftables
    from supervisor.net.dnsmasq import DnsmasqFiles
    from supervisor.net.names import nft_table
    from supervisor.net.subsystem import dnsmasq_pids
    from supervisor.runtime import Runtime

    names = tuple(f"g{i}" for i in range(ctx.guests))
    fake = ctx.runtime == "fake"
    # the real runtime also draws a NIC and CPU shares (the fake's draws stay as they were)
    extra: dict[str, st.SearchStrategy[Any]] = (
        {} if fake else {"nic": st.booleans(), "shares": st.sampled_from((None, *SHARES))}
    )
    definitions = st.builds(
        Definition,
        on_poweroff=st.sampled_from(ACTIONS),
        on_reboot=st.sampled_from(ACTIONS),
        on_crash=st.sampled_from(ACTIONS),
        traps=st.booleans(),
        **extra,
    )
    ends = ("reboot", "poweroff", "crash", "exit0") if fake else ("reboot", "poweroff", "crash")
    operations = tuple(
        op
        for op, weight in OPERATION_WEIGHTS.items()
        if op not in (REAL_ONLY if fake else FAKE_ONLY)
        for _ in range(weight)
    )

    class SupervisorMachine(RuleBasedStateMachine):
        """Random operations on a Supervisor, checked against :class:`Model` after each step."""

        def __init__(self) -> None:
            super().__init__()
            ctx.examples += 1
            ctx.round_examples += 1
            self.n = ctx.examples
            # hypothesis starts every run with its "simplest" example (the first rule with the
            # simplest arguments, over and over): it runs, but its steps are not counted
            self.counting = ctx.round_examples > 1
            # a command an earlier example wrote but no guest read (that example failed) must
            # not make a guest of this one act on its own
            for root in ctx.roots.values():
                (root / "tmp" / "cmd").unlink(missing_ok=True)
            self.first_check = True
            self.clock = trio.testing.MockClock() if fake else None
            self.fake_rt = FakeRuntime() if fake else None
            policy = POLICY_FAKE if fake else POLICY_REAL
            timeout = SHUTDOWN_TIMEOUT_FAKE if fake else SHUTDOWN_TIMEOUT_REAL
            self.model = Model(policy=policy, shutdown_timeout=timeout, quirks=ctx.quirks)
            self.torn_down = False
            self.log = EventLog()
            self.consumers: list[Consumer] = []
            self.prefix = "vsvs" + secrets.token_hex(3)
            self.dir = Path(tempfile.mkdtemp(prefix=f"ex{self.n}-", dir=ctx.workdir))
            self.layout = None if fake else detect_layout()
            # real: host-side networking (bridge, nft table, dnsmasq) in a sandbox namespace
            self.sandbox: str | None = None if fake else f"{self.prefix}-sbx"
            host_netns = None
            if self.sandbox is not None:
                host_netns = str(nsutil.create_netns(self.sandbox))
            self.host_netns = host_netns
            self.sup = self._new_supervisor(1, self.fake_rt)
            self.main_sub: Subscription | None = None
            self.run_scope: trio.CancelScope | None = None
            self.run_done: trio.Event | None = None
            try:
                self.trio = TrioThread(self.clock)
                try:
                    self.trio.call(self._start)
                except BaseException:
                    self.trio.close()
                    raise
            except BaseException:
                self._remove_sandbox()
                raise

        def _new_supervisor(self, first_seq: int, runtime: Runtime | None) -> Supervisor:
            return Supervisor(
                state_dir=self.dir / "state",
                run_dir=self.dir / "run",
                prefix=self.prefix,
                runtime=runtime,
                host_netns=self.host_netns,
                networking=not fake,
                restart_policy=self.model.policy,
                shutdown_timeout=self.model.shutdown_timeout,
                bus=Bus(first_seq=first_seq),
            )

        async def _start(self) -> None:
            # subscribed before run(): a restarted supervisor publishes while it adopts
            self.main_sub = self.sup.bus.subscribe("stress", buffer=10_000_000)
            await self.trio.nursery.start(self._run_supervisor)

        async def _run_supervisor(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            done = self.run_done = trio.Event()
            try:
                with trio.CancelScope() as self.run_scope:
                    await self.sup.run(task_status=task_status)
            finally:
                done.set()

        async def _restart(self) -> None:
            """Replace the supervisor as an upgrade does: guests keep running, then the new
            one (same dirs, same runtime, numbering continued) re-adopts them."""
            await self._problems()  # the old supervisor's last events into the log
            for consumer in self.consumers:
                consumer.drain(self.log)
                consumer.sub.unsubscribe()
            self.consumers.clear()
            if self.sup.net is not None:
                self.sup.net.detach()  # networks stay up, as for `vsv daemon --keep-guests`
            self.log.supervisor_restarted()
            assert self.run_scope is not None
            assert self.run_done is not None
            assert self.main_sub is not None
            self.run_scope.cancel()
            await self.run_done.wait()
            self.main_sub.unsubscribe()
            # the successor gets the same runtime: the fake kernel, or the real runtime's pools
            # of fork servers and embryos (which hold nothing of any guest)
            self.sup = self._new_supervisor(self.sup.bus.last_seq + 1, self.sup.runtime)
            await self._start()

        # -- running one operation ---------------------------------------------------------

        def _do(
            self,
            op: Callable[[], Awaitable[object]],
            model_op: Callable[[], None],
            what: str,
        ) -> None:
            """Apply ``model_op`` to the model, ``op`` to the supervisor, then check both."""
            illegal: Illegal | None = None
            try:
                model_op()
            except Illegal as exc:
                illegal = exc
            if self.counting:
                verb = what.split()[0].rstrip(":")
                ctx.ops[verb + (":refused" if illegal is not None else "")] += 1
            error = self.trio.call(lambda: self._run_op(op))
            if illegal is not None:
                want = NotFound if illegal.kind == "missing" else InvalidOperation
                if not isinstance(error, want):
                    raise AssertionError(f"{what}: expected {want.__name__}, got {error!r}")
            elif error is not None and not isinstance(error, _Expected):
                raise AssertionError(f"{what}: unexpected {error!r}") from error
            self._check(what)

        async def _run_op(self, op: Callable[[], Awaitable[object]]) -> BaseException | None:
            error: BaseException | None = None
            done = trio.Event()

            async def runner() -> None:
                nonlocal error
                try:
                    await op()
                except (InvalidOperation, NotFound, RuntimeFailure, _Expected) as exc:
                    error = exc
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner)
                if fake:
                    # the mock clock stands still: an operation still running once every task
                    # is blocked waits for time, which the harness never lets an API call do
                    await trio.testing.wait_all_tasks_blocked()
                    if not done.is_set():
                        nursery.cancel_scope.cancel()
                        raise AssertionError("the operation blocked (it waits for time to pass)")
                else:
                    with trio.fail_after(REAL_SETTLE_TIMEOUT):
                        await done.wait()
            return error

        def _check(self, what: str) -> None:
            if fake:
                problems = self.trio.call(self._problems)
            else:
                self.model.advance(math.inf)
                problems = self.trio.call(self._settle_real)
            if problems:
                raise AssertionError(f"after {what}:\n  " + "\n  ".join(problems))

        async def _settle_real(self) -> list[str]:
            problems: list[str] = []
            with trio.move_on_after(REAL_SETTLE_TIMEOUT):
                while True:
                    problems = await self._problems()
                    if not problems:
                        return []
                    await trio.sleep(0.01)
            return problems

        async def _problems(self) -> list[str]:
            """Everything that disagrees with the model now (empty: all is well)."""
            assert self.main_sub is not None
            while True:
                try:
                    self.log.add(self.main_sub.receive_nowait())
                except trio.WouldBlock:
                    break
            problems: list[str] = []
            model = self.model
            if sorted(self.sup.slots) != sorted(model.guests):
                problems.append(f"defined: {sorted(self.sup.slots)} != {sorted(model.guests)}")
            for name in names:
                want_events = model.events.get(name, [])
                got_events = self.log.by_name.get(name, [])
                if got_events != want_events:
                    problems.append(f"{name} events: {got_events} != expected {want_events}")
                g = model.guests.get(name)
                if g is not None and name in self.sup.slots:
                    st_ = self.sup.domain_status(name)
                    if (st_.state, st_.reason) != (g.state, g.reason):
                        problems.append(
                            f"{name} ({g.phase}): state {st_.state}/{st_.reason}, "
                            f"expected {g.state}/{g.reason}"
                        )
                problems.extend(self._runtime_problems(name, g))
            if not fake:
                problems.extend(await self._network_problems())
            return problems

        async def _network_problems(self) -> list[str]:
            """The network's kernel side agrees with the model (in the sandbox namespace).

            Its nft table and its dnsmasq exist exactly while it runs; the bridge's ports are
            exactly the host ends of the NIC guests plugged in while it ran (not those whose
            NIC dangles since a net-destroy); plugged guests' addresses differ.
            """
            assert self.sandbox is not None
            model = self.model
            out: list[str] = []
            got_events = self.log.networks.get(NETWORK, [])
            if got_events != model.net_events:
                out.append(f"network events: {got_events} != expected {model.net_events}")
            sandbox = str(nsutil.netns_path(self.sandbox))
            tables = await nftables.list_tables(sandbox)
            table = nft_table(self.prefix, NETWORK)
            if (table in tables) != model.net_running:
                out.append(f"nft table {table} in {tables}, network running={model.net_running}")
            conf = DnsmasqFiles.in_dir(self.dir / "run" / "net", self.prefix, NETWORK).conf
            pids = dnsmasq_pids(str(conf))
            if len(pids) != int(model.net_running):
                out.append(f"dnsmasq {pids}, network running={model.net_running}")
            plugged = sorted(n for n, g in model.guests.items() if g.attached and g.phase in ACTIVE)
            want_ports: set[str] = set()
            addresses: dict[str, str] = {}
            for n in plugged:
                nics = self.sup.domain_interfaces(n)
                if not nics:  # not plumbed yet (a restart in progress): settle again
                    out.append(f"{n}: no NIC yet, plugged in the model")
                    continue
                nic = nics[0]
                want_ports.add(str(nic["host_if"]))
                for a in nic["addresses"]:
                    if a["address"] in addresses:
                        out.append(f"{n} and {addresses[a['address']]} both have {a['address']}")
                    addresses[a["address"]] = n
            ports = await self._bridge_ports()
            if ports != want_ports:
                out.append(f"bridge ports {sorted(ports)} != {sorted(want_ports)} of {plugged}")
            return out

        async def _bridge_ports(self) -> set[str]:
            """``ip -n SANDBOX -o link show master BRIDGE``: its ports (none: no bridge)."""
            assert self.sandbox is not None
            result = await trio.run_process(
                ["ip", "-n", self.sandbox, "-o", "link", "show", "master", f"{self.prefix}b0"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if result.returncode != 0:
                return set()
            return {
                line.split(":")[1].strip().split("@")[0]
                for line in result.stdout.decode().splitlines()
                if line.strip()
            }

        def _runtime_problems(self, name: str, g: GuestModel | None) -> list[str]:
            active = g is not None and g.phase in ACTIVE
            running = g is not None and g.phase in WITH_PROCESS
            paused = g is not None and g.phase == "paused"
            out: list[str] = []
            if self.fake_rt is not None:
                cg = self.fake_rt.cgroup(self.prefix, name)
                proc = self.fake_rt.guest_of(name)
                if cg.exists != active:
                    out.append(f"{name} ({g and g.phase}): cgroup exists={cg.exists}")
                if (proc is not None) != running:
                    out.append(f"{name} ({g and g.phase}): init alive={proc is not None}")
                if proc is not None and set(proc.pids) != set(cg.members):
                    out.append(f"{name}: cgroup members {cg.members} != {proc.pids}")
                if cg.frozen != paused:
                    out.append(f"{name} ({g and g.phase}): frozen={cg.frozen}")
                return out
            assert self.layout is not None
            real = GuestCgroup(self.layout, self.prefix, name)
            exists = [os.path.isdir(p) for p in real.paths()]
            if any(exists) != active or (active and not all(exists)):
                out.append(f"{name} ({g and g.phase}): cgroup dirs exist {exists}")
            pids = real.pids()
            if bool(pids) != running:
                out.append(f"{name} ({g and g.phase}): processes {sorted(pids)}")
            if active and all(exists) and real.is_frozen() != paused:
                out.append(f"{name} ({g and g.phase}): frozen={real.is_frozen()}")
            nic = g is not None and g.definition.nic
            netns = nsutil.netns_exists(f"{self.prefix}-{name}")
            if netns != (nic and active):
                out.append(f"{name} ({g and g.phase}, nic={nic}): netns exists={netns}")
            if running and g is not None and g.shares is not None:
                cpu = real._ctrl_dir("cpu")
                shares = Path(cpu, "cpu.shares") if cpu is not None else None
                if shares is not None and shares.exists():
                    got = int(shares.read_text())
                    if got != g.shares:
                        out.append(f"{name}: cpu.shares {got}, expected {g.shares}")
            if running and name in self.sup.slots:
                init = self.sup.domain_status(name).init_pid
                try:
                    alive = init is not None and init in pids and nspid(init)[-1] == 1
                except (OSError, RuntimeFailure, IndexError):
                    alive = False
                if not alive:
                    out.append(f"{name}: init pid {init} is not a live guest init in {pids}")
            return out

        # -- operations ----------------------------------------------------------------------
        # One hypothesis rule (``step``) draws the operation itself: hypothesis's swarm testing
        # would otherwise switch most rules off in each example (a run without ``define``
        # tests nothing), and a weighted draw keeps the mix useful for thousands of steps.

        @initialize(definitions=st.lists(definitions, min_size=len(names), max_size=len(names)))
        def define_all(self, definitions: list[Definition]) -> None:
            if not fake:
                network = stress_network(self.prefix, self.n)
                self._do(
                    _call(self.sup.define_network, network),
                    self.model.define_network,
                    f"net-define {NETWORK}",
                )
                self._do(
                    _call(self.sup.start_network, NETWORK),
                    self.model.start_network,
                    f"net-start {NETWORK}",
                )
            for name, definition in zip(names, definitions, strict=True):
                domain = guest_domain(ctx, name, definition)
                self._do(
                    _call(self.sup.define_domain, domain),
                    _call(self.model.define, name, definition),
                    f"define {name} {definition}",
                )

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            op = data.draw(st.sampled_from(operations), label="operation")
            getattr(self, "op_" + op)(data)

        def _pick(self, data: st.DataObject, phases: frozenset[str] | None) -> str:
            """A guest name: usually one for which the operation is legal, sometimes any."""
            fitting = [
                n
                for n in names
                if (phases is None and n not in self.model.guests)
                or (
                    phases is not None
                    and n in self.model.guests
                    and self.model.guests[n].phase in phases
                )
            ]
            if fitting and data.draw(st.integers(0, 9), label="legal") < 8:
                return data.draw(st.sampled_from(fitting), label="name")
            return data.draw(st.sampled_from(names), label="name")

        def op_define(self, data: st.DataObject) -> None:
            name = self._pick(data, None)
            definition = data.draw(definitions, label="definition")
            domain = guest_domain(ctx, name, definition)
            g = self.model.guests.get(name)
            # "define-active": the stored definition changes under an active guest
            verb = "define" if g is None or g.phase == "shutoff" else "define-active"
            self._do(
                lambda: self.sup.define_domain(domain),
                lambda: self.model.define(name, definition),
                f"{verb} {name} {definition}",
            )

        def op_undefine(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"shutoff"}))
            self._do(
                lambda: self.sup.undefine_domain(name),
                lambda: self.model.undefine(name),
                f"undefine {name}",
            )

        def op_start(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"shutoff", "restarting"}))
            g = self.model.guests.get(name)
            legal = g is not None and g.phase in ("shutoff", "restarting")
            if legal and self.model.start_fails(name):
                # a NIC guest whose network is down: refused by the network hook (STOPPED FAILED)
                self._do(
                    _expect(
                        _call(self.sup.start_domain, name), PrepareFailed, cause=InvalidOperation
                    ),
                    lambda: self.model.start(name),
                    f"start-without-network {name}",
                )
                return
            self._do(
                lambda: self.sup.start_domain(name),
                lambda: self.model.start(name),
                f"start {name}",
            )

        def op_net_start(self, data: st.DataObject) -> None:
            self._do(
                _call(self.sup.start_network, NETWORK),
                self.model.start_network,
                f"net-start {NETWORK}",
            )

        def op_net_destroy(self, data: st.DataObject) -> None:
            if self.counting and any(g.attached for g in self.model.guests.values()):
                ctx.ops["net-destroy:under-running-guests"] += 1
            self._do(
                _call(self.sup.destroy_network, NETWORK),
                self.model.destroy_network,
                f"net-destroy {NETWORK}",
            )

        def op_schedinfo(self, data: st.DataObject) -> None:
            """``schedinfo --set cpu_shares=N --live``: refused unless the guest runs."""
            name = self._pick(data, frozenset({"running", "paused"}))
            shares = data.draw(st.sampled_from(SHARES), label="cpu_shares")
            self._do(
                lambda: self.sup.set_schedinfo(
                    name, {"cpu_shares": str(shares)}, live=True, config=False
                ),
                lambda: self.model.set_shares(name, shares),
                f"schedinfo {name} cpu_shares={shares}",
            )

        def op_start_fails(self, data: st.DataObject) -> None:
            """A start whose spawn or cgroup creation fails in the (fake) runtime."""
            rt = self.fake_rt
            assert rt is not None
            name = self._pick(data, frozenset({"shutoff", "restarting"}))
            what = data.draw(st.sampled_from(("spawn", "cgroup.create")), label="failing")
            g = self.model.guests.get(name)
            if g is None or g.phase not in ("shutoff", "restarting"):
                return

            async def op_() -> None:
                rt.fail_next(what)  # type: ignore[arg-type]
                try:
                    await self.sup.start_domain(name)
                finally:
                    left = rt.pending_failures()
                    rt.clear_failures()
                if left:
                    raise AssertionError(f"the injected {what} failure was not reached")
                raise AssertionError("start succeeded despite the injected failure")

            self._do(
                _expect(op_, RuntimeFailure),
                lambda: self.model.start(name, fails=True),
                f"start {name} with {what} failing",
            )

        def op_shutdown(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"running", "stopping", "restarting"}))
            self._do(
                lambda: self.sup.shutdown_domain(name),
                lambda: self.model.shutdown(name),
                f"shutdown {name}",
            )

        def op_destroy(self, data: st.DataObject) -> None:
            name = self._pick(data, WITH_PROCESS | {"preserved", "restarting"})
            g = self.model.guests.get(name)
            if g is not None and g.phase == "rebooting":
                return  # destroy waits for the respawn backoff: see the report
            if g is not None and g.phase == "paused" and self._frozen_kill_fails():
                return
            self._do(
                lambda: self.sup.destroy_domain(name),
                lambda: self.model.destroy(name),
                f"destroy {name}",
            )

        def op_reboot(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"running"}))
            self._do(
                lambda: self.sup.reboot_domain(name),
                lambda: self.model.reboot(name),
                f"reboot {name}",
            )

        def op_suspend(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"running"}))
            self._do(
                lambda: self.sup.suspend_domain(name),
                lambda: self.model.suspend(name),
                f"suspend {name}",
            )

        def op_resume(self, data: st.DataObject) -> None:
            name = self._pick(data, frozenset({"paused"}))
            self._do(
                lambda: self.sup.resume_domain(name),
                lambda: self.model.resume(name),
                f"resume {name}",
            )

        def op_guest_acts(self, data: st.DataObject) -> None:
            """The guest itself reboots, powers off, crashes (or exits 0)."""
            phases = frozenset({"running"}) if not fake else frozenset({"running", "stopping"})
            name = self._pick(data, phases)
            how = data.draw(st.sampled_from(ends), label="how")
            g = self.model.guests.get(name)
            if g is None or g.phase not in phases:
                return
            self._do(
                lambda: self._guest_acts(name, how),
                lambda: self.model.guest_ends(name, how),
                f"guest {name} does {how}",
            )

        async def _guest_acts(self, name: str, how: str) -> None:
            if self.fake_rt is not None:
                self.fake_rt.guest_ends(name, how)  # type: ignore[arg-type]
                await trio.lowlevel.checkpoint()
                return
            root = ctx.roots[name]
            tmp = root / "tmp" / "cmd.new"
            tmp.write_text(how + "\n")
            tmp.rename(root / "tmp" / "cmd")

        def op_restart(self, data: st.DataObject) -> None:
            """The supervisor is replaced while the guests run (once every guest is settled)."""
            if any(g.phase not in SETTLED for g in self.model.guests.values()):
                return
            self._do(self._restart, self.model.restart_supervisor, "restart the supervisor")

        def op_advance_clock(self, data: st.DataObject) -> None:
            clock = self.clock
            assert clock is not None
            dt = data.draw(st.sampled_from(CLOCK_STEPS), label="seconds")

            async def jump() -> None:
                clock.jump(dt)
                await trio.lowlevel.checkpoint()

            self._do(jump, lambda: self.model.advance(dt), f"advance the clock {dt}s")

        def op_consumer_connects(self, data: st.DataObject) -> None:
            """A consumer subscribes with a tiny buffer: it will fall behind."""
            buffer = data.draw(st.integers(1, 4), label="buffer")
            overflow: Literal["gap", "drop"] = data.draw(
                st.sampled_from(("gap", "drop")), label="overflow"
            )
            if len(self.consumers) >= 3:
                return

            async def connect() -> None:
                sub = self.sup.bus.subscribe(
                    f"consumer{len(self.consumers)}", buffer=buffer, overflow=overflow
                )
                self.consumers.append(Consumer(sub, overflow, self.sup.bus.last_seq + 1))

            self.trio.call(connect)

        def op_consumer_reads(self, data: st.DataObject) -> None:
            """A consumer catches up (gaps, or its drop, checked) and perhaps disconnects."""
            if not self.consumers:
                return
            i = data.draw(st.integers(0, len(self.consumers) - 1), label="consumer")
            disconnect = data.draw(st.booleans(), label="disconnect")
            consumer = self.consumers[i]

            async def read() -> None:
                await self._problems()  # brings the harness's own log up to date
                consumer.drain(self.log)
                if disconnect or consumer.dropped:
                    consumer.sub.unsubscribe()
                    del self.consumers[i]

            self.trio.call(read)

        @invariant()
        def sequence_has_no_gaps(self) -> None:
            # runs once at the start, then after every step: counts the steps
            if self.counting and not self.first_check:
                ctx.steps += 1
            self.first_check = False
            if self.log.events:
                seqs = [e.seq for e in self.log.events[-50:]]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        # -- teardown ------------------------------------------------------------------------

        def teardown(self) -> None:
            """Destroy and undefine everything; assert the stream closed and nothing leaked."""
            try:
                if fake:
                    self._do(self._jump_far, lambda: self.model.advance(64.0), "time passes")
                for name in sorted(self.model.guests):
                    if self.model.guests[name].phase == "paused" and self._frozen_kill_fails():
                        self._do(
                            _call(self.sup.resume_domain, name),
                            _call(self.model.resume, name),
                            f"teardown: resume {name}",
                        )
                    if self.model.guests[name].phase != "shutoff":
                        self._do(
                            _call(self.sup.destroy_domain, name),
                            _call(self.model.destroy, name),
                            f"teardown: destroy {name}",
                        )
                if self.model.net_running:
                    self._do(
                        _call(self.sup.destroy_network, NETWORK),
                        self.model.destroy_network,
                        f"teardown: net-destroy {NETWORK}",
                    )
                if self.model.net_defined:
                    self._do(
                        _call(self.sup.undefine_network, NETWORK),
                        self.model.undefine_network,
                        f"teardown: net-undefine {NETWORK}",
                    )
                for name in sorted(self.model.guests):
                    self._do(
                        _call(self.sup.undefine_domain, name),
                        _call(self.model.undefine, name),
                        f"teardown: undefine {name}",
                    )
                if self.log.active:
                    raise AssertionError(f"STARTED without STOPPED at teardown: {self.log.active}")
                records = list((self.dir / "run").glob("domains/*"))
                if records:
                    raise AssertionError(f"run records left: {records}")
                self.torn_down = True
            finally:
                self._stop()

        def _frozen_kill_fails(self) -> bool:
            return not fake and "kill-frozen-hybrid" in ctx.quirks

        async def _jump_far(self) -> None:
            # one jump fires every timer: no restart or respawn arms another one
            assert self.clock is not None
            self.clock.jump(64.0)
            await trio.lowlevel.checkpoint()

        def _stop(self) -> None:
            """Stop the supervisor; make sure nothing is left even after a failure."""
            try:
                if not fake:
                    with contextlib.suppress(Exception):
                        self.trio.call(self._destroy_all)
            finally:
                self.trio.close()
                try:
                    leaks: object
                    if self.fake_rt is not None:
                        leaks = self.fake_rt.leftovers()
                    else:
                        assert self.layout is not None
                        leaks = find_leftovers(self.layout, self.prefix)
                        if leaks:
                            trio.run(_remove_cgroups, self.layout, self.prefix, names)
                        self._remove_sandbox()
                        found = gc.find(self.prefix)
                        if found:
                            leaks = [leaks, found]
                            gc.remove(found)
                    # after a failed step the supervisor was stopped with guests running: the
                    # fake's leftovers then say nothing (real ones were cleaned up above)
                    if leaks and self.torn_down:
                        raise AssertionError(f"leftovers after teardown: {leaks}")
                finally:
                    shutil.rmtree(self.dir, ignore_errors=True)

        def _remove_sandbox(self) -> None:
            """Drop the sandbox namespace (bridge and veths go with it), guests' namespaces
            and a dnsmasq a failed run left."""
            if self.sandbox is None:
                return
            conf = DnsmasqFiles.in_dir(self.dir / "run" / "net", self.prefix, NETWORK).conf
            for pid in dnsmasq_pids(str(conf)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for ns in nsutil.list_netns(self.prefix + "-"):
                nsutil.delete_netns(ns)

        async def _destroy_all(self) -> None:
            with trio.move_on_after(20):
                for name, slot in list(self.sup.slots.items()):
                    if slot.task_running or slot.cgroup is not None:
                        with contextlib.suppress(Exception):
                            await self.sup.destroy_domain(name)

    return SupervisorMachine


class _Expected(Exception):
    """Marks an error the operation was meant to raise (a start that must fail)."""


def _expect(
    op: Callable[[], Awaitable[object]],
    error: type[BaseException],
    *,
    cause: type[BaseException] | None = None,
) -> Callable[[], Awaitable[None]]:
    """``op`` must raise ``error`` (caused by ``cause``, when given)."""

    async def run() -> None:
        try:
            await op()
        except error as exc:
            if cause is not None and not isinstance(exc.__cause__, cause):
                raise AssertionError(f"{exc!r} was caused by {exc.__cause__!r}") from exc
            raise _Expected(str(exc)) from exc
        raise AssertionError(f"expected {error.__name__}, the operation succeeded")

    return run


def _call(fn: Callable[..., T], *args: object) -> Callable[[], T]:
    return lambda: fn(*args)


async def _remove_cgroups(layout: Any, prefix: str, names: tuple[str, ...]) -> None:
    """Last resort after a failed real run: kill and remove the run's cgroups."""
    from supervisor.guest.cgroups import GuestCgroup

    for name in names:
        cg = GuestCgroup(layout, prefix, name)
        with contextlib.suppress(RuntimeFailure):
            await cg.thaw()  # frozen tasks on a v1 freezer die only once thawed
        with contextlib.suppress(RuntimeFailure):
            await cg.kill_all()
            await cg.remove()


# =============================================================================== the runner


@attrs.frozen
class StressResult:
    """How a run went."""

    ok: bool
    steps: int
    examples: int
    seconds: float
    ops: dict[str, int] = attrs.Factory(dict)


def _rounds(seed: int, steps: int, done: Callable[[], int]) -> Iterator[tuple[int, int, int]]:
    """``(round seed, examples, steps per example)`` until ``done()`` reaches ``steps``.

    One example more than needed (hypothesis's first is its all-simplest example); hypothesis
    sometimes ends an example early, so rounds go on until enough steps ran. What runs depends
    only on the seed, so a run replays exactly.
    """
    i = 0
    before = -1
    while (left := steps - done()) > 0:
        if done() == before:
            raise RuntimeFailure(f"stress round {i} ran no counted step (hypothesis stopped early)")
        before = done()
        per = max(MIN_EPISODE_STEPS, min(EPISODE_STEPS, left))
        yield seed * 1000 + i, 1 + math.ceil(left / per), per
        i += 1


def run_stress_detailed(
    seed: int,
    steps: int,
    guests: int,
    runtime: RuntimeKind,
    *,
    strict: bool = False,
    shrink: bool = True,
    out: Any = None,
) -> StressResult:
    """Run the harness; print a replay line and hypothesis's failing program on failure.

    ``strict``: check the documented behaviour also where :data:`KNOWN_ISSUES` says the
    supervisor is known to differ. ``shrink``: let hypothesis shrink a failure to a minimal
    program (fake runtime only; real guests are too slow for it).
    """
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    out = out if out is not None else sys.stdout
    if runtime == "real" and os.geteuid() != 0:
        raise RuntimeFailure("vsv stress --runtime real needs root (cgroups, namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="vsv-stress-"))
    ctx = RunContext(
        runtime=runtime,
        guests=guests,
        workdir=workdir,
        quirks=frozenset() if strict else KNOWN_ISSUES,
    )
    replay = f"vsv stress --seed {seed} --steps {steps} --guests {guests} --runtime {runtime}"
    replay += " --strict" if strict else ""
    started = time.perf_counter()
    # the supervisor logs every failure the harness provokes on purpose; the checks see the rest
    quiet = logging.NullHandler()
    vsv_log = logging.getLogger("vsv")
    vsv_log.addHandler(quiet)
    vsv_log.propagate = False
    try:
        if runtime == "real":
            from supervisor.guest.rootfs import prepare_busybox_root

            for i in range(guests):
                ctx.roots[f"g{i}"] = Path(prepare_busybox_root(str(workdir / f"root-g{i}")))
        phases = (
            [Phase.generate, Phase.shrink] if shrink and runtime == "fake" else [Phase.generate]
        )
        for round_seed, examples, per in _rounds(seed, steps, lambda: ctx.steps):
            ctx.round_examples = 0
            machine = _make_machine(ctx)
            machine._hypothesis_internal_use_seed = round_seed
            config = settings(
                max_examples=examples,
                stateful_step_count=per,
                database=None,
                deadline=None,
                phases=phases,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            try:
                run_state_machine_as_test(machine, settings=config)
            except Exception as exc:
                # hypothesis attaches the shrunk program to the exception(s) as notes
                traceback.print_exception(exc, file=out)
                print(f"stress FAILED: {type(exc).__name__}: {exc}", file=out)
                print(f"replay with: {replay}", file=out)
                return _result(False, ctx, started)
    finally:
        vsv_log.removeHandler(quiet)
        vsv_log.propagate = True
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(True, ctx, started)


def _result(ok: bool, ctx: RunContext, started: float) -> StressResult:
    return StressResult(ok, ctx.steps, ctx.examples, time.perf_counter() - started, dict(ctx.ops))


def run_stress(
    seed: int, steps: int, guests: int, runtime: RuntimeKind, *, strict: bool = False
) -> int:
    """The CLI's runner: 0 when every check held, 1 otherwise (details printed)."""
    result = run_stress_detailed(seed, steps, guests, runtime, strict=strict)
    rate = result.steps / result.seconds if result.seconds else 0.0
    status = "passed" if result.ok else "FAILED"
    print(
        f"stress {status}: seed {seed}, {result.steps} steps in {result.examples} examples, "
        f"{result.seconds:.1f}s ({rate:.0f} steps/s), runtime {runtime}, {guests} guests"
    )
    print("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(result.ops.items())))
    return 0 if result.ok else 1


# =============================================================================== CLI


def cmd_stress(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    steps = args.steps if args.steps is not None else (2000 if args.runtime == "fake" else 200)
    if steps < 1 or args.guests < 1:
        print("vsv stress: --steps and --guests must be positive", file=sys.stderr)
        return 2
    try:
        return run_stress(seed, steps, args.guests, args.runtime, strict=args.strict)
    except RuntimeFailure as exc:
        print(f"vsv stress: {exc}", file=sys.stderr)
        return 1
