"""Start latency as guests are started concurrently, and the start of a guest with one NIC.

Two measurements the report needs that :mod:`bench_daemon` does not make (it reuses that
benchmark's guest, timer and helpers, so the figures are comparable):

- sweep: for N in 1, 5, 10, 25, 50, 100 (``--quick``: up to 25), N ``start_domain`` calls at once
  in one trio nursery; per guest, call -> its ``STARTED BOOTED`` event, and the wall time of the
  batch. N = 1, 5 and 10 are repeated so that each point has at least 10 samples. Beside it, LXC
  starting the same N containers one after another (``lxc-start -d`` each, the sequential
  figure the 100-start target compares with);
- NIC: a guest with one ``<interface type='network'>`` (veth on the network's bridge, address
  from the network's DHCP range, default route; the network runs dnsmasq) against the same guest
  without NICs, and LXC with ``lxc.net.0.type = veth`` on the same bridge (static address,
  gateway, ``flags = up``) against LXC with ``type = empty``; both regimes (idle gap, back to back).

Host-side networking happens in a sandbox namespace the benchmark creates (``vsvbst-sbx``):
the supervisor gets it as ``host_netns``, and LXC runs in it with a sysfs view of it: a launcher
started once through ``nsenter`` runs and times each LXC command from inside (see
:mod:`lxc_peer`), so LXC's figures hold none of that wrapping. Everything created is named
``vsvbst...`` (LXC's cgroups ``lxc.*.vsvbst-...``) and removed also on failure or Ctrl-C;
``leakcheck --prefix vsvbst`` runs at the end. Writes bench/results/start.json.

    .venv/bin/python bench/bench_start.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import lxc_peer
import trio
from bench_daemon import (
    IDLE_GAP,
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

PREFIX = "vsvbst"
SANDBOX = f"{PREFIX}-sbx"
SWEEP = (1, 5, 10, 25, 50, 100)
SWEEP_QUICK = (1, 5, 10, 25)
#: at least this many per-guest samples per sweep point (small N are repeated)
MIN_SAMPLES = 10
BRIDGE = f"{PREFIX}b0"
GATEWAY = "10.79.0.1"
TARGET_NIC = 0.8


def lan() -> Network:
    """The network the NIC guests join: a bridge with an address and a DHCP range (dnsmasq)."""
    return Network(
        name="lan",
        bridge=Bridge(name=BRIDGE, stp=False),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=GATEWAY,
                prefix=16,
                dhcp_ranges=(AddressRange("10.79.1.1", "10.79.1.250"),),
            ),
        ),
    )


async def sweep(
    sup: Supervisor, timer: Timer, root: str, peer: lxc_peer.LxcPeer | None, points: tuple[int, ...]
) -> list[dict[str, Any]]:
    """For each N: per-guest start latency and batch wall time, N at once; LXC's N in a row."""
    out: list[dict[str, Any]] = []
    for n in points:
        names = [f"s{i}" for i in range(n)]
        for name in names:
            await sup.define_domain(guest(name, root))
        latencies: list[float] = []
        walls: list[float] = []
        for _ in range(max(1, -(-MIN_SAMPLES // n))):
            await trio.sleep(IDLE_GAP)
            timer.drain()
            wall = time.time()
            walls.append(await run_all(names, sup.start_domain))
            events = timer.drain()
            latencies += [timer.find(events, x, "STARTED BOOTED", wall).time - wall for x in names]
            await run_all(names, sup.destroy_domain)
        for name in names:
            await sup.undefine_domain(name)
        point: dict[str, Any] = {
            "n": n,
            "batches": len(walls),
            "per_guest": summary(latencies),
            "per_guest_p90_ms": round(1000 * sorted(latencies)[int(0.9 * (len(latencies) - 1))], 3),
            "batch_wall_ms": round(1000 * statistics.median(walls), 3),
        }
        if peer is not None:
            lxc_names = [peer.name(100 + i) for i in range(n)]
            await trio.sleep(IDLE_GAP)
            t0 = time.perf_counter()
            for name in lxc_names:
                peer.start(name)
            point["lxc_sequential_ms"] = round(1000 * (time.perf_counter() - t0), 3)
            for name in lxc_names:
                peer.stop(name)
        out.append(point)
    return out


async def nic(
    sup: Supervisor, timer: Timer, root: str, peer: lxc_peer.LxcPeer | None, runs: int
) -> dict[str, Any]:
    """A guest with one NIC vs none, for the supervisor and for LXC, in both regimes."""
    await sup.define_network(lan())
    await sup.start_network("lan")
    one_nic = (Interface(type="network", source="lan"),)
    await sup.define_domain(attrs.evolve(guest("nic", root), interfaces=one_nic))
    await sup.define_domain(guest("plain", root))
    for name in ("nic", "plain"):  # warm-up
        await timer.start(name)
        await timer.destroy(name)
    veth = lxc_peer.Veth(bridge=BRIDGE, address="10.79.250.1/16", gateway=GATEWAY)
    out: dict[str, Any] = {"network": "NAT network with dnsmasq (DHCP range), bridge in sandbox"}
    for regime, idle in (("idle", True), ("back_to_back", False)):
        samples: dict[str, list[float]] = {k: [] for k in ("nic", "plain")}
        for _ in range(runs):
            for name in ("nic", "plain"):
                await gap(idle)
                ev, _ret = await timer.start(name)
                samples[name].append(ev)
                await gap(idle)
                await timer.destroy(name)
        cell: dict[str, Any] = {
            "start_one_nic": summary(samples["nic"]),
            "start_no_nic": summary(samples["plain"]),
        }
        if peer is not None:
            lxc: dict[str, list[float]] = {"veth": [], "empty": [], "wrap": []}
            for _ in range(runs):
                await gap(idle)
                lxc["veth"].append(peer.start(peer.name(0), veth))
                await gap(idle)
                peer.stop(peer.name(0))
                await gap(idle)
                lxc["empty"].append(peer.start(peer.name(1)))
                await gap(idle)
                peer.stop(peer.name(1))
                await gap(idle)
                lxc["wrap"].append(peer.wrap_overhead())
            wrap = statistics.median(lxc["wrap"])
            cell["lxc_wrap_overhead"] = summary(lxc["wrap"])
            cell["lxc_start_veth_raw"] = summary(lxc["veth"])
            cell["lxc_start_veth"] = summary([max(x - wrap, 1e-6) for x in lxc["veth"]])
            cell["lxc_start_empty"] = summary([max(x - wrap, 1e-6) for x in lxc["empty"]])
        out[regime] = cell
    return out


async def measure(workdir: str, quick: bool, runs: int) -> dict[str, Any]:
    root = prepare_busybox_root(os.path.join(workdir, "rootfs"))
    sandbox = str(nsutil.netns_path(SANDBOX))
    peer = lxc_peer.LxcPeer(workdir, root, PREFIX, netns=sandbox) if lxc_peer.available() else None
    results: dict[str, Any] = {
        "quick": quick,
        "runs": runs,
        "idle_gap_s": IDLE_GAP,
        "loadavg_before": os.getloadavg(),
        "lxc": peer is not None,
        "targets": {"nic_start_vs_lxc_veth": TARGET_NIC},
    }
    run_dir, results["run_dir"] = tmpfs_run_dir()
    sup = Supervisor(
        state_dir=Path(workdir) / "state",
        run_dir=run_dir,
        prefix=PREFIX,
        host_netns=sandbox,
        shutdown_timeout=5.0,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            try:
                async with sup.bus.subscribe("bench", buffer=1_000_000) as sub:
                    timer = Timer(sup, sub)
                    await sup.define_domain(guest("warm", root))
                    for _ in range(2):
                        await timer.start("warm")
                        await timer.destroy("warm")
                    if peer is not None:
                        peer.start(peer.name(0))
                        peer.stop(peer.name(0))
                    results["sweep"] = await sweep(
                        sup, timer, root, peer, SWEEP_QUICK if quick else SWEEP
                    )
                    results["nic"] = await nic(sup, timer, root, peer, runs)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(120):
                    running = [n for n, g in sup.guests.items() if g.busy or g.cgroup]
                    await run_all(running, sup.destroy_domain, 50)
                    if sup.net is not None:
                        await sup.net.stop_all()
                nursery.cancel_scope.cancel()
    finally:
        if peer is not None:
            results["cleanup_problems"] = peer.cleanup()
    results["loadavg_after"] = os.getloadavg()
    return results


def cleanup(workdir: str) -> list[str]:
    """Remove what a failed run may have left: cgroups, guest namespaces, the sandbox, files."""
    problems = [f"cgroup left: {p}" for p in find_leftovers(detect_layout(), PREFIX)]
    for name in nsutil.list_netns(PREFIX):
        nsutil.delete_netns(name)
    shutil.rmtree(workdir, ignore_errors=True)
    remove_run_dirs()
    return problems


def table(r: dict[str, Any]) -> str:
    lines = [
        "| N at once | per-guest start median (min-max) ms | p90 ms | batch wall ms | "
        "LXC N in a row ms |",
        "|---|---|---|---|---|",
    ]
    for p in r["sweep"]:
        s = p["per_guest"]
        lines.append(
            f"| {p['n']} | {s['median_ms']:.1f} ({s['min_ms']:.1f}-{s['max_ms']:.1f}) | "
            f"{p['per_guest_p90_ms']:.1f} | {p['batch_wall_ms']:.1f} | "
            f"{p.get('lxc_sequential_ms', '-')} |"
        )
    lines += ["", "| regime | one NIC | no NIC | LXC veth | LXC empty | ratio NIC/LXC veth |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for regime in ("idle", "back_to_back"):
        c = r["nic"][regime]
        lv = c.get("lxc_start_veth")
        ratio = f"{c['start_one_nic']['median_ms'] / lv['median_ms']:.2f}" if lv else "-"
        lines.append(
            f"| {regime} | {c['start_one_nic']['median_ms']:.2f} | "
            f"{c['start_no_nic']['median_ms']:.2f} | {lv['median_ms'] if lv else '-'} | "
            f"{c.get('lxc_start_empty', {}).get('median_ms', '-')} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sweep up to 25, fewer runs")
    parser.add_argument("--runs", type=int, default=None, help="samples per NIC figure and regime")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_start needs root", file=sys.stderr)
        return 2
    runs = args.runs or (8 if args.quick else 20)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    results: dict[str, Any] | None = None
    try:
        nsutil.create_netns(SANDBOX)
        results = trio.run(measure, workdir, args.quick, runs)
    finally:
        for p in cleanup(workdir):
            print(f"cleanup: {p}", file=sys.stderr)
        clean, leak_text = leakcheck(PREFIX)
        if results is None:
            print(leak_text, file=sys.stderr)
    assert results is not None
    results["leakcheck"] = leak_text
    print(table(results))
    print(leak_text)
    path = results_path("start.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
