"""The guest lifecycle as one pure state machine: no I/O, no trio, time passed in as ``now``.

Theory of operation
-------------------
A guest is always in one *phase* (:class:`Phase`). The runner (the trio task that owns the guest)
feeds the machine *inputs* (:class:`Input`): API requests (START, SHUTDOWN, DESTROY, SUSPEND,
RESUME, REBOOT), facts it observed (STARTED, START_FAILED, SHUTDOWN_TIMEOUT, the guest ending,
RESTART_DUE when a scheduled restart is due) and re-adoption after a supervisor restart (ADOPT,
ADOPT_PAUSED). For each input the machine looks up :data:`TABLE` and answers with a :class:`Step`:
the next phase, libvirt's ``(state, reason)`` pair for ``virsh domstate``, the events to publish
in order, and the *actions* (:class:`Action`) the runner must perform. The runner does the I/O and
reports back; it never decides what an exit means or which events to emit: that is all here.

A phase is finer than libvirt's state because the runner needs to know what is in flight
(starting, stopping after a request, destroying, respawning after a reboot, waiting for a restart
with backoff, resources kept after ``preserve``). Each transition states libvirt's pair
explicitly, so ``domstate`` stays libvirt's vocabulary while the table keys on phases.

When the guest's init ends, :func:`classify_exit` turns the raw status into a :class:`GuestEnd`
(POWEROFF, REBOOT, CRASH or KILLED-by-us) and the end's input depends on the phase: after our own
shutdown request every end is a shutdown, after our destroy every end is a destroy. Only in
RUNNING and PAUSED does the guest's own intent count, and there the domain's ``on_poweroff`` /
``on_reboot`` / ``on_crash`` setting picks a :class:`Decision` (destroy, restart, preserve); a
restart must also pass the :class:`RestartBudget` (at most N automatic restarts within a window,
with exponential backoff) or the decision becomes EXHAUSTED, so a crash loop cannot spin. The
decision is the third part of the table key, so the whole policy outcome is data too.

An input that has no row for the current phase raises :class:`IllegalTransition` (an
:class:`~supervisor.errors.InvalidOperation`) naming both, and leaves the machine unchanged.

Event sequences (the contract; docs/lifecycle.md repeats it, the runtime's tests assert it)
------------------------------------------------------------------------------------------
- start: ``STARTED BOOTED``; a start that fails: ``STOPPED FAILED`` (data reason=start-failed).
- destroy during a start: ``STOPPED DESTROYED`` (reason=start-cancelled) if init never ran,
  else ``STARTED BOOTED`` then ``STOPPED DESTROYED``: a consumer never sees a STOPPED for a
  guest it was not told had started, except these two start outcomes.
- API shutdown: nothing until the guest ends, then ``STOPPED SHUTDOWN``; if the guest does not
  end before the runner's timeout and is killed: ``STOPPED DESTROYED`` (reason=shutdown-timeout).
- API destroy: ``STOPPED DESTROYED``.
- suspend / resume: ``SUSPENDED PAUSED`` / ``RESUMED UNPAUSED``.
- API reboot: nothing by itself (init is asked to reboot); what follows is the in-guest reboot.
- in-guest poweroff (init exits 0 or is killed by SIGINT), on_poweroff=destroy:
  ``SHUTDOWN GUEST``, ``STOPPED SHUTDOWN``; =restart: the same, then ``STARTED BOOTED`` after the
  backoff delay; =preserve: ``SHUTDOWN GUEST`` only (resources kept until destroy, which gives
  ``STOPPED DESTROYED``).
- in-guest reboot (init killed by SIGHUP), on_reboot=restart: ``REBOOT`` only, as libvirt's LXC
  driver does: the domain stays RUNNING, resources are kept, init is respawned; =destroy:
  ``SHUTDOWN GUEST``, ``STOPPED SHUTDOWN``; =preserve: ``SHUTDOWN GUEST``.
- crash (non-zero exit, or any other signal), on_crash=destroy: ``STOPPED CRASHED``; =restart:
  ``STOPPED CRASHED`` then ``STARTED BOOTED``; =preserve: ``CRASHED PANICKED`` (the process tree
  died as a kernel panics when its init dies; resources kept until destroy).
- restart refused by the budget: the destroy sequence, with data reason=restart-budget-exhausted on
  the STOPPED event (crash: ``STOPPED CRASHED``, state SHUTOFF/CRASHED).
- ``rename-restart`` behaves as ``restart`` (a container has nothing to keep under another name).

Every event of a step caused by a guest end carries ``end`` (poweroff, reboot, crash, killed) and
``exit_code`` or ``signal`` in its data; every event of a step that schedules a restart carries
``restart_delay`` (seconds).
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping

import attrs

from supervisor.errors import InvalidOperation
from supervisor.events import DataPairs, DataValue
from supervisor.model import Domain, LifecycleAction

# --------------------------------------------------------------------------- libvirt's states


class DomainState(enum.IntEnum):
    """libvirt's ``virDomainState`` (what ``virsh domstate`` prints)."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class NostateReason(enum.IntEnum):
    """``virDomainNostateReason``."""

    UNKNOWN = 0


