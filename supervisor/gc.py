"""``vsv gc``: find and remove what a crashed supervisor left behind for a name prefix.

Theory of operation
-------------------
Everything the supervisor makes in the kernel and in its run dir carries one name prefix
(architecture: "Naming"), so after a crash the leftovers of one supervisor are exactly the
objects whose names start with its prefix. gc works in two steps:

1. :func:`find` reads, and changes nothing: mounted network namespaces under ``/run/netns``,
   links in the root namespace and in an optional sandbox namespace, nftables tables (any
   family) in both, cgroup directories in every mounted hierarchy (v1 controllers and the
   unified one, nested up to :data:`CGROUP_DEPTH` levels, as ``leakcheck`` looks), the processes
   still inside those cgroups, dnsmasq instances whose ``--conf-file`` is one of the prefix's
   run-dir files, and the run-dir records and files of the prefix. Each becomes a
   :class:`Leftover`.
2. :func:`remove` undoes them in dependency order (:data:`KIND_ORDER`): processes first (they
   hold cgroups busy and keep namespaces alive), then nftables tables (they name links), links,
   namespaces, cgroups and last the run-dir files, which are the only record of what was there
   if anything before them fails. Every removal re-checks what it is about to hit (a pid is
   still in the prefix's cgroup, a dnsmasq still names the prefix's file), because time passes
   between listing and removing and pids get reused. Something already gone counts as removed,
   so gc can be run again after a partial failure.

The selection rules are pure functions (``select_*``, :func:`parse_nft_tables`,
:func:`dnsmasq_conf`, :func:`daemon_prefix`) so they are property tested without root; the
readers and removers around them are thin. pyroute2 is only used through
:class:`~supervisor.net.netlink.NetnsWorker`, which enters the namespace before it opens its
socket. The work is async (trio) inside; :func:`find` and :func:`remove` are the synchronous
entry points for the CLI and :func:`find_async`/:func:`remove_async` those for trio code.
trio and the netlink code are imported inside the functions that use them, so that ``vsv``
can register this verb without slowing every other verb down by their import time.

Safety: a prefix shorter than two characters, or one with ``/`` or whitespace, is refused,
because it would match objects of other programs (``v`` matches ``veth0``). Nothing whose name
does not start with the prefix is ever touched. The CLI also refuses to run while a ``vsv
daemon`` whose prefix overlaps is alive: its objects are in use, not left over.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from supervisor.cli import command_verb
from supervisor.errors import RuntimeFailure, VsvError

#: removal order of the kinds (see the module docstring for why)
KIND_ORDER: tuple[str, ...] = ("process", "nft", "link", "netns", "cgroup", "runfile")
#: how many directory levels below each hierarchy's top gc looks for prefixed cgroups
CGROUP_DEPTH = 5
#: how long gc waits for processes to die and cgroups to empty, per step
SETTLE_TIMEOUT = 5.0
#: how long a dnsmasq gets after SIGTERM before SIGKILL
DNSMASQ_GRACE = 1.0
ROOT_NETNS = "root netns"
CGROUP_ROOT = "/sys/fs/cgroup"
NFT = "/usr/sbin/nft"
DEFAULT_RUN_DIR = "/run/vsv"


class RefusedPrefix(VsvError, ValueError):
    """A prefix so short or odd that matching on it could hit objects gc must never touch."""


@attrs.frozen
class Leftover:
    """One object left behind.

    ``kind`` is one of :data:`KIND_ORDER`. ``name`` says what it is: ``"PID CMDLINE"`` for a
    process, ``"FAMILY TABLE"`` for an nftables table (as ``nft`` names it), the link name, the
    namespace name, the cgroup directory's path, the run-dir file's path. ``where`` says where:
    the cgroup directory (or the dnsmasq's conf file) of a process, ``"root netns"`` or the
    sandbox namespace's name for tables and links, ``/run/netns``, the cgroup hierarchy, the run
    dir.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(KIND_ORDER))
    name: str
    where: str


