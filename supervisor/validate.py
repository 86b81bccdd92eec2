"""The rules a domain or network definition must satisfy, independent of XML.

Why here and not in the codec: a model can come from a file, from the control API or from a test;
all of them must be held to the same rules, so the rules look only at the model. The codec adds
what only it knows (the file name and the line of the element a rule points at) by mapping each
problem's ``key`` (a path into the model, such as ``("interfaces", 0, "mac")``) to a line.

Every message names the element/attribute, the offending value and what is allowed, in the form
``<element>/@attr: value 'x' <what is wrong>: allowed <what is allowed>``.

Each rule is stated once, in the check that reports it. Whether a model is fine is whether its list
of problems is empty: there is no separate yes/no version of the rules to keep in step with them.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from typing import Final

import attrs

from supervisor.model import (
    BLKIO_THROTTLES,
    CONTEXT_ID_MAX,
    CONTEXT_ID_MIN,
    DIRECT_MODES,
    LIFECYCLE_ACTIONS,
    AddressRange,
    CpuBucket,
    DhcpHost,
    DhcpLease,
    Domain,
    Forward,
    HostdevNet,
    Interface,
    IpAddress,
    Network,
    NetworkIp,
    Route,
    TokenBucket,
)

Key = tuple[str | int, ...]

#: Longest name (bytes, UTF-8) of a domain or network: keeps file names and cgroup paths sane.
NAME_MAX_BYTES: Final = 64
#: Linux IFNAMSIZ - 1.
IFNAME_MAX_BYTES: Final = 15
CPU_SHARES_MIN: Final = 2
CPU_SHARES_MAX: Final = 262144
CPU_PERIOD_MIN: Final = 1000
CPU_PERIOD_MAX: Final = 1000000
CPU_QUOTA_MIN: Final = 1000
#: cgroup's largest quota (2^44 - 1 us), also libvirt's schema limit.
CPU_QUOTA_MAX: Final = 17592186044415
MTU_MIN: Final = 68
MTU_MAX: Final = 65535

#: Capability names libvirt's domain schema knows for ``<features><capabilities>``.
CAPABILITY_NAMES: Final = frozenset(
    [
        "audit_control",
        "audit_write",
        "block_suspend",
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "ipc_lock",
        "ipc_owner",
        "kill",
        "lease",
        "linux_immutable",
        "mac_admin",
        "mac_override",
        "mknod",
        "net_admin",
        "net_bind_service",
        "net_broadcast",
        "net_raw",
        "setgid",
        "setfcap",
        "setpcap",
        "setuid",
        "sys_admin",
        "sys_boot",
        "sys_chroot",
        "sys_module",
        "sys_nice",
        "sys_pacct",
        "sys_ptrace",
        "sys_rawio",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "syslog",
        "wake_alarm",
    ]
)
INTERFACE_TYPES_LXC: Final = ("network", "bridge", "ethernet", "direct")
INTERFACE_TYPES_VSERVER: Final = ("network", "bridge", "ethernet", "direct", "vserver")
FORWARD_MODES: Final = ("nat", "route", "open", "bridge")

_BAD_NAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f/]")
_BAD_IFNAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f/:]")
# Characters XML 1.0 cannot carry (plus CR, which XML turns into LF).
_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\r\ufffe\uffff]")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_GENERIC_NAME = re.compile(r"[a-zA-Z0-9_+\-]+")
_ENV_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DNS_NAME = re.compile(r"[a-zA-Z0-9.\-]+")
#: the largest id libvirt gives a running domain (an int)
LIBVIRT_ID_MAX: Final = 2**31 - 1
#: ``<resource><partition>`` values the supervisor honours: libvirt's default partition only
#: (a guest's cgroup is where the supervisor puts it, ``<prefix>-<name>``)
PARTITIONS: Final = ("/machine",)
#: libvirt's architecture names (basictypes.rng ``archnames``), for ``<os><type arch=>``
ARCH_NAMES: Final = frozenset(
    [
        "aarch64",
        "alpha",
        "armv6l",
        "armv7l",
        "cris",
        "i686",
        "ia64",
        "lm32",
        "m68k",
        "microblaze",
        "microblazeel",
        "mips",
        "mipsel",
        "mips64",
        "mips64el",
        "openrisc",
        "parisc",
        "parisc64",
        "ppc",
        "ppc64",
        "ppc64le",
        "ppcemb",
        "riscv32",
        "riscv64",
        "s390",
        "s390x",
        "sh4",
        "sh4eb",
        "sparc",
        "sparc64",
        "unicore32",
        "x86_64",
        "xtensa",
        "xtensaeb",
    ]
)
#: libvirt's ``aliasName`` (domaincommon.rng)
_ALIAS = re.compile(r"[a-zA-Z0-9_\-.]+")
#: libvirt's ``cpuset`` (basictypes.rng): CPUs and ranges, ``^N`` excludes one
_CPUSET = re.compile(r"([0-9]+(-[0-9]+)?|\^[0-9]+)(,([0-9]+(-[0-9]+)?|\^[0-9]+))*")
_HOST_LABEL = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")


@attrs.frozen
class Problem:
    """One broken rule: where in the model (``key``), where in XML terms, and what is wrong."""

    key: Key
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class _Sink:
    """Collects problems; small helpers keep each rule one line long."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, key: Key, where: str, value: object, what: str, allowed: str) -> None:
        self.problems.append(Problem(key, where, f"value '{value}' {what}: allowed {allowed}"))

    def int_range(
        self, key: Key, where: str, value: int | None, lo: int | None, hi: int | None
    ) -> None:
        if value is None:
            return
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                allowed = f"{lo} or more"
            elif lo is None:
                allowed = f"{hi} or less"
            else:
                allowed = f"{lo}..{hi}"
            self.add(key, where, value, "is out of range", allowed)

    def text(self, key: Key, where: str, value: str | None) -> None:
        if value is not None and _NOT_XML_TEXT.search(value):
            self.add(key, where, value, "contains control characters", "printable text")


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if len(name.encode()) > NAME_MAX_BYTES:
        return f"is longer than {NAME_MAX_BYTES} bytes"
    if name[0] in ".-":
        return "starts with '.' or '-'"
    if _BAD_NAME_CHARS.search(name):
        return "contains '/', whitespace or control characters"
    return None


def _check_name(sink: _Sink, key: Key, where: str, name: str) -> None:
    what = _name_problem(name)
    if what is not None:
        sink.add(
            key,
            where,
            name,
            what,
            f"1..{NAME_MAX_BYTES} bytes without '/', whitespace or control characters, "
            "not starting with '.' or '-'",
        )


def _check_ifname(sink: _Sink, key: Key, where: str, name: str | None) -> None:
    if name is None:
        return
    size = len(name.encode())
    if size == 0 or size > IFNAME_MAX_BYTES:
        what = "has the wrong length"
    elif _BAD_IFNAME_CHARS.search(name):
        what = "contains '/', ':', whitespace or control characters"
    elif name in (".", ".."):
        what = "is reserved"
    else:
        return
    sink.add(
        key,
        where,
        name,
        what,
        f"an interface name of 1..{IFNAME_MAX_BYTES} bytes without '/', ':' or whitespace",
    )


def _check_uuid(sink: _Sink, key: Key, where: str, value: str | None) -> None:
    if value is not None and not _UUID.fullmatch(value):
        sink.add(key, where, value, "is not a UUID", "32 hex digits, stored lower-case dashed")


def _check_mac(sink: _Sink, key: Key, where: str, value: str | None) -> None:
    if value is None:
        return
    allowed = "a unicast MAC aa:bb:cc:dd:ee:ff (low bit of the first byte clear, not fe:...)"
    if not _MAC.fullmatch(value):
        sink.add(key, where, value, "is not a lower-case MAC address", allowed)
        return
    first = int(value[:2], 16)
    if first & 1:
        sink.add(key, where, value, "is a multicast address", allowed)
    elif first == 0xFE:
        sink.add(key, where, value, "starts with fe (reserved for host-side tap devices)", allowed)


_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def parse_ip(value: str) -> _Addr:
    """:func:`ipaddress.ip_address`, cached: it dominated the cost of reading a domain."""
    return ipaddress.ip_address(value)


def _address(sink: _Sink, key: Key, where: str, value: str) -> _Addr | None:
    try:
        return parse_ip(value)
    except ValueError:
        sink.add(key, where, value, "is not an IP address", "an IPv4 or IPv6 address")
        return None


def _family_of(addr: _Addr) -> str:
    return "ipv4" if addr.version == 4 else "ipv6"


def _check_prefix(sink: _Sink, key: Key, where: str, prefix: int | None, addr: _Addr) -> bool:
    """Whether ``prefix`` (if any) fits ``addr``'s family; a problem is added when it does not."""
    if prefix is None:
        return True
    top = addr.max_prefixlen
    if 0 <= prefix <= top:
        return True
    sink.add(key, where, prefix, f"is not a prefix length for {addr}", f"0..{top}")
    return False


