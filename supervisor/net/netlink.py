"""The netlink edge: one pyroute2 socket per network namespace, kept open, used from a thread.

pyroute2 0.9 opens its netlink socket lazily, per thread, in whatever namespace that thread is in
at first use. So a namespace gets a :class:`NetnsWorker`: one thread that enters the namespace
(``setns``) once, opens one ``IPRoute`` there, and then runs every job submitted to it. trio code
awaits :meth:`NetnsWorker.call` and never blocks its loop. Opening a worker costs about a
millisecond (a thread and a socket), far less than pyroute2's own ``netns=`` mode, which forks a
helper process (13-14 ms). sysctl writes run in the same thread, because ``/proc/sys/net`` shows
the namespace of the thread that opens it.

Guests do not get a worker of their own: the host's worker makes a guest's namespace (and a raw
netlink socket in it, :mod:`supervisor.net.rtnl`) and configures both ends of its veth in one
job. A job that enters another namespace must bring the thread back (``supervisor.nsutil``); if
that ever fails (:class:`~supervisor.nsutil.ThreadLost`), the worker stops serving.

Foreign errors (``NetlinkError``, ``OSError``) are translated into the project's errors here.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from supervisor.errors import ConflictError, RuntimeFailure
from supervisor.nsutil import ThreadLost, enter_netns

T = TypeVar("T")

Job = tuple["concurrent.futures.Future[Any]", Callable[[Any], Any]]


def netns_path(*, name: str | None = None, pid: int | None = None) -> str:
    """The path of a named namespace (``ip netns``) or of a process's namespace."""
    if name is not None:
        return f"/run/netns/{name}"
    if pid is not None:
        return f"/proc/{pid}/ns/net"
    raise ValueError("give a namespace name or a pid")


def translate(exc: BaseException, what: str) -> Exception:
    """A project error for a failed netlink or sysctl operation, naming what was attempted."""
    code = getattr(exc, "code", None) if isinstance(exc, NetlinkError) else None
    if code is None and isinstance(exc, OSError):
        code = exc.errno
    text = os.strerror(code) if isinstance(code, int) else str(exc)
    if code == errno.EEXIST:
        return ConflictError(f"{what}: already exists ({text})")
    return RuntimeFailure(f"{what}: {text}")


