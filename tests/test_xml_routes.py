"""``<route>`` as libvirt reads it: the prefix it infers when none is given, stored explicitly.

libvirt (virSocketAddrGetIPPrefix) takes a route's prefix from ``prefix`` (when above 0) or
``netmask``; otherwise 0.0.0.0 and ``::`` mean a default route (/0), other IPv4 addresses get
their class's prefix and other IPv6 ones /64. Storing /32 for ``address='0.0.0.0'`` would give the
guest no default route, silently.
"""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidDocument
from supervisor.model import Route
from supervisor.xml import format_domain, parse_domain, parse_network
from supervisor.xml.domain import natural_prefix


def _domain(route: str) -> str:
    return (
        "<domain type='lxc'><name>r</name><os><type>exe</type><init>/bin/sh</init></os>"
        "<devices><interface type='network'><source network='n'/>"
        f"<ip address='192.168.7.5' prefix='24'/>{route}</interface></devices></domain>"
    )


@pytest.mark.parametrize(
    ("attrs", "prefix"),
    [
        ("address='0.0.0.0'", 0),
        ("address='10.0.0.0'", 8),
        ("address='172.16.0.0'", 16),
        ("address='192.168.9.0'", 24),
        ("address='172.16.0.0' prefix='0'", 16),  # libvirt reads prefix 0 as "not given"
        ("address='10.1.0.0' prefix='16'", 16),
        ("address='10.1.2.0' netmask='255.255.255.0'", 24),
        ("family='ipv6' address='::'", 0),
        ("family='ipv6' address='fd00:1::'", 64),
    ],
)
def test_the_prefix_is_libvirts(attrs: str, prefix: int) -> None:
    gateway = "fd00::1" if "ipv6" in attrs else "192.168.7.1"
    domain = parse_domain(_domain(f"<route {attrs} gateway='{gateway}'/>"))
    route = domain.interfaces[0].routes[0]
    assert prefix == route.prefix
    assert domain == parse_domain(format_domain(domain))  # written explicitly, read the same


def test_a_default_route_without_prefix_is_written_with_prefix_0() -> None:
    domain = parse_domain(_domain("<route address='0.0.0.0' gateway='192.168.7.1'/>"))
    assert (
        Route(address="0.0.0.0", prefix=0, gateway="192.168.7.1")
        == (domain.interfaces[0].routes[0])
    )
    assert '<route address="0.0.0.0" prefix="0" gateway="192.168.7.1"/>' in format_domain(domain)


def test_no_prefix_for_class_d_is_refused_by_name() -> None:
    with pytest.raises(InvalidDocument) as info:
        parse_domain(_domain("<route address='224.1.0.0' gateway='192.168.7.1'/>"))
    assert [
        "1: devices/interface[1]/route/@prefix: no prefix can be inferred for 224.1.0.0 "
        "(class D or E): allowed a prefix or netmask attribute"
    ] == info.value.problems


def test_host_bits_are_refused() -> None:
    """The kernel refuses 10.1.0.0/8; define says so, naming the field."""
    with pytest.raises(InvalidDocument) as info:
        parse_domain(_domain("<route address='10.1.0.0' gateway='192.168.7.1'/>"))
    assert [
        "1: devices/interface[1]/route[1]/@address: value '10.1.0.0' has host bits set for "
        "prefix 8: allowed a network address, e.g. 10.0.0.0"
    ] == info.value.problems


def test_a_network_route_reads_the_same_way() -> None:
    network = parse_network(
        "<network><name>n</name><forward mode='route'/><bridge name='vsvbr9'/>"
        "<ip address='192.168.7.1' prefix='24'/>"
        "<route address='0.0.0.0' gateway='192.168.7.254'/></network>"
    )
    assert 0 == network.routes[0].prefix


def test_natural_prefix() -> None:
    assert [0, 8, 16, 24, None, None, 0, 64, None] == [
        natural_prefix(a)
        for a in (
            "0.0.0.0",
            "127.0.0.1",
            "128.0.0.0",
            "223.255.255.0",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "2001:db8::",
            "bogus",
        )
    ]
