"""The REST application: an ASGI callable written against :class:`SupervisorFacade` and the journal.

HTTP parsing and connection handling are hypercorn's; this module only routes, validates and
answers. Theory of operation:

- Every request is matched against :data:`ROUTES` (method, path pattern). A read-only instance
  answers every method but GET with 403 ``read-only`` before routing, so no mutation can slip
  through a route added later. A connection the server refused (its peer is in another pid or
  mount namespace, :mod:`supervisor.api.peer`) is answered 403 ``forbidden`` before anything
  else, also before routing, and then closed.
- Errors are RFC 9457 problem details (``application/problem+json``) with a stable ``code`` and
  the ``field`` that was wrong; the project's error tree maps onto status codes in
  :func:`problem_for`.
- Every list and every mutation answer carries ``seq``: the journal's last sequence number at
  the moment the answer was computed. Computing the answer and reading ``seq`` happen without an
  await in between, so "list, then watch events with ``since=seq``" has no race.
- Event streams read from the journal only (never from a live queue): a stream is a cursor
  (the last seq it sent) that wakes when the journal grows. So delivery is in order and exactly
  once by construction, a consumer that stops reading holds nothing but its cursor (it slows
  nobody), and a consumer behind retention gets the journal's explicit gap record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from supervisor import __version__
from supervisor.asgi import Receive, Scope, Send, lifespan
from supervisor.errors import (
    ConflictError,
    InvalidDocument,
    InvalidOperation,
    NotFound,
    RuntimeFailure,
    VsvError,
)
from supervisor.facade import DomainStatus, Lease, SupervisorFacade
from supervisor.journal import Entry, Journal
from supervisor.model import Domain, Network

if TYPE_CHECKING:
    from supervisor.api.limits import ApiStatistics
    from supervisor.console import ConsoleSession
    from supervisor.metrics import RequestCounts


log = logging.getLogger("supervisor.api")

#: the most events one stream write carries; bounds the time one stream holds the event loop
STREAM_BATCH = 500
MAX_BODY = 1 << 20


class Codec(Protocol):
    """The XML codec the API needs (:mod:`supervisor.xml` in the daemon)."""

    def parse_domain(self, data: bytes, *, path: str | None = None) -> Domain: ...
    def format_domain(self, domain: Domain) -> str: ...
    def parse_network(self, data: bytes, *, path: str | None = None) -> Network: ...
    def format_network(self, network: Network) -> str: ...


class XmlCodec:
    """The real codec, imported on first use (the package may load before the codec is needed)."""

    def parse_domain(self, data: bytes, *, path: str | None = None) -> Domain:
        from supervisor import xml

        return xml.parse_domain(data, path=path)

    def format_domain(self, domain: Domain) -> str:
        from supervisor import xml

        return xml.format_domain(domain)

    def parse_network(self, data: bytes, *, path: str | None = None) -> Network:
        from supervisor import xml

        return xml.parse_network(data, path=path)

    def format_network(self, network: Network) -> str:
        from supervisor import xml

        return xml.format_network(network)


@attrs.frozen
class PeerCred:
    """Who is on the other end of a Unix socket connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class HttpProblem(Exception):
    """An answer that is an error: raised by handlers, turned into a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.problems = problems

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": f"urn:vsv:problem:{self.code}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            "field": self.field,
        }
        if self.problems is not None:
            doc["problems"] = self.problems
        return doc


_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    426: "Upgrade Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_for(exc: VsvError, *, field: str | None) -> HttpProblem:
    """Map the project's error tree onto HTTP (one stable ``code`` per error class)."""
    if isinstance(exc, InvalidDocument):
        return HttpProblem(400, "invalid-document", str(exc), field="body", problems=exc.problems)
    if isinstance(exc, NotFound):
        return HttpProblem(404, "not-found", str(exc), field=field)
    if isinstance(exc, ConflictError):
        return HttpProblem(409, "conflict", str(exc), field=field)
    if isinstance(exc, InvalidOperation):
        return HttpProblem(409, "invalid-operation", str(exc), field=field)
    if isinstance(exc, RuntimeFailure):
        return HttpProblem(500, "runtime-failure", str(exc))
    return HttpProblem(500, "error", str(exc))


@attrs.frozen
class Reply:
    """A complete (non-streamed) answer."""

    status: int
    body: bytes
    content_type: str = "application/json"
    #: end the connection after this answer (``Connection: close``)
    close: bool = False


