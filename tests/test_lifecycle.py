"""The lifecycle table, exit classification, restart policy, and the documented contract."""

from __future__ import annotations

import pathlib
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from supervisor.errors import InvalidOperation
from supervisor.lifecycle import (
    LEGAL_PAIRS,
    POLICY_PAIRS,
    TABLE,
    Action,
    Decision,
    DomainState,
    DomainStatus,
    EndKind,
    GuestEnd,
    IllegalTransition,
    Input,
    Lifecycle,
    Phase,
    RestartBudget,
    RestartPolicy,
    RunningReason,
    ShutoffReason,
    Step,
    classify_exit,
    lookup,
    phases_reachable,
    render_markdown,
    render_mermaid,
)
from supervisor.model import LIFECYCLE_ACTIONS

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"

# --------------------------------------------------------------------------- table shape


def test_every_phase_is_reachable_and_can_return_to_shutoff() -> None:
    """Every phase is reachable from SHUTOFF, and SHUTOFF is reachable from every phase."""
    assert set(Phase) == set(phases_reachable(Phase.SHUTOFF))
    for phase in Phase:
        assert Phase.SHUTOFF in phases_reachable(phase)


def test_policy_pairs_have_one_row_per_decision() -> None:
    """Each guest-intent end in RUNNING/PAUSED has exactly the four decision rows."""
    expected = {(p, i) for p in (Phase.RUNNING, Phase.PAUSED) for i in _INTENT_ENDS}
    assert expected == set(POLICY_PAIRS)
    for phase, input in POLICY_PAIRS:
        assert set(Decision) == {d for (p, i, d) in TABLE if (p, i) == (phase, input)}


def test_destroy_is_legal_wherever_something_exists() -> None:
    """DESTROY has a row in every phase except SHUTOFF (nothing to destroy there)."""
    expected = set(Phase) - {Phase.SHUTOFF}
    assert expected == {p for p in Phase if (p, Input.DESTROY) in LEGAL_PAIRS}


def test_every_release_follows_an_end_and_every_stop_releases() -> None:
    """Rows that reach SHUTOFF from a phase holding resources include RELEASE."""
    holding = {Phase.STARTING, Phase.RUNNING, Phase.PAUSED, Phase.STOPPING, Phase.DESTROYING}
    holding |= {Phase.ABORTING}
    holding |= {Phase.REBOOTING, Phase.PRESERVED}
    for (phase, input, decision), t in TABLE.items():
        if phase in holding and t.next is Phase.SHUTOFF:
            assert (phase, input, decision, True) == (
                phase,
                input,
                decision,
                Action.RELEASE in t.actions,
            )


_INTENT_ENDS = (Input.ENDED_POWEROFF, Input.ENDED_REBOOT, Input.ENDED_CRASH)


def _machine_in(phase: Phase, **kw: str) -> Lifecycle:
    status = {
        Phase.SHUTOFF: DomainStatus(DomainState.SHUTOFF, ShutoffReason.UNKNOWN),
    }.get(phase, DomainStatus(DomainState.RUNNING, RunningReason.BOOTED))
    return Lifecycle(phase=phase, status=status, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("phase", "input", "decision"), list(TABLE))
def test_every_legal_row_is_applied_as_written(
    phase: Phase, input: Input, decision: Decision | None
) -> None:
    """Lifecycle.apply follows each table row: next phase, status, events and actions."""
    row = TABLE[phase, input, decision]
    kw = {}
    policy = RestartPolicy(max_restarts=1 if decision is not Decision.EXHAUSTED else 0)
    if decision is not None:
        action = {
            Decision.DESTROY: "destroy",
            Decision.RESTART: "restart",
            Decision.EXHAUSTED: "restart",
            Decision.PRESERVE: "preserve",
        }[decision]
        kw = {"on_poweroff": action, "on_reboot": action, "on_crash": action}
    machine = _machine_in(phase, **kw)
    machine.policy = policy
    before = machine.status
    step = machine.apply(input, now=100.0)
    assert (row.next, row.status or before, row.actions, decision) == (
        step.phase,
        step.status,
        step.actions,
        step.decision,
    )
    assert [(e.type, e.detail) for e in row.events] == [(e.type, e.detail) for e in step.events]
    assert (step.phase, step.status) == (machine.phase, machine.status)


