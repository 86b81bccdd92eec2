"""Start latency of a guest's init, against the floor of util-linux unshare itself.

Measured, each in two regimes (an idle gap of ~100 ms before every start, and back to back):
- ``spawn_init[fork]`` and ``spawn_init[forkserver]`` (the two start paths, ``$VSV_SPAWN``):
  call -> the guest's PID 1 runs its init (busybox root, private network, 6 cgroup hierarchies
  joined in the child, /dev built, chroot, fresh /proc);
- ``floor_unshare``: ``unshare --fork --pid --mount --uts --ipc --net --mount-proc /bin/true``,
  the whole process, run from this process;
- ``floor_unshare_cgroup``: the same, joining a cgroup in every hierarchy before exec;
- ``cgroup_attach``: moving an existing process into the guest's cgroup in every hierarchy;
- ``concurrent[MODE]``: N (``--concurrent``, default 100) ``spawn_init`` calls at once in one
  nursery, until all returned (each guest in a cgroup of its own), against ``floor_unshare_cgroup``
  run N times one after another.
``--ballast MB`` grows this process's RSS first (a supervisor with many guests is larger, and a
fork's cost grows with it). Medians with min/max in milliseconds, JSON in
bench/results/spawn.json. Needs root.

    .venv/bin/python bench/bench_spawn.py [--runs N] [--concurrent N] [--ballast MB]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, attach_to, detect_layout
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import GuestProcess, spawn_init
from supervisor.model import Domain, Filesystem, OsSpec

PREFIX = "vsvbench"
IDLE_GAP = 0.1
#: every start path of supervisor.guest.spawn ($VSV_SPAWN), the default (embryo) included
MODES = ("fork", "forkserver", "embryo")
#: pause before each concurrent burst, for the previous burst's namespaces to be torn down
SETTLE = 2.0
Samples = list[float]
FLOOR = ["/usr/bin/unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net",
         "--mount-proc", "/bin/true"]  # fmt: skip


def _summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }


async def _measure(runs: int, idle: bool, once: Callable[[], Awaitable[float]]) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        if idle:
            await trio.sleep(IDLE_GAP)
        samples.append(await once())
    return _summary(samples)


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


def _set_mode(mode: str) -> None:
    os.environ["VSV_SPAWN"] = mode


async def _concurrent(n: int, dom: Domain, layout: CgroupLayout) -> float:
    """Wall time of n spawn_init calls started at once, each guest in its own cgroup."""
    cgs = [GuestCgroup(layout, PREFIX, f"c{i}") for i in range(n)]
    for cg in cgs:
        cg.create()
    guests: list[GuestProcess] = []
    try:

        async def one(cg: GuestCgroup) -> None:
            guests.append(await spawn_init(dom, cg))

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


async def main(runs: int, concurrent: int) -> dict[str, object]:
    layout = detect_layout()
    root = prepare_busybox_root(os.path.join(tempfile.mkdtemp(prefix="vsvbench-"), "bb"))
    dom = Domain(
        name="b",
        privnet=True,
        os=OsSpec(init="/bin/sleep", initargs=("1000",)),
        filesystems=(Filesystem(source=root, target="/"),),
    )
    cg = GuestCgroup(layout, PREFIX, "b")
    cg.create()
    files = cg.procs_files()

    async def spawn_once() -> float:
        t0 = time.perf_counter()
        g = await spawn_init(dom, cg)
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

    results: dict[str, object] = {
        "layout": layout.kind,
        "hierarchies": len(layout.hierarchies()),
        "idle_gap_s": IDLE_GAP,
    }
    try:
        # the two paths alternate sample by sample, so drifting machine load hits both alike
        for regime, idle in (("idle", True), ("back_to_back", False)):
            samples: dict[str, Samples] = {mode: [] for mode in MODES}
            for mode in MODES:
                _set_mode(mode)
                await spawn_once()  # warm-up (starts the fork server)
            for _ in range(runs):
                for mode in MODES:
                    _set_mode(mode)
                    if idle:
                        await trio.sleep(IDLE_GAP)
                    samples[mode].append(await spawn_once())
            for mode in MODES:
                entry = results.setdefault(f"spawn_init[{mode}]", {})
                assert isinstance(entry, dict)
                entry[regime] = _summary(samples[mode])
        for name, fn in [
            ("floor_unshare", floor_once),
            ("floor_unshare_cgroup", floor_cg_once),
            ("cgroup_attach", attach_once),
        ]:
            await fn()  # warm-up
            results[name] = {
                "idle": await _measure(runs, True, fn),
                "back_to_back": await _measure(runs, False, fn),
            }
        # last: tearing down many network namespaces slows whatever runs next for a while
        t0 = time.perf_counter()
        for _ in range(concurrent):
            _run_floor(lambda: attach_to(files))
        results["floor_unshare_cgroup_sequential"] = {
            "n": concurrent,
            "wall_ms": round(1000 * (time.perf_counter() - t0), 1),
        }
        for mode in MODES:
            _set_mode(mode)
            await trio.sleep(SETTLE)
            results[f"concurrent[{mode}]"] = {
                "n": concurrent,
                "wall_ms": round(1000 * await _concurrent(concurrent, dom, layout), 1),
            }
    finally:
        with trio.CancelScope(shield=True):
            await cg.kill_all()
            await cg.remove()
        shutil.rmtree(os.path.dirname(root), ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--ballast", type=int, default=0, help="MB of extra RSS")
    args = parser.parse_args()
    ballast = bytearray(os.urandom(1 << 20) * args.ballast)  # touched pages, kept alive
    out = trio.run(main, args.runs, args.concurrent)
    out["ballast_mb"] = len(ballast) >> 20
    text = json.dumps(out, indent=2)
    print(text)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "spawn.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    sys.exit(0)
