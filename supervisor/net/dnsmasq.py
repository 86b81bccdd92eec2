"""DHCP and DNS for a network by a real dnsmasq, supervised as a trio task.

The configuration is generated (pure) from the network model into files in the caller's run
dir, all named ``<prefix>-<network>.*`` so a leak check finds the process by its command line.
dnsmasq runs in the foreground as a child of the supervisor, inside the host namespace; if it
dies it is started again (with backoff) on the same lease file, so guests keep their addresses.
Static hosts (the network's ``<dhcp><host>`` entries plus the reservations of running guests)
live in a hosts file that dnsmasq re-reads on SIGHUP, so a guest's reservation is added live.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import trio

from supervisor.errors import RuntimeFailure
from supervisor.model import DhcpHost, DhcpLease, DnsSrv, Network, NetworkIp
from supervisor.net.nftables import lease_hook_script
from supervisor.net.runner import in_netns

DNSMASQ = "/usr/sbin/dnsmasq"


@attrs.frozen
class DnsmasqFiles:
    """Where one network's dnsmasq keeps its files."""

    conf: Path
    hosts: Path
    addn_hosts: Path
    leases: Path
    pid: Path
    log: Path
    #: the ``dhcp-script`` that lets leased addresses through the network's anti-spoofing guard
    hook: Path

    @classmethod
    def in_dir(cls, run_dir: Path, prefix: str, network: str) -> DnsmasqFiles:
        """The file set for a network under ``run_dir``."""
        base = f"{prefix}-{network}"
        return cls(
            conf=run_dir / f"{base}.conf",
            hosts=run_dir / f"{base}.hostsfile",
            addn_hosts=run_dir / f"{base}.addnhosts",
            leases=run_dir / f"{base}.leases",
            pid=run_dir / f"{base}.pid",
            log=run_dir / f"{base}.log",
            hook=run_dir / f"{base}.leasehook",
        )

    def remove(self) -> None:
        """Remove every file of the set (and a half-written ``.tmp``): a network that stopped
        cleanly leaves nothing in the run dir. Its leases go too; a guest that runs on keeps
        its address, which the supervisor reserves again when the network starts."""
        for path in attrs.astuple(self, recurse=False):
            for name in (path, path.with_name(path.name + ".tmp")):
                name.unlink(missing_ok=True)


#: the upstream servers of a network in the supervisor's own namespace (libvirt's)
HOST_RESOLV_CONF = "/etc/resolv.conf"
#: a setting that says "derive the upstream resolv.conf from the host namespace"
UPSTREAM_DERIVED = "derived"


def upstream_resolv_file(
    netns: str | None, exists: Callable[[str], bool] = os.path.exists
) -> str | None:
    """The resolv.conf whose servers a network's dnsmasq forwards to, for a host namespace.

    The supervisor's own namespace: the host's ``/etc/resolv.conf``, which is what libvirt's
    dnsmasq reads (it sets no ``resolv-file``). A named namespace (``/run/netns/NAME``, the
    sandbox mode): ``/etc/netns/NAME/resolv.conf``, the file ``ip netns exec NAME`` shows its
    programs as their resolv.conf, when it exists; otherwise None (no upstream at all), since the
    host's resolvers are not the sandbox's and its queries must not go to them.
    """
    if netns is None:
        return HOST_RESOLV_CONF
    parent, _, name = netns.rstrip("/").rpartition("/")
    if parent == "/run/netns" and name:
        candidate = f"/etc/netns/{name}/resolv.conf"
        if exists(candidate):
            return candidate
    return None


def wants_dns(network: Network) -> bool:
    """Whether the network's dnsmasq answers DNS (``<dns enable='no'>`` turns it off)."""
    return network.dns_enable is not False


