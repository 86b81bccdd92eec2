"""Network definitions and their lifecycle: define, undefine, start, stop, autostart, events.

:class:`NetworkTable` is the pure part (which definitions exist, what a definition may not
collide with, which event each change means). :class:`NetworkService` is the edge that the
daemon holds: it starts networks as tasks in a nursery the caller passes in, keeps their
:class:`RunningNetwork` handles, the address book shared by guest NICs, and emits the libvirt
network lifecycle events (DEFINED, UNDEFINED, STARTED, STOPPED) through a callback, which the
integration wires to ``bus.publish_nowait("network", name, type)``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import trio

from supervisor import nsutil
from supervisor.errors import ConflictError, InvalidOperation, NotFound
from supervisor.model import Domain, Network
from supervisor.net.ipam import Allocations
from supervisor.net.networks import HostNet, RunningNetwork, bridge_for, run_network
from supervisor.net.nics import AddressBook, PlumbedNic, guest_rtnl, plumb, unplumb
from supervisor.net.rtnl import Rtnl

Emit = Callable[[str, str], None]
_log = logging.getLogger("vsv.net")


@attrs.define(eq=False)
class NetworkTable:
    """The defined networks (pure, no I/O)."""

    prefix: str
    definitions: dict[str, Network] = attrs.field(factory=dict)

    def define(self, network: Network) -> tuple[Network, str]:
        """Add or replace a definition; returns it (bridge name filled in) and the event type.

        Refuses a uuid, bridge name or IPv4 subnet that another network already uses.
        """
        if not network.bridge.name:
            network = attrs.evolve(
                network,
                bridge=attrs.evolve(network.bridge, name=bridge_for(self.prefix, network)),
            )
        for other in self.definitions.values():
            if other.name == network.name:
                continue
            if network.uuid and other.uuid == network.uuid:
                raise ConflictError(f"network {other.name} already has uuid {network.uuid}")
            if other.bridge.name == network.bridge.name:
                raise ConflictError(f"network {other.name} already uses bridge {other.bridge.name}")
            for a in network.ips:
                for b in other.ips:
                    na = ipaddress.ip_network(f"{a.address}/{a.prefix}", strict=False)
                    nb = ipaddress.ip_network(f"{b.address}/{b.prefix}", strict=False)
                    if na.version == nb.version and na.overlaps(nb):
                        raise ConflictError(
                            f"network {network.name}: {na} overlaps {nb} of network {other.name}"
                        )
        self.definitions[network.name] = network
        return network, "DEFINED"

    def get(self, name: str) -> Network:
        """A definition by name."""
        try:
            return self.definitions[name]
        except KeyError:
            raise NotFound(f"no network named {name!r}") from None

    def undefine(self, name: str) -> str:
        """Remove a definition; returns the event type."""
        self.get(name)
        del self.definitions[name]
        return "UNDEFINED"

    def set_autostart(self, name: str, autostart: bool) -> Network:
        """Mark a network to be started with the supervisor (or not)."""
        net = attrs.evolve(self.get(name), autostart=autostart)
        self.definitions[name] = net
        return net

    def autostart_names(self) -> list[str]:
        """The networks to start with the supervisor, in name order."""
        return sorted(n for n, net in self.definitions.items() if net.autostart)


@attrs.define(eq=False)
class NetworkService:
    """The running side: networks as tasks, NICs of guests, address allocations, events."""

    host: HostNet
    table: NetworkTable
    emit: Emit = attrs.field(default=lambda name, type: None)
    running: dict[str, RunningNetwork] = attrs.field(factory=dict)
    book: AddressBook = attrs.field(factory=AddressBook)
    #: the resolv.conf networks' dnsmasq forwards to (None: no upstream DNS); see
    #: :func:`supervisor.net.dnsmasq.upstream_resolv_file`
    resolv_file: str | None = None
    #: guest namespaces made ahead of need (see :class:`supervisor.nsutil.SpareNetns`)
    spares: nsutil.SpareNetns[Rtnl] | None = None

    def define(self, network: Network) -> Network:
        """Define (or redefine) a network and emit DEFINED."""
        net, event = self.table.define(network)
        self.emit(net.name, event)
        return net

    def undefine(self, name: str) -> None:
        """Undefine a stopped network and emit UNDEFINED."""
        if name in self.running:
            raise InvalidOperation(f"network {name} is running; stop it first")
        self.emit(name, self.table.undefine(name))

    async def start(
        self, name: str, nursery: trio.Nursery, *, adopt: bool = False, announce: bool = True
    ) -> RunningNetwork:
        """Start a defined network as a task in ``nursery``; emits STARTED once it is up.

        ``adopt``: take over what a previous supervisor left up (see :func:`run_network`).
        ``announce`` False: the caller emits STARTED itself (after recording the start), or
        not at all (a network taken over never stopped).
        """
        if name in self.running:
            raise InvalidOperation(f"network {name} is already running")
        net = self.table.get(name)
        handle: RunningNetwork = await nursery.start(
            partial(_run_and_forget, self, net, adopt=adopt)
        )
        if announce:
            self.emit(name, "STARTED")
        return handle

    async def stop(self, name: str) -> None:
        """Stop a running network completely; emits STOPPED."""
        handle = self.running.get(name)
        if handle is None:
            raise InvalidOperation(f"network {name} is not running")
        await handle.stop()
        # the task's own clean-up may run after stop() returns: forget the handle now so an
        # immediate restart is not refused as "already running"
        self.running.pop(name, None)
        self.book.state = self.book.state.release_network(name)
        self.emit(name, "STOPPED")

    async def autostart(self, nursery: trio.Nursery) -> list[str]:
        """Start every autostart network; returns those that failed (others still start)."""
        failed = []
        for name in self.table.autostart_names():
            try:
                await self.start(name, nursery)
            except Exception:
                failed.append(name)
        return failed

    async def plumb(
        self, domain: Domain, guest_netns: str, *, guest: Rtnl | None = None
    ) -> tuple[PlumbedNic, ...]:
        """The ``prepare`` hook's network part: plumb a guest's NICs (see :func:`plumb`)."""
        return await plumb(self.host, domain, guest_netns, self.running, self.book, guest=guest)

    async def create_guest_netns(
        self, name: str, *, source: str | None = None
    ) -> tuple[Path, Rtnl]:
        """Create a guest's named namespace with a netlink socket in it (``lo`` up).

        With ``source`` (a guest in a user namespace of its own) the namespace is not made but
        named: the one its process was born in, owned by its user namespace, is bind-mounted at
        the name (on the host's netlink worker, which then opens the socket in it).

        The spare made ahead of need is taken when there is one (a bind mount; the next spare
        is made on a thread meanwhile). Otherwise one hop to the host's netlink worker, which
        enters a new namespace, opens the socket there and comes back; a cancellation
        meanwhile comes at the caller's next checkpoint, once it holds what was made (and so
        can remove it). The caller closes the socket.
        """
        if source is not None:
            return await self.host.worker.call(
                lambda _: nsutil.name_netns(name, source, guest_rtnl), deliver=True
            )
        if self.spares is None:
            self.spares = nsutil.SpareNetns(guest_rtnl, Rtnl.close)
        taken = self.spares.take(name)
        if taken is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return taken
        return await self.host.worker.call(
            lambda _: nsutil.create_netns_here(name, guest_rtnl), deliver=True
        )

    def close(self) -> None:
        """Drop the spare namespace (the supervisor is closing)."""
        if self.spares is not None:
            self.spares.close()

    async def unplumb(self, nics: tuple[PlumbedNic, ...]) -> None:
        """The ``release`` hook's network part."""
        await unplumb(self.host, nics, self.running, self.book)

    def allocations(self) -> Allocations:
        """The current allocations, to persist in the run dir."""
        return self.book.state


async def _run_and_forget(
    service: NetworkService,
    network: Network,
    *,
    adopt: bool = False,
    task_status: trio.TaskStatus[RunningNetwork] = trio.TASK_STATUS_IGNORED,
) -> None:
    """run_network, with the handle registered in the service exactly while it runs."""

    started = False
    handle: RunningNetwork | None = None
    try:
        async with trio.open_nursery() as inner:
            handle = await inner.start(
                partial(
                    run_network,
                    service.host,
                    network,
                    resolv_file=service.resolv_file,
                    adopt=adopt,
                )
            )
            service.running[network.name] = handle
            started = True
            task_status.started(handle)
    except Exception as exc:
        # a start failure goes to the caller; a network that fails while running (its dnsmasq
        # cannot be restarted, ...) is reported and stops alone: it must not take the
        # supervisor and every other network with it
        if not started:
            raise
        _log.error("network %s failed and stopped: %s", network.name, exc)
        service.emit(network.name, "STOPPED")
    finally:
        # only our own handle: a restart may already have registered a new one
        if handle is not None and service.running.get(network.name) is handle:
            del service.running[network.name]
