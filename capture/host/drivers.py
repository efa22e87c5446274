"""Kernel drivers of this machine's devices, for the kernel the capture initrd is built for.

The running kernel's sysfs tells which devices the capture kernel needs (the
NICs, the disk of a local target) and, through each device's ``modalias``,
which drivers can bind it.  Those aliases are resolved against the *target*
kernel's ``modules.alias``: a driver built into the running kernel (no
``driver/module`` link in sysfs) may be a loadable module of the target
kernel, and only the target's loadable modules go into the initrd (a
built-in driver needs nothing).
"""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Tuple

from capture.errors import KdumpError

log = logging.getLogger(__name__)

MODULES_ROOT = "/lib/modules"
SYS_DEVICES = "/sys/devices"


def module_name(path_or_name: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` or ``virtio-net`` -> ``virtio_net``."""
    base = os.path.basename(path_or_name.strip())
    base = base.split(".ko", 1)[0] if ".ko" in base else base
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """What a kernel's ``/lib/modules/VERSION`` says about its modules."""

    kernel: str
    #: (pattern, module) from modules.alias, grouped by the bus before the pattern's first ":"
    aliases: Dict[str, Tuple[Tuple[str, str], ...]]
    loadable: FrozenSet[str]
    builtin: FrozenSet[str]

    @classmethod
    def load(cls, kernel: str, root: str = MODULES_ROOT) -> "ModuleIndex":
        """Read modules.alias, modules.dep and modules.builtin of ``kernel``.
        Raises :class:`KdumpError` when depmod's files are missing."""
        base = Path(root) / kernel
        try:
            alias_text = (base / "modules.alias").read_text(errors="replace")
            dep_text = (base / "modules.dep").read_text(errors="replace")
        except OSError as exc:
            raise KdumpError(f"kernel {kernel}: cannot read its module index in {base} ({exc.strerror}); "
                             f"run depmod {kernel}") from None
        try:
            builtin_text = (base / "modules.builtin").read_text(errors="replace")
        except OSError:
            builtin_text = ""
        groups: Dict[str, List[Tuple[str, str]]] = {}
        for line in alias_text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                groups.setdefault(_bus(words[1]), []).append((words[1], module_name(words[2])))
        loadable = frozenset(module_name(line.partition(":")[0]) for line in dep_text.splitlines() if ":" in line)
        builtin = frozenset(module_name(line) for line in builtin_text.splitlines() if line.strip())
        return cls(kernel=kernel, aliases={k: tuple(v) for k, v in groups.items()},
                   loadable=loadable, builtin=builtin)

    def resolve(self, modalias: str) -> List[str]:
        """The loadable modules of this kernel whose aliases match ``modalias``
        (as modprobe matches them: fnmatch patterns), in modules.alias order."""
        candidates = self.aliases.get(_bus(modalias), ()) + self.aliases.get("", ())
        found = [mod for pattern, mod in candidates if fnmatch.fnmatchcase(modalias, pattern)]
        return list(dict.fromkeys(m for m in found if m in self.loadable and m not in self.builtin))


def _bus(alias: str) -> str:
    """The part before the first ":" of an alias or pattern when it is plain
    text ("pci", "virtio", ...), else "" (a pattern that may match any bus)."""
    head, colon, _ = alias.partition(":")
    return head if colon and not any(c in head for c in "*?[") else ""


def device_chain(sys_path: str) -> List[Path]:
    """The sysfs device at ``sys_path`` (a /sys/class link is followed) and
    its parents, up to /sys/devices."""
    try:
        here = Path(os.path.realpath(sys_path))
    except OSError:
        return []
    chain: List[Path] = []
    top = Path(SYS_DEVICES)
    while top in here.parents:
        chain.append(here)
        here = here.parent
    return chain


def modaliases(sys_path: str) -> List[str]:
    """The ``modalias`` of the device at ``sys_path`` and of its parents."""
    found: List[str] = []
    for device in device_chain(sys_path):
        try:
            alias = (device / "modalias").read_text().strip()
        except OSError:
            continue
        if alias:
            found.append(alias)
    return found


def device_modules(sys_path: str, index: ModuleIndex) -> List[str]:
    """The loadable modules of ``index``'s kernel that drive the device at
    ``sys_path`` and its parents (bus controllers included)."""
    mods: List[str] = []
    for alias in modaliases(sys_path):
        resolved = index.resolve(alias)
        log.debug("%s: %s -> %s", index.kernel, alias, " ".join(resolved) or "nothing to load")
        mods.extend(resolved)
    return list(dict.fromkeys(mods))
