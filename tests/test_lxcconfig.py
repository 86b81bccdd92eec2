"""LXC configs to domains and back (``vsv domxml-from-native lxc-tools``, ``vsv import-lxc``,
``vsv domxml-to-native lxc-tools``): the mapping, what is listed as not mapped, the verbs, and
(as root) converted configs of every key family defined and started on a real supervisor.

The configs are in tests/data/lxc/; web-v1.conf and web-v3.conf are one container written in
LXC 1.x/2.x and in 3+ key names.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from supervisor.daemon import Supervisor
from supervisor.formats_cli import (
    host_device_numbers,
    import_lxc,
    lxc_from_native,
    lxc_to_native,
    read_lxc_path,
)
from supervisor.guest.cgroups import detect_layout
from supervisor.guest.confine import ALL_CAPS, capability_set, parse_cap_mask
from supervisor.guest.rootfs import prepare_busybox_root
from supervisor.lxcconfig import (
    Conversion,
    LxcConfigError,
    canonical,
    from_native,
    parse_size,
    read_entries,
    to_native,
)
from supervisor.model import (
    BlkioDevice,
    BlkioTune,
    Capabilities,
    CapsPolicy,
    Console,
    CpuTune,
    Domain,
    Filesystem,
    IdMapEntry,
    Interface,
    IpAddress,
    MemTune,
    OsSpec,
    Route,
    SharedNamespace,
    TokenBucket,
)
from supervisor.validate import check_domain
from supervisor.xml import format_domain, parse_domain
from tests import test_cgroup_tunables, test_net_daemon
from tests.fake_supervisor import ServerThread, short_tmpdir
from tests.test_net_daemon import in_ns
from tests.test_xml_roundtrip import LIBVIRT_SCHEMAS, _assert_valid, _schema, needs_libvirt_schemas

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "lxc"
#: every config that gives a domain (common.conf and fstab are pieces of the web configs)
CONFIGS = sorted(p.name for p in DATA.glob("*.conf") if p.name != "common.conf")
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"
MIB = 1024

# the fixtures of the network tests (a sandbox netns, a supervisor doing its networking there)
sandbox = test_net_daemon.sandbox
sup = test_net_daemon.sup
loopdev = test_cgroup_tunables.loopdev


def convert(name: str, **kwargs: object) -> Conversion:
    """A config of tests/data/lxc converted, its includes read from the directory."""
    path = DATA / name
    return from_native(path.read_text(), path=str(path), read=read_lxc_path, **kwargs)  # type: ignore[arg-type]


def text(config: str, **kwargs: object) -> Conversion:
    """A config given inline (no file: includes are not followed)."""
    return from_native(config, path="c.conf", host_arch="x86_64", **kwargs)  # type: ignore[arg-type]


BASE = "lxc.uts.name = c1\nlxc.rootfs.path = dir:/srv/c1\n"


def reasons(c: Conversion) -> dict[str, str]:
    """key = value -> the reason it was not mapped."""
    return {f"{u.key} = {u.value}": u.reason for u in c.unmapped}


# --- the two generations of key names ------------------------------------------------------


def test_v1_and_v3_spellings_give_the_same_domain() -> None:
    """web-v1.conf (lxc.utsname, lxc.network.*, lxc.id_map, lxc.mount ...) and web-v3.conf
    (lxc.uts.name, lxc.net.0.*, lxc.idmap, lxc.mount.fstab ...) give one domain; nothing is
    left unmapped."""
    v1, v3 = convert("web-v1.conf"), convert("web-v3.conf")
    assert v1.domain == v3.domain
    assert ((), ()) == (v1.unmapped, v3.unmapped)


def test_the_web_config_maps_as_libvirt_does() -> None:
    """Every key family of the web config lands in its element."""
    expected = Domain(
        name="web",
        type="lxc",
        memory_kib=256 * MIB,
        memtune=MemTune(
            hard_limit_kib=256 * MIB, soft_limit_kib=128 * MIB, swap_hard_limit_kib=512 * MIB
        ),
        cputune=CpuTune(shares=512, period=100000, quota=50000),
        pids_limit=128,
        os=OsSpec(init="/bin/sh", initargs=("-c", LOOP), initenv=(("APP_MODE", "production"),)),
        idmap=(IdMapEntry("uid", 0, 100000, 65536), IdMapEntry("gid", 0, 100000, 65536)),
        capabilities=Capabilities(
            CapsPolicy.ALLOW,
            tuple(
                (cap, False)
                for cap in ("mac_admin", "mac_override", "sys_time", "sys_module", "sys_rawio")
            ),
        ),
        filesystems=(
            Filesystem("/var/lib/lxc/web/rootfs", "/"),
            Filesystem("", "/run", type="ram", usage_kib=16 * MIB),
            Filesystem("/var/lib/lxc/web/logs", "/var/log"),
            Filesystem("/var/lib/lxc/web/data", "/srv/data", readonly=True),
            Filesystem("", "/tmp", type="ram", usage_kib=32 * MIB),
        ),
        interfaces=(
            Interface(
                type="bridge",
                source="lxcbr0",
                mac="00:16:3e:5a:01:02",
                guest_dev="eth0",
                target_dev="vethweb0",
                mtu=1400,
                link_up=True,
                ips=(IpAddress("10.213.61.10", 24), IpAddress("fd00:213:61::10", 64)),
                routes=(
                    Route("0.0.0.0", 0, "10.213.61.1", family="ipv4"),
                    Route("::", 0, "fd00:213:61::1", family="ipv6"),
                ),
            ),
        ),
        autostart=True,
    )
    assert expected == convert("web-v3.conf").domain


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("lxc.utsname", "lxc.uts.name"),
        ("lxc.rootfs", "lxc.rootfs.path"),
        ("lxc.id_map", "lxc.idmap"),
        ("lxc.aa_profile", "lxc.apparmor.profile"),
        ("lxc.mount", "lxc.mount.fstab"),
        ("lxc.pts", "lxc.pty.max"),
        ("lxc.tty", "lxc.tty.max"),
        ("lxc.console", "lxc.console.path"),
        ("lxc.init_cmd", "lxc.init.cmd"),
        ("lxc.haltsignal", "lxc.signal.halt"),
        ("lxc.limit.nofile", "lxc.prlimit.nofile"),
        ("lxc.uts.name", "lxc.uts.name"),
    ],
)
def test_old_key_names_are_renamed(old: str, new: str) -> None:
    assert new == canonical(old)


def test_a_mixed_spelling_counts_as_one_key_and_the_last_wins() -> None:
    """lxc.utsname and lxc.uts.name are one key: the later counts, and a note says so."""
    c = text("lxc.utsname = old\nlxc.rootfs = /srv/c1\nlxc.uts.name = new\n")
    assert "new" == c.domain.name
    assert ["c.conf:3"] == [n.origin for n in c.notes if "the last one counts" in n.text]


# --- every config gives a valid domain ------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_gives_a_domain_that_validates_and_reads_back(name: str) -> None:
    """The document printed for each config is valid and reads back to the same domain."""
    c = convert(name)
    assert [] == check_domain(c.domain)
    assert c.domain == parse_domain(format_domain(c.domain))


@needs_libvirt_schemas
@pytest.mark.parametrize("name", CONFIGS)
def test_each_converted_document_validates_against_libvirts_schema(name: str) -> None:
    _assert_valid(_schema(LIBVIRT_SCHEMAS / "domain.rng"), format_domain(convert(name).domain))


def test_every_unmapped_key_is_listed_with_its_reason() -> None:
    """unmapped.conf: every key the model cannot hold is listed, in line order; 'later' marks
    the ones an element libvirt has (direct, hostdev, numatune) would map; the ttys are listed
    beside the consoles they map to; the domain is what is left (no NIC: a network namespace
    with only lo)."""
    c = convert("unmapped.conf")
    listed = [(int(u.origin.rpartition(":")[2]), u.key, u.later) for u in c.unmapped]
    assert [
        (4, "lxc.include", False),
        (5, "lxc.net.0.type", True),
        (6, "lxc.net.0.link", False),
        (7, "lxc.net.0.macvlan.mode", False),
        (8, "lxc.net.1.type", True),
        (9, "lxc.net.1.link", False),
        (10, "lxc.cgroup.cpuset.mems", True),
        (11, "lxc.cgroup.blkio.device_weight", False),
        (12, "lxc.cgroup.devices.allow", False),
        (13, "lxc.apparmor.profile", False),
        (14, "lxc.seccomp.profile", False),
        (15, "lxc.hook.pre-start", False),
        (16, "lxc.prlimit.nofile", False),
        (17, "lxc.sysctl.net.ipv4.ip_forward", False),
        (18, "lxc.mount.entry", True),
        (19, "lxc.mount.entry", False),
        (20, "lxc.mount.entry", False),
        (21, "lxc.tty.max", False),
        (22, "lxc.pty.max", False),
        (23, "lxc.autodev", False),
        (24, "lxc.frobnicate", False),
        (25, "this line is not a key", False),
    ] == listed
    why = reasons(c)
    assert "<interface type='direct'>" in why["lxc.net.0.type = macvlan"]
    assert "<hostdev" in why["lxc.net.1.type = phys"]
    assert "cannot read" in why["lxc.include = missing.conf"]
    assert "size=" in why["lxc.mount.entry = tmpfs scratch tmpfs mode=1777 0 0"]
    assert "<numatune>" in why["lxc.cgroup.cpuset.mems = 0"]
    assert "blkio.weight_device" in why["lxc.cgroup.blkio.device_weight = 8:0 500"]
    assert "no /dev/tty1../dev/tty4" in why["lxc.tty.max = 4"]
    root = Filesystem("/var/lib/lxc/leftovers/rootfs", "/")
    assert (True, (), (root,)) == (c.domain.privnet, c.domain.interfaces, c.domain.filesystems)
    assert tuple(Console(target_type="lxc", target_port=i) for i in range(4)) == c.domain.consoles
    assert "not mapped yet: the model has no <interface type='direct'> yet" in str(c.unmapped[1])


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1024", 1024),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("2G", 2 << 30),
        ("64k", 64 << 10),
        ("1T", 1 << 40),
        ("0x10K", 16 << 10),
        ("010", 8),
        (" 7 ", 7),
    ],
)
def test_sizes_read_as_the_kernel_reads_them(value: str, expected: int) -> None:
    assert expected == parse_size(value)


@pytest.mark.parametrize("value", ["512MB", "1.5G", "", "-1", "5%", "12 M", "M", "1KiB"])
def test_what_the_kernel_refuses_is_no_size(value: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(value)


def test_sizes_in_the_domain_are_kib_rounded_up() -> None:
    """A byte count that is not whole KiB rounds up, as the XML codec rounds."""
    c = text(BASE + "lxc.cgroup.memory.limit_in_bytes = 1025\n")
    assert MemTune(hard_limit_kib=2) == c.domain.memtune
    assert 2 == c.domain.memory_kib


@pytest.mark.parametrize("key", ["lxc.cgroup.memory.limit_in_bytes", "lxc.cgroup2.memory.max"])
@pytest.mark.parametrize("value", ["-1", "max"])
def test_unlimited_memory_sets_no_limit(key: str, value: str) -> None:
    c = text(BASE + f"{key} = {value}\n")
    assert (None, None, ()) == (c.domain.memtune, c.domain.memory_kib, c.unmapped)
    assert any("unlimited" in n.text for n in c.notes)


def test_cgroup_v2_keys() -> None:
    """memory.max/high/swap.max (swap alone: libvirt's swap_hard_limit is memory + swap),
    cpu.weight (on the shares scale), cpu.max, pids.max."""
    d = convert("cgroup2.conf").domain
    assert (
        192 * MIB,
        MemTune(192 * MIB, 96 * MIB, 256 * MIB),
        CpuTune(shares=512, period=100000, quota=25000),
        64,
        True,
    ) == (d.memory_kib, d.memtune, d.cputune, d.pids_limit, d.privnet)


def test_cpu_max_unlimited_and_bad_values() -> None:
    c = text(BASE + "lxc.cgroup2.cpu.max = max 50000\nlxc.cgroup.cpu.shares = 1\n")
    assert CpuTune(period=50000, quota=-1) == c.domain.cputune
    assert ["lxc.cgroup.cpu.shares"] == [u.key for u in c.unmapped]
    v1 = text(BASE + "lxc.cgroup.cpu.cfs_quota_us = -7\n").domain
    assert (CpuTune(quota=-1), v1) == (v1.cputune, parse_domain(format_domain(v1)))


def test_swap_max_without_a_memory_limit_is_listed() -> None:
    c = text(BASE + "lxc.cgroup2.memory.swap.max = 64M\n")
    assert None is c.domain.memtune
    assert "needs memory.max" in reasons(c)["lxc.cgroup2.memory.swap.max = 64M"]


TUNED = Domain(
    name="tunables",
    type="lxc",
    vcpu=1,
    cpuset="0",
    memory_kib=160 * MIB,
    memtune=MemTune(160 * MIB, 96 * MIB, 224 * MIB),
    blkiotune=BlkioTune(
        devices=(
            BlkioDevice(
                "/dev/block/7:0",
                read_bytes_sec=2097152,
                write_bytes_sec=1048576,
                read_iops_sec=400,
                write_iops_sec=0,
            ),
        )
    ),
    os=OsSpec(init="/bin/sh", initargs=("-c", LOOP)),
    filesystems=(Filesystem("/var/lib/lxc/tunables/rootfs", "/"),),
    privnet=True,
    consoles=(Console(target_type="lxc", target_port=0),),
)


@pytest.mark.parametrize("name", ["tunables-v1.conf", "tunables-v3.conf"])
def test_cpuset_blkio_memory_and_ttys_in_either_generation(name: str) -> None:
    """LXC 1.x names with cgroup v1 keys and LXC 3+ names with v2 keys give one domain: the
    cpuset as <vcpu cpuset> (<vcpu> its CPU count), the throttles of device 7:0 (0 and max:
    no limit) as /dev/block/7:0, memory.max/limit_in_bytes as <memory> and hard_limit,
    memsw or max + swap.max as swap_hard_limit, one tty as one <console>; only the tty
    itself is listed (the guest gets no /dev/tty1)."""
    c = convert(name)
    assert TUNED == c.domain
    assert [("lxc.tty" if "v1" in name else "lxc.tty.max", False)] == [
        (u.key, u.later) for u in c.unmapped
    ]


@pytest.mark.parametrize(
    ("config", "tune"),
    [
        (
            "lxc.cgroup.blkio.weight = 500\nlxc.cgroup.blkio.weight_device = 8:16 700\n",
            BlkioTune(500, (BlkioDevice("/dev/block/8:16", weight=700),)),
        ),
        (
            "lxc.cgroup.blkio.bfq.weight = 500\nlxc.cgroup.blkio.bfq.weight_device = 8:16 700\n",
            BlkioTune(500, (BlkioDevice("/dev/block/8:16", weight=700),)),
        ),
        (
            "lxc.cgroup2.io.weight = default 500\nlxc.cgroup2.io.weight = 8:16 700\n",
            BlkioTune(500, (BlkioDevice("/dev/block/8:16", weight=700),)),
        ),
        (
            "lxc.cgroup2.io.bfq.weight = 500\nlxc.cgroup2.io.bfq.weight = 8:16 700\n",
            BlkioTune(500, (BlkioDevice("/dev/block/8:16", weight=700),)),
        ),
        (
            "lxc.cgroup2.io.max = 8:0 rbps=max riops=50\nlxc.cgroup2.io.max = 8:0 rbps=4096\n",
            BlkioTune(
                devices=(BlkioDevice("/dev/block/8:0", read_bytes_sec=4096, read_iops_sec=50),)
            ),
        ),
    ],
)
def test_blkio_and_io_weights_and_throttles(config: str, tune: BlkioTune) -> None:
    """v1 blkio and v2 io keys, CFQ's and BFQ's files, are <blkiotune>: the weight, and per
    device (/dev/block/MAJ:MIN, as libvirt's converter names it) a weight and throttles; a
    device's later value counts."""
    c = text(BASE + config)
    assert (tune, ()) == (c.domain.blkiotune, c.unmapped)


def test_bad_blkio_and_cpuset_values_are_listed() -> None:
    """Weights outside libvirt's 100..1000, lines not in the file's format, io.max keys it
    does not have, a CPU list that is not one, cpuset.mems (<numatune>) are listed; a
    value given again is noted."""
    c = text(
        BASE
        + "lxc.cgroup.blkio.weight = 50\n"
        + "lxc.cgroup.blkio.weight = 300\n"
        + "lxc.cgroup.blkio.weight = 400\n"
        + "lxc.cgroup.blkio.weight_device = sda 700\n"
        + "lxc.cgroup.blkio.throttle.read_bps_device = 8:0\n"
        + "lxc.cgroup2.io.max = 8:0 rbps=1 latency=5\n"
        + "lxc.cgroup2.io.weight = 8:0 heavy\n"
        + "lxc.cgroup2.io.latency = 8:0 target=10\n"
        + "lxc.cgroup.cpuset.cpus = 3-1\n"
        + "lxc.cgroup2.cpuset.mems = 0\n"
        + "lxc.cgroup.cpuset.cpu_exclusive = 1\n"
    )
    assert BlkioTune(400, (BlkioDevice("/dev/block/8:0", read_bytes_sec=1),)) == (
        c.domain.blkiotune
    )
    assert (None, None) == (c.domain.cpuset, c.domain.vcpu)
    why = reasons(c)
    assert "100..1000" in why["lxc.cgroup.blkio.weight = 50"]
    assert "MAJ:MIN" in why["lxc.cgroup.blkio.weight_device = sda 700"]
    assert "MAJ:MIN" in why["lxc.cgroup.blkio.throttle.read_bps_device = 8:0"]
    assert "latency=5" in why["lxc.cgroup2.io.max = 8:0 rbps=1 latency=5"]
    assert "heavy" in why["lxc.cgroup2.io.weight = 8:0 heavy"]
    assert "<blkiotune>" in why["lxc.cgroup2.io.latency = 8:0 target=10"]
    assert "backward range" in why["lxc.cgroup.cpuset.cpus = 3-1"]
    assert "<numatune>" in why["lxc.cgroup2.cpuset.mems = 0"]
    assert "<vcpu cpuset>" in why["lxc.cgroup.cpuset.cpu_exclusive = 1"]
    assert ["c.conf:5"] == [n.origin for n in c.notes if "replaces" in n.text]


def test_ttys_and_the_console() -> None:
    """lxc.tty.max N is N consoles, ports 0..N-1 (libvirt's mapping), listed for the ttys the
    guest does not get; lxc.console.path none beside them, or a host device, is listed;
    without either key a note says LXC's console is not mapped; the console's log keys are
    listed."""
    c = text(BASE + "lxc.tty.max = 2\nlxc.console.path = none\nlxc.console.logfile = /l\n")
    assert (
        Console(target_type="lxc", target_port=0),
        Console(target_type="lxc", target_port=1),
    ) == (c.domain.consoles)
    why = reasons(c)
    assert "/dev/tty1../dev/tty2" in why["lxc.tty.max = 2"]
    assert "is the guest's /dev/console" in why["lxc.console.path = none"]
    assert "RUN/logs" in why["lxc.console.logfile = /l"]
    device = text(BASE + "lxc.console.path = /dev/ttyS0\nlxc.tty.max = many\n")
    assert () == device.domain.consoles
    assert ["lxc.console.path", "lxc.tty.max"] == [u.key for u in device.unmapped]
    assert any("add <console" in n.text for n in text(BASE).notes)
    assert not any("add <console" in n.text for n in text(BASE + "lxc.console = none\n").notes)


# --- the reading of the file ---------------------------------------------------------------


def test_comments_blanks_whitespace_and_quotes() -> None:
    """Whitespace around '=' and at the ends does not count; a quoted value loses its
    quotes; '#' comments only at the start of a line."""
    entries, bad = read_entries(
        "  # comment\n\n\tlxc.uts.name=c1   \nlxc.environment =  'A=b c'  \n"
        "lxc.environment = B=#not a comment\n"
    )
    assert [] == bad
    assert [
        ("lxc.uts.name", "c1"),
        ("lxc.environment", "A=b c"),
        ("lxc.environment", "B=#not a comment"),
    ] == [(e.key, e.value) for e in entries]


def test_repeated_keys_accumulate_or_the_last_wins() -> None:
    """Mount entries and idmaps accumulate; a scalar given twice takes the last value, with
    a note; an empty value of a list key clears it (as in LXC)."""
    c = text(
        BASE
        + "lxc.mount.entry = /a a none bind 0 0\nlxc.mount.entry = /b b none bind 0 0\n"
        + "lxc.cgroup.pids.max = 10\nlxc.cgroup.pids.max = 20\n"
        + "lxc.environment = A=1\nlxc.environment =\nlxc.environment = B=2\n"
    )
    assert ["/", "/a", "/b"] == [fs.target for fs in c.domain.filesystems]
    assert 20 == c.domain.pids_limit
    assert (("B", "2"),) == c.domain.os.initenv
    assert {"c.conf:6", "c.conf:8"} <= {n.origin for n in c.notes}


def test_includes_are_read_relative_to_the_config(tmp_path: Path) -> None:
    """A relative lxc.include is read beside the including file, in place (so a later key
    overrides it); a directory includes its *.conf files in name order; a missing file, a
    loop and a relative include of standard input are listed as not followed."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-b.conf").write_text("lxc.cgroup.pids.max = 10\n")
    (tmp_path / "conf.d" / "05-a.conf").write_text("lxc.cgroup.pids.max = 5\nlxc.tty.max = 0\n")
    (tmp_path / "conf.d" / "README").write_text("not a config\n")
    (tmp_path / "loop.conf").write_text("lxc.include = loop.conf\n")
    (tmp_path / "config").write_text(
        BASE + "lxc.include = conf.d\nlxc.include = nope.conf\nlxc.include = loop.conf\n"
    )
    path = str(tmp_path / "config")
    c = from_native((tmp_path / "config").read_text(), path=path, read=read_lxc_path)
    assert 10 == c.domain.pids_limit
    why = reasons(c)
    assert "cannot read" in why["lxc.include = nope.conf"]
    assert "includes itself" in why["lxc.include = loop.conf"]
    later = from_native(
        BASE + "lxc.include = conf.d\nlxc.cgroup.pids.max = 99\n", path=path, read=read_lxc_path
    )
    assert 99 == later.domain.pids_limit
    stdin = from_native(BASE + "lxc.include = conf.d\n", read=read_lxc_path)
    assert "standard input" in reasons(stdin)["lxc.include = conf.d"]
    unread = from_native(BASE + f"lxc.include = {tmp_path}/conf.d\n", path=path)
    assert "not followed" in reasons(unread)[f"lxc.include = {tmp_path}/conf.d"]


# --- configs that give no domain ------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("lxc.uts.name = c1\n", "no lxc.rootfs.path"),
        ("lxc.rootfs.path = /srv/c1\n", "no lxc.uts.name"),
        ("lxc.uts.name = c1\nlxc.rootfs.path = overlay:/lower:/upper\n", "no overlay"),
        ("lxc.uts.name = c1\nlxc.rootfs.path = nbd:/srv/c1.qcow2\n", "qemu-nbd"),
        ("lxc.uts.name = c1\nlxc.rootfs.path = zfs:tank/c1\n", "zfs root has no element"),
        ("lxc.uts.name = c1\nlxc.rootfs.path = srv/c1\n", "not an absolute directory"),
        ("lxc.uts.name = .c1\nlxc.rootfs.path = /srv/c1\n", "lxc.uts.name = .c1"),
        (BASE + "lxc.cap.drop = sys_admin\nlxc.cap.keep = chown\n", "both"),
    ],
)
def test_an_unusable_config_is_refused_with_the_reason(config: str, message: str) -> None:
    with pytest.raises(LxcConfigError, match=message):
        text(config)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dev/sdb1", Filesystem("/dev/sdb1", "/", type="block")),
        ("lvm:/dev/vg0/c1", Filesystem("/dev/vg0/c1", "/", type="block")),
        (
            "loop:/srv/c1.img",
            Filesystem("/srv/c1.img", "/", type="file", driver_type="loop", driver_format="raw"),
        ),
    ],
)
def test_device_and_image_roots(value: str, expected: Filesystem) -> None:
    """A block device root is <filesystem type='block'>, an image <filesystem type='file'>
    with libvirt's loop driver; written back as LXC spells them."""
    d = text(f"lxc.uts.name = c1\nlxc.rootfs.path = {value}\n").domain
    assert (expected,) == d.filesystems
    native = to_native(d).text
    assert f"lxc.rootfs.path = {value.removeprefix('lvm:')}\n" in native


def test_shared_namespaces() -> None:
    """lxc.namespace.share.net/ipc/uts = CONTAINER is <lxc:namespace> by name, and back; a
    pid is listed (whatever process has it then), as are the kinds libvirt cannot share."""
    c = text(
        BASE
        + "lxc.namespace.share.net = web1\nlxc.namespace.share.uts = web1\n"
        + "lxc.namespace.share.ipc = 4242\nlxc.namespace.share.pid = web1\n"
    )
    expected = (SharedNamespace("net", "name", "web1"), SharedNamespace("uts", "name", "web1"))
    assert (expected, False) == (c.domain.shared_namespaces, c.domain.privnet)
    assert ["lxc.namespace.share.ipc", "lxc.namespace.share.pid"] == [u.key for u in c.unmapped]
    native = to_native(c.domain).text
    assert "lxc.namespace.share.net = web1\nlxc.namespace.share.uts = web1\n" in native
    assert "lxc.net.0.type" not in native


def test_a_block_device_mount_entry() -> None:
    """An fstab line mounting a device is <filesystem type='block'> (its type probed at start)."""
    d = text(BASE + "lxc.mount.entry = /dev/sdc1 srv/data ext4 ro 0 0\n").domain
    assert Filesystem("/dev/sdc1", "/srv/data", type="block", readonly=True) == d.filesystems[1]


def test_a_name_given_names_the_domain_and_utsname_is_the_hostname() -> None:
    """import-lxc names the domain after the container; lxc.uts.name stays the host name."""
    d = text(BASE, name="container1").domain
    assert ("container1", "c1") == (d.name, d.hostname)
    assert (None) is text(BASE, name="c1").domain.hostname
    d = text("lxc.rootfs.path = /srv/c1\n", name="c2").domain
    assert ("c2", None) == (d.name, d.hostname)


# --- filesystems ----------------------------------------------------------------------------


def test_mount_entries() -> None:
    """Bind mounts (ro: readonly), tmpfs with a size (type='ram'), relative targets; LXC's
    basic mounts are noted (the supervisor makes its own); mounts below /proc, /sys, /dev,
    device binds, file binds, other filesystem types and a second mount of a target are listed;
    options without an element are listed with the mapped entry."""
    c = text(
        BASE
        + "lxc.mount.entry = /srv/a\\040b mnt/ab none rbind,ro 0 0\n"
        + "lxc.mount.entry = tmpfs /scratch tmpfs size=1g,nosuid 0 0\n"
        + "lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0\n"
        + "lxc.mount.entry = sysfs sys sysfs defaults 0 0\n"
        + "lxc.mount.entry = /sys/fs/fuse/connections sys/fs/fuse/connections none bind 0 0\n"
        + "lxc.mount.entry = /dev/net dev/net none bind,create=dir 0 0\n"
        + "lxc.mount.entry = /etc/resolv.conf etc/resolv.conf none bind,create=file 0 0\n"
        + "lxc.mount.entry = nfs:/export srv/nfs nfs defaults 0 0\n"
        + "lxc.mount.entry = /srv/other mnt/ab none bind 0 0\n"
        + "lxc.mount.entry = tmpfs half tmpfs size=50% 0 0\n"
        + "lxc.mount.entry = only-two fields\n"
    )
    assert (
        Filesystem("/srv/c1", "/"),
        Filesystem("/srv/a b", "/mnt/ab", readonly=True),
        Filesystem("", "/scratch", type="ram", usage_kib=1024 * MIB),
    ) == c.domain.filesystems
    lines = sorted(int(u.origin.rpartition(":")[2]) for u in c.unmapped)
    assert [4, 7, 8, 9, 10, 11, 12, 13] == lines
    assert {"c.conf:5", "c.conf:6"} <= {n.origin for n in c.notes}
    assert "nosuid" in reasons(c)["lxc.mount.entry = tmpfs /scratch tmpfs size=1g,nosuid 0 0"]


def test_fstab_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "fstab").write_text("# comment\n/srv/x srv/x none bind 0 0\n")
    config = BASE + "lxc.mount = fstab\n"
    c = from_native(config, path=str(tmp_path / "config"), read=read_lxc_path)
    assert Filesystem("/srv/x", "/srv/x") == c.domain.filesystems[1]
    assert "not followed" in reasons(text(config))["lxc.mount = fstab"]


def test_rootfs_spellings_and_options() -> None:
    for value in ("/srv/c1", "dir:/srv/c1", "btrfs:/srv/c1", "/srv/c1/"):
        c = text(f"lxc.uts.name = c1\nlxc.rootfs.path = {value}\n")
        assert (Filesystem("/srv/c1", "/"),) == c.domain.filesystems
    c = text(BASE + "lxc.rootfs.options = ro,idmap=container\nlxc.rootfs.mount = /usr/lib/lxc\n")
    assert (Filesystem("/srv/c1", "/", readonly=True),) == c.domain.filesystems
    assert ["lxc.rootfs.options"] == [u.key for u in c.unmapped]


# --- network --------------------------------------------------------------------------------


def test_network_types_none_empty_and_nothing() -> None:
    """none shares the host's network; empty, and no NIC at all, give a namespace of the
    guest's own with only lo (libvirt's <privnet/>)."""
    none = text(BASE + "lxc.net.0.type = none\n").domain
    empty = text(BASE + "lxc.net.0.type = empty\n").domain
    nothing = text(BASE).domain
    assert (False, True, True) == (none.private_network, empty.privnet, nothing.privnet)
    assert (False, False) == (none.privnet, bool(none.interfaces))


def test_veth_details() -> None:
    """A veth without a link is type='ethernet' (its <ip> would be the host end's, so the
    guest's addresses are listed); no flags=up gives <link state='down'/> as in libvirt;
    gateway auto and dev, an hwaddr template, an address without prefix (LXC's default),
    a broadcast other than the default, keys before any lxc.network.type."""
    c = text(
        BASE
        + "lxc.network.link = early\n"
        + "lxc.net.0.type = veth\nlxc.net.0.ipv4.address = 10.0.0.2/24\n"
        + "lxc.net.0.ipv4.gateway = 10.0.0.1\n"
        + "lxc.net.1.type = veth\nlxc.net.1.link = br1\n"
        + "lxc.net.1.hwaddr = 00:16:3e:xx:xx:xx\nlxc.net.1.ipv4.address = 172.16.0.5\n"
        + "lxc.net.1.ipv4.address = 10.1.0.5/16 10.1.0.255\n"
        + "lxc.net.1.ipv4.gateway = auto\nlxc.net.1.ipv6.gateway = dev\n"
        + "lxc.net.1.script.up = /bin/up\n"
    )
    eth, br = c.domain.interfaces
    assert (Interface(type="ethernet", link_up=False)) == eth
    assert (
        Interface(
            type="bridge",
            source="br1",
            link_up=False,
            ips=(IpAddress("172.16.0.5", 16), IpAddress("10.1.0.5", 16)),
        )
    ) == br
    why = reasons(c)
    assert "before any" in why["lxc.network.link = early"]
    assert "type='ethernet'" in why["lxc.net.0.ipv4.address = 10.0.0.2/24"]
    assert "host's" in why["lxc.net.0.ipv4.gateway = 10.0.0.1"]
    assert "broadcast" in why["lxc.net.1.ipv4.address = 10.1.0.5/16 10.1.0.255"]
    assert "bridge's address" in why["lxc.net.1.ipv4.gateway = auto"]
    assert "lxc.net.1.ipv6.gateway = dev" in why
    assert "lxc.net.1.script.up = /bin/up" in why
    notes = " ".join(n.text for n in c.notes)
    assert "LXC's default for 172.16.0.5 is /16" in notes
    assert "template" in notes


def test_an_empty_net_key_clears_the_nics_before_it() -> None:
    c = text(BASE + "lxc.net.0.type = veth\nlxc.net.0.link = br0\nlxc.net =\n")
    assert ((), True) == (c.domain.interfaces, c.domain.privnet)


# --- ids, capabilities, init ------------------------------------------------------------------


def test_idmap_that_does_not_map_root_is_listed() -> None:
    c = text(BASE + "lxc.idmap = u 1 100000 10\nlxc.idmap = g 0 100000 10\nlxc.idmap = x 1 2\n")
    assert () == c.domain.idmap
    assert 3 == len(c.unmapped)


def test_cap_drop_and_keep() -> None:
    """cap.drop: policy allow with the dropped ones off (libvirt's mapping, and a note for
    each widening beyond the default); cap.keep: deny with the kept ones on; spellings
    CAP_X and numbers; names libvirt has no element for are listed."""
    drop = text(BASE + "lxc.cap.drop = CAP_SYS_MODULE 25\nlxc.cap.drop = sys_module bpf\n")
    assert Capabilities(CapsPolicy.ALLOW, (("sys_module", False), ("sys_time", False))) == (
        drop.domain.capabilities
    )
    assert ["bpf"] == [u.value for u in drop.unmapped]
    assert any("widens features/capabilities/sys_admin" in n.text for n in drop.notes)
    keep = convert("caps-keep.conf").domain
    assert (
        Capabilities(
            CapsPolicy.DENY,
            tuple((c, True) for c in ("chown", "kill", "setuid", "setgid", "net_bind_service")),
        )
        == keep.capabilities
    )
    none = text(BASE + "lxc.cap.keep = none\n").domain
    assert frozenset() == capability_set(none)
    nothing = text(BASE)
    assert None is nothing.domain.capabilities
    assert any("LXC would keep every capability" in n.text for n in nothing.notes)


def test_init_and_environment() -> None:
    d = convert("caps-keep.conf").domain
    assert (
        OsSpec(
            init="/bin/sh",
            initargs=("-c", LOOP),
            initdir="/tmp",
            initenv=(("GREETING", "hello world"), ("LANG", "C.UTF-8")),
        )
        == d.os
    )
    assert (Filesystem("/var/lib/lxc/minimal/rootfs", "/", readonly=True),) == d.filesystems
    c = text(BASE + "lxc.init.uid = 1000\nlxc.init.cmd = sbin/init\nlxc.environment = HOME\n")
    assert ("1000", "0", "/sbin/init") == (
        c.domain.os.inituser,
        c.domain.os.initgroup,
        c.domain.os.init,
    )
    assert ["lxc.init.cmd", "lxc.environment"] == [u.key for u in c.unmapped]


def test_arch_start_console() -> None:
    c = text(
        BASE
        + "lxc.arch = amd64\nlxc.start.auto = 1\nlxc.start.delay = 5\nlxc.console.path = none\n"
    )
    assert True is c.domain.autostart
    assert ["lxc.start.delay"] == [u.key for u in c.unmapped]
    other = text(BASE + "lxc.arch = i686\n")
    assert "host's architecture" in reasons(other)["lxc.arch = i686"]


# --- domain to config -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("name", ["web-v3.conf", "cgroup2.conf", "net-ethernet.conf"])
def test_to_native_reads_back_to_the_same_domain(name: str, version: int) -> None:
    d = convert(name).domain
    native = to_native(d, cgroup_version=version)  # type: ignore[arg-type]
    assert () == native.unexpressed
    back = text(native.text)
    assert () == back.unmapped
    # the supervisor's default set (no <capabilities>) comes back as the same set, kept
    assert capability_set(d) == capability_set(back.domain)
    if d.capabilities is None:
        back = attrs.evolve(back, domain=attrs.evolve(back.domain, capabilities=None))
    assert d == back.domain


@pytest.mark.parametrize("version", [1, 2])
def test_to_native_writes_cpuset_blkio_and_ttys_back(version: int) -> None:
    """The cpuset, the /dev/block/MAJ:MIN throttles (0 as v2's max) and the consoles as
    lxc.tty.max convert back to the same domain, on either cgroup version."""
    native = to_native(TUNED, cgroup_version=version)  # type: ignore[arg-type]
    assert () == native.unexpressed
    if version == 2:
        assert "lxc.cgroup2.io.max = 7:0 rbps=2097152 wbps=1048576 riops=400 wiops=max\n" in (
            native.text
        )
    else:
        assert "lxc.cgroup.blkio.throttle.write_iops_device = 7:0 0\n" in native.text
    back = text(native.text)
    assert ["lxc.tty.max"] == [u.key for u in back.unmapped]
    assert TUNED == attrs.evolve(back.domain, capabilities=None)


def test_to_native_names_devices_by_their_numbers() -> None:
    """A device path is written by its numbers; one the lookup cannot resolve is listed; a
    cpuset is written in the kernel's list format; a <vcpu> that is not the cpuset's count
    and a console's live pty are listed."""
    d = attrs.evolve(
        TUNED,
        vcpu=4,
        cpuset="0-3,^2",
        blkiotune=BlkioTune(
            devices=(BlkioDevice("/dev/vdb", weight=300), BlkioDevice("/dev/nope", weight=200))
        ),
        consoles=(Console(tty="/dev/pts/3", target_type="lxc", target_port=0),),
    )
    native = to_native(d, device_numbers={"/dev/vdb": "252:16"}.get)
    assert "lxc.cgroup2.io.weight = 252:16 300\n" in native.text
    assert "lxc.cgroup2.cpuset.cpus = 0-1,3\n" in native.text
    assert "lxc.tty.max = 1\n" in native.text
    gaps = "\n".join(native.unexpressed)
    assert "/dev/nope" in gaps
    assert "<vcpu>4</vcpu>" in gaps
    assert "<console> tty=" in gaps
    assert "lxc.console.path = none\n" in to_native(text(BASE).domain).text


def test_host_device_numbers() -> None:
    """The CLI's lookup: a block device node's numbers, those a /dev/block/MAJ:MIN path
    names; None for anything else."""
    block = next(
        (
            os.path.join("/dev", n)
            for n in sorted(os.listdir("/dev"))
            if stat.S_ISBLK(os.stat(os.path.join("/dev", n)).st_mode)
        ),
        None,
    )
    assert (None, None) == (host_device_numbers("/dev/null"), host_device_numbers("/nonexistent"))
    assert "259:70000" == host_device_numbers("/dev/block/259:70000")
    if block is not None:
        rdev = os.stat(block).st_rdev
        assert f"{os.major(rdev)}:{os.minor(rdev)}" == host_device_numbers(block)


def test_to_native_keeps_the_capability_set() -> None:
    """The supervisor's default set (no <capabilities>) and cap.keep come out as lxc.cap.keep,
    which gives the same set back."""
    for d in (convert("caps-keep.conf").domain, text(BASE).domain):
        back = text(to_native(d).text).domain
        assert capability_set(d) == capability_set(back)


def test_to_native_lists_what_lxc_cannot_express() -> None:
    d = Domain(
        name="v1",
        type="vserver",
        id=101,
        uuid="6c1f5d1e-0b7c-4a47-9d8e-1f6a2b3c4d5e",
        scheduler=TokenBucket(fill_rate=1, interval=4),
        interfaces=(
            Interface(type="network", source="lan"),
            Interface(type="ethernet", ips=(IpAddress("10.0.0.1", 24),)),
            Interface(type="vserver", ips=(IpAddress("10.0.0.9", 24),)),
        ),
        os=OsSpec(inituser="www", initgroup="www"),
        on_crash="restart",
    )
    native = to_native(d)
    gaps = "\n".join(native.unexpressed)
    for word in ("root directory", "context id", "<uuid>", "token bucket", "type='bridge'"):
        assert word in gaps
    for word in ("host end", "IP isolation", "<inituser>www", "<on_poweroff>"):
        assert word in gaps
    assert "lxc.net.0.type = veth\n" in native.text
    assert "lxc.rootfs.path" not in native.text


# --- the verbs ------------------------------------------------------------------------------


def test_from_native_verb_prints_document_and_lists_keys() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert 0 == lxc_from_native(str(DATA / "unmapped.conf"), name=None, out=out, err=err)
    assert "leftovers" == parse_domain(out.getvalue()).name
    lines = err.getvalue().splitlines()
    assert f"{DATA}/unmapped.conf:5: lxc.net.0.type = macvlan: not mapped yet: " in lines[1]
    assert "vsv domxml-from-native: 22 not mapped (4 of them not yet" in lines[-1]


def test_from_native_verb_exit_codes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert 2 == lxc_from_native(str(tmp_path / "none"), name=None, out=out, err=err)
    assert "cannot read" in err.getvalue()
    (tmp_path / "bad").write_text("lxc.uts.name = c1\n")
    err = io.StringIO()
    assert 1 == lxc_from_native(str(tmp_path / "bad"), name=None, out=out, err=err)
    assert "no lxc.rootfs.path" in err.getvalue()
    assert "" == out.getvalue()
    stdin = io.BytesIO(BASE.encode())
    assert 0 == lxc_from_native("-", name="x1", out=out, err=io.StringIO(), stdin=stdin)
    assert "x1" == parse_domain(out.getvalue()).name


def test_import_lxc_reads_the_container_directory(tmp_path: Path) -> None:
    (tmp_path / "c9").mkdir()
    shutil.copy(DATA / "web-v3.conf", tmp_path / "c9" / "config")
    shutil.copy(DATA / "common.conf", tmp_path / "c9" / "common.conf")
    shutil.copy(DATA / "fstab", tmp_path / "c9" / "fstab")
    status, document = import_lxc("c9", str(tmp_path), err=io.StringIO())
    assert 0 == status
    assert document is not None
    d = parse_domain(document)
    assert attrs.evolve(convert("web-v3.conf").domain, name="c9", hostname="web") == d
    assert (2, None) == import_lxc("nope", str(tmp_path), err=io.StringIO())
    assert (2, None) == import_lxc("../c9", str(tmp_path), err=io.StringIO())


def test_to_native_verb(tmp_path: Path) -> None:
    (tmp_path / "d.xml").write_text(format_domain(convert("web-v3.conf").domain))
    out, err = io.StringIO(), io.StringIO()
    assert 0 == lxc_to_native(str(tmp_path / "d.xml"), cgroup_version=1, out=out, err=err)
    assert "lxc.cgroup.memory.limit_in_bytes = 268435456\n" in out.getvalue()
    assert "" == err.getvalue()
    (tmp_path / "n.xml").write_text("<network><name>n</name></network>")
    assert 1 == lxc_to_native(str(tmp_path / "n.xml"), cgroup_version=2, out=out, err=err)


def _vsv(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_verbs_as_commands(tmp_path: Path) -> None:
    """The three verbs through `vsv` itself, and --define against a served API."""
    done = _vsv("domxml-from-native", "lxc-tools", "tests/data/lxc/web-v1.conf")
    assert (0, "web") == (done.returncode, parse_domain(done.stdout).name)
    back = _vsv("domxml-to-native", "lxc-tools", "-", stdin=done.stdout)
    assert 0 == back.returncode
    assert "lxc.net.0.link = lxcbr0" in back.stdout
    assert 2 == _vsv("domxml-from-native", "qemu-argv", "x").returncode
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "config").write_text(BASE)
    d = short_tmpdir()
    srv = ServerThread(d).start()
    try:
        defined = _vsv(
            "import-lxc", "web", "--lxcpath", str(tmp_path), "--define", "--socket", srv.rw
        )
        assert (0, "Domain 'web' defined from LXC web\n") == (defined.returncode, defined.stdout)
        dumped = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", srv.rw, "dumpxml", "web"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ("web", "c1") == (
            parse_domain(dumped.stdout).name,
            parse_domain(dumped.stdout).hostname,
        )
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


