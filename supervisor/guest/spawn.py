"""Start a guest's init as PID 1 of new namespaces, inside its cgroup, without a Python per guest.

Theory of operation
-------------------
No interpreter is started per guest: a small ``python -I -S`` fork server
(:mod:`supervisor.guest.forkserver`), started once, clones the processes that become guests.
There are three ways to start, chosen by ``$VSV_SPAWN``:

- ``embryo`` (default): the server clones *embryos* ahead of time, with CLONE_PARENT (so they
  are the supervisor's children) and born as PID 1 of new pid, uts, ipc (and net) namespaces;
  :func:`top_up_embryos` keeps ``$VSV_SPARE_EMBRYOS`` of each kind ready. A start is two steps:

  1. :func:`begin_spawn` takes an embryo and sends it the plan. The embryo unshares its mount
     namespace (now, so the guest sees the host's mount table as it is at its start), sets the
     hostname and builds the mount tree, *while* the supervisor makes the cgroup, writes the
     limits and runs the prepare hooks (the network subsystem plumbs NICs there).
  2. :meth:`PendingStart.finish` writes the embryo's pid into every ``cgroup.procs`` and sends
     ``G`` with the guest's network namespace (an fd) when a hook made one. The embryo joins
     it, mounts sysfs (which shows the netns of whoever mounts it), chroots, mounts a /proc of
     its pid namespace, changes user and execs init. Its end of the socket is close-on-exec, so
     EOF means init runs.

  Init is then the supervisor's own child: its exit status (SIGHUP after reboot(2) RESTART in
  the guest, SIGINT after a halt or power-off, as the kernel reports a pid namespace's init)
  comes straight from waitpid, and no process stands between the supervisor and the guest.
- ``forkserver``: the server clones a child that joins the cgroup, unshares, builds the mounts
  and execs util-linux ``unshare --fork --mount-proc --root`` (the *wrapper*), whose child
  becomes PID 1. The wrapper waits for it and dies of the same signal, so its status is init's;
  :func:`_wait_init_exec` polls ``/proc`` until that child has exec'd. Kept for comparison.
- ``fork``: as ``forkserver``, but ``trio.lowlevel.open_process`` with a ``preexec_fn`` forks the
  supervisor itself (no helper process; also the path on architectures whose clone(2) number the
  server does not know).

In every mode :func:`plan_spawn` (pure) first turns a :class:`~supervisor.model.Domain` into a
:class:`SpawnPlan`: argv, environment, uid/gid (names resolved in the guest's own ``/etc/passwd``
and ``/etc/group``), hostname, namespace flags and the list of mounts; a failure in the child is
written back on a pipe or socket, so the caller gets a :class:`~supervisor.errors.RuntimeFailure`
that says which step failed.

Why chroot and not pivot_root: without a user namespace or a reduced capability bounding set the
guest's root is the host's root anyway (it may mount, load modules, ...), so pivot_root would not
make a security boundary here; the host's mounts stay visible in the guest's mountinfo. A later
change that drops CAP_SYS_CHROOT/CAP_SYS_ADMIN should switch to pivot_root.
"""

from __future__ import annotations

import array
import atexit
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.guest import forkserver, procs
from supervisor.guest.cgroups import GuestCgroup
from supervisor.guest.forkserver import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    MountTuple,
    child_setup,
)
from supervisor.guest.ids import resolve_ids
from supervisor.model import Domain

log = logging.getLogger(__name__)

UNSHARE = "/usr/bin/unshare"
#: how long spawn_init waits for the guest's init to be running
START_TIMEOUT = 5.0
#: first pause while polling for init's exec, and its growth per poll: the exec follows the
#: wrapper's own by about a millisecond, so sub-millisecond polls (a timerfd) save most of a
#: millisecond over trio.sleep's whole milliseconds
FIRST_POLL = 0.0001
POLL_GROWTH = 1.3
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: character devices made in the guest's /dev: name, major, minor (the kernel's fixed numbers,
#: Documentation/admin-guide/devices.txt); mode 0666 like the host's
DEV_NODES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

# -- the plan (pure) ---------------------------------------------------------------------------


@attrs.frozen
class MountOp:
    """One step of building the guest's mount tree, done in the child in list order.

    kinds: ``private`` (make everything below ``target`` private), ``bind`` (``source`` on
    ``target``, recursive), ``ro`` (make the bind mount at ``target`` read-only), ``ro_tree``
    (make every mount below ``target`` read-only), ``tmpfs``, ``devtmpfs`` (a tmpfs where
    device nodes work, for /dev), ``sysfs``, ``devpts``, ``node`` (mknod a character device:
    ``source`` "c MAJOR MINOR", ``options`` the octal mode), ``file`` (create an empty file as a
    bind target), ``dir`` (mkdir -p), ``symlink`` (``source`` is the link text).
    """

    kind: Literal[
        "private",
        "bind",
        "ro",
        "ro_tree",
        "tmpfs",
        "devtmpfs",
        "sysfs",
        "devpts",
        "node",
        "file",
        "dir",
        "symlink",
    ]
    target: str
    source: str = ""
    options: str = ""
    #: skip silently when the target's parent directory does not exist (optional guest dirs)
    optional: bool = False


