"""sftp:// (alias scp://): the dump over the SSH file transfer protocol.

Files are written at their offsets (``DumpFile.seekable``), so the server
receives a standard vmcore.  Writes are pipelined: up to
:data:`MAX_OUTSTANDING` write requests (and :data:`MAX_IN_FLIGHT` bytes) are
in flight, each as large as the server allows (``limits@openssh.com``, else
32 KiB), contiguous small writes are merged, and ``close`` waits for every acknowledgement, then asks the
server to fsync (``fsync@openssh.com``) where it can.  Free space comes from
``statvfs@openssh.com``; ``None`` when the server does not offer it.
When the connection drops while a dump file is written, the file keeps
every write request the server has not acknowledged (at most
:data:`MAX_IN_FLIGHT` bytes), connects again within KDUMP_NET_TIMEOUT of
the last reply, reopens the file without truncating it and sends those
requests again in their order: the result is the file an unbroken transfer
gives.  A server that stays silent for :func:`~transports.base.io_timeout`
counts as lost the same way.  Other operations connect again once.
Connection, host key checking and authentication: :mod:`transports.sshauth`
(the OpenSSH client); the protocol: :mod:`transports.sftpwire`.
"""
from __future__ import annotations

import errno
import logging
import shlex
import stat
import time
from typing import BinaryIO, Dict, List, Optional, Tuple

from capture.config.targeturl import TargetURL
from transports import openssh, sftpwire, sshauth
from transports.sftpwire import FLAG_CREATE, FLAG_READ, FLAG_TRUNC, FLAG_WRITE, Reply, string, u32, u64
from transports.base import (DirEntry, DumpFile, NoSpaceError, Transport, TransportError, TransportOptions,
                             resume_within)

log = logging.getLogger(__name__)

#: Write requests in flight per file before waiting for an acknowledgement.
MAX_OUTSTANDING = 64
#: Bytes those requests may hold: each is kept until acknowledged (to be sent again
#: after a reconnect), and a capture kernel's memory is small (at crashkernel=128M,
#: 64 requests of 255 KiB were the 16 MB that ran the saver out of memory).  OpenSSH's
#: channel window (2 MiB) bounds what is on its way anyway.
MAX_IN_FLIGHT = 4 << 20
#: contiguous runs of small writes kept to be sent as full requests
MAX_RUNS = 4
#: Request size when the server does not announce its limits (every server takes it).
DEFAULT_REQUEST_SIZE = 32 * 1024
#: The largest request we send even if the server would take more.
MAX_REQUEST_SIZE = 255 * 1024
#: Below this many free bytes after a failed write, the failure is a full disk.
NEARLY_FULL = 1024 * 1024

_SFTP_FAILURE = sftpwire.FAILURE
_SFTP_PERMISSION_DENIED = sftpwire.PERMISSION_DENIED
_NETWORK_ERRORS = (OSError, EOFError)
#: Seconds the server may take for the final fsync of a dump file.
SYNC_TIMEOUT = 120.0
#: Seconds for each later connection once resuming a file has failed (the
#: README that records the failure gets one short try).
AFTER_FAILURE_BUDGET = 3.0


INITRD = sshauth.INITRD
initrd_material = sshauth.initrd_material

def open_target(url: TargetURL, options: TransportOptions) -> "SFTPTransport":
    transport = SFTPTransport(url, options)
    transport.connect()
    return transport


def _start_session(channel: openssh.Channel) -> sftpwire.Session:
    """The SFTP greeting on the connection's own session."""
    session = sftpwire.Session(channel)
    session.init()
    return session


