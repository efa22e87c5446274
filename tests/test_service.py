"""The production service: start/stop under the lock, the initrd's freshness,
enable/disable of the unit and udev rule, the bootloader advice, status.

Real initrds are built with dracut (twice in this module: two concurrent
starts share one build, and a start after a configuration edit rebuilds);
every other freshness trigger is checked with ``kdump-saver status`` on the
built initrd, whose stamp is read back from the image.  No capture kernel is
loaded: ``start --dry-run`` does everything but the ``kexec -p`` call.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from capture.config import options as configuration
from capture.host import bootloader, initrd, install, kexec, lastdump, service
from conftest import REPO, require, require_program

PY = sys.executable


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "capture.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "capture.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --- enable / disable ------------------------------------------------------------------------------

def snapshot(root: Path) -> Dict[str, Tuple[str, int, str]]:
    """Every entry under ``root``: kind, mode and content (or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777, "")
        else:
            found[rel] = ("file", st.st_mode & 0o7777, path.read_bytes().hex())
    return found


@pytest.fixture
def debian_tree(tmp_path: Path) -> Path:
    """A tree laid out like an installed Debian system: systemd's own units
    (so systemd-analyze can verify ours in it), another enabled unit, a udev
    rule, GRUB's defaults, and the kdump-saver command at /usr/bin."""
    require_program("systemctl")
    require(Path("/usr/lib/systemd/system/multi-user.target").exists(), "systemd's units are not installed")
    root = tmp_path / "tree"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/udev/rules.d/99-local.rules").write_text('SUBSYSTEM=="net", ACTION=="add", GOTO="end"\n')
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/kdump-saver").write_text("#!/bin/sh\nexit 0\n")
    (root / "usr/bin/kdump-saver").chmod(0o755)
    return root


