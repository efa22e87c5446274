"""Initramfs archives in the ``newc`` cpio format, written without root.

Entries are collected in memory (file contents are read when the archive is
written) so that owners and modes are exact whatever the builder's umask.
"""
from __future__ import annotations

import gzip
import lzma
import subprocess
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

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
        path = self._resolve(_norm(path))
        if not path or path in self._entries:
            return
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFDIR | mode)

    def file(self, path: str, data: Content, mode: int = 0o644) -> None:
        path = self._resolve(_norm(path))
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = self._resolve(_norm(path))
        self._parents(path)
        self._entries[path] = Entry(stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._resolve(_norm(path))
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

    def merge(self, image: Path, skip: Tuple[str, ...] = ()) -> None:
        """Add every member of an initramfs image (cpio, xz or gzip segments),
        except the paths in ``skip``."""
        for name, entry in read_image(image):
            if name not in skip:
                self._entries[name] = entry

    def _resolve(self, path: str) -> str:
        """``path`` with its parent directories followed through the archive's
        symbolic links (``bin`` -> ``usr/bin`` in a merged-/usr tree)."""
        parts = path.split("/")
        for _ in range(40):
            for i in range(1, len(parts)):
                entry = self._entries.get("/".join(parts[:i]))
                if entry is not None and stat.S_ISLNK(entry.mode):
                    target = (entry.data or b"").decode()
                    base = [] if target.startswith("/") else parts[:i - 1]
                    parts = [p for p in base + target.split("/") + parts[i:] if p not in ("", ".")]
                    break
            else:
                return "/".join(parts)
        raise ValueError(f"too many symbolic links in {path}")

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


def read_image(image: Path) -> Iterator[Tuple[str, Entry]]:
    """The members of an initramfs: concatenated newc archives, each plain,
    xz-, gzip- or zstd-compressed, with zero padding between them."""
    data = image.read_bytes()
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        head = data[pos:pos + 6]
        if head == b"070701":
            pos = yield from _read_newc(data, pos)
        elif head == b"\xfd7zXZ\x00":
            rest = lzma.LZMADecompressor()
            plain = rest.decompress(data[pos:])
            yield from _read_all_newc(plain)
            pos = len(data) - len(rest.unused_data)
        elif head[:2] == b"\x1f\x8b":
            rest_z = gzip.decompress(data[pos:])
            yield from _read_all_newc(rest_z)
            return
        elif head[:4] == b"\x28\xb5\x2f\xfd":
            # the last segment, as for gzip; the standard library has no zstd (Python 3.11)
            plain = subprocess.run(["zstd", "-dcq"], input=data[pos:], capture_output=True, check=True).stdout
            yield from _read_all_newc(plain)
            return
        else:
            raise ValueError(f"{image}: unknown initramfs segment at byte {pos} ({head!r})")


def _read_all_newc(data: bytes) -> Iterator[Tuple[str, Entry]]:
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        pos = yield from _read_newc(data, pos)


def _read_newc(data: bytes, pos: int) -> Iterator[Tuple[str, Entry]]:
    """Yield one archive's members (hard links resolved); return the end position."""
    links: Dict[Tuple[int, int, int], List[str]] = {}
    entries: Dict[str, Entry] = {}
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio header at byte {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, nlink, size, dev = f[0], f[1], f[4], f[6], (f[7], f[8])
        namesize = f[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode("utf-8", "surrogateescape")
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            break
        name = _norm(name)
        if not name:
            continue
        entries[name] = Entry(mode, body if (size or stat.S_ISREG(mode)) else None, (f[9], f[10]))
        if stat.S_ISREG(mode) and nlink > 1:
            links.setdefault((ino, *dev), []).append(name)
    for names in links.values():
        body = next((entries[n].data for n in names if entries[n].data), b"")
        for n in names:
            entries[n].data = body
    yield from entries.items()
    return pos
