"""Start a guest's init as PID 1 of new namespaces, confined, inside its cgroup, without a Python
per guest.

Theory of operation
-------------------
No interpreter is started per guest: small ``python -I -S`` fork servers
(:mod:`supervisor.guest.forkserver`), started once per :class:`SpawnPool`, clone *embryos* ahead
of time, with CLONE_PARENT (so they are the supervisor's children) and born as PID 1 of new pid,
uts, ipc (and net) namespaces; the pool keeps ``$VSV_SPARE_EMBRYOS`` of each kind ready. The pool
belongs to the runtime (:class:`~supervisor.guest.linux.LinuxRuntime`) and lives while it is
open (``async with``): nothing of it is kept at module level. A start is two steps:

1. :func:`begin_spawn` takes an embryo and sends it the plan. The embryo unshares its mount
   namespace (now, so the guest sees the host's mount table as it is at its start), sets the
   hostname and builds the guest's tree under its new root, *while* the supervisor makes the
   cgroup, writes the limits and runs the prepare hooks (the network subsystem plumbs NICs there).
2. :meth:`PendingStart.finish` writes the embryo's pid into every ``cgroup.procs`` and sends
   ``G`` with the guest's network namespace (an fd) when a hook made one. The embryo joins it,
   makes its cgroup namespace, mounts sysfs (which shows the netns of whoever mounts it), the
   guest's read-only view of its cgroups and a /proc of its pid namespace with the host's kernel
   state masked, switches root with ``pivot_root`` and detaches the host's tree, drops its
   capabilities to the guest's set, loads the seccomp filter, changes user and execs init. Its
   end of the socket is close-on-exec, so EOF means init runs.

Init is then the supervisor's own child: its exit status (SIGHUP after reboot(2) RESTART in the
guest, SIGINT after a halt or power-off, as the kernel reports a pid namespace's init) comes
straight from waitpid, and no process stands between the supervisor and the guest.

:func:`plan_spawn` (pure) first turns a :class:`~supervisor.model.Domain` and a
:class:`HostView` into a :class:`SpawnPlan`: argv, environment, uid/gid (names resolved in the
guest's own ``/etc/passwd`` and ``/etc/group``), hostname, namespace flags, the mounts of each
phase, the capability set (:mod:`supervisor.guest.confine`) and the compiled seccomp filter; a
failure in the embryo is written back on its socket, so the caller gets a
:class:`~supervisor.errors.RuntimeFailure` that says which step failed.

Why pivot_root and not chroot: a chroot leaves the host's tree reachable to a root that may
chroot again (the double-chroot escape); after ``pivot_root`` the host's tree is detached from
the guest's mount namespace altogether, so there is nothing above the guest's ``/`` to climb to.
A guest without a root filesystem gets a fresh copy of the host's tree, read-only, with its own
``/proc``, ``/sys``, ``/dev``, ``/run`` and ``/tmp`` and the host's secrets and the supervisor's
own files masked (:data:`STAGE`).
"""

from __future__ import annotations

import array
import contextlib
import functools
import logging
import marshal
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.guest import confine, forkserver, procs, seccomp
from supervisor.guest.blockdev import (
    LoopDevice,
    attach_loop,
    check_block_device,
    detached_mount,
    filesystem_type,
)
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout
from supervisor.guest.forkserver import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    Activation,
    MountTuple,
)
from supervisor.guest.ids import resolve_ids
from supervisor.model import Domain, Filesystem
from supervisor.runtime import GuestExit, NamespaceJoin, Namespaces

log = logging.getLogger(__name__)

#: how long a start waits for the guest's init to be running
START_TIMEOUT = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: character devices made in the guest's /dev: name, major, minor (the kernel's fixed numbers,
#: Documentation/admin-guide/devices.txt); mode 0666 like the host's. The device allowlist
#: (supervisor.guest.devices) lets the guest open these and nothing else.
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
#: where a guest without a root filesystem gets its copy of the host's tree, in the embryo's own
#: mount namespace: on top of the host's /proc, which the guest's tree replaces anyway and the
#: embryo no longer needs. No directory has to exist for it on the host, and the host's /tmp and
#: /run stay visible as bind sources while the guest's tree is built.
STAGE = "/proc"
#: what masks a file: the host's /dev/null, bound read-only on it (runc's way)
NULL = "/dev/null"
#: host mounts a guest without a root filesystem gets fresh ones of instead (detached from its
#: copy of the host's tree first, so that nothing of the host's lies beneath them)
OWN_MOUNTS: tuple[str, ...] = ("/proc", "/sys", "/dev", "/run", "/tmp")

# -- the plan (pure) ---------------------------------------------------------------------------


@attrs.frozen
class MountOp:
    """One step of building the guest's mount tree, done in the embryo in list order.

    kinds: ``private`` (make everything below ``target`` private), ``bind`` (``source`` on
    ``target``, recursive), ``ro`` (make the mount at ``target`` read-only), ``ro_tree`` (make
    every mount below ``target`` read-only), ``detach`` (lazily unmount ``target`` and all below
    it, if it is a mount point), ``tmpfs``, ``devtmpfs`` (a tmpfs where device nodes work, for
    /dev), ``sysfs``, ``proc``, ``cgroup`` (``source`` the filesystem type, cgroup or cgroup2,
    ``options`` the controllers), ``devpts``, ``mask`` (hide ``target``: an empty read-only tmpfs
    on a directory, ``source`` (a /dev/null) bound read-only on anything else), ``mask_open``
    (the same, but a directory's tmpfs stays writable until an ``ro`` step), ``become_root``
    (take uid and gid 0 of the user namespace the embryo was born in), ``chdir`` (into
    ``target``, the guest's root, which later steps name relative paths in), ``clone_tree``
    (a detached copy of the mounts at ``source``, kept for ``attach_tree`` on ``target``: a
    bind in two steps, for a source only the host's root may reach), ``node`` (mknod a
    character device: ``source`` "c MAJOR MINOR", ``options`` the octal mode), ``file`` (create
    an empty file as a bind target), ``dir`` (mkdir -p), ``symlink`` (``source`` is the link
    text), ``fd_tree`` (a detached mount the supervisor made and passed with the activation,
    kept for ``attach_tree`` on ``target``: a filesystem on a device).
    """

    kind: str
    target: str
    source: str = ""
    options: str = ""
    #: skip silently when the target (for ``dir`` and ``symlink``: its parent) does not exist
    optional: bool = False

    def as_tuple(self) -> MountTuple:
        """The form the embryo receives (it imports nothing of ours)."""
        return (self.kind, self.target, self.source, self.options, self.optional)


