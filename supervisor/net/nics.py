"""Per-guest NIC plumbing: a guest's ``<interface>`` elements made real, with full rollback.

For each interface, in libvirt's LXC order, with every change pushed on an undo stack:

- ``network`` / ``bridge``: a veth pair whose peer is created directly in the guest's namespace
  (named eth0, eth1, or ``<guest dev>``, with the XML's MAC or a stable generated one); the host
  end is enslaved to the bridge, given its MTU and brought up; the guest end gets the ``<ip>``
  addresses or a reservation from the network's range (also handed to dnsmasq, so DHCP gives the
  guest the same address), a default route via the bridge address, and ``lo`` comes up;
- ``ethernet``: the same veth without a bridge; the ``<ip>``/``<route>`` go on the host end;
- a ``<target dev>`` starting with ``tap``: a tap device in the host (VM-style guest), MAC with
  first byte 0xFE, enslaved to the bridge;
- ``vserver`` (IP isolation): a routed veth. The guest end holds only the listed addresses, which
  must lie in the uplink's subnet; the host routes each of them to the host end, answers ARP for
  them on the uplink (proxy ARP) and for everything on the host end, and an nftables table drops
  whatever the guest sends from any other source. No bridge, no NAT. (ipvlan L3S would be the
  closer match, but this kernel has none: :func:`isolation_mode` reports what is used.)

A failure at any step unwinds every step before it; a guest whose namespace dies takes its veth
ends with it, but :func:`unplumb` deletes the host ends explicitly anyway (and tolerates their
absence).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import attrs
import trio

from supervisor.errors import ConflictError, InvalidOperation, RuntimeFailure
from supervisor.model import DhcpHost, Domain, Interface
from supervisor.net import names, netlink, nftables
from supervisor.net.ipam import Allocations, owner_key
from supervisor.net.netlink import NetnsWorker
from supervisor.net.networks import HostNet, RunningNetwork, UndoStack

NicMode = Literal["veth-bridge", "veth-ethernet", "tap", "routed-veth"]

#: how many generated names/MACs are tried before giving up on collisions
ATTEMPTS = 8


def isolation_mode() -> str:
    """How ``vserver`` interfaces are isolated on this kernel, for reporting.

    Only the routed veth is implemented; the check tells the operator whether ipvlan would have
    been available.
    """
    has_ipvlan = os.path.isdir("/sys/module/ipvlan")
    return "routed-veth" + (" (ipvlan present, unused)" if has_ipvlan else " (no ipvlan)")


@attrs.frozen
class PlumbedNic:
    """What was made for one interface: enough to unplumb it, also after a restart."""

    index: int
    type: str
    mode: NicMode
    host_if: str
    guest_if: str | None
    mac: str
    owner: str
    addresses: tuple[str, ...] = ()
    network: str | None = None
    table: str | None = None


@attrs.define(eq=False)
class AddressBook:
    """The mutable holder of :class:`Allocations` shared by concurrent plumbing in one trio loop.

    Changes are synchronous (no await between read and write), so concurrent guests cannot both
    take the same address; ``state`` is what the caller persists.
    """

    state: Allocations = attrs.field(factory=Allocations)


def guest_key(domain: Domain) -> str:
    """What generated names and MACs are derived from: the uuid, else the name."""
    return domain.uuid or domain.name


async def plumb(
    host: HostNet,
    domain: Domain,
    guest_netns: str,
    networks: Mapping[str, RunningNetwork],
    book: AddressBook,
) -> tuple[PlumbedNic, ...]:
    """Plumb every interface of ``domain`` for a guest whose namespace is at ``guest_netns``.

    ``guest_netns`` is a path (``/proc/PID/ns/net`` or ``/run/netns/NAME``). On failure nothing
    is left: links, tables, reservations and address allocations are all undone.
    """
    undo = UndoStack()
    done: list[PlumbedNic] = []
    try:
        guest_fd = os.open(guest_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeFailure(f"cannot open guest namespace {guest_netns}: {exc}") from exc
    guest: NetnsWorker | None = None
    try:
        guest = await NetnsWorker.open(guest_netns)
        await guest.call(partial(netlink.set_up, name="lo"))
        for index, iface in enumerate(domain.interfaces):
            nic = await _plumb_one(
                host, guest, guest_fd, domain, index, iface, networks, book, undo
            )
            done.append(nic)
    except BaseException:
        failures = await undo.unwind()
        if failures:
            raise RuntimeFailure(
                f"plumbing {domain.name} failed and cleanup was incomplete: " + "; ".join(failures)
            ) from None
        raise
    finally:
        os.close(guest_fd)
        if guest is not None:
            with trio.CancelScope(shield=True):
                await guest.aclose()
    return tuple(done)


async def _host_name(host: HostNet, domain: Domain, index: int, iface: Interface) -> str:
    """The host end's name: ``<target dev>`` (must be free) or a free generated one."""
    w = host.worker
    if iface.target_dev:
        name = names.check_ifname(iface.target_dev)
        if await w.call(partial(netlink.link_index, name=name)) is not None:
            raise ConflictError(f"{domain.name}: interface {name} (<target dev>) already exists")
        return name
    for attempt in range(ATTEMPTS):
        name = names.host_ifname(host.prefix, guest_key(domain), index, attempt)
        if await w.call(partial(netlink.link_index, name=name)) is None:
            return name
    raise ConflictError(f"{domain.name}: no free interface name for NIC {index}")


