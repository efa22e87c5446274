"""The ftp and ftps targets, with :mod:`ftplib`.

URL form: ``ftp://[user[:password]@]host[:port]/path`` (anonymous without a
user) and ``ftps://`` for explicit TLS (AUTH TLS, then PROT P so the data
connections are encrypted as well).  For ftps the server certificate must
verify against ``options.ca_file`` (exactly that file) or, when it is unset,
the system store, and must name the host of the URL.  A capture initrd has
no system store: ``build-initrd`` carries the host's bundle and sets the
initrd's KDUMP_CA_FILE to it (:func:`initrd_material`).

The path is taken relative to the directory the server puts us in after the
login, as curl and SUSE's kdump do (for a chrooted or anonymous user that is
the same as absolute).  Missing directories are created.

Files are written in passive mode through one STOR data connection kept open
for the whole file, so :class:`FtpFile` is append-only
(``seekable = False``).  A file's name is only final after
:meth:`FtpTransport.rename` (RNFR/RNTO), which the saver calls at the end.

After a lost connection while a file is stored, the file connects again
within KDUMP_NET_TIMEOUT of the last successful send, asks the server the
size of the partial file (``SIZE``) and continues there with ``REST`` +
``STOR`` (the bytes go to their own offsets), or with ``APPE`` where the
server refuses ``REST``; what the server may not have written yet is sent
again from the last :data:`~transports.base.RESUME_WINDOW` bytes kept in
memory.  A server silent for :func:`~transports.base.io_timeout` counts as lost.

Modes: after MKD the transport asks for 0700 with ``SITE CHMOD``.  A file
is first stored empty and made 0600, then written, so that not even an
upload that fails half-way stays readable for others under the server's
umask (0644 on pyftpdlib); servers that do not know ``SITE CHMOD`` keep
their own umask and files are written at once.

Free space: FTP has no standard way to ask.  ``AVBL`` (a draft extension a
few servers offer) is tried once; otherwise :meth:`free_space` is ``None``.

While a transfer runs (from its STOR, APPE or RETR to the server's final
reply) the control connection belongs to it: a server reads no command
before the transfer ends, and the reply to one would be taken for the end
of the transfer.  So nothing is sent then: :meth:`free_space` answers from
the last ``AVBL`` less what was written since, and any other call is refused
with a TransportError.  Resuming a broken STOR sends its commands (``SIZE``,
``REST``, ``STOR``/``APPE``) on a new connection before the new transfer
starts.
"""
from __future__ import annotations

import errno
import ftplib
import io
import logging
import posixpath
import socket
import ssl
import time
from typing import BinaryIO, Callable, List, Optional, Tuple, TypeVar

from capture.config.targeturl import TargetURL
from transports.base import (DirEntry, DumpFile, InitrdMaterial, InitrdProfile, NoSpaceError, SentWindow,
                             Transport, TransportError, TransportOptions, io_timeout, make_missing_dirs,
                             network_reason, resume_within, retry_until_timeout)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: bytes collected before they are sent on the data connection
SEND_BLOCK = 1 << 20
#: seconds the server may take to answer the end of a STOR (its fsync)
SYNC_TIMEOUT = 120


def _reply_code(exc: BaseException) -> str:
    text = str(exc)
    return text[:3] if text[:3].isdigit() else ""


def _net_reason(exc: BaseException) -> str:
    if isinstance(exc, ftplib.Error):
        return f"the server answered {str(exc).strip()!r}"
    return network_reason(exc)


