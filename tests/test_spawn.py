"""Spawning a guest's init: namespaces, cgroup membership, root dir, exit statuses, failures."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from supervisor.errors import RuntimeFailure
from supervisor.guest import procs
from supervisor.guest.cgroups import GuestCgroup, detect_layout
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import (
    CLONE_NEWNET,
    STAGE,
    GuestProcess,
    SpawnPool,
    plan_spawn,
    resolve_ids,
    spawn_init,
)
from supervisor.model import Domain, Filesystem, MemTune, OsSpec
from supervisor.runtime import GuestExit

# -- pure planning -----------------------------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:web:/var/www:/bin/sh\n"
GROUP = "root:x:0:\nwww:x:34:\nstaff:x:50:\n"


def test_resolve_names_and_numbers() -> None:
    """User names bring uid, primary gid and home; numbers pass through; groups by name."""
    assert (33, 34, "/var/www") == resolve_ids("www", None, PASSWD, GROUP)
    assert (33, 50, "/var/www") == resolve_ids("www", "staff", PASSWD, GROUP)
    assert (1234, 7, None) == resolve_ids("1234", "7", PASSWD, GROUP)
    assert (None, None, None) == resolve_ids(None, None, PASSWD, GROUP)


def test_resolve_unknown_name_fails() -> None:
    """An unknown user or group name is a clear error naming it."""
    with pytest.raises(RuntimeFailure, match="'nobody'"):
        resolve_ids("nobody", None, PASSWD, GROUP)
    with pytest.raises(RuntimeFailure, match="'wheel'"):
        resolve_ids(None, "wheel", PASSWD, GROUP)


def test_plan_argv_env_and_flags() -> None:
    """The plan pivots into the root dir, sets ids, env defaults, and adds netns only if asked."""
    dom = Domain(
        name="web",
        os=OsSpec(
            init="/sbin/init",
            initargs=("-v",),
            initenv=(("A", "1"),),
            initdir="/srv",
            inituser="www",
        ),
        filesystems=(Filesystem(source="/guests/web", target="/"),),
    )
    plan = plan_spawn(dom, passwd_text=PASSWD, group_text=GROUP)
    assert ("/sbin/init", "-v") == plan.argv
    assert ("/guests/web", "/srv", 33, 34) == (plan.root, plan.workdir, plan.uid, plan.gid)
    env = dict(plan.env)
    assert ("1", "vsv", "/var/www") == (env["A"], env["container"], env["HOME"])
    assert "web" == plan.hostname
    assert 0 == plan.clone_flags & CLONE_NEWNET
    privnet = plan_spawn(Domain(name="n", privnet=True, hostname="h"))
    assert CLONE_NEWNET == privnet.clone_flags & CLONE_NEWNET
    assert "h" == privnet.hostname
    # no root filesystem: a read-only copy of the host's tree, staged over the host's /proc
    assert ("bind", STAGE, "/") == (privnet.mounts[1].kind, privnet.mounts[1].target,
                                    privnet.mounts[1].source)  # fmt: skip
    assert ("ro_tree", STAGE) == (privnet.mounts[2].kind, privnet.mounts[2].target)
    assert STAGE == privnet.root


# -- the real kernel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox root dir shared by this module's tests."""
    return prepare_busybox_root(str(tmp_path_factory.mktemp("rootfs") / "bb"))


@contextlib.asynccontextmanager
async def _guest_cgroup(prefix: str) -> AsyncIterator[GuestCgroup]:
    cg = GuestCgroup(detect_layout(), prefix, "g")
    cg.create()
    try:
        yield cg
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await cg.kill_all()
            await cg.remove()
        assert [] == _existing(cg.paths())


@pytest.fixture
async def cgroup(prefix: str) -> AsyncIterator[GuestCgroup]:
    """The guest's cgroup, emptied and removed afterwards whatever happened."""
    async with _guest_cgroup(prefix) as cg:
        yield cg


