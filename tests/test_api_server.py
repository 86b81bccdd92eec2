"""The REST API over its real Unix sockets (hypercorn), backed by the in-memory fake facade."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from supervisor.api.app import ROUTES
from supervisor.api.openapi import dump, openapi_document
from supervisor.api.server import serve_api
from supervisor.errors import RuntimeFailure
from tests.fake_supervisor import Running, running_api, short_tmpdir

REPO = Path(__file__).resolve().parent.parent
DOMAIN_XML = (
    b"<domain type='lxc'><name>{name}</name><memory>1024</memory>"
    b"<os><type>exe</type><init>/bin/sh</init></os></domain>"
)


def domain_xml(name: str) -> bytes:
    return DOMAIN_XML.replace(b"{name}", name.encode())


@pytest.fixture
def sockdir() -> Any:
    d = short_tmpdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def api(sockdir: Path) -> AsyncIterator[Running]:
    async with running_api(sockdir, heartbeat=0.2) as run:
        yield run


def client(path: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://vsv")


async def test_define_list_and_seq(api: Running) -> None:
    """Defining answers 201; the list carries the domain and the seq that includes its event."""
    async with client(api.rw) as c:
        r = await c.post("/v1/domains", content=domain_xml("web1"))
        assert 201 == r.status_code
        assert "web1" == r.json()["domain"]["name"]
        listing = (await c.get("/v1/domains")).json()
    assert [("web1", "SHUTOFF")] == [(d["name"], d["state"]) for d in listing["domains"]]
    assert api.journal.last_seq() == listing["seq"]
    assert "DEFINED" == next(iter(api.journal.read_since(listing["seq"] - 1)))["type"]


async def test_lifecycle_and_problem_details(api: Running) -> None:
    """Actions change state; wrong state and unknown names are problems with code and field."""
    async with client(api.rw) as c:
        await c.post("/v1/domains", content=domain_xml("web1"))
        r = await c.post("/v1/domains/web1/start")
        assert (200, "RUNNING") == (r.status_code, r.json()["domain"]["state"])
        r = await c.post("/v1/domains/web1/start")
        assert (409, "invalid-operation", "name") == (
            r.status_code,
            r.json()["code"],
            r.json()["field"],
        )
        assert "application/problem+json" == r.headers["content-type"]
        r = await c.get("/v1/domains/nope/state")
        assert (404, "not-found") == (r.status_code, r.json()["code"])
        r = await c.post("/v1/domains/web1/suspend")
        assert "PAUSED" == r.json()["domain"]["state"]
        r = await c.get("/v1/domains/web1/state")
        assert ("PAUSED", "USER") == (r.json()["state"], r.json()["reason"])
        r = await c.get("/v1/events", params={"since": 0})
        types = [json.loads(line)["type"] for line in r.text.splitlines()]
        assert ["DEFINED", "STARTED", "SUSPENDED"] == types


async def test_bad_input_names_the_field(api: Running) -> None:
    """Invalid XML, bad JSON bodies and bad query parameters say which field was wrong."""
    async with client(api.rw) as c:
        r = await c.post("/v1/domains", content=b"<domain><nam")
        assert (400, "invalid-document", "body") == (
            r.status_code,
            r.json()["code"],
            r.json()["field"],
        )
        assert 1 <= len(r.json()["problems"])
        await c.post("/v1/domains", content=domain_xml("web1"))
        r = await c.put("/v1/domains/web1/autostart", json={"autostart": "yes"})
        assert (400, "autostart") == (r.status_code, r.json()["field"])
        r = await c.get("/v1/events", params={"since": "-1"})
        assert (400, "since") == (r.status_code, r.json()["field"])
        r = await c.put("/v1/domains/web1/schedinfo", json={"params": {"cpu_shares": "x"}})
        assert (400, "invalid-parameter") == (r.status_code, r.json()["code"])
        r = await c.delete("/v1/domains")
        assert (405, "method-not-allowed") == (r.status_code, r.json()["code"])


async def test_read_only_socket_refuses_every_mutation(api: Running) -> None:
    """Every non-GET route on the read-only socket answers 403 read-only."""
    async with client(api.rw) as rw:
        await rw.post("/v1/domains", content=domain_xml("web1"))
    before = api.journal.last_seq()
    mutating = [
        (m, "/" + "/".join(p).replace("{name}", "web1")) for m, p, _ in ROUTES if m != "GET"
    ]
    assert 10 <= len(mutating)
    async with client(api.ro) as ro:
        answers = [(await ro.request(m, p, content=b"{}")) for m, p in mutating]
        assert [(403, "read-only")] * len(mutating) == [
            (r.status_code, r.json()["code"]) for r in answers
        ]
        assert 200 == (await ro.get("/v1/domains/web1")).status_code
    assert before == api.journal.last_seq()


async def test_socket_modes(api: Running, sockdir: Path) -> None:
    """The read-write socket is 0600 root-only; the read-only one 0666."""
    assert 0o600 == stat.S_IMODE(os.stat(api.rw).st_mode)
    assert 0o666 == stat.S_IMODE(os.stat(api.ro).st_mode)


async def test_group_socket_mode(sockdir: Path) -> None:
    """With a group the read-write socket is 0660 and owned by that group."""
    async with running_api(sockdir, group=65534) as run:
        st = os.stat(run.rw)
        assert (0o660, 65534) == (stat.S_IMODE(st.st_mode), st.st_gid)


async def test_second_server_is_refused_and_sockets_removed(api: Running, sockdir: Path) -> None:
    """A live socket is not stolen by a second server; a stopped server removes its sockets."""
    with pytest.raises(RuntimeFailure, match="another supervisor"):
        await serve_api(api.fake, api.journal, socket_path=api.rw, ro_socket_path=None)
    other = sockdir / "other"
    other.mkdir()
    async with running_api(other) as run:
        assert True is Path(run.rw).exists()
    assert False is (other / "rw.sock").exists()


async def test_mutations_log_the_peer(api: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Each mutation is logged with the peer's uid and pid from SO_PEERCRED."""
    caplog.set_level(logging.INFO, logger="supervisor.api")
    async with client(api.rw) as c:
        await c.post("/v1/domains", content=domain_xml("web1"))
    records = [r for r in caplog.records if r.getMessage().startswith("api mutation")]
    assert [(os.getuid(), os.getpid(), "/v1/domains")] == [
        (r.__dict__["peer_uid"], r.__dict__["peer_pid"], r.__dict__["path"]) for r in records
    ]


