#!/usr/bin/env python3
"""Run end-to-end cases: ``run.py [--workdir DIR] CASE...`` or ``run.py --all``.

Each case boots the production kernel under QEMU, crashes it and checks the
dump kdump-saver saved (see qharness/runner.py).  Prints a verdict per case,
the console log of every failed case, and exits non-zero if any failed.
Run it with the project's interpreter (``.venv/bin/python``), as root.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qharness import cases, runner  # noqa: E402


def show(result: runner.CaseResult) -> None:
    for crash in result.crashes:
        verdict = crash.verdict
        if verdict is None or verdict.directory is None:
            continue
        print(f"\n--- the dump of crash {crash.index} is in {verdict.directory}", end="")
        print(f" ({verdict.vmcore.name}, {verdict.vmcore.stat().st_size} bytes)" if verdict.vmcore else "")
        readme = verdict.directory / "README.txt"
        if readme.exists():
            print(f"--- {readme}:\n{readme.read_text(errors='replace')}")
        if verdict.crash_summary:
            print(f"--- crash (sys; bt) with the -dbg vmlinux:\n{verdict.crash_summary}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(cases.BY_NAME))
    parser.add_argument("--all", action="store_true", help="the whole matrix")
    parser.add_argument("--workdir", type=Path, help="where to keep images, logs and dumps "
                                                     "(default: a new directory under /var/tmp)")
    parser.add_argument("--crashkernel", help="override the case's crashkernel= size, e.g. 176M")
    parser.add_argument("--show", action="store_true",
                        help="print each saved dump's README.txt and crash's summary of it")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="qharness: %(message)s")
    names = list(cases.BY_NAME) if args.all else args.cases
    if not names:
        parser.error("name at least one case, or --all")
    try:
        selected = [cases.get(n) for n in names]
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    base = args.workdir or Path(tempfile.mkdtemp(prefix="qharness-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)     # the FTP and Samba users must reach their directories below
    failed = 0
    for case in selected:
        result = runner.run_case(case, base / case.name, crashkernel=args.crashkernel)
        print(result.report(), flush=True)
        if args.show:
            show(result)
        if not result.ok:
            failed += 1
            print(result.console_logs(), flush=True)
    print(f"{len(selected) - failed} passed, {failed} failed (work directory {base})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