def write_conf(root: Path, text: str) -> None:
    conf = root / "etc/sysconfig/kdump"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([require_program("systemd-analyze"), "verify", f"--root={root}", install.UNIT],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("savedir, remote", [("sftp://dumps@192.0.2.7/srv/crash", True), ("/var/crash", False)])
def test_enable_then_disable_in_a_tree_verifies_and_leaves_it_as_before(debian_tree: Path, savedir: str,
                                                                        remote: bool) -> None:
    write_conf(debian_tree, f"KDUMP_SAVEDIR={savedir}\nKDUMP_UPDATE_BOOTLOADER=true\nKDUMP_CRASHKERNEL=256M\n")
    before = snapshot(debian_tree)
    proc = cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver")
    assert proc.returncode == 0, proc.stderr
    unit = (debian_tree / "etc/systemd/system/kdump-saver.service").read_text()
    assert "ExecStart=/usr/bin/kdump-saver start\n" in unit
    assert "ExecStop=/usr/bin/kdump-saver stop\n" in unit
    assert "ExecReload=/usr/bin/kdump-saver start\n" in unit
    assert "After=local-fs.target" in unit
    wanted = debian_tree / "etc/systemd/system/multi-user.target.wants/kdump-saver.service"
    assert os.readlink(wanted) == "/etc/systemd/system/kdump-saver.service"
    dropin = debian_tree / "etc/systemd/system/kdump-saver.service.d/network-online.conf"
    assert dropin.exists() == remote
    if remote:
        assert "After=network-online.target" in dropin.read_text()
    rule = (debian_tree / "etc/udev/rules.d/70-kdump-saver.rules").read_text()
    assert 'SUBSYSTEM!="cpu|memory"' in rule and 'ACTION!="add|remove"' in rule
    assert "try-reload-or-restart kdump-saver.service" in rule
    # KDUMP_UPDATE_BOOTLOADER in a tree: the drop-in is written, update-grub is not run
    grub = (debian_tree / "etc/default/grub.d/kdump-saver.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=256M"' in grub
    checked = verify(debian_tree)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr

    proc = cli("disable", "--root", str(debian_tree))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(debian_tree) == before


def udev_runs(rules_dir: Path, action: str, device: str) -> List[str]:
    """What udev would RUN for ``action`` on ``device`` with only the rules of
    ``rules_dir`` (udevadm test in a private mount namespace; nothing runs)."""
    script = (f"mount --bind {rules_dir} /etc/udev/rules.d && mount -t tmpfs tmpfs /usr/lib/udev/rules.d && "
              f"mount -t tmpfs tmpfs /run/udev 2>/dev/null; udevadm test --action={action} {device}")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert "70-kdump-saver.rules" in proc.stdout + proc.stderr, proc.stderr
    return [line.split("'")[1] for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("run: '")]


def test_udev_rule_reloads_the_service_on_cpu_and_memory_hotplug_only(debian_tree: Path) -> None:
    require_program("udevadm")
    require_program("unshare")
    require(os.geteuid() == 0, "udevadm test in a mount namespace needs root")
    memory = sorted(Path("/sys/devices/system/memory").glob("memory[0-9]*"))
    cpus = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*"))
    require(bool(memory and cpus), "no memory block or CPU devices in sysfs")
    require(not Path("/sys/devices/system/memory/crash_hotplug").exists(),
            "this kernel updates the crash headers itself (crash_hotplug): the rule does nothing here")
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\n")
    assert cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver").returncode == 0
    rules = debian_tree / "etc/udev/rules.d"
    (rules / "99-local.rules").unlink()
    reload = f"{install.systemctl_path()} --no-block try-reload-or-restart kdump-saver.service"
    for action in ("add", "remove"):
        assert udev_runs(rules, action, str(memory[-1])) == [reload]
        assert udev_runs(rules, action, str(cpus[-1])) == [reload]
    assert udev_runs(rules, "change", str(memory[-1])) == []
    assert udev_runs(rules, "online", str(cpus[-1])) == []
    assert udev_runs(rules, "add", "/sys/class/net/lo") == []


def test_a_target_made_remote_after_enable_is_noticed(debian_tree: Path) -> None:
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\n")
    assert cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver").returncode == 0
    remote = configuration.Config(savedir="sftp://dumps@192.0.2.7/srv")
    assert install.network_ordering_missing(remote, str(debian_tree))
    assert not install.network_ordering_missing(configuration.Config(), str(debian_tree))
    write_conf(debian_tree, "KDUMP_SAVEDIR=sftp://dumps@192.0.2.7/srv\n")
    assert cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver").returncode == 0
    assert not install.network_ordering_missing(remote, str(debian_tree))
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\n")   # and back: the drop-in goes
    assert cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver").returncode == 0
    assert not (debian_tree / "etc/systemd/system/kdump-saver.service.d").exists()


def test_verify_catches_a_broken_unit(debian_tree: Path) -> None:
    """The verification above can fail: a command that is not in the tree."""
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\n")
    assert cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/no-such-kdump-saver").returncode == 0
    checked = verify(debian_tree)
    assert checked.returncode != 0 and "no-such-kdump-saver" in checked.stderr


def test_enable_in_a_tree_without_crashkernel_prints_the_grub_change(debian_tree: Path) -> None:
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\n")
    proc = cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver")
    assert proc.returncode == 0, proc.stderr
    assert "No crashkernel= on the boot loader configuration" in proc.stdout
    assert "Create /etc/default/grub.d/kdump-saver.cfg with:" in proc.stdout
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=' in proc.stdout
    assert "update-grub" in proc.stdout
    assert not (debian_tree / "etc/default/grub.d").exists()   # not applied without KDUMP_UPDATE_BOOTLOADER


def test_enable_in_a_tree_whose_grub_reserves_memory_says_nothing_of_it(debian_tree: Path) -> None:
    write_conf(debian_tree, "KDUMP_SAVEDIR=/var/crash\nKDUMP_UPDATE_BOOTLOADER=true\n")
    (debian_tree / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet crashkernel=384M"\n')
    proc = cli("enable", "--root", str(debian_tree), "--command", "/usr/bin/kdump-saver")
    assert proc.returncode == 0, proc.stderr
    assert "crashkernel" not in proc.stdout
    assert not (debian_tree / "etc/default/grub.d").exists()


def test_crashkernel_arguments_from_calibrate_or_the_option() -> None:
    assert bootloader.crashkernel_arguments(configuration.Config(crashkernel="256M,high 72M,low"), "/none") \
        == "crashkernel=256M,high crashkernel=72M,low"
    auto = bootloader.crashkernel_arguments(configuration.Config(), "/none")
    from capture.host import crashkernel
    cal = crashkernel.calibrate_for(configuration.Config(), "/none")
    assert auto == (f"crashkernel={cal.high}M,high crashkernel={cal.low}M,low" if cal.high
                    else f"crashkernel={cal.low}M")
    assert bootloader.has_crashkernel("ro quiet crashkernel=256M") and not bootloader.has_crashkernel("ro quiet")


def test_status_prints_the_bootloader_change_when_this_kernel_reserves_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "kdump"
    conf.write_text("KDUMP_SAVEDIR=/var/crash\nKDUMP_CRASHKERNEL=320M\n")
    proc = cli("status", "--config", str(conf), "--initrd", str(tmp_path / "none"), "--target-timeout", "0")
    assert proc.returncode == 3
    assert "Armed: no" in proc.stdout
    if bootloader.has_crashkernel(kexec.read_cmdline()):
        assert "No crashkernel=" not in proc.stdout
    else:
        assert "No crashkernel= on the running kernel's command line" in proc.stdout
        assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=320M"' in proc.stdout


# --- the lock ---------------------------------------------------------------------------------------

def test_stop_waits_for_the_lock_and_then_runs(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with service.locked(str(lock)):
        waiting = spawn("stop", "--dry-run", "--lock-file", str(lock))
        time.sleep(1.5)
        assert waiting.poll() is None, "stop ran while the lock was held"
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert f"waiting for {lock} (held by process {os.getpid()})" in err
    assert out.strip() == "kexec -p -u"


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", f"echo $$ > {lock}.pid; sleep 30"])
    try:
        for _ in range(100):
            if Path(f"{lock}.pid").exists():
                break
            time.sleep(0.05)
        with pytest.raises(service.LockTimeout, match=r"is still held by .* after 1 s"):
            with service.locked(str(lock), timeout=1):
                pass
    finally:
        holder.kill()
        holder.wait()


# --- freshness and start, with real initrds --------------------------------------------------------

@pytest.fixture(scope="module")
def kernel_version() -> str:
    mods = Path("/lib/modules")
    versions = sorted(p.name for p in mods.iterdir() if (p / "modules.dep").exists()) if mods.is_dir() else []
    require(bool(versions), "no kernel modules under /lib/modules (install linux-image-cloud-amd64)")
    require_program("dracut")
    require_program("lsinitrd")
    require_program("ssh-keygen")
    require(os.geteuid() == 0, "building an initrd needs root")
    return versions[-1]


class Setup:
    """An sftp configuration (a closed port on 127.0.0.1: nothing is
    contacted but to see it refuse), its host key and identity, and the
    initrd built for it by two concurrent starts."""

    def __init__(self, tmp: Path, kernel: str) -> None:
        self.tmp = tmp
        self.kernel = kernel
        self.identity = tmp / "id_ed25519"
        self.known_hosts = tmp / "known_hosts"
        self.conf = tmp / "kdump"
        self.image = tmp / "initrd-kdump"
        self.lock = tmp / "lock"
        self.new_identity()
        self.new_host_key()
        self.conf.write_text(f"KDUMP_SAVEDIR=sftp://root@127.0.0.1:1/dumps\nKDUMP_SSH_IDENTITY={self.identity}\n"
                             f"KDUMP_KNOWN_HOSTS={self.known_hosts}\nKDUMP_KERNELVER={kernel}\n"
                             # 127.0.0.1 is reached without a network in the capture kernel
                             'KDUMP_NETCONFIG=""\n'
                             # status's crashkernel= advice without measuring the initrd each time
                             "KDUMP_CRASHKERNEL=256M\n")
        self.starts: List[subprocess.CompletedProcess] = []

    def new_identity(self) -> None:
        for f in (self.identity, Path(f"{self.identity}.pub")):
            f.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.identity)], check=True)

    def new_host_key(self) -> None:
        key = self.tmp / "hostkey"
        for f in (key, Path(f"{key}.pub")):
            f.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kind, blob = Path(f"{key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:1 {kind} {blob}\n")

    def start_args(self) -> List[str]:
        return ["start", "--dry-run", "--config", str(self.conf), "--initrd", str(self.image),
                "--lock-file", str(self.lock)]

    def status(self, *extra: str) -> subprocess.CompletedProcess:
        return cli("status", "--config", str(self.conf), "--initrd", str(self.image), *extra)

    def initrd_line(self, proc: subprocess.CompletedProcess) -> str:
        lines = [line for line in proc.stdout.splitlines() if line.startswith("Initrd: ")]
        assert len(lines) == 1, proc.stdout + proc.stderr
        return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, kernel_version: str) -> Setup:
    s = Setup(tmp_path_factory.mktemp("service"), kernel_version)
    first = spawn(*s.start_args())
    time.sleep(0.3)
    second = spawn(*s.start_args())
    for p in (first, second):
        out, err = p.communicate(timeout=900)
        s.starts.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return s


