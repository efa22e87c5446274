"""``kdump-saver enable``: install and enable kdump-saver.service and its udev rule."""
from __future__ import annotations

import argparse
import logging
import os

from capture.config import options as configuration

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "enable", help="install and enable kdump-saver.service and the hotplug udev rule",
        description="Write /etc/systemd/system/kdump-saver.service (ordered after network-online.target when "
                    "KDUMP_SAVEDIR is remote) and /etc/udev/rules.d/70-kdump-saver.rules (reload on CPU and "
                    "memory hotplug), and enable the unit.  When the kernel command line has no crashkernel= "
                    "it prints the GRUB change; with KDUMP_UPDATE_BOOTLOADER=true it writes "
                    "/etc/default/grub.d/kdump-saver.cfg and runs update-grub.  With --root DIR everything "
                    "goes into that tree (as systemctl --root does) and nothing runs on this system.")
    p.add_argument("--config", metavar="FILE",
                   help=f"configuration file (default {configuration.DEFAULT_PATH}, under --root when given)")
    p.add_argument("--root", metavar="DIR", help="install into this tree instead of the running system")
    p.add_argument("--now", action="store_true", help="also start the service (not with --root)")
    p.add_argument("--command", metavar="PATH",
                   help="how the unit runs kdump-saver (default: the kdump-saver of this installation)")
    p.set_defaults(func=run)


def tree_config(path: str, root: str) -> configuration.Config:
    """The configuration of ``--root``'s tree: ``--config`` as given, else
    the tree's /etc/sysconfig/kdump, else the defaults."""
    if path:
        return configuration.load(path)
    inside = os.path.join(root, configuration.DEFAULT_PATH.lstrip("/"))
    return configuration.load(inside) if os.path.exists(inside) else configuration.Config()


def run(args: argparse.Namespace) -> int:
    from capture.host import bootloader, initrd, install, kexec

    cfg = tree_config(args.config, args.root) if args.root else configuration.load(args.config)
    root = args.root or "/"
    initrd_path = initrd.default_output(initrd.kernel_release(cfg))
    cmdline = None if args.root else kexec.read_cmdline()
    if cfg.update_bootloader and bootloader.missing(cmdline, root=root):
        print(f"installed {bootloader.write_dropin(cfg, initrd_path, root=root)}")
        if args.root is None:
            bootloader.update_grub()
            print("ran update-grub: reboot to reserve the memory for the capture kernel")
    else:
        for line in bootloader.advice(cfg, initrd_path, cmdline, root=root):
            print(line)
    for path in install.enable(cfg, root=args.root, command=args.command, now=args.now):
        print(f"installed {path}")
    print(f"enabled {install.UNIT}" + (" and started it" if args.now else ""))
    return 0
