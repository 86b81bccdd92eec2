"""``schedinfo`` parameters: names, ranges, parsing ``k=v``, and the TUNABLE change set.

libvirt's ``posix`` scheduler exposes ``cpu_shares``, ``vcpu_period`` and ``vcpu_quota``; the
token-bucket parameters of VServer sit beside them under their own names. A ``--set k=v`` is
checked here, with an error that names the parameter and its allowed range, and turned into new
model values (:class:`~supervisor.model.CpuTune`, :class:`~supervisor.model.TokenBucket`) plus the
TUNABLE event's parameters (libvirt's keys, ``cputune.shares`` ...). Pure: the subsystem decides
whether the change goes live, into the config, or both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from supervisor.errors import InvalidDocument
from supervisor.model import CpuTune, Domain, TokenBucket
from supervisor.sched.mapping import (
    DEFAULT_HZ,
    NICE_MAX,
    NICE_MIN,
    PERIOD_MAX_US,
    PERIOD_MIN_US,
    QUOTA_MAX_US,
    QUOTA_MIN_US,
    SHARES_MAX,
    SHARES_MIN,
    CpuLimits,
    Loss,
    cpus_covered,
    map_domain,
)

INT_MAX = 2**31 - 1

Value = int | bool


class InvalidParameter(InvalidDocument):
    """A ``schedinfo`` parameter name or value is not acceptable; the message says why.

    An :class:`~supervisor.errors.InvalidDocument` (the parameters are the request's document):
    the API answers 400 ``invalid-parameter`` for it, not 500, and ``problems`` holds the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__([message])


@attrs.frozen
class ParamSpec:
    """One settable parameter: where it lives in the model and what it accepts."""

    name: str
    kind: Literal["int", "bool"]
    section: Literal["cputune", "scheduler"]
    field: str
    tunable: str
    minimum: int = 0
    maximum: int = INT_MAX
    #: a value accepted besides the range (vcpu_quota's "negative = unlimited")
    negative_ok: bool = False
    doc: str = ""

    def allowed(self) -> str:
        """The allowed values in words, for error messages and help."""
        if self.kind == "bool":
            return "yes/no, true/false, on/off or 1/0"
        text = f"{self.minimum}..{self.maximum}"
        return f"a negative number (unlimited) or {text}" if self.negative_ok else text


def _spec(
    name: str, section: Literal["cputune", "scheduler"], field: str, **kw: object
) -> ParamSpec:
    tunable = f"{section}.{name}" if section == "scheduler" else f"cputune.{name}"
    if name == "cpu_shares":
        tunable = "cputune.shares"
    return ParamSpec(name=name, section=section, field=field, tunable=tunable, **kw)  # type: ignore[arg-type]


#: Every parameter ``schedinfo --set`` accepts, in display order.
PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in (
        _spec("cpu_shares", "cputune", "shares", kind="int", minimum=SHARES_MIN,
              maximum=SHARES_MAX, doc="relative weight (1024 = default)"),
        _spec("vcpu_period", "cputune", "period", kind="int", minimum=PERIOD_MIN_US,
              maximum=PERIOD_MAX_US, doc="CFS period in us"),
        _spec("vcpu_quota", "cputune", "quota", kind="int", minimum=QUOTA_MIN_US,
              maximum=QUOTA_MAX_US, negative_ok=True, doc="CFS quota in us per period"),
        _spec("fill_rate", "scheduler", "fill_rate", kind="int", minimum=1,
              doc="tokens added per interval"),
        _spec("interval", "scheduler", "interval", kind="int", minimum=1,
              doc="ticks between refills"),
        _spec("tokens", "scheduler", "tokens", kind="int", doc="initial tokens"),
        _spec("tokens_min", "scheduler", "tokens_min", kind="int",
              doc="tokens needed to be released after a hold"),
        _spec("tokens_max", "scheduler", "tokens_max", kind="int",
              doc="bucket size (0 = HZ)"),
        _spec("prio_bias", "scheduler", "prio_bias", kind="int", minimum=NICE_MIN,
              maximum=NICE_MAX, doc="static priority bias, nice-like"),
        _spec("idle_time", "scheduler", "idle_time", kind="bool",
              doc="lend idle CPU at fill_rate2/interval2"),
        _spec("fill_rate2", "scheduler", "fill_rate2", kind="int",
              doc="tokens added per interval2 while the host is idle"),
        _spec("interval2", "scheduler", "interval2", kind="int", minimum=1,
              doc="ticks between idle-time refills"),
    )
}  # fmt: skip

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_value(name: str, raw: str) -> Value:
    """Check one parameter's value; the error names the parameter and the allowed range."""
    spec = PARAMS.get(name)
    if spec is None:
        raise InvalidParameter(f"unknown scheduler parameter {name!r}; known: {', '.join(PARAMS)}")
    text = raw.strip()
    if spec.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise InvalidParameter(f"{name}={raw!r}: expected {spec.allowed()}")
    try:
        value = int(text, 10)
    except ValueError:
        raise InvalidParameter(
            f"{name}={raw!r}: not an integer; allowed {spec.allowed()}"
        ) from None
    if value < 0 and spec.negative_ok:
        return -1
    if not spec.minimum <= value <= spec.maximum:
        raise InvalidParameter(f"{name}={value} is out of range; allowed {spec.allowed()}")
    return value