class NetnsWorker:
    """A thread pinned to one network namespace that owns one ``IPRoute`` socket there.

    Jobs are functions of the ``IPRoute``; they run one at a time, in submission order (the
    kernel serialises rtnetlink changes anyway).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._calls = 0
        self._lost: BaseException | None = None

    @classmethod
    async def open(cls, path: str | None) -> NetnsWorker:
        """Start the worker; raises RuntimeFailure if the namespace cannot be entered."""
        self = cls(path)
        fd = -1
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise RuntimeFailure(f"cannot open network namespace {path}: {exc}") from exc
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(fd, ready), name=f"netns:{path}", daemon=True
        )
        self._thread.start()
        await self._wait(ready)
        return self

    def _serve(self, fd: int, ready: concurrent.futures.Future[None]) -> None:
        try:
            if fd >= 0:
                enter_netns(fd)  # this thread only; it stays in the namespace until it ends
            ipr = IPRoute()
            ipr.link_lookup(ifname="lo")  # open the socket now, in this namespace
        except BaseException as exc:
            ready.set_exception(exc)
            return
        finally:
            if fd >= 0:
                os.close(fd)
        ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fut, fn = job
                try:
                    fut.set_result(fn(ipr))
                except ThreadLost as exc:
                    # the thread is stuck in some other namespace: serving on would apply the
                    # next jobs' sysctls there; later calls fail with "closed"
                    fut.set_exception(exc)
                    self._failed(exc)
                    return
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            ipr.close()

    def _failed(self, exc: BaseException) -> None:
        # fail the jobs already queued; the thread ends, so call() refuses new ones
        self._lost = exc
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job[0].set_exception(exc)

    @staticmethod
    async def _wait(fut: concurrent.futures.Future[T], *, deliver: bool = False) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        fut.add_done_callback(lambda _: token.run_sync_soon(done.set))
        # netlink jobs are short and must not be abandoned halfway: the caller would not know
        # what exists; a cancellation takes effect right after the job, or (deliver) at the
        # caller's next checkpoint, so that it can record what the job made first.
        with trio.CancelScope(shield=True):
            await done.wait()
        if not deliver:
            await trio.lowlevel.checkpoint_if_cancelled()
        return fut.result()

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(ipr)`` without waiting: the caller can work meanwhile, then :meth:`wait`."""
        if self._thread is None or not self._thread.is_alive() or self._lost is not None:
            raise RuntimeFailure(f"netlink worker for {self.path} is closed ({self._lost})")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls += 1
        self._jobs.put((fut, fn))
        return fut

    async def wait(self, fut: concurrent.futures.Future[T], *, deliver: bool = False) -> T:
        """The result of a submitted job (see :meth:`call` for ``deliver``)."""
        return await self._wait(fut, deliver=deliver)

    async def call(self, fn: Callable[[Any], T], *, deliver: bool = False) -> T:
        """Run ``fn(ipr)`` in the namespace's thread and return its result.

        A cancellation that arrives while the job runs is raised once it is done; with
        ``deliver`` the result is returned anyway and the cancellation comes at the caller's
        next checkpoint (for jobs that create something the caller must record to undo).
        """
        return await self._wait(self.submit(fn), deliver=deliver)

    async def aclose(self, *, wait: bool = False) -> None:
        """Stop the thread, which closes the socket after the jobs already queued.

        Not waiting is the default: the thread finishes on its own within microseconds, and a
        join would cost another thread hop on every guest start.
        """
        if self._thread is None:
            return
        self._jobs.put(None)
        thread, self._thread = self._thread, None
        if wait:
            await trio.to_thread.run_sync(thread.join)
        else:
            await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, Any]:
        """Calls made so far, for benchmarks and diagnostics."""
        return {"path": self.path, "calls": self._calls}


# ---- jobs: plain functions of an IPRoute, run inside a worker thread ----------------------


def link_index(ipr: Any, name: str) -> int | None:
    """The index of a link by name, or None."""
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_kind(ipr: Any, name: str) -> str | None:
    """A link's kind (``bridge``, ``veth``...; None for a device without one, or no link)."""
    try:
        (link,) = ipr.link("get", ifname=name)
    except NetlinkError:
        return None
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind) if kind is not None else None


def sysctl_write(key: str, value: str) -> None:
    """Write ``net.*`` sysctl ``key`` (dotted) in the calling thread's namespace."""
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise translate(exc, f"sysctl {key}={value}") from exc


def sysctl_read(key: str) -> str:
    """Read a ``net.*`` sysctl in the calling thread's namespace."""
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def used_subnets(ipr: Any) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    """Every routed or addressed subnet in the namespace with the device it is on.

    The default route and host routes of the local table do not count: libvirt's collision
    check is about networks another interface already serves.
    """
    names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    out: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for route in ipr.get_routes(table=254):
        dst, plen = route.get("dst"), route["dst_len"]
        if dst is None or plen == 0:
            continue
        out.append(
            (ipaddress.ip_network(f"{dst}/{plen}", strict=False), names.get(route.get("oif"), "?"))
        )
    for addr in ipr.get_addr():
        net = ipaddress.ip_network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False)
        if net.prefixlen < net.max_prefixlen:
            out.append((net, names.get(addr["index"], "?")))
    return out


def create_bridge(
    ipr: Any, name: str, *, mac: str | None, mtu: int | None, stp: bool, delay: int | None
) -> int:
    """Create a bridge (down) and return its index."""
    spec: dict[str, Any] = {"ifname": name, "kind": "bridge", "br_stp_state": 1 if stp else 0}
    if delay is not None:
        spec["br_forward_delay"] = delay * 100  # centiseconds in the kernel's interface
    if mac:
        spec["address"] = mac
    if mtu:
        spec["mtu"] = mtu
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        raise translate(exc, f"create bridge {name}") from exc
    index = link_index(ipr, name)
    assert index is not None
    return index


