"""``<bridge macTableManager='libvirt'>`` (issue 14), as root: the supervisor, not the kernel's
learning, fills the bridge's forwarding table.

As libvirt does it: the bridge filters VLANs, the guests' ports neither learn source MACs nor
get unicast frames for unknown destinations, and each guest's MAC is a static entry on its port
(removed with the port). Guests still reach each other; a frame to a MAC nobody has is not
flooded to the other guests' ports, where a learning bridge (``kernel``, the default, run here
as the control) floods it to every port.

Everything host-side is in a sandbox namespace the test creates; guests are namespaces too.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import trio

from supervisor.model import (
    AddressRange,
    Bridge,
    Domain,
    Forward,
    Interface,
    MacTableManager,
    Network,
    NetworkIp,
)
from supervisor.net.networks import HostNet, RunningNetwork, run_network
from supervisor.net.nics import AddressBook, PlumbedNic, plumb, unplumb
from tests import test_net_integration

pytestmark = pytest.mark.root

UNKNOWN = "02:00:00:99:99:99"
MACS = ("52:54:00:7a:00:01", "52:54:00:7a:00:02", "52:54:00:7a:00:03")


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


async def ash(*argv: str) -> subprocess.CompletedProcess[str]:
    """:func:`sh` on a thread, so that the netlink worker's trio side goes on meanwhile."""
    return await trio.to_thread.run_sync(lambda: sh(*argv))


def js(*argv: str) -> Any:
    done = sh(*argv)
    assert 0 == done.returncode, done.stderr
    return json.loads(done.stdout or "[]")


# the sandbox host namespace of the network integration tests
host = test_net_integration.host


def network(manager: MacTableManager, third: int) -> Network:
    return Network(
        name="mt",
        bridge=Bridge(stp=False, mac_table_manager=manager),
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address=f"10.216.{third}.1",
                prefix=24,
                dhcp_ranges=(AddressRange(f"10.216.{third}.10", f"10.216.{third}.200"),),
            ),
        ),
    )


def vlan_filtering_supported(ns: str, prefix: str) -> bool:
    """Whether the kernel can make a VLAN-filtering bridge (tried on a scratch one)."""
    made = sh("ip", "-n", ns, "link", "add", f"{prefix}vf", "type", "bridge", "vlan_filtering", "1")
    sh("ip", "-n", ns, "link", "del", f"{prefix}vf")
    return made.returncode == 0


def counter(listing: str, comment: str) -> int:
    """The packets of the rule whose comment is ``comment`` in ``nft list`` output."""
    for line in listing.splitlines():
        if f'comment "{comment}"' in line:
            return int(line.split("packets ")[1].split()[0])
    raise AssertionError(f"no rule {comment!r} in {listing}")


@pytest.mark.parametrize(("manager", "third"), [("libvirt", 1), ("kernel", 2)])
async def test_mac_table_managed_by_the_supervisor(
    host: HostNet, prefix: str, manager: MacTableManager, third: int
) -> None:
    """libvirt: static forwarding entries for the guests' MACs on their ports, learning and
    unicast flooding off on those ports, VLAN filtering on the bridge; two guests reach each
    other, a frame to an unknown MAC reaches the bridge but not a third guest's port, and the
    entries go with the guests. kernel (the control): learning ports, the frame is flooded."""
    h = f"{prefix}h"
    book = AddressBook()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            net: RunningNetwork = await nursery.start(run_network, host, network(manager, third))
            nets = {"mt": net}
            plumbed: list[tuple[PlumbedNic, ...]] = []
            try:
                for n, mac in enumerate(MACS, 1):
                    sh("ip", "netns", "add", f"{prefix}g{n}")
                    iface = Interface(type="network", source="mt", mac=mac)
                    dom = Domain(name=f"m{n}", interfaces=(iface,))
                    plumbed.append(await plumb(host, dom, f"/run/netns/{prefix}g{n}", nets, book))
                ports = [nics[0].host_if for nics in plumbed]
                addresses = [nics[0].addresses[0].split("/")[0] for nics in plumbed]
                managed = manager == "libvirt"

                links = {e["ifname"]: e for e in js("bridge", "-n", h, "-d", "-j", "link", "show")}
                assert [(not managed, not managed)] * 3 == [
                    (links[p]["learning"], links[p]["flood"]) for p in ports
                ]
                (br,) = js("ip", "-n", h, "-d", "-j", "link", "show", net.bridge)
                filtering = br["linkinfo"]["info_data"]["vlan_filtering"]
                # a kernel built without bridge VLAN filtering (the project's VM) has it off
                assert int(managed and vlan_filtering_supported(h, prefix)) == filtering
                fdb = js("bridge", "-n", h, "-j", "fdb", "show", "br", net.bridge)
                static = {
                    (e["mac"], e["ifname"])
                    for e in fdb
                    if "static" in e.get("state", "") and e.get("vlan") is None
                }
                expected = set(zip(MACS, ports, strict=True)) if managed else set()
                assert expected == static & {(m, p) for m in MACS for p in ports}
                if managed:  # nothing learnt: the only entries are the supervisor's
                    assert [] == [e for e in fdb if e["mac"] in MACS and e.get("state") != "static"]

                # the guests reach each other (ARP is broadcast, the answer unicast)
                ping = await ash("ip", "netns", "exec", f"{prefix}g1", "/bin/busybox", "ping",
                                 "-c2", "-w3", addresses[1])  # fmt: skip
                assert 0 == ping.returncode, ping.stdout + ping.stderr

                # a frame to a MAC no one has: counted entering the bridge and leaving it to
                # the third guest's port (both in the same softirq, so once it has entered,
                # its forwarding is decided)
                table = f"{prefix}_watch"
                rules = (
                    f"table bridge {table} {{\n"
                    "  chain entering { type filter hook prerouting priority -300;\n"
                    f'    ether daddr {UNKNOWN} counter comment "in"\n  }}\n'
                    "  chain leaving { type filter hook forward priority 0;\n"
                    f'    oifname "{ports[2]}" ether daddr {UNKNOWN} counter comment "out"\n  }}\n'
                    "}\n"
                )
                done = subprocess.run(["ip", "netns", "exec", h, "nft", "-f", "-"], input=rules,
                                      capture_output=True, text=True, check=False)  # fmt: skip
                assert 0 == done.returncode, done.stderr
                try:
                    ghost = f"10.216.{third}.99"
                    await ash("ip", "-n", f"{prefix}g1", "neigh", "replace", ghost, "lladdr",
                              UNKNOWN, "dev", "eth0", "nud", "permanent")  # fmt: skip
                    listing = ""
                    while True:
                        await ash("ip", "netns", "exec", f"{prefix}g1", "/bin/busybox", "ping",
                                  "-c1", "-W1", ghost)  # fmt: skip
                        listing = (await ash("ip", "netns", "exec", h, "nft", "list", "table",
                                             "bridge", table)).stdout  # fmt: skip
                        if counter(listing, "in") >= 2:
                            break
                    # flooded to the third guest's port by a learning bridge only
                    assert (not managed) == (counter(listing, "out") > 0), listing
                finally:
                    sh("ip", "netns", "exec", h, "nft", "delete", "table", "bridge", table)
            finally:
                for nics in plumbed:
                    await unplumb(host, nics, nets, book)
            fdb = js("bridge", "-n", h, "-j", "fdb", "show", "br", net.bridge)
            assert [] == [e for e in fdb if e["mac"] in MACS]
            await net.stop()
