"""Per-guest cgroups: layout detection and v2 logic on a fake tree, v1/hybrid on the real kernel."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import RuntimeFailure
from supervisor.guest.cgroups import (
    CgroupLayout,
    GuestCgroup,
    detect_layout,
    find_leftovers,
    memory_writes,
)
from supervisor.model import Domain, MemTune
from supervisor.sched.cgroupcpu import read_stat
from supervisor.sched.subsystem import cpu_paths

# -- fake trees (unit tests of the logic only; the real kernel is tested below) ----------------


def _fake_v2(tmp_path: Path) -> str:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")
    return str(root)


def _fake_hybrid(tmp_path: Path) -> str:
    root = tmp_path / "cg"
    for ctrl in ("cpu,cpuacct", "memory", "pids", "freezer"):
        (root / ctrl).mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")
    os.symlink("cpu,cpuacct", root / "cpu")
    os.symlink("cpu,cpuacct", root / "cpuacct")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("\n")
    (root / "unified" / "cgroup.procs").write_text("")
    (root / "systemd").mkdir()
    return str(root)


def test_detect_pure_v2(tmp_path: Path) -> None:
    """A root with cgroup.controllers is pure v2 with those controllers."""
    root = _fake_v2(tmp_path)
    expected = CgroupLayout(
        root=root,
        kind="v2",
        unified=root,
        v2_controllers=frozenset({"cpuset", "cpu", "io", "memory", "pids"}),
    )
    assert expected == detect_layout(root)


def test_detect_hybrid_folds_comounted(tmp_path: Path) -> None:
    """v1 dirs (with co-mounted aliases) plus an empty cgroup2 mount is the hybrid layout."""
    root = _fake_hybrid(tmp_path)
    layout = detect_layout(root)
    both = os.path.join(root, "cpu,cpuacct")
    assert "hybrid" == layout.kind
    assert both == layout.v1_path("cpu") == layout.v1_path("cpuacct")
    assert os.path.join(root, "unified") == layout.unified
    assert frozenset() == layout.v2_controllers
    expected = (both, *(os.path.join(root, c) for c in ("memory", "pids", "freezer")))
    assert (*expected, os.path.join(root, "unified")) == layout.hierarchies()


def test_detect_v1_without_unified(tmp_path: Path) -> None:
    """Without a cgroup2 mount the layout is v1."""
    root = _fake_hybrid(tmp_path)
    (Path(root) / "unified" / "cgroup.controllers").unlink()
    assert "v1" == detect_layout(root).kind


def test_detect_empty_root_fails(tmp_path: Path) -> None:
    """A directory with no hierarchy at all is a clear error."""
    with pytest.raises(RuntimeFailure, match="no cgroup hierarchy"):
        detect_layout(str(tmp_path))


def test_v2_create_enables_controllers_and_limit_paths(tmp_path: Path) -> None:
    """On v2, create enables cpu/memory/pids in the parent and limits go to v2 files."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(root), "vsvt", "web1")
    cg.create()
    cg.create()  # idempotent
    assert "+cpu +memory +pids" == (Path(root) / "cgroup.subtree_control").read_text()
    assert (os.path.join(root, "vsvt-web1"),) == cg.paths()
    dom = Domain(
        name="web1",
        memtune=MemTune(hard_limit_kib=1024, soft_limit_kib=512, swap_hard_limit_kib=3072),
        pids_limit=20,
    )
    d = os.path.join(root, "vsvt-web1")
    expected = [
        (f"{d}/memory.max", "1048576"),
        (f"{d}/memory.high", "524288"),
        (f"{d}/memory.swap.max", "2097152"),
        (f"{d}/pids.max", "20"),
    ]
    assert expected == cg.limit_writes(dom)
    assert [os.path.join(root, "vsvt-web1")] == find_leftovers(cg.layout, "vsvt")