class RunningReason(enum.IntEnum):
    """``virDomainRunningReason`` (the members the supervisor can produce or may read back)."""

    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5
    WAKEUP = 8
    CRASHED = 9


class PausedReason(enum.IntEnum):
    """``virDomainPausedReason`` (subset)."""

    UNKNOWN = 0
    USER = 1
    SHUTTING_DOWN = 8
    CRASHED = 10
    STARTING_UP = 11


class ShutdownReason(enum.IntEnum):
    """``virDomainShutdownReason``."""

    UNKNOWN = 0
    USER = 1


class ShutoffReason(enum.IntEnum):
    """``virDomainShutoffReason``."""

    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class CrashedReason(enum.IntEnum):
    """``virDomainCrashedReason``."""

    UNKNOWN = 0
    PANICKED = 1


Reason = (
    NostateReason | RunningReason | PausedReason | ShutdownReason | ShutoffReason | CrashedReason
)

#: the reason enum that belongs to each state
REASONS: Mapping[DomainState, type[enum.IntEnum]] = {
    DomainState.NOSTATE: NostateReason,
    DomainState.RUNNING: RunningReason,
    DomainState.PAUSED: PausedReason,
    DomainState.SHUTDOWN: ShutdownReason,
    DomainState.SHUTOFF: ShutoffReason,
    DomainState.CRASHED: CrashedReason,
}


def _reason_matches_state(instance: DomainStatus, attribute: object, value: Reason) -> None:
    if type(value) is not REASONS.get(instance.state):
        raise ValueError(f"{value!r} is not a reason of state {instance.state.name}")


@attrs.frozen
class DomainStatus:
    """libvirt's ``(state, reason)`` pair, e.g. SHUTOFF/CRASHED."""

    state: DomainState
    reason: Reason = attrs.field(validator=_reason_matches_state)

    def __str__(self) -> str:
        return f"{self.state.name}/{self.reason.name}"


# --------------------------------------------------------------------------- table vocabulary


class Phase(enum.Enum):
    """The machine's states (finer than libvirt's; see the module docstring)."""

    SHUTOFF = "shutoff"  # no process, no resources
    STARTING = "starting"  # prepare hooks and spawn in flight
    RUNNING = "running"
    PAUSED = "paused"  # frozen
    STOPPING = "stopping"  # init asked to power off; waiting for it to end
    DESTROYING = "destroying"  # killing; waiting for the end
    ABORTING = "aborting"  # destroy requested while starting; waiting for the start to settle
    REBOOTING = "rebooting"  # init ended for a reboot; respawning it, resources kept
    RESTARTING = "restarting"  # stopped and released; a restart is scheduled after a delay
    PRESERVED = "preserved"  # processes gone, resources kept (on_*=preserve) until destroy


class Input(enum.Enum):
    """What the runner feeds the machine."""

    START = "start"  # API: start requested
    STARTED = "started"  # init is running (after START or a respawn)
    START_FAILED = "start-failed"  # prepare or spawn failed, or a start was cancelled
    SHUTDOWN = "shutdown"  # API: graceful shutdown requested
    SHUTDOWN_TIMEOUT = "shutdown-timeout"  # the guest ignored the shutdown request too long
    DESTROY = "destroy"  # API: destroy requested
    SUSPEND = "suspend"  # API
    RESUME = "resume"  # API
    REBOOT = "reboot"  # API: reboot requested
    ENDED_POWEROFF = "ended-poweroff"  # init exited 0 or was killed by SIGINT (halt/poweroff)
    ENDED_REBOOT = "ended-reboot"  # init was killed by SIGHUP (reboot inside the guest)
    ENDED_CRASH = "ended-crash"  # non-zero exit or another signal
    ENDED_KILLED = "ended-killed"  # killed by our own SIGKILL (destroy, shutdown escalation)
    RESTART_DUE = "restart-due"  # the backoff delay of a scheduled restart has passed
    ADOPT = "adopt"  # a restarted supervisor found the guest running
    ADOPT_PAUSED = "adopt-paused"  # ... found it frozen
    LOST = "lost"  # a restarted supervisor found the guest's remains, its init gone
    FAILED_HARD = "failed-hard"  # the supervisor's own code failed for this guest


