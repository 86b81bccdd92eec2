"""What an admin meets on a first day with ``vsv``'s client verbs: each mistake gets one line
and the exit code docs/cli.md lists (real processes against the API served over the fake)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.api.app import ApiApp, _route
from supervisor.api.client import SOCKET_PATH_MAX, ApiError, Client
from supervisor.clientcli import (
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    name_problem,
)
from supervisor.validate import _name_problem
from tests.fake_supervisor import ServerThread, short_tmpdir

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "<domain type='lxc'><name>{}</name><os><type>exe</type><init>/bin/sh</init></os></domain>"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    d = short_tmpdir()
    srv = ServerThread(d).start()
    try:
        with Client(srv.rw) as c:
            for i in range(40):  # a listing longer than one line
                c.send_xml("/v1/domains", DOMAIN.format(f"g{i}").encode())
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def vsv(*args: str, stdout: int | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    """``python -m supervisor ARGS`` as a whole process: (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "")},
        input=stdin,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout or "", done.stderr


def test_a_reader_that_goes_away_ends_the_verb_quietly(server: ServerThread) -> None:
    """`vsv list | head -1`: the closed pipe is no error: exit 0, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write gets EPIPE
    try:
        code, _, err = vsv("--socket", server.rw, "list", "--all", stdout=write_end)
    finally:
        os.close(write_end)
    assert (EXIT_OK, "") == (code, err)


def test_a_local_verb_also_ends_quietly_on_a_closed_pipe(tmp_path: Path) -> None:
    """The same for a verb that needs no daemon (`vsv validate *.xml | head -1`)."""
    (tmp_path / "d.xml").write_text(DOMAIN.format("a"))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        code, _, err = vsv("validate", str(tmp_path / "d.xml"), stdout=write_end)
    finally:
        os.close(write_end)
    assert (EXIT_OK, "") == (code, err)


def test_event_loop_without_a_daemon_ends_at_its_timeout(tmp_path: Path) -> None:
    """`vsv event --loop --timeout S` with nobody serving waits S seconds at most, says so once
    and exits 3 (not running), instead of retrying forever."""
    code, out, err = vsv(
        "--socket", str(tmp_path / "none.sock"), "event", "--loop", "--timeout", "1"
    )
    assert (EXIT_NOT_RUNNING, "") == (code, out)
    lines = err.splitlines()
    assert 2 == len(lines)
    assert "waiting for it" in lines[0]
    assert "not running" in lines[1]


def test_socket_paths_that_cannot_work_get_one_line(tmp_path: Path) -> None:
    """A socket in a directory that does not exist, an empty path and one too long for AF_UNIX:
    one line each naming the problem; not running (3) or usage (2)."""
    code, _, err = vsv("--socket", "/missing/dir/x", "list")
    assert (EXIT_NOT_RUNNING, ["vsv: /missing/dir/x: no such directory /missing/dir"]) == (
        code,
        [line.split(": the supervisor")[0] for line in err.splitlines()],
    )
    code, _, err = vsv("--socket", "", "list")
    assert (EXIT_USAGE, "vsv: --socket: the socket path is empty\n") == (code, err)
    long = str(tmp_path / ("s" * SOCKET_PATH_MAX))
    code, _, err = vsv("--socket", long, "list")
    assert (EXIT_USAGE, 1) == (code, len(err.splitlines()))
    assert f"{long}: the socket path is too long" in err


def test_daemon_refuses_unservable_socket_paths_leaving_nothing(tmp_path: Path) -> None:
    """`vsv daemon` with a socket path too long, in a missing directory or empty: one line
    saying so (exit 1; 2 for the empty path, a usage error), and nothing made: no journal, no
    directory."""
    state, run = tmp_path / "state", tmp_path / "run"
    common = ["daemon", "--state-dir", str(state), "--run-dir", str(run), "--prefix", "vsvtx"]
    long = str(tmp_path / ("s" * SOCKET_PATH_MAX) / "x.sock")
    for socket_path, status, words in (
        (long, 1, "the socket path is too long"),
        (str(tmp_path / "no" / "dir" / "x.sock"), 1, f"no directory {tmp_path / 'no' / 'dir'}"),
        ("", 2, "--socket: the socket path is empty"),
    ):
        code, out, err = vsv(*common, "--socket", socket_path)
        said = [line for line in err.splitlines() if line.startswith("vsv daemon:")]
        assert (status, "", 1) == (code, out, len(said)), err
        assert words in said[0]
        assert "Traceback" not in err
        assert [] == sorted(p.name for p in tmp_path.iterdir())


def test_an_impossible_name_is_named(server: ServerThread) -> None:
    """`vsv undefine ../x` says that '../x' is no valid name (exit 1), not "no endpoint"."""
    code, out, err = vsv("--socket", server.rw, "undefine", "../x")
    assert (EXIT_REFUSED, "", 1) == (code, out, len(err.splitlines()))
    assert err.startswith("vsv: error: '../x' is not a valid domain name: it starts with '.'")
    code, _, err = vsv("--socket", server.rw, "net-dumpxml", "a/b")
    assert EXIT_REFUSED == code
    assert "'a/b' is not a valid network name" in err


def test_the_api_keeps_an_escaped_slash_in_its_segment(server: ServerThread) -> None:
    """DELETE /v1/domains/..%2Fx reaches the domain named '../x' (404 naming it)."""
    with Client(server.rw) as c, pytest.raises(ApiError) as caught:
        c.request("DELETE", "/v1/domains/..%2Fx")
    assert (404, "not-found") == (caught.value.status, caught.value.code)
    assert "'../x'" in str(caught.value)
    handler, params = _route("DELETE", "/v1/domains/../x", b"/v1/domains/..%2Fx")
    assert (ApiApp.undefine_domain, {"name": "../x"}) == (handler, params)


def test_define_problems_read_as_file_and_line(server: ServerThread, tmp_path: Path) -> None:
    """A refused definition prints PATH:LINE: message per problem, as `vsv validate` does."""
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='lxc'>\n<name>bad name</name>\n<os><type>exe</type></os></domain>")
    code, out, err = vsv("--socket", server.rw, "define", str(bad))
    assert (EXIT_REFUSED, "") == (code, out)
    assert err.startswith(f"{bad}:2: name: value 'bad name' contains")
    code, _, err = vsv("--socket", server.rw, "define", "-", stdin=bad.read_text())
    assert EXIT_REFUSED == code
    assert err.startswith("<stdin>:2: name:")
    assert vsv("validate", str(bad))[2] == err.replace("<stdin>", str(bad))


@given(st.text(max_size=70))
def test_the_clients_name_rule_is_the_validators(name: str) -> None:
    """The client refuses exactly the names the validator refuses, for the same reason."""
    assert _name_problem(name) == name_problem(name)
