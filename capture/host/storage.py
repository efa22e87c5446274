"""The block device stack under a local KDUMP_SAVEDIR, and what the capture
kernel needs to assemble it (LVM, MD RAID, LUKS, multipath).

Detection walks sysfs from the block device of the savedir's file system down
to the disks, reading only what the kernel states about its own devices:

- ``/sys/class/block/NAME/slaves/*``: what a device-mapper or MD device is built from;
- ``partition`` (a partition's parent is its sysfs directory's parent);
- ``dm/uuid``: its prefix names the subsystem that made a device-mapper device
  (``LVM-``, ``CRYPT-LUKS1-``/``CRYPT-LUKS2-``, ``mpath-``, ``partN-`` for
  partitions of another dm device); ``dm/name`` gives LVM's ``VG-LV`` (a ``-``
  inside a name doubled);
- ``md/level`` and ``md/uuid`` of an MD array.

lsblk derives its TYPE column from these same files, but its FSTYPE needs the
udev database or probing; the walk needs neither, works the same in a chroot
with /sys mounted, and names each device exactly as the kernel does.

:func:`detect` returns a :class:`Stack`; :func:`needs` turns the stacks of
every local target into :class:`Needs`: the dracut modules (``lvm``,
``mdraid``, ``crypt``, ``multipath``), kernel modules, the ``rd.*`` arguments
that make dracut assemble exactly these devices, the devices the initrd waits
for, ``/etc/crypttab`` lines, and the problems that would make the capture
fail.  A LUKS device is accepted only when /etc/crypttab opens it with a key
file that really opens it (``cryptsetup open --test-passphrase``): after a
panic nobody types a passphrase, and the capture kernel would wait for one
instead of saving and rebooting.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

SYS_BLOCK = "/sys/class/block"
CRYPTTAB = "/etc/crypttab"

#: the dracut module and the program that assemble each kind of layer, in the order dracut lists them
DRACUT_MODULE = {"multipath": "multipath", "mdraid": "mdraid", "crypt": "crypt", "lvm": "lvm"}
PROGRAM = {"multipath": "multipath", "mdraid": "mdadm", "crypt": "cryptsetup", "lvm": "lvm"}
#: kernel modules of an MD level (md_mod for all)
MD_LEVEL_MODULES = {"raid0": "raid0", "raid1": "raid1", "raid4": "raid456", "raid5": "raid456",
                    "raid6": "raid456", "raid10": "raid10", "linear": "linear"}
KIND_MODULES = {"lvm": ("dm_mod",), "crypt": ("dm_mod", "dm_crypt"), "multipath": ("dm_mod", "dm_multipath"),
                "mdraid": ("md_mod",)}
#: how the log names a layer of each kind
DESCRIPTIONS = {"lvm": "LVM {detail}", "mdraid": "{name} ({level})", "crypt": "{detail} {name} ({kname})",
                "multipath": "multipath {name}", "dm": "device-mapper {name} ({detail})"}
#: crypttab options the capture kernel must not obey: it opens the device whatever the production boot does
DROPPED_CRYPTTAB_OPTIONS = ("noauto", "nofail")


@dataclass(frozen=True)
class Layer:
    """One block device of the stack.

    ``kind`` is ``lvm``, ``crypt`` (LUKS), ``mdraid``, ``multipath``, ``dm``
    (another device-mapper target), ``partition`` or ``disk``."""

    kind: str
    kname: str                   # the kernel's name: dm-0, md0, vda1
    name: str = ""               # dm name, md device name
    detail: str = ""             # LVM VG/LV, MD level, LUKS version, dm uuid prefix
    uuid: str = ""               # LUKS header UUID, MD array UUID, multipath WWID
    parts: Tuple[str, ...] = ()  # knames it is built from

    @property
    def stacked(self) -> bool:
        """Whether the capture kernel must assemble or open it (a plain disk or partition needs nothing)."""
        return self.kind not in ("disk", "partition")

    def describe(self) -> str:
        """For the log: ``LVM vg0/lv_crash``, ``md0 (RAID1)``, ``LUKS2 crash_crypt (dm-1)``."""
        return DESCRIPTIONS.get(self.kind, "{kname}").format(
            kname=self.kname, name=self.name, detail=self.detail or "no uuid", level=self.detail.upper())

    def identity(self) -> str:
        """What the build stamp records: names that stay across reboots (not dm-N, md127, sda)."""
        if self.kind == "lvm":
            return f"lvm {self.detail}"
        if self.kind in ("mdraid", "crypt", "multipath"):
            return f"{self.kind} {self.uuid or self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Stack:
    """The device of one file system and everything under it, top first (depth first)."""

    path: str                    # the savedir, for messages
    layers: Tuple[Layer, ...]

    @property
    def top(self) -> Optional[Layer]:
        return self.layers[0] if self.layers else None

    @property
    def stacked(self) -> Tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.stacked)

    def describe(self) -> str:
        """``LVM vg0/lv_crash on md0 (RAID1)``; a plain disk is ``vda1``."""
        shown = self.stacked or self.layers[:1]
        return " on ".join(layer.describe() for layer in shown) or "an unknown device"

    def leaves(self) -> Tuple[Layer, ...]:
        """The disks (and partitions) at the bottom: their drivers go into the initrd."""
        return tuple(layer for layer in self.layers if not layer.parts)


def detect(kname: str, path: str = "", sys_block: str = SYS_BLOCK) -> Stack:
    """The stack under the block device ``kname`` (``dm-0``, ``md0``, ``vda1``)."""
    layers: List[Layer] = []
    seen = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        layer = read_layer(name, sys_block)
        layers.append(layer)
        for part in layer.parts:
            walk(part)

    walk(kname)
    return Stack(path=path, layers=tuple(layers))


def read_layer(kname: str, sys_block: str = SYS_BLOCK) -> Layer:
    """One device as sysfs describes it (see the module docstring)."""
    base = Path(sys_block) / kname
    slaves = _listdir(base / "slaves")
    if (base / "dm").is_dir():
        return dm_layer(kname, _read(base / "dm" / "name"), _read(base / "dm" / "uuid"), slaves)
    if (base / "md").is_dir():
        level = _read(base / "md" / "level")
        return Layer("mdraid", kname, name=kname, detail=level, uuid=_md_uuid(base, kname), parts=slaves)
    if (base / "partition").exists():
        parent = Path(os.path.realpath(base)).parent.name
        return Layer("partition", kname, name=kname, parts=(parent,) if parent else ())
    return Layer("disk", kname, name=kname, parts=slaves)


def dm_layer(kname: str, name: str, uuid: str, slaves: Tuple[str, ...]) -> Layer:
    prefix = uuid.split("-", 1)[0]
    if prefix == "LVM":
        vg, lv = split_lvm_name(name)
        return Layer("lvm", kname, name=name, detail=f"{vg}/{lv}", parts=slaves)
    if uuid.startswith(("CRYPT-LUKS1-", "CRYPT-LUKS2-")):
        version, hexid = uuid.split("-")[1:3]
        return Layer("crypt", kname, name=name, detail=version, uuid=_dashed_uuid(hexid), parts=slaves)
    if prefix == "mpath":
        return Layer("multipath", kname, name=name, uuid=uuid.partition("-")[2], parts=slaves)
    if re.fullmatch(r"part\d+", prefix):
        # a partition of another dm device (kpartx): what is under it decides
        return Layer("partition", kname, name=name, detail=prefix, parts=slaves)
    return Layer("dm", kname, name=name, detail=uuid.rsplit("-", 1)[0] if "-" in uuid else uuid, parts=slaves)


def split_lvm_name(dm_name: str) -> Tuple[str, str]:
    """LVM's device-mapper name ``VG-LV[-LAYER]`` (a ``-`` in a name is ``--``) -> (VG, LV)."""
    fields = [f.replace("\0", "-") for f in dm_name.replace("--", "\0").split("-")]
    return (fields[0], fields[1]) if len(fields) > 1 else (dm_name, "")


