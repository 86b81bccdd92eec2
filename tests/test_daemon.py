"""The supervisor with real guests: lifecycle operations and their exact event sequences."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from supervisor.bus import Gap, PrepareFailed, Subscription
from supervisor.daemon import Supervisor
from supervisor.errors import ConflictError, RuntimeFailure
from supervisor.events import Event
from supervisor.guest import procs
from supervisor.guest.cgroups import GuestCgroup, detect_layout, find_leftovers
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.hooks import GuestContext
from supervisor.lifecycle import RestartPolicy
from supervisor.model import Domain, Filesystem, MemTune, OsSpec

pytestmark = pytest.mark.root

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A busybox root of the test's own (guests write marker files into its /tmp)."""
    return Path(prepare_busybox_root(str(tmp_path / "rootfs")))


@pytest.fixture
async def sup(tmp_path: Path, prefix: str, nursery: trio.Nursery) -> AsyncIterator[Supervisor]:
    """A running supervisor with a small, fast restart policy; destroys its guests after."""
    s = Supervisor(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        prefix=prefix,
        shutdown_timeout=5.0,
        restart_policy=RestartPolicy(max_restarts=3, window=60, backoff_base=0.02, backoff_cap=0.1),
    )
    await nursery.start(s.run)
    try:
        yield s
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(20):
            for g in list(s.guests.values()):
                if g.busy or g.cgroup is not None:
                    try:
                        await s.destroy_domain(g.domain.name)
                    except Exception:
                        pass
        leftovers = find_leftovers(detect_layout(), prefix)
        assert leftovers == []


def guest(name: str, root: Path, script: str = LOOP, **changes: Any) -> Domain:
    """A vserver-dialect guest on the busybox root whose init is ``sh -c script``."""
    d = Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        privnet=True,
    )
    return attrs.evolve(d, **changes) if changes else d


class Recorder:
    """Collects the bus's events for assertions on exact sequences."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[Event] = []

    def drained(self) -> list[Event]:
        """Every event so far (what arrived since the last look included)."""
        self._drain()
        return self.events

    def _drain(self) -> None:
        while True:
            try:
                item = self.sub.receive_nowait()
            except trio.WouldBlock:
                return
            assert not isinstance(item, Gap), item
            self.events.append(item)

    def seq(self, name: str) -> list[str]:
        """The ``TYPE DETAIL`` strings of ``name``'s events so far."""
        self._drain()
        return [
            f"{e.type} {e.detail}" if e.detail else e.type for e in self.events if e.name == name
        ]

    async def wait_for(self, name: str, text: str, *, count: int = 1, timeout: float = 15) -> None:
        """Wait until ``name`` has had ``count`` events reading ``text``."""
        with trio.fail_after(timeout):
            while self.seq(name).count(text) < count:
                await trio.sleep(0.01)

    def last(self, name: str, text: str) -> Event:
        self._drain()
        return [e for e in self.events if e.name == name and e.line().endswith(text)][-1]


@pytest.fixture
async def rec(sup: Supervisor) -> AsyncIterator[Recorder]:
    async with sup.bus.subscribe("test", buffer=1_000_000) as sub:
        yield Recorder(sub)


