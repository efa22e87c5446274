"""The nfs target (``nfs://host[:port]/export/path``): a kernel NFS mount.

The export is mounted on a private, temporary mount point with ``nolock``,
NFSv4 first and NFSv3 when v4 fails, unless ``options.mount_options``
(KDUMP_NFS_OPTIONS) names a version itself; the user's options are appended.

A lost server: the mount is ``soft`` with ``timeo``/``retrans`` chosen so that
a request unanswered for about KDUMP_NET_TIMEOUT (:func:`timing_options`)
fails with EIO, which ends the save with a clean error (and the next target
is tried).  Within that time the kernel client reconnects by itself and
sends its requests again, so a server restart does not interrupt the save.
The default ``hard`` mount would instead block forever on a server that
stays away.  KDUMP_NFS_OPTIONS with ``hard``, ``soft``, ``timeo`` or
``retrans`` replaces this choice.  Written data only reaches the server
through the page cache, so a file is synced every :data:`SYNC_EVERY` bytes,
and a sync that does not end within KDUMP_NET_TIMEOUT (at least 10 s, so
at least 400 kB/s are needed) counts as a lost server: otherwise the error
would only show after every page waiting in the cache had timed out on its
own, minutes later.  Once the server counts as lost (that, or EIO or
ETIMEDOUT), every further operation fails at once, a file is closed without
waiting, and the mount is removed with ``umount -f``, so the capture kernel
goes on (next target, reboot).
Then :class:`transports.file.FileTransport` does all the work on the mount.
The mount is removed again by :meth:`NfsTransport.close`, and when anything
in :meth:`NfsTransport.connect` fails.

The URL path may reach below the exported directory: when the server says
the path does not exist, the parent is mounted instead and the missing
directories are created on it (so ``connect`` creates the base directory
like every transport).

:func:`mount_commands` builds the command lines; it is pure so the order and
options can be checked without a kernel that mounts NFS.  For NFSv4 the
server's address is passed as ``addr=`` because the kernel's own option
parser (which busybox's mount hands ``nfs4`` options to) needs it, and our
own address as ``clientaddr=`` (NFSv4.0 callbacks; mount.nfs would add both).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from capture.config.targeturl import TargetURL
from transports.base import (InitrdProfile, TransportError, TransportOptions, io_timeout, no_initrd_material,
                             retry_until_timeout)
from transports.file import FileTransport, LocalFile

log = logging.getLogger(__name__)

#: seconds one mount attempt may take when the retry budget is smaller
MIN_ATTEMPT = 10
#: bytes written to a file between two ``fdatasync`` calls
SYNC_EVERY = 4 << 20
#: what a soft mount answers when the server stopped answering
LOST_ERRNOS = (errno.EIO, errno.ETIMEDOUT)


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str


Runner = Callable[[Sequence[str], float], RunResult]


def run_command(argv: Sequence[str], timeout: float) -> RunResult:
    """Run ``argv``; a timeout or a missing program is a failed result, not an exception."""
    try:
        r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return RunResult(124, f"{argv[0]}: no answer within {timeout:.0f} s (timed out)")
    except FileNotFoundError:
        return RunResult(127, f"{argv[0]}: program not found")
    return RunResult(r.returncode, r.stdout.strip())


def split_options(text: str) -> List[str]:
    """``a,b=c`` (KDUMP_NFS_OPTIONS, spaces allowed around commas) as a list."""
    return [o.strip() for o in text.replace(" ", ",").split(",") if o.strip()]


def pinned_version(options: Sequence[str]) -> Optional[str]:
    """The NFS version the user's options ask for, if any."""
    for opt in options:
        key, _, value = opt.partition("=")
        if key in ("vers", "nfsvers") and value:
            return value
        if key in ("v3", "v4", "v4.0", "v4.1", "v4.2"):
            return key[1:]
    return None


def server_spec(host: str, export: str) -> str:
    """``host:/export``, with IPv6 literals in brackets."""
    return f"[{host}]:{export}" if ":" in host else f"{host}:{export}"


#: the options that decide how long the client waits for a lost server
TIMING_KEYS = ("hard", "soft", "softerr", "timeo", "retrans")
#: retransmissions before a soft mount gives up (a major timeout)
RETRANS = 2


def timing_options(net_timeout: float) -> List[str]:
    """``soft,timeo=T,retrans=2`` failing a request after about ``net_timeout``
    seconds without an answer.  Over TCP the client waits ``timeo``, then
    ``2*timeo``, ``3*timeo`` (linear backoff, see nfs(5)) before the major
    timeout: ``6*timeo`` in all; ``timeo`` is in tenths of a second."""
    steps = (RETRANS + 1) * (RETRANS + 2) // 2
    return ["soft", f"timeo={max(10, round(net_timeout * 10 / steps))}", f"retrans={RETRANS}"]