def _check_range_order(
    sink: _Sink, key: Key, where: str, rng: AddressRange, start: _Addr | None, end: _Addr | None
) -> None:
    """A range's end is not below its start (when both are addresses of one family)."""
    if (
        start is not None
        and end is not None
        and start.version == end.version
        and int(start) > int(end)
    ):
        sink.add(
            (*key, "end"),
            f"{where}/@end",
            rng.end,
            f"is below start {rng.start}",
            f"{rng.start} or above",
        )


def _check_family(
    sink: _Sink, key: Key, where: str, family: str | None, addr: _Addr | None
) -> None:
    if family is None or addr is None:
        return
    if family not in ("ipv4", "ipv6"):
        sink.add(key, where, family, "is not an address family", "ipv4, ipv6")
    elif family != _family_of(addr):
        sink.add(key, where, family, f"does not match address {addr}", _family_of(addr))


def _check_ip(sink: _Sink, key: Key, where: str, ip: IpAddress) -> None:
    addr = _address(sink, (*key, "address"), f"{where}/@address", ip.address)
    if addr is not None:
        _check_prefix(sink, (*key, "prefix"), f"{where}/@prefix", ip.prefix, addr)
    _check_family(sink, (*key, "family"), f"{where}/@family", ip.family, addr)


def _check_route(sink: _Sink, key: Key, where: str, route: Route) -> None:
    addr = _address(sink, (*key, "address"), f"{where}/@address", route.address)
    gw = _address(sink, (*key, "gateway"), f"{where}/@gateway", route.gateway)
    if addr is not None:
        if _check_prefix(sink, (*key, "prefix"), f"{where}/@prefix", route.prefix, addr):
            net = ipaddress.ip_network(f"{addr}/{route.prefix}", strict=False)
            if net.network_address != addr:
                # the kernel refuses such a route; so does libvirt
                sink.add(
                    (*key, "address"),
                    f"{where}/@address",
                    route.address,
                    f"has host bits set for prefix {route.prefix}",
                    f"a network address, e.g. {net.network_address}",
                )
        if gw is not None and gw.version != addr.version:
            sink.add(
                (*key, "gateway"),
                f"{where}/@gateway",
                route.gateway,
                f"is not in the family of {addr}",
                f"an {_family_of(addr)} gateway",
            )
    _check_family(sink, (*key, "family"), f"{where}/@family", route.family, addr)


def _check_positive(sink: _Sink, key: Key, where: str, value: int | None) -> None:
    sink.int_range(key, where, value, 1, None)


def _check_abs_path(sink: _Sink, key: Key, where: str, value: str | None, root_ok: bool) -> None:
    if value is None:
        return
    if not value.startswith("/") or (not root_ok and len(value) < 2):
        sink.add(key, where, value, "is not an absolute path", "an absolute path")
    else:
        sink.text(key, where, value)


# --- domains -------------------------------------------------------------------------------


def _check_bucket_rates(sink: _Sink, key: Key, where: str, b: TokenBucket | CpuBucket) -> None:
    if b.interval is not None and b.interval <= 0:
        sink.add(
            (*key, "interval"), f"{where}/@interval1", b.interval, "is not positive", "1 or more"
        )
    if b.interval2 is not None and b.interval2 <= 0:
        sink.add(
            (*key, "interval2"), f"{where}/@interval2", b.interval2, "is not positive", "1 or more"
        )
    sink.int_range((*key, "fill_rate"), f"{where}/@fill_rate1", b.fill_rate, 0, None)
    sink.int_range((*key, "fill_rate2"), f"{where}/@fill_rate2", b.fill_rate2, 0, None)


def _check_scheduler(sink: _Sink, where: str, sched: TokenBucket) -> None:
    key: Key = ("scheduler",)
    _check_bucket_rates(sink, key, where, sched)
    for attr in ("tokens", "tokens_min", "tokens_max"):
        sink.int_range((*key, attr), f"{where}/@{attr}", getattr(sched, attr), 0, None)
    if (
        sched.tokens_min is not None
        and sched.tokens_max is not None
        and sched.tokens_min > sched.tokens_max
    ):
        sink.add(
            (*key, "tokens_min"),
            f"{where}/@tokens_min",
            sched.tokens_min,
            f"is above tokens_max {sched.tokens_max}",
            f"0..{sched.tokens_max}",
        )
    seen: set[int] = set()
    for i, cpu in enumerate(sched.cpus):
        ckey: Key = (*key, "cpus", i)
        cwhere = f"{where}/cpu[{i + 1}]"
        if cpu.cpu < 0 or cpu.cpu in seen:
            what = "is negative" if cpu.cpu < 0 else "repeats another <cpu>"
            sink.add((*ckey, "cpu"), f"{cwhere}/@id", cpu.cpu, what, "distinct CPU numbers >= 0")
        seen.add(cpu.cpu)
        _check_bucket_rates(sink, ckey, cwhere, cpu)


def _check_interface(sink: _Sink, domain: Domain, i: int, iface: Interface) -> None:
    key: Key = ("interfaces", i)
    where = f"devices/interface[{i + 1}]"
    allowed_types = INTERFACE_TYPES_VSERVER if domain.type == "vserver" else INTERFACE_TYPES_LXC
    if iface.type not in allowed_types:
        if iface.type == "vserver":
            what = "(IP isolation) exists only in the vserver dialect, not in type='lxc'"
        else:
            what = "is not supported"
        sink.add((*key, "type"), f"{where}/@type", iface.type, what, ", ".join(allowed_types))
    src_where = f"{where}/source"
    if iface.type == "network":
        if iface.source is None:
            sink.add((*key, "source"), f"{src_where}/@network", "", "is missing", "a network name")
        else:
            _check_name(sink, (*key, "source"), f"{src_where}/@network", iface.source)
    elif iface.type == "bridge":
        if iface.source is None:
            sink.add((*key, "source"), f"{src_where}/@bridge", "", "is missing", "a bridge name")
        else:
            _check_ifname(sink, (*key, "source"), f"{src_where}/@bridge", iface.source)
    elif iface.type == "vserver":
        _check_ifname(sink, (*key, "source"), f"{src_where}/@dev", iface.source)
        if not iface.ips:
            sink.add(
                (*key, "ips"),
                f"{where}/ip",
                "",
                "is missing: IP isolation needs the guest's addresses",
                "one or more <ip address= prefix=/>",
            )
    elif iface.type == "ethernet" and iface.source is not None:
        sink.add(
            (*key, "source"), f"{src_where}", iface.source, "is not used by type='ethernet'", "none"
        )
    elif iface.type == "direct":
        _check_direct(sink, key, where, iface)
    if iface.direct_mode is not None and iface.type != "direct":
        sink.add((*key, "direct_mode"), f"{src_where}/@mode", iface.direct_mode,
                 f"is not used by type='{iface.type}'", "only with type='direct'")  # fmt: skip
    _check_mac(sink, (*key, "mac"), f"{where}/mac/@address", iface.mac)
    _check_ifname(sink, (*key, "target_dev"), f"{where}/target/@dev", iface.target_dev)
    _check_ifname(sink, (*key, "guest_dev"), f"{where}/guest/@dev", iface.guest_dev)
    if iface.source_bridge is not None or iface.portid is not None:
        _check_network_port(sink, key, src_where, iface)
    sink.int_range((*key, "mtu"), f"{where}/mtu/@size", iface.mtu, MTU_MIN, MTU_MAX)
    ethernet = iface.type == "ethernet"
    sides = [("ips", "routes", where)]
    if ethernet or iface.host_ips or iface.host_routes:
        sides.append(("host_ips", "host_routes", src_where))
    for ips_field, routes_field, at in sides:
        for j, ip in enumerate(getattr(iface, ips_field)):
            ikey: Key = (*key, ips_field, j)
            _check_ip(sink, ikey, f"{at}/ip[{j + 1}]", ip)
            if iface.type != "vserver":  # a vserver NIC's address without prefix is a /32
                _check_inferable_prefix(sink, ikey, f"{at}/ip[{j + 1}]", ip)
            if ethernet:
                _check_point_to_point(sink, ikey, f"{at}/ip[{j + 1}]", ip)
            elif ip.peer is not None:
                sink.add(
                    (*ikey, "peer"),
                    f"{at}/ip[{j + 1}]/@peer",
                    ip.peer,
                    f"is not used by type='{iface.type}'",
                    "only with type='ethernet'",
                )
        for j, route in enumerate(getattr(iface, routes_field)):
            _check_route(sink, (*key, routes_field, j), f"{at}/route[{j + 1}]", route)
    if not ethernet:
        for field, tag, values in (
            ("host_ips", "ip", iface.host_ips),
            ("host_routes", "route", iface.host_routes),
        ):
            if values:
                sink.add((*key, field, 0), f"{src_where}/{tag}", "",
                         f"is not used by type='{iface.type}' (the host end's, type "
                         "ethernet only)", "only with type='ethernet'")  # fmt: skip


