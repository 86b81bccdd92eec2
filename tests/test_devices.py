"""Device allowlist: v1 lines and the eBPF program (pure, via a tiny interpreter), then the kernel.

The interpreter below runs exactly the instruction forms :func:`assemble` emits, with the
checks the kernel's verifier would make on them (context loads only through the untouched r1,
no uninitialised register read, forward jumps inside the program, r0 set at exit). Hypothesis
then compares the program's verdict with the rules' meaning over many requests.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import RuntimeFailure
from supervisor.guest import devices
from supervisor.guest.cgroups import CgroupLayout, GuestCgroup, detect_layout, find_leftovers
from supervisor.guest.devices import (
    CTX_ACCESS_TYPE,
    CTX_MAJOR,
    CTX_MINOR,
    DEFAULT_DEVICE_RULES,
    DEV_TYPE,
    INSN_SIZE,
    MAX_MAJOR,
    MAX_MINOR,
    OP_AND_K,
    OP_EXIT,
    OP_JNE_K,
    OP_JSET_K,
    OP_LDX_W,
    OP_MOV_K,
    OP_MOV_X,
    OP_RSH_K,
    DeviceProgram,
    DeviceRule,
    access_bits,
    assemble,
    bpf_syscall_number,
    v1_lines,
)

BLOCK, CHAR = 1, 2
MKNOD, READ, WRITE = 1, 2, 4
_MASK64 = (1 << 64) - 1

# -- a model of the kernel running the program ---------------------------------------------------


def interpret(code: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    """Run a device program on one request the way the kernel would: its return value."""
    assert code
    assert 0 == len(code) % INSN_SIZE
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), INSN_SIZE)]
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    regs: list[int | None] = [None] * 11
    ctx_in_r1 = True
    pc = 0

    def get(reg: int) -> int:
        value = regs[reg]
        assert value is not None, f"r{reg} read before it was written"
        return value

    # every jump goes forward, so no run is longer than the program
    for _ in range(len(insns)):
        op, nibbles, off, imm = insns[pc]
        dst, src = nibbles & 0xF, nibbles >> 4
        k = imm & _MASK64  # a 32-bit immediate is sign-extended for 64-bit operations
        if op == OP_LDX_W:
            assert 1 == src, f"load not from r1 at {pc}"
            assert ctx_in_r1, f"load from r1 after it was overwritten, at {pc}"
            assert off in (CTX_ACCESS_TYPE, CTX_MAJOR, CTX_MINOR)
            regs[dst] = int.from_bytes(ctx[off : off + 4], "little")
        elif op == OP_MOV_K:
            regs[dst] = k
        elif op == OP_MOV_X:
            regs[dst] = get(src)
        elif op == OP_AND_K:
            regs[dst] = get(dst) & k
        elif op == OP_RSH_K:
            assert 0 <= imm < 64
            regs[dst] = get(dst) >> imm
        elif op in (OP_JNE_K, OP_JSET_K):
            assert 0 <= off, f"backward jump at {pc}"
            assert pc + 1 + off < len(insns), f"jump out of the program at {pc}"
            taken = get(dst) != k if op == OP_JNE_K else bool(get(dst) & k)
            if taken:
                pc += off
        elif op == OP_EXIT:
            return get(0)
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc}")
        if dst == 1 and op not in (OP_JNE_K, OP_JSET_K):
            ctx_in_r1 = False
        pc += 1
        assert pc < len(insns), "ran off the end"
    raise AssertionError("program did not exit")


def allowed(
    rules: tuple[DeviceRule, ...], dev_type: int, major: int, minor: int, access: int
) -> bool:
    """What the rules mean: some rule has the type, major, minor and every access bit asked."""
    return any(
        DEV_TYPE[r.kind] == dev_type
        and r.major == major
        and r.minor in (None, minor)
        and 0 == access & ~access_bits(r.access)
        for r in rules
    )


# -- strategies ---------------------------------------------------------------------------------

_access = st.lists(st.sampled_from("rwm"), min_size=1, max_size=3, unique=True).map("".join)
_majors = st.integers(0, 6) | st.integers(0, MAX_MAJOR)
_minors = st.integers(0, 6) | st.integers(0, MAX_MINOR)
_rules = st.builds(
    DeviceRule,
    kind=st.sampled_from(["c", "b"]),
    major=_majors,
    minor=st.none() | _minors,
    access=_access,
)
_rule_lists = st.lists(_rules, max_size=12).map(tuple)


@st.composite
def _requests(draw: st.DrawFn, rules: tuple[DeviceRule, ...]) -> tuple[int, int, int, int]:
    """(type, major, minor, access): often one a rule is about, sometimes anything at all."""
    access = draw(st.integers(0, 7) | st.integers(0, 0xFFFF))
    near_a_rule = draw(st.booleans())
    if rules and near_a_rule:
        rule = draw(st.sampled_from(rules))
        dev_type = DEV_TYPE[rule.kind]
        minor = rule.minor if rule.minor is not None else draw(_minors)
        return dev_type, rule.major, draw(st.just(minor) | _minors), access
    dev_type = draw(st.sampled_from([BLOCK, CHAR]) | st.integers(0, 0xFFFF))
    return dev_type, draw(_majors | st.integers(0, 2**32 - 1)), draw(_minors), access


# -- pure tests ---------------------------------------------------------------------------------


def test_v1_lines_deny_all_then_allow_each_rule() -> None:
    """The v1 writes deny everything first, then allow each default rule in devices.allow form."""
    expected = [
        ("devices.deny", "a"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.allow", "c 1:5 rwm"),
        ("devices.allow", "c 1:7 rwm"),
        ("devices.allow", "c 1:8 rwm"),
        ("devices.allow", "c 1:9 rwm"),
        ("devices.allow", "c 5:0 rwm"),
        ("devices.allow", "c 5:1 rwm"),
        ("devices.allow", "c 5:2 rwm"),
        ("devices.allow", "c 136:* rwm"),
    ]
    assert expected == v1_lines(DEFAULT_DEVICE_RULES)
    assert [("devices.deny", "a"), ("devices.allow", "b 8:* r")] == v1_lines(
        [DeviceRule("b", 8, None, "r")]
    )


@pytest.mark.parametrize(
    ("kind", "major", "minor", "access"),
    [
        ("a", 1, 3, "rwm"),
        ("c", -1, 3, "rwm"),
        ("c", MAX_MAJOR + 1, 3, "rwm"),
        ("c", 1, MAX_MINOR + 1, "rwm"),
        ("c", 1, 3, ""),
        ("c", 1, 3, "rx"),
        ("c", 1, 3, "rr"),
    ],
)
def test_rule_refuses_what_the_kernel_could_not_mean(
    kind: str, major: int, minor: int, access: str
) -> None:
    """A rule with an unknown kind, a device number beyond dev_t, or bad access is refused."""
    with pytest.raises(ValueError):  # noqa: PT011 (attrs' validators word their own messages)
        DeviceRule(kind, major, minor, access)  # type: ignore[arg-type]


def test_default_program_shape() -> None:
    """Six loads/shifts, six instructions per rule (five for 'any minor'), then 'return 0'."""
    code = assemble(DEFAULT_DEVICE_RULES)
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), INSN_SIZE)]
    assert (6 + 8 * 6 + 5 + 2) * INSN_SIZE == len(code)
    assert [OP_LDX_W, OP_MOV_X, OP_AND_K, OP_RSH_K, OP_LDX_W, OP_LDX_W] == [i[0] for i in insns[:6]]
    assert [(OP_MOV_K, 0, 0, 0), (OP_EXIT, 0, 0, 0)] == insns[-2:]
    # every rule block ends in "r0 = 1; exit", and every jump lands right after such an end
    ends = {n + 1 for n, i in enumerate(insns) if i[0] == OP_EXIT}
    for n, (op, _regs, off, _imm) in enumerate(insns):
        if op in (OP_JNE_K, OP_JSET_K):
            assert n + 1 + off in ends
    assert 1 + len(DEFAULT_DEVICE_RULES) == sum(1 for i in insns if i[0] == OP_EXIT)


@given(rules=_rule_lists)
def test_program_length(rules: tuple[DeviceRule, ...]) -> None:
    """The program grows by six instructions per rule, one fewer for a rule of any minor."""
    expected = 8 + sum(5 if r.minor is None else 6 for r in rules)
    assert expected * INSN_SIZE == len(assemble(rules))


@given(data=st.data(), rules=_rule_lists)
def test_program_allows_exactly_what_a_rule_allows(
    data: st.DataObject, rules: tuple[DeviceRule, ...]
) -> None:
    """For any rules and request, the program returns 1 iff some rule grants the request."""
    code = assemble(rules)
    for _ in range(8):
        dev_type, major, minor, access = data.draw(_requests(rules))
        assert int(allowed(rules, dev_type, major, minor, access)) == interpret(
            code, dev_type, major, minor, access
        )


@pytest.mark.parametrize(
    ("dev_type", "major", "minor", "access", "expected"),
    [
        (CHAR, 1, 3, READ | WRITE, 1),  # /dev/null
        (CHAR, 1, 9, READ, 1),  # /dev/urandom
        (CHAR, 136, 7, READ | WRITE, 1),  # /dev/pts/7
        (CHAR, 5, 2, MKNOD, 1),  # mknod /dev/ptmx
        (CHAR, 1, 11, READ, 0),  # /dev/kmsg
        (CHAR, 1, 1, READ, 0),  # /dev/mem
        (BLOCK, 1, 3, READ, 0),  # a block device with /dev/null's numbers
        (BLOCK, 254, 0, READ, 0),  # a disk
        (BLOCK, 8, 0, MKNOD, 0),  # mknod of a disk
        (CHAR, 1, 3, READ | 8, 0),  # an access bit no rule grants
    ],
)
def test_default_program_verdicts(
    dev_type: int, major: int, minor: int, access: int, expected: int
) -> None:
    """The default program allows the pseudo devices and ptys and nothing else."""
    assert expected == interpret(assemble(DEFAULT_DEVICE_RULES), dev_type, major, minor, access)


def test_syscall_numbers() -> None:
    """bpf(2) is 321 on x86_64, 280 in the generic table; other machines get a clear error."""
    assert 321 == bpf_syscall_number("x86_64", 8)
    assert 280 == bpf_syscall_number("aarch64", 8) == bpf_syscall_number("riscv64", 8)
    with pytest.raises(RuntimeFailure, match=r"not known on s390x \(64-bit process\)"):
        bpf_syscall_number("s390x", 8)
    with pytest.raises(RuntimeFailure, match=r"not known on x86_64 \(32-bit process\)"):
        bpf_syscall_number("x86_64", 4)


def _fake_v2(tmp_path: Path) -> str:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return str(root)


def test_failed_attach_removes_what_create_made(tmp_path: Path) -> None:
    """When the program cannot be attached, create removes the directory it made and raises."""
    cg = GuestCgroup(
        detect_layout(_fake_v2(tmp_path)),
        "vsvt",
        "a",
        device_program=DeviceProgram(DEFAULT_DEVICE_RULES, fd=-1, syscall=0),
    )
    with pytest.raises(RuntimeFailure, match=r"attach the device eBPF program to .*vsvt-a"):
        cg.create()
    assert [] == find_leftovers(cg.layout, "vsvt")


def test_failed_v1_write_names_file_and_removes_all(tmp_path: Path) -> None:
    """A refused devices.deny write names file and value; every directory made is removed."""
    root = tmp_path / "cg"
    for ctrl in ("memory", "devices"):
        (root / ctrl).mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")
    layout = detect_layout(str(root))
    cg = GuestCgroup(layout, "vsvt", "b")
    # a plain directory has no devices.deny, as a cgroup without the controller would not
    with pytest.raises(RuntimeFailure, match=r"'a' to .*devices/vsvt-b/devices\.deny"):
        cg.create()
    assert [] == find_leftovers(layout, "vsvt")
    # an existing directory gets the policy too (a guest must never run without it): here it
    # cannot take it either, and only what this call made is removed
    (root / "devices" / "vsvt-b").mkdir()
    with pytest.raises(RuntimeFailure, match=r"devices/vsvt-b/devices\.deny"):
        cg.create()
    assert [str(root / "devices" / "vsvt-b")] == find_leftovers(layout, "vsvt")


# -- the real kernel ----------------------------------------------------------------------------

Probe = Callable[[Path], None]


def _open(path: str, flags: int) -> Probe:
    def probe(_tmp: Path) -> None:
        os.close(os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC))

    return probe


def _open_node(name: str, flags: int) -> Probe:
    def probe(tmp: Path) -> None:
        os.close(os.open(tmp / name, flags | os.O_NONBLOCK | os.O_CLOEXEC))

    return probe


def _mknod(name: str, mode: int, major: int, minor: int) -> Probe:
    def probe(tmp: Path) -> None:
        os.mknod(tmp / name, mode | 0o600, os.makedev(major, minor))

    return probe


def _root_disk() -> tuple[int, int]:
    """The major:minor of the device / lives on: a block device number that surely exists."""
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def _probes() -> dict[str, tuple[Probe, int]]:
    """Each probe and the errno it must get inside a restricted guest (0: it works)."""
    disk = _root_disk()
    return {
        "open /dev/null": (_open("/dev/null", os.O_RDWR), 0),
        "open own null": (_open_node("null", os.O_RDWR), 0),
        "mknod zero": (_mknod("zero-child", stat.S_IFCHR, 1, 5), 0),
        "open own kmsg": (_open_node("kmsg", os.O_RDONLY), errno.EPERM),
        "open own disk": (_open_node("disk", os.O_RDONLY), errno.EPERM),
        "mknod disk": (_mknod("disk-child", stat.S_IFBLK, *disk), errno.EPERM),
        "mknod mem": (_mknod("mem-child", stat.S_IFCHR, 1, 1), errno.EPERM),
    }


def _make_nodes(tmp: Path) -> None:
    """The nodes the parent makes for the child to open (the parent may: it is unrestricted).

    ``disk`` is the first block device this process can open itself, the root disk if it may
    (a sandbox around the tests may deny some): a denial in the guest is then the guest's.
    """
    os.mknod(tmp / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(tmp / "kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11))
    numbers = ["{}:{}".format(*_root_disk()), *sorted(os.listdir("/sys/dev/block"))]
    for number in numbers:
        major, minor = (int(x) for x in number.split(":"))
        os.mknod(tmp / "disk", stat.S_IFBLK | 0o600, os.makedev(major, minor))
        try:
            _open_node("disk", os.O_RDONLY)(tmp)
            return
        except OSError:
            os.unlink(tmp / "disk")
    pytest.fail(f"this process can open none of the block devices {numbers}")


def _remove_nodes(tmp: Path) -> None:
    for node in tmp.iterdir():
        if stat.S_ISCHR(node.lstat().st_mode) or stat.S_ISBLK(node.lstat().st_mode):
            node.unlink()


def _run_probes(cg: GuestCgroup | None, tmp: Path) -> dict[str, int]:
    """Fork a child that joins ``cg`` (if any) and runs every probe: name -> errno (0: ok)."""
    probes = _probes()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            if cg is not None:
                cg.attach_self()
            results = []
            for name, (probe, _expected) in probes.items():
                try:
                    probe(tmp)
                    results.append(f"{name}=0")
                except OSError as e:
                    results.append(f"{name}={e.errno}")
            os.write(w, "\n".join(results).encode())
        except BaseException as e:
            os.write(w, f"child failed: {e!r}".encode())
            code = 1
        os._exit(code)
    os.close(w)
    try:
        chunks = []
        while True:
            ready, _, _ = select.select([r], [], [], 10.0)
            assert ready, "the probing child did not answer within 10 s"
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    assert 0 == os.waitstatus_to_exitcode(status), text
    return {k: int(v) for k, _, v in (line.rpartition("=") for line in text.splitlines())}


def _without_v1_devices(layout: CgroupLayout) -> CgroupLayout:
    return attrs.evolve(layout, v1=tuple(kv for kv in layout.v1 if kv[0] != "devices"))


@pytest.mark.root
def test_probes_work_outside_any_restriction(tmp_path: Path) -> None:
    """Without a policy every probe succeeds: the denials below are the policy's doing."""
    _make_nodes(tmp_path)
    try:
        assert dict.fromkeys(_probes(), 0) == _run_probes(None, tmp_path)
    finally:
        _remove_nodes(tmp_path)


