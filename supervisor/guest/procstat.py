"""What /proc says about a process: its namespaces, its status. Standard library only.

The runtime uses these through :mod:`supervisor.guest.procs`; the ``vsv exec`` command imports
them directly, because :mod:`procs` brings trio along (tens of milliseconds at start-up).
"""

from __future__ import annotations

import os

from supervisor.errors import RuntimeFailure

NAMESPACES: tuple[str, ...] = ("pid", "mnt", "uts", "ipc", "net", "cgroup")


def ns_inode(pid: int, ns: str) -> int:
    """The inode number identifying the namespace ``ns`` of process ``pid``."""
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError as e:
        raise RuntimeFailure(f"cannot read /proc/{pid}/ns/{ns}: {e.strerror}") from e


def ns_inodes(pid: int) -> dict[str, int]:
    """Inode numbers of all the namespaces of ``pid`` listed in :data:`NAMESPACES`."""
    return {ns: ns_inode(pid, ns) for ns in NAMESPACES}


def status_fields(pid: int, *names: str) -> dict[str, str]:
    """Some fields of ``/proc/PID/status`` (name -> the rest of its line)."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key in names:
                    out[key] = value.strip()
    except OSError as e:
        raise RuntimeFailure(f"cannot read /proc/{pid}/status: {e.strerror}") from e
    return out


def nspid(pid: int) -> tuple[int, ...]:
    """The ``NSpid`` line of ``/proc/PID/status``: the pid in each nested pid namespace."""
    return tuple(int(x) for x in status_fields(pid, "NSpid").get("NSpid", "").split())


def pid_is_guest_init(pid: int, pidns_inode: int) -> bool:
    """Whether ``pid`` is still PID 1 of the pid namespace recorded at start, and alive.

    Guards against pid reuse: a recycled pid is not PID 1 of that very namespace. A zombie
    (an init that ended and that its parent has not reaped yet) still shows the namespace and
    the NSpid, but is no guest any more.
    """
    try:
        return ns_inode(pid, "pid") == pidns_inode and is_live_pid1(pid)
    except RuntimeFailure:
        return False


def is_live_pid1(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of its own pid namespace (nested in ours) and not a zombie,
    which still shows its NSpid after it ended. Raises RuntimeFailure when it is gone."""
    fields = status_fields(pid, "NSpid", "State")
    pids = fields.get("NSpid", "").split()
    return len(pids) >= 2 and pids[-1] == "1" and not fields.get("State", "").startswith(("Z", "X"))