async def test_guest_is_pid1_isolated_in_its_cgroup_with_limits(
    sup: Supervisor, rec: Recorder, root: Path, prefix: str
) -> None:
    """init is PID 1 of its own pid ns, sees no host process, has its hostname, cgroup, limits."""
    script = f"hostname > /tmp/hostname; ls /proc > /tmp/procs; sleep 1000 & {LOOP}"
    d = guest(
        "g1",
        root,
        script,
        hostname="inner-g1",
        memtune=MemTune(hard_limit_kib=64 * 1024),
        pids_limit=64,
    )
    await sup.define_domain(d)
    status = await sup.start_domain("g1")
    assert status.state == "RUNNING"
    init = status.init_pid
    assert init is not None
    assert procs.nspid(init)[-1] == 1
    with trio.fail_after(5):
        while not (root / "tmp" / "procs").exists():
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    visible = {int(p) for p in (root / "tmp" / "procs").read_text().split() if p.isdigit()}
    assert 1 in visible
    assert len(visible) <= 4  # init, ls, perhaps sleep: none of the host's hundreds
    assert (root / "tmp" / "hostname").read_text().strip() == "inner-g1"
    slot = sup.guests["g1"]
    assert isinstance(slot.cgroup, GuestCgroup)
    children = procs.children_of(init)  # first: a child forked later is not in the list
    members = slot.cgroup.pids()
    assert init in members
    for child in children:
        assert child in members
    memory_dir = slot.cgroup.controller_dir("memory")
    assert memory_dir is not None
    layout = slot.cgroup.layout
    limit_file = "memory.max" if "memory" in layout.v2_controllers else "memory.limit_in_bytes"
    assert Path(memory_dir, limit_file).read_text().strip() == str(64 << 20)
    pids_dir = slot.cgroup.controller_dir("pids")
    assert pids_dir is not None
    assert Path(pids_dir, "pids.max").read_text().strip() == "64"
    await sup.shutdown_domain("g1")
    await rec.wait_for("g1", "STOPPED SHUTDOWN")
    assert rec.seq("g1") == ["DEFINED ADDED", "STARTED BOOTED", "STOPPED SHUTDOWN"]


async def test_shutdown_that_times_out_escalates(
    sup: Supervisor, rec: Recorder, root: Path
) -> None:
    """A guest ignoring the shutdown signal is killed after the timeout, reported as such."""
    await sup.define_domain(guest("g2", root, "while :; do sleep 0.05; done"))
    await sup.start_domain("g2")
    await sup.shutdown_domain("g2", timeout=0.3)
    await rec.wait_for("g2", "STOPPED DESTROYED")
    assert rec.seq("g2") == ["DEFINED ADDED", "STARTED BOOTED", "STOPPED DESTROYED"]
    assert rec.last("g2", "STOPPED DESTROYED").get("reason") == "shutdown-timeout"
    assert sup.domain_status("g2").state == "SHUTOFF"


async def test_destroy_kills_double_forked_daemons(
    sup: Supervisor, rec: Recorder, root: Path
) -> None:
    """destroy kills every process of the guest, also daemons that double-forked away."""
    script = f"(sleep 1000 &) ; setsid sleep 999 & {LOOP}"
    await sup.define_domain(guest("g3", root, script))
    await sup.start_domain("g3")
    slot = sup.guests["g3"]
    assert slot.cgroup is not None
    with trio.fail_after(5):
        while len(slot.cgroup.pids()) < 4:
            await trio.sleep(0.01)
    pids = slot.cgroup.pids()
    await sup.destroy_domain("g3")
    assert rec.seq("g3") == ["DEFINED ADDED", "STARTED BOOTED", "STOPPED DESTROYED"]
    assert [p for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)] == []


