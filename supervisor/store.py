"""Durable state on disk: definitions in the state dir, runtime records in the run dir.

The state dir holds one XML document per domain and per network, exactly as ``vsv format``
prints them, so an admin can read, diff and back them up. The run dir holds one JSON record per
running guest (pids, namespace identities, cgroup, what was plumbed): it is what lets a
supervisor that was killed find and re-adopt, or clean up, what its predecessor left.

Every write is atomic (temporary file in the same directory, fsync, rename, fsync of the
directory): a crash or a full disk leaves either the old file or the new one, never a torn one,
and the temporary file is removed when the write fails.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs

from supervisor.errors import InvalidDocument, RuntimeFailure
from supervisor.model import Domain, Network

T = TypeVar("T")


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

    def ensure(self) -> None:
        """Create the directories (root-only, as the documents may name host paths)."""
        _ensure_dir(self.state_dir, 0o700)
        _ensure_dir(self.domains_dir, 0o700)
        _ensure_dir(self.networks_dir, 0o700)

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
        """Every stored domain, and one message per file that could not be read."""
        from supervisor.xml import parse_domain

        return self._load(self.domains_dir, parse_domain)

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
