"""The operations the harness draws, and the hypothesis state machine that draws them.

Each operation is a function ``(harness, data) -> None`` in :data:`OPERATIONS`: it draws its
arguments, then hands the supervisor call and the model's counterpart to
:meth:`.harness.Harness.apply`, which runs both and checks that they agree. An operation that
needs a guest draws a name with :func:`pick`: usually one for which the operation is legal,
sometimes any, so refusals are tested too.

One hypothesis rule (``step``) draws the operation itself, weighted: hypothesis's swarm testing
would otherwise switch most rules off in each example (a run without ``define`` tests nothing),
and a weighted draw keeps the mix useful for thousands of steps. The order of the table and of
each operation's draws is part of what a seed means: keep both, or old replay lines change
meaning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Literal

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from supervisor.bus import PrepareFailed
from supervisor.errors import InvalidOperation, RuntimeFailure
from supervisor.testing.fakeruntime import FailOp
from supervisor.testing.stress.backends import (
    NETWORK,
    SHARES,
    FakeBackend,
    RuntimeKind,
    guest_domain,
)
from supervisor.testing.stress.events import Consumer
from supervisor.testing.stress.harness import Harness, RunContext, expecting
from supervisor.testing.stress.model import ACTIONS, SETTLED, WITH_PROCESS, Definition

#: the mock clock's moves (dyadic, so the model's sums equal the clock's exactly)
CLOCK_STEPS = (0.125, 0.375, 1.0, 4.0)
#: what fails in the fake runtime when a start is made to fail
START_FAILURES: tuple[FailOp, ...] = ("spawn", "cgroup.create")
#: at most this many slow consumers at once
MAX_CONSUMERS = 3

OperationFn = Callable[[Harness, st.DataObject], None]


@functools.cache
def definition_strategy(networking: bool) -> st.SearchStrategy[Definition]:
    """What a guest is defined with; with networking also a NIC and CPU shares (drawn last, so
    the fake runtime's draws are the same as before the real runtime had them)."""
    extra: dict[str, st.SearchStrategy[object]] = (
        {"nic": st.booleans(), "shares": st.sampled_from((None, *SHARES))} if networking else {}
    )
    return st.builds(
        Definition,
        on_poweroff=st.sampled_from(ACTIONS),
        on_reboot=st.sampled_from(ACTIONS),
        on_crash=st.sampled_from(ACTIONS),
        traps=st.booleans(),
        **extra,
    )


def pick(h: Harness, data: st.DataObject, phases: frozenset[str] | None) -> str:
    """A guest name: usually one for which the operation is legal, sometimes any.

    ``phases``: the model phases in which it is legal (None: the name must be undefined).
    """
    names = h.ctx.names
    guests = h.model.guests
    fitting = [
        n
        for n in names
        if (phases is None and n not in guests)
        or (phases is not None and n in guests and guests[n].phase in phases)
    ]
    if fitting and data.draw(st.integers(0, 9), label="legal") < 8:
        return data.draw(st.sampled_from(fitting), label="name")
    return data.draw(st.sampled_from(names), label="name")


# ------------------------------------------------------------------------------ definitions


def op_define(h: Harness, data: st.DataObject) -> None:
    """Define a guest, or change the stored definition of one (active or not)."""
    name = pick(h, data, None)
    definition = data.draw(definition_strategy(h.ctx.profile.networking), label="definition")
    domain = guest_domain(h.ctx.roots, name, definition)
    g = h.model.guests.get(name)
    # "define-active": the stored definition changes under an active guest
    verb = "define" if g is None or g.phase == "shutoff" else "define-active"
    h.apply(
        functools.partial(h.sup.define_domain, domain),
        functools.partial(h.model.define, name, definition),
        f"{verb} {name} {definition}",
    )


def op_undefine(h: Harness, data: st.DataObject) -> None:
    # Undefining an active guest makes it transient (libvirt's rule: it runs on and is gone
    # when it stops), which the model does not restate yet: only stopped guests and names
    # that are not defined are drawn (tests/test_verbs.py covers the transient path).
    guests = h.model.guests
    names = [n for n in h.ctx.names if n not in guests or guests[n].phase == "shutoff"]
    if not names:
        return
    name = data.draw(st.sampled_from(names), label="name")
    h.apply(
        functools.partial(h.sup.undefine_domain, name),
        functools.partial(h.model.undefine, name),
        f"undefine {name}",
    )


# ------------------------------------------------------------------------------ the lifecycle


def op_start(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, frozenset({"shutoff", "restarting"}))
    g = h.model.guests.get(name)
    legal = g is not None and g.phase in ("shutoff", "restarting")
    if legal and h.model.start_fails(name):
        # a NIC guest whose network is down: refused by the network hook (STOPPED FAILED),
        # and the caller gets the hook's own error (409 over the API), not the hook failure
        h.apply(
            expecting(
                functools.partial(h.sup.start_domain, name),
                InvalidOperation,
                cause=PrepareFailed,
            ),
            functools.partial(h.model.start, name),
            f"start-without-network {name}",
        )
        return
    h.apply(
        functools.partial(h.sup.start_domain, name),
        functools.partial(h.model.start, name),
        f"start {name}",
    )


def op_start_fails(h: Harness, data: st.DataObject) -> None:
    """A start whose spawn or cgroup creation fails in the (fake) runtime."""
    backend = h.backend
    assert isinstance(backend, FakeBackend)
    rt = backend.fake
    name = pick(h, data, frozenset({"shutoff", "restarting"}))
    what = data.draw(st.sampled_from(START_FAILURES), label="failing")
    g = h.model.guests.get(name)
    if g is None or g.phase not in ("shutoff", "restarting"):
        return

    async def start_with_failure() -> None:
        rt.fail_next(what)
        try:
            await h.sup.start_domain(name)
        finally:
            left = rt.pending_failures()
            rt.clear_failures()
        if left:
            raise AssertionError(f"the injected {what} failure was not reached")
        raise AssertionError("start succeeded despite the injected failure")

    h.apply(
        expecting(start_with_failure, RuntimeFailure),
        functools.partial(h.model.start, name, fails=True),
        f"start {name} with {what} failing",
    )


def op_shutdown(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, frozenset({"running", "stopping", "restarting"}))
    h.apply(
        functools.partial(h.sup.shutdown_domain, name),
        functools.partial(h.model.shutdown, name),
        f"shutdown {name}",
    )


def op_destroy(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, WITH_PROCESS | {"preserved", "restarting"})
    g = h.model.guests.get(name)
    if g is not None and g.phase == "rebooting":
        return  # destroy waits for the respawn backoff: see the report
    h.apply(
        functools.partial(h.sup.destroy_domain, name),
        functools.partial(h.model.destroy, name),
        f"destroy {name}",
    )


def op_reboot(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, frozenset({"running"}))
    h.apply(
        functools.partial(h.sup.reboot_domain, name),
        functools.partial(h.model.reboot, name),
        f"reboot {name}",
    )


def op_suspend(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, frozenset({"running"}))
    h.apply(
        functools.partial(h.sup.suspend_domain, name),
        functools.partial(h.model.suspend, name),
        f"suspend {name}",
    )


def op_resume(h: Harness, data: st.DataObject) -> None:
    name = pick(h, data, frozenset({"paused"}))
    h.apply(
        functools.partial(h.sup.resume_domain, name),
        functools.partial(h.model.resume, name),
        f"resume {name}",
    )


def op_guest_acts(h: Harness, data: st.DataObject) -> None:
    """The guest itself reboots, powers off, crashes (or exits 0)."""
    profile = h.ctx.profile
    name = pick(h, data, profile.acts_while)
    how = data.draw(st.sampled_from(profile.ends), label="how")
    g = h.model.guests.get(name)
    if g is None or g.phase not in profile.acts_while:
        return
    h.apply(
        functools.partial(h.backend.guest_acts, name, how),
        functools.partial(h.model.guest_ends, name, how),
        f"guest {name} does {how}",
    )


def op_restart(h: Harness, data: st.DataObject) -> None:
    """The supervisor is replaced while the guests run (once every guest is settled)."""
    if any(g.phase not in SETTLED for g in h.model.guests.values()):
        return
    h.apply(h.restart, h.model.restart_supervisor, "restart the supervisor")


# ------------------------------------------------------------------------------ time and events


def op_advance_clock(h: Harness, data: st.DataObject) -> None:
    """Time passes on the mock clock: shutdown deadlines and restart backoffs come due."""
    backend = h.backend
    assert isinstance(backend, FakeBackend)
    dt = data.draw(st.sampled_from(CLOCK_STEPS), label="seconds")
    h.apply(
        functools.partial(backend.jump, dt),
        functools.partial(h.model.advance, dt),
        f"advance the clock {dt}s",
    )


def op_consumer_connects(h: Harness, data: st.DataObject) -> None:
    """A consumer subscribes with a tiny buffer: it will fall behind."""
    buffer = data.draw(st.integers(1, 4), label="buffer")
    overflow: Literal["gap", "drop"] = data.draw(st.sampled_from(("gap", "drop")), label="overflow")
    if len(h.consumers) >= MAX_CONSUMERS:
        return

    async def connect() -> None:
        bus = h.sup.bus
        sub = bus.subscribe(f"consumer{len(h.consumers)}", buffer=buffer, overflow=overflow)
        h.consumers.append(Consumer(sub, overflow, bus.last_seq + 1))

    h.call(connect)


def op_consumer_reads(h: Harness, data: st.DataObject) -> None:
    """A consumer catches up (gaps, or its drop, checked) and perhaps disconnects."""
    if not h.consumers:
        return
    i = data.draw(st.integers(0, len(h.consumers) - 1), label="consumer")
    disconnect = data.draw(st.booleans(), label="disconnect")
    consumer = h.consumers[i]

    async def read() -> None:
        await h.problems()  # brings the harness's own log up to date
        consumer.drain(h.log)
        if disconnect or consumer.dropped:
            consumer.sub.unsubscribe()
            del h.consumers[i]

    h.call(read)


# ------------------------------------------------------------------------------ network, scheduler


def op_net_start(h: Harness, data: st.DataObject) -> None:
    h.apply(
        functools.partial(h.sup.start_network, NETWORK),
        h.model.start_network,
        f"net-start {NETWORK}",
    )


def op_net_destroy(h: Harness, data: st.DataObject) -> None:
    """Stop the network, perhaps under running guests (their NICs then dangle)."""
    if h.counting and any(g.attached for g in h.model.guests.values()):
        h.ctx.ops["net-destroy:under-running-guests"] += 1
    h.apply(
        functools.partial(h.sup.destroy_network, NETWORK),
        h.model.destroy_network,
        f"net-destroy {NETWORK}",
    )


def op_schedinfo(h: Harness, data: st.DataObject) -> None:
    """``schedinfo --set cpu_shares=N --live``: refused unless the guest runs."""
    name = pick(h, data, frozenset({"running", "paused"}))
    shares = data.draw(st.sampled_from(SHARES), label="cpu_shares")
    h.apply(
        functools.partial(
            h.sup.set_schedinfo, name, {"cpu_shares": str(shares)}, live=True, config=False
        ),
        functools.partial(h.model.set_shares, name, shares),
        f"schedinfo {name} cpu_shares={shares}",
    )


# ------------------------------------------------------------------------------ the table


@attrs.frozen
class Operation:
    """One row of the table: how often it is drawn, and on which runtime it exists."""

    name: str
    weight: int
    run: OperationFn
    #: the one runtime that can do it (None: both)
    only: RuntimeKind | None = None


#: every operation, in draw order (relative weights; the real runtime's own rows come last so
#: the fake runtime's draws stay as they were before they existed)
OPERATIONS: tuple[Operation, ...] = (
    Operation("define", 2, op_define),
    Operation("undefine", 2, op_undefine),
    Operation("start", 6, op_start),
    # failure injection and a clock the harness moves exist in the fake runtime only
    Operation("start_fails", 1, op_start_fails, only="fake"),
    Operation("shutdown", 3, op_shutdown),
    Operation("destroy", 3, op_destroy),
    Operation("reboot", 2, op_reboot),
    Operation("suspend", 2, op_suspend),
    Operation("resume", 2, op_resume),
    Operation("guest_acts", 5, op_guest_acts),
    Operation("advance_clock", 3, op_advance_clock, only="fake"),
    Operation("consumer_connects", 1, op_consumer_connects),
    Operation("consumer_reads", 1, op_consumer_reads),
    # the fake runtime has no network or scheduler subsystem
    Operation("net_start", 2, op_net_start, only="real"),
    Operation("net_destroy", 1, op_net_destroy, only="real"),
    Operation("schedinfo", 3, op_schedinfo, only="real"),
    # the supervisor replaced by a new one that re-adopts the running guests
    Operation("restart", 1, op_restart),
)
BY_NAME: Mapping[str, Operation] = {op.name: op for op in OPERATIONS}


def draw_table(kind: RuntimeKind) -> tuple[str, ...]:
    """The names ``step`` samples from: each of ``kind``'s operations, ``weight`` times."""
    return tuple(op.name for op in OPERATIONS if op.only in (None, kind) for _ in range(op.weight))


def machine_class(ctx: RunContext) -> type[RuleBasedStateMachine]:
    """The state machine class for one run.

    Hypothesis takes a class whose rules carry their strategies, and those depend on the run
    (how many guests, which runtime); everything else lives in :class:`.harness.Harness` and
    the operation functions above.
    """
    names = ctx.names
    operations = draw_table(ctx.profile.kind)
    initial = st.lists(
        definition_strategy(ctx.profile.networking), min_size=len(names), max_size=len(names)
    )

    class SupervisorMachine(RuleBasedStateMachine):
        """Random operations on a Supervisor, checked against the model after each step."""

        def __init__(self) -> None:
            super().__init__()
            self.harness = Harness.open(ctx)

        @initialize(definitions=initial)
        def define_all(self, definitions: list[Definition]) -> None:
            self.harness.define_all(definitions)

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            op = data.draw(st.sampled_from(operations), label="operation")
            BY_NAME[op].run(self.harness, data)

        @invariant()
        def count_steps(self) -> None:
            # runs once at the start, then after every step
            self.harness.count_step()

        def teardown(self) -> None:
            self.harness.teardown()

    return SupervisorMachine
