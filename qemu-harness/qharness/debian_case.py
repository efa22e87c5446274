"""The real-system proof: a Debian 12 guest that arms itself and saves its own crash.

The harness only prepares and watches.  It copies the cached image
(:mod:`qharness.debian`), writes ``/etc/sysconfig/kdump`` into the copy (an
sftp target: the host's sshd through ``guestfwd``, its host key pinned in
KDUMP_HOST_KEY, an identity in /root/.ssh) and runs the image's own
``kdump-saver enable --root /`` in it, as an image builder would.  Then it
boots the image under QEMU (TCG, no ``-no-reboot``: the capture kernel's
reboot must come back) and types on the serial console, where the image logs
root in:

1. wait for the boot to finish; ``kdump-saver.service`` has built the
   capture initrd inside the guest, for the guest's kernel, with the guest's
   drivers, and loaded it; ``kdump-saver status`` must exit 0 (armed);
2. write a marker to the kernel log and run ``kdump-saver test --yes``;
3. the capture kernel saves over sftp to the host and reboots; back in
   multi-user, ``kdump-saver status`` must exit 0 again, find the initrd
   current (no rebuild) and name the dump as the last one;
4. on the host: the dump directory is checked as in every case
   (:func:`qharness.verify.check_saved`: README, modes, dmesg, ``crash``).

``debian-systemd`` builds the initrd with ``--systemd`` (a drop-in on the
service's ExecStart, as an administrator would add) and sets
KDUMP_CONTINUE_ON_ERROR=false.  After the same cycle it crashes once more
with the target directory replaced by a file: the save fails, and the
capture kernel must leave a shell on the console.  The harness proves the
shell reads the console (an ``echo``), types ``exit``, and sees the capture
kernel reboot.
"""
from __future__ import annotations

import logging
import re
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from qharness import debian, servers, verify
from qharness.console import Console, ConsoleTimeout, Seen
from qharness.guest import GUEST_SERVER, QEMU
from qharness.kernel import GuestKernel, discover

log = logging.getLogger(__name__)

SAVED_LINE = r"dump saved: "
LINUX_VERSION = r"Linux version \d"
SHELL_LINE = "starting a shell on the console"
PROMPT = rf"root@{debian.HOSTNAME}:\S*# ?$"
IDENTITY = "/root/.ssh/id_ed25519"
BOOT_TIMEOUT = 900.0          # boot, kdump-saver.service (dracut under TCG), status
CAPTURE_TIMEOUT = 600.0       # panic to the next multi-user prompt
SUBDIR = "crash"


@dataclass(frozen=True)
class DebianCase:
    """One real-system scenario (see the module docstring)."""

    name: str
    description: str
    systemd_initrd: bool = False
    shell_on_error: bool = False
    settings: Tuple[Tuple[str, str], ...] = (("KDUMP_DUMPFORMAT", "lzo"),)
    memory_mb: int = 1024
    cpus: int = 2
    crashkernel: str = "256M"


CASES: Tuple[DebianCase, ...] = (
    DebianCase("debian", "Debian 12 + systemd: kdump-saver.service builds the (shell-init) capture initrd "
               "in the guest and loads it; kdump-saver test; sftp; reboot; armed again"),
    DebianCase("debian-systemd", "the same with a systemd capture initrd (start --systemd) and "
               "KDUMP_CONTINUE_ON_ERROR=false; then a crash whose save fails leaves a shell on the console, "
               "exit reboots", systemd_initrd=True, shell_on_error=True),
)
BY_NAME: Dict[str, DebianCase] = {c.name: c for c in CASES}


@dataclass
class Status:
    """One ``kdump-saver status`` in the guest, with the service's journal before it."""

    boot: int
    returncode: int
    output: str
    journal: str
    boot_seconds: float          # from the kernel's first line to the status marker
    at: float                    # when the status marker came (seconds since QEMU started)

    def field(self, name: str) -> str:
        m = re.search(rf"^{re.escape(name)}: (.*)$", self.output, re.M)
        return m.group(1).strip() if m else ""