class Decision(enum.Enum):
    """What the domain's on_poweroff/on_reboot/on_crash and the restart budget decided."""

    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"
    EXHAUSTED = "exhausted"  # restart wanted but the budget refused it


class Action(enum.Enum):
    """What the runner must do after a step, in the order given."""

    START = "start"  # run prepare hooks, spawn init; report STARTED or START_FAILED
    RESPAWN = "respawn"  # after Step.delay spawn init again, resources kept; same reports
    ASK_SHUTDOWN = "ask-shutdown"  # signal init to power off; arm the SHUTDOWN_TIMEOUT timer
    ASK_REBOOT = "ask-reboot"  # signal init to reboot
    KILL = "kill"  # cancel a start in flight, thaw, SIGKILL everything; report the end
    FREEZE = "freeze"
    THAW = "thaw"
    RELEASE = "release"  # run release hooks: network, cgroups... (what was prepared)
    SCHEDULE_RESTART = "schedule-restart"  # feed RESTART_DUE after Step.delay
    CANCEL_RESTART = "cancel-restart"  # forget the scheduled restart


@attrs.frozen
class Emit:
    """An event the runner publishes on the bus (the bus adds seq and time)."""

    type: str
    detail: str | None = None
    data: DataPairs = ()

    def __str__(self) -> str:
        return self.type if self.detail is None else f"{self.type} {self.detail}"


@attrs.frozen
class Transition:
    """One row of :data:`TABLE`; ``status=None`` keeps libvirt's state and reason."""

    next: Phase
    status: DomainStatus | None
    events: tuple[Emit, ...] = ()
    actions: tuple[Action, ...] = ()


class IllegalTransition(InvalidOperation):
    """The input has no row for the current phase; the machine is left unchanged."""

    def __init__(self, phase: Phase, input: Input) -> None:
        self.phase = phase
        self.input = input
        super().__init__(f"cannot handle {input.name} while the guest is {phase.name}")


# --------------------------------------------------------------------------- the table

S = DomainState
_BOOTED = DomainStatus(S.RUNNING, RunningReason.BOOTED)
_STARTING = DomainStatus(S.NOSTATE, NostateReason.UNKNOWN)
_GOING = DomainStatus(S.SHUTDOWN, ShutdownReason.USER)
_OFF_SHUTDOWN = DomainStatus(S.SHUTOFF, ShutoffReason.SHUTDOWN)
_OFF_DESTROYED = DomainStatus(S.SHUTOFF, ShutoffReason.DESTROYED)
_OFF_CRASHED = DomainStatus(S.SHUTOFF, ShutoffReason.CRASHED)
_OFF_FAILED = DomainStatus(S.SHUTOFF, ShutoffReason.FAILED)
_KEPT_SHUTDOWN = DomainStatus(S.SHUTDOWN, ShutdownReason.UNKNOWN)
_KEPT_CRASHED = DomainStatus(S.CRASHED, CrashedReason.PANICKED)

_EXHAUSTED = (("reason", "restart-budget-exhausted"),)
_STARTED = Emit("STARTED", "BOOTED")
_SHUTDOWN_GUEST = Emit("SHUTDOWN", "GUEST")
_STOPPED_SHUTDOWN = Emit("STOPPED", "SHUTDOWN")
_STOPPED_DESTROYED = Emit("STOPPED", "DESTROYED")
_STOPPED_CRASHED = Emit("STOPPED", "CRASHED")
_STOPPED_START_FAILED = Emit("STOPPED", "FAILED", (("reason", "start-failed"),))
_STOPPED_SUPERVISOR_ERROR = Emit("STOPPED", "FAILED", (("reason", "supervisor-error"),))

P, In, D, A = Phase, Input, Decision, Action
TableKey = tuple[Phase, Input, Decision | None]