class _FtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS
    session, as servers like vsftpd demand by default (require_ssl_reuse)."""

    def ntransfercmd(self, cmd: str, rest: Optional[int] = None) -> Tuple[socket.socket, Optional[int]]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


class FtpFile(DumpFile):
    """One STOR in progress; ``close`` waits for the server's final reply.
    The last bytes sent are kept to resume after a lost connection."""

    seekable = False

    def __init__(self, transport: "FtpTransport", sock: socket.socket, remote: str) -> None:
        self._t = transport
        self._sock: Optional[socket.socket] = sock
        self._remote = remote
        self._buf = bytearray()
        self._window = SentWindow()
        self._heard = time.monotonic()

    def write(self, data: bytes) -> None:
        if self._sock is None:
            raise TransportError(f"{self._remote} on {self._t.url.masked()} is already closed")
        self._buf += data
        self._t._written += len(data)
        if len(self._buf) >= SEND_BLOCK:
            self._send()

    def _send(self) -> None:
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        self._window.add(data)
        try:
            self._sock.sendall(data)
            self._heard = time.monotonic()
        except (OSError, ssl.SSLError) as exc:
            self._lost(exc)

    def _lost(self, exc: Optional[BaseException]) -> None:
        """The data connection broke: a refusal the server explains is final;
        a lost connection is resumed."""
        sock, self._sock = self._sock, None
        _close_socket(sock)
        reply = self._t._final_reply(timeout=5)
        self._t._drop()
        if reply and reply[:1] in ("4", "5") and reply[:3] != "426":
            self._t._transfer_over()
            raise self._t._store_error(self._remote, reply, exc) from None
        log.warning("%s: the connection broke while storing %s (%s); resuming", self._t.url.masked(),
                    self._remote, reply or (network_reason(exc) if exc else "no final answer"))
        self._resume()

    def _resume(self) -> None:
        def attempt(left: float) -> None:
            self._t._drop()
            try:
                self._t.conn = self._t._login(left)
                size = self._t.conn.size(self._remote)
                if size is None:
                    raise ValueError("the server does not tell the size of the partial file (SIZE)")
                pending = self._window.since(size)
                sock = self._restart(size)
                for view in pending:
                    sock.sendall(view)
            except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
                self._t._drop()
                raise TransportError(_net_reason(exc)) from None
            self._sock = sock

        try:
            resume_within(self._t.url, self._t.options.net_timeout, self._heard, attempt,
                          f"storing {self._remote}")
        except TransportError:
            self._t._drop()
            self._t._transfer_over()
            raise
        self._heard = time.monotonic()

    def _restart(self, size: int) -> socket.socket:
        """A data connection continuing the file at ``size``: REST + STOR, else APPE."""
        conn = self._t.conn
        try:
            return conn.transfercmd(f"STOR {self._remote}", rest=size)
        except ftplib.error_perm as exc:
            if not _reply_code(exc).startswith("50"):
                raise
        log.info("%s: the server refuses REST; appending with APPE", self._t.url.masked())
        return conn.transfercmd(f"APPE {self._remote}")

    def close(self) -> None:
        if self._sock is None:
            return
        self._send()
        sock, self._sock = self._sock, None
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.unwrap()
        except (OSError, ssl.SSLError, ValueError):
            pass
        _close_socket(sock)
        reply = self._t._final_reply(timeout=max(SYNC_TIMEOUT, self._t.io_timeout))
        if reply is None or reply[:3] == "426":
            self._t._drop()
            self._sock = sock  # for _lost: already closed
            self._lost(None)
            return self.close()
        self._t._transfer_over()
        if not reply.startswith("2"):
            self._t._drop()
            raise self._t._store_error(self._remote, reply, None)
        size = self._t._size(self._remote)
        if size is not None and size != self._window.end:
            raise TransportError(f"cannot write {self._remote} on {self._t.url.masked()}: the server holds "
                                 f"{size} bytes of the {self._window.end} sent")
        self._t._site_chmod("600", self._remote)

    def abort(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        _close_socket(sock)
        # the server's reply to the broken STOR is of no interest; a fresh
        # control connection is simpler than resynchronising this one
        self._t._drop()
        self._t._transfer_over()


class FtpReader(io.RawIOBase):
    """The data connection of a RETR, as a raw binary stream."""

    def __init__(self, transport: "FtpTransport", sock: socket.socket, remote: str) -> None:
        super().__init__()
        self._t = transport
        self._sock: Optional[socket.socket] = sock
        self._remote = remote
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._sock is None or self._eof:
            return 0
        try:
            n = self._sock.recv_into(buffer)
        except (OSError, ssl.SSLError) as exc:
            self._abandon()
            raise TransportError(f"cannot read {self._remote} on {self._t.url.masked()}: "
                                 f"{_net_reason(exc)}") from None
        if n == 0:
            self._eof = True
        return n

    def _abandon(self) -> None:
        sock, self._sock = self._sock, None
        _close_socket(sock)
        self._t._drop()
        self._t._transfer_over()

    def close(self) -> None:
        if self.closed:
            return
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                complete = self._eof
                try:
                    if isinstance(sock, ssl.SSLSocket) and complete:
                        sock.unwrap()
                except (OSError, ssl.SSLError, ValueError):
                    pass
                _close_socket(sock)
                reply = self._t._final_reply(timeout=self._t.io_timeout)
                self._t._transfer_over()
                if not complete or reply is None or not reply.startswith("2"):
                    # stopped early or refused: the control connection is out of step
                    self._t._drop()
                    if complete:
                        raise TransportError(f"cannot read {self._remote} on {self._t.url.masked()}: "
                                             f"the server answered {reply!r}")
        finally:
            super().close()


def _close_socket(sock: Optional[socket.socket]) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


class FtpTransport(Transport):
    """A directory on an FTP server (``ftp``) or on one demanding TLS (``ftps``)."""

    def __init__(self, url: TargetURL, options: TransportOptions) -> None:
        super().__init__(url, options)
        self.tls = url.scheme == "ftps"
        self.conn: Optional[ftplib.FTP] = None
        self.base = ""
        self._avbl: Optional[bool] = None
        self.io_timeout = io_timeout(options)
        self._mlsd: Optional[bool] = None
        self._chmod: Optional[bool] = None
        self._transfer = ""
        """What the open data transfer is (``storing PATH``); empty when none is."""
        self._written = 0
        """Bytes handed to STORs so far: with :attr:`_avbl_at`, the free space during one."""
        self._avbl_at: Optional[Tuple[int, int]] = None
        """The last AVBL answer and :attr:`_written` when it came."""

    # -- connection ----------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.options.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot read the CA file {self.options.ca_file} (KDUMP_CA_FILE): "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _login(self, left: Optional[float] = None) -> ftplib.FTP:
        """One connection attempt (a silent server ends it within ``left``
        seconds, at least 3, at most 10); network failures pass up, refusals
        become TransportError."""
        timeout = self.io_timeout
        limit = 10.0 if left is None or self.options.net_timeout <= 0 else min(10.0, max(3.0, left))
        conn: ftplib.FTP
        if self.tls:
            conn = _FtpTls(context=self._tls_context(), timeout=timeout)
        else:
            conn = ftplib.FTP(timeout=timeout)
        conn.connect(self.url.host, self.url.effective_port, timeout=limit)
        conn.sock.settimeout(limit)  # the greeting and the login, then the I/O timeout
        try:
            if self.tls:
                try:
                    conn.auth()
                except ssl.SSLCertVerificationError as exc:
                    raise TransportError(
                        f"{self.url.masked()}: the server certificate does not verify: "
                        f"{exc.verify_message or exc.reason}"
                        f" (CA: {self.options.ca_file or 'the system store'})") from None
                except ftplib.error_perm as exc:
                    raise TransportError(f"{self.url.masked()}: the server refuses TLS (AUTH TLS: "
                                         f"{str(exc).strip()})") from None
            try:
                if self.url.user:
                    conn.login(self.url.user, self.url.password)
                else:
                    conn.login()
            except ftplib.error_perm as exc:
                who = self.url.user or "anonymous"
                raise TransportError(f"{self.url.masked()}: the server refused the login of {who}: "
                                     f"{str(exc).strip()}") from None
            if self.tls:
                conn.prot_p()
            conn.set_pasv(True)
            conn.voidcmd("TYPE I")
            conn.sock.settimeout(timeout)
            return conn
        except BaseException:
            _quit(conn)
            raise

    def connect(self) -> None:
        """Log in and create the base directory; a no-op when already connected
        (``open_target`` connects, and ``with`` on the result calls this again)."""
        if self.conn is not None:
            return
        self.conn = retry_until_timeout(self.url, self.options.net_timeout, self._login,
                                        (OSError, EOFError, ftplib.Error, ssl.SSLError), _net_reason)
        try:
            home = self._cmd("cannot ask the login directory", lambda c: c.pwd())
            self.base = posixpath.normpath(posixpath.join(home or "/", self.url.path.lstrip("/")))
            self._ensure_base()
        except BaseException:
            self.close()
            raise

    def _ensure_base(self) -> None:
        if self._is_dir(self.base):
            return
        parts = [p for p in self.base.split("/") if p]
        make_missing_dirs(["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)], self._is_dir, self._mkd)
        if not self._is_dir(self.base):
            raise TransportError(f"{self.url.masked()}: {self.base} is not a directory on the server")

    def _ctl(self) -> ftplib.FTP:
        """The control connection; a lost one is replaced (one attempt).
        Refused while a transfer runs: it owns the control connection then."""
        if self._transfer:
            raise TransportError(f"{self.url.masked()}: no other command while {self._transfer} "
                                 "(the server answers only after the transfer)")
        if self.conn is None:
            try:
                self.conn = self._login()
            except TransportError:
                raise
            except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
                raise TransportError(f"cannot reconnect to {self.url.masked()}: {_net_reason(exc)}") from None
        return self.conn

    def _transfer_starts(self, what: str) -> None:
        self._transfer = what

    def _transfer_over(self) -> None:
        self._transfer = ""

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            _quit(conn)

    def _cmd(self, what: str, action: Callable[[ftplib.FTP], T]) -> T:
        """Run ``action`` on the control connection; map failures to TransportError.
        A control connection found lost (the server restarted since the last
        command) is replaced once and the command sent again."""
        conn = self._ctl()
        try:
            try:
                return action(conn)
            except (OSError, EOFError) as exc:
                log.info("%s: the control connection was lost (%s); connecting again", self.url.masked(),
                         _net_reason(exc))
                self._drop()
                conn = self._ctl()
                return action(conn)
        except ftplib.error_perm as exc:
            code = _reply_code(exc)
            cls = NoSpaceError if code in ("552",) else TransportError
            raise cls(f"{what} on {self.url.masked()}: the server answered {str(exc).strip()!r}") from None
        except ftplib.error_temp as exc:
            cls = NoSpaceError if _reply_code(exc) == "452" else TransportError
            raise cls(f"{what} on {self.url.masked()}: the server answered {str(exc).strip()!r}") from None
        except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
            self._drop()
            raise TransportError(f"{what} on {self.url.masked()}: {_net_reason(exc)}") from None

    def _abs(self, path: str) -> str:
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise TransportError(f"refusing path outside the target: {path!r}")
        return posixpath.join(self.base, *parts) if parts else self.base

    def _is_dir(self, abs_path: str) -> bool:
        conn = self._ctl()
        try:
            conn.cwd(abs_path)
            return True
        except ftplib.error_perm:
            return False
        except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
            self._drop()
            raise TransportError(f"cannot look at {abs_path} on {self.url.masked()}: {_net_reason(exc)}") from None

    def _site_chmod(self, mode: str, abs_path: str) -> bool:
        """``SITE CHMOD``; whether the server did it."""
        conn = self.conn
        if conn is None or self._chmod is False:
            return False
        try:
            conn.sendcmd(f"SITE CHMOD {mode} {abs_path}")
        except ftplib.Error as exc:
            self._chmod = False
            log.debug("%s: SITE CHMOD not available: %s", self.url.masked(), str(exc).strip())
            return False
        except (OSError, EOFError):
            self._drop()
            return False
        self._chmod = True
        return True

    def _mkd(self, abs_path: str) -> None:
        conn = self._ctl()
        try:
            conn.mkd(abs_path)
        except ftplib.error_perm as exc:
            # a directory, or a plain file, of that name: FileExistsError like the other transports
            if self._is_dir(abs_path) or self._size(abs_path) is not None:
                raise FileExistsError(errno.EEXIST, "exists", abs_path) from None
            raise TransportError(f"cannot create directory {abs_path} on {self.url.masked()}: "
                                 f"the server answered {str(exc).strip()!r}") from None
        except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
            self._drop()
            raise TransportError(f"cannot create directory {abs_path} on {self.url.masked()}: "
                                 f"{_net_reason(exc)}") from None
        self._site_chmod("700", abs_path)

    # -- STOR support --------------------------------------------------

    def _final_reply(self, timeout: float) -> Optional[str]:
        """The server's reply that ends a STOR, or None when it does not come."""
        conn = self.conn
        if conn is None or conn.sock is None:
            return None
        try:
            conn.sock.settimeout(timeout)
            return conn.getresp()
        except ftplib.Error as exc:
            return str(exc).strip()
        except (OSError, EOFError, ssl.SSLError):
            return None
        finally:
            if conn.sock is not None:
                try:
                    conn.sock.settimeout(self.io_timeout)
                except OSError:
                    pass

    def _store_error(self, remote: str, reply: Optional[str], exc: Optional[BaseException]) -> TransportError:
        where = f"{remote} on {self.url.masked()}"
        if reply:
            code = reply[:3]
            # 452/552: no storage; vsftpd says 451 "Failure writing to local file" for ENOSPC
            if code in ("452", "552"):
                return NoSpaceError(f"cannot write {where}: the server is out of space ({reply!r})")
            if code == "451":
                return NoSpaceError(f"cannot write {where}: the server failed to store the data "
                                    f"({reply!r}; most likely its disk is full)")
            return TransportError(f"cannot write {where}: the server answered {reply!r}")
        cause = _net_reason(exc) if exc is not None else "no final answer from the server"
        return TransportError(f"cannot write {where}: the connection was lost ({cause})")

    # -- the Transport surface ----------------------------------------

    def mkdir(self, path: str) -> None:
        self._mkd(self._abs(path))

    def create(self, path: str) -> FtpFile:
        remote = self._abs(path)
        # only once SITE CHMOD is known to work (the dump directory's MKD tried it)
        precreated = self._chmod is True
        if precreated:
            self._create_private(remote)
        try:
            sock = self._cmd(f"cannot create {remote}", lambda c: c.transfercmd(f"STOR {remote}"))
        except NoSpaceError:
            raise
        except TransportError:
            if not precreated or self.conn is None:
                raise
            # a server that lets us create a file but not replace it: store it anew
            log.debug("%s: storing %s again refused; storing it once", self.url.masked(), remote)
            self._cmd(f"cannot replace {remote}", lambda c: c.delete(remote))
            sock = self._cmd(f"cannot create {remote}", lambda c: c.transfercmd(f"STOR {remote}"))
        self._transfer_starts(f"storing {remote}")
        return FtpFile(self, sock, remote)

    def _create_private(self, remote: str) -> None:
        """Store ``remote`` empty and make it 0600."""
        self._cmd(f"cannot create {remote}", lambda c: c.storbinary(f"STOR {remote}", io.BytesIO()))
        self._site_chmod("600", remote)

    def rename(self, src: str, dst: str) -> None:
        asrc, adst = self._abs(src), self._abs(dst)
        try:
            self._cmd(f"cannot rename {asrc} to {adst}", lambda c: c.rename(asrc, adst))
        except NoSpaceError:
            raise
        except TransportError:
            # some servers refuse to replace: delete the old one and retry once
            if self.conn is None or self._size(adst) is None:
                raise
            self._cmd(f"cannot delete {adst}", lambda c: c.delete(adst))
            self._cmd(f"cannot rename {asrc} to {adst}", lambda c: c.rename(asrc, adst))

    def listdir(self, path: str = "") -> List[DirEntry]:
        where = self._abs(path)
        try:
            if self._mlsd is not False:
                facts = list(self._ctl().mlsd(where, facts=["type"]))
                self._mlsd = True
                return [DirEntry(name, f.get("type", "").lower() == "dir") for name, f in facts
                        if f.get("type", "").lower() not in ("cdir", "pdir") and name not in (".", "..")]
        except ftplib.error_perm as exc:
            if self._mlsd or not _reply_code(exc).startswith("50"):
                raise TransportError(f"cannot list {where} on {self.url.masked()}: "
                                     f"the server answered {str(exc).strip()!r}") from None
            self._mlsd = False
        except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
            self._drop()
            raise TransportError(f"cannot list {where} on {self.url.masked()}: {_net_reason(exc)}") from None
        if not self._is_dir(where):
            raise TransportError(f"cannot list {where} on {self.url.masked()}: not a directory")
        lines: List[str] = []
        self._cmd(f"cannot list {where}", lambda c: c.retrlines(f"LIST -a {where}", lines.append))
        return [e for e in (_parse_list_line(line) for line in lines) if e is not None]

    def _size(self, abs_path: str) -> Optional[int]:
        conn = self._ctl()
        try:
            return conn.size(abs_path)
        except ftplib.error_perm:
            return None
        except (OSError, EOFError, ftplib.Error, ssl.SSLError) as exc:
            self._drop()
            raise TransportError(f"cannot look at {abs_path} on {self.url.masked()}: {_net_reason(exc)}") from None

    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        remote = self._abs(path)
        if self._size(remote) is None:
            return None
        out = bytearray()
        self._cmd(f"cannot read {remote}", lambda c: c.retrbinary(f"RETR {remote}", out.extend))
        return bytes(out[:limit])

    def open_read(self, path: str) -> BinaryIO:
        """A stream over one RETR; closing it reads the server's final reply."""
        remote = self._abs(path)
        sock = self._cmd(f"cannot read {remote}", lambda c: c.transfercmd(f"RETR {remote}"))
        self._transfer_starts(f"reading {remote}")
        return io.BufferedReader(FtpReader(self, sock, remote), buffer_size=SEND_BLOCK)

    def remove(self, path: str) -> None:
        target = self._abs(path)
        self._cmd(f"cannot delete {target}", lambda c: c.delete(target))

    def rmdir(self, path: str) -> None:
        if not [p for p in path.split("/") if p]:
            raise TransportError(f"refusing to delete the base directory of {self.url.masked()}")
        target = self._abs(path)
        self._cmd(f"cannot delete {target}", lambda c: c.rmd(target))

    def free_space(self) -> Optional[int]:
        """``AVBL`` when the server has it, else None (FTP has no standard way).
        During a STOR: the last answer less what was written since."""
        if self._avbl is False:
            return None
        if self._transfer:
            if self._avbl_at is None:
                return None
            free, written = self._avbl_at
            return free - (self._written - written)
        conn = self._ctl()
        try:
            reply = conn.sendcmd(f"AVBL {self.base}")
        except ftplib.Error:
            self._avbl = False
            return None
        except (OSError, EOFError, ssl.SSLError):
            self._drop()
            return None
        fields = reply.split()
        if reply.startswith("213") and len(fields) >= 2 and fields[1].isdigit():
            self._avbl = True
            self._avbl_at = (int(fields[1]), self._written)
            return int(fields[1])
        self._avbl = False
        return None


