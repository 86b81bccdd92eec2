"""Hostile input: the parser loads nothing, expands nothing, and fails fast with clear errors.

Beside the attacks, documents the supervisor wrote are damaged at random (values on the edges of
the rules, stray text, comments, repeated, removed, renamed and foreign elements), and the codec
must either read one into a model it can store and read back, or refuse it with messages of the
documented form: never raise anything else.
"""

from __future__ import annotations

import copy
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from supervisor.errors import InvalidDocument
from supervisor.model import Domain
from supervisor.validate import check_domain
from supervisor.xml import MAX_DOCUMENT_BYTES, format_domain, parse_document, parse_domain
from supervisor.xml._reader import safe_parse
from tests.strategies import domains

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type="lxc"><name>&lol9;</name><os><type>exe</type></os></domain>
"""


def _problems(data: bytes | str, path: str | None = "evil.xml") -> list[str]:
    with pytest.raises(InvalidDocument) as info:
        parse_document(data, path=path)
    return info.value.problems


def test_billion_laughs_is_refused_quickly() -> None:
    """An entity bomb is refused as a DOCTYPE, in well under a second."""
    start = time.perf_counter()
    problems = _problems(BILLION_LAUGHS)
    elapsed = time.perf_counter() - start
    assert (1, True, True) == (
        len(problems),
        "DOCTYPE" in problems[0] and problems[0].startswith("evil.xml:2:"),
        elapsed < 1.0,
    )


def test_external_entity_content_never_appears() -> None:
    """An external entity naming /etc/passwd is refused and the file's content never leaks."""
    with open("/etc/passwd") as f:
        first_line = f.readline().strip()
    doc = (
        b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<domain type="lxc"><name>&xxe;</name><os><type>exe</type></os></domain>'
    )
    problems = _problems(doc)
    assert (True, False) == ("DOCTYPE" in problems[0], any(first_line in p for p in problems))


def test_doctype_in_utf16_is_refused_after_parsing() -> None:
    """A DOCTYPE hidden from the byte scan by UTF-16 is still refused (docinfo check)."""
    doc = '<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE domain>\n<domain type="lxc"/>'
    problems = _problems(doc.encode("utf-16"))
    assert (1, True) == (len(problems), "DOCTYPE" in problems[0])


def test_oversized_document_is_refused_before_parsing() -> None:
    """A 10 MB document is refused by size, naming the limit, without being parsed."""
    big = b'<domain type="lxc"><name>x</name><description>' + b"a" * (10 * 1024 * 1024)
    start = time.perf_counter()
    problems = _problems(big)
    elapsed = time.perf_counter() - start
    expected = f"allowed at most {MAX_DOCUMENT_BYTES} bytes"
    assert (1, True, True) == (len(problems), problems[0].endswith(expected), elapsed < 0.5)


def test_deep_nesting_gives_a_depth_error() -> None:
    """10,000 nested elements give a clear nesting error instead of a crash or a hang."""
    deep = b'<domain type="lxc">' + b"<a>" * 10000 + b"</a>" * 10000 + b"</domain>"
    problems = _problems(deep)
    assert (1, True) == (len(problems), "nesting is too deep" in problems[0])


def test_malformed_xml_names_line() -> None:
    """A syntax error is reported with the file and the line of the error."""
    problems = _problems(b'<domain type="lxc">\n<name>x</name>\n<os></domain>')
    assert (1, True) == (
        len(problems),
        problems[0].startswith("evil.xml:3: document: not well-formed"),
    )


def test_external_entity_reference_without_doctype_is_an_error() -> None:
    """An undeclared entity reference is a well-formedness error, not an empty string."""
    problems = _problems(b'<domain type="lxc"><name>&xxe;</name></domain>')
    assert (1, True) == (len(problems), "not well-formed" in problems[0])


def test_a_huge_integer_is_refused_by_name_in_a_short_message() -> None:
    """5,000 digits (beyond what int() accepts) is a clear error naming the field, and the
    message repeats only the start of the value."""
    digits = "9" * 5000
    doc = (
        f"<domain type='lxc'><name>big</name><memory>{digits}</memory>"
        "<os><type>exe</type><init>/bin/sh</init></os></domain>"
    )
    problems = _problems(doc)
    assert 1 == len(problems)
    assert problems[0].startswith("evil.xml:1: memory: value '9999")
    assert "is too long: allowed at most 64 digits" in problems[0]
    assert "(5000 characters)" in problems[0]
    assert len(problems[0]) < 250


def test_xinclude_is_not_processed() -> None:
    """An XInclude element is just an unsupported element; nothing is fetched."""
    doc = (
        b'<domain type="lxc" xmlns:xi="http://www.w3.org/2001/XInclude"><name>x</name>'
        b'<xi:include href="/etc/passwd" parse="text"/><os><type>exe</type></os></domain>'
    )
    problems = _problems(doc)
    assert (1, True) == (len(problems), "unsupported element <xi:include>" in problems[0])


def test_str_input_with_foreign_encoding_declaration() -> None:
    """A str is parsed as text whatever its XML declaration claims about encoding."""
    doc = (
        '<?xml version="1.0" encoding="ISO-8859-1"?><domain type="lxc"><name>ü</name>'
        "<os><type>exe</type></os></domain>"
    )
    assert "ü" == parse_domain(doc).name


# --- damaged documents --------------------------------------------------------------------

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
    "vcpu": ("placement", "current", "cpuset"),
    "pids": ("max",),
    "scheduler": ("fill_rate1", "interval1", "tokens", "tokens_min", "idle_time", "interval2"),
    "cpu": ("id", "fill_rate1", "interval1", "idle_time"),
    "filesystem": ("type", "accessmode"),
    "source": ("dir", "usage", "units", "network", "bridge", "dev", "portid", "path"),
    "target": ("dir", "dev", "type", "port"),
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
    "clock": ("offset",),
    "seclabel": ("type", "model", "relabel"),
    "alias": ("name",),
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
    "clock",
    "seclabel",
    "emulator",
    "alias",
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


#: A problem line; the quoted value in it may hold a line break (blanks around a number, say).
_PROBLEM = re.compile(r"damaged\.xml:(\d+): \S.*", re.DOTALL)


def _read(text: str) -> Domain | list[str]:
    """The model of a document, or its problems."""
    try:
        return parse_domain(text, path="damaged.xml")
    except InvalidDocument as exc:
        return exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged())
def test_damaged_document_is_read_or_refused_in_the_documented_form(root: etree._Element) -> None:
    """A damaged document gives a storable model, or PATH:LINE: problems in line order."""
    outcome = _read(etree.tostring(root, encoding="unicode"))
    if isinstance(outcome, Domain):
        assert ([], outcome) == (check_domain(outcome), parse_domain(format_domain(outcome)))
    else:
        matches = [_PROBLEM.fullmatch(p) for p in outcome]
        lines = [int(m.group(1)) for m in matches if m is not None]
        assert (True, len(outcome), sorted(lines)) == (bool(outcome), len(lines), lines)
