"""The model: the lifecycle contract restated small, and how the harness writes events.

Pure: no trio, no supervisor, no I/O; time is an attribute (:attr:`Model.now`) moved by
:meth:`Model.advance`. Of :mod:`supervisor.lifecycle` it takes only the restart policy's backoff
arithmetic, never the transition table, so a wrong row in the supervisor's table is caught, not
copied. What it restates is docs/lifecycle.md: the libvirt state each guest must be in after each
operation, and the exact events each operation must produce.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

from supervisor.events import Event
from supervisor.lifecycle import RestartPolicy
from supervisor.model import LifecycleAction

ACTIONS: tuple[LifecycleAction, ...] = ("destroy", "restart", "preserve")
#: phases in which the guest holds its resources (cgroup, NIC): all but shutoff and restarting
ACTIVE = frozenset({"running", "paused", "stopping", "rebooting", "preserved"})
#: phases with no timer pending and no operation half done: a supervisor restart keeps them
SETTLED = frozenset({"shutoff", "running", "paused", "preserved"})
#: phases in which the guest's init is alive
WITH_PROCESS = frozenset({"running", "paused", "stopping"})


class Illegal(Exception):
    """The model says the operation must be refused (``kind``: 'invalid' or 'missing')."""

    def __init__(self, kind: Literal["invalid", "missing"]) -> None:
        super().__init__(kind)
        self.kind = kind


@attrs.define
class Definition:
    """What the harness defines: lifecycle policy, whether init traps TERM, NIC and CPU shares.

    ``nic`` and ``shares`` are drawn for the real runtime only (the fake one has no network or
    scheduler subsystem): a NIC on the harness's network (:data:`.backends.NETWORK`), and
    ``<cputune><shares>`` (None: none).
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
    """A supervisor's event in the model's :func:`event_text` form, so the two compare as text."""
    delay = event.get("restart_delay")
    reason, end = event.get("reason"), event.get("end")
    params = None
    if event.type == "TUNABLE":
        params = {k: str(v) for k, v in event.data if k != "reason"}
    return event_text(
        event.type,
        event.detail,
        reason=None if reason is None else str(reason),
        end=None if end is None else str(end),
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
        ``cpu_shares``, and a NIC that dangled since a net-destroy stays unplugged. A running
        network is taken over in place (same bridge, new dnsmasq) with no event: it never
        stopped (docs/lifecycle.md, "Around a supervisor restart"). The harness never redefines
        it, so the case of one that cannot be taken over does not arise.
        """
        if any(g.phase not in SETTLED for g in self.guests.values()):
            raise Illegal("invalid")
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
