"""A real Debian 12 system for QEMU: a debootstrapped root file system image.

:func:`ensure_image` returns a raw ext4 disk image (with a UUID, made by
``mkfs.ext4 -d`` from a debootstrap tree: no loop mount needed to build it)
holding what an administrator's Debian 12 machine would: systemd, udev,
systemd-networkd (DHCP on the virtio NIC), the cloud kernel the host's
``linux-image-cloud-amd64`` points at (the host has its ``-dbg`` package, so
``crash`` can read the guest's dumps), Debian's ``python3`` and
``python3-venv``, the Debian packages kdump-saver runs at build and capture
time (:data:`PACKAGES`), and kdump-saver itself installed from its wheel
into the venv ``/opt/kdump-saver`` with ``/usr/sbin/kdump-saver`` linked to
it.  The kernel and Debian's own initrd are copied out of the tree to boot
with ``-kernel``/``-initrd``.

What the image does NOT have is any kdump configuration: each case writes
``/etc/sysconfig/kdump`` and runs ``kdump-saver enable`` in its own copy
(:func:`prepare_copy`).

Everything is cached under :data:`CACHE` in two layers:

* ``tree/``: the debootstrap tree, keyed by :data:`PACKAGES`, the kernel
  version, the mirror and :data:`RECIPE`; rebuilt from nothing when the key
  changes (``debootstrap`` and ``apt-get``: a few minutes);
* ``image-KEY/``: the disk image, kernel and initrd, keyed by the tree's key
  plus the content of kdump-saver's wheel (``pip wheel --no-deps`` of the
  checkout): a new wheel replaces the venv in the tree and makes a new image
  (about a minute).

The wheel's dependencies come from this machine's pip configuration (its
index), as wheels built here: the image needs no compiler.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from qharness.kernel import GuestKernel

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KDUMP_SAVER_DEBIAN_CACHE", "/var/tmp/kdump-saver-debian"))
SUITE = "bookworm"
RECIPE = "3"
"""Bump when the way the tree is made changes (not the package list: that is hashed)."""
HOSTNAME = "qharness-debian"
IMAGE_MB = 3072
VENV = "/opt/kdump-saver"
COMMAND = "/usr/sbin/kdump-saver"

BOOTSTRAP_INCLUDE = ("ca-certificates",)
"""debootstrap's minbase plus what apt needs to reach the security suite."""

PACKAGES = (
    # the system: systemd as init, udev, the network by systemd-networkd (DHCP)
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "procps", "iproute2", "e2fsprogs",
    "initramfs-tools", "linux-image-cloud-amd64",
    # kdump-saver's interpreter, from Debian
    "python3", "python3-venv",
    # what kdump-saver runs when it builds the capture initrd and in the capture kernel
    "kexec-tools", "makedumpfile", "dracut-core", "dracut-network", "isc-dhcp-client",
    "cpio", "xz-utils", "openssh-client", "liblzo2-2",
)
"""Installed with apt-get (no recommends) after debootstrap, from bookworm,
bookworm-updates and bookworm-security; the exact kernel of the host's
``linux-image-cloud-amd64`` is added to it (:func:`package_list`)."""


class ImageError(RuntimeError):
    """The image could not be built (not a verdict on kdump-saver)."""


