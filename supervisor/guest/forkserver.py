"""The child side of starting a guest, and a small fork server ("zygote") that runs it.

Why a fork server
-----------------
Setting up a guest between fork and exec (cgroups, unshare(2), hostname, mounts) needs code to
run in the child, so the supervisor cannot use vfork/posix_spawn: ``subprocess`` with a
``preexec_fn`` does a real fork() of the whole supervisor (about 2.5 ms, growing with its RSS),
and ``Popen`` blocks the event loop until the child has exec'd, which serializes concurrent
starts. The fork server is a separate ``python -I -S`` process started once, importing only the
standard library (this file must stay that way: it runs as a script, without the venv's
site-packages). Its RSS is a few MB, so its fork is cheap, and the supervisor only sends it a
message and waits on a pipe.

Protocol (one SOCK_SEQPACKET message per start, the supervisor's end non-blocking):
the payload is ``marshal`` of ``(argv, env, hostname, clone_flags, netns_path, procs_files,
mounts)`` (``mounts`` as ``(kind, target, source, options, optional)`` tuples), with SCM_RIGHTS
``[report_fd]`` or ``[report_fd, out_fd]``. The server clones a child with CLONE_PARENT, so the
child (the future wrapper) is the *supervisor's* child: the supervisor reaps it and gets the
wrapper's exit status, exactly as if it had forked it itself; the server keeps no state about
it. The child writes ``P<pid>\\n`` on ``report_fd``, sets itself up, and execs; ``report_fd`` is
close-on-exec, so the supervisor reads EOF once exec succeeded. A failure appends ``E<text>``
(setup) or ``X<text>`` (exec) before the child exits; a failure of the clone itself is
``E<text>`` without a pid, written by the server.

Embryos (the default start path): a request ``marshal`` of ``("embryo", clone_flags)`` with
SCM_RIGHTS ``[sock]`` (one end of a SOCK_SEQPACKET pair the supervisor keeps the other end of)
makes the server clone a child with ``CLONE_PARENT | clone_flags``, so the child is born as PID 1
of a new pid namespace (and in new uts/ipc/net namespaces), and send ``P<pid>`` on ``sock`` (the
child cannot: it sees itself as pid 1). The child, an *embryo*, waits on ``sock`` for one
activation message: ``marshal`` of :data:`Activation` with SCM_RIGHTS ``[]`` or ``[out_fd]``, and
does what ``unshare --fork --mount-proc --root`` would do in a second process, in two phases
(:func:`become_guest`): first the mount namespace (made now, so the guest sees the host's mount
table of *now*, not of when the embryo was made), hostname and mounts, while the supervisor makes
the guest's cgroup and runs the prepare hooks; then, on ``G<flags>`` (SCM_RIGHTS: the guest's
netns when a hook made one), the network namespace, chroot, a fresh /proc, user, exec. The
supervisor moves the embryo into the guest's cgroup before it sends ``G``, so init and everything
it starts are in the cgroup from their first instruction. ``sock`` is close-on-exec:
EOF says init runs; ``E<text>``/``X<text>`` before it say what failed. EOF before any activation
(the supervisor closed its end or died) makes the embryo exit. No process stays between the
supervisor and the guest's init: the supervisor is init's parent and reaps its real status.

Lifetime: the server gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG) and exits on EOF
of its socket. PDEATHSIG is cleared in cloned children, so guests survive a supervisor SIGKILL
(re-adoption relies on that). The server runs in a session of its own, so a terminal's Ctrl-C
does not reach it; children reset the signals Python ignores (SIGPIPE, SIGXFSZ) before exec,
since an ignored signal stays ignored across exec and the wrapper must be killable by the
signal that killed the guest's init.

Raw clone: ``os.fork`` cannot pass CLONE_PARENT, so the server calls clone(2) through ctypes
(``PyDLL``, keeping the GIL held). The server is single-threaded, so skipping Python's at-fork
bookkeeping is safe for the few steps the child runs before exec.
"""

from __future__ import annotations

import array
import ctypes
import gc
import marshal
import os
import signal
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PARENT = 0x00008000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

#: clone(2)'s number where the raw clone is known to work; elsewhere spawn uses the fork path
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}
_SYS_MOUNT_SETATTR = 442  # x86_64 and every other architecture using the generic table
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 1
_PR_SET_PDEATHSIG = 1
#: an embryo's nice value from birth until ``G`` (see _embryo)
EMBRYO_NICE = 19

#: (kind, target, source, options, optional): one step of building the guest's mount tree
MountTuple = tuple[str, str, str, str, bool]
#: (argv, env, hostname, unshare_flags, mounts, root, wd, uid, gid): what an embryo is asked to
#: become (``unshare_flags``: the namespaces to make at once, the mount namespace at least)
Activation = tuple[
    tuple[str, ...],
    tuple[tuple[str, str], ...],
    str,
    int,
    tuple[MountTuple, ...],
    str,
    str,
    "int | None",
    "int | None",
]
#: (argv, env, hostname, clone_flags, netns_path, procs_files, mounts): one start request
Request = tuple[
    tuple[str, ...],
    tuple[tuple[str, str], ...],
    str,
    int,
    "str | None",
    tuple[str, ...],
    tuple[MountTuple, ...],
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


# -- the child side (runs between fork and exec, in either spawn path) ------------------------


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {fstype or 'bind'} {source or ''} on {target}",
    )


