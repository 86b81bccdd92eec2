"""Per-guest control groups on cgroup v1, v2 and the hybrid of both.

Theory of operation
-------------------
At start the supervisor calls :func:`detect_layout` once. It looks at the files under the cgroup
root (a parameter, so the v2 logic can be unit tested on a temp dir that mimics cgroupfs):

- **v2**: ``ROOT/cgroup.controllers`` exists: one unified hierarchy with the controllers.
- **v1**: per-controller hierarchies ``ROOT/<name>`` (names like ``cpu,cpuacct`` are split on
  commas, symlinked aliases are folded by their real path).
- **hybrid**: v1 hierarchies plus a cgroup2 mount (``ROOT/unified``) that holds no controllers.
  The unified hierarchy is still used: it gives every guest one place that lists all its
  processes, and its core files ``cgroup.kill`` and ``cgroup.freeze`` need no controller.

A guest's cgroup is the directory ``<prefix>-<name>`` directly under ``base`` (default: the
top) of each hierarchy the supervisor uses: ``/sys/fs/cgroup/memory/vsv-web1``,
``/sys/fs/cgroup/pids/vsv-web1``, ..., ``/sys/fs/cgroup/unified/vsv-web1``. One flat level keeps
every directory name starting with the prefix, which is what ``find_leftovers`` (and the
project's gc) match on. On v2 the needed controllers are enabled in the parent's
``cgroup.subtree_control`` before the child directory is made.

Each directory :meth:`GuestCgroup.create` makes gets the guest's device policy
(:mod:`supervisor.guest.devices`) before it returns, so before any process can be moved in: the
allowlist in ``devices.deny``/``devices.allow`` in the v1 ``devices`` hierarchy (where mounted)
and the device eBPF program on the unified directory (where there is one and the runtime loaded
the program). A directory that existed already (left by a supervisor that died, or kept for a
guest's reboot) gets the same policy again: writing the v1 list anew changes nothing for a
directory that has it, and attaching the program again adds one more copy of the same rules,
so no guest can ever run in a cgroup without the allowlist.

Every ``OSError`` from a cgroup file is turned into :class:`~supervisor.errors.RuntimeFailure`
naming the file and the value written, because "EINVAL" alone never tells an operator which of
a dozen writes the kernel refused.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.guest.devices import DEFAULT_DEVICE_RULES, DeviceProgram, v1_lines
from supervisor.model import BlkioTune, Domain
from supervisor.validate import kernel_cpu_list, parse_cpuset

LayoutKind = Literal["v1", "v2", "hybrid"]

#: v1 controllers a guest gets a directory in (when the machine has them).
V1_CONTROLLERS: tuple[str, ...] = ("cpu", "cpuacct", "memory", "pids", "freezer", "devices")
#: how long freeze/thaw/kill_all/remove wait for the kernel before giving up
SETTLE_TIMEOUT = 5.0
#: v2 controllers enabled for guests (when the machine offers them).
V2_CONTROLLERS: tuple[str, ...] = ("cpu", "memory", "pids")
#: Controllers a guest's cgroup joins only when its domain uses them, by v1 name -> v2 name:
#: ``cpuset`` for ``<vcpu cpuset>``, ``blkio`` (v2 ``io``) for ``<blkiotune>``. Every guest
#: joining them would cost a directory and an attach per hierarchy at every start for nothing.
OPTIONAL: dict[str, str] = {"cpuset": "cpuset", "blkio": "io"}
OPTIONAL_V1: tuple[str, ...] = tuple(OPTIONAL)

_KNOWN_V1 = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "blkio",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)


@attrs.frozen
class CgroupLayout:
    """Where the hierarchies are mounted and which controllers each one carries.

    ``v1`` maps a controller name to the directory of its hierarchy (co-mounted controllers map to
    the same directory). ``unified`` is the cgroup2 mount, with ``v2_controllers`` available in it
    (empty on a hybrid machine).
    """

    root: str
    kind: LayoutKind
    v1: tuple[tuple[str, str], ...] = ()
    unified: str | None = None
    v2_controllers: frozenset[str] = frozenset()

    def v1_path(self, controller: str) -> str | None:
        """The hierarchy directory that carries a v1 controller, or None."""
        for name, path in self.v1:
            if name == controller:
                return path
        return None

    def controller_hierarchy(self, controller: str) -> str | None:
        """The hierarchy whose cgroups hold ``controller``'s files: the unified one when it
        carries the controller, else the controller's v1 hierarchy; None when there is neither."""
        if self.unified is not None and controller in self.v2_controllers:
            return self.unified
        return self.v1_path(controller)

    def hierarchies(self, extra: Iterable[str] = ()) -> tuple[str, ...]:
        """Every hierarchy directory a guest gets a cgroup in: wanted v1 ones (and the
        optional ``extra`` ones), then unified."""
        seen: list[str] = []
        for ctrl in (*V1_CONTROLLERS, *extra):
            path = self.v1_path(ctrl)
            if path is not None and path not in seen:
                seen.append(path)
        if self.unified is not None:
            seen.append(self.unified)
        return tuple(seen)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise RuntimeFailure(f"cannot read {path}: {e.strerror}") from e


