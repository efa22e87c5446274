"""The surface every transport offers to the saver.

A transport is connected to one target URL.  Every path it takes is relative
to the URL's base directory and uses ``/`` as separator; the transport maps it
onto the server.  Errors the administrator must read are raised as
:class:`TransportError` with a message that names the target in its masked
form and never contains a password or key.
"""
from __future__ import annotations

import abc
import collections
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Deque, List, Optional, Sequence, Tuple, Type, TypeVar

from capture.errors import KdumpError

if TYPE_CHECKING:
    from capture.config.options import Config
    from capture.config.targeturl import TargetURL

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransportError(KdumpError):
    """A failure on the target, worded for the console (no secrets)."""


class NoSpaceError(TransportError):
    """The target has no room left for what must be written."""


@dataclass(frozen=True)
class TransportOptions:
    """What a transport needs from the configuration besides the URL."""

    net_timeout: int = 30
    """Seconds to keep retrying the connection (KDUMP_NET_TIMEOUT; 0: try once)."""
    host_key: str = ""
    """KDUMP_HOST_KEY: ``TYPE BASE64`` of the server, ``*`` to disable checks."""
    known_hosts: Optional[str] = None
    """known_hosts file recorded when the initrd was built."""
    ssh_identity: Tuple[str, ...] = ()
    """Private key files (KDUMP_SSH_IDENTITY), tried in order."""
    ca_file: Optional[str] = None
    """CA bundle for ftps (KDUMP_CA_FILE); the system store when unset."""
    mount_options: str = ""
    """Extra mount options for nfs (KDUMP_NFS_OPTIONS)."""

    @classmethod
    def from_config(cls, config: "Config") -> "TransportOptions":
        """The options the configuration gives every transport."""
        return cls(net_timeout=config.net_timeout, host_key=config.host_key,
                   known_hosts=config.known_hosts or None, ssh_identity=config.ssh_identity,
                   ca_file=config.ca_file or None, mount_options=config.nfs_options)


@dataclass(frozen=True)
class InitrdProfile:
    """What a transport needs in the capture initrd besides our own code
    (module attribute ``INITRD`` of each transport module)."""

    packages: Tuple[str, ...] = ()
    """Third-party top-level packages its imports may take into the initrd."""
    imports: Tuple[str, ...] = ()
    """Modules to trace as entry points of its import closure."""
    kernel_modules: Tuple[str, ...] = ()
    programs: Tuple[str, ...] = ()
    """Programs it runs (a build error when missing)."""
    optional_programs: Tuple[str, ...] = ()
    """Programs and files copied when the build system has them."""


@dataclass
class InitrdMaterial:
    """What a target needs copied into the initrd, checked at build time
    (module function ``initrd_material(url, options)``, where there is one)."""

    files: List[str] = field(default_factory=list)
    """Files carried as they are (identities, CA bundles)."""
    known_hosts: str = ""
    """known_hosts lines for the target, carried in the initrd's own file."""
    ca_bundle: str = ""
    """The host's system CA bundle, carried in the initrd's own file, which
    the initrd's configuration names as KDUMP_CA_FILE."""
    problems: List[str] = field(default_factory=list)
    """What would fail at crash time, worded for the administrator."""


def no_initrd_material(url: "TargetURL", options: TransportOptions) -> InitrdMaterial:
    """``initrd_material`` of a transport that needs nothing copied and nothing checked."""
    return InitrdMaterial()


@dataclass(frozen=True)
class DirEntry:
    """One name in a directory listing."""

    name: str
    is_dir: bool


