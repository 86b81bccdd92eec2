"""The console's hub, its WebSocket endpoint and ``vsv console`` against the in-memory facade.

The fake guest echoes what it is typed (EchoSink), so the whole path from a real terminal
through the ``vsv`` process, the WebSocket and the API to the guest's side and back is
exercised without root; tests/test_console.py does the same with real guests.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import struct
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor import gc
from supervisor.api.client import ApiError, ProtocolError
from supervisor.api.wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameParser,
    Message,
    WebSocket,
    accept_key,
    encode_frame,
)
from supervisor.console import (
    CLIENT_BUFFER,
    DEFAULT_SIZE,
    ConsoleBusy,
    ConsoleClient,
    ConsoleOutput,
    GuestConsole,
)
from supervisor.gc import keeper_socket
from supervisor.guest.ptykeeper import SOCKET_NAME, ConsoleKeeper
from supervisor.model import Console, Domain
from supervisor.testing.fakefacade import EchoSink, FakeSupervisor
from tests.fake_supervisor import ServerThread, short_tmpdir
from tests.terminal import Person

# -- the framing (pure) --------------------------------------------------------------------------


def test_accept_key_is_rfc_6455s_example() -> None:
    """The handshake's accept value is the one RFC 6455 section 1.3 gives for its sample key."""
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" == accept_key(b"dGhlIHNhbXBsZSBub25jZQ==")


def _fragments(opcode: int, data: bytes, cuts: list[int]) -> bytes:
    """``data`` as a first frame and continuations, cut at ``cuts`` (unmasked: a server's)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)] or [b""]
    out = b""
    for i, piece in enumerate(pieces):
        fin = 0x80 if i == len(pieces) - 1 else 0
        frame = encode_frame(opcode if i == 0 else OP_CONTINUATION, piece)
        out += bytes([fin | frame[0] & 0x0F]) + frame[1:]
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from([OP_TEXT, OP_BINARY]),
            st.binary(max_size=70_000),
            st.lists(st.integers(min_value=0), max_size=3),
        ),
        max_size=5,
    ),
    st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=20),
)
def test_parser_reassembles_messages_however_the_stream_is_cut(
    messages: list[tuple[int, bytes, list[int]]], reads: list[int]
) -> None:
    """Fragmented messages with pings between them, read in any chunk sizes, come out whole and
    in order (sizes cross the 7-, 16- and 64-bit length forms)."""
    stream = b""
    expected: list[Message] = []
    for opcode, data, cuts in messages:
        stream += _fragments(opcode, data, cuts) + encode_frame(OP_PING, b"p")
        expected += [Message(opcode, data), Message(OP_PING, b"p")]
    parser = FrameParser()
    got: list[Message] = []
    position, turn = 0, 0
    while position < len(stream):
        size = reads[turn % len(reads)]
        got += parser.feed(stream[position : position + size])
        position, turn = position + size, turn + 1
    assert expected == got


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (encode_frame(OP_BINARY, b"x", mask=b"abcd"), "masked"),
        (bytes([0xC2, 1]) + b"x", "reserved"),
        (bytes([0x09, 0]), "control frame"),
        (encode_frame(OP_CONTINUATION, b"x"), "continuation"),
        (bytes([0x83, 0]), "opcode"),
    ],
)
def test_parser_refuses_what_a_server_must_not_send(frame: bytes, why: str) -> None:
    """A masked frame, reserved bits, a fragmented ping, a stray continuation, an unknown
    opcode: each is a ProtocolError naming it."""
    with pytest.raises(ProtocolError, match=why):
        FrameParser().feed(frame)


def test_client_frames_are_masked() -> None:
    """A client frame carries the mask bit and its payload XOR the mask."""
    frame = encode_frame(OP_TEXT, b"hello", mask=b"\x01\x02\x03\x04")
    assert (0x81, 0x85, b"\x01\x02\x03\x04") == (frame[0], frame[1], frame[2:6])
    assert b"hello" == bytes(
        b ^ m for b, m in zip(frame[6:], b"\x01\x02\x03\x04" * 2, strict=False)
    )


# -- the hub (pure trio state) -------------------------------------------------------------------


def _hub() -> tuple[GuestConsole, EchoSink]:
    console = GuestConsole("g")
    sink = EchoSink(console)
    console.connect(sink)
    return console, sink


async def test_one_client_at_a_time_and_force_takes_over() -> None:
    """A second client is refused naming --force and the holder; with force it gets the
    console and the first one's session ends as taken-over."""
    console, _sink = _hub()
    first = console.attach(ConsoleClient(pid=10, uid=0))
    with pytest.raises(ConsoleBusy, match=r"pid 10, uid 0.*--force") as busy:
        console.attach(ConsoleClient(pid=11, uid=0))
    assert 10 == busy.value.holder.pid
    second = console.attach(ConsoleClient(pid=12, uid=0), force=True)
    out = await first.next_output()
    assert ("taken-over", True) == (out.ended, "pid 12" in out.detail)
    first.write(b"ignored")  # an ended session types nothing
    second.write(b"mine")
    assert ConsoleOutput(b"mine") == await second.next_output()
    assert (2, 1) == (console.statistics().sessions, console.statistics().taken_over)


