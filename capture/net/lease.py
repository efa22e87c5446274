"""A DHCP lease in the capture kernel.

The DHCP client runs a small POSIX shell hook (:func:`hook_script`) for
every event; for a lease it records the client's variables in a file the
saver reads (:func:`read_lease`), and the saver applies the lease with
iproute2's ``ip`` (:func:`apply_lease`; dhcpcd applies its own).  The hook
starts no interpreter: under a slow capture kernel each Python start cost
a third of a second of the only CPU.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from capture.errors import KdumpError
from capture.net import rtnetlink

log = logging.getLogger(__name__)


class IpTool:
    """Runs ``ip`` with an argument list; failures become :class:`KdumpError`.
    With ``netlink``, :meth:`links` and :meth:`link_and_addresses` ask the
    kernel directly (:mod:`capture.net.rtnetlink`: the keys the capture
    kernel's bring-up reads, not everything ``ip`` shows)."""

    def __init__(self, program: Optional[str] = None, netlink: bool = False) -> None:
        self.netlink = netlink
        found = program or shutil.which("ip") or next(
            (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)), None)
        if found is None:
            raise KdumpError("network: the program 'ip' (iproute2) is not installed; it is needed to "
                             "configure the network")
        self.program = found

    def run(self, *args: str) -> str:
        argv = [self.program, *args]
        log.debug("network: %s", " ".join(argv))
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise KdumpError(f"network: 'ip {' '.join(args)}' failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def json(self, *args: str) -> list:
        out = self.run("-j", *args)
        return json.loads(out) if out.strip() else []

    def links(self) -> Dict[str, dict]:
        """Every link by name, as ``ip -j -d link show`` shows it."""
        try:
            if self.netlink:
                return rtnetlink.links()
        except (OSError, ValueError) as exc:
            log.debug("network: rtnetlink: %s; asking ip", exc)
        return {link["ifname"]: link for link in self.json("-d", "link", "show")}

    def addresses(self, name: str) -> List[dict]:
        return self.link_and_addresses(name).get("addr_info", [])

    def link_and_addresses(self, name: str) -> dict:
        """The link (flags, operstate, MAC) with its ``addr_info``, as one ``ip addr show`` shows it; {} when absent."""
        try:
            if self.netlink:
                return rtnetlink.link_and_addresses(name)
        except (OSError, ValueError) as exc:
            log.debug("network: rtnetlink: %s; asking ip", exc)
        data = self.json("addr", "show", "dev", name)
        return data[0] if data else {}

    def route_get(self, address: str) -> Optional[dict]:
        argv = [self.program, "-j", "route", "get", address]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        routes = json.loads(proc.stdout)
        if not routes or routes[0].get("type") in ("unreachable", "prohibit", "blackhole"):
            return None
        return routes[0]


def lease_path(state: Path, name: str, version: int) -> Path:
    return state / f"lease-{name}-{version}"


# ---------------------------------------------------------------- the DHCP hook

#: what the hook records, beside the event: every variable :func:`lease_from_env` reads
#: (dhclient and dhcpcd: ``reason`` and ``new_*``; udhcpc: the event is its argument)
ENV_NAMES = ("interface", "reason", "new_ip_address", "new_subnet_mask", "new_subnet_cidr", "new_routers",
             "new_domain_name_servers", "new_interface_mtu", "new_dhcp_lease_time", "new_ip6_address",
             "new_dhcp6_ia_na1_ia_addr1", "new_ip6_prefixlen", "new_dhcp6_name_servers", "new_max_life",
             "new_dhcp6_ia_na1_ia_addr1_vltime", "ip", "mask", "subnet", "router", "dns", "mtu", "lease", "ipv6")
#: the events that carry a lease (dhclient, dhcpcd; udhcpc's in lower case)
LEASE_EVENTS = ("BOUND", "RENEW", "REBIND", "REBOOT", "BOUND6", "RENEW6", "REBIND6", "REBOOT6", "bound", "renew")


def hook_script(record: Path) -> str:
    """The DHCP client's hook: on a lease event, write the event and :data:`ENV_NAMES`
    NUL-separated (a server's values cannot hold a NUL) to ``record``, atomically;
    exit 1 on dhclient's TIMEOUT (never fall back to an old lease), else 0."""
    tmp = f"{record}.tmp"
    return ("#!/bin/sh\n"
            "# kdump-saver's DHCP hook: records the lease; kdump-saver applies it\n"
            'event=${reason:-$1}\n'
            'case "$event" in\n'
            f"    {'|'.join(LEASE_EVENTS)}) ;;\n"
            "    TIMEOUT) exit 1 ;;\n"
            "    *) exit 0 ;;\n"
            "esac\n"
            "umask 077\n"
            "{\n"
            "    printf 'event=%s\\0' \"$event\"\n"
            f"    for name in {' '.join(ENV_NAMES)}; do\n"
            '        eval "value=\\${$name-}"\n'
            "        printf '%s=%s\\0' \"$name\" \"$value\"\n"
            "    done\n"
            f"}} > '{tmp}' && mv -f '{tmp}' '{record}'\n")


def read_lease(client: str, path: Path) -> Optional[dict]:
    """The lease the hook recorded in ``path`` for ``client`` (dhclient, dhcpcd,
    udhcpc, udhcpc6), or None when there is none yet or it is not usable."""
    try:
        data = path.read_bytes()[:1 << 16]
    except OSError:
        return None
    env: Dict[str, str] = {}
    for item in data.split(b"\0"):
        name, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            env[name] = value
    event = env.pop("event", "")
    return lease_from_env(client, [event], env)


def lease_from_env(client: str, argv: List[str], env: Dict[str, str]) -> Optional[dict]:
    """The lease in a DHCP client's hook variables, or None for other events and for
    values that are not a usable lease (they come from the DHCP server)."""
    try:
        return _lease_from_env(client, argv, env)
    except ValueError:
        return None


def _lease_from_env(client: str, argv: List[str], env: Dict[str, str]) -> Optional[dict]:
    iface = env.get("interface", "")
    if client in ("udhcpc", "udhcpc6"):
        event = argv[0] if argv else ""
        if event not in ("bound", "renew"):
            return None
        if client == "udhcpc6":
            return _lease(iface, 6, env.get("ipv6", ""), "128", "", env.get("dns", ""), None, env.get("lease"))
        prefix = env.get("mask") or (str(ipaddress.IPv4Network(f"0.0.0.0/{env['subnet']}").prefixlen)
                                     if env.get("subnet") else "32")
        return _lease(iface, 4, env.get("ip", ""), prefix, env.get("router", ""),
                      env.get("dns", ""), env.get("mtu"), env.get("lease"))
    reason = env.get("reason", "")
    if reason in ("BOUND", "RENEW", "REBIND", "REBOOT"):
        if client == "dhcpcd":
            prefix = env.get("new_subnet_cidr") or "32"
        else:
            mask = env.get("new_subnet_mask")
            prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen) if mask else "32"
        return _lease(iface, 4, env.get("new_ip_address", ""), prefix, env.get("new_routers", ""),
                      env.get("new_domain_name_servers", ""), env.get("new_interface_mtu"),
                      env.get("new_dhcp_lease_time"))
    if reason in ("BOUND6", "RENEW6", "REBIND6", "REBOOT6"):
        address = env.get("new_ip6_address") or env.get("new_dhcp6_ia_na1_ia_addr1", "")
        return _lease(iface, 6, address, env.get("new_ip6_prefixlen") or "128", "",
                      env.get("new_dhcp6_name_servers", ""), None,
                      env.get("new_max_life") or env.get("new_dhcp6_ia_na1_ia_addr1_vltime"))
    return None


