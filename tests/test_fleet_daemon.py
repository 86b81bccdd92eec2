"""`vsv daemon --nats` as processes with real guests and a real nats-server: two hosts, a
supervisor SIGKILLed mid-publish, a broker killed and restarted, a broker that stays down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.fleet.publisher import cursor_path
from supervisor.journal import Journal
from supervisor.testing.natsserver import NatsServer, StoredMessage, read_stream
from tests.fleet_helpers import nats, wait_for
from tests.test_daemon_process import Daemon, _doc, daemons, dirs

pytestmark = pytest.mark.root
__all__ = ["daemons", "dirs", "nats"]


@pytest.fixture
def stopped_servers() -> Iterator[list[NatsServer]]:
    """Servers a test SIGSTOPs: continued at teardown so that closing them can kill them."""
    servers: list[NatsServer] = []
    yield servers
    for server in servers:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)


class Host:
    """One supervisor standing in for a host: its own state and run dirs, prefix and host id."""

    def __init__(self, tmp: Path, dirs: dict[str, Path], prefix: str, name: str, url: str):
        self.name = name
        self.state = tmp / name / "state"
        self.run = tmp / name / "run"
        self.root = dirs["root"]
        self.tmp = tmp
        self.args = [
            "--state-dir", str(self.state), "--run-dir", str(self.run),
            "--prefix", f"{prefix}{name}", "--shutdown-timeout", "3", "--stop-timeout", "5",
            "--socket", str(self.run / "vsv.sock"), "--ro-socket", str(self.run / "ro.sock"),
            "--nats", url, "--host-id", name,
        ]  # fmt: skip

    def daemon(self, daemons: list[Daemon], *guests: str) -> Daemon:
        docs = [_doc(self.tmp, g, self.root) for g in guests]
        daemon = Daemon([*self.args, *(["--start", *docs] if docs else [])])
        daemons.append(daemon)
        daemon.wait_line("@supervisor STARTED")
        for g in guests:
            daemon.wait_line(f"{g} STARTED BOOTED")
        return daemon

    def vsv(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(self.run / "vsv.sock"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def fleet(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(self.vsv("info", "--json"))["statistics"]["fleet"]
        return stats

    def journal(self) -> list[dict[str, Any]]:
        journal = Journal.open(self.state / "journal")
        try:
            return [dict(r) for r in journal.read_since(0)]
        finally:
            journal.close()


def check_exactly_once(messages: list[StoredMessage], host: Host) -> list[dict[str, Any]]:
    """The host's messages are its journal, each record once, in journal order."""
    mine = [m.record() for m in messages if m.record()["host"] == host.name]
    expected = [{**r, "host": host.name} for r in host.journal()]
    assert [r["seq"] for r in expected] == [r["seq"] for r in mine]
    assert expected == mine
    return mine


def lifecycle(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (r["domain"], r["type"], r["detail"])
        for r in records
        if r["kind"] == "domain" and r["type"] in ("STARTED", "STOPPED")
    ]


def test_two_hosts_every_event_once_in_host_order(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon], nats: NatsServer
) -> None:
    """Two supervisors, two host ids: every STARTED/STOPPED of both once, in per-host order."""
    a = Host(tmp_path, dirs, prefix, "ha", nats.url)
    b = Host(tmp_path, dirs, prefix, "hb", nats.url)
    da = a.daemon(daemons, "a1", "a2")
    db = b.daemon(daemons, "b1")
    a.vsv("destroy", "a1")
    b.vsv("destroy", "b1")
    b.vsv("start", "b1")
    da.wait_line("a1 STOPPED DESTROYED")
    db.wait_line("b1 STARTED BOOTED")
    assert 0 == da.stop()
    assert 0 == db.stop()
    messages = read_stream(nats.url)
    assert {"ha", "hb"} == {m.record()["host"] for m in messages}
    mine_a = check_exactly_once(messages, a)
    mine_b = check_exactly_once(messages, b)
    assert [
        ("a1", "STARTED", "BOOTED"),
        ("a2", "STARTED", "BOOTED"),
        ("a1", "STOPPED", "DESTROYED"),
        ("a2", "STOPPED", "SHUTDOWN"),
    ] == sorted(lifecycle(mine_a), key=lambda e: ("STOPPED" in e, e[0]))
    assert [
        ("b1", "STARTED", "BOOTED"),
        ("b1", "STOPPED", "DESTROYED"),
        ("b1", "STARTED", "BOOTED"),
        ("b1", "STOPPED", "SHUTDOWN"),
    ] == lifecycle(mine_b)
    subjects = {m.subject for m in messages}
    assert {"guests.ha.a1.STARTED", "hosts.ha.STOPPED", "hosts.hb.STOPPED"} <= subjects