def test_two_concurrent_starts_build_once_and_both_load(setup: Setup) -> None:
    for proc in setup.starts:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"kexec -p /boot/vmlinuz-{setup.kernel} --initrd={setup.image} ")
    builds = [p for p in setup.starts if f"building the capture initrd {setup.image} (missing)" in p.stderr]
    assert len(builds) == 1, [p.stderr for p in setup.starts]
    waited = [p for p in setup.starts if p is not builds[0]][0]
    assert f"waiting for {setup.lock}" in waited.stderr
    assert f"the capture initrd {setup.image} is current" in waited.stderr


def test_the_stamp_records_every_input(setup: Setup) -> None:
    stamp = initrd.read_stamp(str(setup.image))
    assert stamp is not None
    cfg = configuration.load(str(setup.conf))
    assert {k: stamp[k] for k in initrd.INPUT_KEYS} == initrd.current_inputs(cfg, setup.kernel)
    assert stamp["kernel"] == setup.kernel
    assert stamp["files_sha256"] == {str(setup.identity): initrd.file_sha256(str(setup.identity))}
    assert stamp["known_hosts_sha256"]
    assert stamp["kernel_image_sha256"] == initrd.file_sha256(f"/boot/vmlinuz-{setup.kernel}")
    assert stamp["built_in_chroot"] is False
    assert stamp["init"] == "shell" and stamp["add_drivers"] == []


