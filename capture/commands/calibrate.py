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
                    "size of the capture initrd, the capture kernel's own overhead, the saver's memory and "
                    "1 MB per GB of RAM, and is never below what a 1 GiB guest measurably needed for the "
                    "configured target types plus a margin (the only figure before the initrd is built); "
                    "see capture/host/crashkernel.py.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release (default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd to measure (default /boot/initrd-VERSION-kdump)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from capture.host import crashkernel
    from capture.host import initrd

    cfg = configuration.load(args.config)
    kernel = initrd.kernel_release(cfg, args.kernel)
    path = args.initrd or initrd.default_output(kernel)
    if not os.path.isfile(path):
        log.info("no capture initrd at %s: using what a 1 GiB guest needed for %s targets, plus %d MB "
                 "per the measurements; build it first for a figure from its size", path,
                 "/".join(crashkernel.target_schemes(cfg)) or "sftp", crashkernel.MARGIN_MB)
    print("\n".join(crashkernel.calibrate_for(cfg, path).lines()))
    return 0
