"""Root in a guest must not reach the host: every escape tried from inside guests of each kind.

One real daemon (sandbox network namespace) runs a guest of each kind: a busybox root and the
host's root (read-only), in the lxc and in the vserver dialect, each with and without an
``<idmap>``. Each guest's init runs ``tests/escape_probe.py`` at boot, and ``vsv exec`` runs it
again; both must find every way out blocked, and hold exactly the documented capabilities. The
guests' own work must still run: busybox init, ping, reboot -f and poweroff -f, a user switch.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from supervisor import gc, nsutil
from supervisor.guest import confine
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain
from supervisor.xml import parse_domain
from tests.fake_supervisor import short_tmpdir
from tests.test_cli_daemon import REPO, Env, js, vsv, wait_state

pytestmark = pytest.mark.root

PROBE_DIR = Path(__file__).resolve().parent
#: the interpreter that runs the probe inside the guests (a bind of its prefix, read-only)
PYTHON = os.path.realpath(sys.executable)
PY_PREFIX = os.path.realpath(sys.base_prefix)
#: where each guest sees this directory (a tmpfs of its own in every kind of guest)
PROBE = "/run/vsvprobe/escape_probe.py"
IDMAP_BASE = 400000


@attrs.frozen
class Kind:
    """One kind of guest of the matrix."""

    name: str
    dialect: str
    host_root: bool
    idmap: bool


KINDS = [
    Kind(f"{root[0]}{dialect[0]}{'i' if idmap else ''}", dialect, root == "host", idmap)
    for dialect in ("lxc", "vserver")
    for root in ("busybox", "host")
    for idmap in (False, True)
]


@attrs.define
class Lab:
    """The running daemon, its guests' definitions and what the probe is told."""

    env: Env
    domains: dict[str, Domain] = attrs.Factory(dict)
    probe_args: str = ""


def _host_bound_names() -> dict[str, list[str]]:
    """What the test binds under /root or /home itself (the interpreter), by directory."""
    out: dict[str, list[str]] = {}
    for top in ("/root", "/home"):
        if PY_PREFIX.startswith(top + "/"):
            out[top] = [PY_PREFIX[len(top) + 1 :].split("/")[0]]
    return out


def _filesystems(kind: Kind, root: Path | None) -> str:
    binds = [(PY_PREFIX, PY_PREFIX), (str(PROBE_DIR), "/run/vsvprobe")]
    if root is not None:  # a busybox root has no C library: the host's, for the interpreter
        binds += [("/usr/lib", "/usr/lib"), ("/usr/lib", "/lib"), ("/lib64", "/lib64")]
    out = []
    if root is not None:
        out.append(f"<filesystem type='mount'><source dir='{root}'/><target dir='/'/></filesystem>")
    for source, target in binds:
        out.append(
            f"<filesystem type='mount'><source dir='{source}'/><target dir='{target}'/>"
            "<readonly/></filesystem>"
        )
    return "".join(out)


def _domain_xml(
    name: str, kind: Kind, root: Path | None, init: list[str], *, extra: str = "", index: int = 0
) -> str:
    idmap = ""
    if kind.idmap:
        target = IDMAP_BASE + index * 65536
        idmap = (
            f"<idmap><uid start='0' target='{target}' count='65536'/>"
            f"<gid start='0' target='{target}' count='65536'/></idmap>"
        )
    args = "".join(f"<initarg>{a}</initarg>" for a in init[1:])
    return (
        f"<domain type='{kind.dialect}'><name>{name}</name>"
        f"<os><type>exe</type><init>{init[0]}</init>{args}</os>{idmap}"
        f"<features><privnet/>{extra}</features>"
        f"<devices>{_filesystems(kind, root)}</devices></domain>"
    )


def _rootfs(base: Path, name: str, kind: Kind, index: int) -> Path | None:
    if kind.host_root:
        return None
    start = IDMAP_BASE + index * 65536
    owner = (start, start) if kind.idmap else None
    root = Path(prepare_busybox_root(str(base / "roots" / name), owner=owner))
    # a node of the host's root disk, which only the device allowlist keeps the guest from
    node = root / "vsv-blk"
    if not node.exists():
        os.mknod(node, 0o666 | stat.S_IFBLK, os.stat("/").st_dev)
        os.chmod(node, 0o666)
    return root


