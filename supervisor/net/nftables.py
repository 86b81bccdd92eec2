"""nftables rule sets: one table of its own per network and per isolated guest NIC.

A table per object (named ``<prefix>_<owner>``) rather than chains in a shared table means that
starting or stopping one network is one atomic ``nft -f`` transaction that cannot disturb another
network's rules or the administrator's own tables, that "the table exists exactly while the
network runs" can be checked with ``nft list tables``, and that a leak check finds leftovers by
prefix. The text generators are pure; :func:`apply` and :func:`delete` are the thin edge.

A network has two tables of the same name: ``inet`` (forwarding and NAT, :func:`network_ruleset`)
and ``bridge`` (anti-spoofing on the guests' bridge ports, :func:`antispoof_ruleset`). The
bridge table's rules never change while the network runs; what a port may send lives in its sets
(:class:`PortGuard` -> :func:`port_elements`), which change as guests come and go, in one
netlink transaction each (:class:`Nfnl`, the same batch ``nft -f`` would send, without starting a
program on a guest's start path), and as dnsmasq leases addresses (:func:`lease_hook_script`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence

import attrs

from supervisor.errors import RuntimeFailure
from supervisor.model import Network
from supervisor.net.rtnl import attr, attr_str
from supervisor.net.runner import run_checked

NFT = "/usr/sbin/nft"

#: local multicast and broadcast are never masqueraded (they must keep their source)
_NO_MASQ4 = ("224.0.0.0/24", "255.255.255.255/32")


def _q(name: str) -> str:
    """An interface name as an nft string literal."""
    return '"' + name.replace('"', "") + '"'


def _subnets(network: Network) -> list[tuple[str, str]]:
    """(nft address keyword, subnet) for every ``<ip>`` of the network."""
    out = []
    for ip in network.ips:
        iface = ipaddress.ip_interface(f"{ip.address}/{ip.prefix}")
        out.append(("ip" if iface.version == 4 else "ip6", str(iface.network)))
    return out


def network_ruleset(table: str, network: Network, bridge: str) -> str | None:
    """The table for a network, or None when its mode adds no rules (``open``, ``bridge``).

    - isolated (no ``<forward>``): traffic stays between the bridge's ports, nothing is forwarded
      in or out;
    - ``route``: the subnets are forwarded both ways, unchanged;
    - ``nat``: outgoing traffic from the IPv4 subnets is masqueraded (or SNATed to the
      ``<nat><address>`` range), and only replies come back in.
    """
    fwd = network.forward
    if fwd is not None and fwd.mode in ("open", "bridge"):
        return None
    br = _q(bridge)
    out_dev = f" oifname {_q(fwd.dev)}" if fwd is not None and fwd.dev else ""
    in_dev = f" iifname {_q(fwd.dev)}" if fwd is not None and fwd.dev else ""
    lines = [
        f"table inet {table} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    iifname {br} oifname {br} accept",
    ]
    if fwd is not None:
        for kw, net in _subnets(network):
            lines.append(f"    iifname {br}{out_dev} {kw} saddr {net} accept")
            if fwd.mode == "nat" and kw == "ip":
                lines.append(
                    f"    oifname {br}{in_dev} {kw} daddr {net} ct state established,related accept"
                )
            else:
                lines.append(f"    oifname {br}{in_dev} {kw} daddr {net} accept")
    lines += [f"    iifname {br} reject", f"    oifname {br} reject", "  }"]
    if fwd is not None and fwd.mode == "nat":
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat;"]
        for kw, net in _subnets(network):
            if kw != "ip":
                continue  # libvirt does not NAT IPv6 either
            for keep in _NO_MASQ4:
                lines.append(f"    ip saddr {net} ip daddr {keep} return")
            target = "masquerade"
            ports = ""
            if fwd.nat_ports is not None:
                ports = f":{fwd.nat_ports.start}-{fwd.nat_ports.end}"
            if fwd.nat_addresses:
                first = fwd.nat_addresses[0]
                target = f"snat ip to {first.start}-{first.end}"
            if ports:
                for proto in ("tcp", "udp"):
                    tgt = f"masquerade to {ports}" if target == "masquerade" else target + ports
                    lines.append(
                        f"    ip saddr {net} ip daddr != {net}{out_dev} meta l4proto {proto} {tgt}"
                    )
            lines.append(f"    ip saddr {net} ip daddr != {net}{out_dev} {target}")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def guard_ruleset(table: str, host_if: str, addresses: list[str]) -> str:
    """The anti-spoofing table for an IP-isolated (``vserver``) guest NIC.

    Hooked at prerouting with raw priority, before routing and conntrack, so a packet the guest
    sends from any source that is not one of its own addresses is dropped whether it was meant
    for the host or for the outside. The drop rule counts, so tests (and ``nft list``) can see
    that forged packets were caught.
    """
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    dev = _q(host_if)
    lines = [
        f"table inet {table} {{",
        "  chain guard {",
        "    type filter hook prerouting priority raw; policy accept;",
    ]
    if v4:
        lines.append(f"    iifname {dev} ip saddr {{ {', '.join(v4)} }} accept")
    if v6:
        lines.append(f"    iifname {dev} ip6 saddr {{ {', '.join(v6)} }} accept")
        # neighbour discovery from the link-local address is needed for IPv6 to work at all
        lines.append(f"    iifname {dev} ip6 saddr fe80::/10 meta l4proto ipv6-icmp accept")
    lines += [f"    iifname {dev} counter drop", "  }", "}"]
    return "\n".join(lines) + "\n"


def replace_script(table: str, ruleset: str, family: str = "inet") -> str:
    """``nft -f`` input that atomically replaces the table (creating it first if missing)."""
    return f"table {family} {table}\ndelete table {family} {table}\n{ruleset}"


async def apply(netns: str | None, table: str, ruleset: str) -> None:
    """Load (or replace) a table in the namespace, atomically."""
    await apply_script(netns, replace_script(table, ruleset))


async def apply_script(netns: str | None, script: str) -> None:
    """Run an ``nft -f`` script in the namespace: one transaction, all of it or nothing."""
    await run_checked(netns, [NFT, "-f", "-"], stdin=script)


async def delete(netns: str | None, table: str, family: str = "inet") -> bool:
    """Remove a table; False if it was not there (stopping twice is not an error)."""
    try:
        await run_checked(netns, [NFT, "delete", "table", family, table])
    except RuntimeFailure as exc:
        if "No such file" in str(exc):
            return False
        raise
    return True


async def list_tables(netns: str | None) -> list[str]:
    """Names of the ``inet`` tables in the namespace."""
    text = await run_checked(netns, [NFT, "list", "tables", "inet"])
    return [line.split()[-1] for line in text.splitlines() if line.startswith("table inet ")]


async def drop_count(netns: str | None, table: str) -> int:
    """Packets counted by the guard table's drop rule."""
    text = await run_checked(netns, [NFT, "list", "table", "inet", table])
    for line in text.splitlines():
        if "counter packets" in line and line.strip().endswith("drop"):
            words = line.split()
            return int(words[words.index("packets") + 1])
    return 0


