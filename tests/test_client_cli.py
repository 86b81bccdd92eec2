"""The client verbs of ``vsv`` end to end: real processes against a served API over the fake."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.clientcli import (
    EXIT_NOT_PERMITTED,
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    register_client_verbs,
    resolve_socket,
)
from supervisor.facade import Lease
from tests.fake_supervisor import ServerThread, short_tmpdir

REPO = Path(__file__).resolve().parent.parent
DOMAIN = """<domain type='lxc'><name>web1</name><memory>1024</memory>
<os><type>exe</type><init>/bin/sh</init></os>
<devices><interface type='network'><source network='net1'/><mac address='52:54:00:00:00:01'/>
</interface></devices></domain>"""
NETWORK = "<network><name>net1</name><bridge name='vsvtbr0'/></network>"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    d = short_tmpdir()
    srv = ServerThread(d).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def vsv(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.clientcli", *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def ok_json(server: ServerThread, *args: str) -> Any:
    code, out, err = vsv("--socket", server.rw, *args, "--json")
    assert (0, "") == (code, err)
    return json.loads(out)


def test_every_verb_end_to_end(server: ServerThread, tmp_path: Path) -> None:
    """Each verb works against a running server; --json output parses and says what happened."""
    (tmp_path / "d.xml").write_text(DOMAIN)
    (tmp_path / "n.xml").write_text(NETWORK)
    s = server.rw
    assert "net1" == ok_json(server, "net-define", str(tmp_path / "n.xml"))["network"]["name"]
    assert True is ok_json(server, "net-start", "net1")["network"]["active"]
    assert ["net1"] == [n["name"] for n in ok_json(server, "net-list")]
    assert "vsvtbr0" in ok_json(server, "net-dumpxml", "net1")["xml"]
    assert "web1" == ok_json(server, "define", str(tmp_path / "d.xml"))["domain"]["name"]
    assert [] == ok_json(server, "list")
    rows = ok_json(server, "list", "--all")
    assert [("web1", None, "SHUTOFF")] == [(r["name"], r["id"], r["state"]) for r in rows]
    assert "RUNNING" == ok_json(server, "start", "web1")["domain"]["state"]
    rows = ok_json(server, "list")
    assert ["web1"] == [r["name"] for r in rows]
    assert True is isinstance(rows[0]["id"], int)
    paused = ok_json(server, "suspend", "web1")["domain"]
    assert ("PAUSED", "USER") == (paused["state"], paused["reason"])
    assert "RUNNING" == ok_json(server, "resume", "web1")["domain"]["state"]
    assert "RUNNING" == ok_json(server, "reboot", "web1")["domain"]["state"]
    assert {"state": "RUNNING", "reason": "UNPAUSED"} == {
        k: v for k, v in ok_json(server, "domstate", "web1").items() if k in ("state", "reason")
    }
    assert "web1" == ok_json(server, "dominfo", "web1")["name"]
    assert "<name>web1</name>" in ok_json(server, "dumpxml", "web1")["xml"]
    assert True is ok_json(server, "autostart", "web1")["autostart"]
    assert (
        2048
        == ok_json(server, "schedinfo", "web1", "--set", "cpu_shares=2048")["params"]["cpu_shares"]
    )
    assert 2048 == ok_json(server, "schedinfo", "web1")["params"]["cpu_shares"]
    lease = Lease("net1", "52:54:00:00:00:01", "10.0.0.5", 24, "web1", None, "web1")
    run = server.running
    assert run is not None
    server.call(lambda: run.fake.leases.setdefault("net1", []).append(lease))
    assert ["10.0.0.5"] == [x["ip"] for x in ok_json(server, "net-dhcp-leases", "net1")]
    ifaces = ok_json(server, "domifaddr", "web1")
    assert [("52:54:00:00:00:01", ["10.0.0.5"])] == [
        (i["mac"], [a["address"] for a in i["addresses"]]) for i in ifaces
    ]
    assert "SHUTOFF" == ok_json(server, "shutdown", "web1")["domain"]["state"]
    ok_json(server, "start", "web1")
    assert "DESTROYED" == ok_json(server, "destroy", "web1")["domain"]["reason"]
    assert "seq" in ok_json(server, "info")
    code, out, _ = vsv("--socket", s, "event", "--since", "0", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert 0 == code
    assert {"seq", "domain", "type", "detail", "time"} <= set(events[0])
    assert list(range(1, len(events) + 1)) == [e["seq"] for e in events]
    code, out, _ = vsv(
        "--socket", s, "event", "--since", "0", "--domain", "web1", "--type", "STOPPED", "--json"
    )
    assert ["SHUTDOWN", "DESTROYED"] == [json.loads(line)["detail"] for line in out.splitlines()]
    assert "seq" in ok_json(server, "undefine", "web1")
    ok_json(server, "net-destroy", "net1")
    assert "seq" in ok_json(server, "net-undefine", "net1")
    assert [] == ok_json(server, "net-list", "--all")


def test_human_output_and_errors(server: ServerThread, tmp_path: Path) -> None:
    """Without --json verbs print tables; refusals print the problem and exit 1."""
    (tmp_path / "d.xml").write_text(DOMAIN.replace("web1", "web2"))
    s = server.rw
    assert 0 == vsv("--socket", s, "define", str(tmp_path / "d.xml"))[0]
    code, out, _ = vsv("--socket", s, "list", "--all")
    assert (0, ["Id", "Name", "State"]) == (code, out.split()[:3])
    assert "shut off" in out
    code, out, err = vsv("--socket", s, "undefine", "nope")
    assert (EXIT_REFUSED, "") == (code, out)
    assert "nope" in err
    code, _, err = vsv("--socket", s, "define", "-", stdin="<domain><name>x</name")
    assert EXIT_REFUSED == code
    assert err.startswith("<stdin>:1: document: not well-formed XML")
    code, out, _ = vsv("--socket", s, "event", "--since", "0")
    assert 0 == code
    assert "'web2': DEFINED ADDED" in out


def test_daemon_not_running_and_read_only(server: ServerThread, tmp_path: Path) -> None:
    """No daemon: exit 3 with a clear message; a mutation on the read-only socket: exit 4."""
    code, _, err = vsv("--socket", str(tmp_path / "none.sock"), "list")
    assert EXIT_NOT_RUNNING == code
    assert "not running" in err
    code, _, err = vsv("start", "x", env={"VSV_SOCKET": server.ro})
    assert EXIT_NOT_PERMITTED == code
    assert "read-only" in err
    code, out, _ = vsv("list", "--all", "--json", env={"VSV_SOCKET": server.ro})
    assert (0, list) == (code, type(json.loads(out)))


def test_socket_resolution_order() -> None:
    """--socket wins over $VSV_SOCKET, which wins over the default."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", default=None)
    register_client_verbs(parser.add_subparsers(dest="verb"))
    assert "/a" == resolve_socket(
        parser.parse_args(["--socket", "/a", "list"]), {"VSV_SOCKET": "/b"}
    )
    assert "/c" == resolve_socket(parser.parse_args(["list", "--socket", "/c"]), {})
    assert "/b" == resolve_socket(parser.parse_args(["list"]), {"VSV_SOCKET": "/b"})
    assert "/run/vsv/vsv.sock" == resolve_socket(parser.parse_args(["list"]), {})


