"""The ``kdump-saver`` command line."""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import List, Optional

from capture import __version__
from capture.errors import KdumpError

log = logging.getLogger("kdump-saver")

@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the module under capture.commands that
    registers it, and the one-line help ``kdump-saver --help`` shows."""

    name: str
    module: str
    help: str


#: the subcommands in the order ``--help`` lists them; only the module of the command
#: being run is imported (start-up time matters in the capture kernel)
TABLE = (
    Command("save", "save", "save /proc/vmcore to the configured target"),
    Command("check-config", "check_config", "check the configuration and print the effective values"),
    Command("info", "info", "tell what a dump file is and whether it is complete"),
    Command("reassemble", "reassemble", "rebuild a dump from makedumpfile's flattened format (like makedumpfile -R)"),
    Command("capture-boot", "capture_boot", "in the capture kernel: network, scripts, save, reboot"),
    Command("build-initrd", "build_initrd", "build the capture initrd (dracut) for the configured target"),
    Command("load", "load", "load the capture kernel and initrd (kexec -p)"),
    Command("unload", "load", "unload the capture kernel (kexec -p -u)"),
    Command("start", "start", "build the capture initrd if missing or stale, then load the capture kernel"),
    Command("stop", "stop", "unload the capture kernel (kexec -p -u) under the service lock"),
    Command("enable", "enable", "install and enable kdump-saver.service and the hotplug udev rule"),
    Command("disable", "disable", "disable and remove kdump-saver.service and the hotplug udev rule"),
    Command("status", "status", "show the crash reservation, the capture kernel, the initrd state and the last dump"),
    Command("notify", "notify", "mail KDUMP_NOTIFICATION_TO about this host's dumps not yet announced"),
    Command("calibrate", "calibrate", "suggest crashkernel= Low and High values in MB"),
    Command("test", "test", "crash this machine now (sysrq 'c') to test the capture"),
)

#: the modules under capture.commands, each once, in the order of :data:`TABLE`
COMMANDS = list(dict.fromkeys(c.module for c in TABLE))


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser; the command ``argv`` names gets its module's full parser,
    every other command only its name and help line from :data:`TABLE`."""
    parser = argparse.ArgumentParser(prog="kdump-saver", description="Save and manage kernel crash dumps.")
    parser.add_argument("--version", action="version", version=f"kdump-saver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    running = _module_for(argv)
    for command in TABLE:
        if command.module != running:
            sub.add_parser(command.name, help=command.help)
        elif command.name == next(c.name for c in TABLE if c.module == running):
            importlib.import_module(f"capture.commands.{running}").register(sub)
    return parser


def _module_for(argv: Optional[List[str]]) -> Optional[str]:
    """The module of the command ``argv`` names, if it names one."""
    words = [a for a in (argv or []) if not a.startswith("-")]
    return next((c.module for c in TABLE if words and c.name == words[0]), None)


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kdump-saver: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command ``argv`` names; the exit status.  Meant to end the
    process: what it allocated is exempted from garbage collection on return,
    which spares the interpreter's collections over every module at exit."""
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
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
