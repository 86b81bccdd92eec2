"""Domain XML: both dialects (libvirt's ``type='lxc'`` and the 2007 RFC's ``type='vserver'``).

Theory: the two dialects share every element libvirt defines; the vserver dialect adds a
top-level ``<scheduler>`` (the token bucket) and ``<interface type='vserver'>`` (IP isolation).
Settings libvirt has no element for (host name, pids limit, autostart, and the token bucket in an
lxc document) live under ``<metadata>`` in the ``vsv`` namespace, which libvirt's schema allows, so
an lxc document the supervisor writes still validates against libvirt's ``domain.rng``.

Reading never drops anything silently: an element or attribute the model cannot hold is reported,
and whatever is accepted is kept and written back, including what ``virsh dumpxml`` writes that
the supervisor does not act on (``<emulator>``, ``<alias>``, a live ``<source bridge= portid=>``,
``<console>``, ``<seclabel type='none'>``, ``<clock offset='utc'>``, ``<type arch=>``,
``<vcpu placement= current=>``). docs/xml-reference.md says for each element whether it is
applied, kept or refused.

Messages number repeated elements by their position among their siblings of the same tag in the
document, also after a refused one (which the model does not hold): the reader tells
:class:`Reader` where the two numberings part.

:func:`read_domain` is the only domain reader, for good documents and bad ones alike: while it
builds the model it notes the line each model key came from, so a rule of
:mod:`supervisor.validate` is reported at its element's line. Its helpers first ask whether they
have anything to say and build a message only then, which keeps it above the 10,000 documents a
second that ``bench/bench_xml.py`` checks.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from typing import Final, Literal, cast

from lxml import etree

from supervisor.model import (
    BLKIO_THROTTLES,
    INTERFACE_FILTERS,
    BlkioDevice,
    BlkioTune,
    Capabilities,
    CapsPolicy,
    Console,
    CpuBucket,
    CpuTune,
    Domain,
    Filesystem,
    FilesystemType,
    IdMapEntry,
    Interface,
    IpAddress,
    MemTune,
    OsSpec,
    Route,
    SecLabel,
    SharedNamespace,
    TokenBucket,
)
from supervisor.validate import CAPABILITY_NAMES, Key, domain_problems, parse_ip
from supervisor.xml._reader import (
    ON_OFF,
    VSV_NS,
    VSV_PREFIX,
    YES_NO,
    Reader,
    finish,
    items,
    quoted,
    serialize_foreign,
    srcline,
    sub,
    tag_name,
    vsv,
)

#: Unit name -> bytes per unit (libvirt's table: k/KiB binary, KB decimal, and so on).
UNITS: Final[dict[str, int]] = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "KiB": 1024,
    "KB": 1000,
    "M": 1024**2,
    "MiB": 1024**2,
    "MB": 1000**2,
    "G": 1024**3,
    "GiB": 1024**3,
    "GB": 1000**3,
    "T": 1024**4,
    "TiB": 1024**4,
    "TB": 1000**4,
}
_UNIT_LIST: Final = ", ".join(UNITS)

#: The top-level elements of the lxc dialect, in the order error messages list them (a dict: the
#: order for messages, hashing for the lookup of each element read).
_TOP_LXC: Final = dict.fromkeys(
    [
        "name",
        "uuid",
        "title",
        "description",
        "metadata",
        "memory",
        "currentMemory",
        "blkiotune",
        "vcpu",
        "resource",
        "cputune",
        "memtune",
        "os",
        "idmap",
        "features",
        "clock",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "devices",
        "seclabel",
    ]
)
_TOP_VSERVER: Final = dict.fromkeys([*_TOP_LXC, "scheduler"])
_LIFECYCLE_TAGS: Final = frozenset({"on_poweroff", "on_reboot", "on_crash"})
_MEMORY_KEYS: Final = {"memory": "memory_kib", "currentMemory": "current_memory_kib"}
_NONE: Final = frozenset[str]()
_UNIT_ATTR: Final = frozenset({"unit"})
#: Token-bucket attribute -> model field, in the order their values are checked (and reported).
_SCHED_FIELDS: Final = (
    ("fill_rate1", "fill_rate"),
    ("interval1", "interval"),
    ("tokens", "tokens"),
    ("tokens_min", "tokens_min"),
    ("tokens_max", "tokens_max"),
    ("prio_bias", "prio_bias"),
    ("idle_time", "idle_time"),
    ("fill_rate2", "fill_rate2"),
    ("interval2", "interval2"),
)
_CPU_FIELDS: Final = (
    ("fill_rate1", "fill_rate"),
    ("interval1", "interval"),
    ("idle_time", "idle_time"),
    ("fill_rate2", "fill_rate2"),
    ("interval2", "interval2"),
)
_SCHED_ATTRS: Final = frozenset(attr for attr, _field in _SCHED_FIELDS)
_CPU_ATTRS: Final = frozenset(["id", *(attr for attr, _field in _CPU_FIELDS)])
_LIFECYCLE: Final[dict[str, object]] = {
    a: a for a in ("destroy", "restart", "preserve", "rename-restart")
}
_FAMILIES: Final[dict[str, object]] = {"ipv4": "ipv4", "ipv6": "ipv6"}
_IFACE_CHILDREN: Final = dict.fromkeys(
    ("source", "mac", "target", "guest", "ip", "route", "mtu", "link", "filterref", "alias")
)
# The sets and tables below are built once here rather than at each call: reading a domain
# consults a dozen of them, and building them took a noticeable part of its time.
_ROOT_ATTRS: Final = frozenset({"type", "id"})
_VCPU_ATTRS: Final = frozenset({"placement", "cpuset", "current"})
_OFFSET_ATTR: Final = frozenset({"offset"})
_SECLABEL_ATTRS: Final = frozenset({"type", "model", "relabel"})
_NO: Final[dict[str, object]] = {"no": False}
_PATH_ATTR: Final = frozenset({"path"})
_CONSOLE_TARGET_ATTRS: Final = frozenset({"type", "port"})
_LXC: Final[dict[str, object]] = {"lxc": "lxc"}
_CONSOLE_CHILDREN: Final = ("source", "target", "alias")
_DEVICES: Final = ("emulator", "filesystem", "interface", "console")
_STATIC: Final[dict[str, object]] = {"static": "static"}
_MAX_ATTR: Final = frozenset({"max"})
_ARCH_ATTR: Final = frozenset({"arch"})
_NAME_ATTR: Final = frozenset({"name"})
_IDMAP_ATTRS: Final = frozenset({"start", "target", "count"})
_POLICY_ATTR: Final = frozenset({"policy"})
_POLICIES: Final[dict[str, object]] = {p.value: p for p in CapsPolicy}
_STATE_ATTR: Final = frozenset({"state"})
_CONSOLE_ATTRS: Final = frozenset({"type", "tty"})
_FS_ATTRS: Final = frozenset({"type", "accessmode"})
_FS_CHILDREN: Final = ("source", "target", "readonly", "alias")
_FS_CHILDREN_FILE: Final = ("driver", *_FS_CHILDREN)
_DIR_ATTR: Final = frozenset({"dir"})
_USAGE_ATTRS: Final = frozenset({"usage", "units"})
_TYPE_ATTR: Final = frozenset({"type"})
_ADDRESS_ATTR: Final = frozenset({"address"})
_DEV_ATTR: Final = frozenset({"dev"})
_SIZE_ATTR: Final = frozenset({"size"})
_IP_ATTRS: Final = frozenset({"address", "prefix", "family"})
_ROUTE_ATTRS: Final = frozenset({"family", "address", "prefix", "netmask", "gateway"})
#: a network's ``<route>`` also has ``metric`` (read for networks only: NICs do not apply it)
_ROUTE_ATTRS_METRIC: Final = _ROUTE_ATTRS | {"metric"}
_UP_DOWN: Final[dict[str, object]] = {"up": True, "down": False}
_FILTER_ATTR: Final = frozenset({"filter"})
#: ``<filterref filter=>``: the nwfilter names the supervisor implements (docs/networking.md)
_FILTERS: Final[dict[str, object]] = {name: name for name in INTERFACE_FILTERS}
#: the interface types plumbed into a bridge, the only ones a filter applies to
_FILTERED_TYPES: Final = ("network", "bridge")
#: Interface type -> the attribute of ``<source>`` that names what it connects to.
_SOURCE_ATTR: Final = {"network": "network", "bridge": "bridge", "vserver": "dev"}
_SOURCE_ATTRS: Final = {itype: frozenset({attr}) for itype, attr in _SOURCE_ATTR.items()}
#: a type='network' NIC's ``<source>`` in libvirt's live XML also names the network's bridge and
#: libvirt's port for the NIC (kept, not applied)
_SOURCE_ATTRS["network"] = frozenset({"network", "bridge", "portid"})
_VSV_CLARK: Final = f"{{{VSV_NS}}}"
#: libvirt's namespace for its LXC driver's own elements (``<lxc:namespace>``)
LXC_NS: Final = "http://libvirt.org/schemas/domain/lxc/1.0"
_LXC_NAMESPACE: Final = f"{{{LXC_NS}}}namespace"
_SHARE_TAGS: Final = {f"{{{LXC_NS}}}share{kind}": kind for kind in ("net", "ipc", "uts")}
_SHARE_ATTRS: Final = frozenset({"type", "value"})
_VSV_CPU: Final = vsv("cpu")


def read_domain(root: etree._Element, path: str | None) -> Domain:
    """Build a :class:`Domain` from a parsed ``<domain>`` element; raise with every problem."""
    r = Reader(path, srcline(root) or 1)
    lines = r.lines
    lines[()] = r.root_line
    r.attrs(root, "domain", _ROOT_ATTRS)
    dtype = root.get("type")
    if dtype not in ("lxc", "vserver"):
        r.error(
            srcline(root),
            "domain/@type",
            f"value '{dtype}' is not supported: allowed lxc, vserver"
            if dtype is not None
            else "required attribute is missing: allowed lxc, vserver",
        )
        dtype = "vserver"
    lines[("id",)] = r.root_line
    fields: dict[str, object] = {
        "type": dtype,
        "id": r.int_attr(root, "domain", "id"),
    }
    seen: set[str] = set()
    filesystems: list[Filesystem] = []
    interfaces: list[Interface] = []
    consoles: list[Console] = []
    seclabels: list[SecLabel] = []
    allowed = _TOP_VSERVER if dtype == "vserver" else _TOP_LXC
    name: str | None = None
    sched_top: TokenBucket | None = None
    sched_meta: TokenBucket | None = None
    seen_seclabels = 0
    for el in r.children(root, "domain"):
        tag: str = el.tag
        if tag == _LXC_NAMESPACE:
            if "shared_namespaces" in fields:
                r.duplicate(el, "lxc:namespace")
                continue
            fields["shared_namespaces"] = _read_shared_namespaces(r, el)
            continue
        if tag not in allowed:
            if tag == "xid":
                r.error(
                    srcline(el),
                    "xid",
                    "element <xid> is not used: the context id is the id attribute, "
                    "as in <domain type='vserver' id='123'>",
                )
            elif tag == "scheduler":
                r.error(
                    srcline(el),
                    "scheduler",
                    "element <scheduler> belongs to type='vserver': allowed in type='lxc' "
                    f"as <{VSV_PREFIX}:scheduler> inside <metadata>",
                )
            else:
                r.unsupported(el, "", allowed)
            continue
        if tag in seen and tag != "metadata" and tag != "seclabel":
            r.duplicate(el, tag)
            continue
        seen.add(tag)
        line = srcline(el) or r.root_line
        # The branches go from the elements most documents have to the rarer ones.
        if tag == "name":
            name = r.leaf(el, tag, _NONE)
            lines[("name",)] = line
        elif tag in _LIFECYCLE_TAGS:
            action = r.choice(el, tag, r.leaf(el, tag, _NONE).strip(), _LIFECYCLE)
            if action is not None:
                fields[tag] = action
            lines[(tag,)] = line
        elif tag == "os":
            fields["os"] = _read_os(r, el)
        elif tag == "devices":
            _read_devices(r, el, filesystems, interfaces, consoles, fields)
        elif tag == "metadata":
            if "metadata" in fields:
                r.duplicate(el, tag)
                continue
            sched_meta = _read_metadata(r, el, fields)
        elif tag in _MEMORY_KEYS:
            key = _MEMORY_KEYS[tag]
            fields[key] = _scaled(r, el, tag, r.leaf(el, tag, _UNIT_ATTR), el.get("unit"))
            lines[(key,)] = line
        elif tag == "scheduler":
            lines[("scheduler",)] = line
            sched_top = _read_scheduler(r, el, "scheduler", "cpu")
        elif tag == "memtune":
            fields["memtune"] = _read_memtune(r, el)
        elif tag == "blkiotune":
            fields["blkiotune"] = _read_blkiotune(r, el)
        elif tag == "cputune":
            fields["cputune"] = _read_cputune(r, el)
        elif tag == "uuid":
            fields["uuid"] = read_uuid(r, el, r.leaf(el, tag, _NONE).strip())
            lines[("uuid",)] = line
        elif tag == "vcpu":
            if el.keys():  # libvirt writes placement='static'
                _read_vcpu_attrs(r, el, fields, line)
            fields["vcpu"] = r.integer(el, tag, r.text(el, tag))
            lines[("vcpu",)] = line
        elif tag == "features":
            _read_features(r, el, fields)
        elif tag == "idmap":
            fields["idmap"] = _read_idmap(r, el)
        elif tag == "resource":
            _read_resource(r, el, fields)
        elif tag == "clock":
            _read_clock(r, el, fields)
        elif tag == "seclabel":
            seen_seclabels += 1
            label = _read_seclabel(r, el, len(seclabels), seen_seclabels)
            if label is not None:
                seclabels.append(label)
        else:  # title, description
            fields[tag] = r.leaf(el, tag, _NONE)
            lines[(tag,)] = line
    if name is None:
        r.error(r.root_line, "name", "required element <name> is missing")
        name = ""
    if sched_top is not None and sched_meta is not None:
        r.error(
            lines.get(("scheduler",)),
            "scheduler",
            f"the token bucket is given twice (<scheduler> and <{VSV_PREFIX}:scheduler>): "
            "allowed once",
        )
    sched = sched_top or sched_meta
    if sched is not None:
        fields["scheduler"] = sched
    domain = Domain(
        name=name,
        filesystems=tuple(filesystems),
        interfaces=tuple(interfaces),
        consoles=tuple(consoles),
        seclabels=tuple(seclabels),
        **fields,  # type: ignore[arg-type]
    )
    r.add_model_problems(domain_problems(domain))
    r.raise_if_problems()
    return domain


_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normal_uuid(text: str) -> str | None:
    """The UUID lower-case and dashed 8-4-4-4-12, or None if ``text`` is not one."""
    if _CANONICAL_UUID.fullmatch(text):
        return text  # already in the form the supervisor writes: one match instead of the loop
    digits = text.replace("-", "").lower()
    if (
        len(digits) != 32
        or any(c not in "0123456789abcdef" for c in digits)
        or ("-" in text and [len(part) for part in text.split("-")] != [8, 4, 4, 4, 12])
    ):
        return None
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def read_uuid(r: Reader, el: etree._Element, text: str) -> str | None:
    uuid = normal_uuid(text)
    if uuid is None:
        r.bad_value(
            el,
            "uuid",
            text,
            "is not a UUID",
            "32 hex digits, optionally dashed as 8-4-4-4-12",
        )
    return uuid


def _scaled(r: Reader, el: etree._Element, where: str, text: str, unit: str | None) -> int | None:
    """A size with a libvirt unit, stored in KiB (rounded up, as libvirt does)."""
    factor = 1024
    if unit is not None:
        found = UNITS.get(unit)
        if found is None:
            r.bad_value(el, f"{where}/@unit", unit, "is not a unit", _UNIT_LIST)
            return None
        factor = found
    value = r.integer(el, where, text, lo=0)
    if value is None:
        return None
    return math.ceil(value * factor / 1024) if factor % 1024 else value * (factor // 1024)


def _read_metadata(r: Reader, el: etree._Element, fields: dict[str, object]) -> TokenBucket | None:
    fields["metadata"] = ()
    r.attrs(el, "metadata", _NONE)
    foreign: list[str] = []
    sched: TokenBucket | None = None
    seen: set[str] = set()
    for child in r.children(el, "metadata"):
        tag: str = child.tag
        if not tag.startswith(_VSV_CLARK):
            foreign.append(serialize_foreign(child))
            continue
        local = tag[len(VSV_NS) + 2 :]
        where = f"metadata/{VSV_PREFIX}:{local}"
        if local in seen:
            r.duplicate(child, where)
            continue
        seen.add(local)
        line = srcline(child) or r.root_line
        if local == "hostname":
            fields["hostname"] = r.leaf(child, where, _NONE).strip()
            r.lines[("hostname",)] = line
        elif local == "pids":
            r.leaf(child, where, _MAX_ATTR)
            fields["pids_limit"] = r.int_attr(child, where, "max")
            r.lines[("pids_limit",)] = line
        elif local == "autostart":
            r.leaf(child, where, _NONE)
            fields["autostart"] = True
        elif local == "scheduler":
            r.lines[("scheduler",)] = line
            sched = _read_scheduler(r, child, where, _VSV_CPU)
        else:
            r.error(
                line,
                where,
                f"unsupported element <{VSV_PREFIX}:{local}>: allowed <{VSV_PREFIX}:hostname>, "
                f"<{VSV_PREFIX}:pids>, <{VSV_PREFIX}:autostart>, <{VSV_PREFIX}:scheduler>",
            )
    fields["metadata"] = tuple(foreign)
    return sched


def _read_scheduler(r: Reader, el: etree._Element, where: str, cpu_tag: str) -> TokenBucket:
    r.attrs(el, where, _SCHED_ATTRS)
    cpus: list[CpuBucket] = []
    n = 0
    for child in r.children(el, where):
        if child.tag != cpu_tag:
            r.unsupported(child, where, [tag_name(el).replace("scheduler", "cpu")])
            continue
        n += 1
        i = len(cpus)
        cwhere = f"{where}/cpu[{n}]"
        if i + 1 != n:
            r.renumbered(("scheduler", "cpus", i), f"{where}/cpu[{i + 1}]", cwhere)
        r.lines[("scheduler", "cpus", i)] = srcline(child) or r.root_line
        r.leaf(child, cwhere, _CPU_ATTRS)
        cpu_id = r.int_attr(child, cwhere, "id")
        if cpu_id is None:
            r.required(child, cwhere, "id")
            continue
        cpus.append(CpuBucket(cpu=cpu_id, **_bucket(r, child, cwhere, _CPU_FIELDS)))  # type: ignore[arg-type]
    return TokenBucket(cpus=tuple(cpus), **_bucket(r, el, where, _SCHED_FIELDS))  # type: ignore[arg-type]


def _bucket(
    r: Reader, el: etree._Element, where: str, names: tuple[tuple[str, str], ...]
) -> dict[str, object]:
    """The token-bucket values ``el`` gives, by model field (absent ones are left out)."""
    given = dict(items(el))
    values: dict[str, object] = {}
    if given:
        for attr, field in names:
            value = given.get(attr)
            if value is None:
                continue
            if attr == "idle_time":
                values[field] = r.choice(el, f"{where}/@idle_time", value, YES_NO)
            else:
                values[field] = r.integer(el, f"{where}/@{attr}", value)
    return values


def _read_vcpu_attrs(r: Reader, el: etree._Element, fields: dict[str, object], line: int) -> None:
    """``<vcpu placement= cpuset= current=>``: kept; the rules refuse a cpuset (not applied)."""
    r.attrs(el, "vcpu", _VCPU_ATTRS)
    placement = el.get("placement")
    if placement == "auto":
        r.bad_value(
            el,
            "vcpu/@placement",
            placement,
            "is not supported (automatic placement asks numad for a cpuset: give cpuset= instead)",
            "static",
        )
    elif placement is not None:
        fields["vcpu_placement"] = r.choice(el, "vcpu/@placement", placement, _STATIC)
        r.lines[("vcpu_placement",)] = line
    current = r.int_attr(el, "vcpu", "current")
    if current is not None:
        fields["vcpu_current"] = current
        r.lines[("vcpu_current",)] = line
    cpuset = el.get("cpuset")
    if cpuset is not None:
        fields["cpuset"] = cpuset
        r.lines[("cpuset",)] = line


def _read_shared_namespaces(r: Reader, el: etree._Element) -> tuple[SharedNamespace, ...]:
    """``<lxc:namespace>``: sharenet, shareipc, shareuts, each ``type='name'`` (another guest)
    or, for the network, ``type='netns'``. ``type='pid'`` (whatever process that is) is refused:
    the supervisor joins only namespaces it can name as a guest or a named netns."""
    where = "lxc:namespace"
    r.attrs(el, where, _NONE)
    shares: list[SharedNamespace] = []
    seen: set[str] = set()
    for child in r.children(el, where):
        kind = _SHARE_TAGS.get(child.tag)
        cwhere = f"{where}/{tag_name(child)}"
        if kind is None:
            r.unsupported(child, where, ["lxc:sharenet", "lxc:shareipc", "lxc:shareuts"])
            continue
        if kind in seen:
            r.duplicate(child, cwhere)
            continue
        seen.add(kind)
        r.leaf(child, cwhere, _SHARE_ATTRS)
        stype = r.required(child, cwhere, "type")
        value = r.required(child, cwhere, "value")
        allowed = ("name", "netns") if kind == "net" else ("name",)
        if stype is not None and stype not in allowed:
            why = (
                "is not supported (a process's namespace, whatever process the pid is then)"
                if stype == "pid"
                else "is not supported"
            )
            r.bad_value(child, f"{cwhere}/@type", stype, why, ", ".join(allowed))
            continue
        if stype is None or value is None:
            continue
        r.lines[("shared_namespaces", len(shares))] = srcline(child) or r.root_line
        shares.append(
            SharedNamespace(
                kind=cast("Literal['net', 'ipc', 'uts']", kind),
                type=cast("Literal['name', 'netns']", stype),
                value=value,
            )
        )
    return tuple(shares)


def _read_clock(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    """``<clock offset='utc'/>``, what libvirt writes into every LXC domain; nothing else."""
    r.attrs(el, "clock", _OFFSET_ATTR)
    r.lines[("clock_offset",)] = srcline(el) or r.root_line
    for child in r.children(el, "clock"):
        name = tag_name(child)
        r.error(
            srcline(child),
            f"clock/{name}",
            f"unsupported element <{name}>: allowed none (a container has the host's clock; "
            "the timer devices libvirt's LXC driver adds are not in the guest's fixed /dev)",
        )
    offset = r.required(el, "clock", "offset")
    if offset is None:
        return
    if offset != "utc":
        r.bad_value(
            el,
            "clock/@offset",
            offset,
            "is not supported (a container has the host's clock)",
            "utc",
        )
        return
    fields["clock_offset"] = "utc"


def _read_seclabel(r: Reader, el: etree._Element, i: int, n: int) -> SecLabel | None:
    """A ``<seclabel>`` (the ``n``-th, ``i`` kept before it): only ``type='none'``."""
    where = f"seclabel[{n}]"
    if i + 1 != n:
        r.renumbered(("seclabels", i), f"seclabel[{i + 1}]", where)
    r.lines[("seclabels", i)] = srcline(el) or r.root_line
    r.attrs(el, where, _SECLABEL_ATTRS)
    for child in r.children(el, where):
        name = tag_name(child)
        r.error(
            srcline(child),
            f"{where}/{name}",
            f"unsupported element <{name}>: allowed none (a seclabel of type='none' has no label)",
        )
    ltype = el.get("type")
    if ltype != "none":
        r.error(
            srcline(el),
            f"{where}/@type",
            (
                f"value '{ltype}' is not supported"
                if ltype is not None
                else "required attribute is missing (without it a label is dynamic)"
            )
            + ": allowed none (no Linux security module is supported yet)",
        )
        return None
    return SecLabel(
        model=el.get("model"),
        relabel=cast("bool | None", r.choice_attr(el, where, "relabel", _NO)),
    )


def _read_alias(r: Reader, el: etree._Element, where: str) -> str | None:
    """``<alias name=>`` of a device (kept)."""
    r.leaf(el, where, _NAME_ATTR)
    return r.required(el, where, "name")


def _read_resource(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    r.attrs(el, "resource", _NONE)
    for child in r.children(el, "resource"):
        if child.tag != "partition":
            r.unsupported(child, "resource", ["partition"])
            continue
        r.attrs(child, "resource/partition", _NONE)
        fields["partition"] = r.text(child, "resource/partition").strip()
        r.lines[("partition",)] = srcline(child) or r.root_line


def _read_cputune(r: Reader, el: etree._Element) -> CpuTune:
    r.attrs(el, "cputune", _NONE)
    values: dict[str, int | None] = {}
    for child in r.children(el, "cputune"):
        tag: str = child.tag
        if tag not in ("shares", "period", "quota"):
            r.unsupported(child, "cputune", ["shares", "period", "quota"])
            continue
        where = f"cputune/{tag}"
        if tag in values:
            r.duplicate(child, where)
        values[tag] = r.integer(child, where, r.leaf(child, where, _NONE))
        r.lines[("cputune", tag)] = srcline(child) or r.root_line
    return CpuTune(**values)


_BLKIO_DEVICE_CHILDREN: Final = ("path", "weight", *BLKIO_THROTTLES)


def _read_blkiotune(r: Reader, el: etree._Element) -> BlkioTune:
    """``<blkiotune>``: a weight and ``<device>`` entries (numbered as in the document)."""
    r.attrs(el, "blkiotune", _NONE)
    r.lines[("blkiotune",)] = srcline(el) or r.root_line
    weight: int | None = None
    devices: list[BlkioDevice] = []
    n = 0
    for child in r.children(el, "blkiotune"):
        tag: str = child.tag
        line = srcline(child) or r.root_line
        if tag == "weight":
            if weight is not None:
                r.duplicate(child, "blkiotune/weight")
            weight = r.integer(child, "blkiotune/weight", r.leaf(child, "blkiotune/weight", _NONE))
            r.lines[("blkiotune", "weight")] = line
            continue
        if tag != "device":
            r.unsupported(child, "blkiotune", ["weight", "device"])
            continue
        n += 1
        i = len(devices)
        where = f"blkiotune/device[{n}]"
        if i + 1 != n:
            r.renumbered(("blkiotune", "devices", i), f"blkiotune/device[{i + 1}]", where)
        key: Key = ("blkiotune", "devices", i)
        r.lines[key] = line
        r.attrs(child, where, _NONE)
        values: dict[str, object] = {}
        for leaf in r.children(child, where):
            ltag: str = leaf.tag
            lwhere = f"{where}/{tag_name(leaf)}"
            if ltag not in _BLKIO_DEVICE_CHILDREN:
                r.unsupported(leaf, where, _BLKIO_DEVICE_CHILDREN)
                continue
            if ltag in values:
                r.duplicate(leaf, lwhere)
                continue
            text = r.leaf(leaf, lwhere, _NONE)
            values[ltag] = text.strip() if ltag == "path" else r.integer(leaf, lwhere, text)
            r.lines[(*key, ltag)] = srcline(leaf) or r.root_line
        if "path" not in values:
            r.error(line, f"{where}/path", "required element <path> is missing")
            continue
        devices.append(BlkioDevice(**values))  # type: ignore[arg-type]
    return BlkioTune(weight=weight, devices=tuple(devices))


def _read_memtune(r: Reader, el: etree._Element) -> MemTune:
    r.attrs(el, "memtune", _NONE)
    values: dict[str, int | None] = {}
    names = ("hard_limit", "soft_limit", "swap_hard_limit")
    for child in r.children(el, "memtune"):
        tag: str = child.tag
        if tag not in names:
            r.unsupported(child, "memtune", names)
            continue
        where = f"memtune/{tag}"
        key = f"{tag}_kib"
        if key in values:
            r.duplicate(child, where)
        values[key] = _scaled(r, child, where, r.leaf(child, where, _UNIT_ATTR), child.get("unit"))
        r.lines[("memtune", key)] = srcline(child) or r.root_line
    return MemTune(**values)


_OS_CHILDREN: Final = ("type", "init", "initarg", "initenv", "initdir", "inituser", "initgroup")
#: The path of each child of ``<os>`` in messages, made once.
_OS_WHERE: Final = {tag: f"os/{tag}" for tag in _OS_CHILDREN}


def _read_os(r: Reader, el: etree._Element) -> OsSpec:
    r.attrs(el, "os", _NONE)
    r.lines[("os",)] = srcline(el) or r.root_line
    init: str | None = None
    args: list[str] = []
    env: list[tuple[str, str]] = []
    single: dict[str, str] = {}
    have_type = False
    arch: str | None = None
    for child in r.children(el, "os"):
        tag: str = child.tag
        where = _OS_WHERE.get(tag) or f"os/{tag_name(child)}"
        line = srcline(child) or r.root_line
        if tag == "initarg":
            r.lines[("os", "initargs", len(args))] = line
            args.append(r.leaf(child, where, _NONE))
        elif tag == "type":
            value = r.leaf(child, where, _ARCH_ATTR).strip()
            if value != "exe":
                r.bad_value(child, where, value, "is not supported for containers", "exe")
            have_type = True
            arch = child.get("arch")
            if arch is not None:
                r.lines[("os", "arch")] = line
        elif tag == "init":
            r.attrs(child, where, _NONE)
            if init is not None:
                r.duplicate(child, where)
            init = r.text(child, where)
            r.lines[("os", "init")] = line
        elif tag == "initenv":
            r.attrs(child, where, _NAME_ATTR)
            name = r.required(child, where, "name") or ""
            r.lines[("os", "initenv", len(env))] = line
            env.append((name, r.text(child, where)))
        elif tag in ("initdir", "inituser", "initgroup"):
            r.attrs(child, where, _NONE)
            if tag in single:
                r.duplicate(child, where)
            single[tag] = r.text(child, where)
            r.lines[("os", tag)] = line
        else:
            r.unsupported(child, "os", _OS_CHILDREN)
    if not have_type:
        r.error(srcline(el), "os/type", "required element <type>exe</type> is missing")
    return OsSpec(
        init="/sbin/init" if init is None else init,
        initargs=tuple(args),
        initenv=tuple(env),
        initdir=single.get("initdir"),
        inituser=single.get("inituser"),
        initgroup=single.get("initgroup"),
        arch=arch,
    )


def _read_idmap(r: Reader, el: etree._Element) -> tuple[IdMapEntry, ...]:
    r.attrs(el, "idmap", _NONE)
    entries: list[IdMapEntry] = []
    given = {"uid": 0, "gid": 0}  # entries of each kind in the document so far
    kept = {"uid": 0, "gid": 0}  # and in the model
    for child in r.children(el, "idmap"):
        tag = child.tag
        if tag not in ("uid", "gid"):
            r.unsupported(child, "idmap", ["uid", "gid"])
            continue
        n = given[tag] = given[tag] + 1
        where = f"idmap/{tag}[{n}]"
        if kept[tag] + 1 != n:
            r.renumbered(("idmap", len(entries)), f"idmap/{tag}[{kept[tag] + 1}]", where)
        r.attrs(child, where, _IDMAP_ATTRS)
        r.text(child, where)
        values = [r.int_attr(child, where, a) for a in ("start", "target", "count")]
        for a, v in zip(("start", "target", "count"), values, strict=True):
            if v is None and child.get(a) is None:
                r.required(child, where, a)
        start, target, count = values
        if start is None or target is None or count is None:
            continue
        r.lines[("idmap", len(entries))] = srcline(child) or r.root_line
        kept[tag] += 1
        entries.append(
            IdMapEntry(
                kind=cast(Literal["uid", "gid"], tag), start=start, target=target, count=count
            )
        )
    return tuple(entries)


def _read_features(r: Reader, el: etree._Element, fields: dict[str, object]) -> None:
    r.attrs(el, "features", _NONE)
    for child in r.children(el, "features"):
        tag = child.tag
        where = f"features/{tag_name(child)}"
        if tag == "privnet":
            r.attrs(child, where, _NONE)
            r.text(child, where)
            fields["privnet"] = True
        elif tag == "capabilities":
            r.attrs(child, where, _POLICY_ATTR)
            r.lines[("capabilities",)] = srcline(child) or r.root_line
            policy = r.choice(
                child,
                f"{where}/@policy",
                r.required(child, where, "policy"),
                _POLICIES,
            )
            caps: list[tuple[str, bool]] = []
            for cap in r.children(child, where):
                cname = tag_name(cap)
                cwhere = f"{where}/{cname}"
                if cname not in CAPABILITY_NAMES:
                    r.error(
                        srcline(cap),
                        cwhere,
                        f"unsupported capability <{cname}>: allowed "
                        + ", ".join(sorted(CAPABILITY_NAMES)),
                    )
                    continue
                r.attrs(cap, cwhere, _STATE_ATTR)
                r.text(cap, cwhere)
                state = r.choice(cap, f"{cwhere}/@state", r.required(cap, cwhere, "state"), ON_OFF)
                if state is not None:
                    r.lines[("capabilities", "caps", len(caps))] = srcline(cap) or r.root_line
                    caps.append((cname, bool(state)))
            fields["capabilities"] = Capabilities(
                policy=cast(CapsPolicy, policy) if policy is not None else CapsPolicy.DEFAULT,
                caps=tuple(caps),
            )
        else:
            r.unsupported(child, "features", ["privnet", "capabilities"])


def _read_devices(
    r: Reader,
    el: etree._Element,
    filesystems: list[Filesystem],
    interfaces: list[Interface],
    consoles: list[Console],
    fields: dict[str, object],
) -> None:
    """The devices, each numbered in messages by its position among its kind in the document."""
    r.attrs(el, "devices", _NONE)
    given = {"filesystem": 0, "interface": 0, "console": 0}
    for child in r.children(el, "devices"):
        tag = child.tag
        if tag == "filesystem":
            n = given[tag] = given[tag] + 1
            fs = _read_filesystem(r, child, len(filesystems), n)
            if fs is not None:
                filesystems.append(fs)
        elif tag == "interface":
            n = given[tag] = given[tag] + 1
            iface = _read_interface(r, child, len(interfaces), n)
            if iface is not None:
                interfaces.append(iface)
        elif tag == "console":
            n = given[tag] = given[tag] + 1
            console = _read_console(r, child, len(consoles), n)
            if console is not None:
                consoles.append(console)
        elif tag == "emulator":
            # libvirt's controller binary (libvirt_lxc): kept so dumpxml gives it back, not used
            if "emulator" in fields:
                r.duplicate(child, "devices/emulator")
                continue
            fields["emulator"] = r.leaf(child, "devices/emulator", _NONE).strip()
            r.lines[("emulator",)] = srcline(child) or r.root_line
        else:
            r.unsupported(child, "devices", _DEVICES)


def _numbered(r: Reader, field: str, tag: str, i: int, n: int) -> str:
    """The path of the ``n``-th ``<tag>`` of ``<devices>``, which is the model's ``i``-th.

    They differ when an earlier one was refused (the model does not hold it): the reader then
    tells :class:`Reader` so that the rules' messages name the element the user wrote.
    """
    where = f"devices/{tag}[{n}]"
    if i + 1 != n:
        r.renumbered((field, i), f"devices/{tag}[{i + 1}]", where)
    return where


def _read_console(r: Reader, el: etree._Element, i: int, n: int) -> Console | None:
    """``<console type='pty'>`` as libvirt writes it (kept; the guest's output goes to its log).

    A running guest's document also names the pty (``tty=``, ``<source path=>``) and an
    ``<alias>``; they are kept as written.
    """
    where = _numbered(r, "consoles", "console", i, n)
    key: Key = ("consoles", i)
    line = srcline(el) or r.root_line
    r.lines[key] = line
    r.attrs(el, where, _CONSOLE_ATTRS)
    ctype = el.get("type")
    if ctype != "pty":
        r.error(
            line,
            f"{where}/@type",
            (
                f"value '{quoted(ctype)}' is not supported"
                if ctype is not None
                else "required attribute is missing"
            )
            + ": allowed pty",
        )
        return None
    if el.get("tty") is not None:
        r.lines[(*key, "tty")] = line
    values: dict[str, object] = {"tty": el.get("tty")}
    seen: set[str] = set()
    for child in r.children(el, where):
        tag: str = child.tag
        cwhere = f"{where}/{tag_name(child)}"
        cline = srcline(child) or r.root_line
        if tag not in _CONSOLE_CHILDREN:
            r.unsupported(child, where, _CONSOLE_CHILDREN)
            continue
        if tag in seen:
            r.duplicate(child, cwhere)
            continue
        seen.add(tag)
        if tag == "source":
            r.leaf(child, cwhere, _PATH_ATTR)
            values["source_path"] = child.get("path")
            r.lines[(*key, "source_path")] = cline
        elif tag == "target":
            r.leaf(child, cwhere, _CONSOLE_TARGET_ATTRS)
            values["target_type"] = r.choice_attr(child, cwhere, "type", _LXC)
            values["target_port"] = r.int_attr(child, cwhere, "port")
            r.lines[(*key, "target_port")] = cline
        else:  # alias
            values["alias"] = _read_alias(r, child, cwhere)
            r.lines[(*key, "alias")] = cline
    return Console(**values)  # type: ignore[arg-type]


#: filesystem type -> the attribute of ``<source>`` that names what is mounted
_FS_SOURCE: Final = {"mount": "dir", "file": "file", "block": "dev"}
_FS_SOURCE_ATTRS: Final = {fstype: frozenset({attr}) for fstype, attr in _FS_SOURCE.items()}
_FS_TYPES: Final = "mount, ram, file, block"
_DRIVER_ATTRS: Final = frozenset({"type", "format"})
_LOOP: Final[dict[str, object]] = {"loop": "loop"}
_RAW: Final[dict[str, object]] = {"raw": "raw"}


def _read_filesystem(r: Reader, el: etree._Element, i: int, n: int) -> Filesystem | None:
    where = _numbered(r, "filesystems", "filesystem", i, n)
    r.attrs(el, where, _FS_ATTRS)
    r.lines[("filesystems", i)] = srcline(el) or r.root_line
    fstype = el.get("type", "mount")
    if fstype not in ("mount", "ram", "file", "block"):
        r.bad_value(el, f"{where}/@type", fstype, "is not supported", _FS_TYPES)
        return None
    mode = el.get("accessmode")
    if mode is not None and mode != "passthrough":
        r.bad_value(el, f"{where}/@accessmode", mode, "is not supported", "passthrough")
        mode = None
    source: str | None = None
    usage: int | None = None
    target: str | None = None
    alias: str | None = None
    driver: dict[str, object] = {}
    readonly = False
    for child in r.children(el, where):
        tag: str = child.tag
        cwhere = f"{where}/{tag_name(child)}"
        line = srcline(child) or r.root_line
        if tag == "source":
            r.text(child, cwhere)
            if fstype == "ram":
                r.attrs(child, cwhere, _USAGE_ATTRS)
                text = r.required(child, cwhere, "usage")
                if text is not None:
                    usage = _scaled(r, child, f"{cwhere}/@usage", text, child.get("units"))
            else:
                r.attrs(child, cwhere, _FS_SOURCE_ATTRS[fstype])
                source = r.required(child, cwhere, _FS_SOURCE[fstype])
            r.lines[("filesystems", i, "source")] = line
            r.lines[("filesystems", i, "usage_kib")] = line
        elif tag == "target":
            r.leaf(child, cwhere, _DIR_ATTR)
            target = r.required(child, cwhere, "dir")
            r.lines[("filesystems", i, "target")] = line
        elif tag == "readonly":
            r.leaf(child, cwhere, _NONE)
            readonly = True
        elif tag == "alias":
            alias = _read_alias(r, child, cwhere)
            r.lines[("filesystems", i, "alias")] = line
        elif tag == "driver" and fstype == "file":
            # libvirt's loop driver for an image, whose only format it takes is raw (qcow2
            # and the others need qemu-nbd: not supported)
            r.leaf(child, cwhere, _DRIVER_ATTRS)
            driver["driver_type"] = r.choice_attr(child, cwhere, "type", _LOOP)
            driver["driver_format"] = r.choice_attr(child, cwhere, "format", _RAW)
        else:
            r.unsupported(child, where, _FS_CHILDREN_FILE if fstype == "file" else _FS_CHILDREN)
    if target is None:
        r.error(srcline(el), f"{where}/target", "required element <target dir=...> is missing")
        return None
    if fstype != "ram" and source is None:
        r.error(
            srcline(el),
            f"{where}/source",
            f"required element <source {_FS_SOURCE[fstype]}=...> is missing",
        )
        return None
    if fstype == "ram" and usage is None:
        return None
    return Filesystem(
        source=source or "",
        target=target,
        type=cast("FilesystemType", fstype),
        readonly=readonly,
        usage_kib=usage,
        accessmode=cast("Literal['passthrough'] | None", mode),
        alias=alias,
        **driver,  # type: ignore[arg-type]
    )


def _read_interface(r: Reader, el: etree._Element, i: int, n: int) -> Interface | None:
    where = _numbered(r, "interfaces", "interface", i, n)
    key = ("interfaces", i)
    r.attrs(el, where, _TYPE_ATTR)
    r.lines[key] = srcline(el) or r.root_line
    itype = el.get("type")
    if itype not in ("network", "bridge", "ethernet", "vserver"):
        r.bad_value(
            el, f"{where}/@type", itype, "is not supported", "network, bridge, ethernet, vserver"
        )
        return None
    fields: dict[str, object] = {}
    ips: list[IpAddress] = []
    routes: list[Route] = []
    seen: set[str] = set()
    source_attr = _SOURCE_ATTR.get(itype)
    for child in r.children(el, where):
        tag: str = child.tag
        cwhere = f"{where}/{tag_name(child)}"
        line = srcline(child) or r.root_line
        if tag not in _IFACE_CHILDREN:
            r.unsupported(child, where, _IFACE_CHILDREN)
            continue
        if tag in seen and tag not in ("ip", "route"):
            r.duplicate(child, cwhere)
            continue
        seen.add(tag)
        if tag != "filterref":  # whose children (<parameter>) are reported below
            r.text(child, cwhere)
        if tag == "source":
            if source_attr is None:
                r.error(line, cwhere, "element <source> is not used by type='ethernet'")
                continue
            r.attrs(child, cwhere, _SOURCE_ATTRS[itype])
            fields["source"] = r.required(child, cwhere, source_attr)
            r.lines[(*key, "source")] = line
            if itype == "network":
                # libvirt's live XML: the network's bridge and libvirt's port for the NIC
                for attr, field in (("bridge", "source_bridge"), ("portid", "portid")):
                    value = child.get(attr)
                    if value is not None:
                        fields[field] = value
                        r.lines[(*key, field)] = line
        elif tag == "mac":
            r.attrs(child, cwhere, _ADDRESS_ATTR)
            mac = r.required(child, cwhere, "address")
            fields["mac"] = mac.lower() if mac is not None else None
            r.lines[(*key, "mac")] = line
        elif tag in ("target", "guest"):
            r.attrs(child, cwhere, _DEV_ATTR)
            fields[f"{tag}_dev"] = r.required(child, cwhere, "dev")
            r.lines[(*key, f"{tag}_dev")] = line
        elif tag == "mtu":
            r.attrs(child, cwhere, _SIZE_ATTR)
            fields["mtu"] = r.integer(child, f"{cwhere}/@size", r.required(child, cwhere, "size"))
            r.lines[(*key, "mtu")] = line
        elif tag == "filterref":
            # libvirt's nwfilter reference; only the filters the supervisor implements, and no
            # parameters (the guest's addresses are known without them): anything else would
            # silently mean less filtering than the document asks for
            r.attrs(child, cwhere, _FILTER_ATTR)
            for param in r.children(child, cwhere):
                r.error(
                    srcline(param),
                    f"{cwhere}/{tag_name(param)}",
                    "filter parameters are not supported: the guest's addresses are its "
                    "<ip>, its reservation and its DHCP leases",
                )
            if itype not in _FILTERED_TYPES:
                r.error(line, cwhere, f"element <filterref> is not used by type='{itype}'")
                continue
            fields["filterref"] = r.choice(
                child, f"{cwhere}/@filter", r.required(child, cwhere, "filter"), _FILTERS
            )
            r.lines[(*key, "filterref")] = line
        elif tag == "alias":
            fields["alias"] = _read_alias(r, child, cwhere)
            r.lines[(*key, "alias")] = line
        elif tag == "link":
            r.attrs(child, cwhere, _STATE_ATTR)
            fields["link_up"] = r.choice(
                child,
                f"{cwhere}/@state",
                r.required(child, cwhere, "state"),
                _UP_DOWN,
            )
        elif tag == "ip":
            r.attrs(child, cwhere, _IP_ATTRS)
            address = r.required(child, cwhere, "address")
            if address is None:
                continue
            r.lines[(*key, "ips", len(ips))] = line
            ips.append(
                IpAddress(
                    address=canonical_ip(address),
                    prefix=r.int_attr(child, cwhere, "prefix"),
                    family=cast(
                        "Literal['ipv4', 'ipv6'] | None",
                        r.choice_attr(child, cwhere, "family", _FAMILIES),
                    ),
                )
            )
        else:  # route
            route = read_route(r, child, cwhere)
            if route is not None:
                r.lines[(*key, "routes", len(routes))] = line
                routes.append(route)
    if itype == "vserver":
        r.lines[(*key, "type")] = r.lines[key]
    return Interface(
        type=cast("Literal['network', 'bridge', 'ethernet', 'vserver']", itype),
        ips=tuple(ips),
        routes=tuple(routes),
        **fields,  # type: ignore[arg-type]
    )


def _valid_ip(text: str) -> bool:
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str:
    """The address as :mod:`ipaddress` prints it; left alone when invalid (validation says so).

    Cached because printing an address costs more than parsing it, and a host's documents keep
    naming the same few addresses.
    """
    try:
        return str(parse_ip(text.strip()))
    except ValueError:
        return text


def natural_prefix(address: str) -> int | None:
    """The prefix libvirt infers for an address given without prefix or netmask.

    IPv4: 0 for 0.0.0.0 (a default route), else the address's class (A /8, B /16, C /24; None
    for class D and E, which libvirt refuses). IPv6: 0 for ``::``, else 64. None for an invalid
    address (validation reports it).
    """
    try:
        ip = parse_ip(address)
    except ValueError:
        return None
    if ip.is_unspecified:
        return 0
    if ip.version == 6:
        return 64
    first = int(ip) >> 24
    if first < 0x80:
        return 8
    if first < 0xC0:
        return 16
    if first < 0xE0:
        return 24
    return None


def read_route(r: Reader, el: etree._Element, where: str, *, metric: bool = False) -> Route | None:
    """A ``<route>`` (shared by domains and networks); netmask is accepted and stored as prefix.

    Without prefix or netmask (or with prefix='0', which libvirt reads the same way) the prefix
    is the one libvirt infers (:func:`natural_prefix`): ``address='0.0.0.0'`` is a default route,
    and the inferred prefix is stored, so the document written back says what is applied.
    """
    r.attrs(el, where, _ROUTE_ATTRS_METRIC if metric else _ROUTE_ATTRS)
    address = r.required(el, where, "address")
    gateway = r.required(el, where, "gateway")
    prefix = read_prefix(r, el, where)
    route_metric = r.int_attr(el, where, "metric") if metric else None
    if address is None or gateway is None:
        return None
    address = canonical_ip(address)
    if not prefix:
        prefix = natural_prefix(address)
        if prefix is None:
            if _valid_ip(address):
                r.error(
                    srcline(el),
                    f"{where}/@prefix",
                    f"no prefix can be inferred for {address} (class D or E): "
                    "allowed a prefix or netmask attribute",
                )
            prefix = 32  # a placeholder the rules accept: the problem above is the one to tell
    return Route(
        address=address,
        prefix=prefix,
        gateway=canonical_ip(gateway),
        family=cast(
            "Literal['ipv4', 'ipv6'] | None",
            r.choice_attr(el, where, "family", _FAMILIES),
        ),
        metric=route_metric,
    )


def read_prefix(r: Reader, el: etree._Element, where: str) -> int | None:
    """``prefix=``, or ``netmask=`` stored as a prefix length (routes and network addresses).

    Both together is a problem; the netmask then still gives the value, so that a wrong netmask
    is reported too.
    """
    prefix = r.int_attr(el, where, "prefix")
    netmask = el.get("netmask")
    if netmask is None:
        return prefix
    if prefix is not None:
        r.error(srcline(el), f"{where}/@netmask", "netmask and prefix together: allowed one")
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        r.bad_value(
            el, f"{where}/@netmask", netmask, "is not an IPv4 netmask", "e.g. 255.255.255.0"
        )
        return None


# --- writing -------------------------------------------------------------------------------


def _kib(parent: etree._Element, tag: str, value: int) -> None:
    sub(parent, tag, str(value), unit="KiB")


def _num(value: int | None) -> str | None:
    return None if value is None else str(value)


def _set(el: etree._Element, name: str, value: str | None) -> None:
    if value is not None:
        el.set(name, value)


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _write_scheduler(parent: etree._Element, tag: str, cpu_tag: str, s: TokenBucket) -> None:
    el = etree.SubElement(parent, tag)
    _set(el, "fill_rate1", _num(s.fill_rate))
    _set(el, "interval1", _num(s.interval))
    _set(el, "tokens", _num(s.tokens))
    _set(el, "tokens_min", _num(s.tokens_min))
    _set(el, "tokens_max", _num(s.tokens_max))
    _set(el, "prio_bias", _num(s.prio_bias))
    _set(el, "idle_time", _yes_no(s.idle_time))
    _set(el, "fill_rate2", _num(s.fill_rate2))
    _set(el, "interval2", _num(s.interval2))
    for cpu in s.cpus:
        c = etree.SubElement(el, cpu_tag)
        c.set("id", str(cpu.cpu))
        _set(c, "fill_rate1", _num(cpu.fill_rate))
        _set(c, "interval1", _num(cpu.interval))
        _set(c, "idle_time", _yes_no(cpu.idle_time))
        _set(c, "fill_rate2", _num(cpu.fill_rate2))
        _set(c, "interval2", _num(cpu.interval2))


def write_domain(d: Domain) -> str:
    """The document for ``d`` in its own dialect (deterministic order, two-space indent)."""
    root = etree.Element(
        "domain", type=d.type, nsmap={"lxc": LXC_NS} if d.shared_namespaces else None
    )
    if d.id is not None:
        root.set("id", str(d.id))
    sub(root, "name", d.name)
    if d.uuid is not None:
        sub(root, "uuid", d.uuid)
    if d.title is not None:
        sub(root, "title", d.title)
    if d.description is not None:
        sub(root, "description", d.description)
    vsv_sched = d.scheduler is not None and d.type != "vserver"
    metadata: etree._Element | None = None
    if d.metadata or d.hostname is not None or d.pids_limit is not None or d.autostart or vsv_sched:
        metadata = etree.SubElement(root, "metadata", nsmap={VSV_PREFIX: VSV_NS})
        if d.hostname is not None:
            sub(metadata, vsv("hostname"), d.hostname)
        if d.pids_limit is not None:
            sub(metadata, vsv("pids"), max=str(d.pids_limit))
        if d.autostart:
            sub(metadata, vsv("autostart"))
        if vsv_sched:
            assert d.scheduler is not None
            _write_scheduler(metadata, vsv("scheduler"), vsv("cpu"), d.scheduler)
    if d.memory_kib is not None:
        _kib(root, "memory", d.memory_kib)
    if d.current_memory_kib is not None:
        _kib(root, "currentMemory", d.current_memory_kib)
    if d.vcpu is not None:
        vcpu = sub(root, "vcpu", str(d.vcpu))
        _set(vcpu, "placement", d.vcpu_placement)
        _set(vcpu, "cpuset", d.cpuset)
        _set(vcpu, "current", _num(d.vcpu_current))
    if d.partition is not None:
        sub(sub(root, "resource"), "partition", d.partition)
    if d.cputune is not None:
        ct = sub(root, "cputune")
        if d.cputune.shares is not None:
            sub(ct, "shares", str(d.cputune.shares))
        if d.cputune.period is not None:
            sub(ct, "period", str(d.cputune.period))
        if d.cputune.quota is not None:
            # every "unlimited" (negative) quota is -1 in the model, as libvirt writes it
            sub(ct, "quota", str(d.cputune.quota))
    if d.blkiotune is not None:
        _write_blkiotune(root, d.blkiotune)
    if d.memtune is not None:
        mt = sub(root, "memtune")
        if d.memtune.hard_limit_kib is not None:
            _kib(mt, "hard_limit", d.memtune.hard_limit_kib)
        if d.memtune.soft_limit_kib is not None:
            _kib(mt, "soft_limit", d.memtune.soft_limit_kib)
        if d.memtune.swap_hard_limit_kib is not None:
            _kib(mt, "swap_hard_limit", d.memtune.swap_hard_limit_kib)
    if d.scheduler is not None and d.type == "vserver":
        _write_scheduler(root, "scheduler", "cpu", d.scheduler)
    os_el = sub(root, "os")
    os_type = sub(os_el, "type", "exe")
    _set(os_type, "arch", d.os.arch)
    sub(os_el, "init", d.os.init)
    for arg in d.os.initargs:
        sub(os_el, "initarg", arg)
    for name, value in d.os.initenv:
        sub(os_el, "initenv", value, name=name)
    if d.os.initdir is not None:
        sub(os_el, "initdir", d.os.initdir)
    if d.os.inituser is not None:
        sub(os_el, "inituser", d.os.inituser)
    if d.os.initgroup is not None:
        sub(os_el, "initgroup", d.os.initgroup)
    if d.idmap:
        idmap = sub(root, "idmap")
        for entry in d.idmap:
            sub(
                idmap,
                entry.kind,
                start=str(entry.start),
                target=str(entry.target),
                count=str(entry.count),
            )
    if d.privnet or d.capabilities is not None:
        features = sub(root, "features")
        if d.privnet:
            sub(features, "privnet")
        if d.capabilities is not None:
            caps = sub(features, "capabilities", policy=str(d.capabilities.policy))
            for cap, on in d.capabilities.caps:
                sub(caps, cap, state="on" if on else "off")
    if d.clock_offset is not None:
        sub(root, "clock", offset=d.clock_offset)
    sub(root, "on_poweroff", d.on_poweroff)
    sub(root, "on_reboot", d.on_reboot)
    sub(root, "on_crash", d.on_crash)
    if d.filesystems or d.interfaces or d.consoles or d.emulator is not None:
        devices = sub(root, "devices")
        if d.emulator is not None:
            sub(devices, "emulator", d.emulator)
        for fs in d.filesystems:
            _write_filesystem(devices, fs)
        for iface in d.interfaces:
            _write_interface(devices, iface)
        for console in d.consoles:
            _write_console(devices, console)
    for label in d.seclabels:
        sel = sub(root, "seclabel", type=label.type)
        _set(sel, "model", label.model)
        _set(sel, "relabel", _yes_no(label.relabel))
    if d.shared_namespaces:
        ns_el = sub(root, f"{{{LXC_NS}}}namespace")
        for share in d.shared_namespaces:
            sub(ns_el, f"{{{LXC_NS}}}share{share.kind}", type=share.type, value=share.value)
    return finish(root, metadata, d.metadata)


def _write_blkiotune(root: etree._Element, bt: BlkioTune) -> None:
    el = sub(root, "blkiotune")
    if bt.weight is not None:
        sub(el, "weight", str(bt.weight))
    for dev in bt.devices:
        dev_el = sub(el, "device")
        sub(dev_el, "path", dev.path)
        if dev.weight is not None:
            sub(dev_el, "weight", str(dev.weight))
        for field in BLKIO_THROTTLES:
            value = getattr(dev, field)
            if value is not None:
                sub(dev_el, field, str(value))


def _write_filesystem(devices: etree._Element, fs: Filesystem) -> None:
    el = sub(devices, "filesystem", type=fs.type)
    _set(el, "accessmode", fs.accessmode)
    if fs.driver_type is not None or fs.driver_format is not None:
        driver = sub(el, "driver")
        _set(driver, "type", fs.driver_type)
        _set(driver, "format", fs.driver_format)
    if fs.type == "ram":
        src = sub(el, "source", usage=str(fs.usage_kib))
        src.set("units", "KiB")
    else:
        sub(el, "source", **{_FS_SOURCE.get(fs.type, "dir"): fs.source})
    sub(el, "target", dir=fs.target)
    if fs.readonly:
        sub(el, "readonly")
    if fs.alias is not None:
        sub(el, "alias", name=fs.alias)


def _write_console(devices: etree._Element, console: Console) -> None:
    el = sub(devices, "console", type=console.type)
    _set(el, "tty", console.tty)
    if console.source_path is not None:
        sub(el, "source", path=console.source_path)
    if console.target_type is not None or console.target_port is not None:
        target = sub(el, "target")
        _set(target, "type", console.target_type)
        _set(target, "port", _num(console.target_port))
    if console.alias is not None:
        sub(el, "alias", name=console.alias)


def _write_interface(devices: etree._Element, iface: Interface) -> None:
    el = sub(devices, "interface", type=iface.type)
    attr = _SOURCE_ATTR.get(iface.type)
    if attr is not None and iface.source is not None:
        source = sub(el, "source", **{attr: iface.source})
        _set(source, "bridge", iface.source_bridge)
        _set(source, "portid", iface.portid)
    if iface.mac is not None:
        sub(el, "mac", address=iface.mac)
    if iface.target_dev is not None:
        sub(el, "target", dev=iface.target_dev)
    if iface.guest_dev is not None:
        sub(el, "guest", dev=iface.guest_dev)
    for ip in iface.ips:
        ipel = sub(el, "ip", address=ip.address)
        _set(ipel, "prefix", _num(ip.prefix))
        _set(ipel, "family", ip.family)
    for route in iface.routes:
        write_route(el, route)
    if iface.mtu is not None:
        sub(el, "mtu", size=str(iface.mtu))
    if iface.link_up is not None:
        sub(el, "link", state="up" if iface.link_up else "down")
    if iface.filterref is not None:
        sub(el, "filterref", filter=iface.filterref)
    if iface.alias is not None:
        sub(el, "alias", name=iface.alias)


def write_route(parent: etree._Element, route: Route) -> None:
    """``<route>`` as libvirt writes it (family first when given)."""
    el = etree.SubElement(parent, "route")
    _set(el, "family", route.family)
    el.set("address", route.address)
    el.set("prefix", str(route.prefix))
    el.set("gateway", route.gateway)
