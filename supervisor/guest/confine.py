"""What a guest's root may do: its capability set, and the paths it must not see or change (pure).

Theory of operation
-------------------
A guest context is a security boundary: root inside it must not reach the host, the kernel or
another guest. The layers that keep it so are applied by the embryo before the guest's init
runs (``forkserver.become_guest``) and by ``vsv exec`` before a command runs; this module
decides, from the domain alone, what each layer is for one guest, so that both entries apply
exactly the same thing and tests can compare with a table:

- **capabilities**: one set, used as the bounding set and as the permitted and effective sets
  of a root init (inheritable and ambient sets are empty). The default depends on the dialect
  and on whether the guest runs in a user namespace (``<idmap>``), then libvirt's
  ``<features><capabilities policy=...>`` and per-capability ``state`` change it as libvirt
  documents: ``default`` starts from the default set, ``allow`` from every capability, ``deny``
  from none; ``state='on'`` adds one, ``state='off'`` removes one.
- **paths**: what is masked or read-only in the guest's ``/proc`` and ``/sys``, and which host
  paths a guest without a root filesystem must not see (secrets; the supervisor's own state).
- :func:`widenings` says, for ``vsv validate``, where a document asks for more than the
  default, so that an admin sees every explicit widening.

The seccomp filter is derived from the capability set (``supervisor.guest.seccomp``) and the
device allowlist is the same for every guest (``supervisor.guest.devices``).
"""

from __future__ import annotations

import re
from typing import Final

from supervisor.model import CapsPolicy, Domain, SharedNamespace

#: Linux capability numbers (include/uapi/linux/capability.h), by libvirt's lower-case names.
CAPABILITIES: Final[dict[str, int]] = {
    "chown": 0,
    "dac_override": 1,
    "dac_read_search": 2,
    "fowner": 3,
    "fsetid": 4,
    "kill": 5,
    "setgid": 6,
    "setuid": 7,
    "setpcap": 8,
    "linux_immutable": 9,
    "net_bind_service": 10,
    "net_broadcast": 11,
    "net_admin": 12,
    "net_raw": 13,
    "ipc_lock": 14,
    "ipc_owner": 15,
    "sys_module": 16,
    "sys_rawio": 17,
    "sys_chroot": 18,
    "sys_ptrace": 19,
    "sys_pacct": 20,
    "sys_admin": 21,
    "sys_boot": 22,
    "sys_nice": 23,
    "sys_resource": 24,
    "sys_time": 25,
    "sys_tty_config": 26,
    "mknod": 27,
    "lease": 28,
    "audit_write": 29,
    "audit_control": 30,
    "setfcap": 31,
    "mac_override": 32,
    "mac_admin": 33,
    "syslog": 34,
    "wake_alarm": 35,
    "block_suspend": 36,
    "audit_read": 37,
    "perfmon": 38,
    "bpf": 39,
    "checkpoint_restore": 40,
}
ALL_CAPS: Final = frozenset(CAPABILITIES)

#: util-vserver's default ``bcapabilities`` for a guest (linux-vserver.org, "util-vserver:
#: Capabilities and Flags"): no sys_admin, net_admin, mknod, sys_module, sys_rawio, sys_time.
VSERVER_CAPS: Final = frozenset(
    {
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "net_bind_service",
        "sys_chroot",
        "sys_ptrace",
        "sys_boot",
        "sys_tty_config",
        "lease",
        "audit_write",
    }
)