def _check_inferable_prefix(sink: _Sink, key: Key, where: str, ip: IpAddress) -> None:
    """A NIC's address without a prefix (or with ``prefix='0'``, which libvirt reads the same
    way) gets libvirt's natural one, which a class D or E address does not have (libvirt
    refuses to start such a guest; applying it as /0 would change its meaning)."""
    addr = _maybe_ip(ip.address)
    if not ip.prefix and addr is not None and addr.version == 4 and int(addr) >> 24 >= 0xE0:
        given = "" if ip.prefix is None else str(ip.prefix)
        sink.add((*key, "prefix"), f"{where}/@prefix", given,
                 f"{'is missing' if ip.prefix is None else 'reads as none (as libvirt reads 0)'}"
                 f" and no prefix can be inferred for {addr} (class D or E)",
                 "a prefix of 1 or more")  # fmt: skip


def _check_point_to_point(sink: _Sink, key: Key, where: str, ip: IpAddress) -> None:
    """An ethernet NIC's address (either end) or a lent host NIC's: a peer of the address's
    family."""
    addr = _maybe_ip(ip.address)
    if addr is None:
        return
    if ip.peer is not None:
        peer = _address(sink, (*key, "peer"), f"{where}/@peer", ip.peer)
        if peer is not None and peer.version != addr.version:
            family = _family_of(addr)
            sink.add((*key, "peer"), f"{where}/@peer", ip.peer,
                     f"is not in the family of {addr}", f"an {family} address")  # fmt: skip


def _maybe_ip(value: str) -> _Addr | None:
    try:
        return parse_ip(value)
    except ValueError:
        return None


def _check_hostdev(sink: _Sink, i: int, hostdev: HostdevNet, lent: set[str]) -> None:
    """``<hostdev mode='capabilities' type='net'>``: a host interface name, lent once; the
    guest's addresses (as an ethernet NIC's guest end: natural prefix, ``peer``) and routes."""
    key: Key = ("hostdevs", i)
    where = f"devices/hostdev[{i + 1}]"
    _check_ifname(sink, (*key, "interface"), f"{where}/source/interface", hostdev.interface)
    if hostdev.interface in lent:
        sink.add((*key, "interface"), f"{where}/source/interface", hostdev.interface,
                 "is lent to the guest twice", "each host interface once")  # fmt: skip
    lent.add(hostdev.interface)
    for j, ip in enumerate(hostdev.ips):
        _check_ip(sink, (*key, "ips", j), f"{where}/ip[{j + 1}]", ip)
        _check_inferable_prefix(sink, (*key, "ips", j), f"{where}/ip[{j + 1}]", ip)
        _check_point_to_point(sink, (*key, "ips", j), f"{where}/ip[{j + 1}]", ip)
    for j, route in enumerate(hostdev.routes):
        _check_route(sink, (*key, "routes", j), f"{where}/route[{j + 1}]", route)


def _check_direct(sink: _Sink, key: Key, where: str, iface: Interface) -> None:
    """``<interface type='direct'>``: a macvlan on the host link ``<source dev=>``, in a mode of
    libvirt's (the kernel's macvlan modes; passthrough is its passthru).

    Anti-spoofing cannot guard a macvlan: its frames reach the host link, or (bridge mode)
    the other macvlans of the link, without passing a bridge or any hook in a namespace the
    supervisor holds (the macvlan itself is in the guest's, whose root may change its MAC and
    addresses). So the document must say that the NIC goes unguarded, with the opt-out
    ``<filterref filter='vsv-allow-all'/>``, which ``vsv validate`` reports as a widening.
    """
    src = f"{where}/source"
    if iface.source is None:
        sink.add((*key, "source"), f"{src}/@dev", "", "is missing", "the host link's name")
    else:
        _check_ifname(sink, (*key, "source"), f"{src}/@dev", iface.source)
    mode: str | None = iface.direct_mode
    if mode is not None and mode not in DIRECT_MODES:
        sink.add((*key, "direct_mode"), f"{src}/@mode", mode, "is not a macvlan mode",
                 ", ".join(DIRECT_MODES))  # fmt: skip
    why = "anti-spoofing cannot guard a macvlan (its frames pass no bridge or hook of the host's)"
    if iface.filterref is None:
        sink.add((*key, "filterref"), f"{where}/filterref", "",
                 f"is missing: {why}, so the NIC must be declared unguarded",
                 "<filterref filter='vsv-allow-all'/>")  # fmt: skip
    elif iface.filterref != "vsv-allow-all":
        sink.add((*key, "filterref"), f"{where}/filterref/@filter", iface.filterref,
                 f"cannot be applied: {why}", "vsv-allow-all")  # fmt: skip


def _check_network_port(sink: _Sink, key: Key, src_where: str, iface: Interface) -> None:
    """``<source bridge= portid=>`` of a type='network' NIC, as libvirt's live XML writes it.

    Kept and written back, not applied: the bridge is the supervisor's network's own.
    """
    if iface.type != "network":
        for field, attr, value in (
            ("source_bridge", "bridge", iface.source_bridge),
            ("portid", "portid", iface.portid),
        ):
            if value is not None:
                sink.add(
                    (*key, field),
                    f"{src_where}/@{attr}",
                    value,
                    f"is not used by type='{iface.type}'",
                    "only with type='network'",
                )
        return
    _check_ifname(sink, (*key, "source_bridge"), f"{src_where}/@bridge", iface.source_bridge)
    _check_uuid(sink, (*key, "portid"), f"{src_where}/@portid", iface.portid)


def _check_vcpu(sink: _Sink, domain: Domain) -> None:
    """``<vcpu placement= current= cpuset=>`` (called only when one of them is given)."""
    add = sink.add
    if domain.vcpu is None:
        add(
            ("vcpu",),
            "vcpu",
            "",
            "is missing: placement, current and cpuset are attributes of <vcpu>",
            "a <vcpu> count",
        )
    placement: str | None = domain.vcpu_placement
    if placement is not None and placement != "static":
        add(
            ("vcpu_placement",),
            "vcpu/@placement",
            placement,
            "is not supported (automatic placement asks numad for a cpuset: give cpuset= instead)",
            "static",
        )
    sink.int_range(("vcpu_current",), "vcpu/@current", domain.vcpu_current, 1, domain.vcpu)
    cpuset = domain.cpuset
    if cpuset is not None:
        try:
            parse_cpuset(cpuset)
        except ValueError as e:
            add(("cpuset",), "vcpu/@cpuset", cpuset, str(e), "CPUs and ranges, e.g. 0-3,^2")


#: the highest CPU number a cpuset may name (libvirt's VIR_DOMAIN_CPUMASK_LEN less one)
CPUSET_MAX_CPU: Final = 16383


