"""``<lxc:namespace>``: a guest joins another running guest's network, IPC and UTS namespaces
(by name), or a named network namespace, instead of getting its own.

Pure: the document (libvirt's spelling, kept by dumpxml, valid for domain.rng), what is refused,
the widening ``vsv validate`` reports, how the joins are found. As root: guests started on a
real supervisor are compared by their namespaces' inodes in /proc.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from supervisor import nsutil
from supervisor.daemon import Supervisor
from supervisor.errors import InvalidDocument, RuntimeFailure, VsvError
from supervisor.guest.confine import widenings
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.model import Domain, Filesystem, OsSpec, SharedNamespace
from supervisor.runner import namespace_joins
from supervisor.runtime import NamespaceJoin
from supervisor.xml import format_domain, parse_domain
from tests import test_net_daemon
from tests.test_xml_roundtrip import LIBVIRT_SCHEMAS, _assert_valid, _schema, needs_libvirt_schemas

sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup

LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"
LXC = "http://libvirt.org/schemas/domain/lxc/1.0"


def doc(shares: str, extra: str = "") -> str:
    return (
        f"<domain type='lxc' xmlns:lxc='{LXC}'><name>web2</name>"
        f"<os><type>exe</type><init>/bin/sh</init></os>{extra}"
        f"<lxc:namespace>{shares}</lxc:namespace></domain>"
    )


ALL_THREE = (
    "<lxc:sharenet type='name' value='web1'/><lxc:shareipc type='name' value='web1'/>"
    "<lxc:shareuts type='name' value='web1'/>"
)


def test_libvirts_namespace_element_is_read_and_written_back() -> None:
    """The three shares (and a named netns) read as libvirt means them and read back equal."""
    d = parse_domain(doc(ALL_THREE))
    assert (
        SharedNamespace("net", "name", "web1"),
        SharedNamespace("ipc", "name", "web1"),
        SharedNamespace("uts", "name", "web1"),
    ) == d.shared_namespaces
    assert d == parse_domain(format_domain(d))
    assert False is d.private_network
    netns = parse_domain(doc("<lxc:sharenet type='netns' value='red'/>"))
    assert (SharedNamespace("net", "netns", "red"),) == netns.shared_namespaces


@needs_libvirt_schemas
def test_the_namespace_element_written_validates_against_libvirts_schema() -> None:
    """dumpxml's <lxc:namespace> is valid for libvirt's domain.rng."""
    for shares in (ALL_THREE, "<lxc:sharenet type='netns' value='red'/>"):
        _assert_valid(
            _schema(LIBVIRT_SCHEMAS / "domain.rng"), format_domain(parse_domain(doc(shares)))
        )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (doc("<lxc:sharenet type='pid' value='1'/>"), "lxc:sharenet/@type"),
        (doc("<lxc:shareipc type='netns' value='red'/>"), "lxc:shareipc/@type"),
        (doc("<lxc:shareuts type='name' value='web2'/>"), "lxc:shareuts/@value"),
        (doc("<lxc:sharenet type='netns' value='a/b'/>"), "lxc:sharenet/@value"),
        (
            doc(
                "<lxc:sharenet type='name' value='web1'/>",
                "<devices><interface type='ethernet'/></devices>",
            ),
            "lxc:sharenet",
        ),
        (
            doc("<lxc:sharenet type='name' value='web1'/>", "<features><privnet/></features>"),
            "lxc:sharenet",
        ),
        (
            doc(
                "<lxc:shareuts type='name' value='web1'/>",
                "<idmap><uid start='0' target='100000' count='10'/>"
                "<gid start='0' target='100000' count='10'/></idmap>",
            ),
            "lxc:shareuts",
        ),
        (doc("<lxc:sharepid type='name' value='web1'/>"), "lxc:namespace/lxc:sharepid"),
    ],
)
def test_what_is_refused_names_the_element(text: str, where: str) -> None:
    """A process's namespace by pid, a netns for IPC, the guest itself, a NIC of its own beside
    a shared network, an <idmap>, an unknown share: each refused, the element named."""
    with pytest.raises(InvalidDocument) as info:
        parse_domain(text)
    assert any(where in p for p in info.value.problems), info.value.problems


def test_each_share_is_a_widening_vsv_validate_reports() -> None:
    """Sharing a namespace is reported like a capability beyond the default."""
    found = widenings(parse_domain(doc(ALL_THREE)))
    assert [
        "lxc:namespace/lxc:sharenet",
        "lxc:namespace/lxc:shareipc",
        "lxc:namespace/lxc:shareuts",
    ] == [where for where, _ in found]
    assert "joins the net namespace of guest web1" in found[0][1]


def test_joins_are_found_from_the_running_guest() -> None:
    """A share by name becomes the other guest's /proc/PID/ns file with its inode; a guest
    that does not run, or a netns that does not exist, fails naming the element."""
    d = parse_domain(doc(ALL_THREE))

    def peers(name: str) -> tuple[int, Mapping[str, int]] | None:
        return (4242, {"net": 11, "ipc": 12, "uts": 13}) if name == "web1" else None

    assert (
        NamespaceJoin("net", "/proc/4242/ns/net", 11),
        NamespaceJoin("ipc", "/proc/4242/ns/ipc", 12),
        NamespaceJoin("uts", "/proc/4242/ns/uts", 13),
    ) == namespace_joins(d, peers)
    with pytest.raises(RuntimeFailure, match=r"<lxc:sharenet type='name' value='web1'>: guest"):
        namespace_joins(d, lambda _name: None)
    missing = parse_domain(doc("<lxc:sharenet type='netns' value='vsvt-no-such-netns'/>"))
    with pytest.raises(RuntimeFailure, match=r"no network namespace vsvt-no-such-netns"):
        namespace_joins(missing, peers)


# --- as root ------------------------------------------------------------------------------


def _guest(name: str, root: Path, **fields: object) -> Domain:
    return Domain(
        name=name,
        type="lxc",
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
        filesystems=(Filesystem(source=str(root), target="/"),),
        **fields,  # type: ignore[arg-type]
    )


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _hostname(pid: int) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.root
async def test_a_guest_shares_another_guests_namespaces(sup: Supervisor, tmp_path: Path) -> None:
    """The second guest is in the first's network, IPC and UTS namespaces, and in pid and
    mount namespaces of its own; the first keeps its host name."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("first", root, privnet=True, hostname="shared-host"))
    shares = (
        SharedNamespace("net", "name", "first"),
        SharedNamespace("ipc", "name", "first"),
        SharedNamespace("uts", "name", "first"),
    )
    await sup.define_domain(_guest("second", root, shared_namespaces=shares))
    with trio.fail_after(60):
        first = await sup.start_domain("first")
        second = await sup.start_domain("second")
    try:
        a, b = first.init_pid, second.init_pid
        assert a is not None
        assert b is not None
        for kind in ("net", "ipc", "uts"):
            assert _ns(a, kind) == _ns(b, kind), kind
        assert _ns(a, "net") != os.stat("/proc/self/ns/net").st_ino
        for kind in ("pid", "mnt", "cgroup"):
            assert _ns(a, kind) != _ns(b, kind), kind
        assert "shared-host" == _hostname(a) == _hostname(b)
    finally:
        await sup.destroy_domain("second")
        await sup.destroy_domain("first")