# ---------------------------------------------------------------------------- anti-spoofing
#
# One ``bridge`` table per network (and one per NIC on a bridge the supervisor does not own),
# hooked at the bridge's prerouting: every frame a guest's port hands to the bridge, whether it
# is forwarded to another port or delivered to the host, before the bridge learns its source MAC.
# The rules are fixed; the per-port facts are set elements, so plumbing a NIC adds elements and
# changes no rule. The raw payload forms (``@ll``, ``@nh``, ``@th``) let one set serve several
# lookups: a port's MAC is checked as the frame's source, the ARP sender and the DHCP client
# address, and a port's IPv6 address as the source and as the target of a neighbour advertisement.

#: what libvirt's clean-traffic lets through: IPv4, ARP, RARP (qemu's announce-self)
_ETHERTYPES_CLEAN = "{ ip, arp, 0x8035 }"


@attrs.frozen
class GuardSet:
    """One set of a guard table: its declaration and the kinds of its key's fields."""

    name: str
    declaration: str
    fields: tuple[str, ...]
    comment: str


GUARD_SETS: tuple[GuardSet, ...] = (
    GuardSet("ports", "type ifname", ("ifname",), "guarded ports"),
    GuardSet("port_mac", "typeof iifname . @ll,48,48", ("ifname", "mac48"), "port . its MAC"),
    GuardSet("strict", "type ifname", ("ifname",), "clean-traffic ports: IPv4, ARP, RARP only"),
    GuardSet("unchecked", "type ifname", ("ifname",), "ports whose addresses cannot be known"),
    GuardSet("addr4", "type ifname . ipv4_addr", ("ifname", "ipv4"), "port . IPv4 source"),
    GuardSet("addr6", "typeof iifname . @nh,64,128", ("ifname", "ipv6"), "port . IPv6 source"),
    GuardSet(
        "lease4",
        "type ether_addr . ipv4_addr; flags timeout",
        ("mac", "ipv4"),
        "dnsmasq's IPv4 leases: MAC . address",
    ),
    GuardSet(
        "lease6",
        "typeof ether saddr . @nh,64,128; flags timeout",
        ("mac", "ipv6"),
        "dnsmasq's IPv6 leases: MAC . address",
    ),
)
_SETS_BY_NAME = {s.name: s for s in GUARD_SETS}