@pytest.fixture
async def pool() -> AsyncIterator[SpawnPool]:
    """Fork servers and spare embryos for one test, gone when it ends."""
    async with SpawnPool() as p:
        yield p


def _existing(paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def _read_limits(cg: GuestCgroup, dom: Domain) -> dict[str, str]:
    """Current content of each cgroup file the domain's limits were written to."""
    return {os.path.basename(p): Path(p).read_text().strip() for p, _ in cg.limit_writes(dom)}


def _dom(root: str | None, script: str, **kw: object) -> Domain:
    fss = (Filesystem(source=root, target="/"),) if root else ()
    extra = kw.pop("filesystems", ())
    assert isinstance(extra, tuple)
    return Domain(
        name="g",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=fss + extra,
        **kw,  # type: ignore[arg-type]
    )


async def _finish(g: GuestProcess) -> GuestExit:
    with trio.fail_after(10):
        return await g.wait()


@pytest.mark.root
async def test_guest_sees_own_world(
    busybox_root: str, cgroup: GuestCgroup, tmp_path: Path, pool: SpawnPool
) -> None:
    """Inside: PID 1, own hostname, only its own processes, a minimal /dev, its limits."""
    log = tmp_path / "log"
    script = (
        "echo pid=$$; echo host=$(hostname); echo procs=$(ls /proc | grep -c '^[0-9]');"
        " echo dev=$(ls /dev | tr '\\n' ' '); echo null=$(echo x > /dev/null && echo ok);"
        " echo ps=$(ps -o pid | tail -n +2 | tr '\\n' ' ')"
    )
    dom = _dom(busybox_root, script, hostname="inner")
    g = await spawn_init(pool, dom, cgroup, log_path=str(log))
    assert GuestExit(status=0) == await _finish(g)
    lines = dict(line.split("=", 1) for line in log.read_text().splitlines())
    assert "1" == lines["pid"]
    assert "inner" == lines["host"]
    assert int(lines["procs"]) <= 20
    assert [] == [p for p in lines["ps"].split() if int(p) > 50]
    expected_dev = {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd"}
    assert expected_dev <= set(lines["dev"].split())
    assert "ok" == lines["null"]


@pytest.mark.root
async def test_running_init_is_pid1_in_its_cgroup(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """A running init is PID 1 of a new pid ns, all guest processes are in its cgroup, limits."""
    dom = _dom(
        busybox_root,
        "sleep 1000 & (sleep 1001 &); exec sleep 1002",
        memtune=MemTune(hard_limit_kib=64 * 1024),
        pids_limit=30,
    )
    cgroup.apply_limits(dom)
    g = await spawn_init(pool, dom, cgroup)
    try:
        assert g.init_pid is not None
        assert g.namespaces is not None
        assert 1 == procs.nspid(g.init_pid)[-1]
        assert 2 == len(procs.nspid(g.init_pid))
        assert procs.ns_inode(os.getpid(), "pid") != g.namespaces.pid
        assert procs.ns_inode(os.getpid(), "net") == g.namespaces.net
        assert procs.pid_is_guest_init(g.init_pid, g.namespaces.pid)
        # settles at 3: init and the two sleeps (the `( ... &)` subshell that forks the second
        # sleep counts too while it lives)
        with trio.fail_after(5):
            while len(cgroup.pids()) != 3:
                await trio.sleep(0.005)
        assert {g.wrapper_pid, g.init_pid} <= cgroup.pids()
        limits = _read_limits(cgroup, dom)
        assert "30" == limits["pids.max"]
        assert str(64 * 1024 * 1024) == limits.get(
            "memory.limit_in_bytes", limits.get("memory.max")
        )
        await cgroup.kill_all()
        assert GuestExit(signal=signal.SIGKILL) == await _finish(g)
    finally:
        await cgroup.kill_all()


@pytest.mark.root
async def test_private_network_gets_own_netns(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """privnet gives the guest a network namespace of its own with only a loopback."""
    g = await spawn_init(pool, _dom(busybox_root, "exec sleep 1000", privnet=True), cgroup)
    try:
        assert g.namespaces is not None
        assert procs.ns_inode(os.getpid(), "net") != g.namespaces.net
        assert ["lo"] == os.listdir(f"/proc/{g.init_pid}/root/sys/class/net")
    finally:
        await cgroup.kill_all()
        await _finish(g)


@pytest.mark.root
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("exit 0", GuestExit(status=0)),
        ("exit 3", GuestExit(status=3)),
        ("reboot -f", GuestExit(signal=signal.SIGHUP)),
        ("poweroff -f", GuestExit(signal=signal.SIGINT)),
    ],
)
async def test_exit_statuses(
    busybox_root: str, cgroup: GuestCgroup, script: str, expected: GuestExit, pool: SpawnPool
) -> None:
    """The wrapper reports init's exit code, and in-guest reboot/poweroff as SIGHUP/SIGINT."""
    g = await spawn_init(pool, _dom(busybox_root, "sleep 0.05; " + script), cgroup)
    assert expected == await _finish(g)


@pytest.mark.root
async def test_init_crash_by_sigsegv(cgroup: GuestCgroup, pool: SpawnPool) -> None:
    """An init that faults is reported as killed by SIGSEGV (host root, read-only)."""
    dom = Domain(
        name="g",
        os=OsSpec(init="/usr/bin/python3", initargs=("-c", "import ctypes; ctypes.string_at(0)")),
    )
    g = await spawn_init(pool, dom, cgroup)
    assert GuestExit(signal=signal.SIGSEGV) == await _finish(g)


@pytest.mark.root
async def test_host_root_is_read_only(cgroup: GuestCgroup, tmp_path: Path, pool: SpawnPool) -> None:
    """Without a root dir the guest sees the host's root read-only, with a private /tmp."""
    target = tmp_path / "x"
    log = tmp_path / "log"
    dom = Domain(
        name="g",
        os=OsSpec(
            init="/bin/sh",
            initargs=(
                "-c",
                f"touch {target} 2>/dev/null && echo rw || echo ro; touch /tmp/y && echo tmp",
            ),
        ),
    )
    g = await spawn_init(pool, dom, cgroup, log_path=str(log))
    assert GuestExit(status=0) == await _finish(g)
    assert ["ro", "tmp"] == log.read_text().split()
    assert not target.exists()


@pytest.mark.root
async def test_filesystems_user_env_and_wd(
    busybox_root: str, cgroup: GuestCgroup, tmp_path: Path, pool: SpawnPool
) -> None:
    """Bind mounts (readonly honoured), ram tmpfs, inituser by name, initenv and initdir apply."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "in").write_text("hello\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        "cat /share/in > /share/out; echo $(id -u):$(id -g) >> /share/out; echo $GREETING >> "
        "/share/out; pwd >> /share/out; (touch /ro/f 2>/dev/null && echo rw || echo ro) >> "
        "/share/out; grep -c ' /scratch tmpfs' /proc/mounts >> /share/out"
    )
    dom = Domain(
        name="g",
        os=OsSpec(
            init="/bin/sh",
            initargs=("-c", script),
            initenv=(("GREETING", "hi"),),
            initdir="/tmp",
            inituser="daemon",
        ),
        filesystems=(
            Filesystem(source=busybox_root, target="/"),
            Filesystem(source=str(share), target="/share"),
            Filesystem(source=str(ro), target="/ro", readonly=True),
            Filesystem(source="", target="/scratch", type="ram", usage_kib=1024),
        ),
    )
    os.chmod(share, 0o777)
    g = await spawn_init(pool, dom, cgroup)
    assert GuestExit(status=0) == await _finish(g)
    assert ["hello", "1:1", "hi", "/tmp", "ro", "1"] == (share / "out").read_text().split()


@pytest.mark.root
async def test_missing_root_dir_is_clear_error(
    cgroup: GuestCgroup, tmp_path: Path, pool: SpawnPool
) -> None:
    """A root dir that does not exist fails before anything runs."""
    dom = _dom(str(tmp_path / "missing"), "exit 0")
    with pytest.raises(RuntimeFailure, match=r"root directory .*missing.* does not exist"):
        await spawn_init(pool, dom, cgroup)
    assert set() == cgroup.pids()


@pytest.mark.root
async def test_failing_child_setup_is_clear_error(
    busybox_root: str, cgroup: GuestCgroup, tmp_path: Path, pool: SpawnPool
) -> None:
    """A mount that fails in the child comes back as RuntimeFailure naming it; nothing is left."""
    dom = _dom(
        busybox_root,
        "exit 0",
        filesystems=(Filesystem(source=str(tmp_path / "nope"), target="/data"),),
    )
    with pytest.raises(RuntimeFailure, match=r"child setup failed: .*mount bind .*nope on"):
        await spawn_init(pool, dom, cgroup)
    assert set() == cgroup.pids()


@pytest.mark.root
async def test_missing_init_is_clear_error(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """An init program that does not exist in the root is reported as not executable."""
    dom = Domain(
        name="g",
        os=OsSpec(init="/sbin/no-such-init"),
        filesystems=(Filesystem(source=busybox_root, target="/"),),
    )
    with pytest.raises(RuntimeFailure, match="could not be executed"):
        await spawn_init(pool, dom, cgroup)
    assert set() == cgroup.pids()


@pytest.mark.root
async def test_wait_pid_exit_for_foreign_pid(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """wait_pid_exit returns once a process that is not our child (the guest init) ends."""
    g = await spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cgroup)
    assert g.init_pid is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_finish, g)
        with trio.fail_after(5):
            os.kill(g.init_pid, signal.SIGKILL)
            await procs.wait_pid_exit(g.init_pid)
    assert g.namespaces is not None
    assert not procs.pid_is_guest_init(g.init_pid, g.namespaces.pid)


@pytest.mark.root
async def test_signal_guest_init_only_while_it_is_that_init(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """An adopted guest is signalled only while its pid is PID 1 of the recorded namespace."""
    g = await spawn_init(
        pool, _dom(busybox_root, "trap 'exit 3' TERM; while :; do sleep 0.05; done"), cgroup
    )
    assert g.init_pid is not None
    assert g.namespaces is not None
    # a wrong namespace inode (a reused pid, as far as it can tell) gets nothing
    assert not procs.signal_guest_init(g.init_pid, g.namespaces.pid + 1, signal.SIGTERM)
    with trio.move_on_after(0.3):
        await g.wait()
        raise AssertionError("the guest ended from a signal that must not have been sent")
    assert procs.signal_guest_init(g.init_pid, g.namespaces.pid, signal.SIGTERM)
    end = await _finish(g)
    assert end.status == 3
    assert not procs.signal_guest_init(g.init_pid, g.namespaces.pid, signal.SIGTERM)


@pytest.mark.root
async def test_a_zombie_init_is_no_guest_init(
    busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool
) -> None:
    """An init that ended but is not reaped yet is no live guest (re-adoption must not take it),
    and reap_if_child reaps it when it is ours (the embryo path makes init our child)."""
    g = await spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cgroup)
    assert g.init_pid is not None
    assert g.namespaces is not None
    pid, pidns = g.init_pid, g.namespaces.pid
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(5):
        while "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]:
            await trio.sleep(0.005)
    assert not procs.pid_is_guest_init(pid, pidns)
    procs.reap_if_child(pid)
    assert not Path(f"/proc/{pid}").exists()
    procs.reap_if_child(pid)  # no longer a child: nothing happens


@pytest.mark.root
async def test_init_is_our_child(busybox_root: str, cgroup: GuestCgroup, pool: SpawnPool) -> None:
    """The guest's init is the supervisor's own child, so we get its exit status (no process
    between us and the guest)."""
    g = await spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cgroup)
    try:
        assert os.getpid() == _ppid(g.wrapper_pid)
        assert g.wrapper_pid == g.init_pid
    finally:
        await cgroup.kill_all()
    assert GuestExit(signal=signal.SIGKILL) == await _finish(g)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.root
async def test_concurrent_starts(busybox_root: str, prefix: str, pool: SpawnPool) -> None:
    """Twenty starts at once each get a running init in their own cgroup."""
    cgs = [GuestCgroup(detect_layout(), prefix, f"c{i}") for i in range(20)]
    guests: list[GuestProcess] = []
    try:
        for cg in cgs:
            cg.create()

        async def one(cg: GuestCgroup) -> None:
            guests.append(await spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cg))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for cg in cgs:
                    nursery.start_soon(one, cg)
        assert 20 == len(guests)
        for cg in cgs:
            pids = cg.pids()
            assert 1 == len(pids)
            (init,) = [g.init_pid for g in guests if g.init_pid in pids]
            assert init is not None
            assert 1 == procs.nspid(init)[-1]
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(20):
            for cg in cgs:
                await cg.kill_all()
            for g in guests:
                await g.wait()
            for cg in cgs:
                await cg.remove()


_SUPERVISOR_SCRIPT = """
import os, sys, trio
from supervisor.guest.cgroups import GuestCgroup, detect_layout
from supervisor.guest import spawn
from supervisor.model import Domain, Filesystem, OsSpec

async def main():
    dom = Domain(name="g", os=OsSpec(init="/bin/sleep", initargs=("1000",)),
                 filesystems=(Filesystem(source=sys.argv[2], target="/"),))
    async with spawn.SpawnPool() as pool:
        g = await spawn.spawn_init(pool, dom, GuestCgroup(detect_layout(), sys.argv[1], "g"))
        print(g.init_pid, *pool.server_pids(), flush=True)
        await trio.sleep(1000)

trio.run(main)
"""


@pytest.mark.root
async def test_guest_survives_supervisor_sigkill(
    busybox_root: str, cgroup: GuestCgroup, prefix: str
) -> None:
    """A SIGKILLed supervisor takes its fork servers along, while its guest keeps running."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sup = await trio.lowlevel.open_process(
        [sys.executable, "-c", _SUPERVISOR_SCRIPT, prefix, busybox_root],
        cwd=repo,
        stdout=subprocess.PIPE,
    )
    try:
        assert sup.stdout is not None
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                line += await sup.stdout.receive_some()
        init, *servers = (int(x) for x in line.split())
        assert servers
        assert {init} == cgroup.pids()
        sup.kill()
        await sup.wait()
        with trio.fail_after(5):
            for server in servers:
                await procs.wait_pid_exit(server)
        await trio.sleep(0.05)
        assert {init} == cgroup.pids()
    finally:
        with trio.CancelScope(shield=True):
            sup.kill()
            await sup.wait()
            if sup.stdout is not None:
                await sup.stdout.aclose()


@pytest.mark.root
async def test_fork_server_restarts_after_dying(
    busybox_root: str, cgroup: GuestCgroup, monkeypatch: pytest.MonkeyPatch, pool: SpawnPool
) -> None:
    """Fork servers that died are replaced when a start needs an embryo, which succeeds."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "0")  # the start must ask a server for its embryo
    pool.discard_spares()  # the spares the pool began with would spare it that
    dead = [s.proc for s in pool.servers if s is not None]
    for proc in dead:
        proc.kill()
        proc.wait()
    g = await spawn_init(pool, _dom(busybox_root, "exec sleep 1000"), cgroup)
    try:
        alive = {s.proc.pid for s in pool.servers if s is not None and s.usable()}
        assert alive
        assert not alive & {p.pid for p in dead}
        assert g.init_pid is not None
        assert 1 == procs.nspid(g.init_pid)[-1]
    finally:
        await cgroup.kill_all()
    assert GuestExit(signal=signal.SIGKILL) == await _finish(g)
