"""Hypothesis strategies for valid domains and networks, shared by the property tests.

Every value generated here satisfies :mod:`supervisor.validate` and libvirt's schemas, so a test
that fails on one of them points at the codec, not at the generator. Values are generated in the
canonical form the codec stores (lower-case dashed UUIDs, lower-case MACs, addresses as
:mod:`ipaddress` prints them), so model -> XML -> model can be checked for identity.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Literal, TypeVar

import attrs
from hypothesis import strategies as st

from supervisor.model import (
    DIRECT_MODES,
    INTERFACE_FILTERS,
    AddressRange,
    BlkioDevice,
    BlkioTune,
    Bridge,
    Capabilities,
    CapsPolicy,
    Console,
    CpuBucket,
    CpuTune,
    DhcpHost,
    DhcpLease,
    DnsForwarder,
    DnsHost,
    DnsSrv,
    DnsTxt,
    Domain,
    DomainType,
    Filesystem,
    Forward,
    HostdevNet,
    IdMapEntry,
    Interface,
    IpAddress,
    LifecycleAction,
    MemTune,
    Network,
    NetworkIp,
    OsSpec,
    PortRange,
    Route,
    SecLabel,
    SharedNamespace,
    TokenBucket,
)
from supervisor.validate import ARCH_NAMES, CAPABILITY_NAMES

_ALNUM = string.ascii_letters + string.digits
_D = TypeVar("_D", Filesystem, Interface, Console, HostdevNet)
_LOWER = string.ascii_lowercase + string.digits


def names() -> st.SearchStrategy[str]:
    """Domain/network names: start alphanumeric, then letters, digits, '_', '.', '-'."""
    return st.builds(
        lambda a, b: a + b,
        st.sampled_from(_ALNUM),
        st.text(alphabet=_ALNUM + "_.-", max_size=30),
    )


def ifnames() -> st.SearchStrategy[str]:
    """Linux interface names (1..15 bytes)."""
    return st.text(alphabet=_LOWER + "_-", min_size=1, max_size=15).filter(
        lambda n: n not in (".", "..")
    )


def _xml_text(
    min_size: int = 0, max_size: int = 40, newlines: bool = True
) -> st.SearchStrategy[str]:
    """Text XML can carry unchanged (no control characters, no CR)."""
    blacklist = "\r" if newlines else "\r\n"
    return st.text(
        alphabet=st.characters(
            codec="utf-8",
            exclude_categories=("Cc", "Cs", "Co", "Cn"),
            exclude_characters=blacklist,
        )
        | (st.sampled_from("\n\t") if newlines else st.nothing()),
        min_size=min_size,
        max_size=max_size,
    )


def abs_paths() -> st.SearchStrategy[str]:
    """Absolute paths of at least two characters."""
    return st.lists(
        st.text(alphabet=_LOWER + "_.-", min_size=1, max_size=10).filter(
            lambda p: p not in (".", "..")
        ),
        min_size=1,
        max_size=4,
    ).map(lambda parts: "/" + "/".join(parts))


def uuids() -> st.SearchStrategy[str]:
    return st.uuids().map(str)


def macs() -> st.SearchStrategy[str]:
    """Unicast MACs, never starting fe."""
    first = st.integers(0, 255).map(lambda b: b & 0xFE).filter(lambda b: b != 0xFE)
    return st.builds(
        lambda f, rest: ":".join(f"{b:02x}" for b in [f, *rest]),
        first,
        st.lists(st.integers(0, 255), min_size=5, max_size=5),
    )


def hostnames() -> st.SearchStrategy[str]:
    label = st.builds(
        lambda a, b: a + b,
        st.sampled_from(_ALNUM),
        st.text(alphabet=_ALNUM, max_size=10),
    )
    return st.lists(label, min_size=1, max_size=3).map(".".join)


def _ip_address_values(ethernet: bool = False) -> st.SearchStrategy[IpAddress]:
    """A NIC's ``<ip>``, with a prefix wherever libvirt could not infer one (class D, E);
    ``ethernet``: either end of a point-to-point link, with a ``peer`` of the address's family."""

    def build(
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
    ) -> IpAddress:
        inferable = addr.version == 6 or int(addr) >> 24 < 0xE0
        prefix = data.draw(
            (st.none() | st.just(0) if inferable else st.nothing())
            | st.integers(1, addr.max_prefixlen)
        )
        family = data.draw(st.none() | st.just("ipv4" if addr.version == 4 else "ipv6"))
        peer = data.draw(st.none() | st.ip_addresses(v=addr.version).map(str)) if ethernet else None
        return IpAddress(address=str(addr), prefix=prefix, family=family, peer=peer)  # type: ignore[arg-type]

    return st.builds(build, st.ip_addresses(), st.data())


