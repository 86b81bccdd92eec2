"""Unit tests for the codec: units, dialect rules, unsupported content, libvirt documents."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidDocument
from supervisor.model import Domain, Forward, Network, TokenBucket
from supervisor.xml import UNITS, format_domain, parse_domain, parse_network

MINIMAL = "<domain type='{t}'><name>g</name><os><type>exe</type></os>{extra}</domain>"


def _domain(extra: str = "", t: str = "lxc") -> Domain:
    return parse_domain(MINIMAL.format(t=t, extra=extra))


def _problems(extra: str = "", t: str = "lxc") -> list[str]:
    with pytest.raises(InvalidDocument) as info:
        _domain(extra, t)
    return info.value.problems


@pytest.mark.parametrize(
    ("value", "unit", "kib"),
    [
        ("2048", "b", 2),
        ("1", "bytes", 1),
        ("3", "k", 3),
        ("3", "KiB", 3),
        ("1024", "KB", 1000),
        ("1", "M", 1024),
        ("1", "MiB", 1024),
        ("1", "MB", 977),
        ("1", "G", 1024**2),
        ("1", "GiB", 1024**2),
        ("1", "GB", 976563),
        ("1", "T", 1024**3),
        ("1", "TiB", 1024**3),
        ("1", "TB", 976562500),
        ("7", None, 7),
    ],
)
def test_memory_units_are_stored_in_kib(value: str, unit: str | None, kib: int) -> None:
    """Every libvirt unit converts to KiB (rounded up); no unit means KiB."""
    unit_attr = f" unit='{unit}'" if unit else ""
    assert kib == _domain(f"<memory{unit_attr}>{value}</memory>").memory_kib


def test_unit_table_is_the_documented_one() -> None:
    """The accepted units are exactly the documented ones."""
    expected = [
        "b",
        "bytes",
        "k",
        "KiB",
        "KB",
        "M",
        "MiB",
        "MB",
        "G",
        "GiB",
        "GB",
        "T",
        "TiB",
        "TB",
    ]
    assert expected == list(UNITS)


def test_xid_element_is_refused_with_hint() -> None:
    """<xid> gives an error pointing at the id attribute."""
    problems = _problems("<xid>5</xid>", t="vserver")
    assert (1, True) == (len(problems), "the id attribute" in problems[0])


def test_top_level_scheduler_refused_in_lxc() -> None:
    """The lxc dialect has no top-level <scheduler>; the error names the metadata form."""
    problems = _problems("<scheduler fill_rate1='1' interval1='4'/>")
    assert (1, True) == (len(problems), "vsv:scheduler" in problems[0])


def test_lxc_scheduler_lives_in_metadata() -> None:
    """An lxc document carries the token bucket as <vsv:scheduler> in <metadata>."""
    d = _domain(
        "<metadata xmlns:v='https://vsupervisor.dev/xmlns/domain/1'>"
        "<v:scheduler fill_rate1='1' interval1='4' idle_time='yes'/></metadata>"
    )
    assert TokenBucket(fill_rate=1, interval=4, idle_time=True) == d.scheduler


def test_vserver_interface_refused_in_lxc_document() -> None:
    """<interface type='vserver'> in an lxc document is refused with a clear message."""
    problems = _problems(
        "<devices><interface type='vserver'><ip address='10.0.0.2' prefix='24'/>"
        "</interface></devices>"
    )
    assert (1, True) == (len(problems), "only in the vserver dialect" in problems[0])


def test_unsupported_elements_are_named_not_dropped() -> None:
    """Unsupported elements and attributes are each reported by name."""
    problems = _problems(
        "<sysinfo type='smbios'/><devices><hostdev mode='capabilities'/></devices>"
        "<memory dumpCore='on'>1</memory>"
    )
    assert [True, True, True] == [
        any(s in p for p in problems)
        for s in (
            "unsupported element <sysinfo>",
            "unsupported element <hostdev>",
            "unsupported attribute 'dumpCore'",
        )
    ]


def test_uuid_accepted_without_dashes_stored_dashed_lower() -> None:
    """A UUID without dashes and in upper case is stored in canonical form."""
    d = _domain("<uuid>0123456789ABCDEF0123456789ABCDEF</uuid>")
    assert "01234567-89ab-cdef-0123-456789abcdef" == d.uuid


def test_virsh_dumpxml_style_document_is_accepted() -> None:
    """A libvirt-lxc document as virsh writes it (placement, arch, console) reads fine."""
    doc = """<domain type='lxc' id='4242'>
  <name>c1</name>
  <uuid>8b7d7e42-0a2c-4b7c-9d5a-1a2b3c4d5e6f</uuid>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <resource><partition>/machine</partition></resource>
  <os><type arch='x86_64'>exe</type><init>/sbin/init</init></os>
  <features><privnet/>
    <capabilities policy='default'><net_admin state='off'/></capabilities></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/srv/c1'/><target dir='/'/>
    </filesystem>
    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='virbr0'/></interface>
    <console type='pty'><target type='lxc' port='0'/></console>
  </devices>
