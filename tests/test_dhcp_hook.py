"""The DHCP hook (a POSIX shell script) and the saver's reading of what it records.

The values come from the DHCP server: whatever they hold, the hook must record
them verbatim without running any of it, and :func:`read_lease` must return a
valid lease or None, never raise.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

from hypothesis import given, settings, strategies as st

from capture.net.lease import ENV_NAMES, hook_script, lease_from_env, lease_path, read_lease

SH = "/bin/sh"


def run_hook(tmp: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    record = lease_path(tmp, "nic0", 4)
    hook = tmp / "hook"
    hook.write_text(hook_script(record))
    hook.chmod(0o700)
    return subprocess.run([SH, str(hook), *args], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30)


def test_a_dhclient_lease_is_recorded_and_read(tmp_path):
    env = {"reason": "BOUND", "interface": "nic0", "new_ip_address": "198.51.100.7",
           "new_subnet_mask": "255.255.255.0", "new_routers": "198.51.100.1",
           "new_domain_name_servers": "198.51.100.1 2001:db8::53", "new_dhcp_lease_time": "3600",
           "new_interface_mtu": "1400"}
    proc = run_hook(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    record = lease_path(tmp_path, "nic0", 4)
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert read_lease("dhclient", record) == {
        "interface": "nic0", "version": 4, "address": "198.51.100.7", "prefix": 24,
        "routers": ["198.51.100.1"], "dns": ["198.51.100.1", "2001:db8::53"], "mtu": 1400, "lease_time": 3600}


def test_udhcpc_passes_the_event_as_its_argument(tmp_path):
    env = {"interface": "nic0", "ip": "198.51.100.9", "mask": "24", "router": "198.51.100.1", "lease": "60"}
    assert run_hook(tmp_path, env, "deconfig").returncode == 0
    assert not lease_path(tmp_path, "nic0", 4).exists()
    assert run_hook(tmp_path, env, "bound").returncode == 0
    lease = read_lease("udhcpc", lease_path(tmp_path, "nic0", 4))
    assert lease is not None and lease["address"] == "198.51.100.9" and lease["lease_time"] == 60


def test_other_events_record_nothing_and_timeout_refuses_an_old_lease(tmp_path):
    for reason in ("PREINIT", "EXPIRE", "RELEASE", "STOP", "PREINIT6"):
        assert run_hook(tmp_path, {"reason": reason, "interface": "nic0",
                                   "new_ip_address": "198.51.100.7"}).returncode == 0
    assert not lease_path(tmp_path, "nic0", 4).exists()
    assert run_hook(tmp_path, {"reason": "TIMEOUT", "interface": "nic0"}).returncode == 1


server_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                      max_size=80)


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(st.sampled_from(ENV_NAMES[2:]), server_text, max_size=8))
def test_hostile_values_are_recorded_verbatim_and_never_run(tmp_path_factory, values):
    tmp = tmp_path_factory.mktemp("hook")
    canary = tmp / "ran"
    values = {k: v.replace("CANARY", str(canary)) for k, v in values.items()}
    values.setdefault("new_ip_address", f"$(touch {canary})`touch {canary}`;touch {canary}")
    proc = run_hook(tmp, {"reason": "BOUND", "interface": "nic0", **values})
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists()
    recorded = dict(item.split("=", 1) for item in
                    lease_path(tmp, "nic0", 4).read_bytes().decode("utf-8", "surrogateescape").split("\0") if item)
    for name, value in values.items():
        assert recorded[name] == value


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600) | st.lists(st.tuples(st.sampled_from(("event", *ENV_NAMES)), server_text),
                                                max_size=12).map(
    lambda items: b"\0".join(f"{k}={v}".encode() for k, v in items)),
    client=st.sampled_from(("dhclient", "dhcpcd", "udhcpc", "udhcpc6")))
def test_whatever_was_recorded_reads_as_a_valid_lease_or_none(tmp_path_factory, data, client):
    path = tmp_path_factory.mktemp("lease") / "lease"
    path.write_bytes(data)
    lease = read_lease(client, path)
    if lease is not None:
        address = ipaddress.ip_address(lease["address"])
        assert address.version == lease["version"]
        assert 0 <= lease["prefix"] <= (32 if lease["version"] == 4 else 128)
        assert all(ipaddress.ip_address(r).version == lease["version"] for r in lease["routers"])
        assert all(ipaddress.ip_address(d) for d in lease["dns"])
        assert lease["interface"]


@given(env=st.dictionaries(st.sampled_from(ENV_NAMES), server_text, max_size=10),
       event=st.sampled_from(("BOUND", "RENEW6", "bound", "renew", "BOUND6")))
def test_lease_from_env_never_raises(env, event):
    for client in ("dhclient", "dhcpcd", "udhcpc", "udhcpc6"):
        lease_from_env(client, [event], {**env, "reason": event})
