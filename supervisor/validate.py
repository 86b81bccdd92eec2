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
import re
from typing import Final

import attrs

from supervisor.model import (
    CONTEXT_ID_MAX,
    CONTEXT_ID_MIN,
    LIFECYCLE_ACTIONS,
    AddressRange,
    CpuBucket,
    Domain,
    Interface,
    IpAddress,
    Network,
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
INTERFACE_TYPES_LXC: Final = ("network", "bridge", "ethernet")
INTERFACE_TYPES_VSERVER: Final = ("network", "bridge", "ethernet", "vserver")
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
_BAD_PARTITION_CHARS = re.compile(r"[\s\x00-\x1f]")
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
    _check_mac(sink, (*key, "mac"), f"{where}/mac/@address", iface.mac)
    _check_ifname(sink, (*key, "target_dev"), f"{where}/target/@dev", iface.target_dev)
    _check_ifname(sink, (*key, "guest_dev"), f"{where}/guest/@dev", iface.guest_dev)
    sink.int_range((*key, "mtu"), f"{where}/mtu/@size", iface.mtu, MTU_MIN, MTU_MAX)
    for j, ip in enumerate(iface.ips):
        _check_ip(sink, (*key, "ips", j), f"{where}/ip[{j + 1}]", ip)
    for j, route in enumerate(iface.routes):
        _check_route(sink, (*key, "routes", j), f"{where}/route[{j + 1}]", route)


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
    _check_hostname(sink, domain.hostname)
    _check_positive(sink, ("pids_limit",), "metadata/vsv:pids/@max", domain.pids_limit)

    os = domain.os
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
    for i, entry in enumerate(domain.idmap):
        where = f"idmap/{entry.kind}[{i + 1}]"
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
    if domain.partition is not None and (
        len(domain.partition) < 2
        or not domain.partition.startswith("/")
        or _BAD_PARTITION_CHARS.search(domain.partition)
    ):
        add(
            ("partition",),
            "resource/partition",
            domain.partition,
            "is not an absolute partition path",
            "an absolute path such as /machine",
        )
    sink.text(("partition",), "resource/partition", domain.partition)

    targets: set[str] = set()
    for i, fs in enumerate(domain.filesystems):
        key: Key = ("filesystems", i)
        where = f"devices/filesystem[{i + 1}]"
        fstype: str = fs.type  # a model built by hand can hold anything
        if fstype == "mount":
            _check_abs_path(sink, (*key, "source"), f"{where}/source/@dir", fs.source, root_ok=True)
            if fs.usage_kib is not None:
                add(
                    (*key, "usage_kib"),
                    f"{where}/source/@usage",
                    fs.usage_kib,
                    "is only for type='ram'",
                    "none",
                )
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
        else:
            add((*key, "type"), f"{where}/@type", fs.type, "is not supported", "mount, ram")
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
    return sink.problems


def check_domain(domain: Domain) -> list[str]:
    """The domain's problems as ``<element>/@attr: message`` lines (no file, no line)."""
    return [str(p) for p in domain_problems(domain)]


# --- networks ------------------------------------------------------------------------------


def network_problems(network: Network) -> list[Problem]:
    """Every rule the network breaks, with model keys for the codec's line numbers."""
    sink = _Sink()
    add = sink.add
    _check_name(sink, ("name",), "name", network.name)
    _check_uuid(sink, ("uuid",), "uuid", network.uuid)
    _check_ifname(sink, ("bridge", "name"), "bridge/@name", network.bridge.name)
    sink.int_range(("bridge", "delay"), "bridge/@delay", network.bridge.delay, 0, None)
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
    fwd = network.forward
    if fwd is not None:
        if fwd.mode not in FORWARD_MODES:
            add(
                ("forward", "mode"),
                "forward/@mode",
                fwd.mode,
                "is not supported",
                ", ".join(FORWARD_MODES),
            )
        _check_ifname(sink, ("forward", "dev"), "forward/@dev", fwd.dev)
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

    for i, nip in enumerate(network.ips):
        key = ("ips", i)
        where = f"ip[{i + 1}]"
        addr = _address(sink, (*key, "address"), f"{where}/@address", nip.address)
        if addr is None:
            continue
        _check_family(sink, (*key, "family"), f"{where}/@family", nip.family, addr)
        if not _check_prefix(sink, (*key, "prefix"), f"{where}/@prefix", nip.prefix, addr):
            continue
        net = ipaddress.ip_interface(f"{addr}/{nip.prefix}").network
        for j, rng in enumerate(nip.dhcp_ranges):
            rkey: Key = (*key, "dhcp_ranges", j)
            rwhere = f"{where}/dhcp/range[{j + 1}]"
            start = _address(sink, (*rkey, "start"), f"{rwhere}/@start", rng.start)
            end = _address(sink, (*rkey, "end"), f"{rwhere}/@end", rng.end)
            for a, attr in ((start, "start"), (end, "end")):
                if a is not None and a not in net:
                    add(
                        (*rkey, attr),
                        f"{rwhere}/@{attr}",
                        a,
                        f"is outside the network {net}",
                        f"an address in {net}",
                    )
            _check_range_order(sink, rkey, rwhere, rng, start, end)
        for j, host in enumerate(nip.dhcp_hosts):
            hkey: Key = (*key, "dhcp_hosts", j)
            hwhere = f"{where}/dhcp/host[{j + 1}]"
            hip = _address(sink, (*hkey, "ip"), f"{hwhere}/@ip", host.ip)
            if hip is not None and hip not in net:
                add(
                    (*hkey, "ip"),
                    f"{hwhere}/@ip",
                    hip,
                    f"is outside the network {net}",
                    f"an address in {net}",
                )
            _check_mac(sink, (*hkey, "mac"), f"{hwhere}/@mac", host.mac)
            if host.mac is None and host.name is None:
                add(hkey, hwhere, "", "has neither mac nor name", "a mac and/or a name")
            sink.text((*hkey, "name"), f"{hwhere}/@name", host.name)
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
    for i, route in enumerate(network.routes):
        _check_route(sink, ("routes", i), f"route[{i + 1}]", route)
    return sink.problems


def check_network(network: Network) -> list[str]:
    """The network's problems as ``<element>/@attr: message`` lines (no file, no line)."""
    return [str(p) for p in network_problems(network)]