def _dashed_uuid(hexid: str) -> str:
    h = hexid.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if len(h) == 32 else h


def _md_uuid(base: Path, kname: str) -> str:
    """The array's UUID: sysfs ``md/uuid`` (Linux 5.9+), else ``mdadm --detail --export``."""
    uuid = _read(base / "md" / "uuid")
    if uuid:
        return uuid
    mdadm = shutil.which("mdadm") or "/sbin/mdadm"
    try:
        out = subprocess.run([mdadm, "--detail", "--export", f"/dev/{kname}"], capture_output=True, text=True)
    except OSError:
        return ""
    for line in out.stdout.splitlines():
        if line.startswith("MD_UUID="):
            return line.partition("=")[2].strip()
    return ""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _listdir(path: Path) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def kname_of(path: str, source: Optional[str] = None) -> Optional[str]:
    """The kernel name of the block device holding the file system at mount
    point ``path``: from the device number of the file system (``stat``),
    else from ``source`` (a device path, or a /dev/disk/by-* link)."""
    try:
        dev = os.stat(path).st_dev
        link = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        if os.path.exists(link):
            return os.path.basename(os.path.realpath(link))
    except OSError:
        pass
    if source and os.path.exists(source):
        return os.path.basename(os.path.realpath(source))
    return None


