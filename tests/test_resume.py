"""Resume after a dropped connection, against real servers on 127.0.0.1.

The fault matrix: for sftp, ssh and cifs a :class:`~servers.proxy.CuttingProxy`
between the saver and the server resets the connection after about 10, 50
and 90 % of the dump has gone to the server; for ftp (whose data
connections do not pass a proxy) and once for sftp, the server process of
the connection is killed at those points (a server restart).  The listener
stays up, so the saver reconnects within KDUMP_NET_TIMEOUT and continues:
the saved vmcore must equal what the file target gives.  nfs is not here:
its resume needs an NFS server restart, which only the QEMU matrix can do.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

from conftest import require, sha256_of
from servers.ftpd import FtpServer
from servers.proxy import CuttingProxy
from servers.smbd import SambaServer
from servers.sshd import SSHD, SSHLab, ssh_lab, ssh_users, ssh_workdir, sshd_nosftp, sshd_sftp  # noqa: F401
from capture.config.options import Config
from capture.formats.flattened import reassemble
from capture.save.sequence import save

FRACTIONS = (0.1, 0.5, 0.9)
NET_TIMEOUT = 10


@pytest.fixture(scope="module")
def dump_size(file_target_result: Path) -> int:
    """Bytes of the standard vmcore (lzo, -d 31) the file target holds."""
    return (file_target_result / "vmcore").stat().st_size


@pytest.fixture(scope="module")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    require(os.geteuid() == 0, "smbd and its test account need root")
    server = SambaServer(tmp_path_factory.mktemp("smbd-resume")).start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def ftpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    require(os.geteuid() == 0, "vsftpd and its test account need root")
    server = FtpServer(tmp_path_factory.mktemp("ftpd-resume")).start()
    yield server
    server.remove()


def ssh_config(lab: SSHLab, server: SSHD, **changes: object) -> Config:
    """lzo -d 31 as the key user; the host key given directly (the proxy has its own port)."""
    values: Dict[str, object] = dict(dumpformat="lzo", dumplevel=31, net_timeout=NET_TIMEOUT, free_disk_size=1,
                                     host_key=server.host_keys["ed25519"],
                                     ssh_identity=(str(lab.key_user.keys["ed25519"]),))
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def only_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_equal_to_file_target(saved: Path, file_target_result: Path, tmp_path: Path) -> None:
    """The dump directory holds the file target's vmcore (rebuilt from vmcore.flat where stored so)."""
    if (saved / "vmcore.flat").exists():
        rebuilt = tmp_path / "rebuilt"
        reassemble(str(saved / "vmcore.flat"), str(rebuilt))
        vmcore = rebuilt
    else:
        vmcore = saved / "vmcore"
    assert sha256_of(vmcore) == sha256_of(file_target_result / "vmcore")
    assert (saved / "dmesg.txt").read_bytes() == (file_target_result / "dmesg.txt").read_bytes()
    readme = (saved / "README.txt").read_text()
    assert readme.startswith("vmcore status: saved successfully")
    assert not [p for p in saved.iterdir() if p.name.endswith(".incomplete")]


def resumed_after(caplog: pytest.LogCaptureFixture) -> float:
    """Seconds from the last word of the old connection to the resumed transfer, from the log."""
    found = re.findall(r"resumed .* ([0-9.]+) s after the server was last heard", caplog.text)
    assert found, "the log says the transfer was resumed"
    return float(found[-1])


