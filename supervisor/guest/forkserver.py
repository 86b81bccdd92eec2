"""The embryo side of starting a guest, and a small fork server ("zygote") that clones embryos.

Why a fork server
-----------------
Setting up a guest before its init runs (namespaces, hostname, mounts, root switch,
capabilities, seccomp) needs code to run in the process that becomes init, so the supervisor
cannot use vfork/posix_spawn; a fork of the supervisor itself costs about 2.5 ms and grows with
its RSS. The fork server is a separate ``python -I -S`` process started once, importing only the
standard library (this file must stay that way: it runs as a script, without the venv's
site-packages). Its RSS is a few MB, so its clones are cheap.

Protocol: a request ``marshal`` of ``("embryo", clone_flags)`` with SCM_RIGHTS ``[sock]`` (one
end of a SOCK_SEQPACKET pair the supervisor keeps the other end of) makes the server clone a
child with ``CLONE_PARENT | clone_flags``, so the child is the *supervisor's* child, born as PID 1
of a new pid namespace (and in new uts/ipc/net namespaces), and send ``P<pid>`` on ``sock`` (the
child cannot: it sees itself as pid 1). The child, an *embryo*, waits on ``sock`` for one
activation message: ``marshal`` of :data:`Activation` with SCM_RIGHTS ``[]`` or ``[out_fd]``, and
becomes the guest in two phases (:func:`become_guest`): first the mount namespace (made now, so
the guest sees the host's mount table of *now*, not of when the embryo was made), hostname and
the guest's tree, while the supervisor makes the guest's cgroup and runs the prepare hooks;
then, on ``G<flags>`` (SCM_RIGHTS: the guest's netns when a hook made one), the network and
cgroup namespaces, sysfs, cgroupfs and /proc, the root switch, the confinement
(:func:`confine_self`) and the exec. The supervisor moves the embryo into the guest's cgroup
before it sends ``G``, so init and everything it starts are in the cgroup from their first
instruction. ``sock`` is close-on-exec: EOF says init runs; ``E<text>``/``X<text>`` before it say
what failed. EOF before any activation (the supervisor closed its end or died) makes the embryo
exit. No process stays between the supervisor and the guest's init: the supervisor is init's
parent and reaps its real status.

Lifetime: the server gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG) and exits on EOF
of its socket. PDEATHSIG is cleared in cloned children, so guests survive a supervisor SIGKILL
(re-adoption relies on that). The server runs in a session of its own, so a terminal's Ctrl-C
does not reach it; embryos reset the signals Python ignores (SIGPIPE, SIGXFSZ) before exec,
since an ignored signal stays ignored across exec.

Raw clone: ``os.fork`` cannot pass CLONE_PARENT, so the server calls clone(2) through ctypes
(``PyDLL``, keeping the GIL held). The server is single-threaded, so skipping Python's at-fork
bookkeeping is safe for the few steps the child runs before exec.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import gc
import marshal
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PARENT = 0x00008000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

#: clone(2)'s and pivot_root(2)'s numbers where the embryo path is known to work (glibc wraps
#: neither the way we need: clone without a function to call, pivot_root not at all)
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}
# x86_64 and every other architecture using the generic table share these
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 4
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 1
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: an embryo's nice value from birth until ``G`` (see _embryo)
EMBRYO_NICE = 19

#: (kind, target, source, options, optional): one step of building the guest's mount tree
MountTuple = tuple[str, str, str, str, bool]
#: what an embryo is asked to become: (argv, env, hostname, unshare_flags, mounts, late_mounts,
#: root, wd, uid, gid, caps, cap_drop, seccomp, own_net, pivot, resys). ``unshare_flags``: the
#: namespaces to make at once, the mount namespace at least; ``mounts`` are built before ``G``,
#: ``late_mounts`` after it; ``root`` becomes ``/``; ``caps`` are the capability numbers kept,
#: ``cap_drop`` the ones dropped from the bounding set; ``seccomp`` the filter program
#: (:func:`install_seccomp`); ``own_net``: the guest has a network namespace of its own, whose
#: ``lo`` the embryo brings up (as libvirt's LXC driver does; a guest without net_admin could
#: not); ``pivot``: switch root with pivot_root (False only for a measurement: chroot);
#: ``resys``: the /sys steps of ``mounts``, done again should ``G`` hand over a network
#: namespace other than the one the embryo was born in; ``joins``: (CLONE_NEW* flag, file,
#: inode or 0) of namespaces entered before anything else (another guest's, ``<lxc:namespace>``),
#: the file checked to be that namespace still; ``console``: init's stdio is a new pty of
#: the guest's own devpts, whose master goes to the supervisor (:func:`make_console`). An empty
#: ``hostname`` leaves the name alone.
Activation = tuple[
    tuple[str, ...],
    tuple[tuple[str, str], ...],
    str,
    int,
    tuple[MountTuple, ...],
    tuple[MountTuple, ...],
    str,
    str,
    "int | None",
    "int | None",
    tuple[int, ...],
    tuple[int, ...],
    bytes,
    bool,
    bool,
    tuple[MountTuple, ...],
    tuple[tuple[int, str, int], ...],
    bool,
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
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


# -- the embryo side (runs before the exec of the guest's init, and in vsv exec) ----------------


#: detached mount trees made by ``clone_tree`` steps (or passed with the activation for
#: ``fd_tree`` ones), by the target they are attached to
_trees: dict[str, int] = {}
#: the most detached mounts an activation may carry (one per device filesystem)
MAX_PASSED_MOUNTS = 64
#: the first file masked with each source, read-only, which later masks bind instead
_masks: dict[str, str] = {}


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:  # the message is made only when needed: this runs some 60 times per start
        raise _errno_error(f"mount {fstype or 'bind'} {source or ''} on {target}")


def run_mount(op: MountTuple) -> None:
    """Do one mount step (see ``spawn.MountOp`` for the kinds); an optional one whose target
    (for ``dir`` and ``symlink``: its parent) does not exist is skipped. Tried rather than
    checked first: that is one system call instead of two for every step."""
    try:
        _run_mount(op)
    except OSError as e:
        if not op[4]:
            raise
        # a path the embryo cannot reach (in a user namespace: below a directory only the
        # host's root may enter) the guest cannot reach either: nothing there to mask
        if not (e.errno == errno.ENOENT or (e.errno == errno.EACCES and op[0] in _MASKING)):
            raise


_MASKING = frozenset({"mask", "mask_open", "ro"})


def _run_mount(op: MountTuple) -> None:
    kind, target, source, options, optional = op
    if kind == "private":
        _mount(None, target, None, MS_REC | MS_PRIVATE, "")
    elif kind == "bind":
        _mount(source, target, None, MS_BIND | MS_REC, "")
    elif kind == "ro":
        # a bind remount sets the mount's flags to exactly these: keep nosuid/nodev/noexec
        kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept, "")
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
    elif kind == "detach":
        if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point: nothing to detach
                raise OSError(err, f"umount {target}: {os.strerror(err)}")
    elif kind == "tmpfs":
        _mount(source or "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
    elif kind == "fd_tree":
        pass  # its fd, passed with the activation, was put in _trees then (_embryo)
    elif kind == "devtmpfs":
        _mount(source or "tmpfs", target, "tmpfs", MS_NOSUID | MS_NOEXEC, options)
    elif kind == "sysfs":
        _mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    elif kind == "proc":
        _mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    elif kind == "cgroup":
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        _mount(source, target, source, flags, options)
    elif kind in ("mask", "mask_open"):
        if os.path.isdir(target):
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if kind == "mask" else 0)
            _mount("vsv-mask", target, "tmpfs", flags, "size=4k,mode=755")
        elif source in _masks:
            # a bind of a read-only bind is read-only: one mount instead of two
            _mount(_masks[source], target, None, MS_BIND, "")
        else:
            _mount(source, target, None, MS_BIND, "")
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "")
            _masks[source] = target  # relative to the guest's root, the working directory
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
        try:
            # an optional directory only in a parent that exists; others with their parents
            os.mkdir(target) if optional else os.makedirs(target, exist_ok=True)
        except FileExistsError:
            pass
    elif kind == "symlink":
        os.symlink(source, target)
    elif kind == "clone_tree":
        rc = _libc.syscall(
            ctypes.c_long(_SYS_OPEN_TREE),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(source.encode()),
            ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE),
        )
        if rc < 0:
            raise _errno_error(f"open_tree {source}")
        _trees[target] = rc
    elif kind == "attach_tree":
        fd = _trees.pop(target)
        try:
            rc = _libc.syscall(
                ctypes.c_long(_SYS_MOVE_MOUNT),
                ctypes.c_int(fd),
                ctypes.c_char_p(b""),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(target.encode()),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            )
            if rc != 0:
                raise _errno_error(f"move_mount onto {target}")
        finally:
            os.close(fd)
    elif kind == "chdir":
        os.chdir(target)
    elif kind == "become_root":
        # an embryo born in a user namespace of its own, whose maps the supervisor wrote: from
        # here on it is the namespace's root (files it makes are the guest root's), and no
        # longer the host's (so host paths only root may enter are out of its reach)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    else:
        raise OSError(0, f"unknown mount step {kind!r}")


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 1


def _loopback_up() -> None:
    """Bring ``lo`` of the current network namespace up (SIOCSIFFLAGS; no netlink needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))


