"""The admin's daily verbs: edit/net-edit with real $EDITOR scripts, create (transient),
undefine of a running domain, dumpxml --inactive, net-info, net-autostart, domiflist,
setmem/memtune, and the completion scripts; first over the API's fake (any user), then the
parts that touch a guest against a real daemon (root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.clientcli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, size_kib
from tests import test_cli_daemon
from tests.fake_supervisor import ServerThread, short_tmpdir
from tests.test_cli_daemon import Env, js
from tests.test_cli_daemon import vsv as real_vsv

REPO = Path(__file__).resolve().parent.parent
DOMAIN = """<domain type='lxc'><name>{name}</name><memory>131072</memory>
<os><type>exe</type><init>/bin/sh</init></os>
<devices><interface type='network'><source network='net1'/><mac address='52:54:00:00:00:0{i}'/>
</interface></devices></domain>"""


@pytest.fixture
def server() -> Iterator[ServerThread]:
    d = short_tmpdir()
    srv = ServerThread(d).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def vsv(
    server: ServerThread,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", server.rw, *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def editor(tmp_path: Path, name: str, body: str) -> str:
    """An $EDITOR: a shell script run as `SCRIPT FILE`, which changes FILE as ``body`` says."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\nset -e\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def define(server: ServerThread, tmp_path: Path, name: str, i: int = 1) -> None:
    (tmp_path / f"{name}.xml").write_text(DOMAIN.format(name=name, i=i))
    assert EXIT_OK == vsv(server, "define", str(tmp_path / f"{name}.xml"))[0]


def test_edit_changes_a_field_and_stores_it(server: ServerThread, tmp_path: Path) -> None:
    """An editor that changes the memory: the new definition is stored (DEFINED UPDATED)."""
    define(server, tmp_path, "web1")
    ed = editor(tmp_path, "ed", "sed -i 's/131072/262144/' \"$1\"")
    code, out, err = vsv(server, "edit", "web1", env={"EDITOR": ed})
    assert (EXIT_OK, "Domain 'web1' XML configuration edited.\n", "") == (code, out, err)
    assert "262144" in vsv(server, "dumpxml", "web1")[1]
    code, out, _ = vsv(server, "event", "--since", "0", "--json")
    assert ["ADDED", "UPDATED"] == [json.loads(x)["detail"] for x in out.splitlines()]


def test_edit_without_a_change_says_so(server: ServerThread, tmp_path: Path) -> None:
    """An editor that changes nothing: 'not changed', exit 0, nothing defined; $VISUAL wins."""
    define(server, tmp_path, "web1")
    bad = editor(tmp_path, "bad", "echo '<broken' > \"$1\"")
    code, out, _ = vsv(server, "edit", "web1", env={"VISUAL": "true", "EDITOR": bad})
    assert (EXIT_OK, "Domain 'web1' XML configuration not changed.\n") == (code, out)


def test_an_invalid_edit_is_shown_nothing_stored_and_re_edit_offered(
    server: ServerThread, tmp_path: Path
) -> None:
    """An editor that writes an invalid document: its problem is shown as FILE:LINE, virsh's
    question is asked; 'n' keeps the stored definition (exit 1); 'y' opens the editor again,
    whose second go fixes it."""
    define(server, tmp_path, "web1")
    stored = vsv(server, "dumpxml", "web1")[1]
    bad = editor(tmp_path, "bad", "sed -i 's/>131072</>-5</' \"$1\"")
    code, out, err = vsv(server, "edit", "web1", stdin="n\n", env={"EDITOR": bad})
    assert (EXIT_REFUSED, "") == (code, out)
    assert "/vsv-web1-" in err
    assert ".xml:" in err.splitlines()[0]
    assert "memory" in err.splitlines()[0]
    assert "Failed. Try again? [y,n,?]:" in err
    assert stored == vsv(server, "dumpxml", "web1")[1]
    count = tmp_path / "count"
    twice = editor(
        tmp_path,
        "twice",
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
        'if [ "$n" = 0 ]; then sed -i "s/>131072</>-5</" "$1"; '
        'else sed -i "s/>-5</>65536</" "$1"; fi',
    )
    code, out, err = vsv(server, "edit", "web1", stdin="?\ny\n", env={"EDITOR": twice})
    assert (EXIT_OK, "Domain 'web1' XML configuration edited.\n") == (code, out)
    assert "y - yes, start the editor again" in err
    assert "2" == count.read_text().strip()
    assert ">65536</memory>" in vsv(server, "dumpxml", "web1")[1]


