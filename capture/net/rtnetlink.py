"""The kernel's links and addresses, asked over rtnetlink instead of with ``ip``.

Runs in the capture kernel.  Bringing the network up polls the links many
times; each ``ip -j link show`` is a process start, about a tenth of a
second of the only CPU under emulation.  These queries answer from one
netlink socket in-process, in the shape ``ip -j -d`` prints (the keys the
bring-up reads: ``ifindex``, ``ifname``, ``flags``, ``operstate``,
``link_type``, ``address``, ``permaddr``, ``master``, ``linkinfo``, and
``addr_info`` entries with ``family``, ``local``, ``prefixlen``, ``scope``,
``tentative``, ``dadfailed``).  Changing links stays with ``ip``.

:func:`links` and :func:`link_and_addresses` raise ``OSError`` when the
kernel cannot be asked and ``ValueError`` when its answer does not parse;
the caller then runs ``ip``.  tests/test_network.py compares them with
``ip -j -d`` on links it creates in a network namespace.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Dict, Iterator, List, Tuple

_NETLINK_ROUTE = 0
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_ATTR = struct.Struct("=HH")
#: an answer larger than this is not a link table
_MAX_ANSWER = 16 << 20

_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_LINK, _IFLA_MASTER, _IFLA_OPERSTATE = 1, 3, 5, 10, 16
_IFLA_LINKINFO, _IFLA_PERM_ADDRESS = 18, 54
_IFLA_INFO_KIND, _IFLA_INFO_SLAVE_KIND, _IFLA_INFO_SLAVE_DATA, _IFLA_BOND_SLAVE_PERM_HWADDR = 1, 4, 5, 4
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_DADFAILED, _IFA_F_TENTATIVE = 0x08, 0x40
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
#: flag names in the order ``ip`` prints them (NO-CARRIER first, RUNNING never)
_FLAG_NAMES = ((0x8, "LOOPBACK"), (0x2, "BROADCAST"), (0x10, "POINTOPOINT"), (0x1000, "MULTICAST"),
               (0x80, "NOARP"), (0x200, "ALLMULTI"), (0x100, "PROMISC"), (0x400, "MASTER"), (0x800, "SLAVE"),
               (0x4, "DEBUG"), (0x8000, "DYNAMIC"), (0x4000, "AUTOMEDIA"), (0x2000, "PORTSEL"),
               (0x20, "NOTRAILERS"), (0x1, "UP"), (0x10000, "LOWER_UP"), (0x20000, "DORMANT"), (0x40000, "ECHO"))
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_LINK_TYPES = {1: "ether", 32: "infiniband", 772: "loopback", 65534: "none"}
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def _attributes(data: bytes, start: int) -> Iterator[Tuple[int, bytes]]:
    """(type without the nested/byte-order bits, payload) of each attribute from ``start``."""
    pos, end = start, len(data)
    while pos + 4 <= end:
        length, kind = _ATTR.unpack_from(data, pos)
        if length < 4 or pos + length > end:
            raise ValueError(f"netlink attribute of length {length} at {pos} of {end}")
        yield kind & 0x3FFF, data[pos + 4:pos + length]
        pos += (length + 3) & ~3


def _string(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "replace")


def _mac(payload: bytes) -> str:
    return ":".join(f"{b:02x}" for b in payload)


def _messages(answer: bytes, seq: int) -> Iterator[Tuple[int, bytes]]:
    """(type, body) of each message of a dump; stops at its end."""
    pos = 0
    while pos + _HEADER.size <= len(answer):
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(answer, pos)
        if length < _HEADER.size or pos + length > len(answer):
            raise ValueError(f"netlink message of length {length} at {pos} of {len(answer)}")
        body = answer[pos + _HEADER.size:pos + length]
        pos += (length + 3) & ~3
        if got_seq != seq:
            continue
        if kind == _NLMSG_DONE:
            return
        if kind == _NLMSG_ERROR:
            code = struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if code:
                raise OSError(-code, os.strerror(-code))
            continue
        yield kind, body


def _dump(kind: int, family_body: bytes) -> List[Tuple[int, bytes]]:
    """Every message of one dump request."""
    seq = 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        sock.send(_HEADER.pack(_HEADER.size + len(family_body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
                  + family_body)
        out: List[Tuple[int, bytes]] = []
        total = 0
        while True:
            answer, _, flags, _ = sock.recvmsg(1 << 16)
            total += len(answer)
            if flags & socket.MSG_TRUNC:
                raise ValueError("a netlink message larger than 64 KiB")
            if not answer or total > _MAX_ANSWER:
                raise ValueError("netlink dump without an end")
            done = _done(answer, seq)
            out.extend(_messages(answer, seq))
            if done:
                return out


def _done(answer: bytes, seq: int) -> bool:
    pos = 0
    while pos + _HEADER.size <= len(answer):
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(answer, pos)
        if length < _HEADER.size:
            raise ValueError("netlink message shorter than its header")
        if got_seq == seq and kind in (_NLMSG_DONE, _NLMSG_ERROR):
            return True
        pos += (length + 3) & ~3
    return False


def parse_link(body: bytes) -> Tuple[dict, int, int, int]:
    """One RTM_NEWLINK body as ``ip -j -d link`` shows it, with its raw flags, its
    master's index and the index of the link it is tied to (0 for none)."""
    if len(body) < _IFINFO.size:
        raise ValueError("short link message")
    _family, link_type, index, flags, _change = _IFINFO.unpack_from(body)
    names = (["NO-CARRIER"] if flags & _IFF_UP and not flags & _IFF_RUNNING else [])
    link: dict = {"ifindex": index, "flags": names + [name for bit, name in _FLAG_NAMES if flags & bit],
                  "link_type": _LINK_TYPES.get(link_type, f"[{link_type}]")}
    master = iflink = 0
    perm = ""
    for kind, payload in _attributes(body, _IFINFO.size):
        if kind == _IFLA_IFNAME:
            link["ifname"] = _string(payload)
        elif kind == _IFLA_ADDRESS:
            link["address"] = _mac(payload)
        elif kind == _IFLA_PERM_ADDRESS:
            perm = _mac(payload)
        elif kind == _IFLA_MASTER and len(payload) >= 4:
            master = struct.unpack_from("=I", payload)[0]
        elif kind == _IFLA_LINK and len(payload) >= 4:
            iflink = struct.unpack_from("=I", payload)[0]
        elif kind == _IFLA_OPERSTATE and payload:
            link["operstate"] = _OPERSTATES[payload[0]] if payload[0] < len(_OPERSTATES) else "UNKNOWN"
        elif kind == _IFLA_LINKINFO:
            link["linkinfo"] = _linkinfo(payload)
    if perm and perm != link.get("address"):
        link["permaddr"] = perm
    if "ifname" not in link:
        raise ValueError("link message without a name")
    return link, flags, master, iflink


