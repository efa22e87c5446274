#!/usr/bin/env python3
"""A real vmcore at least twice the fixture's size, for bench/save_local.py.

Crashes a 1280 MiB guest under QEMU with the harness (``file`` target, ELF,
dump level 0, so every page of the crashed kernel's memory is kept) and
copies the saved vmcore out of the guest's disk image.  The fixture is the
vmcore of a 512 MiB guest; this one describes 1024 MiB (the guest's memory
minus the 256M crashkernel) and is a little over twice its size.

    .venv/bin/python bench/big_vmcore.py [--output PATH] [--workdir DIR]

Takes about three minutes; needs root and qemu-harness/setup.sh.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu-harness"))

from qharness import runner  # noqa: E402
from qharness.cases import Case  # noqa: E402

DEFAULT_OUTPUT = Path("/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-1280M.elf")
CASE = Case("big-vmcore", "file", "ELF at dump level 0 of a 1280 MiB guest", memory_mb=1280,
            disk_mb=1600, settings=(("KDUMP_DUMPFORMAT", "ELF"), ("KDUMP_DUMPLEVEL", "0")))


def make(output: Path, workdir: Path) -> Path:
    """Crash the guest and copy its vmcore to ``output``; raise with the harness's
    findings when the crash was not saved and verified."""
    with runner.Session(CASE, workdir) as session:
        crash = session.crash(1)
        if session.result.problems:
            raise SystemExit("the big vmcore was not saved:\n" + session.result.report()
                             + "\n" + session.result.console_logs())
        with session.target.attached():
            vmcore = session.target.dumps()[0] / "vmcore"
            output.parent.mkdir(parents=True, exist_ok=True)
            partial = output.with_name(output.name + ".part")
            shutil.copyfile(vmcore, partial)
            partial.rename(output)
    print(f"{output}: {output.stat().st_size / 1e6:.0f} MB, saved {crash.panic_to_saved or 0:.0f} s after the panic")
    return output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--workdir", type=Path, help="keep the guest's files here (default: a temporary directory)")
    args = ap.parse_args()
    if args.workdir:
        make(args.output, args.workdir)
    else:
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="big-vmcore-") as tmp:
            make(args.output, Path(tmp))


if __name__ == "__main__":
    main()
