"""``vsv console``: the caller's terminal on a guest's console, over the API's WebSocket.

Standard library only (a client verb). The terminal is put in raw mode, so every key (Ctrl-C,
Ctrl-Z included) goes to the guest, whose own pty does the line editing and the signals; only
the escape character, Ctrl-] as in ``virsh console``, stays here: it detaches. The terminal's
settings are restored however this ends: detach, the guest stopping, the session taken over by
``--force``, a broken connection, an error, or a signal (SIGTERM, SIGHUP, SIGQUIT and SIGINT
are caught for that; only SIGKILL cannot be). The window size is sent when attaching and again
on each SIGWINCH. With a standard input that is not a terminal, nothing is changed and the end
of the input detaches.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import termios
import tty
from collections.abc import Iterator
from typing import NamedTuple

from supervisor.api.client import ProtocolError, quote
from supervisor.api.wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, WebSocket

#: Ctrl-] (GS), virsh's default escape character
ESCAPE = b"\x1d"
EXIT_DETACHED = 0
EXIT_TAKEN_OVER = 1
#: the signals whose default action would leave the terminal raw
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)


class Outcome(NamedTuple):
    """How a session ended: the exit status and a line for the user (printed once the
    terminal is restored), or an empty one."""

    status: int
    message: str = ""


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def console_path(domain: str, *, force: bool) -> str:
    return f"/v1/domains/{quote(domain)}/console" + ("?force=1" if force else "")


def run_console(
    socket_path: str, domain: str, *, force: bool = False, stdin: int = 0, stdout: int = 1
) -> int:
    """Attach to ``domain``'s console until detached; the exit status (see docs/cli.md).

    Refusals (no such domain, no console, not running, busy) are raised by the connect as
    :class:`~supervisor.api.client.ApiError` before the terminal is touched.
    """
    ws = WebSocket.connect(socket_path, console_path(domain, force=force))
    with ws:
        try:
            with _wakeup() as wake, _raw(stdin):
                # said once the terminal is raw: what is typed from here on goes to the guest
                banner = f"Connected to domain '{domain}'\r\nEscape character is ^] (Ctrl + ])\r\n"
                os.write(2, banner.encode())
                outcome = _relay(ws, stdin, stdout, wake)
        except _Signalled as signalled:
            return 128 + signalled.signum
        os.write(2, b"\n" + (f"vsv: {outcome.message}\n".encode() if outcome.message else b""))
        return outcome.status


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """Raw mode on ``fd`` (when it is a terminal) for the block; the settings restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _wakeup() -> Iterator[_Wake]:
    """Signals as readable bytes on a pipe (so ``select`` returns for them); the ending
    signals raise in the main loop, so that every ``finally`` (raw mode!) runs."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    wake = _Wake(read_end)

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGWINCH:
            wake.resized = True
        else:
            raise _Signalled(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGWINCH, *_ENDING_SIGNALS)}
    old_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        yield wake
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read_end)
        os.close(write_end)


class _Wake:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.resized = False

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 64):
                pass


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, cols) of the terminal ``fd``, None when it is none (or reports 0x0)."""
    try:
        rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def _send_size(ws: WebSocket, fd: int) -> None:
    size = window_size(fd)
    if size is not None:
        ws.send_text(json.dumps({"type": "resize", "rows": size[0], "cols": size[1]}))


def _relay(ws: WebSocket, stdin: int, stdout: int, wake: _Wake) -> Outcome:
    """Copy keys to the guest and its output to ``stdout`` until the session ends."""
    closed: dict[str, str] = {}
    try:
        return _relay_loop(ws, stdin, stdout, wake, closed)
    except (BrokenPipeError, ConnectionResetError):
        # the supervisor closed the connection while we wrote to it: after telling why, or not
        if closed:
            return _ended(closed)
        raise ProtocolError("the supervisor closed the console") from None


def _relay_loop(
    ws: WebSocket, stdin: int, stdout: int, wake: _Wake, closed: dict[str, str]
) -> Outcome:
    terminal = stdin if os.isatty(stdin) else stdout
    _send_size(ws, terminal)
    sources = [ws.fileno(), stdin, wake.fd]
    while True:
        if not ws.pending:
            ready, _, _ = select.select(sources, [], [])
        else:
            ready = [ws.fileno()]
        if wake.fd in ready:
            wake.drain()
        if wake.resized:
            wake.resized = False
            _send_size(ws, terminal)
        if ws.fileno() in ready:
            messages = ws.receive()
            if messages is None:
                if closed:
                    return _ended(closed)
                raise ProtocolError("the supervisor closed the console")
            for message in messages:
                if message.opcode == OP_BINARY:
                    _write_all(stdout, message.data)
                elif message.opcode == OP_TEXT:
                    _control(message.data, closed, stdout)
                elif message.opcode == OP_CLOSE:
                    ws.send_close()
                    return _ended(closed)
        if stdin in ready:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""  # the terminal hung up: as the end of the input
            before, escape, _after = data.partition(ESCAPE)
            if before:
                ws.send_binary(before)
            if escape or not data:
                ws.send_close()
                return Outcome(EXIT_DETACHED)


def _control(text: bytes, closed: dict[str, str], stdout: int) -> None:
    """A text message from the supervisor: why the session ends, or skipped output."""
    try:
        message = json.loads(text)
    except ValueError:
        return
    if not isinstance(message, dict):
        return
    if message.get("type") == "closed":
        closed.update({k: str(v) for k, v in message.items()})
    elif message.get("type") == "skipped":
        note = f"\r\n[vsv: {message.get('bytes')} bytes of output skipped: see vsv log]\r\n"
        _write_all(stdout, note.encode())


def _ended(closed: dict[str, str]) -> Outcome:
    reason = closed.get("reason")
    detail = closed.get("detail", "")
    if reason == "taken-over":
        return Outcome(EXIT_TAKEN_OVER, f"the console was {detail or 'taken over'} (--force)")
    if reason == "stopped":
        return Outcome(EXIT_DETACHED, detail or "the domain stopped")
    return Outcome(EXIT_DETACHED, detail)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
