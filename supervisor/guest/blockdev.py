"""Block devices for ``<filesystem type='file'>`` and ``type='block'``: loop devices and the
filesystem a device holds.

Why loop devices are set up this way: a loop device is a kernel object with no name of its own
(no prefix can mark it), so nothing may depend on finding it again later. Each is configured
with ``LO_FLAGS_AUTOCLEAR`` and the supervisor holds it open only until the guest's mounts are
made: from then on the guest's mount is its only user, and the kernel detaches it when that
mount goes, with the guest's mount namespace, however the guest ends (a supervisor that dies
meanwhile included). A start that fails before the mount closes the device, which detaches it
then. ``<readonly/>`` attaches the image read-only (``LO_FLAGS_READ_ONLY``), so not even the
host side of the device can write it, and the filesystem is mounted read-only.

The filesystem type is what ``blkid`` (util-linux) finds on the device: libvirt's LXC driver
probes the same way (libblkid), and the kernel has no "any type" mount.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
import subprocess

import attrs

from supervisor.errors import RuntimeFailure

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
#: struct loop_info64 (232 bytes): 5 u64, 4 u32, file name [64], crypt name [64], key [32],
#: 2 u64; struct loop_config: fd, block_size, the info, 8 u64 reserved
_INFO = struct.Struct("=5Q4I64s64s32s2Q")
_CONFIG = struct.Struct(f"=II{_INFO.size}s64x")
#: LOOP_CTL_GET_FREE hands out a number another process may take first: tries before giving up
_ATTEMPTS = 16


@attrs.define(eq=False)
class LoopDevice:
    """A loop device over an image, held open until :meth:`close` (see the module docstring)."""

    path: str
    image: str
    fd: int

    def close(self) -> None:
        """Let go of the device: the kernel detaches it once nothing has it mounted."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach_loop(image: str, *, readonly: bool, label: str = "") -> LoopDevice:
    """A free loop device configured over ``image`` (read-only when ``readonly``).

    ``label`` goes into the device's file name field (``losetup --list`` shows the backing
    file's path, the field is for whoever asks the kernel): the guest that uses it.
    """
    try:
        image_fd = os.open(image, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeFailure(f"<source file='{image}'>: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(image_fd).st_mode):
            raise RuntimeFailure(f"<source file='{image}'>: not a regular file (an image)")
        flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
        name = (label or image).encode()[:63]
        info = _INFO.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
        config = _CONFIG.pack(image_fd, 0, info)
        try:
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise RuntimeFailure(f"cannot open /dev/loop-control: {e.strerror}") from e
        try:
            for _ in range(_ATTEMPTS):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                path = f"/dev/loop{number}"
                fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as e:
                    os.close(fd)
                    if e.errno == errno.EBUSY:  # taken between GET_FREE and now: another
                        continue
                    raise RuntimeFailure(f"cannot set up {path} over {image}: {e.strerror}") from e
                return LoopDevice(path=path, image=image, fd=fd)
        except OSError as e:
            raise RuntimeFailure(f"cannot get a free loop device for {image}: {e.strerror}") from e
        finally:
            os.close(control)
        raise RuntimeFailure(f"cannot get a free loop device for {image}: all were taken")
    finally:
        os.close(image_fd)


def check_block_device(path: str) -> None:
    """``<source dev=>`` must be a block device node."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise RuntimeFailure(f"<source dev='{path}'>: {e.strerror}") from e
    if not stat.S_ISBLK(mode):
        raise RuntimeFailure(f"<source dev='{path}'>: not a block device")


def filesystem_type(device: str, element: str) -> str:
    """The type of the filesystem on ``device`` (``ext4``, ``xfs``, ``squashfs``...), by blkid.

    ``element`` names the ``<filesystem>`` in the error when there is none to be found.
    """
    try:
        done = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", device],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeFailure(f"{element}: cannot probe {device} with blkid: {e}") from e
    fstype = done.stdout.strip()
    if done.returncode != 0 or not fstype:
        raise RuntimeFailure(f"{element}: no filesystem blkid knows on {device}")
    if not all(c.isalnum() or c in "._-" for c in fstype):
        raise RuntimeFailure(f"{element}: blkid names an odd type {fstype!r} on {device}")
    return fstype


_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR_RDONLY = 1
_libc = ctypes.CDLL(None, use_errno=True)


def detached_mount(node: str, fstype: str, *, readonly: bool) -> int:
    """A mount of the filesystem on ``node`` attached nowhere yet (fsopen, fsmount): its fd.

    Made by the supervisor, not the embryo: opening the device is checked against the calling
    process's device cgroup, and an embryo may already be in its guest's cgroup, whose allowlist
    has no block device (nor should it). The embryo attaches the fd (move_mount); closing an fd
    never attached releases the filesystem, and with it an auto-clear loop device.
    """
    what = f"mount {fstype} {node}"

    def check(rc: int, step: str) -> int:
        if rc < 0:
            err = ctypes.get_errno()
            raise RuntimeFailure(f"{what}: {step}: {os.strerror(err)}")
        return rc

    fs_fd = check(_libc.syscall(_SYS_FSOPEN, fstype.encode(), _FSOPEN_CLOEXEC), "fsopen")
    try:
        check(
            _libc.syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, b"source", node.encode(), 0),
            "source",
        )
        if readonly:
            check(_libc.syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_FLAG, b"ro", None, 0), "ro")
        check(_libc.syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_CMD_CREATE, None, None, 0), "create")
        attrs_ = _MOUNT_ATTR_RDONLY if readonly else 0
        return check(_libc.syscall(_SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, attrs_), "fsmount")
    finally:
        os.close(fs_fd)