def routes() -> st.SearchStrategy[Route]:
    @st.composite
    def build(draw: st.DrawFn) -> Route:
        version: Literal[4, 6] = draw(st.sampled_from((4, 6)))
        addr = draw(st.ip_addresses(v=version))
        gateway = draw(st.ip_addresses(v=version))
        prefix = draw(st.integers(0, addr.max_prefixlen))
        # a route's destination is a network address (no host bits), as the kernel wants
        network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        return Route(
            address=str(network.network_address),
            prefix=prefix,
            gateway=str(gateway),
            family=draw(st.none() | st.just("ipv4" if version == 4 else "ipv6")),
        )

    return build()


@st.composite
def interfaces(draw: st.DrawFn, dialect: DomainType) -> Interface:
    types = ["network", "bridge", "ethernet", "direct"]
    types += ["vserver"] if dialect == "vserver" else []
    itype = draw(st.sampled_from(types))
    source: str | None
    if itype == "network":
        source = draw(names())
    elif itype in ("bridge", "direct"):
        source = draw(ifnames())
    elif itype == "vserver":
        source = draw(st.none() | ifnames())
    else:
        source = None
    ethernet = itype == "ethernet"
    ips = tuple(
        draw(
            st.lists(
                _ip_address_values(ethernet), min_size=1 if itype == "vserver" else 0, max_size=3
            )
        )
    )
    host_ips = tuple(draw(st.lists(_ip_address_values(True), max_size=2))) if ethernet else ()
    host_routes = tuple(draw(st.lists(routes(), max_size=2))) if ethernet else ()
    return Interface(
        type=itype,  # type: ignore[arg-type]
        source=source,
        mac=draw(st.none() | macs()),
        target_dev=draw(st.none() | ifnames()),
        guest_dev=draw(st.none() | ifnames()),
        ips=ips,
        routes=tuple(draw(st.lists(routes(), max_size=2))),
        mtu=draw(st.none() | st.integers(68, 65535)),
        link_up=draw(st.none() | st.booleans()),
        filterref=draw(st.none() | st.sampled_from(INTERFACE_FILTERS))
        if itype in ("network", "bridge")
        else "vsv-allow-all"
        if itype == "direct"
        else None,
        source_bridge=draw(st.none() | ifnames()) if itype == "network" else None,
        portid=draw(st.none() | uuids()) if itype == "network" else None,
        host_ips=host_ips,
        host_routes=host_routes,
        direct_mode=draw(st.none() | st.sampled_from(DIRECT_MODES)) if itype == "direct" else None,
    )


def hostdevs() -> st.SearchStrategy[tuple[HostdevNet, ...]]:
    """Host NICs lent to a guest (distinct names), with the guest's addresses and routes."""
    hostdev = st.builds(
        HostdevNet,
        interface=ifnames(),
        ips=st.lists(_ip_address_values(True), max_size=2).map(tuple),
        routes=st.lists(routes(), max_size=2).map(tuple),
    )
    return st.lists(hostdev, max_size=2, unique_by=lambda h: h.interface).map(tuple)


def _unique_macs(ifaces: list[Interface]) -> bool:
    macs_seen = [i.mac for i in ifaces if i.mac is not None]
    return len(macs_seen) == len(set(macs_seen))