# ------------------------------------------------------------------------------- pure core


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if gc may match on it, else raise :class:`RefusedPrefix`."""
    if len(prefix) < 2:
        raise RefusedPrefix(
            f"refusing prefix {prefix!r}: at least 2 characters are needed, a shorter one "
            "would match objects of other programs"
        )
    if "/" in prefix or "\0" in prefix or any(c.isspace() for c in prefix):
        raise RefusedPrefix(f"refusing prefix {prefix!r}: it must not contain '/' or whitespace")
    return prefix


def select_names(names: Iterable[str], prefix: str) -> list[str]:
    """The names that start with ``prefix``, sorted, without duplicates."""
    return sorted({n for n in names if n.startswith(prefix)})


def parse_nft_tables(text: str) -> list[tuple[str, str]]:
    """``(family, name)`` of every table in ``nft list tables`` output."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table":
            out.append((words[1], words[2]))
    return out


def dnsmasq_conf(argv: Sequence[str]) -> str | None:
    """The configuration file a dnsmasq command line names, or None (also for non-dnsmasq)."""
    if not argv or os.path.basename(argv[0]) != "dnsmasq":
        return None
    for i, arg in enumerate(argv[1:], start=1):
        for flag in ("--conf-file=", "-C"):
            if arg.startswith(flag) and len(arg) > len(flag):
                return arg[len(flag) :]
        if arg in ("--conf-file", "-C") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def keeper_socket(argv: Sequence[str]) -> str | None:
    """The socket a console keeper's command line serves (``python -I -S .../ptykeeper.py
    SOCKET [CGROUP...]``), or None (also for any other command)."""
    for index, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "ptykeeper.py":
            return argv[index + 1]
    return None


def is_prefix_dnsmasq(argv: Sequence[str], prefix: str) -> bool:
    """Whether a command line is a dnsmasq whose conf file is one of the prefix's files."""
    conf = dnsmasq_conf(argv)
    return conf is not None and os.path.basename(conf).startswith(prefix)


def daemon_prefix(argv: Sequence[str]) -> str | None:
    """The prefix of a ``vsv daemon`` command line (``--prefix``, default ``vsv``), or None.

    Recognises ``vsv daemon ...`` and ``python -m supervisor daemon ...``.
    """
    for i, arg in enumerate(argv):
        base = os.path.basename(arg)
        launcher = base == "vsv" or (base == "supervisor" and i > 0 and argv[i - 1] == "-m")
        rest = argv[i + 1 :]
        if launcher and command_verb(rest) == "daemon":
            found = "vsv"
            for j, opt in enumerate(rest):
                if opt == "--prefix" and j + 1 < len(rest):
                    found = rest[j + 1]
                elif opt.startswith("--prefix="):
                    found = opt.removeprefix("--prefix=")
            return found
    return None


def prefixes_overlap(a: str, b: str) -> bool:
    """Whether gc with one prefix could match objects named with the other."""
    return a.startswith(b) or b.startswith(a)


def select_network_record(
    name: str, record: dict[str, Any], prefix: str, net_files: Iterable[str]
) -> bool:
    """Whether a run-dir network record belongs to the prefix.

    Network records carry the bridge and the table (``<prefix>_<network>``); a record of a
    network without rules still has its dnsmasq files ``<prefix>-<network>.*`` beside it.
    """
    own = record.get("prefix")
    if isinstance(own, str):
        return own.startswith(prefix)
    for key in ("table", "bridge"):
        value = record.get(key)
        if isinstance(value, str) and value.startswith(prefix):
            return True
    return any(f.startswith(prefix) and f.endswith(f"-{name}.conf") for f in net_files)


def sort_for_removal(items: Iterable[Leftover]) -> list[Leftover]:
    """The items in removal order (:data:`KIND_ORDER`), stable within a kind."""
    return sorted(items, key=lambda i: KIND_ORDER.index(i.kind))


