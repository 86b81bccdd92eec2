"""The OpenAPI 3.1 document of the control API, built from data and served at ``/openapi.json``.

``docs/openapi.json`` is this document written out (``python -m supervisor.api.openapi >
docs/openapi.json``); a test fails when the two differ, so the copy in the repository cannot
drift from what the server says about itself.
"""

from __future__ import annotations

import json
from typing import Any

from supervisor import __version__

_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    "description": "the domain's or network's name",
}

_SEQ = {"type": "integer", "minimum": 0, "description": "the journal's last sequence number"}

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}

_COUNT = {"type": "integer", "minimum": 0}
_CONNECTIONS = {
    "type": ["object", "null"],
    "description": "one socket's connections (null: that socket is not served)",
    "required": [
        "max_connections",
        "open",
        "peak",
        "accepted",
        "turned_away",
        "refused",
        "accept_errors",
    ],
    "properties": {
        "max_connections": {"type": "integer", "minimum": 1},
        "open": _COUNT,
        "peak": _COUNT,
        "accepted": _COUNT,
        "turned_away": _COUNT,
        "refused": _COUNT,
        "accept_errors": _COUNT,
    },
}
_API_STATISTICS = {
    "type": ["object", "null"],
    "description": "the API's connections per socket and the descriptor limit they are planned "
    "for (see docs/api.md)",
    "required": ["nofile_limit", "read_write", "read_only"],
    "properties": {
        "nofile_limit": {"type": "integer", "minimum": 1},
        "read_write": _CONNECTIONS,
        "read_only": _CONNECTIONS,
    },
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details with a stable code and the offending field.",
        "required": ["type", "title", "status", "code", "detail", "field"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {
                "type": "string",
                "enum": [
                    "bad-parameter",
                    "bad-body",
                    "invalid-document",
                    "invalid-parameter",
                    "not-found",
                    "no-route",
                    "method-not-allowed",
                    "conflict",
                    "invalid-operation",
                    "read-only",
                    "forbidden",
                    "too-large",
                    "too-many-connections",
                    "no-console",
                    "console-busy",
                    "upgrade-required",
                    "runtime-failure",
                    "internal",
                    "error",
                ],
            },
            "detail": {"type": "string"},
            "field": _NULLABLE_STR,
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "DomainStatus": {
        "type": "object",
        "required": ["name", "id", "uuid", "type", "state", "reason", "autostart"],
        "properties": {
            "name": {"type": "string"},
            "id": _NULLABLE_INT,
            "uuid": _NULLABLE_STR,
            "type": {"type": "string"},
            "state": {
                "type": "string",
                "enum": [
                    "NOSTATE",
                    "RUNNING",
                    "BLOCKED",
                    "PAUSED",
                    "SHUTDOWN",
                    "SHUTOFF",
                    "CRASHED",
                ],
            },
            "reason": {"type": "string"},
            "autostart": {"type": "boolean"},
            "init_pid": _NULLABLE_INT,
            "started_at": _NULLABLE_NUM,
            "restarts": {"type": "integer"},
            "persistent": {
                "type": "boolean",
                "description": "false for a transient domain (created with ?transient=true, or "
                "undefined while running): it is gone when it stops",
            },
        },
    },
    "Memory": {
        "type": "object",
        "description": "a domain's memory settings in KiB (null: no limit); state says whether "
        "they are the running guest's (live) or the stored definition's (config)",
        "required": [
            "state",
            "memory_kib",
            "current_memory_kib",
            "hard_limit_kib",
            "soft_limit_kib",
            "swap_hard_limit_kib",
        ],
        "properties": {
            "state": {"type": "string", "enum": ["live", "config"]},
            "memory_kib": _NULLABLE_INT,
            "current_memory_kib": _NULLABLE_INT,
            "hard_limit_kib": _NULLABLE_INT,
            "soft_limit_kib": _NULLABLE_INT,
            "swap_hard_limit_kib": _NULLABLE_INT,
        },
    },
    "DomainInfo": {
        "allOf": [
            {"$ref": "#/components/schemas/DomainStatus"},
            {
                "type": "object",
                "required": ["seq", "persistent"],
                "properties": {
                    "seq": _SEQ,
                    "title": _NULLABLE_STR,
                    "hostname": _NULLABLE_STR,
                    "memory_kib": _NULLABLE_INT,
                    "current_memory_kib": _NULLABLE_INT,
                    "vcpu": _NULLABLE_INT,
                    "on_poweroff": {"type": "string"},
                    "on_reboot": {"type": "string"},
                    "on_crash": {"type": "string"},
                    "interfaces": {"type": "integer"},
                    "persistent": {"type": "boolean"},
                    "cpu_time_ns": {
                        "type": ["integer", "null"],
                        "description": "CPU time the guest used (its cgroup's), null when it is "
                        "not running",
                    },
                    "memory_used_kib": {
                        "type": ["integer", "null"],
                        "description": "memory the guest uses now (its cgroup's), null when it "
                        "is not running",
                    },
                    "log": {
                        "type": ["string", "null"],
                        "description": "host path of the guest's stdout and stderr "
                        "(cut back beyond the daemon's --log-max-mib into the same path + .1)",
                    },
                },
            },
        ]
    },
    "DomainStats": {
        "type": "object",
        "description": "a domain's figures under libvirt's `virsh domstats` keys where libvirt "
        "has one (state.state, cpu.time, cpu.user, cpu.system in ns; balloon.current, "
        "balloon.maximum in KiB; net.count, net.N.name, net.N.rx.bytes...; block.count, "
        "block.N.name, block.N.rd.bytes...) and the supervisor's own (memory.used, memory.limit, "
        "memory.peak in bytes; pids.current, pids.limit; cpu.throttle.periods, "
        "cpu.throttle.count, cpu.throttle.time; scheduler.loan); an inactive domain has state.* "
        "(and balloon.maximum) only. See docs/api.md.",
        "required": ["name", "stats"],
        "properties": {
            "name": {"type": "string"},
            "stats": {
                "type": "object",
                "additionalProperties": {"type": ["integer", "number", "string"]},
            },
        },
    },
    "NetworkStatus": {
        "type": "object",
        "required": ["name", "uuid", "active", "autostart", "bridge"],
        "properties": {
            "name": {"type": "string"},
            "uuid": _NULLABLE_STR,
            "active": {"type": "boolean"},
            "autostart": {"type": "boolean"},
            "bridge": _NULLABLE_STR,
        },
    },
    "Lease": {
        "type": "object",
        "required": ["network", "mac", "ip", "prefix", "hostname", "expiry"],
        "properties": {
            "network": {"type": "string"},
            "mac": {"type": "string"},
            "ip": {"type": "string"},
            "prefix": {"type": "integer"},
            "hostname": _NULLABLE_STR,
            "expiry": _NULLABLE_NUM,
            "domain": _NULLABLE_STR,
        },
    },
    "Event": {
        "type": "object",
        "description": (
            "One journal record. kind 'domain' | 'network' | 'supervisor' for events; 'gap' for "
            "a range removed by retention (data.first_missing..data.last_missing, seq = "
            "last_missing); 'heartbeat' (streams only; seq = the stream's position)."
        ),
        "required": ["seq", "kind"],
        "properties": {
            "seq": {"type": "integer"},
            "kind": {"type": "string"},
            "domain": _NULLABLE_STR,
            "type": {"type": "string"},
            "detail": {"type": ["string", "null"]},
            "time": _NULLABLE_NUM,
            "data": {"type": ["object", "null"]},
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


_PROBLEM = {
    "description": "a problem (400 bad input, 403 read-only socket or a client in another pid or "
    "mount namespace, 404 unknown name, 409 wrong state or conflict, 413 body too large, 500 the "
    "kernel refused, 503 the socket has as many connections open as it may)",
    "content": {"application/problem+json": {"schema": _ref("Problem")}},
}
_XML_BODY = {
    "required": True,
    "content": {"application/xml": {"schema": {"type": "string"}}},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body of ``schema``."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    op_id: str,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {status: ok, "default": _PROBLEM},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    seq_only = _json(_obj(seq=_SEQ))
    domain_reply = _json(_obj(seq=_SEQ, domain=_ref("DomainStatus")))
    network_reply = _json(_obj(seq=_SEQ, network=_ref("NetworkStatus")))
    xml_reply = {
        "description": "the document",
        "content": {"application/xml": {"schema": {"type": "string"}}},
    }
    name = [_NAME_PARAM]
    paths: dict[str, Any] = {
        "/openapi.json": {"get": _op("this document", _json({"type": "object"}), op_id="openapi")},
        "/v1/supervisor": {
            "get": _op(
                "supervisor version, uptime, journal and subsystem statistics",
                _json(
                    _obj(
                        seq=_SEQ,
                        version={"type": "string"},
                        pid={"type": "integer"},
                        uptime={"type": "number"},
                        read_only={"type": "boolean"},
                        api=_API_STATISTICS,
                        journal={"type": "object"},
                        statistics={"type": "object"},
                    )
                ),
                op_id="supervisorInfo",
            )
        },
        "/v1/events": {
            "get": _op(
                "the event journal from `since` on (NDJSON, or SSE when asked); with "
                "`follow=true` the stream stays open, with heartbeats",
                {
                    "description": "one Event per line (NDJSON) or per SSE frame",
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                params=[
                    _query(
                        "since",
                        {"type": "integer", "minimum": 0},
                        "send the events with seq > since (default: 0, or the current end "
                        "with follow)",
                    ),
                    _query("follow", {"type": "boolean"}, "keep the stream open for new events"),
                    _query("limit", {"type": "integer", "minimum": 1}, "stop after this many"),
                    _query("domain", {"type": "string"}, "only these domains (comma-separated)"),
                    _query("type", {"type": "string"}, "only these event types (comma-separated)"),
                    _query("kind", {"type": "string"}, "only these kinds (comma-separated)"),
                    _query(
                        "heartbeat",
                        {"type": "number", "minimum": 0.01, "maximum": 3600},
                        "seconds of silence before a heartbeat record (default 15)",
                    ),
                    _query(
                        "format", {"type": "string", "enum": ["ndjson", "sse"]}, "stream format"
                    ),
                ],
                op_id="events",
            )
        },
        "/v1/domains": {
            "get": _op(
                "every defined domain with its state",
                _json(_obj(seq=_SEQ, domains={"type": "array", "items": _ref("DomainStatus")})),
                op_id="listDomains",
            ),
            "post": _op(
                "define (or redefine) a domain from its XML; with transient=true start it "
                "without storing it (virsh create: gone when it stops)",
                _json(_obj(seq=_SEQ, domain=_ref("DomainStatus")), "defined (or started)"),
                status="201",
                body=_XML_BODY,
                params=[
                    _query(
                        "transient",
                        {"type": "boolean"},
                        "start a transient domain instead of defining one",
                    )
                ],
                op_id="defineDomain",
            ),
        },
        "/v1/domains/{name}": {
            "get": _op(
                "a domain's info", _json(_ref("DomainInfo")), params=name, op_id="domainInfo"
            ),
            "delete": _op("undefine a domain", seq_only, params=name, op_id="undefineDomain"),
        },
        "/v1/domains/{name}/xml": {
            "get": _op(
                "a domain's XML (the running definition; inactive=true: the stored one)",
                xml_reply,
                params=[
                    *name,
                    _query("inactive", {"type": "boolean"}, "the stored (next boot's) definition"),
                ],
                op_id="domainXml",
            )
        },
        "/v1/domains/{name}/state": {
            "get": _op(
                "a domain's state and reason",
                _json(
                    _obj(
                        seq=_SEQ,
                        name={"type": "string"},
                        state={"type": "string"},
                        reason={"type": "string"},
                    )
                ),
                params=name,
                op_id="domainState",
            )
        },
        "/v1/domains/{name}/interfaces": {
            "get": _op(
                "a domain's interfaces and addresses (static and leased)",
                _json(_obj(seq=_SEQ, interfaces={"type": "array", "items": {"type": "object"}})),
                params=name,
                op_id="domainInterfaces",
            )
        },
        "/v1/domains/{name}/autostart": {
            "put": _op(
                "set a domain's autostart flag",
                _json(_obj(seq=_SEQ, autostart={"type": "boolean"})),
                params=name,
                body=_json_body(_obj(autostart={"type": "boolean"})),
                op_id="setAutostart",
            )
        },
        "/v1/domains/{name}/schedinfo": {
            "get": _op(
                "a domain's scheduler parameters",
                _json(_obj(seq=_SEQ, params={"type": "object"})),
                params=name,
                op_id="getSchedinfo",
            ),
            "put": _op(
                "change scheduler parameters live and/or in the config",
                _json(_obj(seq=_SEQ, params={"type": "object"})),
                params=name,
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["params"],
                        "properties": {
                            "params": {
                                "type": "object",
                                "minProperties": 1,
                                "additionalProperties": {"type": ["string", "integer"]},
                            },
                            "live": {"type": "boolean"},
                            "config": {"type": "boolean"},
                        },
                    }
                ),
                op_id="setSchedinfo",
            ),
        },
        "/v1/domains/{name}/stats": {
            "get": _op(
                "a domain's statistics (virsh domstats)",
                _json(_obj(seq=_SEQ, name={"type": "string"}, stats={"type": "object"})),
                params=name,
                op_id="domainStats",
            )
        },
        "/v1/stats": {
            "get": _op(
                "statistics of every domain (or of those named), in one read",
                _json(_obj(seq=_SEQ, domains={"type": "array", "items": _ref("DomainStats")})),
                params=[
                    _query(
                        "domain",
                        {"type": "string"},
                        "only these domains (comma-separated), in that order",
                    )
                ],
                op_id="stats",
            )
        },
        "/v1/domains/{name}/memory": {
            "get": _op(
                "a domain's memory settings (virsh memtune)",
                _json(_obj(seq=_SEQ, memory=_ref("Memory"))),
                params=name,
                op_id="getMemory",
            ),
            "put": _op(
                "change the memory (setmem: current_kib, which is also the hard limit) or the "
                "memtune limits, live and/or in the config; a live change publishes TUNABLE",
                _json(_obj(seq=_SEQ, memory=_ref("Memory"))),
                params=name,
                body=_json_body(
                    {
                        "type": "object",
                        "properties": {
                            "current_kib": {"type": "integer", "minimum": 1},
                            "memtune": {
                                "type": "object",
                                "properties": {
                                    k: {"type": "integer", "minimum": 1}
                                    for k in (
                                        "hard_limit_kib",
                                        "soft_limit_kib",
                                        "swap_hard_limit_kib",
                                    )
                                },
                                "additionalProperties": False,
                            },
                            "live": {"type": "boolean"},
                            "config": {"type": "boolean"},
                        },
                    }
                ),
                op_id="setMemory",
            ),
        },
        "/v1/networks": {
            "get": _op(
                "every defined network",
                _json(_obj(seq=_SEQ, networks={"type": "array", "items": _ref("NetworkStatus")})),
                op_id="listNetworks",
            ),
            "post": _op(
                "define (or redefine) a network from its XML",
                _json(_obj(seq=_SEQ, network=_ref("NetworkStatus")), "defined"),
                status="201",
                body=_XML_BODY,
                op_id="defineNetwork",
            ),
        },
        "/v1/networks/{name}": {
            "get": _op(
                "a network's status",
                _json({"allOf": [_ref("NetworkStatus"), _obj(seq=_SEQ)]}),
                params=name,
                op_id="networkInfo",
            ),
            "delete": _op("undefine a network", seq_only, params=name, op_id="undefineNetwork"),
        },
        "/v1/networks/{name}/xml": {
            "get": _op("a network's XML", xml_reply, params=name, op_id="networkXml")
        },
        "/v1/networks/{name}/autostart": {
            "put": _op(
                "set a network's autostart flag",
                _json(_obj(seq=_SEQ, autostart={"type": "boolean"})),
                params=name,
                body=_json_body(_obj(autostart={"type": "boolean"})),
                op_id="setNetworkAutostart",
            )
        },
        "/v1/networks/{name}/leases": {
            "get": _op(
                "a network's DHCP leases and static allocations",
                _json(_obj(seq=_SEQ, leases={"type": "array", "items": _ref("Lease")})),
                params=name,
                op_id="networkLeases",
            )
        },
    }
    paths["/v1/domains/{name}/console"] = _console_path(name)
    for action in ("start", "shutdown", "destroy", "reboot", "suspend", "resume"):
        params = list(name)
        if action == "shutdown":
            params.append(
                _query(
                    "timeout",
                    {"type": "number", "minimum": 0, "maximum": 86400},
                    "seconds to wait before the shutdown is escalated",
                )
            )
        paths[f"/v1/domains/{{name}}/{action}"] = {
            "post": _op(f"{action} a domain", domain_reply, params=params, op_id=f"{action}Domain")
        }
    for action in ("start", "destroy"):
        paths[f"/v1/networks/{{name}}/{action}"] = {
            "post": _op(f"{action} a network", network_reply, params=name, op_id=f"{action}Network")
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vsupervisor control API",
            "version": __version__,
            "description": (
                "REST over Unix sockets. The read-write socket accepts everything; the read-only "
                "socket answers every method but GET with 403 (code read-only). The read-write "
                "socket answers 403 (code forbidden) to a client in another pid or mount "
                "namespace. A socket with as many connections open as it may answers 503 (code "
                "too-many-connections) and closes. Every JSON answer carries `seq`, the journal "
                "position it reflects, also as header X-Vsv-Seq."
            ),
        },
        "servers": [{"url": "http://localhost"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


#: what OpenAPI cannot say about the console's WebSocket, for readers of the document
_CONSOLE_MESSAGES = {
    "binary": "the terminal's bytes: keystrokes to the guest, its output to the client",
    "client_text": {
        "resize": '{"type": "resize", "rows": R, "cols": C} (1..65535 each); other types are '
        "ignored, text that is not a JSON object closes the WebSocket with code 1007",
    },
    "server_text": {
        "skipped": '{"type": "skipped", "bytes": N}: output the client was too slow for '
        "(the guest's log has it)",
        "closed": '{"type": "closed", "reason": "taken-over" | "stopped", "detail": "..."}: '
        "sent before the server closes the WebSocket (code 1000)",
    },
}


def _console_path(name: list[dict[str, Any]]) -> dict[str, Any]:
    """``/v1/domains/{name}/console``: a WebSocket (RFC 6455), which OpenAPI 3.1 cannot
    describe; the upgrade and its refusals are written here as HTTP, the messages in
    ``x-websocket`` (docs/api.md has the whole protocol)."""
    op = _op(
        "the domain's console as a WebSocket (read-write socket only): send 'Upgrade: "
        "websocket'; one client at a time, force=true takes the console over. Refusals are "
        "problem answers to the upgrade: 404 not-found, 409 no-console / invalid-operation (not "
        "running) / console-busy, 403 read-only; without the upgrade, 426 upgrade-required",
        {"description": "Switching Protocols: the WebSocket is open"},
        status="101",
        params=[
            *name,
            _query("force", {"type": "boolean"}, "take the console over from the attached client"),
        ],
        op_id="domainConsole",
    )
    op["x-websocket"] = _CONSOLE_MESSAGES
    return {"get": op}


def dump() -> str:
    """The document as it is kept in docs/openapi.json."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(dump(), end="")
