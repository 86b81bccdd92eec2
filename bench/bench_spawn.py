"""Start latency of a guest's init on the embryo path, against the floor of util-linux unshare.

Measured, each in two regimes (an idle gap of ~100 ms before every sample, and back to back),
alternated sample by sample so that drifting load on the machine hits all alike:

- ``spawn_init``: call -> the guest's PID 1 runs its init, on the embryo path (the only one):
  a spare embryo taken (born in new pid, uts, ipc and net namespaces), told the guest, its
  mount namespace and /dev built, moved into the guest's cgroup (made beforehand, with the
  device policy as the runtime makes it, in every hierarchy), then its cgroup namespace, sysfs,
  cgroupfs view and /proc with the host's state masked, pivot_root, capabilities, seccomp and
  the exec of init (busybox root, private network, vserver dialect). ``begin_spawn`` and
  ``finish`` back to back: nothing of the supervisor's own steps overlaps the embryo's work
  here, as it does in a real start (bench_daemon and bench_start measure that one);
- ``floor_unshare``: ``unshare --fork --pid --mount --uts --ipc --net --mount-proc /bin/true``,
  the whole process, run from this process;
- ``floor_unshare_cgroup``: the same, joining a cgroup in every hierarchy before exec;
- ``cgroup_attach``: moving an existing process into the guest's cgroup in every hierarchy;
- ``concurrent``: N (``--concurrent``, default 100) ``spawn_init`` calls at once in one
  nursery, until all returned (each guest in a cgroup of its own, made beforehand), against
  ``floor_unshare_cgroup`` run N times one after another.

``--ballast MB`` grows this process's RSS first (a supervisor with many guests is larger; the
embryo path never forks the supervisor, so this should change nothing: a check). Medians with
min/max in milliseconds, JSON in bench/results/spawn.json (``$VSV_BENCH_RESULTS`` overrides the
directory). Needs root; everything is named ``vsvbspawn...`` and removed also on failure or
Ctrl-C.

    .venv/bin/python bench/bench_spawn.py [--runs N] [--concurrent N] [--ballast MB]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio
from bench_daemon import _kill_and_remove, leakcheck, results_path, summary

from supervisor.guest.cgroups import (
    CgroupLayout,
    GuestCgroup,
    attach_to,
    detect_layout,
    find_leftovers,
)
from supervisor.guest.devices import DEFAULT_DEVICE_RULES, DeviceProgram
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import GuestProcess, HostView, SpawnPool, spawn_init
from supervisor.model import Domain, Filesystem, OsSpec

PREFIX = "vsvbspawn"
IDLE_GAP = 0.1
#: pause before the concurrent burst, for the namespaces of the samples to be torn down
SETTLE = 2.0
FLOOR = ["/usr/bin/unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net",
         "--mount-proc", "/bin/true"]  # fmt: skip


def _run_floor(preexec: Callable[[], None] | None) -> float:
    """Wall time of one whole unshare run (synchronous on purpose: nothing else in between)."""
    t0 = time.perf_counter()
    subprocess.run(FLOOR, check=True, preexec_fn=preexec)
    return time.perf_counter() - t0


def _attach_sample(cg: GuestCgroup) -> float:
    """Time to move a fresh sleeping process into every hierarchy of the cgroup."""
    p = subprocess.Popen(["/bin/sleep", "100"])
    try:
        time.sleep(0.001)
        t0 = time.perf_counter()
        cg.attach(p.pid)
        return time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()


async def _concurrent(
    pool: SpawnPool,
    n: int,
    dom: Domain,
    layout: CgroupLayout,
    program: DeviceProgram,
    host: HostView,
) -> float:
    """Wall time of n spawn_init calls started at once, each guest in its own cgroup."""
    cgs = [GuestCgroup(layout, PREFIX, f"c{i}", device_program=program) for i in range(n)]
    guests: list[GuestProcess] = []
    try:
        for cg in cgs:
            cg.create()

        async def one(cg: GuestCgroup) -> None:
            guests.append(await spawn_init(pool, dom, cg, host=host))

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for cg in cgs:
                nursery.start_soon(one, cg)
        return time.perf_counter() - t0
    finally:
        with trio.CancelScope(shield=True):
            for cg in cgs:
                await cg.kill_all()
            for g in guests:
                await g.wait()
            for cg in cgs:
                await cg.remove()


async def main(workdir: str, runs: int, concurrent: int) -> dict[str, object]:
    # fork servers and spare embryos for the whole measurement, as a runtime keeps them
    async with SpawnPool() as pool:
        return await _measure(pool, workdir, runs, concurrent)


async def _measure(pool: SpawnPool, workdir: str, runs: int, concurrent: int) -> dict[str, object]:
    layout = detect_layout()
    host = HostView.probe(layout=layout)
    root = prepare_busybox_root(os.path.join(workdir, "bb"))
    dom = Domain(
        name="b",
        privnet=True,
        os=OsSpec(init="/bin/sleep", initargs=("1000",)),
        filesystems=(Filesystem(source=root, target="/"),),
    )
    program = DeviceProgram.load(DEFAULT_DEVICE_RULES)
    cg = GuestCgroup(layout, PREFIX, "b", device_program=program)
    try:
        cg.create()
        files = cg.procs_files()

        async def spawn_once() -> float:
            t0 = time.perf_counter()
            g = await spawn_init(pool, dom, cg, host=host)
            dt = time.perf_counter() - t0
            await cg.kill_all()
            await g.wait()
            return dt

        async def floor_once() -> float:
            return _run_floor(None)

        async def floor_cg_once() -> float:
            return _run_floor(lambda: attach_to(files))

        async def attach_once() -> float:
            return _attach_sample(cg)

        figures: dict[str, Callable[[], Awaitable[float]]] = {
            "spawn_init": spawn_once,
            "floor_unshare": floor_once,
            "floor_unshare_cgroup": floor_cg_once,
            "cgroup_attach": attach_once,
        }
        results: dict[str, object] = {
            "path": "embryo",
            "runs": runs,
            "layout": layout.kind,
            "hierarchies": len(layout.hierarchies()),
            "idle_gap_s": IDLE_GAP,
        }
        for fn in figures.values():
            await fn()  # warm-up
        names = list(figures)
        for regime, idle in (("idle", True), ("back_to_back", False)):
            samples: dict[str, list[float]] = {name: [] for name in names}
            for i in range(runs):
                for k in range(len(names)):  # round robin, each round starting one further
                    name = names[(i + k) % len(names)]
                    if idle:
                        await trio.sleep(IDLE_GAP)
                    samples[name].append(await figures[name]())
            for name in names:
                entry = results.setdefault(name, {})
                assert isinstance(entry, dict)
                entry[regime] = summary(samples[name])
        # last: tearing down many network namespaces slows whatever runs next for a while
        t0 = time.perf_counter()
        for _ in range(concurrent):
            _run_floor(lambda: attach_to(files))
        results["floor_unshare_cgroup_sequential"] = {
            "n": concurrent,
            "wall_ms": round(1000 * (time.perf_counter() - t0), 1),
        }
        await trio.sleep(SETTLE)
        results["concurrent"] = {
            "n": concurrent,
            "wall_ms": round(
                1000 * await _concurrent(pool, concurrent, dom, layout, program, host), 1
            ),
        }
    finally:
        with trio.CancelScope(shield=True):
            await cg.kill_all()
            await cg.remove()
        program.close()
    return results


def cleanup(workdir: str) -> list[str]:
    """Kill what is left in our cgroups, remove them and the root."""
    problems: list[str] = []
    for path in find_leftovers(detect_layout(), PREFIX):
        _kill_and_remove(path, problems)
    shutil.rmtree(workdir, ignore_errors=True)
    return problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="samples per figure and regime")
    parser.add_argument("--concurrent", type=int, default=100, help="spawn_init calls at once")
    parser.add_argument("--ballast", type=int, default=0, help="MB of extra RSS")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_spawn needs root", file=sys.stderr)
        sys.exit(2)
    # Ctrl-C and SIGTERM (report.py's timeout) take the cleanup path through trio's SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    ballast = bytearray(os.urandom(1 << 20) * args.ballast)  # touched pages, kept alive
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    out: dict[str, object] | None = None
    try:
        out = trio.run(main, workdir, args.runs, args.concurrent)
    finally:
        problems = cleanup(workdir)
        for p in problems:
            print(f"cleanup: {p}", file=sys.stderr)
        clean, leak_text = leakcheck(PREFIX)
        print(leak_text, file=sys.stderr)
    assert out is not None
    out["ballast_mb"] = len(ballast) >> 20
    out["leakcheck"] = leak_text
    text = json.dumps(out, indent=2)
    print(text)
    path = results_path("spawn.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    sys.exit(0 if clean and not problems else 1)
