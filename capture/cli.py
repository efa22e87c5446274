"""The ``kdump-saver`` command line."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from capture import __version__
from capture.errors import KdumpError

log = logging.getLogger("kdump-saver")

#: subcommand modules under capture.commands, in the order ``--help`` lists them
COMMANDS = [
    "save",
    "check_config",
    "info",
    "reassemble",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdump-saver", description="Save and manage kernel crash dumps.")
    parser.add_argument("--version", action="version", version=f"kdump-saver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"capture.commands.{name}").register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kdump-saver: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KdumpError as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
