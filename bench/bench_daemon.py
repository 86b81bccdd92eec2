"""Core runtime of the supervisor against its floors and LXC, measured in the same run.

What is measured (needs root), each start/destroy figure in two regimes: an idle gap of
``IDLE_GAP`` seconds before every timed operation (the first ``cgroup.procs`` write after idle
waits for an RCU grace period on these machines) and back to back:

- start: ``Supervisor.start_domain`` called -> its ``STARTED BOOTED`` event (the event's time
  stamp); beside it the floors ``unshare --fork --pid --mount --uts --ipc --net --mount-proc
  /bin/true`` (whole process) and the same joining a cgroup in every hierarchy first, and LXC's
  ``lxc-start -d`` (until it returns);
- destroy: ``destroy_domain`` called -> ``STOPPED DESTROYED``; floor: kill a running unshare'd
  guest through its cgroup, reap it and rmdir its cgroups; LXC: ``lxc-stop -k``;
- N guests started at once (N ``start_domain`` calls in one trio nursery, until all returned)
  against the kernel floor of N starts at once (:func:`floor_burst`: N unshare floors, each
  joining cgroups of its own, no supervisor): ``BURSTS`` bursts of each, interleaved, the target
  on the ratio of the medians (issue 13: at most 1.2x), on a quiet machine and under load (a
  CPU hog per CPU during both); with the CPU each party used per burst. Beside it (info) N
  floors one after another and LXC starting N containers one after another;
- supervisor RSS per running guest: VmRSS of this process (the supervisor runs in it) before
  defining M guests and with all M running, divided by M; beside it the Pss of each LXC
  container's monitor process (the supervisor has no process per guest besides the guest's
  init, its own child; a process between them would be counted as a wrapper).

Prints a Markdown table (median with min-max in ms, ratio to LXC, target, met) and writes JSON to
bench/results/daemon.json. Everything it creates is named ``vsvbench...`` and is removed also on
failure or Ctrl-C; ``leakcheck --prefix vsvbench`` runs at the end.

    .venv/bin/python bench/bench_daemon.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lxc_peer
import trio

from supervisor.bus import Gap, Subscription
from supervisor.daemon import Supervisor
from supervisor.events import Event
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, attach_to, detect_layout
from supervisor.guest.linux import LinuxRuntime
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, OsSpec

PREFIX = "vsvbench"
IDLE_GAP = 0.12
INIT_LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"
UNSHARE = ["/usr/bin/unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net",
           "--mount-proc"]  # fmt: skip
#: the project's leak checker, in the shared/ folder beside the repository (CI gets a copy there)
LEAKCHECK = str(Path(__file__).resolve().parents[2] / "shared" / "tools" / "leakcheck")
#: how many guests boot at once while filling the supervisor for the RSS figure (a bound keeps
#: every start well inside spawn's own start timeout on a 2-CPU machine)
FILL_CONCURRENCY = 50

#: start and destroy: at most this times LXC's; concurrent_floor: n starts at once at most this
#: times the floor of n starts at once (issue 13, replacing "<= 0.3x LXC in a row")
TARGETS = {"start": 0.6, "destroy": 0.5, "concurrent_floor": 1.2, "rss_kib_per_guest": 512.0}

Samples = list[float]


def summary(samples: Samples) -> dict[str, float]:
    """Median, min, max in ms of samples in seconds."""
    ms = [s * 1000 for s in samples]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }


def vm_rss_kib() -> int:
    """VmRSS of this process (the supervisor) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def results_path(name: str) -> Path:
    """Where a benchmark writes its JSON: bench/results, or the directory in
    ``$VSV_BENCH_RESULTS`` (report.py's smoke mode, which must not touch bench/results)."""
    base = os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
    return Path(base) / name


