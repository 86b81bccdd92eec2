"""Per-guest NIC plumbing: a guest's ``<interface>`` elements made real, with full rollback.

For each interface, in libvirt's LXC order, with every change pushed on an undo stack:

- ``network`` / ``bridge``: a veth pair whose peer is created directly in the guest's namespace
  (named eth0, eth1, or ``<guest dev>``, with the XML's MAC or a stable generated one); the host
  end is enslaved to the bridge, given its MTU and brought up; the guest end gets the ``<ip>``
  addresses or a reservation from the network's range (also handed to dnsmasq, so DHCP gives the
  guest the same address), a default route via the bridge address, and ``lo`` comes up;
- ``ethernet``: the same veth without a bridge, with libvirt's two sides: the ``<ip>``/``<route>``
  configure the guest end (with the natural prefix when none is given, and an optional
  point-to-point ``peer``), ``<source><ip>``/``<source><route>`` the host end;
- a ``<target dev>`` naming a tap (:func:`supervisor.net.names.names_tap`: ``tap...`` or
  ``<prefix>tap...``; the prefixed form is the one ``vsv gc`` can find): a tap device in the host
  for a VM-style guest, MAC of the guest's with first byte 0xFE, no guest end. On a network or
  bridge it is enslaved with the bridge's MTU (and a network still reserves its address for the
  guest's DHCP); for ``ethernet`` it stays unenslaved and gets the ``<source>``'s
  ``<ip>``/``<route>``, as the veth's host end would (the top-level ones are the VM's own);
- ``vserver`` (IP isolation): a routed veth. The guest end holds only the listed addresses, which
  must lie in the uplink's subnet; the host routes each of them to the host end, answers ARP for
  them on the uplink (proxy ARP) and for everything on the host end, and an nftables table drops
  whatever the guest sends from any other source. No bridge, no NAT. (ipvlan L3S would be the
  closer match, but this kernel has none: :func:`isolation_mode` reports what is used.)

Every NIC plumbed into a bridge (``network``, ``bridge``, and taps on either) is guarded against
spoofing unless its ``<filterref filter='vsv-allow-all'/>`` opts out: on a network, its port
enters the network's guard table (:func:`supervisor.net.nftables.antispoof_ruleset`) as set
elements, in the same hop as the veth and before it exists; on a bridge the supervisor does not
own, the NIC gets a guard table of its own (``<prefix>_<host if>``, family ``bridge``).

A failure at any step unwinds every step before it; a guest whose namespace dies takes its veth
ends with it, but :func:`unplumb` deletes the host ends explicitly anyway (and tolerates their
absence).

A guest start waits for this, so a veth NIC costs one hop to the host's netlink worker: there,
on raw netlink sockets (:mod:`supervisor.net.rtnl`), the host end is created already enslaved,
sized and up with its peer in the guest, and the guest end is configured through a socket that
was opened inside the guest's namespace. Meanwhile the trio thread writes dnsmasq's
reservation. The rarer kinds (tap, vserver) keep pyroute2 calls.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import attrs
import trio

from supervisor import nsutil
from supervisor.errors import ConflictError, InvalidOperation, RuntimeFailure
from supervisor.model import DhcpHost, Domain, HostdevNet, Interface, IpAddress, Network
from supervisor.net import names, netlink, nftables
from supervisor.net.ipam import Allocations, owner_key
from supervisor.net.networks import HostNet, RunningNetwork, UndoStack
from supervisor.net.nftables import PortGuard, guard_addresses, port_elements
from supervisor.net.rtnl import (
    IFLA_BRPORT_ISOLATED,
    IFLA_BRPORT_LEARNING,
    IFLA_BRPORT_UNICAST_FLOOD,
    LO_INDEX,
    Rtnl,
)
from supervisor.xml.domain import natural_prefix

log = logging.getLogger("vsv.net")

NicMode = Literal["veth-bridge", "veth-ethernet", "tap", "routed-veth", "macvlan", "hostdev"]

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
    #: the anti-spoofing guard of a bridge port: None (opted out, or not on a bridge),
    #: ``default`` or ``clean-traffic``
    guard: str | None = None
    #: the sources the guard lets the port use besides dnsmasq's leases
    allowed: tuple[str, ...] = ()
    #: False when the guard cannot know the guest's addresses (it checks MACs and router and
    #: DHCP server messages then, not IP sources)
    ip_checked: bool = True
    #: the NIC's own guard table (``bridge`` family), on a bridge the supervisor does not own;
    #: a NIC on a network is guarded by the network's table instead
    guard_table: str | None = None
    #: the guest's MAC is a static entry of its bridge's forwarding table, on its port
    #: (``macTableManager='libvirt'``)
    fdb: bool = False
    #: a device that lives in the guest's namespace (a macvlan, a host NIC lent to the guest):
    #: its index there. ``host_if`` is then the host link it depends on, or the lent NIC's
    #: name in the host, which is never the supervisor's to remove
    guest_index: int | None = None
    #: a lent host NIC (``<hostdev>``, ``mac`` its MAC in the host): its kind (None for a
    #: physical NIC), checked before it is moved back, so that nothing else the guest made
    #: under its index goes to the host; and its state in the host, restored on the way back
    link_kind: str | None = None
    restore_mtu: int | None = None
    restore_up: bool = False
    #: ``address/prefix``, or ``address/prefix peer PEER`` (link-local IPv6 ones left out: the
    #: kernel makes them again)
    restore_addresses: tuple[str, ...] = ()
    restore_master: str | None = None


def nic_guard(nic: PlumbedNic) -> PortGuard | None:
    """The guard of a plumbed NIC's bridge port, as recorded (None: not guarded)."""
    if nic.guard is None:
        return None
    return PortGuard(
        port=nic.host_if,
        mac=nic.mac,
        addresses=nic.allowed,
        check_ip=nic.ip_checked,
        strict=nic.guard == "clean-traffic",
    )