def _parse_list_line(line: str) -> Optional[DirEntry]:
    """One line of a Unix-style ``LIST`` answer."""
    fields = line.split(None, 8)
    if len(fields) < 9 or fields[0][:1] not in ("d", "-", "l"):
        return None
    name = fields[8]
    if fields[0][0] == "l" and " -> " in name:
        name = name.split(" -> ", 1)[0]
    if name in (".", ".."):
        return None
    return DirEntry(name, fields[0][0] == "d")


def _quit(conn: ftplib.FTP) -> None:
    try:
        conn.quit()
    except Exception:  # noqa: BLE001 - closing anyway
        pass
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass


INITRD = InitrdProfile(imports=("ssl",))


def system_ca_bundle() -> Optional[str]:
    """The host's CA bundle as OpenSSL finds it (``SSL_CERT_FILE``, else its
    compiled-in ``cert.pem``; on Debian /etc/ssl/certs/ca-certificates.crt),
    or None when there is no such file."""
    return ssl.get_default_verify_paths().cafile


def _ca_problem(path: str, what: str) -> Optional[str]:
    """Why ``path`` cannot serve as the CA bundle of a TLS context, or None."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        return f"{what}: {path} holds no CA certificate OpenSSL can load ({exc.reason or exc})"
    except OSError as exc:
        return f"{what}: cannot read {path}: {exc.strerror or exc}"
    return None


def initrd_material(url: TargetURL, options: TransportOptions) -> InitrdMaterial:
    """ftps carries the CA bundle it verifies the server against: the
    KDUMP_CA_FILE, else the host's system bundle (:func:`system_ca_bundle`),
    which the capture initrd's configuration then names as its CA file, since
    the initrd has no system store.  The bundle must load now."""
    material = InitrdMaterial()
    if url.scheme != "ftps":
        return material
    if options.ca_file:
        problem = _ca_problem(options.ca_file, "KDUMP_CA_FILE")
        if problem is None:
            material.files.append(options.ca_file)
        else:
            material.problems.append(problem)
        return material
    bundle = system_ca_bundle()
    if bundle is None:
        material.problems.append(
            f"{url.masked()}: KDUMP_CA_FILE is not set and this system has no CA bundle to carry into the "
            "capture initrd (OpenSSL finds none: install ca-certificates or set SSL_CERT_FILE); set "
            "KDUMP_CA_FILE to the certificate of the CA that signed the ftps server's certificate")
        return material
    problem = _ca_problem(bundle, "the system CA bundle (KDUMP_CA_FILE is not set)")
    if problem is None:
        material.ca_bundle = bundle
    else:
        material.problems.append(problem)
    return material


def open_target(url: TargetURL, options: TransportOptions) -> FtpTransport:
    transport = FtpTransport(url, options)
    transport.connect()
    return transport