def leakcheck(prefix: str) -> tuple[bool, str]:
    """Run the leak checker for ``prefix``: (nothing left, its answer). Where shared/ is not
    beside the repository the check is skipped (as ``.ci/run`` does) and says so."""
    if not os.access(LEAKCHECK, os.X_OK):
        return True, f"leakcheck: {LEAKCHECK} not found; not run"
    r = subprocess.run([LEAKCHECK, "--prefix", prefix], capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def cgroup2_options() -> str:
    """The mount options of every cgroup2 mount (``favordynmods`` changes both regimes)."""
    with open("/proc/mounts") as f:
        opts = [f"{p[1]}: {p[3]}" for p in (line.split() for line in f) if p[2] == "cgroup2"]
    return "; ".join(opts) or "no cgroup2 mount"


# -- floors (synchronous on purpose: nothing else runs in between) -----------------------------


def floor_start(procs_files: tuple[str, ...] | None) -> float:
    """One whole ``unshare ... /bin/true`` run, optionally joining a cgroup before exec."""
    preexec = None if procs_files is None else (lambda: attach_to(procs_files))
    t0 = time.perf_counter()
    subprocess.run([*UNSHARE, "/bin/true"], check=True, preexec_fn=preexec)
    return time.perf_counter() - t0


def floor_burst(layout: CgroupLayout, n: int) -> float:
    """n unshare floors at once, each in new cgroups of its own in every hierarchy: seconds.

    The least the kernel does for n concurrent starts with no supervisor around them: per
    start a cgroup directory in every hierarchy, a process moved into them, the namespaces.
    The processes come from posix_spawn (vfork: this process's size costs nothing) and this
    process writes each pid into its cgroups while the child may already exec; the kernel does
    the same work as for a join before exec. Until every process has been reaped.
    """
    argv = [*UNSHARE, "/bin/true"]
    dirs = [[os.path.join(h, f"{PREFIX}-burst{i}") for h in layout.hierarchies()] for i in range(n)]
    t0 = time.perf_counter()
    pids = []
    for group in dirs:
        for d in group:
            os.mkdir(d)
        pid = os.posix_spawn(argv[0], argv, os.environ)
        pids.append(pid)
        for d in group:
            with contextlib.suppress(ProcessLookupError), open(f"{d}/cgroup.procs", "w") as f:
                f.write(str(pid))
    for pid in pids:
        os.waitpid(pid, 0)
    dt = time.perf_counter() - t0
    for group in dirs:
        for d in group:
            _rmdir_when_empty(d)
    return dt


def _rmdir_when_empty(path: str) -> None:
    """rmdir a cgroup whose last process was just reaped (its removal from it can lag)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0002)


class FloorGuest:
    """An unshare'd ``sleep`` in cgroups of its own: the least a destroy has to undo."""

    def __init__(self, layout: CgroupLayout) -> None:
        self.layout = layout
        self.dirs = [os.path.join(h, f"{PREFIX}-floorkill") for h in layout.hierarchies()]
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)
        files = tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)
        self.proc = subprocess.Popen(
            [*UNSHARE, "/bin/sleep", "1000"], preexec_fn=lambda: attach_to(files)
        )
        deadline = time.monotonic() + 5
        while len(self._pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)

    def _pids(self) -> list[int]:
        with open(os.path.join(self.dirs[-1], "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def destroy(self) -> float:
        """Kill everything in the cgroup, reap the wrapper, wait empty, rmdir: seconds."""
        assert self.proc is not None
        t0 = time.perf_counter()
        kill = os.path.join(self.dirs[-1], "cgroup.kill")
        if os.path.exists(kill):
            with open(kill, "w") as f:
                f.write("1")
        else:
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        while self._pids():
            time.sleep(0.0002)
        for d in self.dirs:
            _rmdir_when_empty(d)
        dt = time.perf_counter() - t0
        self.proc = None
        return dt


# -- the supervisor side -----------------------------------------------------------------------


def guest(name: str, root: str) -> Domain:
    """A vserver guest on the busybox root with a private network and a shell loop as init."""
    return Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", INIT_LOOP)),
        filesystems=(Filesystem(source=root, target="/"),),
        privnet=True,
    )


class Timer:
    """Times supervisor operations by the events they publish."""

    def __init__(self, sup: Supervisor, sub: Subscription) -> None:
        self.sup = sup
        self.sub = sub

    def drain(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                item = self.sub.receive_nowait()
            except trio.WouldBlock:
                return out
            if isinstance(item, Gap):
                raise RuntimeError(f"the benchmark's subscription missed events: {item}")  # noqa: TRY004
            out.append(item)

    @staticmethod
    def find(events: list[Event], name: str, text: str, since: float) -> Event:
        for e in events:
            if e.name == name and f"{e.type} {e.detail}" == text and e.time >= since:
                return e
        raise RuntimeError(f"no {text} event for {name}")

    async def start(self, name: str) -> tuple[float, float]:
        """(call -> STARTED BOOTED event, call -> start_domain returned) in seconds."""
        self.drain()
        wall = time.time()
        t0 = time.perf_counter()
        await self.sup.start_domain(name)
        returned = time.perf_counter() - t0
        event = self.find(self.drain(), name, "STARTED BOOTED", wall)
        return event.time - wall, returned

    async def destroy(self, name: str) -> tuple[float, float]:
        """(call -> STOPPED DESTROYED event, call -> destroy_domain returned) in seconds."""
        self.drain()
        wall = time.time()
        t0 = time.perf_counter()
        await self.sup.destroy_domain(name)
        returned = time.perf_counter() - t0
        event = self.find(self.drain(), name, "STOPPED DESTROYED", wall)
        return event.time - wall, returned


#: run dirs made by :func:`tmpfs_run_dir`, removed by the benchmarks' cleanup
RUN_DIRS: list[str] = []


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4]
            fstype = fields[fields.index("-") + 1]
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, fstype
    return kind


def tmpfs_run_dir() -> tuple[Path, str]:
    """A run dir for the supervisor under test on a tmpfs, and where it is.

    The supervisor's default run dir is /run/vsv, a tmpfs on systemd hosts. Where /run is not
    a tmpfs (this VM: it is on the root ext4), its two run records per start cost ~0.5 ms of
    ext4 inode creation that a normal host does not pay, so the run dir goes to /dev/shm.
    """
    base = "/run" if fs_type("/run") == "tmpfs" else "/dev/shm"
    path = tempfile.mkdtemp(prefix=f"{PREFIX}-run-", dir=base)
    RUN_DIRS.append(path)
    return Path(path), f"{base} ({fs_type(base)})"


def remove_run_dirs() -> None:
    """Remove the run dirs :func:`tmpfs_run_dir` made."""
    while RUN_DIRS:
        shutil.rmtree(RUN_DIRS.pop(), ignore_errors=True)


async def gap(idle: bool) -> None:
    if idle:
        await trio.sleep(IDLE_GAP)


async def run_all(
    names: list[str], fn: Callable[[str], Awaitable[Any]], limit: int | None = None
) -> float:
    """Run ``fn(name)`` for every name concurrently (at most ``limit`` at once): seconds."""
    limiter = trio.CapacityLimiter(limit or len(names))

    async def one(name: str) -> None:
        async with limiter:
            await fn(name)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return time.perf_counter() - t0


# -- the benchmark -----------------------------------------------------------------------------


class Run:
    """Everything one benchmark run creates, so that cleanup can find it after any failure."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.layout = detect_layout()
        self.peer: lxc_peer.LxcPeer | None = None
        self.floor_cg = GuestCgroup(self.layout, PREFIX, "floor")
        self.floor_guest = FloorGuest(self.layout)
        #: the CPU hogs of the "under load" regime while it runs
        self.hogs: list[subprocess.Popen[bytes]] = []


async def measure(run: Run, quick: bool, runs: int, do_profile: bool) -> dict[str, Any]:
    n_conc = 20 if quick else 100
    n_rss = 200 if quick else 1000
    root = prepare_busybox_root(os.path.join(run.workdir, "rootfs"))
    if lxc_peer.available():
        run.peer = lxc_peer.LxcPeer(run.workdir, root, PREFIX)
    peer = run.peer
    run.floor_cg.create()
    procs_files = run.floor_cg.procs_files()
    results: dict[str, Any] = {
        "quick": quick,
        "runs": runs,
        "idle_gap_s": IDLE_GAP,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "cgroup2_mount": cgroup2_options(),
        "layout": run.layout.kind,
        "hierarchies": len(run.layout.hierarchies()),
        "lxc": peer is not None,
        "targets": TARGETS,
    }
    run_dir, results["run_dir"] = tmpfs_run_dir()
    sup = Supervisor(
        state_dir=Path(run.workdir) / "state",
        run_dir=run_dir,
        prefix=PREFIX,
        shutdown_timeout=5.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            async with sup.bus.subscribe("bench", buffer=1_000_000) as sub:
                timer = Timer(sup, sub)
                await sup.define_domain(guest("one", root))
                # warm-up: first fork paths, imports, run-dir files
                for _ in range(2):
                    await timer.start("one")
                    await timer.destroy("one")
                floor_start(procs_files)
                run.floor_guest.spawn()
                run.floor_guest.destroy()
                if peer is not None:
                    peer.start(peer.name(0))
                    peer.stop(peer.name(0))

                for regime, idle in (("idle", True), ("back_to_back", False)):
                    results[regime] = await single_ops(run, timer, idle, runs, procs_files)
                results["concurrent"] = await concurrent(run, sup, timer, root, n_conc, procs_files)
                results["rss"] = await rss(sup, root, n_rss)
                if do_profile:
                    results["profile"] = await profile(timer, runs)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(120):
                running = [n for n, g in sup.guests.items() if g.busy or g.cgroup]
                await run_all(running, sup.destroy_domain, FILL_CONCURRENCY)
            nursery.cancel_scope.cancel()
    results["loadavg_after"] = os.getloadavg()
    return results


async def single_ops(
    run: Run, timer: Timer, idle: bool, runs: int, procs_files: tuple[str, ...]
) -> dict[str, Any]:
    """Start and destroy, one at a time, for the supervisor, the floors and LXC."""
    start_ev: Samples = []
    start_ret: Samples = []
    destroy_ev: Samples = []
    destroy_ret: Samples = []
    for _ in range(runs):
        await gap(idle)
        ev, ret = await timer.start("one")
        start_ev.append(ev)
        start_ret.append(ret)
        await gap(idle)
        ev, ret = await timer.destroy("one")
        destroy_ev.append(ev)
        destroy_ret.append(ret)
    floor: Samples = []
    floor_cg: Samples = []
    floor_destroy: Samples = []
    for _ in range(runs):
        await gap(idle)
        floor.append(floor_start(None))
        await gap(idle)
        floor_cg.append(floor_start(procs_files))
        run.floor_guest.spawn()
        await gap(idle)
        floor_destroy.append(run.floor_guest.destroy())
    out: dict[str, Any] = {
        "start": summary(start_ev),
        "start_returned": summary(start_ret),
        "destroy": summary(destroy_ev),
        "destroy_returned": summary(destroy_ret),
        "floor_unshare": summary(floor),
        "floor_unshare_cgroup": summary(floor_cg),
        "floor_destroy": summary(floor_destroy),
    }
    peer = run.peer
    if peer is not None:
        name = peer.name(0)
        lxc_start: Samples = []
        lxc_stop: Samples = []
        init_ran = 0
        for _ in range(runs):
            await gap(idle)
            lxc_start.append(peer.start(name))
            init_ran += peer.init_runs(name)
            await gap(idle)
            lxc_stop.append(peer.stop(name))
        out["lxc_start"] = summary(lxc_start)
        out["lxc_start_init_running_on_return"] = f"{init_ran}/{runs}"
        out["lxc_stop"] = summary(lxc_stop)
    return out


#: what "at once" is compared with: each burst's time, median of this many bursts per regime
BURSTS = 3
#: pause before each burst, for the previous burst's namespaces and cgroups to be torn down (the
#: kernel frees network namespaces in a work queue after their last process is gone)
SETTLE = 0.5


def schedstat_s(pid: int) -> float:
    """CPU seconds a process (its main thread) has run, from ``/proc/PID/schedstat`` (ns); 0
    when it is gone. Finer than ``stat``'s clock ticks, which round a guest's ~4 ms to 0."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def busy_cpu_s() -> float:
    """CPU seconds every CPU of the machine spent not idle so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Load:
    """A CPU hog per CPU (``while True: pass`` at the supervisor's nice value) while open: the
    "under load" regime of the concurrency target, the same for the supervisor and the floor."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __enter__(self) -> Load:
        for _ in range(os.cpu_count() or 1):
            self.run.hogs.append(
                subprocess.Popen([sys.executable, "-I", "-S", "-c", "while True: pass"])
            )
        time.sleep(0.05)  # running before the first burst
        return self

    def __exit__(self, *_exc: object) -> None:
        stop_hogs(self.run)


def stop_hogs(run: Run) -> None:
    """Kill and reap the CPU hogs of :class:`Load`."""
    while run.hogs:
        hog = run.hogs.pop()
        hog.kill()
        hog.wait()


async def supervisor_burst(sup: Supervisor, timer: Timer, names: list[str]) -> dict[str, Any]:
    """n ``start_domain`` calls at once in one nursery, until all returned (``start_s``); the
    last STARTED BOOTED event (``last_event_s``); the CPU seconds each party used (``cpu``);
    then every guest destroyed at once (``destroy_s``).

    The CPU figures: the supervisor (this process: its trio thread and any worker thread), the
    fork servers, the guests (each one's embryo phases and its init until the burst ended, from
    its schedstat), and the whole machine (``/proc/stat``: also the kernel's own threads and
    anything else running)."""
    runtime = sup.runtime
    servers = runtime.pool.server_pids() if isinstance(runtime, LinuxRuntime) else []
    timer.drain()
    wall = time.time()
    machine0, self0 = busy_cpu_s(), os.times()
    servers0 = sum(schedstat_s(p) for p in servers)
    total = await run_all(names, sup.start_domain)
    self1, machine1 = os.times(), busy_cpu_s()
    servers1 = sum(schedstat_s(p) for p in servers)
    guests = 0.0
    for name in names:
        proc = sup.guests[name].process
        if proc is not None:
            guests += schedstat_s(proc.wrapper_pid)
    events = timer.drain()
    last = max(timer.find(events, name, "STARTED BOOTED", wall).time for name in names) - wall
    cpu = {
        "supervisor_s": round(self1.user + self1.system - self0.user - self0.system, 3),
        "fork_servers_s": round(servers1 - servers0, 3),
        "guests_s": round(guests, 3),
        "machine_s": round(machine1 - machine0, 3),
    }
    await trio.sleep(IDLE_GAP)
    destroyed = await run_all(names, sup.destroy_domain)
    return {"start_s": total, "last_event_s": last, "cpu": cpu, "destroy_s": destroyed}


def floor_burst_cpu(layout: CgroupLayout, n: int) -> tuple[float, dict[str, float]]:
    """:func:`floor_burst` and the CPU it took: this process and its reaped children (the
    unshare processes and theirs), and the whole machine."""
    machine0, self0 = busy_cpu_s(), os.times()
    dt = floor_burst(layout, n)
    self1, machine1 = os.times(), busy_cpu_s()
    cpu = {
        "floor_processes_s": round(
            self1.children_user + self1.children_system
            - self0.children_user - self0.children_system, 3
        ),
        "bench_process_s": round(self1.user + self1.system - self0.user - self0.system, 3),
        "machine_s": round(machine1 - machine0, 3),
    }  # fmt: skip
    return dt, cpu


async def burst_regime(
    run: Run, sup: Supervisor, timer: Timer, names: list[str], bursts: int
) -> dict[str, Any]:
    """``bursts`` bursts of the supervisor and as many of the floor, interleaved (the order
    alternates, so that neither always follows the other's teardown), each after a pause."""
    ours: list[float] = []
    last: list[float] = []
    destroys: list[float] = []
    floor: list[float] = []
    cpu_ours: list[dict[str, float]] = []
    cpu_floor: list[dict[str, float]] = []
    for i in range(bursts):
        for which in ("supervisor", "floor") if i % 2 == 0 else ("floor", "supervisor"):
            await trio.sleep(SETTLE)
            if which == "supervisor":
                got = await supervisor_burst(sup, timer, names)
                ours.append(got["start_s"])
                last.append(got["last_event_s"])
                destroys.append(got["destroy_s"])
                cpu_ours.append(got["cpu"])
            else:
                dt, fcpu = floor_burst_cpu(run.layout, len(names))
                floor.append(dt)
                cpu_floor.append(fcpu)
    med_ours, med_floor = statistics.median(ours), statistics.median(floor)
    return {
        "supervisor_s": [round(x, 4) for x in ours],
        "last_started_event_s": [round(x, 4) for x in last],
        "destroy_all_s": [round(x, 4) for x in destroys],
        "floor_s": [round(x, 4) for x in floor],
        "supervisor_median_s": round(med_ours, 4),
        "floor_median_s": round(med_floor, 4),
        "ratio_to_floor": round(med_ours / med_floor, 3),
        "cpu_supervisor_burst": _median_dict(cpu_ours),
        "cpu_floor_burst": _median_dict(cpu_floor),
    }


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]} if rows else {}