def json_bytes(value: Any) -> bytes:
    """Compact JSON; values the facade returns that JSON lacks (tuples, enums) degrade to str."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _ok(value: Any, status: int = 200) -> Reply:
    return Reply(status, json_bytes(value))


def status_json(status: DomainStatus) -> dict[str, Any]:
    return attrs.asdict(status)


def lease_json(lease: Lease) -> dict[str, Any]:
    return attrs.asdict(lease)


@attrs.frozen
class Request:
    """What a handler sees."""

    method: str
    path: str
    params: Mapping[str, str]  # path parameters
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


# --- query parameter parsing (each failure names the parameter) -----------------------------


def _int_param(
    query: Mapping[str, str], name: str, *, minimum: int, maximum: int = 1 << 62
) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw, 10)
    except ValueError:
        raise HttpProblem(400, "bad-parameter", f"{name} must be an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise HttpProblem(
            400, "bad-parameter", f"{name} must be in {minimum}..{maximum}", field=name
        )
    return value


def _float_param(
    query: Mapping[str, str], name: str, *, minimum: float, maximum: float
) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HttpProblem(400, "bad-parameter", f"{name} must be a number", field=name) from None
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise HttpProblem(
            400, "bad-parameter", f"{name} must be in {minimum}..{maximum}", field=name
        )
    return value


def _bool_param(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise HttpProblem(400, "bad-parameter", f"{name} must be true or false", field=name)


def _list_param(query: Mapping[str, str], name: str) -> frozenset[str] | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    return frozenset(part for part in raw.split(",") if part)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 53


def _json_body(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(request.body)
    except ValueError:
        raise HttpProblem(400, "bad-body", "the body must be a JSON object", field="body") from None
    if not isinstance(value, dict):
        raise HttpProblem(400, "bad-body", "the body must be a JSON object", field="body")
    return value


# --- event stream formatting ----------------------------------------------------------------


@attrs.frozen
class EventFilter:
    """Which events a stream wants; gap records always pass (a hole must never be silent)."""

    domains: frozenset[str] | None = None
    types: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    def accepts(self, record: Mapping[str, Any]) -> bool:
        if record.get("kind") == "gap":
            return True
        if self.domains is not None and record.get("domain") not in self.domains:
            return False
        if self.types is not None and str(record.get("type", "")).upper() not in self.types:
            return False
        return self.kinds is None or record.get("kind") in self.kinds


def sse_frame(entry_seq: int, record: Mapping[str, Any], line: bytes) -> bytes:
    """One Server-Sent Events frame; ``id`` is the seq so ``Last-Event-ID`` resumes."""
    kind = str(record.get("kind", "event"))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (entry_seq, kind.encode(), line.rstrip(b"\n"))


def heartbeat_record(position: int, now: float) -> dict[str, Any]:
    """Sent when nothing happened for ``heartbeat`` seconds; ``seq`` is the stream's position."""
    return {"kind": "heartbeat", "seq": position, "time": now}


# --- the application ------------------------------------------------------------------------

Handler = Callable[["ApiApp", Request], Awaitable[Reply]]


