"""Property tests: the codec is lossless, stable, and writes what libvirt's schemas accept."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from lxml import etree

from supervisor.model import Domain, Network
from supervisor.xml import (
    format_domain,
    format_network,
    parse_document,
    parse_domain,
    parse_network,
)
from tests.strategies import domains, networks

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repo; VSV_SHARED names it for a checkout elsewhere (a git worktree)
LIBVIRT_SCHEMAS = (
    Path(os.environ.get("VSV_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    / "schemas"
    / "libvirt"
)
VSERVER_SCHEMA = REPO / "supervisor" / "schemas" / "vserver-domain.rng"

needs_libvirt_schemas = pytest.mark.skipif(
    not LIBVIRT_SCHEMAS.is_dir(),
    reason=f"libvirt's RelaxNG schemas are not at {LIBVIRT_SCHEMAS} (../shared from the repo)",
)


@cache
def _schema(path: Path) -> etree.RelaxNG:
    """Compile a schema once per test session (compiling domain.rng takes ~0.5 s)."""
    return etree.RelaxNG(etree.parse(str(path)))


def _assert_valid(schema: etree.RelaxNG, text: str) -> None:
    doc = etree.fromstring(text.encode())
    ok = schema.validate(doc)
    assert (True, "") == (ok, "" if ok else f"{schema.error_log}\n{text}")


@settings(max_examples=150, deadline=None)
@given(domains())
def test_domain_model_xml_model_is_identity(domain: Domain) -> None:
    """Writing a domain and reading it back gives the same model."""
    assert domain == parse_domain(format_domain(domain))


@settings(max_examples=150, deadline=None)
@given(networks())
def test_network_model_xml_model_is_identity(network: Network) -> None:
    """Writing a network and reading it back gives the same model."""
    assert network == parse_network(format_network(network))


@settings(max_examples=100, deadline=None)
@given(domains())
def test_domain_xml_is_stable(domain: Domain) -> None:
    """XML -> model -> XML reproduces the document the supervisor wrote."""
    text = format_domain(domain)
    assert text == format_domain(parse_domain(text))


@settings(max_examples=100, deadline=None)
@given(networks())
def test_network_xml_is_stable(network: Network) -> None:
    """Network XML -> model -> XML reproduces the document."""
    text = format_network(network)
    assert text == format_network(parse_network(text))


@needs_libvirt_schemas
@settings(max_examples=150, deadline=None)
@given(domains(dialect="lxc"))
def test_lxc_domains_validate_against_libvirt_schema(domain: Domain) -> None:
    """Every lxc-dialect document the supervisor writes is valid for libvirt's domain.rng."""
    _assert_valid(_schema(LIBVIRT_SCHEMAS / "domain.rng"), format_domain(domain))


@needs_libvirt_schemas
@settings(max_examples=150, deadline=None)
@given(networks())
def test_networks_validate_against_libvirt_schema(network: Network) -> None:
    """Every network document the supervisor writes is valid for libvirt's network.rng."""
    _assert_valid(_schema(LIBVIRT_SCHEMAS / "network.rng"), format_network(network))


@settings(max_examples=150, deadline=None)
@given(domains())
def test_domains_validate_against_shipped_schema(domain: Domain) -> None:
    """Every document (both dialects) validates against the shipped vserver-domain.rng."""
    _assert_valid(_schema(VSERVER_SCHEMA), format_domain(domain))


def test_parse_document_dispatches_on_root() -> None:
    """parse_document returns a Domain for <domain> and a Network for <network>."""
    d = parse_document(format_domain(Domain(name="a")))
    n = parse_document(format_network(Network(name="b")))
    assert (Domain, Network) == (type(d), type(n))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.xml")), ids=lambda p: p.name)
def test_examples_validate_against_their_schemas(path: Path) -> None:
    """Each example, as the supervisor stores it, is valid for its schema."""
    doc = parse_document(path.read_bytes(), path=str(path))
    if isinstance(doc, Network):
        if LIBVIRT_SCHEMAS.is_dir():
            _assert_valid(_schema(LIBVIRT_SCHEMAS / "network.rng"), format_network(doc))
        return
    text = format_domain(doc)
    _assert_valid(_schema(VSERVER_SCHEMA), text)
    if doc.type == "lxc" and LIBVIRT_SCHEMAS.is_dir():
        _assert_valid(_schema(LIBVIRT_SCHEMAS / "domain.rng"), text)
