"""The local file system target (``/path`` or ``file:///path``).

Also the base of the nfs transport, which mounts the export and then writes
through this one.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from pathlib import PurePosixPath
from typing import BinaryIO, Callable, List, Optional

from capture.config.targeturl import TargetURL
from transports.base import (DirEntry, DumpFile, InitrdProfile, NoSpaceError, Transport, TransportError,
                             TransportOptions, no_initrd_material)

log = logging.getLogger(__name__)

HASH_BLOCK = 1 << 20


def _oserror(what: str, path: str, exc: OSError) -> TransportError:
    cls = NoSpaceError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else TransportError
    return cls(f"{what} {path}: {exc.strerror or exc}")


class _Background:
    """Run ``call`` in a thread; :meth:`wait` re-raises what it raised."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(call,), name="fsync")
        self._thread.start()

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._error = exc

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


class LocalFile(DumpFile):
    """A file written with ``os.write`` / ``os.pwrite``; ``close`` fsyncs."""

    seekable = True

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self._pos = 0

    def write(self, data: bytes) -> None:
        self.pwrite(data, self._pos)
        self._pos += len(data)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise _oserror("cannot write", self._path, exc) from None

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _oserror("cannot flush", self._path, exc) from None
        finally:
            os.close(fd)

    def close_and_hash(self) -> Optional[str]:
        """Hash the file from the page cache while another thread fsyncs it."""
        try:
            reader = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _oserror("cannot read back", self._path, exc) from None
        digest = hashlib.sha256()
        flush = _Background(self.close)
        try:
            with os.fdopen(reader, "rb", buffering=0) as f:
                for block in iter(lambda: f.read(HASH_BLOCK), b""):
                    digest.update(block)
        except OSError as exc:
            flush.wait()
            raise _oserror("cannot read back", self._path, exc) from None
        flush.wait()
        return digest.hexdigest()

    def abort(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:  # a network file system reports its write errors here too
                pass


class FileTransport(Transport):
    """A directory on a mounted file system."""

    def __init__(self, url: TargetURL, options: TransportOptions, root: Optional[str] = None) -> None:
        super().__init__(url, options)
        self.root = root if root is not None else url.path

    def _abs(self, path: str) -> str:
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts:
            raise TransportError(f"refusing path outside the target: {path!r}")
        return os.path.join(self.root, path) if path else self.root

    def connect(self) -> None:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _oserror("cannot create the target directory", self.root, exc) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TransportError(f"the target directory {self.root} is not writable")

    def close(self) -> None:
        pass

    def mkdir(self, path: str) -> None:
        try:
            os.mkdir(self._abs(path), 0o700)
        except FileExistsError:
            raise
        except OSError as exc:
            raise _oserror("cannot create directory", self._abs(path), exc) from None
        os.chmod(self._abs(path), 0o700)

    def create(self, path: str) -> LocalFile:
        full = self._abs(path)
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            raise _oserror("cannot create", full, exc) from None
        return LocalFile(fd, full)

    def rename(self, src: str, dst: str) -> None:
        try:
            os.rename(self._abs(src), self._abs(dst))
            dirfd = os.open(os.path.dirname(self._abs(dst)) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            raise _oserror(f"cannot rename {self._abs(src)} to", self._abs(dst), exc) from None

    def listdir(self, path: str = "") -> List[DirEntry]:
        try:
            with os.scandir(self._abs(path)) as it:
                return [DirEntry(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError as exc:
            raise _oserror("cannot list", self._abs(path), exc) from None

    def read_small(self, path: str, limit: int = 65536) -> Optional[bytes]:
        try:
            with open(self._abs(path), "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _oserror("cannot read", self._abs(path), exc) from None

    def remove(self, path: str) -> None:
        full = self._abs(path)
        if not path or os.path.isdir(full) and not os.path.islink(full):
            raise TransportError(f"refusing to delete {full}: not a file")
        try:
            os.unlink(full)
        except OSError as exc:
            raise _oserror("cannot delete", full, exc) from None

    def rmdir(self, path: str) -> None:
        full = self._abs(path)
        if not path or os.path.islink(full):
            raise TransportError(f"refusing to delete {full}")
        try:
            os.rmdir(full)
        except OSError as exc:
            raise _oserror("cannot delete", full, exc) from None

    def free_space(self) -> Optional[int]:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def open_read(self, path: str) -> BinaryIO:
        try:
            return open(self._abs(path), "rb")
        except OSError as exc:
            raise _oserror("cannot read", self._abs(path), exc) from None


INITRD = InitrdProfile()
initrd_material = no_initrd_material


def open_target(url: TargetURL, options: TransportOptions) -> FileTransport:
    transport = FileTransport(url, options)
    transport.connect()
    return transport
