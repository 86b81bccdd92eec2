"""The NATS edge of the publisher: nats-py on its own asyncio thread, seen from trio.

:class:`NatsBroker` is what the publisher (:mod:`supervisor.fleet.publisher`) talks to; every
method is a trio coroutine that runs the matching :class:`_Edge` coroutine on the
:class:`~supervisor.fleet.bridge.LoopThread`. nats-py's errors are translated here, at the edge:
:class:`BrokerUnavailable` for whatever passes (no server, a timeout, JetStream not answering
yet, an error ack) and :class:`~supervisor.fleet.subjects.FleetConfigError` for a stream that
does not fit, which waiting will not fix.

Connecting: nats-py is told never to give up (``max_reconnect_attempts=-1``), also on the first
connection, so one client lives as long as the publisher and reconnects by itself after an
outage; the publisher only asks whether it is connected (:meth:`NatsBroker.wait_connected`).
A publish is never handed to the client while it is disconnected: nats-py would keep it in its
reconnect buffer and send it later, behind the publisher's back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs

from supervisor.errors import RuntimeFailure
from supervisor.fleet.bridge import LoopThread
from supervisor.fleet.subjects import (
    DEFAULT_DUPLICATE_WINDOW,
    STREAM_SUBJECTS,
    FleetConfigError,
    StreamShape,
    check_stream,
    host_subjects,
    redact,
    seq_of_payload,
)

_log = logging.getLogger("vsv.fleet")

#: how long a publish waits for the stream's ack
PUBLISH_TIMEOUT = 2.0
#: how long a stream management request waits
API_TIMEOUT = 3.0


class BrokerUnavailable(RuntimeFailure):
    """The broker did not take a request now (down, not ready, or it refused a publish)."""


@attrs.frozen
class PublishAck:
    """The stream's answer to one publish."""

    stream_seq: int
    duplicate: bool


@attrs.frozen
class BatchResult:
    """How far one :meth:`NatsBroker.publish_batch` got: the first ``acked`` messages were
    acknowledged (``duplicates`` of them as repeats); ``error`` says why it stopped early."""

    acked: int
    duplicates: int
    error: BrokerUnavailable | None = None


@attrs.frozen
class BrokerSettings:
    """Where and how to connect."""

    servers: tuple[str, ...]
    stream: str
    creds: str | None = None
    name: str = "vsv"
    replicas: int = 1


