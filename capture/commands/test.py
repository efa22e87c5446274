"""``kdump-saver test``: crash the machine on purpose to test the dump."""
from __future__ import annotations

import argparse
import logging
import sys

from capture.errors import KdumpError

log = logging.getLogger(__name__)
SYSRQ_TRIGGER = "/proc/sysrq-trigger"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "test", help="crash this machine now (sysrq 'c') to test the capture",
        description="Crash the running kernel through /proc/sysrq-trigger, so that the capture kernel "
                    "saves a dump. Asks for confirmation: type 'yes'. Without a terminal it refuses "
                    "unless --yes is given.")
    p.add_argument("--yes", action="store_true", help="do not ask; crash immediately")
    p.set_defaults(func=run)


def confirmed(stdin=None, stdout=None) -> bool:
    """Ask on the terminal; only the exact answer ``yes`` confirms."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stdout.write("This crashes the running kernel NOW: every process dies and unsaved data is lost.\n"
                 "Type 'yes' to crash: ")
    stdout.flush()
    answer = stdin.readline()
    return answer.strip() == "yes"


def run(args: argparse.Namespace, trigger: str = SYSRQ_TRIGGER) -> int:
    from capture.host import kexec

    if kexec.is_loaded() is False:
        raise KdumpError("no capture kernel is loaded, so a crash would only reboot without a dump; "
                         "run 'kdump-saver load' first")
    if not args.yes:
        if not sys.stdin.isatty():
            raise KdumpError("refusing to crash the machine without confirmation: no terminal to ask on "
                             "(use --yes to crash without asking)")
        if not confirmed():
            log.info("not confirmed; nothing done")
            return 1
    log.warning("crashing the kernel through %s", trigger)
    try:
        with open(trigger, "w") as f:
            f.write("c")
    except OSError as exc:
        raise KdumpError(f"cannot write {trigger}: {exc.strerror}") from None
    return 0
