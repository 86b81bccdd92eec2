"""Statistics of 200 guests: `GET /v1/stats` and the reading behind it, beside the bare reads.

The guests are the real :class:`~supervisor.daemon.Supervisor`'s, on a runtime that starts no
processes (the fake runtime's process side) but gives every guest a real cgroup in every
hierarchy of this machine (the real :class:`~supervisor.guest.cgroups.GuestCgroup`, created,
limited and removed as for a real guest). So the path measured is the daemon's own from the API
down to the kernel's files: the request, ``Supervisor.domain_stats``, :func:`stats.sources_for`
and :func:`stats.read_many` in a worker thread, reading the same cgroup files a running guest
has (their values are small, the reading costs the same). What a fake process cannot have is a
network namespace: one more figure adds a NIC to each guest (``/proc/PID/net/dev`` of this
process, the file the reader opens for a guest's NICs).

Figures, each the median of ``--runs`` rounds, interleaved:

- ``GET /v1/stats`` over the read-only socket (kept-alive stdlib client), target < 100 ms;
- a ``/metrics`` scrape (Prometheus text format, over TCP on the loopback), target < 100 ms;
- ``Supervisor.domain_stats()`` in-process (no HTTP);
- the same figures with one NIC per guest (the reader alone);
- the floor: a plain ``open``/``read`` of every file the reader opens, nothing parsed.

Writes bench/results/stats.json (or $VSV_BENCH_RESULTS). Exit 1 when the target is missed.
Needs root (cgroups). Everything carries the prefix ``vsvbst`` and is removed at the end, also
on failure or SIGTERM.

Run: .venv/bin/python bench/bench_stats.py [--guests N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Self

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.api.client import Client
from supervisor.api.server import serve_api
from supervisor.daemon import Supervisor
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout
from supervisor.journal import Journal
from supervisor.metrics import bind_metrics, serve_metrics
from supervisor.model import Domain, OsSpec
from supervisor.runtime import CgroupHandle
from supervisor.stats import StatSources, read_many
from supervisor.testing.fakeruntime import FakeCgroup, FakeRuntime

RESULTS = (
    Path(os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    / "stats.json"
)
TARGET_MS = 100.0


@attrs.define(eq=False)
class _RealCgroup(FakeCgroup):
    """The fake's process bookkeeping, on a real cgroup directory in every hierarchy."""

    real: GuestCgroup | None = None

    def create(self) -> bool:
        assert self.real is not None
        self.real.create()
        return super().create()

    def apply_limits(self, domain: Domain) -> None:
        assert self.real is not None
        self.real.apply_limits(domain)
        super().apply_limits(domain)

    def controller_dir(self, controller: str) -> str | None:
        assert self.real is not None
        return self.real.controller_dir(controller)

    async def remove(self) -> None:
        await super().remove()
        assert self.real is not None
        await self.real.remove()


@attrs.define(eq=False)
class _RealCgroupRuntime(FakeRuntime):
    """Fake processes, real cgroups (see the module docstring)."""

    layout: CgroupLayout | None = None

    async def __aenter__(self) -> Self:
        return self

    def cgroup_layout(self) -> CgroupLayout | None:
        return self.layout

    def cgroup(self, prefix: str, name: str) -> FakeCgroup:
        assert self.layout is not None
        return _RealCgroup(self, prefix, name, real=GuestCgroup(self.layout, prefix, name))


def files_read(src: StatSources) -> list[str]:
    """Every file :func:`stats.read_stats` opens for ``src`` (the floor reads just these)."""
    out: list[str] = []
    j = os.path.join
    names: tuple[str, ...]
    if src.cpu_usage is not None:
        names = (
            ("cpu.stat",)
            if src.cpu_usage.version == 2
            else ("cpuacct.stat", "cpuacct.usage", "cpuacct.usage_user", "cpuacct.usage_sys")
        )
        out += [j(src.cpu_usage.path, n) for n in names]
    if src.cpu_throttle is not None:
        out.append(j(src.cpu_throttle.path, "cpu.stat"))
    if src.memory is not None:
        names = (
            ("memory.current", "memory.max", "memory.peak")
            if src.memory.version == 2
            else ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes")
        )
        out += [j(src.memory.path, n) for n in names]
    if src.pids is not None:
        out += [j(src.pids, "pids.current"), j(src.pids, "pids.max")]
    if src.io is not None:
        names = (
            ("io.stat",)
            if src.io.version == 2
            else (
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_serviced_recursive",
            )
        )
        out += [j(src.io.path, n) for n in names]
    if src.nics and src.init_pid is not None:
        out.append(f"/proc/{src.init_pid}/net/dev")
    return out


def bare_reads(paths: list[str]) -> None:
    for path in paths:
        try:
            with open(path) as f:
                f.read()
        except FileNotFoundError:
            pass


def ms(values: list[float]) -> dict[str, float]:
    v = sorted(x * 1000 for x in values)
    return {
        "median_ms": round(statistics.median(v), 2),
        "min_ms": round(v[0], 2),
        "max_ms": round(v[-1], 2),
        "n": len(v),
    }


