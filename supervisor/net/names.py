"""Names and MAC addresses the network subsystem invents.

Generated names must be stable (the same guest gets the same host interface name and MAC on
every start, so firewall rules, leases and humans can follow it), must carry the configurable
prefix (so a leak check or a garbage collector can find every object the supervisor made), and
must fit the kernel's 15-byte limit for interface names. A collision (someone else already holds
the name or MAC) is resolved by asking again with the next ``attempt``: the result stays a pure
function of its inputs.
"""

from __future__ import annotations

import hashlib
import re

#: the kernel's IFNAMSIZ is 16 bytes including the terminating NUL
IFNAME_MAX = 15

_IFNAME_BAD = re.compile(r"[\s/:]")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _digest(*parts: str) -> bytes:
    """A stable digest of the parts (sha256 is stable across runs, unlike ``hash()``)."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


def check_ifname(name: str) -> str:
    """Return ``name`` if the kernel would accept it as an interface name, else raise ValueError."""
    raw = name.encode()
    if not raw or len(raw) > IFNAME_MAX or name in (".", "..") or _IFNAME_BAD.search(name):
        raise ValueError(
            f"invalid interface name {name!r}: 1..{IFNAME_MAX} bytes, no '/', ':' or spaces"
        )
    return name


def _shorten(prefix: str, body: str) -> str:
    """``prefix + body`` cut to the kernel limit; the prefix itself must leave room."""
    if len(prefix.encode()) > IFNAME_MAX - 4:
        raise ValueError(f"prefix {prefix!r} too long: at most {IFNAME_MAX - 4} bytes")
    return check_ifname((prefix + body).encode()[:IFNAME_MAX].decode(errors="ignore"))


def host_ifname(prefix: str, guest_key: str, index: int, attempt: int = 0) -> str:
    """The host end of guest NIC number ``index`` of the guest identified by ``guest_key``.

    ``guest_key`` is the domain's uuid when it has one, else its name. The index is kept
    readable at the end so ``ip link`` shows which NIC of a guest it is.
    """
    tag = _digest("host", guest_key, str(attempt)).hex()
    suffix = f"v{index}"
    room = IFNAME_MAX - len(prefix.encode()) - len(suffix)
    return _shorten(prefix, tag[: max(room, 1)] + suffix)


def bridge_name(prefix: str, network: str, attempt: int = 0) -> str:
    """A bridge name for a network whose XML names none: ``<prefix>br<hash>``."""
    tag = _digest("bridge", network, str(attempt)).hex()
    return _shorten(prefix, "br" + tag)


def nft_table(prefix: str, owner: str) -> str:
    """An nftables table name for a network or a guest NIC: ``<prefix>_<owner>``.

    nft identifiers allow letters, digits, ``_`` and ``.``; anything else becomes ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9_]", "_", owner)
    return f"{prefix}_{safe}"


def guest_ifname(index: int, guest_dev: str | None = None) -> str:
    """The guest end's name: ``<guest dev>`` if given, else eth0, eth1, ... by NIC index."""
    return check_ifname(guest_dev if guest_dev else f"eth{index}")


def guest_mac(guest_key: str, index: int, attempt: int = 0) -> str:
    """A locally administered unicast MAC, stable for (guest, NIC index, attempt).

    The first byte never is 0xFE: libvirt reserves that for the host side of tap devices and
    refuses such guest MACs.
    """
    raw = bytearray(_digest("mac", guest_key, str(index), str(attempt))[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast (bit 0 clear), locally administered (bit 1 set)
    if raw[0] == 0xFE:
        raw[0] = 0x02
    return ":".join(f"{b:02x}" for b in raw)


def bridge_mac(network_key: str) -> str:
    """A locally administered unicast MAC for a network's bridge, stable for its key (uuid).

    Without an address of its own a Linux bridge takes the lowest MAC of its ports, so the
    guests' gateway address would change whenever a guest with a lower one joins or leaves, and
    their ARP caches would point at an address no one answers for until they expire.
    """
    raw = bytearray(_digest("bridge-mac", network_key)[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    if raw[0] == 0xFE:
        raw[0] = 0x02
    return ":".join(f"{b:02x}" for b in raw)


def check_mac(mac: str) -> str:
    """Normalise a MAC (lower case) and refuse multicast ones and the 0xFE first byte."""
    norm = mac.lower()
    if not _MAC_RE.match(norm):
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex pairs like 52:54:00:..")
    first = int(norm[:2], 16)
    if first & 1:
        raise ValueError(f"MAC address {mac!r} is multicast; a NIC needs a unicast address")
    if first == 0xFE:
        raise ValueError(f"MAC address {mac!r} starts with 0xFE, which is reserved for host taps")
    return norm


def names_tap(prefix: str, target_dev: str | None) -> bool:
    """Whether ``<target dev>`` asks for a tap device (a VM-style guest) rather than a veth.

    The rule: the name, once the supervisor's prefix is taken off its front (if it is there),
    begins with ``tap``. So ``tap0`` (libvirt's habit) and ``<prefix>tap0`` both name taps; the
    prefixed form is preferred, since only names carrying the prefix are found by ``vsv gc``
    should a tap outlive its supervisor.
    """
    if not target_dev:
        return False
    rest = target_dev[len(prefix) :] if prefix and target_dev.startswith(prefix) else target_dev
    return rest.startswith("tap")


def tap_mac(guest_mac_address: str) -> str:
    """The host tap's MAC for a guest MAC: the same with first byte 0xFE (libvirt's rule)."""
    return "fe" + check_mac(guest_mac_address)[2:]
