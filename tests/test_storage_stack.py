"""The storage stack under a local target (capture.host.storage) and what the
capture initrd gets for it.

Three kinds of evidence, all real:

- Real stacks in a QEMU guest booting Debian's cloud kernel (LVM on MD
  RAID1 of two virtio disks, LUKS2 with a key file on a third), ext4 on top,
  mounted, KDUMP_SAVEDIR there: detection from the guest's sysfs and what
  the capture initrd would get, with /etc/crypttab giving the key file or
  ``none`` (qemu-harness/qharness/storage_probe.py runs the production code
  there).  The test machines' kernels have neither device-mapper nor MD and
  cannot load modules; the guest loads them.  Run it under the shared QEMU
  lock: ``flock /var/tmp/kdump-saver-qemu.lock pytest ... -k guest``.
- The LUKS key-file check on a real LUKS header on a loop device
  (``cryptsetup open --test-passphrase`` needs no device-mapper).
- Real dracut builds: one for a plain disk (nothing added) and one from the
  storage facts of an LVM volume group with one PV on MD RAID1 and one on
  LUKS (the LUKS header and key real, on a loop device): the initrd carries
  lvm, mdadm, cryptsetup, their udev rules and kernel modules, the rd.*
  arguments, the crypttab line and the key file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from capture.config import options as configuration
from capture.config.targeturl import parse_list
from capture.host import initrd, storage
from conftest import REPO, require, require_program

sys.path.insert(0, str(REPO / "qemu-harness"))
from qharness import guest, storage_guest  # noqa: E402
from qharness.kernel import KernelMissing, discover  # noqa: E402

KERNEL_GLOB = "-cloud-amd64"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def quiet(*argv: str) -> None:
    """A cleanup step: never raises, so the next one still runs."""
    subprocess.run(list(argv), capture_output=True, text=True, check=False)


def require_root() -> None:
    require(os.geteuid() == 0, "loop devices need root")
    require_program("losetup")


@contextlib.contextmanager
def loop_device(directory: Path, name: str, size_mb: int = 96) -> Iterator[str]:
    """A loop device on a sparse image; detached afterwards."""
    image = directory / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    dev = run("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        yield dev
    finally:
        quiet("losetup", "-d", dev)


@contextlib.contextmanager
def ext4_on(dev: str, mnt: Path) -> Iterator[Path]:
    run("mkfs.ext4", "-q", "-F", "-L", "kdstack", dev)
    mnt.mkdir(parents=True, exist_ok=True)
    run("mount", dev, str(mnt))
    try:
        yield mnt
    finally:
        quiet("umount", str(mnt))


def luks_format(dev: str, key: Path) -> str:
    """LUKS2 on ``dev`` opened by ``key`` (fast PBKDF2); its header UUID."""
    require_program("cryptsetup")
    key.write_bytes(os.urandom(64))
    key.chmod(0o600)
    run("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", str(key), dev)
    return run("blkid", "-o", "value", "-s", "UUID", dev).stdout.strip()


def kname(dev: str) -> str:
    return os.path.basename(os.path.realpath(dev))


# --- real stacks in a QEMU guest (device-mapper and MD from the cloud kernel's modules) -------------

@pytest.fixture(scope="module")
def guest_stacks(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Boot the storage guest once: LVM on MD RAID1 of vda+vdb and LUKS2 on vdc,
    ext4 mounted on each, the production detection run there (see
    qemu-harness/qharness/storage_probe.py); its JSON result."""
    require_program(guest.QEMU)
    require(storage_guest.BUSYBOX.exists(), f"{storage_guest.BUSYBOX} is missing (install busybox-static)")
    try:
        kernel = discover()
        kernel.module_files(list(storage_guest.MODULES))
    except KernelMissing as exc:
        require(False, f"the guest kernel: {exc} (qemu-harness/setup.sh installs it)")
    programs = {name: require_program(name) for name in storage_guest.PROGRAMS}
    workdir = tmp_path_factory.mktemp("storage-guest")
    try:
        probe = storage_guest.run(kernel, programs, REPO, workdir)
    except storage_guest.ProbeFailed as exc:
        pytest.fail(str(exc))
    errors = {name: part["error"] for name, part in probe.result.items() if "error" in part}
    assert not errors, f"the guest could not build its stacks (console {probe.console.log_path}): {errors}"
    return probe.result