#: the chains (after the set declarations); the comments name what a counted drop caught
_GUARD_CHAINS = f"""\
  chain prerouting {{
    type filter hook prerouting priority filter; policy accept;
    iifname @ports jump port
  }}
  chain postrouting {{
    type filter hook postrouting priority filter; policy accept;
    oifname @strict ether type != {_ETHERTYPES_CLEAN} counter drop comment "clean-traffic in"
  }}
  chain port {{
    iifname . @ll,48,48 != @port_mac counter drop comment "source MAC"
    ether type {{ 8021q, 8021ad }} counter drop comment "VLAN tag"
    iifname @strict ether type != {_ETHERTYPES_CLEAN} counter drop comment "clean-traffic out"
    ether type arp jump arp_out
    ether type ip jump ipv4_out
    ether type ip6 jump ipv6_out
  }}
  chain arp_out {{
    arp htype . arp ptype . arp hlen . arp plen != {{ 1 . ip . 6 . 4 }} counter drop \
comment "ARP format"
    arp operation != {{ request, reply }} counter drop comment "ARP operation"
    iifname . @nh,64,48 != @port_mac counter drop comment "ARP sender MAC"
    arp saddr ip 0.0.0.0 accept
    iifname @unchecked accept
    iifname . arp saddr ip @addr4 accept
    ether saddr . arp saddr ip @lease4 accept
    counter drop comment "ARP sender address"
  }}
  chain ipv4_out {{
    udp sport 67 counter drop comment "DHCP server"
    udp dport 67 jump dhcp_out
    ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
    iifname @unchecked accept
    iifname . ip saddr @addr4 accept
    ether saddr . ip saddr @lease4 accept
    counter drop comment "IPv4 source"
  }}
  chain dhcp_out {{
    iifname . @th,288,48 @port_mac return
    counter drop comment "DHCP client MAC"
  }}
  chain ipv6_out {{
    icmpv6 type {{ nd-router-advert, nd-redirect, router-renumbering }} counter drop \
comment "router message"
    udp sport 547 counter drop comment "DHCPv6 server"
    ip6 saddr :: ip6 daddr ff02::/16 icmpv6 type {{ nd-neighbor-solicit, mld-listener-report, \
mld2-listener-report }} accept
    iifname @unchecked accept
    icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @addr6 \
ether saddr . @th,64,128 != @lease6 counter drop comment "NA target"
    iifname . @nh,64,128 @addr6 accept
    ether saddr . @nh,64,128 @lease6 accept
    counter drop comment "IPv6 source"
  }}
"""


def _mac_raw(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def eui64_address(prefix: str, mac: str) -> str:
    """The modified EUI-64 (SLAAC) address of ``mac`` in the /64 of ``prefix`` (an address or a
    network, with or without its length; ``fe80::/64``: link-local).

    Bytes and ``inet_ntop`` rather than :mod:`ipaddress`: this runs on a guest's start path,
    where the objects cost tens of microseconds per NIC.
    """
    raw = bytearray(_mac_raw(mac))
    raw[0] ^= 0x02
    net = socket.inet_pton(socket.AF_INET6, prefix.split("/", 1)[0])[:8]
    return socket.inet_ntop(socket.AF_INET6, net + raw[:3] + b"\xff\xfe" + raw[3:])


def _address_text(address: str) -> str:
    """An address given with or without its prefix length, as ``inet_ntop`` writes it."""
    host = address.split("/", 1)[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, host))


def guard_addresses(mac: str, known: Iterable[str], network: Network | None) -> tuple[str, ...]:
    """Every source a guest NIC may use besides its leases, without duplicates: the addresses
    known for it (static or reserved, with or without a prefix length), its link-local address
    and its SLAAC address in each /64 of the network (both derived from the MAC)."""
    out = [_address_text(a) for a in known]
    out.append(eui64_address("fe80::", mac))
    for ip in network.ips if network is not None else ():
        if ip.prefix == 64 and ":" in ip.address:
            out.append(eui64_address(ip.address, mac))
    return tuple(dict.fromkeys(out))


