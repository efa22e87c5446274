"""OpenSSH's connection multiplexing protocol, spoken from Python.

Runs in the capture kernel and on the host.  An ``ssh -M`` master listens on
its control socket for the sessions of ``ssh -o ControlMaster=no`` clients
(OpenSSH's ``PROTOCOL.mux``, version 4).  Asking the master directly gives
the same session without starting an ``ssh`` process for it: in a one-CPU
capture kernel under emulation each of those costs about a quarter of a
second, and an ssh:// save runs a dozen commands.

The contract:

* :func:`master_pid` asks the master whether it is alive and for its pid.
* :func:`open_session` asks it for a session running a command, hands it
  the session's stdin, stdout and stderr (file descriptors passed over the
  socket), and returns a :class:`Session` once the server has opened the
  session; or raises :class:`MuxError` (the master refused: its words) or
  ``OSError`` (no master, or it does not speak this protocol).
* :meth:`Session.poll` is the command's exit status once the master has
  reported it and closed the session (its output all written); :data:`LOST`
  when the master closed the socket without one (the connection dropped);
  ``None`` until then.  Closing the
  session's socket makes the master close the session.

tests/test_contracts.py checks it against the installed OpenSSH.
"""
from __future__ import annotations

import select
import socket
import struct
import time
from typing import Optional

VERSION = 4
HELLO = 0x00000001
C_NEW_SESSION = 0x10000002
C_ALIVE_CHECK = 0x10000004
S_PERMISSION_DENIED = 0x80000002
S_FAILURE = 0x80000003
S_EXIT_MESSAGE = 0x80000004
S_ALIVE = 0x80000005
S_SESSION_OPENED = 0x80000006
#: no escape character (the session has no terminal anyway)
_NO_ESCAPE = 0xFFFFFFFF
_MAX_MESSAGE = 256 * 1024
#: the exit status ``ssh`` itself reports for a session that ended without one
LOST = 255


class MuxError(Exception):
    """The master refused the request; the text is its reason."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _send(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">I", len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        block = sock.recv(n - len(out))
        if not block:
            raise ConnectionResetError("the master closed the control socket")
        out += block
    return bytes(out)


def _receive(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _recv_exact(sock, 4))
    if length < 4 or length > _MAX_MESSAGE:
        raise ConnectionResetError(f"the master sent a message of {length} bytes")
    return _recv_exact(sock, length)


def _connect(control: str, timeout: float) -> socket.socket:
    """A connection to the master that has exchanged hellos."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(control)
        _send(sock, struct.pack(">II", HELLO, VERSION))
        hello = _receive(sock)
        kind, version = struct.unpack(">II", hello[:8])
        if kind != HELLO or version != VERSION:
            raise ConnectionRefusedError(f"the master speaks mux protocol {version}, not {VERSION}")
        return sock
    except BaseException:
        sock.close()
        raise


def _reason(message: bytes) -> str:
    try:
        (length,) = struct.unpack(">I", message[8:12])
        return message[12:12 + length].decode("utf-8", "replace")
    except struct.error:
        return "no reason given"


def master_pid(control: str, timeout: float = 10.0) -> Optional[int]:
    """The pid of the master listening on ``control``, or None."""
    try:
        with _connect(control, timeout) as sock:
            _send(sock, struct.pack(">II", C_ALIVE_CHECK, 1))
            kind, _request, pid = struct.unpack(">III", _receive(sock)[:12])
            return pid if kind == S_ALIVE else None
    except (OSError, struct.error):
        return None


class Session:
    """A session the master opened for us; its data flows through the
    descriptors handed over in :func:`open_session`."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self._sock = sock
        self._number = number
        self._exit: Optional[int] = None
        self._status: Optional[int] = None

    def poll(self, timeout: float = 0.0) -> Optional[int]:
        """The exit status, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while self._status is None:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._sock], [], [], max(0.0, left))
            if not ready:
                return None
            try:
                message = _receive(self._sock)
            except (OSError, struct.error):
                # the master closes the socket once the session is closed and its
                # stderr written out: only then is the status final (as for ``ssh``)
                self._status = LOST if self._exit is None else self._exit
                break
            if len(message) >= 12:
                kind, number, status = struct.unpack(">III", message[:12])
                if kind == S_EXIT_MESSAGE and number == self._number:
                    self._exit = status
        return self._status

    @property
    def reported(self) -> bool:
        """True once the master passed on the command's exit status (a
        status of :data:`LOST` without it means the session ended otherwise)."""
        return self._exit is not None

    def close(self) -> None:
        """Forget the session; if it still runs, the master closes it."""
        self._sock.close()


def open_session(control: str, command: str, stdin: int, stdout: int, stderr: int,
                 timeout: float) -> Session:
    """A session running ``command`` with the given descriptors (they are
    duplicated into the master; the caller closes its own copies)."""
    sock = _connect(control, timeout)
    try:
        body = (struct.pack(">II", C_NEW_SESSION, 1) + _string(b"")
                + struct.pack(">IIIII", 0, 0, 0, 0, _NO_ESCAPE)
                + _string(b"") + _string(command.encode()))
        _send(sock, body)
        for fd in (stdin, stdout, stderr):
            socket.send_fds(sock, [b"\0"], [fd])
        answer = _receive(sock)
        kind = struct.unpack(">I", answer[:4])[0]
        if kind == S_SESSION_OPENED:
            return Session(sock, struct.unpack(">I", answer[8:12])[0])
        if kind in (S_PERMISSION_DENIED, S_FAILURE):
            raise MuxError(_reason(answer))
        raise MuxError(f"unexpected answer 0x{kind:08x} to a new session")
    except BaseException:
        sock.close()
        raise
