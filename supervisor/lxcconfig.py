"""LXC container configurations (libvirt's ``lxc-tools`` format) to domains, and back.

``vsv domxml-from-native lxc-tools FILE`` and ``vsv import-lxc NAME`` read a config with
:func:`from_native`; ``vsv domxml-to-native lxc-tools FILE`` writes one with :func:`to_native`.
The mapping is libvirt's (its converter in ``src/lxc/lxc_native.c``: rootfs, utsname, mount
entries, NICs with their addresses and gateways, the cgroup memory, cpu, cpuset and blkio keys,
``lxc.tty.max`` as consoles, idmaps, ``lxc.cap.drop``), extended to the keys libvirt leaves
out (LXC 3+ spellings, cgroup v2 keys, ``lxc.cap.keep``, the init command,
``lxc.mount.fstab``); docs/import.md has the whole table.

Both generations of key names are read: LXC 1.x/2.x (``lxc.utsname``, ``lxc.network.*``,
``lxc.id_map`` ...) and 3+ (``lxc.uts.name``, ``lxc.net.N.*``, ``lxc.idmap`` ...). Every key is
first renamed to its 3+ spelling, so the two spellings of one config give one domain.

Nothing is dropped silently: a key the model cannot hold comes back as an :class:`Unmapped`
with the reason (``later`` when the model lacks an element libvirt has, so a later version can
map it), and anything worth knowing about a key that was mapped (a scalar given twice, where
the last one counts as in LXC; a setting the supervisor always applies anyway) as a
:class:`Note`. A config that gives no domain at all (no root directory, no name) raises
:class:`LxcConfigError`.

Pure: text in, values out. What a config pulls in from other files (``lxc.include``, the file
``lxc.mount.fstab`` names) is read through the ``read`` callable the caller passes.
"""

from __future__ import annotations

import ipaddress
import platform
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import attrs

from supervisor.errors import VsvError
from supervisor.model import (
    BlkioDevice,
    BlkioTune,
    Capabilities,
    CapsPolicy,
    Console,
    CpuTune,
    Domain,
    Filesystem,
    FilesystemType,
    IdMapEntry,
    Interface,
    IpAddress,
    MemTune,
    OsSpec,
    Route,
    SharedNamespace,
)

FORMAT: Final = "lxc-tools"

#: reads a path named by the config: a file gives [(path, text)], a directory (``lxc.include``
#: of a directory) its ``*.conf`` files in name order; raises OSError
Reader = Callable[[str], list[tuple[str, str]]]

#: how deep ``lxc.include`` may nest (a loop is caught before this)
MAX_INCLUDE_DEPTH: Final = 16
#: the most ttys (``<console>`` elements) a config may ask for: a bound on the document, far
#: above what a container uses (LXC's templates ask for 4)
MAX_TTYS: Final = 1024


class LxcConfigError(VsvError, ValueError):
    """The config gives no usable domain; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@attrs.frozen
class Entry:
    """One ``key = value`` line; ``origin`` is ``PATH:LINE`` (``-`` for standard input)."""

    key: str
    value: str
    origin: str
    #: the entry's place among all the entries read (includes expanded in place)
    seq: int = 0


@attrs.frozen
class Unmapped:
    """A key (or part of one) the domain does not express, and why.

    ``later``: the model lacks an element libvirt has for it ("not mapped yet"); otherwise
    there is no equivalent in the supervisor ("not mapped").
    """

    key: str
    value: str
    origin: str
    reason: str
    later: bool = False

    def __str__(self) -> str:
        what = "not mapped yet" if self.later else "not mapped"
        text = f"{self.key} = {self.value}" if self.value else self.key
        return f"{self.origin}: {text}: {what}: {self.reason}"


@attrs.frozen
class Note:
    """Something about a mapped key worth knowing; ``origin`` is ``PATH:LINE`` or ``PATH``."""

    origin: str
    text: str

    def __str__(self) -> str:
        return f"{self.origin}: note: {self.text}"


@attrs.frozen
class Conversion:
    """The domain a config gives, with what it could not express."""

    domain: Domain
    unmapped: tuple[Unmapped, ...] = ()
    notes: tuple[Note, ...] = ()


# --- reading the file ---------------------------------------------------------------------


def _origin(path: str | None, line: int) -> str:
    return f"{path or '-'}:{line}"


def _unquote(value: str) -> str:
    """LXC strips one pair of matching quotes around a value."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_entries(
    text: str, *, path: str | None = None, read: Reader | None = None
) -> tuple[list[Entry], list[Unmapped]]:
    """The config's ``key = value`` entries in order, ``lxc.include`` expanded in place.

    Lines are read as LXC reads them: leading and trailing whitespace and whitespace around the
    first ``=`` do not count, ``#`` starts a comment only at the start of a line, a value may be
    quoted. Lines that are not ``key = value`` and includes that cannot be followed come back
    as Unmapped.
    """
    entries: list[Entry] = []
    unmapped: list[Unmapped] = []
    _read_into(text, path, read, (), entries, unmapped, {})
    return entries, unmapped


def _read_into(
    text: str,
    path: str | None,
    read: Reader | None,
    stack: tuple[str, ...],
    entries: list[Entry],
    unmapped: list[Unmapped],
    order: dict[str, float],
) -> None:
    """Append the entries of ``text`` (and what it includes); ``order`` gets each line's place
    among all the lines read, so messages about them can be sorted as the lines came."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        origin = _origin(path, number)
        order.setdefault(origin, len(order))
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key:
            unmapped.append(Unmapped(line, "", origin, "not a 'key = value' line"))
            continue
        value = _unquote(value.strip())
        if key == "lxc.include":
            _include(value, path, read, stack, origin, entries, unmapped, order)
        else:
            entries.append(Entry(key, value, origin, len(entries)))


def _include(
    value: str,
    path: str | None,
    read: Reader | None,
    stack: tuple[str, ...],
    origin: str,
    entries: list[Entry],
    unmapped: list[Unmapped],
    order: dict[str, float],
) -> None:
    def skip(reason: str) -> None:
        unmapped.append(Unmapped("lxc.include", value, origin, f"not followed: {reason}"))

    target = _resolve(value, path)
    if read is None:
        skip("reading other files was not asked for")
    elif target is None:
        skip("a relative path in a config read from standard input")
    elif target in stack or len(stack) >= MAX_INCLUDE_DEPTH:
        skip("it includes itself" if target in stack else "includes nest too deep")
    else:
        try:
            files = read(target)
        except OSError as exc:
            skip(f"cannot read {target}: {exc.strerror or exc}")
            return
        for file_path, text in files:
            _read_into(text, file_path, read, (*stack, target), entries, unmapped, order)


def _resolve(value: str, path: str | None) -> str | None:
    """A path named in the config: absolute as it is, relative to the config's directory."""
    if value.startswith("/"):
        return posixpath.normpath(value)
    if path is None:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(path) or ".", value))


# --- key names ------------------------------------------------------------------------------

#: LXC 1.x/2.x key -> its 3+ spelling (network keys are renamed by :func:`_nic_key`)
RENAMED: Final[dict[str, str]] = {
    "lxc.utsname": "lxc.uts.name",
    "lxc.rootfs": "lxc.rootfs.path",
    "lxc.id_map": "lxc.idmap",
    "lxc.aa_profile": "lxc.apparmor.profile",
    "lxc.aa_allow_incomplete": "lxc.apparmor.allow_incomplete",
    "lxc.se_context": "lxc.selinux.context",
    "lxc.mount": "lxc.mount.fstab",
    "lxc.pts": "lxc.pty.max",
    "lxc.tty": "lxc.tty.max",
    "lxc.devttydir": "lxc.tty.dir",
    "lxc.console": "lxc.console.path",
    "lxc.init_cmd": "lxc.init.cmd",
    "lxc.init_uid": "lxc.init.uid",
    "lxc.init_gid": "lxc.init.gid",
    "lxc.haltsignal": "lxc.signal.halt",
    "lxc.rebootsignal": "lxc.signal.reboot",
    "lxc.stopsignal": "lxc.signal.stop",
    "lxc.loglevel": "lxc.log.level",
    "lxc.logfile": "lxc.log.file",
    "lxc.syslog": "lxc.log.syslog",
    "lxc.seccomp": "lxc.seccomp.profile",
}
#: LXC 1.x/2.x NIC key -> its 3+ name
_NIC_RENAMED: Final = {"ipv4": "ipv4.address", "ipv6": "ipv6.address"}
_NET_INDEXED = re.compile(r"lxc\.net\.(\d+)\.(.+)")


def canonical(key: str) -> str:
    """A key's LXC 3+ spelling (``lxc.network.*`` keys excepted: see :func:`_nic_key`)."""
    if key in RENAMED:
        return RENAMED[key]
    if key.startswith("lxc.limit."):
        return "lxc.prlimit." + key.removeprefix("lxc.limit.")
    return key