@attrs.frozen
class HostView:
    """What a plan needs to know of the host, read once by the runtime (:meth:`probe`).

    ``hidden``: host paths a guest without a root filesystem must not see (the supervisor's
    state and run dirs, the API sockets); ``secret_files``: host files it sees empty;
    ``cgroup_mounts``: the guest's read-only view of its cgroups, as (directory under
    /sys/fs/cgroup, filesystem type, mount options); ``cap_last``: the kernel's highest
    capability number (/proc/sys/kernel/cap_last_cap).
    """

    hidden: tuple[str, ...] = ()
    secret_files: tuple[str, ...] = confine.HOST_SECRET_FILES
    cgroup_mounts: tuple[tuple[str, str, str], ...] = ()
    cap_last: int = max(confine.CAPABILITIES.values())

    @classmethod
    def probe(cls, *, hidden: tuple[str, ...] = (), layout: CgroupLayout | None = None) -> HostView:
        """Read what the plan needs from this host."""
        try:
            ssh = os.listdir(confine.SSH_DIR)
        except OSError:
            ssh = []
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                cap_last = int(f.read())
        except (OSError, ValueError):
            cap_last = max(confine.CAPABILITIES.values())
        return cls(
            hidden=tuple(os.path.abspath(p) for p in hidden),
            secret_files=confine.host_secret_files(ssh),
            cgroup_mounts=guest_cgroup_mounts(layout if layout is not None else detect_layout()),
            cap_last=cap_last,
        )


@functools.cache
def default_host() -> HostView:
    """The host as seen by callers that give none (tests, tools): probed once per process."""
    return HostView.probe()


#: v1 hierarchies a guest has a cgroup in but is not shown: what they hold (its device
#: allowlist, its freezer state) is the supervisor's business, and each shown costs a mount at
#: every start
UNSHOWN_V1 = ("devices", "freezer")


def guest_cgroup_mounts(layout: CgroupLayout) -> tuple[tuple[str, str, str], ...]:
    """The cgroup filesystems a guest sees under /sys/fs/cgroup: the hierarchies it has a
    cgroup in (but :data:`UNSHOWN_V1`), each mounted where the host has it (a v1 hierarchy's
    directory is named after its controllers, which are also its mount options)."""
    hidden = {layout.v1_path(c) for c in UNSHOWN_V1} - {None}
    shown = {layout.v1_path(c) for c in ("cpu", "cpuacct", "memory", "pids")} - {None}
    out: list[tuple[str, str, str]] = []
    for hierarchy in layout.hierarchies():
        if hierarchy in hidden and hierarchy not in shown:
            continue
        rel = os.path.relpath(hierarchy, layout.root)
        if hierarchy == layout.unified:
            out.append(("" if rel == "." else rel, "cgroup2", ""))
        else:
            out.append((rel, "cgroup", os.path.basename(hierarchy)))
    return tuple(out)


@attrs.frozen
class Layers:
    """Which confinement layers a start applies. The supervisor always applies every one.

    For measurement only: bench/bench_confine.py prices each layer by leaving it out. Nothing a
    domain document, a daemon option or the environment says reaches this; a guest is widened
    only by what its document asks for (``<features><capabilities>``, ``<filesystem>``).
    ``root_switch`` off: chroot instead of pivot_root; ``capabilities`` off: every capability
    kept; ``seccomp`` off: no filter; ``masks`` off: no masked or read-only /proc and /sys, no
    cgroupfs view, no host secrets masked.
    """

    root_switch: bool = True
    capabilities: bool = True
    seccomp: bool = True
    masks: bool = True


ALL_LAYERS = Layers()