@attrs.frozen
class SpawnPlan:
    """Everything the start needs, computed before the fork so the child only executes it."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    hostname: str
    clone_flags: int
    root: str
    mounts: tuple[MountOp, ...]
    #: join this existing network namespace (NICs plumbed by a prepare hook) instead of
    #: creating one
    netns_path: str | None = None
    #: init's own argv (``argv`` is the wrapper's, which ends with it) and what the wrapper does
    #: before exec: working directory and user/group; an embryo does these itself
    init_argv: tuple[str, ...] = ()
    workdir: str = "/"
    uid: int | None = None
    gid: int | None = None


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else "/" + path.lstrip("/")


def plan_spawn(
    domain: Domain,
    *,
    passwd_text: str = "",
    group_text: str = "",
    extra_env: Mapping[str, str] | None = None,
    netns_path: str | None = None,
) -> SpawnPlan:
    """Turn a domain into a :class:`SpawnPlan` (pure: the caller reads passwd/group files).

    With ``netns_path`` the guest joins that network namespace rather than getting a new one.
    """
    root_dir = domain.root_dir
    root = os.path.abspath(root_dir) if root_dir is not None else "/"
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    if domain.private_network and netns_path is None:
        flags |= CLONE_NEWNET
    os_spec = domain.os
    uid, gid, home = resolve_ids(os_spec.inituser, os_spec.initgroup, passwd_text, group_text)

    mounts: list[MountOp] = [MountOp("private", "/")]
    root_readonly = False
    if root_dir is None:
        mounts.append(MountOp("ro_tree", "/"))
    else:
        mounts.append(MountOp("bind", root, source=root))
        root_readonly = any(fs.target == "/" and fs.readonly for fs in domain.filesystems)
    dev = _inside(root, "/dev")
    # a tmpfs that allows device nodes, and the nodes made in it: a mknod is cheaper than a
    # bind mount of the host's node, and leaves the guest's mount table shorter
    mounts.append(MountOp("devtmpfs", dev, source="vsv-dev", options="mode=755,size=64k"))
    for node, major, minor in DEV_NODES:
        mounts.append(MountOp("node", f"{dev}/{node}", source=f"c {major} {minor}", options="666"))
    mounts.append(MountOp("dir", f"{dev}/pts"))
    mounts.append(MountOp("devpts", f"{dev}/pts", options="newinstance,ptmxmode=0666,mode=0620"))
    mounts.append(MountOp("dir", f"{dev}/shm"))
    mounts.append(MountOp("tmpfs", f"{dev}/shm", source="vsv-shm", options="mode=1777"))
    for name, text in DEV_LINKS:
        mounts.append(MountOp("symlink", f"{dev}/{name}", source=text))
    if root_dir is None:
        mounts.append(MountOp("tmpfs", "/tmp", source="vsv-tmp", options="mode=1777"))
    else:
        mounts.append(MountOp("sysfs", _inside(root, "/sys"), optional=True))
    for fs in domain.filesystems:
        if fs.target == "/":
            continue
        target = _inside(root, fs.target)
        mounts.append(MountOp("dir", target))
        if fs.type == "ram":
            size = f",size={fs.usage_kib}k" if fs.usage_kib is not None else ""
            mounts.append(MountOp("tmpfs", target, source="vsv-ram", options="mode=755" + size))
        else:
            mounts.append(MountOp("bind", target, source=fs.source))
        if fs.readonly:
            mounts.append(MountOp("ro", target))
    if root_readonly:
        mounts.append(MountOp("ro", root))

    env: dict[str, str] = {
        "PATH": DEFAULT_PATH,
        "HOME": home or "/",
        "container": "vsv",
    }
    env.update(dict(os_spec.initenv))
    if extra_env:
        env.update(extra_env)

    argv: list[str] = [UNSHARE, "--fork", "--mount-proc"]
    if root_dir is not None:
        argv += ["--root", root]
    argv += ["--wd", os_spec.initdir or "/"]
    if uid is not None:
        argv += ["--setuid", str(uid)]
    if gid is not None:
        argv += ["--setgid", str(gid)]
    init_argv = (os_spec.init, *os_spec.initargs)
    argv += ["--", *init_argv]
    return SpawnPlan(
        argv=tuple(argv),
        env=tuple(env.items()),
        hostname=domain.hostname or domain.name,
        clone_flags=flags,
        root=root,
        mounts=tuple(mounts),
        netns_path=netns_path,
        init_argv=init_argv,
        workdir=os_spec.initdir or "/",
        uid=uid,
        gid=gid,
    )


# -- the child side (runs between fork and exec) -----------------------------------------------


def _mount_tuples(plan: SpawnPlan) -> tuple[MountTuple, ...]:
    return tuple((m.kind, m.target, m.source, m.options, m.optional) for m in plan.mounts)


def _child_setup(plan: SpawnPlan, procs_files: tuple[str, ...], err_fd: int) -> None:
    """preexec_fn of the fork path: cgroup, namespaces, hostname, mounts; failures on ``err_fd``."""
    try:
        child_setup(
            procs_files, plan.netns_path, plan.clone_flags, plan.hostname, _mount_tuples(plan)
        )
    except BaseException as e:
        try:
            os.write(err_fd, f"{type(e).__name__}: {e}".encode()[:4000])
        except OSError:
            pass
        raise


# -- the parent side ---------------------------------------------------------------------------


class Wrapper(Protocol):
    """What :class:`GuestProcess` needs of the wrapper process: ``trio.Process`` or ours."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    async def wait(self) -> int: ...
    def kill(self) -> None: ...