#: scalar keys (the last one counts, as in LXC) -> the setting they give; a v1 and a v2 cgroup
#: key of one setting share it, so whichever comes last counts
_SLOTS: Final[dict[str, str]] = {
    "lxc.uts.name": "uts",
    "lxc.rootfs.path": "rootfs",
    "lxc.rootfs.options": "rootfs.options",
    "lxc.rootfs.mount": "rootfs.mount",
    "lxc.rootfs.backend": "rootfs.backend",
    "lxc.mount.fstab": "fstab",
    "lxc.autodev": "autodev",
    "lxc.tty.max": "tty",
    "lxc.pty.max": "pty",
    "lxc.console.path": "console",
    "lxc.apparmor.profile": "apparmor",
    "lxc.arch": "arch",
    "lxc.init.cmd": "init.cmd",
    "lxc.init.cwd": "init.cwd",
    "lxc.init.uid": "init.uid",
    "lxc.init.gid": "init.gid",
    "lxc.start.auto": "autostart",
    "lxc.pivotdir": "pivotdir",
    "lxc.cgroup.memory.limit_in_bytes": "mem.hard",
    "lxc.cgroup2.memory.max": "mem.hard",
    "lxc.cgroup.memory.soft_limit_in_bytes": "mem.soft",
    "lxc.cgroup2.memory.high": "mem.soft",
    "lxc.cgroup.memory.memsw.limit_in_bytes": "mem.swap",
    "lxc.cgroup2.memory.swap.max": "mem.swap",
    "lxc.cgroup.cpu.shares": "cpu.shares",
    "lxc.cgroup2.cpu.weight": "cpu.shares",
    "lxc.cgroup.cpu.cfs_quota_us": "cpu.quota",
    "lxc.cgroup.cpu.cfs_period_us": "cpu.period",
    "lxc.cgroup2.cpu.max": "cpu.max",
    "lxc.cgroup.pids.max": "pids",
    "lxc.cgroup2.pids.max": "pids",
    "lxc.cgroup.cpuset.cpus": "cpuset",
    "lxc.cgroup2.cpuset.cpus": "cpuset",
    "lxc.namespace.share.net": "share.net",
    "lxc.namespace.share.ipc": "share.ipc",
    "lxc.namespace.share.uts": "share.uts",
}
#: keys that add to a list; an empty value clears the list (as in LXC)
_LISTS: Final = {
    "lxc.mount.entry": "mounts",
    "lxc.mount.auto": "mount.auto",
    "lxc.cap.drop": "cap.drop",
    "lxc.cap.keep": "cap.keep",
    "lxc.idmap": "idmap",
    "lxc.environment": "env",
}
#: the blkio (v1) and io (v2) keys of ``<blkiotune>`` -> what their lines set. LXC writes every
#: line of a cgroup key to its file in turn, so they are lists (an empty value clears the
#: key's lines, as in LXC); a value set twice (one device's throttle ...) counts last.
_BLKIO: Final[dict[str, str]] = {
    "lxc.cgroup.blkio.weight": "weight",
    "lxc.cgroup.blkio.bfq.weight": "weight",
    "lxc.cgroup.blkio.weight_device": "device weight",
    "lxc.cgroup.blkio.bfq.weight_device": "device weight",
    "lxc.cgroup.blkio.throttle.read_bps_device": "read_bytes_sec",
    "lxc.cgroup.blkio.throttle.write_bps_device": "write_bytes_sec",
    "lxc.cgroup.blkio.throttle.read_iops_device": "read_iops_sec",
    "lxc.cgroup.blkio.throttle.write_iops_device": "write_iops_sec",
    "lxc.cgroup2.io.weight": "weight",
    "lxc.cgroup2.io.bfq.weight": "weight",
    "lxc.cgroup2.io.max": "io.max",
}
_LISTS.update({key: key for key in _BLKIO})
#: ``io.max`` keys -> ``<blkiotune><device>`` throttles
_IO_MAX: Final = {
    "rbps": "read_bytes_sec",
    "wbps": "write_bytes_sec",
    "riops": "read_iops_sec",
    "wiops": "write_iops_sec",
}
_DEVICE_NUMBERS = re.compile(r"(\d+):(\d+)")

_NO_LSM = (
    "the supervisor loads no LSM profile; it confines a guest with capabilities, seccomp, "
    "cgroups and masked paths (docs/security.md)"
)
_NUMA = "libvirt's converter maps it to <numatune>, which the model does not have"
_OTHER_CPUSET = "no element sets this cpuset file (cpuset.cpus is <vcpu cpuset>)"
_OTHER_BLKIO = (
    "no element sets this file (<blkiotune> has the weights and the bytes and iops throttles)"
)
_CONSOLE_LOG = "the console's output goes to the guest's log, RUN/logs/NAME.log"
#: keys (exact, or a prefix ending in '.') the model cannot hold: (reason, later)
_UNSUPPORTED: Final[dict[str, tuple[str, bool]]] = {
    "lxc.cgroup.cpuset.mems": (_NUMA, True),
    "lxc.cgroup2.cpuset.mems": (_NUMA, True),
    "lxc.cgroup.cpuset.": (_OTHER_CPUSET, False),
    "lxc.cgroup2.cpuset.": (_OTHER_CPUSET, False),
    "lxc.cgroup.blkio.device_weight": (
        "not a blkio file: the device weights are blkio.weight_device (libvirt's converter "
        "reads this spelling, which LXC could not write)",
        False,
    ),
    "lxc.cgroup.blkio.": (_OTHER_BLKIO, False),
    "lxc.cgroup2.io.": (_OTHER_BLKIO, False),
    "lxc.cgroup.devices.": (
        "the guest's device allowlist is the supervisor's fixed one (docs/security.md)",
        False,
    ),
    "lxc.cgroup2.devices.": (
        "the guest's device allowlist is the supervisor's fixed one (docs/security.md)",
        False,
    ),
    "lxc.cgroup.dir": ("guest cgroups are <prefix>-<name> (<resource><partition>)", False),
    "lxc.cgroup.relative": ("guest cgroups are <prefix>-<name>", False),
    "lxc.cgroup.": ("no element sets this cgroup file", False),
    "lxc.cgroup2.": ("no element sets this cgroup file", False),
    "lxc.apparmor.": (_NO_LSM, False),
    "lxc.selinux.": (_NO_LSM, False),
    "lxc.seccomp.": ("the supervisor loads its own seccomp filter (docs/security.md)", False),
    "lxc.no_new_privs": ("no element sets no_new_privs", False),
    "lxc.hook.": ("the supervisor runs no per-guest hook scripts", False),
    "lxc.log.": ("LXC's own log; the guest's output goes to RUN/logs/NAME.log", False),
    "lxc.console.logfile": (_CONSOLE_LOG, False),
    "lxc.console.buffer.logfile": (_CONSOLE_LOG, False),
    "lxc.console.": ("no element sets the console's buffer or log", False),
    "lxc.tty.dir": ("the guest has no ttys of LXC's (a <console> is /dev/console)", False),
    "lxc.signal.": ("the shutdown signal is the daemon's (vsv daemon --shutdown-signal)", False),
    "lxc.start.": ("only lxc.start.auto has an element (autostart)", False),
    "lxc.group": ("no element groups guests", False),
    "lxc.prlimit.": ("the model has no resource limits (rlimits)", False),
    "lxc.sysctl.": ("no element sets sysctls", False),
    "lxc.proc.": ("no element sets /proc/PID values", False),
    "lxc.namespace.share.": ("only the net, ipc and uts namespaces can be shared", False),
    "lxc.namespace.": ("the guest's namespaces are fixed (docs/architecture.md)", False),
    "lxc.monitor.": ("no LXC monitor here", False),
    "lxc.ephemeral": ("no ephemeral guests", False),
    "lxc.execute.cmd": ("lxc-execute's command; the domain's init is lxc.init.cmd", False),
    "lxc.kmsg": ("no /dev/kmsg link", False),
    "lxc.keyring.": ("no element sets the session keyring", False),
    "lxc.time.": ("no time namespace offsets", False),
    "lxc.sched.": ("no core scheduling", False),
    "lxc.autodev.": ("the guest's /dev is the supervisor's fixed tmpfs", False),
    "lxc.rootfs.": ("no element for it", False),
    "lxc.mount.": ("no element for it", False),
    "lxc.init.": ("no element for it", False),
}


def _unsupported(key: str) -> tuple[str, bool] | None:
    if key in _UNSUPPORTED:
        return _UNSUPPORTED[key]
    best: str | None = None
    for prefix in _UNSUPPORTED:
        if prefix.endswith(".") and key.startswith(prefix) and len(prefix) > len(best or ""):
            best = prefix
    return _UNSUPPORTED[best] if best is not None else None


# --- values ---------------------------------------------------------------------------------

_MEMPARSE = re.compile(r"(0x[0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)")
_SUFFIX_SHIFT: Final = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: str) -> int:
    """Bytes, as the kernel reads a size LXC writes to a cgroup file or a tmpfs option.

    The kernel's memparse: a number (decimal, ``0x`` hex or ``0`` octal) and an optional
    binary suffix ``K``, ``M``, ``G``, ``T``, ``P`` or ``E`` of either case. ``512M`` is
    512 MiB; ``512MB`` and ``1.5G`` are not sizes (the kernel refuses them too).
    """
    m = _MEMPARSE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size: a whole number with K, M, G, T, P or E")
    digits, suffix = m.groups()
    if digits.startswith("0x"):
        number = int(digits, 16)
    elif digits.startswith("0") and len(digits) > 1:
        number = int(digits, 8)
    else:
        number = int(digits)
    return number << _SUFFIX_SHIFT[suffix.lower()]


def _int(text: str) -> int | None:
    """A whole number, or None (for a check that reports the text itself)."""
    return int(text) if text.isdigit() else None