#: the soft descriptor limit a guest's init starts with (the usual default); the supervisor
#: raises its own to serve many API connections, which its guests must not inherit: programs
#: that use select(2) break above 1024
GUEST_NOFILE = 1024


def _guest_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft > GUEST_NOFILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (GUEST_NOFILE, hard))


def pivot_into(root: str) -> None:
    """Make ``root`` (a mount point, maybe ".") the calling process's ``/`` and detach the old
    root.

    pivot_root(".", ".") stacks the old root on top of the new one; unmounting the top of "."
    then drops the host's whole tree from this mount namespace, so nothing of it is left to
    climb back to (a chroot alone leaves it reachable: the double-chroot escape).
    """
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown on {os.uname().machine}")
    os.chdir(root)
    dot = ctypes.c_char_p(b".")
    _check(_libc.syscall(ctypes.c_long(nr), dot, dot), f"pivot_root into {root}")
    _check(_libc.umount2(b".", _MNT_DETACH), "detach the host's root")
    os.chdir("/")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _permitted() -> int:
    """The calling thread's permitted set as a mask (capget(2))."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return int(data[0].permitted) | int(data[1].permitted) << 32


def _prctl(option: int, arg: int, what: str) -> None:
    rc = _libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )  # fmt: skip
    _check(rc, what)


class Confiner:
    """The last steps of becoming a guest process, for init and for ``vsv exec``, with what
    they need made ahead: the bounding set can be dropped early (it limits only later execs and
    capset calls, not what this process may do now), and the seccomp program and capability
    structures are built before they are needed, so that the steps left for the end are little
    more than their system calls (an embryo's end is the critical path of a guest's start).

    The order, because each step needs what the next one takes away: drop from the bounding set
    (needs CAP_SETPCAP); load the seccomp filter (needs CAP_SYS_ADMIN, as no_new_privs is not
    set: see docs/security.md); take the uid and gid (needs CAP_SETUID and CAP_SETGID;
    supplementary groups are dropped); then set the permitted and effective sets to ``keep``
    while still root (a uid other than 0 has lost them all already) with an empty inheritable
    set, and clear the ambient set. After exec a root process has exactly the bounding set, and
    a setuid program in the guest can reach no more than that. A capability this process lacks
    (the supervisor's host may run it without one) is not given.
    """

    def __init__(self, keep: tuple[int, ...], program: bytes) -> None:
        self._seccomp = _seccomp_prog(program)
        mask = 0
        for cap in keep:
            mask |= 1 << cap
        self._mask = mask & _permitted()
        self._header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_CapData * 2)()

    def drop_bounding(self, drop: tuple[int, ...]) -> None:
        """Drop ``drop`` from the bounding set."""
        for cap in drop:
            _prctl(_PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")

    def finish(self, uid: int | None, gid: int | None) -> None:
        """The seccomp filter, the ids, the process capability sets."""
        if self._seccomp is not None:
            _check(
                _libc.prctl(
                    ctypes.c_int(_PR_SET_SECCOMP),
                    ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                    ctypes.byref(self._seccomp[1]),
                    ctypes.c_ulong(0),
                    ctypes.c_ulong(0),
                ),
                "seccomp filter",
            )
        if uid is not None or gid is not None:
            os.setgroups([])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        mask = self._mask if os.geteuid() == 0 else 0
        for i in (0, 1):
            word = (mask >> (32 * i)) & 0xFFFFFFFF
            self._data[i].effective = self._data[i].permitted = word
            self._data[i].inheritable = 0
        _check(_libc.capset(ctypes.byref(self._header), self._data), "capset")
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities")


def confine_self(
    keep: tuple[int, ...],
    drop: tuple[int, ...],
    program: bytes,
    uid: int | None,
    gid: int | None,
) -> None:
    """Every step of :class:`Confiner` at once."""
    confiner = Confiner(keep, program)
    confiner.drop_bounding(drop)
    confiner.finish(uid, gid)


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
#: one classic-BPF instruction (struct sock_filter): u16 code, u8 jt, u8 jf, u32 k
_SOCK_FILTER_SIZE = 8


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_seccomp(program: bytes) -> None:
    """Load a seccomp filter into the calling thread; it is inherited by every child and exec.

    ``program`` is the classic-BPF array libseccomp exports (``seccomp_export_bpf``): the
    supervisor compiles it once per profile (``supervisor.guest.seccomp``), so this script, which
    may import only the standard library, just hands the bytes to the kernel. Without
    no_new_privs the kernel wants CAP_SYS_ADMIN here: call it before capabilities are dropped.
    """
    prepared = _seccomp_prog(program)
    if prepared is None:
        return
    rc = _libc.prctl(
        ctypes.c_int(_PR_SET_SECCOMP),
        ctypes.c_ulong(_SECCOMP_MODE_FILTER),
        ctypes.byref(prepared[1]),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    _check(rc, "seccomp filter")


def _seccomp_prog(program: bytes) -> tuple[ctypes.Array[ctypes.c_char], _SockFprog] | None:
    """The buffer and the struct sock_fprog for ``program`` (None for no filter)."""
    if not program:
        return None
    if len(program) % _SOCK_FILTER_SIZE:
        raise OSError(0, f"seccomp: a filter of {len(program)} bytes is not whole instructions")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _SOCK_FILTER_SIZE, ctypes.cast(buf, ctypes.c_void_p))
    return buf, fprog


# -- the server ---------------------------------------------------------------------------------

_pylibc = ctypes.PyDLL(None, use_errno=True)


def _clone_parent(flags: int = 0) -> int:
    """clone(CLONE_PARENT | flags | SIGCHLD): 0 in the child, its pid in the caller, -errno."""
    nr = SYS_CLONE.get(os.uname().machine)
    if nr is None:
        return -errno.ENOSYS
    how = CLONE_PARENT | flags | signal.SIGCHLD
    pid = int(_pylibc.syscall(ctypes.c_long(nr), ctypes.c_ulong(how),
                              ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0)))  # fmt: skip
    return -ctypes.get_errno() if pid < 0 else pid


def _reset_signals() -> None:
    """Undo what Python did to signals: an ignored signal stays ignored across exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def become_guest(request: Activation, out_fd: int, sock: socket.socket) -> None:
    """In an activated embryo: build the guest in two phases around the supervisor's ``G``.

    Phase 1 (while the supervisor makes the cgroup and runs the prepare hooks): stdio, the mount
    namespace, hostname, the guest's tree under its root (``mounts``: its /proc, and its /sys
    when the embryo was born in the network namespace it keeps), the root switch, the bounding
    set. ``G<flags>`` (with the guest's netns fd when a hook made one) says the embryo is in the
    guest's cgroup and the hooks are done. Phase 2, the start's critical path, so kept short:
    join that netns or unshare what ``flags`` says; a cgroup namespace rooted at the guest's
    cgroup (only now are we in it); ``late_mounts`` (the cgroupfs view, which shows the cgroup
    namespace; /sys if it had to wait for the netns); seccomp, ids, capabilities; exec. Raises
    OSError when the setup fails, :class:`_ExecFailed` when the exec does; never returns
    otherwise.
    """
    (argv, env, hostname, flags, mounts, late_mounts, _root, wd, uid, gid,
     keep, drop, program, own_net, pivot, resys, joins,
     console) = request  # fmt: skip
    born_in = os.stat("/proc/self/ns/net").st_ino
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(out_fd if out_fd >= 0 else null, 1)
    os.dup2(out_fd if out_fd >= 0 else null, 2)
    for nstype, path, inode in joins:
        _join(nstype, path, inode)
    _check(_libc.unshare(flags), "unshare")
    if hostname:
        socket.sethostname(hostname)
    for op in mounts:
        run_mount(op)
    # the steps after G name paths relative to the guest's root, which is "/" from here on
    if pivot:
        pivot_into(".")  # the guest's root: a "chdir" step of ``mounts`` went there
    else:
        os.chroot(".")
    if console:
        make_console(sock)
    _guest_nofile()
    confiner = Confiner(keep, program)
    confiner.drop_bounding(drop)
    go, netns_fd = _recv_with_fd(sock)
    if not go.startswith(b"G"):
        raise OSError(0, "the supervisor gave up on this start" if not go else f"got {go!r}")
    lo_up = own_net and _born_with_lo_up
    if netns_fd >= 0:
        if os.fstat(netns_fd).st_ino != born_in:
            _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns into the guest's network namespace")
            lo_up = False
            if resys:  # the /sys of the namespace it was born in: the guest's is another
                _check(_libc.umount2(resys[0][1].encode(), _MNT_DETACH), "umount the early /sys")
                for op in resys:
                    run_mount(op)
        os.close(netns_fd)
    late = int(go[1:] or b"0")
    _check(_libc.unshare(late | CLONE_NEWCGROUP), "unshare")
    if own_net and (late & CLONE_NEWNET or not lo_up):
        _loopback_up()
    for op in late_mounts:
        run_mount(op)
    os.chdir(wd)
    confiner.finish(uid, gid)
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as e:
        raise _ExecFailed(f"init {argv[0]} could not be executed: {e.strerror}") from None


def _join(nstype: int, path: str, inode: int) -> None:
    """Enter the namespace ``path`` names, if it still is the one with ``inode`` (0: any)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if inode and os.fstat(fd).st_ino != inode:
            raise OSError(errno.ESRCH, f"{path} is no longer the namespace to join (it ended)")
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


#: ioctls of the pty driver the termios module does not name (asm-generic numbers, which
#: x86_64, aarch64 and riscv64 use: the architectures of SYS_CLONE)
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
#: the message that carries the console's master to the supervisor (SCM_RIGHTS)
CONSOLE_MESSAGE = b"C"


def make_console(sock: socket.socket) -> None:
    """Give the embryo, after the root switch, a console: a new pty of the guest's own devpts
    (``/dev/pts``, a new instance the mount steps made), the slave as stdin, stdout and stderr
    and as the controlling terminal (the embryo is a session leader since its birth, so a shell
    as init gets job control), bound on ``/dev/console`` as libvirt's LXC driver does; the
    master goes to the supervisor on ``sock``, which reads the guest's output from it.

    Made in the guest's devpts rather than the host's so that nothing the guest holds belongs
    to the host's: a slave of the host's devpts would show the host's pty numbers and be a
    handle on the filesystem that holds every host terminal. The slave is opened through its
    master (TIOCGPTPEER), not by a path the guest's tree could redirect.
    """
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        # a file on the guest's /dev (our tmpfs) to bind the slave on
        os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        _mount(f"/dev/pts/{number}", "/dev/console", None, MS_BIND, "")
        sock.sendmsg(
            [CONSOLE_MESSAGE], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))]
        )
    finally:
        os.close(master)


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


#: the embryo was born in a network namespace of its own and brought its ``lo`` up meanwhile
_born_with_lo_up = False


def _embryo(sock_fd: int, server_fd: int, flags: int) -> None:
    """In a cloned embryo: wait for the activation, become the guest's init. Never returns."""
    global _born_with_lo_up
    code = 1
    sock = socket.socket(fileno=sock_fd)
    try:
        os.close(server_fd)
        _reset_signals()
        os.setsid()
        if flags & CLONE_NEWNET:
            # while waiting: bringing lo up costs ~0.15 ms (IPv6 on lo...), off any start's path
            try:
                _loopback_up()
                _born_with_lo_up = True
            except OSError:
                pass  # done at G instead
        _warm_up()
        data, fds = _recv_fds(sock, 1 + MAX_PASSED_MOUNTS)
        if not data:
            os._exit(0)  # the supervisor closed the pool, or died
        request = marshal.loads(data)
        # the last fds are detached mounts, one per fd_tree step in order; the first, when
        # there is one more, the guest's output
        targets = [op[1] for op in request[4] if op[0] == "fd_tree"]
        if targets:
            _trees.update(zip(targets, fds[len(fds) - len(targets) :], strict=True))
        out_fd = fds[0] if len(fds) > len(targets) else -1
        become_guest(request, out_fd, sock)
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


def _warm_up() -> None:
    """Run, while the embryo waits, the code its activation will run, minus the system calls
    that change anything: an embryo is a copy-on-write copy of its fork server, and the first
    run of Python code writes to the pages of the objects it touches (reference counts, the
    interpreter's specialised bytecode), a copy fault each. Made here, those copies cost no
    start anything."""
    with contextlib.suppress(OSError, ValueError):
        Confiner((), _ALLOW_ALL)
        run_mount(("ro", "/nonexistent/vsv-warm-up", "", "", True))
        os.fstat(0)
        struct.pack("16sh14x", b"lo", 0)


#: a one-instruction seccomp program (return ALLOW), for the warm-up only
_ALLOW_ALL = struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000)


