"""``<filesystem type='file'>`` (a raw image through a loop device) and ``type='block'``.

As root: guests started on a real supervisor with a root filesystem in an ext4 image (read-only
and read-write) and a block device mounted below a directory root; the mounts are read from the
guest's mountinfo. Every loop device a start made is gone after the guest stops, and after a
start that fails (no filesystem on the image, one the kernel cannot mount). Images are made
with mkfs.ext4 (e2fsprogs), loop devices for the "block device" with losetup, both removed by
the fixtures whatever happens.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.daemon import Supervisor
from supervisor.errors import InvalidDocument, VsvError
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, IdMapEntry, OsSpec
from supervisor.validate import check_domain
from supervisor.xml import format_domain, parse_domain
from tests import test_net_daemon

sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup

LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def _guest(name: str, *filesystems: Filesystem, script: str = LOOP) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=filesystems,
    )


def test_file_and_block_read_and_write_back() -> None:
    """libvirt's spellings are read and written back; the rules refuse what cannot work."""
    text = (
        "<domain type='lxc'><name>c</name><os><type>exe</type></os><devices>"
        "<filesystem type='file' accessmode='passthrough'><driver type='loop' format='raw'/>"
        "<source file='/var/lib/images/c.img'/><target dir='/'/><readonly/></filesystem>"
        "<filesystem type='block'><source dev='/dev/vdb1'/><target dir='/data'/></filesystem>"
        "</devices></domain>"
    )
    d = parse_domain(text)
    expected = (
        Filesystem(
            "/var/lib/images/c.img",
            "/",
            type="file",
            readonly=True,
            accessmode="passthrough",
            driver_type="loop",
            driver_format="raw",
        ),
        Filesystem("/dev/vdb1", "/data", type="block"),
    )
    assert expected == d.filesystems
    assert d == parse_domain(format_domain(d))


@pytest.mark.parametrize(
    ("inner", "where"),
    [
        ("<driver type='nbd' format='qcow2'/><source file='/i'/>", "driver/@type"),
        ("<driver format='qcow2'/><source file='/i'/>", "driver/@format"),
        ("<source dir='/i'/>", "source/@dir"),
        ("<source file='i'/>", "source/@file"),
    ],
)
def test_what_a_file_filesystem_refuses(inner: str, where: str) -> None:
    """Formats other than raw (qemu-nbd's), the wrong source attribute, relative paths."""
    text = (
        "<domain type='lxc'><name>c</name><os><type>exe</type></os><devices>"
        f"<filesystem type='file'>{inner}<target dir='/a'/></filesystem></devices></domain>"
    )
    with pytest.raises(InvalidDocument) as info:
        parse_domain(text)
    assert any(f"devices/filesystem[1]/{where}" in p for p in info.value.problems)


def test_a_device_filesystem_with_an_idmap_is_refused() -> None:
    """The kernel mounts a device's filesystem only for the host's root: not with <idmap>."""
    d = Domain(
        name="c",
        type="lxc",
        idmap=(IdMapEntry("uid", 0, 100000, 65536), IdMapEntry("gid", 0, 100000, 65536)),
        filesystems=(Filesystem("/dev/vdb", "/data", type="block"),),
    )
    problems = check_domain(d)
    assert [True] == ["devices/filesystem[1]/@type" in p and "<idmap>" in p for p in problems]


# --- as root ----------------------------------------------------------------------------------


