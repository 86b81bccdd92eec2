"""An in-memory :class:`SupervisorFacade` for fast tests and benchmarks of the API layer.

It keeps domains and networks in dicts, follows the libvirt state rules the API relies on
(start a running domain is an InvalidOperation, names are unique, an undefined or created
domain is transient and gone when it stops),
and publishes each change as an event straight into the journal, numbered ``last_seq() + 1``
as the real bus does. It never stands in for the real supervisor where a test is about the
supervisor itself; it is for the API, the clients and the CLI. The API serves it with the real
XML codec (``serve_api``'s default), so documents are parsed as in the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from supervisor.console import GuestConsole, NoConsole
from supervisor.errors import ConflictError, InvalidDocument, InvalidOperation, NotFound
from supervisor.facade import DomainStatus, Lease, NetworkStatus, memory_view
from supervisor.journal import Journal
from supervisor.model import Domain, MemTune, Network
from supervisor.stats import STATE_NUMBERS


@attrs.define(eq=False)
class _DomainSlot:
    domain: Domain
    state: str = "SHUTOFF"
    reason: str = "UNKNOWN"
    id: int | None = None
    started_at: float | None = None
    sched: dict[str, object] = attrs.field(
        factory=lambda: {"cpu_shares": 1024, "vcpu_period": 100000, "vcpu_quota": -1}
    )
    transient: bool = False
    #: a domain with a ``<console>``: its console, whose guest echoes what is typed while it runs
    console: GuestConsole | None = None
    echo: EchoSink | None = None


@attrs.define(eq=False)
class EchoSink:
    """The fake guest's end of a console: echoes input back as output (a terminal's echo) and
    keeps what it was given, for tests of the console's API."""

    console: GuestConsole
    typed: bytearray = attrs.Factory(bytearray)
    sizes: list[tuple[int, int]] = attrs.Factory(list)

    def write_nowait(self, data: bytes) -> int:
        self.typed += data
        self.console.feed(data)
        return 0

    def resize(self, rows: int, cols: int) -> None:
        self.sizes.append((rows, cols))


