"""Every ``vsv`` client verb as a whole process, beside the bare interpreter and virsh.

What an admin (or a script calling ``vsv`` in a loop) waits for is the whole process: the
interpreter's start, the imports, building the argument parser, the request and the answer. So
each verb runs here as ``python -m supervisor --socket S VERB ...`` (the real entry point) against
the API served over the in-memory facade (so the figure is the client's and the API's cost, not
a guest's start), and in the same rounds:

- the floor, ``python -c pass`` with the same interpreter and environment: what any Python
  command pays before its first line;
- the peer, ``virsh -c test:///default`` doing the same kind of thing (``list --all``,
  ``dominfo``), when virsh is installed (its test driver needs no daemon).

Rounds interleave everything (one sample of each per round), so load from other work on the
machine falls on all of them alike. The package's bytecode is compiled first (into ``__pycache__``
beside the sources, which git ignores), as an installed package has it: a checkout run with
``PYTHONDONTWRITEBYTECODE`` would compile every module on each run instead (~10 ms more).

The target (issue 16) is 60 ms per verb on a machine whose bare interpreter takes ~35 ms: what
``vsv`` adds above the floor measured in the same run must stay within 25 ms (the median of the
differences, per verb). ``exec`` is left out: its cost is the command it runs in a guest.

Writes bench/results/cli.json (or $VSV_BENCH_RESULTS/cli.json). Exit 1 when a verb misses its
target, 2 when a client verb has no entry here (a new verb must be measured).

Run: .venv/bin/python bench/bench_cli.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.api.client import Client
from supervisor.api.server import serve_api
from supervisor.clientcli import client_verb_names
from supervisor.facade import Lease
from supervisor.journal import Journal
from supervisor.testing.fakefacade import FakeSupervisor

REPO = Path(__file__).resolve().parent.parent
RESULTS = (
    Path(os.environ.get("VSV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
    / "cli.json"
)
#: what vsv may add above the bare interpreter (60 ms against its ~35 ms floor)
MARGIN_MS = 25.0
TARGET_MS = 60.0
#: client verbs measured elsewhere or not at all, and why
NOT_MEASURED = {
    "exec": "its cost is the command it runs inside a guest",
    "console": "interactive: a terminal session on a guest's console",
}

DOMAIN = (
    "<domain type='lxc'><name>{}</name><memory>65536</memory><os><type>exe</type>"
    "<init>/bin/sh</init></os><devices><interface type='network'><source network='n1'/>"
    "<mac address='52:54:00:00:00:{:02x}'/></interface></devices></domain>"
)
NETWORK = "<network><name>{}</name><bridge name='vsvbcli{}'/></network>"


@attrs.define(eq=False)
class _LoggedFake(FakeSupervisor):
    """The fake facade with a log file for every domain, so that ``vsv log`` has one to read."""

    log_file: str = ""

    def domain_log_path(self, name: str) -> str | None:
        self.get_domain(name)
        return self.log_file


class _Server:
    """The API over the fake in a thread of its own (trio run), for the processes to call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rw = str(directory / "rw.sock")
        self.ro = str(directory / "ro.sock")
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        journal = Journal.open(self.directory / "journal")
        log = self.directory / "guest.log"
        log.write_bytes(b"".join(b"line %d of the guest's output\n" % i for i in range(200)))
        fake = _LoggedFake(journal, log_file=str(log))
        fake.leases["n1"] = [Lease("n1", "52:54:00:00:00:00", "10.0.0.5", 24, "b0", None, "b0")]
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_api(
                        fake, journal, socket_path=self.rw, ro_socket_path=self.ro,
                        task_status=task_status,
                    )
                )  # fmt: skip
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            journal.close()

    def __enter__(self) -> _Server:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(20)


def populate(rw: str, directory: Path) -> dict[str, str]:
    """Networks n1 (active, with a lease) and n2, domains b0 (running) to b9; files to define."""
    files = {
        "domain": str(directory / "bx.xml"),
        "network": str(directory / "nx.xml"),
        "transient": str(directory / "bt.xml"),
    }
    Path(files["domain"]).write_text(DOMAIN.format("bx", 99))
    Path(files["transient"]).write_text(DOMAIN.format("bt", 98))
    Path(files["network"]).write_text(NETWORK.format("nx", "x"))
    with Client(rw) as c:
        for i, name in enumerate(("n1", "n2")):
            c.send_xml("/v1/networks", NETWORK.format(name, i).encode())
        c.send_json("POST", "/v1/networks/n1/start")
        for i in range(10):
            c.send_xml("/v1/domains", DOMAIN.format(f"b{i}", i).encode())
        c.send_json("POST", "/v1/domains/b0/start")
    return files


