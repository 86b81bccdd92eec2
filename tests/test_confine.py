"""The confinement a domain asks for, computed without a kernel: capability sets, widenings."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.guest import confine
from supervisor.guest.confine import (
    ALL_CAPS,
    CAPABILITIES,
    LIBVIRT_DROPS,
    VSERVER_CAPS,
    capability_set,
    default_caps,
    mount_points_below,
    parse_cap_mask,
    seccomp_caps,
    widenings,
)
from supervisor.model import Capabilities, CapsPolicy, Domain, IdMapEntry, Interface
from supervisor.validate import CAPABILITY_NAMES

IDMAP = (IdMapEntry("uid", 0, 100000, 65536), IdMapEntry("gid", 0, 100000, 65536))
NIC = Interface(type="network", source="default")

#: what the issue says the lxc dialect's default leaves out without a user namespace
MUST_DROP = {
    "sys_admin",
    "sys_module",
    "sys_rawio",
    "sys_time",
    "mknod",
    "mac_admin",
    "mac_override",
    "syslog",
    "audit_control",
}


def _caps(policy: CapsPolicy, **states: bool) -> Capabilities:
    return Capabilities(policy=policy, caps=tuple(states.items()))


def test_capability_numbers_are_the_kernels() -> None:
    """Names and numbers follow linux/capability.h; libvirt's names are all known."""
    assert (0, 21, 40) == (
        CAPABILITIES["chown"],
        CAPABILITIES["sys_admin"],
        CAPABILITIES["checkpoint_restore"],
    )
    assert list(range(41)) == sorted(CAPABILITIES.values())
    assert CAPABILITY_NAMES <= ALL_CAPS


def test_lxc_default_without_idmap() -> None:
    """lxc, own network: everything but the host-reaching set; sys_boot and net_* stay."""
    caps = default_caps(Domain(name="g", type="lxc", privnet=True))
    assert not caps & MUST_DROP
    assert {"sys_boot", "net_admin", "net_raw", "chown", "setuid", "kill"} <= caps
    assert ALL_CAPS - set(confine.LXC_DROPS) == caps


def test_lxc_default_on_the_hosts_network_drops_net_admin_and_raw() -> None:
    """A guest sharing the host's network namespace gets neither net_admin nor net_raw."""
    caps = default_caps(Domain(name="g", type="lxc"))
    assert not caps & {"net_admin", "net_raw"}
    assert "net_bind_service" in caps


def test_vserver_default_is_util_vservers_bcaps() -> None:
    """vserver: util-vserver's default bcapabilities, plus net_raw on an own network."""
    assert VSERVER_CAPS == default_caps(Domain(name="g", type="vserver"))
    own = default_caps(Domain(name="g", type="vserver", interfaces=(NIC,)))
    assert VSERVER_CAPS | {"net_raw"} == own
    assert not own & MUST_DROP


def test_idmap_keeps_libvirts_wider_default_but_sys_admin() -> None:
    """With an idmap the lxc dialect keeps libvirt's default, except sys_admin."""
    caps = default_caps(Domain(name="g", type="lxc", idmap=IDMAP, privnet=True))
    assert ALL_CAPS - LIBVIRT_DROPS - {"sys_admin"} == caps
    assert {"sys_rawio", "syslog", "net_admin"} <= caps


def test_policy_deny_with_one_cap_on_gives_exactly_it() -> None:
    """policy='deny' with one capability on gives that one capability."""
    dom = Domain(name="g", type="lxc", capabilities=_caps(CapsPolicy.DENY, net_bind_service=True))
    assert frozenset({"net_bind_service"}) == capability_set(dom)


def test_policy_allow_gives_all_but_those_off() -> None:
    """policy='allow' starts from every capability; state='off' removes one."""
    dom = Domain(name="g", type="vserver", capabilities=_caps(CapsPolicy.ALLOW, sys_module=False))
    assert ALL_CAPS - {"sys_module"} == capability_set(dom)


def test_policy_default_with_states_changes_the_default() -> None:
    """policy='default': on adds to the dialect's default, off removes from it."""
    dom = Domain(
        name="g",
        type="lxc",
        privnet=True,
        capabilities=_caps(CapsPolicy.DEFAULT, sys_admin=True, kill=False),
    )
    base = default_caps(attrs.evolve(dom, capabilities=None))
    assert (base | {"sys_admin"}) - {"kill"} == capability_set(dom)