@attrs.frozen
class SpawnPlan:
    """Everything the start needs, computed before the embryo is activated so it only executes
    it."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    hostname: str
    clone_flags: int
    #: the directory that becomes the guest's ``/`` (pivot_root)
    root: str
    #: built before ``G`` (while the supervisor makes the cgroup and runs the hooks)
    mounts: tuple[MountOp, ...]
    #: built after ``G``, in the guest's network and cgroup namespaces, before the root switch
    late_mounts: tuple[MountOp, ...]
    workdir: str = "/"
    uid: int | None = None
    gid: int | None = None
    #: the guest's capability set (confine.capability_set), by name
    caps: frozenset[str] = frozenset()
    #: capabilities to drop from the bounding set: every number up to the kernel's last one
    #: that is not in ``caps``
    cap_drop: tuple[int, ...] = ()
    #: the seccomp filter (classic BPF, as libseccomp exports it)
    seccomp: bytes = b""
    #: for a guest with an ``<idmap>``: /proc/PID/uid_map and gid_map, written by the
    #: supervisor once the embryo (born in a user namespace of its own) is taken
    uid_map: str = ""
    gid_map: str = ""
    #: the guest has a network namespace of its own (made, or joined at ``G``)
    own_net: bool = False
    #: switch root with pivot_root (always, but for a measurement: see Layers)
    pivot: bool = True
    #: /sys, mounted before ``G`` in the network namespace the embryo was born in: done again if
    #: ``G`` hands it another one (a wrong guess of the kind of embryo; see begin_spawn)
    resys: tuple[MountOp, ...] = ()
    #: namespaces entered first: (CLONE_NEW* flag, file, inode it must have or 0)
    joins: tuple[tuple[int, str, int], ...] = ()
    #: init's stdio is a console: a pty of the guest's own devpts whose master the supervisor
    #: gets (forkserver.make_console); else /dev/null and the log
    console: bool = False

    @property
    def userns(self) -> bool:
        """Whether the guest runs in a user namespace of its own."""
        return bool(self.clone_flags & CLONE_NEWUSER)

    def activation(self) -> Activation:
        """The message the embryo is activated with (see forkserver.Activation)."""
        return (
            self.argv,
            self.env,
            self.hostname,
            CLONE_NEWNS,
            tuple(m.as_tuple() for m in self.mounts),
            tuple(m.as_tuple() for m in self.late_mounts),
            self.root,
            self.workdir,
            self.uid,
            self.gid,
            confine.cap_numbers(self.caps),
            self.cap_drop,
            self.seccomp,
            self.own_net,
            self.pivot,
            tuple(m.as_tuple() for m in self.resys),
            self.joins,
            self.console,
        )


#: filesystem types mounted from a device node (a loop device over an image, a block device)
DEVICE_FILESYSTEMS = ("file", "block")


#: ``NamespaceJoin.kind`` -> the flag setns(2) is given
_JOIN_FLAGS = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}


def device_filesystems(domain: Domain) -> list[Filesystem]:
    """The domain's ``type='file'|'block'`` filesystems in the order their mounts are passed
    to the embryo: the root first (its ``fd_tree`` step comes first), then as written."""
    found = [fs for fs in domain.filesystems if fs.type in DEVICE_FILESYSTEMS]
    return sorted(found, key=lambda fs: fs.target != "/")


def _relative(op: MountOp, root: str) -> MountOp:
    """``op`` with its paths inside ``root`` relative to it (the embryo's working directory);
    paths outside it (the host's /dev/null, a bind's source) stay as they are."""

    def rel(path: str) -> str:
        if path == root:
            return "."
        if path.startswith(root.rstrip("/") + "/"):
            return "./" + path[len(root.rstrip("/")) + 1 :]
        return path

    return attrs.evolve(op, target=rel(op.target), source=rel(op.source) if op.source else "")


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else "/" + path.lstrip("/")


def _dev_mounts(root: str, *, userns: bool) -> list[MountOp]:
    """The guest's own /dev: a tmpfs, the device nodes, a devpts, /dev/shm.

    Without a user namespace the nodes are made with mknod: cheaper than a bind mount of the
    host's node, and the guest's mount table stays shorter. In a user namespace the kernel
    allows no mknod (and no device on a filesystem mounted there), so each node is the host's,
    bound onto an empty file.
    """
    dev = _inside(root, "/dev")
    out = [MountOp("devtmpfs", dev, source="vsv-dev", options="mode=755,size=64k")]
    for node, major, minor in DEV_NODES:
        target = f"{dev}/{node}"
        if userns:
            out.append(MountOp("file", target))
            out.append(MountOp("bind", target, source=f"/dev/{node}"))
        else:
            out.append(MountOp("node", target, source=f"c {major} {minor}", options="666"))
    out.append(MountOp("dir", f"{dev}/pts"))
    out.append(MountOp("devpts", f"{dev}/pts", options="newinstance,ptmxmode=0666,mode=0620"))
    out.append(MountOp("dir", f"{dev}/shm"))
    out.append(MountOp("tmpfs", f"{dev}/shm", source="vsv-shm", options="mode=1777"))
    for name, text in DEV_LINKS:
        out.append(MountOp("symlink", f"{dev}/{name}", source=text))
    return out


def _masked_paths(host: HostView) -> list[str]:
    """What a guest without a root filesystem sees empty: where in :data:`STAGE`."""
    paths = (*confine.HOST_SECRET_DIRS, *host.secret_files, *host.hidden)
    return [_inside(STAGE, path) for path in paths]


def _host_tree_mounts(host_mounts: tuple[str, ...]) -> list[MountOp]:
    """A guest without a root filesystem: a read-only copy of the host's tree at :data:`STAGE`.

    ``host_mounts``: the host's mount points at or below :data:`OWN_MOUNTS`, deepest first,
    detached from the copy before the guest's own mounts go on top (in a user namespace the
    kernel keeps them, locked: they stay hidden under the guest's own). The host's secrets and
    the supervisor's files are masked afterwards (plan_spawn): a masked directory is an empty
    tmpfs, writable until the domain's filesystems are mounted (a ``<filesystem>`` may show
    something of it: its mount point is made there), then read-only.
    """
    out = [MountOp("bind", STAGE, source="/"), MountOp("ro_tree", STAGE)]
    for path in host_mounts:
        out.append(MountOp("detach", _inside(STAGE, path), optional=True))
    return out


def _own_tmpfs_mounts() -> list[MountOp]:
    """A guest without a root filesystem: its own /run and /tmp."""
    return [
        MountOp("tmpfs", _inside(STAGE, "/run"), source="vsv-run", options="mode=755"),
        MountOp("tmpfs", _inside(STAGE, "/tmp"), source="vsv-tmp", options="mode=1777"),
    ]


def _proc_mounts(root: str, *, netns_own: bool, host_sys_admin: bool) -> list[MountOp]:
    """The guest's /proc, of its pid namespace (the embryo is its PID 1 from birth, so this is
    done before ``G``), with the host's kernel state masked or read-only.

    ``host_sys_admin``: the guest keeps sys_admin over the host's user namespace; without it
    the kernel shows no address in /proc/iomem and /proc/ioports, which then need no mask.
    """
    proc = _inside(root, "/proc")
    out = [MountOp("proc", proc)]
    for name in (*confine.PROC_MASKED_FILES, *confine.PROC_MASKED_DIRS):
        if name in confine.PROC_SHOWN_TO_SYS_ADMIN and not host_sys_admin:
            continue
        out.append(MountOp("mask", f"{proc}/{name}", source=NULL, optional=True))
    if netns_own:
        # LXC's proc:mixed: a guest's own network sysctls stay writable (what it may write
        # there is then up to its net_admin in that namespace); /proc/sys/net shows the network
        # namespace of whoever opens it, so this too can be mounted before the guest's is joined
        out.append(MountOp("bind", f"{proc}/sys/net", source=f"{proc}/sys/net", optional=True))
    for name in confine.PROC_READONLY:
        target = f"{proc}/{name}"
        out.append(MountOp("bind", target, source=target, optional=True))
        out.append(MountOp("ro", target, optional=True))
    return out


def _sys_mounts(root: str) -> list[MountOp]:
    """The guest's /sys, read-only: a sysfs shows the network namespace of whoever mounts it,
    so it is mounted once the embryo is in the guest's (at birth, or joined at ``G``)."""
    sys_dir = _inside(root, "/sys")
    # a root filesystem without /sys gets none (nor a cgroupfs view, which lives in it)
    out = [MountOp("sysfs", sys_dir, optional=root != STAGE)]
    for rel in confine.SYS_MASKED_DIRS:
        out.append(MountOp("mask", f"{sys_dir}/{rel}", source=NULL, optional=True))
    return out


