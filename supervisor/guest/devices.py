"""The device nodes a guest may use, enforced by the kernel's device cgroup.

Theory of operation
-------------------
A guest is root in its own namespaces, and a root process that can open ``/dev/vda`` or
``/dev/mem`` (or mknod them anywhere) owns the host. Namespaces do not stop that; the device
cgroup does. One list of :class:`DeviceRule` (:data:`DEFAULT_DEVICE_RULES`: the pseudo devices,
terminals and ptys a normal userland needs) is enforced in two ways, each where the machine has
it, because either one alone is sufficient but neither exists everywhere:

1. **cgroup v1** ``devices`` controller: the guest's directory in that hierarchy gets ``a``
   written to ``devices.deny`` (nothing allowed) and then one ``devices.allow`` line per rule
   (:func:`v1_lines`). The kernel parses one rule per write, so each line is a write of its own.
2. **cgroup v2** has no device files: a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the
   guest's directory in the unified hierarchy decides every open and mknod of a device node.
   The program is assembled here by hand (:func:`assemble`; it is a dozen instruction forms, not
   worth a compiler toolchain on every host), loaded once per runtime (:meth:`DeviceProgram.load`)
   and attached to each new guest directory with ``BPF_F_ALLOW_MULTI``, so it runs *in addition*
   to whatever the host's init attached above (systemd attaches its own device programs that
   way); the kernel allows an access only if every program on the path allows it.

On a hybrid machine both apply and both must allow. :func:`v1_lines` and :func:`assemble` are
pure, so the rule-to-kernel mapping is property tested without root; :class:`DeviceProgram` is the
thin edge around the ``bpf(2)`` system call (through ctypes: no library in the standard one, and
bcc/libbpf would be a large dependency for two commands).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from typing import Literal

import attrs

from supervisor.errors import RuntimeFailure

DeviceKind = Literal["c", "b"]

#: the largest major and minor a Linux ``dev_t`` can hold (12 and 20 bits): a rule beyond them
#: could never match, and keeping them below 2**31 lets the program compare with immediates
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1


def _check_access(_inst: object, _attr: object, value: str) -> None:
    if not value or set(value) - set("rwm") or len(set(value)) != len(value):
        raise ValueError(f"device access must be a non-empty subset of 'rwm', got {value!r}")


@attrs.frozen
class DeviceRule:
    """Allow ``access`` to the character (``c``) or block (``b``) device ``major:minor``.

    ``minor`` None means every minor of the major (``136:*``, the ptys). ``access`` is a subset
    of ``r`` (open for reading), ``w`` (open for writing) and ``m`` (mknod).
    """

    kind: DeviceKind = attrs.field(validator=attrs.validators.in_(("c", "b")))
    major: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(MAX_MAJOR)])
    minor: int | None = attrs.field(
        validator=attrs.validators.optional(
            [attrs.validators.ge(0), attrs.validators.le(MAX_MINOR)]
        )
    )
    access: str = attrs.field(default="rwm", validator=_check_access)

    def v1_text(self) -> str:
        """The rule as ``devices.allow`` reads it: ``c 1:3 rwm``, ``c 136:* rwm``."""
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {self.major}:{minor} {self.access}"


#: what a guest may use; everything else (every block device, /dev/mem, /dev/kmsg...) is denied
DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", 1, 3),  # /dev/null
    DeviceRule("c", 1, 5),  # /dev/zero
    DeviceRule("c", 1, 7),  # /dev/full
    DeviceRule("c", 1, 8),  # /dev/random
    DeviceRule("c", 1, 9),  # /dev/urandom
    DeviceRule("c", 5, 0),  # /dev/tty: the process's controlling terminal
    DeviceRule("c", 5, 1),  # /dev/console
    DeviceRule("c", 5, 2),  # /dev/ptmx: opening it makes a new pty pair
    DeviceRule("c", 136, None),  # /dev/pts/N: the pty ends ptmx hands out
)


# -- cgroup v1 (pure) ----------------------------------------------------------------------------


def v1_lines(rules: Iterable[DeviceRule]) -> list[tuple[str, str]]:
    """The (file, value) writes that put ``rules`` in a fresh v1 devices cgroup, in order.

    Deny everything first: a new cgroup inherits its parent's list, which at the top is "all".
    """
    return [("devices.deny", "a")] + [("devices.allow", r.v1_text()) for r in rules]


# -- eBPF (pure) ---------------------------------------------------------------------------------

#: struct bpf_cgroup_dev_ctx: u32 access_type ((access << 16) | type), u32 major, u32 minor
CTX_ACCESS_TYPE, CTX_MAJOR, CTX_MINOR = 0, 4, 8
#: the ``type`` half of ``access_type``
DEV_TYPE: dict[DeviceKind, int] = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
#: the ``access`` half of ``access_type``
DEV_ACCESS: dict[str, int] = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE

# opcodes (include/uapi/linux/bpf.h, bpf_common.h): class | operation | source
OP_LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
OP_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
OP_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X: dst = src
OP_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
OP_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
OP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm: pc += off
OP_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: if dst & imm: pc += off
OP_EXIT = 0x95  # BPF_JMP | BPF_EXIT: return r0

#: struct bpf_insn; the register nibbles are a C bitfield (dst low, src high), which this layout
#: matches only on little-endian machines, the only ones :func:`bpf_syscall_number` accepts
_INSN = struct.Struct("<BBhi")
INSN_SIZE = _INSN.size

# registers the program uses (r1 holds the context pointer on entry, r0 the verdict on exit)
_R0, _R1, _ACC, _TYPE, _MAJ, _MIN = 0, 1, 2, 3, 4, 5


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def _ldx_w(dst: int, src: int, off: int) -> bytes:
    return _insn(OP_LDX_W, dst, src, off=off)


def _mov_k(dst: int, imm: int) -> bytes:
    return _insn(OP_MOV_K, dst, imm=imm)


def _mov_x(dst: int, src: int) -> bytes:
    return _insn(OP_MOV_X, dst, src)


def _and_k(dst: int, imm: int) -> bytes:
    return _insn(OP_AND_K, dst, imm=imm)


def _rsh_k(dst: int, imm: int) -> bytes:
    return _insn(OP_RSH_K, dst, imm=imm)


def _jne_k(dst: int, imm: int, off: int) -> bytes:
    return _insn(OP_JNE_K, dst, off=off, imm=imm)


def _jset_k(dst: int, imm: int, off: int) -> bytes:
    return _insn(OP_JSET_K, dst, off=off, imm=imm)


def _exit() -> bytes:
    return _insn(OP_EXIT)


def access_bits(access: str) -> int:
    """The ``BPF_DEVCG_ACC_*`` bits of an access string (``"rw"`` -> 6)."""
    bits = 0
    for c in access:
        bits |= DEV_ACCESS[c]
    return bits


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """The instructions that return 1 when the request matches ``rule``, else fall through.

    Every check jumps to the next block when it fails; the block's length is known up front
    (the checks, then ``r0 = 1; exit``), so each jump's offset is what is left of the block.
    """
    length = (3 if rule.minor is None else 4) + 2
    block: list[bytes] = []

    def to_next() -> int:
        """The offset from the instruction appended next to the first one after the block."""
        return length - 1 - len(block)

    block.append(_jne_k(_TYPE, DEV_TYPE[rule.kind], to_next()))
    block.append(_jne_k(_MAJ, rule.major, to_next()))
    if rule.minor is not None:
        block.append(_jne_k(_MIN, rule.minor, to_next()))
    # a request is a set of bits (an open for reading and writing asks for r and w at once):
    # any bit the rule does not grant means no match
    block.append(_jset_k(_ACC, ~access_bits(rule.access), to_next()))
    block += [_mov_k(_R0, 1), _exit()]
    assert len(block) == length
    return block


def assemble(rules: Iterable[DeviceRule]) -> bytes:
    """The ``BPF_PROG_TYPE_CGROUP_DEVICE`` program that allows exactly what ``rules`` allow.

    A request is allowed iff some rule has its type and major, its minor (or any minor), and
    grants every access bit asked for. In pseudo-assembly (``r1`` is the context on entry)::

            r2 = *(u32 *)(r1 + 0)      ; access_type
            r3 = r2
            r3 &= 0xffff               ; type: 1 block, 2 char
            r2 >>= 16                  ; access: 1 mknod | 2 read | 4 write
            r4 = *(u32 *)(r1 + 4)      ; major
            r5 = *(u32 *)(r1 + 8)      ; minor
        rule_k:                        ; one block per rule, e.g. "c 1:3 rw":
            if r3 != 2 goto rule_k+1
            if r4 != 1 goto rule_k+1
            if r5 != 3 goto rule_k+1   ; left out for "any minor"
            if r2 & ~6 goto rule_k+1   ; asks for a bit the rule does not grant
            r0 = 1
            exit
        rule_n:                        ; no rule matched
            r0 = 0
            exit

    Only forward jumps, each to the next block, so the verifier sees a loop-free program whose
    length grows by at most six instructions per rule.
    """
    prog = [
        _ldx_w(_ACC, _R1, CTX_ACCESS_TYPE),
        _mov_x(_TYPE, _ACC),
        _and_k(_TYPE, 0xFFFF),
        _rsh_k(_ACC, 16),
        _ldx_w(_MAJ, _R1, CTX_MAJOR),
        _ldx_w(_MIN, _R1, CTX_MINOR),
    ]
    for rule in rules:
        prog.extend(_rule_block(rule))
    prog += [_mov_k(_R0, 0), _exit()]
    return b"".join(prog)


# -- the bpf(2) edge -----------------------------------------------------------------------------

#: bpf(2)'s number in each 64-bit little-endian syscall table we know (aarch64 and riscv64 use
#: the generic table)
_BPF_SYSCALL: dict[str, int] = {"x86_64": 321, "aarch64": 280, "riscv64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
#: the program's name in ``bpftool prog`` (at most 15 bytes)
PROG_NAME = b"vsv_devices"
#: any string: a device program calls no GPL-only helper
LICENSE = b"MIT"
#: room for the verifier's log of a rejected program (it is asked for only on failure)
_LOG_SIZE = 1 << 16
#: how often a load interrupted by a signal (EAGAIN from the verifier) is tried again
_LOAD_TRIES = 5

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ProgLoadAttr(ctypes.Structure):
    """The head of ``union bpf_attr`` for BPF_PROG_LOAD (the kernel zero-fills the rest)."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    )