def format_table(rows: Sequence[tuple[Leftover, str]]) -> str:
    """A fixed-width table ``KIND WHERE NAME STATUS`` for the CLI (long names are cut)."""
    if not rows:
        return ""
    head = ("KIND", "WHERE", "NAME", "STATUS")
    cells = [head] + [(i.kind, _cut(i.where, 40), _cut(i.name, 70), s) for i, s in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(3)]
    lines = ["  ".join(c[k].ljust(widths[k]) for k in range(3)) + "  " + c[3] for c in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ------------------------------------------------------------------------------- readers


def _read_argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def _pids() -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie holds nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cgroup_hierarchies(root: str = CGROUP_ROOT) -> list[tuple[str, str]]:
    """``(label, top directory)`` of every mounted cgroup hierarchy under ``root``.

    All of them, not only the ones guests use: leakcheck looks in every one, and a crashed
    helper may have used another controller. v2-capable ones (with ``cgroup.kill``) come first,
    so a process in several is handled where one write kills it.
    """
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return [("unified", root)]
    seen: dict[str, tuple[str, str]] = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    for entry in entries:
        path = os.path.join(root, entry)
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "cgroup.procs")):
            continue
        real = os.path.realpath(path)
        seen.setdefault(real, (os.path.basename(real), real))
    return sorted(
        seen.values(),
        key=lambda h: (not os.path.exists(os.path.join(h[1], "cgroup.controllers")), h[0]),
    )


def _walk_prefixed(top: str, prefix: str, depth: int) -> Iterator[str]:
    """Directories named with the prefix below ``top`` (not descending into matches)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(prefix):
            yield entry.path
        elif depth > 1:
            yield from _walk_prefixed(entry.path, prefix, depth - 1)


def _subtree(path: str) -> list[str]:
    """``path`` and every cgroup below it, deepest first (the order rmdir needs)."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        out.append(dirpath)
    return out


def _subtree_pids(path: str) -> set[int]:
    found: set[int] = set()
    for d in _subtree(path):
        with contextlib.suppress(OSError):
            found.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
    return found


def _find_cgroups(prefix: str) -> tuple[list[Leftover], list[Leftover]]:
    cgroups: list[Leftover] = []
    processes: dict[int, Leftover] = {}
    for label, top in cgroup_hierarchies():
        for path in _walk_prefixed(top, prefix, CGROUP_DEPTH):
            cgroups.append(Leftover("cgroup", path, label))
            for pid in sorted(_subtree_pids(path)):
                if pid in processes or pid == os.getpid() or not _alive(pid):
                    continue
                argv = _read_argv(pid)
                if argv is None:
                    continue  # exited while we looked (the cgroup kill would take it anyway)
                cmd = " ".join(argv) if argv else "?"
                processes[pid] = Leftover("process", f"{pid} {cmd}", path)
    return cgroups, list(processes.values())


def _find_dnsmasq(prefix: str, known: set[int]) -> list[Leftover]:
    out = []
    for pid in _pids():
        if pid in known:
            continue
        argv = _read_argv(pid)
        if argv and is_prefix_dnsmasq(argv, prefix) and _alive(pid):
            conf = dnsmasq_conf(argv)
            assert conf is not None
            out.append(Leftover("process", f"{pid} {' '.join(argv)}", conf))
    return out


def _find_keeper(run_dir: Path, known: set[int]) -> list[Leftover]:
    """The console keeper of the run dir (it holds the consoles of guests a supervisor left),
    unless it was found in its prefixed cgroup already."""
    from supervisor.guest.ptykeeper import SOCKET_NAME

    sock = str(run_dir / SOCKET_NAME)
    out = []
    for pid in _pids():
        if pid in known:
            continue
        argv = _read_argv(pid)
        if argv and keeper_socket(argv) == sock and _alive(pid):
            out.append(Leftover("process", f"{pid} {' '.join(argv)}", sock))
    return out


