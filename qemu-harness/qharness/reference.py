"""Busybox + makedumpfile capture initrds: the yardsticks of bench/.

:func:`build_initrd` writes such an initrd for an :class:`InitrdPlan` (the
kernel modules, programs and files it carries and the shell command that
saves); :func:`crash` boots, crashes and lets it save.  The plain reference
brings up virtio-net with busybox ``udhcpc`` and streams ``makedumpfile -F
-c -d 31 /proc/vmcore`` through busybox ``nc`` to a listener on the host's
127.0.0.1 (reached through guestfwd, like every target); the per-transport
yardsticks are in :mod:`qharness.yardsticks`.  They do what kdump-saver does
in the least memory and time a capture initrd can, so bench/ can set
kdump-saver's figures beside them.
"""
from __future__ import annotations

import shlex
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from qharness import guest, production, verify
from qharness.cpio import Archive
from qharness.kernel import GuestKernel
from qharness.production import BUSYBOX, add_binary

GUEST_PORT = 9000
SAVED_LINE = "qharness-reference: dump sent"
FAILED_LINE = "qharness-reference: FAILED"
END_RECORD = b"\xff" * 16
"""The flattened format's last record: offset and size both -1."""

_UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;
esac
"""


@dataclass
class InitrdPlan:
    """What a busybox capture initrd carries and runs: ``save`` is a shell command
    (makedumpfile and the client) whose exit status says whether the dump was saved."""

    save: str
    network: bool = True
    modules: List[str] = field(default_factory=list)
    binaries: List[Path] = field(default_factory=list)
    files: Dict[str, bytes] = field(default_factory=dict)     # guest path -> content, mode 0600
    setup: str = ""                                          # shell lines after the network is up


def build(kernel: GuestKernel, out: Path, server: str) -> Path:
    """Write the nc reference capture initrd (uncompressed cpio)."""
    return build_initrd(kernel, InitrdPlan(
        save=f"makedumpfile -F -c -d 31 /proc/vmcore | nc {shlex.quote(server)} {GUEST_PORT}"), out)


def build_initrd(kernel: GuestKernel, plan: InitrdPlan, out: Path) -> Path:
    """Write a busybox + makedumpfile capture initrd for ``plan`` (uncompressed cpio); its
    kernel modules come from the guest kernel's tree, with their dependencies, as the
    harness loads them (:meth:`GuestKernel.module_files`)."""
    arc = Archive()
    for d in ("proc", "sys", "dev", "tmp", "etc", "mnt", "root"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.file("bin/busybox", BUSYBOX, 0o755)
    for binary in [Path("/usr/bin/makedumpfile"), *plan.binaries]:
        add_binary(arc, binary)
    arc.file("etc/udhcpc.script", _UDHCPC_SCRIPT.encode(), 0o755)
    arc.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    for path, content in plan.files.items():
        arc.file(path, content, 0o600)
    names = (["virtio_pci", "virtio_net"] if plan.network else ["virtio_pci"]) + plan.modules
    mods = kernel.module_files(names)
    for mod in mods:
        arc.file(f"lib/modules/{mod.name}", mod)
    insmods = "\n".join(f"insmod /lib/modules/{m.name}" for m in mods)
    network = (f"ip link set eth0 up\nudhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 -T 1 || "
               f"{{ echo \"{FAILED_LINE}: no DHCP lease\"; poweroff -f; }}") if plan.network else ""
    arc.file("init", f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{insmods}
ip link set lo up
{network}
{plan.setup}
if {plan.save}; then
    echo "{SAVED_LINE}"
else
    echo "{FAILED_LINE}: the save command failed"
fi
poweroff -f
""".encode(), 0o755)
    arc.write_file(out)
    return out


