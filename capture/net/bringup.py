"""Bringing a :class:`~capture.net.plan.NetPlan` up in the capture kernel with iproute2's ``ip``.

:func:`bring_up` renames links by MAC, creates bonds, bridges and VLANs,
sets addresses and routes, runs the DHCP client found on PATH (dhclient,
dhcpcd or busybox udhcpc; none is implemented here), writes resolv.conf,
then waits -- within one overall timeout -- for the links, the addresses, a
route to the target and the next hop's answer to ARP/NDP.  Every ``ip`` call
is an argument list (never a shell).  A timeout raises
:class:`~capture.errors.KdumpError` saying which interface was in which
state and what was waited for.  The kernel host name is not changed.

The DHCP client reports its lease through a small shell hook this module
writes into its state directory (``-sf``/``-s``/``-c``, see
:mod:`capture.net.lease`); this process applies the lease with ``ip``
(dhcpcd applies its own).  The client keeps running after :func:`bring_up`
returns, to renew the lease while the dump is saved, and a thread applies
each renewal it records (:class:`_LeaseKeeper`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from capture.config.options import Config
from capture.errors import KdumpError
from capture.net.lease import IpTool, apply_lease, hook_script, lease_path, read_lease
from capture.net.plan import (ANY_INTERFACE, AUTO6, DHCP, DHCP6, DHCP_CLIENTS, Bond, Bridge, Interface,
                              NetPlan, Vlan, choose_plan, describe, needs_network)
from capture.config.targeturl import TargetURL

log = logging.getLogger(__name__)

_VIRTUAL_KINDS = {"bond", "bridge", "vlan", "macvlan", "macvtap", "ipvlan", "vxlan", "dummy", "team",
                  "tun", "wireguard", "gre", "gretap", "ipip", "sit", "ip6tnl", "vrf", "ifb", "geneve"}
_POLL = 0.2
#: seconds between looks for a renewed DHCP lease during the save
_RENEW_POLL = 2.0


def prepare(config: Config, target: TargetURL, *, cmdline: Optional[str] = None, **options) -> bool:
    """Before the save: bring the network up if ``target`` needs it (or KDUMP_NETCONFIG has ``:force``).

    The plan is the kernel command line's (``/proc/cmdline`` unless ``cmdline``
    is given) ``ip=`` and friends, else KDUMP_NETCONFIG; the wait is
    KDUMP_NET_TIMEOUT.  ``options`` go to :func:`bring_up`.  Returns whether
    the network was brought up.
    """
    if not needs_network(target, config.netconfig):
        log.info("network: not needed for the local target %s", target.masked())
        return False
    if cmdline is None:
        cmdline = Path("/proc/cmdline").read_text()
    plan = choose_plan(cmdline, config.netconfig)
    bring_up(plan, target.host or None, config.net_timeout, **options)
    return True


def bring_up(plan: NetPlan, target_host: Optional[str], timeout: int, *,
             resolv_conf: str = "/etc/resolv.conf", state_dir: Optional[str] = None,
             dhcp_client: Optional[str] = None) -> None:
    """Configure ``plan`` and wait up to ``timeout`` seconds in all for it to work.

    ``target_host`` (a name or address, or None) must become routable and its
    next hop must answer.  ``timeout`` 0 waits for nothing: what is not ready
    yet is logged as a warning.  ``state_dir`` holds the DHCP hook, leases
    and client logs (default: a new directory under /run).  ``dhcp_client``
    picks a client by name instead of the first one found on PATH.
    """
    deadline = _Deadline(timeout)
    log.info("network: %s", describe(plan))
    ip = IpTool(netlink=True)
    bringer = _BringUp(plan, ip, deadline, Path(state_dir) if state_dir else None, dhcp_client)
    try:
        bringer.run(target_host, resolv_conf)
    except BaseException:
        bringer.stop_clients()
        raise


# ---------------------------------------------------------------- ip

class _Deadline:
    def __init__(self, timeout: int) -> None:
        self.timeout = max(0, int(timeout))
        self.end = time.monotonic() + self.timeout

    def wait(self, what: str, check: Callable[[], Optional[str]], *, hard: bool = True) -> bool:
        """Poll ``check`` (None when done, else the current state) until the deadline.

        On timeout: :class:`KdumpError` if ``hard`` and the timeout is not 0,
        otherwise a warning; returns whether ``check`` succeeded.
        """
        started = time.monotonic()
        while True:
            state = check()
            if state is None:
                return True
            if time.monotonic() >= self.end:
                break
            time.sleep(_POLL)
        waited = time.monotonic() - started
        if self.timeout == 0 or not hard:
            log.warning("network: not waiting for %s (KDUMP_NET_TIMEOUT=%d): %s", what, self.timeout, state)
            return False
        raise KdumpError(f"network: gave up waiting for {what} after {waited:.0f} s "
                         f"(KDUMP_NET_TIMEOUT={self.timeout}): {state}")


# ---------------------------------------------------------------- the sequence

@dataclass
class _Started:
    name: str
    version: int
    client: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class _BringUp:
    plan: NetPlan
    ip: IpTool
    deadline: _Deadline
    state_dir: Optional[Path]
    dhcp_client: Optional[str]
    clients: List[_Started] = field(default_factory=list)
    leased: Dict[str, List[str]] = field(default_factory=dict)    # interface -> "address/prefix" from DHCP
    configured: List[str] = field(default_factory=list)
    _seen_links: Dict[str, dict] = field(default_factory=dict)   # what missing_macs saw last

    def run(self, target_host: Optional[str], resolv_conf: str) -> None:
        plan = self.plan
        if plan:
            self.rename()
            self.wait_for_links()
            self.create_virtual()
            interfaces = [self.resolve_any(i) for i in plan.interfaces]
            for iface in interfaces:
                self.configure(iface)
            for route in plan.routes:
                argv = ["route", "replace", route.destination]
                if route.gateway:
                    argv += ["via", route.gateway]
                if route.interface:
                    argv += ["dev", route.interface]
                self.ip.run(*argv)
            for iface in interfaces:
                self.deadline.wait(f"a link (carrier) on {iface.name}", lambda n=iface.name: self.carrier_state(n))
            leases = self.wait_for_leases()
            for iface in interfaces:
                self.deadline.wait(f"the addresses of {iface.name}", lambda i=iface: self.address_state(i))
            nameservers = plan.all_nameservers()
            for lease in leases:
                nameservers += [d for d in lease.get("dns", []) if d not in nameservers]
            if nameservers:
                write_resolv_conf(resolv_conf, nameservers)
                log.info("network: wrote %s with nameservers %s", resolv_conf, ", ".join(nameservers))
        route = self.wait_for_target(target_host) if target_host else None
        self.report(route)

    # -- links

    def rename(self) -> None:
        renames = self.plan.renames
        if not renames:
            return
        self.deadline.wait("the links named by ifname= (" + ", ".join(f"{r.name}={r.mac}" for r in renames) + ")",
                           lambda: self.missing_macs())
        links = self._seen_links  # as the wait saw them last (each ``ip`` run costs the dump's CPU)
        for number, rename in enumerate(renames):
            if number:
                links = self.ip.links()
            current = _by_mac(links, rename.mac)
            if current is None or current == rename.name:
                continue
            holder = links.get(rename.name)
            if holder is not None:
                spare = f"kdtmp{holder['ifindex']}"
                self._set_down(rename.name, holder)
                self.ip.run("link", "set", "dev", rename.name, "name", spare)
            self._set_down(current, links[current])
            self.ip.run("link", "set", "dev", current, "name", rename.name)
            log.info("network: renamed %s (%s) to %s", current, rename.mac, rename.name)

    def _set_down(self, name: str, link: dict) -> None:
        """A link must be down to be renamed (a NIC the capture kernel just probed is)."""
        if "UP" in link.get("flags", []):
            self.ip.run("link", "set", "dev", name, "down")

    def missing_macs(self) -> Optional[str]:
        links = self._seen_links = self.ip.links()
        missing = [r.mac for r in self.plan.renames if _by_mac(links, r.mac) is None]
        if not missing:
            return None
        return (f"no link has the MAC {', '.join(missing)}; links present: "
                + ", ".join(f"{n} ({permanent_mac(l) or '?'})" for n, l in links.items()))

    def physical_names(self) -> List[str]:
        """Links the plan uses but does not create."""
        plan = self.plan
        created = {b.name for b in plan.bonds} | {b.name for b in plan.bridges} | {v.name for v in plan.vlans}
        used: List[str] = []
        for name in ([s for b in plan.bonds for s in b.slaves] + [p for b in plan.bridges for p in b.ports]
                     + [v.parent for v in plan.vlans] + [i.name for i in plan.interfaces]
                     + [r.interface for r in plan.routes]):
            if name and name not in created and name not in used:
                used.append(name)
        return used

    def wait_for_links(self) -> None:
        names = self.physical_names()
        if not names:
            return

        def state() -> Optional[str]:
            links = self.ip.links()
            missing = [n for n in names if n not in links]
            if not missing:
                return None
            return f"{', '.join(missing)} not present; links present: {', '.join(links) or 'none'}"
        if not self.deadline.wait("the interfaces " + ", ".join(names) + " to appear", state, hard=False):
            raise KdumpError(f"network: interfaces missing: {state()}")

    def create_virtual(self) -> None:
        """Bonds, bridges and VLANs, each once the links it is made of exist (a VLAN on a bond,
        a bridge over a VLAN...)."""
        plan = self.plan
        pending: List[Union[Bond, Bridge, Vlan]] = [*plan.bonds, *plan.bridges, *plan.vlans]
        made = set(self.physical_names())
        while pending:
            ready = [v for v in pending if set(_members(v)) <= made]
            if not ready:
                raise KdumpError("network: cannot order the creation of "
                                 + ", ".join(f"{v.name} (needs {', '.join(_members(v))})" for v in pending))
            for virtual in ready:
                if isinstance(virtual, Bond):
                    self.create_bond(virtual)
                elif isinstance(virtual, Bridge):
                    self.create_bridge(virtual)
                else:
                    self.create_vlan(virtual)
                made.add(virtual.name)
                pending.remove(virtual)

    def create_bond(self, bond: Bond) -> None:
        ip, links = self.ip, self.ip.links()
        if bond.name not in links:
            argv = ["link", "add", "name", bond.name, "type", "bond"]
            for key, value in bond.options:
                argv += [key, value.replace(";", ",")]
            ip.run(*argv)
        for slave in bond.slaves:
            if links.get(slave, {}).get("master") != bond.name:
                ip.run("link", "set", "dev", slave, "down")
                ip.run("link", "set", "dev", slave, "master", bond.name)
        if bond.mtu:
            ip.run("link", "set", "dev", bond.name, "mtu", str(bond.mtu))
        for slave in bond.slaves:
            ip.run("link", "set", "dev", slave, "up")
        ip.run("link", "set", "dev", bond.name, "up")
        log.info("network: bond %s with %s (%s)", bond.name, ", ".join(bond.slaves),
                 ",".join(f"{k}={v}" for k, v in bond.options) or "default options")

    def create_bridge(self, bridge: Bridge) -> None:
        ip = self.ip
        if bridge.name not in ip.links():
            ip.run("link", "add", "name", bridge.name, "type", "bridge")
        for port in bridge.ports:
            ip.run("link", "set", "dev", port, "master", bridge.name)
            ip.run("link", "set", "dev", port, "up")
        ip.run("link", "set", "dev", bridge.name, "up")
        log.info("network: bridge %s with %s", bridge.name, ", ".join(bridge.ports))

    def create_vlan(self, vlan: Vlan) -> None:
        ip = self.ip
        ip.run("link", "set", "dev", vlan.parent, "up")
        if vlan.name not in ip.links():
            ip.run("link", "add", "link", vlan.parent, "name", vlan.name, "type", "vlan", "id", str(vlan.vlan_id))
        ip.run("link", "set", "dev", vlan.name, "up")
        log.info("network: VLAN %s (id %d) on %s", vlan.name, vlan.vlan_id, vlan.parent)

    def resolve_any(self, iface: Interface) -> Interface:
        """For ``ip=dhcp`` and KDUMP_NETCONFIG=auto: the first Ethernet link that gets a carrier
        (links whose driver loads late are picked up while waiting); the others are left down."""
        if iface.name != ANY_INTERFACE:
            return iface
        used = set(self.physical_names())
        raised: List[str] = []
        chosen: List[str] = []
        seen: List[str] = []
        waited: List[str] = []

        def state() -> Optional[str]:
            links = self.ip.links()
            candidates = [l for l in sorted(links.values(), key=lambda l: l["ifindex"])
                          if l.get("link_type") == "ether" and not l.get("master") and l["ifname"] not in used
                          and l.get("linkinfo", {}).get("info_kind") not in _VIRTUAL_KINDS]
            for l in candidates:
                if l["ifname"] not in seen:
                    seen.append(l["ifname"])
                if "UP" not in l.get("flags", []):
                    self.ip.run("link", "set", "dev", l["ifname"], "up")
                    raised.append(l["ifname"])
            for l in candidates:
                if "LOWER_UP" in l.get("flags", []):
                    chosen.append(l["ifname"])
                    return None
            if not candidates:
                problem = "no Ethernet interface (links present: " + ", ".join(links) + ")"
                if not raised and not chosen and problem not in waited:
                    log.info("network: waiting: %s", problem)
                    waited.append(problem)
                return problem
            return "no carrier on " + ", ".join(l["ifname"] for l in candidates)
        self.deadline.wait("a link on any interface", state, hard=False)
        if not seen:
            raise KdumpError(f"network: no Ethernet interface to configure: {state()}")
        name = chosen[0] if chosen else seen[0]
        for other in raised:
            if other != name:
                self.ip.run("link", "set", "dev", other, "down")
        log.info("network: using %s, the first interface with a link", name)
        return Interface(name, list(iface.modes), list(iface.addresses), list(iface.gateways), iface.server,
                         list(iface.dns), iface.mtu, iface.mac, iface.hostname)

    # -- addresses

    def configure(self, iface: Interface) -> None:
        ip, name = self.ip, iface.name
        self.configured.append(name)
        if iface.mac:
            ip.run("link", "set", "dev", name, "down")
            ip.run("link", "set", "dev", name, "address", iface.mac)
        if iface.mtu:
            ip.run("link", "set", "dev", name, "mtu", str(iface.mtu))
        if AUTO6 in iface.modes or DHCP6 in iface.modes:
            _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
            _sysctl(f"net/ipv6/conf/{name}/accept_ra", "2")
            _sysctl(f"net/ipv6/conf/{name}/autoconf", "1" if AUTO6 in iface.modes else "0")
        ip.run("link", "set", "dev", name, "up")
        for addr in iface.addresses:
            argv = ["addr", "replace", f"{addr.address}/{addr.prefix}", "dev", name]
            if addr.version == 4 and addr.prefix < 31:
                argv += ["broadcast", "+"]
            ip.run(*argv)
        for gateway in iface.gateways:
            version = ipaddress.ip_address(gateway).version
            argv = ["-6" if version == 6 else "-4", "route", "replace", "default", "via", gateway, "dev", name]
            if not any(addr.version == version and ipaddress.ip_address(gateway) in
                       ipaddress.ip_interface(str(addr)).network for addr in iface.addresses):
                argv.append("onlink")
            ip.run(*argv)
        if iface.addresses:
            log.info("network: %s: %s%s", name, ", ".join(str(a) for a in iface.addresses),
                     "".join(f", gateway {g}" for g in iface.gateways))
        if DHCP in iface.modes:
            self.start_dhcp(iface, 4)
        if DHCP6 in iface.modes:
            self.deadline.wait(f"a usable link-local address on {name} (for DHCPv6)",
                               lambda: self.link_local_state(name))
            self.start_dhcp(iface, 6)

    def start_dhcp(self, iface: Interface, version: int) -> None:
        client = find_dhcp_client(version, self.dhcp_client)
        state = self.ensure_state_dir()
        hook = write_hook(state, iface.name, version)
        argv, logname = _client_argv(client, version, iface, hook, state)
        log_path = state / logname
        with open(log_path, "ab") as logf:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                       start_new_session=True)
        self.clients.append(_Started(iface.name, version, client, process, log_path))
        log.info("network: %s: started %s for DHCPv%d (pid %d)", iface.name, Path(client).name, version, process.pid)

    def ensure_state_dir(self) -> Path:
        if self.state_dir is None:
            base = "/run" if os.access("/run", os.W_OK) else None
            self.state_dir = Path(tempfile.mkdtemp(prefix="kdump-saver-net-", dir=base))
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.state_dir

    def wait_for_leases(self) -> List[dict]:
        """Wait for each DHCP client's first lease and apply it; then keep applying renewals."""
        leases: List[dict] = []
        keeper = _LeaseKeeper(self.ip)
        for started in self.clients:
            path = lease_path(self.state_dir, started.name, started.version)  # type: ignore[arg-type]
            found: List[dict] = []

            def state(s: _Started = started, p: Path = path, found: List[dict] = found) -> Optional[str]:
                lease = _recorded_lease(s, p, self.ip)
                if lease is not None:
                    found.append(lease)
                    return None
                code = s.process.poll()
                if code is not None:
                    raise KdumpError(f"network: {Path(s.client).name} on {s.name} exited with status {code} "
                                     f"without a lease: {_tail_of(s.log_path)}")
                return f"no DHCPv{s.version} lease on {s.name} yet ({Path(s.client).name} running)"
            if self.deadline.wait(f"a DHCPv{started.version} lease on {started.name}", state):
                lease = found[-1]
                keeper.watch(started, path, lease)
                leases.append(lease)
                self.leased.setdefault(started.name, []).append(f"{lease['address']}/{lease['prefix']}")
                log.info("network: %s: DHCPv%d lease %s/%s%s%s", started.name, started.version,
                         lease.get("address"), lease.get("prefix"),
                         f", router {lease['routers'][0]}" if lease.get("routers") else "",
                         f", DNS {', '.join(lease['dns'])}" if lease.get("dns") else "")
        keeper.start()
        return leases

    def stop_clients(self) -> None:
        for started in self.clients:
            if started.process.poll() is None:
                started.process.terminate()
                try:
                    started.process.wait(5)
                except subprocess.TimeoutExpired:
                    started.process.kill()
                    started.process.wait()

    # -- states (None = ready, else what is seen)

    def carrier_state(self, name: str) -> Optional[str]:
        link = self.ip.links().get(name)
        if link is None:
            return f"{name} has disappeared"
        flags = link.get("flags", [])
        if "UP" in flags and "LOWER_UP" in flags:
            return None
        return f"{name} is {link.get('operstate', '?')} (flags {','.join(flags)}): no carrier"

    def link_local_state(self, name: str) -> Optional[str]:
        for a in self.ip.addresses(name):
            if a.get("family") == "inet6" and a.get("scope") == "link" and not a.get("tentative"):
                return None
        return f"{name} has no usable IPv6 link-local address yet"

    def address_state(self, iface: Interface) -> Optional[str]:
        have = self.ip.addresses(iface.name)
        for a in have:
            if a.get("dadfailed"):
                raise KdumpError(f"network: {a['local']}/{a['prefixlen']} on {iface.name} failed duplicate "
                                 "address detection: another host uses it")
        ready = {(a["local"], a["prefixlen"]) for a in have if not a.get("tentative")}
        ready_text = {f"{a}/{p}" for a, p in ready}
        waiting = [str(x) for x in iface.addresses if (x.address, x.prefix) not in ready]
        waiting += [x for x in self.leased.get(iface.name, []) if x not in ready_text]
        if AUTO6 in iface.modes and not any(a.get("family") == "inet6" and a.get("scope") == "global"
                                            and not a.get("tentative") for a in have):
            waiting.append("an IPv6 address from router advertisements (auto6)")
        if not waiting:
            return None
        return f"{iface.name} is still waiting for {', '.join(waiting)}"

    # -- target

    def wait_for_target(self, host: str) -> Optional[dict]:
        addresses: List[str] = []
        route: Dict[str, dict] = {}

        def resolved() -> Optional[str]:
            try:
                addresses[:] = resolve_host(host)
                return None
            except OSError as exc:
                return f"cannot resolve {host}: {exc}"

        def routed() -> Optional[str]:
            for addr in addresses:
                r = self.ip.route_get(addr)
                if r is not None:
                    route["r"] = r
                    return None
            return f"no route to {host} ({', '.join(addresses)})"
        self.deadline.wait(f"the address of {host}", resolved)
        self.deadline.wait(f"a route to {host}", routed)
        if "r" not in route:
            return None
        r = route["r"]
        nexthop = r.get("gateway") or r["dst"]
        dev = r.get("dev", "")
        link = self.ip.links().get(dev, {})
        if dev == "lo" or "NOARP" in link.get("flags", []):
            return r

        def answered() -> Optional[str]:
            _poke(nexthop)
            neigh = self.ip.json("neigh", "show", nexthop, "dev", dev)
            states = neigh[0].get("state", []) if neigh else []
            if neigh and neigh[0].get("lladdr") and not {"FAILED", "INCOMPLETE"} & set(states):
                return None
            what = "the gateway" if r.get("gateway") else "the target"
            return (f"{what} {nexthop} on {dev} does not answer ARP/NDP "
                    f"(neighbour state {','.join(states) or 'none'})")
        self.deadline.wait(f"an answer from the next hop to {host}", answered)
        return r

    def report(self, route: Optional[dict]) -> None:
        for name in self.configured:
            link = self.ip.link_and_addresses(name)
            addrs = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                     if a.get("scope") != "link"]
            log.info("network: %s (%s) is %s with %s", name, link.get("address", "?"),
                     link.get("operstate", "?"), ", ".join(addrs) or "no address")
        if route is not None:
            log.info("network: route to %s: %s%s dev %s%s", route.get("dst"),
                     "via " if route.get("gateway") else "", route.get("gateway", ""),
                     route.get("dev"), f" src {route['prefsrc']}" if route.get("prefsrc") else "")