@dataclass(frozen=True)
class Image:
    """A built image and what boots it."""

    disk: Path
    vmlinuz: Path
    initrd: Path
    root_uuid: str
    kernel: str
    key: str
    wheel: str
    tree_seconds: Optional[float] = None       # set when the tree was built in this call
    image_seconds: Optional[float] = None      # set when the image was made in this call

    @property
    def root_argument(self) -> str:
        return f"root=UUID={self.root_uuid}"


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str

    def sources(self) -> str:
        """The image's /etc/apt/sources.list.d/debian.sources."""
        return (f"Types: deb\nURIs: {self.debian}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
                f"Types: deb\nURIs: {self.security}\nSuites: {SUITE}-security\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def host_mirrors() -> Mirrors:
    """The Debian and security mirrors this machine's apt uses
    (``KDUMP_SAVER_DEBIAN_MIRROR`` / ``KDUMP_SAVER_DEBIAN_SECURITY`` override)."""
    found: Dict[str, str] = {}
    sources = sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + \
        sorted(Path("/etc/apt").glob("sources.list.d/*.list")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = uri.rstrip("/")
            kind = "security" if uri.endswith("/debian-security") else "debian" if uri.endswith("/debian") else ""
            if kind and kind not in found:
                found[kind] = uri
    return Mirrors(os.environ.get("KDUMP_SAVER_DEBIAN_MIRROR", found.get("debian", "http://deb.debian.org/debian")),
                   os.environ.get("KDUMP_SAVER_DEBIAN_SECURITY",
                                  found.get("security", "http://deb.debian.org/debian-security")))


def package_list(kernel: GuestKernel) -> List[str]:
    """:data:`PACKAGES` and the exact kernel whose -dbg package the host has."""
    return list(PACKAGES) + [f"linux-image-{kernel.version}"]


def tree_key(kernel: GuestKernel, mirrors: Mirrors) -> str:
    spec = {"recipe": RECIPE, "suite": SUITE, "bootstrap": BOOTSTRAP_INCLUDE, "packages": package_list(kernel),
            "mirror": mirrors.debian, "security": mirrors.security, "hostname": HOSTNAME}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def wheel_digest(wheel: Path) -> str:
    """The content of a wheel (names and bytes of its members), not its zip
    timestamps: the same checkout gives the same digest."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()[:16]


# --- the wheel ----------------------------------------------------------------------------------

def build_wheel(outdir: Path, source: Path = REPO) -> Path:
    """``pip wheel --no-deps`` of a clean copy of ``source`` (the working tree
    as it is, without .git, .venv or build leftovers) into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("kdump_saver-*.whl"):
        old.unlink()
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis")
    with tempfile.TemporaryDirectory(prefix="kdump-saver-src.") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, symlinks=True, ignore=ignore)
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
              "-w", str(outdir), str(copy)], "pip wheel")
    wheels = sorted(outdir.glob("kdump_saver-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"pip wheel left {wheels} in {outdir}")
    return wheels[0]


def build_wheelhouse(wheel: Path, outdir: Path) -> Path:
    """The wheel's dependencies as wheels (downloaded from this machine's
    index, or built here: python-lzo has no binary wheel), beside the wheel."""
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, outdir / wheel.name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(outdir), str(outdir / wheel.name)],
         "pip wheel (dependencies)")
    return outdir


# --- the tree -----------------------------------------------------------------------------------

