"""LXC as the peer of the daemon benchmark: minimal containers on the same busybox root.

Why a peer: the targets of the core runtime are ratios to what LXC 5.0 does on the same machine
in the same run (architecture, "what starting a guest costs"), so LXC is timed here with the same
root directory, an equivalent init and the same namespaces (pid, mount, uts, ipc and a network
namespace without NICs: ``lxc.net.0.type = empty``), without AppArmor.

What is timed is what an operator waits for: ``lxc-start -d`` until the command returns (LXC
waits for the container to reach RUNNING; :meth:`LxcPeer.init_runs` tells whether the init
program was already exec'd then) and ``lxc-stop -k`` until it returns.

With ``netns`` (a sandbox network namespace standing for the host) every LXC command runs inside
it, and :meth:`LxcPeer.config` can give a container a veth whose host end LXC enslaves to a bridge
in that namespace. Two things make this work: LXC creates the host end in the namespace it runs
in, and its command socket is an abstract socket, so ``lxc-stop`` must run there too; and LXC
checks that the bridge is a Linux bridge through ``/sys/class/net``, which shows the namespace
that mounted sysfs, so ``lxc-start`` runs in a private mount namespace where the sandbox's own
net entries are bind-mounted over the host's (``SYSFS_WRAP``). LXC would not pay for that
wrapping (``nsenter`` + ``unshare`` + a shell, about 11 ms) on a real host, so it is paid once:
a small launcher process is started inside the wrapping and runs each LXC command itself,
timing it with its own clock (:class:`_Launcher`). Subtracting a separately measured wrapper
cost, as earlier versions did, left the LXC figure with the wrapper's noise (a millisecond or
two either way) and made a veth start look no slower than one without a network.

Every container is named with the ``vsvbench`` prefix and lives in a temporary lxcpath;
:meth:`LxcPeer.cleanup` stops every container it started and removes the cgroup directories LXC
left behind (``lxc.pivot`` only when it did not exist before the peer was made) and LXC's lock
directory of the lxcpath under ``/run/lxc/lock`` (with the parents made for it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import time

LXC_START = "lxc-start"
LXC_STOP = "lxc-stop"
CGROUP_ROOT = "/sys/fs/cgroup"
#: where LXC (as root) keeps a lock directory per lxcpath: ``LOCK_ROOT/<lxcpath>``, made by the
#: first command on that path and left behind by LXC, so the peer removes it
LOCK_ROOT = "/run/lxc/lock"
#: the init program LXC runs: the same loop as the supervisor's benchmark guests
INIT_SCRIPT = "#!/bin/sh\ntrap 'exit 0' TERM; while :; do sleep 1; done\n"
INIT_PATH = "/sbin/vsvbench-init"
#: shows the current network namespace's links in /sys/class/net (see the module docstring)
SYSFS_WRAP = (
    "set -e; mount --make-rprivate /; d=$(mktemp -d /tmp/vsvbench-sysfs.XXXXXX); "
    'mount -t sysfs sysfs "$d"; mount --bind "$d/class/net" /sys/class/net; '
    'mount --bind "$d/devices/virtual/net" /sys/devices/virtual/net; '
    'umount -l "$d"; rmdir "$d"; exec "$@"'
)


#: the launcher: one JSON argv per line in, one JSON {"rc", "s", "err"} per line out
LAUNCHER = r"""
import json, subprocess, sys, time
for line in sys.stdin:
    argv = json.loads(line)
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    s = time.perf_counter() - t0
    sys.stdout.write(json.dumps({"rc": r.returncode, "s": s, "err": r.stderr[-2000:]}) + "\n")
    sys.stdout.flush()
