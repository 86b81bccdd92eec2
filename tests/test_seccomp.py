"""The guests' seccomp deny-list: the pure profile, its compilation, and the filter in a kernel.

The kernel tests fork a child, load the compiled program there with the fork server's own
``install_seccomp`` (as an embryo does), make one system call and send its errno back on a pipe.
Each call also runs in an unfiltered child first, so an EPERM is known to come from the filter
and not from the kernel's own checks.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import RuntimeFailure
from supervisor.guest import forkserver
from supervisor.guest.seccomp import (
    CLONE_NEWUSER,
    INSTRUCTION_SIZE,
    RULES,
    ArgMatch,
    Denial,
    SeccompProfile,
    compile_profile,
    describe,
    profile_for,
)

ALWAYS = frozenset(name for rule in RULES if not rule.unless for name in rule.syscalls)
MOUNT_FAMILY = frozenset(
    {
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
    }
)
# every capability name a rule mentions, and a few it does not
CAPS = sorted({c for rule in RULES for c in rule.unless} | {"net_raw", "chown", "kill"})


# -- profile_for, describe (pure) ----------------------------------------------------------------


def test_no_caps_denies_everything_listed() -> None:
    """Without capabilities every call of the table is denied, clone3 with ENOSYS."""
    profile = profile_for(frozenset())
    expected = {name for rule in RULES for name in rule.syscalls}
    assert expected == profile.denied()
    assert {"keyctl", "bpf", "perf_event_open", "syslog", "acct"} <= profile.denied()
    assert MOUNT_FAMILY <= profile.denied()
    assert [Denial("clone3", errno.ENOSYS)] == [d for d in profile.denials if d.syscall == "clone3"]


def test_user_namespaces_are_denied_by_flag_only() -> None:
    """unshare and clone are denied only when their flags (argument 0) carry CLONE_NEWUSER."""
    profile = profile_for(frozenset())
    newuser = ArgMatch(0, CLONE_NEWUSER, CLONE_NEWUSER)
    assert [Denial("clone", errno.EPERM, newuser)] == [
        d for d in profile.denials if d.syscall == "clone"
    ]
    assert [Denial("unshare", errno.EPERM, newuser)] == [
        d for d in profile.denials if d.syscall == "unshare"
    ]


def test_sys_admin_lifts_mount_bpf_perf_userns_but_not_syslog() -> None:
    """Keeping sys_admin allows the mount family, bpf, perf, swap, quotas, user namespaces."""
    denied = profile_for(frozenset({"sys_admin"})).denied()
    lifted = MOUNT_FAMILY | {
        "bpf",
        "perf_event_open",
        "swapon",
        "swapoff",
        "quotactl",
        "fanotify_init",
        "unshare",
        "clone",
        "clone3",
    }
    assert set() == denied & lifted
    assert ALWAYS | {"syslog", "acct"} == denied


@pytest.mark.parametrize(
    ("cap", "allowed"),
    [
        ("bpf", {"bpf"}),
        ("perfmon", {"perf_event_open"}),
        ("syslog", {"syslog"}),
        ("sys_pacct", {"acct"}),
        ("net_raw", set()),
    ],
)
def test_one_cap_lifts_only_its_calls(cap: str, allowed: set[str]) -> None:
    """bpf, perfmon, syslog, sys_pacct each lift their own call and nothing else."""
    without = profile_for(frozenset()).denied()
    assert without - allowed == profile_for(frozenset({cap})).denied()


@given(st.frozensets(st.sampled_from(CAPS)), st.frozensets(st.sampled_from(CAPS)))
def test_more_caps_never_deny_more(a: frozenset[str], b: frozenset[str]) -> None:
    """Keeping more capabilities only removes denials; the always-denied calls stay."""
    small, large = profile_for(a), profile_for(a | b)
    assert set(large.denials) <= set(small.denials)
    assert ALWAYS <= large.denied()


@given(st.lists(st.sampled_from(CAPS)))
def test_equal_caps_give_equal_hashable_profiles(caps: list[str]) -> None:
    """Profiles for the same capabilities (in any order) are equal, hash alike, and sorted."""
    one = profile_for(frozenset(caps))
    # built anew, from the denials in reverse order: equal by value, not the cached object
    two = SeccompProfile(tuple(reversed(profile_for(frozenset(reversed(caps))).denials)))
    assert one is not two
    assert one == two
    assert hash(one) == hash(two)
    assert {one: 1}[two] == 1
    assert sorted(one.denials, key=Denial.sort_key) == list(one.denials)


def test_profile_sorts_and_dedups_hand_built_denials() -> None:
    """A profile built by hand is sorted and free of repeats, so it equals the canonical one."""
    a, b = Denial("keyctl", errno.EPERM), Denial("bpf", errno.EPERM)
    assert SeccompProfile((b, a)) == SeccompProfile((a, b, a))
    assert (b, a) == SeccompProfile((a, b)).denials


@pytest.mark.parametrize("bad", ["CAP_SYS_ADMIN", "cap_sys_admin", "Sys_Admin", ""])
def test_cap_names_must_be_bare_lower_case(bad: str) -> None:
    """A capability spelt with cap_ or in upper case is an error, not a silent no-op."""
    with pytest.raises(ValueError, match="lower case without 'cap_'"):
        profile_for(frozenset({bad}))


def test_arg_match_rejects_dead_conditions() -> None:
    """An index past 5, a mask of 0 or wider than 64 bits, a value outside the mask: refused."""
    with pytest.raises(ValueError, match="0-5"):
        ArgMatch(6, 1, 1)
    with pytest.raises(ValueError, match="outside mask"):
        ArgMatch(0, 0x1, 0x3)
    with pytest.raises(ValueError, match="64-bit"):
        ArgMatch(0, 1 << 64, 0)


def test_describe_has_one_line_per_denial() -> None:
    """describe() gives each denial its errno, its condition and why it is there."""
    profile = profile_for(frozenset())
    lines = describe(profile)
    assert len(profile.denials) == len(lines)
    assert "keyctl: EPERM - the kernel keyrings are not namespaced" in "\n".join(lines)
    unshare = next(line for line in lines if line.startswith("unshare:"))
    assert unshare.startswith("unshare: EPERM when (arg0 & 0x10000000) == 0x10000000 - ")
    assert ["no system call is denied"] == describe(SeccompProfile(()))


# -- compile_profile (libseccomp, no root) -------------------------------------------------------


def test_compiled_program_is_whole_nontrivial_and_cached() -> None:
    """The program is whole 8-byte instructions, longer than one per denial, and cached."""
    profile = profile_for(frozenset())
    program = compile_profile(profile)
    assert 0 == len(program) % INSTRUCTION_SIZE
    assert len(program) // INSTRUCTION_SIZE > len(profile.denials)
    assert program is compile_profile(profile_for(frozenset()))
    assert len(compile_profile(profile_for(frozenset({"sys_admin"})))) < len(program)


def test_unknown_syscall_is_a_runtime_failure() -> None:
    """A name libseccomp does not know fails the compilation with a message naming it."""
    profile = SeccompProfile((Denial("no_such_call", errno.EPERM),))
    with pytest.raises(RuntimeFailure, match="'no_such_call'"):
        compile_profile(profile)


def test_missing_libseccomp_is_a_runtime_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libseccomp.so the error says which Debian package to install."""
    import ctypes.util

    monkeypatch.delitem(sys.modules, "pyseccomp")  # import it afresh; restored afterwards
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    profile = SeccompProfile((Denial("acct", errno.EACCES),))  # not compiled (cached) before
    with pytest.raises(RuntimeFailure, match="install Debian's libseccomp2"):
        compile_profile(profile)


