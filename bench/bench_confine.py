"""What confining a guest costs its start: full confinement against none, and each layer's share.

One sample is a start of a busybox guest (lxc dialect, private network, ``/bin/sh -c 'exec
sleep 1000'`` as init), at one of two levels (``--level``):

- ``start`` (default): the start as a user of the supervisor sees it, measured as bench_daemon
  measures it: ``Supervisor.start_domain`` called -> its ``STARTED BOOTED`` event, with the run
  dir on a tmpfs; then, untimed, ``destroy_domain``. The embryo's first phase (the guest's mount
  tree) runs beside the supervisor's own steps (run record, cgroup, limits, hooks), as in every
  real start.
- ``spawn``: only what confinement touches, back to back: a fresh guest cgroup
  (``GuestCgroup.create``, where the device policy is put on it) and ``spawn_init`` until init
  runs, nothing overlapping; then, untimed, the guest is killed and its cgroup removed.

Configurations (``supervisor.guest.spawn.Layers``, ``LinuxRuntime(layers=...,
restrict_devices=...)`` and ``GuestCgroup(restrict_devices=...)``, which exist for this
measurement only):

- ``full``: every layer, the device program on the unified cgroup and the v1 allowlist (the
  supervisor's own start);
- ``unconfined``: every layer off and no device allowlist (chroot, every capability, no seccomp
  filter, no masked /proc and /sys, no cgroupfs view): close to the start before confinement;
- ``no_pivot_root``, ``no_capabilities``, ``no_seccomp``, ``no_masks``, ``no_devices``: one layer
  off each; its cost is median(full) - median(layer off);
- ``full+userns``: every layer, for a domain with an ``<idmap>`` on a root owned by the mapped
  range; the user namespace costs median(full+userns) - median(full).

The configurations alternate sample by sample, in rounds of one sample each (each round in
another order, random with a fixed seed), so drifting load on the machine hits all alike; in two
regimes, an idle gap of ``IDLE_GAP`` before every sample and back to back. Target (issue
"Guest confinement"): full confinement adds at most 15% to the start (median(full) /
median(unconfined) <= 1.15). Each cost is given with a 95% bootstrap interval of the difference
of medians: a cost inside the noise shows as an interval across zero.

Prints the tables, writes bench/results/confine.json (``$VSV_BENCH_RESULTS`` overrides the
directory; ``--level spawn`` writes confine-spawn.json). Needs root. Everything is named
``vsvbconf...`` and removed also on failure or Ctrl-C; ``leakcheck --prefix vsvbconf`` runs at
the end.

    .venv/bin/python bench/bench_confine.py [--runs N] [--quick] [--level start|spawn]
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from bench_daemon import (
    Timer,
    _kill_and_remove,
    cgroup2_options,
    leakcheck,
    remove_run_dirs,
    results_path,
    summary,
    tmpfs_run_dir,
)

from supervisor.daemon import Supervisor
from supervisor.guest import spawn
from supervisor.guest.cgroups import GuestCgroup, detect_layout, find_leftovers
from supervisor.guest.devices import DEFAULT_DEVICE_RULES, DeviceProgram
from supervisor.guest.forkserver import CLONE_NEWUSER
from supervisor.guest.linux import LinuxRuntime
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import (
    ALL_LAYERS,
    GuestProcess,
    HostView,
    Layers,
    SpawnPool,
    spawn_init,
)
from supervisor.model import Domain, Filesystem, IdMapEntry, OsSpec

PREFIX = "vsvbconf"
IDLE_GAP = 0.1
TARGET = 1.15
#: the host ids the user-namespace guest's 65536 ids map to (its root is given to them)
IDMAP_BASE = 1_200_000
INIT = ("/bin/sh", "-c", "exec sleep 1000")
REGIMES = (("idle", True), ("back_to_back", False))
RUNS, RUNS_QUICK = 40, 8
BOOTSTRAP = 2000
#: the rounds' orders are random but the same in every run
ORDER_SEED = 7


@attrs.frozen
class Config:
    """One way of starting the guest."""

    name: str
    what: str
    layers: Layers = ALL_LAYERS
    #: the device allowlist on the cgroup (v1 lines, and the program on the unified directory)
    devices: bool = True
    #: the domain with an <idmap>, on the shifted root
    userns: bool = False
    #: the layer this configuration prices (see the module docstring), if any
    prices: str = ""


NO_LAYERS = Layers(root_switch=False, capabilities=False, seccomp=False, masks=False)
CONFIGS = (
    Config("full", "every layer; device program + v1 allowlist (the supervisor's start)"),
    Config("unconfined", "every layer off, no device allowlist", NO_LAYERS, devices=False),
    Config(
        "no_pivot_root",
        "chroot instead of pivot_root",
        Layers(root_switch=False),
        prices="pivot_root",
    ),
    Config(
        "no_capabilities",
        "every capability kept",
        Layers(capabilities=False),
        prices="capabilities",
    ),
    Config("no_seccomp", "no seccomp filter", Layers(seccomp=False), prices="seccomp"),
    Config(
        "no_masks",
        "no masked /proc and /sys, no cgroupfs view",
        Layers(masks=False),
        prices="masks (/proc, /sys, cgroupfs view)",
    ),
    Config(
        "no_devices",
        "no device allowlist (neither v1 lines nor the program)",
        devices=False,
        prices="devices (program + v1 lines)",
    ),
    Config(
        "full+userns",
        "every layer, in a user namespace (<idmap>, root owned by the range)",
        userns=True,
        prices="user namespace",
    ),
)


def domain(root: str, *, userns: bool) -> Domain:
    """The benchmark's guest on ``root``; with ``userns`` an <idmap> of 65536 ids (and another
    name: the supervisor holds both)."""
    idmap = (
        (IdMapEntry("uid", 0, IDMAP_BASE, 65536), IdMapEntry("gid", 0, IDMAP_BASE, 65536))
        if userns
        else ()
    )
    return Domain(
        name="confu" if userns else "conf",
        type="lxc",
        privnet=True,
        os=OsSpec(init=INIT[0], initargs=INIT[1:]),
        filesystems=(Filesystem(source=root, target="/"),),
        idmap=idmap,
    )


class Run:
    """What the measurement needs and makes, so that cleanup finds it after any failure."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.layout = detect_layout()
        self.host = HostView.probe(layout=self.layout)
        self.program: DeviceProgram | None = None
        self.serial = 0
        self.domains: dict[bool, Domain] = {}
        #: the fork servers and spare embryos of ``--level spawn`` (a runtime's own otherwise)
        self.pool = SpawnPool()

    def prepare(self) -> None:
        self.program = DeviceProgram.load(DEFAULT_DEVICE_RULES)
        plain = prepare_busybox_root(os.path.join(self.workdir, "root"))
        shifted = prepare_busybox_root(
            os.path.join(self.workdir, "root-userns"), owner=(IDMAP_BASE, IDMAP_BASE)
        )
        self.domains = {False: domain(plain, userns=False), True: domain(shifted, userns=True)}

    async def sample(self, cfg: Config) -> float:
        """One start (cgroup made, init running) in seconds; the guest is gone on return."""
        self.serial += 1
        cg = GuestCgroup(
            self.layout,
            PREFIX,
            f"s{self.serial}",
            device_program=self.program if cfg.devices else None,
            restrict_devices=cfg.devices,
        )
        guest: GuestProcess | None = None
        try:
            t0 = time.perf_counter()
            cg.create()
            guest = await spawn_init(
                self.pool, self.domains[cfg.userns], cg, layers=cfg.layers, host=self.host
            )
            return time.perf_counter() - t0
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await cg.kill_all()
                if guest is not None:
                    await guest.wait()
                await cg.remove()

    async def start_sample(self, cfg: Config, sup: Supervisor, timer: Timer) -> float:
        """One start through the supervisor, call -> STARTED BOOTED, in seconds; destroyed after."""
        runtime = sup.runtime
        assert isinstance(runtime, LinuxRuntime)
        runtime.layers, runtime.restrict_devices = cfg.layers, cfg.devices
        name = self.domains[cfg.userns].name
        try:
            started, _returned = await timer.start(name)
            return started
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await sup.destroy_domain(name)

    def cleanup(self) -> list[str]:
        """Kill what is left in our cgroups, remove them, the roots and the program."""
        problems: list[str] = []
        for path in find_leftovers(self.layout, PREFIX):
            _kill_and_remove(path, problems)
        if self.program is not None:
            self.program.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


