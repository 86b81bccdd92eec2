"""The console keeper: holds the guests' console ptys while no supervisor does.

Why
---
A guest's console is a pty whose master the supervisor holds (:mod:`supervisor.console`).
When the last descriptor of a master closes, the kernel hangs the pty up: whatever reads the
console then reads end-of-file, so a shell that is the guest's init exits, and the guest with
it. Guests are meant to outlive their supervisor (a crash, an upgrade with ``--keep-guests``),
so a copy of each console's master and slave end is kept here, in one small process per run
dir that no supervisor's death takes along, and a successor takes them back when it adopts the
guests. It is the file descriptor store systemd offers its services (FDSTORE), made our own
because systemd empties that store on ``systemctl restart`` before Debian 12's version 254
and a supervisor need not run under systemd at all.

The keeper only holds descriptors: it never reads or writes them (while no supervisor relays,
a guest that fills its console's buffer waits, and the successor reads what was left). It is a
``python -I -S`` script on the standard library, as the fork server is. It binds its socket
(``RUN/console-keeper.sock``, mode 0600, in the run dir no guest can see), forks, and the
child serves while the parent exits, so it is nobody's child and in a session of its own. It
exits when it holds nothing and no supervisor is connected.

It moves into a cgroup of its own (``PREFIX.console-keeper`` in each hierarchy, a name no
guest's ``PREFIX-NAME`` can take), so that a service manager that stops the supervisor and
kills what is left in its cgroup (systemd's ``KillMode=mixed``) leaves the keeper, as it leaves
the guests; ``vsv gc`` finds it there like any prefixed cgroup.

Protocol (SOCK_SEQPACKET, a JSON object each way, descriptors by SCM_RIGHTS): ``keep`` (name,
key, with the descriptors: replaces what is kept under the name), ``take`` (name, key: copies
of the descriptors if the key matches, the keeper keeps its own), ``drop`` (name), ``list``
(``{name: key}``). The key says which boot of the guest the descriptors belong to (init's pid
and pid namespace), so that a successor never takes another boot's pty.

:class:`ConsoleKeeper` is the supervisor's side: blocking calls on a local socket, each one
message and its answer, so quick that the supervisor makes them from its trio thread; only
starting the keeper, which waits for an interpreter, is run in a worker thread.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

#: the socket's name in the run dir
SOCKET_NAME = "console-keeper.sock"
#: how long the supervisor waits for any answer of the keeper
TIMEOUT = 2.0
#: how long a new keeper waits for its starter's first connection before it exits
FIRST_WAIT = 10.0
_MAX_FDS = 4
_FD_SIZE = array.array("i").itemsize


class KeeperError(OSError):
    """The keeper did not answer as it should (the console still works, without a copy)."""


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([json.dumps(message).encode()], ancillary)


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its descriptors (close-on-exec); (None, []) at the end of the stream."""
    data, ancdata, _flags, _addr = sock.recvmsg(
        65536, socket.CMSG_SPACE(_MAX_FDS * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    if not data:
        _close(list(fds))
        return None, []
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        _close(list(fds))
        return {}, []
    return message, list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the keeper ---------------------------------------------------------------------------------


def serve(listener: socket.socket) -> None:
    """Answer supervisors until nothing is kept and nobody is connected (see the module
    docstring). The first connection is waited for: the one that started the keeper."""
    kept: dict[str, tuple[str, list[int]]] = {}
    connections: list[socket.socket] = []
    served = False
    first_by = time.monotonic() + FIRST_WAIT
    while connections or kept or not served:
        wait = None if served else max(0.0, first_by - time.monotonic())
        ready, _, _ = select.select([listener, *connections], [], [], wait)
        if not ready and not served:
            return  # nobody came: the starter gave up on us (see ConsoleKeeper.start)
        if listener in ready:
            conn, _addr = listener.accept()
            conn.setblocking(True)
            connections.append(conn)
            served = True
        for conn in [c for c in connections if c in ready]:
            try:
                message, fds = _receive(conn)
            except OSError:
                message, fds = None, []
            if message is None:
                connections.remove(conn)
                conn.close()
                continue
            with contextlib.suppress(OSError):
                _answer(conn, message, fds, kept)


def _answer(
    conn: socket.socket,
    message: dict[str, Any],
    fds: list[int],
    kept: dict[str, tuple[str, list[int]]],
) -> None:
    op, name, key = message.get("op"), str(message.get("name")), str(message.get("key"))
    if op == "keep" and fds:
        old = kept.pop(name, None)
        if old is not None:
            _close(old[1])
        kept[name] = (key, fds)
        _send(conn, {"ok": True})
        return
    _close(fds)
    entry = kept.get(name)
    if op == "take":
        if entry is not None and entry[0] == key:
            _send(conn, {"ok": True}, entry[1])
        else:
            _send(conn, {"ok": False})
    elif op == "drop":
        if entry is not None and message.get("key") in (None, entry[0]):
            _close(kept.pop(name)[1])
        _send(conn, {"ok": True})
    elif op == "list":
        _send(conn, {"ok": True, "kept": {n: k for n, (k, _f) in kept.items()}})
    else:
        _send(conn, {"ok": False, "error": f"unknown request {op!r}"})


def main(path: str, cgroups: list[str]) -> None:
    """Bind ``path``, then fork: the parent's exit tells the starter that the socket listens.
    The child moves into ``cgroups`` (directories the starter made) first, out of its
    supervisor's: a service manager stopping the supervisor kills what is left in the
    supervisor's cgroup, and the keeper is what must be left."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead keeper's (the starter found nobody listening there)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(16)
    if os.fork():
        os._exit(0)
    os.setsid()
    for directory in cgroups:
        with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
            procs.write("0")
    ino = os.stat(path).st_ino
    try:
        serve(listener)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ino:
                os.unlink(path)


# -- the supervisor's side ----------------------------------------------------------------------


class ConsoleKeeper:
    """A connection to the keeper of one run dir (made, and the keeper started, on demand).

    ``cgroups``: the keeper's own cgroup directories (one per hierarchy; made by :meth:`start`,
    removed by the supervisor once the keeper is gone)."""

    def __init__(self, path: str, cgroups: tuple[str, ...] = ()) -> None:
        self.path = path
        self.cgroups = cgroups
        self._sock: socket.socket | None = None
        # the supervisor asks from its trio thread and starts the keeper from a worker thread:
        # two connections made at once would leave one open for ever, and a keeper with an
        # open connection never exits (a leftover process and cgroup)
        self._mutex = threading.RLock()

    def _connect(self) -> socket.socket | None:
        """The connection, or None when no keeper listens."""
        with self._mutex:
            if self._sock is not None:
                return self._sock
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.settimeout(TIMEOUT)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                return None
            self._sock = sock
            return sock

    def start(self) -> None:
        """Start a keeper unless one listens already (blocking: an interpreter starts)."""
        if self._connect() is not None:
            return
        try:
            for directory in self.cgroups:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            subprocess.run(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), self.path, *self.cgroups],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                check=True,
                timeout=30,
            )
        except subprocess.SubprocessError as exc:
            raise KeeperError(f"{self.path}: the console keeper did not start: {exc}") from exc
        if self._connect() is None:
            raise KeeperError(f"{self.path}: the console keeper does not listen")
        self.kept()  # it answers: serving, in its own cgroups (KeeperError otherwise)

    def _ask(
        self, message: dict[str, Any], fds: list[int] | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        with self._mutex:  # one question and its answer at a time on the connection
            sock = self._connect()
            if sock is None:
                raise KeeperError(f"{self.path}: no console keeper")
            try:
                _send(sock, message, fds)
                answer, got = _receive(sock)
            except OSError as exc:
                self.close()
                raise KeeperError(f"{self.path}: {exc}") from exc
            if answer is None:
                self.close()
                raise KeeperError(f"{self.path}: the console keeper went away")
            return answer, got

    def keep(self, name: str, key: str, fds: list[int]) -> None:
        """Keep copies of ``fds`` (the console's master and slave) for ``name``'s boot ``key``."""
        answer, _ = self._ask({"op": "keep", "name": name, "key": key}, fds)
        if not answer.get("ok"):
            raise KeeperError(f"{self.path}: keep {name}: {answer}")

    def take(self, name: str, key: str) -> list[int] | None:
        """Copies of what is kept for ``name``'s boot ``key`` (None: nothing, or no keeper)."""
        if self._connect() is None:
            return None
        answer, fds = self._ask({"op": "take", "name": name, "key": key})
        if answer.get("ok") and fds:
            return fds
        _close(fds)
        return None

    def drop(self, name: str) -> None:
        """Forget ``name``'s console (its guest stopped); nothing without a keeper."""
        if self._connect() is not None:
            self._ask({"op": "drop", "name": name})

    def kept(self) -> dict[str, str]:
        """What is kept, by name: the boot's key."""
        if self._connect() is None:
            return {}
        answer, _ = self._ask({"op": "list"})
        kept = answer.get("kept")
        return {str(k): str(v) for k, v in kept.items()} if isinstance(kept, dict) else {}

    def close(self) -> None:
        """Disconnect; a keeper that holds nothing then exits."""
        with self._mutex:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
