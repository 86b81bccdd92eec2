"""``<vcpu cpuset>``, ``<blkiotune>`` and the memory limits applied through the cpuset, blkio/io
and memory controllers.

The mapping is unit tested on its own and on a fake v2 tree; as root, guests are started on a
real supervisor and the values read back from the kernel's cgroup files (and the init's
``Cpus_allowed_list``). A loop device the test makes stands in for a disk.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.daemon import Supervisor
from supervisor.errors import RuntimeFailure, VsvError
from supervisor.guest.cgroups import (
    GuestCgroup,
    blkio_writes,
    block_device,
    detect_layout,
    find_leftovers,
)
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import BlkioDevice, BlkioTune, Domain, Filesystem, MemTune, OsSpec
from tests import test_net_daemon

sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup

LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"
ALL_FILES = frozenset(
    {
        "blkio.weight",
        "blkio.weight_device",
        "blkio.bfq.weight",
        "io.weight",
        "io.bfq.weight",
        "io.max",
    }
)


def _dev(path: str) -> tuple[int, int]:
    return {"/dev/a": (8, 0), "/dev/b": (7, 3)}[path]


TUNE = BlkioTune(
    weight=500,
    devices=(
        BlkioDevice("/dev/a", weight=800, read_bytes_sec=1048576, write_iops_sec=0),
        BlkioDevice("/dev/b", read_iops_sec=40, write_bytes_sec=2048),
    ),
)


def test_blkio_writes_v1() -> None:
    """v1: the weight and device weights to CFQ's files, each throttle to its own file
    (0 is no limit, written as 0)."""
    expected = [
        ("blkio.weight", ["500"]),
        ("blkio.weight_device", ["8:0 800"]),
        ("blkio.throttle.read_bps_device", ["8:0 1048576"]),
        ("blkio.throttle.write_iops_device", ["8:0 0"]),
        ("blkio.throttle.write_bps_device", ["7:3 2048"]),
        ("blkio.throttle.read_iops_device", ["7:3 40"]),
    ]
    assert expected == blkio_writes(TUNE, "v1", ALL_FILES - {"blkio.bfq.weight"}, _dev)


def test_blkio_writes_prefer_bfq() -> None:
    """With BFQ the weights go to its files, as libvirt writes them."""
    writes = dict(blkio_writes(TUNE, "v1", ALL_FILES, _dev))
    assert (["500"], ["8:0 800"]) == (writes["blkio.bfq.weight"], writes["blkio.bfq.weight_device"])


def test_blkio_writes_v2() -> None:
    """v2: io.weight takes the default and the device weights; io.max one line per device,
    0 written as max."""
    expected = [
        ("io.weight", ["default 500"]),
        ("io.weight", ["8:0 800"]),
        ("io.max", ["8:0 rbps=1048576 wiops=max", "7:3 wbps=2048 riops=40"]),
    ]
    assert expected == blkio_writes(TUNE, "v2", ALL_FILES - {"io.bfq.weight"}, _dev)


def test_blkio_weight_without_a_weight_file_names_the_element() -> None:
    """Without a weight file (no BFQ or CFQ scheduler) a weight is refused, naming it."""
    with pytest.raises(RuntimeFailure, match=r"<blkiotune><weight>"):
        blkio_writes(BlkioTune(weight=100), "v1", frozenset(), _dev)
    throttle_only = BlkioTune(devices=(BlkioDevice("/dev/b", read_iops_sec=1),))
    assert [("io.max", ["7:3 riops=1"])] == blkio_writes(throttle_only, "v2", frozenset(), _dev)


def _fake_v2(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cpuset.cpus.effective").write_text("0-3\n")
    return root


def test_a_device_by_its_numbers_needs_no_udev_link(tmp_path: Path) -> None:
    """/dev/block/MAJ:MIN (libvirt's converter's name for a device by its numbers) is that
    device where udev made no such link, if sysfs has it; else the start fails naming it."""
    (tmp_path / "dev" / "block" / "259:70000").mkdir(parents=True)
    assert (259, 70000) == block_device("/dev/block/259:70000", sysfs=str(tmp_path))
    with pytest.raises(RuntimeFailure, match=r"<blkiotune><device><path>/dev/block/259:70001"):
        block_device("/dev/block/259:70001", sysfs=str(tmp_path))


def test_v2_cpuset_enables_the_controller_and_writes_the_cpus(tmp_path: Path) -> None:
    """On v2 the cpuset controller is enabled in the parent and cpuset.cpus written."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(str(root)), "vsvt", "c")
    cg.create()
    (root / "vsvt-c" / "cpuset.cpus").write_text("")  # the kernel's file, as it would be
    cg.apply_limits(Domain(name="c", vcpu=2, cpuset="0-3,^1,^2"))
    # the fake file is written over in place, not added to as the kernel's
    assert (root / "cgroup.subtree_control").read_text().startswith("+cpuset")
    assert "0,3" == (root / "vsvt-c" / "cpuset.cpus").read_text()