#: What no guest without a user namespace gets by default, and why (the lxc dialect's default
#: is every capability but these; with an ``<idmap>`` only :data:`LIBVIRT_DROPS` are dropped).
LXC_DROPS: Final[dict[str, str]] = {
    "sys_admin": "mount, namespaces, and most of what would undo the other layers",
    "sys_module": "load kernel modules",
    "sys_rawio": "raw I/O ports and memory",
    "sys_time": "set the host's clock",
    "sys_pacct": "switch the host's process accounting",
    "mknod": "make device nodes",
    "mac_admin": "configure the host's LSM",
    "mac_override": "bypass the host's LSM",
    "syslog": "read and clear the host's kernel log, see kernel addresses",
    "audit_control": "configure the host's audit",
    "audit_read": "read the host's audit log",
    "wake_alarm": "wake the host from suspend",
    "block_suspend": "keep the host from suspending",
    "perfmon": "perf events on the host's kernel",
    "bpf": "load BPF programs into the host's kernel",
    "checkpoint_restore": "checkpoint/restore controls (set_tid, map_files)",
}
#: Dropped only while the guest shares the host's network namespace.
HOST_NET_DROPS: Final[dict[str, str]] = {
    "net_admin": "configure the host's own network",
    "net_raw": "raw and packet sockets on the host's own network (spoofing)",
}
#: libvirt-lxc's default policy drops (src/lxc/lxc_container.c): with an ``<idmap>`` the other
#: capabilities are namespaced, so the lxc dialect keeps libvirt's wider default there, but for
#: sys_admin (:data:`IDMAP_ALSO_DROPS`).
LIBVIRT_DROPS: Final = frozenset({"sys_module", "sys_time", "mknod", "audit_control", "mac_admin"})
#: What an idmapped lxc guest does not get although libvirt keeps it: with sys_admin in its user
#: namespace the guest's root could unmount, in its own mount namespace, the mounts that hide
#: the host's state from it (the masks are made inside that namespace, so the kernel does not
#: lock them). ``<sys_admin state='on'/>`` gives it back, and ``vsv validate`` says so.
IDMAP_ALSO_DROPS: Final = frozenset({"sys_admin"})
#: The capabilities that count, in a user namespace of the guest's own, for the seccomp filter:
#: every other one is checked by the kernel against the host's user namespace, where the guest
#: has none, so keeping it in the guest's set must not lift a system call's denial.
USERNS_MEANINGFUL_FOR_SECCOMP: Final = frozenset({"sys_admin"})

# -- paths --------------------------------------------------------------------------------------

#: /proc files that leak the host's kernel state: hidden behind /dev/null (runc's masked paths
#: and a few more that show kernel addresses or physical memory layout to root).
PROC_MASKED_FILES: Final = (
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "kallsyms",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "vmallocinfo",
    "iomem",
    "ioports",
)
#: of those, the ones whose addresses the kernel shows only to sys_admin in the host's user
#: namespace (kernel/resource.c): masked only for a guest that keeps it
PROC_SHOWN_TO_SYS_ADMIN: Final = frozenset({"iomem", "ioports"})
#: /proc directories hidden behind an empty read-only tmpfs.
PROC_MASKED_DIRS: Final = ("acpi", "scsi", "asound", "driver")
#: /proc entries made read-only: the host's sysctls, sysrq, IRQ affinity, buses, filesystems.
PROC_READONLY: Final = ("sys", "sysrq-trigger", "irq", "bus", "fs")
#: /sys directories hidden behind an empty read-only tmpfs (firmware tables and EFI variables;
#: the RAPL energy counters, a side channel).
SYS_MASKED_DIRS: Final = ("firmware", "devices/virtual/powercap")

#: host directories a guest without a root filesystem sees as empty (people's and root's files)
HOST_SECRET_DIRS: Final = ("/root", "/home")
#: host files it sees as empty (password hashes and their backups)
HOST_SECRET_FILES: Final = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
#: where the host's ssh private keys are (every file but ``*.pub`` whose name ends in ``_key``)
SSH_DIR: Final = "/etc/ssh"


def host_secret_files(ssh_names: list[str]) -> tuple[str, ...]:
    """Every host file to mask, given the names in /etc/ssh (listed by the caller)."""
    keys = sorted(f"{SSH_DIR}/{n}" for n in ssh_names if n.endswith("_key"))
    return (*HOST_SECRET_FILES, *keys)


def unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as backslash and octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points_below(mountinfo: str, tops: tuple[str, ...]) -> tuple[str, ...]:
    """Every mount point in ``mountinfo`` text at or below one of ``tops``, deepest first.

    A guest without a root filesystem gets fresh mounts on these directories; what the host has
    mounted at or below them (``/run/netns/*``, ``/run/user/*``, ...) is detached first, or it
    would stay listed in the guest's mount table, under the fresh mount.
    """
    found: set[str] = set()
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)[0].split()
        if len(fields) < 5:
            continue
        point = unescape_mountinfo(fields[4])
        if any(point == top or point.startswith(top.rstrip("/") + "/") for top in tops):
            found.add(point)
    return tuple(sorted(found, key=lambda p: (-p.count("/"), p)))


# -- capabilities -------------------------------------------------------------------------------


