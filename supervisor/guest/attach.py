"""Run a command inside a running guest (``vsv exec``): its namespaces, root, cgroups.

This is what an admin reaches for as ``lxc-attach``, ``machinectl shell`` or ``virsh
lxc-enter-namespace``. The work happens in the *calling* process (the ``vsv`` command, as
root), never in the supervisor: the supervisor only says which pid is the guest's init, so no
API call can make it run a program, and a command that hangs holds no supervisor resource.

How a command enters a guest whose init is ``pid``:

1. ``pidfd_open(pid)`` pins the process; it is checked to be the init of a pid namespace of its
   own and, after the reads in step 2, still alive, so a pid reused in between is refused.
2. Read what to join: the cgroup of init in every hierarchy (``/proc/PID/cgroup``, mapped to the
   mounts in ``/proc/self/mountinfo``) and its root directory (``/proc/PID/root``, opened).
3. Fork. The child writes itself into every one of those cgroups (so the command is counted,
   limited, frozen and killed with the guest, and ``destroy`` takes it down too), joins the
   mount, uts, ipc, net, cgroup and pid namespaces (and the user namespace, for a guest with an
   ``<idmap>``) with one ``setns(pidfd, ...)``, chroots into the guest's root, and takes the
   guest's confinement exactly as init did (``forkserver.confine_self``: the bounding set, the
   seccomp filter, user and group, the permitted and effective sets). Joining a pid namespace
   only applies to children, so it forks once more: the grandchild, the first process of this
   command the guest can see, is confined from its first instruction; it changes directory and
   execs the command. The child waits for its end without reaping it and exits; the caller,
   a child subreaper, reaps the command itself, so the command's status is reported even when
   the child is killed with the guest's cgroups first (a guest's ``reboot -f``).

The confinement is read from init itself, not from the definition: the capability set is init's
bounding set (``CapBnd``), and the seccomp filter is compiled from it the way the start compiled
init's, so a command never gets more than the guest's init has, even if the definition was
changed since the guest started.

Standard input, output and error are the caller's. When the caller's stdin and stdout are a
terminal, the command gets a new pseudo-terminal instead, as its controlling terminal, and the
calling process relays between the two: a guest process never holds the admin's own terminal,
through which it could otherwise push keystrokes into the admin's shell (TIOCSTI) once the
command is over. While the command runs, the two outer processes ignore SIGINT and SIGQUIT (as
``system(3)`` does): a Ctrl-C reaches the command, whose status is then reported.

Exit status: the command's (128+N when a signal N ended it), else 125 when the guest could not
be entered, 126 when the command could not be run, 127 when it was not found (the convention of
``env``, ``nsenter`` and ``podman exec``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import select
import signal
import sys
import termios
import tty
from collections.abc import Mapping

import attrs

from supervisor.errors import RuntimeFailure
from supervisor.guest import confine
from supervisor.guest.forkserver import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    confine_self,
)
from supervisor.guest.ids import resolve_ids
from supervisor.guest.procstat import is_live_pid1, status_fields

#: the namespaces a guest gets (spawn.py); joining one the guest shares with the host is a no-op
JOIN_FLAGS = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP
)

EXIT_CANNOT_ENTER = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4


class CannotEnter(Exception):
    """The guest cannot be entered (gone, not a guest init, kernel refused); the text says why."""


@attrs.frozen
class Target:
    """What a command joins: init's pidfd, its cgroup.procs files, its root directory fd, and
    what confines it: init's capability set, the seccomp filter for it, the capabilities to
    drop (every other one the kernel has), and whether init is in a user namespace of its own.
    """

    pid: int
    pidfd: int
    procs_files: tuple[str, ...]
    root_fd: int
    caps: frozenset[str] = frozenset()
    cap_drop: tuple[int, ...] = ()
    seccomp: bytes = b""
    own_userns: bool = False

    def close(self) -> None:
        for fd in (self.pidfd, self.root_fd):
            os.close(fd)


#: one cgroup mount: (mount options, mount root, mount point); cgroup2 mounts have no options
CgroupMount = tuple[frozenset[str], str, str]


def cgroup_mounts(mountinfo: str) -> tuple[list[CgroupMount], list[CgroupMount]]:
    """The v1 and the cgroup2 mounts listed in ``/proc/self/mountinfo`` text, in its order."""
    v1: list[CgroupMount] = []
    v2: list[CgroupMount] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point = (confine.unescape_mountinfo(f) for f in fields[3:5])
        if tail[0] == "cgroup2":
            v2.append((frozenset(), root, point))
        elif tail[0] == "cgroup":
            v1.append((frozenset(tail[2].split(",")), root, point))
    return v1, v2


def procs_files(
    cgroup_text: str, mounts: tuple[list[CgroupMount], list[CgroupMount]]
) -> tuple[str, ...]:
    """The ``cgroup.procs`` file of each of a process's cgroups (``/proc/PID/cgroup`` text).

    A v1 line (``4:cpu,cpuacct:/path``) belongs to the first mount whose options include all of
    its controllers (or its ``name=``); the ``0::/path`` line to the first cgroup2 mount.
    Hierarchies not mounted here are skipped: nothing could be joined in them anyway.
    """
    v1, v2 = mounts
    out: list[str] = []
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers:
            need = set(controllers.split(","))
            found = next((m for m in v1 if need <= m[0]), None)
        else:
            found = v2[0] if v2 else None
        if found is None:
            continue
        _options, root, point = found
        if root != "/" and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]
        out.append(os.path.join(point, path.lstrip("/"), "cgroup.procs"))
    return tuple(out)


def open_target(pid: int) -> Target:
    """Pin the guest init ``pid`` and read what a command must join (see the module docstring)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise CannotEnter(f"process {pid}: {e.strerror}") from None
    try:
        return _read_target(pid, pidfd)
    except BaseException:
        os.close(pidfd)
        raise


