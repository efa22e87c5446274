"""The capture initrd: built by dracut with our module, inspected, and run.

Each built initrd is unpacked and its own Python (the traced closure, nothing
from the host) saves the real fixture vmcore from a chroot of the unpacked
tree: to an ext4 file system for a file target, to a real sshd on 127.0.0.1
for an sftp target.  That proves the closure is complete for the saver's
whole path, makedumpfile included.  Bad configurations are refused by
``build-initrd`` with a clear message and no traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from capture import codecache
from capture.config import options as configuration
from capture.host import initrd as initrd_mod
from conftest import REPO, require, require_program
from servers.sshd import SSHD, SSHLab, ssh_lab, ssh_users, ssh_workdir, sshd_sftp  # noqa: F401

PY = str(Path(sys.executable))


def cli(*args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, "-m", "capture.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdump-saver {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def kernel_version() -> str:
    """The installed Debian cloud kernel (discovered, never pinned)."""
    mods = Path("/lib/modules")
    versions = sorted(p.name for p in mods.iterdir() if (p / "modules.dep").exists()) if mods.is_dir() else []
    cloud = [v for v in versions if v.endswith("-cloud-amd64")]
    require(bool(cloud or versions), "no kernel modules under /lib/modules (install linux-image-cloud-amd64)")
    require_program("dracut")
    require_program("lsinitrd")
    return (cloud or versions)[-1]


class Built:
    """A built initrd, unpacked once into ``root``."""

    def __init__(self, image: Path, root: Path, config: configuration.Config) -> None:
        self.image = image
        self.root = root
        self.config = config
        self.files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}

    def has(self, path: str) -> bool:
        """Whether ``path`` exists in the initrd (through its /lib -> usr/lib style links)."""
        return os.path.lexists(self.root / path.lstrip("/"))

    def bytecode(self) -> List[str]:
        """Every ``.pyc`` of the initrd."""
        return [f for f in self.files if f.endswith(".pyc")]

    def text(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def initrd_config(self) -> configuration.Config:
        return configuration.parse_text(self.text(configuration.INITRD_PATH))

    def launcher_env(self) -> Dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

    def chroot(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``argv`` chrooted into the unpacked initrd, with /dev and /proc
        as the initrd's init would mount them."""
        with bind(Path("/dev"), self.root / "dev"), _proc(self.root / "proc"):
            return subprocess.run(["chroot", str(self.root), *argv], env=self.launcher_env(),
                                  capture_output=True, text=True, timeout=timeout)


def build(tmp: Path, name: str, conf_text: str, kernel: str, *extra: str) -> Built:
    conf = tmp / f"{name}.conf"
    conf.write_text(conf_text)
    image = tmp / f"initrd-{name}"
    cli("build-initrd", "--config", str(conf), "--kernel", kernel, "--output", str(image), *extra, check=True)
    root = tmp / f"{name}-root"
    root.mkdir()
    subprocess.run(["lsinitrd", "--unpack", str(image)], cwd=root, check=True, capture_output=True)
    return Built(image, root, configuration.load(str(conf)))


@contextlib.contextmanager
def bind(source: Path, target: Path) -> Iterator[None]:
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=False)


@contextlib.contextmanager
def _proc(target: Path) -> Iterator[None]:
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=False)


def _ext4(tmp: Path) -> Iterator[Path]:
    require(os.geteuid() == 0, "mounting a test file system needs root")
    require_program("mkfs.ext4")
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        f.truncate(384 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "kdtest", str(image)], check=True)
    mnt = tmp / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    require(mounted.returncode == 0, f"cannot loop-mount an ext4 image: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture(scope="module")
def ext4_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _ext4(tmp_path_factory.mktemp("ext4"))


@pytest.fixture(scope="module")
def file_initrd(tmp_path_factory: pytest.TempPathFactory, ext4_mount: Path, kernel_version: str) -> Built:
    tmp = tmp_path_factory.mktemp("file-initrd")
    return build(tmp, "file", f"KDUMP_SAVEDIR={ext4_mount}/crash\nKDUMP_DUMPLEVEL=31\n", kernel_version)


@pytest.fixture(scope="module")
def sftp_setup(ssh_lab: SSHLab, sshd_sftp: SSHD) -> Dict[str, object]:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    known = ssh_lab.known_hosts(sshd_sftp)
    key = ssh_lab.key_user.keys["ed25519"]  # type: ignore[index]
    url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base / "dumps"))
    conf = (f"KDUMP_SAVEDIR={url}\nKDUMP_SSH_IDENTITY={key}\nKDUMP_KNOWN_HOSTS={known}\n"
            "KDUMP_NET_TIMEOUT=0\nKDUMP_DUMPFORMAT=lzo\n")
    return {"base": base, "known": known, "key": key, "conf": conf, "server": sshd_sftp}