def _define(lab: Lab, name: str, xml: str) -> None:
    path = lab.env.base / f"{name}.xml"
    path.write_text(xml)
    lab.domains[name] = parse_domain(xml.encode())
    vsv(lab.env, "define", str(path))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A daemon with one running guest of each kind, whose init ran the probe at boot."""
    prefix = "vsvt" + secrets.token_hex(2)
    base = short_tmpdir()
    env = Env(base, prefix)
    lab = Lab(env)
    try:
        marker = base / "run" / "escape-marker"
        marker.write_text("the host's\n")
        lab.probe_args = json.dumps(
            {
                "marker": str(marker),
                "sockets": [env.sock, env.ro],
                "other_cgroup": f"{prefix}-{KINDS[-1].name}",
                "block_dev": [os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev)],
                "state_dir": str(base / "state"),
                "block_node": "/vsv-blk",
                "allowed": _host_bound_names(),
            }
        )
        for index, kind in enumerate(KINDS):
            init = [
                "/bin/busybox", "sh", "-c",
                f"{PYTHON} -I -S {PROBE} \"$0\"; exec /bin/busybox sleep 1000000",
                lab.probe_args,
            ]  # fmt: skip
            root = _rootfs(base, kind.name, kind, index)
            _define(lab, kind.name, _domain_xml(kind.name, kind, root, init, index=index))
            vsv(env, "start", kind.name)
        yield lab
    finally:
        status = env.stop() if env.proc.poll() is None else env.proc.returncode
        if nsutil.netns_exists(env.netns):
            nsutil.delete_netns(env.netns)
        shutil.rmtree(base, ignore_errors=True)
        leftovers = gc.find(prefix)
        if leftovers:
            gc.remove(leftovers)
        assert [] == [(x.kind, x.name) for x in leftovers]
        assert 0 == status


def _boot_report(lab: Lab, name: str) -> dict[str, Any]:
    """The probe's report from the guest's init, printed to the guest's log at boot."""
    log = lab.env.base / "run" / "logs" / f"{name}.log"
    deadline = time.monotonic() + 20
    while True:
        lines = (
            [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
            if log.exists()
            else []
        )
        if lines:
            report: dict[str, Any] = json.loads(lines[-1])
            return report
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.05)


def _exec(
    lab: Lab, name: str, *argv: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    who = ["--user", user] if user else []
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", lab.env.sock, "exec", name, *who,
         "--no-tty", "--", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _exec_report(lab: Lab, name: str) -> dict[str, Any]:
    done = _exec(lab, name, PYTHON, "-I", "-S", PROBE, lab.probe_args)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _escaped(report: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in report["results"].items() if not v.startswith("blocked")}


def _expected_mask(domain: Domain) -> int:
    """The documented set, as far as the supervisor itself holds it (a host may run it without
    some capability: no guest can be given more than the supervisor has), but in a user
    namespace of the guest's own, where every capability is the namespace's."""
    ours = int(_status(os.getpid())["CapBnd"], 16)
    mask = 0
    for cap in confine.capability_set(domain):
        mask |= 1 << confine.CAPABILITIES[cap]
    return mask if domain.idmap else mask & ours


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _check_caps(report_caps: dict[str, str], expected: int) -> None:
    assert expected == int(report_caps["CapBnd"], 16)
    assert expected == int(report_caps["CapEff"], 16)
    assert expected == int(report_caps["CapPrm"], 16)
    assert (0, 0) == (int(report_caps["CapInh"], 16), int(report_caps["CapAmb"], 16))
    assert "2" == report_caps["Seccomp"]  # a filter


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_every_escape_fails_from_init(lab: Lab, kind: Kind) -> None:
    """The guest's init, root in its guest, finds every way out blocked."""
    report = _boot_report(lab, kind.name)
    assert {} == _escaped(report)
    assert len(report["results"]) >= 16
    if not kind.host_root:  # the node is there and its mode allows it: the allowlist refuses
        assert "Operation not permitted" in report["results"]["open_block_node"]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_every_escape_fails_from_exec(lab: Lab, kind: Kind) -> None:
    """A command `vsv exec` runs in the guest finds every way out blocked as well."""
    assert {} == _escaped(_exec_report(lab, kind.name))


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_capabilities_of_init_and_exec_are_the_documented_set(lab: Lab, kind: Kind) -> None:
    """CapBnd = CapEff = CapPrm = the documented set for the dialect, for init and exec."""
    expected = _expected_mask(lab.domains[kind.name])
    boot = _boot_report(lab, kind.name)
    _check_caps(boot["init"], expected)  # init itself (the probe reads /proc/1)
    _check_caps(boot["self"], expected)  # and a root process it started
    _check_caps(_exec_report(lab, kind.name)["self"], expected)
    # init as the host sees it
    pid = js(lab.env, "dominfo", kind.name)["init_pid"]
    assert expected == int(_status(pid)["CapBnd"], 16)
    assert expected == int(_status(pid)["CapEff"], 16)


def test_policy_deny_with_one_capability_on_gives_exactly_it(lab: Lab) -> None:
    """<capabilities policy='deny'> with net_bind_service on: that one capability, nothing else."""
    kind = Kind("dn", "lxc", host_root=False, idmap=False)
    root = _rootfs(lab.env.base, "dn", kind, 0)
    extra = "<capabilities policy='deny'><net_bind_service state='on'/></capabilities>"
    init = ["/bin/busybox", "sleep", "1000000"]
    _define(lab, "dn", _domain_xml("dn", kind, root, init, extra=extra))
    vsv(lab.env, "start", "dn")
    try:
        pid = js(lab.env, "dominfo", "dn")["init_pid"]
        bit = 1 << confine.CAPABILITIES["net_bind_service"]
        assert (bit, bit) == (int(_status(pid)["CapBnd"], 16), int(_status(pid)["CapEff"], 16))
        done = _exec(lab, "dn", "/bin/busybox", "grep", "Cap[BE]", "/proc/self/status")
        assert [f"{bit:016x}"] * 2 == [line.split()[1] for line in done.stdout.splitlines()]
    finally:
        vsv(lab.env, "destroy", "dn")


@pytest.mark.parametrize("name", ["bl", "bv", "hl", "bli", "bvi"])
def test_ping_where_net_raw_is_kept(lab: Lab, name: str) -> None:
    """Every default set here keeps net_raw (an own network namespace): ping works."""
    assert "net_raw" in confine.capability_set(lab.domains[name])
    done = _exec(lab, name, "/bin/busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1")
    assert 0 == done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["bl", "hvi"])
