"""Several targets in KDUMP_SAVEDIR: parsed, shown masked, tried in order.

The saves run the real fixture through makedumpfile to real targets; a
"down" target is a port on 127.0.0.1 nobody listens on (refused) or a
listener that accepts and never speaks (silent); a frozen sshd is one
stopped with SIGSTOP in the middle of the transfer.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import sha256_of
from servers.sshd import SSHD, SSHLab, free_port, ssh_lab, ssh_users, ssh_workdir  # noqa: F401
from capture.config import options as config
from capture.config.options import Config
from capture.config.targeturl import parse, parse_list
from capture.errors import ConfigError, KdumpError, URLError
from capture.host import initrd
from capture.save.sequence import save


def test_several_urls_are_parsed_in_order() -> None:
    loaded = config.parse_text('KDUMP_SAVEDIR="sftp://dumper:S3cret@dumps.example/crash  file:///var/crash"\n')
    assert [u.masked() for u in loaded.targets] == ["sftp://dumper:***@dumps.example/crash", "/var/crash"]
    assert loaded.targets[0].password == "S3cret"
    assert loaded.savedir == "sftp://dumper:S3cret@dumps.example/crash file:///var/crash"
    assert parse_list("/var/crash") == (parse("/var/crash"),)


def test_check_config_shows_each_target_masked() -> None:
    loaded = config.parse_text('KDUMP_SAVEDIR="ftp://u:Ft9-Secret@127.0.0.1/a cifs://v:Sm8-Secret@127.0.0.1/s/b"\n')
    shown = config.render(loaded)
    assert "Secret" not in shown
    assert 'KDUMP_SAVEDIR="ftp://u:***@127.0.0.1/a cifs://v:***@127.0.0.1/s/b"' in shown.splitlines()
    assert config.has_password(loaded)


def test_a_bad_second_target_is_named_and_the_password_stays_hidden() -> None:
    with pytest.raises(ConfigError) as err:
        config.parse_text('KDUMP_SAVEDIR="sftp://u:Pw7-Secret@h/crash dumps"\n')
    message = str(err.value)
    assert "target 2 of 2" in message and "%20" in message and "Pw7-Secret" not in message
    with pytest.raises(URLError, match="target 2 of 2"):
        parse_list("/var/crash gopher://x/y")


def test_a_space_in_a_path_is_written_percent_encoded() -> None:
    (url,) = config.parse_text('KDUMP_SAVEDIR="file:///var/my%20crash"\n').targets
    assert url.path == "/var/my crash"


def test_the_initrd_carries_what_every_target_needs() -> None:
    urls = parse_list("sftp://u@127.0.0.1/crash cifs://u:p@127.0.0.1/share/d /var/crash")
    roots = initrd.allowed_roots(Config(), urls)
    assert {"smb", "nmb"} <= set(roots) and "paramiko" not in roots
    assert initrd.allowed_roots(Config(), urls[2]) == ["lzo"]  # our own collector only


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for s in held + [listener]:
        s.close()


def _readme(directory: Path) -> str:
    return (directory / "README.txt").read_text()


def test_the_first_target_down_the_second_takes_the_dump(tmp_path: Path, fixture_vmcore: Path,
                                                         file_target_result: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    down = free_port()
    local = tmp_path / "local"
    cfg = Config(dumpformat="lzo", dumplevel=31, net_timeout=1, free_disk_size=1,
                 savedir=f"ftp://u:Down-Secret@127.0.0.1:{down}/crash file://{local}")
    with caplog.at_level(logging.INFO):
        result = save(cfg, vmcore=str(fixture_vmcore))
    assert result.url.path == str(local)
    saved = local / result.directory
    assert sha256_of(saved / "vmcore") == sha256_of(file_target_result / "vmcore")
    readme = _readme(saved)
    assert readme.startswith("vmcore status: saved successfully")
    notes = [line for line in readme.splitlines() if line.startswith("note: target ")]
    assert len(notes) == 1 and f"ftp://u:***@127.0.0.1:{down}/crash failed: cannot connect" in notes[0]
    assert "Down-Secret" not in caplog.text + readme
    assert "trying the next target" in caplog.text
    # what comes from the vmcore alone is read once, not again for each target
    assert caplog.text.count("extracting the kernel log") == 1


def test_every_target_failing_names_each_failure(tmp_path: Path, fixture_vmcore: Path) -> None:
    first, second = free_port(), free_port()
    cfg = Config(dumpformat="lzo", dumplevel=31, net_timeout=0, free_disk_size=1,
                 savedir=f"ftp://127.0.0.1:{first}/a ftp://127.0.0.1:{second}/b")
    with pytest.raises(KdumpError) as err:
        save(cfg, vmcore=str(fixture_vmcore))
    message = str(err.value)
    assert message.startswith("no target took the dump: ")
    assert f"127.0.0.1:{first}/a failed" in message and f"127.0.0.1:{second}/b failed" in message


def test_a_silent_sftp_server_ends_cleanly_and_the_next_target_is_used(
        tmp_path: Path, fixture_vmcore: Path, silent_port: int, caplog: pytest.LogCaptureFixture) -> None:
    local = tmp_path / "local"
    cfg = Config(dumpformat="lzo", dumplevel=31, net_timeout=3, free_disk_size=1, host_key="*",
                 savedir=f"sftp://u:pw@127.0.0.1:{silent_port}/crash ssh://u:pw@127.0.0.1:{silent_port}/c {local}")
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        result = save(cfg, vmcore=str(fixture_vmcore))
    took = time.monotonic() - started
    assert result.url.path == str(local)
    notes = [line for line in _readme(local / result.directory).splitlines() if line.startswith("note: target ")]
    assert len(notes) == 2 and all("does not answer" in n or "banner" in n for n in notes), notes
    assert "Traceback" not in caplog.text and "No existing session" not in caplog.text
    print(f"two silent ssh targets (KDUMP_NET_TIMEOUT=3) then the local save: {took:.1f} s")
    assert took < 60, "bounded by KDUMP_NET_TIMEOUT, not by ssh's own timeouts"


def test_a_frozen_sshd_ends_cleanly_and_the_next_target_is_used(
        ssh_lab: SSHLab, ssh_users, ssh_workdir: Path, tmp_path: Path, fixture_vmcore: Path,
        file_target_result: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = SSHD(ssh_workdir / "sshd-frozen", ssh_users.names).start()
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    local = tmp_path / "local"
    frozen: List[int] = []

    def freeze() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not frozen:
            for p in base.glob("*/vmcore.incomplete"):
                if p.stat().st_size > 4 << 20:
                    frozen.extend([server.proc.pid, *server.session_pids()])
                    for pid in frozen:
                        os.kill(pid, signal.SIGSTOP)
                    return
            time.sleep(0.002)
    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    cfg = Config(dumpformat="lzo", dumplevel=31, net_timeout=10, free_disk_size=1,
                 host_key=server.host_keys["ed25519"], ssh_identity=(str(ssh_lab.key_user.keys["ed25519"]),),
                 savedir=f"{server.url('sftp', ssh_lab.key_user.name, str(base))} {local}")
    try:
        with caplog.at_level(logging.INFO):
            started = time.monotonic()
            result = save(cfg, vmcore=str(fixture_vmcore))
            took = time.monotonic() - started
    finally:
        freezer.join(5)
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.stop()
    assert frozen, "the server was frozen during the transfer"
    assert result.url.path == str(local)
    assert sha256_of(local / result.directory / "vmcore") == sha256_of(file_target_result / "vmcore")
    notes = [line for line in _readme(local / result.directory).splitlines() if line.startswith("note: target ")]
    assert len(notes) == 1 and "could not be resumed" in notes[0], notes
    assert "Traceback" not in caplog.text
    print(f"sftp frozen mid-transfer (KDUMP_NET_TIMEOUT=10): local dump saved after {took:.1f} s in all")
    assert took < 90, "bounded by KDUMP_NET_TIMEOUT and the I/O timeout, not 120 s waits"
