"""An existing SUSE /etc/sysconfig/kdump works unchanged (issue 13).

Checked against openSUSE/kdump (github.com/openSUSE/kdump, commit 34da4b88,
2026-04-10): its template ``sysconfig.kdump.in``, ``kdump-read-config.sh``,
the man page ``doc/man/kdump.5.txt.in``, the capture script
``dracut/kdump-save``, ``init/load.sh`` and ``init/mkdumprd``.  Network tests
run in namespaces the test creates (tests/netns.py); every address exists only
inside them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require
from netns import Lab, ip_netns_available

from capture.config import options as config
from capture.config.options import Config, NetConfig
from capture.errors import ConfigError
from capture.net import plan as netargs

DATA = Path(__file__).resolve().parent / "data" / "suse"
CLI = [sys.executable, "-m", "capture.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ------------------------------------------------------------------ 1. KDUMP_NETCONFIG

@pytest.mark.parametrize("text, net", [
    ("eth0:auto", NetConfig("auto", "eth0", False)),
    ("eth0:AUTO:force", NetConfig("auto", "eth0", True)),
    ("default:dhcp", NetConfig("dhcp", "default", False)),
    ("default:auto", NetConfig("auto", "default", False)),
    ("default:static:force", NetConfig("static", "default", True)),
    ("auto", NetConfig("auto", "", False)),
])
def test_netconfig_auto_mode_and_default_interface_are_read(text, net):
    loaded = config.parse_text(f'KDUMP_NETCONFIG="{text}"\n').netconfig
    assert loaded == net
    assert loaded.on_default_route == (net.interface == "default")
    assert config.parse_text(f'KDUMP_NETCONFIG="{config.format_netconfig(net)}"\n').netconfig == net


def test_netconfig_default_without_a_mode_is_refused_as_suse_does():
    with pytest.raises(ConfigError, match="KDUMP_NETCONFIG"):
        config.parse_text('KDUMP_NETCONFIG="default"\n')


@pytest.mark.parametrize("text, cmdline", [
    ("eth0:auto", ["ip=eth0:dhcp"]),           # no production facts in the capture kernel: DHCP
    ("default:dhcp", ["ip=dhcp"]),             # the default route is unknown there: first link
    ("default:dhcp6", ["ip=dhcp6"]),
])
def test_netconfig_fallback_in_the_capture_kernel(text, cmdline):
    plan = netargs.from_netconfig(config.parse_text(f'KDUMP_NETCONFIG="{text}"\n').netconfig)
    assert netargs.to_cmdline(plan) == cmdline


GATEWAY = "198.51.100.1"
TARGET = "203.0.113.10"
MAC0, MAC1 = "02:00:00:00:13:01", "02:00:00:00:13:02"

_RESOLVE = r"""
import json, sys
from capture.config import options as config
from capture.host import netdetect
from capture.net import plan as netargs
from capture.errors import KdumpError
net = config.parse_text('KDUMP_NETCONFIG="%s"\n' % sys.argv[1]).netconfig
try:
    plan = netdetect.resolve_netconfig(net, sys.argv[2] or None)