class SFTPTransport(Transport):
    """A target directory on an SFTP server."""

    def __init__(self, url: TargetURL, options: TransportOptions) -> None:
        super().__init__(url, options)
        self._conn: Optional[sshauth.SSHConnection] = None
        self._channel: Optional[openssh.Channel] = None
        self._sftp: Optional[sftpwire.Session] = None
        self._wanted = False
        self.gave_up = False
        """Set when resuming failed: later connections get one short try."""
        self.request_size = DEFAULT_REQUEST_SIZE
        self.read_size = DEFAULT_REQUEST_SIZE

    # -- connection -------------------------------------------------------

    def connect(self, budget: Optional[float] = None) -> None:
        """Connect (once: a connected transport stays as it is), retrying for
        ``budget`` seconds (default KDUMP_NET_TIMEOUT)."""
        if self._live():
            return
        self._drop()
        self._wanted = True
        self._conn = sshauth.connect(self.url, self.options, budget, subsystem="sftp", ready=_start_session)
        try:
            self._channel = self._conn.master.first
            self._sftp = self._conn.first  # type: ignore[assignment]
            self._read_limits()
            self._make_base()
        except BaseException:
            self.close()
            raise

    def _live(self) -> bool:
        return (self._sftp is not None and self._conn is not None and self._channel is not None
                and self._channel.exit_status is None and self._conn.alive)

    def _read_limits(self) -> None:
        if "limits@openssh.com" not in self.sftp.extensions:
            return
        msg = self._extended("limits@openssh.com")
        max_packet, max_read, max_write = msg.u64(), msg.u64(), msg.u64()
        ceiling = min(MAX_REQUEST_SIZE, max_packet - 1024) if max_packet > 2048 else MAX_REQUEST_SIZE
        if max_write:
            self.request_size = max(min(max_write, ceiling), 1024)
        if max_read:
            self.read_size = max(min(max_read, ceiling), 1024)
        log.debug("%s: sftp requests of %d bytes (write), %d (read)", self.url.masked(),
                  self.request_size, self.read_size)

    def _make_base(self) -> None:
        base = self.url.path
        attrs = self._stat(base)
        if attrs is not None:
            if not stat.S_ISDIR(attrs.mode or 0):
                raise TransportError(f"{self.url.masked()}: {base} exists and is not a directory")
            return
        current = ""
        for part in [p for p in base.split("/") if p]:
            current += "/" + part
            if self._stat(current) is not None:
                continue
            try:
                self.sftp.mkdir(current, 0o700)
            except _NETWORK_ERRORS as exc:
                if self._stat(current) is None:
                    raise self._error(f"cannot create the directory {current}", exc) from None
            log.info("%s: created %s", self.url.masked(), current)

    def close(self) -> None:
        self._wanted = False
        self._drop()

    def reconnect(self, budget: float) -> None:
        """A new connection after a lost one, retrying for ``budget`` seconds
        (one short try when that is (nearly) nothing)."""
        self._drop()
        self._wanted = True
        self.connect(max(budget, sshauth.MIN_ATTEMPT_TIMEOUT))

    def _drop(self) -> None:
        """Forget the connection (after a failure: the next operation makes a new one)."""
        self._sftp = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def sftp(self) -> sftpwire.Session:
        """The SFTP session; after the connection dropped, a new one (so that
        the saver can still record a failure in README.txt)."""
        if not self._wanted:
            raise TransportError(f"{self.url.masked()}: not connected")
        if not self._live():
            log.warning("%s: the connection was lost; connecting again", self.url.masked())
            self.connect(AFTER_FAILURE_BUDGET if self.gave_up else None)
        assert self._sftp is not None
        return self._sftp

    def _path(self, rel: str) -> str:
        return sshauth.remote_path(self.url.path, rel)

    # -- operations -------------------------------------------------------

    def mkdir(self, path: str) -> None:
        full = self._path(path)
        try:
            self.sftp.mkdir(full, 0o700)
        except _NETWORK_ERRORS as exc:
            if isinstance(exc, OSError) and self._stat(full) is not None:
                raise FileExistsError(errno.EEXIST, "exists", path) from None
            raise self._create_error(f"creating the directory {path!r}", exc) from None

    def create(self, path: str) -> DumpFile:
        try:
            handle = self.open_handle(path, truncate=True)
        except _NETWORK_ERRORS as exc:
            raise self._create_error(f"creating {path!r}", exc) from None
        return SFTPDumpFile(self, path, handle)

    def open_handle(self, path: str, truncate: bool) -> bytes:
        """Open ``path`` for writing, mode 0600: emptied (a new dump file) or
        as it is (resuming one).  Raises the protocol's and the channel's errors."""
        flags = FLAG_WRITE | (FLAG_CREATE | FLAG_TRUNC if truncate else 0)
        handle = self.sftp.open(self._path(path), flags, 0o600)
        # an existing file keeps its mode on open: make it 0600 like a new one
        self.sftp.fsetstat_mode(handle, 0o600)
        return handle

    def rename(self, src: str, dst: str) -> None:
        old, new = self._path(src), self._path(dst)
        try:
            if "posix-rename@openssh.com" in self.sftp.extensions:
                self.sftp.extended("posix-rename@openssh.com", string(old) + string(new))
            else:
                if self._stat(new) is not None:
                    self.sftp.remove(new)
                self.sftp.rename(old, new)
        except _NETWORK_ERRORS as exc:
            raise self._error(f"cannot rename {src!r} to {dst!r}", exc) from None

    def listdir(self, path: str = "") -> List[DirEntry]:
        try:
            entries = self.sftp.listdir(self._path(path))
        except _NETWORK_ERRORS as exc:
            raise self._error(f"cannot list {path or 'the target directory'!r}", exc) from None
        return [DirEntry(name, stat.S_ISDIR(attrs.mode or 0)) for name, attrs in entries
                if name not in (".", "..")]

    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        try:
            session = self.sftp
            handle = session.open(self._path(path), FLAG_READ)
            try:
                chunks: List[bytes] = []
                size = 0
                while size < limit:
                    block = session.read(handle, size, min(limit - size, self.read_size))
                    if not block:
                        break
                    chunks.append(block)
                    size += len(block)
                return b"".join(chunks)
            finally:
                session.close(handle)
        except _NETWORK_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                return None
            raise self._error(f"cannot read {path!r}", exc) from None

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(self._path(path))
        except _NETWORK_ERRORS as exc:
            raise self._error(f"cannot delete {path!r}", exc) from None

    def rmdir(self, path: str) -> None:
        full = self._path(path)
        if full == self.url.path:
            raise TransportError(f"{self.url.masked()}: refusing to remove the target directory itself")
        try:
            self.sftp.rmdir(full)
        except _NETWORK_ERRORS as exc:
            raise self._error(f"cannot delete {path!r}", exc) from None

    def server_sha256(self, path: str) -> Optional[str]:
        """``sha256sum`` run by the server over this SSH connection, where it
        allows commands (an sftp-only account does not: None)."""
        full = self._path(path)
        try:
            channel = self._conn.open_session() if self._conn is not None else None
            if channel is None:
                return None
            with channel:
                channel.exec_command(f"sha256sum -- {shlex.quote(full)}")
                out = b""
                while len(out) < 4096:
                    block = channel.recv(4096)
                    if not block:
                        break
                    out += block
                status = channel.wait()
        except (TransportError, *_NETWORK_ERRORS) as exc:
            log.info("%s: the server cannot compute the sha256 of %s: %s", self.url.masked(), path, exc)
            return None
        digest = out.split(b" ", 1)[0].decode("ascii", "replace")
        if status != 0 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            log.info("%s: the server cannot compute the sha256 of %s (sha256sum exit status %s)",
                     self.url.masked(), path, status)
            return None
        return digest

    def free_space(self) -> Optional[int]:
        if "statvfs@openssh.com" not in self.sftp.extensions:
            return None
        try:
            msg = self._extended("statvfs@openssh.com", string(self.url.path))
        except TransportError as exc:
            log.warning("%s", exc)
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.u64() for _ in range(5))
        return frsize * bavail

    def open_read(self, path: str) -> BinaryIO:
        try:
            session = self.sftp
            handle = session.open(self._path(path), FLAG_READ)
        except _NETWORK_ERRORS as exc:
            raise self._error(f"cannot read {path!r}", exc) from None
        return _Reader(session, handle, self, path)  # type: ignore[return-value]

    # -- helpers ----------------------------------------------------------

    def _stat(self, full: str) -> Optional[sftpwire.Attributes]:
        try:
            return self.sftp.stat(full)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._error(f"cannot look at {full}", exc) from None
        except EOFError as exc:
            raise self._error(f"cannot look at {full}", exc) from None

    def _extended(self, name: str, payload: bytes = b"") -> Reply:
        try:
            return self.sftp.extended(name, payload)
        except _NETWORK_ERRORS as exc:
            raise self._error(name, exc) from None

    def _error(self, what: str, exc: BaseException) -> TransportError:
        """A :class:`TransportError` for a failed request, secret-free."""
        if isinstance(exc, OSError) and exc.errno == errno.EACCES:
            reason = "permission denied"
        elif isinstance(exc, OSError) and exc.errno == errno.ENOENT:
            reason = "no such file or directory"
        elif isinstance(exc, (EOFError, TimeoutError)):
            reason = f"the connection was lost ({sshauth.describe(exc)})"
            self._drop()
        elif isinstance(exc, OSError) and exc.errno is None:
            reason = f"the server says: {str(exc)[:200]}"
        else:
            reason = sshauth.describe(exc)
        return TransportError(f"{self.url.masked()}: {what}: {reason}")

    def _full_disk(self, doing: str) -> Optional[NoSpaceError]:
        """After a generic failure status: a NoSpaceError when the disk is (nearly) full."""
        try:
            free = self.free_space()
        except TransportError:
            free = None
        if free is not None and free < NEARLY_FULL:
            return NoSpaceError(f"{self.url.masked()}: the server's disk is full while {doing} ({free} bytes left)")
        return None

    def _create_error(self, what: str, exc: BaseException) -> TransportError:
        if isinstance(exc, sftpwire.StatusError) and exc.errno is None:
            full = self._full_disk(what)
            if full is not None:
                return full
        return self._error(what, exc)

    def _write_error(self, name: str, code: Optional[int], text: str) -> TransportError:
        if code == _SFTP_FAILURE:
            full = self._full_disk(f"writing {name!r}")
            if full is not None:
                return full
        if code == _SFTP_PERMISSION_DENIED:
            return TransportError(f"{self.url.masked()}: writing {name!r}: permission denied")
        return TransportError(f"{self.url.masked()}: writing {name!r} failed: the server says: {text[:200]}")


