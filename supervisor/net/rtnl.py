"""A minimal rtnetlink client on a raw socket, for the per-guest hot path of NIC plumbing.

pyroute2 0.9 runs every request through an asyncio event loop it creates per thread: opening an
``IPRoute`` costs 1-3 ms and each request 0.4-0.8 ms on the project's VM, while the kernel's
own work for a veth is a fraction of that. A guest start makes a handful of requests (create
the veth, address, link up, default route), so they go through this module instead: the
messages are packed with :mod:`struct` (pure functions, unit tested), sent on a blocking
``NETLINK_ROUTE`` socket and acknowledged one by one. A netlink socket belongs to the network
namespace its creator was in when it was made, so :class:`Rtnl` opened inside a guest's
namespace configures that namespace from any thread afterwards.

Everything that is not on a guest's start path (bridges, taps, dumps) stays with pyroute2 in
:mod:`supervisor.net.netlink`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from supervisor.errors import ConflictError, RuntimeFailure

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
#: bridge port flags (IFLA_BRPORT_*), set through the port's slave data
IFLA_BRPORT_LEARNING, IFLA_BRPORT_UNICAST_FLOOD, IFLA_BRPORT_ISOLATED = 8, 9, 33
AF_BRIDGE = 7
IFLA_MACVLAN_MODE = 1
#: libvirt's ``<source mode=>`` of a direct interface -> the kernel's macvlan mode
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthrough": 8}
NDA_LLADDR = 2
NTF_MASTER = 0x04
NUD_NOARP = 0x40  # a static forwarding entry: never ages out
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what pyroute2 gives routes, so both paths make the same ones
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
LO_INDEX = 1  # loopback is always ifindex 1 in a namespace
TIMEOUT = 5.0  # seconds
RECV_SIZE = 1 << 16

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_NLATTR = struct.Struct("=HH")


# ---- pure encoding ---------------------------------------------------------------------------


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (header, payload, padding to 4 bytes)."""
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def attr_str(kind: int, text: str) -> bytes:
    """A NUL-terminated string attribute (interface names, link kinds)."""
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    """A native-endian u32 attribute."""
    return attr(kind, struct.pack("=I", value))


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as six bytes."""
    return bytes(int(part, 16) for part in mac.split(":"))


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A request: netlink header (always REQUEST|ACK, so every request is answered) and body."""
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        + body
    )


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    """A ``struct ifinfomsg`` (family unspecified)."""
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def veth_body(
    host_if: str,
    guest_if: str,
    guest_ns_fd: int,
    *,
    mac: str | None,
    master: int | None,
    mtu: int | None,
    guest_mtu: int | None,
    up: bool = True,
) -> bytes:
    """RTM_NEWLINK body of a veth whose host end is enslaved, sized and up on creation.

    The peer (``guest_if``) is created directly in the guest's namespace, down; the kernel
    applies the host end's master and up flag in the same request, so one round trip replaces
    create + enslave + MTU + up. ``up`` False leaves the host end down: the guest's end then
    has no carrier (``<link state='down'>``: the cable unplugged, which the guest cannot undo).
    """
    peer = ifinfo() + attr_str(IFLA_IFNAME, guest_if) + attr_u32(IFLA_NET_NS_FD, guest_ns_fd)
    if mac:
        peer += attr(IFLA_ADDRESS, mac_bytes(mac))
    if guest_mtu:
        peer += attr_u32(IFLA_MTU, guest_mtu)
    info = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
    body = ifinfo(flags=IFF_UP if up else 0, change=IFF_UP) + attr_str(IFLA_IFNAME, host_if)
    if master is not None:
        body += attr_u32(IFLA_MASTER, master)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    return body + attr(IFLA_LINKINFO, info)


def macvlan_body(
    name: str, lower: int, ns_fd: int, *, mode: str, mac: str | None, mtu: int | None
) -> bytes:
    """RTM_NEWLINK body of a macvlan on link ``lower`` (an index in the sender's namespace),
    made directly in the namespace ``ns_fd`` under ``name``, down. In ``passthrough`` mode the
    kernel gives it the lower link's MAC whatever is asked (``mac`` is set afterwards)."""
    body = ifinfo() + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_LINK, lower)
    body += attr_u32(IFLA_NET_NS_FD, ns_fd)
    if mac:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    data = attr(IFLA_INFO_DATA, attr_u32(IFLA_MACVLAN_MODE, MACVLAN_MODES[mode]))
    return body + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "macvlan") + data)


def address_body(index: int, address: str, prefix: int, peer: str | None = None) -> bytes:
    """RTM_NEWADDR body: ``address/prefix`` on a link (no broadcast, as pyroute2 makes it).

    With ``peer`` (a point-to-point link, libvirt's ``<ip peer=>``) the kernel routes
    ``peer/prefix`` through the link rather than ``address/prefix``.
    """
    ip = ipaddress.ip_interface(f"{address}/{prefix}")
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDRMSG.pack(family, prefix, 0, RT_SCOPE_UNIVERSE, index)
    remote = ipaddress.ip_address(peer).packed if peer is not None else ip.ip.packed
    return body + attr(IFA_LOCAL, ip.ip.packed) + attr(IFA_ADDRESS, remote)


