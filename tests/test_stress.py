"""The stress harness (fake and real runtime), its model, and the fake runtime's semantics."""

from __future__ import annotations

import argparse
import io
import math
import signal

import attrs
import pytest
import trio
import trio.testing

from supervisor import stress_cli
from supervisor.errors import RuntimeFailure
from supervisor.events import Event
from supervisor.lifecycle import RestartPolicy
from supervisor.model import Domain, OsSpec
from supervisor.runtime import GuestExit
from supervisor.testing.fakeruntime import (
    FakeCgroup,
    FakeProcess,
    FakeRuntime,
    Leftovers,
    handles_term,
)
from supervisor.testing.stress.events import EventLog
from supervisor.testing.stress.model import Definition, Illegal, Model, event_text, text_of
from supervisor.testing.stress.run import run_stress_detailed

TRAPS = Domain(name="a", os=OsSpec(init="/bin/sh", initargs=("-c", "trap 'exit 0' TERM; x")))
PLAIN = Domain(name="b", os=OsSpec(init="/bin/sh", initargs=("-c", "while :; do :; done")))


async def _spawn(rt: FakeRuntime, domain: Domain) -> tuple[FakeCgroup, FakeProcess]:
    cg = rt.cgroup("vsvt", domain.name)
    cg.create()
    proc = await rt.spawn(domain, cg, log_path=None, netns_path=None)
    return cg, proc


# ------------------------------------------------------------------------ the fake runtime


def test_trap_convention() -> None:
    """A fake init handles SIGTERM exactly when its initargs contain 'trap'."""
    assert (True, False) == (handles_term(TRAPS), handles_term(PLAIN))


async def test_spawn_puts_three_processes_in_the_cgroup() -> None:
    """spawn: wrapper, init and a daemon join the cgroup; the init is a guest init."""
    rt = FakeRuntime()
    cg, proc = await _spawn(rt, TRAPS)
    assert proc.pids == cg.members
    assert 3 == len(cg.pids())
    assert proc.namespaces is not None
    assert proc.init_pid is not None
    ns = proc.namespaces.pid
    assert rt.pid_is_guest_init(proc.init_pid, ns)
    assert not rt.pid_is_guest_init(proc.init_pid, ns + 1)
    # an adopted guest is signalled through the runtime, never with a real kill of a fake pid
    assert not rt.signal_guest_init(proc.init_pid, ns + 1, signal.SIGKILL)
    assert [p.alive for p in rt.guests.values()] == [True]
    assert rt.signal_guest_init(proc.init_pid, ns, signal.SIGKILL)
    assert [p.alive for p in rt.guests.values()] == []
    assert not rt.signal_guest_init(proc.init_pid, ns, signal.SIGKILL)


async def test_unhandled_signals_are_ignored_except_sigkill() -> None:
    """As for a pid namespace's init: TERM without a trap and HUP do nothing; SIGKILL ends."""
    rt = FakeRuntime()
    _, proc = await _spawn(rt, PLAIN)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGHUP)
    assert proc.alive
    proc.send_signal(signal.SIGKILL)
    assert GuestExit(signal=signal.SIGKILL) == await proc.wait()
    with pytest.raises(RuntimeFailure):
        proc.send_signal(signal.SIGTERM)


async def test_trapped_term_exits_zero_and_empties_the_cgroup() -> None:
    """A trapping init exits 0 on TERM; the whole pid namespace and the wrapper go with it."""
    rt = FakeRuntime()
    cg, proc = await _spawn(rt, TRAPS)
    proc.send_signal(signal.SIGTERM)
    assert GuestExit(status=0) == await proc.wait()
    assert set() == cg.pids()
    await cg.remove()
    assert Leftovers((), ()) == rt.leftovers()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("reboot", GuestExit(signal=signal.SIGHUP)),
        ("poweroff", GuestExit(signal=signal.SIGINT)),
        ("crash", GuestExit(signal=signal.SIGSEGV)),
        ("exit0", GuestExit(status=0)),
    ],
)
async def test_guest_ends(how: str, expected: GuestExit) -> None:
    """guest_ends gives the wrapper status the kernel would: SIGHUP, SIGINT, SIGSEGV, exit 0."""
    rt = FakeRuntime()
    _, proc = await _spawn(rt, PLAIN)
    rt.guest_ends("b", how)  # type: ignore[arg-type]
    assert expected == await proc.wait()
    assert rt.guest_of("b") is None