@attrs.define(eq=False)
class ChildProcess:
    """A child of ours that we did not fork ourselves (the fork server cloned it for us).

    It is our child thanks to CLONE_PARENT, so only we can reap it; waiting uses a pidfd (as
    trio does for its own processes) and then ``waitpid(pid, WNOHANG)``, which never reaps a
    pid that is not ours. Return codes follow subprocess: negative for a killing signal.
    """

    pid: int
    _pidfd: int = -1
    _returncode: int | None = None
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    def __attrs_post_init__(self) -> None:
        self._pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self) -> int | None:
        """The return code once reaped, else None."""
        return self._returncode

    def poll(self) -> int | None:
        """Reap the child if it has ended; its return code or None."""
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # reaped elsewhere (a waitpid(-1) in the process): the status is lost
                pid, status = self.pid, 255 << 8
            if pid != 0:
                self._returncode = os.waitstatus_to_exitcode(status)
                self._close()
        return self._returncode

    async def wait(self) -> int:
        """Wait for the child to end; its return code."""
        async with self._lock:
            while self.poll() is None:
                await trio.lowlevel.wait_readable(self._pidfd)
        assert self._returncode is not None
        return self._returncode

    def kill(self) -> None:
        """SIGKILL the child unless it is reaped already (its pid cannot be reused before)."""
        if self._returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def reap_now(self) -> None:
        """SIGKILL and reap at once, blocking (for spare processes at shutdown, outside trio)."""
        if self._returncode is None:
            self.kill()
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self._returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self._returncode = -signal.SIGKILL
        self._close()

    def _close(self) -> None:
        if self._pidfd >= 0:
            fd, self._pidfd = self._pidfd, -1
            try:
                trio.lowlevel.notify_closing(fd)
            except RuntimeError:
                pass  # outside trio (garbage collection after the run)
            os.close(fd)

    def __del__(self) -> None:
        self._close()


@attrs.frozen
class GuestExit:
    """How the guest's init ended, as its wrapper reports it: an exit status or a signal."""

    status: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, rc: int) -> GuestExit:
        """From a subprocess-style return code (negative = killed by that signal)."""
        return cls(signal=-rc) if rc < 0 else cls(status=rc)


@attrs.frozen
class Namespaces:
    """Inode numbers of the guest init's namespaces, to record in a run dir."""

    pid: int
    mnt: int
    uts: int
    ipc: int
    net: int
    cgroup: int


@attrs.define(eq=False)
class GuestProcess:
    """A running guest: the ``unshare`` wrapper (our child) and the guest's PID 1 below it.

    ``init_pid`` is None only when init ended before it could be observed (an init that exits at
    once); ``wait()`` still reports how it ended.
    """

    wrapper: Wrapper
    init_pid: int | None
    namespaces: Namespaces | None

    @property
    def wrapper_pid(self) -> int:
        """The host pid of the wrapper, to record in the run dir."""
        return self.wrapper.pid

    async def wait(self) -> GuestExit:
        """Wait for the guest's init to end and say how."""
        return GuestExit.from_returncode(await self.wrapper.wait())

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the guest's init (not the wrapper).

        The kernel drops a signal for which a namespace's init has no handler, except SIGKILL
        and SIGSTOP: a guest that ignores SIGTERM must be stopped with SIGKILL or kill_all.
        """
        if self.init_pid is None or self.namespaces is None:
            raise RuntimeFailure("the guest's init is not running")
        if not procs.pid_is_guest_init(self.init_pid, self.namespaces.pid):
            raise RuntimeFailure(f"pid {self.init_pid} is no longer the guest's init")
        try:
            os.kill(self.init_pid, sig)
        except ProcessLookupError:
            pass


def _prepare(
    domain: Domain, extra_env: Mapping[str, str] | None, netns_path: str | None = None
) -> SpawnPlan:
    """Check the root dir, read the guest's passwd/group if names need resolving, plan."""
    root_dir = domain.root_dir
    if root_dir is not None and not os.path.isdir(root_dir):
        raise RuntimeFailure(f"root directory {root_dir} of domain {domain.name} does not exist")
    root = os.path.abspath(root_dir) if root_dir is not None else "/"
    passwd = group = ""
    if domain.os.inituser is not None or domain.os.initgroup is not None:
        passwd = _read_guest_file(root, "/etc/passwd")
        group = _read_guest_file(root, "/etc/group")
    return plan_spawn(
        domain, passwd_text=passwd, group_text=group, extra_env=extra_env, netns_path=netns_path
    )


def _open_log(log_path: str | None) -> int | None:
    """The guest's stdout/stderr: ``log_path`` opened for appending, or None for /dev/null."""
    if log_path is None:
        return None
    try:
        return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise RuntimeFailure(f"cannot open guest log {log_path}: {e.strerror}") from e


def _read_guest_file(root: str, rel: str) -> str:
    try:
        with open(_inside(root, rel)) as f:
            return f.read()
    except OSError:
        return ""