def test_v2_cpuset_outside_the_parents_is_refused(tmp_path: Path) -> None:
    """CPUs the parent does not have are refused naming the element and the CPUs."""
    root = _fake_v2(tmp_path)
    cg = GuestCgroup(detect_layout(str(root)), "vsvt", "c")
    cg.create()
    with pytest.raises(RuntimeFailure, match=r"<vcpu cpuset='2-5'>: CPUs 4-5 are not"):
        cg.apply_limits(Domain(name="c", vcpu=1, cpuset="2-5"))


# --- as root: the values in the kernel's files ---------------------------------------------


def _guest(name: str, root: Path, **fields: object) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        **fields,  # type: ignore[arg-type]
    )


def _read(sup: Supervisor, name: str, controller: str, fname: str) -> str:
    cgroup = sup.guests[name].cgroup
    assert isinstance(cgroup, GuestCgroup)
    where = cgroup.controller_dir(controller)
    assert where is not None
    return Path(where, fname).read_text().strip()


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    """A loop device over a sparse file, detached afterwards whatever happens."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


@pytest.mark.root
async def test_vcpu_cpuset_is_the_guests_cpuset(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """The guest's cgroup has the cpuset, and its init may run only there."""
    cpu = max(os.sched_getaffinity(0))
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("pinned", root, vcpu=1, cpuset=f"0-{cpu},^0" if cpu else "0"))
    with trio.fail_after(60):
        status = await sup.start_domain("pinned")
    try:
        assert str(cpu) == _read(sup, "pinned", "cpuset", "cpuset.cpus")
        proc = Path(f"/proc/{status.init_pid}/status").read_text()
        assert f"Cpus_allowed_list:\t{cpu}" in proc
    finally:
        await sup.destroy_domain("pinned")
    assert [] == find_leftovers(detect_layout(), prefix)


