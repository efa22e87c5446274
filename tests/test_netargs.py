"""Parsing dracut network arguments and KDUMP_NETCONFIG into a plan, and rendering it back."""
from __future__ import annotations

import pytest

from capture.config import options as config
from capture.config.options import NetConfig
from capture.errors import ConfigError
from capture.net.plan import (ANY_INTERFACE, AUTO6, DHCP, DHCP6, STATIC, Address, Bond, Bridge, Interface,
                             NetPlan, Rename, Route, Vlan, choose_plan, describe, from_netconfig,
                             parse_cmdline, split_cmdline, to_cmdline, vlan_id_from_name)
from capture.net.bringup import needs_network


def only(plan: NetPlan) -> Interface:
    assert len(plan.interfaces) == 1, plan
    return plan.interfaces[0]


# ---------------------------------------------------------------- ip= forms

@pytest.mark.parametrize("method, mode", [("dhcp", DHCP), ("on", DHCP), ("any", DHCP), ("dhcp6", DHCP6),
                                          ("auto6", AUTO6), ("DHCP", DHCP)])
def test_global_method_means_first_interface_with_link(method, mode):
    iface = only(parse_cmdline(f"ip={method}"))
    assert iface.name == ANY_INTERFACE and iface.modes == [mode] and not iface.addresses


@pytest.mark.parametrize("method, mode", [("dhcp", DHCP), ("on", DHCP), ("any", DHCP), ("dhcp6", DHCP6),
                                          ("auto6", AUTO6)])
def test_interface_method(method, mode):
    iface = only(parse_cmdline(f"ip=eth0:{method}"))
    assert (iface.name, iface.modes, iface.mtu, iface.mac) == ("eth0", [mode], None, "")


def test_interface_method_with_mtu_and_mac():
    assert only(parse_cmdline("ip=eth0:dhcp:9000")).mtu == 9000
    iface = only(parse_cmdline("ip=eth0:dhcp:1400:52:54:00:AB:cd:ef"))
    assert (iface.mtu, iface.mac) == (1400, "52:54:00:ab:cd:ef")
    iface = only(parse_cmdline("ip=eth0:dhcp::52:54:00:ab:cd:ef"))
    assert (iface.mtu, iface.mac) == (None, "52:54:00:ab:cd:ef")


@pytest.mark.parametrize("method", ["none", "off", "static", "NONE"])
def test_static_ipv4_full(method):
    plan = parse_cmdline(f"ip=192.0.2.5:192.0.2.9:192.0.2.1:255.255.255.0:client1:eth0:{method}")
    iface = only(plan)
    assert iface.name == "eth0" and iface.modes == [STATIC]
    assert iface.addresses == [Address("192.0.2.5", 24)]
    assert iface.gateways == ["192.0.2.1"]
    assert iface.server == "192.0.2.9"
    assert iface.hostname == "client1" and plan.hostname == "client1"


@pytest.mark.parametrize("netmask, prefix", [("255.255.255.0", 24), ("24", 24), ("255.255.240.0", 20),
                                             ("255.255.255.255", 32), ("8", 8)])
def test_static_netmask_dotted_or_prefix(netmask, prefix):
    iface = only(parse_cmdline(f"ip=10.50.50.100:::{netmask}::eth1:none"))
    assert iface.addresses == [Address("10.50.50.100", prefix)] and iface.gateways == []


def test_suse_documented_example():
    iface = only(parse_cmdline("ip=10.50.50.100:10.50.50.140:10.60.48.1:255.255.240.0:dump-client:eth1:none"))
    assert iface.addresses == [Address("10.50.50.100", 20)] and iface.gateways == ["10.60.48.1"]


def test_static_with_dns():
    iface = only(parse_cmdline("ip=192.0.2.5::192.0.2.1:24::eth0:none:192.0.2.53"))
    assert iface.dns == ["192.0.2.53"]
    plan = parse_cmdline("ip=192.0.2.5::192.0.2.1:24::eth0:none:192.0.2.53:[2001:db8::53]")
    assert only(plan).dns == ["192.0.2.53", "2001:db8::53"]
    assert plan.all_nameservers() == ["192.0.2.53", "2001:db8::53"]