def wants_dnsmasq(network: Network) -> bool:
    """Whether the network runs a dnsmasq: it has an ``<ip>``, and DNS or DHCP to serve. An
    IPv4 ``<ip>`` always has DHCP for the addresses reserved for guests (:func:`config_text`);
    with DNS off, an IPv6-only network without ``<dhcp>`` runs none, so sends no router
    advertisements either (libvirt's behaviour)."""
    if not network.ips:
        return False
    return (
        wants_dns(network)
        or any(ip.family == "ipv4" for ip in network.ips)
        or _dhcp_ip(network, "ipv6") is not None
    )


def lease_text(lease: DhcpLease | None) -> str | None:
    """A lease time as dnsmasq reads it (``infinite``, ``90s``, ``30m``, ``2h``), or None."""
    if lease is None:
        return None
    if not lease.expiry:
        return "infinite"
    return f"{lease.expiry}{lease.unit[0]}"


def _srv_line(srv: DnsSrv) -> str:
    """``srv-host=_service._protocol[.domain][,target[,port[,priority[,weight]]]]``: dnsmasq's
    fields are positional, so one left out before one given gets dnsmasq's default (port 1,
    priority 0), as libvirt writes it; a target of ``.`` (no such service) has no fields."""
    line = f"srv-host=_{srv.service}._{srv.protocol}"
    if srv.domain:
        line += f".{srv.domain}"
    if srv.target and srv.target != ".":
        line += f",{srv.target}"
        if srv.port or srv.priority or srv.weight:
            line += f",{srv.port or 1}"
        if srv.priority or srv.weight:
            line += f",{srv.priority or 0}"
        if srv.weight:
            line += f",{srv.weight}"
    return line


def _dhcp_ip(network: Network, family: str) -> NetworkIp | None:
    """The one ``<ip>`` of a family that serves DHCP (a range or a host), if any."""
    return next(
        (ip for ip in network.ips if ip.family == family and (ip.dhcp_ranges or ip.dhcp_hosts)),
        None,
    )


