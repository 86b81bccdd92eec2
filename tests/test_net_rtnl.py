"""The raw rtnetlink client: message encoding (pure, property tested) and real requests (root).

The root tests check what the kernel made with ``ip`` (iproute2), an implementation independent
of the one under test.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import nsutil
from supervisor.errors import ConflictError, RuntimeFailure
from supervisor.net import rtnl
from supervisor.net.rtnl import Rtnl

# ---- pure -----------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 0x3FFF), st.binary(max_size=40)), max_size=8))
def test_attrs_round_trip(items: list[tuple[int, bytes]]) -> None:
    """Packed attributes parse back to their payloads (first of a repeated type wins)."""
    data = b"".join(rtnl.attr(kind, payload) for kind, payload in items)
    expected: dict[int, bytes] = {}
    for kind, payload in items:
        expected.setdefault(kind, payload)
    assert 0 == len(data) % 4
    assert expected == rtnl.parse_attrs(data)


@given(st.integers(0, 2**31), st.binary(max_size=64))
def test_message_header(seq: int, body: bytes) -> None:
    """A request's header carries its total length, type, REQUEST|ACK and the sequence."""
    msg = rtnl.message(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE, seq, body)
    length, kind, flags, mseq, pid = struct.unpack_from("=IHHII", msg)
    expected = (len(msg), rtnl.RTM_NEWLINK, 0x405, seq, 0)
    assert expected == (length, kind, flags, mseq, pid)
    assert body == msg[16:]


