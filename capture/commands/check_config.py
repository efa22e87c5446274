"""``kdump-saver check-config [--config FILE]``: show the effective configuration or its errors.

Prints one ``KEY="value"`` line per option (passwords masked) and exits 0;
a bad configuration raises :class:`~capture.errors.ConfigError`, which the
command line prints as one message listing every bad line, exiting 1.
"""
from __future__ import annotations

import argparse
import logging
import sys

from capture.config import options as config

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
    sys.stdout.write(config.render(effective))
    return 0
