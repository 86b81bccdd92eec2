"""``vsv fleet events``: the fleet stream read back, in stream order (asyncio, nats-py).

This runs in the ``vsv`` process, which has no trio loop to share, so it uses nats-py on a plain
``asyncio.run``: no bridge is needed.

Order: the stream holds messages in the order the server stored them, and each host publishes
its events one at a time in its journal's order (supervisor/fleet/publisher.py), so reading the
stream in order gives every host's events in that host's order.

Filters: ``--domain`` is a server-side filter subject; ``--host`` alone would need three
(``guests.H.>``, ``networks.H.>``, ``hosts.H.>``), which NATS 2.9 cannot take in one consumer,
so it is applied here, on the messages as they arrive.

Positions: ``--since SEQ`` is a *stream* sequence number (every JSON line carries it as
``stream_seq``), the fleet-wide position; ``seq`` in a line is the host's journal number.

Durable consumers (``--durable NAME``) keep their position on the server: every batch printed is
acknowledged (ack-all on its last message) once it is written out, and a stop by SIGINT or
SIGTERM acknowledges what was printed before exiting. Messages fetched but not printed when the
reader stopped are pending on the server; a JetStream consumer would send them again only after
its ack wait, behind newer ones, so a run that finds pending messages puts the consumer back
right after the last acknowledged one (delete and create at that position) before reading. A
``SIGKILL`` between printing and acknowledging may print the last batch again: at least once,
never a hole.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
from typing import Any, TextIO

from supervisor.fleet.subjects import (
    FleetConfigError,
    consumer_filter,
    decode_token,
    matches,
    servers_of,
)

#: messages fetched per request
BATCH = 256
#: how long one fetch waits for messages when following (then it simply asks again)
FOLLOW_WAIT = 5.0


def parse_time(text: str) -> dt.datetime:
    """``--since-time``: Unix seconds or ISO 8601 (a time without zone is UTC)."""
    try:
        return dt.datetime.fromtimestamp(float(text), tz=dt.UTC)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FleetConfigError(
            f"--since-time {text!r}: expected Unix seconds or ISO 8601 (2025-01-31T12:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def line_of(record: dict[str, Any], as_json: bool) -> str:
    """One output line for a message's record (with ``stream_seq`` already in it)."""
    if as_json:
        return json.dumps(record, sort_keys=True, separators=(",", ":"))
    from supervisor.clientcli import format_event

    return f"{record.get('host', '-')} {format_event(record)}"


