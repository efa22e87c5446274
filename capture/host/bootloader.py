"""The ``crashkernel=`` reservation in the boot loader (GRUB, as Debian has it).

Without ``crashkernel=`` on the kernel command line no memory is reserved
and no capture kernel can be loaded.  :func:`advice` says so and gives the
exact change: a GRUB drop-in, :data:`GRUB_DROPIN`, that appends the
reservation to ``GRUB_CMDLINE_LINUX_DEFAULT`` (Debian's ``update-grub``
reads ``/etc/default/grub`` and then ``/etc/default/grub.d/*.cfg`` in name
order), then ``update-grub`` and a reboot.  With KDUMP_UPDATE_BOOTLOADER=true
``kdump-saver enable`` writes the drop-in itself (:func:`write_dropin`).

The size: KDUMP_CRASHKERNEL when it is set to anything but ``auto`` (SUSE's
form, e.g. ``crashkernel=256M,high crashkernel=72M,low``; the ``crashkernel=``
prefix may be left out), else :func:`capture.host.crashkernel.calibrate_for`
on this machine.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from capture.config.options import Config
from capture.errors import KdumpError
from capture.host import crashkernel
from capture.net.plan import split_cmdline

log = logging.getLogger(__name__)

GRUB_DEFAULT = "/etc/default/grub"
GRUB_DROPIN_DIR = "/etc/default/grub.d"
GRUB_DROPIN = f"{GRUB_DROPIN_DIR}/kdump-saver.cfg"
UPDATE_GRUB = "update-grub"


def has_crashkernel(cmdline: str) -> bool:
    """Whether a kernel command line reserves memory for a capture kernel."""
    return any(arg.split("=", 1)[0] == "crashkernel" for arg in split_cmdline(cmdline))


def crashkernel_arguments(config: Config, initrd_path: str) -> str:
    """The ``crashkernel=`` argument(s) to put on the command line."""
    value = config.crashkernel.strip()
    if value and value.lower() != "auto":
        return " ".join(w if w.startswith("crashkernel=") else f"crashkernel={w}" for w in value.split())
    cal = crashkernel.calibrate_for(config, initrd_path)
    if cal.high:
        return f"crashkernel={cal.high}M,high crashkernel={cal.low}M,low"
    return f"crashkernel={cal.low}M"


@dataclass(frozen=True)
class GrubChange:
    """The GRUB drop-in that reserves the memory."""

    arguments: str
    path: str = GRUB_DROPIN

    def text(self) -> str:
        return ("# Written by kdump-saver (KDUMP_UPDATE_BOOTLOADER): memory for the capture kernel.\n"
                f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {self.arguments}"\n')

    def instructions(self) -> List[str]:
        """What the administrator does, as lines to print."""
        return ([f"  Create {self.path} with:"]
                + [f"    {line}" for line in self.text().splitlines() if not line.startswith("#")]
                + [f"  then run {UPDATE_GRUB} and reboot (with KDUMP_UPDATE_BOOTLOADER=true "
                   "'kdump-saver enable' writes the file and runs update-grub)."])


def grub_files(root: str = "/") -> List[str]:
    """GRUB's default files under ``root``, in the order update-grub reads them."""
    files = [_under(root, GRUB_DEFAULT)] + sorted(glob.glob(_under(root, GRUB_DROPIN_DIR) + "/*.cfg"))
    return [f for f in files if os.path.isfile(f)]


def configured_in_grub(root: str = "/") -> Optional[str]:
    """The GRUB file under ``root`` that already puts ``crashkernel=`` on the
    command line (an uncommented GRUB_CMDLINE_LINUX* line), or None."""
    for path in grub_files(root):
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line.startswith("GRUB_CMDLINE_LINUX") and "crashkernel=" in line:
                return path
    return None


def missing(cmdline: Optional[str], root: str = "/") -> bool:
    """Whether nothing reserves the memory: not ``cmdline`` (the running
    kernel's; None for a tree) and no GRUB file under ``root``."""
    if cmdline is not None and has_crashkernel(cmdline):
        return False
    return configured_in_grub(root) is None


def advice(config: Config, initrd_path: str, cmdline: Optional[str], root: str = "/") -> List[str]:
    """Lines telling the administrator what is missing for the reservation,
    empty when ``cmdline`` (the running kernel's; None for a tree) has it.
    For a tree, and for a machine not rebooted yet, GRUB's files count."""
    if cmdline is not None and has_crashkernel(cmdline):
        return []
    pending = configured_in_grub(root)
    where = "the running kernel's command line" if cmdline is not None else "the boot loader configuration"
    if pending:
        if cmdline is None:
            return []
        return [f"crashkernel= is not on {where}, but {pending} sets it: run {UPDATE_GRUB} "
                "(if not done) and reboot to reserve the memory."]
    change = GrubChange(crashkernel_arguments(config, initrd_path))
    return [f"No crashkernel= on {where}: no memory is reserved for the capture kernel, so a crash "
            "reboots without a dump."] + change.instructions()


def write_dropin(config: Config, initrd_path: str, root: str = "/") -> str:
    """Write :data:`GRUB_DROPIN` under ``root``; return its path."""
    change = GrubChange(crashkernel_arguments(config, initrd_path))
    path = _under(root, change.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(change.text())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    log.info("wrote %s (%s)", path, change.arguments)
    return path


def remove_dropin(root: str = "/") -> Optional[str]:
    """Remove our drop-in under ``root``; return its path if there was one."""
    path = _under(root, GRUB_DROPIN)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    try:
        os.rmdir(os.path.dirname(path))   # only when empty: it held nothing but ours
    except OSError:
        pass
    log.info("removed %s", path)
    return path


def update_grub() -> None:
    """Run update-grub (the production system only, never for a tree)."""
    program = shutil.which(UPDATE_GRUB, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if program is None:
        raise KdumpError(f"{UPDATE_GRUB} is not installed: this system does not boot with Debian's GRUB; "
                         f"add the crashkernel= argument to its boot loader by hand")
    proc = subprocess.run([program], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise KdumpError(f"{UPDATE_GRUB} failed (exit status {proc.returncode}): " + " / ".join(tail))
    log.info("ran %s; reboot to reserve the memory", UPDATE_GRUB)


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))
