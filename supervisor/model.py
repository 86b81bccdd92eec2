"""Value types for domains (guest contexts) and networks.

Everything here is a frozen attrs value: the codec builds them from XML, the store keeps them,
the subsystems read them. Nothing in this module does I/O or knows about XML; the rules that need
a file and a line number to be useful (ranges, formats, cross references) live in
:mod:`supervisor.validate`, which the codec calls, so that a model built by hand in a test or by
the API is checked by the same code as one read from a file.

Conventions:
- sizes are stored in KiB (libvirt's default unit), the codec converts units on the way in;
- addresses are stored as strings in the canonical form :mod:`ipaddress` prints;
- optional settings are ``None`` when the document did not give them, so that writing a model
  back produces the document it came from rather than one full of defaults.
"""

from __future__ import annotations

import enum
from typing import Literal

import attrs

DomainType = Literal["vserver", "lxc"]
LifecycleAction = Literal["destroy", "restart", "preserve", "rename-restart"]
LIFECYCLE_ACTIONS: tuple[str, ...] = ("destroy", "restart", "preserve", "rename-restart")

#: VServer static context ids (0 is the host, 1 the spectator context; 49152.. were dynamic).
CONTEXT_ID_MIN = 2
CONTEXT_ID_MAX = 49151


class CapsPolicy(enum.StrEnum):
    """libvirt's ``<features><capabilities policy=...>``: the starting set before per-cap states."""

    DEFAULT = "default"
    ALLOW = "allow"
    DENY = "deny"


@attrs.frozen
class OsSpec:
    """How the guest's init is started (libvirt ``<os>`` with ``<type>exe</type>``)."""

    init: str = "/sbin/init"
    initargs: tuple[str, ...] = ()
    initenv: tuple[tuple[str, str], ...] = ()
    initdir: str | None = None
    inituser: str | None = None
    initgroup: str | None = None
    #: ``<type arch=>``: kept; ``define`` refuses an architecture other than the host's
    arch: str | None = None


FilesystemType = Literal["mount", "ram", "file", "block"]


@attrs.frozen
class Filesystem:
    """A ``<filesystem>`` mounted at ``target`` in the guest: a host directory (``mount``), a
    tmpfs (``ram``), the filesystem in a raw image file through a loop device (``file``) or on
    a block device (``block``); ``source`` is the directory, image or device node."""

    source: str
    target: str
    type: FilesystemType = "mount"
    readonly: bool = False
    #: for ``type='ram'``: size of the tmpfs in KiB
    usage_kib: int | None = None
    #: ``accessmode=``: only libvirt's default, ``passthrough`` (kept as given)
    accessmode: Literal["passthrough"] | None = None
    #: ``<alias name=>``: kept (libvirt's live XML names every device)
    alias: str | None = None
    #: type file: ``<driver type='loop' format='raw'/>``, libvirt's default (kept as given)
    driver_type: Literal["loop"] | None = None
    driver_format: Literal["raw"] | None = None


@attrs.frozen
class IpAddress:
    """An address with its prefix length, as in ``<ip address= prefix=>``."""

    address: str
    prefix: int | None = None
    family: Literal["ipv4", "ipv6"] | None = None


@attrs.frozen
class Route:
    """A static route, ``<route family= address= prefix= gateway=>``."""

    address: str
    prefix: int
    gateway: str
    family: Literal["ipv4", "ipv6"] | None = None
    #: ``metric=`` (1 or more; networks' routes: the domain codec does not read it yet)
    metric: int | None = None


InterfaceType = Literal["network", "bridge", "ethernet", "vserver"]
#: ``<filterref filter=>`` names this codec accepts (libvirt nwfilter names; docs/networking.md)
InterfaceFilter = Literal["clean-traffic", "vsv-allow-all"]
INTERFACE_FILTERS: tuple[str, ...] = ("clean-traffic", "vsv-allow-all")


