"""A small WebSocket client (RFC 6455) on the standard library, for ``vsv console``.

Why our own: a client verb imports only the standard library (it must answer in tens of
milliseconds, docs/cli.md), which has no WebSocket client, and ``vsv console`` needs little of
the protocol: the opening handshake over the API's Unix socket, binary and text messages,
ping and pong, and the closing handshake; no extensions, no subprotocols, no TLS. The framing
is a pure parser (:class:`FrameParser`: bytes in, messages out, in the manner of h11) and
:func:`encode_frame`; :class:`WebSocket` adds the socket, with blocking sends and one
``recv`` per :meth:`WebSocket.receive`, so that a caller can ``select`` on it beside a terminal.

A refused upgrade is an ordinary HTTP answer with a problem document: it is raised as the same
:class:`~supervisor.api.client.ApiError` the other verbs get.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
from typing import NamedTuple

from supervisor.api.client import ApiError, ProtocolError, _connect_error, _problem

#: RFC 6455 section 1.3: what the server appends to the client's key before hashing it
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_DATA = frozenset({OP_TEXT, OP_BINARY})

#: the largest message accepted from the server (the console sends at most ~256 KiB at once)
MAX_MESSAGE = 16 << 20
#: the largest answer head accepted for the opening handshake
MAX_HEAD = 64 * 1024


class Message(NamedTuple):
    """One whole message: its opcode (text, binary, close, ping, pong) and payload."""

    opcode: int
    data: bytes


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (SHA-1, as RFC 6455 says:
    a check that the server speaks WebSocket, not a security measure)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _masked(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (as one big integer: fast for a paste)."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def encode_frame(opcode: int, payload: bytes, *, mask: bytes | None = None) -> bytes:
    """One final frame; a client masks every frame it sends (``mask``: 4 random bytes)."""
    size = len(payload)
    head = bytearray([0x80 | opcode])
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head.append(bit | size)
    elif size < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", size)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", size)
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + _masked(payload, mask)


class FrameParser:
    """Frames from a server, as whole messages; control frames are passed as they come.

    Raises ProtocolError for what a server must not send: a masked frame, reserved bits, a
    fragmented or long control frame, a continuation out of place, a message over
    :data:`MAX_MESSAGE`.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._opcode: int | None = None  # of the fragmented message being assembled
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode in _CONTROL:
                if not fin or len(payload) > 125:
                    raise ProtocolError("websocket: a control frame must be whole and short")
                out.append(Message(opcode, payload))
                continue
            if opcode == OP_CONTINUATION:
                if self._opcode is None:
                    raise ProtocolError("websocket: a continuation frame without a message")
            elif opcode in _DATA:
                if self._opcode is not None:
                    raise ProtocolError("websocket: a new message inside a fragmented one")
                self._opcode = opcode
            else:
                raise ProtocolError(f"websocket: unknown opcode {opcode}")
            self._size += len(payload)
            if self._size > self._max:
                raise ProtocolError(f"websocket: a message over {self._max} bytes")
            self._parts.append(payload)
            if fin:
                out.append(Message(self._opcode, b"".join(self._parts)))
                self._opcode, self._parts, self._size = None, [], 0
        return out

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ProtocolError("websocket: reserved bits set (no extension was agreed)")
        if second & 0x80:
            raise ProtocolError("websocket: the server masked a frame")
        size, offset = second & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, offset = struct.unpack_from("!H", buf, 2)[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, offset = struct.unpack_from("!Q", buf, 2)[0], 10
        if size > self._max:
            raise ProtocolError(f"websocket: a frame over {self._max} bytes")
        if len(buf) < offset + size:
            return None
        payload = bytes(buf[offset : offset + size])
        del buf[: offset + size]
        return bool(first & 0x80), first & 0x0F, payload


def handshake_request(path: str, key: bytes) -> bytes:
    """The opening handshake's request for ``path`` (host ``vsv``: the socket is the address)."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: vsv\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (names lower-cased) of an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"websocket: not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class WebSocket:
    """A client WebSocket on a connected stream socket (see the module docstring)."""

    def __init__(
        self, sock: socket.socket, parser: FrameParser, pending: list[Message] | None = None
    ) -> None:
        self.sock = sock
        self.parser = parser
        #: messages that came with the handshake's answer, not yet received
        self.pending = pending or []
        self.closed = False

    @classmethod
    def connect(cls, socket_path: str, path: str, *, timeout: float = 30.0) -> WebSocket:
        """Connect to the API on ``socket_path`` and upgrade ``path``; ApiError when refused."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(socket_path)
            except OSError as exc:
                raise _connect_error(socket_path, exc) from exc
            key = base64.b64encode(os.urandom(16))
            try:
                sock.sendall(handshake_request(path, key))
                rest = _upgrade(sock, key)
            except TimeoutError:
                raise ProtocolError(f"{socket_path}: no answer within {timeout} s") from None
            except (BrokenPipeError, ConnectionResetError):
                raise ProtocolError(
                    f"{socket_path}: the supervisor closed the connection"
                ) from None
            sock.settimeout(None)
            parser = FrameParser()
            return cls(sock, parser, parser.feed(rest))
        except BaseException:
            sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(encode_frame(opcode, payload, mask=os.urandom(4)))

    def send_binary(self, data: bytes) -> None:
        self._send(OP_BINARY, data)

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def send_close(self, code: int = 1000) -> None:
        """Start (or answer) the closing handshake, once."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(OP_CLOSE, struct.pack("!H", code))

    def receive(self) -> list[Message] | None:
        """The messages one read of the socket completes (pings answered here); None at the
        end of the stream."""
        if self.pending:
            out, self.pending = self.pending, []
        else:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            out = self.parser.feed(data)
        for message in out:
            if message.opcode == OP_PING:
                self._send(OP_PONG, message.data)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _upgrade(sock: socket.socket, key: bytes) -> bytes:
    """Read the handshake's answer: what followed it (frames) when it is 101 and right, else
    ApiError (a refusal's problem document) or ProtocolError."""
    head, rest = _read_head(sock)
    status, headers = parse_head(head)
    if status != 101:
        body = _read_body(sock, rest, headers)
        raise ApiError(status, _problem(status, headers.get("content-type", ""), body))
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise ProtocolError("websocket: the server's Sec-WebSocket-Accept is wrong")
    return rest


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise ProtocolError("websocket: the answer's head is too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError(
                "websocket: the supervisor closed the connection during the upgrade"
            )
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _read_body(sock: socket.socket, rest: bytes, headers: dict[str, str]) -> bytes:
    """The body of a refusal (its Content-Length; to the end of the stream without one)."""
    length = headers.get("content-length", "")
    want = int(length) if length.isdigit() else None
    body = rest
    while want is None or len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body if want is None else body[:want]
