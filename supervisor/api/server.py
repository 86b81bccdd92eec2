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

The accept loop also hardens both sockets (see :mod:`supervisor.api.peer` and
:mod:`supervisor.api.limits`): each socket has its own cap of open connections, a connection
beyond it is answered 503 and closed at once, accept failures for lack of descriptors are waited
out, and every read-write connection whose peer is in another pid or mount namespace is answered
403 ``forbidden``. The loops of the two sockets are separate tasks that yield after every accept,
so a flood of one socket cannot starve the other.
"""

from __future__ import annotations

import contextlib
import errno
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

from supervisor.api.app import ApiApp, Codec, PeerCred, XmlCodec, busy_response
from supervisor.api.client import socket_path_problem
from supervisor.api.limits import (
    ApiStatistics,
    ConnectionBudget,
    ConnectionStatistics,
    nofile_limit,
    plan_caps,
)
from supervisor.api.peer import NamespaceGuard
from supervisor.errors import RuntimeFailure
from supervisor.facade import SupervisorFacade
from supervisor.journal import Journal
from supervisor.metrics import RequestCounts

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


def bind_unix_socket(
    path: str, *, mode: int, gid: int | None = None, make_under: str | None = None
) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (and group ``gid``) set before listen.

    A stale socket file (nobody accepting) is replaced; a live one means another supervisor is
    running and is an error, as is any other kind of file at ``path``. The socket's directory
    is made when missing, with the directories above it only inside ``make_under`` (the
    daemon's run dir, which it makes anyway): elsewhere a missing tree is a typo to report.
    """
    problem = socket_path_problem(path)
    if problem is not None:
        raise RuntimeFailure(problem if path else f"api: {problem}")
    target = Path(path)
    inside = make_under is not None and Path(os.path.abspath(path)).parent.is_relative_to(
        os.path.abspath(make_under)
    )
    if not inside and not target.parent.parent.is_dir():
        # the socket's own directory is made (/run/vsv), not a whole invented tree: a typo in
        # --socket should be reported, not built
        raise RuntimeFailure(f"{path}: cannot serve the API here: no directory {target.parent}")
    try:
        target.parent.mkdir(mode=0o755, parents=inside, exist_ok=True)
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


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCred | None:
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


#: accept() errors that mean "no descriptor or memory right now": wait and try again (as trio's
#: serve_listeners does) instead of crashing the server
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long an accept loop waits after such an error; the socket stays readable meanwhile, so
#: retrying at once would spin
ACCEPT_RETRY_DELAY = 0.1
#: accept() errors that concern only the one connection that was being accepted (it was aborted
#: before we got to it, or a security module refused it): skip it and accept the next
ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


@attrs.define(eq=False)
class ApiSocket:
    """One listening socket with its app, its connection budget and (read-write) its guard."""

    name: str
    sock: socket.socket
    app: ApiApp
    budget: ConnectionBudget
    guard: NamespaceGuard | None = None
    #: accept failures since the last accept that worked (to log an episode once, not 10/s)
    failing: int = attrs.field(default=0, init=False)

    def statistics(self) -> ConnectionStatistics:
        return self.budget.statistics()


@attrs.define(eq=False)
class _ClientEofStream:
    """The connection's stream as hypercorn's TCPServer uses it, noticing the client's EOF.

    hypercorn (0.18) keeps a connection whose client went away while it was idle until its
    keep-alive timeout (30 s) has run out, holding the descriptor and, here, the slot in the
    socket's cap: a client that connects and closes without a request (a liveness probe, a
    flood) would keep slots taken for 30 s after it left. On EOF this marks the connection's
    own worker context terminated, which ends hypercorn's idle wait at once and, when a request
    is still being answered, closes the connection after that answer instead of keeping it.
    """

    inner: trio.SocketStream
    context: WorkerContext

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.inner.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if not data:
            await self.context.terminated.set()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _serve_socket(api: ApiSocket, config: Config) -> None:
    """Accept on ``api.sock`` until cancelled; each connection is served in its own task.

    Our own loop instead of ``trio.serve_listeners``: a connection must be counted against the
    cap before any work is spent on it, and one over the cap is answered and closed without
    becoming a task.
    """
    lsock = api.sock
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _addr = lsock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(lsock)
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_SKIP_ERRNOS:
                    await trio.lowlevel.checkpoint()
                    continue
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                _note_accept_failure(api, exc)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if api.failing:
                log.warning(
                    "api: %s socket accepts again after %d failed attempts",
                    api.name,
                    api.failing,
                    extra={"socket": api.name, "failures": api.failing},
                )
                api.failing = 0
            if api.budget.try_acquire():
                nursery.start_soon(_serve_connection, api, conn, config)
            else:
                _turn_away(api, conn)
            # a checkpoint per connection: a flood on this socket must leave the scheduler to
            # the other socket's loop and to the connections already being served
            await trio.lowlevel.checkpoint()


