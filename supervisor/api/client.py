"""A small synchronous API client on the standard library, for the ``vsv`` command.

Only :mod:`http.client`, :mod:`socket` and :mod:`json` are imported: a CLI verb must answer in
well under 100 ms and ``import httpx`` alone costs more than that (see docs/cli.md). Consumers
that want a full-featured client use :mod:`supervisor.api.pyclient`.

Connection failures are translated into two distinct errors so the CLI can say what is wrong:
:class:`DaemonNotRunning` (no socket, or nobody accepting) and :class:`SocketNotPermitted`
(the socket exists but this user may not connect to it).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

DEFAULT_SOCKET = "/run/vsv/vsv.sock"
DEFAULT_RO_SOCKET = "/run/vsv/vsv-ro.sock"


class ClientError(Exception):
    """Root of what this client raises."""


class DaemonNotRunning(ClientError):
    """Nothing is serving on the socket path."""


class SocketNotPermitted(ClientError):
    """The socket exists but this user may not connect to it."""


class ProtocolError(ClientError):
    """The answer was not what the API documents."""


class ApiError(ClientError):
    """The supervisor answered with a problem document."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.code = str(problem.get("code", "error"))
        self.field = problem.get("field")
        self.problems: list[str] = list(problem.get("problems") or [])
        super().__init__(str(problem.get("detail", f"HTTP {status}")))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            raise _connect_error(self._path, exc) from exc
        self.sock = sock


def _connect_error(path: str, exc: OSError) -> ClientError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SocketNotPermitted(
            f"{path}: permission denied (the read-write socket is for root or the configured "
            "group; read verbs can use the read-only socket)"
        )
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return DaemonNotRunning(f"{path}: the supervisor is not running (start it: vsv daemon)")
    return DaemonNotRunning(f"{path}: cannot connect: {exc.strerror or exc}")


def quote(name: str) -> str:
    """A name as one path segment."""
    return urllib.parse.quote(name, safe="")


class Client:
    """One connection (kept alive across calls) to the API on ``socket_path``."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float | None = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> _UnixConnection:
        if self._conn is None:
            self._conn = _UnixConnection(self.socket_path, self.timeout)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        query: Mapping[str, object] | None = None,
    ) -> tuple[int, str, bytes]:
        """(status, content type, body); raises ApiError for a problem answer."""
        if query:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None}
            path = f"{path}?{urllib.parse.urlencode(pairs)}"
        headers = {"Content-Type": content_type} if content_type else {}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed meanwhile: retry once on a new one
                self.close()
                if attempt:
                    raise DaemonNotRunning(
                        f"{self.socket_path}: the supervisor closed the connection"
                    ) from None
        ctype = response.getheader("content-type", "")
        if response.status >= 400:
            raise ApiError(response.status, _problem(response.status, ctype, data))
        return response.status, ctype, data

    def get_json(self, path: str, **query: object) -> Any:
        _, _, data = self.request("GET", path, query=query)
        return _decode(data)

    def send_json(self, method: str, path: str, value: Any = None, **query: object) -> Any:
        body = json.dumps(value).encode() if value is not None else None
        _, _, data = self.request(
            method, path, body=body, content_type="application/json" if body else None, query=query
        )
        return _decode(data)

    def send_xml(self, path: str, document: bytes) -> Any:
        _, _, data = self.request("POST", path, body=document, content_type="application/xml")
        return _decode(data)

    def get_text(self, path: str) -> str:
        _, _, data = self.request("GET", path)
        return data.decode()

    def events(
        self,
        *,
        since: int | None = None,
        follow: bool = False,
        limit: int | None = None,
        domain: str | None = None,
        type: str | None = None,
        heartbeat: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records from the event endpoint, heartbeats included, as the stream delivers them.

        Uses its own connection (a stream occupies one) with no read timeout beyond the
        heartbeat: a stream silent for three heartbeats is a dead connection.
        """
        query = {
            "since": since,
            "follow": "true" if follow else None,
            "limit": limit,
            "domain": domain,
            "type": type,
            "heartbeat": heartbeat,
        }
        timeout = 3 * (heartbeat or 15.0) if follow else self.timeout
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None}
            conn.request("GET", f"/v1/events?{urllib.parse.urlencode(pairs)}")
            response = conn.getresponse()
            if response.status >= 400:
                data = response.read()
                raise ApiError(
                    response.status,
                    _problem(response.status, response.getheader("content-type", ""), data),
                )
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        except TimeoutError:
            raise ProtocolError(f"{self.socket_path}: no heartbeat for {timeout} s") from None
        finally:
            conn.close()


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        raise ProtocolError("the supervisor answered with something that is not JSON") from None


def _problem(status: int, ctype: str, data: bytes) -> dict[str, Any]:
    if "json" in ctype:
        try:
            value = json.loads(data)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
    return {"code": "error", "detail": data.decode(errors="replace") or f"HTTP {status}"}