def route_body(dst: str, *, gateway: str | None, oif: int | None) -> bytes:
    """RTM_NEWROUTE body for the main table (``dst`` in CIDR form or ``default``)."""
    net = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_LINK if gateway is None and oif is not None else RT_SCOPE_UNIVERSE
    body = _RTMSG.pack(
        family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0
    )
    if net.prefixlen:
        body += attr(RTA_DST, net.network_address.packed)
    if gateway:
        body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if oif is not None:
        body += attr_u32(RTA_OIF, oif)
    return body


def port_flags_body(index: int, flags: dict[int, bool]) -> bytes:
    """RTM_NEWLINK body setting bridge port flags (``IFLA_BRPORT_*`` -> on/off) of a port."""
    data = b"".join(attr(kind, b"\1" if on else b"\0") for kind, on in sorted(flags.items()))
    info = attr_str(IFLA_INFO_SLAVE_KIND, "bridge") + attr(IFLA_INFO_SLAVE_DATA, data)
    return ifinfo(index) + attr(IFLA_LINKINFO, info)


def fdb_body(index: int, mac: str) -> bytes:
    """RTM_NEWNEIGH/RTM_DELNEIGH body: a static entry for ``mac`` in the forwarding table of
    the bridge that port ``index`` belongs to (``bridge fdb add MAC dev PORT master static``)."""
    return _NDMSG.pack(AF_BRIDGE, index, NUD_NOARP, NTF_MASTER, 0) + attr(
        NDA_LLADDR, mac_bytes(mac)
    )


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of a message body (type without flag bits -> payload); first one wins."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, pos)
        if length < _NLATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[pos + _NLATTR.size : pos + length])
        pos += _align(length)
    return out


def parse_reply(data: bytes, seq: int) -> tuple[int | None, bytes | None]:
    """What a datagram holds for request ``seq``: (errno or None, RTM_NEWLINK body or None).

    Every request asks for an acknowledgement, so the answer ends with an error message whose
    errno is 0 (success) or the failure; a lookup's RTM_NEWLINK comes before it, possibly in an
    earlier datagram. Messages of other sequence numbers (late answers) are skipped.
    """
    pos = 0
    code: int | None = None
    found: bytes | None = None
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            break
        body = data[pos + _NLMSGHDR.size : pos + length]
        if mseq == seq:
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
            elif kind == RTM_NEWLINK:
                found = body
        pos += _align(length)
    return code, found


