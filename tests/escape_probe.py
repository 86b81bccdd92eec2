"""Try, from inside a guest, each way out that a guest's root once had (tests/test_confinement.py).

Run by the guest's init and by ``vsv exec`` as ``python -I -S escape_probe.py ARGS`` (ARGS: a
JSON object, see ``main``); standard library only. Prints one JSON object: the capability sets
of this process and of the guest's init, and for every attempt either ``blocked: why`` or
``ESCAPED: what was reached``. An attempt that works is undone at once where it can be (a mount
unmounted, a file removed), and nothing is ever written to a kernel knob: the probe opens such
files for writing but writes nothing, so a guest that is not confined harms nothing either.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import socket
import stat
import sys
from collections.abc import Callable

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]  # fmt: skip
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

#: system call numbers (x86_64, then the generic table of aarch64 and riscv64)
SYSCALLS = {
    "x86_64": {"keyctl": 250, "open_by_handle_at": 304, "bpf": 321, "perf_event_open": 298,
               "finit_module": 313, "delete_module": 176, "kexec_load": 246,
               "io_uring_setup": 425, "syslog": 103},
    "aarch64": {"keyctl": 219, "open_by_handle_at": 265, "bpf": 280, "perf_event_open": 241,
                "finit_module": 273, "delete_module": 106, "kexec_load": 104,
                "io_uring_setup": 425, "syslog": 116},
}  # fmt: skip
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000


class Escaped(Exception):
    """The attempt reached what it should not have."""


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _syscall(name: str, *args: int) -> int:
    nr = SYSCALLS[platform.machine()][name]
    return int(libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))


def _must_fail(rc: int, what: str) -> None:
    if rc >= 0:
        raise Escaped(f"{what} succeeded")
    raise _err(what)


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    rc = libc.mount(source.encode() if source else None, target.encode(),
                    fstype.encode() if fstype else None, flags, None)  # fmt: skip
    if rc == 0:
        libc.umount2(target.encode(), MNT_DETACH)
        raise Escaped(f"mount {fstype or 'bind'} on {target} succeeded")
    raise _err(f"mount {target}")


def _open_for_write(path: str) -> None:
    """Open a file for writing and close it at once (nothing is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    os.close(fd)
    raise Escaped(f"{path} is writable")


# -- the attempts ----------------------------------------------------------------------------


def chroot_escape(args: dict[str, object]) -> None:
    """The double chroot: chroot into a subdirectory keeping the cwd outside, climb, chroot."""
    base = "/tmp/vsv-escape"
    os.makedirs(f"{base}/x", exist_ok=True)
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(base)
            os.chroot("x")
            for _ in range(64):
                os.chdir("..")
            os.chroot(".")
            os._exit(9 if os.path.exists(str(args["marker"])) else 0)
        except OSError as e:
            os._exit(100 + (e.errno or 0) % 100)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status == 9:
        raise Escaped(f"{args['marker']} visible after the double chroot")
    if status > 100:
        raise OSError(status - 100, f"chroot: {os.strerror(status - 100)}")
    # the climb ended at the guest's own root: nothing of the host's is above it
    if os.path.exists(str(args["marker"])):
        raise Escaped(f"{args['marker']} visible without an escape")
    raise OSError(
        errno.ENOENT, f"the climb ended at the guest's own root ({args['marker']} unseen)"
    )


def host_namespaces(args: dict[str, object]) -> None:
    """nsenter through /proc: any process whose mount namespace is not ours, entered."""
    own = os.stat("/proc/self/ns/mnt").st_ino
    others = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/mnt").st_ino != own:
                    others.append(name)
            except OSError:
                continue
    for pid in others:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        if libc.setns(fd, 0) == 0:
            raise Escaped(f"entered the mount namespace of pid {pid}")
    raise OSError(errno.ESRCH, f"no other mount namespace entered ({len(others)} seen)")


def remount_root_rw(args: dict[str, object]) -> None:
    _mount(None, "/", None, MS_REMOUNT | MS_BIND)


def umount_proc(args: dict[str, object]) -> None:
    for path in ("/proc", "/tmp", "/run", "/dev"):
        if libc.umount2(path.encode(), MNT_DETACH) == 0:
            raise Escaped(f"unmounted {path}")
    raise _err("umount /proc, /tmp, /run, /dev")


def mount_tmpfs(args: dict[str, object]) -> None:
    os.makedirs("/tmp/vsv-m", exist_ok=True)
    _mount("x", "/tmp/vsv-m", "tmpfs", 0)


def mount_cgroup(args: dict[str, object]) -> None:
    """mount -t cgroup -o pids: the host's whole v1 tree, release_agent and all."""
    os.makedirs("/tmp/vsv-cg", exist_ok=True)
    rc = libc.mount(b"none", b"/tmp/vsv-cg", b"cgroup", 0, b"pids")
    if rc == 0:
        seen = os.listdir("/tmp/vsv-cg")
        libc.umount2(b"/tmp/vsv-cg", MNT_DETACH)
        raise Escaped(f"mounted the pids hierarchy: {sorted(seen)[:5]}")
    raise _err("mount -t cgroup -o pids")


def cgroup_files(args: dict[str, object]) -> None:
    """The guest's own cgroupfs: another guest's cgroup, leaving its own, release_agent."""
    other = str(args["other_cgroup"])
    for top, _dirs, _files in os.walk("/sys/fs/cgroup"):
        if os.path.basename(top) == other:
            raise Escaped(f"another guest's cgroup is visible: {top}")
    attempts = [
        "/sys/fs/cgroup/pids/cgroup.procs",
        "/sys/fs/cgroup/memory/cgroup.procs",
        "/sys/fs/cgroup/unified/cgroup.procs",
        "/sys/fs/cgroup/cgroup.procs",
        f"/sys/fs/cgroup/freezer/{other}/freezer.state",
        "/sys/fs/cgroup/pids/release_agent",
    ]
    reasons = []
    for path in attempts:
        try:
            _open_for_write(path)
        except OSError as e:
            reasons.append(f"{path}: {e.strerror}")
    raise OSError(errno.EROFS, "; ".join(reasons))


def mknod_block(args: dict[str, object]) -> None:
    block: list[int] = args["block_dev"]  # type: ignore[assignment]
    major, minor = block
    path = "/tmp/vsv-blk"
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    try:
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)
        raise Escaped(f"opened block device {major}:{minor}")
    finally:
        os.unlink(path)