def _find_runfiles(prefix: str, run_dir: Path) -> list[Leftover]:
    from supervisor.store import RunStore

    out: list[Leftover] = []
    where = str(run_dir)
    store = RunStore(run_dir)
    for name, record in store.read_all("domains").items():
        own = record.get("prefix")
        if isinstance(own, str) and own.startswith(prefix):
            out.append(Leftover("runfile", str(run_dir / "domains" / f"{name}.json"), where))
    net_dir = run_dir / "net"
    net_files = sorted(p.name for p in net_dir.iterdir()) if net_dir.is_dir() else []
    for name, record in store.read_all("networks").items():
        if select_network_record(name, record, prefix, net_files):
            out.append(Leftover("runfile", str(run_dir / "networks" / f"{name}.json"), where))
    out.extend(
        Leftover("runfile", str(net_dir / f), where) for f in select_names(net_files, prefix)
    )
    return out


async def _list_links(where: str) -> list[str]:
    from supervisor.net.netlink import NetnsWorker

    worker = await NetnsWorker.open(_ns_path(where))
    try:
        return await worker.call(lambda ipr: [str(x.get("ifname")) for x in ipr.get_links()])
    finally:
        await worker.aclose()


async def _list_nft(where: str) -> list[tuple[str, str]]:
    from supervisor.net.runner import run_checked

    if not _exists(NFT):
        return []  # no nftables on this machine: nobody can have left tables
    return parse_nft_tables(await run_checked(_ns_path(where), [NFT, "list", "tables"]))


def _ns_path(where: str) -> str | None:
    from supervisor import nsutil

    return None if where == ROOT_NETNS else str(nsutil.netns_path(where))


async def find_async(
    prefix: str, *, run_dir: Path | None = None, netns: str | None = None
) -> list[Leftover]:
    """Everything left behind for ``prefix``, in removal order; reads only.

    ``netns`` names a sandbox namespace whose links and tables are inspected besides the root
    namespace's (a sandbox that does not exist, e.g. because gc removed it, has none).
    ``run_dir`` None skips the run-dir records and files.
    """
    from supervisor import nsutil

    check_prefix(prefix)
    items: list[Leftover] = []
    cgroups, members = _find_cgroups(prefix)
    items += members
    items += _find_dnsmasq(prefix, {int(m.name.split()[0]) for m in members})
    spaces = [ROOT_NETNS]
    if netns is not None and nsutil.netns_exists(netns):
        spaces.append(netns)
    for where in spaces:
        items += [
            Leftover("nft", f"{family} {table}", where)
            for family, table in sorted(await _list_nft(where))
            if table.startswith(prefix)
        ]
    for where in spaces:
        items += [
            Leftover("link", n, where) for n in select_names(await _list_links(where), prefix)
        ]
    items += [Leftover("netns", n, str(nsutil.NETNS_DIR)) for n in nsutil.list_netns(prefix)]
    items += cgroups
    if run_dir is not None:
        items += _find_keeper(Path(run_dir), {int(m.name.split()[0]) for m in members})
        items += _find_runfiles(prefix, Path(run_dir))
    return sort_for_removal(items)


def find(prefix: str, *, run_dir: Path | None = None, netns: str | None = None) -> list[Leftover]:
    """Synchronous :func:`find_async` (for the CLI and tests; not from inside trio)."""
    import trio

    return trio.run(functools.partial(find_async, prefix, run_dir=run_dir, netns=netns))


def running_daemons(prefix: str) -> list[str]:
    """``"PID CMDLINE"`` of live ``vsv daemon`` processes whose prefix overlaps ``prefix``."""
    out = []
    for pid in _pids():
        argv = _read_argv(pid)
        if not argv or pid == os.getpid():
            continue
        theirs = daemon_prefix(argv)
        if theirs is not None and prefixes_overlap(prefix, theirs):
            out.append(f"{pid} {' '.join(argv)}")
    return out


# ------------------------------------------------------------------------------- removers