_ILLEGAL = sorted(
    ((p, i) for p in Phase for i in Input if (p, i) not in LEGAL_PAIRS),
    key=lambda pi: (pi[0].value, pi[1].value),
)


@pytest.mark.parametrize(("phase", "input"), _ILLEGAL)
def test_illegal_pairs_raise_naming_both_and_change_nothing(phase: Phase, input: Input) -> None:
    """An input without a row raises IllegalTransition naming phase and input; no change."""
    machine = _machine_in(phase)
    before = (machine.phase, machine.status, machine.budget)
    with pytest.raises(IllegalTransition) as info:
        machine.apply(input, now=1.0)
    assert isinstance(info.value, InvalidOperation)
    assert (phase.name in str(info.value), input.name in str(info.value)) == (True, True)
    assert before == (machine.phase, machine.status, machine.budget)


def test_lookup_insists_on_decisions_exactly_where_needed() -> None:
    """lookup refuses a missing decision for a policy pair and an extra one elsewhere."""
    with pytest.raises(ValueError, match="needs decision"):
        lookup(Phase.RUNNING, Input.ENDED_CRASH)
    with pytest.raises(ValueError, match="takes no decision"):
        lookup(Phase.RUNNING, Input.SUSPEND, Decision.DESTROY)
    assert Phase.PAUSED == lookup(Phase.RUNNING, Input.SUSPEND).next


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("status", "killed_by_us", "expected"),
    [
        (0, False, GuestEnd(EndKind.POWEROFF, exit_code=0)),
        (3, False, GuestEnd(EndKind.CRASH, exit_code=3)),
        (-signal.SIGHUP, False, GuestEnd(EndKind.REBOOT, signal=signal.SIGHUP)),
        (-signal.SIGINT, False, GuestEnd(EndKind.POWEROFF, signal=signal.SIGINT)),
        (-signal.SIGSEGV, False, GuestEnd(EndKind.CRASH, signal=signal.SIGSEGV)),
        (-signal.SIGKILL, False, GuestEnd(EndKind.CRASH, signal=signal.SIGKILL)),
        (-signal.SIGKILL, True, GuestEnd(EndKind.KILLED, signal=signal.SIGKILL)),
        (-signal.SIGTERM, True, GuestEnd(EndKind.CRASH, signal=signal.SIGTERM)),
        ((True, 0, 0), False, GuestEnd(EndKind.POWEROFF, exit_code=0)),
        ((True, 1, 0), False, GuestEnd(EndKind.CRASH, exit_code=1)),
        ((False, 0, signal.SIGHUP), False, GuestEnd(EndKind.REBOOT, signal=signal.SIGHUP)),
        ((False, 0, signal.SIGKILL), True, GuestEnd(EndKind.KILLED, signal=signal.SIGKILL)),
    ],
)
def test_classify_exit(
    status: int | tuple[bool, int, int], killed_by_us: bool, expected: GuestEnd
) -> None:
    """Exit 0/SIGINT power off, SIGHUP reboots, our SIGKILL is KILLED, the rest crashes."""
    assert expected == classify_exit(status, killed_by_us=killed_by_us)


def test_guest_end_data_names_signal_or_exit_code() -> None:
    """GuestEnd.data gives the end kind and the signal name or the exit code."""
    assert (("end", "crash"), ("signal", "SIGSEGV")) == classify_exit(-11).data()
    assert (("end", "crash"), ("exit_code", 2)) == classify_exit(2).data()
    assert (("end", "crash"), ("signal", "SIG99")) == classify_exit(-99).data()


