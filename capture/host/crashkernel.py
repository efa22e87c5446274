"""How much memory to reserve for the capture kernel (``crashkernel=``).

The estimate, in MB, for our Python capture initrd::

    need = KERNEL_OVERHEAD + initrd_compressed + initrd_unpacked + RUNTIME + PER_GB * RAM_GB

rounded up to a multiple of 8 MB, where

* KERNEL_OVERHEAD (40 MB) is what the capture kernel itself keeps out of
  the reservation (its image, memmap, per-CPU areas): a 6.1 cloud kernel
  showed 41, 39 and 39 MB between crashkernel= and MemTotal at 256, 192
  and 128 MB;
* the compressed initrd stays in memory while it is unpacked, and the
  unpacked files (counted in whole pages) live in memory for the whole
  capture;
* RUNTIME (64 MB): the saver's Python process (45 MB maximum RSS measured
  while streaming makedumpfile output), makedumpfile, udev and the shell;
* PER_GB (1 MB per GB of the crashed system's RAM): makedumpfile's cyclic
  bitmaps and the kernel's page tables and page structures for reading the
  old memory through /proc/vmcore.

The capture command line carries ``rootfstype=ramfs`` (see
:mod:`capture.host.kexec`).  Without it (a KDUMP_COMMANDLINE that leaves it out)
the kernel unpacks the initramfs into a tmpfs limited to half of the memory
left once the kernel and the compressed image are set aside, which adds::

    need >= KERNEL_OVERHEAD + initrd_compressed + INIT_MEM + TMPFS_FACTOR * initrd_unpacked

(INIT_MEM, 8 MB, is the kernel's init memory, freed only after unpacking;
TMPFS_FACTOR 2.1 is the half plus 5% for inodes).  The lab's busybox
capture initramfs, unpacked into that tmpfs, fits the rule: 54 MB unpacked
and 13.3 MB xz give 176 MB; it ran at crashkernel=176M and failed to unpack
at 160M.  An sftp initrd of 62 MB failed to unpack at 192M the same way (the
rule says 200M).  The QEMU harness measures the real minimum for an initrd;
this formula is the starting point, not a guarantee.

The formula is checked against what the QEMU harness measured
(bench/crash_cycle.py: the smallest ``crashkernel=`` at which a 1 GiB guest
still saved, per target type, :data:`MEASURED_1GIB_MB`): the recommendation
is never below that figure plus :data:`MARGIN_MB` (a real machine carries
more drivers and firmware in its initrd and has more devices than the
harness's guest) plus PER_GB for each GB beyond the first, for the most
demanding of the configured targets.  Without a built initrd only that
per-target floor is used.

Like SUSE's ``kdumptool calibrate``, the values are split in Low (below 4
GB, DMA32) and High: on a machine with RAM above 4 GB the main reservation
goes high (``crashkernel=HIGH,high``) and Low is the 72 MB for DMA32 bounce
buffers (``crashkernel=72M,low``); otherwise everything is Low and High is 0.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:
    from capture.config.options import Config

KERNEL_OVERHEAD_MB = 40
RUNTIME_MB = 64
PER_GB_MB = 1.0
TMPFS_FACTOR = 2.1
INIT_MEM_MB = 8
DEFAULT_LOW_MB = 72
LOW_KEEP_MB = 512          # low memory the production kernel and firmware keep for themselves
ALIGN_MB = 8
FOUR_GB = 1 << 32
#: used when no capture initrd has been built yet: an sftp initrd as measured by bench/initrd_size.py
ESTIMATE_COMPRESSED_MB = 19.0
ESTIMATE_UNPACKED_MB = 64.0
#: the smallest crashkernel= (MB, 16 MB steps) at which a 1 GiB QEMU guest saved its dump, per
#: target type: bench/crash_cycle.py, kernel 6.1.0-57-cloud-amd64, TCG, zstd initrd, OpenSSH client,
#: 2026-11-30 (sftp saved 3 times of 3 at 128M, file 4 of 4 at 112M; below them the kernel runs
#: out of memory while it unpacks the initrd)
MEASURED_1GIB_MB: Dict[str, int] = {"file": 112, "sftp": 128}
#: the measured type assumed for a type not measured yet (the sftp initrd is the largest)
UNMEASURED_LIKE = "sftp"
#: what a real machine needs beyond the harness's guest (drivers, firmware, devices)
MARGIN_MB = 32


@dataclass(frozen=True)
class Calibration:
    """The values, in MB, in kdumptool's order."""

    total: int
    low: int
    high: int
    min_low: int
    max_low: int
    min_high: int
    max_high: int

    def lines(self) -> List[str]:
        return [f"Total: {self.total}", f"Low: {self.low}", f"High: {self.high}",
                f"MinLow: {self.min_low}", f"MaxLow: {self.max_low}",
                f"MinHigh: {self.min_high}", f"MaxHigh: {self.max_high}"]


