"""Serving the real API (real sockets, real hypercorn) over the in-memory fake facade, for tests.

``running_api`` runs inside the test's trio run; ``ServerThread`` runs a whole trio run in a
thread so that synchronous clients (the CLI, the httpx client, subprocesses) can be tested
from ordinary code, and so that a test can stop and restart "the supervisor" over the same
journal directory.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor.api.server import serve_api
from supervisor.journal import Journal, Retention
from supervisor.testing.fakefacade import FakeSupervisor


def short_tmpdir() -> Path:
    """A directory short enough for AF_UNIX paths (108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="vsvt", dir="/tmp"))


@attrs.define
class Running:
    fake: FakeSupervisor
    journal: Journal
    rw: str
    ro: str


@contextlib.asynccontextmanager
async def running_api(
    directory: Path,
    *,
    heartbeat: float = 15.0,
    retention: Retention | None = None,
    segment_events: int = 10_000,
    group: str | int | None = None,
) -> AsyncIterator[Running]:
    """The API served on ``directory``/rw.sock and ro.sock over a fresh fake."""
    journal = Journal.open(
        directory / "journal", retention=retention, segment_events=segment_events
    )
    fake = FakeSupervisor(journal)
    rw, ro = str(directory / "rw.sock"), str(directory / "ro.sock")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_api(
                    fake,
                    journal,
                    socket_path=rw,
                    ro_socket_path=ro,
                    group=group,
                    heartbeat=heartbeat,
                    task_status=task_status,
                )
            )
            yield Running(fake, journal, rw, ro)
            nursery.cancel_scope.cancel()
    finally:
        journal.close()


@attrs.define(eq=False)
class ServerThread:
    """The API in a thread with its own trio run; ``start``/``stop`` may be repeated."""

    directory: Path
    heartbeat: float = 15.0
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    running: Running | None = None
    _thread: threading.Thread | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None
    _ready: threading.Event = attrs.field(factory=threading.Event)
    _error: BaseException | None = None

    @property
    def rw(self) -> str:
        return str(self.directory / "rw.sock")

    @property
    def ro(self) -> str:
        return str(self.directory / "ro.sock")

    def start(self) -> ServerThread:
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("API server thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def body() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with running_api(self.directory, heartbeat=self.heartbeat, **self.kwargs) as run:
                self.running = run
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(body)
        except BaseException as exc:  # reported to the test through start()
            self._error = exc
            self._ready.set()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` (sync or async) in the server's trio thread."""
        assert self._token is not None

        async def run() -> Any:
            result = fn(*args)
            if hasattr(result, "__await__"):
                result = await result
            return result

        return trio.from_thread.run(run, trio_token=self._token)

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
        self._thread = None
        self.running = None