@st.composite
def filesystems(draw: st.DrawFn, devices: bool = True) -> tuple[Filesystem, ...]:
    """Filesystems of every type (``devices``: file and block too, which an <idmap> forbids)."""
    targets = draw(st.lists(abs_paths() | st.just("/"), unique=True, max_size=3))
    result = []
    for target in targets:
        if draw(st.booleans()):
            result.append(
                Filesystem(
                    source=draw(abs_paths() | st.just("/")),
                    target=target,
                    readonly=draw(st.booleans()),
                    accessmode=draw(st.sampled_from((None, "passthrough"))),
                )
            )
        elif devices and draw(st.booleans()):
            fstype: Literal["file", "block"] = draw(st.sampled_from(("file", "block")))
            result.append(
                Filesystem(
                    source=draw(abs_paths()),
                    target=target,
                    type=fstype,
                    readonly=draw(st.booleans()),
                    driver_type=draw(st.sampled_from((None, "loop"))) if fstype == "file" else None,
                    driver_format=draw(st.sampled_from((None, "raw")))
                    if fstype == "file"
                    else None,
                )
            )
        else:
            result.append(
                Filesystem(
                    source="",
                    target=target,
                    type="ram",
                    readonly=draw(st.booleans()),
                    usage_kib=draw(st.integers(1, 2**40)),
                    accessmode=draw(st.sampled_from((None, "passthrough"))),
                )
            )
    return tuple(result)


@st.composite
def token_buckets(draw: st.DrawFn) -> TokenBucket:
    def opt(s: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
        return st.none() | s

    rates = st.integers(0, 1000)
    intervals = st.integers(1, 10000)
    tokens = st.integers(0, 100000)
    tmin, tmax = draw(opt(tokens)), draw(opt(tokens))
    if tmin is not None and tmax is not None and tmin > tmax:
        tmin, tmax = tmax, tmin
    cpu_ids = draw(st.lists(st.integers(0, 255), unique=True, max_size=3))
    cpus = tuple(
        CpuBucket(
            cpu=c,
            fill_rate=draw(opt(rates)),
            interval=draw(opt(intervals)),
            idle_time=draw(st.none() | st.booleans()),
            fill_rate2=draw(opt(rates)),
            interval2=draw(opt(intervals)),
        )
        for c in cpu_ids
    )
    return TokenBucket(
        fill_rate=draw(opt(rates)),
        interval=draw(opt(intervals)),
        tokens=draw(opt(tokens)),
        tokens_min=tmin,
        tokens_max=tmax,
        prio_bias=draw(opt(st.integers(-20, 20))),
        idle_time=draw(st.none() | st.booleans()),
        fill_rate2=draw(opt(rates)),
        interval2=draw(opt(intervals)),
        cpus=cpus,
    )


def foreign_metadata() -> st.SearchStrategy[str]:
    """Foreign metadata elements in the canonical form the codec stores them in."""
    return st.builds(
        lambda tag, value, text: (
            f'<app:{tag} xmlns:app="http://example.org/app" k="{value}">{text}</app:{tag}>'
        ),
        st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8),
        st.text(alphabet=_ALNUM, max_size=8),
        st.text(alphabet=_ALNUM + " ", min_size=1, max_size=12),
    )


def _ptys() -> st.SearchStrategy[str]:
    return st.integers(0, 4096).map(lambda n: f"/dev/pts/{n}")


@st.composite
def consoles(draw: st.DrawFn) -> Console:
    """``<console type='pty'>`` as libvirt writes it, defined (bare) or live (pty named)."""
    return Console(
        tty=draw(st.none() | _ptys()),
        source_path=draw(st.none() | _ptys()),
        target_type=draw(st.sampled_from((None, "lxc"))),
        target_port=draw(st.none() | st.integers(0, 3)),
    )


def seclabels() -> st.SearchStrategy[tuple[SecLabel, ...]]:
    """None, one ``type='none'`` label, or one per model."""
    label = st.builds(
        SecLabel,
        model=st.none() | st.sampled_from(("none", "selinux", "apparmor", "dac")),
        relabel=st.sampled_from((None, False)),
    )
    models = st.lists(st.sampled_from(("selinux", "apparmor", "dac")), unique=True, max_size=3)
    return st.lists(label, max_size=1).map(tuple) | models.map(
        lambda ms: tuple(SecLabel(model=m) for m in ms)
    )


