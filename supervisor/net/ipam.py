"""Address allocations for guests on virNetworks (pure).

A guest NIC on a network without an ``<ip>`` of its own gets a reservation out of the network's
DHCP range; the reservation is also handed to dnsmasq as a static host, so the guest can obtain
the same address by DHCP. Allocations are a frozen value: every change returns a new
:class:`Allocations`, which the caller stores (``to_json``) so a restarted supervisor knows which
addresses its running guests hold. An owner is ``"<guest key>#<nic index>"``; asking again for
the same owner returns the address it already has, which makes plumbing idempotent across
restarts.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import attrs

from supervisor.errors import ConflictError, InvalidOperation
from supervisor.model import Network, NetworkIp


def owner_key(guest_key: str, index: int) -> str:
    """The owner string of NIC ``index`` of a guest."""
    return f"{guest_key}#{index}"


@attrs.frozen
class Allocation:
    """One address (and the MAC it is bound to) held by one guest NIC on one network."""

    network: str
    owner: str
    address: str
    mac: str


def _order(a: Allocation) -> tuple[str, str]:
    return (a.network, a.owner)


def first_ipv4(network: Network) -> NetworkIp | None:
    """The network's first IPv4 ``<ip>``: the one guests get addresses from."""
    return next((ip for ip in network.ips if ip.family == "ipv4"), None)


def _pool(ip: NetworkIp) -> Iterator[ipaddress.IPv4Address]:
    """Candidate addresses in order: the DHCP ranges, or the whole subnet when there are none."""
    subnet = ipaddress.IPv4Network(f"{ip.address}/{ip.prefix}", strict=False)
    if ip.dhcp_ranges:
        for r in ip.dhcp_ranges:
            start, end = ipaddress.IPv4Address(r.start), ipaddress.IPv4Address(r.end)
            for n in range(int(start), int(end) + 1):
                yield ipaddress.IPv4Address(n)
    else:
        yield from subnet.hosts()


@attrs.frozen
class Allocations:
    """Every allocation on every network, as one serialisable value."""

    entries: tuple[Allocation, ...] = ()

    def on(self, network: str) -> tuple[Allocation, ...]:
        """The allocations on one network."""
        return tuple(a for a in self.entries if a.network == network)

    def of_owner(self, network: str, owner: str) -> Allocation | None:
        """The allocation an owner holds on a network, if any."""
        return next((a for a in self.on(network) if a.owner == owner), None)

    def mac_in_use(self, network: str, mac: str, *, by_other_than: str | None = None) -> bool:
        """Whether another owner on the network already uses ``mac``."""
        mac = mac.lower()
        return any(a.mac == mac and a.owner != by_other_than for a in self.on(network))

    def allocate(
        self, network: Network, owner: str, mac: str, requested: str | None = None
    ) -> tuple[Allocations, Allocation]:
        """Reserve an address for ``owner`` (``requested`` if given) and return the new state.

        Refused (ConflictError) when the requested address is outside the network's subnet, is
        the bridge's own address, or is held by someone else, when the MAC is already used by
        another NIC on the network, and when the pool is exhausted.
        """
        mac = mac.lower()
        held = self.of_owner(network.name, owner)
        if held is not None and (requested is None or requested == held.address):
            if held.mac != mac:
                held = attrs.evolve(held, mac=mac)
                return self._replace(owner, network.name, held), held
            return self, held
        if self.mac_in_use(network.name, mac, by_other_than=owner):
            raise ConflictError(f"MAC {mac} is already used by another guest on {network.name}")
        ip = first_ipv4(network)
        if ip is None:
            raise InvalidOperation(f"network {network.name} has no IPv4 address to allocate from")
        subnet = ipaddress.IPv4Network(f"{ip.address}/{ip.prefix}", strict=False)
        taken = {a.address for a in self.on(network.name) if a.owner != owner}
        reserved = {h.ip for h in ip.dhcp_hosts if h.mac is None or h.mac.lower() != mac}
        own_reservation = next(
            (h.ip for h in ip.dhcp_hosts if h.mac is not None and h.mac.lower() == mac), None
        )
        forbidden = {ip.address, str(subnet.network_address), str(subnet.broadcast_address)}
        if requested is not None:
            addr = ipaddress.IPv4Address(requested)
            if addr not in subnet or requested in forbidden:
                raise ConflictError(
                    f"address {requested} is not a usable host address of {network.name} "
                    f"({subnet}, bridge {ip.address})"
                )
            if requested in taken or requested in reserved:
                raise ConflictError(f"address {requested} on {network.name} is already in use")
            chosen = requested
        elif own_reservation is not None and own_reservation not in taken:
            chosen = own_reservation
        else:
            chosen = ""
            for cand in _pool(ip):
                text = str(cand)
                if text not in taken and text not in reserved and text not in forbidden:
                    chosen = text
                    break
            if not chosen:
                raise ConflictError(f"no free address left in the range of network {network.name}")
        alloc = Allocation(network=network.name, owner=owner, address=chosen, mac=mac)
        return self._replace(owner, network.name, alloc), alloc

    def _replace(self, owner: str, network: str, alloc: Allocation) -> Allocations:
        rest = [a for a in self.entries if not (a.owner == owner and a.network == network)]
        # kept sorted so that equal states are equal values and serialise identically
        return Allocations(entries=tuple(sorted([*rest, alloc], key=_order)))

    def release(self, owner: str) -> Allocations:
        """Drop every allocation of one owner (a NIC unplumbed)."""
        return Allocations(entries=tuple(a for a in self.entries if a.owner != owner))

    def release_guest(self, guest_key: str) -> Allocations:
        """Drop every allocation of every NIC of one guest."""
        head = guest_key + "#"
        return Allocations(entries=tuple(a for a in self.entries if not a.owner.startswith(head)))

    def release_network(self, network: str) -> Allocations:
        """Drop every allocation on a network (the network stopped)."""
        return Allocations(entries=tuple(a for a in self.entries if a.network != network))

    def to_json(self) -> str:
        """Serialise for the run dir (stable order, so equal states give equal files)."""
        rows = [attrs.asdict(a) for a in sorted(self.entries, key=_order)]
        return json.dumps({"version": 1, "allocations": rows}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Allocations:
        """Read what :meth:`to_json` wrote; refuses documents of another version."""
        doc = json.loads(text)
        if doc.get("version") != 1:
            raise ValueError(f"unknown allocations format version {doc.get('version')!r}")
        return cls(entries=tuple(Allocation(**row) for row in doc["allocations"]))
