"""A restarted supervisor re-adopting guests (fake runtime): the definition a guest runs with."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from supervisor.bus import Bus
from supervisor.daemon import Supervisor
from supervisor.model import Domain, OsSpec
from supervisor.testing.fakeruntime import FakeRuntime
from supervisor.xml import parse_domain

Restart = Callable[[], Awaitable[Supervisor]]


def _domain(**kw: object) -> Domain:
    return Domain(
        name="g",
        type="vserver",
        os=OsSpec(init="/bin/sh"),
        privnet=True,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def _supervisors(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Restart]]:
    """A supervisor on a fake runtime, and a function that replaces it by a new one on the same
    state and run dirs (as an upgrade does: the guests keep running)."""
    runtime = FakeRuntime()
    scopes: list[trio.CancelScope] = []

    def make(first_seq: int) -> Supervisor:
        return Supervisor(
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            prefix="vsvt",
            runtime=runtime,
            networking=False,
            bus=Bus(first_seq=first_seq),
        )

    async with trio.open_nursery() as nursery:

        async def serve(sup: Supervisor, *, task_status: trio.TaskStatus[None]) -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await sup.run(task_status=task_status)

        current = make(1)
        await nursery.start(serve, current)

        async def restart() -> Supervisor:
            nonlocal current
            scopes[-1].cancel()
            await trio.testing.wait_all_tasks_blocked()
            current = make(current.bus.last_seq + 1)
            await nursery.start(serve, current)
            return current

        yield current, restart
        nursery.cancel_scope.cancel()


async def test_a_redefined_running_guest_keeps_its_own_definition_across_a_restart(
    tmp_path: Path,
) -> None:
    """Redefined while running, then the supervisor restarts: the adopted guest keeps the
    definition it started with (its policies included) until it stops; then the stored one."""
    async with _supervisors(tmp_path) as (sup, restart):
        await sup.define_domain(_domain(on_poweroff="destroy", hostname="old"))
        await sup.start_domain("g")
        await sup.define_domain(_domain(on_poweroff="restart", hostname="new"))
        record = json.loads((tmp_path / "run" / "domains" / "g.json").read_text())
        assert parse_domain(record["live_domain"]).hostname == "old"

        sup = await restart()
        assert sup.domain_status("g").state == "RUNNING"
        assert sup.get_domain("g").hostname == "old"
        assert sup.get_domain("g").on_poweroff == "destroy"
        # a change recorded for an adopted guest keeps what a second successor needs to adopt it
        await sup.define_domain(_domain(on_poweroff="restart", hostname="newer"))
        sup = await restart()
        assert (sup.domain_status("g").state, sup.get_domain("g").hostname) == ("RUNNING", "old")

        runtime = sup.runtime
        assert isinstance(runtime, FakeRuntime)
        runtime.guest_ends("g", "poweroff")  # the live policy, destroy, applies
        await trio.testing.wait_all_tasks_blocked()
        assert sup.domain_status("g").state == "SHUTOFF"
        assert sup.get_domain("g").hostname == "newer"
        assert sup.get_domain("g").on_poweroff == "restart"
        assert not (tmp_path / "run" / "domains" / "g.json").exists()


async def test_an_unchanged_guest_records_no_live_definition(tmp_path: Path) -> None:
    """The live definition is written only when it differs from the stored one."""
    async with _supervisors(tmp_path) as (sup, restart):
        await sup.define_domain(_domain(hostname="same"))
        await sup.start_domain("g")
        record = json.loads((tmp_path / "run" / "domains" / "g.json").read_text())
        assert "live_domain" not in record
        sup = await restart()
        assert sup.get_domain("g").hostname == "same"
        await sup.destroy_domain("g")


async def test_destroying_a_preserved_guest_brings_in_the_stored_definition(
    tmp_path: Path,
) -> None:
    """A guest redefined while running, then crashed and preserved (on_crash=preserve), then
    destroyed: its next start uses the stored definition (found by the real-runtime stress run,
    where a live cpu_shares outlived the guest this way)."""
    async with _supervisors(tmp_path) as (sup, _restart):
        await sup.define_domain(_domain(on_crash="preserve", hostname="old"))
        await sup.start_domain("g")
        await sup.define_domain(_domain(on_crash="preserve", hostname="new"))
        runtime = sup.runtime
        assert isinstance(runtime, FakeRuntime)
        runtime.guest_ends("g", "crash")
        await trio.testing.wait_all_tasks_blocked()
        assert (sup.domain_status("g").state, sup.get_domain("g").hostname) == ("CRASHED", "old")
        await sup.destroy_domain("g")
        assert (sup.domain_status("g").state, sup.get_domain("g").hostname) == ("SHUTOFF", "new")