class DumpFile(abc.ABC):
    """A new file on the target, written as a stream.

    ``seekable`` says whether :meth:`pwrite` works; when it does the saver
    writes the real file at its offsets, otherwise it appends the flattened
    stream.  ``close`` makes the data durable (fsync or the server's
    equivalent) and raises on failure; ``abort`` is for the error path and
    never raises.
    """

    seekable: bool = False

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data`` after everything written with ``write`` so far."""

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset``; only when ``seekable``."""
        raise TransportError("this target cannot write at an offset")

    @abc.abstractmethod
    def close(self) -> None:
        """Flush, make durable and close."""

    def close_and_hash(self) -> Optional[str]:
        """:meth:`close`, and the sha256 of the whole file as stored where this
        file can read it back while it is made durable; ``None`` leaves the
        digest to :meth:`Transport.sha256` after the rename."""
        self.close()
        return None

    def abort(self) -> None:
        """Close after a failure: best effort, never raises."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the error path must not mask the cause
            pass


class Transport(abc.ABC):
    """A connection to one target directory."""

    def __init__(self, url: TargetURL, options: TransportOptions) -> None:
        self.url = url
        self.options = options

    def __enter__(self) -> "Transport":
        """``with open_target(...) as t``: the transport is already connected;
        leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def connect(self) -> None:
        """Connect and make sure the base directory exists (created 0700 if
        missing), retrying until ``options.net_timeout`` has passed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; never raises."""

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create one directory, mode 0700; :class:`FileExistsError` if it exists."""

    @abc.abstractmethod
    def create(self, path: str) -> DumpFile:
        """Create a new file of mode 0600 for writing (replacing one of that name)."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing ``dst`` if it exists."""

    @abc.abstractmethod
    def listdir(self, path: str = "") -> List[DirEntry]:
        """The names in a directory (without ``.`` and ``..``)."""

    @abc.abstractmethod
    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        """At most ``limit`` bytes of a small file, ``None`` when it does not exist."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Delete one file (not a directory, never following a link's target)."""

    @abc.abstractmethod
    def rmdir(self, path: str) -> None:
        """Delete an empty directory; :class:`TransportError` if it is not empty
        or is the target's base directory."""

    @abc.abstractmethod
    def free_space(self) -> Optional[int]:
        """Bytes available to us in the base directory, ``None`` when the
        server cannot tell."""

    def open_read(self, path: str) -> BinaryIO:
        """A file object reading a file back; only needed for seekable targets."""
        raise TransportError("this target cannot read files back")

    def write_small(self, path: str, data: bytes, partial_suffix: str = ".tmp") -> None:
        """Replace a small file (README, marker, dmesg) in one step: write
        ``path + partial_suffix``, then rename it over ``path``."""
        partial = path + partial_suffix
        self.write_whole(partial, data)
        self.rename(partial, path)

    def write_whole(self, path: str, data: bytes) -> None:
        """Create ``path`` (replacing it) holding ``data``, made durable."""
        f = self.create(path)
        try:
            f.write(data)
            f.close()
        except BaseException:
            f.abort()
            raise

    def server_sha256(self, path: str) -> Optional[str]:
        """The sha256 of a stored file computed by the server itself, so that
        the file does not cross the network again; None when the server
        cannot (the README then says the hash was not computed)."""
        return None

    def sha256(self, path: str) -> str:
        """The sha256 of a file as stored on the target, read back through the
        transport (for checks; the save never reads a dump back)."""
        import hashlib  # loads libcrypto: not on a save's path

        digest = hashlib.sha256()
        with self.open_read(path) as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                digest.update(block)
        return digest.hexdigest()