def _handle_embryo(request: tuple[str, int], fds: list[int], server_fd: int) -> None:
    """Clone one embryo in new namespaces and tell the supervisor its pid on its socket."""
    _kind, flags = request
    pid = _clone_parent(flags)
    if pid == 0:
        _embryo(fds[0], server_fd, flags)
    if pid > 0:
        # until G the embryo yields to everything else: its first phase runs beside the
        # supervisor's own work and must not preempt it on its CPU. Set here, before anyone
        # knows the pid, so that the supervisor's restore at G always comes after it (an embryo
        # doing it itself could lower its nice after that restore, and one in a user namespace
        # may not raise it again)
        try:
            os.setpriority(os.PRIO_PROCESS, pid, EMBRYO_NICE)
        except OSError:
            pass
    os.write(fds[0], b"P%d" % pid if pid > 0 else f"Eclone: {os.strerror(-pid)}".encode())


def _handle(data: bytes, fds: list[int], server_fd: int = -1) -> None:
    if not fds:
        return
    try:
        loaded: tuple[str, int] = marshal.loads(data)
        _kind, _flags = loaded
    except (ValueError, EOFError, TypeError) as e:
        os.write(fds[0], f"Ebad request: {e}".encode())
        return
    _handle_embryo(loaded, fds, server_fd)


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
