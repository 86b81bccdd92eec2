"""Starting and stopping a virNetwork in a given host namespace, in libvirt's order.

Start: refuse a subnet that collides with an existing route or address; create the bridge
(name from the XML or generated with the prefix, MAC, MTU, STP); load the network's nftables
tables (forwarding and NAT, and the anti-spoofing guard of the guests' ports); add the
addresses; bring the bridge up; add the static routes; enable forwarding when the mode
forwards; start dnsmasq (DHCP + DNS). Every step that changed something pushes its undo on
a stack; a failure unwinds the stack, so a failed start leaves nothing behind. Stop is the same
unwinding.

A running network is a trio task (:func:`run_network`): it owns its dnsmasq supervisor, reports
itself ready through ``task_status`` with a :class:`RunningNetwork` handle, and tears the network
down when cancelled (``RunningNetwork.stop``). Forwarding sysctls are left on at stop, as libvirt
does: other networks or the administrator may rely on them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor.errors import ConflictError, InvalidOperation
from supervisor.model import DhcpHost, Network
from supervisor.net import names, netlink, nftables
from supervisor.net.dnsmasq import Dnsmasq, DnsmasqFiles, run_dnsmasq, wants_dnsmasq
from supervisor.net.netlink import NetnsWorker
from supervisor.net.nftables import Nfnl
from supervisor.net.rtnl import Rtnl

Undo = Callable[[], Awaitable[Any]]
_log = logging.getLogger("vsv.net")


@attrs.define(eq=False)
class HostNet:
    """The "host" side: the namespace where bridges, firewall and dnsmasq live.

    ``netns`` is None for the supervisor's own namespace, or the path of another one (sandbox
    mode). The netlink worker for it is opened once and kept.
    """

    prefix: str
    netns: str | None
    run_dir: Path
    worker: NetnsWorker
    #: set when the supervisor exits leaving guests running (--keep-guests): networks that
    #: are cancelled then keep their bridge and firewall, so guests keep talking; the next
    #: supervisor rebuilds them and re-attaches the guests
    keep: bool = False
    #: a raw netlink socket in the host namespace for the guest start path, made on first use
    #: inside a worker job (so in the worker's namespace) and used only there
    _rtnl: Rtnl | None = None
    #: the same for nfnetlink: guests' ports enter and leave their network's guard table
    _nfnl: Nfnl | None = None

    def rtnl_here(self) -> Rtnl:
        """The host namespace's raw netlink socket; call only inside a ``worker`` job."""
        if self._rtnl is None:
            self._rtnl = Rtnl()
        return self._rtnl

    def nfnl_here(self) -> Nfnl:
        """The host namespace's nfnetlink socket; call only inside a ``worker`` job."""
        if self._nfnl is None:
            self._nfnl = Nfnl()
        return self._nfnl

    @classmethod
    async def open(cls, prefix: str, netns: str | None, run_dir: Path) -> HostNet:
        """Open the host namespace's netlink worker; ``run_dir`` must exist."""
        return cls(
            prefix=prefix, netns=netns, run_dir=run_dir, worker=await NetnsWorker.open(netns)
        )

    async def aclose(self) -> None:
        """Close the netlink worker (and then the raw socket it used)."""
        await self.worker.aclose(wait=True)
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        if self._nfnl is not None:
            self._nfnl.close()
            self._nfnl = None


class UndoStack:
    """Undo actions of the steps done so far; unwound in reverse, shielded, on failure or stop."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Undo]] = []

    def push(self, what: str, undo: Undo) -> None:
        """Remember how to undo a step that just succeeded."""
        self._steps.append((what, undo))

    async def unwind(self) -> list[str]:
        """Undo every step, last first; returns the failures (which never stop the unwinding)."""
        failures = []
        with trio.CancelScope(shield=True):
            while self._steps:
                what, undo = self._steps.pop()
                try:
                    await undo()
                except Exception as exc:
                    failures.append(f"undo {what}: {exc}")
        return failures


def host_bridge(network: Network) -> bool:
    """Whether the network is ``forward mode='bridge'``: a bridge the host's administrator owns
    (the supervisor never makes or removes it)."""
    return network.forward is not None and network.forward.mode == "bridge"


def forwards(network: Network) -> bool:
    """Whether the network's mode needs IP forwarding in the host."""
    return network.forward is not None and network.forward.mode in ("nat", "route", "open")


def check_collisions(
    network: Network,
    used: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]],
) -> None:
    """Refuse a network whose subnets overlap a subnet already routed or addressed (pure)."""
    for ip in network.ips:
        mine = ipaddress.ip_network(f"{ip.address}/{ip.prefix}", strict=False)
        for other, dev in used:
            if other.version == mine.version and mine.overlaps(other):
                raise ConflictError(
                    f"network {network.name}: {mine} collides with {other} on {dev}"
                )