async def concurrent(
    run: Run, sup: Supervisor, timer: Timer, root: str, n: int, procs_files: tuple[str, ...]
) -> dict[str, Any]:
    """n supervisor starts at once against the floor of n starts at once (no supervisor), median
    of :data:`BURSTS` bursts each, interleaved, on a quiet machine and with a CPU hog per CPU;
    beside it (info) n floors one after another and LXC starting n containers one after
    another."""
    names = [f"c{i}" for i in range(n)]
    for name in names:
        await sup.define_domain(guest(name, root))
    out: dict[str, Any] = {"n": n, "bursts": BURSTS}
    out["quiet"] = await burst_regime(run, sup, timer, names, BURSTS)
    with Load(run):
        out["load"] = await burst_regime(run, sup, timer, names, BURSTS)
        out["load"]["hogs"] = os.cpu_count() or 1
    for name in names:
        await sup.undefine_domain(name)
    await trio.sleep(IDLE_GAP)
    floor_total = sum(floor_start(procs_files) for _ in range(n))
    out.update(
        {
            "destroy_all_s": round(statistics.median(out["quiet"]["destroy_all_s"]), 4),
            "floor_unshare_cgroup_sequential_s": round(floor_total, 4),
        }
    )
    peer = run.peer
    if peer is not None:
        lxc_names = [peer.name(i) for i in range(1, n + 1)]
        await trio.sleep(IDLE_GAP)
        t0 = time.perf_counter()
        for name in lxc_names:
            peer.start(name)
        out["lxc_start_sequential_s"] = round(time.perf_counter() - t0, 4)
        monitors = [lxc_peer.memory_kib(pid) for pid in peer.monitor_pids()]
        out["lxc_monitor_pss_kib_per_container"] = round(sum(p for _, p in monitors) / n, 1)
        out["lxc_monitor_rss_kib_per_container"] = round(sum(r for r, _ in monitors) / n, 1)
        t0 = time.perf_counter()
        for name in lxc_names:
            peer.stop(name)
        out["lxc_stop_sequential_s"] = round(time.perf_counter() - t0, 4)
    return out


