"""Durable state on disk: definitions in the state dir, runtime records in the run dir.

The state dir holds one XML document per domain and per network, exactly as ``vsv format``
prints them, so an admin can read, diff and back them up, and a ``format`` file with the number
of the format they are stored in (:data:`STORE_FORMAT`); a state dir without one is read as
format 1 and migrated once (:func:`migrate_domain`). The run dir holds one JSON record per
running guest (pids, namespace identities, cgroup, what was plumbed): it is what lets a
supervisor that was killed find and re-adopt, or clean up, what its predecessor left.

Every write is atomic (temporary file in the same directory, fsync, rename, fsync of the
directory): a crash or a full disk leaves either the old file or the new one, never a torn one,
and the temporary file is removed when the write fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs

from supervisor.errors import InvalidDocument, RuntimeFailure, VsvError
from supervisor.model import Domain, Network

T = TypeVar("T")

log = logging.getLogger("vsv.store")

#: The format of the stored documents. 1: an ``<interface type='ethernet'>``'s top-level
#: ``<ip>`` and ``<route>`` configured the host end of its veth. 2: they configure the guest's
#: end and ``<source><ip>``/``<source><route>`` the host's, as libvirt reads them.
STORE_FORMAT = 2


def migrate_domain(domain: Domain) -> Domain | None:
    """A domain stored in format 1 as format 2 says the same thing (None: nothing changes).

    A format-1 store holds libvirt's spelling, so read as format 2 its ethernet NICs would
    silently move their addresses and routes from the host's end into the guest. The guest
    keeps what it had instead: they move into ``<source>``, which means the host end (for
    libvirt too), with the ``/32`` format 1 gave an address without a prefix made explicit
    (format 2 infers the address's natural prefix, as libvirt does).
    """
    changed = False
    interfaces = []
    for iface in domain.interfaces:
        if iface.type == "ethernet" and (iface.ips or iface.routes):
            iface = attrs.evolve(
                iface,
                ips=(),
                routes=(),
                host_ips=(
                    *iface.host_ips,
                    *(
                        attrs.evolve(ip, prefix=32 if ip.prefix is None else ip.prefix)
                        for ip in iface.ips
                    ),
                ),
                host_routes=(*iface.host_routes, *iface.routes),
            )
            changed = True
        interfaces.append(iface)
    return attrs.evolve(domain, interfaces=tuple(interfaces)) if changed else None


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, whole.

    On failure (ENOSPC, EIO...) the temporary file is removed and the old file left as it was;
    the OSError is translated into :class:`RuntimeFailure` naming the path. ``durable=False``
    skips the fsyncs: for run records, which describe processes that a power loss ends anyway,
    atomicity is what matters and the fsyncs (milliseconds on a disk) would sit on every
    guest's start path.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RuntimeFailure(f"{path}: cannot write: {exc.strerror or exc}") from exc


def _ensure_dir(path: Path, mode: int) -> Path:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot create directory: {exc.strerror or exc}") from exc
    return path


@attrs.define(eq=False)
class ConfigStore:
    """Definitions of domains and networks under ``state_dir``.

    Loading is lenient per file (one broken document must not stop the supervisor from running
    the others): :meth:`load_domains` returns the problems beside the definitions it could read.
    """

    state_dir: Path

    def __attrs_post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)

    @property
    def domains_dir(self) -> Path:
        return self.state_dir / "domains"

    @property
    def networks_dir(self) -> Path:
        return self.state_dir / "networks"

    @property
    def format_file(self) -> Path:
        return self.state_dir / "format"

    def ensure(self) -> None:
        """Create the directories (root-only, as the documents may name host paths); a new
        state dir is in the current format."""
        new = not self.domains_dir.is_dir()
        _ensure_dir(self.state_dir, 0o700)
        _ensure_dir(self.domains_dir, 0o700)
        _ensure_dir(self.networks_dir, 0o700)
        if new and not self.format_file.exists():
            self._write_format()

    def stored_format(self) -> int:
        """The format of the documents here: 1 for a state dir from before the file existed."""
        try:
            return int(self.format_file.read_text().strip())
        except FileNotFoundError:
            return 1 if self.domains_dir.is_dir() else STORE_FORMAT
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"{self.format_file}: cannot read the format: {exc}") from exc

    def _write_format(self) -> None:
        atomic_write(self.format_file, f"{STORE_FORMAT}\n".encode(), mode=0o600)

    def save_domain(self, domain: Domain) -> None:
        from supervisor.xml import format_domain

        self.ensure()
        atomic_write(self.domains_dir / f"{domain.name}.xml", format_domain(domain).encode())

    def save_network(self, network: Network) -> None:
        from supervisor.xml import format_network

        self.ensure()
        atomic_write(self.networks_dir / f"{network.name}.xml", format_network(network).encode())

    def remove_domain(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.domains_dir / f"{name}.xml").unlink()

    def remove_network(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.networks_dir / f"{name}.xml").unlink()

    def load_domains(self) -> tuple[list[Domain], list[str]]:
        """Every stored domain, and one message per file that could not be read.

        A state dir of an older format is migrated first (each changed document rewritten,
        and said in the log), then marked as current.
        """
        from supervisor.xml import parse_domain

        found, problems = self._load(self.domains_dir, parse_domain)
        version = self.stored_format()
        if version > STORE_FORMAT:
            raise RuntimeFailure(
                f"{self.format_file}: format {version} is newer than this supervisor's "
                f"({STORE_FORMAT}): refusing to read its definitions"
            )
        if version < STORE_FORMAT:
            found, failed = self._migrate(found, version)
            problems += failed
            if not failed:
                self._write_format()
        return found, problems

    def _migrate(self, domains: list[Domain], version: int) -> tuple[list[Domain], list[str]]:
        out: list[Domain] = []
        failed: list[str] = []
        for domain in domains:
            migrated = migrate_domain(domain)
            if migrated is not None:
                try:
                    self.save_domain(migrated)
                except VsvError as exc:
                    failed.append(f"migrating {domain.name}: {exc}")
                log.warning(
                    "domain %s: stored in format %d, its ethernet interfaces' <ip> and <route> "
                    "configured the host's end: moved into <source> (format %d: the top-level "
                    "ones configure the guest's end, as libvirt reads them)",
                    domain.name,
                    version,
                    STORE_FORMAT,
                )
                domain = migrated
            out.append(domain)
        return out, failed

    def load_networks(self) -> tuple[list[Network], list[str]]:
        """Every stored network, and one message per file that could not be read."""
        from supervisor.xml import parse_network

        return self._load(self.networks_dir, parse_network)

    def _load(self, directory: Path, parse: Callable[..., T]) -> tuple[list[T], list[str]]:
        found: list[T] = []
        problems: list[str] = []
        for path in self._documents(directory):
            try:
                found.append(parse(path.read_bytes(), path=str(path)))
            except InvalidDocument as exc:
                problems.extend(exc.problems)
            except OSError as exc:
                problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return found, problems

    @staticmethod
    def _documents(directory: Path) -> Iterator[Path]:
        if not directory.is_dir():
            return iter(())
        return iter(sorted(p for p in directory.glob("*.xml") if not p.name.startswith(".")))


@attrs.define(eq=False)
class RunStore:
    """Runtime records (JSON) of running guests and networks under ``run_dir``.

    A record is written once a guest is running and removed once everything it held has been
    released, so a record found at start-up means "this may still be alive or may have left
    things behind".
    """

    run_dir: Path

    def __attrs_post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    def _dir(self, kind: str) -> Path:
        return self.run_dir / kind

    def ensure(self) -> None:
        _ensure_dir(self.run_dir, 0o700)
        for kind in ("domains", "networks"):
            _ensure_dir(self._dir(kind), 0o700)

    def write(self, kind: str, name: str, record: dict[str, Any]) -> None:
        """Write one record; the directories are made only when the write finds them missing.

        Two records are written per guest start, so checking the three directories before
        each (six mkdir and stat calls) would be most of the cost of a write.
        """
        data = json.dumps(record, sort_keys=True, indent=1).encode()
        path = self._dir(kind) / f"{name}.json"
        try:
            atomic_write(path, data, mode=0o600, durable=False)
        except RuntimeFailure as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
            self.ensure()  # the first record, or the run dir was removed under us
            atomic_write(path, data, mode=0o600, durable=False)

    def remove(self, kind: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._dir(kind) / f"{name}.json").unlink()

    def read_all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind``; unreadable ones are returned as ``{"corrupt": reason}``."""
        out: dict[str, dict[str, Any]] = {}
        directory = self._dir(kind)
        if not directory.is_dir():
            return out
        for path in sorted(directory.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                value = json.loads(path.read_text())
                out[path.stem] = value if isinstance(value, dict) else {"corrupt": "not an object"}
            except (OSError, ValueError) as exc:
                out[path.stem] = {"corrupt": str(exc)}
        return out