async def test_a_slow_client_has_output_skipped_not_queued() -> None:
    """Beyond the client buffer output is counted as skipped (the guest never waits)."""
    console, _sink = _hub()
    session = console.attach(ConsoleClient())
    chunk = b"x" * 4096
    for _ in range(CLIENT_BUFFER // len(chunk) + 3):
        console.feed(chunk)
    out = await session.next_output()
    assert (CLIENT_BUFFER, 3 * len(chunk)) == (len(out.data), out.skipped)
    console.feed(b"after")
    assert ConsoleOutput(b"after") == await session.next_output()


async def test_input_without_a_guest_is_dropped_and_the_size_kept_for_the_next() -> None:
    """Typed while no guest pty is connected: dropped (counted); the window size is kept and
    given to the next boot's pty when it connects (24x80 before any client said one)."""
    console = GuestConsole("g")
    session = console.attach(ConsoleClient())
    session.write(b"lost")
    session.resize(50, 132)
    sink = EchoSink(console)
    console.connect(sink)
    assert ([(50, 132)], 4) == (sink.sizes, console.statistics().dropped_in)
    other = GuestConsole("h")
    first = EchoSink(other)
    other.connect(first)
    assert [DEFAULT_SIZE] == first.sizes


async def test_a_stopped_guest_ends_the_session() -> None:
    """end_session: the client learns why, and the console is free."""
    console, _sink = _hub()
    session = console.attach(ConsoleClient())
    console.end_session("stopped", "domain 'g' stopped")
    with trio.fail_after(5):
        out = await session.next_output()
    assert ("stopped", None) == (out.ended, console.session)


# -- the relay on a real pty ---------------------------------------------------------------------


def _window(fd: int) -> tuple[int, int]:
    rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


async def test_the_relay_logs_forwards_types_and_drains(tmp_path: Path) -> None:
    """Output goes to the log and the attached client, input and the size to the pty; the
    guest closing its end does not end the relay; what is left when it stops is drained."""
    master, slave = os.openpty()
    log = tmp_path / "g.log"
    console = GuestConsole("g")
    session = console.attach(ConsoleClient())
    async with trio.open_nursery() as nursery:
        relay = console.begin_relay()
        nursery.start_soon(console.run_relay, relay, master, str(log))
        with trio.fail_after(10):
            while not console.live:
                await trio.sleep(0.01)
            assert DEFAULT_SIZE == _window(slave)
            os.write(slave, b"boot\n")
            got = b""
            while b"boot" not in got:
                got += (await session.next_output()).data
            session.resize(41, 99)
            assert (41, 99) == _window(slave)
            session.write(b"typed\n")
            while b"typed" not in (seen := os.read(slave, 100) if _readable(slave) else b""):
                await trio.sleep(0.01)
            assert seen.startswith(b"typed")
            reopened = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY)
            os.close(slave)  # the guest closes its console and opens it again: still relayed
            os.write(reopened, b"last words\n")
            await console.stop_relay()
            os.close(reopened)
    assert not console.statistics().live
    assert b"boot" in log.read_bytes()
    assert log.read_bytes().endswith(b"last words\r\n")


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


async def test_a_broken_relay_costs_the_console_not_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relay that fails (here: no pty at all) is logged; the runner's task goes on."""
    console = GuestConsole("g")
    read_end, write_end = os.pipe()
    os.close(write_end)
    await console.run_relay(console.begin_relay(), read_end, None)
    assert "the console relay failed" in caplog.text
    assert not console.live


# -- the endpoint and the verb over the fake facade --------------------------------------------


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """The API on the fake with ``g`` (a console, running), ``n`` (no console) and ``off``
    (a console, not running)."""
    d = short_tmpdir()
    srv = ServerThread(d).start()
    assert srv.running is not None
    fake = srv.running.fake
    for domain in (
        Domain(name="g", consoles=(Console(),)),
        Domain(name="n"),
        Domain(name="off", consoles=(Console(),)),
    ):
        srv.call(fake.define_domain, domain)
    srv.call(fake.start_domain, "g")
    srv.call(fake.start_domain, "n")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def _fake(srv: ServerThread) -> FakeSupervisor:
    assert srv.running is not None
    return srv.running.fake


def _sink(srv: ServerThread, name: str = "g") -> EchoSink:
    sink = _fake(srv).domains[name].echo
    assert sink is not None
    return sink