@given(
    st.sampled_from(list(CapsPolicy)),
    st.dictionaries(st.sampled_from(sorted(CAPABILITY_NAMES)), st.booleans(), max_size=6),
    st.sampled_from(["lxc", "vserver"]),
    st.booleans(),
)
def test_states_always_win(
    policy: CapsPolicy, states: dict[str, bool], dtype: str, idmap: bool
) -> None:
    """Whatever the policy and dialect, a capability turned on is in, one turned off is out."""
    dom = Domain(
        name="g",
        type=dtype,  # type: ignore[arg-type]
        idmap=IDMAP if idmap else (),
        capabilities=Capabilities(policy=policy, caps=tuple(states.items())),
    )
    caps = capability_set(dom)
    assert {c for c, on in states.items() if on} <= caps
    assert not caps & {c for c, on in states.items() if not on}


def test_widenings_name_what_goes_beyond_the_default() -> None:
    """validate's notes: each capability beyond the default, and policy='allow' itself."""
    assert [] == widenings(Domain(name="g", type="lxc"))
    narrowed = Domain(name="g", type="lxc", capabilities=_caps(CapsPolicy.DEFAULT, kill=False))
    assert [] == widenings(narrowed)
    wide = Domain(name="g", type="lxc", capabilities=_caps(CapsPolicy.DEFAULT, sys_admin=True))
    ((where, message),) = widenings(wide)
    assert "features/capabilities/sys_admin" == where
    assert "mount" in message
    assert "lxc dialect" in message
    allowed = widenings(Domain(name="g", type="vserver", capabilities=_caps(CapsPolicy.ALLOW)))
    assert "features/capabilities/@policy" == allowed[0][0]
    assert "features/capabilities/sys_module" in [w for w, _m in allowed]


def test_seccomp_caps_in_a_user_namespace_only_sys_admin_counts() -> None:
    """In an own user namespace, only sys_admin lifts a system call's denial."""
    caps = frozenset({"sys_admin", "bpf", "syslog"})
    assert caps == seccomp_caps(caps, userns=False)
    assert frozenset({"sys_admin"}) == seccomp_caps(caps, userns=True)


def test_parse_cap_mask() -> None:
    """A /proc/PID/status mask becomes capability names."""
    assert frozenset({"chown", "kill", "sys_admin"}) == parse_cap_mask("0000000000200021")
    assert ALL_CAPS == parse_cap_mask("000001ffffffffff")


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:5 / /proc rw - proc proc rw
24 22 0:6 / /run rw - tmpfs tmpfs rw
25 24 0:4 net:[4026532] /run/netns/a rw - nsfs nsfs rw
26 24 0:4 net:[4026533] /run/netns/b\\040c rw - nsfs nsfs rw
27 22 0:7 / /running rw - tmpfs t rw
28 22 0:8 / /tmp rw - tmpfs t rw
"""


def test_mount_points_below() -> None:
    """Mount points at or below the tops, deepest first, with mountinfo's escapes undone."""
    expected = ("/run/netns/a", "/run/netns/b c", "/proc", "/run", "/tmp")
    assert expected == mount_points_below(MOUNTINFO, ("/proc", "/run", "/tmp", "/dev"))


def test_host_secret_files_take_only_private_ssh_keys() -> None:
    """Every /etc/ssh file ending in _key is masked; public keys and configs are not."""
    names = ["ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config", "ssh_host_ed25519_key"]
    files = confine.host_secret_files(names)
    assert "/etc/ssh/ssh_host_rsa_key" in files
    assert "/etc/ssh/ssh_host_ed25519_key" in files
    assert not [f for f in files if f.endswith((".pub", "config"))]
    assert "/etc/shadow" in files


@pytest.mark.parametrize("dtype", ["lxc", "vserver"])
def test_no_default_keeps_a_capability_that_reaches_the_host(dtype: str) -> None:
    """No dialect's default, without an idmap, keeps sys_admin, sys_module, mknod or bpf."""
    for dom in (Domain(name="g", type=dtype), Domain(name="g", type=dtype, privnet=True)):  # type: ignore[arg-type]
        assert not capability_set(dom) & {"sys_admin", "sys_module", "mknod", "bpf"}