# --- as root: converted configs define and start -------------------------------------------


def _stage(tmp_path: Path, prefix: str, node: str = "7:0") -> tuple[Path, Path]:
    """The configs copied with their host paths under tmp_path, names carrying the prefix and
    the block device 7:0 of the tunables configs replaced by ``node``: (the config directory,
    the directory standing for /var/lib/lxc)."""
    lxc = tmp_path / "lxc"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    for src in DATA.iterdir():
        body = src.read_text()
        body = body.replace("/var/lib/lxc/", f"{lxc}/")
        body = body.replace("lxcbr0", f"{prefix}br0").replace("vethweb0", f"{prefix}w0")
        body = body.replace(" 7:0 ", f" {node} ")
        (cfg / src.name).write_text(body)
    return cfg, lxc


def _prepare_dirs(domain: Domain) -> None:
    """The root (a busybox root, owned by the mapped range for a guest with an <idmap>) and
    the bind sources the domain names."""
    owner = None
    for e in domain.idmap:
        if e.kind == "uid" and e.start == 0:
            owner = (e.target, e.target)
    for fs in domain.filesystems:
        if fs.type != "mount":
            continue
        if fs.target == "/":
            prepare_busybox_root(fs.source, owner=owner)
        else:
            os.makedirs(fs.source, exist_ok=True)
            if owner is not None:
                os.chown(fs.source, *owner)