#: What the guest's own end means in RUNNING, per decision (PAUSED reuses it, see below).
_GUEST_ENDS: dict[tuple[Input, Decision], Transition] = {
    (In.ENDED_POWEROFF, D.DESTROY): Transition(
        P.SHUTOFF, _OFF_SHUTDOWN, (_SHUTDOWN_GUEST, _STOPPED_SHUTDOWN), (A.RELEASE,)
    ),
    (In.ENDED_POWEROFF, D.RESTART): Transition(
        P.RESTARTING,
        _OFF_SHUTDOWN,
        (_SHUTDOWN_GUEST, _STOPPED_SHUTDOWN),
        (A.RELEASE, A.SCHEDULE_RESTART),
    ),
    (In.ENDED_POWEROFF, D.PRESERVE): Transition(P.PRESERVED, _KEPT_SHUTDOWN, (_SHUTDOWN_GUEST,)),
    (In.ENDED_POWEROFF, D.EXHAUSTED): Transition(
        P.SHUTOFF,
        _OFF_SHUTDOWN,
        (_SHUTDOWN_GUEST, Emit("STOPPED", "SHUTDOWN", _EXHAUSTED)),
        (A.RELEASE,),
    ),
    (In.ENDED_REBOOT, D.DESTROY): Transition(
        P.SHUTOFF, _OFF_SHUTDOWN, (_SHUTDOWN_GUEST, _STOPPED_SHUTDOWN), (A.RELEASE,)
    ),
    (In.ENDED_REBOOT, D.RESTART): Transition(P.REBOOTING, _BOOTED, (Emit("REBOOT"),), (A.RESPAWN,)),
    (In.ENDED_REBOOT, D.PRESERVE): Transition(P.PRESERVED, _KEPT_SHUTDOWN, (_SHUTDOWN_GUEST,)),
    (In.ENDED_REBOOT, D.EXHAUSTED): Transition(
        P.SHUTOFF,
        _OFF_SHUTDOWN,
        (_SHUTDOWN_GUEST, Emit("STOPPED", "SHUTDOWN", _EXHAUSTED)),
        (A.RELEASE,),
    ),
    (In.ENDED_CRASH, D.DESTROY): Transition(
        P.SHUTOFF, _OFF_CRASHED, (_STOPPED_CRASHED,), (A.RELEASE,)
    ),
    (In.ENDED_CRASH, D.RESTART): Transition(
        P.RESTARTING, _OFF_CRASHED, (_STOPPED_CRASHED,), (A.RELEASE, A.SCHEDULE_RESTART)
    ),
    (In.ENDED_CRASH, D.PRESERVE): Transition(
        P.PRESERVED, _KEPT_CRASHED, (Emit("CRASHED", "PANICKED"),)
    ),
    (In.ENDED_CRASH, D.EXHAUSTED): Transition(
        P.SHUTOFF, _OFF_CRASHED, (Emit("STOPPED", "CRASHED", _EXHAUSTED),), (A.RELEASE,)
    ),
}

_ANY_END = (In.ENDED_POWEROFF, In.ENDED_REBOOT, In.ENDED_CRASH, In.ENDED_KILLED)
_GUEST_INTENT = (In.ENDED_POWEROFF, In.ENDED_REBOOT, In.ENDED_CRASH)
_RELEASED_DESTROYED = Transition(P.SHUTOFF, _OFF_DESTROYED, (_STOPPED_DESTROYED,), (A.RELEASE,))


def _paused_variant(t: Transition) -> Transition:
    """A guest end seen while frozen: a respawned init must not start frozen, so thaw first."""
    if Action.RESPAWN in t.actions:
        return attrs.evolve(t, actions=(Action.THAW, *t.actions))
    return t