def _cgroup_mounts(top: str, host: HostView) -> tuple[list[MountOp], list[MountOp]]:
    """The guest's cgroups, read-only, each hierarchy rooted at the guest's own cgroup (the
    cgroup namespace made at ``G`` does that); v1 ones on a small tmpfs as on the host.

    Two lists: what can be made before ``G`` (the tmpfs and its directories) and the cgroup
    mounts, which must wait for the cgroup namespace.
    """
    prep: list[MountOp] = []
    mounts: list[MountOp] = []
    if not host.cgroup_mounts:
        return prep, mounts
    unified_on_top = any(rel == "" for rel, _t, _o in host.cgroup_mounts)
    if not unified_on_top:
        prep.append(MountOp("tmpfs", top, source="vsv-cgroup", options="mode=755,size=16k",
                            optional=True))  # fmt: skip
    for rel, fstype, options in host.cgroup_mounts:
        target = f"{top}/{rel}" if rel else top
        if rel:
            prep.append(MountOp("dir", target, optional=True))
        mounts.append(MountOp("cgroup", target, source=fstype, options=options, optional=True))
    if not unified_on_top:
        mounts.append(MountOp("ro", top, optional=True))
    return prep, mounts


def plan_spawn(
    domain: Domain,
    *,
    host: HostView | None = None,
    passwd_text: str = "",
    group_text: str = "",
    extra_env: Mapping[str, str] | None = None,
    netns_path: str | None = None,
    seccomp_program: bytes = b"",
    host_mounts: tuple[str, ...] = OWN_MOUNTS,
    layers: Layers = ALL_LAYERS,
    sysfs_early: bool = False,
    devices: bool = False,
    joins: tuple[NamespaceJoin, ...] = (),
) -> SpawnPlan:
    """Turn a domain into a :class:`SpawnPlan` (pure: the caller reads passwd/group files and
    the host's mount table, and compiles the seccomp filter).

    ``joins``: namespaces the embryo enters (setns) before anything else, instead of the ones
    it was born with (``<lxc:namespace>``); a guest that joins a UTS namespace leaves its host
    name alone (it is the other guest's).

    ``devices``: the caller mounted each ``<filesystem type='file'|'block'>`` itself, detached
    (:func:`supervisor.guest.blockdev.detached_mount`), and passes the mounts' fds with the
    activation, in :func:`device_filesystems` order; the plan attaches them (``fd_tree``).

    With ``netns_path`` the guest joins that network namespace rather than getting a new one.
    ``host_mounts`` matter only to a guest without a root filesystem (see _host_tree_mounts).
    ``layers``: see :class:`Layers` (measurement only). ``sysfs_early``: the embryo is born in
    the network namespace the guest keeps, so /sys can be mounted before ``G`` as /proc is (work
    done then overlaps the supervisor's own); else after it.
    """
    host = host if host is not None else HostView()
    root_dir = domain.root_dir
    root_fs = domain.root_filesystem
    if not devices and any(fs.type in DEVICE_FILESYSTEMS for fs in domain.filesystems):
        raise RuntimeFailure(f"domain {domain.name}: its device filesystems were not mounted")
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    if domain.private_network and netns_path is None:
        flags |= CLONE_NEWNET
    os_spec = domain.os
    uid, gid, home = resolve_ids(os_spec.inituser, os_spec.initgroup, passwd_text, group_text)

    userns = bool(domain.idmap)
    if userns:
        flags |= CLONE_NEWUSER
    # In a user namespace the steps that reach host paths (bind sources) run with the host's
    # root credentials, which can still traverse root's directories: the guest's root and, as
    # detached copies (clone_tree), the sources of its filesystems. Then the embryo becomes
    # the namespace's root, whose files a filesystem made in the namespace needs as owner,
    # and attaches those copies where they belong.
    host_ops: list[MountOp] = [MountOp("private", "/")]
    own_ops: list[MountOp] = []
    masked = _masked_paths(host) if layers.masks else []
    on_device = root_fs is not None and root_fs.type in DEVICE_FILESYSTEMS
    if root_fs is not None and on_device:
        # mounted where the host-tree copy would go (the embryo's own /proc, unused by now),
        # read-only from the start when asked: a read-only image cannot be mounted otherwise
        root = STAGE
        host_ops.extend([MountOp("fd_tree", STAGE), MountOp("attach_tree", STAGE)])
        root_readonly = False
    elif root_dir is None:  # no root filesystem: a copy of the host's tree
        root = STAGE
        host_ops.extend(_host_tree_mounts(host_mounts))
        own_ops.extend(MountOp("mask_open", p, source=NULL, optional=True) for p in masked)
        own_ops.extend(_own_tmpfs_mounts())
        root_readonly = False
    else:
        root = os.path.abspath(root_dir)
        host_ops.append(MountOp("bind", root, source=root))
        root_readonly = any(fs.target == "/" and fs.readonly for fs in domain.filesystems)
    own_ops.extend(_dev_mounts(root, userns=userns))
    for fs in domain.filesystems:
        if fs.target == "/":
            continue
        target = _inside(root, fs.target)
        if fs.type == "ram":
            size = f",size={fs.usage_kib}k" if fs.usage_kib is not None else ""
            step = MountOp("tmpfs", target, source="vsv-ram", options="mode=755" + size)
        elif fs.type in DEVICE_FILESYSTEMS:
            own_ops.extend(
                [MountOp("dir", target), MountOp("fd_tree", target), MountOp("attach_tree", target)]
            )
            continue
        elif userns:
            host_ops.append(MountOp("clone_tree", target, source=fs.source))
            step = MountOp("attach_tree", target)
        else:
            step = MountOp("bind", target, source=fs.source)
        own_ops.extend([MountOp("dir", target), step])
        if fs.readonly:
            own_ops.append(MountOp("ro", target))
    if root_dir is None and not on_device:
        own_ops.extend(MountOp("ro", path, optional=True) for path in masked)
    if root_readonly:
        own_ops.append(MountOp("ro", root))
    sys_ops = _sys_mounts(root)
    caps = confine.capability_set(domain) if layers.capabilities else confine.ALL_CAPS
    early = _proc_mounts(
        root,
        netns_own=domain.private_network,
        host_sys_admin="sys_admin" in caps and not userns,
    )
    cg_prep, late = _cgroup_mounts(_inside(root, "/sys/fs/cgroup"), host)
    if sysfs_early:
        early = [*sys_ops, *cg_prep, *early]
    else:
        late = [*sys_ops, *cg_prep, *late]
    if not layers.masks:
        early = [op for op in early if op.kind in ("sysfs", "proc")]
        late = [op for op in late if op.kind in ("sysfs", "proc")]
        sys_ops = [op for op in sys_ops if op.kind == "sysfs"]
        cg_prep = []
    own_ops.extend(early)
    become = [MountOp("become_root", "/")] if userns else []
    # from here on the embryo works in the guest's root by relative paths: in a user namespace
    # it may no longer be allowed to walk the host's path to it (a directory only root may enter)
    mounts = [
        *(_relative(op, root) if op.kind == "clone_tree" else op for op in host_ops),
        MountOp("chdir", root),
        *become,
        *(_relative(op, root) for op in own_ops),
    ]
    late = [_relative(op, root) for op in late]

    env: dict[str, str] = {
        "PATH": DEFAULT_PATH,
        "HOME": home or "/",
        "container": "vsv",
    }
    env.update(dict(os_spec.initenv))
    if extra_env:
        env.update(extra_env)
    kept = set(confine.cap_numbers(caps))
    maps = {kind: "".join(f"{e.start} {e.target} {e.count}\n" for e in domain.idmap
                          if e.kind == kind) for kind in ("uid", "gid")}  # fmt: skip
    return SpawnPlan(
        argv=(os_spec.init, *os_spec.initargs),
        env=tuple(env.items()),
        hostname="" if domain.shared("uts") else domain.hostname or domain.name,
        joins=tuple((_JOIN_FLAGS[j.kind], j.path, j.inode) for j in joins),
        clone_flags=flags,
        root=root,
        mounts=tuple(mounts),
        late_mounts=tuple(late),
        workdir=os_spec.initdir or "/",
        uid=uid,
        gid=gid,
        caps=caps,
        cap_drop=tuple(n for n in range(host.cap_last + 1) if n not in kept),
        seccomp=seccomp_program,
        uid_map=maps["uid"],
        gid_map=maps["gid"],
        own_net=domain.private_network,
        pivot=layers.root_switch,
        resys=tuple(_relative(op, root) for op in (*sys_ops, *cg_prep)) if sysfs_early else (),
        console=bool(domain.consoles),
    )


