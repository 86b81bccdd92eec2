"""Start a guest's init as PID 1 of new namespaces, inside its cgroup, without a Python per guest.

Theory of operation
-------------------
A start makes one child that sets itself up and execs util-linux ``unshare``; no interpreter is
started per guest, which keeps the start at a few milliseconds (docs: architecture, "what
starting a guest costs"). There are two ways to make that child, chosen by ``$VSV_SPAWN``:

- ``forkserver`` (default): a small ``python -I -S`` process started once
  (:mod:`supervisor.guest.forkserver`) clones the child with CLONE_PARENT, so it is our child
  all the same. Cloning a ~10 MB process instead of the supervisor is cheaper and does not grow
  with the supervisor's RSS, and the event loop only sends a message and waits on a pipe, so
  concurrent starts overlap (with ``preexec_fn``, ``Popen`` blocks the loop until exec).
- ``fork``: ``trio.lowlevel.open_process`` with a ``preexec_fn`` forks the supervisor itself.
  Kept as the fallback (no helper process; also used on architectures the server's raw clone
  does not know).

Work is split like this:

1. In the supervisor, :func:`plan_spawn` (pure) turns a :class:`~supervisor.model.Domain` into a
   :class:`SpawnPlan`: argv, environment, uid/gid (names resolved in the guest's own
   ``/etc/passwd`` and ``/etc/group``), hostname, namespace flags and the list of mounts.
2. In the child, before exec, :func:`~supervisor.guest.forkserver.child_setup` joins the guest's
   cgroup in every hierarchy, calls unshare(2) for mount, uts, ipc, pid (and net when the domain
   has a private network), sets the hostname, makes every mount private, bind-mounts the root
   dir onto itself (or makes the host's root read-only in this namespace) and builds ``/dev``,
   ``/sys`` and the domain's other filesystems inside it. A failure there is written to a pipe
   so the caller gets a :class:`~supervisor.errors.RuntimeFailure` that says what failed
   (subprocess itself only reports "Exception occurred in preexec_fn"). On the fork-server
   path that pipe is close-on-exec, so its EOF also says the wrapper has exec'd.
3. ``unshare --fork --mount-proc --root ROOT --wd DIR [--setuid U --setgid G] -- init ...`` then
   forks: since the pid namespace was unshared by its parent, the forked child is PID 1 of it.
   util-linux 2.38 does, in that child, chroot(ROOT), chdir(DIR), mounts a fresh proc on /proc
   (after the chroot, so on ROOT/proc, showing the new pid namespace), setgid/setuid, exec.
   ``unshare`` (the *wrapper*, our direct child) waits for it and, when it is killed by a
   signal, kills itself with the same signal, so the wrapper's exit status is the guest init's:
   SIGHUP means reboot(2) RESTART inside the guest, SIGINT power-off/halt (verified by the
   tests). :func:`spawn_init` returns once that child runs init, seen by polling ``/proc``
   (its executable is no longer ``unshare``) with sub-millisecond pauses: the exec follows the
   wrapper's by about a millisecond, and no event tells it (the wrapper keeps every fd it
   inherits, so a close-on-exec pipe cannot reach init alone).

Why chroot and not pivot_root: util-linux 2.38 ``unshare`` has no pivot_root option, and a
pivot_root done in the pre-exec child would leave the host's dynamically linked ``unshare``
unreachable. Without a user namespace or a capability bounding set the guest's root is the
host's root anyway (it may mount, load modules, ...), so pivot_root would not make a security
boundary here; the mounts of the host stay visible in the guest's mountinfo. A later change that
drops CAP_SYS_CHROOT/CAP_SYS_ADMIN should switch to pivot_root (e.g. through a static helper).

The wrapper itself is inside the guest's cgroup (it joined before exec), so it is counted by
``pids.max`` and killed by ``kill_all``: one process more than the guest sees.
"""

from __future__ import annotations

import array
import atexit
import marshal
import os
import signal
import socket
import subprocess
import sys
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
from supervisor.model import Domain