def _loops_of(image: Path) -> str:
    """The loop devices over ``image`` (losetup's list; empty when there are none)."""
    return subprocess.run(
        ["losetup", "--noheadings", "--output", "NAME", "--associated", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


async def _wait_detached(image: Path) -> None:
    """The kernel detaches an auto-clear loop device once its mount is gone."""
    with trio.fail_after(20):
        while _loops_of(image):
            await trio.sleep(0.05)


def _mkfs(image: Path, size_mib: int, content: Path | None = None) -> None:
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    args = ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0"]
    if content is not None:
        args += ["-d", str(content)]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


def _mounts(pid: int) -> dict[str, tuple[str, str, str]]:
    """Mount point -> (filesystem type, source, per-mount options) in the guest."""
    out: dict[str, tuple[str, str, str]] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fstype, source = right.split()[:2]
        out[fields[4]] = (fstype, source, fields[5])
    return out


@pytest.fixture
def rootimage(tmp_path: Path) -> Path:
    """An ext4 image holding a busybox root."""
    image = tmp_path / "root.img"
    _mkfs(image, 48, Path(prepare_busybox_root(str(tmp_path / "tree"))))
    return image


@pytest.fixture
def blockdev(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device (standing for a disk) over an ext4 image with /hello; detached after."""
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello").write_text("from the disk\n")
    image = tmp_path / "disk.img"
    _mkfs(image, 16, content)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev, image
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


@pytest.mark.root
@pytest.mark.parametrize("readonly", [True, False])
async def test_a_raw_image_is_the_guests_root(
    sup: Supervisor, rootimage: Path, readonly: bool
) -> None:
    """The image's filesystem, through a loop device, is the guest's /, read-only when the
    document says <readonly/>; the loop device goes when the guest stops."""
    fs = Filesystem(str(rootimage), "/", type="file", readonly=readonly, driver_format="raw")
    await sup.define_domain(_guest("img", fs))
    with trio.fail_after(60):
        status = await sup.start_domain("img")
    try:
        assert status.init_pid is not None
        fstype, source, options = _mounts(status.init_pid)["/"]
        assert ("ext4", _loops_of(rootimage)) == (fstype, source)
        assert ("ro" if readonly else "rw") == options.split(",")[0]
        # a read-only image is attached read-only: not even the device can be written
        ro = Path(f"/sys/block/{source.removeprefix('/dev/')}/ro").read_text().strip()
        assert ("1" if readonly else "0") == ro
    finally:
        await sup.destroy_domain("img")
    await _wait_detached(rootimage)


@pytest.mark.root
async def test_a_block_device_is_mounted_below_a_directory_root(
    sup: Supervisor, tmp_path: Path, blockdev: tuple[str, Path]
) -> None:
    """A block device's filesystem is mounted at its target, read-write, and the guest
    reads the file on it."""
    dev, _image = blockdev
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    script = f"cat /data/hello > /tmp/seen; {LOOP}"
    await sup.define_domain(
        _guest(
            "blk",
            Filesystem(str(root), "/"),
            Filesystem(dev, "/data", type="block"),
            script=script,
        )
    )
    with trio.fail_after(60):
        status = await sup.start_domain("blk")
    try:
        assert status.init_pid is not None
        fstype, source, options = _mounts(status.init_pid)["/data"]
        assert ("ext4", dev, "rw") == (fstype, source, options.split(",")[0])
        seen = root / "tmp" / "seen"
        with trio.fail_after(20):
            while not (seen.exists() and seen.read_text().endswith("\n")):
                await trio.sleep(0.05)
        assert "from the disk\n" == seen.read_text()
    finally:
        await sup.destroy_domain("blk")


@pytest.mark.root
async def test_an_image_without_a_filesystem_fails_the_start_and_leaves_no_loop(
    sup: Supervisor, tmp_path: Path
) -> None:
    """An image blkid finds nothing on fails the start naming the filesystem; its loop
    device is detached at once."""
    image = tmp_path / "blank.img"
    with image.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    fs = Filesystem(str(image), "/blank", type="file")
    await sup.define_domain(_guest("blank", Filesystem(str(root), "/"), fs))
    with trio.fail_after(60), pytest.raises(VsvError, match=r"<filesystem type='file'> on /blank"):
        await sup.start_domain("blank")
    await _wait_detached(image)


@pytest.mark.root
async def test_an_image_the_kernel_cannot_mount_fails_the_start_and_leaves_no_loop(
    sup: Supervisor, tmp_path: Path
) -> None:
    """A swap image (a type blkid knows, no filesystem the kernel mounts) fails the start,
    which names the filesystem and the mount; the loop device is detached."""
    image = tmp_path / "swap.img"
    with image.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkswap", str(image)], check=True, capture_output=True)
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    fs = Filesystem(str(image), "/swap", type="file", readonly=True)
    await sup.define_domain(_guest("swap", Filesystem(str(root), "/"), fs))
    with trio.fail_after(60), pytest.raises(VsvError, match=r"on /swap: mount swap"):
        await sup.start_domain("swap")
    await _wait_detached(image)
