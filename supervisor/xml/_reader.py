"""Safe parsing and the small helpers shared by the domain and network codecs.

Why a module of its own: every document the supervisor reads may be hostile (it comes from a user
or over the API), so there is exactly one way to turn bytes into an lxml tree, and it refuses
DTDs, entities, network and file access, oversized and overly deep documents before any codec
looks at the tree. The :class:`Reader` collects every problem with its line instead of stopping
at the first one, so a user fixes a file in one pass.

The same helpers read every document, good or bad (there is no second, quiet reader), so each
first asks whether it has anything to say and builds a message, and its element path, only then.
"""

from __future__ import annotations

import copy
import operator
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, cast

from lxml import etree

from supervisor.errors import InvalidDocument
from supervisor.validate import Key, Problem

#: Documents larger than this are refused before parsing (a domain is a few KiB).
MAX_DOCUMENT_BYTES: Final = 1024 * 1024
#: libxml2's own nesting limit without XML_PARSE_HUGE; our formats need fewer than 10 levels.
MAX_DEPTH: Final = 256

VSV_NS: Final = "https://vsupervisor.dev/xmlns/domain/1"
VSV_PREFIX: Final = "vsv"

_INT = re.compile(r"\s*-?[0-9]+\s*")
#: the longest integer a document may hold (a uint64 has 20 digits; room for spaces and zeros)
MAX_INT_DIGITS = 64
#: how much of an offending value a message repeats
MAX_QUOTED = 80


def quoted(value: object) -> str:
    """A value as an error message repeats it: cut short, saying how long it was, when long."""
    text = str(value)
    if len(text) <= MAX_QUOTED:
        return text
    return f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


_DOCTYPE = re.compile(rb"<!(?:DOCTYPE|doctype)")
_local = threading.local()


def _parser(for_text: bool) -> etree.XMLParser:
    """A hardened parser, one per thread (lxml parsers must not be shared across threads)."""
    attr = "text_parser" if for_text else "bytes_parser"
    parser: etree.XMLParser | None = getattr(_local, attr, None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            # A str is already decoded: ignore whatever its XML declaration claims.
            encoding="utf-8" if for_text else None,
        )
        setattr(_local, attr, parser)
    return parser


def location(path: str | None, line: int | None) -> str:
    """``PATH:LINE`` (or the parts that are known) for the start of a message."""
    where = path if path is not None else ""
    if line is not None:
        where = f"{where}:{line}" if where else str(line)
    return where or "<document>"


