"""Named network namespaces, made without forking.

A guest with NICs gets its network namespace before its init exists, so that the network
subsystem can plumb the NICs in the guest's ``prepare`` hook and init starts with them in place.
The namespace is kept alive by a bind mount at ``/run/netns/NAME`` (where ``ip netns`` looks, so
an admin can ``ip netns exec`` into it); the same mechanism serves the daemon's sandbox mode.

Creation happens on a short-lived thread: ``unshare(CLONE_NEWNET)`` only changes the calling
thread, which then ends, so the supervisor's own threads never change namespace. This avoids the
cost of forking a Python process (tens of milliseconds) that ``pyroute2.netns.create`` pays.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from supervisor.errors import RuntimeFailure

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
NETNS_DIR = Path("/run/netns")
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> Path:
    """Where the named namespace is mounted."""
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    """Whether ``name`` is a mounted network namespace, not just a stale file in /run/netns.

    A bind-mounted namespace lives on nsfs, whose device differs from the tmpfs of /run.
    """
    path = netns_path(name)
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def _reserve(name: str) -> Path:
    """Create the empty mount point of a new namespace; RuntimeFailure when the name is taken."""
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
    except FileExistsError:
        raise RuntimeFailure(f"network namespace {name!r}: exists already ({path})") from None
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot create: {exc.strerror}") from exc
    return path


def _unshare_and_mount(name: str, path: Path) -> None:
    """Move the calling thread into a new network namespace and bind-mount it on ``path``."""
    _check(_libc.unshare(CLONE_NEWNET), f"unshare(CLONE_NEWNET) for {name}")
    source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
    _check(
        _libc.mount(source, str(path).encode(), None, MS_BIND, None),
        f"bind mount of network namespace {name} on {path}",
    )


def create_netns(name: str) -> Path:
    """Create the named network namespace (``lo`` down, nothing else), return its path.

    Raises RuntimeFailure when a namespace of that name exists already.
    """
    path = _reserve(name)
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            _unshare_and_mount(name, path)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=worker, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        _discard(path)
        raise failure[0]
    return path


def create_netns_here(name: str, inside: Callable[[], T]) -> tuple[Path, T]:
    """Create the named namespace from the calling thread, run ``inside()`` in it, come back.

    For a thread that already exists (a netlink worker): it saves the cost of starting one, and
    ``inside`` can open sockets that belong to the new namespace (a netlink socket keeps the
    namespace it was made in). The thread returns to its namespace before this returns, also
    on failure; if even that fails, the thread is left in an unknown namespace and
    :class:`ThreadLost` is raised (the caller must stop using the thread).
    """
    home = _open_own()
    try:
        path = _reserve(name)
        try:
            _unshare_and_mount(name, path)
            result = inside()
        except BaseException:
            _discard(path)
            _return(home)
            raise
        _return(home)
        return path, result
    finally:
        os.close(home)


def name_netns(name: str, source: str, inside: Callable[[], T]) -> tuple[Path, T]:
    """Name an existing network namespace (``source``: a ``/proc/PID/ns/net``) ``name``, as
    :func:`create_netns` would name a new one, and run ``inside()`` in it from this thread.

    For a guest in a user namespace of its own, whose network namespace must belong to that
    user namespace and so is made by the guest's first process, not by us.
    """
    path = _reserve(name)
    try:
        _check(
            _libc.mount(source.encode(), str(path).encode(), None, MS_BIND, None),
            f"bind mount of network namespace {source} on {path}",
        )
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return path, run_in_netns(fd, inside)
        finally:
            os.close(fd)
    except BaseException:
        _discard(path)
        raise


def run_in_netns(fd: int, fn: Callable[[], T]) -> T:
    """Run ``fn()`` with the calling thread in the namespace ``fd``, then bring it back.

    Used to open netlink sockets in a guest's namespace from a long-lived worker thread; the
    same ThreadLost rule as :func:`create_netns_here` applies.
    """
    home = _open_own()
    try:
        enter_netns(fd, "setns into a guest's network namespace")
        try:
            return fn()
        finally:
            _return(home)
    finally:
        os.close(home)


def enter_netns(fd: int, what: str = "setns into a network namespace") -> None:
    """Move the calling thread (only it) into the network namespace ``fd``."""
    _check(_libc.setns(fd, CLONE_NEWNET), what)


def _open_own() -> int:
    path = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class ThreadLost(RuntimeFailure):
    """A thread could not return to its own network namespace and must not be used again."""


def _return(home: int) -> None:
    if _libc.setns(home, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise ThreadLost(f"setns back to the thread's own namespace: {os.strerror(err)}")


def _discard(path: Path) -> None:
    """Undo a half-made namespace: unmount (if mounted) and remove the mount point."""
    _libc.umount2(str(path).encode(), MNT_DETACH)
    with contextlib.suppress(OSError):
        path.unlink()


def delete_netns(name: str) -> bool:
    """Unmount and remove the named namespace; False when there was none.

    The kernel frees the namespace (and the links still in it) once no process and no mount
    holds it any longer.
    """
    path = netns_path(name)
    if not path.exists():
        return False
    _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot remove: {exc.strerror}") from exc
    return True


def list_netns(prefix: str) -> list[str]:
    """Names of the mounted namespaces starting with ``prefix`` (for gc and leak checks)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