async def measure(run: Run, runs: int, level: str) -> dict[str, dict[str, list[float]]]:
    """Samples in seconds per regime and configuration: rounds of one sample each."""
    run.prepare()
    if level == "spawn":
        async with run.pool:
            return await _rounds(run.pool, runs, run.sample)
    run_dir, _where = tmpfs_run_dir()
    runtime = LinuxRuntime(layout=run.layout)
    sup = Supervisor(
        state_dir=Path(run.workdir) / "state",
        run_dir=run_dir,
        prefix=PREFIX,
        networking=False,
        runtime=runtime,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            async with sup.bus.subscribe("bench", buffer=1_000_000) as sub:
                timer = Timer(sup, sub)
                for d in run.domains.values():
                    await sup.define_domain(d)

                async def one(cfg: Config) -> float:
                    return await run.start_sample(cfg, sup, timer)

                return await _rounds(runtime.pool, runs, one)
        finally:
            with trio.CancelScope(shield=True):
                await sup.shutdown_all(5.0)
            nursery.cancel_scope.cancel()


async def _rounds(
    pool: SpawnPool, runs: int, sample: Callable[[Config], Awaitable[float]]
) -> dict[str, dict[str, list[float]]]:
    # Spare embryos of both kinds first, as a running supervisor keeps them. An embryo taken
    # the moment it is made can renice itself to EMBRYO_NICE only after the supervisor has
    # given it its priority back; in a user namespace its own setpriority at G then fails with
    # EACCES (no CAP_SYS_NICE) and so does the start. A spare made ahead reniced itself long
    # before it is taken.
    pool.top_up(spawn.DEFAULT_EMBRYO_FLAGS)
    pool.top_up(spawn.DEFAULT_EMBRYO_FLAGS | CLONE_NEWUSER)
    await trio.sleep(0.5)
    for cfg in CONFIGS:  # warm-up: every kind of start once (seccomp filters compiled, caches)
        await sample(cfg)
    out: dict[str, dict[str, list[float]]] = {}
    rng = random.Random(ORDER_SEED)
    for regime, idle in REGIMES:
        samples: dict[str, list[float]] = {cfg.name: [] for cfg in CONFIGS}
        for _ in range(runs):
            # each round in an order of its own: a fixed order would give every configuration
            # the same predecessor, whose teardown (a user namespace's, say) may still be going
            order = list(CONFIGS)
            rng.shuffle(order)
            for cfg in order:
                if idle:
                    await trio.sleep(IDLE_GAP)
                samples[cfg.name].append(await sample(cfg))
        out[regime] = samples
    return out


def interval(
    a: list[float], b: list[float], stat: Callable[[float, float], float], rng: random.Random
) -> tuple[float, float]:
    """95% bootstrap interval of ``stat(median(a), median(b))``."""
    values = sorted(
        stat(
            statistics.median(rng.choices(a, k=len(a))),
            statistics.median(rng.choices(b, k=len(b))),
        )
        for _ in range(BOOTSTRAP)
    )
    return values[int(0.025 * BOOTSTRAP)], values[int(0.975 * BOOTSTRAP) - 1]


def _ms(lo_hi: tuple[float, float]) -> list[float]:
    return [round(1000 * x, 3) for x in lo_hi]


def analyse(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Summaries, each layer's cost and the full/unconfined ratio of one regime."""
    rng = random.Random(1)
    med = {name: statistics.median(s) for name, s in samples.items()}
    full, unconfined = med["full"], med["unconfined"]
    costs: list[dict[str, Any]] = []
    for cfg in CONFIGS:
        if not cfg.prices:
            continue
        # a layer left off prices as full - off; the user namespace, added, as it - full
        more, less = (cfg.name, "full") if cfg.userns else ("full", cfg.name)
        cost = med[more] - med[less]
        costs.append(
            {
                "layer": cfg.prices,
                "config": cfg.name,
                "cost_ms": round(1000 * cost, 3),
                "ci95_ms": _ms(interval(samples[more], samples[less], operator.sub, rng)),
                "pct_of_unconfined": round(100 * cost / unconfined, 1),
            }
        )
    ratio = full / unconfined
    return {
        "summary": {name: summary(s) for name, s in samples.items()},
        "raw_ms": {name: [round(1000 * x, 3) for x in s] for name, s in samples.items()},
        "costs": costs,
        "sum_of_layer_costs_ms": round(
            sum(c["cost_ms"] for c in costs if c["config"] != "full+userns"), 3
        ),
        "full_minus_unconfined_ms": round(1000 * (full - unconfined), 3),
        "full_over_unconfined": round(ratio, 3),
        "full_over_unconfined_ci95": [
            round(x, 3)
            for x in interval(samples["full"], samples["unconfined"], operator.truediv, rng)
        ],
        "met": ratio <= TARGET,
    }


def cell(s: dict[str, float]) -> str:
    return f"{s['median_ms']:.2f} ({s['min_ms']:.2f}-{s['max_ms']:.2f})"


def tables(r: dict[str, Any]) -> str:
    regimes = [regime for regime, _ in REGIMES]
    lines = [
        f"# Confinement's cost to a start ({r['runs']} samples per configuration and regime, "
        f"idle gap {1000 * r['idle_gap_s']:.0f} ms)",
        "",
        f"- kernel {r['kernel']}, {r['cpus']} CPUs, load average before {r['loadavg_before']}, "
        f"after {r['loadavg_after']}",
        f"- cgroup layout {r['layout']} ({r['hierarchies']} hierarchies per guest); cgroup2 "
        f"mount options: {r['cgroup2_mount']}",
        "- one sample: "
        + (
            "Supervisor.start_domain called -> its STARTED BOOTED event (run dir on a tmpfs)"
            if r.get("level", "start") == "start"
            else "GuestCgroup.create() -> spawn_init returned (init runs), nothing overlapping"
        )
        + "; lxc dialect, private network, busybox root",
        "",
        "| configuration | what | idle: median (min-max) ms | back to back |",
        "|---|---|---|---|",
    ]
    for cfg in CONFIGS:
        row = " | ".join(cell(r[regime]["summary"][cfg.name]) for regime in regimes)
        lines.append(f"| {cfg.name} | {cfg.what} | {row} |")
    lines += [
        "",
        "| layer | priced as | idle: cost ms (95% CI), % of unconfined | back to back |",
        "|---|---|---|---|",
    ]
    for i, c in enumerate(r["idle"]["costs"]):
        how = f"{c['config']} - full" if c["config"] == "full+userns" else f"full - {c['config']}"
        cells = []
        for regime in regimes:
            x = r[regime]["costs"][i]
            lo, hi = x["ci95_ms"]
            cells.append(
                f"{x['cost_ms']:+.2f} ({lo:+.2f} to {hi:+.2f}), {x['pct_of_unconfined']:+.1f}%"
            )
        lines.append(f"| {c['layer']} | {how} | {' | '.join(cells)} |")
    sums = " | ".join(
        f"{r[g]['sum_of_layer_costs_ms']:+.2f} "
        f"(full - unconfined {r[g]['full_minus_unconfined_ms']:+.2f})"
        for g in regimes
    )
    lines.append(f"| the five layers together | sum of the costs above but userns | {sums} |")
    lines += ["", "| full / unconfined | idle | back to back | target |", "|---|---|---|---|"]
    cells = []
    for regime in regimes:
        x = r[regime]
        lo, hi = x["full_over_unconfined_ci95"]
        verdict = "met" if x["met"] else "**missed**"
        cells.append(f"{x['full_over_unconfined']:.3f}x ({lo:.3f}-{hi:.3f}) {verdict}")
    lines.append(f"| ratio of medians (95% CI) | {' | '.join(cells)} | <= {TARGET}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=None,
                        help=f"samples per configuration and regime (default {RUNS})")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"{RUNS_QUICK} samples each")
    parser.add_argument(
        "--level",
        choices=("start", "spawn"),
        default="start",
        help="start: through the supervisor, call -> STARTED (default); spawn: cgroup + "
        "spawn_init alone, nothing overlapping",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_confine needs root", file=sys.stderr)
        return 2
    runs = args.runs or (RUNS_QUICK if args.quick else RUNS)
    # Ctrl-C must clean up even when a shell started us in the background (SIGINT ignored
    # then); SIGTERM (report.py's timeout) takes the same path through trio's SIGINT handling
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    run: Run | None = None
    results: dict[str, Any] = {
        "runs": runs,
        "level": args.level,
        "idle_gap_s": IDLE_GAP,
        "target_ratio": TARGET,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "cgroup2_mount": cgroup2_options(),
        "init": list(INIT),
        "idmap_base": IDMAP_BASE,
        "order": f"each round shuffled, random.Random({ORDER_SEED})",
        "configs": {
            c.name: {
                "what": c.what,
                "layers": attrs.asdict(c.layers),
                "devices": c.devices,
                "userns": c.userns,
                "prices": c.prices,
            }
            for c in CONFIGS
        },
    }
    samples: dict[str, dict[str, list[float]]] | None = None
    try:
        run = Run(workdir)
        results["layout"] = run.layout.kind
        results["hierarchies"] = len(run.layout.hierarchies())
        samples = trio.run(measure, run, runs, args.level)
    finally:
        problems = run.cleanup() if run is not None else []
        remove_run_dirs()
        shutil.rmtree(workdir, ignore_errors=True)
        for p in problems:
            print(f"cleanup: {p}", file=sys.stderr)
        clean, leak_text = leakcheck(PREFIX)
        if samples is None:
            print(leak_text, file=sys.stderr)
    assert samples is not None
    results["loadavg_after"] = os.getloadavg()
    for regime, _ in REGIMES:
        results[regime] = analyse(samples[regime])
    results["leakcheck"] = leak_text
    print(tables(results))
    print(leak_text)
    path = results_path("confine.json" if args.level == "start" else "confine-spawn.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if clean and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
