"""``kdump-saver status``: reservation, capture kernel, initrd freshness."""
from __future__ import annotations

import argparse
import os

from capture.config import options as configuration


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="show the crash reservation, whether a capture kernel is loaded, and the initrd state",
        description="Print the memory reserved for the capture kernel, whether one is loaded, and whether "
                    "the capture initrd matches the current configuration and kdump-saver version. "
                    "Exit status 0 when everything is ready for a crash, 3 otherwise.")
    p.add_argument("--config", metavar="FILE", help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("--kernel", metavar="VERSION", help="kernel release (default KDUMP_KERNELVER, else the running one)")
    p.add_argument("--initrd", metavar="PATH", help="capture initrd (default /boot/initrd-VERSION-kdump)")
    p.set_defaults(func=run)


def initrd_state(path: str, digest: str) -> str:
    """``current``, ``stale (...)``, ``missing`` or ``unknown (...)``."""
    from capture.host import initrd

    if not os.path.exists(path):
        return "missing"
    stamp = initrd.read_stamp(path)
    if stamp is None:
        return "unknown (no kdump-saver build stamp inside)"
    if stamp.get("config_sha256") != digest:
        return (f"stale (built {stamp.get('built', '?')} by kdump-saver {stamp.get('version', '?')} "
                "for another configuration; run 'kdump-saver build-initrd')")
    return f"current (built {stamp.get('built', '?')})"


def run(args: argparse.Namespace) -> int:
    from capture.host import initrd
    from capture.host import kexec

    cfg = configuration.load(args.config)
    kernel = initrd.kernel_release(cfg, args.kernel)
    path = args.initrd or initrd.default_output(kernel)
    reserved = kexec.reserved_bytes()
    loaded = kexec.is_loaded()
    state = initrd_state(path, initrd.config_digest(cfg))
    print(f"Reserved: {reserved // (1024 * 1024)} MB" + ("" if reserved else " (no crashkernel= reservation)"))
    print("Capture kernel: " + {True: "loaded", False: "not loaded", None: "unknown (no kexec support)"}[loaded])
    print(f"Initrd: {path}: {state}")
    ready = reserved > 0 and loaded is True and state.startswith("current")
    return 0 if ready else 3
