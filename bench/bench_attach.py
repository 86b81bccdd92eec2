"""The first cgroup attach after idle: ``cgroup.procs`` writes against an attach without any.

A diagnostic for issue 13's start-after-idle target (not in the report; ``report.py --smoke``
runs it so that it cannot rot). Most of a start after idle is the supervisor's first write of
the embryo's pid into ``cgroup.procs``: with cgroup2 mounted without ``favordynmods`` (the
default), that write takes the kernel's global cgroup threadgroup lock for writing, which waits
for an RCU grace period when no other writer took it recently (bench_daemon's ``--profile``:
"spawn: embryo into the cgroup"). This measures, with no supervisor around, what an attach that
takes no such lock would cost, so the design can be judged before it is built:

- ``writes`` (what the supervisor does today): a parked process; after an idle gap, ``mkdir``
  of a cgroup in each of the guest's hierarchies, its pid written into each ``cgroup.procs``,
  and one round trip to it (it answers on a pipe);
- ``spare``: a parked process put into spare cgroups of the v1 hierarchies ahead of time (that
  write pays the grace period, off the timed path); after the same idle gap, each spare v1
  cgroup renamed to the guest's name (a v1 cgroup can be renamed within its parent; cgroup2
  ones cannot), the guest's unified cgroup made, and the parked process told to clone a child
  with ``clone3(CLONE_INTO_CGROUP | CLONE_NEWPID)`` into it (which takes the lock only for
  reading, as every fork does); the child answers on the pipe. It is then in the guest's cgroup
  in every hierarchy (v1 ones inherited from its parent), which is checked each run.

Both alternate sample by sample. On a layout without v1 hierarchies (pure v2) ``spare`` needs
no rename. Everything is named ``vsvbatt...``, removed also on failure or Ctrl-C;
``leakcheck --prefix vsvbatt`` runs at the end. Writes ``results/attach.json``.

    .venv/bin/python bench/bench_attach.py [--runs N]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import statistics
import sys
import time
from typing import Any

from bench_daemon import IDLE_GAP, leakcheck, results_path, summary

from supervisor.guest.cgroups import CgroupLayout, detect_layout

PREFIX = "vsvbatt"
#: clone3(2) on x86_64 and on every architecture with the generic system call table
SYS_CLONE3 = 435
CLONE_NEWPID = 0x20000000
CLONE_INTO_CGROUP = 0x200000000

_libc = ctypes.CDLL(None, use_errno=True)


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                     "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")
    ]  # fmt: skip


def _parked(cmd_r: int, ack_w: int) -> int:
    """Fork a parked process (this process must be single-threaded: no trio runs here).

    It reads commands on ``cmd_r``: ``w`` (answer ``k``), ``c<dir>`` (clone a child into the
    unified cgroup ``dir`` in a new pid namespace; the child sends its ``/proc/self/cgroup`` and
    exits), ``x`` or EOF (exit)."""
    pid = os.fork()
    if pid:
        return pid
    try:
        while True:
            msg = os.read(cmd_r, 4096)
            if not msg or msg.startswith(b"x"):
                break
            if msg.startswith(b"w"):
                os.write(ack_w, b"k")
                continue
            fd = os.open(msg[1:].decode(), os.O_RDONLY | os.O_DIRECTORY)
            args = _CloneArgs(
                flags=CLONE_INTO_CGROUP | CLONE_NEWPID, exit_signal=signal.SIGCHLD, cgroup=fd
            )
            child = _libc.syscall(
                ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
            )
            if child == 0:
                with open("/proc/self/cgroup", "rb") as f:
                    os.write(ack_w, b"k" + f.read())
                os._exit(0)
            os.close(fd)
            if child < 0:
                os.write(ack_w, b"E" + os.strerror(ctypes.get_errno()).encode())
                continue
            os.waitpid(child, 0)
    finally:
        os._exit(0)


class _Parked:
    """A parked process and its two pipes."""

    def __init__(self) -> None:
        self.cmd_r, self.cmd_w = os.pipe()
        self.ack_r, self.ack_w = os.pipe()
        self.pid = _parked(self.cmd_r, self.ack_w)

    def ask(self, msg: bytes) -> bytes:
        os.write(self.cmd_w, msg)
        return os.read(self.ack_r, 65536)

    def close(self) -> None:
        os.write(self.cmd_w, b"x")
        os.waitpid(self.pid, 0)
        for fd in (self.cmd_r, self.cmd_w, self.ack_r, self.ack_w):
            os.close(fd)


def _rmdir(path: str) -> None:
    """rmdir a cgroup whose last process just left (its removal can lag); gone is fine."""
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _v1(layout: CgroupLayout) -> list[str]:
    return [h for h in layout.hierarchies() if h != layout.unified]


def attach_by_writes(layout: CgroupLayout) -> float:
    """Today's attach, after the idle gap: seconds."""
    parked = _Parked()
    dirs = [os.path.join(h, f"{PREFIX}-w") for h in layout.hierarchies()]
    try:
        time.sleep(IDLE_GAP)
        t0 = time.perf_counter()
        for d in dirs:
            os.mkdir(d)
        for d in dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(parked.pid))
        answer = parked.ask(b"w")
        dt = time.perf_counter() - t0
        if answer != b"k":
            raise RuntimeError(f"the parked process answered {answer!r}")
        return dt
    finally:
        parked.close()
        for d in dirs:
            _rmdir(d)