# --------------------------------------------------------------------------- restart policy


def test_backoff_first_immediate_then_doubling_to_cap() -> None:
    """Delays are 0, base, 2*base, 4*base... capped."""
    policy = RestartPolicy(max_restarts=10, backoff_base=0.5, backoff_cap=3.0)
    assert [0.0, 0.5, 1.0, 2.0, 3.0, 3.0] == [policy.delay(k) for k in range(6)]


def test_budget_refuses_beyond_max_within_window_and_recovers() -> None:
    """At most max_restarts within the window; old restarts age out."""
    policy = RestartPolicy(max_restarts=2, window=10.0, backoff_base=1.0)
    budget = RestartBudget()
    ok1, d1, budget = budget.decide(policy, 0.0)
    ok2, d2, budget = budget.decide(policy, 1.0)
    ok3, d3, budget = budget.decide(policy, 2.0)
    assert [(True, 0.0), (True, 1.0), (False, 0.0)] == [(ok1, d1), (ok2, d2), (ok3, d3)]
    ok4, d4, budget = budget.decide(policy, 10.5)  # restart at 0.0 left the window
    assert (True, 1.0, (1.0, 10.5)) == (ok4, d4, budget.restarts)


@given(
    max_restarts=st.integers(0, 6),
    window=st.floats(0.1, 100),
    gaps=st.lists(st.floats(0, 50), max_size=30),
)
def test_budget_never_allows_more_than_max_in_any_window(
    max_restarts: int, window: float, gaps: list[float]
) -> None:
    """However crashes are spaced, allowed restarts within any window never exceed the max."""
    policy = RestartPolicy(max_restarts=max_restarts, window=window)
    budget = RestartBudget()
    now = 0.0
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        ok, _, budget = budget.decide(policy, now)
        if ok:
            allowed.append(now)
    for t in allowed:
        in_window = [u for u in allowed if t - window < u <= t]
        assert min(len(in_window), max_restarts) == len(in_window)


# --------------------------------------------------------------------------- the contract


def _run(machine: Lifecycle, *inputs: Input | GuestEnd, now: float = 0.0) -> list[Step]:
    steps = []
    for item in inputs:
        if isinstance(item, GuestEnd):
            steps.append(machine.guest_ended(item, now=now))
        else:
            steps.append(machine.apply(item, now=now))
    return steps


def _lines(steps: list[Step]) -> list[str]:
    out = []
    for step in steps:
        for e in step.events:
            text = str(e)
            reason = dict(e.data).get("reason")
            out.append(text if reason is None else f"{text} reason={reason}")
    return out


START = (Input.START, Input.STARTED)
CRASH = classify_exit(-signal.SIGSEGV)
POWEROFF = classify_exit(0)
REBOOT = classify_exit(-signal.SIGHUP)
KILLED = classify_exit(-signal.SIGKILL, killed_by_us=True)


