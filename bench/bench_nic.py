"""Where a guest's NIC costs its time: start with one NIC against none, and the NIC path by step.

Runs the real :class:`supervisor.daemon.Supervisor` in-process with the host side in a sandbox
namespace it creates (``vsvbnic-sbx``), a NAT network with dnsmasq (as in :mod:`bench_start`),
a guest with one ``<interface type='network'>`` (anti-spoofing on, the default), the same guest
with the NIC opted out of anti-spoofing (``<filterref filter='vsv-allow-all'/>``: the NIC as it
was plumbed before the guard existed) and the same guest without a NIC. The three starts are
alternated sample by sample, in both regimes (idle gap, back to back), so load on the machine
hits them alike; the differences are what the NIC and its guard cost. Each start is also given
less the move of its embryo into its cgroup, a kernel wait of 0.1 to 30 ms that has nothing to
do with the guest (see :func:`time_steps`): the whole starts' medians move by milliseconds from
run to run with it, the rest holds still. Before that,
``--burst`` one-NIC guests are started at once (batch wall time, five batches). With
``--profile`` each step of the network ``prepare`` hook is timed by wrapping the supervisor's
functions in place (diagnosis only: the wrappers add microseconds). Everything is named
``vsvbnic...`` and removed also on failure or Ctrl-C.

    .venv/bin/python bench/bench_nic.py [--runs N] [--profile]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from bench_daemon import (
    Probe,
    Timer,
    gap,
    guest,
    leakcheck,
    remove_run_dirs,
    results_path,
    run_all,
    summary,
    tmpfs_run_dir,
)

from supervisor import nsutil
from supervisor.daemon import Supervisor
from supervisor.guest.cgroups import detect_layout, find_leftovers
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import AddressRange, Bridge, Forward, Interface, Network, NetworkIp

PREFIX = "vsvbnic"
#: the guests whose starts are alternated: one NIC, the same NIC opted out of anti-spoofing, none
GUESTS = ("nic", "nic_open", "plain")
ORDERS = list(itertools.permutations(GUESTS))
SANDBOX = f"{PREFIX}-sbx"
RESULTS = results_path("nic.json")


def lan() -> Network:
    """A NAT network with a DHCP range, so dnsmasq runs and takes reservations."""
    return Network(
        name="lan",
        bridge=Bridge(name=f"{PREFIX}b0", stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address="10.78.0.1",
                prefix=16,
                dhcp_ranges=(AddressRange("10.78.1.1", "10.78.1.250"),),
            ),
        ),
    )


def install_probe() -> Probe:
    """Time the steps of the network prepare and release hooks."""
    from supervisor.bus import Bus
    from supervisor.net import dnsmasq, netlink, service

    probe = Probe()
    probe.wrap(Bus, "run_prepare", "prepare hooks (whole)")
    probe.wrap(service.NetworkService, "create_guest_netns", "  guest netns + netlink socket")
    probe.wrap(service.NetworkService, "plumb", "  plumb (whole)")
    probe.wrap(
        netlink.NetnsWorker, "call", "    netlink worker calls (each; the release's veth delete)"
    )
    probe.wrap(netlink.NetnsWorker, "wait", "    veth job waited for after the reservation")
    probe.wrap(dnsmasq.Dnsmasq, "set_host", "    dnsmasq reservation (set_host)")
    probe.wrap(dnsmasq.Dnsmasq, "write_files", "      dnsmasq hosts files written")
    probe.wrap(Bus, "run_release", "release hooks (whole)")
    probe.wrap(service.NetworkService, "unplumb", "  unplumb")
    probe.wrap(nsutil, "delete_netns", "  delete netns")
    return probe


def time_steps(plumbing: dict[str, list[float]], moves: list[float]) -> Callable[[], None]:
    """Time each guest's NIC plumbing (the network prepare hook's plumb step), by guest name,
    so that the guard's share shows without the start's noise, and each move of an embryo into
    its cgroup (in call order); returns the undo.

    The move is where the start's noise comes from: on cgroup v1 a ``cgroup.procs`` write takes
    the kernel's threadgroup lock for writing, which waits for an RCU grace period unless one
    passed recently (0.1 to 30 ms, whatever the guest). Subtracting it per start leaves what the
    guest's own configuration costs.
    """
    from supervisor.guest import spawn
    from supervisor.net import service

    plumb = service.NetworkService.plumb
    move = spawn._move_to_cgroup

    async def timed_plumb(self: Any, domain: Any, guest_netns: str, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await plumb(self, domain, guest_netns, **kwargs)
        finally:
            plumbing.setdefault(domain.name, []).append(time.perf_counter() - t0)

    def timed_move(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return move(*args, **kwargs)
        finally:
            moves.append(time.perf_counter() - t0)

    service.NetworkService.plumb = timed_plumb  # type: ignore[method-assign]
    spawn._move_to_cgroup = timed_move

    def undo() -> None:
        service.NetworkService.plumb = plumb  # type: ignore[method-assign]
        spawn._move_to_cgroup = move

    return undo


async def burst(sup: Supervisor, root: str, n: int) -> dict[str, Any]:
    """``n`` one-NIC guests started at once (one nursery), five times: batch wall times."""
    nic = (Interface(type="network", source="lan"),)
    names = [f"b{i}" for i in range(n)]
    for name in names:
        await sup.define_domain(attrs.evolve(guest(name, root), interfaces=nic))
    walls = []
    for _ in range(5):
        await trio.sleep(0.2)
        walls.append(await run_all(names, sup.start_domain))
        await run_all(names, sup.destroy_domain)
    for name in names:
        await sup.undefine_domain(name)
    return {"n": n, "batch_wall": summary(walls)}


async def measure(workdir: str, runs: int, do_profile: bool, burst_n: int) -> dict[str, Any]:
    root = prepare_busybox_root(os.path.join(workdir, "rootfs"))
    # on a tmpfs like the daemon's default /run/vsv on systemd hosts (see bench_daemon)
    run_dir, where = tmpfs_run_dir()
    sup = Supervisor(
        state_dir=Path(workdir) / "state",
        run_dir=run_dir,
        prefix=PREFIX,
        host_netns=str(nsutil.netns_path(SANDBOX)),
        shutdown_timeout=5.0,
    )
    out: dict[str, Any] = {"runs": runs, "loadavg_before": os.getloadavg(), "run_dir": where}
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            async with sup.bus.subscribe("bench", buffer=1_000_000) as sub:
                timer = Timer(sup, sub)
                await sup.define_network(lan())
                await sup.start_network("lan")
                nic = (Interface(type="network", source="lan"),)
                nic_open = (Interface(type="network", source="lan", filterref="vsv-allow-all"),)
                await sup.define_domain(attrs.evolve(guest("nic", root), interfaces=nic))
                await sup.define_domain(attrs.evolve(guest("nic_open", root), interfaces=nic_open))
                await sup.define_domain(guest("plain", root))
                for _ in range(3):  # warm-up
                    for name in GUESTS:
                        await timer.start(name)
                        await timer.destroy(name)
                out["burst"] = await burst(sup, root, burst_n)
                for regime, idle in (("idle", True), ("back_to_back", False)):
                    probe = install_probe() if do_profile else None
                    samples: dict[str, list[float]] = {name: [] for name in GUESTS}
                    steady: dict[str, list[float]] = {name: [] for name in GUESTS}
                    plumbing: dict[str, list[float]] = {}
                    moves: list[float] = []
                    untime = time_steps(plumbing, moves)
                    try:
                        for i in range(runs):
                            # every order in turn: what a start costs depends on what was
                            # destroyed just before (a NIC guest's namespace is still being
                            # torn down by the kernel), so each guest follows each other alike
                            for name in ORDERS[i % len(ORDERS)]:
                                await gap(idle)
                                before = len(moves)
                                ev, _ret = await timer.start(name)
                                samples[name].append(ev)
                                steady[name].append(ev - sum(moves[before:]))
                                await gap(idle)
                                await timer.destroy(name)
                    finally:
                        untime()
                        steps = probe.report() if probe is not None else None
                        if probe is not None:
                            probe.restore()
                    out[regime] = {
                        "start_one_nic": summary(samples["nic"]),
                        "start_one_nic_unguarded": summary(samples["nic_open"]),
                        "start_no_nic": summary(samples["plain"]),
                        "steady_one_nic": summary(steady["nic"]),
                        "steady_one_nic_unguarded": summary(steady["nic_open"]),
                        "steady_no_nic": summary(steady["plain"]),
                        "cgroup_move": summary(moves),
                        "plumb_nic": summary(plumbing["nic"]),
                        "plumb_nic_unguarded": summary(plumbing["nic_open"]),
                        "steps": steps,
                    }
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(60):
                running = [n for n, g in sup.guests.items() if g.busy or g.cgroup]
                await run_all(running, sup.destroy_domain)
                if sup.net is not None:
                    await sup.net.stop_all()
            nursery.cancel_scope.cancel()
    out["loadavg_after"] = os.getloadavg()
    return out


def cleanup(workdir: str) -> list[str]:
    """Remove what a failed run may have left: cgroups, namespaces, files."""
    problems = [f"cgroup left: {p}" for p in find_leftovers(detect_layout(), PREFIX)]
    for name in nsutil.list_netns(PREFIX):
        nsutil.delete_netns(name)
    shutil.rmtree(workdir, ignore_errors=True)
    remove_run_dirs()
    return problems


def table(r: dict[str, Any]) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median_ms']:.2f} ({s['min_ms']:.2f}-{s['max_ms']:.2f})"

    def guard(guarded: dict[str, float], unguarded: dict[str, float]) -> str:
        cost = guarded["median_ms"] - unguarded["median_ms"]
        return f"{cost:+.2f} ({cost / unguarded['median_ms']:+.1%})"

    lines = [
        f"load average before {r['loadavg_before']}, after {r['loadavg_after']}; "
        f"supervisor run dir on {r['run_dir']}",
        "",
        "| start (call -> STARTED) | regime | one NIC (anti-spoofing) | one NIC opted out "
        "| no NIC | NIC cost | guard cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, key in (("whole", "start"), ("less the cgroup move", "steady")):
        for regime in ("idle", "back_to_back"):
            c = r[regime]
            guarded, unguarded = c[f"{key}_one_nic"], c[f"{key}_one_nic_unguarded"]
            plain = c[f"{key}_no_nic"]
            lines.append(
                f"| {what} | {regime} | {cell(guarded)} | {cell(unguarded)} | {cell(plain)} "
                f"| {guarded['median_ms'] - plain['median_ms']:.2f} "
                f"| {guard(guarded, unguarded)} |"
            )
    lines += [
        "",
        "| regime | NIC plumbing within the start (anti-spoofing) | opted out | guard cost "
        "| cgroup move (every start) |",
        "|---|---|---|---|---|",
    ]
    for regime in ("idle", "back_to_back"):
        c = r[regime]
        lines.append(
            f"| {regime} | {cell(c['plumb_nic'])} | {cell(c['plumb_nic_unguarded'])} "
            f"| {guard(c['plumb_nic'], c['plumb_nic_unguarded'])} | {cell(c['cgroup_move'])} |"
        )
    b = r["burst"]
    lines += ["", f"{b['n']} one-NIC guests started at once: batch wall {cell(b['batch_wall'])} ms"]
    for regime in ("idle", "back_to_back"):
        steps = r[regime]["steps"]
        if not steps:
            continue
        lines += ["", f"steps, {regime} (per call: median (min-max) ms, calls)", ""]
        lines += [f"    {k:48s} {cell(v):28s} n={v['n']}" for k, v in steps.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="samples per figure and regime")
    parser.add_argument("--profile", action="store_true", help="time the NIC path step by step")
    parser.add_argument("--burst", type=int, default=10, help="one-NIC guests started at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_nic needs root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    results: dict[str, Any] | None = None
    try:
        nsutil.create_netns(SANDBOX)
        results = trio.run(measure, workdir, args.runs, args.profile, args.burst)
    finally:
        for p in cleanup(workdir):
            print(f"cleanup: {p}", file=sys.stderr)
        clean, leak_text = leakcheck(PREFIX)
    assert results is not None
    results["leakcheck"] = leak_text
    print(table(results))
    print(leak_text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