def parse_cpuset(text: str) -> frozenset[int]:
    """The CPUs of libvirt's cpuset syntax: ``0-3,^2`` is 0, 1 and 3 (``^N`` takes one out).

    Raises ValueError saying what is wrong: not the syntax, a range backwards, a CPU above
    :data:`CPUSET_MAX_CPU`, or no CPU left.
    """
    if not _CPUSET.fullmatch(text):
        raise ValueError("is not a CPU list")
    cpus: set[int] = set()
    excluded: set[int] = set()
    for part in text.split(","):
        if part.startswith("^"):
            excluded.add(int(part[1:]))
            continue
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if lo > hi:
            raise ValueError(f"has a backward range {part}")
        if hi > CPUSET_MAX_CPU:
            raise ValueError(f"names a CPU above {CPUSET_MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    left = frozenset(cpus - excluded)
    if not left:
        raise ValueError("leaves no CPU")
    return left


def kernel_cpu_list(cpus: frozenset[int]) -> str:
    """CPUs as the kernel's list format writes them: ``0-1,3``."""
    out: list[str] = []
    ordered = sorted(cpus)
    start = prev = ordered[0]
    for cpu in [*ordered[1:], -2]:  # -2 ends the last run
        if cpu == prev + 1:
            prev = cpu
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(out)


#: libvirt's ``<blkiotune>`` weight range (the guest's and a device's)
BLKIO_WEIGHT_MIN: Final = 100
BLKIO_WEIGHT_MAX: Final = 1000


def _check_blkiotune(sink: _Sink, domain: Domain) -> None:
    """``<blkiotune>``: weights in libvirt's range, throttles in their types', each device once."""
    bt = domain.blkiotune
    assert bt is not None
    sink.int_range(
        ("blkiotune", "weight"), "blkiotune/weight", bt.weight, BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX
    )
    paths: set[str] = set()
    for i, dev in enumerate(bt.devices):
        key: Key = ("blkiotune", "devices", i)
        where = f"blkiotune/device[{i + 1}]"
        _check_abs_path(sink, (*key, "path"), f"{where}/path", dev.path, root_ok=False)
        if dev.path in paths:
            sink.add((*key, "path"), f"{where}/path", dev.path, "is given twice", "each once")
        paths.add(dev.path)
        sink.int_range(
            (*key, "weight"), f"{where}/weight", dev.weight, BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX
        )
        for field in BLKIO_THROTTLES:
            hi = 2**32 - 1 if field.endswith("iops_sec") else 2**64 - 1
            sink.int_range((*key, field), f"{where}/{field}", getattr(dev, field), 0, hi)


#: a named network namespace (``ip netns``: a file in /run/netns)
_NETNS_NAME = re.compile(r"[a-zA-Z0-9_.\-]{1,255}")


def _check_shared_namespaces(sink: _Sink, domain: Domain) -> None:
    """``<lxc:namespace>``: one entry per kind; another guest by name, or (net only) a named
    netns; not beside the guest's own NICs, nor with an ``<idmap>`` (a user namespace of its
    own cannot join namespaces that belong to the host's)."""
    add = sink.add
    kinds: set[str] = set()
    for i, share in enumerate(domain.shared_namespaces):
        key: Key = ("shared_namespaces", i)
        kind: str = share.kind
        stype: str = share.type
        where = f"lxc:namespace/lxc:share{kind}"
        if kind not in ("net", "ipc", "uts"):
            add((*key, "kind"), "lxc:namespace", kind, "is not a namespace kind", "net, ipc, uts")
            continue
        if kind in kinds:
            add(key, where, kind, "is shared twice", "one entry per namespace")
        kinds.add(kind)
        allowed = ("name", "netns") if kind == "net" else ("name",)
        if stype not in allowed:
            add((*key, "type"), f"{where}/@type", stype, "is not supported", ", ".join(allowed))
        elif stype == "name":
            _check_name(sink, (*key, "value"), f"{where}/@value", share.value)
            if share.value == domain.name:
                add((*key, "value"), f"{where}/@value", share.value, "is the guest itself",
                    "another guest's name")  # fmt: skip
        elif not _NETNS_NAME.fullmatch(share.value) or share.value in (".", ".."):
            add((*key, "value"), f"{where}/@value", share.value, "is not a netns name",
                "letters, digits, '_', '-' and '.'")  # fmt: skip
        if kind == "net" and (domain.has_nics or domain.privnet):
            add(key, where, share.value,
                "is given with <interface>, <hostdev> or <privnet/>: the guest's network "
                "namespace is the one shared", "no <interface>, <hostdev>, <privnet/>")  # fmt: skip
        if domain.idmap:
            add(key, where, share.value,
                "is not supported with <idmap> (the guest's user namespace cannot join "
                "namespaces that belong to the host's)", "no <idmap>")  # fmt: skip


def _check_devices_extra(sink: _Sink, domain: Domain) -> None:
    """Consoles, the emulator and the devices' ``<alias>`` names (unique, libvirt's pattern)."""
    add = sink.add
    _check_abs_path(sink, ("emulator",), "devices/emulator", domain.emulator, root_ok=False)
    for i, con in enumerate(domain.consoles):
        key: Key = ("consoles", i)
        where = f"devices/console[{i + 1}]"
        ctype: str = con.type
        if ctype != "pty":
            add((*key, "type"), f"{where}/@type", ctype, "is not supported", "pty")
        _check_abs_path(sink, (*key, "tty"), f"{where}/@tty", con.tty, root_ok=False)
        _check_abs_path(
            sink, (*key, "source_path"), f"{where}/source/@path", con.source_path, root_ok=False
        )
        ttype: str | None = con.target_type
        if ttype is not None and ttype != "lxc":
            add((*key, "target_type"), f"{where}/target/@type", ttype, "is not supported", "lxc")
        sink.int_range((*key, "target_port"), f"{where}/target/@port", con.target_port, 0, None)
    seen: set[str] = set()
    devices = (
        *(("filesystems", i, "filesystem", d.alias) for i, d in enumerate(domain.filesystems)),
        *(("interfaces", i, "interface", d.alias) for i, d in enumerate(domain.interfaces)),
        *(("consoles", i, "console", d.alias) for i, d in enumerate(domain.consoles)),
        *(("hostdevs", i, "hostdev", d.alias) for i, d in enumerate(domain.hostdevs)),
    )
    for field, i, tag, alias in devices:
        if alias is None:
            continue
        key = (field, i, "alias")
        where = f"devices/{tag}[{i + 1}]/alias/@name"
        if not _ALIAS.fullmatch(alias):
            add(key, where, alias, "is not an alias name", "letters, digits, '_', '-' and '.'")
        elif alias in seen:
            add(key, where, alias, "is used by another device", "distinct aliases")
        seen.add(alias)


def _check_seclabels(sink: _Sink, domain: Domain) -> None:
    """``<seclabel>``: type none only (no security module is supported yet), one per model."""
    add = sink.add
    models: set[str] = set()
    several = len(domain.seclabels) > 1
    for i, label in enumerate(domain.seclabels):
        key: Key = ("seclabels", i)
        where = f"seclabel[{i + 1}]"
        ltype: str = label.type
        if ltype != "none":
            add(
                (*key, "type"),
                f"{where}/@type",
                ltype,
                "is not supported (no Linux security module is supported yet)",
                "none",
            )
        if label.relabel:
            add((*key, "relabel"), f"{where}/@relabel", "yes", "is given with type='none'", "no")
        if label.model is None:
            if several:
                add(
                    (*key, "model"),
                    f"{where}/@model",
                    "",
                    "is missing beside another <seclabel>",
                    "a model on each of several labels",
                )
            continue
        if not label.model or _NOT_XML_TEXT.search(label.model) or "\n" in label.model:
            add(
                (*key, "model"),
                f"{where}/@model",
                label.model,
                "is not a security model name",
                "a name such as none, selinux, apparmor",
            )
        elif label.model in models:
            add((*key, "model"), f"{where}/@model", label.model, "is given twice", "one per model")
        models.add(label.model)


def host_arch() -> str:
    """This machine's architecture by libvirt's name (``uname -m``; i386..i686 are ``i686``)."""
    machine = os.uname().machine
    return "i686" if re.fullmatch(r"i[3-6]86", machine) else machine


def host_problems(domain: Domain, arch: str | None = None) -> list[Problem]:
    """The rules that depend on the host: checked by ``define``, not by ``vsv validate``.

    ``<os><type arch=>`` must be the host's (``arch``, default :func:`host_arch`): libvirt's LXC
    driver refuses any other at define (it knows no guest for it). libvirt also runs the 32-bit
    sibling (i686 on x86_64) under a 32-bit personality; the supervisor does not, so refuses it.
    """
    sink = _Sink()
    given = domain.os.arch
    if given is not None:
        own = host_arch() if arch is None else arch
        if given != own:
            sink.add(
                ("os", "arch"),
                "os/type/@arch",
                given,
                "is not this host's architecture (guests run as the host's)",
                own,
            )
    return sink.problems


def _check_hostname(sink: _Sink, hostname: str | None) -> None:
    if hostname is None:
        return
    if len(hostname) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in hostname.split(".")):
        sink.add(
            ("hostname",),
            "metadata/vsv:hostname",
            hostname,
            "is not a host name",
            "dot-separated labels of 1..63 letters, digits and '-', at most 253 characters",
        )


def _idmap_maps_root(d: Domain) -> bool:
    """An ``<idmap>`` must map the guest's root: its init starts as uid 0 and gid 0 there."""
    return all(any(e.kind == k and e.start == 0 for e in d.idmap) for k in ("uid", "gid"))


