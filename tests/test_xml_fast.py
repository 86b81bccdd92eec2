"""The fast domain reader changes speed only: it returns what the full reader returns, or gives up.

``supervisor.xml._fast.try_read_domain`` may return a model only when the full, reporting reader
(``supervisor.xml.domain.read_domain``) returns an equal model without a problem. These tests
check that on generated documents and on generated damage to them, and that the fast path really
is taken for the documents the supervisor writes itself (so the tests cannot pass by giving up).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from supervisor.errors import InvalidDocument
from supervisor.model import Domain
from supervisor.xml import format_domain, parse_domain
from supervisor.xml._fast import try_read_domain
from supervisor.xml._reader import safe_parse
from supervisor.xml.domain import read_domain
from tests.strategies import domains

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Values that sit on the edges of the reader's rules (numbers, units, choices, addresses...).
_VALUES = [
    "",
    " ",
    "0",
    "1",
    " 7 ",
    "-1",
    "+3",
    "007",
    "1.5",
    "\u0661",
    "\uff12",
    "9" * 25,
    "x",
    "yes",
    "no",
    "on",
    "off",
    "up",
    "down",
    "KiB",
    "MB",
    "k",
    "parsec",
    "mount",
    "ram",
    "pty",
    "static",
    "passthrough",
    "ipv4",
    "ipv6",
    "network",
    "bridge",
    "ethernet",
    "vserver",
    "lxc",
    "10.0.0.1",
    "10.0.0.0",
    "::1",
    "255.255.255.0",
    "255.0.255.0",
    "/",
    "/srv",
    "rel/path",
    "destroy",
    "allow",
    "chown",
    "AA:BB:CC:DD:EE:01",
    "01:00:5e:00:00:01",
    "eth0",
    "a b",
    "00000000-0000-0000-0000-00000000000A",
]
_ATTRS = [
    "type",
    "id",
    "unit",
    "units",
    "usage",
    "dir",
    "placement",
    "name",
    "arch",
    "max",
    "fill_rate1",
    "interval1",
    "tokens",
    "tokens_min",
    "tokens_max",
    "prio_bias",
    "idle_time",
    "fill_rate2",
    "interval2",
    "start",
    "target",
    "count",
    "policy",
    "state",
    "accessmode",
    "tty",
    "network",
    "bridge",
    "dev",
    "address",
    "prefix",
    "family",
    "netmask",
    "gateway",
    "size",
    "bogus",
]
#: The attributes each element may have, so that damage often hits a rule rather than a name.
_ATTRS_OF = {
    "domain": ("type", "id"),
    "memory": ("unit",),
    "vcpu": ("placement",),
    "pids": ("max",),
    "scheduler": ("fill_rate1", "interval1", "tokens", "tokens_min", "idle_time", "interval2"),
    "cpu": ("id", "fill_rate1", "interval1", "idle_time"),
    "filesystem": ("type", "accessmode"),
    "source": ("dir", "usage", "units", "network", "bridge", "dev"),
    "target": ("dir", "dev"),
    "interface": ("type",),
    "ip": ("address", "prefix", "family"),
    "route": ("address", "prefix", "netmask", "gateway", "family"),
    "initenv": ("name",),
    "type": ("arch",),
    "capabilities": ("policy",),
    "uid": ("start", "target", "count"),
    "gid": ("start", "target", "count"),
    "console": ("type", "tty"),
    "mac": ("address",),
    "mtu": ("size",),
    "link": ("state",),
}
_TAGS = [
    "name",
    "uuid",
    "title",
    "memory",
    "vcpu",
    "scheduler",
    "cpu",
    "os",
    "type",
    "init",
    "initarg",
    "initenv",
    "initdir",
    "inituser",
    "privnet",
    "capabilities",
    "devices",
    "filesystem",
    "interface",
    "source",
    "target",
    "readonly",
    "ip",
    "route",
    "mac",
    "mtu",
    "link",
    "console",
    "partition",
    "uid",
    "gid",
    "shares",
    "hard_limit",
    "on_reboot",
    "xid",
    "{https://vsupervisor.dev/xmlns/domain/1}pids",
    "{https://vsupervisor.dev/xmlns/domain/1}scheduler",
    "{https://vsupervisor.dev/xmlns/domain/1}cpu",
    "{urn:x}foreign",
]


def _full(root: etree._Element, path: str | None = None) -> Domain | InvalidDocument:
    """What the full reader makes of a tree: the model or the error."""
    try:
        return read_domain(root, path)
    except InvalidDocument as exc:
        return exc


def _check(root: etree._Element) -> None:
    """The fast reader gives up, or returns exactly the full reader's model."""
    fast = try_read_domain(copy.deepcopy(root))
    if fast is not None:
        assert _full(root) == fast


