"""``kdump-saver save``: save the dump now."""
from __future__ import annotations

import argparse

from capture.config import options as configuration
from capture.config import verbose
from capture.save.sequence import save


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("save", help="save /proc/vmcore to the configured target",
                              description="Save the crashed kernel's memory to KDUMP_SAVEDIR. "
                                          "Exit status 0 only when the dump was saved completely.")
    p.add_argument("--config", metavar="FILE",
                   help=f"configuration file (default {configuration.DEFAULT_PATH}, "
                        f"else the capture initrd's {configuration.INITRD_PATH})")
    p.add_argument("--vmcore", metavar="PATH", default="/proc/vmcore", help="default /proc/vmcore")
    p.add_argument("--savedir", metavar="URL", help="target, overriding KDUMP_SAVEDIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = configuration.load(args.config)
    verbose.debug_logging(cfg.verbose, saving=True)
    save(cfg, vmcore=args.vmcore, savedir=args.savedir)
    return 0
