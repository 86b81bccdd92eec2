"""libvirt-lxc domain documents as libvirt writes them (issue 15, part A).

What ``virsh dumpxml`` writes for an LXC guest is accepted with libvirt's meaning, kept by
``dumpxml`` (define -> dumpxml -> define gives the same domain), and what the supervisor writes
validates against libvirt's ``domain.rng``; what libvirt's LXC driver refuses, or the supervisor
cannot honour, is refused with the element named. The documents are written for these tests in
libvirt's style (tests/data/libvirt-style/). As root, a live guest's document defines and starts.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import trio
from lxml import etree

from supervisor.daemon import Supervisor
from supervisor.errors import InvalidDocument
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.validate import host_arch, host_problems
from supervisor.xml import format_domain, parse_domain
from tests import test_net_daemon
from tests.test_xml_roundtrip import LIBVIRT_SCHEMAS, _assert_valid, _schema, needs_libvirt_schemas

DATA = Path(__file__).resolve().parent / "data" / "libvirt-style"

# the fixtures of the network tests (a sandbox netns, a supervisor doing its networking there)
sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup


def live_web(root: str = "/srv/web", arch: str = "x86_64") -> str:
    """The live document of a running guest, as virsh dumpxml writes it."""
    text = (DATA / "live-web.xml").read_text()
    return text.replace("@ROOT@", root).replace("@ARCH@", arch)


def doc(body: str, devices: str = "") -> str:
    """A small lxc domain with ``body`` at the top level and ``devices`` in ``<devices>``."""
    dev = f"<devices>{devices}</devices>" if devices else ""
    return (
        "<domain type='lxc'><name>c1</name><memory unit='KiB'>65536</memory>"
        f"<os><type>exe</type><init>/bin/sh</init></os>{body}{dev}</domain>"
    )


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidDocument) as info:
        parse_domain(text)
    return info.value.problems


def _items(text: str) -> Counter[tuple[str, tuple[tuple[str, str], ...], str]]:
    """Every element as (path, attributes, text): what a document says, whatever its layout."""
    root = etree.fromstring(text.encode())
    return Counter(
        (
            _path(el),
            tuple(sorted((str(k), str(v)) for k, v in el.attrib.items())),
            (el.text or "").strip(),
        )
        for el in root.iter()
        if isinstance(el.tag, str)
    )


def _path(el: etree._Element) -> str:
    """``domain/devices/interface/source``: the element's tag and its ancestors'."""
    names = []
    node: etree._Element | None = el
    while node is not None:
        names.append(str(node.tag))
        node = node.getparent()
    return "/".join(reversed(names))


# --- the live document ---------------------------------------------------------------------


def test_a_live_dump_is_accepted_and_written_back_element_for_element() -> None:
    """Every element and attribute of a running guest's document is kept by dumpxml."""
    text = live_web()
    domain = parse_domain(text)
    out = format_domain(domain)
    assert _items(text) == _items(out)
    assert domain == parse_domain(out)


@needs_libvirt_schemas
def test_a_live_dump_written_back_validates_against_libvirts_schema() -> None:
    """dumpxml's output for the live document is valid for libvirt's domain.rng."""
    _assert_valid(_schema(LIBVIRT_SCHEMAS / "domain.rng"), format_domain(parse_domain(live_web())))


def test_the_live_dump_keeps_what_is_not_applied() -> None:
    """The live-only parts are in the model as written (kept, not applied)."""
    d = parse_domain(live_web())
    nic, console, fs = d.interfaces[0], d.consoles[0], d.filesystems[0]
    assert ("lan", "virbr0", "9d2f6b3e-1c4a-4e8f-b5d0-7a6c2e1f9b84", "veth3", "net0") == (
        nic.source,
        nic.source_bridge,
        nic.portid,
        nic.target_dev,
        nic.alias,
    )
    assert ("/dev/pts/4", "/dev/pts/4", "lxc", 0, "console0") == (
        console.tty,
        console.source_path,
        console.target_type,
        console.target_port,
        console.alias,
    )
    assert ("passthrough", "fs0") == (fs.accessmode, fs.alias)
    assert (52817, "utc", "/usr/libexec/libvirt_lxc", "static", "x86_64") == (
        d.id,
        d.clock_offset,
        d.emulator,
        d.vcpu_placement,
        d.os.arch,
    )
    assert ("none", None) == (d.seclabels[0].type, d.seclabels[0].model)


# --- each element round-trips --------------------------------------------------------------