#: The lifecycle. Key: (phase, input, decision); decision is None except for the guest's own
#: ends in RUNNING/PAUSED, which have one row per decision.
TABLE: Mapping[TableKey, Transition] = {
    # -- SHUTOFF: nothing exists
    (P.SHUTOFF, In.START, None): Transition(P.STARTING, _STARTING, (), (A.START,)),
    (P.SHUTOFF, In.ADOPT, None): Transition(
        P.RUNNING, DomainStatus(S.RUNNING, RunningReason.UNKNOWN)
    ),
    (P.SHUTOFF, In.ADOPT_PAUSED, None): Transition(
        P.PAUSED, DomainStatus(S.PAUSED, PausedReason.UNKNOWN)
    ),
    # remains of a guest whose init is gone (the caller's data says why: start-interrupted,
    # ended-while-supervisor-down, no-definition); the runner has already cleaned them up
    (P.SHUTOFF, In.LOST, None): Transition(P.SHUTOFF, _OFF_FAILED, (Emit("STOPPED", "FAILED"),)),
    # -- STARTING: prepare + spawn in flight
    (P.STARTING, In.STARTED, None): Transition(P.RUNNING, _BOOTED, (_STARTED,)),
    (P.STARTING, In.START_FAILED, None): Transition(
        P.SHUTOFF, _OFF_FAILED, (_STOPPED_START_FAILED,), (A.RELEASE,)
    ),
    (P.STARTING, In.DESTROY, None): Transition(P.ABORTING, _GOING, (), (A.KILL,)),
    # -- ABORTING: a start being cancelled; consumers never saw STARTED, so a start that still
    # completes is announced before it is destroyed, and one that does not is marked cancelled
    (P.ABORTING, In.DESTROY, None): Transition(P.ABORTING, None),
    (P.ABORTING, In.STARTED, None): Transition(P.DESTROYING, _GOING, (_STARTED,), (A.KILL,)),
    (P.ABORTING, In.START_FAILED, None): Transition(
        P.SHUTOFF,
        _OFF_DESTROYED,
        (Emit("STOPPED", "DESTROYED", (("reason", "start-cancelled"),)),),
        (A.RELEASE,),
    ),
    # -- RUNNING
    (P.RUNNING, In.SHUTDOWN, None): Transition(P.STOPPING, _GOING, (), (A.ASK_SHUTDOWN,)),
    (P.RUNNING, In.DESTROY, None): Transition(P.DESTROYING, _GOING, (), (A.KILL,)),
    (P.RUNNING, In.SUSPEND, None): Transition(
        P.PAUSED,
        DomainStatus(S.PAUSED, PausedReason.USER),
        (Emit("SUSPENDED", "PAUSED"),),
        (A.FREEZE,),
    ),
    (P.RUNNING, In.REBOOT, None): Transition(P.RUNNING, None, (), (A.ASK_REBOOT,)),
    **{(P.RUNNING, i, d): t for (i, d), t in _GUEST_ENDS.items()},
    # -- PAUSED: frozen
    (P.PAUSED, In.RESUME, None): Transition(
        P.RUNNING,
        DomainStatus(S.RUNNING, RunningReason.UNPAUSED),
        (Emit("RESUMED", "UNPAUSED"),),
        (A.THAW,),
    ),
    (P.PAUSED, In.DESTROY, None): Transition(P.DESTROYING, _GOING, (), (A.KILL,)),
    **{(P.PAUSED, i, d): _paused_variant(t) for (i, d), t in _GUEST_ENDS.items()},
    # -- STOPPING: after our shutdown request every end is a shutdown, except our own SIGKILL
    (P.STOPPING, In.SHUTDOWN, None): Transition(P.STOPPING, None),
    (P.STOPPING, In.SHUTDOWN_TIMEOUT, None): Transition(P.STOPPING, None, (), (A.KILL,)),
    (P.STOPPING, In.DESTROY, None): Transition(P.DESTROYING, _GOING, (), (A.KILL,)),
    **{
        (P.STOPPING, i, None): Transition(
            P.SHUTOFF, _OFF_SHUTDOWN, (_STOPPED_SHUTDOWN,), (A.RELEASE,)
        )
        for i in _GUEST_INTENT
    },
    (P.STOPPING, In.ENDED_KILLED, None): Transition(
        P.SHUTOFF,
        _OFF_DESTROYED,
        (Emit("STOPPED", "DESTROYED", (("reason", "shutdown-timeout"),)),),
        (A.RELEASE,),
    ),
    # -- DESTROYING: after our destroy every end is a destroy
    (P.DESTROYING, In.DESTROY, None): Transition(P.DESTROYING, None),
    (P.DESTROYING, In.SHUTDOWN_TIMEOUT, None): Transition(P.DESTROYING, None),
    (P.DESTROYING, In.STARTED, None): Transition(P.DESTROYING, None, (), (A.KILL,)),
    (P.DESTROYING, In.START_FAILED, None): _RELEASED_DESTROYED,
    **{(P.DESTROYING, i, None): _RELEASED_DESTROYED for i in _ANY_END},
    # -- REBOOTING: init respawning, resources kept, libvirt still says RUNNING/BOOTED
    (P.REBOOTING, In.STARTED, None): Transition(P.RUNNING, _BOOTED),
    (P.REBOOTING, In.START_FAILED, None): Transition(
        P.SHUTOFF, _OFF_FAILED, (_STOPPED_START_FAILED,), (A.RELEASE,)
    ),
    (P.REBOOTING, In.DESTROY, None): Transition(P.DESTROYING, _GOING, (), (A.KILL,)),
    # -- RESTARTING: released, waiting for the backoff delay
    (P.RESTARTING, In.RESTART_DUE, None): Transition(P.STARTING, _STARTING, (), (A.START,)),
    (P.RESTARTING, In.START, None): Transition(
        P.STARTING, _STARTING, (), (A.CANCEL_RESTART, A.START)
    ),
    (P.RESTARTING, In.DESTROY, None): Transition(P.SHUTOFF, None, (), (A.CANCEL_RESTART,)),
    (P.RESTARTING, In.SHUTDOWN, None): Transition(P.SHUTOFF, None, (), (A.CANCEL_RESTART,)),
    # -- PRESERVED: processes gone, resources kept for inspection
    (P.PRESERVED, In.DESTROY, None): _RELEASED_DESTROYED,
    # -- any phase: the supervisor's own code failed for this guest; whatever it held goes and
    # the supervisor stays up (the caller's data adds the error). A guest that consumers know
    # as stopped (SHUTOFF, RESTARTING) is not reported stopped a second time.
    **{
        (p, In.FAILED_HARD, None): Transition(
            P.SHUTOFF,
            _OFF_FAILED,
            () if p in (P.SHUTOFF, P.RESTARTING) else (_STOPPED_SUPERVISOR_ERROR,),
            (A.CANCEL_RESTART, A.RELEASE) if p is P.RESTARTING else (A.RELEASE,),
        )
        for p in Phase
    },
}