def _mac(domain: Domain, index: int, iface: Interface, book: AddressBook, net: str | None) -> str:
    """The guest MAC: the XML's (checked) or a generated one not used on the same network."""
    if iface.mac:
        mac = names.check_mac(iface.mac)
        if net is not None and book.state.mac_in_use(
            net, mac, by_other_than=owner_key(guest_key(domain), index)
        ):
            raise ConflictError(f"{domain.name}: MAC {mac} is already used on network {net}")
        return mac
    for attempt in range(ATTEMPTS):
        mac = names.guest_mac(guest_key(domain), index, attempt)
        if net is None or not book.state.mac_in_use(net, mac):
            return mac
    raise ConflictError(f"{domain.name}: no free MAC for NIC {index}")


async def _plumb_one(
    host: HostNet,
    guest: NetnsWorker,
    guest_fd: int,
    domain: Domain,
    index: int,
    iface: Interface,
    networks: Mapping[str, RunningNetwork],
    book: AddressBook,
    undo: UndoStack,
) -> PlumbedNic:
    w = host.worker
    owner = owner_key(guest_key(domain), index)
    guest_if = names.guest_ifname(index, iface.guest_dev)
    running: RunningNetwork | None = None
    bridge: str | None = None
    if iface.type == "network":
        if iface.source is None or iface.source not in networks:
            raise InvalidOperation(f"{domain.name}: network {iface.source!r} is not running")
        running = networks[iface.source]
        bridge = running.bridge
    elif iface.type == "bridge":
        if not iface.source:
            raise InvalidOperation(f"{domain.name}: <interface type='bridge'> needs a source")
        bridge = iface.source
        if await w.call(partial(netlink.link_index, name=bridge)) is None:
            raise InvalidOperation(f"{domain.name}: bridge {bridge} does not exist")
    net_name = running.network.name if running is not None else None
    mac = _mac(domain, index, iface, book, net_name)
    host_if = await _host_name(host, domain, index, iface)

    if iface.type == "vserver":
        return await _plumb_vserver(
            host, guest, guest_fd, domain, index, iface, host_if, guest_if, mac, undo
        )

    # addresses for the guest end
    addresses: list[str] = []
    if running is not None and iface.type == "network" and running.gateway is not None:
        requested = iface.ips[0].address if iface.ips else None
        book.state, alloc = book.state.allocate(running.network, owner, mac, requested)
        undo.push(f"allocation {owner}", partial(_release, book, owner))
        prefix = next(ip.prefix for ip in running.network.ips if ip.family == "ipv4")
        addresses.append(f"{alloc.address}/{prefix}")
        await running.add_host(owner, DhcpHost(ip=alloc.address, mac=mac, name=domain.name))
        undo.push(f"reservation {owner}", partial(_remove_host, running, owner))
    elif iface.type == "bridge":
        addresses += [f"{ip.address}/{ip.prefix or 24}" for ip in iface.ips]

    if iface.target_dev and iface.target_dev.startswith("tap") and bridge is not None:
        tmac = names.tap_mac(mac)
        await w.call(partial(netlink.create_tap, name=host_if, mac=tmac))
        undo.push(f"tap {host_if}", partial(w.call, partial(netlink.delete_link, name=host_if)))
        mtu = await w.call(partial(netlink.link_mtu, name=bridge))
        await w.call(partial(netlink.set_up, name=host_if, master=bridge, mtu=mtu))
        return PlumbedNic(
            index, iface.type, "tap", host_if, None, mac, owner, tuple(addresses), net_name
        )

    await w.call(
        partial(
            netlink.create_veth, host_if=host_if, guest_if=guest_if, guest_ns_fd=guest_fd, mac=mac
        )
    )
    undo.push(f"veth {host_if}", partial(w.call, partial(netlink.delete_link, name=host_if)))
    if bridge is not None:

        def enslave(ipr: Any, bridge: str = bridge) -> None:
            # one hop to the netlink thread: the bridge's MTU, then enslave and bring up
            netlink.set_up(
                ipr, host_if, master=bridge, mtu=iface.mtu or netlink.link_mtu(ipr, bridge)
            )

        await w.call(enslave)
    else:
        await w.call(partial(netlink.set_up, name=host_if, mtu=iface.mtu))
        # ethernet: the XML's addresses and routes are the host end's
        for ip in iface.ips:
            await w.call(
                partial(
                    netlink.add_address, name=host_if, address=ip.address, prefix=ip.prefix or 32
                )
            )
        for r in iface.routes:
            await w.call(
                partial(
                    netlink.add_route, dst=f"{r.address}/{r.prefix}", gateway=r.gateway, dev=host_if
                )
            )

    def guest_side(ipr: Any) -> None:
        for cidr in addresses:
            a = ipaddress.ip_interface(cidr)
            netlink.add_address(ipr, guest_if, str(a.ip), a.network.prefixlen)
        netlink.set_up(ipr, guest_if, mtu=iface.mtu)
        if running is not None and running.gateway is not None and index == 0:
            netlink.add_route(ipr, "default", gateway=running.gateway)
        if iface.type == "bridge":
            for r in iface.routes:
                netlink.add_route(ipr, f"{r.address}/{r.prefix}", gateway=r.gateway)

    await guest.call(guest_side)
    mode: NicMode = "veth-bridge" if bridge is not None else "veth-ethernet"
    return PlumbedNic(
        index, iface.type, mode, host_if, guest_if, mac, owner, tuple(addresses), net_name
    )


