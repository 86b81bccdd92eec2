"""``/metrics``: the text a snapshot renders to, parsed back by prometheus_client's own parser,
and a real daemon's endpoint scraped over TCP (off by default, loopback when on)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from supervisor.metrics import Histogram, Snapshot, parse_listen, render
from tests.fake_supervisor import short_tmpdir
from tests.test_cli_daemon import Env, vsv

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "metrics.md"


def documented() -> dict[str, str]:
    """Every metric docs/metrics.md lists, with its type (the table's first two columns)."""
    out = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `(vsv_[a-z_]+)` \| (counter|gauge|histogram) \|", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def samples(text: str) -> tuple[dict[str, str], list[Sample]]:
    """(family name -> type, every sample) as prometheus_client's parser reads the text."""
    types: dict[str, str] = {}
    every: list[Sample] = []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        every.extend(family.samples)
    return types, every


def snapshot() -> Snapshot:
    latency = Histogram()
    for took in (0.004, 0.03, 0.03, 7.0):
        latency.observe(took)
    web1: dict[str, int | float | str] = {
        "state.state": 1, "state.reason": "BOOTED", "cpu.time": 3_000_000_000,
        "cpu.user": 2_000_000_000, "cpu.system": 1_000_000_000, "cpu.throttle.periods": 10,
        "cpu.throttle.count": 2, "cpu.throttle.time": 500_000_000, "scheduler.loan": 0.25,
        "memory.used": 4096, "memory.limit": 8192, "memory.peak": 6144,
        "balloon.maximum": 16, "pids.current": 3, "pids.limit": 64,
        "block.count": 1, "block.0.name": "sda", "block.0.rd.bytes": 512,
        "block.0.wr.bytes": 1024, "block.0.rd.reqs": 1, "block.0.wr.reqs": 2,
        "net.count": 1, "net.0.name": "vsv-web1-0", "net.0.rx.bytes": 100,
        "net.0.rx.pkts": 2, "net.0.rx.errs": 0, "net.0.rx.drop": 1, "net.0.tx.bytes": 200,
        "net.0.tx.pkts": 3, "net.0.tx.errs": 0, "net.0.tx.drop": 0,
    }  # fmt: skip
    return Snapshot(
        domains=[("web1", "RUNNING", web1), ("db1", "SHUTOFF", {"state.state": 5})],
        states={"RUNNING": 1, "SHUTOFF": 1},
        starts=4,
        start_failures=1,
        start_latency=latency,
        bus={"published": 40, "dropped_subscribers": 0, "subscribers": [{}, {}]},
        journal={"appended": 40, "last_seq": 40, "segments": 1, "tail_events": 40},
        requests={("rw", "POST", 200): 3, ("ro", "GET", 404): 1},
        tuner={"steps": 12, "changes": 2},
    )


def test_every_documented_metric_is_rendered_with_its_type() -> None:
    """The text parses with prometheus_client's parser; each metric in docs/metrics.md is there
    with the documented type, and nothing undocumented is."""
    types, _ = samples(render(snapshot()).decode())
    expected = {name.removesuffix("_total"): kind for name, kind in documented().items()}
    assert expected == types


def test_labels_and_values_follow_the_snapshot() -> None:
    """Guests are labelled by domain (and device, interface, mode); units are base units."""
    _, got = samples(render(snapshot()).decode())

    def value(name: str, **labels: str) -> float:
        [match] = [s.value for s in got if s.name == name and s.labels == labels]
        return match

    assert 2.0 == value("vsv_domain_cpu_seconds_total", domain="web1", mode="user")
    assert 3.0 == value("vsv_domain_cpu_time_seconds_total", domain="web1")
    assert 0.5 == value("vsv_domain_cpu_throttled_seconds_total", domain="web1")
    assert 16 * 1024 == value("vsv_domain_memory_maximum_bytes", domain="web1")
    assert 1024 == value("vsv_domain_block_write_bytes_total", domain="web1", device="sda")
    assert 100 == value("vsv_domain_net_receive_bytes_total", domain="web1", interface="vsv-web1-0")
    assert 1 == value("vsv_domain_state", domain="db1", state="shutoff")
    assert 1 == value("vsv_domains", state="running")
    assert 3 == value("vsv_api_requests_total", socket="rw", method="POST", code="200")
    assert (4, 1) == (
        value("vsv_domain_start_seconds_count"),
        value("vsv_domain_start_seconds_bucket", le="0.005"),
    )
    assert 3 == value("vsv_domain_start_seconds_bucket", le="0.05")
    assert 4 == value("vsv_domain_start_seconds_bucket", le="+Inf")
    assert [] == [s for s in got if s.labels.get("domain") == "db1" and "cpu" in s.name]


def test_listen_addresses() -> None:
    """PORT alone is the loopback; ADDR:PORT and [V6]:PORT as given; a bad port is refused."""
    assert ("127.0.0.1", 9177) == parse_listen("9177")
    assert ("0.0.0.0", 80) == parse_listen("0.0.0.0:80")
    assert ("::1", 9) == parse_listen("[::1]:9")
    assert ("127.0.0.1", 9) == parse_listen(":9")
    with pytest.raises(ValueError, match=r"port 1\.\.65535"):
        parse_listen("x:99999")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _MetricsEnv(Env):
    """The daemon of test_cli_daemon with --metrics-listen on a free loopback port."""

    port = 0

    def args(self) -> list[str]:
        if not self.port:
            type(self).port = _free_port()
        return [*super().args(), "--metrics-listen", str(self.port)]


@pytest.fixture
def menv(prefix: str) -> Iterator[Env]:

    base = short_tmpdir()
    _MetricsEnv.port = 0
    e = _MetricsEnv(base, prefix)
    try:
        yield e
    finally:
        e.close()


def _scrape(port: int) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=")
                body: bytes = r.read()
                return body.decode()
        except OSError:
            assert time.monotonic() < deadline, "the metrics endpoint never answered"
            time.sleep(0.05)


@pytest.mark.root
def test_a_real_daemon_serves_its_guests_metrics(menv: Env, prefix: str) -> None:
    """A running guest's figures, by domain, equal what `vsv domstats` says of the frozen
    guest; the start was counted and timed; API requests are counted; every documented metric
    family is there."""
    e = menv
    (e.base / "d.xml").write_text(
        f"""<domain type='lxc'><name>w1</name><memory unit='MiB'>64</memory>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>while :; do sleep 0.2; done</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    vsv(e, "define", str(e.base / "d.xml"))
    vsv(e, "start", "w1")
    vsv(e, "suspend", "w1")
    stats = json.loads(vsv(e, "domstats", "w1", "--json")[1])[0]["stats"]
    types, got = samples(_scrape(_MetricsEnv.port))
    assert {n.removesuffix("_total") for n in documented()} == set(types)
    by = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in got}
    w1 = (("domain", "w1"),)
    assert stats["cpu.time"] / 1e9 == pytest.approx(by["vsv_domain_cpu_time_seconds_total", w1])
    assert stats["pids.current"] == by["vsv_domain_pids", w1]
    assert 64 << 20 == by["vsv_domain_memory_maximum_bytes", w1]
    assert 1 == by["vsv_domain_state", (("domain", "w1"), ("state", "paused"))]
    assert (1, 0, 1) == (
        by["vsv_domain_starts_total", ()],
        by["vsv_domain_start_failures_total", ()],
        by["vsv_domain_start_seconds_count", ()],
    )
    posts = by.get(
        ("vsv_api_requests_total", (("code", "200"), ("method", "POST"), ("socket", "rw")))
    )
    assert posts is not None
    assert posts >= 2  # start and suspend
    assert by["vsv_journal_appended_total", ()] >= 3


def _listening_pids() -> str:
    return subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout


@pytest.mark.root
def test_no_metrics_unless_asked(tmp_path: Path) -> None:
    """Without --metrics-listen the daemon listens on no TCP port; a port in use is one line
    and exit 1, before anything is made."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "--state-dir", str(tmp_path / "s0"),
         "--run-dir", str(tmp_path / "r0"), "--prefix", "vsvtm", "--no-api"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        assert "@supervisor STARTED" in daemon.stdout.readline().decode()
        assert f"pid={daemon.pid}," not in _listening_pids()
    finally:
        daemon.terminate()
        daemon.wait(30)
        if daemon.stdout is not None:
            daemon.stdout.close()
    port = _free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "daemon", "--state-dir", str(tmp_path / "s"),
             "--run-dir", str(tmp_path / "r"), "--prefix", "vsvtm", "--no-api",
             "--metrics-listen", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    said = [line for line in done.stderr.splitlines() if line.startswith("vsv daemon:")]
    assert (1, 1) == (done.returncode, len(said))
    assert f"127.0.0.1:{port}: cannot listen" in said[0]
    assert not (tmp_path / "s").exists()


def test_the_grafana_dashboard_queries_documented_metrics() -> None:
    """contrib/grafana-vsupervisor.json is valid JSON, and every metric its panels query is
    one docs/metrics.md documents (counters by their _total name, histograms by _bucket)."""
    dashboard = json.loads((REPO / "contrib" / "grafana-vsupervisor.json").read_text())
    known = set(documented())
    known |= {f"{n}_bucket" for n, kind in documented().items() if kind == "histogram"}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bvsv_[a-z_]+", target["expr"])
    }
    assert set() == queried - known
    assert len(dashboard["panels"]) >= 10