async def run(guests: int, runs: int, directory: Path, prefix: str) -> dict[str, object]:
    layout = detect_layout()
    runtime = _RealCgroupRuntime(layout=layout)
    journal = Journal.open(directory / "journal")
    sup = Supervisor(
        state_dir=directory / "state",
        run_dir=directory / "run",
        prefix=prefix,
        runtime=runtime,
        networking=False,
        log_max_bytes=0,
    )
    sup.bus.add_sink(journal.append)
    figures: dict[str, object] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ro = str(directory / "ro.sock")
            await nursery.start(
                lambda task_status: serve_api(
                    sup, journal, socket_path=str(directory / "rw.sock"), ro_socket_path=ro,
                    task_status=task_status,
                )
            )  # fmt: skip
            metrics_sock = bind_metrics("127.0.0.1", 0)
            port = metrics_sock.getsockname()[1]
            await nursery.start(serve_metrics, metrics_sock, partial(sup.metrics_snapshot, None))
            for i in range(guests):
                domain = Domain(name=f"g{i}", os=OsSpec(init="/bin/sh"), memory_kib=65536)
                await sup.define_domain(domain)
                await sup.start_domain(domain.name)
            answers = await sup.domain_stats()
            assert len(answers) == guests
            assert all("cpu.time" in figures for _, figures in answers), answers[0]
            sources = {name: _sources(sup, name, layout) for name in sorted(sup.guests)}
            with_nic = {
                name: attrs.evolve(src, init_pid=os.getpid(), nics=(("lo", "lo"),))
                for name, src in sources.items()
            }
            paths = [p for src in sources.values() for p in files_read(src)]
            api: list[float] = []
            direct: list[float] = []
            nic: list[float] = []
            floor: list[float] = []

            def over_api() -> list[float]:
                out = []
                with Client(ro) as c:
                    c.get_json("/v1/stats")  # the connection, once
                    for _ in range(runs):
                        t = time.perf_counter()
                        reply = c.get_json("/v1/stats")
                        out.append(time.perf_counter() - t)
                        assert len(reply["domains"]) == guests
                return out

            for _ in range(runs):
                t = time.perf_counter()
                await sup.domain_stats()
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                read_many(with_nic)
                nic.append(time.perf_counter() - t)
                t = time.perf_counter()
                bare_reads(paths)
                floor.append(time.perf_counter() - t)

            def scrapes() -> list[float]:
                out = []
                for _ in range(runs):
                    t = time.perf_counter()
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                        text = r.read()
                    out.append(time.perf_counter() - t)
                    assert text.count(b'vsv_domain_cpu_time_seconds_total{domain="') == guests
                return out

            api = await trio.to_thread.run_sync(over_api)
            scrape = await trio.to_thread.run_sync(scrapes)
            figures = {
                "guests": guests,
                "files_per_guest": round(len(paths) / guests, 1),
                "api_stats": ms(api),
                "metrics_scrape": ms(scrape),
                "domain_stats_in_process": ms(direct),
                "reader_with_one_nic_each": ms(nic),
                "floor_bare_reads": ms(floor),
                "target_ms": TARGET_MS,
                "layout": layout.kind,
            }
            await sup.shutdown_all(5)
            nursery.cancel_scope.cancel()
    finally:
        journal.close()
    return figures


def _sources(sup: Supervisor, name: str, layout: CgroupLayout) -> StatSources:
    from supervisor.stats import sources_for

    guest = sup.guests[name]
    cgroup: CgroupHandle | None = guest.cgroup
    assert cgroup is not None
    return sources_for(layout, cgroup, init_pid=None)


def cleanup(prefix: str) -> None:
    from supervisor import gc

    leftovers = gc.find(prefix)
    if leftovers:
        gc.remove(leftovers)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    prefix = "vsvbst" + secrets.token_hex(2)
    directory = Path(tempfile.mkdtemp(prefix="vsvbst", dir="/tmp"))
    previous: Callable[..., object] | int | None = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        figures = trio.run(run, args.guests, args.runs, directory, prefix)
    finally:
        cleanup(prefix)
        shutil.rmtree(directory, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous if callable(previous) else signal.SIG_DFL)
    for key in (
        "api_stats",
        "metrics_scrape",
        "domain_stats_in_process",
        "reader_with_one_nic_each",
        "floor_bare_reads",
    ):
        x = figures[key]
        assert isinstance(x, dict)
        print(f"{key:28s} {args.guests} guests: median {x['median_ms']:7.2f} ms "
              f"(min {x['min_ms']:.2f}, max {x['max_ms']:.2f})")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**figures, "loadavg_after": os.getloadavg()}, indent=2) + "\n")
    api, scrape = figures["api_stats"], figures["metrics_scrape"]
    assert isinstance(api, dict)
    assert isinstance(scrape, dict)
    return 0 if max(api["median_ms"], scrape["median_ms"]) < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