def test_static_with_mtu_and_mac():
    iface = only(parse_cmdline("ip=192.0.2.5::192.0.2.1:24::eth0:none:1450:02:00:00:00:00:07"))
    assert (iface.mtu, iface.mac, iface.dns) == (1450, "02:00:00:00:00:07", [])
    assert only(parse_cmdline("ip=192.0.2.5:::24::eth0:none:9000")).mtu == 9000


def test_static_ipv6_in_brackets():
    iface = only(parse_cmdline("ip=[2001:db8::5]:[2001:db8::9]:[2001:db8::1]:64:h6:eth0:none:[2001:db8::53]"))
    assert iface.addresses == [Address("2001:db8::5", 64)]
    assert iface.gateways == ["2001:db8::1"] and iface.server == "2001:db8::9" and iface.dns == ["2001:db8::53"]


def test_static_without_interface_is_first_with_link():
    assert only(parse_cmdline("ip=192.0.2.5::192.0.2.1:24:::none")).name == ANY_INTERFACE


def test_dhcp_in_the_long_form_with_hostname():
    plan = parse_cmdline("ip=::::dumper:eth0:dhcp")
    iface = only(plan)
    assert (iface.name, iface.modes, iface.hostname, iface.addresses) == ("eth0", [DHCP], "dumper", [])


def test_several_ip_for_one_interface_add_up():
    plan = parse_cmdline("ip=192.0.2.5::192.0.2.1:24::eth0:none ip=[2001:db8::5]::[2001:db8::1]:64::eth0:none "
                         "ip=eth0:auto6 ip=eth1:dhcp")
    eth0 = plan.interface("eth0")
    assert eth0.modes == [STATIC, AUTO6]
    assert eth0.addresses == [Address("192.0.2.5", 24), Address("2001:db8::5", 64)]
    assert eth0.gateways == ["192.0.2.1", "2001:db8::1"]
    assert plan.interface("eth1").modes == [DHCP]


def test_unrelated_words_are_ignored_and_quotes_group():
    plan = parse_cmdline('BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet irqpoll nr_cpus=1 "ip=eth0:dhcp" '
                         'rd.neednet=1 console=ttyS0 init=/init vlan ipv6.disable=0')
    assert only(plan).name == "eth0"
    assert split_cmdline(' a="b c"  d ') == ["a=b c", "d"]
    assert not parse_cmdline("quiet splash root=/dev/vda1")


# ---------------------------------------------------------------- the other arguments

def test_ifname_pins_a_mac_lowercase():
    plan = parse_cmdline("ifname=kdump0:52:54:00:AB:CD:EF")
    assert plan.renames == [Rename("kdump0", "52:54:00:ab:cd:ef")]


@pytest.mark.parametrize("name, parent, vid", [("eth0.5", "eth0", 5), ("eth0.0005", "eth0", 5),
                                               ("vlan5", "eth0", 5), ("vlan0005", "eth0", 5),
                                               ("kdump0.0005", "kdump0", 5), ("bond0.4094", "bond0", 4094),
                                               ("vlan1", "eth1", 1)])
def test_vlan_id_from_name(name, parent, vid):
    assert parse_cmdline(f"vlan={name}:{parent}").vlans == [Vlan(name, parent, vid)]


def test_bond_with_options_and_mtu():
    plan = parse_cmdline("bond=bond0:eth0,eth1:mode=active-backup,miimon=100:9000")
    assert plan.bonds == [Bond("bond0", ["eth0", "eth1"], [("mode", "active-backup"), ("miimon", "100")], 9000)]
    assert parse_cmdline("bond=bond1:eth2,eth3").bonds == [Bond("bond1", ["eth2", "eth3"])]


@pytest.mark.parametrize("number, name", [("0", "balance-rr"), ("1", "active-backup"), ("4", "802.3ad"),
                                          ("6", "balance-alb")])
def test_bond_mode_numbers_become_names(number, name):
    assert parse_cmdline(f"bond=bond0:eth0,eth1:mode={number}").bonds[0].options == [("mode", name)]


