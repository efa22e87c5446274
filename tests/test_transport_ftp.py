"""The ftp and ftps transports against a real vsftpd on 127.0.0.1.

Every test talks to a vsftpd started by tests/servers/ftpd.py with its own
configuration on a free port; ftps uses a CA and server certificates made
with openssl for the test.
"""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Tuple

import pytest

from capture.config.options import Config
from capture.errors import KdumpError
from capture.save.sequence import save
from capture.config.targeturl import parse
from conftest import remove_tree, REPO, require, require_program, sha256_of
from servers.common import established, free_port, tmpfs
from servers.ftpd import FtpServer, TestCA
from transports import open_target
from transports.base import NoSpaceError, TransportError, TransportOptions

FAST = TransportOptions(net_timeout=0)


def _prerequisites() -> None:
    require(os.geteuid() == 0, "the FTP tests run vsftpd and create a test account: run as root")
    require_program("vsftpd")
    require_program("openssl")


@pytest.fixture(scope="module")
def ftpd(tmp_path_factory):
    _prerequisites()
    server = FtpServer(tmp_path_factory.mktemp("ftpd"))
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    _prerequisites()
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def ftpsd(tmp_path_factory, ca):
    server = FtpServer(tmp_path_factory.mktemp("ftpsd"), tls_pem=ca.server_cert("server", "IP:127.0.0.1"))
    server.start()
    yield server
    server.remove()


@pytest.fixture
def flat_stream(reference_dumps) -> Path:
    """The fixture dump as ``makedumpfile -F -l -d 31`` writes it."""
    return reference_dumps.flattened("-l", 31)




def send_file(transport, src: Path, name: str, block: int = 1 << 16) -> None:
    """What the saver does: write a temporary name, then rename."""
    f = transport.create(name + ".incomplete")
    try:
        with open(src, "rb") as s:
            for chunk in iter(lambda: s.read(block), b""):
                f.write(chunk)
        f.close()
    except BaseException:
        f.abort()
        raise
    transport.rename(name + ".incomplete", name)


