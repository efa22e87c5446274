"""``kdump-saver info FILE``: tell what a dump file is.

Prints format, architecture, kernel release, host name, crash time, page
size, dump level and whether the dump is complete (an incomplete dump says
INCOMPLETE and why).  Exit status 0 for a complete dump; 2 for a dump that
is incomplete or damaged (a cut-off file, a corrupt flattened record), after
its description; 1 (via :class:`~capture.errors.KdumpError`) for a file that
is not a kernel dump or cannot be read.
"""
from __future__ import annotations

import argparse
import logging
import sys

from capture.formats.dumpinfo import describe

log = logging.getLogger(__name__)

INCOMPLETE_STATUS = 2


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "info", help="tell what a dump file is and whether it is complete",
        description="Read the headers of a kernel dump (ELF, kdump-compressed, makedumpfile's flattened "
                    "stream, or an lz4 frame holding one of them) and print its format, kernel, crash time, "
                    "dump level and completeness. Exit status 0 for a complete dump, 2 for an incomplete or "
                    "damaged one, 1 for a file that is not a kernel dump.")
    parser.add_argument("file", metavar="FILE", help="the dump file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = describe(args.file)
    sys.stdout.write(info.format_text())
    if info.complete:
        return 0
    log.error("%s is INCOMPLETE: %s", args.file, "; ".join(info.problems))
    return INCOMPLETE_STATUS