def test_importing_the_module_does_not_load_libseccomp() -> None:
    """pyseccomp (which searches for the library at import) is imported only when compiling."""
    code = "import sys, supervisor.guest.seccomp; print('pyseccomp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


# -- the filter in the kernel (root) -------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.unshare.argtypes = [ctypes.c_int]


def _nr(name: str) -> int:
    """The native number of a system call, as libseccomp knows it."""
    import pyseccomp

    nr: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    assert nr >= 0, f"{name} is not a native system call here"
    return nr


def _ok(rc: int) -> int:
    """Raise OSError with errno for a libc-style -1 result."""
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _syscall(name: str, *args: int) -> int:
    return _ok(_libc.syscall(ctypes.c_long(_nr(name)), *(ctypes.c_long(a) for a in args)))


def _errno_in_child(
    program: bytes | None, call: Callable[[], object], *, mount_ns: bool = False
) -> int:
    """errno of ``call()`` in a forked child under ``program`` (None: no filter), 0 if it worked.

    With ``mount_ns`` the child first moves to a private mount namespace, so a mount the filter
    fails to stop cannot reach the host.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            os.close(r)
            if mount_ns:
                _ok(_libc.unshare(forkserver.CLONE_NEWNS))
                forkserver.run_mount(("private", "/", "", "", False))
            if program is not None:
                forkserver.install_seccomp(program)
            try:
                call()
                err = 0
            except OSError as e:
                err = e.errno or -1
            os.write(w, b"%d" % err)
            code = 0
        except BaseException as e:
            os.write(w, f"setup failed: {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        out = os.read(r, 4096) if ready else b"timeout"
    finally:
        os.close(r)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status), out.decode(errors="replace")
    return int(out)


def _keyctl() -> None:
    # KEYCTL_GET_KEYRING_ID of KEY_SPEC_PROCESS_KEYRING, not creating it
    _syscall("keyctl", 0, -2, 0)


def _init_module() -> None:
    # an empty image: EFAULT/ENOEXEC from the kernel, if the filter lets it through
    _syscall("init_module", 0, 0, 0)


def _clone3() -> None:
    # size 0 is below CLONE_ARGS_SIZE_VER0: EINVAL from the kernel, no process is made
    _syscall("clone3", 0, 0)


def _unshare_newuser() -> None:
    _ok(_libc.unshare(CLONE_NEWUSER))


def _clone_newuser() -> None:
    # clone(2) like fork, plus CLONE_NEWUSER; flags are argument 0 on the arches supported here
    pid = _syscall("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:  # pragma: no cover - the new process: leave at once
        os._exit(0)
    os.waitpid(pid, 0)


def _x32_keyctl() -> None:
    # keyctl through the x32 ABI (x86_64's numbers with bit 30 set): the filter must see it even
    # where the kernel would answer ENOSYS because x32 is disabled
    _ok(_libc.syscall(ctypes.c_long(0x40000000 | _nr("keyctl")), 0, -2, 0))


def _fork_and_thread() -> None:
    pid = os.fork()  # glibc's fork uses clone(2) without CLONE_NEWUSER
    if pid == 0:  # pragma: no cover - the grandchild
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 7:
        raise OSError(errno.ECHILD, "the forked child did not run")
    # pthread_create tries clone3 first and falls back to clone(2) on ENOSYS
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    thread.start()
    thread.join()
    if not seen:
        raise OSError(errno.ECHILD, "the thread did not run")


def _ordinary_calls() -> None:
    os.getpid()
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not os.read(fd, 100).startswith(b"Name:"):
            raise OSError(errno.EIO, "unexpected /proc/self/status")
    finally:
        os.close(fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))


def _mount_tmpfs(target: Path) -> Callable[[], None]:
    def call() -> None:
        _ok(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, b"size=1m"))

    return call


@pytest.fixture(scope="module")
def no_caps() -> bytes:
    """The program for a guest that keeps no capability."""
    return compile_profile(profile_for(frozenset()))


@pytest.fixture(scope="module")
def sys_admin() -> bytes:
    """The program for a guest that keeps sys_admin."""
    return compile_profile(profile_for(frozenset({"sys_admin"})))


@pytest.mark.root
@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (_keyctl, errno.EPERM),
        (_init_module, errno.EPERM),
        (_unshare_newuser, errno.EPERM),
        (_clone_newuser, errno.EPERM),
        (_clone3, errno.ENOSYS),
        (_fork_and_thread, 0),
        (_ordinary_calls, 0),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)).lstrip("_"),
)
def test_filter_without_caps(no_caps: bytes, call: Callable[[], None], expected: int) -> None:
    """Under the no-capability program the listed calls fail with their errno, others work."""
    unfiltered = _errno_in_child(None, call)
    if expected:
        assert expected != unfiltered, "the kernel itself refuses this call here"
    else:
        assert 0 == unfiltered
    assert expected == _errno_in_child(no_caps, call)


@pytest.mark.root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 is an x86_64 ABI")
def test_filter_covers_the_x32_abi(no_caps: bytes) -> None:
    """keyctl by its x32 number is denied as well: the x32 part of the filter catches it."""
    assert errno.EPERM != _errno_in_child(None, _x32_keyctl)
    assert errno.EPERM == _errno_in_child(no_caps, _x32_keyctl)


@pytest.mark.root
def test_sys_admin_program_allows_user_namespaces_not_keyctl(sys_admin: bytes) -> None:
    """With sys_admin kept, unshare(CLONE_NEWUSER) works and keyctl is still denied."""
    assert 0 == _errno_in_child(sys_admin, _unshare_newuser)
    assert errno.EINVAL == _errno_in_child(sys_admin, _clone3)
    assert errno.EPERM == _errno_in_child(sys_admin, _keyctl)


@pytest.mark.root
def test_mount_needs_sys_admin(no_caps: bytes, sys_admin: bytes, tmp_path: Path) -> None:
    """A tmpfs mount (in a private mount namespace) fails with EPERM unless sys_admin is kept."""
    call = _mount_tmpfs(tmp_path)
    assert errno.EPERM == _errno_in_child(no_caps, call, mount_ns=True)
    assert 0 == _errno_in_child(sys_admin, call, mount_ns=True)
    assert not os.path.ismount(tmp_path)