@attrs.frozen
class Interface:
    """A guest NIC.

    ``source`` is the network name (type network), the bridge name (type bridge), the uplink device
    (type vserver, optional: the host's default-route device otherwise) or None (ethernet).
    """

    type: InterfaceType
    source: str | None = None
    mac: str | None = None
    target_dev: str | None = None
    guest_dev: str | None = None
    ips: tuple[IpAddress, ...] = ()
    routes: tuple[Route, ...] = ()
    mtu: int | None = None
    link_up: bool | None = None
    #: ``<filterref filter=>`` of a NIC plumbed into a bridge: None is the supervisor's default
    #: anti-spoofing, ``clean-traffic`` the same plus libvirt's clean-traffic restriction to IPv4,
    #: ARP and RARP, ``vsv-allow-all`` no filtering (the per-interface opt-out)
    filterref: InterfaceFilter | None = None
    #: type network: ``<source bridge=>``, the network's bridge as libvirt's live XML names it;
    #: kept, not applied (the supervisor's own network decides the bridge)
    source_bridge: str | None = None
    #: type network: ``<source portid=>``, libvirt's network port (a UUID); kept, not applied
    portid: str | None = None
    #: ``<alias name=>``: kept
    alias: str | None = None


@attrs.frozen
class Console:
    """A ``<console type='pty'>``: init's stdio on a pty the supervisor relays to its log and to
    ``vsv console`` (the first console only). ``tty`` and ``source_path`` are the pty libvirt's
    live XML names, kept as given."""

    type: Literal["pty"] = "pty"
    tty: str | None = None
    source_path: str | None = None
    #: ``<target type= port=>``: libvirt's LXC consoles have target type ``lxc``
    target_type: Literal["lxc"] | None = None
    target_port: int | None = None
    alias: str | None = None


@attrs.frozen
class SecLabel:
    """A ``<seclabel>``: only ``type='none'`` (no Linux security module is supported yet)."""

    type: Literal["none"] = "none"
    model: str | None = None
    #: ``relabel='no'`` (the only value libvirt allows with type none), kept as given
    relabel: bool | None = None


def _unlimited_quota(quota: int | None) -> int | None:
    """Every negative quota means "unlimited"; libvirt (and this model) keep it as -1."""
    return -1 if quota is not None and quota < 0 else quota


@attrs.frozen
class CpuTune:
    """libvirt's ``<cputune>``: CFS shares and bandwidth (quota < 0 means unlimited, kept as -1,
    so that a definition reads back as it was stored)."""

    shares: int | None = None
    period: int | None = None
    quota: int | None = attrs.field(default=None, converter=_unlimited_quota)


@attrs.frozen
class CpuBucket:
    """A per-CPU token bucket entry, the RFC's ``<scheduler><cpu id=.../>``."""

    cpu: int
    fill_rate: int | None = None
    interval: int | None = None
    idle_time: bool | None = None
    fill_rate2: int | None = None
    interval2: int | None = None


@attrs.frozen
class TokenBucket:
    """The VServer token-bucket scheduler (see spec/vserver-semantics.md section 2).

    Units are scheduler ticks; ``fill_rate`` tokens are added every ``interval`` ticks. The idle
    pair ``fill_rate2``/``interval2`` applies while the host has idle CPU (``idle_time``).
    """

    fill_rate: int | None = None
    interval: int | None = None
    tokens: int | None = None
    tokens_min: int | None = None
    tokens_max: int | None = None
    prio_bias: int | None = None
    idle_time: bool | None = None
    fill_rate2: int | None = None
    interval2: int | None = None
    cpus: tuple[CpuBucket, ...] = ()


@attrs.frozen
class MemTune:
    """libvirt's ``<memtune>`` in KiB."""

    hard_limit_kib: int | None = None
    soft_limit_kib: int | None = None
    swap_hard_limit_kib: int | None = None


@attrs.frozen
class BlkioDevice:
    """A ``<blkiotune><device>``: one block device's weight and throttles (0: no limit, as
    libvirt reads it). ``path`` is the device node; its numbers are looked up at start."""

    path: str
    weight: int | None = None
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None


