"""The production system the harness crashes: a small initramfs.

It carries static busybox, ``kexec`` with its libraries, the guest kernel and
the capture initrd at the paths ``kdump-saver load`` names, plus optional extra
trees (the Python closure that runs ``kdump-saver load`` in the guest).  Its
``/init`` brings up /proc, /sys and /dev, writes a marker to the kernel log,
runs the load commands, checks ``/sys/kernel/kexec_crash_loaded`` and
crashes with ``echo c > /proc/sysrq-trigger``.  When loading fails it says
``qharness: load FAILED`` and powers off, so the host sees it at once.
"""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from qharness.cpio import Archive
from qharness.kernel import GuestKernel

BUSYBOX = Path("/bin/busybox")
LOADED_LINE = "qharness: capture kernel loaded"
LOAD_FAILED_LINE = "qharness: load FAILED"


@dataclass
class ProductionSpec:
    """What goes into the production initramfs."""

    kernel: GuestKernel
    capture_initrd: Path                 # host file of the capture initrd
    capture_initrd_guest_path: str       # where ``kdump-saver load`` expects it in the guest
    load_commands: List[str]             # shell lines that load the capture kernel
    marker: str                          # unique text written to the kernel log before the crash
    hostname: str = "qharness"
    binaries: List[Path] = field(default_factory=lambda: [Path("/usr/sbin/kexec")])
    extra_files: Dict[str, Path] = field(default_factory=dict)   # guest path -> host file
    extra_text: Dict[str, str] = field(default_factory=dict)     # guest path -> content


def build(spec: ProductionSpec, out: Path) -> Path:
    """Write the production initramfs (uncompressed: fastest to unpack under TCG)."""
    arc = Archive()
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "var/crash", "usr/bin", "usr/sbin", "sbin"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.file("bin/busybox", BUSYBOX, 0o755)
    arc.symlink("bin/sh", "busybox")
    for binary in spec.binaries:
        add_binary(arc, binary)
    arc.file(str(spec.kernel.vmlinuz), spec.kernel.vmlinuz, 0o644)
    arc.file(spec.capture_initrd_guest_path, spec.capture_initrd, 0o600)
    for guest, host in spec.extra_files.items():
        arc.copy_host_file(host, guest)
    for guest, text in spec.extra_text.items():
        arc.file(guest, text.encode(), 0o600)
    arc.file("etc/hostname", (spec.hostname + "\n").encode())
    arc.file("init", _init_script(spec).encode(), 0o755)
    arc.write_file(out)
    return out


def add_binary(arc: Archive, binary: Path) -> None:
    """Add a dynamically linked program and the shared libraries ``ldd`` lists."""
    arc.copy_host_file(binary)
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            lib = parts[2]
        elif parts and parts[0].startswith("/"):
            lib = parts[0]
        else:
            continue
        if lib not in arc:
            arc.copy_host_file(Path(lib), lib)


def _init_script(spec: ProductionSpec) -> str:
    load = "\n".join(spec.load_commands)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
hostname {shlex.quote(spec.hostname)}
ip link set lo up 2>/dev/null
echo {shlex.quote(spec.marker)} > /dev/kmsg
echo "qharness: production system up, loading the capture kernel"
fail() {{
    echo "{LOAD_FAILED_LINE}: $1"
    poweroff -f
}}
(
set -e
{load}
) || fail "the load commands exited with $?"
[ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail "kexec_crash_loaded is not 1"
echo "{LOADED_LINE}"
sync
echo c > /proc/sysrq-trigger
echo "qharness: still alive after the crash trigger"
poweroff -f
"""
