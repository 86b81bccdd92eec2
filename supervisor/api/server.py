"""Serving the API on two Unix sockets inside the supervisor's nursery.

The read-write socket is for administrators (root only by default, ``0600``; ``0660`` with a
group when one is configured); the read-only socket is world-connectable (``0666``) and its app
answers every mutation with 403. The sockets are created here, not by hypercorn, so their mode
and group are set between ``bind`` and ``listen``: there is no moment in which a listening socket
has looser permissions than configured.

HTTP is hypercorn's: each accepted connection is handed to hypercorn's trio ``TCPServer`` (the
per-connection half of ``hypercorn.trio.serve``). The accept loop is ours for one reason:
hypercorn reports no peer address for Unix sockets, and the issue asks for the peer's uid/pid
(SO_PEERCRED) on every mutation, which can only be read from the accepted socket. The accept loop
reads it and hands it to the app with the connection.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import logging
import os
import socket
import stat
import struct
from pathlib import Path

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from supervisor.api.app import ApiApp, Codec, PeerCred, XmlCodec
from supervisor.errors import RuntimeFailure
from supervisor.facade import SupervisorFacade
from supervisor.journal import Journal

log = logging.getLogger("supervisor.api")

DEFAULT_SOCKET = "/run/vsv/vsv.sock"
DEFAULT_RO_SOCKET = "/run/vsv/vsv-ro.sock"


@attrs.frozen
class ApiEndpoints:
    """What :func:`serve_api` reports through ``task_status.started``."""

    socket_path: str
    ro_socket_path: str | None


def resolve_gid(group: str | int | None) -> int | None:
    """A group name or number as a gid; RuntimeFailure naming the group when it does not exist."""
    if group is None or isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise RuntimeFailure(f"api: no group named {group!r} for the read-write socket") from None


def bind_unix_socket(path: str, *, mode: int, gid: int | None = None) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (and group ``gid``) set before listen.

    A stale socket file (nobody accepting) is replaced; a live one means another supervisor is
    running and is an error, as is any other kind of file at ``path``.
    """
    target = Path(path)
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            st = target.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeFailure(f"{path}: exists and is not a socket; not replacing it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                target.unlink()
            else:
                raise RuntimeFailure(f"{path}: another supervisor is serving on this socket")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot serve the API here: {exc.strerror or exc}") from exc
    return sock


def peer_credentials(sock: trio.socket.SocketType) -> PeerCred | None:
    """The connecting process's pid/uid/gid (Linux SO_PEERCRED)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


def _hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("supervisor.api.http")
    config.keep_alive_timeout = 30.0
    config.include_server_header = False
    return config


async def _serve_socket(sock: socket.socket, app: ApiApp, config: Config) -> None:
    context = WorkerContext(None)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def handle(stream: trio.SocketStream) -> None:
        peer = peer_credentials(stream.socket)
        wrapped = ASGIWrapper(functools.partial(app, peer=peer))
        server = TCPServer(wrapped, config, context, ConnectionState({}), stream)  # type: ignore[arg-type]
        await server.run()

    await trio.serve_listeners(handle, [listener])


async def serve_api(
    facade: SupervisorFacade,
    journal: Journal,
    *,
    socket_path: str = DEFAULT_SOCKET,
    ro_socket_path: str | None = DEFAULT_RO_SOCKET,
    group: str | int | None = None,
    heartbeat: float = 15.0,
    codec: Codec | None = None,
    task_status: trio.TaskStatus[ApiEndpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; ``task_status.started`` once both sockets accept.

    Launch with ``await nursery.start(serve_api, facade, journal, socket_path=...)``. On exit
    the socket files this call created are removed.
    """
    gid = resolve_gid(group)
    made: list[tuple[str, socket.socket, int]] = []
    apps: list[ApiApp] = []
    try:
        rw_mode = 0o660 if gid is not None else 0o600
        for path, mode, owner in ((socket_path, rw_mode, gid), (ro_socket_path, 0o666, None)):
            if path is not None:
                sock = bind_unix_socket(path, mode=mode, gid=owner)
                made.append((path, sock, os.stat(path).st_ino))
        config = _hypercorn_config()
        async with trio.open_nursery() as nursery:
            for index, (_path, sock, _ino) in enumerate(made):
                app = ApiApp(
                    facade,
                    journal,
                    read_only=index == 1,
                    heartbeat=heartbeat,
                    codec=codec if codec is not None else XmlCodec(),
                )
                apps.append(app)
                nursery.start_soon(_serve_socket, sock, app, config)
            log.info(
                "api: serving on %s (read-write) and %s (read-only)",
                socket_path,
                ro_socket_path,
                extra={"socket": socket_path, "ro_socket": ro_socket_path},
            )
            task_status.started(ApiEndpoints(socket_path, ro_socket_path))
    finally:
        for app in apps:
            app.close()
        for path, sock, ino in made:
            _remove_if_ours(path, ino)
            sock.close()


def _remove_if_ours(path: str, ino: int) -> None:
    """Unlink ``path`` unless someone else's socket replaced ours meanwhile."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ino:
            os.unlink(path)
