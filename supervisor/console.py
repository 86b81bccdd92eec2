"""A guest's console: the pty the supervisor holds for a guest with a ``<console>``.

Theory of operation
-------------------
A guest whose domain has a ``<console>`` starts with its init's stdin, stdout and stderr on a
pty of the guest's own devpts, its controlling terminal (``forkserver.make_console``); the
embryo hands the master to the supervisor. From then on two halves meet here:

- :class:`GuestConsole` (one per guest, kept by its runner across reboots) is the hub: the
  guest's output comes in through :meth:`GuestConsole.feed` and goes to the one attached
  client's :class:`ConsoleSession`; the client's keystrokes and window size go out through
  the :class:`InputSink` connected while the guest runs. One client at a time: another is
  refused (:class:`ConsoleBusy`) unless it forces its way in, and then the first one's session
  ends with the reason ``taken-over``.
- :func:`serve_pty` is the relay for one master (one boot): it reads the master for as long as
  the guest runs, writes every byte to the guest's log, whether a client is attached or not,
  and feeds the hub; it writes the client's input to the master from a bounded buffer.

Nothing the guest or a client does can block the other: the master is always read (a guest
never waits because nobody reads its console), a client that reads too slowly has output
skipped (counted and told, never queued without bound; the log has all of it), and input the
guest does not read is dropped beyond a small buffer rather than holding up the client.

A pty hangs up when the last descriptor of its master closes, which would end a shell that is
the guest's init whenever the supervisor ends: :class:`KeptConsoles` gives a copy of each
boot's ends to the console keeper (:mod:`supervisor.guest.ptykeeper`), from which a successor
that adopts the guest takes them back.

The hub is pure trio state with no I/O, so the API's tests serve it with an in-memory sink
(:class:`supervisor.testing.fakefacade.FakeSupervisor`), while the relay is tested with real
ptys.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import struct
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from supervisor.errors import InvalidOperation
from supervisor.logrelay import cut_back

if TYPE_CHECKING:
    from supervisor.guest.ptykeeper import ConsoleKeeper

log = logging.getLogger("vsv.console")

#: output queued for a client that reads more slowly than the guest writes; beyond it output is
#: skipped for that client (the log keeps it all)
CLIENT_BUFFER = 256 * 1024
#: input queued for a guest that does not read its console; beyond it input is dropped
INPUT_BUFFER = 64 * 1024
#: one read of the master
READ_SIZE = 65536
#: what a pty's window is until a client says otherwise (0x0 makes programs guess)
DEFAULT_SIZE = (24, 80)
#: the most the relay reads after it is told to stop: whatever the guest's last processes left
DRAIN_LIMIT = 1 << 20

_TIOCGPTPEER = 0x5441


class NoConsole(InvalidOperation):
    """The domain has no ``<console>``."""


class ConsoleBusy(InvalidOperation):
    """Another client is attached; ``holder`` says who."""

    def __init__(self, message: str, holder: ConsoleClient) -> None:
        super().__init__(message)
        self.holder = holder


@attrs.frozen
class ConsoleClient:
    """Who is attached (from the API connection's SO_PEERCRED), to name in a refusal."""

    pid: int | None = None
    uid: int | None = None
    since: float = attrs.field(factory=time.time)

    def describe(self) -> str:
        who = ", ".join(
            f"{key} {value}"
            for key, value in (("pid", self.pid), ("uid", self.uid))
            if value is not None
        )
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{who or 'a client'}, attached at {when}"


@attrs.frozen
class ConsoleOutput:
    """What a session has for its client: bytes, how many were skipped before them, and once
    the session is over, why (``taken-over``, ``stopped``) with a sentence for people."""

    data: bytes = b""
    skipped: int = 0
    ended: str | None = None
    detail: str = ""


@attrs.frozen
class ConsoleStatistics:
    """One console's counts since the supervisor started (bytes out of and into the guest,
    skipped for a slow client, dropped because the guest did not read)."""

    attached: bool
    live: bool
    sessions: int
    taken_over: int
    bytes_out: int
    bytes_in: int
    skipped_out: int
    dropped_in: int


class InputSink(Protocol):
    """Where a client's keystrokes and window size go: the running guest's pty."""

    def write_nowait(self, data: bytes) -> int:
        """Queue ``data``; the number of bytes that did not fit (dropped)."""
        ...

    def resize(self, rows: int, cols: int) -> None: ...


@attrs.define(eq=False)
class ConsoleSession:
    """One attached client: the output queued for it and whether it is still the one."""

    console: GuestConsole
    client: ConsoleClient
    _chunks: collections.deque[bytes] = attrs.Factory(collections.deque)
    _queued: int = 0
    _skipped: int = 0
    ended: str | None = None
    detail: str = ""
    _wake: trio.Event = attrs.Factory(trio.Event)

    @property
    def attached(self) -> bool:
        return self.ended is None

    def _offer(self, data: bytes) -> None:
        if self._queued + len(data) > CLIENT_BUFFER:
            self._skipped += len(data)
            self.console.skipped_out += len(data)
        else:
            self._chunks.append(data)
            self._queued += len(data)
        self._wake.set()

    def _end(self, reason: str, detail: str) -> None:
        if self.ended is None:
            self.ended, self.detail = reason, detail
            self._wake.set()

    async def next_output(self) -> ConsoleOutput:
        """Wait for output (or the session's end) and take all of it."""
        while not (self._chunks or self._skipped or self.ended):
            self._wake = trio.Event()
            await self._wake.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        skipped, self._queued, self._skipped = self._skipped, 0, 0
        return ConsoleOutput(data, skipped, self.ended, self.detail)

    def write(self, data: bytes) -> None:
        """Keystrokes for the guest (dropped once this session is no longer attached)."""
        if self.attached:
            self.console._input(data)

    def resize(self, rows: int, cols: int) -> None:
        """The client's window changed: the guest's pty follows (SIGWINCH in the guest)."""
        if self.attached:
            self.console._resize(rows, cols)

    def detach(self) -> None:
        """The client went away (or was told to): the console is free again."""
        self._end("detached", "the client detached")
        if self.console.session is self:
            self.console.session = None


@attrs.define(eq=False)
class _Relay:
    """One boot's pty relay as the hub sees it: to stop it and wait until it has drained."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class GuestConsole:
    """The console of one guest (see the module docstring); kept by its runner."""

    name: str
    session: ConsoleSession | None = None
    _sink: InputSink | None = None
    _size: tuple[int, int] = DEFAULT_SIZE
    _relay: _Relay | None = None
    sessions: int = 0
    taken_over: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    skipped_out: int = 0
    dropped_in: int = 0

    @property
    def live(self) -> bool:
        """A guest's pty is connected: the guest runs and what a client types reaches it."""
        return self._sink is not None

    @property
    def relaying(self) -> bool:
        """A relay is registered for the current boot (it may not have connected yet)."""
        return self._relay is not None

    def statistics(self) -> ConsoleStatistics:
        return ConsoleStatistics(
            attached=self.session is not None,
            live=self.live,
            sessions=self.sessions,
            taken_over=self.taken_over,
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            skipped_out=self.skipped_out,
            dropped_in=self.dropped_in,
        )

    # ------------------------------------------------------------------------ clients

    def attach(self, client: ConsoleClient, *, force: bool = False) -> ConsoleSession:
        """A session for ``client``; ConsoleBusy when another one is attached, unless ``force``
        (the other one's session then ends as ``taken-over``)."""
        current = self.session
        if current is not None:
            if not force:
                raise ConsoleBusy(
                    f"domain {self.name!r} has a console client attached already "
                    f"({current.client.describe()}): use --force to take it over",
                    current.client,
                )
            current._end("taken-over", f"taken over by another client ({client.describe()})")
            self.taken_over += 1
        session = ConsoleSession(self, client)
        self.session = session
        self.sessions += 1
        return session

    def end_session(self, reason: str, detail: str) -> None:
        """End the attached client's session (the guest stopped, say)."""
        if self.session is not None:
            self.session._end(reason, detail)
            self.session = None

    # ------------------------------------------------------------------------ the guest side

    def connect(self, sink: InputSink) -> None:
        """A running guest's pty: input and the window size go to ``sink`` from now on."""
        self._sink = sink
        sink.resize(*self._size)

    def disconnect(self, sink: InputSink) -> None:
        if self._sink is sink:
            self._sink = None

    def feed(self, data: bytes) -> None:
        """Output from the guest: to the attached client, if any."""
        self.bytes_out += len(data)
        if self.session is not None:
            self.session._offer(data)

    def _input(self, data: bytes) -> None:
        if self._sink is None:
            self.dropped_in += len(data)
            return
        dropped = self._sink.write_nowait(data)
        self.bytes_in += len(data) - dropped
        self.dropped_in += dropped

    def _resize(self, rows: int, cols: int) -> None:
        self._size = (rows, cols)
        if self._sink is not None:
            self._sink.resize(rows, cols)

    # ------------------------------------------------------------------------ the relay

    def begin_relay(self) -> _Relay:
        """Register the relay of a new boot before its task runs, so that :meth:`stop_relay`
        called in between still finds (and stops) it."""
        self._relay = _Relay()
        return self._relay

    async def run_relay(
        self,
        relay: _Relay,
        master: int,
        log_path: str | None,
        peer: int = -1,
        log_max_bytes: int = 0,
    ) -> None:
        """Serve ``master`` (and ``peer``, its slave end; both owned from here on) until
        :meth:`stop_relay` or cancellation. ``log_max_bytes``: see :func:`serve_pty`."""
        try:
            with relay.scope:
                await serve_pty(self, master, log_path, peer, log_max_bytes=log_max_bytes)
        except Exception:
            # the guest's failure is its own: a broken relay costs its console, not the runner
            log.exception("guest %s: the console relay failed", self.name)
        finally:
            relay.done.set()
            if self._relay is relay:
                self._relay = None

    async def stop_relay(self) -> None:
        """Stop the current relay once it has read what the guest left; the guest's processes
        are gone (or about to be) when this is called."""
        relay = self._relay
        if relay is not None:
            relay.scope.cancel()
            await relay.done.wait()


@attrs.define(eq=False)
class _PtyEnd:
    """The master as an :class:`InputSink`: a bounded buffer a writer task empties into it."""

    master: int
    _pending: bytearray = attrs.Factory(bytearray)
    _wake: trio.Event = attrs.Factory(trio.Event)

    def write_nowait(self, data: bytes) -> int:
        room = max(INPUT_BUFFER - len(self._pending), 0)
        self._pending += data[:room]
        self._wake.set()
        return max(len(data) - room, 0)

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def write_loop(self) -> None:
        while True:
            while not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
            try:
                written = os.write(self.master, self._pending)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.master)
                continue
            except OSError:
                self._pending.clear()  # the guest's side is gone: nobody to type to
                continue
            del self._pending[:written]