def _read_target(pid: int, pidfd: int) -> Target:
    try:
        guest_init = is_live_pid1(pid)
    except RuntimeFailure:
        raise CannotEnter(f"process {pid}: {os.strerror(errno.ESRCH)}") from None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            cgroup_text = f.read()
        with open("/proc/self/mountinfo") as f:
            mounts = cgroup_mounts(f.read())
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CannotEnter(f"process {pid}: {e.strerror}") from None
    try:
        # what was read belongs to the pinned process only if that one is still alive now
        signal.pidfd_send_signal(pidfd, 0)
    except OSError as e:
        os.close(root_fd)
        raise CannotEnter(f"process {pid}: {e.strerror}") from None
    if not guest_init:
        os.close(root_fd)
        raise CannotEnter(f"process {pid} is not the init of a guest's pid namespace")
    try:
        caps, drop, program, own_userns = _confinement_of(pid)
    except (OSError, RuntimeFailure, ValueError) as e:
        os.close(root_fd)
        raise CannotEnter(f"process {pid}: cannot read its confinement: {e}") from None
    return Target(
        pid, pidfd, procs_files(cgroup_text, mounts), root_fd, caps, drop, program, own_userns
    )


def _confinement_of(pid: int) -> tuple[frozenset[str], tuple[int, ...], bytes, bool]:
    """Init's capability set (its bounding set), what to drop to get there, the seccomp filter
    its start compiled for that set, and whether it has a user namespace of its own."""
    from supervisor.guest import seccomp  # libseccomp: only this verb needs it

    caps = confine.parse_cap_mask(status_fields(pid, "CapBnd")["CapBnd"])
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    kept = set(confine.cap_numbers(caps))
    drop = tuple(n for n in range(last + 1) if n not in kept)
    own_userns = os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    program = seccomp.compile_profile(
        seccomp.profile_for(confine.seccomp_caps(caps, userns=own_userns))
    )
    return caps, drop, program, own_userns