#: the throttle fields of :class:`BlkioDevice`, as libvirt names its elements
BLKIO_THROTTLES: tuple[str, ...] = (
    "read_bytes_sec",
    "write_bytes_sec",
    "read_iops_sec",
    "write_iops_sec",
)


@attrs.frozen
class BlkioTune:
    """libvirt's ``<blkiotune>``: the guest's I/O weight and per-device settings."""

    weight: int | None = None
    devices: tuple[BlkioDevice, ...] = ()


#: the namespaces ``<lxc:namespace>`` can share, by libvirt's element (sharenet, shareipc,
#: shareuts), in the order libvirt writes them
SHARED_NAMESPACE_KINDS: tuple[str, ...] = ("net", "ipc", "uts")


@attrs.frozen
class SharedNamespace:
    """A ``<lxc:share{kind} type= value=>``: the guest joins another's namespace of ``kind``
    instead of having its own. ``type='name'``: the namespace of the running guest named
    ``value``; ``type='netns'`` (net only): the named network namespace ``value``
    (``ip netns``, /run/netns/VALUE). A widening: see ``confine.widenings``."""

    kind: Literal["net", "ipc", "uts"]
    type: Literal["name", "netns"]
    value: str


@attrs.frozen
class Capabilities:
    """``<features><capabilities policy=...>`` with per-capability on/off overrides."""

    policy: CapsPolicy = CapsPolicy.DEFAULT
    #: (lower-case capability name without ``cap_``, enabled)
    caps: tuple[tuple[str, bool], ...] = ()


@attrs.frozen
class IdMapEntry:
    """One ``<idmap><uid|gid start= target= count=/>`` line."""

    kind: Literal["uid", "gid"]
    start: int
    target: int
    count: int