# ---------------------------------------------------------------- helpers

def _members(virtual: Union[Bond, Bridge, Vlan]) -> List[str]:
    if isinstance(virtual, Bond):
        return list(virtual.slaves)
    if isinstance(virtual, Bridge):
        return list(virtual.ports)
    return [virtual.parent]


def permanent_mac(link: dict) -> str:
    """The link's own MAC (``ip -j -d link`` entry): a bond slave's current address is the bond's."""
    slave = link.get("linkinfo", {}).get("info_slave_data", {})
    return (slave.get("perm_hwaddr") or link.get("permaddr") or link.get("address", "")).lower()


def _by_mac(links: Dict[str, dict], mac: str) -> Optional[str]:
    for name, link in links.items():
        if link.get("link_type") == "ether" and permanent_mac(link) == mac:
            return name
    return None


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    try:
        path.write_text(value)
    except OSError as exc:
        raise KdumpError(f"network: cannot set {key.replace('/', '.')}={value}: {exc.strerror}") from None


def _poke(address: str) -> None:
    """Make the kernel resolve the next hop: one empty UDP datagram to the discard port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"", (address, 9))
    except OSError:
        pass


def resolve_host(host: str) -> List[str]:
    """Addresses of ``host`` (an IP literal stays itself), IPv4 first."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    out: List[str] = []
    for family, _, _, _, sockaddr in sorted(infos, key=lambda i: i[0] != socket.AF_INET):
        if sockaddr[0] not in out:
            out.append(sockaddr[0])
    return out