@attrs.frozen
class Command:
    """What to run in the guest and as whom.

    ``user`` and ``group`` are names or numbers, looked up in the guest's own /etc/passwd and
    /etc/group once inside (so the guest's files, symlinks included, are read as the guest sees
    them); no user means root. A user with a home directory sets ``HOME``. ``env`` is the base
    environment (``vsv exec`` passes init's), ``overrides`` win over everything.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    overrides: Mapping[str, str] = attrs.field(factory=dict)
    cwd: str = "/"
    user: str | None = None
    group: str | None = None


def run_in_guest(target: Target, command: Command, *, tty: bool = False) -> int:
    """Run ``command`` inside ``target`` and wait for it: its exit status (see the docstring).

    Meant for a process of its own (``vsv exec``): it becomes a child subreaper and may reap
    any child of the caller.

    ``tty``: the command gets a new pseudo-terminal (its controlling terminal), relayed to this
    process's stdin and stdout, which must be a terminal (put in raw mode meanwhile).
    """
    if not command.argv:
        raise ValueError("no command to run")
    with _ignoring_terminal_signals():
        sys.stdout.flush()
        sys.stderr.flush()
        master, slave = os.openpty() if tty else (-1, -1)
        try:
            if tty:
                _copy_window_size(0, slave)
            # the command is our grandchild, and becomes our child (or zombie) when the process
            # between ends: we reap it ourselves, so its status survives that process (_child)
            _become_subreaper()
            pid = os.fork()
            if pid == 0:
                if tty:
                    os.close(master)
                _child(target, command, slave)  # never returns
            if tty:
                os.close(slave)
                slave = -1
                _relay(master, pid)
            status = os.waitpid(pid, 0)[1]
            # the process between leaves the command to us, ended or not (see _child); it has
            # no command to leave when it failed before the fork, and then its status is ours
            command_status = _orphan_status()
            return _status(command_status if command_status is not None else status)
        finally:
            for fd in (master, slave):
                if fd >= 0:
                    os.close(fd)


def _become_subreaper() -> None:
    """Adopt our descendants that lose their parent (PR_SET_CHILD_SUBREAPER)."""
    if _libc.prctl(ctypes.c_int(_PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(1), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _orphan_status() -> int | None:
    """The wait status of the command once the process between has ended: the command (or
    its zombie) was re-parented to us before we saw that process end (the kernel re-parents
    children first). None when there is no command (the process between failed before it)."""
    try:
        return os.waitpid(-1, 0)[1]
    except ChildProcessError:
        return None


def _copy_window_size(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))


def _relay(master: int, child: int) -> None:
    """Copy the caller's terminal to the command's and back until the command has ended.

    The caller's terminal is raw meanwhile (the command's own terminal does the line editing
    and turns Ctrl-C into SIGINT), and its window size follows SIGWINCH. The relay ends when
    the command's terminal is closed by every process, or when the command has ended (then what
    it wrote is drained first): a daemon it left holding the terminal does not keep it going.
    """
    saved = termios.tcgetattr(0)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(0, master))
    done = os.pidfd_open(child)
    try:
        tty.setraw(0)
        sources = [0, master, done]
        while True:
            ready, _, _ = select.select(sources, [], [])
            if master in ready and not _pump(master, 1):
                return
            if 0 in ready and not _pump(0, master):
                sources.remove(0)  # end of the caller's input: the command keeps running
            if done in ready:
                os.set_blocking(master, False)
                with contextlib.suppress(BlockingIOError):
                    while _pump(master, 1):
                        pass
                return
    finally:
        os.close(done)
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def _pump(src: int, dst: int) -> bool:
    """Copy what one read of ``src`` gives to ``dst``; False at its end (EOF, or EIO: a pty
    whose other side every process has closed)."""
    try:
        data = os.read(src, 65536)
    except OSError as e:
        if e.errno == errno.EIO:
            return False
        raise
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return bool(data)


class _ignoring_terminal_signals:
    """SIGINT and SIGQUIT ignored in a block, for the command to get the terminal's Ctrl-C."""

    def __enter__(self) -> None:
        self.saved = [(s, signal.signal(s, signal.SIG_IGN)) for s in _TERMINAL_SIGNALS]

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved:
            signal.signal(sig, handler)