</domain>"""
    d = parse_domain(doc)
    assert ("c1", 4242, 1, "/srv/c1", "virbr0", ("net_admin", False)) == (
        d.name,
        d.id,
        d.vcpu,
        d.root_dir,
        d.interfaces[0].source,
        d.capabilities.caps[0] if d.capabilities else None,
    )


def test_foreign_metadata_kept_verbatim() -> None:
    """Foreign metadata survives a round trip, including its inner whitespace."""
    foreign = '<app:x xmlns:app="http://example.org/a" k="v">\n   text <app:y/>\n</app:x>'
    d = _domain(f"<metadata>{foreign}</metadata>")
    again = parse_domain(format_domain(d))
    assert ((foreign,), (foreign,)) == (d.metadata, again.metadata)


def test_output_is_deterministic_two_space_indented() -> None:
    """format_domain writes a fixed order with two-space indentation."""
    expected = """<domain type="vserver" id="7">
  <name>g</name>
  <scheduler fill_rate1="1" interval1="4"/>
  <os>
    <type>exe</type>
    <init>/sbin/init</init>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
</domain>
"""
    d = Domain(name="g", id=7, scheduler=TokenBucket(fill_rate=1, interval=4))
    assert expected == format_domain(d)


def test_network_forward_without_mode_is_nat_and_absent_is_isolated() -> None:
    """<forward/> means NAT; no <forward> means isolated."""
    ip = "<ip address='10.1.0.1' prefix='24'/>"  # libvirt forwards only a network with one
    nat = parse_network(f"<network><name>n</name><forward/>{ip}</network>")
    iso = parse_network("<network><name>n</name></network>")
    assert (Forward(mode="nat"), None) == (nat.forward, iso.forward)


def test_network_netmask_becomes_prefix() -> None:
    """<ip netmask=> is stored as a prefix length."""
    n = parse_network(
        "<network><name>n</name><ip address='10.1.0.1' netmask='255.255.0.0'/></network>"
    )
    assert 16 == n.ips[0].prefix


def test_network_with_unsupported_element() -> None:
    """A network element the model cannot hold is reported by name."""
    with pytest.raises(InvalidDocument) as info:
        parse_network("<network><name>n</name><portgroup name='x'/></network>")
    assert 1 == len([p for p in info.value.problems if "<portgroup>" in p])


def test_network_autostart_in_metadata() -> None:
    """Network autostart round-trips through <metadata><vsv:autostart/>."""
    n = Network(name="n", autostart=True)
    from supervisor.xml import format_network

    assert n == parse_network(format_network(n))


def test_integers_reject_python_only_syntax() -> None:
    """'1_000' and '+5' are not XML integers even though int() accepts them."""
    problems = _problems("<vcpu>1_000</vcpu><cputune><shares>+5</shares></cputune>")
    assert 2 == len([p for p in problems if "is not an integer" in p])


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [("<vcpu> 2 </vcpu>", 2), ("<vcpu placement='static'>3</vcpu>", 3)],
)
def test_integers_may_have_blanks_around_them(fragment: str, expected: int) -> None:
    """An integer with blanks around it reads as the number; placement='static' is accepted."""
    assert expected == _domain(fragment).vcpu


def test_hex_integer_is_refused() -> None:
    """'0x3' is not a decimal integer, and the message says what is allowed."""
    expected = ["1: vcpu: value '0x3' is not an integer: allowed decimal digits"]
    assert expected == _problems("<vcpu>0x3</vcpu>")


def test_problems_are_listed_in_line_order_with_path() -> None:
    """Every problem of a document comes once, as PATH:LINE: where: message, in line order."""
    text = (
        "<domain type='vserver' id='1'>\n  <name>a b</name>\n  <vcpu>x</vcpu>\n"
        "  <os><type>exe</type></os>\n</domain>\n"
    )
    expected = [
        "f.xml:1: domain/@id: value '1' is out of range: allowed 2..49151",
        "f.xml:2: name: value 'a b' contains '/', whitespace or control characters: allowed "
        "1..64 bytes without '/', whitespace or control characters, not starting with '.' or '-'",
        "f.xml:3: vcpu: value 'x' is not an integer: allowed decimal digits",
    ]
    with pytest.raises(InvalidDocument) as info:
        parse_domain(text, path="f.xml")
    assert expected == info.value.problems
