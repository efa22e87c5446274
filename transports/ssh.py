"""ssh://: the dump through shell commands, for servers without sftp.

Every operation is one exec channel running a small POSIX shell command on
the server (the account's login shell must understand ``sh`` syntax), with
every path quoted by :func:`shlex.quote`, so names with spaces, quotes or
``$(...)`` arrive literally and run nothing.  A file is created under
``umask 077`` and streamed into one long-running ``cat > PATH`` channel
(``DumpFile.seekable`` is False: the saver sends the flattened stream);
``close`` ends the stream, waits for ``cat`` and a ``sync`` and reports what
the server said.  Free space comes from ``df -Pk``; ``None`` when that fails.
Whatever the account's start-up files print is skipped (a marker precedes our
output).  When the connection drops while a file is streamed, the file
connects again within KDUMP_NET_TIMEOUT of the last successful send, asks
the size of the partial file (``wc -c``) and continues at that offset with
``dd ... seek=SIZE conv=notrunc`` (GNU dd; else ``cat >>`` after the size
check), sending again what the server may not have written from the last
:data:`~transports.base.RESUME_WINDOW` bytes kept in memory.  A server
silent for :func:`~transports.base.io_timeout` counts as lost.  Other
operations connect again once.
Connection, host key checking and authentication: :mod:`transports.sshauth`.
"""
from __future__ import annotations

import logging
import shlex
import socket
import time
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Tuple

from capture.config.targeturl import TargetURL
from transports import openssh, sshauth
from transports.openssh import Channel
from transports.base import (DirEntry, DumpFile, NoSpaceError, SentWindow, Transport, TransportError,
                             TransportOptions, resume_within)

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (OSError, EOFError)
#: exit codes our scripts use to answer a question (not failures)
_EXISTS = 17
_MISSING = 18
_IS_LINK = 19
#: every command starts with this: messages in English, then a marker on stdout; whatever
#: the account's shell start-up files print comes before the marker and is dropped
_MARKER = b"\0kdump-saver-output\0"
_PREFIX = "LC_ALL=C; export LC_ALL; printf '\\000kdump-saver-output\\000'; "
#: the most start-up noise we skip while looking for the marker
_MAX_NOISE = 1 << 20
#: seconds the server may take for ``cat`` to finish and ``sync`` at the end of a file
SYNC_TIMEOUT = 120.0
#: seconds for each later connection once resuming a file has failed
AFTER_FAILURE_BUDGET = 3.0
#: continue a partial file at byte $1 from stdin: GNU dd writes at that offset, so bytes the
#: old session may still be writing cannot be doubled; other dd's get the plain append
_CONTINUE = ('if dd if=/dev/null of=/dev/null oflag=seek_bytes status=none 2>/dev/null; then '
             'dd of={p} bs=65536 seek={n} oflag=seek_bytes conv=notrunc status=none; '
             'else cat >> {p}; fi && {{ sync -- {p} 2>/dev/null || sync; }} && wc -c < {p}')
_LIST = ('if [ ! -d {p} ]; then echo "no such directory" >&2; exit 1; fi; cd -- {p} || exit 1; '
         'for f in .* *; do '
         'case $f in .|..) continue;; esac; '
         '[ -e "$f" ] || [ -L "$f" ] || continue; '
         'if [ -d "$f" ] && [ ! -L "$f" ]; then printf "d%s\\0" "$f"; else printf "f%s\\0" "$f"; fi; done')


INITRD = sshauth.INITRD
initrd_material = sshauth.initrd_material

def open_target(url: TargetURL, options: TransportOptions) -> "SSHTransport":
    transport = SSHTransport(url, options)
    transport.connect()
    return transport


@dataclass(frozen=True)
class Result:
    """What a remote command returned; ``status`` is -1 when the connection ended without one."""

    status: int
    stdout: bytes
    stderr: str
    ran: bool = True
    """False when the server ran something else (our marker never came)."""

    @property
    def message(self) -> str:
        """The last line the command wrote to stderr, for error messages."""
        if not self.ran:
            return ("the server did not run our shell command (is the account limited to sftp, "
                    "with ForceCommand internal-sftp? then use an sftp:// target)")
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
        if self.status == -1:
            return "the connection ended before the command finished"
        return f"exit status {self.status}"