# -- the parent side ---------------------------------------------------------------------------


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
        """SIGKILL and reap at once, blocking (for spare embryos when their pool closes)."""
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


@attrs.define(eq=False)
class GuestProcess:
    """A running guest: its init, our own child (``wrapper``, named for the run record's
    ``wrapper_pid``: the process the supervisor waits on, which is init itself).

    ``init_pid`` is None only when init ended before it could be observed (an init that exits at
    once); ``wait()`` still reports how it ended.
    """

    wrapper: ChildProcess
    init_pid: int | None
    namespaces: Namespaces | None
    #: the master of the guest's console pty (a domain with a ``<console>``), until taken
    console: int | None = None

    @property
    def wrapper_pid(self) -> int:
        """The host pid of the process we wait on (init), to record in the run dir."""
        return self.wrapper.pid

    async def wait(self) -> GuestExit:
        """Wait for the guest's init to end and say how."""
        return GuestExit.from_returncode(await self.wrapper.wait())

    def take_console(self) -> int | None:
        """The console's master, once: the caller owns it from here on (None: no console)."""
        fd, self.console = self.console, None
        return fd

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the guest's init.

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
    domain: Domain,
    extra_env: Mapping[str, str] | None,
    host: HostView,
    netns_path: str | None = None,
    layers: Layers = ALL_LAYERS,
    sysfs_early: bool = False,
    devices: bool = False,
    joins: tuple[NamespaceJoin, ...] = (),
) -> SpawnPlan:
    """Check the root dir, read the guest's passwd/group if names need resolving, compile the
    seccomp filter for the guest's capabilities (once per set: it is cached), plan (the same
    inputs give the same plan, which is cached too: a guest that starts again, or many alike,
    pays for its planning once)."""
    root_dir = domain.root_dir
    if root_dir is not None and not os.path.isdir(root_dir):
        raise RuntimeFailure(f"root directory {root_dir} of domain {domain.name} does not exist")
    root = os.path.abspath(root_dir) if root_dir is not None else "/"
    root_fs = domain.root_filesystem
    on_device = root_fs is not None and root_fs.type in DEVICE_FILESYSTEMS
    passwd = group = ""
    # a root on a device is mounted by the embryo only: its passwd cannot be read before, so
    # only numeric ids work there (a name is reported as not in the guest's /etc/passwd)
    if not on_device and (domain.os.inituser is not None or domain.os.initgroup is not None):
        passwd = _read_guest_file(root, "/etc/passwd")
        group = _read_guest_file(root, "/etc/group")
    caps = confine.seccomp_caps(confine.capability_set(domain), userns=bool(domain.idmap))
    program = seccomp.compile_profile(seccomp.profile_for(caps)) if layers.seccomp else b""
    host_mounts: tuple[str, ...] = OWN_MOUNTS
    if root_dir is None and not on_device:
        # read at every start: the host's mounts change (a network namespace added, say)
        try:
            with open("/proc/self/mountinfo") as f:
                host_mounts = confine.mount_points_below(f.read(), OWN_MOUNTS)
        except OSError as e:
            raise RuntimeFailure(f"cannot read /proc/self/mountinfo: {e.strerror}") from e
    env = tuple(extra_env.items()) if extra_env else ()
    args = (domain, host, passwd, group, env, netns_path, program, host_mounts, layers)
    return _plan_cached(*args, sysfs_early, devices, joins)


@functools.lru_cache(maxsize=256)
def _plan_cached(
    domain: Domain,
    host: HostView,
    passwd: str,
    group: str,
    env: tuple[tuple[str, str], ...],
    netns_path: str | None,
    program: bytes,
    host_mounts: tuple[str, ...],
    layers: Layers,
    sysfs_early: bool,
    devices: bool,
    joins: tuple[NamespaceJoin, ...],
) -> SpawnPlan:
    return plan_spawn(
        domain,
        host=host,
        passwd_text=passwd,
        group_text=group,
        extra_env=dict(env),
        netns_path=netns_path,
        seccomp_program=program,
        host_mounts=host_mounts,
        layers=layers,
        sysfs_early=sysfs_early,
        devices=devices,
        joins=joins,
    )