class _Edge:
    """The nats-py side; every method runs on the asyncio thread."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.nc: Any = None
        self.js: Any = None
        self.connected = asyncio.Event()
        self.connecting: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.reconnects = 0

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _on_disconnected(self) -> None:
        self.connected.clear()

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.connected.set()

    async def start(self) -> None:
        """Start the client in the background if it is not running (it retries for ever)."""
        if self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        import nats

        options: dict[str, Any] = {}
        if self.settings.creds is not None:
            options["user_credentials"] = self.settings.creds
        try:
            self.nc = await nats.connect(
                list(self.settings.servers),
                name=self.settings.name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                **options,
            )
        except Exception as exc:  # a bad creds file, an invalid URL: not going to pass
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.error("fleet: cannot connect to NATS: %s", self.last_error)
            raise
        self.js = self.nc.jetstream(timeout=API_TIMEOUT)
        self.connected.set()

    async def wait_connected(self, timeout: float) -> None:
        await self.start()
        if self.connecting is not None and self.connecting.done() and self.nc is None:
            if not self.connecting.cancelled():
                self.connecting.exception()  # retrieved: asyncio would log it as never seen
            raise FleetConfigError(f"cannot connect to NATS: {self.last_error}")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            servers = ", ".join(redact(s) for s in self.settings.servers)
            raise BrokerUnavailable(
                f"not connected to NATS ({servers}): {self.last_error or 'no answer'}"
            ) from None

    def _ready(self) -> Any:
        if self.js is None or not self.nc.is_connected:
            self.connected.clear()
            raise BrokerUnavailable(f"not connected to NATS: {self.last_error or 'reconnecting'}")
        return self.js

    async def ensure_stream(self) -> StreamShape:
        """The stream's shape, creating the stream first if it does not exist."""
        from nats.js import api
        from nats.js.errors import BadRequestError, NotFoundError

        js = self._ready()
        name = self.settings.stream
        try:
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                config = api.StreamConfig(
                    name=name,
                    subjects=list(STREAM_SUBJECTS),
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    duplicate_window=DEFAULT_DUPLICATE_WINDOW,
                    num_replicas=self.settings.replicas,
                    description="vsupervisor fleet events (docs/fleet.md)",
                )
                try:
                    info = await js.add_stream(config)
                    _log.info("fleet: created stream %s", name)
                except BadRequestError:
                    # another host created it meanwhile, or its subjects overlap another stream
                    info = await js.stream_info(name)
        except NotFoundError as exc:
            raise FleetConfigError(f"stream {name}: {exc.description}") from None
        except BadRequestError as exc:
            raise FleetConfigError(f"stream {name}: {exc.description}") from None
        except Exception as exc:
            raise _unavailable("stream info", exc) from None
        cfg = info.config
        shape = StreamShape(
            name=name,
            subjects=tuple(cfg.subjects or ()),
            storage=_enum_value(cfg.storage),
            retention=_enum_value(cfg.retention),
            duplicate_window=float(cfg.duplicate_window or 0),
            no_ack=bool(cfg.no_ack),
            sealed=bool(cfg.sealed),
            mirror=cfg.mirror is not None,
        )
        check_stream(shape)
        return shape

    async def last_seq(self, host: str) -> int:
        """The highest journal ``seq`` of ``host`` the stream holds (0: none)."""
        from nats.js.errors import NotFoundError

        js = self._ready()
        best = 0
        for subject in host_subjects(host):
            try:
                msg = await js.get_last_msg(self.settings.stream, subject)
            except NotFoundError:
                continue
            except Exception as exc:
                raise _unavailable("last message", exc) from None
            seq = seq_of_payload(msg.data or b"")
            if seq is not None:
                best = max(best, seq)
        return best

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> PublishAck:
        js = self._ready()
        try:
            ack = await js.publish(
                subject,
                payload,
                timeout=PUBLISH_TIMEOUT,
                stream=self.settings.stream,
                headers={"Nats-Msg-Id": msg_id},
            )
        except Exception as exc:
            raise _unavailable("publish", exc) from None
        return PublishAck(stream_seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_batch(self, items: list[tuple[str, bytes, str]]) -> BatchResult:
        """Publish ``(subject, payload, msg id)`` items one at a time, each after the previous
        one's ack, stopping at the first failure (so the stream never holds them out of order).

        One crossing of the bridge per batch, not per message: a publish waits for its ack
        anyway, and the two thread hops per message cost more than the publish on loopback.
        """
        acked = duplicates = 0
        for subject, payload, mid in items:
            try:
                ack = await self.publish(subject, payload, mid)
            except BrokerUnavailable as exc:
                return BatchResult(acked, duplicates, exc)
            acked += 1
            duplicates += ack.duplicate
        return BatchResult(acked, duplicates)

    async def close(self) -> None:
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2)
            except Exception:
                pass
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()


def _enum_value(value: object) -> str:
    return str(getattr(value, "value", value))


def _unavailable(what: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}")


@attrs.define(eq=False)
class NatsBroker:
    """The publisher's broker: trio coroutines in front of :class:`_Edge` on ``bridge``."""

    bridge: LoopThread
    settings: BrokerSettings
    _edge: _Edge = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._edge = _Edge(self.settings)

    @property
    def connected(self) -> bool:
        """Whether the client is connected now (read across threads: a plain attribute)."""
        nc = self._edge.nc
        return bool(nc is not None and nc.is_connected)

    @property
    def last_error(self) -> str | None:
        return self._edge.last_error

    @property
    def reconnects(self) -> int:
        return self._edge.reconnects

    async def wait_connected(self, timeout: float = 5.0) -> None:
        await self.bridge.run(self._edge.wait_connected, timeout)

    async def ensure_stream(self) -> StreamShape:
        return await self.bridge.run(self._edge.ensure_stream)

    async def last_seq(self, host: str) -> int:
        return await self.bridge.run(self._edge.last_seq, host)

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> PublishAck:
        return await self.bridge.run(self._edge.publish, subject, payload, msg_id)

    async def publish_batch(self, items: list[tuple[str, bytes, str]]) -> BatchResult:
        return await self.bridge.run(self._edge.publish_batch, items)

    async def close(self) -> None:
        await self.bridge.run(self._edge.close)
