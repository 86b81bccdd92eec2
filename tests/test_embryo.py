"""Starting guests from embryos: spares, the two phases around G, failures in each.

tests/test_spawn.py covers what a start gives the guest; this file covers how embryos get
there: the two-step start (begin_spawn, then finish once the cgroup exists), abort, the pool of
fork servers and spare embryos (a SpawnPool, open for each test), the mount table taken at
activation rather than at birth, first-phase failures, joining a named netns at ``G``, the /dev
made by mknod, and kill_all(wait=False) on a guest whose init is the supervisor's own child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor import nsutil
from supervisor.errors import RuntimeFailure
from supervisor.guest import forkserver, procs, spawn
from supervisor.guest.cgroups import GuestCgroup, detect_layout
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import GuestProcess, PendingStart, SpawnPool
from supervisor.model import Domain, Filesystem
from supervisor.runtime import GuestExit
from tests.test_spawn import _dom, _finish, _guest_cgroup, _ppid

# -- spare_embryos(): parsing $VSV_SPARE_EMBRYOS (pure, no root) ---------------------------------


@given(st.integers(min_value=0, max_value=64))
def test_spare_embryos_accepts_0_to_64(n: int) -> None:
    """Any whole number 0-64 (leading zeros too) is the number of spares per kind."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSV_SPARE_EMBRYOS", str(n))
        assert n == spawn.spare_embryos()
        mp.setenv("VSV_SPARE_EMBRYOS", "0" + str(n))
        assert n == spawn.spare_embryos()


@given(
    st.one_of(
        st.integers(min_value=65, max_value=10**6).map(str),
        st.integers(max_value=-1).map(str),
        st.text(alphabet="0123456789 +-.xe_", max_size=6).filter(
            lambda s: not (s.isdigit() and int(s) <= 64)
        ),
    )
)
def test_spare_embryos_rejects_others(raw: str) -> None:
    """Anything else (too big, negative, empty, not a number) is an error naming the variable."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSV_SPARE_EMBRYOS", raw)
        with pytest.raises(RuntimeFailure, match=re.escape(f"VSV_SPARE_EMBRYOS={raw!r}")):
            spawn.spare_embryos()


def test_spare_embryos_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable the default number of spares is kept."""
    monkeypatch.delenv("VSV_SPARE_EMBRYOS", raising=False)
    assert spawn.SPARE_EMBRYOS == spawn.spare_embryos()


@pytest.mark.parametrize("raw", ["²", "١٢"])
def test_spare_embryos_rejects_non_ascii_digits(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Digits other than ASCII 0-9 ('²', Arabic-Indic) are an error naming the variable."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", raw)
    with pytest.raises(RuntimeFailure, match="VSV_SPARE_EMBRYOS"):
        spawn.spare_embryos()


# -- the real kernel -----------------------------------------------------------------------------

#: the kind of embryo a domain with a private network and no interfaces is started from
PRIVNET_FLAGS = spawn.DEFAULT_EMBRYO_FLAGS


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox root dir shared by this module's tests."""
    return prepare_busybox_root(str(tmp_path_factory.mktemp("rootfs") / "bb"))


@pytest.fixture
async def pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SpawnPool]:
    """Every test here starts from embryos of a pool of its own, opened with the default number
    of spares; closing it kills the spares the test left (maybe killed by it) and the servers."""
    monkeypatch.delenv("VSV_SPARE_EMBRYOS", raising=False)
    async with SpawnPool() as p:
        yield p


@pytest.fixture
async def cgroup(prefix: str, pool: SpawnPool) -> AsyncIterator[GuestCgroup]:
    """The guest's cgroup, emptied and removed afterwards whatever happened."""
    async with _guest_cgroup(prefix) as cg:
        yield cg


@contextlib.asynccontextmanager
async def _pending(pool: SpawnPool, dom: Domain, **kw: object) -> AsyncIterator[PendingStart]:
    """begin_spawn, and abort at the end unless the test finished (or aborted) the start."""
    pending = await spawn.begin_spawn(pool, dom, **kw)  # type: ignore[arg-type]
    try:
        yield pending
    finally:
        with trio.CancelScope(shield=True):
            await pending.abort()