class RtnlError(RuntimeFailure):
    """A request the kernel refused, with its errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---- the socket ------------------------------------------------------------------------------


class Rtnl:
    """A blocking rtnetlink socket bound to the namespace it was opened in.

    Not thread-safe: one user at a time (the supervisor uses it from one netlink worker job).
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self._sock.bind((0, 0))
        # an answer never takes long; a bound turns a lost one into an error instead of a
        # worker thread that waits forever
        self._sock.settimeout(TIMEOUT)
        self._seq = 0

    def close(self) -> None:
        """Close the socket (the namespace no longer needs to be entered to drop it)."""
        self._sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> bytes | None:
        """Send one request and wait for its answer; raises on a negative acknowledgement."""
        self._seq += 1
        seq = self._seq
        found: bytes | None = None
        try:
            self._sock.send(message(kind, flags, seq, body))
            while True:
                code, part = parse_reply(self._sock.recv(RECV_SIZE), seq)
                found = part if part is not None else found
                if code is not None:
                    break
        except OSError as exc:
            raise RtnlError(f"{what}: {exc}", exc.errno or errno.EIO) from exc
        if code == 0:
            return found
        if code == errno.EEXIST:
            raise ConflictError(f"{what}: already exists ({os.strerror(code)})")
        raise RtnlError(f"{what}: {os.strerror(code)}", code)

    def link(self, name: str) -> tuple[int, int] | None:
        """(index, MTU) of a link by name, or None when there is none."""
        found = self.link_attrs(name)
        if found is None:
            return None
        index, attrs_ = found
        mtu = attrs_.get(IFLA_MTU)
        return index, struct.unpack("=I", mtu)[0] if mtu else 0

    def link_attrs(self, name: str) -> tuple[int, dict[int, bytes]] | None:
        """(index, top-level attributes) of a link by name, or None when there is none."""
        try:
            body = self.request(
                RTM_GETLINK, 0, ifinfo() + attr_str(IFLA_IFNAME, name), f"look up {name}"
            )
        except RtnlError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if body is None:
            return None
        index = _IFINFOMSG.unpack_from(body)[2]
        return index, parse_attrs(body[_IFINFOMSG.size :])

    def link_by_index(self, index: int) -> tuple[str, str | None] | None:
        """(name, kind) of a link by index (kind None for a device without one, a physical
        NIC), or None when there is none."""
        try:
            body = self.request(RTM_GETLINK, 0, ifinfo(index), f"look up link {index}")
        except RtnlError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if body is None:
            return None
        found = parse_attrs(body[_IFINFOMSG.size :])
        name = found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        kind = parse_attrs(found.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND)
        return name, kind.rstrip(b"\0").decode() if kind is not None else None

    def move(self, index: int, ns_fd: int, *, name: str | None = None, what: str = "") -> None:
        """Move a link into the namespace ``ns_fd`` (renamed there to ``name``, in the same
        request); ConflictError when the name is taken there."""
        body = ifinfo(index) + attr_u32(IFLA_NET_NS_FD, ns_fd)
        if name is not None:
            body += attr_str(IFLA_IFNAME, name)
        self.request(RTM_NEWLINK, 0, body, f"move {what or index} to another namespace")

    def mac(self, name: str) -> str:
        """A link's MAC (``aa:bb:...``)."""
        found = self.link_attrs(name)
        if found is None:
            raise RuntimeFailure(f"link {name} does not exist")
        return ":".join(f"{b:02x}" for b in found[1].get(IFLA_ADDRESS, b""))

    def index(self, name: str) -> int:
        """The index of an existing link; RuntimeFailure when it does not exist."""
        found = self.link(name)
        if found is None:
            raise RuntimeFailure(f"link {name} does not exist")
        return found[0]

    def set_up(self, index: int, *, mtu: int | None = None, what: str = "link") -> None:
        """Bring a link up (and set its MTU in the same request)."""
        body = ifinfo(index, IFF_UP, IFF_UP) + (attr_u32(IFLA_MTU, mtu) if mtu else b"")
        self.request(RTM_NEWLINK, 0, body, f"bring up {what}")

    def create_veth(
        self,
        host_if: str,
        guest_if: str,
        guest_ns_fd: int,
        *,
        mac: str | None,
        master: int | None,
        mtu: int | None,
        guest_mtu: int | None = None,
        up: bool = True,
    ) -> None:
        """Create a veth (see :func:`veth_body`); ConflictError when a name is taken."""
        body = veth_body(
            host_if,
            guest_if,
            guest_ns_fd,
            mac=mac,
            master=master,
            mtu=mtu,
            guest_mtu=guest_mtu,
            up=up,
        )
        self.request(
            RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {host_if}/{guest_if}"
        )

    def create_macvlan(
        self, name: str, lower: int, ns_fd: int, *, mode: str, mac: str | None, mtu: int | None
    ) -> None:
        """Create a macvlan (see :func:`macvlan_body`); ConflictError when the name is taken."""
        self.request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            macvlan_body(name, lower, ns_fd, mode=mode, mac=mac, mtu=mtu),
            f"create macvlan {name} ({mode})",
        )

    def set_link(
        self, index: int, *, mtu: int | None = None, master: int | None = None, what: str = ""
    ) -> None:
        """Set a link's MTU and/or master (a bridge's index) in one request (nothing to set:
        no request)."""
        body = ifinfo(index)
        if mtu:
            body += attr_u32(IFLA_MTU, mtu)
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        if len(body) > _IFINFOMSG.size:
            self.request(RTM_NEWLINK, 0, body, f"set {what or index}")

    def set_mac(self, index: int, mac: str, *, what: str = "") -> None:
        """Give a link another MAC."""
        body = ifinfo(index) + attr(IFLA_ADDRESS, mac_bytes(mac))
        self.request(RTM_NEWLINK, 0, body, f"set the MAC of {what or index} to {mac}")

    def delete(self, index: int) -> None:
        """Delete a link by index."""
        self.request(RTM_DELLINK, 0, ifinfo(index), f"delete link {index}")

    def add_address(
        self, index: int, address: str, prefix: int, *, peer: str | None = None, what: str = ""
    ) -> None:
        """Add ``address/prefix`` (with a point-to-point ``peer``) to a link."""
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            address_body(index, address, prefix, peer),
            f"add {address}/{prefix}{f' peer {peer}' if peer else ''} to {what or index}",
        )

    def set_port_flags(self, index: int, flags: dict[int, bool], *, what: str = "") -> None:
        """Set flags of a bridge port (:func:`port_flags_body`) in one request."""
        self.request(
            RTM_NEWLINK, 0, port_flags_body(index, flags), f"set bridge port {what or index}"
        )

    def fdb_add(self, index: int, mac: str, *, what: str = "") -> None:
        """A static forwarding entry for ``mac`` on bridge port ``index`` (replaced if there)."""
        self.request(
            RTM_NEWNEIGH,
            NLM_F_CREATE | NLM_F_REPLACE,
            fdb_body(index, mac),
            f"add {mac} to the forwarding table on {what or index}",
        )

    def fdb_delete(self, index: int, mac: str, *, what: str = "") -> None:
        """Remove the forwarding entry for ``mac`` on port ``index``; none there is no error."""
        try:
            self.request(
                RTM_DELNEIGH, 0, fdb_body(index, mac), f"remove {mac} from {what or index}"
            )
        except RtnlError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise

    def add_route(self, dst: str, *, gateway: str | None = None, oif: int | None = None) -> None:
        """Add a route in the main table via a gateway and/or a link."""
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            route_body(dst, gateway=gateway, oif=oif),
            f"add route {dst} via {gateway or oif}",
        )