def record_of(subject: str, data: bytes, stream_seq: int) -> dict[str, Any]:
    """A message as the record it carries, plus ``stream_seq`` (and the host and name read
    from the subject when the body lacks them, so a foreign message still prints)."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    record: dict[str, Any] = value if isinstance(value, dict) else {}
    tokens = subject.split(".")
    record.setdefault("host", tokens[1] if len(tokens) > 1 else None)
    record.setdefault("seq", None)
    record.setdefault("type", tokens[-1] if tokens else None)
    if tokens[0] == "guests" and len(tokens) > 3:
        record.setdefault("domain", decode_token(tokens[2]))
    record.setdefault("domain", None)
    record.setdefault("detail", None)
    record.setdefault("time", None)
    record["stream_seq"] = stream_seq
    return record


def cmd_events(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """``vsv fleet events``; 0 when done (or stopped by SIGTERM), 1 on an error, 130 on ^C."""
    if args.since is not None and args.since < 0:
        print("vsv fleet events: --since: expected a stream sequence number, 0 or more", file=err)
        return 2
    try:
        start_time = parse_time(args.since_time) if args.since_time is not None else None
        servers = servers_of(args.nats)
    except FleetConfigError as exc:
        print(f"vsv fleet events: {exc}", file=err)
        return 2
    reader = _Reader(args, servers, start_time, out, err)
    try:
        return asyncio.run(reader.main())
    except KeyboardInterrupt:
        return 130


class _Reader:
    def __init__(
        self,
        args: argparse.Namespace,
        servers: list[str],
        start_time: dt.datetime | None,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.args = args
        self.servers = servers
        self.start_time = start_time
        self.out = out
        self.err = err
        self.filter = consumer_filter(args.host, args.domain)
        self.last_stream_seq: int | None = None
        self.unacked: Any = None  # the last printed message of a durable, not yet acked
        self.stopped = False  # SIGTERM

    async def main(self) -> int:
        import nats
        from nats.errors import Error as NatsError

        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None

        def on_term() -> None:
            # nats-py's fetch may take a cancellation for a timeout, so the loop also checks
            self.stopped = True
            main_task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        options: dict[str, Any] = {}
        if self.args.nats_creds:
            options["user_credentials"] = self.args.nats_creds
        try:
            nc = await nats.connect(
                self.servers,
                name="vsv fleet events",
                connect_timeout=2,
                max_reconnect_attempts=-1 if self.args.follow else 3,
                reconnect_time_wait=1,
                **options,
            )
        except (NatsError, OSError) as exc:
            print(f"vsv fleet events: cannot connect to NATS: {exc}", file=self.err)
            return 1
        try:
            return await self._read(nc)
        except asyncio.CancelledError:
            if self.stopped:
                return 0
            raise
        except FleetConfigError as exc:
            print(f"vsv fleet events: {exc}", file=self.err)
            return 1
        except (NatsError, OSError) as exc:
            print(f"vsv fleet events: {type(exc).__name__}: {exc}", file=self.err)
            return 1
        finally:
            await asyncio.shield(self._finish(nc))
            loop.remove_signal_handler(signal.SIGTERM)

    async def _finish(self, nc: Any) -> None:
        """Acknowledge what was printed (durable), then close the connection."""
        try:
            self.out.flush()
            if self.unacked is not None:
                await asyncio.wait_for(self.unacked.ack_sync(), 3)
                self.unacked = None
        except Exception as exc:
            print(f"vsv fleet events: could not acknowledge the last batch: {exc}", file=self.err)
        try:
            await asyncio.wait_for(nc.close(), 3)
        except Exception:
            pass

    def _config(self, start_seq: int | None) -> Any:
        from nats.js import api

        args = self.args
        durable = args.durable
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.ALL if durable else api.AckPolicy.NONE,
            filter_subject=self.filter,
            inactive_threshold=None if durable else 60.0,
            max_ack_pending=BATCH * 4 if durable else None,
            mem_storage=None if durable else True,
        )
        if start_seq is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_seq
        elif args.since is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = args.since + 1
        elif self.start_time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.start_time
        elif args.follow and not durable:
            config.deliver_policy = api.DeliverPolicy.NEW
        else:
            config.deliver_policy = api.DeliverPolicy.ALL
        return config

    async def _subscribe(self, js: Any) -> Any:
        """The pull subscription: a new ephemeral consumer, or the durable (made or resumed)."""
        from nats.js.errors import NotFoundError

        args = self.args
        stream = args.stream
        try:
            await js.stream_info(stream)
        except NotFoundError:
            raise FleetConfigError(f"no stream {stream!r} on the server") from None
        if args.durable is None:
            start = None if self.last_stream_seq is None else self.last_stream_seq + 1
            return await js.pull_subscribe(
                self.filter or "", stream=stream, config=self._config(start)
            )
        try:
            info = await js.consumer_info(stream, args.durable)
        except NotFoundError:
            await js.add_consumer(stream, self._config(None))
        else:
            if (info.config.filter_subject or None) != self.filter:
                raise FleetConfigError(
                    f"durable {args.durable!r} reads {info.config.filter_subject or 'everything'}"
                    f", not {self.filter or 'everything'}: use another name for other filters"
                )
            if args.since is not None or self.start_time is not None:
                print(
                    f"vsv fleet events: durable {args.durable!r} exists; it resumes where it "
                    "stopped (--since applies when it is created)",
                    file=self.err,
                )
            if info.num_ack_pending:
                # fetched but never printed: start again right after what was acknowledged
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                await js.delete_consumer(stream, args.durable)
                await js.add_consumer(stream, self._config(floor + 1))
        return await js.pull_subscribe_bind(durable=args.durable, stream=stream)

    async def _read(self, nc: Any) -> int:
        from nats.errors import TimeoutError as NatsTimeout

        js = nc.jetstream()
        sub = await self._subscribe(js)
        if not self.args.follow:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not info.num_ack_pending:
                return 0
        while not self.stopped:
            try:
                msgs = await sub.fetch(BATCH, timeout=FOLLOW_WAIT)
            except NatsTimeout:
                if not self.args.follow:
                    return 0
                continue
            except Exception:
                if not self.args.follow:
                    raise
                # the server went away (an ephemeral consumer with it): read on from here
                await asyncio.sleep(1)
                if nc.is_connected:
                    sub = await self._subscribe(js)
                continue
            for msg in msgs:
                self.last_stream_seq = msg.metadata.sequence.stream
                if matches(msg.subject, self.args.host, self.args.domain):
                    record = record_of(msg.subject, msg.data, msg.metadata.sequence.stream)
                    self.out.write(line_of(record, self.args.json) + "\n")
            self.out.flush()
            if msgs and self.args.durable is not None:
                self.unacked = msgs[-1]
                await msgs[-1].ack_sync()
                self.unacked = None
            if not self.args.follow and msgs and msgs[-1].metadata.num_pending == 0:
                return 0
        return 0