def open_peer(master: int) -> int:
    """The slave end of ``master``'s pty, opened through the master (TIOCGPTPEER)."""
    return int(fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))


async def serve_pty(
    console: GuestConsole,
    master: int,
    log_path: str | None,
    peer: int = -1,
    *,
    log_max_bytes: int = 0,
) -> None:
    """Relay one guest pty (see the module docstring) until cancelled, then drain it and close
    ``master`` and ``peer`` (its slave end, opened here when -1), which this call owns.

    The relay also holds the slave open: the master then never reads EIO while the guest runs,
    however often the guest's processes close and reopen the console (a getty respawned by
    init, say), so the relay never has to tell "closed for now" from "gone"; the runner stops
    it once the guest's processes are gone, and what they left in the pty is drained then.

    ``log_max_bytes`` (0: none) is the log's cap, held here as the log relay holds it for a
    guest without a console: past the cap, the newest half moves to ``NAME.log.1`` at once.
    """
    end = _PtyEnd(master)
    out = _Output(console, -1)
    try:
        os.set_blocking(master, False)
        if peer < 0:
            peer = open_peer(master)
        if log_path is not None:
            out.log_fd = _open_log(console.name, log_path)
            out.log_path = log_path
            out.max_bytes = log_max_bytes
            with contextlib.suppress(OSError):
                out.size = os.fstat(out.log_fd).st_size
        console.connect(end)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(end.write_loop)
            while True:
                await trio.lowlevel.wait_readable(master)
                data = _read(master)
                if data is None:
                    break  # EIO: every end of the slave is closed (ours too: it cannot be)
                if data:
                    out.emit(data)
                    if out.over_cap():
                        await trio.to_thread.run_sync(out.cut_back)
            nursery.cancel_scope.cancel()
    finally:
        console.disconnect(end)
        left = DRAIN_LIMIT
        with contextlib.suppress(OSError):
            while left > 0 and (data := _read(master)):
                left -= len(data)
                out.emit(data)
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(master)
        _close_all([fd for fd in (master, peer, out.log_fd) if fd >= 0])


