"""A real ``nats-server`` with JetStream on loopback, for tests, ``vsv stress --fleet`` and bench.

Why a helper in the package: the fleet tests, the stress harness's fleet mode and the benchmarks
all need the same thing (a server of their own, with its own store directory, on a free port,
that can be killed and started again on the same port and store to stage an outage) and must
never leave one running. The server listens on 127.0.0.1 only; the port is the one it picked
(``-p -1``), read from the ports file it writes (``--ports_file_dir``), and kept for restarts so
that clients configured with the URL find it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from supervisor.errors import RuntimeFailure

#: where Debian's package installs it (/usr/sbin is not on every user's PATH)
_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server")


def find_nats_server() -> str | None:
    """The nats-server binary, or None when it is not installed (scripts/setup.sh installs it)."""
    found = shutil.which("nats-server")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


@attrs.define(eq=False)
class NatsServer:
    """One nats-server process (``start``/``kill``/``stop``, again and again); ``close`` at the
    end kills it. ``directory`` holds its store (``store/``), ports file and log."""

    directory: Path
    binary: str
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeFailure("nats-server has not started yet")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server (on the port of its first start) and wait until it takes clients."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("nats-server_*.ports"):
            old.unlink()
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port if self.port is not None else -1),
                    "-js",
                    "-sd",
                    str(self.directory / "store"),
                    "--ports_file_dir",
                    str(self.directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.starts += 1
        ports = self.directory / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeFailure(
                    f"nats-server exited with {self.proc.returncode}; "
                    f"see {self.directory}/server.log"
                )
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                url = json.loads(ports.read_text())["nats"][0]
                self.port = int(url.rsplit(":", 1)[1])
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeFailure(f"nats-server did not start in {timeout} s")
            time.sleep(0.01)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the server with ``sig`` (SIGKILL: a crash) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """A clean stop (SIGTERM: the server flushes its store)."""
        self.kill(signal.SIGTERM)

    def close(self) -> None:
        self.kill()


@contextlib.contextmanager
def nats_server(directory: Path, *, start: bool = True) -> Iterator[NatsServer]:
    """A :class:`NatsServer` in ``directory``, killed when the block ends however it ends."""
    binary = find_nats_server()
    if binary is None:
        raise RuntimeFailure("nats-server is not installed (apt-get install nats-server)")
    server = NatsServer(directory=directory, binary=binary)
    try:
        if start:
            server.start()
        yield server
    finally:
        server.close()


@attrs.frozen
class StoredMessage:
    """One message as the stream holds it."""

    stream_seq: int
    subject: str
    msg_id: str | None
    data: bytes

    def record(self) -> dict[str, object]:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


def read_stream(url: str, stream: str = "GUESTS", timeout: float = 10.0) -> list[StoredMessage]:
    """Every message ``stream`` holds now, in stream order (blocking; runs its own asyncio loop).

    For checks: it reads with an ephemeral consumer of its own, independent of the code under
    test (supervisor.fleet.consume).
    """
    import asyncio

    async def read() -> list[StoredMessage]:
        import nats
        from nats.js import api
        from nats.js.errors import NotFoundError

        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=2)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return []
            if info.state.messages == 0:
                return []
            sub = await js.pull_subscribe(
                "",
                stream=stream,
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True
                ),
            )
            out: list[StoredMessage] = []
            while True:
                msgs = await sub.fetch(1024, timeout=timeout)
                for m in msgs:
                    out.append(
                        StoredMessage(
                            stream_seq=m.metadata.sequence.stream,
                            subject=m.subject,
                            msg_id=(m.headers or {}).get("Nats-Msg-Id"),
                            data=m.data,
                        )
                    )
                if msgs and msgs[-1].metadata.num_pending == 0:
                    return out
        finally:
            await nc.close()

    return asyncio.run(read())