def test_net_edit(server: ServerThread, tmp_path: Path) -> None:
    """net-edit stores the network the editor changed."""
    (tmp_path / "n.xml").write_text("<network><name>net1</name><bridge name='vsvtbr0'/></network>")
    vsv(server, "net-define", str(tmp_path / "n.xml"))
    ed = editor(tmp_path, "ed", "sed -i 's/vsvtbr0/vsvtbr9/' \"$1\"")
    code, out, _ = vsv(server, "net-edit", "net1", env={"EDITOR": ed})
    assert (EXIT_OK, "Network 'net1' XML configuration edited.\n") == (code, out)
    assert "vsvtbr9" in vsv(server, "net-dumpxml", "net1")[1]


def test_create_is_transient_and_undefine_of_a_running_domain_too(
    server: ServerThread, tmp_path: Path
) -> None:
    """create starts a domain that is listed as not persistent and gone once destroyed; an
    undefined running domain runs on, transient, and is gone when it stops."""
    (tmp_path / "t.xml").write_text(DOMAIN.format(name="t1", i=2))
    code, out, _ = vsv(server, "create", str(tmp_path / "t.xml"))
    assert (EXIT_OK, "Domain 't1' created from " + str(tmp_path / "t.xml") + "\n") == (code, out)
    [row] = json.loads(vsv(server, "list", "--json")[1])
    assert ("t1", "RUNNING", False) == (row["name"], row["state"], row["persistent"])
    assert "Persistent: no" in " ".join(vsv(server, "dominfo", "t1")[1].split())
    assert EXIT_REFUSED == vsv(server, "autostart", "t1")[0]
    assert EXIT_OK == vsv(server, "destroy", "t1")[0]
    assert [] == json.loads(vsv(server, "list", "--all", "--json")[1])
    define(server, tmp_path, "web1")
    vsv(server, "start", "web1")
    assert EXIT_OK == vsv(server, "undefine", "web1")[0]
    assert ["web1"] == [r["name"] for r in json.loads(vsv(server, "list", "--json")[1])]
    vsv(server, "destroy", "web1")
    assert [] == json.loads(vsv(server, "list", "--all", "--json")[1])
    assert EXIT_OK == vsv(server, "create", str(tmp_path / "t.xml"))[0]  # gone: made again
    code, _, err = vsv(server, "create", str(tmp_path / "t.xml"))
    assert (EXIT_REFUSED, True) == (code, "already exists" in err)


