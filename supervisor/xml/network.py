"""Network XML: libvirt's virNetwork format, read and written as libvirt 9 does.

What is read (everything else is refused by name): forward modes nat, route, open and bridge
(a host bridge), no ``<forward>`` for an isolated network; ``<forward dev>`` and its
``<interface dev>`` children, ``<nat><address>/<port>``; ``<bridge name stp delay
macTableManager>``; ``<mtu>``; ``<mac>``; ``<domain name localOnly>``; ``<dns enable
forwardPlainNames>`` with ``<forwarder>``, ``<host>``, ``<srv>``, ``<txt>``; ``<port
isolated>``; ``<ip>`` (IPv4 and IPv6) with ``<tftp>`` and ``<dhcp>`` (ranges and hosts with
``<lease>``, ``<bootp>``); ``<route>``; ``<network ipv6>``; ``<metadata>``.

libvirt's readings that this codec makes explicit in the model, so that a stored document means
what it meant to libvirt and says it: ``<forward>`` without ``mode`` is NAT; ``<forward
dev='X'>``, ``<forward><interface dev='X'/>`` and libvirt's own form with both are one list of
devices, written ``<forward dev='X'>`` when X is the only one; ``<ip netmask=>`` is stored as a
prefix length; an ``<ip>`` without prefix or netmask (or with ``prefix='0'``, which libvirt reads
as none) gets the prefix libvirt infers (the classful one for IPv4: 8, 16 or 24; 64 for IPv6),
and a ``<route>`` is read as a NIC's is (:func:`supervisor.xml.domain.read_route`: 0.0.0.0 or ::
without a prefix is a default route), plus ``metric``; an IPv6 ``<ip>`` or ``<route>`` without
``family`` gets ``family='ipv6'`` (libvirt would refuse it without).
Autostart, which libvirt keeps outside the XML, is ``<metadata><vsv:autostart/>``; other
``<metadata>`` children are kept verbatim, as for domains.
"""

from __future__ import annotations

import ipaddress
from typing import Final, Literal, cast

import attrs
from lxml import etree

from supervisor.model import (
    AddressRange,
    Bridge,
    DhcpHost,
    DhcpLease,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Forward,
    Network,
    NetworkIp,
    PortRange,
    Route,
)
from supervisor.validate import network_problems, parse_ip
from supervisor.xml._reader import (
    ON_OFF,
    VSV_NS,
    VSV_PREFIX,
    YES_NO,
    Reader,
    finish,
    serialize_foreign,
    srcline,
    sub,
    tag_name,
    vsv,
)
from supervisor.xml.domain import (
    canonical_ip,
    natural_prefix,
    read_prefix,
    read_route,
    read_uuid,
    write_route,
)

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
    "port",
    "ip",
    "route",
)
_REPEATED: Final = frozenset({"ip", "route"})
_MODES: Final[dict[str, object]] = {m: m for m in ("nat", "route", "open", "bridge")}
_FAMILIES: Final[dict[str, object]] = {"ipv4": "ipv4", "ipv6": "ipv6"}
_MAC_TABLE: Final[dict[str, object]] = {"kernel": "kernel", "libvirt": "libvirt"}
_UNITS: Final[dict[str, object]] = {u: u for u in ("seconds", "minutes", "hours")}
_ROOT_ATTRS: Final = frozenset({"ipv6"})
_BRIDGE_ATTRS: Final = frozenset({"name", "stp", "delay", "macTableManager"})
_START_END: Final = frozenset({"start", "end"})
_IP_ATTRS: Final = frozenset({"address", "prefix", "netmask", "family"})
_HOST_ATTRS: Final = frozenset({"mac", "id", "name", "ip"})
_SRV_ATTRS: Final = frozenset(
    {"service", "protocol", "domain", "target", "port", "priority", "weight"}
)
_VSV_CLARK: Final = f"{{{VSV_NS}}}"


def _address_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return parse_ip(text)
    except ValueError:
        return None  # the rules report it