@attrs.frozen
class PortGuard:
    """What one guarded bridge port may send (pure data; the set elements follow from it).

    ``check_ip`` False: the guest's addresses cannot be known (a bridge the supervisor does not
    own, a NIC without ``<ip>``): its MAC, ARP sender MAC, DHCP client MAC and router/DHCP server
    messages are checked, its IP sources are not. ``strict``: libvirt's ``clean-traffic``, which
    also keeps everything but IPv4, ARP and RARP off the port, both ways.
    """

    port: str
    mac: str
    addresses: tuple[str, ...] = ()
    check_ip: bool = True
    strict: bool = False


#: (set name, key fields) of one set element
Element = tuple[str, tuple[str, ...]]


def port_elements(guard: PortGuard) -> list[Element]:
    """The set elements that describe one guarded port."""
    port = guard.port
    out: list[Element] = [("ports", (port,)), ("port_mac", (port, guard.mac))]
    if guard.strict:
        out.append(("strict", (port,)))
    if not guard.check_ip:
        out.append(("unchecked", (port,)))
    for address in guard.addresses:
        family = "addr6" if ":" in address else "addr4"  # canonical text (guard_addresses)
        out.append((family, (port, address)))
    return out


def _field_text(kind: str, value: str) -> str:
    if kind == "ifname":
        return _q(value)
    if kind == "mac48":
        return "0x" + _mac_raw(value).hex()
    if kind == "ipv6":
        return "0x" + ipaddress.IPv6Address(value).packed.hex()
    return value  # ipv4, mac: as nft writes them


def _field_bytes(kind: str, value: str) -> bytes:
    if kind == "ifname":
        return value.encode().ljust(16, b"\0")  # IFNAMSIZ, NUL padded, as nft stores it
    if kind in ("mac48", "mac"):
        return bytes.fromhex(value.replace(":", ""))
    # inet_pton, not ipaddress: this runs on a guest's start path
    return socket.inet_pton(socket.AF_INET6 if kind == "ipv6" else socket.AF_INET, value)


def element_text(element: Element) -> str:
    """An element as ``nft`` reads it in a set's ``elements = { ... }``."""
    spec = _SETS_BY_NAME[element[0]]
    return " . ".join(_field_text(k, v) for k, v in zip(spec.fields, element[1], strict=True))


def element_key(element: Element) -> bytes:
    """An element's key as the kernel stores it: fields of a concatenation padded to 4 bytes."""
    spec = _SETS_BY_NAME[element[0]]
    parts = [_field_bytes(k, v) for k, v in zip(spec.fields, element[1], strict=True)]
    if len(parts) == 1:
        return parts[0]
    return b"".join(p + b"\0" * (-len(p) % 4) for p in parts)


def antispoof_ruleset(table: str, guards: Iterable[PortGuard] = ()) -> str:
    """The anti-spoofing table of a network (or of one NIC on a bridge the supervisor does not
    own), with the elements of ``guards``.

    From a guarded port, only: frames from the port's MAC, untagged; ARP requests and replies
    whose sender is the port's MAC and one of the guest's addresses (or 0.0.0.0, a probe); IPv4
    from its addresses, and DHCP from 0.0.0.0 before it has one, asking for its own MAC; IPv6
    from its link-local address (derived from the MAC) and its other addresses, DAD and MLD
    from ``::``, neighbour advertisements only for its own addresses. Never router
    advertisements, redirects or DHCP/DHCPv6 server messages. "Its addresses" are the port's
    ``addr4``/``addr6`` elements and the leases dnsmasq holds for its MAC (``lease4``,
    ``lease6``, kept by :func:`lease_hook_script`). Counted drops carry a comment naming what
    they caught (:func:`counters`).
    """
    elements: dict[str, list[str]] = {s.name: [] for s in GUARD_SETS}
    for guard in guards:
        for element in port_elements(guard):
            elements[element[0]].append(element_text(element))
    lines = [f"table bridge {table} {{"]
    for spec in GUARD_SETS:
        lines.append(f"  set {spec.name} {{")
        lines.append(f'    {spec.declaration}; comment "{spec.comment}"')
        if elements[spec.name]:
            lines.append(f"    elements = {{ {', '.join(elements[spec.name])} }}")
        lines.append("  }")
    return "\n".join(lines) + "\n" + _GUARD_CHAINS + "}\n"


