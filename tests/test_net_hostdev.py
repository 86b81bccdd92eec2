"""``<hostdev mode='capabilities' type='net'>`` (issue 15): a host NIC lent to a guest.

A veth end the test makes in its sandbox namespace (the supervisor's "host") stands in for a
physical NIC; its peer stays in the sandbox as the network the NIC is plugged into. While the
guest runs the NIC is in the guest's namespace with the guest's addresses and routes, and the
host no longer has it; it comes back to the host under its own name, with its MAC, MTU,
addresses and up state, when the guest is destroyed, when its init is killed (a crash), and
after a supervisor restart (adopted and stopped later, or ended while no supervisor ran).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.daemon import Supervisor
from supervisor.errors import InvalidDocument, InvalidOperation
from supervisor.guest.confine import widenings
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, HostdevNet, IpAddress, OsSpec, Route
from supervisor.xml import format_domain, parse_domain
from tests import test_fault_drills, test_net_daemon
from tests.test_fault_drills import domain_states, start_daemon, wait_for
from tests.test_net_daemon import in_ns
from tests.test_net_nic_kinds import LOOP, ip, sh

sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup
world = test_fault_drills.world

NIC_MAC = "52:54:00:4d:00:01"


def physical_nic(prefix: str, ns: str) -> str:
    """``<prefix>nic0`` in ``ns``, standing for a physical NIC: a MAC, MTU 1400, two addresses,
    up; its veth peer ``<prefix>wire`` (10.213.85.1/24) is the network it is plugged into."""
    nic, wire = f"{prefix}nic0", f"{prefix}wire"
    sh("ip", "-n", ns, "link", "add", nic, "type", "veth", "peer", "name", wire)
    sh("ip", "-n", ns, "link", "set", nic, "address", NIC_MAC, "mtu", "1400")
    sh("ip", "-n", ns, "addr", "add", "10.213.86.1/24", "dev", nic)
    sh("ip", "-n", ns, "addr", "add", "fd00:86::1/64", "dev", nic, "nodad")
    sh("ip", "-n", ns, "addr", "add", "10.213.85.1/24", "dev", wire)
    for link in (nic, wire):
        sh("ip", "-n", ns, "link", "set", link, "up")
    return nic


def host_view(ns: str, nic: str) -> tuple[str, int, bool, list[str]]:
    """(MAC, MTU, up, global addresses) of ``nic`` in ``ns``."""
    (link,) = ip(ns, "addr", "show", "dev", nic)
    addrs = sorted(
        f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a.get("scope") == "global"
    )
    return link["address"], link["mtu"], "UP" in link["flags"], addrs


AS_BEFORE = (NIC_MAC, 1400, True, ["10.213.86.1/24", "fd00:86::1/64"])


def lender(name: str, root: Path, nic: str) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        hostdevs=(
            HostdevNet(
                interface=nic,
                ips=(IpAddress("10.213.85.2", 24),),
                routes=(Route("10.213.87.0", 24, "10.213.85.1"),),
            ),
        ),
    )


def links(ns: str) -> list[str]:
    return sorted(link["ifname"] for link in ip(ns, "link", "show"))


@pytest.mark.root
async def test_a_lent_nic_comes_back_on_stop_and_on_crash(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """Started: the NIC is in the guest (same name, the guest's address and route, up, its
    network reachable through it) and not in the host. Destroyed: back in the host as it was.
    Started again, renamed and given another MAC by the guest's root, then the guest's init
    killed: back in the host under its own name, as it was."""
    nic = physical_nic(prefix, sandbox)
    assert AS_BEFORE == host_view(sandbox, nic)
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    domain = lender("hd", root, nic)
    assert [("devices/hostdev[1]", True)] == [
        (where, nic in what) for where, what in widenings(domain)
    ]
    await sup.define_domain(domain)
    await sup.start_domain("hd")
    guest_ns = f"{prefix}-hd"
    assert nic not in links(sandbox)
    (inside,) = ip(guest_ns, "addr", "show", "dev", nic)
    assert ("UP", ["10.213.85.2/24"]) == (
        inside["operstate"],
        [f"{a['local']}/{a['prefixlen']}" for a in inside["addr_info"] if a["family"] == "inet"],
    )
    routes = [(r["dst"], r.get("gateway")) for r in ip(guest_ns, "route", "show", "dev", nic)]
    assert ("10.213.87.0/24", "10.213.85.1") in routes
    ping = in_ns(guest_ns, "ping", "-c1", "-W2", "10.213.85.1")
    assert 0 == ping.returncode, ping.stdout + ping.stderr

    await sup.destroy_domain("hd")
    assert AS_BEFORE == host_view(sandbox, nic)

    await sup.start_domain("hd")
    for step in (("down",), ("name", "eth7"), ("address", "52:54:00:4d:00:99"), ("up",)):
        target = nic if step[0] in ("down", "name") else "eth7"
        in_ns(guest_ns, "ip", "link", "set", target, *step)
    assert "eth7" in links(guest_ns)
    record = json.loads((tmp_path / "run" / "domains" / "hd.json").read_text())
    os.kill(record["init_pid"], signal.SIGKILL)
    with trio.fail_after(20):
        # SHUTOFF comes first, then the runner releases what the guest held (the NIC)
        while sup.domain_status("hd").state != "SHUTOFF" or sup.guests["hd"].busy:
            await trio.sleep(0.02)
    assert AS_BEFORE == host_view(sandbox, nic)
    assert [] == [n for n in links(sandbox) if n.startswith("lent")]


@pytest.mark.root
async def test_what_the_guest_made_in_the_nics_place_stays_in_the_guest(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A guest that deletes the lent NIC and makes another device under its index does not get
    that device moved into the host at stop: the kind is checked first (a physical NIC cannot
    be made by a guest; this stand-in is a veth, replaced by a macvlan, which could move)."""
    nic = physical_nic(prefix, sandbox)
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(lender("hs", root, nic))
    await sup.start_domain("hs")
    guest_ns = f"{prefix}-hs"
    (inside,) = ip(guest_ns, "link", "show", "dev", nic)
    sh("ip", "-n", guest_ns, "link", "del", nic)
    fake = f"{prefix}fake"
    sh("ip", "-n", guest_ns, "link", "add", f"{prefix}v1", "index", "100", "type", "veth",
       "peer", "name", f"{prefix}v2", "index", "101")  # fmt: skip
    sh("ip", "-n", guest_ns, "link", "add", "link", f"{prefix}v1", "name", fake, "index",
       str(inside["ifindex"]), "type", "macvlan")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        await sup.destroy_domain("hs")
    assert [] == [n for n in links(sandbox) if n in (fake, nic) or n.startswith("lent")]
    assert any("not the veth one lent" in r.getMessage() for r in caplog.records)


