"""Real LVM-on-MD and LUKS stacks in a QEMU guest, for the storage-stack tests.

The machine that runs the tests may have neither device-mapper nor MD in its
kernel (and no module loading).  The guest boots Debian's cloud kernel, which
has both as modules, from a small initramfs: static busybox, the kernel
modules (``insmod`` in dependency order), ``mdadm``, ``lvm``, ``cryptsetup``,
``mkfs.ext4``, ``blkid``, ``findmnt`` with their libraries, the interpreter
with the traced closure of :mod:`qharness.storage_probe` (which imports
``capture.host``), and the probe itself.  Its ``/init`` loads the modules
and runs the probe, which builds the stacks on the guest's virtio disks
(vda, vdb: MD RAID1 under LVM; vdc: LUKS2), runs the production code on
them and prints one JSON line after :data:`RESULT_MARKER`; then the guest
powers off.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from capture.host import closure
from qharness import guest
from qharness.cpio import Archive
from qharness.kernel import GuestKernel
from qharness.production import BUSYBOX, INIT_PROLOGUE, add_binary

RESULT_MARKER = "qharness-storage-result:"
"""The probe's JSON line follows this text on the console."""
DONE_LINE = "qharness: storage probe finished"
PROBE = Path(__file__).resolve().with_name("storage_probe.py")
GUEST_PROBE = "/qharness/storage_probe.py"
MODULES = ("virtio_pci", "virtio_blk", "dm_mod", "md_mod", "raid1", "dm_crypt", "xts", "algif_skcipher")
"""The virtio disk driver, device-mapper, MD RAID1 and dm-crypt with LUKS2's default cipher (aes is built in)."""
PROGRAMS = ("mdadm", "lvm", "cryptsetup", "mkfs.ext4", "blkid", "findmnt")
"""What the probe runs (``lvm`` for pvcreate, vgcreate, lvcreate)."""
PROBE_IMPORTS = ("capture.cli", "capture.commands.check_config", "capture.host.initrd", "capture.host.storage", "capture.config.options",
                 "capture.config.targeturl", "dataclasses", "json", "subprocess", "traceback")
"""What the probe imports (its ``from X import name`` lines make the tracer try submodules too)."""
DISK_MB = 96
LVM_CONF = """devices { obtain_device_list_from_udev = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
"""
"""No udev in the guest: LVM creates the device nodes and links itself."""


class ProbeFailed(RuntimeError):
    """The guest did not print the probe's result."""


@dataclass
class ProbeRun:
    """The probe's result and the console it came from."""

    result: Dict[str, Any]
    console: guest.GuestRun
    seconds: float


def python_closure(repo: Path) -> closure.Closure:
    """The interpreter and the Python files the probe imports (traced as for
    the capture initrd; no optional dependency such as pysmb is needed)."""
    optional = sorted(closure.static_imports([str(PROBE)])) + list(closure.RUNTIME_STDLIB)
    return closure.trace(list(PROBE_IMPORTS), optional, (), [str(repo)])


def build(kernel: GuestKernel, programs: Dict[str, str], repo: Path, out: Path) -> Path:
    """Write the guest's initramfs (uncompressed) to ``out``."""
    arc = Archive()
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "mnt", "etc/lvm", "qharness/bin"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.file("qharness/busybox", BUSYBOX, 0o755)
    for path in programs.values():
        add_binary(arc, Path(path))
    traced = python_closure(repo)
    add_binary(arc, Path(traced.interpreter))
    for f in traced.files:
        if f.endswith(".so"):
            add_binary(arc, Path(f))
        elif f not in arc:
            arc.copy_host_file(Path(f))
    modules = kernel.module_files(list(MODULES))
    for ko in modules:
        arc.copy_host_file(ko)
    arc.file("etc/lvm/lvm.conf", LVM_CONF.encode())
    arc.file(GUEST_PROBE, PROBE.read_bytes(), 0o644)
    arc.file("init", _init_script(modules, repo, traced.interpreter).encode(), 0o755)
    arc.write_file(out)
    return out


def _init_script(modules: List[Path], repo: Path, python: str) -> str:
    insmod = "\n".join(f"insmod {shlex.quote(str(ko))} || echo 'qharness: insmod {ko.name} failed'"
                       for ko in modules)
    return INIT_PROLOGUE + f"""mkdir -p /run/lock /run/lvm /run/cryptsetup /run/mdadm
{insmod}
echo "qharness: storage probe starting"
PYTHONPATH={shlex.quote(str(repo))} \\
    {python} -S {GUEST_PROBE} {shlex.quote(RESULT_MARKER)}
echo "{DONE_LINE} ($?)"
sync
poweroff -f
"""


def run(kernel: GuestKernel, programs: Dict[str, str], repo: Path, workdir: Path,
        timeout: float = 240.0) -> ProbeRun:
    """Build the initramfs and the disks in ``workdir``, boot, and return the probe's result."""
    initramfs = build(kernel, programs, repo, workdir / "storage-guest.cpio")
    disks = []
    for name in ("vda", "vdb", "vdc"):
        disk = workdir / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(DISK_MB << 20)
        disks.append(disk)
    spec = guest.GuestSpec(kernel=kernel, initrd=initramfs, memory_mb=768, disks=disks, network=False,
                           append="console=ttyS0 panic=-1 loglevel=1", timeout=timeout, idle_timeout=90.0)
    console = guest.boot(spec, workdir / "console.log", stop_on=DONE_LINE)
    seconds = (console.lines[-1][0] - console.started) if console.lines else 0.0
    for _, line in console.lines:
        if RESULT_MARKER in line:
            return ProbeRun(json.loads(line.partition(RESULT_MARKER)[2]), console, seconds)
    tail = "\n".join(line for _, line in console.lines[-40:])
    raise ProbeFailed(f"the storage guest printed no result ({console.ending}); console {console.log_path}:\n{tail}")
