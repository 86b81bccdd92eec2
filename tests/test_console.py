"""Real guests with a console: the pty of the guest's own devpts, its relay to the log and to
``vsv console`` driven through a real terminal (tests/terminal.py), and the confinement of a
guest that has one.

The supervisor and its API run in the test's trio run; ``vsv console`` runs as a process on a
pty the test types into. Blocking terminal steps run in a thread, so the supervisor relays
meanwhile.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing

from supervisor.api.server import serve_api
from supervisor.bus import Bus
from supervisor.daemon import Supervisor
from supervisor.guest.cgroups import GuestCgroup, detect_layout
from supervisor.guest.ptykeeper import SOCKET_NAME, ConsoleKeeper
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.guest.spawn import SpawnPool, spawn_init
from supervisor.hooks import GuestContext
from supervisor.journal import Journal
from supervisor.lifecycle import RestartPolicy
from supervisor.model import Console, Domain, Filesystem, OsSpec
from supervisor.runtime import GuestExit
from supervisor.xml import parse_domain
from tests.fake_supervisor import short_tmpdir
from tests.terminal import Person
from tests.test_confinement import (
    KINDS,
    PROBE,
    PYTHON,
    Kind,
    _domain_xml,
    _escaped,
    _host_bound_names,
    _rootfs,
)

pytestmark = pytest.mark.root

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(partial(fn, *args))


# -- the pty, as the spawn makes it --------------------------------------------------------------


async def _read_all(master: int) -> bytes:
    """What the guest writes, until every end of its pty is closed."""
    out = b""
    with trio.fail_after(20):
        while True:
            await trio.lowlevel.wait_readable(master)
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the last end of the slave closed
                    return out
                raise
            out += data


@pytest.mark.parametrize("idmap", [False, True], ids=["plain", "idmap"])
async def test_init_gets_a_pty_of_its_own_devpts_as_controlling_terminal(
    tmp_path: Path, prefix: str, idmap: bool
) -> None:
    """stdin, stdout and stderr are a pty of the guest's own devpts (no host pty number), the
    controlling terminal, also at /dev/console; the master reaches the supervisor."""
    from supervisor.model import IdMapEntry

    owner = (500000, 500000) if idmap else None
    root = prepare_busybox_root(str(tmp_path / "bb"), owner=owner)
    script = (
        "echo tty=$(tty); echo ctty=$(cut -d' ' -f7 /proc/self/stat);"
        " echo console=$(stat -c %t:%T /dev/console); echo pts=$(ls /dev/pts | tr '\\n' ' ');"
        " echo same=$(test /dev/console -ef /proc/self/fd/0 && echo yes);"
        " read line; echo got=$line"
    )
    maps = (
        (IdMapEntry("uid", 0, 500000, 65536), IdMapEntry("gid", 0, 500000, 65536)) if idmap else ()
    )
    dom = Domain(
        name="g",
        os=OsSpec(init="/bin/sh", initargs=("-c", script)),
        filesystems=(Filesystem(source=root, target="/"),),
        idmap=maps,
        privnet=True,  # a user namespace's sysfs needs a network namespace of its own
        consoles=(Console(),),
    )
    cgroup = GuestCgroup(detect_layout(), prefix, "g")
    cgroup.create()
    try:
        async with SpawnPool() as pool:
            guest = await spawn_init(pool, dom, cgroup, log_path=str(tmp_path / "log"))
            master = guest.take_console()
            assert master is not None
            try:
                os.set_blocking(master, False)
                os.write(master, b"typed\n")
                shown = (await _read_all(master)).decode()
            finally:
                os.close(master)
            with trio.fail_after(10):
                assert GuestExit(status=0) == await guest.wait()
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await cgroup.kill_all()
            await cgroup.remove()
    lines = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert "/dev/pts/0" == lines["tty"].strip()
    assert str(os.makedev(136, 0)) == lines["ctty"].strip()  # pts 0 is init's terminal
    assert "88:0" == lines["console"].strip()  # 136:0 in hex
    assert "0 ptmx" == lines["pts"].strip()  # the guest's devpts: none of the host's ptys
    assert ("yes", "typed") == (lines["same"].strip(), lines["got"].strip())
    assert not (tmp_path / "log").exists() or "" == (tmp_path / "log").read_text()


# -- the supervisor, its API and `vsv console` ---------------------------------------------------


@attrs.define
class Served:
    sup: Supervisor
    base: Path
    sock: str
    ro: str
    root: Path

    def log(self, name: str) -> str:
        path = self.base / "run" / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
async def served(prefix: str, nursery: trio.Nursery) -> AsyncIterator[Served]:
    """A supervisor on the real runtime with its API on short socket paths; its guests are
    destroyed afterwards, whatever happened."""
    base = short_tmpdir()
    sock, ro = str(base / "rw.sock"), str(base / "ro.sock")
    journal = Journal.open(base / "journal")
    bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
    bus.add_sink(journal.append)
    sup = Supervisor(
        state_dir=base / "state",
        run_dir=base / "run",
        prefix=prefix,
        shutdown_timeout=5.0,
        restart_policy=RestartPolicy(max_restarts=3, window=60, backoff_base=0.02, backoff_cap=0.1),
        bus=bus,
        hidden_paths=(sock, ro),
    )
    running = trio.CancelScope()
    ended = trio.Event()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with running:
                await sup.run(task_status=task_status)
        finally:
            ended.set()

    with trio.CancelScope() as api_scope:
        await nursery.start(run)
        await nursery.start(partial(serve_api, sup, journal, socket_path=sock, ro_socket_path=ro))
    try:
        yield Served(sup, base, sock, ro, Path(prepare_busybox_root(str(base / "rootfs"))))
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            for guest in list(sup.guests.values()):
                if guest.busy or guest.cgroup is not None:
                    try:
                        await sup.destroy_domain(guest.domain.name)
                    except Exception:
                        pass
            api_scope.cancel()
            # the supervisor ends before its run dir goes: a console keeper being started
            # meanwhile would otherwise lose its socket file and wait for ever
            running.cancel()
            await ended.wait()
        journal.close()
        shutil.rmtree(base, ignore_errors=True)


def _shell(name: str, root: Path, **changes: Any) -> Domain:
    """A guest whose init is an interactive busybox shell on its console."""
    domain = Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initenv=(("PS1", "G$ "),)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        privnet=True,
        consoles=(Console(),),
    )
    return attrs.evolve(domain, **changes)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_a_person_at_the_console_of_a_busybox_shell(served: Served) -> None:
    """Type a command into the guest's shell and read its answer, job control, the window size,
    Ctrl-] to detach, output meanwhile in the log, reattach, a second client refused, --force
    takes over; the log has everything the console showed."""
    sup = served.sup
    await sup.define_domain(_shell("sh1", served.root))
    await sup.start_domain("sh1")
    first = Person(served.sock, "sh1", rows=33, cols=101)
    try:
        await _in_thread(first.read_until, b"Ctrl + ]")
        first.type(b"echo $((6*7))\r")
        assert b"42" in await _in_thread(first.read_until, b"42\r\n")
        assert {"live": 1, "attached": 1} == sup.statistics()["consoles"]
        # a shell that is the session leader on its controlling terminal has job control
        first.type(b"sleep 1000 &\r")
        await _in_thread(first.read_until, b"G$ ")
        first.type(b"jobs; busybox stty size\r")
        assert b"Running" in await _in_thread(first.read_until, b"33 101\r\n")
        first.resize(40, 132)  # SIGWINCH: vsv console tells the supervisor, the guest's pty follows
        await _in_thread(first.read_until, b"G$ ")
        first.type(b"busybox stty size\r")
        await _in_thread(first.read_until, b"40 132\r\n")
        # output while nobody is attached goes to the log, all of it
        first.type(b"(for i in 1 2 3 4 5; do sleep 0.1; echo tick$i; done) &\r")
        await _in_thread(first.read_until, b"G$ ")
        first.type(b"\x1d")
        assert 0 == await _in_thread(first.wait)
        assert first.restored()
        await _until(lambda: "tick5" in served.log("sh1"), "the ticks in the log")
        again = Person(served.sock, "sh1")
        try:
            await _in_thread(again.read_until, b"Ctrl + ]")
            again.type(b"echo back-$((1+1))\r")
            await _in_thread(again.read_until, b"back-2\r\n")
            refused = Person(served.sock, "sh1")
            try:
                assert 1 == await _in_thread(refused.wait)
                assert "--force" in refused.shown()
            finally:
                refused.close()
            forced = Person(served.sock, "sh1", "--force")
            try:
                await _in_thread(forced.read_until, b"Ctrl + ]")
                assert 1 == await _in_thread(again.wait)
                assert "taken over" in again.shown()
                forced.type(b"echo forced-$((2+2))\r")
                await _in_thread(forced.read_until, b"forced-4\r\n")
                forced.type(b"\x1d")
                assert 0 == await _in_thread(forced.wait)
            finally:
                forced.close()
        finally:
            again.close()
    finally:
        first.close()
    log = served.log("sh1")
    for shown in ("42", "Running", "33 101", "40 132", "tick1", "tick5", "back-2", "forced-4"):
        assert shown in log, (shown, log)


async def test_the_console_follows_a_reboot_and_ends_when_the_guest_stops(
    served: Served,
) -> None:
    """An attached client sees the next boot after a reboot; a destroy ends its session (the
    client says so, exit 0); the verb then says the domain is not running."""
    sup = served.sup
    await sup.define_domain(_shell("sh2", served.root))
    await sup.start_domain("sh2")
    person = Person(served.sock, "sh2")
    try:
        await _in_thread(person.read_until, b"Ctrl + ]")
        person.type(b"echo first-boot\r")
        await _in_thread(person.read_until, b"first-boot\r\n")
        await sup.reboot_domain("sh2")
        runner = sup.guests["sh2"]
        await _until(
            lambda: runner.restarts == 1 and runner.console is not None and runner.console.live,
            "the new boot's pty",
        )
        person.type(b"echo second-boot\r")
        await _in_thread(person.read_until, b"second-boot\r\n")
        await sup.destroy_domain("sh2")
        assert 0 == await _in_thread(person.wait)
        assert "domain 'sh2' stopped" in person.shown()
    finally:
        person.close()
    late = Person(served.sock, "sh2")
    try:
        assert 1 == await _in_thread(late.wait)
        assert "is not running" in late.shown()
    finally:
        late.close()


async def test_a_guest_that_nobody_reads_never_blocks(served: Served) -> None:
    """A guest writing much more than a pty holds, with no client: it ends, all in the log."""
    script = "i=0; while [ $i -lt 3000 ]; do echo line-$i-0123456789abcdef; i=$((i+1)); done"
    domain = _shell("flood", served.root, os=OsSpec(init="/bin/sh", initargs=("-c", script)))
    await served.sup.define_domain(domain)
    await served.sup.start_domain("flood")
    await _until(lambda: served.sup.domain_status("flood").state == "SHUTOFF", "the end")
    assert "line-2999-0123456789abcdef" in served.log("flood")


# -- confinement -------------------------------------------------------------------------------

#: one of each root and idmap, in the lxc dialect: the console changes nothing the dialect does
CONSOLE_KINDS = [k for k in KINDS if k.dialect == "lxc"]


@pytest.mark.parametrize("kind", CONSOLE_KINDS, ids=[k.name for k in CONSOLE_KINDS])
async def test_every_escape_fails_from_an_init_on_a_console(served: Served, kind: Kind) -> None:
    """The escape probe (tests/test_confinement.py) run as the init of a guest with a console
    finds every way out blocked, and holds only ptys of the guest's own devpts."""
    name = f"c{kind.name}"
    probe_args = json.dumps(
        {
            "marker": str(served.base / "run" / "escape-marker"),
            "sockets": [served.sock, served.ro],
            "other_cgroup": f"{served.sup.prefix}-other",
            "block_dev": [os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev)],
            "state_dir": str(served.base / "state"),
            "block_node": "/vsv-blk",
            "allowed": _host_bound_names(),
        }
    )
    (served.base / "run").mkdir(exist_ok=True)
    (served.base / "run" / "escape-marker").write_text("the host's\n")
    init = [
        "/bin/busybox", "sh", "-c",
        f"{PYTHON} -I -S {PROBE} \"$0\"; exec /bin/busybox sleep 1000000",
        probe_args,
    ]  # fmt: skip
    root = _rootfs(served.base, name, kind, 0)
    xml = _domain_xml(name, kind, root, init)
    domain = attrs.evolve(parse_domain(xml.encode()), consoles=(Console(),))
    await served.sup.define_domain(domain)
    await served.sup.start_domain(name)

    def report() -> dict[str, Any] | None:
        """The probe's report once its line is whole (the relay copies the pty in chunks)."""
        lines = served.log(name).splitlines(keepends=True)
        whole = [ln for ln in lines if ln.startswith("{") and ln.endswith("\n")]
        return json.loads(whole[-1]) if whole else None

    await _until(lambda: report() is not None, "the probe's report", timeout=30)
    result = report()
    assert result is not None
    assert {} == _escaped(result)
    assert "blocked" in result["results"]["host_ptys"]
    assert "console" in result["results"]["host_ptys"]
    assert stat.S_ISCHR(os.stat(f"/proc/{served.sup.domain_status(name).init_pid}/fd/0").st_mode)


