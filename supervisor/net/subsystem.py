"""The network subsystem as a bus subscriber: networks for the facade, NICs in guest hooks.

A guest with ``<interface>`` elements gets a named network namespace (``/run/netns/PREFIX-NAME``)
in its ``prepare`` hook; the NICs are plumbed into it there, and the guest's init then joins it,
so init starts with its network in place. ``release`` unplumbs and drops the namespace. What was
plumbed is written into the guest's hook records (and so into the run dir), which is enough to
undo it after a supervisor restart.

Networks run as tasks in a nursery that :meth:`NetworkSubsystem.run` owns; their lifecycle
events (DEFINED, UNDEFINED, STARTED, STOPPED) are published as ``network`` events on the bus.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervisor import nsutil
from supervisor.errors import InvalidDocument, InvalidOperation, NotFound, RuntimeFailure, VsvError
from supervisor.facade import Lease, NetworkStatus
from supervisor.guest.procs import wait_pid_exit
from supervisor.hooks import GuestContext, NetRecord
from supervisor.model import Domain, Network
from supervisor.net import names, nftables
from supervisor.net.dnsmasq import (
    UPSTREAM_DERIVED,
    DnsmasqFiles,
    lease_lines,
    upstream_resolv_file,
)
from supervisor.net.networks import HostNet, bridge_for, host_bridge
from supervisor.net.nftables import port_elements
from supervisor.net.nics import (
    PlumbedNic,
    configure_port,
    macs_managed,
    nic_guard,
    port_isolated,
)
from supervisor.net.service import NetworkService, NetworkTable
from supervisor.store import ConfigStore, RunStore

if TYPE_CHECKING:
    from supervisor.bus import Bus

log = logging.getLogger("vsv.net")

HOOK_ORDER = 10

Starter = Callable[..., Awaitable[Any]]


@attrs.define(eq=False)
class NetworkSubsystem:
    """Networks and guest NICs of one supervisor."""

    bus: Bus[GuestContext]
    prefix: str
    config: ConfigStore
    runs: RunStore
    service: NetworkService
    _start: trio.MemorySendChannel[tuple[str, bool, trio.Event, list[BaseException]]] | None = None
    #: allocation owner key -> domain name, for leases and domifaddr
    _owners: dict[str, str] = attrs.Factory(dict)
    #: the NICs of every guest that holds them (prepared or adopted, not yet released)
    _plumbed: dict[str, tuple[PlumbedNic, ...]] = attrs.Factory(dict)

    @classmethod
    async def open(
        cls,
        bus: Bus[GuestContext],
        *,
        prefix: str,
        host_netns: str | None,
        run_dir: Path,
        config: ConfigStore,
        runs: RunStore,
        resolv_file: str | None = UPSTREAM_DERIVED,
    ) -> NetworkSubsystem:
        """Open the host side (netlink worker in ``host_netns``, None = our own namespace).

        ``resolv_file``: the resolv.conf whose servers networks forward DNS to; by default the
        one of the host namespace (:func:`supervisor.net.dnsmasq.upstream_resolv_file`); None:
        no upstream.
        """
        net_dir = run_dir / "net"
        net_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        host = await HostNet.open(prefix, host_netns, net_dir)
        table = NetworkTable(prefix)

        def emit(name: str, type: str) -> None:
            bus.publish_nowait("network", name, type)

        if resolv_file == UPSTREAM_DERIVED:
            resolv_file = upstream_resolv_file(host_netns)
        service = NetworkService(host=host, table=table, emit=emit, resolv_file=resolv_file)
        return cls(bus=bus, prefix=prefix, config=config, runs=runs, service=service)

    async def aclose(self) -> None:
        self.service.close()
        await self.service.host.aclose()

    # ------------------------------------------------------------------------ the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load stored networks, clean up a predecessor's leftovers, register hooks, serve.

        Cancelling it stops every running network (each network task undoes its own work).
        """
        nets, problems = self.config.load_networks()
        for problem in problems:
            log.warning("ignoring stored network: %s", problem)
        for net in nets:
            self.service.table.define(net)
        # networks a predecessor ran: a defined one is taken over in place below (its bridge
        # and the guests' ports stay; dnsmasq is started anew), the others are torn down
        records = self.runs.read_all("networks")
        previously = sorted(records)
        # in place only when it ran from the definition stored now (not redefined meanwhile)
        same = {
            name
            for name, record in records.items()
            if name in self.service.table.definitions
            and record.get("definition") == definition_digest(self.service.table.get(name))
        }
        await self._clean_leftovers(keep=same)
        send, receive = trio.open_memory_channel[tuple[str, bool, trio.Event, list[BaseException]]](
            math.inf
        )
        self.bus.add_hooks(
            "network", prepare=self._prepare, release=self._release, order=HOOK_ORDER
        )
        try:
            async with trio.open_nursery() as nursery:
                self._start = send
                nursery.start_soon(self._starter, receive, nursery)
                for name in previously:
                    if name in self.service.table.definitions:
                        try:
                            await self.start_network(name, adopt=name in same)
                        except VsvError as exc:
                            log.warning("restarting network %s: %s", name, exc)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._start = None
            self.bus.remove_hooks("network")

    async def _starter(
        self,
        receive: trio.MemoryReceiveChannel[tuple[str, bool, trio.Event, list[BaseException]]],
        nursery: trio.Nursery,
    ) -> None:
        # Network tasks live in run()'s nursery; requests reach it through this channel.
        async for name, adopt, done, errors in receive:
            try:
                # recorded before anything is made, so a successor can clean up after a start
                # that a SIGKILL interrupted
                net = self.service.table.get(name)
                digest = definition_digest(net)
                self.runs.write(
                    "networks",
                    name,
                    {
                        "bridge": None if host_bridge(net) else bridge_for(self.prefix, net),
                        "table": names.nft_table(self.prefix, name),
                        "prefix": self.prefix,
                        "definition": digest,
                    },
                )
                await self.service.start(name, nursery, adopt=adopt, announce=False)
                # recorded as started before the event: a successor that finds the record
                # reports the network STOPPED if it cannot take it over, so a STARTED in the
                # journal is always followed by a STOPPED (never a second STARTED); a network
                # taken over in place never stopped, and gets no new STARTED
                self._record(name, digest)
                if not adopt:
                    self.service.emit(name, "STARTED")
            except Exception as exc:
                errors.append(exc)
            finally:
                done.set()

    def _record(self, name: str, digest: str) -> None:
        handle = self.service.running.get(name)
        if handle is None:
            return
        record: dict[str, Any] = {
            # a host bridge (forward mode='bridge') is not the supervisor's to remove
            "bridge": handle.bridge if handle.owns_bridge else None,
            "table": handle.table,
            "guard": handle.guard,
            "prefix": self.prefix,
            "definition": digest,
            "started": True,
        }
        if handle.dnsmasq is not None:
            record["dnsmasq_pid"] = handle.dnsmasq.statistics().pid
        self.runs.write("networks", name, record)

    async def _clean_leftovers(self, keep: set[str]) -> None:
        """Stop the dnsmasq of every network a previous supervisor left; remove the bridges
        and tables too, except those of the networks in ``keep`` (taken over in place)."""
        from supervisor.net import netlink

        host = self.service.host
        for name, record in self.runs.read_all("networks").items():
            # every dnsmasq serving this network's files: the recorded one, and one the
            # predecessor restarted (its pid was never recorded)
            files = DnsmasqFiles.in_dir(host.run_dir, self.prefix, name)
            for pid in dnsmasq_pids(str(files.conf)):
                signal_pid(pid, signal.SIGTERM)
                with trio.move_on_after(2):
                    await wait_pid_exit(pid)
            if name in keep:
                continue  # its record stays until the network runs again (or is cleaned up)
            files.remove()
            # forwarding (an open or host-bridge network has none), and the guard of the ports
            for family, key in (("inet", "table"), ("bridge", "guard"), ("bridge", "table")):
                table = record.get(key)
                if isinstance(table, str):
                    with contextlib.suppress(VsvError):
                        await nftables.delete(host.netns, table, family)
            bridge = record.get("bridge")
            if isinstance(bridge, str) and bridge:
                with contextlib.suppress(Exception):
                    await host.worker.call(functools.partial(netlink.delete_link, name=bridge))
            self.runs.remove("networks", name)
            log.info("cleaned up network %s left by a previous supervisor", name)
            if record.get("started"):
                # it was running (its STARTED is in the journal) and now is not
                self.service.emit(name, "STOPPED")

    # ------------------------------------------------------------------------ guest hooks

    def _netns_name(self, domain_name: str) -> str:
        return f"{self.prefix}-{domain_name}"

    async def _prepare(self, ctx: GuestContext) -> None:
        domain = ctx.domain
        if not domain.has_nics:
            return
        name = self._netns_name(domain.name)
        # left by a crash, nothing of it can be in use now: a namespace, or only its mount
        # point (a supervisor killed between making the file and mounting on it)
        nsutil.delete_netns(name)
        path, guest = await self.service.create_guest_netns(name, source=ctx.netns_source)
        ctx.records.net = NetRecord(name)
        try:
            nics = await self.service.plumb(domain, str(path), guest=guest)
        except BaseException:
            nsutil.delete_netns(name)
            ctx.records.net = None
            raise
        finally:
            guest.close()
        ctx.records.net = NetRecord(name, nics)
        self._plumbed[domain.name] = nics
        for nic in nics:
            self._owners[nic.owner] = domain.name
        ctx.netns_path = str(path)

    async def adopt(self, ctx: GuestContext) -> None:
        """Re-attach a guest a previous supervisor plumbed: its netns, bridge port, address.

        The networks were taken over (same bridge, new dnsmasq) or started anew before guests
        are adopted, so the guest's host-side veth is enslaved to the bridge (again) and its
        address goes back into the allocation book and dnsmasq's reservations: the guest keeps
        its address, and no other guest can be given it.
        """
        record = ctx.records.net
        if record is None:
            return
        ctx.netns_path = str(nsutil.netns_path(record.netns))
        nics = record.nics
        self._plumbed[ctx.domain.name] = nics
        for nic in nics:
            self._owners[nic.owner] = ctx.domain.name
            if nic.network is not None and nic.network in self.service.running:
                await self._attach(ctx.domain.name, nic)

    async def _attach(self, domain_name: str, nic: PlumbedNic) -> None:
        """Enslave a live guest's host end to its (re)started network's bridge; its address goes
        back into the allocation book and dnsmasq's reservations, so no one else gets it.

        Its port enters the network's guard table first (again, for a network taken over in
        place, which kept it: adding what is there is no error), so it is never on the bridge
        unguarded."""
        from supervisor.model import DhcpHost
        from supervisor.net import netlink

        assert nic.network is not None
        handle = self.service.running[nic.network]
        host = self.service.host
        guard = nic_guard(nic)
        try:
            if guard is not None and handle.guard is not None:
                table = handle.guard
                elements = port_elements(guard)
                await host.worker.call(lambda _: host.nfnl_here().update(table, add=elements))
            await host.worker.call(
                functools.partial(netlink.set_up, name=nic.host_if, master=handle.bridge)
            )
            isolated, managed = port_isolated(handle), macs_managed(handle)
            await host.worker.call(
                lambda _: configure_port(
                    host.rtnl_here(), nic.host_if, nic.mac, isolated=isolated, managed=managed
                )
            )
        except Exception as exc:
            log.warning("guest %s: re-attaching %s: %s", domain_name, nic.host_if, exc)
            return
        address = nic.addresses[0].split("/")[0] if nic.addresses else None
        if address is None:
            return
        book = self.service.book
        try:
            book.state, _ = book.state.allocate(handle.network, nic.owner, nic.mac, address)
        except VsvError as exc:  # e.g. the network was redefined with another subnet
            log.warning("guest %s: keeping %s on %s: %s", domain_name, address, nic.network, exc)
            return
        await handle.add_host(nic.owner, DhcpHost(ip=address, mac=nic.mac, name=domain_name))

    def _guest_nics_on(self, network: str) -> list[tuple[str, PlumbedNic]]:
        return [
            (guest, nic)
            for guest, nics in self._plumbed.items()
            for nic in nics
            if nic.network == network
        ]

    async def _release(self, ctx: GuestContext) -> None:
        record = ctx.records.net
        if record is None:
            # a start interrupted inside this hook may have made the guest's namespace (or
            # only its mount point) before recording it; its name is derived, so it goes
            nsutil.delete_netns(self._netns_name(ctx.domain.name))
            return
        self._plumbed.pop(ctx.domain.name, None)
        try:
            path = nsutil.netns_path(record.netns)
            await self.service.unplumb(record.nics, guest_netns=str(path))
        finally:
            nsutil.delete_netns(record.netns)
            ctx.records.net = None

    # ------------------------------------------------------------------------ facade

    def list_networks(self) -> list[NetworkStatus]:
        out = []
        for name in sorted(self.service.table.definitions):
            net = self.service.table.definitions[name]
            out.append(
                NetworkStatus(
                    name=name,
                    uuid=net.uuid,
                    active=name in self.service.running,
                    autostart=net.autostart,
                    bridge=bridge_for(self.prefix, net),
                )
            )
        return out

    def get_network(self, name: str) -> Network:
        return self.service.table.get(name)

    def define_network(self, network: Network, domains: Iterable[Domain] = ()) -> Network:
        """Define (or redefine) a network; ``domains``: the defined domains, whose static
        addresses on it must still fit (:func:`supervisor.net.addresses.network_problems`)."""
        from supervisor.net.addresses import network_problems, raise_problems
        from supervisor.validate import check_network

        problems = check_network(network)
        if problems:
            raise InvalidDocument(problems)
        raise_problems(network_problems(network, domains))
        if network.uuid is None:
            import uuid

            previous = self.service.table.definitions.get(network.name)
            network = attrs.evolve(network, uuid=previous.uuid if previous else str(uuid.uuid4()))
        if network.bridge.name is None:
            network = attrs.evolve(
                network, bridge=attrs.evolve(network.bridge, name=bridge_for(self.prefix, network))
            )
        if network.mac is None:
            # as libvirt does: the bridge gets an address of its own, kept across redefinitions
            previous = self.service.table.definitions.get(network.name)
            network = attrs.evolve(
                network,
                mac=previous.mac
                if previous and previous.mac
                else names.bridge_mac(network.uuid or network.name),
            )
        names.check_ifname(network.bridge.name or "")
        # check first (pure), store, then publish
        scratch = NetworkTable(self.prefix, dict(self.service.table.definitions))
        scratch.define(network)
        self.config.save_network(network)
        return self.service.define(network)

    def undefine_network(self, name: str) -> None:
        self.service.undefine(name)
        self.config.remove_network(name)

    async def start_network(self, name: str, *, adopt: bool = False) -> None:
        """Start a network (``adopt``: take over what a predecessor left up, in place)."""
        self.service.table.get(name)
        if name in self.service.running:  # before the starter rewrites the run record
            raise InvalidOperation(f"network {name} is already running")
        if self._start is None:
            raise RuntimeFailure("the network subsystem is not running")
        done = trio.Event()
        errors: list[BaseException] = []
        self._start.send_nowait((name, adopt, done, errors))
        await done.wait()
        if errors:
            raise errors[0]
        for guest, nic in self._guest_nics_on(name):
            await self._attach(guest, nic)

    async def destroy_network(self, name: str) -> None:
        """Stop a network. Guests on it keep running, unplugged (as libvirt's net-destroy), but
        keep their addresses: nobody else is given them, and a later net-start plugs them back
        (which libvirt does not do)."""
        net = self.service.table.get(name)
        await self.service.stop(name)
        self.runs.remove("networks", name)
        book = self.service.book
        for guest, nic in self._guest_nics_on(name):
            if nic.addresses:
                address = nic.addresses[0].split("/")[0]
                try:
                    book.state, _ = book.state.allocate(net, nic.owner, nic.mac, address)
                except VsvError as exc:
                    log.warning("guest %s: keeping %s: %s", guest, address, exc)

    async def set_autostart(self, name: str, autostart: bool) -> None:
        net = self.service.table.set_autostart(name, autostart)
        self.config.save_network(net)

    async def start_autostart(self) -> None:
        for name in self.service.table.autostart_names():
            if name not in self.service.running:
                try:
                    await self.start_network(name)
                except VsvError as exc:
                    log.warning("autostart of network %s failed: %s", name, exc)

    def detach(self) -> None:
        """Leave networks in place when this supervisor exits (guests keep running)."""
        self.service.host.keep = True

    async def stop_all(self) -> None:
        for name in list(self.service.running):
            with contextlib.suppress(VsvError):
                await self.destroy_network(name)

    def leases(self, name: str) -> list[Lease]:
        net = self.service.table.get(name)
        handle = self.service.running.get(name)
        if handle is None:
            return []
        files = DnsmasqFiles.in_dir(self.service.host.run_dir, self.prefix, name)
        prefix = next((ip.prefix for ip in net.ips if ip.family == "ipv4"), 24)
        allocations = list(self.service.allocations().on(name))
        owners = {a.mac: self._owners.get(a.owner, a.owner) for a in allocations}
        leases = [
            Lease(
                network=name,
                mac=mac,
                ip=ip,
                prefix=prefix,
                hostname=None if host == "*" else host,
                expiry=None,
                domain=owners.get(mac),
            )
            for mac, ip, host in lease_lines(files)
        ]
        # addresses handed out with the NIC (the guest need not run a DHCP client): listed too,
        # so every guest on the network shows, as libvirt's reservations would
        leased = {lease.ip for lease in leases}
        leases += [
            Lease(
                network=name,
                mac=a.mac,
                ip=a.address,
                prefix=prefix,
                hostname=self._owners.get(a.owner),
                expiry=None,
                domain=self._owners.get(a.owner),
            )
            for a in allocations
            if a.address not in leased
        ]
        return leases


def dnsmasq_pids(conf_file: str) -> list[int]:
    """Pids of the dnsmasq processes started with ``--conf-file=conf_file``.

    Not the helper each one forks to run its lease hook (same command line, the dnsmasq as its
    parent), which ends with it; a helper whose dnsmasq is gone is listed.
    """
    import os

    wanted = f"--conf-file={conf_file}".encode()
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not (argv and argv[0].endswith(b"dnsmasq") and wanted in argv):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # pid -> parent
    return sorted(pid for pid, parent in found.items() if parent not in found)


def signal_pid(pid: int, sig: int) -> None:
    """Send a signal, ignoring a process that is already gone."""
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def require_network(sub: NetworkSubsystem | None, name: str) -> NetworkSubsystem:
    """The subsystem, or NotFound naming the network when networking is off."""
    if sub is None:
        raise NotFound(f"network {name!r} is not defined (networking is not enabled)")
    return sub


def definition_digest(network: Network) -> str:
    """A fingerprint of a network's definition, kept in its run record: a successor takes the
    network over in place only if it still has the definition the network runs from."""
    from supervisor.xml import format_network

    return hashlib.sha256(format_network(network).encode()).hexdigest()[:32]