async def rss(sup: Supervisor, root: str, n: int) -> dict[str, Any]:
    """VmRSS of the supervisor (this process) per running guest, with n guests."""
    names = [f"r{i}" for i in range(n)]
    gc.collect()
    before = vm_rss_kib()
    for name in names:
        await sup.define_domain(guest(name, root))
    gc.collect()
    defined = vm_rss_kib()
    t_fill = await run_all(names, sup.start_domain, FILL_CONCURRENCY)
    running = sum(1 for name in names if sup.guests[name].life.status.state.name == "RUNNING")
    await trio.sleep(1.0)
    gc.collect()
    after = vm_rss_kib()
    # no process stands between the supervisor and init on the embryo path: this finds none
    wrappers = [
        lxc_peer.memory_kib(s.process.wrapper_pid)
        for s in sup.guests.values()
        if s.process and s.process.wrapper_pid != s.process.init_pid
    ]
    t_empty = await run_all(names, sup.destroy_domain, FILL_CONCURRENCY)
    for name in names:
        await sup.undefine_domain(name)
    return {
        "n": n,
        "running": running,
        "vmrss_before_kib": before,
        "vmrss_defined_kib": defined,
        "vmrss_running_kib": after,
        "kib_per_guest": round((after - before) / n, 1),
        "kib_per_definition": round((defined - before) / n, 1),
        "wrappers": len(wrappers),
        "wrapper_pss_kib_per_guest": round(sum(p for _, p in wrappers) / max(len(wrappers), 1), 1),
        "wrapper_rss_kib_per_guest": round(sum(r for r, _ in wrappers) / max(len(wrappers), 1), 1),
        "start_all_s": round(t_fill, 3),
        "destroy_all_s": round(t_empty, 3),
    }


