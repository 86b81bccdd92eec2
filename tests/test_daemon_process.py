"""`vsv daemon` as a whole process: stdout events, signals, SIGKILL and re-adoption."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.guest.cgroups import detect_layout, find_leftovers
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, OsSpec
from supervisor.xml import format_domain

pytestmark = pytest.mark.root

# the guest says when its TERM trap is set (before that its init would ignore SIGTERM)
LOOP = "trap 'exit 0' TERM; touch /tmp/ready-$(hostname); while :; do sleep 0.05; done"


class Daemon:
    """A `vsv daemon` child process whose stdout is read line by line with deadlines."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[str] = []
        self._partial = b""

    def wait_line(self, suffix: str, timeout: float = 15) -> str:
        """Read stdout until a line ending with ``suffix``; return it.

        Reads the raw pipe (no Python buffering) so select() never misses buffered lines.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for line in self.lines[checked:]:
                if line.endswith(suffix):
                    return line
            checked = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._partial += chunk
                *complete, self._partial = self._partial.split(b"\n")
                self.lines.extend(c.decode() for c in complete)
        raise AssertionError(f"no line ending {suffix!r}; got {self.lines}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the process if it still runs and close its pipes (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts (append them); closed at teardown."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.close()


@pytest.fixture
def dirs(tmp_path: Path, prefix: str) -> Iterator[dict[str, Path]]:
    """State/run dirs and a busybox root; kills whatever a failed test left in the cgroups."""
    d = {
        "state": tmp_path / "state",
        "run": tmp_path / "run",
        "root": Path(prepare_busybox_root(str(tmp_path / "rootfs"))),
    }
    try:
        yield d
    finally:
        layout = detect_layout()
        for path in find_leftovers(layout, prefix):
            for pid in Path(path, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
        for path in find_leftovers(layout, prefix):
            try:
                os.rmdir(path)
            except OSError:
                pass


def _doc(tmp: Path, name: str, root: Path, script: str = LOOP) -> str:
    d = Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        privnet=True,
    )
    path = tmp / f"{name}.xml"
    path.write_text(format_domain(d))
    return str(path)


def _args(dirs: dict[str, Path], prefix: str) -> list[str]:
    return [
        "--state-dir", str(dirs["state"]), "--run-dir", str(dirs["run"]), "--prefix", prefix,
        "--shutdown-timeout", "3", "--stop-timeout", "5",
        "--socket", str(dirs["run"] / "vsv.sock"), "--ro-socket", str(dirs["run"] / "ro.sock"),
    ]  # fmt: skip


def _start_ready(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon], name: str
) -> Daemon:
    """A daemon started with one guest, returned once the guest's TERM trap is set."""
    daemon = Daemon([*_args(dirs, prefix), "--start", _doc(tmp_path, name, dirs["root"])])
    daemons.append(daemon)
    daemon.wait_line(f"{name} STARTED BOOTED")
    deadline = time.monotonic() + 10
    while not (dirs["root"] / "tmp" / f"ready-{name}").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return daemon