def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/domains/zz/console", 404, "not-found"),
        ("/v1/domains/n/console", 409, "no-console"),
        ("/v1/domains/off/console", 409, "invalid-operation"),
        ("/v1/domains/g/consoles", 404, "no-route"),
        ("/v1/domains/g/console?force=maybe", 400, "bad-parameter"),
    ],
)
def test_refused_upgrades_are_problem_documents(
    server: ServerThread, path: str, status: int, code: str
) -> None:
    """Each refusal of the upgrade is the ordinary problem answer with its stable code."""
    with pytest.raises(ApiError) as refused:
        WebSocket.connect(server.rw, path)
    assert (status, code) == (refused.value.status, refused.value.code)


def test_read_only_socket_serves_no_console(server: ServerThread) -> None:
    """The console takes input: 403 read-only on the read-only socket."""
    with pytest.raises(ApiError) as refused:
        WebSocket.connect(server.ro, "/v1/domains/g/console")
    assert (403, "read-only") == (refused.value.status, refused.value.code)


def test_plain_get_is_told_to_upgrade(server: ServerThread) -> None:
    """The console's path without an upgrade: 426 upgrade-required (404 for no domain)."""
    from supervisor.api.client import Client

    with Client(server.rw) as client, pytest.raises(ApiError) as refused:
        client.get_json("/v1/domains/g/console")
    assert (426, "upgrade-required") == (refused.value.status, refused.value.code)


def test_messages_both_ways_and_resize(server: ServerThread) -> None:
    """Binary messages are the terminal's bytes both ways; a resize message sets the size."""
    with WebSocket.connect(server.rw, "/v1/domains/g/console") as ws:
        ws.send_text(json.dumps({"type": "resize", "rows": 33, "cols": 101}))
        ws.send_binary(b"ls\r")
        got = b""
        while got != b"ls\r":
            got += b"".join(m.data for m in ws.receive() or [] if m.opcode == OP_BINARY)
        assert (33, 101) == _sink(server).sizes[-1]
        ws.send_close()
        assert [OP_CLOSE] == [m.opcode for m in ws.receive() or []]


def test_the_verb_types_echoes_and_detaches_with_ctrl_bracket(server: ServerThread) -> None:
    """`vsv console g` on a terminal: keys reach the guest (Ctrl-C too, as a byte), its output
    shows, Ctrl-] detaches with status 0 and the terminal's settings are back."""
    person = Person(server.rw, "g")
    try:
        person.read_until(b"Escape character is ^] (Ctrl + ])")
        person.type(b"echo hi\r\x03")
        person.read_until(b"echo hi\r\x03")
        person.type(b"\x1d")
        assert 0 == person.wait()
        assert person.restored()
        assert b"echo hi\r\x03" == bytes(_sink(server).typed)
    finally:
        person.close()


def test_the_window_size_follows_the_terminal(server: ServerThread) -> None:
    """The size is sent on attach and again after each SIGWINCH."""
    person = Person(server.rw, "g", rows=30, cols=90)
    try:
        person.read_until(b"Ctrl + ]")
        _until(lambda: _sink(server).sizes[-1:] == [(30, 90)], "first size")
        person.resize(45, 160)
        _until(lambda: _sink(server).sizes[-1:] == [(45, 160)], "the size after SIGWINCH")
    finally:
        person.close()


def test_second_client_is_refused_and_force_takes_over(server: ServerThread) -> None:
    """A second `vsv console` exits 1 with one line naming --force; `--force` takes the
    console, and the first client says so and exits 1 with its terminal restored."""
    first = Person(server.rw, "g")
    try:
        first.read_until(b"Ctrl + ]")
        second = Person(server.rw, "g")
        try:
            assert 1 == second.wait()
            assert "use --force to take it over" in second.shown()
            assert 1 == len(second.shown().strip().splitlines())
        finally:
            second.close()
        third = Person(server.rw, "g", "--force")
        try:
            third.read_until(b"Ctrl + ]")
            assert 1 == first.wait()
            assert "taken over by another client" in first.shown()
            assert first.restored()
            third.type(b"x")
            third.read_until(b"x")
            assert b"x" == bytes(_sink(server).typed)
        finally:
            third.close()
    finally:
        first.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_raw_mode_is_undone_when_a_signal_ends_the_client(
    server: ServerThread, signum: signal.Signals
) -> None:
    """A signal that ends `vsv console` leaves the terminal as it found it (status 128+N)."""
    person = Person(server.rw, "g")
    try:
        person.read_until(b"Ctrl + ]")
        _until(lambda: not person.restored(), "raw mode")
        person.proc.send_signal(signum)
        assert 128 + signum == person.wait()
        assert person.restored()
    finally:
        person.close()