# -- where the time goes (--profile) -----------------------------------------------------------


class Probe:
    """Wraps supervisor functions in place to sum their wall time per call (no code changes).

    Only for diagnosis: the wrappers add a few microseconds per call, and the originals are put
    back by :meth:`restore`.
    """

    def __init__(self) -> None:
        self.samples: dict[str, Samples] = {}
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        samples = self.samples.setdefault(label, [])
        self._undo.append((owner, attr, original))
        if inspect.iscoroutinefunction(original):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    samples.append(time.perf_counter() - t0)

            setattr(owner, attr, timed_async)
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    samples.append(time.perf_counter() - t0)

            setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    def report(self) -> dict[str, dict[str, float]]:
        out = {k: summary(v) for k, v in self.samples.items() if v}
        for v in self.samples.values():
            v.clear()  # in place: the wrappers hold these lists
        return out


def install_probe() -> Probe:
    """Time each step of the supervisor's start and destroy paths."""
    from supervisor import runner
    from supervisor.bus import Bus
    from supervisor.guest import linux, procs, spawn
    from supervisor.store import RunStore

    probe = Probe()
    probe.wrap(GuestCgroup, "create", "boot: cgroup create (mkdir x hierarchies)")
    probe.wrap(GuestCgroup, "apply_limits", "boot: cgroup limits")
    probe.wrap(Bus, "run_prepare", "boot: bus prepare hooks")
    probe.wrap(spawn, "_prepare", "spawn: plan (passwd/group read, seccomp filter)")
    probe.wrap(linux.LinuxRuntime, "begin_spawn", "boot: begin_spawn (embryo taken, told)")
    probe.wrap(spawn.PendingStart, "finish", "boot: finish (cgroup move, go, until exec)")
    probe.wrap(spawn.SpawnPool, "take", "spawn: take an embryo (a spare, or made now)")
    probe.wrap(spawn, "_move_to_cgroup", "spawn: embryo into the cgroup")
    probe.wrap(spawn._Embryo, "born", "spawn: embryo's pid known")
    probe.wrap(spawn.SpawnPool, "top_up", "spawn: spare embryos asked for")
    probe.wrap(procs, "ns_inodes", "spawn: namespace inodes")
    probe.wrap(runner.GuestRunner, "record", "boot: run-dir record, after STARTED")
    probe.wrap(GuestCgroup, "kill_all", "destroy: cgroup kill_all (each call)")
    probe.wrap(Bus, "run_release", "destroy: bus release hooks")
    probe.wrap(GuestCgroup, "remove", "destroy: cgroup rmdir")
    probe.wrap(RunStore, "remove", "destroy: run-dir record removal")
    return probe