def _linkinfo(payload: bytes) -> dict:
    info: dict = {}
    slave_data = b""
    for kind, value in _attributes(payload, 0):
        if kind == _IFLA_INFO_KIND:
            info["info_kind"] = _string(value)
        elif kind == _IFLA_INFO_SLAVE_KIND:
            info["info_slave_kind"] = _string(value)
        elif kind == _IFLA_INFO_SLAVE_DATA:
            slave_data = value
    if info.get("info_slave_kind") == "bond":  # the slave data's attribute numbers are the master kind's
        for sub, data in _attributes(slave_data, 0):
            if sub == _IFLA_BOND_SLAVE_PERM_HWADDR:
                info["info_slave_data"] = {"perm_hwaddr": _mac(data)}
    return info


def parse_address(body: bytes) -> Tuple[int, dict]:
    """One RTM_NEWADDR body: (link index, the ``addr_info`` entry ``ip -j addr`` shows)."""
    if len(body) < _IFADDR.size:
        raise ValueError("short address message")
    family, prefixlen, flags, scope, index = _IFADDR.unpack_from(body)
    local = address = None
    for kind, payload in _attributes(body, _IFADDR.size):
        if kind == _IFA_LOCAL:
            local = payload
        elif kind == _IFA_ADDRESS:
            address = payload
        elif kind == _IFA_FLAGS and len(payload) >= 4:
            flags = struct.unpack_from("=I", payload)[0]
    raw = local if local is not None else address
    entry: dict = {"family": {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(family, str(family)),
                   "prefixlen": prefixlen, "scope": _SCOPES.get(scope, str(scope))}
    if raw is not None and family in (socket.AF_INET, socket.AF_INET6) \
            and len(raw) == (4 if family == socket.AF_INET else 16):
        entry["local"] = socket.inet_ntop(family, raw)
    if flags & _IFA_F_TENTATIVE:
        entry["tentative"] = True
    if flags & _IFA_F_DADFAILED:
        entry["dadfailed"] = True
    return index, entry


def links() -> Dict[str, dict]:
    """Every link by name, as ``ip -j -d link show`` shows it (the keys above)."""
    found = [parse_link(body) for kind, body in _dump(_RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
             if kind == _RTM_NEWLINK]
    names = {link["ifindex"]: link["ifname"] for link, _, _, _ in found}
    flags = {link["ifindex"]: raw for link, raw, _, _ in found}
    for link, _, master, iflink in found:
        if master in names:
            link["master"] = names[master]
        if iflink and not flags.get(iflink, 0) & _IFF_UP:
            link["flags"].append("M-DOWN")  # as ip shows a link whose peer (a veth's, a VLAN's parent) is down
    return {link["ifname"]: link for link, _, _, _ in found}


def link_and_addresses(name: str) -> dict:
    """The link ``name`` with its ``addr_info``, as ``ip -j addr show dev NAME`` shows it; {} when absent."""
    link = links().get(name)
    if link is None:
        return {}
    addresses = [parse_address(body) for kind, body in
                 _dump(_RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)) if kind == _RTM_NEWADDR]
    link["addr_info"] = [entry for index, entry in addresses if index == link["ifindex"] and "local" in entry]
    return link