UNSHARE = "/usr/bin/unshare"
#: how long spawn_init waits for the guest's init to be running
START_TIMEOUT = 5.0
#: first pause while polling for init's exec, and its growth per poll: the exec follows the
#: wrapper's own by about a millisecond, so sub-millisecond polls (a timerfd) save most of a
#: millisecond over trio.sleep's whole milliseconds
FIRST_POLL = 0.0001
POLL_GROWTH = 1.3
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: device nodes bind-mounted from the host into the guest's /dev
DEV_NODES: tuple[str, ...] = ("null", "zero", "full", "random", "urandom", "tty")
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
    (make every mount below ``target`` read-only), ``tmpfs``, ``sysfs``, ``devpts``, ``file``
    (create an empty file as a bind target), ``dir`` (mkdir -p), ``symlink`` (``source`` is the
    link text).
    """

    kind: Literal[
        "private", "bind", "ro", "ro_tree", "tmpfs", "sysfs", "devpts", "file", "dir", "symlink"
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


def parse_passwd(text: str) -> dict[str, tuple[int, int, str]]:
    """name -> (uid, gid, home) from an ``/etc/passwd`` text, ignoring malformed lines."""
    out: dict[str, tuple[int, int, str]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[2].isdigit() and parts[3].isdigit():
            out.setdefault(parts[0], (int(parts[2]), int(parts[3]), parts[5]))
    return out


def parse_group(text: str) -> dict[str, int]:
    """name -> gid from an ``/etc/group`` text, ignoring malformed lines."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


def resolve_ids(
    user: str | None, group: str | None, passwd_text: str, group_text: str
) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, home) for ``<inituser>``/``<initgroup>``: numbers as is, names looked up.

    A user name brings its primary group when no group is given, and its home directory.
    """
    uid: int | None = None
    gid: int | None = None
    home: str | None = None
    if user is not None:
        users = parse_passwd(passwd_text)
        if user.isdigit():
            uid = int(user)
            for u, g, h in users.values():
                if u == uid:
                    gid, home = g, h
                    break
        elif user in users:
            uid, gid, home = users[user]
        else:
            raise RuntimeFailure(f"inituser {user!r} is not in the guest's /etc/passwd")
    if group is not None:
        if group.isdigit():
            gid = int(group)
        else:
            groups = parse_group(group_text)
            if group not in groups:
                raise RuntimeFailure(f"initgroup {group!r} is not in the guest's /etc/group")
            gid = groups[group]
    return uid, gid, home


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
    mounts.append(MountOp("tmpfs", dev, source="vsv-dev", options="mode=755,size=64k"))
    for node in DEV_NODES:
        mounts.append(MountOp("file", f"{dev}/{node}"))
        mounts.append(MountOp("bind", f"{dev}/{node}", source=f"/dev/{node}"))
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
    argv += ["--", os_spec.init, *os_spec.initargs]
    return SpawnPlan(
        argv=tuple(argv),
        env=tuple(env.items()),
        hostname=domain.hostname or domain.name,
        clone_flags=flags,
        root=root,
        mounts=tuple(mounts),
        netns_path=netns_path,
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


def _read_guest_file(root: str, rel: str) -> str:
    try:
        with open(_inside(root, rel)) as f:
            return f.read()
    except OSError:
        return ""


#: the start path: "forkserver" (default) or "fork" (preexec_fn in a fork of the supervisor)
SPAWN_MODE_ENV = "VSV_SPAWN"
DEFAULT_SPAWN_MODE = "forkserver"


def spawn_mode() -> str:
    """The start path chosen by ``$VSV_SPAWN`` (read at every start, so tests can switch).

    Without the variable: the fork server where its raw clone(2) is known, else the fork path.
    """
    mode = os.environ.get(SPAWN_MODE_ENV)
    if mode is None:
        known = os.uname().machine in forkserver.SYS_CLONE
        return DEFAULT_SPAWN_MODE if known else "fork"
    if mode not in ("fork", "forkserver"):
        raise RuntimeFailure(f"{SPAWN_MODE_ENV}={mode!r}: expected 'fork' or 'forkserver'")
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
    plan = _prepare(domain, extra_env, netns_path)
    procs_files = cgroup.procs_files()

    out_fd: int | None = None
    try:
        if log_path is not None:
            try:
                out_fd = os.open(
                    log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
                )
            except OSError as e:
                raise RuntimeFailure(f"cannot open guest log {log_path}: {e.strerror}") from e
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
    if spawn_mode() == "forkserver":
        _ensure_pool()
        for i in range(len(_servers)):
            _server_at(i)


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
    """Close every server of the pool (at exit; each is restarted at its next use)."""
    global _servers
    for server in _servers:
        if server is not None:
            server.close()
    _servers = []


atexit.register(_reset_fork_server)


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
    "SpawnPlan",
    "plan_spawn",
    "resolve_ids",
    "spawn_init",
    "spawn_mode",
    "start_fork_server",
]