@pytest.mark.root
async def test_a_guest_joins_a_named_netns(sup: Supervisor, tmp_path: Path, prefix: str) -> None:
    """<lxc:sharenet type='netns'>: the guest is in that network namespace."""
    name = f"{prefix}-red"
    nsutil.create_netns(name)
    try:
        root = Path(prepare_busybox_root(str(tmp_path / "root")))
        share = SharedNamespace("net", "netns", name)
        await sup.define_domain(_guest("red", root, shared_namespaces=(share,)))
        with trio.fail_after(60):
            status = await sup.start_domain("red")
        try:
            assert status.init_pid is not None
            assert os.stat(nsutil.netns_path(name)).st_ino == _ns(status.init_pid, "net")
        finally:
            await sup.destroy_domain("red")
    finally:
        nsutil.delete_netns(name)


@pytest.mark.root
async def test_sharing_a_guest_that_does_not_run_fails_the_start(
    sup: Supervisor, tmp_path: Path
) -> None:
    """Without the other guest running the start fails naming the element: the guest does not
    get namespaces of its own instead."""
    root = Path(prepare_busybox_root(str(tmp_path / "root")))
    await sup.define_domain(_guest("idle", root))
    share = SharedNamespace("uts", "name", "idle")
    await sup.define_domain(_guest("lonely", root, shared_namespaces=(share,)))
    with trio.fail_after(60), pytest.raises(VsvError, match=r"<lxc:shareuts .*guest idle is not"):
        await sup.start_domain("lonely")
    assert "SHUTOFF" == sup.guests["lonely"].status().state