def config_text(
    network: Network,
    bridge: str,
    files: DnsmasqFiles,
    *,
    resolv_file: str | None = None,
    lease_hook: bool = False,
) -> str:
    """The dnsmasq configuration for a network, with libvirt's meaning for each element.

    Upstream DNS: the servers of ``resolv_file`` (:func:`upstream_resolv_file`), as libvirt's
    dnsmasq uses the host's resolv.conf, unless a ``<forwarder addr>`` without a domain takes
    every unclaimed query (``no-resolv``, as libvirt), the network is isolated (no
    ``<forward>``: libvirt's ``no-resolv``, so DNS is no channel out), or there is no file
    (None: the sandbox's case, where nothing is forwarded). ``<forwarder domain addr>``
    forwards that domain there; ``<forwarder domain>`` alone keeps it local (``#``).
    ``<dns enable='no'>``: no DNS at all (``port=0``), DHCP still served.
    ``<domain localOnly='yes'>``: the domain is never forwarded (``local=``);
    ``forwardPlainNames='no'``: names without a dot are never forwarded (``domain-needed``).
    IPv4 DHCP ranges with their lease time, static-only service when there are only hosts;
    IPv6: a DHCPv6 range (or static service) with router advertisements (``enable-ra``), or,
    without DHCP, router advertisements for SLAAC (``ra-only``) on each IPv6 ``<ip>``.
    ``lease_hook``: dnsmasq runs ``files.hook`` for every lease it makes, renews, replays at its
    start or drops (:func:`supervisor.net.nftables.lease_hook_script`).
    """
    dns = wants_dns(network)
    isolated = network.forward is None
    lines = [
        f"# generated by vsupervisor for network {network.name}; edits are overwritten",
        "strict-order",
    ]
    no_resolv = resolv_file is None or isolated
    if not dns:
        lines.append("port=0")
        no_resolv = True
    else:
        for fwd in network.dns_forwarders:
            domain = f"/{fwd.domain}/" if fwd.domain else ""
            lines.append(f"server={domain}{fwd.addr or '#'}")
            if fwd.addr and not fwd.domain:
                no_resolv = True
    lines.append("no-resolv" if no_resolv else f"resolv-file={resolv_file}")
    if network.domain_name:
        dom = network.domain_name
        if network.domain_local_only:
            lines.append(f"local=/{dom}/")
        lines += [f"domain={dom}", "expand-hosts"]
    if dns and network.dns_forward_plain_names is False:
        lines += ["domain-needed", "local=//"]
    lines += [
        f"pid-file={files.pid}",
        "except-interface=lo",
        "bind-dynamic",
        f"interface={bridge}",
        "user=root",
        "log-facility=-",
    ]
    if isolated:
        # no default route that cannot work; IPv6 RAs with a router lifetime of 0 (libvirt)
        lines.append("dhcp-option=3")
        if any(ip.family == "ipv6" for ip in network.ips):
            lines.append("ra-param=*,0,0")
    if dns:
        lines += [f"txt-record={t.name},{t.value}" for t in network.dns_txts]
        lines += [_srv_line(srv) for srv in network.dns_srvs]

    lease_max = 0
    # IPv4: the <ip> with DHCP or else the first one, whose static-only service hands running
    # guests the addresses the supervisor reserved for them (their NICs are configured with
    # them anyway; a DHCP client in the guest gets the same); IPv6: only with <dhcp>
    v4 = _dhcp_ip(network, "ipv4") or next((i for i in network.ips if i.family == "ipv4"), None)
    v6 = _dhcp_ip(network, "ipv6")
    for ip in (v4, v6):
        if ip is None:
            continue
        iface = ipaddress.ip_interface(f"{ip.address}/{ip.prefix}")
        # dnsmasq wants a netmask for IPv4 and a prefix length for IPv6
        size = str(iface.network.netmask) if ip.family == "ipv4" else str(ip.prefix)
        for r in ip.dhcp_ranges:
            lease = lease_text(r.lease)
            lines.append(f"dhcp-range={r.start},{r.end},{size}" + (f",{lease}" if lease else ""))
            lease_max += int(ipaddress.ip_address(r.end)) - int(ipaddress.ip_address(r.start)) + 1
        if not ip.dhcp_ranges:
            # static-only service: only hosts from the hosts file get addresses
            static = f"dhcp-range={ip.address},static"
            lines.append(static if ip.family == "ipv4" else f"{static},{ip.prefix}")
        if ip.family == "ipv4":
            lines += ["dhcp-no-override", "dhcp-authoritative"]
            if ip.bootp_file:
                server = f",,{ip.bootp_server}" if ip.bootp_server else ""
                lines.append(f"dhcp-boot={ip.bootp_file}{server}")
    for ip in network.ips:
        if ip.family == "ipv4" and ip.tftp_root:
            lines += ["enable-tftp", f"tftp-root={ip.tftp_root}"]
    if lease_max:
        lines.append(f"dhcp-lease-max={lease_max}")
    if v4 is not None or v6 is not None:
        lines += [f"dhcp-leasefile={files.leases}", f"dhcp-hostsfile={files.hosts}"]
        if lease_hook:
            lines += [f"dhcp-script={files.hook}", "script-on-renewal"]
    if dns:
        lines.append(f"addn-hosts={files.addn_hosts}")
    if network.mtu:
        lines.append(f"dhcp-option=option:mtu,{network.mtu}")
    if v6 is not None:
        lines.append("enable-ra")
    else:
        lines += [f"dhcp-range={ip.address},ra-only" for ip in network.ips if ip.family == "ipv6"]
    return "\n".join(lines) + "\n"


