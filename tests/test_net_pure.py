"""Unit and property tests of the pure network parts: names, IPAM, rule and config text."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import ConflictError
from supervisor.model import (
    AddressRange,
    DhcpHost,
    DhcpLease,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Forward,
    Network,
    NetworkIp,
)
from supervisor.net import names, nftables
from supervisor.net.dnsmasq import (
    DnsmasqFiles,
    addn_hosts_text,
    config_text,
    hosts_text,
    upstream_resolv_file,
    wants_dnsmasq,
)
from supervisor.net.ipam import Allocations, owner_key
from supervisor.net.networks import check_collisions

keys = st.text(min_size=1, max_size=40)
prefixes = st.sampled_from(["vsv", "vsvt1a2b", "vsvtffff"])


@given(prefixes, keys, st.integers(0, 99), st.integers(0, 9))
def test_host_ifname_fits_and_is_stable(prefix: str, key: str, index: int, attempt: int) -> None:
    """Host interface names carry the prefix, fit 15 bytes and are a function of the inputs."""
    name = names.host_ifname(prefix, key, index, attempt)
    assert (True, True) == (name.startswith(prefix), len(name.encode()) <= 15)
    assert name == names.host_ifname(prefix, key, index, attempt)


@given(keys, st.integers(0, 99), st.integers(0, 9))
def test_guest_mac_is_local_unicast_never_fe(key: str, index: int, attempt: int) -> None:
    """Generated MACs are locally administered unicast and never start with 0xFE."""
    mac = names.guest_mac(key, index, attempt)
    first = int(mac[:2], 16)
    assert (0, 2, False) == (first & 1, first & 2, first == 0xFE)
    assert mac == names.check_mac(mac)


def test_check_mac_refuses_fe_and_multicast() -> None:
    """A guest MAC starting 0xFE or with the multicast bit is refused."""
    for bad in ("fe:00:00:00:00:01", "01:00:5e:00:00:01", "zz"):
        with pytest.raises(ValueError, match="MAC"):
            names.check_mac(bad)


def test_tap_mac_and_guest_ifname() -> None:
    """Taps get the guest MAC with first byte 0xFE; guest names default to eth<index>."""
    assert "fe:54:00:12:34:56" == names.tap_mac("52:54:00:12:34:56")
    assert ("eth1", "wan") == (names.guest_ifname(1), names.guest_ifname(0, "wan"))


def net(ranges: tuple[AddressRange, ...] = (AddressRange("10.0.0.10", "10.0.0.12"),)) -> Network:
    """A small network for IPAM tests."""
    return Network(
        name="n",
        ips=(
            NetworkIp(
                address="10.0.0.1",
                prefix=24,
                dhcp_ranges=ranges,
                dhcp_hosts=(DhcpHost(ip="10.0.0.11", mac="52:54:00:00:00:99", name="fixed"),),
            ),
        ),
    )


def test_ipam_skips_reserved_and_exhausts() -> None:
    """Allocation skips others' static hosts, gives a host its own reservation, then runs out."""
    s, a = Allocations().allocate(net(), "g#0", "02:00:00:00:00:01")
    s, b = s.allocate(net(), "h#0", "02:00:00:00:00:02")
    s, c = s.allocate(net(), "f#0", "52:54:00:00:00:99")
    assert ["10.0.0.10", "10.0.0.12", "10.0.0.11"] == [a.address, b.address, c.address]
    with pytest.raises(ConflictError, match="no free address"):
        s.allocate(net(), "x#0", "02:00:00:00:00:03")


def test_ipam_refuses_duplicates_and_is_idempotent() -> None:
    """The same owner gets the same address; a taken address or MAC is refused."""
    s, a = Allocations().allocate(net(), "g#0", "02:00:00:00:00:01")
    assert (s, a) == s.allocate(net(), "g#0", "02:00:00:00:00:01")
    with pytest.raises(ConflictError, match="already in use"):
        s.allocate(net(), "h#0", "02:00:00:00:00:02", requested=a.address)
    with pytest.raises(ConflictError, match="MAC"):
        s.allocate(net(), "h#0", "02:00:00:00:00:01")
    with pytest.raises(ConflictError, match="not a usable"):
        s.allocate(net(), "h#0", "02:00:00:00:00:02", requested="10.0.0.1")


@given(st.lists(st.tuples(st.text("abc", min_size=1, max_size=3), st.integers(0, 3)), max_size=30))
def test_ipam_unique_and_serialisable(owners: list[tuple[str, int]]) -> None:
    """Any sequence of allocations gives distinct addresses and survives a JSON round trip."""
    network = net((AddressRange("10.0.0.2", "10.0.0.254"),))
    state = Allocations()
    for i, (g, n) in enumerate(owners):
        mac = names.guest_mac(g, n)
        if state.mac_in_use("n", mac, by_other_than=owner_key(g, n)):
            continue
        state, _ = state.allocate(network, owner_key(g, n), mac)
        if i % 5 == 4:
            state = state.release_guest(g)
    addrs = [a.address for a in state.entries]
    assert len(set(addrs)) == len(addrs)
    assert state == Allocations.from_json(state.to_json())
    assert () == state.release_network("n").entries