def test_bridge():
    assert parse_cmdline("bridge=br0:eth0,eth1").bridges == [Bridge("br0", ["eth0", "eth1"])]


def test_routes():
    plan = parse_cmdline("rd.route=198.51.100.0/24:192.0.2.1 rd.route=203.0.113.0/24:192.0.2.1:eth0 "
                         "rd.route=[2001:db8:1::/64]:[2001:db8::1]:eth0 rd.route=192.0.2.128/25::eth1")
    assert plan.routes == [Route("198.51.100.0/24", "192.0.2.1"), Route("203.0.113.0/24", "192.0.2.1", "eth0"),
                           Route("2001:db8:1::/64", "2001:db8::1", "eth0"), Route("192.0.2.128/25", "", "eth1")]


def test_nameservers():
    plan = parse_cmdline("nameserver=192.0.2.53 nameserver=[2001:db8::53] nameserver=2001:db8::54 "
                         "nameserver=192.0.2.53")
    assert plan.nameservers == ["192.0.2.53", "2001:db8::53", "2001:db8::54"]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("cmdline, fragments", [
    ("ip=bootp", ["'ip=bootp'", "'bootp' is not a method", "ip=dhcp|on|any|dhcp6|auto6"]),
    ("ip=eth0:bootp", ["method 'bootp' is not supported", "none, off, static, dhcp, on, any, dhcp6 or auto6"]),
    ("ip=none", ["'ip=none'", "configures nothing"]),
    ("ip=eth0:static", ["needs addresses"]),
    ("ip=eth0:ibft", ["'ibft' is not supported"]),
    ("ip=eth0", ["'eth0' is not a method", "use ip=dhcp", "ip=IFACE:"]),
    ("ip=192.0.2.5:eth0", ["use ip=dhcp"]),
    ("ip=192.0.2.300::192.0.2.1:24::eth0:none", ["CLIENT '192.0.2.300' is not an IP address"]),
    ("ip=192.0.2.5::192.0.2.1:255.0.255.0::eth0:none", ["NETMASK '255.0.255.0'"]),
    ("ip=192.0.2.5::192.0.2.1:33::eth0:none", ["prefix length 33 is outside 1..32"]),
    ("ip=192.0.2.5::192.0.2.1:::eth0:none", ["NETMASK (the fourth field) is empty"]),
    ("ip=[2001:db8::5]:::255.255.255.0::eth0:none", ["must be a prefix length"]),
    ("ip=2001:db8::5:::64::eth0:none", ["ip="]),
    ("ip=[2001:db8::5:::64::eth0:none", ["'[' without ']'"]),
    ("ip=192.0.2.5::[2001:db8::1]:24::eth0:none", ["not of the same IP version"]),
    ("ip=:::24::eth0:dhcp", ["GATEWAY and NETMASK need a CLIENT"]),
    ("ip=:::::eth0:none", ["needs a CLIENT address"]),
    ("ip=192.0.2.5:::24::eth0:dhcp", ["needs the method none, off or static"]),
    ("ip=192.0.2.5:::24::eth0:none:bogus", ["DNS 'bogus' is not an IP address"]),
    ("ip=192.0.2.5:::24::eth0:none:1:2:3", ["after the method only"]),
    ("ip=eth0:dhcp:12", ["MTU '12' must be a number from 68 to 65535"]),
    ("ip=eth0:dhcp:1500:52:54:00:zz:00:01", ["is not a MAC address"]),
    ("ip=eth0:dhcp:192.0.2.53", ["only [MTU][:MAC]"]),
    ("ip=a-very-long-interface-name:dhcp", ["longer than 15 characters"]),
    ("ip=192.0.2.5:::24:bad_host!:eth0:none", ["HOSTNAME 'bad_host!'"]),
    ("ip=192.0.2.5::192.0.2.1:24::eth0:none ip=192.0.2.6::192.0.2.2:24::eth0:none", ["already has the gateway"]),
    ("ifname=kdump0", ["use ifname=NAME:MAC"]),
    ("ifname=kdump0:52:54:00:12:34", ["is not a MAC address"]),
    ("ifname=kdump0:52:54:00:12:34:56 ifname=kdump0:52:54:00:12:34:57", ["already the name of"]),
    ("vlan=eth0", ["use vlan=NAME:PARENT"]),
    ("vlan=myvlan:eth0", ["cannot tell the VLAN id", "PARENT.ID"]),
    ("vlan=eth0.4095:eth0", ["outside 1..4094"]),
    ("vlan=eth0.0:eth0", ["outside 1..4094"]),
    ("bond=bond0", ["use bond=NAME:SLAVES"]),
    ("bond=bond0:eth0,eth0", ["named once"]),
    ("bond=bond0:eth0,eth1:mode=fastest", ["bond mode 'fastest' is unknown", "active-backup"]),
    ("bond=bond0:eth0,eth1:speed=fast", ["unknown bond option 'speed'", "miimon"]),
    ("bond=bond0:eth0,eth1:miimon", ["is not KEY=VALUE"]),
    ("bond=bond0:eth0,eth1::12", ["MTU '12'"]),
    ("bridge=br0", ["use bridge=NAME:PORTS"]),
    ("rd.route=198.51.100.0/24", ["use rd.route="]),
    ("rd.route=198.51.100.1/24:192.0.2.1", ["is not a network NET/PREFIX", "host bits"]),
    ("rd.route=198.51.100.0/24:", ["needs a GATEWAY, an IFACE or both"]),
    ("rd.route=198.51.100.0/24:[2001:db8::1]", ["not of the same IP version"]),
    ("nameserver=dns.example", ["nameserver 'dns.example' is not an IP address"]),
    ("bond=bond0:eth0,eth1 bridge=br0:eth1", ["eth1 is in both bond bond0 and bridge br0"]),
    ("bond=bond0:eth0,eth1 ip=eth0:dhcp", ["configures eth0, which is in bond bond0"]),
    ("bond=bond0:eth0,eth1 vlan=eth1.5:eth1", ["VLAN eth1.5 is on eth1, which is in bond bond0"]),
    ("bond=bond0:eth0,eth1 bond=bond0:eth2,eth3", ["bond bond0 is defined twice"]),
])
def test_bad_arguments_name_the_argument_and_what_is_allowed(cmdline, fragments):
    with pytest.raises(ConfigError) as info:
        parse_cmdline(cmdline)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_vlan_id_helper_rejects_names_without_id():
    with pytest.raises(ConfigError, match="cannot tell the VLAN id"):
        vlan_id_from_name("vlan")


