"""Benchmark: `kdump-saver save` to a local directory against makedumpfile alone.

Prints, for the fixture vmcore, the wall time of our save (lzo, dump level 31)
next to `makedumpfile -l -d 31 VMCORE OUT` measured in the same run, as a
ratio (target <= 1.10), and the peak RSS of the Python process (target
<= 60 MB) for outputs of growing size, which must not grow with the dump.

    .venv/bin/python bench/save_local.py [--vmcore PATH] [--runs N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VMCORE = "/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-512M.elf"

# Runs the CLI in-process and reports this process's own peak RSS (children excluded).
RUNNER = """
import json, resource, sys
from capture.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def timed(cmd, **kw) -> tuple:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return elapsed, res


def ours(vmcore: str, fmt: str, level: int, out: Path) -> tuple:
    conf = out / "kdump.conf"
    conf.write_text(f'KDUMP_DUMPFORMAT="{fmt}"\nKDUMP_DUMPLEVEL="{level}"\nKDUMP_FREE_DISK_SIZE="64"\n')
    elapsed, res = timed([sys.executable, "-c", RUNNER, "save", "--config", str(conf), "--vmcore", vmcore,
                          "--savedir", str(out / "dumps")], cwd=REPO)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    return elapsed, report["maxrss_kb"] / 1024


def reference(vmcore: str, out: Path, level: int = 31) -> float:
    target = out / "direct"
    elapsed, _ = timed(["makedumpfile", "-l", "-d", str(level), vmcore, str(target)])
    return elapsed


def compare(vmcore: str, level: int, runs: int) -> tuple:
    """Median seconds of makedumpfile alone and of our save, alternating runs."""
    mine, ref, rss = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            ref.append(reference(vmcore, Path(tmp), level))
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            t, r = ours(vmcore, "lzo", level, Path(tmp))
            mine.append(t)
            rss.append(r)
    return statistics.median(ref), statistics.median(mine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmcore", default=DEFAULT_VMCORE)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(args.vmcore):
        sys.exit(f"{args.vmcore} not found: run the tests once (they decompress the fixture) or pass --vmcore")
    subprocess.run(["cat", args.vmcore], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    # an installed package runs from bytecode; an editable checkout may not have it yet
    subprocess.run([sys.executable, "-m", "compileall", "-q", "capture", "transports"], cwd=REPO, check=True)

    print(f"vmcore: {args.vmcore} ({os.path.getsize(args.vmcore) / 1e6:.0f} MB), {args.runs} runs, medians")
    for level in (31, 0):
        r, m = compare(args.vmcore, level, args.runs)
        print(f"makedumpfile -l -d {level:<2} VMCORE OUT : {r:6.2f} s")
        print(f"kdump-saver save (lzo, -d {level:<2})     : {m:6.2f} s  "
              "(with python start-up, dmesg extraction, fsync, sha256 read-back)")
        print(f"ratio                             : {m / r:6.2f}  (target <= 1.10)")
    print()
    print("peak RSS of the Python process by size of the saved file (target <= 60 MB, flat in size):")
    for fmt, level in (("lzo", 31), ("lzo", 0), ("elf", 0), ("raw", 0)):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            t, peak = ours(args.vmcore, fmt, level, Path(tmp))
            size = sum(p.stat().st_size for p in Path(tmp, "dumps").rglob("vmcore*"))
        print(f"  {fmt:>4} -d {level:<2}: saved {size / 1e6:7.1f} MB in {t:5.2f} s, peak RSS {peak:5.1f} MB")


if __name__ == "__main__":
    main()
