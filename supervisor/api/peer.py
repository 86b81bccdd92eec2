"""Whether the process on the other end of a read-write connection shares our pid and mount
namespaces.

Defence in depth: guests are already kept away from the socket paths, but if a path ever leaks
into a guest (a bind mount, a passed file descriptor to a directory), a process in the guest's
namespaces must still not be able to drive the supervisor. The read-write socket therefore serves
only peers whose pid and mount namespaces are the supervisor's own; the read-only socket does not
check (it is world-connectable by design).

Theory of operation:

- The kernel remembers which process connected (``SO_PEERCRED``, ``SO_PEERPIDFD``). We read that
  process's namespaces as ``/proc/PID/ns/{pid,mnt}`` and compare (device, inode) with our own,
  read once from ``/proc/self/ns`` when the server starts.
- A pid alone can be reused between the moment we learn it and the moment we read
  ``/proc/PID/ns``. So where the kernel offers it (Linux 6.5+), we ask for a pidfd of the peer
  (``SO_PEERPIDFD``), read its pid from ``/proc/self/fdinfo/FD``, read the namespaces, and then
  check that the pidfd's process is still alive: a process that is still alive still holds its
  pid, so the namespaces we read were its own. Older kernels fall back to ``SO_PEERCRED``'s pid
  and accept that (tiny) window.
- A pid of 0 means the peer lives in a pid namespace we cannot see (an ancestor or a sibling):
  refused. -1 in fdinfo means it has exited: refused, as is any peer whose namespaces cannot be
  read (a zombie has none any more). Every uncertainty refuses: this is a guard.
- What is checked is the process that called ``connect``. A process that connects and then hands
  the descriptor to another (``SCM_RIGHTS``) is judged as the connector; stopping that needs the
  socket path kept away from foreign namespaces, which the other layer does.

The decision (:meth:`Namespaces.differing`, :func:`parse_fdinfo_pid`, :class:`Verdict`) is pure;
:meth:`NamespaceGuard.check` is the thin edge that collects the facts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct

import attrs

from supervisor.errors import RuntimeFailure

#: ``SO_PEERPIDFD`` (Linux 6.5+); Python 3.11's socket module does not define it
SO_PEERPIDFD: int = getattr(socket, "SO_PEERPIDFD", 77)

#: the namespaces a read-write peer must share with the supervisor
CHECKED = ("pid", "mnt")

_NAMES = {"pid": "pid", "mnt": "mount"}


@attrs.frozen
class NamespaceId:
    """One namespace as the kernel names it: the nsfs device and inode of ``/proc/PID/ns/X``."""

    dev: int
    ino: int


@attrs.frozen
class Namespaces:
    """The pid and mount namespaces of one process."""

    pid: NamespaceId
    mnt: NamespaceId

    @classmethod
    def of_process(cls, proc_dir: str) -> Namespaces:
        """Read ``proc_dir``/ns/{pid,mnt} (``/proc/self`` or ``/proc/PID``); OSError if gone."""
        ids = {}
        for name in CHECKED:
            st = os.stat(f"{proc_dir}/ns/{name}")
            ids[name] = NamespaceId(st.st_dev, st.st_ino)
        return cls(pid=ids["pid"], mnt=ids["mnt"])

    def differing(self, other: Namespaces) -> tuple[str, ...]:
        """The names of the namespaces (``"pid"``, ``"mnt"``) in which ``other`` is elsewhere."""
        return tuple(name for name in CHECKED if getattr(self, name) != getattr(other, name))


def parse_fdinfo_pid(text: str) -> int | None:
    """The ``Pid:`` of a pidfd's ``/proc/self/fdinfo/FD``; None when there is no such line.

    The kernel writes the pid as seen from the pid namespace of that /proc: -1 once the process
    has exited, 0 when it is not visible from there.
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == "Pid":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


