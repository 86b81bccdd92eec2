"""The fast path for reading a domain: one pass over the tree, no problem reporting.

Why a second reader: the full reader (:func:`supervisor.xml.domain.read_domain`) keeps, for
everything it reads, the line and the element/attribute path a message would need, so that it can
report every problem of a document at once. That bookkeeping cost several times the parse itself,
while almost every document the supervisor reads (its own stored definitions, API calls) has no
problem at all. This reader visits each element once and builds the model directly. The moment it
meets anything the full reader would report, or anything unusual it need not handle (a repeated
element, a comment inside a value, a second token bucket, ...), it gives up and the caller runs the
full reader on the same tree.

The contract, checked by ``tests/test_xml_fast.py`` on generated and mutated documents: when
:func:`try_read_domain` returns a model, the full reader returns an equal model and no problem.
So every message still comes from the full reader alone, and the fast path can change speed only.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Final, Literal, cast

from lxml import etree

from supervisor.model import (
    Capabilities,
    CapsPolicy,
    CpuBucket,
    CpuTune,
    Domain,
    Filesystem,
    IdMapEntry,
    Interface,
    IpAddress,
    MemTune,
    OsSpec,
    Route,
    TokenBucket,
)
from supervisor.validate import CAPABILITY_NAMES, domain_problems, parse_ip
from supervisor.xml._reader import _INT, VSV_NS, serialize_foreign
from supervisor.xml.domain import UNITS, canonical_ip, normal_uuid

_Element = etree._Element
_Fields = dict[str, object]
#: ``el.items()`` typed as lxml returns it for our parser (str names and values, never bytes).
_items = cast("Callable[[_Element], list[tuple[str, str]]]", _Element.items)


class _GiveUp(Exception):
    """The fast reader leaves this document to the full reader (never escapes this module)."""


def try_read_domain(root: _Element) -> Domain | None:
    """The domain of a ``<domain>`` root, or None to say "ask the full reader".

    None is not a verdict: the document may be fine but unusual. A model is returned only when
    the document has no problem at all, the model rules of :mod:`supervisor.validate` included.
    """
    try:
        domain = _read_domain(root)
    except _GiveUp:
        return None
    if domain_problems(domain):
        return None
    return domain


# --- values --------------------------------------------------------------------------------


def _int(value: str) -> int:
    """An integer as the full reader accepts it (optional sign and blanks, ASCII digits)."""
    if value.isdigit() and value.isascii() and len(value) < 19:
        return int(value)  # the common case, without the regular expression
    if len(value) > 64 or not _INT.fullmatch(value):
        raise _GiveUp  # long numbers too: int() may refuse them (the full reader decides)
    return int(value)


def _opt_int(value: str | None) -> int | None:
    return None if value is None else _int(value)


def _need(value: str | None) -> str:
    """A required attribute's value."""
    if value is None:
        raise _GiveUp
    return value


def _choice(value: str | None, allowed: dict[str, object]) -> object:
    """``allowed[value]`` for an optional attribute; any other value is a problem."""
    if value is None:
        return None
    found = allowed.get(value, _MISSING)
    if found is _MISSING:
        raise _GiveUp
    return found