def verb_table(files: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(figure name, vsv arguments) in the order one round runs them; each leaves the state
    as the next one needs it (start before suspend, define before undefine...)."""
    return [
        ("list", ["list", "--all"]),
        ("dominfo", ["dominfo", "b0"]),
        ("domstate", ["domstate", "b0", "--reason"]),
        ("dumpxml", ["dumpxml", "b0"]),
        ("domifaddr", ["domifaddr", "b0"]),
        ("domstats", ["domstats"]),
        ("domiflist", ["domiflist", "b0"]),
        ("memtune", ["memtune", "b0"]),
        ("dumpxml --inactive", ["dumpxml", "b0", "--inactive"]),
        ("_names", ["_names", "domain"]),
        ("edit", ["edit", "b3"]),
        ("setmem", ["setmem", "b3", "32M", "--config"]),
        ("create", ["create", files["transient"]]),
        ("destroy bt", ["destroy", "bt"]),
        ("schedinfo", ["schedinfo", "b0"]),
        ("log", ["log", "b0", "-n", "20"]),
        ("info", ["info"]),
        ("event", ["event", "--since", "0", "--domain", "b0"]),
        ("net-list", ["net-list", "--all"]),
        ("net-dumpxml", ["net-dumpxml", "n1"]),
        ("net-dhcp-leases", ["net-dhcp-leases", "n1"]),
        ("net-info", ["net-info", "n1"]),
        ("net-autostart", ["net-autostart", "n2"]),
        ("net-edit", ["net-edit", "n2"]),
        ("start", ["start", "b1"]),
        ("suspend", ["suspend", "b1"]),
        ("resume", ["resume", "b1"]),
        ("reboot", ["reboot", "b1"]),
        ("shutdown", ["shutdown", "b1"]),
        ("autostart", ["autostart", "b1"]),
        ("schedinfo --set", ["schedinfo", "b1", "--set", "cpu_shares=512", "--config"]),
        ("define", ["define", files["domain"]]),
        ("undefine", ["undefine", "bx"]),
        ("start b2", ["start", "b2"]),
        ("destroy", ["destroy", "b2"]),
        ("net-define", ["net-define", files["network"]]),
        ("net-start", ["net-start", "nx"]),
        ("net-destroy", ["net-destroy", "nx"]),
        ("net-undefine", ["net-undefine", "nx"]),
    ]


def wall(argv: list[str], env: dict[str, str]) -> float:
    """One run of ``argv`` as a whole process, in seconds; it must succeed."""
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{argv[3:]} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return took


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "min_ms": round(ms[0], 2),
        "max_ms": round(ms[-1], 2),
        "n": len(ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="samples of each figure")
    rounds = parser.parse_args().rounds
    directory = Path(tempfile.mkdtemp(prefix="vsvbc", dir="/tmp"))
    try:
        return run(directory, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(directory: Path, rounds: int) -> int:
    # edit and net-edit run `true` as the editor: the verb's own cost, the document unchanged
    env = {**os.environ, "EDITOR": "true", "VISUAL": "true"}
    # as an installed package has it: the bytecode beside the sources (__pycache__, which git
    # ignores); PYTHONPYCACHEPREFIX would move the standard library's cache away too
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "supervisor"], cwd=REPO, env=env, check=True
    )
    virsh = shutil.which("virsh")
    with _Server(directory) as server:
        files = populate(server.rw, directory)
        table = verb_table(files)
        measured = {argv[0] for _, argv in table}
        missing = sorted(set(client_verb_names()) - measured - set(NOT_MEASURED))
        if missing:
            print(f"bench_cli: client verbs with no entry in verb_table: {missing}")
            return 2
        vsv = [sys.executable, "-m", "supervisor", "--socket", server.rw]
        samples: dict[str, list[float]] = {name: [] for name, _ in table}
        floor: list[float] = []
        peer: dict[str, list[float]] = {"list": [], "dominfo": []}
        for _ in range(rounds):
            floor.append(wall([sys.executable, "-c", "pass"], env))
            for name, argv in table:
                samples[name].append(wall(vsv + argv, env))
            if virsh is not None:
                peer["list"].append(wall([virsh, "-c", "test:///default", "list", "--all"], env))
                peer["dominfo"].append(
                    wall([virsh, "-c", "test:///default", "dominfo", "test"], env)
                )
    return report(samples, floor, peer if virsh else None)


def report(
    samples: dict[str, list[float]],
    floor: list[float],
    peer: dict[str, list[float]] | None,
) -> int:
    floor_ms = statistics.median(floor) * 1000
    print(f"{'python -c pass (floor)':28s} median {floor_ms:6.1f} ms")
    verbs: dict[str, dict[str, float]] = {}
    missed = []
    for name, values in samples.items():
        figure = summary(values)
        over = statistics.median((v - f) * 1000 for v, f in zip(values, floor, strict=True))
        figure["over_floor_ms"] = round(over, 2)
        figure["met"] = over <= MARGIN_MS
        verbs[name] = figure
        if over > MARGIN_MS:
            missed.append(name)
        print(
            f"vsv {name:24s} median {figure['median_ms']:6.1f} ms  floor +{over:5.1f} ms  "
            f"(min {figure['min_ms']:.1f}, max {figure['max_ms']:.1f})"
            f"{'' if over <= MARGIN_MS else '  MISSED'}"
        )
    peers = None
    if peer is not None:
        peers = {k: summary(v) for k, v in peer.items()}
        for k, v in peers.items():
            print(f"{'virsh ' + k:28s} median {v['median_ms']:6.1f} ms")
    worst = max(verbs, key=lambda k: verbs[k]["over_floor_ms"])
    data = {
        "rounds": len(floor),
        "floor": summary(floor),
        "verbs": verbs,
        "worst": worst,
        "virsh": peers,
        "target_ms": TARGET_MS,
        "margin_ms": MARGIN_MS,
        "not_measured": NOT_MEASURED,
        "missed": missed,
        "loadavg_after": os.getloadavg(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
