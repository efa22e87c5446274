"""End to end: a real kernel under QEMU crashes and kdump-saver saves its dump.

Each case of qemu-harness's matrix (file, sftp, ssh, ftp, ftps, cifs, nfs, a static
ip=, KDUMP_KEEP_OLD_DUMPS over three crashes, KDUMP_FREE_DISK_SIZE on a disk
too small) builds the capture initrd with ``kdump-saver build-initrd``,
boots Debian's cloud kernel under QEMU (TCG, user networking with
restrict=on and guestfwd to servers on 127.0.0.1), loads the capture kernel
with what ``kdump-saver load`` says, panics with sysrq, and checks on the
host: README.txt, ``makedumpfile --dump-dmesg`` against dmesg.txt, and
``crash`` with the -dbg vmlinux (PANIC line, backtrace through
sysrq_handle_crash).  A failure prints every check that failed and the
console logs.  The prerequisites come from qemu-harness/setup.sh (run by
tests/setup.sh).

The ``debian`` cases boot a real Debian 12 image (debootstrap, cached under
/var/tmp/kdump-saver-debian; about 3 minutes to build from nothing, seconds
when only kdump-saver changed) in which kdump-saver.service builds and loads
the capture initrd itself; the harness only types ``kdump-saver status`` and
``kdump-saver test --yes`` on its console (see qemu-harness/qharness/debian_case.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, require, require_program

sys.path.insert(0, str(REPO / "qemu-harness"))

from qharness import cases, debian_case, runner  # noqa: E402
from qharness.kernel import KernelMissing, discover  # noqa: E402


@pytest.fixture(scope="module")
def guest_kernel():
    require(os.geteuid() == 0, "the QEMU tests mount disk images and run servers as root")
    for program in ("qemu-system-x86_64", "kexec", "makedumpfile", "crash", "dracut", "mkfs.ext4",
                    "sshd", "smbd", "vsftpd", "ganesha.nfsd"):
        require_program(program)
    require(Path("/bin/busybox").exists(), "busybox-static is not installed (qemu-harness/setup.sh)")
    try:
        kernel = discover()
    except KernelMissing as exc:
        require(False, f"{exc} (qemu-harness/setup.sh installs linux-image-cloud-amd64)")
    require(kernel.debug_vmlinux.exists(),
            f"{kernel.debug_vmlinux} is missing: install linux-image-{kernel.version}-dbg (qemu-harness/setup.sh)")
    commands = subprocess.run(runner.kdump_saver_command() + ["--help"], capture_output=True, text=True).stdout
    for command in ("build-initrd", "load"):
        require(command in commands, f"kdump-saver has no {command} command yet")
    return kernel


@pytest.mark.parametrize("case", cases.MATRIX, ids=[c.name for c in cases.MATRIX])
def test_crash_is_saved(case: cases.Case, guest_kernel) -> None:
    base = Path(tempfile.mkdtemp(prefix=f"qharness-{case.name}-", dir="/var/tmp"))
    base.chmod(0o755)     # the FTP and Samba users must reach their directories below
    result = runner.run_case(case, base / case.name, kernel=guest_kernel)
    if not result.ok:
        pytest.fail(result.report() + "\n" + result.console_logs(), pytrace=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", debian_case.CASES, ids=[c.name for c in debian_case.CASES])
def test_real_debian_guest_arms_itself_and_saves(case: debian_case.DebianCase, guest_kernel) -> None:
    require_program("debootstrap")
    base = Path(tempfile.mkdtemp(prefix=f"qharness-{case.name}-", dir="/var/tmp"))
    result = debian_case.run_case(case, base / case.name, kernel=guest_kernel)
    print(result.report())
    if not result.ok:
        pytest.fail(result.report() + "\n" + result.console_logs(), pytrace=False)
    shutil.rmtree(base, ignore_errors=True)


def test_initramfs_archives_round_trip_through_gnu_cpio(tmp_path: Path) -> None:
    """The harness's newc writer produces what GNU cpio extracts, and its reader
    reads GNU cpio's output back, xz-compressed and concatenated as in an initrd."""
    require_program("cpio")
    from qharness import cpio

    arc = cpio.Archive()
    arc.file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    arc.symlink("bin", "usr/bin")
    arc.file("bin/other", b"via the link\n", 0o600)       # lands in usr/bin through the symlink
    arc.file("etc/empty", b"", 0o644)
    image = tmp_path / "mine.cpio"
    arc.write_file(image)
    out = tmp_path / "extracted"
    out.mkdir()
    with open(image, "rb") as f:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=f, cwd=out, check=True)
    assert (out / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(out / "usr/bin/tool").st_mode & 0o777 == 0o755
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "usr/bin/other").read_bytes() == b"via the link\n"
    assert (out / "etc/empty").read_bytes() == b""

    # GNU cpio's own archive, with a hard link, xz-compressed after a plain one
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/a").write_bytes(b"shared content\n")
    os.link(src / "d/a", src / "d/b")
    listing = "\n".join(["d", "d/a", "d/b"]) + "\n"
    gnu = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing.encode(), cwd=src,
                         capture_output=True, check=True).stdout
    combined = tmp_path / "combined.img"
    combined.write_bytes(image.read_bytes() + subprocess.run(["xz", "--check=crc32", "-c"], input=gnu,
                                                             capture_output=True, check=True).stdout)
    members = dict(cpio.read_image(combined))
    assert members["usr/bin/tool"].data == b"#!/bin/sh\necho hi\n"
    assert members["d/a"].data == members["d/b"].data == b"shared content\n"


def test_console_reads_prompts_and_types(tmp_path: Path) -> None:
    """The console the debian cases type on: a prompt without newline is seen,
    colours are removed even when an escape sequence arrives in two pieces,
    typed text reaches the program, and its end is noticed."""
    from qharness.console import Console, ConsoleTimeout

    script = ("printf 'boot \\033[0;3'; sleep 0.3; printf '2mOK\\033[0m done\\n'; "
              "printf 'root@guest:~# '; read line; echo \"got-$line\"; sleep 0.2")
    with Console(["sh", "-c", script], tmp_path / "console.log") as con:
        assert con.expect(r"^boot OK done$", 10).index == 0
        con.expect(r"root@guest:\S*# ?$", 10, partial=True)
        mark = con.mark()
        con.send("hello\n")
        # no terminal echoes here: the answer completes the prompt's line
        assert con.expect(r"^root@guest:~# got-hello$", 10, since=mark).index == mark
        with pytest.raises(ConsoleTimeout, match="QEMU exited"):
            con.expect("never printed", 10)
    assert "got-hello" in (tmp_path / "console.log").read_text()


def test_debian_image_key_is_the_wheels_content(tmp_path: Path) -> None:
    """The image cache is keyed by what the wheel holds: two builds of the same
    checkout give the same key, a changed file a different one."""
    from qharness import debian

    first = debian.wheel_digest(debian.build_wheel(tmp_path / "a"))
    again = debian.wheel_digest(debian.build_wheel(tmp_path / "b"))
    assert first == again
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    with open(src / "capture" / "__init__.py", "a") as f:
        f.write("\n# changed\n")
    assert debian.wheel_digest(debian.build_wheel(tmp_path / "c", source=src)) != first
