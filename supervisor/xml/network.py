"""Network XML: libvirt's virNetwork format (the subset the supervisor implements).

No ``<forward>`` means an isolated network; ``<forward>`` without ``mode`` means NAT (libvirt's
rule). ``<ip netmask=...>`` is accepted and stored as a prefix length; documents are written with
``prefix``. Autostart, which libvirt keeps outside the XML, is ``<metadata><vsv:autostart/>``.
"""

from __future__ import annotations

import ipaddress
from typing import Final, Literal, cast

from lxml import etree

from supervisor.model import (
    AddressRange,
    Bridge,
    DhcpHost,
    DnsHost,
    Forward,
    Network,
    NetworkIp,
    PortRange,
    Route,
)
from supervisor.validate import network_problems
from supervisor.xml._reader import (
    ON_OFF,
    VSV_NS,
    VSV_PREFIX,
    Reader,
    finish,
    srcline,
    sub,
    tag_name,
    vsv,
)
from supervisor.xml.domain import canonical_ip, read_prefix, read_route, read_uuid, write_route

_NONE: Final = frozenset[str]()
_TOP: Final = (
    "name",
    "uuid",
    "metadata",
    "forward",
    "bridge",
    "mtu",
    "mac",
    "domain",
    "dns",
    "ip",
    "route",
)
_MODES: Final[dict[str, object]] = {m: m for m in ("nat", "route", "open", "bridge")}


def read_network(root: etree._Element, path: str | None) -> Network:
    """Build a :class:`Network` from a parsed ``<network>`` element; raise with every problem."""
    r = Reader(path, srcline(root) or 1)
    r.lines[()] = r.root_line
    r.attrs(root, "network", _NONE)
    fields: dict[str, object] = {}
    name: str | None = None
    ips: list[NetworkIp] = []
    routes: list[Route] = []
    dns_hosts: list[DnsHost] = []
    seen: set[str] = set()
    for el in r.children(root, "network"):
        tag = el.tag
        if tag not in _TOP:
            r.unsupported(el, "", _TOP)
            continue
        assert isinstance(tag, str)
        if tag in seen and tag not in ("ip", "route"):
            r.duplicate(el, tag)
            continue
        seen.add(tag)
        line = srcline(el) or r.root_line
        if tag == "name":
            r.attrs(el, tag, _NONE)
            name = r.text(el, tag)
            r.lines[("name",)] = line
        elif tag == "uuid":
            r.attrs(el, tag, _NONE)
            fields["uuid"] = read_uuid(r, el, r.text(el, tag).strip())
            r.lines[("uuid",)] = line
        elif tag == "metadata":
            _read_metadata(r, el, fields)
        elif tag == "forward":
            fields["forward"] = _read_forward(r, el)
        elif tag == "bridge":
            r.attrs(el, tag, frozenset({"name", "stp", "delay"}))
            r.text(el, tag)
            r.lines[("bridge",)] = line
            fields["bridge"] = Bridge(
                name=el.get("name"),
                stp=cast("bool | None", r.choice(el, "bridge/@stp", el.get("stp"), ON_OFF)),
                delay=r.int_attr(el, "bridge", "delay"),
            )
        elif tag == "mtu":
            r.attrs(el, tag, frozenset({"size"}))
            r.text(el, tag)
            fields["mtu"] = r.integer(el, "mtu/@size", r.required(el, tag, "size"))
            r.lines[("mtu",)] = line
        elif tag == "mac":
            r.attrs(el, tag, frozenset({"address"}))
            r.text(el, tag)
            mac = r.required(el, tag, "address")
            fields["mac"] = mac.lower() if mac is not None else None
            r.lines[("mac",)] = line
        elif tag == "domain":
            r.attrs(el, tag, frozenset({"name"}))
            r.text(el, tag)
            fields["domain_name"] = r.required(el, tag, "name")
            r.lines[("domain_name",)] = line
        elif tag == "dns":
            _read_dns(r, el, dns_hosts)
        elif tag == "ip":
            nip = _read_ip(r, el, len(ips))
            if nip is not None:
                ips.append(nip)
        else:
            route = read_route(r, el, f"route[{len(routes) + 1}]")
            if route is not None:
                r.lines[("routes", len(routes))] = line
                routes.append(route)
    if name is None:
        r.error(r.root_line, "name", "required element <name> is missing")
        name = ""
    network = Network(
        name=name,
        ips=tuple(ips),
        routes=tuple(routes),
        dns_hosts=tuple(dns_hosts),
        **fields,  # type: ignore[arg-type]
    )
    r.add_model_problems(network_problems(network))
    r.raise_if_problems()
    return network


