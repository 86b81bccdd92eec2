"""`vsv fleet events` against a real nats-server: listing, filters, positions, durable resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervisor.fleet.subjects import msg_id, payload_of, subject_of
from supervisor.testing.natsserver import NatsServer
from tests.fleet_helpers import nats, wait_for

__all__ = ["nats"]
FLEET = [sys.executable, "-m", "supervisor", "fleet", "events", "--nats"]


def publish(url: str, host: str, seqs: range, domain: str = "web") -> None:
    """Publish events ``seqs`` of ``host`` as the publisher would (stream made if missing)."""

    async def run() -> None:
        import nats as nats_py
        from nats.js.errors import NotFoundError

        nc = await nats_py.connect(url)
        js = nc.jetstream()
        try:
            await js.stream_info("GUESTS")
        except NotFoundError:
            await js.add_stream(
                name="GUESTS", subjects=["guests.>", "networks.>", "hosts.>"], duplicate_window=600
            )
        for seq in seqs:
            record = {
                "seq": seq,
                "kind": "domain",
                "name": domain,
                "domain": domain,
                "type": "STARTED" if seq % 2 else "STOPPED",
                "detail": "BOOTED" if seq % 2 else "DESTROYED",
                "time": 1700000000.0 + seq,
                "data": {},
            }
            await js.publish(
                subject_of(record, host),
                payload_of(record, host),
                headers={"Nats-Msg-Id": msg_id(host, seq)},
            )
        await nc.close()

    asyncio.run(run())


def events(url: str, *args: str) -> list[dict[str, object]]:
    """Run `vsv fleet events --json` to its end; its lines as dicts."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "fleet", "events", "--nats", url, "--json", *args],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_lists_the_stream_and_exits(nats: NatsServer) -> None:
    """Without --follow every event is printed once, in order, with the documented keys."""
    publish(nats.url, "ha", range(1, 4))
    publish(nats.url, "hb", range(1, 3), domain="db.1")
    publish(nats.url, "ha", range(4, 6))
    lines = events(nats.url)
    assert [("ha", 1), ("ha", 2), ("ha", 3), ("hb", 1), ("hb", 2), ("ha", 4), ("ha", 5)] == [
        (line["host"], line["seq"]) for line in lines
    ]
    assert list(range(1, 8)) == [line["stream_seq"] for line in lines]
    for key in ("host", "seq", "domain", "type", "detail", "time"):
        assert key in lines[0]
    assert ("web", "STARTED", "BOOTED") == (
        lines[0]["domain"],
        lines[0]["type"],
        lines[0]["detail"],
    )


def test_filters_and_positions(nats: NatsServer) -> None:
    """--host, --domain (with a dot in it), --since SEQ and --since-time select what they say."""
    publish(nats.url, "ha", range(1, 4))
    publish(nats.url, "hb", range(1, 3), domain="db.1")
    assert [1, 2, 3] == [line["seq"] for line in events(nats.url, "--host", "ha")]
    assert ["hb", "hb"] == [line["host"] for line in events(nats.url, "--domain", "db.1")]
    assert [] == events(nats.url, "--domain", "db.1", "--host", "ha")
    assert [4, 5] == [line["stream_seq"] for line in events(nats.url, "--since", "3")]
    future = str(time.time() + 3600)
    assert [] == events(nats.url, "--since-time", future)
    assert 5 == len(events(nats.url, "--since-time", "2000-01-01T00:00:00Z"))


def test_text_lines_name_the_host(nats: NatsServer) -> None:
    """The text form is the local `vsv event` line with the host in front."""
    publish(nats.url, "ha", range(1, 2))
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "fleet", "events", "--nats", nats.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("ha #1 ")
    assert "domain 'web': STARTED BOOTED" in done.stdout


def test_durable_resumes_after_the_last_printed(nats: NatsServer) -> None:
    """--durable X: a second run prints only what came after the first one's last line."""
    publish(nats.url, "ha", range(1, 4))
    assert [1, 2, 3] == [line["seq"] for line in events(nats.url, "--durable", "x")]
    publish(nats.url, "ha", range(4, 6))
    assert [4, 5] == [line["seq"] for line in events(nats.url, "--durable", "x")]
    assert [] == events(nats.url, "--durable", "x")
    # another name has its own position
    assert [1, 2, 3, 4, 5] == [line["seq"] for line in events(nats.url, "--durable", "y")]


def test_durable_follow_stopped_and_started_again(nats: NatsServer, tmp_path: Path) -> None:
    """A following durable reader stopped by SIGTERM resumes exactly after its last line."""
    publish(nats.url, "ha", range(1, 4))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "supervisor", "fleet", "events", "--nats", nats.url]
    cmd += ["--json", "--follow", "--durable", "f"]
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: len(out.read_bytes().splitlines()) == 3, "the first 3 lines")
            publish(nats.url, "ha", range(4, 5))
            wait_for(lambda: len(out.read_bytes().splitlines()) == 4, "the 4th line")
            proc.send_signal(signal.SIGTERM)
            assert 0 == proc.wait(30)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    first = [json.loads(line)["seq"] for line in out.read_bytes().splitlines()]
    publish(nats.url, "ha", range(5, 7))
    assert [1, 2, 3, 4] == first
    assert [5, 6] == [line["seq"] for line in events(nats.url, "--durable", "f")]


def test_errors_are_named(nats: NatsServer) -> None:
    """No such stream, a bad --since-time: a message and a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "fleet", "events", "--nats", nats.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 1 == done.returncode
    assert "no stream 'GUESTS'" in done.stderr
    done = subprocess.run(
        [*FLEET, nats.url, "--since-time", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == done.returncode
    assert "ISO 8601" in done.stderr