@dataclass
class DebianResult:
    case: DebianCase
    workdir: Path
    console_log: Path
    problems: List[str] = field(default_factory=list)
    statuses: List[Status] = field(default_factory=list)
    dumps: List[Path] = field(default_factory=list)
    figures: Dict[str, float] = field(default_factory=dict)
    verdict: Optional[verify.Verdict] = None
    console_text: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"case {self.case.name}: {'PASS' if self.ok else 'FAIL'} ({self.case.description})",
                 f"  console log {self.console_log}"]
        lines += [f"  {k}: {v:.1f} s" for k, v in self.figures.items()]
        lines += [f"  dump: {d}" for d in self.dumps]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def console_logs(self) -> str:
        return f"===== console log ({self.console_log}) =====\n{self.console_text}"


class CaseFailed(Exception):
    """A check failed in a way that makes the rest of the case meaningless."""


def run_case(case: DebianCase, workdir: Path, kernel: Optional[GuestKernel] = None,
             rebuild_image: bool = False) -> DebianResult:
    """Run ``case`` in ``workdir`` (created, kept afterwards)."""
    kernel = kernel or discover()
    workdir.mkdir(parents=True, exist_ok=True)
    result = DebianResult(case, workdir, workdir / "console.log")
    started = time.monotonic()
    image = debian.ensure_image(kernel, rebuild=rebuild_image)
    if image.tree_seconds is not None:
        result.figures["debootstrap tree built"] = image.tree_seconds
    if image.image_seconds is not None:
        result.figures["wheel installed and disk image made"] = image.image_seconds
    result.figures["image ready (cached or built)"] = time.monotonic() - started
    with servers.SshServer(workdir / "server", "sftp") as server:
        export = server.export / SUBDIR
        export.mkdir(mode=0o700, exist_ok=True)
        disk = _prepare_disk(case, image, server, workdir)
        try:
            _drive(case, image, kernel, disk, server, export, result)
        except (CaseFailed, ConsoleTimeout) as exc:
            result.problems.append(str(exc))
            log.error("sshd log:\n%s", server.log_text())
        finally:
            restore(export)
        result.dumps = verify.dump_dirs(export)
    if not result.problems:
        _check_dump(case, kernel, result)
    result.figures["whole case"] = time.monotonic() - started
    result.console_text = result.console_log.read_text(errors="replace") if result.console_log.exists() else ""
    return result


def _prepare_disk(case: DebianCase, image: debian.Image, server: servers.SshServer, workdir: Path) -> Path:
    """The case's copy of the image: configuration, identity, ``kdump-saver enable``."""
    disk = debian.copy_disk(image, workdir / "disk.raw")
    settings = {"KDUMP_SAVEDIR": server.url(SUBDIR), "KDUMP_HOST_KEY": server.host_key,
                "KDUMP_SSH_IDENTITY": IDENTITY}
    if case.shell_on_error:
        settings["KDUMP_CONTINUE_ON_ERROR"] = "false"
    settings.update(dict(case.settings))
    config = "# written by qemu-harness (qharness/debian_case.py)\n" + \
        "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())
    with debian.mounted(disk, workdir / "mnt") as root:
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        debian.write_files(root, {
            "/etc/sysconfig/kdump": debian.FileSpec(config.encode(), 0o600),
            IDENTITY: debian.FileSpec(server.identity.read_bytes(), 0o600),
            IDENTITY + ".pub": debian.FileSpec(Path(f"{server.identity}.pub").read_bytes(), 0o644),
        })
        with debian.chroot_mounts(root):
            out = debian.in_chroot(root, debian.COMMAND, "enable", "--root", "/", what="kdump-saver enable")
        log.info("kdump-saver enable in the image:\n%s", out.strip())
        if case.systemd_initrd:
            _systemd_initrd_dropin(root)
    return disk


def _systemd_initrd_dropin(root: Path) -> None:
    """What an administrator adds for a systemd capture initrd: ``start --systemd``."""
    unit = (root / "etc/systemd/system/kdump-saver.service").read_text()
    lines = ["[Service]"]
    for key in ("ExecStart", "ExecReload"):
        m = re.search(rf"^{key}=(.*\bstart)\s*$", unit, re.M)
        if not m:
            raise CaseFailed(f"kdump-saver.service has no '{key}=... start' line to extend:\n{unit}")
        lines += [f"{key}=", f"{key}={m.group(1)} --systemd"]
    dropin = root / "etc/systemd/system/kdump-saver.service.d/systemd-initrd.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("# a systemd capture initrd (added by qemu-harness, as an administrator would)\n"
                      + "\n".join(lines) + "\n")


