"""One hypothesis example's world: a real Supervisor in a trio thread, the model, the stream.

:class:`Harness` owns what one example needs and does what every operation shares: apply an
operation to the model and to the supervisor (:meth:`Harness.apply`), then compare the two
(:meth:`Harness.problems`), replace the supervisor by a successor (:meth:`Harness.restart`) and
tear everything down at the end. Which operations exist and how their arguments are drawn is
:mod:`.machine`'s business; what differs between the runtimes is the backend's
(:mod:`.backends`).

Hypothesis runs in the calling thread; the supervisor runs in ``trio.run`` on a helper thread
(:class:`TrioThread`, one per example), and the harness calls into it with
:func:`trio.from_thread.run`.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from supervisor.bus import Bus, Subscription
from supervisor.daemon import Supervisor
from supervisor.errors import InvalidOperation, NotFound, RuntimeFailure
from supervisor.runtime import Runtime
from supervisor.testing.stress.backends import (
    NETWORK,
    Backend,
    FakeBackend,
    Profile,
    guest_domain,
    open_backend,
    stress_network,
)
from supervisor.testing.stress.events import Consumer, EventLog
from supervisor.testing.stress.model import Definition, Illegal, Model

T = TypeVar("T")
#: an operation on the supervisor, run in the trio thread
Op = Callable[[], Awaitable[object]]


@attrs.define
class RunContext:
    """What one ``run_stress`` shares between its examples (real guests' roots, counters)."""

    profile: Profile
    guests: int
    workdir: Path
    steps: int = 0
    examples: int = 0
    #: examples run in the current round (its first is hypothesis's all-simplest example)
    round_examples: int = 0
    #: operations carried out (counted examples only): "start", "start:refused", ...
    ops: Counter[str] = attrs.Factory(Counter)
    roots: dict[str, Path] = attrs.Factory(dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The guest names in play."""
        return tuple(f"g{i}" for i in range(self.guests))


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


class ExpectedFailure(Exception):
    """Marks an error the operation was meant to raise (a start that must fail)."""


def expecting(
    op: Op, error: type[BaseException], *, cause: type[BaseException] | None = None
) -> Callable[[], Awaitable[None]]:
    """``op`` must raise ``error`` (caused by ``cause``, when given)."""

    async def run() -> None:
        try:
            await op()
        except error as exc:
            if cause is not None and not isinstance(exc.__cause__, cause):
                raise AssertionError(f"{exc!r} was caused by {exc.__cause__!r}") from exc
            raise ExpectedFailure(str(exc)) from exc
        raise AssertionError(f"expected {error.__name__}, the operation succeeded")

    return run


@attrs.define(eq=False)
class Harness:
    """One example: the supervisor under test, the model it must agree with, the event log.

    Build it with :meth:`open`; every later step goes through :meth:`apply`.
    """

    ctx: RunContext
    #: the example's number in the run (it picks the network's subnet)
    n: int
    #: hypothesis starts every run with its "simplest" example (the first rule with the
    #: simplest arguments, over and over): it runs, but its steps are not counted
    counting: bool
    prefix: str
    directory: Path
    backend: Backend
    model: Model
    sup: Supervisor
    thread: TrioThread
    log: EventLog = attrs.Factory(EventLog)
    consumers: list[Consumer] = attrs.Factory(list)
    main_sub: Subscription | None = None
    run_scope: trio.CancelScope | None = None
    run_done: trio.Event | None = None
    #: the hypothesis invariant has run once (its first run is before any step)
    first_check: bool = True
    torn_down: bool = False

    @classmethod
    def open(cls, ctx: RunContext) -> Harness:
        """Make the example's directory and backend, and start its first supervisor."""
        ctx.examples += 1
        ctx.round_examples += 1
        n = ctx.examples
        profile = ctx.profile
        model = Model(policy=profile.policy, shutdown_timeout=profile.shutdown_timeout)
        prefix = "vsvs" + secrets.token_hex(3)
        directory = Path(tempfile.mkdtemp(prefix=f"ex{n}-", dir=ctx.workdir))
        backend = open_backend(profile, prefix, directory, ctx.roots)
        try:
            sup = _new_supervisor(directory, prefix, backend, profile, 1, backend.runtime)
            harness = cls(
                ctx=ctx,
                n=n,
                counting=ctx.round_examples > 1,
                prefix=prefix,
                directory=directory,
                backend=backend,
                model=model,
                sup=sup,
                thread=TrioThread(backend.clock),
            )
            try:
                harness.thread.call(harness._start)
            except BaseException:
                harness.thread.close()
                raise
        except BaseException:
            backend.release()
            raise
        return harness

    # -- the supervisor ----------------------------------------------------------------------

    async def _start(self) -> None:
        # subscribed before run(): a restarted supervisor publishes while it adopts
        self.main_sub = self.sup.bus.subscribe("stress", buffer=10_000_000)
        await self.thread.nursery.start(self._run_supervisor)

    async def _run_supervisor(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        done = self.run_done = trio.Event()
        try:
            with trio.CancelScope() as self.run_scope:
                await self.sup.run(task_status=task_status)
        finally:
            done.set()

    async def restart(self) -> None:
        """Replace the supervisor as an upgrade does: guests keep running, then the new
        one (same dirs, same runtime, numbering continued) re-adopts them."""
        await self.problems()  # the old supervisor's last events into the log
        for consumer in self.consumers:
            consumer.drain(self.log)
            consumer.sub.unsubscribe()
        self.consumers.clear()
        if self.sup.net is not None:
            self.sup.net.detach()  # networks stay up, as for `vsv daemon --keep-guests`
        assert self.run_scope is not None
        assert self.run_done is not None
        assert self.main_sub is not None
        self.run_scope.cancel()
        await self.run_done.wait()
        self.main_sub.unsubscribe()
        # the successor gets the same runtime: the fake kernel, or the real runtime, whose
        # pools of fork servers and embryos (which hold nothing of any guest) closed with the
        # predecessor and open again with the successor
        self.sup = _new_supervisor(
            self.directory,
            self.prefix,
            self.backend,
            self.ctx.profile,
            self.sup.bus.last_seq + 1,
            self.sup.runtime,
        )
        await self._start()

    # -- one step ----------------------------------------------------------------------------

    def apply(self, op: Op, model_op: Callable[[], None], what: str) -> None:
        """Apply ``model_op`` to the model, ``op`` to the supervisor, then check both.

        ``what`` names the step in failures; its first word counts it in the run's summary
        (with ``:refused`` when the model says the supervisor must refuse it).
        """
        illegal: Illegal | None = None
        try:
            model_op()
        except Illegal as exc:
            illegal = exc
        if self.counting:
            verb = what.split()[0].rstrip(":")
            self.ctx.ops[verb + (":refused" if illegal is not None else "")] += 1
        error = self.thread.call(functools.partial(self._perform, op))
        if illegal is not None:
            want = NotFound if illegal.kind == "missing" else InvalidOperation
            if not isinstance(error, want):
                raise AssertionError(f"{what}: expected {want.__name__}, got {error!r}")
        elif error is not None and not isinstance(error, ExpectedFailure):
            raise AssertionError(f"{what}: unexpected {error!r}") from error
        self.check(what)

    def call(self, afn: Callable[[], Awaitable[T]]) -> T:
        """Run ``afn()`` in the supervisor's trio thread, unchecked (consumers come and go)."""
        return self.thread.call(afn)

    async def _perform(self, op: Op) -> BaseException | None:
        """Run ``op``; the refusal it raised, if any (anything else fails the step)."""
        error: BaseException | None = None
        done = trio.Event()

        async def runner() -> None:
            nonlocal error
            try:
                await op()
            except (InvalidOperation, NotFound, RuntimeFailure, ExpectedFailure) as exc:
                error = exc
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await self.backend.wait_done(done, nursery.cancel_scope)
        return error

    def check(self, what: str) -> None:
        """Fail with every disagreement between the supervisor and the model after ``what``."""
        self.backend.settle_model(self.model)
        problems = self.thread.call(functools.partial(self.backend.observe, self.problems))
        if problems:
            raise AssertionError(f"after {what}:\n  " + "\n  ".join(problems))

    def count_step(self) -> None:
        """Called after every step (and once before the first): counts the run's steps."""
        if self.counting and not self.first_check:
            self.ctx.steps += 1
        self.first_check = False

    # -- the checks --------------------------------------------------------------------------

    async def problems(self) -> list[str]:
        """Everything that disagrees with the model now (empty: all is well).

        Reads what the harness's subscription has buffered into the log first, so a caller
        also uses it to bring the log up to date.
        """
        assert self.main_sub is not None
        while True:
            try:
                self.log.add(self.main_sub.receive_nowait())
            except trio.WouldBlock:
                break
        problems: list[str] = []
        model = self.model
        if sorted(self.sup.guests) != sorted(model.guests):
            problems.append(f"defined: {sorted(self.sup.guests)} != {sorted(model.guests)}")
        for name in self.ctx.names:
            want_events = model.events.get(name, [])
            got_events = self.log.by_name.get(name, [])
            if got_events != want_events:
                problems.append(f"{name} events: {got_events} != expected {want_events}")
            g = model.guests.get(name)
            if g is not None and name in self.sup.guests:
                status = self.sup.domain_status(name)
                if (status.state, status.reason) != (g.state, g.reason):
                    problems.append(
                        f"{name} ({g.phase}): state {status.state}/{status.reason}, "
                        f"expected {g.state}/{g.reason}"
                    )
            problems.extend(self.backend.guest_problems(self.sup, name, g))
        problems.extend(await self.backend.network_problems(self.sup, model, self.log))
        return problems

    # -- the beginning and the end -----------------------------------------------------------

    def define_all(self, definitions: list[Definition]) -> None:
        """The example's start: the network (when in play) defined and started, then every
        guest name defined with its drawn definition."""
        if self.ctx.profile.networking:
            network = stress_network(self.prefix, self.n)
            self.apply(
                functools.partial(self.sup.define_network, network),
                self.model.define_network,
                f"net-define {NETWORK}",
            )
            self.apply(
                functools.partial(self.sup.start_network, NETWORK),
                self.model.start_network,
                f"net-start {NETWORK}",
            )
        for name, definition in zip(self.ctx.names, definitions, strict=True):
            domain = guest_domain(self.ctx.roots, name, definition)
            self.apply(
                functools.partial(self.sup.define_domain, domain),
                functools.partial(self.model.define, name, definition),
                f"define {name} {definition}",
            )

    def teardown(self) -> None:
        """Destroy and undefine everything; assert the stream closed and nothing leaked."""
        try:
            backend = self.backend
            if isinstance(backend, FakeBackend):
                # one jump fires every timer: no restart or respawn arms another one
                self.apply(
                    functools.partial(backend.jump, 64.0),
                    functools.partial(self.model.advance, 64.0),
                    "time passes",
                )
            for name in sorted(self.model.guests):
                if self.model.guests[name].phase != "shutoff":
                    self.apply(
                        functools.partial(self.sup.destroy_domain, name),
                        functools.partial(self.model.destroy, name),
                        f"teardown: destroy {name}",
                    )
            if self.model.net_running:
                self.apply(
                    functools.partial(self.sup.destroy_network, NETWORK),
                    self.model.destroy_network,
                    f"teardown: net-destroy {NETWORK}",
                )
            if self.model.net_defined:
                self.apply(
                    functools.partial(self.sup.undefine_network, NETWORK),
                    self.model.undefine_network,
                    f"teardown: net-undefine {NETWORK}",
                )
            for name in sorted(self.model.guests):
                self.apply(
                    functools.partial(self.sup.undefine_domain, name),
                    functools.partial(self.model.undefine, name),
                    f"teardown: undefine {name}",
                )
            if self.log.active:
                raise AssertionError(f"STARTED without STOPPED at teardown: {self.log.active}")
            records = list((self.directory / "run").glob("domains/*"))
            if records:
                raise AssertionError(f"run records left: {records}")
            self.torn_down = True
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop the supervisor; make sure nothing is left even after a failure."""
        try:
            with contextlib.suppress(Exception):
                self.thread.call(functools.partial(self.backend.destroy_all, self.sup))
        finally:
            self.thread.close()
            try:
                leaks = self.backend.sweep(self.ctx.names)
                # after a failed step the supervisor was stopped with guests running: the
                # fake's leftovers then say nothing (real ones were cleaned up by the sweep)
                if leaks and self.torn_down:
                    raise AssertionError(f"leftovers after teardown: {leaks}")
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)


def _new_supervisor(
    directory: Path,
    prefix: str,
    backend: Backend,
    profile: Profile,
    first_seq: int,
    runtime: Runtime | None,
) -> Supervisor:
    """A supervisor on the example's dirs whose events are numbered from ``first_seq``."""
    return Supervisor(
        state_dir=directory / "state",
        run_dir=directory / "run",
        prefix=prefix,
        runtime=runtime,
        host_netns=backend.host_netns,
        networking=profile.networking,
        restart_policy=profile.policy,
        shutdown_timeout=profile.shutdown_timeout,
        bus=Bus(first_seq=first_seq),
    )
