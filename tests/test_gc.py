"""``vsv gc``: pure selection rules (property tests) and, as root, a real crash's leftovers.

The root tests build what a crashed supervisor leaves with the test's own prefix: a guest cgroup
(every v1 controller a guest uses and the unified hierarchy, with a nested child cgroup) holding
two sleeping processes, a running dnsmasq whose conf file is in the run dir, a sandbox network
namespace with prefixed links and nftables tables in it, a guest network namespace, and run-dir
records and files. No link is ever created in the host's root namespace. Everything is removed
again in the fixture's ``finally``, whatever gc did.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import gc, nsutil
from supervisor.cli import add_gc_parser
from supervisor.gc import KIND_ORDER, Leftover
from supervisor.guest.cgroups import GuestCgroup, detect_layout

LEAKCHECK = "/work/shared/tools/leakcheck"

# ------------------------------------------------------------------------------ pure rules

names = st.text(alphabet="abcvstx-_0123456789", min_size=0, max_size=12)
prefixes = st.text(alphabet="abcvst-_", min_size=2, max_size=5)


@given(st.lists(names), prefixes)
def test_select_names_is_exactly_the_prefixed_ones(candidates: list[str], prefix: str) -> None:
    """select_names keeps every name starting with the prefix and nothing else, sorted."""
    expected = sorted({n for n in candidates if n[: len(prefix)] == prefix})
    assert expected == gc.select_names(candidates, prefix)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ip", "ip6", "inet", "arp", "bridge", "netdev"]), names.filter(bool)
        )
    )
)
def test_parse_nft_tables_reads_what_nft_prints(tables: list[tuple[str, str]]) -> None:
    """parse_nft_tables returns (family, name) of each ``table FAMILY NAME`` line."""
    text = "".join(f"table {f} {n}\n" for f, n in tables)
    assert tables == gc.parse_nft_tables(text)


@given(st.lists(st.builds(Leftover, st.sampled_from(KIND_ORDER), names, names)))
def test_removal_order_follows_the_dependencies(items: list[Leftover]) -> None:
    """Processes come first, run files last, and items keep their order within a kind."""
    ordered = gc.sort_for_removal(items)
    expected = [i for kind in KIND_ORDER for i in items if i.kind == kind]
    assert expected == ordered


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/run/vsv/net/vsv-a.conf"],
            "/run/vsv/net/vsv-a.conf",
        ),
        (["dnsmasq", "-C", "/r/vsv-b.conf"], "/r/vsv-b.conf"),
        (["dnsmasq", "-C/r/vsv-c.conf"], "/r/vsv-c.conf"),
        (["dnsmasq", "--conf-file", "/r/vsv-d.conf"], "/r/vsv-d.conf"),
        (["/usr/bin/vim", "--conf-file=/r/vsv-e.conf"], None),
        (["dnsmasq", "--keep-in-foreground"], None),
        ([], None),
    ],
)
def test_dnsmasq_conf_reads_every_spelling(argv: list[str], expected: str | None) -> None:
    """dnsmasq_conf finds the conf file in each option spelling, and only for dnsmasq."""
    assert expected == gc.dnsmasq_conf(argv)


def test_dnsmasq_of_another_prefix_is_not_ours() -> None:
    """A dnsmasq counts only when its conf file's name starts with the prefix."""
    argv = ["dnsmasq", "--conf-file=/run/vsvother/net/abc-n1.conf"]
    assert (False, True) == (
        gc.is_prefix_dnsmasq(argv, "vsvother"),
        gc.is_prefix_dnsmasq(argv, "abc"),
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/local/bin/vsv", "daemon"], "vsv"),
        (["/x/.venv/bin/python", "-m", "supervisor", "daemon", "--prefix", "vsvt12"], "vsvt12"),
        (["vsv", "--socket", "/s", "daemon", "--prefix=abc"], "abc"),
        (["vsv", "list"], None),
        (["vsv", "start", "daemon"], None),
        (["python", "supervisor", "daemon"], None),
        (["bash"], None),
    ],
)
def test_daemon_prefix_reads_the_daemon_command_line(argv: list[str], expected: str | None) -> None:
    """daemon_prefix recognises ``vsv daemon`` and ``python -m supervisor daemon`` and --prefix."""
    assert expected == gc.daemon_prefix(argv)