async def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` with a growing delay; True once it holds, False at the deadline."""
    import trio

    delay = 0.001
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True
    return False


def _write(path: str, value: str) -> None:
    """One write to a cgroup file (cgroupfs is in memory: this never blocks for long)."""
    Path(path).write_text(value)


def _isdir(path: str) -> bool:
    return os.path.isdir(path)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _freezer_state(path: str) -> str | None:
    try:
        return Path(path, "freezer.state").read_text().strip()
    except OSError:
        return None


async def _kill_cgroup(path: str) -> None:
    """SIGKILL everything in the cgroup subtree at ``path``, forks included; wait until empty.

    Unified hierarchy: one write to ``cgroup.kill``, atomic in the kernel. v1: freeze when the
    directory is a freezer one (nothing can fork while we look), kill each pid, thaw (a frozen
    task dies only once thawed), and repeat until empty.
    """
    import trio

    kill_file = os.path.join(path, "cgroup.kill")
    freezer = _freezer_state(path) is not None
    has_kill = _exists(kill_file)

    async def sweep() -> None:
        while _subtree_pids(path):
            if has_kill:
                _write(kill_file, "1")
            else:
                if freezer:
                    _write(os.path.join(path, "freezer.state"), "FROZEN")
                    await _wait_until(lambda: _freezer_state(path) != "FREEZING", 1.0)
                for pid in _subtree_pids(path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if freezer:
                    _write(os.path.join(path, "freezer.state"), "THAWED")
            await _wait_until(lambda: not _subtree_pids(path), 0.2)

    try:
        with trio.move_on_after(SETTLE_TIMEOUT):
            await sweep()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RuntimeFailure(f"cannot kill the processes of {path}: {exc.strerror}") from exc
    left = _subtree_pids(path) if _isdir(path) else set()
    if left:
        raise RuntimeFailure(f"{path} still has processes {sorted(left)} after {SETTLE_TIMEOUT}s")


async def _remove_process(item: Leftover, killed: dict[str, str | None]) -> str | None:
    pid = int(item.name.split()[0])
    if item.where.startswith(CGROUP_ROOT + "/") or item.where == CGROUP_ROOT:
        # a member of the prefix's cgroup: kill the whole cgroup once (it also takes any
        # process forked since find), then make sure this one is gone
        if item.where not in killed:
            try:
                await _kill_cgroup(item.where)
                killed[item.where] = None
            except RuntimeFailure as exc:
                killed[item.where] = str(exc)
        if killed[item.where] is not None:
            return killed[item.where]
        if pid in _subtree_pids(item.where) and _alive(pid):
            return f"pid {pid} is still in {item.where}"
        return None
    # a dnsmasq (a console keeper): only if it still is the one that names the prefix's file
    # (the run dir's socket), as pids get reused
    argv = _read_argv(pid)
    if (
        argv is None
        or not _alive(pid)
        or item.where not in (dnsmasq_conf(argv), keeper_socket(argv))
    ):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if await _wait_until(lambda: not _alive(pid), DNSMASQ_GRACE):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if await _wait_until(lambda: not _alive(pid), SETTLE_TIMEOUT):
        return None
    return f"pid {pid} survived SIGKILL for {SETTLE_TIMEOUT}s"


async def _remove_nft(item: Leftover) -> str | None:
    from supervisor import nsutil
    from supervisor.net.runner import run_checked

    family, table = item.name.split(" ", 1)
    if item.where != ROOT_NETNS and not nsutil.netns_exists(item.where):
        return None  # the sandbox is gone, and its tables with it
    try:
        await run_checked(_ns_path(item.where), [NFT, "delete", "table", family, table])
    except RuntimeFailure as exc:
        if "No such file" in str(exc):
            return None
        return str(exc)
    return None


async def _remove_link(item: Leftover, workers: dict[str, Any]) -> str | None:
    from supervisor import nsutil
    from supervisor.net import netlink

    if item.where != ROOT_NETNS and not nsutil.netns_exists(item.where):
        return None
    try:
        if item.where not in workers:
            workers[item.where] = await netlink.NetnsWorker.open(_ns_path(item.where))
        await workers[item.where].call(functools.partial(netlink.delete_link, name=item.name))
    except VsvError as exc:
        return str(exc)
    return None


async def _remove_cgroup(item: Leftover) -> str | None:
    try:
        await _kill_cgroup(item.name)
    except RuntimeFailure as exc:
        return str(exc)
    from supervisor.guest.cgroups import remove_dirs

    try:
        await remove_dirs(_subtree(item.name) if _isdir(item.name) else [], timeout=SETTLE_TIMEOUT)
    except RuntimeFailure as exc:
        return str(exc)
    return None


def _remove_runfile(item: Leftover) -> str | None:
    try:
        os.unlink(item.name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot remove {item.name}: {exc.strerror}"
    return None


async def remove_async(items: list[Leftover]) -> list[tuple[Leftover, str | None]]:
    """Remove the items in :data:`KIND_ORDER`; ``(item, None)`` when removed (or gone already),
    ``(item, message)`` when it could not be. One failure does not stop the others."""
    import trio

    from supervisor import nsutil

    results: list[tuple[Leftover, str | None]] = []
    killed: dict[str, str | None] = {}
    workers: dict[str, Any] = {}
    try:
        for item in sort_for_removal(items):
            error: str | None
            if item.kind == "process":
                error = await _remove_process(item, killed)
            elif item.kind == "nft":
                error = await _remove_nft(item)
            elif item.kind == "link":
                error = await _remove_link(item, workers)
            elif item.kind == "netns":
                if item.name in workers:
                    await workers.pop(item.name).aclose()
                try:
                    nsutil.delete_netns(item.name)
                    error = None
                except RuntimeFailure as exc:
                    error = str(exc)
            elif item.kind == "cgroup":
                error = await _remove_cgroup(item)
            else:
                error = _remove_runfile(item)
            results.append((item, error))
    finally:
        with trio.CancelScope(shield=True):
            for worker in workers.values():
                await worker.aclose()
    return results


def remove(items: list[Leftover]) -> list[tuple[Leftover, str | None]]:
    """Synchronous :func:`remove_async` (for the CLI and tests; not from inside trio)."""
    import trio

    return trio.run(remove_async, items)


# ------------------------------------------------------------------------------- CLI


def cmd_gc(args: argparse.Namespace) -> int:
    """``vsv gc``: list (``--dry-run``) or remove the prefix's leftovers.

    Exit 0 when everything was removed or nothing was found, 1 when something could not be
    removed, 2 when the prefix is refused or a supervisor with an overlapping prefix runs.
    """
    prefix: str = args.prefix
    try:
        check_prefix(prefix)
    except RefusedPrefix as exc:
        print(f"vsv gc: {exc}", file=sys.stderr)
        return 2
    if not args.force:
        live = running_daemons(prefix)
        if live:
            print(
                f"vsv gc: a supervisor using prefix {prefix!r} (or an overlapping one) is "
                f"running, its objects are in use: {'; '.join(live)}\n"
                "stop it first, or pass --force",
                file=sys.stderr,
            )
            return 2
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        items = find(prefix, run_dir=run_dir, netns=args.netns)
    except VsvError as exc:
        print(f"vsv gc: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        results: list[tuple[Leftover, str | None]] = [(i, None) for i in items]
    else:
        results = remove(items)
    failed = [r for r in results if r[1] is not None]
    if args.json:
        out = [
            {
                "kind": i.kind,
                "name": i.name,
                "where": i.where,
                "removed": (not args.dry_run) and err is None,
                "error": err,
            }
            for i, err in results
        ]
        print(json.dumps(out, indent=1))
    elif not results:
        print(f"vsv gc: nothing left behind with prefix {prefix!r}")
    else:
        rows = [(i, _status(err, dry_run=args.dry_run)) for i, err in results]
        sys.stdout.write(format_table(rows))
        verb = "found" if args.dry_run else "removed"
        print(f"vsv gc: {len(results) - len(failed)} {verb}, {len(failed)} failed")
    return 1 if failed else 0


def _status(error: str | None, *, dry_run: bool) -> str:
    if dry_run:
        return "found"
    return "removed" if error is None else f"FAILED: {error}"