def _gone(pid: int) -> bool:
    """Whether ``pid`` (a child of ours) is reaped: no /proc entry and nothing to wait for."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not os.path.exists(f"/proc/{pid}")
    return False


def _state(pid: int) -> str:
    """The process state letter of ``pid`` (R, S, T, Z, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.asynccontextmanager
async def _privnet_guest(
    pool: SpawnPool, busybox_root: str, cgroup: GuestCgroup
) -> AsyncIterator[GuestProcess]:
    """A started guest with a network namespace of its own, killed (SIGKILL) on the way out."""
    dom = _dom(busybox_root, "exec sleep 1000", privnet=True)
    g = await spawn.spawn_init(pool, dom, cgroup)
    try:
        yield g
    finally:
        assert GuestExit(signal=signal.SIGKILL) == await _stop(cgroup, g)


async def _spares(pool: SpawnPool, flags: int) -> list[int]:
    """Top the pool of this kind up and wait until every spare is born; their pids."""
    pool.top_up(flags)
    pids = []
    for e in pool.spares[flags]:
        pids.append((await e.born()).pid)
    return pids


async def _log_until(log: Path, last: str) -> list[str]:
    """The lines of a guest's log once it wrote the line ``last``."""
    lines: list[str] = []
    with trio.fail_after(5):
        while last not in lines:
            await trio.sleep(0.005)
            lines = log.read_text().splitlines() if log.exists() else []
    return lines


async def _stop(cg: GuestCgroup, g: GuestProcess) -> GuestExit:
    """Kill every process of the guest (also when the test is cancelled); how init ended."""
    with trio.CancelScope(shield=True):
        await cg.kill_all()
        await _finish(g)
    return await _finish(g)  # at once: init is reaped already


@pytest.mark.root
async def test_begin_then_cgroup_then_finish(
    busybox_root: str, prefix: str, pool: SpawnPool
) -> None:
    """A start begun before its cgroup exists finishes in it: init is PID 1, alone in the
    cgroup, the embryo itself, and our own child."""
    cg = GuestCgroup(detect_layout(), prefix, "g")
    async with _pending(pool, _dom(busybox_root, "exec sleep 1000")) as pending:
        assert pending.child is not None
        embryo_pid = pending.child.pid
        assert [] == [p for p in cg.paths() if os.path.exists(p)]
        async with _guest_cgroup(prefix) as cg:
            g = await pending.finish(cg)
            try:
                assert g.init_pid is not None
                assert embryo_pid == g.init_pid
                assert g.init_pid == g.wrapper_pid
                assert 1 == procs.nspid(g.init_pid)[-1]
                assert procs.ns_inode(os.getpid(), "pid") != procs.ns_inode(g.init_pid, "pid")
                assert {g.init_pid} == cg.pids()
                assert os.getpid() == _ppid(g.init_pid)
                # the same file; its path is the guest's, as pivot_root left no host tree above
                exe = os.stat(f"/proc/{g.init_pid}/exe")
                host_file = os.stat(f"{busybox_root}/bin/sleep")
                assert (host_file.st_dev, host_file.st_ino) == (exe.st_dev, exe.st_ino)
            finally:
                assert GuestExit(signal=signal.SIGKILL) == await _stop(cg, g)


@pytest.mark.root
async def test_embryo_yields_until_go_and_init_gets_our_priority(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """Until G an embryo runs at the lowest priority (it must not preempt the supervisor);
    the guest's init then has the supervisor's nice value, not the embryo's."""
    pending = await spawn.begin_spawn(pool, _dom(busybox_root, "exec sleep 1000"))
    assert pending.child is not None
    pid = pending.child.pid
    try:
        with trio.fail_after(5):
            while os.getpriority(os.PRIO_PROCESS, pid) != forkserver.EMBRYO_NICE:
                await trio.sleep(0.001)
        g = await pending.finish(cgroup)
    except BaseException:
        await pending.abort()
        raise
    try:
        assert g.init_pid == pid
        assert os.getpriority(os.PRIO_PROCESS, 0) == os.getpriority(os.PRIO_PROCESS, pid)
    finally:
        assert GuestExit(signal=signal.SIGKILL) == await _stop(cgroup, g)


@pytest.mark.root
@pytest.mark.parametrize("settle", [0.0, 0.05], ids=["at-once", "after-phase-1"])
async def test_abort_kills_and_reaps_the_embryo(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, settle: float
) -> None:
    """abort() before finish kills and reaps the embryo and puts nothing in any cgroup."""
    pending = await spawn.begin_spawn(pool, _dom(busybox_root, "exec sleep 1000"))
    assert pending.child is not None
    child = pending.child
    try:
        assert child.poll() is None
        await trio.sleep(settle)
        # still where the fork server made it: in our own cgroups, not the guest's
        own = Path("/proc/self/cgroup").read_text()
        assert own == Path(f"/proc/{child.pid}/cgroup").read_text()
    finally:
        await pending.abort()
    assert child.returncode is not None
    assert _gone(child.pid)
    assert set() == cgroup.pids()


@pytest.mark.root
async def test_pool_is_topped_up_after_a_start(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a start takes an embryo, the pool of that kind is refilled to spare_embryos()
    once the loop runs; the spares are our children, each PID 1 of a pid namespace of its own."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "3")
    pool.discard_spares()
    async with _privnet_guest(pool, busybox_root, cgroup) as g:
        spares = pool.spares[PRIVNET_FLAGS]
        with trio.fail_after(2):
            while len(spares) < 3:
                await trio.lowlevel.checkpoint()
        assert 3 == len(spares)
        pids = [(await e.born()).pid for e in spares]
        assert g.init_pid not in pids
        assert [os.getpid()] * 3 == [_ppid(p) for p in pids]
        assert [1] * 3 == [procs.nspid(p)[-1] for p in pids]
        assert 3 == len({procs.ns_inode(p, "pid") for p in pids})
        assert set() == {p for p in pids if p in cgroup.pids()}


@pytest.mark.root
async def test_killed_spare_is_skipped(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare killed by hand is reaped and skipped: the start uses the next spare."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "2")
    pool.discard_spares()
    first, second = await _spares(pool, PRIVNET_FLAGS)
    os.kill(first, signal.SIGKILL)
    with trio.fail_after(5):
        await procs.wait_pid_exit(first)
    async with _privnet_guest(pool, busybox_root, cgroup) as g:
        assert second == g.init_pid
        assert _gone(first)
        assert {second} == cgroup.pids()


@pytest.mark.root
async def test_spares_lost_with_their_fork_server(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spares asked of fork servers that die before cloning them are skipped: the start makes
    a fresh embryo (on restarted servers) and succeeds."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "2")
    pool.discard_spares()
    servers = [pool._server_at(i) for i in range(len(pool.servers))]
    for server in servers:
        os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        with trio.fail_after(5):  # stopped for real, not still finishing an earlier request
            while not all(_state(s.proc.pid) == "T" for s in servers):
                await trio.sleep(0.001)
        pool.top_up(PRIVNET_FLAGS)  # queued in the stopped servers' sockets
        lost = list(pool.spares[PRIVNET_FLAGS])
        assert 2 == len(lost)
    finally:
        for server in servers:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    async with _privnet_guest(pool, busybox_root, cgroup) as g:
        assert g.init_pid is not None
        assert {g.init_pid} == cgroup.pids()
        assert [None, None] == [e.child for e in lost]  # never born, and dropped
        assert not set(map(id, lost)) & set(map(id, pool.spares[PRIVNET_FLAGS]))


@pytest.mark.root
async def test_all_spares_killed_starts_on_demand(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every spare died, the start makes an embryo on demand and succeeds."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "2")
    pool.discard_spares()
    dead = await _spares(pool, PRIVNET_FLAGS)
    for pid in dead:
        os.kill(pid, signal.SIGKILL)
    with trio.fail_after(5):
        for pid in dead:
            await procs.wait_pid_exit(pid)
    async with _privnet_guest(pool, busybox_root, cgroup) as g:
        assert g.init_pid is not None
        assert g.init_pid not in dead
        assert 1 == procs.nspid(g.init_pid)[-1]
        assert [True, True] == [_gone(p) for p in dead]


@pytest.mark.root
async def test_no_spares_starts_on_demand(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VSV_SPARE_EMBRYOS=0 keeps no spare, yet each start gets an embryo made for it."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "0")
    pool.discard_spares()
    async with _privnet_guest(pool, busybox_root, cgroup) as g:
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        assert [] == pool.spares[PRIVNET_FLAGS]
        assert g.init_pid is not None
        assert {g.init_pid} == cgroup.pids()


@pytest.mark.root
@pytest.mark.parametrize("raw", ["x", "100"])
async def test_invalid_spare_count(
    busybox_root: str,
    cgroup: GuestCgroup,
    pool: SpawnPool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    raw: str,
) -> None:
    """An invalid VSV_SPARE_EMBRYOS fails the pool's start naming the variable (and the pool
    it began is closed again: no server or spare is left); a guest start from an open pool only
    logs it (the top-up runs after the start) and still succeeds."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", raw)
    other = SpawnPool()
    with pytest.raises(RuntimeFailure, match=f"VSV_SPARE_EMBRYOS={raw!r}"):
        async with other:
            raise AssertionError("the pool opened")
    assert (False, [], {}) == (other.is_open, other.servers, other.spares)
    with pytest.raises(RuntimeFailure, match=f"VSV_SPARE_EMBRYOS={raw!r}"):
        pool.top_up(PRIVNET_FLAGS)
    with caplog.at_level(logging.WARNING, logger="supervisor.guest.spawn"):
        dom = _dom(busybox_root, "exec sleep 1000", privnet=True)
        g = await spawn.spawn_init(pool, dom, cgroup)
        try:
            assert g.init_pid is not None
            with trio.fail_after(2):
                while not caplog.records:
                    await trio.sleep(0.001)
            assert f"spare embryos: VSV_SPARE_EMBRYOS={raw!r}" in caplog.records[0].getMessage()
        finally:
            assert GuestExit(signal=signal.SIGKILL) == await _stop(cgroup, g)


@pytest.mark.root
async def test_guest_sees_mounts_made_after_the_embryo_was_born(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, prefix: str, tmp_path: Path
) -> None:
    """A mount made on the host after the spares were born is in the guest's mount table."""
    born = await _spares(pool, PRIVNET_FLAGS)
    assert 2 == len(born)
    where = Path(busybox_root) / "srv" / prefix
    where.mkdir(parents=True)
    log = tmp_path / "log"
    mounted = False
    try:
        await trio.run_process(["mount", "-t", "tmpfs", f"{prefix}-fresh", str(where)])
        mounted = True
        (where / "marker").write_text(prefix + "\n")
        script = f"cat /srv/{prefix}/marker; grep -c '^{prefix}-fresh ' /proc/mounts; echo end"
        dom = _dom(busybox_root, script, privnet=True)
        g = await spawn.spawn_init(pool, dom, cgroup, log_path=str(log))
        assert born[0] == g.wrapper_pid
        assert GuestExit(status=0) == await _finish(g)
        assert [prefix, "1", "end"] == log.read_text().split()
    finally:
        if mounted:
            await trio.run_process(["umount", "-l", str(where)])
        where.rmdir()


@pytest.mark.root
@pytest.mark.parametrize("settle", [0.0, "dead"], ids=["at-once", "after-it-died"])
async def test_first_phase_failure(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, tmp_path: Path, settle: float | str
) -> None:
    """A mount that fails before ``G`` comes back from finish() naming the mount; the embryo is
    reaped and the cgroup stays empty."""
    dom = _dom(
        busybox_root,
        "exit 0",
        filesystems=(Filesystem(source=str(tmp_path / "nope"), target="/data"),),
    )
    async with _pending(pool, dom) as pending:
        assert pending.child is not None
        child = pending.child
        if settle == "dead":
            with trio.fail_after(5):
                await procs.wait_pid_exit(child.pid)
        with pytest.raises(RuntimeFailure, match=r"child setup failed: .*mount bind .*nope on"):
            await pending.finish(cgroup)
    assert 1 == child.returncode
    assert _gone(child.pid)
    assert set() == cgroup.pids()


@pytest.mark.root
@pytest.mark.parametrize("joins", [True, False], ids=["born-without-netns", "born-with-netns"])
async def test_finish_joins_named_netns(
    busybox_root: str,
    cgroup: GuestCgroup,
    pool: SpawnPool,
    prefix: str,
    tmp_path: Path,
    joins: bool,
) -> None:
    """finish(netns_path=...) puts init in that netns, and its /sys shows that netns's links,
    whether or not the embryo was born with a network namespace of its own."""
    name = f"{prefix}-ns"
    log = tmp_path / "log"
    try:
        path = nsutil.create_netns(name)
        await trio.run_process(
            ["ip", "-n", name, "link", "add", f"{prefix}a", "type", "veth", "peer", "name",
             f"{prefix}b"]
        )  # fmt: skip
        ino = os.stat(path).st_ino
        script = "readlink /proc/self/ns/net; ls /sys/class/net; echo end; exec sleep 1000"
        dom = _dom(busybox_root, script, privnet=True)
        async with _pending(pool, dom, log_path=str(log), joins_netns=joins) as pending:
            g = await pending.finish(cgroup, netns_path=str(path))
        try:
            assert g.namespaces is not None
            assert ino == g.namespaces.net
            lines = await _log_until(log, "end")
            assert f"net:[{ino}]" == lines[0]
            assert sorted(["lo", f"{prefix}a", f"{prefix}b"]) == sorted(lines[1:-1])
        finally:
            assert GuestExit(signal=signal.SIGKILL) == await _stop(cgroup, g)
    finally:
        nsutil.delete_netns(name)


@pytest.mark.root
async def test_dev_nodes(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool, tmp_path: Path
) -> None:
    """The guest's /dev is a tmpfs of its own with the six character devices (right numbers,
    mode 0666) that work: /dev/null swallows, /dev/zero reads zeros, /dev/full is full."""
    log = tmp_path / "log"
    script = (
        "for n in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$n; done;"
        " echo x > /dev/null && echo null-ok; echo zero=$(head -c 5 /dev/zero | wc -c);"
        " (echo x > /dev/full) 2>/dev/null || echo full-refuses;"
        " echo urandom=$(head -c 16 /dev/urandom | wc -c);"
        " echo devfs=$(grep -c ' /dev tmpfs ' /proc/mounts)"
    )
    g = await spawn.spawn_init(pool, _dom(busybox_root, script), cgroup, log_path=str(log))
    assert GuestExit(status=0) == await _finish(g)
    expected = [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
        "null-ok",
        "zero=5",
        "full-refuses",
        "urandom=16",
        "devfs=1",
    ]
    assert expected == log.read_text().splitlines()


@pytest.mark.root
async def test_kill_all_without_wait(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """kill_all(wait=False) returns while the guest's init cannot die yet (held by a frozen v1
    freezer child cgroup the kill pass does not thaw), and init then ends by SIGKILL."""
    freezer = cgroup.layout.v1_path("freezer")
    if freezer is None:
        pytest.skip("needs the v1 freezer to hold a process while SIGKILL is pending")
    g = await spawn.spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cgroup)
    held = Path(cgroup.path_in(freezer)) / "held"
    try:
        assert g.init_pid is not None
        held.mkdir()
        (held / "cgroup.procs").write_text(str(g.init_pid))
        (held / "freezer.state").write_text("FROZEN")
        with trio.fail_after(5):
            while (held / "freezer.state").read_text().strip() != "FROZEN":
                await trio.sleep(0.001)
        with trio.fail_after(1):
            await cgroup.kill_all(wait=False)
        await trio.sleep(0.05)
        assert g.init_pid in cgroup.pids()
        assert None is g.wrapper.poll()
        (held / "freezer.state").write_text("THAWED")
        assert GuestExit(signal=signal.SIGKILL) == await _finish(g)
    finally:
        with trio.CancelScope(shield=True):
            if held.exists():
                (held / "freezer.state").write_text("THAWED")
            await _stop(cgroup, g)
            if held.exists():
                held.rmdir()
