"""Run network-namespace tests inside a QEMU guest whose kernel has what the host's lacks.

Some host kernels are built without VLAN (8021q) or bonding support, so the
VLAN and bond tests cannot create those links there.  This module boots the
Debian cloud kernel under QEMU (TCG, no network device at all: the guest only
talks to namespaces it creates itself) with an initramfs holding a static
busybox, ``ip``, this Python interpreter with its standard library, the
virtual environment's pytest and the repository's ``capture`` package and
tests, at the same paths as on the host.  The guest loads veth, 8021q,
bonding and bridge, runs ``pytest -rA`` on the selected tests with
``CI=true`` (a missing prerequisite fails there) and powers off; the host
reads each test's outcome from the serial console.
"""
from __future__ import annotations

import glob
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parent.parent
GUEST_ENV = "KDUMP_SAVER_NET_GUEST"
MODULES = ("veth", "8021q", "bonding", "bridge")
_STDLIB_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
                "site-packages", "distutils", "__phello__"}
_SITE_KEEP = ("_pytest", "pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py")


def in_guest() -> bool:
    return os.environ.get(GUEST_ENV) == "1"


def guest_kernel() -> Optional[str]:
    """The newest installed Debian cloud kernel version with its modules, or None."""
    versions = []
    for path in glob.glob("/boot/vmlinuz-*-cloud-amd64"):
        version = path[len("/boot/vmlinuz-"):]
        if Path(f"/usr/lib/modules/{version}/kernel").is_dir():
            versions.append(version)
    key = lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", v)]  # noqa: E731
    return sorted(versions, key=key)[-1] if versions else None


def prerequisites() -> Optional[str]:
    """None when a guest can be booted here, else what is missing."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (bash tests/setup.sh installs it)"
    if guest_kernel() is None:
        return "no Debian cloud kernel (linux-image-cloud-amd64) with modules in /boot"
    busybox = shutil.which("busybox")
    if busybox is None or _needs_libraries(busybox):
        return "a static busybox is not installed (busybox-static)"
    if shutil.which("modprobe") is None and not os.path.exists("/usr/sbin/modprobe"):
        return "modprobe (kmod) is not installed"
    return None


@dataclass
class GuestRun:
    returncode: Optional[int]        # pytest's exit status in the guest, None if it never finished
    outcomes: Dict[str, str]         # node id -> PASSED / FAILED / SKIPPED / ERROR
    console: str

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def run_tests(node_ids: Iterable[str], timeout: float = 900) -> GuestRun:
    """Boot a guest and run ``pytest`` on ``node_ids`` (paths relative to the repository)."""
    version = guest_kernel()
    assert version is not None
    with tempfile.TemporaryDirectory(prefix="kdump-netvm-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        build_initramfs(Path(tmp) / "root", initrd, version, list(node_ids))
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot",
                "-nic", "none", "-kernel", f"/boot/vmlinuz-{version}", "-initrd", str(initrd),
                "-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            console = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            console = (exc.stdout or b"").decode(errors="replace") + "\n[host: guest timed out]"
    console = console.replace("\r", "")
    match = re.search(r"KDS-GUEST-EXIT (\d+)", console)
    outcomes = {m.group(2): m.group(1) for m in
                re.finditer(r"^(PASSED|FAILED|SKIPPED|ERROR) (\S+::\S+)", console, re.M)}
    return GuestRun(int(match.group(1)) if match else None, outcomes, console)


def build_initramfs(root: Path, out: Path, version: str, node_ids: List[str]) -> None:
    root.mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), root / name)
    for d in ("proc", "sys", "dev", "run", "tmp", "etc/netns", "root", "mods", "bb", "usr/lib", "usr/lib64",
              "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.mknod(root / "dev/console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    (root / "var").mkdir()
    os.symlink("../run", root / "var/run")
    (root / "var/tmp").mkdir()
    (root / "etc/resolv.conf").write_text("# guest\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bb/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")

    shutil.copy2(shutil.which("busybox"), root / "bb/busybox")  # type: ignore[arg-type]
    ip = shutil.which("ip") or "/usr/sbin/ip"
    python = os.path.realpath(sys.executable)
    for program in (ip, python):
        _copy_with_libraries(root, program)
    _copy_tree(root, Path(os.__file__).parent, skip=_STDLIB_SKIP)
    for path in glob.glob(os.path.join(sys.base_prefix, "lib", "libpython*.so*")):
        _copy_file(root, path)
    for path in glob.glob(os.path.join(os.path.dirname(os.__file__), "lib-dynload", "*.so")):
        _copy_with_libraries(root, path)
    if sys.prefix != sys.base_prefix:                    # the virtual environment, pytest only
        venv = Path(sys.prefix)
        _copy_file(root, str(venv / "pyvenv.cfg"))
        for link in (venv / "bin").iterdir():
            if link.name.startswith("python"):
                _copy_links(root, str(link))
        site = Path(sysconfig.get_paths()["purelib"])
        for entry in site.iterdir():
            if entry.name in _SITE_KEEP or entry.name.split("-")[0] in _SITE_KEEP and entry.name.endswith(".dist-info"):
                _copy_tree(root, entry) if entry.is_dir() else _copy_file(root, str(entry))
    for part in ("capture", "transports", "tests/conftest.py", "tests/netns.py", "tests/netvm.py", "tests/test_network.py",
                 "pyproject.toml"):
        path = REPO / part
        _copy_tree(root, path) if path.is_dir() else _copy_file(root, str(path))

    order = []
    for module in MODULES:
        proc = subprocess.run(["modprobe", "-S", version, "--show-depends", module],
                              capture_output=True, text=True, check=True)
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:1] != ["insmod"]:
                continue
            ko = words[1]
            name = Path(ko).name.replace(".xz", "").replace(".zst", "")
            if name in [o[0] for o in order]:
                continue
            data = lzma.decompress(Path(ko).read_bytes()) if ko.endswith(".xz") else Path(ko).read_bytes()
            (root / "mods" / name).write_bytes(data)
            order.append((name, " ".join(words[2:])))
    (root / "mods/order").write_text("".join(f"{n} {p}\n" for n, p in order))

    python_in_venv = Path(sys.executable) if sys.prefix != sys.base_prefix else Path(python)
    init = f"""#!/bb/busybox sh
