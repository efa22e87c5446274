"""Benchmark: KDUMP_CPUS=2 against one CPU, on the fixture and on the big vmcore.

For each vmcore and case (compression:dump level) the runs are interleaved and
each prints its wall time, CPU time and the ratios measured in the same run:

- ``speed-up``: kdump-saver's collector with one process (`--cpus 1`) over
  the same collector with two worker processes (`--cpus 2`), the parallel
  path KDUMP_CPUS=2 takes with Debian's makedumpfile (target >= 1.6 on the
  big vmcore);
- ``vs makedumpfile``: `makedumpfile -F` single-threaded (what KDUMP_CPUS=1
  runs) over `--cpus 2`;
- ``--split 2``: makedumpfile's own multi-process mode into two files
  followed by `makedumpfile --reassemble` into one standard file (the other
  way to one vmcore; it needs both files on a local disk), over one
  `makedumpfile` run.

Peak memory is sampled from /proc every 50 ms: the writer's RSS and, per
worker, its private memory (USS: what forking cost on top of the shared
pages) and RSS.  Other jobs sharing the cores make wall times noisy, so
each run also prints a CPU-bound estimate of the wall time on idle cores
and its ratios: for `--cpus 2`, the CPU seconds before the workers start
(interpreter, page classification) plus, for the rest, the busiest
process's CPU seconds or all of them spread over the cores, whichever is
more (the collector logs the writer's and each worker's); for one process
its CPU seconds.

    .venv/bin/python bench/parallel.py [--vmcore PATH ...] [--cases lzo:31,lzo:1,zlib:31] [--runs N]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pycollector import BIG, FIXTURE, launcher_env  # noqa: E402  (bench/pycollector.py)

MDF_FLAGS = {"lzo": "-l", "zlib": "-c"}


class MemorySampler(threading.Thread):
    """Largest RSS of ``pid`` and largest USS and RSS of any of its children while it runs (MB)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = {"writer_rss": 0.0, "worker_uss": 0.0, "worker_rss": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self._sample("writer_rss", None, self.pid)
            try:
                with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for kid in kids:
                self._sample("worker_rss", "worker_uss", kid)

    def _sample(self, rss_key: str, uss_key, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.rstrip().endswith("kB")}
        except (OSError, ValueError, IndexError):
            return
        self.peak[rss_key] = max(self.peak[rss_key], fields.get("Rss", 0) / 1024)
        if uss_key:
            uss = (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024
            self.peak[uss_key] = max(self.peak[uss_key], uss)


def timed(cmd: List[str], out: Path, env: dict = None, sample: bool = False) -> Tuple[float, float, Dict, float]:
    """(wall seconds, CPU seconds of the process and its reaped children, memory peaks, CPU-bound
    estimate of the wall time on idle cores) of ``cmd`` > ``out``."""
    with open(out, "wb") as sink, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd="/")
        sampler = MemorySampler(proc.pid)
        if sample:
            sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.stop.set()
        err.seek(0)
        messages = err.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{messages[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    found = re.search(r"CPU seconds: ([0-9.]+) in this process before the workers started, ([0-9.]+) writing; "
                      r"worker processes used ([0-9., ]+)", messages)
    if not found:
        return wall, cpu, sampler.peak, cpu
    serial, writing = float(found.group(1)), float(found.group(2))
    workers = [float(x) for x in found.group(3).split(",")]
    parallel = [writing] + workers
    return wall, cpu, sampler.peak, serial + max(max(parallel), sum(parallel) / (os.cpu_count() or 1))


def split_and_reassemble(vmcore: str, compression: str, level: int, tmp: Path) -> Tuple[float, float]:
    """makedumpfile --split into two files, then --reassemble them: (wall seconds, CPU seconds)."""
    parts = [tmp / "split1", tmp / "split2"]
    start = time.perf_counter()
    cpu = 0.0
    for cmd in (["makedumpfile", MDF_FLAGS[compression], "-d", str(level), "--split", vmcore, *map(str, parts)],
                ["makedumpfile", "--reassemble", *map(str, parts), str(tmp / "merged")]):
        for p in [tmp / "merged"] if "--reassemble" in cmd else parts:
            p.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed: {' '.join(cmd)}")
        cpu += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start, cpu


def bench(vmcore: str, compression: str, level: int, runs: int, tmp: Path) -> None:
    env = launcher_env()
    ours = [sys.executable, "-S", "-s", "-m", "capture.save.pycollector", "-d", str(level)]
    if compression == "zlib":
        ours.append("--zlib")
    mdf = ["makedumpfile", "-F", MDF_FLAGS[compression], "-d", str(level), vmcore]
    size_mb = os.path.getsize(vmcore) / 1e6
    print(f"{Path(vmcore).name} ({size_mb:.0f} MB), {compression}, dump level {level}: {runs} runs, interleaved")
    print("  run  makedumpfile   ours cpus=1    ours cpus=2    speed-up  vs makedumpfile  --split 2+reassemble"
          "   CPU-bound: speed-up  vs makedumpfile")
    results: Dict[str, List] = {"mdf": [], "one": [], "two": [], "split": []}
    for n in range(runs):
        results["mdf"].append(timed(mdf, tmp / "mdf.flat"))
        results["one"].append(timed(ours + ["--cpus", "1", vmcore], tmp / "one.flat", env, sample=True))
        results["two"].append(timed(ours + ["--cpus", "2", vmcore], tmp / "two.flat", env, sample=True))
        results["split"].append(split_and_reassemble(vmcore, compression, level, tmp))
        if (tmp / "one.flat").read_bytes() != (tmp / "two.flat").read_bytes():
            sys.exit("the --cpus 2 stream differs from the --cpus 1 stream")
        m, one, two, split = (results[k][-1] for k in ("mdf", "one", "two", "split"))
        print(f"  {n + 1:>3}  {m[0]:5.2f}s/{m[1]:4.1f}c  {one[0]:5.2f}s/{one[1]:4.1f}c  {two[0]:5.2f}s/{two[1]:4.1f}c  "
              f"{one[0] / two[0]:8.2f}  {m[0] / two[0]:15.2f}  {split[0]:5.2f}s/{split[1]:4.1f}c "
              f"({m[0] / split[0]:.2f}x makedumpfile)  {one[3] / two[3]:9.2f}  {m[1] / two[3]:15.2f}")
    med = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    bound = {k: statistics.median(r[3] for r in results[k]) for k in ("one", "two")}
    mdf_cpu = statistics.median(r[1] for r in results["mdf"])
    peaks = results["two"][-1][2]
    print(f"  median: speed-up {med['one'] / med['two']:.2f} (target >= 1.6), vs makedumpfile "
          f"{med['mdf'] / med['two']:.2f}, --split 2 + reassemble vs makedumpfile {med['mdf'] / med['split']:.2f}; "
          f"throughput cpus=1 {size_mb / med['one']:.0f} MB/s, cpus=2 {size_mb / med['two']:.0f} MB/s")
    print(f"  median CPU-bound estimate (idle cores): cpus=1 {bound['one']:.2f} s, cpus=2 {bound['two']:.2f} s, "
          f"speed-up {bound['one'] / bound['two']:.2f}; makedumpfile {mdf_cpu:.2f} CPU s, "
          f"{mdf_cpu / bound['two']:.2f}x of cpus=2")
    print(f"  memory (cpus=2, last run): writer RSS {peaks['writer_rss']:.1f} MB, per worker USS "
          f"{peaks['worker_uss']:.1f} MB (RSS {peaks['worker_rss']:.1f} MB); cpus=1 RSS "
          f"{results['one'][-1][2]['writer_rss']:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmcore", action="append", help=f"default {FIXTURE} and {BIG}")
    parser.add_argument("--cases", default="lzo:31,lzo:1,zlib:31", help="COMPRESSION:LEVEL,...")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    vmcores = args.vmcore or [FIXTURE, BIG]
    for vmcore in vmcores:
        if not os.path.exists(vmcore):
            sys.exit(f"{vmcore} not found (the tests decompress the fixture there; bench/big_vmcore.py makes {BIG})")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"s = wall seconds, c = CPU seconds")
    with tempfile.TemporaryDirectory(prefix="bench-parallel-", dir="/var/tmp") as tmp:
        for vmcore in vmcores:
            subprocess.run(["cat", vmcore], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
            for case in args.cases.split(","):
                compression, level = case.split(":")
                bench(vmcore, compression, int(level), args.runs, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
