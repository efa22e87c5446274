#!/usr/bin/env python3
"""Benchmark: whole crash cycles under QEMU (TCG), kdump-saver against C-tools yardsticks.

Part 1, per transport: seconds from the panic to the saved dump (the
console's ``kdump-saver: dump saved`` line, host clock) for file, sftp, ssh,
ftp, cifs and nfs, next to the same span for that transport's yardstick
measured in the same run: a minimal busybox + makedumpfile capture initrd
with the C client an administrator would use (qemu-harness/qharness/yardsticks.py:
makedumpfile to the same ext4 disk; piped into OpenSSH's ssh for sftp and ssh;
busybox ftpput; the kernel's NFS and SMB clients mounted by busybox), saving
to the same server through the same guestfwd, with the same compression as
the case.  The ratio is ours / yardstick (target: 1.3 or less).

Part 2: the smallest crashkernel= (16 MB steps) at which a 1 GiB guest still
saves through each of ``--ck-transports`` (default sftp), found by bisection
(a size counts only if the dump is saved and verifies), next to the same
figure for that transport's yardstick.  ``--append ARGS`` puts ARGS in
KDUMP_COMMANDLINE_APPEND (to measure capture command-line arguments).

Each guest run takes 1 to 3 minutes on 2 cores.  Run as root after
qemu-harness/setup.sh, under the QEMU lock, one transport at a time:

    flock /var/tmp/kdump-saver-qemu.lock .venv/bin/python bench/crash_cycle.py \\
        [--transports file,sftp] [--skip-transports] [--skip-crashkernel] [--no-yardstick]
        [--ck-transports sftp,file] [--append 'cgroup_disable=memory'] [--low 64] [--high 320] [--trust-high]
        [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu-harness"))

from qharness import cases, reference, runner, yardsticks  # noqa: E402
from qharness.kernel import GuestKernel, discover  # noqa: E402

TRANSPORTS = ("file", "sftp", "ssh", "ftp", "cifs", "nfs")
STEP_MB = 16


def yardstick_of(case: cases.Case) -> Tuple[str, str]:
    """(yardstick transport, KDUMP_DUMPFORMAT) that match ``case``."""
    return yardsticks.FOR_CASE[case.scheme], case.extra_settings.get("KDUMP_DUMPFORMAT", "compressed")


def with_append(case: cases.Case, append: str) -> cases.Case:
    """``case`` with KDUMP_COMMANDLINE_APPEND set to ``append`` (unchanged when empty)."""
    if not append:
        return case
    return dataclasses.replace(case, settings=case.settings + (("KDUMP_COMMANDLINE_APPEND", append),))


def load() -> str:
    """The host's load average: other jobs on the shared cores slow TCG guests down."""
    return f"; host load {os.getloadavg()[0]:.1f}"


def transport_times(kernel: GuestKernel, names: Tuple[str, ...], work: Path, append: str = "",
                    yardstick: bool = True) -> None:
    print(f"{'target':8} {'panic->saved':>13} {'ratio':>7}   (1 GiB guest; ratio = ours / yardstick)")
    for name in names:
        case = with_append(cases.get(name), append)
        ref_s: Optional[float] = None
        if yardstick:
            transport, fmt = yardstick_of(case)
            ref = reference.crash(kernel, work / f"yardstick-{name}", case.crashkernel,
                                  label=f"yardstick-{name}", transport=transport, dumpformat=fmt)
            what = f"yardstick {transport} ({fmt}, crashkernel={case.crashkernel}){load()}"
            if ref.saved and ref.panic_to_saved:
                ref_s = ref.panic_to_saved
                print(f"{'  C-tools':8} {ref_s:12.1f}s {1.0:7.2f}   {what}")
            else:
                print(f"{'  C-tools':8} {'failed':>13}   {what}: {'; '.join(ref.problems)}")
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
            print(f"{name:8} {t:12.1f}s {ratio}   {case.description}{load()}")
        sys.stdout.flush()