def hosts_text(hosts: Iterable[DhcpHost]) -> str:
    """dhcp-hostsfile lines, as libvirt writes them: IPv4 ``mac,ip[,name][,lease]`` (or
    ``name,ip``); IPv6 ``id:DUID[,name],[ip][,lease]`` (or ``name,[ip]``)."""
    out = []
    for h in hosts:
        lease = lease_text(h.lease)
        if ":" in h.ip:  # IPv6: the client is known by its DUID or its name
            key = f"id:{h.id}" if h.id else None
            fields = [key, h.name, f"[{h.ip}]", lease]
        else:
            key = h.mac or h.name
            fields = [key, h.ip, h.name if h.mac else None, lease]
        if key is None and h.name is None:
            continue
        out.append(",".join(x for x in fields if x))
    return "".join(line + "\n" for line in out)


def addn_hosts_text(network: Network, hosts: Iterable[DhcpHost]) -> str:
    """An /etc/hosts-style file: the network's ``<dns><host>`` records and named DHCP hosts.

    Named hosts are written here too, so their names resolve before they ever ask for a lease.
    """
    out = [f"{h.ip} {' '.join(h.hostnames)}" for h in network.dns_hosts if h.hostnames]
    out += [f"{h.ip} {h.name}" for h in hosts if h.name]
    return "".join(line + "\n" for line in out)


@attrs.frozen
class DnsmasqStatistics:
    """What the supervision loop has seen."""

    pid: int | None
    starts: int
    restarts: int