def test_status_calls_the_fresh_initrd_current_and_the_target_unreachable(setup: Setup) -> None:
    proc = setup.status("--target-timeout", "5")
    assert setup.initrd_line(proc).startswith(f"Initrd: {setup.image}: current (built ")
    assert "Last dump: sftp://root@127.0.0.1:1/dumps: not reachable (" in proc.stdout
    assert "connection refused" in proc.stdout


def test_stale_after_a_configuration_edit(setup: Setup, tmp_path: Path) -> None:
    edited = tmp_path / "kdump"
    edited.write_text(setup.conf.read_text() + "KDUMP_DUMPLEVEL=1\n")
    proc = cli("status", "--config", str(edited), "--initrd", str(setup.image), "--target-timeout", "0")
    assert ": stale: the configuration changed (built " in setup.initrd_line(proc)


def test_stale_for_a_new_kernel(setup: Setup) -> None:
    proc = setup.status("--kernel", "6.99.0-1-cloud-amd64", "--target-timeout", "0")
    line = setup.initrd_line(proc)
    assert f"stale: kernel {setup.kernel} -> 6.99.0-1-cloud-amd64; " in line
    assert "kernel image /boot/vmlinuz-6.99.0-1-cloud-amd64 is missing" in line


def test_stale_for_a_new_host_key_and_a_new_identity(setup: Setup) -> None:
    known, identity = setup.known_hosts.read_text(), setup.identity.read_bytes()
    try:
        setup.new_host_key()
        line = setup.initrd_line(setup.status("--target-timeout", "0"))
        assert "stale: the target's known host keys changed (" in line
        setup.new_identity()
        line = setup.initrd_line(setup.status("--target-timeout", "0"))
        assert f"stale: the target's known host keys changed; {setup.identity} changed (" in line
    finally:
        setup.known_hosts.write_text(known)
        setup.identity.write_bytes(identity)
    assert ": current (" in setup.initrd_line(setup.status("--target-timeout", "0"))


