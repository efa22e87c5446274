"""The links and addresses read over rtnetlink (capture/net/rtnetlink.py) against ``ip -j -d``.

The bring-up polls links through :mod:`capture.net.rtnetlink` instead of
starting ``ip`` each time; it must see what ``ip`` would have shown.  Links
of several kinds and states are made in a network namespace of the test's
own, read both ways inside it, and compared on every key the bring-up reads.
The parsers also get arbitrary bytes (Hypothesis): a ValueError at worst.
"""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from capture.net import rtnetlink
from conftest import require
from netns import Lab, ip_netns_available, link_kind_available

LINK_KEYS = ("ifindex", "ifname", "flags", "operstate", "link_type", "address", "permaddr", "master")
ADDR_KEYS = ("family", "local", "prefixlen", "scope", "tentative", "dadfailed")

#: runs in the namespace: both views of every link, as JSON
_COMPARE = r"""
import json, subprocess, sys
from capture.net import rtnetlink
ours = rtnetlink.links()
theirs = {l["ifname"]: l for l in json.loads(subprocess.run(["ip", "-j", "-d", "link", "show"],
          capture_output=True, text=True, check=True).stdout)}
addrs = {}
for name in theirs:
    shown = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True,
                       check=True).stdout)
    addrs[name] = {"ours": rtnetlink.link_and_addresses(name), "theirs": shown[0] if shown else {}}
print(json.dumps({"ours": ours, "theirs": theirs, "addrs": addrs}))
"""


@pytest.fixture
def lab():
    problem = ip_netns_available()
    require(problem is None, problem or "")
    with Lab() as the_lab:
        yield the_lab


def _picked(link: dict) -> dict:
    out = {k: link[k] for k in LINK_KEYS if k in link}
    info = link.get("linkinfo", {})
    for key in ("info_kind", "info_slave_kind"):
        if key in info:
            out[key] = info[key]
    if "perm_hwaddr" in info.get("info_slave_data", {}):
        out["perm_hwaddr"] = info["info_slave_data"]["perm_hwaddr"]
    return out


def test_links_and_addresses_are_what_ip_shows(lab: Lab) -> None:
    ns = lab.netns("nl")
    peer = lab.netns("peer")
    lab.veth(ns, "up0", peer, "far0")                      # up, its peer down: NO-CARRIER
    lab.ip(ns, "link", "add", "both0", "type", "veth", "peer", "name", "both1")
    for name in ("both0", "both1"):
        lab.ip(ns, "link", "set", name, "up")               # up with a carrier
    lab.ip(ns, "link", "add", "down0", "address", "02:00:00:aa:bb:cc", "type", "veth", "peer", "name", "down1")
    lab.ip(ns, "link", "set", "lo", "up")
    lab.ip(ns, "addr", "add", "192.0.2.7/24", "dev", "both0")
    lab.ip(ns, "addr", "add", "2001:db8:5::7/64", "dev", "both0")
    lab.ip(ns, "addr", "add", "2001:db8:6::7/64", "dev", "down0")   # tentative while the link is down
    lab.ip(ns, "addr", "add", "198.51.100.9/32", "dev", "lo")
    if link_kind_available("bridge") is None:
        lab.ip(ns, "link", "add", "br0", "type", "bridge")
        lab.ip(ns, "link", "set", "both1", "master", "br0")
        lab.ip(ns, "link", "set", "br0", "up")
    views = json.loads(lab.run_python(ns, _COMPARE).stdout)
    ours, theirs = views["ours"], views["theirs"]
    assert sorted(ours) == sorted(theirs)
    assert {"NO-CARRIER", "UP"} <= set(ours["up0"]["flags"])
    for name, link in theirs.items():
        assert _picked(ours[name]) == _picked(link), name
    if "br0" in ours:
        assert ours["both1"]["master"] == "br0" and ours["br0"]["linkinfo"]["info_kind"] == "bridge"
    for name, both in views["addrs"].items():
        mine = [{k: a[k] for k in ADDR_KEYS if k in a} for a in both["ours"].get("addr_info", [])]
        shown = [{k: a[k] for k in ADDR_KEYS if k in a} for a in both["theirs"].get("addr_info", [])]
        assert mine == shown, name
        assert ({k: both["ours"][k] for k in LINK_KEYS if k in both["ours"]}
                == {k: both["theirs"][k] for k in LINK_KEYS if k in both["theirs"]}), name
    assert any(a.get("tentative") for a in views["addrs"]["down0"]["ours"]["addr_info"])
    assert lab.run_python(ns, "from capture.net import rtnetlink; print(rtnetlink.link_and_addresses('nosuch'))"
                          ).stdout.strip() == "{}"


# -- hostile answers ----------------------------------------------------------------------

def _attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6))
def test_any_link_or_address_message_parses_or_is_a_value_error(head: bytes, attrs: list) -> None:
    for body in (head, struct.pack("=BxHiII", 0, 1, 3, 0x1043, 0) + b"".join(_attr(k, v) for k, v in attrs),
                 struct.pack("=BBBBI", 10, 64, 0x40, 0, 3) + b"".join(_attr(k, v) for k, v in attrs)):
        for parse in (rtnetlink.parse_link, rtnetlink.parse_address):
            try:
                parse(body)
            except ValueError:
                pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_dump_answer_yields_messages_or_a_value_error(answer: bytes) -> None:
    try:
        list(rtnetlink._messages(answer, 1))
        rtnetlink._done(answer, 1)
    except (ValueError, OSError):
        pass