def _read_metadata(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    r.attrs(el, "metadata", _NONE)
    for child in r.children(el, "metadata"):
        if child.tag == vsv("autostart"):
            r.attrs(child, f"metadata/{VSV_PREFIX}:autostart", _NONE)
            r.text(child, f"metadata/{VSV_PREFIX}:autostart")
            fields["autostart"] = True
        else:
            r.unsupported(child, "metadata", [f"{VSV_PREFIX}:autostart"])


def _read_forward(r: Reader, el: etree._Element) -> Forward:
    r.attrs(el, "forward", frozenset({"mode", "dev"}))
    r.lines[("forward",)] = srcline(el) or r.root_line
    r.lines[("forward", "mode")] = r.lines[("forward",)]
    r.lines[("forward", "dev")] = r.lines[("forward",)]
    mode = r.choice(el, "forward/@mode", el.get("mode", "nat"), _MODES) or "nat"
    addresses: list[AddressRange] = []
    ports: PortRange | None = None
    for child in r.children(el, "forward"):
        if child.tag != "nat":
            r.unsupported(child, "forward", ["nat"])
            continue
        r.attrs(child, "forward/nat", _NONE)
        for item in r.children(child, "forward/nat"):
            where = f"forward/nat/{tag_name(item)}"
            r.text(item, where)
            line = srcline(item) or r.root_line
            if item.tag == "address":
                r.attrs(item, where, frozenset({"start", "end"}))
                start, end = r.required(item, where, "start"), r.required(item, where, "end")
                if start is not None and end is not None:
                    r.lines[("forward", "nat_addresses", len(addresses))] = line
                    addresses.append(AddressRange(canonical_ip(start), canonical_ip(end)))
            elif item.tag == "port":
                r.attrs(item, where, frozenset({"start", "end"}))
                r.required(item, where, "start")
                r.required(item, where, "end")
                pstart = r.int_attr(item, where, "start")
                pend = r.int_attr(item, where, "end")
                if ports is not None:
                    r.duplicate(item, where)
                elif pstart is not None and pend is not None:
                    r.lines[("forward", "nat_ports")] = line
                    ports = PortRange(pstart, pend)
            else:
                r.unsupported(item, "forward/nat", ["address", "port"])
    return Forward(
        mode=cast("Literal['nat', 'route', 'open', 'bridge']", mode),
        dev=el.get("dev"),
        nat_addresses=tuple(addresses),
        nat_ports=ports,
    )


def _read_dns(r: Reader, el: etree._Element, hosts: list[DnsHost]) -> None:
    r.attrs(el, "dns", _NONE)
    for child in r.children(el, "dns"):
        if child.tag != "host":
            r.unsupported(child, "dns", ["host"])
            continue
        where = f"dns/host[{len(hosts) + 1}]"
        r.attrs(child, where, frozenset({"ip"}))
        ip = r.required(child, where, "ip")
        names: list[str] = []
        for hn in r.children(child, where):
            if hn.tag != "hostname":
                r.unsupported(hn, where, ["hostname"])
                continue
            r.attrs(hn, f"{where}/hostname", _NONE)
            names.append(r.text(hn, f"{where}/hostname").strip())
        if ip is not None:
            r.lines[("dns_hosts", len(hosts))] = srcline(child) or r.root_line
            hosts.append(DnsHost(ip=canonical_ip(ip), hostnames=tuple(names)))


def _read_ip(r: Reader, el: etree._Element, i: int) -> NetworkIp | None:
    where = f"ip[{i + 1}]"
    key = ("ips", i)
    r.attrs(el, where, frozenset({"address", "prefix", "netmask", "family"}))
    r.lines[key] = srcline(el) or r.root_line
    address = r.required(el, where, "address")
    prefix = read_prefix(r, el, where)
    family = r.choice(el, f"{where}/@family", el.get("family"), {"ipv4": "ipv4", "ipv6": "ipv6"})
    ranges: list[AddressRange] = []
    hosts: list[DhcpHost] = []
    for child in r.children(el, where):
        if child.tag != "dhcp":
            r.unsupported(child, where, ["dhcp"])
            continue
        r.attrs(child, f"{where}/dhcp", _NONE)
        for item in r.children(child, f"{where}/dhcp"):
            line = srcline(item) or r.root_line
            if item.tag == "range":
                iwhere = f"{where}/dhcp/range[{len(ranges) + 1}]"
                r.attrs(item, iwhere, frozenset({"start", "end"}))
                r.text(item, iwhere)
                start, end = r.required(item, iwhere, "start"), r.required(item, iwhere, "end")
                if start is not None and end is not None:
                    r.lines[(*key, "dhcp_ranges", len(ranges))] = line
                    ranges.append(AddressRange(canonical_ip(start), canonical_ip(end)))
            elif item.tag == "host":
                iwhere = f"{where}/dhcp/host[{len(hosts) + 1}]"
                r.attrs(item, iwhere, frozenset({"mac", "name", "ip"}))
                r.text(item, iwhere)
                hip = r.required(item, iwhere, "ip")
                mac = item.get("mac")
                if hip is not None:
                    r.lines[(*key, "dhcp_hosts", len(hosts))] = line
                    hosts.append(
                        DhcpHost(
                            ip=canonical_ip(hip),
                            mac=mac.lower() if mac is not None else None,
                            name=item.get("name"),
                        )
                    )
            else:
                r.unsupported(item, f"{where}/dhcp", ["range", "host"])
    if address is None:
        return None
    if prefix is None:
        r.error(srcline(el), f"{where}/@prefix", "required prefix (or netmask) is missing")
        return None
    canonical = canonical_ip(address)
    if family is None:
        try:
            family = "ipv6" if ipaddress.ip_address(canonical).version == 6 else "ipv4"
        except ValueError:
            family = "ipv4"
    return NetworkIp(
        address=canonical,
        prefix=prefix,
        family=cast("Literal['ipv4', 'ipv6']", family),
        dhcp_ranges=tuple(ranges),
        dhcp_hosts=tuple(hosts),
    )


def write_network(n: Network) -> str:
    """The document for ``n`` (deterministic order, two-space indent)."""
    root = etree.Element("network")
    sub(root, "name", n.name)
    if n.uuid is not None:
        sub(root, "uuid", n.uuid)
    if n.autostart:
        metadata = sub(root, "metadata")
        etree.SubElement(metadata, vsv("autostart"), nsmap={VSV_PREFIX: VSV_NS})
    if n.forward is not None:
        fwd = sub(root, "forward", mode=n.forward.mode)
        if n.forward.dev is not None:
            fwd.set("dev", n.forward.dev)
        if n.forward.nat_addresses or n.forward.nat_ports is not None:
            nat = sub(fwd, "nat")
            for rng in n.forward.nat_addresses:
                sub(nat, "address", start=rng.start, end=rng.end)
            if n.forward.nat_ports is not None:
                sub(
                    nat,
                    "port",
                    start=str(n.forward.nat_ports.start),
                    end=str(n.forward.nat_ports.end),
                )
    b = n.bridge
    if b.name is not None or b.stp is not None or b.delay is not None:
        bel = sub(root, "bridge")
        if b.name is not None:
            bel.set("name", b.name)
        if b.stp is not None:
            bel.set("stp", "on" if b.stp else "off")
        if b.delay is not None:
            bel.set("delay", str(b.delay))
    if n.mtu is not None:
        sub(root, "mtu", size=str(n.mtu))
    if n.mac is not None:
        sub(root, "mac", address=n.mac)
    if n.domain_name is not None:
        sub(root, "domain", name=n.domain_name)
    if n.dns_hosts:
        dns = sub(root, "dns")
        for host in n.dns_hosts:
            hel = sub(dns, "host", ip=host.ip)
            for hostname in host.hostnames:
                sub(hel, "hostname", hostname)
    for nip in n.ips:
        ipel = sub(root, "ip")
        if nip.family == "ipv6":
            ipel.set("family", "ipv6")
        ipel.set("address", nip.address)
        ipel.set("prefix", str(nip.prefix))
        if nip.dhcp_ranges or nip.dhcp_hosts:
            dhcp = sub(ipel, "dhcp")
            for rng in nip.dhcp_ranges:
                sub(dhcp, "range", start=rng.start, end=rng.end)
            for dhost in nip.dhcp_hosts:
                hel = sub(dhcp, "host")
                if dhost.mac is not None:
                    hel.set("mac", dhost.mac)
                if dhost.name is not None:
                    hel.set("name", dhost.name)
                hel.set("ip", dhost.ip)
    for route in n.routes:
        write_route(root, route)
    return finish(root, None, ())