def open_block_node(args: dict[str, object]) -> None:
    """A block device node the host left in the guest's root (0666): the device allowlist on
    the guest's cgroup must refuse it though the file's mode allows it."""
    path = str(args["block_node"])
    if not os.path.exists(path):
        raise OSError(errno.ENOENT, f"{path}: no node in this guest's root")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    raise Escaped(f"opened {path}")


def kmsg(args: dict[str, object]) -> None:
    """The host's kernel log: /dev/kmsg, a node made for it, syslog(2)."""
    reasons = []
    for path in ("/dev/kmsg",):
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            raise Escaped(f"opened {path}")
        except OSError as e:
            reasons.append(f"{path}: {e.strerror}")
    try:
        os.mknod("/tmp/vsv-kmsg", 0o600 | stat.S_IFCHR, os.makedev(1, 11))
        try:
            os.close(os.open("/tmp/vsv-kmsg", os.O_RDONLY | os.O_NONBLOCK))
            raise Escaped("opened a /dev/kmsg node made by mknod")
        finally:
            os.unlink("/tmp/vsv-kmsg")
    except OSError as e:
        reasons.append(f"mknod 1:11: {e.strerror}")
    buf = ctypes.create_string_buffer(4096)
    if libc.klogctl(3, buf, 4096) >= 0:
        raise Escaped("syslog(2) read the kernel log")
    reasons.append(f"syslog(2): {os.strerror(ctypes.get_errno())}")
    raise OSError(errno.EPERM, "; ".join(reasons))


def proc_sys(args: dict[str, object]) -> None:
    """The host's sysctls and sysrq (opened for writing only: nothing is written)."""
    reasons = []
    tried = ("/proc/sys/vm/drop_caches", "/proc/sys/kernel/sysrq", "/proc/sysrq-trigger",
             "/proc/sys/kernel/core_pattern")  # fmt: skip
    for path in tried:
        try:
            _open_for_write(path)
        except FileNotFoundError:
            continue  # a kernel built without it
        except OSError as e:
            reasons.append(f"{path}: {e.strerror}")
    if not reasons:
        raise Escaped("none of the sysctls tried exists")
    raise OSError(errno.EROFS, "; ".join(reasons))


def sysfs(args: dict[str, object]) -> None:
    try:
        _open_for_write("/sys/kernel/uevent_helper")
    except OSError:
        pass
    _mount(None, "/sys", None, MS_REMOUNT | MS_BIND)


def kallsyms(args: dict[str, object]) -> None:
    with open("/proc/kallsyms") as f:
        lines = f.read().splitlines()
    shown = [line for line in lines if line.split()[0].strip("0")]
    if shown:
        raise Escaped(f"/proc/kallsyms shows addresses: {shown[0]}")
    raise OSError(errno.EPERM, f"/proc/kallsyms: no address ({len(lines)} lines)")


def api_sockets(args: dict[str, object]) -> None:
    reasons = []
    for path in args["sockets"]:  # type: ignore[attr-defined]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            raise Escaped(f"connected to {path}")
        except OSError as e:
            reasons.append(f"{path}: {e.strerror}")
        finally:
            s.close()
    raise OSError(errno.ENOENT, "; ".join(reasons))