def _plan_guard(
    iface: Interface, mac: str, addresses: list[str], network: Network | None
) -> PortGuard | None:
    """The guard of a NIC about to be plumbed into a bridge (its port named later), or None
    when the interface opts out.

    Its addresses are the reservation or static ones and the IPv6 ones derived from the MAC.
    Whether addresses can be known at all: yes with a static or reserved address, or on a
    network with an ``<ip>`` (dnsmasq's leases); no on a bridge the supervisor does not own
    without ``<ip>``, where a DHCP server it does not see hands them out.
    """
    if iface.filterref == "vsv-allow-all":
        return None
    known = [*addresses, *(ip.address for ip in iface.ips)]
    return PortGuard(
        port="",
        mac=mac,
        addresses=guard_addresses(mac, known, network),
        check_ip=bool(known) or (network is not None and bool(network.ips)),
        strict=iface.filterref == "clean-traffic",
    )


def _guard_fields(guard: PortGuard | None, guard_table: str | None) -> dict[str, Any]:
    """The PlumbedNic fields that record a guard."""
    if guard is None:
        return {}
    return {
        "guard": "clean-traffic" if guard.strict else "default",
        "allowed": guard.addresses,
        "ip_checked": guard.check_ip,
        "guard_table": guard_table,
    }


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
    *,
    guest: Rtnl | None = None,
) -> tuple[PlumbedNic, ...]:
    """Plumb every interface of ``domain`` for a guest whose namespace is at ``guest_netns``.

    ``guest_netns`` is a path (``/proc/PID/ns/net`` or ``/run/netns/NAME``). ``guest`` is a
    netlink socket already open in that namespace with ``lo`` up (made with the namespace, see
    :func:`guest_rtnl`); without it one is opened here, and closed at the end. On failure
    nothing is left: links, tables, reservations and address allocations are all undone.
    """
    undo = UndoStack()
    done: list[PlumbedNic] = []
    try:
        guest_fd = os.open(guest_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeFailure(f"cannot open guest namespace {guest_netns}: {exc}") from exc
    own: Rtnl | None = None
    try:
        if guest is None:
            guest = own = await host.worker.call(
                lambda _: nsutil.run_in_netns(guest_fd, guest_rtnl)
            )
        for index, iface in enumerate(domain.interfaces):
            nic = await _plumb_one(
                host, guest, guest_fd, domain, index, iface, networks, book, undo
            )
            done.append(nic)
        for index, hostdev in enumerate(domain.hostdevs):
            done.append(
                await _lend(host, guest, guest_fd, guest_netns, domain, index, hostdev, undo)
            )
    except BaseException:
        failures = await undo.unwind()
        if failures:
            raise RuntimeFailure(
                f"plumbing {domain.name} failed and cleanup was incomplete: " + "; ".join(failures)
            ) from None
        raise
    finally:
        os.close(guest_fd)
        if own is not None:
            own.close()
    return tuple(done)


def guest_rtnl() -> Rtnl:
    """A netlink socket in the calling thread's namespace (a fresh guest's), with ``lo`` up.

    Runs inside :func:`supervisor.nsutil.create_netns_here` or ``run_in_netns``; the socket
    keeps that namespace, so the guest side is configured from the host's worker thread.
    """
    sock = Rtnl()
    try:
        sock.set_up(LO_INDEX, what="lo")
    except BaseException:
        sock.close()
        raise
    return sock


def _pick_host_name(r: Rtnl, prefix: str, domain: Domain, index: int, iface: Interface) -> str:
    """The host end's name: ``<target dev>`` (must be free) or a free generated one."""
    if iface.target_dev:
        name = names.check_ifname(iface.target_dev)
        if r.link(name) is not None:
            raise ConflictError(f"{domain.name}: interface {name} (<target dev>) already exists")
        return name
    for attempt in range(ATTEMPTS):
        name = names.host_ifname(prefix, guest_key(domain), index, attempt)
        if r.link(name) is None:
            return name
    raise ConflictError(f"{domain.name}: no free interface name for NIC {index}")


async def _host_name(host: HostNet, domain: Domain, index: int, iface: Interface) -> str:
    """:func:`_pick_host_name` in the host's worker thread."""
    return await host.worker.call(
        lambda _: _pick_host_name(host.rtnl_here(), host.prefix, domain, index, iface)
    )


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
    guest: Rtnl,
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

    if iface.link_up is False and bridge is None:
        # a veth end down takes its addresses' routes with it: the host end of an ethernet or
        # vserver NIC holds routes, so the cable cannot be shown unplugged without breaking them
        raise InvalidOperation(
            f"{domain.name}: interface {index + 1}: <link state='down'> is applied only to "
            f"interfaces on a bridge (type network or bridge), not type {iface.type}"
        )
    if iface.type == "direct":
        return await _plumb_direct(host, guest, guest_fd, domain, index, iface, guest_if, mac, undo)
    if iface.type == "vserver":
        host_if = await _host_name(host, domain, index, iface)
        return await _plumb_vserver(
            host, guest, guest_fd, domain, index, iface, host_if, guest_if, mac, undo
        )

    # addresses for the guest end
    addresses: list[str] = []
    reservation: DhcpHost | None = None
    if running is not None and iface.type == "network" and running.gateway is not None:
        v4 = [ip.address for ip in iface.ips if ":" not in ip.address]
        requested = v4[0] if v4 else None
        book.state, alloc = book.state.allocate(running.network, owner, mac, requested)
        undo.push(f"allocation {owner}", partial(_release, book, owner))
        prefix = next(ip.prefix for ip in running.network.ips if ip.family == "ipv4")
        addresses.append(f"{alloc.address}/{prefix}")
        reservation = DhcpHost(ip=alloc.address, mac=mac, name=domain.name)
        # static IPv6 addresses with the network's prefix length (define checked they fit)
        v6_prefix = next((i.prefix for i in running.network.ips if i.family == "ipv6"), 64)
        addresses += [
            f"{ip.address}/{ip.prefix or v6_prefix}" for ip in iface.ips if ":" in ip.address
        ]
    elif bridge is not None:
        # a host bridge (type bridge, or a network of forward mode 'bridge'), or a network
        # without IPv4: the interface's own addresses
        addresses += [f"{ip.address}/{nic_prefix(ip)}" for ip in iface.ips]
    # the guest end's addresses with their point-to-point peers (ethernet only)
    guest_ips: list[tuple[str, int, str | None]] = []
    if iface.type == "ethernet":
        guest_ips = [(ip.address, nic_prefix(ip), ip.peer) for ip in iface.ips]
        addresses += [f"{a}/{p}" for a, p, _ in guest_ips]
    else:
        for cidr in addresses:
            a = ipaddress.ip_interface(cidr)
            guest_ips.append((str(a.ip), a.network.prefixlen, None))

    # the port's anti-spoofing guard: on a network, elements of the network's table (added on
    # the worker in the same hop as the link, before it exists); on a bridge of the host's, a
    # table of the NIC's own, loaded before the link exists
    guard: PortGuard | None = None
    if bridge is not None:
        guard = _plan_guard(iface, mac, addresses, running.network if running else None)
    guard_set = running.guard if running is not None and guard is not None else None
    own_table: str | None = None
    fixed_name: str | None = None
    if guard is not None and guard_set is None:
        fixed_name = await _host_name(host, domain, index, iface)
        own_table = names.nft_table(host.prefix, fixed_name)
        guard = attrs.evolve(guard, port=fixed_name)
        ruleset = nftables.antispoof_ruleset(own_table, [guard])
        await nftables.apply_script(
            host.netns, nftables.replace_script(own_table, ruleset, "bridge")
        )
        undo.push(
            f"nft table {own_table}", partial(nftables.delete, host.netns, own_table, "bridge")
        )
    guarded = _guard_fields(guard, own_table)

    if names.names_tap(host.prefix, iface.target_dev):
        if reservation is not None:
            await _reserve(running, owner, reservation, undo)
        host_if = fixed_name or await _host_name(host, domain, index, iface)
        tmac = names.tap_mac(mac)
        fdb = False
        if guard is not None and guard_set is not None:
            guard = attrs.evolve(guard, port=host_if)
            await _add_port(host, guard_set, guard, undo)
            guarded = _guard_fields(guard, None)
        await w.call(partial(netlink.create_tap, name=host_if, mac=tmac))
        undo.push(f"tap {host_if}", partial(w.call, partial(netlink.delete_link, name=host_if)))
        if bridge is not None:
            mtu = await w.call(partial(netlink.link_mtu, name=bridge))
            up = iface.link_up is not False  # <link state='down'>: enslaved, down
            await w.call(partial(netlink.set_up, name=host_if, master=bridge, mtu=mtu, up=up))
            isolated, managed = port_isolated(running), macs_managed(running)
            await w.call(
                lambda _: configure_port(
                    host.rtnl_here(), host_if, mac, isolated=isolated, managed=managed
                )
            )
            fdb = managed
        else:
            await w.call(partial(netlink.set_up, name=host_if, mtu=iface.mtu))
            await _host_side_addresses(host, host_if, iface)
            addresses = []  # the guest's own <ip>s: the VM configures them, not the supervisor
        return PlumbedNic(
            index,
            iface.type,
            "tap",
            host_if,
            None,
            mac,
            owner,
            tuple(addresses),
            net_name,
            fdb=fdb,
            **guarded,
        )

    routes = [(f"{r.address}/{r.prefix}", r.gateway) for r in iface.routes]
    # the first NIC on a network routes by default through the network's bridge, unless its
    # own <route address='0.0.0.0'> says where the default route goes
    own_default = any(
        r.prefix == 0 and ipaddress.ip_address(r.address).version == 4 for r in iface.routes
    )
    gateway = running.gateway if running is not None and index == 0 and not own_default else None
    isolated = port_isolated(running)
    managed = macs_managed(running)
    link_up = iface.link_up is not False

    def veth(_ipr: Any) -> tuple[str, PortGuard | None]:
        # the whole NIC in one hop to the worker thread, on raw netlink sockets: name, guard,
        # veth (enslaved, sized and up as it is made), then the guest end
        r = host.rtnl_here()
        host_if = fixed_name or _pick_host_name(r, host.prefix, domain, index, iface)
        master: int | None = None
        mtu = iface.mtu
        if bridge is not None:
            found = r.link(bridge)
            if found is None:
                raise RuntimeFailure(f"bridge {bridge} does not exist")
            master, mtu = found[0], iface.mtu or found[1]
        # the port enters its network's guard under the name just picked (free, and this
        # thread makes every link of the host namespace, so it stays free), before the link
        # exists: no frame crosses the port unchecked
        port: PortGuard | None = None
        if guard is not None and guard_set is not None:
            port = attrs.evolve(guard, port=host_if)
            host.nfnl_here().update(guard_set, add=port_elements(port))
        try:
            # <link state='down'>: the host end stays down, so the guest's end has no carrier
            # (the cable unplugged: the guest's root cannot plug it in from its side)
            r.create_veth(host_if, guest_if, guest_fd, mac=mac, master=master, mtu=mtu, up=link_up)
        except BaseException:
            if port is not None:
                with contextlib.suppress(Exception):
                    host.nfnl_here().update(guard_set or "", remove=port_elements(port))
            raise
        try:
            # before the guest's end is up: nothing has crossed the port yet
            configure_port(r, host_if, mac, isolated=isolated, managed=managed)
            if bridge is None:  # ethernet: the host end's own addresses and routes
                host_side(r, r.index(host_if), host_if, iface)
            link = guest.index(guest_if)
            for address, prefix, peer in guest_ips:
                guest.add_address(link, address, prefix, peer=peer, what=guest_if)
            guest.set_up(link, mtu=iface.mtu, what=guest_if)
            if gateway is not None:
                guest.add_route("default", gateway=gateway)
            for dst, via in routes:  # the NIC's routes, through it, in the guest (libvirt's)
                guest.add_route(dst, gateway=via, oif=link)
        except BaseException:
            with contextlib.suppress(Exception):
                r.delete(r.index(host_if))
            if port is not None:
                with contextlib.suppress(Exception):
                    host.nfnl_here().update(guard_set or "", remove=port_elements(port))
            raise
        return host_if, port

    # dnsmasq's reservation is written on this thread while the worker makes the veth; both
    # are done before the guest's init exists (hooks run before init), so its first DHCP
    # request finds the reservation
    pending = w.submit(veth)
    try:
        if reservation is not None:
            await _reserve(running, owner, reservation, undo)
    finally:
        host_if, port = await w.wait(pending, deliver=True)
        if port is not None and guard_set is not None:
            undo.push(f"guard of {host_if}", partial(_remove_port, host, guard_set, port))
            guarded = _guard_fields(port, None)
        undo.push(f"veth {host_if}", partial(w.call, partial(netlink.delete_link, name=host_if)))
    mode: NicMode = "veth-bridge" if bridge is not None else "veth-ethernet"
    return PlumbedNic(
        index,
        iface.type,
        mode,
        host_if,
        guest_if,
        mac,
        owner,
        tuple(addresses),
        net_name,
        fdb=managed,
        **guarded,
    )


def port_isolated(running: RunningNetwork | None) -> bool:
    """Whether a network's guest ports are isolated from each other."""
    return running is not None and bool(running.network.port_isolated)


def macs_managed(running: RunningNetwork | None) -> bool:
    """Whether the network's bridge has ``macTableManager='libvirt'``: the supervisor, not the
    kernel's learning, fills the forwarding table with the guests' MACs."""
    return running is not None and running.network.bridge.mac_table_manager == "libvirt"


def configure_port(r: Rtnl, name: str, mac: str, *, isolated: bool, managed: bool) -> None:
    """A guest's bridge port as its network asks, in one request, before the guest's end is up
    (nothing has crossed the port yet):

    - ``isolated`` (``<port isolated='yes'/>``): the bridge forwards nothing from this port to
      another isolated port (traffic to and from the host and the uplink goes on);
    - ``managed`` (``macTableManager='libvirt'``, as libvirt does it): the port neither learns
      source MACs nor gets unicast frames for unknown destinations, and a static forwarding
      entry sends the guest's MAC to it. (libvirt's entry is a user-added dynamic one, which
      ages out after the bridge's ageing time with learning off; a static one does not.)
    """
    flags: dict[int, bool] = {}
    if isolated:
        flags[IFLA_BRPORT_ISOLATED] = True
    if managed:
        flags[IFLA_BRPORT_LEARNING] = False
        flags[IFLA_BRPORT_UNICAST_FLOOD] = False
    if not flags:
        return
    index = r.index(name)
    r.set_port_flags(index, flags, what=name)
    if managed:
        r.fdb_add(index, mac, what=name)


def _forget_port_mac(_ipr: Any, host: HostNet, name: str, mac: str) -> None:
    """Take a guest's static forwarding entry out of its bridge (before its port goes, which
    would take it too; no error when the port or the entry is gone already)."""
    r = host.rtnl_here()
    found = r.link(name)
    if found is not None:
        r.fdb_delete(found[0], mac, what=name)


async def _add_port(host: HostNet, table: str, guard: PortGuard, undo: UndoStack) -> None:
    """Put a port into its network's guard table (one transaction), with its undo."""
    elements = port_elements(guard)
    await host.worker.call(lambda _: host.nfnl_here().update(table, add=elements), deliver=True)
    undo.push(f"guard of {guard.port}", partial(_remove_port, host, table, guard))


async def _remove_port(host: HostNet, table: str, guard: PortGuard) -> None:
    """Take a port out of its network's guard table (no error if it is not there)."""
    await host.worker.call(lambda _: host.nfnl_here().update(table, remove=port_elements(guard)))


def nic_prefix(ip: IpAddress) -> int:
    """The prefix length of a NIC's address as libvirt applies it: the one given, else (also
    for ``prefix='0'``) the address's natural one (class A/B/C, IPv6 /64)."""
    return ip.prefix or natural_prefix(ip.address) or 0


def host_side(r: Rtnl, index: int, name: str, iface: Interface) -> None:
    """``ethernet``: ``<source><ip>`` and ``<source><route>`` on the host end (libvirt's
    meaning; the top-level ``<ip>``/``<route>`` are the guest end's). Removing the link
    removes them, so they need no undo of their own."""
    for ip in iface.host_ips:
        r.add_address(index, ip.address, nic_prefix(ip), peer=ip.peer, what=name)
    for route in iface.host_routes:
        r.add_route(f"{route.address}/{route.prefix}", gateway=route.gateway, oif=index)


async def _host_side_addresses(host: HostNet, host_if: str, iface: Interface) -> None:
    """:func:`host_side` for a tap (``ethernet`` with a tap ``<target dev>``), on the host's
    worker. A tap has no guest end here: the top-level ``<ip>``/``<route>`` are for the VM
    to configure, as with libvirt's qemu driver."""

    def job(_ipr: Any) -> None:
        r = host.rtnl_here()
        host_side(r, r.index(host_if), host_if, iface)

    await host.worker.call(job)


async def _plumb_direct(
    host: HostNet,
    guest: Rtnl,
    guest_fd: int,
    domain: Domain,
    index: int,
    iface: Interface,
    guest_if: str,
    mac: str,
    undo: UndoStack,
) -> PlumbedNic:
    """``direct``: a macvlan on the host link ``<source dev>``, made directly in the guest's
    namespace (no move between namespaces, which would cost an RCU grace period) under its
    guest name, with the MAC, addresses and routes of any NIC, in one hop to the worker.

    ``<target dev>`` is the name libvirt gives the macvlan in the host before moving it into
    the container; made where it belongs, it has no host name, so the element is kept and
    written back, not applied. In ``passthrough`` mode the macvlan takes the host link's MAC,
    and a ``<mac>`` given is set on the host link itself (as libvirt does); the kernel gives
    the link its own MAC back when the macvlan goes, which :func:`unplumb` makes happen at
    once. Without ``<mac>`` the guest has the link's MAC.
    """
    lower_name = iface.source or ""
    mode = iface.direct_mode or "vepa"  # libvirt's default
    passthru = mode == "passthrough"
    addresses = [(ip.address, nic_prefix(ip)) for ip in iface.ips]
    routes = [(f"{r.address}/{r.prefix}", r.gateway) for r in iface.routes]

    def job(_ipr: Any) -> tuple[int, str]:
        r = host.rtnl_here()
        lower = r.link(lower_name)
        if lower is None:
            raise InvalidOperation(
                f"{domain.name}: interface {index + 1}: <source dev='{lower_name}'> does not "
                "exist in the host"
            )
        r.create_macvlan(
            guest_if, lower[0], guest_fd, mode=mode, mac=None if passthru else mac, mtu=iface.mtu
        )
        link = guest.index(guest_if)
        try:
            if passthru and iface.mac:
                guest.set_mac(link, iface.mac, what=guest_if)
            for address, prefix in addresses:
                guest.add_address(link, address, prefix, what=guest_if)
            guest.set_up(link, what=guest_if)
            for dst, via in routes:
                guest.add_route(dst, gateway=via, oif=link)
            return link, guest.mac(guest_if)
        except BaseException:
            with contextlib.suppress(Exception):
                guest.delete(link)
            raise

    link, actual = await host.worker.call(job, deliver=True)
    undo.push(f"macvlan {guest_if}", partial(host.worker.call, lambda _: guest.delete(link)))
    return PlumbedNic(
        index,
        iface.type,
        "macvlan",
        lower_name,
        guest_if,
        actual,
        owner_key(guest_key(domain), index),
        tuple(f"{a}/{p}" for a, p in addresses),
        guest_index=link,
    )


async def _lend(
    host: HostNet,
    guest: Rtnl,
    guest_fd: int,
    guest_netns: str,
    domain: Domain,
    index: int,
    hostdev: HostdevNet,
    undo: UndoStack,
) -> PlumbedNic:
    """``<hostdev mode='capabilities' type='net'>``: move the host's NIC into the guest's
    namespace under the same name (libvirt's LXC driver keeps the name too), then give it the
    guest's ``<ip>``s (natural prefix, ``peer``) and ``<route>``s and bring it up, in one hop
    to the worker. Its state in the host (MAC, MTU, up, addresses, bridge) is recorded first:
    :func:`unplumb` moves it back and restores that, at stop, after a crash and in the
    clean-up after a restart. Moving it is what takes it off the host's network: its
    addresses and routes there go with the move."""
    name = hostdev.interface
    where = f"{domain.name}: <hostdev> {index + 1} (<interface>{name}</interface>)"
    addresses = [(ip.address, nic_prefix(ip), ip.peer) for ip in hostdev.ips]
    routes = [(f"{r.address}/{r.prefix}", r.gateway) for r in hostdev.routes]

    def job(ipr: Any) -> PlumbedNic:
        r = host.rtnl_here()
        found = r.link(name)
        if found is None:
            raise InvalidOperation(
                f"{where}: no such interface in the host (lent to another guest?)"
            )
        state = _host_state(ipr, found[0])
        r.move(found[0], guest_fd, what=name)
        try:
            link = guest.index(name)
        except BaseException:
            raise RuntimeFailure(f"{where}: moved into the guest, and not found there") from None
        nic = PlumbedNic(
            index,
            "hostdev",
            "hostdev",
            name,
            name,
            state["mac"],
            f"{owner_key(guest_key(domain), index)}/hostdev",
            tuple(f"{a}/{p}" for a, p, _ in addresses),
            guest_index=link,
            **{k: v for k, v in state.items() if k != "mac"},
        )
        try:
            for address, prefix, peer in addresses:
                guest.add_address(link, address, prefix, peer=peer, what=name)
            guest.set_up(link, what=name)
            for dst, via in routes:
                guest.add_route(dst, gateway=via, oif=link)
        except BaseException:
            with contextlib.suppress(Exception):
                _give_back(ipr, host, guest_netns, nic)
            raise
        return nic

    nic = await host.worker.call(job, deliver=True)
    undo.push(
        f"return {name} to the host",
        partial(host.worker.call, partial(_give_back, host=host, path=guest_netns, nic=nic)),
    )
    return nic


def _host_state(ipr: Any, index: int) -> dict[str, Any]:
    """What a lent NIC is in the host, to restore it so (pyroute2: a rare path)."""
    (link,) = ipr.link("get", index=index)
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    master_index = link.get_attr("IFLA_MASTER")
    master = None
    if master_index:
        (up,) = ipr.link("get", index=master_index)
        master = up.get_attr("IFLA_IFNAME")
    addresses = []
    for a in ipr.get_addr(index=index):
        local = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        remote = a.get_attr("IFA_ADDRESS")
        if local is None or ipaddress.ip_address(local).is_link_local:
            continue
        text = f"{local}/{a['prefixlen']}"
        if remote is not None and remote != local:
            text += f" peer {remote}"
        addresses.append(text)
    return {
        "mac": str(link.get_attr("IFLA_ADDRESS")),
        "link_kind": str(kind) if kind is not None else None,
        "restore_mtu": int(link.get_attr("IFLA_MTU")),
        "restore_up": bool(link["flags"] & 1),
        "restore_addresses": tuple(addresses),
        "restore_master": str(master) if master is not None else None,
    }


def _give_back(_ipr: Any, host: HostNet, path: str, nic: PlumbedNic) -> None:
    """Move a lent NIC from the guest's namespace back to the host's, under its own name, and
    restore its MAC, MTU, addresses, bridge and up state.

    It is found by its index in the guest (the guest may have renamed it) and moved only if it
    is still of the kind it was (else what the guest made under that index would go to the
    host). A name taken in the host meanwhile: it comes back as ``lentN`` (logged).
    """
    if nic.guest_index is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeFailure(
            f"{nic.host_if}: the guest's namespace is gone, and the interface with it (a "
            "physical NIC is then in the first namespace)"
        ) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        g = nsutil.run_in_netns(fd, Rtnl)
        try:
            found = g.link_by_index(nic.guest_index)
            if found is None:
                raise RuntimeFailure(f"{nic.host_if}: no longer in the guest's namespace")
            if found[1] != nic.link_kind:
                raise RuntimeFailure(
                    f"{nic.host_if}: link {nic.guest_index} in the guest is a "
                    f"{found[1] or 'physical'} device, not the {nic.link_kind or 'physical'} "
                    "one lent: left there"
                )
            r = host.rtnl_here()
            name = nic.host_if
            if r.link(name) is not None:
                # not a name with the prefix: `vsv gc` would take it for a leftover of ours
                name = next(n for k in range(100) if r.link(n := f"lent{k}") is None)
                log.warning(
                    "%s is taken in the host: the lent NIC comes back as %s", nic.host_if, name
                )
            g.move(nic.guest_index, home, name=name, what=nic.host_if)
        finally:
            g.close()
    finally:
        os.close(fd)
        os.close(home)
    _restore(host, name, nic)


def _restore(host: HostNet, name: str, nic: PlumbedNic) -> None:
    """A NIC back in the host gets its MAC, MTU, addresses, bridge and up state again."""
    r = host.rtnl_here()
    index = r.index(name)
    if nic.mac and r.mac(name) != nic.mac:
        r.set_mac(index, nic.mac, what=name)
    master = r.link(nic.restore_master) if nic.restore_master is not None else None
    r.set_link(index, mtu=nic.restore_mtu, master=master[0] if master else None, what=name)
    for text in nic.restore_addresses:
        cidr, _, peer = text.partition(" peer ")
        a = ipaddress.ip_interface(cidr)
        with contextlib.suppress(ConflictError):
            r.add_address(index, str(a.ip), a.network.prefixlen, peer=peer or None, what=name)
    if nic.restore_up:
        r.set_up(index, what=name)


async def _plumb_vserver(
    host: HostNet,
    guest: Rtnl,
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

    def guest_side(_ipr: Any) -> None:
        link = guest.index(guest_if)
        for ip in iface.ips:
            guest.add_address(link, ip.address, ip.prefix or 32, what=guest_if)
        guest.set_up(link, what=guest_if)
        if index == 0:
            guest.add_route("default", oif=link)

    await w.call(guest_side)
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


def _remove_in_guest(_ipr: Any, path: str, nics: list[PlumbedNic]) -> None:
    """Delete the guest-side devices (macvlans) in the guest's namespace, by their index
    there (the guest may have renamed them); gone already is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the namespace went, and its devices with it
    try:
        r = nsutil.run_in_netns(fd, Rtnl)
    finally:
        os.close(fd)
    try:
        for nic in nics:
            if nic.mode == "macvlan" and nic.guest_index is not None:
                try:
                    r.delete(nic.guest_index)
                except RuntimeFailure as exc:
                    if getattr(exc, "code", None) != errno.ENODEV:
                        raise
    finally:
        r.close()


async def _release(book: AddressBook, owner: str) -> None:
    book.state = book.state.release(owner)


async def _reserve(
    running: RunningNetwork | None, owner: str, host: DhcpHost, undo: UndoStack
) -> None:
    """Hand a guest's address to dnsmasq (a live reservation), with its undo."""
    assert running is not None
    await running.add_host(owner, host)
    undo.push(f"reservation {owner}", partial(_remove_host, running, owner))


async def _remove_host(running: RunningNetwork, owner: str) -> None:
    await running.remove_host(owner)


async def unplumb(
    host: HostNet,
    nics: tuple[PlumbedNic, ...],
    networks: Mapping[str, RunningNetwork],
    book: AddressBook,
    *,
    guest_netns: str | None = None,
) -> None:
    """Remove what :func:`plumb` made (host ends, tables, guards, reservations, allocations).

    ``guest_netns``: the guest's namespace while it still exists, where the devices that live
    in it (macvlans) are removed at once rather than when the namespace is freed.
    Idempotent: links already gone with the guest's namespace are fine. Runs shielded so a
    cancelled caller cannot leave a half-removed guest.
    """
    errors = []
    with trio.CancelScope(shield=True):
        inside = [nic for nic in nics if nic.mode == "macvlan"]
        if inside and guest_netns is not None:
            try:
                await host.worker.call(partial(_remove_in_guest, path=guest_netns, nics=inside))
            except Exception as exc:
                errors.append(f"{guest_netns}: {exc}")
        for nic in nics:
            if nic.mode != "hostdev":
                continue
            if guest_netns is None:
                errors.append(f"{nic.host_if}: lent to the guest, and no namespace to take it from")
                continue
            try:
                await host.worker.call(partial(_give_back, host=host, path=guest_netns, nic=nic))
            except Exception as exc:
                errors.append(f"giving {nic.host_if} back: {exc}")
        for nic in reversed(nics):
            if nic.guest_index is not None:  # in the guest's namespace (done above): host_if
                continue  # names the host's link, not the supervisor's to remove
            try:
                if nic.fdb:
                    await host.worker.call(
                        partial(_forget_port_mac, host=host, name=nic.host_if, mac=nic.mac)
                    )
                await host.worker.call(partial(netlink.delete_link, name=nic.host_if))
                if nic.table is not None:
                    await nftables.delete(host.netns, nic.table)
                # the port's guard goes after the port (a network that stopped took its table)
                guard = nic_guard(nic)
                if nic.guard_table is not None:
                    await nftables.delete(host.netns, nic.guard_table, "bridge")
                elif guard is not None and nic.network is not None and nic.network in networks:
                    table = networks[nic.network].guard
                    if table is not None:
                        await _remove_port(host, table, guard)
            except Exception as exc:
                errors.append(f"{nic.host_if}: {exc}")
            if nic.network is not None and nic.network in networks:
                await networks[nic.network].remove_host(nic.owner)
            book.state = book.state.release(nic.owner)
    if errors:
        raise RuntimeFailure("unplumbing incomplete: " + "; ".join(errors))