# --- what the capture kernel needs ------------------------------------------------------------------

@dataclass(frozen=True)
class Needs:
    """What the capture initrd needs for the storage stacks of the local targets."""

    stacks: Tuple[Stack, ...] = ()
    dracut_modules: Tuple[str, ...] = ()
    kernel_modules: Tuple[str, ...] = ()
    cmdline: Tuple[str, ...] = ()       # rd.lvm.lv=, rd.md.uuid=, rd.luks.uuid= for /etc/cmdline.d
    wait_devices: Tuple[str, ...] = ()  # device paths the initqueue waits for
    crypttab: Tuple[str, ...] = ()      # lines of the initrd's /etc/crypttab
    files: Tuple[str, ...] = ()         # key files, carried at the same path
    problems: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = ()

    @property
    def identities(self) -> List[str]:
        """The stacked layers as the build stamp records them ([] on plain disks)."""
        return sorted({layer.identity() for stack in self.stacks for layer in stack.stacked})

    def messages(self) -> List[str]:
        """One line per local target on stacked storage, for the log."""
        lines = []
        for stack in self.stacks:
            if stack.stacked:
                mods = [DRACUT_MODULE[layer.kind] for layer in stack.stacked if layer.kind in DRACUT_MODULE]
                lines.append(f"savedir {stack.path} is on {stack.describe()}: adding dracut modules "
                             f"{' '.join(dict.fromkeys(mods)) or 'none'}")
        return lines


@dataclass(frozen=True)
class CrypttabEntry:
    name: str
    device: str
    keyfile: str
    options: str


def read_crypttab(path: str = CRYPTTAB) -> List[CrypttabEntry]:
    """The entries of /etc/crypttab (none when it does not exist)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or len(words) < 2:
            continue
        words += [""] * (4 - len(words))
        entries.append(CrypttabEntry(words[0], words[1], words[2], words[3]))
    return entries


def needs(stacks: Sequence[Tuple[Stack, str]], crypttab: str = CRYPTTAB, verify_keys: bool = True) -> Needs:
    """What the capture kernel needs for ``stacks``: (stack, device to wait for)
    pairs, the device being the file system's source as the initrd mounts it.
    ``verify_keys`` tries each LUKS key file on its device (a key derivation:
    up to seconds and a GiB of memory with argon2), which a build does and a
    freshness check, comparing the key file's hash, need not."""
    modules: List[str] = []
    kmods: List[str] = []
    cmdline: List[str] = []
    waits: List[str] = []
    tab: List[str] = []
    files: List[str] = []
    problems: List[str] = []
    warnings: List[str] = []
    entries = read_crypttab(crypttab)
    for stack, wait in stacks:
        if not stack.stacked:
            continue
        waits.append(wait)
        for layer in stack.stacked:
            if layer.kind == "dm":
                problems.append(f"KDUMP_SAVEDIR={stack.path} is on the device-mapper device {layer.name} "
                                f"({layer.detail or 'no uuid'}), which the capture initrd cannot set up; "
                                "use a plain disk, LVM, MD RAID, LUKS or multipath, or a remote target")
                continue
            modules.append(DRACUT_MODULE[layer.kind])
            kmods.extend(KIND_MODULES[layer.kind])
            program = PROGRAM[layer.kind]
            if _which(program) is None:
                problems.append(f"KDUMP_SAVEDIR={stack.path} is on {layer.describe()}, but {program} is not "
                                "installed; the capture initrd needs it to assemble that device")
            if layer.kind == "lvm":
                cmdline.append(f"rd.lvm.lv={layer.detail}")
            elif layer.kind == "mdraid":
                kmods.append(MD_LEVEL_MODULES.get(layer.detail, ""))
                if layer.uuid:
                    cmdline.append(f"rd.md.uuid={layer.uuid}")
                else:
                    problems.append(f"KDUMP_SAVEDIR={stack.path}: cannot read the UUID of {layer.name} "
                                    "(dracut assembles only the arrays it is given by UUID)")
            elif layer.kind == "crypt":
                cmdline.append(f"rd.luks.uuid=luks-{layer.uuid}")
                line, keyfile, problem, warning = _crypt_entry(stack.path, layer, entries, verify_keys)
                if problem:
                    problems.append(problem)
                else:
                    tab.append(line)
                    files.append(keyfile)
                    warnings.append(warning)
    order = list(DRACUT_MODULE.values())
    return Needs(stacks=tuple(stack for stack, _ in stacks),
                 dracut_modules=tuple(sorted(set(modules), key=order.index)),
                 kernel_modules=tuple(dict.fromkeys(m for m in kmods if m)),
                 cmdline=tuple(dict.fromkeys(cmdline)), wait_devices=tuple(dict.fromkeys(waits)),
                 crypttab=tuple(dict.fromkeys(tab)), files=tuple(dict.fromkeys(files)),
                 problems=tuple(problems), warnings=tuple(dict.fromkeys(warnings)))