_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def _status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _child(target: Target, command: Command, terminal: int) -> None:
    """Join the guest, take its confinement, fork the command, pass its status on. Never
    returns.

    The confinement is taken here, before the fork that puts the command into the guest's pid
    namespace: this process is not in that namespace, so no process of the guest can see it,
    let alone ptrace it, while it still has the host's capabilities; the command appears in the
    guest already confined (and not dumpable until its exec, which keeps a guest without
    capabilities over the host's user namespace out of its memory meanwhile).
    """
    try:
        _close_all_but(target.pidfd, target.root_fd, terminal)
        try:
            _join(target)
        except OSError as e:
            _fail(EXIT_CANNOT_ENTER, f"cannot enter the guest: {e.strerror or e}")
        os.close(target.pidfd)
        os.close(target.root_fd)
        env = _confine(target, command)
        pid = os.fork()
        if pid == 0:
            if terminal >= 0:
                _take_terminal(terminal)
            _grandchild(command, env)
        if terminal >= 0:
            os.close(terminal)  # the command's end of it must be the last one open
        # wait for the command's end without reaping it: the caller (a subreaper) gets it and
        # its status when we exit, also if we are killed first (we are in the guest's cgroups,
        # which a guest's reboot or destroy kills), so no moment exists where the status is
        # only in this process
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        os._exit(0)
    except BaseException:
        os._exit(EXIT_CANNOT_ENTER)  # nothing may return into the caller's code from a fork


def _close_all_but(*keep: int) -> None:
    """Close every descriptor above stdio but ``keep``: nothing of the caller's (its API
    connection to the supervisor, say) must reach a process inside the guest, where the
    guest's root could take it from the process before it execs."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _join(target: Target) -> None:
    for path in target.procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    flags = JOIN_FLAGS | (CLONE_NEWUSER if target.own_userns else 0)
    if _libc.setns(target.pidfd, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into the guest's namespaces: {os.strerror(err)}")
    os.fchdir(target.root_fd)
    os.chroot(".")


def _take_terminal(terminal: int) -> None:
    """Make ``terminal`` the command's stdio and controlling terminal, in a session of its own."""
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(terminal, fd)
    if terminal > 2:
        os.close(terminal)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _confine(target: Target, command: Command) -> dict[str, str]:
    """Resolve the user in the guest, take init's confinement as that user; the environment."""
    try:
        uid, gid, home = resolve_ids(
            command.user,
            command.group,
            _read_text("/etc/passwd") if command.user or command.group else "",
            _read_text("/etc/group") if command.group else "",
            fields=("user", "group"),
        )
    except RuntimeFailure as e:
        _fail(EXIT_CANNOT_RUN, str(e))
    env = dict(command.env)
    if home:
        env["HOME"] = home
    env.update(command.overrides)
    try:
        _not_dumpable()
        keep = confine.cap_numbers(target.caps)
        confine_self(keep, target.cap_drop, target.seccomp, uid or 0, gid or 0)
    except OSError as e:
        _fail(EXIT_CANNOT_RUN, f"cannot take the guest's confinement as uid {uid or 0} "
              f"gid {gid or 0}: {e.strerror or e}")  # fmt: skip
    return env


def _not_dumpable() -> None:
    if _libc.prctl(ctypes.c_int(_PR_SET_DUMPABLE), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE): {os.strerror(err)}")


def _grandchild(command: Command, env: dict[str, str]) -> None:
    for sig in (*_TERMINAL_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.chdir(command.cwd)
    except OSError as e:
        _fail(EXIT_CANNOT_RUN, f"{command.cwd}: {e.strerror}")
    try:
        os.execvpe(command.argv[0], list(command.argv), env)
    except OSError as e:
        code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_RUN
        _fail(code, f"{command.argv[0]}: {e.strerror}")


def _read_text(path: str) -> str:
    """A file of the guest, or "" when it has none (a root without /etc/group, say)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def guest_environ(pid: int) -> dict[str, str]:
    """The environment the guest's init was started with (``/proc/PID/environ``)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CannotEnter(f"process {pid}: {e.strerror}") from None
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="surrogateescape").partition("=")
        if sep and key:
            out[key] = value
    return out


def _fail(code: int, text: str) -> None:
    try:
        os.write(2, f"vsv exec: {text}\n".encode())
    finally:
        os._exit(code)
