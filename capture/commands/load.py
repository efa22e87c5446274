"""``kdump-saver load`` and ``unload``: the capture kernel, via ``kexec -p``."""
from __future__ import annotations

import argparse
import logging

from capture.config import options as configuration
from capture.config import verbose

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "load", help="load the capture kernel and initrd (kexec -p)",
        description="Load the capture kernel (KDUMP_KERNELVER or the running one) and its initrd into the "
                    "reserved memory with a command line built from /proc/cmdline as SUSE does "
                    "(root=, crashkernel=, resume= ... dropped; irqpoll reset_devices nr_cpus=KDUMP_CPUS "
                    "panic=1 and the network arguments added; KDUMP_COMMANDLINE replaces it, "
                    "KDUMP_COMMANDLINE_APPEND extends it).")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release or image path "
                   "(default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd (default /boot/initrd-VERSION-kdump)")
    p.add_argument("--dry-run", action="store_true", help="print the kexec command, load nothing")
    p.set_defaults(func=run_load)

    u = subparsers.add_parser("unload", help="unload the capture kernel (kexec -p -u)",
                              description="Unload the capture kernel: a crash then reboots without a dump.")
    u.add_argument("--dry-run", action="store_true", help="print the kexec command, unload nothing")
    u.set_defaults(func=run_unload)


def run_load(args: argparse.Namespace) -> int:
    from capture.host import initrd
    from capture.host import kexec

    cfg = configuration.load(args.config)
    verbose.debug_logging(cfg.verbose, saving=False)
    kernel = initrd.kernel_release(cfg, args.kernel)
    image = args.initrd or initrd.default_output(kernel)
    cmd = kexec.load_command(cfg, kernel, image, kexec.read_cmdline(), kexec.network_arguments(cfg),
                             requested=args.kernel or "")
    # KDUMP_VERBOSE 1: the command line to the system log (our stderr is the journal); 4: to stdout
    log.log(logging.INFO if cfg.verbose & verbose.LOAD_LOG else logging.DEBUG, "kexec command line: %s", cmd)
    if args.dry_run:
        print(cmd)
        return 0
    if cfg.verbose & verbose.LOAD_STDOUT:
        print(f"kexec command line: {cmd}", flush=True)
    fresh = initrd.freshness(cfg, kernel, image)
    if fresh.state == "stale":
        log.warning("%s is stale: %s; 'kdump-saver start' rebuilds and loads it",
                    image, "; ".join(fresh.reasons))
    kexec.load(cmd)
    log.info("capture kernel %s loaded with %s", cmd.kernel, cmd.initrd)
    return 0


def run_unload(args: argparse.Namespace) -> int:
    from capture.host import kexec

    if args.dry_run:
        print("kexec -p -u")
        return 0
    kexec.unload()
    log.info("capture kernel unloaded")
    return 0
