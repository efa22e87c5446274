"""Random access to a dump's bytes: the one reader interface every format parser takes."""
from __future__ import annotations

import os
from typing import Callable, Optional

from capture.errors import KdumpError

#: ``read_at(offset, size)``: up to ``size`` bytes of the dump at ``offset`` (short at its end)
ReadAt = Callable[[int, int], bytes]


class FileReader:
    """A :data:`ReadAt` over a regular file (``pread`` on a held descriptor); close it when done."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: Optional[int] = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise KdumpError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(self._fd)
        #: the file's size in bytes
        self.size = st.st_size

    def __call__(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        if length <= 0:
            return b""
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
