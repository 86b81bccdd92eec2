"""`vsv format` on network documents, against what libvirt 9 writes for the same input.

``tests/data/network-format/in/NAME.xml`` is a network document as a user writes it, and
``out/NAME.xml`` is what libvirt's ``virNetworkDefFormat`` writes after reading it (libvirt's own
networkxml2xmlin/out tests are built the same way; these documents are this project's). For each
pair the supervisor's output must

- validate against libvirt's ``network.rng``;
- be equal in meaning to libvirt's output: both are read the way libvirt reads a network
  (:func:`meaning` fills in libvirt's defaults and folds its equivalent spellings), then compared
  element by element and attribute by attribute. The order of different elements does not matter
  (the schema interleaves them), the order of elements of one kind does (``<ip>`` order, DNS
  forwarder order, DHCP hosts...);
- read back to the same model, and so be stable.

What libvirt fills in that `vsv format` leaves alone, and why the comparison allows it:

- ``<bridge stp='on' delay='0'>`` on networks whose bridge libvirt makes: libvirt's defaults, so
  a document without them means the same to libvirt (the supervisor *applies* STP off unless
  asked, a documented difference: docs/networking.md);
- the bridge ``<mac>`` libvirt generates at define for such a network when the input has none
  (``52:54:00:00:00:00`` in these outputs, as libvirt's tests mock its random source): `vsv
  format` writes no invented value, and ``net-define`` adds one derived from the network's uuid.
  The comparison leaves out a ``<mac>`` of the expected output exactly when the input has none.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

from supervisor.errors import InvalidDocument
from supervisor.xml import format_network, parse_network
from supervisor.xml.domain import natural_prefix

DATA = Path(__file__).resolve().parent / "data" / "network-format"
#: ../shared beside the repo; VSV_SHARED names it for a checkout elsewhere (a git worktree)
LIBVIRT_SCHEMAS = (
    Path(os.environ.get("VSV_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    / "schemas"
    / "libvirt"
)
PAIRS = sorted(p.stem for p in (DATA / "in").glob("*.xml"))

needs_libvirt_schemas = pytest.mark.skipif(
    not LIBVIRT_SCHEMAS.is_dir(),
    reason=f"libvirt's RelaxNG schemas are not at {LIBVIRT_SCHEMAS} (../shared from the repo)",
)

#: modes whose bridge libvirt makes: it writes stp and delay for them, with these defaults
_OWN_BRIDGE = (None, "nat", "route", "open")


@cache
def _network_rng() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(LIBVIRT_SCHEMAS / "network.rng")))


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip()))


def _prefix(el: etree._Element, address: str) -> str:
    """The prefix libvirt uses: prefix (above 0), else netmask, else the natural one."""
    prefix = el.get("prefix")
    if prefix is not None and int(prefix) > 0:
        return str(int(prefix))
    netmask = el.get("netmask")
    if netmask is not None:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen)
    return str(natural_prefix(address))


def _attr(el: etree._Element | None, name: str, default: str | None = None) -> str | None:
    return default if el is None else el.get(name, default)


def _family(address: str) -> str:
    return "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4"


def _node(
    tag: str, children: list[etree._Element] | None = None, /, **attrs: str | None
) -> etree._Element:
    el = etree.Element(tag, {k: v for k, v in attrs.items() if v is not None})
    for child in sorted(children or [], key=lambda c: str(c.tag)):  # stable: kinds interleave
        el.append(child)
    return el


def _lease(parent: etree._Element) -> list[etree._Element]:
    lease = parent.find("lease")
    if lease is None:
        return []
    expiry = int(lease.get("expiry", "0"))
    unit = lease.get("unit", "minutes") if expiry else None  # 0 is infinite, in any unit
    return [_node("lease", expiry=str(expiry), unit=unit)]


def _dhcp(dhcp: etree._Element | None) -> list[etree._Element]:
    if dhcp is None:
        return []
    out = []
    for child in dhcp:
        if child.tag == "range":
            out.append(
                _node(
                    "range",
                    _lease(child),
                    start=_ip(child.get("start", "")),
                    end=_ip(child.get("end", "")),
                )
            )
        elif child.tag == "host":
            mac, hid = child.get("mac"), child.get("id")
            out.append(
                _node(
                    "host",
                    _lease(child),
                    mac=mac.lower() if mac else None,
                    id=hid.lower() if hid else None,
                    name=child.get("name"),
                    ip=_ip(child.get("ip", "")),
                )
            )
        elif child.tag == "bootp":
            server = child.get("server")
            out.append(
                _node("bootp", file=child.get("file"), server=_ip(server) if server else None)
            )
    return [_node("dhcp", out)] if out else []  # an empty <dhcp/> is no DHCP


def _dns(dns: etree._Element | None) -> etree._Element:
    out = []
    for child in dns if dns is not None else []:
        if child.tag == "forwarder":
            addr = child.get("addr")
            out.append(
                _node("forwarder", domain=child.get("domain"), addr=_ip(addr) if addr else None)
            )
        elif child.tag == "txt":
            out.append(_node("txt", name=child.get("name"), value=child.get("value")))
        elif child.tag == "srv":
            numbers = {a: child.get(a) for a in ("port", "priority", "weight")}
            out.append(
                _node(
                    "srv",
                    service=child.get("service"),
                    protocol=child.get("protocol"),
                    domain=child.get("domain"),
                    target=child.get("target"),
                    # libvirt writes none of them when 0 (RFC 2782's "unset")
                    **{a: v for a, v in numbers.items() if v is not None and int(v) != 0},
                )
            )
        elif child.tag == "host":
            names = [_node("hostname") for _ in child.findall("hostname")]
            for el, hn in zip(names, child.findall("hostname"), strict=True):
                el.text = (hn.text or "").strip()
            host = _node("host", ip=_ip(child.get("ip", "")))
            host.extend(names)  # hostnames keep their order
            out.append(host)
    return _node(
        "dns",
        out,
        enable=_attr(dns, "enable", "yes"),
        forwardPlainNames=_attr(dns, "forwardPlainNames", "yes"),
    )


def meaning(text: str, *, generated_mac: bool = False) -> etree._Element:
    """A network document as libvirt reads it: defaults filled in, spellings folded.

    The result is a tree in a fixed shape: every attribute libvirt defaults is present, addresses
    are canonical, netmasks and missing prefixes are prefixes, ``<forward dev>`` is the first of
    the forward devices, and the children of an element are grouped by kind (in their order).
    ``generated_mac``: the document's ``<mac>`` is one libvirt generated, left out.
    """
    root = etree.fromstring(text.encode())
    fwd = root.find("forward")
    mode = None if fwd is None else fwd.get("mode", "nat")
    top: list[etree._Element] = []
    for tag in ("name", "uuid"):
        el = root.find(tag)
        if el is not None:
            node = _node(tag)
            text = (el.text or "").strip()
            node.text = text if tag == "name" else text.lower()
            top.append(node)
    metadata = root.find("metadata")
    if metadata is not None:
        items = []
        for child in metadata:
            if isinstance(child.tag, str) and not child.tag.startswith("{https://vsupervisor"):
                item = _node("item")
                item.text = etree.tostring(child, method="c14n").decode()
                items.append(item)
        if items:
            meta = _node("metadata")
            meta.extend(items)
            top.append(meta)
    if fwd is not None:
        # libvirt's one list of devices: dev is the first, and may be repeated as <interface>
        devs = [d for d in [fwd.get("dev")] if d]
        for i, iface in enumerate(fwd.findall("interface")):
            if not (i == 0 and devs and iface.get("dev") == devs[0]):
                devs.append(iface.get("dev") or "")
        kids = [_node("interface", dev=d) for d in devs]
        nat = fwd.find("nat")
        if nat is not None:
            nat_kids = [
                _node(a.tag, start=a.get("start"), end=a.get("end"))
                for a in nat
                if a.tag in ("address", "port")
            ]
            kids.append(_node("nat", nat_kids))
        top.append(_node("forward", kids, mode=mode))
    bridge = root.find("bridge")
    if bridge is not None or mode in _OWN_BRIDGE:
        own = mode in _OWN_BRIDGE
        top.append(
            _node(
                "bridge",
                name=_attr(bridge, "name"),
                stp=_attr(bridge, "stp", "on" if own else None),
                delay=_attr(bridge, "delay", "0" if own else None),
                macTableManager=_attr(bridge, "macTableManager", "kernel"),
            )
        )
    for tag, attr in (("mtu", "size"), ("mac", "address")):
        el = root.find(tag)
        if el is not None and not (tag == "mac" and generated_mac):
            top.append(_node(tag, **{attr: (el.get(attr) or "").lower()}))
    domain = root.find("domain")
    if domain is not None:
        top.append(
            _node("domain", name=domain.get("name"), localOnly=domain.get("localOnly", "no"))
        )
    top.append(_dns(root.find("dns")))
    top.append(_node("port", isolated=_attr(root.find("port"), "isolated", "no")))
    for ip in root.findall("ip"):
        address = _ip(ip.get("address", ""))
        kids = _dhcp(ip.find("dhcp"))
        tftp = ip.find("tftp")
        if tftp is not None:
            kids.append(_node("tftp", root=tftp.get("root")))
        top.append(
            _node(
                "ip",
                kids,
                family=ip.get("family", _family(address)),
                address=address,
                prefix=_prefix(ip, address),
            )
        )
    for route in root.findall("route"):
        address = _ip(route.get("address", ""))
        top.append(
            _node(
                "route",
                family=route.get("family", _family(address)),
                address=address,
                prefix=_prefix(route, address),
                gateway=_ip(route.get("gateway", "")),
                metric=route.get("metric"),
            )
        )
    return _node("network", top, ipv6=root.get("ipv6", "no"))


def differences(
    expected: etree._Element, actual: etree._Element, where: str = "network"
) -> Iterator[str]:
    """Where two meaning trees differ: element by element, attribute by attribute.

    ``where`` names an element as a path of tags, with ``[n]`` for the n-th of its kind.
    """
    if expected.tag != actual.tag:
        yield f"{where}: element <{actual.tag!s}> where <{expected.tag!s}> is expected"
        return
    for name in sorted({str(k) for k in expected.attrib} | {str(k) for k in actual.attrib}):
        want, got = expected.get(name), actual.get(name)
        if want != got:
            yield f"{where}/@{name}: {got!r} where {want!r} is expected"
    if (expected.text or "") != (actual.text or ""):
        yield f"{where}: text {actual.text!r} where {expected.text!r} is expected"
    kids_e, kids_a = list(expected), list(actual)
    seen: dict[str, int] = {}
    for e, a in zip(kids_e, kids_a, strict=False):
        tag = str(e.tag)
        seen[tag] = seen.get(tag, 0) + 1
        yield from differences(e, a, f"{where}/{tag}[{seen[tag]}]")
    for e in kids_e[len(kids_a) :]:
        yield f"{where}: <{e.tag!s}> is missing"
    for a in kids_a[len(kids_e) :]:
        yield f"{where}: <{a.tag!s}> is not expected"


def _formatted(name: str) -> str:
    return format_network(parse_network((DATA / "in" / f"{name}.xml").read_bytes()))


def _expected(name: str) -> etree._Element:
    """libvirt's output for ``name``, read as libvirt reads it (its generated MAC left out)."""
    given = etree.parse(str(DATA / "in" / f"{name}.xml")).find("mac") is not None
    return meaning((DATA / "out" / f"{name}.xml").read_text(), generated_mac=not given)