def read_network(root: etree._Element, path: str | None) -> Network:
    """Build a :class:`Network` from a parsed ``<network>`` element; raise with every problem."""
    r = Reader(path, srcline(root) or 1)
    r.lines[()] = r.root_line
    r.attrs(root, "network", _ROOT_ATTRS)
    fields: dict[str, object] = {}
    if root.get("ipv6") is not None:
        fields["ipv6"] = r.choice_attr(root, "network", "ipv6", YES_NO)
        r.lines[("ipv6",)] = r.root_line
    name: str | None = None
    ips: list[NetworkIp] = []
    routes: list[Route] = []
    seen: set[str] = set()
    for el in r.children(root, "network"):
        tag = el.tag
        if tag not in _TOP:
            r.unsupported(el, "", _TOP)
            continue
        assert isinstance(tag, str)
        if tag in seen and tag not in _REPEATED:
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
            r.attrs(el, tag, _BRIDGE_ATTRS)
            r.text(el, tag)
            r.lines[("bridge",)] = line
            fields["bridge"] = Bridge(
                name=el.get("name"),
                stp=cast("bool | None", r.choice_attr(el, "bridge", "stp", ON_OFF)),
                delay=r.int_attr(el, "bridge", "delay"),
                mac_table_manager=cast(
                    "Literal['kernel', 'libvirt'] | None",
                    r.choice_attr(el, "bridge", "macTableManager", _MAC_TABLE),
                ),
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
            r.attrs(el, tag, frozenset({"name", "localOnly"}))
            r.text(el, tag)
            fields["domain_name"] = r.required(el, tag, "name")
            fields["domain_local_only"] = r.choice_attr(el, tag, "localOnly", YES_NO)
            r.lines[("domain_name",)] = r.lines[("domain_local_only",)] = line
        elif tag == "dns":
            _read_dns(r, el, fields)
        elif tag == "port":
            r.attrs(el, tag, frozenset({"isolated"}))
            r.text(el, tag)
            fields["port_isolated"] = r.choice_attr(el, tag, "isolated", YES_NO)
            r.lines[("port_isolated",)] = line
        elif tag == "ip":
            nip = _read_ip(r, el, len(ips))
            if nip is not None:
                ips.append(nip)
        else:
            route = _read_route(r, el, len(routes))
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
        **fields,  # type: ignore[arg-type]
    )
    r.add_model_problems(network_problems(network))
    r.raise_if_problems()
    return network