def test_guest_lvm_on_md_is_detected(guest_stacks: Dict[str, Any]) -> None:
    found = guest_stacks["lvm_on_md"]
    layers, needs = found["layers"], found["needs"]
    assert layers is not None, found
    assert [layer["kind"] for layer in layers][:2] == ["lvm", "mdraid"], layers
    assert layers[0]["detail"] == "kdst_vg/lv_crash"
    assert layers[1]["detail"] == "raid1" and layers[1]["uuid"]
    assert layers[1]["kname"] == found["md_kname"]
    assert sorted(found["leaves"]) == sorted(layers[1]["parts"]) == ["vda", "vdb"]
    assert needs["dracut_modules"] == ["mdraid", "lvm"]
    assert "rd.lvm.lv=kdst_vg/lv_crash" in needs["cmdline"]
    assert f"rd.md.uuid={layers[1]['uuid']}" in needs["cmdline"]
    assert {"dm_mod", "md_mod", "raid1"} <= set(needs["kernel_modules"])
    assert needs["wait_devices"] == ["/dev/mapper/kdst_vg-lv_crash"]
    assert needs["problems"] == [] and needs["crypttab"] == [] and needs["files"] == []
    assert needs["messages"] == [f"savedir {found['savedir']} is on LVM kdst_vg/lv_crash on {found['md_kname']} "
                                 "(RAID1): adding dracut modules lvm mdraid"]
    check = found["check_config"]
    assert check["rc"] == 0, check["stderr"]
    assert "adding dracut modules lvm mdraid" in check["stderr"]


def test_guest_luks_with_a_key_file_is_accepted_and_without_refused(guest_stacks: Dict[str, Any]) -> None:
    luks = guest_stacks["luks"]
    key, uuid = luks["key"], luks["uuid"]
    accepted, refused = luks["with_key"], luks["passphrase"]
    for found in (accepted, refused):
        top = found["layers"][0]
        assert top["kind"] == "crypt" and top["uuid"] == uuid and top["name"] == "kdst_crypt", found["layers"]
        assert found["leaves"] == ["vdc"]
    needs = accepted["needs"]
    assert needs["problems"] == []
    assert needs["dracut_modules"] == ["crypt"] and "dm_crypt" in needs["kernel_modules"]
    assert needs["cmdline"] == [f"rd.luks.uuid=luks-{uuid}"]
    assert needs["crypttab"] == [f"kdst_crypt UUID={uuid} {key} luks"] and needs["files"] == [key]
    assert any("adding dracut modules crypt" in m for m in needs["messages"]), needs["messages"]
    assert any(f"the key file {key} of the LUKS device kdst_crypt is copied into the capture initrd" in w
               for w in needs["warnings"]), needs["warnings"]
    check = accepted["check_config"]
    assert check["rc"] == 0 and "adding dracut modules crypt" in check["stderr"], check["stderr"]
    assert f"the key file {key} of the LUKS device kdst_crypt is copied into the capture initrd" in check["stderr"]
    needs = refused["needs"]
    assert len(needs["problems"]) == 1, needs["problems"]
    assert "opens with a passphrase" in needs["problems"][0] and "nobody types a passphrase" in needs["problems"][0]
    assert needs["crypttab"] == [] and needs["files"] == []
    check = refused["check_config"]   # check-config warns (build-initrd refuses: the problems above)
    assert check["rc"] == 0 and "Traceback" not in check["stderr"], check["stderr"]
    assert "opens with a passphrase" in check["stderr"] and "nobody types a passphrase" in check["stderr"]