"""


class _Launcher:
    """A process inside the sandbox namespace (and its sysfs view) that runs and times commands.

    Started once through the ``nsenter``/``unshare`` wrapping, so the commands it runs pay
    nothing for it: what is timed is the command alone, as on a host that is its own sandbox.
    """

    def __init__(self, netns: str) -> None:
        wrap = ["unshare", "--mount", "sh", "-c", SYSFS_WRAP, "sh"]
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", *wrap, "python3", "-I", "-S", "-c", LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, argv: list[str]) -> tuple[int, float, str]:
        """(exit status, seconds, stderr) of ``argv`` run inside the sandbox."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the LXC launcher ended (status {self.proc.wait()})")
        reply = json.loads(line)
        return int(reply["rc"]), float(reply["s"]), str(reply["err"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclasses.dataclass(frozen=True)
class Veth:
    """One veth NIC for a container: host end on ``bridge``, a static address and gateway."""

    bridge: str
    address: str  # with prefix length, e.g. 10.79.250.1/16
    gateway: str


def available() -> bool:
    """True when LXC's tools are installed and we are root (LXC then needs no setup)."""
    return os.geteuid() == 0 and shutil.which(LXC_START) is not None


def _hierarchies() -> list[str]:
    out = []
    for entry in sorted(os.listdir(CGROUP_ROOT)):
        path = os.path.join(CGROUP_ROOT, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            out.append(path)
    return out


def _pivots() -> set[str]:
    return {
        os.path.join(h, "lxc.pivot")
        for h in _hierarchies()
        if os.path.isdir(os.path.join(h, "lxc.pivot"))
    }


def _lock_chain(lxcpath: str) -> list[str]:
    """Every directory from /run/lxc down to LXC's lock directory of ``lxcpath``."""
    chain = [os.path.dirname(LOCK_ROOT), LOCK_ROOT]
    for part in lxcpath.strip("/").split("/"):
        chain.append(os.path.join(chain[-1], part))
    return chain


def memory_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in KiB, from ``smaps_rollup``; (0, 0) when it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        return (0, 0)
    return (rss, pss)


class LxcPeer:
    """Minimal LXC containers on one root directory, under a private lxcpath."""

    def __init__(
        self, workdir: str, rootfs: str, prefix: str = "vsvbench", netns: str | None = None
    ) -> None:
        self.netns = netns
        self.lxcpath = os.path.join(workdir, "lxcpath")
        self.rootfs = rootfs
        self.prefix = prefix
        self.started: set[str] = set()
        self._launcher: _Launcher | None = None
        self._pivots_before = _pivots()
        os.makedirs(self.lxcpath, exist_ok=True)
        self._locks_before = {d for d in _lock_chain(self.lxcpath) if os.path.isdir(d)}
        init = os.path.join(rootfs, INIT_PATH.lstrip("/"))
        with open(init, "w") as f:
            f.write(INIT_SCRIPT)
        os.chmod(init, 0o755)

    def name(self, index: int) -> str:
        return f"{self.prefix}-lxc{index}"

    def config(self, name: str, veth: Veth | None = None) -> str:
        """Write (once) and return the container's config file."""
        path = os.path.join(self.lxcpath, f"{name}.conf")
        if veth is None:
            net = "lxc.net.0.type = empty\n"
        else:
            net = (
                "lxc.net.0.type = veth\n"
                f"lxc.net.0.link = {veth.bridge}\n"
                "lxc.net.0.name = eth0\n"
                "lxc.net.0.flags = up\n"
                f"lxc.net.0.ipv4.address = {veth.address}\n"
                f"lxc.net.0.ipv4.gateway = {veth.gateway}\n"
            )
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(
                    f"lxc.uts.name = {name}\n"
                    f"lxc.rootfs.path = dir:{self.rootfs}\n"
                    f"lxc.init.cmd = {INIT_PATH}\n"
                    f"{net}"
                    "lxc.apparmor.profile = unconfined\n"
                    "lxc.mount.auto = proc:rw sys:ro\n"
                    "lxc.autodev = 1\n"
                )
        return path

    def _run(self, argv: list[str]) -> tuple[int, float, str]:
        """(exit status, seconds, stderr) of an LXC command, in the sandbox if there is one."""
        if self.netns is not None:
            if self._launcher is None:
                self._launcher = _Launcher(self.netns)
            return self._launcher.run(argv)
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        return r.returncode, time.perf_counter() - t0, r.stderr

    def wrap_overhead(self) -> float:
        """What the sandbox wrapping adds to a timed command: nothing, since the launcher."""
        return 0.0

    def start(self, name: str, veth: Veth | None = None) -> float:
        """Seconds ``lxc-start -d`` takes to return (raises when it fails)."""
        cfg = self.config(name, veth)
        self.started.add(name)
        rc, seconds, err = self._run([LXC_START, "-P", self.lxcpath, "-n", name, "-f", cfg, "-d"])
        if rc != 0:
            raise RuntimeError(f"lxc-start {name} failed ({rc}): {err.strip()}")
        return seconds

    def stop(self, name: str) -> float:
        """Seconds ``lxc-stop -k`` takes to return."""
        rc, seconds, err = self._run([LXC_STOP, "-P", self.lxcpath, "-n", name, "-k"])
        if rc != 0:
            raise RuntimeError(f"lxc-stop {name} failed ({rc}): {err.strip()}")
        self.started.discard(name)
        return seconds

    def _payload_pids(self, name: str) -> list[int]:
        path = os.path.join(CGROUP_ROOT, "pids", f"lxc.payload.{name}", "cgroup.procs")
        try:
            with open(path) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def init_runs(self, name: str) -> bool:
        """True when the container's init already runs the init program (not LXC's code)."""
        for pid in self._payload_pids(name):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe").endswith("busybox"):
                    return True
        return False

    def monitor_pids(self) -> list[int]:
        """The ``[lxc monitor]`` processes of the containers this peer runs."""
        found: list[int] = []
        for name in self.started:
            path = os.path.join(CGROUP_ROOT, "pids", f"lxc.monitor.{name}", "cgroup.procs")
            with contextlib.suppress(OSError), open(path) as f:
                found.extend(int(x) for x in f.read().split())
        return found

    def cleanup(self) -> list[str]:
        """Stop what still runs and remove LXC's cgroup leftovers; returns what went wrong."""
        problems: list[str] = []
        for name in sorted(self.started):
            try:
                rc, _s, err = self._run([LXC_STOP, "-P", self.lxcpath, "-n", name, "-k"])
            except RuntimeError as e:  # the launcher died: stop from here, wrapped
                rc, err = 1, str(e)
                if self.netns is not None:
                    wrapped = ["nsenter", f"--net={self.netns}", LXC_STOP, "-P", self.lxcpath,
                               "-n", name, "-k"]  # fmt: skip
                    r = subprocess.run(wrapped, capture_output=True, text=True)
                    rc, err = r.returncode, r.stderr
            if rc not in (0, 2):  # 2: it was not running
                problems.append(f"lxc-stop {name}: {err.strip()}")
        self.started.clear()
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None
        for h in _hierarchies():
            for entry in os.listdir(h):
                if entry.startswith((f"lxc.payload.{self.prefix}", f"lxc.monitor.{self.prefix}")):
                    try:
                        os.rmdir(os.path.join(h, entry))
                    except OSError as e:
                        problems.append(f"rmdir {h}/{entry}: {e.strerror}")
        for pivot in _pivots() - self._pivots_before:
            with contextlib.suppress(OSError):
                os.rmdir(pivot)
        shutil.rmtree(self.lxcpath, ignore_errors=True)
        problems += self._remove_locks()
        return problems

    def _remove_locks(self) -> list[str]:
        """Remove LXC's lock directory of our lxcpath and the parents it made for it (those that
        did not exist before this peer; a parent another lxcpath still uses stays)."""
        chain = _lock_chain(self.lxcpath)
        if chain[-1] not in self._locks_before:
            shutil.rmtree(chain[-1], ignore_errors=True)
        problems: list[str] = []
        for path in reversed(chain[:-1]):
            if path in self._locks_before or not os.path.isdir(path):
                continue
            try:
                os.rmdir(path)
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    problems.append(f"rmdir {path}: {e.strerror}")
                break
        return problems