class _ProgAttachAttr(ctypes.Structure):
    """The head of ``union bpf_attr`` for BPF_PROG_ATTACH."""

    _fields_ = (
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    )


def bpf_syscall_number(machine: str, pointer_size: int = ctypes.sizeof(ctypes.c_void_p)) -> int:
    """bpf(2)'s number for this machine; RuntimeFailure where it is not known here.

    A 32-bit process (even on a 64-bit kernel) and a big-endian machine use another table or
    another instruction layout, so both are refused rather than guessed.
    """
    number = _BPF_SYSCALL.get(machine)
    if number is None or pointer_size != 8:
        known = ", ".join(sorted(_BPF_SYSCALL))
        raise RuntimeFailure(
            f"cannot load the device eBPF program: bpf(2) is not known on {machine} "
            f"({pointer_size * 8}-bit process); known are 64-bit {known}"
        )
    return number


def _bpf(number: int, cmd: int, attr: ctypes.Structure) -> int:
    """One bpf(2) call: its result, or -errno."""
    size = ctypes.c_uint(ctypes.sizeof(attr))
    rc = int(_libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), ctypes.byref(attr), size))
    return -ctypes.get_errno() if rc < 0 else rc


def _load(number: int, code: bytes, log: ctypes.Array[ctypes.c_char] | None) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(LICENSE)
    attr = _ProgLoadAttr(
        prog_type=_BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(code) // INSN_SIZE,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        prog_name=PROG_NAME,
    )
    if log is not None:
        attr.log_level = 1
        attr.log_size = len(log)
        attr.log_buf = ctypes.addressof(log)
    rc = -errno.EAGAIN
    for _ in range(_LOAD_TRIES):
        rc = _bpf(number, _BPF_PROG_LOAD, attr)
        if rc != -errno.EAGAIN:
            break
    return rc