@pytest.fixture(scope="module")
def sftp_initrd(tmp_path_factory: pytest.TempPathFactory, sftp_setup: Dict[str, object],
                kernel_version: str) -> Built:
    tmp = tmp_path_factory.mktemp("sftp-initrd")
    return build(tmp, "sftp", str(sftp_setup["conf"]), kernel_version)


def _python_files(built: Built) -> List[str]:
    return [f for f in built.files if "/python3." in f and f.endswith(".py")]


def _stdlib_top(built: Built, interp_prefix: str) -> List[str]:
    stdlib = f"{interp_prefix.lstrip('/')}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/"
    return sorted({f[len(stdlib):].split("/")[0] for f in built.files if f.startswith(stdlib)})


# --- content -----------------------------------------------------------------------------------

def test_file_initrd_carries_python_makedumpfile_and_config(file_initrd: Built, ext4_mount: Path) -> None:
    interpreter = os.path.realpath(sys.executable)
    assert file_initrd.has(interpreter)
    assert any("libpython3" in f for f in file_initrd.files) or not _is_shared(interpreter)
    for prog in ("makedumpfile", "ip", "mount"):
        assert any(f.endswith(f"bin/{prog}") for f in file_initrd.files), prog
    assert file_initrd.has("usr/bin/kdump-saver")
    assert file_initrd.has("usr/lib/kdump-saver/boot.sh")
    assert file_initrd.has("lib/dracut/hooks/pre-mount/90-kdump-saver-hook.sh")
    assert file_initrd.has("lib/dracut/hooks/cmdline/99-kdump-saver-cmdline.sh")
    # a plain file system by UUID: saved from kdump-saver's /init too, its driver loaded by name
    assert "kdump-saver" in file_initrd.text("init") and file_initrd.has("usr/lib/kdump-saver/dracut-init")
    assert "ext4" in file_initrd.text("etc/kdump-saver/early-modules").split()
    assert any(f.endswith("capture/save/sequence.pyc") for f in file_initrd.bytecode())
    # the production side stays on the production system
    assert not [f for f in file_initrd.files | set(file_initrd.bytecode()) if "/capture/host/" in f]
    assert any(f.endswith("transports/file.pyc") for f in file_initrd.bytecode())
    # only what the file target needs: no ssh stack, no pysmb, no lz4
    for package in ("paramiko", "cryptography", "nacl", "bcrypt", "smb", "tqdm", "lz4"):
        assert not any(f"/{package}/" in f for f in file_initrd.files | set(file_initrd.bytecode())), package
    assert not any(f.endswith(("transports/sftp.py", "transports/sftp.pyc"))
                   for f in file_initrd.files | set(file_initrd.bytecode()))


def test_file_initrd_stdlib_is_the_traced_closure(file_initrd: Built) -> None:
    prefix = os.path.realpath(sys.executable).rsplit("/bin/", 1)[0]
    top = _stdlib_top(file_initrd, prefix)
    # os.pyc: the landmark by which the interpreter finds its prefix
    for needed in ("os.pyc", "encodings", "logging", "subprocess.pyc", "lib-dynload"):
        assert needed in top
    for unneeded in ("tkinter", "unittest", "test", "idlelib", "pydoc_data", "ensurepip", "asyncio", "xml"):
        assert unneeded not in top, unneeded