@st.composite
def _aliased(draw: st.DrawFn, domain: Domain) -> Domain:
    """``domain`` with some of its devices named by ``<alias>`` (distinct, as libvirt's are)."""

    def named(device: _D, name: str) -> _D:
        return attrs.evolve(device, alias=name) if draw(st.booleans()) else device

    return attrs.evolve(
        domain,
        filesystems=tuple(named(d, f"fs{i}") for i, d in enumerate(domain.filesystems)),
        interfaces=tuple(named(d, f"net{i}") for i, d in enumerate(domain.interfaces)),
        consoles=tuple(named(d, f"console{i}") for i, d in enumerate(domain.consoles)),
        hostdevs=tuple(named(d, f"hostdev{i}") for i, d in enumerate(domain.hostdevs)),
    )


def cpusets() -> st.SearchStrategy[str]:
    """libvirt cpuset strings that leave at least one CPU (a range, a list, an exclusion)."""
    return st.sampled_from(("0", "1", "0-1", "0,2-3", "0-7,^3", "1-2,^1", "5"))


def blkiotunes() -> st.SearchStrategy[BlkioTune]:
    weights = st.none() | st.integers(100, 1000)
    iops = st.none() | st.integers(0, 2**32 - 1)
    nbytes = st.none() | st.integers(0, 2**64 - 1)
    device = st.builds(
        BlkioDevice,
        path=st.sampled_from(("/dev/vda", "/dev/sdb", "/dev/loop7", "/dev/mapper/vg-data")),
        weight=weights,
        read_bytes_sec=nbytes,
        write_bytes_sec=nbytes,
        read_iops_sec=iops,
        write_iops_sec=iops,
    )
    return st.builds(
        BlkioTune,
        weight=weights,
        devices=st.lists(device, max_size=3, unique_by=lambda d: d.path).map(tuple),
    )


_DOMAIN_TYPES: tuple[DomainType, ...] = ("vserver", "lxc")
_ACTIONS: tuple[LifecycleAction, ...] = ("destroy", "restart", "preserve", "rename-restart")


