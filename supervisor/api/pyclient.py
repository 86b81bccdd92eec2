"""The client library for programs that consume the supervisor: sync (httpx) and trio.

Both clients speak to the API over its Unix socket and share one idea for events: an event
iterator remembers the last sequence number it delivered and, when the connection breaks (the
supervisor restarted, a heartbeat was missed), reconnects with ``since=`` that number. The
journal behind the API makes that exact: every later event arrives once, in order, and a range
lost to retention arrives as a ``gap`` record instead of silently.

    from supervisor.api.pyclient import Client
    with Client("/run/vsv/vsv-ro.sock") as vsv:
        seq, domains = vsv.list_domains()
        for event in vsv.events(since=seq):      # list-then-watch without a race
            print(event["seq"], event["domain"], event["type"])

The trio client's event stream is written on h11 directly (httpx's async streams leave
generators for the garbage collector when a consumer stops early, which trio reports).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import AsyncGenerator, Generator, Mapping
from contextlib import aclosing
from typing import Any

import h11
import httpx
import trio

from supervisor.api.client import DEFAULT_SOCKET, ApiError, quote

RETRYABLE = (httpx.TransportError, httpx.RemoteProtocolError)


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"code": "error", "detail": response.text}
        raise ApiError(response.status_code, problem)


def _events_query(
    since: int | None, domain: str | None, type: str | None, heartbeat: float, follow: bool
) -> dict[str, str]:
    query = {"heartbeat": str(heartbeat)}
    if follow:
        query["follow"] = "true"
    if since is not None:
        query["since"] = str(since)
    if domain:
        query["domain"] = domain
    if type:
        query["type"] = type
    return query


def _probe(socket_path: str) -> None:
    """Fail (as httpx would) when nobody accepts on the socket, closing our socket properly.

    httpcore 1.0's Unix connect leaks its socket when ``connect`` fails, which a client that
    retries every few hundred milliseconds while the supervisor restarts would do many times.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        raise httpx.ConnectError(f"{socket_path}: {exc.strerror or exc}") from exc
    finally:
        sock.close()


