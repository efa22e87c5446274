"""Run in the storage guest (see :mod:`qharness.storage_guest`), as root, as a script.

Builds ext4 on LVM kdst_vg/lv_crash on MD RAID1 of /dev/vda and /dev/vdb,
and ext4 on LUKS2 (key file, fast PBKDF2) on /dev/vdc opened as kdst_crypt;
runs the production code the storage-stack tests exercise on them
(``initrd.savedir_mount``, ``initrd.mount_stack``, ``initrd.storage_needs``,
the latter with /etc/crypttab giving the key file, then ``none``, and
``kdump-saver check-config``) and prints
``MARKER`` and one JSON line.  A failing step ends the probe with the step,
its output and the partial result in that line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import traceback
from typing import Any, Dict, List

from capture.config import options as configuration
from capture.config.targeturl import parse_list
from capture.host import initrd, storage

class StepFailed(Exception):
    """A setup command failed."""


def run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def needs_dict(found: storage.Needs) -> Dict[str, Any]:
    return {"dracut_modules": list(found.dracut_modules), "cmdline": list(found.cmdline),
            "kernel_modules": list(found.kernel_modules), "wait_devices": list(found.wait_devices),
            "crypttab": list(found.crypttab), "files": list(found.files), "problems": list(found.problems),
            "warnings": list(found.warnings), "messages": found.messages()}


def detect(savedir: str) -> Dict[str, Any]:
    """What the production side finds under ``savedir``."""
    mount = initrd.savedir_mount(savedir)
    stack = initrd.mount_stack(mount, savedir)
    found = initrd.storage_needs(configuration.Config(savedir=savedir), parse_list(savedir), {0: mount})
    return {"savedir": savedir,
            "layers": [dataclasses.asdict(layer) for layer in stack.layers] if stack else None,
            "leaves": [layer.kname for layer in stack.leaves()] if stack else None,
            "needs": needs_dict(found), "check_config": check_config(savedir)}


def check_config(savedir: str) -> Dict[str, Any]:
    """``kdump-saver check-config`` for KDUMP_SAVEDIR=``savedir``: exit status and log."""
    conf = "/root/kdump.conf"
    with open(conf, "w") as f:
        f.write(f"KDUMP_SAVEDIR={savedir}\n")
    proc = subprocess.run([sys.executable, "-S", "-m", "capture.cli", "check-config", "--config", conf],
                          capture_output=True, text=True)
    return {"rc": proc.returncode, "stderr": proc.stderr}


def ext4_mounted(dev: str, mnt: str) -> None:
    run("mkfs.ext4", "-q", "-F", "-L", "kdstack", dev)
    os.makedirs(mnt, exist_ok=True)
    run("mount", dev, mnt)


def lvm_on_md() -> Dict[str, Any]:
    md = "/dev/md/kdst"
    run("mdadm", "--create", md, "--run", "--metadata=1.2", "--level=1", "--raid-devices=2",
        "--assume-clean", "/dev/vda", "/dev/vdb")
    run("lvm", "pvcreate", "-q", md)
    run("lvm", "vgcreate", "-q", "kdst_vg", md)
    run("lvm", "lvcreate", "-q", "-y", "-n", "lv_crash", "-l", "100%FREE", "kdst_vg")
    ext4_mounted("/dev/kdst_vg/lv_crash", "/mnt/lvm")
    return dict(detect("/mnt/lvm/crash"), md_kname=os.path.basename(os.path.realpath(md)))


def luks() -> Dict[str, Any]:
    key = "/root/crash.key"
    with open(key, "wb") as f:
        f.write(os.urandom(64))
    os.chmod(key, 0o600)
    run("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", key, "/dev/vdc")
    uuid = run("blkid", "-o", "value", "-s", "UUID", "/dev/vdc").strip()
    run("cryptsetup", "open", "--key-file", key, "/dev/vdc", "kdst_crypt")
    ext4_mounted("/dev/mapper/kdst_crypt", "/mnt/luks")
    result: Dict[str, Any] = {"key": key, "uuid": uuid}
    for case, keyfile in (("with_key", key), ("passphrase", "none")):
        with open(storage.CRYPTTAB, "w") as f:
            f.write(f"kdst_crypt UUID={uuid} {keyfile} luks\n")
        result[case] = detect("/mnt/luks")
    return result


def main(marker: str) -> int:
    result: Dict[str, Any] = {}
    status = 0
    steps: List[Any] = [("lvm_on_md", lvm_on_md), ("luks", luks)]
    for name, step in steps:
        try:
            result[name] = step()
        except Exception as exc:  # reported to the host, which fails the test with it
            result[name] = {"error": str(exc) if isinstance(exc, StepFailed) else traceback.format_exc()}
            status = 1
    sys.stdout.write(marker + json.dumps(result) + "\n")
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