def _reply(kind: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


@given(st.integers(1, 1000), st.integers(0, 200))
def test_parse_reply_ack_and_error(seq: int, code: int) -> None:
    """An error message for our sequence gives its errno (0: acknowledged); others are skipped."""
    ours = _reply(rtnl.NLMSG_ERROR, seq, struct.pack("=i", -code) + b"\0" * 16)
    other = _reply(rtnl.NLMSG_ERROR, seq + 1, struct.pack("=i", -5) + b"\0" * 16)
    assert (code, None) == rtnl.parse_reply(other + ours, seq)
    assert (None, None) == rtnl.parse_reply(other, seq)


def test_parse_reply_link_then_ack() -> None:
    """A lookup's RTM_NEWLINK is returned with the acknowledgement that follows it."""
    link = rtnl.ifinfo(7) + rtnl.attr_u32(rtnl.IFLA_MTU, 1400)
    data = _reply(rtnl.RTM_NEWLINK, 3, link) + _reply(rtnl.NLMSG_ERROR, 3, b"\0" * 20)
    assert (0, link) == rtnl.parse_reply(data, 3)
    assert (None, link) == rtnl.parse_reply(_reply(rtnl.RTM_NEWLINK, 3, link), 3)


def test_veth_body_layout() -> None:
    """A veth request: host end up with master and MTU, the peer's name, namespace and MAC."""
    body = rtnl.veth_body(
        "vh0", "eth0", 9, mac="52:54:00:aa:bb:cc", master=4, mtu=1400, guest_mtu=None
    )
    family, _type, index, flags, change = struct.unpack_from("=BxHiII", body)
    assert (0, 0, 1, 1) == (family, index, flags, change)
    top = rtnl.parse_attrs(body[16:])
    assert b"vh0\0" == top[rtnl.IFLA_IFNAME]
    assert 4 == struct.unpack("=I", top[rtnl.IFLA_MASTER])[0]
    assert 1400 == struct.unpack("=I", top[rtnl.IFLA_MTU])[0]
    info = rtnl.parse_attrs(top[rtnl.IFLA_LINKINFO])
    assert b"veth\0" == info[rtnl.IFLA_INFO_KIND]
    peer = rtnl.parse_attrs(info[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    peer_attrs = rtnl.parse_attrs(peer[16:])
    expected = {
        rtnl.IFLA_IFNAME: b"eth0\0",
        rtnl.IFLA_NET_NS_FD: struct.pack("=I", 9),
        rtnl.IFLA_ADDRESS: bytes.fromhex("525400aabbcc"),
    }
    assert expected == peer_attrs


def test_route_body_default_and_link_scope() -> None:
    """A default route via a gateway is universe scope; a route by device alone is link scope."""
    via = rtnl.route_body("default", gateway="10.0.0.1", oif=None)
    fields = struct.unpack_from("=BBBBBBBBI", via)
    assert (socket.AF_INET, 0, 254, 4, 0) == (fields[0], fields[1], fields[4], fields[5], fields[6])
    assert {rtnl.RTA_GATEWAY: bytes([10, 0, 0, 1])} == rtnl.parse_attrs(via[12:])
    dev = rtnl.route_body("10.9.0.0/24", gateway=None, oif=3)
    fields = struct.unpack_from("=BBBBBBBBI", dev)
    assert (24, rtnl.RT_SCOPE_LINK) == (fields[1], fields[6])
    expected = {rtnl.RTA_DST: bytes([10, 9, 0, 0]), rtnl.RTA_OIF: struct.pack("=I", 3)}
    assert expected == rtnl.parse_attrs(dev[12:])


def test_port_flags_and_fdb_messages() -> None:
    """The two requests a managed port costs: its flags in the bridge's slave data, and a
    static master entry for the guest's MAC."""
    body = rtnl.port_flags_body(
        5, {rtnl.IFLA_BRPORT_LEARNING: False, rtnl.IFLA_BRPORT_UNICAST_FLOOD: False}
    )
    assert 5 == struct.unpack_from("=BxHiII", body)[2]
    info = rtnl.parse_attrs(rtnl.parse_attrs(body[16:])[rtnl.IFLA_LINKINFO])
    assert b"bridge\0" == info[rtnl.IFLA_INFO_SLAVE_KIND]
    flags = rtnl.parse_attrs(info[rtnl.IFLA_INFO_SLAVE_DATA])
    assert {rtnl.IFLA_BRPORT_LEARNING: b"\0", rtnl.IFLA_BRPORT_UNICAST_FLOOD: b"\0"} == flags
    fdb = rtnl.fdb_body(9, "52:54:00:00:00:01")
    assert (rtnl.AF_BRIDGE, 9, rtnl.NUD_NOARP, rtnl.NTF_MASTER) == struct.unpack_from(
        "=BxxxiHBB", fdb
    )[:4]
    assert {rtnl.NDA_LLADDR: bytes.fromhex("525400000001")} == rtnl.parse_attrs(fdb[12:])


# ---- against the kernel ---------------------------------------------------------------------


def ip_json(*argv: str) -> list[dict[str, Any]]:
    """``ip -j ARGS`` parsed."""
    out = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout or "[]"))


@pytest.fixture
def two_ns(prefix: str) -> Iterator[tuple[str, str]]:
    """A host and a guest namespace (named with the prefix), removed after the test."""
    host, guest = f"{prefix}-h", f"{prefix}-g"
    try:
        nsutil.create_netns(host)
        nsutil.create_netns(guest)
        yield host, guest
    finally:
        nsutil.delete_netns(guest)
        nsutil.delete_netns(host)


@pytest.mark.root
def test_veth_made_in_one_request(two_ns: tuple[str, str], prefix: str) -> None:
    """One request makes the veth enslaved, sized and up; the guest end is configured."""
    host, guest = two_ns
    subprocess.run(
        ["ip", "-n", host, "link", "add", f"{prefix}br", "mtu", "1400", "type", "bridge"],
        check=True,
    )
    hfd = os.open(nsutil.netns_path(host), os.O_RDONLY)
    gfd = os.open(nsutil.netns_path(guest), os.O_RDONLY)
    try:
        h = nsutil.run_in_netns(hfd, Rtnl)
        g = nsutil.run_in_netns(gfd, Rtnl)
        try:
            found = h.link(f"{prefix}br")
            assert found is not None
            assert 1400 == found[1]
            assert None is h.link(f"{prefix}none")
            h.create_veth(
                f"{prefix}v", "eth0", gfd, mac="52:54:00:01:02:03", master=found[0], mtu=found[1]
            )
            with pytest.raises(ConflictError):
                h.create_veth(f"{prefix}v", "eth1", gfd, mac=None, master=None, mtu=None)
            link = g.index("eth0")
            g.add_address(link, "10.77.0.2", 16)
            g.set_up(link)
            g.set_up(rtnl.LO_INDEX)
            g.add_route("default", gateway="10.77.0.1")
            with pytest.raises(RuntimeFailure, match="does not exist"):
                g.index("eth9")
        finally:
            h.close()
            g.close()
    finally:
        os.close(hfd)
        os.close(gfd)
    (hl,) = ip_json("-n", host, "link", "show", f"{prefix}v")
    expected_host = (f"{prefix}br", 1400, True)
    assert expected_host == (hl.get("master"), hl.get("mtu"), "UP" in hl["flags"])
    (gl,) = ip_json("-n", guest, "addr", "show", "eth0")
    addrs = [(a["local"], a["prefixlen"]) for a in gl["addr_info"] if a["family"] == "inet"]
    assert ("52:54:00:01:02:03", [("10.77.0.2", 16)]) == (gl["address"], addrs)
    routes = ip_json("-n", guest, "route", "show", "default")
    assert [("10.77.0.1", "eth0", "static")] == [
        (r["gateway"], r["dev"], r["protocol"]) for r in routes
    ]
