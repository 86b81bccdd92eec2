"""Per-guest statistics, read from the kernel's own counters with libvirt's field names.

Theory of operation
-------------------
Everything here is a file the kernel keeps anyway: the guest's cgroups (CPU time, throttling,
memory, pids, block I/O) and its network namespace's interface counters, read through
``/proc/INIT_PID/net/dev`` (the counters of the namespace init is in, whichever namespace the
reader is in, so sandbox mode needs no netlink round trip). Nothing is sampled or kept between
requests: a request reads a few small files per guest, ~10 for a guest with one NIC, which is
how 200 guests answer in a few tens of milliseconds (bench/bench_stats.py).

:class:`StatSources` says where one guest's files are (built by the daemon from the guest's
cgroup and NICs, see :func:`sources_for`); :func:`read_stats` reads them into a flat mapping.
The parsers are pure functions over the files' text, unit tested on text, so the v1 and v2
spellings of each figure are checked without a kernel.

The keys are libvirt's where libvirt has one (``virsh domstats``): ``state.state``,
``cpu.time``, ``cpu.user``, ``cpu.system`` (nanoseconds), ``balloon.current`` and
``balloon.maximum`` (KiB), ``net.count``, ``net.N.name``, ``net.N.rx.bytes``, ``rx.pkts``,
``rx.errs``, ``rx.drop`` and the ``tx`` ones, ``block.count``, ``block.N.name``,
``block.N.rd.reqs``, ``rd.bytes``, ``wr.reqs``, ``wr.bytes`` (for a guest in the block I/O
controller, which a guest joins when its domain has ``<blkiotune>``: joining it costs every
start a directory and an attach, so the others have no block figures). The supervisor's own,
for what libvirt does not report for containers: ``memory.used``, ``memory.limit``, ``memory.peak``
(bytes; no limit: absent), ``pids.current``, ``pids.limit``, ``cpu.throttle.periods``,
``cpu.throttle.count`` (periods throttled), ``cpu.throttle.time`` (ns) and ``scheduler.loan``
(the token bucket's current loan, in CPUs). As libvirt does, a network interface's counters
are the guest's view: ``rx`` is what the guest received.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from supervisor.guest.cgroups import CgroupLayout
    from supervisor.runtime import CgroupHandle

StatValue = int | float | str
Stats = dict[str, StatValue]
Version = Literal[1, 2]

#: libvirt's virDomainState numbers, for ``state.state``
STATE_NUMBERS = {
    "NOSTATE": 0,
    "RUNNING": 1,
    "BLOCKED": 2,
    "PAUSED": 3,
    "SHUTDOWN": 4,
    "SHUTOFF": 5,
    "CRASHED": 6,
    "PMSUSPENDED": 7,
}
#: what v1 writes for "no limit" (PAGE_COUNTER_MAX in bytes, rounded to the page): any value
#: at or above this is unlimited
_V1_UNLIMITED = 1 << 62
#: the clock of cpuacct.stat (USER_HZ, 100 on every Linux architecture's ABI)
_USER_HZ = 100
#: /proc/net/dev columns, in order, under libvirt's names
_NET_COLUMNS = (
    ("rx.bytes", 0),
    ("rx.pkts", 1),
    ("rx.errs", 2),
    ("rx.drop", 3),
    ("tx.bytes", 8),
    ("tx.pkts", 9),
    ("tx.errs", 10),
    ("tx.drop", 11),
)


@attrs.frozen
class Controller:
    """A guest's directory for one controller and the cgroup version of its files."""

    path: str
    version: Version


@attrs.frozen
class StatSources:
    """Where one running guest's figures are (every field optional: a machine without the
    memory controller has no memory figures, a guest without NICs no interface counters)."""

    cpu_usage: Controller | None = None
    cpu_throttle: Controller | None = None
    memory: Controller | None = None
    pids: str | None = None
    io: Controller | None = None
    init_pid: int | None = None
    #: (name shown as ``net.N.name``, the interface's name inside the guest), by index
    nics: tuple[tuple[str, str], ...] = ()
    loan: float | None = None


def sources_for(
    layout: CgroupLayout,
    cgroup: CgroupHandle,
    *,
    init_pid: int | None,
    nics: Iterable[tuple[str, str]] = (),
    loan: float | None = None,
) -> StatSources:
    """The files of a guest's ``cgroup`` on this machine's ``layout``: a controller the
    unified hierarchy carries is read there (v2 names), else in its v1 hierarchy."""

    def where(controller: str) -> Controller | None:
        path = cgroup.controller_dir(controller)
        if path is None:
            return None
        v2 = layout.unified is not None and controller in layout.v2_controllers
        return Controller(path, 2 if v2 else 1)

    usage = where("cpuacct") if layout.v1_path("cpuacct") is not None else None
    if usage is None:
        # cpu.stat's usage lines are core files of every v2 cgroup, controller or not
        unified = _unified_dir(layout, cgroup)
        usage = Controller(unified, 2) if unified is not None else None
    pids = where("pids")
    io = where("io") if layout.unified is not None and "io" in layout.v2_controllers else None
    return StatSources(
        cpu_usage=usage,
        cpu_throttle=where("cpu"),
        memory=where("memory"),
        pids=pids.path if pids is not None else None,
        io=io if io is not None else where("blkio"),
        init_pid=init_pid,
        nics=tuple(nics),
        loan=loan,
    )


