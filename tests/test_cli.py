"""The ``kdump-saver`` command line: every command listed with its help line, only the
module of the command being run imported."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

from capture import cli
from conftest import REPO


def registered_help(module: str) -> dict:
    """The subcommands a command module registers, with their help lines."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"capture.commands.{module}").register(sub)
    return {action.dest: action.help for action in sub._choices_actions}


def test_the_table_says_what_each_module_registers():
    for module in cli.COMMANDS:
        table = {c.name: c.help for c in cli.TABLE if c.module == module}
        assert registered_help(module) == table, module


def imported_commands(*argv: str) -> list:
    """The capture.commands modules imported by building the parser for ``argv``."""
    code = ("import sys; from capture import cli; cli.build_parser(sys.argv[1:]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('capture.commands.'))))")
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return res.stdout.split()


def test_help_lists_every_command_without_importing_them():
    res = subprocess.run([sys.executable, "-m", "capture.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True)
    listed = " ".join(res.stdout.split())
    for command in cli.TABLE:
        assert f"{command.name} {command.help}" in listed, command
    assert imported_commands("--help") == []


def test_a_command_imports_only_its_own_module():
    assert imported_commands("-v", "save", "--vmcore", "x") == ["capture.commands.save"]
    assert imported_commands("unload", "--dry-run") == ["capture.commands.load"]