except KdumpError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"cmdline": netargs.to_cmdline(plan), "description": plan.description}))
"""


@pytest.fixture
def production():
    """A production namespace: nic0 with a static address and the default route, nic1 with an
    address that has a lease lifetime (what a DHCP client sets), both wired to a server namespace."""
    problem = ip_netns_available()
    require(problem is None, problem or "")
    with Lab() as lab:
        srv = lab.netns("srv")
        prod = lab.netns("prod")
        lab.veth(srv, "s0", prod, "nic0", mac_b=MAC0)
        lab.veth(srv, "s1", prod, "nic1", mac_b=MAC1)
        lab.ip(srv, "addr", "add", f"{GATEWAY}/24", "dev", "s0")
        lab.ip(srv, "addr", "add", "192.0.2.1/24", "dev", "s1")
        lab.ip(srv, "addr", "add", f"{TARGET}/32", "dev", "lo")
        lab.ip(prod, "addr", "add", "198.51.100.7/24", "dev", "nic0")
        lab.ip(prod, "addr", "add", "192.0.2.77/24", "dev", "nic1", "valid_lft", "3600", "preferred_lft", "3600")
        for nic in ("nic0", "nic1"):
            lab.ip(prod, "link", "set", nic, "up")
        lab.ip(prod, "route", "add", "default", "via", GATEWAY)
        (Path("/etc/netns") / prod / "resolv.conf").write_text("nameserver 198.51.100.53\n")
        yield lab, prod


def resolve(lab: Lab, ns: str, netconfig: str, target: str = TARGET) -> dict:
    return json.loads(lab.run_python(ns, _RESOLVE, netconfig, target).stdout)


@pytest.mark.parametrize("netconfig, cmdline, found", [
    # auto on a card: static where the address is permanent, DHCP where it has a lease
    ("nic0:auto", [f"ifname=kdump0:{MAC0}", f"ip=198.51.100.7::{GATEWAY}:24::kdump0:none",
                   "nameserver=198.51.100.53"], "KDUMP_NETCONFIG=nic0:auto: "),
    ("nic1:auto", [f"ifname=kdump0:{MAC1}", "ip=kdump0:dhcp"], "KDUMP_NETCONFIG=nic1:auto: "),
    # default: the card of the default route (nic0), whatever the target
    ("default:dhcp", [f"ifname=kdump0:{MAC0}", "ip=kdump0:dhcp"], "the default route is on nic0"),
    ("default:auto", [f"ifname=kdump0:{MAC0}", f"ip=198.51.100.7::{GATEWAY}:24::kdump0:none",
                      "nameserver=198.51.100.53"], "the default route is on nic0"),
    ("default:static:force", [f"ifname=kdump0:{MAC0}", f"ip=198.51.100.7::{GATEWAY}:24::kdump0:none",
                              "nameserver=198.51.100.53"], "the default route is on nic0"),
])
def test_netconfig_auto_and_default_resolved_at_build_time(production, netconfig, cmdline, found):
    lab, prod = production
    result = resolve(lab, prod, netconfig)
    assert result.get("cmdline") == cmdline, result
    assert found in result["description"]


def test_netconfig_default_without_a_default_route_is_a_clear_error(production):
    lab, prod = production
    lab.ip(prod, "route", "del", "default")
    result = resolve(lab, prod, "default:dhcp")
    assert "no default route" in result["error"] and "eth0:dhcp" in result["error"]


def test_netconfig_auto_on_a_card_without_an_address_is_a_clear_error(production):
    lab, prod = production
    lab.ip(prod, "addr", "flush", "dev", "nic1")
    assert "nic1 has no IPv4 address" in resolve(lab, prod, "nic1:auto")["error"]


# ------------------------------------------------------------------ 3. KDUMP_SSH_IDENTITY, KDUMP_HOST_KEY

def _root_ssh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for root's home: ``$HOME`` is where ~/.ssh is looked up (as OpenSSH's tools do)."""
    home = tmp_path / "roothome"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)        # a relative name must not be looked up here
    return home / ".ssh"


def test_relative_identity_is_a_file_in_roots_ssh_dir(tmp_path, monkeypatch):
    from transports.base import TransportOptions
    from transports.sshauth import identity_paths
    ssh = _root_ssh_dir(tmp_path, monkeypatch)
    cfg = config.parse_text('KDUMP_SSH_IDENTITY="kdump_key  /etc/kdump/other_key sub/k"\n')
    paths, explicit = identity_paths(TransportOptions.from_config(cfg))
    assert explicit and paths == (str(ssh / "kdump_key"), "/etc/kdump/other_key", str(ssh / "sub" / "k"))


def test_host_key_pasted_from_a_pub_file_is_accepted(tmp_path):
    require(subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode == 0, "ssh-keygen missing")
    key = tmp_path / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@collector", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    pub = (tmp_path / "host_ed25519.pub").read_text().strip()
    assert pub.endswith(" root@collector")
    type_and_key = " ".join(pub.split()[:2])
    assert config.parse_text(f'KDUMP_HOST_KEY="{pub}"\n').host_key == type_and_key
    with pytest.raises(ConfigError, match="known_hosts line: leave out the host name"):
        config.parse_text(f'KDUMP_HOST_KEY="collector {type_and_key}"\n')


pytest_plugins = ["servers.sshd"]


