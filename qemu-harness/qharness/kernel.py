"""The guest kernel: Debian's current cloud kernel as installed on the host.

The version is discovered from what ``linux-image-cloud-amd64`` depends on
(falling back to the newest ``/boot/vmlinuz-*-cloud-amd64``), never pinned.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


class KernelMissing(RuntimeError):
    """The cloud kernel (or a part of it) is not installed."""


@dataclass(frozen=True)
class GuestKernel:
    """Paths of one installed kernel version."""

    version: str

    @property
    def vmlinuz(self) -> Path:
        return Path(f"/boot/vmlinuz-{self.version}")

    @property
    def modules(self) -> Path:
        return Path(f"/lib/modules/{self.version}")

    @property
    def debug_vmlinux(self) -> Path:
        """The unstripped vmlinux of the ``-dbg`` package, for ``crash``."""
        return Path(f"/usr/lib/debug/boot/vmlinux-{self.version}")

    def module_files(self, names: List[str]) -> List[Path]:
        """The ``.ko`` files for ``names`` and their dependencies, in load order."""
        files: List[Path] = []
        for name in names:
            out = subprocess.run(["modprobe", "-S", self.version, "--show-depends", name],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise KernelMissing(f"module {name} of {self.version}: {out.stderr.strip()}")
            for line in out.stdout.splitlines():
                fields = line.split()
                if fields[:1] == ["insmod"] and Path(fields[1]) not in files:
                    files.append(Path(fields[1]))
        return files


def discover() -> GuestKernel:
    """The kernel that ``linux-image-cloud-amd64`` currently points at."""
    version = _from_metapackage() or _from_boot()
    if version is None:
        raise KernelMissing("no cloud kernel installed (run qemu-harness/setup.sh)")
    kernel = GuestKernel(version)
    if not kernel.vmlinuz.exists():
        raise KernelMissing(f"{kernel.vmlinuz} is missing")
    return kernel


def _from_metapackage() -> Optional[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", "linux-image-cloud-amd64"],
                         capture_output=True, text=True)
    match = re.search(r"linux-image-(\S+-cloud-amd64)", out.stdout) if out.returncode == 0 else None
    return match.group(1) if match else None


def _from_boot() -> Optional[str]:
    found = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"),
                   key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p.name)])
    return found[-1].name[len("vmlinuz-"):] if found else None
