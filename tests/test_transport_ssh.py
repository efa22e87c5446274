"""The ssh transport (remote shell commands) against a real OpenSSH sshd
without the sftp subsystem, on 127.0.0.1.

What arrived is checked through the local file system, since the server
runs on this machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from capture.errors import KdumpError
from capture.save.sequence import save
from capture.config.targeturl import parse
from conftest import remove_tree, head_of
from servers.sshd import SSHD, ChrootServer, SSHLab, TestUsers, ssh_keygen
from transports import open_target
from transports.base import NoSpaceError, TransportError
from transports.sshauth import load_identities
from transports.base import TransportOptions

#: the session-scoped sshd fixtures (ssh_lab, ssh_users, sshd_sftp, sshd_nosftp)
pytest_plugins = ["servers.sshd"]
MiB = 1 << 20
HOSTILE = "a dir 'q' \"dq\" $(cd;touch pwned) `cd;touch pwned`;x&&cd;touch pwned\nnext line * ?"
#: the same in a target URL, which refuses control characters at parse time (issue 12)
HOSTILE_BASE = HOSTILE.replace("\n", " ")




def ssh_target(lab: SSHLab, server: SSHD, path: Path, **changes: object):
    user = lab.key_user
    return open_target(parse(server.url("ssh", user.name, str(path))), lab.key_options(server, **changes))


def test_operations_arrive_on_the_server(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "crash" / "dumps"
    with ssh_target(ssh_lab, sshd_nosftp, base) as t:
        assert stat.S_IMODE(base.stat().st_mode) == 0o700, "connect() creates the base directory 0700"
        assert stat.S_IMODE(base.parent.stat().st_mode) == 0o700
        t.mkdir("d1")
        assert stat.S_IMODE((base / "d1").stat().st_mode) == 0o700
        with pytest.raises(FileExistsError):
            t.mkdir("d1")

        f = t.create("d1/vmcore.incomplete")
        assert not f.seekable
        with pytest.raises(TransportError):
            f.pwrite(b"x", 0)
        digest = hashlib.sha256()
        with open(fixture_vmcore, "rb") as src:
            for size in (1, 4095, MiB, 3 * MiB + 17, 8 * MiB):
                block = src.read(size)
                f.write(block)
                digest.update(block)
        f.close()
        remote = base / "d1" / "vmcore.incomplete"
        assert stat.S_IMODE(remote.stat().st_mode) == 0o600
        assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest.hexdigest()
        assert t.sha256("d1/vmcore.incomplete") == digest.hexdigest()

        t.write_small("d1/README.txt", b"first")
        t.write_small("d1/README.txt", b"second")
        t.rename("d1/vmcore.incomplete", "d1/vmcore.flat")
        (base / ".hidden").write_bytes(b"")
        assert sorted((e.name, e.is_dir) for e in t.listdir()) == [(".hidden", False), ("d1", True)]
        assert sorted((e.name, e.is_dir) for e in t.listdir("d1")) == [("README.txt", False), ("vmcore.flat", False)]
        assert t.read_small("d1/README.txt") == b"second"
        assert t.read_small("d1/vmcore.flat", limit=4) == b"\x7fELF"
        assert t.read_small("d1/missing") is None

        st = os.statvfs(base)
        free = t.free_space()
        assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 256 * MiB

        remove_tree(t, "d1")
        assert [e.name for e in t.listdir()] == [".hidden"] and not (base / "d1").exists()
        with pytest.raises(TransportError, match="cannot create 'nodir/file': .*(Directory nonexistent|No such file)"):
            t.create("nodir/file")
        with pytest.raises(TransportError, match="cannot list 'nodir': no such directory"):
            t.listdir("nodir")


def test_hostile_names_arrive_literally_and_run_nothing(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    canary = ssh_lab.key_user.home / "pwned"
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / HOSTILE_BASE
    with ssh_target(ssh_lab, sshd_nosftp, base) as t:
        t.mkdir(HOSTILE)
        with pytest.raises(FileExistsError):
            t.mkdir(HOSTILE)
        t.write_small(f"{HOSTILE}/{HOSTILE}", b"literal")
        assert t.listdir() == [type(t.listdir()[0])(HOSTILE, True)]
        assert [e.name for e in t.listdir(HOSTILE)] == [HOSTILE]
        assert t.read_small(f"{HOSTILE}/{HOSTILE}") == b"literal"
        assert t.free_space() is not None
        assert t.sha256(f"{HOSTILE}/{HOSTILE}") == hashlib.sha256(b"literal").hexdigest()
        assert (base / HOSTILE / HOSTILE).read_bytes() == b"literal"
        remove_tree(t, HOSTILE)
        assert t.listdir() == []
    assert base.is_dir()
    assert not canary.exists(), "a quoted name ran a command"
    assert os.listdir(base.parent) == [HOSTILE_BASE] and os.listdir(base) == []


def test_paths_cannot_leave_the_target(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with ssh_target(ssh_lab, sshd_nosftp, base / "t") as t:
        with pytest.raises(TransportError, match="inside the target"):
            t.rmdir("../")
        with pytest.raises(TransportError, match="target directory itself"):
            t.rmdir("")
    assert (base / "t").is_dir()


def test_password_login_and_no_secret_anywhere(ssh_lab: SSHLab, sshd_nosftp: SSHD,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = ssh_lab.password_user
    base = ssh_lab.fresh_dir(user) / "pw"
    url = parse(sshd_nosftp.url("ssh", user.name, str(base), user.password))
    with open_target(url, ssh_lab.password_options(sshd_nosftp)) as t:
        t.write_small("x", b"ok")
    assert (base / "x").read_bytes() == b"ok"
    wrong = parse(sshd_nosftp.url("ssh", user.name, str(base), "not-" + user.password))
    with pytest.raises(TransportError) as err:
        open_target(wrong, ssh_lab.password_options(sshd_nosftp))
    message = str(err.value)
    assert "refused the login" in message and user.password not in message
    assert user.password not in caplog.text
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert user.password.encode() not in cmdline


def test_password_refused_by_a_keys_only_server(ssh_lab: SSHLab, ssh_users: TestUsers) -> None:
    server = SSHD(ssh_lab.workdir / "sshd-keys-only", ssh_users.names, sftp=False,
                  extra=("PasswordAuthentication no",)).start()
    try:
        user = ssh_lab.password_user
        url = parse(server.url("ssh", user.name, str(user.home / "x"), user.password))
        with pytest.raises(TransportError) as err:
            open_target(url, ssh_lab.password_options(server))
        assert "refused the login" in str(err.value) and "accepts only publickey" in str(err.value)
        assert user.password not in str(err.value)
    finally:
        server.stop()


def test_identities_are_checked_with_ssh_keygen(tmp_path: Path) -> None:
    """Valid keys load in their order; an encrypted key or a non-key named in
    KDUMP_SSH_IDENTITY is an error naming the file (ssh could not use it in the capture kernel)."""
    paths = []
    for i, key_type in enumerate(("ecdsa", "ed25519", "rsa", "ecdsa")):
        ssh_keygen(tmp_path / f"id_{i}", key_type)
        paths.append(str(tmp_path / f"id_{i}"))
    assert load_identities(TransportOptions(ssh_identity=tuple(paths))) == paths
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-passphrase", "-f", str(tmp_path / "locked")],
                   check=True, capture_output=True)
    (tmp_path / "garbage").write_text("not a key\n")
    for bad in ("locked", "garbage"):
        with pytest.raises(TransportError, match=f"KDUMP_SSH_IDENTITY: .*{bad} is not an unencrypted private key"):
            load_identities(TransportOptions(ssh_identity=(paths[0], str(tmp_path / bad))))


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_other_key_types_log_in(ssh_lab: SSHLab, sshd_nosftp: SSHD, key_type: str) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "k"
    with ssh_target(ssh_lab, sshd_nosftp, base, key_type=key_type) as t:
        t.write_small("x", key_type.encode())
    assert (base / "x").read_bytes() == key_type.encode()


def test_wrong_host_key_refuses_before_sending(ssh_lab: SSHLab, sshd_nosftp: SSHD, tmp_path: Path) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "never"
    other = ssh_keygen(tmp_path / "other", "ed25519")
    with pytest.raises(TransportError) as err:
        ssh_target(ssh_lab, sshd_nosftp, base, host_key=other)
    assert "does not match" in str(err.value) and f"127.0.0.1:{sshd_nosftp.port}" in str(err.value)
    assert not base.exists()


@pytest.mark.parametrize("value", ["garbage", "ssh-ed25519 not*base64"])
def test_malformed_host_key_option(ssh_lab: SSHLab, sshd_nosftp: SSHD, value: str) -> None:
    with pytest.raises(TransportError, match="KDUMP_HOST_KEY"):
        ssh_target(ssh_lab, sshd_nosftp, ssh_lab.fresh_dir(ssh_lab.key_user) / "x", host_key=value)


def test_server_down_is_a_clear_error(ssh_lab: SSHLab, ssh_users: TestUsers) -> None:
    server = SSHD(ssh_lab.workdir / "sshd-restarted-ssh", ssh_users.names, sftp=False).start()
    port = server.port
    server.stop(hold_port=True)
    try:
        with pytest.raises(TransportError) as err:
            ssh_target(ssh_lab, server, ssh_lab.fresh_dir(ssh_lab.key_user))
    finally:
        server.stop()
    assert "connection refused" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)


def test_start_up_files_that_print_do_not_confuse_it(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    """bash run by sshd reads ~/.bashrc even for commands; some print things."""
    user = ssh_lab.key_user
    rc = user.home / ".bashrc"
    rc.write_text('echo "Welcome to the dump server"\nprintf \'d fake\\0\'\necho "to stderr" >&2\n')
    subprocess.run(["usermod", "-s", "/bin/bash", user.name], check=True)
    try:
        base = ssh_lab.fresh_dir(user)
        with ssh_target(ssh_lab, sshd_nosftp, base) as t:
            noisy = t.exec("true")
            assert b"Welcome" in b"".join(iter(lambda: noisy.recv(65536), b"")), "the start-up file does print"
            noisy.close()
            t.mkdir("d")
            t.write_small("d/f", b"content")
            assert [(e.name, e.is_dir) for e in t.listdir()] == [("d", True)]
            assert t.read_small("d/f") == b"content"
            assert t.sha256("d/f") == hashlib.sha256(b"content").hexdigest()
            st = os.statvfs(base)
            assert abs(t.free_space() - st.f_bavail * st.f_frsize) < 256 * MiB
        assert (base / "d" / "f").read_bytes() == b"content"
    finally:
        subprocess.run(["usermod", "-s", "/bin/sh", user.name], check=True)
        rc.unlink()


@pytest.mark.parametrize("command_between", [False, True], ids=["writes-only", "command-between"])
def test_connection_cut_during_the_stream_is_resumed(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                                     command_between: bool) -> None:
    """With ``command_between``, a command runs after the cut and before the
    next write, as the saver's free-space query between blocks does: it
    connects again, and the stream broken with the old connection is still
    resumed (CI lost a save to this: the broken stream's status 255 was
    judged against the new connection, which was alive, and taken as final)."""
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    block = head_of(fixture_vmcore, 4 * MiB)
    t = ssh_target(ssh_lab, sshd_nosftp, base)
    try:
        f = t.create("vmcore.incomplete")
        f.write(block)
        assert sshd_nosftp.kill_sessions() >= 1
        if command_between:
            deadline = time.monotonic() + 10
            while t._conn is not None and t._conn.alive and time.monotonic() < deadline:  # the master noticed
                time.sleep(0.05)
            assert [e.name for e in t.listdir()] == ["vmcore.incomplete"], "a new connection for the listing"
        for _ in range(15):
            f.write(block)
        f.close()
        assert [e.name for e in t.listdir()] == ["vmcore.incomplete"], "a new connection for what follows"
    finally:
        t.close()
    assert (base / "vmcore.incomplete").read_bytes() == block * 16, "continued at the size the server had"


def test_read_only_directory(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    ro = ssh_lab.root_dir()
    with pytest.raises(TransportError, match="not writable"):
        ssh_target(ssh_lab, sshd_nosftp, ro)
    with pytest.raises(TransportError, match="Permission denied"):
        ssh_target(ssh_lab, sshd_nosftp, ro / "sub")
    assert os.listdir(ro) == []


def test_full_disk_is_no_space_error(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path) -> None:
    fs = ssh_lab.small_fs(ssh_lab.key_user, 512)
    data = head_of(fixture_vmcore, MiB)
    with ssh_target(ssh_lab, sshd_nosftp, fs) as t:
        assert t.free_space() == 512 * 1024
        f = t.create("vmcore.flat")
        with pytest.raises(NoSpaceError, match="No space left on device"):
            for _ in range(4):
                f.write(data)
            f.close()
        f.abort()


def test_sftp_only_account_is_a_clear_error(ssh_lab: SSHLab, sshd_sftp_only: ChrootServer) -> None:
    server = sshd_sftp_only.server
    with pytest.raises(TransportError, match="did not run our shell command.*sftp://"):
        open_target(parse(server.url("ssh", ssh_lab.key_user.name, "/dumps/by-ssh")), ssh_lab.key_options(server))
    assert not (sshd_sftp_only.dumps / "by-ssh").exists()


def test_works_on_a_server_with_sftp_too(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with ssh_target(ssh_lab, sshd_sftp, base) as t:
        t.write_small("x", b"y")
    assert (base / "x").read_bytes() == b"y"


def test_with_on_a_connected_target_logs_in_once(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    before = sshd_nosftp.log.read_text().count("Accepted publickey for " + ssh_lab.key_user.name)
    with open_target(parse(sshd_nosftp.url("ssh", ssh_lab.key_user.name, str(ssh_lab.fresh_dir(ssh_lab.key_user)))),
                     ssh_lab.key_options(sshd_nosftp)) as t:
        t.listdir()
    time.sleep(0.2)
    assert sshd_nosftp.log.read_text().count("Accepted publickey for " + ssh_lab.key_user.name) == before + 1


# -- the saver through this transport ----------------------------------------





def test_saver_stream_rebuilds_to_the_file_targets_vmcore(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                                          file_target_result: Path, makedumpfile: str,
                                                          tmp_path: Path) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "crash"
    url = sshd_nosftp.url("ssh", ssh_lab.key_user.name, str(base))
    result = save(ssh_lab.saver_config(sshd_nosftp), vmcore=str(fixture_vmcore), savedir=url)
    saved = base / result.directory
    assert sorted(os.listdir(saved)) == sorted(n.replace("vmcore", "vmcore.flat") if n == "vmcore" else n
                                               for n in os.listdir(file_target_result))
    rebuilt = tmp_path / "vmcore"
    with open(saved / "vmcore.flat", "rb") as flat:
        subprocess.run([makedumpfile, "-R", str(rebuilt)], stdin=flat, check=True, capture_output=True)
    assert rebuilt.read_bytes() == (file_target_result / "vmcore").read_bytes()
    assert (saved / "dmesg.txt").read_bytes() == (file_target_result / "dmesg.txt").read_bytes()
    readme = (saved / "README.txt").read_text()
    assert "saved successfully" in readme
    assert stat.S_IMODE(saved.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((saved / n).stat().st_mode) == 0o600 for n in os.listdir(saved))


def test_saver_with_the_connection_cut_resumes(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                              file_target_result: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from test_resume import assert_equal_to_file_target

    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    url = sshd_nosftp.url("ssh", ssh_lab.key_user.name, str(base))
    stop = threading.Event()
    killed = []

    def cut_when_streaming() -> None:
        while not stop.is_set():
            partial = list(base.glob("*/vmcore.incomplete"))
            if partial and partial[0].stat().st_size > MiB:
                killed.append(sshd_nosftp.kill_sessions())
                return
            time.sleep(0.01)

    cutter = threading.Thread(target=cut_when_streaming)
    cutter.start()
    try:
        with caplog.at_level(logging.INFO):
            save(ssh_lab.saver_config(sshd_nosftp, net_timeout=5), vmcore=str(fixture_vmcore), savedir=url)
    finally:
        stop.set()
        cutter.join()
    assert killed and killed[0] >= 1
    assert "resumed writing" in caplog.text
    (saved,) = base.iterdir()
    assert_equal_to_file_target(saved, file_target_result, tmp_path)


def test_saver_retention_touches_only_this_hosts_dumps(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                                       makedumpfile: str) -> None:
    from datetime import datetime, timezone

    from capture.save.dumpdir import MARKER, marker_bytes

    user = ssh_lab.key_user
    base = ssh_lab.fresh_dir(user) / HOSTILE_BASE
    base.mkdir()
    layout = {"fixture-host-2026-11-20-10-00": "fixture-host", "fixture-host-2026-11-21-10-00": "fixture-host",
              "other-2026-11-21-10-00": "other", "fixture-host-2026-11-19-10-00": None, "unrelated": None}
    for name, host in layout.items():
        (base / name).mkdir()
        if host:
            (base / name / MARKER).write_bytes(marker_bytes(host, datetime(2026, 11, 20, tzinfo=timezone.utc)))
    (base / "plain file").write_text("keep me")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(base)], check=True)
    config = dataclasses.replace(ssh_lab.saver_config(sshd_nosftp), keep_old_dumps=1)
    result = save(config, vmcore=str(fixture_vmcore), savedir=sshd_nosftp.url("ssh", user.name, str(base)))
    remaining = sorted(os.listdir(base))
    expected = sorted(set(layout) - {"fixture-host-2026-11-20-10-00"} | {"plain file", result.directory})
    assert remaining == expected
    assert not (user.home / "pwned").exists()


def test_saver_on_a_small_disk_stops_with_a_clear_error(ssh_lab: SSHLab, sshd_nosftp: SSHD, fixture_vmcore: Path,
                                                        makedumpfile: str) -> None:
    fs = ssh_lab.small_fs(ssh_lab.key_user, 4096)
    url = sshd_nosftp.url("ssh", ssh_lab.key_user.name, str(fs))
    with pytest.raises(KdumpError) as err:
        save(ssh_lab.saver_config(sshd_nosftp), vmcore=str(fixture_vmcore), savedir=url)
    assert "Traceback" not in str(err.value)
    (saved,) = [p for p in fs.iterdir()]
    assert not (saved / "vmcore.flat").exists()
    readme = (saved / "README.txt").read_text()
    assert "INCOMPLETE" in readme and "saved successfully" not in readme