def _mount_devices(domain: Domain, mounts: list[int]) -> None:
    """Mount each ``<filesystem type='file'|'block'>`` detached, its fd appended to ``mounts``
    (which the caller closes), in :func:`device_filesystems` order: an image through a loop
    device (held only until its filesystem is mounted: see blockdev), a block device as it is;
    the filesystem type as blkid finds it. Blocks (ioctls, blkid): run in a thread."""
    for fs in device_filesystems(domain):
        element = f"<filesystem type='{fs.type}'> on {fs.target}"
        loop: LoopDevice | None = None
        try:
            if fs.type == "file":
                label = f"{domain.name}:{fs.target}"
                loop = attach_loop(fs.source, readonly=fs.readonly, label=label)
                node = loop.path
            else:
                check_block_device(fs.source)
                node = fs.source
            fstype = filesystem_type(node, element)
            mounts.append(detached_mount(node, fstype, readonly=fs.readonly))
        except RuntimeFailure as e:
            if str(e).startswith(element):
                raise
            raise RuntimeFailure(f"{element}: {e}") from e
        finally:
            if loop is not None:
                loop.close()


def _open_log(log_path: str | None) -> int | None:
    """The guest's stdout/stderr: ``log_path`` opened for appending, or None for /dev/null.

    A FIFO (the supervisor's log relay, supervisor/logrelay.py) is opened read-write: the
    guest then never gets EPIPE, also while no supervisor reads."""
    if log_path is None:
        return None
    try:
        if stat.S_ISFIFO(os.stat(log_path).st_mode):
            return os.open(log_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RuntimeFailure(f"cannot open guest log {log_path}: {e.strerror}") from e
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


async def spawn_init(
    pool: SpawnPool,
    domain: Domain,
    cgroup: GuestCgroup,
    *,
    log_path: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    netns_path: str | None = None,
    host: HostView | None = None,
    layers: Layers = ALL_LAYERS,
) -> GuestProcess:
    """Start the domain's init in new namespaces inside ``cgroup`` (which must exist), from an
    embryo of ``pool`` (which must be open).

    :func:`begin_spawn` and :meth:`PendingStart.finish` in one go, for callers with nothing to
    do in between. Returns once the guest's init is running. stdin is /dev/null; stdout and
    stderr go to ``log_path`` (appended) or /dev/null; for a domain with a ``<console>`` all
    three are a pty whose master is the result's ``console`` (``log_path`` is not used). Gives
    up with RuntimeFailure when init is not running after ``START_TIMEOUT`` seconds.
    """
    pending = await begin_spawn(
        pool,
        domain,
        log_path=log_path,
        extra_env=extra_env,
        joins_netns=netns_path is not None,
        host=host,
        layers=layers,
    )
    return await pending.finish(cgroup, netns_path=netns_path)


@attrs.define(eq=False)
class _ForkServer:
    """Our end of one fork server (:mod:`supervisor.guest.forkserver`) and its process."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    owner: int
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


# -- embryos: processes born in the guest's namespaces, waiting for their guest ------------------

#: namespaces an embryo is born in; the mount namespace is made at activation instead, so the
#: guest gets the host's mount table as it is at its start (an embryo may wait for minutes)
EMBRYO_BIRTH_FLAGS = CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
#: what tells kinds of embryo apart: their birth namespaces, and for a guest with an ``<idmap>``
#: a user namespace, which must own the others (made at the same clone) so that the guest's root
#: has its capabilities over its own pid (reboot), network (ports, raw sockets) and uts
#: namespaces
EMBRYO_KIND_MASK = EMBRYO_BIRTH_FLAGS | CLONE_NEWUSER
#: the kind of embryo most starts use (a guest with a network namespace of its own)
DEFAULT_EMBRYO_FLAGS = EMBRYO_BIRTH_FLAGS
#: how long a start that is the only one in flight polls for init's exec instead of sleeping
#: in epoll. The exec follows ``G`` by under a millisecond; a CPU that goes idle meanwhile can
#: take longer than that to wake (hundreds of microseconds in a VM), and no other start needs
#: the CPU then. Concurrent starts never poll: they would take CPU from each other's embryos.
EXEC_SPIN = 0.004
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
        """Kill and reap the embryo (blocking: used when the pool closes and for broken spares)."""
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


@attrs.define(eq=False)
class SpawnPool:
    """The fork servers and spare embryos guests start from: one per runtime, open while the
    runtime is (``async with``).

    Entering it starts :func:`pool_size` fork servers (so that their interpreter start, ~20-50
    ms, is not on the first guest's start) and asks for the first spares of the default kind;
    an invalid ``$VSV_SPARE_EMBRYOS`` fails it there, naming the variable. While it is open,
    each start that took a spare has it replaced by a task in the pool's own nursery, which runs
    once the start's task yields (:meth:`top_up_soon`). Leaving it, also when cancelled, kills
    and reaps every spare and stops the servers (synchronously: no cancellation cuts it short);
    nothing of a guest already started is touched. A server that died is restarted at its next
    use. Starts need the pool open (:class:`~supervisor.errors.RuntimeFailure` otherwise). It
    can be entered again once left.
    """

    #: one slot per server; a slot whose server died is refilled at its next use
    servers: list[_ForkServer | None] = attrs.Factory(list)
    #: spare embryos per kind (birth flags), oldest first
    spares: dict[int, list[_Embryo]] = attrs.Factory(dict)
    #: starts waiting for their init's exec: only a lone one polls (EXEC_SPIN)
    finishing: int = 0
    _next_server: int = 0
    #: the pid that opened the pool: a forked child must not touch its parent's processes
    _owner: int = 0
    _opened: AbstractAsyncContextManager[None] | None = None
    _nursery: trio.Nursery | None = None

    @property
    def is_open(self) -> bool:
        """Between ``__aenter__`` and ``__aexit__``, in the process that entered it."""
        return self._nursery is not None and self._owner == os.getpid()

    async def __aenter__(self) -> SpawnPool:
        if self._opened is not None:
            raise RuntimeFailure("the spawn pool is open already")
        opened = self._open()
        await opened.__aenter__()
        self._opened = opened
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.__aexit__(exc_type, exc, tb)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[None]:
        """The servers and first spares, and the nursery top-ups run in, for the body."""
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._owner = os.getpid()
            self.servers = [None] * pool_size()
            self.spares = {}
            self._nursery = nursery
            try:
                # from the trio thread: a server's parent-death signal is tied to the thread
                # that started it
                for i in range(len(self.servers)):
                    self._server_at(i)
                self.top_up(DEFAULT_EMBRYO_FLAGS)
                yield
            except BaseException as e:
                # raised again outside the nursery, so that it reaches the caller as it is
                # (not wrapped in an exception group); Cancelled too, for the scope it is for
                failure = e
            finally:
                # top-ups not run yet see the pool closed and return at once; closing is
                # synchronous, so no cancellation can cut it short
                self._nursery = None
                nursery.cancel_scope.cancel()
                self._close()
        if failure is not None:
            raise failure

    def _close(self) -> None:
        """Kill and reap every spare, then stop every server (each exits when its socket
        closes, and is reaped)."""
        if self._owner == os.getpid():
            self.discard_spares()
        self.spares = {}
        servers, self.servers = self.servers, []
        for server in servers:
            if server is not None:
                server.close()

    def _require_open(self) -> None:
        if not self.is_open:
            raise RuntimeFailure(
                "no spawn pool is open: guests start inside `async with LinuxRuntime()` "
                "(or `async with SpawnPool()`)"
            )

    def _server_at(self, i: int) -> _ForkServer:
        """The server in slot ``i``, (re)started if it is missing, closed or dead."""
        server = self.servers[i]
        if server is None or not server.usable():
            if server is not None:
                server.close()
            server = self.servers[i] = _ForkServer.start()
        return server

    def server_pids(self) -> list[int]:
        """The pids of the servers started so far (alive or not)."""
        return [s.proc.pid for s in self.servers if s is not None]

    def _request(self, flags: int) -> _Embryo | None:
        """Ask a fork server (round robin) for an embryo; None when its socket is full right
        now."""
        self._require_open()
        server = self._server_at(self._next_server % len(self.servers))
        self._next_server += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ancillary = [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))
            ]
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

    def top_up(self, flags: int = DEFAULT_EMBRYO_FLAGS) -> None:
        """Ask for spares of one kind until :func:`spare_embryos` are ready or on their way.

        Never waits: a request is a message to a fork server, whose clone then overlaps whatever
        the supervisor does next.
        """
        self._require_open()
        spares = self.spares.setdefault(flags, [])
        while len(spares) < spare_embryos():
            embryo = self._request(flags)
            if embryo is None:
                return
            spares.append(embryo)

    def top_up_soon(self, flags: int) -> None:
        """Replace the spent spare once the current task yields: called when a start is over
        (nothing happens once the pool is closed).

        Not during the start: waking a fork server hands it the CPU at once (the scheduler
        favours the woken task on an idle machine), and its clone holds the kernel's cgroup
        threadgroup lock for the whole copy of its page tables, which the start's own
        ``cgroup.procs`` writes then wait for (~1 ms).
        """
        if self._nursery is not None and self._owner == os.getpid():
            self._nursery.start_soon(self._top_up_task, flags)

    async def _top_up_task(self, flags: int) -> None:
        if not self.is_open:
            return  # closed (or closing) before this ran
        try:
            self.top_up(flags)
        except RuntimeFailure as e:
            log.warning("spare embryos: %s", e)

    async def take(self, flags: int) -> tuple[_Embryo, ChildProcess]:
        """A live embryo of this kind: a spare if one is ready, else one made now (the spare
        is replaced when the start is over: :meth:`top_up_soon`)."""
        self._require_open()
        spares = self.spares.setdefault(flags, [])
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
        fresh = self._request(flags)
        while fresh is None:  # the server's socket is full: wait until it drains
            await trio.sleep(0.001)
            fresh = self._request(flags)
        try:
            return fresh, await fresh.born()
        except BaseException:
            fresh.discard()
            raise

    def discard_spares(self) -> None:
        """Kill and reap every spare embryo (blocking; at close, and for tests)."""
        for spares in self.spares.values():
            for embryo in spares:
                embryo.discard()
            spares.clear()


@attrs.define(eq=False)
class PendingStart:
    """A start begun before the guest's cgroup and network exist (:func:`begin_spawn`).

    The embryo builds the guest's mount tree while the supervisor makes the cgroup and runs the
    prepare hooks; :meth:`finish` then moves it into the cgroup, hands it the network namespace
    and waits for init's exec. Exactly one of :meth:`finish` and :meth:`abort` must be awaited.
    """

    domain: Domain
    #: the pool the embryo came from, which replaces it once the start is over
    pool: SpawnPool
    #: None once finish or abort took it
    embryo: _Embryo | None
    child: ChildProcess
    #: the namespaces the embryo was born in, plus the mount namespace it made at activation
    made: int

    @property
    def netns_source(self) -> str | None:
        """For a guest in a user namespace of its own: the network namespace the embryo was
        born in, which a network hook must name and plumb (one it made itself would belong to
        the host's user namespace, out of the guest root's reach)."""
        if self.made & CLONE_NEWUSER and self.made & CLONE_NEWNET:
            return f"/proc/{self.child.pid}/ns/net"
        return None

    async def finish(self, cgroup: GuestCgroup, *, netns_path: str | None = None) -> GuestProcess:
        """Complete the start in ``cgroup`` (which must exist), joining ``netns_path`` if given.

        Returns once init runs; RuntimeFailure (the child killed and reaped) when it cannot.
        """
        if self.embryo is None:
            raise RuntimeFailure(f"the start of {self.domain.name} was finished or aborted")
        embryo, child, name = self.embryo, self.child, self.domain.name
        self.embryo = None
        try:
            return await self._finish(embryo, child, name, cgroup, netns_path)
        finally:
            self.pool.top_up_soon(self.made & EMBRYO_KIND_MASK)

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
        #: the console's master, which the embryo sent before its report (if it has a console)
        console: list[int] = []
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
                    while msg := await _recv_message(embryo.sock, console=console):
                        report.append(msg)
                if not report:
                    child.kill()
                    with trio.CancelScope(shield=True):
                        await child.wait()
                    detail = e if isinstance(e, RuntimeFailure) else f"{netns_path}: {e.strerror}"
                    raise RuntimeFailure(f"cannot start guest {name}: {detail}") from e
            else:
                self.pool.finishing += 1
                try:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(START_TIMEOUT) as waited:
                            # a lone start polls for init's exec rather than sleep (EXEC_SPIN)
                            spin = EXEC_SPIN if self.pool.finishing == 1 else 0.0
                            while msg := await _recv_message(
                                embryo.sock, spin=spin, console=console
                            ):
                                report.append(msg)
                finally:
                    self.pool.finishing -= 1
                if waited.cancelled_caught:
                    report = [f"Xinit did not start within {START_TIMEOUT}s".encode()]
                    child.kill()
        except BaseException:
            _close_fds(console)
            raise
        finally:
            embryo.sock.close()
        text = b"".join(report).decode(errors="replace")
        if text:
            _close_fds(console)
            with trio.CancelScope(shield=True):
                await child.wait()
            if text[0] == "E":
                raise RuntimeFailure(f"cannot start guest {name}: child setup failed: {text[1:]}")
            raise RuntimeFailure(f"cannot start guest {name}: {text[1:]}")
        if self.domain.consoles and not console:
            child.kill()
            with trio.CancelScope(shield=True):
                await child.wait()
            raise RuntimeFailure(f"cannot start guest {name}: its console was not made")
        master = console[0] if console else None
        _close_fds(console[1:])
        # init is our own child: it runs already, and there is no wrapper to look below
        try:
            ns = Namespaces(**procs.ns_inodes(child.pid))
        except RuntimeFailure:
            return GuestProcess(wrapper=child, init_pid=None, namespaces=None, console=master)
        if child.poll() is not None:
            return GuestProcess(wrapper=child, init_pid=None, namespaces=None, console=master)
        return GuestProcess(wrapper=child, init_pid=child.pid, namespaces=ns, console=master)

    async def abort(self) -> None:
        """Give up on the start: the embryo (if any) is killed and reaped."""
        embryo, child = self.embryo, self.child
        self.embryo = None
        if embryo is not None:
            embryo.sock.close()
            self.pool.top_up_soon(self.made & EMBRYO_KIND_MASK)
        if embryo is not None:
            with trio.CancelScope(shield=True):
                child.kill()
                await child.wait()


async def begin_spawn(
    pool: SpawnPool,
    domain: Domain,
    *,
    log_path: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    joins_netns: bool | None = None,
    host: HostView | None = None,
    layers: Layers = ALL_LAYERS,
    joins: tuple[NamespaceJoin, ...] = (),
) -> PendingStart:
    """Begin starting ``domain`` from an embryo of ``pool`` (which must be open) before its
    cgroup and prepare hooks exist; see PendingStart. ``joins``: see :func:`plan_spawn`.

    ``joins_netns`` says whether :meth:`PendingStart.finish` will get a network namespace to
    join (None: guess from the domain, which has one from the network subsystem when it has
    interfaces). A wrong guess costs time, not correctness: an embryo born without a network
    namespace of its own makes one at ``G`` when none is given. ``host``: what the plan needs
    of the host (the runtime probes it once; None: :func:`default_host`).
    """
    if joins_netns is None:
        joins_netns = domain.has_nics
    birth = EMBRYO_BIRTH_FLAGS
    if domain.idmap:
        # its network namespace too must be the user namespace's: a network hook then names
        # and plumbs the embryo's own (PendingStart.netns_source) instead of making one
        birth |= CLONE_NEWUSER
        if not domain.private_network:
            birth &= ~CLONE_NEWNET
    elif joins_netns or not domain.private_network:
        birth &= ~CLONE_NEWNET
    host = host if host is not None else default_host()
    # the device filesystems' detached mounts, passed to the embryo with the activation and
    # closed here after it (the embryo has its own copies): a start that fails before the
    # embryo attached them leaves nothing mounted
    mounts: list[int] = []
    out_fd: int | None = None
    try:
        devices = any(fs.type in DEVICE_FILESYSTEMS for fs in domain.filesystems)
        if devices:
            await trio.to_thread.run_sync(_mount_devices, domain, mounts)
        # born in the network namespace it keeps: its /sys can be mounted before G
        early = bool(birth & CLONE_NEWNET)
        plan = _prepare(
            domain,
            extra_env,
            host,
            layers=layers,
            sysfs_early=early,
            devices=devices,
            joins=joins,
        )
        # a guest with a console writes to its pty: the supervisor copies that to the log
        out_fd = None if plan.console else _open_log(log_path)
        embryo, child = await pool.take(birth)
    except BaseException:
        for fd in mounts:
            os.close(fd)
        if out_fd is not None:
            os.close(out_fd)
        raise
    try:
        pending = PendingStart(domain, pool, embryo=embryo, child=child, made=birth | CLONE_NEWNS)
        if plan.userns:
            try:
                _write_id_maps(child.pid, plan)
            except RuntimeFailure:
                await pending.abort()
                raise
        activation = marshal.dumps(plan.activation())
        fds = ([] if out_fd is None else [out_fd]) + mounts
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
        for fd in mounts:
            os.close(fd)
        if out_fd is not None:
            os.close(out_fd)


def _write_id_maps(pid: int, plan: SpawnPlan) -> None:
    """Give an embryo's user namespace the domain's ``<idmap>`` (once; the kernel allows no
    second write). The supervisor writes it, as the host's root, so no setgroups restriction
    applies and every range of the map is allowed."""
    for kind, text in (("uid", plan.uid_map), ("gid", plan.gid_map)):
        path = f"/proc/{pid}/{kind}_map"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            lines = text.strip().replace("\n", "; ")
            raise RuntimeFailure(
                f"idmap/{kind}: the kernel refused the map {lines!r}: {e.strerror}"
            ) from e


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


_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)


async def _recv_message(
    sock: socket.socket, *, spin: float = 0.0, console: list[int] | None = None
) -> bytes:
    """One message from a non-blocking SEQPACKET socket; b"" at EOF.

    With ``spin`` > 0 it polls for up to that many seconds before it sleeps in epoll, passing a
    checkpoint each time round (other tasks run, and trio's epoll_wait does not block while we
    are runnable): see :data:`EXEC_SPIN`. An embryo's console message (its pty master, passed
    with SCM_RIGHTS) is not returned: the descriptor is appended to ``console`` (closed when
    no list is given) and the next message is read.
    """
    until = time.perf_counter() + spin if spin > 0 else 0.0
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            if until and time.perf_counter() < until:
                os.sched_yield()  # the embryo may share this CPU: let it exec
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(sock)
            continue
        except ConnectionResetError:
            return b""
        fds = _fds_of(ancdata)
        if data == forkserver.CONSOLE_MESSAGE and console is not None:
            console.extend(fds)
            continue
        _close_fds(fds)
        if data != forkserver.CONSOLE_MESSAGE:
            return data


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried."""
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


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
    "GuestProcess",
    "MountOp",
    "PendingStart",
    "SpawnPlan",
    "SpawnPool",
    "begin_spawn",
    "plan_spawn",
    "resolve_ids",
    "spawn_init",
]