def write_resolv_conf(path: str, nameservers: Sequence[str]) -> None:
    """Write ``nameserver`` lines in place (the file may be a bind mount, which a rename would fail on)."""
    text = "# written by kdump-saver\n" + "".join(f"nameserver {ns}\n" for ns in nameservers)
    try:
        with open(path, "w") as f:
            f.write(text)
    except FileNotFoundError:
        if not os.path.islink(path):
            raise
        os.unlink(path)          # a dangling link, e.g. to systemd-resolved's stub in /run
        with open(path, "w") as f:
            f.write(text)


def find_dhcp_client(version: int, wanted: Optional[str] = None) -> str:
    """The path of the DHCP client to use for IPv``version``."""
    names = (wanted,) if wanted else DHCP_CLIENTS[version]
    if wanted == "udhcpc" and version == 6:
        names = ("udhcpc6",)
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    for name in names:
        path = shutil.which(name, path=search)  # type: ignore[arg-type]
        if path:
            return path
    raise KdumpError(f"network: DHCPv{version} is configured but no DHCP client is installed "
                     f"(looked for {', '.join(n for n in names if n)} on PATH)")


def _client_argv(client: str, version: int, iface: Interface, hook: Path, state: Path) -> Tuple[List[str], str]:
    name, base = iface.name, Path(client).name
    tag = f"{name}-{version}"
    if base == "dhclient":
        conf = state / f"dhclient-{tag}.conf"
        lines = ["request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, "
                 "interface-mtu;" if version == 4 else "request dhcp6.name-servers;"]
        if iface.hostname and version == 4:
            lines.append(f'send host-name "{iface.hostname}";')
        conf.write_text("\n".join(lines) + "\n")
        return ([client, "-d", f"-{version}", "-sf", str(hook), "-cf", str(conf), "-lf",
                 str(state / f"dhclient-{tag}.leases"), "-pf", str(state / f"dhclient-{tag}.pid"), name],
                f"dhclient-{tag}.log")
    if base == "dhcpcd":
        conf = state / f"dhcpcd-{tag}.conf"
        lines = ["option domain_name_servers, interface_mtu", "noipv4ll"]
        if version == 6:
            lines += ["ipv6only", "ia_na 1"]
        if iface.hostname:
            lines.append(f"hostname {iface.hostname}")
        conf.write_text("\n".join(lines) + "\n")
        return ([client, "-B", f"-{version}", "-f", str(conf), "-c", str(hook), name], f"dhcpcd-{tag}.log")
    argv = [client, "-f", "-i", name, "-s", str(hook), "-t", "5", "-T", "2", "-A", "3"]
    if version == 4:
        argv += ["-O", "mtu"]
        if iface.hostname:
            argv += ["-x", f"hostname:{iface.hostname}"]
    return argv, f"{base}-{tag}.log"