async def test_frozen_guest_acts_on_thaw_but_dies_of_kill_all() -> None:
    """While frozen, TERM and guest ends are held until thaw; kill_all ends frozen guests."""
    rt = FakeRuntime()
    cg, proc = await _spawn(rt, TRAPS)
    await cg.freeze()
    proc.send_signal(signal.SIGTERM)
    rt.guest_ends("a", "crash")
    assert (True, True) == (proc.alive, cg.is_frozen())
    await cg.thaw()
    assert GuestExit(status=0) == await proc.wait()
    _, second = await _spawn(rt, TRAPS)
    await cg.freeze()
    await cg.kill_all()
    assert GuestExit(signal=signal.SIGKILL) == await second.wait()


async def test_cgroup_handles_share_state_and_remove_refuses_populated() -> None:
    """Two handles of one name see one cgroup; remove fails while processes are in it."""
    rt = FakeRuntime()
    cg, _ = await _spawn(rt, PLAIN)
    other = rt.cgroup("vsvt", "b")
    assert cg.members == other.members
    with pytest.raises(RuntimeFailure, match="still has"):
        await other.remove()
    await other.kill_all()
    await other.remove()
    await cg.remove()  # already gone: a no-op
    assert Leftovers((), ()) == rt.leftovers()


@pytest.mark.parametrize("op", ["cgroup.create", "spawn", "kill_all", "remove"])
async def test_fail_next_injects_one_failure(op: str) -> None:
    """fail_next(op) makes exactly the next call of op raise RuntimeFailure."""
    rt = FakeRuntime()
    cg = rt.cgroup("vsvt", "a")
    if op != "cgroup.create":
        cg.create()

    async def call() -> None:
        if op == "cgroup.create":
            cg.create()
        elif op == "spawn":
            await rt.spawn(TRAPS, cg, log_path=None, netns_path=None)
        elif op == "kill_all":
            await cg.kill_all()
        else:
            await cg.remove()

    rt.fail_next(op)  # type: ignore[arg-type]
    with pytest.raises(RuntimeFailure, match=f"injected failure: {op}"):
        await call()
    await call()
    assert ({}, 1) == (rt.pending_failures(), rt.statistics().injected_failures)


async def test_wait_pid_exit_follows_the_init() -> None:
    """wait_pid_exit returns once the init is gone (how adopted guests are watched)."""
    rt = FakeRuntime()
    _, proc = await _spawn(rt, PLAIN)
    done: list[bool] = []
    pid = proc.init_pid
    assert pid is not None

    async def watcher() -> None:
        await rt.wait_pid_exit(pid)
        done.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.testing.wait_all_tasks_blocked()
        assert [] == done
        rt.guest_ends("b", "poweroff")
    assert [True] == done


# ------------------------------------------------------------------------ the model


def _model() -> Model:
    return Model(
        policy=RestartPolicy(max_restarts=2, window=1e9, backoff_base=0.25, backoff_cap=1.0),
        shutdown_timeout=0.5,
    )


def test_model_crash_restart_backoff_then_budget() -> None:
    """Model: crashes restart immediately, then after 0.25 s, then the budget stops them."""
    m = _model()
    m.define("g", Definition(on_crash="restart"))
    m.start("g")
    m.guest_ends("g", "crash")
    assert ("running", "RUNNING") == (m.guests["g"].phase, m.guests["g"].state)
    m.guest_ends("g", "crash")
    assert ("restarting", "CRASHED") == (m.guests["g"].phase, m.guests["g"].reason)
    m.advance(0.25)
    m.guest_ends("g", "crash")
    assert [
        "DEFINED ADDED",
        "STARTED BOOTED",
        "STOPPED CRASHED end=crash delay=0",
        "STARTED BOOTED",
        "STOPPED CRASHED end=crash delay=0.25",
        "STARTED BOOTED",
        "STOPPED CRASHED reason=restart-budget-exhausted end=crash",
    ] == m.events["g"]


def test_model_shutdown_timeout_and_illegal_ops() -> None:
    """Model: a guest without a TERM trap is killed at the deadline; illegal ops raise."""
    m = _model()
    m.define("g", Definition(traps=False))
    with pytest.raises(Illegal):
        m.resume("g")
    m.start("g")
    m.shutdown("g")
    m.advance(0.375)
    assert "stopping" == m.guests["g"].phase
    m.advance(0.125)
    assert ("SHUTOFF", "DESTROYED") == (m.guests["g"].state, m.guests["g"].reason)
    assert (
        event_text("STOPPED", "DESTROYED", reason="shutdown-timeout", end="killed")
        == (m.events["g"][-1])
    )
    with pytest.raises(Illegal) as err:
        m.start("nope")
    assert "missing" == err.value.kind


