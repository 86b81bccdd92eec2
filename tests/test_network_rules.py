"""The network format's rules (issue 14): libvirt's constraints, each refused by name.

Every case is a small document that breaks one rule; the codec must refuse it with exactly the
problems listed, as ``<element>/@attr`` paths (the messages say what is allowed). Elements the
supervisor does not implement are refused with the element named.
"""

from __future__ import annotations

import attrs
import pytest

from supervisor.errors import InvalidDocument
from supervisor.model import (
    AddressRange,
    DhcpLease,
    Forward,
    Network,
    NetworkIp,
)
from supervisor.validate import check_network
from supervisor.xml import format_network, parse_network

IP4 = (
    "<ip address='10.0.0.1' prefix='24'><dhcp>"
    "<range start='10.0.0.100' end='10.0.0.200'/></dhcp></ip>"
)


def net(body: str = "", forward: str = "<forward mode='nat'/>", ip: str = IP4) -> str:
    """A valid NAT network with ``body`` added (and ``forward`` or ``ip`` replaced)."""
    return f"<network><name>n</name>{forward}<bridge name='vbr0'/>{body}{ip}</network>"


def ip4(inner: str = "", address: str = "10.0.0.1") -> str:
    """An IPv4 ``<ip>`` of a /24 with ``inner`` (a <dhcp> or <tftp>) in it."""
    return f"<ip address='{address}' prefix='24'>{inner}</ip>"


def ip6(inner: str = "", prefix: int = 64, address: str = "fd00::1") -> str:
    return f"<ip family='ipv6' address='{address}' prefix='{prefix}'>{inner}</ip>"


def dhcp(*items: str) -> str:
    return "<dhcp>" + "".join(items) + "</dhcp>"


def rng(start: str, end: str, inner: str = "") -> str:
    return f"<range start='{start}' end='{end}'>{inner}</range>"


def wheres(doc: str) -> list[str]:
    """The element/attribute paths of a document's problems (none: [])."""
    try:
        parse_network(doc)
    except InvalidDocument as exc:
        return [p.split(": ", 2)[1] for p in exc.problems]
    return []


def problems(doc: str) -> list[str]:
    with pytest.raises(InvalidDocument) as info:
        parse_network(doc)
    return info.value.problems


REFUSED: list[tuple[str, str, str]] = [
    ("mode private", net(forward="<forward mode='private'/>"), "forward/@mode"),
    ("mode vepa", net(forward="<forward mode='vepa'/>"), "forward/@mode"),
    ("mode passthrough", net(forward="<forward mode='passthrough'/>"), "forward/@mode"),
    ("mode hostdev", net(forward="<forward mode='hostdev'/>"), "forward/@mode"),
    ("virtualport", net("<virtualport type='openvswitch'/>"), "virtualport"),
    ("portgroup", net("<portgroup name='eng' default='yes'/>"), "portgroup"),
    ("bandwidth", net("<bandwidth><inbound average='1000'/></bandwidth>"), "bandwidth"),
    ("vlan", net("<vlan><tag id='42'/></vlan>"), "vlan"),
    ("pf", net(forward="<forward mode='nat'><pf dev='eth0'/></forward>"), "forward/pf"),
    (
        "nat ipv6",
        net(forward="<forward mode='nat'><nat ipv6='yes'/></forward>"),
        "forward/nat/@ipv6",
    ),
    ("localPtr", net(ip="<ip address='10.0.0.1' prefix='24' localPtr='yes'/>"), "ip[1]/@localPtr"),
    (
        "bridge zone",
        net().replace("<bridge name='vbr0'/>", "<bridge name='b' zone='z'/>"),
        "bridge/@zone",
    ),
    (
        "macvtap pool",
        "<network><name>n</name><forward mode='bridge'><interface dev='eth0'/>"
        "<interface dev='eth1'/></forward></network>",
        "forward/@dev",
    ),
]