@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /dev and /dev/pts in ``root`` for package scripts; always undone."""
    mounted: List[Path] = []
    try:
        mounts = (("-t proc", "proc", "proc"), ("--bind", "/dev", "dev"), ("--bind", "/dev/pts", "dev/pts"))
        for how, src, dst in mounts:
            target = root / dst
            target.mkdir(parents=True, exist_ok=True)
            _run(["mount", *how.split(), src, str(target)], "mount")
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def in_chroot(root: Path, *cmd: str, what: str = "", env: Optional[Dict[str, str]] = None) -> str:
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
                   "DEBIAN_FRONTEND": "noninteractive"}
    environment.update(env or {})
    return _run(["chroot", str(root), *cmd], what or cmd[0], env=environment)


def build_tree(tree: Path, kernel: GuestKernel, mirrors: Mirrors) -> None:
    """debootstrap minbase, then apt-get the packages from all three suites."""
    if tree.exists():
        _remove_tree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    log.info("debootstrap %s into %s from %s", SUITE, tree, mirrors.debian)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BOOTSTRAP_INCLUDE)}", SUITE, str(tree),
          mirrors.debian], "debootstrap", timeout=1800)
    (tree / "etc/apt/sources.list").write_text("")
    (tree / "etc/apt/sources.list.d/debian.sources").write_text(mirrors.sources())
    shutil.copy2("/etc/resolv.conf", tree / "etc/resolv.conf")
    policy = tree / "usr/sbin/policy-rc.d"          # no service starts while building
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        with chroot_mounts(tree):
            apt = ("apt-get", "-q", "-y", "-o", "DPkg::Options::=--force-confdef")
            in_chroot(tree, *apt, "update", what="apt-get update")
            in_chroot(tree, *apt, "dist-upgrade", what="apt-get dist-upgrade")
            in_chroot(tree, *apt, "install", "--no-install-recommends", *package_list(kernel),
                      what="apt-get install", env={"DEBCONF_NONINTERACTIVE_SEEN": "true"})
            in_chroot(tree, "apt-get", "clean")
    finally:
        policy.unlink(missing_ok=True)
    (tree / "etc/resolv.conf").write_text("")
    _configure_system(tree)


def _configure_system(tree: Path) -> None:
    """What an installer would have done: hostname, fstab, the network by
    DHCP, a root console on the serial line for the harness to type on."""
    (tree / "etc/hostname").write_text(HOSTNAME + "\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost\n")
    network = tree / "etc/systemd/network/80-dhcp.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")
    autologin = tree / "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    autologin.parent.mkdir(parents=True, exist_ok=True)
    autologin.write_text("[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear "
                         "--keep-baud 115200,57600,38400,9600 %I $TERM\n")
    in_chroot(tree, "systemctl", "enable", "systemd-networkd.service", "systemd-networkd-wait-online.service")
    in_chroot(tree, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
              "fstrim.timer")
    # the machine-id is made at first boot, as on an installed image
    (tree / "etc/machine-id").write_text("")


def install_wheel(tree: Path, wheelhouse: Path, wheel: Path) -> None:
    """A venv at :data:`VENV` made by the image's python3, kdump-saver and its
    dependencies from ``wheelhouse`` (offline), :data:`COMMAND` linked to it."""
    venv = tree / VENV.lstrip("/")
    if venv.exists():
        shutil.rmtree(venv)
    inside = Path("/tmp/wheelhouse")
    staged = tree / inside.relative_to("/")
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(wheelhouse, staged)
    try:
        in_chroot(tree, "python3", "-m", "venv", VENV, what="python3 -m venv")
        in_chroot(tree, f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", str(inside),
                  str(inside / wheel.name), what="pip install (in the image)",
                  env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    link = tree / COMMAND.lstrip("/")
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"{VENV}/bin/kdump-saver")
    in_chroot(tree, COMMAND, "--help", what="kdump-saver --help (in the image)")


# --- the image ----------------------------------------------------------------------------------

def make_disk(tree: Path, disk: Path, root_uuid: str, size_mb: int = IMAGE_MB) -> None:
    (tree / "etc/fstab").write_text(f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n")
    tmp = disk.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(size_mb << 20)
    _run(["mkfs.ext4", "-q", "-F", "-U", root_uuid, "-L", "debian-root", "-d", str(tree), str(tmp)],
         "mkfs.ext4 -d", timeout=1800)
    tmp.rename(disk)


def ensure_image(kernel: GuestKernel, cache: Path = CACHE, rebuild: bool = False) -> Image:
    """The cached image for ``kernel`` and the checkout's wheel, built as needed."""
    cache.mkdir(parents=True, exist_ok=True)
    mirrors = host_mirrors()
    wheel = build_wheel(cache / "wheel")
    digest = wheel_digest(wheel)
    tkey = tree_key(kernel, mirrors)
    key = f"{tkey}-{digest}"
    image_dir = cache / f"image-{key}"
    manifest = image_dir / "image.json"
    if manifest.exists() and not rebuild:
        log.info("Debian image %s is cached", image_dir)
        return Image(**{**json.loads(manifest.read_text()), "tree_seconds": None, "image_seconds": None,
                        "disk": image_dir / "disk.raw",
                        "vmlinuz": image_dir / f"vmlinuz-{kernel.version}",
                        "initrd": image_dir / f"initrd.img-{kernel.version}"})
    tree = cache / "tree"
    stamp = cache / "tree.json"
    tree_seconds = None
    current = json.loads(stamp.read_text()) if stamp.exists() else {}
    if rebuild or current.get("key") != tkey or not tree.is_dir():
        stamp.unlink(missing_ok=True)
        started = time.monotonic()
        build_tree(tree, kernel, mirrors)
        tree_seconds = time.monotonic() - started
        stamp.write_text(json.dumps({"key": tkey, "packages": package_list(kernel), "seconds": tree_seconds}))
        current = {"key": tkey}
    started = time.monotonic()
    if current.get("wheel") != digest:
        house = build_wheelhouse(wheel, cache / "wheelhouse" / digest)
        install_wheel(tree, house, wheel)
        shutil.rmtree(house, ignore_errors=True)
        current = {**json.loads(stamp.read_text()), "wheel": digest}
        stamp.write_text(json.dumps(current))
    for old in cache.glob("image-*"):
        shutil.rmtree(old, ignore_errors=True)
    image_dir.mkdir()
    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kdump-saver-debian:{key}"))
    for name in (f"vmlinuz-{kernel.version}", f"initrd.img-{kernel.version}"):
        src = tree / "boot" / name
        if not src.is_file():
            raise ImageError(f"{src} is missing: the kernel package did not install it")
        shutil.copy2(src, image_dir / name)
    make_disk(tree, image_dir / "disk.raw", root_uuid)
    image = Image(disk=image_dir / "disk.raw", vmlinuz=image_dir / f"vmlinuz-{kernel.version}",
                  initrd=image_dir / f"initrd.img-{kernel.version}", root_uuid=root_uuid,
                  kernel=kernel.version, key=key, wheel=wheel.name, tree_seconds=tree_seconds,
                  image_seconds=time.monotonic() - started)
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(image).items()}
    for k in ("disk", "vmlinuz", "initrd"):
        record.pop(k)
    manifest.write_text(json.dumps(record, indent=1))
    log.info("Debian image %s made (tree %s, image %.0f s)", image_dir,
             f"{tree_seconds:.0f} s" if tree_seconds else "cached", image.image_seconds)
    return image


