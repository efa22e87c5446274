"""``kdump-saver info FILE``: tell what a dump file is.

Prints format, architecture, kernel release, host name, crash time, page
size, dump level and whether the dump is complete (an incomplete dump says
INCOMPLETE and why).  Exit status 0 for a readable dump, complete or not;
1 (via :class:`~capture.errors.KdumpError`) for a file that is not a kernel
dump or cannot be read.
"""
from __future__ import annotations

import argparse
import sys

from capture.dumpinfo import describe


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "info", help="tell what a dump file is and whether it is complete",
        description="Read the headers of a kernel dump (ELF, kdump-compressed, makedumpfile's flattened "
                    "stream, or an lz4 frame holding one of them) and print its format, kernel, crash time, "
                    "dump level and completeness. Exit status 0 for a readable dump, even an incomplete one.")
    parser.add_argument("file", metavar="FILE", help="the dump file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(describe(args.file).format_text())
    return 0