async def test_event_filters_and_gap(sockdir: Path) -> None:
    """Streams filter by domain and type; a reader behind retention gets a gap record first."""
    from supervisor.journal import Retention

    async with running_api(
        sockdir, retention=Retention(max_events=20, max_age=None), segment_events=10
    ) as run:
        for i in range(50):
            run.fake.emit("domain", f"d{i % 2}", "STARTED" if i % 3 else "STOPPED", "X")
        async with client(run.rw) as c:
            lines = (await c.get("/v1/events", params={"since": 45, "domain": "d1"})).text
            got = [json.loads(line) for line in lines.splitlines()]
            assert [46, 48, 50] == [g["seq"] for g in got]
            lines = (await c.get("/v1/events", params={"since": 0, "limit": 2})).text
            got = [json.loads(line) for line in lines.splitlines()]
            first = run.journal.first_seq()
            assert first is not None
            assert [("gap", first - 1), ("domain", first)] == [(g["kind"], g["seq"]) for g in got]
            assert 1 == got[0]["data"]["first_missing"]
            lines = (await c.get("/v1/events", params={"since": 45, "type": "stopped"})).text
            assert [46, 49] == [json.loads(line)["seq"] for line in lines.splitlines()]


async def test_follow_stream_heartbeat_and_sse(api: Running) -> None:
    """A followed stream delivers new events and heartbeats; SSE frames carry the seq as id."""
    async with client(api.rw) as c:
        with trio.fail_after(5):
            async with c.stream(
                "GET", "/v1/events", params={"follow": "true", "heartbeat": "0.1", "limit": 1}
            ) as r:
                got = []
                async for line in r.aiter_lines():
                    got.append(json.loads(line))
                    if got[-1]["kind"] == "heartbeat" and len(got) == 1:
                        api.fake.emit("domain", "web1", "STARTED", "BOOTED")
        assert ("heartbeat", 0) == (got[0]["kind"], got[0]["seq"])
        assert [(1, "STARTED")] == [(g["seq"], g["type"]) for g in got if g["kind"] != "heartbeat"]
        with trio.fail_after(5):
            r = await c.get("/v1/events", params={"since": 0, "format": "sse"})
            assert "text/event-stream" == r.headers["content-type"]
            assert r.text.startswith("id: 1\nevent: domain\ndata: {")


async def test_openapi_served_and_kept_in_repo(api: Running) -> None:
    """/openapi.json is the generated document, and docs/openapi.json is the same text."""
    async with client(api.ro) as c:
        assert openapi_document() == (await c.get("/openapi.json")).json()
    assert dump() == (REPO / "docs" / "openapi.json").read_text()


def _nobody_connect(path: str) -> int:
    code = (
        "import sys; from supervisor.api.client import *\n"
        "try:\n"
        f"    Client({path!r}).get_json('/v1/domains')\n"
        "except SocketNotPermitted: sys.exit(4)\n"
        "except DaemonNotRunning: sys.exit(3)\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")},
        check=False,
        timeout=30,
    )
    return done.returncode


@pytest.mark.root  # switching to nobody needs root
async def test_non_root_is_refused_on_the_rw_socket(api: Running, sockdir: Path) -> None:
    """User nobody cannot use the read-write socket but can read through the read-only one."""
    os.chmod(sockdir, 0o755)
    rw = await trio.to_thread.run_sync(_nobody_connect, api.rw)
    ro = await trio.to_thread.run_sync(_nobody_connect, api.ro)
    assert (4, 0) == (rw, ro)
