"""``vsv validate``, ``vsv format`` and the LXC conversions: the file-facing edge of the codecs.

Kept apart from cli.py so the verbs stay importable (and testable) without argparse, and so the
CLI module itself never imports lxml at start-up. The LXC verbs (``domxml-from-native``,
``import-lxc``, ``domxml-to-native``) read files here and leave the mapping to the pure
:mod:`supervisor.lxcconfig`.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO, TextIO

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


#: the largest LXC config file (or included file) read
LXC_MAX_BYTES = 1 << 20


def _read_text(path: str, stdin: BinaryIO | None = None) -> str:
    """A config's text (``-``: standard input, or ``stdin``), at most LXC_MAX_BYTES."""
    if path == "-":
        data = (stdin or sys.stdin.buffer).read(LXC_MAX_BYTES + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(LXC_MAX_BYTES + 1)
    if len(data) > LXC_MAX_BYTES:
        raise OSError(f"larger than {LXC_MAX_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def read_lxc_path(path: str) -> list[tuple[str, str]]:
    """:data:`supervisor.lxcconfig.Reader` on the filesystem: a file, or a directory's
    ``*.conf`` files in name order (what ``lxc.include`` of a directory reads)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".conf"))
        return [(os.path.join(path, n), _read_text(os.path.join(path, n))) for n in names]
    return [(path, _read_text(path))]


def convert_lxc(
    text: str, *, path: str | None, name: str | None, verb: str, err: TextIO
) -> str | None:
    """The domain document for an LXC config, or None when it gives none.

    Every key that was not mapped goes to ``err`` (``PATH:LINE: KEY = VALUE: not mapped:
    why``), then the notes, then a count; a config that gives no domain prints its problems.
    """
    from supervisor.lxcconfig import LxcConfigError, from_native
    from supervisor.xml import format_domain

    try:
        result = from_native(text, path=path, name=name, read=read_lxc_path)
    except LxcConfigError as exc:
        for problem in exc.problems:
            print(f"vsv {verb}: {problem}", file=err)
        return None
    for item in result.unmapped:
        print(item, file=err)
    for note in result.notes:
        print(note, file=err)
    if result.unmapped:
        later = sum(1 for u in result.unmapped if u.later)
        print(
            f"vsv {verb}: {len(result.unmapped)} not mapped ({later} of them not yet: "
            "the model has no element for them yet)",
            file=err,
        )
    return format_domain(result.domain)


def lxc_from_native(
    path: str,
    *,
    name: str | None,
    out: TextIO,
    err: TextIO,
    stdin: BinaryIO | None = None,
) -> int:
    """``vsv domxml-from-native lxc-tools FILE``: 0 with the document on ``out`` (even with
    keys not mapped, listed on ``err``), 1 when the config gives no domain, 2 when the file
    cannot be read. ``-`` reads standard input (relative includes then cannot be followed)."""
    verb = "domxml-from-native"
    try:
        text = _read_text(path, stdin)
    except OSError as exc:
        print(f"vsv {verb}: {path}: cannot read: {exc.strerror or exc}", file=err)
        return 2
    document = convert_lxc(text, path=None if path == "-" else path, name=name, verb=verb, err=err)
    if document is None:
        return 1
    out.write(document)
    return 0


def import_lxc(name: str, lxcpath: str, *, err: TextIO) -> tuple[int, str | None]:
    """``vsv import-lxc NAME``: (0, document) for ``LXCPATH/NAME/config``, named NAME; else
    (1 or 2, None) with the reason on ``err`` (as :func:`lxc_from_native`)."""
    verb = "import-lxc"
    if not name or "/" in name or name in (".", ".."):
        print(f"vsv {verb}: {name!r} is not a container name", file=err)
        return 2, None
    path = os.path.join(lxcpath, name, "config")
    try:
        text = _read_text(path)
    except OSError as exc:
        print(f"vsv {verb}: {path}: cannot read: {exc.strerror or exc}", file=err)
        return 2, None
    document = convert_lxc(text, path=path, name=name, verb=verb, err=err)
    return (0, document) if document is not None else (1, None)


def host_device_numbers(path: str) -> str | None:
    """``MAJ:MIN`` of a block device node on this host (LXC's blkio keys name devices by
    their numbers), None when the path is no block device here; a ``/dev/block/MAJ:MIN``
    path says its numbers itself (no udev link needed)."""
    import stat

    from supervisor.lxcconfig import numbers_in_path

    named = numbers_in_path(path)
    if named is not None:
        return named
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def lxc_to_native(
    path: str,
    *,
    cgroup_version: int,
    out: TextIO,
    err: TextIO,
    stdin: BinaryIO | None = None,
) -> int:
    """``vsv domxml-to-native lxc-tools FILE``: the LXC config for a domain document on ``out``,
    what LXC cannot express on ``err`` (exit 0); 1 for a document that is not a valid domain
    (or cannot be read); ``-`` reads standard input."""
    from supervisor.lxcconfig import to_native
    from supervisor.xml import MAX_DOCUMENT_BYTES, parse_document

    try:
        if path == "-":
            data = (stdin or sys.stdin.buffer).read(MAX_DOCUMENT_BYTES + 1)
            doc = parse_document(data, path="-")
        else:
            doc = _load(path)
    except InvalidDocument as exc:
        for problem in exc.problems:
            print(problem, file=err)
        return 1
    if not isinstance(doc, Domain):
        print(f"{path}: a network document: only domains have an LXC config", file=err)
        return 1
    native = to_native(
        doc, cgroup_version=2 if cgroup_version == 2 else 1, device_numbers=host_device_numbers
    )
    for gap in native.unexpressed:
        print(f"{path}: not expressed: {gap}", file=err)
    out.write(native.text)
    return 0