def test_sftp_save_with_relative_identities_and_a_pub_host_key(ssh_lab, sshd_sftp, fixture_vmcore, tmp_path,
                                                               monkeypatch):
    """SUSE's setup: ``ssh-keygen -f ~/.ssh/kdump_key``, KDUMP_SSH_IDENTITY=kdump_key (after another key
    the server does not know), KDUMP_HOST_KEY pasted from the server's .pub file with its comment."""
    from capture.save.sequence import save
    from servers.sshd import ssh_keygen
    ssh = _root_ssh_dir(tmp_path, monkeypatch)
    ssh_keygen(ssh / "unknown_key", "ed25519")
    (ssh / "kdump_key").write_bytes(ssh_lab.key_user.keys["ed25519"].read_bytes())
    (ssh / "kdump_key").chmod(0o600)
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base))
    text = (f'KDUMP_SAVEDIR="{url}"\nKDUMP_SSH_IDENTITY="unknown_key kdump_key"\n'
            f'KDUMP_HOST_KEY="{sshd_sftp.host_keys["ed25519"]} root@collector.example"\n'
            'KDUMP_DUMPFORMAT="lzo"\nKDUMP_FREE_DISK_SIZE=1\nKDUMP_NET_TIMEOUT=0\n')
    result = save(config.parse_text(text), vmcore=str(fixture_vmcore))
    saved = base / result.directory
    assert "vmcore status: saved successfully" in (saved / "README.txt").read_text()
    assert (saved / "vmcore").stat().st_size > 0


# ------------------------------------------------------------------ 4. KDUMP_KERNELVER as a path

BZIMAGE = Path("/boot/vmlinuz-6.1.0-57-cloud-amd64")
BZIMAGE_RELEASE = "6.1.0-57-cloud-amd64"


@pytest.fixture(scope="module")
def bzimage() -> Path:
    require(BZIMAGE.is_file(), f"{BZIMAGE} (the Debian 12 cloud kernel) is not installed")
    return BZIMAGE


def test_kernelver_path_is_the_image_and_its_release_is_read_from_it(bzimage, tmp_path):
    from capture.host import initrd, kexec
    odd = tmp_path / "kernels" / "the-kdump-kernel"      # a name that says nothing
    odd.parent.mkdir()
    odd.write_bytes(bzimage.read_bytes())
    cfg = Config(kernelver=str(odd))
    release = initrd.kernel_release(cfg)
    assert release == BZIMAGE_RELEASE
    assert initrd.default_output(release) == f"/boot/initrd-{BZIMAGE_RELEASE}-kdump"
    cmd = kexec.load_command(cfg, release, "/tmp/initrd", "root=/dev/vda1")
    assert cmd.kernel == str(odd)
    # --kernel PATH decides over KDUMP_KERNELVER, for the release and for the image
    assert initrd.kernel_release(Config(kernelver="5.10.0-1-amd64"), str(odd)) == BZIMAGE_RELEASE
    assert kexec.load_command(Config(kernelver="5.10.0-1-amd64"), release, "/i", "",
                              requested=str(odd)).kernel == str(odd)


def test_load_dry_run_with_kernelver_path(bzimage, tmp_path):
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_KERNELVER="{bzimage}"\nKDUMP_SAVEDIR="/var/crash"\n')
    res = run_cli("load", "--dry-run", "--config", str(conf))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"kexec -p {bzimage} --initrd=/boot/initrd-{BZIMAGE_RELEASE}-kdump ")
    assert "vmlinuz-/boot" not in res.stdout


