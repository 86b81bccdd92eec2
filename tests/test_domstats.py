"""`vsv domstats` and `vsv dominfo` against a real daemon: every figure checked against the
cgroup file or the `ip -s link` counter it comes from, read in the same test around the call."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from supervisor.guest.cgroups import CgroupLayout, detect_layout
from tests import test_cli_daemon
from tests.test_cli_daemon import Env, js, vsv

pytestmark = pytest.mark.root


env = test_cli_daemon.env  # the real daemon fixture, bound here for pytest


def _dir(layout: CgroupLayout, controller: str, name: str) -> tuple[str, int] | None:
    """The guest's directory for ``controller`` and its cgroup version (as the kernel has it)."""
    if layout.unified is not None and controller in layout.v2_controllers:
        return os.path.join(layout.unified, name), 2
    path = layout.v1_path(controller)
    return (os.path.join(path, name), 1) if path is not None else None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _kernel_figures(layout: CgroupLayout, cgroup: str, netns: str) -> dict[str, int]:
    """The figures as the kernel states them now, read without the supervisor's code."""
    out: dict[str, int] = {}
    acct = _dir(layout, "cpuacct", cgroup)
    if acct is not None:
        out["cpu.time"] = int(_read(os.path.join(acct[0], "cpuacct.usage")))
        out["cpu.user"] = int(_read(os.path.join(acct[0], "cpuacct.usage_user")))
        out["cpu.system"] = int(_read(os.path.join(acct[0], "cpuacct.usage_sys")))
    else:
        assert layout.unified is not None
        stat = dict(
            line.split()
            for line in _read(os.path.join(layout.unified, cgroup, "cpu.stat")).splitlines()
        )
        out["cpu.time"] = int(stat["usage_usec"]) * 1000
        out["cpu.user"] = int(stat["user_usec"]) * 1000
        out["cpu.system"] = int(stat["system_usec"]) * 1000
    cpu = _dir(layout, "cpu", cgroup)
    if cpu is not None:
        stat = dict(line.split() for line in _read(os.path.join(cpu[0], "cpu.stat")).splitlines())
        out["cpu.throttle.periods"] = int(stat["nr_periods"])
        out["cpu.throttle.count"] = int(stat["nr_throttled"])
    memory = _dir(layout, "memory", cgroup)
    assert memory is not None
    used = "memory.current" if memory[1] == 2 else "memory.usage_in_bytes"
    out["memory.used"] = int(_read(os.path.join(memory[0], used)))
    pids = _dir(layout, "pids", cgroup)
    assert pids is not None
    out["pids.current"] = int(_read(os.path.join(pids[0], "pids.current")))
    link = json.loads(
        subprocess.run(
            ["ip", "-n", netns, "-j", "-s", "link", "show", "eth0"],
            capture_output=True,
            check=True,
        ).stdout
    )[0]["stats64"]
    for way in ("rx", "tx"):
        out[f"net.0.{way}.bytes"] = link[way]["bytes"]
        out[f"net.0.{way}.pkts"] = link[way]["packets"]
        out[f"net.0.{way}.errs"] = link[way]["errors"]
        out[f"net.0.{way}.drop"] = link[way]["dropped"]
    return out


def _define(e: Env, prefix: str) -> None:
    (e.base / "n.xml").write_text(
        f"<network><name>lan</name><bridge name='{prefix}br'/><forward mode='nat'/>"
        "<ip address='10.213.51.1' prefix='24'/></network>"
    )
    script = "dd if=/dev/zero of=/tmp/blob bs=64k count=16 2>/dev/null; while :; do sleep 0.2; done"
    (e.base / "d.xml").write_text(
        f"""<domain type='lxc'><name>w1</name><memory unit='MiB'>256</memory>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>{script}</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        <interface type='network'><source network='lan'/>
        <ip address='10.213.51.10' prefix='24'/></interface></devices></domain>"""
    )
    (e.base / "idle.xml").write_text(
        "<domain type='lxc'><name>w2</name><os><type>exe</type><init>/bin/sh</init></os></domain>"
    )
    for verb, path in (("net-define", "n.xml"), ("define", "d.xml"), ("define", "idle.xml")):
        vsv(e, verb, str(e.base / path))
    vsv(e, "net-start", "lan")
    vsv(e, "start", "w1")


