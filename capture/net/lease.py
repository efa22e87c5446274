"""A DHCP lease in the capture kernel: the hook the DHCP client runs for
every event (:func:`dhcp_hook`), applying the lease with iproute2's ``ip``
and recording it as JSON for :mod:`capture.net.bringup`, which waits for it.

The hook is a new interpreter for each event, started without ``site``:
this module imports only the standard library and :mod:`capture.errors`.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from capture.errors import KdumpError

log = logging.getLogger(__name__)


class IpTool:
    """Runs ``ip`` with an argument list; failures become :class:`KdumpError`."""

    def __init__(self, program: Optional[str] = None) -> None:
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
        return {link["ifname"]: link for link in self.json("-d", "link", "show")}

    def addresses(self, name: str) -> List[dict]:
        data = self.json("addr", "show", "dev", name)
        return data[0].get("addr_info", []) if data else []

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
    return state / f"lease-{name}-{version}.json"


# ---------------------------------------------------------------- the DHCP hook

def dhcp_hook(client: str, state_dir: str, argv: List[str], env: Dict[str, str]) -> int:
    """Run by the DHCP client for every event: apply a new lease and record it for :func:`bring_up`.

    Returns the exit status the client expects (1 refuses an old lease on dhclient's TIMEOUT).
    """
    lease = lease_from_env(client, argv, env)
    if lease is None:
        reason = env.get("reason") or (argv[0] if argv else "")
        return 1 if reason in ("TIMEOUT",) else 0
    try:
        if client != "dhcpcd":
            apply_lease(IpTool(), lease)
    except KdumpError as exc:
        print(f"kdump-saver dhcp hook: {exc}", file=sys.stderr)
        return 1
    path = lease_path(Path(state_dir), lease["interface"], lease["version"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lease))
    tmp.rename(path)
    return 0


def lease_from_env(client: str, argv: List[str], env: Dict[str, str]) -> Optional[dict]:
    """The lease in a DHCP client's hook environment, or None for other events."""
    iface = env.get("interface", "")
    if client in ("udhcpc", "udhcpc6"):
        event = argv[0] if argv else ""
        if event not in ("bound", "renew"):
            return None
        if client == "udhcpc6":
            address = env.get("ipv6", "")
            return _lease(iface, 6, address, 128, [], env.get("dns", "").split(), None, env.get("lease"))
        prefix = env.get("mask") or (str(ipaddress.IPv4Network(f"0.0.0.0/{env['subnet']}").prefixlen)
                                     if env.get("subnet") else "32")
        return _lease(iface, 4, env.get("ip", ""), int(prefix), env.get("router", "").split(),
                      env.get("dns", "").split(), env.get("mtu"), env.get("lease"))
    reason = env.get("reason", "")
    if reason in ("BOUND", "RENEW", "REBIND", "REBOOT"):
        if client == "dhcpcd":
            prefix = env.get("new_subnet_cidr") or "32"
        else:
            mask = env.get("new_subnet_mask")
            prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen) if mask else "32"
        return _lease(iface, 4, env.get("new_ip_address", ""), int(prefix), env.get("new_routers", "").split(),
                      env.get("new_domain_name_servers", "").split(), env.get("new_interface_mtu"),
                      env.get("new_dhcp_lease_time"))
    if reason in ("BOUND6", "RENEW6", "REBIND6", "REBOOT6"):
        address = env.get("new_ip6_address") or env.get("new_dhcp6_ia_na1_ia_addr1", "")
        prefix = int(env.get("new_ip6_prefixlen") or 128)
        return _lease(iface, 6, address, prefix, [], env.get("new_dhcp6_name_servers", "").split(), None,
                      env.get("new_max_life") or env.get("new_dhcp6_ia_na1_ia_addr1_vltime"))
    return None


def _lease(iface: str, version: int, address: str, prefix: int, routers: List[str], dns: List[str],
           mtu: Optional[str], lease_time: Optional[str]) -> Optional[dict]:
    if not iface or not address:
        return None
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        return None
    return {"interface": iface, "version": version, "address": address, "prefix": prefix,
            "routers": routers, "dns": dns, "mtu": int(mtu) if mtu and mtu.isdigit() else None,
            "lease_time": int(lease_time) if lease_time and lease_time.isdigit() else None}


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
