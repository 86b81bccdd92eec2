"""``<interface type='direct'>`` (issue 15): a macvlan on a host link, through a real supervisor.

The test's sandbox namespace stands for the host and a veth pair made there for the physical
link the macvlans sit on. In ``bridge`` mode two guests on the link reach each other; in
``private`` mode they do not; ``passthrough`` gives the guest the link's MAC slot (and its
``<mac>`` to the link while the guest runs). A macvlan cannot be guarded against spoofing, so
the document must say ``<filterref filter='vsv-allow-all'/>``: without it the NIC is refused,
with it ``vsv validate`` reports a widening.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.daemon import Supervisor
from supervisor.errors import InvalidDocument, InvalidOperation
from supervisor.guest.confine import widenings
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import DirectMode, Domain, Filesystem, Interface, IpAddress, OsSpec
from supervisor.validate import check_domain
from supervisor.xml import parse_domain
from tests import test_net_daemon
from tests.test_net_daemon import in_ns
from tests.test_net_nic_kinds import LOOP, ip, sh

sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup


def uplink(prefix: str, sandbox: str) -> str:
    """A veth pair in the sandbox, both ends up: one end stands for the host's physical link."""
    link = f"{prefix}up0"
    sh("ip", "-n", sandbox, "link", "add", link, "type", "veth", "peer", "name", f"{prefix}up1")
    for end in (link, f"{prefix}up1"):
        sh("ip", "-n", sandbox, "link", "set", end, "up")
    return link


def macvlan_guest(
    name: str, root: Path, link: str, mode: DirectMode, address: str, mac: str | None = None
) -> Domain:
    nic = Interface(
        type="direct",
        source=link,
        direct_mode=mode,
        mac=mac,
        ips=(IpAddress(address, 24),),
        filterref="vsv-allow-all",
    )
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        interfaces=(nic,),
    )


@pytest.mark.root
@pytest.mark.parametrize(("mode", "third", "reach"), [("bridge", 81, True), ("private", 82, False)])
async def test_two_guests_on_macvlans_of_one_link(
    sup: Supervisor,
    tmp_path: Path,
    prefix: str,
    sandbox: str,
    mode: DirectMode,
    third: int,
    reach: bool,
) -> None:
    """Each guest's eth0 is a macvlan of the link in the mode asked, with its MAC and address;
    in bridge mode the guests reach each other, in private mode they do not; after destroy
    the link is as it was and nothing of the guests is left."""
    link = uplink(prefix, sandbox)
    before = ip(sandbox, "link", "show", "dev", link)[0]["address"]
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    macs = ("52:54:00:5e:00:01", "52:54:00:5e:00:02")
    for n in (1, 2):
        dom = macvlan_guest(f"mv{n}", root, link, mode, f"10.213.{third}.{n}", macs[n - 1])
        await sup.define_domain(dom)
        await sup.start_domain(f"mv{n}")
    for n in (1, 2):
        (eth0,) = ip(f"{prefix}-mv{n}", "-d", "addr", "show", "dev", "eth0")
        addrs = [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"]
        assert ("macvlan", mode, macs[n - 1], [f"10.213.{third}.{n}"]) == (
            eth0["linkinfo"]["info_kind"],
            eth0["linkinfo"]["info_data"]["mode"],
            eth0["address"],
            addrs,
        )
        (row,) = sup.domain_interfaces(f"mv{n}")
        assert ("macvlan", link, "eth0") == (row["mode"], row["host_if"], row["name"])
    ping = in_ns(f"{prefix}-mv1", "ping", "-c1", "-W2", f"10.213.{third}.2")
    assert reach == (0 == ping.returncode), ping.stdout + ping.stderr

    for n in (1, 2):
        await sup.destroy_domain(f"mv{n}")
    assert before == ip(sandbox, "link", "show", "dev", link)[0]["address"]
    assert [] == [
        entry["ifname"]
        for entry in ip(sandbox, "-d", "link", "show")
        if entry.get("linkinfo", {}).get("info_kind") == "macvlan"
    ]


@pytest.mark.root
async def test_passthrough_lends_the_link_and_gives_it_back(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """passthrough (the kernel's passthru): the guest's macvlan is the link's only one and has
    the <mac>, which the link itself wears while the guest runs; the link has its own MAC back
    as soon as the guest is destroyed."""
    link = uplink(prefix, sandbox)
    own = ip(sandbox, "link", "show", "dev", link)[0]["address"]
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    mac = "52:54:00:5e:00:09"
    await sup.define_domain(macvlan_guest("mvp", root, link, "passthrough", "10.213.83.9", mac))
    await sup.start_domain("mvp")
    (eth0,) = ip(f"{prefix}-mvp", "-d", "link", "show", "dev", "eth0")
    assert ("passthru", mac, mac) == (
        eth0["linkinfo"]["info_data"]["mode"],
        eth0["address"],
        ip(sandbox, "link", "show", "dev", link)[0]["address"],
    )
    await sup.destroy_domain("mvp")
    assert own == ip(sandbox, "link", "show", "dev", link)[0]["address"]


@pytest.mark.root
async def test_a_missing_link_fails_the_start_naming_it(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A start whose <source dev> does not exist in the host fails, naming the element."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(macvlan_guest("mvx", root, f"{prefix}none", "vepa", "10.213.84.2"))
    with pytest.raises(InvalidOperation, match=f"<source dev='{prefix}none'>"):
        await sup.start_domain("mvx")


DIRECT = (
    "<domain type='lxc'><name>d</name><os><type>exe</type></os><devices>"
    "<interface type='direct'><source dev='eth0' mode='vepa'/>{}</interface>"
    "</devices></domain>"
)


def test_an_unguarded_macvlan_must_be_declared() -> None:
    """Without <filterref filter='vsv-allow-all'/> a direct NIC is refused (it cannot be
    guarded), naming the element; clean-traffic is refused too; with the opt-out it is
    accepted and reported as a widening."""
    with pytest.raises(InvalidDocument) as missing:
        parse_domain(DIRECT.format(""))
    assert ["devices/interface[1]/filterref"] == [p.split(": ")[1] for p in missing.value.problems]
    with pytest.raises(InvalidDocument) as strict:
        parse_domain(DIRECT.format("<filterref filter='clean-traffic'/>"))
    assert ["devices/interface[1]/filterref/@filter"] == [
        p.split(": ")[1] for p in strict.value.problems
    ]
    domain = parse_domain(DIRECT.format("<filterref filter='vsv-allow-all'/>"))
    assert [] == check_domain(domain)
    ((where, what),) = widenings(domain)
    assert ("devices/interface[1]", True) == (where, "macvlan on host link eth0" in what)
