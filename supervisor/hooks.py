"""What the bus's prepare and release hooks work on: one guest boot's context.

The daemon makes a :class:`GuestContext` for every boot and runs the subsystems' hooks on it
(``Bus.run_prepare``/``run_release``): the scheduler writes the CPU limits into the guest's
cgroup, the network subsystem plumbs its NICs. What each subsystem made is kept in
:class:`HookRecords`, typed, one field per subsystem: the daemon writes it into the guest's run
record, and a successor that adopts the guest (or cleans up after a dead one) reads it back and
hands it to the same hooks. This module sits beside the bus, below the daemon and the
subsystems, so each of them imports it and none imports another.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from supervisor.model import Domain
from supervisor.net.nics import PlumbedNic
from supervisor.runtime import CgroupHandle


@attrs.frozen
class NetRecord:
    """What the network subsystem plumbed for a guest: its named netns and its NICs."""

    netns: str
    nics: tuple[PlumbedNic, ...] = ()

    @property
    def modes(self) -> tuple[str, ...]:
        """The kinds of NIC plumbed (bridge port, routed, ...), each once."""
        return tuple(sorted({n.mode for n in self.nics}))

    def to_json(self) -> dict[str, Any]:
        return {
            "netns": self.netns,
            "nics": [attrs.asdict(n) for n in self.nics],
            "modes": list(self.modes),
        }

    @classmethod
    def from_json(cls, raw: object) -> NetRecord | None:
        """Read back a record (None when it is missing or not one: nothing to undo then)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("netns"), str):
            return None
        nics = raw.get("nics") or []
        if not isinstance(nics, list):
            return None
        return cls(raw["netns"], tuple(PlumbedNic(**n) for n in nics if isinstance(n, dict)))


@attrs.frozen
class SchedRecord:
    """The CPU limits the scheduler applied to a guest, and what could not be applied."""

    hz: int
    cpus: int
    cgroup_version: int
    applied: Mapping[str, int | None]
    losses: tuple[Mapping[str, str], ...] = ()
    tuned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "hz": self.hz,
            "cpus": self.cpus,
            "cgroup_version": self.cgroup_version,
            "applied": dict(self.applied),
            "losses": [dict(x) for x in self.losses],
            "tuned": self.tuned,
        }

    @classmethod
    def from_json(cls, raw: object) -> SchedRecord | None:
        """Read back a record (None when it is missing or not one)."""
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(
                hz=int(raw["hz"]),
                cpus=int(raw["cpus"]),
                cgroup_version=int(raw["cgroup_version"]),
                applied=dict(raw.get("applied") or {}),
                losses=tuple(dict(x) for x in raw.get("losses") or ()),
                tuned=bool(raw.get("tuned")),
            )
        except (KeyError, TypeError, ValueError):
            return None


@attrs.define
class HookRecords:
    """What the hooks made for one boot, by subsystem (None: it made nothing)."""

    net: NetRecord | None = None
    sched: SchedRecord | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.net is not None:
            out["net"] = self.net.to_json()
        if self.sched is not None:
            out["sched"] = self.sched.to_json()
        return out

    @classmethod
    def from_json(cls, raw: object) -> HookRecords:
        """A run record's ``hooks``; what cannot be read is left out (and so not undone)."""
        if not isinstance(raw, Mapping):
            return cls()
        return cls(
            net=NetRecord.from_json(raw.get("net")), sched=SchedRecord.from_json(raw.get("sched"))
        )


@attrs.define(eq=False)
class GuestContext:
    """What the bus's prepare/release hooks get for one guest boot."""

    domain: Domain
    cgroup: CgroupHandle
    prefix: str
    run_dir: Path
    #: filled by hooks: what each subsystem made, recorded in the run dir for re-adoption
    records: HookRecords = attrs.Factory(HookRecords)
    #: True once every prepare hook succeeded (a failed prepare undoes itself on the bus)
    prepared: bool = False
    #: set by the network subsystem's prepare: the namespace the guest's init must join
    netns_path: str | None = None
    #: set by the runtime before the hooks: a network namespace the guest's process was born
    #: in, which the network subsystem names and plumbs instead of making one (a guest in a
    #: user namespace of its own: its network namespace must belong to that user namespace)
    netns_source: str | None = None
    #: the cgroup was made by this boot (every file holds the kernel's default), not reused
    fresh_cgroup: bool = False
