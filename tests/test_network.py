"""Network bring-up and production-side detection, for real, inside network namespaces.

Each test builds a "server" namespace (a gateway at 198.51.100.1 /
2001:db8:1::1 on a veth, the dump target 203.0.113.10 / 2001:db8:ff::10 on its
loopback with a TCP listener, optionally dnsmasq for DHCP, DHCPv6, router
advertisements and DNS) and a "client" namespace where
``capture.net.bringup.bring_up`` runs (tests/netns.py).  Results are checked in
the resulting ``ip -j`` state and by reaching the listener.  Every address
exists only inside these namespaces.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

import netvm
from conftest import require, require_program
from netns import Lab, ip_netns_available, link_kind_available

GATEWAY = "198.51.100.1"
TARGET = "203.0.113.10"
GATEWAY6 = "2001:db8:1::1"
TARGET6 = "2001:db8:ff::10"
TARGET_NAME = "dumps.kdump.test"
PORT = 5555
CLIENT_MAC = "02:00:00:00:00:01"


#: tests that need link kinds some host kernels lack; they run in a QEMU guest there (tests/netvm.py)
GUEST_TESTS = ("test_vlan", "test_bond_active_backup_fails_over", "test_detect_vlan_on_a_bond_and_recreate_it",
               "test_detect_lacp_bond_options")


@pytest.fixture(scope="session")
def guest_run() -> netvm.GuestRun:
    problem = netvm.prerequisites()
    require(problem is None, problem or "")
    return netvm.run_tests([f"tests/test_network.py::{name}" for name in GUEST_TESTS])


def here_or_in_guest(request, *kinds: str) -> bool:
    """True when this kernel can create ``kinds`` links: run the test here.  Otherwise the test
    ran in a guest kernel (one boot for all of GUEST_TESTS); its outcome there is asserted."""
    problems = [p for p in map(link_kind_available, kinds) if p]
    if not problems:
        return True
    require(not netvm.in_guest(), "; ".join(problems))
    assert request.node.name in GUEST_TESTS
    run = request.getfixturevalue("guest_run")
    outcome = run.outcomes.get(request.node.nodeid)
    assert outcome == "PASSED", f"in the guest kernel the test gave {outcome}:\n{run.tail()}"
    return False


@pytest.fixture
def lab():
    problem = ip_netns_available()
    require(problem is None, problem or "")
    dhcpcd_state = Path("/var/lib/dhcpcd")          # dhcpcd keeps its DUID and leases there, always
    before = set(dhcpcd_state.iterdir()) if dhcpcd_state.is_dir() else set()
    try:
        with Lab() as the_lab:
            yield the_lab
    finally:
        if dhcpcd_state.is_dir():
            for path in set(dhcpcd_state.iterdir()) - before:
                path.unlink()


def server(lab: Lab, *, v6: bool = False) -> str:
    """The server namespace: gateway addresses on ``s0`` (not yet linked) and the target with a listener."""
    srv = lab.netns("srv")
    lab.ip(srv, "addr", "add", f"{TARGET}/32", "dev", "lo")
    lab.listener(srv, TARGET, PORT)
    if v6:
        lab.ip(srv, "addr", "add", f"{TARGET6}/128", "dev", "lo")
        lab.listener(srv, TARGET6, PORT)
    return srv


def wire(lab: Lab, srv: str, cli: str, server_if: str = "s0", client_if: str = "nic0",
         mac: str = "", v6: bool = False) -> None:
    lab.veth(srv, server_if, cli, client_if, mac_b=mac or None)
    lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", server_if)
    if v6:
        lab.ip(srv, "addr", "add", f"{GATEWAY6}/64", "dev", server_if, "nodad")


def dhcp_server(lab: Lab, srv: str, iface: str = "s0", v6: str = "") -> None:
    ranges = ["198.51.100.100,198.51.100.150,255.255.255.0,1h"]
    options = [f"option:router,{GATEWAY}", f"option:dns-server,{GATEWAY}"]
    extra = []
    if v6:
        ranges.append("2001:db8:1::,ra-only" if v6 == "ra" else "2001:db8:1::100,2001:db8:1::1ff,64,1h")
        options.append(f"option6:dns-server,[{GATEWAY6}]")
        extra = ["--enable-ra", f"--ra-param={iface},high,5,1800"]
    lab.dnsmasq(srv, iface, ranges, options, hosts={TARGET_NAME: TARGET},
                extra=extra)


def addresses(lab: Lab, ns: str, dev: str, family: str = "inet") -> list:
    data = lab.ip_json(ns, "addr", "show", "dev", dev)
    return [a for a in data[0]["addr_info"] if a["family"] == family and a.get("scope") == "global"]


def default_route(lab: Lab, ns: str, version: int = 4) -> list:
    return lab.ip_json(ns, f"-{version}", "route", "show", "default")


def link(lab: Lab, ns: str, dev: str) -> dict:
    return lab.ip_json(ns, "-d", "link", "show", "dev", dev)[0]


# ---------------------------------------------------------------- static

def test_static_ipv4_with_rename_gateway_and_dns(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli, client_if="eth9", mac=CLIENT_MAC)
    assert lab.connect(cli, TARGET, PORT, timeout=1) == ""          # nothing configured yet

    out = lab.bring_up(cli, f"quiet ifname=kdump0:{CLIENT_MAC} "
                            f"ip=198.51.100.2::{GATEWAY}:255.255.255.0:client1:kdump0:none:198.51.100.53",
                       TARGET, 20)
    assert out.ok, out
    names = [l["ifname"] for l in lab.ip_json(cli, "link", "show")]
    assert "kdump0" in names and "eth9" not in names
    assert link(lab, cli, "kdump0")["address"] == CLIENT_MAC
    addr = addresses(lab, cli, "kdump0")
    assert [(a["local"], a["prefixlen"]) for a in addr] == [("198.51.100.2", 24)]
    assert not addr[0].get("dynamic")
    assert [(r["gateway"], r["dev"]) for r in default_route(lab, cli)] == [(GATEWAY, "kdump0")]
    assert "nameserver 198.51.100.53" in lab.resolv_conf(cli)
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"
    assert f"renamed eth9 ({CLIENT_MAC}) to kdump0" in out.log
    assert f"route to {TARGET}: via {GATEWAY} dev kdump0 src 198.51.100.2" in out.log


def test_static_ipv6_waits_for_duplicate_address_detection(lab):
    srv = server(lab, v6=True)
    cli = lab.netns("cli")
    wire(lab, srv, cli, v6=True)
    out = lab.bring_up(cli, f"ip=[2001:db8:1::2]::[{GATEWAY6}]:64::nic0:none nameserver=[{GATEWAY6}]", TARGET6, 20)
    assert out.ok, out
    addr = addresses(lab, cli, "nic0", "inet6")
    assert [(a["local"], a["prefixlen"], a.get("tentative", False)) for a in addr] == [("2001:db8:1::2", 64, False)]
    assert [r["gateway"] for r in default_route(lab, cli, 6)] == [GATEWAY6]
    assert f"nameserver {GATEWAY6}" in lab.resolv_conf(cli)
    assert lab.connect(cli, TARGET6, PORT) == f"kdump-ok {TARGET6}"


def test_static_with_a_route_through_another_gateway(lab):
    srv = server(lab)
    router = lab.netns("rtr")
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    # a second router on the same segment is the only way to 192.0.2.0/24, where a second listener is
    lab.veth(router, "r0", srv, "s1")
    lab.ip(srv, "link", "set", "s1", "up")
    lab.ip(srv, "link", "add", "br0", "type", "bridge")
    for port in ("s0", "s1"):
        lab.ip(srv, "link", "set", port, "master", "br0")
    lab.ip(srv, "addr", "flush", "dev", "s0")
    lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
    lab.ip(srv, "link", "set", "br0", "up")
    lab.ip(router, "addr", "add", "198.51.100.254/24", "dev", "r0")
    lab.ip(router, "addr", "add", "192.0.2.10/32", "dev", "lo")
    lab.listener(router, "192.0.2.10", PORT)

    out = lab.bring_up(cli, f"ip=198.51.100.2::{GATEWAY}:24::nic0:none rd.route=192.0.2.0/24:198.51.100.254:nic0",
                       "192.0.2.10", 20)
    assert out.ok, out
    routes = lab.ip_json(cli, "route", "show", "192.0.2.0/24")
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes] == [("192.0.2.0/24", "198.51.100.254", "nic0")]
    assert lab.connect(cli, "192.0.2.10", PORT) == "kdump-ok 192.0.2.10"
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


# ---------------------------------------------------------------- DHCP

@pytest.mark.parametrize("client, cmdline, hostname", [
    ("dhclient", "ip=nic0:dhcp", ""),
    ("udhcpc", "ip=nic0:dhcp", ""),
    ("dhcpcd", "ip=nic0:dhcp", ""),
    ("dhclient", "ip=::::kdumpclient:nic0:dhcp", "kdumpclient"),
])
def test_dhcp_with_each_client(lab, client, cmdline, hostname):
    require_program(client)
    require_program("dnsmasq")
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    dhcp_server(lab, srv)
    out = lab.bring_up(cli, cmdline, TARGET_NAME, 30, client=client)
    assert out.ok, out
    addr = addresses(lab, cli, "nic0")
    assert len(addr) == 1 and addr[0]["prefixlen"] == 24 and addr[0].get("dynamic")
    assert 100 <= int(addr[0]["local"].rsplit(".", 1)[1]) <= 150
    assert [r["gateway"] for r in default_route(lab, cli)] == [GATEWAY]
    assert f"nameserver {GATEWAY}" in lab.resolv_conf(cli)
    assert lab.connect(cli, TARGET_NAME, PORT) == f"kdump-ok {TARGET}"       # the name via DHCP's DNS
    mac = link(lab, cli, "nic0")["address"]
    leases = next(lab.tmp.glob("dnsmasq-*.leases")).read_text()
    assert mac in leases and addr[0]["local"] in leases
    if hostname:
        assert hostname in leases
    assert f"started {client} for DHCPv4" in out.log
    assert f"DHCPv4 lease {addr[0]['local']}/24, router {GATEWAY}, DNS {GATEWAY}" in out.log
    assert lab.namespace_pids(cli), "the DHCP client should keep running to renew the lease"


def test_a_renewed_lease_is_applied_while_the_saver_runs(lab):
    """The DHCP hook only records a lease; the saver applies the renewals too (here the
    renewed lifetime), or the address would expire in the middle of a long save."""
    require_program("udhcpc")
    require_program("dnsmasq")
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    dhcp_server(lab, srv)
    spec = lab.bring_up_spec(cli, "ip=nic0:dhcp", TARGET, 30, client="udhcpc", linger=60)
    runner = lab.spawn_bring_up(cli, spec, "renewal.log")
    assert lab.wait_until(lambda: '"ok": true' in lab.log("renewal.log") or runner.poll() is not None, 60), \
        lab.log("renewal.log")
    assert runner.poll() is None, lab.log("renewal.log")
    address = addresses(lab, cli, "nic0")[0]
    assert 3000 < address["valid_life_time"] <= 3600                # dnsmasq's 1h lease
    lab.ip(cli, "addr", "change", f"{address['local']}/24", "dev", "nic0", "valid_lft", "40", "preferred_lft", "40")
    assert addresses(lab, cli, "nic0")[0]["valid_life_time"] <= 40
    udhcpc = [pid for pid in lab.namespace_pids(cli) if Path(f"/proc/{pid}/comm").read_text().strip() == "udhcpc"]
    assert len(udhcpc) == 1
    os.kill(udhcpc[0], signal.SIGUSR1)                               # udhcpc: renew now
    assert lab.wait_until(lambda: addresses(lab, cli, "nic0")[0]["valid_life_time"] > 3000, 20), \
        lab.log("renewal.log")
    assert f"nic0: DHCPv4 lease renewed: {address['local']}/24" in lab.log("renewal.log")


def test_netconfig_auto_takes_the_first_interface_with_a_link(lab):
    require_program("dnsmasq")
    srv = server(lab)
    cli = lab.netns("cli")
    lab.veth(srv, "s9", cli, "nic0")
    lab.ip(srv, "link", "set", "s9", "down")                         # nic0 will have no carrier
    wire(lab, srv, cli, server_if="s1", client_if="nic1")
    dhcp_server(lab, srv, "s1")
    out = lab.bring_up(cli, "quiet", TARGET, 30, netconfig="auto")
    assert out.ok, out
    assert "using nic1, the first interface with a link" in out.log
    assert addresses(lab, cli, "nic1")[0].get("dynamic")
    assert "UP" not in link(lab, cli, "nic0")["flags"]                 # the unused one is left down
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


def test_an_interface_that_appears_late_is_waited_for(lab):
    require_program("dnsmasq")
    srv = server(lab)
    cli = lab.netns("cli")
    lab.veth(srv, "s0", cli, "nic0")                        # created in the client namespace, then moved
    lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", "s0")
    dhcp_server(lab, srv)
    parked = lab.netns("park")
    lab.ip(cli, "link", "set", "nic0", "netns", parked)     # the "driver" has not loaded yet
    timer = threading.Timer(2.0, lab.ip, (parked, "link", "set", "nic0", "netns", cli))
    timer.start()
    try:
        out = lab.bring_up(cli, "ip=dhcp", TARGET, 30)
    finally:
        timer.join()
    assert out.ok, out
    assert "waiting: no Ethernet interface (links present: lo)" in out.log and "using nic0" in out.log
    assert addresses(lab, cli, "nic0")[0].get("dynamic")
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


@pytest.mark.parametrize("netconfig, client", [("nic0:dhcp6", "dhclient"), ("nic0:dhcp6:force", "dhcpcd")])
def test_dhcp6(lab, netconfig, client):
    require_program(client)
    require_program("dnsmasq")
    srv = server(lab, v6=True)
    cli = lab.netns("cli")
    wire(lab, srv, cli, v6=True)
    dhcp_server(lab, srv, v6="dhcp")
    out = lab.bring_up(cli, "", TARGET6, 30, client=client, netconfig=netconfig)
    assert out.ok, out
    addr = addresses(lab, cli, "nic0", "inet6")
    assert [a["prefixlen"] for a in addr] == [128] and addr[0].get("dynamic") and not addr[0].get("tentative")
    assert addr[0]["local"].startswith("2001:db8:1::1")
    assert f"nameserver {GATEWAY6}" in lab.resolv_conf(cli)
    assert lab.connect(cli, TARGET6, PORT) == f"kdump-ok {TARGET6}"


def test_auto6(lab):
    require_program("dnsmasq")
    srv = server(lab, v6=True)
    cli = lab.netns("cli")
    wire(lab, srv, cli, v6=True)
    dhcp_server(lab, srv, v6="ra")
    out = lab.bring_up(cli, "ip=nic0:auto6", TARGET6, 30)
    assert out.ok, out
    addr = addresses(lab, cli, "nic0", "inet6")
    assert len(addr) == 1 and addr[0]["prefixlen"] == 64 and addr[0]["local"].startswith("2001:db8:1:0:")
    assert default_route(lab, cli, 6)[0]["protocol"] == "ra"
    assert lab.connect(cli, TARGET6, PORT) == f"kdump-ok {TARGET6}"


# ---------------------------------------------------------------- only when the target needs it

@pytest.mark.parametrize("savedir, netconfig, wanted", [
    ("/var/crash", "auto", False),
    ("/var/crash", "nic0:dhcp:force", True),
    (f"ftp://{TARGET}/dumps", "nic0:dhcp", True),
    (f"ftp://{TARGET_NAME}/dumps", "auto", True),
])
def test_prepare_brings_the_network_up_only_when_needed(lab, savedir, netconfig, wanted):
    require_program("dnsmasq")
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    dhcp_server(lab, srv)
    text = f'KDUMP_SAVEDIR="{savedir}"\nKDUMP_NETCONFIG="{netconfig}"\nKDUMP_NET_TIMEOUT=30\n'
    out = lab.bring_up(cli, "BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1", None, 30, config=text)
    assert out.ok and out.prepared is wanted, out
    if wanted:
        assert addresses(lab, cli, "nic0")[0].get("dynamic")
        assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"
    else:
        assert "network: not needed for the local target /var/crash" in out.log
        assert "UP" not in link(lab, cli, "nic0")["flags"] and addresses(lab, cli, "nic0") == []
        assert lab.namespace_pids(cli) == []


def test_prepare_prefers_ip_on_the_command_line(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    text = f'KDUMP_SAVEDIR="ftp://{TARGET}/dumps"\nKDUMP_NETCONFIG="nic0:dhcp"\nKDUMP_NET_TIMEOUT=20\n'
    out = lab.bring_up(cli, f"quiet ip=198.51.100.2::{GATEWAY}:24::nic0:none", None, 20, config=text)
    assert out.ok and out.prepared, out
    assert not addresses(lab, cli, "nic0")[0].get("dynamic")           # static, no DHCP client
    assert lab.namespace_pids(cli) == []
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


# ---------------------------------------------------------------- failures are explained

def test_missing_interface(lab):
    cli = lab.netns("cli")
    out = lab.bring_up(cli, "ip=nosuch0:dhcp", TARGET, 1)
    assert out.returncode == 3, out
    assert "nosuch0 not present" in out.error and "links present: lo" in out.error


def test_no_ethernet_interface(lab):
    cli = lab.netns("cli")
    out = lab.bring_up(cli, "ip=dhcp", TARGET, 1)
    assert out.returncode == 3, out
    assert out.error == "network: no Ethernet interface to configure: no Ethernet interface (links present: lo)"


def test_unknown_mac(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli, mac=CLIENT_MAC)
    out = lab.bring_up(cli, "ifname=kdump0:02:00:00:00:00:99 ip=kdump0:dhcp", TARGET, 1)
    assert out.returncode == 3, out
    assert "no link has the MAC 02:00:00:00:00:99" in out.error and f"nic0 ({CLIENT_MAC})" in out.error


def test_no_dhcp_server(lab):
    require_program("dhclient")
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    out = lab.bring_up(cli, "ip=nic0:dhcp", TARGET, 3, client="dhclient")
    assert out.returncode == 3, out
    assert "gave up waiting for a DHCPv4 lease on nic0 after 3 s (KDUMP_NET_TIMEOUT=3)" in out.error
    assert "dhclient running" in out.error
    assert lab.namespace_pids(cli) == [], "the DHCP client is stopped after a failure"


def test_no_carrier(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    lab.ip(srv, "link", "set", "s0", "down")
    out = lab.bring_up(cli, "ip=198.51.100.2:::24::nic0:none", TARGET, 2)
    assert out.returncode == 3, out
    assert "gave up waiting for a link (carrier) on nic0" in out.error and "no carrier" in out.error


def test_gateway_that_does_not_answer(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    out = lab.bring_up(cli, "ip=198.51.100.2::198.51.100.99:24::nic0:none", TARGET, 3)
    assert out.returncode == 3, out
    assert "the gateway 198.51.100.99 on nic0 does not answer ARP/NDP" in out.error
    assert f"an answer from the next hop to {TARGET}" in out.error


def test_timeout_zero_does_not_wait(lab):
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    out = lab.bring_up(cli, "ip=198.51.100.2::198.51.100.99:24::nic0:none", TARGET, 0)
    assert out.ok, out
    assert "not waiting for an answer from the next hop" in out.log
    assert [(a["local"]) for a in addresses(lab, cli, "nic0")] == ["198.51.100.2"]


# ---------------------------------------------------------------- bridge, VLAN, bond

def test_bridge(lab):
    problem = link_kind_available("bridge")
    require(problem is None, problem or "")
    srv = server(lab)
    cli = lab.netns("cli")
    wire(lab, srv, cli)
    out = lab.bring_up(cli, f"bridge=br0:nic0 ip=198.51.100.2::{GATEWAY}:24::br0:none", TARGET, 20)
    assert out.ok, out
    assert link(lab, cli, "nic0")["master"] == "br0"
    assert [a["local"] for a in addresses(lab, cli, "br0")] == ["198.51.100.2"]
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


def test_vlan(lab, request):
    if not here_or_in_guest(request, "vlan"):
        return
    srv = server(lab)
    cli = lab.netns("cli")
    lab.veth(srv, "s0", cli, "nic0")
    lab.ip(srv, "link", "add", "link", "s0", "name", "s0.5", "type", "vlan", "id", "5")
    lab.ip(srv, "addr", "add", "192.0.2.1/24", "dev", "s0.5")
    lab.ip(srv, "link", "set", "s0.5", "up")
    lab.listener(srv, "192.0.2.1", PORT)
    out = lab.bring_up(cli, "vlan=nic0.0005:nic0 ip=192.0.2.2:::24::nic0.0005:none", "192.0.2.1", 20)
    assert out.ok, out
    info = link(lab, cli, "nic0.0005")["linkinfo"]
    assert info["info_kind"] == "vlan" and info["info_data"]["id"] == 5
    assert addresses(lab, cli, "nic0") == []                             # untagged side stays bare
    assert lab.connect(cli, "192.0.2.1", PORT) == "kdump-ok 192.0.2.1"


def test_bond_active_backup_fails_over(lab, request):
    if not here_or_in_guest(request, "bond", "bridge"):
        return
    srv = server(lab)
    cli = lab.netns("cli")
    lab.veth(srv, "s0", cli, "nic0")
    lab.veth(srv, "s1", cli, "nic1")
    lab.ip(srv, "link", "add", "br0", "type", "bridge")
    for port in ("s0", "s1"):
        lab.ip(srv, "link", "set", port, "master", "br0")
    lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
    lab.ip(srv, "link", "set", "br0", "up")
    out = lab.bring_up(cli, f"bond=bond0:nic0,nic1:mode=active-backup,miimon=100 "
                            f"ip=198.51.100.2::{GATEWAY}:24::bond0:none", TARGET, 20)
    assert out.ok, out
    info = link(lab, cli, "bond0")["linkinfo"]["info_data"]
    assert info["mode"] == "active-backup" and info["miimon"] == 100
    assert {link(lab, cli, n)["master"] for n in ("nic0", "nic1")} == {"bond0"}
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"
    active = info["active_slave"]
    lab.ip(srv, "link", "set", "s0" if active == "nic0" else "s1", "down")
    lab.wait_until(lambda: link(lab, cli, "bond0")["linkinfo"]["info_data"].get("active_slave") != active, 5)
    assert link(lab, cli, "bond0")["linkinfo"]["info_data"]["active_slave"] != active
    assert lab.connect(cli, TARGET, PORT) == f"kdump-ok {TARGET}"


# ---------------------------------------------------------------- production side: detection

_DETECT = r"""
import json, sys
from capture.net import plan as netargs
from capture.host import netdetect
from capture.errors import KdumpError
try:
    plan = netdetect.resolve_auto(sys.argv[1] or None)