@pytest.mark.parametrize(
    ("config", "inputs", "expected_events", "expected_status"),
    [
        ({}, START, ["STARTED BOOTED"], "RUNNING/BOOTED"),
        (
            {},
            (Input.START, Input.START_FAILED),
            ["STOPPED FAILED reason=start-failed"],
            "SHUTOFF/FAILED",
        ),
        (
            {},
            (*START, Input.SHUTDOWN, POWEROFF),
            ["STARTED BOOTED", "STOPPED SHUTDOWN"],
            "SHUTOFF/SHUTDOWN",
        ),
        (
            {},
            (*START, Input.SHUTDOWN, CRASH),
            ["STARTED BOOTED", "STOPPED SHUTDOWN"],
            "SHUTOFF/SHUTDOWN",
        ),
        (
            {},
            (*START, Input.SHUTDOWN, Input.SHUTDOWN_TIMEOUT, KILLED),
            ["STARTED BOOTED", "STOPPED DESTROYED reason=shutdown-timeout"],
            "SHUTOFF/DESTROYED",
        ),
        (
            {},
            (*START, Input.DESTROY, KILLED),
            ["STARTED BOOTED", "STOPPED DESTROYED"],
            "SHUTOFF/DESTROYED",
        ),
        (
            {},
            (*START, Input.SUSPEND, Input.RESUME),
            ["STARTED BOOTED", "SUSPENDED PAUSED", "RESUMED UNPAUSED"],
            "RUNNING/UNPAUSED",
        ),
        (
            {"on_poweroff": "destroy"},
            (*START, POWEROFF),
            ["STARTED BOOTED", "SHUTDOWN GUEST", "STOPPED SHUTDOWN"],
            "SHUTOFF/SHUTDOWN",
        ),
        (
            {"on_poweroff": "restart"},
            (*START, POWEROFF, Input.RESTART_DUE, Input.STARTED),
            ["STARTED BOOTED", "SHUTDOWN GUEST", "STOPPED SHUTDOWN", "STARTED BOOTED"],
            "RUNNING/BOOTED",
        ),
        (
            {"on_reboot": "restart"},
            (*START, Input.REBOOT, REBOOT, Input.STARTED),
            ["STARTED BOOTED", "REBOOT"],
            "RUNNING/BOOTED",
        ),
        (
            {"on_reboot": "destroy"},
            (*START, REBOOT),
            ["STARTED BOOTED", "SHUTDOWN GUEST", "STOPPED SHUTDOWN"],
            "SHUTOFF/SHUTDOWN",
        ),
        (
            {"on_crash": "destroy"},
            (*START, CRASH),
            ["STARTED BOOTED", "STOPPED CRASHED"],
            "SHUTOFF/CRASHED",
        ),
        (
            {"on_crash": "restart"},
            (*START, CRASH, Input.RESTART_DUE, Input.STARTED),
            ["STARTED BOOTED", "STOPPED CRASHED", "STARTED BOOTED"],
            "RUNNING/BOOTED",
        ),
        (
            {"on_crash": "rename-restart"},
            (*START, CRASH, Input.RESTART_DUE, Input.STARTED),
            ["STARTED BOOTED", "STOPPED CRASHED", "STARTED BOOTED"],
            "RUNNING/BOOTED",
        ),
        (
            {"on_crash": "preserve"},
            (*START, CRASH, Input.DESTROY),
            ["STARTED BOOTED", "CRASHED PANICKED", "STOPPED DESTROYED"],
            "SHUTOFF/DESTROYED",
        ),
        (
            {"on_crash": "restart", "policy": RestartPolicy(max_restarts=1)},
            (*START, CRASH, Input.RESTART_DUE, Input.STARTED, CRASH),
            [
                "STARTED BOOTED",
                "STOPPED CRASHED",
                "STARTED BOOTED",
                "STOPPED CRASHED reason=restart-budget-exhausted",
            ],
            "SHUTOFF/CRASHED",
        ),
    ],
)
def test_documented_event_sequences(
    config: dict[str, object],
    inputs: tuple[Input | GuestEnd, ...],
    expected_events: list[str],
    expected_status: str,
) -> None:
    """The event sequences of docs/lifecycle.md, end to end through the machine."""
    machine = Lifecycle(**config)  # type: ignore[arg-type]
    steps = _run(machine, *inputs)
    assert (expected_events, expected_status) == (_lines(steps), str(machine.status))


def test_guest_end_and_restart_delay_travel_in_event_data() -> None:
    """Events of an end carry end/signal; a scheduled restart carries restart_delay."""
    machine = Lifecycle(on_crash="restart", policy=RestartPolicy(backoff_base=2.0))
    _run(machine, *START)
    first = machine.guest_ended(CRASH, now=10.0)
    _run(machine, Input.RESTART_DUE, Input.STARTED, now=10.0)
    second = machine.guest_ended(CRASH, now=11.0)
    assert (("end", "crash"), ("signal", "SIGSEGV"), ("restart_delay", 0)) == first.events[0].data
    assert (2, 2.0) == (second.events[0].data[-1][1], second.delay)