def qemu_command(case: DebianCase, image: debian.Image, disk: Path, forwards: Dict[int, int]) -> List[str]:
    nic = "user,model=virtio-net-pci,restrict=on"
    for guest_port, host_port in sorted(forwards.items()):
        nic += f",guestfwd=tcp:{GUEST_SERVER}:{guest_port}-cmd:/bin/busybox nc 127.0.0.1 {host_port}"
    return [QEMU, "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", str(case.memory_mb),
            "-smp", str(case.cpus), "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", str(image.vmlinuz), "-initrd", str(image.initrd),
            "-append", f"{image.root_argument} ro console=ttyS0 crashkernel={case.crashkernel}",
            "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe", "-nic", nic]


def _drive(case: DebianCase, image: debian.Image, kernel: GuestKernel, disk: Path,
           server: servers.SshServer, export: Path, result: DebianResult) -> None:
    with Console(qemu_command(case, image, disk, server.forwards), result.console_log) as con:
        first = _armed(con, 1, 0, result, last_dump=False)
        if "building the capture initrd" not in first.journal:
            result.problems.append("kdump-saver.service did not build the capture initrd at the first boot")
        marker = f"qharness-marker-{case.name}-{secrets.token_hex(6)}"
        (result.workdir / "marker").write_text(marker + "\n")
        t0 = _crash(con, marker)
        saved = con.expect(SAVED_LINE, CAPTURE_TIMEOUT, since=t0.index)
        result.figures["panic to saved dump"] = saved.at - t0.at
        _check_flavour(case, con.text(t0.index, saved.index), result)
        after = _armed(con, 2, saved.index, result, last_dump=True)
        result.figures["crash cycle (panic to armed again in multi-user)"] = after.at - t0.at
        _check_rearmed(after, result)
        if case.shell_on_error:
            _failing_crash(con, export, result)
            return
        con.send("systemctl poweroff\n")
        if not con.wait_exit(120):
            log.warning("the guest did not power off within 120 s; stopping QEMU")


def _armed(con: Console, boot: int, since: int, result: DebianResult, last_dump: bool) -> Status:
    """Wait for the multi-user login, then the end of the boot; show the
    service's journal and ``kdump-saver status`` (``last_dump``: looking for
    the last dump on the target); it must exit 0."""
    kernel_line = con.expect(LINUX_VERSION, BOOT_TIMEOUT, since=since)
    con.expect(PROMPT, BOOT_TIMEOUT, since=kernel_line.index, partial=True)
    begin = f"QH-BEGIN-{boot}"
    mark = con.mark()
    con.send(f"systemctl is-system-running --wait; echo QH-BEGIN-$(({boot}+0)); "
             "journalctl -b -o short-monotonic -u kdump-saver.service --no-pager | tail -n 40; "
             "echo QH-STATUS-BEGIN; "
             f"kdump-saver status --target-timeout {90 if last_dump else 0}; echo QH-STATUS-$((6*7))-{boot}=$?\n")
    end = con.expect(rf"^QH-STATUS-42-{boot}=(\d+)", BOOT_TIMEOUT, since=mark)
    start = con.expect(rf"^{begin}$", 1, since=mark)
    block = con.text(start.index + 1, end.index)
    journal, _, output = block.partition("QH-STATUS-BEGIN")
    status = Status(boot, int(end.match.group(1)), output.strip("\n"), journal,
                    end.at - kernel_line.at, end.at)
    result.statuses.append(status)
    result.figures[f"boot {boot}: kernel start to 'kdump-saver status' armed"] = status.boot_seconds
    service = _journal_span(journal)
    if service is not None:
        result.figures[f"boot {boot}: kdump-saver.service start (journal)"] = service
    log.info("boot %d: kdump-saver status exit %d\n%s", boot, status.returncode, status.output)
    if status.returncode != 0:
        raise CaseFailed(f"boot {boot}: kdump-saver status exited {status.returncode}:\n{status.output}\n"
                         f"kdump-saver.service's journal:\n{journal}")
    if status.field("Armed") != "yes":
        raise CaseFailed(f"boot {boot}: status says 'Armed: {status.field('Armed')}'")
    return status


def _journal_span(journal: str) -> Optional[float]:
    """Seconds from the first to the last line of a ``short-monotonic`` journal."""
    stamps = [float(m) for m in re.findall(r"^\[\s*(\d+\.\d+)\]", journal, re.M)]
    return stamps[-1] - stamps[0] if len(stamps) >= 2 else None


