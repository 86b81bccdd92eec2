"""supervisor/logrelay.py: a guest's output through its FIFO into a log whose cap holds at
every moment, and `vsv log -n` right after a cut-back (it reads NAME.log.1 too)."""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from supervisor.api.client import Client
from supervisor.clientcli import _log
from supervisor.logrelay import CHUNK, LogRelays, fifo_file, log_file

CAP = 256 << 10


async def test_the_cap_holds_at_every_write_and_no_line_is_lost(tmp_path: Path) -> None:
    """A writer far faster than the cap: after every move the log is at most the cap plus one
    move and NAME.log.1 at most half the cap; the lines kept are the last ones, in order, none
    missing between .log.1 and .log."""
    relays = LogRelays(tmp_path, CAP, rate=1 << 40)
    sizes: list[tuple[int, int]] = []
    lines = 40_000  # ~2 MiB: eight times the cap
    async with trio.open_nursery() as nursery:
        relays.launch = nursery.start_soon
        fifo = relays.target("g")
        writer_fd = os.open(fifo, os.O_RDWR)  # as the guest's stdout is opened

        def write() -> None:
            for i in range(lines):
                os.write(writer_fd, b"line %06d ..................................\n" % i)

        def sample(stop: threading.Event) -> None:
            log = log_file(tmp_path, "g")
            while not stop.is_set():
                try:
                    one = os.stat(str(log) + ".1").st_size
                except FileNotFoundError:
                    one = 0
                try:
                    sizes.append((os.stat(log).st_size, one))
                except FileNotFoundError:
                    pass

        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(stop,))
        sampler.start()
        try:
            await trio.to_thread.run_sync(write)
            with trio.fail_after(30):
                while relays.statistics()["moved"] < lines * 46:
                    await trio.sleep(0.01)
        finally:
            stop.set()
            sampler.join()
            os.close(writer_fd)
            relays.stop("g")
    assert sizes
    assert max(s for s, _ in sizes) <= CAP + CHUNK
    assert max(r for _, r in sizes) <= CAP // 2
    # each cut-back follows at most CAP + one move of CHUNK bytes
    assert relays.statistics()["cuts"] >= relays.statistics()["moved"] // (CAP + CHUNK)
    kept = (
        log_file(tmp_path, "g").with_suffix(".log.1").read_bytes()
        + log_file(tmp_path, "g").read_bytes()
    ).splitlines()
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(numbers[0], lines))
    assert not fifo_file(tmp_path, "g").exists()


class _Info:
    def __init__(self, path: Path) -> None:
        self.path = path

    def get_json(self, url: str) -> dict[str, Any]:
        return {"name": "g", "log": str(self.path)}


@pytest.mark.parametrize("n", [3, 5])
def test_log_n_right_after_a_cut_back_shows_the_last_lines(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], n: int
) -> None:
    """Just cut back: the log holds one line, .log.1 the rest; -n N prints the last N."""
    log = tmp_path / "g.log"
    (tmp_path / "g.log.1").write_bytes(b"one\ntwo\nthree\nfour\n")
    log.write_bytes(b"five\n")
    args = argparse.Namespace(domain="g", lines=n, follow=False, timeout=None)
    assert 0 == _log(args, cast(Client, _Info(log)))
    expected = [b"one", b"two", b"three", b"four", b"five"][-n:]
    assert expected == capfdbinary.readouterr().out.splitlines()


@pytest.fixture
def capped(prefix: str) -> Iterator[Any]:
    """A real daemon (test_cli_daemon's Env) with ``--log-max-mib 1``; closed afterwards."""
    from tests.fake_supervisor import short_tmpdir
    from tests.test_cli_daemon import Env

    class _Capped(Env):
        def args(self) -> list[str]:
            return [*super().args(), "--log-max-mib", "1"]

    e = _Capped(short_tmpdir(), prefix)
    try:
        yield e
    finally:
        e.close()


def flood(e: Any, name: str, console: bool) -> None:
    """Start guest ``name`` running `yes` (on a console if asked), then sample its log as fast
    as the test can until three cut-backs were seen (at least 3 s): the log never exceeds
    2 MiB, nor the log and NAME.log.1 together."""
    import time

    from tests.test_cli_daemon import vsv

    (e.base / f"{name}.xml").write_text(
        f"""<domain type='lxc'><name>{name}</name>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>yes '{SAID}'</initarg>
        </os><devices><filesystem type='mount'><source dir='{e.root}'/>
        <target dir='/'/></filesystem>{"<console type='pty'/>" if console else ""}</devices>
        </domain>"""
    )
    vsv(e, "define", str(e.base / f"{name}.xml"))
    vsv(e, "start", name)
    log = e.base / "run" / "logs" / f"{name}.log"
    rotated = log.with_name(f"{name}.log.1")
    last, cuts_seen = 0, 0
    until = time.monotonic() + 3
    while time.monotonic() < until or cuts_seen < 3:
        assert time.monotonic() < until + 60, "no cut-back seen"
        try:
            size = log.stat().st_size
            old = rotated.stat().st_size if rotated.exists() else 0
        except FileNotFoundError:
            continue
        if size < last:
            cuts_seen += 1
        last = size
        assert size <= 2 << 20, size
        assert size + old <= 2 << 20, (size, old)


SAID = "a line of output from a guest that never stops talking"


@pytest.mark.root
def test_a_flooding_guest_stays_within_twice_the_cap(capped: Any) -> None:
    """A real daemon with --log-max-mib 1 and a guest running `yes`: sampled as fast as the
    test can, the log never exceeds 2 MiB, nor the log and NAME.log.1 together; `vsv log -n 3`
    then prints the last three lines (also right after a cut-back, from NAME.log.1)."""
    import json

    from tests.test_cli_daemon import vsv

    flood(capped, "y1", console=False)
    code, out, _ = vsv(capped, "log", "y1", "-n", "3")
    lines = out.splitlines()
    # the guest is writing meanwhile: the last line may be one it has not finished
    assert (0, 3, [SAID, SAID], True) == (code, len(lines), lines[:2], SAID.startswith(lines[2]))
    assert json.loads(vsv(capped, "domstate", "y1", "--json")[1])["state"] == "RUNNING"
    vsv(capped, "destroy", "y1")
    assert not (capped.base / "run" / "logs" / "y1.pipe").exists()


@pytest.mark.root
def test_a_flooding_guest_on_a_console_stays_within_twice_the_cap(capped: Any) -> None:
    """The same flood from a guest whose output goes to its console (a pty the supervisor
    relays, not the log relay's FIFO): the console relay holds the cap itself, so the log never
    exceeds 2 MiB under --log-max-mib 1, nor the log and NAME.log.1 together."""
    from tests.test_cli_daemon import vsv

    flood(capped, "c1", console=True)
    vsv(capped, "destroy", "c1")
