"""supervisor/stats.py: the parsers on the kernel's text (v1 and v2 spellings), the reader on a
directory tree that mimics cgroupfs, and the stats endpoints over the fake facade."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor import stats
from supervisor.api.client import Client
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup
from supervisor.stats import Controller, StatSources
from tests.fake_supervisor import ServerThread, short_tmpdir

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         3     7000      50    4    5    0     0       0          0
"""  # noqa: E501 (the kernel's own layout)


def test_cpu_figures_in_both_versions() -> None:
    """v2 cpu.stat microseconds and v1 cpuacct nanoseconds (or ticks) all come out in ns."""
    v2 = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n"
    assert {"cpu.time": 1_500_000, "cpu.user": 1_000_000, "cpu.system": 500_000} == (
        stats.cpu_figures(2, stat=v2)
    )
    assert {"cpu.time": 42, "cpu.user": 30, "cpu.system": 12} == stats.cpu_figures(
        1, stat="user 3\nsystem 1\n", usage="42\n", user="30\n", system="12\n"
    )
    assert {"cpu.time": 42, "cpu.user": 30_000_000, "cpu.system": 10_000_000} == (
        stats.cpu_figures(1, stat="user 3\nsystem 1\n", usage="42\n")
    )


def test_throttle_figures_in_both_versions() -> None:
    """nr_periods, nr_throttled and the throttled time (v1 ns, v2 us) under our keys."""
    expected = {"cpu.throttle.periods": 9, "cpu.throttle.count": 2, "cpu.throttle.time": 7000}
    assert expected == stats.throttle_figures(
        1, "nr_periods 9\nnr_throttled 2\nthrottled_time 7000\n"
    )
    assert expected == stats.throttle_figures(
        2, "usage_usec 1\nnr_periods 9\nnr_throttled 2\nthrottled_usec 7\n"
    )


def test_limits_and_block_and_net_parsers() -> None:
    """'max' and v1's page-counter maximum are no limit; io lines per device; /proc/net/dev."""
    assert (None, None, 1024, 9223372036854771712) == (
        stats.parse_limit("max\n", 2),
        stats.parse_limit("9223372036854771712\n", 1),
        stats.parse_limit("1024\n", 2),
        stats.parse_limit("9223372036854771712\n", 2),
    )
    v1 = stats.io_figures_v1(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\nTotal 12288\n",
        "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
    )
    v2 = stats.io_figures_v2("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    assert {"8:0": {"rd.bytes": 4096, "wr.bytes": 8192, "rd.reqs": 1, "wr.reqs": 2}} == v1 == v2
    eth0 = {
        "rx.bytes": 5000, "rx.pkts": 40, "rx.errs": 1, "rx.drop": 2,
        "tx.bytes": 7000, "tx.pkts": 50, "tx.errs": 4, "tx.drop": 5,
    }  # fmt: skip
    assert {"eth0": eth0} == stats.net_figures(NET_DEV, ["eth0", "eth9"])


def _fake_v1(root: Path, name: str) -> dict[str, Path]:
    dirs = {}
    for ctrl in ("cpu", "cpuacct", "memory", "pids", "blkio"):
        d = root / ctrl / name
        d.mkdir(parents=True)
        dirs[ctrl] = d
    (dirs["cpuacct"] / "cpuacct.usage").write_text("3000000\n")
    (dirs["cpuacct"] / "cpuacct.usage_user").write_text("2000000\n")
    (dirs["cpuacct"] / "cpuacct.usage_sys").write_text("1000000\n")
    (dirs["cpuacct"] / "cpuacct.stat").write_text("user 0\nsystem 0\n")
    (dirs["cpu"] / "cpu.stat").write_text("nr_periods 5\nnr_throttled 1\nthrottled_time 99\n")
    (dirs["memory"] / "memory.usage_in_bytes").write_text(f"{5 << 20}\n")
    (dirs["memory"] / "memory.limit_in_bytes").write_text(f"{64 << 20}\n")
    (dirs["memory"] / "memory.max_usage_in_bytes").write_text(f"{6 << 20}\n")
    (dirs["pids"] / "pids.current").write_text("3\n")
    (dirs["pids"] / "pids.max").write_text("max\n")
    (dirs["blkio"] / "blkio.throttle.io_service_bytes_recursive").write_text(
        "7:0 Read 0\n7:0 Write 0\n254:1 Read 512\n254:1 Write 0\nTotal 512\n"
    )
    (dirs["blkio"] / "blkio.throttle.io_serviced_recursive").write_text(
        "7:0 Read 0\n7:0 Write 0\n254:1 Read 1\n254:1 Write 0\nTotal 1\n"
    )
    return dirs


def test_sources_and_reader_on_a_v1_tree(tmp_path: Path) -> None:
    """On a v1 layout every controller is read in its own hierarchy with v1 names; a device
    the guest never touched is left out; a NIC without a live init has its name only."""
    layout = CgroupLayout(
        root=str(tmp_path),
        kind="v1",
        v1=tuple((c, str(tmp_path / c)) for c in ("cpu", "cpuacct", "memory", "pids", "blkio")),
    )
    _fake_v1(tmp_path, "vsvt-g")
    src = stats.sources_for(
        layout, GuestCgroup(layout, "vsvt", "g"), init_pid=None, nics=[("vsvt-g0", "eth0")]
    )
    assert Controller(str(tmp_path / "cpuacct" / "vsvt-g"), 1) == src.cpu_usage
    got = stats.read_stats(src)
    assert {
        "cpu.time": 3_000_000,
        "cpu.user": 2_000_000,
        "cpu.system": 1_000_000,
        "cpu.throttle.periods": 5,
        "cpu.throttle.count": 1,
        "cpu.throttle.time": 99,
        "memory.used": 5 << 20,
        "balloon.current": 5 << 10,
        "memory.limit": 64 << 20,
        "balloon.maximum": 64 << 10,
        "memory.peak": 6 << 20,
        "pids.current": 3,
        "block.count": 1,
        "block.0.name": stats.block_name("254:1"),
        "block.0.rd.reqs": 1,
        "block.0.rd.bytes": 512,
        "block.0.wr.reqs": 0,
        "block.0.wr.bytes": 0,
        "net.count": 1,
        "net.0.name": "vsvt-g0",
    } == got


def test_reader_on_a_v2_tree_and_live_net_counters(tmp_path: Path) -> None:
    """On v2 the unified directory answers with v2 names; a NIC's counters come from
    /proc/PID/net/dev of the given init (this process's own namespace here: lo)."""
    d = tmp_path / "vsvt-g"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 2\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "io.stat").write_text("")
    src = StatSources(
        cpu_usage=Controller(str(d), 2),
        cpu_throttle=Controller(str(d), 2),
        memory=Controller(str(d), 2),
        io=Controller(str(d), 2),
        init_pid=os.getpid(),
        nics=(("host-lo", "lo"),),
        loan=0.25,
    )
    got = stats.read_stats(src)
    with open("/proc/self/net/dev") as f:
        lo = stats.net_figures(f.read(), ["lo"])["lo"]
    assert {"cpu.time": 10_000, "cpu.user": 6_000, "cpu.system": 4_000} == {
        k: got[k] for k in ("cpu.time", "cpu.user", "cpu.system")
    }
    assert (4096, 4, None, 8192, 0, 0.25) == (
        got["memory.used"],
        got["balloon.current"],
        got.get("memory.limit"),
        got["memory.peak"],
        got["block.count"],
        got["scheduler.loan"],
    )
    assert ("host-lo", True) == (got["net.0.name"], lo["rx.bytes"] <= int(got["net.0.rx.bytes"]))