def test_manual_start_resets_the_budget() -> None:
    """After the budget is exhausted a person's START gives the guest a fresh budget."""
    machine = Lifecycle(on_crash="restart", policy=RestartPolicy(max_restarts=1))
    _run(machine, *START, CRASH, Input.RESTART_DUE, Input.STARTED, CRASH)
    assert Phase.SHUTOFF == machine.phase
    _run(machine, *START)
    step = machine.guest_ended(CRASH, now=0.0)
    assert (Decision.RESTART, Phase.RESTARTING) == (step.decision, step.phase)


def test_reboot_while_paused_thaws_before_respawn() -> None:
    """A reboot end seen while frozen thaws first, so the new init does not start frozen."""
    machine = Lifecycle()
    step = _run(machine, *START, Input.SUSPEND, REBOOT)[-1]
    assert (Action.THAW, Action.RESPAWN) == step.actions


# --------------------------------------------------------------------------- docs


def test_docs_contain_current_rendering() -> None:
    """docs/lifecycle.md embeds the diagram and the table exactly as rendered now."""
    text = DOC.read_text()
    assert (True, True) == (render_mermaid() in text, render_markdown() in text)


# --------------------------------------------------------------------------- stateful model


class _Model:
    """A small independent model: what a consumer should see, written as plain branches."""

    def __init__(self, on: dict[str, str], policy: RestartPolicy) -> None:
        self.on = on
        self.policy = policy
        self.phase = "off"
        self.state = "SHUTOFF/UNKNOWN"
        self.restarts: list[float] = []

    def _restart_ok(self, now: float) -> bool:
        self.restarts = [t for t in self.restarts if t > now - self.policy.window]
        if len(self.restarts) >= self.policy.max_restarts:
            return False
        self.restarts.append(now)
        return True

    def step(self, inp: Input, now: float) -> list[str] | None:
        """Expected events, or None if the input is illegal here; updates phase and state."""
        p = self.phase

        def go(phase: str, state: str | None, *events: str) -> list[str]:
            self.phase = phase
            if state is not None:
                self.state = state
            return list(events)

        if inp is Input.DESTROY:
            if p == "starting":
                return go("aborting", "SHUTDOWN/USER")
            if p in ("running", "paused", "stopping", "rebooting"):
                return go("destroying", "SHUTDOWN/USER")
            if p in ("destroying", "aborting"):
                return []
            if p == "restarting":
                return go("off", None)
            if p == "preserved":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED")
            return None
        if inp is Input.START and p in ("off", "restarting"):
            self.restarts = []
            return go("starting", "NOSTATE/UNKNOWN")
        if inp is Input.ADOPT and p == "off":
            return go("running", "RUNNING/UNKNOWN")
        if inp is Input.ADOPT_PAUSED and p == "off":
            return go("paused", "PAUSED/UNKNOWN")
        if inp is Input.LOST and p == "off":
            return go("off", "SHUTOFF/FAILED", "STOPPED FAILED")
        if inp is Input.FAILED_HARD:
            if p in ("off", "restarting"):
                return go("off", "SHUTOFF/FAILED")
            return go("off", "SHUTOFF/FAILED", "STOPPED FAILED reason=supervisor-error")
        if inp is Input.STARTED:
            if p == "starting":
                return go("running", "RUNNING/BOOTED", "STARTED BOOTED")
            if p == "rebooting":
                return go("running", "RUNNING/BOOTED")
            if p == "destroying":
                return []
            if p == "aborting":
                return go("destroying", None, "STARTED BOOTED")
            return None
        if inp is Input.START_FAILED:
            if p in ("starting", "rebooting"):
                return go("off", "SHUTOFF/FAILED", "STOPPED FAILED reason=start-failed")
            if p == "destroying":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED")
            if p == "aborting":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED reason=start-cancelled")
            return None
        if inp is Input.RESTART_DUE and p == "restarting":
            return go("starting", "NOSTATE/UNKNOWN")
        if inp is Input.SHUTDOWN:
            if p == "running":
                return go("stopping", "SHUTDOWN/USER")
            if p == "stopping":
                return []
            if p == "restarting":
                return go("off", None)
            return None
        if inp is Input.SHUTDOWN_TIMEOUT and p in ("stopping", "destroying"):
            return []
        if inp is Input.SUSPEND and p == "running":
            return go("paused", "PAUSED/USER", "SUSPENDED PAUSED")
        if inp is Input.RESUME and p == "paused":
            return go("running", "RUNNING/UNPAUSED", "RESUMED UNPAUSED")
        if inp is Input.REBOOT and p == "running":
            return []
        ends = {
            Input.ENDED_POWEROFF: "on_poweroff",
            Input.ENDED_REBOOT: "on_reboot",
            Input.ENDED_CRASH: "on_crash",
        }
        if inp is Input.ENDED_KILLED:
            if p == "stopping":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED reason=shutdown-timeout")
            if p == "destroying":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED")
            return None
        if inp in ends:
            if p == "stopping":
                return go("off", "SHUTOFF/SHUTDOWN", "STOPPED SHUTDOWN")
            if p == "destroying":
                return go("off", "SHUTOFF/DESTROYED", "STOPPED DESTROYED")
            if p not in ("running", "paused"):
                return None
            how = self.on[ends[inp]]
            crash = inp is Input.ENDED_CRASH
            if how == "preserve":
                if crash:
                    return go("preserved", "CRASHED/PANICKED", "CRASHED PANICKED")
                return go("preserved", "SHUTDOWN/UNKNOWN", "SHUTDOWN GUEST")
            restart = how in ("restart", "rename-restart") and self._restart_ok(now)
            suffix = ""
            if how in ("restart", "rename-restart") and not restart:
                suffix = " reason=restart-budget-exhausted"
            if inp is Input.ENDED_REBOOT and restart:
                return go("rebooting", "RUNNING/BOOTED", "REBOOT")
            after = "restarting" if restart else "off"
            if crash:
                return go(after, "SHUTOFF/CRASHED", "STOPPED CRASHED" + suffix)
            return go(after, "SHUTOFF/SHUTDOWN", "SHUTDOWN GUEST", "STOPPED SHUTDOWN" + suffix)
        return None