@attrs.define(eq=False)
class DeviceProgram:
    """A loaded device program: attach it to as many guest cgroups as needed, close it at the end.

    Loading runs the kernel's verifier, so it happens once (per runtime); attaching is one
    system call per guest. An attached program stays with the cgroup until the cgroup is
    removed, whether or not this object is still open.
    """

    rules: tuple[DeviceRule, ...]
    fd: int
    #: bpf(2)'s number here (see :func:`bpf_syscall_number`)
    _syscall: int

    @classmethod
    def load(cls, rules: Iterable[DeviceRule] = DEFAULT_DEVICE_RULES) -> DeviceProgram:
        """Assemble and load the program for ``rules``.

        On failure it loads again with the verifier's log asked for (asking every time would
        slow every load down, and a log buffer too small fails a good program) and puts that log
        in the RuntimeFailure.
        """
        rules = tuple(rules)
        number = bpf_syscall_number(os.uname().machine)
        code = assemble(rules)
        fd = _load(number, code, None)
        if fd < 0:
            log = ctypes.create_string_buffer(_LOG_SIZE)
            _load(number, code, log)
            text = log.value.decode(errors="replace").strip()
            detail = f"; verifier log:\n{text}" if text else ""
            raise RuntimeFailure(
                f"cannot load the device eBPF program ({len(code) // INSN_SIZE} instructions): "
                f"{os.strerror(-fd)}{detail}"
            )
        return cls(rules, fd, syscall=number)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self.fd < 0

    def attach(self, cgroup_dir: str) -> None:
        """Attach the program to a directory of the unified (cgroup2) hierarchy.

        ``BPF_F_ALLOW_MULTI``: the programs of the ancestors keep running too, and the guest's
        cgroup gets no right to replace this one (a guest does not own its cgroup directory).
        """
        if self.closed:
            raise RuntimeFailure(f"cannot attach the device eBPF program to {cgroup_dir}: closed")
        try:
            dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RuntimeFailure(f"cannot open cgroup {cgroup_dir}: {e.strerror}") from e
        try:
            attr = _ProgAttachAttr(
                target_fd=dir_fd,
                attach_bpf_fd=self.fd,
                attach_type=_BPF_CGROUP_DEVICE,
                attach_flags=_BPF_F_ALLOW_MULTI,
            )
            rc = _bpf(self._syscall, _BPF_PROG_ATTACH, attr)
        finally:
            os.close(dir_fd)
        if rc < 0:
            raise RuntimeFailure(
                f"cannot attach the device eBPF program to {cgroup_dir}: {os.strerror(-rc)}"
            )

    def close(self) -> None:
        """Release the program's descriptor (cgroups it is attached to keep it); idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
