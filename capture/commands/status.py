"""``kdump-saver status``: reservation, capture kernel, initrd freshness, service, last dump."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from capture.config import options as configuration

if TYPE_CHECKING:
    from capture.host.initrd import Freshness


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="show the crash reservation, the capture kernel, the initrd state and the last dump",
        description="Print the memory reserved for the capture kernel, whether one is loaded, whether the "
                    "capture initrd is current (and if not, which of its inputs changed: configuration, "
                    "kdump-saver version, kernel, hostname, host keys, identities, drivers), whether the "
                    "machine is armed, whether kdump-saver.service is enabled, and this host's newest dump "
                    "on the target when the target answers quickly. Without crashkernel= on the kernel "
                    "command line it prints the change for the boot loader. Exit status 0 when everything "
                    "is ready for a crash, 3 otherwise.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release (default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd (default /boot/initrd-VERSION-kdump)")
    p.add_argument("--target-timeout", metavar="SECONDS", type=float, default=5.0,
                   help="how long to look for the last dump on the target (default 5; 0: do not look)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import bootloader, initrd, install, kexec, lastdump

    cfg = configuration.load(args.config)
    kernel = initrd.kernel_release(cfg, args.kernel)
    path = args.initrd or initrd.default_output(kernel)
    reserved = kexec.reserved_bytes()
    loaded = kexec.is_loaded()
    fresh = initrd.freshness(cfg, kernel, path)
    print(f"Reserved: {reserved // (1024 * 1024)} MB" + ("" if reserved else " (no crashkernel= reservation)"))
    print("Capture kernel: " + {True: "loaded", False: "not loaded", None: "unknown (no kexec support)"}[loaded])
    print(f"Initrd: {path}: {fresh.describe()}")
    print(f"Armed: {armed(reserved, loaded, fresh)}")
    print(f"Service: {install.UNIT} " + ("enabled" if install.is_enabled() else
                                          "not enabled (run 'kdump-saver enable')"))
    if args.target_timeout > 0:
        print(f"Last dump: {lastdump.last_dump(cfg, args.target_timeout).describe()}")
    try:
        cmdline = kexec.read_cmdline()
    except OSError:
        cmdline = ""
    for line in bootloader.advice(cfg, path, cmdline):
        print(line)
    ready = reserved > 0 and loaded is True and fresh.current
    return 0 if ready else 3


def armed(reserved: int, loaded: Optional[bool], fresh: "Freshness") -> str:
    """Whether a crash now would be saved, in words."""
    if loaded is True:
        if fresh.current:
            return "yes"
        return "yes, but the initrd is not current: run 'kdump-saver start' (or systemctl reload kdump-saver)"
    if not reserved:
        return "no: no memory is reserved for a capture kernel (crashkernel=)"
    return "no: no capture kernel is loaded (run 'kdump-saver start')"
