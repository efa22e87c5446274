"""Every shared object in a capture initrd finds its libraries there.

dracut resolves the shared libraries only of files with an execute bit;
Debian installs Python's extension modules 0644, so without our own
resolution an ftp initrd had ``_ssl.*.so`` but not ``libssl.so.3`` and the
saver died with ``ImportError`` in the capture kernel.  Each initrd here is
built by ``build-initrd`` with the distribution's ``/usr/bin/python3`` (in a
virtual environment holding the dependencies) and with the interpreter of
the tests, for the targets whose closures differ; then, for every ``.so`` in the initrd, every
library ``ldd`` names must be in it, and the initrd's own Python, chrooted,
must import every extension module of its ``lib-dynload``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from capture.config import options as configuration
from conftest import REPO, require, require_program
from test_initrd import Built, _ext4, kernel_version  # noqa: F401 (a fixture)

SYSTEM_PYTHON = "/usr/bin/python3"
SHARED_OBJECT = re.compile(r"\.so(\.[0-9]+)*$")
LDD_LIBRARY = re.compile(r"=>\s+(/\S+)\s+\(0x|^\s*(/\S+)\s+\(0x")


@pytest.fixture(scope="module")
def system_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The distribution's Python in a virtual environment with kdump-saver's
    dependencies (the saver itself is imported from the tree)."""
    require(os.path.exists(SYSTEM_PYTHON), f"{SYSTEM_PYTHON} is missing (install python3)")
    import tomllib

    venv = tmp_path_factory.mktemp("system-python") / "venv"
    made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    require(made.returncode == 0, f"{SYSTEM_PYTHON} -m venv fails (install python3-venv): {made.stderr.strip()}")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *deps],
                          capture_output=True, text=True, timeout=600)
    require(proc.returncode == 0 or "No matching distribution found" not in proc.stderr,
            f"the dependencies cannot be installed: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stderr
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def ext4_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _ext4(tmp_path_factory.mktemp("libraries-ext4"))


def _config(target: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if target == "file":
        mnt: Path = request.getfixturevalue("ext4_mount")
        return f"KDUMP_SAVEDIR={mnt}/crash\n"
    if target == "sftp":
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        return f"KDUMP_SAVEDIR=sftp://kd@127.0.0.1/crash\nKDUMP_SSH_IDENTITY={key}\nKDUMP_HOST_KEY=*\n"
    return {"ftp": "KDUMP_SAVEDIR=ftp://kd:pw@127.0.0.1/crash\n",
            "cifs": "KDUMP_SAVEDIR=cifs://kd:pw@127.0.0.1/share/crash\n"}[target]


def build_with(python: str, tmp: Path, conf_text: str, kernel: str) -> Built:
    """``build-initrd`` run by ``python`` (the saver from the tree), unpacked."""
    conf = tmp / "kdump.conf"
    conf.write_text(conf_text)
    conf.chmod(0o600)
    image = tmp / "initrd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([python, "-m", "capture.cli", "build-initrd", "--config", str(conf), "--kernel", kernel,
                           "--output", str(image)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    root = tmp / "root"
    root.mkdir()
    subprocess.run(["lsinitrd", "--unpack", str(image)], cwd=root, check=True, capture_output=True)
    return Built(image, root, configuration.load(str(conf)))


def shared_objects(built: Built) -> List[str]:
    """The ELF shared objects of the initrd (libraries and extension modules)."""
    found = []
    for rel in sorted(built.files):
        path = built.root / rel
        if SHARED_OBJECT.search(rel) and path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(rel)
    return found


def missing_libraries(built: Built, objects: List[str]) -> Dict[str, List[str]]:
    """For each shared object, the libraries ``ldd`` names (on the host, at
    the same path) that the initrd lacks."""
    missing: Dict[str, List[str]] = {}
    for rel in objects:
        out = subprocess.run(["ldd", f"/{rel}"], capture_output=True, text=True).stdout
        lacking = [line.split()[0] for line in out.splitlines() if "not found" in line]
        for line in out.splitlines():
            m = LDD_LIBRARY.search(line)
            lib = m and (m.group(1) or m.group(2))
            if lib and not built.has(lib):
                lacking.append(lib)
        if lacking:
            missing[rel] = lacking
    return missing


def extension_imports(built: Built) -> subprocess.CompletedProcess:
    """The initrd's own Python, chrooted, imports every module of its lib-dynload."""
    names = sorted({os.path.basename(f).split(".")[0] for f in built.files if "/lib-dynload/" in f
                    and SHARED_OBJECT.search(f)})
    assert names
    launcher = built.text("usr/bin/kdump-saver")
    interpreter = re.search(r"^exec (\S+) ", launcher, re.M).group(1)  # type: ignore[union-attr]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    return built.chroot("/bin/sh", "-c", "PYTHONPATH=$(sed -n 's/^PYTHONPATH=//p' /usr/bin/kdump-saver) "
                        f"{interpreter} -S -c \"$0\"", code)


#: the targets whose closures differ: ssl (ftp), paramiko's stack (sftp; ssh is
#: the same), pysmb (cifs), none of those (file; nfs is the same)
@pytest.mark.parametrize("interpreter, target", [
    ("system", "ftp"), ("system", "sftp"), ("system", "cifs"), ("system", "file"), ("tests", "ftp"),
])
def test_every_shared_object_has_its_libraries(interpreter: str, target: str, kernel_version: str,  # noqa: F811
                                               tmp_path: Path, request: pytest.FixtureRequest) -> None:
    require_program("ldd")
    require_program("chroot")
    if interpreter == "system":
        python = request.getfixturevalue("system_python")
    else:
        if os.path.realpath(sys.executable) == os.path.realpath(SYSTEM_PYTHON):
            pytest.skip("the tests run on the system Python: the system case covers it")
        python = sys.executable
    built = build_with(python, tmp_path, _config(target, tmp_path, request), kernel_version)
    objects = shared_objects(built)
    if target == "ftp":  # ftplib imports ssl (ftps), the case that failed in the capture kernel
        assert [f for f in objects if re.search(r"/lib-dynload/_ssl\.[^/]*so$", f)]
    assert missing_libraries(built, objects) == {}
    proc = extension_imports(built)
    assert proc.returncode == 0, proc.stderr
