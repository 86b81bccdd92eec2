"""The guests' default seccomp deny-list: which system calls, and the filter libseccomp makes.

Theory of operation
-------------------
Capabilities decide most of what a guest's root may do, but some system calls reach host-wide
kernel state that no namespace covers (keyrings, modules, kexec), or are the usual first step of
a kernel exploit (user namespaces, userfaultfd, io_uring). A guest is therefore started under a
seccomp filter that allows everything by default and makes those calls fail with an errno, as
Docker's and LXC's default profiles do. A call that a capability the guest keeps is meant to
allow (``mount`` with sys_admin, ``bpf`` with bpf) is left out of the list.

Three steps, split so that only the last one needs libseccomp:

* :func:`profile_for` (pure) turns the capabilities a guest keeps into a :class:`SeccompProfile`,
  a sorted tuple of :class:`Denial` values read off the rule table :data:`RULES`;
* :func:`compile_profile` asks libseccomp (through ``pyseccomp``, imported only there) for the
  classic-BPF program, for the native architecture and the 32-bit ABIs the kernel also runs, so
  that ``int 0x80`` cannot go around the list; the result is cached per profile, since the
  supervisor asks on every start and guests share a handful of profiles;
* ``forkserver.install_seccomp`` (stdlib only) loads those bytes in the embryo just before it
  drops capabilities and execs the guest's init.

:func:`describe` renders a profile as text for ``docs/security.md`` and ``vsv validate``.
"""

from __future__ import annotations

import ctypes
import errno as errno_names
import functools
import os
from typing import Any, Final

import attrs

from supervisor.errors import RuntimeFailure

#: clone(2)/unshare(2) flag that makes a new user namespace
CLONE_NEWUSER: Final = 0x10000000
#: the kernel's limit on a classic-BPF program (BPF_MAXINSNS), in instructions
MAX_INSTRUCTIONS: Final = 4096
#: the size of one exported instruction (struct sock_filter)
INSTRUCTION_SIZE: Final = 8


def _arg_index(index: int) -> int:
    if not 0 <= index <= 5:
        raise ValueError(f"a system call has arguments 0-5, not {index}")
    return index


@attrs.frozen
class ArgMatch:
    """A condition on one argument: the rule applies only when ``(arg & mask) == value``.

    Only masked equality is offered because a deny-list needs nothing else: flags are tested bit
    by bit, and libseccomp compares the full 64 bits on 64-bit ABIs, so set high bits cannot
    hide a flag.
    """

    index: int = attrs.field(converter=_arg_index)
    mask: int = attrs.field()
    value: int = attrs.field()

    @mask.validator
    def _check_mask(self, _attribute: attrs.Attribute[int], mask: int) -> None:
        # ctypes would cut a wider mask to 64 bits without a word; a zero mask matches always
        if not 0 < mask < 1 << 64:
            raise ValueError(f"mask {mask:#x} is not a non-zero 64-bit value")

    @value.validator
    def _check_value(self, _attribute: attrs.Attribute[int], value: int) -> None:
        # a value with bits outside the mask could never match: the rule would be dead
        if value & ~self.mask:
            raise ValueError(f"value {value:#x} has bits outside mask {self.mask:#x}")

    def describe(self) -> str:
        """``(arg0 & 0x10000000) == 0x10000000``: how the condition reads in :func:`describe`."""
        return f"(arg{self.index} & {self.mask:#x}) == {self.value:#x}"


@attrs.frozen
class Denial:
    """One denied system call: ``syscall`` fails with ``errno`` (only when ``when`` matches)."""

    syscall: str
    errno: int
    when: ArgMatch | None = None

    def sort_key(self) -> tuple[str, int, tuple[int, ...]]:
        """Orders denials by name, then errno, then condition (an unconditional one first)."""
        cond = () if self.when is None else (self.when.index, self.when.mask, self.when.value)
        return (self.syscall, self.errno, cond)


def _canonical(denials: tuple[Denial, ...] | list[Denial]) -> tuple[Denial, ...]:
    # sorted and without repeats, so two profiles that deny the same calls are equal and hash
    # alike whatever order their rules were listed in
    return tuple(sorted(set(denials), key=Denial.sort_key))


@attrs.frozen(cache_hash=True)
class SeccompProfile:
    """The system calls a guest may not make; the default for everything else is allow.

    Frozen and hashable (the hash is computed once): :func:`compile_profile` caches its
    programs by profile.
    """

    denials: tuple[Denial, ...] = attrs.field(converter=_canonical)

    def denied(self) -> frozenset[str]:
        """The names of the calls this profile denies, with or without a condition."""
        return frozenset(d.syscall for d in self.denials)


@attrs.frozen
class Rule:
    """A row of :data:`RULES`: calls denied for ``why`` unless the guest keeps any of ``unless``."""

    syscalls: tuple[str, ...]
    why: str
    unless: frozenset[str] = frozenset()
    errno: int = errno_names.EPERM
    when: ArgMatch | None = None