def test_a_guest_that_went_away_meanwhile_leaves_its_keys_out(tmp_path: Path) -> None:
    """Missing files (the cgroup was removed between listing and reading) are no error."""
    gone = str(tmp_path / "gone")
    src = StatSources(
        cpu_usage=Controller(gone, 1),
        cpu_throttle=Controller(gone, 1),
        memory=Controller(gone, 1),
        pids=gone,
        io=Controller(gone, 1),
        init_pid=2**22 + 1,
        nics=(("x", "eth0"),),
    )
    assert {"net.count": 1, "net.0.name": "x"} == stats.read_stats(src)


def test_stats_endpoints_over_the_fake() -> None:
    """GET /v1/stats lists every domain (or the named ones, in order) with state figures;
    /v1/domains/NAME/stats one; an unknown name is 404 naming it."""
    d = short_tmpdir()
    server = ServerThread(d).start()
    try:
        with Client(server.rw) as c:
            for name in ("b", "a"):
                c.send_xml(
                    "/v1/domains",
                    f"<domain type='lxc'><name>{name}</name><memory>1024</memory><os><type>exe"
                    "</type><init>/bin/sh</init></os></domain>".encode(),
                )
            c.send_json("POST", "/v1/domains/a/start")
            every = c.get_json("/v1/stats")
            named = c.get_json("/v1/stats", domain="b,a")
            one = c.get_json("/v1/domains/a/stats")
            info = c.get_json("/v1/domains/a")
            try:
                c.get_json("/v1/stats", domain="a,nope")
            except Exception as exc:  # the ApiError carries the problem
                problem = getattr(exc, "problem", {})
        assert ["a", "b"] == [x["name"] for x in every["domains"]]
        assert ["b", "a"] == [x["name"] for x in named["domains"]]
        assert (1, 5, 1024) == (
            one["stats"]["state.state"],
            named["domains"][0]["stats"]["state.state"],
            one["stats"]["balloon.maximum"],
        )
        assert (0, 0) == (info["cpu_time_ns"], info["memory_used_kib"])
        assert ("not-found", True) == (problem.get("code"), "'nope'" in problem.get("detail", ""))
    finally:
        server.stop()