@attrs.define(eq=False)
class KeptConsoles:
    """The supervisor's use of the console keeper (:mod:`supervisor.guest.ptykeeper`): a copy
    of each boot's pty kept, taken back when a successor adopts the guest, dropped when it
    stops. A keeper that fails costs the guest's console a restart of the supervisor, nothing
    more: every failure is logged, none raised."""

    keeper: ConsoleKeeper
    _lock: trio.Lock = attrs.Factory(trio.Lock)
    #: the boot whose console each guest wants kept now (a keep that finds another, or none,
    #: because the guest stopped or rebooted meanwhile, sends nothing)
    _wanted: dict[str, str] = attrs.Factory(dict)

    def want(self, name: str, key: str) -> None:
        """``name``'s boot ``key`` is the one to keep (said before :meth:`keep` runs)."""
        self._wanted[name] = key

    async def keep(self, name: str, key: str, fds: list[int]) -> None:
        """Keep copies of ``fds`` (closed here) for ``name``'s boot ``key``, unless that is no
        longer the boot :meth:`want` named. Run beside the start, not in it: the first
        console starts the keeper, an interpreter's start."""
        try:
            async with self._lock:  # one start of the keeper, however many guests boot
                await trio.to_thread.run_sync(self.keeper.start)
            if self._wanted.get(name) == key:
                self.keeper.keep(name, key, fds)
        except OSError as exc:
            log.warning("guest %s: the console keeper: %s", name, exc)
        finally:
            _close_all(fds)

    def take(self, name: str, key: str) -> tuple[int, int] | None:
        """The master and slave end kept for ``name``'s boot ``key`` (ours now), or None."""
        try:
            fds = self.keeper.take(name, key)
        except OSError as exc:
            log.warning("guest %s: the console keeper: %s", name, exc)
            return None
        if fds is None or len(fds) != 2:
            _close_all(fds or [])
            return None
        return fds[0], fds[1]

    def drop(self, name: str) -> None:
        self._wanted.pop(name, None)
        try:
            self.keeper.drop(name)
        except OSError as exc:
            log.warning("guest %s: the console keeper: %s", name, exc)

    def prune(self, live: set[str]) -> None:
        """Forget every console but those of ``live`` guests (after a successor adopted)."""
        try:
            for name in set(self.keeper.kept()) - live:
                self.keeper.drop(name)
        except OSError as exc:
            log.warning("the console keeper: %s", exc)

    def close(self) -> bool | None:
        """Disconnect. True when no console is kept: a keeper then exits (its cgroup can go),
        while one that holds consoles of guests left running stays for the next supervisor
        (False). None when the keeper does not answer: whether its cgroup can go is then up to
        the kernel (it refuses while a process is in it)."""
        try:
            idle: bool | None = not self.keeper.kept()
        except OSError:
            idle = None
        self.keeper.close()
        return idle


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _read(master: int) -> bytes | None:
    """One read of the master: its bytes, b"" when there is nothing now, None at its end."""
    try:
        return os.read(master, READ_SIZE)
    except BlockingIOError:
        return b""
    except OSError as exc:
        if exc.errno == errno.EIO:
            return None
        raise