# ---------------------------------------------------------------- KDUMP_NETCONFIG

@pytest.mark.parametrize("value, name, modes", [
    ("auto", ANY_INTERFACE, [DHCP]),
    ("auto:force", ANY_INTERFACE, [DHCP]),
    ("eth0:dhcp", "eth0", [DHCP]),
    ("eth0:dhcp4", "eth0", [DHCP]),
    ("eth0:dhcp6", "eth0", [DHCP6]),
    ("eth0:auto6", "eth0", [AUTO6]),
    ("eth1:dhcp:force", "eth1", [DHCP]),
    ("kdump0:auto6:force", "kdump0", [AUTO6]),
])
def test_netconfig_forms(value, name, modes):
    cfg = config.parse_text(f'KDUMP_NETCONFIG="{value}"\n')
    plan = from_netconfig(cfg.netconfig)
    assert [(i.name, i.modes) for i in plan.interfaces] == [(name, modes)]
    assert cfg.netconfig.force == value.endswith(":force")
    assert "KDUMP_NETCONFIG" in plan.description


def test_netconfig_empty_means_no_network():
    assert not from_netconfig(config.parse_text('KDUMP_NETCONFIG=""\n').netconfig)


def test_netconfig_static_needs_the_recorded_addresses():
    with pytest.raises(ConfigError, match=r"KDUMP_NETCONFIG=eth0:static needs the addresses.*ip="):
        from_netconfig(NetConfig(mode="static", interface="eth0"))