def mount_commands(host: str, export: str, mountpoint: str, port: Optional[int] = None,
                   user_options: str = "", address: Optional[str] = None,
                   client_address: Optional[str] = None,
                   net_timeout: Optional[float] = None) -> List[List[str]]:
    """The mount commands to try, in order.

    Without a version in ``user_options``: NFSv4 (``-t nfs4``, ``vers=4``, the
    kernel picks the highest minor version both sides have), then NFSv3
    (``-t nfs``, ``vers=3``).  With one: only that version.  Every command has
    ``nolock``, ``port=`` when the URL gives a port, then the user's options
    (which therefore win on conflicts).  ``address`` (the server's IP) and
    ``client_address`` (ours, towards it) are added to NFSv4 mounts as
    ``addr=`` and ``clientaddr=`` unless the user's options give them.
    With ``net_timeout``, :func:`timing_options` follow ``nolock`` unless the
    user's options name one of :data:`TIMING_KEYS`.
    """
    extra = split_options(user_options)
    pinned = pinned_version(extra)
    versions = [pinned] if pinned else ["4", "3"]
    commands = []
    for version in versions:
        v4 = version.startswith("4")
        opts = [] if pinned else [f"vers={version}"]
        opts.append("nolock")
        if net_timeout is not None and not any(o.partition("=")[0] in TIMING_KEYS for o in extra):
            opts += timing_options(net_timeout)
        if port is not None:
            opts.append(f"port={port}")
        if v4 and address and not any(o.startswith("addr=") for o in extra):
            opts.append(f"addr={address}")
        if v4 and client_address and not any(o.startswith("clientaddr=") for o in extra):
            opts.append(f"clientaddr={client_address}")
        opts += extra
        commands.append(["mount", "-t", "nfs4" if v4 else "nfs", "-o", ",".join(opts),
                         server_spec(host, export), mountpoint])
    return commands


def export_candidates(path: str) -> List[Tuple[str, str]]:
    """(export to mount, path below it) from the whole path up to ``/``."""
    parts = [p for p in path.split("/") if p]
    out = []
    for i in range(len(parts), -1, -1):
        out.append(("/" + "/".join(parts[:i]), "/".join(parts[i:])))
    return out


