"""Benchmark: per-guest NIC plumbing and network start, beside the floor of the same operations.

Runs as root inside a sandbox namespace it creates (prefix ``vsvb<hex>``) and removes. The floor
is the same netlink operations done directly with synchronous pyroute2 in one thread per
namespace (and, for a network, one ``nft -f``), without the supervisor's planning, checks, undo
bookkeeping or trio hand-off. Two regimes: back to back, and with an idle gap before each
timed operation. Prints medians with min/max in milliseconds and writes them, by the printed
label, to bench/results/net.json.

    .venv/bin/python bench/bench_net.py [--n 30]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from pyroute2 import IPRoute

from supervisor.model import AddressRange, Domain, Forward, Interface, Network, NetworkIp
from supervisor.net import nftables
from supervisor.net.networks import HostNet, run_network
from supervisor.net.nics import AddressBook, plumb, unplumb

libc = ctypes.CDLL(None, use_errno=True)
#: bench/results, or the directory in $VSV_BENCH_RESULTS (report.py --smoke)
RESULTS = (
    Path(os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    / "net.json"
)
#: every printed figure by its label, for bench/results/net.json (read by bench/report.py)
FIGURES: dict[str, dict[str, float]] = {}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def in_thread(path: str, fn: Callable[[IPRoute], Any]) -> Any:
    """Run fn(IPRoute) in a fresh thread that entered the namespace at ``path`` (floor helper)."""
    out: list[Any] = []

    def body() -> None:
        fd = os.open(path, os.O_RDONLY)
        libc.setns(fd, 0x40000000)
        os.close(fd)
        ipr = IPRoute()
        try:
            out.append(fn(ipr))
        finally:
            ipr.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0] if out else None


def _del_link(ipr: Any, *, name: str) -> None:
    ipr.link("del", ifname=name)


def summary(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    FIGURES[name] = {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }
    return (
        f"{name:48s} median {statistics.median(ms):7.2f} ms  min {min(ms):7.2f}  max {max(ms):7.2f}"
    )


def network(name: str) -> Network:
    return Network(
        name=name,
        forward=Forward(),
        ips=(NetworkIp("10.79.0.1", 16, dhcp_ranges=(AddressRange("10.79.1.0", "10.79.200.0"),)),),
    )


def cleanup(prefix: str) -> None:
    """Delete every namespace the run created (host, guests)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in listed.split():
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], check=False)


