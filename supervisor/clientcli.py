"""The client verbs of ``vsv`` (virsh-like), talking to a running supervisor over its socket.

:func:`register_client_verbs` adds every verb to the ``vsv`` argument parser; each verb is a
function taking the parsed arguments and returning the exit status (see :data:`EXIT_CODES`).
Only the standard library and :mod:`supervisor.api.client` are imported, so a verb answers in
tens of milliseconds: no trio, no httpx, no server code.

The socket is ``--socket``, else ``$VSV_SOCKET``, else the default. A read verb that finds the
default read-write socket closed to it (not root, not in the group) falls back to the read-only
socket next to it, so unprivileged users can look without being told to pass a path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from supervisor.api.client import (
    DEFAULT_RO_SOCKET,
    DEFAULT_SOCKET,
    ApiError,
    BadSocketPath,
    Client,
    ClientError,
    DaemonNotRunning,
    ProtocolError,
    SocketNotPermitted,
    quote,
)

EXIT_OK = 0
EXIT_REFUSED = 1  # the supervisor refused or failed the operation (not found, wrong state...)
EXIT_USAGE = 2  # bad arguments (argparse's own status), unreadable input file
EXIT_NOT_RUNNING = 3  # nothing serves on the socket
EXIT_NOT_PERMITTED = 4  # the socket is not open to this user, or read-only for a mutation
EXIT_PROTOCOL = 5  # the answer made no sense (version mismatch, broken connection)

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_REFUSED: "the supervisor refused or failed the operation (message on stderr)",
    EXIT_USAGE: "usage error, or an input file that cannot be read",
    EXIT_NOT_RUNNING: "the supervisor is not running (no socket, or nobody accepting)",
    EXIT_NOT_PERMITTED: "permission denied: the socket is not open to this user, or read-only",
    EXIT_PROTOCOL: "the supervisor's answer could not be understood, or the stream broke",
}

Verb = Callable[[argparse.Namespace, Client], int]


def resolve_socket(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    """The socket path: ``--socket``, then ``$VSV_SOCKET``, then the default.

    ``--socket ''`` is a mistake to report (BadSocketPath), not a request for the default: a
    script whose variable came out empty must not reach another supervisor than it meant. An
    empty ``$VSV_SOCKET`` counts as unset, as empty environment variables usually do.
    """
    env = os.environ if environ is None else environ
    explicit = getattr(args, "socket", None)
    if explicit is not None:
        if not explicit:
            raise BadSocketPath("--socket: the socket path is empty")
        return str(explicit)
    return env.get("VSV_SOCKET") or DEFAULT_SOCKET


#: a domain's or network's name: validate.py's rule, repeated here so that a client verb can
#: refuse a name that cannot exist without importing the validator (a test keeps them equal)
NAME_MAX_BYTES = 64
_NAME_RULE = (
    f"a name is 1..{NAME_MAX_BYTES} bytes without '/', whitespace or control characters, "
    "not starting with '.' or '-'"
)


class BadName(ClientError, ValueError):
    """A domain or network name that no definition can have (``vsv undefine ../x``)."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a domain or network, or None (the validator's rule)."""
    if not name:
        return "is empty"
    if len(name.encode(errors="surrogateescape")) > NAME_MAX_BYTES:
        return f"is longer than {NAME_MAX_BYTES} bytes"
    if name[0] in ".-":
        return "starts with '.' or '-'"
    if any(c.isspace() or c == "/" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "contains '/', whitespace or control characters"
    return None


def _valid(kind: str, name: str) -> str:
    """``name`` when a domain or network can have it; BadName naming it otherwise."""
    problem = name_problem(name)
    if problem is not None:
        raise BadName(f"{name!r} is not a valid {kind} name: it {problem} ({_NAME_RULE})")
    return name


def _named(kind: str, name: str) -> str:
    """``/v1/{kind}s/NAME`` for a name that can exist; BadName naming it otherwise."""
    return f"/v1/{kind}s/{quote(_valid(kind, name))}"


def stdout_closed() -> int:
    """Whoever read our standard output is gone (``vsv list | head -1``): stop quietly.

    Nothing more we print can reach anyone, which is what the reader asked for, so this is no
    error (exit 0), and no message. Standard output is pointed at /dev/null so that the
    interpreter's own flush at exit does not fail on the closed pipe again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_OK


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """``--socket`` on the main parser (``vsv --socket PATH VERB``)."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=f"the supervisor's API socket (default: $VSV_SOCKET, else {DEFAULT_SOCKET})",
    )


# --- output helpers ------------------------------------------------------------------------


def _out() -> TextIO:
    return sys.stdout