def test_network_record_ownership() -> None:
    """A network record is the prefix's by its own prefix, table, bridge or dnsmasq files."""
    net_files = ["pp-n3.conf", "pp-n3.leases", "qq-n4.conf"]
    actual = [
        gc.select_network_record("n1", {"table": "pp_n1", "bridge": "virbr1"}, "pp", net_files),
        gc.select_network_record("n2", {"table": None, "bridge": "ppbr2"}, "pp", net_files),
        gc.select_network_record("n3", {"bridge": "virbr3"}, "pp", net_files),
        gc.select_network_record("n4", {"bridge": "virbr4"}, "pp", net_files),
        gc.select_network_record("n5", {"prefix": "qq", "table": "pp_n5"}, "pp", net_files),
    ]
    assert [True, True, True, False, False] == actual


@pytest.mark.parametrize("bad", ["", "v", "a/b", "vsv ", "vs\tv"])
def test_unsafe_prefix_is_refused(bad: str) -> None:
    """A prefix under 2 characters or with '/' or whitespace is refused before anything is read."""
    with pytest.raises(gc.RefusedPrefix) as info:
        gc.find(bad)
    assert repr(bad) in str(info.value)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vsv")
    add_gc_parser(parser.add_subparsers(dest="verb"))
    return parser.parse_args(argv)


def test_cli_refuses_unsafe_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """``vsv gc --prefix v`` exits 2 and says why on stderr."""
    args = _parse(["gc", "--prefix", "v", "--dry-run"])
    code = args.func(args)
    err = capsys.readouterr().err
    assert (2, True) == (code, "at least 2 characters" in err)


def test_format_table_aligns_columns() -> None:
    """The CLI table has a header and one aligned row per item with its status."""
    rows = [(Leftover("netns", "pp-g1", "/run/netns"), "removed")]
    expected = "KIND   WHERE       NAME   STATUS\nnetns  /run/netns  pp-g1  removed\n"
    assert expected == gc.format_table(rows)


def test_remove_reports_a_failure_and_goes_on(tmp_path: Path) -> None:
    """An item that cannot be removed gets its error; the items after it are still removed."""
    stuck = tmp_path / "pp-dir"  # a directory cannot be unlinked like a run file
    stuck.mkdir()
    gone = tmp_path / "pp-file"
    gone.write_text("x")
    items = [
        Leftover("runfile", str(stuck), str(tmp_path)),
        Leftover("runfile", str(gone), str(tmp_path)),
    ]
    results = gc.remove(items)
    actual = [(i.name, err is not None) for i, err in results]
    assert ([(str(stuck), True), (str(gone), False)], False) == (actual, gone.exists())


# ------------------------------------------------------------------------------ real leftovers


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@attrs.define
class Crash:
    """What a simulated crash left behind, and what gc should therefore find."""

    prefix: str
    run_dir: Path
    sandbox: str
    expected: list[Leftover]
    keep: list[Path]
    procs: list[subprocess.Popen[bytes]]
    cgroup_paths: list[str]


def _hierarchy_label(path: str) -> str:
    return os.path.basename(os.path.realpath(os.path.dirname(path)))


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.01)