def test_stream_lands_byte_for_byte_in_a_created_directory(ftpd, flat_stream, caplog):
    caplog.set_level(logging.DEBUG)
    url = parse(ftpd.url("/crash/deep/dir"))
    with open_target(url, FAST) as t:
        t.mkdir("dump1")
        send_file(t, flat_stream, "dump1/vmcore.flat")
        assert t.sha256("dump1/vmcore.flat") == sha256_of(flat_stream)  # streamed back with RETR
        with t.open_read("dump1/vmcore.flat") as f:
            assert f.read(12) == b"makedumpfile"  # closed early: the next command still works
        assert [e.name for e in t.listdir("dump1")] == ["vmcore.flat"]
    base = ftpd.home / "crash" / "deep" / "dir"
    for d in (ftpd.home / "crash", base, base / "dump1"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    saved = base / "dump1" / "vmcore.flat"
    assert sha256_of(saved) == sha256_of(flat_stream)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert not (base / "dump1" / "vmcore.flat.incomplete").exists()
    assert ftpd.password not in caplog.text


def test_dump_files_are_append_only(ftpd):
    with open_target(parse(ftpd.url("/seek")), FAST) as t:
        f = t.create("x")
        assert f.seekable is False
        with pytest.raises(TransportError):
            f.pwrite(b"abc", 10)
        f.abort()


def test_directory_operations(ftpd):
    with open_target(parse(ftpd.url("/ops")), FAST) as t:
        t.mkdir("a")
        with pytest.raises(FileExistsError):
            t.mkdir("a")
        t.mkdir("a/b")
        t.write_small("a/.marker", b"first")
        t.write_small("a/.marker", b"second")
        t.write_small("a/b/README.txt", b"readme")
        assert sorted((e.name, e.is_dir) for e in t.listdir("a")) == [(".marker", False), ("b", True)]
        assert t.read_small("a/.marker") == b"second"
        assert t.read_small("a/.marker", limit=3) == b"sec"
        assert t.read_small("a/missing") is None
        t.write_small("new", b"new")
        t.write_small("old", b"old")
        t.rename("new", "old")  # replaces
        assert t.read_small("old") == b"new"
        remove_tree(t, "a")
        assert sorted(e.name for e in t.listdir()) == ["old"]
        with pytest.raises(TransportError):
            t.rmdir("")
        assert t.free_space() is None  # vsftpd offers no way to ask


def test_anonymous_login(ftpd):
    with open_target(parse(ftpd.url("/pub/anon-dumps", anonymous=True)), FAST) as t:
        t.mkdir("d")
        t.write_small("d/file", b"anonymous data")
        assert t.read_small("d/file") == b"anonymous data"
    assert (ftpd.anon_root / "pub" / "anon-dumps" / "d" / "file").read_bytes() == b"anonymous data"


def test_server_not_running_is_a_clear_error_after_retrying(caplog):
    port = free_port()
    url = parse(f"ftp://user:s3cret-pw@127.0.0.1:{port}/x")
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        open_target(url, TransportOptions(net_timeout=2))
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert "connection refused" in msg and f"127.0.0.1:{port}" in msg and "tried" in msg
    assert "s3cret-pw" not in msg and "s3cret-pw" not in caplog.text
    assert 2 <= elapsed < 8
    start = time.monotonic()
    with pytest.raises(TransportError, match="connection refused"):
        open_target(url, FAST)
    assert time.monotonic() - start < 1.5


def test_connect_waits_for_a_server_that_comes_up(tmp_path):
    _prerequisites()
    server = FtpServer(tmp_path / "late")
    starter = threading.Timer(1.5, server.start)
    starter.start()
    try:
        with open_target(parse(server.url("/late")), TransportOptions(net_timeout=20)) as t:
            t.write_small("hello", b"world")
        assert (server.home / "late" / "hello").read_bytes() == b"world"
    finally:
        starter.join()
        server.remove()


def test_wrong_password_is_refused_without_retrying(ftpd, caplog):
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        open_target(parse(ftpd.url("/x", password="not-the-password")), TransportOptions(net_timeout=30))
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "refused the login" in msg and ftpd.user in msg and "530" in msg
    assert "not-the-password" not in msg and "not-the-password" not in caplog.text
    assert ftpd.password not in msg


def test_read_only_directory(ftpd):
    ro = ftpd.home / "readonly"
    ro.mkdir()
    ro.chmod(0o755)  # owned by root: the ftp user may not write here
    with open_target(parse(ftpd.url("/readonly")), FAST) as t:
        with pytest.raises(TransportError, match="cannot create .*readonly/vmcore.flat.incomplete.*553"):
            t.create("vmcore.flat.incomplete")
        with pytest.raises(TransportError, match="cannot create directory"):
            t.mkdir("sub")
    with pytest.raises(TransportError, match="cannot create directory .*readonly/below"):
        open_target(parse(ftpd.url("/readonly/below")), FAST)
    assert list(ro.iterdir()) == []


def test_connection_cut_in_the_middle_of_the_transfer_is_resumed(ftpd, flat_stream, caplog):
    data = flat_stream.read_bytes()
    with open_target(parse(ftpd.url("/cut")), FAST) as t:
        f = t.create("vmcore.flat.incomplete")
        f.write(data[:4 << 20])
        time.sleep(0.3)
        assert ftpd.kill_sessions() > 0
        for i in range(4 << 20, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
        f.close()
        t.write_small("README.txt", b"done")
    assert (ftpd.home / "cut" / "vmcore.flat.incomplete").read_bytes() == data
    assert ftpd.password not in caplog.text


def test_full_disk_on_the_server(tmp_path, flat_stream):
    _prerequisites()
    server = FtpServer(tmp_path / "srv")
    try:
        with tmpfs(server.home, "4m", "kdftptest"):
            server.start()
            with open_target(parse(server.url("/dumps")), FAST) as t:
                with pytest.raises(NoSpaceError) as err:
                    send_file(t, flat_stream, "vmcore.flat")
                assert any(code in str(err.value) for code in ("451", "452", "552"))
                names = {e.name for e in t.listdir()}
            assert "vmcore.flat" not in names
            server.stop()
    finally:
        server.remove()


# -- ftps -------------------------------------------------------------------

def test_ftps_roundtrip_verified_against_the_ca_file(ftpsd, ca, flat_stream):
    opts = TransportOptions(net_timeout=0, ca_file=str(ca.cert))
    with open_target(parse(ftpsd.url("/secure")), opts) as t:
        assert t.conn.sock.version() is not None  # control connection is TLS
        send_file(t, flat_stream, "vmcore.flat")
        assert t.read_small("vmcore.flat", 12) == b"makedumpfile"
        assert t.sha256("vmcore.flat") == sha256_of(flat_stream)
    assert sha256_of(ftpsd.home / "secure" / "vmcore.flat") == sha256_of(flat_stream)


def test_ftps_server_refuses_plain_ftp(ftpsd):
    plain = parse(ftpsd.url("/secure").replace("ftps://", "ftp://", 1))
    with pytest.raises(TransportError, match="refused the login"):
        open_target(plain, FAST)


def test_ftps_certificate_from_an_unknown_ca_is_refused(ftpsd):
    # no ca_file: the system store does not know the test CA
    with pytest.raises(TransportError, match="certificate does not verify.*system store"):
        open_target(parse(ftpsd.url("/secure")), TransportOptions(net_timeout=5))


def test_ftps_certificate_for_another_host_is_refused(tmp_path, ca):
    pem = ca.server_cert("elsewhere", "DNS:elsewhere.example")
    with FtpServer(tmp_path / "other", tls_pem=pem) as server:
        with pytest.raises(TransportError, match="certificate does not verify.*(mismatch|127.0.0.1)"):
            open_target(parse(server.url("/x")), TransportOptions(net_timeout=0, ca_file=str(ca.cert)))
        assert not (server.home / "x").exists()


def test_ftps_missing_ca_file_names_the_option(ftpsd, tmp_path):
    opts = TransportOptions(net_timeout=0, ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(TransportError, match="KDUMP_CA_FILE"):
        open_target(parse(ftpsd.url("/secure")), opts)


# -- the saver through this transport -----------------------------------------

def _rebuild(flat: Path, out: Path, makedumpfile: str) -> Path:
    with open(flat, "rb") as src:
        subprocess.run([makedumpfile, "-R", str(out)], stdin=src, check=True, capture_output=True)
    return out


def _only_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_saver_over_ftp_gives_what_the_file_target_gives(ftpd, tmp_path, fixture_vmcore, makedumpfile):
    local = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore), savedir=str(tmp_path / "local"))
    local_dir = tmp_path / "local" / local.directory
    remote = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                  savedir=ftpd.url("/saver"))
    d = ftpd.home / "saver" / remote.directory
    assert remote.directory.endswith(local.directory)  # HOST-YYYY-MM-DD-HH-MM on remote targets
    assert sorted(p.name for p in d.iterdir()) == [".kdump-saver", "README.txt", "dmesg.txt", "vmcore.flat"]
    assert sha256_of(_rebuild(d / "vmcore.flat", tmp_path / "rebuilt", makedumpfile)) == \
        sha256_of(local_dir / "vmcore")
    assert (d / "dmesg.txt").read_bytes() == (local_dir / "dmesg.txt").read_bytes()
    readme = (d / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    assert f"sha256: {sha256_of(d / 'vmcore.flat')}" in readme
    assert "free space: unknown" in readme
    assert ftpd.password not in readme and "ftp://kdftptest:***@127.0.0.1" in readme
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in d.iterdir())