def test_model_supervisor_restart_adopts_and_loses_how_guests_end() -> None:
    """Model: a restart re-adopts running/paused guests (reason UNKNOWN, no event), reports a
    preserved one as failed, and is refused while a timer is pending; an adopted guest's own
    end counts as a poweroff, an API reboot as a reboot."""
    m = _model()
    m.define("run", Definition(on_poweroff="destroy", on_reboot="restart"))
    m.define("pau", Definition())
    m.define("pre", Definition(on_crash="preserve"))
    m.define("off", Definition())
    for name in ("run", "pau", "pre"):
        m.start(name)
    m.suspend("pau")
    m.guest_ends("pre", "crash")
    m.restart_supervisor()
    view = {n: (g.phase, g.state, g.reason) for n, g in m.guests.items()}
    assert view == {
        "run": ("running", "RUNNING", "UNKNOWN"),
        "pau": ("paused", "PAUSED", "UNKNOWN"),
        "pre": ("shutoff", "SHUTOFF", "FAILED"),
        "off": ("shutoff", "SHUTOFF", "UNKNOWN"),
    }
    assert m.events["pre"][-1] == event_text(
        "STOPPED", "FAILED", reason="ended-while-supervisor-down"
    )
    assert m.events["run"] == ["DEFINED ADDED", "STARTED BOOTED"]
    m.reboot("run")  # asked for: a reboot even though adopted
    assert m.events["run"][-1] == "REBOOT end=reboot delay=0"
    assert not m.guests["run"].adopted
    m.resume("pau")
    m.guest_ends("pau", "reboot")  # by itself: the supervisor cannot tell, a poweroff
    assert m.events["pau"][-2:] == ["SHUTDOWN GUEST end=poweroff", "STOPPED SHUTDOWN end=poweroff"]
    m.define("slow", Definition(traps=False))
    m.start("slow")
    m.shutdown("slow")
    with pytest.raises(Illegal):
        m.restart_supervisor()


def test_model_nic_guest_needs_its_network_and_is_replugged() -> None:
    """Model: a NIC guest's start fails while the network is down; net-destroy unplugs it and
    net-start plugs it back."""
    m = _model()
    m.define_network()
    m.define("g", Definition(nic=True, shares=512))
    m.start("g")
    assert ("SHUTOFF", "FAILED", False) == (
        m.guests["g"].state,
        m.guests["g"].reason,
        m.start_fails("x"),
    )
    m.start_network()
    m.start("g")
    assert (True, 512) == (m.guests["g"].attached, m.guests["g"].shares)
    m.destroy_network()
    assert ("running", False) == (m.guests["g"].phase, m.guests["g"].attached)
    m.start_network()
    assert True is m.guests["g"].attached
    with pytest.raises(Illegal):
        m.start_network()
    assert ["DEFINED", "STARTED", "STOPPED", "STARTED"] == m.net_events
    assert [
        "DEFINED ADDED",
        "STOPPED FAILED reason=start-failed",
        "STARTED BOOTED",
    ] == m.events["g"]


def test_model_automatic_restart_fails_without_the_network() -> None:
    """Model: a crashed NIC guest's scheduled restart fails once its network was destroyed."""
    m = _model()
    m.define_network()
    m.start_network()
    m.define("g", Definition(nic=True, on_crash="restart"))
    m.start("g")
    m.guest_ends("g", "crash")
    m.destroy_network()
    m.guest_ends("g", "crash")
    m.advance(math.inf)
    assert ("shutoff", "FAILED") == (m.guests["g"].phase, m.guests["g"].reason)
    assert "STOPPED FAILED reason=start-failed" == m.events["g"][-1]


def test_model_schedinfo_tunable_only_on_change_and_only_while_running() -> None:
    """Model: a live cpu_shares change is one TUNABLE; the same value none; stopped: refused."""
    m = _model()
    m.define("g", Definition(shares=1024))
    with pytest.raises(Illegal):
        m.set_shares("g", 512)
    m.start("g")
    m.set_shares("g", 1024)
    m.set_shares("g", 512)
    m.set_shares("g", 512)
    m.destroy("g")
    m.start("g")
    assert 1024 == m.guests["g"].shares
    assert ["STARTED BOOTED", "TUNABLE cputune.shares=512", "STOPPED DESTROYED end=killed"] == (
        m.events["g"][1:4]
    )


def test_tunable_events_compare_with_their_parameters() -> None:
    """A TUNABLE event's text names every changed parameter (and so catches extra ones)."""
    event = Event(
        seq=1,
        time=0.0,
        kind="domain",
        name="g",
        type="TUNABLE",
        data=(("cputune.vcpu_quota", "-1"), ("cputune.shares", "512")),
    )
    assert "TUNABLE cputune.shares=512 cputune.vcpu_quota=-1" == text_of(event)