def cut_when(partial: Callable[[], int], threshold: int, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` once ``partial()`` (bytes of the file being written) passes ``threshold``."""
    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if partial() >= threshold:
                action()
                return
            time.sleep(0.002)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def partial_size(root: Path) -> Callable[[], int]:
    def size() -> int:
        for p in root.glob("*/vmcore.incomplete"):
            try:
                return p.stat().st_size
            except OSError:
                return 0
        return 0
    return size


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sftp_resumes_after_a_cut(fraction: float, ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path,
                                  file_target_result: Path, dump_size: int, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with CuttingProxy(sshd_sftp.port) as proxy, caplog.at_level(logging.INFO):
        proxy.cut_at = int(dump_size * fraction)
        url = f"sftp://{ssh_lab.key_user.name}@127.0.0.1:{proxy.port}{base}"
        result = save(ssh_config(ssh_lab, sshd_sftp), vmcore=str(fixture_vmcore), savedir=url)
    assert len(proxy.cuts) == 1
    assert_equal_to_file_target(base / result.directory, file_target_result, tmp_path)
    print(f"sftp cut at {fraction:.0%}: resumed {resumed_after(caplog):.2f} s after the cut")


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_ssh_resumes_after_a_cut(fraction: float, ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                 file_target_result: Path, dump_size: int, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with CuttingProxy(sshd_nosftp.port) as proxy, caplog.at_level(logging.INFO):
        proxy.cut_at = int(dump_size * fraction)
        url = f"ssh://{ssh_lab.key_user.name}@127.0.0.1:{proxy.port}{base}"
        result = save(ssh_config(ssh_lab, sshd_nosftp), vmcore=str(fixture_vmcore), savedir=url)
    assert len(proxy.cuts) == 1
    assert_equal_to_file_target(base / result.directory, file_target_result, tmp_path)
    print(f"ssh cut at {fraction:.0%}: resumed {resumed_after(caplog):.2f} s after the cut")


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_cifs_resumes_after_a_cut(fraction: float, smbd: SambaServer, fixture_vmcore: Path,
                                  file_target_result: Path, dump_size: int, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    name = f"cut{int(fraction * 100)}"
    with CuttingProxy(smbd.port) as proxy, caplog.at_level(logging.INFO):
        proxy.cut_at = int(dump_size * fraction)
        url = f"cifs://{smbd.user}:{smbd.password}@127.0.0.1:{proxy.port}/{smbd.share}/{name}"
        result = save(Config(dumpformat="lzo", dumplevel=31, net_timeout=NET_TIMEOUT, free_disk_size=1),
                      vmcore=str(fixture_vmcore), savedir=url)
    assert len(proxy.cuts) == 1
    assert_equal_to_file_target(smbd.share_dir / name / result.directory, file_target_result, tmp_path)
    assert smbd.password not in caplog.text
    print(f"cifs cut at {fraction:.0%}: resumed {resumed_after(caplog):.2f} s after the cut")


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_ftp_resumes_after_the_server_process_is_killed(fraction: float, ftpd: FtpServer, fixture_vmcore: Path,
                                                        file_target_result: Path, dump_size: int, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    name = f"kill{int(fraction * 100)}"
    root = ftpd.home / name
    killed: list = []
    cutter = cut_when(partial_size(root), int(dump_size * fraction), lambda: killed.append(ftpd.kill_sessions()))
    with caplog.at_level(logging.INFO):
        result = save(Config(dumpformat="lzo", dumplevel=31, net_timeout=NET_TIMEOUT, free_disk_size=1),
                      vmcore=str(fixture_vmcore), savedir=ftpd.url(f"/{name}"))
    cutter.join(5)
    assert killed and killed[0] > 0, "the server's session was killed during the transfer"
    assert_equal_to_file_target(root / result.directory, file_target_result, tmp_path)
    assert ftpd.password not in caplog.text
    print(f"ftp killed at {fraction:.0%}: resumed {resumed_after(caplog):.2f} s after the last send")


def test_sftp_resumes_after_the_server_process_is_killed(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path,
                                                         file_target_result: Path, dump_size: int,
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    killed: list = []
    cutter = cut_when(partial_size(base), dump_size // 2, lambda: killed.append(sshd_sftp.kill_sessions()))
    with caplog.at_level(logging.INFO):
        url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base))
        result = save(ssh_config(ssh_lab, sshd_sftp), vmcore=str(fixture_vmcore), savedir=url)
    cutter.join(5)
    assert killed and killed[0] > 0
    assert_equal_to_file_target(base / result.directory, file_target_result, tmp_path)


@pytest.mark.parametrize("scheme", ["sftp", "cifs"])
def test_server_gone_longer_than_the_timeout_then_the_next_target(scheme: str, ssh_lab: SSHLab, sshd_sftp: SSHD,
                                                                  smbd: SambaServer, fixture_vmcore: Path,
                                                                  file_target_result: Path, dump_size: int,
                                                                  tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    timeout = 5  # the first handshake must fit in it on a loaded machine
    local = tmp_path / "local"
    with CuttingProxy(sshd_sftp.port if scheme == "sftp" else smbd.port) as proxy:
        proxy.cut_at, proxy.down = dump_size // 2, 60
        if scheme == "sftp":
            base = ssh_lab.fresh_dir(ssh_lab.key_user)
            first = f"sftp://{ssh_lab.key_user.name}@127.0.0.1:{proxy.port}{base}"
            config = ssh_config(ssh_lab, sshd_sftp, net_timeout=timeout, savedir=f"{first} file://{local}")
        else:
            base = smbd.share_dir / "gone"
            first = f"cifs://{smbd.user}:{smbd.password}@127.0.0.1:{proxy.port}/{smbd.share}/gone"
            config = Config(dumpformat="lzo", dumplevel=31, net_timeout=timeout, free_disk_size=1,
                            savedir=f"{first} {local}")
        with caplog.at_level(logging.INFO):
            result = save(config, vmcore=str(fixture_vmcore))
        gave_up = time.monotonic()
        assert len(proxy.cuts) == 1 and proxy.refused >= 1
        print(f"{scheme}: gave up {gave_up - proxy.cuts[0]:.1f} s after the cut "
              f"(KDUMP_NET_TIMEOUT={timeout}), including the local save")
    assert result.url.scheme == "file"
    assert_equal_to_file_target(local / result.directory, file_target_result, tmp_path)
    notes = [line for line in (local / result.directory / "README.txt").read_text().splitlines()
             if line.startswith("note: target ")]
    assert len(notes) == 1 and f"could not be resumed within KDUMP_NET_TIMEOUT={timeout} s" in notes[0]
    assert "Traceback" not in caplog.text
    failed = only_dir(base)
    assert (failed / "README.txt").read_text().startswith("THIS DUMP IS INCOMPLETE.")
    assert not (failed / "vmcore").exists() and (failed / "vmcore.incomplete").exists()
    assert smbd.password not in caplog.text