@st.composite
def domains(draw: st.DrawFn, dialect: DomainType | None = None) -> Domain:
    """Valid domains of ``dialect`` (either when None)."""
    dtype: DomainType = dialect if dialect is not None else draw(st.sampled_from(_DOMAIN_TYPES))
    memory = draw(st.none() | st.integers(1, 2**40))
    current = None
    if memory is not None:
        current = draw(st.none() | st.integers(1, memory))
    user = draw(st.none() | st.text(alphabet=_ALNUM + "_+-", min_size=1, max_size=8))
    os = OsSpec(
        init=draw(st.sampled_from(("/sbin/init", "/bin/sh")) | abs_paths()),
        initargs=tuple(draw(st.lists(_xml_text(), max_size=3))),
        initenv=tuple(
            draw(
                st.lists(
                    st.tuples(
                        st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True), _xml_text()
                    ),
                    max_size=3,
                )
            )
        ),
        initdir=draw(st.none() | abs_paths()),
        inituser=user,
        initgroup=None if user is None else user,
        arch=draw(st.none() | st.sampled_from(sorted(ARCH_NAMES))),
    )
    quota = st.just(-1) | st.integers(1000, 17592186044415)
    cputune = draw(
        st.none()
        | st.builds(
            CpuTune,
            shares=st.none() | st.integers(2, 262144),
            period=st.none() | st.integers(1000, 1000000),
            quota=st.none() | quota,
        )
    )
    positive = st.none() | st.integers(1, 2**40)
    memtune = draw(st.none() | st.builds(MemTune, positive, positive, positive))
    caps = draw(
        st.none()
        | st.builds(
            Capabilities,
            policy=st.sampled_from(list(CapsPolicy)),
            caps=st.lists(
                st.sampled_from(sorted(CAPABILITY_NAMES)), unique=True, max_size=4
            ).flatmap(lambda cs: st.tuples(*(st.tuples(st.just(c), st.booleans()) for c in cs))),
        )
    )
    idmap = tuple(
        draw(
            st.lists(
                st.builds(
                    IdMapEntry,
                    kind=st.sampled_from(("uid", "gid")),
                    start=st.integers(0, 2**32 - 1),
                    target=st.integers(0, 2**32 - 1),
                    count=st.integers(1, 2**32 - 1),
                ),
                max_size=3,
            )
        )
    )
    if idmap:  # a valid <idmap> maps the guest's root, uid 0 and gid 0
        root_target = draw(st.integers(0, 2**32 - 1))
        idmap = (
            IdMapEntry("uid", 0, root_target, 1),
            IdMapEntry("gid", 0, root_target, 1),
            *idmap,
        )
    actions = st.sampled_from(_ACTIONS)
    vcpu = draw(st.none() | st.integers(1, 256))
    domain = Domain(
        name=draw(names()),
        type=dtype,
        id=draw(st.none() | st.integers(2, 49151) | st.integers(1, 2**31 - 1))
        if dtype == "lxc"
        else draw(st.none() | st.integers(2, 49151)),
        uuid=draw(st.none() | uuids()),
        title=draw(st.none() | _xml_text(min_size=1, newlines=False)),
        description=draw(st.none() | _xml_text()),
        memory_kib=memory,
        current_memory_kib=current,
        vcpu=vcpu,
        vcpu_placement=None if vcpu is None else draw(st.sampled_from((None, "static"))),
        vcpu_current=None if vcpu is None else draw(st.none() | st.integers(1, vcpu)),
        cpuset=None if vcpu is None else draw(st.none() | cpusets()),
        blkiotune=draw(st.none() | blkiotunes()),
        os=os,
        hostname=draw(st.none() | hostnames()),
        filesystems=draw(filesystems(devices=not idmap)),
        interfaces=tuple(draw(st.lists(interfaces(dtype), max_size=3).filter(_unique_macs))),
        hostdevs=draw(hostdevs()),
        cputune=cputune,
        scheduler=draw(st.none() | token_buckets()),
        memtune=memtune,
        pids_limit=draw(st.none() | st.integers(1, 2**22)),
        capabilities=caps,
        idmap=idmap,
        privnet=draw(st.booleans()),
        on_poweroff=draw(actions),
        on_reboot=draw(actions),
        on_crash=draw(actions),
        autostart=draw(st.booleans()),
        partition=draw(st.sampled_from((None, "/machine"))),
        clock_offset=draw(st.sampled_from((None, "utc"))),
        emulator=draw(st.none() | st.just("/usr/lib/libvirt/libvirt_lxc") | abs_paths()),
        consoles=tuple(draw(st.lists(consoles(), max_size=2))),
        seclabels=draw(seclabels()),
        metadata=tuple(draw(st.lists(foreign_metadata(), max_size=2))),
    )
    if not (domain.has_nics or domain.privnet or domain.idmap):
        order: tuple[Literal["net", "ipc", "uts"], ...] = ("net", "ipc", "uts")
        kinds = draw(st.lists(st.sampled_from(order), unique=True, max_size=3))
        shares = tuple(
            SharedNamespace(kind, "netns", "red")
            if kind == "net" and draw(st.booleans())
            else SharedNamespace(kind, "name", domain.name + "-peer")
            for kind in sorted(kinds, key=order.index)
        )
        domain = attrs.evolve(domain, shared_namespaces=shares)
    return draw(_aliased(domain))


_LEASE_UNITS: tuple[Literal["seconds", "minutes", "hours"], ...] = ("seconds", "minutes", "hours")


@st.composite
def _leases(draw: st.DrawFn) -> DhcpLease | None:
    """None, an infinite lease, or one of at least two minutes (dnsmasq's shortest)."""
    kind = draw(st.sampled_from(("none", "infinite", "finite")))
    if kind == "none":
        return None
    if kind == "infinite":
        return DhcpLease(0)
    unit = draw(st.sampled_from(_LEASE_UNITS))
    low = {"seconds": 120, "minutes": 2, "hours": 1}[unit]
    return DhcpLease(draw(st.integers(low, 10**6)), unit)


def _duids() -> st.SearchStrategy[str]:
    """DUID-LL client ids (type 3, ethernet), lower-case as the codec stores them."""
    return st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
        lambda b: "0:3:0:1:" + ":".join(f"{x:x}" for x in b)
    )