def domain_problems(domain: Domain) -> list[Problem]:
    """Every rule the domain breaks, with model keys so a codec can add line numbers."""
    sink = _Sink()
    add = sink.add
    _check_name(sink, ("name",), "name", domain.name)
    if domain.type not in ("vserver", "lxc"):
        add(("type",), "domain/@type", domain.type, "is not supported", "vserver, lxc")
    if domain.type == "lxc":
        # libvirt's id of a running domain (its LXC driver uses the container's init pid), as
        # `virsh dumpxml` writes it: kept as the domain's number, not a VServer context id
        sink.int_range(("id",), "domain/@id", domain.id, 1, LIBVIRT_ID_MAX)
    else:
        sink.int_range(("id",), "domain/@id", domain.id, CONTEXT_ID_MIN, CONTEXT_ID_MAX)
    _check_uuid(sink, ("uuid",), "uuid", domain.uuid)
    sink.text(("title",), "title", domain.title)
    if domain.title is not None and "\n" in domain.title:
        add(("title",), "title", domain.title, "spans several lines", "a single line")
    sink.text(("description",), "description", domain.description)
    _check_positive(sink, ("memory_kib",), "memory", domain.memory_kib)
    _check_positive(sink, ("current_memory_kib",), "currentMemory", domain.current_memory_kib)
    if (
        domain.memory_kib is not None
        and domain.current_memory_kib is not None
        and domain.current_memory_kib > domain.memory_kib
    ):
        add(
            ("current_memory_kib",),
            "currentMemory",
            f"{domain.current_memory_kib} KiB",
            "is above <memory>",
            f"1..{domain.memory_kib} KiB",
        )
    sink.int_range(("vcpu",), "vcpu", domain.vcpu, 1, 65535)
    if (
        domain.vcpu_placement is not None
        or domain.vcpu_current is not None
        or domain.cpuset is not None
    ):
        _check_vcpu(sink, domain)
    _check_hostname(sink, domain.hostname)
    _check_positive(sink, ("pids_limit",), "metadata/vsv:pids/@max", domain.pids_limit)

    os = domain.os
    if os.arch is not None and os.arch not in ARCH_NAMES:
        add(
            ("os", "arch"),
            "os/type/@arch",
            os.arch,
            "is not an architecture",
            "one of libvirt's names, e.g. x86_64, aarch64",
        )
    _check_abs_path(sink, ("os", "init"), "os/init", os.init, root_ok=False)
    for i, arg in enumerate(os.initargs):
        sink.text(("os", "initargs", i), f"os/initarg[{i + 1}]", arg)
    for i, (name, value) in enumerate(os.initenv):
        if not _ENV_NAME.fullmatch(name):
            add(
                ("os", "initenv", i),
                f"os/initenv[{i + 1}]/@name",
                name,
                "is not an environment variable name",
                "[a-zA-Z_][a-zA-Z0-9_]*",
            )
        sink.text(("os", "initenv", i), f"os/initenv[{i + 1}]", value)
    _check_abs_path(sink, ("os", "initdir"), "os/initdir", os.initdir, root_ok=False)
    if (os.inituser is None) != (os.initgroup is None):
        add(
            ("os",),
            "os/inituser",
            os.inituser or os.initgroup,
            "is given without its partner",
            "<inituser> and <initgroup> together",
        )
    for attr in ("inituser", "initgroup"):
        value = getattr(os, attr)
        if value is not None and not _GENERIC_NAME.fullmatch(value):
            add(("os", attr), f"os/{attr}", value, "is not a user/group name", "[a-zA-Z0-9_+-]+")

    if domain.idmap and not _idmap_maps_root(domain):
        add(
            ("idmap",),
            "idmap",
            "no entry maps uid 0 and gid 0",
            "does not map the guest's root",
            "a <uid start='0' .../> and a <gid start='0' .../> entry",
        )
    kinds: dict[str, int] = {}
    for i, entry in enumerate(domain.idmap):
        # numbered among the entries of its kind, as in the document (<uid> and <gid> apart)
        n = kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
        where = f"idmap/{entry.kind}[{n}]"
        if entry.kind not in ("uid", "gid"):
            add(("idmap", i), where, entry.kind, "is not an idmap kind", "uid, gid")
        sink.int_range(("idmap", i, "start"), f"{where}/@start", entry.start, 0, 2**32 - 1)
        sink.int_range(("idmap", i, "target"), f"{where}/@target", entry.target, 0, 2**32 - 1)
        sink.int_range(("idmap", i, "count"), f"{where}/@count", entry.count, 1, 2**32 - 1)

    if domain.capabilities is not None:
        caps = domain.capabilities
        if caps.policy not in ("default", "allow", "deny"):
            add(
                ("capabilities", "policy"),
                "features/capabilities/@policy",
                caps.policy,
                "is not a policy",
                "default, allow, deny",
            )
        seen_caps: set[str] = set()
        for i, (cap, _on) in enumerate(caps.caps):
            if cap not in CAPABILITY_NAMES or cap in seen_caps:
                add(
                    ("capabilities", "caps", i),
                    f"features/capabilities/{cap}",
                    cap,
                    "is not a known capability" if cap not in seen_caps else "is given twice",
                    "each of " + ", ".join(sorted(CAPABILITY_NAMES)) + " at most once",
                )
            seen_caps.add(cap)

    if domain.cputune is not None:
        ct = domain.cputune
        sink.int_range(
            ("cputune", "shares"), "cputune/shares", ct.shares, CPU_SHARES_MIN, CPU_SHARES_MAX
        )
        sink.int_range(
            ("cputune", "period"), "cputune/period", ct.period, CPU_PERIOD_MIN, CPU_PERIOD_MAX
        )
        if ct.quota is not None and (0 <= ct.quota < CPU_QUOTA_MIN or ct.quota > CPU_QUOTA_MAX):
            add(
                ("cputune", "quota"),
                "cputune/quota",
                ct.quota,
                "is out of range",
                f"{CPU_QUOTA_MIN}..{CPU_QUOTA_MAX}, or negative for unlimited",
            )
    if domain.memtune is not None:
        mt = domain.memtune
        _check_positive(
            sink, ("memtune", "hard_limit_kib"), "memtune/hard_limit", mt.hard_limit_kib
        )
        _check_positive(
            sink, ("memtune", "soft_limit_kib"), "memtune/soft_limit", mt.soft_limit_kib
        )
        _check_positive(
            sink,
            ("memtune", "swap_hard_limit_kib"),
            "memtune/swap_hard_limit",
            mt.swap_hard_limit_kib,
        )
    if domain.scheduler is not None:
        where = "scheduler" if domain.type == "vserver" else "metadata/vsv:scheduler"
        _check_scheduler(sink, where, domain.scheduler)

    for attr in ("on_poweroff", "on_reboot", "on_crash"):
        action = getattr(domain, attr)
        if action not in LIFECYCLE_ACTIONS:
            add((attr,), attr, action, "is not a lifecycle action", ", ".join(LIFECYCLE_ACTIONS))
    if domain.partition is not None and domain.partition not in PARTITIONS:
        # libvirt's partition is a cgroup the guest's goes under; the supervisor places every
        # guest's cgroup itself, which is what libvirt's default partition means
        add(
            ("partition",),
            "resource/partition",
            domain.partition,
            "is not applied (a guest's cgroup is <prefix>-<name>, placed by the supervisor)",
            "/machine, libvirt's default partition",
        )
    clock: str | None = domain.clock_offset  # a str when the model was built by hand
    if clock is not None and clock != "utc":
        add(
            ("clock_offset",),
            "clock/@offset",
            clock,
            "is not supported (a container has the host's clock)",
            "utc",
        )
    if domain.seclabels:
        _check_seclabels(sink, domain)
    if domain.blkiotune is not None:
        _check_blkiotune(sink, domain)
    if domain.shared_namespaces:
        _check_shared_namespaces(sink, domain)

    targets: set[str] = set()
    for i, fs in enumerate(domain.filesystems):
        key: Key = ("filesystems", i)
        where = f"devices/filesystem[{i + 1}]"
        fstype: str = fs.type  # a model built by hand can hold anything
        if fstype == "mount":
            _check_abs_path(sink, (*key, "source"), f"{where}/source/@dir", fs.source, root_ok=True)
        elif fstype == "ram":
            if fs.usage_kib is None or fs.usage_kib < 1:
                add(
                    (*key, "usage_kib"),
                    f"{where}/source/@usage",
                    fs.usage_kib,
                    "is missing or not positive",
                    "a size of 1 KiB or more",
                )
            if fs.source:
                add(
                    (*key, "source"),
                    f"{where}/source/@dir",
                    fs.source,
                    "is not used by type='ram'",
                    "none",
                )
        elif fstype in ("file", "block"):
            attr = "file" if fstype == "file" else "dev"
            _check_abs_path(
                sink, (*key, "source"), f"{where}/source/@{attr}", fs.source, root_ok=False
            )
            if domain.idmap:
                # the kernel mounts a filesystem on a device only for the host's root, which
                # the guest's user namespace is not (the mount is made inside it)
                add(
                    (*key, "type"),
                    f"{where}/@type",
                    fstype,
                    "is not supported with <idmap> (a device's filesystem is mounted in the "
                    "guest's user namespace, where the kernel refuses it)",
                    "mount, ram",
                )
        else:
            add(
                (*key, "type"),
                f"{where}/@type",
                fs.type,
                "is not supported",
                "mount, ram, file, block",
            )
        if fstype in ("mount", "file", "block") and fs.usage_kib is not None:
            add((*key, "usage_kib"), f"{where}/source/@usage", fs.usage_kib,
                "is only for type='ram'", "none")  # fmt: skip
        driver_type: str | None = fs.driver_type
        driver_format: str | None = fs.driver_format
        if fstype != "file" and (driver_type is not None or driver_format is not None):
            add((*key, "driver_type"), f"{where}/driver", fstype, "has no <driver>", "type='file'")
        if driver_type is not None and driver_type != "loop":
            add(
                (*key, "driver_type"),
                f"{where}/driver/@type",
                driver_type,
                "is not supported",
                "loop",
            )
        if driver_format is not None and driver_format != "raw":
            add(
                (*key, "driver_format"),
                f"{where}/driver/@format",
                driver_format,
                "is not supported",
                "raw",
            )
        accessmode: str | None = fs.accessmode
        if accessmode is not None and accessmode != "passthrough":
            add(
                (*key, "accessmode"),
                f"{where}/@accessmode",
                accessmode,
                "is not supported",
                "passthrough",
            )
        _check_abs_path(sink, (*key, "target"), f"{where}/target/@dir", fs.target, root_ok=True)
        if fs.target in targets:
            add(
                (*key, "target"),
                f"{where}/target/@dir",
                fs.target,
                "is mounted twice",
                "one filesystem per target",
            )
        targets.add(fs.target)

    macs: set[str] = set()
    for i, iface in enumerate(domain.interfaces):
        _check_interface(sink, domain, i, iface)
        if iface.mac is not None:
            if iface.mac in macs:
                add(
                    ("interfaces", i, "mac"),
                    f"devices/interface[{i + 1}]/mac/@address",
                    iface.mac,
                    "is used by another interface",
                    "distinct MAC addresses",
                )
            macs.add(iface.mac)
    lent: set[str] = set()
    for i, hostdev in enumerate(domain.hostdevs):
        _check_hostdev(sink, i, hostdev, lent)
    _check_devices_extra(sink, domain)
    return sink.problems


