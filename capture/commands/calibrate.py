"""``kdump-saver calibrate``: suggest the crashkernel= reservation."""
from __future__ import annotations

import argparse
import logging

from capture.config import options as configuration

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="suggest crashkernel= Low and High values in MB",
        description="Print the crashkernel reservation this machine needs, in MB, like kdumptool "
                    "calibrate: Total, Low, High, MinLow, MaxLow, MinHigh, MaxHigh. The estimate uses the "
                    "size of the capture initrd (built or estimated), the capture kernel's own overhead, "
                    "the saver's memory and 1 MB per GB of RAM; see capture/host/crashkernel.py.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release (default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd to measure (default /boot/initrd-VERSION-kdump)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import crashkernel
    from capture.host import initrd

    cfg = configuration.load(args.config)
    kernel = initrd.kernel_release(cfg, args.kernel)
    path = args.initrd or initrd.default_output(kernel)
    sizes = crashkernel.initrd_sizes(path)
    if sizes is None:
        log.info("no capture initrd at %s: using the size of a typical sftp initrd (%.0f MB unpacked); "
                 "build it first for an exact figure", path, crashkernel.ESTIMATE_UNPACKED_MB)
        sizes = (crashkernel.ESTIMATE_COMPRESSED_MB, crashkernel.ESTIMATE_UNPACKED_MB)
    else:
        log.debug("initrd %s: %.1f MB compressed, %.1f MB unpacked", path, *sizes)
    low, high = crashkernel.ram_ranges()
    tmpfs_root = bool(cfg.commandline.strip()) and "rootfstype=ramfs" not in cfg.commandline.split()
    result = crashkernel.calibrate(low // 2**20, high // 2**20, *sizes, tmpfs_root=tmpfs_root)
    print("\n".join(result.lines()))
    return 0