async def profile(timer: Timer, runs: int) -> dict[str, Any]:
    """Per-step medians of the start and destroy paths in both regimes."""
    probe = install_probe()
    out: dict[str, Any] = {}
    try:
        for regime, idle in (("idle", True), ("back_to_back", False)):
            for _ in range(runs):
                await gap(idle)
                await timer.start("one")
                await gap(idle)
                await timer.destroy("one")
            out[regime] = probe.report()
    finally:
        probe.restore()
    return out


def profile_table(p: dict[str, Any]) -> str:
    steps = list(dict.fromkeys(k for regime in p.values() for k in regime))
    lines = ["| step (ms, median (min-max)) | idle | back_to_back |", "|---|---|---|"]
    for step in steps:
        lines.append(
            f"| {step} | {cell(p['idle'].get(step))} | {cell(p['back_to_back'].get(step))} |"
        )
    return "\n".join(lines) + "\n"


# -- cleanup and report ------------------------------------------------------------------------


def cleanup(run: Run | None, workdir: str) -> list[str]:
    """Remove whatever the run left (LXC containers, cgroups and their processes, temp dir)."""
    problems: list[str] = []
    if run is not None:
        stop_hogs(run)
        if run.peer is not None:
            problems += run.peer.cleanup()
        if run.floor_guest.proc is not None:
            run.floor_guest.proc.kill()
            run.floor_guest.proc.wait()
        for path in sorted({p for h in run.layout.hierarchies() for p in _prefixed(h)}):
            _kill_and_remove(path, problems)
    shutil.rmtree(workdir, ignore_errors=True)
    remove_run_dirs()
    return problems