@attrs.define(eq=False)
class RunningNetwork:
    """Handle on a running network: its bridge, table, dnsmasq, and how to stop it."""

    network: Network
    bridge: str
    table: str | None
    dnsmasq: Dnsmasq | None = None
    #: its ``bridge`` table: the anti-spoofing guard of the guests' ports (same name as ``table``)
    guard: str | None = None
    #: False for ``forward mode='bridge'``: the bridge is the host's, never removed
    owns_bridge: bool = True
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _stopped: trio.Event = attrs.field(factory=trio.Event)

    @property
    def gateway(self) -> str | None:
        """The bridge's first IPv4 address: the guests' default gateway."""
        return next((ip.address for ip in self.network.ips if ip.family == "ipv4"), None)

    async def add_host(self, key: str, host: DhcpHost) -> None:
        """Add a guest's static reservation live (dnsmasq re-reads its hosts file)."""
        if self.dnsmasq is not None:
            await self.dnsmasq.set_host(key, host)

    async def remove_host(self, key: str) -> None:
        """Drop a guest's live reservation."""
        if self.dnsmasq is not None:
            await self.dnsmasq.remove_host(key)

    async def stop(self) -> None:
        """Tear the network down completely and wait until it is gone."""
        self._scope.cancel()
        await self._stopped.wait()


def bridge_for(prefix: str, network: Network) -> str:
    """The bridge's name: the XML's, or one generated with the prefix."""
    return network.bridge.name or names.bridge_name(prefix, network.name)


async def _create_bridge(w: NetnsWorker, network: Network, bridge: str) -> None:
    await w.call(
        lambda ipr: netlink.create_bridge(
            ipr,
            bridge,
            # a definition stored before addresses were filled in gets its stable one here
            mac=network.mac or names.bridge_mac(network.uuid or network.name),
            mtu=network.mtu,
            # STP only when asked for: with STP the kernel holds new ports in listening and
            # learning for at least 2 x 2 s, so a guest would start without a network
            stp=bool(network.bridge.stp),
            delay=network.bridge.delay if network.bridge.delay is not None else 0,
        )
    )