@pytest.mark.root
@pytest.mark.parametrize("mode", ["both", "v1-only", "bpf-only"])
async def test_guest_gets_only_allowed_devices(prefix: str, tmp_path: Path, mode: str) -> None:
    """In a guest's cgroup allowed nodes open and mknod; block devices and kmsg get EPERM."""
    layout = detect_layout()
    program: DeviceProgram | None = None
    if mode == "v1-only":
        if layout.v1_path("devices") is None:
            pytest.skip("this machine has no v1 devices controller")
    elif layout.unified is None:
        pytest.fail("this machine has no unified hierarchy")
    else:
        program = DeviceProgram.load()
        if mode == "bpf-only":
            layout = _without_v1_devices(layout)
    cg = GuestCgroup(layout, prefix, "dev", device_program=program)
    _make_nodes(tmp_path)
    try:
        assert cg.create()
        expected = {name: want for name, (_probe, want) in _probes().items()}
        assert expected == _run_probes(cg, tmp_path)
    finally:
        _remove_nodes(tmp_path)
        if program is not None:
            program.close()
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await cg.kill_all()
            await cg.remove()
    assert [] == find_leftovers(layout, prefix)


@pytest.mark.root
def test_v1_devices_list_shows_the_allowlist(prefix: str) -> None:
    """The guest's devices.list holds exactly the default rules after create."""
    layout = detect_layout()
    devices_top = layout.v1_path("devices")
    if devices_top is None:
        pytest.skip("this machine has no v1 devices controller")
    cg = GuestCgroup(layout, prefix, "list")
    try:
        cg.create()
        listed = Path(cg.path_in(devices_top), "devices.list").read_text().splitlines()
        assert [r.v1_text() for r in DEFAULT_DEVICE_RULES] == listed
    finally:
        trio.run(cg.remove)
    assert [] == find_leftovers(layout, prefix)