def write_hook(state: Path, name: str, version: int) -> Path:
    """The executable the DHCP client of ``name`` (DHCPv``version``) runs on its events."""
    hook = state / f"hook-{name}-{version}"
    hook.write_text(hook_script(lease_path(state, name, version)))
    hook.chmod(0o700)
    return hook


def _recorded_lease(started: _Started, path: Path, ip: IpTool) -> Optional[dict]:
    """The usable lease ``started``'s hook recorded, applied with ``ip`` unless the client
    (dhcpcd) applies its own; None while there is none (a lease for another interface or
    of another version is not one)."""
    lease = read_lease(Path(started.client).name, path)
    if lease is None or lease["interface"] != started.name or lease["version"] != started.version:
        return None
    if Path(started.client).name != "dhcpcd":
        apply_lease(ip, lease)
    return lease


class _LeaseKeeper:
    """Applies the renewals the DHCP clients record while the dump is saved (a renewed
    lease with a new lifetime, or even a new address), every :data:`_RENEW_POLL` seconds
    until the clients exit."""

    def __init__(self, ip: IpTool) -> None:
        self._ip = ip
        self._watched: List[Tuple[_Started, Path, dict]] = []

    def watch(self, started: _Started, path: Path, lease: dict) -> None:
        self._watched.append((started, path, lease))

    def start(self) -> None:
        if self._watched:
            threading.Thread(target=self._run, name="dhcp-renewals", daemon=True).start()

    def _run(self) -> None:
        seen = {path: _signature(path) for _, path, _ in self._watched}
        while any(started.process.poll() is None for started, _, _ in self._watched):
            time.sleep(_RENEW_POLL)
            for i, (started, path, old) in enumerate(self._watched):
                signature = _signature(path)
                if signature == seen[path]:
                    continue
                seen[path] = signature
                try:
                    lease = _recorded_lease(started, path, self._ip)
                except KdumpError as exc:
                    log.warning("network: %s: applying a renewed DHCPv%d lease failed: %s",
                                started.name, started.version, exc)
                    continue
                if lease is not None:
                    self._watched[i] = (started, path, lease)
                    change = "" if lease["address"] == old["address"] else f" (was {old['address']})"
                    log.info("network: %s: DHCPv%d lease renewed: %s/%s%s", started.name, started.version,
                             lease["address"], lease["prefix"], change)


def _signature(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _tail_of(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
