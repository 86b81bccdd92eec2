"""Every `vsv` verb against a real `vsv daemon` (sandbox netns, real guests), --json parsed."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import nsutil
from supervisor.api.client import Client
from supervisor.guest.cgroups import detect_layout, find_leftovers
from supervisor.guest.rootfs import prepare_busybox_root
from tests.fake_supervisor import short_tmpdir

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent


class Env:
    """A running daemon and the paths a test needs."""

    def __init__(self, base: Path, prefix: str) -> None:
        self.base = base
        self.prefix = prefix
        self.sock = str(base / "rw.sock")
        self.ro = str(base / "ro.sock")
        self.root = Path(prepare_busybox_root(str(base / "rootfs")))
        self.netns = f"{prefix}-sbx"
        self.out = open(base / "daemon.out", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", *self.args()],
            cwd=REPO,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(self.ro):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((base / "daemon.out").read_text())
            time.sleep(0.02)
        # the sockets are bound before the supervisor has made its run dir (a connection waits
        # in the backlog until the API is served): one answered request means it is up
        with Client(self.ro, timeout=20) as c:
            c.get_json("/v1/supervisor")

    def args(self) -> list[str]:
        """The daemon's command-line options for this environment."""
        base, prefix = self.base, self.prefix
        return [
            "--state-dir", str(base / "state"), "--run-dir", str(base / "run"),
            "--prefix", prefix, "--netns", self.netns,
            "--socket", self.sock, "--ro-socket", self.ro,
            "--shutdown-timeout", "3",
        ]  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.out.close()

    def close(self) -> None:
        """Teardown whatever happened: SIGTERM (the daemon stops its guests and networks; a
        SIGKILL would leave them to gc), SIGKILL if it hangs, then the sandbox and the files."""
        if self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.out.closed:
            self.out.close()
        if nsutil.netns_exists(self.netns):
            nsutil.delete_netns(self.netns)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def env(prefix: str) -> Iterator[Env]:
    """A real daemon in a sandbox of its own, closed afterwards (:meth:`Env.close`); other
    modules bind it by name (``env = test_cli_daemon.env``)."""
    e = Env(short_tmpdir(), prefix)
    try:
        yield e
    finally:
        e.close()


def vsv(e: Env, *args: str, check: bool = True) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", e.sock, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert (done.returncode, done.stderr) == (0, ""), args
    return done.returncode, done.stdout, done.stderr


def js(e: Env, *args: str) -> Any:
    return json.loads(vsv(e, *args, "--json")[1])