def smallest(saves: Callable[[int], bool], low: int, high: int, trust_high: bool = False) -> Optional[int]:
    """The smallest size in [low, high] (multiples of STEP_MB) for which ``saves`` holds,
    assuming more memory never hurts; None if even ``high`` fails (``trust_high``: ``high``
    is known to save from an earlier run and is not tried again)."""
    if not trust_high and not saves(high):
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


def ours_smallest(kernel: GuestKernel, work: Path, case: cases.Case, low: int, high: int,
                  trust_high: bool) -> Optional[int]:
    """kdump-saver's smallest crashkernel= for ``case`` (one capture initrd, one crash per size)."""
    tried: Dict[int, bool] = {}
    with runner.Session(case, work / f"ck-{case.name}", kernel) as session:
        def ours(mb: int) -> bool:
            if mb not in tried:
                crash = session.crash(len(session.result.crashes) + 1, f"{mb}M")
                tried[mb] = not crash.problems
                print(f"  kdump-saver {case.name} crashkernel={mb}M: {'saved' if tried[mb] else 'FAILED'}"
                      + ("" if tried[mb] else f" ({crash.problems[0]})"), flush=True)
            return tried[mb]

        return smallest(ours, low, high, trust_high)


def crashkernel_sizes(kernel: GuestKernel, work: Path, name: str, low: int, high: int,
                      append: str = "", yardstick: bool = True, trust_high: bool = False,
                      ours_too: bool = True) -> None:
    tried: Dict[Tuple[str, int], bool] = {}
    case = with_append(cases.get(name), append)
    ours_mb = ours_smallest(kernel, work, case, low, high, trust_high) if ours_too else None
    transport, fmt = yardstick_of(case)

    def reference_saves(mb: int) -> bool:
        if ("ref", mb) not in tried:
            r = reference.crash(kernel, work / f"ck-yardstick-{name}-{mb}", f"{mb}M", label=f"yardstick-{mb}",
                                transport=transport, dumpformat=fmt)
            tried[("ref", mb)] = r.saved
            print(f"  yardstick {transport} crashkernel={mb}M: {'saved' if r.saved else 'FAILED'}", flush=True)
        return tried[("ref", mb)]

    ref_mb = smallest(reference_saves, low, high, trust_high) if yardstick else None
    show = (lambda v: f"{v} MB" if v is not None else f"more than {high} MB")
    print(f"smallest crashkernel= for a 1 GiB guest (16 MB steps, {low}..{high} MB)"
          + (f", KDUMP_COMMANDLINE_APPEND={append!r}" if append else "") + ":")
    if ours_too:
        print(f"  kdump-saver through {name}: {show(ours_mb)}")
    if yardstick:
        print(f"  yardstick {transport} ({fmt}): {show(ref_mb)}")
    if ours_mb is not None and ref_mb is not None:
        print(f"  ratio: {ours_mb / ref_mb:.2f}; difference {ours_mb - ref_mb} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--skip-transports", action="store_true")
    p.add_argument("--skip-crashkernel", action="store_true")
    p.add_argument("--low", type=int, default=64, help="MB, a multiple of 16")
    p.add_argument("--high", type=int, default=320, help="MB, a multiple of 16")
    p.add_argument("--ck-transports", default="sftp", help="cases whose smallest crashkernel= is sought")
    p.add_argument("--append", default="", help="KDUMP_COMMANDLINE_APPEND for our cases")
    p.add_argument("--trust-high", action="store_true", help="--high is known to save: do not try it")
    p.add_argument("--only-yardstick", action="store_true", help="crashkernel=: measure only the yardstick")
    p.add_argument("--no-yardstick", action="store_true", help="measure only kdump-saver")
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
        transport_times(kernel, tuple(t for t in args.transports.split(",") if t), work, args.append,
                        not args.no_yardstick)
    if not args.skip_crashkernel:
        for name in (t for t in args.ck_transports.split(",") if t):
            crashkernel_sizes(kernel, work, name, args.low, args.high, args.append, not args.no_yardstick,
                              args.trust_high, not args.only_yardstick)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