class SFTPDumpFile(DumpFile):
    """A remote file written at offsets with pipelined write requests; the
    unacknowledged ones are kept for sending again after a reconnect."""

    seekable = True

    def __init__(self, owner: SFTPTransport, name: str, handle: bytes) -> None:
        self._owner = owner
        self._sftp = owner.sftp
        self._name = name
        self._handle = handle
        self._size = owner.request_size
        #: requests in flight before waiting: at most MAX_OUTSTANDING and MAX_IN_FLIGHT bytes
        self._window = max(1, min(MAX_OUTSTANDING, MAX_IN_FLIGHT // self._size))
        self._append_at = 0
        self._runs: Dict[int, bytearray] = {}
        """start offset -> contiguous data not sent yet, oldest first."""
        self._unacked: Dict[int, Tuple[int, bytes]] = {}
        """request number -> (offset, data), in the order sent."""
        self._heard = time.monotonic()
        self._failure: Optional[Tuple[int, str]] = None
        self._closed = False

    def write(self, data: bytes) -> None:
        self.pwrite(data, self._append_at)
        self._append_at += len(data)

    def pwrite(self, data: bytes, offset: int) -> None:
        """Queue ``data`` for ``offset``: writes that continue one another are sent as
        full-size requests (makedumpfile interleaves two such streams, the page data and
        its descriptors, in records of a few KiB); data that overlaps what is queued is
        sent after it, so a later write always lands last."""
        if self._closed:
            raise TransportError(f"{self._owner.url.masked()}: {self._name!r} is already closed")
        if not data:
            return
        end = offset + len(data)
        extends = None
        for start, run in list(self._runs.items()):
            if start + len(run) == offset:
                extends = start
            elif start < end and offset < start + len(run):
                self._send_run(start)
        if extends is not None:
            run = self._runs[extends]
            run += data
            full = len(run) - len(run) % self._size
            if full:
                del self._runs[extends]
                if full < len(run):
                    self._runs[extends + full] = run[full:]
                self._send(memoryview(run)[:full], extends)
            return
        if len(data) >= self._size:
            self._send(memoryview(data), offset)
            return
        if len(self._runs) >= MAX_RUNS:
            self._send_run(next(iter(self._runs)))
        self._runs[offset] = bytearray(data)

    def _send_run(self, start: int) -> None:
        self._send(memoryview(self._runs.pop(start)), start)

    def _flush(self) -> None:
        while self._runs:
            self._send_run(next(iter(self._runs)))

    def _send(self, data: memoryview, offset: int) -> None:
        for start in range(0, len(data), self._size):
            self._raise_failure()
            chunk = bytes(data[start:start + self._size])
            try:
                self._request(offset + start, chunk)
                while len(self._unacked) >= self._window:
                    self._sftp.read_response()
            except _NETWORK_ERRORS as exc:
                self._resume(exc)
        self._raise_failure()

    def _request(self, offset: int, chunk: bytes) -> None:
        # recorded before sending: a request that breaks half-way is sent again too
        num = self._sftp.request_number
        self._unacked[num] = (offset, chunk)
        self._sftp.send_request(sftpwire.WRITE, string(self._handle) + u64(offset) + u32(len(chunk)),
                                lambda t, msg: self._acknowledged(num, t, msg), data=chunk)

    def _acknowledged(self, num: int, t: int, msg: Reply) -> None:
        """Called for each acknowledgement of our writes."""
        self._unacked.pop(num, None)
        self._heard = time.monotonic()
        if self._failure is not None:
            return
        if t != sftpwire.STATUS:
            self._failure = (-1, "unexpected reply to a write")
            return
        code = msg.u32()
        if code != sftpwire.OK:
            self._failure = (code, msg.text() if msg.left >= 4 else "")

    def _drain(self) -> None:
        while self._unacked:
            self._sftp.read_response()

    def _resume(self, exc: BaseException) -> None:
        """Connect again, reopen the file and send every unacknowledged write
        again, in order, until all are acknowledged; or raise TransportError."""
        pending = list(self._unacked.values())
        log.warning("%s: the connection broke while writing %r (%s); resuming with %d unconfirmed "
                    "write(s), %d bytes", self._owner.url.masked(), self._name, sshauth.describe(exc),
                    len(pending), sum(len(c) for _, c in pending))

        def attempt(left: float) -> None:
            self._unacked.clear()
            self._owner.reconnect(left)
            try:
                self._sftp = self._owner.sftp
                self._handle = self._owner.open_handle(self._name, truncate=False)
                for offset, chunk in pending:
                    self._request(offset, chunk)
                    while len(self._unacked) >= self._window:
                        self._sftp.read_response()
                self._drain()
            except _NETWORK_ERRORS as exc:
                raise TransportError(f"the connection broke again ({sshauth.describe(exc)})") from None

        try:
            resume_within(self._owner.url, self._owner.options.net_timeout, self._heard, attempt,
                          f"writing {self._name!r}")
        except TransportError:
            self._closed = True
            self._owner.gave_up = True
            self._owner._drop()
            raise
        self._heard = time.monotonic()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            code, text = self._failure
            self._abort_quietly()
            raise self._owner._write_error(self._name, code, text)

    def close(self) -> None:
        if self._closed:
            return
        self._flush()
        while True:
            try:
                self._drain()
                self._raise_failure()
                self._fsync()
                self._closed = True
                self._sftp.close(self._handle)
                return
            except _NETWORK_ERRORS as exc:
                if self._closed:  # only the CLOSE itself failed: the data is acknowledged and synced
                    raise self._owner._error(f"finishing {self._name!r}", exc) from None
                self._resume(exc)

    def _fsync(self) -> None:
        if "fsync@openssh.com" not in self._sftp.extensions:
            return
        channel = self._sftp.channel
        before = channel.gettimeout()
        channel.settimeout(max(SYNC_TIMEOUT, before or 0))
        try:
            self._sftp.extended("fsync@openssh.com", string(self._handle))
        except sftpwire.StatusError as exc:
            self._abort_quietly()
            raise self._owner._write_error(self._name, exc.code, str(exc)) from None
        finally:
            channel.settimeout(before)

    def abort(self) -> None:
        self._abort_quietly()

    def _abort_quietly(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._runs.clear()
        self._unacked.clear()
        try:
            self._sftp.close(self._handle)
        except Exception:  # noqa: BLE001 - the error path must not mask the cause
            pass


class _Reader:
    """A prefetching remote file whose errors are :class:`TransportError`."""

    def __init__(self, session: sftpwire.Session, handle: bytes, owner: SFTPTransport, name: str) -> None:
        self._session = session
        self._handle = handle
        self._f = sftpwire.Prefetch(session, handle, owner.read_size, MAX_OUTSTANDING)
        self._owner = owner
        self._name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read(size)
        except _NETWORK_ERRORS as exc:
            raise self._owner._error(f"reading {self._name!r}", exc) from None

    def close(self) -> None:
        try:
            self._f.discard()
            self._session.close(self._handle)
        except Exception:  # noqa: BLE001 - close never raises
            pass

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

