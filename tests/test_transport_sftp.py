"""The sftp transport against a real OpenSSH sshd on 127.0.0.1.

Everything is checked on the server's side through the local file system
(the server runs on this machine), so the tests see what really arrived.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from capture.errors import KdumpError
from capture.save.sequence import save
from capture.config.targeturl import parse
from conftest import remove_tree, head_of, require, require_program
from servers.sshd import SSHD, ChrootServer, SSHLab, TestUsers, ssh_keygen
from transports import open_target
from transports.base import NoSpaceError, TransportError

#: the session-scoped sshd fixtures (ssh_lab, ssh_users, sshd_sftp, sshd_nosftp)
pytest_plugins = ["servers.sshd"]
MiB = 1 << 20




def fingerprint_of(pub_line: str, tmp: Path) -> str:
    """The SHA256 fingerprint as OpenSSH's ssh-keygen computes it."""
    pub = tmp / "key.pub"
    pub.write_text(pub_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def sftp_target(lab: SSHLab, server: SSHD, path: Path, **changes: object):
    user = lab.key_user
    return open_target(parse(server.url("sftp", user.name, str(path))), lab.key_options(server, **changes))


def test_operations_arrive_on_the_server(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "crash" / "dumps"
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        assert stat.S_IMODE(base.stat().st_mode) == 0o700, "connect() creates the base directory 0700"
        assert stat.S_IMODE(base.parent.stat().st_mode) == 0o700
        t.mkdir("d1")
        assert stat.S_IMODE((base / "d1").stat().st_mode) == 0o700
        with pytest.raises(FileExistsError):
            t.mkdir("d1")

        # out-of-order writes at offsets, with a hole, like a rebuilt vmcore
        with open(fixture_vmcore, "rb") as src:
            pieces = [(off, src.read(MiB + 4096)) for off in range(0, 24 * MiB, MiB + 4096)]
        random.Random(7).shuffle(pieces)
        hole_at = 40 * MiB
        f = t.create("d1/vmcore.incomplete")
        assert f.seekable
        for off, data in pieces:
            f.pwrite(data, off)
        for i in range(0, 4096, 512):  # small contiguous writes are merged, still land at their offsets
            f.pwrite(b"%512d" % i, hole_at + i)
        f.close()
        expected = bytearray(hole_at + 4096)
        for off, data in pieces:
            expected[off:off + len(data)] = data
        for i in range(0, 4096, 512):
            expected[hole_at + i:hole_at + i + 512] = b"%512d" % i
        remote = base / "d1" / "vmcore.incomplete"
        assert stat.S_IMODE(remote.stat().st_mode) == 0o600
        assert hashlib.sha256(remote.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()
        assert t.sha256("d1/vmcore.incomplete") == hashlib.sha256(expected).hexdigest()

        t.write_small("d1/README.txt", b"first")
        t.write_small("d1/README.txt", b"second")  # rename replaces
        t.rename("d1/vmcore.incomplete", "d1/vmcore")
        assert sorted((e.name, e.is_dir) for e in t.listdir()) == [("d1", True)]
        assert sorted((e.name, e.is_dir) for e in t.listdir("d1")) == [("README.txt", False), ("vmcore", False)]
        assert t.read_small("d1/README.txt") == b"second"
        assert t.read_small("d1/vmcore", limit=4) == b"\x7fELF"
        assert t.read_small("d1/missing") is None

        st = os.statvfs(base)
        free = t.free_space()
        assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 256 * MiB

        remove_tree(t, "d1")
        assert t.listdir() == [] and not (base / "d1").exists()
        with pytest.raises(TransportError, match="no such file"):
            t.create("nodir/file")


def test_interleaved_streams_become_full_requests_and_overlaps_land_last(ssh_lab: SSHLab, sshd_sftp: SSHD,
                                                                         fixture_vmcore: Path) -> None:
    """makedumpfile's shape: page data and page descriptors in alternating records,
    each stream contiguous, then rewrites over what was written (the header, a
    descriptor): the streams are merged into full requests, and every rewrite wins."""
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    source = head_of(fixture_vmcore, 8 * MiB)
    rng = random.Random(3)
    writes = []
    data_at, desc_at, used = 1 * MiB, 4096, 0
    while used + 70000 < len(source):
        size = rng.randrange(20000, 65536)
        writes.append((data_at, source[used:used + size]))
        data_at, used = data_at + size, used + size
        small = rng.randrange(1000, 4000)
        writes.append((desc_at, source[used:used + small]))
        desc_at, used = desc_at + small, used + small
    writes += [(0, b"H" * 4096), (5000, b"rewritten descriptor"), (1 * MiB + 100, b"rewritten data" * 50),
               (desc_at - 10, b"across the end of a run")]
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        f = t.create("vmcore")
        first = t.sftp.request_number
        for offset, data in writes:
            f.pwrite(data, offset)
        f.close()
        requests = t.sftp.request_number - first
    expected = bytearray(max(o + len(d) for o, d in writes))
    for offset, data in writes:
        expected[offset:offset + len(data)] = data
    assert (base / "vmcore").read_bytes() == bytes(expected)
    full = len(expected) // (255 * 1024)
    assert requests <= full + 12, f"{len(writes)} writes became {requests} requests"


def test_unacknowledged_writes_stay_within_the_memory_bound(ssh_lab: SSHLab, sshd_sftp: SSHD,
                                                            fixture_vmcore: Path) -> None:
    """Every write in flight is kept for a resend until acknowledged: at most
    MAX_IN_FLIGHT bytes (a capture kernel's memory is small), however fast the
    writer is, and the file still arrives whole."""
    from transports.sftp import MAX_IN_FLIGHT

    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    source = head_of(fixture_vmcore, 24 * MiB)
    held = []
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        f = t.create("vmcore")
        for at in range(0, len(source), 1 * MiB):
            f.pwrite(source[at:at + 1 * MiB], at)
            held.append(sum(len(chunk) for _, chunk in f._unacked.values()))
        f.close()
    assert (base / "vmcore").read_bytes() == source
    assert max(held) <= MAX_IN_FLIGHT, f"{max(held)} bytes held unacknowledged"


def test_any_sequence_of_writes_reads_back_as_written(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    """Merged or not, sent early or late: the file holds, at every byte, the last write there."""
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    names = itertools.count()
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(st.tuples(st.integers(0, 700_000), st.integers(1, 300_000)), min_size=1, max_size=25))
        def check(writes):
            name = f"f{next(names)}"
            f = t.create(name)
            expected = bytearray()
            for k, (offset, size) in enumerate(writes):
                data = bytes([k % 251 + 1]) * size
                f.pwrite(data, offset)
                if len(expected) < offset + size:
                    expected.extend(bytes(offset + size - len(expected)))
                expected[offset:offset + size] = data
            f.close()
            assert (base / name).read_bytes() == bytes(expected)
            (base / name).unlink()

        check()


def test_existing_file_is_replaced_with_mode_0600(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    old = base / "f"
    old.write_bytes(b"x" * 10000)
    os.chown(old, ssh_lab.key_user.uid, ssh_lab.key_user.gid)
    old.chmod(0o644)
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        f = t.create("f")
        f.write(b"new")
        f.close()
    assert old.read_bytes() == b"new" and stat.S_IMODE(old.stat().st_mode) == 0o600


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_every_key_type_logs_in(ssh_lab: SSHLab, sshd_sftp: SSHD, key_type: str) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "k"
    with sftp_target(ssh_lab, sshd_sftp, base, key_type=key_type) as t:
        t.write_small("x", key_type.encode())
    assert (base / "x").read_bytes() == key_type.encode()


def test_default_identity_is_roots_id_key(ssh_lab: SSHLab, sshd_sftp: SSHD, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ecdsa"
    key.write_bytes(ssh_lab.key_user.keys["ecdsa"].read_bytes())
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with sftp_target(ssh_lab, sshd_sftp, base, ssh_identity=()) as t:
        assert t.listdir() == []
    with pytest.raises(TransportError, match="KDUMP_SSH_IDENTITY.*does not exist"):
        sftp_target(ssh_lab, sshd_sftp, base, ssh_identity=(str(home / "nonexistent"),))


def test_password_login_and_no_secret_anywhere(ssh_lab: SSHLab, sshd_sftp: SSHD,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = ssh_lab.password_user
    base = ssh_lab.fresh_dir(user) / "pw"
    url = parse(sshd_sftp.url("sftp", user.name, str(base), user.password))
    with open_target(url, ssh_lab.password_options(sshd_sftp)) as t:
        t.write_small("x", b"ok")
        # logged in: the password is in no process's command line or environment and in no file
        # of the ssh client's private directories (its askpass file is gone)
        secret = user.password.encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for name in ("cmdline", "environ"):
                try:
                    assert secret not in Path(f"/proc/{pid}/{name}").read_bytes(), f"/proc/{pid}/{name}"
                except OSError:
                    pass
        for private in Path(tempfile.gettempdir()).glob("kdump-saver-ssh-*"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o700
            for f in private.iterdir():
                if f.is_file():
                    assert secret not in f.read_bytes(), f
    assert (base / "x").read_bytes() == b"ok"
    wrong = parse(sshd_sftp.url("sftp", user.name, str(base), "not-" + user.password))
    with pytest.raises(TransportError) as err:
        open_target(wrong, ssh_lab.password_options(sshd_sftp))
    message = str(err.value)
    assert "refused the login" in message and user.name in message
    assert user.password not in message and "Traceback" not in message
    assert user.password not in caplog.text


def test_host_key_from_option_and_from_rsa_known_hosts(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with sftp_target(ssh_lab, sshd_sftp, base, host_key=sshd_sftp.host_keys["ed25519"], known_hosts=None) as t:
        t.mkdir("a")
    # only the server's RSA key is known: the connection must ask for that key
    kh = ssh_lab.known_hosts(sshd_sftp, ("rsa",))
    with sftp_target(ssh_lab, sshd_sftp, base, known_hosts=str(kh)) as t:
        t.mkdir("b")
    assert sorted(os.listdir(base)) == ["a", "b"]


@pytest.mark.parametrize("case", ["wrong key", "unknown host"])
def test_bad_host_key_refuses_before_sending(ssh_lab: SSHLab, sshd_sftp: SSHD, tmp_path: Path, case: str) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "never"
    if case == "wrong key":
        other = ssh_keygen(tmp_path / "other", "ed25519")
        changes = dict(host_key=other)
    else:
        (tmp_path / "empty_known_hosts").write_text("")
        changes = dict(known_hosts=str(tmp_path / "empty_known_hosts"))
    log_before = sshd_sftp.log.read_text().count("Accepted ")
    with pytest.raises(TransportError) as err:
        sftp_target(ssh_lab, sshd_sftp, base, **changes)
    message = str(err.value)
    seen = fingerprint_of(sshd_sftp.host_keys["ed25519"], tmp_path)
    assert f"127.0.0.1:{sshd_sftp.port}" in message and seen in message
    assert ("does not match" if case == "wrong key" else "unknown") in message
    if case == "wrong key":
        assert changes["host_key"].split()[1] not in message
    assert not base.exists(), "nothing may be created on a server with the wrong key"
    time.sleep(0.2)
    assert sshd_sftp.log.read_text().count("Accepted ") == log_before, "no login may happen"


def test_recorded_key_type_the_server_lacks(ssh_lab: SSHLab, sshd_sftp: SSHD, tmp_path: Path) -> None:
    ecdsa = ssh_keygen(tmp_path / "host_ecdsa", "ecdsa")
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / "never"
    with pytest.raises(TransportError, match=r"has no host key of the type\(s\) recorded .*ecdsa-sha2-nistp256"):
        sftp_target(ssh_lab, sshd_sftp, base, host_key=ecdsa, net_timeout=5)
    assert not base.exists()


def test_host_key_check_off_warns(ssh_lab: SSHLab, sshd_sftp: SSHD, caplog: pytest.LogCaptureFixture) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with caplog.at_level(logging.WARNING):
        with sftp_target(ssh_lab, sshd_sftp, base, host_key="*", known_hosts=None) as t:
            t.mkdir("a")
    assert any(r.levelno == logging.WARNING and "HOST KEY CHECKING IS OFF" in r.getMessage() for r in caplog.records)


def test_hostile_path_arrives_literally(ssh_lab: SSHLab, sshd_sftp: SSHD, tmp_path: Path) -> None:
    canary = ssh_lab.key_user.home / "pwned"
    name = "a dir 'q' \"dq\" $(cd;touch pwned) `cd;touch pwned`;x"
    base = ssh_lab.fresh_dir(ssh_lab.key_user) / name
    with sftp_target(ssh_lab, sshd_sftp, base) as t:
        t.mkdir(name)
        t.write_small(f"{name}/{name}", b"literal")
        assert [e.name for e in t.listdir()] == [name]
    assert (base / name / name).read_bytes() == b"literal"
    assert not canary.exists()


def test_server_down_is_a_clear_error_and_retries(ssh_lab: SSHLab, ssh_users: TestUsers) -> None:
    server = SSHD(ssh_lab.workdir / "sshd-restarted-sftp", ssh_users.names).start()
    port = server.port
    server.stop(hold_port=True)
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    with pytest.raises(TransportError) as err:
        sftp_target(ssh_lab, server, base)
    # refused; on a loaded machine a dying sshd may still accept and close, said as such
    assert ("connection refused" in str(err.value) or "closed the connection" in str(err.value)) \
        and f"127.0.0.1:{port}" in str(err.value)
    with pytest.raises(TransportError, match=r"tried [2-9] times"):
        sftp_target(ssh_lab, server, base, net_timeout=2)

    # the server comes up while we retry: the save goes through
    threading.Timer(1.5, lambda: server.start(port)).start()
    try:
        with sftp_target(ssh_lab, server, base / "late", net_timeout=20) as t:
            t.write_small("x", b"late")
        assert (base / "late" / "x").read_bytes() == b"late"
    finally:
        time.sleep(0.1)
        server.stop()


def test_connection_cut_during_transfer_is_resumed(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path) -> None:
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    block = head_of(fixture_vmcore, 4 * MiB)
    t = sftp_target(ssh_lab, sshd_sftp, base)
    try:
        f = t.create("vmcore.incomplete")
        f.pwrite(block, 0)
        assert sshd_sftp.kill_sessions() >= 1
        for i in range(1, 16):
            f.pwrite(block, i * len(block))
        f.close()
        assert [e.name for e in t.listdir()] == ["vmcore.incomplete"], "a new connection for what follows"
    finally:
        t.close()
    assert (base / "vmcore.incomplete").read_bytes() == block * 16, "the unacknowledged writes were sent again"


def test_read_only_directory(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    ro = ssh_lab.root_dir()
    with sftp_target(ssh_lab, sshd_sftp, ro) as t:
        with pytest.raises(TransportError, match="permission denied"):
            t.create("vmcore")
        with pytest.raises(TransportError, match="permission denied"):
            t.mkdir("d")
    with pytest.raises(TransportError, match=r"cannot create the directory .*: permission denied"):
        sftp_target(ssh_lab, sshd_sftp, ro / "sub")
    assert os.listdir(ro) == []


def test_full_disk_is_no_space_error(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path) -> None:
    fs = ssh_lab.small_fs(ssh_lab.key_user, 512)
    data = head_of(fixture_vmcore, 2 * MiB)
    with sftp_target(ssh_lab, sshd_sftp, fs) as t:
        assert t.free_space() == 512 * 1024
        f = t.create("vmcore")
        with pytest.raises(NoSpaceError, match="disk is full"):
            f.pwrite(data, 0)
            f.close()
        f.abort()


def test_server_without_sftp_subsystem(ssh_lab: SSHLab, sshd_nosftp: SSHD) -> None:
    with pytest.raises(TransportError, match="no sftp subsystem.*ssh://"):
        sftp_target(ssh_lab, sshd_nosftp, ssh_lab.fresh_dir(ssh_lab.key_user))


def test_ipv6_loopback_and_hashed_known_hosts(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    require(sshd_sftp.ipv6, "::1 cannot be bound on this machine")
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    known_hosts = ssh_lab.workdir / "known_hosts.hashed"
    known_hosts.write_text(sshd_sftp.known_hosts_line(host="::1") + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known_hosts)], check=True, capture_output=True)
    assert "::1" not in known_hosts.read_text(), "the entry is hashed"
    url = parse(sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base), host="::1"))
    with open_target(url, ssh_lab.key_options(sshd_sftp, known_hosts=str(known_hosts))) as t:
        t.write_small("v6", b"::1")
    assert (base / "v6").read_bytes() == b"::1"


def test_free_space_is_none_when_the_server_refuses_statvfs(ssh_lab: SSHLab, ssh_users: TestUsers) -> None:
    server = SSHD(ssh_lab.workdir / "sshd-no-statvfs", ssh_users.names, sftp_args="-P statvfs,fstatvfs").start()
    try:
        base = ssh_lab.fresh_dir(ssh_lab.key_user)
        with sftp_target(ssh_lab, server, base) as t:
            assert t.free_space() is None
            t.write_small("x", b"still works")
        assert (base / "x").read_bytes() == b"still works"
    finally:
        server.stop()


def test_unreachable_network_is_a_clear_error(tmp_path: Path) -> None:
    """Inside a network namespace of our own with only loopback: no route anywhere."""
    require_program("ip")
    ns = f"kdt-sftp-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    require(added.returncode == 0, f"cannot create a network namespace: {added.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        script = (
            "import sys\n"
            "from capture.config.targeturl import parse\n"
            "from transports import open_target\n"
            "from transports.base import TransportError, TransportOptions\n"
            "try:\n"
            "    open_target(parse('sftp://u:secret-pw@10.199.0.1/dumps'),\n"
            "                TransportOptions(host_key='*', net_timeout=int(sys.argv[1])))\n"
            "except TransportError as exc:\n"
            "    print(exc)\n")
        for timeout in ("0", "2"):
            run = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, timeout],
                                 capture_output=True, text=True, cwd=str(Path(__file__).parent.parent), timeout=60)
            assert "10.199.0.1:22 is unreachable" in run.stdout, run.stdout + run.stderr
            assert "secret-pw" not in run.stdout + run.stderr and "Traceback" not in run.stderr
        assert "tried" in run.stdout, "with KDUMP_NET_TIMEOUT=2 it retries"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_sftp_only_account_in_a_chroot(ssh_lab: SSHLab, sshd_sftp_only: ChrootServer) -> None:
    """The usual dump drop box: ForceCommand internal-sftp and a ChrootDirectory."""
    server = sshd_sftp_only.server
    with open_target(parse(server.url("sftp", ssh_lab.key_user.name, "/dumps/crash")),
                     ssh_lab.key_options(server)) as t:
        t.mkdir("d")
        t.write_small("d/x", b"in the chroot")
        assert [e.name for e in t.listdir()] == ["d"]
        assert t.free_space() is not None
    assert (sshd_sftp_only.dumps / "crash" / "d" / "x").read_bytes() == b"in the chroot"


def test_with_on_a_connected_target_logs_in_once(ssh_lab: SSHLab, sshd_sftp: SSHD) -> None:
    before = sshd_sftp.log.read_text().count("Accepted publickey for " + ssh_lab.key_user.name)
    with open_target(parse(sshd_sftp.url("sftp", ssh_lab.key_user.name, str(ssh_lab.fresh_dir(ssh_lab.key_user)))),
                     ssh_lab.key_options(sshd_sftp)) as t:
        t.listdir()
    time.sleep(0.2)
    assert sshd_sftp.log.read_text().count("Accepted publickey for " + ssh_lab.key_user.name) == before + 1


# -- the saver through this transport ----------------------------------------





def test_saver_writes_the_same_vmcore_as_the_file_target(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path,
                                                         file_target_result: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = ssh_lab.password_user
    base = ssh_lab.fresh_dir(user) / "crash"
    url = sshd_sftp.url("scp", user.name, str(base), user.password)
    config = ssh_lab.saver_config(sshd_sftp, ssh_identity=(), known_hosts=str(ssh_lab.known_hosts(sshd_sftp)))
    result = save(config, vmcore=str(fixture_vmcore), savedir=url)
    saved = base / result.directory
    assert sorted(os.listdir(saved)) == sorted(os.listdir(file_target_result))
    assert (saved / "vmcore").read_bytes() == (file_target_result / "vmcore").read_bytes()
    assert (saved / "dmesg.txt").read_bytes() == (file_target_result / "dmesg.txt").read_bytes()
    readme = (saved / "README.txt").read_text()
    assert "saved successfully" in readme and user.name in readme
    assert user.password not in readme and user.password not in caplog.text
    # the hash comes from the server (sha256sum over the same SSH connection), not from reading the dump back
    assert f"sha256: {hashlib.sha256((saved / 'vmcore').read_bytes()).hexdigest()}" in readme
    assert stat.S_IMODE(saved.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((saved / n).stat().st_mode) == 0o600 for n in os.listdir(saved))


def test_saver_with_the_connection_cut_resumes(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path,
                                              file_target_result: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from test_resume import assert_equal_to_file_target

    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(base))
    stop = threading.Event()
    killed = []

    def cut_when_streaming() -> None:
        while not stop.is_set():
            partial = list(base.glob("*/vmcore.incomplete"))
            if partial and partial[0].stat().st_size > MiB:
                killed.append(sshd_sftp.kill_sessions())
                return
            time.sleep(0.01)

    cutter = threading.Thread(target=cut_when_streaming)
    cutter.start()
    try:
        with caplog.at_level(logging.INFO):
            save(ssh_lab.saver_config(sshd_sftp, net_timeout=5), vmcore=str(fixture_vmcore), savedir=url)
    finally:
        stop.set()
        cutter.join()
    assert killed and killed[0] >= 1
    assert "resumed writing" in caplog.text
    (saved,) = base.iterdir()
    assert_equal_to_file_target(saved, file_target_result, tmp_path)


def test_saver_to_a_stopped_server_fails_clearly(ssh_lab: SSHLab, ssh_users: TestUsers, fixture_vmcore: Path,
                                                 makedumpfile: str) -> None:
    server = SSHD(ssh_lab.workdir / "sshd-stopped-saver", ssh_users.names).start()
    config = ssh_lab.saver_config(server)
    server.stop(hold_port=True)
    base = ssh_lab.fresh_dir(ssh_lab.key_user)
    try:
        with pytest.raises(KdumpError, match="connection refused"):
            save(config, vmcore=str(fixture_vmcore), savedir=server.url("sftp", ssh_lab.key_user.name, str(base)))
    finally:
        server.stop()
    assert os.listdir(base) == []


def test_saver_on_a_small_disk_stops_with_a_clear_error(ssh_lab: SSHLab, sshd_sftp: SSHD, fixture_vmcore: Path,
                                                        makedumpfile: str) -> None:
    fs = ssh_lab.small_fs(ssh_lab.key_user, 4096)
    url = sshd_sftp.url("sftp", ssh_lab.key_user.name, str(fs))
    with pytest.raises(KdumpError) as err:
        save(ssh_lab.saver_config(sshd_sftp, free_disk_size=1), vmcore=str(fixture_vmcore), savedir=url)
    assert "Traceback" not in str(err.value)
    (saved,) = [p for p in fs.iterdir()]
    assert not (saved / "vmcore").exists()
    readme = (saved / "README.txt").read_text()
    assert "INCOMPLETE" in readme and "saved successfully" not in readme