#: the start path: "embryo" (default), "forkserver" (a fork server's child execs unshare) or
#: "fork" (preexec_fn in a fork of the supervisor, then unshare)
SPAWN_MODE_ENV = "VSV_SPAWN"
DEFAULT_SPAWN_MODE = "embryo"
SPAWN_MODES = ("embryo", "forkserver", "fork")


def spawn_mode() -> str:
    """The start path chosen by ``$VSV_SPAWN`` (read at every start, so tests can switch).

    Without the variable: embryos where the fork server's raw clone(2) is known, else the fork
    path.
    """
    mode = os.environ.get(SPAWN_MODE_ENV)
    if mode is None:
        known = os.uname().machine in forkserver.SYS_CLONE
        return DEFAULT_SPAWN_MODE if known else "fork"
    if mode not in SPAWN_MODES:
        allowed = ", ".join(repr(m) for m in SPAWN_MODES)
        raise RuntimeFailure(f"{SPAWN_MODE_ENV}={mode!r}: expected one of {allowed}")
    return mode


async def spawn_init(
    domain: Domain,
    cgroup: GuestCgroup,
    *,
    log_path: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    netns_path: str | None = None,
) -> GuestProcess:
    """Start the domain's init in new namespaces inside ``cgroup`` (which must exist).

    Returns once the guest's init is running (its PID 1 has exec'd the init program). stdin is
    /dev/null; stdout and stderr go to ``log_path`` (appended) or /dev/null. Gives up with
    RuntimeFailure when init is not running after ``START_TIMEOUT`` seconds.
    """
    mode = spawn_mode()
    if mode == "embryo":
        pending = await begin_spawn(
            domain, log_path=log_path, extra_env=extra_env, joins_netns=netns_path is not None
        )
        return await pending.finish(cgroup, netns_path=netns_path)
    plan = _prepare(domain, extra_env, netns_path)
    procs_files = cgroup.procs_files()

    out_fd: int | None = None
    try:
        out_fd = _open_log(log_path)
        if mode == "forkserver":
            wrapper: Wrapper = await _start_via_forkserver(domain.name, plan, procs_files, out_fd)
        else:
            wrapper = await _start_via_fork(domain.name, plan, procs_files, out_fd)
    finally:
        if out_fd is not None:
            os.close(out_fd)

    try:
        init_pid = await _wait_init_exec(wrapper)
    except BaseException:
        with trio.CancelScope(shield=True):
            wrapper.kill()
            await wrapper.wait()
        raise
    if init_pid is None:
        rc = wrapper.returncode
        if rc in (126, 127):
            raise RuntimeFailure(
                f"cannot start guest {domain.name}: init {domain.os.init} could not be "
                f"executed (wrapper exit {rc}; see the guest log)"
            )
        return GuestProcess(wrapper=wrapper, init_pid=None, namespaces=None)
    try:
        ns = Namespaces(**procs.ns_inodes(init_pid))
    except RuntimeFailure:
        # init ended between exec and now; wait() will tell how
        return GuestProcess(wrapper=wrapper, init_pid=None, namespaces=None)
    return GuestProcess(wrapper=wrapper, init_pid=init_pid, namespaces=ns)


