#!/usr/bin/env python3
"""Run end-to-end cases: ``run.py [--workdir DIR] CASE...`` or ``run.py --all``.

Each case boots the production kernel under QEMU, crashes it and checks the
dump kdump-saver saved (see qharness/runner.py).  The ``debian`` cases boot a
real Debian 12 image that arms itself with kdump-saver.service (see
qharness/debian_case.py; the image is built once and cached, see
qharness/debian.py; ``--debian-image`` only builds it).  Prints a verdict per case,
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

from qharness import cases, debian, debian_case, runner  # noqa: E402
from qharness.kernel import discover  # noqa: E402


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


def show_debian(result: debian_case.DebianResult) -> None:
    for status in result.statuses:
        print(f"\n--- kdump-saver status in the guest, boot {status.boot} (exit {status.returncode}):\n"
              f"{status.output}")
    verdict = result.verdict
    if verdict is not None and verdict.directory is not None:
        readme = verdict.directory / "README.txt"
        print(f"\n--- the dump is in {verdict.directory}\n--- {readme}:\n{readme.read_text(errors='replace')}")
        if verdict.crash_summary:
            print(f"--- crash (sys; bt) with the -dbg vmlinux:\n{verdict.crash_summary}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=", ".join(list(cases.BY_NAME) + list(debian_case.BY_NAME)))
    parser.add_argument("--all", action="store_true", help="the whole matrix")
    parser.add_argument("--workdir", type=Path, help="where to keep images, logs and dumps "
                                                     "(default: a new directory under /var/tmp)")
    parser.add_argument("--crashkernel", help="override the case's crashkernel= size, e.g. 176M")
    parser.add_argument("--show", action="store_true",
                        help="print each saved dump's README.txt and crash's summary of it")
    parser.add_argument("--debian-image", action="store_true",
                        help="build (or find cached) the Debian image of the debian cases and say where it is")
    parser.add_argument("--rebuild-image", action="store_true",
                        help="rebuild the Debian image from nothing (debootstrap) before the debian cases")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="qharness: %(message)s")
    if args.debian_image:
        image = debian.ensure_image(discover(), rebuild=args.rebuild_image)
        print(f"Debian image: {image.disk} (kernel {image.kernel}, {image.wheel}, root UUID {image.root_uuid})")
        if image.tree_seconds is not None:
            print(f"  debootstrap tree built in {image.tree_seconds:.0f} s")
        if image.image_seconds is not None:
            print(f"  wheel installed and disk made in {image.image_seconds:.0f} s")
        return 0
    names = list(cases.BY_NAME) + list(debian_case.BY_NAME) if args.all else args.cases
    if not names:
        parser.error("name at least one case, or --all")
    unknown = [n for n in names if n not in cases.BY_NAME and n not in debian_case.BY_NAME]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; cases: "
                     f"{', '.join(list(cases.BY_NAME) + list(debian_case.BY_NAME))}")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="qharness-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)     # the FTP and Samba users must reach their directories below
    failed = 0
    rebuild = args.rebuild_image
    for name in names:
        if name in debian_case.BY_NAME:
            result = debian_case.run_case(debian_case.BY_NAME[name], base / name, rebuild_image=rebuild)
            rebuild = False
            print(result.report(), flush=True)
            if args.show and result.verdict is not None:
                show_debian(result)
        else:
            result = runner.run_case(cases.get(name), base / name, crashkernel=args.crashkernel)
            print(result.report(), flush=True)
            if args.show:
                show(result)
        if not result.ok:
            failed += 1
            print(result.console_logs(), flush=True)
    print(f"{len(names) - failed} passed, {failed} failed (work directory {base})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
