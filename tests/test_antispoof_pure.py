"""Anti-spoofing without root: the guard table's text, its set elements and their netlink
encoding, the lease hook, and the ``<filterref>`` of a domain's interface."""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import InvalidDocument
from supervisor.model import Interface, IpAddress, Network, NetworkIp
from supervisor.net import nftables
from supervisor.net.dnsmasq import DnsmasqFiles, config_text
from supervisor.net.nftables import PortGuard, element_key, element_text, port_elements
from supervisor.net.nics import PlumbedNic, _plan_guard, nic_guard
from supervisor.xml import format_domain, parse_domain

MAC = "52:54:00:12:34:56"


def doc(interface: str) -> str:
    return (
        "<domain type='lxc'><name>g</name><os><type>exe</type><init>/bin/sh</init></os>"
        f"<devices>{interface}</devices></domain>"
    )


# ---------------------------------------------------------------------------- addresses


def test_link_local_and_slaac_come_from_the_mac() -> None:
    """Modified EUI-64: the universal/local bit flipped, ff:fe in the middle."""
    assert "fe80::5054:ff:fe12:3456" == nftables.eui64_address("fe80::/64", MAC)
    assert "2001:db8:1:2:5054:ff:fe12:3456" == nftables.eui64_address("2001:db8:1:2::/64", MAC)


def test_guard_addresses_known_then_derived_without_duplicates() -> None:
    """Static/reserved first (prefix lengths dropped), then link-local, then SLAAC per /64."""
    network = Network(
        name="n",
        ips=(
            NetworkIp(address="10.0.0.1", prefix=24),
            NetworkIp(address="fd00:1::1", prefix=64, family="ipv6"),
            NetworkIp(address="fd00:2::1", prefix=48, family="ipv6"),  # no SLAAC on a /48
        ),
    )
    got = nftables.guard_addresses(MAC, ["10.0.0.5/24", "10.0.0.5"], network)
    assert ("10.0.0.5", "fe80::5054:ff:fe12:3456", "fd00:1::5054:ff:fe12:3456") == got


def test_plan_guard_modes() -> None:
    """Default, clean-traffic, opt-out, and a bridge NIC whose addresses cannot be known."""
    net = Network(name="n", ips=(NetworkIp(address="10.0.0.1", prefix=24),))
    plain = Interface(type="network", source="n")
    guard = _plan_guard(plain, MAC, ["10.0.0.5/24"], net)
    assert guard is not None
    assert (True, False) == (guard.check_ip, guard.strict)
    strict = _plan_guard(Interface(type="network", filterref="clean-traffic"), MAC, [], net)
    assert strict is not None
    assert strict.strict
    assert None is _plan_guard(Interface(type="network", filterref="vsv-allow-all"), MAC, [], net)
    bridge = _plan_guard(Interface(type="bridge", source="br0"), MAC, [], None)
    assert bridge is not None
    assert not bridge.check_ip
    static = Interface(type="bridge", source="br0", ips=(IpAddress("192.0.2.7", 24),))
    bridged = _plan_guard(static, MAC, ["192.0.2.7/24"], None)
    assert bridged is not None
    assert bridged.check_ip
    assert "192.0.2.7" in bridged.addresses


def test_plumbed_nic_records_its_guard() -> None:
    """What a run record keeps is enough to rebuild the guard (for takeover and unplumb)."""
    guard = PortGuard("vsvtv0", MAC, ("10.0.0.5", "fe80::5054:ff:fe12:3456"), strict=True)
    nic = PlumbedNic(
        0, "network", "veth-bridge", "vsvtv0", "eth0", MAC, "g#0", network="n",
        guard="clean-traffic", allowed=guard.addresses,
    )  # fmt: skip
    assert guard == nic_guard(nic)
    assert None is nic_guard(PlumbedNic(0, "network", "veth-bridge", "h", "eth0", MAC, "g#0"))


# ---------------------------------------------------------------------------- the table


def test_ruleset_declares_every_set_and_lists_elements() -> None:
    guard = PortGuard("vsvtv0", MAC, ("10.0.0.5", "fe80::1"), check_ip=False, strict=True)
    text = nftables.antispoof_ruleset("vsvt_n", [guard])
    assert text.startswith("table bridge vsvt_n {")
    for spec in nftables.GUARD_SETS:
        assert f"  set {spec.name} {{" in text
    assert 'elements = { "vsvtv0" . 0x525400123456 }' in text
    assert 'elements = { "vsvtv0" . 10.0.0.5 }' in text
    assert 'elements = { "vsvtv0" . 0xfe800000000000000000000000000001 }' in text
    assert text.count('elements = { "vsvtv0" }') == 3  # ports, strict, unchecked
    assert "type filter hook prerouting priority filter" in text
    assert "elements" not in nftables.antispoof_ruleset("vsvt_n")


