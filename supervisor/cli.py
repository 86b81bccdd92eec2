"""The ``vsv`` command.

Start-up cost matters (a read verb should answer in well under 100 ms), so this module imports
only argparse at load time; each verb imports what it needs when it runs. The daemon's trio and
server code is never imported by a client verb.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _cmd_validate(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import validate_paths

    return validate_paths(args.paths, out=sys.stdout, err=sys.stderr)


def _cmd_format(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import format_path

    return format_path(args.path, out=sys.stdout, err=sys.stderr)


def _cmd_from_native(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import lxc_from_native

    return lxc_from_native(args.file, name=args.name, out=sys.stdout, err=sys.stderr)


def _cmd_to_native(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import lxc_to_native

    return lxc_to_native(args.file, cgroup_version=args.cgroup, out=sys.stdout, err=sys.stderr)


def _cmd_import_lxc(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import import_lxc

    status, document = import_lxc(args.name, args.lxcpath, err=sys.stderr)
    if document is None:
        return status
    if not args.define:
        sys.stdout.write(document)
        return 0
    from supervisor.api.client import Client
    from supervisor.clientcli import run_verb

    def define(a: argparse.Namespace, c: Client) -> int:
        reply = c.send_xml("/v1/domains", document.encode())
        sys.stdout.write(f"Domain '{reply['domain']['name']}' defined from LXC {args.name}\n")
        return 0

    return run_verb("import-lxc", define, args)


def _cmd_daemon(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    from pathlib import Path

    import trio

    from supervisor.clientcli import resolve_socket
    from supervisor.daemon import DaemonOptions, run_daemon
    from supervisor.logging_setup import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, fmt=args.log_format)
    from supervisor.api.client import BadSocketPath

    socket_path: str | None = None
    ro_socket: str | None = None
    if not args.no_api:
        try:
            socket_path = resolve_socket(args)
        except BadSocketPath as exc:
            print(f"vsv daemon: {exc}", file=sys.stderr)
            return 2
        if args.ro_socket == "":
            print("vsv daemon: --ro-socket: the socket path is empty", file=sys.stderr)
            return 2
        ro_socket = args.ro_socket or os.path.join(os.path.dirname(socket_path), "vsv-ro.sock")
    metrics: tuple[str, int] | None = None
    if args.metrics_listen is not None:
        from supervisor.metrics import parse_listen

        try:
            metrics = parse_listen(args.metrics_listen)
        except ValueError as exc:
            print(f"vsv daemon: {exc}", file=sys.stderr)
            return 2
    sig = getattr(signal, "SIG" + args.shutdown_signal.upper().removeprefix("SIG"), None)
    if not isinstance(sig, int):
        print(
            f"vsv daemon: --shutdown-signal: unknown signal {args.shutdown_signal!r}",
            file=sys.stderr,
        )
        return 2
    from supervisor.fleet.cli import daemon_settings

    fleet = daemon_settings(args)
    if isinstance(fleet, str):
        print(f"vsv daemon: {fleet}", file=sys.stderr)
        return 2
    opts = DaemonOptions(
        state_dir=Path(args.state_dir),
        run_dir=Path(args.run_dir),
        prefix=args.prefix,
        start=tuple(args.start),
        shutdown_timeout=args.shutdown_timeout,
        stop_timeout=args.stop_timeout,
        shutdown_signal=sig,
        keep_guests=args.keep_guests,
        netns=args.netns,
        socket=socket_path,
        ro_socket=ro_socket,
        socket_group=args.socket_group,
        log_max_bytes=args.log_max_mib << 20,
        resolv_file=None if args.resolv_file == "none" else args.resolv_file,
        api_max_connections=args.api_max_connections,
        api_ro_max_connections=args.api_ro_max_connections,
        metrics_listen=metrics,
        fleet=fleet,
    )
    return trio.run(run_daemon, opts)


def _cmd_completion(args: argparse.Namespace) -> int:
    from supervisor.completion import print_script

    sys.stdout.write(print_script(args.shell))
    return 0


def _cmd_rootfs(args: argparse.Namespace) -> int:
    from supervisor.errors import VsvError
    from supervisor.guest.rootfs import prepare_busybox_root

    owner: tuple[int, int] | None = None
    if args.owner is not None:
        uid, _, gid = args.owner.partition(":")
        if not uid.isdigit() or not (gid or uid).isdigit():
            print(f"vsv rootfs: --owner {args.owner!r}: expected UID or UID:GID", file=sys.stderr)
            return 2
        owner = (int(uid), int(gid or uid))
    try:
        print(prepare_busybox_root(args.path, owner=owner))
    except (VsvError, OSError) as exc:
        print(f"vsv rootfs: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive_number(text: str) -> int:
    """argparse type: a whole number of 1 or more (a cap of 0 connections would lock all out)."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