@attrs.frozen
class Verdict:
    """Whether a peer may use the read-write socket, and if not, why.

    ``differs`` names the namespaces the peer is not sharing with us; ``problem`` says why the
    peer could not be identified at all. A peer is allowed only when both are empty.
    """

    pid: int | None
    differs: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def allowed(self) -> bool:
        return not self.differs and self.problem is None

    def reason(self) -> str:
        """One line for the supervisor's log: which namespaces differ, or what went wrong."""
        if self.problem is not None:
            return self.problem
        if self.differs:
            names = " and ".join(_NAMES[d] for d in self.differs)
            return f"its {names} namespace{'s differ' if len(self.differs) > 1 else ' differs'}"
        return "it shares the supervisor's namespaces"

    def detail(self) -> str:
        """What the refused client is told (the ``detail`` of its 403 answer)."""
        if self.differs:
            what = "the peer's " + self.reason().removeprefix("its ") + " from the supervisor's"
        else:
            what = self.reason()
        return (
            f"{what}, so the read-write API refuses it as defence in depth: it serves only "
            "processes in the supervisor's own pid and mount namespaces (the read-only socket "
            "serves everyone)"
        )


def judge(own: Namespaces, pid: int | None, theirs: Namespaces | None, *, alive: bool) -> Verdict:
    """The verdict from the collected facts (pure).

    ``pid`` is the peer's pid in our pid namespace (0: invisible, -1: exited, None: unknown);
    ``theirs`` its namespaces when they could be read; ``alive`` whether it still held its pid
    after they were read.
    """
    if pid is None:
        return Verdict(None, problem="the peer process could not be identified")
    if pid == 0:
        return Verdict(0, problem="the peer is in a pid namespace the supervisor cannot see")
    if pid < 0 or theirs is None or not alive:
        return Verdict(pid if pid > 0 else None, problem="the peer process has exited")
    return Verdict(pid, differs=own.differing(theirs))


@attrs.frozen
class NamespaceGuard:
    """Checks read-write peers against the supervisor's own namespaces (see the module doc).

    ``use_pidfd=False`` skips ``SO_PEERPIDFD`` (what an older kernel does by itself); tests use
    it to cover the fallback.
    """

    own: Namespaces
    use_pidfd: bool = True

    @classmethod
    def for_this_process(cls, *, use_pidfd: bool = True) -> NamespaceGuard:
        """The guard for this process's namespaces (read once: the supervisor never moves)."""
        try:
            own = Namespaces.of_process("/proc/self")
        except OSError as exc:
            raise RuntimeFailure(
                f"api: cannot read the supervisor's own namespaces in /proc/self/ns: "
                f"{exc.strerror or exc}"
            ) from exc
        return cls(own, use_pidfd=use_pidfd)

    def check(self, sock: socket.socket) -> Verdict:
        """The verdict on the process that connected ``sock``."""
        pidfd = _peer_pidfd(sock) if self.use_pidfd else None
        if pidfd is None:
            return self._check_pid(_peercred_pid(sock), None)
        if pidfd < 0:
            return Verdict(None, problem="the kernel gave no pidfd for the peer")
        try:
            return self._check_pid(_pidfd_pid(pidfd), pidfd)
        finally:
            os.close(pidfd)

    def _check_pid(self, pid: int | None, pidfd: int | None) -> Verdict:
        theirs: Namespaces | None = None
        if pid is not None and pid > 0:
            try:
                theirs = Namespaces.of_process(f"/proc/{pid}")
            except OSError:
                theirs = None
        alive = pidfd is None or _pidfd_alive(pidfd)
        return judge(self.own, pid, theirs, alive=alive)


def _peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd of the peer; None where the kernel lacks SO_PEERPIDFD; -1 when it refused one."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return None
        return -1


def _pidfd_pid(pidfd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            return parse_fdinfo_pid(f.read())
    except OSError:
        return None


def _pidfd_alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # EPERM cannot happen as root; any other failure: we cannot vouch for it
        return False
    return True


def _peercred_pid(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", raw)[0]
    return pid