def check_domain(domain: Domain) -> list[str]:
    """The domain's problems as ``<element>/@attr: message`` lines (no file, no line)."""
    return [str(p) for p in domain_problems(domain)]


# --- networks ------------------------------------------------------------------------------


#: Forward modes whose bridge, addresses, DHCP and DNS the supervisor makes (libvirt's
#: "virtual" networks); ``bridge`` joins guests to a bridge the host already has.
_OWN_BRIDGE_MODES: Final = ("nat", "route", "open")
_LEASE_UNITS: Final = ("seconds", "minutes", "hours")
#: dnsmasq's shortest lease (two minutes), which libvirt enforces for a finite lease
_LEASE_MIN_SECONDS: Final = 120
_MAC_TABLE_MANAGERS: Final = ("kernel", "libvirt")
#: libvirt's longest SRV service name (DNS_RECORD_LENGTH_SRV: 512 less RFC 2782's overhead)
_SRV_SERVICE_MAX: Final = 482
_SRV_SERVICE = re.compile(r"[a-zA-Z0-9_+/*\-]+")
_SRV_PROTOCOLS: Final = ("tcp", "udp")
#: a DHCP host name as dnsmasq's hosts file can carry it (libvirt: it starts alphanumeric)
_DHCP_HOST_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9.\-]*")
#: libvirt's four DUID patterns (basictypes.rng: duidLLT, duidEN, duidLL, duidUUID)
_DUID = re.compile(
    r"[0]{1,2}:[0]?1:[0]{1,2}:[0]?[a-f1-9](:[a-f0-9]{1,2}){4}(:[a-f0-9]{1,2}){6,8}"
    r"|[0]{1,2}:[0]?2(:[a-f0-9]{1,2}){4}(:[a-f0-9]{1,2}){1,124}"
    r"|[0]{1,2}:[0]?3:[0]{1,2}:[0]?[a-f1-9](:[a-f0-9]{1,2}){6,8}"
    r"|[0]{1,2}:[0]?4(:[a-f0-9]{1,2}){16}"
)
#: text dnsmasq's configuration can carry on one line (a file name, a TXT value)
_ONE_LINE = re.compile(r"[^\x00-\x1f\x7f]*")
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _refuse_in_bridge_mode(sink: _Sink, key: Key, where: str, value: object) -> None:
    """The settings of a bridge the supervisor makes, given for a host bridge it does not."""
    sink.add(
        key,
        where,
        value,
        "is a setting of a bridge the supervisor makes, not of the host bridge of mode='bridge'",
        "it left out, or a mode of nat, route, open or isolated",
    )


def _check_lease(sink: _Sink, key: Key, where: str, lease: DhcpLease | None) -> None:
    if lease is None:
        return
    if lease.unit not in _LEASE_UNITS:
        sink.add(
            (*key, "unit"), f"{where}/@unit", lease.unit, "is not a unit", "seconds, minutes, hours"
        )
        return
    if lease.expiry < 0 or lease.expiry >= 2**64:
        sink.add((*key, "expiry"), f"{where}/@expiry", lease.expiry, "is out of range", "0..2^64-1")
        return
    seconds = lease.seconds
    if seconds is not None and seconds < _LEASE_MIN_SECONDS:
        sink.add(
            (*key, "expiry"),
            f"{where}/@expiry",
            f"{lease.expiry} {lease.unit}",
            "is shorter than dnsmasq's shortest lease",
            "0 (infinite), or 2 minutes (120 seconds) or more",
        )


def _reserved_reason(addr: _Addr, net: _Net, own: _Addr) -> str | None:
    """Why ``addr`` cannot be handed to a guest on ``net`` whose bridge has ``own``, if so."""
    if addr == own:
        return f"is the network's own address {own} (the guests' gateway)"
    if addr.version == 4 and net.prefixlen <= 30:
        if addr == net.network_address:
            return f"is the network address of {net}"
        if addr == net.broadcast_address:
            return f"is the broadcast address of {net}"
    return None


def _check_dhcp_range(
    sink: _Sink, key: Key, where: str, rng: AddressRange, net: _Net, own: _Addr
) -> None:
    start = _address(sink, (*key, "start"), f"{where}/@start", rng.start)
    end = _address(sink, (*key, "end"), f"{where}/@end", rng.end)
    inside = True
    for a, attr in ((start, "start"), (end, "end")):
        if a is not None and a not in net:
            inside = False
            sink.add(
                (*key, attr),
                f"{where}/@{attr}",
                a,
                f"is outside the network {net}",
                f"an address in {net}",
            )
    _check_range_order(sink, key, where, rng, start, end)
    if start is None or end is None or not inside or int(start) > int(end):
        return  # the containment rule only means something for a range that is one
    for reserved in (own, net.network_address, net.broadcast_address):
        reason = _reserved_reason(reserved, net, own)
        if reason is not None and int(start) <= int(reserved) <= int(end):
            sink.add(
                key,
                where,
                f"{rng.start}-{rng.end}",
                f"contains {reserved}, which {reason}",
                f"a range of {net} without {reserved}",
            )
            break
    _check_lease(sink, (*key, "lease"), f"{where}/lease", rng.lease)


def _check_dhcp_host(
    sink: _Sink, key: Key, where: str, host: DhcpHost, net: _Net, own: _Addr
) -> None:
    hip = _address(sink, (*key, "ip"), f"{where}/@ip", host.ip)
    if hip is not None:
        if hip not in net:
            sink.add(
                (*key, "ip"),
                f"{where}/@ip",
                hip,
                f"is outside the network {net}",
                f"an address in {net}",
            )
        else:
            reason = _reserved_reason(hip, net, own)
            if reason is not None:
                sink.add((*key, "ip"), f"{where}/@ip", hip, reason, f"another address in {net}")
    if net.version == 4:
        if host.id is not None:
            sink.add(
                (*key, "id"),
                f"{where}/@id",
                host.id,
                "is a DHCPv6 client id, on an IPv4 <ip>",
                "mac and/or name on IPv4",
            )
        if host.mac is None and host.name is None:
            sink.add(key, where, "", "has neither mac nor name", "a mac and/or a name")
    else:
        if host.mac is not None:
            sink.add(
                (*key, "mac"),
                f"{where}/@mac",
                host.mac,
                "means nothing to DHCPv6, on an IPv6 <ip>",
                "id (the client's DUID) and/or name on IPv6",
            )
        if host.id is None and host.name is None:
            sink.add(key, where, "", "has neither id nor name", "an id and/or a name")
    _check_mac(sink, (*key, "mac"), f"{where}/@mac", host.mac)
    if host.id is not None and not _DUID.fullmatch(host.id):
        sink.add(
            (*key, "id"),
            f"{where}/@id",
            host.id,
            "is not a DUID",
            "a DUID-LLT, -EN, -LL or -UUID as lower-case hex bytes separated by ':' "
            "(e.g. 0:3:0:1:0:16:3e:11:22:33)",
        )
    if host.name is not None and not _DHCP_HOST_NAME.fullmatch(host.name):
        sink.add(
            (*key, "name"),
            f"{where}/@name",
            host.name,
            "is not a host name",
            "letters, digits, '.' and '-', starting with a letter or digit",
        )
    _check_lease(sink, (*key, "lease"), f"{where}/lease", host.lease)