def _prefixed(hierarchy: str) -> list[str]:
    return [
        os.path.join(hierarchy, n)
        for n in os.listdir(hierarchy)
        if n.startswith(PREFIX) and os.path.isdir(os.path.join(hierarchy, n))
    ]


def _kill_and_remove(path: str, problems: list[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    problems.append(f"cannot remove {path}")


def cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    return f"{s['median_ms']:.2f} ({s['min_ms']:.2f}-{s['max_ms']:.2f})"


def verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "n/a"
    return "yes" if ratio <= target else "**no**"


def table(r: dict[str, Any]) -> str:
    head = (
        "| figure | regime | vsupervisor | floor: unshare | floor: unshare+cgroup | LXC | "
        "vsv/LXC | target | met |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for regime in ("idle", "back_to_back"):
        x = r[regime]
        lxc = x.get("lxc_start")
        ratio = x["start"]["median_ms"] / lxc["median_ms"] if lxc else None
        note = f" (init running on return: {x['lxc_start_init_running_on_return']})" if lxc else ""
        rows.append(
            f"| start (ms) | {regime} | {cell(x['start'])} | {cell(x['floor_unshare'])} | "
            f"{cell(x['floor_unshare_cgroup'])} | {cell(lxc)}{note} | "
            f"{_ratio(ratio)} | <= {TARGETS['start']} | {verdict(ratio, TARGETS['start'])} |"
        )
    for regime in ("idle", "back_to_back"):
        x = r[regime]
        lxc = x.get("lxc_stop")
        ratio = x["destroy"]["median_ms"] / lxc["median_ms"] if lxc else None
        rows.append(
            f"| destroy (ms) | {regime} | {cell(x['destroy'])} | kill+reap+rmdir: "
            f"{cell(x['floor_destroy'])} | - | {cell(lxc)} | {_ratio(ratio)} | "
            f"<= {TARGETS['destroy']} | {verdict(ratio, TARGETS['destroy'])} |"
        )
    for figure, key, lxc_key in (
        ("start_domain returned (ms)", "start_returned", "lxc_start"),
        ("destroy_domain returned, released (ms)", "destroy_returned", "lxc_stop"),
    ):
        for regime in ("idle", "back_to_back"):
            x = r[regime]
            lxc = x.get(lxc_key)
            ratio = x[key]["median_ms"] / lxc["median_ms"] if lxc else None
            rows.append(
                f"| {figure} | {regime} | {cell(x[key])} | - | - | {cell(lxc)} | "
                f"{_ratio(ratio)} | (info) | - |"
            )
    c = r["concurrent"]
    lxc_seq = c.get("lxc_start_sequential_s")
    limit = TARGETS["concurrent_floor"]
    for regime in ("quiet", "load"):
        x = c[regime]
        label = "quiet" if regime == "quiet" else f"under load ({x.get('hogs', '?')} CPU hogs)"
        ratio = x["ratio_to_floor"]
        rows.append(
            f"| {c['n']} starts at once (ms) | {label}, median of {c['bursts']} bursts | "
            f"{x['supervisor_median_s'] * 1000:.1f} ({_list_ms(x['supervisor_s'])}) | - | "
            f"{c['n']} at once: {x['floor_median_s'] * 1000:.1f} ({_list_ms(x['floor_s'])}) | "
            f"{f'{lxc_seq * 1000:.1f} one after another' if lxc_seq else '-'} | "
            f"{ratio:.2f} (of floor) | <= {limit} of floor | {verdict(ratio, limit)} |"
        )
    rows.append(
        f"| {c['n']} floors one after another (ms) | info | - | - | "
        f"{c['floor_unshare_cgroup_sequential_s'] * 1000:.1f} | - | - | (info) | - |"
    )
    m = r["rss"]
    per = m["kib_per_guest"]
    lxc_mon = c.get("lxc_monitor_pss_kib_per_container")
    rows.append(
        f"| supervisor RSS per guest (KiB) | {m['running']}/{m['n']} running | {per:.1f} "
        f"({wrapper_note(m)}) | - | - | "
        f"monitor process Pss {lxc_mon if lxc_mon is not None else '-'} | - | "
        f"<= {TARGETS['rss_kib_per_guest']:.0f} | "
        f"{'yes' if per <= TARGETS['rss_kib_per_guest'] else '**no**'} |"
    )
    return head + "\n".join(rows) + "\n"


def _list_ms(xs: list[float]) -> str:
    return ", ".join(f"{x * 1000:.0f}" for x in xs)


def cpu_table(c: dict[str, Any]) -> str:
    """Where the CPU of one burst went (medians over the bursts), supervisor against floor."""
    lines = [
        f"CPU seconds per burst of {c['n']} starts (median of {c['bursts']}):",
        "",
        "| regime | supervisor process | fork servers | guests (embryo + init so far) | "
        "machine (all CPUs busy) | floor: unshare processes | floor: bench process | "
        "floor: machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for regime in ("quiet", "load"):
        o, f = c[regime]["cpu_supervisor_burst"], c[regime]["cpu_floor_burst"]
        lines.append(
            f"| {regime} | {o['supervisor_s']:.3f} | {o['fork_servers_s']:.3f} | "
            f"{o['guests_s']:.3f} | {o['machine_s']:.2f} | {f['floor_processes_s']:.3f} | "
            f"{f['bench_process_s']:.3f} | {f['machine_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def wrapper_note(m: dict[str, Any]) -> str:
    """What runs per guest outside the supervisor besides the guest itself."""
    if m.get("wrappers", 1):
        return f"+ wrapper process Pss {m['wrapper_pss_kib_per_guest']:.1f}"
    return "no wrapper process: init is the supervisor's child"


def header(r: dict[str, Any]) -> str:
    return (
        f"# vsupervisor core runtime ({'quick' if r['quick'] else 'full'}: {r['runs']} runs per "
        f"regime, idle gap {r['idle_gap_s'] * 1000:.0f} ms)\n\n"
        f"- kernel {r['kernel']}, {r['cpus']} CPUs, load average before {r['loadavg_before']}, "
        f"after {r['loadavg_after']}\n"
        f"- cgroup layout {r['layout']} ({r['hierarchies']} hierarchies per guest); cgroup2 "
        f"mount options: {r['cgroup2_mount']}\n"
        f"- LXC peer: {'lxc-start -d / lxc-stop -k' if r['lxc'] else 'not installed'}\n"
        f"- supervisor run dir on {r.get('run_dir', '?')}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, 20 and 200 guests")
    parser.add_argument("--profile", action="store_true", help="also time each start step")
    parser.add_argument("--runs", type=int, default=None, help="samples per figure and regime")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_daemon needs root", file=sys.stderr)
        return 2
    runs = args.runs or (10 if args.quick else 30)
    # Ctrl-C must clean up even when a shell started us in the background (SIGINT ignored
    # then); SIGTERM takes the same path through trio's own SIGINT handling.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    run: Run | None = None
    results: dict[str, Any] | None = None
    try:
        run = Run(workdir)
        results = trio.run(measure, run, args.quick, runs, args.profile)
    finally:
        problems = cleanup(run, workdir)
        for p in problems:
            print(f"cleanup: {p}", file=sys.stderr)
        clean, leak_text = leakcheck(PREFIX)
        if results is None:
            print(leak_text, file=sys.stderr)
    assert results is not None
    results["leakcheck"] = leak_text
    print(header(results))
    print(table(results))
    print(cpu_table(results["concurrent"]))
    if "profile" in results:
        print(profile_table(results["profile"]))
    print(leak_text)
    path = results_path("daemon.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