def _open_log(name: str, path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        log.warning("guest %s: console log %s: %s", name, path, exc.strerror)
        return -1


@attrs.define(eq=False)
class _Output:
    """The guest's output to its log (appended: the daemon's cut-back truncates it in place)
    and to the hub. A log that cannot be written is reported once; the console goes on."""

    console: GuestConsole
    log_fd: int
    failed: bool = False
    log_path: str | None = None
    #: the log's cap (0: none) and what was written since the last cut-back
    max_bytes: int = 0
    size: int = 0

    def emit(self, data: bytes) -> None:
        if self.log_fd >= 0 and not self.failed:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.log_fd, view)
                    self.size += n
                    view = view[n:]
            except OSError as exc:
                self.failed = True
                log.warning("guest %s: console log: %s", self.console.name, exc.strerror)
        self.console.feed(data)

    def over_cap(self) -> bool:
        return self.max_bytes > 0 and self.log_path is not None and self.size > self.max_bytes

    def cut_back(self) -> None:
        """Keep the newest half of the cap in ``NAME.log.1`` and empty the log (the log's
        descriptor appends, so the next write lands at its new end)."""
        assert self.log_path is not None
        try:
            cut_back(Path(self.log_path), self.max_bytes // 2)
        except OSError as exc:
            log.warning("guest %s: console log cut-back: %s", self.console.name, exc.strerror)
        self.size = 0
