"""The XML codec: libvirt-style domain and network documents <-> :mod:`supervisor.model` values.

This package is the only place that imports lxml. Reading is hardened (see ``_reader``): no DTDs,
entities, network or file access, a size limit and a depth limit. There is one reader per kind of
document (``domain``, ``network``); each reports every problem a document has at once, as
``PATH:LINE: <element>/@attr: message`` lines in :class:`supervisor.errors.InvalidDocument`, the
rules on the model (:mod:`supervisor.validate`) included. Writing is deterministic (fixed element
order, two-space indentation), so a stored definition changes only when the definition does.
"""

from __future__ import annotations

from lxml.etree import _Element

from supervisor.errors import InvalidDocument
from supervisor.model import Domain, Network
from supervisor.xml._reader import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    VSV_NS,
    Reader,
    safe_parse,
    srcline,
    tag_name,
)
from supervisor.xml.domain import UNITS, read_domain, write_domain
from supervisor.xml.network import read_network, write_network

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "UNITS",
    "VSV_NS",
    "format_domain",
    "format_network",
    "parse_document",
    "parse_domain",
    "parse_network",
]


def parse_domain(
    data: bytes | str, *, path: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Domain:
    """Read a domain document of either dialect; raise InvalidDocument listing every problem."""
    return read_domain(_root(data, path, max_bytes, "domain"), path)


def parse_network(
    data: bytes | str, *, path: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Network:
    """Read a network document; raise InvalidDocument listing every problem."""
    return read_network(_root(data, path, max_bytes, "network"), path)


def parse_document(
    data: bytes | str, *, path: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Domain | Network:
    """Read a domain or a network, whichever the root element says."""
    root = safe_parse(data, path=path, max_bytes=max_bytes)
    if root.tag == "domain":
        return read_domain(root, path)
    if root.tag == "network":
        return read_network(root, path)
    reader = Reader(path, srcline(root) or 1)
    reader.error(
        reader.root_line,
        str(root.tag),
        f"value '{root.tag}' is not a known root element: allowed <domain>, <network>",
    )
    reader.raise_if_problems()
    raise InvalidDocument(["unreachable"])  # pragma: no cover - raise_if_problems raised


def _root(data: bytes | str, path: str | None, max_bytes: int, tag: str) -> _Element:
    """The parsed root element, which must be ``<tag>`` (else the one problem is raised)."""
    root = safe_parse(data, path=path, max_bytes=max_bytes)
    if root.tag != tag:
        r = Reader(path, srcline(root) or 1)
        r.error(r.root_line, tag_name(root), f"the root element is not <{tag}>")
        r.raise_if_problems()
    return root


def format_domain(domain: Domain) -> str:
    """The document for ``domain`` in its dialect (``domain.type``)."""
    return write_domain(domain)


def format_network(network: Network) -> str:
    """The libvirt network document for ``network``."""
    return write_network(network)