def _print_json(value: Any) -> None:
    json.dump(value, _out(), indent=None, separators=(",", ":"))
    _out().write("\n")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = _out()
    out.write(
        " " + "   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n"
    )
    out.write("-" * (sum(widths) + 3 * len(widths)) + "\n")
    for row in cells:
        out.write(
            " " + "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _pairs(pairs: Iterable[tuple[str, object]]) -> None:
    items = [(k, "-" if v is None else v) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    for key, value in items:
        _out().write(f"{(key + ':').ljust(width)} {value}\n")


def _read_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


# --- domain verbs ----------------------------------------------------------------------------


def _list(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json("/v1/domains")
    rows = [
        d for d in reply["domains"] if args.all or d["state"] in ("RUNNING", "PAUSED", "SHUTDOWN")
    ]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _table(["Id", "Name", "State"], ([d["id"], d["name"], _state_word(d["state"])] for d in rows))
    return EXIT_OK


_STATE_WORDS = {
    "RUNNING": "running",
    "PAUSED": "paused",
    "SHUTDOWN": "in shutdown",
    "SHUTOFF": "shut off",
    "CRASHED": "crashed",
    "BLOCKED": "idle",
    "NOSTATE": "no state",
}


def _state_word(state: str) -> str:
    return _STATE_WORDS.get(state, state.lower())


def _send_document(c: Client, path: str, file: str) -> Any:
    """POST a document; its problems are printed as ``FILE:LINE: message`` (as ``vsv validate``
    prints them, so an editor can jump there) and raise :class:`_Reported`."""
    try:
        return c.send_xml(path, _read_file(file))
    except ApiError as exc:
        if exc.code != "invalid-document" or not exc.problems:
            raise
        where = "<stdin>" if file == "-" else file
        for problem in exc.problems:
            line, sep, rest = problem.partition(": ")
            sys.stderr.write(
                f"{where}:{line}: {rest}\n" if sep and line.isdigit() else f"{where}: {problem}\n"
            )
        raise _Reported(EXIT_REFUSED) from None


class _Reported(Exception):
    """The verb has said what went wrong on stderr; exit with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _define(args: argparse.Namespace, c: Client) -> int:
    reply = _send_document(c, "/v1/domains", args.file)
    if args.json:
        _print_json(reply)
    else:
        _out().write(f"Domain '{reply['domain']['name']}' defined from {args.file}\n")
    return EXIT_OK


def _undefine(args: argparse.Namespace, c: Client) -> int:
    reply = c.send_json("DELETE", f"{_named('domain', args.domain)}")
    _done(args, reply, f"Domain '{args.domain}' has been undefined")
    return EXIT_OK


_ACTION_WORDS = {
    "start": "started",
    "shutdown": "is being shutdown",
    "destroy": "destroyed",
    "reboot": "is being rebooted",
    "suspend": "suspended",
    "resume": "resumed",
}


def _action(action: str) -> Verb:
    def run(args: argparse.Namespace, c: Client) -> int:
        query = {"timeout": args.timeout} if action == "shutdown" else {}
        reply = c.send_json("POST", f"{_named('domain', args.domain)}/{action}", **query)
        _done(args, reply, f"Domain '{args.domain}' {_ACTION_WORDS[action]}")
        return EXIT_OK

    return run


def _done(args: argparse.Namespace, reply: Any, message: str) -> None:
    if args.json:
        _print_json(reply)
    else:
        _out().write(message + "\n")


def _print_xml(name: str, text: str, *, as_json: bool) -> int:
    """A document as virsh dumpxml prints it (ending in a newline), or in a JSON object."""
    if as_json:
        _print_json({"name": name, "xml": text})
    else:
        _out().write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _dumpxml(args: argparse.Namespace, c: Client) -> int:
    inactive = "?inactive=true" if args.inactive else ""
    text = c.get_text(f"{_named('domain', args.domain)}/xml{inactive}")
    return _print_xml(args.domain, text, as_json=args.json)


def _create(args: argparse.Namespace, c: Client) -> int:
    """virsh create: start a guest from FILE without storing its definition."""
    try:
        reply = c.send_xml("/v1/domains?transient=true", _read_file(args.file))
    except ApiError as exc:
        if exc.code != "invalid-document" or not exc.problems:
            raise
        _print_problems("<stdin>" if args.file == "-" else args.file, exc.problems)
        return EXIT_REFUSED
    _done(args, reply, f"Domain '{reply['domain']['name']}' created from {args.file}")
    return EXIT_OK


def _print_problems(where: str, problems: Iterable[str]) -> None:
    """Each ``LINE: message`` problem as ``WHERE:LINE: message`` on stderr."""
    for problem in problems:
        line, sep, rest = problem.partition(": ")
        sys.stderr.write(
            f"{where}:{line}: {rest}\n" if sep and line.isdigit() else f"{where}: {problem}\n"
        )


def _edit(kind: str) -> Verb:
    """virsh edit / net-edit: the stored definition in $VISUAL or $EDITOR (vi), then defined.

    A document the supervisor refuses is not stored: its problems are shown (FILE:LINE) and
    the question is virsh's, "Failed. Try again? [y,n,?]": y opens the editor again on what
    was written, anything else (or no answer) leaves the definition as it was (exit 1).
    """

    def run(args: argparse.Namespace, c: Client) -> int:
        import shlex
        import subprocess
        import tempfile

        name = getattr(args, kind)
        source = f"{_named(kind, name)}/xml" + ("?inactive=true" if kind == "domain" else "")
        original = c.get_text(source)
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        label = "Domain" if kind == "domain" else "Network"
        fd, path = tempfile.mkstemp(prefix=f"vsv-{name}-", suffix=".xml")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(original)
            while True:
                status = subprocess.call([*shlex.split(editor), path])
                if status != 0:
                    sys.stderr.write(f"vsv: error: {editor} exited {status}; nothing changed\n")
                    return EXIT_REFUSED
                with open(path, "rb") as f:
                    edited = f.read()
                if edited.decode(errors="replace") == original:
                    _out().write(f"{label} '{name}' XML configuration not changed.\n")
                    return EXIT_OK
                try:
                    reply = c.send_xml(f"/v1/{kind}s", edited)
                except ApiError as exc:
                    if exc.problems:
                        _print_problems(path, exc.problems)
                    else:
                        sys.stderr.write(f"vsv: error: {exc}\n")
                    if _ask_again():
                        continue
                    sys.stderr.write(f"{label} '{name}' XML configuration not changed.\n")
                    return EXIT_REFUSED
                if args.json:
                    _print_json(reply)
                else:
                    _out().write(f"{label} '{name}' XML configuration edited.\n")
                return EXIT_OK
        finally:
            os.unlink(path)

    return run


def _ask_again() -> bool:
    """virsh's question after a refused edit; True to open the editor again."""
    while True:
        sys.stderr.write("Failed. Try again? [y,n,?]: ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if not answer:
            sys.stderr.write("\n")
            return False  # no one to answer (stdin closed): keep what is stored
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        sys.stderr.write(
            "y - yes, start the editor again\nn - no, throw away my changes\n? - print this help\n"
        )


def _dominfo(args: argparse.Namespace, c: Client) -> int:
    info = c.get_json(f"{_named('domain', args.domain)}")
    if args.json:
        _print_json(info)
        return EXIT_OK
    _pairs(
        [
            ("Id", info["id"]),
            ("Name", info["name"]),
            ("UUID", info["uuid"]),
            ("OS Type", "exe"),
            ("Type", info["type"]),
            ("State", _state_word(info["state"])),
            ("Reason", info["reason"].lower()),
            ("Init PID", info.get("init_pid")),
            ("CPU(s)", info.get("vcpu")),
            ("CPU time", _cpu_time(info.get("cpu_time_ns"))),
            ("Max memory", f"{info['memory_kib']} KiB" if info.get("memory_kib") else "no limit"),
            (
                "Used memory",
                f"{info['memory_used_kib']} KiB"
                if info.get("memory_used_kib") is not None
                else None,
            ),
            ("Persistent", "yes" if info.get("persistent") else "no"),
            ("Autostart", "enable" if info["autostart"] else "disable"),
            ("Restarts", info.get("restarts", 0)),
            ("Log", info.get("log")),
        ]
    )
    return EXIT_OK


def _cpu_time(ns: object) -> str | None:
    """CPU time as virsh dominfo writes it (``12.3s``)."""
    return f"{ns / 1e9:.1f}s" if isinstance(ns, int) else None


def _domstats(args: argparse.Namespace, c: Client) -> int:
    """virsh domstats: ``Domain: 'NAME'`` then ``  key=value`` lines, or JSON."""
    names = [_valid("domain", n) for n in args.domains]
    reply = c.get_json("/v1/stats", domain=",".join(names) if names else None)
    if args.json:
        _print_json(reply["domains"])
        return EXIT_OK
    out = _out()
    for i, entry in enumerate(reply["domains"]):
        if i:
            out.write("\n")
        out.write(f"Domain: '{entry['name']}'\n")
        for key, value in entry["stats"].items():
            out.write(f"  {key}={value}\n")
    return EXIT_OK


def _domiflist(args: argparse.Namespace, c: Client) -> int:
    """virsh domiflist: each interface's host-side name, type, source, model and MAC."""
    reply = c.get_json(f"{_named('domain', args.domain)}/interfaces")
    rows = [
        {
            "interface": i.get("host_if"),
            "type": i.get("type"),
            "source": i.get("source"),
            "model": i.get("model"),
            "mac": i.get("mac"),
        }
        for i in reply["interfaces"]
    ]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _table(
        ["Interface", "Type", "Source", "Model", "MAC"],
        ([r["interface"], r["type"], r["source"], r["model"], r["mac"]] for r in rows),
    )
    return EXIT_OK


_SIZE_UNITS = {
    "": 1, "k": 1, "kib": 1, "kb": 1, "m": 1 << 10, "mib": 1 << 10, "mb": 1 << 10,
    "g": 1 << 20, "gib": 1 << 20, "gb": 1 << 20, "t": 1 << 30, "tib": 1 << 30, "tb": 1 << 30,
}  # fmt: skip


def size_kib(text: str) -> int:
    """argparse type: a size in KiB, as virsh takes it (``524288``, ``512M``, ``1GiB``)."""
    digits = text.strip().rstrip("BbIiKkMmGgTt")
    unit = text.strip()[len(digits) :].lower()
    if not digits.isascii() or not digits.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 524288 (KiB), 512M or 1G, not {text!r}"
        )
    value = int(digits) * _SIZE_UNITS[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of 1 KiB or more, not {text!r}")
    return value


def _show_memory(memory: dict[str, Any]) -> None:
    def kib(value: object) -> str:
        return "unlimited" if value is None else f"{value}"

    _pairs(
        [
            ("hard_limit", kib(memory.get("hard_limit_kib"))),
            ("soft_limit", kib(memory.get("soft_limit_kib"))),
            ("swap_hard_limit", kib(memory.get("swap_hard_limit_kib"))),
        ]
    )


def _memory_flags(args: argparse.Namespace) -> tuple[bool, bool]:
    """--live/--config, or --current (the default): neither flag, the supervisor decides."""
    if args.current and (args.live or args.config):
        raise ValueError("--current cannot go with --live or --config")
    return args.live, args.config


def _setmem(args: argparse.Namespace, c: Client) -> int:
    """virsh setmem: the memory the guest may use (its balloon, which for a container is its
    hard limit) in KiB or with a unit."""
    try:
        live, config = _memory_flags(args)
    except ValueError as exc:
        sys.stderr.write(f"vsv: error: {exc}\n")
        return EXIT_USAGE
    reply = c.send_json(
        "PUT",
        f"{_named('domain', args.domain)}/memory",
        {"current_kib": args.size, "live": live, "config": config},
    )
    _done(args, reply, f"Domain '{args.domain}' memory set to {args.size} KiB")
    return EXIT_OK


def _memtune(args: argparse.Namespace, c: Client) -> int:
    """virsh memtune: show the limits, or change them (KiB or with a unit)."""
    path = f"{_named('domain', args.domain)}/memory"
    tune = {
        key: value
        for key, value in (
            ("hard_limit_kib", args.hard_limit),
            ("soft_limit_kib", args.soft_limit),
            ("swap_hard_limit_kib", args.swap_hard_limit),
        )
        if value is not None
    }
    if tune:
        try:
            live, config = _memory_flags(args)
        except ValueError as exc:
            sys.stderr.write(f"vsv: error: {exc}\n")
            return EXIT_USAGE
        reply = c.send_json("PUT", path, {"memtune": tune, "live": live, "config": config})
    else:
        reply = c.get_json(path)
    if args.json:
        _print_json(reply)
    else:
        _show_memory(reply["memory"])
    return EXIT_OK


def _domstate(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json(f"{_named('domain', args.domain)}/state")
    if args.json:
        _print_json(reply)
    elif args.reason:
        _out().write(f"{_state_word(reply['state'])} ({reply['reason'].lower()})\n")
    else:
        _out().write(_state_word(reply["state"]) + "\n")
    return EXIT_OK


def _autostart(args: argparse.Namespace, c: Client) -> int:
    value = not args.disable
    reply = c.send_json("PUT", f"{_named('domain', args.domain)}/autostart", {"autostart": value})
    _done(
        args,
        reply,
        f"Domain '{args.domain}' {'marked as autostarted' if value else 'unmarked as autostarted'}",
    )
    return EXIT_OK


def _schedinfo(args: argparse.Namespace, c: Client) -> int:
    path = f"{_named('domain', args.domain)}/schedinfo"
    if args.set:
        params: dict[str, str] = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                sys.stderr.write(f"vsv: --set expects NAME=VALUE, got {item!r}\n")
                return EXIT_USAGE
            params[key] = value
        reply = c.send_json(
            "PUT", path, {"params": params, "live": args.live, "config": args.config}
        )
    else:
        reply = c.get_json(path)
    if args.json:
        _print_json(reply)
    else:
        info = reply["params"]
        scalars = [(k, v) for k, v in info.items() if not isinstance(v, (dict, list))]
        _pairs([("Scheduler", "posix"), *sorted(scalars)])
        for key in ("applied", "accounting", "tuner"):
            if isinstance(info.get(key), dict):
                _pairs(sorted((f"{key}.{k}", v) for k, v in info[key].items()))
        for loss in info.get("losses") or []:
            sys.stdout.write(f"lossy: {_loss_text(loss)}\n")
    return EXIT_OK


def _loss_text(loss: object) -> str:
    """One lossy mapping as text: what was asked, what is applied, why."""
    if isinstance(loss, dict):
        return (
            f"{loss.get('parameter')}: requested {loss.get('requested')}, "
            f"applied {loss.get('applied')} ({loss.get('reason')})"
        )
    return str(loss)


def _domifaddr(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json(f"{_named('domain', args.domain)}/interfaces")
    if args.json:
        _print_json(reply["interfaces"])
        return EXIT_OK
    rows = []
    for iface in reply["interfaces"]:
        addrs = iface["addresses"] or [None]
        for i, addr in enumerate(addrs):
            rows.append(
                [
                    iface["name"] if i == 0 else "-",
                    iface["mac"] if i == 0 else "-",
                    addr["family"] if addr else None,
                    f"{addr['address']}/{addr['prefix']}" if addr else None,
                ]
            )
    _table(["Name", "MAC address", "Protocol", "Address"], rows)
    return EXIT_OK


# --- networks ------------------------------------------------------------------------------


def _net_list(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json("/v1/networks")
    rows = [n for n in reply["networks"] if args.all or n["active"]]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _table(
        ["Name", "State", "Autostart", "Bridge"],
        (
            [
                n["name"],
                "active" if n["active"] else "inactive",
                "yes" if n["autostart"] else "no",
                n["bridge"],
            ]
            for n in rows
        ),
    )
    return EXIT_OK


def _net_define(args: argparse.Namespace, c: Client) -> int:
    reply = _send_document(c, "/v1/networks", args.file)
    _done(args, reply, f"Network {reply['network']['name']} defined from {args.file}")
    return EXIT_OK


def _net_undefine(args: argparse.Namespace, c: Client) -> int:
    reply = c.send_json("DELETE", f"{_named('network', args.network)}")
    _done(args, reply, f"Network {args.network} has been undefined")
    return EXIT_OK


def _net_action(action: str) -> Verb:
    def run(args: argparse.Namespace, c: Client) -> int:
        reply = c.send_json("POST", f"{_named('network', args.network)}/{action}")
        _done(
            args, reply, f"Network {args.network} {'started' if action == 'start' else 'destroyed'}"
        )
        return EXIT_OK

    return run


def _net_info(args: argparse.Namespace, c: Client) -> int:
    """virsh net-info: name, UUID, active, persistent, autostart, bridge."""
    info = c.get_json(_named("network", args.network))
    if args.json:
        _print_json(info)
        return EXIT_OK
    _pairs(
        [
            ("Name", info["name"]),
            ("UUID", info.get("uuid")),
            ("Active", "yes" if info.get("active") else "no"),
            ("Persistent", "yes"),
            ("Autostart", "yes" if info.get("autostart") else "no"),
            ("Bridge", info.get("bridge")),
        ]
    )
    return EXIT_OK


def _net_autostart(args: argparse.Namespace, c: Client) -> int:
    value = not args.disable
    reply = c.send_json("PUT", f"{_named('network', args.network)}/autostart", {"autostart": value})
    _done(
        args,
        reply,
        f"Network {args.network} {'marked as autostarted' if value else 'unmarked as autostarted'}",
    )
    return EXIT_OK


def _names(args: argparse.Namespace, c: Client) -> int:
    """``vsv _names domain|network``: one name a line, for the shell completion scripts.

    Asked on the read-only socket beside the resolved one when there is one: completing a
    name must work for anyone who may look, and never needs the read-write socket."""
    ro = os.path.join(os.path.dirname(c.socket_path), os.path.basename(DEFAULT_RO_SOCKET))
    with Client(ro if os.path.exists(ro) else c.socket_path, timeout=5) as look:
        if args.kind == "domain":
            names = [d["name"] for d in look.get_json("/v1/domains")["domains"]]
        else:
            names = [n["name"] for n in look.get_json("/v1/networks")["networks"]]
    _out().write("".join(f"{n}\n" for n in names))
    return EXIT_OK


def _net_dumpxml(args: argparse.Namespace, c: Client) -> int:
    text = c.get_text(f"{_named('network', args.network)}/xml")
    return _print_xml(args.network, text, as_json=args.json)


def _net_leases(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json(f"{_named('network', args.network)}/leases")
    if args.json:
        _print_json(reply["leases"])
        return EXIT_OK

    def expiry(value: float | None) -> str | None:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else None

    _table(
        ["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Domain"],
        (
            [
                expiry(lease["expiry"]),
                lease["mac"],
                "ipv6" if ":" in lease["ip"] else "ipv4",
                f"{lease['ip']}/{lease['prefix']}",
                lease["hostname"],
                lease.get("domain"),
            ]
            for lease in reply["leases"]
        ),
    )
    return EXIT_OK


# --- supervisor and events --------------------------------------------------------------------


def _info(args: argparse.Namespace, c: Client) -> int:
    reply = c.get_json("/v1/supervisor")
    if args.json:
        _print_json(reply)
        return EXIT_OK
    journal = reply.get("journal", {})
    _pairs(
        [
            ("Version", reply["version"]),
            ("PID", reply["pid"]),
            ("Uptime", f"{reply['uptime']:.0f} s"),
            ("Socket", f"{c.socket_path}{' (read-only)' if reply['read_only'] else ''}"),
            ("Last event", reply["seq"]),
            ("Journal kept", f"{journal.get('first_seq')}..{journal.get('last_seq')}"),
            *_flat_stats(reply.get("statistics", {})),
        ]
    )
    return EXIT_OK


def _flat_stats(stats: dict[str, Any], prefix: str = "stat ") -> list[tuple[str, object]]:
    """Statistics as readable pairs: nested objects dotted, lists counted."""
    out: list[tuple[str, object]] = []
    for key, value in sorted(stats.items()):
        if isinstance(value, dict):
            out += _flat_stats(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            out.append((f"{prefix}{key}", f"{len(value)} entries"))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def format_event(record: dict[str, Any]) -> str:
    """One event as a line of text (virsh event style), gap records included."""
    if record.get("kind") == "gap":
        data = record.get("data") or {}
        return (
            f"#{record['seq']} gap: events {data.get('first_missing')}..{data.get('last_missing')} "
            "were removed by the journal's retention"
        )
    when = record.get("time")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-"
    data = record.get("data") or {}
    subject = record.get("domain") or record.get("network") or data.get("network") or "-"
    what = str(record.get("type"))
    if record.get("detail") is not None:
        what += f" {record['detail']}"
    if record.get("type") in ("TUNABLE", "STOPPED", "CRASHED") and data:
        # what changed, or why it stopped: the part a person reading the stream wants
        what += " (" + ", ".join(f"{k}={_data_text(v)}" for k, v in sorted(data.items())) + ")"
    return f"#{record['seq']} {stamp} {record.get('kind')} '{subject}': {what}"


def _data_text(value: object) -> str:
    """An event data value as the text line shows it: booleans as JSON writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _event(args: argparse.Namespace, c: Client) -> int:
    follow = args.loop or args.since is None
    limit = None if args.loop else (1 if args.since is None else None)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    since = args.since
    waiting = False  # told the user we wait for the supervisor (once per outage)
    while True:
        try:
            for record in c.events(
                since=since,
                follow=follow,
                limit=limit,
                domain=args.domain,
                type=args.type,
                heartbeat=min(5.0, args.timeout) if args.timeout else 5.0,
            ):
                waiting = False
                if record.get("kind") == "heartbeat":
                    since = record["seq"]
                    if deadline is not None and time.monotonic() >= deadline:
                        return EXIT_OK
                    continue
                since = record["seq"]
                if args.json:
                    _print_json(record)
                else:
                    _out().write(format_event(record) + "\n")
                _out().flush()
                if deadline is not None and time.monotonic() >= deadline:
                    return EXIT_OK
            return EXIT_OK
        except (ProtocolError, DaemonNotRunning) as exc:
            # the supervisor restarted (or is not up yet) or the connection died: with --loop,
            # resume where we were, but never past --timeout, whose end with no supervisor is
            # the not-running exit (3) with the last failure as its message
            remaining = None if deadline is None else deadline - time.monotonic()
            if not args.loop or (remaining is not None and remaining <= 0):
                raise
            if not waiting:
                where = f"reconnecting from #{since}" if since is not None else "waiting for it"
                sys.stderr.write(f"vsv: {exc}; {where}\n")
                waiting = True
            time.sleep(0.5 if remaining is None else min(0.5, remaining))
            follow = True


# --- registration ----------------------------------------------------------------------------

_READ_VERBS = frozenset(
    {
        "list",
        "log",
        "dumpxml",
        "dominfo",
        "domstate",
        "domifaddr",
        "domstats",
        "domiflist",
        "net-info",
        "_names",
        "net-list",
        "net-dumpxml",
        "net-dhcp-leases",
        "event",
        "info",
    }
)


def _log(args: argparse.Namespace, c: Client) -> int:
    """Print a guest's log (its stdout and stderr), the last ``--lines``; ``--follow`` waits
    for more, also across a restart of the guest and the daemon's cutting back of the log."""
    info = c.get_json(f"{_named('domain', args.domain)}")
    path = info.get("log")
    if not isinstance(path, str):
        sys.stderr.write(f"vsv: error: domain {args.domain!r} has no log\n")
        return EXIT_REFUSED
    out = getattr(_out(), "buffer", None) or sys.stdout.buffer
    try:
        # what the daemon's cut-back moved to .log.1 comes first: right after a cut-back the
        # log itself is (nearly) empty, and the last lines are there
        current = _read_log(path)
        data = _read_log(path + ".1") + current
    except PermissionError as exc:
        sys.stderr.write(f"vsv: {path}: {exc.strerror} (the log is the daemon's, root's)\n")
        return EXIT_NOT_PERMITTED
    position = len(current)
    if args.lines is None and args.follow:
        args.lines = 10  # as tail -f and journalctl -f: some context, then what comes
    if args.lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-args.lines :]) if args.lines else b""
    out.write(data)
    out.flush()
    if not args.follow:
        return EXIT_OK
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        if size < position:
            position = 0  # cut back (or made anew): everything in it is new
        if size == position:
            continue
        with open(path, "rb") as f:
            f.seek(position)
            chunk = f.read(size - position)
        position += len(chunk)
        out.write(chunk)
        out.flush()
    return EXIT_OK


def whole_number(text: str) -> int:
    """argparse type: a whole number of 0 or more, in ASCII digits."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return int(text)


def _read_log(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""  # nothing written yet


_EXEC_OPTIONS = ("--user", "--group", "--cwd", "--env")


def _exec_options(args: argparse.Namespace) -> list[str]:
    """Take exec's options given after DOMAIN off the front of the command; the command's argv.

    argparse hands everything after DOMAIN to the command, so ``vsv exec web1 --user www -- id``
    would run ``--user``; the options are read here up to ``--`` or the first other word.
    """
    rest = list(args.command)
    while rest and rest[0] != "--" and rest[0].startswith("-"):
        name, eq, value = rest.pop(0).partition("=")
        if name == "--no-tty" and not eq:
            args.no_tty = True
            continue
        if name not in _EXEC_OPTIONS:
            raise ValueError(f"exec: unknown option {name!r} (put the command after '--')")
        if not eq:
            if not rest:
                raise ValueError(f"exec: {name} needs a value")
            value = rest.pop(0)
        if name == "--env":
            args.env = [*(args.env or ()), value]
        else:
            setattr(args, name[2:], value)
    return rest[1:] if rest[:1] == ["--"] else rest


def _exec(args: argparse.Namespace, c: Client) -> int:
    """Run a command in a running guest (see :mod:`supervisor.guest.attach`): its status."""
    from supervisor.guest import attach  # only this verb needs ctypes and forks

    def refuse(text: str) -> int:
        sys.stderr.write(f"vsv: error: {text}\n")
        return attach.EXIT_CANNOT_ENTER

    try:
        argv = _exec_options(args)
    except ValueError as exc:
        sys.stderr.write(f"vsv: error: {exc}\n")
        return EXIT_USAGE
    overrides: dict[str, str] = {}
    for item in args.env or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.stderr.write(f"vsv: error: --env {item!r}: expected NAME=VALUE\n")
            return EXIT_USAGE
        overrides[key] = value
    try:
        info = c.get_json(f"{_named('domain', args.domain)}")
    except ApiError as exc:
        return refuse(str(exc))
    pid = info.get("init_pid")
    if info.get("state") == "PAUSED":
        return refuse(f"domain {args.domain!r} is paused; resume it first")
    if info.get("state") != "RUNNING" or not isinstance(pid, int):
        return refuse(f"domain {args.domain!r} is not running")
    try:
        target = attach.open_target(pid)
        env = attach.guest_environ(pid)
    except attach.CannotEnter as exc:
        return refuse(f"domain {args.domain!r}: {exc}")
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    command = attach.Command(
        argv=tuple(argv or ["/bin/sh"]),
        env=env,
        overrides=overrides,
        cwd=args.cwd,
        user=args.user,
        group=args.group,
    )
    tty = not args.no_tty and os.isatty(0) and os.isatty(1)
    try:
        return attach.run_in_guest(target, command, tty=tty)
    finally:
        target.close()


def _console(args: argparse.Namespace, c: Client) -> int:
    """Attach the terminal to a guest's console (:mod:`supervisor.api.console_client`)."""
    from supervisor.api import console_client  # only this verb needs termios and select

    return console_client.run_console(c.socket_path, args.domain, force=args.force)


def _looks_like_uuid(ref: str) -> bool:
    """32 hex digits, with or without libvirt's dashes (as ``virsh`` accepts a UUID)."""
    digits = ref.replace("-", "")
    return len(digits) == 32 and all(ch in "0123456789abcdefABCDEF" for ch in digits)


def resolve_domain(args: argparse.Namespace, c: Client) -> None:
    """Let ``DOMAIN`` be an id or a UUID, as ``virsh`` does: a name first (a domain may be
    named "101"), then the domain with that id (a VServer context id, or the id an lxc domain
    was given), then the one with that UUID. Only a reference shaped like an id or a UUID costs
    the extra listing; anything else, and a reference nothing matches, is left as it is (the
    verb then says the domain is not defined)."""
    ref = getattr(args, "domain", None)
    if not isinstance(ref, str):
        return
    number = int(ref) if ref.isascii() and ref.isdigit() else None
    uuid = ref.replace("-", "").lower() if _looks_like_uuid(ref) else None
    if number is None and uuid is None:
        return
    rows = c.get_json("/v1/domains")["domains"]
    by_name = [row["name"] for row in rows if row["name"] == ref]
    by_id = [row["name"] for row in rows if number is not None and row.get("id") == number]
    by_uuid = [
        row["name"]
        for row in rows
        if uuid is not None and str(row.get("uuid", "")).replace("-", "").lower() == uuid
    ]
    for found in (by_name, by_id, by_uuid):
        if found:
            args.domain = found[0]
            return


def _runner(verb: str, fn: Verb) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_verb(verb, fn, args)

    return run


def run_verb(
    verb: str, fn: Verb, args: argparse.Namespace, environ: dict[str, str] | None = None
) -> int:
    """Run one verb against the resolved socket, turning every failure into a message and a code."""
    try:
        path = resolve_socket(args, environ)
    except BadSocketPath as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_USAGE
    explicit = bool(getattr(args, "socket", None)) or bool(
        (os.environ if environ is None else environ).get("VSV_SOCKET")
    )
    try:
        try:
            with Client(path) as client:
                resolve_domain(args, client)
                return fn(args, client)
        except SocketNotPermitted:
            if explicit or verb not in _READ_VERBS:
                raise
            with Client(DEFAULT_RO_SOCKET) as client:
                resolve_domain(args, client)
                return fn(args, client)
    except _Reported as reported:
        return reported.status
    except BadName as exc:
        sys.stderr.write(f"vsv: error: {exc}\n")
        return EXIT_REFUSED
    except BadSocketPath as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_USAGE
    except ApiError as exc:
        sys.stderr.write(f"vsv: error: {exc}\n")
        for problem in exc.problems:
            if problem != str(exc):
                sys.stderr.write(f"  {problem}\n")
        if exc.code == "read-only":
            return EXIT_NOT_PERMITTED
        return EXIT_REFUSED
    except SocketNotPermitted as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_NOT_PERMITTED
    except DaemonNotRunning as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_NOT_RUNNING
    except ProtocolError as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_PROTOCOL
    except ClientError as exc:
        sys.stderr.write(f"vsv: {exc}\n")
        return EXIT_PROTOCOL
    except BrokenPipeError:
        return stdout_closed()
    except OSError as exc:
        name = getattr(exc, "filename", None)
        sys.stderr.write(f"vsv: {name + ': ' if name else ''}{exc.strerror or exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


class _NameRecorder:
    """Sub-parsers that only note each verb's name (see :func:`client_verb_names`)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.names.append(name)
        return argparse.ArgumentParser(add_help=False)


def client_verb_names() -> list[str]:
    """Every client verb's name, in registration order (benchmarks and completion use it)."""
    recorder = _NameRecorder()
    register_client_verbs(recorder)
    return recorder.names


def register_client_verbs(subparsers: Any) -> None:
    """Add every client verb (with its options) to ``subparsers`` (from ``add_subparsers``).

    Each verb also accepts ``--socket`` after the verb name; ``set_defaults(func=...)`` holds a
    callable taking the Namespace and returning the exit status.
    """

    def verb(
        name: str, fn: Verb, help_text: str, *, json_flag: bool = True
    ) -> argparse.ArgumentParser:
        # a verb for scripts (_names, for completion) is given no help: argparse then leaves
        # it out of the list in --help
        listed = {} if name.startswith("_") else {"help": help_text}
        p: argparse.ArgumentParser = subparsers.add_parser(name, description=help_text, **listed)
        p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="the API socket")
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_runner(name, fn))
        return p

    p = verb("list", _list, "list running domains (all with --all)")
    p.add_argument("--all", action="store_true", help="also inactive domains")
    p = verb("define", _define, "define a domain from an XML file ('-' for stdin)")
    p.add_argument("file", metavar="FILE")
    p = verb("create", _create, "start a transient domain from an XML file (gone when it stops)")
    p.add_argument("file", metavar="FILE")
    domain_verbs: tuple[tuple[str, Verb, str], ...] = (
        ("undefine", _undefine, "remove a domain's definition (a running one turns transient)"),
        ("dominfo", _dominfo, "show a domain's information"),
        ("domifaddr", _domifaddr, "show a domain's interfaces and addresses"),
        ("domiflist", _domiflist, "list a domain's interfaces (host side, type, source, MAC)"),
        ("edit", _edit("domain"), "edit a domain's stored XML in $VISUAL or $EDITOR"),
    )
    for name, fn, text in domain_verbs:
        verb(name, fn, text).add_argument("domain", metavar="DOMAIN")
    p = verb("dumpxml", _dumpxml, "print a domain's XML (the running definition)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--inactive", action="store_true", help="the stored (next boot's) definition")
    for name, fn, text in (
        ("setmem", _setmem, "set the memory a domain may use (KiB, or 512M, 1G...)"),
        ("memtune", _memtune, "show or set a domain's memory limits"),
    ):
        p = verb(name, fn, text)
        p.add_argument("domain", metavar="DOMAIN")
        if name == "setmem":
            p.add_argument("size", type=size_kib, metavar="SIZE")
        else:
            for option in ("--hard-limit", "--soft-limit", "--swap-hard-limit"):
                p.add_argument(option, type=size_kib, metavar="SIZE", default=None)
        p.add_argument("--live", action="store_true", help="change the running domain")
        p.add_argument("--config", action="store_true", help="change the stored definition")
        p.add_argument(
            "--current", action="store_true", help="live if it runs, else config (default)"
        )
    for action, text in (
        ("start", "start a defined domain"),
        ("shutdown", "ask a domain to shut down"),
        ("destroy", "stop a domain now"),
        ("reboot", "reboot a domain"),
        ("suspend", "freeze a domain's processes"),
        ("resume", "thaw a suspended domain"),
    ):
        p = verb(action, _action(action), text)
        p.add_argument("domain", metavar="DOMAIN")
        if action == "shutdown":
            p.add_argument("--timeout", type=float, default=None, help="seconds before escalating")
    p = verb(
        "domstats",
        _domstats,
        "show domains' statistics (CPU, memory, pids, block I/O, interfaces): all or DOMAIN...",
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN")
    p = verb("domstate", _domstate, "show a domain's state")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--reason", action="store_true", help="also the reason")
    p = verb("autostart", _autostart, "start a domain when the supervisor starts")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--disable", action="store_true", help="do not autostart")
    p = verb("schedinfo", _schedinfo, "show or set a domain's scheduler parameters")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="change a parameter")
    p.add_argument("--live", action="store_true", help="change the running domain (default)")
    p.add_argument("--config", action="store_true", help="change the stored definition")

    p = verb("net-list", _net_list, "list active networks (all with --all)")
    p.add_argument("--all", action="store_true", help="also inactive networks")
    p = verb("net-define", _net_define, "define a network from an XML file ('-' for stdin)")
    p.add_argument("file", metavar="FILE")
    net_verbs: tuple[tuple[str, Verb, str], ...] = (
        ("net-undefine", _net_undefine, "remove an inactive network's definition"),
        ("net-start", _net_action("start"), "start a network"),
        ("net-destroy", _net_action("destroy"), "stop a network"),
        ("net-dumpxml", _net_dumpxml, "print a network's XML"),
        ("net-dhcp-leases", _net_leases, "show a network's DHCP leases"),
        ("net-info", _net_info, "show a network's name, UUID, state, autostart and bridge"),
        ("net-edit", _edit("network"), "edit a network's XML in $VISUAL or $EDITOR"),
    )
    for name, fn, text in net_verbs:
        verb(name, fn, text).add_argument("network", metavar="NETWORK")

    p = verb("net-autostart", _net_autostart, "start a network when the supervisor starts")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("--disable", action="store_true", help="do not autostart")
    p = verb("_names", _names, "names for shell completion", json_flag=False)
    p.add_argument("kind", choices=("domain", "network"))
    p = verb("log", _log, "print a domain's log (its stdout and stderr)", json_flag=False)
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument(
        "-n", "--lines", type=whole_number, default=None, metavar="N", help="only the last N"
    )
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what is added (from the last 10)"
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="follow for S seconds")
    p = verb(
        "exec",
        _exec,
        "run a command in a running domain (default: a shell); exits with its status",
        json_flag=False,
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--user", default=None, help="user name or uid in the guest (default: root)")
    p.add_argument("--group", default=None, help="group name or gid (default: the user's)")
    p.add_argument("--cwd", default="/", metavar="DIR", help="working directory (default: /)")
    p.add_argument(
        "--no-tty",
        action="store_true",
        help="no pseudo-terminal even when stdin and stdout are one (default: one then)",
    )
    p.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="set a variable (init's env is kept)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    p = verb(
        "console",
        _console,
        "attach the terminal to a running domain's console (detach with Ctrl-])",
        json_flag=False,
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument(
        "--force", action="store_true", help="take the console over from a client attached to it"
    )
    verb("info", _info, "show the supervisor's version, uptime and statistics")
    p = verb(
        "event", _event, "print events: the next one; the journal from --since N; all with --loop"
    )
    p.add_argument("--loop", action="store_true", help="keep printing new events")
    p.add_argument(
        "--since", type=int, default=None, metavar="N", help="start after sequence N (0: all)"
    )
    p.add_argument("--domain", default=None, metavar="D", help="only events of this domain")
    p.add_argument(
        "--type", default=None, metavar="T", help="only events of this type (STARTED...)"
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")


def main(argv: Sequence[str] | None = None) -> int:
    """A standalone entry with only the client verbs (tests, and until cli.py wires them in)."""
    parser = argparse.ArgumentParser(prog="vsv")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    register_client_verbs(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
