"""Hardening of the API sockets: the read-write socket refuses peers in other pid or mount
namespaces, each socket caps its open connections, accept failures are waited out, and a flood of
the read-only socket leaves the read-write one answering."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from supervisor.api.app import busy_response
from supervisor.api.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RO_MAX_CONNECTIONS,
    TRANSIENT,
    ConnectionBudget,
    api_share,
    plan_caps,
)
from supervisor.api.peer import (
    NamespaceGuard,
    NamespaceId,
    Namespaces,
    Verdict,
    judge,
    parse_fdinfo_pid,
)
from supervisor.api.server import serve_api
from supervisor.cli import build_parser
from supervisor.journal import Journal
from supervisor.testing.fakefacade import FakeSupervisor
from tests.fake_supervisor import short_tmpdir

REPO = Path(__file__).resolve().parent.parent
GET = b"GET /v1/domains HTTP/1.1\r\nHost: vsv\r\nConnection: close\r\n\r\n"


# --- pure parts --------------------------------------------------------------------------------

FDINFO = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t{pid}\nNSpid:\t{pid}\t1\n"


@given(st.integers(min_value=-1, max_value=(1 << 22)))
def test_fdinfo_pid_is_read_from_the_pid_line(pid: int) -> None:
    """The pid of a pidfd is the Pid: line of its fdinfo, whatever it is (-1 and 0 included)."""
    assert pid == parse_fdinfo_pid(FDINFO.format(pid=pid))


def test_fdinfo_without_a_pid_line() -> None:
    """No Pid: line (not a pidfd) or a malformed one gives None; NSpid: is not mistaken for it."""
    assert None is parse_fdinfo_pid("pos:\t0\nflags:\t02\n")
    assert None is parse_fdinfo_pid("Pid:\tnope\n")
    assert 7 == parse_fdinfo_pid("NSpid:\t99\t1\nPid:\t7\n")


INVISIBLE = "the peer is in a pid namespace the supervisor cannot see"
OURS = Namespaces(pid=NamespaceId(4, 100), mnt=NamespaceId(4, 200))


@pytest.mark.parametrize(
    ("pid", "theirs", "alive", "expected"),
    [
        (42, OURS, True, Verdict(42)),
        (42, attrs.evolve(OURS, pid=NamespaceId(4, 101)), True, Verdict(42, differs=("pid",))),
        (42, attrs.evolve(OURS, mnt=NamespaceId(4, 201)), True, Verdict(42, differs=("mnt",))),
        (42, attrs.evolve(OURS, mnt=NamespaceId(5, 200)), True, Verdict(42, differs=("mnt",))),
        (
            42,
            Namespaces(NamespaceId(4, 1), NamespaceId(4, 2)),
            True,
            Verdict(42, differs=("pid", "mnt")),
        ),
        (
            0,
            None,
            True,
            Verdict(0, problem=INVISIBLE),
        ),
        (-1, None, True, Verdict(None, problem="the peer process has exited")),
        (42, None, True, Verdict(42, problem="the peer process has exited")),
        (42, OURS, False, Verdict(42, problem="the peer process has exited")),
        (None, None, True, Verdict(None, problem="the peer process could not be identified")),
    ],
)
def test_judge(pid: int | None, theirs: Namespaces | None, alive: bool, expected: Verdict) -> None:
    """Only a live peer whose pid and mount namespaces (device and inode) are ours is allowed."""
    assert expected == judge(OURS, pid, theirs, alive=alive)
    assert (expected.differs == () and expected.problem is None) == expected.allowed


def test_refusal_detail_says_why() -> None:
    """The refused client is told which namespace differs, and that this is defence in depth."""
    detail = Verdict(42, differs=("mnt",)).detail()
    assert detail.startswith("the peer's mount namespace differs from the supervisor's, so ")
    assert "refuses it as defence in depth" in detail
    both = Verdict(42, differs=("pid", "mnt")).detail()
    assert both.startswith("the peer's pid and mount namespaces differ from the supervisor's")
    gone = Verdict(None, problem="the peer process has exited").detail()
    assert gone.startswith("the peer process has exited, so the read-write API refuses it")


def test_own_namespaces_are_read_from_proc_self() -> None:
    """The guard's reference is this process's /proc/self/ns/{pid,mnt}."""
    st_pid, st_mnt = os.stat("/proc/self/ns/pid"), os.stat("/proc/self/ns/mnt")
    expected = Namespaces(
        NamespaceId(st_pid.st_dev, st_pid.st_ino), NamespaceId(st_mnt.st_dev, st_mnt.st_ino)
    )
    assert expected == NamespaceGuard.for_this_process().own


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_guard_allows_a_peer_in_our_namespaces(use_pidfd: bool) -> None:
    """A socketpair's peer is this very process: allowed, and identified by our own pid."""
    a, b = socket.socketpair()
    with a, b:
        verdict = NamespaceGuard.for_this_process(use_pidfd=use_pidfd).check(a)
    assert Verdict(os.getpid()) == verdict