def _kib(nbytes: int) -> int:
    """Bytes to KiB, rounded up (the codec's rule)."""
    return -(-nbytes // 1024)


def _problems(**fields: Any) -> list[str]:
    """The rules a piece of a domain breaks, checked on a domain holding only that piece."""
    from supervisor.validate import check_domain

    return check_domain(attrs.evolve(Domain(name="x", type="lxc"), **fields))


# --- building the domain -------------------------------------------------------------------


@attrs.define
class _Nic:
    """The keys of one NIC, by their 3+ sub-key (``type``, ``ipv4.address`` ...)."""

    label: str
    keys: dict[str, list[Entry]] = attrs.field(factory=dict)

    def all(self) -> list[Entry]:
        return sorted((e for es in self.keys.values() for e in es), key=lambda e: e.seq)


#: mount targets the supervisor mounts itself (docs/architecture.md, "The guest's /dev")
_OWN_MOUNTS: Final = frozenset({"/proc", "/sys", "/sys/fs/cgroup", "/dev", "/dev/pts", "/dev/shm"})
_OWN_MOUNT_TYPES: Final = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "tmpfs", "devtmpfs", "mqueue"}
)
#: mount options that change nothing the model says (LXC's own flags, defaults)
_HARMLESS_OPTIONS: Final = frozenset({"defaults", "rw", "create=dir", "bind", "rbind"})
#: ``lxc.mount.auto`` words whose meaning the supervisor's own /proc, /sys and cgroups keep
_AUTO_SAME: Final = frozenset(
    {"proc", "proc:mixed", "sys", "sys:ro", "sys:mixed", "cgroup", "cgroup:ro", "cgroup:mixed"}
    | {"cgroup-full:ro", "cgroup:force", "cgroup:ro:force", "cgroup:mixed:force"}
)
_ARCH_NAMES: Final[dict[str, frozenset[str]]] = {
    "x86_64": frozenset({"x86_64", "amd64"}),
    "aarch64": frozenset({"aarch64", "arm64"}),
    "riscv64": frozenset({"riscv64"}),
    "ppc64le": frozenset({"ppc64le", "ppc64el"}),
    "s390x": frozenset({"s390x"}),
}
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_MAC_TEMPLATE = re.compile(r"[0-9a-fA-Fx]{2}(:[0-9a-fA-Fx]{2}){5}")