def _write(path: str, value: str) -> None:
    """Write one value to a cgroup file with a single write(2), as the kernel expects."""
    _write_each(path, (value,))


def _write_each(path: str, values: Sequence[str]) -> None:
    """Write each value to a cgroup file with a write(2) of its own, on one open descriptor.

    The kernel takes every write to a cgroup file as one whole value, so a list of rules
    (``devices.allow``) needs a write per rule, but not an open per rule: that halves the cost
    of the device allowlist on each guest start.
    """
    value = values[0] if values else ""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            for value in values:
                os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise RuntimeFailure(f"cannot write {value!r} to {path}: {e.strerror}") from e


def detect_layout(root: str = "/sys/fs/cgroup") -> CgroupLayout:
    """Find out which cgroup layout ``root`` holds (see the module docstring for the rules)."""
    top_controllers = os.path.join(root, "cgroup.controllers")
    if os.path.exists(top_controllers):
        return CgroupLayout(
            root=root,
            kind="v2",
            unified=root,
            v2_controllers=frozenset(_read(top_controllers).split()),
        )
    v1: dict[str, str] = {}
    unified: str | None = None
    v2_controllers: frozenset[str] = frozenset()
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise RuntimeFailure(f"cannot list cgroup root {root}: {e.strerror}") from e
    for entry in entries:
        path = os.path.join(root, entry)
        if not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            unified = path
            v2_controllers = frozenset(_read(os.path.join(path, "cgroup.controllers")).split())
            continue
        if not os.path.exists(os.path.join(path, "cgroup.procs")):
            continue
        real = os.path.realpath(path)
        for ctrl in os.path.basename(real).split(","):
            if ctrl in _KNOWN_V1 and ctrl not in v1:
                v1[ctrl] = real
    if not v1 and unified is None:
        raise RuntimeFailure(f"no cgroup hierarchy found under {root}")
    if not v1:
        assert unified is not None
        return CgroupLayout(root=root, kind="v2", unified=unified, v2_controllers=v2_controllers)
    return CgroupLayout(
        root=root,
        kind="hybrid" if unified is not None else "v1",
        v1=tuple(sorted(v1.items())),
        unified=unified,
        v2_controllers=v2_controllers,
    )


def cgroup_dir_name(prefix: str, name: str) -> str:
    """The directory name of a guest's cgroup: ``<prefix>-<name>``."""
    if not prefix or "/" in prefix or "/" in name or not name or name.startswith("."):
        raise RuntimeFailure(f"unusable cgroup name: prefix {prefix!r}, domain {name!r}")
    return f"{prefix}-{name}"


