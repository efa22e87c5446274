"""The production side around kexec: the capture command line, ``load
--dry-run``, ``unload``, ``status``, ``calibrate`` and ``test``'s refusals."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest

from capture.host import crashkernel as calibrate
from capture.host import kexec
from capture.commands import test as test_command
from capture.config.options import Config, NetConfig, parse_text
from capture.errors import KdumpError
from conftest import REPO

M = " ".join(kexec.MEMORY_SAVING)
DEBIAN_CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-cloud-amd64 root=UUID=0f2c5f3e-1d2b-4c1a-9e1e-2b7f1c9d8a11 ro "
                  "console=tty0 console=ttyS0,115200 crashkernel=256M resume=/dev/vda3 quiet "
                  "rd.lvm.lv=vg/root nr_cpus=8 mitigations=auto")


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capture.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=120)


# --- the capture command line ---------------------------------------------------------------------

def test_drops_what_a_capture_kernel_must_not_get() -> None:
    line = kexec.capture_cmdline(Config(), DEBIAN_CMDLINE)
    args = line.split()
    for dropped in ("BOOT_IMAGE", "root", "ro", "crashkernel", "resume", "quiet", "rd.lvm.lv", "nr_cpus=8"):
        assert not any(a == dropped or a.startswith(dropped + "=") for a in args if a != "nr_cpus=32"), dropped
    assert args[:3] == ["console=tty0", "console=ttyS0,115200", "mitigations=auto"]
    assert args[3:] == ["irqpoll", "reset_devices", "rootfstype=ramfs", *kexec.MEMORY_SAVING, "rd.shell=0",
                        "rd.emergency=reboot", "nr_cpus=32", "panic=1"]


def test_kdump_cpus_zero_means_no_nr_cpus_and_network_follows() -> None:
    net = ["ifname=kdump0:52:54:00:12:34:56", "ip=kdump0:dhcp"]
    line = kexec.capture_cmdline(Config(cpus=0), "console=ttyS0 root=/dev/vda1", net)
    assert line == (f"console=ttyS0 irqpoll reset_devices rootfstype=ramfs {M} rd.shell=0 rd.emergency=reboot panic=1 "
                    "ifname=kdump0:52:54:00:12:34:56 ip=kdump0:dhcp")


def test_init_arguments_after_double_dash_and_rdinit_are_dropped() -> None:
    line = kexec.capture_cmdline(Config(cpus=1), "console=ttyS0 rdinit=/sbin/x panic=30 -- --single")
    assert line == f"console=ttyS0 irqpoll reset_devices rootfstype=ramfs {M} rd.shell=0 rd.emergency=reboot nr_cpus=1 panic=1"


@pytest.mark.parametrize("setting", [{"continue_on_error": False}, {"immediate_reboot": False}])
def test_an_administrator_who_wants_a_shell_keeps_dracuts_emergency_shell(setting) -> None:
    line = kexec.capture_cmdline(Config(cpus=0, **setting), "console=ttyS0")
    assert line == f"console=ttyS0 irqpoll reset_devices rootfstype=ramfs {M} panic=1"


def test_commandline_replaces_and_append_extends() -> None:
    cfg = Config(commandline="console=hvc0 foo=1", commandline_append="bar=2")
    assert kexec.capture_cmdline(cfg, DEBIAN_CMDLINE, ["ip=dhcp"]) == "console=hvc0 foo=1 bar=2"
    cfg = Config(commandline_append="numa=off")
    assert kexec.capture_cmdline(cfg, "console=ttyS0", ["ip=eth0:dhcp"]).endswith(
        "panic=1 ip=eth0:dhcp numa=off")


def test_an_ip_in_append_replaces_the_generated_network() -> None:
    cfg = Config(commandline_append="ip=10.0.2.15::10.0.2.2:24::eth0:none")
    line = kexec.capture_cmdline(cfg, "console=ttyS0", ["ifname=kdump0:52:54:00:12:34:56", "ip=kdump0:dhcp"])
    assert "kdump0" not in line and line.endswith("ip=10.0.2.15::10.0.2.2:24::eth0:none")


def test_quoted_values_survive() -> None:
    line = kexec.capture_cmdline(Config(cpus=0), 'console=ttyS0 dyndbg="file x.c +p"')
    assert line == f'console=ttyS0 dyndbg="file x.c +p" irqpoll reset_devices rootfstype=ramfs {M} rd.shell=0 rd.emergency=reboot panic=1'


def test_load_command_argv() -> None:
    cfg = Config(kexec_options="--noefi")
    cmd = kexec.load_command(cfg, "6.1.0-56-cloud-amd64", "/boot/initrd-6.1.0-56-cloud-amd64-kdump",
                             "console=ttyS0 root=/dev/vda1")
    argv = cmd.argv()
    assert argv[:4] == ["kexec", "-p", "/boot/vmlinuz-6.1.0-56-cloud-amd64",
                        "--initrd=/boot/initrd-6.1.0-56-cloud-amd64-kdump"]
    apicid = kexec.boot_apicid()
    assert argv[4] == ("--append=console=ttyS0 irqpoll reset_devices rootfstype=ramfs "
                       + "".join(a + " " for a in kexec.MEMORY_SAVING)
                       + (f"disable_cpu_apicid={apicid} " if apicid is not None else "")
                       + "rd.shell=0 rd.emergency=reboot nr_cpus=32 panic=1")
    assert "--noefi" in argv[5:]


def test_suse_memory_saving_arguments_and_the_boot_cpu() -> None:
    line = kexec.capture_cmdline(Config(cpus=2), "console=ttyS0 cgroup_disable=pressure numa=fake=4 "
                                 "disable_cpu_apicid=7", boot_apicid=3)
    assert line == " ".join(["console=ttyS0", *kexec.ADDED, *kexec.MEMORY_SAVING, "disable_cpu_apicid=3",
                             *kexec.REBOOT_ON_INITRD_FAILURE, "nr_cpus=2", "panic=1"])
    assert "disable_cpu_apicid" not in kexec.capture_cmdline(Config(cpus=2), "console=ttyS0", boot_apicid=None)


def test_append_turns_a_generated_argument_off_by_its_key() -> None:
    assert {"cgroup_disable=memory", "numa=off", "acpi_no_memhotplug"} <= set(kexec.MEMORY_SAVING)
    cfg = Config(cpus=1, commandline_append="numa=on cgroup_disable= nr_cpus=2")
    args = kexec.capture_cmdline(cfg, "console=ttyS0", boot_apicid=0).split()
    for key in ("numa", "cgroup_disable", "nr_cpus"):
        assert len([a for a in args if a.split("=", 1)[0] == key]) == 1, key
    assert args[-3:] == ["numa=on", "cgroup_disable=", "nr_cpus=2"]
    assert "acpi_no_memhotplug" in args
    assert "irqpoll" in args and "panic=1" in args and "disable_cpu_apicid=0" in args


def test_commandline_replaces_the_memory_saving_arguments_too() -> None:
    cfg = Config(commandline="console=ttyS0 irqpoll")
    assert kexec.capture_cmdline(cfg, DEBIAN_CMDLINE, boot_apicid=0) == "console=ttyS0 irqpoll"


def test_boot_apicid_is_the_first_processors_initial_apicid(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\napicid\t\t: 6\ninitial apicid\t: 6\n\n"
                       "processor\t: 1\ninitial apicid\t: 0\n")
    assert kexec.boot_apicid(str(cpuinfo)) == 6
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")   # arm64
    assert kexec.boot_apicid(str(cpuinfo)) is None
    assert kexec.boot_apicid(str(tmp_path / "missing")) is None


def test_network_arguments_are_empty_for_a_local_target() -> None:
    assert kexec.network_arguments(Config(savedir="/var/crash")) == []
    assert kexec.network_arguments(Config(savedir="sftp://h/x", netconfig=NetConfig(mode="none"))) == []


# --- commands -------------------------------------------------------------------------------------

def test_load_dry_run_prints_the_kexec_command(tmp_path: Path) -> None:
    conf = tmp_path / "kdump"
    conf.write_text("KDUMP_SAVEDIR=/var/crash\nKDUMP_CPUS=2\nKDUMP_KERNELVER=6.1.0-99-test\n"
                    "KDUMP_COMMANDLINE_APPEND=\"numa=off\"\n")
    proc = cli("load", "--dry-run", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("kexec -p /boot/vmlinuz-6.1.0-99-test --initrd=/boot/initrd-6.1.0-99-test-kdump ")
    assert "nr_cpus=2 panic=1 numa=off" in out
    assert "crashkernel=" not in out and " root=" not in out


def test_unload_dry_run() -> None:
    proc = cli("unload", "--dry-run")
    assert proc.returncode == 0 and proc.stdout.strip() == "kexec -p -u"


def test_load_refuses_without_reservation_or_initrd(tmp_path: Path) -> None:
    conf = tmp_path / "kdump"
    conf.write_text("KDUMP_SAVEDIR=/var/crash\n")
    proc = cli("load", "--config", str(conf), "--initrd", str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    if kexec.reserved_bytes() == 0:
        assert "no memory is reserved for a capture kernel" in proc.stderr
    else:
        assert "does not exist" in proc.stderr


def test_status_reports_reservation_loaded_and_missing_initrd(tmp_path: Path) -> None:
    conf = tmp_path / "kdump"
    conf.write_text("KDUMP_SAVEDIR=/var/crash\n")
    proc = cli("status", "--config", str(conf), "--initrd", str(tmp_path / "none"))
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Reserved: ")
    assert lines[1].startswith("Capture kernel: ")
    assert lines[2] == f"Initrd: {tmp_path / 'none'}: missing"
    assert proc.returncode == 3


def test_test_refuses_without_a_terminal_and_writes_nothing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "capture.cli", "test"], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    if kexec.is_loaded() is False:
        assert "no capture kernel is loaded" in proc.stderr
    else:
        assert "without confirmation" in proc.stderr and "--yes" in proc.stderr


def test_confirmation_needs_exactly_yes() -> None:
    for answer, expected in (("yes\n", True), ("y\n", False), ("YES please\n", False), ("", False)):
        out = io.StringIO()
        assert test_command.confirmed(io.StringIO(answer), out) is expected
        assert "Type 'yes'" in out.getvalue()


def test_test_with_yes_writes_c_to_the_trigger(tmp_path: Path) -> None:
    trigger = tmp_path / "sysrq-trigger"
    trigger.write_text("")
    if kexec.is_loaded() is False:
        with pytest.raises(KdumpError, match="no capture kernel is loaded"):
            test_command.run(argparse.Namespace(yes=True), trigger=str(trigger))
        assert trigger.read_text() == ""
    else:
        assert test_command.run(argparse.Namespace(yes=True), trigger=str(trigger)) == 0
        assert trigger.read_text() == "c"


# --- calibrate ----------------------------------------------------------------------------------

def test_formula_matches_the_measurements() -> None:
    # lab: 1 GB guest, 54 MB unpacked / 13.3 MB xz initramfs in a tmpfs: worked at 176M, failed at 160M
    assert calibrate.required_mb(1024, 13.3, 54, tmpfs_root=True) == 176
    # QEMU harness: our sftp initrd (62.2 MB unpacked, 17.4 MB xz) in a tmpfs failed to unpack at 192M
    assert calibrate.required_mb(1024, 17.4, 62.2, tmpfs_root=True) > 192
    # with rootfstype=ramfs the tmpfs cap is gone
    assert calibrate.required_mb(1024, 17.4, 62.2) < calibrate.required_mb(1024, 17.4, 62.2, tmpfs_root=True)


def test_small_machine_reserves_low_only_and_large_machine_high() -> None:
    small = calibrate.calibrate(low_ram_mb=2048, high_ram_mb=0, initrd_compressed_mb=18, initrd_unpacked_mb=62)
    assert small.high == 0 and small.low == small.min_low == calibrate.required_mb(2048, 18, 62)
    big = calibrate.calibrate(low_ram_mb=3597, high_ram_mb=45477, initrd_compressed_mb=18, initrd_unpacked_mb=62)
    assert big.low == 72 and big.min_low == 72 and big.min_high == 0
    assert big.high == calibrate.required_mb(3597 + 45477, 18, 62)
    assert big.max_high == 45477 and big.total == 3597 + 45477
    # a bigger unpacked initrd needs more, twice as much in a tmpfs
    assert calibrate.required_mb(1024, 10, 120) >= 40 + 10 + 120 + 64
    assert calibrate.required_mb(1024, 10, 120, tmpfs_root=True) >= 40 + 10 + 8 + 2.1 * 120


def test_every_target_type_has_a_measured_floor() -> None:
    from transports import schemes
    assert all(mb > 0 and mb % 16 == 0 for mb in calibrate.MEASURED_1GIB_MB.values())
    for s in schemes.SCHEMES:
        assert calibrate.measured_floor_mb(1024, [s.name]) >= calibrate.MEASURED_1GIB_MB["file"] + calibrate.MARGIN_MB
    unmeasured = [s.name for s in schemes.SCHEMES if s.name not in calibrate.MEASURED_1GIB_MB]
    for name in unmeasured:
        assert calibrate.measured_floor_mb(1024, [name]) == calibrate.measured_floor_mb(1024, [calibrate.UNMEASURED_LIKE])


def test_the_recommendation_is_never_below_the_measured_floor_of_the_targets() -> None:
    m = calibrate.MEASURED_1GIB_MB
    worst = max(m["file"], m["sftp"])
    assert calibrate.measured_floor_mb(1024, ["file", "sftp"]) == worst + calibrate.MARGIN_MB
    assert calibrate.measured_floor_mb(1024, ["file"]) == m["file"] + calibrate.MARGIN_MB
    assert calibrate.measured_floor_mb(1024, []) == 0
    # 1 MB per GB beyond the measured 1 GiB guest, rounded up to 8 MB
    assert calibrate.measured_floor_mb(1024 + 64 * 1024, ["file"]) == -(-(m["file"] + calibrate.MARGIN_MB + 64) // 8) * 8
    # no initrd yet: the floor of the target types alone; a tiny initrd cannot go below it
    assert calibrate.calibrate(2048, 0, None, None, schemes=["sftp"]).low == calibrate.measured_floor_mb(2048, ["sftp"])
    assert calibrate.calibrate(2048, 0, 1, 1, schemes=["sftp"]).low == calibrate.measured_floor_mb(2048, ["sftp"])
    # a big initrd: its formula decides
    big = calibrate.calibrate(2048, 0, 60, 200, schemes=["file"])
    assert big.low == calibrate.required_mb(2048, 60, 200) > calibrate.measured_floor_mb(2048, ["file"])


def test_calibrate_recommends_per_target_type(tmp_path: Path) -> None:
    values = {}
    for scheme, savedir in (("file", "/var/crash"), ("sftp", "sftp://root@192.0.2.1/crash")):
        conf = tmp_path / f"{scheme}.conf"
        conf.write_text(f"KDUMP_SAVEDIR={savedir}\n")
        proc = cli("calibrate", "--config", str(conf), "--initrd", str(tmp_path / "no-initrd"))
        assert proc.returncode == 0, proc.stderr
        values[scheme] = {k: int(v) for k, v in (line.split(": ") for line in proc.stdout.splitlines())}
    low, high = calibrate.ram_ranges()
    total = low // 2**20 + high // 2**20
    for scheme, v in values.items():
        need = calibrate.measured_floor_mb(total, [scheme])
        assert (v["High"] if high else v["Low"]) == need, (scheme, v)


def test_calibrate_prints_kdumptool_lines() -> None:
    proc = cli("calibrate", "--initrd", "/nonexistent/initrd")
    assert proc.returncode == 0, proc.stderr
    keys = [line.split(":")[0] for line in proc.stdout.splitlines()]
    assert keys == ["Total", "Low", "High", "MinLow", "MaxLow", "MinHigh", "MaxHigh"]
    values = {k: int(v) for k, v in (line.split(": ") for line in proc.stdout.splitlines())}
    low, high = calibrate.ram_ranges()
    assert values["Total"] == low // 2**20 + high // 2**20
    assert values["Low"] >= 72 and values["MinLow"] <= values["Low"]


def test_ram_ranges_reads_iomem(tmp_path: Path) -> None:
    iomem = tmp_path / "iomem"
    iomem.write_text("00001000-0009fbff : System RAM\n0009fc00-000fffff : Reserved\n"
                     "00100000-bfffffff : System RAM\n  01000000-02209987 : Kernel code\n"
                     "100000000-63fffffff : System RAM\n")
    low, high = calibrate.ram_ranges(str(iomem))
    assert low == (0x9fc00 - 0x1000) + (0xc0000000 - 0x100000)
    assert high == 0x640000000 - 0x100000000


def test_append_from_the_file_keeps_its_quoted_value() -> None:
    cfg = parse_text("KDUMP_COMMANDLINE_APPEND='numa=off dyndbg=\"file x.c +p\"'\n")
    line = kexec.capture_cmdline(cfg, "console=ttyS0")
    assert line.endswith('panic=1 numa=off dyndbg="file x.c +p"')