def test_domstats_figures_are_the_kernels(env: Env, prefix: str) -> None:
    """Every figure of a running guest lies between the kernel's value read just before and
    just after the call (the guest is frozen, so they barely move); an inactive guest has its
    state only; the NIC is named by its host side."""
    e = env
    _define(e, prefix)
    ping = ["ip", "netns", "exec", e.netns, "/bin/busybox", "ping", "-c3", "-i0.2", "-W2"]
    assert 0 == subprocess.run([*ping, "10.213.51.10"], capture_output=True).returncode
    vsv(e, "suspend", "w1")
    layout = detect_layout()
    netns = f"{prefix}-w1"
    before = _kernel_figures(layout, f"{prefix}-w1", netns)
    answer: list[dict[str, Any]] = js(e, "domstats", "w1", "w2")
    after = _kernel_figures(layout, f"{prefix}-w1", netns)
    assert ["w1", "w2"] == [a["name"] for a in answer]
    got, idle = answer[0]["stats"], answer[1]["stats"]
    assert (3, "USER") == (got["state.state"], got["state.reason"])
    for key, low in before.items():
        high = after[key]
        assert min(low, high) <= got[key] <= max(low, high), (key, low, got[key], high)
    assert got["net.0.rx.pkts"] >= 3  # the pings (and their ARP) reached the guest
    assert got["pids.current"] >= 2  # sh and its sleep
    # <memory> is the balloon's maximum and the cgroup's memory limit (libvirt's LXC driver)
    assert 256 * 1024 == got["balloon.maximum"] == got["memory.limit"] // 1024
    assert got["balloon.current"] == got["memory.used"] // 1024
    assert got["memory.peak"] >= got["memory.used"]
    assert got["cpu.user"] + got["cpu.system"] <= got["cpu.time"] + 10_000_000
    host_links = subprocess.run(
        ["ip", "-n", e.netns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert (1, True) == (got["net.count"], f" {got['net.0.name']}@" in host_links)
    # no <blkiotune>: the guest is not in the block I/O controller, so no block figures
    assert "block.count" not in got
    assert {"state.state": 5, "state.reason": "UNKNOWN"} == {
        k: v for k, v in idle.items() if k.startswith("state.")
    }
    assert "cpu.time" not in idle
    every = js(e, "domstats")
    assert ["w1", "w2"] == [a["name"] for a in every]


def test_dominfo_shows_cpu_time_and_used_memory(env: Env, prefix: str) -> None:
    """dominfo prints CPU time and Used memory as virsh does; JSON has them in ns and KiB."""
    e = env
    _define(e, prefix)
    vsv(e, "suspend", "w1")
    info = js(e, "dominfo", "w1")
    memory = _dir(detect_layout(), "memory", f"{prefix}-w1")
    assert memory is not None
    used = "memory.current" if memory[1] == 2 else "memory.usage_in_bytes"
    kib = int(_read(os.path.join(memory[0], used))) // 1024
    assert isinstance(info["cpu_time_ns"], int)
    assert info["cpu_time_ns"] > 0
    assert abs(kib - info["memory_used_kib"]) <= 64
    _, text, _ = vsv(e, "dominfo", "w1")
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["CPU time"].strip().endswith("s")
    assert lines["Used memory"].strip().endswith(" KiB")
    assert lines["Max memory"].strip() == "262144 KiB"
    inactive = js(e, "dominfo", "w2")
    assert (None, None) == (inactive["cpu_time_ns"], inactive["memory_used_kib"])


def test_domstats_of_an_unknown_domain_is_refused(env: Env) -> None:
    """An unknown name: exit 1 naming it."""
    code, _, err = vsv(env, "domstats", "nope", check=False)
    assert 1 == code
    assert "'nope'" in err
