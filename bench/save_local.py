"""Benchmark: `kdump-saver save` to a local directory against makedumpfile alone.

Prints, for the fixture vmcore, the wall time of our save (lzo, dump levels 31
and 0) next to `makedumpfile -l -d N VMCORE OUT` measured in the same run, as a
ratio (target <= 1.10), and the peak RSS of the Python process (target
<= 60 MB) for outputs of growing size, which must not grow with the dump.

Two more lines explain the ratio.  "floor" is the least any saver must do
beyond makedumpfile alone to meet the core-saver issue, done with C tools
and no Python: extract the kernel log first, write the dump, sha256 it and
make both durable (`makedumpfile --dump-dmesg`, `makedumpfile -l`, `openssl
dgst -sha256`, `sync FILES`).  "start-up" is the interpreter starting and
importing the save command, which makedumpfile does not pay.

The saver runs the way the capture initrd's launcher starts it
(`python -S -s`, the code found through PYTHONPATH, bytecode compiled).
With --big (made by bench/big_vmcore.py, a real vmcore over twice the
fixture's size) the same figures are printed for that vmcore too.

    .venv/bin/python bench/save_local.py [--vmcore PATH] [--big [PATH]] [--runs N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VMCORE = "/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-512M.elf"
BIG_VMCORE = "/var/tmp/kdump-saver-fixtures/vmcore-6.1-cloud-1280M.elf"

# Runs the CLI in-process and reports this process's own peak RSS (children excluded).
RUNNER = """
import json, resource, sys
from capture.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def launcher_env() -> dict:
    """The environment of the capture initrd's launcher: our code and the
    third-party packages on PYTHONPATH, no site initialisation."""
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = dict(os.environ, PYTHONPATH=":".join(dict.fromkeys(paths)))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(cmd, **kw) -> tuple:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return elapsed, res


def ours(vmcore: str, fmt: str, level: int, out: Path, cpus: Optional[int] = None) -> tuple:
    conf = out / "kdump.conf"
    conf.write_text(f'KDUMP_DUMPFORMAT="{fmt}"\nKDUMP_DUMPLEVEL="{level}"\nKDUMP_FREE_DISK_SIZE="64"\n'
                    + (f'KDUMP_CPUS="{cpus}"\n' if cpus is not None else ""))
    elapsed, res = timed([sys.executable, "-S", "-s", "-c", RUNNER, "save", "--config", str(conf),
                          "--vmcore", vmcore, "--savedir", str(out / "dumps")], cwd="/", env=launcher_env())
    report = json.loads(res.stdout.strip().splitlines()[-1])
    return elapsed, report["maxrss_kb"] / 1024


def reference(vmcore: str, out: Path, level: int) -> float:
    elapsed, _ = timed(["makedumpfile", "-l", "-d", str(level), vmcore, str(out / "direct")])
    return elapsed


def floor(vmcore: str, out: Path, level: int) -> float:
    """makedumpfile plus the work the issue requires of any saver, in C tools."""
    dmesg, dump = out / "dmesg.txt", out / "vmcore"
    digest = ["openssl", "dgst", "-sha256"] if shutil.which("openssl") else ["sha256sum"]
    start = time.perf_counter()
    for cmd in (["makedumpfile", "--dump-dmesg", vmcore, str(dmesg)], ["sync", str(dmesg)],
                ["makedumpfile", "-l", "-d", str(level), vmcore, str(dump)],
                digest + [str(dump)], ["sync", str(dump)]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def startup() -> float:
    """Interpreter start and the imports of the save command, nothing run."""
    elapsed, _ = timed([sys.executable, "-S", "-s", "-c", "import capture.cli, capture.commands.save"],
                       cwd="/", env=launcher_env())
    return elapsed


def compare(vmcore: str, level: int, runs: int, cpus: Optional[int]) -> dict:
    """Median seconds of each measurement, the runs interleaved."""
    times: dict = {"makedumpfile": [], "floor": [], "start-up": [], "kdump-saver": []}
    for _ in range(runs):
        for name, measure in (("makedumpfile", lambda d: reference(vmcore, d, level)),
                              ("floor", lambda d: floor(vmcore, d, level)),
                              ("start-up", lambda d: startup()),
                              ("kdump-saver", lambda d: ours(vmcore, "lzo", level, d, cpus)[0])):
            with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
                times[name].append(measure(Path(tmp)))
    return {name: statistics.median(values) for name, values in times.items()}


def report(vmcore: str, runs: int, cpus: Optional[int] = None) -> None:
    subprocess.run(["cat", vmcore], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    print(f"vmcore: {vmcore} ({os.path.getsize(vmcore) / 1e6:.0f} MB), {runs} runs, medians, "
          f"KDUMP_CPUS={'default' if cpus is None else cpus} ({os.cpu_count()} CPUs online)")
    for level in (31, 0):
        m = compare(vmcore, level, runs, cpus)
        ref = m["makedumpfile"]
        print(f"  makedumpfile -l -d {level:<2} VMCORE OUT   : {ref:6.3f} s")
        print(f"  floor (dmesg, sha256, sync; C tools): {m['floor']:6.3f} s  ratio {m['floor'] / ref:5.2f}")
        print(f"  python start-up and imports         : {m['start-up']:6.3f} s  "
              f"(+{m['start-up'] / ref:4.2f} of the reference)")
        print(f"  kdump-saver save (lzo, -d {level:<2})       : {m['kdump-saver']:6.3f} s  "
              f"ratio {m['kdump-saver'] / ref:5.2f}  (target <= 1.10), {m['kdump-saver'] / m['floor']:5.2f} "
              f"of the floor (target <= 1.05)")
    print("  peak RSS of the Python process by size of the saved file (target <= 60 MB, flat in size):")
    for fmt, level in (("lzo", 31), ("lzo", 0), ("elf", 0), ("raw", 0)):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            t, peak = ours(vmcore, fmt, level, Path(tmp), cpus)
            size = sum(p.stat().st_size for p in Path(tmp, "dumps").rglob("vmcore*"))
        print(f"    {fmt:>4} -d {level:<2}: saved {size / 1e6:7.1f} MB in {t:5.2f} s, peak RSS {peak:5.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmcore", default=DEFAULT_VMCORE)
    ap.add_argument("--big", nargs="?", const=BIG_VMCORE, metavar="PATH",
                    help=f"also measure a vmcore over twice as large (default {BIG_VMCORE})")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpus", type=int, help="KDUMP_CPUS for the saves (default: not set, the option's default)")
    args = ap.parse_args()
    for path, hint in ((args.vmcore, "run the tests once (they decompress the fixture) or pass --vmcore"),
                       (args.big, "make it with bench/big_vmcore.py")):
        if path and not os.path.exists(path):
            sys.exit(f"{path} not found: {hint}")
    # the capture initrd carries bytecode; an editable checkout may not have it yet
    subprocess.run([sys.executable, "-m", "compileall", "-q", "capture", "transports"], cwd=REPO, check=True,
                   env=launcher_env())
    report(args.vmcore, args.runs, args.cpus)
    if args.big:
        print()
        report(args.big, max(1, args.runs // 2), args.cpus)


if __name__ == "__main__":
    main()