@st.composite
def _damaged(draw: st.DrawFn) -> etree._Element:
    """A document the supervisor wrote, with one to three random changes."""
    root = safe_parse(format_domain(draw(domains())), path=None)
    for _ in range(draw(st.integers(1, 3))):
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        el = draw(st.sampled_from(elements))
        action = draw(
            st.sampled_from(
                ["set", "del-attr", "text", "tail", "remove", "repeat", "add", "comment", "tag"]
            )
        )
        if action == "set":
            names = [*el.keys(), *_ATTRS_OF.get(str(el.tag).rpartition("}")[2], ())]
            name = draw(st.sampled_from(names or _ATTRS) | st.sampled_from(_ATTRS))
            el.set(name, draw(st.sampled_from(_VALUES)))
        elif action == "del-attr" and el.keys():
            del el.attrib[draw(st.sampled_from(el.keys()))]
        elif action == "text":
            el.text = draw(st.sampled_from(_VALUES))
        elif action == "tail" and el is not root:
            el.tail = draw(st.sampled_from(["\n  ", "x", " ", "\n"]))
        elif action == "remove" and el is not root:
            parent = el.getparent()
            assert parent is not None
            parent.remove(el)
        elif action == "repeat" and el is not root:
            el.addnext(copy.deepcopy(el))
        elif action == "add":
            child = etree.SubElement(el, draw(st.sampled_from(_TAGS)))
            if draw(st.booleans()):
                child.set(draw(st.sampled_from(_ATTRS)), draw(st.sampled_from(_VALUES)))
        elif action == "comment":
            el.insert(draw(st.integers(0, len(el))), etree.Comment(" c "))
        elif action == "tag" and el is not root:
            el.tag = draw(st.sampled_from(_TAGS))
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains())
def test_fast_reader_takes_and_matches_written_documents(domain: Domain) -> None:
    """A document the supervisor wrote is read by the fast path into the same model."""
    root = safe_parse(format_domain(domain), path=None)
    assert read_domain(root, None) == try_read_domain(root)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged())
def test_fast_reader_never_accepts_what_the_full_reader_would_not(root: etree._Element) -> None:
    """On damaged documents the fast path gives up or agrees with the full reader exactly."""
    _check(root)


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in EXAMPLES.glob("*.xml") if b"<domain" in p.read_bytes()[:400]),
)
def test_fast_reader_takes_the_examples(name: str) -> None:
    """Every example domain, as written by the supervisor, goes through the fast path."""
    data = (EXAMPLES / name).read_bytes()
    assert safe_parse(data, path=None).tag == "domain"
    stored = safe_parse(format_domain(parse_domain(data)), path=None)
    assert read_domain(stored, None) == try_read_domain(stored)


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [("<vcpu> 2 </vcpu>", 2), ("<vcpu placement='static'>3</vcpu>", 3), ("<vcpu>0x3</vcpu>", None)],
)
def test_fast_reader_reads_integers_as_the_full_reader(fragment: str, expected: int | None) -> None:
    """Blanks around an integer are read alike on both paths; a non-decimal one is left alone."""
    root = safe_parse(
        f"<domain type='lxc'><name>a</name>{fragment}<os><type>exe</type></os></domain>",
        path=None,
    )
    fast = try_read_domain(root)
    assert expected == (None if fast is None else fast.vcpu)
    _check(root)


def test_public_parse_reports_the_full_readers_problems() -> None:
    """parse_domain on a broken document raises the full reader's message list unchanged."""
    text = (
        "<domain type='vserver' id='1'>\n  <name>a b</name>\n  <vcpu>x</vcpu>\n"
        "  <os><type>exe</type></os>\n</domain>\n"
    )
    expected = _full(safe_parse(text, path="f.xml"), "f.xml")
    with pytest.raises(InvalidDocument) as info:
        parse_domain(text, path="f.xml")
    assert str(expected) == str(info.value)