def test_ruleset_rules_in_order() -> None:
    """Each check comes before the accepts that would let a frame past it."""
    lines = [line.strip() for line in nftables.antispoof_ruleset("t").splitlines()]

    def at(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    assert at('comment "source MAC"') < at("jump arp_out") < at("jump ipv4_out")
    assert at('comment "DHCP server"') < at("ip saddr 0.0.0.0 ip daddr 255.255.255.255")
    assert at('comment "ARP sender MAC"') < at("iifname @unchecked accept")
    assert at('comment "router message"') < at("icmpv6 type nd-neighbor-advert")
    assert at('comment "NA target"') < at("iifname . @nh,64,128 @addr6 accept")


def test_reload_keeps_elements() -> None:
    """A takeover flushes rules (elements stay) and loads them again, in one script."""
    script = nftables.antispoof_reload_script("vsvt_n")
    assert script.startswith("add table bridge vsvt_n\nflush table bridge vsvt_n\ntable bridge")
    assert "delete" not in script


def test_port_elements_and_their_text() -> None:
    guard = PortGuard("h0", MAC, ("10.0.0.5", "fd00::5"))
    elements = port_elements(guard)
    assert [e[0] for e in elements] == ["ports", "port_mac", "addr4", "addr6"]
    assert '"h0" . 0x525400123456' == element_text(elements[1])
    assert '"h0" . 0xfd000000000000000000000000000005' == element_text(elements[3])


def test_element_keys_are_padded_per_field() -> None:
    """As nft stores them: ifname 16 bytes, each field of a concatenation rounded up to 4."""
    assert b"h0".ljust(16, b"\0") == element_key(("ports", ("h0",)))
    key = element_key(("port_mac", ("h0", MAC)))
    assert 24 == len(key)
    assert key[16:22] == bytes.fromhex("525400123456")
    assert key[22:] == b"\0\0"
    assert 20 == len(element_key(("addr4", ("h0", "10.0.0.5"))))
    assert 32 == len(element_key(("addr6", ("h0", "fd00::5"))))
    assert 12 == len(element_key(("lease4", (MAC, "10.0.0.5"))))


def _messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        out.append((kind, flags, seq, data[pos + 16 : pos + length]))
        pos += (length + 3) & ~3
    return out


def test_batch_removes_as_add_then_delete_then_adds() -> None:
    """One transaction; a removal cannot fail on a missing element; every message is acked."""
    old = [("addr4", ("h0", "10.0.0.5"))]
    new = [("addr4", ("h0", "10.0.0.6")), ("ports", ("h0",))]
    data, acked = nftables.elements_batch("vsvt_n", new, old, seq=7)
    msgs = _messages(data)
    kinds = [kind for kind, _f, _s, _b in msgs]
    new_el, del_el = (10 << 8) | 12, (10 << 8) | 14
    assert [0x10, new_el, del_el, new_el, new_el, 0x11] == kinds
    assert [8, 9, 10, 11] == acked == [seq for _k, _f, seq, _b in msgs[1:-1]]
    begin = msgs[0][3]
    assert struct.pack("=BBH", 0, 0, socket.htons(10)) == begin[:4]
    family = msgs[1][3][0]
    assert nftables.NFPROTO_BRIDGE == family
    assert b"vsvt_n\0" in msgs[1][3]
    assert b"addr4\0" in msgs[1][3]
    assert ipaddress.ip_address("10.0.0.5").packed in msgs[1][3]


def test_parse_acks() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, 5, 0) + struct.pack("=i", -2) + b"\0" * 16
    ok = struct.pack("=IHHII", 36, 2, 0, 6, 0) + struct.pack("=i", 0) + b"\0" * 16
    assert [(5, 2), (6, 0)] == nftables.parse_acks(ack + ok)


@given(st.binary(max_size=200))
def test_parse_acks_never_raises(data: bytes) -> None:
    nftables.parse_acks(data)


# ---------------------------------------------------------------------------- the lease hook


def test_dnsmasq_runs_the_hook_on_renewal_too() -> None:
    files = DnsmasqFiles.in_dir(Path("/run/x"), "vsvt", "n")
    net = Network(name="n", ips=(NetworkIp(address="10.0.0.1", prefix=24),))
    lines = config_text(net, "br0", files, lease_hook=True).splitlines()
    assert {"dhcp-script=/run/x/vsvt-n.leasehook", "script-on-renewal"} <= set(lines)
    assert not any("dhcp-script" in line for line in config_text(net, "br0", files).splitlines())