def _size_kib(text: str, unit: str | None) -> int:
    """A size with a libvirt unit, in KiB rounded up (as the full reader's ``_scaled``)."""
    factor = 1024 if unit is None else UNITS.get(unit)
    if factor is None:
        raise _GiveUp
    value = _int(text)
    if value < 0:
        raise _GiveUp
    return math.ceil(value * factor / 1024) if factor % 1024 else value * (factor // 1024)


_MISSING: Final = object()
_YES_NO: Final[dict[str, object]] = {"yes": True, "no": False}
_ON_OFF: Final[dict[str, object]] = {"on": True, "off": False}
_UP_DOWN: Final[dict[str, object]] = {"up": True, "down": False}
_FAMILIES: Final[dict[str, object]] = {"ipv4": "ipv4", "ipv6": "ipv6"}
_POLICIES: Final[dict[str, object]] = {p.value: p for p in CapsPolicy}
_LIFECYCLE: Final = frozenset(("destroy", "restart", "preserve", "rename-restart"))

# --- structure -----------------------------------------------------------------------------


def _only(el: _Element, name: str) -> str:
    """The value of the element's one attribute, which must be ``name`` (a required one)."""
    items = _items(el)
    if len(items) != 1 or items[0][0] != name:
        raise _GiveUp
    return items[0][1]


def _attrs(el: _Element, allowed: frozenset[str]) -> None:
    """Attributes only from ``allowed``."""
    keys = el.keys()
    if keys and not allowed.issuperset(keys):
        raise _GiveUp


def _leaf(el: _Element) -> str:
    """The text of an element without children (a comment in a value is left to the full reader)."""
    if len(el):
        raise _GiveUp
    return el.text or ""


def _bare(el: _Element) -> str:
    """The text of an element without attributes or children."""
    if len(el) or el.keys():
        raise _GiveUp
    return el.text or ""


def _kids(el: _Element) -> list[_Element]:
    """The children of a container without attributes."""
    if el.keys():
        raise _GiveUp
    return _children(el)


def _children(el: _Element) -> list[_Element]:
    """The children; text outside them (other than blanks) is a problem.

    Comments and PIs come back too: their tag is a function, which matches no tag any caller
    accepts, so a document with a comment inside a container goes to the full reader (which skips
    comments), and the fast path needs no check of its own.
    """
    text = el.text
    if text and not text.isspace():  # ``s.strip()`` is empty exactly when this is false
        raise _GiveUp
    children = list(el)
    for child in children:
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
    return children


# --- the document --------------------------------------------------------------------------

_ROOT_ATTRS: Final = frozenset(("type", "id"))
_PLACEMENT: Final = frozenset(("placement",))
_STATIC: Final[dict[str, object]] = {"static": "static"}
_VSV: Final = f"{{{VSV_NS}}}"
_VSV_CPU: Final = f"{_VSV}cpu"
_VSV_HOSTNAME: Final = f"{_VSV}hostname"
_VSV_PIDS: Final = f"{_VSV}pids"
_VSV_AUTOSTART: Final = f"{_VSV}autostart"
_VSV_SCHEDULER: Final = f"{_VSV}scheduler"


def _read_domain(root: _Element) -> Domain:
    _attrs(root, _ROOT_ATTRS)
    dtype = root.get("type")
    if dtype == "vserver":
        table = _TOP_VSERVER
    elif dtype == "lxc":
        table = _TOP_LXC
    else:
        raise _GiveUp
    fields: _Fields = {"type": dtype, "id": _opt_int(root.get("id"))}
    text = root.text
    if text and not text.isspace():
        raise _GiveUp
    pending = table.copy()  # each reader is taken once: a repeated element finds none
    for el in root:
        tail = el.tail
        if tail and not tail.isspace():
            raise _GiveUp
        tag: str = el.tag
        read = pending.pop(tag, None)
        if read is None:
            raise _GiveUp
        if read is _lifecycle:  # inlined: three per document
            if len(el) or el.keys():
                raise _GiveUp
            action = (el.text or "").strip()
            if action not in _LIFECYCLE:
                raise _GiveUp
            fields[tag] = action
        elif read is _name:
            if len(el) or el.keys():
                raise _GiveUp
            fields["name"] = el.text or ""
        else:
            read(el, fields)
    if "name" not in fields:
        raise _GiveUp
    return Domain(**fields)  # type: ignore[arg-type]


def _name(el: _Element, fields: _Fields) -> None:
    fields["name"] = _bare(el)


def _uuid(el: _Element, fields: _Fields) -> None:
    uuid = normal_uuid(_bare(el).strip())
    if uuid is None:
        raise _GiveUp
    fields["uuid"] = uuid


def _title(el: _Element, fields: _Fields) -> None:
    fields["title"] = _bare(el)


def _description(el: _Element, fields: _Fields) -> None:
    fields["description"] = _bare(el)


def _memory(el: _Element, fields: _Fields) -> None:
    fields["memory_kib"] = _size_kib(_leaf(el), _only(el, "unit") if el.keys() else None)


def _current_memory(el: _Element, fields: _Fields) -> None:
    fields["current_memory_kib"] = _size_kib(_leaf(el), _only(el, "unit") if el.keys() else None)


def _vcpu(el: _Element, fields: _Fields) -> None:
    _attrs(el, _PLACEMENT)
    _choice(el.get("placement"), _STATIC)
    fields["vcpu"] = _int(_leaf(el))


def _lifecycle(el: _Element, fields: _Fields) -> None:
    action = _bare(el).strip()
    if action not in _LIFECYCLE:
        raise _GiveUp
    fields[el.tag] = action


def _metadata(el: _Element, fields: _Fields) -> None:
    foreign: list[str] = []
    # Each field is set only here (the scheduler checks for itself), so a field already present
    # means a repeated element.
    text = el.text
    if el.keys() or (text and not text.isspace()):
        raise _GiveUp
    for child in el:  # _kids() inlined
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
        tag = child.tag
        if tag == _VSV_HOSTNAME and "hostname" not in fields:
            if len(child) or child.keys():
                raise _GiveUp
            fields["hostname"] = (child.text or "").strip()
        elif tag == _VSV_PIDS and "pids_limit" not in fields:
            if len(child):
                raise _GiveUp
            fields["pids_limit"] = _int(_only(child, "max")) if child.keys() else None
        elif tag == _VSV_AUTOSTART and "autostart" not in fields:
            _bare(child)
            fields["autostart"] = True
        elif tag == _VSV_SCHEDULER:
            _scheduler_into(child, fields, _VSV_CPU)
        elif type(tag) is not str or tag.startswith(_VSV):
            raise _GiveUp  # a comment, or an unknown or repeated vsv element
        else:
            foreign.append(serialize_foreign(child))
    fields["metadata"] = tuple(foreign)


def _top_scheduler(el: _Element, fields: _Fields) -> None:
    _scheduler_into(el, fields, "cpu")


def _scheduler_into(el: _Element, fields: _Fields, cpu_tag: str) -> None:
    if "scheduler" in fields:
        raise _GiveUp  # given twice: <scheduler> and <vsv:scheduler>
    cpus: list[CpuBucket] = []
    # The usual scheduler has neither children nor text: skip the loop's set-up then.
    for child in _children(el) if len(el) or el.text is not None else ():
        if child.tag != cpu_tag:
            raise _GiveUp
        _leaf(child)
        values = _bucket_attrs(child, _CPU_FIELDS)
        if "cpu" not in values:
            raise _GiveUp
        cpus.append(CpuBucket(**values))  # type: ignore[arg-type]
    fields["scheduler"] = TokenBucket(cpus=tuple(cpus), **_bucket_attrs(el, _SCHED_FIELDS))  # type: ignore[arg-type]


def _bucket_attrs(el: _Element, names: dict[str, str]) -> dict[str, object]:
    """The attributes of a token bucket by model field; an unknown one is a problem."""
    values: dict[str, object] = {}
    for name, value in _items(el):
        field = names.get(name)
        if field is None:
            raise _GiveUp
        values[field] = _choice(value, _YES_NO) if field == "idle_time" else _int(value)
    return values


_SCHED_FIELDS: Final = {
    "fill_rate1": "fill_rate",
    "interval1": "interval",
    "tokens": "tokens",
    "tokens_min": "tokens_min",
    "tokens_max": "tokens_max",
    "prio_bias": "prio_bias",
    "idle_time": "idle_time",
    "fill_rate2": "fill_rate2",
    "interval2": "interval2",
}
_CPU_FIELDS: Final = {
    "id": "cpu",
    "fill_rate1": "fill_rate",
    "interval1": "interval",
    "idle_time": "idle_time",
    "fill_rate2": "fill_rate2",
    "interval2": "interval2",
}


def _resource(el: _Element, fields: _Fields) -> None:
    kids = _kids(el)
    if len(kids) > 1:
        raise _GiveUp
    for child in kids:
        if child.tag != "partition":
            raise _GiveUp
        fields["partition"] = _bare(child).strip()


_CPUTUNE: Final = frozenset(("shares", "period", "quota"))


def _cputune(el: _Element, fields: _Fields) -> None:
    values: dict[str, int | None] = {}
    for child in _kids(el):
        tag: str = child.tag
        if tag not in _CPUTUNE or tag in values:
            raise _GiveUp
        values[tag] = _int(_bare(child))
    fields["cputune"] = CpuTune(**values)


_MEMTUNE: Final = {
    "hard_limit": "hard_limit_kib",
    "soft_limit": "soft_limit_kib",
    "swap_hard_limit": "swap_hard_limit_kib",
}


def _memtune(el: _Element, fields: _Fields) -> None:
    values: dict[str, int | None] = {}
    text = el.text
    if el.keys() or (text and not text.isspace()):
        raise _GiveUp
    for child in el:  # _kids() inlined
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
        key = _MEMTUNE.get(child.tag)
        if key is None or key in values or len(child):
            raise _GiveUp
        values[key] = _size_kib(child.text or "", _only(child, "unit") if child.keys() else None)
    fields["memtune"] = MemTune(**values)


_ARCH: Final = frozenset(("arch",))
_OS_SINGLE: Final = frozenset(("initdir", "inituser", "initgroup"))


def _os(el: _Element, fields: _Fields) -> None:
    init: str | None = None
    args: list[str] = []
    env: list[tuple[str, str]] = []
    single: dict[str, str] = {}
    have_type = False
    text = el.text
    if el.keys() or (text and not text.isspace()):
        raise _GiveUp
    for child in el:  # _kids() inlined
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
        tag = child.tag
        if tag == "initarg":
            if len(child) or child.keys():
                raise _GiveUp
            args.append(child.text or "")
        elif tag == "init":
            if init is not None or len(child) or child.keys():
                raise _GiveUp
            init = child.text or ""
        elif tag == "type":
            _attrs(child, _ARCH)
            if have_type or len(child) or (child.text or "").strip() != "exe":
                raise _GiveUp
            have_type = True
        elif tag == "initenv":
            env.append((_only(child, "name"), _leaf(child)))
        elif tag in _OS_SINGLE:
            if tag in single:
                raise _GiveUp
            single[tag] = _bare(child)
        else:
            raise _GiveUp
    if not have_type:
        raise _GiveUp
    fields["os"] = OsSpec(
        init="/sbin/init" if init is None else init,
        initargs=tuple(args),
        initenv=tuple(env),
        initdir=single.get("initdir"),
        inituser=single.get("inituser"),
        initgroup=single.get("initgroup"),
    )


_IDMAP_ATTRS: Final = frozenset(("start", "target", "count"))


def _idmap(el: _Element, fields: _Fields) -> None:
    entries: list[IdMapEntry] = []
    for child in _kids(el):
        kind = child.tag
        if kind != "uid" and kind != "gid":
            raise _GiveUp
        _attrs(child, _IDMAP_ATTRS)
        _leaf(child)
        get = child.get
        entries.append(
            IdMapEntry(
                kind=cast(Literal["uid", "gid"], kind),
                start=_int(_need(get("start"))),
                target=_int(_need(get("target"))),
                count=_int(_need(get("count"))),
            )
        )
    fields["idmap"] = tuple(entries)


_POLICY: Final = frozenset(("policy",))
_STATE: Final = frozenset(("state",))


def _features(el: _Element, fields: _Fields) -> None:
    for child in _kids(el):
        tag = child.tag
        if tag == "privnet" and "privnet" not in fields:
            _bare(child)
            fields["privnet"] = True
        elif tag == "capabilities" and "capabilities" not in fields:
            _attrs(child, _POLICY)
            policy = _choice(_need(child.get("policy")), _POLICIES)
            caps: list[tuple[str, bool]] = []
            for cap in _children(child):
                name = cap.tag
                if name not in CAPABILITY_NAMES:
                    raise _GiveUp
                _attrs(cap, _STATE)
                _leaf(cap)
                caps.append((name, bool(_choice(_need(cap.get("state")), _ON_OFF))))
            fields["capabilities"] = Capabilities(policy=cast(CapsPolicy, policy), caps=tuple(caps))
        else:
            raise _GiveUp


def _devices(el: _Element, fields: _Fields) -> None:
    filesystems: list[Filesystem] = []
    interfaces: list[Interface] = []
    text = el.text
    if el.keys() or (text and not text.isspace()):
        raise _GiveUp
    for child in el:  # _kids() inlined (as in the other hot loops): no list, one pass
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
        tag = child.tag
        if tag == "filesystem":
            filesystems.append(_filesystem(child))
        elif tag == "interface":
            interfaces.append(_interface(child))
        elif tag == "console":
            _console(child)
        else:
            raise _GiveUp
    fields["filesystems"] = tuple(filesystems)
    fields["interfaces"] = tuple(interfaces)


_CONSOLE_ATTRS: Final = frozenset(("type", "tty"))
_CONSOLE_CHILDREN: Final = frozenset(("source", "target", "alias"))


def _console(el: _Element) -> None:
    """``<console type='pty'>`` configures nothing; its children are not looked into."""
    _attrs(el, _CONSOLE_ATTRS)
    if el.get("type") != "pty":
        raise _GiveUp
    for child in _children(el):
        if child.tag not in _CONSOLE_CHILDREN:
            raise _GiveUp


_USAGE: Final = frozenset(("usage", "units"))


def _filesystem(el: _Element) -> Filesystem:
    fstype = "mount"
    for name, value in _items(el):
        if name == "type" and (value == "mount" or value == "ram"):
            fstype = value
        elif name != "accessmode" or value != "passthrough":
            raise _GiveUp
    source: str | None = None
    usage: int | None = None
    target: str | None = None
    readonly = False
    text = el.text
    if text and not text.isspace():
        raise _GiveUp
    # A value once read is never None, so "already read" needs no set of its own.
    for child in el:
        tail = child.tail
        if tail and not tail.isspace():
            raise _GiveUp
        tag = child.tag
        if tag == "source":
            if len(child) or source is not None or usage is not None:
                raise _GiveUp
            if fstype == "mount":
                source = _only(child, "dir")
            else:
                _attrs(child, _USAGE)
                usage = _size_kib(_need(child.get("usage")), child.get("units"))
        elif tag == "target":
            if len(child) or target is not None:
                raise _GiveUp
            target = _only(child, "dir")
        elif tag == "readonly" and not readonly:
            _bare(child)
            readonly = True
        else:
            raise _GiveUp
    if target is None or (source is None if fstype == "mount" else usage is None):
        raise _GiveUp
    return Filesystem(
        source=source or "",
        target=target,
        type=fstype,  # type: ignore[arg-type]
        readonly=readonly,
        usage_kib=usage,
    )


_SOURCE_ATTR: Final[dict[str, str | None]] = {
    "network": "network",
    "bridge": "bridge",
    "vserver": "dev",
    "ethernet": None,
}


def _interface(el: _Element) -> Interface:
    itype = _only(el, "type")
    if itype not in _SOURCE_ATTR:
        raise _GiveUp
    source_attr = _SOURCE_ATTR[itype]
    # Every value once read is not None, which is how a repeated element is noticed.
    source: str | None = None
    mac: str | None = None
    target_dev: str | None = None
    guest_dev: str | None = None
    mtu: int | None = None
    link_up: object = None
    ips: list[IpAddress] = []
    routes: list[Route] = []
    text = el.text
    if text and not text.isspace():
        raise _GiveUp
    for child in el:
        tail = child.tail
        if (tail and not tail.isspace()) or len(child):
            raise _GiveUp
        tag = child.tag
        if tag == "ip":
            address: str | None = None
            prefix: int | None = None
            family: object = None
            for name, value in _items(child):
                if name == "address":
                    address = canonical_ip(value)
                elif name == "prefix":
                    prefix = _int(value)
                elif name == "family":
                    family = _choice(value, _FAMILIES)
                else:
                    raise _GiveUp
            if address is None:
                raise _GiveUp
            ips.append(IpAddress(address=address, prefix=prefix, family=family))  # type: ignore[arg-type]
        elif tag == "route":
            routes.append(_route(child))
        elif tag == "source":
            items = _items(child)  # _only() inlined
            if source_attr is None or source is not None or len(items) != 1:
                raise _GiveUp
            name, source = items[0]
            if name != source_attr:
                raise _GiveUp
        elif tag == "mac" and mac is None:
            mac = _only(child, "address").lower()
        elif tag == "target" and target_dev is None:
            target_dev = _only(child, "dev")
        elif tag == "guest" and guest_dev is None:
            guest_dev = _only(child, "dev")
        elif tag == "mtu" and mtu is None:
            mtu = _int(_only(child, "size"))
        elif tag == "link" and link_up is None:
            link_up = _choice(_only(child, "state"), _UP_DOWN)
        else:
            raise _GiveUp
    return Interface(
        type=itype,  # type: ignore[arg-type]
        source=source,
        mac=mac,
        target_dev=target_dev,
        guest_dev=guest_dev,
        ips=tuple(ips),
        routes=tuple(routes),
        mtu=mtu,
        link_up=link_up,  # type: ignore[arg-type]
    )


def _route(el: _Element) -> Route:
    address: str | None = None
    gateway: str | None = None
    prefix_text: str | None = None
    netmask: str | None = None
    family_text: str | None = None
    for name, value in _items(el):
        if name == "address":
            address = value
        elif name == "gateway":
            gateway = value
        elif name == "prefix":
            prefix_text = value
        elif name == "netmask":
            netmask = value
        elif name == "family":
            family_text = value
        else:
            raise _GiveUp
    if address is None or gateway is None:
        raise _GiveUp
    address = canonical_ip(address)
    prefix = _opt_int(prefix_text)
    if netmask is not None:
        if prefix is not None:
            raise _GiveUp
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise _GiveUp from None
    if prefix is None:
        try:
            prefix = parse_ip(address).max_prefixlen
        except ValueError:
            prefix = 0
    return Route(
        address=address,
        prefix=prefix,
        gateway=canonical_ip(gateway),
        family=_choice(family_text, _FAMILIES),  # type: ignore[arg-type]
    )


_Reader = Callable[[_Element, _Fields], None]
_TOP_LXC: Final[dict[str, _Reader]] = {
    "name": _name,
    "uuid": _uuid,
    "title": _title,
    "description": _description,
    "metadata": _metadata,
    "memory": _memory,
    "currentMemory": _current_memory,
    "vcpu": _vcpu,
    "resource": _resource,
    "cputune": _cputune,
    "memtune": _memtune,
    "os": _os,
    "idmap": _idmap,
    "features": _features,
    "on_poweroff": _lifecycle,
    "on_reboot": _lifecycle,
    "on_crash": _lifecycle,
    "devices": _devices,
}
_TOP_VSERVER: Final[dict[str, _Reader]] = {**_TOP_LXC, "scheduler": _top_scheduler}
