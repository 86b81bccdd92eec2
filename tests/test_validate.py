"""Unit tests for each validation rule, on models built without XML and through the codec."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import InvalidDocument
from supervisor.model import (
    AddressRange,
    BlkioDevice,
    BlkioTune,
    Capabilities,
    Console,
    CpuBucket,
    CpuTune,
    DhcpHost,
    DnsHost,
    Domain,
    Filesystem,
    Forward,
    IdMapEntry,
    Interface,
    IpAddress,
    MemTune,
    Network,
    NetworkIp,
    OsSpec,
    PortRange,
    Route,
    SecLabel,
    SharedNamespace,
    TokenBucket,
)
from supervisor.validate import check_domain, check_network
from supervisor.xml import format_domain, parse_domain, parse_network
from tests.strategies import domains

BASE = Domain(name="ok", type="vserver")
NET = Network(name="net", ips=(NetworkIp(address="10.0.0.1", prefix=24),))


def _wheres(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


def test_valid_domain_and_network_have_no_problems() -> None:
    """The baseline models are valid, so each case below fails only for its own reason."""
    assert ([], []) == (check_domain(BASE), check_network(NET))


def test_message_format_names_element_value_and_allowed() -> None:
    """A message reads '<element>/@attr: value 'x' ...: allowed ...'."""
    expected = ["domain/@id: value '1' is out of range: allowed 2..49151"]
    assert expected == check_domain(attrs.evolve(BASE, id=1))


def _iface(**kw: Any) -> Interface:
    fields: dict[str, Any] = {"type": "network", "source": "net"}
    fields.update(kw)
    return Interface(**fields)


DOMAIN_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("empty name", {"name": ""}, "name"),
    ("slash in name", {"name": "a/b"}, "name"),
    ("leading dot", {"name": ".a"}, "name"),
    ("leading dash", {"name": "-a"}, "name"),
    ("space in name", {"name": "a b"}, "name"),
    ("control char in name", {"name": "a\x01"}, "name"),
    ("long name", {"name": "x" * 65}, "name"),
    ("id low", {"id": 1}, "domain/@id"),
    ("id high", {"id": 49152}, "domain/@id"),
    ("uuid not canonical", {"uuid": "ABC"}, "uuid"),
    ("zero memory", {"memory_kib": 0}, "memory"),
    ("current above memory", {"memory_kib": 10, "current_memory_kib": 11}, "currentMemory"),
    ("vcpu zero", {"vcpu": 0}, "vcpu"),
    ("pids zero", {"pids_limit": 0}, "metadata/vsv:pids/@max"),
    ("bad hostname", {"hostname": "-x"}, "metadata/vsv:hostname"),
    ("relative init", {"os": OsSpec(init="sbin/init")}, "os/init"),
    ("bad env name", {"os": OsSpec(initenv=(("1A", "x"),))}, "os/initenv[1]/@name"),
    ("user without group", {"os": OsSpec(inituser="root")}, "os/inituser"),
    ("shares low", {"cputune": CpuTune(shares=1)}, "cputune/shares"),
    ("shares high", {"cputune": CpuTune(shares=262145)}, "cputune/shares"),
    ("period low", {"cputune": CpuTune(period=999)}, "cputune/period"),
    ("period high", {"cputune": CpuTune(period=1000001)}, "cputune/period"),
    ("quota small", {"cputune": CpuTune(quota=999)}, "cputune/quota"),
    ("memtune zero", {"memtune": MemTune(hard_limit_kib=0)}, "memtune/hard_limit"),
    ("interval zero", {"scheduler": TokenBucket(interval=0)}, "scheduler/@interval1"),
    ("fill negative", {"scheduler": TokenBucket(fill_rate=-1)}, "scheduler/@fill_rate1"),
    (
        "min above max",
        {"scheduler": TokenBucket(tokens_min=5, tokens_max=4)},
        "scheduler/@tokens_min",
    ),
    ("interval2 zero", {"scheduler": TokenBucket(interval2=0)}, "scheduler/@interval2"),
    (
        "cpu interval zero",
        {"scheduler": TokenBucket(cpus=(CpuBucket(0, interval=0),))},
        "scheduler/cpu[1]/@interval1",
    ),
    (
        "cpu twice",
        {"scheduler": TokenBucket(cpus=(CpuBucket(0), CpuBucket(0)))},
        "scheduler/cpu[2]/@id",
    ),
    ("bad lifecycle", {"on_crash": "explode"}, "on_crash"),
    (
        "unknown cap",
        {"capabilities": Capabilities(caps=(("fly", True),))},
        "features/capabilities/fly",
    ),
    (
        "idmap count zero",
        {"idmap": (IdMapEntry("uid", 0, 1000, 0), IdMapEntry("gid", 0, 1000, 1))},
        "idmap/uid[1]/@count",
    ),
    ("idmap without root's gid", {"idmap": (IdMapEntry("uid", 0, 1000, 10),)}, "idmap"),
    (
        "relative fs source",
        {"filesystems": (Filesystem(source="x", target="/"),)},
        "devices/filesystem[1]/source/@dir",
    ),
    (
        "ram without usage",
        {"filesystems": (Filesystem(source="", target="/t", type="ram"),)},
        "devices/filesystem[1]/source/@usage",
    ),
    (
        "same target twice",
        {"filesystems": (Filesystem(source="/a", target="/"), Filesystem(source="/b", target="/"))},
        "devices/filesystem[2]/target/@dir",
    ),
    (
        "multicast mac",
        {"interfaces": (_iface(mac="01:00:00:00:00:01"),)},
        "devices/interface[1]/mac/@address",
    ),
    (
        "fe mac",
        {"interfaces": (_iface(mac="fe:00:00:00:00:01"),)},
        "devices/interface[1]/mac/@address",
    ),
    (
        "malformed mac",
        {"interfaces": (_iface(mac="00:11:22:33:44"),)},
        "devices/interface[1]/mac/@address",
    ),
    (
        "long target dev",
        {"interfaces": (_iface(target_dev="x" * 16),)},
        "devices/interface[1]/target/@dev",
    ),
    (
        "slash guest dev",
        {"interfaces": (_iface(guest_dev="a/b"),)},
        "devices/interface[1]/guest/@dev",
    ),
    (
        "space bridge",
        {"interfaces": (_iface(type="bridge", source="br 0"),)},
        "devices/interface[1]/source/@bridge",
    ),
    (
        "network without source",
        {"interfaces": (_iface(source=None),)},
        "devices/interface[1]/source/@network",
    ),
    (
        "bad ip",
        {"interfaces": (_iface(ips=(IpAddress("10.0.0.300"),)),)},
        "devices/interface[1]/ip[1]/@address",
    ),
    (
        "v4 prefix 33",
        {"interfaces": (_iface(ips=(IpAddress("10.0.0.1", 33),)),)},
        "devices/interface[1]/ip[1]/@prefix",
    ),
    (
        "family mismatch",
        {"interfaces": (_iface(ips=(IpAddress("::1", 64, "ipv4"),)),)},
        "devices/interface[1]/ip[1]/@family",
    ),
    (
        "route gateway family",
        {"interfaces": (_iface(routes=(Route("10.0.0.0", 8, "fe80::1"),)),)},
        "devices/interface[1]/route[1]/@gateway",
    ),
    ("mtu low", {"interfaces": (_iface(mtu=67),)}, "devices/interface[1]/mtu/@size"),
    (
        "vserver iface without ip",
        {"interfaces": (_iface(type="vserver", source=None),)},
        "devices/interface[1]/ip",
    ),
    (
        "same mac twice",
        {"interfaces": (_iface(mac="02:00:00:00:00:01"), _iface(mac="02:00:00:00:00:01"))},
        "devices/interface[2]/mac/@address",
    ),
]


@pytest.mark.parametrize(
    ("changes", "where"), [c[1:] for c in DOMAIN_CASES], ids=[c[0] for c in DOMAIN_CASES]
)
def test_domain_rule(changes: dict[str, Any], where: str) -> None:
    """Each broken domain rule yields exactly one problem at the right element/attribute."""
    assert [where] == _wheres(check_domain(attrs.evolve(BASE, **changes)))


def test_vserver_interface_refused_in_lxc_dialect() -> None:
    """IP isolation is a vserver-dialect feature; an lxc domain with it gets a clear message."""
    d = attrs.evolve(
        BASE,
        type="lxc",
        interfaces=(_iface(type="vserver", source=None, ips=(IpAddress("10.0.0.2"),)),),
    )
    problems = check_domain(d)
    assert (["devices/interface[1]/@type"], True) == (
        _wheres(problems),
        "only in the vserver dialect" in problems[0],
    )


def test_negative_quota_means_unlimited() -> None:
    """Any negative quota is accepted (unlimited) and the limits 1000 and 2^44-1 are inclusive."""
    ok = [CpuTune(quota=q) for q in (-1, -5, 1000, 17592186044415)]
    assert [[], [], [], []] == [check_domain(attrs.evolve(BASE, cputune=c)) for c in ok]


NETWORK_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("bad name", {"name": "a/b"}, "name"),
    ("long bridge", {"bridge": attrs.evolve(NET.bridge, name="b" * 16)}, "bridge/@name"),
    ("multicast mac", {"mac": "03:00:00:00:00:00"}, "mac/@address"),
    ("mtu high", {"mtu": 65536}, "mtu/@size"),
    ("bad forward mode", {"forward": Forward(mode="teleport")}, "forward/@mode"),  # type: ignore[arg-type]
    ("nat on route", {"forward": Forward(mode="route", nat_ports=PortRange(1, 2))}, "forward/nat"),
    ("port order", {"forward": Forward(nat_ports=PortRange(10, 9))}, "forward/nat/port/@end"),
    (
        "nat v6",
        {"forward": Forward(nat_addresses=(AddressRange("::1", "10.0.0.2"),))},
        "forward/nat/address[1]/@start",
    ),
    ("prefix 33", {"ips": (NetworkIp("10.0.0.1", 33),)}, "ip[1]/@prefix"),
    ("family mismatch", {"ips": (NetworkIp("10.0.0.1", 24, "ipv6"),)}, "ip[1]/@family"),
    (
        "range reversed",
        {"ips": (NetworkIp("10.0.0.1", 24, dhcp_ranges=(AddressRange("10.0.0.9", "10.0.0.5"),)),)},
        "ip[1]/dhcp/range[1]/@end",
    ),
    (
        "range outside",
        {"ips": (NetworkIp("10.0.0.1", 24, dhcp_ranges=(AddressRange("10.0.0.5", "10.0.1.5"),)),)},
        "ip[1]/dhcp/range[1]/@end",
    ),
    (
        "host outside",
        {"ips": (NetworkIp("10.0.0.1", 24, dhcp_hosts=(DhcpHost("10.9.0.5", name="h"),)),)},
        "ip[1]/dhcp/host[1]/@ip",
    ),
    (
        "host without mac or name",
        {"ips": (NetworkIp("10.0.0.1", 24, dhcp_hosts=(DhcpHost("10.0.0.5"),)),)},
        "ip[1]/dhcp/host[1]",
    ),
    ("dns hostname", {"dns_hosts": (DnsHost("10.0.0.5", ("a b",)),)}, "dns/host[1]/hostname[1]"),
    ("route prefix", {"routes": (Route("10.0.0.0", 40, "10.0.0.1"),)}, "route[1]/@prefix"),
]


@pytest.mark.parametrize(
    ("changes", "where"), [c[1:] for c in NETWORK_CASES], ids=[c[0] for c in NETWORK_CASES]
)
def test_network_rule(changes: dict[str, Any], where: str) -> None:
    """Each broken network rule yields exactly one problem at the right element/attribute."""
    assert [where] == _wheres(check_network(attrs.evolve(NET, **changes)))


def test_codec_reports_all_problems_with_lines() -> None:
    """A document with several problems gets all of them, each with its file and line."""
    doc = """<domain type='vserver' id='1'>
  <name>x</name>
  <cputune><shares>1</shares></cputune>
  <os><type>exe</type></os>
  <devices>
    <interface type='network'>
      <source network='n'/>
      <mac address='01:00:00:00:00:00'/>
    </interface>
  </devices>