def wait_state(e: Env, name: str, state: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while js(e, "domstate", name)["state"] != state:
        assert time.monotonic() < deadline, f"{name} never reached {state}"
        time.sleep(0.05)


def test_every_verb_against_the_real_daemon(env: Env, prefix: str) -> None:
    """All verbs work on a real daemon; JSON answers describe the real guest and network."""
    e = env
    bridge = f"{prefix}br"
    (e.base / "n.xml").write_text(
        f"<network><name>lan</name><bridge name='{bridge}'/><forward mode='nat'/>"
        "<ip address='10.213.50.1' prefix='24'><dhcp><range start='10.213.50.100' "
        "end='10.213.50.150'/></dhcp></ip></network>"
    )
    (e.base / "d.xml").write_text(
        f"""<domain type='vserver' id='4242'><name>w1</name>
        <scheduler fill_rate1='1' interval1='4'/>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>trap 'exit 0' TERM; while :; do sleep 0.1; done</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        <interface type='network'><source network='lan'/>
        <ip address='10.213.50.10' prefix='24'/></interface></devices></domain>"""
    )
    assert js(e, "net-define", str(e.base / "n.xml"))["network"]["name"] == "lan"
    assert js(e, "net-start", "lan")["network"]["active"] is True
    assert [(n["name"], n["active"]) for n in js(e, "net-list")] == [("lan", True)]
    assert bridge in js(e, "net-dumpxml", "lan")["xml"]

    assert js(e, "define", str(e.base / "d.xml"))["domain"]["name"] == "w1"
    assert js(e, "list") == []
    rows = js(e, "list", "--all")
    assert [(r["name"], r["id"], r["state"]) for r in rows] == [("w1", 4242, "SHUTOFF")]
    assert js(e, "start", "w1")["domain"]["state"] == "RUNNING"
    assert [r["name"] for r in js(e, "list")] == ["w1"]
    # the guest really has its address: ping it from the sandbox (the host side)
    ping = subprocess.run(
        ["ip", "netns", "exec", e.netns, "/bin/busybox", "ping", "-c1", "-W2", "10.213.50.10"],
        capture_output=True,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout
    addrs = js(e, "domifaddr", "w1")
    assert ["10.213.50.10"] == [a["address"] for i in addrs for a in i["addresses"]]
    paused = js(e, "suspend", "w1")["domain"]
    assert (paused["state"], paused["reason"]) == ("PAUSED", "USER")
    assert js(e, "resume", "w1")["domain"]["state"] == "RUNNING"
    assert js(e, "reboot", "w1")["domain"]["state"] == "RUNNING"
    wait_state(e, "w1", "RUNNING")
    assert js(e, "dominfo", "w1")["name"] == "w1"
    assert "<name>w1</name>" in js(e, "dumpxml", "w1")["xml"]
    assert js(e, "autostart", "w1")["autostart"] is True
    assert js(e, "autostart", "w1", "--disable")["autostart"] is False
    # 1 token per 4 ticks of each CPU the bucket covers (all of the supervisor's CPUs), HZ 250
    quota = 4000 * len(os.sched_getaffinity(0))
    cpu_dir = Path(f"/sys/fs/cgroup/cpu/{prefix}-w1")
    if cpu_dir.is_dir():  # v1 cpu controller (this machine); on pure v2 it is cpu.max
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == str(quota)
        assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "16000"
    info = js(e, "schedinfo", "w1")["params"]
    assert (info["scheduler"], info["vcpu_period"], info["vcpu_quota"]) == ("posix", 16000, quota)
    changed = js(e, "schedinfo", "w1", "--set", "cpu_shares=512")["params"]
    assert changed["cpu_shares"] == 512
    if cpu_dir.is_dir():
        assert (cpu_dir / "cpu.shares").read_text().strip() == "512"
    _, text, _ = vsv(e, "schedinfo", "w1")
    assert "cpu_shares:" in text
    assert isinstance(js(e, "net-dhcp-leases", "lan"), list)
    vsv(e, "shutdown", "w1", "--json")
    wait_state(e, "w1", "SHUTOFF")
    js(e, "start", "w1")
    assert js(e, "destroy", "w1")["domain"]["reason"] == "DESTROYED"
    info = js(e, "info")
    assert "seq" in info

    _, out, _ = vsv(e, "event", "--since", "0", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert {"seq", "domain", "type", "detail", "time"} <= set(events[0])
    assert [ev["seq"] for ev in events] == list(range(1, len(events) + 1))
    w1 = [(ev["type"], ev["detail"]) for ev in events if ev["domain"] == "w1"]
    assert w1 == [
        ("DEFINED", "ADDED"),
        ("STARTED", "BOOTED"),
        ("SUSPENDED", "PAUSED"),
        ("RESUMED", "UNPAUSED"),
        ("REBOOT", None),
        ("TUNABLE", None),
        ("STOPPED", "SHUTDOWN"),
        ("STARTED", "BOOTED"),
        ("STOPPED", "DESTROYED"),
    ]
    js(e, "undefine", "w1")
    js(e, "net-destroy", "lan")
    js(e, "net-undefine", "lan")
    assert js(e, "net-list", "--all") == []
    assert e.stop() == 0
    assert find_leftovers(detect_layout(), prefix) == []
    assert not nsutil.netns_exists(e.netns)


def test_readonly_socket_and_restart_keeps_numbering(env: Env, prefix: str) -> None:
    """The read-only socket refuses mutations; numbering continues across a daemon restart."""
    e = env
    code, _, err = vsv(e, "--socket", e.ro, "info", check=False)
    assert code == 0, err
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", e.ro, "net-start", "x"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 4
    _, out, _ = vsv(e, "event", "--since", "0", "--json")
    first = [json.loads(line)["seq"] for line in out.splitlines()]
    assert e.stop() == 0
    again = Env(e.base, prefix)
    try:
        _, out, _ = vsv(again, "event", "--since", "0", "--json")
        seqs = [json.loads(line)["seq"] for line in out.splitlines()]
        assert seqs[: len(first)] == first
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) > len(first)  # the old STOPPED and the new STARTED
    finally:
        again.stop()


def _run(e: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", e.sock, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_exec_runs_a_command_inside_the_guest(env: Env, prefix: str) -> None:
    """`vsv exec`: the guest's namespaces, root, cgroups and environment; statuses passed on."""
    e = env
    (e.root / "etc" / "marker").write_text("guest root\n")
    (e.base / "x.xml").write_text(
        f"""<domain type='vserver'><name>x1</name>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>trap 'exit 0' TERM; while :; do sleep 0.1; done</initarg>
        <initenv name='GREETING'>hello</initenv></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    js(e, "define", str(e.base / "x.xml"))
    init_pid = js(e, "start", "x1")["domain"]["init_pid"]
    namespaces = ("mnt", "uts", "ipc", "net", "pid")
    script = (
        "echo pid=$$; hostname; echo $GREETING; cat /etc/marker; "
        + "; ".join(f"readlink /proc/self/ns/{ns}" for ns in namespaces)
        + "; cat /proc/self/cgroup; echo --; cat /proc/1/cgroup"
    )
    done = _run(e, "exec", "x1", "--", "sh", "-c", script)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    lines = done.stdout.splitlines()
    # a process of the guest's pid namespace (init is 1 there), its hostname, env and root
    assert int(lines[0].removeprefix("pid=")) > 1
    assert lines[1:4] == ["x1", "hello", "guest root"]
    assert lines[4:9] == [os.readlink(f"/proc/{init_pid}/ns/{ns}") for ns in namespaces]
    # init's cgroups, in the guest's cgroup namespace (each its root there) as on the host
    own, _, inits = "\n".join(lines[9:]).partition("\n--\n")
    assert sorted(own.splitlines()) == sorted(inits.splitlines())
    assert all(line.endswith(":/") for line in own.splitlines())
    init_cgroups = Path(f"/proc/{init_pid}/cgroup").read_text().splitlines()
    assert any(line.endswith(f"/{prefix}-x1") for line in init_cgroups)

    # nothing of the caller's but stdio reaches the guest (a descriptor its shell left open, say;
    # `; true` keeps sh from exec'ing ls in its place, so ls lists the shell's descriptors)
    r, w = os.pipe()
    try:
        vsv_exec = [sys.executable, "-m", "supervisor", "--socket", e.sock, "exec", "x1"]
        listed = subprocess.run(
            [*vsv_exec, "--", "sh", "-c", "ls /proc/$$/fd; true"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            pass_fds=(w,),
        )
    finally:
        os.close(r)
        os.close(w)
    fds = listed.stdout.split()
    assert sorted(fds) == ["0", "1", "2"]
    # statuses: the command's, 128+signal, 127 not found, 126 cannot run
    assert _run(e, "exec", "x1", "--", "sh", "-c", "exit 7").returncode == 7
    assert _run(e, "exec", "x1", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    missing = _run(e, "exec", "x1", "no-such-command")
    assert (missing.returncode, missing.stderr) == (
        127,
        "vsv exec: no-such-command: No such file or directory\n",
    )
    assert _run(e, "exec", "x1", "--cwd", "/nowhere", "--", "true").returncode == 126
    # options after DOMAIN, user and group from the guest's own files, --env, stdin
    who = _run(e, "exec", "x1", "--user", "nobody", "--env", "A=b", "--", "sh", "-c", "id; echo $A")
    assert who.stdout.splitlines() == ["uid=65534(nobody) gid=65534(nogroup)", "b"]
    assert _run(e, "exec", "x1", "--cwd=/etc", "sh", "-c", "pwd").stdout == "/etc\n"
    unknown = _run(e, "exec", "x1", "--user", "nosuchuser", "true")
    assert (unknown.returncode, unknown.stderr) == (
        126,
        "vsv exec: user 'nosuchuser' is not in the guest's /etc/passwd\n",
    )
    assert _run(e, "exec", "x1", stdin="echo from $(hostname)\n").stdout == "from x1\n"
    assert _run(e, "exec", "x1", "--bogus").returncode == 2

    # refused: paused, unknown, not running; a running command dies with its guest's destroy
    js(e, "suspend", "x1")
    paused = _run(e, "exec", "x1", "true")
    assert (paused.returncode, paused.stderr) == (
        125,
        "vsv: error: domain 'x1' is paused; resume it first\n",
    )
    js(e, "resume", "x1")
    assert _run(e, "exec", "nobody-here", "true").returncode == 125
    long = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", e.sock, "exec", "x1", "sleep", "60"],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 10
        procs = Path(f"/sys/fs/cgroup/pids/{prefix}-x1/cgroup.procs")
        if not procs.parent.is_dir():
            procs = Path(f"/sys/fs/cgroup/{prefix}-x1/cgroup.procs")  # pure cgroup v2
        while len(procs.read_text().split()) < 4:  # init, its sleep, exec's helper, sleep 60
            assert time.monotonic() < deadline, procs.read_text()
            time.sleep(0.02)
        js(e, "destroy", "x1")
        assert long.wait(10) == 128 + 9
    finally:
        if long.poll() is None:
            long.kill()
            long.wait()
    stopped = _run(e, "exec", "x1", "true")
    assert (stopped.returncode, stopped.stderr) == (125, "vsv: error: domain 'x1' is not running\n")
    js(e, "undefine", "x1")
    assert e.stop() == 0
    assert find_leftovers(detect_layout(), prefix) == []


def test_exec_reports_the_command_status_when_the_process_between_dies(
    env: Env, prefix: str
) -> None:
    """`vsv exec` forks a process that joins the guest's cgroups and waits for the command; a
    guest's `reboot -f` or destroy kills it with the cgroup. The command's own status is still
    the one reported (it was 137, SIGKILL, when `reboot -f` itself had exited 0)."""
    e = env
    (e.base / "w.xml").write_text(
        f"""<domain type='lxc'><name>w1</name>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>trap 'exit 0' TERM; while :; do sleep 0.1; done</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    js(e, "define", str(e.base / "w.xml"))
    js(e, "start", "w1")
    up, go = e.root / "tmp" / "w1-up", e.root / "tmp" / "w1-go"
    script = "touch /tmp/w1-up; while [ ! -e /tmp/w1-go ]; do sleep 0.02; done; exit 7"
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", e.sock, "exec", "w1", "--", "sh", "-c",
         script],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not up.exists():
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)
        between = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(between) == 1
        os.kill(int(between[0]), signal.SIGKILL)
        go.touch()
        assert proc.wait(30) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        up.unlink(missing_ok=True)
        go.unlink(missing_ok=True)
    assert e.stop() == 0
    assert find_leftovers(detect_layout(), prefix) == []


def test_exec_on_a_terminal_gives_the_command_a_terminal_of_its_own(env: Env, prefix: str) -> None:
    """From a terminal, `vsv exec` gives the command a new pty (window size copied, the caller's
    terminal mode restored afterwards): a guest process never holds the admin's terminal."""
    e = env
    (e.base / "t.xml").write_text(
        f"""<domain type='vserver'><name>t1</name>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>trap 'exit 0' TERM; while :; do sleep 0.1; done</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    js(e, "define", str(e.base / "t.xml"))
    js(e, "start", "t1")
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        mode = termios.tcgetattr(slave)
        script = "stty size; cut -d' ' -f7 /proc/self/stat; exit 4"
        argv = [sys.executable, "-m", "supervisor", "--socket", e.sock, "exec", "t1"]
        proc = subprocess.Popen(
            [*argv, "--", "sh", "-c", script],
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        out = b""
        deadline = time.monotonic() + 20
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            assert time.monotonic() < deadline, out
            if select.select([master], [], [], 0.1)[0]:
                out += os.read(master, 4096)
        assert proc.returncode == 4, out
        lines = out.decode().split()
        assert lines[:2] == ["33", "101"], out
        tty_nr = int(lines[2])
        assert tty_nr not in (0, os.fstat(slave).st_rdev)  # a terminal, not the caller's
        assert termios.tcgetattr(slave) == mode
    finally:
        os.close(master)
        os.close(slave)
    js(e, "destroy", "t1")
    js(e, "undefine", "t1")


def test_log_prints_and_follows_a_guests_output(env: Env) -> None:
    """`vsv log`: the guest's stdout and stderr, the last N lines, and --follow for what comes."""
    e = env
    (e.base / "l.xml").write_text(
        f"""<domain type='vserver'><name>l1</name>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>echo first; echo to-stderr >&amp;2; echo third; trap 'exit 0' TERM;
        while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after-go; while :; do sleep 1; done
        </initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    js(e, "define", str(e.base / "l.xml"))
    assert js(e, "dominfo", "l1")["log"].endswith("/logs/l1.log")
    js(e, "start", "l1")
    deadline = time.monotonic() + 10
    while vsv(e, "log", "l1")[1] != "first\nto-stderr\nthird\n":
        assert time.monotonic() < deadline, vsv(e, "log", "l1")
        time.sleep(0.05)
    assert vsv(e, "log", "l1", "-n", "2")[1] == "to-stderr\nthird\n"
    assert vsv(e, "log", "l1", "--lines=0")[1] == ""
    cmd = [sys.executable, "-m", "supervisor", "--socket", e.sock, "log", "l1"]
    follow = subprocess.Popen(
        [*cmd, "-n", "1", "-f", "--timeout", "3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    (e.root / "tmp" / "go").touch()
    out, _ = follow.communicate(timeout=20)
    assert (follow.returncode, out) == (0, "third\nafter-go\n")
    code, _, err = vsv(e, "log", "nobody-here", check=False)
    assert (code, "not defined" in err) == (1, True)
    js(e, "destroy", "l1")
    js(e, "undefine", "l1")