/bb/busybox --install -s /bb
export PATH=/usr/sbin:/usr/bin:/bb HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
while read name params; do insmod /mods/$name $params || echo "KDS-GUEST insmod $name failed"; done < /mods/order
ip link set lo up
cd {REPO}
echo KDS-GUEST-START
CI=true {GUEST_ENV}=1 {python_in_venv} -m pytest -p no:cacheprovider --color=no -rA -q {' '.join(node_ids)} 2>&1
echo "KDS-GUEST-EXIT $?"
poweroff -f
"""
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    with open(out, "wb") as f:
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=root, input=files, stdout=f, check=True)


def _needs_libraries(program: str) -> bool:
    proc = subprocess.run(["ldd", program], capture_output=True, text=True)
    return proc.returncode == 0 and "=>" in proc.stdout


def _place(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _copy_file(root: Path, path: str) -> None:
    dest = _place(root, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(path, dest, follow_symlinks=True)


def _copy_links(root: Path, path: str) -> None:
    """``path`` and, when it is a symbolic link, the link and everything along its chain."""
    while os.path.islink(path):
        dest = _place(root, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = os.readlink(path)
        if not os.path.lexists(dest):
            os.symlink(target, dest)
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    _copy_file(root, path)


def _copy_with_libraries(root: Path, program: str) -> None:
    _copy_file(root, program)
    proc = subprocess.run(["ldd", program], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            _copy_file(root, match.group(1))


def _copy_tree(root: Path, top: Path, skip: Iterable[str] = ()) -> None:
    skip = set(skip)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            if name.endswith((".opt-1.pyc", ".opt-2.pyc")):
                continue
            _copy_file(root, os.path.join(dirpath, name))