def test_netconfig_bad_values():
    with pytest.raises(ConfigError, match="unknown"):
        from_netconfig(NetConfig(mode="bootp", interface="eth0"))
    with pytest.raises(ConfigError, match="longer than 15"):
        from_netconfig(NetConfig(mode="dhcp", interface="x" * 16))


def test_ip_on_the_command_line_overrides_netconfig():
    plan = choose_plan("ip=eth3:dhcp6", NetConfig(mode="dhcp", interface="eth0"))
    assert [(i.name, i.modes) for i in plan.interfaces] == [("eth3", [DHCP6])]
    plan = choose_plan("ifname=kdump0:52:54:00:12:34:56 quiet", NetConfig(mode="auto6", interface="kdump0"))
    assert [(i.name, i.modes) for i in plan.interfaces] == [("kdump0", [AUTO6])]
    assert plan.renames == [Rename("kdump0", "52:54:00:12:34:56")]


def test_needs_network():
    auto = NetConfig()
    assert not needs_network("/var/crash", auto)
    assert not needs_network("file:///var/crash", auto)
    assert needs_network("/var/crash", NetConfig(mode="auto", force=True))
    for url in ("ftp://h/d", "sftp://u@h/d", "ssh://h/d", "nfs://h/d", "cifs://u@h/share/d", "smb://h/s"):
        assert needs_network(url, auto), url


# ---------------------------------------------------------------- rendering

@pytest.mark.parametrize("cmdline", [
    "ip=dhcp",
    "ip=eth0:dhcp6",
    "ip=eth0:auto6 ip=eth1:dhcp",
    "ifname=kdump0:52:54:00:12:34:56 ip=192.0.2.5:192.0.2.9:192.0.2.1:24:host1:kdump0:none:192.0.2.53",
    "ip=192.0.2.5::192.0.2.1:24::eth0:none ip=[2001:db8::5]::[2001:db8::1]:64::eth0:none ip=eth0:auto6",
    "ip=192.0.2.5:::24::eth0:none:1400:52:54:00:12:34:56 nameserver=192.0.2.53",
    "ip=::::dumper:eth0:dhcp",
    "ip=::::::dhcp:1400",
    "bond=bond0:kdump0,kdump1:mode=active-backup,miimon=100:9000 vlan=bond0.5:bond0 "
    "ip=192.0.2.5::192.0.2.1:24::bond0.5:none rd.route=198.51.100.0/24:192.0.2.1:bond0.5",
    "bridge=br0:eth0,eth1 ip=br0:dhcp rd.route=[2001:db8:1::/64]:[2001:db8::1] nameserver=[2001:db8::53]",
    "vlan=vlan0007:eth0 ip=vlan0007:dhcp",
])
def test_to_cmdline_round_trips(cmdline):
    plan = parse_cmdline(cmdline)
    rendered = to_cmdline(plan)
    assert parse_cmdline(" ".join(rendered)) == plan, rendered
    assert all(" " not in arg for arg in rendered)


def test_to_cmdline_of_a_built_plan():
    plan = NetPlan(interfaces=[Interface("kdump0", [STATIC], [Address("198.51.100.2", 24)], ["198.51.100.1"],
                                         dns=["198.51.100.53"], hostname="prod1")],
                   renames=[Rename("kdump0", "02:00:00:00:00:01")], hostname="prod1")
    assert to_cmdline(plan) == ["ifname=kdump0:02:00:00:00:00:01",
                                "ip=198.51.100.2::198.51.100.1:24:prod1:kdump0:none:198.51.100.53"]


def test_describe_says_what_will_be_done():
    text = describe(parse_cmdline("ifname=kdump0:52:54:00:12:34:56 bond=bond0:kdump0,eth1:mode=1 "
                                  "ip=192.0.2.5::192.0.2.1:24::bond0:none nameserver=192.0.2.53"))
    for fragment in ("rename the link with MAC 52:54:00:12:34:56 to kdump0", "bond bond0 of kdump0, eth1",
                     "mode=active-backup", "bond0: static, 192.0.2.5/24, gateway 192.0.2.1", "DNS 192.0.2.53"):
        assert fragment in text
    assert describe(NetPlan()) == "no network configuration"