def test_inactive_xml_info_autostart_iflist_and_memory(
    server: ServerThread, tmp_path: Path
) -> None:
    """dumpxml --inactive, net-info, net-autostart, domiflist and memtune/setmem, human and
    JSON; sizes take virsh's units."""
    define(server, tmp_path, "web1")
    assert "<name>web1</name>" in vsv(server, "dumpxml", "--inactive", "web1")[1]
    (tmp_path / "n.xml").write_text("<network><name>net1</name><bridge name='vsvtbr0'/></network>")
    vsv(server, "net-define", str(tmp_path / "n.xml"))
    _, out, _ = vsv(server, "net-info", "net1")
    pairs = (line.split(":", 1) for line in out.splitlines())
    info = {k.strip(): v.strip() for k, v in pairs}
    assert ("net1", "no", "no", "vsvtbr0") == (
        info["Name"],
        info["Active"],
        info["Autostart"],
        info["Bridge"],
    )
    _, out, _ = vsv(server, "net-autostart", "net1")
    assert "Network net1 marked as autostarted\n" == out
    assert True is json.loads(vsv(server, "net-info", "net1", "--json")[1])["autostart"]
    vsv(server, "net-autostart", "net1", "--disable")
    assert False is json.loads(vsv(server, "net-info", "net1", "--json")[1])["autostart"]
    rows = json.loads(vsv(server, "domiflist", "web1", "--json")[1])
    assert [("network", "net1", "52:54:00:00:00:01")] == [
        (r["type"], r["source"], r["mac"]) for r in rows
    ]
    assert ["Interface", "Type", "Source", "Model", "MAC"] == vsv(server, "domiflist", "web1")[
        1
    ].split()[:5]
    _, out, _ = vsv(server, "memtune", "web1")
    assert "hard_limit:      unlimited\n" == out.splitlines(keepends=True)[0]
    memory = json.loads(
        vsv(server, "memtune", "web1", "--hard-limit", "64M", "--soft-limit", "32768", "--json")[1]
    )["memory"]
    assert (65536, 32768) == (memory["hard_limit_kib"], memory["soft_limit_kib"])
    memory = json.loads(vsv(server, "setmem", "web1", "96M", "--config", "--json")[1])["memory"]
    assert (98304, 98304) == (memory["current_memory_kib"], memory["hard_limit_kib"])
    assert EXIT_USAGE == vsv(server, "setmem", "web1", "96X")[0]
    assert EXIT_USAGE == vsv(server, "setmem", "web1", "1G", "--current", "--live")[0]
    assert (1, 512 << 10, 1 << 20, 2) == (
        size_kib("1k"),
        size_kib("512MiB"),
        size_kib("1G"),
        size_kib("2"),
    )