def test_release_of_an_uncompressed_and_a_gzipped_vmlinux(bzimage, tmp_path):
    """A vmlinux (ELF) and a vmlinux.gz carry no boot header: the 'Linux version' banner tells.
    The vmlinux is the real one inside the Debian bzImage (its LZ4 payload, decompressed with lz4)."""
    import gzip
    import shutil
    from capture.host import kexec
    lz4 = shutil.which("lz4")
    require(lz4 is not None, "lz4 is not installed")
    data = bzimage.read_bytes()
    start = data.find(b"\x02\x21\x4c\x18")            # LZ4 legacy frame: how this kernel is compressed
    require(start > 0, f"{bzimage} has no LZ4 payload")
    vmlinux = tmp_path / "vmlinux"
    with open(vmlinux, "wb") as out:
        subprocess.run([lz4, "-dc"], input=data[start:], stdout=out, stderr=subprocess.DEVNULL)
    assert vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert kexec.image_release(str(vmlinux)) == BZIMAGE_RELEASE
    packed = tmp_path / "image.gz"
    with open(vmlinux, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    assert kexec.image_release(str(packed)) == BZIMAGE_RELEASE


def test_release_from_the_name_when_the_image_tells_nothing(tmp_path):
    from capture.host import kexec
    image = tmp_path / "Image-6.6.13-arm64"
    image.write_bytes(b"\0" * 4096)
    assert kexec.image_release(str(image)) == "6.6.13-arm64"
    with pytest.raises(ConfigError, match="cannot tell the kernel release"):
        (tmp_path / "kernel").write_bytes(b"\0" * 4096)
        kexec.image_release(str(tmp_path / "kernel"))
    with pytest.raises(ConfigError, match="does not exist"):
        kexec.image_release(str(tmp_path / "absent"))


def test_image_found_by_version_as_suse_mkdumprd_does(tmp_path):
    from capture.host import kexec
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    (modules / "6.4.0-1-default").mkdir(parents=True)
    boot.mkdir()
    find = lambda: kexec.kernel_image("6.4.0-1-default", "", str(modules), str(boot))  # noqa: E731
    assert find() == str(boot / "vmlinuz-6.4.0-1-default")          # nothing there: the usual name
    (boot / "vmlinux-6.4.0-1-default").write_bytes(b"x")
    assert find() == str(boot / "vmlinux-6.4.0-1-default")
    (boot / "Image-6.4.0-1-default").write_bytes(b"x")
    assert find() == str(boot / "Image-6.4.0-1-default")            # Image before vmlinux
    (modules / "6.4.0-1-default" / "image").write_bytes(b"x")
    assert find() == str(modules / "6.4.0-1-default" / "image")     # image before Image
    (modules / "6.4.0-1-default" / "vmlinuz").write_bytes(b"x")
    assert find() == str(modules / "6.4.0-1-default" / "vmlinuz")   # modules dir first


# ------------------------------------------------------------------ 5. README keys

#: The lines of the final README.txt that SUSE's capture script writes, with the form of their values:
#: openSUSE/kdump dracut/kdump-save (commit 34da4b88), the heredoc "Kernel crashdump" at the end of
#: main(), with DMESG_STATUS, VMCORE_STATUS, VMCOREINFO_DETAILS ("Kernel version: ${OSRELEASE}",
#: "Crash time: $(date +%Y-%m-%dT%H:%M:%S -d @${CRASHTIME})") and DUMP_INFO ("Dump time: ${DUMPTIME_ISO}"
#: from date +"%Y-%m-%dT%H:%M:%S", "Host: ${HOSTNAME}", "Dump level: ${KDUMP_DUMPLEVEL}",
#: "Dump format: ${KDUMP_DUMPFORMAT}").
SUSE_README_HEADER = ["Kernel crashdump", "----------------"]
SUSE_README_KEYS = {
    "dmesg status": r"saved successfully|error while saving.*",
    "vmcore status": r"saved successfully|error while saving.*|skipped|deleted .*",
    "Kernel version": r"\S+",
    "Crash time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
    "Dump time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
    "Host": r"\S+",
    "Dump level": r"\d+",
    "Dump format": r"none|ELF|compressed|lzo|snappy|zstd|raw",
}


def readme_values(text: str) -> dict:
    values: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in SUSE_README_KEYS:
            assert key not in values, f"{key} twice in the README"
            values[key] = value
    return values


@pytest.mark.parametrize("fmt, suse_format", [("compressed", "compressed"), ("elf", "ELF")])
def test_readme_has_suses_keys_and_value_formats(tmp_path, fixture_vmcore, fmt, suse_format):
    import re
    from datetime import datetime
    from capture.save.sequence import save
    before = datetime.now().replace(microsecond=0)
    result = save(Config(dumpformat=fmt, dumplevel=31, free_disk_size=1), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path))
    text = (tmp_path / result.directory / "README.txt").read_text()
    assert text.startswith("vmcore status: saved successfully\n")          # our first line stays
    lines = text.splitlines()
    start = lines.index(SUSE_README_HEADER[0])
    assert lines[start:start + 2] == SUSE_README_HEADER
    values = readme_values(text)
    assert set(values) == set(SUSE_README_KEYS), text
    for key, form in SUSE_README_KEYS.items():
        assert re.fullmatch(form, values[key]), (key, values[key])
    assert values["Kernel version"] == "6.1.0-56-cloud-amd64"
    assert values["Host"] == "fixture-host"
    assert (values["Dump level"], values["Dump format"]) == ("31", suse_format)
    crash = datetime.fromtimestamp(result.facts.crashed_at.timestamp())
    assert values["Crash time"] == crash.strftime("%Y-%m-%dT%H:%M:%S")      # local time, as SUSE's date
    assert datetime.fromisoformat(values["Dump time"]) >= before
    assert values["dmesg status"] == values["vmcore status"] == "saved successfully"


