#!/usr/bin/env python3
"""Python start-up inside a capture initrd: CPU time of the saver's hot path.

Builds the capture initrd of one target kind (default sftp) with
``kdump-saver build-initrd``, unpacks it keeping the files' times as the
kernel does (``CONFIG_INITRAMFS_PRESERVE_MTIME``), and runs, chrooted into
it with the initrd's own interpreter and PYTHONPATH, each of:

- the interpreter alone (``-S -s -c pass``): the reference of the same run;
- ``kdump-saver capture-boot --help`` through the launcher;
- the imports of ``capture-boot`` (cli, commands.capture_boot, save.boot);
- those plus the target's transport module (transports.sftp with its SFTP client for sftp).

It prints the least user+system CPU time of N runs of each (CPU time, not
wall time: the machine is shared) and its ratio to the interpreter alone.
``-X importtime`` of the last one is written next to the figures with
``--importtime FILE``.  Needs root (chroot, mounts).

Usage: .venv/bin/python bench/initrd_startup.py [--kind sftp] [--runs 11] [--importtime FILE]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from initrd_size import configs, kernel_version  # noqa: E402

TRANSPORT = {"file": "transports.file", "sftp": "transports.sftp", "ssh": "transports.ssh",
             "ftp": "transports.ftp", "cifs": "transports.cifs", "nfs": "transports.nfs"}


def build_and_unpack(kind: str, tmp: Path) -> Path:
    conf = tmp / f"{kind}.conf"
    conf.write_text(configs(tmp)[kind])
    image = tmp / "initrd"
    subprocess.run([sys.executable, "-m", "capture.cli", "build-initrd", "--config", str(conf),
                    "--kernel", kernel_version(), "--output", str(image)], cwd=REPO, check=True)
    root = tmp / "root"
    root.mkdir()
    # the kernel keeps the archive's mtimes; lsinitrd --unpack would not
    with open(image, "rb") as f:
        tool = "zstd" if f.read(4) == b"\x28\xb5\x2f\xfd" else "xz"
        f.seek(0)
        unpacked = subprocess.run(["sh", "-c", f"{tool} -dc | cpio -idm --quiet"], stdin=f, cwd=root)
    if unpacked.returncode != 0:
        sys.exit(f"cannot unpack the initrd ({tool} and cpio are needed)")
    return root


def cpu_ms(root: Path, argv: List[str], env: Dict[str, str], runs: int) -> float:
    """The least user+system CPU time of ``runs`` runs of ``argv`` chrooted in ``root``."""
    def enter() -> None:
        os.chroot(root)
        os.chdir("/")

    best = float("inf")
    for _ in range(runs):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env, preexec_fn=enter)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            sys.exit(f"{' '.join(argv)} failed in the initrd (status {status})")
        best = min(best, usage.ru_utime + usage.ru_stime)
    return best * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="sftp", choices=sorted(TRANSPORT))
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--importtime", help="write -X importtime of the whole hot path here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (chroot)")
    with tempfile.TemporaryDirectory(prefix="kdump-startup-bench.") as t:
        root = build_and_unpack(args.kind, Path(t))
        launcher = (root / "usr/bin/kdump-saver").read_text()
        python = re.search(r"^exec (\S+) ", launcher, re.M).group(1)  # type: ignore[union-attr]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": re.search(r"^PYTHONPATH=(\S+)", launcher, re.M).group(1)}  # type: ignore[union-attr]
        hot = "import capture.cli, capture.commands.capture_boot, capture.save.boot"
        cases = [("interpreter alone", [python, "-S", "-s", "-c", "pass"]),
                 ("kdump-saver capture-boot --help", ["/usr/bin/kdump-saver", "capture-boot", "--help"]),
                 ("capture-boot imports", [python, "-S", "-s", "-c", hot]),
                 (f"+ {TRANSPORT[args.kind]}", [python, "-S", "-s", "-c", f"{hot}, {TRANSPORT[args.kind]}"])]
        subprocess.run(["mount", "--bind", "/dev", str(root / "dev")], check=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        try:
            figures = [(name, cpu_ms(root, argv, env, args.runs)) for name, argv in cases]
            if args.importtime:
                trace = subprocess.run([*cases[-1][1][:3], "-X", "importtime", *cases[-1][1][3:]], env=env,
                                       preexec_fn=lambda: (os.chroot(root), os.chdir("/")),
                                       capture_output=True, text=True)
                Path(args.importtime).write_text(trace.stderr)
        finally:
            subprocess.run(["umount", str(root / "proc")], check=False)
            subprocess.run(["umount", str(root / "dev")], check=False)
    reference = figures[0][1]
    print(f"{args.kind} initrd, CPU time (user+system), least of {args.runs} runs, chrooted:")
    for name, ms in figures:
        print(f"  {name:40} {ms:7.1f} ms  {ms / reference:5.1f}x the interpreter alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
