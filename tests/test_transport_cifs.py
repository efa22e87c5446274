"""The cifs transport against a real Samba smbd on 127.0.0.1 (SMB2 over direct TCP)."""
from __future__ import annotations

import hashlib
import logging
import os
import random
import stat
import subprocess
import sys
import threading
import time

import pytest

from capture.config.options import Config
from capture.errors import KdumpError
from capture.formats.flattened import FlatReader
from capture.save.sequence import save
from capture.config.targeturl import parse
from conftest import REPO, remove_tree, require, require_program, sha256_of
from servers.common import established, free_port, tmpfs
from servers.smbd import SambaServer
from transports import cifs, open_target
from transports.base import NoSpaceError, TransportError, TransportOptions

FAST = TransportOptions(net_timeout=0)


def _prerequisites() -> None:
    require(os.geteuid() == 0, "the cifs tests run smbd and create a test account: run as root")
    require_program("smbd")
    require_program("smbpasswd")


@pytest.fixture(scope="module")
def smbd(tmp_path_factory):
    _prerequisites()
    server = SambaServer(tmp_path_factory.mktemp("smbd"))
    server.start()
    yield server
    server.remove()




def test_user_with_domain_is_split():
    assert cifs.parse_user("KDTEST;alice") == ("KDTEST", "alice")
    assert cifs.parse_user("KDTEST\\alice") == ("KDTEST", "alice")
    assert cifs.parse_user("alice") == ("", "alice")
    assert cifs.split_share("/dumps/a/b") == ("dumps", "a/b")
    assert cifs.split_share("/dumps") == ("dumps", "")


def test_dump_rebuilt_at_offsets_equals_makedumpfile_output(smbd, reference_dumps):
    """The saver's pattern for seekable targets: each flattened record written at its offset."""
    with open_target(parse(smbd.url("/crash/host-1")), FAST) as t:
        f = t.create("vmcore.incomplete")
        assert f.seekable
        with open(reference_dumps.flattened("-l", 31), "rb") as stream:
            for offset, data in FlatReader(stream).records():
                f.pwrite(data, offset)
        f.close()
        t.rename("vmcore.incomplete", "vmcore")
        expected = sha256_of(reference_dumps.direct("-l", 31))
        assert t.sha256("vmcore") == expected  # read back through the transport
    saved = smbd.share_dir / "crash" / "host-1" / "vmcore"
    assert sha256_of(saved) == expected
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert not (saved.parent / "vmcore.incomplete").exists()


def test_appended_stream_equals_the_source(smbd, reference_dumps):
    src = reference_dumps.flattened("-l", 31)
    with open_target(parse(smbd.url("/append")), FAST) as t:
        f = t.create("vmcore.flat")
        with open(src, "rb") as s:
            for chunk in iter(lambda: s.read(100_000), b""):
                f.write(chunk)
        f.close()
    assert sha256_of(smbd.share_dir / "append" / "vmcore.flat") == sha256_of(src)


def test_overlapping_writes_keep_call_order(smbd, monkeypatch):
    """Random overlapping, adjacent and distant writes give what unbuffered writes would."""
    monkeypatch.setattr(cifs, "WRITE_CACHE", 256 << 10)  # force many cache flushes
    rng = random.Random(7)
    model = bytearray()
    with open_target(parse(smbd.url("/overlap")), FAST) as t:
        f = t.create("file")
        pos = 0
        for i in range(600):
            kind = rng.random()
            size = rng.randint(1, 40_000)
            if kind < 0.5:
                offset = pos
            elif kind < 0.8:
                offset = rng.randint(0, max(0, len(model) - 1))
            else:
                offset = len(model) + rng.randint(0, 100_000)
            data = bytes([i % 251]) * size
            f.pwrite(data, offset)
            if len(model) < offset + size:
                model.extend(b"\0" * (offset + size - len(model)))
            model[offset:offset + size] = data
            pos = offset + size
        f.close()
        assert t.sha256("file") == hashlib.sha256(model).hexdigest()
    assert (smbd.share_dir / "overlap" / "file").read_bytes() == bytes(model)


def test_directory_operations(smbd):
    with open_target(parse(smbd.url("/ops")), FAST) as t:
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
        t.rename("new", "old")
        assert t.read_small("old") == b"new"
        remove_tree(t, "a")
        assert sorted(e.name for e in t.listdir()) == ["old"]
        with pytest.raises(TransportError):
            t.rmdir("")
        with pytest.raises(TransportError, match="no such"):
            t.listdir("not-there")
    assert not (smbd.share_dir / "ops" / "a").exists()


