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
    "capture_boot",
    "build_initrd",
    "load",
    "start",
    "stop",
    "enable",
    "disable",
    "status",
    "notify",
    "calibrate",
    "test",
]


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser; when ``argv`` names a command, only that command's module
    is imported (start-up time matters in the capture kernel)."""
    parser = argparse.ArgumentParser(prog="kdump-saver", description="Save and manage kernel crash dumps.")
    parser.add_argument("--version", action="version", version=f"kdump-saver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _modules_for(argv):
        importlib.import_module(f"capture.commands.{name}").register(sub)
    return parser


def _modules_for(argv: Optional[List[str]]) -> List[str]:
    words = [a for a in (argv or []) if not a.startswith("-")]
    if words and words[0].replace("-", "_") in COMMANDS:
        return [words[0].replace("-", "_")]
    return COMMANDS


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kdump-saver: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