def test_client_path_imports_no_trio_or_httpx() -> None:
    """A client verb's import closure contains neither trio, httpx nor the server code."""
    code = (
        "import sys, supervisor.clientcli\n"
        "mods = ('trio', 'httpx', 'hypercorn', 'supervisor.api.app')\n"
        "bad = [m for m in mods if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "[]" == out.strip()


def test_a_domain_by_name_id_or_uuid(server: ServerThread, tmp_path: Path) -> None:
    """DOMAIN may be an id or a UUID (with or without dashes), as with virsh; a name comes
    first, so a domain named like another's id is still reached by its name."""
    doc = """<domain type='vserver' id='{id}'><name>{name}</name><uuid>{uuid}</uuid>
<os><type>exe</type><init>/bin/sh</init></os></domain>"""
    uuids = ("6f1c2a10-9a1b-4c3d-8e4f-0a1b2c3d4e5f", "6f1c2a10-9a1b-4c3d-8e4f-0a1b2c3d4e60")
    for i, (name, context) in enumerate((("ctx-a", 301), ("302", 303))):
        (tmp_path / f"v{i}.xml").write_text(doc.format(id=context, name=name, uuid=uuids[i]))
        ok_json(server, "define", str(tmp_path / f"v{i}.xml"))
        ok_json(server, "start", name)  # the fake gives an id only while running, as libvirt
    try:
        assert "ctx-a" == ok_json(server, "dominfo", "301")["name"]
        assert "ctx-a" == ok_json(server, "dominfo", uuids[0].upper())["name"]
        assert "ctx-a" == ok_json(server, "dominfo", uuids[0].replace("-", ""))["name"]
        assert "302" == ok_json(server, "dominfo", "302")["name"]  # the name, not an id
        assert "302" == ok_json(server, "dominfo", "303")["name"]
        code, _out, err = vsv("--socket", server.rw, "dominfo", "999")
        assert (1, "vsv: error: no domain named '999'\n") == (code, err)
    finally:
        for name in ("ctx-a", "302"):
            vsv("--socket", server.rw, "destroy", name)
            vsv("--socket", server.rw, "undefine", name)