def test_model_redefinition_of_an_active_guest_waits_for_its_next_fresh_boot() -> None:
    """Model: a definition stored while the guest runs changes nothing until it stops (its own
    policies still decide); a reboot keeps the running one; a stop or a scheduled restart brings
    the stored one in."""
    m = _model()
    m.define("g", Definition(on_reboot="restart", on_poweroff="restart"))
    m.start("g")
    m.define("g", Definition(on_reboot="destroy", on_poweroff="destroy"))
    m.guest_ends("g", "reboot")  # the running definition's on_reboot=restart
    m.advance(math.inf)
    assert (m.guests["g"].phase, m.guests["g"].definition.on_reboot) == ("running", "restart")
    m.guest_ends("g", "poweroff")  # on_poweroff=restart: a fresh boot, with the stored one
    m.advance(math.inf)
    assert (m.guests["g"].phase, m.guests["g"].definition.on_reboot) == ("running", "destroy")
    assert m.guests["g"].pending is None
    m.define("g", Definition(traps=False))
    m.destroy("g")
    assert (m.guests["g"].definition.traps, m.guests["g"].pending) == (False, None)
    assert m.events["g"].count("DEFINED UPDATED") == 2


def test_network_events_across_a_supervisor_restart() -> None:
    """A network taken over by a successor has no event of its own: the log refuses a second
    STARTED without a STOPPED, and the model expects none."""

    def net(seq: int, type_: str) -> Event:
        return Event(seq=seq, time=0.0, kind="network", name="n0", type=type_)

    log = EventLog()
    log.add(net(1, "DEFINED"))
    log.add(net(2, "STARTED"))
    with pytest.raises(AssertionError, match="network event"):
        log.add(net(3, "STARTED"))
    m = _model()
    m.define_network()
    m.start_network()
    m.restart_supervisor()
    assert ["DEFINED", "STARTED"] == m.net_events


# ------------------------------------------------------------------------ the harness


def test_stress_fake_runtime_passes() -> None:
    """1000 random steps on the fake runtime agree with the model and leave nothing behind."""
    out = io.StringIO()
    result = run_stress_detailed(7, 1000, 4, "fake", out=out)
    assert (True, "") == (result.ok, out.getvalue())
    assert result.steps >= 1000
    assert result.ops.get("guest", 0) > 10
    assert result.ops.get("start", 0) > 30


def test_cli_parser_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """`vsv stress` parses its options; a passing run prints its summary and exits 0."""
    parser = argparse.ArgumentParser()
    stress_cli.add_stress_parser(parser.add_subparsers())
    args = parser.parse_args(["stress", "--seed", "5", "--steps", "150", "--guests", "3"])
    assert (5, 150, 3, "fake") == (args.seed, args.steps, args.guests, args.runtime)
    assert 0 == args.func(args)
    assert "stress passed: seed 5" in capsys.readouterr().out


def test_cli_still_accepts_strict_from_old_replay_lines() -> None:
    """`--strict` (every run is strict now) parses, and is not listed in the help."""
    parser = argparse.ArgumentParser()
    stress = stress_cli.add_stress_parser(parser.add_subparsers())
    args = parser.parse_args(["stress", "--seed", "5", "--strict"])
    assert (5, True, False) == (args.seed, args.strict, "--strict" in stress.format_help())


@pytest.mark.root
def test_stress_real_runtime_passes() -> None:
    """Real guests, a NAT network in a sandbox netns and schedinfo agree with the model."""
    out = io.StringIO()
    result = run_stress_detailed(1, 200, 4, "real", out=out)
    assert (True, "") == (result.ok, out.getvalue())
    assert result.steps >= 200
    for op in ("net-start", "net-destroy", "schedinfo", "start-without-network", "guest"):
        assert (op, True) == (op, result.ops.get(op, 0) > 0)


def test_a_broken_supervisor_fails_with_a_replay_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor that misreports a state is caught, and the run prints how to replay it."""
    from supervisor.runner import GuestRunner

    real_status = GuestRunner.status

    def lying_status(self: GuestRunner) -> object:
        status = real_status(self)
        return attrs.evolve(status, reason="SHUTDOWN") if status.state == "PAUSED" else status

    monkeypatch.setattr(GuestRunner, "status", lying_status)
    out = io.StringIO()
    result = run_stress_detailed(3, 400, 4, "fake", shrink=False, out=out)
    assert (False, True) == (
        result.ok,
        "replay with: vsv stress --seed 3 --steps 400 --guests 4 --runtime fake" in out.getvalue(),
    )