@pytest.mark.root
async def test_a_nic_the_host_does_not_have_fails_the_start(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A start whose <hostdev> names no interface of the host fails, naming it, and leaves
    nothing behind."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(lender("hx", root, f"{prefix}none"))
    with pytest.raises(InvalidOperation, match=f"<interface>{prefix}none</interface>"):
        await sup.start_domain("hx")


@pytest.mark.root
def test_a_lent_nic_comes_back_after_a_supervisor_restart(
    world: dict[str, Any], prefix: str
) -> None:
    """The supervisor SIGKILLed while the guest runs: its successor adopts the guest (the NIC
    stays in it) and gives the NIC back when it stops the guest. Killed again, and the guest
    killed too while no supervisor runs: the next successor's clean-up gives it back."""
    sbx = world["sandbox"]
    nic = physical_nic(prefix, sbx)
    doc = world["base"] / "hd.xml"
    doc.write_text(format_domain(lender("hd", world["root"], nic)))
    first = start_daemon(world, prefix)
    first.api.send_xml("/v1/domains", doc.read_bytes())
    first.api.send_json("POST", "/v1/domains/hd/start")
    assert nic not in links(sbx)
    first.kill()

    second = start_daemon(world, prefix)
    assert "RUNNING" == domain_states(second.api)["hd"]
    assert nic not in links(sbx)
    ping = in_ns(f"{prefix}-hd", "ping", "-c1", "-W2", "10.213.85.1")
    assert 0 == ping.returncode, ping.stdout + ping.stderr
    second.api.send_json("POST", "/v1/domains/hd/destroy")
    assert AS_BEFORE == host_view(sbx, nic)

    second.api.send_json("POST", "/v1/domains/hd/start")
    record = json.loads((world["base"] / "run" / "domains" / "hd.json").read_text())
    second.kill()
    os.kill(record["init_pid"], signal.SIGKILL)
    wait_for("the guest's end", lambda: not Path(f"/proc/{record['init_pid']}").exists())
    third = start_daemon(world, prefix)
    assert "SHUTOFF" == domain_states(third.api)["hd"]
    assert AS_BEFORE == host_view(sbx, nic)
    assert 0 == third.close()


HOSTDEV = "<domain type='lxc'><name>h</name><os><type>exe</type></os><devices>{}</devices></domain>"


@pytest.mark.parametrize(
    ("xml", "where"),
    [
        ("<hostdev type='net'><source><interface>eth1</interface></source></hostdev>",
         "devices/hostdev[1]/@mode"),
        ("<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' "
         "function='0'/></source></hostdev>", "devices/hostdev[1]/@mode"),
        ("<hostdev mode='capabilities' type='storage'><source><block>/dev/sdb</block></source>"
         "</hostdev>", "devices/hostdev[1]/@type"),
        ("<hostdev mode='capabilities' type='net' managed='yes'><source><interface>eth1"
         "</interface></source></hostdev>", "devices/hostdev[1]/@managed"),
        ("<hostdev mode='capabilities' type='net'><source/></hostdev>",
         "devices/hostdev[1]/source/interface"),
        ("<hostdev mode='capabilities' type='net'><source><interface>eth1</interface></source>"
         "<address type='pci'/></hostdev>", "devices/hostdev[1]/address"),
        ("<hostdev mode='capabilities' type='net'><source><interface>eth1</interface></source>"
         "</hostdev><hostdev mode='capabilities' type='net'><source><interface>eth1</interface>"
         "</source></hostdev>", "devices/hostdev[2]/source/interface"),
    ],
)  # fmt: skip
def test_what_cannot_be_lent_is_refused_naming_it(xml: str, where: str) -> None:
    """Other hostdevs (PCI, USB, block devices), libvirt's managed=, a missing or repeated
    interface and unknown children are refused, naming the element or attribute."""
    with pytest.raises(InvalidDocument) as info:
        parse_domain(HOSTDEV.format(xml))
    assert where in [p.split(": ")[1] for p in info.value.problems]


def test_a_hostdev_round_trips_and_shares_no_namespace() -> None:
    """define -> dumpxml -> define keeps it; it is not allowed beside <lxc:sharenet> (the
    guest's own namespace is where the NIC goes)."""
    text = HOSTDEV.format(
        "<hostdev mode='capabilities' type='net'><source><interface>enp3s0</interface>"
        "</source><ip address='192.168.215.6' prefix='24'/>"
        "<route family='ipv4' address='0.0.0.0' prefix='0' gateway='192.168.215.1'/>"
        "<alias name='hostdev0'/></hostdev>"
    )
    domain = parse_domain(text)
    assert (domain, True) == (parse_domain(format_domain(domain)), domain.private_network)
    shared = text.replace(
        "<domain type='lxc'>",
        "<domain type='lxc' xmlns:lxc='http://libvirt.org/schemas/domain/lxc/1.0'>",
    ).replace(
        "</domain>",
        "<lxc:namespace><lxc:sharenet type='netns' value='red'/></lxc:namespace></domain>",
    )
    with pytest.raises(InvalidDocument, match="lxc:sharenet"):
        parse_domain(shared)