def network_reason(exc: BaseException) -> str:
    """Why a connection to a server failed, in words for the console."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"the connection failed ({type(exc).__name__})"


def retry_until_timeout(url: TargetURL, timeout: int, attempt: Callable[[float], T],
                        retryable: Tuple[Type[BaseException], ...],
                        reason: Callable[[BaseException], str] = str,
                        after_failure: Callable[[], None] = lambda: None, verb: str = "connect to") -> T:
    """KDUMP_NET_TIMEOUT for every transport: call ``attempt(seconds_left)``
    about once a second until it succeeds or ``timeout`` seconds have passed
    (0: once).  A :class:`TransportError` is final at once; a ``retryable``
    failure is retried, and when time is up it becomes a TransportError
    ``cannot VERB URL: REASON (tried N times for T s)``."""
    deadline = time.monotonic() + max(0, timeout)
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(max(0.0, deadline - time.monotonic()))
        except TransportError:
            raise
        except retryable as exc:
            after_failure()
            why = reason(exc)
            if time.monotonic() >= deadline:
                tried = f" (tried {tries} times for {timeout} s)" if tries > 1 else ""
                raise TransportError(f"cannot {verb} {url.masked()}: {why}{tried}") from None
            log.info("cannot %s %s yet: %s; retrying", verb, url.masked(), why)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


#: Seconds a connection may stay silent before it counts as lost, when
#: KDUMP_NET_TIMEOUT is shorter (0 included).
MIN_IO_TIMEOUT = 10
#: Bytes of an append-only stream kept for resending after a reconnect: more
#: than the socket buffers of both ends (Linux autotunes them up to 4 MB for
#: sending and 6 MB for receiving; far less in a capture kernel's memory), the
#: SSH channel's window (2 MB) and the server's own buffers can hold unwritten.
#: They are kept in the saver's memory: 64 MB, as before, did not fit a 128 MB
#: reservation.  A resume that needs more fails and says so (the dump stays INCOMPLETE).
RESUME_WINDOW = 16 << 20


def io_timeout(options: TransportOptions) -> float:
    """Seconds without a sign of life from the server before the connection
    counts as lost: KDUMP_NET_TIMEOUT, at least :data:`MIN_IO_TIMEOUT`."""
    return float(max(options.net_timeout, MIN_IO_TIMEOUT))


class SentWindow:
    """The last :data:`RESUME_WINDOW` bytes of an append-only stream.

    After a reconnect the server says how much of the file it holds; what
    follows is sent again from here.  Memory stays bounded by ``limit``."""

    def __init__(self, limit: int = RESUME_WINDOW) -> None:
        self.limit = limit
        self.start = 0
        """Stream offset of the oldest byte held."""
        self.end = 0
        """Stream offset after the newest byte (everything ever added)."""
        self._blocks: Deque[bytes] = collections.deque()

    def add(self, data: bytes) -> None:
        if not data:
            return
        self._blocks.append(bytes(data))
        self.end += len(data)
        while self._blocks and self.end - self.start - len(self._blocks[0]) >= self.limit:
            self.start += len(self._blocks.popleft())

    def since(self, offset: int) -> List[memoryview]:
        """The bytes from ``offset`` to the end; ValueError when they are no longer held."""
        if not self.start <= offset <= self.end:
            raise ValueError(f"offset {offset} is outside the bytes still held ({self.start}..{self.end})")
        out: List[memoryview] = []
        at = self.start
        for block in self._blocks:
            if at + len(block) > offset:
                out.append(memoryview(block)[max(0, offset - at):])
            at += len(block)
        return out


def resume_within(url: TargetURL, timeout: int, since: float, attempt: Callable[[float], None],
                  what: str) -> None:
    """After the connection broke while writing: call ``attempt(seconds_left)``
    (reconnect, reopen the file, send again what the server has not
    confirmed) about once a second until it succeeds or ``timeout`` seconds
    (KDUMP_NET_TIMEOUT) have passed since ``since``, when the server was
    last heard from; at least once.  Lost connections and TransportErrors
    are retried, except :class:`NoSpaceError` and ValueError (the data to
    send again is no longer held), which are final; when time is up, a
    TransportError ``WHAT: the connection was lost and could not be resumed``."""
    deadline = since + max(0, timeout)
    tries = 0
    while True:
        tries += 1
        try:
            attempt(max(0.0, deadline - time.monotonic()))
            log.info("%s: resumed %s (%d attempt%s, %.1f s after the server was last heard)", url.masked(),
                     what, tries, "" if tries == 1 else "s", time.monotonic() - since)
            return
        except NoSpaceError:
            raise
        except ValueError as exc:
            raise TransportError(f"{what}: the connection was lost and cannot be resumed: {exc}") from None
        except (TransportError, OSError, EOFError) as exc:
            why = str(exc) if isinstance(exc, TransportError) else network_reason(exc)
            if time.monotonic() >= deadline:
                raise TransportError(f"{what}: the connection was lost and could not be resumed within "
                                     f"KDUMP_NET_TIMEOUT={timeout} s ({why})") from None
            log.warning("%s: cannot resume yet: %s; retrying", url.masked(), why)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def make_missing_dirs(paths: Sequence[str], is_dir: Callable[[str], bool], mkdir: Callable[[str], None]) -> None:
    """Create those of ``paths`` (a directory's ancestors and itself, outermost
    first) that are not directories yet; one that appears meanwhile is fine."""
    for path in paths:
        if is_dir(path):
            continue
        try:
            mkdir(path)
        except FileExistsError:
            pass