def _parse_flat_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def memory_writes(domain: Domain, layout_kind: LayoutKind) -> list[tuple[str, str]]:
    """The (file, value) writes that put a domain's memory limits and pids limit in place, in
    order.

    Pure, so the mapping is unit tested without a kernel. The memory limit is
    :attr:`Domain.memory_limit_kib`, written once (libvirt's two writes end in that value).
    v1 needs ``memory.limit_in_bytes`` before ``memory.memsw.limit_in_bytes`` (memsw may never
    be below it); libvirt's ``swap_hard_limit`` is memory+swap, which is what v1's memsw means,
    while v2's ``memory.swap.max`` is swap alone, so there it is the difference.
    """
    writes: list[tuple[str, str]] = []
    mt = domain.memtune
    v2 = layout_kind == "v2"
    limit = domain.memory_limit_kib
    if limit is not None:
        writes.append(("memory.max" if v2 else "memory.limit_in_bytes", str(limit * 1024)))
    if mt is not None:
        if mt.soft_limit_kib is not None:
            writes.append(
                (
                    "memory.high" if v2 else "memory.soft_limit_in_bytes",
                    str(mt.soft_limit_kib * 1024),
                )
            )
        if mt.swap_hard_limit_kib is not None:
            if v2:
                swap = mt.swap_hard_limit_kib - (limit or 0)
                writes.append(("memory.swap.max", str(max(swap, 0) * 1024)))
            else:
                writes.append(("memory.memsw.limit_in_bytes", str(mt.swap_hard_limit_kib * 1024)))
    if domain.pids_limit is not None:
        writes.append(("pids.max", str(domain.pids_limit)))
    return writes


#: ``<blkiotune><device>`` throttle -> (v1 file, v2 ``io.max`` key)
_THROTTLE_FILES: dict[str, tuple[str, str]] = {
    "read_bytes_sec": ("blkio.throttle.read_bps_device", "rbps"),
    "write_bytes_sec": ("blkio.throttle.write_bps_device", "wbps"),
    "read_iops_sec": ("blkio.throttle.read_iops_device", "riops"),
    "write_iops_sec": ("blkio.throttle.write_iops_device", "wiops"),
}


#: udev's name for a block device by its numbers, which libvirt's converter writes
_BY_NUMBERS = re.compile(r"/dev/block/(\d+):(\d+)")