</domain>"""
    with pytest.raises(InvalidDocument) as info:
        parse_domain(doc, path="g.xml")
    assert ["g.xml:1", "g.xml:3", "g.xml:8"] == [p.split(": ", 1)[0] for p in info.value.problems]


def test_codec_message_without_path_starts_with_line() -> None:
    """Without a path a problem reads 'LINE: message'."""
    doc = "<network>\n  <name>n</name>\n  <mtu size='10'/>\n</network>"
    with pytest.raises(InvalidDocument) as info:
        parse_network(doc)
    assert ["3: mtu/@size: value '10' is out of range: allowed 68..65535"] == info.value.problems


# --- a model the rules pass can be stored: written and read back unchanged ------------------

_INTS = st.sampled_from(
    [-(2**44), -1, 0, 1, 2, 67, 68, 999, 1000, 49151, 49152, 65535, 65536, 262145, 2**32, 2**44]
)
_STRS = st.sampled_from(
    [
        "", ".", "..", "-x", ".x", "a/b", "a b", "a:b", "a\x01", "a\r", "a\nb", "x" * 16,
        "x" * 65, "/", "//", "/a", "a", "ok", "eth0", "10.0.0.1", "10.0.0.300", "::1",
        "fe80::1", "0.0.0.0", "01:00:00:00:00:01", "fe:00:00:00:00:01", "02:00:00:00:00:01",
        "02:00:00:00:00:0G", "ipv4", "ipv6", "uid", "gid", "bogus", "restart", "mount", "ram",
        "network", "bridge", "ethernet", "vserver", "lxc", "chown", "allow", "a" * 64 + ".b",
    ]
)  # fmt: skip
_OPT_INTS = st.none() | _INTS
_OPT_STRS = st.none() | _STRS

#: (path into the model, values): ``*`` picks one item of a tuple.
_DAMAGE: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    *[((f,), _STRS) for f in ("name", "type", "on_poweroff", "on_reboot", "on_crash")],
    *[((f,), _OPT_STRS) for f in ("uuid", "title", "description", "hostname", "partition")],
    *[((f,), _OPT_INTS) for f in ("id", "memory_kib", "current_memory_kib", "vcpu", "pids_limit")],
    (("os", "init"), _STRS),
    *[(("os", f), _OPT_STRS) for f in ("initdir", "inituser", "initgroup", "arch")],
    *[((f,), _OPT_STRS) for f in ("vcpu_placement", "cpuset", "clock_offset", "emulator")],
    (("vcpu_current",), _OPT_INTS),
    (
        ("shared_namespaces",),
        st.lists(st.builds(SharedNamespace, _STRS, _STRS, _STRS), max_size=2).map(tuple),
    ),
    (
        ("blkiotune",),
        st.builds(
            BlkioTune,
            _OPT_INTS,
            st.lists(st.builds(BlkioDevice, _STRS, _OPT_INTS, _OPT_INTS), max_size=2).map(tuple),
        ),
    ),
    (
        ("consoles",),
        st.lists(st.builds(Console, _STRS, _OPT_STRS, _OPT_STRS), max_size=2).map(tuple),
    ),
    *[(("consoles", "*", f), _OPT_STRS) for f in ("target_type", "alias")],
    (("consoles", "*", "target_port"), _OPT_INTS),
    (("seclabels",), st.lists(st.builds(SecLabel, _STRS, _OPT_STRS), max_size=2).map(tuple)),
    (("seclabels", "*", "relabel"), st.sampled_from((None, False, True))),
    *[(("filesystems", "*", f), _OPT_STRS) for f in ("accessmode", "alias")],
    *[(("interfaces", "*", f), _OPT_STRS) for f in ("source_bridge", "portid", "alias")],
    (("os", "initargs"), st.lists(_STRS, max_size=2).map(tuple)),
    (("os", "initenv"), st.lists(st.tuples(_STRS, _STRS), max_size=2).map(tuple)),
    (("cputune",), st.builds(CpuTune, _OPT_INTS, _OPT_INTS, _OPT_INTS)),
    (("memtune",), st.builds(MemTune, _OPT_INTS, _OPT_INTS, _OPT_INTS)),
    (
        ("scheduler",),
        st.builds(
            TokenBucket,
            fill_rate=_OPT_INTS,
            interval=_OPT_INTS,
            tokens=_OPT_INTS,
            tokens_min=_OPT_INTS,
            tokens_max=_OPT_INTS,
            fill_rate2=_OPT_INTS,
            interval2=_OPT_INTS,
            cpus=st.lists(
                st.builds(CpuBucket, _INTS, _OPT_INTS, _OPT_INTS, st.none(), _OPT_INTS, _OPT_INTS),
                max_size=2,
            ).map(tuple),
        ),
    ),
    (
        ("capabilities",),
        st.builds(
            Capabilities,
            caps=st.lists(st.tuples(_STRS, st.booleans()), max_size=3).map(tuple),
        ),
    ),
    (
        ("idmap",),
        st.lists(st.builds(IdMapEntry, _STRS, _INTS, _INTS, _INTS), max_size=2).map(tuple),
    ),
    *[(("filesystems", "*", f), _STRS) for f in ("source", "target", "type")],
    (("filesystems", "*", "usage_kib"), _OPT_INTS),
    (("filesystems",), st.lists(st.builds(Filesystem, _STRS, _STRS), max_size=3).map(tuple)),
    (("interfaces", "*", "type"), _STRS),
    *[(("interfaces", "*", f), _OPT_STRS) for f in ("source", "mac", "target_dev", "guest_dev")],
    (("interfaces", "*", "mtu"), _OPT_INTS),
    (("interfaces", "*", "ips", "*", "address"), _STRS),
    (("interfaces", "*", "ips", "*", "prefix"), _OPT_INTS),
    (("interfaces", "*", "ips", "*", "family"), _OPT_STRS),
    (("interfaces", "*", "ips"), st.just(())),
    *[(("interfaces", "*", "routes", "*", f), _STRS) for f in ("address", "gateway")],
    (("interfaces", "*", "routes", "*", "prefix"), _INTS),
    (("interfaces", "*", "routes", "*", "family"), _OPT_STRS),
    (("interfaces",), st.lists(st.builds(_iface, mac=_OPT_STRS), max_size=3).map(tuple)),
]


def _damage_at(draw: st.DrawFn, value: Any, path: tuple[str, ...], new: Any) -> Any:
    """``value`` with the part at ``path`` replaced by ``new`` (unchanged if there is none)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if head == "*":
        if not value:
            return value
        i = draw(st.integers(0, len(value) - 1))
        return (*value[:i], _damage_at(draw, value[i], rest, new), *value[i + 1 :])
    inner = getattr(value, head)
    if inner is None and rest:
        return value
    return attrs.evolve(value, **{head: _damage_at(draw, inner, rest, new)})


@st.composite
def _damaged_domains(draw: st.DrawFn) -> Domain:
    domain = draw(domains())
    for _ in range(draw(st.integers(1, 3))):
        path, values = draw(st.sampled_from(_DAMAGE))
        domain = _damage_at(draw, domain, path, draw(values))
    return domain


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged_domains())
def test_a_model_the_rules_pass_is_written_and_read_back_unchanged(domain: Domain) -> None:
    """A model with no problem (as the API accepts it) reads back equal from its stored XML."""
    if not check_domain(domain):
        assert domain == parse_domain(format_domain(domain))