def test_collision_check() -> None:
    """A network overlapping an existing route is refused; a disjoint one is accepted."""
    used = [(ipaddress.ip_network("10.0.0.0/16"), "eth9")]
    with pytest.raises(ConflictError, match="eth9"):
        check_collisions(net(), used)
    check_collisions(net(), [(ipaddress.ip_network("192.168.0.0/24"), "eth9")])


def test_nat_ruleset_masquerades_subnet() -> None:
    """A NAT network's table masquerades its subnet and accepts only replies inbound."""
    text = nftables.network_ruleset(
        "vsv_n", Network(name="n", forward=Forward(), ips=net().ips), "br0"
    )
    assert text is not None
    assert "ip saddr 10.0.0.0/24 ip daddr != 10.0.0.0/24 masquerade" in text
    assert 'oifname "br0" ip daddr 10.0.0.0/24 ct state established,related accept' in text


def test_isolated_and_open_rulesets() -> None:
    """Isolated networks forward nothing out; open networks get no table at all."""
    iso = nftables.network_ruleset("vsv_n", net(), "br0")
    assert iso is not None
    assert (False, True) == ("masquerade" in iso, 'iifname "br0" reject' in iso)
    assert None is nftables.network_ruleset(
        "vsv_n", Network(name="n", forward=Forward(mode="open"), ips=net().ips), "br0"
    )


def test_guard_ruleset_accepts_only_own_addresses() -> None:
    """The vserver guard accepts the guest's addresses and counts and drops the rest."""
    text = nftables.guard_ruleset("vsv_x", "h0", ["192.0.2.10", "192.0.2.11"])
    assert 'iifname "h0" ip saddr { 192.0.2.10, 192.0.2.11 } accept' in text
    assert text.rstrip().splitlines()[-3].strip() == 'iifname "h0" counter drop'


def test_dnsmasq_files() -> None:
    """dnsmasq config, hosts and addn-hosts texts carry ranges, reservations and DNS records."""
    files = DnsmasqFiles.in_dir(Path("/run/x"), "vsvt", "n")
    network = Network(
        name="n", domain_name="lan", ips=net().ips, dns_hosts=(DnsHost("10.0.0.5", ("web",)),)
    )
    conf = config_text(network, "br0", files)
    assert "dhcp-range=10.0.0.10,10.0.0.12,255.255.255.0" in conf.splitlines()
    assert {"interface=br0", "no-resolv"} <= set(conf.splitlines())
    hosts = network.ips[0].dhcp_hosts
    assert "52:54:00:00:00:99,10.0.0.11,fixed\n" == hosts_text(hosts)
    assert "10.0.0.5 web\n10.0.0.11 fixed\n" == addn_hosts_text(network, hosts)
    assert "/run/x/vsvt-n.conf" == str(files.conf)


FILES = DnsmasqFiles.in_dir(Path("/run/x"), "vsvt", "n")
V4 = NetworkIp(address="10.0.0.1", prefix=24, dhcp_ranges=(AddressRange("10.0.0.10", "10.0.0.12"),))


def conf_lines(network: Network, resolv: str | None = "/etc/resolv.conf") -> list[str]:
    return config_text(network, "br0", FILES, resolv_file=resolv).splitlines()


def test_upstream_is_the_host_resolv_conf_as_libvirt() -> None:
    """A NAT network forwards to the host namespace's resolvers; an isolated one never does,
    nor one without a resolv.conf (a sandbox without its own)."""
    nat = Network(name="n", forward=Forward(mode="nat"), ips=(V4,))
    assert "resolv-file=/etc/resolv.conf" in conf_lines(nat)
    assert "no-resolv" not in conf_lines(nat)
    assert "no-resolv" in conf_lines(nat, None)
    isolated = Network(name="n", ips=(V4,))
    assert {"no-resolv", "dhcp-option=3"} <= set(conf_lines(isolated))


def test_upstream_resolv_file_is_the_host_namespaces() -> None:
    """The host's resolv.conf in the supervisor's own namespace; a named sandbox's own
    (``/etc/netns/NAME/resolv.conf``, as ``ip netns exec`` shows it) or none at all."""
    assert "/etc/resolv.conf" == upstream_resolv_file(None)
    there = {"/etc/netns/sbx/resolv.conf"}.__contains__
    assert "/etc/netns/sbx/resolv.conf" == upstream_resolv_file("/run/netns/sbx", there)
    assert None is upstream_resolv_file("/run/netns/other", there)
    assert None is upstream_resolv_file("/proc/1/ns/net", there)


