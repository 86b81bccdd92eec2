"""Static NIC addresses against their networks and other domains, at define time (pure).

Each refusal names the field and is a 400 (the address cannot be a guest's there) or a 409
(someone else has it), never a 500 at start (issue 14).
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.api.app import problem_for
from supervisor.errors import ConflictError, InvalidDocument
from supervisor.model import (
    AddressRange,
    DhcpHost,
    Domain,
    Forward,
    Interface,
    IpAddress,
    Network,
    NetworkIp,
)
from supervisor.net.addresses import domain_problems, network_problems, raise_problems

LAN = Network(
    name="lan",
    forward=Forward(mode="nat"),
    ips=(
        NetworkIp(
            address="10.9.0.1",
            prefix=24,
            dhcp_ranges=(AddressRange("10.9.0.100", "10.9.0.200"),),
            dhcp_hosts=(DhcpHost(ip="10.9.0.50", mac="52:54:00:00:00:50"),),
        ),
        NetworkIp(address="fd09::1", prefix=64, family="ipv6"),
    ),
)
NETS = {"lan": LAN}


def dom(name: str, *addresses: str, prefix: int | None = None, mac: str | None = None) -> Domain:
    ips = tuple(IpAddress(a, prefix) for a in addresses)
    return Domain(
        name=name, interfaces=(Interface(type="network", source="lan", ips=ips, mac=mac),)
    )


def status(domain: Domain, others: tuple[Domain, ...] = ()) -> tuple[int, str]:
    """The HTTP status and message a define of ``domain`` would get (200: accepted)."""
    try:
        raise_problems(domain_problems(domain, NETS, others))
    except (InvalidDocument, ConflictError) as exc:
        problem = problem_for(exc, field="body")
        return problem.status, str(exc)
    return 200, ""


@pytest.mark.parametrize(
    ("address", "prefix", "expected", "words"),
    [
        ("10.9.0.10", None, 200, ""),
        ("10.9.0.10", 24, 200, ""),
        ("10.9.0.10", 16, 400, "ip[1]/@prefix: prefix 16 disagrees with network lan's 10.9.0.0/24"),
        ("10.9.1.10", None, 400, "outside network lan's subnet (10.9.0.0/24)"),
        ("10.9.0.0", None, 400, "10.9.0.0/24's network address"),
        ("10.9.0.255", None, 400, "10.9.0.0/24's broadcast address"),
        ("10.9.0.1", None, 409, "network lan's own (the guests' gateway)"),
        ("10.9.0.50", None, 409, "reserved on network lan for 52:54:00:00:00:50"),
        ("10.9.0.150", None, 409, "inside network lan's DHCP range 10.9.0.100-10.9.0.200"),
        ("fd09::10", None, 200, ""),
        ("fd09::1", None, 409, "network lan's own"),
        ("fd0a::10", None, 400, "outside network lan's subnet (fd09::/64)"),
    ],
)
def test_a_static_address_against_its_network(
    address: str, prefix: int | None, expected: int, words: str
) -> None:
    """Each refusal with its status, naming the field and what the address collides with."""
    code, message = status(dom("a", address, prefix=prefix))
    assert expected == code, message
    assert words in message
    if code != 200:
        assert "devices/interface[1]/ip[1]/@" in message


def test_the_reservation_for_the_nics_own_mac_is_fine() -> None:
    """A ``<dhcp><host>`` for the NIC's own MAC is the NIC's address."""
    assert 200 == status(dom("a", "10.9.0.50", mac="52:54:00:00:00:50"))[0]


def test_another_domains_static_address_is_a_conflict() -> None:
    """Two domains, or two NICs of one, cannot have the same static address on a network; a
    redefinition of the same domain does not collide with itself."""
    first = dom("a", "10.9.0.10")
    assert (409, "domain a's") == (status(dom("b", "10.9.0.10"), (first,))[0], "domain a's")
    assert (
        "already domain a's (devices/interface[1]/ip[1])"
        in status(dom("b", "10.9.0.10"), (first,))[1]
    )
    assert 200 == status(dom("a", "10.9.0.10"), (first,))[0]
    twice = Domain(
        name="c",
        interfaces=(
            Interface(type="network", source="lan", ips=(IpAddress("10.9.0.11"),)),
            Interface(type="network", source="lan", ips=(IpAddress("10.9.0.11"),)),
        ),
    )
    code, message = status(twice)
    assert 409 == code
    assert "devices/interface[2]/ip[1]/@address" in message
    assert "another NIC" in message


def test_unknown_networks_and_host_bridges_have_nothing_to_check() -> None:
    """A network not defined yet, or one without addresses (``forward mode='bridge'``)."""
    other = Domain(
        name="a",
        interfaces=(Interface(type="network", source="nope", ips=(IpAddress("1.2.3.4"),)),),
    )
    assert [] == domain_problems(other, NETS, ())
    host = Network(name="lan", forward=Forward(mode="bridge"))
    assert [] == domain_problems(dom("a", "192.0.2.1"), {"lan": host}, ())


def test_a_redefined_network_conflicts_with_domains_on_it() -> None:
    """net-define of a network whose range now covers a domain's static address, or whose
    subnet no longer holds it: 409 naming the domain and its field."""
    narrower = Network(
        name="lan",
        forward=Forward(mode="nat"),
        ips=(
            NetworkIp(
                address="10.9.0.1", prefix=25, dhcp_ranges=(AddressRange("10.9.0.2", "10.9.0.20"),)
            ),
        ),
    )
    problems = network_problems(
        narrower, [dom("a", "10.9.0.10"), dom("b", "10.9.0.200"), dom("c", "10.9.0.30")]
    )
    assert [True, True] == [p.conflict for p in problems]
    with pytest.raises(ConflictError) as raised:
        raise_problems(problems)
    assert "domain a: devices/interface[1]/ip[1]/@address" in str(raised.value)
    assert "domain b: devices/interface[1]/ip[1]/@address" in str(raised.value)
    assert 409 == problem_for(raised.value, field="body").status


@given(st.integers(0, 255), st.sampled_from([None, 8, 24, 25]))
def test_every_address_of_the_subnet_is_judged_never_raised(last: int, prefix: int | None) -> None:
    """Any address is accepted or refused with a 400 or 409, never with another error."""
    assert status(dom("a", f"10.9.0.{last}", prefix=prefix))[0] in (200, 400, 409)


def test_two_domains_collide_also_on_a_network_not_defined_yet() -> None:
    """The same static address on one network name is a conflict before the network exists,
    so the network's later definition cannot leave two guests with one address."""
    first = Domain(
        name="a",
        interfaces=(Interface(type="network", source="later", ips=(IpAddress("10.1.0.5"),)),),
    )
    second = attrs.evolve(first, name="b")
    problems = domain_problems(second, {}, (first,))
    assert [True] == [p.conflict for p in problems]
    assert "on network later is already domain a's" in str(problems[0])
