"""``kdump-saver start``: arm the machine (what kdump-saver.service runs)."""
from __future__ import annotations

import argparse
import logging

from capture.config import options as configuration

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "start", help="build the capture initrd if missing or stale, then load the capture kernel",
        description="Under the lock /run/kdump-saver.lock: rebuild the capture initrd when it is missing or "
                    "stale (the configuration, kdump-saver, the kernel, the target's host keys, identities, "
                    "the hostname or the driver set changed; each change is named), then load the capture "
                    "kernel with kexec -p, replacing one already loaded.  kdump-saver.service runs this at "
                    "boot and on CPU or memory hotplug.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release (default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd (default /boot/initrd-VERSION-kdump)")
    flavour = p.add_mutually_exclusive_group()
    flavour.add_argument("--systemd", dest="systemd", action="store_true", default=None,
                         help="rebuild as a systemd initrd (default: the flavour of the initrd replaced)")
    flavour.add_argument("--no-systemd", dest="systemd", action="store_false",
                         help="rebuild with dracut's shell init")
    p.add_argument("--rebuild", action="store_true", help="rebuild the initrd even when it is current")
    p.add_argument("--dry-run", action="store_true",
                   help="build when needed, then print the kexec command instead of loading")
    p.add_argument("--lock-file", metavar="PATH", help="lock file (default /run/kdump-saver.lock)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import service

    result = service.start(service.StartOptions(
        config=args.config, kernel=args.kernel, initrd=args.initrd, systemd=args.systemd,
        rebuild=args.rebuild, dry_run=args.dry_run, lock=args.lock_file or service.LOCK_PATH))
    if args.dry_run:
        print(result.command)
    return 0