class BudgetMachine(RuleBasedStateMachine):
    """ConnectionBudget against a model: a count of open connections under a cap."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = 3
        self.budget = ConnectionBudget(self.limit)
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.turned_away = 0

    @rule()
    def connect(self) -> None:
        got = self.budget.try_acquire()
        assert (self.open < self.limit) == got
        if got:
            self.open += 1
            self.accepted += 1
            self.peak = max(self.peak, self.open)
        else:
            self.turned_away += 1

    @rule()
    def disconnect(self) -> None:
        if self.open == 0:
            with pytest.raises(RuntimeError):
                self.budget.release()
            return
        self.budget.release()
        self.open -= 1

    @invariant()
    def counts_match_the_model(self) -> None:
        stats = self.budget.statistics()
        assert (self.limit, self.open, self.peak, self.accepted, self.turned_away) == (
            stats.max_connections,
            stats.open,
            stats.peak,
            stats.accepted,
            stats.turned_away,
        )
        assert stats.open <= stats.max_connections


TestBudget = BudgetMachine.TestCase


def test_default_caps_fit_a_1024_limit() -> None:
    """At the common 1024 limit the defaults (64 and 256) stand, within half of the limit."""
    plan = plan_caps(1024)
    assert (DEFAULT_MAX_CONNECTIONS, DEFAULT_RO_MAX_CONNECTIONS, False) == (
        plan.max_connections,
        plan.ro_max_connections,
        plan.scaled,
    )
    assert plan.max_connections + plan.ro_max_connections + TRANSIENT <= 1024 // 2


@given(
    nofile=st.integers(min_value=8, max_value=1 << 20),
    rw=st.none() | st.integers(min_value=1, max_value=1 << 16),
    ro=st.none() | st.integers(min_value=1, max_value=1 << 16),
)
def test_caps_stay_within_half_the_limit(nofile: int, rw: int | None, ro: int | None) -> None:
    """Whatever is asked, both caps are at least 1 and together within the API's half of the
    limit; what fits is granted as asked."""
    plan = plan_caps(nofile, rw=rw, ro=ro)
    want = (rw or DEFAULT_MAX_CONNECTIONS, ro or DEFAULT_RO_MAX_CONNECTIONS)
    assert 1 <= plan.max_connections
    assert 1 <= plan.ro_max_connections
    assert plan.max_connections + plan.ro_max_connections <= api_share(nofile)
    assert api_share(nofile) + TRANSIENT <= max(nofile // 2, 4)
    assert (sum(want) > api_share(nofile)) == plan.scaled
    if not plan.scaled:
        assert want == (plan.max_connections, plan.ro_max_connections)


def test_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    """raise_nofile_limit lifts the soft limit to the hard one and says from where to where."""
    code = (
        "import resource; from supervisor.api.limits import raise_nofile_limit\n"
        "print(*raise_nofile_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        ["prlimit", "--nofile=512:2048", "--", sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "512 2048 2048 2048" == done.stdout.strip()


def test_busy_response_is_a_whole_http_answer() -> None:
    """The 503 written at the cap is a complete HTTP/1.1 answer with a problem document."""
    raw = busy_response("full", seq=7)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert b"HTTP/1.1 503 Service Unavailable" == lines[0]
    assert (str(len(body)).encode(), b"7", b"close") == (
        headers[b"content-length"],
        headers[b"x-vsv-seq"],
        headers[b"connection"],
    )
    assert ("too-many-connections", 503, "full") == (
        json.loads(body)["code"],
        json.loads(body)["status"],
        json.loads(body)["detail"],
    )


def test_daemon_options_for_the_caps() -> None:
    """vsv daemon takes both caps; a cap of 0 is a usage error."""
    parser = build_parser()
    args = parser.parse_args(
        ["daemon", "--api-max-connections", "8", "--api-ro-max-connections", "32"]
    )
    assert (8, 32) == (args.api_max_connections, args.api_ro_max_connections)
    assert (None, None) == (
        parser.parse_args(["daemon"]).api_max_connections,
        parser.parse_args(["daemon"]).api_ro_max_connections,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["daemon", "--api-ro-max-connections", "0"])


# --- the server in this process (fake facade) ---------------------------------------------------


@attrs.frozen
class Served:
    rw: str
    ro: str
    fake: FakeSupervisor


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = short_tmpdir()
    os.chmod(d, 0o755)  # the subprocesses of some tests are another user
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(directory: Path, **kwargs: Any) -> AsyncIterator[Served]:
    """serve_api on ``directory``/rw.sock and ro.sock over a fresh fake, with ``kwargs``."""
    journal = Journal.open(directory / "journal")
    fake = FakeSupervisor(journal)
    rw, ro = str(directory / "rw.sock"), str(directory / "ro.sock")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_api(
                    fake,
                    journal,
                    socket_path=rw,
                    ro_socket_path=ro,
                    task_status=task_status,
                    **kwargs,
                )
            )
            yield Served(rw, ro, fake)
            nursery.cancel_scope.cancel()
    finally:
        journal.close()


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body)


async def read_all(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while chunk := await sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def request(path: str, target: str = "/v1/domains") -> Answer:
    """One GET on a fresh connection (Connection: close), read to the end."""
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        await sock.connect(path)
        await sock.send(f"GET {target} HTTP/1.1\r\nHost: vsv\r\nConnection: close\r\n\r\n".encode())
        return parse_answer(await read_all(sock))


async def request_when_served(path: str) -> Answer:
    """GET until the socket serves it: a full socket answers 503, or closes before we send."""
    while True:
        with contextlib.suppress(OSError):
            answer = await request(path)
            if answer.status != 503:
                return answer
        await trio.sleep(0.01)


async def test_statistics_report_both_sockets(sockdir: Path) -> None:
    """GET /v1/supervisor carries each socket's cap and counts, and the descriptor limit."""
    async with serving(sockdir, max_connections=5, ro_max_connections=7) as run:
        with trio.fail_after(10):
            await request(run.ro)
            api = (await request(run.rw, "/v1/supervisor")).json()["api"]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == api["nofile_limit"]
    assert {"max_connections": 5, "open": 1, "peak": 1, "accepted": 1} == {
        k: api["read_write"][k] for k in ("max_connections", "open", "peak", "accepted")
    }
    assert (7, 1, 0, 0, 0) == (
        api["read_only"]["max_connections"],
        api["read_only"]["accepted"],
        api["read_only"]["turned_away"],
        api["read_only"]["refused"],
        api["read_only"]["accept_errors"],
    )