def test_stale_for_a_new_hostname(setup: Setup) -> None:
    require_program("unshare")
    old = initrd.system_hostname()
    proc = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh",
                           "renamed-host", PY, "-m", "capture.cli", "status", "--config", str(setup.conf),
                           "--initrd", str(setup.image), "--target-timeout", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert f"stale: hostname {old} -> renamed-host (" in setup.initrd_line(proc), proc.stderr


def test_judge_names_drivers_and_never_trusts_a_chroot_build(setup: Setup) -> None:
    stamp = initrd.read_stamp(str(setup.image))
    assert stamp is not None
    current = {k: stamp[k] for k in initrd.INPUT_KEYS}
    assert initrd.judge("x", stamp, current).current
    fewer = dict(stamp, drivers=stamp["drivers"] + ["e1000"])
    assert initrd.judge("x", fewer, current).reasons == ("drivers -e1000",)
    chroot = initrd.judge("x", dict(stamp, built_in_chroot=True), current)
    assert chroot.state == "stale" and chroot.reasons == (initrd.CHROOT_REASON,)
    old = {k: v for k, v in stamp.items() if k not in ("hostname", "drivers")}
    assert initrd.judge("x", old, current).reasons == (
        f"hostname: not recorded (built by kdump-saver {stamp['version']})",
        f"drivers: not recorded (built by kdump-saver {stamp['version']})")


def test_load_warns_which_input_changed(setup: Setup, tmp_path: Path) -> None:
    edited = tmp_path / "kdump"
    edited.write_text(setup.conf.read_text() + "KDUMP_CPUS=2\n")
    proc = cli("load", "--config", str(edited), "--initrd", str(setup.image))
    assert f"{setup.image} is stale: the configuration changed; 'kdump-saver start' rebuilds" in proc.stderr


def test_start_rebuilds_after_a_configuration_edit(setup: Setup) -> None:
    original = setup.conf.read_text()
    try:
        setup.conf.write_text(original + "KDUMP_DUMPFORMAT=lzo\n")
        proc = cli(*setup.start_args())
        assert proc.returncode == 0, proc.stderr
        assert f"building the capture initrd {setup.image} (the configuration changed)" in proc.stderr
        assert ": current (" in setup.initrd_line(setup.status("--target-timeout", "0"))
        again = cli(*setup.start_args())
        assert "is current" in again.stderr and "building" not in again.stderr
    finally:
        setup.conf.write_text(original)


# --- chroot, last dump --------------------------------------------------------------------------------