def parse_assignment(text: str) -> tuple[str, Value]:
    """Parse one ``k=v``."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise InvalidParameter(f"{text!r}: expected NAME=VALUE, e.g. cpu_shares=512")
    name = name.strip()
    return name, parse_value(name, raw)


def parse_assignments(texts: Iterable[str]) -> dict[str, Value]:
    """Parse several ``k=v``; a parameter given twice is an error rather than last-one-wins."""
    out: dict[str, Value] = {}
    for text in texts:
        name, value = parse_assignment(text)
        if name in out:
            raise InvalidParameter(f"{name} given twice")
        out[name] = value
    return out


@attrs.frozen
class SchedUpdate:
    """New model values after ``--set``, and the TUNABLE parameters that actually changed."""

    cputune: CpuTune | None
    scheduler: TokenBucket | None
    changed: Mapping[str, Value]


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def apply_values(
    cputune: CpuTune | None, scheduler: TokenBucket | None, values: Mapping[str, Value]
) -> SchedUpdate:
    """Apply parsed values to the model; values equal to the current ones are not "changed"."""
    tune_changes: dict[str, Any] = {}
    # attrs.evolve takes each field's own type; the specs guarantee it, mypy cannot see that
    bucket_changes: dict[str, Any] = {}
    changed: dict[str, Value] = {}
    for name, value in values.items():
        spec = PARAMS.get(name)
        if spec is None:
            raise InvalidParameter(f"unknown scheduler parameter {name!r}")
        current = getattr(cputune if spec.section == "cputune" else scheduler, spec.field, None)
        if current == value and type(current) is type(value):
            continue
        (tune_changes if spec.section == "cputune" else bucket_changes)[spec.field] = value
        changed[spec.tunable] = value
    new_tune = cputune
    if tune_changes:
        new_tune = attrs.evolve(cputune or CpuTune(), **tune_changes)
    new_bucket = scheduler
    if bucket_changes:
        new_bucket = attrs.evolve(scheduler or TokenBucket(), **bucket_changes)
    return SchedUpdate(cputune=new_tune, scheduler=new_bucket, changed=changed)


def apply_to_domain(
    domain: Domain, values: Mapping[str, Value]
) -> tuple[Domain, Mapping[str, Value]]:
    """:func:`apply_values` on a domain: the new domain and the TUNABLE parameters."""
    update = apply_values(domain.cputune, domain.scheduler, values)
    new = attrs.evolve(domain, cputune=update.cputune, scheduler=update.scheduler)
    return new, update.changed


@attrs.frozen
class SchedInfo:
    """What ``vsv schedinfo NAME`` shows: parameters, what the kernel applies, and the losses."""

    params: tuple[tuple[str, str], ...]
    applied: CpuLimits
    losses: tuple[Loss, ...]
    scheduler_type: str = "posix"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the API."""
        return {
            "scheduler": self.scheduler_type,
            "params": dict(self.params),
            "applied": attrs.asdict(self.applied),
            "losses": [attrs.asdict(x) for x in self.losses],
        }

    def format(self) -> str:
        """virsh-style ``name : value`` lines, then the losses (never hidden)."""
        rows = [("Scheduler", self.scheduler_type), *self.params]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}} : {v}" for k, v in rows]
        for loss in self.losses:
            lines.append(f"lossy: {loss}")
        return "\n".join(lines)


def schedinfo(
    domain: Domain,
    *,
    hz: int = DEFAULT_HZ,
    host_cpus: int = 1,
    applied: CpuLimits | None = None,
) -> SchedInfo:
    """Parameters of a guest: libvirt's three from the applied limits, the bucket's as configured.

    ``applied`` is what the kernel reports for a running guest (live); without it the values the
    mapping would apply are shown (config).
    """
    mapping = map_domain(domain, hz=hz, host_cpus=host_cpus)
    limits = applied or mapping.limits
    params: list[tuple[str, str]] = [
        ("cpu_shares", str(limits.shares)),
        ("vcpu_period", str(limits.period_us)),
        ("vcpu_quota", "-1" if limits.quota_us is None else str(limits.quota_us)),
    ]
    bucket = domain.scheduler
    if bucket is not None:
        for spec in PARAMS.values():
            if spec.section != "scheduler":
                continue
            value = getattr(bucket, spec.field)
            params.append((spec.name, "-" if value is None else _show(value)))
        params.append(("cpus", str(cpus_covered(domain, host_cpus))))
    return SchedInfo(params=tuple(params), applied=limits, losses=mapping.losses)