def _is_no_space(text: str) -> bool:
    return "No space left on device" in text or "Disk quota exceeded" in text


class SSHTransport(Transport):
    """A target directory on a server reached with remote commands."""

    def __init__(self, url: TargetURL, options: TransportOptions) -> None:
        super().__init__(url, options)
        self._conn: Optional[sshauth.SSHConnection] = None
        self._free: Optional[int] = None
        """Free bytes from the last ``df``, until the next command."""
        self._wanted = False
        self.gave_up = False
        """Set when resuming failed: later connections get one short try."""

    def connect(self, budget: Optional[float] = None) -> None:
        """Connect (once: a connected transport stays as it is), retrying for
        ``budget`` seconds (default KDUMP_NET_TIMEOUT)."""
        if self._conn is not None and self._conn.alive:
            return
        self._drop()
        self._wanted = True
        self._conn = sshauth.connect(self.url, self.options, budget)
        try:
            base = shlex.quote(self.url.path)
            result = self.run(f"umask 077; mkdir -p -- {base} || exit 1; cd -- {base} || exit 1; "
                              f"test -w . || {{ echo 'the directory is not writable' >&2; exit 1; }}; "
                              f"df -Pk -- . 2>/dev/null")
            if result.status != 0:
                raise TransportError(f"{self.url.masked()}: cannot use the target directory: {result.message}")
            self._free = self._parse_df(result.stdout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._wanted = False
        self._drop()

    def reconnect(self, budget: float) -> None:
        """A new connection after a lost one, retrying for ``budget`` seconds."""
        self._drop()
        self._wanted = True
        self.connect(max(budget, sshauth.MIN_ATTEMPT_TIMEOUT))

    def _drop(self) -> None:
        """Forget the connection (after a failure: the next operation makes a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def connection(self) -> sshauth.SSHConnection:
        """The SSH connection; after it dropped, a new one (so that the saver
        can still record a failure in README.txt)."""
        if not self._wanted:
            raise TransportError(f"{self.url.masked()}: not connected")
        if self._conn is None or not self._conn.alive:
            log.warning("%s: the connection was lost; connecting again", self.url.masked())
            self.connect(AFTER_FAILURE_BUDGET if self.gave_up else None)
        assert self._conn is not None
        return self._conn

    def _q(self, rel: str) -> str:
        return shlex.quote(sshauth.remote_path(self.url.path, rel))

    def exec(self, command: str) -> Channel:
        """A channel running ``command`` (after the common prefix)."""
        self._free = None  # any command may change what is free
        channel = self.connection.open_session()
        try:
            channel.exec_command(_PREFIX + command)
        except _NETWORK_ERRORS as exc:
            channel.close()
            raise self._lost("running a command", exc) from None
        return channel

    def run(self, command: str, limit: Optional[int] = None) -> Result:
        """Run ``command`` and collect its output (stdout up to ``limit`` bytes)."""
        channel = self.exec(command)
        try:
            channel.shutdown_write()  # our commands read nothing; whatever else runs sees EOF
            noise_end = _skip_noise(channel)
            out = noise_end if noise_end is not None else bytearray()
            while True:
                block = channel.recv(1 << 20)
                if not block:
                    break
                if limit is None or len(out) < limit:
                    out += block
            status = self.exit_status(channel)
            err = channel.stderr_text()
        except _NETWORK_ERRORS as exc:
            raise self._lost("running a command", exc) from None
        finally:
            channel.close()
        return Result(status, bytes(out if limit is None else out[:limit]), err, ran=noise_end is not None)

    def exit_status(self, channel: Channel, timeout: Optional[float] = None) -> int:
        """The exit status of the command on ``channel``; -1 when the
        connection ended without one; ``socket.timeout`` after ``timeout``."""
        status = channel.wait(timeout)
        if status is None:
            raise socket.timeout("no exit status")
        if status == openssh.SSH_FAILED and channel.connection_lost():
            return -1  # judged by the session's own connection: a later command may have made a new one
        return status

    def _lost(self, what: str, exc: BaseException) -> TransportError:
        self._drop()
        return TransportError(f"{self.url.masked()}: {what}: the connection was lost ({sshauth.describe(exc)})")

    def _fail(self, what: str, result: Result) -> TransportError:
        cls = NoSpaceError if _is_no_space(result.stderr) else TransportError
        return cls(f"{self.url.masked()}: {what}: {result.message}")

    # -- operations -------------------------------------------------------

    def mkdir(self, path: str) -> None:
        p = self._q(path)
        result = self.run(f"if [ -e {p} ] || [ -L {p} ]; then exit {_EXISTS}; fi; umask 077 && mkdir -- {p}")
        if result.status == _EXISTS:
            raise FileExistsError(17, "exists", path)
        if result.status != 0:
            raise self._fail(f"cannot create the directory {path!r}", result)

    def create(self, path: str) -> DumpFile:
        p = self._q(path)
        # a separate step first, so that a bad directory or permission shows here, not at close
        result = self.run(f"umask 077 && rm -f -- {p} && : > {p}")
        if result.status != 0:
            raise self._fail(f"cannot create {path!r}", result)
        # the stream's command ends by printing the size it synced: no second command to ask
        channel = self.exec(f"umask 077 && cat > {p} && {{ sync -- {p} 2>/dev/null || sync; }} && wc -c < {p}")
        return StreamFile(self, path, channel)

    def size(self, path: str) -> int:
        """The size of a file on the server (``wc -c``)."""
        result = self.run(f"wc -c < {self._q(path)}")
        text = result.stdout.decode("ascii", "replace").strip()
        if result.status != 0 or not text.isdigit():
            raise self._fail(f"cannot tell the size of {path!r}", result)
        return int(text)

    def continue_at(self, path: str, offset: int) -> Channel:
        """A channel whose input continues the existing file ``path`` at ``offset``."""
        return self.exec(_CONTINUE.format(p=self._q(path), n=int(offset)))

    def write_small(self, path: str, data: bytes, partial_suffix: str = ".tmp") -> None:
        """One remote command instead of four: write ``path + partial_suffix``,
        check its size, sync it and rename it over ``path``; after a lost
        connection it runs once more on a new one."""
        tmp, final = self._q(path + partial_suffix), self._q(path)
        script = (f"umask 077 && cat > {tmp} || exit 1\n"
                  f"n=$(wc -c < {tmp}) || exit 1\n"
                  f"if [ $n -ne {len(data)} ]; then echo \"the server holds $n bytes of the {len(data)} sent\" >&2; "
                  "exit 1; fi\n"
                  f"{{ sync -- {tmp} 2>/dev/null || sync; }} && mv -f -- {tmp} {final}")
        for attempt in (1, 2):
            try:
                channel = self.exec(script)
                try:
                    channel.sendall(data)
                    channel.shutdown_write()
                    ran = _skip_noise(channel) is not None
                    while channel.recv(1 << 16):
                        pass
                    status = self.exit_status(channel, max(SYNC_TIMEOUT, channel.gettimeout()))
                    result = Result(status, b"", channel.stderr_text(), ran=ran)
                finally:
                    channel.close()
            except _NETWORK_ERRORS as exc:
                if attempt == 2:
                    raise self._lost(f"writing {path!r}", exc) from None
                self._drop()
                continue
            if result.status == -1 and attempt == 1:
                self._drop()
                continue
            if result.status != 0:
                raise self._fail(f"cannot write {path!r}", result)
            return

    def rename(self, src: str, dst: str) -> None:
        result = self.run(f"mv -f -- {self._q(src)} {self._q(dst)}")
        if result.status != 0:
            raise self._fail(f"cannot rename {src!r} to {dst!r}", result)

    def listdir(self, path: str = "") -> List[DirEntry]:
        result = self.run(_LIST.format(p=self._q(path)))
        if result.status != 0:
            raise self._fail(f"cannot list {path or 'the target directory'!r}", result)
        entries = []
        for item in result.stdout.split(b"\0"):
            if item:
                entries.append(DirEntry(item[1:].decode("utf-8", "surrogateescape"), item[:1] == b"d"))
        return entries

    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        p = self._q(path)
        result = self.run(f"if [ -e {p} ]; then head -c {int(limit)} -- {p}; else exit {_MISSING}; fi",
                          limit=limit)
        if result.status == _MISSING:
            return None
        if result.status != 0:
            raise self._fail(f"cannot read {path!r}", result)
        return result.stdout

    def remove(self, path: str) -> None:
        p = self._q(path)
        result = self.run(f"if [ -d {p} ] && [ ! -L {p} ]; then echo 'is a directory' >&2; exit 1; fi; rm -- {p}")
        if result.status != 0:
            raise self._fail(f"cannot delete {path!r}", result)

    def rmdir(self, path: str) -> None:
        if sshauth.remote_path(self.url.path, path) == self.url.path:
            raise TransportError(f"{self.url.masked()}: refusing to remove the target directory itself")
        result = self.run(f"rmdir -- {self._q(path)}")
        if result.status != 0:
            raise self._fail(f"cannot delete {path!r}", result)

    def free_space(self) -> Optional[int]:
        """``df`` on the server; the last answer while no command changed anything since."""
        if self._free is not None:
            return self._free
        try:
            result = self.run(f"df -Pk -- {shlex.quote(self.url.path)}")
        except TransportError as exc:
            log.warning("%s", exc)
            return None
        if result.status != 0:
            log.info("%s: df failed (%s); free space unknown", self.url.masked(), result.message)
            return None
        self._free = self._parse_df(result.stdout)
        if self._free is None:
            log.info("%s: cannot parse the output of df; free space unknown", self.url.masked())
        return self._free

    @staticmethod
    def _parse_df(out: bytes) -> Optional[int]:
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            return int(lines[-1].split()[3]) * 1024
        except (IndexError, ValueError):
            return None

    def open_read(self, path: str) -> BinaryIO:
        channel = self.exec(f"cat -- {self._q(path)}")
        return _Reader(self, path, channel)  # type: ignore[return-value]


def _skip_noise(channel: Channel) -> Optional[bytearray]:
    """Read up to and including the marker; the output after it (possibly
    empty), or None when the output ended without the marker."""
    seen = bytearray()
    while True:
        at = seen.find(_MARKER)
        if at >= 0:
            return seen[at + len(_MARKER):]
        if len(seen) > _MAX_NOISE:
            raise OSError("the remote shell printed too much before running our command")
        block = channel.recv(1 << 16)
        if not block:
            return None
        seen += block


class StreamFile(DumpFile):
    """The input of a remote ``cat > PATH``: append-only; the last bytes
    sent are kept to resume after a lost connection."""

    seekable = False

    def __init__(self, owner: SSHTransport, name: str, channel: Channel) -> None:
        self._owner = owner
        self._name = name
        self._channel = channel
        self._done = False
        self._window = SentWindow()
        self._heard = time.monotonic()

    def write(self, data: bytes) -> None:
        if self._done:
            raise TransportError(f"{self._owner.url.masked()}: {self._name!r} is already closed")
        self._window.add(data)
        try:
            self._send(memoryview(data))
        except _NETWORK_ERRORS as exc:
            self._lost(exc)

    def _send(self, view: memoryview) -> None:
        self._channel.sendall(view)
        self._heard = time.monotonic()

    def _lost(self, exc: Optional[BaseException]) -> None:
        """The stream broke: a failure the remote command explains is final;
        a lost connection is resumed."""
        failure, connection_lost = self._failure(exc)
        if not connection_lost:
            raise failure
        log.warning("%s: the connection broke while writing %r; resuming", self._owner.url.masked(), self._name)

        def attempt(left: float) -> None:
            self._owner.reconnect(left)
            size = self._owner.size(self._name)
            pending = self._window.since(size)
            channel = self._owner.continue_at(self._name, size)
            self._channel = channel
            try:
                for view in pending:
                    self._send(view)
            except _NETWORK_ERRORS as exc:
                channel.close()
                raise TransportError(f"the connection broke again ({sshauth.describe(exc)})") from None

        try:
            resume_within(self._owner.url, self._owner.options.net_timeout, self._heard, attempt,
                          f"writing {self._name!r}")
        except TransportError:
            self._owner.gave_up = True
            self._owner._drop()
            raise
        self._done = False
        self._heard = time.monotonic()

    def close(self) -> None:
        if self._done:
            return
        try:
            self._channel.shutdown_write()
            status = self._owner.exit_status(self._channel, max(SYNC_TIMEOUT, self._channel.gettimeout() or 0))
        except _NETWORK_ERRORS as exc:
            self._lost(exc)
            return self.close()
        if status == -1:
            self._lost(None)
            return self.close()
        if status != 0:
            raise self._failure(None)[0]
        self._done = True
        size = self._printed_size()
        self._channel.close()
        if size is None:
            size = self._owner.size(self._name)
        if size != self._window.end:
            raise TransportError(f"{self._owner.url.masked()}: writing {self._name!r}: the server holds "
                                 f"{size} bytes of the {self._window.end} sent")

    def _printed_size(self) -> Optional[int]:
        """The size the finished command printed (``wc -c`` after its sync); None when it
        printed none (the size is then asked for separately)."""
        try:
            out = _skip_noise(self._channel) or bytearray()
            while len(out) <= 32:
                block = self._channel.recv(64)
                if not block:
                    break
                out += block
        except _NETWORK_ERRORS:
            return None
        text = out.decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None

    def _failure(self, exc: Optional[BaseException]) -> Tuple[TransportError, bool]:
        """Why the stream broke, from the remote command's stderr when it said
        something, and whether only the connection was lost."""
        self._done = True
        try:
            status = self._owner.exit_status(self._channel, 2)
        except Exception:  # noqa: BLE001 - a broken connection: report what we know
            status = -1
        err = self._channel.stderr_text() if status != -1 else ""
        self._channel.close()
        result = Result(status, b"", err)
        if status == -1 and not result.stderr.strip():
            return self._owner._lost(f"writing {self._name!r}", exc or EOFError()), True
        return self._owner._fail(f"writing {self._name!r}", result), False

    def abort(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._channel.close()
            except Exception:  # noqa: BLE001 - the error path must not mask the cause
                pass


class _Reader:
    """The output of a remote ``cat -- PATH``; a failure is a :class:`TransportError`."""

    def __init__(self, owner: SSHTransport, name: str, channel: Channel) -> None:
        self._owner = owner
        self._name = name
        self._channel = channel
        self._pending: Optional[bytes] = None

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); at the end of
        the file, a failure of the remote ``cat`` is raised."""
        try:
            if self._pending is None:
                self._pending = bytes(_skip_noise(self._channel) or b"")
            want = None if size is None or size < 0 else size
            data = bytearray(self._pending[:want] if want is not None else self._pending)
            self._pending = self._pending[len(data):]
            while want is None or len(data) < want:
                block = self._channel.recv(1 << 20 if want is None else min(want - len(data), 1 << 20))
                if not block:
                    self._check_status()
                    break
                data += block
            return bytes(data)
        except _NETWORK_ERRORS as exc:
            raise self._owner._lost(f"reading {self._name!r}", exc) from None

    def _check_status(self) -> None:
        status = self._owner.exit_status(self._channel)
        if status == -1:
            raise EOFError("the connection ended")
        if status != 0:
            raise self._owner._fail(f"cannot read {self._name!r}", Result(status, b"", self._channel.stderr_text()))

    def close(self) -> None:
        try:
            self._channel.close()
        except Exception:  # noqa: BLE001 - close never raises
            pass

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
