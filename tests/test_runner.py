"""GuestRunner driven directly, over the in-memory runtime: commands, facts, tickets, its task.

The daemon-level and real-kernel behaviour is in test_daemon*.py and the stress harness; these
pin what only the runner decides: that commands are handled one at a time in order, that a fact
from a cancelled child is dropped, that a guest at rest costs no task, and that a destroy during
a start is answered the table's way.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from supervisor.bus import Bus
from supervisor.errors import InvalidOperation, RuntimeFailure
from supervisor.hooks import GuestContext
from supervisor.lifecycle import Phase, RestartPolicy
from supervisor.model import Domain, Filesystem, OsSpec
from supervisor.runner import GuestRunner, RunnerEnv
from supervisor.store import RunStore
from supervisor.testing.fakeruntime import FakeRuntime, Leftovers

CLEAN = Leftovers(processes=(), cgroups=())


@attrs.define
class World:
    runtime: FakeRuntime
    bus: Bus[GuestContext]
    env: RunnerEnv
    nursery: trio.Nursery
    lines: list[str]

    def runner(self, name: str, *initargs: str) -> GuestRunner:
        domain = Domain(
            name=name,
            type="lxc",
            os=OsSpec(init="/bin/sh", initargs=initargs or ("-c", "sleep 1000")),
            filesystems=(Filesystem(source="/", target="/"),),
        )
        return GuestRunner(domain, self.env)

    def events(self, name: str) -> list[str]:
        return [line.split(" ", 1)[1] for line in self.lines if line.split(" ", 1)[0] == name]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    runtime = FakeRuntime()
    bus: Bus[GuestContext] = Bus()
    lines: list[str] = []
    bus.add_sink(lambda event: lines.append(event.line().split(" ", 1)[1]))
    runs = RunStore(tmp_path / "run")
    runs.ensure()
    async with trio.open_nursery() as nursery:
        env = RunnerEnv(
            runtime=runtime,
            bus=bus,
            runs=runs,
            prefix="vsvtrun",
            run_dir=tmp_path / "run",
            shutdown_timeout=0.05,
            shutdown_signal=signal.SIGTERM,
            restart_policy=RestartPolicy(backoff_base=0.01),
            launch=nursery.start_soon,
        )
        yield World(runtime, bus, env, nursery, lines)
        nursery.cancel_scope.cancel()


async def at_rest(runner: GuestRunner) -> None:
    with trio.fail_after(5):
        await runner.wait_until(lambda r: not r.busy)


async def test_a_guest_at_rest_costs_no_task(world: World) -> None:
    """Defined guests that do nothing have no task; a started one has one until it is released."""
    runners = [world.runner(f"r{i}") for i in range(200)]
    await trio.testing.wait_all_tasks_blocked()
    assert (0, False) == (len(world.nursery.child_tasks), any(r.busy for r in runners))
    await runners[0].start()
    assert (1, True) == (len(world.nursery.child_tasks), runners[0].busy)
    await runners[0].destroy()
    await at_rest(runners[0])
    await trio.testing.wait_all_tasks_blocked()
    assert (0, CLEAN) == (len(world.nursery.child_tasks), world.runtime.leftovers())
    assert ["STARTED BOOTED", "STOPPED DESTROYED"] == world.events("r0")


async def test_guest_end_then_a_new_start(world: World) -> None:
    """The guest's own poweroff is handled by the runner with no command; it starts again."""
    r = world.runner("g")
    await r.start()
    world.runtime.guest_ends("g", "poweroff")
    await at_rest(r)
    await r.start()
    await r.destroy()
    assert [
        "STARTED BOOTED",
        "SHUTDOWN GUEST",
        "STOPPED SHUTDOWN",
        "STARTED BOOTED",
        "STOPPED DESTROYED",
    ] == world.events("g")
    assert CLEAN == world.runtime.leftovers()


async def test_a_deadline_after_the_end_is_dropped(world: World) -> None:
    """A guest that ends on the shutdown request before its deadline: the deadline's fact,
    even if already queued, changes nothing (its ticket was taken back)."""
    r = world.runner("t", "-c", "trap 'exit 0' TERM; sleep 1000")
    await r.start()
    await r.shutdown(0.01)
    await at_rest(r)
    await trio.sleep(0.1)  # well past the deadline
    assert (["STARTED BOOTED", "STOPPED SHUTDOWN"], "SHUTOFF/SHUTDOWN") == (
        world.events("t"),
        f"{r.status().state}/{r.status().reason}",
    )


