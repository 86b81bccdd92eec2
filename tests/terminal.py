"""A person at a terminal, for tests of ``vsv console``: a real pty whose slave is the command's
stdin, stdout, stderr and controlling terminal (``setsid -c``), typed into and read by the test
through the master, as a terminal emulator would."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Person:
    """``vsv --socket SOCKET console ARGS...`` on a fresh terminal of ``rows`` x ``cols``."""

    def __init__(self, socket_path: str, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        #: the terminal's settings before the command ran (to check that it restores them)
        self.saved = termios.tcgetattr(self.slave)
        self.seen = bytearray()
        self.mark = 0
        self.proc = subprocess.Popen(
            ["setsid", "-c", sys.executable, "-m", "supervisor", "--socket", socket_path,
             "console", *args],
            stdin=self.slave, stdout=self.slave, stderr=self.slave, cwd=REPO,
        )  # fmt: skip

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:
                pass

    def read_until(self, text: bytes, timeout: float = 30.0) -> bytes:
        """Everything shown since the last match up to and including ``text``."""
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(text, self.mark)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on the terminal; it shows {bytes(self.seen)!r}"
            self._read(min(left, 0.5))
        start, self.mark = self.mark, found + len(text)
        return bytes(self.seen[start : self.mark])

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        """The terminal's window changes: the kernel sends SIGWINCH to the command."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float = 30.0) -> int:
        """The command's exit status, reading what it shows meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; shows {bytes(self.seen)!r}"
            self._read(0.05)
        self._read(0)
        return self.proc.returncode

    def restored(self) -> bool:
        """The terminal has the settings it had before the command (raw mode undone)."""
        return termios.tcgetattr(self.slave) == self.saved

    def shown(self) -> str:
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