@attrs.define(eq=False)
class ApiApp:
    """The ASGI application for one socket (read-write or read-only).

    Call :meth:`close` when done to unregister from the journal. ``peer`` (passed per
    connection by :mod:`supervisor.api.server`) is logged with every mutation; ``refusal``
    (also per connection) turns every answer on that connection into 403 ``forbidden``.
    ``connections`` reports the server's connection counts for ``GET /v1/supervisor``.
    """

    facade: SupervisorFacade
    journal: Journal
    read_only: bool = False
    heartbeat: float = 15.0
    codec: Codec = attrs.field(factory=XmlCodec)
    started_at: float = attrs.field(factory=time.time)
    connections: Callable[[], ApiStatistics] | None = None
    #: answers counted by socket ("rw"/"ro"), method and status, for /metrics
    requests: RequestCounts | None = None
    _grown: trio.Event = attrs.field(factory=trio.Event, init=False)
    _unlisten: Callable[[], None] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._unlisten = self.journal.add_listener(self._on_append)

    def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _on_append(self, seq: int) -> None:
        grown, self._grown = self._grown, trio.Event()
        grown.set()

    async def wait_beyond(self, seq: int) -> None:
        """Return once the journal holds a record after ``seq``."""
        while self.journal.last_seq() <= seq:
            await self._grown.wait()

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        peer: PeerCred | None = None,
        refusal: str | None = None,
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, peer=peer, refusal=refusal)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        try:
            if refusal is not None:
                _refuse_foreign(refusal)
            if method != "GET" and self.read_only:
                _refuse_read_only()
            if method != "GET":
                log.info(
                    "api mutation %s %s by uid=%s pid=%s",
                    method,
                    path,
                    peer.uid if peer else None,
                    peer.pid if peer else None,
                    extra={
                        "method": method,
                        "path": path,
                        "peer_uid": peer.uid if peer else None,
                        "peer_pid": peer.pid if peer else None,
                        "peer_gid": peer.gid if peer else None,
                    },
                )
            handler, params = _route(method, path, scope.get("raw_path"))
            query = _parse_query(scope.get("query_string", b""))
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            if handler is _EVENTS:
                self._count(method, 200)
                await self._events(query, headers, receive, send)
                return
            body = await _read_body(receive)
            request = Request(method, path, params, query, headers, body)
            reply = await handler(self, request)
        except HttpProblem as problem:
            reply = Reply(
                problem.status,
                json_bytes(problem.document()),
                "application/problem+json",
                close=refusal is not None,
            )
        except Exception:
            log.exception("api: unexpected failure in %s %s", method, path)
            internal = HttpProblem(500, "internal", "unexpected failure; see the supervisor's log")
            reply = Reply(500, json_bytes(internal.document()), "application/problem+json")
        self._count(method, reply.status)
        await _send_reply(send, reply, seq=self.journal.last_seq())

    def _count(self, method: str, status: int) -> None:
        if self.requests is not None:
            self.requests.add("ro" if self.read_only else "rw", method, status)

    # --- the event stream ---------------------------------------------------------------------

    async def _events(
        self, query: Mapping[str, str], headers: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        follow = _bool_param(query, "follow") or False
        since = _int_param(query, "since", minimum=0)
        limit = _int_param(query, "limit", minimum=1)
        heartbeat = _float_param(query, "heartbeat", minimum=0.01, maximum=3600.0)
        fmt = query.get("format")
        if fmt not in (None, "ndjson", "sse"):
            raise HttpProblem(400, "bad-parameter", "format must be ndjson or sse", field="format")
        sse = fmt == "sse" or (fmt is None and "text/event-stream" in headers.get("accept", ""))
        if since is None and sse and headers.get("last-event-id", "").isdigit():
            since = int(headers["last-event-id"])
        if since is None:
            since = self.journal.last_seq() if follow else 0
        flt = EventFilter(
            domains=_list_param(query, "domain"),
            types=frozenset(t.upper() for t in _list_param(query, "type") or ()) or None,
            kinds=_list_param(query, "kind"),
        )
        interval = heartbeat if heartbeat is not None else self.heartbeat
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream" if sse else b"application/x-ndjson"),
                    (b"cache-control", b"no-store"),
                    (b"x-vsv-seq", str(self.journal.last_seq()).encode()),
                ],
            }
        )
        disconnected = False

        async def watch_disconnect(scope: trio.CancelScope) -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery.cancel_scope)
            await self._stream(send, since, flt, limit, follow, interval, sse)
            nursery.cancel_scope.cancel()
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(
        self,
        send: Send,
        position: int,
        flt: EventFilter,
        limit: int | None,
        follow: bool,
        interval: float,
        sse: bool,
    ) -> None:
        sent = 0
        while True:
            entries: list[Entry] = self.journal.entries_since(position, limit=STREAM_BATCH)
            if entries:
                chunk: list[bytes] = []
                for entry in entries:
                    position = entry.seq
                    if not flt.accepts(entry.record):
                        continue
                    chunk.append(
                        sse_frame(entry.seq, entry.record, entry.line) if sse else entry.line
                    )
                    sent += 1
                    if limit is not None and sent >= limit:
                        break
                if chunk:
                    await send(
                        {"type": "http.response.body", "body": b"".join(chunk), "more_body": True}
                    )
                if limit is not None and sent >= limit:
                    return
                continue
            if not follow:
                return
            with trio.move_on_after(interval) as waited:
                await self.wait_beyond(position)
            if waited.cancelled_caught:
                beat = heartbeat_record(position, time.time())
                body = (
                    b"event: heartbeat\ndata: %s\n\n" % json_bytes(beat)
                    if sse
                    else json_bytes(beat) + b"\n"
                )
                await send({"type": "http.response.body", "body": body, "more_body": True})

    # --- domains ------------------------------------------------------------------------------

    async def list_domains(self, request: Request) -> Reply:
        seq = self.journal.last_seq()
        rows = [status_json(s) for s in self.facade.list_domains()]
        return _ok({"seq": seq, "domains": rows})

    async def define_domain(self, request: Request) -> Reply:
        transient = _bool_param(request.query, "transient") or False
        domain = _parse(self.codec.parse_domain, request.body)
        try:
            if transient:
                # vsv create: start it now, with no stored definition (gone when it stops)
                status = await self.facade.create_domain(domain)
                return _ok({"seq": self.journal.last_seq(), "domain": status_json(status)}, 201)
            stored = await self.facade.define_domain(domain)
        except VsvError as exc:
            raise problem_for(exc, field="body") from exc
        status = _call(self.facade.domain_status, stored.name, field="name")
        return _ok({"seq": self.journal.last_seq(), "domain": status_json(status)}, 201)

    async def domain_info(self, request: Request) -> Reply:
        name = request.params["name"]
        seq = self.journal.last_seq()
        status = _call(self.facade.domain_status, name, field="name")
        domain = _call(self.facade.get_domain, name, field="name")
        info = status_json(status) | {
            "seq": seq,
            "title": domain.title,
            "hostname": domain.hostname,
            "memory_kib": domain.memory_kib,
            "current_memory_kib": domain.current_memory_kib,
            "vcpu": domain.vcpu,
            "on_poweroff": domain.on_poweroff,
            "on_reboot": domain.on_reboot,
            "on_crash": domain.on_crash,
            "interfaces": len(domain.interfaces),
            "persistent": status.persistent,
            "cpu_time_ns": None,
            "memory_used_kib": None,
            "log": self.facade.domain_log_path(name),
        }
        if status.state in ("RUNNING", "PAUSED", "SHUTDOWN"):
            [(_, figures)] = await self._stats([name])
            time_ns, used = figures.get("cpu.time"), figures.get("balloon.current")
            info["cpu_time_ns"] = time_ns if isinstance(time_ns, int) else None
            info["memory_used_kib"] = used if isinstance(used, int) else None
        return _ok(info)

    async def _stats(self, names: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
        try:
            return await self.facade.domain_stats(names)
        except VsvError as exc:
            raise problem_for(exc, field="name" if names and len(names) == 1 else "domain") from exc

    async def domain_stats(self, request: Request) -> Reply:
        name = request.params["name"]
        seq = self.journal.last_seq()  # the guests' states the figures go with
        [(_, figures)] = await self._stats([name])
        return _ok({"seq": seq, "name": name, "stats": figures})

    async def stats(self, request: Request) -> Reply:
        raw = request.query.get("domain")
        names = [n for n in raw.split(",") if n] if raw else None
        seq = self.journal.last_seq()
        answers = await self._stats(names)
        return _ok(
            {
                "seq": seq,
                "domains": [{"name": n, "stats": figures} for n, figures in answers],
            }
        )

    async def undefine_domain(self, request: Request) -> Reply:
        await _acall(self.facade.undefine_domain, request.params["name"])
        return _ok({"seq": self.journal.last_seq()})

    async def domain_xml(self, request: Request) -> Reply:
        inactive = _bool_param(request.query, "inactive") or False
        get = self.facade.get_domain_config if inactive else self.facade.get_domain
        domain = _call(get, request.params["name"], field="name")
        return Reply(200, self.codec.format_domain(domain).encode(), "application/xml")

    async def domain_state(self, request: Request) -> Reply:
        seq = self.journal.last_seq()
        status = _call(self.facade.domain_status, request.params["name"], field="name")
        return _ok(
            {"seq": seq, "name": status.name, "state": status.state, "reason": status.reason}
        )

    async def domain_action(self, request: Request) -> Reply:
        name = request.params["name"]
        action = request.params["action"]
        facade = self.facade
        before = _call(facade.domain_status, name, field="name")
        if action == "start":
            await _acall(facade.start_domain, name)
        elif action == "shutdown":
            timeout = _float_param(request.query, "timeout", minimum=0.0, maximum=86400.0)
            try:
                await facade.shutdown_domain(name, timeout=timeout)
            except VsvError as exc:
                raise problem_for(exc, field="name") from exc
        elif action == "destroy":
            await _acall(facade.destroy_domain, name)
        elif action == "reboot":
            await _acall(facade.reboot_domain, name)
        elif action == "suspend":
            await _acall(facade.suspend_domain, name)
        elif action == "resume":
            await _acall(facade.resume_domain, name)
        else:  # pragma: no cover - the router only lets the actions above through
            raise HttpProblem(404, "no-route", f"no action {action!r}", field="action")
        seq = self.journal.last_seq()
        try:
            status = facade.domain_status(name)
        except NotFound:
            # a transient guest that stopped is gone already: its last state, stopped
            reason = {"destroy": "DESTROYED", "shutdown": "SHUTDOWN"}.get(action, "UNKNOWN")
            status = attrs.evolve(
                before, state="SHUTOFF", reason=reason, id=None, init_pid=None, started_at=None
            )
        return _ok({"seq": seq, "domain": status_json(status)})

    async def set_autostart(self, request: Request) -> Reply:
        body = _json_body(request)
        value = body.get("autostart")
        if not isinstance(value, bool):
            raise HttpProblem(400, "bad-body", "autostart must be true or false", field="autostart")
        try:
            await self.facade.set_autostart(request.params["name"], value)
        except VsvError as exc:
            raise problem_for(exc, field="name") from exc
        return _ok({"seq": self.journal.last_seq(), "autostart": value})

    async def get_schedinfo(self, request: Request) -> Reply:
        params = _call(self.facade.schedinfo, request.params["name"], field="name")
        return _ok({"seq": self.journal.last_seq(), "params": dict(params)})

    async def set_schedinfo(self, request: Request) -> Reply:
        body = _json_body(request)
        raw = body.get("params")
        if not isinstance(raw, dict) or not raw:
            raise HttpProblem(400, "bad-body", "params must be a non-empty object", field="params")
        params: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise HttpProblem(
                    400,
                    "bad-body",
                    f"params.{key} must be a string or integer",
                    field=f"params.{key}",
                )
            params[key] = str(value)
        # neither flag: the supervisor applies libvirt's "current" (live if running, else config)
        live = body.get("live", False)
        config = body.get("config", False)
        for flag, value in (("live", live), ("config", config)):
            if not isinstance(value, bool):
                raise HttpProblem(400, "bad-body", f"{flag} must be true or false", field=flag)
        try:
            result = await self.facade.set_schedinfo(
                request.params["name"], params, live=live, config=config
            )
        except InvalidDocument as exc:
            raise HttpProblem(
                400, "invalid-parameter", str(exc), field="params", problems=exc.problems
            ) from exc
        except VsvError as exc:
            raise problem_for(exc, field="name") from exc
        except ValueError as exc:
            raise HttpProblem(400, "invalid-parameter", str(exc), field="params") from exc
        return _ok({"seq": self.journal.last_seq(), "params": dict(result)})

    async def get_memory(self, request: Request) -> Reply:
        memory = _call(self.facade.memory_params, request.params["name"], field="name")
        return _ok({"seq": self.journal.last_seq(), "memory": memory})

    async def set_memory(self, request: Request) -> Reply:
        body = _json_body(request)
        current = body.get("current_kib")
        if current is not None and not _positive_int(current):
            raise HttpProblem(
                400, "bad-body", "current_kib must be a positive integer", field="current_kib"
            )
        raw = body.get("memtune") or {}
        if not isinstance(raw, dict):
            raise HttpProblem(400, "bad-body", "memtune must be an object", field="memtune")
        tune: dict[str, int] = {}
        for key, value in raw.items():
            if key not in ("hard_limit_kib", "soft_limit_kib", "swap_hard_limit_kib"):
                raise HttpProblem(
                    400,
                    "bad-body",
                    f"memtune.{key} is not a memtune parameter",
                    field=f"memtune.{key}",
                )
            if not _positive_int(value):
                raise HttpProblem(
                    400,
                    "bad-body",
                    f"memtune.{key} must be a positive integer",
                    field=f"memtune.{key}",
                )
            tune[key] = value
        if current is None and not tune:
            raise HttpProblem(
                400, "bad-body", "nothing to change: give current_kib or memtune", field="body"
            )
        live, config = body.get("live", False), body.get("config", False)
        for flag, value in (("live", live), ("config", config)):
            if not isinstance(value, bool):
                raise HttpProblem(400, "bad-body", f"{flag} must be true or false", field=flag)
        try:
            memory = await self.facade.set_memory(
                request.params["name"], current_kib=current, memtune=tune, live=live, config=config
            )
        except InvalidDocument as exc:
            raise HttpProblem(
                400, "invalid-parameter", str(exc), field="body", problems=exc.problems
            ) from exc
        except VsvError as exc:
            raise problem_for(exc, field="name") from exc
        return _ok({"seq": self.journal.last_seq(), "memory": memory})

    async def domain_interfaces(self, request: Request) -> Reply:
        name = request.params["name"]
        rows = _call(self.facade.domain_interfaces, name, field="name")
        return _ok({"seq": self.journal.last_seq(), "interfaces": rows})

    # --- the console (a WebSocket) ---------------------------------------------------------------

    async def console_http(self, request: Request) -> Reply:
        """The console's path asked without a WebSocket upgrade: say how to ask."""
        _call(self.facade.get_domain, request.params["name"], field="name")
        raise HttpProblem(
            426,
            "upgrade-required",
            "the console is a WebSocket: connect with 'Upgrade: websocket' (vsv console)",
        )

    async def _websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        peer: PeerCred | None,
        refusal: str | None,
    ) -> None:
        """``GET /v1/domains/{name}/console`` as a WebSocket (see docs/api.md): refusals are
        ordinary problem answers to the upgrade request; once accepted, binary messages are the
        terminal's bytes both ways and text messages small JSON objects."""
        await receive()  # websocket.connect
        try:
            name, force, session = self._attach_console(scope, peer, refusal)
        except HttpProblem as problem:
            await _deny_websocket(send, problem, seq=self.journal.last_seq())
            return
        log.info(
            "api console %s attached by uid=%s pid=%s%s",
            name,
            session.client.uid,
            session.client.pid,
            " (forced)" if force else "",
            extra={
                "domain": name,
                "peer_uid": session.client.uid,
                "peer_pid": session.client.pid,
                "force": force,
            },
        )
        try:
            await send({"type": "websocket.accept"})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_console_output, session, send, nursery.cancel_scope)
                while (message := await receive())["type"] == "websocket.receive":
                    if message.get("bytes") is not None:
                        session.write(message["bytes"])
                    elif not _console_control(session, message.get("text")):
                        await send({"type": "websocket.close", "code": 1007})
                        break
                nursery.cancel_scope.cancel()
        finally:
            session.detach()
            log.info("api console %s detached (%s)", name, session.ended, extra={"domain": name})

    def _attach_console(
        self, scope: Scope, peer: PeerCred | None, refusal: str | None
    ) -> tuple[str, bool, ConsoleSession]:
        """The checks of a console request, then the attach: (name, force, session)."""
        from supervisor.console import ConsoleBusy, ConsoleClient, NoConsole

        if refusal is not None:
            _refuse_foreign(refusal)
        if self.read_only:
            _refuse_read_only(
                "the console takes input for the guest: it is served on the read-write socket only"
            )
        path: str = scope["path"]
        handler, params = _route("GET", path)
        if handler is not ApiApp.console_http:
            _no_route(path)
        name = params["name"]
        force = _bool_param(_parse_query(scope.get("query_string", b"")), "force") or False
        client = ConsoleClient(pid=peer.pid if peer else None, uid=peer.uid if peer else None)
        try:
            return name, force, self.facade.domain_console(name).attach(client, force=force)
        except NoConsole as exc:
            raise HttpProblem(409, "no-console", str(exc), field="name") from exc
        except ConsoleBusy as exc:
            raise HttpProblem(409, "console-busy", str(exc), field="force") from exc
        except VsvError as exc:
            raise problem_for(exc, field="name") from exc

    # --- networks -----------------------------------------------------------------------------

    async def list_networks(self, request: Request) -> Reply:
        seq = self.journal.last_seq()
        rows = [attrs.asdict(n) for n in self.facade.list_networks()]
        return _ok({"seq": seq, "networks": rows})

    async def define_network(self, request: Request) -> Reply:
        network = _parse(self.codec.parse_network, request.body)
        try:
            stored = await self.facade.define_network(network)
        except VsvError as exc:
            raise problem_for(exc, field="body") from exc
        return _ok({"seq": self.journal.last_seq(), "network": self._network_row(stored.name)}, 201)

    def _network_row(self, name: str) -> dict[str, Any]:
        for row in self.facade.list_networks():
            if row.name == name:
                return attrs.asdict(row)
        raise HttpProblem(404, "not-found", f"no network named {name!r}", field="name")

    async def network_info(self, request: Request) -> Reply:
        name = request.params["name"]
        seq = self.journal.last_seq()
        _call(self.facade.get_network, name, field="name")
        return _ok(self._network_row(name) | {"seq": seq})

    async def undefine_network(self, request: Request) -> Reply:
        await _acall(self.facade.undefine_network, request.params["name"])
        return _ok({"seq": self.journal.last_seq()})

    async def set_network_autostart(self, request: Request) -> Reply:
        body = _json_body(request)
        value = body.get("autostart")
        if not isinstance(value, bool):
            raise HttpProblem(400, "bad-body", "autostart must be true or false", field="autostart")
        try:
            await self.facade.set_network_autostart(request.params["name"], value)
        except VsvError as exc:
            raise problem_for(exc, field="name") from exc
        return _ok({"seq": self.journal.last_seq(), "autostart": value})

    async def network_xml(self, request: Request) -> Reply:
        network = _call(self.facade.get_network, request.params["name"], field="name")
        return Reply(200, self.codec.format_network(network).encode(), "application/xml")

    async def network_action(self, request: Request) -> Reply:
        name = request.params["name"]
        if request.params["action"] == "start":
            await _acall(self.facade.start_network, name)
        else:
            await _acall(self.facade.destroy_network, name)
        seq = self.journal.last_seq()
        return _ok({"seq": seq, "network": self._network_row(name)})

    async def network_leases(self, request: Request) -> Reply:
        seq = self.journal.last_seq()
        leases = _call(self.facade.network_leases, request.params["name"], field="name")
        return _ok({"seq": seq, "leases": [lease_json(lease) for lease in leases]})

    # --- the supervisor -----------------------------------------------------------------------

    async def supervisor_info(self, request: Request) -> Reply:
        return _ok(
            {
                "seq": self.journal.last_seq(),
                "version": __version__,
                "pid": os.getpid(),
                "uptime": time.time() - self.started_at,
                "read_only": self.read_only,
                "api": attrs.asdict(self.connections()) if self.connections is not None else None,
                "journal": attrs.asdict(self.journal.statistics()),
                "statistics": dict(self.facade.statistics()),
            }
        )

    async def openapi(self, request: Request) -> Reply:
        from supervisor.api.openapi import openapi_document

        return _ok(openapi_document())


