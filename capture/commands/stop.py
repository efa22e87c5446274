"""``kdump-saver stop``: disarm the machine (what kdump-saver.service runs at stop)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stop", help="unload the capture kernel (kexec -p -u) under the service lock",
        description="Unload the capture kernel, under the lock /run/kdump-saver.lock so that it never "
                    "interleaves with a start.  A crash then reboots without a dump.")
    p.add_argument("--dry-run", action="store_true", help="print the kexec command, unload nothing")
    p.add_argument("--lock-file", metavar="PATH", help="lock file (default /run/kdump-saver.lock)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import service

    argv = service.stop(dry_run=args.dry_run, lock=args.lock_file or service.LOCK_PATH)
    if args.dry_run:
        print(" ".join(argv))
    return 0
