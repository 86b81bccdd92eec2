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
wrapping (``nsenter`` + ``unshare`` + a shell) on a real host, so :meth:`LxcPeer.wrap_overhead`
measures it and benchmarks subtract it.

Every container is named with the ``vsvbench`` prefix and lives in a temporary lxcpath;
:meth:`LxcPeer.cleanup` stops every container it started and removes the cgroup directories LXC
left behind (``lxc.pivot`` only when it did not exist before the peer was made).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import time

LXC_START = "lxc-start"
LXC_STOP = "lxc-stop"
CGROUP_ROOT = "/sys/fs/cgroup"
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
        self._pivots_before = _pivots()
        os.makedirs(self.lxcpath, exist_ok=True)
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

    def _in_netns(self, argv: list[str], sysfs: bool = False) -> list[str]:
        """``argv`` run in the sandbox namespace (and with its sysfs view), if there is one."""
        if self.netns is None:
            return argv
        wrap = ["unshare", "--mount", "sh", "-c", SYSFS_WRAP, "sh"] if sysfs else []
        return ["nsenter", f"--net={self.netns}", *wrap, *argv]

    def wrap_overhead(self) -> float:
        """Seconds the sandbox wrapping of ``lxc-start`` costs by itself (0 without a netns)."""
        if self.netns is None:
            return 0.0
        t0 = time.perf_counter()
        subprocess.run(self._in_netns(["/bin/true"], sysfs=True), check=True)
        return time.perf_counter() - t0

    def start(self, name: str, veth: Veth | None = None) -> float:
        """Seconds ``lxc-start -d`` takes to return (raises when it fails)."""
        cfg = self.config(name, veth)
        self.started.add(name)
        t0 = time.perf_counter()
        subprocess.run(
            self._in_netns([LXC_START, "-P", self.lxcpath, "-n", name, "-f", cfg, "-d"], True),
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return time.perf_counter() - t0

    def stop(self, name: str) -> float:
        """Seconds ``lxc-stop -k`` takes to return."""
        t0 = time.perf_counter()
        subprocess.run(
            self._in_netns([LXC_STOP, "-P", self.lxcpath, "-n", name, "-k"]),
            check=True,
            stdin=subprocess.DEVNULL,
        )
        dt = time.perf_counter() - t0
        self.started.discard(name)
        return dt

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
            r = subprocess.run(
                self._in_netns([LXC_STOP, "-P", self.lxcpath, "-n", name, "-k"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
            if r.returncode not in (0, 2):  # 2: it was not running
                problems.append(f"lxc-stop {name}: {r.stderr.strip()}")
        self.started.clear()
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
        return problems