@st.composite
def _network_ips(draw: st.DrawFn, version: int, dhcp: bool, tftp: bool) -> NetworkIp:
    """An ``<ip>`` whose address is a host address, DHCP (when ``dhcp``) that avoids it."""
    if version == 4:
        prefix = draw(st.integers(8, 30))
        base = draw(st.ip_addresses(v=4))
    else:
        prefix = draw(st.integers(64 if dhcp else 48, 126))
        base = draw(st.ip_addresses(v=6))
    net = ipaddress.ip_interface(f"{base}/{prefix}").network
    size = net.num_addresses
    # usable host indices: IPv4 has no network and broadcast address to hand out
    lo, hi = 1, size - 2 if version == 4 else size - 1
    gw = draw(st.integers(lo, hi))
    ranges: list[AddressRange] = []
    hosts: list[DhcpHost] = []
    if dhcp:
        sides = [s for s in ((lo, gw - 1), (gw + 1, hi)) if s[0] <= s[1]]
        for _ in range(draw(st.integers(0, 2)) if sides else 0):
            first, last = draw(st.sampled_from(sides))
            a, b = sorted((draw(st.integers(first, last)), draw(st.integers(first, last))))
            ranges.append(AddressRange(str(net[a]), str(net[b]), lease=draw(_leases())))
        for _ in range(draw(st.integers(0, 2)) if sides else 0):
            first, last = draw(st.sampled_from(sides))
            ip = str(net[draw(st.integers(first, last))])
            name = draw(st.none() | hostnames())
            if version == 4:
                mac = draw(macs()) if name is None else draw(st.none() | macs())
                hosts.append(DhcpHost(ip=ip, mac=mac, name=name, lease=draw(_leases())))
            else:
                duid = draw(_duids()) if name is None else draw(st.none() | _duids())
                hosts.append(DhcpHost(ip=ip, id=duid, name=name, lease=draw(_leases())))
    bootp_file = bootp_server = None
    if version == 4 and (ranges or hosts) and draw(st.booleans()):
        bootp_file = draw(st.text(alphabet=_ALNUM + "._-/", min_size=1, max_size=20))
        bootp_server = draw(st.none() | st.ip_addresses(v=4).map(str))
    return NetworkIp(
        address=str(net[gw]),
        prefix=prefix,
        family="ipv4" if version == 4 else "ipv6",
        dhcp_ranges=tuple(ranges),
        dhcp_hosts=tuple(hosts),
        tftp_root=draw(st.none() | abs_paths()) if tftp and version == 4 else None,
        bootp_file=bootp_file,
        bootp_server=bootp_server,
    )


@st.composite
def _network_routes(draw: st.DrawFn, ips: tuple[NetworkIp, ...]) -> tuple[Route, ...]:
    """Routes to network addresses through a gateway on one of the network's subnets."""
    out = []
    for _ in range(draw(st.integers(0, 2)) if ips else 0):
        nip = draw(st.sampled_from(ips))
        subnet = ipaddress.ip_interface(f"{nip.address}/{nip.prefix}").network
        gateway = subnet[draw(st.integers(1, subnet.num_addresses - 1))]
        version = subnet.version
        dest = draw(st.ip_addresses(v=version))
        prefix = draw(st.integers(0, dest.max_prefixlen))
        family = draw(st.none() | st.just("ipv4")) if version == 4 else "ipv6"
        out.append(
            Route(
                address=str(ipaddress.ip_network(f"{dest}/{prefix}", strict=False).network_address),
                prefix=prefix,
                gateway=str(gateway),
                family=family,  # type: ignore[arg-type]
                metric=draw(st.none() | st.integers(1, 2**32 - 1)),
            )
        )
    return tuple(out)


@st.composite
def _dns_srvs(draw: st.DrawFn) -> DnsSrv:
    target = draw(st.none() | st.just(".") | hostnames())
    with_target = st.none() if target is None else st.none() | st.integers(0, 65535)
    return DnsSrv(
        service=draw(st.text(alphabet=_ALNUM + "_-+/*", min_size=1, max_size=20)),
        protocol=draw(st.sampled_from(("tcp", "udp"))),
        domain=draw(st.none() | hostnames()),
        target=target,
        port=draw(st.none() if target is None else st.none() | st.integers(1, 65535)),
        priority=draw(with_target),
        weight=draw(with_target),
    )