def _cgroup_value(sup: Supervisor, name: str, controller: str, *files: str) -> str:
    handle = sup.guests[name].cgroup
    assert handle is not None
    where = handle.controller_dir(controller)
    assert where is not None
    for f in files:
        if os.path.exists(os.path.join(where, f)):
            return Path(where, f).read_text().strip()
    raise AssertionError(f"none of {files} in {where}")


def _mounts(pid: int) -> dict[str, tuple[str, str]]:
    """Mount point -> (filesystem type, mount options) in a process's mount namespace."""
    out: dict[str, tuple[str, str]] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fstype = right.split()[0]
        out[fields[4]] = (fstype, fields[5] + "," + right.split()[2])
    return out


def _bounding(pid: str) -> frozenset[str]:
    """A process's capability bounding set."""
    status = Path(f"/proc/{pid}/status").read_text()
    return parse_cap_mask(status.split("CapBnd:")[1].split()[0])


STARTED = ["web-v3.conf", "cgroup2.conf", "net-none.conf", "net-ethernet.conf"]
STARTED += ["caps-keep.conf", "unmapped.conf", "tunables-v1.conf", "tunables-v3.conf"]


@pytest.mark.root
@pytest.mark.parametrize("config", STARTED)
async def test_a_converted_config_defines_and_starts(
    config: str,
    sup: Supervisor,
    tmp_path: Path,
    prefix: str,
    sandbox: str,
    request: pytest.FixtureRequest,
) -> None:
    """Each key family's config, converted, is defined and started on a real supervisor, and
    the guest has what the config asked for: host name, mounts, limits (memory, cpuset, I/O
    throttles of a loop device standing in for a disk), console, NIC with its addresses and
    gateway, network namespace, capabilities."""
    node = "7:0"
    if config.startswith("tunables"):
        st = os.stat(request.getfixturevalue("loopdev"))
        node = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    cfg, _lxc = _stage(tmp_path, prefix, node)
    path = cfg / config
    conversion = from_native(path.read_text(), path=str(path), read=read_lxc_path)
    domain = parse_domain(format_domain(conversion.domain))
    _prepare_dirs(domain)
    name = domain.name
    if domain.interfaces and domain.interfaces[0].type == "bridge":
        bridge = f"{prefix}br0"
        for cmd in (
            ("link", "add", bridge, "type", "bridge"),
            ("addr", "add", "10.213.61.1/24", "dev", bridge),
            ("link", "set", bridge, "up"),
        ):
            subprocess.run(["ip", "-n", sandbox, *cmd], check=True, capture_output=True)
    await sup.define_domain(domain)
    status = await sup.start_domain(name)
    try:
        assert "RUNNING" == status.state
        pid = status.init_pid
        assert pid is not None
        host = subprocess.run(
            ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True
        ).stdout.strip()
        assert name == host
        own_net = os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert domain.private_network == own_net
        mounts = _mounts(pid)
        for fs in domain.filesystems:
            if fs.target == "/":
                continue
            fstype, options = mounts[fs.target]
            assert ("tmpfs" if fs.type == "ram" else fstype) == fstype
            if fs.type == "ram":
                assert f"size={fs.usage_kib}k" in options
            assert fs.readonly == ("ro" in options.split(",")[:1])
        if domain.memory_limit_kib is not None:
            limit = _cgroup_value(sup, name, "memory", "memory.max", "memory.limit_in_bytes")
            assert str(domain.memory_limit_kib * 1024) == limit
        if domain.pids_limit is not None:
            assert str(domain.pids_limit) == _cgroup_value(sup, name, "pids", "pids.max")
        if domain.cpuset is not None:
            assert domain.cpuset == _cgroup_value(sup, name, "cpuset", "cpuset.cpus")
        if domain.blkiotune is not None:
            if "io" in detect_layout().v2_controllers:
                line = f"{node} rbps=2097152 wbps=1048576 riops=400 wiops=max"
                assert line == _cgroup_value(sup, name, "blkio", "io.max")
            else:
                files = ("read_bps", "write_bps", "read_iops")
                throttles = [
                    _cgroup_value(sup, name, "blkio", f"blkio.throttle.{f}_device") for f in files
                ]
                assert [f"{node} 2097152", f"{node} 1048576", f"{node} 400"] == throttles
        # a console is init's stdio, a pty of the guest's own devpts
        stdin = os.readlink(f"/proc/{pid}/fd/0")
        assert bool(domain.consoles) == stdin.startswith("/dev/pts/"), stdin
        # the guest's set, but for what the supervisor's own bounding set lacks (only a guest
        # with its own user namespace may have that back, inside the namespace)
        expected, got = capability_set(domain), _bounding(str(pid))
        assert got <= expected
        assert expected - got <= ALL_CAPS - _bounding("self")
        if config == "web-v3.conf":
            ns = f"{prefix}-{name}"
            ping = in_ns(ns, "ping", "-c1", "-W2", "10.213.61.1")
            assert 0 == ping.returncode, ping.stdout + ping.stderr
            route = in_ns(ns, "ip", "route", "show", "default")
            assert "via 10.213.61.1 dev eth0" in route.stdout
            link = in_ns(ns, "ip", "link", "show", "eth0").stdout
            assert "mtu 1400" in link
            assert "00:16:3e:5a:01:02" in link
    finally:
        await sup.destroy_domain(name)