@attrs.frozen
class Domain:
    """A guest context definition.

    ``type`` selects the XML dialect the definition is written in; both dialects describe the same
    thing and map onto this one model. ``id`` is the VServer context id.
    """

    name: str
    type: DomainType = "vserver"
    id: int | None = None
    uuid: str | None = None
    title: str | None = None
    description: str | None = None
    memory_kib: int | None = None
    current_memory_kib: int | None = None
    vcpu: int | None = None
    os: OsSpec = attrs.field(factory=OsSpec)
    hostname: str | None = None
    filesystems: tuple[Filesystem, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    cputune: CpuTune | None = None
    scheduler: TokenBucket | None = None
    memtune: MemTune | None = None
    pids_limit: int | None = None
    capabilities: Capabilities | None = None
    idmap: tuple[IdMapEntry, ...] = ()
    #: libvirt's ``<features><privnet/>``: own network namespace even without interfaces
    privnet: bool = False
    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: LifecycleAction = "destroy"
    autostart: bool = False
    #: ``<resource><partition>``: only ``/machine``, libvirt's default (guests' cgroups are
    #: where the supervisor puts them)
    partition: str | None = None
    #: ``<vcpu placement=>``: ``static`` (kept as given)
    vcpu_placement: Literal["static"] | None = None
    #: ``<vcpu current=>``: kept, not applied (libvirt's LXC driver ignores it too)
    vcpu_current: int | None = None
    #: ``<vcpu cpuset=>``: the CPUs the guest may run on (libvirt's syntax, ``0-3,^2``), applied
    #: through the cpuset controller
    cpuset: str | None = None
    blkiotune: BlkioTune | None = None
    #: ``<clock offset=>``: only ``utc`` (a container has the host's clock)
    clock_offset: Literal["utc"] | None = None
    #: ``<devices><emulator>``: kept, not used (libvirt's controller binary)
    emulator: str | None = None
    consoles: tuple[Console, ...] = ()
    seclabels: tuple[SecLabel, ...] = ()
    #: ``<lxc:namespace>``: namespaces joined rather than made, at most one per kind
    shared_namespaces: tuple[SharedNamespace, ...] = ()
    #: serialized foreign ``<metadata>`` children, kept verbatim
    metadata: tuple[str, ...] = ()

    @property
    def private_network(self) -> bool:
        """Whether the guest gets its own network namespace (libvirt's LXC rule); a guest
        that shares another's (``<lxc:sharenet>``) has none of its own."""
        if self.shared("net") is not None:
            return False
        return self.privnet or bool(self.interfaces)

    @property
    def memory_limit_kib(self) -> int | None:
        """The guest's memory limit in KiB: ``<memtune><hard_limit>``, else ``<memory>``; None
        for no limit.

        libvirt's LXC driver sets the limit from ``<memory>`` and then, when the domain has
        one, from ``<hard_limit>`` (``virLXCCgroupSetupMemTune``): the hard limit counts, and
        ``<memory>`` is the limit of a domain without one.
        """
        mt = self.memtune
        if mt is not None and mt.hard_limit_kib is not None:
            return mt.hard_limit_kib
        return self.memory_kib

    def shared(self, kind: str) -> SharedNamespace | None:
        """The ``<lxc:namespace>`` entry for a namespace kind (net, ipc, uts), if any."""
        for share in self.shared_namespaces:
            if share.kind == kind:
                return share
        return None

    @property
    def root_filesystem(self) -> Filesystem | None:
        """The ``<filesystem>`` mounted as the guest's ``/``, of any type, if there is one."""
        for fs in self.filesystems:
            if fs.target == "/":
                return fs
        return None

    @property
    def root_dir(self) -> str | None:
        """The host directory mounted as the guest's ``/``, if the domain names one."""
        for fs in self.filesystems:
            if fs.target == "/" and fs.type == "mount":
                return fs.source
        return None


ForwardMode = Literal["nat", "route", "open", "bridge"]
MacTableManager = Literal["kernel", "libvirt"]
LeaseUnit = Literal["seconds", "minutes", "hours"]
LEASE_UNIT_SECONDS: dict[str, int] = {"seconds": 1, "minutes": 60, "hours": 3600}


@attrs.frozen
class Bridge:
    """``<bridge name= stp= delay= macTableManager=>``.

    A missing name is generated with the prefix at define (for a network the supervisor makes
    the bridge of); with ``<forward mode='bridge'>`` it names the host's own bridge.
    """

    name: str | None = None
    stp: bool | None = None
    delay: int | None = None
    #: ``kernel`` (learning and flooding, libvirt's default) or ``libvirt`` (the MAC table is
    #: filled from the guests' MACs, learning and unicast flooding off on the ports)
    mac_table_manager: MacTableManager | None = None


@attrs.frozen
class PortRange:
    """An inclusive range of numbers (NAT ports)."""

    start: int
    end: int


@attrs.frozen
class DhcpLease:
    """``<lease expiry= unit=>`` of a DHCP range or host: ``expiry`` in ``unit``, 0 = infinite.

    libvirt's unit defaults to minutes; an infinite lease is stored with the default unit, as
    libvirt writes it without one.
    """

    expiry: int
    unit: LeaseUnit = "minutes"

    @property
    def seconds(self) -> int | None:
        """The lease time in seconds, or None for an infinite lease."""
        return self.expiry * LEASE_UNIT_SECONDS[self.unit] if self.expiry else None


@attrs.frozen
class AddressRange:
    """An inclusive range of addresses (DHCP pool, NAT source addresses)."""

    start: str
    end: str
    #: DHCP ranges only: ``<range><lease/>`` (None: dnsmasq's default lease time)
    lease: DhcpLease | None = None


@attrs.frozen
class Forward:
    """``<forward mode= dev=>``; no Forward at all means an isolated network.

    ``dev`` and ``interfaces`` are libvirt's one list of forward devices: ``<forward dev='X'>``
    and ``<forward><interface dev='X'/></forward>`` mean the same, and libvirt writes both
    (``<forward dev='X'><interface dev='X'/></forward>``). A Forward built with only one of them
    gets the other filled in, so the two spellings are one model; ``dev`` is the first
    interface (the one device a nat or route network forwards through).
    """

    mode: ForwardMode = "nat"
    dev: str | None = None
    nat_addresses: tuple[AddressRange, ...] = ()
    nat_ports: PortRange | None = None
    #: the ``<interface dev=>`` children, in order
    interfaces: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.dev is not None and not self.interfaces:
            object.__setattr__(self, "interfaces", (self.dev,))
        elif self.dev is None and self.interfaces:
            object.__setattr__(self, "dev", self.interfaces[0])


@attrs.frozen
class DhcpHost:
    """A static DHCP reservation ``<host mac= id= name= ip=>``.

    IPv4 hosts are matched by ``mac`` and/or ``name``; DHCPv6 hosts by ``id`` (the client's
    DUID, stored lower-case) and/or ``name`` (a MAC means nothing to DHCPv6).
    """

    ip: str
    mac: str | None = None
    name: str | None = None
    id: str | None = None
    lease: DhcpLease | None = None


@attrs.frozen
class NetworkIp:
    """An address of the bridge with its DHCP settings."""

    address: str
    prefix: int
    family: Literal["ipv4", "ipv6"] = "ipv4"
    dhcp_ranges: tuple[AddressRange, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    #: ``<tftp root=>`` (IPv4 only): the directory dnsmasq's TFTP server serves
    tftp_root: str | None = None
    #: ``<dhcp><bootp file= server=>`` (IPv4 with DHCP only): the boot file and its TFTP server
    bootp_file: str | None = None
    bootp_server: str | None = None


@attrs.frozen
class DnsHost:
    """``<dns><host ip=><hostname>..</hostname></host>``."""

    ip: str
    hostnames: tuple[str, ...]


@attrs.frozen
class DnsForwarder:
    """``<dns><forwarder addr= domain=>``: at least one of the two.

    addr only: every query the network cannot answer goes to addr (instead of the host's
    resolvers); domain and addr: queries for the domain go to addr; domain only: queries for
    the domain are answered locally and never forwarded.
    """

    addr: str | None = None
    domain: str | None = None


@attrs.frozen
class DnsSrv:
    """``<dns><srv service= protocol= domain= target= port= priority= weight=>`` (RFC 2782).

    ``port``, ``priority`` and ``weight`` need a ``target``; a target of ``.`` says the service
    is not available.
    """

    service: str
    protocol: str
    domain: str | None = None
    target: str | None = None
    port: int | None = None
    priority: int | None = None
    weight: int | None = None


@attrs.frozen
class DnsTxt:
    """``<dns><txt name= value=>``."""

    name: str
    value: str


@attrs.frozen
class Network:
    """A virNetwork: bridge, addresses, forwarding, DHCP and DNS.

    Tri-state settings (``bool | None``) are None when the document leaves them out, which means
    libvirt's default: ``ipv6`` no, ``domain_local_only`` no, ``dns_enable`` yes,
    ``dns_forward_plain_names`` yes, ``port_isolated`` no.
    """

    name: str
    uuid: str | None = None
    bridge: Bridge = attrs.field(factory=Bridge)
    mtu: int | None = None
    mac: str | None = None
    domain_name: str | None = None
    forward: Forward | None = None
    ips: tuple[NetworkIp, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = ()
    routes: tuple[Route, ...] = ()
    autostart: bool = False
    #: ``<network ipv6='yes'>``: guest-to-guest IPv6 on a network without an IPv6 address
    ipv6: bool | None = None
    #: ``<domain localOnly=>``: queries for the domain are never forwarded upstream
    domain_local_only: bool | None = None
    #: ``<dns enable=>``: no means no DNS server on the network (DHCP may still run)
    dns_enable: bool | None = None
    #: ``<dns forwardPlainNames=>``: no means names without a dot are never forwarded
    dns_forward_plain_names: bool | None = None
    dns_forwarders: tuple[DnsForwarder, ...] = ()
    dns_srvs: tuple[DnsSrv, ...] = ()
    dns_txts: tuple[DnsTxt, ...] = ()
    #: ``<port isolated=>``: guests' ports cannot talk to each other (only to the host/uplink)
    port_isolated: bool | None = None
    #: serialized foreign ``<metadata>`` children, kept verbatim (as for domains)
    metadata: tuple[str, ...] = ()