async def _start_via_fork(
    name: str, plan: SpawnPlan, procs_files: tuple[str, ...], out_fd: int | None
) -> trio.Process:
    """The fork path: ``preexec_fn`` in a fork of the supervisor; blocks until exec."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        stdout: int = out_fd if out_fd is not None else subprocess.DEVNULL
        try:
            return await trio.lowlevel.open_process(
                list(plan.argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stdout,
                env=dict(plan.env),
                start_new_session=True,
                preexec_fn=lambda: _child_setup(plan, procs_files, wfd),
            )
        except subprocess.SubprocessError as e:
            os.close(wfd)
            wfd = -1
            try:
                detail = os.read(rfd, 4096).decode(errors="replace")
            except BlockingIOError:
                detail = str(e)
            raise RuntimeFailure(
                f"cannot start guest {name}: child setup failed: {detail}"
            ) from None
        except OSError as e:
            raise RuntimeFailure(f"cannot start guest {name}: {e}") from e
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)


async def _start_via_forkserver(
    name: str, plan: SpawnPlan, procs_files: tuple[str, ...], out_fd: int | None
) -> ChildProcess:
    """The fork-server path: one message to a server of the pool, then the report pipe until EOF.

    The report pipe's write end is close-on-exec in the child, so EOF means the wrapper has
    exec'd (or the child ended after writing why). Reading it is shielded (bounded by
    ``START_TIMEOUT``) so that a cancelled start still learns the pid of the child it must
    kill; the caller's cancellation then takes effect in :func:`_wait_init_exec`. The server
    counts as busy with this start until the child's first report (its pid, written right
    after the clone), which is all the work the server itself does for it.
    """
    payload = marshal.dumps(
        (plan.argv, plan.env, plan.hostname, plan.clone_flags, plan.netns_path, procs_files,
         _mount_tuples(plan))
    )  # fmt: skip
    rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    chunks: list[bytes] = []
    server: _ForkServer | None = None
    released = False

    def release() -> None:
        nonlocal released
        if server is not None and not released:
            released = True
            server.busy -= 1

    try:
        try:
            server = _fork_server()
            server.busy += 1
            await server.send(payload, [wfd] if out_fd is None else [wfd, out_fd])
        finally:
            os.close(wfd)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(START_TIMEOUT) as waited:
                await _read_to_eof(rfd, chunks, release)
    finally:
        release()
        os.close(rfd)
    return await _child_from_report(
        name, b"".join(chunks), complete=not waited.cancelled_caught, server=server
    )


async def _read_to_eof(
    fd: int, chunks: list[bytes], first: Callable[[], None] | None = None
) -> None:
    """Append what ``fd`` delivers to ``chunks`` until EOF (kept if the caller gives up).

    ``first`` is called once something (a chunk or EOF) arrived.
    """
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        if first is not None:
            first()
            first = None
        if not chunk:
            return
        chunks.append(chunk)


async def _child_from_report(
    name: str, report: bytes, *, complete: bool = True, server: _ForkServer | None = None
) -> ChildProcess:
    """Turn the child's report (``P<pid>\\n`` then maybe ``E``/``X<why>``) into a child or error.

    ``complete`` is False when the report did not reach EOF within the start timeout: the
    child (if it said its pid) is killed and reaped, and the start fails. A report without a
    pid means ``server`` (the one asked) did not answer: it is replaced at its next use.
    """
    text = report.decode(errors="replace")
    child: ChildProcess | None = None
    if text.startswith("P") and "\n" in text:
        line, _, text = text.partition("\n")
        child = ChildProcess(int(line[1:]))
    if not complete:
        text = f"Xthe child did not exec within {START_TIMEOUT}s"
        if child is not None:
            child.kill()
    if text:
        if child is not None:
            with trio.CancelScope(shield=True):
                await child.wait()
        if text[0] == "E":
            raise RuntimeFailure(f"cannot start guest {name}: child setup failed: {text[1:]}")
        raise RuntimeFailure(f"cannot start guest {name}: {text[1:]}")
    if child is None:
        if server is not None:
            server.close()
        raise RuntimeFailure(f"cannot start guest {name}: the fork server did not answer")
    return child


@attrs.define(eq=False)
class _ForkServer:
    """Our end of one fork server (:mod:`supervisor.guest.forkserver`) and its process."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    owner: int
    #: starts sent to this server whose child has not reported its pid yet
    busy: int = 0
    closed: bool = False

    @classmethod
    def start(cls) -> _ForkServer:
        """Start one server (~20 ms until it answers, the interpreter's start)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            script = forkserver.__file__
            argv = [sys.executable, "-I", "-S", script, str(theirs.fileno()), str(os.getpid())]
            proc = subprocess.Popen(
                argv,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise RuntimeFailure(f"cannot start the fork server: {e}") from e
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc=proc, sock=ours, owner=os.getpid())

    def usable(self) -> bool:
        """Ours (not inherited through a fork), not closed and still running."""
        return not self.closed and self.owner == os.getpid() and self.proc.poll() is None

    async def send(self, payload: bytes, fds: list[int]) -> None:
        """Send one request; waits (under a per-run lock) while the socket buffer is full."""
        try:
            locks = _SEND_LOCKS.get()
        except LookupError:
            locks = {}
            _SEND_LOCKS.set(locks)
        lock = locks.setdefault(self.proc.pid, trio.Lock())
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        async with lock:
            while True:
                try:
                    self.sock.sendmsg([payload], ancillary)
                    return
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                except OSError as e:
                    self.close()
                    raise RuntimeFailure(f"the fork server is gone: {e}") from e

    def close(self) -> None:
        """Close our end (the server exits on EOF) and reap it."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.owner != os.getpid():
            return
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: at most this many fork servers, however many CPUs we may use
MAX_FORK_SERVERS = 4
_SEND_LOCKS: trio.lowlevel.RunVar[dict[int, trio.Lock]] = trio.lowlevel.RunVar("vsv_fs_send")
#: the pool, one slot per server; a slot whose server died is refilled at its next use
_servers: list[_ForkServer | None] = []


