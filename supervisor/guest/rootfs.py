"""A small guest root directory made from Debian's busybox-static.

The demo and the integration tests need a root that is not the host's: one static binary with
applet symlinks is enough for a shell, ``ps``, ``ip``, ``udhcpc``, ``httpd`` and
``reboot``/``poweroff``. The directory is built next to its final place and renamed into it, so a
crash halfway never leaves a half-made root that a later start would use.

A guest with an ``<idmap>`` runs as a range of host ids; its root directory must then belong to
that range (``owner``: the host uid and gid that the guest's root maps to), or the guest's root
could not write its own files. :func:`shift_owner` moves a root from one range to another.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from supervisor.errors import RuntimeFailure

BUSYBOX = "/bin/busybox"
DEFAULT_ROOT = "/var/lib/vsv/rootfs/busybox"

#: applets linked in bin/ (they all resolve to /bin/busybox)
BIN_APPLETS: tuple[str, ...] = (
    "sh",
    "ash",
    "sleep",
    "hostname",
    "ps",
    "ip",
    "ping",
    "cat",
    "ls",
    "kill",
    "mount",
    "umount",
    "echo",
    "env",
    "grep",
    "sed",
    "awk",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "touch",
    "true",
    "false",
    "test",
    "[",
    "id",
    "wget",
    "nc",
    "top",
    "uname",
    "date",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "tr",
    "cut",
    "printf",
    "stat",
    "readlink",
    "dmesg",
    "vi",
    "setsid",
    "timeout",
    "nslookup",
    "netstat",
    "pidof",
    "killall",
    "usleep",
    "chmod",
    "chown",
    "dd",
    "df",
    "du",
    "free",
    "uptime",
    "seq",
    "xargs",
    "find",
    "tee",
    "sync",
    "which",
    "whoami",
)
#: applets linked in sbin/
SBIN_APPLETS: tuple[str, ...] = (
    "init",
    "reboot",
    "poweroff",
    "halt",
    "udhcpc",
    "httpd",
    "ifconfig",
    "route",
    "syslogd",
    "start-stop-daemon",
    "sysctl",
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"

#: udhcpc calls this with $1 = deconfig|bound|renew|leasefail and the lease in the environment
UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc event script: configure the lease with busybox ip.
[ -n "$interface" ] || exit 1
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      ip route del default dev "$interface" 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi
    if [ -n "$dns" ]; then
      : > /etc/resolv.conf
      for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    fi
    ;;
esac
exit 0
"""

DIRS: tuple[str, ...] = (
    "bin",
    "sbin",
    "etc",
    "proc",
    "dev",
    "sys",
    "tmp",
    "root",
    "var/run",
    "var/log",
    "run",
    "usr/bin",
    "usr/sbin",
    "usr/share/udhcpc",
    "www",
)


def _build(dest: str, busybox: str) -> None:
    for d in DIRS:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    shutil.copy2(busybox, os.path.join(dest, "bin", "busybox"))
    for applet in BIN_APPLETS:
        os.symlink("busybox", os.path.join(dest, "bin", applet))
    for applet in SBIN_APPLETS:
        os.symlink("../bin/busybox", os.path.join(dest, "sbin", applet))
    files = {
        "etc/passwd": (PASSWD, 0o644),
        "etc/group": (GROUP, 0o644),
        "etc/hostname": ("guest\n", 0o644),
        "etc/hosts": ("127.0.0.1 localhost\n::1 localhost\n", 0o644),
        "etc/resolv.conf": ("", 0o644),
        "usr/share/udhcpc/default.script": (UDHCPC_SCRIPT, 0o755),
        "www/index.html": ("<html><body>vsv busybox guest</body></html>\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = os.path.join(dest, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)


def shift_owner(path: str, owner: tuple[int, int]) -> None:
    """Give every file of the root at ``path`` to the id range that starts at ``owner``.

    A file's ids keep their offset from the root directory's own (root's files become
    ``owner``, a file of uid 33 becomes ``owner[0] + 33``), so the same call moves a root
    between ranges, and a root already in its range is left alone. Symlinks are changed
    themselves, never what they point to.
    """
    top = os.lstat(path)
    du, dg = owner[0] - top.st_uid, owner[1] - top.st_gid
    if (du, dg) == (0, 0):
        return
    try:
        for base, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                _shift(os.path.join(base, name), du, dg)
        _shift(path, du, dg)
    except OSError as e:
        raise RuntimeFailure(f"cannot give {path} to uid {owner[0]} gid {owner[1]}: {e}") from e


def _shift(entry: str, du: int, dg: int) -> None:
    st = os.lstat(entry)
    uid, gid = st.st_uid + du, st.st_gid + dg
    if uid < 0 or gid < 0:
        raise OSError(0, f"{entry}: owner {st.st_uid}:{st.st_gid} is below the range's start")
    mode = st.st_mode
    os.lchown(entry, uid, gid)
    if not os.path.islink(entry) and mode & 0o6000:
        os.chmod(entry, mode & 0o7777)  # chown clears setuid and setgid: put them back


def prepare_busybox_root(
    path: str = DEFAULT_ROOT, *, busybox: str = BUSYBOX, owner: tuple[int, int] | None = None
) -> str:
    """Make sure ``path`` holds a busybox root; build it if missing. Returns ``path``.

    Idempotent: an existing root (one with ``bin/busybox``) is kept as it is, but for its
    owner: with ``owner`` it is given to that id range (:func:`shift_owner`). The build happens
    in a temporary directory beside ``path`` and is renamed into place, so a reader sees either
    no root or a complete one.
    """
    if os.path.exists(os.path.join(path, "bin", "busybox")):
        if owner is not None:
            shift_owner(path, owner)
        return path
    if not os.path.exists(busybox):
        raise RuntimeFailure(f"{busybox} is missing: install Debian's busybox-static")
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".vsv-rootfs-", dir=parent)
    except OSError as e:
        raise RuntimeFailure(f"cannot create a directory in {parent}: {e.strerror}") from e
    try:
        os.chmod(tmp, 0o755)
        _build(tmp, busybox)
        if owner is not None:
            shift_owner(tmp, owner)
        try:
            os.rename(tmp, path)
        except OSError:
            # someone else won the race (or left an empty dir): keep theirs if complete
            if os.path.exists(os.path.join(path, "bin", "busybox")):
                shutil.rmtree(tmp, ignore_errors=True)
                return path
            os.rmdir(path)
            os.rename(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(f"cannot build busybox root {path}: {e}") from e
    return path
