"""The SSH file transfer protocol, version 3 (draft-ietf-secsh-filexfer-02),
spoken over a byte channel (:class:`transports.openssh.Channel`).

The client half only, and only what the sftp transport needs: files opened
for writing at offsets with pipelined requests, small reads, prefetching
reads, directories, rename, remove and OpenSSH's extensions (``limits``,
``statvfs``, ``fsync``, ``posix-rename``).  A status other than OK is an
``OSError``: ``ENOENT`` and ``EACCES`` for their codes, else without an
errno and with the server's text.  A closed channel is ``EOFError``; a
silent one ``socket.timeout`` (from the channel).  A malformed reply from
the server is :class:`ProtocolError` (an ``OSError``): nothing the server
sends can raise anything else.
"""
from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Protocol, Tuple

INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE = 0, 1, 2, 3, 4

FLAG_READ, FLAG_WRITE, FLAG_APPEND, FLAG_CREATE, FLAG_TRUNC, FLAG_EXCL = 1, 2, 4, 8, 16, 32

_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME, _ATTR_EXTENDED = 1, 2, 4, 8, 0x80000000
#: the largest reply we accept (OpenSSH's sftp-server sends at most 256 KiB + headers)
MAX_PACKET = 1 << 20


class Channel(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...


class ProtocolError(OSError):
    """The server's reply does not follow the protocol."""


class StatusError(OSError):
    """A request failed; ``code`` is the SFTP status code."""

    def __init__(self, code: int, text: str) -> None:
        number = {NO_SUCH_FILE: errno.ENOENT, PERMISSION_DENIED: errno.EACCES}.get(code)
        if number is not None:
            super().__init__(number, text or ("no such file" if code == NO_SUCH_FILE else "permission denied"))
        else:
            super().__init__(text or f"sftp status {code}")
        self.code = code


@dataclass
class Attributes:
    """A file's attributes; None where the server did not say."""

    size: Optional[int] = None
    mode: Optional[int] = None


class Reply:
    """A reply's fields, read in order; running past its end is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._at + n > len(self._data):
            raise ProtocolError("a reply from the sftp server is cut short")
        out = self._data[self._at:self._at + n]
        self._at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def string(self) -> bytes:
        return self._take(self.u32())

    def text(self) -> str:
        return self.string().decode("utf-8", "replace")

    def attributes(self) -> Attributes:
        flags = self.u32()
        attrs = Attributes()
        if flags & _ATTR_SIZE:
            attrs.size = self.u64()
        if flags & _ATTR_UIDGID:
            self._take(8)
        if flags & _ATTR_PERMISSIONS:
            attrs.mode = self.u32()
        if flags & _ATTR_ACMODTIME:
            self._take(8)
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return attrs

    @property
    def left(self) -> int:
        return len(self._data) - self._at


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def string(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return u32(len(raw)) + raw


def mode_attrs(mode: int) -> bytes:
    return u32(_ATTR_PERMISSIONS) + u32(mode)


#: called with (reply type, reply) for an asynchronous request's answer
Callback = Callable[[int, Reply], None]


class Session:
    """An SFTP session on ``channel`` after :meth:`init`."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.extensions: Dict[str, bytes] = {}
        self._next_id = 1
        self._waiting: Dict[int, Optional[Callback]] = {}
        self._answers: Dict[int, Tuple[int, Reply]] = {}

    def init(self) -> int:
        """Exchange versions; the server's version (its extensions in :attr:`extensions`)."""
        self._send(INIT, u32(3))
        kind, reply = self._read_packet()
        if kind != VERSION:
            raise ProtocolError(f"the server answered the sftp greeting with message type {kind}")
        version = reply.u32()
        while reply.left:
            name = reply.text()
            self.extensions[name] = reply.string()
        return version

    # -- packets ------------------------------------------------------------

    @property
    def request_number(self) -> int:
        """The id the next request gets."""
        return self._next_id

    def _send(self, kind: int, payload: bytes, data: bytes = b"") -> None:
        # ``data`` (a WRITE's bytes) goes out as it is: no copy of it into the packet
        self.channel.sendall(u32(len(payload) + len(data) + 1) + bytes((kind,)) + payload)
        if data:
            self.channel.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            block = self.channel.recv(n - len(out))
            if not block:
                raise EOFError("the sftp session ended")
            out += block
        return bytes(out)

    def _read_packet(self) -> Tuple[int, Reply]:
        (length,) = struct.unpack(">I", self._recv_exact(4))
        if not 1 <= length <= MAX_PACKET:
            raise ProtocolError(f"the sftp server sent a packet of {length} bytes")
        body = self._recv_exact(length)
        return body[0], Reply(body[1:])

    def send_request(self, kind: int, payload: bytes, callback: Optional[Callback] = None,
                     data: bytes = b"") -> int:
        """Send a request (``payload``, then ``data`` unchanged: a WRITE's bytes after
        their length); its id.  Its answer goes to ``callback`` when one is
        given (:meth:`read_response`), else it is kept for :meth:`wait_for`."""
        rid = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self._waiting[rid] = callback
        self._send(kind, u32(rid) + payload, data)
        return rid

    def read_response(self) -> int:
        """Read one answer and hand it to its callback (or keep it); its id."""
        kind, reply = self._read_packet()
        rid = reply.u32()
        if rid not in self._waiting:
            raise ProtocolError(f"the sftp server answered request {rid}, which was never sent")
        callback = self._waiting.pop(rid)
        if callback is None:
            self._answers[rid] = (kind, reply)
        else:
            callback(kind, reply)
        return rid

    def wait_for(self, rid: int) -> Tuple[int, Reply]:
        """The answer to request ``rid``, reading (and dispatching) others first."""
        while rid not in self._answers:
            self.read_response()
        return self._answers.pop(rid)

    def request(self, kind: int, payload: bytes) -> Tuple[int, Reply]:
        """A request and its answer; a failure status raises :class:`StatusError`."""
        answer, reply = self.wait_for(self.send_request(kind, payload))
        if answer == STATUS:
            check_status(reply)
        return answer, reply

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    def forget(self) -> None:
        """Drop every outstanding request (after the channel broke)."""
        self._waiting.clear()
        self._answers.clear()

    # -- operations ---------------------------------------------------------

    def _expect(self, kind: int, answer: int, reply: Reply, what: str) -> Reply:
        if answer != kind:
            raise ProtocolError(f"unexpected answer (type {answer}) to {what}")
        return reply

    def open(self, path: str, flags: int, mode: int = 0o600) -> bytes:
        answer, reply = self.request(OPEN, string(path) + u32(flags) + mode_attrs(mode))
        return self._expect(HANDLE, answer, reply, "open").string()

    def close(self, handle: bytes) -> None:
        self.request(CLOSE, string(handle))

    def fsetstat_mode(self, handle: bytes, mode: int) -> None:
        self.request(FSETSTAT, string(handle) + mode_attrs(mode))

    def stat(self, path: str) -> Attributes:
        answer, reply = self.request(STAT, string(path))
        return self._expect(ATTRS, answer, reply, "stat").attributes()

    def mkdir(self, path: str, mode: int) -> None:
        self.request(MKDIR, string(path) + mode_attrs(mode))

    def rmdir(self, path: str) -> None:
        self.request(RMDIR, string(path))

    def remove(self, path: str) -> None:
        self.request(REMOVE, string(path))

    def rename(self, old: str, new: str) -> None:
        self.request(RENAME, string(old) + string(new))

    def extended(self, name: str, payload: bytes = b"") -> Reply:
        """An extended request; its reply (an OK status gives an empty one)."""
        _answer, reply = self.request(EXTENDED, string(name) + payload)
        return reply

    def listdir(self, path: str) -> List[Tuple[str, Attributes]]:
        answer, reply = self.request(OPENDIR, string(path))
        handle = self._expect(HANDLE, answer, reply, "opendir").string()
        entries: List[Tuple[str, Attributes]] = []
        try:
            while True:
                answer, reply = self.wait_for(self.send_request(READDIR, string(handle)))
                if answer == STATUS:
                    code = reply.u32()
                    if code == EOF:
                        break
                    raise StatusError(code, reply.text())
                self._expect(NAME, answer, reply, "readdir")
                for _ in range(reply.u32()):
                    name = reply.text()
                    reply.string()  # the long name
                    entries.append((name, reply.attributes()))
        finally:
            self.close(handle)
        return entries

    def read(self, handle: bytes, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; ``b""`` at the end of the file."""
        answer, reply = self.wait_for(self.send_request(READ, string(handle) + u64(offset) + u32(size)))
        return data_of(answer, reply)


def check_status(reply: Reply) -> None:
    """Raise :class:`StatusError` unless the status reply says OK."""
    code = reply.u32()
    if code != OK:
        text = reply.text() if reply.left >= 4 else ""
        raise StatusError(code, text)


def data_of(answer: int, reply: Reply) -> bytes:
    """The bytes of a READ's answer; ``b""`` for end of file."""
    if answer == STATUS:
        code = reply.u32()
        if code == EOF:
            return b""
        raise StatusError(code, reply.text() if reply.left >= 4 else "")
    if answer != DATA:
        raise ProtocolError(f"unexpected answer (type {answer}) to read")
    return reply.string()


class Prefetch:
    """A file read from start to end with up to ``depth`` READ requests in flight."""

    def __init__(self, session: Session, handle: bytes, chunk: int, depth: int) -> None:
        self._session = session
        self._handle = handle
        self._chunk = chunk
        self._depth = depth
        self._next_offset = 0
        self._inflight: Deque[Tuple[int, int]] = deque()
        """(request id, offset) in the order sent."""
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> None:
        while not self._eof and len(self._inflight) < self._depth:
            payload = string(self._handle) + u64(self._next_offset) + u32(self._chunk)
            self._inflight.append((self._session.send_request(READ, payload), self._next_offset))
            self._next_offset += self._chunk

    def discard(self) -> None:
        """Wait for (and drop) the answers still in flight."""
        while self._inflight:
            rid, _ = self._inflight.popleft()
            try:
                data_of(*self._session.wait_for(rid))
            except StatusError:
                pass

    def read(self, size: int = -1) -> bytes:
        want = None if size is None or size < 0 else size
        while (want is None or len(self._buffer) < want) and not self._eof:
            self._fill()
            rid, offset = self._inflight.popleft()
            data = data_of(*self._session.wait_for(rid))
            self._buffer += data
            if len(data) < self._chunk:
                # end of file, or a server that sends less than asked: the
                # requests after this one are for the wrong offsets
                self.discard()
                self._next_offset = offset + len(data)
                self._eof = not data
        take = len(self._buffer) if want is None else min(want, len(self._buffer))
        out = bytes(self._buffer[:take])
        del self._buffer[:take]
        return out