def local_address_towards(address: str) -> Optional[str]:
    """Our source address for packets to ``address`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, 2049))
            return s.getsockname()[0]
    except OSError:
        return None


def unmount_commands(mountpoint: str, server_lost: bool = False) -> List[List[str]]:
    """Unmount (forced, aborting what waits for the server, when it is lost),
    then a lazy unmount if the first is refused (busy)."""
    return [["umount", "-f", mountpoint] if server_lost else ["umount", mountpoint], ["umount", "-l", mountpoint]]


class NfsFile(LocalFile):
    """A file on the mount, synced every :data:`SYNC_EVERY` bytes; a lost
    server marks its transport lost."""

    def __init__(self, fd: int, path: str, transport: "NfsTransport") -> None:
        super().__init__(fd, path)
        self._transport = transport
        self._unsynced = 0

    def pwrite(self, data: bytes, offset: int) -> None:
        self._transport.check_alive()
        try:
            super().pwrite(data, offset)
            self._unsynced += len(data)
            if self._unsynced >= SYNC_EVERY:
                self._unsynced = 0
                self._sync()
        except TransportError as exc:
            self._transport.note_error(exc)
            raise

    def _sync(self) -> None:
        """fdatasync, waiting at most the I/O timeout (the call itself may
        stay blocked in its thread until ``umount -f`` ends it)."""
        failure: List[OSError] = []
        done = threading.Event()

        def run(fd: int) -> None:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, args=(self._fd,), name="nfs-sync", daemon=True).start()
        limit = io_timeout(self._transport.options)
        if not done.wait(limit):
            self._transport.lost = True
            raise TransportError(f"cannot write {self._path}: the NFS server took more than {limit:.0f} s "
                                 f"(KDUMP_NET_TIMEOUT) to store {SYNC_EVERY >> 20} MiB")
        if failure:
            exc = failure[0]
            raise TransportError(f"cannot write {self._path}: {exc.strerror or exc}") from exc

    def abort(self) -> None:
        if not self._transport.lost or self._fd < 0:
            return super().abort()
        # closing flushes, which would wait for the lost server once more
        fd, self._fd = self._fd, -1
        threading.Thread(target=_close_quietly, args=(fd,), name="nfs-close", daemon=True).start()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass

    def close(self) -> None:
        try:
            super().close()
        except TransportError as exc:
            self._transport.note_error(exc)
            raise


_NOT_FOUND = ("no such file or directory", "does not exist")
_REFUSED = ("access denied", "permission denied", "operation not permitted")
_NO_KERNEL = ("no such device", "unknown filesystem type")


class _Retry(Exception):
    """A mount failure that may go away (server not up yet, network not ready)."""


class NfsTransport(FileTransport):
    """The file transport on a private NFS mount of the target."""

    def __init__(self, url: TargetURL, options: TransportOptions, run: Runner = run_command,
                 mount_parent: Optional[str] = None) -> None:
        super().__init__(url, options, root="")
        self._run = run
        self._mount_parent = mount_parent
        self.mountpoint: Optional[str] = None
        self.mounted = False
        self.lost = False
        """The server stopped answering (the soft mount said EIO or ETIMEDOUT)."""

    def check_alive(self) -> None:
        if self.lost:
            raise TransportError(f"{self.url.masked()}: the NFS server stopped answering (not waiting for it again)")

    def note_error(self, exc: TransportError) -> None:
        """An operation failed with ``exc``: the server is lost when the
        system call under it (its context) said so."""
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError) and cause.errno in LOST_ERRNOS:
            self.lost = True

    def _abs(self, path: str) -> str:
        self.check_alive()
        return super()._abs(path)

    def create(self, path: str) -> NfsFile:
        local = super().create(path)
        return NfsFile(local._fd, local._path, self)

    def connect(self) -> None:
        """Mount and check the base directory; a no-op when already mounted
        (``open_target`` connects, ``with`` calls this again)."""
        if self.mounted:
            return
        self.mountpoint = tempfile.mkdtemp(prefix="kdump-saver-nfs-", dir=self._mount_parent)
        try:
            below = self._mount_with_retries()
            self.root = os.path.join(self.mountpoint, below) if below else self.mountpoint
            super().connect()
        except BaseException:
            self._unmount()
            raise

    def _mount_with_retries(self) -> str:
        return retry_until_timeout(self.url, self.options.net_timeout,
                                   lambda left: self._mount_once(max(MIN_ATTEMPT, left)), (_Retry,), verb="mount")

    def _address(self) -> Optional[str]:
        try:
            infos = socket.getaddrinfo(self.url.host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise _Retry(f"cannot resolve {self.url.host}: {exc.strerror}") from None
        return infos[0][4][0] if infos else None

    def _mount_once(self, attempt_timeout: float) -> str:
        """Mount the longest existing prefix of the URL path; return the rest."""
        address = self._address()
        client = local_address_towards(address) if address else None
        assert self.mountpoint is not None
        last = ""
        for export, below in export_candidates(self.url.path):
            messages = []
            for argv in mount_commands(self.url.host, export, self.mountpoint, self.url.port,
                                       self.options.mount_options, address, client,
                                       net_timeout=io_timeout(self.options)):
                log.info("mounting: %s", " ".join(argv))
                result = self._run(argv, attempt_timeout)
                if result.returncode == 0:
                    self.mounted = True
                    log.info("mounted %s on %s", server_spec(self.url.host, export), self.mountpoint)
                    return below
                messages.append(result.output or f"exit status {result.returncode}")
            text = " / ".join(messages)
            low = text.lower()
            last = text
            if any(s in low for s in _NOT_FOUND):
                continue
            if any(s in low for s in _REFUSED):
                raise TransportError(f"cannot mount {self.url.masked()}: the server refused: {text}")
            if any(s in low for s in _NO_KERNEL):
                raise TransportError(f"cannot mount {self.url.masked()}: this kernel cannot mount NFS "
                                     f"(nfs module not loaded?): {text}")
            if "program not found" in low:
                raise TransportError(f"cannot mount {self.url.masked()}: {text}")
            raise _Retry(text)
        raise TransportError(f"cannot mount {self.url.masked()}: the server exports no part of "
                             f"{self.url.path}: {last}")

    def _unmount(self) -> None:
        mp, self.mountpoint = self.mountpoint, None
        if mp is None:
            return
        if self.mounted:
            for argv in unmount_commands(mp, self.lost):
                result = self._run(argv, 60)
                if result.returncode == 0:
                    self.mounted = False
                    break
                log.warning("unmounting %s: %s", mp, result.output)
        if self.mounted:
            log.error("%s is still mounted on %s; leaving it", self.url.masked(), mp)
            return
        try:
            os.rmdir(mp)
        except OSError as exc:
            log.warning("cannot remove the mount point %s: %s", mp, exc.strerror)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._unmount()


# mount.nfs uses libtirpc, which reads /etc/netconfig
INITRD = InitrdProfile(kernel_modules=("nfs", "nfsv4", "nfsv3"),
                       optional_programs=("mount.nfs", "mount.nfs4", "/etc/netconfig"))
initrd_material = no_initrd_material


def open_target(url: TargetURL, options: TransportOptions) -> NfsTransport:
    transport = NfsTransport(url, options)
    transport.connect()
    return transport