# ------------------------------------------------------------------ 2. KDUMP_VERBOSE

@pytest.mark.parametrize("value", ["16", "31", "24"])
def test_verbose_accepts_suses_full_range(value):
    assert config.parse_text(f"KDUMP_VERBOSE={value}\n").verbose == int(value)


def test_verbose_beyond_suses_bits_is_refused():
    with pytest.raises(ConfigError, match="from 0 to 31"):
        config.parse_text("KDUMP_VERBOSE=32\n")


def _save_cli(tmp_path: Path, fixture_vmcore: Path, verbose: int) -> subprocess.CompletedProcess:
    conf = tmp_path / f"kdump-{verbose}"
    conf.write_text(f'KDUMP_VERBOSE={verbose}\nKDUMP_DUMPFORMAT="lzo"\nKDUMP_FREE_DISK_SIZE=1\nKDUMP_CPUS=1\n')
    out = tmp_path / f"out-{verbose}"
    out.mkdir()
    res = run_cli("save", "--config", str(conf), "--vmcore", str(fixture_vmcore), "--savedir", str(out))
    assert res.returncode == 0, res.stderr
    return res


def test_verbose_8_debugs_the_save_and_makedumpfile(tmp_path, fixture_vmcore, makedumpfile):
    quiet = _save_cli(tmp_path, fixture_vmcore, 0)
    loud = _save_cli(tmp_path, fixture_vmcore, 8)
    assert "--message-level 7 " in quiet.stderr and "--message-level 15 " in loud.stderr
    assert "KDUMP_VERBOSE=8: debug messages on" in loud.stderr
    # makedumpfile's debug level prints the VMCOREINFO it read; our debug log shows its lines
    assert "makedumpfile: OSRELEASE=6.1.0-56-cloud-amd64" in loud.stderr
    assert "OSRELEASE=" not in quiet.stderr and "debug messages on" not in quiet.stderr


def test_verbose_2_writes_progress_to_stdout(tmp_path, fixture_vmcore, makedumpfile):
    assert _save_cli(tmp_path, fixture_vmcore, 0).stdout == ""
    lines = _save_cli(tmp_path, fixture_vmcore, 2).stdout.splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines), lines
    assert "100.0 %" in lines[-1]


