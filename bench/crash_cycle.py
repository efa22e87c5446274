#!/usr/bin/env python3
"""Benchmark: whole crash cycles under QEMU (TCG), kdump-saver against a busybox yardstick.

Part 1, per transport: seconds from the panic to the saved dump (the
console's ``kdump-saver: dump saved`` line, host clock) for file, sftp, ssh,
ftp, cifs and nfs, next to the same span for a minimal busybox +
makedumpfile capture initrd that streams ``makedumpfile -F -c -d 31`` through
``nc`` to 127.0.0.1 (qemu-harness/qharness/reference.py), measured in the same
run; the ratio is ours / reference.

Part 2: the smallest crashkernel= (16 MB steps) at which a 1 GiB guest still
saves through sftp, found by bisection (a size counts only if the dump is
saved and verifies), next to the same figure for the busybox yardstick.
Target: 192 MB or less.

Each guest run takes 1 to 3 minutes on 2 cores; the whole bench about 30 to
40 minutes.  Run as root after qemu-harness/setup.sh:

    .venv/bin/python bench/crash_cycle.py [--transports file,sftp] [--skip-transports]
        [--skip-crashkernel] [--low 64] [--high 320] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu-harness"))

from qharness import cases, reference, runner  # noqa: E402
from qharness.kernel import GuestKernel, discover  # noqa: E402

TRANSPORTS = ("file", "sftp", "ssh", "ftp", "cifs", "nfs")
STEP_MB = 16
TARGET_MB = 192


def transport_times(kernel: GuestKernel, names: Tuple[str, ...], work: Path) -> None:
    size = cases.get("sftp").crashkernel
    ref = reference.crash(kernel, work / "reference", size, label="reference-time")
    ref_s = ref.panic_to_saved
    print(f"{'target':8} {'panic->saved':>13} {'ratio':>7}   (crashkernel={size}, 1 GiB guest)")
    if ref.saved and ref_s:
        print(f"{'busybox':8} {ref_s:12.1f}s {1.0:7.2f}   reference: makedumpfile -F -c -d 31 | nc")
    else:
        print(f"{'busybox':8} {'failed':>13}   {'; '.join(ref.problems)}")
    for name in names:
        case = cases.get(name)
        try:
            result = runner.run_case(case, work / name, kernel=kernel)
        except runner.HarnessError as exc:
            print(f"{name:8} {'error':>13}   {str(exc).splitlines()[0]}")
            continue
        crash = result.crashes[0] if result.crashes else None
        t = crash.panic_to_saved if crash and result.ok else None
        if t is None:
            print(f"{name:8} {'failed':>13}   {result.problems[:2]}")
        else:
            ratio = f"{t / ref_s:7.2f}" if ref_s else "      -"
            print(f"{name:8} {t:12.1f}s {ratio}   {case.description}")
        sys.stdout.flush()


def smallest(saves: Callable[[int], bool], low: int, high: int) -> Optional[int]:
    """The smallest size in [low, high] (multiples of STEP_MB) for which ``saves`` holds,
    assuming more memory never hurts; None if even ``high`` fails."""
    if not saves(high):
        return None
    lo, hi = low // STEP_MB, high // STEP_MB        # invariant: hi saves; below lo untested
    if saves(lo * STEP_MB):
        return lo * STEP_MB
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if saves(mid * STEP_MB):
            hi = mid
        else:
            lo = mid
    return hi * STEP_MB


def crashkernel_sizes(kernel: GuestKernel, work: Path, low: int, high: int) -> None:
    tried: Dict[Tuple[str, int], bool] = {}
    case = cases.get("sftp")
    with runner.Session(case, work / "ck-sftp", kernel) as session:
        def ours(mb: int) -> bool:
            if ("ours", mb) not in tried:
                crash = session.crash(len(session.result.crashes) + 1, f"{mb}M")
                tried[("ours", mb)] = not crash.problems
                print(f"  kdump-saver sftp crashkernel={mb}M: {'saved' if tried[('ours', mb)] else 'FAILED'}"
                      + ("" if tried[("ours", mb)] else f" ({crash.problems[0]})"), flush=True)
            return tried[("ours", mb)]

        ours_mb = smallest(ours, low, high)

    def yardstick(mb: int) -> bool:
        if ("ref", mb) not in tried:
            r = reference.crash(kernel, work / "ck-reference", f"{mb}M", label=f"reference-{mb}")
            tried[("ref", mb)] = r.saved
            print(f"  busybox+makedumpfile crashkernel={mb}M: {'saved' if r.saved else 'FAILED'}", flush=True)
        return tried[("ref", mb)]

    ref_mb = smallest(yardstick, low, high)
    show = (lambda v: f"{v} MB" if v is not None else f"more than {high} MB")
    print(f"smallest crashkernel= for a 1 GiB guest (16 MB steps, {low}..{high} MB):")
    print(f"  kdump-saver through sftp:        {show(ours_mb)}")
    print(f"  busybox + makedumpfile (nc):     {show(ref_mb)}")
    if ours_mb is not None and ref_mb is not None:
        print(f"  ratio: {ours_mb / ref_mb:.2f}; target {TARGET_MB} MB or less: "
              f"{'met' if ours_mb <= TARGET_MB else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--skip-transports", action="store_true")
    p.add_argument("--skip-crashkernel", action="store_true")
    p.add_argument("--low", type=int, default=64, help="MB, a multiple of 16")
    p.add_argument("--high", type=int, default=320, help="MB, a multiple of 16")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--keep", action="store_true", help="keep images, dumps and console logs")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="qharness: %(message)s")
    kernel = discover()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qharness-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    print(f"kernel {kernel.version}; work directory {work}")
    if not args.skip_transports:
        transport_times(kernel, tuple(t for t in args.transports.split(",") if t), work)
    if not args.skip_crashkernel:
        crashkernel_sizes(kernel, work, args.low, args.high)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
