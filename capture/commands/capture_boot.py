"""``kdump-saver capture-boot``: what the capture initrd runs."""
from __future__ import annotations

import argparse

from capture.config import options as configuration


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "capture-boot", help="in the capture kernel: network, scripts, save, reboot",
        description="Run by the capture initrd: bring up the network if the target needs it, run "
                    "KDUMP_PRESCRIPT, save the dump (or run KDUMP_TRANSFER), run KDUMP_POSTSCRIPT, "
                    "then reboot as KDUMP_IMMEDIATE_REBOOT says. Reboots only inside a capture kernel.")
    p.add_argument("--config", metavar="FILE", help="configuration file (default: the initrd's copy)")
    p.add_argument("--vmcore", metavar="PATH", default="/proc/vmcore")
    p.add_argument("--no-reboot", action="store_true", help="never reboot, even in a capture kernel")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.config import verbose
    from capture.save.boot import capture_boot

    cfg = configuration.load(args.config)
    verbose.debug_logging(cfg.verbose, saving=True)
    return capture_boot(cfg, vmcore=args.vmcore, allow_reboot=not args.no_reboot)