async def test_full_socket_answers_503_and_the_other_keeps_serving(sockdir: Path) -> None:
    """At its cap the read-only socket answers 503 too-many-connections and closes; the
    read-write socket still answers; a freed slot serves the next client."""
    async with serving(sockdir, ro_max_connections=3) as run:
        with trio.fail_after(20):
            held = [trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
            try:
                for sock in held:
                    await sock.connect(run.ro)
                # the three are idle but hold the slots; wait until the server has taken them
                while (await request(run.rw, "/v1/supervisor")).json()["api"]["read_only"][
                    "open"
                ] < 3:
                    await trio.sleep(0.01)
                with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
                    await extra.connect(run.ro)
                    busy = parse_answer(await read_all(extra))
                assert (503, "too-many-connections", "1") == (
                    busy.status,
                    busy.json()["code"],
                    busy.headers["retry-after"],
                )
                assert 200 == (await request(run.rw)).status
            finally:
                for sock in held:
                    sock.close()
            assert 200 == (await request_when_served(run.ro)).status
            stats = (await request(run.rw, "/v1/supervisor")).json()["api"]["read_only"]
    assert 3 == stats["peak"]
    assert 1 <= stats["turned_away"]


async def test_client_that_leaves_frees_its_slot_at_once(sockdir: Path) -> None:
    """A client closing an idle connection gives its slot back at once (not after hypercorn's
    30 s keep-alive timeout); one that half-closes after its request still gets the answer."""
    async with serving(sockdir, ro_max_connections=1) as run:
        with trio.fail_after(10):
            for _ in range(3):
                with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    await probe.connect(run.ro)
                    while (await request(run.rw, "/v1/supervisor")).json()["api"]["read_only"][
                        "open"
                    ] < 1:
                        await trio.sleep(0.01)
                while (await request(run.rw, "/v1/supervisor")).json()["api"]["read_only"][
                    "open"
                ] > 0:
                    await trio.sleep(0.01)
            with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as half:
                await half.connect(run.ro)
                await half.send(b"GET /v1/domains HTTP/1.1\r\nHost: vsv\r\n\r\n")
                half.shutdown(socket.SHUT_WR)
                assert 200 == parse_answer(await read_all(half)).status
            stats = (await request(run.rw, "/v1/supervisor")).json()["api"]["read_only"]
    assert (4, 0) == (stats["accepted"], stats["turned_away"])


async def test_accept_without_descriptors_is_waited_out(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When accept fails with EMFILE the server logs once, retries, and serves the read-write
    connection as soon as descriptors are free again."""
    caplog.set_level(logging.WARNING, logger="supervisor.api")
    async with serving(sockdir) as run:
        with trio.fail_after(20):
            client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            fillers: list[int] = []
            try:
                highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
                resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
                with contextlib.suppress(OSError):
                    while True:
                        fillers.append(os.open("/dev/null", os.O_RDONLY))
                await client.connect(run.rw)  # needs no new descriptor here; accept does
                rw_failed = "accept on the read-write socket failed"
                while not any(rw_failed in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.01)
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            with client:
                await client.send(GET)
                assert 200 == parse_answer(await read_all(client)).status
            stats = (await request(run.rw, "/v1/supervisor")).json()["api"]["read_write"]
    failures = [r for r in caplog.records if "accept on the read-write socket failed" in r.message]
    assert 1 == len(failures)
    assert "EMFILE" in failures[0].getMessage()
    assert 1 <= stats["accept_errors"]
    assert any("accepts again" in r.getMessage() for r in caplog.records)


# --- peers in other namespaces (root: unshare) ---------------------------------------------------

CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
keep = b"keep-alive" if sys.argv[2] == "keep" else b"close"
s.sendall(b"GET /v1/domains HTTP/1.1\\r\\nHost: vsv\\r\\nConnection: " + keep + b"\\r\\n\\r\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\\r\\n\\r\\n")
status = int(head.split(b" ")[1])
print(json.dumps({"status": status, "body": json.loads(body)}))
"""


def run_client(prefix: list[str], path: str, *, keep_alive: bool = False) -> dict[str, Any]:
    """Run CLIENT under ``prefix`` (unshare ...): the answer's status and body.

    It reads to the end: with ``keep_alive`` that returns only if the server closes by itself.
    """
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CLIENT, path, "keep" if keep_alive else "close"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


UNSHARES = {
    "pid+mnt": ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
    "pid": ["unshare", "--pid", "--fork", "--kill-child"],
    "mnt": ["unshare", "--mount"],
}


@pytest.mark.root  # unshare needs CAP_SYS_ADMIN
@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "peercred"])
@pytest.mark.parametrize("where", list(UNSHARES))
async def test_peer_in_another_namespace_is_refused_on_the_rw_socket(
    sockdir: Path, caplog: pytest.LogCaptureFixture, where: str, use_pidfd: bool
) -> None:
    """A process in another pid and/or mount namespace gets 403 forbidden on the read-write
    socket (logged once) and 200 on the read-only one."""
    caplog.set_level(logging.WARNING, logger="supervisor.api")
    guard = NamespaceGuard.for_this_process(use_pidfd=use_pidfd)
    async with serving(sockdir, guard=guard) as run:
        with trio.fail_after(60):
            # keep-alive asked, yet the server closes the refused connection after its answer
            rw = await trio.to_thread.run_sync(
                functools.partial(run_client, UNSHARES[where], run.rw, keep_alive=True)
            )
            ro = await trio.to_thread.run_sync(run_client, UNSHARES[where], run.ro)
            stats = (await request(run.rw, "/v1/supervisor")).json()["api"]
    assert (403, "forbidden", 200) == (rw["status"], rw["body"]["code"], ro["status"])
    expected = {
        "pid+mnt": "the peer's pid and mount namespaces differ from the supervisor's",
        "pid": "the peer's pid namespace differs from the supervisor's",
        "mnt": "the peer's mount namespace differs from the supervisor's",
    }
    assert rw["body"]["detail"].startswith(expected[where])
    assert "defence in depth" in rw["body"]["detail"]
    refusals = [r for r in caplog.records if "refused a read-write connection" in r.message]
    assert [logging.WARNING] == [r.levelno for r in refusals]
    assert (1, 0) == (stats["read_write"]["refused"], stats["read_only"]["refused"])