class _Builder:
    """One pass over the entries, then the domain; collects what it cannot map."""

    def __init__(
        self, entries: list[Entry], host_arch: str, path: str | None, read: Reader | None
    ) -> None:
        self.host_arch = host_arch
        self.path = path
        self.read = read
        self.unmapped: list[Unmapped] = []
        self.notes: list[Note] = []
        self.fatal: list[str] = []
        self.slots: dict[str, Entry] = {}
        self.lists: dict[str, list[Entry]] = {name: [] for name in _LISTS.values()}
        self.nics: dict[tuple[int, int], _Nic] = {}
        self.legacy_count = 0
        self.current_legacy: _Nic | None = None
        #: each line's place among the lines read (see _read_into); fstab lines are added
        self.order: dict[str, float] = {}
        for entry in entries:
            self._take(entry)

    # -- the pass ------------------------------------------------------------------------

    def skip(self, entry: Entry, reason: str, *, later: bool = False) -> None:
        self.unmapped.append(Unmapped(entry.key, entry.value, entry.origin, reason, later))

    def note(self, entry: Entry | None, text: str, origin: str = "-") -> None:
        self.notes.append(Note(entry.origin if entry is not None else origin, text))

    def _take(self, entry: Entry) -> None:
        key = entry.key
        if key in ("lxc.network", "lxc.net"):
            if entry.value:
                self.skip(entry, "only an empty value (clear every NIC so far) has a meaning")
            else:
                self.nics.clear()
                self.current_legacy = None
            return
        if key.startswith("lxc.network."):
            self._legacy_nic(entry)
            return
        m = _NET_INDEXED.fullmatch(key)
        if m is not None:
            index = (0, int(m.group(1)))
            nic = self.nics.setdefault(index, _Nic(f"lxc.net.{int(m.group(1))}"))
            nic.keys.setdefault(m.group(2), []).append(entry)
            return
        canon = canonical(key)
        if canon in _SLOTS:
            slot = _SLOTS[canon]
            old = self.slots.get(slot)
            if old is not None and old.value != entry.value:
                self.note(
                    entry,
                    f"{entry.key} replaces {old.key} = {old.value} ({old.origin}): "
                    "the last one counts, as in LXC",
                )
            self.slots[slot] = entry
        elif canon in _LISTS:
            items = self.lists[_LISTS[canon]]
            if entry.value:
                items.append(entry)
            elif items:
                self.note(entry, f"an empty {entry.key} clears the {len(items)} before it")
                items.clear()
        elif not key.startswith("lxc."):
            self.skip(entry, "not an LXC key")
        else:
            known = _unsupported(canon)
            if known is None:
                self.skip(entry, "not an LXC key this converter knows")
            else:
                self.skip(entry, known[0], later=known[1])

    def _legacy_nic(self, entry: Entry) -> None:
        sub = entry.key.removeprefix("lxc.network.")
        sub = _NIC_RENAMED.get(sub, sub)
        if sub == "type":
            self.current_legacy = _Nic(f"lxc.network[{self.legacy_count}]")
            self.nics[(1, self.legacy_count)] = self.current_legacy
            self.legacy_count += 1
        if self.current_legacy is None:
            self.skip(entry, "comes before any lxc.network.type (LXC refuses it too)")
            return
        self.current_legacy.keys.setdefault(sub, []).append(entry)

    # -- the domain ------------------------------------------------------------------------

    def build(self, name: str | None, path: str | None) -> Domain:
        fields: dict[str, object] = {"type": "lxc"}
        fields.update(self._identity(name, path))
        filesystems = self._root(path)
        filesystems += self._mounts(filesystems)
        fields["filesystems"] = tuple(filesystems)
        self._mount_auto()
        self._devices()
        fields.update(self._consoles(path))
        fields.update(self._network())
        fields.update(self._cgroup())
        fields.update(self._init())
        idmap = self._idmap()
        if idmap:
            fields["idmap"] = idmap
        caps = self._caps()
        if caps is not None:
            fields["capabilities"] = caps
        self._arch()
        self._autostart(fields)
        self._shares(fields)
        if self.fatal:
            raise LxcConfigError(self.fatal)
        return Domain(**fields)  # type: ignore[arg-type]

    def _identity(self, name: str | None, path: str | None) -> dict[str, object]:
        uts = self.slots.get("uts")
        out: dict[str, object] = {}
        if name is None:
            if uts is None or not uts.value:
                self.fatal.append(
                    f"{path or '-'}: no lxc.uts.name (lxc.utsname) to name the domain by: "
                    "give a name"
                )
                return {"name": "x"}
            name = uts.value
            problems = _problems(name=name)
            if problems:
                self.fatal.append(f"{uts.origin}: {uts.key} = {uts.value}: {problems[0]}")
                return {"name": "x"}
        else:
            problems = _problems(name=name)
            if problems:
                self.fatal.append(f"the name {name!r}: {problems[0]}")
                return {"name": "x"}
        out["name"] = name
        if uts is not None and uts.value and uts.value != name:
            problems = _problems(hostname=uts.value)
            if problems:
                self.skip(uts, f"not a host name the supervisor accepts: {problems[0]}")
            else:
                out["hostname"] = uts.value
        return out

    def _root(self, path: str | None) -> list[Filesystem]:
        entry = self.slots.get("rootfs")
        if entry is None or not entry.value:
            self.fatal.append(
                f"{path or '-'}: no lxc.rootfs.path (lxc.rootfs): a domain needs a root "
                "directory (without one the guest would see a read-only copy of the host's "
                "tree, not what LXC gives it)"
            )
            return []
        value = entry.value
        kind, _, rest = value.partition(":")
        if value.startswith("/"):
            kind, rest = "dir", value
        where = f"{entry.origin}: {entry.key} = {value}"
        fstype: FilesystemType = "mount"
        driver: dict[str, str] = {}
        if kind in ("dir", "btrfs", "lvm") and rest.startswith("/"):
            source = posixpath.normpath(rest)
            if rest.startswith("/dev/"):  # a block device (LXC's lvm backend names one too)
                fstype = "block"
            elif kind == "lvm":
                self.fatal.append(f"{where}: an lvm root is a device: allowed lvm:/dev/...")
                return []
        elif kind in ("overlay", "overlayfs"):
            self.fatal.append(
                f"{where}: not mapped: the model has no overlay filesystem; give the merged "
                "directory as lxc.rootfs.path = dir:PATH"
            )
            return []
        elif kind == "loop" and rest.startswith("/"):
            # a raw image, as libvirt's converter maps it: <driver type='loop' format='raw'>
            source = posixpath.normpath(rest)
            fstype = "file"
            driver = {"driver_type": "loop", "driver_format": "raw"}
        elif kind == "nbd":
            self.fatal.append(
                f"{where}: not mapped: an nbd root (qcow2 and others) needs qemu-nbd, which the "
                "supervisor does not run; convert the image to raw (loop:PATH)"
            )
            return []
        elif kind in ("zfs", "rbd"):
            self.fatal.append(
                f"{where}: not mapped: a {kind} root has no element; mount it and give the "
                "directory, or its block device (lxc.rootfs.path = /dev/...)"
            )
            return []
        else:
            self.fatal.append(f"{where}: not an absolute directory or a known storage type")
            return []
        readonly = False
        options = self.slots.get("rootfs.options")
        if options is not None and options.value:
            words = options.value.split(",")
            readonly = "ro" in words
            others = [w for w in words if w not in ("ro", "rw", "defaults")]
            if others:
                self.skip(options, f"options {','.join(others)} have no element (ro has)")
        for slot, why in (
            ("rootfs.mount", "where LXC mounts the root on the host; the supervisor binds it"),
            ("rootfs.backend", "the storage type is read from lxc.rootfs.path"),
        ):
            other = self.slots.get(slot)
            if other is not None:
                self.note(other, f"{other.key} is not needed: {why}")
        return [
            Filesystem(
                source=source,
                target="/",
                type=fstype,
                readonly=readonly,
                **driver,  # type: ignore[arg-type]
            )
        ]

    def _mounts(self, done: list[Filesystem]) -> list[Filesystem]:
        lines: list[Entry] = []
        lines.extend(self._fstab())
        lines.extend(self.lists["mounts"])
        out: list[Filesystem] = []
        targets = {fs.target for fs in done}
        for entry in lines:
            fs = self._mount(entry)
            if fs is None:
                continue
            if fs.target in targets:
                self.skip(entry, f"{fs.target} is mounted by an earlier entry already")
                continue
            targets.add(fs.target)
            out.append(fs)
        return out

    def _fstab(self) -> list[Entry]:
        """The lines of the file ``lxc.mount.fstab`` names, as mount entries."""
        entry = self.slots.get("fstab")
        if entry is None or not entry.value:
            return []
        target = _resolve(entry.value, _origin_path(entry.origin))
        if self.read is None or target is None:
            why = (
                "reading other files was not asked for"
                if self.read is None
                else "a relative path in a config read from standard input"
            )
            self.skip(entry, f"not followed: {why}")
            return []
        try:
            files = self.read(target)
        except OSError as exc:
            self.skip(entry, f"not followed: cannot read {target}: {exc.strerror or exc}")
            return []
        if len(files) != 1:
            self.skip(entry, f"not followed: {target} is not a file")
            return []
        file_path, text = files[0]
        out: list[Entry] = []
        base = self.order.get(entry.origin, 0.0)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and not line.startswith("#"):
                origin = _origin(file_path, number)
                self.order.setdefault(origin, base + number / (1 + len(text)))
                out.append(Entry("lxc.mount.fstab", line, origin))
        return out

    def _mount(self, entry: Entry) -> Filesystem | None:
        fields = [_unescape(f) for f in entry.value.split()]
        if len(fields) < 3:
            self.skip(entry, "not an fstab line (SOURCE TARGET TYPE OPTIONS [DUMP PASS])")
            return None
        source, target, fstype = fields[:3]
        options = fields[3].split(",") if len(fields) > 3 else ["defaults"]
        target = posixpath.normpath("/" + target.lstrip("/"))
        if target == "/":
            self.skip(entry, "mounts over the root (lxc.rootfs.path names the root)")
            return None
        if target in _OWN_MOUNTS:
            if fstype in _OWN_MOUNT_TYPES:
                self.note(entry, f"the supervisor mounts its own {target} (docs/security.md)")
            else:
                self.skip(entry, f"the supervisor mounts its own {target} there")
            return None
        for top in ("/proc", "/sys", "/dev"):
            if target.startswith(top + "/"):
                why = (
                    "the guest's /dev holds the supervisor's fixed set of devices"
                    if top == "/dev"
                    else f"the supervisor mounts {top} after the filesystems, over it"
                )
                self.skip(entry, f"a mount below {top}: {why}")
                return None
        bind = "bind" in options or "rbind" in options
        readonly = "ro" in options
        extra = [o for o in options if o not in _HARMLESS_OPTIONS and o != "ro"]
        if fstype == "tmpfs" and not bind:
            sizes = [o for o in extra if o.startswith("size=")]
            # the supervisor makes every tmpfs with mode=755
            extra = [o for o in extra if o not in sizes and o not in ("mode=755", "mode=0755")]
            if not sizes:
                self.skip(entry, "a tmpfs without size=: <filesystem type='ram'> needs a usage")
                return None
            size_text = sizes[-1].removeprefix("size=")
            if size_text.endswith("%"):
                self.skip(entry, "a size relative to the host's memory: usage is absolute")
                return None
            try:
                usage = _kib(parse_size(size_text))
            except ValueError as exc:
                self.skip(entry, str(exc))
                return None
            fs = Filesystem(
                source="", target=target, type="ram", usage_kib=usage, readonly=readonly
            )
        elif bind:
            if not source.startswith("/"):
                self.skip(entry, "the source of a bind mount must be an absolute host path")
                return None
            if source == "/dev" or source.startswith("/dev/"):
                self.skip(
                    entry,
                    "binds a device node: needs <hostdev mode='capabilities'> (or <filesystem "
                    "type='block'>) and the device on the guest's allowlist",
                    later=True,
                )
                return None
            if "create=file" in extra:
                self.skip(entry, "binds a file: <filesystem type='mount'> mounts directories only")
                return None
            fs = Filesystem(source=posixpath.normpath(source), target=target, readonly=readonly)
        elif source.startswith("/dev/"):
            # the filesystem type is probed at start (as libvirt does), the entry's is not kept
            fs = Filesystem(source=posixpath.normpath(source), target=target, type="block",
                            readonly=readonly)  # fmt: skip
        else:
            self.skip(entry, f"a {fstype} mount: only bind mounts and tmpfs have an element")
            return None
        problems = _problems(filesystems=(fs,))
        if problems:
            self.skip(entry, problems[0])
            return None
        if "optional" in extra:
            extra.remove("optional")
            self.note(entry, "optional: a missing source makes the start fail here")
        if extra:
            self.skip(
                entry,
                f"mapped without the options {','.join(extra)}: <filesystem> has no element "
                "for them",
            )
        return fs

    def _mount_auto(self) -> None:
        for entry in self.lists["mount.auto"]:
            other = [w for w in entry.value.split() if w not in _AUTO_SAME]
            if other:
                self.skip(
                    entry,
                    f"{' '.join(other)}: the supervisor always mounts /proc (masked), /sys and "
                    "the cgroups read-only, and nothing else",
                )
            else:
                self.note(entry, "the supervisor mounts /proc, /sys and the cgroups itself")

    def _devices(self) -> None:
        autodev = self.slots.get("autodev")
        if autodev is not None:
            if autodev.value == "1":
                self.note(autodev, "the supervisor always gives the guest a /dev of its own")
            else:
                self.skip(
                    autodev,
                    "the supervisor always gives the guest a /dev of its own (a tmpfs with a "
                    "fixed set of nodes), never the root's /dev",
                )
        pty = self.slots.get("pty")
        if pty is not None:
            self.skip(
                pty,
                "the guest always gets a devpts instance of its own, with no limit of its own",
            )
        apparmor = self.slots.get("apparmor")
        if apparmor is not None:
            if apparmor.value == "unconfined":
                self.note(apparmor, "unconfined: the supervisor loads no LSM profile")
            else:
                self.skip(apparmor, _NO_LSM)
        pivot = self.slots.get("pivotdir")
        if pivot is not None:
            self.note(pivot, "not needed: the supervisor pivots without a directory of LXC's")

    def _consoles(self, path: str | None) -> dict[str, object]:
        """``lxc.tty.max`` (``lxc.tty``) N: N ``<console type='pty'>``s, ports 0..N-1, as
        libvirt's converter maps it (its LXC driver puts the first on /dev/console and
        /dev/tty1, the next on /dev/tty2 ...). The supervisor serves the first, on
        /dev/console, and makes no /dev/ttyN, so the key is also listed for what it loses.
        ``lxc.console.path`` (LXC's own console, which libvirt's converter does not read):
        ``none`` is a guest without a console; a host device has no element."""
        consoles: list[Console] = []
        tty = self.slots.get("tty")
        if tty is not None:
            value = tty.value.strip()
            if value in ("", "0"):
                self.note(tty, "no ttys: the guest gets none")
            elif not value.isdigit() or int(value) > MAX_TTYS:
                self.skip(tty, f"not a number of ttys (0..{MAX_TTYS})")
            else:
                count = int(value)
                consoles = [Console(target_type="lxc", target_port=i) for i in range(count)]
                ttys = "/dev/tty1" if count == 1 else f"/dev/tty1../dev/tty{count}"
                self.skip(
                    tty,
                    f"mapped to {count} <console>{'s' if count > 1 else ''}, as libvirt's "
                    "converter maps it; the supervisor serves the first, on /dev/console, and "
                    f"makes no {ttys} (a getty there finds no device)",
                )
        console = self.slots.get("console")
        if console is not None and console.value == "none":
            if consoles:
                self.skip(
                    console,
                    "the first of the lxc.tty.max consoles is the guest's /dev/console "
                    "(libvirt's mapping), so the guest has one",
                )
            else:
                self.note(console, "no console: the guest gets none")
        elif console is not None and console.value:
            self.skip(
                console,
                "a console on a host device: a <console> is a pty the supervisor makes in the "
                "guest's own devpts",
            )
        elif not consoles:
            self.note(
                None,
                "LXC gives a container a console unless lxc.console.path = none; libvirt's "
                "converter maps only lxc.tty.max, so the guest has none: add <console "
                "type='pty'/> for vsv console",
                origin=path or "-",
            )
        return {"consoles": tuple(consoles)} if consoles else {}

    # -- network -----------------------------------------------------------------------------

    def _network(self) -> dict[str, object]:
        interfaces: list[Interface] = []
        share_host = False
        real = 0
        for index in sorted(self.nics):
            nic = self.nics[index]
            types = nic.keys.get("type")
            if not types:
                for e in nic.all():
                    self.skip(e, f"{nic.label} has no type")
                continue
            kind = types[-1]
            self._repeats(nic)
            if kind.value == "none":
                share_host = True
                self._rest_unused(nic, "a NIC of type none")
                continue
            if kind.value in ("", "empty"):
                self.note(kind, "empty: the guest has a network namespace with only lo")
                self._rest_unused(nic, "a NIC of type empty")
                continue
            real += 1
            if kind.value != "veth":
                later = kind.value in ("macvlan", "phys", "vlan")
                element = {
                    "macvlan": "<interface type='direct'>",
                    "phys": "<hostdev mode='capabilities' type='net'>",
                    "vlan": "<hostdev mode='capabilities' type='net'> on the VLAN device",
                }.get(kind.value)
                reason = (
                    f"the model has no {element} yet"
                    if element
                    else f"no element for a NIC of type {kind.value}"
                )
                self.skip(kind, reason, later=later)
                self._rest_unused(nic, f"a {kind.value} NIC, which is not mapped")
                continue
            iface = self._veth(nic)
            if iface is not None:
                interfaces.append(iface)
        if share_host and (interfaces or real):
            entry = next(
                e for n in self.nics.values() for e in n.keys.get("type", []) if e.value == "none"
            )
            self.note(entry, "none is ignored beside other NICs (as in LXC)")
            share_host = False
        out: dict[str, object] = {"interfaces": tuple(interfaces)}
        if not interfaces and not share_host:
            out["privnet"] = True
        return out

    def _repeats(self, nic: _Nic) -> None:
        for sub, entries in nic.keys.items():
            if sub in ("ipv4.address", "ipv6.address") or len(entries) < 2:
                continue
            last = entries[-1]
            if any(e.value != last.value for e in entries[:-1]):
                self.note(last, f"{nic.label}.{sub} is given {len(entries)} times: the last counts")

    def _rest_unused(self, nic: _Nic, what: str) -> None:
        for sub, entries in nic.keys.items():
            if sub == "type":
                continue
            for e in entries:
                self.skip(e, f"belongs to {what}")

    def _veth(self, nic: _Nic) -> Interface | None:
        def last(sub: str) -> Entry | None:
            entries = nic.keys.get(sub)
            return entries[-1] if entries else None

        fields: dict[str, object] = {}
        link = last("link")
        ethernet = link is None or not link.value
        if ethernet:
            fields["type"] = "ethernet"
        else:
            assert link is not None
            fields["type"] = "bridge"
            fields["source"] = link.value
            if _problems(interfaces=(Interface(type="bridge", source=link.value),)):
                self.skip(link, "not a bridge name (an interface name of 1..15 bytes)")
                for e in nic.all():
                    if e is not link:
                        self.skip(e, f"belongs to {nic.label}, whose link is not mapped")
                return None
        flags = last("flags")
        fields["link_up"] = flags is not None and flags.value == "up"
        if flags is not None and flags.value not in ("up", ""):
            self.skip(flags, "only the flag up has a meaning")
        for sub, field, rule in (
            ("name", "guest_dev", "an interface name of 1..15 bytes"),
            ("veth.pair", "target_dev", "an interface name of 1..15 bytes"),
        ):
            named = last(sub)
            if named is None or not named.value:
                continue
            change: dict[str, Any] = {field: named.value}
            if _problems(interfaces=(attrs.evolve(Interface(type="ethernet"), **change),)):
                self.skip(named, f"not {rule}")
            elif field == "target_dev" and named.value.startswith("tap"):
                self.skip(
                    named, "a host-side name starting 'tap' makes the supervisor create a tap"
                )
            else:
                fields[field] = named.value
        mtu = last("mtu")
        if mtu is not None and mtu.value:
            if mtu.value.isdigit() and not _problems(
                interfaces=(Interface(type="ethernet", mtu=int(mtu.value)),)
            ):
                fields["mtu"] = int(mtu.value)
            else:
                self.skip(mtu, "not an MTU of 68..65535")
        hwaddr = last("hwaddr")
        if hwaddr is not None and hwaddr.value:
            mac = hwaddr.value.lower()
            if _MAC.fullmatch(mac) and not _problems(
                interfaces=(Interface(type="ethernet", mac=mac),)
            ):
                fields["mac"] = mac
            elif _MAC_TEMPLATE.fullmatch(mac):
                self.note(hwaddr, "a template LXC fills at random: the supervisor picks the MAC")
            else:
                self.skip(hwaddr, "not a unicast MAC address")
        ips: list[IpAddress] = []
        routes: list[Route] = []
        families: tuple[Literal["ipv4", "ipv6"], ...] = ("ipv4", "ipv6")
        for family in families:
            for e in nic.keys.get(f"{family}.address", []):
                if ethernet:
                    self.skip(
                        e,
                        "a veth without a link is <interface type='ethernet'>, whose <ip> is the "
                        "host end's (libvirt's meaning): the guest's address has no element",
                    )
                    continue
                ip = self._address(e, family)
                if ip is not None:
                    ips.append(ip)
            gw = last(f"{family}.gateway")
            if gw is None or not gw.value:
                continue
            if ethernet:
                self.skip(gw, "a veth without a link: its <route> would be the host's")
                continue
            route = self._gateway(gw, family)
            if route is not None:
                routes.append(route)
        fields["ips"] = tuple(ips)
        fields["routes"] = tuple(routes)
        known = {"type", "link", "flags", "name", "veth.pair", "mtu", "hwaddr"}
        known |= {"ipv4.address", "ipv6.address", "ipv4.gateway", "ipv6.gateway"}
        for sub, entries in nic.keys.items():
            if sub in known:
                continue
            for e in entries:
                if sub.startswith("script."):
                    self.skip(e, "the supervisor runs no NIC scripts")
                elif sub == "veth.mode" and e.value == "bridge":
                    self.note(e, "bridge is the default veth mode")
                else:
                    self.skip(e, "no element for this NIC setting")
        iface = Interface(**fields)  # type: ignore[arg-type]
        problems = _problems(interfaces=(iface,))
        if problems:  # pragma: no cover - each part was checked above
            self.skip(nic.all()[0], f"{nic.label}: {problems[0]}")
            return None
        return iface

    def _address(self, entry: Entry, family: str) -> IpAddress | None:
        words = entry.value.split()
        text = words[0] if words else ""
        address, slash, prefix_text = text.partition("/")
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            self.skip(entry, f"not an {family} address")
            return None
        if (addr.version == 4) != (family == "ipv4"):
            self.skip(entry, f"not an {family} address")
            return None
        if slash:
            if not prefix_text.isdigit() or int(prefix_text) > addr.max_prefixlen:
                self.skip(entry, f"not a prefix length 0..{addr.max_prefixlen}")
                return None
            prefix = int(prefix_text)
        else:
            prefix = _default_prefix(addr)
            self.note(entry, f"no prefix length: LXC's default for {addr} is /{prefix}")
        if len(words) > 2 or (len(words) == 2 and family == "ipv6"):
            self.skip(entry, f"{' '.join(words[1:])}: no element for it")
        elif len(words) == 2:
            net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
            if words[1] != str(net.broadcast_address):
                self.skip(
                    entry,
                    f"broadcast {words[1]}: <ip> has no broadcast (the guest gets "
                    f"{net.broadcast_address}, the default for /{prefix})",
                )
        return IpAddress(address=str(addr), prefix=prefix)

    def _gateway(self, entry: Entry, family: Literal["ipv4", "ipv6"]) -> Route | None:
        if entry.value in ("auto", "dev"):
            why = (
                "auto takes the bridge's address, which is not known here: give the address"
                if entry.value == "auto"
                else "a route through the device without a next hop has no element"
            )
            self.skip(entry, why)
            return None
        try:
            gw = ipaddress.ip_address(entry.value)
        except ValueError:
            self.skip(entry, f"not an {family} address")
            return None
        if (gw.version == 4) != (family == "ipv4"):
            self.skip(entry, f"not an {family} address")
            return None
        zero = "0.0.0.0" if family == "ipv4" else "::"
        return Route(address=zero, prefix=0, gateway=str(gw), family=family)

    # -- cgroups ---------------------------------------------------------------------------

    def _size(self, slot: str) -> tuple[Entry, int | None] | None:
        """(entry, KiB) of a memory setting; KiB None for unlimited or unusable (reported)."""
        entry = self.slots.get(slot)
        if entry is None:
            return None
        if entry.value in ("-1", "max", ""):
            self.note(entry, "unlimited: no limit is set")
            return entry, None
        try:
            nbytes = parse_size(entry.value)
        except ValueError as exc:
            self.skip(entry, str(exc))
            return entry, None
        if nbytes <= 0:
            self.skip(entry, "a limit of 0 would let the guest start nothing")
            return entry, None
        return entry, _kib(nbytes)

    def _cgroup(self) -> dict[str, object]:
        out: dict[str, object] = {}
        hard = self._size("mem.hard")
        soft = self._size("mem.soft")
        swap = self._size("mem.swap")
        hard_kib = hard[1] if hard else None
        soft_kib = soft[1] if soft else None
        swap_kib: int | None = None
        if swap is not None and swap[1] is not None:
            entry, kib = swap[0], swap[1]
            if entry.key == "lxc.cgroup2.memory.swap.max":
                # v2's swap.max is swap alone; libvirt's swap_hard_limit is memory + swap
                if hard_kib is None:
                    self.skip(
                        entry,
                        "memory.swap.max is swap alone and swap_hard_limit memory + swap: "
                        "it needs memory.max",
                    )
                else:
                    swap_kib = hard_kib + kib
            else:
                swap_kib = kib
        if hard_kib is not None:
            out["memory_kib"] = hard_kib
        if hard_kib is not None or soft_kib is not None or swap_kib is not None:
            memtune = MemTune(
                hard_limit_kib=hard_kib, soft_limit_kib=soft_kib, swap_hard_limit_kib=swap_kib
            )
            if swap_kib is not None and hard_kib is not None and swap_kib < hard_kib:
                assert swap is not None
                self.skip(swap[0], "memory + swap below the memory limit")
                memtune = attrs.evolve(memtune, swap_hard_limit_kib=None)
            out["memtune"] = memtune
        cputune = self._cputune()
        if cputune is not None:
            out["cputune"] = cputune
        out.update(self._cpuset())
        blkiotune = self._blkiotune()
        if blkiotune is not None:
            out["blkiotune"] = blkiotune
        pids = self.slots.get("pids")
        if pids is not None:
            if pids.value in ("max", "-1", ""):
                self.note(pids, "unlimited: no limit is set")
            elif pids.value.isdigit() and int(pids.value) >= 1:
                out["pids_limit"] = int(pids.value)
            else:
                self.skip(pids, "not a number of processes (1 or more, or max)")
        return out

    def _cputune(self) -> CpuTune | None:
        shares: int | None = None
        period: int | None = None
        quota: int | None = None
        entry = self.slots.get("cpu.shares")
        if entry is not None:
            if not entry.value.isdigit():
                self.skip(entry, "not a whole number")
            elif entry.key == "lxc.cgroup2.cpu.weight":
                from supervisor.sched.mapping import shares_from_weight

                weight = int(entry.value)
                if 1 <= weight <= 10000:
                    shares = shares_from_weight(weight)
                else:
                    self.skip(entry, "not a weight of 1..10000")
            else:
                shares = int(entry.value)
        q = self.slots.get("cpu.quota")
        if q is not None:
            try:
                quota = max(int(q.value), -1)  # any negative quota is unlimited: -1
            except ValueError:
                self.skip(q, "not a whole number of microseconds (-1: unlimited)")
        p = self.slots.get("cpu.period")
        if p is not None:
            if p.value.isdigit():
                period = int(p.value)
            else:
                self.skip(p, "not a whole number of microseconds")
        both = self.slots.get("cpu.max")
        if both is not None:
            words = both.value.split()
            ok = 1 <= len(words) <= 2 and (words[0] == "max" or words[0].isdigit())
            ok = ok and (len(words) == 1 or words[1].isdigit())
            if not ok:
                self.skip(both, "not 'QUOTA [PERIOD]' (QUOTA a number or max)")
            else:
                if q is not None or p is not None:
                    self.note(both, "cpu.max and the v1 cpu keys are both given: cpu.max counts")
                quota = -1 if words[0] == "max" else int(words[0])
                period = int(words[1]) if len(words) == 2 else None
        if shares is None and period is None and quota is None:
            return None
        tune = CpuTune(shares=shares, period=period, quota=quota)
        for attr, e in (("shares", entry), ("quota", q or both), ("period", p or both)):
            if getattr(tune, attr) is None or e is None:
                continue
            problems = _problems(cputune=CpuTune(**{attr: getattr(tune, attr)}))
            if problems:
                self.skip(e, problems[0])
                tune = attrs.evolve(tune, **{attr: None})
        if tune == CpuTune():
            return None
        return tune

    def _cpuset(self) -> dict[str, object]:
        """``cpuset.cpus``: ``<vcpu cpuset=>`` (libvirt's mapping), with the number of those
        CPUs as ``<vcpu>`` (libvirt writes 1 for any domain; the supervisor's ``<vcpu>`` is
        the CPUs a token bucket covers, which these are)."""
        entry = self.slots.get("cpuset")
        if entry is None:
            return {}
        value = entry.value.strip()
        if not value:
            self.note(entry, "empty: no cpuset is set")
            return {}
        from supervisor.validate import parse_cpuset

        try:
            count = len(parse_cpuset(value))
        except ValueError:
            count = 1
        problems = _problems(vcpu=count, cpuset=value)
        if problems:
            self.skip(entry, problems[0])
            return {}
        return {"vcpu": count, "cpuset": value}

    def _blkiotune(self) -> BlkioTune | None:
        """The blkio (v1) and io (v2) keys, in the order given, as ``<blkiotune>``: a weight,
        and per device (``/dev/block/MAJ:MIN``, libvirt's path for the numbers a cgroup file
        names) a weight and throttles. A throttle of 0 (v1) or ``max`` (v2) is libvirt's 0,
        no limit."""
        entries = sorted((e for key in _BLKIO for e in self.lists[key]), key=lambda e: e.seq)
        weight: Entry | None = None
        weight_value = 0
        #: path -> field -> (entry, value), devices in the order first named
        devices: dict[str, dict[str, tuple[Entry, int]]] = {}

        def set_device(entry: Entry, node: str, field: str, value: int) -> None:
            path = f"/dev/block/{node}"
            change: dict[str, Any] = {field: value}
            problems = _problems(blkiotune=BlkioTune(devices=(BlkioDevice(path, **change),)))
            if problems:
                self.skip(entry, problems[0])
                return
            fields = devices.setdefault(path, {})
            old = fields.get(field)
            if old is not None and old[1] != value:
                self.note(entry, f"replaces {old[0].key} = {old[0].value} ({old[0].origin})")
            fields[field] = (entry, value)

        for entry in entries:
            kind = _BLKIO[entry.key]
            v2 = entry.key.startswith("lxc.cgroup2.")
            words = entry.value.split()
            if v2 and kind == "weight" and len(words) == 2 and words[0] == "default":
                words = words[1:]
            node = _DEVICE_NUMBERS.fullmatch(words[0]) if words else None
            if kind == "io.max":
                if node is None or len(words) < 2:
                    self.skip(entry, "not 'MAJ:MIN rbps=N wbps=N riops=N wiops=N'")
                    continue
                for word in words[1:]:
                    name, eq, text = word.partition("=")
                    if name not in _IO_MAX or not eq or not (text == "max" or text.isdigit()):
                        self.skip(entry, f"{word}: not rbps, wbps, riops or wiops = N or max")
                        continue
                    set_device(entry, words[0], _IO_MAX[name], 0 if text == "max" else int(text))
            elif kind == "weight" and len(words) == 1:
                problems = _problems(blkiotune=BlkioTune(weight=_int(words[0])))
                if not words[0].isdigit() or problems:
                    self.skip(entry, problems[0] if problems else "not a weight")
                    continue
                if weight is not None and weight_value != int(words[0]):
                    self.note(entry, f"replaces {weight.key} = {weight.value} ({weight.origin})")
                weight, weight_value = entry, int(words[0])
            elif (kind != "weight" or v2) and node is not None and len(words) == 2:
                if not words[1].isdigit():
                    self.skip(entry, f"{words[1]}: not a whole number")
                    continue
                field = "weight" if kind in ("weight", "device weight") else kind
                set_device(entry, words[0], field, int(words[1]))
            else:
                form = "WEIGHT" if kind == "weight" and not v2 else "MAJ:MIN VALUE"
                if kind == "weight" and v2:
                    form = "WEIGHT, 'default WEIGHT' or 'MAJ:MIN WEIGHT'"
                self.skip(entry, f"not {form}")
        tune = BlkioTune(
            weight=weight_value if weight is not None else None,
            devices=tuple(
                BlkioDevice(path, **{f: v for f, (_, v) in fields.items()})
                for path, fields in devices.items()
            ),
        )
        return None if tune == BlkioTune() else tune

    # -- init, ids, capabilities -------------------------------------------------------------

    def _init(self) -> dict[str, object]:
        os_fields: dict[str, object] = {}
        cmd = self.slots.get("init.cmd")
        if cmd is not None and cmd.value:
            try:
                argv = shlex.split(cmd.value)
            except ValueError as exc:
                self.skip(cmd, f"cannot split into words: {exc}")
                argv = []
            if argv and argv[0].startswith("/"):
                os_fields["init"] = argv[0]
                os_fields["initargs"] = tuple(argv[1:])
            elif argv:
                self.skip(cmd, "the init must be an absolute path in the guest")
        cwd = self.slots.get("init.cwd")
        if cwd is not None and cwd.value:
            if cwd.value.startswith("/") and cwd.value != "/":
                os_fields["initdir"] = posixpath.normpath(cwd.value)
            elif cwd.value != "/":
                self.skip(cwd, "not an absolute path")
        uid = self.slots.get("init.uid")
        gid = self.slots.get("init.gid")
        for e in (uid, gid):
            if e is not None and not e.value.isdigit():
                self.skip(e, "not a number")
        user = uid.value if uid is not None and uid.value.isdigit() else None
        group = gid.value if gid is not None and gid.value.isdigit() else None
        if (user, group) not in ((None, None), ("0", "0"), ("0", None), (None, "0")):
            # <inituser> and <initgroup> come together; LXC's default for the other is 0
            os_fields["inituser"] = user or "0"
            os_fields["initgroup"] = group or "0"
        env: list[tuple[str, str]] = []
        for e in self.lists["env"]:
            name, eq, value = e.value.partition("=")
            if not eq:
                self.skip(e, "takes the value from the host's environment, unknown here")
                continue
            if _problems(os=OsSpec(initenv=((name, value),))):
                self.skip(e, "not an environment variable name [a-zA-Z_][a-zA-Z0-9_]*")
                continue
            env = [(n, v) for n, v in env if n != name]
            env.append((name, value))
        if env:
            os_fields["initenv"] = tuple(env)
        if not os_fields:
            return {}
        spec = OsSpec(**os_fields)  # type: ignore[arg-type]
        return {"os": spec}

    def _idmap(self) -> tuple[IdMapEntry, ...]:
        entries: list[tuple[Entry, IdMapEntry]] = []
        for e in self.lists["idmap"]:
            words = e.value.split()
            if (
                len(words) != 4
                or words[0] not in ("u", "g")
                or not all(w.isdigit() for w in words[1:])
            ):
                self.skip(e, "not 'u|g CONTAINER-ID HOST-ID COUNT'")
                continue
            start, target, count = (int(w) for w in words[1:])
            item = IdMapEntry("uid" if words[0] == "u" else "gid", start, target, count)
            problems = _problems(
                idmap=(item, IdMapEntry("gid" if item.kind == "uid" else "uid", 0, 0, 1))
            )
            if problems:
                self.skip(e, problems[0])
                continue
            entries.append((e, item))
        result = tuple(item for _, item in entries)
        if result and _problems(idmap=result):
            for e, _ in entries:
                self.skip(
                    e,
                    "the maps do not cover uid 0 and gid 0 in the guest: a guest with an "
                    "<idmap> starts its init as root inside it",
                )
            return ()
        return result

    def _caps(self) -> Capabilities | None:
        drop = self.lists["cap.drop"]
        keep = self.lists["cap.keep"]
        if drop and keep:
            self.fatal.append(
                f"{keep[0].origin}: lxc.cap.keep and lxc.cap.drop ({drop[0].origin}) are both "
                "given: LXC refuses such a container too"
            )
            return None
        if not drop and not keep:
            return None
        from supervisor.guest.confine import CAPABILITIES
        from supervisor.validate import CAPABILITY_NAMES

        numbers = {str(n): name for name, n in CAPABILITIES.items()}
        names: list[str] = []
        for e in drop or keep:
            for word in e.value.split():
                if e in keep and word == "none":
                    continue
                name = word.lower().removeprefix("cap_")
                name = numbers.get(name, name)
                if name not in CAPABILITY_NAMES:
                    reason = (
                        "a capability libvirt's <capabilities> has no element for"
                        if name in CAPABILITIES
                        else "not a capability name"
                    )
                    self.unmapped.append(Unmapped(e.key, word, e.origin, reason))
                elif name not in names:
                    names.append(name)
        policy = CapsPolicy.ALLOW if drop else CapsPolicy.DENY
        return Capabilities(policy=policy, caps=tuple((n, not drop) for n in names))

    def _arch(self) -> None:
        entry = self.slots.get("arch")
        if entry is None:
            return
        names = _ARCH_NAMES.get(self.host_arch, frozenset({self.host_arch}))
        if entry.value in names:
            self.note(entry, "the host's architecture, which every guest has")
        else:
            self.skip(entry, f"guests run as the host's architecture ({self.host_arch})")

    def _shares(self, fields: dict[str, object]) -> None:
        """``lxc.namespace.share.net|ipc|uts = CONTAINER``: ``<lxc:namespace>`` by name, as
        libvirt's converter maps it (a pid or a namespace file is refused: whatever process
        has that pid when the guest starts)."""
        shares: list[SharedNamespace] = []
        for kind in ("net", "ipc", "uts"):
            entry = self.slots.get(f"share.{kind}")
            if entry is None or not entry.value:
                continue
            value = entry.value.strip()
            if value.isdigit() or value.startswith("/"):
                self.skip(entry, "a process's or a file's namespace: only a guest's by name")
                continue
            if kind == "net" and fields.get("interfaces"):
                self.skip(entry, "the lxc.net.* keys give the container a network of its own")
                continue
            if kind == "net":
                fields["privnet"] = False
            shares.append(SharedNamespace(kind=kind, type="name", value=value))
        if shares:
            fields["shared_namespaces"] = tuple(shares)

    def _autostart(self, fields: dict[str, object]) -> None:
        entry = self.slots.get("autostart")
        if entry is None:
            return
        if entry.value in ("1", "0"):
            if entry.value == "1":
                fields["autostart"] = True
        else:
            self.skip(entry, "not 0 or 1")