def _crash(con: Console, marker: str) -> Seen:
    con.send(f"echo {marker} > /dev/kmsg; kdump-saver test --yes\n")
    return con.expect(re.escape(verify.PANIC), 120, since=con.mark())


def _check_flavour(case: DebianCase, capture_text: str, result: DebianResult) -> None:
    """A systemd capture initrd runs the saver from kdump-saver-capture.service,
    dracut's shell init from its pre-mount hook (no unit)."""
    ran_unit = re.search(r"Starting kdump-saver-captu", capture_text) is not None
    if case.systemd_initrd and not ran_unit:
        result.problems.append("the capture kernel did not run kdump-saver-capture.service: not a systemd initrd")
    if not case.systemd_initrd and ran_unit:
        result.problems.append("the capture kernel ran kdump-saver-capture.service: a systemd initrd, "
                               "not the default one")


def _failing_crash(con: Console, export: Path, result: DebianResult) -> None:
    """KDUMP_CONTINUE_ON_ERROR=false: the target directory is a file, the
    save fails, and the shell must stay on the console until ``exit``, after
    which the capture kernel reboots."""
    kept = export.with_name(export.name + ".kept")
    export.rename(kept)
    export.write_text("not a directory: the save must fail\n")
    try:
        t0 = _crash(con, f"qharness-failing-{secrets.token_hex(4)}")
        capture = con.expect(LINUX_VERSION, CAPTURE_TIMEOUT, since=t0.index)
        shell = con.expect(re.escape(SHELL_LINE), CAPTURE_TIMEOUT, since=capture.index)
        if "dump saved" in con.text(t0.index, shell.index):
            raise CaseFailed("the save through a target that is a file claims success")
        time.sleep(5)
        mark = con.mark()
        con.send("echo QH-SHELL-$((6*7))\n")
        try:
            echoed = con.expect(r"^QH-SHELL-42$", 60, since=mark)
        except ConsoleTimeout:
            raise CaseFailed("KDUMP_CONTINUE_ON_ERROR=false: no shell answers on the console after "
                             f"'{SHELL_LINE}'") from None
        if re.search(LINUX_VERSION, con.text(shell.index, echoed.index)):
            raise CaseFailed("KDUMP_CONTINUE_ON_ERROR=false: the machine rebooted instead of keeping the shell")
        result.figures["KDUMP_CONTINUE_ON_ERROR=false: panic to the shell answering"] = echoed.at - t0.at
        mark = con.mark()
        con.send("exit\n")
        try:
            con.expect(LINUX_VERSION, 120, since=mark)
        except ConsoleTimeout:
            raise CaseFailed("the capture kernel did not reboot after the shell's exit") from None
    finally:
        restore(export)


def restore(export: Path) -> None:
    """Undo :func:`_failing_crash`'s replacement of the target directory."""
    kept = export.with_name(export.name + ".kept")
    if kept.is_dir():
        if export.is_file():
            export.unlink()
        kept.rename(export)


def _check_rearmed(status: Status, result: DebianResult) -> None:
    if "building the capture initrd" in status.journal:
        result.problems.append(f"boot {status.boot}: kdump-saver.service rebuilt the capture initrd although "
                               "nothing changed")
    if "is current" not in status.journal:
        result.problems.append(f"boot {status.boot}: kdump-saver.service did not report the initrd current")
    last = status.field("Last dump")
    if f"{debian.HOSTNAME}-" not in last:
        result.problems.append(f"boot {status.boot}: 'kdump-saver status' does not name the dump "
                               f"({debian.HOSTNAME}-...) as the last one: 'Last dump: {last}'")


def _check_dump(case: DebianCase, kernel: GuestKernel, result: DebianResult) -> None:
    if len(result.dumps) != 1:
        result.problems.append(f"expected one dump directory, found {[d.name for d in result.dumps]}")
        return
    marker = (result.workdir / "marker").read_text().strip()
    started = time.monotonic()
    result.verdict = verify.check_saved(result.dumps[0], kernel.debug_vmlinux, marker, kernel.version)
    result.figures["verification (makedumpfile, crash)"] = time.monotonic() - started
    result.problems += result.verdict.problems
    if not result.dumps[0].name.startswith(f"{debian.HOSTNAME}-"):
        result.problems.append(f"{result.dumps[0].name}: the dump directory does not start with the guest's "
                               "host name")
