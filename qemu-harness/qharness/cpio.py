"""Initramfs archives in the ``newc`` cpio format, written without root.

Entries are collected in memory (file contents are read when the archive is
written) so that owners and modes are exact whatever the builder's umask.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Optional, Union

Content = Union[bytes, Path]


@dataclass
class Entry:
    """One member: a directory, regular file, symbolic link or device node."""

    mode: int
    data: Optional[Content] = None       # file content, or link target as bytes
    rdev: tuple = (0, 0)


class Archive:
    """A newc archive under construction; parents are created implicitly."""

    def __init__(self) -> None:
        self._entries: Dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = _norm(path)
        if not path or path in self._entries:
            return
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFDIR | mode)

    def file(self, path: str, data: Content, mode: int = 0o644) -> None:
        path = _norm(path)
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = _norm(path)
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = _norm(path)
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFCHR | mode, None, (major, minor))

    def copy_host_file(self, host: Path, path: Optional[str] = None) -> None:
        """Add ``host`` (following symlinks) at ``path`` (default: the same path)."""
        self.file(path or str(host), Path(host), stat.S_IMODE(Path(host).stat().st_mode))

    def write(self, out: BinaryIO) -> None:
        for ino, (name, entry) in enumerate(sorted(self._entries.items()), start=1):
            data = entry.data
            if isinstance(data, Path):
                data = data.read_bytes()
            _member(out, name, entry.mode, data or b"", ino, entry.rdev)
        _member(out, "TRAILER!!!", 0, b"", 0, (0, 0))

    def write_file(self, path: Path) -> None:
        with open(path, "wb") as out:
            self.write(out)

    def _parents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self._entries:
            self.dir(parent)


def _norm(path: str) -> str:
    return "/".join(p for p in str(path).split("/") if p not in ("", "."))


def _member(out: BinaryIO, name: str, mode: int, data: bytes, ino: int, rdev: tuple) -> None:
    raw = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
              0, 0, rdev[0], rdev[1], len(raw), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + raw + _pad(len(header) + len(raw)))
    out.write(data + _pad(len(data)))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