def test_a_user_switch_by_exec_user(lab: Lab, name: str) -> None:
    """`vsv exec --user nobody`: that uid, and no capability left."""
    done = _exec(lab, name, "/bin/busybox", "sh", "-c", "id -u; grep CapEff /proc/self/status",
                 user="65534")  # fmt: skip
    assert 0 == done.returncode, done.stderr
    uid, eff = done.stdout.splitlines()
    assert ("65534", 0) == (uid, int(eff.split()[1], 16))


@pytest.mark.parametrize("idmap", [False, True], ids=["plain", "idmap"])
def test_busybox_init_and_in_guest_reboot_and_poweroff(lab: Lab, idmap: bool) -> None:
    """busybox init boots; `reboot -f` inside gives REBOOT and a new init, `poweroff -f`
    SHUTDOWN GUEST then STOPPED SHUTDOWN."""
    name = "init" + ("i" if idmap else "")
    kind = Kind(name, "lxc", host_root=False, idmap=idmap)
    root = _rootfs(lab.env.base, name, kind, len(KINDS) + 1)
    assert root is not None
    inittab = "::sysinit:/bin/echo vsv-booted\n::respawn:/bin/sleep 1000000\n"
    (root / "etc" / "inittab").write_text(inittab)
    _define(lab, name, _domain_xml(name, kind, root, ["/sbin/init"], index=len(KINDS) + 1))
    since = _last_seq(lab)
    vsv(lab.env, "start", name)
    log = lab.env.base / "run" / "logs" / f"{name}.log"
    _wait_for(lambda: log.exists() and "vsv-booted" in log.read_text(), "busybox init's sysinit")
    first = js(lab.env, "dominfo", name)["init_pid"]
    assert 0 == _exec(lab, name, "/bin/busybox", "reboot", "-f").returncode
    _wait_for(lambda: _events(lab, name, since)[-1:] == ["REBOOT"], "the REBOOT event")
    _wait_for(lambda: js(lab.env, "dominfo", name)["init_pid"] not in (None, first), "a new init")
    wait_state(lab.env, name, "RUNNING")
    _exec(lab, name, "/bin/busybox", "poweroff", "-f")
    wait_state(lab.env, name, "SHUTOFF")
    assert ["STARTED BOOTED", "REBOOT", "SHUTDOWN GUEST", "STOPPED SHUTDOWN"] == _events(
        lab, name, since
    )


def _last_seq(lab: Lab) -> int:
    out = vsv(lab.env, "event", "--since", "0", "--json")[1]
    return max((json.loads(line)["seq"] for line in out.splitlines()), default=0)


def _events(lab: Lab, name: str, since: int) -> list[str]:
    out = vsv(lab.env, "event", "--since", str(since), "--json")[1]
    events = [json.loads(line) for line in out.splitlines()]
    return [" ".join(filter(None, (e["type"], e["detail"]))) for e in events if e["domain"] == name]


def _wait_for(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)