def host_secrets(args: dict[str, object]) -> None:
    """A guest without a root filesystem: root's and people's files, shadow, the state dir
    (what the test itself bound there, its ``allowed`` names, aside)."""
    allowed: dict[str, list[str]] = args.get("allowed", {})  # type: ignore[assignment]
    for path in ("/root", "/home", str(args["state_dir"]), "/run/netns"):
        try:
            listed = set(os.listdir(path)) - set(allowed.get(path, ()))
        except FileNotFoundError:
            continue
        if listed:
            raise Escaped(f"{path} lists {sorted(listed)[:5]}")
    for path in ("/etc/shadow", "/etc/gshadow"):
        try:
            with open(path, "rb") as f:
                if f.read():
                    raise Escaped(f"read {path}")
        except FileNotFoundError:
            pass
    raise OSError(errno.ENOENT, "nothing of the host's secrets or state shown")


def kernel_calls(args: dict[str, object]) -> None:
    """Modules, kexec, keyrings, file handles, BPF, perf, io_uring, user namespaces."""
    reasons = []
    calls: tuple[tuple[str, Callable[[], int]], ...] = (
        ("finit_module", lambda: _syscall("finit_module", -1, 0, 0)),
        ("delete_module", lambda: _syscall("delete_module", 0, 0)),
        ("kexec_load", lambda: _syscall("kexec_load", 0, 0, 0, 0)),
        ("keyctl", lambda: _syscall("keyctl", 1, 0)),  # KEYCTL_JOIN_SESSION_KEYRING
        ("open_by_handle_at", lambda: _syscall("open_by_handle_at", -100, 0, 0)),
        ("bpf", lambda: _syscall("bpf", 5, 0, 0)),
        ("perf_event_open", lambda: _syscall("perf_event_open", 0, 0, -1, -1, 0)),
        ("io_uring_setup", lambda: _syscall("io_uring_setup", 1, 0)),
        ("unshare(CLONE_NEWUSER)", lambda: int(libc.unshare(CLONE_NEWUSER))),
    )
    for name, call in calls:
        rc = call()
        err = ctypes.get_errno()
        if rc >= 0:
            raise Escaped(f"{name} succeeded")
        if err != errno.EPERM and err != errno.ENOSYS:
            raise Escaped(f"{name} reached the kernel ({os.strerror(err)})")
        reasons.append(f"{name}: {os.strerror(err)}")
    raise OSError(errno.EPERM, "; ".join(reasons))


def host_ptys(args: dict[str, object]) -> None:
    """Every pty this process holds (a console's, if init has one) and /dev/console are of the
    guest's own devpts: none is a handle on the host's terminals."""
    own = os.stat("/dev/pts/ptmx").st_dev
    held = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) < 144:
            if st.st_dev != own:
                raise Escaped(f"fd {name} is a pty of another devpts ({os.ttyname(int(name))})")
            held.append(f"fd {name}")
    try:
        console = os.stat("/dev/console")
    except FileNotFoundError:
        console = None
    if console is not None and 136 <= os.major(console.st_rdev) < 144 and console.st_dev != own:
        raise Escaped("/dev/console is a pty of another devpts")
    what = "console " + ", ".join(held) if held else "no pty held"
    raise OSError(errno.ENOENT, f"only ptys of the guest's own devpts ({what})")


ATTEMPTS: dict[str, Callable[[dict[str, object]], None]] = {
    "chroot_escape": chroot_escape,
    "host_namespaces": host_namespaces,
    "remount_root_rw": remount_root_rw,
    "umount_proc": umount_proc,
    "mount_tmpfs": mount_tmpfs,
    "mount_cgroup": mount_cgroup,
    "cgroup_files": cgroup_files,
    "mknod_block": mknod_block,
    "open_block_node": open_block_node,
    "kmsg": kmsg,
    "proc_sys": proc_sys,
    "sysfs": sysfs,
    "kallsyms": kallsyms,
    "api_sockets": api_sockets,
    "host_secrets": host_secrets,
    "kernel_calls": kernel_calls,
    "host_ptys": host_ptys,
}


def caps(pid: str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Seccomp", "NoNewPrivs"):
                out[key] = value.strip()
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    results: dict[str, str] = {}
    for name, attempt in ATTEMPTS.items():
        try:
            attempt(args)
            results[name] = "ESCAPED: no error"
        except Escaped as e:
            results[name] = f"ESCAPED: {e}"
        except OSError as e:
            results[name] = f"blocked: {e.strerror or e}"
    print(json.dumps({"self": caps("self"), "init": caps("1"), "results": results}), flush=True)


if __name__ == "__main__":
    main()
