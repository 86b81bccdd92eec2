"""The ``vsv`` command.

Start-up cost matters (a read verb should answer in well under 100 ms), so this module imports
only argparse at load time; each verb imports what it needs when it runs. The daemon's trio and
server code is never imported by a client verb.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_validate(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import validate_paths

    return validate_paths(args.paths, out=sys.stdout, err=sys.stderr)


def _cmd_format(args: argparse.Namespace) -> int:
    from supervisor.formats_cli import format_path

    return format_path(args.path, out=sys.stdout, err=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate from :func:`main` so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="vsv", description="Supervise Linux guest contexts defined in libvirt-style XML."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("validate", help="check domain/network XML documents")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("format", help="print a document as the supervisor stores it")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_cmd_format)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vsv``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