def _not_zombie(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return False


async def test_in_guest_reboot_restarts_in_place(
    sup: Supervisor, rec: Recorder, root: Path
) -> None:
    """`reboot -f` inside the guest gives REBOOT and a new init; the guest stays RUNNING."""
    script = f"if [ -e /tmp/booted ]; then {LOOP}; else touch /tmp/booted; reboot -f; fi"
    await sup.define_domain(guest("g4", root, script))
    first = await sup.start_domain("g4")
    await rec.wait_for("g4", "REBOOT")
    with trio.fail_after(5):
        while sup.domain_status("g4").init_pid in (None, first.init_pid):
            await trio.sleep(0.01)
    assert sup.domain_status("g4").state == "RUNNING"
    await trio.sleep(0.2)
    assert rec.seq("g4") == ["DEFINED ADDED", "STARTED BOOTED", "REBOOT"]
    await sup.shutdown_domain("g4")
    await rec.wait_for("g4", "STOPPED SHUTDOWN")


async def test_in_guest_poweroff_stops(sup: Supervisor, rec: Recorder, root: Path) -> None:
    """`poweroff -f` inside the guest gives SHUTDOWN GUEST then STOPPED SHUTDOWN."""
    await sup.define_domain(guest("g5", root, "sleep 0.2; poweroff -f"))
    await sup.start_domain("g5")
    await rec.wait_for("g5", "STOPPED SHUTDOWN")
    assert rec.seq("g5") == [
        "DEFINED ADDED",
        "STARTED BOOTED",
        "SHUTDOWN GUEST",
        "STOPPED SHUTDOWN",
    ]
    assert rec.last("g5", "STOPPED SHUTDOWN").get("signal") == "SIGINT"
    assert sup.domain_status("g5").state == "SHUTOFF"


def _segfaulting(name: str, marker: Path | None = None, **changes: Any) -> Domain:
    """A guest on the host root (read-only) whose init is a Python that segfaults.

    The kernel drops signals sent to a namespace's init that has no handler, so a crash by
    SIGSEGV has to be a real fault. With ``marker``, only the first boot crashes.
    """
    code = "import ctypes, os, time\n"
    if marker is not None:
        code += (
            f"if os.path.exists({str(marker)!r}):\n    time.sleep(1000)\n"
            f"open({str(marker)!r}, 'w').close()\n"
        )
    code += "time.sleep(0.1)\nctypes.string_at(0)\n"
    # the interpreter itself, not a venv link: the venv may live under /tmp, which the guest
    # sees as its own empty tmpfs; and shown to the guest by a bind, since it may live where a
    # guest sees nothing of the host's (pyenv's under /root)
    prefix = os.path.realpath(sys.base_prefix)
    fs: tuple[Filesystem, ...] = (Filesystem(source=prefix, target=prefix, readonly=True),)
    if marker is not None:
        fs += (Filesystem(source=str(marker.parent), target=str(marker.parent)),)
    d = Domain(
        name=name,
        type="vserver",
        os=OsSpec(init=os.path.realpath(sys.executable), initargs=("-I", "-c", code)),
        filesystems=fs,
        privnet=True,
        on_crash="restart",
    )
    return attrs.evolve(d, **changes) if changes else d


async def test_crash_with_restart(sup: Supervisor, rec: Recorder, tmp_path: Path) -> None:
    """init killed by SIGSEGV with on_crash=restart: STOPPED CRASHED, then STARTED BOOTED."""
    marker_dir = tmp_path / "marker"
    marker_dir.mkdir()
    await sup.define_domain(_segfaulting("g6", marker_dir / "crashed"))
    await sup.start_domain("g6")
    await rec.wait_for("g6", "STARTED BOOTED", count=2)
    assert rec.seq("g6") == ["DEFINED ADDED", "STARTED BOOTED", "STOPPED CRASHED", "STARTED BOOTED"]
    assert rec.last("g6", "STOPPED CRASHED").get("signal") == "SIGSEGV"
    assert sup.domain_status("g6").state == "RUNNING"


async def test_crash_loop_hits_restart_budget(sup: Supervisor, rec: Recorder) -> None:
    """A guest that always crashes is restarted max_restarts times, then left SHUTOFF/CRASHED."""
    await sup.define_domain(_segfaulting("g7"))
    await sup.start_domain("g7")
    with trio.fail_after(20):
        while not any(
            e.name == "g7" and e.get("reason") == "restart-budget-exhausted" for e in rec.drained()
        ):
            await trio.sleep(0.02)
    expected = ["DEFINED ADDED", "STARTED BOOTED"]
    expected += ["STOPPED CRASHED", "STARTED BOOTED"] * 3
    expected += ["STOPPED CRASHED"]
    assert rec.seq("g7") == expected
    status = sup.domain_status("g7")
    assert (status.state, status.reason) == ("SHUTOFF", "CRASHED")


async def test_suspend_and_resume(sup: Supervisor, rec: Recorder, root: Path) -> None:
    """suspend freezes every process (a counter stops), resume lets it run again."""
    script = "i=0; trap 'exit 0' TERM; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.02; done"
    await sup.define_domain(guest("g8", root, script))
    await sup.start_domain("g8")
    counter = root / "tmp" / "n"

    def raw() -> str:
        # may be empty: the guest can be frozen between echo's truncate and its write
        return counter.read_text().strip() if counter.exists() else ""

    with trio.fail_after(5):
        while not raw().isdigit():
            await trio.sleep(0.01)
    await sup.suspend_domain("g8")
    assert sup.domain_status("g8").state == "PAUSED"
    frozen_at = raw()
    await trio.sleep(0.3)
    assert raw() == frozen_at
    await sup.resume_domain("g8")
    before = int(frozen_at) if frozen_at.isdigit() else 0
    with trio.fail_after(5):
        while not (raw().isdigit() and int(raw()) > before):
            await trio.sleep(0.01)
    assert rec.seq("g8") == [
        "DEFINED ADDED",
        "STARTED BOOTED",
        "SUSPENDED PAUSED",
        "RESUMED UNPAUSED",
    ]


async def test_failing_prepare_hook_aborts_and_releases(
    sup: Supervisor, rec: Recorder, root: Path
) -> None:
    """A failing prepare aborts the start, releases what was prepared, and no guest runs."""
    calls: list[str] = []

    async def ok_prepare(ctx: GuestContext) -> None:
        calls.append(f"prepare-ok {ctx.domain.name}")

    async def ok_release(ctx: GuestContext) -> None:
        calls.append(f"release-ok {ctx.domain.name}")

    async def bad_prepare(ctx: GuestContext) -> None:
        raise RuntimeFailure("no bridge for you")

    sup.bus.add_hooks("ok", prepare=ok_prepare, release=ok_release, order=1)
    sup.bus.add_hooks("bad", prepare=bad_prepare, order=2)
    try:
        await sup.define_domain(guest("g9", root, f"touch /tmp/ran; {LOOP}"))
        with pytest.raises(PrepareFailed, match="no bridge for you"):
            await sup.start_domain("g9")
    finally:
        sup.bus.remove_hooks("ok")
        sup.bus.remove_hooks("bad")
    assert calls == ["prepare-ok g9", "release-ok g9"]
    assert rec.seq("g9") == ["DEFINED ADDED", "STOPPED FAILED"]
    assert not (root / "tmp" / "ran").exists()
    assert sup.guests["g9"].cgroup is None
    assert sup.domain_status("g9").state == "SHUTOFF"


async def test_define_refuses_duplicate_id_and_uuid(sup: Supervisor, root: Path) -> None:
    """define refuses a second domain with the same context id or uuid, keeping the first."""
    first = await sup.define_domain(guest("a1", root, id=300))
    with pytest.raises(ConflictError, match="context id 300"):
        await sup.define_domain(guest("a2", root, id=300))
    with pytest.raises(ConflictError, match="uuid"):
        await sup.define_domain(guest("a3", root, id=301, uuid=first.uuid))
    assert sorted(sup.guests) == ["a1"]
    assert sorted(p.name for p in (sup.state_dir / "domains").iterdir()) == ["a1.xml"]


async def test_fifty_guests_concurrently(sup: Supervisor, rec: Recorder, root: Path) -> None:
    """50 guests started and stopped concurrently: every event present, in order, no leak."""
    names = [f"c{i:02d}" for i in range(50)]
    # each guest says when its TERM trap is set: a namespace's init ignores a signal it has no
    # handler for yet, and a shutdown that early would (rightly) end in a kill
    ready = "trap 'exit 0' TERM; touch /tmp/ready-$(hostname); while :; do sleep 0.05; done"
    for n in names:
        await sup.define_domain(guest(n, root, ready))
    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(sup.start_domain, n)
    assert all(sup.domain_status(n).state == "RUNNING" for n in names)
    with trio.fail_after(20):
        while not all((root / "tmp" / f"ready-{n}").exists() for n in names):
            await trio.sleep(0.02)
    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(sup.shutdown_domain, n)
    for n in names:
        await rec.wait_for(n, "STOPPED SHUTDOWN", timeout=30)
    for n in names:
        assert rec.seq(n) == ["DEFINED ADDED", "STARTED BOOTED", "STOPPED SHUTDOWN"]
    seqs = [e.seq for e in rec.events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert all(not sup.guests[n].busy for n in names)
    assert find_leftovers(detect_layout(), sup.prefix) == []


def test_os_has_pidfd() -> None:
    """Re-adoption relies on pidfd_open (Linux 5.3+, Python 3.9+)."""
    fd = os.pidfd_open(os.getpid())
    os.close(fd)


async def test_destroy_while_suspended(sup: Supervisor, rec: Recorder, root: Path) -> None:
    """A frozen guest is destroyed too (on a hybrid machine the freezer must let it die)."""
    await sup.define_domain(guest("s1", root))
    await sup.start_domain("s1")
    await sup.suspend_domain("s1")
    with trio.fail_after(10):
        await sup.destroy_domain("s1")
    assert rec.seq("s1") == [
        "DEFINED ADDED",
        "STARTED BOOTED",
        "SUSPENDED PAUSED",
        "STOPPED DESTROYED",
    ]
    assert sup.guests["s1"].cgroup is None


async def test_redefine_running_applies_at_next_start(
    sup: Supervisor, rec: Recorder, root: Path
) -> None:
    """A definition changed while the guest runs is stored and used from its next start."""
    script = f"hostname > /tmp/h; {LOOP}"
    await sup.define_domain(guest("r1", root, script, hostname="old-name"))
    await sup.start_domain("r1")
    await sup.define_domain(guest("r1", root, script, hostname="new-name"))
    assert sup.get_domain("r1").hostname == "old-name"  # the running guest keeps its own
    await sup.destroy_domain("r1")
    assert sup.get_domain("r1").hostname == "new-name"
    assert sup.domain_status("r1").reason == "DESTROYED"  # the stop's reason is kept
    (root / "tmp" / "h").unlink()
    await sup.start_domain("r1")
    h = root / "tmp" / "h"
    with trio.fail_after(5):
        while not (h.exists() and h.read_text().strip()):
            await trio.sleep(0.01)
    assert h.read_text().strip() == "new-name"


async def test_a_chatty_guests_log_is_cut_back(
    tmp_path: Path, prefix: str, nursery: trio.Nursery, root: Path
) -> None:
    """A guest writing without end does not fill the run dir: past the cap, its log's newest
    half (whole lines) moves to NAME.log.1, the log starts again empty and keeps being written."""
    s = Supervisor(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        prefix=prefix,
        log_max_bytes=16 << 10,
        log_check_interval=0.05,
    )
    await nursery.start(s.run)
    script = (
        "while :; do for i in 1 2 3 4 5 6 7 8 9 10; do "
        'echo "<$i:................................................>"; done; sleep 0.01; done'
    )
    await s.define_domain(guest("chatty", root, script))
    try:
        await s.start_domain("chatty")
        log = tmp_path / "run" / "logs" / "chatty.log"
        rotated = log.with_name("chatty.log.1")
        with trio.fail_after(20):
            while not rotated.exists():
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        assert 0 < log.stat().st_size <= (16 + 8) << 10
        kept = rotated.read_text().splitlines()
        assert 0 < len(rotated.read_bytes()) <= 8 << 10
        assert all(re.fullmatch(r"<\d+:\.{48}>", line) for line in kept), kept[:3]
        assert all(re.fullmatch(r"<\d+:\.{48}>", line) for line in log.read_text().splitlines())
    finally:
        await s.destroy_domain("chatty")