def test_saver_cli_over_ftps_keeps_the_password_out_of_its_output(ftpsd, ca, tmp_path, fixture_vmcore,
                                                                   makedumpfile, reference_dumps):
    conf = tmp_path / "kdump"
    conf.write_text(f'KDUMP_SAVEDIR="{ftpsd.url("/cli")}"\nKDUMP_DUMPFORMAT="lzo"\n'
                    f'KDUMP_DUMPLEVEL="31"\nKDUMP_CA_FILE="{ca.cert}"\nKDUMP_NET_TIMEOUT="5"\n')
    res = subprocess.run([sys.executable, "-m", "capture.cli", "save", "--config", str(conf),
                          "--vmcore", str(fixture_vmcore)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert ftpsd.password not in res.stdout + res.stderr
    d = _only_dir(ftpsd.home / "cli")
    rebuilt = _rebuild(d / "vmcore.flat", tmp_path / "rebuilt", makedumpfile)
    assert sha256_of(rebuilt) == sha256_of(reference_dumps.direct("-l", 31))


def test_saver_stopped_by_a_full_ftp_server_leaves_an_incomplete_dump(tmp_path, fixture_vmcore):
    _prerequisites()
    server = FtpServer(tmp_path / "srv")
    try:
        with tmpfs(server.home, "6m", "kdftptest"):
            server.start()
            with pytest.raises(KdumpError) as err:
                save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                     savedir=server.url("/full"))
            assert isinstance(err.value, NoSpaceError)
            d = _only_dir(server.home / "full")
            names = {p.name for p in d.iterdir()}
            assert "vmcore.flat" not in names and "vmcore" not in names
            readme = (d / "README.txt").read_text()
            assert readme.startswith("THIS DUMP IS INCOMPLETE.")
            server.stop()
    finally:
        server.remove()




def test_with_on_a_connected_transport_keeps_one_session(ftpd):
    """``open_target`` connects and ``with`` connects again: one login only."""
    t = open_target(parse(ftpd.url("/once")), FAST)
    assert established(ftpd.port) == 1
    with t:
        t.write_small("x", b"y")
        assert established(ftpd.port) == 1


def _save_in_thread(url: str, vmcore: Path) -> Tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = save(Config(dumpformat="raw"), vmcore=str(vmcore), savedir=url)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for_partial(root: Path, pattern: str, size: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list(root.glob(pattern))
        if parts and parts[0].stat().st_size > size:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {pattern} above {size} bytes under {root}")


def test_saver_with_the_connection_cut_mid_dump_resumes(ftpd, fixture_vmcore):
    from test_transport_cifs import lz4_sha256

    thread, outcome = _save_in_thread(ftpd.url("/cutsave"), fixture_vmcore)
    _wait_for_partial(ftpd.home / "cutsave", "*/vmcore.incomplete", 8 << 20)
    assert ftpd.kill_sessions() > 0
    thread.join(300)
    assert "result" in outcome, outcome
    d = _only_dir(ftpd.home / "cutsave")
    assert lz4_sha256(d / "vmcore.lz4") == sha256_of(fixture_vmcore)
    readme = (d / "README.txt").read_text()
    assert readme.startswith("vmcore status: saved successfully")
    assert ftpd.password not in readme


def test_ipv6_loopback(tmp_path, flat_stream):
    _prerequisites()
    with FtpServer(tmp_path / "v6", host="::1") as server:
        url = parse(server.url("/v6"))
        assert url.host == "::1"
        with open_target(url, FAST) as t:
            send_file(t, flat_stream, "vmcore.flat")
            assert [e.name for e in t.listdir()] == ["vmcore.flat"]
        assert sha256_of(server.home / "v6" / "vmcore.flat") == sha256_of(flat_stream)