# -- a console outlives its supervisor ---------------------------------------------------------


@attrs.define
class Generation:
    """One supervisor (and its API) of a succession on the same dirs."""

    sup: Supervisor
    scope: trio.CancelScope


def _keepers(run_dir: Path) -> list[int]:
    """Pids of console keepers serving ``run_dir``."""
    sock = str(run_dir / "console-keeper.sock")
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if sock.encode() in argv and any(a.endswith(b"ptykeeper.py") for a in argv):
                out.append(int(entry))
    return out


def _kept(run_dir: Path) -> dict[str, str]:
    keeper = ConsoleKeeper(str(run_dir / SOCKET_NAME))
    try:
        return keeper.kept()
    finally:
        keeper.close()


async def test_a_console_outlives_its_supervisor(
    prefix: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor that ends without stopping its guests (a crash, an upgrade) leaves their
    consoles with the console keeper: the shell that is init neither hangs up nor loses what it
    writes meanwhile, and the successor serves the same console to `vsv console`."""
    from supervisor.store import ConfigStore

    base = short_tmpdir()
    root = Path(prepare_busybox_root(str(base / "rootfs")))
    sock, ro = str(base / "rw.sock"), str(base / "ro.sock")
    domain = _shell("kept", root)
    # the stored definition loses its <console> until the domain-XML branch reads it: put it
    # back for the successor, as that branch's codec will
    load = ConfigStore.load_domains

    def with_console(store: ConfigStore) -> tuple[list[Domain], list[str]]:
        domains, problems = load(store)
        return [attrs.evolve(d, consoles=domain.consoles) for d in domains], problems

    monkeypatch.setattr(ConfigStore, "load_domains", with_console)
    journal = Journal.open(base / "journal")

    async def generation() -> Generation:
        bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
        bus.add_sink(journal.append)
        sup = Supervisor(
            state_dir=base / "state",
            run_dir=base / "run",
            prefix=prefix,
            bus=bus,
            hidden_paths=(sock, ro),
        )

        async def serve(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    await inner.start(sup.run)
                    await inner.start(
                        partial(serve_api, sup, journal, socket_path=sock, ro_socket_path=ro)
                    )
                    task_status.started(scope)

        return Generation(sup, await nursery.start(serve))

    first = await generation()
    successor: Generation | None = None
    try:
        await first.sup.define_domain(domain)
        await first.sup.start_domain("kept")
        init = first.sup.domain_status("kept").init_pid
        person = Person(sock, "kept")
        try:
            await _in_thread(person.read_until, b"Ctrl + ]")
            # a job that writes once the supervisor is gone
            person.type(b"(while [ ! -e /tmp/go ]; do sleep 0.05; done; echo while-down) &\r")
            await _in_thread(person.read_until, b"G$ ")
            person.type(b"\x1d")
            assert 0 == await _in_thread(person.wait)
        finally:
            person.close()
        await _until(lambda: "kept" in _kept(base / "run"), "the console with the keeper")
        (keeper,) = _keepers(base / "run")
        # out of the supervisor's cgroup (a service manager kills what is left in that one)
        assert f"{prefix}.console-keeper" in Path(f"/proc/{keeper}/cgroup").read_text()
        first.scope.cancel()  # the supervisor ends; its guests stay
        await trio.testing.wait_all_tasks_blocked()
        (root / "tmp" / "go").touch()
        successor = await generation()
        assert ("RUNNING", init) == (
            successor.sup.domain_status("kept").state,
            successor.sup.domain_status("kept").init_pid,
        )
        await _until(lambda: "while-down" in (base / "run" / "logs" / "kept.log").read_text(),
                     "what the guest wrote while no supervisor ran, in the log")  # fmt: skip
        again = Person(sock, "kept")
        try:
            await _in_thread(again.read_until, b"Ctrl + ]")
            again.type(b"echo still-$((3*3))\r")
            await _in_thread(again.read_until, b"still-9\r\n")
            again.type(b"\x1d")
            assert 0 == await _in_thread(again.wait)
        finally:
            again.close()
        await successor.sup.destroy_domain("kept")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            for gen in (successor, first):
                if gen is None:
                    continue
                for guest in list(gen.sup.guests.values()):
                    if guest.busy or guest.cgroup is not None:
                        try:
                            await gen.sup.destroy_domain(guest.domain.name)
                        except Exception:
                            pass
                gen.scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            await _until(lambda: not _keepers(base / "run"), "the keeper's exit")
        journal.close()
        shutil.rmtree(base, ignore_errors=True)