# --- the LUKS key check on a real header (no device-mapper needed) ----------------------------------

@pytest.fixture
def luks_header(tmp_path: Path) -> Iterator[Tuple[str, Path, str]]:
    """A LUKS2 header on a loop device: (device, key file, UUID)."""
    require_root()
    with loop_device(tmp_path, "header", 32) as dev:
        key = tmp_path / "crash.key"
        yield dev, key, luks_format(dev, key)


def _luks_stack(dev: str, uuid: str, name: str = "crash_crypt") -> storage.Stack:
    """What sysfs shows for ``dev`` opened as ``name`` (a dm device CRYPT-LUKS2-<uuid hex>-<name>)."""
    top = storage.dm_layer("dm-7", name, f"CRYPT-LUKS2-{uuid.replace('-', '')}-{name}", (kname(dev),))
    return storage.Stack("/var/crash", (top, storage.Layer("disk", kname(dev), name=kname(dev))))


def test_luks_key_file_that_opens_the_header_is_carried(luks_header: Tuple[str, Path, str], tmp_path: Path) -> None:
    dev, key, uuid = luks_header
    tab = tmp_path / "crypttab"
    tab.write_text(f"# comment\ncrash_crypt UUID={uuid} {key} luks,discard,noauto\n")
    found = storage.needs([(_luks_stack(dev, uuid), "/dev/mapper/crash_crypt")], crypttab=str(tab))
    assert found.problems == ()
    assert found.crypttab == (f"crash_crypt UUID={uuid} {key} luks,discard",)
    assert found.files == (str(key),)
    assert found.cmdline == (f"rd.luks.uuid=luks-{uuid}",)
    assert found.dracut_modules == ("crypt",)
    assert "dm_crypt" in found.kernel_modules
    assert any("copied into the capture initrd" in w for w in found.warnings)


def test_luks_is_refused_without_a_working_key_file(luks_header: Tuple[str, Path, str], tmp_path: Path) -> None:
    dev, key, uuid = luks_header
    stack = _luks_stack(dev, uuid)
    tab = tmp_path / "crypttab"
    cases = {
        f"crash_crypt UUID={uuid} none luks\n": "opens with a passphrase",
        f"crash_crypt UUID={uuid}\n": "opens with a passphrase",
        f"other_crypt /dev/nonexistent {key}\n": "which /etc/crypttab does not list",
        f"crash_crypt UUID={uuid} {tmp_path}/missing.key\n": "missing.key (/etc/crypttab) does not exist",
        f"crash_crypt UUID={uuid} /dev/disk/by-label/KEYS:/k\n": "is not a file on the root file system",
    }
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(64))
    cases[f"crash_crypt UUID={uuid} {wrong} luks\n"] = f"its key file {wrong} does not open it"
    for line, why in cases.items():
        tab.write_text(line)
        found = storage.needs([(stack, "/dev/mapper/crash_crypt")], crypttab=str(tab))
        assert len(found.problems) == 1 and why in found.problems[0], (line, found.problems)
        assert found.crypttab == () and found.files == ()
    # status and start compare the key file's hash instead of deriving the key again
    tab.write_text(f"crash_crypt UUID={uuid} {wrong} luks\n")
    assert storage.needs([(stack, "/dev/mapper/crash_crypt")], crypttab=str(tab), verify_keys=False).problems == ()
    # found by its device path instead of its name
    tab.write_text(f"luks_other {dev} {key}\n")
    found = storage.needs([(stack, "/dev/mapper/crash_crypt")], crypttab=str(tab))
    assert found.problems == () and found.crypttab == (f"crash_crypt UUID={uuid} {key} luks",)


# --- the classifier (kernel's dm uuid and name formats) -------------------------------------------------

