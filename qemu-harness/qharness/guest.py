"""One QEMU run: boot a kernel and initramfs under TCG, record the serial console.

Networking is QEMU user networking with ``restrict=on``: the guest gets
10.0.2.15 by DHCP from QEMU and reaches nothing but the ``guestfwd`` rules,
each mapping ``GUEST_SERVER:PORT`` to a service on the host's 127.0.0.1.
Every forwarded connection is relayed by ``busybox nc 127.0.0.1 PORT``, which
QEMU starts for it (``guestfwd=...-cmd:``): a ``tcp:`` chardev would carry a
single connection for the life of QEMU, and FTP, NFS and retries need more.
``-no-reboot`` makes the capture kernel's reboot (or a poweroff) end QEMU.
Every serial line is stored with the host time it arrived, so callers can
measure from the panic to the end of the save.
"""
from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from qharness.kernel import GuestKernel

log = logging.getLogger(__name__)

GUEST_SERVER = "10.0.2.100"
"""The address the guest uses for every host service (forwarded, never routed)."""

QEMU = "qemu-system-x86_64"


@dataclass
class GuestSpec:
    """How to boot the production system."""

    kernel: GuestKernel
    initrd: Path
    append: str
    memory_mb: int = 1024
    cpus: int = 1
    disks: List[Path] = field(default_factory=list)           # raw images, in order (vda, vdb... on virtio)
    disk_bus: str = "virtio"                                  # or "nvme": the cloud kernel's built-in driver
    forwards: Dict[int, int] = field(default_factory=dict)    # port on GUEST_SERVER -> port on 127.0.0.1
    network: bool = True
    rtc_base: Optional[str] = None                            # e.g. "2026-01-02T03:04:05"
    timeout: float = 600.0
    idle_timeout: float = 150.0                               # no console output for this long: hung


@dataclass
class GuestRun:
    """What a run produced: the serial console, timestamped, and how it ended."""

    log_path: Path
    lines: List[Tuple[float, str]]
    returncode: Optional[int]
    timed_out: bool
    started: float
    stall: bool = False                                       # stopped for lack of console output

    @property
    def ending(self) -> str:
        """How the run ended, for messages."""
        if self.stall:
            return "stopped: the console was silent (the guest hangs)"
        if self.timed_out:
            return "stopped: the time limit passed"
        return f"QEMU exited with status {self.returncode}"

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str) -> Optional[float]:
        """Host time (seconds since the start) of the first line matching ``pattern``."""
        rx = re.compile(pattern)
        for t, line in self.lines:
            if rx.search(line):
                return t - self.started
        return None

    def has(self, pattern: str) -> bool:
        return self.first(pattern) is not None


def qemu_command(spec: GuestSpec) -> List[str]:
    cmd = [QEMU, "-accel", "tcg", "-machine", "q35", "-cpu", "max",
           "-m", str(spec.memory_mb), "-smp", str(spec.cpus),
           "-display", "none", "-monitor", "none", "-serial", "stdio",
           "-no-reboot", "-kernel", str(spec.kernel.vmlinuz), "-initrd", str(spec.initrd),
           "-append", spec.append]
    for index, disk in enumerate(spec.disks):
        if spec.disk_bus == "nvme":
            cmd += ["-drive", f"file={disk},format=raw,if=none,id=disk{index},cache=unsafe",
                    "-device", f"nvme,drive=disk{index},serial=qharness{index}"]
        else:
            cmd += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    if spec.network:
        nic = "user,model=virtio-net-pci,restrict=on"
        for guest_port, host_port in sorted(spec.forwards.items()):
            nic += f",guestfwd=tcp:{GUEST_SERVER}:{guest_port}-cmd:/bin/busybox nc 127.0.0.1 {host_port}"
        cmd += ["-nic", nic]
    else:
        cmd += ["-nic", "none"]
    if spec.rtc_base:
        cmd += ["-rtc", f"base={spec.rtc_base},clock=vm"]
    return cmd


def boot(spec: GuestSpec, log_path: Path, stop_on: Optional[str] = None) -> GuestRun:
    """Run QEMU until it exits, ``timeout`` passes, or a line matches ``stop_on``.

    The serial console goes to ``log_path`` as it arrives.
    """
    cmd = qemu_command(spec)
    log.info("qemu: %s", " ".join(cmd))
    started = time.monotonic()
    lines: List[Tuple[float, str]] = []
    stop_rx = re.compile(stop_on) if stop_on else None
    stopped = threading.Event()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8", errors="replace") as out:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append((time.monotonic(), line))
                out.write(line + "\n")
                out.flush()
                if stop_rx and stop_rx.search(line):
                    stopped.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = stall = False
    deadline = started + spec.timeout
    while proc.poll() is None:
        if stopped.is_set():
            break
        now = time.monotonic()
        last = lines[-1][0] if lines else started
        if now > deadline or now - last > spec.idle_timeout:
            timed_out = True
            stall = now <= deadline
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(10)
    return GuestRun(log_path, lines, None if timed_out else proc.returncode, timed_out, started, stall)
