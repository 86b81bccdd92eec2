"""``/metrics`` in the Prometheus text format: the guests' statistics and the supervisor's own.

Theory of operation
-------------------
Off unless ``vsv daemon --metrics-listen [ADDR:]PORT`` (loopback when no address is given: the
figures name every guest, and nothing here checks who asks). The socket is bound when the
daemon starts, before anything else is made, so a port in use is one line and exit 1; it is
served by hypercorn (HTTP) as the API is, on a TCP socket.

A scrape takes a snapshot first, in the event loop without an await in between: the
supervisor's counters, the guests' states, and then the guests' figures through the same
``Supervisor.domain_stats`` the API uses (files read in a worker thread). The text is then
written by the official client library (``prometheus_client``): a registry made for this
scrape holds one collector that turns the snapshot into metric families, and
``generate_latest`` formats it. Nothing is kept between scrapes, so no figure can go stale and
no lock is needed: every counter here is the kernel's or the supervisor's own, which only grow.

Every metric is documented in docs/metrics.md; the names follow Prometheus' conventions (base
units, ``_total`` for counters) and carry the prefix ``vsv_``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from supervisor.asgi import Receive, Scope, Send, lifespan
from supervisor.errors import RuntimeFailure

log = logging.getLogger("vsv.metrics")


#: start latency buckets (seconds): a start here takes milliseconds, a slow one a second
START_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_PORT = 9177


@attrs.define(eq=False)
class Histogram:
    """Cumulative-at-read bucket counts of observed values (no client library in the core)."""

    bounds: tuple[float, ...] = START_BUCKETS
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus' cumulative buckets, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_float_text(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


@attrs.define(eq=False)
class RequestCounts:
    """API requests answered, by socket, method and status (filled by the API's app)."""

    counts: dict[tuple[str, str, int], int] = attrs.Factory(dict)

    def add(self, socket_name: str, method: str, status: int) -> None:
        key = (socket_name, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1


@attrs.frozen
class Snapshot:
    """What one scrape reports, taken in one step (see the module docstring)."""

    domains: Sequence[tuple[str, str, Mapping[str, int | float | str]]]  # name, state, figures
    states: Mapping[str, int]
    starts: int
    start_failures: int
    start_latency: Histogram
    bus: Mapping[str, Any]
    journal: Mapping[str, Any]
    requests: Mapping[tuple[str, str, int], int]
    tuner: Mapping[str, Any] | None


class SnapshotCollector:
    """The collector of one scrape: the snapshot as metric families."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def describe(self) -> list[Any]:
        return []  # no up-front description: every family is made per scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self.snap

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return CounterMetricFamily(name, doc, labels=list(labels))

        state = gauge("vsv_domain_state", "1 for the domain's current state", ("domain", "state"))
        cpu = counter(
            "vsv_domain_cpu_seconds", "CPU time the guest used, by mode", ("domain", "mode")
        )
        cpu_all = counter("vsv_domain_cpu_time_seconds", "CPU time the guest used", ("domain",))
        periods = counter(
            "vsv_domain_cpu_periods", "CFS enforcement periods of the guest", ("domain",)
        )
        throttled = counter(
            "vsv_domain_cpu_throttled_periods", "periods the guest was throttled in", ("domain",)
        )
        throttled_s = counter(
            "vsv_domain_cpu_throttled_seconds", "time the guest was throttled", ("domain",)
        )
        loan = gauge(
            "vsv_domain_scheduler_loan_cpus",
            "CPUs the token bucket's tuner lends the guest now",
            ("domain",),
        )
        mem = gauge("vsv_domain_memory_used_bytes", "memory the guest uses", ("domain",))
        mem_limit = gauge("vsv_domain_memory_limit_bytes", "the guest's memory limit", ("domain",))
        mem_peak = gauge(
            "vsv_domain_memory_peak_bytes", "the most memory the guest has used", ("domain",)
        )
        mem_max = gauge(
            "vsv_domain_memory_maximum_bytes", "the definition's <memory> (balloon maximum)",
            ("domain",),
        )  # fmt: skip
        pids = gauge("vsv_domain_pids", "processes in the guest", ("domain",))
        pids_limit = gauge("vsv_domain_pids_limit", "the guest's process limit", ("domain",))
        block = {
            key: counter(name, doc, ("domain", "device"))
            for key, name, doc in (
                ("rd.bytes", "vsv_domain_block_read_bytes", "bytes read from a block device"),
                ("wr.bytes", "vsv_domain_block_write_bytes", "bytes written to a block device"),
                ("rd.reqs", "vsv_domain_block_read_requests", "read requests to a block device"),
                ("wr.reqs", "vsv_domain_block_write_requests", "write requests to a device"),
            )
        }
        net = {
            key: counter(f"vsv_domain_net_{name}", doc, ("domain", "interface"))
            for key, name, doc in (
                ("rx.bytes", "receive_bytes", "bytes the guest received on an interface"),
                ("rx.pkts", "receive_packets", "packets the guest received"),
                ("rx.errs", "receive_errors", "receive errors"),
                ("rx.drop", "receive_drops", "received packets dropped"),
                ("tx.bytes", "transmit_bytes", "bytes the guest sent on an interface"),
                ("tx.pkts", "transmit_packets", "packets the guest sent"),
                ("tx.errs", "transmit_errors", "transmit errors"),
                ("tx.drop", "transmit_drops", "packets to send that were dropped"),
            )
        }
        for name, status, figures in snap.domains:
            state.add_metric([name, status.lower()], 1)

            def put(
                family: Any,
                key: str,
                scale: float = 1.0,
                *labels: str,
                name: str = name,
                figures: Mapping[str, int | float | str] = figures,
            ) -> None:
                value = figures.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([name, *labels], value * scale)

            put(cpu, "cpu.user", 1e-9, "user")
            put(cpu, "cpu.system", 1e-9, "system")
            put(cpu_all, "cpu.time", 1e-9)
            put(periods, "cpu.throttle.periods")
            put(throttled, "cpu.throttle.count")
            put(throttled_s, "cpu.throttle.time", 1e-9)
            put(loan, "scheduler.loan")
            put(mem, "memory.used")
            put(mem_limit, "memory.limit")
            put(mem_peak, "memory.peak")
            put(mem_max, "balloon.maximum", 1024.0)
            put(pids, "pids.current")
            put(pids_limit, "pids.limit")
            for i in range(int(figures.get("block.count", 0) or 0)):
                device = str(figures.get(f"block.{i}.name", i))
                for key, family in block.items():
                    put(family, f"block.{i}.{key}", 1.0, device)
            for i in range(int(figures.get("net.count", 0) or 0)):
                iface = str(figures.get(f"net.{i}.name", i))
                for key, family in net.items():
                    put(family, f"net.{i}.{key}", 1.0, iface)
        yield from (state, cpu, cpu_all, periods, throttled, throttled_s, loan)
        yield from (mem, mem_limit, mem_peak, mem_max, pids, pids_limit)
        yield from block.values()
        yield from net.values()

        by_state = gauge("vsv_domains", "defined domains by state", ("state",))
        for key, n in sorted(snap.states.items()):
            by_state.add_metric([key.lower()], n)
        yield by_state
        starts = counter("vsv_domain_starts", "domain starts asked for and done")
        starts.add_metric([], snap.starts)
        yield starts
        failures = counter("vsv_domain_start_failures", "domain starts that failed")
        failures.add_metric([], snap.start_failures)
        yield failures
        latency = HistogramMetricFamily(
            "vsv_domain_start_seconds", "how long a start took, from the request to init running"
        )
        latency.add_metric([], snap.start_latency.buckets(), snap.start_latency.total)
        yield latency
        for key, doc in (
            ("published", "events published on the bus"),
            ("dropped_subscribers", "bus subscribers disconnected for falling behind"),
        ):
            family = counter(f"vsv_bus_{key}", doc)
            family.add_metric([], float(snap.bus.get(key, 0)))
            yield family
        subscribers = gauge("vsv_bus_subscribers", "bus subscribers now")
        subscribers.add_metric([], len(snap.bus.get("subscribers", ())))
        yield subscribers
        appended = counter("vsv_journal_appended", "events appended to the journal")
        appended.add_metric([], float(snap.journal.get("appended", 0)))
        yield appended
        for key, doc in (
            ("last_seq", "the journal's last sequence number"),
            ("segments", "journal segment files"),
            ("tail_events", "events kept in memory"),
        ):
            family = gauge(f"vsv_journal_{key}", doc)
            family.add_metric([], float(snap.journal.get(key, 0) or 0))
            yield family
        pruned = counter("vsv_journal_pruned_segments", "segments removed by retention")
        pruned.add_metric([], float(snap.journal.get("pruned_segments", 0)))
        yield pruned
        requests = counter(
            "vsv_api_requests", "API requests answered", ("socket", "method", "code")
        )
        for (sock, method, code), n in sorted(snap.requests.items()):
            requests.add_metric([sock, method, str(code)], n)
        yield requests
        if snap.tuner is not None:
            steps = counter("vsv_tuner_steps", "periods the token bucket's tuner has run")
            steps.add_metric([], float(snap.tuner.get("steps", 0)))
            yield steps
            changes = counter("vsv_tuner_changes", "quota changes the tuner applied")
            changes.add_metric([], float(snap.tuner.get("changes", 0)))
            yield changes


def render(snap: Snapshot) -> bytes:
    """The Prometheus text format of one snapshot (the client library's own writer)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


# --- the listener -----------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[V6]:PORT``; no address is the loopback (127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-listen {text!r}: expected [ADDR:]PORT with a port 1..65535")
    return host, int(port)


def bind_metrics(host: str, port: int) -> socket.socket:
    """The listening TCP socket (bound at start, served later); RuntimeFailure naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise RuntimeFailure(
            f"--metrics-listen {host}:{port}: cannot listen: {exc.strerror or exc}"
        ) from exc
    return sock


class MetricsApp:
    """The ASGI app: ``GET /metrics`` (the text format), anything else 404."""

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]]) -> None:
        self._snapshot = snapshot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 404, b"not found: the metrics are at /metrics\n", "text/plain")
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        snap = await self._snapshot()
        body = await trio.to_thread.run_sync(render, snap)
        await _answer(send, 200, body if scope["method"] == "GET" else b"", CONTENT_TYPE_LATEST)


async def _answer(send: Send, status: int, body: bytes, ctype: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_metrics(
    sock: socket.socket,
    snapshot: Callable[[], Awaitable[Snapshot]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on the bound ``sock`` until cancelled (hypercorn, HTTP/1.1);
    ``task_status.started`` with the address it serves."""
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve

    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("vsv.metrics.http")
    config.graceful_timeout = 1.0
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    app = ASGIWrapper(MetricsApp(snapshot))  # type: ignore[arg-type]
    log.info("metrics on http://%s:%s/metrics", *sock.getsockname()[:2])
    await worker_serve(app, config, sockets=sockets, task_status=task_status)