def antispoof_reload_script(table: str, guards: Iterable[PortGuard] = ()) -> str:
    """``nft -f`` input that loads the rules of a guard table again but keeps its elements.

    For a network taken over from a previous supervisor: its guests' ports stay guarded through
    the takeover (the elements are there), dnsmasq's leases stay, and the rules become this
    version's, in one transaction. A table that is missing is created.
    """
    return f"add table bridge {table}\nflush table bridge {table}\n" + antispoof_ruleset(
        table, guards
    )


# ---- set elements over nfnetlink: a guest's start path runs no program -----------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFPROTO_BRIDGE = 7
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = NFTA_SET_ELEM_KEY = NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NFNL_TIMEOUT = 5.0  # seconds

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")


def _nfmsg(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    payload = _NFGENMSG.pack(family, 0, socket.htons(res_id)) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload


def _setelem(op: int, table: str, set_name: str, keys: Sequence[bytes], seq: int) -> bytes:
    nested = NLA_F_NESTED
    items = b"".join(
        attr(NFTA_LIST_ELEM | nested, attr(NFTA_SET_ELEM_KEY | nested, attr(NFTA_DATA_VALUE, k)))
        for k in keys
    )
    body = (
        attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        + attr_str(NFTA_SET_ELEM_LIST_SET, set_name)
        + attr(NFTA_SET_ELEM_LIST_ELEMENTS | nested, items)
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if op == NFT_MSG_NEWSETELEM else 0)
    return _nfmsg((NFNL_SUBSYS_NFTABLES << 8) | op, flags, seq, NFPROTO_BRIDGE, 0, body)


def _by_set(elements: Iterable[Element]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for element in elements:
        out.setdefault(element[0], []).append(element_key(element))
    return out


def elements_batch(
    table: str, add: Iterable[Element], remove: Iterable[Element], seq: int
) -> tuple[bytes, list[int]]:
    """One nf_tables transaction (a batch, as ``nft -f`` sends) that removes then adds elements
    of a bridge table; returns the datagram and the sequence numbers that will be acknowledged.

    A removal is an add followed by a delete of the same element, so an element that is not
    there (a NIC unplumbed twice, a table reloaded meanwhile) cannot fail the transaction; an
    add of an element that is there is no error either. So every change is idempotent.
    """
    msgs = [_nfmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b"")]
    acked: list[int] = []
    ops = [(NFT_MSG_NEWSETELEM, s, k) for s, k in _by_set(remove).items()]
    ops = [op for new in ops for op in (new, (NFT_MSG_DELSETELEM, new[1], new[2]))]
    ops += [(NFT_MSG_NEWSETELEM, s, k) for s, k in _by_set(add).items()]
    for op, set_name, keys in ops:
        seq += 1
        msgs.append(_setelem(op, table, set_name, keys, seq))
        acked.append(seq)
    seq += 1
    msgs.append(_nfmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b""))
    return b"".join(msgs), acked


def parse_acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno; 0 is success) of every acknowledgement in a datagram."""
    out = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            out.append((seq, -struct.unpack_from("=i", data, pos + _NLMSGHDR.size)[0]))
        pos += (length + 3) & ~3
    return out


class Nfnl:
    """A blocking nfnetlink socket in the namespace it was opened in (one user at a time).

    The supervisor keeps one in the host namespace's netlink worker: a guest's port enters or
    leaves its network's guard table in one transaction of tens of microseconds, where an
    ``nft`` process costs milliseconds.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        self._sock.bind((0, 0))
        self._sock.settimeout(NFNL_TIMEOUT)
        self._seq = 0

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def update(
        self, table: str, *, add: Iterable[Element] = (), remove: Iterable[Element] = ()
    ) -> None:
        """Remove then add elements of bridge table ``table``, atomically (see
        :func:`elements_batch`); RuntimeFailure naming the table when the kernel refuses."""
        add, remove = list(add), list(remove)
        if not add and not remove:
            return
        data, acked = elements_batch(table, add, remove, self._seq + 1)
        self._seq = acked[-1] + 1
        waiting = set(acked)
        failed: list[int] = []
        try:
            self._sock.send(data)
            while waiting:
                for seq, code in parse_acks(self._sock.recv(1 << 16)):
                    if seq in waiting:
                        waiting.discard(seq)
                        if code:
                            failed.append(code)
        except OSError as exc:
            raise RuntimeFailure(f"nft table bridge {table}: {exc}") from exc
        if failed:
            code = failed[0]
            hint = " (is the table loaded?)" if code == errno.ENOENT else ""
            raise RuntimeFailure(f"nft table bridge {table}: {os.strerror(code)}{hint}")


