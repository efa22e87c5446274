"""Random access to a dump's bytes: the one reader interface every format parser takes."""
from __future__ import annotations

import fcntl
import os
import stat
from typing import Callable, Optional

from capture.errors import KdumpError

#: ``read_at(offset, size)``: up to ``size`` bytes of the dump at ``offset`` (short at its end)
ReadAt = Callable[[int, int], bytes]

#: no file offset at or beyond this is read (offsets in crafted headers reach 2**64)
MAX_OFFSET = 1 << 62

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    """What a non-regular file of ``st_mode`` ``mode`` is, in words."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


class FileReader:
    """A :data:`ReadAt` over a regular file (``pread`` on a held descriptor); close it when done.

    Anything but a regular file (a FIFO would block forever, a device has no
    size) is refused with :class:`KdumpError`; ``/proc/vmcore`` is a regular
    file.  Reads at negative offsets or beyond :data:`MAX_OFFSET` return nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer
            self._fd: Optional[int] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise KdumpError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            self._fd = None
            raise KdumpError(f"{path} is {file_kind(st.st_mode)}, not a dump file (only regular files are read)")
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        #: the file's size in bytes
        self.size = st.st_size

    def __call__(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        if length <= 0 or offset < 0 or offset >= MAX_OFFSET:
            return b""
        length = min(length, MAX_OFFSET - offset)
        parts = []
        while length > 0:
            try:
                data = os.pread(self._fd, min(length, 1 << 30), offset)
            except OSError as exc:
                raise KdumpError(f"cannot read {self.path}: {exc.strerror}") from None
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
