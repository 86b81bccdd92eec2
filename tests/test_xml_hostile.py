"""Hostile input: the parser loads nothing, expands nothing, and fails fast with clear errors."""

from __future__ import annotations

import time

import pytest

from supervisor.errors import InvalidDocument
from supervisor.xml import MAX_DOCUMENT_BYTES, parse_document, parse_domain

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