def pool_size() -> int:
    """How many fork servers to run: one per CPU this process may use, at most
    :data:`MAX_FORK_SERVERS`.

    One server makes the clones of concurrent starts queue behind each other while it competes
    for CPU with the children it made; one per CPU lets them proceed in parallel. More than the
    CPUs would only add idle interpreters (a few MB each).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_FORK_SERVERS))


def start_fork_server() -> None:
    """Start the pool of fork servers now if the fork-server path is in use (else each starts
    on the first start that picks it, which then waits ~20-30 ms for the interpreter). Call
    from the main thread: a server's parent-death signal is tied to the thread that started
    it."""
    mode = spawn_mode()
    if mode in ("forkserver", "embryo"):
        _ensure_pool()
        for i in range(len(_servers)):
            _server_at(i)
    if mode == "embryo":
        top_up_embryos(DEFAULT_EMBRYO_FLAGS)


def _ensure_pool() -> None:
    global _servers
    if not _servers:
        _servers = [None] * pool_size()


def _server_at(i: int) -> _ForkServer:
    """The server in slot ``i``, (re)started if it is missing, closed or dead."""
    server = _servers[i]
    if server is None or not server.usable():
        if server is not None:
            server.close()
        server = _servers[i] = _ForkServer.start()
    return server


def _fork_server() -> _ForkServer:
    """The server for the next start: the least busy (lowest slot among equals), usable."""
    _ensure_pool()
    best = min(range(len(_servers)), key=lambda i: (s.busy if (s := _servers[i]) else 0, i))
    return _server_at(best)


def _reset_fork_server() -> None:
    """Close every server of the pool and every spare embryo (at exit; each is restarted at its
    next use)."""
    global _servers
    _discard_embryos()
    for server in _servers:
        if server is not None:
            server.close()
    _servers = []


atexit.register(_reset_fork_server)


# -- embryos: processes born in the guest's namespaces, waiting for their guest ------------------

#: namespaces an embryo is born in; the mount namespace is made at activation instead, so the
#: guest gets the host's mount table as it is at its start (an embryo may wait for minutes)
EMBRYO_BIRTH_FLAGS = CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
#: the kind of embryo most starts use (a guest with a network namespace of its own)
DEFAULT_EMBRYO_FLAGS = EMBRYO_BIRTH_FLAGS
#: how long a start that is the only one in flight polls for init's exec instead of sleeping
#: in epoll. The exec follows ``G`` by under a millisecond; a CPU that goes idle meanwhile can
#: take longer than that to wake (hundreds of microseconds in a VM), and no other start needs
#: the CPU then. Concurrent starts never poll: they would take CPU from each other's embryos.
EXEC_SPIN = 0.004
_finishing = 0
#: spare embryos kept ready per kind (``$VSV_SPARE_EMBRYOS`` overrides; 0 makes each on demand)
SPARE_EMBRYOS = 2
SPARE_EMBRYOS_ENV = "VSV_SPARE_EMBRYOS"


def spare_embryos() -> int:
    """How many spare embryos to keep per kind (read at each top-up, so tests can switch)."""
    raw = os.environ.get(SPARE_EMBRYOS_ENV)
    if raw is None:
        return SPARE_EMBRYOS
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 64:
        raise RuntimeFailure(f"{SPARE_EMBRYOS_ENV}={raw!r}: expected a whole number 0-64")
    return int(raw)


@attrs.define(eq=False)
class _Embryo:
    """Our end of one embryo (see :mod:`supervisor.guest.forkserver`): its socket and, once the
    server said it, the process (our child)."""

    sock: socket.socket
    flags: int
    child: ChildProcess | None = None

    async def born(self) -> ChildProcess:
        """The embryo's process, once the server reported its pid (it usually has already)."""
        if self.child is None:
            with trio.move_on_after(START_TIMEOUT):
                msg = await _recv_message(self.sock)
                if msg.startswith(b"P"):
                    self.child = ChildProcess(int(msg[1:]))
                    return self.child
                detail = msg[1:].decode(errors="replace") or "no answer"
                raise RuntimeFailure(f"the fork server could not make a guest process: {detail}")
            raise RuntimeFailure(f"the fork server made no guest process within {START_TIMEOUT}s")
        return self.child

    def discard(self) -> None:
        """Kill and reap the embryo (blocking: used at shutdown and for broken spares)."""
        if self.child is None and self.sock.fileno() >= 0:
            # learn its pid first, or it would stay a zombie of ours
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            try:
                msg = self.sock.recv(64)
                if msg.startswith(b"P"):
                    self.child = ChildProcess(int(msg[1:]))
            except OSError:
                pass
        self.sock.close()
        if self.child is not None:
            self.child.reap_now()


#: spare embryos per kind (birth flags), oldest first, and the pid that made them
_embryos: dict[int, list[_Embryo]] = {}
_embryos_owner = 0
_next_server = 0


def _own_embryos() -> dict[int, list[_Embryo]]:
    """The pool, forgotten (not closed) in a forked child: those embryos are its parent's."""
    global _embryos, _embryos_owner
    if _embryos_owner != os.getpid():
        _embryos, _embryos_owner = {}, os.getpid()
    return _embryos


def _request_embryo(flags: int) -> _Embryo | None:
    """Ask a fork server (round robin) for an embryo; None when its socket is full right now."""
    global _next_server
    _ensure_pool()
    server = _server_at(_next_server % len(_servers))
    _next_server += 1
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))]
        try:
            server.sock.sendmsg([marshal.dumps(("embryo", flags))], ancillary)
        except BlockingIOError:
            ours.close()
            return None
        except OSError as e:
            ours.close()
            server.close()
            raise RuntimeFailure(f"the fork server is gone: {e}") from e
    finally:
        theirs.close()
    ours.setblocking(False)
    return _Embryo(ours, flags)


def top_up_embryos(flags: int = DEFAULT_EMBRYO_FLAGS) -> None:
    """Ask for spares of one kind until :func:`spare_embryos` are ready or on their way.

    Never waits: a request is a message to a fork server, whose clone then overlaps whatever the
    supervisor does next.
    """
    spares = _own_embryos().setdefault(flags, [])
    while len(spares) < spare_embryos():
        embryo = _request_embryo(flags)
        if embryo is None:
            return
        spares.append(embryo)