def test_every_feature_has_a_pair() -> None:
    """Each input has libvirt's expected output, and the set covers the features of issue 14."""
    assert PAIRS == sorted(p.stem for p in (DATA / "out").glob("*.xml"))
    assert len(PAIRS) >= 25


@pytest.mark.parametrize("name", PAIRS)
def test_output_means_what_libvirt_writes(name: str) -> None:
    """Our document and libvirt's expected output mean the same to libvirt."""
    assert [] == list(differences(_expected(name), meaning(_formatted(name))))


@needs_libvirt_schemas
@pytest.mark.parametrize("name", PAIRS)
def test_output_validates_against_libvirts_schema(name: str) -> None:
    """What `vsv format` writes is valid for libvirt's network.rng (so is the expected output)."""
    schema = _network_rng()
    for text in (_formatted(name), (DATA / "out" / f"{name}.xml").read_text()):
        ok = schema.validate(etree.fromstring(text.encode()))
        assert (True, "") == (ok, "" if ok else f"{schema.error_log}\n{text}")


@pytest.mark.parametrize("name", PAIRS)
def test_output_is_stable_and_libvirts_output_is_accepted(name: str) -> None:
    """Formatting is a fixed point, and libvirt's own output reads to the same meaning."""
    ours = _formatted(name)
    assert ours == format_network(parse_network(ours))
    expected = (DATA / "out" / f"{name}.xml").read_text()
    again = format_network(parse_network(expected))
    assert [] == list(differences(meaning(expected), meaning(again)))