class SpareNetns(Generic[T]):
    """One network namespace made ahead of need, named when a guest takes it.

    Creating a namespace costs the kernel about a millisecond (loopback, per-namespace
    tables), which a guest start would otherwise wait for. The spare is made by a long-lived
    daemon thread that unshares, runs ``prepare()`` inside (which opens a netlink socket there
    and brings ``lo`` up), keeps a descriptor of the namespace and returns to its own namespace
    (so it pins none). :meth:`take` then only bind-mounts that descriptor at
    ``/run/netns/NAME`` (tens of microseconds) and asks the thread for the next spare without
    waiting. An unnamed spare is held only by this process's descriptors, so it dies with the
    process and can never be left behind.
    """

    def __init__(self, prepare: Callable[[], T], discard: Callable[[T], None]) -> None:
        self._prepare = prepare
        self._discard = discard
        self._lock = threading.Lock()
        self._ready: tuple[int, T] | None = None
        self._making = False
        self._closed = False
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def refill(self) -> None:
        """Have a spare made unless one is ready or being made (does not wait)."""
        with self._lock:
            if self._closed or self._ready is not None or self._making:
                return
            self._making = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="netns-spare", daemon=True)
                self._thread.start()
        self._requests.put(True)

    def _serve(self) -> None:
        # a background chore: never preempt the event loop's thread for it (nice is per thread)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        home = _open_own()
        try:
            while self._requests.get():
                if not self._make(home):
                    return
        finally:
            os.close(home)
            with self._lock:
                self._making = False

    def _make(self, home: int) -> bool:
        """Make one spare; False when the thread could not return home (it must end)."""
        made: tuple[int, T] | None = None
        fd = -1
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) for a spare namespace")
            fd = _open_own()
            made, fd = (fd, self._prepare()), -1
        except Exception:
            made = None  # take() falls back to making a namespace on demand
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            _return(home)
        except ThreadLost:
            return False
        finally:
            with self._lock:
                self._making = False
                if made is not None and not self._closed:
                    self._ready, made = made, None
            if made is not None:
                os.close(made[0])
                self._discard(made[1])
        return True

    def take(self, name: str) -> tuple[Path, T] | None:
        """Name the spare ``name`` (as :func:`create_netns` would) and start the next one.

        None when no spare is ready (the caller creates the namespace itself); RuntimeFailure
        when the name is taken (the spare is kept for the next guest).
        """
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            self.refill()
            return None
        fd, value = ready
        try:
            path = _reserve(name)
        except BaseException:
            with self._lock:
                if self._ready is None and not self._closed:
                    self._ready, ready = ready, None
            if ready is not None:
                os.close(fd)
                self._discard(value)
            raise
        try:
            _check(
                _libc.mount(
                    f"/proc/self/fd/{fd}".encode(), str(path).encode(), None, MS_BIND, None
                ),
                f"bind mount of network namespace {name} on {path}",
            )
        except BaseException:
            _discard(path)
            self._discard(value)
            raise
        finally:
            os.close(fd)
        self.refill()
        return path, value

    def close(self) -> None:
        """Drop the spare (if any) and end the thread; one being made is dropped when done."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, None
        self._requests.put(False)
        if ready is not None:
            os.close(ready[0])
            self._discard(ready[1])
