"""The project's exception tree.

One root (:class:`VsvError`) so callers can catch everything the supervisor raises on purpose;
each subclass also inherits the builtin it resembles, so code that expects a ``ValueError`` or an
``OSError`` keeps working. Foreign errors (lxml, pyroute2, OSError from cgroup files) are
translated into these at the edge that calls the foreign code.
"""

from __future__ import annotations


class VsvError(Exception):
    """Root of every error the supervisor raises deliberately."""


class InvalidDocument(VsvError, ValueError):
    """An XML document (or a model built by hand) breaks a rule.

    ``problems`` holds every problem found, each already formatted as ``PATH:LINE: message`` (or
    ``LINE: message`` when the document has no path), so a CLI can print them one per line.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConflictError(VsvError, ValueError):
    """A definition collides with another one (same name, uuid, context id, address...)."""


class NotFound(VsvError, LookupError):
    """No domain or network with that name."""


class InvalidOperation(VsvError, RuntimeError):
    """The operation is not allowed in the object's current state (start a running guest...)."""


class RuntimeFailure(VsvError, OSError):
    """The kernel or a helper program refused what the supervisor asked of it."""
