"""Running the harness: rounds of hypothesis examples derived from one seed, and the summary.

A run of ``steps`` steps is split into rounds of hypothesis examples of at most
:data:`EPISODE_STEPS` steps; everything is derived from ``seed``, so
``vsv stress --seed N --steps M ...`` replays a run, and a failure prints that line and
hypothesis's shrunk program (the failing steps).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from supervisor.errors import RuntimeFailure
from supervisor.testing.stress.backends import PROFILES, RuntimeKind
from supervisor.testing.stress.harness import RunContext
from supervisor.testing.stress.machine import machine_class

#: at most this many steps per hypothesis example (hypothesis's buffer caps long examples, and
#: short examples shrink well)
EPISODE_STEPS = 100
MIN_EPISODE_STEPS = 20


@attrs.frozen
class StressResult:
    """How a run went."""

    ok: bool
    steps: int
    examples: int
    seconds: float
    ops: dict[str, int] = attrs.Factory(dict)


def rounds(seed: int, steps: int, done: Callable[[], int]) -> Iterator[tuple[int, int, int]]:
    """``(round seed, examples, steps per example)`` until ``done()`` reaches ``steps``.

    One example more than needed (hypothesis's first is its all-simplest example); hypothesis
    sometimes ends an example early, so rounds go on until enough steps ran. What runs depends
    only on the seed, so a run replays exactly.
    """
    i = 0
    before = -1
    while (left := steps - done()) > 0:
        if done() == before:
            raise RuntimeFailure(f"stress round {i} ran no counted step (hypothesis stopped early)")
        before = done()
        per = max(MIN_EPISODE_STEPS, min(EPISODE_STEPS, left))
        yield seed * 1000 + i, 1 + math.ceil(left / per), per
        i += 1


def run_stress_detailed(
    seed: int,
    steps: int,
    guests: int,
    runtime: RuntimeKind,
    *,
    shrink: bool = True,
    out: TextIO | None = None,
) -> StressResult:
    """Run the harness; print a replay line and hypothesis's failing program on failure.

    ``shrink``: let hypothesis shrink a failure to a minimal program (fake runtime only; real
    guests are too slow for it). ``out``: where a failure is reported (default stdout).
    """
    out = out if out is not None else sys.stdout
    if runtime == "real" and os.geteuid() != 0:
        raise RuntimeFailure("vsv stress --runtime real needs root (cgroups, namespaces)")
    workdir = Path(tempfile.mkdtemp(prefix="vsv-stress-"))
    ctx = RunContext(profile=PROFILES[runtime], guests=guests, workdir=workdir)
    replay = f"vsv stress --seed {seed} --steps {steps} --guests {guests} --runtime {runtime}"
    started = time.perf_counter()
    # the supervisor logs every failure the harness provokes on purpose; the checks see the rest
    quiet = logging.NullHandler()
    vsv_log = logging.getLogger("vsv")
    vsv_log.addHandler(quiet)
    vsv_log.propagate = False
    try:
        if runtime == "real":
            from supervisor.guest.rootfs import prepare_busybox_root

            for name in ctx.names:
                ctx.roots[name] = Path(prepare_busybox_root(str(workdir / f"root-{name}")))
        phases = (
            [Phase.generate, Phase.shrink] if shrink and runtime == "fake" else [Phase.generate]
        )
        for round_seed, examples, per in rounds(seed, steps, lambda: ctx.steps):
            ctx.round_examples = 0
            machine = machine_class(ctx)
            machine._hypothesis_internal_use_seed = round_seed
            config = settings(
                max_examples=examples,
                stateful_step_count=per,
                database=None,
                deadline=None,
                phases=phases,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            try:
                run_state_machine_as_test(machine, settings=config)
            except Exception as exc:
                # hypothesis attaches the shrunk program to the exception(s) as notes
                traceback.print_exception(exc, file=out)
                print(f"stress FAILED: {type(exc).__name__}: {exc}", file=out)
                print(f"replay with: {replay}", file=out)
                return _result(False, ctx, started)
    finally:
        vsv_log.removeHandler(quiet)
        vsv_log.propagate = True
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(True, ctx, started)


def _result(ok: bool, ctx: RunContext, started: float) -> StressResult:
    return StressResult(ok, ctx.steps, ctx.examples, time.perf_counter() - started, dict(ctx.ops))


def run_stress(seed: int, steps: int, guests: int, runtime: RuntimeKind) -> int:
    """The CLI's runner: 0 when every check held, 1 otherwise (details printed)."""
    result = run_stress_detailed(seed, steps, guests, runtime)
    rate = result.steps / result.seconds if result.seconds else 0.0
    status = "passed" if result.ok else "FAILED"
    print(
        f"stress {status}: seed {seed}, {result.steps} steps in {result.examples} examples, "
        f"{result.seconds:.1f}s ({rate:.0f} steps/s), runtime {runtime}, {guests} guests"
    )
    print("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(result.ops.items())))
    return 0 if result.ok else 1


def cmd_stress(args: argparse.Namespace) -> int:
    """``vsv stress``: defaults filled in (a random seed, printed), then :func:`run_stress`."""
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    steps = args.steps if args.steps is not None else (2000 if args.runtime == "fake" else 200)
    if steps < 1 or args.guests < 1:
        print("vsv stress: --steps and --guests must be positive", file=sys.stderr)
        return 2
    try:
        return run_stress(seed, steps, args.guests, args.runtime)
    except RuntimeFailure as exc:
        print(f"vsv stress: {exc}", file=sys.stderr)
        return 1