async def main(n: int) -> None:
    prefix = "vsvb" + secrets.token_hex(2)
    hostns = f"{prefix}h"
    sh("ip", "netns", "add", hostns)
    hpath = f"/run/netns/{hostns}"
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    host = await HostNet.open(prefix, hpath, run_dir)
    results: list[str] = []
    try:
        for gap in (0.0, 0.1):
            regime = "idle gap" if gap else "back to back"
            # ---- network start: supervisor (without dnsmasq: ips-less DHCP is separate) ------
            starts: list[float] = []
            starts_dns: list[float] = []
            floors: list[float] = []
            for i in range(n):
                await trio.sleep(gap)
                for with_dns, bucket in ((False, starts), (True, starts_dns)):
                    net = network(f"n{i}")
                    if not with_dns:
                        net = Network(name=net.name, forward=net.forward)  # no <ip>: no dnsmasq
                    async with trio.open_nursery() as nursery:
                        t0 = time.perf_counter()
                        handle = await nursery.start(run_network, host, net)
                        bucket.append(time.perf_counter() - t0)
                        await handle.stop()
                    await trio.sleep(gap)
                br = f"{prefix}fl"
                table = f"{prefix}_fl"
                ruleset = nftables.network_ruleset(table, network("fl"), br) or ""

                def floor_net(ipr: IPRoute, br: str = br) -> None:
                    ipr.link("add", ifname=br, kind="bridge")
                    idx = ipr.link_lookup(ifname=br)[0]
                    ipr.addr("add", index=idx, address="10.79.0.1", prefixlen=16)
                    ipr.link("set", index=idx, state="up")

                t0 = time.perf_counter()
                await trio.to_thread.run_sync(in_thread, hpath, floor_net)
                await nftables.apply(hpath, table, ruleset)
                floors.append(time.perf_counter() - t0)
                await nftables.delete(hpath, table)
                await trio.to_thread.run_sync(
                    in_thread, hpath, lambda ipr, br=br: ipr.link("del", ifname=br)
                )
            results += [
                summary(f"[{regime}] network start, supervisor, no dnsmasq", starts),
                summary(f"[{regime}] network start, supervisor, with dnsmasq", starts_dns),
                summary(f"[{regime}] network start floor (netlink + nft -f)", floors),
            ]

            # ---- per-guest NIC plumbing -----------------------------------------------------
            book = AddressBook()
            plumbs: list[float] = []
            plumbs_open: list[float] = []
            floors = []
            async with trio.open_nursery() as nursery:
                net_handle = await nursery.start(run_network, host, network("lan"))
                nets = {"lan": net_handle}
                for i in range(n):
                    sh("ip", "netns", "add", f"{prefix}g{i}")
                    gpath = f"/run/netns/{prefix}g{i}"
                    # the same NIC with anti-spoofing (the default) and opted out of it
                    # (<filterref filter='vsv-allow-all'/>, the figure before it existed),
                    # alternated so that load on the machine hits both alike
                    guarded = Interface(type="network", source="lan")
                    opted_out = Interface(type="network", source="lan", filterref="vsv-allow-all")
                    pair = ((guarded, plumbs), (opted_out, plumbs_open))
                    for iface, bucket in pair if i % 2 else pair[::-1]:
                        dom = Domain(name=f"g{i}", interfaces=(iface,))
                        await trio.sleep(gap)
                        t0 = time.perf_counter()
                        nics = await plumb(host, dom, gpath, nets, book)
                        bucket.append(time.perf_counter() - t0)
                        await unplumb(host, nics, nets, book)

                    hif = f"{prefix}f{i}"
                    bridge = net_handle.bridge

                    def floor_host(
                        ipr: IPRoute, gpath: str = gpath, hif: str = hif, bridge: str = bridge
                    ) -> None:
                        gfd = os.open(gpath, os.O_RDONLY)
                        try:
                            ipr.link(
                                "add",
                                ifname=hif,
                                kind="veth",
                                peer={"ifname": "eth0", "net_ns_fd": gfd},
                            )
                        finally:
                            os.close(gfd)
                        idx = ipr.link_lookup(ifname=hif)[0]
                        ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0])
                        ipr.link("set", index=idx, state="up")

                    def floor_guest(ipr: IPRoute) -> None:
                        idx = ipr.link_lookup(ifname="eth0")[0]
                        ipr.addr("add", index=idx, address="10.79.250.1", prefixlen=16)
                        ipr.link("set", index=idx, state="up")
                        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                        ipr.route("add", dst="0.0.0.0/0", gateway="10.79.0.1")

                    await trio.sleep(gap)
                    t0 = time.perf_counter()
                    await host.worker.call(floor_host)  # the host socket is kept open, as in plumb
                    await trio.to_thread.run_sync(in_thread, gpath, floor_guest)
                    floors.append(time.perf_counter() - t0)
                    await host.worker.call(functools.partial(_del_link, name=hif))
                    sh("ip", "netns", "del", f"{prefix}g{i}")
                await net_handle.stop()
            results += [
                summary(f"[{regime}] NIC plumb (type=network), supervisor", plumbs),
                summary(
                    f"[{regime}] NIC plumb (type=network), anti-spoofing opted out", plumbs_open
                ),
                summary(f"[{regime}] NIC plumb floor (same netlink ops)", floors),
            ]
    finally:
        await host.aclose()
        await trio.to_thread.run_sync(cleanup, prefix)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"n={n} per cell; kernel {os.uname().release}")
    print("\n".join(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {"n": n, "kernel": os.uname().release, "loadavg_after": os.getloadavg(), **FIGURES}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    trio.run(main, parser.parse_args().n)