@pytest.mark.parametrize("name, uuid, kind, detail", [
    ("vg0-lv_crash", "LVM-" + "a" * 32 + "b" * 32, "lvm", "vg0/lv_crash"),
    ("my--vg-lv--crash", "LVM-" + "c" * 64, "lvm", "my-vg/lv-crash"),
    ("vg0-pool-tpool", "LVM-" + "d" * 64 + "-tpool", "lvm", "vg0/pool"),
    ("crash", "CRYPT-LUKS1-0123456789abcdef0123456789abcdef-crash", "crypt", "LUKS1"),
    ("mpatha", "mpath-3600508b400105e210000900000490000", "multipath", ""),
    ("mpatha1", "part1-mpath-3600508b400105e210000900000490000", "partition", "part1"),
    ("swap", "CRYPT-PLAIN-swap", "dm", "CRYPT-PLAIN"),
    ("linear0", "", "dm", ""),
])
def test_dm_layer_from_uuid_prefix(name: str, uuid: str, kind: str, detail: str) -> None:
    layer = storage.dm_layer("dm-3", name, uuid, ("vdb",))
    assert (layer.kind, layer.detail) == (kind, detail)
    if kind == "crypt":
        assert layer.uuid == "01234567-89ab-cdef-0123-456789abcdef"
    if kind == "multipath":
        assert layer.uuid == "3600508b400105e210000900000490000"


def test_needs_for_lvm_on_md_and_an_unknown_dm_target() -> None:
    md = storage.Layer("mdraid", "md0", name="md0", detail="raid1", uuid="3b2c4d5e:6f708192:a3b4c5d6:e7f80912",
                       parts=("vdb1", "vdc1"))
    lv = storage.dm_layer("dm-0", "vg0-lv_crash", "LVM-" + "e" * 64, ("md0",))
    disks = tuple(storage.Layer("disk", d, name=d) for d in ("vdb1", "vdc1"))
    stack = storage.Stack("/var/crash", (lv, md) + disks)
    found = storage.needs([(stack, "/dev/mapper/vg0-lv_crash")])
    assert found.dracut_modules == ("mdraid", "lvm")
    assert found.cmdline == ("rd.lvm.lv=vg0/lv_crash", "rd.md.uuid=3b2c4d5e:6f708192:a3b4c5d6:e7f80912")
    assert found.kernel_modules == ("dm_mod", "md_mod", "raid1")
    assert found.messages() == ["savedir /var/crash is on LVM vg0/lv_crash on md0 (RAID1): adding dracut modules "
                                "lvm mdraid"]
    assert found.identities == ["lvm vg0/lv_crash", "mdraid 3b2c4d5e:6f708192:a3b4c5d6:e7f80912"]
    assert [layer.kname for layer in stack.leaves()] == ["vdb1", "vdc1"]
    odd = storage.Stack("/srv/dumps", (storage.dm_layer("dm-1", "linear0", "", ("vdd",)),
                                       storage.Layer("disk", "vdd", name="vdd")))
    found = storage.needs([(odd, "/dev/mapper/linear0")])
    assert len(found.problems) == 1 and "device-mapper device linear0" in found.problems[0]


# --- plain disks: detection on this machine's real devices, nothing added ----------------------------

@pytest.fixture(scope="module")
def plain_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_root()
    require_program("mkfs.ext4")
    tmp = tmp_path_factory.mktemp("plain")
    with loop_device(tmp, "plain", 128) as dev, ext4_on(dev, tmp / "mnt") as mnt:
        yield mnt


def test_plain_disk_adds_nothing(plain_mount: Path) -> None:
    savedir = str(plain_mount / "crash")
    mount = initrd.savedir_mount(savedir)
    stack = initrd.mount_stack(mount, savedir)
    assert stack is not None and [layer.kind for layer in stack.layers] == ["disk"]
    assert stack.layers[0].kname.startswith("loop")
    cfg = configuration.Config(savedir=savedir)
    found = initrd.storage_needs(cfg, parse_list(savedir), {0: mount})
    assert found == storage.Needs(stacks=found.stacks)
    assert found.messages() == [] and found.identities == []