def _read_metadata(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    """``<vsv:autostart/>``; children in other namespaces are kept verbatim (as for domains)."""
    r.attrs(el, "metadata", _NONE)
    foreign: list[str] = []
    for child in r.children(el, "metadata"):
        tag: str = child.tag
        if not tag.startswith(_VSV_CLARK):
            foreign.append(serialize_foreign(child))
        elif child.tag == vsv("autostart"):
            r.attrs(child, f"metadata/{VSV_PREFIX}:autostart", _NONE)
            r.text(child, f"metadata/{VSV_PREFIX}:autostart")
            fields["autostart"] = True
        else:
            r.unsupported(child, "metadata", [f"{VSV_PREFIX}:autostart"])
    fields["metadata"] = tuple(foreign)


def _read_forward(r: Reader, el: etree._Element) -> Forward:
    r.attrs(el, "forward", frozenset({"mode", "dev"}))
    line = srcline(el) or r.root_line
    r.lines[("forward",)] = r.lines[("forward", "mode")] = r.lines[("forward", "dev")] = line
    mode = r.choice(el, "forward/@mode", el.get("mode", "nat"), _MODES) or "nat"
    addresses: list[AddressRange] = []
    ports: PortRange | None = None
    interfaces: list[str] = []
    seen_nat = False
    for child in r.children(el, "forward"):
        if child.tag == "interface":
            where = f"forward/interface[{len(interfaces) + 1}]"
            r.attrs(child, where, frozenset({"dev"}))
            r.text(child, where)
            dev = r.required(child, where, "dev")
            if dev is not None:
                r.lines[("forward", "interfaces", len(interfaces))] = srcline(child) or line
                interfaces.append(dev)
            continue
        if child.tag != "nat":
            r.unsupported(child, "forward", ["nat", "interface"])
            continue
        if seen_nat:
            r.duplicate(child, "forward/nat")
            continue
        seen_nat = True
        r.attrs(child, "forward/nat", _NONE)
        for item in r.children(child, "forward/nat"):
            where = f"forward/nat/{tag_name(item)}"
            r.text(item, where)
            iline = srcline(item) or r.root_line
            if item.tag == "address":
                r.attrs(item, where, _START_END)
                start, end = r.required(item, where, "start"), r.required(item, where, "end")
                if start is not None and end is not None:
                    r.lines[("forward", "nat_addresses", len(addresses))] = iline
                    addresses.append(AddressRange(canonical_ip(start), canonical_ip(end)))
            elif item.tag == "port":
                r.attrs(item, where, _START_END)
                r.required(item, where, "start")
                r.required(item, where, "end")
                pstart = r.int_attr(item, where, "start")
                pend = r.int_attr(item, where, "end")
                if ports is not None:
                    r.duplicate(item, where)
                elif pstart is not None and pend is not None:
                    r.lines[("forward", "nat_ports")] = iline
                    ports = PortRange(pstart, pend)
            else:
                r.unsupported(item, "forward/nat", ["address", "port"])
    return Forward(
        mode=cast("Literal['nat', 'route', 'open', 'bridge']", mode),
        dev=el.get("dev"),
        nat_addresses=tuple(addresses),
        nat_ports=ports,
        interfaces=tuple(interfaces),
    )


def _read_dns(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    r.attrs(el, "dns", frozenset({"enable", "forwardPlainNames"}))
    line = srcline(el) or r.root_line
    r.lines[("dns_enable",)] = r.lines[("dns_forward_plain_names",)] = line
    fields["dns_enable"] = r.choice_attr(el, "dns", "enable", YES_NO)
    fields["dns_forward_plain_names"] = r.choice_attr(el, "dns", "forwardPlainNames", YES_NO)
    hosts: list[DnsHost] = []
    forwarders: list[DnsForwarder] = []
    srvs: list[DnsSrv] = []
    txts: list[DnsTxt] = []
    for child in r.children(el, "dns"):
        cline = srcline(child) or line
        if child.tag == "forwarder":
            where = f"dns/forwarder[{len(forwarders) + 1}]"
            r.attrs(child, where, frozenset({"addr", "domain"}))
            r.text(child, where)
            addr = child.get("addr")
            r.lines[("dns_forwarders", len(forwarders))] = cline
            forwarders.append(
                DnsForwarder(
                    addr=canonical_ip(addr) if addr is not None else None,
                    domain=child.get("domain"),
                )
            )
        elif child.tag == "txt":
            where = f"dns/txt[{len(txts) + 1}]"
            r.attrs(child, where, frozenset({"name", "value"}))
            r.text(child, where)
            tname, value = r.required(child, where, "name"), r.required(child, where, "value")
            if tname is not None and value is not None:
                r.lines[("dns_txts", len(txts))] = cline
                txts.append(DnsTxt(name=tname, value=value))
        elif child.tag == "srv":
            where = f"dns/srv[{len(srvs) + 1}]"
            r.attrs(child, where, _SRV_ATTRS)
            r.text(child, where)
            service = r.required(child, where, "service")
            protocol = r.required(child, where, "protocol")
            port = r.int_attr(child, where, "port")
            priority = r.int_attr(child, where, "priority")
            weight = r.int_attr(child, where, "weight")
            if service is not None and protocol is not None:
                r.lines[("dns_srvs", len(srvs))] = cline
                srvs.append(
                    DnsSrv(
                        service=service,
                        protocol=protocol,
                        domain=child.get("domain"),
                        target=child.get("target"),
                        port=port,
                        priority=priority,
                        weight=weight,
                    )
                )
        elif child.tag == "host":
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
                r.lines[("dns_hosts", len(hosts))] = cline
                hosts.append(DnsHost(ip=canonical_ip(ip), hostnames=tuple(names)))
        else:
            r.unsupported(child, "dns", ["forwarder", "txt", "srv", "host"])
    fields["dns_hosts"] = tuple(hosts)
    fields["dns_forwarders"] = tuple(forwarders)
    fields["dns_srvs"] = tuple(srvs)
    fields["dns_txts"] = tuple(txts)


def _read_lease(r: Reader, parent: etree._Element, where: str) -> DhcpLease | None:
    """The ``<lease>`` child of a DHCP range or host (its only child)."""
    lease: DhcpLease | None = None
    seen = False
    for child in r.children(parent, where):
        if child.tag != "lease":
            r.unsupported(child, where, ["lease"])
            continue
        lwhere = f"{where}/lease"
        if seen:
            r.duplicate(child, lwhere)
            continue
        seen = True
        r.attrs(child, lwhere, frozenset({"expiry", "unit"}))
        r.text(child, lwhere)
        expiry = r.integer(child, f"{lwhere}/@expiry", r.required(child, lwhere, "expiry"), lo=0)
        unit = r.choice_attr(child, lwhere, "unit", _UNITS)
        if unit is None and child.get("unit") is not None:
            continue  # reported: no lease in an unknown unit
        unit = unit or "minutes"
        if expiry is not None:
            # an infinite lease has no unit (libvirt writes none): one model for it
            lease = DhcpLease(
                expiry=expiry,
                unit=cast("Literal['seconds', 'minutes', 'hours']", unit if expiry else "minutes"),
            )
    return lease


def _read_dhcp(
    r: Reader,
    el: etree._Element,
    where: str,
    key: tuple[str | int, ...],
    ranges: list[AddressRange],
    hosts: list[DhcpHost],
    bootp: dict[str, str | None],
) -> None:
    r.attrs(el, where, _NONE)
    for item in r.children(el, where):
        line = srcline(item) or r.root_line
        if item.tag == "range":
            iwhere = f"{where}/range[{len(ranges) + 1}]"
            r.attrs(item, iwhere, _START_END)
            start, end = r.required(item, iwhere, "start"), r.required(item, iwhere, "end")
            lease = _read_lease(r, item, iwhere)
            if start is not None and end is not None:
                r.lines[(*key, "dhcp_ranges", len(ranges))] = line
                ranges.append(AddressRange(canonical_ip(start), canonical_ip(end), lease=lease))
        elif item.tag == "host":
            iwhere = f"{where}/host[{len(hosts) + 1}]"
            r.attrs(item, iwhere, _HOST_ATTRS)
            hip = r.required(item, iwhere, "ip")
            lease = _read_lease(r, item, iwhere)
            mac, hid = item.get("mac"), item.get("id")
            if hip is not None:
                r.lines[(*key, "dhcp_hosts", len(hosts))] = line
                hosts.append(
                    DhcpHost(
                        ip=canonical_ip(hip),
                        mac=mac.lower() if mac is not None else None,
                        name=item.get("name"),
                        id=hid.lower() if hid is not None else None,
                        lease=lease,
                    )
                )
        elif item.tag == "bootp":
            iwhere = f"{where}/bootp"
            if "file" in bootp:
                r.duplicate(item, iwhere)
                continue
            r.attrs(item, iwhere, frozenset({"file", "server"}))
            r.text(item, iwhere)
            server = item.get("server")
            bootp["file"] = r.required(item, iwhere, "file")
            bootp["server"] = canonical_ip(server) if server is not None else None
            r.lines[(*key, "bootp_file")] = r.lines[(*key, "bootp_server")] = line
        else:
            r.unsupported(item, where, ["range", "host", "bootp"])


def _read_ip(r: Reader, el: etree._Element, i: int) -> NetworkIp | None:
    where = f"ip[{i + 1}]"
    key: tuple[str | int, ...] = ("ips", i)
    r.attrs(el, where, _IP_ATTRS)
    r.lines[key] = srcline(el) or r.root_line
    address = r.required(el, where, "address")
    prefix = read_prefix(r, el, where)
    family = r.choice_attr(el, where, "family", _FAMILIES)
    ranges: list[AddressRange] = []
    hosts: list[DhcpHost] = []
    bootp: dict[str, str | None] = {}
    tftp_root: str | None = None
    seen: set[str] = set()
    for child in r.children(el, where):
        ctag = child.tag
        if ctag not in ("dhcp", "tftp"):
            r.unsupported(child, where, ["dhcp", "tftp"])
            continue
        assert isinstance(ctag, str)
        if ctag in seen:
            r.duplicate(child, f"{where}/{ctag}")
            continue
        seen.add(ctag)
        if ctag == "dhcp":
            _read_dhcp(r, child, f"{where}/dhcp", key, ranges, hosts, bootp)
        else:
            r.attrs(child, f"{where}/tftp", frozenset({"root"}))
            r.text(child, f"{where}/tftp")
            tftp_root = r.required(child, f"{where}/tftp", "root")
            r.lines[(*key, "tftp_root")] = srcline(child) or r.root_line
    if address is None:
        return None
    canonical = canonical_ip(address)
    addr = _address_of(canonical)
    if family is None:
        family = "ipv6" if addr is not None and addr.version == 6 else "ipv4"
    if addr is not None and addr.version == 6 and el.get("netmask") is not None:
        r.error(
            srcline(el),
            f"{where}/@netmask",
            f"value '{el.get('netmask')}' is an IPv4 netmask, on an IPv6 address: allowed prefix",
        )
        prefix = None  # read on as if it were not there
    if prefix is None or (prefix == 0 and el.get("netmask") is None):
        # libvirt reads a missing prefix (and prefix='0') as the address's natural one
        inferred = natural_prefix(canonical) if addr is not None else 0
        if inferred is None:
            r.error(
                srcline(el),
                f"{where}/@prefix",
                f"is missing and {addr} is not a class A, B or C address (which have a "
                "prefix of their own): allowed a prefix or netmask",
            )
            inferred = 24  # a placeholder the rules accept: the problem above is the one to tell
        prefix = inferred
    return NetworkIp(
        address=canonical,
        prefix=prefix,
        family=cast("Literal['ipv4', 'ipv6']", family),
        dhcp_ranges=tuple(ranges),
        dhcp_hosts=tuple(hosts),
        tftp_root=tftp_root,
        bootp_file=bootp.get("file"),
        bootp_server=bootp.get("server"),
    )


def _read_route(r: Reader, el: etree._Element, i: int) -> Route | None:
    """A network's ``<route>``: the shared reading (domain.read_route) with ``metric``.

    An IPv6 route is stored with ``family='ipv6'`` (libvirt reads a route without family as
    IPv4 and refuses an IPv6 one), and an IPv4 netmask on it is refused.
    """
    where = f"route[{i + 1}]"
    r.text(el, where)
    route = read_route(r, el, where, metric=True)
    if route is None:
        return None
    addr = _address_of(route.address)
    if addr is not None and addr.version == 6:
        if el.get("netmask") is not None:
            r.error(
                srcline(el),
                f"{where}/@netmask",
                f"value '{el.get('netmask')}' is an IPv4 netmask, on an IPv6 address: "
                "allowed prefix",
            )
            return None
        if route.family is None:
            route = attrs.evolve(route, family="ipv6")
    return route


# --- writing -------------------------------------------------------------------------------


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _write_lease(parent: etree._Element, lease: DhcpLease | None) -> None:
    if lease is None:
        return
    if lease.expiry:
        sub(parent, "lease", expiry=str(lease.expiry), unit=lease.unit)
    else:
        sub(parent, "lease", expiry="0")


def write_network(n: Network) -> str:
    """The document for ``n`` in libvirt's element order (deterministic, two-space indent)."""
    root = etree.Element("network")
    if n.ipv6 is not None:
        root.set("ipv6", _yes_no(n.ipv6))
    sub(root, "name", n.name)
    if n.uuid is not None:
        sub(root, "uuid", n.uuid)
    metadata: etree._Element | None = None
    if n.autostart or n.metadata:
        metadata = sub(root, "metadata")
        if n.autostart:
            etree.SubElement(metadata, vsv("autostart"), nsmap={VSV_PREFIX: VSV_NS})
    fwd = n.forward
    if fwd is not None:
        # ``dev`` alone when it is the only device: the same list for libvirt as with its
        # <interface>, and the bytes a stored definition always had (its digest tells a
        # successor whether it may take a running network over)
        fel = sub(root, "forward", mode=fwd.mode)
        if fwd.dev is not None:
            fel.set("dev", fwd.dev)
        if fwd.nat_addresses or fwd.nat_ports is not None:
            nat = sub(fel, "nat")
            for rng in fwd.nat_addresses:
                sub(nat, "address", start=rng.start, end=rng.end)
            if fwd.nat_ports is not None:
                sub(nat, "port", start=str(fwd.nat_ports.start), end=str(fwd.nat_ports.end))
        if fwd.interfaces != ((fwd.dev,) if fwd.dev is not None else ()):
            for dev in fwd.interfaces:
                sub(fel, "interface", dev=dev)
    b = n.bridge
    if b.name is not None or b.stp is not None or b.delay is not None or b.mac_table_manager:
        bel = sub(root, "bridge")
        if b.name is not None:
            bel.set("name", b.name)
        if b.stp is not None:
            bel.set("stp", "on" if b.stp else "off")
        if b.delay is not None:
            bel.set("delay", str(b.delay))
        if b.mac_table_manager is not None:
            bel.set("macTableManager", b.mac_table_manager)
    if n.mtu is not None:
        sub(root, "mtu", size=str(n.mtu))
    if n.mac is not None:
        sub(root, "mac", address=n.mac)
    if n.domain_name is not None:
        dom = sub(root, "domain", name=n.domain_name)
        if n.domain_local_only is not None:
            dom.set("localOnly", _yes_no(n.domain_local_only))
    _write_dns(root, n)
    if n.port_isolated is not None:
        sub(root, "port", isolated=_yes_no(n.port_isolated))
    for nip in n.ips:
        _write_ip(root, nip)
    for route in n.routes:
        write_route(root, route)
        if route.metric is not None:
            root[-1].set("metric", str(route.metric))
    return finish(root, metadata, n.metadata)


def _write_dns(root: etree._Element, n: Network) -> None:
    if not (
        n.dns_enable is not None
        or n.dns_forward_plain_names is not None
        or n.dns_forwarders
        or n.dns_txts
        or n.dns_srvs
        or n.dns_hosts
    ):
        return
    dns = sub(root, "dns")
    if n.dns_enable is not None:
        dns.set("enable", _yes_no(n.dns_enable))
    if n.dns_forward_plain_names is not None:
        dns.set("forwardPlainNames", _yes_no(n.dns_forward_plain_names))
    for fwd in n.dns_forwarders:
        fel = sub(dns, "forwarder")
        if fwd.domain is not None:
            fel.set("domain", fwd.domain)
        if fwd.addr is not None:
            fel.set("addr", fwd.addr)
    for txt in n.dns_txts:
        sub(dns, "txt", name=txt.name, value=txt.value)
    for srv in n.dns_srvs:
        sel = sub(dns, "srv", service=srv.service, protocol=srv.protocol)
        for attr in ("domain", "target", "port", "priority", "weight"):
            value = getattr(srv, attr)
            if value is not None:
                sel.set(attr, str(value))
    for host in n.dns_hosts:
        hel = sub(dns, "host", ip=host.ip)
        for hostname in host.hostnames:
            sub(hel, "hostname", hostname)


def _write_ip(root: etree._Element, nip: NetworkIp) -> None:
    ipel = sub(root, "ip")
    if nip.family == "ipv6":
        ipel.set("family", "ipv6")
    ipel.set("address", nip.address)
    ipel.set("prefix", str(nip.prefix))
    if nip.tftp_root is not None:
        sub(ipel, "tftp", root=nip.tftp_root)
    if nip.dhcp_ranges or nip.dhcp_hosts or nip.bootp_file is not None:
        dhcp = sub(ipel, "dhcp")
        for rng in nip.dhcp_ranges:
            _write_lease(sub(dhcp, "range", start=rng.start, end=rng.end), rng.lease)
        for dhost in nip.dhcp_hosts:
            hel = sub(dhcp, "host")
            if dhost.mac is not None:
                hel.set("mac", dhost.mac)
            if dhost.id is not None:
                hel.set("id", dhost.id)
            if dhost.name is not None:
                hel.set("name", dhost.name)
            hel.set("ip", dhost.ip)
            _write_lease(hel, dhost.lease)
        if nip.bootp_file is not None:
            bel = sub(dhcp, "bootp", file=nip.bootp_file)
            if nip.bootp_server is not None:
                bel.set("server", nip.bootp_server)