def run_mount(op: MountTuple) -> None:
    """Do one mount step (see ``spawn.MountOp`` for the kinds)."""
    kind, target, source, options, optional = op
    if optional and not os.path.isdir(target):
        return
    if kind == "private":
        _mount(None, target, None, MS_REC | MS_PRIVATE, "")
    elif kind == "bind":
        _mount(source, target, None, MS_BIND | MS_REC, "")
    elif kind == "ro":
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, "")
    elif kind == "ro_tree":
        attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
        rc = _libc.syscall(
            _SYS_MOUNT_SETATTR,
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(target.encode()),
            ctypes.c_uint(_AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        _check(rc, f"mount_setattr read-only {target}")
    elif kind == "tmpfs":
        _mount(source or "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
    elif kind == "devtmpfs":
        _mount(source or "tmpfs", target, "tmpfs", MS_NOSUID | MS_NOEXEC, options)
    elif kind == "sysfs":
        _mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    elif kind == "devpts":
        _mount("devpts", target, "devpts", MS_NOSUID | MS_NOEXEC, options)
    elif kind == "node":
        # source is "c MAJOR MINOR", options the octal mode
        _c, major, minor = source.split()
        os.mknod(target, stat.S_IFCHR | int(options, 8), os.makedev(int(major), int(minor)))
        os.chmod(target, int(options, 8))  # mknod applies the umask
    elif kind == "file":
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
    elif kind == "dir":
        os.makedirs(target, exist_ok=True)
    elif kind == "symlink":
        os.symlink(source, target)


def child_setup(
    procs_files: tuple[str, ...],
    netns_path: str | None,
    clone_flags: int,
    hostname: str,
    mounts: tuple[MountTuple, ...],
) -> None:
    """Join the cgroup, the network namespace, unshare, set the hostname, build the mounts.

    Runs in the child before it execs the wrapper, so the wrapper and everything below it are
    in the guest's cgroup and namespaces from their first instruction. Raises OSError.
    """
    for f in procs_files:
        fd = os.open(f, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        except OSError as e:
            raise OSError(e.errno, f"cannot write '0' to {f}: {e.strerror}") from None
        finally:
            os.close(fd)
    if netns_path is not None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns {netns_path}")
        finally:
            os.close(fd)
    _check(_libc.unshare(clone_flags), "unshare")
    socket.sethostname(hostname)
    for op in mounts:
        run_mount(op)


# -- the server ---------------------------------------------------------------------------------

_pylibc = ctypes.PyDLL(None, use_errno=True)


def _clone_parent(flags: int = 0) -> int:
    """clone(CLONE_PARENT | flags | SIGCHLD): 0 in the child, its pid in the caller, -errno."""
    nr = SYS_CLONE.get(os.uname().machine)
    if nr is None:
        return -38  # ENOSYS; spawn_mode() does not pick this path there
    how = CLONE_PARENT | flags | signal.SIGCHLD
    pid = int(_pylibc.syscall(ctypes.c_long(nr), ctypes.c_ulong(how),
                              ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0)))  # fmt: skip
    return -ctypes.get_errno() if pid < 0 else pid


def _child(request: Request, report_fd: int, out_fd: int) -> None:
    """In the cloned child: report the pid, set up, exec. Never returns."""
    stage = b"E"
    code = 1
    try:
        argv, env, hostname, flags, netns_path, procs_files, mounts = request
        os.write(report_fd, b"P%d\n" % os.getpid())
        _reset_signals()
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(out_fd if out_fd >= 0 else null, 1)
        os.dup2(out_fd if out_fd >= 0 else null, 2)
        child_setup(procs_files, netns_path, flags, hostname, mounts)
        stage, code = b"X", 127
        os.execve(argv[0], argv, dict(env))
    except BaseException as e:
        try:
            os.write(report_fd, stage + f"{type(e).__name__}: {e}".encode()[:3800])
        except OSError:
            pass
    os._exit(code)


def _reset_signals() -> None:
    """Undo what Python did to signals: an ignored signal stays ignored across exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def become_guest(request: Activation, out_fd: int, sock: socket.socket, priority: int = 0) -> None:
    """In an activated embryo: build the guest in two phases around the supervisor's ``G``.

    Phase 1 (while the supervisor makes the cgroup and runs the prepare hooks): stdio, the mount
    namespace, hostname, every mount but sysfs. ``G<flags>`` (with the guest's netns fd when a
    hook made one) says the embryo is in the guest's cgroup and the hooks are done. Phase 2: join
    that netns or unshare what ``flags`` says, mount sysfs (it shows the netns of whoever mounts
    it), chroot, a fresh /proc, user and group, exec. Raises OSError when the setup fails,
    :class:`_ExecFailed` when the exec does; never returns otherwise.
    """
    argv, env, hostname, flags, mounts, root, wd, uid, gid = request
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(out_fd if out_fd >= 0 else null, 1)
    os.dup2(out_fd if out_fd >= 0 else null, 2)
    _check(_libc.unshare(flags), "unshare")
    socket.sethostname(hostname)
    for op in mounts:
        if op[0] != "sysfs":
            run_mount(op)
    go, netns_fd = _recv_with_fd(sock)
    if not go.startswith(b"G"):
        raise OSError(0, "the supervisor gave up on this start" if not go else f"got {go!r}")
    os.setpriority(os.PRIO_PROCESS, 0, priority)  # the supervisor did so too; init inherits it
    if netns_fd >= 0:
        _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns into the guest's network namespace")
        os.close(netns_fd)
    late = int(go[1:] or b"0")
    if late:
        _check(_libc.unshare(late), "unshare")
    for op in mounts:
        if op[0] == "sysfs":
            run_mount(op)
    if root != "/":
        os.chroot(root)
    os.chdir(wd)
    # a proc of the new pid namespace (we are its PID 1), mounted inside the new root
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    if gid is not None or uid is not None:
        os.setgroups([])
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as e:
        raise _ExecFailed(f"init {argv[0]} could not be executed: {e.strerror}") from None


def _recv_fds(sock: socket.socket, most: int) -> tuple[bytes, list[int]]:
    """One message and the fds passed with it (close-on-exec, at most ``most``); blocking."""
    fd_size = array.array("i").itemsize
    data, ancdata, _flags, _addr = sock.recvmsg(
        1 << 20, socket.CMSG_SPACE(most * fd_size), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % fd_size])
            fds.extend(got)
    return data, fds


def _recv_with_fd(sock: socket.socket) -> tuple[bytes, int]:
    """One message and the first fd passed with it (-1 if none; any others are closed)."""
    data, fds = _recv_fds(sock, 2)
    for extra in fds[1:]:
        os.close(extra)
    return data, fds[0] if fds else -1


class _ExecFailed(Exception):
    """The guest's init could not be executed (reported as ``X``, exit 127)."""


def _embryo(sock_fd: int, server_fd: int) -> None:
    """In a cloned embryo: wait for the activation, become the guest's init. Never returns."""
    code = 1
    sock = socket.socket(fileno=sock_fd)
    try:
        os.close(server_fd)
        _reset_signals()
        os.setsid()
        # until G, yield to everything else: phase 1 runs beside the supervisor's own work and
        # must not preempt it on its CPU; the supervisor gives us our priority back with G
        priority = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, EMBRYO_NICE)
        data, out_fd = _recv_with_fd(sock)
        if not data:
            os._exit(0)  # the supervisor closed the pool, or died
        become_guest(marshal.loads(data), out_fd, sock, priority)
    except BaseException as e:
        if isinstance(e, _ExecFailed):
            stage, code, text = b"X", 127, str(e)
        else:
            stage, code, text = b"E", 1, f"{type(e).__name__}: {e}"
        try:
            sock.send(stage + text.encode()[:3800])
        except OSError:
            pass
    os._exit(code)


def _handle_embryo(request: tuple[str, int], fds: list[int], server_fd: int) -> None:
    """Clone one embryo in new namespaces and tell the supervisor its pid on its socket."""
    _kind, flags = request
    pid = _clone_parent(flags)
    if pid == 0:
        _embryo(fds[0], server_fd)
    os.write(fds[0], b"P%d" % pid if pid > 0 else f"Eclone: {os.strerror(-pid)}".encode())


def _handle(data: bytes, fds: list[int], server_fd: int = -1) -> None:
    report_fd = fds[0] if fds else -1
    out_fd = fds[1] if len(fds) > 1 else -1
    if report_fd < 0:
        return
    try:
        loaded: Request | tuple[str, int] = marshal.loads(data)
    except (ValueError, EOFError, TypeError) as e:
        os.write(report_fd, f"Ebad request: {e}".encode())
        return
    if len(loaded) == 2:
        _handle_embryo(loaded, fds, server_fd)
        return
    request: Request = loaded
    pid = _clone_parent()
    if pid == 0:
        _child(request, report_fd, out_fd)
    elif pid < 0:
        os.write(report_fd, f"Eclone: {os.strerror(-pid)}".encode())


def serve(sock_fd: int, parent_pid: int) -> None:
    """Answer start requests on ``sock_fd`` until the supervisor closes it or dies."""
    # no cyclic GC: a collection in a cloned child would touch (copy) every object's page
    gc.disable()
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent_pid:
        return  # the supervisor died before PDEATHSIG was armed
    sock = socket.socket(fileno=sock_fd)
    sock.set_inheritable(False)
    while True:
        data, fds = _recv_fds(sock, 4)
        if not data and not fds:
            return
        try:
            _handle(data, fds, sock_fd)
        except OSError:
            pass  # the requester went away; its report pipe tells it nothing more
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