class _OneVerb:
    """Stands in for argparse's sub-parser action while only one verb's parser is wanted.

    Building every verb's parser costs ~10 ms (argparse looks up translations for each), a
    sixth of what a client verb may take as a whole process; :func:`main` knows the verb before
    parsing, so it builds that one. Every other verb's registration runs against a stand-in
    that records the name and ignores the rest.
    """

    def __init__(self, real: Any, only: str) -> None:
        self._real = real
        self._only = only
        self.names: list[str] = []

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        self.names.append(name)
        if name == self._only:
            return self._real.add_parser(name, **kwargs)
        return _Ignored()


class _Ignored:
    """A verb parser nobody will use: every call is accepted and does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, separate from :func:`main` so tests and docs can inspect it;
    with ``only``, the parser of that verb alone (all of them when there is no such verb)."""
    parser = argparse.ArgumentParser(
        prog="vsv", description="Supervise Linux guest contexts defined in libvirt-style XML."
    )
    from supervisor.clientcli import add_global_options, register_client_verbs, whole_number

    add_global_options(parser)
    real = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    selective = _OneVerb(real, only) if only is not None else None
    sub: Any = selective if selective is not None else real
    register_client_verbs(sub)

    p = sub.add_parser("validate", help="check domain/network XML documents")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("format", help="print a document as the supervisor stores it")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_cmd_format)

    p = sub.add_parser(
        "domxml-from-native",
        help="print the domain document for an LXC container config (keys not mapped: stderr)",
    )
    p.add_argument("format", choices=("lxc-tools",), metavar="FORMAT", help="lxc-tools")
    p.add_argument("file", metavar="FILE", help="the LXC config ('-' for stdin)")
    p.add_argument("--name", help="the domain's name (default: lxc.uts.name)")
    p.set_defaults(func=_cmd_from_native)

    p = sub.add_parser(
        "domxml-to-native",
        help="print the LXC container config for a domain document (what LXC lacks: stderr)",
    )
    p.add_argument("format", choices=("lxc-tools",), metavar="FORMAT", help="lxc-tools")
    p.add_argument("file", metavar="FILE", help="the domain document ('-' for stdin)")
    p.add_argument(
        "--cgroup",
        type=int,
        choices=(1, 2),
        default=2,
        help="write lxc.cgroup2.* (2, default) or lxc.cgroup.* (1) keys",
    )
    p.set_defaults(func=_cmd_to_native)

    p = sub.add_parser(
        "import-lxc", help="print (or --define) the domain for the LXC container LXCPATH/NAME"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--lxcpath", default="/var/lib/lxc", help="LXC's container directory (%(default)s)"
    )
    p.add_argument(
        "--define", action="store_true", help="define it on the running supervisor instead"
    )
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="the API socket")
    p.set_defaults(func=_cmd_import_lxc)

    p = sub.add_parser("daemon", help="run the supervisor in the foreground")
    p.add_argument("--state-dir", default="/var/lib/vsv", help="definitions (default %(default)s)")
    p.add_argument("--run-dir", default="/run/vsv", help="runtime records (default %(default)s)")
    p.add_argument("--prefix", default="vsv", help="name prefix of kernel objects")
    p.add_argument(
        "--start",
        nargs="+",
        default=[],
        metavar="PATH",
        help="define these documents and start them",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a guest gets to end after a shutdown request before it is killed",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="on SIGTERM/SIGINT: seconds for all guests to end before they are killed",
    )
    p.add_argument(
        "--shutdown-signal",
        default="TERM",
        metavar="SIG",
        help="signal sent to a guest's init to ask it to power off",
    )
    p.add_argument(
        "--keep-guests",
        action="store_true",
        help="on SIGTERM/SIGINT leave guests running (for an upgrade-restart)",
    )
    p.add_argument(
        "--netns",
        metavar="NAME",
        help="sandbox mode: do all host-side networking in this network namespace "
        "(created if missing, removed at exit if it was created)",
    )
    p.add_argument(
        "--resolv-file",
        metavar="PATH",
        default="derived",
        help="the resolv.conf whose servers networks forward DNS to, or 'none' (default: "
        "/etc/resolv.conf; with --netns NAME, /etc/netns/NAME/resolv.conf if it exists)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="read-write API socket (default: vsv --socket, $VSV_SOCKET, /run/vsv/vsv.sock)",
    )
    p.add_argument(
        "--ro-socket", metavar="PATH", help="read-only API socket (default: beside --socket)"
    )
    p.add_argument("--socket-group", metavar="GROUP", help="group allowed on the read-write socket")
    p.add_argument("--no-api", action="store_true", help="serve no API sockets")
    p.add_argument(
        "--api-max-connections",
        type=_positive_number,
        metavar="N",
        help="open connections the read-write socket serves at once; more are answered 503 "
        "(default 64, less when the descriptor limit is low)",
    )
    p.add_argument(
        "--api-ro-max-connections",
        type=_positive_number,
        metavar="N",
        help="open connections the read-only socket serves at once; more are answered 503 "
        "(default 256, less when the descriptor limit is low)",
    )
    p.add_argument(
        "--log-max-mib",
        type=whole_number,
        default=8,
        metavar="N",
        help="cut a guest's log back when it grows beyond N MiB (0: never; default %(default)s)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="[ADDR:]PORT",
        default=None,
        help="serve /metrics (Prometheus text format) on this TCP port; the loopback address "
        "unless ADDR is given (default: off)",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-v", "--verbose", action="store_true")
    from supervisor.fleet.cli import add_daemon_options, add_fleet_parser

    add_daemon_options(p)
    p.set_defaults(func=_cmd_daemon)
    add_fleet_parser(sub)

    from supervisor.stress_cli import add_stress_parser

    add_gc_parser(sub)
    add_stress_parser(sub)

    p = sub.add_parser(
        "completion",
        help="print the bash or zsh completion script (domain and network names included)",
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=_cmd_completion)

    p = sub.add_parser("rootfs", help="prepare a small busybox root directory for guests")
    p.add_argument("path", nargs="?", default="/var/lib/vsv/rootfs/busybox")
    p.add_argument(
        "--owner",
        metavar="UID[:GID]",
        help="give the root to the host ids a guest's <idmap> maps its root to "
        "(the <uid start='0' target='UID'/> of the domain); every file keeps its offset",
    )
    p.set_defaults(func=_cmd_rootfs)
    if selective is not None and only not in selective.names:
        return build_parser()  # not a verb: argparse's error lists them all
    return parser


def add_gc_parser(subparsers: Any) -> None:
    """Add the ``gc`` verb to the ``vsv`` parser's subparsers (here, so that building the
    parser for another verb does not import :mod:`supervisor.gc` and attrs)."""
    p = subparsers.add_parser(
        "gc",
        help="find and remove what a crashed supervisor left behind",
        description="Find (and unless --dry-run remove) the network namespaces, links, "
        "nftables tables, cgroups, processes and run-dir files whose names start with PREFIX.",
    )
    p.add_argument(
        "--prefix", default="vsv", help="name prefix of the objects (default %(default)s)"
    )
    p.add_argument(
        "--run-dir",
        default="/run/vsv",
        help="the supervisor's run dir (default %(default)s; '' to skip run-dir files)",
    )
    p.add_argument(
        "--netns",
        metavar="NAME",
        help="sandbox network namespace whose links and tables are inspected too",
    )
    p.add_argument("--dry-run", action="store_true", help="list only, remove nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--force",
        action="store_true",
        help="run even while a vsv daemon with an overlapping prefix is alive",
    )
    p.set_defaults(func=_cmd_gc)


def _cmd_gc(args: argparse.Namespace) -> int:
    from supervisor.gc import cmd_gc

    return cmd_gc(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vsv``; returns the process exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if command_verb(words) == "daemon":
        from supervisor import stopsignals

        # first of all: a stop signal during the start-up must end it in order too
        stopsignals.defer()
    parser = build_parser(command_verb(words))
    args = parser.parse_args(argv)
    from supervisor.clientcli import stdout_closed

    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()  # `vsv validate *.xml | head -1`: quietly, as client verbs do
    return result


def command_verb(words: Sequence[str]) -> str | None:
    """The verb of a ``vsv`` command line's arguments, known without argparse (which imports
    what it needs): the first word that is neither an option nor the value of the global
    ``--socket``. ``vsv gc`` uses it too, to recognise a daemon's command line."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--socket":
            skip = True
        elif not word.startswith("-"):
            return word
    return None
