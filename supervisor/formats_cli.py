"""``vsv validate`` and ``vsv format``: the file-facing edge of the XML codec.

Kept apart from cli.py so the verbs stay importable (and testable) without argparse, and so the
CLI module itself never imports lxml at start-up.
"""

from __future__ import annotations

from typing import TextIO

from supervisor.errors import InvalidDocument
from supervisor.model import Domain, Network


def _load(path: str) -> Domain | Network:
    """Read and parse one file; an unreadable file becomes an InvalidDocument problem."""
    from supervisor.xml import MAX_DOCUMENT_BYTES, parse_document

    try:
        with open(path, "rb") as f:
            # Read one byte past the limit so the codec can report the size instead of a
            # truncated document.
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise InvalidDocument([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return parse_document(data, path=path)


def validate_paths(paths: list[str], *, out: TextIO, err: TextIO) -> int:
    """Check every file; 0 if all are valid, else 1 with one ``PATH:LINE: message`` per problem.

    A valid domain that widens the guest's default confinement (more capabilities than its
    dialect's default) gets one ``PATH: widens WHERE: what`` line per widening: not an error,
    since the admin asked for it, but nothing that loosens the boundary goes unsaid.
    """
    status = 0
    for path in paths:
        try:
            doc = _load(path)
        except InvalidDocument as exc:
            status = 1
            for problem in exc.problems:
                print(problem, file=err)
            continue
        kind = "domain" if isinstance(doc, Domain) else "network"
        print(f"{path}: ok ({kind} {doc.name})", file=out)
        if isinstance(doc, Domain):
            from supervisor.guest.confine import widenings

            for where, message in widenings(doc):
                print(f"{path}: widens {where}: {message}", file=out)
    return status


def format_path(path: str, *, out: TextIO, err: TextIO) -> int:
    """Print the document at ``path`` as the supervisor would store it (0), or its problems (1)."""
    from supervisor.xml import format_domain, format_network

    try:
        doc = _load(path)
    except InvalidDocument as exc:
        for problem in exc.problems:
            print(problem, file=err)
        return 1
    text = format_domain(doc) if isinstance(doc, Domain) else format_network(doc)
    out.write(text)
    return 0