def _unified_dir(layout: CgroupLayout, cgroup: CgroupHandle) -> str | None:
    """The guest's directory in the unified hierarchy (found through a controller it carries,
    or the name every hierarchy shares)."""
    if layout.unified is None:
        return None
    for controller in layout.v2_controllers:
        path = cgroup.controller_dir(controller)
        if path is not None:
            return path
    return os.path.join(layout.unified, cgroup.dirname)


# --- parsers (pure) ---------------------------------------------------------------------------


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.stat, cpuacct.stat) as a dict; others skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def parse_limit(text: str, version: Version) -> int | None:
    """A limit file (memory.max, pids.max, memory.limit_in_bytes) in bytes or count; None for
    no limit (``max``, or v1's page-counter maximum)."""
    value = text.strip()
    if value == "max" or not value:
        return None
    number = int(value)
    if version == 1 and number >= _V1_UNLIMITED:
        return None
    return number


def cpu_figures(
    version: Version, *, stat: str, usage: str | None = None, user: str | None = None,
    system: str | None = None,
) -> Stats:  # fmt: skip
    """``cpu.time``/``cpu.user``/``cpu.system`` in ns.

    v2: ``cpu.stat``'s ``usage_usec``/``user_usec``/``system_usec``. v1: ``cpuacct.usage`` and
    ``cpuacct.usage_user``/``usage_sys`` (ns) when the kernel has them, else ``cpuacct.stat``'s
    ticks (``stat``, USER_HZ)."""
    if version == 2:
        keyed = parse_keyed(stat)
        out: Stats = {}
        for key, name in (("usage_usec", "time"), ("user_usec", "user"), ("system_usec", "system")):
            if key in keyed:
                out[f"cpu.{name}"] = keyed[key] * 1000
        return out
    out = {}
    if usage is not None:
        out["cpu.time"] = int(usage)
    if user is not None and system is not None:
        out["cpu.user"] = int(user)
        out["cpu.system"] = int(system)
    else:
        ticks = parse_keyed(stat)
        tick_ns = 1_000_000_000 // _USER_HZ
        if "user" in ticks and "system" in ticks:
            out["cpu.user"] = ticks["user"] * tick_ns
            out["cpu.system"] = ticks["system"] * tick_ns
    return out


def throttle_figures(version: Version, stat: str) -> Stats:
    """``cpu.throttle.periods``/``count``/``time`` (ns) from the cpu controller's cpu.stat
    (``throttled_time`` in ns on v1, ``throttled_usec`` on v2)."""
    keyed = parse_keyed(stat)
    out: Stats = {}
    if "nr_periods" in keyed:
        out["cpu.throttle.periods"] = keyed["nr_periods"]
    if "nr_throttled" in keyed:
        out["cpu.throttle.count"] = keyed["nr_throttled"]
    if version == 2 and "throttled_usec" in keyed:
        out["cpu.throttle.time"] = keyed["throttled_usec"] * 1000
    elif version == 1 and "throttled_time" in keyed:
        out["cpu.throttle.time"] = keyed["throttled_time"]
    return out


def io_figures_v1(service_bytes: str, serviced: str) -> dict[str, dict[str, int]]:
    """Per device (``MAJ:MIN``): rd/wr bytes and requests from blkio.throttle's
    ``io_service_bytes_recursive`` and ``io_serviced_recursive`` (``8:0 Read 4096`` lines)."""
    out: dict[str, dict[str, int]] = {}
    for text, unit in ((service_bytes, "bytes"), (serviced, "reqs")):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or ":" not in parts[0]:
                continue  # "Total N"
            op = {"Read": "rd", "Write": "wr"}.get(parts[1])
            if op is not None:
                out.setdefault(parts[0], {})[f"{op}.{unit}"] = int(parts[2])
    return out


def io_figures_v2(text: str) -> dict[str, dict[str, int]]:
    """Per device: rd/wr bytes and requests from io.stat (``8:0 rbytes=.. wbytes=.. rios=..``)."""
    names = {"rbytes": "rd.bytes", "wbytes": "wr.bytes", "rios": "rd.reqs", "wios": "wr.reqs"}
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        device, *fields = line.split()
        for field in fields:
            key, _, value = field.partition("=")
            if key in names:
                out.setdefault(device, {})[names[key]] = int(value)
    return out