def required_mb(ram_mb: float, initrd_compressed_mb: float, initrd_unpacked_mb: float,
                tmpfs_root: bool = False) -> int:
    """The reservation the capture needs (see the module docstring);
    ``tmpfs_root`` when the capture command line lacks rootfstype=ramfs."""
    need = (KERNEL_OVERHEAD_MB + initrd_compressed_mb + initrd_unpacked_mb + RUNTIME_MB
            + PER_GB_MB * ram_mb / 1024)
    if tmpfs_root:
        need = max(need, KERNEL_OVERHEAD_MB + initrd_compressed_mb + INIT_MEM_MB
                   + TMPFS_FACTOR * initrd_unpacked_mb)
    return int(math.ceil(need / ALIGN_MB) * ALIGN_MB)


def measured_floor_mb(ram_mb: float, schemes: Iterable[str]) -> int:
    """The least reservation the measurements allow for targets of ``schemes`` on a machine with
    ``ram_mb`` of RAM (0 when no scheme was measured)."""
    measured = [MEASURED_1GIB_MB.get(s, MEASURED_1GIB_MB[UNMEASURED_LIKE]) for s in schemes]
    if not measured:
        return 0
    need = max(measured) + MARGIN_MB + PER_GB_MB * max(0.0, ram_mb - 1024) / 1024
    return int(math.ceil(need / ALIGN_MB) * ALIGN_MB)


def calibrate(low_ram_mb: int, high_ram_mb: int, initrd_compressed_mb: Optional[float],
              initrd_unpacked_mb: Optional[float], tmpfs_root: bool = False,
              schemes: Iterable[str] = ()) -> Calibration:
    """Split the requirement into Low and High for a machine with
    ``low_ram_mb`` of RAM below 4 GB and ``high_ram_mb`` above, saving to
    targets of ``schemes``; an initrd size of None (not built yet) leaves
    only the measured floor of those targets (the typical sftp initrd's
    size when none of them was measured)."""
    total = low_ram_mb + high_ram_mb
    floor = measured_floor_mb(total, schemes)
    if initrd_compressed_mb is None or initrd_unpacked_mb is None:
        need = floor or required_mb(total, ESTIMATE_COMPRESSED_MB, ESTIMATE_UNPACKED_MB, tmpfs_root)
    else:
        need = max(floor, required_mb(total, initrd_compressed_mb, initrd_unpacked_mb, tmpfs_root))
    max_low = max(0, low_ram_mb - LOW_KEEP_MB)
    if high_ram_mb > 0:
        return Calibration(total=total, low=DEFAULT_LOW_MB, high=need, min_low=DEFAULT_LOW_MB,
                           max_low=max_low, min_high=0, max_high=high_ram_mb)
    return Calibration(total=total, low=need, high=0, min_low=need, max_low=max_low,
                       min_high=0, max_high=0)


def ram_ranges(iomem: str = "/proc/iomem") -> Tuple[int, int]:
    """Bytes of System RAM below and above 4 GB, from the top-level entries
    of /proc/iomem (readable with addresses by root only)."""
    low = high = 0
    try:
        with open(iomem) as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) : System RAM$", line)
        if not m:
            continue
        start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
        if end <= start:
            continue
        low += max(0, min(end, FOUR_GB) - start)
        high += max(0, end - max(start, FOUR_GB))
    if low + high == 0:
        total = _memtotal_bytes()
        low, high = min(total, FOUR_GB), max(0, total - FOUR_GB)
    return low, high


def _memtotal_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def initrd_sizes(path: str) -> Optional[Tuple[float, float]]:
    """(compressed, unpacked) MB of a built initrd, or None if there is none."""
    if not os.path.isfile(path):
        return None
    compressed = os.path.getsize(path) / 2**20
    try:
        listing = subprocess.run(["lsinitrd", path], capture_output=True, text=True, errors="replace",
                                 timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    unpacked = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0].startswith("-") and fields[4].isdigit():
            unpacked += (int(fields[4]) + 4095) // 4096 * 4096   # files occupy whole pages
    if unpacked == 0:
        return None
    return compressed, unpacked / 2**20


def calibrate_for(config: "Config", initrd_path: str) -> Calibration:
    """:func:`calibrate` for this machine's RAM, the configured targets and the capture
    initrd at ``initrd_path`` (the targets' measured floor when it is not built yet)."""
    sizes: Tuple[Optional[float], Optional[float]] = initrd_sizes(initrd_path) or (None, None)
    low, high = ram_ranges()
    tmpfs_root = bool(config.commandline.strip()) and "rootfstype=ramfs" not in config.commandline.split()
    return calibrate(low // 2**20, high // 2**20, *sizes, tmpfs_root=tmpfs_root,
                     schemes=target_schemes(config))


def target_schemes(config: "Config") -> List[str]:
    """The schemes of KDUMP_SAVEDIR's targets (none when it does not parse: ``check-config`` says why)."""
    from capture.errors import KdumpError

    try:
        return [url.scheme for url in config.targets]
    except KdumpError:
        return []
