"""``kdump-saver reassemble FLAT OUT``: rebuild a dump from makedumpfile's flattened format.

Does what ``makedumpfile -R OUT < FLAT`` does (FLAT ``-`` reads standard input), without makedumpfile: the
result is written to ``OUT.incomplete`` and renamed to OUT once the whole
stream was read.  An existing OUT is never overwritten.  Exit status 0 on
success, 1 for a corrupt or truncated input or a write error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from capture.formats.flattened import reassemble, reassemble_stream

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "reassemble", help="rebuild a dump from makedumpfile's flattened format (like makedumpfile -R)",
        description="Rebuild the real dump file from a flattened one (makedumpfile -F output, as stored "
                    "by network targets). The result is byte for byte what makedumpfile -R writes; "
                    "it appears under OUT only when complete.")
    parser.add_argument("flat", metavar="FLAT", help="the flattened dump ('-': standard input)")
    parser.add_argument("out", metavar="OUT", help="the file to create (must not exist)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.flat == "-":
        size = reassemble_stream(sys.stdin.buffer, args.out, "standard input")
    else:
        size = reassemble(args.flat, args.out)
    log.info("%s: %d bytes rebuilt from %s", args.out, size, "standard input" if args.flat == "-" else args.flat)
    return 0