def test_forwarders_as_libvirt_writes_them() -> None:
    """addr: a server (and no-resolv, it takes every unclaimed query); domain and addr: that
    domain's server; domain alone: kept local (``#``)."""
    fwds = (
        DnsForwarder(addr="192.0.2.53"),
        DnsForwarder(addr="192.0.2.54", domain="example.com"),
        DnsForwarder(domain="local.example"),
    )
    lines = conf_lines(Network(name="n", forward=Forward(), ips=(V4,), dns_forwarders=fwds))
    assert ["server=192.0.2.53", "server=/example.com/192.0.2.54", "server=/local.example/#"] == [
        line for line in lines if line.startswith("server=")
    ]
    assert "no-resolv" in lines
    only_domain = Network(name="n", forward=Forward(), ips=(V4,), dns_forwarders=fwds[1:])
    assert "no-resolv" not in conf_lines(only_domain)


def test_domain_plain_names_records_and_disabled_dns() -> None:
    """localOnly and forwardPlainNames as libvirt; srv and txt records; enable='no' turns DNS
    off (port 0, no records, no addn-hosts) and keeps DHCP."""
    net = Network(
        name="n",
        forward=Forward(),
        ips=(V4,),
        domain_name="lan",
        domain_local_only=True,
        dns_forward_plain_names=False,
        dns_srvs=(
            DnsSrv("ldap", "tcp", "lan", "dc.lan", 389, 1, 2),
            DnsSrv("x", "udp", target="t.lan", weight=5),
            DnsSrv("gone", "tcp", target="."),
        ),
        dns_txts=(DnsTxt("t.lan", "some text"),),
    )
    lines = conf_lines(net)
    for line in ("local=/lan/", "domain=lan", "expand-hosts", "domain-needed", "local=//"):
        assert line in lines
    assert [
        "srv-host=_ldap._tcp.lan,dc.lan,389,1,2",
        "srv-host=_x._udp,t.lan,1,0,5",
        "srv-host=_gone._tcp",
    ] == [line for line in lines if line.startswith("srv-host")]
    assert "txt-record=t.lan,some text" in lines
    off = conf_lines(Network(name="n", forward=Forward(), ips=(V4,), dns_enable=False))
    assert "port=0" in off
    assert not [line for line in off if line.startswith("addn-hosts")]
    assert "dhcp-range=10.0.0.10,10.0.0.12,255.255.255.0" in off
    assert "local=/lan/" not in conf_lines(Network(name="n", forward=Forward(), domain_name="lan"))


def test_ipv6_dhcp_ra_and_slaac() -> None:
    """An IPv6 range: DHCPv6 with its prefix length and router advertisements; IPv6 without
    DHCP: advertisements for SLAAC only; lease times as dnsmasq reads them."""
    v6 = NetworkIp(
        address="fd00::1",
        prefix=64,
        family="ipv6",
        dhcp_ranges=(AddressRange("fd00::10", "fd00::ff", DhcpLease(2, "hours")),),
    )
    lines = conf_lines(Network(name="n", forward=Forward(), ips=(V4, v6)))
    assert "dhcp-range=fd00::10,fd00::ff,64,2h" in lines
    assert "enable-ra" in lines
    assert "dhcp-lease-max=243" in lines  # 3 + 240
    slaac = NetworkIp(address="fd00:1::1", prefix=64, family="ipv6")
    lines = conf_lines(Network(name="n", forward=Forward(), ips=(V4, slaac)))
    assert "dhcp-range=fd00:1::1,ra-only" in lines
    assert "enable-ra" not in lines
    static = NetworkIp(
        address="fd00::1",
        prefix=64,
        family="ipv6",
        dhcp_hosts=(DhcpHost(ip="fd00::5", id="0:3:0:1:52:54:0:0:0:1"),),
    )
    lines = conf_lines(Network(name="n", forward=Forward(), ips=(static,)))
    assert "dhcp-range=fd00::1,static,64" in lines
    assert not wants_dnsmasq(Network(name="n", ips=(slaac,), dns_enable=False))
    assert wants_dnsmasq(Network(name="n", ips=(static,), dns_enable=False))


def test_hosts_file_lines_as_libvirt() -> None:
    """IPv4 by MAC or name, IPv6 by DUID or name in brackets, with lease times."""
    hosts = [
        DhcpHost(ip="10.0.0.5", mac="52:54:00:00:00:05", name="a", lease=DhcpLease(300, "seconds")),
        DhcpHost(ip="10.0.0.6", name="b"),
        DhcpHost(ip="fd00::5", id="0:3:0:1:52:54:0:0:0:1", name="c"),
        DhcpHost(ip="fd00::6", id="0:3:0:1:52:54:0:0:0:2"),
        DhcpHost(ip="fd00::7", name="d", lease=DhcpLease(0)),
    ]
    assert [
        "52:54:00:00:00:05,10.0.0.5,a,300s",
        "b,10.0.0.6",
        "id:0:3:0:1:52:54:0:0:0:1,c,[fd00::5]",
        "id:0:3:0:1:52:54:0:0:0:2,[fd00::6]",
        "d,[fd00::7],infinite",
    ] == hosts_text(hosts).splitlines()
