"""``kdump-saver check-config [--config FILE]``: show the effective configuration or its errors.

Prints one ``KEY="value"`` line per option (passwords masked), then ``#``
comment lines saying what the capture kernel will do where SUSE's kdump has
its own rules (:func:`behaviour`), and exits 0.  Options kdump-saver leaves
to others are warned about (:func:`out_of_scope`).  A bad configuration
raises :class:`~capture.errors.ConfigError`, which the command line prints
as one message listing every bad line, exiting 1.
"""
from __future__ import annotations

import argparse
import logging
import sys

from typing import List

from capture.config import options as config
from capture.config.options import Config

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="check the configuration and print the effective values",
        description="Read the kdump configuration (never executing it), report every bad value, "
                    "and print the effective configuration with passwords masked.")
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help=f"the file to check (default: {config.DEFAULT_PATH}, else {config.INITRD_PATH}, "
             "else the built-in defaults)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    effective = config.load(args.config)
    if effective.source is None:
        log.info("no configuration file found (%s, %s); these are the defaults",
                 config.DEFAULT_PATH, config.INITRD_PATH)
    else:
        log.info("%s: configuration is valid", effective.source)
    for warning in out_of_scope(effective):
        log.warning("%s", warning)
    sys.stdout.write(config.render(effective))
    sys.stdout.write("".join(f"# {line}\n" for line in behaviour(effective) + target_notes(effective)))
    storage_report(effective)
    return 0


def target_notes(cfg: Config) -> List[str]:
    """Limits of the configured targets that no check can lift (``build-initrd`` prints them too)."""
    return [f"{url.masked()}: cifs targets need a share that allows unencrypted SMB2 sessions (pysmb cannot "
            "speak SMB encryption: 'smb encrypt = required' is refused); the dump crosses the network in clear"
            for url in cfg.targets if url.scheme == "cifs"]


def storage_report(cfg: Config) -> None:
    """Log the storage stack (LVM, MD RAID, LUKS, multipath) under each local
    target and what the capture initrd needs for it.  Production side only:
    the capture initrd carries no ``capture.host``."""
    try:
        from capture.host import initrd
    except ImportError:
        return
    from capture.errors import KdumpError

    try:
        found = initrd.local_storage(cfg)
    except (KdumpError, OSError) as exc:
        log.debug("no storage stack: %s", exc)
        return
    for stack in found.stacks:
        if not stack.stacked:
            log.debug("savedir %s is on %s: a plain disk", stack.path, stack.describe())
    for line in found.messages():
        log.info("%s", line)
    for line in found.warnings + found.problems:
        log.warning("%s", line)


def behaviour(cfg: Config) -> List[str]:
    """What the capture kernel does around the save, as SUSE's kdump-save does it."""
    lines = []
    if cfg.transfer:
        lines.append("KDUMP_TRANSFER replaces the save: it runs alone, KDUMP_PRESCRIPT and KDUMP_POSTSCRIPT "
                     "are not run (as in SUSE's kdump)")
    else:
        steps = ["KDUMP_PRESCRIPT"] * bool(cfg.prescript) + ["the dump"] + ["KDUMP_POSTSCRIPT"] * bool(cfg.postscript)
        lines.append("the save: " + ", then ".join(steps))
    if not cfg.continue_on_error:
        lines.append("on an error: a shell on the console; the capture goes on when it exits "
                     "(KDUMP_CONTINUE_ON_ERROR=false)")
    if cfg.immediate_reboot:
        lines.append("after the save: the machine reboots (KDUMP_IMMEDIATE_REBOOT=true)")
    else:
        lines.append("after the save: a shell on the console; the machine reboots when it exits "
                     "(KDUMP_IMMEDIATE_REBOOT=false, as in SUSE's kdump)")
    return lines


def out_of_scope(cfg: Config) -> List[str]:
    """Warnings for options set to something kdump-saver does not do (the parser already warns
    about KDUMP_FADUMP, KDUMP_FADUMP_SHELL and KDUMP_UPDATE_BOOTLOADER)."""
    warnings = []
    if cfg.auto_resize:
        warnings.append("KDUMP_AUTO_RESIZE=true: kdump-saver does not shrink the crash kernel reservation "
                        "(SUSE runs 'kdumptool calibrate --shrink' when loading); size crashkernel= with "
                        "'kdump-saver calibrate' instead; ignored")
    return warnings
