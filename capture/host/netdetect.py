"""Production side: turn the running system's network into a capture-kernel plan (KDUMP_NETCONFIG).

:func:`resolve_auto` follows ``ip -j route get TARGET`` to the interface that
reaches the target and describes it as :class:`~capture.net.plan.NetPlan`:

* physical links are pinned by MAC and renamed (``ifname=kdump0:MAC``, like
  SUSE), because kernel names are not stable across kernels; bond slaves use
  their permanent MAC;
* bonds (with their mode and monitoring options), bridges and VLANs under the
  interface are recreated (a VLAN is named ``PARENT.ID`` so its id can be read
  back from the name);
* addresses of the target's IP version: ``dynamic`` ones (with a lease
  lifetime) mean DHCP (IPv6: ``/128`` means DHCPv6, otherwise SLAAC, auto6),
  permanent ones are written as static addresses;
* the default gateway of that interface, a host route when the target is
  reached through another gateway, and for static set-ups the nameservers of
  /etc/resolv.conf (loopback resolvers such as systemd-resolved's stub are
  replaced by their upstream servers when known, or left out).

:func:`resolve_netconfig` does the same for any KDUMP_NETCONFIG value.  As in
SUSE's kdump, the interface ``default`` is the one of the default route (IPv4,
else IPv6), and the mode ``auto`` with an interface (``eth0:auto``) means static
or DHCP as that interface is configured now (a lease lifetime means DHCP).  The
result's ``description`` says what was found; :func:`capture.net.plan.to_cmdline`
turns it into kernel arguments.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from capture.config.options import NetConfig
from capture.errors import ConfigError, KdumpError
from capture.net.plan import (AUTO6, DHCP, DHCP6, STATIC, Address, Bond, Bridge, Interface, NetPlan, Rename,
                             Route, Vlan, describe)
from capture.net.bringup import IpTool, permanent_mac, resolve_host

log = logging.getLogger(__name__)

PIN_PREFIX = "kdump"
_STUB_UPSTREAM = "/run/systemd/resolve/resolv.conf"
_BOND_DEFAULTS = {"miimon": 0, "updelay": 0, "downdelay": 0, "arp_interval": 0, "xmit_hash_policy": "layer2",
                  "lacp_rate": "slow", "primary_reselect": "always", "fail_over_mac": "none"}
_BOND_JSON_KEYS = {"lacp_rate": "ad_lacp_rate"}           # option name -> key in ``ip -j -d link``


def resolve_auto(target_host: Optional[str], *, resolv_conf: str = "/etc/resolv.conf",
                 ip: Optional[IpTool] = None) -> NetPlan:
    """The plan for KDUMP_NETCONFIG=auto: the interface of the route to ``target_host``
    (of the default route when None), as the capture kernel should recreate it."""
    ip = ip or IpTool()
    route, shown = _route_to(ip, target_host)
    dev = route.get("dev", "")
    if not dev or dev == "lo":
        raise ConfigError(f"KDUMP_NETCONFIG=auto: the target {shown} is this machine itself; "
                          "a local target needs no network")
    dst = route.get("dst", "")
    if "family" in route:
        version, dst = (6 if route["family"] == "inet6" else 4), ""
    else:
        version = ipaddress.ip_address(dst).version
    plan = _Builder(ip, resolv_conf).build(dev, version, None, route.get("gateway", ""), dst)
    plan.description = (f"KDUMP_NETCONFIG=auto: {shown} is reached "
                        + (f"via {route['gateway']} " if route.get("gateway") else "directly ")
                        + f"on {dev}; " + describe(plan))
    log.info("%s", plan.description)
    return plan


def resolve_netconfig(netconfig: NetConfig, target_host: Optional[str], *,
                      resolv_conf: str = "/etc/resolv.conf", ip: Optional[IpTool] = None) -> NetPlan:
    """The plan for any KDUMP_NETCONFIG value, resolved on the production system at initrd build time."""
    mode = netconfig.mode.lower()
    if mode == "none":
        return NetPlan(description="KDUMP_NETCONFIG is empty: no network configuration")
    if mode == "auto" and not netconfig.interface:
        return resolve_auto(target_host, resolv_conf=resolv_conf, ip=ip)
    ip = ip or IpTool()
    setting = f"KDUMP_NETCONFIG={netconfig.interface}:{netconfig.mode}"
    wanted = {"static": STATIC, "dhcp": DHCP, "dhcp4": DHCP, "dhcp6": DHCP6, "auto6": AUTO6,
              "auto": None}.get(mode, "")
    if wanted == "":
        raise ConfigError(f"KDUMP_NETCONFIG mode {netconfig.mode!r} is unknown")
    dev = netconfig.interface
    found = ""
    if netconfig.on_default_route:
        dev = default_route_interface(ip, setting)
        found = f"the default route is on {dev}; "
    if dev not in ip.links():
        raise ConfigError(f"{setting}: this system has no "
                          f"interface {dev} (it has {', '.join(ip.links())})")
    version = 6 if wanted in (DHCP6, AUTO6) else 4
    if wanted in (STATIC, None):
        version = _version_for(ip, dev, target_host)
    plan = _Builder(ip, resolv_conf).build(dev, version, wanted, "", "")
    plan.description = f"{setting}: {found}" + describe(plan)
    log.info("%s", plan.description)
    return plan


def default_route_interface(ip: IpTool, setting: str = "KDUMP_NETCONFIG=default") -> str:
    """The interface of the default route, IPv4 first, then IPv6 (what SUSE calls ``default``)."""
    for family in ("-4", "-6"):
        for route in ip.json(family, "route", "show", "default"):
            if route.get("dev") and route["dev"] != "lo":
                return route["dev"]
    raise ConfigError(f"{setting}: this system has no default route, so there is no default interface; "
                      "name the interface (like eth0:dhcp)")


def _version_for(ip: IpTool, dev: str, target_host: Optional[str]) -> int:
    """The IP version to configure on ``dev``: the target's, else IPv4 if ``dev`` has a global
    IPv4 address, else IPv6 if it has a global IPv6 one, else IPv4."""
    if target_host:
        try:
            return ipaddress.ip_address(resolve_host(target_host)[0]).version
        except (OSError, IndexError, ValueError):
            pass
    families = {a.get("family") for a in ip.addresses(dev) if a.get("scope") == "global"}
    return 6 if "inet" not in families and "inet6" in families else 4


def _route_to(ip: IpTool, target_host: Optional[str]) -> Tuple[dict, str]:
    if target_host:
        try:
            addresses = resolve_host(target_host)
        except OSError as exc:
            raise ConfigError(f"KDUMP_NETCONFIG=auto: cannot resolve the target host {target_host}: {exc}") from None
        for addr in addresses:
            route = ip.route_get(addr)
            if route is not None:
                return route, f"{target_host} ({addr})" if addr != target_host else addr
        raise ConfigError(f"KDUMP_NETCONFIG=auto: this system has no route to {target_host} "
                          f"({', '.join(addresses)}); fix the network or set KDUMP_NETCONFIG=IFACE:MODE")
    for family in ("-4", "-6"):
        routes = ip.json(family, "route", "show", "default")
        if routes:
            route = dict(routes[0])
            route["family"] = "inet6" if family == "-6" else "inet"
            return route, "the default route"
    raise ConfigError("KDUMP_NETCONFIG=auto: this system has no default route; "
                      "set KDUMP_NETCONFIG=IFACE:MODE")


@dataclass
class _Builder:
    ip: IpTool
    resolv_conf: str
    plan: NetPlan = field(default_factory=NetPlan)
    links: Dict[str, dict] = field(default_factory=dict)
    names: Dict[str, str] = field(default_factory=dict)    # production name -> capture name

    def build(self, dev: str, version: int, forced_mode: Optional[str], route_gateway: str,
              target: str) -> NetPlan:
        self.links = self.ip.links()
        name = self.link(dev)
        iface = Interface(name)
        self.addresses(iface, dev, version, forced_mode)
        default_gw = self.default_gateway(dev, version)
        if default_gw and STATIC in iface.modes:
            iface.gateways = [default_gw]
        if route_gateway and route_gateway != default_gw and target:
            bits = 32 if version == 4 else 128
            self.plan.routes.append(Route(f"{target}/{bits}", route_gateway, name))
        mtu = self.links[dev].get("mtu")
        if mtu and mtu != 1500 and not any(b.name == name for b in self.plan.bonds):
            iface.mtu = mtu
        if STATIC in iface.modes:
            self.plan.nameservers = nameservers(self.resolv_conf)
        self.plan.interfaces.append(iface)
        return self.plan

    # -- links, bottom-up

    def link(self, dev: str) -> str:
        """The capture-kernel name of ``dev``, after adding what it needs to the plan."""
        if dev in self.names:
            return self.names[dev]
        link = self.links.get(dev)
        if link is None:
            raise KdumpError(f"network detection: link {dev} disappeared")
        kind = link.get("linkinfo", {}).get("info_kind")
        data = link.get("linkinfo", {}).get("info_data", {})
        if kind == "vlan":
            parent = self.link(link["link"])
            vid = int(data["id"])
            name = f"{parent}.{vid}" if len(f"{parent}.{vid}") <= 15 else f"vlan{vid}"
            self.plan.vlans.append(Vlan(name, parent, vid))
        elif kind == "bond":
            name = dev
            slaves = [self.link(s) for s in self.members(dev)]
            if not slaves:
                raise ConfigError(f"KDUMP_NETCONFIG: bond {dev} has no slaves")
            mtu = link.get("mtu") if link.get("mtu") not in (None, 1500) else None
            self.plan.bonds.append(Bond(name, slaves, self.bond_options(data), mtu))
        elif kind == "bridge":
            name = dev
            self.plan.bridges.append(Bridge(name, [self.link(p) for p in self.members(dev)]))
        elif kind in (None, "veth", "") and link.get("link_type") == "ether":
            name = f"{PIN_PREFIX}{len(self.plan.renames)}"
            mac = permanent_mac(link)
            self.plan.renames.append(Rename(name, mac))
        else:
            raise ConfigError(f"KDUMP_NETCONFIG: {dev} is a {kind or link.get('link_type')} link, which the "
                              "capture kernel cannot recreate; use an Ethernet interface, bond, bridge or VLAN")
        self.names[dev] = name
        return name

    def members(self, master: str) -> List[str]:
        return [n for n, l in sorted(self.links.items(), key=lambda i: i[1]["ifindex"]) if l.get("master") == master]

    def bond_options(self, data: dict) -> List[tuple]:
        options = [("mode", str(data.get("mode", "balance-rr")))]
        for key, default in _BOND_DEFAULTS.items():
            value = data.get(_BOND_JSON_KEYS.get(key, key))
            if value is None or value == default:
                continue
            if key == "xmit_hash_policy" and options[0][1] not in ("balance-xor", "802.3ad", "balance-tlb"):
                continue
            if key == "lacp_rate" and options[0][1] != "802.3ad":
                continue
            options.append((key, str(value)))
        targets = data.get("arp_ip_target")
        if targets and data.get("arp_interval"):
            options.append(("arp_ip_target", ";".join(targets)))
        primary = data.get("primary")
        if primary and primary in self.names:
            options.append(("primary", self.names[primary]))
        return options

    # -- addresses

    def addresses(self, iface: Interface, dev: str, version: int, forced: Optional[str]) -> None:
        family = "inet" if version == 4 else "inet6"
        found = [a for a in self.ip.addresses(dev) if a.get("family") == family and a.get("scope") == "global"]
        if forced in (DHCP, DHCP6, AUTO6):
            iface.modes = [forced]
            return
        dynamic = [a for a in found if a.get("dynamic")]
        if dynamic and forced is None:
            if version == 4:
                iface.modes = [DHCP]
            elif any(a.get("prefixlen") == 128 for a in dynamic):
                iface.modes = [DHCP6]
            else:
                iface.modes = [AUTO6]
            return
        static = [a for a in found if not a.get("dynamic")]
        if not static:
            raise ConfigError(f"KDUMP_NETCONFIG: {dev} has no {'IPv4' if version == 4 else 'IPv6'} address "
                              "to use" + (" (only addresses from DHCP/SLAAC)" if dynamic else ""))
        iface.modes = [STATIC]
        iface.addresses = [Address(a["local"], int(a["prefixlen"])) for a in static]

    def default_gateway(self, dev: str, version: int) -> str:
        for route in self.ip.json(f"-{version}", "route", "show", "default", "dev", dev):
            if route.get("gateway"):
                return route["gateway"]
        return ""


def nameservers(path: str = "/etc/resolv.conf", upstream: str = _STUB_UPSTREAM) -> List[str]:
    """Nameservers of ``path`` usable from another kernel: loopback resolvers (systemd-resolved's
    127.0.0.53) are replaced by the upstream servers listed in ``upstream``, if that exists."""
    found = _read_nameservers(path)
    usable = [ns for ns in found if not ipaddress.ip_address(ns).is_loopback]
    if len(usable) < len(found) and path != upstream:
        usable += [ns for ns in _read_nameservers(upstream)
                   if ns not in usable and not ipaddress.ip_address(ns).is_loopback]
    return usable


def _read_nameservers(path: str) -> List[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out: List[str] = []
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver" or "%" in words[1]:
            continue                     # link-local servers with a zone cannot be carried over
        try:
            address = str(ipaddress.ip_address(words[1]))
        except ValueError:
            continue
        if address not in out:
            out.append(address)
    return out
