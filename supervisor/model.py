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


@attrs.frozen
class Filesystem:
    """A ``<filesystem type='mount'>``: a host directory mounted at ``target`` in the guest."""

    source: str
    target: str
    type: Literal["mount", "ram"] = "mount"
    readonly: bool = False
    #: for ``type='ram'``: size of the tmpfs in KiB
    usage_kib: int | None = None


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


InterfaceType = Literal["network", "bridge", "ethernet", "vserver"]


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


@attrs.frozen
class CpuTune:
    """libvirt's ``<cputune>``: CFS shares and bandwidth (quota < 0 means unlimited)."""

    shares: int | None = None
    period: int | None = None
    quota: int | None = None


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
    #: ``<resource><partition>``
    partition: str | None = None
    #: serialized foreign ``<metadata>`` children, kept verbatim
    metadata: tuple[str, ...] = ()

    @property
    def private_network(self) -> bool:
        """Whether the guest gets its own network namespace (libvirt's LXC rule)."""
        return self.privnet or bool(self.interfaces)

    @property
    def root_dir(self) -> str | None:
        """The host directory mounted as the guest's ``/``, if the domain names one."""
        for fs in self.filesystems:
            if fs.target == "/" and fs.type == "mount":
                return fs.source
        return None


ForwardMode = Literal["nat", "route", "open", "bridge"]


@attrs.frozen
class Bridge:
    """``<bridge name= stp= delay=>``; a missing name is generated with the prefix at define."""

    name: str | None = None
    stp: bool | None = None
    delay: int | None = None


@attrs.frozen
class PortRange:
    """An inclusive range of numbers (NAT ports)."""

    start: int
    end: int


@attrs.frozen
class AddressRange:
    """An inclusive range of addresses (DHCP pool, NAT source addresses)."""

    start: str
    end: str


@attrs.frozen
class Forward:
    """``<forward mode=>``; no Forward at all means an isolated network."""

    mode: ForwardMode = "nat"
    dev: str | None = None
    nat_addresses: tuple[AddressRange, ...] = ()
    nat_ports: PortRange | None = None


@attrs.frozen
class DhcpHost:
    """A static DHCP reservation ``<host mac= name= ip=>``."""

    ip: str
    mac: str | None = None
    name: str | None = None


@attrs.frozen
class NetworkIp:
    """An address of the bridge with its DHCP settings."""

    address: str
    prefix: int
    family: Literal["ipv4", "ipv6"] = "ipv4"
    dhcp_ranges: tuple[AddressRange, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()


@attrs.frozen
class DnsHost:
    """``<dns><host ip=><hostname>..</hostname></host>``."""

    ip: str
    hostnames: tuple[str, ...]


@attrs.frozen
class Network:
    """A virNetwork: bridge, addresses, forwarding, DHCP and DNS."""

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