def net_figures(text: str, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Counters of the interfaces ``names`` from /proc/PID/net/dev's text."""
    wanted = set(names)
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or name not in wanted:
            continue
        columns = rest.split()
        out[name] = {key: int(columns[i]) for key, i in _NET_COLUMNS}
    return out


# --- reading (the edge) -----------------------------------------------------------------------


def _text(path: str) -> str | None:
    """A small kernel file's text; None when it is not there (the guest is going away, or the
    kernel lacks the file)."""
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def block_name(device: str, *, sysfs: str = "/sys/dev/block") -> str:
    """A block device's kernel name (``sda``, ``loop0``) from ``MAJ:MIN``; the number when it
    has none."""
    text = _text(os.path.join(sysfs, device, "uevent")) or ""
    for line in text.splitlines():
        if line.startswith("DEVNAME="):
            return line[len("DEVNAME=") :]
    return device


def read_stats(src: StatSources) -> Stats:
    """One running guest's figures (see the module docstring for the keys); a file that is
    missing leaves its keys out rather than failing the whole answer."""
    out: Stats = {}
    usage = src.cpu_usage
    if usage is not None:
        j = os.path.join
        if usage.version == 2:
            stat = _text(j(usage.path, "cpu.stat"))
            if stat is not None:
                out.update(cpu_figures(2, stat=stat))
        else:
            stat = _text(j(usage.path, "cpuacct.stat")) or ""
            out.update(
                cpu_figures(
                    1,
                    stat=stat,
                    usage=_text(j(usage.path, "cpuacct.usage")),
                    user=_text(j(usage.path, "cpuacct.usage_user")),
                    system=_text(j(usage.path, "cpuacct.usage_sys")),
                )
            )
    throttle = src.cpu_throttle
    if throttle is not None:
        stat = _text(os.path.join(throttle.path, "cpu.stat"))
        if stat is not None:
            out.update(throttle_figures(throttle.version, stat))
    if src.loan is not None:
        out["scheduler.loan"] = round(src.loan, 3)
    out.update(_memory(src.memory))
    if src.pids is not None:
        current = _text(os.path.join(src.pids, "pids.current"))
        if current is not None:
            out["pids.current"] = int(current)
        limit = _text(os.path.join(src.pids, "pids.max"))
        if limit is not None and (n := parse_limit(limit, 2)) is not None:
            out["pids.limit"] = n
    out.update(_block(src.io))
    out.update(_net(src))
    return out


def _memory(memory: Controller | None) -> Stats:
    if memory is None:
        return {}
    j = os.path.join
    v2 = memory.version == 2
    files = (
        ("memory.current", "memory.max", "memory.peak")
        if v2
        else ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes")
    )
    used, limit, peak = (_text(j(memory.path, name)) for name in files)
    out: Stats = {}
    if used is not None:
        out["memory.used"] = int(used)
        out["balloon.current"] = int(used) // 1024
    if limit is not None and (n := parse_limit(limit, memory.version)) is not None:
        out["memory.limit"] = n
        out["balloon.maximum"] = n // 1024
    if peak is not None and peak.strip().isdigit():
        out["memory.peak"] = int(peak)
    return out


def _block(io: Controller | None) -> Stats:
    if io is None:
        return {}
    if io.version == 2:
        text = _text(os.path.join(io.path, "io.stat"))
        if text is None:
            return {}  # the guest is not in the io controller (no <blkiotune>)
        devices = io_figures_v2(text)
    else:
        service = _text(os.path.join(io.path, "blkio.throttle.io_service_bytes_recursive"))
        serviced = _text(os.path.join(io.path, "blkio.throttle.io_serviced_recursive"))
        if service is None or serviced is None:
            return {}
        devices = io_figures_v1(service, serviced)
    # a device the guest never touched is listed by v1 with zeros: not worth a block.N entry
    used = [(d, f) for d, f in sorted(devices.items()) if any(f.values())]
    out: Stats = {"block.count": len(used)}
    for i, (device, figures) in enumerate(used):
        out[f"block.{i}.name"] = block_name(device)
        for key in ("rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes"):
            out[f"block.{i}.{key}"] = figures.get(key, 0)
    return out


def _net(src: StatSources) -> Stats:
    out: Stats = {"net.count": len(src.nics)}
    if not src.nics:
        return out
    text = _text(f"/proc/{src.init_pid}/net/dev") if src.init_pid is not None else None
    counters = net_figures(text, (inside for _, inside in src.nics)) if text else {}
    for i, (shown, inside) in enumerate(src.nics):
        out[f"net.{i}.name"] = shown
        for key, value in counters.get(inside, {}).items():
            out[f"net.{i}.{key}"] = value
    return out


def read_many(sources: Mapping[str, StatSources]) -> dict[str, Stats]:
    """:func:`read_stats` for several guests (run in a worker thread by the daemon: the reads
    are plain file reads, and 200 guests' worth should not hold the event loop)."""
    return {name: read_stats(src) for name, src in sources.items()}
