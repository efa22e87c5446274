"""The cifs target (``cifs://`` or ``smb://``): a share on an SMB2 server, via pysmb.

URL form: ``cifs://[[DOMAIN;]user[:password]@]host[:port]/SHARE/path``; the
domain may also be written ``DOMAIN\\user`` (``%5C`` in a URL).  No user means
a guest session.  The connection is SMB2 over direct TCP (port 445 unless the
URL gives one); no kernel cifs module is needed.

pysmb's public calls open and close the remote file for every call, report
failures as text, cannot replace a file by renaming and have no call for the
free space.  So this module drives pysmb's SMB2 session (negotiation,
authentication, signing, message framing: the ``_sendSMBMessage`` /
``pending_requests`` machinery every pysmb call uses) with the standard SMB2
requests itself ([MS-SMB2] 2.2.13 CREATE, 2.2.17 FLUSH, 2.2.19 READ,
2.2.21 WRITE, 2.2.37 QUERY_INFO, 2.2.39 SET_INFO):

* a dump file is one open handle; writes at offsets are coalesced in memory
  into large contiguous runs and sent in chunks of the server's maximum write
  size (64 KiB: pysmb negotiates SMB 2.0.2), several WRITEs in flight within
  the credits the server grants; unsigned WRITEs are framed here and handed
  to the socket without copying the data; ``close`` sends FLUSH (the
  server's fsync) before CLOSE;
* ``rename`` uses FileRenameInformation with ReplaceIfExists;
* ``free_space`` asks FileFsFullSizeInformation (caller-available units).

A dump file survives a lost connection: the run being sent when it broke
is still in memory, so the file connects again within KDUMP_NET_TIMEOUT of
the last reply, reopens the file by name (without truncating it) and sends
that run again; runs sent before were acknowledged.  A server silent for
:func:`~transports.base.io_timeout` counts as lost.

Every failure carries the NT status, mapped to a clear :class:`TransportError`
(:class:`NoSpaceError` for a full disk or quota).  pysmb speaks SMB 2.0.2,
which has no encryption: a server that requires it (``server smb encrypt =
required``) refuses the session after the login with STATUS_ACCESS_DENIED
([MS-SMB2] 3.3.5.5.3), which ends the connect at once with a message saying
so; a share that requires it (``smb encrypt = required``) refuses the tree
connect with the same status a user the share does not admit gets, so that
message names both causes.  File modes are the
server's business (its ``create mask`` / ``directory mask``): SMB has no
mode bits to send.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import socket
import struct
import time
import weakref
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, TypeVar

from smb.SMBConnection import SMBConnection
from smb.base import NotConnectedError, NotReadyError, SMBTimeout, _PendingRequest
from smb.smb2_constants import SMB2_COM_FLUSH, SMB2_COM_SESSION_SETUP
from smb.smb2_structs import (SMB2CloseRequest, SMB2CreateRequest, SMB2Message, SMB2QueryInfoRequest,
                              SMB2ReadRequest, SMB2SetInfoRequest, SMB2TreeConnectRequest, SMB2WriteRequest)
from smb.smb_structs import OperationFailure, ProtocolError

from capture.config.targeturl import TargetURL
from transports.base import (DirEntry, DumpFile, InitrdProfile, NoSpaceError, Transport, TransportError,
                             TransportOptions, io_timeout, make_missing_dirs, network_reason,
                             no_initrd_material, resume_within, retry_until_timeout)

log = logging.getLogger(__name__)
T = TypeVar("T")
# pysmb's SMB1 path logs a hash of the password at INFO level; its debug and
# info output is of no use on a console anyway
logging.getLogger("SMB").setLevel(logging.WARNING)
logging.getLogger("NMB").setLevel(logging.WARNING)

# NT status codes ([MS-ERREF] 2.3.1) this module tells apart.
STATUS_SUCCESS = 0
STATUS_END_OF_FILE = 0xC0000011
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_QUOTA_EXCEEDED = 0xC0000044
STATUS_DISK_FULL = 0xC000007F
STATUS_MEDIA_WRITE_PROTECTED = 0xC00000A2
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
STATUS_BAD_NETWORK_NAME = 0xC00000CC
STATUS_NOT_A_DIRECTORY = 0xC0000103
STATUS_NETWORK_SESSION_EXPIRED = 0xC000035C
STATUS_FILE_CLOSED = 0xC0000128
STATUS_USER_SESSION_DELETED = 0xC0000203

_STATUS_TEXT = {
    STATUS_ACCESS_DENIED: "permission denied",
    STATUS_OBJECT_NAME_INVALID: "invalid name",
    STATUS_OBJECT_NAME_NOT_FOUND: "no such file",
    STATUS_OBJECT_NAME_COLLISION: "already exists",
    STATUS_OBJECT_PATH_NOT_FOUND: "no such directory",
    STATUS_SHARING_VIOLATION: "in use by another client",
    STATUS_QUOTA_EXCEEDED: "quota exceeded",
    STATUS_DISK_FULL: "no space left on the server",
    STATUS_MEDIA_WRITE_PROTECTED: "read-only share",
    STATUS_FILE_IS_A_DIRECTORY: "is a directory",
    STATUS_BAD_NETWORK_NAME: "no such share",
    STATUS_NOT_A_DIRECTORY: "not a directory",
    STATUS_FILE_CLOSED: "the connection was lost and the server closed the file",
    STATUS_USER_SESSION_DELETED: "the connection was lost and the server ended the session",
}
_NOT_FOUND = (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND)
#: statuses that mean the connection (not the request) failed
_LOST_STATUS = (STATUS_NETWORK_SESSION_EXPIRED, STATUS_USER_SESSION_DELETED, STATUS_FILE_CLOSED)
#: exceptions of a lost or silent connection
_LOST = (NotConnectedError, NotReadyError, SMBTimeout, ProtocolError, OSError)
#: what to say about a server or share that requires SMB encryption
ENCRYPTION_LIMIT = ("which the cifs transport (pysmb: SMB 2.0.2, no encryption) cannot speak; "
                    "use sftp, or allow unencrypted sessions for this share")
#: seconds the server may take for the FLUSH that ends a dump file
SYNC_TIMEOUT = 120.0

# [MS-SMB2] / [MS-FSCC] constants used below.
_SMB2_INFO_FILE = 0x01
_SMB2_INFO_FILESYSTEM = 0x02
_FILE_RENAME_INFORMATION = 10
_FILE_DISPOSITION_INFORMATION = 13
_FILE_END_OF_FILE_INFORMATION = 20
_FILE_FS_FULL_SIZE_INFORMATION = 7
_FILE_READ_DATA = 0x1
_FILE_WRITE_DATA = 0x2
_FILE_APPEND_DATA = 0x4
_FILE_READ_ATTRIBUTES = 0x80
_FILE_WRITE_ATTRIBUTES = 0x100
_FILE_LIST_DIRECTORY = 0x1
_DELETE = 0x10000
_SYNCHRONIZE = 0x100000
_SHARE_ALL = 0x7
_FILE_OPEN = 1
_FILE_CREATE = 2
_FILE_OVERWRITE_IF = 5
_FILE_DIRECTORY_FILE = 0x1
_FILE_NON_DIRECTORY_FILE = 0x40
_FILE_ATTRIBUTE_NORMAL = 0x80
_SEC_IMPERSONATE = 2
_WRITE_ACCESS = _FILE_WRITE_DATA | _FILE_APPEND_DATA | _FILE_READ_DATA | _FILE_READ_ATTRIBUTES | _FILE_WRITE_ATTRIBUTES

#: bytes kept in memory before coalesced writes are sent
WRITE_CACHE = 16 << 20
#: at most this many separate runs are cached
MAX_RUNS = 8
#: bytes fetched per round trip by :meth:`CifsTransport.open_read`
READ_BLOCK = 4 << 20
#: WRITE requests on the wire at once
MAX_IN_FLIGHT = 32
#: credits asked for with each WRITE, to open the window
CREDIT_REQUEST = 8


_SMB2_COM_WRITE = 0x0009
_SMB2_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")
_SMB2_WRITE = struct.Struct("<HHIQ16sIIHHI")


def _sendmsg_all(sock: socket.socket, buffers: List) -> None:
    """Send all ``buffers`` (bytes or memoryviews) in order, like sendall."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class SmbStatusError(Exception):
    """An SMB2 reply with a failure status (internal; mapped to TransportError)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"NT status 0x{status:08X}")
        self.status = status


def parse_user(user: str) -> Tuple[str, str]:
    """Split ``DOMAIN;user`` or ``DOMAIN\\user`` into (domain, user)."""
    for sep in (";", "\\"):
        if sep in user:
            domain, name = user.split(sep, 1)
            return domain, name
    return "", user


def split_share(url_path: str) -> Tuple[str, str]:
    """(share, base path inside the share, ``/``-separated without leading slash)."""
    parts = [p for p in url_path.split("/") if p]
    if not parts:
        raise TransportError("a cifs target needs a share: cifs://host/SHARE/path")
    return parts[0], "/".join(parts[1:])


def describe(status: int) -> str:
    """Words for an NT status, with the code."""
    text = _STATUS_TEXT.get(status)
    return f"{text} (NT status 0x{status:08X})" if text else f"NT status 0x{status:08X}"


def _status_error(what: str, status: int) -> TransportError:
    cls = NoSpaceError if status in (STATUS_DISK_FULL, STATUS_QUOTA_EXCEEDED) else TransportError
    return cls(f"{what}: {describe(status)}")


class _FlushRequest:
    """SMB2 FLUSH ([MS-SMB2] 2.2.17); pysmb has the command code but no structure."""

    def __init__(self, fid: bytes) -> None:
        self.fid = fid

    def initMessage(self, message) -> None:  # noqa: N802 - pysmb's protocol
        message.payload = self
        message.command = SMB2_COM_FLUSH

    def prepare(self, message) -> None:
        message.data = struct.pack("<HHI16s", 24, 0, 0, self.fid)

    def decode(self, message) -> None:
        pass


class _CreditingMessage(SMB2Message):
    """An SMB2 message that asks for credits ([MS-SMB2] 2.2.1.2: CreditRequest
    at header offset 14; pysmb always asks for none)."""

    credit_request = 1

    def encode(self) -> bytes:
        raw = super().encode()
        return raw[:14] + struct.pack("<H", self.credit_request) + raw[16:]


def _message(payload, credit_request: int = 1) -> _CreditingMessage:
    message = _CreditingMessage(payload)
    message.credit_request = credit_request
    return message


class SmbSession:
    """One authenticated SMB2 session and tree, with synchronous requests.

    Writes are pipelined: up to :data:`MAX_IN_FLIGHT` WRITE requests are on
    the wire at once, within the credits the server has granted.  The count
    of credits is an estimate that never exceeds the real balance: it starts
    at 1, adds what each reply we see grants, and falls back to 1 after
    requests pysmb sends by itself (whose grants we do not see); with nothing
    outstanding the server always leaves a client at least one credit.
    """

    def __init__(self, conn, share: str, timeout: float) -> None:
        self.conn = conn
        self.share = share
        self.timeout = timeout
        self.tid = 0
        self.credits = 1

    def forget_credits(self) -> None:
        """After requests sent by pysmb itself: assume the minimum."""
        self.credits = 1

    def call(self, payload: Any, tid: Optional[int] = None) -> Any:
        """Send one SMB2 request and return the reply message (any status)."""
        conn = self.conn
        message = _message(payload)
        message.tid = self.tid if tid is None else tid
        replies: list = []

        def got(reply, **_kw) -> None:
            replies.append(reply)

        def failed(exc) -> None:
            raise exc

        conn._sendSMBMessage(message)
        self.credits -= 1
        conn.pending_requests[message.mid] = _PendingRequest(
            message.mid, time.time() + self.timeout, got, failed)
        deadline = time.monotonic() + self.timeout
        while not replies:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from the server")
            conn._pollForNetBIOSPacket(self.timeout)
        self.credits = max(1, self.credits + replies[0].credit_re)
        return replies[0]

    def check(self, payload) -> object:
        reply = self.call(payload)
        if reply.status != STATUS_SUCCESS:
            raise SmbStatusError(reply.status)
        return reply

    def tree_connect(self, host: str) -> None:
        reply = self.call(SMB2TreeConnectRequest(rf"\\{host}\{self.share}"), tid=0)
        if reply.status != STATUS_SUCCESS:
            raise SmbStatusError(reply.status)
        self.tid = reply.tid
        self.conn.connected_trees[self.share] = reply.tid

    def open(self, path: str, access: int, disposition: int, options: int) -> bytes:
        reply = self.check(SMB2CreateRequest(
            path.replace("/", "\\"), file_attributes=_FILE_ATTRIBUTE_NORMAL if options & _FILE_NON_DIRECTORY_FILE else 0,
            access_mask=access | _SYNCHRONIZE, share_access=_SHARE_ALL, create_disp=disposition,
            create_options=options, impersonation=_SEC_IMPERSONATE))
        return reply.payload.fid

    def close_handle(self, fid: bytes) -> None:
        self.check(SMB2CloseRequest(fid))

    def write(self, fid: bytes, data: memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``, several requests in flight at once."""
        conn = self.conn
        chunk = max(4096, conn.max_write_size or 65536)
        starts = list(range(0, len(data), chunk))
        in_flight: Dict[int, int] = {}
        failures: List[int] = []

        def done(reply, **kw) -> None:
            in_flight.pop(kw["write_mid"], None)
            self.credits += reply.credit_re
            if reply.status != STATUS_SUCCESS:
                failures.append(reply.status)
            elif reply.payload.count != kw["length"]:
                failures.append(STATUS_DISK_FULL)

        def failed(exc) -> None:
            raise exc

        next_piece = 0
        deadline = time.time() + self.timeout
        while (next_piece < len(starts) and not failures) or in_flight:
            if not in_flight:
                self.credits = max(1, self.credits)
            while (next_piece < len(starts) and not failures and self.credits > 0
                   and len(in_flight) < MAX_IN_FLIGHT):
                start = starts[next_piece]
                piece = data[start:start + chunk]
                if conn.is_signing_active:
                    message = _message(SMB2WriteRequest(fid, bytes(piece), offset + start), CREDIT_REQUEST)
                    message.tid = self.tid
                    conn._sendSMBMessage(message)
                    mid = message.mid
                else:
                    mid = self._send_write(fid, piece, offset + start)
                self.credits -= 1
                in_flight[mid] = len(piece)
                conn.pending_requests[mid] = _PendingRequest(
                    mid, deadline, done, failed, write_mid=mid, length=len(piece))
                next_piece += 1
            if in_flight:
                conn._pollForNetBIOSPacket(self.timeout)
        if failures:
            raise SmbStatusError(failures[0])

    def _send_write(self, fid: bytes, piece: memoryview, offset: int) -> int:
        """Send one unsigned SMB2 WRITE without copying ``piece``; return its MessageId.

        The message is what pysmb would build ([MS-SMB2] 2.2.1.2 sync header,
        2.2.21 WRITE request), framed for direct TCP (a 4-byte length), and
        handed to the kernel with the data as a separate buffer."""
        conn = self.conn
        mid = conn._getNextMID_SMB2()
        header = _SMB2_HEADER.pack(b"\xfeSMB", 64, 0, 0, _SMB2_COM_WRITE, CREDIT_REQUEST, 0, 0, mid,
                                   os.getpid() & 0xFFFFFFFF, self.tid, conn.session_id, b"\0" * 16)
        body = _SMB2_WRITE.pack(49, 64 + _SMB2_WRITE.size, len(piece), offset, fid, 0, 0, 0, 0, 0)
        length = len(header) + len(body) + len(piece)
        _sendmsg_all(conn.sock, [struct.pack(">I", length) + header + body, piece])
        return mid

    def read(self, fid: bytes, offset: int, length: int) -> bytes:
        out = bytearray()
        chunk = max(4096, self.conn.max_read_size or 65536)
        while len(out) < length:
            want = min(chunk, length - len(out))
            reply = self.call(SMB2ReadRequest(fid, offset + len(out), want))
            if reply.status == STATUS_END_OF_FILE:
                break
            if reply.status != STATUS_SUCCESS:
                raise SmbStatusError(reply.status)
            if not reply.payload.data:
                break
            out += reply.payload.data
            if len(reply.payload.data) < want:
                break
        return bytes(out)

    def flush(self, fid: bytes) -> None:
        self.check(_FlushRequest(fid))

    def set_info(self, fid: bytes, info_class: int, data: bytes) -> None:
        self.check(SMB2SetInfoRequest(fid, additional_info=0, info_type=_SMB2_INFO_FILE,
                                      file_info_class=info_class, data=data))

    def query_fs(self, fid: bytes, info_class: int) -> bytes:
        reply = self.check(SMB2QueryInfoRequest(fid, flags=0, additional_info=0, info_type=_SMB2_INFO_FILESYSTEM,
                                                file_info_class=info_class, input_buf=b"", output_buf_len=4096))
        return reply.payload.data