CHROOT_BUILD = """set -e
mount -t tmpfs tmpfs "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/tree"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/tree"
echo image-host.example.org > "$WORK/tree/etc/hostname"
for d in proc sys dev; do mount --rbind "/$d" "$WORK/tree/$d"; done
mount --bind "$OUT" "$WORK/tree$OUT"
cd "$REPO"
exec chroot "$WORK/tree" "$@"
"""


def test_an_initrd_built_in_a_chroot_describes_the_image_and_is_never_current(
        setup: Setup, tmp_path: Path) -> None:
    """A cloud image prepared in a chroot (here: an overlay of this system
    with its own /etc/hostname, in a private mount namespace) gets the tree's
    kernel and hostname, and the booted machine rebuilds it."""
    require_program("unshare")
    require(Path("/proc/filesystems").read_text().find("overlay") >= 0, "no overlay file system")
    conf = tmp_path / "kdump"
    conf.write_text("\n".join(line for line in setup.conf.read_text().splitlines()
                              if not line.startswith("KDUMP_KERNELVER")) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, WORK=str(work), OUT=str(out), REPO=str(REPO))
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", CHROOT_BUILD, "sh", "sh", "-c",
                           f'cd "$REPO" && exec {PY} -m capture.cli build-initrd --config {conf} '
                           f'--output {out}/initrd'],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    newest = initrd.installed_kernels()[-1]
    assert f"in a chroot: using the newest kernel of the tree, {newest}" in proc.stderr
    stamp = initrd.read_stamp(str(out / "initrd"))
    assert stamp is not None
    assert stamp["built_in_chroot"] is True
    assert stamp["hostname"] == "image-host"
    assert stamp["kernel"] == newest
    status = cli("status", "--config", str(conf), "--kernel", newest, "--initrd", str(out / "initrd"),
                 "--target-timeout", "0")
    line = setup.initrd_line(status)
    assert f"stale: {initrd.CHROOT_REASON}; hostname image-host -> {initrd.system_hostname()} (" in line


def test_in_chroot_compares_our_root_with_inits(tmp_path: Path) -> None:
    assert initrd.in_chroot("/proc/self/root") is False
    assert initrd.in_chroot(str(tmp_path)) is True
    assert initrd.in_chroot(str(tmp_path / "absent")) is True


def crashed_host(dump: Path) -> str:
    """The host a saved dump belongs to (its marker): the crashed kernel's nodename."""
    return json.loads((dump / ".kdump-saver").read_text())["host"]


def test_last_dump_is_the_newest_of_this_host(file_target_result: Path) -> None:
    target = file_target_result.parent
    host = crashed_host(file_target_result)
    found = lastdump.last_dump(configuration.Config(savedir=str(target), hostname=host))
    assert found.problem == "" and found.dump is not None
    assert found.dump.directory == file_target_result.name
    assert found.dump.status == "saved successfully"
    other = lastdump.last_dump(configuration.Config(savedir=str(target), hostname="another-host"))
    assert other.dump is None and other.describe() == f"none of this host on {target}"


def test_status_reports_the_last_dump(file_target_result: Path, tmp_path: Path) -> None:
    conf = tmp_path / "kdump"
    conf.write_text(f"KDUMP_SAVEDIR={file_target_result.parent}\n"
                    f"KDUMP_HOSTNAME={crashed_host(file_target_result)}\n")
    proc = cli("status", "--config", str(conf), "--initrd", str(tmp_path / "none"))
    assert f"Last dump: {file_target_result}: saved successfully (crash time " in proc.stdout


def test_start_without_reservation_fails_before_building(tmp_path: Path) -> None:
    require(kexec.reserved_bytes() == 0, "this machine reserves memory for a capture kernel")
    conf = tmp_path / "kdump"
    conf.write_text("KDUMP_SAVEDIR=/var/crash\n")
    proc = cli("start", "--config", str(conf), "--initrd", str(tmp_path / "initrd"),
               "--lock-file", str(tmp_path / "lock"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no memory is reserved for a capture kernel" in proc.stderr
    assert not (tmp_path / "initrd").exists()

