"""Taking over from a previous supervisor: adopt the guests it left running, clean up the rest.

Every running guest has a run record (see :meth:`supervisor.runner.GuestRunner.record`): its
init's pid and namespace inodes, its cgroup, what its hooks made. A supervisor that starts reads
them all. A guest still defined whose recorded init is alive (the pid is PID 1 of the recorded
pid namespace, so a reused pid is not mistaken for it) is adopted: it gets back the live
definition it ran with, the scheduler re-applies its CPU limits, the network subsystem re-attaches
its NICs, and its runner watches its init through a pidfd. Anything else (a start a SIGKILL
interrupted, a guest that ended while no supervisor watched, a guest no longer defined) is
cleaned up: what is left in its cgroup is killed, its hooks' resources are released, the
cgroup and the record go, and the table's LOST reports it ``STOPPED FAILED`` with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from supervisor.bus import Bus
from supervisor.errors import RuntimeFailure, VsvError
from supervisor.hooks import GuestContext, HookRecords
from supervisor.lifecycle import Input, Lifecycle
from supervisor.model import Domain
from supervisor.net.subsystem import NetworkSubsystem
from supervisor.runner import Adoptee, GuestRunner
from supervisor.runtime import Runtime
from supervisor.sched.subsystem import SchedSubsystem
from supervisor.store import RunStore

log = logging.getLogger("vsv.adoption")


def _live_init(runtime: Runtime, record: Mapping[str, Any]) -> int | None:
    """The recorded init's pid if it still is that guest's init, else None."""
    init_pid = record.get("init_pid")
    pidns = (record.get("namespaces") or {}).get("pid")
    if (
        isinstance(init_pid, int)
        and isinstance(pidns, int)
        and runtime.pid_is_guest_init(init_pid, pidns)
    ):
        return init_pid
    return None


def adoptable(runs: RunStore, runtime: Runtime, defined: Mapping[str, object]) -> list[str]:
    """The guests a predecessor left running that will be adopted (defined, init alive).

    Known before anything is taken over, so that the supervisor's STARTED, which names them,
    comes first."""
    return [
        name
        for name, record in sorted(runs.read_all("domains").items())
        if name in defined and _live_init(runtime, record) is not None
    ]


async def take_over(
    *,
    runs: RunStore,
    runtime: Runtime,
    bus: Bus[GuestContext],
    prefix: str,
    run_dir: Path,
    runners: Mapping[str, GuestRunner],
    sched: SchedSubsystem | None,
    net: NetworkSubsystem | None,
) -> None:
    """Adopt or clean up after every guest the run records name (see the module docstring)."""
    for name, record in runs.read_all("domains").items():
        runner = runners.get(name)
        init_pid = _live_init(runtime, record)
        cgroup = runtime.cgroup(prefix, name)
        if init_pid is not None and runner is not None:
            runner.restore_live(record)
        domain = runner.domain if runner is not None else Domain(name=name)
        # whatever it recorded was prepared: release must undo it, adopted or not
        ctx = GuestContext(
            domain,
            cgroup,
            prefix,
            run_dir,
            HookRecords.from_json(record.get("hooks")),
            prepared=True,
        )
        if init_pid is not None and runner is not None:
            namespaces = dict(record.get("namespaces") or {})
            frozen = False
            with contextlib.suppress(RuntimeFailure):
                frozen = cgroup.is_frozen()
            if sched is not None:
                try:
                    await sched.adopt(ctx)
                except VsvError as exc:
                    log.warning("guest %s: re-applying CPU limits: %s", name, exc)
            if net is not None:
                await net.adopt(ctx)
            await runner.adopt(
                Adoptee(
                    cgroup=cgroup,
                    ctx=ctx,
                    init_pid=init_pid,
                    pidns=namespaces["pid"],
                    namespaces=namespaces,
                    started_at=record.get("started_at"),
                    frozen=frozen,
                )
            )
            continue
        # dead (or no longer defined): clean up what it held and report it
        with trio.CancelScope(shield=True):
            # whatever is still in the cgroup (a half-started guest, a daemon the dead init
            # left) goes
            with contextlib.suppress(RuntimeFailure):
                await cgroup.kill_all()
            with contextlib.suppress(VsvError):
                await bus.run_release(ctx)
            with contextlib.suppress(RuntimeFailure):
                await cgroup.remove()
        runs.remove("domains", name)
        why = (
            "no-definition"
            if init_pid is not None
            else "start-interrupted"
            if record.get("init_pid") is None
            else "ended-while-supervisor-down"
        )
        if runner is not None:
            await runner.lost(why)
        else:
            # a guest no longer defined has no runner: a throwaway machine says the same
            step = Lifecycle().apply(Input.LOST, now=time.monotonic(), data=(("reason", why),))
            for emit in step.events:
                bus.publish_nowait("domain", name, emit.type, emit.detail, emit.data)
