"""Benchmark: the kernel log by capture/formats/printk.py against `makedumpfile --dump-dmesg`.

For each fixture vmcore, measured in the same run (median of --runs):

- `makedumpfile --dump-dmesg VMCORE OUT`, a process;
- our extractor as a process started the way the capture initrd's launcher
  starts the saver (`python -S -s`), writing the same file: the fair
  comparison, interpreter start-up included;
- our extractor in-process (ElfCore.open + extract_dmesg), what the saver
  pays when it calls it after makedumpfile failed.

It prints the times, the ratios against makedumpfile, the peak RSS of our
process, and whether the two outputs are byte for byte equal.

    .venv/bin/python bench/dmesg.py [--runs N] [VMCORE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CACHE = Path(os.environ.get("KDUMP_SAVER_FIXTURE_CACHE", "/var/tmp/kdump-saver-fixtures"))
DEFAULT_VMCORES = [CACHE / "vmcore-6.1-cloud-512M.elf", CACHE / "vmcore-6.12-cloud-512M.elf"]

EXTRACT = """
import json, resource, sys, time
start = time.perf_counter()
from capture.formats.elfcore import ElfCore
from capture.formats.printk import extract_dmesg
with ElfCore.open(sys.argv[1]) as core:
    log = extract_dmesg(core)
with open(sys.argv[2], "wb") as f:
    f.write(log)
print(json.dumps({"inner_s": time.perf_counter() - start,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def launcher_env() -> dict:
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return dict(os.environ, PYTHONPATH=":".join(dict.fromkeys(paths)))


def timed(cmd: list, **kw) -> tuple:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {res.stdout}{res.stderr}")
    return elapsed, res.stdout


def in_process(vmcore: Path) -> float:
    from capture.formats.elfcore import ElfCore
    from capture.formats.printk import extract_dmesg
    start = time.perf_counter()
    with ElfCore.open(str(vmcore)) as core:
        extract_dmesg(core)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("vmcores", nargs="*", type=Path, default=DEFAULT_VMCORES)
    args = parser.parse_args()
    makedumpfile = "/usr/sbin/makedumpfile" if os.path.exists("/usr/sbin/makedumpfile") else "makedumpfile"
    env = launcher_env()
    with tempfile.TemporaryDirectory(prefix="bench-dmesg-") as tmp:
        for vmcore in args.vmcores:
            if not vmcore.exists():
                print(f"{vmcore}: missing (the tests decompress the fixtures into {CACHE})")
                continue
            ref, ours = Path(tmp, "makedumpfile.txt"), Path(tmp, "ours.txt")
            mdf_t, proc_t, inproc_t, rss = [], [], [], 0
            for _ in range(args.runs):
                ref.unlink(missing_ok=True)
                mdf_t.append(timed([makedumpfile, "--dump-dmesg", str(vmcore), str(ref)])[0])
                elapsed, out = timed([sys.executable, "-S", "-s", "-c", EXTRACT, str(vmcore), str(ours)], env=env)
                proc_t.append(elapsed)
                rss = max(rss, json.loads(out.strip().splitlines()[-1])["maxrss_kb"])
                inproc_t.append(in_process(vmcore))
            mdf, proc, inproc = (statistics.median(x) for x in (mdf_t, proc_t, inproc_t))
            same = ref.read_bytes() == ours.read_bytes()
            print(f"{vmcore.name}: {ours.stat().st_size} bytes, identical to makedumpfile: {same}")
            print(f"  makedumpfile --dump-dmesg   {mdf * 1000:8.1f} ms")
            print(f"  ours, python -S -s process  {proc * 1000:8.1f} ms  ratio {proc / mdf:5.2f}  peak RSS {rss / 1024:.1f} MB")
            print(f"  ours, in-process            {inproc * 1000:8.1f} ms  ratio {inproc / mdf:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
