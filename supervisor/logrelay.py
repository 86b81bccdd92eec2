"""Guests' logs with a size cap that holds at every moment: each guest writes to a FIFO the
supervisor drains into the log file.

Theory of operation
-------------------
A guest's stdout and stderr used to be the log file itself, cut back every 2 s when it had
grown beyond ``--log-max-mib``: a guest writing fast filled the run dir (memory, on a tmpfs)
to 15 times the cap between two checks. Now a guest's stdout and stderr are the FIFO
``RUN/logs/NAME.pipe``, opened read-write (so the guest never sees EPIPE, even with no
supervisor reading), and one relay task per running guest moves what arrives into
``NAME.log`` with ``splice(2)`` (the bytes never enter Python). The relay is the log's only
writer, so it checks the size after every move and cuts back at once: the newest half of the
cap goes to ``NAME.log.1`` and the log starts again; no line is lost in between, since the
guest cannot write while the relay cuts (the FIFO holds what comes meanwhile). The log is never
more than the cap plus one move (64 KiB), ``.log.1`` never more than half the cap.

A guest that writes faster than the relay moves blocks in ``write`` when the FIFO (1 MiB) is
full, which is the point; the relay moves at most ``rate`` bytes a second per guest, so a
flooding guest cannot take the supervisor's CPU either. Without a supervisor (between a
SIGKILL and the successor, or with ``--keep-guests``) nothing reads: a guest can write 1 MiB,
then its writes wait until the successor's relay, which reopens the FIFO it finds, drains it.

With the cap off (``--log-max-mib 0``) guests write to the log file directly, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

log = logging.getLogger("vsv.logs")

#: bytes one move takes at most (and so what the log may exceed the cap by)
CHUNK = 1 << 16
#: the FIFO's buffer: what a guest can write while no supervisor reads
FIFO_BYTES = 1 << 20
#: bytes a second one guest's relay moves at most
DEFAULT_RATE = 64 << 20

Launcher = Callable[[Callable[[], Awaitable[None]]], None]


def log_file(run_dir: Path, name: str) -> Path:
    """Where a guest's stdout and stderr end up."""
    return run_dir / "logs" / f"{name}.log"


def fifo_file(run_dir: Path, name: str) -> Path:
    """The FIFO a guest writes to while the cap is on."""
    return run_dir / "logs" / f"{name}.pipe"


def cut_back(path: Path, keep: int) -> None:
    """Move the newest ``keep`` bytes of ``path`` (from a line start) to ``path.1``; empty it."""
    from supervisor.store import atomic_write

    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(size - keep - 1, 0)  # one byte more: is the cut at a line start?
        f.seek(start)
        tail = f.read(size - start)
    if start > 0:
        cut = tail.find(b"\n")
        tail = tail[cut + 1 :] if cut >= 0 else tail[1:]
    rotated = path.with_name(path.name + ".1")
    atomic_write(rotated, tail, mode=0o640, durable=False)
    os.truncate(path, 0)


