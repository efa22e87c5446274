"""Shared test fixtures: the real fixture vmcore and prerequisite checks.

A missing prerequisite skips a test locally (with the reason) and fails it
under CI=true, where everything must be present.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transports.base import Transport

REPO = Path(__file__).resolve().parent.parent
FIXTURE_NAME = "vmcore-6.1-cloud-512M"
CACHE = Path(os.environ.get("KDUMP_SAVER_FIXTURE_CACHE", "/var/tmp/kdump-saver-fixtures"))


def require(condition: bool, why: str) -> None:
    """Skip locally, fail under CI=true, when a prerequisite is missing."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"prerequisite missing under CI: {why}")
    pytest.skip(f"prerequisite missing: {why}")


def require_program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"{name} is not installed (bash tests/setup.sh installs it)")
    return path  # type: ignore[return-value]


def shared_dir() -> Path:
    env = os.environ.get("KDUMP_SAVER_SHARED")
    return Path(env) if env else REPO.parent / "shared"


FIXTURE_SIZES = {"vmcore-6.1-cloud-512M": 410_705_920, "vmcore-6.12-cloud-512M": 414_896_128}
"""Bytes of each fixture vmcore once decompressed."""


def cached_fixture(name: str) -> Path:
    """A fixture vmcore of ../shared/fixtures, decompressed once into :data:`CACHE` and size-checked."""
    xz = shared_dir() / "fixtures" / f"{name}.elf.xz"
    require(xz.exists(), f"fixture {xz} not found (set KDUMP_SAVER_SHARED)")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.elf"
    if not out.exists() or out.stat().st_size != FIXTURE_SIZES[name]:
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        with lzma.open(xz) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def fixture_vmcore() -> Path:
    """The 6.1 fixture vmcore, decompressed once into a cache and verified."""
    return cached_fixture(FIXTURE_NAME)


@pytest.fixture(scope="session")
def fixture_dmesg() -> Path:
    return shared_dir() / "fixtures" / f"{FIXTURE_NAME}.dmesg.txt"


@pytest.fixture(scope="session")
def makedumpfile() -> str:
    return require_program("makedumpfile")


@pytest.fixture(scope="session")
def file_target_result(fixture_vmcore: Path, tmp_path_factory: pytest.TempPathFactory, makedumpfile: str) -> Path:
    """The dump directory the saver writes to a local directory: what a
    network target must hold (lzo, dump level 31)."""
    from capture.config.options import Config
    from capture.save.sequence import save

    out = tmp_path_factory.mktemp("file-target")
    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=1), vmcore=str(fixture_vmcore),
                  savedir=str(out))
    return out / result.directory


@pytest.fixture(scope="session")
def reference_dumps(fixture_vmcore: Path, makedumpfile: str) -> "ReferenceDumps":
    """makedumpfile's own output for the fixture, made once and cached."""
    return ReferenceDumps(fixture_vmcore, makedumpfile)


class ReferenceDumps:
    """Direct makedumpfile output for (format flag, dump level), cached on disk."""

    def __init__(self, vmcore: Path, makedumpfile: str) -> None:
        self.vmcore = vmcore
        self.makedumpfile = makedumpfile
        self.dir = CACHE / "reference"
        self.dir.mkdir(parents=True, exist_ok=True)

    def direct(self, flag: str, level: int) -> Path:
        out = self.dir / f"direct{flag}-d{level}"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            subprocess.run([self.makedumpfile, flag, "-d", str(level), str(self.vmcore), str(tmp)],
                           check=True, capture_output=True)
            tmp.rename(out)
        return out

    def flattened(self, flag: str, level: int) -> Path:
        out = self.dir / f"flat{flag}-d{level}"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                subprocess.run([self.makedumpfile, "-F", flag, "-d", str(level), str(self.vmcore)],
                               check=True, stdout=f, stderr=subprocess.DEVNULL)
            tmp.rename(out)
        return out


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the requested size in MB; unmounted afterwards."""
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mounts = []

    def make(size_mb: int) -> Path:
        mnt = tmp_path / f"fs{len(mounts)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mnt)], check=True)
        mounts.append(mnt)
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def head_of(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_tree(target: "Transport", path: str) -> None:
    """Delete a directory on a transport with its primitives (files, then the empty directory)."""
    for entry in target.listdir(path):
        child = f"{path}/{entry.name}"
        if entry.is_dir:
            remove_tree(target, child)
        else:
            target.remove(child)
    target.rmdir(path)