#: the (phase, input) pairs that need a policy decision to look up
POLICY_PAIRS: frozenset[tuple[Phase, Input]] = frozenset(
    (p, i) for (p, i, d) in TABLE if d is not None
)
#: every legal (phase, input) pair
LEGAL_PAIRS: frozenset[tuple[Phase, Input]] = frozenset((p, i) for (p, i, _) in TABLE)


def lookup(phase: Phase, input: Input, decision: Decision | None = None) -> Transition:
    """The table row for ``(phase, input, decision)``; :class:`IllegalTransition` if none.

    A policy pair looked up without a decision, or a plain pair with one, is a programming
    error and raises :class:`ValueError`.
    """
    if (phase, input) not in LEGAL_PAIRS:
        raise IllegalTransition(phase, input)
    try:
        return TABLE[phase, input, decision]
    except KeyError:
        needs = (phase, input) in POLICY_PAIRS
        raise ValueError(
            f"{phase.name} x {input.name} {'needs' if needs else 'takes no'} decision, "
            f"got {decision!r}"
        ) from None


# --------------------------------------------------------------------------- exits


class EndKind(enum.Enum):
    """What the end of a guest's init means by itself."""

    POWEROFF = "poweroff"
    REBOOT = "reboot"
    CRASH = "crash"
    KILLED = "killed"


_END_INPUT = {
    EndKind.POWEROFF: Input.ENDED_POWEROFF,
    EndKind.REBOOT: Input.ENDED_REBOOT,
    EndKind.CRASH: Input.ENDED_CRASH,
    EndKind.KILLED: Input.ENDED_KILLED,
}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


@attrs.frozen
class GuestEnd:
    """A classified end of the guest's init: exactly one of ``exit_code``/``signal`` is set."""

    kind: EndKind
    exit_code: int | None = None
    signal: int | None = None

    @property
    def input(self) -> Input:
        """The table input this end feeds."""
        return _END_INPUT[self.kind]

    def data(self) -> DataPairs:
        """The event data describing the end: ``end`` plus ``exit_code`` (a number) or
        ``signal`` (its name)."""
        how: tuple[str, DataValue] = (
            ("signal", _signal_name(self.signal))
            if self.signal is not None
            else ("exit_code", int(self.exit_code or 0))
        )
        return (("end", self.kind.value), how)


ExitStatus = int | tuple[bool, int, int]


def classify_exit(status: ExitStatus, *, killed_by_us: bool = False) -> GuestEnd:
    """Classify how init ended.

    ``status`` is either a returncode as :mod:`subprocess` and trio report it (``>= 0`` an exit
    code, ``< 0`` the negated signal), or ``(exited, code, signal)`` as waitid reports it
    (``exited`` true: ``code`` is the exit status, else ``signal`` killed it).

    The kernel ends a pid namespace's init with SIGHUP when the guest calls reboot(2) to restart
    and with SIGINT to halt or power off, so those signals carry the guest's intent. Exit 0 is a
    clean poweroff. Our own SIGKILL (``killed_by_us``: destroy or shutdown escalation) is KILLED;
    anything else, including a SIGKILL from someone else such as the OOM killer, is a crash.
    """
    if isinstance(status, tuple):
        exited, code, signum = status
        exit_code, sig = (code, None) if exited else (None, signum)
    else:
        exit_code, sig = (status, None) if status >= 0 else (None, -status)
    if sig is None:
        assert exit_code is not None
        kind = EndKind.POWEROFF if exit_code == 0 else EndKind.CRASH
        return GuestEnd(kind, exit_code=exit_code)
    if sig == signal.SIGHUP:
        kind = EndKind.REBOOT
    elif sig == signal.SIGINT:
        kind = EndKind.POWEROFF
    elif sig == signal.SIGKILL and killed_by_us:
        kind = EndKind.KILLED
    else:
        kind = EndKind.CRASH
    return GuestEnd(kind, signal=sig)


# --------------------------------------------------------------------------- restart policy