ROUND_TRIPS = {
    "clock utc": (doc("<clock offset='utc'/>"), "clock[@offset='utc']"),
    "emulator": (doc("", "<emulator>/usr/lib/libvirt/libvirt_lxc</emulator>"), "devices/emulator"),
    "seclabel none": (doc("<seclabel type='none'/>"), "seclabel[@type='none']"),
    "seclabel none with model and relabel": (
        doc("<seclabel type='none' model='selinux' relabel='no'/>"),
        "seclabel[@model='selinux'][@relabel='no']",
    ),
    "one seclabel per model": (
        doc("<seclabel type='none' model='selinux'/><seclabel type='none' model='dac'/>"),
        "seclabel[2][@model='dac']",
    ),
    "os type arch": (
        doc("").replace("<type>exe", "<type arch='aarch64'>exe"),
        "os/type[@arch='aarch64']",
    ),
    "vcpu placement and current": (
        doc("<vcpu placement='static' current='1'>2</vcpu>"),
        "vcpu[@placement='static'][@current='1']",
    ),
    "resource partition": (
        doc("<resource><partition>/machine</partition></resource>"),
        "resource/partition",
    ),
    "on_* actions": (
        doc("<on_poweroff>preserve</on_poweroff><on_crash>rename-restart</on_crash>"),
        "on_crash",
    ),
    "filesystem accessmode and alias": (
        doc(
            "",
            "<filesystem type='mount' accessmode='passthrough'><source dir='/srv/a'/>"
            "<target dir='/a'/><alias name='fs0'/></filesystem>",
        ),
        "devices/filesystem[@accessmode='passthrough']/alias[@name='fs0']",
    ),
    "ram filesystem accessmode": (
        doc(
            "",
            "<filesystem type='ram' accessmode='passthrough'><source usage='1024' units='KiB'/>"
            "<target dir='/tmp'/></filesystem>",
        ),
        "devices/filesystem[@type='ram'][@accessmode='passthrough']",
    ),
    "interface source bridge portid, target, alias": (
        doc(
            "",
            "<interface type='network'><source network='default' bridge='virbr0' "
            "portid='0f4c2a7e-5b1d-4c3e-8a9f-6d2b7e1c0a35'/><target dev='veth0'/>"
            "<alias name='net0'/></interface>",
        ),
        "devices/interface/source[@bridge='virbr0'][@portid]",
    ),
    "ethernet with both ends": (
        doc(
            "",
            "<interface type='ethernet'><source>"
            "<ip address='192.168.213.1' prefix='32' peer='192.168.213.2'/>"
            "<ip address='fd00:213::1' family='ipv6' prefix='64'/>"
            "<route family='ipv4' address='10.9.0.0' prefix='16' gateway='192.168.213.2'/>"
            "</source><target dev='vnet3'/>"
            "<ip address='192.168.213.2' prefix='32' peer='192.168.213.1'/>"
            "<route family='ipv4' address='0.0.0.0' prefix='0' gateway='192.168.213.1'/>"
            "</interface>",
        ),
        "devices/interface/source/ip[@peer='192.168.213.2']",
    ),
    "direct (macvlan), declared unguarded": (
        doc(
            "",
            "<interface type='direct'><mac address='52:54:00:3c:1a:07'/>"
            "<source dev='enp1s0' mode='bridge'/><target dev='macvlan0'/>"
            "<guest dev='lan0'/><ip address='192.168.214.7' prefix='24'/>"
            "<filterref filter='vsv-allow-all'/><alias name='net1'/></interface>",
        ),
        "devices/interface[@type='direct']/source[@dev='enp1s0'][@mode='bridge']",
    ),
    "direct without a mode": (
        doc(
            "",
            "<interface type='direct'><source dev='enp1s0'/>"
            "<filterref filter='vsv-allow-all'/></interface>",
        ),
        "devices/interface/source[not(@mode)]",
    ),
    "bridge interface alias": (
        doc("", "<interface type='bridge'><source bridge='br0'/><alias name='ua-x'/></interface>"),
        "devices/interface/alias[@name='ua-x']",
    ),
    "console as defined": (
        doc("", "<console type='pty'><target type='lxc' port='0'/></console>"),
        "devices/console/target[@type='lxc'][@port='0']",
    ),
    "console bare": (doc("", "<console type='pty'/>"), "devices/console"),
    "console live": (
        doc(
            "",
            "<console type='pty' tty='/dev/pts/2'><source path='/dev/pts/2'/>"
            "<target type='lxc' port='0'/><alias name='console0'/></console>",
        ),
        "devices/console[@tty='/dev/pts/2']/source[@path='/dev/pts/2']",
    ),
    "two consoles": (
        doc("", "<console type='pty'/><console type='pty'><target port='1'/></console>"),
        "devices/console[2]/target[@port='1']",
    ),
    "live id of an lxc domain": (doc("").replace("type='lxc'", "type='lxc' id='3123456'"), "."),
    "lxc:namespace": (
        doc("")
        .replace(
            "<domain type='lxc'>",
            "<domain type='lxc' xmlns:lxc='http://libvirt.org/schemas/domain/lxc/1.0'>",
        )
        .replace(
            "</domain>",
            "<lxc:namespace><lxc:sharenet type='netns' value='red'/>"
            "<lxc:shareuts type='name' value='web'/></lxc:namespace></domain>",
        ),
        "*[local-name()='namespace']/*[local-name()='shareuts'][@value='web']",
    ),
    "vcpu cpuset": (doc("<vcpu placement='static' cpuset='0-3,^2'>2</vcpu>"), "vcpu[@cpuset]"),
    "blkiotune": (
        doc(
            "<blkiotune><weight>500</weight><device><path>/dev/vdb</path>"
            "<weight>800</weight><read_bytes_sec>1048576</read_bytes_sec>"
            "<write_bytes_sec>0</write_bytes_sec><read_iops_sec>400</read_iops_sec>"
            "<write_iops_sec>200</write_iops_sec></device>"
            "<device><path>/dev/vdc</path><read_iops_sec>10</read_iops_sec></device>"
            "</blkiotune>"
        ),
        "blkiotune/device[2]/read_iops_sec",
    ),
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_each_element_round_trips(name: str) -> None:
    """define -> dumpxml -> define gives the same domain, and dumpxml writes the element."""
    text, xpath = ROUND_TRIPS[name]
    domain = parse_domain(text)
    out = format_domain(domain)
    assert domain == parse_domain(out)
    assert etree.fromstring(out.encode()).xpath(xpath), out
    assert Counter() == _items(text) - _items(out)  # nothing written is lost


@needs_libvirt_schemas
@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_each_element_written_validates_against_libvirts_schema(name: str) -> None:
    """What dumpxml writes for each element is valid for libvirt's domain.rng."""
    _assert_valid(
        _schema(LIBVIRT_SCHEMAS / "domain.rng"), format_domain(parse_domain(ROUND_TRIPS[name][0]))
    )


# --- what stays refused, with the element named --------------------------------------------

REFUSED = {
    "clock localtime": (doc("<clock offset='localtime'/>"), "clock/@offset"),
    "clock timer": (doc("<clock offset='utc'><timer name='rtc'/></clock>"), "clock/timer"),
    "clock without offset": (doc("<clock/>"), "clock/@offset"),
    "seclabel dynamic": (doc("<seclabel type='dynamic' model='selinux'/>"), "seclabel[1]/@type"),
    "seclabel without type": (doc("<seclabel model='apparmor'/>"), "seclabel[1]/@type"),
    "seclabel static label": (
        doc("<seclabel type='static' model='selinux'><label>x</label></seclabel>"),
        "seclabel[1]/label",
    ),
    "seclabel relabel yes": (doc("<seclabel type='none' relabel='yes'/>"), "seclabel[1]/@relabel"),
    "two seclabels of one model": (
        doc("<seclabel type='none' model='dac'/><seclabel type='none' model='dac'/>"),
        "seclabel[2]/@model",
    ),
    "vcpu placement auto": (doc("<vcpu placement='auto'>1</vcpu>"), "vcpu/@placement"),
    "cpuset empty": (doc("<vcpu cpuset='1,^1'>1</vcpu>"), "vcpu/@cpuset"),
    "cpuset backwards": (doc("<vcpu cpuset='3-1'>1</vcpu>"), "vcpu/@cpuset"),
    "blkio weight low": (doc("<blkiotune><weight>10</weight></blkiotune>"), "blkiotune/weight"),
    "blkio device twice": (
        doc(
            "<blkiotune><device><path>/dev/a</path></device>"
            "<device><path>/dev/a</path></device></blkiotune>"
        ),
        "blkiotune/device[2]/path",
    ),
    "blkio device without path": (
        doc("<blkiotune><device><weight>100</weight></device></blkiotune>"),
        "blkiotune/device[1]/path",
    ),
    "blkio device weight high": (
        doc("<blkiotune><device><path>/dev/a</path><weight>1001</weight></device></blkiotune>"),
        "blkiotune/device[1]/weight",
    ),
    "blkio iops too big": (
        doc(
            "<blkiotune><device><path>/dev/a</path>"
            "<read_iops_sec>4294967296</read_iops_sec></device></blkiotune>"
        ),
        "blkiotune/device[1]/read_iops_sec",
    ),
    "vcpu current above vcpu": (doc("<vcpu current='3'>2</vcpu>"), "vcpu/@current"),
    "other partition": (
        doc("<resource><partition>/machine/web</partition></resource>"),
        "resource/partition",
    ),
    "unknown architecture": (doc("").replace("<type>", "<type arch='pdp11'>"), "os/type/@arch"),
    "emulator relative": (doc("", "<emulator>libvirt_lxc</emulator>"), "devices/emulator"),
    "two emulators": (
        doc("", "<emulator>/a</emulator><emulator>/b</emulator>"),
        "devices/emulator",
    ),
    "console file": (doc("", "<console type='file'/>"), "devices/console[1]/@type"),
    "console target serial": (
        doc("", "<console type='pty'><target type='serial'/></console>"),
        "devices/console[1]/target/@type",
    ),
    "console log": (
        doc("", "<console type='pty'><log file='/tmp/x'/></console>"),
        "devices/console[1]/log",
    ),
    "alias twice": (
        doc(
            "",
            "<interface type='ethernet'><alias name='x'/></interface>"
            "<console type='pty'><alias name='x'/></console>",
        ),
        "devices/console[1]/alias/@name",
    ),
    "alias bad": (doc("", "<console type='pty'><alias name='a b'/></console>"), "alias/@name"),
    "portid on a bridge NIC": (
        doc("", "<interface type='bridge'><source bridge='br0' portid='x'/></interface>"),
        "devices/interface[1]/source/@portid",
    ),
    "portid not a uuid": (
        doc("", "<interface type='network'><source network='n' portid='x'/></interface>"),
        "devices/interface[1]/source/@portid",
    ),
    "host side on a bridge NIC": (
        doc(
            "",
            "<interface type='bridge'><source bridge='br0'><ip address='10.0.0.1'/></source>"
            "</interface>",
        ),
        "devices/interface[1]/source/ip",
    ),
    "peer on a network NIC": (
        doc(
            "",
            "<interface type='network'><source network='n'/>"
            "<ip address='10.0.0.2' prefix='24' peer='10.0.0.1'/></interface>",
        ),
        "devices/interface[1]/ip[1]/@peer",
    ),
    "ethernet source dev": (
        doc("", "<interface type='ethernet'><source dev='eth0'/></interface>"),
        "devices/interface[1]/source/@dev",
    ),
    "ethernet source other child": (
        doc(
            "",
            "<interface type='ethernet'><source><mac address='52:54:00:1:2:3'/></source>"
            "</interface>",
        ),
        "devices/interface[1]/source/mac",
    ),
    "ethernet peer of another family": (
        doc("", "<interface type='ethernet'><ip address='10.0.0.2' peer='fd00::1'/></interface>"),
        "devices/interface[1]/ip[1]/@peer",
    ),
    "ethernet class D address without prefix": (
        doc(
            "", "<interface type='ethernet'><source><ip address='224.0.0.9'/></source></interface>"
        ),
        "devices/interface[1]/source/ip[1]/@prefix",
    ),
    "bridge class D address without prefix": (
        doc(
            "",
            "<interface type='bridge'><source bridge='br0'/><ip address='224.0.0.9'/></interface>",
        ),
        "devices/interface[1]/ip[1]/@prefix",
    ),
    "bridge class D address with prefix 0 (read as none)": (
        doc(
            "",
            "<interface type='bridge'><source bridge='br0'/>"
            "<ip address='224.0.0.9' prefix='0'/></interface>",
        ),
        "devices/interface[1]/ip[1]/@prefix",
    ),
    "direct without the opt-out": (
        doc("", "<interface type='direct'><source dev='enp1s0' mode='bridge'/></interface>"),
        "devices/interface[1]/filterref",
    ),
    "direct with clean-traffic": (
        doc(
            "",
            "<interface type='direct'><source dev='enp1s0'/>"
            "<filterref filter='clean-traffic'/></interface>",
        ),
        "devices/interface[1]/filterref/@filter",
    ),
    "direct mode source": (
        doc(
            "",
            "<interface type='direct'><source dev='enp1s0' mode='source'/>"
            "<filterref filter='vsv-allow-all'/></interface>",
        ),
        "devices/interface[1]/source/@mode",
    ),
    "direct without a link": (
        doc("", "<interface type='direct'><filterref filter='vsv-allow-all'/></interface>"),
        "devices/interface[1]/source/@dev",
    ),
    "mode on a bridge NIC": (
        doc("", "<interface type='bridge'><source bridge='br0' mode='vepa'/></interface>"),
        "devices/interface[1]/source/@mode",
    ),
    "direct on a network": (
        doc(
            "",
            "<interface type='direct'><source dev='enp1s0' network='lan'/>"
            "<filterref filter='vsv-allow-all'/></interface>",
        ),
        "devices/interface[1]/source/@network",
    ),
    "accessmode squash": (
        doc(
            "",
            "<filesystem accessmode='squash'><source dir='/a'/><target dir='/a'/></filesystem>",
        ),
        "devices/filesystem[1]/@accessmode",
    ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_is_not_honoured_is_refused_with_the_element_named(name: str) -> None:
    """Each is refused, and the message names the element (or attribute) at fault."""
    text, where = REFUSED[name]
    found = problems(text)
    assert any(f": {where}" in p or f"/{where}" in p for p in found), found


def test_define_refuses_another_architecture() -> None:
    """An arch other than the host's is refused at define (libvirt's LXC driver: no such
    guest); `vsv validate` accepts it, the rule depends on the host."""
    d = parse_domain(doc("").replace("<type>", "<type arch='s390x'>"))
    assert ["os/type/@arch"] == [p.where for p in host_problems(d, arch="x86_64")]
    assert [] == host_problems(
        parse_domain(doc("").replace("<type>", f"<type arch='{host_arch()}'>"))
    )


# --- messages number repeated elements by their position in the document -------------------


def test_messages_number_filesystems_by_document_position() -> None:
    """After a refused filesystem, the next ones are still numbered as the document has them
    (the bug: two different filesystems were both 'filesystem[1]')."""
    found = problems(
        doc(
            "",
            "<filesystem type='template'><source name='t'/><target dir='/a'/></filesystem>\n"
            "<filesystem><source dir='rel'/><target dir='/b'/></filesystem>\n"
            "<filesystem><source dir='/c'/><target dir='c'/></filesystem>",
        )
    )
    wheres = [p.split(": ")[1] for p in found]
    assert [
        "devices/filesystem[1]/@type",
        "devices/filesystem[2]/source/@dir",
        "devices/filesystem[3]/target/@dir",
    ] == wheres


def test_messages_number_interfaces_and_consoles_by_document_position() -> None:
    """The same for interfaces and consoles (a refused one before a bad one)."""
    found = problems(
        doc(
            "",
            "<interface type='user'/>"
            "<interface type='ethernet'><mtu size='1'/></interface>"
            "<console type='tcp'/><console type='pty'><target port='-1'/></console>",
        )
    )
    wheres = sorted(p.split(": ")[1] for p in found)
    assert [
        "devices/console[1]/@type",
        "devices/console[2]/target/@port",
        "devices/interface[1]/@type",
        "devices/interface[2]/mtu/@size",
    ] == wheres


# --- as root: the live document defines and starts -----------------------------------------


@pytest.mark.root
async def test_a_live_dump_defines_and_starts(
    sup: Supervisor, tmp_path: Path, prefix: str, sandbox: str
) -> None:
    """A running libvirt guest's document (clock, emulator, seclabel none, aliases, source
    network+bridge+portid, target dev, pty console) defines and starts: the NIC joins the
    network's bridge under its <target> name with its MAC, and dumpxml keeps the document."""
    await sup.define_network(test_net_daemon.lan(prefix, 67))
    await sup.start_network("lan")
    root = prepare_busybox_root(str(tmp_path / "root"))
    domain = parse_domain(live_web(root=root, arch=host_arch()))
    stored = await sup.define_domain(domain)
    assert stored == domain
    with trio.fail_after(60):
        status = await sup.start_domain("web")
    try:
        assert "RUNNING" == status.state
        pid = status.init_pid
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        host_end = subprocess.run(
            ["ip", "-n", sandbox, "-o", "link", "show", "veth3"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"master {prefix}b0" in host_end
        guest = subprocess.run(
            ["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "52:54:00:3a:91:0c" in guest
        assert _items(format_domain(domain)) == _items(format_domain(sup.guests["web"].domain))
    finally:
        await sup.destroy_domain("web")