@dataclass
class Receiver:
    """A one-shot listener on 127.0.0.1 writing what arrives to ``path``."""

    path: Path
    port: int = 0
    complete: bool = False
    received: int = 0
    _sock: Optional[socket.socket] = None
    _thread: Optional[threading.Thread] = None

    def start(self) -> "Receiver":
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1)
        self._sock.settimeout(900)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        tail = b""
        with conn, open(self.path, "wb") as out:
            conn.settimeout(300)
            while True:
                try:
                    data = conn.recv(1 << 20)
                except socket.timeout:
                    break
                except OSError:
                    tail = b""
                    break
                if not data:
                    break
                out.write(data)
                self.received += len(data)
                tail = (tail + data)[-len(END_RECORD):]
                # the end record, unless more data follows (16 bytes of 0xff inside the dump)
                conn.settimeout(3 if tail == END_RECORD else 300)
            self.complete = tail == END_RECORD

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class ReferenceCrash:
    """One crash saved by a reference initrd."""

    run: guest.GuestRun
    saved: bool
    panic_to_saved: Optional[float]
    problems: List[str]


def crash(kernel: GuestKernel, workdir: Path, crashkernel: str, memory_mb: int = 1024,
          label: str = "reference", transport: str = "nc", dumpformat: str = "compressed") -> ReferenceCrash:
    """Boot, crash, and let a reference initrd save the dump.

    ``transport`` ``nc`` streams the flattened dump to a bare listener on the
    host; any other name is a yardstick of :mod:`qharness.yardsticks` (``file``,
    ``ssh``, ``ftp``, ``nfs``, ``cifs``) saving to the same kind of target as
    the harness case of that name.  ``dumpformat`` is KDUMP_DUMPFORMAT's value
    (makedumpfile's compression flag)."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    if transport != "nc":
        from qharness import yardsticks

        return yardsticks.crash(kernel, workdir, crashkernel, transport, dumpformat,
                                memory_mb=memory_mb, label=label)
    initrd = build(kernel, workdir / "reference-initrd.cpio", guest.GUEST_SERVER)
    marker = f"qharness-marker-{label}"
    prod = production_image(kernel, initrd, marker, workdir / "reference-production.cpio")
    dump = workdir / f"{label}.flat"
    receiver = Receiver(dump).start()
    try:
        run = guest.boot(guest.GuestSpec(
            kernel=kernel, initrd=prod, memory_mb=memory_mb, timeout=600,
            append=production_append(crashkernel),
            forwards={GUEST_PORT: receiver.port}), workdir / f"{label}-console.log")
    finally:
        receiver.stop()
    problems = []
    if not receiver.complete:
        problems.append(f"the host received {receiver.received} bytes, not a complete flattened dump")
    else:
        problems += check_dump(dump, marker)
    return finish(run, problems)


CAPTURE_APPEND = "console=ttyS0 loglevel=6 irqpoll nr_cpus=1 reset_devices panic=1"
"""The reference capture kernel's command line (loglevel as the production one's, which ours keeps)."""
GUEST_INITRD = "/boot/reference-initrd"


def production_append(crashkernel: str) -> str:
    return f"console=ttyS0 crashkernel={crashkernel} panic=1 loglevel=6"


def production_image(kernel: GuestKernel, initrd: Path, marker: str, out: Path) -> Path:
    """The production initramfs that loads ``initrd`` with plain ``kexec -p`` and crashes."""
    load = f"kexec -p {kernel.vmlinuz} --initrd={GUEST_INITRD} --append={shlex.quote(CAPTURE_APPEND)}"
    return production.build(production.ProductionSpec(
        kernel=kernel, capture_initrd=initrd, capture_initrd_guest_path=GUEST_INITRD,
        load_commands=[load], marker=marker, hostname="qharness-reference"), out)


def check_dump(dump: Path, marker: str) -> List[str]:
    """Problems with a dump a reference initrd saved (flattened or not)."""
    if not dump.is_file():
        return [f"{dump} was not written"]
    dmesg = verify.extract_dmesg(dump)
    if dmesg is None or marker not in dmesg or verify.PANIC not in dmesg:
        return [f"the kernel log of {dump} lacks the panic or the marker"]
    return []


def finish(run: guest.GuestRun, problems: List[str]) -> ReferenceCrash:
    """The verdict of a reference run: the initrd said it saved, and ``problems`` is empty."""
    if not run.has(SAVED_LINE):
        problems.append("the reference initrd did not report the dump as sent")
    panic = run.first(r"Kernel panic - not syncing")
    sent = run.first(SAVED_LINE)
    elapsed = sent - panic if panic is not None and sent is not None else None
    return ReferenceCrash(run, not problems, elapsed, problems)