@pytest.mark.parametrize("name", ["file", "sftp"])
def test_initrd_carries_byte_code_only(name: str, request: pytest.FixtureRequest) -> None:
    """No source and no __pycache__: each module is one sourceless .pyc."""
    built: Built = request.getfixturevalue(f"{name}_initrd")
    everything = built.files | set(built.bytecode())
    assert [f for f in everything if f.endswith(".py")] == []
    assert [f for f in everything if "/__pycache__/" in f] == []
    assert any(f.endswith("/capture/cli.pyc") for f in built.bytecode())
    assert any(f.endswith("/encodings/__init__.pyc") for f in built.bytecode())


def test_initrd_python_takes_dataclass_code_compiled_at_build_time(file_initrd: Built) -> None:
    """The launcher names the code cache build-initrd recorded; with it, the
    save's modules compile no dataclass method in the capture kernel."""
    require_program("chroot")
    launcher = file_initrd.text("usr/bin/kdump-saver")
    assert f"{codecache.ENVIRONMENT}={codecache.INITRD_PATH}" in launcher
    assert file_initrd.has(codecache.INITRD_PATH)
    proc = file_initrd.chroot("/bin/sh", "-c", "export PYTHONPATH=$(sed -n 's/^PYTHONPATH=//p' /usr/bin/kdump-saver) "
                              "KDUMP_SAVER_CODE_CACHE=$(sed -n 's/^KDUMP_SAVER_CODE_CACHE=//p' /usr/bin/kdump-saver); "
                              f"{os.path.realpath(sys.executable)} -S -s -c 'import capture.cli, "
                              "capture.commands.capture_boot, capture.save.boot, capture.save.sequence, "
                              "transports.file, capture.save.pycollector, dataclasses; print(type(dataclasses.exec).__name__, "
                              "dataclasses.exec.compiled)'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CachedExec", "0"], proc.stdout


def test_file_initrd_records_the_file_system_and_config(file_initrd: Built, ext4_mount: Path) -> None:
    uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID",
                           subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(ext4_mount)],
                                          capture_output=True, text=True, check=True).stdout.strip()],
                          capture_output=True, text=True, check=True).stdout.strip()
    fields = file_initrd.text(initrd_mod.FSTAB_PATH).split()
    assert fields[:3] == [f"UUID={uuid}", f"{initrd_mod.MOUNT_ROOT}{ext4_mount}", "ext4"]
    assert fields[3].startswith("rw")
    cfg = file_initrd.initrd_config()
    assert cfg.savedir == f"{initrd_mod.MOUNT_ROOT}{ext4_mount}/crash"
    assert cfg.hostname  # the production host name, recorded at build time
    assert cfg.dumplevel == 31
    stamp = json.loads(file_initrd.text(initrd_mod.STAMP_PATH))
    assert stamp["config_sha256"] == initrd_mod.config_digest(file_initrd.config)
    mode = (file_initrd.root / configuration.INITRD_PATH.lstrip("/")).stat().st_mode & 0o777
    assert mode == 0o600


def test_sftp_initrd_carries_openssh_and_host_key(sftp_initrd: Built, sftp_setup: Dict[str, object]) -> None:
    python = sftp_initrd.files | set(sftp_initrd.bytecode())
    assert any(f.endswith("bin/ssh") for f in sftp_initrd.files), "the OpenSSH client"
    assert any(f.endswith("transports/sftpwire.pyc") for f in sftp_initrd.bytecode())
    for package in ("paramiko", "cryptography", "nacl", "bcrypt", "smb", "nmb", "tqdm", "lz4", "invoke"):
        assert not any(f"/{package}/" in f for f in python), package
    server: SSHD = sftp_setup["server"]  # type: ignore[assignment]
    assert sftp_initrd.text(initrd_mod.KNOWN_HOSTS_PATH).split() == server.known_hosts_line().split()
    cfg = sftp_initrd.initrd_config()
    assert cfg.known_hosts == initrd_mod.KNOWN_HOSTS_PATH
    assert cfg.ssh_identity == (str(sftp_setup["key"]),)
    assert sftp_initrd.has(str(sftp_setup["key"]))
    assert any(os.path.basename(f) in ("dhclient", "dhcpcd", "udhcpc") for f in sftp_initrd.files)
    assert not sftp_initrd.has(initrd_mod.FSTAB_PATH)
    # network only, no scripts: saved from the first hook, the recorded drivers loaded by name
    assert "kdump-saver" in sftp_initrd.text("init") and "dracut" in sftp_initrd.text("usr/lib/kdump-saver/dracut-init")
    assert os.access(sftp_initrd.root / "init", os.X_OK)
    early = {m.replace("-", "_") for m in sftp_initrd.text("etc/kdump-saver/early-modules").split()}
    assert "af_packet" in early
    builtin = "".join(p.read_text() for p in sftp_initrd.root.glob("usr/lib/modules/*/modules.builtin"))
    known = {os.path.basename(f).split(".ko")[0].replace("-", "_")
             for f in [*sftp_initrd.files, *builtin.split()] if ".ko" in f}
    assert early <= known, "every driver loaded by name is in the initrd or built into the kernel"