def _note_accept_failure(api: ApiSocket, exc: OSError) -> None:
    api.budget.note_accept_error()
    api.failing += 1
    if api.failing == 1:
        log.warning(
            "api: accept on the %s socket failed: %s (%s); retrying every %s s until it works",
            api.name,
            errno.errorcode.get(exc.errno or 0, exc.errno),
            exc.strerror,
            ACCEPT_RETRY_DELAY,
            extra={"socket": api.name, "errno": exc.errno},
        )


#: where a turned-away connection's request is read to be discarded (never read by anyone)
_DISCARD = bytearray(4096)


def _turn_away(api: ApiSocket, conn: socket.socket) -> None:
    """Answer 503 in one non-blocking write, best effort, and close: the socket is full.

    What the client already sent is read and dropped first (a few non-blocking reads): a socket
    closed with unread data makes the client's next read fail with ECONNRESET instead of EOF,
    which a client reading to the end would report instead of the 503.
    """
    try:
        limit = api.budget.limit
        detail = f"the {api.name} socket has {limit} connections open, its limit: try again later"
        with contextlib.suppress(OSError):
            for _ in range(4):
                if conn.recv_into(_DISCARD, len(_DISCARD), socket.MSG_DONTWAIT) < len(_DISCARD):
                    break
        with contextlib.suppress(OSError):
            conn.send(
                busy_response(detail, seq=api.app.journal.last_seq()),
                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
            )
    finally:
        conn.close()


async def _serve_connection(api: ApiSocket, conn: socket.socket, config: Config) -> None:
    try:
        peer = peer_credentials(conn)
        refusal: str | None = None
        if api.guard is not None:
            verdict = api.guard.check(conn)
            if not verdict.allowed:
                api.budget.note_refused()
                refusal = verdict.detail()
                log.warning(
                    "api: refused a read-write connection from pid=%s uid=%s: %s",
                    verdict.pid if verdict.pid is not None else (peer.pid if peer else None),
                    peer.uid if peer else None,
                    verdict.reason(),
                    extra={
                        "peer_pid": verdict.pid,
                        "peer_uid": peer.uid if peer else None,
                        "peer_gid": peer.gid if peer else None,
                        "differs": list(verdict.differs),
                    },
                )
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        try:
            wrapped = ASGIWrapper(functools.partial(api.app, peer=peer, refusal=refusal))
            # a context per connection: its "terminated" is how the EOF ends this one only
            context = WorkerContext(None)
            watched = _ClientEofStream(stream, context)
            server = TCPServer(wrapped, config, context, ConnectionState({}), watched)  # type: ignore[arg-type]
            await server.run()
        finally:
            await trio.aclose_forcefully(stream)
    finally:
        conn.close()
        api.budget.release()


