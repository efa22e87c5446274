"""The production system the harness crashes: a small initramfs.

It carries static busybox (its applets under ``/qharness/bin``, last on
PATH), ``kexec`` with its libraries, the guest kernel and the capture initrd
at the paths ``kdump-saver load`` expects, and, merged in from
``base_image``, the capture initrd's own tree: the Python interpreter with
kdump-saver's closure and the kernel modules, plus the production side
(``capture/host``, which the capture initrd never carries), so that the production system
runs ``kdump-saver load`` itself, against its own /proc/cmdline and network.
Its ``/init`` brings up /proc, /sys and /dev, loads the virtio drivers,
configures the network as the case says, writes a marker to the kernel log,
runs the load commands, checks ``/sys/kernel/kexec_crash_loaded`` and crashes
with ``echo c > /proc/sysrq-trigger``.  When loading fails it prints
:data:`LOAD_FAILED_LINE` and powers off, so the host sees it at once.
"""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import capture.host
from qharness.cpio import Archive
from qharness.kernel import GuestKernel

BUSYBOX = Path("/bin/busybox")
LOADED_LINE = "qharness: capture kernel loaded"
HOST_PACKAGE = Path(capture.host.__file__).resolve().parent
LOAD_FAILED_LINE = "qharness: load FAILED"
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;
esac
"""
DHCP_LINES = ["ip link set eth0 up",
              "udhcpc -i eth0 -s /qharness/udhcpc.script -q -n -t 20 -T 1"]
"""Production network by DHCP from QEMU (busybox udhcpc)."""


def static_lines(address: str, prefix: int = 24) -> List[str]:
    """Production network with a static address on eth0."""
    return ["ip link set eth0 up", f"ip addr add {address}/{prefix} dev eth0"]


@dataclass
class ProductionSpec:
    """What goes into the production initramfs."""

    kernel: GuestKernel
    capture_initrd: Path                 # host file of the capture initrd
    capture_initrd_guest_path: str       # where ``kdump-saver load`` expects it in the guest
    load_commands: List[str]             # shell lines that load the capture kernel
    marker: str                          # unique text written to the kernel log before the crash
    hostname: str = "qharness"
    base_image: Optional[Path] = None    # an initramfs whose tree is merged in (not its /init)
    modules: List[str] = field(default_factory=list)     # modprobe'd at start (from base_image)
    network: List[str] = field(default_factory=list)     # shell lines configuring the network
    binaries: List[Path] = field(default_factory=lambda: [Path("/usr/sbin/kexec")])
    extra_text: Dict[str, str] = field(default_factory=dict)     # guest path -> content (0600)


def build(spec: ProductionSpec, out: Path) -> Path:
    """Write the production initramfs (uncompressed: fastest to unpack under TCG)."""
    arc = Archive()
    if spec.base_image is not None:
        arc.merge(spec.base_image, skip=("init",))
        # the capture initrd never carries the production side; this system runs it
        for source in production_side_files():
            if source not in arc:
                arc.copy_host_file(Path(source), source)
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "qharness/bin"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.file("qharness/busybox", BUSYBOX, 0o755)
    arc.file("qharness/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    for binary in spec.binaries:
        add_binary(arc, binary)
    arc.file(str(spec.kernel.vmlinuz), spec.kernel.vmlinuz, 0o644)
    arc.file(spec.capture_initrd_guest_path, spec.capture_initrd, 0o600)
    for guest, text in spec.extra_text.items():
        arc.file(guest, text.encode(), 0o600)
    arc.file("etc/hostname", (spec.hostname + "\n").encode())
    arc.file("init", _init_script(spec).encode(), 0o755)
    arc.write_file(out)
    return out


def production_side_files() -> List[str]:
    """The Python files ``kdump-saver load`` needs beyond the capture initrd's
    closure: capture/host and what it imports, traced like the initrd's."""
    from capture.host import closure, initrd

    root = str(HOST_PACKAGE.parents[1])
    host_files = [str(p) for p in sorted(HOST_PACKAGE.rglob("*.py"))]
    required = ["capture.cli", "capture.commands.load", "capture.host.kexec", "capture.host.initrd"]
    roots = list(closure.OPTIONAL_ROOTS)
    traced = closure.trace(required, sorted(closure.static_imports(host_files)), roots,
                           [root] + initrd._dependency_path(roots, root), always=host_files)
    return list(traced.files)


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


INIT_PROLOGUE = """#!/qharness/busybox sh
/qharness/busybox --install -s /qharness/bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/qharness/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
"""
"""How a harness guest's /init starts: busybox's applets, PATH, /proc, /sys, /dev, /run."""


def _init_script(spec: ProductionSpec) -> str:
    modules = "\n".join(f"modprobe {shlex.quote(m)}" for m in spec.modules)
    network = "\n".join(spec.network)
    load = "\n".join(spec.load_commands)
    return INIT_PROLOGUE + f"""hostname {shlex.quote(spec.hostname)}
ip link set lo up
fail() {{
    echo "{LOAD_FAILED_LINE}: $1"
    poweroff -f
}}
{modules}
{network}
echo {shlex.quote(spec.marker)} > /dev/kmsg
echo "qharness: production system up, loading the capture kernel"
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