class Client:
    """Synchronous client on ``httpx`` with the Unix-socket transport."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path), base_url="http://vsv", timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for_problem(response)
        if response.headers.get("content-type", "").startswith("application/xml"):
            return response.text
        return response.json()

    # domains
    def list_domains(self) -> tuple[int, list[dict[str, Any]]]:
        """(seq the listing reflects, rows): watch events with ``since=seq`` to miss nothing."""
        reply = self._call("GET", "/v1/domains")
        return reply["seq"], reply["domains"]

    def define_domain(self, xml: str | bytes) -> dict[str, Any]:
        body = xml.encode() if isinstance(xml, str) else xml
        return dict(
            self._call(
                "POST", "/v1/domains", content=body, headers={"content-type": "application/xml"}
            )
        )

    def undefine_domain(self, name: str) -> None:
        self._call("DELETE", f"/v1/domains/{quote(name)}")

    def domain_info(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/domains/{quote(name)}"))

    def domain_xml(self, name: str) -> str:
        return str(self._call("GET", f"/v1/domains/{quote(name)}/xml"))

    def domain_state(self, name: str) -> tuple[str, str]:
        reply = self._call("GET", f"/v1/domains/{quote(name)}/state")
        return reply["state"], reply["reason"]

    def action(self, name: str, action: str) -> dict[str, Any]:
        """start, shutdown, destroy, reboot, suspend or resume; returns the new status."""
        return dict(self._call("POST", f"/v1/domains/{quote(name)}/{action}")["domain"])

    # networks and the supervisor
    def list_networks(self) -> tuple[int, list[dict[str, Any]]]:
        reply = self._call("GET", "/v1/networks")
        return reply["seq"], reply["networks"]

    def leases(self, network: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/networks/{quote(network)}/leases")["leases"])

    def supervisor_info(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/supervisor"))

    # events
    def events(
        self,
        since: int | None = None,
        *,
        domain: str | None = None,
        type: str | None = None,
        heartbeat: float = 5.0,
        follow: bool = True,
        reconnect_delay: float = 0.2,
        give_up_after: float | None = None,
    ) -> Generator[dict[str, Any], None, None]:
        """Every event after ``since`` (default: from now), resuming across disconnects.

        Heartbeats are consumed here (they only advance the position). A connection silent for
        three heartbeats counts as dead. ``give_up_after`` bounds how long to keep retrying a
        supervisor that does not come back (None: forever).
        """
        position = since
        failing_since: float | None = None
        while True:
            query = _events_query(position, domain, type, heartbeat, follow)
            try:
                _probe(self.socket_path)
                with self._http.stream(
                    "GET", "/v1/events", params=query, timeout=httpx.Timeout(3 * heartbeat)
                ) as response:
                    _raise_for_problem(response)
                    if position is None:
                        position = int(response.headers["x-vsv-seq"])
                    failing_since = None
                    for line in response.iter_lines():
                        if not line:
                            continue
                        record = json.loads(line)
                        if record["kind"] == "heartbeat":
                            position = max(position, record["seq"])
                            continue
                        if record["seq"] <= position:
                            continue
                        position = record["seq"]
                        yield record
                if not follow:
                    return
            except RETRYABLE:
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if give_up_after is not None and now - failing_since > give_up_after:
                    raise
                time.sleep(reconnect_delay)


class TrioClient:
    """The same API for trio programs (httpx's async client; events on h11)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://vsv",
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TrioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        _raise_for_problem(response)
        if response.headers.get("content-type", "").startswith("application/xml"):
            return response.text
        return response.json()

    async def list_domains(self) -> tuple[int, list[dict[str, Any]]]:
        reply = await self._call("GET", "/v1/domains")
        return reply["seq"], reply["domains"]

    async def define_domain(self, xml: str | bytes) -> dict[str, Any]:
        body = xml.encode() if isinstance(xml, str) else xml
        return dict(
            await self._call(
                "POST", "/v1/domains", content=body, headers={"content-type": "application/xml"}
            )
        )

    async def action(self, name: str, action: str) -> dict[str, Any]:
        return dict((await self._call("POST", f"/v1/domains/{quote(name)}/{action}"))["domain"])

    async def supervisor_info(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/v1/supervisor"))

    async def events(
        self,
        since: int | None = None,
        *,
        domain: str | None = None,
        type: str | None = None,
        heartbeat: float = 5.0,
        follow: bool = True,
        reconnect_delay: float = 0.2,
        give_up_after: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Like :meth:`Client.events`; use ``async with aclosing(...)`` when stopping early."""
        position = since
        failing_since: float | None = None
        while True:
            query = _events_query(position, domain, type, heartbeat, follow)
            try:
                records = _h11_stream(self.socket_path, query, 3 * heartbeat)
                async with aclosing(records):
                    async for header_seq, record in records:
                        if position is None:
                            position = header_seq
                        failing_since = None
                        if record is None:
                            continue
                        if record["kind"] == "heartbeat":
                            position = max(position, record["seq"])
                            continue
                        if record["seq"] <= position:
                            continue
                        position = record["seq"]
                        yield record
                if not follow:
                    return
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError):
                now = trio.current_time()
                failing_since = failing_since if failing_since is not None else now
                if give_up_after is not None and now - failing_since > give_up_after:
                    raise
                await trio.sleep(reconnect_delay)


async def _h11_stream(
    socket_path: str, query: Mapping[str, str], silence: float
) -> AsyncGenerator[tuple[int, dict[str, Any] | None], None]:
    """(X-Vsv-Seq of the answer, record) pairs; a first (seq, None) once the headers arrive."""
    stream = await trio.open_unix_socket(socket_path)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        target = "/v1/events?" + urllib.parse.urlencode(query)
        request = h11.Request(
            method="GET", target=target, headers=[("Host", "vsv"), ("Connection", "close")]
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        header_seq = 0
        buffer = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(silence):
                    data = await stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("the supervisor closed the event stream")
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                body = b""
                status = event.status_code
                if status >= 400:
                    while not isinstance(event, h11.EndOfMessage):
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(event, h11.Data):
                            body += event.data
                    raise ApiError(status, json.loads(body or b"{}"))
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                header_seq = int(headers.get("x-vsv-seq", "0"))
                yield header_seq, None
            elif isinstance(event, h11.Data):
                buffer += bytes(event.data)
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield header_seq, json.loads(line)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return