except KdumpError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"cmdline": netargs.to_cmdline(plan), "description": plan.description}))
"""


def detect(lab: Lab, ns: str, target: str) -> dict:
    return json.loads(lab.run_python(ns, _DETECT, target).stdout)


def test_detect_static_then_recreate_in_a_capture_namespace(lab):
    srv = server(lab)
    prod = lab.netns("prod")
    wire(lab, srv, prod, client_if="enp1s0", mac=CLIENT_MAC)
    lab.ip(prod, "addr", "add", "198.51.100.7/24", "dev", "enp1s0")
    lab.ip(prod, "link", "set", "enp1s0", "up")
    lab.ip(prod, "route", "add", "default", "via", GATEWAY)
    (Path("/etc/netns") / prod / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 198.51.100.53\n")

    found = detect(lab, prod, TARGET)
    assert found["cmdline"] == [f"ifname=kdump0:{CLIENT_MAC}",
                                f"ip=198.51.100.7::{GATEWAY}:24::kdump0:none", "nameserver=198.51.100.53"], found
    assert f"{TARGET} is reached via {GATEWAY} on enp1s0" in found["description"]

    # the "capture kernel": same NIC (same MAC) under another name, nothing configured
    lab.ip(prod, "link", "del", "enp1s0")
    cap = lab.netns("cap")
    lab.veth(srv, "s0", cap, "eth0", mac_b=CLIENT_MAC)
    lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", "s0")
    out = lab.bring_up(cap, " ".join(found["cmdline"]), TARGET, 20)
    assert out.ok, out
    assert [a["local"] for a in addresses(lab, cap, "kdump0")] == ["198.51.100.7"]
    assert lab.connect(cap, TARGET, PORT) == f"kdump-ok {TARGET}"


def test_detect_dhcp_and_a_host_route(lab):
    require_program("dhclient")
    require_program("dnsmasq")
    srv = server(lab)
    prod = lab.netns("prod")
    wire(lab, srv, prod, mac=CLIENT_MAC)
    dhcp_server(lab, srv)
    out = lab.bring_up(prod, "ip=nic0:dhcp", TARGET, 30, client="dhclient")
    assert out.ok, out
    assert detect(lab, prod, TARGET)["cmdline"] == [f"ifname=kdump0:{CLIENT_MAC}", "ip=kdump0:dhcp"]
    lab.ip(prod, "route", "add", "192.0.2.0/24", "via", "198.51.100.254")
    assert detect(lab, prod, "192.0.2.10")["cmdline"] == [f"ifname=kdump0:{CLIENT_MAC}", "ip=kdump0:dhcp",
                                                          "rd.route=192.0.2.10/32:198.51.100.254:kdump0"]


def test_detect_ipv6_static(lab):
    srv = server(lab, v6=True)
    prod = lab.netns("prod")
    wire(lab, srv, prod, mac=CLIENT_MAC, v6=True)
    lab.ip(prod, "addr", "add", "2001:db8:1::7/64", "dev", "nic0", "nodad")
    lab.ip(prod, "link", "set", "nic0", "up")
    lab.ip(prod, "-6", "route", "add", "default", "via", GATEWAY6)
    (Path("/etc/netns") / prod / "resolv.conf").write_text(f"nameserver {GATEWAY6}\n")
    assert detect(lab, prod, TARGET6)["cmdline"] == [
        f"ifname=kdump0:{CLIENT_MAC}", f"ip=[2001:db8:1::7]::[{GATEWAY6}]:64::kdump0:none",
        f"nameserver=[{GATEWAY6}]"]


def test_detect_bridge_over_the_nic(lab):
    problem = link_kind_available("bridge")
    require(problem is None, problem or "")
    srv = server(lab)
    prod = lab.netns("prod")
    wire(lab, srv, prod, mac=CLIENT_MAC)
    lab.ip(prod, "link", "add", "br7", "type", "bridge")
    lab.ip(prod, "link", "set", "nic0", "master", "br7")
    lab.ip(prod, "link", "set", "nic0", "up")
    lab.ip(prod, "addr", "add", "198.51.100.7/24", "dev", "br7")
    lab.ip(prod, "link", "set", "br7", "up")
    lab.ip(prod, "route", "add", "default", "via", GATEWAY)
    assert detect(lab, prod, TARGET)["cmdline"] == [
        f"ifname=kdump0:{CLIENT_MAC}", "bridge=br7:kdump0", f"ip=198.51.100.7::{GATEWAY}:24::br7:none"]


def test_detect_vlan_on_a_bond_and_recreate_it(lab, request):
    if not here_or_in_guest(request, "vlan", "bond", "bridge"):
        return
    srv = server(lab)
    prod = lab.netns("prod")
    macs = {"eno1": "02:00:00:00:00:0a", "eno2": "02:00:00:00:00:0b"}
    lab.veth(srv, "s0", prod, "eno1", mac_b=macs["eno1"])
    lab.veth(srv, "s1", prod, "eno2", mac_b=macs["eno2"])
    lab.ip(srv, "link", "add", "br0", "type", "bridge")
    for port in ("s0", "s1"):
        lab.ip(srv, "link", "set", port, "master", "br0")
    lab.ip(srv, "link", "set", "br0", "up")
    lab.ip(srv, "link", "add", "link", "br0", "name", "br0.42", "type", "vlan", "id", "42")
    lab.ip(srv, "addr", "add", "192.0.2.1/24", "dev", "br0.42")
    lab.ip(srv, "link", "set", "br0.42", "up")
    lab.listener(srv, "192.0.2.1", PORT)
    lab.ip(prod, "link", "add", "bond7", "type", "bond", "mode", "active-backup", "miimon", "100",
           "updelay", "200")
    for nic in ("eno1", "eno2"):
        lab.ip(prod, "link", "set", nic, "master", "bond7")
    lab.ip(prod, "link", "add", "link", "bond7", "name", "prodvlan", "type", "vlan", "id", "42")
    lab.ip(prod, "addr", "add", "192.0.2.7/24", "dev", "prodvlan")
    for dev in ("bond7", "prodvlan"):
        lab.ip(prod, "link", "set", dev, "up")
    assert lab.connect(prod, "192.0.2.1", PORT) == "kdump-ok 192.0.2.1"

    found = detect(lab, prod, "192.0.2.1")
    assert found["cmdline"] == [
        f"ifname=kdump0:{macs['eno1']}", f"ifname=kdump1:{macs['eno2']}",
        "bond=bond7:kdump0,kdump1:mode=active-backup,miimon=100,updelay=200", "vlan=bond7.42:bond7",
        "ip=192.0.2.7:::24::bond7.42:none"], found

    # the capture kernel sees the same two NICs under other names, in the other order
    lab.ip(prod, "link", "del", "bond7")
    for nic in ("eno1", "eno2"):
        lab.ip(prod, "link", "del", nic)
    cap = lab.netns("cap")
    lab.veth(srv, "s2", cap, "eth0", mac_b=macs["eno2"])
    lab.veth(srv, "s3", cap, "eth1", mac_b=macs["eno1"])
    for port in ("s2", "s3"):
        lab.ip(srv, "link", "set", port, "master", "br0")
    out = lab.bring_up(cap, " ".join(found["cmdline"]), "192.0.2.1", 30)
    assert out.ok, out
    assert link(lab, cap, "kdump0")["address"] == macs["eno1"]
    assert link(lab, cap, "kdump1")["linkinfo"]["info_slave_data"]["perm_hwaddr"] == macs["eno2"]
    info = link(lab, cap, "bond7.42")["linkinfo"]
    assert info["info_kind"] == "vlan" and info["info_data"]["id"] == 42
    assert link(lab, cap, "bond7")["linkinfo"]["info_data"]["mode"] == "active-backup"
    assert [a["local"] for a in addresses(lab, cap, "bond7.42")] == ["192.0.2.7"]
    assert lab.connect(cap, "192.0.2.1", PORT) == "kdump-ok 192.0.2.1"


def test_detect_lacp_bond_options(lab, request):
    if not here_or_in_guest(request, "bond"):
        return
    srv = server(lab)
    prod = lab.netns("prod")
    lab.veth(srv, "s0", prod, "eno1", mac_b="02:00:00:00:00:0a")
    lab.veth(srv, "s1", prod, "eno2", mac_b="02:00:00:00:00:0b")
    lab.ip(prod, "link", "add", "bond0", "type", "bond", "mode", "802.3ad", "miimon", "100", "lacp_rate", "fast",
           "xmit_hash_policy", "layer3+4")
    for nic in ("eno1", "eno2"):
        lab.ip(prod, "link", "set", nic, "master", "bond0")
    lab.ip(prod, "link", "set", "bond0", "mtu", "9000")
    lab.ip(prod, "addr", "add", "198.51.100.7/24", "dev", "bond0")
    lab.ip(prod, "link", "set", "bond0", "up")
    assert detect(lab, prod, GATEWAY)["cmdline"] == [
        "ifname=kdump0:02:00:00:00:00:0a", "ifname=kdump1:02:00:00:00:00:0b",
        "bond=bond0:kdump0,kdump1:mode=802.3ad,miimon=100,xmit_hash_policy=layer3+4,lacp_rate=fast:9000",
        "ip=198.51.100.7:::24::bond0:none"]


@pytest.mark.parametrize("netconfig, expected", [
    ("nic0:static", [f"ifname=kdump0:{CLIENT_MAC}", f"ip=198.51.100.7::{GATEWAY}:24::kdump0:none",
                     "nameserver=198.51.100.53"]),
    ("nic0:dhcp", [f"ifname=kdump0:{CLIENT_MAC}", "ip=kdump0:dhcp"]),
    ("nic0:auto6:force", [f"ifname=kdump0:{CLIENT_MAC}", "ip=kdump0:auto6"]),
    ("", []),
])
def test_resolve_netconfig_on_the_production_side(lab, netconfig, expected):
    srv = server(lab)
    prod = lab.netns("prod")
    wire(lab, srv, prod, mac=CLIENT_MAC)
    lab.ip(prod, "addr", "add", "198.51.100.7/24", "dev", "nic0")
    lab.ip(prod, "link", "set", "nic0", "up")
    lab.ip(prod, "route", "add", "default", "via", GATEWAY)
    (Path("/etc/netns") / prod / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    code = ("import json, sys\n"
            "from capture.config import options as config\n"
            "from capture.host import netdetect\n"
            "from capture.net import plan as netargs\n"
            "net = config.parse_text('KDUMP_NETCONFIG=\"%s\"\\n' % sys.argv[1]).netconfig\n"
            "print(json.dumps(netargs.to_cmdline(netdetect.resolve_netconfig(net, sys.argv[2]))))\n")
    assert json.loads(lab.run_python(prod, code, netconfig, TARGET).stdout) == expected


def test_resolve_netconfig_names_a_missing_interface(lab):
    prod = lab.netns("prod")
    code = ("from capture.host import netdetect\n"
            "from capture.config.options import NetConfig\n"
            "from capture.errors import ConfigError\n"
            "try:\n"
            "    netdetect.resolve_netconfig(NetConfig(mode='dhcp', interface='eth7'), None)\n"
            "except ConfigError as e:\n"
            "    print(e)\n")
    assert lab.run_python(prod, code).stdout.strip() == (
        "KDUMP_NETCONFIG=eth7:dhcp: this system has no interface eth7 (it has lo)")


def test_nameservers_skip_loopback_resolvers(tmp_path):
    from capture.host.netdetect import nameservers
    resolv, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    resolv.write_text("# stub\nnameserver 127.0.0.53\noptions edns0\nsearch example\n"
                      "nameserver fe80::1%eth0\nnameserver 2001:db8::0053\n")
    upstream.write_text("nameserver 192.0.2.53\nnameserver 127.0.0.1\n")
    assert nameservers(str(resolv), str(upstream)) == ["2001:db8::53", "192.0.2.53"]
    assert nameservers(str(resolv), str(tmp_path / "absent")) == ["2001:db8::53"]
    assert nameservers(str(tmp_path / "absent")) == []


def test_detect_without_a_route(lab):
    prod = lab.netns("prod")
    assert "this system has no route to 203.0.113.10" in detect(lab, prod, TARGET)["error"]
    assert "no default route" in detect(lab, prod, "")["error"]
    assert "is this machine itself" in detect(lab, prod, "127.0.0.1")["error"]