def safe_parse(
    data: bytes | str, *, path: str | None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> etree._Element:
    """Parse ``data`` into a root element, refusing anything an attacker could abuse."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise InvalidDocument(
            [
                f"{location(path, None)}: document: size {len(raw)} bytes is too large: "
                f"allowed at most {max_bytes} bytes"
            ]
        )
    # A "!" is looked for first (one memchr): most documents have none, and the two substring
    # searches it spares took a tenth of the time of parsing a domain.
    if b"!" in raw and _DOCTYPE.search(raw):
        raise InvalidDocument([_doctype_message(path, raw.count(b"\n", 0, raw.find(b"<!")) + 1)])
    try:
        root = etree.fromstring(raw, _parser(isinstance(data, str)))
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg) if exc.msg else str(exc)
        if "depth" in message.lower():
            message = (
                f"document: nesting is too deep: allowed at most {MAX_DEPTH} levels of elements"
            )
        else:
            message = f"document: not well-formed XML: {message}"
        raise InvalidDocument([f"{location(path, exc.lineno)}: {message}"]) from None
    except ValueError as exc:  # e.g. a document lxml cannot decode
        raise InvalidDocument([f"{location(path, None)}: document: {exc}"]) from None
    docinfo: Any = root.getroottree().docinfo  # lxml's stubs lack DocInfo.doctype
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise InvalidDocument([_doctype_message(path, 1)])
    return root


def _doctype_message(path: str | None, line: int) -> str:
    return (
        f"{location(path, line)}: document: a <!DOCTYPE> is not accepted "
        "(no DTDs or entities are ever loaded): allowed a plain XML document"
    )


class Reader:
    """Reads one document: collects problems with lines and remembers where each model key was."""

    __slots__ = ("lines", "path", "problems", "renumber", "root_line", "wheres")

    def __init__(self, path: str | None, root_line: int) -> None:
        self.path = path
        self.root_line = root_line
        self.problems: list[tuple[int, str]] = []
        self.lines: dict[Key, int] = {}
        self.wheres: set[str] = set()
        #: model key of a list element -> (the rules' path for it, its path in the document);
        #: made only when an element was refused before another of its tag (rare)
        self.renumber: dict[Key, tuple[str, str]] | None = None

    # -- problems -------------------------------------------------------------------------

    def error(self, line: int | None, where: str, message: str) -> None:
        self.wheres.add(where)
        self.problems.append((line or self.root_line, f"{where}: {message}"))

    def bad_value(
        self, el: etree._Element, where: str, value: object, what: str, allowed: str
    ) -> None:
        self.error(srcline(el), where, f"value '{quoted(value)}' {what}: allowed {allowed}")

    def line_of(self, key: Key) -> int:
        """The line of the element a model key came from (or of its nearest parent)."""
        lines = self.lines
        while key:
            line = lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return self.root_line

    def renumbered(self, key: Key, model_where: str, doc_where: str) -> None:
        """The model's list element ``key``, which the rules call ``model_where``, is
        ``doc_where`` in the document: an element of its tag before it was refused, so the
        model has fewer. Messages number elements by their position among their siblings."""
        if self.renumber is None:
            self.renumber = {}
        self.renumber[key] = (model_where, doc_where)

    def _doc_where(self, key: Key, where: str) -> str:
        """A rule's path with list positions as in the document (the longest renumbered key)."""
        renumber = self.renumber
        assert renumber is not None
        for n in range(len(key), 0, -1):
            fix = renumber.get(key[:n])
            if fix is not None:
                old, new = fix
                if where.startswith(old):
                    return new + where[len(old) :]
        return where

    def add_model_problems(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            where = p.where if self.renumber is None else self._doc_where(p.key, p.where)
            if where in self.wheres:
                continue  # already reported while reading, with a more precise message
            self.problems.append((self.line_of(p.key), f"{where}: {p.message}"))

    def raise_if_problems(self) -> None:
        if self.problems:
            self.problems.sort(key=lambda item: item[0])
            raise InvalidDocument(
                [f"{location(self.path, line)}: {msg}" for line, msg in self.problems]
            )

    # -- structure ------------------------------------------------------------------------

    def children(self, el: etree._Element, where: str) -> Iterable[etree._Element]:
        """Element children; comments and PIs are skipped, stray text is a problem.

        Nearly always there is no stray text, and the children come back as a plain list; else
        :meth:`_children_reporting` walks them and reports the text in the document's order.
        """
        text = el.text
        if text and not text.isspace():  # the same test as ``text.strip()``, without a copy
            return self._children_reporting(el, where)
        kids = []
        for child in el:
            tail = child.tail
            if tail and not tail.isspace():
                return self._children_reporting(el, where)
            if type(child.tag) is str:  # comments and PIs have a function as their tag
                kids.append(child)
        return kids

    def _children_reporting(self, el: etree._Element, where: str) -> Iterator[etree._Element]:
        """:meth:`children` for a container with stray text, reported as the reading meets it.

        A generator, so that a tail's problem comes after the problems of the child before it:
        within a line, problems are listed in the order the reading meets them.
        """
        text = el.text
        if text and not text.isspace():
            self.error(srcline(el), where, f"unexpected text '{text.strip()[:40]}'")
        for child in el:
            tail = child.tail
            if tail and not tail.isspace():
                self.error(srcline(child), where, f"unexpected text '{tail.strip()[:40]}'")
            if type(child.tag) is str:
                yield child

    def unsupported(self, el: etree._Element, where: str, allowed: Iterable[str]) -> None:
        tag = tag_name(el)
        self.error(
            srcline(el),
            f"{where}/{tag}" if where else tag,
            f"unsupported element <{tag}>: allowed " + ", ".join(f"<{a}>" for a in allowed),
        )

    def attrs(self, el: etree._Element, where: str, allowed: frozenset[str]) -> None:
        """Report attributes the codec would otherwise silently drop."""
        keys = el.keys()
        if not keys or allowed.issuperset(keys):
            return  # the common case, decided without a loop in Python
        for key in keys:
            name = key if isinstance(key, str) else key.decode()
            if name not in allowed:
                self.error(
                    srcline(el),
                    f"{where}/@{name}",
                    f"unsupported attribute '{name}': allowed "
                    + (", ".join(sorted(allowed)) or "none"),
                )

    def duplicate(self, el: etree._Element, where: str) -> None:
        self.error(srcline(el), where, f"element <{tag_name(el)}> is given twice: allowed once")

    # -- values ---------------------------------------------------------------------------

    def text(self, el: etree._Element, where: str) -> str:
        """The text of a leaf element (children are a problem)."""
        if len(el):  # a leaf has none: no iterator to set up
            for child in el:
                if isinstance(child.tag, str):
                    self.error(srcline(child), f"{where}/{tag_name(child)}", "unexpected element")
        return el.text or ""

    def leaf(self, el: etree._Element, where: str, allowed: frozenset[str]) -> str:
        """:meth:`attrs` then :meth:`text`, the usual pair for an element that holds a value.

        One call instead of two, each of which first asks whether it has anything to say: most
        elements of a domain are such leaves, and the calls were a good part of reading one.
        """
        keys = el.keys()
        if keys and not allowed.issuperset(keys):
            self.attrs(el, where, allowed)
        return self.text(el, where) if len(el) else el.text or ""

    def required(self, el: etree._Element, where: str, name: str) -> str | None:
        value = el.get(name)
        if value is None:
            self.error(srcline(el), f"{where}/@{name}", "required attribute is missing")
        return value

    def integer(
        self, el: etree._Element, where: str, value: str | None, lo: int | None = None
    ) -> int | None:
        """An integer (decimal digits only, unlike int()); out-of-range is reported here."""
        if value is None:
            return None
        # Plain ASCII digits, the common case, need not go through the regular expression.
        if not (value.isdigit() and value.isascii()) and not _INT.fullmatch(value):
            self.bad_value(el, where, value, "is not an integer", "decimal digits")
            return None
        if len(value) > MAX_INT_DIGITS:
            # no setting needs more, and int() refuses (ValueError) beyond 4300 digits
            self.bad_value(el, where, value, "is too long", f"at most {MAX_INT_DIGITS} digits")
            return None
        number = int(value)
        if lo is not None and number < lo:
            self.bad_value(el, where, value, "is out of range", f"{lo} or more")
            return None
        return number

    def int_attr(
        self, el: etree._Element, where: str, name: str, lo: int | None = None
    ) -> int | None:
        """An optional integer attribute (its path is built only when it is there)."""
        value = el.get(name)
        return None if value is None else self.integer(el, f"{where}/@{name}", value, lo)

    def choice(
        self, el: etree._Element, where: str, value: str | None, allowed: dict[str, object]
    ) -> object:
        if value is None:
            return None
        if value not in allowed:
            self.bad_value(el, where, value, "is not supported", ", ".join(allowed))
            return None
        return allowed[value]

    def choice_attr(
        self, el: etree._Element, where: str, name: str, allowed: dict[str, object]
    ) -> object:
        """An optional attribute from ``allowed`` (its path is built only when it is there)."""
        value = el.get(name)
        return None if value is None else self.choice(el, f"{where}/@{name}", value, allowed)


_YES_NO: Final[dict[str, object]] = {"yes": True, "no": False}
_ON_OFF: Final[dict[str, object]] = {"on": True, "off": False}
YES_NO = _YES_NO
ON_OFF = _ON_OFF


#: ``el.items()`` as our parser returns it: str names and values (lxml's stubs allow bytes too).
items = cast("Callable[[etree._Element], list[tuple[str, str]]]", etree._Element.items)

#: The element's line (lxml's stubs leave ``sourceline`` untyped); attrgetter is the fast way.
srcline = cast("Callable[[etree._Element], int | None]", operator.attrgetter("sourceline"))


def tag_name(el: etree._Element) -> str:
    """The element's name as a user wrote it (prefix:name for namespaced elements)."""
    tag = el.tag
    if isinstance(tag, str) and not tag.startswith("{"):
        return tag  # the common case, without building a QName
    qname = etree.QName(el)
    namespace: str | None = qname.namespace
    if not namespace:
        return qname.localname
    prefix = el.prefix
    return f"{prefix}:{qname.localname}" if prefix else f"{{{qname.namespace}}}{qname.localname}"


def serialize_foreign(el: etree._Element) -> str:
    """A foreign metadata element as a self-contained string (only the namespaces it uses)."""
    clone = copy.deepcopy(el)
    clone.tail = None
    etree.cleanup_namespaces(clone)
    return etree.tostring(clone, encoding="unicode", with_tail=False)


def parse_foreign(text: str) -> etree._Element:
    """The inverse of :func:`serialize_foreign` (hardened parser, no DOCTYPE)."""
    return safe_parse(text, path=None)


# --- writing -------------------------------------------------------------------------------


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def finish(root: etree._Element, metadata: etree._Element | None, foreign: Iterable[str]) -> str:
    """Indent with two spaces and serialize; foreign metadata goes in after indenting.

    Why after: :func:`etree.indent` would rewrite whitespace inside foreign content, and that
    content must come back exactly as it was read.
    """
    etree.indent(root, space="  ")
    if metadata is not None:
        items = list(foreign)
        if items:
            depth = 1
            inner = "\n" + "  " * (depth + 1)
            outer = "\n" + "  " * depth
            if len(metadata):
                metadata[-1].tail = inner
            else:
                metadata.text = inner
            for i, text in enumerate(items):
                el = parse_foreign(text)
                el.tail = inner if i < len(items) - 1 else outer
                metadata.append(el)
    return etree.tostring(root, encoding="unicode") + "\n"


def vsv(tag: str) -> str:
    """Clark name of an element in the vsupervisor metadata namespace."""
    return f"{{{VSV_NS}}}{tag}"
