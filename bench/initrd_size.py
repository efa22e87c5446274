#!/usr/bin/env python3
"""Capture initrd size per target kind: compressed, unpacked, Python share,
and the standard-library modules inside.

Builds one initrd per kind (file, sftp, ssh, ftp, cifs, nfs) with
``kdump-saver build-initrd`` for the installed kernel, unpacks it and
measures it.  The reference measured in the same run is the interpreter's
whole standard library without its tests (what copying "the stdlib" would
carry, unstripped); the printed ratio is the traced closure's stdlib, as
stripped by dracut inside the initrd, against it.  The lab reference (busybox
+ makedumpfile + CPython 3.11 with the closure of paramiko, pysmb, lz4 and
python-lzo: 54 MB unpacked, 13.3 MB xz) is printed beside it.  Targets
for sftp: under 25 MB compressed, at most 35 MB unpacked (the unpacked
initrd is what the capture kernel's memory holds).

Usage: .venv/bin/python bench/initrd_size.py [--kinds file,sftp,...] [--compress xz] [--list-modules]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capture.config import options as configuration  # noqa: E402
from capture.config import targeturl  # noqa: E402
from capture.host import initrd  # noqa: E402

KINDS = ("file", "sftp", "ssh", "ftp", "cifs", "nfs")
LAB_UNPACKED_MB = 54.0
LAB_XZ_MB = 13.3


def kernel_version() -> str:
    mods = sorted(p.name for p in Path("/lib/modules").iterdir() if (p / "modules.dep").exists())
    cloud = [v for v in mods if v.endswith("-cloud-amd64")]
    if not (cloud or mods):
        sys.exit("no kernel under /lib/modules (install linux-image-cloud-amd64)")
    return (cloud or mods)[-1]


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def configs(tmp: Path) -> Dict[str, str]:
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host_key = " ".join((tmp / "id_ed25519.pub").read_text().split()[:2])  # any valid key: not contacted
    ssh = f'KDUMP_SSH_IDENTITY={key}\nKDUMP_HOST_KEY="{host_key}"\n'
    savedir = tmp / "crash"
    savedir.mkdir()
    return {
        "file": f"KDUMP_SAVEDIR={savedir}\n",
        "sftp": f"KDUMP_SAVEDIR=sftp://kdump@127.0.0.1/dumps\n{ssh}",
        "ssh": f"KDUMP_SAVEDIR=ssh://kdump@127.0.0.1/dumps\n{ssh}",
        "ftp": "KDUMP_SAVEDIR=ftp://127.0.0.1/dumps\n",
        "cifs": "KDUMP_SAVEDIR=cifs://kdump@127.0.0.1/dumps/crash\n",
        "nfs": "KDUMP_SAVEDIR=nfs://127.0.0.1/dumps\n",
    }


def whole_stdlib(stdlib: str) -> Tuple[float, int]:
    """MB and .py count of the interpreter's standard library, without its
    test suite and without site-packages (what a plain copy would carry)."""
    total = count = 0
    for dirpath, dirnames, files in os.walk(stdlib):
        if dirpath == stdlib:
            dirnames[:] = [d for d in dirnames if d not in ("site-packages", "test")]
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
                count += f.endswith(".py")
    return total / 2**20, count


def measure(kind: str, conf_text: str, tmp: Path, kernel: str, compress: str) -> Tuple[Dict[str, float], List[str]]:
    conf = tmp / f"{kind}.conf"
    conf.write_text(conf_text)
    cfg = configuration.load(str(conf))
    plan = initrd.plan(cfg, kernel)
    out = tmp / f"initrd-{kind}"
    started = time.monotonic()
    initrd.build(plan, initrd.BuildOptions(output=str(out), compress=compress))
    seconds = time.monotonic() - started
    root = tmp / f"{kind}-root"
    root.mkdir()
    subprocess.run(["lsinitrd", "--unpack", str(out)], cwd=root, check=True, capture_output=True)
    unpacked = tree_size(root)
    # measured inside the unpacked initrd: dracut strips the ELF files
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    by_kind = {kind: sum(p.stat().st_size for p in files if p.suffix == kind or kind == ".so" and ".so" in p.name)
               for kind in (".py", ".pyc", ".so")}
    # the closure's carried files and its byte code
    inside = [root / f.lstrip("/") for f in plan.closure.carried_files]
    python = sum(p.stat().st_size for p in inside if p.is_file()) + by_kind[".pyc"]
    stdlib_files = [p for p in files if str(p).startswith(str(root) + plan.closure.stdlib_dir + "/")]
    figures = {
        "compressed": out.stat().st_size / 2**20,
        "unpacked": unpacked / 2**20,
        "python": python / 2**20,
        "stdlib": sum(p.stat().st_size for p in stdlib_files) / 2**20,
        "stdlib_modules": float(len(plan.closure.stdlib_modules)),
        "seconds": seconds,
        **{kind: size / 2**20 for kind, size in by_kind.items()},
    }
    return figures, plan.closure.stdlib_modules


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--compress", default=initrd.default_compress())
    ap.add_argument("--list-modules", action="store_true", help="print every stdlib module per kind")
    args = ap.parse_args()
    kernel = kernel_version()
    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="kdump-initrd-bench.") as t:
        tmp = Path(t)
        texts = configs(tmp)
        rows = []
        modules: Dict[str, List[str]] = {}
        whole = None
        for kind in kinds:
            figures, mods = measure(kind, texts[kind], tmp, kernel, args.compress)
            rows.append((kind, figures))
            modules[kind] = mods
            if whole is None:
                cfg = configuration.load(str(tmp / f"{kind}.conf"))
                trace = initrd.trace_closure(cfg, targeturl.parse(cfg.savedir))
                whole, whole_count = whole_stdlib(trace.stdlib_dir)
    print(f"kernel {kernel}, compression {args.compress}, interpreter {sys.version.split()[0]}")
    print(f"reference (same run): the whole stdlib of this interpreter (without test/ and site-packages) is "
          f"{whole:.1f} MB ({whole_count} .py files)")
    print(f"reference (lab): {LAB_UNPACKED_MB:.0f} MB unpacked, {LAB_XZ_MB} MB xz for busybox + makedumpfile "
          "+ CPython 3.11 with paramiko, pysmb, lz4, python-lzo")
    print(f"{'kind':6} {'compressed':>10} {'unpacked':>9} {'python':>7} {'stdlib':>7} {'modules':>7} "
          f"{'stdlib/whole':>12} {'vs lab xz':>9} {'build s':>7} {'.py':>6} {'.pyc':>6} {'.so*':>6}")
    for kind, f in rows:
        print(f"{kind:6} {f['compressed']:8.1f}MB {f['unpacked']:7.1f}MB {f['python']:5.1f}MB "
              f"{f['stdlib']:5.1f}MB {int(f['stdlib_modules']):7d} {f['stdlib'] / whole:12.2f} "
              f"{f['compressed'] / LAB_XZ_MB:9.2f} {f['seconds']:7.1f} {f['.py']:6.1f} {f['.pyc']:6.1f} "
              f"{f['.so']:6.1f}")
    print("(.py, .pyc, .so*: MB of those files in the whole unpacked initrd)")
    sftp = dict(rows).get("sftp")
    if sftp is not None:
        print(f"sftp target: {sftp['unpacked']:.1f} MB unpacked "
              + ("(within the 35 MB target)" if sftp["unpacked"] <= 35 else "(OVER the 35 MB target)"))
        print(f"sftp target: {sftp['compressed']:.1f} MB compressed "
              + ("(under the 25 MB target)" if sftp["compressed"] < 25 else "(OVER the 25 MB target)"))
    for kind in kinds:
        mods = modules[kind]
        shown = " ".join(mods) if args.list_modules else " ".join(mods[:25]) + (" ..." if len(mods) > 25 else "")
        print(f"\nstdlib modules in the {kind} initrd ({len(mods)}): {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
