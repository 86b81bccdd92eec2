"""vsv exec's reading of /proc: cgroup mounts and a process's cgroups, init's environment."""

from __future__ import annotations

import os

import pytest

from supervisor.guest import attach

HYBRID = """\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
30 25 0:28 / /sys/fs/cgroup/my\\040pids rw,nosuid - cgroup cgroup rw,pids
31 1 0:28 / /mnt/pids-again rw,nosuid - cgroup cgroup rw,pids
"""

CGROUP = """\
12:pids:/vsv-web1
4:memory:/vsv-web1
3:cpu,cpuacct:/vsv-web1
2:freezer:/vsv-web1
1:name=systemd:/
0::/vsv-web1
"""


def test_every_mounted_hierarchy_of_the_process_is_joined() -> None:
    files = attach.procs_files(CGROUP, attach.cgroup_mounts(HYBRID))
    assert files == (
        "/sys/fs/cgroup/my pids/vsv-web1/cgroup.procs",  # the first mount of it, unescaped
        "/sys/fs/cgroup/memory/vsv-web1/cgroup.procs",
        "/sys/fs/cgroup/cpu,cpuacct/vsv-web1/cgroup.procs",
        # freezer: not mounted here, skipped
        "/sys/fs/cgroup/systemd/cgroup.procs",
        "/sys/fs/cgroup/unified/vsv-web1/cgroup.procs",
    )


def test_pure_v2_and_a_mount_of_a_subtree() -> None:
    mountinfo = "40 1 0:30 /machines /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    mounts = attach.cgroup_mounts(mountinfo)
    assert attach.procs_files("0::/machines/vsv-a\n", mounts) == (
        "/sys/fs/cgroup/vsv-a/cgroup.procs",
    )
    assert attach.procs_files("garbage\n0::/machines\n", mounts) == ("/sys/fs/cgroup/cgroup.procs",)


def test_this_process_is_not_a_guest_init() -> None:
    with pytest.raises(attach.CannotEnter, match="not the init of a guest's pid namespace"):
        attach.open_target(os.getpid())


def test_a_process_that_is_gone_cannot_be_entered() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(attach.CannotEnter, match=f"process {pid}: No such process"):
        attach.open_target(pid)


def test_environ_is_read_as_the_process_started() -> None:
    env = attach.guest_environ(os.getpid())
    assert env["PATH"] == os.environb[b"PATH"].decode()