async def serve_api(
    facade: SupervisorFacade,
    journal: Journal,
    *,
    socket_path: str = DEFAULT_SOCKET,
    ro_socket_path: str | None = DEFAULT_RO_SOCKET,
    group: str | int | None = None,
    heartbeat: float = 15.0,
    codec: Codec | None = None,
    max_connections: int | None = None,
    ro_max_connections: int | None = None,
    guard: NamespaceGuard | None = None,
    listeners: ApiListeners | None = None,
    requests: RequestCounts | None = None,
    task_status: trio.TaskStatus[ApiEndpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; ``task_status.started`` once both sockets accept.

    Launch with ``await nursery.start(serve_api, facade, journal, socket_path=...)``. On exit
    the socket files this call created are removed. ``max_connections`` and
    ``ro_max_connections`` cap each socket's open connections (``None``: the defaults); both
    are scaled down when the descriptor limit is too low for them (:func:`plan_caps`).
    ``guard`` checks read-write peers (default: against this process's namespaces).
    ``listeners`` are sockets the caller bound earlier with :func:`bind_api` (it then owns
    and removes them; ``socket_path``, ``ro_socket_path`` and ``group`` are taken from them).
    ``requests`` counts the answers by socket, method and status (``/metrics``).
    """
    if listeners is not None:
        socket_path, ro_socket_path = listeners.socket_path, listeners.ro_socket_path
        gid = None
    else:
        gid = resolve_gid(group)
    plan = plan_caps(nofile_limit(), rw=max_connections, ro=ro_max_connections)
    if plan.scaled:
        log.warning(
            "api: the descriptor limit %d leaves room for %d read-write and %d read-only "
            "connections only (asked: %s and %s)",
            plan.nofile,
            plan.max_connections,
            plan.ro_max_connections,
            max_connections,
            ro_max_connections,
            extra={"nofile": plan.nofile},
        )
    rw_guard = guard if guard is not None else NamespaceGuard.for_this_process()
    own = listeners is None
    bound = listeners if listeners is not None else ApiListeners(socket_path, ro_socket_path)
    served: list[ApiSocket] = []

    def statistics() -> ApiStatistics:
        by_name = {s.name: s.statistics() for s in served}
        return ApiStatistics(
            nofile_limit=plan.nofile,
            read_write=by_name.get("read-write"),
            read_only=by_name.get("read-only"),
        )

    try:
        if own:
            bound.bind(gid)
        config = _hypercorn_config()
        for index, (_path, sock, _ino) in enumerate(bound.made):
            read_only = index == 1
            cap = plan.ro_max_connections if read_only else plan.max_connections
            app = ApiApp(
                facade,
                journal,
                read_only=read_only,
                heartbeat=heartbeat,
                codec=codec if codec is not None else XmlCodec(),
                connections=statistics,
                requests=requests,
            )
            served.append(
                ApiSocket(
                    "read-only" if read_only else "read-write",
                    sock,
                    app,
                    ConnectionBudget(cap),
                    guard=None if read_only else rw_guard,
                )
            )
        async with trio.open_nursery() as nursery:
            for api in served:
                nursery.start_soon(_serve_socket, api, config)
            log.info(
                "api: serving on %s (read-write, at most %d connections) and %s (read-only, "
                "at most %d connections)",
                socket_path,
                plan.max_connections,
                ro_socket_path,
                plan.ro_max_connections,
                extra={
                    "socket": socket_path,
                    "ro_socket": ro_socket_path,
                    "max_connections": plan.max_connections,
                    "ro_max_connections": plan.ro_max_connections,
                },
            )
            task_status.started(ApiEndpoints(socket_path, ro_socket_path))
    finally:
        for api in served:
            api.app.close()
        if own:
            bound.close()


@attrs.define
class ApiListeners:
    """The API's listening sockets, bound before the supervisor starts and served after.

    The daemon binds them first of all: a client that connects as soon as the supervisor has
    announced itself waits in the listen backlog until the API is served instead of finding no
    socket, and a second supervisor started by mistake fails on the live socket before it
    re-adopts (and disturbs) the first one's guests.
    """

    socket_path: str
    ro_socket_path: str | None
    #: (path, socket, inode) of each socket bound, read-write first
    made: list[tuple[str, socket.socket, int]] = attrs.Factory(list)

    def bind(self, gid: int | None, make_under: str | None = None) -> None:
        """Bind both sockets (read-write ``0600``, or ``0660`` with group ``gid``; read-only
        ``0666``); on failure the ones already bound are removed."""
        rw_mode = 0o660 if gid is not None else 0o600
        try:
            for path, mode, owner in (
                (self.socket_path, rw_mode, gid),
                (self.ro_socket_path, 0o666, None),
            ):
                if path is not None:
                    sock = bind_unix_socket(path, mode=mode, gid=owner, make_under=make_under)
                    self.made.append((path, sock, os.stat(path).st_ino))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the sockets and remove their files (unless someone replaced them)."""
        for path, sock, ino in self.made:
            _remove_if_ours(path, ino)
            sock.close()
        self.made.clear()


def bind_api(
    socket_path: str,
    ro_socket_path: str | None,
    group: str | int | None = None,
    *,
    make_under: str | None = None,
) -> ApiListeners:
    """Bind the API's sockets now, to be served later by ``serve_api(listeners=...)``;
    missing directories are made inside ``make_under`` only (see :func:`bind_unix_socket`)."""
    listeners = ApiListeners(socket_path, ro_socket_path)
    listeners.bind(resolve_gid(group), make_under)
    return listeners


def _remove_if_ours(path: str, ino: int) -> None:
    """Unlink ``path`` unless someone else's socket replaced ours meanwhile."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ino:
            os.unlink(path)
