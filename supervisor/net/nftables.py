"""nftables rule sets: one table of its own per network and per isolated guest NIC.

A table per object (named ``<prefix>_<owner>``) rather than chains in a shared table means that
starting or stopping one network is one atomic ``nft -f`` transaction that cannot disturb another
network's rules or the administrator's own tables, that "the table exists exactly while the
network runs" can be checked with ``nft list tables``, and that a leak check finds leftovers by
prefix. The text generators are pure; :func:`apply` and :func:`delete` are the thin edge.
"""

from __future__ import annotations

import ipaddress

from supervisor.errors import RuntimeFailure
from supervisor.model import Network
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


def replace_script(table: str, ruleset: str) -> str:
    """``nft -f`` input that atomically replaces the table (creating it first if missing)."""
    return f"table inet {table}\ndelete table inet {table}\n{ruleset}"


async def apply(netns: str | None, table: str, ruleset: str) -> None:
    """Load (or replace) a table in the namespace, atomically."""
    await run_checked(netns, [NFT, "-f", "-"], stdin=replace_script(table, ruleset))


async def delete(netns: str | None, table: str) -> bool:
    """Remove a table; False if it was not there (stopping twice is not an error)."""
    try:
        await run_checked(netns, [NFT, "delete", "table", "inet", table])
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