@attrs.frozen
class RestartPolicy:
    """How many automatic restarts are allowed and how long to wait before each.

    At most ``max_restarts`` within any ``window`` seconds. The first restart in a window is
    immediate (a guest that reboots now and then is not slowed down); each further one waits
    ``backoff_base * 2**(k-1)`` seconds for the k-th earlier restart in the window, capped at
    ``backoff_cap``.
    """

    max_restarts: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    window: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    backoff_base: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    backoff_cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))

    def delay(self, earlier: int) -> float:
        """Seconds to wait before a restart that has ``earlier`` restarts in the window."""
        if earlier <= 0:
            return 0.0
        return float(min(self.backoff_cap, self.backoff_base * 2.0 ** (earlier - 1)))


@attrs.frozen
class RestartBudget:
    """The times of recent automatic restarts (a value: :meth:`decide` returns a new budget)."""

    restarts: tuple[float, ...] = ()

    def recent(self, policy: RestartPolicy, now: float) -> tuple[float, ...]:
        """The restarts still inside the window that ends at ``now``."""
        return tuple(t for t in self.restarts if t > now - policy.window)

    def decide(self, policy: RestartPolicy, now: float) -> tuple[bool, float, RestartBudget]:
        """Whether a restart at ``now`` is allowed, its delay, and the budget afterwards."""
        recent = self.recent(policy, now)
        if len(recent) >= policy.max_restarts:
            return False, 0.0, RestartBudget(recent)
        return True, policy.delay(len(recent)), RestartBudget((*recent, now))


# --------------------------------------------------------------------------- the machine


@attrs.frozen
class Step:
    """The answer to one input: what changed, what to publish, what to do."""

    input: Input
    decision: Decision | None
    previous: Phase
    phase: Phase
    status: DomainStatus
    events: tuple[Emit, ...]
    actions: tuple[Action, ...]
    #: seconds to wait before RESPAWN / SCHEDULE_RESTART (0.0 otherwise)
    delay: float = 0.0


_INITIAL_STATUS = DomainStatus(DomainState.SHUTOFF, ShutoffReason.UNKNOWN)
_POLICY_OF = {
    Input.ENDED_POWEROFF: "on_poweroff",
    Input.ENDED_REBOOT: "on_reboot",
    Input.ENDED_CRASH: "on_crash",
}
_DECISION_OF_ACTION: Mapping[str, Decision] = {
    "destroy": Decision.DESTROY,
    "restart": Decision.RESTART,
    "rename-restart": Decision.RESTART,
    "preserve": Decision.PRESERVE,
}


@attrs.define(eq=False)
class Lifecycle:
    """One guest's lifecycle: the table plus its policy and restart budget. No I/O.

    Mutable with identity (like h11's connection state); every input returns a frozen
    :class:`Step`. An illegal input raises and changes nothing. The phase, libvirt's status and
    the budget are read-only outside this class: :meth:`apply` is their only writer, so no
    caller can give a guest a state the table has no row for.
    """

    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: LifecycleAction = "destroy"
    policy: RestartPolicy = RestartPolicy()
    _phase: Phase = Phase.SHUTOFF
    _status: DomainStatus = _INITIAL_STATUS
    _budget: RestartBudget = RestartBudget()

    @classmethod
    def for_domain(cls, domain: Domain, policy: RestartPolicy | None = None) -> Lifecycle:
        """A machine in SHUTOFF with the domain's on_poweroff/on_reboot/on_crash."""
        life = cls(policy=policy or RestartPolicy())
        life.set_policies(domain)
        return life

    @property
    def phase(self) -> Phase:
        """Where the guest is in the table."""
        return self._phase

    @property
    def status(self) -> DomainStatus:
        """libvirt's ``(state, reason)`` for ``virsh domstate``."""
        return self._status

    @property
    def budget(self) -> RestartBudget:
        """The recent automatic restarts the next restart decision counts."""
        return self._budget

    def set_policies(self, domain: Domain) -> None:
        """Take ``domain``'s end-of-life settings (a new definition takes effect); state stays."""
        self.on_poweroff = domain.on_poweroff
        self.on_reboot = domain.on_reboot
        self.on_crash = domain.on_crash

    def apply(
        self,
        input: Input,
        *,
        now: float,
        end: GuestEnd | None = None,
        data: DataPairs = (),
    ) -> Step:
        """Feed one input at time ``now``.

        ``end`` adds the exit details to the events' data; ``data`` adds what only the caller
        knows (why remains were lost, the error of a hard failure).
        """
        if (self._phase, input) not in LEGAL_PAIRS:
            raise IllegalTransition(self._phase, input)
        decision: Decision | None = None
        delay = 0.0
        budget = self._budget
        if (self._phase, input) in POLICY_PAIRS:
            decision = _DECISION_OF_ACTION[getattr(self, _POLICY_OF[input])]
            if decision is Decision.RESTART:
                allowed, delay, budget = budget.decide(self.policy, now)
                if not allowed:
                    decision = Decision.EXHAUSTED
        elif input is Input.START:
            budget = RestartBudget()  # a person asked: the crash-loop history no longer applies
        row = lookup(self._phase, input, decision)
        extra: DataPairs = ()
        if end is not None:
            extra += end.data()
        if Action.SCHEDULE_RESTART in row.actions or Action.RESPAWN in row.actions:
            # seconds, a number: whole ones as integers (0, 2), as the text form showed them
            extra += (("restart_delay", int(delay) if float(delay).is_integer() else delay),)
        extra += data
        events = tuple(attrs.evolve(e, data=e.data + extra) for e in row.events)
        step = Step(
            input=input,
            decision=decision,
            previous=self._phase,
            phase=row.next,
            status=row.status or self._status,
            events=events,
            actions=row.actions,
            delay=delay,
        )
        self._phase, self._status, self._budget = step.phase, step.status, budget
        return step

    def guest_ended(self, end: GuestEnd, *, now: float) -> Step:
        """Feed a classified end of init (see :func:`classify_exit`)."""
        return self.apply(end.input, now=now, end=end)