class SmbFile(DumpFile):
    """A file on the share, open for writing until :meth:`close`.

    Writes are kept in up to :data:`MAX_RUNS` contiguous runs totalling at
    most :data:`WRITE_CACHE` bytes, then sent in offset order; a write that
    overlaps a cached run sends that run first, so the server sees the same
    result as unbuffered writes in call order.
    """

    seekable = True

    def __init__(self, transport: "CifsTransport", fid: bytes, path: str) -> None:
        self._t = transport
        self._fid: Optional[bytes] = fid
        self._path = path
        self._pos = 0
        self._runs: Dict[int, bytearray] = {}
        self._cached = 0
        self._heard = time.monotonic()

    def write(self, data: bytes) -> None:
        self.pwrite(data, self._pos)
        self._pos += len(data)

    def pwrite(self, data: bytes, offset: int) -> None:
        if self._fid is None:
            raise TransportError(f"{self._path} on {self._t.url.masked()} is already closed")
        if not data:
            return
        end = offset + len(data)
        for start, run in list(self._runs.items()):
            run_end = start + len(run)
            if run_end == offset:
                run += data
                self._cached += len(data)
                break
            if start < end and offset < run_end:
                self._send_run(start)
        else:
            self._runs[offset] = bytearray(data)
            self._cached += len(data)
        if self._cached >= WRITE_CACHE or len(self._runs) > MAX_RUNS:
            self._send_all()

    def _send_run(self, start: int) -> None:
        run = self._runs.pop(start)
        self._cached -= len(run)
        self._resumable(f"cannot write {self._path}", lambda: self._t.session.write(self._fid, memoryview(run), start))

    def _resumable(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` on the open file (it must be safe to repeat); after a
        lost connection, reconnect, reopen the file and run it again."""
        while True:
            if self._fid is None:
                raise TransportError(f"{self._path} on {self._t.url.masked()} is already closed")
            try:
                if self._t.session is None:
                    raise NotConnectedError("not connected")
                action()
                self._heard = time.monotonic()
                return
            except SmbStatusError as exc:
                if exc.status not in _LOST_STATUS:
                    raise _status_error(f"{what} on {self._t.url.masked()}", exc.status) from None
                lost: BaseException = exc
            except _LOST as exc:
                lost = exc
            self._resume(what, lost)

    def _resume(self, what: str, lost: BaseException) -> None:
        log.warning("%s: the connection broke while writing %s (%s); resuming", self._t.url.masked(),
                    self._path, type(lost).__name__)
        self._t._drop()
        remote = self._t._remote_of(self._path)

        def attempt(left: float) -> None:
            self._t._drop()
            try:
                self._t._connect_once(left)
                self._fid = self._t.session.open(remote, _WRITE_ACCESS, _FILE_OPEN, _FILE_NON_DIRECTORY_FILE)
            except TransportError:
                raise
            except SmbStatusError as exc:
                raise _status_error(f"cannot reopen {self._path}", exc.status) from None
            except Exception as exc:  # noqa: BLE001 - any failure to reconnect is retried the same way
                raise TransportError(f"cannot reconnect: {network_reason(exc)}") from None

        try:
            resume_within(self._t.url, self._t.options.net_timeout, self._heard, attempt, what)
        except TransportError:
            self._fid = None
            self._runs.clear()
            raise

    def _send_all(self) -> None:
        for start in sorted(self._runs):
            self._send_run(start)

    def send_cached(self) -> None:
        """Send what the cache holds now (the file stays open)."""
        if self._fid is not None:
            self._send_all()

    def close(self) -> None:
        if self._fid is None:
            return
        try:
            self._send_all()
            self._resumable(f"cannot flush {self._path}", self._flush)
        finally:
            fid, self._fid = self._fid, None
            self._runs.clear()
            self._t._close_quietly(fid)

    def _flush(self) -> None:
        session = self._t.session
        session.timeout = max(SYNC_TIMEOUT, self._t.io_timeout)
        try:
            session.flush(self._fid)
        finally:
            session.timeout = self._t.io_timeout

    def abort(self) -> None:
        if self._fid is None:
            return
        fid, self._fid = self._fid, None
        self._runs.clear()
        self._t._close_quietly(fid)


class SmbReader(io.RawIOBase):
    """Reads a file back through one open handle, :data:`READ_BLOCK` per request."""

    def __init__(self, transport: "CifsTransport", fid: bytes, path: str) -> None:
        super().__init__()
        self._t = transport
        self._fid = fid
        self._path = path
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        want = size if size is not None and size >= 0 else 1 << 62
        while len(out) < want:
            n = min(READ_BLOCK, want - len(out))
            block = self._t._io(f"cannot read {self._path}",
                                lambda: self._t.session.read(self._fid, self._pos, n))
            if not block:
                break
            out += block
            self._pos += len(block)
        return bytes(out)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._t._close_quietly(self._fid)
        super().close()


class CifsTransport(Transport):
    """A directory inside an SMB2 share."""

    def __init__(self, url: TargetURL, options: TransportOptions) -> None:
        super().__init__(url, options)
        self.share, self.base = split_share(url.path)
        self.domain, self.user = parse_user(url.user)
        self.conn = None
        self.session: Optional[SmbSession] = None
        self.io_timeout = io_timeout(options)
        self._open_files: "weakref.WeakSet[SmbFile]" = weakref.WeakSet()
        self._connected_once = False

    # -- helpers -------------------------------------------------------

    def _remote(self, path: str) -> str:
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise TransportError(f"refusing path outside the target: {path!r}")
        return "/".join(([self.base] if self.base else []) + parts)

    def _where(self, remote: str) -> str:
        return f"{self.share}/{remote}" if remote else self.share

    def _remote_of(self, where: str) -> str:
        """The inverse of :meth:`_where`."""
        return where[len(self.share) + 1:] if where.startswith(self.share + "/") else ""

    def _io(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``; turn SMB and connection failures into TransportError."""
        if self.session is None:
            self._reconnect(what)
        try:
            return action()
        except SmbStatusError as exc:
            if exc.status in (STATUS_NETWORK_SESSION_EXPIRED,):
                raise TransportError(f"{what} on {self.url.masked()}: the session expired") from None
            raise _status_error(f"{what} on {self.url.masked()}", exc.status) from None
        except (NotConnectedError, NotReadyError, ConnectionError, BrokenPipeError) as exc:
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: the connection was lost"
                                 f" ({type(exc).__name__})") from None
        except ProtocolError as exc:
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: the server's answer was not "
                                 f"understood ({type(exc).__name__})") from None
        except (SMBTimeout, TimeoutError, socket.timeout):
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: the server did not answer "
                                 f"within {self.io_timeout:.0f} s") from None
        except OSError as exc:
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: {exc.strerror or exc}") from None

    def _reconnect(self, what: str) -> None:
        """One new login after a lost connection (handles of the old one are gone)."""
        if not self._connected_once:
            raise TransportError(f"{what} on {self.url.masked()}: not connected")
        try:
            self._connect_once()
        except TransportError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reconnect is reported the same way
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: cannot reconnect: "
                                 f"{network_reason(exc)}") from None

    def _drop(self) -> None:
        conn, self.conn, self.session = self.conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already failing
                pass

    def _close_quietly(self, fid: bytes) -> None:
        if self.session is None:
            return
        try:
            self.session.close_handle(fid)
        except Exception as exc:  # noqa: BLE001 - best effort on the error path
            log.debug("closing a handle on %s failed: %s", self.url.masked(), type(exc).__name__)

    def _with_handle(self, what: str, remote: str, access: int, disposition: int, options: int,
                     use: Callable[[bytes], T]) -> T:
        def run() -> T:
            fid = self.session.open(remote, access, disposition, options)
            try:
                return use(fid)
            finally:
                self.session.close_handle(fid)
        return self._io(what, run)

    # -- connection ----------------------------------------------------

    def _connect_once(self, left: Optional[float] = None) -> None:
        """One login; a silent server ends it within ``left`` seconds (at least 3, at most 10)."""
        _check_pysmb()
        conn = SMBConnection(self.user, self.url.password, "KDUMPSAVER", self.url.host,
                             domain=self.domain, use_ntlm_v2=True, is_direct_tcp=True)
        limit = 10.0 if left is None or self.options.net_timeout <= 0 else min(10.0, max(3.0, left))
        try:
            ok = conn.connect(self.url.host, self.url.effective_port, timeout=limit)
        except ProtocolError as exc:
            conn.close()
            if session_setup_status(exc) == STATUS_ACCESS_DENIED:
                raise TransportError(f"{self.url.masked()}: the server requires SMB encryption (server smb "
                                     "encrypt = required; it refused the session after the login, NT status "
                                     f"0x{STATUS_ACCESS_DENIED:08X}), {ENCRYPTION_LIMIT}") from None
            raise
        except BaseException:
            conn.close()
            raise
        if not ok:
            conn.close()
            who = f"{self.domain}\\{self.user}" if self.domain else (self.user or "guest")
            raise TransportError(f"{self.url.masked()}: the server refused the login of {who} "
                                 "(wrong user or password?)")
        if not conn.isUsingSMB2:
            conn.close()
            raise TransportError(f"{self.url.masked()}: the server does not speak SMB2")
        self.conn = conn
        session = SmbSession(conn, self.share, self.io_timeout)
        try:
            session.tree_connect(self.url.host)
        except SmbStatusError as exc:
            self._drop()
            if exc.status == STATUS_BAD_NETWORK_NAME:
                raise TransportError(f"{self.url.masked()}: the server has no share named {self.share!r}") from None
            if exc.status == STATUS_ACCESS_DENIED:
                who = self.user or "guest"
                raise TransportError(
                    f"{self.url.masked()}: the server refused share {self.share!r} ({describe(exc.status)}): "
                    f"either the share requires SMB encryption (smb encrypt = required), {ENCRYPTION_LIMIT} "
                    f"-- or it does not admit {who} (valid users, hosts allow)") from None
            raise _status_error(f"{self.url.masked()}: cannot connect to share {self.share!r}", exc.status) from None
        self.session = session

    def connect(self) -> None:
        """Log in, connect the share, create the base directory; a no-op when
        already connected (``open_target`` connects, ``with`` calls this again)."""
        if self.session is not None:
            return

        retry_until_timeout(self.url, self.options.net_timeout, self._connect_once,
                            (OSError, NotConnectedError, SMBTimeout, Exception), _connect_reason, self._drop)
        self._connected_once = True
        try:
            self._ensure_base()
        except BaseException:
            self._drop()
            raise

    def _ensure_base(self) -> None:
        parts = [p for p in self.base.split("/") if p]
        if not parts or self._is_dir(self.base):
            return
        make_missing_dirs(["/".join(parts[:i]) for i in range(1, len(parts) + 1)], self._is_dir, self._mkdir_remote)
        if not self._is_dir(self.base):
            raise TransportError(f"{self.url.masked()}: {self._where(self.base)} is not a directory")

    def _is_dir(self, remote: str) -> bool:
        try:
            self._with_handle(f"cannot open {self._where(remote)}", remote, _FILE_READ_ATTRIBUTES, _FILE_OPEN, _FILE_DIRECTORY_FILE,
                              lambda fid: None)
            return True
        except TransportError:
            return False

    def close(self) -> None:
        self._drop()

    # -- the Transport surface ----------------------------------------

    def _mkdir_remote(self, remote: str) -> None:
        def run() -> None:
            fid = self.session.open(remote, _FILE_LIST_DIRECTORY | _FILE_READ_ATTRIBUTES, _FILE_CREATE,
                                    _FILE_DIRECTORY_FILE)
            self.session.close_handle(fid)
        try:
            self._io(f"cannot create directory {self._where(remote)}", lambda: _raw(run))
        except _RawStatus as exc:
            if exc.status == STATUS_OBJECT_NAME_COLLISION:
                raise FileExistsError(errno.EEXIST, "exists", self._where(remote)) from None
            raise _status_error(f"cannot create directory {self._where(remote)} on {self.url.masked()}",
                                exc.status) from None

    def mkdir(self, path: str) -> None:
        self._mkdir_remote(self._remote(path))

    def create(self, path: str) -> SmbFile:
        remote = self._remote(path)
        fid = self._io(f"cannot create {self._where(remote)}", lambda: self.session.open(
            remote, _WRITE_ACCESS, _FILE_OVERWRITE_IF, _FILE_NON_DIRECTORY_FILE))
        f = SmbFile(self, fid, self._where(remote))
        self._open_files.add(f)
        return f

    def rename(self, src: str, dst: str) -> None:
        rsrc, rdst = self._remote(src), self._remote(dst)
        target = rdst.replace("/", "\\").encode("utf-16-le")
        # FileRenameInformation: ReplaceIfExists, 7 reserved, RootDirectory (8), length, name
        info = struct.pack("<B7xQI", 1, 0, len(target)) + target
        self._with_handle(f"cannot rename {self._where(rsrc)} to {self._where(rdst)}", rsrc, _DELETE | _FILE_READ_ATTRIBUTES,
                          _FILE_OPEN, 0,
                          lambda fid: self.session.set_info(fid, _FILE_RENAME_INFORMATION, info))

    def listdir(self, path: str = "") -> List[DirEntry]:
        remote = self._remote(path)

        def run() -> List[Any]:
            try:
                return self.conn.listPath(self.share, "/" + remote, timeout=self.io_timeout)
            except OperationFailure as exc:
                raise SmbStatusError(_failure_status(exc)) from None
            finally:
                self.session.forget_credits()
        entries = self._io(f"cannot list {self._where(remote)}", run)
        return [DirEntry(e.filename, bool(e.isDirectory)) for e in entries if e.filename not in (".", "..")]

    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        remote = self._remote(path)

        def run() -> bytes:
            fid = self.session.open(remote, _FILE_READ_DATA | _FILE_READ_ATTRIBUTES, _FILE_OPEN,
                                    _FILE_NON_DIRECTORY_FILE)
            try:
                return self.session.read(fid, 0, limit)
            finally:
                self.session.close_handle(fid)
        try:
            return self._io(f"cannot read {self._where(remote)}", lambda: _raw(run))
        except _RawStatus as exc:
            if exc.status in _NOT_FOUND:
                return None
            raise _status_error(f"cannot read {self._where(remote)} on {self.url.masked()}", exc.status) from None

    def remove(self, path: str) -> None:
        self._delete(self._remote(path), _FILE_NON_DIRECTORY_FILE)

    def rmdir(self, path: str) -> None:
        if not [p for p in path.split("/") if p]:
            raise TransportError(f"refusing to delete the base directory of {self.url.masked()}")
        self._delete(self._remote(path), _FILE_DIRECTORY_FILE)

    def _delete(self, remote: str, kind: int) -> None:
        # FileDispositionInformation: DeletePending = 1; deleted at close
        self._with_handle(f"cannot delete {self._where(remote)}", remote, _DELETE | _FILE_READ_ATTRIBUTES, _FILE_OPEN, kind,
                          lambda fid: self.session.set_info(fid, _FILE_DISPOSITION_INFORMATION, b"\x01"))

    def free_space(self) -> Optional[int]:
        """Bytes available to this user, from FileFsFullSizeInformation.

        Data still cached by open files is sent first, so the answer counts
        everything written so far."""
        for f in list(self._open_files):
            f.send_cached()
        def query(fid: bytes) -> bytes:
            return self.session.query_fs(fid, _FILE_FS_FULL_SIZE_INFORMATION)
        try:
            data = self._with_handle(f"cannot query the free space of {self._where(self.base)}", self.base, _FILE_READ_ATTRIBUTES,
                                     _FILE_OPEN, _FILE_DIRECTORY_FILE, query)
        except NoSpaceError:
            raise
        except TransportError as exc:
            log.warning("free space on %s unknown: %s", self.url.masked(), exc)
            return None
        if len(data) < 32:
            return None
        _total, caller_avail, _actual, sectors_per_unit, bytes_per_sector = struct.unpack("<QQQII", data[:32])
        return caller_avail * sectors_per_unit * bytes_per_sector

    def open_read(self, path: str) -> BinaryIO:
        remote = self._remote(path)
        fid = self._io(f"cannot read {self._where(remote)}", lambda: self.session.open(
            remote, _FILE_READ_DATA | _FILE_READ_ATTRIBUTES, _FILE_OPEN, _FILE_NON_DIRECTORY_FILE))
        return io.BufferedReader(SmbReader(self, fid, self._where(remote)), buffer_size=READ_BLOCK)


class _RawStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _raw(run: Callable[[], T]) -> T:
    """Run ``run``, passing an NT status up as :class:`_RawStatus` for the caller to interpret."""
    try:
        return run()
    except SmbStatusError as exc:
        raise _RawStatus(exc.status) from None


_PYSMB_INTERNALS = ("_sendSMBMessage_SMB2", "_getNextMID_SMB2", "_pollForNetBIOSPacket")


def _check_pysmb() -> None:
    """Refuse clearly when the installed pysmb lacks the internals this module drives."""
    missing = [name for name in _PYSMB_INTERNALS if not hasattr(SMBConnection, name)]
    if missing:
        try:
            from importlib.metadata import version as dist_version
            version = dist_version("pysmb")
        except Exception:  # noqa: BLE001 - only for the message
            version = "unknown version"
        raise TransportError(f"the installed pysmb ({version}) lacks {', '.join(missing)}: "
                             "kdump-saver's cifs target needs pysmb 1.2")


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, SMBTimeout):
        return "no answer (timed out)"
    return network_reason(exc)


def session_setup_status(exc: ProtocolError) -> Optional[int]:
    """The NT status of the SESSION_SETUP reply pysmb gave up on, if that is what ``exc`` is.

    pysmb raises a ProtocolError carrying the reply (``smb_message``) for every
    SESSION_SETUP status it has no case for, STATUS_ACCESS_DENIED among them."""
    message = getattr(exc, "smb_message", None)
    if getattr(message, "command", None) != SMB2_COM_SESSION_SETUP:
        return None
    status = getattr(message, "status", None)
    return status if isinstance(status, int) else None


def _failure_status(exc) -> int:
    for message in reversed(getattr(exc, "smb_messages", [])):
        if getattr(message, "status", 0):
            return message.status
    return STATUS_ACCESS_DENIED


# pysmb encodes names as UTF-16 at run time, through codecs the import tracer cannot see
INITRD = InitrdProfile(packages=("smb", "nmb"), imports=("smb.SMBConnection", "smb.base", "nmb.NetBIOS",
                                                        "encodings.utf_16_le", "encodings.utf_16"))
initrd_material = no_initrd_material


def open_target(url: TargetURL, options: TransportOptions) -> CifsTransport:
    transport = CifsTransport(url, options)
    transport.connect()
    return transport