@attrs.define(eq=False)
class Dnsmasq:
    """Handle on one network's supervised dnsmasq: live host changes and statistics."""

    network: Network
    bridge: str
    files: DnsmasqFiles
    netns: str | None
    #: the resolv.conf dnsmasq forwards to (:func:`upstream_resolv_file`; None: no upstream)
    resolv_file: str | None = None
    #: the network's anti-spoofing table, whose lease sets the hook keeps (None: no hook)
    guard_table: str | None = None
    live_hosts: dict[str, DhcpHost] = attrs.field(factory=dict)
    process: trio.Process | None = None
    starts: int = 0
    written: dict[Path, str] = attrs.field(factory=dict)

    def all_hosts(self) -> list[DhcpHost]:
        """The network's own reservations followed by the live ones (guests' reservations)."""
        own = [h for ip in self.network.ips for h in ip.dhcp_hosts]
        return own + list(self.live_hosts.values())

    def _texts(self) -> list[tuple[Path, str]]:
        hosts = self.all_hosts()
        conf = config_text(
            self.network,
            self.bridge,
            self.files,
            resolv_file=self.resolv_file,
            lease_hook=self.guard_table is not None,
        )
        texts = [
            (self.files.conf, conf),
            (self.files.hosts, hosts_text(hosts)),
            (self.files.addn_hosts, addn_hosts_text(self.network, hosts)),
        ]
        if self.guard_table is not None:
            texts.append((self.files.hook, lease_hook_script(self.guard_table, sys.executable)))
        return texts

    def write_files(self) -> None:
        """Write the files whose text changed, atomically, so a reload never sees half a file.

        Unchanged files are skipped: a rename costs milliseconds on some filesystems, and a
        guest start changes only the hosts files.
        """
        for path, text in self._texts():
            if self.written.get(path) == text:
                continue
            # plain descriptor calls: a guest start writes two of these on the trio loop, and
            # Path.write_text's text layer doubles the cost; no fsync (runtime state, rebuilt)
            name = str(path)
            mode = 0o700 if path == self.files.hook else 0o644  # dnsmasq executes the hook
            fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                data = memoryview(text.encode())
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)
            os.replace(name + ".tmp", name)
            self.written[path] = text

    async def set_host(self, key: str, host: DhcpHost) -> None:
        """Add or replace a live reservation (``key`` is the NIC's owner) and tell dnsmasq."""
        self.live_hosts[key] = host
        await self._rewrite()

    async def remove_host(self, key: str) -> None:
        """Drop a live reservation, if present, and tell dnsmasq."""
        if self.live_hosts.pop(key, None) is not None:
            await self._rewrite()

    async def _rewrite(self) -> None:
        # written on the trio loop: two small files in the run dir (no fsync: dnsmasq re-reads
        # them, and they are rebuilt from the guests' records after a restart) take tens of
        # microseconds, less than a hop to a worker thread. Nothing awaits between the write
        # and the signal, so concurrent guests cannot interleave and the files always describe
        # the latest set of hosts when dnsmasq reloads. Rewritten before the guest's init
        # runs, so a DHCP request from the guest finds its reservation.
        self.write_files()
        self.reload()
        # yield, but never raise Cancelled after the change: the caller records its undo next
        await trio.lowlevel.cancel_shielded_checkpoint()

    def reload(self) -> None:
        """SIGHUP: dnsmasq re-reads the hosts files (not the config)."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGHUP)

    def statistics(self) -> DnsmasqStatistics:
        """Current pid, number of starts and restarts."""
        proc = self.process
        pid = proc.pid if proc is not None and proc.returncode is None else None
        return DnsmasqStatistics(pid=pid, starts=self.starts, restarts=max(self.starts - 1, 0))

    def argv(self) -> list[str]:
        """The command line (inside the host namespace)."""
        return in_netns(
            self.netns, [DNSMASQ, "--keep-in-foreground", f"--conf-file={self.files.conf}"]
        )

    async def _spawn(self) -> trio.Process:
        """Start dnsmasq and wait until it has written its pid file (it is listening then)."""
        self.files.pid.unlink(missing_ok=True)
        log = os.open(self.files.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # its own session: a Ctrl-C in the supervisor's terminal must not reach it
            proc = await trio.lowlevel.open_process(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stderr=log,
                stdout=log,
                start_new_session=True,
            )
        finally:
            os.close(log)
        self.process = proc
        self.starts += 1
        with trio.move_on_after(5):
            while proc.returncode is None and proc.poll() is None:
                try:
                    if self.files.pid.read_text().strip():
                        return proc
                except FileNotFoundError:
                    pass
                await trio.sleep(0.005)
        if proc.returncode is None:
            return proc  # slow to write the pid file, but alive: supervision goes on
        tail = self.files.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeFailure(
            f"dnsmasq for network {self.network.name} exited with {proc.returncode}: "
            + " | ".join(tail)
        )


async def _stop(proc: trio.Process) -> None:
    """Terminate, wait a little, then kill (shielded: runs during cancellation)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(2):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_dnsmasq(
    handle: Dnsmasq,
    *,
    backoff_min: float = 0.05,
    backoff_max: float = 5.0,
    task_status: trio.TaskStatus[Dnsmasq] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run and supervise dnsmasq until cancelled; restarts it (with backoff) whenever it dies.

    ``task_status.started`` is called once the first instance is up, so a failing first start
    (bad config, port taken) fails the caller's ``nursery.start``.
    """
    handle.write_files()
    proc = await handle._spawn()
    task_status.started(handle)
    delay = backoff_min
    spawned_at = trio.current_time()
    try:
        while True:
            await proc.wait()
            if trio.current_time() - spawned_at > 10:
                delay = backoff_min  # it ran for a while: this is not a crash loop
            await trio.sleep(delay)
            delay = min(delay * 2, backoff_max)
            spawned_at = trio.current_time()
            try:
                proc = await handle._spawn()
            except RuntimeFailure:
                continue
    finally:
        if handle.process is not None:
            await _stop(handle.process)
        handle.files.pid.unlink(missing_ok=True)
        handle.files.hook.unlink(missing_ok=True)


def lease_lines(files: DnsmasqFiles) -> list[tuple[str, str, str]]:
    """(mac, ip, hostname) from dnsmasq's lease file (``*`` when the client sent no name)."""
    try:
        text = files.leases.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))
    return out


__all__ = [
    "Dnsmasq",
    "DnsmasqFiles",
    "DnsmasqStatistics",
    "addn_hosts_text",
    "config_text",
    "hosts_text",
    "lease_lines",
    "run_dnsmasq",
]