def test_sftp_initrd_is_under_25_mb(sftp_initrd: Built) -> None:
    assert sftp_initrd.image.stat().st_size < 25 * 2**20


# --- the closure runs ----------------------------------------------------------------------------

def test_file_initrd_python_saves_the_fixture_in_a_chroot(file_initrd: Built, ext4_mount: Path,
                                                          fixture_vmcore: Path) -> None:
    require_program("chroot")
    proc = file_initrd.chroot("/usr/bin/kdump-saver", "--version")
    assert proc.returncode == 0, proc.stderr
    proc = file_initrd.chroot("/usr/bin/kdump-saver", "-v", "check-config")
    assert proc.returncode == 0, proc.stderr
    proc = file_initrd.chroot("/bin/sh", "-c", "PYTHONPATH=$(sed -n 's/^PYTHONPATH=//p' /usr/bin/kdump-saver) "
                              f"{os.path.realpath(sys.executable)} -S -c 'import smb'")
    assert proc.returncode != 0 and "No module named 'smb'" in proc.stderr
    # byte code only, yet a traceback still names the source file and line
    proc = file_initrd.chroot("/bin/sh", "-c", "PYTHONPATH=$(sed -n 's/^PYTHONPATH=//p' /usr/bin/kdump-saver) "
                              f"{os.path.realpath(sys.executable)} -S -c 'import capture.cli, sys; "
                              "print(capture.cli.__file__); from capture.config import targeturl; "
                              "targeturl.parse(\"gopher://x/y\")'")
    assert proc.stdout.strip().endswith("/capture/cli.pyc"), proc.stdout + proc.stderr
    assert re.search(r'File "[^"]*/capture/config/targeturl\.py", line \d+, in parse', proc.stderr), proc.stderr
    assert "unknown scheme 'gopher'" in proc.stderr
    before = set(os.listdir(ext4_mount / "crash")) if (ext4_mount / "crash").exists() else set()
    mnt_in_root = file_initrd.root / f"{initrd_mod.MOUNT_ROOT}{ext4_mount}".lstrip("/")
    with bind(ext4_mount, mnt_in_root), bind(fixture_vmcore, file_initrd.root / "vmcore"):
        proc = file_initrd.chroot("/usr/bin/kdump-saver", "save", "--vmcore", "/vmcore", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = set(os.listdir(ext4_mount / "crash")) - before
    assert len(new) == 1, new
    dump = ext4_mount / "crash" / new.pop() / "vmcore"
    with open(dump, "rb") as f:
        assert f.read(8) == b"KDUMP   "


def test_sftp_initrd_python_saves_to_sshd_from_a_chroot(sftp_initrd: Built, sftp_setup: Dict[str, object],
                                                        fixture_vmcore: Path) -> None:
    require_program("chroot")
    with bind(fixture_vmcore, sftp_initrd.root / "vmcore"):
        proc = sftp_initrd.chroot("/usr/bin/kdump-saver", "save", "--vmcore", "/vmcore", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumps = Path(str(sftp_setup["base"])) / "dumps"
    saved = [d for d in dumps.iterdir() if (d / "vmcore").exists()]
    assert len(saved) == 1, list(dumps.iterdir())
    with open(saved[0] / "vmcore", "rb") as f:
        assert f.read(8) == b"KDUMP   "


def test_systemd_initrd_has_the_unit_wanted_by_initrd_target(tmp_path: Path, ext4_mount: Path,
                                                             kernel_version: str) -> None:
    built = build(tmp_path, "systemd", f"KDUMP_SAVEDIR={ext4_mount}/crash\n", kernel_version, "--systemd")
    unit = [f for f in built.files if f.endswith("systemd/system/kdump-saver-capture.service")]
    assert unit
    assert "ExecStart=/usr/lib/kdump-saver/boot.sh" in built.text(unit[0])
    assert "ConditionPathExists=/proc/vmcore" in built.text(unit[0])
    assert any(f.endswith("initrd.target.wants/kdump-saver-capture.service") for f in built.files)
    assert not built.has("lib/dracut/hooks/pre-mount/90-kdump-saver-hook.sh")


# --- refused configurations ------------------------------------------------------------------------

def _refused(tmp: Path, conf_text: str) -> str:
    conf = tmp / "kdump.conf"
    conf.write_text(conf_text)
    proc = cli("build-initrd", "--config", str(conf), "--check", "--kernel", os.uname().release)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_refuses_sftp_without_a_known_host_key(tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    err = _refused(tmp_path, f"KDUMP_SAVEDIR=sftp://u@127.0.0.1:2222/d\nKDUMP_SSH_IDENTITY={key}\n"
                             f"KDUMP_KNOWN_HOSTS={empty}\n")
    assert "no host key for 127.0.0.1:2222" in err and "KDUMP_HOST_KEY" in err


def test_refuses_a_missing_or_encrypted_identity(tmp_path: Path) -> None:
    err = _refused(tmp_path, f"KDUMP_SAVEDIR=sftp://u@127.0.0.1/d\nKDUMP_HOST_KEY=*\n"
                             f"KDUMP_SSH_IDENTITY={tmp_path}/nokey\n")
    assert f"{tmp_path}/nokey does not exist" in err
    key = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(key)], check=True)
    err = _refused(tmp_path, f"KDUMP_SAVEDIR=sftp://u@127.0.0.1/d\nKDUMP_HOST_KEY=*\nKDUMP_SSH_IDENTITY={key}\n")
    assert str(key) in err and "unencrypted" in err
    assert "secret-pass" not in err


def test_refuses_an_unresolvable_host(tmp_path: Path) -> None:
    err = _refused(tmp_path, "KDUMP_SAVEDIR=ftp://dumps.nonexistent.invalid/crash\n")
    assert "cannot resolve the host 'dumps.nonexistent.invalid'" in err


def test_refuses_a_bad_url(tmp_path: Path) -> None:
    err = _refused(tmp_path, "KDUMP_SAVEDIR=gopher://host/path\n")
    assert "KDUMP_SAVEDIR" in err and "gopher" in err


def test_refuses_missing_required_programs(tmp_path: Path, ext4_mount: Path) -> None:
    err = _refused(tmp_path, f"KDUMP_SAVEDIR={ext4_mount}/crash\nKDUMP_REQUIRED_PROGRAMS=\"no-such-prog-kd\"\n")
    assert "KDUMP_REQUIRED_PROGRAMS: no-such-prog-kd is not installed" in err


def test_refuses_a_local_target_in_memory(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    require(shm.is_dir(), "/dev/shm (a tmpfs) is missing")
    err = _refused(tmp_path, "KDUMP_SAVEDIR=/dev/shm/kdump-crash\n")
    assert "tmpfs" in err and "lost at the reboot" in err


def _is_shared(interpreter: str) -> bool:
    out = subprocess.run(["ldd", interpreter], capture_output=True, text=True).stdout
    return "libpython" in out


@pytest.mark.parametrize("settings, early", [
    ({"savedir": "sftp://u@127.0.0.1/d"}, True),
    ({"savedir": "nfs://127.0.0.1/d cifs://u@127.0.0.1/s/d"}, True),
    ({"savedir": "sftp://u@127.0.0.1/d", "prescript": "/usr/local/bin/x"}, False),
    ({"savedir": "sftp://u@127.0.0.1/d", "postscript": "/usr/local/bin/x"}, False),
    ({"savedir": "sftp://u@127.0.0.1/d", "transfer": "/usr/local/bin/x"}, False),
])
def test_only_plain_targets_without_scripts_save_before_udev(settings: dict, early: bool) -> None:
    cfg = configuration.Config(**settings)
    p = initrd_mod.Plan(config=cfg, initrd_config=cfg, kernel="k", closure=None,  # type: ignore[arg-type]
                        programs=(), optional_programs=(), kernel_modules=("virtio_net",), files=())
    assert initrd_mod.saves_before_udev(p) is early

    def disk(source: str) -> initrd_mod.MountRecord:
        return initrd_mod.MountRecord(source, "ext4", "rw", "/var/crash", "/kdump/mnt/var/crash")
    for source, plain in (("UUID=0b3e-11", True), ("LABEL=crash", True), ("/dev/vdb1", True),
                          ("/dev/mapper/vg-crash", False), ("/dev/md0", False), ("/dev/disk/by-id/x", False)):
        assert initrd_mod.saves_before_udev(dataclasses.replace(p, mounts=(disk(source),))) is (plain and early), source
    stacked = dataclasses.replace(p, mounts=(disk("UUID=0b3e-11"),),
                                  storage=initrd_mod.storage.Needs(dracut_modules=("lvm",), cmdline=("rd.lvm.lv=vg/crash",)))
    assert initrd_mod.saves_before_udev(stacked) is False


# --- the traced closure per target (no dracut) ------------------------------------------------------

@pytest.mark.parametrize("savedir, fmt, wanted, unwanted", [
    ("/var/crash", "compressed", set(), {"paramiko", "cryptography", "smb", "tqdm", "lz4"}),
    ("/var/crash", "raw", {"lz4"}, {"paramiko", "smb"}),
    ("sftp://u@127.0.0.1/d", "lzo", set(), {"paramiko", "cryptography", "smb", "lz4", "invoke"}),
    ("ssh://u@127.0.0.1/d", "compressed", set(), {"paramiko", "cryptography", "smb", "lz4"}),
    ("cifs://u@127.0.0.1/share/d", "compressed", {"smb", "nmb", "pyasn1", "tqdm"}, {"paramiko", "lz4"}),
    ("ftp://127.0.0.1/d", "compressed", set(), {"paramiko", "smb", "lz4"}),
    ("nfs://127.0.0.1/d", "compressed", set(), {"paramiko", "smb", "lz4"}),
])
def test_closure_has_only_the_target_dependencies(savedir: str, fmt: str, wanted: set, unwanted: set) -> None:
    from capture.config.targeturl import parse

    cfg = configuration.Config(savedir=savedir, dumpformat=fmt)
    trace = initrd_mod.trace_closure(cfg, parse(savedir))
    packages = set(trace.packages)
    assert wanted <= packages, wanted - packages
    assert not (unwanted & packages), unwanted & packages
    assert {"capture", "transports"} <= packages
    assert "encodings.idna" in trace.stdlib_modules  # host names are IDNA-encoded at connect time
    assert os.path.realpath(sys.executable) in trace.files


def test_a_hard_import_of_a_blocked_package_fails_the_build(tmp_path: Path) -> None:
    from capture.host import closure
    from capture.errors import KdumpError

    pkg = tmp_path / "kdtracepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import smb\n")
    site = str(Path(closure.package_root("smb")))
    with pytest.raises(KdumpError, match="kdtracepkg -> ImportError: not in this initrd: smb"):
        closure.trace(["kdtracepkg"], (), allowed_roots=(), path=[str(tmp_path), site])
    trace = closure.trace(["kdtracepkg"], (), allowed_roots=("smb",), path=[str(tmp_path), site])
    assert any(f.endswith("smb/__init__.py") for f in trace.files)