# --- helpers ---------------------------------------------------------------------------------


def _refuse_read_only(
    detail: str = "this is the read-only socket: use the read-write socket to change anything",
) -> None:
    raise HttpProblem(403, "read-only", detail)


def _no_route(path: str) -> None:
    raise HttpProblem(404, "no-route", f"no WebSocket endpoint at {path}", field="path")


def _refuse_foreign(detail: str) -> None:
    raise HttpProblem(403, "forbidden", detail)


async def _console_output(session: ConsoleSession, send: Send, done: trio.CancelScope) -> None:
    """The guest's output to the client; when the session ends (taken over by another client,
    the guest stopped) a ``closed`` message says why, and the WebSocket is closed."""
    while True:
        out = await session.next_output()
        if out.skipped:
            text = json.dumps({"type": "skipped", "bytes": out.skipped})
            await send({"type": "websocket.send", "text": text})
        if out.data:
            await send({"type": "websocket.send", "bytes": out.data})
        if out.ended is not None:
            closed = {"type": "closed", "reason": out.ended, "detail": out.detail}
            await send({"type": "websocket.send", "text": json.dumps(closed)})
            await send({"type": "websocket.close", "code": 1000})
            done.cancel()
            return


def _console_control(session: ConsoleSession, text: str | None) -> bool:
    """A text message from a console client: ``{"type": "resize", "rows": R, "cols": C}``;
    other types are ignored (later clients may send more). False: not a JSON object."""
    try:
        message = json.loads(text or "")
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    if message.get("type") == "resize":
        rows, cols = message.get("rows"), message.get("cols")
        # bool is an int too: a size is a number of rows and columns, nothing else
        sizes = [v for v in (rows, cols) if type(v) is int and 0 < v < 65536]
        if len(sizes) == 2:
            session.resize(sizes[0], sizes[1])
    return True