def test_bash_completion_completes_verbs_options_and_names(
    server: ServerThread, tmp_path: Path
) -> None:
    """The bash script from `vsv completion bash`, run by bash: verbs, a verb's options,
    domain names (asked of the supervisor), network names."""
    define(server, tmp_path, "web1")
    define(server, tmp_path, "web2", 2)
    (tmp_path / "n.xml").write_text("<network><name>net1</name><bridge name='vsvtbr0'/></network>")
    vsv(server, "net-define", str(tmp_path / "n.xml"))
    wrapper = tmp_path / "vsv"
    wrapper.write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m supervisor "$@"\n')
    wrapper.chmod(0o755)
    script = vsv(server, "completion", "bash")[1]

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        program = (
            f"{script}\nCOMP_WORDS=({wrapper} --socket {server.rw} {line}); "
            f"COMP_CWORD={len(words) + 2}; _vsv; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert {"start", "setmem", "schedinfo", "shutdown", "suspend"} <= set(complete("s"))
    assert ["--all"] == complete("list", "--a")
    assert ["web1", "web2"] == complete("start", "")
    assert ["web2"] == complete("dominfo", "web2")
    assert ["net1"] == complete("net-info", "")
    assert "_names" not in complete("_")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_script_parses(server: ServerThread) -> None:
    """The zsh script is valid zsh (zsh -n)."""
    script = vsv(server, "completion", "zsh")[1]
    assert script.startswith("#compdef vsv\n")
    subprocess.run(["zsh", "-n", "-c", script], check=True)


# --- against a real daemon ------------------------------------------------------------------


env = test_cli_daemon.env  # the real daemon fixture, bound here for pytest


def _guest(e: Env, name: str) -> str:
    path = e.base / f"{name}.xml"
    path.write_text(
        f"""<domain type='lxc'><name>{name}</name><memory unit='MiB'>256</memory>
        <os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>
        <initarg>trap 'exit 0' TERM; while :; do sleep 0.1; done</initarg></os>
        <devices><filesystem type='mount'><source dir='{e.root}'/><target dir='/'/></filesystem>
        </devices></domain>"""
    )
    return str(path)


def _memory_limit(prefix: str, name: str) -> int:
    from supervisor.guest.cgroups import detect_layout

    layout = detect_layout()
    if layout.unified is not None and "memory" in layout.v2_controllers:
        text = Path(layout.unified, f"{prefix}-{name}", "memory.max").read_text()
    else:
        memory = layout.v1_path("memory")
        assert memory is not None
        text = Path(memory, f"{prefix}-{name}", "memory.limit_in_bytes").read_text()
    return int(text)


def _events(e: Env, name: str) -> list[dict[str, Any]]:
    _, out, _ = real_vsv(e, "event", "--since", "0", "--domain", name, "--json")
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.root
def test_transient_guests_and_live_memory_on_a_real_daemon(env: Env, prefix: str) -> None:
    """A created guest runs with no stored definition and is gone once it stops; undefining a
    running guest keeps it running until it stops; setmem and memtune --live write the
    guest's cgroup and publish TUNABLE with numbers; --config changes what --inactive shows."""
    e = env
    created = js(e, "create", _guest(e, "t1"))["domain"]
    assert ("RUNNING", False) == (created["state"], created["persistent"])
    assert not (e.base / "state" / "domains" / "t1.xml").exists()
    real_vsv(e, "shutdown", "t1")
    deadline = 60
    until = time.monotonic() + deadline
    while "t1" in [r["name"] for r in js(e, "list", "--all")]:
        assert time.monotonic() < until, "the transient guest stayed"
        time.sleep(0.05)
    assert ["STARTED", "STOPPED"] == [x["type"] for x in _events(e, "t1")]

    js(e, "define", _guest(e, "p1"))
    js(e, "start", "p1")
    js(e, "setmem", "p1", "200M")
    assert 200 << 20 == _memory_limit(prefix, "p1")
    js(e, "memtune", "p1", "--hard-limit", "180M", "--live")
    assert 180 << 20 == _memory_limit(prefix, "p1")
    tunables = [x["data"] for x in _events(e, "p1") if x["type"] == "TUNABLE"]
    assert [
        {"memtune.hard_limit": 200 << 10, "balloon.current": 200 << 10},
        {"memtune.hard_limit": 180 << 10},
    ] == tunables
    js(e, "memtune", "p1", "--hard-limit", "128M", "--config")
    assert 180 << 20 == _memory_limit(prefix, "p1")
    _, live, _ = real_vsv(e, "dumpxml", "p1")
    _, stored, _ = real_vsv(e, "dumpxml", "p1", "--inactive")
    assert ("184320" in live, "131072" in stored) == (True, True)
    assert (184320, "live") == (
        js(e, "memtune", "p1")["memory"]["hard_limit_kib"],
        js(e, "memtune", "p1")["memory"]["state"],
    )

    js(e, "undefine", "p1")
    assert [("p1", "RUNNING", False)] == [
        (r["name"], r["state"], r["persistent"]) for r in js(e, "list", "--all")
    ]
    assert not (e.base / "state" / "domains" / "p1.xml").exists()
    js(e, "destroy", "p1")
    until = time.monotonic() + deadline
    while js(e, "list", "--all"):
        assert time.monotonic() < until, "the undefined guest stayed after it stopped"
        time.sleep(0.05)
    assert "UNDEFINED" in [x["type"] for x in _events(e, "p1")]


def test_docs_list_every_verb_with_its_virsh_counterpart() -> None:
    """docs/cli.md names every listed verb; each client verb's row has a virsh column and an
    exit-code column."""
    from supervisor.cli import build_parser
    from supervisor.clientcli import client_verb_names
    from supervisor.completion import verbs

    text = (REPO / "docs" / "cli.md").read_text()
    missing = [
        name
        for name, _, _, _ in verbs(build_parser())
        if f"`{name}" not in text and f"`vsv {name}" not in text
    ]
    assert [] == missing
    rows = {
        verb: line.count("|")
        for line in text.splitlines()
        if line.startswith("| `")
        for verb in re.findall(r"`([a-z][a-z-]*)", line.split("|")[1])
    }
    client = [
        n for n in client_verb_names() if not n.startswith("_") and n not in ("info", "event")
    ]
    assert dict.fromkeys(client, 6) == {n: rows.get(n) for n in client}
