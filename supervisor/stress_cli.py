"""``vsv stress``'s command line, kept apart from the harness (:mod:`supervisor.testing.stress`)
so that building ``vsv``'s parser does not import hypothesis, trio or the supervisor (every verb
pays for that import)."""

from __future__ import annotations

import argparse
from typing import Any


def add_stress_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``vsv stress`` to the ``vsv`` sub-command parsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stress", help="stateful stress test of the supervisor against a model"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--steps", type=int, default=None, help="steps (default: fake 2000, real 200)")
    p.add_argument("--guests", type=int, default=4, help="guest names in play (default 4)")
    p.add_argument("--runtime", choices=("fake", "real"), default="fake")
    # Every run checks the documented behaviour now (the harness tolerates no known bug), so
    # ``--strict`` changes nothing; it is still accepted, unlisted, so that replay lines printed
    # by older builds run as they are.
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--fleet",
        action="store_true",
        help="fleet mode: supervisors on the fake runtime publish to a real nats-server that is "
        "restarted at random; the stream is checked against a model (docs/fleet.md)",
    )
    p.add_argument("--hosts", type=int, default=2, help="supervisors in fleet mode (default 2)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.fleet:
        import secrets
        import sys

        from supervisor.testing.stress.fleet import run_fleet_stress

        if args.runtime != "fake" or args.hosts < 1 or (args.steps is not None and args.steps < 1):
            print(
                "vsv stress --fleet: runs on the fake runtime, with positive --steps and --hosts",
                file=sys.stderr,
            )
            return 2
        seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
        return run_fleet_stress(seed, args.steps or 300, args.hosts, sys.stdout)
    from supervisor.testing.stress.run import cmd_stress

    return cmd_stress(args)
