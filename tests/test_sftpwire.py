"""transports/sftpwire.py: the SFTP client against OpenSSH's own sftp-server,
and hostile servers (Hypothesis).

The real server runs as a plain subprocess over pipes (what sshd starts for
the sftp subsystem), so the protocol code is checked without ssh in between.
A hostile server is a byte string the client reads its replies from: every
request must end with the client's answer or an ``OSError``/``EOFError``
(what the transport turns into its own errors), in bounded memory and time.
"""
from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
from transports import openssh, sftpwire
from transports.sftpwire import FLAG_CREATE, FLAG_READ, FLAG_TRUNC, FLAG_WRITE

SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
MEMORY_LIMIT = 32 << 20


class PipeChannel:
    """stdin/stdout of a subprocess as the byte channel."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def sendall(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        return os.read(self.proc.stdout.fileno(), size)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[sftpwire.Session]:
    program = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)
    require(program is not None, "OpenSSH's sftp-server is not installed (openssh-server)")
    proc = subprocess.Popen([program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path)
    session = sftpwire.Session(PipeChannel(proc))
    assert session.init() == 3
    yield session
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def test_the_operations_against_openssh_sftp_server(server: sftpwire.Session, tmp_path: Path) -> None:
    assert {"posix-rename@openssh.com", "statvfs@openssh.com", "fsync@openssh.com"} <= set(server.extensions)
    server.mkdir(str(tmp_path / "d"), 0o700)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    handle = server.open(str(tmp_path / "d" / "f"), FLAG_WRITE | FLAG_CREATE | FLAG_TRUNC, 0o600)
    # pipelined writes out of order, acknowledged through callbacks
    acks: List[int] = []
    blocks = [(i * 1000, bytes([65 + i]) * 1000) for i in (3, 0, 2, 1)]
    for offset, data in blocks:
        server.send_request(sftpwire.WRITE, sftpwire.string(handle) + sftpwire.u64(offset) + sftpwire.string(data),
                            lambda kind, reply: acks.append(reply.u32() if kind == sftpwire.STATUS else -1))
    while server.outstanding:
        server.read_response()
    assert acks == [sftpwire.OK] * 4
    server.extended("fsync@openssh.com", sftpwire.string(handle))
    server.close(handle)
    assert (tmp_path / "d" / "f").read_bytes() == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000
    assert server.stat(str(tmp_path / "d" / "f")).size == 4000
    assert [(n, a.size) for n, a in server.listdir(str(tmp_path / "d")) if n not in (".", "..")] == [("f", 4000)]
    server.extended("posix-rename@openssh.com", sftpwire.string(str(tmp_path / "d" / "f"))
                    + sftpwire.string(str(tmp_path / "d" / "g")))
    with pytest.raises(sftpwire.StatusError) as gone:
        server.stat(str(tmp_path / "d" / "f"))
    assert gone.value.errno == errno.ENOENT
    reply = server.extended("statvfs@openssh.com", sftpwire.string(str(tmp_path)))
    _bsize, frsize, _blocks, _bfree, bavail = (reply.u64() for _ in range(5))
    st = os.statvfs(tmp_path)
    assert abs(frsize * bavail - st.f_frsize * st.f_bavail) < 64 << 20
    server.remove(str(tmp_path / "d" / "g"))
    server.rmdir(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_prefetch_survives_short_reads(server: sftpwire.Session, tmp_path: Path) -> None:
    """sftp-server answers at most 256 KiB per READ: asking for 1 MiB gets
    short reads in the middle of the file, which must not leave holes."""
    data = os.urandom(3 * (1 << 20) + 12345)
    (tmp_path / "big").write_bytes(data)
    handle = server.open(str(tmp_path / "big"), FLAG_READ)
    reader = sftpwire.Prefetch(server, handle, 1 << 20, 8)
    out = bytearray()
    while True:
        block = reader.read(100_000)
        if not block:
            break
        out += block
    server.close(handle)
    assert bytes(out) == data
    assert server.outstanding == 0


def test_status_errors_carry_errno(server: sftpwire.Session, tmp_path: Path) -> None:
    with pytest.raises(sftpwire.StatusError) as missing:
        server.open(str(tmp_path / "missing"), FLAG_READ)
    assert missing.value.errno == errno.ENOENT and missing.value.code == sftpwire.NO_SUCH_FILE
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        if os.geteuid() != 0:
            with pytest.raises(sftpwire.StatusError) as denied:
                server.open(str(locked / "f"), FLAG_WRITE | FLAG_CREATE)
            assert denied.value.errno == errno.EACCES
        with pytest.raises(sftpwire.StatusError) as err:
            server.rmdir(str(tmp_path))  # not empty: a failure without an errno of its own
        assert err.value.errno is None and err.value.code == sftpwire.FAILURE
    finally:
        locked.chmod(0o700)
        shutil.rmtree(locked)


# --- hostile servers -------------------------------------------------------------------------

class Scripted:
    """A server that answers every request with the same bytes, then nothing."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, size: int) -> bytes:
        out = self.data[self.at:self.at + size]
        self.at += len(out)
        return out


def packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def budget(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=timedelta(seconds=10),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bounded(call: Callable[[], object]) -> None:
    tracemalloc.start()
    try:
        try:
            call()
        except (OSError, EOFError):
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < MEMORY_LIMIT, f"peak allocation {peak} bytes"
    finally:
        tracemalloc.stop()


KINDS = st.sampled_from([sftpwire.VERSION, sftpwire.STATUS, sftpwire.HANDLE, sftpwire.DATA, sftpwire.NAME,
                         sftpwire.ATTRS, sftpwire.EXTENDED_REPLY, 0, 255])
FIELD = st.one_of(st.binary(max_size=24), st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
                  st.sampled_from([b"\x00\x00\x00\x01", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]))
REPLIES = st.lists(st.tuples(KINDS, st.lists(FIELD, max_size=8).map(b"".join)), max_size=6).map(
    lambda items: b"".join(packet(k, b) for k, b in items))
STREAMS = st.one_of(REPLIES, st.binary(max_size=300),
                    st.tuples(REPLIES, st.binary(max_size=40)).map(lambda t: t[0] + t[1]))


@budget(300)
@given(version=st.binary(max_size=64), replies=STREAMS,
       operation=st.sampled_from(["stat", "listdir", "open", "read", "prefetch", "extended", "write"]))
def test_a_hostile_server_gets_only_oserror_or_eoferror(version: bytes, replies: bytes, operation: str) -> None:
    def run() -> None:
        session = sftpwire.Session(Scripted(packet(sftpwire.VERSION, struct.pack(">I", 3) + version) + replies))
        session.init()
        if operation == "stat":
            session.stat("/x")
        elif operation == "listdir":
            session.listdir("/x")
        elif operation == "open":
            session.open("/x", FLAG_READ)
        elif operation == "read":
            session.read(b"h", 0, 4096)
        elif operation == "prefetch":
            reader = sftpwire.Prefetch(session, b"h", 4096, 4)
            for _ in range(20):
                if not reader.read(10_000):
                    break
        elif operation == "extended":
            reply = session.extended("limits@openssh.com")
            reply.u64()
        else:
            session.send_request(sftpwire.WRITE, b"", lambda kind, reply: reply.u32())
            session.read_response()
    bounded(run)


@budget(200)
@given(greeting=STREAMS)
def test_a_hostile_greeting(greeting: bytes) -> None:
    bounded(lambda: sftpwire.Session(Scripted(greeting)).init())


@budget(300)
@given(text=st.one_of(st.text(max_size=400), st.lists(st.sampled_from([
    "Permission denied (publickey,password).", "Host key verification failed.", "debug1: Server host key: "
    "ssh-ed25519 SHA256:abc", "@@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@@", "Connection refused",
    "subsystem request failed on channel 0", "ssh: connect to host x port 22: No route to host", "\x00",
    "Unable to negotiate with 127.0.0.1 port 22: no matching host key type found."]), max_size=6).map("\n".join)))
def test_ssh_messages_always_get_a_diagnosis(text: str) -> None:
    said = openssh.diagnose(text)
    assert said.kind and said.detail and len(said.detail) <= 300
