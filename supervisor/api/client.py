"""A small synchronous API client on the standard library, for the ``vsv`` command.

Only :mod:`socket` and :mod:`json` are imported, and the HTTP/1.1 it speaks is written here:
a CLI verb must answer in well under 60 ms as a whole process, and :mod:`http.client` alone
costs ~14 ms of that (it imports the ``email`` package and ``ssl``), ``import httpx`` far more
(see docs/cli.md). The peer is always the supervisor's own server, so the subset is small:
requests with a ``Content-Length``, answers with a ``Content-Length`` or chunked (the event
stream). Consumers that want a full-featured client use :mod:`supervisor.api.pyclient`.

Connection failures are translated into distinct errors so the CLI can say what is wrong:
:class:`DaemonNotRunning` (no socket, or nobody accepting), :class:`SocketNotPermitted`
(the socket exists but this user may not connect to it) and :class:`BadSocketPath` (the path
cannot name a socket at all).
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

DEFAULT_SOCKET = "/run/vsv/vsv.sock"
DEFAULT_RO_SOCKET = "/run/vsv/vsv-ro.sock"
#: the longest path a Unix socket address holds (sun_path is 108 bytes with its NUL)
SOCKET_PATH_MAX = 107
#: the longest status or header line accepted, and the most header lines
_LINE_MAX = 65536
_HEADERS_MAX = 100


class ClientError(Exception):
    """Root of what this client raises."""


class DaemonNotRunning(ClientError):
    """Nothing is serving on the socket path."""


class SocketNotPermitted(ClientError):
    """The socket exists but this user may not connect to it."""


class BadSocketPath(ClientError, ValueError):
    """The path given for the socket cannot name one (empty, or too long for AF_UNIX)."""


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


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a Unix socket's path, or None. Shared by the client and the
    daemon's bind, so both refuse the same paths with the same words."""
    if not path:
        return "the socket path is empty"
    size = len(os.fsencode(path))
    if size > SOCKET_PATH_MAX:
        return (
            f"{path}: the socket path is too long ({size} bytes; a Unix socket's path holds at "
            f"most {SOCKET_PATH_MAX})"
        )
    return None


def _connect_error(path: str, exc: OSError) -> ClientError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SocketNotPermitted(
            f"{path}: permission denied (the read-write socket is for root or the configured "
            "group; read verbs can use the read-only socket)"
        )
    if exc.errno == errno.ENOENT:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            return DaemonNotRunning(
                f"{path}: no such directory {directory}: the supervisor is not running there "
                "(is the socket path right?)"
            )
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return DaemonNotRunning(f"{path}: the supervisor is not running (start it: vsv daemon)")
    return DaemonNotRunning(f"{path}: cannot connect: {exc.strerror or exc}")


class _Closed(Exception):
    """The server closed the connection before an answer began (a kept-alive one timed out)."""


class _Response:
    """An answer's status and headers; the body is read from the connection on demand."""

    def __init__(self, status: int, headers: dict[str, str], file: io.BufferedReader) -> None:
        self.status = status
        self.headers = headers
        self._file = file

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"

    def chunks(self) -> Iterator[bytes]:
        """The body's pieces as they arrive (chunked, by length, or up to the close)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._file.readline(_LINE_MAX)
                if not size_line:
                    raise ProtocolError("the supervisor closed the connection mid-answer")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError("a malformed chunk in the supervisor's answer") from None
                if size == 0:
                    while self._file.readline(_LINE_MAX) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = self._exactly(size)
                self._file.readline(_LINE_MAX)
                yield data
        elif "content-length" in self.headers:
            try:
                length = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("a malformed Content-Length in the answer") from None
            if length:
                yield self._exactly(length)
        else:
            while data := self._file.read1(65536):
                yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        """The body split into lines (each with its newline), as the stream delivers them."""
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def _exactly(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise ProtocolError("the supervisor's answer ended early")
        return data


class _Connection:
    """One HTTP/1.1 connection over the Unix socket at ``path``."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self.used = False
        problem = socket_path_problem(path)
        if problem is not None:
            raise BadSocketPath(problem)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise _connect_error(path, exc) from exc
        self._sock = sock
        self._file: io.BufferedReader = sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def exchange(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> _Response:
        """Send one request and read the answer's head."""
        lines = [f"{method} {target} HTTP/1.1", "Host: vsv"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "DELETE"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reused, self.used = self.used, True
        try:
            self._sock.sendall(head + (body or b""))
            status_line = self._file.readline(_LINE_MAX)
        except (BrokenPipeError, ConnectionResetError):
            if reused:
                raise _Closed from None
            raise DaemonNotRunning(f"{self.path}: the supervisor closed the connection") from None
        if not status_line:
            if reused:
                raise _Closed
            raise DaemonNotRunning(f"{self.path}: the supervisor closed the connection")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"{self.path}: not an HTTP answer: {status_line[:60]!r}")
        headers_in: dict[str, str] = {}
        for _ in range(_HEADERS_MAX):
            line = self._file.readline(_LINE_MAX)
            if line in (b"\r\n", b"\n"):
                return _Response(int(parts[1]), headers_in, self._file)
            if not line:
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                break
            headers_in[name.strip().lower()] = value.strip()
        raise ProtocolError(f"{self.path}: a malformed answer head")


def quote(name: str) -> str:
    """A name as one path segment."""
    return urllib.parse.quote(name, safe="")


class Client:
    """One connection (kept alive across calls) to the API on ``socket_path``."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float | None = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: _Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        try:
            for attempt in (0, 1):
                if self._conn is None:
                    self._conn = _Connection(self.socket_path, self.timeout)
                try:
                    response = self._conn.exchange(method, path, body, headers)
                    data = response.read()
                    break
                except _Closed:
                    # a kept-alive connection the server closed meanwhile: once more on a new one
                    self.close()
                    if attempt:
                        raise DaemonNotRunning(
                            f"{self.socket_path}: the supervisor closed the connection"
                        ) from None
        except TimeoutError:
            self.close()
            raise ProtocolError(f"{self.socket_path}: no answer within {self.timeout} s") from None
        if not response.keep_alive:
            self.close()
        if response.status >= 400:
            raise ApiError(response.status, _problem(response.status, response.content_type, data))
        return response.status, response.content_type, data

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
        conn = _Connection(self.socket_path, timeout)
        try:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None}
            response = conn.exchange("GET", f"/v1/events?{urllib.parse.urlencode(pairs)}", None, {})
            if response.status >= 400:
                raise ApiError(
                    response.status,
                    _problem(response.status, response.content_type, response.read()),
                )
            for line in response.lines():
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise ProtocolError(
                            "the event stream carried a line that is not JSON"
                        ) from None
        except TimeoutError:
            raise ProtocolError(f"{self.socket_path}: no heartbeat for {timeout} s") from None
        except (ConnectionResetError, BrokenPipeError):
            raise DaemonNotRunning(
                f"{self.socket_path}: the supervisor closed the stream"
            ) from None
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