async def _deny_websocket(send: Send, problem: HttpProblem, *, seq: int) -> None:
    """Refuse a WebSocket upgrade with an ordinary problem answer (the ASGI WebSocket Denial
    Response extension, which hypercorn implements), so a client reads it as any refusal."""
    body = json_bytes(problem.document())
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-vsv-seq", str(seq).encode()),
    ]
    await send(
        {"type": "websocket.http.response.start", "status": problem.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def busy_response(detail: str, *, seq: int) -> bytes:
    """A whole HTTP/1.1 ``503 too-many-connections`` answer, for a socket at its cap.

    Written by the accept loop in one non-blocking send before it closes the connection, so it
    is built here as bytes: the connection never reaches hypercorn.
    """
    body = json_bytes(HttpProblem(503, "too-many-connections", detail).document())
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"content-type: application/problem+json\r\n"
        b"content-length: %d\r\n"
        b"x-vsv-seq: %d\r\n"
        b"retry-after: 1\r\n"
        b"connection: close\r\n\r\n" % (len(body), seq)
    )
    return head + body


def _parse(parse: Callable[..., Any], body: bytes) -> Any:
    if not body.strip():
        raise HttpProblem(400, "bad-body", "the body must be an XML document", field="body")
    try:
        return parse(body, path=None)
    except InvalidDocument as exc:
        raise problem_for(exc, field="body") from exc
    except (ValueError, UnicodeError) as exc:
        raise HttpProblem(
            400, "invalid-document", str(exc), field="body", problems=[str(exc)]
        ) from exc


def _call(fn: Callable[[str], Any], name: str, *, field: str) -> Any:
    try:
        return fn(name)
    except VsvError as exc:
        raise problem_for(exc, field=field) from exc


async def _acall(fn: Callable[[str], Awaitable[Any]], name: str) -> Any:
    try:
        return await fn(name)
    except VsvError as exc:
        raise problem_for(exc, field="name") from exc


async def _events_marker(app: ApiApp, request: Request) -> Reply:  # pragma: no cover - marker
    raise AssertionError("the event stream is handled before body reading")


_EVENTS: Handler = _events_marker

_NAME = "{name}"
ROUTES: list[tuple[str, tuple[str, ...], Handler]] = [
    ("GET", ("openapi.json",), ApiApp.openapi),
    ("GET", ("v1", "supervisor"), ApiApp.supervisor_info),
    ("GET", ("v1", "events"), _EVENTS),
    ("GET", ("v1", "domains"), ApiApp.list_domains),
    ("POST", ("v1", "domains"), ApiApp.define_domain),
    ("GET", ("v1", "domains", _NAME), ApiApp.domain_info),
    ("DELETE", ("v1", "domains", _NAME), ApiApp.undefine_domain),
    ("GET", ("v1", "domains", _NAME, "xml"), ApiApp.domain_xml),
    ("GET", ("v1", "domains", _NAME, "state"), ApiApp.domain_state),
    ("GET", ("v1", "domains", _NAME, "interfaces"), ApiApp.domain_interfaces),
    ("GET", ("v1", "domains", _NAME, "stats"), ApiApp.domain_stats),
    ("GET", ("v1", "stats"), ApiApp.stats),
    ("GET", ("v1", "domains", _NAME, "console"), ApiApp.console_http),
    ("PUT", ("v1", "domains", _NAME, "autostart"), ApiApp.set_autostart),
    ("GET", ("v1", "domains", _NAME, "schedinfo"), ApiApp.get_schedinfo),
    ("PUT", ("v1", "domains", _NAME, "schedinfo"), ApiApp.set_schedinfo),
    ("GET", ("v1", "domains", _NAME, "memory"), ApiApp.get_memory),
    ("PUT", ("v1", "domains", _NAME, "memory"), ApiApp.set_memory),
    ("GET", ("v1", "networks"), ApiApp.list_networks),
    ("POST", ("v1", "networks"), ApiApp.define_network),
    ("GET", ("v1", "networks", _NAME), ApiApp.network_info),
    ("DELETE", ("v1", "networks", _NAME), ApiApp.undefine_network),
    ("GET", ("v1", "networks", _NAME, "xml"), ApiApp.network_xml),
    ("GET", ("v1", "networks", _NAME, "leases"), ApiApp.network_leases),
    ("PUT", ("v1", "networks", _NAME, "autostart"), ApiApp.set_network_autostart),
]
DOMAIN_ACTIONS = ("start", "shutdown", "destroy", "reboot", "suspend", "resume")
NETWORK_ACTIONS = ("start", "destroy")
ROUTES += [("POST", ("v1", "domains", _NAME, a), ApiApp.domain_action) for a in DOMAIN_ACTIONS]
ROUTES += [("POST", ("v1", "networks", _NAME, a), ApiApp.network_action) for a in NETWORK_ACTIONS]


def _route(method: str, path: str, raw_path: bytes | None = None) -> tuple[Handler, dict[str, str]]:
    """The handler for (method, path) and the path parameters; 404/405 problems otherwise.

    Segments are split on the path as sent (``raw_path``) and decoded one by one, so that an
    escaped ``/`` stays inside its segment: ``/v1/domains/..%2Fx`` asks for the domain named
    ``../x`` (which cannot exist: 404 ``not-found`` naming it), not for ``/v1/x``.
    """
    if raw_path is not None:
        raw = raw_path.decode("latin-1").strip("/")
        parts = tuple(urllib.parse.unquote(p) for p in raw.split("/")) if raw else ()
    else:
        parts = tuple(path.strip("/").split("/")) if path.strip("/") else ()
    allowed: list[str] = []
    for route_method, pattern, handler in ROUTES:
        if len(pattern) != len(parts):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, parts, strict=True):
            if want == _NAME:
                if not got:
                    break
                params["name"] = got
            elif want != got:
                break
        else:
            if route_method == method:
                if handler in (ApiApp.domain_action, ApiApp.network_action):
                    params["action"] = parts[-1]
                return handler, params
            allowed.append(route_method)
    if allowed:
        raise HttpProblem(
            405, "method-not-allowed", f"{method} is not allowed here; use {', '.join(allowed)}"
        )
    raise HttpProblem(404, "no-route", f"no endpoint at {path}", field="path")


def _parse_query(raw: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("latin-1"), keep_blank_values=True, errors="strict"
        )
    except (ValueError, UnicodeError):
        raise HttpProblem(400, "bad-parameter", "malformed query string", field="query") from None
    return dict(pairs)


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HttpProblem(413, "too-large", f"the body is larger than {MAX_BODY} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _send_reply(send: Send, reply: Reply, *, seq: int) -> None:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"content-length", str(len(reply.body)).encode()),
        (b"x-vsv-seq", str(seq).encode()),
    ]
    if reply.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})