_SYS_ADMIN: Final = frozenset({"sys_admin"})
_NEWUSER_AT_0: Final = ArgMatch(0, CLONE_NEWUSER, CLONE_NEWUSER)

#: The deny-list. Calls that an architecture lacks (vm86 on x86_64, umount on aarch64) are
#: resolved per ABI by libseccomp and simply absent from that ABI's part of the filter.
RULES: Final[tuple[Rule, ...]] = (
    Rule(
        ("kexec_load", "kexec_file_load"),
        "replaces the host's running kernel",
    ),
    Rule(
        ("init_module", "finit_module", "delete_module"),
        "loads or unloads code in the host's kernel",
    ),
    Rule(
        ("open_by_handle_at",),
        "opens any file of a filesystem by handle, bypassing the guest's root",
    ),
    Rule(
        ("keyctl", "add_key", "request_key"),
        "the kernel keyrings are not namespaced: the host's keys would be in reach",
    ),
    Rule(
        ("userfaultfd",),
        "lets a process stall the kernel inside a page fault, the usual way to win a kernel race",
    ),
    Rule(
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
        "its operations are not system calls, so this filter would not see them",
    ),
    Rule(
        ("lookup_dcookie",),
        "turns the kernel profiler's cookies into host paths",
    ),
    Rule(
        (
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "nfsservctl",
            "vm86",
            "vm86old",
            "create_module",
            "get_kernel_syms",
            "query_module",
        ),
        "obsolete: nothing in a guest needs them, and old code hides old bugs",
    ),
    Rule(
        ("bpf",),
        "loads programs into the host's kernel",
        unless=frozenset({"bpf", "sys_admin"}),
    ),
    Rule(
        ("perf_event_open",),
        "watches other processes and the kernel, a side channel across guests",
        unless=frozenset({"perfmon", "sys_admin"}),
    ),
    Rule(
        ("syslog",),
        "reads or clears the host's kernel log",
        unless=frozenset({"syslog"}),
    ),
    Rule(
        ("acct",),
        "switches process accounting for the whole host",
        unless=frozenset({"sys_pacct"}),
    ),
    Rule(
        ("swapon", "swapoff"),
        "changes the host's swap",
        unless=_SYS_ADMIN,
    ),
    Rule(
        ("quotactl",),
        "changes disk quotas of filesystems the host shares",
        unless=_SYS_ADMIN,
    ),
    Rule(
        ("fanotify_init",),
        "watches file access on whole filesystems, beyond the guest's own tree",
        unless=_SYS_ADMIN,
    ),
    Rule(
        (
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "fsconfig",
            "fspick",
            "mount_setattr",
        ),
        "would rearrange the guest's mount tree (uncover masked paths, undo read-only mounts)",
        unless=_SYS_ADMIN,
    ),
    Rule(
        ("unshare", "clone"),
        "a new user namespace (CLONE_NEWUSER) gives full capabilities over fresh namespaces, "
        "the first step of most kernel exploits",
        unless=_SYS_ADMIN,
        when=_NEWUSER_AT_0,
    ),
    Rule(
        ("clone3",),
        "its flags sit behind a pointer the filter cannot read: ENOSYS makes libc fall back to "
        "clone, whose flags are checked",
        unless=_SYS_ADMIN,
        errno=errno_names.ENOSYS,
    ),
)

_WHY: Final = {name: rule.why for rule in RULES for name in rule.syscalls}


def _check_caps(caps: frozenset[str]) -> None:
    bad = sorted(c for c in caps if c != c.lower() or c.startswith("cap_") or not c)
    if bad:
        raise ValueError(
            f"capability names are lower case without 'cap_' (e.g. 'sys_admin'), not {bad}"
        )


@functools.lru_cache(maxsize=64)
def profile_for(caps: frozenset[str]) -> SeccompProfile:
    """The deny-list for a guest that keeps ``caps`` (lower-case names without ``cap_``).

    Pure: the same capabilities always give an equal profile, so the compiled program is shared.
    A name the table does not mention changes nothing; a name spelt ``CAP_X`` or ``cap_x`` is a
    ValueError, since it would silently keep a call denied that the caller meant to allow.
    Cached, so a start that asks again gets the very same object and the lookup in
    :func:`compile_profile` does not compare dozens of denials one by one.
    """
    _check_caps(caps)
    return SeccompProfile(
        tuple(
            Denial(name, rule.errno, rule.when)
            for rule in RULES
            if not rule.unless & caps
            for name in rule.syscalls
        )
    )


def describe(profile: SeccompProfile) -> list[str]:
    """One line per denial, ``name: EPERM [when ...] - why``, in the profile's order."""
    if not profile.denials:
        return ["no system call is denied"]
    lines = []
    for d in profile.denials:
        code = errno_names.errorcode.get(d.errno, str(d.errno))
        cond = "" if d.when is None else f" when {d.when.describe()}"
        why = _WHY.get(d.syscall)
        lines.append(f"{d.syscall}: {code}{cond}" + (f" - {why}" if why else ""))
    return lines