def test_domain_in_the_user_part(smbd):
    url = f"cifs://KDTEST;{smbd.user}:{smbd.password}@127.0.0.1:{smbd.port}/{smbd.share}/dom"
    with open_target(parse(url), FAST) as t:
        t.write_small("x", b"y")
    assert (smbd.share_dir / "dom" / "x").read_bytes() == b"y"


def test_free_space_comes_from_the_server(tmp_path):
    _prerequisites()
    server = SambaServer(tmp_path / "srv")
    try:
        with tmpfs(server.share_dir, "64m"):
            server.start()
            with open_target(parse(server.url("/space")), FAST) as t:
                before = t.free_space()
                st = os.statvfs(server.share_dir)
                assert before == st.f_bavail * st.f_frsize
                f = t.create("eight-mb")
                f.write(b"\1" * (8 << 20))
                # still in the write cache: free_space sends it before asking
                assert before - t.free_space() == 8 << 20
                f.close()
                assert before - t.free_space() == 8 << 20
            server.stop()
    finally:
        server.remove()


def test_server_not_running_is_a_clear_error_after_retrying(caplog):
    port = free_port()
    url = parse(f"cifs://user:s3cret-pw@127.0.0.1:{port}/share/x")
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        open_target(url, TransportOptions(net_timeout=2))
    msg = str(err.value)
    assert "connection refused" in msg and f"127.0.0.1:{port}" in msg and "tried" in msg
    assert "s3cret-pw" not in msg and "s3cret-pw" not in caplog.text
    assert 2 <= time.monotonic() - start < 8


def test_connect_waits_for_a_server_that_comes_up(tmp_path):
    _prerequisites()
    server = SambaServer(tmp_path / "late")
    starter = threading.Timer(1.5, server.start)
    starter.start()
    try:
        with open_target(parse(server.url("/late")), TransportOptions(net_timeout=20)) as t:
            t.write_small("hello", b"world")
        assert (server.share_dir / "late" / "hello").read_bytes() == b"world"
    finally:
        starter.join()
        server.remove()


def test_wrong_password_is_refused_without_retrying(smbd, caplog):
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(TransportError) as err:
        open_target(parse(smbd.url("/x", password="not-the-password")), TransportOptions(net_timeout=30))
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "refused the login" in msg and smbd.user in msg
    assert "not-the-password" not in msg and "not-the-password" not in caplog.text


def test_missing_share(smbd):
    with pytest.raises(TransportError, match="no share named 'nosuch'"):
        open_target(parse(smbd.url("/x", share="nosuch")), FAST)


def test_read_only_share_and_directory(smbd):
    with open_target(parse(smbd.url("", share=smbd.ro_share)), FAST) as t:
        with pytest.raises(TransportError, match="cannot create .*(denied|read-only)"):
            t.create("vmcore.incomplete")
    with pytest.raises(TransportError, match="cannot create directory .*(denied|read-only)"):
        open_target(parse(smbd.url("/below", share=smbd.ro_share)), FAST)
    ro = smbd.share_dir / "rodir"
    ro.mkdir()
    ro.chmod(0o755)  # owned by root
    with open_target(parse(smbd.url("/rodir")), FAST) as t:
        with pytest.raises(TransportError, match="permission denied"):
            t.create("vmcore.incomplete")
        with pytest.raises(TransportError, match="permission denied"):
            t.mkdir("sub")
    assert list(ro.iterdir()) == []


def test_connection_cut_in_the_middle_of_the_transfer_is_resumed(smbd, reference_dumps, caplog):
    data = reference_dumps.flattened("-l", 31).read_bytes()
    with open_target(parse(smbd.url("/cut")), FAST) as t:
        f = t.create("vmcore.incomplete")
        f.write(data[:20 << 20])  # more than the write cache: on the server already
        assert smbd.kill_sessions() > 0
        f.write(data[20 << 20:])
        f.close()
        t.write_small("README.txt", b"done")
    assert (smbd.share_dir / "cut" / "vmcore.incomplete").read_bytes() == data
    assert smbd.password not in caplog.text


