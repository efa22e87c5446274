"""Benchmark: our collector (capture/save/pycollector.py) against makedumpfile, in the same run.

For each vmcore, compression and dump level, prints the median wall time of
`makedumpfile -F -l -d N VMCORE > FILE` (`-c` for zlib) and of
`python -m capture.save.pycollector -d N [--zlib] [--cpus 2] VMCORE > FILE`
(both write the same flattened stream to a file), their ratio (target <= 3
single process; with --cpus 2 two worker processes compress while the first writes),
and the peak RSS of each run (target <= 60 MB, flat in the dump size:
compare level 0 with level 31, and the big vmcore when present).  The
RSS is the child's own, from wait4(2); with worker processes it is the
largest of the processes, each worker being its own process.

The collector runs the way the capture initrd's launcher starts Python
(`python -S -s`, code on PYTHONPATH, bytecode compiled), start-up included.

    .venv/bin/python bench/pycollector.py [--vmcore PATH ...] [--cases lzo:31,lzo:0,zlib:31] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
FIXTURE = "/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-512M.elf"
BIG = "/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-1280M.elf"
TIME_TARGET = 3.0
RSS_TARGET_MB = 60


def launcher_env() -> dict:
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = dict(os.environ, PYTHONPATH=":".join(dict.fromkeys(paths)))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(cmd: List[str], out: Path, env: dict = None) -> Tuple[float, float, int]:
    """(seconds, peak RSS in MB, output bytes) of ``cmd`` writing its stdout to ``out``."""
    with open(out, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                env=env, cwd="/")
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss / 1024, out.stat().st_size


def median_run(cmd: List[str], out: Path, runs: int, env: dict = None) -> Tuple[float, float, int]:
    results = [run(cmd, out, env) for _ in range(runs)]
    return (statistics.median(r[0] for r in results), max(r[1] for r in results), results[-1][2])


def bench(vmcore: str, compression: str, level: int, runs: int, tmp: Path) -> None:
    env = launcher_env()
    ours = [sys.executable, "-S", "-s", "-m", "capture.save.pycollector", "-d", str(level)]
    flag = "-l"
    if compression == "zlib":
        ours.append("--zlib")
        flag = "-c"
    reference = median_run(["makedumpfile", "-F", flag, "-d", str(level), vmcore], tmp / "mdf.flat", runs)
    single = median_run(ours + [vmcore], tmp / "ours.flat", runs, env)
    double = median_run(ours + ["--cpus", "2", vmcore], tmp / "ours2.flat", runs, env)
    size_mb = os.path.getsize(vmcore) / 1e6
    print(f"{Path(vmcore).name} ({size_mb:.0f} MB), dump level {level}, {compression}, median of {runs}")
    print(f"  makedumpfile -F {flag}      {reference[0]:6.2f} s  {reference[1]:5.1f} MB RSS  "
          f"{reference[2] / 1e6:6.1f} MB out")
    for name, res in (("pycollector cpus=1", single), ("pycollector cpus=2", double)):
        ratio = res[0] / reference[0]
        verdict = "ok" if ratio <= TIME_TARGET and res[1] <= RSS_TARGET_MB else "OVER TARGET"
        print(f"  {name:<22}  {res[0]:6.2f} s  {res[1]:5.1f} MB RSS  {res[2] / 1e6:6.1f} MB out  "
              f"time ratio {ratio:4.2f} (target <= {TIME_TARGET:g}), RSS target <= {RSS_TARGET_MB} MB: {verdict}")


def startup(runs: int) -> float:
    """Median seconds to start the interpreter and import the collector (makedumpfile pays no such cost)."""
    cmd = [sys.executable, "-S", "-s", "-c", "import capture.save.pycollector"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=launcher_env(), cwd="/")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmcore", action="append", help=f"default {FIXTURE} (and {BIG} when present)")
    parser.add_argument("--cases", default="lzo:31,lzo:0,zlib:31", help="COMPRESSION:LEVEL,...")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    vmcores = args.vmcore or [FIXTURE] + ([BIG] if os.path.exists(BIG) else [])
    for vmcore in vmcores:
        if not os.path.exists(vmcore):
            sys.exit(f"{vmcore} not found (the tests decompress the fixture there; bench/big_vmcore.py makes {BIG})")
    print(f"start-up (python -S -s, import capture.save.pycollector): {startup(args.runs):.2f} s, "
          f"included in every pycollector time below")
    with tempfile.TemporaryDirectory(prefix="bench-pycollector-") as tmp:
        for vmcore in vmcores:
            for case in args.cases.split(","):
                compression, level = case.split(":")
                bench(vmcore, compression, int(level), args.runs, Path(tmp))


if __name__ == "__main__":
    main()