# ---- following dnsmasq's leases --------------------------------------------------------------


#: the hook's text; ``@PYTHON@``, ``@TABLE@`` and ``@NFT@`` are filled in
_LEASE_HOOK = r"""#!@PYTHON@ -IS
# generated by vsupervisor: dnsmasq's dhcp-script for one network; edits are overwritten.
# Lets a leased address through the anti-spoofing table (bridge @TABLE@) for the MAC that
# holds it, until the lease ends; takes it out when dnsmasq drops the lease.
import ipaddress
import os
import re
import subprocess
import sys
import time

TABLE = "@TABLE@"
NFT = "@NFT@"


def main(argv):
    if len(argv) < 4 or argv[1] not in ("add", "old", "del"):
        return 0  # "init", "tftp", "arp-*": nothing to do
    try:
        addr = ipaddress.ip_address(argv[3])
    except ValueError:
        return 0
    # DHCPv4 gives the MAC; DHCPv6 the IAID, and the MAC in the environment when it is known
    mac = (argv[2] if addr.version == 4 else os.environ.get("DNSMASQ_MAC", "")).lower()
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        return 0  # not an Ethernet MAC: no guarded port can send from it
    if addr.version == 4:
        key = "lease4 { %s . %s" % (mac, addr)
    else:
        key = "lease6 { %s . 0x%s" % (mac, addr.packed.hex())
    element = "element bridge %s %s" % (TABLE, key)
    # add then delete: the delete cannot fail on a missing element; the add that follows sets
    # the timeout again (adding an element that is there would keep its old one)
    script = ["add %s }" % element, "delete %s }" % element]
    if argv[1] != "del":
        try:
            remaining = int(os.environ.get("DNSMASQ_TIME_REMAINING") or 0)
            expires = int(os.environ.get("DNSMASQ_LEASE_EXPIRES") or 0)
        except ValueError:
            remaining = expires = 0
        left = remaining or (expires - int(time.time()) if expires else None)
        if left is None:  # an infinite lease
            script.append("add %s }" % element)
        elif left > 0:
            script.append("add %s timeout %ds }" % (element, left))
    done = subprocess.run(
        [NFT, "-f", "-"], input="\n".join(script) + "\n", capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.stderr.write("lease hook %s %s %s: %s\n" % (argv[1], mac, addr, done.stderr.strip()))
    return done.returncode


sys.exit(main(sys.argv))
"""


def lease_hook_script(table: str, python: str) -> str:
    """dnsmasq's ``dhcp-script`` for a network: keeps the guard table's lease sets in step.

    dnsmasq runs it for every lease it creates, renews (``script-on-renewal``), finds in its
    lease file when it starts ("old") and destroys (released or expired). The hook puts the
    (MAC, address) pair in ``lease4``/``lease6`` with the lease's remaining time as the element's
    timeout, or takes it out: one ``nft`` transaction per event. So a leased address is let
    through for the MAC that holds it exactly while the lease lasts, also while the supervisor is
    down or busy (the kernel drops an expired element by itself), and a dnsmasq that restarts
    replays its leases. Standard library only (``-I -S``): it starts in tens of milliseconds.
    ``table`` is a name :func:`supervisor.net.names.nft_table` made (letters, digits, ``_``).
    """
    if not table.replace("_", "").isalnum() or '"' in python or "\n" in python:
        raise ValueError(f"cannot write a lease hook for table {table!r} run by {python!r}")
    return _LEASE_HOOK.replace("@PYTHON@", python).replace("@TABLE@", table).replace("@NFT@", NFT)


async def counters(netns: str | None, table: str, family: str = "bridge") -> dict[str, int]:
    """Packets counted by each commented rule of a table (comment -> packets), for tests and
    for an administrator who asks what a guard dropped."""
    text = await run_checked(netns, [NFT, "list", "table", family, table])
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if "packets" in words and "comment" in line:
            comment = line.split("comment", 1)[1].strip().strip('"')
            out[comment] = out.get(comment, 0) + int(words[words.index("packets") + 1])
    return out