def test_full_disk_on_the_server(tmp_path, reference_dumps):
    _prerequisites()
    server = SambaServer(tmp_path / "srv")
    try:
        with tmpfs(server.share_dir, "4m"):
            server.start()
            with open_target(parse(server.url("/dumps")), FAST) as t:
                assert t.free_space() <= 4 << 20
                f = t.create("vmcore.incomplete")
                with pytest.raises(NoSpaceError, match="no space left"):
                    with open(reference_dumps.flattened("-l", 31), "rb") as s:
                        for chunk in iter(lambda: s.read(1 << 20), b""):
                            f.write(chunk)
                    f.close()
                f.abort()
                assert "vmcore" not in {e.name for e in t.listdir()}
            server.stop()
    finally:
        server.remove()


# -- the saver through this transport -----------------------------------------

def test_saver_over_cifs_gives_what_the_file_target_gives(smbd, tmp_path, fixture_vmcore):
    local = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                 savedir=str(tmp_path / "local"))
    local_dir = tmp_path / "local" / local.directory
    remote = save(Config(dumpformat="lzo", dumplevel=31), vmcore=str(fixture_vmcore),
                  savedir=smbd.url("/saver"))
    d = smbd.share_dir / "saver" / remote.directory
    assert remote.directory.endswith(local.directory)
    assert sorted(p.name for p in d.iterdir()) == [".kdump-saver", "README.txt", "dmesg.txt", "vmcore"]
    assert sha256_of(d / "vmcore") == sha256_of(local_dir / "vmcore")
    assert (d / "dmesg.txt").read_bytes() == (local_dir / "dmesg.txt").read_bytes()
    readme = (d / "README.txt").read_text()
    assert "vmcore status: saved successfully" in readme
    # SMB2 servers offer no checksum, and the dump is never read back over the network
    assert "sha256: not computed (the file was written at offsets" in readme
    assert "MB free after saving" in readme
    assert smbd.password not in readme and f"cifs://{smbd.user}:***@127.0.0.1" in readme


def test_saver_keeps_free_space_on_a_small_share(tmp_path, fixture_vmcore):
    """The free space the server reports lets KDUMP_FREE_DISK_SIZE stop the save in time."""
    _prerequisites()
    server = SambaServer(tmp_path / "srv")
    try:
        with tmpfs(server.share_dir, "24m"):
            server.start()
            with pytest.raises(KdumpError, match="KDUMP_FREE_DISK_SIZE"):
                save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=8), vmcore=str(fixture_vmcore),
                     savedir=server.url("/small"))
            st = os.statvfs(server.share_dir)
            assert st.f_bavail * st.f_frsize >= 8 << 20
            d = [p for p in (server.share_dir / "small").iterdir() if p.is_dir()]
            assert len(d) == 1
            assert "vmcore" not in {p.name for p in d[0].iterdir()}
            assert (d[0] / "README.txt").read_text().startswith("THIS DUMP IS INCOMPLETE.")
            server.stop()
    finally:
        server.remove()




def test_with_on_a_connected_transport_keeps_one_session(smbd):
    """``open_target`` connects and ``with`` connects again: one login only."""
    t = open_target(parse(smbd.url("/once")), FAST)
    assert established(smbd.port) == 1
    with t:
        t.write_small("x", b"y")
        assert established(smbd.port) == 1


def test_server_that_requires_signing(tmp_path, reference_dumps):
    """Signed sessions take pysmb's signing path for every request, writes included."""
    _prerequisites()
    with SambaServer(tmp_path / "signed", signing=True) as server:
        with open_target(parse(server.url("/signed")), FAST) as t:
            assert t.conn.is_signing_active
            f = t.create("vmcore")
            with open(reference_dumps.flattened("-l", 31), "rb") as stream:
                for offset, data in FlatReader(stream).records():
                    f.pwrite(data, offset)
            f.close()
            assert t.sha256("vmcore") == sha256_of(reference_dumps.direct("-l", 31))
        assert sha256_of(server.share_dir / "signed" / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))


def test_saver_with_the_connection_cut_mid_dump_resumes(smbd, fixture_vmcore):
    from test_transport_ftp import _save_in_thread, _wait_for_partial

    thread, outcome = _save_in_thread(smbd.url("/cutsave"), fixture_vmcore)
    _wait_for_partial(smbd.share_dir / "cutsave", "*/vmcore.incomplete", 24 << 20)
    assert smbd.kill_sessions() > 0
    thread.join(300)
    assert "result" in outcome, outcome
    d = [p for p in (smbd.share_dir / "cutsave").iterdir() if p.is_dir()]
    assert len(d) == 1
    assert lz4_sha256(d[0] / "vmcore.lz4") == sha256_of(fixture_vmcore)
    readme = (d[0] / "README.txt").read_text()
    assert readme.startswith("vmcore status: saved successfully")
    assert smbd.password not in readme