_END_OF = {
    Input.ENDED_POWEROFF: POWEROFF,
    Input.ENDED_REBOOT: REBOOT,
    Input.ENDED_CRASH: CRASH,
    Input.ENDED_KILLED: KILLED,
}


class LifecycleMachine(RuleBasedStateMachine):
    """The table-driven machine against the branch-written model, plus a consumer's grammar."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.active = False  # what a consumer of the events believes

    @initialize(
        on=st.fixed_dictionaries(
            {
                k: st.sampled_from(LIFECYCLE_ACTIONS)
                for k in ("on_poweroff", "on_reboot", "on_crash")
            }
        ),
        max_restarts=st.integers(0, 3),
        window=st.sampled_from([1.0, 5.0, 50.0]),
    )
    def setup(self, on: dict[str, str], max_restarts: int, window: float) -> None:
        policy = RestartPolicy(max_restarts=max_restarts, window=window, backoff_base=0.1)
        self.machine = Lifecycle(policy=policy, **on)  # type: ignore[arg-type]
        self.model = _Model(on, policy)

    @rule(inp=st.sampled_from(Input), dt=st.sampled_from([0.0, 0.5, 3.0]))
    def feed(self, inp: Input, dt: float) -> None:
        self.now += dt
        expected = self.model.step(inp, self.now)
        try:
            if inp in _END_OF:
                step = self.machine.guest_ended(_END_OF[inp], now=self.now)
            else:
                step = self.machine.apply(inp, now=self.now)
        except IllegalTransition:
            assert expected is None
            return
        assert expected == _lines([step])
        if inp in (Input.ADOPT, Input.ADOPT_PAUSED, Input.LOST):
            # a consumer learns of adopted guests from the listing, and lost ones were running
            # when the previous supervisor went away
            self.active = True
        for e in step.events:
            reason = dict(e.data).get("reason")
            self._consume(str(e), None if reason is None else str(reason))

    def _consume(self, event: str, reason: str | None) -> None:
        if event == "STARTED BOOTED":
            assert not self.active
            self.active = True
        elif event.startswith("STOPPED"):
            assert self.active or reason in ("start-failed", "start-cancelled", "supervisor-error")
            self.active = False
        elif event in ("SUSPENDED PAUSED", "RESUMED UNPAUSED", "REBOOT", "CRASHED PANICKED"):
            assert self.active

    @invariant()
    def status_matches_model(self) -> None:
        if hasattr(self, "machine"):
            assert self.model.state == str(self.machine.status)

    @invariant()
    def libvirt_state_fits_phase(self) -> None:
        if not hasattr(self, "machine"):
            return
        allowed = {
            Phase.SHUTOFF: {DomainState.SHUTOFF},
            Phase.RESTARTING: {DomainState.SHUTOFF},
            Phase.STARTING: {DomainState.NOSTATE},
            Phase.RUNNING: {DomainState.RUNNING},
            Phase.REBOOTING: {DomainState.RUNNING},
            Phase.PAUSED: {DomainState.PAUSED},
            Phase.STOPPING: {DomainState.SHUTDOWN},
            Phase.DESTROYING: {DomainState.SHUTDOWN},
            Phase.ABORTING: {DomainState.SHUTDOWN},
            Phase.PRESERVED: {DomainState.SHUTDOWN, DomainState.CRASHED},
        }[self.machine.phase]
        assert self.machine.status.state in allowed


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("field", ["phase", "status", "budget"])
def test_state_is_written_only_by_the_table(field: str) -> None:
    """Outside apply() nothing can set a guest's phase, status or budget."""
    machine = Lifecycle()
    with pytest.raises(AttributeError):
        setattr(machine, field, getattr(machine, field))