# --------------------------------------------------------------------------- rendering


def _label(input: Input, decision: Decision | None, t: Transition) -> str:
    label = input.name if decision is None else f"{input.name} [{decision.value}]"
    if t.events:
        label += " / " + ", ".join(str(e) for e in t.events)
    return label


def _from_every_phase(table: Mapping[TableKey, Transition]) -> list[Input]:
    """Inputs with a row in every phase (drawn once as a note instead of an arrow from each)."""
    return [i for i in Input if all((p, i, None) in table for p in Phase)]


def render_mermaid(table: Mapping[TableKey, Transition] = TABLE) -> str:
    """The table as a Mermaid ``stateDiagram-v2`` (docs/lifecycle.md embeds this output)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.SHUTOFF.name}"]
    everywhere = _from_every_phase(table)
    for (phase, input, decision), t in table.items():
        if input not in everywhere:
            lines.append(f"    {phase.name} --> {t.next.name}: {_label(input, decision, t)}")
    for input in everywhere:
        rows = [table[p, input, None] for p in Phase]
        t = max(rows, key=lambda r: len(r.events))  # the fullest row names the events
        quiet = [p.name for p, r in zip(Phase, rows, strict=True) if not r.events]
        label = f"from any phase {_label(input, None, t)}"
        if quiet and t.events:
            label += f" (no event from {', '.join(quiet)})"
        lines.append(f"    note right of {t.next.name}: {label}")
    return "\n".join(lines) + "\n"


def render_markdown(table: Mapping[TableKey, Transition] = TABLE) -> str:
    """The table as a Markdown table: phase, input, decision, next, domstate, events, actions."""
    rows = [
        "| phase | input | decision | next | domstate | events | actions |",
        "|---|---|---|---|---|---|---|",
    ]
    for (phase, input, decision), t in table.items():
        events = ", ".join(_event_text(e) for e in t.events) or "-"
        actions = ", ".join(a.value for a in t.actions) or "-"
        status = "(unchanged)" if t.status is None else str(t.status)
        rows.append(
            f"| {phase.name} | {input.name} | {decision.value if decision else '-'} "
            f"| {t.next.name} | {status} | {events} | {actions} |"
        )
    return "\n".join(rows) + "\n"


def _event_text(e: Emit) -> str:
    text = str(e)
    if e.data:
        text += " (" + ", ".join(f"{k}={v}" for k, v in e.data) + ")"
    return text


def phases_reachable(
    start: Phase = Phase.SHUTOFF, table: Mapping[TableKey, Transition] = TABLE
) -> frozenset[Phase]:
    """Phases reachable from ``start`` through the table (a sanity check for tests and docs)."""
    seen = {start}
    frontier = [start]
    while frontier:
        here = frontier.pop()
        for key, t in table.items():
            if key[0] is here:
                nxt = t.next
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
    return frozenset(seen)


__all__ = [
    "LEGAL_PAIRS",
    "POLICY_PAIRS",
    "TABLE",
    "Action",
    "CrashedReason",
    "Decision",
    "DomainState",
    "DomainStatus",
    "Emit",
    "EndKind",
    "ExitStatus",
    "GuestEnd",
    "IllegalTransition",
    "Input",
    "Lifecycle",
    "NostateReason",
    "PausedReason",
    "Phase",
    "Reason",
    "RestartBudget",
    "RestartPolicy",
    "RunningReason",
    "ShutdownReason",
    "ShutoffReason",
    "Step",
    "Transition",
    "classify_exit",
    "lookup",
    "phases_reachable",
    "render_markdown",
    "render_mermaid",
]