def test_a_stopped_guest_ends_the_verb(server: ServerThread) -> None:
    """The guest stops while attached: the client says so and exits 0."""
    person = Person(server.rw, "g")
    try:
        person.read_until(b"Ctrl + ]")
        _until(lambda: _fake(server).domains["g"].console.session is not None, "the session")  # type: ignore[union-attr]
        server.call(_fake(server).destroy_domain, "g")
        assert 0 == person.wait()
        assert "domain 'g' stopped" in person.shown()
        assert person.restored()
    finally:
        person.close()


@pytest.mark.parametrize(
    ("name", "socket", "status", "text"),
    [
        ("n", "rw", 1, "has no console"),
        ("off", "rw", 1, "is not running"),
        ("zz", "rw", 1, "no domain named 'zz'"),
        ("g", "ro", 4, "read-write socket only"),
    ],
)
def test_refusals_are_one_line_with_the_documented_status(
    server: ServerThread, name: str, socket: str, status: int, text: str
) -> None:
    """No console, not running, unknown, the read-only socket: one line, exit 1 (4)."""
    person = Person(server.rw if socket == "rw" else server.ro, name)
    try:
        assert status == person.wait()
        lines = person.shown().strip().splitlines()
        assert (1, True) == (len(lines), text in lines[0]), lines
        assert person.restored()
    finally:
        person.close()


def test_no_supervisor_is_exit_3(tmp_path: Path) -> None:
    """Nothing serving the socket: exit 3, as every client verb."""
    person = Person(str(tmp_path / "none.sock"), "g")
    try:
        assert 3 == person.wait()
    finally:
        person.close()


# -- the console keeper ---------------------------------------------------------------------------


def _kept(path: str) -> dict[str, str]:
    """What a keeper at ``path`` holds, asked on a connection of its own."""
    other = ConsoleKeeper(path)
    try:
        return other.kept()
    finally:
        other.close()


def test_the_keeper_holds_a_pty_open_until_dropped() -> None:
    """A pty whose ends went to the keeper is not hung up when ours close; a client with the
    boot's key takes copies back (another key gets nothing); drop forgets it, and the keeper
    exits once it holds nothing and nobody is connected."""
    d = short_tmpdir()
    path = str(d / SOCKET_NAME)
    keeper = ConsoleKeeper(path)
    try:
        keeper.start()
        master, slave = os.openpty()
        keeper.keep("g", "7:42", [master, os.dup(slave)])
        assert {"g": "7:42"} == keeper.kept()
        os.close(master)  # our master is gone; the keeper's copy keeps the pty up
        os.write(slave, b"still here\n")
        os.close(slave)
        assert keeper.take("g", "8:42") is None
        taken = keeper.take("g", "7:42")
        assert taken is not None
        copy_master, copy_slave = taken
        os.set_blocking(copy_master, False)
        assert os.read(copy_master, 100).startswith(b"still here")
        os.close(copy_master)
        os.close(copy_slave)
        pair = list(os.openpty())
        keeper.keep("h", "1:1", pair)
        for fd in pair:
            os.close(fd)
        keeper.drop("g")
        keeper.close()
        assert {"h": "1:1"} == _kept(path)  # nobody connected, but it holds h's console
        keeper.drop("h")
        keeper.close()
        _until(lambda: not os.path.exists(path), "the keeper's exit")
        assert {} == _kept(path)
    finally:
        keeper.close()
        shutil.rmtree(d, ignore_errors=True)


def test_gc_knows_a_keeper_by_its_socket() -> None:
    """The command line of a keeper names the socket it serves; nothing else is taken for one."""
    argv = ["/usr/bin/python3", "-I", "-S", "/x/supervisor/guest/ptykeeper.py", "/run/vsv/k.sock"]
    assert "/run/vsv/k.sock" == keeper_socket(argv)
    assert keeper_socket(["dnsmasq", "--conf-file=/run/vsv/net/vsv-a.conf"]) is None
    assert keeper_socket(["python3", "ptykeeper.py.bak", "/run/vsv/k.sock"]) is None


@pytest.mark.root
def test_gc_removes_a_keeper_a_supervisor_left(prefix: str) -> None:
    """`vsv gc --run-dir D` finds the keeper serving D (holding a console) and ends it."""
    d = short_tmpdir()
    keeper = ConsoleKeeper(str(d / SOCKET_NAME))
    try:
        keeper.start()
        pair = list(os.openpty())
        keeper.keep("g", "1:1", pair)
        for fd in pair:
            os.close(fd)
        keeper.close()
        found = [x for x in gc.find(prefix, run_dir=d) if x.where == keeper.path]
        assert ["process"] == [x.kind for x in found]
        assert [None] == [error for _item, error in gc.remove(found)]
        assert {} == ConsoleKeeper(keeper.path).kept()
    finally:
        keeper.close()
        shutil.rmtree(d, ignore_errors=True)