def test_verbose_8_traces_the_initrd_script(tmp_path):
    """dracut-module/kdump-saver-boot.sh with KDUMP_VERBOSE 8 runs under set -x.  It stops at once
    outside a capture kernel (no /proc/vmcore), so it is safe to run here."""
    require(not os.path.exists("/proc/vmcore"), "this is a capture kernel: the script would save and reboot")
    script = REPO / "dracut-module" / "kdump-saver-boot.sh"
    traces = {}
    for verbose in (0, 8, 24):
        conf = tmp_path / f"kdump.conf.{verbose}"
        conf.write_text(config.serialize(Config(verbose=verbose)))
        res = subprocess.run(["sh", str(script)], env={**os.environ, "KDUMP_SAVER_CONF": str(conf)},
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0
        traces[verbose] = res.stderr
    assert traces[0] == ""
    assert "+ [ -e /proc/vmcore ]" in traces[8] and "+ [ -e /proc/vmcore ]" in traces[24]


def test_verbose_load_bits(tmp_path, bzimage):
    conf = tmp_path / "kdump"

    def load(verbose: int, *extra: str) -> subprocess.CompletedProcess:
        conf.write_text(f'KDUMP_VERBOSE={verbose}\nKDUMP_KERNELVER="{bzimage}"\n')
        return run_cli("load", "--config", str(conf), "--initrd", str(tmp_path / "no-initrd"), *extra)

    quiet = load(0, "--dry-run")
    assert quiet.returncode == 0 and "kexec command line" not in quiet.stderr
    assert " -d" not in quiet.stdout
    assert f"kexec command line: kexec -p {bzimage}" in load(1, "--dry-run").stderr     # 1: to the log
    debug = load(16, "--dry-run")                                                       # 16: kexec -d
    assert debug.stdout.split()[-1] == "-d" or " -d " in debug.stdout
    assert "KDUMP_VERBOSE=16: debug messages on" in debug.stderr
    shown = load(4)          # 4: on stdout before loading; loading then fails (no initrd), nothing loaded
    assert shown.returncode == 1 and shown.stdout.startswith(f"kexec command line: kexec -p {bzimage}")


# ------------------------------------------------------------------ 6. reboot and scripts as SUSE

def test_after_the_save_a_shell_then_the_reboot():
    from capture.save.boot import end_steps
    assert end_steps(Config(immediate_reboot=True), True) == ("reboot",)
    assert end_steps(Config(immediate_reboot=False), True) == ("shell", "reboot")
    assert end_steps(Config(immediate_reboot=False), False) == ()


def test_transfer_runs_alone_without_pre_and_post_scripts(tmp_path, fixture_vmcore, caplog):
    import logging
    from capture.save.boot import capture_boot
    marks = tmp_path / "marks"
    marks.mkdir()
    text = (f'KDUMP_SAVEDIR="{tmp_path}/dumps"\nKDUMP_NETCONFIG=""\n'
            f'KDUMP_PRESCRIPT="touch {marks}/pre"\nKDUMP_POSTSCRIPT="touch {marks}/post"\n'
            f'KDUMP_TRANSFER="test -r {fixture_vmcore} && touch {marks}/transfer"\n')
    with caplog.at_level(logging.INFO):
        assert capture_boot(config.parse_text(text), vmcore=str(fixture_vmcore), allow_reboot=False) == 0
    assert sorted(p.name for p in marks.iterdir()) == ["transfer"]
    assert "KDUMP_PRESCRIPT and KDUMP_POSTSCRIPT are not run" in caplog.text
    # without KDUMP_TRANSFER both scripts run around the save
    text = text.replace("KDUMP_TRANSFER=", "KDUMP_OTHER=") + 'KDUMP_DUMPFORMAT="none"\n'
    (tmp_path / "dumps").mkdir()
    assert capture_boot(config.parse_text(text), vmcore=str(fixture_vmcore), allow_reboot=False) == 0
    assert sorted(p.name for p in marks.iterdir()) == ["post", "pre", "transfer"]


def test_check_config_states_the_reboot_and_script_rules(tmp_path):
    conf = tmp_path / "kdump"
    conf.write_text('KDUMP_IMMEDIATE_REBOOT="false"\nKDUMP_TRANSFER="/usr/local/bin/t"\n'
                    'KDUMP_PRESCRIPT="/usr/local/bin/p"\n')
    res = run_cli("check-config", "--config", str(conf))
    assert res.returncode == 0, res.stderr
    assert ("# after the save: a shell on the console; the machine reboots when it exits "
            "(KDUMP_IMMEDIATE_REBOOT=false, as in SUSE's kdump)") in res.stdout
    assert ("# KDUMP_TRANSFER replaces the save: it runs alone, KDUMP_PRESCRIPT and KDUMP_POSTSCRIPT "
            "are not run (as in SUSE's kdump)") in res.stdout
    conf.write_text('KDUMP_PRESCRIPT="/usr/local/bin/p"\nKDUMP_POSTSCRIPT="/usr/local/bin/q"\n')
    res = run_cli("check-config", "--config", str(conf))
    assert "# the save: KDUMP_PRESCRIPT, then the dump, then KDUMP_POSTSCRIPT" in res.stdout
    assert "# after the save: the machine reboots (KDUMP_IMMEDIATE_REBOOT=true)" in res.stdout


# ------------------------------------------------------------------ 8 and the checks: SUSE's files

TEMPLATE = DATA / "sysconfig.kdump.defaults"
REALISTIC = sorted(DATA.glob("*.conf"))
#: the only warnings SUSE's template with every default may give: what kdump-saver leaves to others
OUT_OF_SCOPE: tuple = ()
"""Options of SUSE's template (at their defaults) that check-config warns about: none.
KDUMP_UPDATE_BOOTLOADER is honoured by 'kdump-saver enable' (a GRUB drop-in)."""


def check_config_in_process(path: Path, caplog, capsys) -> tuple:
    """``check-config`` as the command runs it; returns (warnings, stdout)."""
    import argparse
    import logging
    from capture.commands import check_config
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert check_config.run(argparse.Namespace(config=str(path))) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return warnings, capsys.readouterr().out


def private_copy(src: Path, tmp_path: Path) -> Path:
    """The file as an administrator keeps it: mode 0600 (some hold passwords)."""
    dst = tmp_path / src.name
    dst.write_text(src.read_text())
    dst.chmod(0o600)
    return dst


def test_template_defaults_warn_only_about_what_is_out_of_scope(tmp_path, caplog, capsys):
    warnings, out = check_config_in_process(private_copy(TEMPLATE, tmp_path), caplog, capsys)
    assert warnings == [], warnings
    assert 'KDUMP_SAVEDIR="/var/crash"' in out and 'KDUMP_NETCONFIG="auto"' in out
    # the one deliberate difference: SUSE's template edits the boot loader, our default does not
    assert config.load(str(private_copy(TEMPLATE, tmp_path))) == config.Config(
        source=str(tmp_path / TEMPLATE.name), update_bootloader=True)
    res = run_cli("check-config", "--config", str(private_copy(TEMPLATE, tmp_path)))
    assert res.returncode == 0 and "# after the save: the machine reboots" in res.stdout


def test_fadump_and_auto_resize_switched_on_are_named_out_of_scope(tmp_path, caplog, capsys):
    conf = tmp_path / "kdump"
    conf.write_text('KDUMP_FADUMP="true"\nKDUMP_FADUMP_SHELL="true"\nKDUMP_AUTO_RESIZE="yes"\n'
                    'KDUMP_UPDATE_BOOTLOADER="false"\n')
    warnings, _ = check_config_in_process(conf, caplog, capsys)
    assert len(warnings) == 3, warnings
    assert sum("firmware-assisted dump (POWER) is not supported" in w for w in warnings) == 2
    assert any(w.startswith("KDUMP_AUTO_RESIZE=true: kdump-saver does not shrink") for w in warnings)


@pytest.mark.parametrize("path", [TEMPLATE] + REALISTIC, ids=lambda p: p.name)
def test_suse_configuration_through_check_config_and_save(path, tmp_path, fixture_vmcore, caplog, capsys):
    from capture.save.sequence import save
    conf = private_copy(path, tmp_path)
    warnings, out = check_config_in_process(conf, caplog, capsys)
    allowed = OUT_OF_SCOPE if path == TEMPLATE else ()
    assert [w for w in warnings if w.split(": ")[1] not in allowed] == []
    assert "dontsay" not in out                                   # passwords are masked
    cfg = config.load(str(conf))
    out_dir = tmp_path / "dumps"
    out_dir.mkdir()
    result = save(cfg, vmcore=str(fixture_vmcore), savedir=str(out_dir))
    readme = (out_dir / result.directory / "README.txt").read_text()
    assert readme.startswith("vmcore status: saved successfully\n")
    values = readme_values(readme)
    assert values["dmesg status"] == "saved successfully"
    assert values["Dump level"] == str(cfg.dumplevel)
    assert values["Dump format"] == {"elf": "ELF"}.get(cfg.dumpformat, cfg.dumpformat)
    expected = {"none": set(), "raw": {"vmcore.lz4"}}.get(cfg.dumpformat, {"vmcore"})
    assert {p.name for p in (out_dir / result.directory).iterdir()} == expected | {"dmesg.txt", "README.txt",
                                                                                   ".kdump-saver"}


def test_an_incomplete_readme_says_saved_successfully_nowhere(tmp_path, fixture_vmcore):
    """Scripts grep for "saved successfully": in a dump that failed after its kernel log was saved,
    the SUSE lines are those of SUSE's temporary README (no status, no "Kernel crashdump")."""
    from capture.save.sequence import begin
    with pytest.raises(RuntimeError):
        with begin(Config(dumpformat="lzo", free_disk_size=1), str(fixture_vmcore), str(tmp_path)) as dump:
            dump.save_files()
            raise RuntimeError("the target vanished")
    readme = next(tmp_path.glob("*/README.txt")).read_text()
    assert readme.startswith("THIS DUMP IS INCOMPLETE.") and "vmcore status: INCOMPLETE" in readme
    assert "saved successfully" not in readme and "Kernel crashdump" not in readme
    values = readme_values(readme)
    assert {"Kernel version", "Crash time", "Dump time", "Host", "Dump level", "Dump format"} <= set(values)
