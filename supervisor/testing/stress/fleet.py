"""``vsv stress --fleet``: several supervisors (fake runtime) publishing to a real nats-server
that is killed and restarted at random; the stream is checked against a model.

Why a mode of its own: the hypothesis state machine (:mod:`.machine`) runs on a mock clock,
which a real broker and nats-py's timers cannot share. This mode runs in real time, with a
plain seeded :class:`random.Random`, so a seed still replays the same program
(``vsv stress --fleet --seed N --steps M``), though not the same interleaving with the broker.

The world: ``hosts`` real :class:`~supervisor.daemon.Supervisor` objects on
:class:`~supervisor.testing.fakeruntime.FakeRuntime`, each with its own journal and
:func:`~supervisor.fleet.publisher.run_publisher` as the daemon wires them, all publishing to one
nats-server on loopback. Steps, drawn at random: define, start, destroy or undefine a guest on a
host; kill the broker (SIGKILL or SIGTERM) and start it again on the same store after a few
steps; restart a host's publisher (as a supervisor restart does, from its cursor); check.

The model: per host, the lifecycle events each operation must publish (``DEFINED ADDED``,
``STARTED BOOTED``, ``STOPPED DESTROYED``, ``UNDEFINED REMOVED``, and the supervisor's own
``STARTED``). A check waits until the broker is up and every publisher has caught up, reads the
whole stream, and requires for each host: its messages are exactly its journal (each record
once, ``seq`` rising without a hole), and their events are the model's.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from supervisor.bus import Bus
from supervisor.daemon import Supervisor
from supervisor.fleet.publisher import FleetPublisher, run_publisher
from supervisor.hooks import GuestContext
from supervisor.journal import Journal
from supervisor.model import Domain, OsSpec
from supervisor.testing.fakeruntime import FakeRuntime
from supervisor.testing.natsserver import NatsServer, StoredMessage, nats_server, read_stream

#: how long a check may wait for the publishers to catch up
CATCH_UP_TIMEOUT = 60.0


@attrs.define(eq=False)
class _Host:
    name: str
    directory: Path
    journal: Journal
    sup: Supervisor
    publisher: FleetPublisher | None = None
    scope: trio.CancelScope | None = None
    #: the model: guest -> running, and the events every operation must have published
    guests: dict[str, bool] = attrs.Factory(dict)
    expected: list[tuple[str | None, str, str | None]] = attrs.Factory(list)


@attrs.define
class FleetStressResult:
    ok: bool
    steps: int
    seconds: float
    ops: dict[str, int]
    problems: list[str]


class _World:
    def __init__(self, server: NatsServer, directory: Path, rng: random.Random) -> None:
        self.server = server
        self.directory = directory
        self.rng = rng
        self.hosts: list[_Host] = []
        self.down_for = 0  # steps until the broker is started again
        self.ops: dict[str, int] = {}

    def count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1

    async def add_host(self, nursery: trio.Nursery, index: int) -> None:
        name = f"h{index}"
        directory = self.directory / name
        journal = Journal.open(directory / "state" / "journal")
        bus: Bus[GuestContext] = Bus(first_seq=journal.last_seq() + 1)
        bus.add_sink(journal.append)
        sup = Supervisor(
            state_dir=directory / "state",
            run_dir=directory / "run",
            prefix=f"vsvfleet{index}",
            runtime=FakeRuntime(),
            networking=False,
            announce=True,
            bus=bus,
        )
        host = _Host(name=name, directory=directory, journal=journal, sup=sup)
        host.expected.append((None, "STARTED", None))
        await nursery.start(sup.run)
        self.hosts.append(host)
        await self.start_publisher(nursery, host)

    async def start_publisher(self, nursery: trio.Nursery, host: _Host) -> None:
        async def run(task_status: trio.TaskStatus[FleetPublisher]) -> None:
            with trio.CancelScope() as scope:
                host.scope = scope
                await run_publisher(
                    host.journal,
                    servers=(self.server.url,),
                    host=host.name,
                    stream="GUESTS",
                    state_dir=host.directory / "state",
                    task_status=task_status,
                )

        host.publisher = await nursery.start(run)

    async def step(self, nursery: trio.Nursery) -> None:
        if self.down_for > 0:
            self.down_for -= 1
            if self.down_for == 0:
                await trio.to_thread.run_sync(self.server.start)
                self.count("broker-start")
        roll = self.rng.random()
        if roll < 0.06 and self.server.running:
            how = self.rng.choice((signal.SIGKILL, signal.SIGTERM))
            await trio.to_thread.run_sync(self.server.kill, how)
            self.down_for = self.rng.randint(1, 6)
            self.count(f"broker-{signal.Signals(how).name}")
            return
        host = self.rng.choice(self.hosts)
        if roll < 0.09:
            assert host.scope is not None
            host.scope.cancel()
            await self.start_publisher(nursery, host)
            self.count("publisher-restart")
            return
        guest = f"g{self.rng.randrange(4)}"
        running = host.guests.get(guest)
        if running is None:
            await host.sup.define_domain(_domain(guest))
            host.guests[guest] = False
            host.expected.append((guest, "DEFINED", "ADDED"))
            self.count("define")
        elif running:
            await host.sup.destroy_domain(guest)
            host.guests[guest] = False
            host.expected.append((guest, "STOPPED", "DESTROYED"))
            self.count("destroy")
        elif self.rng.random() < 0.7:
            await host.sup.start_domain(guest)
            host.guests[guest] = True
            host.expected.append((guest, "STARTED", "BOOTED"))
            self.count("start")
        else:
            await host.sup.undefine_domain(guest)
            del host.guests[guest]
            host.expected.append((guest, "UNDEFINED", "REMOVED"))
            self.count("undefine")

    async def check(self) -> list[str]:
        if not self.server.running:
            await trio.to_thread.run_sync(self.server.start)
            self.count("broker-start")
            self.down_for = 0
        with trio.move_on_after(CATCH_UP_TIMEOUT) as scope:
            for host in self.hosts:
                assert host.publisher is not None
                await host.publisher.wait_caught_up()
        if scope.cancelled_caught:
            return [
                f"{h.name}: not caught up in {CATCH_UP_TIMEOUT} s: {h.publisher.statistics()}"
                for h in self.hosts
                if h.publisher is not None and not h.publisher.caught_up()
            ]
        messages = await trio.to_thread.run_sync(read_stream, self.server.url)
        self.count("check")
        problems: list[str] = []
        for host in self.hosts:
            problems += _host_problems(host, messages)
        return problems


def _domain(name: str) -> Domain:
    return Domain(
        name=name,
        type="vserver",
        os=OsSpec(init="/bin/sh", initargs=("-c", "trap 'exit 0' TERM; sleep 1000")),
        privnet=True,
    )


def _host_problems(host: _Host, messages: list[StoredMessage]) -> list[str]:
    mine = [m.record() for m in messages if m.record().get("host") == host.name]
    journal = [{**r, "host": host.name} for r in host.journal.read_since(0)]
    problems: list[str] = []
    seqs = [r.get("seq") for r in mine]
    if seqs != [r["seq"] for r in journal]:
        problems.append(f"{host.name}: stream seqs {_short(seqs)} != journal {_short(journal)}")
    elif mine != journal:
        problems.append(f"{host.name}: stream records differ from the journal")
    events = [
        (r.get("domain"), str(r.get("type")), r.get("detail"))
        for r in mine
        if r.get("kind") in ("domain", "supervisor")
    ]
    if events != host.expected:
        problems.append(f"{host.name}: stream events {events} != model {host.expected}")
    return problems


def _short(values: list[Any]) -> str:
    text = repr(values)
    return text if len(text) < 300 else text[:300] + "..."


async def _run(seed: int, steps: int, hosts: int, directory: Path) -> FleetStressResult:
    rng = random.Random(seed)
    started = time.perf_counter()
    problems: list[str] = []
    with nats_server(directory / "nats") as server:
        world = _World(server, directory, rng)
        async with trio.open_nursery() as nursery:
            for i in range(hosts):
                await world.add_host(nursery, i)
            done = 0
            while done < steps and not problems:
                await world.step(nursery)
                done += 1
                if rng.random() < 0.03:
                    problems = await world.check()
            if not problems:
                problems = await world.check()
            nursery.cancel_scope.cancel()
        for host in world.hosts:
            host.journal.close()
    return FleetStressResult(
        ok=not problems,
        steps=done,
        seconds=time.perf_counter() - started,
        ops=world.ops,
        problems=problems,
    )


def run_fleet_stress(seed: int, steps: int, hosts: int, out: TextIO) -> int:
    """The CLI's runner: 0 when every check held, 1 otherwise (problems and a replay line)."""
    directory = Path(tempfile.mkdtemp(prefix="vsv-fleet-stress-"))
    # the publishers log every outage the run provokes on purpose; the checks see the rest
    vsv_log = logging.getLogger("vsv")
    quiet = logging.NullHandler()
    vsv_log.addHandler(quiet)
    vsv_log.propagate = False
    try:
        result = trio.run(_run, seed, steps, hosts, directory)
    finally:
        vsv_log.removeHandler(quiet)
        vsv_log.propagate = True
        shutil.rmtree(directory, ignore_errors=True)
    status = "passed" if result.ok else "FAILED"
    print(
        f"stress --fleet {status}: seed {seed}, {result.steps} steps, {hosts} hosts, "
        f"{result.seconds:.1f}s",
        file=out,
    )
    print("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(result.ops.items())), file=out)
    for problem in result.problems:
        print(f"  {problem}", file=out)
    if not result.ok:
        print(
            f"replay with: vsv stress --fleet --seed {seed} --steps {steps} --hosts {hosts}",
            file=out,
        )
    return 0 if result.ok else 1