def attach_by_spare(layout: CgroupLayout) -> float:
    """Renamed spare v1 cgroups and clone3 into a new unified one, after the idle gap:
    seconds. Raises when the child is not in the guest's cgroup in every hierarchy."""
    if layout.unified is None:
        raise RuntimeError("no unified hierarchy: CLONE_INTO_CGROUP needs one")
    parked = _Parked()
    spare = [os.path.join(h, f"{PREFIX}-.spare") for h in _v1(layout)]
    guest = [os.path.join(h, f"{PREFIX}-s") for h in _v1(layout)]
    unified = os.path.join(layout.unified, f"{PREFIX}-s")
    try:
        for d in spare:  # ahead of time: this write waits for the grace period
            os.mkdir(d)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(parked.pid))
        time.sleep(IDLE_GAP)
        t0 = time.perf_counter()
        for old, new in zip(spare, guest, strict=True):
            os.rename(old, new)
        os.mkdir(unified)
        answer = parked.ask(b"c" + unified.encode())
        dt = time.perf_counter() - t0
        if not answer.startswith(b"k"):
            raise RuntimeError(f"clone3 into {unified}: {answer[1:].decode()}")
        groups = answer[1:].decode().splitlines()
        wrong = [g for g in groups if g.split(":", 2)[2] not in ("/", f"/{PREFIX}-s")]
        placed = [g for g in groups if g.endswith(f"/{PREFIX}-s")]
        if wrong or len(placed) != len(layout.hierarchies()):
            raise RuntimeError(f"the child is not in the guest's cgroups: {groups}")
        return dt
    finally:
        parked.close()
        for d in (*spare, *guest, unified):
            _rmdir(d)


def cleanup(layout: CgroupLayout) -> None:
    for h in layout.hierarchies():
        for name in os.listdir(h):
            if name.startswith(PREFIX):
                _rmdir(os.path.join(h, name))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="samples of each, alternated")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_attach needs root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    layout = detect_layout()
    writes: list[float] = []
    spare: list[float] = []
    try:
        for _ in range(args.runs):
            writes.append(attach_by_writes(layout))
            spare.append(attach_by_spare(layout))
    finally:
        cleanup(layout)
        clean, leak_text = leakcheck(PREFIX)
    results: dict[str, Any] = {
        "runs": args.runs,
        "idle_gap_s": IDLE_GAP,
        "layout": layout.kind,
        "hierarchies": len(layout.hierarchies()),
        "writes": summary(writes),
        "spare_rename_clone3": summary(spare),
        "saved_ms": round(1000 * (statistics.median(writes) - statistics.median(spare)), 3),
        "leakcheck": leak_text,
    }
    w, s = results["writes"], results["spare_rename_clone3"]
    print(
        f"first cgroup attach after a {IDLE_GAP * 1000:.0f} ms idle gap, {layout.kind} layout "
        f"({len(layout.hierarchies())} hierarchies), {args.runs} runs each, alternated:\n"
        f"- mkdir + pid into each cgroup.procs (today): {w['median_ms']:.2f} ms "
        f"({w['min_ms']:.2f}-{w['max_ms']:.2f})\n"
        f"- spare v1 cgroups renamed + clone3(CLONE_INTO_CGROUP): {s['median_ms']:.2f} ms "
        f"({s['min_ms']:.2f}-{s['max_ms']:.2f})\n"
        f"{leak_text}"
    )
    path = results_path("attach.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
