"""How many API connections may be open at once, derived from the file-descriptor limit.

Every open connection costs the supervisor a file descriptor. Without a cap, anyone who may
connect to the world-connectable read-only socket can open connections until the supervisor hits
RLIMIT_NOFILE, after which ``accept`` fails on *both* sockets and everything else that opens a
file (the journal, cgroup files, netlink, guests' sockets) fails too. Measured before the caps: a
flood of idle read-only connections from user nobody kept an admin's request on the read-write
socket waiting 28 s (until hypercorn's 30 s keep-alive timeout closed flood connections).

Theory of operation:

- At start the daemon raises the soft RLIMIT_NOFILE to the hard one (:func:`raise_nofile_limit`).
- Half of the limit is the API's (:func:`plan_caps`); the other half is reserved for the
  supervisor's own files, which grow with the number of guests. Within the API's half each socket
  has its own budget, so a flood of one socket never takes the other's connections: by default
  64 read-write connections (administrators and their automation, each holding at most an event
  stream) and 256 read-only ones (see :data:`DEFAULT_RO_MAX_CONNECTIONS`). When the limit is so
  low that the defaults (or the asked values) do not fit into the API's half, both are scaled
  down in proportion.
- A socket at its cap still accepts, answers ``503 too-many-connections`` in one non-blocking
  write and closes (:class:`ConnectionBudget` does the counting). Accepting keeps the listen
  backlog empty, so the kernel never parks connections that nobody will serve, and a client
  learns at once that it should come back later instead of hanging in ``connect``. The cost is
  one descriptor for the moment of the write, which the halving leaves room for.
"""

from __future__ import annotations

import resource

import attrs

#: read-write connections: administrators and their automation; a handful in practice, each
#: holding at most one event stream. 64 leaves room for several event followers and scripts.
DEFAULT_MAX_CONNECTIONS = 64

#: read-only connections. Their users are ``vsv`` read verbs of unprivileged users (one short
#: connection each, ~50 ms) and monitors following ``/v1/events`` (one long connection each).
#: 256 is far above what a host serves at once, yet bounds what a hostile local user can make
#: the supervisor hold to 256 descriptors and about 7 MiB (measured: 16 KiB of memory per idle
#: connection, 27 KiB once it has been answered and is kept alive), and with the 64 read-write
#: ones it fits in the common 1024 soft limit with half of that left for the supervisor, even
#: where the hard limit could not be raised.
DEFAULT_RO_MAX_CONNECTIONS = 256

#: descriptors the accept loops hold for a moment beyond the caps: the one of a connection that
#: is answered 503 and closed at once, one per socket
TRANSIENT = 2


@attrs.frozen
class CapPlan:
    """The caps of both sockets for a given descriptor limit."""

    nofile: int
    max_connections: int
    ro_max_connections: int
    #: whether the asked (or default) caps did not fit into the API's share and were scaled down
    scaled: bool


def api_share(nofile: int) -> int:
    """The descriptors the API's connections may use: half the limit, minus :data:`TRANSIENT`."""
    return max(nofile // 2 - TRANSIENT, 2)


def plan_caps(nofile: int, *, rw: int | None = None, ro: int | None = None) -> CapPlan:
    """The caps for the limit ``nofile``: the asked ones (``None``: the defaults) if they fit in
    :func:`api_share`, else both scaled down in proportion (at least 1 each)."""
    want_rw = DEFAULT_MAX_CONNECTIONS if rw is None else rw
    want_ro = DEFAULT_RO_MAX_CONNECTIONS if ro is None else ro
    if want_rw < 1 or want_ro < 1:
        raise ValueError("a connection cap must be at least 1")
    share = api_share(nofile)
    if want_rw + want_ro <= share:
        return CapPlan(nofile, want_rw, want_ro, scaled=False)
    total = want_rw + want_ro
    got_rw = max(1, want_rw * share // total)
    got_ro = max(1, want_ro * share // total)
    return CapPlan(nofile, got_rw, got_ro, scaled=True)


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE now (what the kernel enforces on ``accept`` and ``open``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; return (before, after).

    The soft limit (often 1024) exists for programs that still use ``select()``; the supervisor
    does not, and a higher limit gives the API's caps and the supervisor's own files room. A hard
    limit of "infinity" (which the kernel does not allow as a soft NOFILE) or a refusal leaves the
    soft limit as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


@attrs.frozen
class ConnectionStatistics:
    """One socket's connections (``GET /v1/supervisor`` → ``api``)."""

    #: the cap: connections beyond it are answered 503 and closed
    max_connections: int
    #: open now
    open: int
    #: the most that were open at once
    peak: int
    #: connections that got a slot and were served
    accepted: int
    #: connections answered 503 too-many-connections and closed at once (the socket was full)
    turned_away: int
    #: connections answered 403 forbidden: the peer is in another pid or mount namespace
    refused: int
    #: accept() failures for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    accept_errors: int


@attrs.define(eq=False)
class ConnectionBudget:
    """The open-connection count of one socket against its cap (pure accounting, no I/O).

    The accept loop calls :meth:`try_acquire` for every accepted connection: True means serve it
    and call :meth:`release` when it closes; False means answer 503 and close it.
    """

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    _open: int = attrs.field(default=0, init=False)
    _peak: int = attrs.field(default=0, init=False)
    _accepted: int = attrs.field(default=0, init=False)
    _turned_away: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _accept_errors: int = attrs.field(default=0, init=False)

    @property
    def open(self) -> int:
        return self._open

    def try_acquire(self) -> bool:
        """Take a slot for a new connection; False (and counted as turned away) when full."""
        if self._open >= self.limit:
            self._turned_away += 1
            return False
        self._open += 1
        self._accepted += 1
        self._peak = max(self._peak, self._open)
        return True

    def release(self) -> None:
        """Give back the slot of a connection that closed."""
        if self._open <= 0:
            raise RuntimeError("ConnectionBudget.release without a matching try_acquire")
        self._open -= 1

    def note_refused(self) -> None:
        """Count a connection answered 403 (its slot is still taken until it closes)."""
        self._refused += 1

    def note_accept_error(self) -> None:
        """Count an accept() that failed for lack of descriptors or memory."""
        self._accept_errors += 1

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            max_connections=self.limit,
            open=self._open,
            peak=self._peak,
            accepted=self._accepted,
            turned_away=self._turned_away,
            refused=self._refused,
            accept_errors=self._accept_errors,
        )


@attrs.frozen
class ApiStatistics:
    """Both sockets' connections and the descriptor limit they were planned for."""

    nofile_limit: int
    read_write: ConnectionStatistics | None
    read_only: ConnectionStatistics | None