def _top_up_soon(flags: int) -> None:
    """Replace the spent spare once the current task yields: called when a start is over.

    Not during the start: waking a fork server hands it the CPU at once (the scheduler favours
    the woken task on an idle machine), and its clone holds the kernel's cgroup threadgroup
    lock for the whole copy of its page tables, which the start's own ``cgroup.procs`` writes
    then wait for (~1 ms).
    """

    def top_up() -> None:
        try:
            top_up_embryos(flags)
        except RuntimeFailure as e:
            log.warning("spare embryos: %s", e)

    try:
        trio.lowlevel.current_trio_token().run_sync_soon(top_up)
    except RuntimeError:
        top_up()  # not in trio: now


async def _take_embryo(flags: int) -> tuple[_Embryo, ChildProcess]:
    """A live embryo of this kind: a spare if one is ready, else one made now; then top up."""
    spares = _own_embryos().setdefault(flags, [])
    while spares:
        embryo = spares.pop(0)
        try:
            child = await embryo.born()
        except RuntimeFailure:
            embryo.discard()  # its fork server died before cloning it: try the next one
            continue
        except BaseException:
            embryo.discard()
            raise
        if child.poll() is None:
            return embryo, child
        embryo.discard()  # died while waiting (killed by hand): make another
    fresh = _request_embryo(flags)
    while fresh is None:  # the server's socket is full: wait until it drains
        await trio.sleep(0.001)
        fresh = _request_embryo(flags)
    try:
        return fresh, await fresh.born()
    except BaseException:
        fresh.discard()
        raise


@attrs.define(eq=False)
class PendingStart:
    """A start begun before the guest's cgroup and network exist (:func:`begin_spawn`).

    On the embryo path the embryo builds the guest's mount tree while the supervisor makes the
    cgroup and runs the prepare hooks; :meth:`finish` then moves it into the cgroup, hands it
    the network namespace and waits for init's exec. On the other paths nothing happens before
    :meth:`finish`, which is a plain :func:`spawn_init`. Exactly one of :meth:`finish` and
    :meth:`abort` must be awaited.
    """

    domain: Domain
    log_path: str | None
    extra_env: Mapping[str, str] | None
    embryo: _Embryo | None = None
    child: ChildProcess | None = None
    #: the namespaces the embryo was born in, plus the mount namespace it made at activation
    made: int = 0

    async def finish(self, cgroup: GuestCgroup, *, netns_path: str | None = None) -> GuestProcess:
        """Complete the start in ``cgroup`` (which must exist), joining ``netns_path`` if given.

        Returns once init runs; RuntimeFailure (the child killed and reaped) when it cannot.
        """
        if self.embryo is None or self.child is None:
            return await spawn_init(
                self.domain,
                cgroup,
                log_path=self.log_path,
                extra_env=self.extra_env,
                netns_path=netns_path,
            )
        embryo, child, name = self.embryo, self.child, self.domain.name
        self.embryo = None
        try:
            return await self._finish(embryo, child, name, cgroup, netns_path)
        finally:
            _top_up_soon(self.made & EMBRYO_BIRTH_FLAGS)

    async def _finish(
        self,
        embryo: _Embryo,
        child: ChildProcess,
        name: str,
        cgroup: GuestCgroup,
        netns_path: str | None,
    ) -> GuestProcess:
        wanted = CLONE_NEWNET if self.domain.private_network and netns_path is None else 0
        late = wanted & ~self.made
        report: list[bytes] = []
        try:
            try:
                # into the guest's cgroup before init can run, then "go" with its netns
                _move_to_cgroup(child.pid, cgroup.procs_files())
                netns_fd = -1
                if netns_path is not None:
                    netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fds = [netns_fd] if netns_fd >= 0 else []
                    # the embryo ran its first phase at a low priority (so as not to preempt
                    # us); from here on it is the guest, with the supervisor's priority
                    os.setpriority(os.PRIO_PROCESS, child.pid, os.getpriority(os.PRIO_PROCESS, 0))
                    embryo.sock.sendmsg(
                        [b"G%d" % late],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    )
                finally:
                    if netns_fd >= 0:
                        os.close(netns_fd)
            except (OSError, RuntimeFailure) as e:
                # an embryo that failed in its first phase has said why: that comes first
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    while msg := await _recv_message(embryo.sock):
                        report.append(msg)
                if not report:
                    child.kill()
                    with trio.CancelScope(shield=True):
                        await child.wait()
                    detail = e if isinstance(e, RuntimeFailure) else f"{netns_path}: {e.strerror}"
                    raise RuntimeFailure(f"cannot start guest {name}: {detail}") from e
            else:
                global _finishing
                _finishing += 1
                try:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(START_TIMEOUT) as waited:
                            # a lone start polls for init's exec rather than sleep (EXEC_SPIN)
                            spin = EXEC_SPIN if _finishing == 1 else 0.0
                            while msg := await _recv_message(embryo.sock, spin=spin):
                                report.append(msg)
                finally:
                    _finishing -= 1
                if waited.cancelled_caught:
                    report = [f"Xinit did not start within {START_TIMEOUT}s".encode()]
                    child.kill()
        finally:
            embryo.sock.close()
        text = b"".join(report).decode(errors="replace")
        if text:
            with trio.CancelScope(shield=True):
                await child.wait()
            if text[0] == "E":
                raise RuntimeFailure(f"cannot start guest {name}: child setup failed: {text[1:]}")
            raise RuntimeFailure(f"cannot start guest {name}: {text[1:]}")
        # init is our own child: it runs already, and there is no wrapper to look below
        try:
            ns = Namespaces(**procs.ns_inodes(child.pid))
        except RuntimeFailure:
            return GuestProcess(wrapper=child, init_pid=None, namespaces=None)
        if child.poll() is not None:
            return GuestProcess(wrapper=child, init_pid=None, namespaces=None)
        return GuestProcess(wrapper=child, init_pid=child.pid, namespaces=ns)

    async def abort(self) -> None:
        """Give up on the start: the embryo (if any) is killed and reaped."""
        embryo, child = self.embryo, self.child
        self.embryo = None
        if embryo is not None:
            embryo.sock.close()
            _top_up_soon(self.made & EMBRYO_BIRTH_FLAGS)
        if child is not None and embryo is not None:
            with trio.CancelScope(shield=True):
                child.kill()
                await child.wait()