# --- a case's copy ------------------------------------------------------------------------------

@contextlib.contextmanager
def mounted(disk: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-o", "loop", str(disk), str(mountpoint)], "mount")
    try:
        yield mountpoint
    finally:
        _run(["umount", str(mountpoint)], "umount")


def copy_disk(image: Image, disk: Path) -> Path:
    """A private, sparse copy of the image's disk for one case."""
    _run(["cp", "--sparse=always", "--reflink=auto", str(image.disk), str(disk)], "cp")
    return disk


def write_files(root: Path, files: Dict[str, "FileSpec"]) -> None:
    for path, spec in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(spec.data)
        target.chmod(spec.mode)


@dataclass(frozen=True)
class FileSpec:
    data: bytes
    mode: int = 0o644


def _remove_tree(tree: Path) -> None:
    # a tree left by an interrupted build may still have something mounted
    for sub in ("dev/pts", "dev", "proc", "sys"):
        subprocess.run(["umount", "-l", str(tree / sub)], capture_output=True)
    prefix = str(tree.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        busy = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    if busy:
        raise ImageError(f"cannot remove {tree}: still mounted there: {busy}")
    shutil.rmtree(tree)


def _run(cmd: Sequence[str], what: str, env: Optional[Dict[str, str]] = None, timeout: float = 1800) -> str:
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {exc.filename} is not installed (qemu-harness/setup.sh)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise ImageError(f"{what} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout
