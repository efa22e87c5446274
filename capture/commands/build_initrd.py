"""``kdump-saver build-initrd``: build the capture initrd with dracut."""
from __future__ import annotations

import argparse
import logging
import os

from capture.config import options as configuration
from capture.config import verbose
from capture.commands import check_config
from capture.errors import KdumpError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-initrd", help="build the capture initrd (dracut) for the configured target",
        description="Check the configuration for anything that would fail at crash time (host key, "
                    "identity, host name, programs, the file system of a local target), then build the "
                    "capture initrd with dracut: Python with only the modules the saver imports, "
                    "makedumpfile, ip, a DHCP client when needed, and the normalized configuration.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION",
                   help="kernel release (default KDUMP_KERNELVER, else the running kernel)")
    p.add_argument("--output", metavar="PATH", help="initrd to write (default /boot/initrd-VERSION-kdump)")
    p.add_argument("--systemd", action="store_true",
                   help="a systemd initrd (a unit wanted by initrd.target) instead of dracut's shell init")
    p.add_argument("--compress", default=None, metavar="PROGRAM",
                   help="dracut --compress (default zstd -19 with a 1 MiB window where zstd is installed, else xz)")
    p.add_argument("--add-drivers", default="", metavar="'MOD ...'",
                   help="more kernel modules, e.g. the NIC or disk driver of another machine")
    p.add_argument("--check", action="store_true", help="only check the configuration, build nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capture.host import initrd

    cfg = configuration.load(args.config)
    verbose.debug_logging(cfg.verbose, saving=False)
    for note in check_config.target_notes(cfg):
        log.warning("%s", note)
    kernel = initrd.kernel_release(cfg, args.kernel)
    output = args.output or initrd.default_output(kernel)
    out_dir = os.path.dirname(os.path.abspath(output))
    if not args.check and not os.path.isdir(out_dir):
        raise KdumpError(f"--output {output}: the directory {out_dir} does not exist")
    plan = initrd.plan(cfg, kernel)
    if args.check:
        log.info("the configuration is fit for a capture initrd (%s target, %d files of Python)",
                 plan.target.scheme, len(plan.closure.files))
        return 0
    build_options = initrd.BuildOptions(output=output, systemd=args.systemd,
                                        compress=args.compress or initrd.default_compress(),
                                        add_drivers=tuple(args.add_drivers.split()))
    path = initrd.build(plan, build_options)
    print(path)
    return 0