def _default_prefix(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """LXC's prefix for an address given without one: classful for IPv4, /64 for IPv6."""
    if addr.version == 6:
        return 64
    first = int(addr) >> 24
    if first < 128:
        return 8
    if first < 192:
        return 16
    if first < 224:
        return 24
    return 0


def _unescape(field: str) -> str:
    """fstab's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _quote_word(word: str) -> str:
    """A word of ``lxc.init.cmd`` as LXC splits the value: quoted only when it must be."""
    if word and not re.search(r"[\s'\"\\]", word):
        return word
    if '"' not in word and "\\" not in word:
        return f'"{word}"'
    return shlex.quote(word)


def _escape(field: str) -> str:
    return re.sub(r"[\s\\]", lambda m: f"\\{ord(m.group(0)):03o}", field)


def from_native(
    text: str,
    *,
    path: str | None = None,
    name: str | None = None,
    read: Reader | None = None,
    host_arch: str | None = None,
) -> Conversion:
    """The domain an LXC config describes, with the keys it could not map.

    ``path`` names the config in messages and anchors relative ``lxc.include`` and
    ``lxc.mount.fstab`` paths; ``name`` is the domain's name (``vsv import-lxc``: the
    container's), else ``lxc.uts.name``; ``read`` reads the files the config names (None:
    they are listed as not followed); ``host_arch`` is what ``lxc.arch`` is compared with
    (default: this machine's). Raises :class:`LxcConfigError` when no domain results.
    """
    entries: list[Entry] = []
    unmapped: list[Unmapped] = []
    order: dict[str, float] = {}
    _read_into(text, path, read, (), entries, unmapped, order)
    builder = _Builder(entries, host_arch or platform.machine(), path, read)
    builder.order = order
    builder.unmapped[:0] = unmapped
    domain = builder.build(name, path)
    problems = _problems_of(domain)
    if problems:  # pragma: no cover - every piece was checked on its own
        raise LxcConfigError([f"{path or '-'}: {p}" for p in problems])
    caps_keys = builder.lists["cap.drop"] or builder.lists["cap.keep"]
    if domain.capabilities is not None and caps_keys:
        from supervisor.guest.confine import widenings

        for where, message in widenings(domain):
            builder.note(caps_keys[0], f"widens {where}: {message}")
    elif domain.capabilities is None:
        builder.note(
            None,
            "no lxc.cap.drop or lxc.cap.keep: LXC would keep every capability, the guest gets "
            "the supervisor's default set (docs/security.md); <capabilities policy='allow'/> "
            "gives LXC's",
            origin=path or "-",
        )

    def place(item: Unmapped | Note) -> float:
        """Messages come in the order of the lines they are about (a config-wide one first)."""
        return order.get(item.origin, -1.0)

    return Conversion(
        domain,
        tuple(sorted(builder.unmapped, key=place)),
        tuple(sorted(builder.notes, key=place)),
    )


def _problems_of(domain: Domain) -> list[str]:
    from supervisor.validate import check_domain

    return check_domain(domain)


def _origin_path(origin: str) -> str | None:
    where = origin.rpartition(":")[0]
    return None if where == "-" else where


# --- domain to config -----------------------------------------------------------------------


@attrs.frozen
class NativeConfig:
    """An LXC config (3+ spellings) and what of the domain it cannot express."""

    text: str
    unexpressed: tuple[str, ...] = ()


#: a block device node -> its ``MAJ:MIN`` (None: not a block device), for ``to_native``
DeviceNumbers = Callable[[str], str | None]


def numbers_in_path(path: str) -> str | None:
    """``MAJ:MIN`` of a ``/dev/block/MAJ:MIN`` path (what :func:`from_native` makes of the
    numbers a cgroup key names); None for any other path, which only the host can resolve."""
    m = _DEVICE_NUMBERS.fullmatch(path.removeprefix("/dev/block/"))
    return f"{int(m.group(1))}:{int(m.group(2))}" if m and path.startswith("/dev/block/") else None


def to_native(
    domain: Domain,
    *,
    cgroup_version: Literal[1, 2] = 2,
    device_numbers: DeviceNumbers = numbers_in_path,
) -> NativeConfig:
    """The LXC config for a domain, in LXC 3+ key names; cgroup keys for v2 or v1 hosts.

    What LXC cannot say (a vserver token bucket, a NIC on a named network, lifecycle actions
    ...) is listed in ``unexpressed``, one sentence each. ``device_numbers`` finds the
    numbers of a ``<blkiotune><device>`` (LXC's blkio and io keys name a device by them); the
    default reads only ``/dev/block/MAJ:MIN`` paths, so the function stays pure.
    """
    from supervisor.guest.confine import ALL_CAPS, capability_set

    lines: list[str] = [f"# LXC config written by vsv domxml-to-native from domain {domain.name}"]
    gaps: list[str] = []

    def put(key: str, value: object) -> None:
        lines.append(f"{key} = {value}")

    put("lxc.uts.name", domain.hostname or domain.name)
    root = next((fs for fs in domain.filesystems if fs.target == "/"), None)
    if root is None or root.type == "ram":
        gaps.append(
            "no root directory: LXC would give the guest the host's root, the supervisor a "
            "read-only copy of it (no lxc.rootfs.path written)"
        )
    else:
        storage = {"mount": "dir:", "file": "loop:", "block": ""}[root.type]
        put("lxc.rootfs.path", f"{storage}{root.source}")
        if root.readonly:
            put("lxc.rootfs.options", "ro")
    put("lxc.autodev", 1)
    put("lxc.mount.auto", "proc:mixed sys:ro cgroup:ro")
    for fs in domain.filesystems:
        if fs is root:
            continue
        target = _escape(fs.target.lstrip("/"))
        if fs.type == "ram":
            options = f"size={fs.usage_kib}k,mode=755,create=dir" + (",ro" if fs.readonly else "")
            put("lxc.mount.entry", f"tmpfs {target} tmpfs {options} 0 0")
        elif fs.type in ("file", "block"):
            gaps.append(
                f"<filesystem type='{fs.type}'> on {fs.target}: an LXC mount entry needs the "
                "filesystem type, which the supervisor probes at start"
            )
        else:
            options = "bind,create=dir" + (",ro" if fs.readonly else "")
            put("lxc.mount.entry", f"{_escape(fs.source)} {target} none {options} 0 0")
    for entry in domain.idmap:
        put("lxc.idmap", f"{entry.kind[0]} {entry.start} {entry.target} {entry.count}")
    spec = domain.os
    if spec.init != "/sbin/init" or spec.initargs:
        put("lxc.init.cmd", " ".join(_quote_word(w) for w in (spec.init, *spec.initargs)))
    if spec.initdir is not None:
        put("lxc.init.cwd", spec.initdir)
    for attr, key in (("inituser", "lxc.init.uid"), ("initgroup", "lxc.init.gid")):
        value = getattr(spec, attr)
        if value is None:
            continue
        if value.isdigit():
            put(key, value)
        else:
            gaps.append(f"<{attr}>{value}: LXC takes a number only")
    for name, value in spec.initenv:
        put("lxc.environment", f"{name}={value}")
    caps = capability_set(domain)
    if caps != ALL_CAPS:
        spec_caps = domain.capabilities
        given = [n for n, _on in spec_caps.caps] if spec_caps is not None else []

        def in_given_order(name: str) -> tuple[int, str]:
            return (given.index(name) if name in given else len(given), name)

        if spec_caps is not None and spec_caps.policy == CapsPolicy.ALLOW:
            put("lxc.cap.drop", " ".join(sorted(ALL_CAPS - caps, key=in_given_order)))
        else:
            put("lxc.cap.keep", " ".join(sorted(caps, key=in_given_order)) or "none")
    _cgroup_lines(domain, cgroup_version, put, gaps)
    _blkio_lines(domain, cgroup_version, device_numbers, put, gaps)
    _console_lines(domain, put, gaps)
    _nic_lines(domain, put, gaps)
    if domain.autostart:
        put("lxc.start.auto", 1)
    for share in domain.shared_namespaces:
        if share.type == "name":
            put(f"lxc.namespace.share.{share.kind}", share.value)
        else:
            gaps.append(f"<lxc:share{share.kind} type='{share.type}'>: LXC shares a container's")
    _gaps_of_rest(domain, gaps)
    return NativeConfig("\n".join(lines) + "\n", tuple(gaps))


def _cgroup_lines(
    domain: Domain, version: int, put: Callable[[str, object], None], gaps: list[str]
) -> None:
    mt = domain.memtune or MemTune()
    v2 = version == 2
    pre = "lxc.cgroup2." if v2 else "lxc.cgroup."
    # the guest's limit, <hard_limit> else <memory> (libvirt's LXC driver's order); a config
    # converted back gives both again, as libvirt's converter maps the key
    hard = domain.memory_limit_kib
    if hard is not None:
        put(pre + ("memory.max" if v2 else "memory.limit_in_bytes"), hard * 1024)
    if mt.soft_limit_kib is not None:
        put(pre + ("memory.high" if v2 else "memory.soft_limit_in_bytes"), mt.soft_limit_kib * 1024)
    if mt.swap_hard_limit_kib is not None:
        if not v2:
            put(pre + "memory.memsw.limit_in_bytes", mt.swap_hard_limit_kib * 1024)
        elif hard is None:
            gaps.append(
                "<swap_hard_limit> without <hard_limit>: memory.swap.max is swap alone and "
                "cannot be derived"
            )
        else:
            put(pre + "memory.swap.max", max(mt.swap_hard_limit_kib - hard, 0) * 1024)
    ct = domain.cputune
    if ct is not None:
        if ct.shares is not None:
            if v2:
                from supervisor.sched.mapping import weight_from_shares

                put(pre + "cpu.weight", weight_from_shares(ct.shares))
            else:
                put(pre + "cpu.shares", ct.shares)
        if v2 and (ct.quota is not None or ct.period is not None):
            quota = "max" if ct.quota is None or ct.quota < 0 else str(ct.quota)
            put(pre + "cpu.max", f"{quota} {ct.period if ct.period is not None else 100000}")
        elif not v2:
            if ct.quota is not None:
                put(pre + "cpu.cfs_quota_us", ct.quota if ct.quota >= 0 else -1)
            if ct.period is not None:
                put(pre + "cpu.cfs_period_us", ct.period)
    if domain.pids_limit is not None:
        put(pre + "pids.max", domain.pids_limit)
    if domain.cpuset is not None:
        from supervisor.validate import kernel_cpu_list, parse_cpuset

        cpus = parse_cpuset(domain.cpuset)  # the kernel's list format: no ^N
        put(pre + "cpuset.cpus", kernel_cpu_list(cpus))
        if domain.vcpu != len(cpus):
            gaps.append(
                f"<vcpu>{domain.vcpu}</vcpu> with a cpuset of {len(cpus)} CPUs (converted back, "
                "<vcpu> is the cpuset's count)"
            )


#: ``<blkiotune><device>`` throttle -> (v1 key, v2 ``io.max`` key)
_THROTTLE_KEYS: Final = {
    "read_bytes_sec": ("blkio.throttle.read_bps_device", "rbps"),
    "write_bytes_sec": ("blkio.throttle.write_bps_device", "wbps"),
    "read_iops_sec": ("blkio.throttle.read_iops_device", "riops"),
    "write_iops_sec": ("blkio.throttle.write_iops_device", "wiops"),
}


def _blkio_lines(
    domain: Domain,
    version: int,
    device_numbers: DeviceNumbers,
    put: Callable[[str, object], None],
    gaps: list[str],
) -> None:
    """``<blkiotune>`` as the files LXC writes: v1 ``blkio.weight``, ``blkio.weight_device``
    and the four throttle files; v2 ``io.weight`` (the guest's and the devices') and
    ``io.max`` (0, libvirt's no limit, written ``max``)."""
    tune = domain.blkiotune
    if tune is None:
        return
    v2 = version == 2
    if tune.weight is not None:
        put("lxc.cgroup2.io.weight" if v2 else "lxc.cgroup.blkio.weight", tune.weight)
    for dev in tune.devices:
        node = device_numbers(dev.path)
        if node is None:
            gaps.append(
                f"<blkiotune><device><path>{dev.path}: LXC names a device by its numbers, and "
                "this is not a block device here"
            )
            continue
        if dev.weight is not None:
            key = "lxc.cgroup2.io.weight" if v2 else "lxc.cgroup.blkio.weight_device"
            put(key, f"{node} {dev.weight}")
        limits = [(f, getattr(dev, f)) for f in _THROTTLE_KEYS if getattr(dev, f) is not None]
        if v2 and limits:
            words = " ".join(f"{_THROTTLE_KEYS[f][1]}={v or 'max'}" for f, v in limits)
            put("lxc.cgroup2.io.max", f"{node} {words}")
        elif limits:
            for field, value in limits:
                put(f"lxc.cgroup.{_THROTTLE_KEYS[field][0]}", f"{node} {value}")


def _console_lines(domain: Domain, put: Callable[[str, object], None], gaps: list[str]) -> None:
    """N ``<console>``s are ``lxc.tty.max = N`` (libvirt's converter, read backwards); no
    console is ``lxc.console.path = none`` (the supervisor gives such a guest none)."""
    if not domain.consoles:
        put("lxc.console.path", "none")
        return
    put("lxc.tty.max", len(domain.consoles))
    if any(c.tty or c.source_path or c.alias for c in domain.consoles):
        gaps.append(
            "<console> tty=, <source path=>, <alias> (a running guest's pty: informational)"
        )


def _nic_lines(domain: Domain, put: Callable[[str, object], None], gaps: list[str]) -> None:
    n = 0
    for i, iface in enumerate(domain.interfaces):
        where = f"interface {i + 1} ({iface.type})"
        if iface.type not in ("bridge", "ethernet"):
            why = (
                "LXC names a bridge, and the network's bridge is known only to the supervisor "
                "that runs it: use <interface type='bridge'> with that bridge"
                if iface.type == "network"
                else "IP isolation has no LXC equivalent"
            )
            gaps.append(f"{where}: {why}")
            continue
        pre = f"lxc.net.{n}."
        n += 1
        put(pre + "type", "veth")
        if iface.type == "bridge" and iface.source:
            put(pre + "link", iface.source)
        if iface.link_up is not False:
            put(pre + "flags", "up")
        if iface.mac:
            put(pre + "hwaddr", iface.mac)
        if iface.guest_dev:
            put(pre + "name", iface.guest_dev)
        if iface.target_dev:
            put(pre + "veth.pair", iface.target_dev)
        if iface.mtu is not None:
            put(pre + "mtu", iface.mtu)
        if iface.type == "ethernet" and (iface.ips or iface.routes):
            gaps.append(
                f"{where}: its <ip> and <route> are the host end's, which LXC does not configure"
            )
            continue
        for ip in iface.ips:
            addr = ipaddress.ip_address(ip.address)
            family = "ipv4" if addr.version == 4 else "ipv6"
            prefix = ip.prefix if ip.prefix is not None else addr.max_prefixlen
            put(pre + f"{family}.address", f"{ip.address}/{prefix}")
        for route in iface.routes:
            if route.prefix == 0:
                family = "ipv4" if ipaddress.ip_address(route.gateway).version == 4 else "ipv6"
                put(pre + f"{family}.gateway", route.gateway)
            else:
                gaps.append(
                    f"{where}: route to {route.address}/{route.prefix}: LXC sets only a default "
                    "gateway"
                )
        if iface.filterref is not None:
            gaps.append(f"{where}: <filterref filter='{iface.filterref}'>: LXC has no filters")
    if n == 0 and domain.shared("net") is None:  # a shared one is lxc.namespace.share.net
        put("lxc.net.0.type", "empty" if domain.private_network else "none")


def _gaps_of_rest(domain: Domain, gaps: list[str]) -> None:
    checks: Iterable[tuple[bool, str]] = (
        (domain.id is not None, "the context id (LXC has none)"),
        (domain.uuid is not None, "<uuid> (LXC has none)"),
        (domain.title is not None or domain.description is not None, "<title>, <description>"),
        (domain.scheduler is not None, "the token bucket <scheduler> (LXC has none)"),
        (domain.current_memory_kib is not None, "<currentMemory> (informational)"),
        (domain.vcpu is not None and domain.cpuset is None, "<vcpu> (informational here)"),
        (domain.partition is not None, "<resource><partition> (LXC: lxc.cgroup.dir differs)"),
        (
            (domain.on_poweroff, domain.on_reboot, domain.on_crash)
            != ("destroy", "restart", "destroy"),
            "<on_poweroff>/<on_reboot>/<on_crash> other than libvirt's defaults",
        ),
        (bool(domain.metadata), "foreign <metadata>"),
        (domain.os.arch is not None, "<os><type arch=> (LXC: lxc.arch, the host's)"),
        (domain.clock_offset is not None, "<clock> (a container has the host's clock)"),
        (domain.emulator is not None, "<emulator> (libvirt's controller)"),
        (bool(domain.seclabels), "<seclabel type='none'>"),
        (
            domain.vcpu_placement is not None or domain.vcpu_current is not None,
            "<vcpu placement= current=> (informational)",
        ),
        (
            any(fs.alias or fs.accessmode for fs in domain.filesystems)
            or any(i.alias or i.source_bridge or i.portid for i in domain.interfaces),
            "<alias>, accessmode=, <source bridge= portid=> (libvirt's, informational)",
        ),
        (
            domain.hostname is not None and domain.hostname != domain.name,
            f"the name {domain.name}: LXC names a container by its directory, LXCPATH/"
            f"{domain.name}/config (the host name is lxc.uts.name)",
        ),
    )
    gaps.extend(text for cond, text in checks if cond)
