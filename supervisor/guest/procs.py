"""Small helpers about host processes: children, namespaces, waiting for a pid that is not ours.

They exist for the guest runtime's edge: finding a guest's init below its wrapper, recording the
namespaces it lives in, and re-adopting a guest after a supervisor restart, when the wrapper is no
longer our child and only a pidfd can tell us it ended.
"""

from __future__ import annotations

import os

import trio

from supervisor.errors import RuntimeFailure

NAMESPACES: tuple[str, ...] = ("pid", "mnt", "uts", "ipc", "net", "cgroup")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (its main thread's), empty if it has none or is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def ns_inode(pid: int, ns: str) -> int:
    """The inode number identifying the namespace ``ns`` of process ``pid``."""
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError as e:
        raise RuntimeFailure(f"cannot read /proc/{pid}/ns/{ns}: {e.strerror}") from e


def ns_inodes(pid: int) -> dict[str, int]:
    """Inode numbers of all the namespaces of ``pid`` listed in :data:`NAMESPACES`."""
    return {ns: ns_inode(pid, ns) for ns in NAMESPACES}


def nspid(pid: int) -> tuple[int, ...]:
    """The ``NSpid`` line of ``/proc/PID/status``: the pid in each nested pid namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except OSError as e:
        raise RuntimeFailure(f"cannot read /proc/{pid}/status: {e.strerror}") from e
    return ()


def pid_is_guest_init(pid: int, pidns_inode: int) -> bool:
    """Whether ``pid`` is still PID 1 of the pid namespace recorded at start.

    Guards against pid reuse: a recycled pid is not PID 1 of that very namespace.
    """
    try:
        return ns_inode(pid, "pid") == pidns_inode and nspid(pid)[-1:] == (1,)
    except RuntimeFailure:
        return False


def exe_of(pid: int) -> str | None:
    """The executable ``pid`` runs, as the host sees its path, or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


async def wait_pid_exit(pid: int) -> None:
    """Wait until ``pid`` (any process, not only our child) has ended.

    Uses a pidfd, which becomes readable when the process exits; a pid that is already gone
    returns at once.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as e:
        raise RuntimeFailure(f"pidfd_open({pid}): {e.strerror}") from e
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
