"""crash(8) opens what we save from the fixture, with the fixture kernel's debug symbols.

The fixture's -dbg package is optional: Debian drops old kernel ABIs from its
archive, so where apt can no longer install it this test is skipped with that
reason (CI included); wherever it is installable it is required.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from capture.config.options import Config
from capture.save.sequence import save
from conftest import require, require_program

RELEASE = "6.1.0-56-cloud-amd64"
VMLINUX = f"/usr/lib/debug/boot/vmlinux-{RELEASE}"
PACKAGE = f"linux-image-{RELEASE}-dbg"


def installable(package: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    return "Candidate:" in out and "Candidate: (none)" not in out


@pytest.fixture(scope="module")
def vmlinux() -> str:
    if not os.path.exists(VMLINUX) and not installable(PACKAGE):
        pytest.skip(f"optional: {PACKAGE} is no longer in the apt archive, so crash cannot be pointed "
                    "at the fixture; the QEMU end-to-end tests open fresh dumps with the current kernel")
    require(os.path.exists(VMLINUX), f"{VMLINUX} missing: apt-get install {PACKAGE} (tests/setup.sh does)")
    return VMLINUX


@pytest.mark.parametrize("fmt", ["lzo", "elf"])
def test_crash_reports_the_panic_and_backtrace(tmp_path, fixture_vmcore, vmlinux, fmt):
    crash = require_program("crash")
    result = save(Config(dumpformat=fmt, dumplevel=31), vmcore=str(fixture_vmcore), savedir=str(tmp_path))
    commands = tmp_path / "cmds"
    commands.write_text("sys\nbt\nexit\n")
    res = subprocess.run([crash, "-s", "-i", str(commands), vmlinux, str(tmp_path / result.directory / "vmcore")],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert 'PANIC: "Kernel panic - not syncing: sysrq triggered crash"' in out, out[-3000:]
    assert "sysrq_handle_crash" in out, out[-3000:]