@attrs.define(eq=False)
class _Relay:
    name: str
    fifo: Path
    log: Path
    max_bytes: int
    rate: int
    fd: int
    done: trio.Event = attrs.Factory(trio.Event)
    stopping: bool = False
    #: the wait for data (cancelled by stop(), which then has the relay drain and end)
    waiting: trio.CancelScope | None = None
    moved: int = 0
    cuts: int = 0
    #: told when the relay has ended (its counters then go to the totals)
    on_end: Callable[[_Relay], None] | None = None

    async def run(self) -> None:
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.lseek(out, 0, os.SEEK_END)
        began, budget_from = time.monotonic(), 0
        try:
            while True:
                if not self.stopping:
                    self.waiting = trio.CancelScope()
                    with self.waiting:
                        await trio.lowlevel.wait_readable(self.fd)
                    self.waiting = None
                n = _move(self.fd, out, size)
                if n == 0:
                    if self.stopping:
                        return  # drained: the guest is gone
                    await trio.lowlevel.checkpoint()
                    continue
                size += n
                self.moved += n
                if size > self.max_bytes:
                    await trio.to_thread.run_sync(cut_back, self.log, self.max_bytes // 2)
                    size = 0
                    self.cuts += 1
                # pace: at most `rate` bytes a second, measured from `began`
                ahead = (self.moved - budget_from) / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    await trio.sleep(ahead)
                elif ahead < -1.0:
                    began, budget_from = time.monotonic(), self.moved
        except OSError as exc:
            log.warning("guest %s: log relay stopped: %s", self.name, exc)
        finally:
            os.close(out)
            os.close(self.fd)
            self.done.set()
            if self.on_end is not None:
                self.on_end(self)


def _move(src: int, dst: int, offset: int) -> int:
    """Move what the FIFO holds (up to CHUNK) to ``dst`` at ``offset``; 0 when it is empty."""
    try:
        return os.splice(src, dst, CHUNK, offset_dst=offset, flags=os.SPLICE_F_NONBLOCK)
    except BlockingIOError:
        return 0
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    try:  # a filesystem splice cannot write to: through memory
        data = os.read(src, CHUNK)
    except BlockingIOError:
        return 0
    return os.pwrite(dst, data, offset)


@attrs.define(eq=False)
class LogRelays:
    """The relays of one supervisor's guests, by name (see the module docstring)."""

    run_dir: Path
    max_bytes: int
    rate: int = DEFAULT_RATE
    #: starts a task in the supervisor's guests' nursery (set once it runs)
    launch: Launcher | None = None
    _relays: dict[str, _Relay] = attrs.Factory(dict)
    #: bytes moved and cut-backs made by relays that have ended
    _ended: list[int] = attrs.Factory(lambda: [0, 0])

    def target(self, name: str) -> Path:
        """What guest ``name``'s stdout and stderr are to be (its FIFO, made if missing),
        with a relay draining it (started if none runs)."""
        fifo = fifo_file(self.run_dir, name)
        fifo.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if not stat.S_ISFIFO(os.lstat(fifo).st_mode):
                fifo.unlink()
                os.mkfifo(fifo, 0o600)
        except FileNotFoundError:
            os.mkfifo(fifo, 0o600)
        relay = self._relays.get(name)
        if relay is None or relay.done.is_set() or relay.stopping:
            self._start(name, fifo)
        return fifo

    def resume(self, name: str) -> None:
        """Drain the FIFO of a guest a predecessor started, when it writes to one."""
        fifo = fifo_file(self.run_dir, name)
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.lstat(fifo).st_mode):
                self.target(name)

    def relaying(self, name: str) -> bool:
        relay = self._relays.get(name)
        return relay is not None and not relay.done.is_set()

    def _start(self, name: str, fifo: Path) -> None:
        if self.launch is None:
            raise RuntimeError("the log relays are not running")
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, FIFO_BYTES)
        relay = _Relay(
            name, fifo, log_file(self.run_dir, name), self.max_bytes, self.rate, fd,
            on_end=self._count,
        )  # fmt: skip
        self._relays[name] = relay
        self.launch(relay.run)

    def stop(self, name: str) -> None:
        """The guest is gone: drain what it left, then stop relaying and remove its FIFO."""
        relay = self._relays.pop(name, None)
        if relay is not None:
            relay.stopping = True
            if relay.waiting is not None:
                relay.waiting.cancel()
        with contextlib.suppress(FileNotFoundError):
            fifo_file(self.run_dir, name).unlink()

    def _count(self, relay: _Relay) -> None:
        self._ended[0] += relay.moved
        self._ended[1] += relay.cuts

    def statistics(self) -> dict[str, int]:
        """Relays running, and bytes moved and cut-backs made by all so far."""
        live = [r for r in self._relays.values() if not r.done.is_set()]
        return {
            "relays": len(live),
            "moved": self._ended[0] + sum(r.moved for r in live),
            "cuts": self._ended[1] + sum(r.cuts for r in live),
        }