def _number(text: Optional[str]) -> Optional[int]:
    """A decimal count of at most 10 ASCII digits, else None."""
    return int(text) if text and len(text) <= 10 and text.isascii() and text.isdigit() else None


def _addresses(text: str, version: Optional[int] = None) -> List[str]:
    """The valid addresses (of ``version``, if given) in a space-separated list."""
    found = []
    for word in text.split():
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        if version is None or address.version == version:
            found.append(str(address))
    return found


def _lease(iface: str, version: int, address: str, prefix: str, routers: str, dns: str,
           mtu: Optional[str], lease_time: Optional[str]) -> Optional[dict]:
    length = _number(prefix)
    valid = _addresses(address, version)
    if not iface or len(valid) != 1 or length is None or length > (32 if version == 4 else 128):
        return None
    return {"interface": iface, "version": version, "address": valid[0], "prefix": length,
            "routers": _addresses(routers, version), "dns": _addresses(dns),
            "mtu": _number(mtu), "lease_time": _number(lease_time)}


def apply_lease(ip: IpTool, lease: dict) -> None:
    """Configure a DHCP lease with ``ip``: address with the lease's lifetime, default route, MTU."""
    name = lease["interface"]
    if lease.get("mtu") and lease["mtu"] >= 576:
        ip.run("link", "set", "dev", name, "mtu", str(lease["mtu"]))
    ip.run("link", "set", "dev", name, "up")
    argv = ["addr", "replace", f"{lease['address']}/{lease['prefix']}", "dev", name]
    if lease["version"] == 4 and lease["prefix"] < 31:
        argv += ["broadcast", "+"]
    if lease.get("lease_time"):
        argv += ["valid_lft", str(lease["lease_time"]), "preferred_lft", str(lease["lease_time"])]
    ip.run(*argv)
    if lease["version"] == 4 and lease.get("routers"):
        router = lease["routers"][0]
        argv = ["-4", "route", "replace", "default", "via", router, "dev", name]
        if ipaddress.ip_address(router) not in ipaddress.ip_interface(
                f"{lease['address']}/{lease['prefix']}").network:
            argv.append("onlink")
        ip.run(*argv)