def _check_network_ip(sink: _Sink, network: Network, i: int, nip: NetworkIp) -> _Net | None:
    """The rules of one ``<ip>``; its subnet when the address and prefix are usable."""
    key: Key = ("ips", i)
    where = f"ip[{i + 1}]"
    add = sink.add
    addr = _address(sink, (*key, "address"), f"{where}/@address", nip.address)
    if addr is None:
        return None
    _check_family(sink, (*key, "family"), f"{where}/@family", nip.family, addr)
    top = addr.max_prefixlen
    if not 1 <= nip.prefix <= top:
        add(
            (*key, "prefix"),
            f"{where}/@prefix",
            nip.prefix,
            f"is not a network prefix for {addr}",
            f"1..{top} (left out: the classful prefix for IPv4, 64 for IPv6)",
        )
        return None
    net = ipaddress.ip_interface(f"{addr}/{nip.prefix}").network
    if (
        addr.version == 4
        and nip.prefix <= 30
        and addr in (net.network_address, net.broadcast_address)
    ):
        what = "network" if addr == net.network_address else "broadcast"
        add(
            (*key, "address"),
            f"{where}/@address",
            addr,
            f"is the {what} address of {net}",
            f"a host address of {net}",
        )
    has_dhcp = bool(nip.dhcp_ranges or nip.dhcp_hosts)
    if addr.version == 6 and has_dhcp and nip.prefix < 64:
        add(
            (*key, "prefix"),
            f"{where}/@prefix",
            nip.prefix,
            "is shorter than 64 on an IPv6 <ip> with <dhcp> (dnsmasq serves DHCPv6 only "
            "on a /64 or a longer prefix)",
            "64..128",
        )
    for j, rng in enumerate(nip.dhcp_ranges):
        _check_dhcp_range(
            sink, (*key, "dhcp_ranges", j), f"{where}/dhcp/range[{j + 1}]", rng, net, addr
        )
    for j, host in enumerate(nip.dhcp_hosts):
        _check_dhcp_host(
            sink, (*key, "dhcp_hosts", j), f"{where}/dhcp/host[{j + 1}]", host, net, addr
        )
    if nip.tftp_root is not None:
        if addr.version != 4:
            add(
                (*key, "tftp_root"),
                f"{where}/tftp",
                nip.tftp_root,
                "is on an IPv6 <ip>",
                "<tftp> on IPv4",
            )
        else:
            _check_abs_path(sink, (*key, "tftp_root"), f"{where}/tftp/@root", nip.tftp_root, True)
            if not _ONE_LINE.fullmatch(nip.tftp_root):
                add(
                    (*key, "tftp_root"),
                    f"{where}/tftp/@root",
                    nip.tftp_root,
                    "contains control characters",
                    "a path on one line",
                )
    if nip.bootp_file is None and nip.bootp_server is not None:
        add(
            (*key, "bootp_file"),
            f"{where}/dhcp/bootp/@file",
            "",
            "is missing",
            "the boot file's name",
        )
    if nip.bootp_file is not None:
        bwhere = f"{where}/dhcp/bootp"
        if addr.version != 4:
            add(
                (*key, "bootp_file"),
                bwhere,
                nip.bootp_file,
                "is on an IPv6 <ip>",
                "<bootp> on IPv4",
            )
        elif not has_dhcp:
            add(
                (*key, "bootp_file"),
                bwhere,
                nip.bootp_file,
                "is given without DHCP on this <ip>",
                "<bootp> beside a <range> or <host>",
            )
        if not nip.bootp_file or "," in nip.bootp_file or not _ONE_LINE.fullmatch(nip.bootp_file):
            add(
                (*key, "bootp_file"),
                f"{bwhere}/@file",
                nip.bootp_file,
                "is not a boot file name",
                "a file name on one line without ','",
            )
        if nip.bootp_server is not None:
            server = _address(sink, (*key, "bootp_server"), f"{bwhere}/@server", nip.bootp_server)
            if server is not None and server.version != 4:
                add(
                    (*key, "bootp_server"),
                    f"{bwhere}/@server",
                    server,
                    "is not IPv4",
                    "the IPv4 address of a TFTP server",
                )
    return net


def _check_dns(sink: _Sink, network: Network) -> None:
    add = sink.add
    records = network.dns_forwarders or network.dns_hosts or network.dns_srvs or network.dns_txts
    if network.dns_enable is False and records:
        add(
            ("dns_enable",),
            "dns/@enable",
            "no",
            "turns DNS off while <dns> holds forwarders or records",
            "enable='no' alone, or the records with DNS on",
        )
    for i, fwd in enumerate(network.dns_forwarders):
        key: Key = ("dns_forwarders", i)
        where = f"dns/forwarder[{i + 1}]"
        if fwd.addr is None and fwd.domain is None:
            add(key, where, "", "has neither addr nor domain", "an addr and/or a domain")
        if fwd.addr is not None:
            _address(sink, (*key, "addr"), f"{where}/@addr", fwd.addr)
        if fwd.domain is not None and not _DNS_NAME.fullmatch(fwd.domain):
            add(
                (*key, "domain"),
                f"{where}/@domain",
                fwd.domain,
                "is not a DNS domain",
                "letters, digits, '.' and '-'",
            )
    for i, txt in enumerate(network.dns_txts):
        key = ("dns_txts", i)
        where = f"dns/txt[{i + 1}]"
        if not _DNS_NAME.fullmatch(txt.name):
            add(
                (*key, "name"),
                f"{where}/@name",
                txt.name,
                "is not a DNS name",
                "letters, digits, '.' and '-' (no spaces or commas)",
            )
        if not _ONE_LINE.fullmatch(txt.value):
            add(
                (*key, "value"),
                f"{where}/@value",
                txt.value,
                "contains control characters",
                "text on one line",
            )
    for i, srv in enumerate(network.dns_srvs):
        key = ("dns_srvs", i)
        where = f"dns/srv[{i + 1}]"
        if not _SRV_SERVICE.fullmatch(srv.service) or len(srv.service) > _SRV_SERVICE_MAX:
            add(
                (*key, "service"),
                f"{where}/@service",
                srv.service,
                "is not a service name",
                f"1..{_SRV_SERVICE_MAX} letters, digits, '_', '-', '+', '/' and '*'",
            )
        if srv.protocol not in _SRV_PROTOCOLS:
            add(
                (*key, "protocol"),
                f"{where}/@protocol",
                srv.protocol,
                "is not a protocol",
                "tcp, udp",
            )
        for attr in ("domain", "target"):
            value = getattr(srv, attr)
            if value is not None and not _DNS_NAME.fullmatch(value):
                add(
                    (*key, attr),
                    f"{where}/@{attr}",
                    value,
                    "is not a DNS name",
                    "letters, digits, '.' and '-' ('.' alone as a target: no such service)",
                )
        sink.int_range((*key, "port"), f"{where}/@port", srv.port, 1, 65535)
        sink.int_range((*key, "priority"), f"{where}/@priority", srv.priority, 0, 65535)
        sink.int_range((*key, "weight"), f"{where}/@weight", srv.weight, 0, 65535)
        if srv.target is None:
            for attr in ("port", "priority", "weight"):
                value = getattr(srv, attr)
                if value is not None:
                    add(
                        (*key, attr),
                        f"{where}/@{attr}",
                        value,
                        "is given without a target",
                        "port, priority and weight only with target",
                    )
    for i, dns in enumerate(network.dns_hosts):
        key = ("dns_hosts", i)
        where = f"dns/host[{i + 1}]"
        _address(sink, (*key, "ip"), f"{where}/@ip", dns.ip)
        if not dns.hostnames:
            add(key, f"{where}/hostname", "", "is missing", "one or more host names")
        for j, name in enumerate(dns.hostnames):
            if not _DNS_NAME.fullmatch(name):
                add(
                    (*key, "hostnames", j),
                    f"{where}/hostname[{j + 1}]",
                    name,
                    "is not a host name",
                    "letters, digits, '.' and '-'",
                )