@pytest.mark.root  # switching to nobody needs root
async def test_peer_in_our_namespaces_is_served(sockdir: Path) -> None:
    """Another process in our namespaces (even as another user, on the read-only socket) and
    root on the read-write socket get 200."""
    async with serving(sockdir) as run:
        with trio.fail_after(60):
            rw = await trio.to_thread.run_sync(run_client, [], run.rw)
            ro = await trio.to_thread.run_sync(
                run_client, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], run.ro
            )
    assert (200, 200) == (rw["status"], ro["status"])


SERVER = """
import sys, trio
from pathlib import Path
from supervisor.testing.fakefacade import FakeSupervisor
from supervisor.api.peer import NamespaceGuard
from supervisor.api.server import serve_api
from supervisor.journal import Journal

async def main(directory: str, use_pidfd: bool) -> None:
    journal = Journal.open(Path(directory) / "journal")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_api(
                FakeSupervisor(journal), journal, socket_path=directory + "/rw.sock",
                ro_socket_path=None,
                guard=NamespaceGuard.for_this_process(use_pidfd=use_pidfd),
                task_status=task_status,
            )
        )
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes our stdin
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], sys.argv[2] == "1")
"""


@pytest.mark.root  # unshare needs CAP_SYS_ADMIN
@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "peercred"])
def test_peer_the_server_cannot_see_is_refused(sockdir: Path, use_pidfd: bool) -> None:
    """A supervisor in a nested pid namespace sees a client outside it as pid 0: refused."""
    server = subprocess.Popen(
        [
            *UNSHARES["pid+mnt"],
            sys.executable,
            "-c",
            SERVER,
            str(sockdir),
            "1" if use_pidfd else "0",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        assert server.stdin is not None
        ready, _, _ = select.select([server.stdout], [], [], 30)
        assert ready
        assert b"ready\n" == server.stdout.readline()
        answer = run_client([], str(sockdir / "rw.sock"))
        server.stdin.close()
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()  # --kill-child: the server in the namespace dies with unshare
            server.wait(10)
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()
    assert (403, "forbidden") == (answer["status"], answer["body"]["code"])
    assert "pid namespace the supervisor cannot see" in answer["body"]["detail"]


# --- a flood of the read-only socket, against a whole daemon ------------------------------------

FLOOD = """
import resource, socket, struct, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, failed = [], 0
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a blocking connect that gives up after 5 s (EAGAIN) if the backlog stays full
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
    try:
        s.connect(sys.argv[1])
    except OSError:
        s.close()
        failed += 1
        continue
    held.append(s)
print(len(held), failed, flush=True)
sys.stdin.read()  # hold them until the test closes our stdin
"""

FLOOD_SIZE = 3000
DAEMON_NOFILE = 1024


def http_get(path: str, target: str = "/v1/domains") -> Answer:
    """A blocking GET on a fresh connection; the timeout is a hang guard, not a measurement."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: vsv\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_answer(b"".join(chunks))


def read_unasked(path: str) -> Answer:
    """Connect and read what the server says without asking anything (a full socket's 503)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_answer(b"".join(chunks))


def wait_until(check: Any, timeout: float = 30) -> Any:
    """Call ``check`` until it returns a true value (hang guard ``timeout``); return that."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            value = check()
            if value:
                return value
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@pytest.mark.root  # the daemon runs as root, the flood as nobody
def test_read_only_flood_leaves_the_rw_socket_answering(prefix: str) -> None:
    """Thousands of connections held open by nobody on the read-only socket of a daemon limited
    to 1024 descriptors: the admin still gets answers on the read-write socket, new read-only
    clients get a prompt 503, and once the flood ends the read-only socket serves again."""
    base = short_tmpdir()
    os.chmod(base, 0o755)
    rw, ro = str(base / "rw.sock"), str(base / "ro.sock")
    log_path = base / "daemon.log"
    daemon: subprocess.Popen[bytes] | None = None
    flood: subprocess.Popen[str] | None = None
    try:
        # the soft limit starts below the hard one: the daemon raises it itself
        argv = [
            "prlimit", f"--nofile={DAEMON_NOFILE // 2}:{DAEMON_NOFILE}", "--",
            sys.executable, "-m", "supervisor", "daemon", "--prefix", prefix,
            "--state-dir", str(base / "state"), "--run-dir", str(base / "run"),
            "--socket", rw, "--ro-socket", ro,
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            daemon = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: http_get(ro).status == 200)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        flood = subprocess.Popen(
            [*nobody, sys.executable, "-c", FLOOD, ro, str(FLOOD_SIZE)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert flood.stdout is not None
        ready, _, _ = select.select([flood.stdout], [], [], 300)
        assert ready, "the flood did not finish connecting"
        held, failed = (int(x) for x in flood.stdout.readline().split())
        assert (FLOOD_SIZE, 0) == (held, failed)

        # the flood holds its connections: the admin is answered; a new read-only client is
        # told at once that the socket is full
        admin = http_get(rw, "/v1/supervisor")
        late = read_unasked(ro)
        assert (200, 503) == (admin.status, late.status)

        def api() -> Any:
            return http_get(rw, "/v1/supervisor").json()["api"]

        # the kernel let the flood connect before the daemon accepted them all: wait for that
        wait_until(lambda: api()["read_only"]["turned_away"] >= FLOOD_SIZE - 256)
        stats = api()
        assert (DAEMON_NOFILE, 256, 256) == (
            stats["nofile_limit"],
            stats["read_only"]["max_connections"],
            stats["read_only"]["open"],
        )
        assert 0 == stats["read_only"]["accept_errors"] + stats["read_write"]["accept_errors"]

        assert flood.stdin is not None
        flood.stdin.close()
        flood.wait(60)
        wait_until(lambda: http_get(ro).status == 200)
        assert 200 == http_get(rw).status
    finally:
        if flood is not None:
            if flood.poll() is None:
                flood.kill()
            flood.wait(30)
            for stream in (flood.stdin, flood.stdout):
                if stream is not None:
                    stream.close()
        if daemon is not None:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        text = log_path.read_text() if log_path.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
    assert f"RLIMIT_NOFILE): {DAEMON_NOFILE} (raised from {DAEMON_NOFILE // 2})" in text
    assert "Too many open files" not in text
