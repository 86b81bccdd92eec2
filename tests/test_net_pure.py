"""Unit and property tests of the pure network parts: names, IPAM, rule and config text."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import ConflictError
from supervisor.model import AddressRange, DhcpHost, DnsHost, Forward, Network, NetworkIp
from supervisor.net import names, nftables
from supervisor.net.dnsmasq import DnsmasqFiles, addn_hosts_text, config_text, hosts_text
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
