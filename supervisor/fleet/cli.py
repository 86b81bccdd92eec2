"""The fleet's command-line pieces: ``vsv daemon --nats ...`` and ``vsv fleet events``.

Kept apart so that building ``vsv``'s parser imports argparse only: nats-py (about 170 ms) is
imported by the daemon's publisher and by ``vsv fleet events`` when they run, never by another
verb.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.fleet.subjects import FleetSettings


def _replicas(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 5:
        raise argparse.ArgumentTypeError(f"expected 1..5, got {text!r}")
    return int(text)


def add_daemon_options(p: argparse.ArgumentParser) -> None:
    """``vsv daemon``'s fleet options."""
    p.add_argument(
        "--nats",
        metavar="URL[,URL]",
        help="publish every event to NATS JetStream at these servers (docs/fleet.md)",
    )
    p.add_argument("--nats-creds", metavar="FILE", help="NATS credentials file (JWT and NKey)")
    p.add_argument(
        "--nats-stream",
        default="GUESTS",
        metavar="NAME",
        help="the JetStream stream (default %(default)s; created if missing)",
    )
    p.add_argument(
        "--nats-replicas",
        type=_replicas,
        default=1,
        metavar="N",
        help="replicas of the stream when this supervisor creates it (default %(default)s)",
    )
    p.add_argument(
        "--host-id",
        metavar="ID",
        help="this host's name in the fleet stream (default: the short host name)",
    )


def daemon_settings(args: argparse.Namespace) -> FleetSettings | str | None:
    """The checked fleet settings, None without ``--nats``, or an error message."""
    if args.nats is None:
        return None
    from supervisor.fleet.subjects import (
        FleetConfigError,
        FleetSettings,
        check_host_id,
        check_stream_name,
        default_host_id,
        servers_of,
    )

    try:
        return FleetSettings(
            servers=tuple(servers_of(args.nats)),
            host=check_host_id(args.host_id if args.host_id is not None else default_host_id()),
            stream=check_stream_name(args.nats_stream),
            creds=args.nats_creds,
            replicas=args.nats_replicas,
        )
    except FleetConfigError as exc:
        return str(exc)


def add_fleet_parser(subparsers: Any) -> None:
    """``vsv fleet events``."""
    fleet = subparsers.add_parser("fleet", help="events of every host, from NATS JetStream")
    verbs = fleet.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)
    p = verbs.add_parser(
        "events",
        help="print the fleet's events (every host's, ordered per host)",
        description="Print the events the fleet stream holds, oldest first, and exit; with "
        "--follow keep printing new ones. With --durable NAME the position is kept by the "
        "server: the next run with the same NAME resumes after the last event printed.",
    )
    p.add_argument("--nats", required=True, metavar="URL[,URL]", help="NATS servers")
    p.add_argument("--nats-creds", metavar="FILE", help="NATS credentials file")
    p.add_argument("--stream", default="GUESTS", help="the stream (default %(default)s)")
    since = p.add_mutually_exclusive_group()
    since.add_argument(
        "--since", type=int, metavar="SEQ", help="start after this stream sequence number"
    )
    since.add_argument(
        "--since-time",
        metavar="T",
        help="start at this time (Unix seconds or ISO 8601, e.g. 2025-01-31T12:00:00Z)",
    )
    p.add_argument("--host", metavar="H", help="only this host's events")
    p.add_argument("--domain", metavar="D", help="only this domain's events")
    p.add_argument("--follow", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--durable",
        metavar="NAME",
        help="a durable consumer: a later run with this NAME resumes where this one stopped",
    )
    p.set_defaults(func=_cmd_events)


def _cmd_events(args: argparse.Namespace) -> int:
    from supervisor.fleet.consume import cmd_events

    return cmd_events(args, out=sys.stdout, err=sys.stderr)