def test_v2_memory_is_the_limit_without_a_hard_limit(tmp_path: Path) -> None:
    """On a pure v2 tree <memory> alone is memory.max, and swap.max is the swap beyond it."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(root), "vsvt", "m1")
    cg.create()
    dom = Domain(name="m1", memory_kib=2048, memtune=MemTune(swap_hard_limit_kib=3072))
    d = os.path.join(root, "vsvt-m1")
    assert [(f"{d}/memory.max", "2097152"), (f"{d}/memory.swap.max", "1048576")] == (
        cg.limit_writes(dom)
    )


async def test_v2_freeze_state_and_kill_file(tmp_path: Path) -> None:
    """v2 reads frozen from cgroup.events and kill_all writes 1 to cgroup.kill."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(root), "vsvt", "a")
    cg.create()
    d = Path(cg.paths()[0])
    (d / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    (d / "cgroup.kill").write_text("")
    (d / "cgroup.procs").write_text("")
    assert cg.is_frozen()
    with trio.fail_after(2):
        await cg.kill_all()
    assert "1" == (d / "cgroup.kill").read_text()


def test_write_error_names_file_and_value(tmp_path: Path) -> None:
    """A refused write raises RuntimeFailure naming the file and the value."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(root), "vsvt", "b")
    cg.create()
    with pytest.raises(RuntimeFailure, match=r"'20' to .*vsvt-b/pids\.max"):
        cg.apply_limits(Domain(name="b", pids_limit=20))


@given(
    memory=st.none() | st.integers(1, 2**30),
    hard=st.none() | st.integers(1, 2**30),
    soft=st.none() | st.integers(1, 2**30),
    swap=st.none() | st.integers(1, 2**31),
    pids=st.none() | st.integers(1, 10**6),
)
def test_memory_writes_mapping(
    memory: int | None, hard: int | None, soft: int | None, swap: int | None, pids: int | None
) -> None:
    """The limit is hard_limit, else <memory> (libvirt's LXC order); v1 writes it before
    memsw; v2 swap.max is swap minus the limit; bytes = KiB*1024."""
    dom = Domain(
        name="x",
        memory_kib=memory,
        memtune=MemTune(hard_limit_kib=hard, soft_limit_kib=soft, swap_hard_limit_kib=swap),
        pids_limit=pids,
    )
    v1 = dict(memory_writes(dom, "v1"))
    v2 = dict(memory_writes(dom, "v2"))
    names_v1 = [n for n, _ in memory_writes(dom, "v1")]
    limit = hard if hard is not None else memory
    assert limit == dom.memory_limit_kib
    if limit is None:
        assert "memory.limit_in_bytes" not in v1
        assert "memory.max" not in v2
    else:
        assert str(limit * 1024) == v1["memory.limit_in_bytes"] == v2["memory.max"]
        assert 1 == names_v1.count("memory.limit_in_bytes")
        if swap is not None:
            assert names_v1.index("memory.limit_in_bytes") < names_v1.index(
                "memory.memsw.limit_in_bytes"
            )
    if swap is not None:
        assert str(swap * 1024) == v1["memory.memsw.limit_in_bytes"]
        assert str(max(swap - (limit or 0), 0) * 1024) == v2["memory.swap.max"]
    if soft is not None:
        assert str(soft * 1024) == v1["memory.soft_limit_in_bytes"] == v2["memory.high"]
    assert (None if pids is None else str(pids)) == v1.get("pids.max")


# -- the real kernel ---------------------------------------------------------------------------


@pytest.fixture
async def real_cg(prefix: str) -> AsyncIterator[GuestCgroup]:
    """A guest cgroup on the machine's real hierarchies, removed (and emptied) afterwards."""
    cg = GuestCgroup(detect_layout(), prefix, "g")
    try:
        cg.create()
        yield cg
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await cg.kill_all()
            await cg.remove()


def _spawn_in(cg: GuestCgroup, script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["/bin/sh", "-c", script],
        preexec_fn=cg.attach_self,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_count(cg: GuestCgroup, n: int) -> None:
    with trio.fail_after(5):
        while True:
            if len(cg.pids()) >= n:
                return
            await trio.sleep(0.005)


@pytest.mark.root
def test_real_layout_limits_show_in_files(prefix: str) -> None:
    """Memory and pids limits from a domain appear in the real cgroup files; remove cleans."""
    layout = detect_layout()
    cg = GuestCgroup(layout, prefix, "lim")
    dom = Domain(
        name="lim",
        memtune=MemTune(hard_limit_kib=65536, soft_limit_kib=32768, swap_hard_limit_kib=131072),
        pids_limit=42,
    )
    try:
        cg.create()
        cg.apply_limits(dom)
        got = {os.path.basename(p): Path(p).read_text().strip() for p, _ in cg.limit_writes(dom)}
        files = {n: v for n, v in memory_writes(dom, layout.kind) if n in got}
        for name, value in files.items():
            assert value == got[name]
        assert str(65536 * 1024) == got.get("memory.limit_in_bytes", got.get("memory.max"))
        assert "42" == got["pids.max"]
        assert [] != find_leftovers(layout, prefix)
    finally:
        trio.run(cg.remove)
    assert [] == find_leftovers(layout, prefix)


def _alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _v1_only(layout: CgroupLayout) -> CgroupLayout:
    return attrs.evolve(layout, unified=None, v2_controllers=frozenset(), kind="v1")


@pytest.mark.root
@pytest.mark.parametrize("mode", ["unified-kill", "v1-freeze-loop"])
async def test_kill_all_catches_double_forked_daemons(prefix: str, mode: str) -> None:
    """kill_all kills a daemon reparented after a double fork and one in its own session."""
    layout = detect_layout()
    if mode == "v1-freeze-loop":
        layout = _v1_only(layout)
    elif layout.unified is None:
        pytest.fail("this machine has no unified hierarchy")
    cg = GuestCgroup(layout, prefix, "kill")
    cg.create()
    try:
        _spawn_in(cg, "(sleep 1000 &); setsid sleep 1001 & exit 0").wait()
        await _wait_count(cg, 2)
        survivors = cg.pids()
        assert 2 == len(survivors)
        assert all(os.getppid() != pid for pid in survivors)
        with trio.fail_after(5):
            await cg.kill_all()
        assert set() == cg.pids()
        assert [] == [pid for pid in survivors if _alive(pid)]
    finally:
        with trio.CancelScope(shield=True):
            await cg.kill_all()
            await cg.remove()
    assert [] == find_leftovers(layout, prefix)


def _counter(path: Path) -> int:
    """The counter's value: the writer appends a byte per step, so it is the file's size."""
    return path.stat().st_size


@pytest.mark.root
@pytest.mark.parametrize("mode", ["v1-freezer", "v2-cgroup.freeze"])
async def test_freeze_stops_progress_and_thaw_resumes(
    prefix: str, tmp_path: Path, mode: str
) -> None:
    """A frozen guest's counter stops advancing and the kernel says frozen; thaw resumes it."""
    layout = detect_layout()
    if mode == "v2-cgroup.freeze":
        if layout.unified is None:
            pytest.fail("this machine has no unified hierarchy")
        layout = attrs.evolve(layout, v1=tuple(kv for kv in layout.v1 if kv[0] != "freezer"))
    cg = GuestCgroup(layout, prefix, "frz")
    counter = tmp_path / "c"
    counter.write_text("")
    cg.create()
    p = _spawn_in(cg, f"while :; do printf x >> {counter}; done")
    try:
        with trio.fail_after(5):
            while True:
                if _counter(counter) >= 10:
                    break
                await trio.sleep(0.01)
        with trio.fail_after(5):
            await cg.freeze()
        assert cg.is_frozen()
        before = _counter(counter)
        await trio.sleep(0.15)
        assert before == _counter(counter)
        with trio.fail_after(5):
            await cg.thaw()
        assert not cg.is_frozen()
        await trio.sleep(0.15)
        assert _counter(counter) > before
    finally:
        p.kill()
        p.wait()
        with trio.CancelScope(shield=True):
            await cg.kill_all()
            await cg.remove()


@pytest.mark.root
async def test_readers_and_attach(real_cg: GuestCgroup) -> None:
    """A process attached to the cgroup is listed and its CPU/memory use is readable."""
    p = _spawn_in(real_cg, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100")
    try:
        await _wait_count(real_cg, 1)
        assert {p.pid} == real_cg.pids()
        await trio.sleep(0.05)
        paths = cpu_paths(real_cg)
        assert paths is not None
        assert 0 < read_stat(paths).usage_ns
        assert 0 < real_cg.memory_current()
    finally:
        p.kill()
        p.wait()
