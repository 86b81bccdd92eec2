"""Hypothesis strategies for valid domains and networks, shared by the property tests.

Every value generated here satisfies :mod:`supervisor.validate` and libvirt's schemas, so a test
that fails on one of them points at the codec, not at the generator. Values are generated in the
canonical form the codec stores (lower-case dashed UUIDs, lower-case MACs, addresses as
:mod:`ipaddress` prints them), so model -> XML -> model can be checked for identity.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Literal

from hypothesis import strategies as st

from supervisor.model import (
    AddressRange,
    Bridge,
    Capabilities,
    CapsPolicy,
    CpuBucket,
    CpuTune,
    DhcpHost,
    DnsHost,
    Domain,
    DomainType,
    Filesystem,
    Forward,
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
    TokenBucket,
)
from supervisor.validate import CAPABILITY_NAMES

_ALNUM = string.ascii_letters + string.digits
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


def _ip_address_values() -> st.SearchStrategy[IpAddress]:
    def build(
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
    ) -> IpAddress:
        prefix = data.draw(st.none() | st.integers(0, addr.max_prefixlen))
        family = data.draw(st.none() | st.just("ipv4" if addr.version == 4 else "ipv6"))
        return IpAddress(address=str(addr), prefix=prefix, family=family)  # type: ignore[arg-type]

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
    types = ["network", "bridge", "ethernet"] + (["vserver"] if dialect == "vserver" else [])
    itype = draw(st.sampled_from(types))
    source: str | None
    if itype == "network":
        source = draw(names())
    elif itype == "bridge":
        source = draw(ifnames())
    elif itype == "vserver":
        source = draw(st.none() | ifnames())
    else:
        source = None
    ips = tuple(
        draw(st.lists(_ip_address_values(), min_size=1 if itype == "vserver" else 0, max_size=3))
    )
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
    )


def _unique_macs(ifaces: list[Interface]) -> bool:
    macs_seen = [i.mac for i in ifaces if i.mac is not None]
    return len(macs_seen) == len(set(macs_seen))


@st.composite
def filesystems(draw: st.DrawFn) -> tuple[Filesystem, ...]:
    targets = draw(st.lists(abs_paths() | st.just("/"), unique=True, max_size=3))
    result = []
    for target in targets:
        if draw(st.booleans()):
            result.append(
                Filesystem(
                    source=draw(abs_paths() | st.just("/")),
                    target=target,
                    readonly=draw(st.booleans()),
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
    return Domain(
        name=draw(names()),
        type=dtype,
        id=draw(st.none() | st.integers(2, 49151)),
        uuid=draw(st.none() | uuids()),
        title=draw(st.none() | _xml_text(min_size=1, newlines=False)),
        description=draw(st.none() | _xml_text()),
        memory_kib=memory,
        current_memory_kib=current,
        vcpu=draw(st.none() | st.integers(1, 256)),
        os=os,
        hostname=draw(st.none() | hostnames()),
        filesystems=draw(filesystems()),
        interfaces=tuple(draw(st.lists(interfaces(dtype), max_size=3).filter(_unique_macs))),
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
        partition=draw(st.none() | abs_paths()),
        metadata=tuple(draw(st.lists(foreign_metadata(), max_size=2))),
    )


@st.composite
def _network_ips(draw: st.DrawFn, version: int) -> NetworkIp:
    if version == 4:
        prefix = draw(st.integers(8, 30))
        addr = draw(st.ip_addresses(v=4))
    else:
        prefix = draw(st.integers(64, 126))
        addr = draw(st.ip_addresses(v=6))
    net = ipaddress.ip_interface(f"{addr}/{prefix}").network
    size = net.num_addresses

    def in_net() -> st.SearchStrategy[int]:
        return st.integers(0, size - 1)

    ranges = []
    for _ in range(draw(st.integers(0, 2))):
        a, b = sorted((draw(in_net()), draw(in_net())))
        ranges.append(AddressRange(str(net[a]), str(net[b])))
    hosts = []
    for _ in range(draw(st.integers(0, 2))):
        mac = draw(st.none() | macs())
        name = draw(hostnames()) if mac is None else draw(st.none() | hostnames())
        hosts.append(DhcpHost(ip=str(net[draw(in_net())]), mac=mac, name=name))
    return NetworkIp(
        address=str(addr),
        prefix=prefix,
        family="ipv4" if version == 4 else "ipv6",
        dhcp_ranges=tuple(ranges),
        dhcp_hosts=tuple(hosts),
    )


@st.composite
def networks(draw: st.DrawFn) -> Network:
    """Valid networks (isolated or forwarding, IPv4 and/or IPv6, DHCP, DNS hosts, routes)."""
    forward = None
    if draw(st.booleans()):
        mode = draw(st.sampled_from(("nat", "route", "open", "bridge")))
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
            dev=draw(st.none() | ifnames()),
            nat_addresses=nat_addresses,
            nat_ports=nat_ports,
        )
    versions = draw(st.lists(st.sampled_from((4, 6)), max_size=2))
    return Network(
        name=draw(names()),
        uuid=draw(st.none() | uuids()),
        bridge=Bridge(
            name=draw(st.none() | ifnames()),
            stp=draw(st.none() | st.booleans()),
            delay=draw(st.none() | st.integers(0, 100)),
        ),
        mtu=draw(st.none() | st.integers(68, 65535)),
        mac=draw(st.none() | macs()),
        domain_name=draw(st.none() | hostnames()),
        forward=forward,
        ips=tuple(draw(_network_ips(v)) for v in versions),
        dns_hosts=tuple(
            draw(
                st.lists(
                    st.builds(
                        DnsHost,
                        ip=st.ip_addresses().map(str),
                        hostnames=st.lists(hostnames(), min_size=1, max_size=2).map(tuple),
                    ),
                    max_size=2,
                )
            )
        ),
        routes=tuple(draw(st.lists(routes(), max_size=2))),
        autostart=draw(st.booleans()),
    )
