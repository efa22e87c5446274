"""Network arguments of the capture kernel: dracut's ``ip=`` family and KDUMP_NETCONFIG, as a plan.

The plan (:class:`NetPlan`) says which links to rename, create and configure;
:mod:`capture.net.bringup` carries it out with ``ip``, :mod:`capture.host.netdetect`
derives it from the production system, and :func:`to_cmdline` writes it back
as the dracut arguments the capture kernel gets.

Accepted arguments (everything else on the command line is ignored):

* ``ip=dhcp|on|any|dhcp6|auto6`` -- the first interface that has a link;
* ``ip=IFACE:dhcp|on|any|dhcp6|auto6[:[MTU][:MAC]]``;
* ``ip=CLIENT:[SERVER]:[GATEWAY]:NETMASK:[HOSTNAME]:[IFACE]:none|off|static[:DNS1[:DNS2]]``
  or ``...:none[:[MTU][:MAC]]``; IPv6 addresses in brackets, the netmask
  dotted or as a prefix length; with an empty CLIENT the method may also be a
  DHCP one (``::::HOST:eth0:dhcp``).  SERVER (dracut calls it the peer) is
  kept but not configured as a point-to-point peer, because SUSE's
  documentation puts the dump server there;
* ``ifname=NAME:MAC``, ``vlan=NAME:PARENT`` (VLAN id from NAME: ``eth0.5``,
  ``eth0.0005``, ``vlan5``, ``vlan0005``), ``bond=NAME:SLAVES[:OPTIONS[:MTU]]``
  (SLAVES and OPTIONS comma lists, e.g. ``mode=active-backup,miimon=100``),
  ``bridge=NAME:PORTS``, ``rd.route=NET/PREFIX:[GATEWAY][:IFACE]``,
  ``nameserver=IP``.

Every mistake raises :class:`capture.errors.ConfigError` naming the argument
and what is allowed.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from capture.config.options import NetConfig, interface_name_problem
from capture.config.targeturl import TargetURL
from capture.config.targeturl import parse as parse_url
from capture.errors import ConfigError

STATIC = "static"
DHCP = "dhcp"
DHCP6 = "dhcp6"
AUTO6 = "auto6"
MODES = (STATIC, DHCP, DHCP6, AUTO6)

#: DHCP clients in order of preference, per IP version
DHCP_CLIENTS = {4: ("dhclient", "dhcpcd", "udhcpc"), 6: ("dhclient", "dhcpcd", "udhcpc6")}
#: KDUMP_NETCONFIG modes that may need a DHCP client
DHCP_NETCONFIG_MODES = ("auto", "dhcp", "dhcp4", "dhcp6", "auto6")


def needs_network(url: Union[TargetURL, str], netconfig: NetConfig) -> bool:
    """Whether the capture kernel brings the network up: a remote target, or KDUMP_NETCONFIG ``...:force``."""
    target = parse_url(url) if isinstance(url, str) else url
    return target.is_remote or netconfig.force


def netconfig_applies(url: Union[TargetURL, str], netconfig: NetConfig) -> bool:
    """Whether KDUMP_NETCONFIG describes that network (it is not ``none``), so that the
    production side adds its network arguments, NIC drivers and DHCP client."""
    return netconfig.mode != "none" and needs_network(url, netconfig)

#: ip= methods as written -> plan mode
_METHODS = {
    "none": STATIC, "off": STATIC, "static": STATIC,
    "dhcp": DHCP, "on": DHCP, "any": DHCP, "dhcp4": DHCP,
    "dhcp6": DHCP6, "auto6": AUTO6,
}
_ALLOWED_METHODS = "none, off, static, dhcp, on, any, dhcp6 or auto6"

_IP_FORMS = ("use ip=dhcp|on|any|dhcp6|auto6, ip=IFACE:dhcp|on|any|dhcp6|auto6[:MTU[:MAC]] or "
             "ip=CLIENT:[SERVER]:[GATEWAY]:NETMASK:[HOSTNAME]:[IFACE]:none|off|static[:DNS1[:DNS2]] "
             "(IPv6 addresses in brackets)")

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

#: bond options that ``ip link add ... type bond`` understands (sysfs names, as dracut writes them)
BOND_OPTIONS = (
    "mode", "active_slave", "miimon", "updelay", "downdelay", "peer_notify_delay", "use_carrier",
    "arp_interval", "arp_validate", "arp_all_targets", "arp_ip_target", "primary", "primary_reselect",
    "fail_over_mac", "xmit_hash_policy", "packets_per_slave", "tlb_dynamic_lb", "lacp_rate",
    "lacp_active", "ad_select", "num_grat_arp", "num_unsol_na", "lp_interval", "resend_igmp",
    "min_links", "all_slaves_active", "ad_actor_sys_prio", "ad_user_port_key", "ad_actor_system",
)
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")

ANY_INTERFACE = ""
"""Interface name meaning "the first interface that has a link"."""


@dataclass(frozen=True)
class Address:
    """A static address: ``address/prefix``."""

    address: str
    prefix: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    def __str__(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass
class Interface:
    """How to configure one interface (named, or :data:`ANY_INTERFACE`).

    ``modes`` lists static, dhcp, dhcp6 and/or auto6 in the order given
    (several ``ip=`` for one interface combine, e.g. static IPv4 and auto6).
    """

    name: str
    modes: List[str] = field(default_factory=list)
    addresses: List[Address] = field(default_factory=list)
    gateways: List[str] = field(default_factory=list)      # at most one per address family
    server: str = ""                                        # ip= second field; informational
    dns: List[str] = field(default_factory=list)            # ip= DNS1/DNS2
    mtu: Optional[int] = None
    mac: str = ""                                           # ip= MAC: the address to set on the link
    hostname: str = ""

    @property
    def mode(self) -> str:
        """The first mode (most interfaces have exactly one)."""
        return self.modes[0] if self.modes else STATIC

    @property
    def label(self) -> str:
        return self.name or "the first interface with a link"


@dataclass(frozen=True)
class Rename:
    """``ifname=NAME:MAC``: the link with this MAC is called NAME."""

    name: str
    mac: str


@dataclass(frozen=True)
class Vlan:
    name: str
    parent: str
    vlan_id: int


@dataclass
class Bond:
    name: str
    slaves: List[str]
    options: List[Tuple[str, str]] = field(default_factory=list)   # sysfs option name, value
    mtu: Optional[int] = None


@dataclass
class Bridge:
    name: str
    ports: List[str]


@dataclass(frozen=True)
class Route:
    """``rd.route``: ``destination`` is a network ``NET/PREFIX``."""

    destination: str
    gateway: str = ""
    interface: str = ""


@dataclass
class NetPlan:
    """Everything the capture kernel should configure.  Empty means: no network set-up."""

    interfaces: List[Interface] = field(default_factory=list)
    renames: List[Rename] = field(default_factory=list)
    vlans: List[Vlan] = field(default_factory=list)
    bonds: List[Bond] = field(default_factory=list)
    bridges: List[Bridge] = field(default_factory=list)
    routes: List[Route] = field(default_factory=list)
    nameservers: List[str] = field(default_factory=list)
    hostname: str = ""
    description: str = ""                                   # how the plan was made, for logs

    def __bool__(self) -> bool:
        return bool(self.interfaces or self.renames or self.vlans or self.bonds or self.bridges
                    or self.routes or self.nameservers)

    def interface(self, name: str) -> Optional[Interface]:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        return None

    def all_nameservers(self) -> List[str]:
        """``nameserver=`` and the ip= DNS fields, without duplicates, in order."""
        out: List[str] = []
        for ns in self.nameservers + [d for i in self.interfaces for d in i.dns]:
            if ns not in out:
                out.append(ns)
        return out


# ---------------------------------------------------------------- parsing

def parse_cmdline(cmdline: str) -> NetPlan:
    """The network plan in a kernel command line; words that are not network arguments are ignored."""
    plan = NetPlan()
    for word in split_cmdline(cmdline):
        key, eq, value = word.partition("=")
        if not eq:
            continue
        handler = _HANDLERS.get(key)
        if handler is not None:
            handler(plan, value, word)
    _check_plan(plan)
    return plan


def split_cmdline(cmdline: str) -> List[str]:
    """Words of a kernel command line as the kernel splits them: on blanks, double quotes group."""
    words: List[str] = []
    current: List[str] = []
    quoted = False
    started = False
    for c in cmdline:
        if c == '"':
            quoted = not quoted
            started = True
        elif c.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(c)
            started = True
    if started:
        words.append("".join(current))
    return words


def from_netconfig(netconfig: NetConfig) -> NetPlan:
    """The plan for KDUMP_NETCONFIG when the command line has no ``ip=``.

    The initrd builder normally resolved KDUMP_NETCONFIG into ``ip=``
    already; this is the fallback.  ``auto`` means DHCP on the first interface
    with a link, ``IFACE:auto`` DHCP on IFACE, and ``default:MODE`` MODE on the
    first interface with a link (the production system's default route is not
    known here); ``none`` gives an empty plan.  ``IFACE:static`` cannot be done
    here: the addresses come from the production system at initrd build time.
    """
    mode = netconfig.mode.lower()
    if mode == "none":
        return NetPlan(description="KDUMP_NETCONFIG is empty: no network configuration")
    if mode == "auto" and not netconfig.interface:
        return NetPlan(interfaces=[Interface(ANY_INTERFACE, [DHCP])],
                       description="KDUMP_NETCONFIG=auto: DHCP on the first interface with a link")
    setting = f"KDUMP_NETCONFIG={netconfig.interface}:{netconfig.mode}"
    problem = interface_name_problem(netconfig.interface)
    if problem:
        raise ConfigError(f"{setting}: {problem}")
    if mode == STATIC:
        raise ConfigError(
            f"{setting} needs the addresses recorded when the "
            "initrd was built, but the capture kernel command line has no ip= for it; rebuild the "
            "kdump initrd, or give ip=CLIENT::GATEWAY:NETMASK::IFACE:none in KDUMP_COMMANDLINE_APPEND")
    modes = {"dhcp": DHCP, "dhcp4": DHCP, "dhcp6": DHCP6, "auto6": AUTO6, "auto": DHCP}
    if mode not in modes:
        raise ConfigError(f"KDUMP_NETCONFIG mode {netconfig.mode!r} is unknown; use auto, "
                          "IFACE:static, IFACE:dhcp, IFACE:dhcp4, IFACE:dhcp6, IFACE:auto6 or IFACE:auto, "
                          "optionally with :force")
    name = ANY_INTERFACE if netconfig.on_default_route else netconfig.interface
    iface = Interface(name, [modes[mode]])
    return NetPlan(interfaces=[iface], description=f"{setting}: {'+'.join(iface.modes)} on {iface.label}")


def choose_plan(cmdline: str, netconfig: NetConfig) -> NetPlan:
    """The command line's ``ip=`` wins; without one, KDUMP_NETCONFIG fills in the interfaces
    (``ifname=``, ``vlan=``, ``bond=``... from the command line still apply)."""
    plan = parse_cmdline(cmdline)
    if plan.interfaces:
        plan.description = plan.description or "ip= on the kernel command line"
        return plan
    fallback = from_netconfig(netconfig)
    plan.interfaces = fallback.interfaces
    plan.description = fallback.description
    return plan


def _ip(plan: NetPlan, value: str, word: str) -> None:
    fields = _split_fields(value, word)
    if len(fields) == 1:
        if fields[0].lower() not in _METHODS:
            raise _error(word, f"{fields[0]!r} is not a method; {_IP_FORMS}")
        mode = _method(fields[0], word)
        if mode == STATIC:
            raise _error(word, f"{fields[0]!r} alone configures nothing; use ip=dhcp, ip=IFACE:dhcp or "
                               "ip=CLIENT:[SERVER]:GATEWAY:NETMASK:HOSTNAME:IFACE:none")
        _merge(plan, Interface(ANY_INTERFACE, [mode]), word)
        return
    if len(fields) >= 2 and (fields[1].lower() in _METHODS or (len(fields) < 7 and fields[1].isalpha())):
        _ip_interface(plan, fields, word)
        return
    if len(fields) >= 7:
        _ip_static(plan, fields, word)
        return
    raise _error(word, _IP_FORMS)


def _ip_interface(plan: NetPlan, fields: List[str], word: str) -> None:
    name = _ifname(fields[0], word)
    mode = _method(fields[1], word)
    if mode == STATIC:
        raise _error(word, f"{fields[1]!r} needs addresses: ip=CLIENT:[SERVER]:[GATEWAY]:NETMASK:[HOSTNAME]:"
                           f"{name}:{fields[1]}")
    iface = Interface(name, [mode])
    iface.mtu, iface.mac, dns = _tail(fields[2:], word, allow_dns=False)
    _merge(plan, iface, word)


def _ip_static(plan: NetPlan, fields: List[str], word: str) -> None:
    client, server, gateway, netmask, hostname, name, method = fields[:7]
    mode = _method(method, word)
    iface = Interface(_ifname(name, word) if name else ANY_INTERFACE, [mode])
    if hostname:
        iface.hostname = _hostname(hostname, word)
    if server:
        iface.server = _address(server, word, "SERVER")
    iface.mtu, iface.mac, iface.dns = _tail(fields[7:], word, allow_dns=True)
    if not client:
        if mode == STATIC:
            raise _error(word, f"method {method!r} needs a CLIENT address (the first field)")
        if gateway or netmask:
            raise _error(word, "GATEWAY and NETMASK need a CLIENT address; leave them empty for DHCP")
        _merge(plan, iface, word)
        return
    if mode != STATIC:
        raise _error(word, f"a CLIENT address needs the method none, off or static, not {method!r}")
    address = _address(client, word, "CLIENT")
    version = ipaddress.ip_address(address).version
    iface.addresses = [Address(address, _prefix(netmask, version, word))]
    if gateway:
        gw = _address(gateway, word, "GATEWAY")
        if ipaddress.ip_address(gw).version != version:
            raise _error(word, f"GATEWAY {gw} and CLIENT {address} are not of the same IP version")
        iface.gateways = [gw]
    _merge(plan, iface, word)


def _tail(fields: List[str], word: str, allow_dns: bool) -> Tuple[Optional[int], str, List[str]]:
    """The optional fields after the method: ``[MTU][:MAC]`` or ``DNS1[:DNS2]``."""
    if not fields or fields == [""]:
        return None, "", []
    if len(fields) >= 6:
        mac = _mac(":".join(fields[-6:]).lower(), word)
        head = fields[:-6]
        if len(head) > 1:
            raise _error(word, "after the method only [MTU][:MAC] or DNS1[:DNS2] may follow")
        mtu = _mtu(head[0], word) if head and head[0] else None
        return mtu, mac, []
    if len(fields) == 1 and fields[0].isdigit():
        return _mtu(fields[0], word), "", []
    if allow_dns and len(fields) <= 2:
        return None, "", [_address(f, word, "DNS") for f in fields if f]
    allowed = "[MTU][:MAC] or DNS1[:DNS2]" if allow_dns else "[MTU][:MAC]"
    raise _error(word, f"after the method only {allowed} may follow, not {':'.join(fields)!r}")


def _merge(plan: NetPlan, new: Interface, word: str) -> None:
    """Several ``ip=`` for one interface add up; conflicting values are an error."""
    old = plan.interface(new.name)
    if old is None:
        plan.interfaces.append(new)
        if new.hostname and not plan.hostname:
            plan.hostname = new.hostname
        return
    for mode in new.modes:
        if mode not in old.modes:
            old.modes.append(mode)
    for addr in new.addresses:
        if addr not in old.addresses:
            old.addresses.append(addr)
    for gw in new.gateways:
        version = ipaddress.ip_address(gw).version
        same = [g for g in old.gateways if ipaddress.ip_address(g).version == version]
        if same and same[0] != gw:
            raise _error(word, f"{old.label} already has the gateway {same[0]}; one gateway per IP version")
        if not same:
            old.gateways.append(gw)
    for dns in new.dns:
        if dns not in old.dns:
            old.dns.append(dns)
    for attr in ("mtu", "mac", "hostname", "server"):
        value = getattr(new, attr)
        if value in (None, ""):
            continue
        current = getattr(old, attr)
        if current not in (None, "") and current != value:
            raise _error(word, f"{old.label} already has {attr} {current}, not {value}")
        setattr(old, attr, value)
    if new.hostname and not plan.hostname:
        plan.hostname = new.hostname


def _ifname_arg(plan: NetPlan, value: str, word: str) -> None:
    name, sep, mac = value.partition(":")
    if not sep:
        raise _error(word, "use ifname=NAME:MAC, like ifname=kdump0:52:54:00:12:34:56")
    rename = Rename(_ifname(name, word), _mac(mac.lower(), word))
    for old in plan.renames:
        if old.name == rename.name and old.mac != rename.mac:
            raise _error(word, f"{rename.name} is already the name of {old.mac}")
        if old.mac == rename.mac and old.name != rename.name:
            raise _error(word, f"{rename.mac} is already named {old.name}")
    if rename not in plan.renames:
        plan.renames.append(rename)


def _vlan(plan: NetPlan, value: str, word: str) -> None:
    parts = value.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise _error(word, "use vlan=NAME:PARENT, like vlan=eth0.5:eth0 or vlan=vlan5:eth0")
    name, parent = _ifname(parts[0], word), _ifname(parts[1], word)
    vlan = Vlan(name, parent, vlan_id_from_name(name, word))
    if any(v.name == name for v in plan.vlans):
        raise _error(word, f"VLAN {name} is defined twice")
    plan.vlans.append(vlan)


def vlan_id_from_name(name: str, word: str = "") -> int:
    """The VLAN id dracut reads from a VLAN name: ``PARENT.ID`` or ``vlanID`` (leading zeros allowed)."""
    match = re.fullmatch(r".+\.(\d+)", name) or re.fullmatch(r"vlan(\d+)", name)
    if not match:
        raise _error(word or name, f"cannot tell the VLAN id from the name {name!r}; name VLANs "
                                   "PARENT.ID (eth0.5, eth0.0005) or vlanID (vlan5, vlan0005)")
    vid = int(match.group(1))
    if not 1 <= vid <= 4094:
        raise _error(word or name, f"VLAN id {vid} in {name!r} is outside 1..4094")
    return vid


def _bond(plan: NetPlan, value: str, word: str) -> None:
    parts = value.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise _error(word, "use bond=NAME:SLAVES[:OPTIONS[:MTU]], like "
                           "bond=bond0:eth0,eth1:mode=active-backup,miimon=100")
    name = _ifname(parts[0], word)
    slaves = [_ifname(s, word) for s in parts[1].split(",")]
    if len(set(slaves)) != len(slaves) or name in slaves:
        raise _error(word, "each slave may be named once, and not be the bond itself")
    options = _bond_options(parts[2], word) if len(parts) > 2 and parts[2] else []
    mtu = _mtu(parts[3], word) if len(parts) > 3 and parts[3] else None
    if any(b.name == name for b in plan.bonds):
        raise _error(word, f"bond {name} is defined twice")
    plan.bonds.append(Bond(name, slaves, options, mtu))


def _bond_options(text: str, word: str) -> List[Tuple[str, str]]:
    options: List[Tuple[str, str]] = []
    for item in text.split(","):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not key or not val:
            raise _error(word, f"bond option {item!r} is not KEY=VALUE (like mode=active-backup,miimon=100)")
        if key not in BOND_OPTIONS:
            raise _error(word, f"unknown bond option {key!r}; allowed: {', '.join(BOND_OPTIONS)}")
        if key == "mode":
            val = _bond_mode(val, word)
        if any(k == key for k, _ in options):
            raise _error(word, f"bond option {key!r} is given twice")
        options.append((key, val))
    return options


def _bond_mode(value: str, word: str) -> str:
    if value.isdigit() and int(value) < len(BOND_MODES):
        return BOND_MODES[int(value)]
    if value in BOND_MODES:
        return value
    raise _error(word, f"bond mode {value!r} is unknown; use one of {', '.join(BOND_MODES)} (or 0..6)")


def _bridge(plan: NetPlan, value: str, word: str) -> None:
    parts = value.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise _error(word, "use bridge=NAME:PORTS, like bridge=br0:eth0,eth1")
    name = _ifname(parts[0], word)
    ports = [_ifname(p, word) for p in parts[1].split(",")]
    if any(b.name == name for b in plan.bridges):
        raise _error(word, f"bridge {name} is defined twice")
    plan.bridges.append(Bridge(name, ports))


def _route(plan: NetPlan, value: str, word: str) -> None:
    fields = _split_fields(value, word)
    if len(fields) < 2 or len(fields) > 3 or not fields[0]:
        raise _error(word, "use rd.route=NET/PREFIX:[GATEWAY][:IFACE], IPv6 in brackets: "
                           "rd.route=[2001:db8::/64]:[2001:db8::1]:eth0")
    try:
        network = ipaddress.ip_network(fields[0], strict=True)
    except ValueError as exc:
        raise _error(word, f"{fields[0]!r} is not a network NET/PREFIX ({exc})") from None
    gateway = _address(fields[1], word, "GATEWAY") if fields[1] else ""
    iface = _ifname(fields[2], word) if len(fields) == 3 and fields[2] else ""
    if gateway and ipaddress.ip_address(gateway).version != network.version:
        raise _error(word, f"gateway {gateway} is not of the same IP version as {network}")
    if not gateway and not iface:
        raise _error(word, "a route needs a GATEWAY, an IFACE or both")
    route = Route(str(network), gateway, iface)
    if route not in plan.routes:
        plan.routes.append(route)


def _nameserver(plan: NetPlan, value: str, word: str) -> None:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    address = _address(text, word, "nameserver")
    if address not in plan.nameservers:
        plan.nameservers.append(address)


_HANDLERS = {
    "ip": _ip,
    "ifname": _ifname_arg,
    "vlan": _vlan,
    "bond": _bond,
    "bridge": _bridge,
    "rd.route": _route,
    "nameserver": _nameserver,
}


def _check_plan(plan: NetPlan) -> None:
    """Cross-argument checks: a link used twice, VLAN on a bond slave, and so on."""
    members: Dict[str, str] = {}
    for bond in plan.bonds:
        for slave in bond.slaves:
            if slave in members:
                raise ConfigError(f"{slave} is in both {members[slave]} and bond {bond.name}")
            members[slave] = f"bond {bond.name}"
    for bridge in plan.bridges:
        for port in bridge.ports:
            if port in members:
                raise ConfigError(f"{port} is in both {members[port]} and bridge {bridge.name}")
            members[port] = f"bridge {bridge.name}"
    for vlan in plan.vlans:
        if vlan.parent in members:
            raise ConfigError(f"VLAN {vlan.name} is on {vlan.parent}, which is in {members[vlan.parent]}")
    for iface in plan.interfaces:
        if iface.name in members:
            raise ConfigError(f"ip= configures {iface.name}, which is in {members[iface.name]}; "
                              "configure the bond or bridge instead")
    created = [b.name for b in plan.bonds] + [b.name for b in plan.bridges] + [v.name for v in plan.vlans]
    for name in created:
        if created.count(name) > 1:
            raise ConfigError(f"{name} is defined more than once by vlan=, bond= or bridge=")


# ---------------------------------------------------------------- field helpers

def _split_fields(value: str, word: str) -> List[str]:
    """Split on ``:`` except inside ``[...]``; brackets are removed."""
    fields: List[str] = []
    current: List[str] = []
    depth = 0
    for c in value:
        if c == "[":
            if depth:
                raise _error(word, "nested '[' in an address")
            depth = 1
        elif c == "]":
            if not depth:
                raise _error(word, "']' without '['")
            depth = 0
        elif c == ":" and not depth:
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    if depth:
        raise _error(word, "'[' without ']' (IPv6 addresses are written in brackets: [2001:db8::1])")
    fields.append("".join(current))
    return fields


def _method(text: str, word: str) -> str:
    mode = _METHODS.get(text.lower())
    if mode is None:
        raise _error(word, f"method {text!r} is not supported; use {_ALLOWED_METHODS}")
    return mode


def _ifname(name: str, word: str) -> str:
    problem = interface_name_problem(name)
    if problem:
        raise _error(word, problem)
    return name


def _address(text: str, word: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _error(word, f"{what} {text!r} is not an IP address (IPv6 in brackets: [2001:db8::1])") from None


def _prefix(netmask: str, version: int, word: str) -> int:
    if not netmask:
        raise _error(word, "NETMASK (the fourth field) is empty; give 255.255.255.0 or a prefix length like 24")
    bits = 32 if version == 4 else 128
    if netmask.isdigit():
        prefix = int(netmask)
        if not 0 < prefix <= bits:
            raise _error(word, f"prefix length {prefix} is outside 1..{bits}")
        return prefix
    if version == 4:
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            pass
        raise _error(word, f"NETMASK {netmask!r} is neither a netmask like 255.255.255.0 nor a prefix length")
    raise _error(word, f"NETMASK {netmask!r} for an IPv6 address must be a prefix length like 64")


def _mtu(text: str, word: str) -> int:
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise _error(word, f"MTU {text!r} must be a number from 68 to 65535")
    return int(text)


def _mac(text: str, word: str) -> str:
    if not _MAC.fullmatch(text):
        raise _error(word, f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    return text


def _hostname(text: str, word: str) -> str:
    if len(text) > 64 or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", text):
        raise _error(word, f"HOSTNAME {text!r} is not a host name (letters, digits, '-', '.')")
    return text


def _error(word: str, what: str) -> ConfigError:
    return ConfigError(f"kernel argument {word!r}: {what}")


# ---------------------------------------------------------------- rendering

def to_cmdline(plan: NetPlan) -> List[str]:
    """``plan`` as dracut arguments; :func:`parse_cmdline` of them gives the plan back."""
    args: List[str] = [f"ifname={r.name}:{r.mac}" for r in plan.renames]
    for bond in plan.bonds:
        text = f"bond={bond.name}:{','.join(bond.slaves)}"
        if bond.options or bond.mtu:
            text += ":" + ",".join(f"{k}={v}" for k, v in bond.options)
        if bond.mtu:
            text += f":{bond.mtu}"
        args.append(text)
    args += [f"bridge={b.name}:{','.join(b.ports)}" for b in plan.bridges]
    args += [f"vlan={v.name}:{v.parent}" for v in plan.vlans]
    nameservers = list(plan.nameservers)
    for iface in plan.interfaces:
        args += _render_interface(iface, plan.hostname, nameservers)
    for route in plan.routes:
        dest = route.destination
        text = f"rd.route={_bracket(dest)}:{_bracket(route.gateway)}"
        if route.interface:
            text += f":{route.interface}"
        args.append(text)
    args += [f"nameserver={_bracket(ns)}" for ns in nameservers]
    return args


def _render_interface(iface: Interface, hostname: str, nameservers: List[str]) -> List[str]:
    args: List[str] = []
    tail = ""
    if iface.mtu or iface.mac:
        tail = f":{iface.mtu or ''}" + (f":{iface.mac}" if iface.mac else "")
    dns_tail = ""
    if iface.dns and not tail and len(iface.dns) <= 2:
        dns_tail = "".join(f":{_bracket(d)}" for d in iface.dns)
    else:
        nameservers += [d for d in iface.dns if d not in nameservers]
    host = iface.hostname
    first_static = True
    used_gateways: List[str] = []
    for addr in iface.addresses:
        gw = next((g for g in iface.gateways if ipaddress.ip_address(g).version == addr.version
                   and g not in used_gateways), "")
        if gw:
            used_gateways.append(gw)
        server = iface.server if first_static else ""
        text = (f"ip={_bracket(addr.address)}:{_bracket(server)}:{_bracket(gw)}:{addr.prefix}:"
                f"{host}:{iface.name}:none")
        args.append(text + (tail + dns_tail if first_static else ""))
        first_static = False
    for mode in iface.modes:
        if mode == STATIC:
            continue
        method = {DHCP: "dhcp", DHCP6: "dhcp6", AUTO6: "auto6"}[mode]
        if not iface.name and not tail and not host:
            args.append(f"ip={method}")
        elif host or not iface.name or (dns_tail and first_static):
            args.append(f"ip=::::{host}:{iface.name}:{method}" + (tail + dns_tail if first_static else ""))
        else:
            args.append(f"ip={iface.name}:{method}" + (tail if first_static else ""))
        first_static = False
    return args


def _bracket(text: str) -> str:
    return f"[{text}]" if ":" in text else text


def describe(plan: NetPlan) -> str:
    """One line per element of the plan, for logs and ``check-config``."""
    lines: List[str] = []
    if plan.description:
        lines.append(plan.description)
    lines += [f"rename the link with MAC {r.mac} to {r.name}" for r in plan.renames]
    for bond in plan.bonds:
        opts = ",".join(f"{k}={v}" for k, v in bond.options) or "kernel defaults"
        lines.append(f"bond {bond.name} of {', '.join(bond.slaves)} ({opts})")
    lines += [f"bridge {b.name} of {', '.join(b.ports)}" for b in plan.bridges]
    lines += [f"VLAN {v.name}: id {v.vlan_id} on {v.parent}" for v in plan.vlans]
    for iface in plan.interfaces:
        parts = [f"{iface.label}: {'+'.join(iface.modes)}"]
        parts += [str(a) for a in iface.addresses]
        parts += [f"gateway {g}" for g in iface.gateways]
        if iface.mtu:
            parts.append(f"mtu {iface.mtu}")
        if iface.mac:
            parts.append(f"mac {iface.mac}")
        lines.append(", ".join(parts))
    for route in plan.routes:
        via = f" via {route.gateway}" if route.gateway else ""
        dev = f" dev {route.interface}" if route.interface else ""
        lines.append(f"route {route.destination}{via}{dev}")
    if plan.all_nameservers():
        lines.append(f"DNS {', '.join(plan.all_nameservers())}")
    return "; ".join(lines) if lines else "no network configuration"