def test_a_stamp_without_storage_is_current_for_a_plain_disk() -> None:
    stamp = {key: f"v-{key}" for key in initrd.INPUT_KEYS if key != "storage"}
    current = dict(stamp, storage=[])
    assert initrd.changed_inputs(stamp, current) == []
    moved = dict(stamp, storage=["lvm vg0/lv_crash"])
    assert initrd.changed_inputs(moved, current) == ["storage stack lvm vg0/lv_crash -> plain disk"]
    assert initrd.changed_inputs(stamp, moved) == ["storage stack: not recorded (built by kdump-saver v-version)"]


# --- real dracut builds ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel() -> str:
    mods = Path("/lib/modules")
    versions = sorted(p.name for p in mods.iterdir() if (p / "modules.dep").exists()) if mods.is_dir() else []
    cloud = [v for v in versions if v.endswith(KERNEL_GLOB)]
    require(bool(cloud or versions), "no kernel modules under /lib/modules (install linux-image-cloud-amd64)")
    require_program("dracut")
    require_program("lsinitrd")
    return (cloud or versions)[-1]


def build_and_unpack(p: initrd.Plan, out: Path) -> Path:
    image = out / "initrd"
    initrd.build(p, initrd.BuildOptions(output=str(image), compress="gzip"))
    root = out / "root"
    root.mkdir()
    subprocess.run(["lsinitrd", "--unpack", str(image)], cwd=root, check=True, capture_output=True)
    return root


def _tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_plain_disk_initrd_is_built_as_before(plain_mount: Path, kernel: str, tmp_path: Path) -> None:
    cfg = configuration.Config(savedir=str(plain_mount / "crash"))
    p = initrd.plan(cfg, kernel)
    assert p.storage.dracut_modules == () and p.stamp["storage"] == []
    cmd = initrd.dracut_command(p, initrd.BuildOptions(output="x"), tmp_path)
    # it saves from its own /init, where only our POSIX scripts run: dash is /bin/sh, not bash
    assert cmd[cmd.index("--modules") + 1] == "dash base kdump-saver"
    root = build_and_unpack(p, tmp_path)
    assert os.path.basename(os.readlink(root / "usr/bin/sh")) == "dash"
    assert not os.path.lexists(root / "usr/bin/bash")
    files = _tree(root)
    for absent in ("etc/cmdline.d/90kdump-saver-storage.conf", "etc/crypttab", "etc/kdump-saver/wait-devices",
                   "usr/lib/dracut/hooks/cmdline/95-kdump-saver-storage.sh"):
        assert not os.path.lexists(root / absent), absent
    for tool in ("/lvm", "/mdadm", "/cryptsetup", "64-lvm.rules", "dm-mod.ko", "raid1.ko", "dm-crypt.ko"):
        assert not [f for f in files if f.endswith(tool) or f"{tool}." in f], tool
    # nothing to assemble: kdump-saver's own /init saves before udev
    assert "kdump-saver" in (root / "init").read_text() and (root / "usr/lib/kdump-saver/dracut-init").exists()


