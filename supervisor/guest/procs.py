"""Small helpers about host processes: children, namespaces, waiting for a pid that is not ours.

They exist for the guest runtime's edge: finding a guest's init below its wrapper, recording the
namespaces it lives in, and re-adopting a guest after a supervisor restart, when the wrapper is no
longer our child and only a pidfd can tell us it ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

import trio

from supervisor.errors import RuntimeFailure

# reading a process's namespaces and status needs no trio: they live apart so that the `vsv`
# command can use them without importing it (re-exported here for the runtime's callers)
from supervisor.guest.procstat import NAMESPACES as NAMESPACES
from supervisor.guest.procstat import ns_inode as ns_inode
from supervisor.guest.procstat import ns_inodes as ns_inodes
from supervisor.guest.procstat import nspid as nspid
from supervisor.guest.procstat import pid_is_guest_init as pid_is_guest_init

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
#: below this, :class:`FineSleeper` uses its timerfd rather than trio.sleep
_EPOLL_RESOLUTION = 0.001

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class FineSleeper:
    """Sleeps shorter than a millisecond inside trio, through a timerfd.

    trio's sleeps end in epoll_wait, whose timeout is whole milliseconds (rounded up), so
    ``trio.sleep(0.0002)`` takes at least 1 ms; a timerfd becomes readable at the
    microsecond. Used while polling for an event that takes a fraction of a millisecond (a
    guest's init exec). Close it (or use it as a context manager) when done.
    """

    def __init__(self) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise RuntimeFailure(f"timerfd_create: {os.strerror(err)}")
        self._fd: int = fd

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, precisely when below a millisecond (cancellable either way)."""
        if seconds >= _EPOLL_RESOLUTION or self._fd < 0:
            await trio.sleep(seconds)
            return
        ns = max(int(seconds * 1e9), 1000)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if _libc.timerfd_settime(self._fd, 0, ctypes.byref(spec), None) != 0:
            await trio.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while True:
            try:
                os.read(self._fd, 8)
                return
            except BlockingIOError:
                if time.monotonic() > deadline + _EPOLL_RESOLUTION:
                    return  # never reached in practice; guards a timer that did not fire
                await trio.lowlevel.wait_readable(self._fd)

    def close(self) -> None:
        """Release the timerfd."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> FineSleeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (its main thread's), empty if it has none or is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def reap_if_child(pid: int) -> None:
    """Reap ``pid`` if it is an ended child of this process; anything else is left alone.

    An adopted guest's init is normally not our child (its parent died); when a supervisor is
    restarted inside the same process (the stress harness does that), it is, and would stay a
    zombie, which :func:`pid_is_guest_init` would then have to tell from a live init.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def signal_guest_init(pid: int, pidns_inode: int, sig: int) -> bool:
    """Signal ``pid`` only if it is still PID 1 of the pid namespace ``pidns_inode``.

    A pidfd pins the process while /proc is checked: if the pid was reused after the pidfd was
    opened, the pinned process is the one that ended and the signal fails (False).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError as e:
        raise RuntimeFailure(f"pidfd_open({pid}): {e.strerror}") from e
    try:
        if not pid_is_guest_init(pid, pidns_inode):
            return False
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


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