@pytest.fixture
def crash(prefix: str, tmp_path: Path) -> Iterator[Crash]:
    """Leftovers of a crashed supervisor with the test's prefix; all removed in ``finally``."""
    layout = detect_layout()
    cgroup = GuestCgroup(layout, prefix, "g1")
    sandbox, guest_ns = f"{prefix}-sb", f"{prefix}-g1"
    run_dir = tmp_path / "run"
    net_dir = run_dir / "net"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # a guest's cgroup with two processes, one of them in a nested child cgroup
        cgroup.create()
        assert layout.unified is not None
        nested = os.path.join(cgroup.path_in(layout.unified), "sub")
        os.mkdir(nested)
        for role in ("init", "child"):
            p = subprocess.Popen(
                [f"{prefix}-{role}", "1000"], executable="/bin/sleep", stdin=subprocess.DEVNULL
            )
            procs.append(p)
            cgroup.attach(p.pid)
        Path(nested, "cgroup.procs").write_text(str(procs[1].pid))

        # a sandbox namespace with prefixed links and tables (and some that are not ours)
        nsutil.create_netns(sandbox)
        nsutil.create_netns(guest_ns)
        sh("ip", "-n", sandbox, "link", "add", f"{prefix}br", "type", "bridge")
        sh(
            "ip",
            "-n",
            sandbox,
            "link",
            "add",
            f"{prefix}a",
            "type",
            "veth",
            "peer",
            "name",
            f"{prefix}b",
        )
        sh("ip", "-n", sandbox, "link", "add", "other0", "type", "bridge")
        sh("ip", "-n", sandbox, "link", "set", "lo", "up")  # dnsmasq below binds to it
        for family, table in (("inet", f"{prefix}_x"), ("ip", f"{prefix}_y"), ("inet", "keep_x")):
            sh("ip", "netns", "exec", sandbox, "nft", "add", "table", family, table)

        # run dir: records and dnsmasq files of ours, and some of another supervisor
        for sub in ("domains", "networks", "net"):
            (run_dir / sub).mkdir(parents=True)
        (run_dir / "domains" / "g1.json").write_text(json.dumps({"prefix": prefix}))
        (run_dir / "domains" / "other.json").write_text(json.dumps({"prefix": "zzz"}))
        (run_dir / "networks" / "n1.json").write_text(
            json.dumps({"bridge": f"{prefix}br", "table": f"{prefix}_n1"})
        )
        (run_dir / "networks" / "foreign.json").write_text(json.dumps({"bridge": "virbr9"}))
        (net_dir / "other.conf").write_text("")
        (net_dir / f"{prefix}-n1.leases").write_text("")
        conf = net_dir / f"{prefix}-n1.conf"
        pid_file = net_dir / f"{prefix}-n1.pid"
        conf.write_text(
            f"port=0\ninterface=lo\nbind-interfaces\nuser=root\npid-file={pid_file}\n"
            "log-facility=-\n"
        )
        dns_argv = ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
        dns = subprocess.Popen(
            ["/usr/bin/nsenter", f"--net=/run/netns/{sandbox}", "--", *dns_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(dns)
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() == str(dns.pid))

        unified_dir = cgroup.path_in(layout.unified)
        expected = [
            Leftover("process", f"{procs[0].pid} {prefix}-init 1000", unified_dir),
            Leftover("process", f"{procs[1].pid} {prefix}-child 1000", unified_dir),
            Leftover("process", f"{dns.pid} {' '.join(dns_argv)}", str(conf)),
            Leftover("nft", f"inet {prefix}_x", sandbox),
            Leftover("nft", f"ip {prefix}_y", sandbox),
            Leftover("link", f"{prefix}a", sandbox),
            Leftover("link", f"{prefix}b", sandbox),
            Leftover("link", f"{prefix}br", sandbox),
            Leftover("netns", guest_ns, "/run/netns"),
            Leftover("netns", sandbox, "/run/netns"),
            *(Leftover("cgroup", p, _hierarchy_label(p)) for p in cgroup.paths()),
            Leftover("runfile", str(run_dir / "domains" / "g1.json"), str(run_dir)),
            Leftover("runfile", str(run_dir / "networks" / "n1.json"), str(run_dir)),
            Leftover("runfile", str(conf), str(run_dir)),
            Leftover("runfile", str(net_dir / f"{prefix}-n1.leases"), str(run_dir)),
            Leftover("runfile", str(pid_file), str(run_dir)),
        ]
        keep = [
            run_dir / "domains" / "other.json",
            run_dir / "networks" / "foreign.json",
            net_dir / "other.conf",
        ]
        yield Crash(prefix, run_dir, sandbox, expected, keep, procs, list(cgroup.paths()))
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
            p.wait()
        for ns in (sandbox, guest_ns):
            nsutil.delete_netns(ns)
        _rmdir_soon([d for path in cgroup.paths() for d in (os.path.join(path, "sub"), path)])


def _key(item: Leftover) -> tuple[int, str, str]:
    return (KIND_ORDER.index(item.kind), item.where, item.name)


@pytest.mark.root
def test_find_lists_exactly_the_leftovers(crash: Crash) -> None:
    """find returns every prefixed object of the crash, nothing of others, in removal order."""
    found = gc.find(crash.prefix, run_dir=crash.run_dir, netns=crash.sandbox)
    assert sorted(crash.expected, key=_key) == sorted(found, key=_key)
    assert [KIND_ORDER.index(i.kind) for i in found] == sorted(
        KIND_ORDER.index(i.kind) for i in found
    )


@pytest.mark.root
def test_dry_run_lists_and_removes_nothing(
    crash: Crash, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vsv gc --dry-run --json`` lists the leftovers, exits 0, and they all stay."""
    args = _parse(
        [
            "gc",
            "--prefix",
            crash.prefix,
            "--run-dir",
            str(crash.run_dir),
            "--netns",
            crash.sandbox,
            "--dry-run",
            "--json",
            "--force",
        ]
    )
    code = args.func(args)
    listed = json.loads(capsys.readouterr().out)
    expected = sorted(
        (
            {"kind": i.kind, "name": i.name, "where": i.where, "removed": False, "error": None}
            for i in crash.expected
        ),
        key=lambda d: (KIND_ORDER.index(d["kind"]), d["where"], d["name"]),
    )
    assert (0, expected) == (
        code,
        sorted(listed, key=lambda d: (KIND_ORDER.index(d["kind"]), d["where"], d["name"])),
    )
    again = gc.find(crash.prefix, run_dir=crash.run_dir, netns=crash.sandbox)
    assert sorted(crash.expected, key=_key) == sorted(again, key=_key)


@pytest.mark.root
def test_remove_leaves_nothing_for_leakcheck(crash: Crash) -> None:
    """remove takes it all: leakcheck is clean, others' files stay, a second find is empty."""
    found = gc.find(crash.prefix, run_dir=crash.run_dir, netns=crash.sandbox)
    results = gc.remove(found)
    assert [(i, None) for i in gc.sort_for_removal(found)] == results
    for p in crash.procs:  # our own children: reap the zombies gc left to their parent
        p.wait(timeout=5)
    check = subprocess.run(
        [LEAKCHECK, "--prefix", crash.prefix], capture_output=True, text=True, check=False
    )
    assert (0, "") == (
        check.returncode,
        check.stdout.replace(f"leakcheck: nothing left behind with prefix '{crash.prefix}'\n", ""),
    )
    assert [True] * len(crash.keep) == [p.exists() for p in crash.keep]
    assert [] == gc.find(crash.prefix, run_dir=crash.run_dir, netns=crash.sandbox)


@pytest.mark.root
def test_cli_removes_and_second_run_finds_nothing(
    crash: Crash, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vsv gc`` removes everything (exit 0); run again it reports nothing left behind."""
    argv = [
        "gc",
        "--prefix",
        crash.prefix,
        "--run-dir",
        str(crash.run_dir),
        "--netns",
        crash.sandbox,
        "--force",
    ]
    first = _parse(argv)
    code1 = first.func(first)
    out1 = capsys.readouterr().out
    second = _parse(argv)
    code2 = second.func(second)
    out2 = capsys.readouterr().out
    summary = f"vsv gc: {len(crash.expected)} removed, 0 failed"
    assert (0, True, 0) == (code1, summary in out1, code2)
    assert f"vsv gc: nothing left behind with prefix {crash.prefix!r}\n" == out2


@pytest.mark.root
def test_cli_refuses_while_a_daemon_with_the_prefix_runs(
    prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """gc exits 2 while a ``vsv daemon --prefix P`` is alive, naming that process."""
    # a shell blocked in its builtin ``read`` (no child process), named like a daemon
    fake = subprocess.Popen(
        ["vsv", "-c", "read x", "vsv", "daemon", "--prefix", prefix],
        executable="/bin/sh",
        stdin=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: gc.running_daemons(prefix) != [])
        args = _parse(["gc", "--prefix", prefix, "--run-dir", "", "--dry-run"])
        code = args.func(args)
        err = capsys.readouterr().err
        assert (2, True) == (code, f"{fake.pid} vsv -c" in err)
    finally:
        fake.kill()
        fake.communicate()


@pytest.mark.root
def test_v1_only_cgroup_with_a_forking_process_is_emptied(prefix: str) -> None:
    """A cgroup only in v1 controllers, whose member forks without pause, is killed and removed."""
    layout = detect_layout()
    dirs = [
        os.path.join(path, f"{prefix}-v1")
        for path in (layout.v1_path("freezer"), layout.v1_path("memory"))
        if path is not None
    ]
    forker: subprocess.Popen[bytes] | None = None
    try:
        for d in dirs:
            os.mkdir(d)
        forker = subprocess.Popen(
            [f"{prefix}-forker", "-c", "while :; do /bin/true; done"],
            executable="/bin/sh",
            stdin=subprocess.DEVNULL,
        )
        for d in dirs:
            Path(d, "cgroup.procs").write_text(str(forker.pid))
        found = gc.find(prefix)
        # the forker itself is listed in the freezer hierarchy (it sorts first); a short-lived
        # child may be caught in either
        procs = {i.name.split()[0]: i.where for i in found if i.kind == "process"}
        assert (dirs[0], True) == (procs[str(forker.pid)], set(procs.values()) <= set(dirs))
        results = gc.remove(found)
        assert [] == [(i, err) for i, err in results if err is not None]
        forker.wait(timeout=5)
        assert ([False] * len(dirs), []) == ([os.path.isdir(d) for d in dirs], gc.find(prefix))
    finally:
        if forker is not None:
            forker.kill()
            forker.wait()
        _rmdir_soon(dirs)


def _rmdir_soon(dirs: list[str]) -> None:
    """rmdir each directory, waiting out the EBUSY of processes that are still exiting."""
    for d in dirs:
        for pid in gc._subtree_pids(d) if os.path.isdir(d) else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            break


def test_import_is_light_for_the_cli() -> None:
    """Importing supervisor.gc (to register the verb) loads neither trio nor pyroute2."""
    code = "import sys, supervisor.gc; print(sorted({'trio', 'pyroute2'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]\n" == done.stdout