def test_foreground_run_and_sigterm(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon]
) -> None:
    """--start defines and starts; SIGTERM shuts guests down gracefully and exits 0."""
    daemon = _start_ready(tmp_path, dirs, prefix, daemons, "p1")
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.wait_line("@supervisor STOPPED")
    events = [line.split(" ", 1)[1] for line in daemon.lines]
    assert events == [
        "@supervisor STARTED",
        "p1 DEFINED ADDED",
        "p1 STARTED BOOTED",
        "p1 STOPPED SHUTDOWN",
        "@supervisor STOPPED",
    ]
    seqs = [int(line.split(" ", 1)[0]) for line in daemon.lines]
    assert seqs == sorted(seqs)
    assert find_leftovers(detect_layout(), prefix) == []


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_then_readopt(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon]
) -> None:
    """After SIGKILL of the supervisor, running guests are re-adopted, dead ones reported."""
    keep = _doc(tmp_path, "keep", dirs["root"])
    gone = _doc(tmp_path, "gone", dirs["root"])
    first = Daemon([*_args(dirs, prefix), "--start", keep, gone])
    daemons.append(first)
    first.wait_line("keep STARTED BOOTED")
    first.wait_line("gone STARTED BOOTED")
    records = {p.stem: json.loads(p.read_text()) for p in (dirs["run"] / "domains").glob("*.json")}
    assert sorted(records) == ["gone", "keep"]
    first.stop(signal.SIGKILL)

    keep_init = records["keep"]["init_pid"]
    gone_init = records["gone"]["init_pid"]
    os.kill(gone_init, signal.SIGKILL)  # the guest ends while no supervisor watches
    deadline = time.monotonic() + 5
    while Path(f"/proc/{gone_init}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path(f"/proc/{keep_init}").exists()

    second = Daemon(_args(dirs, prefix))
    daemons.append(second)
    line = second.wait_line("gone STOPPED FAILED")
    started = second.wait_line("@supervisor STARTED")
    # the supervisor's own STARTED comes first, then what taking over its predecessor's
    # guests reports
    assert int(started.split()[0]) < int(line.split()[0])
    seq_before = max(int(x.split()[0]) for x in first.lines) if first.lines else 0
    assert seq_before >= 1
    assert Path(f"/proc/{keep_init}").exists()  # still the same guest, untouched
    assert second.stop(signal.SIGTERM) == 0
    second.wait_line("keep STOPPED SHUTDOWN")
    # init was re-parented when the first supervisor died: its new parent reaps it, maybe a
    # moment after the event, so a zombie counts as ended
    assert not _running(keep_init)
    assert find_leftovers(detect_layout(), prefix) == []
    assert list((dirs["run"] / "domains").glob("*.json")) == []


def test_closed_stdout_does_not_stop_the_shutdown(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon]
) -> None:
    """`vsv daemon | grep ...` and a Ctrl-C: the reader dies first; the supervisor still stops
    its guests cleanly and exits 0."""
    daemon = _start_ready(tmp_path, dirs, prefix, daemons, "p2")
    assert daemon.proc.stdout is not None
    daemon.proc.stdout.close()  # the reader is gone: the next event line hits a broken pipe
    assert daemon.stop(signal.SIGINT) == 0
    assert find_leftovers(detect_layout(), prefix) == []


def _vsv_json(dirs: dict[str, Path], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", str(dirs["run"] / "vsv.sock"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


def test_live_changes_survive_a_supervisor_sigkill(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon]
) -> None:
    """A live schedinfo change outlives a SIGKILL of the supervisor: the successor re-adopts
    the guest with the CPU shares it had, not the stored definition's."""
    doc = _doc(tmp_path, "tuned", dirs["root"])
    first = Daemon([*_args(dirs, prefix), "--start", doc])
    daemons.append(first)
    first.wait_line("tuned STARTED BOOTED")
    changed = _vsv_json(dirs, "schedinfo", "tuned", "--set", "cpu_shares=512", "--json")
    assert changed["params"]["cpu_shares"] == 512
    first.wait_line("tuned TUNABLE")
    first.stop(signal.SIGKILL)

    second = Daemon(_args(dirs, prefix))
    daemons.append(second)
    second.wait_line("@supervisor STARTED")
    assert _vsv_json(dirs, "schedinfo", "tuned", "--json")["params"]["cpu_shares"] == 512
    shares = Path(f"/sys/fs/cgroup/cpu/{prefix}-tuned/cpu.shares")
    if shares.parent.is_dir():  # v1 cpu controller (this machine); on pure v2 it is cpu.weight
        assert shares.read_text().strip() == "512"
    assert second.stop(signal.SIGTERM) == 0
    second.wait_line("tuned STOPPED SHUTDOWN")
    assert find_leftovers(detect_layout(), prefix) == []


def test_second_supervisor_on_a_live_socket_leaves_the_first_alone(
    tmp_path: Path, dirs: dict[str, Path], prefix: str, daemons: list[Daemon]
) -> None:
    """A second `vsv daemon` on the same socket exits 1 naming the socket before it does
    anything else: it announces nothing and the first one's guest keeps running, untouched."""
    first = _start_ready(tmp_path, dirs, prefix, daemons, "only")
    record = json.loads((dirs["run"] / "domains" / "only.json").read_text())
    second = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", *_args(dirs, prefix)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another supervisor is serving" in second.stderr
    assert str(dirs["run"] / "vsv.sock") in second.stderr
    assert second.stdout == ""  # not even its own STARTED
    assert _running(record["init_pid"])
    assert (dirs["run"] / "vsv.sock").is_socket()  # the first one's socket is still there
    assert _vsv_json(dirs, "list", "--json")  # and still served
    assert first.stop(signal.SIGTERM) == 0
    first.wait_line("@supervisor STOPPED")
    assert [line.split(" ", 1)[1] for line in first.lines] == [
        "@supervisor STARTED",
        "only DEFINED ADDED",
        "only STARTED BOOTED",
        "only STOPPED SHUTDOWN",
        "@supervisor STOPPED",
    ]
    assert find_leftovers(detect_layout(), prefix) == []
