"""What the supervisor offers to its front ends (the control API, the CLI's daemon mode, tests).

The daemon's :class:`~supervisor.daemon.Supervisor` implements :class:`SupervisorFacade`; the
REST app is written against this protocol only, so it can be exercised against the real
supervisor in integration tests and against a small in-memory implementation in fast tests.
Values crossing this boundary are frozen attrs values with JSON-friendly fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from supervisor.model import Domain, MemTune, Network

if TYPE_CHECKING:
    from supervisor.bus import Bus
    from supervisor.console import GuestConsole


@attrs.frozen
class DomainStatus:
    """One row of ``vsv list``: a domain's identity and its libvirt state with the reason."""

    name: str
    id: int | None
    uuid: str | None
    type: str
    state: str  # libvirt state name: RUNNING, PAUSED, SHUTDOWN, SHUTOFF, CRASHED
    reason: str  # libvirt reason name: BOOTED, USER, SHUTDOWN, DESTROYED, CRASHED, FAILED...
    autostart: bool
    init_pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    #: False for a transient guest (vsv create, or undefined while running): gone when it stops
    persistent: bool = True


@attrs.frozen
class NetworkStatus:
    """One row of ``vsv net-list``."""

    name: str
    uuid: str | None
    active: bool
    autostart: bool
    bridge: str | None


@attrs.frozen
class Lease:
    """A DHCP lease or static allocation on a network, as ``net-dhcp-leases`` shows it."""

    network: str
    mac: str
    ip: str
    prefix: int
    hostname: str | None
    expiry: float | None
    domain: str | None = None


class SupervisorFacade(Protocol):
    """The operations of a running supervisor.

    Every mutating call raises a subclass of :class:`supervisor.errors.VsvError` on refusal:
    NotFound (no such name), ConflictError (duplicate name/uuid/id/address), InvalidOperation
    (wrong state), InvalidDocument (bad definition), RuntimeFailure (the kernel said no).
    """

    @property
    def bus(self) -> Bus[Any]: ...

    # domains
    def list_domains(self) -> list[DomainStatus]: ...
    def domain_status(self, name: str) -> DomainStatus: ...
    def get_domain(self, name: str) -> Domain: ...
    async def define_domain(self, domain: Domain) -> Domain: ...
    async def undefine_domain(self, name: str) -> None:
        """Remove the stored definition; an active guest runs on, transient, until it stops."""
        ...

    async def create_domain(self, domain: Domain) -> DomainStatus:
        """Start a transient guest (no stored definition; gone when it stops)."""
        ...

    def get_domain_config(self, name: str) -> Domain:
        """The stored definition (the next start's); a transient guest's live one."""
        ...

    def memory_params(self, name: str) -> dict[str, object]:
        """``state`` (live/config), ``memory_kib``, ``current_memory_kib``, ``hard_limit_kib``,
        ``soft_limit_kib``, ``swap_hard_limit_kib`` (None: no limit)."""
        ...

    async def set_memory(
        self,
        name: str,
        *,
        current_kib: int | None = None,
        memtune: Mapping[str, int] | None = None,
        live: bool,
        config: bool,
    ) -> dict[str, object]:
        """setmem / memtune; returns :meth:`memory_params`' view after the change."""
        ...

    async def start_domain(self, name: str) -> DomainStatus: ...
    async def shutdown_domain(self, name: str, *, timeout: float | None = None) -> None: ...
    async def destroy_domain(self, name: str) -> None: ...
    async def reboot_domain(self, name: str) -> None: ...
    async def suspend_domain(self, name: str) -> None: ...
    async def resume_domain(self, name: str) -> None: ...
    async def set_autostart(self, name: str, autostart: bool) -> None: ...
    def domain_interfaces(self, name: str) -> list[dict[str, Any]]:
        """``domifaddr``: per interface ``name``, ``type``, ``source``, ``mac`` and
        ``addresses`` (``address``, ``prefix``, ``family``, ``origin``)."""
        ...

    def domain_log_path(self, name: str) -> str | None:
        """Where the guest's stdout and stderr go (a host path), None if nowhere."""
        ...

    def domain_console(self, name: str) -> GuestConsole:
        """The running guest's console to attach to: NotFound, NoConsole (the domain has no
        ``<console>``) or InvalidOperation (it does not run, or its console is not served)."""
        ...

    # scheduler
    def schedinfo(self, name: str) -> Mapping[str, object]: ...
    async def set_schedinfo(
        self, name: str, params: Mapping[str, str], *, live: bool, config: bool
    ) -> Mapping[str, object]: ...

    # networks
    def list_networks(self) -> list[NetworkStatus]: ...
    def get_network(self, name: str) -> Network: ...
    async def define_network(self, network: Network) -> Network: ...
    async def undefine_network(self, name: str) -> None: ...
    async def start_network(self, name: str) -> None: ...
    async def destroy_network(self, name: str) -> None: ...
    async def set_network_autostart(self, name: str, autostart: bool) -> None: ...
    def network_leases(self, name: str) -> list[Lease]: ...

    async def domain_stats(
        self, names: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, int | float | str]]]:
        """``domstats``: per domain (all, in name order, or ``names`` in that order) its
        figures under libvirt's keys (supervisor/stats.py); an inactive one has ``state.*``
        only. NotFound for an unknown name."""
        ...

    # the supervisor itself
    def statistics(self) -> Mapping[str, object]: ...


def memory_view(domain: Domain, live: bool) -> dict[str, object]:
    """A definition's memory figures as ``vsv memtune``/``setmem`` show them (KiB; None:
    no limit), and whether they are the running guest's (live) or the stored ones."""
    tune = domain.memtune or MemTune()
    return {
        "state": "live" if live else "config",
        "memory_kib": domain.memory_kib,
        "current_memory_kib": domain.current_memory_kib,
        "hard_limit_kib": tune.hard_limit_kib,
        "soft_limit_kib": tune.soft_limit_kib,
        "swap_hard_limit_kib": tune.swap_hard_limit_kib,
    }