# -- compiling with libseccomp (the edge) --------------------------------------------------------

# AUDIT_ARCH_* values, as libseccomp's SCMP_ARCH_* tokens are
_EM_X86_64 = 62
_EM_AARCH64 = 183
_EM_S390 = 22
_AUDIT_ARCH_64BIT = 0x80000000
_AUDIT_ARCH_LE = 0x40000000
_ARCH_X86_64 = _EM_X86_64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE
_ARCH_AARCH64 = _EM_AARCH64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE
_ARCH_S390 = _EM_S390
_ARCH_S390X = _EM_S390 | _AUDIT_ARCH_64BIT
_SCMP_ERROR = -1  # what libseccomp's name resolution returns for a name it does not know


@functools.lru_cache(maxsize=32)
def compile_profile(profile: SeccompProfile) -> bytes:
    """The classic-BPF program for ``profile``, as ``seccomp_export_bpf`` writes it.

    Allow by default; each denial returns its errno. The filter covers the native ABI and the
    compat ABIs its kernel runs (x86 and x32 beside x86_64, arm beside aarch64): a 32-bit call
    has other numbers and would otherwise miss every rule. Cached per profile: libseccomp needs
    0.2-0.4 ms (and importing pyseccomp some 15 ms, once), and every start asks. Raises
    RuntimeFailure when libseccomp is missing or refuses the profile.
    """
    try:
        import pyseccomp
    except ImportError as e:
        raise RuntimeFailure(
            f"pyseccomp cannot be imported ({e}): install the supervisor's dependencies"
        ) from None
    except (RuntimeError, OSError) as e:
        # pyseccomp raises RuntimeError when ctypes.util.find_library("seccomp") finds nothing
        raise RuntimeFailure(f"libseccomp not found ({e}): install Debian's libseccomp2") from None
    try:
        native = pyseccomp.system_arch()
        if native in (_ARCH_S390, _ARCH_S390X):
            # s390 passes clone(2)'s stack first and its flags second (CLONE_BACKWARDS2), so the
            # clone rule, which reads argument 0, would test the wrong word there
            raise RuntimeFailure(
                "the guests' seccomp profile does not support s390/s390x: clone's flags are its "
                "second argument there"
            )
        compat = {
            _ARCH_X86_64: (pyseccomp.Arch.X86, pyseccomp.Arch.X32),
            _ARCH_AARCH64: (pyseccomp.Arch.ARM,),
        }.get(native, ())
        flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        try:
            # a binary tree of system call numbers rather than a list: the kernel runs the
            # filter once per system call number and ABI when it is loaded (to cache what it
            # always allows), which with a list cost ~0.2 ms of every guest's start, ~0.06 ms so
            flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
        except OSError:
            pass  # a libseccomp before 2.5: the list it makes is as correct, only slower to load
        for arch in compat:
            flt.add_arch(arch)
        for d in profile.denials:
            # resolve ourselves: pyseccomp would pass an unknown name on as -1, and libseccomp
            # would answer a bare EINVAL; names another ABI has get a negative pseudo number,
            # which libseccomp translates per ABI
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, d.syscall)
            if nr == _SCMP_ERROR:
                raise RuntimeFailure(
                    f"this libseccomp does not know the system call {d.syscall!r}: "
                    "upgrade libseccomp2"
                )
            args = []
            if d.when is not None:
                args.append(
                    pyseccomp.Arg(d.when.index, pyseccomp.MASKED_EQ, d.when.mask, d.when.value)
                )
            flt.add_rule(pyseccomp.ERRNO(d.errno), nr, *args)
        program = _export(flt)
    except (OSError, ValueError, ctypes.ArgumentError) as e:
        if isinstance(e, RuntimeFailure):
            raise
        raise RuntimeFailure(f"libseccomp refused the guests' seccomp profile: {e}") from e
    if not program or len(program) % INSTRUCTION_SIZE:
        raise RuntimeFailure(f"libseccomp exported {len(program)} bytes, not whole instructions")
    if len(program) // INSTRUCTION_SIZE > MAX_INSTRUCTIONS:
        raise RuntimeFailure(
            f"the seccomp program has {len(program) // INSTRUCTION_SIZE} instructions, more "
            f"than the kernel's {MAX_INSTRUCTIONS}"
        )
    return program


def _export(flt: Any) -> bytes:  # a pyseccomp.SyscallFilter (pyseccomp ships no types)
    """What ``flt.export_bpf`` writes, via a memfd (a pipe would block on a large program)."""
    with open(os.memfd_create("vsv-seccomp", os.MFD_CLOEXEC), "w+b") as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()
