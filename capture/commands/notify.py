"""``kdump-saver notify``: mail about new dumps (run on the installed system after the reboot)."""
from __future__ import annotations

import argparse

from capture.config import options as configuration


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "notify", help="mail KDUMP_NOTIFICATION_TO about this host's dumps not yet announced",
        description="Find this host's finished dumps on KDUMP_SAVEDIR (any target) that were not announced "
                    "yet, send one mail per dump through KDUMP_SMTP_SERVER with its README.txt, and mark each "
                    "announced dump so it is not announced again. Does nothing when KDUMP_NOTIFICATION_TO "
                    "is empty. Exit status 0 when every dump found was announced, 1 otherwise (the rest is "
                    "tried again at the next run).")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--savedir", metavar="URL", help="target, overriding KDUMP_SAVEDIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host.notify import notify

    notify(configuration.load(args.config), savedir=args.savedir)
    return 0