def block_device(path: str, *, sysfs: str = "/sys") -> tuple[int, int]:
    """A block device node's (major, minor), for ``<blkiotune><device><path>``.

    ``/dev/block/MAJ:MIN`` names the device by its numbers (udev's links; libvirt's converter
    names the devices of an LXC config's blkio keys so): without udev there is no such link,
    and then the device ``sysfs`` lists under those numbers is the one meant.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        m = _BY_NUMBERS.fullmatch(path)
        if m is not None and os.path.isdir(
            os.path.join(sysfs, "dev/block", f"{m.group(1)}:{m.group(2)}")
        ):
            return int(m.group(1)), int(m.group(2))
        raise RuntimeFailure(f"<blkiotune><device><path>{path}: {e.strerror}") from e
    except OSError as e:
        raise RuntimeFailure(f"<blkiotune><device><path>{path}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode):
        raise RuntimeFailure(f"<blkiotune><device><path>{path}: not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def blkio_writes(
    tune: BlkioTune,
    kind: Literal["v1", "v2"],
    present: frozenset[str],
    device: Callable[[str], tuple[int, int]],
) -> list[tuple[str, list[str]]]:
    """The (file, values) writes for ``<blkiotune>``, each value one write(2), in order.

    Pure but for ``device`` (a path to its numbers), so the mapping is unit tested without a
    kernel. ``present`` is the files the guest's directory has: a weight goes to BFQ's file
    when the kernel has one, else to the controller's own (CFQ's on v1, ``io.weight`` on v2),
    as libvirt does; with neither the weight cannot be applied and that is an error naming the
    element. A throttle of 0 is libvirt's "no limit": v1 takes 0, v2's ``io.max`` ``max``.
    """
    prefix = "io" if kind == "v2" else "blkio"
    weight_file = next(
        (f for f in (f"{prefix}.bfq.weight", f"{prefix}.weight") if f in present), None
    )
    writes: list[tuple[str, list[str]]] = []
    weighted = tune.weight is not None or any(d.weight is not None for d in tune.devices)
    if weighted and weight_file is None:
        raise RuntimeFailure(
            "<blkiotune><weight>: this machine's block I/O controller has no weight "
            f"({prefix}.weight or {prefix}.bfq.weight: no BFQ or CFQ I/O scheduler)"
        )
    if tune.weight is not None:
        assert weight_file is not None
        writes.append(
            (weight_file, [f"default {tune.weight}" if kind == "v2" else str(tune.weight)])
        )
    device_weights: list[str] = []
    throttles: dict[str, list[str]] = {}
    io_max: list[str] = []
    for dev in tune.devices:
        major, minor = device(dev.path)
        node = f"{major}:{minor}"
        if dev.weight is not None:
            device_weights.append(f"{node} {dev.weight}")
        limits = [(field, getattr(dev, field)) for field in _THROTTLE_FILES]
        if kind == "v2":
            keys = [
                f"{_THROTTLE_FILES[field][1]}={value or 'max'}"
                for field, value in limits
                if value is not None
            ]
            if keys:
                io_max.append(f"{node} {' '.join(keys)}")
        else:
            for field, value in limits:
                if value is not None:
                    throttles.setdefault(_THROTTLE_FILES[field][0], []).append(f"{node} {value}")
    if device_weights:
        assert weight_file is not None
        # v1's per-device weights have a file of their own; v2's share the weight file
        fname = weight_file if kind == "v2" else weight_file + "_device"
        writes.append((fname, device_weights))
    writes.extend(throttles.items())
    if io_max:
        writes.append(("io.max", io_max))
    return writes


@attrs.define(eq=False)
class GuestCgroup:
    """The cgroup directories of one guest, in every hierarchy the layout has.

    Identity object: no I/O in ``__init__``; :meth:`create` makes the directories.
    """

    layout: CgroupLayout
    prefix: str
    name: str
    #: path below each hierarchy's top under which guest directories live ("" = the top)
    base: str = ""
    #: attached to the unified directory by :meth:`create`; its rules are also the v1 allowlist,
    #: so both mechanisms enforce one list (without a program the v1 one is the default list)
    device_program: DeviceProgram | None = attrs.field(default=None, kw_only=True)
    #: False leaves the device allowlist out: for a measurement of what it costs
    #: (bench/bench_confine.py) only; the runtime never makes such a cgroup
    restrict_devices: bool = attrs.field(default=True, kw_only=True)
    #: the optional v1 controllers (:data:`OPTIONAL_V1`) this guest's cgroup joined
    extra: tuple[str, ...] = attrs.field(default=(), kw_only=True)

    @property
    def dirname(self) -> str:
        """``<prefix>-<name>``."""
        return cgroup_dir_name(self.prefix, self.name)

    def path_in(self, hierarchy: str) -> str:
        """The guest's directory inside one hierarchy."""
        return os.path.join(hierarchy, self.base, self.dirname)

    def paths(self) -> tuple[str, ...]:
        """The guest's directory in every hierarchy it uses."""
        return tuple(self.path_in(h) for h in self.layout.hierarchies(self.extra))

    def every_path(self) -> tuple[str, ...]:
        """The guest's directory in every hierarchy it may use (the optional ones too): what
        is looked at and removed, also by a supervisor that adopted the guest."""
        return tuple(self.path_in(h) for h in self.layout.hierarchies(OPTIONAL_V1))

    def controller_dir(self, controller: str) -> str | None:
        """The directory holding a controller's files for this guest, or None if unavailable."""
        hierarchy = self.layout.controller_hierarchy(controller)
        return None if hierarchy is None else self.path_in(hierarchy)

    # -- creation and limits -------------------------------------------------------------------

    def create(self) -> bool:
        """Make the directories (idempotent); on v2 enable the controllers in the parent first.

        Each directory made here gets the device policy before the next one is made (see the
        module docstring); one that existed already is left as it is. On any failure the
        directories this call made are removed again before the error propagates, so a failed
        create leaves nothing a later start would mistake for a ready cgroup.

        True when this call made every one of them (none existed before), so every file in
        them holds the kernel's default.
        """
        if self.layout.unified is not None and self.layout.v2_controllers:
            parent = os.path.join(self.layout.unified, self.base)
            available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
            missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
            if missing:
                _write(
                    os.path.join(parent, "cgroup.subtree_control"),
                    " ".join("+" + c for c in missing),
                )
        hierarchies = self.layout.hierarchies()
        made: list[str] = []
        try:
            for hierarchy in hierarchies:
                path = self.path_in(hierarchy)
                try:
                    os.mkdir(path)
                except FileExistsError:
                    self._restrict_devices(hierarchy, path, existing=True)
                    continue
                except OSError as e:
                    raise RuntimeFailure(f"cannot create cgroup {path}: {e.strerror}") from e
                made.append(path)
                self._restrict_devices(hierarchy, path)
        except BaseException as exc:
            _remove_made(made, exc)
            raise
        return len(made) == len(hierarchies)

    def _restrict_devices(self, hierarchy: str, path: str, *, existing: bool = False) -> None:
        """Put the device policy on a directory of ``hierarchy`` (if it takes one).

        ``existing``: the directory was there before; the kernel refuses to attach the very
        program that is attached already (EINVAL), which then is no failure.
        """
        if not self.restrict_devices:
            return
        if hierarchy == self.layout.v1_path("devices"):
            program = self.device_program
            rules = DEFAULT_DEVICE_RULES if program is None else program.rules
            for fname, writes in itertools.groupby(v1_lines(rules), key=lambda w: w[0]):
                _write_each(os.path.join(path, fname), [value for _, value in writes])
        if hierarchy == self.layout.unified and self.device_program is not None:
            try:
                self.device_program.attach(path)
            except RuntimeFailure as e:
                if not (existing and "Invalid argument" in str(e)):
                    raise

    def limit_writes(self, domain: Domain) -> list[tuple[str, str]]:
        """Absolute (path, value) writes for a domain's memory and pids limits
        (:func:`memory_writes`)."""
        kind: LayoutKind = "v2" if "memory" in self.layout.v2_controllers else "v1"
        out: list[tuple[str, str]] = []
        for fname, value in memory_writes(domain, kind):
            ctrl = fname.split(".", 1)[0]
            directory = self.controller_dir(ctrl)
            if directory is None:
                raise RuntimeFailure(f"no {ctrl} controller on this machine for {fname}={value}")
            out.append((os.path.join(directory, fname), value))
        return out

    def apply_limits(self, domain: Domain) -> None:
        """Write the domain's memory limit (``<memory>``, or ``<memtune><hard_limit>`` over
        it, as libvirt's LXC driver applies them), the rest of its memtune, pids, cpuset and
        blkiotune settings (only the ones the domain gives).

        A v1 memsw file that does not exist (swap accounting off) is skipped: the kernel offers
        no way to limit swap then, and refusing to start the guest would help no one. A cpuset
        or an I/O setting the machine cannot apply is a failure that names the element: the
        guest would otherwise run with less confinement than its document says.
        """
        self._apply_memory(domain)
        if domain.cpuset is not None:
            self._apply_cpuset(domain.cpuset)
        if domain.blkiotune is not None:
            self._apply_blkio(domain.blkiotune)

    def _join(self, controller: str, element: str) -> tuple[str, bool]:
        """The guest's directory for an optional controller's files, made (v1) or with the
        controller enabled in the parent (v2); and whether it is the v2 one."""
        unified = self.layout.unified
        if unified is not None and OPTIONAL[controller] in self.layout.v2_controllers:
            parent = os.path.join(unified, self.base)
            name = OPTIONAL[controller]
            control = os.path.join(parent, "cgroup.subtree_control")
            if name not in _read(control).split():
                _write(control, "+" + name)
            return self.path_in(unified), True
        hierarchy = self.layout.v1_path(controller)
        if hierarchy is None:
            raise RuntimeFailure(
                f"{element}: this machine has no {controller} controller (v1 {controller}, "
                f"v2 {OPTIONAL[controller]}) to apply it"
            )
        path = self.path_in(hierarchy)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise RuntimeFailure(f"cannot create cgroup {path}: {e.strerror}") from e
        if controller not in self.extra:
            self.extra = (*self.extra, controller)
        return path, False

    def _apply_cpuset(self, cpuset: str) -> None:
        """``<vcpu cpuset>``: the guest's CPUs, which must be among those its parent has (a v1
        cpuset directory starts with none, and its memory nodes are the parent's)."""
        element = f"<vcpu cpuset='{cpuset}'>"
        path, v2 = self._join("cpuset", element)
        parent = os.path.dirname(path)
        effective = "cpuset.cpus.effective" if v2 else "cpuset.effective_cpus"
        available = parse_cpuset(_read(os.path.join(parent, effective)).strip())
        wanted = parse_cpuset(cpuset)
        if not wanted <= available:
            raise RuntimeFailure(
                f"{element}: CPUs {kernel_cpu_list(wanted - available)} are not this host's "
                f"(guests may use {kernel_cpu_list(available)})"
            )
        if not v2 and not _read(os.path.join(path, "cpuset.mems")).strip():
            _write(os.path.join(path, "cpuset.mems"), _read(os.path.join(parent, "cpuset.mems")))
        _write(os.path.join(path, "cpuset.cpus"), kernel_cpu_list(wanted))

    def _apply_blkio(self, tune: BlkioTune) -> None:
        """``<blkiotune>``: the weight and each device's weight and throttles."""
        path, v2 = self._join("blkio", "<blkiotune>")
        present = frozenset(os.listdir(path))
        for fname, values in blkio_writes(tune, "v2" if v2 else "v1", present, block_device):
            _write_each(os.path.join(path, fname), values)

    def _apply_memory(self, domain: Domain) -> None:
        """The memory and pids writes; a memsw the kernel refuses is named by its element."""
        for path, value in self.limit_writes(domain):
            if path.endswith("memory.memsw.limit_in_bytes"):
                if not os.path.exists(path):
                    continue
                try:
                    _write(path, value)
                except RuntimeFailure as e:
                    if not isinstance(e.__cause__, OSError) or e.__cause__.errno != errno.EINVAL:
                        raise
                    # the one way a valid domain gets EINVAL here: memsw (memory + swap) below
                    # the limit; "Invalid argument" on a file name would not say which element
                    raise RuntimeFailure(
                        f"<memtune><swap_hard_limit> {int(value) // 1024} KiB is below the "
                        f"guest's memory limit of {domain.memory_limit_kib} KiB (<hard_limit>, "
                        "else <memory>): it is memory + swap"
                    ) from e
                continue
            if path.endswith("memory.limit_in_bytes"):
                memsw = os.path.join(os.path.dirname(path), "memory.memsw.limit_in_bytes")
                try:
                    _write(path, value)
                except RuntimeFailure as e:
                    # lowering memsw below the new limit first is the only legal order when
                    # the new memory limit is above the current memsw limit
                    if not isinstance(e.__cause__, OSError) or e.__cause__.errno != errno.EINVAL:
                        raise
                    if not os.path.exists(memsw):
                        raise
                    _write(memsw, value)
                    _write(path, value)
                continue
            _write(path, value)

    # -- membership ----------------------------------------------------------------------------

    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files :meth:`attach_self` writes to (precomputed by spawners).

        An optional hierarchy's directory that exists is joined too, though :attr:`extra` does
        not name it: a supervisor that adopted a running guest respawns its init (a reboot)
        into every cgroup the guest had.
        """
        for ctrl in OPTIONAL_V1:
            hierarchy = self.layout.v1_path(ctrl)
            if (
                ctrl not in self.extra
                and hierarchy is not None
                and os.path.isdir(self.path_in(hierarchy))
            ):
                self.extra = (*self.extra, ctrl)
        return tuple(os.path.join(p, "cgroup.procs") for p in self.paths())

    def attach_self(self) -> None:
        """Move the calling process into the guest's cgroup in every hierarchy.

        Used in a forked child before it execs, so nothing the guest runs is ever outside its
        cgroup. Writes "0" (the writer itself) so it works without knowing the pid.
        """
        attach_to(self.procs_files())

    def attach(self, pid: int) -> None:
        """Move another process into the guest's cgroup in every hierarchy."""
        for f in self.procs_files():
            _write(f, str(pid))

    def pids(self) -> set[int]:
        """Every process in the guest's cgroup (union over hierarchies)."""
        found: set[int] = set()
        for path in self.every_path():
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    found.update(int(x) for x in f.read().split())
            except FileNotFoundError:
                continue
            except OSError as e:
                raise RuntimeFailure(f"cannot read {path}/cgroup.procs: {e.strerror}") from e
        return found

    # -- freezing ------------------------------------------------------------------------------

    def _freeze_mode(self) -> tuple[Literal["v1", "v2"], str] | None:
        v1 = self.layout.v1_path("freezer")
        if v1 is not None:
            return ("v1", self.path_in(v1))
        if self.layout.unified is not None:
            return ("v2", self.path_in(self.layout.unified))
        return None

    def is_frozen(self) -> bool:
        """Whether the kernel reports the cgroup as completely frozen."""
        mode = self._freeze_mode()
        if mode is None:
            return False
        if mode[0] == "v1":
            return _read(os.path.join(mode[1], "freezer.state")).strip() == "FROZEN"
        events = _parse_flat_keyed(_read(os.path.join(mode[1], "cgroup.events")))
        return events.get("frozen") == 1

    async def freeze(self) -> None:
        """Freeze every process and wait until the kernel says all are frozen."""
        mode = self._require_freezer()
        if mode[0] == "v1":
            _write(os.path.join(mode[1], "freezer.state"), "FROZEN")
        else:
            _write(os.path.join(mode[1], "cgroup.freeze"), "1")
        await self._wait_frozen(True)

    async def thaw(self) -> None:
        """Let the processes run again."""
        mode = self._require_freezer()
        if mode[0] == "v1":
            _write(os.path.join(mode[1], "freezer.state"), "THAWED")
        else:
            _write(os.path.join(mode[1], "cgroup.freeze"), "0")
        await self._wait_frozen(False)

    def _require_freezer(self) -> tuple[Literal["v1", "v2"], str]:
        mode = self._freeze_mode()
        if mode is None:
            raise RuntimeFailure("this machine has no cgroup freezer")
        return mode

    async def _wait_frozen(self, want: bool) -> None:
        timeout = SETTLE_TIMEOUT
        delay = 0.0005
        with trio.move_on_after(timeout):
            while self.is_frozen() != want:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.02)
            return
        raise RuntimeFailure(
            f"cgroup {self.dirname} did not become {'frozen' if want else 'thawed'} "
            f"within {timeout}s"
        )

    # -- killing and removal -------------------------------------------------------------------

    async def kill_all(self, *, wait: bool = True) -> None:
        """SIGKILL every process of the guest, including ones that double-forked or setsid'ed.

        v2 (also the unified hierarchy of a hybrid machine): one write to ``cgroup.kill``, which
        the kernel applies atomically, forks included. v1: freeze (so nothing can fork while we
        look), SIGKILL each pid, thaw (a frozen task dies only once thawed), repeat until the
        cgroup is empty. Gives up with RuntimeFailure after ``SETTLE_TIMEOUT`` seconds.

        ``wait=False`` makes one pass and returns: for a reboot, whose runner waits for the
        end and empties the cgroup itself before it respawns init there. Waiting here as well
        would race with that respawn (and on v1 could kill the new init).
        """
        timeout = SETTLE_TIMEOUT
        with trio.move_on_after(timeout):
            kill_file = self._kill_file()
            if kill_file is not None:
                _write(kill_file, "1")
                # a task frozen by the v1 freezer (a hybrid machine) dies only once thawed; the
                # v2 freezer lets SIGKILL through by itself
                mode = self._freeze_mode()
                if mode is not None and mode[0] == "v1" and self.is_frozen():
                    await self.thaw()
                if wait:
                    await self._wait_empty()
                return
            has_freezer = self.layout.v1_path("freezer") is not None
            delay = 0.0005
            while True:
                pids = self.pids()
                if not pids:
                    return
                if has_freezer:
                    await self.freeze()
                    _kill_each(self.pids())
                    await self.thaw()
                else:
                    _kill_each(pids)
                if not wait:
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 0.02)
        raise RuntimeFailure(
            f"cgroup {self.dirname} still has processes {sorted(self.pids())} after {timeout}s"
        )

    def _kill_file(self) -> str | None:
        """The unified hierarchy's ``cgroup.kill`` when the kernel has it (5.14+)."""
        if self.layout.unified is None:
            return None
        path = os.path.join(self.path_in(self.layout.unified), "cgroup.kill")
        return path if os.path.exists(path) else None

    async def _wait_empty(self) -> None:
        delay = 0.0005
        while self.pids():
            await trio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def remove(self) -> None:
        """rmdir the guest's directory in every hierarchy.

        Retries while the kernel still reports exiting tasks (EBUSY); a directory that is gone
        already counts as removed, so this is safe to call twice.
        """
        await remove_dirs(self.every_path())

    # -- readers -------------------------------------------------------------------------------

    def memory_current(self) -> int:
        """Bytes of memory the guest uses now."""
        if self.layout.unified is not None and "memory" in self.layout.v2_controllers:
            return int(_read(os.path.join(self.path_in(self.layout.unified), "memory.current")))
        mem = self.layout.v1_path("memory")
        if mem is None:
            raise RuntimeFailure("this machine has no memory controller")
        return int(_read(os.path.join(self.path_in(mem), "memory.usage_in_bytes")))