@pytest.mark.parametrize("phase", list(Phase))
def test_hard_failure_from_any_phase(phase: Phase) -> None:
    """FAILED_HARD ends every phase in SHUTOFF/FAILED, releasing; the event has the error."""
    machine = Lifecycle(phase=phase)
    step = machine.apply(Input.FAILED_HARD, now=0.0, data=(("error", "boom"),))
    assert (machine.phase, str(machine.status)) == (Phase.SHUTOFF, "SHUTOFF/FAILED")
    stopped_already = phase in (Phase.SHUTOFF, Phase.RESTARTING)
    assert [(str(e), dict(e.data)) for e in step.events] == (
        []
        if stopped_already
        else [("STOPPED FAILED", {"reason": "supervisor-error", "error": "boom"})]
    )
    assert step.actions[-1] is Action.RELEASE


def test_lost_guest_is_reported_with_the_callers_reason() -> None:
    """LOST: remains found after a restart; only SHUTOFF accepts it, no actions (done already)."""
    machine = Lifecycle()
    step = machine.apply(Input.LOST, now=0.0, data=(("reason", "start-interrupted"),))
    assert [(str(e), dict(e.data)) for e in step.events] == [
        ("STOPPED FAILED", {"reason": "start-interrupted"})
    ]
    assert (str(machine.status), step.actions) == ("SHUTOFF/FAILED", ())
    with pytest.raises(IllegalTransition):
        Lifecycle(phase=Phase.RUNNING).apply(Input.LOST, now=0.0)