async def test_a_guest_ignoring_shutdown_is_killed_at_the_deadline(world: World) -> None:
    """No TERM handler: the deadline fact kills it (reason=shutdown-timeout)."""
    r = world.runner("k")
    await r.start()
    await r.shutdown(0.01)
    await at_rest(r)
    assert ["STARTED BOOTED", "STOPPED DESTROYED"] == world.events("k")
    assert (Phase.SHUTOFF, CLEAN) == (r.phase, world.runtime.leftovers())


async def test_destroy_during_start_cancels_it(world: World) -> None:
    """A destroy handled while the boot is in its prepare hooks: the boot is cancelled, still
    reports, and the table makes it STOPPED DESTROYED reason=start-cancelled; the start's caller
    hears that its start was cancelled."""
    entered = trio.Event()

    async def slow_prepare(ctx: GuestContext) -> None:
        entered.set()
        await trio.sleep_forever()

    world.bus.add_hooks("slow", prepare=slow_prepare)
    r = world.runner("s")
    failures: list[BaseException] = []

    async def start() -> None:
        try:
            await r.start()
        except RuntimeFailure as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await entered.wait()
        assert Phase.STARTING == r.phase
        await r.destroy()
    assert ["STOPPED DESTROYED"] == world.events("s")
    assert ["start of s was cancelled"] == [str(e) for e in failures]
    assert (Phase.SHUTOFF, CLEAN) == (r.phase, world.runtime.leftovers())


async def test_commands_are_handled_in_order(world: World) -> None:
    """Commands posted together are handled one by one in posting order; an illegal one gets
    its error and changes nothing."""
    r = world.runner("o")
    await r.start()
    errors: list[str] = []

    async def call(fn: str) -> None:
        try:
            await getattr(r, fn)()
        except InvalidOperation as exc:
            errors.append(f"{fn}: {exc}")

    async with trio.open_nursery() as nursery:
        for fn in ("suspend", "suspend", "resume", "reboot"):
            nursery.start_soon(call, fn)
            await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    assert ["suspend: cannot handle SUSPEND while the guest is PAUSED"] == errors
    assert ["STARTED BOOTED", "SUSPENDED PAUSED", "RESUMED UNPAUSED", "REBOOT"] == world.events("o")
    await r.destroy()
    assert CLEAN == world.runtime.leftovers()


async def test_back_to_back_commands_as_the_task_ends(world: World) -> None:
    """A command posted while the runner's task is winding down (at rest) starts a new task;
    the old one ending must not mark the runner idle (regression: two tasks overlapped and one
    cleared the other's nursery)."""
    r = world.runner("b")
    for _ in range(30):
        await r.start()
        await r.destroy()
    await at_rest(r)
    assert ["STARTED BOOTED", "STOPPED DESTROYED"] * 30 == world.events("b")
    assert CLEAN == world.runtime.leftovers()


async def test_stopped_is_published_once_the_guest_is_released(world: World) -> None:
    """Whoever hears STOPPED may reuse what the guest held (libvirt sends its stop event after
    the domain's cleanup): the release hooks have run by then, whether the guest ended by
    itself, crashed into a restart, or was destroyed; the events before it (SHUTDOWN GUEST)
    are not held back."""
    seen_at_release: list[list[str]] = []

    async def release(ctx: GuestContext) -> None:
        await trio.sleep(0.02)  # a release that takes a while, as a veth's deletion does
        seen_at_release.append(world.events(ctx.domain.name))

    world.bus.add_hooks("probe", release=release)
    r = world.runner("p")
    r.domain = attrs.evolve(r.domain, on_crash="restart")
    r.life.set_policies(r.domain)
    await r.start()
    world.runtime.guest_ends("p", "poweroff")
    await at_rest(r)
    assert ["STARTED BOOTED", "SHUTDOWN GUEST"] == seen_at_release[-1]
    assert ["SHUTDOWN GUEST", "STOPPED SHUTDOWN"] == world.events("p")[-2:]
    await r.start()
    world.runtime.guest_ends("p", "crash")
    with trio.fail_after(5):
        await r.wait_until(lambda r: r.phase is Phase.RUNNING and r.restarts == 1)
    assert "STOPPED CRASHED" not in seen_at_release[-1]
    await r.destroy()
    await at_rest(r)
    assert "STOPPED DESTROYED" not in seen_at_release[-1]
    assert [
        "STARTED BOOTED",
        "SHUTDOWN GUEST",
        "STOPPED SHUTDOWN",
        "STARTED BOOTED",
        "STOPPED CRASHED",
        "STARTED BOOTED",
        "STOPPED DESTROYED",
    ] == world.events("p")
    assert 3 == len(seen_at_release)
    assert CLEAN == world.runtime.leftovers()