def test_sigkill_mid_publish_then_restart(
    tmp_path: Path,
    dirs: dict[str, Path],
    prefix: str,
    daemons: list[Daemon],
    nats: NatsServer,
    stopped_servers: list[NatsServer],
) -> None:
    """A supervisor killed while a publish waits for its ack: after a restart, no repeat and
    no hole (the stream had the message the cursor had not counted)."""
    a = Host(tmp_path, dirs, prefix, "ha", nats.url)
    first = a.daemon(daemons, "k1")
    wait_for(lambda: a.fleet()["lag_events"] == 0, "the publisher to catch up")
    acked = a.fleet()["published_seq"]
    # the broker freezes: the next publish is sent and its ack never comes
    assert nats.proc is not None
    stopped_servers.append(nats)
    nats.proc.send_signal(signal.SIGSTOP)
    a.vsv("destroy", "k1")
    a.vsv("start", "k1")
    first.wait_line("k1 STARTED BOOTED")
    wait_for(lambda: a.fleet()["lag_events"] >= 2, "events waiting for an ack")
    assert acked == a.fleet()["published_seq"]
    first.stop(signal.SIGKILL)
    nats.proc.send_signal(signal.SIGCONT)
    cursor = json.loads(cursor_path(a.state, "GUESTS").read_bytes())["seq"]
    assert acked == cursor
    stored = [int(str(m.record()["seq"])) for m in read_stream(nats.url)]
    assert max(stored) > cursor  # published, never acknowledged: the crash the test is about

    second = a.daemon(daemons)
    second.wait_line("@supervisor STARTED")
    wait_for(lambda: a.fleet()["lag_events"] == 0, "the successor to catch up")
    assert 0 == second.stop()
    mine = check_exactly_once(read_stream(nats.url), a)
    assert [
        ("k1", "STARTED", "BOOTED"),
        ("k1", "STOPPED", "DESTROYED"),
        ("k1", "STARTED", "BOOTED"),
        ("k1", "STOPPED", "SHUTDOWN"),
    ] == lifecycle(mine)


def test_broker_killed_and_restarted_while_guests_come_and_go(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon], nats: NatsServer
) -> None:
    """nats-server SIGKILLed and started again on its store while guests start and stop:
    afterwards every event is in the stream exactly once."""
    a = Host(tmp_path, dirs, prefix, "ha", nats.url)
    daemon = a.daemon(daemons, "r1", "r2")
    a.vsv("destroy", "r1")
    nats.kill(signal.SIGKILL)
    a.vsv("start", "r1")
    a.vsv("destroy", "r2")
    daemon.wait_line("r2 STOPPED DESTROYED")
    wait_for(lambda: a.fleet()["state"] == "down", "the publisher to notice the outage")
    assert a.fleet()["lag_events"] >= 1
    nats.start()
    a.vsv("start", "r2")
    a.vsv("destroy", "r1")
    wait_for(lambda: a.fleet()["lag_events"] == 0, "the publisher to catch up")
    stats = a.fleet()
    assert ("publishing", True) == (stats["state"], stats["connected"])
    assert stats["outages"] >= 1
    assert 0 == daemon.stop()
    mine = check_exactly_once(read_stream(nats.url), a)
    assert 8 == len(lifecycle(mine))


def test_broker_down_for_the_whole_run(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon], nats: NatsServer
) -> None:
    """No broker at all: guests start and stop as usual, the lag is reported, exit is clean."""
    nats.stop()
    a = Host(tmp_path, dirs, prefix, "ha", nats.url)
    daemon = a.daemon(daemons, "d1")
    a.vsv("destroy", "d1")
    a.vsv("start", "d1")
    daemon.wait_line("d1 STARTED BOOTED")
    wait_for(lambda: a.fleet()["state"] == "down", "the publisher to report the outage")
    stats = a.fleet()
    assert (False, 0) == (stats["connected"], stats["published_seq"])
    assert stats["lag_events"] == stats["journal_seq"] >= 5
    assert stats["last_error"]
    info = a.vsv("info")
    assert "fleet.lag_events" in info
    assert 0 == daemon.stop()
    assert not cursor_path(a.state, "GUESTS").exists() or (
        json.loads(cursor_path(a.state, "GUESTS").read_bytes())["seq"] == 0
    )