@pytest.mark.root
async def test_failed_attach_on_the_real_layout_leaves_nothing(prefix: str) -> None:
    """A program that cannot be attached fails create and leaves no directory in any hierarchy."""
    layout = detect_layout()
    if layout.unified is None:
        pytest.fail("this machine has no unified hierarchy")
    program = DeviceProgram.load()
    program.close()
    cg = GuestCgroup(layout, prefix, "undo", device_program=program)
    try:
        with pytest.raises(RuntimeFailure, match="closed"):
            cg.create()
        assert [] == find_leftovers(layout, prefix)
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await cg.remove()


@pytest.mark.root
def test_rejected_program_reports_the_verifier_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program the verifier refuses fails load with the verifier's own words in the error."""

    def no_verdict(_rules: object) -> bytes:
        return struct.pack("<BBhi", OP_EXIT, 0, 0, 0)  # exits without setting r0

    monkeypatch.setattr(devices, "assemble", no_verdict)
    with pytest.raises(RuntimeFailure, match=r"(?s)1 instructions\): .*verifier log:.*R0"):
        DeviceProgram.load()


@pytest.mark.root
def test_attach_to_a_missing_directory_names_it(tmp_path: Path) -> None:
    """Attaching to a directory that does not exist names the directory and the error."""
    program = DeviceProgram.load()
    try:
        with pytest.raises(RuntimeFailure, match=r"cannot open cgroup .*/gone: No such file"):
            program.attach(str(tmp_path / "gone"))
        with pytest.raises(RuntimeFailure, match=r"attach the device eBPF program to .*"):
            program.attach(str(tmp_path))  # a directory, but not a cgroup
    finally:
        program.close()
    assert program.closed
    program.close()  # idempotent