async def _plumb_vserver(
    host: HostNet,
    guest: NetnsWorker,
    guest_fd: int,
    domain: Domain,
    index: int,
    iface: Interface,
    host_if: str,
    guest_if: str,
    mac: str,
    undo: UndoStack,
) -> PlumbedNic:
    w = host.worker
    if not iface.ips:
        raise InvalidOperation(f"{domain.name}: <interface type='vserver'> needs <ip> addresses")
    uplink = iface.source or await w.call(netlink.default_route_dev)
    if uplink is None:
        raise InvalidOperation(f"{domain.name}: no uplink: give <source dev> or a default route")
    subnets = await w.call(partial(netlink.link_networks, name=uplink))
    for ip in iface.ips:
        addr = ipaddress.ip_address(ip.address)
        if not any(addr in s.network for s in subnets):
            raise InvalidOperation(
                f"{domain.name}: {ip.address} is not in a subnet of uplink {uplink} "
                f"({', '.join(str(s.network) for s in subnets) or 'no IPv4 address'})"
            )
    await w.call(lambda _: netlink.sysctl_write("net.ipv4.ip_forward", "1"))
    await w.call(lambda _: netlink.sysctl_write(f"net.ipv4.conf.{uplink}.proxy_arp", "1"))

    # the guard goes in before the link exists, so not one packet passes unchecked
    table = names.nft_table(host.prefix, host_if)
    addrs = [ip.address for ip in iface.ips]
    await nftables.apply(host.netns, table, nftables.guard_ruleset(table, host_if, addrs))
    undo.push(f"nft table {table}", partial(nftables.delete, host.netns, table))

    await w.call(
        partial(
            netlink.create_veth, host_if=host_if, guest_if=guest_if, guest_ns_fd=guest_fd, mac=mac
        )
    )
    undo.push(f"veth {host_if}", partial(w.call, partial(netlink.delete_link, name=host_if)))

    def host_side(ipr: Any) -> None:
        netlink.set_up(ipr, host_if)
        netlink.sysctl_write(f"net.ipv4.conf.{host_if}.proxy_arp", "1")
        for a in addrs:
            netlink.add_route(ipr, f"{a}/32", dev=host_if)

    await w.call(host_side)

    def guest_side(ipr: Any) -> None:
        for ip in iface.ips:
            netlink.add_address(ipr, guest_if, ip.address, ip.prefix or 32)
        netlink.set_up(ipr, guest_if)
        if index == 0:
            netlink.add_route(ipr, "default", dev=guest_if)

    await guest.call(guest_side)
    return PlumbedNic(
        index,
        "vserver",
        "routed-veth",
        host_if,
        guest_if,
        mac,
        owner_key(guest_key(domain), index),
        tuple(f"{ip.address}/{ip.prefix or 32}" for ip in iface.ips),
        None,
        table,
    )


async def _release(book: AddressBook, owner: str) -> None:
    book.state = book.state.release(owner)


async def _remove_host(running: RunningNetwork, owner: str) -> None:
    await running.remove_host(owner)


async def unplumb(
    host: HostNet,
    nics: tuple[PlumbedNic, ...],
    networks: Mapping[str, RunningNetwork],
    book: AddressBook,
) -> None:
    """Remove what :func:`plumb` made (host ends, tables, reservations, allocations).

    Idempotent: links already gone with the guest's namespace are fine. Runs shielded so a
    cancelled caller cannot leave a half-removed guest.
    """
    errors = []
    with trio.CancelScope(shield=True):
        for nic in reversed(nics):
            try:
                await host.worker.call(partial(netlink.delete_link, name=nic.host_if))
                if nic.table is not None:
                    await nftables.delete(host.netns, nic.table)
            except Exception as exc:
                errors.append(f"{nic.host_if}: {exc}")
            if nic.network is not None and nic.network in networks:
                await networks[nic.network].remove_host(nic.owner)
            book.state = book.state.release(nic.owner)
    if errors:
        raise RuntimeFailure("unplumbing incomplete: " + "; ".join(errors))