def default_caps(domain: Domain) -> frozenset[str]:
    """The capability set a domain gets before its ``<features><capabilities>`` apply."""
    if domain.type == "vserver":
        # VServer's ccap RAW_ICMP let a guest ping; Linux has only the whole of net_raw for it,
        # and a guest has it only on a network namespace of its own
        return VSERVER_CAPS | ({"net_raw"} if domain.private_network else set())
    if domain.idmap:
        return ALL_CAPS - LIBVIRT_DROPS - IDMAP_ALSO_DROPS
    drops = set(LXC_DROPS)
    if not domain.private_network:
        drops |= set(HOST_NET_DROPS)
    return ALL_CAPS - drops


def capability_set(domain: Domain) -> frozenset[str]:
    """The guest's bounding set, which is also a root init's permitted and effective set."""
    spec = domain.capabilities
    if spec is None:
        return default_caps(domain)
    if spec.policy == CapsPolicy.ALLOW:
        caps = set(ALL_CAPS)
    elif spec.policy == CapsPolicy.DENY:
        caps = set()
    else:
        caps = set(default_caps(domain))
    for name, on in spec.caps:
        if on:
            caps.add(name)
        else:
            caps.discard(name)
    return frozenset(caps & ALL_CAPS)


def seccomp_caps(caps: frozenset[str], *, userns: bool) -> frozenset[str]:
    """The capabilities the seccomp filter is derived from (``seccomp.profile_for``)."""
    return caps & USERNS_MEANINGFUL_FOR_SECCOMP if userns else caps


def cap_numbers(caps: frozenset[str]) -> tuple[int, ...]:
    """The kernel's numbers of ``caps``, sorted."""
    return tuple(sorted(CAPABILITIES[c] for c in caps))


def parse_cap_mask(hex_mask: str) -> frozenset[str]:
    """Capability names from a ``/proc/PID/status`` mask (``CapBnd: 000001ffffffffff``)."""
    mask = int(hex_mask, 16)
    return frozenset(name for name, bit in CAPABILITIES.items() if mask >> bit & 1)


def dialect_name(domain: Domain) -> str:
    """How :func:`widenings` names the default a domain is compared with."""
    where = "with an <idmap>" if domain.idmap else "without an <idmap>"
    return f"the {domain.type} dialect's default {where}"


#: what two guests have in common through a namespace one shares, by kind
_SHARED_REACH: Final = {
    "net": "interfaces, addresses, routes, ports and traffic",
    "ipc": "System V IPC objects and POSIX message queues",
    "uts": "the host name, which either may change",
}


def _share_widening(share: SharedNamespace) -> str:
    """The widening a ``<lxc:share...>`` is: the guest is no longer alone in that namespace."""
    whose = f"guest {share.value}" if share.type == "name" else f"the netns {share.value}"
    return f"joins the {share.kind} namespace of {whose}: the two share {_SHARED_REACH[share.kind]}"


def widenings(domain: Domain) -> list[tuple[str, str]]:
    """(where, message) for each way the document widens the default confinement.

    Not errors: a widening is the admin's explicit choice, and ``vsv validate`` reports it so
    that nobody widens a guest without seeing it.
    """
    out: list[tuple[str, str]] = []
    for i, iface in enumerate(domain.interfaces):
        if iface.filterref == "vsv-allow-all":
            out.append(
                (
                    f"devices/interface[{i + 1}]/filterref",
                    "vsv-allow-all turns anti-spoofing off: the NIC may send from any MAC and "
                    "address, and answer DHCP and router solicitations",
                )
            )
    for share in domain.shared_namespaces:
        out.append((f"lxc:namespace/lxc:share{share.kind}", _share_widening(share)))
    spec = domain.capabilities
    if spec is None:
        return out
    extra = capability_set(domain) - default_caps(domain)
    if spec.policy == CapsPolicy.ALLOW:
        out.append(
            (
                "features/capabilities/@policy",
                "policy='allow' keeps every capability not turned off, beyond "
                f"{dialect_name(domain)}",
            )
        )
    for name in sorted(extra):
        why = LXC_DROPS.get(name) or HOST_NET_DROPS.get(name) or "outside the default set"
        out.append(
            (
                f"features/capabilities/{name}",
                f"grants {name} ({why}), beyond {dialect_name(domain)}",
            )
        )
    return out