def delete_link(ipr: Any, name: str) -> bool:
    """Delete a link by name; False if it was already gone."""
    index = link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise translate(exc, f"delete {name}") from exc
    return True


def add_address(ipr: Any, name: str, address: str, prefix: int) -> None:
    """Add ``address/prefix`` to a link."""
    index = link_index(ipr, name)
    try:
        ipr.addr("add", index=index, address=address, prefixlen=prefix)
    except NetlinkError as exc:
        raise translate(exc, f"add {address}/{prefix} to {name}") from exc


def set_up(
    ipr: Any, name: str, *, master: str | None = None, mtu: int | None = None, up: bool = True
) -> None:
    """Bring a link up, optionally enslaving it to ``master`` and setting its MTU first
    (``up`` False: only those, the link stays down)."""
    index = link_index(ipr, name)
    if index is None:
        raise RuntimeFailure(f"link {name} does not exist")
    try:
        if master is not None:
            master_index = link_index(ipr, master)
            if master_index is None:
                raise RuntimeFailure(f"bridge {master} does not exist")
            ipr.link("set", index=index, master=master_index)
        if mtu:
            ipr.link("set", index=index, mtu=mtu)
        if up:
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise translate(exc, f"bring up {name}") from exc


def link_mtu(ipr: Any, name: str) -> int:
    """A link's MTU."""
    (link,) = ipr.link("get", ifname=name)
    return int(link.get("mtu"))


def add_route(ipr: Any, dst: str, *, gateway: str | None = None, dev: str | None = None) -> None:
    """Add a route (``dst`` in CIDR form or ``default``) via a gateway and/or a device."""
    spec: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if gateway:
        spec["gateway"] = gateway
    if dev:
        spec["oif"] = link_index(ipr, dev)
        if not gateway:
            spec["scope"] = 253  # link
    try:
        ipr.route("add", **spec)
    except NetlinkError as exc:
        raise translate(exc, f"add route {dst} via {gateway or dev}") from exc


def create_veth(ipr: Any, host_if: str, guest_if: str, guest_ns_fd: int, mac: str | None) -> None:
    """A veth pair whose peer is created directly in the guest's namespace.

    Creating the peer where it belongs avoids moving a link between namespaces, which costs an
    RCU grace period (~16 ms) per NIC.
    """
    peer: dict[str, Any] = {"ifname": guest_if, "net_ns_fd": guest_ns_fd}
    if mac:
        peer["address"] = mac
    try:
        ipr.link("add", ifname=host_if, kind="veth", peer=peer)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise ConflictError(
                f"cannot create veth {host_if}/{guest_if}: {guest_if} already exists in the guest"
            ) from exc
        raise translate(exc, f"create veth {host_if}") from exc


def create_tap(ipr: Any, name: str, mac: str) -> None:
    """A persistent tap device (for VM-style guests) with the given MAC."""
    try:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        ipr.link("set", index=link_index(ipr, name), address=mac)
    except NetlinkError as exc:
        raise translate(exc, f"create tap {name}") from exc


def default_route_dev(ipr: Any) -> str | None:
    """The device of the IPv4 default route, if there is one."""
    for route in ipr.get_routes(family=2, table=254):
        if route["dst_len"] == 0 and route.get("oif"):
            (link,) = ipr.link("get", index=route.get("oif"))
            return str(link.get("ifname"))
    return None


def link_networks(ipr: Any, name: str) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses (with their subnets) on a link."""
    index = link_index(ipr, name)
    if index is None:
        raise RuntimeFailure(f"link {name} does not exist")
    return [
        ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
        for a in ipr.get_addr(family=2, index=index)
    ]
