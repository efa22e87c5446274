"""The installed package: a wheel built from this tree, installed (not
editable) into a fresh virtual environment, runs ``kdump-saver`` and builds a
capture initrd.

An editable install imports the source tree, so only a real wheel shows a
package or a dracut module file left out of the distribution.  The wheel is
built from a copy of the tree (``build/`` and ``*.egg-info`` stay out of the
checkout); its dependencies come through pip as for any installation.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from conftest import REPO, require, require_program
from test_initrd import Built, _ext4, kernel_version  # noqa: F401 (a fixture)

PACKAGES = ("capture", "transports")
DRACUT_MODULE = REPO / "dracut-module"
#: where the wheel carries dracut-module/
DRACUT_IN_WHEEL = "capture/host/dracut"
SKIPPED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


class Installed:
    """kdump-saver installed from a wheel into the virtual environment ``venv``."""

    def __init__(self, wheel: Path, venv: Path, work: Path) -> None:
        self.wheel = wheel
        self.venv = venv
        self.work = work

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``kdump-saver ARGV`` of the installed console script, outside the source tree."""
        return subprocess.run([str(self.venv / "bin" / "kdump-saver"), *argv], cwd=self.work, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    shutil.copytree(REPO, tree, symlinks=True, ignore=SKIPPED)
    dist = work / "dist"
    # -v: pip shows what setuptools says, its deprecation warnings included
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(dist), str(tree)],
                           capture_output=True, text=True, timeout=600)
    require(built.returncode == 0 or "No matching distribution found for setuptools" not in built.stderr,
            f"pip cannot get the setuptools the build needs: {built.stderr.strip()[-500:]}")
    assert built.returncode == 0, built.stderr
    warnings = [line for line in (built.stdout + built.stderr).splitlines() if "Warning" in line]
    assert not warnings, "\n".join(warnings)
    wheels = sorted(dist.glob("kdump_saver-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
                          capture_output=True, text=True, timeout=600)
    require(proc.returncode == 0 or "No matching distribution found" not in proc.stderr,
            f"the dependencies cannot be installed: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stderr
    run = work / "run"
    run.mkdir()
    return Installed(wheels[0], venv, run)


def _source_packages() -> List[str]:
    """Every package directory of the tree, as the path of its __init__.py."""
    found = []
    for top in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(REPO / top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                found.append(str((Path(dirpath) / "__init__.py").relative_to(REPO)))
    return sorted(found)


def test_wheel_lists_every_package_module_and_the_dracut_module(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    packages = _source_packages()
    assert "capture/commands/__init__.py" in packages
    assert not [p for p in packages if p not in names]
    sources = sorted(str(p.relative_to(REPO)) for top in PACKAGES for p in (REPO / top).rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert not [s for s in sources if s not in names]
    assert f"{DRACUT_IN_WHEEL}/module-setup.sh" in names
    assert not [f.name for f in DRACUT_MODULE.iterdir() if f"{DRACUT_IN_WHEEL}/{f.name}" not in names]
    metadata = zipfile.ZipFile(installed.wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: GPL-2.0-or-later" in metadata.splitlines()


def test_installed_package_is_the_wheel_not_the_tree(installed: Installed) -> None:
    proc = subprocess.run([installed.python, "-c", "import capture, capture.host.initrd as i; "
                           "print(capture.__file__); print(i.MODULE_DIR)"],
                          cwd=installed.work, env=installed.env(), capture_output=True, text=True, check=True)
    package_file, module_dir = proc.stdout.split()
    assert Path(package_file).is_relative_to(installed.venv)
    assert Path(module_dir).is_relative_to(installed.venv)
    assert os.access(Path(module_dir) / "kdump-saver-boot.sh", os.X_OK)
    assert (Path(module_dir) / "module-setup.sh").is_file()


def test_installed_command_help_and_check_config(installed: Installed, tmp_path: Path) -> None:
    proc = installed.run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("save", "check-config", "build-initrd", "capture-boot", "reassemble"):
        assert command in proc.stdout
    conf = tmp_path / "kdump.conf"
    conf.write_text("KDUMP_SAVEDIR=ftp://user:secret-pw@127.0.0.1/crash\nKDUMP_DUMPLEVEL=31\n")
    proc = installed.run("check-config", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert 'KDUMP_DUMPLEVEL="31"' in proc.stdout.splitlines()
    assert "secret-pw" not in proc.stdout


@pytest.fixture(scope="module")
def ext4_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _ext4(tmp_path_factory.mktemp("wheel-ext4"))


def test_installed_build_initrd_check(installed: Installed, ext4_mount: Path, kernel_version: str,  # noqa: F811
                                      tmp_path: Path) -> None:
    conf = tmp_path / "kdump.conf"
    conf.write_text(f"KDUMP_SAVEDIR={ext4_mount}/crash\n")
    proc = installed.run("build-initrd", "--check", "--config", str(conf), "--kernel", kernel_version)
    assert proc.returncode == 0, proc.stderr
    assert "fit for a capture initrd" in proc.stderr


def test_installed_build_initrd_file_target_runs_in_a_chroot(installed: Installed, ext4_mount: Path,
                                                             kernel_version: str,  # noqa: F811
                                                             tmp_path: Path) -> None:
    require_program("chroot")
    conf = tmp_path / "kdump.conf"
    conf.write_text(f"KDUMP_SAVEDIR={ext4_mount}/crash\nKDUMP_DUMPLEVEL=31\n")
    image = tmp_path / "initrd-file"
    proc = installed.run("build-initrd", "--config", str(conf), "--kernel", kernel_version, "--output", str(image))
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["lsinitrd", "--unpack", str(image)], cwd=root, check=True, capture_output=True)
    from capture.config import options as configuration
    built = Built(image, root, configuration.load(str(conf)))
    site = subprocess.run([installed.python, "-c", "import capture, os; print(os.path.dirname(capture.__file__))"],
                          cwd=installed.work, env=installed.env(), capture_output=True, text=True,
                          check=True).stdout.strip()
    # the saver in the initrd is the installed one, with every subcommand
    assert any(f.endswith("/capture/commands/save.pyc") for f in built.bytecode())
    assert any(f.endswith("/capture/save/sequence.pyc") for f in built.bytecode())
    assert os.path.dirname(site) in built.text("usr/bin/kdump-saver").split("PYTHONPATH=")[1].splitlines()[0]
    assert not any(f.startswith(str(REPO).lstrip("/")) for f in built.files)
    assert built.has("usr/lib/kdump-saver/boot.sh")
    assert built.has("lib/dracut/hooks/pre-mount/90-kdump-saver-hook.sh")
    proc = built.chroot("/usr/bin/kdump-saver", "--version")
    assert proc.returncode == 0, proc.stderr
    proc = built.chroot("/usr/bin/kdump-saver", "check-config")
    assert proc.returncode == 0, proc.stderr
    assert f'KDUMP_SAVEDIR="/kdump/mnt{ext4_mount}/crash"' in proc.stdout.splitlines()


def test_installed_enable_writes_the_units_the_wheel_carries(installed: Installed, tmp_path: Path) -> None:
    """capture/host/units/ (package data) reaches the wheel, and the installed
    command renders kdump-saver.service and the udev rule from there."""
    require_program("systemctl")
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    units = REPO / "capture" / "host" / "units"
    assert not [f.name for f in units.iterdir() if f"capture/host/units/{f.name}" not in names]
    root = tmp_path / "tree"
    root.mkdir()
    proc = installed.run("enable", "--root", str(root), "--command", "/usr/bin/kdump-saver")
    assert proc.returncode == 0, proc.stderr
    assert "ExecStart=/usr/bin/kdump-saver start" in (root / "etc/systemd/system/kdump-saver.service").read_text()
    assert (root / "etc/udev/rules.d/70-kdump-saver.rules").is_file()
