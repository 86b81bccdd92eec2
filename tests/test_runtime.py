"""The runtime seam: what runtime.py may import, who may check a runtime's type, who owns the
spawn pools, and that a LinuxRuntime leaves no process behind once it is left.

- supervisor/runtime.py holds the protocols and their result types and imports nothing of
  ``supervisor.guest`` (an import for annotations only, under ``TYPE_CHECKING``, is allowed);
- no module outside supervisor/guest/ does ``isinstance`` on a concrete runtime, cgroup or
  process type: the supervisor asks the runtime (``cgroup_layout``, ``controller_dir``);
- no module keeps a pool at module level (the fork servers and spare embryos belong to a
  :class:`~supervisor.guest.spawn.SpawnPool` owned by the runtime), and leaving
  ``async with LinuxRuntime()`` (or a supervisor's run) leaves no fork server or embryo.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.bus import Bus
from supervisor.daemon import Supervisor
from supervisor.errors import RuntimeFailure
from supervisor.guest import spawn
from supervisor.guest.cgroups import CgroupLayout
from supervisor.guest.linux import LinuxRuntime
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.hooks import GuestContext
from supervisor.model import CpuTune, Domain, Filesystem, OsSpec
from supervisor.runtime import Runtime
from supervisor.sched.subsystem import SchedSubsystem
from supervisor.testing.fakeruntime import FakeRuntime

PACKAGE = Path(__file__).resolve().parent.parent / "supervisor"
#: concrete runtime-side types nothing outside the runtime may test for
CONCRETE = frozenset(
    {
        "LinuxRuntime",
        "GuestCgroup",
        "GuestProcess",
        "PendingStart",
        "SpawnPool",
        "FakeRuntime",
        "FakeCgroup",
        "FakeProcess",
    }
)


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        yield rel, ast.parse(path.read_text(), filename=rel)


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for child in node.body:
                end = child.end_lineno or child.lineno
                lines.update(range(child.lineno, end + 1))
    return lines


# -- the import graph ---------------------------------------------------------------------------


def test_runtime_imports_nothing_of_the_guest_package() -> None:
    """runtime.py is the seam: no run-time import of supervisor.guest (annotations only)."""
    path = PACKAGE / "runtime.py"
    tree = ast.parse(path.read_text())
    annotation_only = _type_checking_blocks(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        guest = any(n == "supervisor.guest" or n.startswith("supervisor.guest.") for n in names)
        if guest and node.lineno not in annotation_only:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert [] == found


def test_importing_runtime_loads_no_guest_module() -> None:
    """In a fresh interpreter, importing supervisor.runtime loads nothing of supervisor.guest."""
    code = (
        "import sys, supervisor.runtime\n"
        "print(sorted(m for m in sys.modules if m.startswith('supervisor.guest')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert "[]" == out.strip()


# -- no type checks on concrete runtimes --------------------------------------------------------


def _named(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Tuple):
        return set().union(*(_named(e) for e in node.elts))
    if isinstance(node, ast.BinOp):  # isinstance(x, A | B)
        return _named(node.left) | _named(node.right)
    return set()


def test_no_isinstance_on_concrete_runtime_types_outside_the_runtime() -> None:
    """Outside supervisor/guest/ (the runtime itself), nothing asks which runtime, cgroup or
    process it has: the supervisor asks the runtime what it can do instead."""
    found = []
    for rel, tree in _modules():
        if rel.startswith("supervisor/guest/"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
            ):
                hit = _named(node.args[1]) & CONCRETE
                if hit:
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert [] == found


# -- no module-level pools ----------------------------------------------------------------------

#: module-level mutable state that is no pool: a signal handler's notes (signals are
#: process-wide) and the fork server's own state (forkserver.py runs in a process of its own)
ALLOWED_MODULE_STATE = {
    ("supervisor/stopsignals.py", "_noted"),
    ("supervisor/guest/forkserver.py", "_trees"),
    ("supervisor/guest/forkserver.py", "_masks"),
}
EMPTY_CONTAINERS = ("list", "dict", "set", "deque", "defaultdict", "Counter", "OrderedDict")


def _is_empty_container(node: ast.expr) -> bool:
    if isinstance(node, ast.List | ast.Set | ast.Dict):
        return not getattr(node, "elts", None) and not getattr(node, "keys", None)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in EMPTY_CONTAINERS and not node.args
    return False


def test_no_module_level_pools() -> None:
    """No module of the package keeps processes or other mutable pools at module level: no
    empty container filled at run time, no ``global`` rebinding one, no ``atexit`` hook."""
    found = []
    for rel, tree in _modules():
        for node in tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign):
                targets, value = [node.target], node.value
            if value is None or not _is_empty_container(value):
                continue
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else ast.unparse(target)
                if (rel, name) not in ALLOWED_MODULE_STATE:
                    found.append(f"{rel}:{node.lineno}: {name} = {ast.unparse(value)}")
        for sub in ast.walk(tree):
            if isinstance(sub, ast.Global) and rel != "supervisor/guest/forkserver.py":
                found.append(f"{rel}:{sub.lineno}: global {', '.join(sub.names)}")
            if isinstance(sub, ast.Import) and any(a.name == "atexit" for a in sub.names):
                found.append(f"{rel}:{sub.lineno}: imports atexit")
            if isinstance(sub, ast.ImportFrom) and sub.module == "atexit":
                found.append(f"{rel}:{sub.lineno}: imports atexit")
    assert [] == found


def test_spawn_keeps_no_pool_of_its_own() -> None:
    """The fork servers and spares are a SpawnPool's, not the spawn module's."""
    gone = ("_servers", "_embryos", "_embryos_owner", "_next_server", "_finishing")
    assert [] == [name for name in gone if hasattr(spawn, name)]
    assert not hasattr(LinuxRuntime, "spawn")


# -- capability questions -----------------------------------------------------------------------


def test_runtimes_answer_capability_questions() -> None:
    """The fake has no cgroup layout and no controller files; both conform to Runtime."""
    fake: Runtime = FakeRuntime()
    assert fake.cgroup_layout() is None
    assert fake.cgroup("p", "g").controller_dir("cpu") is None
    layout = CgroupLayout(
        root="/cg", kind="v2", unified="/cg", v2_controllers=frozenset({"cpu", "memory"})
    )
    real: Runtime = LinuxRuntime(layout=layout)
    assert layout is real.cgroup_layout()
    cgroup = real.cgroup("p", "g")
    assert "/cg/p-g" == cgroup.controller_dir("cpu")
    assert cgroup.controller_dir("pids") is None


async def test_the_scheduler_leaves_a_cgroup_without_cpu_files_alone(tmp_path: Path) -> None:
    """A cgroup with no cpu files on a machine that has the controller (an in-memory runtime's)
    gets no CPU limits and no error, even for a domain that asks for some."""
    layout = CgroupLayout(root="/cg", kind="v2", unified="/cg", v2_controllers=frozenset({"cpu"}))
    sched = SchedSubsystem.open(Bus(), layout, hz=250)
    rt = FakeRuntime()
    domain = Domain(name="g", cputune=CpuTune(shares=512))
    ctx = GuestContext(domain, rt.cgroup("p", "g"), "p", tmp_path)
    await sched._prepare(ctx)
    assert ctx.records.sched is None
    assert {} == sched._tuned_guests()


async def test_the_scheduler_refuses_cpu_limits_without_the_controller(tmp_path: Path) -> None:
    """On a machine without the cpu controller, a domain that asks for CPU limits fails."""
    layout = CgroupLayout(root="/cg", kind="v2", unified="/cg", v2_controllers=frozenset())
    sched = SchedSubsystem.open(Bus(), layout, hz=250)
    domain = Domain(name="g", cputune=CpuTune(shares=512))
    ctx = GuestContext(domain, LinuxRuntime(layout=layout).cgroup("p", "g"), "p", tmp_path)
    with pytest.raises(RuntimeFailure, match="need the cpu cgroup controller"):
        await sched._prepare(ctx)


# -- the pools live and die with the runtime (root) ---------------------------------------------


def _children() -> set[int]:
    """Pids whose parent is this process (zombies included)."""
    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _is_open(pool: spawn.SpawnPool) -> bool:
    return pool.is_open


@pytest.mark.root
async def test_leaving_the_runtime_leaves_no_process() -> None:
    """Inside ``async with LinuxRuntime()`` the fork servers and spares are our children; once
    it is left, every one of them is gone (reaped), and starts are refused with a clear error."""
    before = _children()
    rt = LinuxRuntime()
    with pytest.raises(RuntimeFailure, match="no spawn pool is open"):
        await rt.begin_spawn(Domain(name="g"), log_path=None)
    assert before == _children()  # made, not entered: nothing started
    async with rt:
        servers = rt.pool.server_pids()
        assert servers
        spares = [await e.born() for kind in rt.pool.spares.values() for e in kind]
        assert len(spares) == spawn.spare_embryos()
        ours = set(servers) | {c.pid for c in spares}
        assert ours <= _children() - before
        async with rt:  # entered again while open: counts, changes nothing
            assert servers == rt.pool.server_pids()
        assert _is_open(rt.pool)
    assert not _is_open(rt.pool)
    assert [] == [pid for pid in ours if _alive(pid)]
    assert before == _children()
    with pytest.raises(RuntimeFailure, match="no spawn pool is open"):
        await rt.begin_spawn(Domain(name="g"), log_path=None)
    async with rt:  # and it opens again, with servers of its own
        assert rt.pool.server_pids()
        assert not set(rt.pool.server_pids()) & ours
    assert before == _children()


@pytest.mark.root
async def test_leaving_the_runtime_when_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled body (a supervisor stopping) still closes the pool: nothing is left."""
    monkeypatch.setenv("VSV_SPARE_EMBRYOS", "3")
    before = _children()
    with trio.move_on_after(0.2):
        async with LinuxRuntime() as rt:
            await trio.sleep_forever()
    assert not _is_open(rt.pool)
    assert before == _children()


@pytest.mark.root
async def test_a_supervisor_run_leaves_no_pool(
    tmp_path: Path, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A supervisor that made its own runtime opens its pools for its run only: after a start
    (whose spent spare a top-up task replaces) and the end of the run, no fork server or embryo
    is left, and the guest was destroyed."""
    root = prepare_busybox_root(str(tmp_path_factory.mktemp("rootfs") / "bb"))
    before = _children()
    sup = Supervisor(
        state_dir=tmp_path / "state", run_dir=tmp_path / "run", prefix=prefix, networking=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert isinstance(sup.runtime, LinuxRuntime)
        pool = sup.runtime.pool
        assert _is_open(pool)
        assert pool.server_pids()
        dom = Domain(
            name="g",
            os=OsSpec(init="/bin/sh", initargs=("-c", "exec sleep 1000")),
            filesystems=(Filesystem(source=root, target="/"),),
            privnet=True,
        )
        await sup.define_domain(dom)
        await sup.start_domain("g")
        kind = spawn.DEFAULT_EMBRYO_FLAGS
        with trio.fail_after(5):  # the spent spare is replaced by the pool's own task
            while len(pool.spares.get(kind, [])) < spawn.spare_embryos():
                await trio.sleep(0.005)
        ours = set(pool.server_pids()) | {
            (await e.born()).pid for spares in pool.spares.values() for e in spares
        }
        await sup.destroy_domain("g")
        nursery.cancel_scope.cancel()
    assert not _is_open(pool)
    assert [] == [pid for pid in ours if _alive(pid)]
    assert before == _children()