def test_the_generated_mac_is_the_only_one_left_out() -> None:
    """Where the input names a MAC, libvirt's output must carry the same one."""
    expected = (DATA / "out" / "mac.xml").read_text()
    other = expected.replace("52:54:00:5f:00:21", "52:54:00:5f:00:22")
    assert [
        "network/mac[1]/@address: '52:54:00:5f:00:22' where '52:54:00:5f:00:21' is expected"
    ] == (list(differences(meaning(expected), meaning(other))))


def test_the_comparison_sees_a_changed_attribute_and_a_missing_element() -> None:
    """meaning/differences would fail a pair that differs (a test of the test)."""
    expected = (DATA / "out" / "dns-records.xml").read_text()
    changed = expected.replace("port='8080'", "port='8081'").replace("<hostname>www</hostname>", "")
    assert [
        "network/dns[1]/host[1]: <hostname> is missing",
        "network/dns[1]/srv[1]/@port: '8081' where '8080' is expected",
    ] == list(differences(meaning(expected), meaning(changed)))


def test_the_comparison_folds_libvirts_equivalent_spellings() -> None:
    """netmask = prefix, dev = interface, missing stp = stp='on', expiry 0 in any unit."""
    a = (
        "<network><name>n</name><forward dev='e0'/><bridge name='b'/>"
        "<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp><range start='10.0.0.2' "
        "end='10.0.0.9'><lease expiry='0' unit='hours'/></range></dhcp></ip></network>"
    )
    b = (
        "<network><name>n</name><bridge name='b' stp='on' delay='0'/>"
        "<forward mode='nat'><interface dev='e0'/></forward>"
        "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'>"
        "<lease expiry='0'/></range></dhcp></ip></network>"
    )
    assert [] == list(differences(meaning(a), meaning(b)))


def test_a_document_libvirt_refuses_is_refused() -> None:
    """A forward device on an open network: libvirt refuses it, so does the codec (by name)."""
    doc = (DATA / "in" / "open.xml").read_text().replace('mode="open"', 'mode="open" dev="e1"')
    with pytest.raises(InvalidDocument) as info:
        parse_network(doc)
    assert ["6: forward/@dev"] == [p.split(": value")[0] for p in info.value.problems]