async def begin_spawn(
    domain: Domain,
    *,
    log_path: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    joins_netns: bool | None = None,
) -> PendingStart:
    """Begin starting ``domain`` before its cgroup and prepare hooks exist; see PendingStart.

    ``joins_netns`` says whether :meth:`PendingStart.finish` will get a network namespace to
    join (None: guess from the domain, which has one from the network subsystem when it has
    interfaces). A wrong guess costs time, not correctness: an embryo born without a network
    namespace of its own makes one at ``G`` when none is given.
    """
    if spawn_mode() != "embryo":
        return PendingStart(domain, log_path, extra_env)
    plan = _prepare(domain, extra_env)
    if joins_netns is None:
        joins_netns = bool(domain.interfaces)
    birth = EMBRYO_BIRTH_FLAGS
    if joins_netns or not domain.private_network:
        birth &= ~CLONE_NEWNET
    out_fd: int | None = None
    try:
        out_fd = _open_log(log_path)
        embryo, child = await _take_embryo(birth)
        pending = PendingStart(
            domain, log_path, extra_env, embryo=embryo, child=child,
            made=birth | CLONE_NEWNS,
        )  # fmt: skip
        activation = marshal.dumps(
            (plan.init_argv, plan.env, plan.hostname, CLONE_NEWNS, _mount_tuples(plan),
             plan.root, plan.workdir, plan.uid, plan.gid)
        )  # fmt: skip
        fds = [] if out_fd is None else [out_fd]
        try:
            embryo.sock.sendmsg(
                [activation], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        except OSError as e:
            await pending.abort()
            raise RuntimeFailure(
                f"cannot start guest {domain.name}: the embryo is gone: {e.strerror}"
            ) from e
        return pending
    finally:
        if out_fd is not None:
            os.close(out_fd)


def _move_to_cgroup(pid: int, procs_files: tuple[str, ...]) -> None:
    """Write ``pid`` to each ``cgroup.procs`` file; RuntimeFailure names the one that failed."""
    for procs_file in procs_files:
        try:
            fd = os.open(procs_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"%d" % pid)
            finally:
                os.close(fd)
        except OSError as e:
            raise RuntimeFailure(f"cannot move pid {pid} to {procs_file}: {e.strerror}") from e


async def _recv_message(sock: socket.socket, *, spin: float = 0.0) -> bytes:
    """One message from a non-blocking SEQPACKET socket; b"" at EOF.

    With ``spin`` > 0 it polls for up to that many seconds before it sleeps in epoll, passing a
    checkpoint each time round (other tasks run, and trio's epoll_wait does not block while we
    are runnable): see :data:`EXEC_SPIN`.
    """
    until = time.perf_counter() + spin if spin > 0 else 0.0
    while True:
        try:
            return sock.recv(4096)
        except BlockingIOError:
            if until and time.perf_counter() < until:
                os.sched_yield()  # the embryo may share this CPU: let it exec
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(sock)
        except ConnectionResetError:
            return b""


def _discard_embryos() -> None:
    """Kill and reap every spare embryo (at exit, before the servers go)."""
    pool = _own_embryos()
    for spares in pool.values():
        for embryo in spares:
            embryo.discard()
    pool.clear()


async def _wait_init_exec(wrapper: Wrapper) -> int | None:
    """The host pid of the wrapper's child once it runs the init program, None if it ended.

    The wrapper forks, and the child execs init after chroot/proc/setuid: it runs init once its
    executable is no longer the wrapper's.
    """
    wrapper_exe = procs.exe_of(wrapper.pid)
    timeout = START_TIMEOUT
    delay = FIRST_POLL
    with trio.move_on_after(timeout), procs.FineSleeper() as sleeper:
        while True:
            if wrapper.poll() is not None:
                return None
            for child in procs.children_of(wrapper.pid):
                exe = procs.exe_of(child)
                if exe is not None and exe != wrapper_exe:
                    return child
            await sleeper.sleep(delay)
            delay = min(delay * POLL_GROWTH, 0.01)
    raise RuntimeFailure(f"guest init did not start within {timeout}s")


def signal_name(sig: int) -> str:
    """``SIGHUP`` for 1, etc.; the number as text for unknown signals."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "ChildProcess",
    "GuestExit",
    "GuestProcess",
    "MountOp",
    "Namespaces",
    "PendingStart",
    "SpawnPlan",
    "begin_spawn",
    "plan_spawn",
    "resolve_ids",
    "spawn_init",
    "spawn_mode",
    "start_fork_server",
]