def _crypt_entry(path: str, layer: Layer, entries: Sequence[CrypttabEntry],
                 verify: bool = True) -> Tuple[str, str, str, str]:
    """(crypttab line for the initrd, key file, problem, warning) for a LUKS layer."""
    backing = layer.parts[0] if layer.parts else ""
    where = f"KDUMP_SAVEDIR={path} is on the LUKS device {layer.name} (on {backing or '?'})"
    nobody = ("after a panic nobody types a passphrase: the capture kernel would wait for one instead "
              "of saving the dump and rebooting")
    remedy = ("give it a key file in /etc/crypttab (cryptsetup luksAddKey DEVICE KEYFILE), or put "
              "KDUMP_SAVEDIR on an unencrypted disk or a remote target")
    entry = next((e for e in entries if e.name == layer.name or _same_device(e.device, backing, layer.uuid)), None)
    if entry is None:
        return "", "", f"{where}, which /etc/crypttab does not list; {nobody}; {remedy}", ""
    keyfile = entry.keyfile
    if keyfile in ("", "-", "none"):
        return "", "", f"{where}, which /etc/crypttab opens with a passphrase; {nobody}; {remedy}", ""
    if not keyfile.startswith("/") or ":" in keyfile or keyfile.startswith("/dev/"):
        return "", "", (f"{where}: its /etc/crypttab key {keyfile!r} is not a file on the root file "
                        f"system, which is the only kind the capture initrd carries; {remedy}"), ""
    if not os.path.isfile(keyfile):
        return "", "", f"{where}: its key file {keyfile} (/etc/crypttab) does not exist", ""
    options = [o for o in entry.options.split(",") if o and o not in DROPPED_CRYPTTAB_OPTIONS]
    problem = _test_key(keyfile, backing, options) if verify else ""
    if problem:
        return "", "", f"{where}: {problem}; {nobody}", ""
    line = f"{layer.name} UUID={layer.uuid} {keyfile} {','.join(options) or 'luks'}"
    warning = (f"the key file {keyfile} of the LUKS device {layer.name} is copied into the capture initrd: "
               "whoever can read the initrd can open the volume; keep it readable by root only "
               "(mode 0600) and never on an unencrypted shared /boot you do not trust")
    return line, keyfile, "", warning


def _same_device(spec: str, backing: str, luks_uuid: str) -> bool:
    if not backing:
        return False
    if spec.startswith("UUID="):
        return spec[5:].lower() == luks_uuid
    tag, _, value = spec.partition("=")
    path = f"/dev/disk/by-{tag.lower()}/{value}" if value and not spec.startswith("/") else spec
    return os.path.exists(path) and os.path.basename(os.path.realpath(path)) == backing


def _test_key(keyfile: str, backing: str, options: Sequence[str]) -> str:
    """Why ``keyfile`` does not open the LUKS header of ``/dev/backing`` ("" when it does)."""
    cryptsetup = _which("cryptsetup")
    if cryptsetup is None:
        return "cryptsetup is not installed (install cryptsetup-bin)"
    cmd = [cryptsetup, "open", "--test-passphrase", "--key-file", keyfile]
    for option in options:
        key, _, value = option.partition("=")
        if key in ("keyfile-offset", "keyfile-size") and value:
            cmd.append(f"--{key}={value}")
        elif key == "header" and value:
            cmd.append(f"--header={value}")
    cmd.append(f"/dev/{backing}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return f"its key file {keyfile} does not open it ({why})"
    return ""


def _which(name: str) -> Optional[str]:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
