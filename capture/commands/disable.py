"""``kdump-saver disable``: disable and remove kdump-saver.service and its udev rule."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "disable", help="disable and remove kdump-saver.service and the hotplug udev rule",
        description="Disable kdump-saver.service and remove it, its drop-in and the udev rule; also remove "
                    "/etc/default/grub.d/kdump-saver.cfg if 'enable' wrote it (then run update-grub, not "
                    "with --root).  The capture kernel stays loaded until the next reboot unless --now.")
    p.add_argument("--root", metavar="DIR", help="remove from this tree instead of the running system")
    p.add_argument("--now", action="store_true", help="also stop the service, unloading the capture kernel")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import bootloader, install

    removed = install.disable(root=args.root, now=args.now)
    dropin = bootloader.remove_dropin(root=args.root or "/")
    for path in removed + ([dropin] if dropin else []):
        print(f"removed {path}")
    if dropin and args.root is None:
        bootloader.update_grub()
        print("ran update-grub: the crashkernel= reservation goes at the next reboot")
    if not removed and not dropin:
        print(f"{install.UNIT} was not installed")
    return 0
