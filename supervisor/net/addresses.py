"""Static addresses of guests' NICs checked against their networks, at define time (pure).

A domain's ``<interface type='network'><ip address= prefix=/>`` asks for a fixed address on a
network. Whether it can have it follows from the network's document and the other domains'
documents alone, so it is decided when either is defined (``define``, ``net-define``), with
the element named, instead of when the second guest starts (issue 14: that was an HTTP 500
with a Python exception's text).

Two kinds of problem, as the API's error model has them (docs/api.md):

- the address cannot be a guest's on that network at all (outside every subnet of its
  family, the subnet's network or broadcast address, a prefix length other than the
  network's): the document is wrong, 400 ``invalid-document``;
- the address is someone else's (the bridge's own address, that is the guests' gateway; a
  ``<dhcp><host>`` reservation for another client; inside a DHCP range, where dnsmasq hands
  it to whoever asks first; another domain's static address): 409 ``conflict``.

A network that is not defined (yet) or has no address of that family (``forward
mode='bridge'``: the subnet is the host's business) has nothing to check against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import attrs

from supervisor.errors import ConflictError, InvalidDocument
from supervisor.model import Domain, Network, NetworkIp

_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class AddressProblem:
    """One refused address: the field (as ``vsv validate`` names fields), why, and whether it
    is a conflict with something else (409) or a wrong document (400)."""

    field: str
    message: str
    conflict: bool

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@attrs.frozen
class _Static:
    """A static address a domain's NIC asks for on a network."""

    domain: str
    network: str
    address: _Addr
    field: str
    mac: str | None


def _statics(domain: Domain) -> list[tuple[_Static, int | None]]:
    """The static addresses of a domain's network NICs, with the prefix length each gives."""
    out = []
    for i, iface in enumerate(domain.interfaces):
        if iface.type != "network" or not iface.source:
            continue
        for j, ip in enumerate(iface.ips):
            try:
                address = ipaddress.ip_address(ip.address)
            except ValueError:
                continue  # the domain's own validation names it
            where = f"devices/interface[{i + 1}]/ip[{j + 1}]"
            static = _Static(domain.name, iface.source, address, where, iface.mac)
            out.append((static, ip.prefix))
    return out


def _subnet_of(network: Network, address: _Addr) -> NetworkIp | None:
    for ip in network.ips:
        if address in ipaddress.ip_interface(f"{ip.address}/{ip.prefix}").network:
            return ip
    return None


def _check_one(static: _Static, prefix: int | None, network: Network) -> list[AddressProblem]:
    """The problems of one static address against its network's definition."""
    family = "ipv4" if static.address.version == 4 else "ipv6"
    same_family = [ip for ip in network.ips if ip.family == family]
    if not same_family:
        return []
    what = f"address {static.address}"
    field = f"{static.field}/@address"
    ip = _subnet_of(network, static.address)
    if ip is None:
        subnets = ", ".join(
            str(ipaddress.ip_interface(f"{i.address}/{i.prefix}").network) for i in same_family
        )
        return [
            AddressProblem(
                field, f"{what} is outside network {network.name}'s subnet ({subnets})", False
            )
        ]
    subnet = ipaddress.ip_interface(f"{ip.address}/{ip.prefix}").network
    problems = []
    if prefix is not None and prefix != ip.prefix:
        problems.append(
            AddressProblem(
                f"{static.field}/@prefix",
                f"prefix {prefix} disagrees with network {network.name}'s {subnet}",
                False,
            )
        )
    if family == "ipv4" and subnet.prefixlen < 31:
        if static.address == subnet.network_address:
            problems.append(AddressProblem(field, f"{what} is {subnet}'s network address", False))
        elif static.address == subnet.broadcast_address:
            problems.append(AddressProblem(field, f"{what} is {subnet}'s broadcast address", False))
    if problems:
        return problems
    if static.address == ipaddress.ip_address(ip.address):
        return [
            AddressProblem(
                field, f"{what} is network {network.name}'s own (the guests' gateway)", True
            )
        ]
    mac = static.mac.lower() if static.mac else None
    for host in ip.dhcp_hosts:
        if ipaddress.ip_address(host.ip) == static.address and (
            host.mac is None or host.mac.lower() != mac
        ):
            client = host.mac or (f"id {host.id}" if host.id else host.name)
            return [
                AddressProblem(
                    field, f"{what} is reserved on network {network.name} for {client}", True
                )
            ]
    for r in ip.dhcp_ranges:
        # compared as integers: the range is of the address's family (the subnet's)
        start, end = int(ipaddress.ip_address(r.start)), int(ipaddress.ip_address(r.end))
        if start <= int(static.address) <= end:
            return [
                AddressProblem(
                    field,
                    f"{what} is inside network {network.name}'s DHCP range {r.start}-{r.end}, "
                    "which dnsmasq leases to whoever asks first",
                    True,
                )
            ]
    return []


def _held(static: _Static, other: _Static | None) -> list[AddressProblem]:
    """The conflict of a static address with another NIC's (None: no other holds it)."""
    if other is None:
        return []
    owner = f"domain {other.domain}" if other.domain != static.domain else "another NIC"
    return [
        AddressProblem(
            f"{static.field}/@address",
            f"address {static.address} on network {static.network} is already {owner}'s "
            f"({other.field})",
            True,
        )
    ]


def domain_problems(
    domain: Domain, networks: Mapping[str, Network], others: Iterable[Domain]
) -> list[AddressProblem]:
    """The problems of a domain's static NIC addresses, against the defined networks and the
    other defined domains (a domain of the same name is the one being redefined: skipped)."""
    taken: dict[tuple[str, _Addr], _Static] = {}
    for other in others:
        if other.name != domain.name:
            for static, _prefix in _statics(other):
                taken.setdefault((static.network, static.address), static)
    problems: list[AddressProblem] = []
    for static, prefix in _statics(domain):
        network = networks.get(static.network)
        # against the network's definition first; two NICs on one network with one address
        # collide whether the network is defined yet or not
        mine = _check_one(static, prefix, network) if network is not None else []
        problems += mine or _held(static, taken.get((static.network, static.address)))
        taken.setdefault((static.network, static.address), static)
    return problems


def network_problems(network: Network, domains: Iterable[Domain]) -> list[AddressProblem]:
    """The problems a (re)defined network makes for the domains that have static addresses
    on it: every one is a conflict with those domains (the network's document is fine on its
    own), named with the domain."""
    problems = []
    for domain in domains:
        for p in domain_problems(domain, {network.name: network}, ()):
            problems.append(AddressProblem(f"domain {domain.name}: {p.field}", p.message, True))
    return problems


def raise_problems(problems: list[AddressProblem]) -> None:
    """400 (InvalidDocument, every wrong field) before 409 (ConflictError, every conflict)."""
    wrong = [str(p) for p in problems if not p.conflict]
    if wrong:
        raise InvalidDocument(wrong)
    conflicts = [str(p) for p in problems if p.conflict]
    if conflicts:
        raise ConflictError("; ".join(conflicts))