@st.composite
def networks(draw: st.DrawFn) -> Network:
    """Valid networks of every mode: isolated, nat, route, open, and a host bridge.

    A network the supervisor makes the bridge of has IPv4 and/or IPv6 addresses (nat, route and
    open need one), DHCP on at most one of each family, DNS records and routes through its
    subnets; a host bridge (mode='bridge') has none of these, only the bridge's name.
    """
    mode = draw(st.sampled_from((None, "nat", "route", "open", "bridge")))
    host_bridge = mode == "bridge"
    versions: list[int] = []
    if not host_bridge:
        versions = draw(st.lists(st.sampled_from((4, 6)), min_size=mode is not None, max_size=3))
    ips: list[NetworkIp] = []
    for v in versions:
        first = v not in [int(ip.family[-1]) for ip in ips]
        ips.append(draw(_network_ips(v, dhcp=first, tftp=first)))
    forward = None
    if mode is not None:
        nat_addresses: tuple[AddressRange, ...] = ()
        nat_ports = None
        if mode == "nat":
            if draw(st.booleans()):
                a, b = sorted((draw(st.ip_addresses(v=4)), draw(st.ip_addresses(v=4))))
                nat_addresses = (AddressRange(str(a), str(b)),)
            if draw(st.booleans()):
                p, q = sorted((draw(st.integers(1, 65535)), draw(st.integers(1, 65535))))
                nat_ports = PortRange(p, q)
        forward = Forward(
            mode=mode,  # type: ignore[arg-type]
            dev=draw(st.none() | ifnames()) if mode in ("nat", "route") else None,
            nat_addresses=nat_addresses,
            nat_ports=nat_ports,
        )
    dns_enable = draw(st.none() | st.booleans())
    records = dns_enable is not False
    own = not host_bridge and records
    domain_name = None if host_bridge else draw(st.none() | hostnames())
    return Network(
        name=draw(names()),
        uuid=draw(st.none() | uuids()),
        bridge=Bridge(
            name=draw(ifnames() if host_bridge else st.none() | ifnames()),
            stp=None if host_bridge else draw(st.none() | st.booleans()),
            delay=draw(st.none() | st.just(0))
            if host_bridge
            else draw(st.none() | st.integers(0, 100)),
            mac_table_manager=draw(st.none() | st.sampled_from(("kernel", "libvirt"))),
        ),
        mtu=None if host_bridge else draw(st.none() | st.integers(68, 65535)),
        mac=None if host_bridge else draw(st.none() | macs()),
        domain_name=domain_name,
        domain_local_only=None if domain_name is None else draw(st.none() | st.booleans()),
        forward=forward,
        ips=tuple(ips),
        dns_enable=dns_enable,
        dns_forward_plain_names=draw(st.none() | st.booleans()),
        dns_forwarders=tuple(
            draw(
                st.lists(
                    st.one_of(
                        st.builds(DnsForwarder, addr=st.ip_addresses().map(str)),
                        st.builds(DnsForwarder, domain=hostnames()),
                        st.builds(
                            DnsForwarder, addr=st.ip_addresses().map(str), domain=hostnames()
                        ),
                    ),
                    max_size=2 if records else 0,
                )
            )
        ),
        dns_txts=tuple(
            draw(
                st.lists(
                    st.builds(DnsTxt, name=hostnames(), value=_xml_text(newlines=False)),
                    max_size=2 if own else 0,
                )
            )
        ),
        dns_srvs=tuple(draw(st.lists(_dns_srvs(), max_size=2 if own else 0))),
        dns_hosts=tuple(
            draw(
                st.lists(
                    st.builds(
                        DnsHost,
                        ip=st.ip_addresses().map(str),
                        hostnames=st.lists(hostnames(), min_size=1, max_size=2).map(tuple),
                    ),
                    max_size=2 if own else 0,
                )
            )
        ),
        port_isolated=draw(st.none() | st.booleans()),
        routes=draw(_network_routes(tuple(ips))),
        ipv6=draw(st.none() | st.booleans()),
        autostart=draw(st.booleans()),
        metadata=tuple(draw(st.lists(foreign_metadata(), max_size=2))),
    )