def _check_forward(sink: _Sink, network: Network, fwd: Forward) -> None:
    add = sink.add
    if fwd.mode not in FORWARD_MODES:
        add(
            ("forward", "mode"),
            "forward/@mode",
            fwd.mode,
            "is not supported",
            ", ".join(FORWARD_MODES),
        )
    _check_ifname(sink, ("forward", "dev"), "forward/@dev", fwd.dev)
    seen: set[str] = set()
    for i, dev in enumerate(fwd.interfaces):
        iwhere = f"forward/interface[{i + 1}]/@dev"
        _check_ifname(sink, ("forward", "interfaces", i), iwhere, dev)
        if dev in seen:
            add(("forward", "interfaces", i), iwhere, dev, "is listed twice", "each device once")
        seen.add(dev)
    if fwd.dev is not None and fwd.interfaces and fwd.dev != fwd.interfaces[0]:
        add(
            ("forward", "dev"),
            "forward/@dev",
            fwd.dev,
            f"does not match the first <interface dev='{fwd.interfaces[0]}'/>",
            fwd.interfaces[0],
        )
    if fwd.mode in _OWN_BRIDGE_MODES:
        if fwd.mode == "open" and fwd.interfaces:
            add(
                ("forward", "dev"),
                "forward/@dev",
                fwd.interfaces[0],
                "restricts an open network (which adds no firewall rules)",
                "no forward device with mode='open'",
            )
        elif len(fwd.interfaces) > 1:
            add(
                ("forward", "interfaces", 1),
                "forward/interface[2]",
                fwd.interfaces[1],
                f"is a second forward device for mode='{fwd.mode}'",
                "one device",
            )
        if not network.ips:
            add(
                ("forward", "mode"),
                "forward/@mode",
                fwd.mode,
                "forwards a network without an <ip>",
                "an <ip> for the network (or no <forward>: isolated)",
            )
    elif fwd.mode == "bridge":
        if fwd.interfaces:
            add(
                ("forward", "dev"),
                "forward/@dev",
                fwd.interfaces[0],
                "(a forward device) makes mode='bridge' a macvtap pool, which is not supported",
                "<bridge name=> naming a host bridge, without forward devices",
            )
        elif network.bridge.name is None:
            add(
                ("bridge", "name"),
                "bridge/@name",
                "",
                "is missing for mode='bridge'",
                "the name of a bridge the host has",
            )
    if (fwd.nat_addresses or fwd.nat_ports is not None) and fwd.mode != "nat":
        add(
            ("forward", "mode"),
            "forward/nat",
            fwd.mode,
            "does not translate addresses",
            "<nat> only with mode='nat'",
        )
    if len(fwd.nat_addresses) > 1:
        add(
            ("forward", "nat_addresses", 1),
            "forward/nat/address[2]",
            fwd.nat_addresses[1].start,
            "is a second NAT address range",
            "one range",
        )
    for i, rng in enumerate(fwd.nat_addresses):
        key: Key = ("forward", "nat_addresses", i)
        where = f"forward/nat/address[{i + 1}]"
        start = _address(sink, (*key, "start"), f"{where}/@start", rng.start)
        end = _address(sink, (*key, "end"), f"{where}/@end", rng.end)
        for a, attr in ((start, "start"), (end, "end")):
            if a is not None and a.version != 4:
                add((*key, attr), f"{where}/@{attr}", a, "is not IPv4", "an IPv4 address")
        if start is not None and start.version == 4:  # an IPv6 one is refused above
            _check_range_order(sink, key, where, rng, start, end)
        if rng.lease is not None:
            add((*key, "lease"), f"{where}/lease", rng.lease.expiry, "is not a DHCP range", "none")
    if fwd.nat_ports is not None:
        ports = fwd.nat_ports
        sink.int_range(
            ("forward", "nat_ports", "start"), "forward/nat/port/@start", ports.start, 1, 65535
        )
        sink.int_range(
            ("forward", "nat_ports", "end"), "forward/nat/port/@end", ports.end, 1, 65535
        )
        if ports.start > ports.end:
            add(
                ("forward", "nat_ports", "end"),
                "forward/nat/port/@end",
                ports.end,
                f"is below start {ports.start}",
                f"{ports.start}..65535",
            )


def _check_network_route(sink: _Sink, i: int, route: Route, subnets: list[_Net]) -> None:
    key: Key = ("routes", i)
    where = f"route[{i + 1}]"
    _check_route(sink, key, where, route)
    sink.int_range((*key, "metric"), f"{where}/@metric", route.metric, 1, 2**32 - 1)
    try:
        addr = parse_ip(route.address)
        gw = parse_ip(route.gateway)
    except ValueError:
        return  # reported by _check_route
    if addr.version == 6 and route.family is None:
        sink.add(
            (*key, "family"),
            f"{where}/@family",
            "",
            "is missing on an IPv6 route (libvirt reads a route without family as IPv4)",
            "ipv6",
        )
    if gw.version != addr.version:
        return  # reported by _check_route
    if not any(gw in s for s in subnets if s.version == gw.version):
        sink.add(
            (*key, "gateway"),
            f"{where}/@gateway",
            gw,
            "is not reachable: it is in no <ip> subnet of the network",
            "an address in "
            + (", ".join(str(s) for s in subnets if s.version == gw.version) or "an <ip> subnet"),
        )


def network_problems(network: Network) -> list[Problem]:
    """Every rule the network breaks, with model keys for the codec's line numbers."""
    sink = _Sink()
    add = sink.add
    _check_name(sink, ("name",), "name", network.name)
    _check_uuid(sink, ("uuid",), "uuid", network.uuid)
    fwd = network.forward
    host_bridge = fwd is not None and fwd.mode == "bridge"
    br = network.bridge
    _check_ifname(sink, ("bridge", "name"), "bridge/@name", br.name)
    sink.int_range(("bridge", "delay"), "bridge/@delay", br.delay, 0, None)
    if br.mac_table_manager is not None and br.mac_table_manager not in _MAC_TABLE_MANAGERS:
        add(
            ("bridge", "mac_table_manager"),
            "bridge/@macTableManager",
            br.mac_table_manager,
            "is not supported",
            ", ".join(_MAC_TABLE_MANAGERS),
        )
    sink.int_range(("mtu",), "mtu/@size", network.mtu, MTU_MIN, MTU_MAX)
    _check_mac(sink, ("mac",), "mac/@address", network.mac)
    if network.domain_name is not None and not _DNS_NAME.fullmatch(network.domain_name):
        add(
            ("domain_name",),
            "domain/@name",
            network.domain_name,
            "is not a DNS domain",
            "letters, digits, '.' and '-'",
        )
    if network.domain_local_only is not None and network.domain_name is None:
        add(
            ("domain_local_only",),
            "domain/@localOnly",
            "yes" if network.domain_local_only else "no",
            "is given without a domain name",
            "localOnly with <domain name=>",
        )
    if host_bridge:
        for value, key, where in (
            (br.stp, ("bridge", "stp"), "bridge/@stp"),
            (br.delay or None, ("bridge", "delay"), "bridge/@delay"),
            (network.mtu, ("mtu",), "mtu/@size"),
            (network.mac, ("mac",), "mac/@address"),
            (network.domain_name, ("domain_name",), "domain/@name"),
            (network.ips[0].address if network.ips else None, ("ips", 0), "ip[1]"),
            (network.dns_hosts[0].ip if network.dns_hosts else None, ("dns_hosts", 0), "dns/host"),
            (network.dns_srvs[0].service if network.dns_srvs else None, ("dns_srvs", 0), "dns/srv"),
            (network.dns_txts[0].name if network.dns_txts else None, ("dns_txts", 0), "dns/txt"),
        ):
            if value is not None:
                _refuse_in_bridge_mode(sink, key, where, value)
    if fwd is not None:
        _check_forward(sink, network, fwd)

    subnets: list[_Net] = []
    dhcp_ip: dict[int, int] = {}  # IP version -> index of the first <ip> with DHCP
    tftp_ip: int | None = None
    for i, nip in enumerate(network.ips):
        net = _check_network_ip(sink, network, i, nip)
        if net is None:
            continue
        subnets.append(net)
        if nip.dhcp_ranges or nip.dhcp_hosts:
            first = dhcp_ip.setdefault(net.version, i)
            if first != i:
                add(
                    ("ips", i),
                    f"ip[{i + 1}]/dhcp",
                    nip.address,
                    f"is a second IPv{net.version} <ip> with DHCP (the first is ip[{first + 1}])",
                    "DHCP on one IPv4 and one IPv6 <ip>",
                )
        if nip.tftp_root is not None and net.version == 4:
            if tftp_ip is None:
                tftp_ip = i
            else:
                add(
                    ("ips", i, "tftp_root"),
                    f"ip[{i + 1}]/tftp",
                    nip.tftp_root,
                    f"is a second <tftp> (the first is in ip[{tftp_ip + 1}])",
                    "<tftp> on one IPv4 <ip>",
                )
    _check_dns(sink, network)
    for i, route in enumerate(network.routes):
        _check_network_route(sink, i, route, subnets)
    return sink.problems


def check_network(network: Network) -> list[str]:
    """The network's problems as ``<element>/@attr: message`` lines (no file, no line)."""
    return [str(p) for p in network_problems(network)]