def _run_hook(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    """Run the hook with a stand-in nft that keeps the script it is given; returns the script."""
    fake = tmp_path / "nft"
    out = tmp_path / "script"
    out.unlink(missing_ok=True)
    fake.write_text(f"#!/bin/sh\ncat > {out}\n")
    fake.chmod(0o755)
    text = nftables.lease_hook_script("vsvt_n", sys.executable).replace(nftables.NFT, str(fake))
    hook = tmp_path / "hook"
    hook.write_text(text)
    hook.chmod(0o700)
    done = subprocess.run([str(hook), *args], env=env, capture_output=True, text=True, timeout=20)
    assert 0 == done.returncode, done.stderr
    return out.read_text() if out.exists() else ""


def test_hook_adds_with_the_remaining_time(tmp_path: Path) -> None:
    out = _run_hook(
        tmp_path, ["add", MAC.upper(), "10.0.0.9", "h"], {"DNSMASQ_TIME_REMAINING": "60"}
    )
    element = f"element bridge vsvt_n lease4 {{ {MAC} . 10.0.0.9"
    assert [f"add {element} }}", f"delete {element} }}", f"add {element} timeout 60s }}"] == (
        out.splitlines()
    )


def test_hook_v6_uses_the_mac_from_the_environment(tmp_path: Path) -> None:
    out = _run_hook(tmp_path, ["old", "12345", "fd00::9", "h"], {"DNSMASQ_MAC": MAC})
    assert f"lease6 {{ {MAC} . 0xfd000000000000000000000000000009 }}" in out.splitlines()[-1]


def test_hook_del_and_ignored_events(tmp_path: Path) -> None:
    out = _run_hook(tmp_path, ["del", MAC, "10.0.0.9", "h"], {})
    assert 2 == len(out.splitlines())
    assert out.splitlines()[1].startswith("delete ")
    assert "" == _run_hook(tmp_path, ["init"], {})
    assert "" == _run_hook(tmp_path, ["add", "6-aa:bb", "10.0.0.9"], {})  # not Ethernet
    assert "" == _run_hook(tmp_path, ["add", MAC, "10.0.0.9;flush ruleset"], {})


def test_hook_refuses_odd_names() -> None:
    with pytest.raises(ValueError, match="cannot write a lease hook"):
        nftables.lease_hook_script("a b", sys.executable)


# ---------------------------------------------------------------------------- the domain XML


@pytest.mark.parametrize("name", ["clean-traffic", "vsv-allow-all"])
def test_filterref_round_trip(name: str) -> None:
    d = parse_domain(
        doc(f"<interface type='network'><source network='n'/><filterref filter='{name}'/>"
            "</interface>")
    )  # fmt: skip
    assert name == d.interfaces[0].filterref
    assert f'<filterref filter="{name}"/>' in format_domain(d)
    assert d == parse_domain(format_domain(d))


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        ("<interface type='network'><source network='n'/><filterref filter='no-ip-spoofing'/>"
         "</interface>", "'no-ip-spoofing' is not supported: allowed clean-traffic, vsv-allow-all"),
        ("<interface type='bridge'><source bridge='b'/><filterref filter='clean-traffic'>"
         "<parameter name='IP' value='10.0.0.1'/></filterref></interface>",
         "filterref/parameter: filter parameters are not supported"),
        ("<interface type='ethernet'><filterref filter='clean-traffic'/></interface>",
         "<filterref> is not used by type='ethernet'"),
        ("<interface type='network'><source network='n'/><filterref/></interface>",
         "filterref/@filter: required attribute is missing"),
    ],
)  # fmt: skip
def test_filterref_refused_with_a_reason(interface: str, message: str) -> None:
    """What the supervisor cannot honour is refused by name, never read as less filtering."""
    with pytest.raises(InvalidDocument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_domain(doc(interface))


def test_opting_out_is_a_widening_vsv_validate_names() -> None:
    """``vsv validate`` lists every widening of a guest's default confinement; an interface
    that opts out of anti-spoofing is one."""
    from supervisor.guest.confine import widenings

    d = parse_domain(
        doc("<interface type='network'><source network='n'/></interface>"
            "<interface type='network'><source network='n'/><filterref filter='vsv-allow-all'/>"
            "</interface>")
    )  # fmt: skip
    assert ["devices/interface[2]/filterref"] == [where for where, _ in widenings(d)]


@given(
    st.binary(min_size=6, max_size=6),
    st.ip_addresses(v=6),
    st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), max_size=4),
)
def test_guard_addresses_agree_with_ipaddress(
    raw: bytes,
    net6: ipaddress.IPv6Address,
    known: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    """The start path's byte arithmetic gives the addresses ipaddress would, as addresses."""
    mac = ":".join(f"{b:02x}" for b in raw)
    flipped = bytes([raw[0] ^ 2]) + raw[1:3] + b"\xff\xfe" + raw[3:]
    network = Network(
        name="n",
        ips=(NetworkIp(address=str(net6), prefix=64, family="ipv6"),),
    )
    texts = [f"{a}/{a.max_prefixlen}" if i % 2 else str(a) for i, a in enumerate(known)]
    got = nftables.guard_addresses(mac, texts, network)
    slaac = ipaddress.IPv6Network(f"{net6}/64", strict=False).network_address
    expected = [*known]
    expected += [
        ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + flipped),
        ipaddress.IPv6Address(slaac.packed[:8] + flipped),
    ]
    assert list(dict.fromkeys(expected)) == [ipaddress.ip_address(a) for a in got]