@attrs.define(eq=False)
class FakeSupervisor:
    """The facade over dicts; every change is journaled as an event (kind, domain, type, detail)."""

    journal: Journal
    clock: Any = time.time
    domains: dict[str, _DomainSlot] = attrs.field(factory=dict)
    networks: dict[str, tuple[Network, bool]] = attrs.field(factory=dict)
    leases: dict[str, list[Lease]] = attrs.field(factory=dict)
    _next_id: int = 100

    @property
    def bus(self) -> Any:
        raise NotImplementedError("the fake has no bus; it journals directly")

    def emit(
        self,
        kind: str,
        name: str | None,
        type_: str,
        detail: str | None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one event to the journal as the bus would; returns its seq."""
        seq = self.journal.last_seq() + 1
        self.journal.append(
            {
                "seq": seq,
                "kind": kind,
                "domain": name,
                "type": type_,
                "detail": detail,
                "time": self.clock(),
                "data": dict(data or {}),
            }
        )
        return seq

    def _slot(self, name: str) -> _DomainSlot:
        try:
            return self.domains[name]
        except KeyError:
            raise NotFound(f"no domain named {name!r}") from None

    def _status(self, slot: _DomainSlot) -> DomainStatus:
        return DomainStatus(
            name=slot.domain.name,
            id=slot.id,
            uuid=slot.domain.uuid,
            type=slot.domain.type,
            state=slot.state,
            reason=slot.reason,
            autostart=slot.domain.autostart,
            init_pid=4242 if slot.state in ("RUNNING", "PAUSED") else None,
            started_at=slot.started_at,
            persistent=not slot.transient,
        )

    def list_domains(self) -> list[DomainStatus]:
        return [self._status(s) for _, s in sorted(self.domains.items())]

    def domain_status(self, name: str) -> DomainStatus:
        return self._status(self._slot(name))

    def get_domain(self, name: str) -> Domain:
        return self._slot(name).domain

    async def define_domain(self, domain: Domain) -> Domain:
        old = self.domains.get(domain.name)
        for other in self.domains.values():
            if (
                other.domain.name != domain.name
                and domain.uuid
                and other.domain.uuid == domain.uuid
            ):
                raise ConflictError(f"uuid {domain.uuid} is already used by {other.domain.name!r}")
        if old is None:
            self.domains[domain.name] = _DomainSlot(domain)
            self.emit("domain", domain.name, "DEFINED", "ADDED")
        else:
            old.domain = domain
            self.emit("domain", domain.name, "DEFINED", "ADDED" if old.transient else "UPDATED")
            old.transient = False
        return domain

    async def undefine_domain(self, name: str) -> None:
        slot = self._slot(name)
        if slot.transient:
            raise InvalidOperation(f"domain {name!r} is transient")
        if slot.state == "SHUTOFF":
            del self.domains[name]
        else:
            slot.transient = True
        self.emit("domain", name, "UNDEFINED", "REMOVED")

    async def create_domain(self, domain: Domain) -> DomainStatus:
        if domain.name in self.domains:
            raise ConflictError(f"domain {domain.name!r} already exists")
        self.domains[domain.name] = _DomainSlot(domain, transient=True)
        return await self.start_domain(domain.name)

    def get_domain_config(self, name: str) -> Domain:
        return self._slot(name).domain

    def memory_params(self, name: str) -> dict[str, object]:
        slot = self._slot(name)
        return memory_view(slot.domain, slot.state in ("RUNNING", "PAUSED"))

    async def set_memory(
        self,
        name: str,
        *,
        current_kib: int | None = None,
        memtune: Mapping[str, int] | None = None,
        live: bool,
        config: bool,
    ) -> dict[str, object]:
        slot = self._slot(name)
        changes = dict(memtune or {})
        if current_kib is not None:
            changes["hard_limit_kib"] = current_kib
        tune = attrs.evolve(slot.domain.memtune or MemTune(), **changes)
        slot.domain = attrs.evolve(slot.domain, memtune=tune)
        if current_kib is not None:
            slot.domain = attrs.evolve(slot.domain, current_memory_kib=current_kib)
        if slot.state in ("RUNNING", "PAUSED") and (live or not config):
            data = {f"memtune.{k.removesuffix('_kib')}": v for k, v in changes.items()}
            if current_kib is not None:
                data["balloon.current"] = current_kib
            self.emit("domain", name, "TUNABLE", None, data)
        return self.memory_params(name)

    def _change(
        self, name: str, want: tuple[str, ...], state: str, reason: str, event: tuple[str, str]
    ) -> None:
        slot = self._slot(name)
        if slot.state not in want:
            raise InvalidOperation(f"domain {name!r} is {slot.state}, not {' or '.join(want)}")
        slot.state, slot.reason = state, reason
        if state == "RUNNING" and slot.id is None:
            slot.id = slot.domain.id if slot.domain.id is not None else self._take_id()
            slot.started_at = self.clock()
        if state == "SHUTOFF":
            slot.id = None
            slot.started_at = None
        self._console_follows(slot)
        self.emit("domain", name, *event)
        if state == "SHUTOFF" and slot.transient:
            del self.domains[name]

    def _console_follows(self, slot: _DomainSlot) -> None:
        """A running domain with a console has its echoing fake guest connected; a stopped one
        ends the attached client's session."""
        running = slot.state in ("RUNNING", "PAUSED")
        if running and slot.domain.consoles and slot.echo is None:
            if slot.console is None:
                slot.console = GuestConsole(slot.domain.name)
            slot.echo = EchoSink(slot.console)
            slot.console.connect(slot.echo)
        elif not running and slot.console is not None and slot.echo is not None:
            slot.console.disconnect(slot.echo)
            slot.echo = None
            slot.console.end_session("stopped", f"domain {slot.domain.name!r} stopped")

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def start_domain(self, name: str) -> DomainStatus:
        self._change(name, ("SHUTOFF", "CRASHED"), "RUNNING", "BOOTED", ("STARTED", "BOOTED"))
        return self.domain_status(name)

    async def shutdown_domain(self, name: str, *, timeout: float | None = None) -> None:
        self._change(name, ("RUNNING",), "SHUTOFF", "SHUTDOWN", ("STOPPED", "SHUTDOWN"))

    async def destroy_domain(self, name: str) -> None:
        self._change(name, ("RUNNING", "PAUSED"), "SHUTOFF", "DESTROYED", ("STOPPED", "DESTROYED"))

    async def reboot_domain(self, name: str) -> None:
        slot = self._slot(name)
        if slot.state != "RUNNING":
            raise InvalidOperation(f"domain {name!r} is {slot.state}, not RUNNING")
        self.emit("domain", name, "REBOOT", "REBOOT")

    async def suspend_domain(self, name: str) -> None:
        self._change(name, ("RUNNING",), "PAUSED", "USER", ("SUSPENDED", "PAUSED"))

    async def resume_domain(self, name: str) -> None:
        self._change(name, ("PAUSED",), "RUNNING", "UNPAUSED", ("RESUMED", "UNPAUSED"))

    async def set_autostart(self, name: str, autostart: bool) -> None:
        slot = self._slot(name)
        if slot.transient:
            raise InvalidOperation(f"domain {name!r} is transient: it cannot autostart")
        slot.domain = attrs.evolve(slot.domain, autostart=autostart)

    def schedinfo(self, name: str) -> Mapping[str, object]:
        return dict(self._slot(name).sched)

    async def set_schedinfo(
        self, name: str, params: Mapping[str, str], *, live: bool, config: bool
    ) -> Mapping[str, object]:
        slot = self._slot(name)
        for key, value in params.items():
            if key not in slot.sched:
                raise InvalidDocument([f"unknown scheduler parameter {key!r}"])
            try:
                slot.sched[key] = int(value)
            except ValueError:
                raise InvalidDocument([f"{key} must be an integer, not {value!r}"]) from None
        self.emit("domain", name, "TUNABLE", None, {k: str(v) for k, v in params.items()})
        return dict(slot.sched)

    # networks

    def _net(self, name: str) -> tuple[Network, bool]:
        try:
            return self.networks[name]
        except KeyError:
            raise NotFound(f"no network named {name!r}") from None

    def list_networks(self) -> list[NetworkStatus]:
        return [
            NetworkStatus(n.name, n.uuid, active, n.autostart, n.bridge.name)
            for _, (n, active) in sorted(self.networks.items())
        ]

    def get_network(self, name: str) -> Network:
        return self._net(name)[0]

    async def define_network(self, network: Network) -> Network:
        active = self.networks[network.name][1] if network.name in self.networks else False
        self.networks[network.name] = (network, active)
        self.emit("network", None, "DEFINED", "ADDED", {"network": network.name})
        return network

    async def undefine_network(self, name: str) -> None:
        _, active = self._net(name)
        if active:
            raise InvalidOperation(f"network {name!r} is active; destroy it first")
        del self.networks[name]
        self.emit("network", None, "UNDEFINED", "REMOVED", {"network": name})

    async def start_network(self, name: str) -> None:
        net, active = self._net(name)
        if active:
            raise InvalidOperation(f"network {name!r} is already active")
        self.networks[name] = (net, True)
        self.emit("network", None, "STARTED", "STARTED", {"network": name})

    async def destroy_network(self, name: str) -> None:
        net, active = self._net(name)
        if not active:
            raise InvalidOperation(f"network {name!r} is not active")
        self.networks[name] = (net, False)
        self.emit("network", None, "STOPPED", "STOPPED", {"network": name})

    async def set_network_autostart(self, name: str, autostart: bool) -> None:
        net, active = self._net(name)
        self.networks[name] = (attrs.evolve(net, autostart=autostart), active)

    def network_leases(self, name: str) -> list[Lease]:
        self._net(name)
        return list(self.leases.get(name, ()))

    def domain_log_path(self, name: str) -> str | None:
        self.get_domain(name)
        return None  # the fake runs no guest processes, so nothing is logged

    def domain_console(self, name: str) -> GuestConsole:
        slot = self._slot(name)
        if not slot.domain.consoles:
            raise NoConsole(f"domain {name!r} has no console")
        if slot.console is None or not slot.console.live:
            raise InvalidOperation(f"domain {name!r} is not running")
        return slot.console

    def domain_interfaces(self, name: str) -> list[dict[str, Any]]:
        """Static ``<ip>`` addresses plus the fake's leases matched by MAC or domain name."""
        domain = self.get_domain(name)
        rows: list[dict[str, Any]] = []
        for index, iface in enumerate(domain.interfaces):
            addresses: list[dict[str, Any]] = [
                {
                    "address": ip.address,
                    "prefix": ip.prefix,
                    "family": ip.family,
                    "origin": "static",
                }
                for ip in iface.ips
            ]
            if iface.type == "network" and iface.source in self.leases:
                for lease in self.leases[iface.source]:
                    if (iface.mac is not None and lease.mac.lower() == iface.mac.lower()) or (
                        iface.mac is None and lease.domain == name
                    ):
                        addresses.append(
                            {
                                "address": lease.ip,
                                "prefix": lease.prefix,
                                "family": "ipv6" if ":" in lease.ip else "ipv4",
                                "origin": "lease",
                            }
                        )
            rows.append(
                {
                    "name": iface.guest_dev or f"eth{index}",
                    "type": iface.type,
                    "source": iface.source,
                    "mac": iface.mac,
                    "addresses": addresses,
                }
            )
        return rows

    async def domain_stats(
        self, names: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, int | float | str]]]:
        """State figures for every (or each named) domain, and for a running one the fixed
        figures of a guest that does nothing: the fake has no cgroups to read."""
        chosen = (
            [self._slot(n) for n in names]
            if names is not None
            else [self.domains[n] for n in sorted(self.domains)]
        )
        out: list[tuple[str, dict[str, int | float | str]]] = []
        for slot in chosen:
            figures: dict[str, int | float | str] = {
                "state.state": STATE_NUMBERS.get(slot.state, 0),
                "state.reason": slot.reason,
            }
            if slot.domain.memory_kib is not None:
                figures["balloon.maximum"] = slot.domain.memory_kib
            if slot.state in ("RUNNING", "PAUSED"):
                figures |= {"cpu.time": 0, "cpu.user": 0, "cpu.system": 0, "balloon.current": 0}
                figures |= {"memory.used": 0, "pids.current": 1, "net.count": 0}
            out.append((slot.domain.name, figures))
        return out

    def statistics(self) -> Mapping[str, object]:
        return {"domains": len(self.domains), "networks": len(self.networks), "fake": True}