async def run_network(
    host: HostNet,
    network: Network,
    *,
    resolv_file: str | None = None,
    adopt: bool = False,
    task_status: trio.TaskStatus[RunningNetwork] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start ``network`` in the host namespace, run it until cancelled, then stop it.

    ``adopt``: the network ran under a previous supervisor that left it up for an upgrade
    (``--keep-guests``). Its bridge, with the guests' ports, is taken over as it is: the rules
    are loaded again (an atomic replacement of the table) and only what is missing is added, so
    forwarding goes on without a gap. Only dnsmasq is new (its leases are in its lease file).
    """
    if host_bridge(network):
        await _run_host_bridge(host, network, adopt=adopt, task_status=task_status)
        return
    w = host.worker
    bridge = bridge_for(host.prefix, network)
    undo = UndoStack()
    running: RunningNetwork | None = None
    try:
        exists = await w.call(lambda ipr: netlink.link_index(ipr, bridge)) is not None
        adopting = adopt and exists
        if not adopting:
            used = await w.call(netlink.used_subnets)
            check_collisions(network, used)
        if exists and not adopting:
            raise ConflictError(f"network {network.name}: an interface {bridge} already exists")

        if not adopting:
            await _create_bridge(w, network, bridge)
        undo.push(f"bridge {bridge}", lambda: w.call(lambda ipr: netlink.delete_link(ipr, bridge)))

        # the forwarding table and the guard of the guests' ports, in one transaction; a network
        # taken over keeps its guard's elements (its running guests' ports, dnsmasq's leases)
        table = names.nft_table(host.prefix, network.name)
        ruleset = nftables.network_ruleset(table, network, bridge)
        script = nftables.replace_script(table, ruleset) if ruleset is not None else ""
        if adopting:
            script += nftables.antispoof_reload_script(table)
        else:
            script += nftables.replace_script(table, nftables.antispoof_ruleset(table), "bridge")
        await nftables.apply_script(host.netns, script)
        undo.push(f"nft tables {table}", partial(_delete_tables, host.netns, table))

        # adopted: the addresses and routes are there already (ConflictError), unless lost
        keep = contextlib.suppress(ConflictError) if adopting else contextlib.nullcontext()
        for ip in network.ips:
            with keep:
                await w.call(
                    partial(netlink.add_address, name=bridge, address=ip.address, prefix=ip.prefix)
                )
        await w.call(lambda ipr: netlink.set_up(ipr, bridge))
        for route in network.routes:
            dst = f"{route.address}/{route.prefix}"
            with keep:
                await w.call(partial(netlink.add_route, dst=dst, gateway=route.gateway))
        if forwards(network):
            families = {ip.family for ip in network.ips}
            if "ipv4" in families:
                await w.call(lambda _: netlink.sysctl_write("net.ipv4.ip_forward", "1"))
            if "ipv6" in families:
                await w.call(lambda _: netlink.sysctl_write("net.ipv6.conf.all.forwarding", "1"))

        running = RunningNetwork(
            network=network,
            bridge=bridge,
            table=table if ruleset is not None else None,
            guard=table,
        )
        with running._scope:
            async with trio.open_nursery() as nursery:
                if wants_dnsmasq(network):
                    host.run_dir.mkdir(parents=True, exist_ok=True)
                    files = DnsmasqFiles.in_dir(host.run_dir, host.prefix, network.name)
                    # after dnsmasq has stopped (the nursery ends first); not for a network
                    # left up for a successor, whose dnsmasq goes on with its lease file
                    undo.push(f"dnsmasq files of {network.name}", partial(_remove_files, files))
                    handle = Dnsmasq(
                        network=network,
                        bridge=bridge,
                        files=files,
                        netns=host.netns,
                        resolv_file=resolv_file,
                        guard_table=table if hook_runs(host.run_dir, network.name) else None,
                    )
                    running.dnsmasq = await nursery.start(run_dnsmasq, handle)
                task_status.started(running)
                await trio.sleep_forever()
    finally:
        failures = [] if host.keep else await undo.unwind()
        if running is not None:
            running._stopped.set()
        if failures:
            raise InvalidOperation(
                f"network {network.name} was not removed completely: " + "; ".join(failures)
            )


async def _run_host_bridge(
    host: HostNet,
    network: Network,
    *,
    adopt: bool,
    task_status: trio.TaskStatus[RunningNetwork],
) -> None:
    """A ``forward mode='bridge'`` network: a bridge the host's administrator made and owns.

    As libvirt, nothing is made for it but the guests' ports: no bridge, address, route,
    forwarding rule or dnsmasq; the bridge must exist (and be a bridge) at start and is left
    as it is at stop. What the supervisor adds is its own: the network's guard table (family
    ``bridge``, matching only the guests' ports, so the host's other ports pass untouched) and,
    with ``<port isolated='yes'/>``, the isolated flag on the guests' ports.
    """
    w = host.worker
    bridge = bridge_for(host.prefix, network)
    kind = await w.call(partial(netlink.link_kind, name=bridge))
    if kind != "bridge":
        what = "does not exist" if kind is None else f"is a {kind} device, not a bridge"
        raise InvalidOperation(
            f"network {network.name}: <bridge name='{bridge}'> of forward mode 'bridge' {what}"
        )
    undo = UndoStack()
    running: RunningNetwork | None = None
    try:
        table = names.nft_table(host.prefix, network.name)
        if adopt:  # its ports stay guarded through the takeover
            script = nftables.antispoof_reload_script(table)
        else:
            script = nftables.replace_script(table, nftables.antispoof_ruleset(table), "bridge")
        await nftables.apply_script(host.netns, script)
        undo.push(
            f"nft table bridge {table}", partial(nftables.delete, host.netns, table, "bridge")
        )
        running = RunningNetwork(
            network=network, bridge=bridge, table=None, guard=table, owns_bridge=False
        )
        with running._scope:
            task_status.started(running)
            await trio.sleep_forever()
    finally:
        failures = [] if host.keep else await undo.unwind()
        if running is not None:
            running._stopped.set()
        if failures:
            raise InvalidOperation(
                f"network {network.name} was not removed completely: " + "; ".join(failures)
            )


def hook_runs(run_dir: Path, network: str) -> bool:
    """Whether dnsmasq can execute a lease hook written in the run dir: not on a filesystem
    mounted ``noexec``. Without the hook the guard still knows every reservation and static
    address, but not dnsmasq's dynamic leases (said once in the log)."""
    if os.statvfs(run_dir).f_flag & os.ST_NOEXEC:
        _log.warning(
            "network %s: run dir %s is mounted noexec: dnsmasq's leases are not followed by "
            "anti-spoofing (reservations and static addresses are)",
            network,
            run_dir,
        )
        return False
    return True


async def _remove_files(files: DnsmasqFiles) -> None:
    files.remove()


async def _delete_tables(netns: str | None, table: str) -> None:
    """Remove a network's two tables (forwarding and guard) in one transaction; each is made
    first if it is missing, so removing what is not there is no error."""
    script = "".join(f"table {f} {table}\ndelete table {f} {table}\n" for f in ("inet", "bridge"))
    await nftables.apply_script(netns, script)