def test_lvm_md_luks_initrd_carries_the_tools(plain_mount: Path, kernel: str, tmp_path: Path,
                                              luks_header: Tuple[str, Path, str]) -> None:
    """One build for a volume group with a PV on MD RAID1 and one on LUKS
    (the LUKS header and key file real, on a loop device)."""
    for program in ("lvm", "mdadm", "cryptsetup"):
        require_program(program)
    dev, key, uuid = luks_header
    cfg = configuration.Config(savedir=str(plain_mount / "crash"))
    plain = initrd.plan(cfg, kernel)
    md = storage.Layer("mdraid", "md0", name="md0", detail="raid1", uuid="3b2c4d5e:6f708192:a3b4c5d6:e7f80912",
                       parts=("vdb1", "vdc1"))
    crypt = storage.dm_layer("dm-1", "crash_crypt", f"CRYPT-LUKS2-{uuid.replace('-', '')}-crash_crypt",
                             (kname(dev),))
    lv = storage.dm_layer("dm-2", "kd--vg-lv_crash", "LVM-" + "f" * 64, ("dm-1", "md0"))
    leaves = tuple(storage.Layer("disk", d, name=d) for d in ("vdb1", "vdc1", kname(dev)))
    stack = storage.Stack(str(plain_mount / "crash"), (lv, crypt, md) + leaves)
    tab = tmp_path / "crypttab"
    tab.write_text(f"crash_crypt UUID={uuid} {key} luks\n")
    needs = storage.needs([(stack, "/dev/mapper/kd--vg-lv_crash")], crypttab=str(tab))
    assert needs.problems == ()
    assert needs.messages() == [f"savedir {plain_mount}/crash is on LVM kd-vg/lv_crash on LUKS2 crash_crypt "
                                f"(dm-1) on md0 (RAID1): adding dracut modules lvm crypt mdraid"]
    # what plan() does with the stacks it detects (gather merges files, modules and the stamp)
    p = dataclasses.replace(plain, storage=needs, files=plain.files + needs.files,
                            kernel_modules=plain.kernel_modules + needs.kernel_modules,
                            stamp=dict(plain.stamp, storage=needs.identities))
    cmd = initrd.dracut_command(p, initrd.BuildOptions(output="x"), tmp_path)
    assert cmd[cmd.index("--modules") + 1] == "base mdraid crypt lvm kdump-saver"
    root = build_and_unpack(p, tmp_path)
    files = _tree(root)

    def has(suffix: str) -> bool:
        return any(f.endswith(suffix) for f in files)

    for tool in ("sbin/lvm", "sbin/mdadm", "sbin/cryptsetup", "sbin/cryptroot-ask", "sbin/lvm_scan",
                 "rules.d/64-lvm.rules", "rules.d/65-md-incremental-imsm.rules", "rules.d/11-dm.rules", "rules.d/60-persistent-storage.rules"):
        assert has(tool), tool
    for module in ("dm-mod.ko", "raid1.ko", "dm-crypt.ko"):
        assert any(os.path.basename(f).startswith(module) for f in files), module
    args = (root / "etc/cmdline.d/90kdump-saver-storage.conf").read_text().split()
    assert args == ["rd.lvm.lv=kd-vg/lv_crash", f"rd.luks.uuid=luks-{uuid}",
                    "rd.md.uuid=3b2c4d5e:6f708192:a3b4c5d6:e7f80912"]
    assert (root / "etc/crypttab").read_text() == f"crash_crypt UUID={uuid} {key} luks\n"
    assert (root / "etc/crypttab").stat().st_mode & 0o777 == 0o600
    assert (root / str(key).lstrip("/")).read_bytes() == key.read_bytes()
    assert (root / "etc/kdump-saver/wait-devices").read_text() == "/dev/mapper/kd--vg-lv_crash\n"
    hooks = [f for f in files if f.endswith("95-kdump-saver-storage.sh")]
    assert hooks and "/hooks/cmdline/" in hooks[0]
    # a stack to assemble: dracut's init, udev and the pre-mount hook, not kdump-saver's /init
    assert not (root / "etc/kdump-saver/early-modules").exists()
    assert not (root / "usr/lib/kdump-saver/dracut-init").exists() and "kdump-saver" not in (root / "init").read_text()
    stamp = json.loads((root / initrd.STAMP_PATH.lstrip("/")).read_text())
    assert stamp["storage"] == needs.identities
    # the hook with dracut's own library in the unpacked initrd: the initqueue waits for the device
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/vmcore").touch()
    shell = run("chroot", str(root), "/bin/sh", "-c",
                f". /lib/dracut-lib.sh; . /{hooks[0]}; cat $hookdir/initqueue/finished/devexists-*.sh",
                check=False)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == '[ -e "/dev/mapper/kd--vg-lv_crash" ]'