@pytest.mark.root
async def test_a_cpuset_the_host_lacks_fails_the_start(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """A cpuset naming CPUs the host does not have fails the start, naming the element, and
    leaves no cgroup behind."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("nowhere", root, vcpu=1, cpuset="16000"))
    with trio.fail_after(60), pytest.raises(VsvError, match=r"<vcpu cpuset='16000'>"):
        await sup.start_domain("nowhere")
    assert "SHUTOFF" == sup.guests["nowhere"].status().state
    assert [] == find_leftovers(detect_layout(), prefix)


@pytest.mark.root
async def test_blkiotune_throttles_are_in_the_cgroup_files(
    sup: Supervisor, tmp_path: Path, prefix: str, loopdev: str
) -> None:
    """Each device throttle is in the guest's blkio (v1) or io.max (v2) file for the device."""
    st = os.stat(loopdev)
    node = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    tune = BlkioTune(
        devices=(
            BlkioDevice(
                loopdev,
                read_bytes_sec=1048576,
                write_bytes_sec=524288,
                read_iops_sec=300,
                write_iops_sec=200,
            ),
        )
    )
    await sup.define_domain(_guest("io", root, blkiotune=tune))
    with trio.fail_after(60):
        await sup.start_domain("io")
    try:
        layout = detect_layout()
        if "io" in layout.v2_controllers:
            line = _read(sup, "io", "io", "io.max")
            assert f"{node} rbps=1048576 wbps=524288 riops=300 wiops=200" == line
        else:
            got = {
                f: _read(sup, "io", "blkio", f"blkio.throttle.{f}_device")
                for f in ("read_bps", "write_bps", "read_iops", "write_iops")
            }
            expected = {
                "read_bps": f"{node} 1048576",
                "write_bps": f"{node} 524288",
                "read_iops": f"{node} 300",
                "write_iops": f"{node} 200",
            }
            assert expected == got
    finally:
        await sup.destroy_domain("io")
    assert [] == find_leftovers(detect_layout(), prefix)


@pytest.mark.root
async def test_blkio_weight_is_applied_or_refused_by_name(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """A weight is in the weight file where the kernel has one; where it has none (no BFQ or
    CFQ scheduler, as on this project's CI) the start fails naming <blkiotune><weight>."""
    layout = detect_layout()
    v2 = "io" in layout.v2_controllers
    top = layout.unified if v2 else layout.v1_path("blkio")
    assert top is not None
    names = ("io.bfq.weight", "io.weight") if v2 else ("blkio.bfq.weight", "blkio.weight")
    weight_file = next((n for n in names if os.path.exists(os.path.join(top, n))), None)
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("w", root, blkiotune=BlkioTune(weight=300)))
    if weight_file is None:
        with trio.fail_after(60), pytest.raises(VsvError, match=r"<blkiotune><weight>"):
            await sup.start_domain("w")
    else:
        with trio.fail_after(60):
            await sup.start_domain("w")
        try:
            assert "300" in _read(sup, "w", "blkio", weight_file)
        finally:
            await sup.destroy_domain("w")
    assert [] == find_leftovers(detect_layout(), prefix)


@pytest.mark.root
async def test_memtune_soft_and_swap_limits_are_in_the_cgroup_files(
    sup: Supervisor, tmp_path: Path
) -> None:
    """<memtune> soft_limit and swap_hard_limit of a started guest are in its memory files."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    tune = MemTune(hard_limit_kib=65536, soft_limit_kib=32768, swap_hard_limit_kib=131072)
    await sup.define_domain(_guest("mem", root, memtune=tune))
    with trio.fail_after(60):
        await sup.start_domain("mem")
    try:
        if "memory" in detect_layout().v2_controllers:
            assert str(32768 * 1024) == _read(sup, "mem", "memory", "memory.high")
            assert str(65536 * 1024) == _read(sup, "mem", "memory", "memory.swap.max")
        else:
            assert str(32768 * 1024) == _read(sup, "mem", "memory", "memory.soft_limit_in_bytes")
            cgroup = sup.guests["mem"].cgroup
            assert cgroup is not None
            where = cgroup.controller_dir("memory")
            assert where is not None
            if os.path.exists(os.path.join(where, "memory.memsw.limit_in_bytes")):
                memsw = _read(sup, "mem", "memory", "memory.memsw.limit_in_bytes")
                assert str(131072 * 1024) == memsw
    finally:
        await sup.destroy_domain("mem")


@pytest.mark.root
async def test_memory_is_the_limit_and_hard_limit_overrides_it(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """<memory> alone is the guest's memory limit (v1 memory.limit_in_bytes, v2 memory.max),
    as libvirt's LXC driver sets it; <memtune><hard_limit> beside it is the limit instead."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("memonly", root, memory_kib=98304))
    tune = MemTune(hard_limit_kib=81920)
    await sup.define_domain(_guest("memhard", root, memory_kib=98304, memtune=tune))
    files = ("memory.max", "memory.limit_in_bytes")
    got: dict[str, str] = {}
    try:
        for name in ("memonly", "memhard"):
            with trio.fail_after(60):
                await sup.start_domain(name)
            cgroup = sup.guests[name].cgroup
            assert cgroup is not None
            where = cgroup.controller_dir("memory")
            assert where is not None
            fname = next(f for f in files if os.path.exists(os.path.join(where, f)))
            got[name] = _read(sup, name, "memory", fname)
    finally:
        for name in ("memonly", "memhard"):
            if sup.guests[name].status().state == "RUNNING":
                await sup.destroy_domain(name)
    assert {"memonly": str(98304 * 1024), "memhard": str(81920 * 1024)} == got
    assert [] == find_leftovers(detect_layout(), prefix)


@pytest.mark.root
async def test_a_v1_swap_limit_below_memory_fails_the_start_by_name(
    sup: Supervisor, tmp_path: Path, prefix: str
) -> None:
    """On v1 with swap accounting, a swap_hard_limit (memory + swap) below <memory> is a start
    that fails naming <memtune><swap_hard_limit>, leaving no cgroup behind."""
    layout = detect_layout()
    memory = layout.v1_path("memory")
    if "memory" in layout.v2_controllers or memory is None:
        pytest.skip("v2 memory controller: swap.max is swap alone, never below the limit")
    if not os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
        pytest.skip("no swap accounting (memory.memsw.* files) on this kernel")
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    tune = MemTune(swap_hard_limit_kib=32768)
    await sup.define_domain(_guest("lowswap", root, memory_kib=65536, memtune=tune))
    with trio.fail_after(60), pytest.raises(VsvError, match=r"<memtune><swap_hard_limit>"):
        await sup.start_domain("lowswap")
    assert "SHUTOFF" == sup.guests["lowswap"].status().state
    assert [] == find_leftovers(detect_layout(), prefix)