def lz4_sha256(path):
    """The sha256 of what an LZ4 frame file holds, decompressed as a stream."""
    import hashlib
    import lz4.frame
    digest = hashlib.sha256()
    with lz4.frame.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_ipv6_loopback(tmp_path, reference_dumps):
    _prerequisites()
    with SambaServer(tmp_path / "v6", host="::1") as server:
        url = parse(server.url("/v6"))
        assert url.host == "::1"
        with open_target(url, FAST) as t:
            f = t.create("vmcore.flat")
            f.write(reference_dumps.flattened("-l", 31).read_bytes())
            f.close()
            assert t.free_space() > 0
        assert sha256_of(server.share_dir / "v6" / "vmcore.flat") == sha256_of(reference_dumps.flattened("-l", 31))


@pytest.mark.parametrize("where", ["server", "share"])
def test_server_that_requires_encryption_fails_at_once_saying_why(tmp_path, fixture_vmcore, where):
    """pysmb has no SMB encryption: ``server smb encrypt = required`` refuses the session after the
    login, a share's ``smb encrypt = required`` refuses the tree connect.  The save ends at once
    (KDUMP_NET_TIMEOUT=30 would allow retries for 30 s) with the reason, without a traceback."""
    _prerequisites()
    config = tmp_path / "kdump"
    config.write_text('KDUMP_NET_TIMEOUT="30"\nKDUMP_DUMPFORMAT="raw"\n')
    config.chmod(0o600)
    with SambaServer(tmp_path / f"encrypted-{where}", encrypt=where) as server:
        url = server.url("/enc")
        start = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "capture.cli", "save", "--config", str(config),
                              "--vmcore", str(fixture_vmcore), "--savedir", url],
                             cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        took = time.monotonic() - start
        smbd_log = server.log_text()
        assert not any(server.share_dir.iterdir())
    assert "as encryption is required" in smbd_log  # the server refused for this reason, not another
    assert res.returncode != 0
    assert took < 20, f"{took:.1f} s: retried instead of failing at once"
    assert "requires SMB encryption" in res.stderr and "cannot speak" in res.stderr
    if where == "server":
        assert "the server requires SMB encryption (server smb encrypt = required;" in res.stderr
    else:
        assert "refused share 'dumps'" in res.stderr and "smb encrypt = required" in res.stderr
    assert "Traceback" not in res.stderr and "retrying" not in res.stderr and "ProtocolError" not in res.stderr
    assert server.password not in res.stderr + res.stdout
    print(f"encryption required ({where}): the save failed after {took:.1f} s: {res.stderr.strip().splitlines()[-1]}")


def test_wrong_password_on_a_server_that_requires_encryption_is_still_a_refused_login(tmp_path):
    _prerequisites()
    with SambaServer(tmp_path / "encrypted-login", encrypt="server") as server:
        with pytest.raises(TransportError) as err:
            open_target(parse(server.url("/x", password="not-the-password")), FAST)
    assert "refused the login" in str(err.value) and "encryption" not in str(err.value)


def test_check_config_states_the_cifs_limit(tmp_path):
    config = tmp_path / "kdump"
    config.write_text('KDUMP_SAVEDIR="cifs://u:secret@192.0.2.1/dumps/crash file:///var/crash"\n')
    config.chmod(0o600)
    res = subprocess.run([sys.executable, "-m", "capture.cli", "check-config", "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stdout.splitlines() if "unencrypted" in line]
    assert notes == ["# cifs://u:***@192.0.2.1/dumps/crash: cifs targets need a share that allows unencrypted "
                     "SMB2 sessions (pysmb cannot speak SMB encryption: 'smb encrypt = required' is refused); "
                     "the dump crosses the network in clear"]
    built = subprocess.run([sys.executable, "-m", "capture.cli", "build-initrd", "--check", "--config", str(config)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert notes[0][2:] in built.stderr  # printed before anything else is checked
    plain = tmp_path / "plain"
    plain.write_text('KDUMP_SAVEDIR="file:///var/crash"\n')
    res = subprocess.run([sys.executable, "-m", "capture.cli", "check-config", "--config", str(plain)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "unencrypted" not in res.stdout