async def remove_dirs(paths: Iterable[str], *, timeout: float = SETTLE_TIMEOUT) -> None:
    """rmdir cgroup directories, in the order given (children before their parents).

    The kernel refuses (EBUSY) while tasks that have left a cgroup are still exiting, so a busy
    directory is tried again, with a growing pause, until ``timeout``; a directory that is gone
    counts as removed. Any other error, or one still busy at the end, is a RuntimeFailure that
    names it. The guests' cgroups and ``vsv gc`` both remove through this.
    """
    pending = list(paths)
    delay = 0.0005
    with trio.move_on_after(timeout):
        while pending:
            still: list[str] = []
            for path in pending:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise RuntimeFailure(f"cannot remove cgroup {path}: {e.strerror}") from e
                    still.append(path)
            pending = still
            if pending:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
        return
    raise RuntimeFailure(f"cannot remove cgroups {pending}: still busy after {timeout}s")


def attach_to(procs_files: Iterable[str]) -> None:
    """Write "0" (the writer) to each ``cgroup.procs`` file: safe to call in a forked child."""
    for f in procs_files:
        _write(f, "0")


def _remove_made(paths: list[str], exc: BaseException) -> None:
    """rmdir the directories a failed :meth:`GuestCgroup.create` made (empty: no process could
    enter yet); one that cannot be removed is named in a note on ``exc``."""
    for path in reversed(paths):
        try:
            os.rmdir(path)
        except OSError as e:
            exc.add_note(f"the cgroup {path} made before the failure is left: {e.strerror}")


def _kill_each(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def find_leftovers(layout: CgroupLayout, prefix: str, base: str = "") -> list[str]:
    """Every cgroup directory under ``base`` of any hierarchy whose name starts with ``prefix``."""
    found: list[str] = []
    for hierarchy in layout.hierarchies(OPTIONAL_V1):
        parent = os.path.join(hierarchy, base)
        try:
            names = sorted(os.listdir(parent))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise RuntimeFailure(f"cannot list {parent}: {e.strerror}") from e
        found.extend(
            os.path.join(parent, n)
            for n in names
            if n.startswith(prefix) and os.path.isdir(os.path.join(parent, n))
        )
    return found