@pytest.mark.parametrize(("doc", "where"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_what_is_not_implemented_is_refused_by_name(doc: str, where: str) -> None:
    assert [where] == wheres(doc)


RULES: list[tuple[str, str, list[str]]] = [
    # forward devices: libvirt's one list
    (
        "dev is not the first interface",
        net(forward="<forward mode='nat' dev='a'><interface dev='b'/></forward>"),
        ["forward/@dev"],
    ),
    (
        "two devices for nat",
        net(forward="<forward mode='route'><interface dev='a'/><interface dev='b'/></forward>"),
        ["forward/interface[2]"],
    ),
    (
        "a device on an open network",
        net(forward="<forward mode='open' dev='a'/>"),
        ["forward/@dev"],
    ),
    ("nat without an ip", net(ip=""), ["forward/@mode"]),
    (
        "nat on route",
        net(forward="<forward mode='route'><nat><port start='1' end='2'/></nat></forward>"),
        ["forward/nat"],
    ),
    # a host bridge has no settings of a bridge the supervisor makes
    (
        "host bridge without name",
        "<network><name>n</name><forward mode='bridge'/></network>",
        ["bridge/@name"],
    ),
    (
        "host bridge with stp",
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0' stp='off'/></network>",
        ["bridge/@stp"],
    ),
    (
        "host bridge with an ip",
        f"<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>{IP4}</network>",
        ["ip[1]"],
    ),
    (
        "host bridge with mtu, mac, domain",
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/><mtu size='9000'/>"
        "<mac address='52:54:00:00:00:01'/><domain name='d'/></network>",
        ["mtu/@size", "mac/@address", "domain/@name"],
    ),
    (
        "host bridge with dns records",
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>"
        "<dns><txt name='a' value='b'/></dns></network>",
        ["dns/txt"],
    ),
    # DNS
    (
        "records with dns off",
        net("<dns enable='no'><forwarder addr='1.1.1.1'/></dns>"),
        ["dns/@enable"],
    ),
    ("forwarder with nothing", net("<dns><forwarder/></dns>"), ["dns/forwarder[1]"]),
    (
        "forwarder not an address",
        net("<dns><forwarder addr='resolver'/></dns>"),
        ["dns/forwarder[1]/@addr"],
    ),
    (
        "srv port without target",
        net("<dns><srv service='x' protocol='tcp' port='80'/></dns>"),
        ["dns/srv[1]/@port"],
    ),
    (
        "srv protocol",
        net("<dns><srv service='x' protocol='sctp'/></dns>"),
        ["dns/srv[1]/@protocol"],
    ),
    ("srv service", net("<dns><srv service='a b' protocol='tcp'/></dns>"), ["dns/srv[1]/@service"]),
    (
        "srv port 0",
        net("<dns><srv service='x' protocol='tcp' target='t' port='0'/></dns>"),
        ["dns/srv[1]/@port"],
    ),
    ("txt name", net("<dns><txt name='a,b' value='c'/></dns>"), ["dns/txt[1]/@name"]),
    (
        "txt value on two lines",
        net("<dns><txt name='a' value='x&#10;y'/></dns>"),
        ["dns/txt[1]/@value"],
    ),
    ("host without hostname", net("<dns><host ip='10.0.0.9'/></dns>"), ["dns/host[1]/hostname"]),
    # addresses of the network
    ("prefix 33", net(ip="<ip address='10.0.0.1' prefix='33'/>"), ["ip[1]/@prefix"]),
    ("the network address", net(ip="<ip address='10.0.0.0' prefix='24'/>"), ["ip[1]/@address"]),
    ("the broadcast address", net(ip="<ip address='10.0.0.255' prefix='24'/>"), ["ip[1]/@address"]),
    ("class D without prefix", net(ip="<ip address='224.0.0.1'/>"), ["ip[1]/@prefix"]),
    (
        "netmask on IPv6",
        net(ip="<ip family='ipv6' address='fd00::1' netmask='255.255.0.0'/>"),
        ["ip[1]/@netmask"],
    ),
    (
        "netmask and prefix",
        net(ip="<ip address='10.0.0.1' prefix='24' netmask='255.255.255.0'/>"),
        ["ip[1]/@netmask"],
    ),
    (
        "family mismatch",
        net(ip="<ip family='ipv6' address='10.0.0.1' prefix='24'/>"),
        ["ip[1]/@family"],
    ),
    # DHCP ranges
    (
        "range with the gateway",
        net(ip=ip4(dhcp(rng("10.0.0.1", "10.0.0.9")))),
        ["ip[1]/dhcp/range[1]"],
    ),
    (
        "range with the network address",
        net(ip=ip4(dhcp(rng("10.0.0.0", "10.0.0.0")))),
        ["ip[1]/dhcp/range[1]"],
    ),
    (
        "range with the broadcast address",
        net(ip=ip4(dhcp(rng("10.0.0.9", "10.0.0.255")))),
        ["ip[1]/dhcp/range[1]"],
    ),
    (
        "range reversed",
        net(ip=ip4(dhcp(rng("10.0.0.9", "10.0.0.5")))),
        ["ip[1]/dhcp/range[1]/@end"],
    ),
    ("range outside", net(ip=ip4(dhcp(rng("10.0.0.5", "10.0.1.5")))), ["ip[1]/dhcp/range[1]/@end"]),
    (
        "DHCP on two IPv4 addresses",
        net(ip=IP4 + ip4(dhcp(rng("10.1.0.2", "10.1.0.9")), address="10.1.0.1")),
        ["ip[2]/dhcp"],
    ),
    (
        "DHCP on two IPv6 addresses",
        net(
            ip=ip6(dhcp("<host name='a' ip='fd00::5'/>"))
            + ip6(dhcp("<host name='b' ip='fd00:2::5'/>"), address="fd00:2::1")
        ),
        ["ip[2]/dhcp"],
    ),
    (
        "DHCPv6 on a /48",
        net(ip=ip6(dhcp(rng("fd00::10", "fd00::20")), prefix=48)),
        ["ip[1]/@prefix"],
    ),
    (
        "lease of a minute",
        net(ip=ip4(dhcp(rng("10.0.0.5", "10.0.0.9", "<lease expiry='1'/>")))),
        ["ip[1]/dhcp/range[1]/lease/@expiry"],
    ),
    (
        "lease unit",
        net(ip=ip4(dhcp(rng("10.0.0.5", "10.0.0.9", "<lease expiry='1' unit='days'/>")))),
        ["ip[1]/dhcp/range[1]/lease/@unit"],
    ),
    # DHCP hosts
    (
        "IPv4 host by id",
        net(ip=ip4(dhcp("<host id='0:3:0:1:0:16:3e:11:22:33' ip='10.0.0.5'/>"))),
        ["ip[1]/dhcp/host[1]/@id", "ip[1]/dhcp/host[1]"],
    ),
    (
        "IPv6 host by mac",
        net(ip=ip6(dhcp("<host mac='52:54:00:00:00:01' name='a' ip='fd00::5'/>"))),
        ["ip[1]/dhcp/host[1]/@mac"],
    ),
    ("IPv6 host by nothing", net(ip=ip6(dhcp("<host ip='fd00::5'/>"))), ["ip[1]/dhcp/host[1]"]),
    (
        "not a DUID",
        net(ip=ip6(dhcp("<host id='0:9:zz' ip='fd00::5'/>"))),
        ["ip[1]/dhcp/host[1]/@id"],
    ),
    (
        "host at the gateway",
        net(ip=ip4(dhcp("<host name='gw' ip='10.0.0.1'/>"))),
        ["ip[1]/dhcp/host[1]/@ip"],
    ),
    (
        "host name",
        net(ip=ip4(dhcp("<host name='-x' ip='10.0.0.5'/>"))),
        ["ip[1]/dhcp/host[1]/@name"],
    ),
    # TFTP and BOOTP
    ("tftp on IPv6", net(ip=ip6("<tftp root='/srv'/>")), ["ip[1]/tftp"]),
    ("tftp root relative", net(ip=ip4("<tftp root='srv'/>")), ["ip[1]/tftp/@root"]),
    (
        "two tftp",
        net(ip=ip4("<tftp root='/a'/>") + ip4("<tftp root='/b'/>", address="10.1.0.1")),
        ["ip[2]/tftp"],
    ),
    ("bootp without DHCP", net(ip=ip4(dhcp("<bootp file='pxe.0'/>"))), ["ip[1]/dhcp/bootp"]),
    (
        "bootp on IPv6",
        net(ip=ip6(dhcp("<host name='a' ip='fd00::5'/>", "<bootp file='pxe.0'/>"))),
        ["ip[1]/dhcp/bootp"],
    ),
    (
        "bootp file with a comma",
        net(ip=ip4(dhcp(rng("10.0.0.5", "10.0.0.9"), "<bootp file='a,b'/>"))),
        ["ip[1]/dhcp/bootp/@file"],
    ),
    (
        "bootp server IPv6",
        net(ip=ip4(dhcp(rng("10.0.0.5", "10.0.0.9"), "<bootp file='a' server='fd00::9'/>"))),
        ["ip[1]/dhcp/bootp/@server"],
    ),
    # routes
    (
        "gateway unreachable",
        net(ip=IP4 + "<route address='10.9.0.0' prefix='16' gateway='10.8.0.1'/>"),
        ["route[1]/@gateway"],
    ),
    (
        "metric 0",
        net(ip=IP4 + "<route address='10.9.0.0' prefix='16' gateway='10.0.0.9' metric='0'/>"),
        ["route[1]/@metric"],
    ),
    (
        "route host bits",
        net(ip=IP4 + "<route address='10.9.0.1' prefix='16' gateway='10.0.0.9'/>"),
        ["route[1]/@address"],
    ),
    (
        "route netmask on IPv6",
        net(ip=ip6() + "<route address='fd01::' netmask='255.0.0.0' gateway='fd00::9'/>"),
        ["route[1]/@netmask"],
    ),
    # the rest of the top level
    ("mtu", net("<mtu size='10'/>"), ["mtu/@size"]),
    ("multicast mac", net("<mac address='01:00:5e:00:00:01'/>"), ["mac/@address"]),
    (
        "macTableManager",
        net().replace("<bridge name='vbr0'/>", "<bridge name='b' macTableManager='x'/>"),
        ["bridge/@macTableManager"],
    ),
    ("port isolated", net("<port isolated='maybe'/>"), ["port/@isolated"]),
    ("ipv6 attribute", net().replace("<network>", "<network ipv6='true'>"), ["network/@ipv6"]),
    ("localOnly", net("<domain name='d' localOnly='1'/>"), ["domain/@localOnly"]),
    ("second metadata", net("<metadata/><metadata/>"), ["metadata"]),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in RULES], ids=[c[0] for c in RULES])
def test_a_broken_rule_is_refused_naming_the_field(doc: str, expected: list[str]) -> None:
    assert expected == wheres(doc)


def test_messages_say_what_is_allowed_with_the_line() -> None:
    """A problem reads PATH:LINE: where: value '...' what: allowed ..."""
    doc = "<network>\n<name>n</name>\n<forward mode='open' dev='e1'/>\n" + IP4 + "\n</network>"
    with pytest.raises(InvalidDocument) as info:
        parse_network(doc, path="n.xml")
    assert [
        "n.xml:3: forward/@dev: value 'e1' restricts an open network (which adds no firewall "
        "rules): allowed no forward device with mode='open'"
    ] == info.value.problems


def test_the_base_documents_are_valid() -> None:
    """The documents the cases above break are themselves accepted."""
    assert [] == wheres(net())
    assert [] == wheres(
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>"
        "<port isolated='yes'/></network>"
    )


def test_forward_dev_and_interface_are_one_list() -> None:
    """<forward dev='X'> and <forward><interface dev='X'/></forward> are the same model."""
    a = parse_network(net(forward="<forward mode='route' dev='up0'/>"))
    b = parse_network(net(forward="<forward mode='route'><interface dev='up0'/></forward>"))
    assert (a, Forward(mode="route", dev="up0")) == (b, a.forward)
    assert a.forward is not None
    assert ("up0", ("up0",)) == (a.forward.dev, a.forward.interfaces)
    assert '<forward mode="route" dev="up0"/>' in format_network(a)  # dev alone says it


def test_missing_prefixes_are_libvirts_stored_explicitly() -> None:
    """Classful IPv4 (prefix='0' is read as none), /64 for IPv6, written out as prefixes."""
    n = parse_network(
        net(
            ip="<ip address='10.2.0.1'/><ip address='172.16.2.1'/>"
            "<ip address='192.168.2.1' prefix='0'/><ip family='ipv6' address='fd00:2::1'/>"
        )
    )
    assert [8, 16, 24, 64] == [ip.prefix for ip in n.ips]
    assert '<ip address="10.2.0.1" prefix="8"/>' in format_network(n)


def test_ipv6_without_family_is_stored_with_it() -> None:
    """libvirt needs family='ipv6' on an IPv6 <ip> and <route>; the codec writes it."""
    n = parse_network(
        net(
            ip="<ip address='fd00::1' prefix='64'/>"
            "<route address='fd01::' prefix='64' gateway='fd00::9'/>"
        )
    )
    assert ("ipv6", "ipv6") == (n.ips[0].family, n.routes[0].family)
    text = format_network(n)
    assert 'family="ipv6" address="fd00::1"' in text
    assert 'family="ipv6" address="fd01::"' in text


def test_lease_units_and_infinity() -> None:
    """Minutes by default; 0 is infinite in any unit, stored in the default one."""
    n = parse_network(
        net(
            ip="<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.5' end='10.0.0.9'><lease expiry='3'/></range>"
            "<host name='a' ip='10.0.0.20'><lease expiry='0' unit='hours'/></host>"
            "</dhcp></ip>"
        )
    )
    rng, host = n.ips[0].dhcp_ranges[0], n.ips[0].dhcp_hosts[0]
    assert (DhcpLease(3), 180, DhcpLease(0), None) == (
        rng.lease,
        rng.lease.seconds if rng.lease else 0,
        host.lease,
        host.lease.seconds if host.lease else 0,
    )


def test_foreign_metadata_is_kept_verbatim_beside_autostart() -> None:
    foreign = '<app:x xmlns:app="http://example.org/a" k="v">\n   text <app:y/>\n</app:x>'
    doc = net(
        f"<metadata xmlns:vsv='https://vsupervisor.dev/xmlns/domain/1'><vsv:autostart/>"
        f"{foreign}</metadata>"
    )
    n = parse_network(doc)
    again = parse_network(format_network(n))
    assert ((foreign,), True, n) == (n.metadata, n.autostart, again)


def test_model_rules_without_xml() -> None:
    """A model built in code meets the same rules (the ones XML cannot even express too)."""
    base = parse_network(net())
    cases = {
        "domain/@localOnly": attrs.evolve(base, domain_local_only=True),
        "ip[1]/@prefix": attrs.evolve(base, ips=(NetworkIp("10.0.0.1", 0),)),
        "forward/nat/address[1]/lease": attrs.evolve(
            base,
            forward=Forward(nat_addresses=(AddressRange("1.2.3.4", "1.2.3.5", DhcpLease(5)),)),
        ),
    }
    assert {k: [k] for k in cases} == {
        k: [p.split(": ", 1)[0] for p in check_network(v)] for k, v in cases.items()
    }
    assert [] == check_network(Network(name="iso"))
