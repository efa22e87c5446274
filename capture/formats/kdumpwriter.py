"""Writing makedumpfile's kdump-compressed format, as makedumpfile's flattened stream.

The file is laid out like ``makedumpfile -l`` / ``-c`` writes it (see
:mod:`capture.formats.kdumpfile` for the reader): block 0 the disk_dump_header
(signature ``KDUMP   ``, header version 6), then the kdump_sub_header followed
by a copy of the vmcore's ELF notes (``offset_vmcoreinfo`` points at the
VMCOREINFO note's text inside them), then the 1st and 2nd page bitmaps, one
24-byte page descriptor per dumped page, and the page data.  A page is stored
LZO1X-1 compressed (raw, as makedumpfile's DUMP_DH_COMPRESSED_LZO expects) or
zlib compressed, or as it is when compression does not make it smaller.  With
dump level bit 1, every page full of zeros shares one zero page written
first in the data area, exactly as makedumpfile does (the page stays in the
2nd bitmap).

The output is the flattened stream (``makedumpfile -F``): a 4096-byte header,
then (offset, size) records, then an end marker, so the existing readers
(:mod:`capture.formats.flattened`) and every target take it unchanged.  Nothing is
held in memory beyond the two bitmaps and about a megabyte of buffered
output.
"""
from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Optional, Sequence, Tuple

from capture.errors import KdumpError
from capture.formats.flattened import END_MARKER, HEADER_SIZE, RECORD_HEADER, SIGNATURE, TYPE_FLAT_HEADER
from capture.formats.kdumpfile import (DUMP_DH_COMPRESSED_LZO, DUMP_DH_COMPRESSED_ZLIB, HEADER_SIZE as DISK_HEADER_SIZE,
                               PAGE_DESC_SIZE, SUB_HEADER_SIZE, TIMESTAMP_OFFSET)

try:
    import lzo  # python-lzo
except ImportError:  # the zlib fallback below
    lzo = None

log = logging.getLogger(__name__)

HEADER_VERSION = 6
UTS_SIZE = 6 * 65
NT_PRSTATUS = 1
#: buffered output is flushed as a record once it reaches this many bytes
RECORD_BYTES = 1 << 20
COMPRESSIONS = {"lzo": DUMP_DH_COMPRESSED_LZO, "zlib": DUMP_DH_COMPRESSED_ZLIB}
_DESC = struct.Struct("<qIIQ")


class KdumpWriteError(KdumpError):
    """The kdump-compressed stream could not be written as planned."""


def available_compression(wanted: str = "lzo") -> str:
    """``wanted`` when this Python can produce it, else ``"zlib"`` (always available)."""
    if wanted == "lzo" and lzo is None:
        log.info("python-lzo is not installed; compressing pages with zlib instead of lzo")
        return "zlib"
    if wanted not in COMPRESSIONS:
        raise KdumpWriteError(f"unknown page compression {wanted!r} (lzo or zlib)")
    return wanted


@dataclass(frozen=True)
class PageCoding:
    """How pages are stored: compression, page size, and where the shared zero page is (dump level
    bit 1; None stores pages full of zeros like any other)."""
    method: str
    page_size: int
    zero_page_offset: Optional[int] = None


@dataclass(frozen=True)
class CompressedPages:
    """A batch of pages ready to append: page descriptors whose data offsets count from the start of
    ``data`` (``rebase`` adds the batch's real position), and the stored bytes back to back.

    ``rebase_mask`` has a 1 in the lowest byte of every descriptor offset that
    is relative (all but the shared zero page's), so rebasing is one
    big-integer multiply-add instead of a loop over pages.
    """
    count: int
    zero_pages: int
    descriptors: bytes
    rebase_mask: bytes
    data: bytes

    def rebase(self, base: int) -> bytes:
        """The descriptors with ``base`` added to every relative data offset."""
        if not self.descriptors:
            return b""
        value = int.from_bytes(self.descriptors, "little") + base * int.from_bytes(self.rebase_mask, "little")
        return value.to_bytes(len(self.descriptors), "little")


_RELATIVE = b"\x01" + bytes(PAGE_DESC_SIZE - 1)
_ABSOLUTE = bytes(PAGE_DESC_SIZE)


def compress_pages(pieces: Sequence[bytes], coding: PageCoding) -> CompressedPages:
    """Compress the pages of ``pieces`` (each a whole number of pages) one page at a time, like makedumpfile.

    With ``coding.zero_page_offset`` a page full of zeros gets a descriptor
    pointing at the shared zero page and no data.  A page that does not
    shrink is stored as it is (descriptor flags 0).
    """
    page_size = coding.page_size
    zero = bytes(page_size)
    share_zero = coding.zero_page_offset is not None
    zero_desc = _DESC.pack(coding.zero_page_offset or 0, page_size, 0, 0)
    flag = COMPRESSIONS[coding.method]
    descs = bytearray()
    mask = bytearray()
    out: list = []
    append = out.append
    pack_desc = _DESC.pack
    use_lzo = coding.method == "lzo"
    lzo_compress = lzo.compress if use_lzo else None  # type: ignore[union-attr]
    zlib_compress = zlib.compress
    relative, absolute = _RELATIVE, _ABSOLUTE
    offset = 0
    zeros = 0
    for piece in pieces:
        for at in range(0, len(piece), page_size):
            page = piece[at:at + page_size]
            if share_zero and page == zero:
                descs += zero_desc
                mask += absolute
                zeros += 1
                continue
            packed = lzo_compress(page, 1, False) if use_lzo else zlib_compress(page, 1)  # type: ignore[misc]
            size = len(packed)
            if size < page_size:
                descs += pack_desc(offset, size, flag, 0)
                append(packed)
            else:
                size = page_size
                descs += pack_desc(offset, size, 0, 0)
                append(page)
            offset += size
            mask += relative
    return CompressedPages(len(descs) // PAGE_DESC_SIZE, zeros, bytes(descs), bytes(mask), b"".join(out))


def locate_note(notes: bytes, owner: str) -> Optional[Tuple[int, int]]:
    """``(offset, size)`` of the descriptor of the first ELF note named ``owner`` inside ``notes``."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, _type = struct.unpack_from("<III", notes, pos)
        if namesz == 0 and descsz == 0:
            return None
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        if desc_at + descsz > len(notes):
            return None
        if notes[name_at:name_at + namesz].split(b"\0", 1)[0] == owner.encode():
            return desc_at, descsz
        pos = desc_at + ((descsz + 3) & ~3)
    return None


def count_cpus(notes: bytes) -> int:
    """Number of NT_PRSTATUS notes (one per CPU of the crashed kernel)."""
    count = 0
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        if namesz == 0 and descsz == 0:
            break
        name_at = pos + 12
        if ntype == NT_PRSTATUS and notes[name_at:name_at + namesz].split(b"\0", 1)[0] == b"CORE":
            count += 1
        pos = name_at + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return count


@dataclass(frozen=True)
class DumpHeader:
    """What goes into the disk_dump_header and kdump_sub_header."""
    utsname: bytes
    timestamp: int
    page_size: int
    max_mapnr: int
    dump_level: int
    phys_base: int
    notes: bytes
    compression: str = "lzo"

    def __post_init__(self) -> None:
        if len(self.utsname) != UTS_SIZE:
            raise KdumpWriteError(f"utsname must be {UTS_SIZE} bytes, not {len(self.utsname)}")
        if self.compression not in COMPRESSIONS:
            raise KdumpWriteError(f"unknown page compression {self.compression!r}")

    @property
    def sub_header_blocks(self) -> int:
        return -(-(SUB_HEADER_SIZE + len(self.notes)) // self.page_size)

    def bitmap_blocks(self, bitmap_size: int) -> int:
        return -(-2 * bitmap_size // self.page_size)

    def encode(self, bitmap_size: int) -> bytes:
        """Block 0 and the sub header blocks (with the notes), ``(1 + sub_header_blocks)`` pages."""
        bs = self.page_size
        head = bytearray(bs * (1 + self.sub_header_blocks))
        struct.pack_into("<8si390s", head, 0, b"KDUMP   ", HEADER_VERSION, self.utsname)
        struct.pack_into("<qq", head, TIMESTAMP_OFFSET, self.timestamp, 0)
        struct.pack_into("<IiiIIIIIIi", head, TIMESTAMP_OFFSET + 16, COMPRESSIONS[self.compression], bs,
                         self.sub_header_blocks, self.bitmap_blocks(bitmap_size), min(self.max_mapnr, 0xFFFFFFFF),
                         0, 0, 0, 0, count_cpus(self.notes))
        assert TIMESTAMP_OFFSET + 16 + 40 == DISK_HEADER_SIZE
        offset_note = bs + SUB_HEADER_SIZE
        found = locate_note(self.notes, "VMCOREINFO")
        off_info, size_info = (offset_note + found[0], found[1]) if found else (0, 0)
        struct.pack_into("<QiiQQqQqQqQQQQ", head, bs, self.phys_base & ((1 << 64) - 1), self.dump_level, 0, 0, 0,
                         off_info, size_info, offset_note if self.notes else 0, len(self.notes), 0, 0, 0, 0,
                         self.max_mapnr)
        head[offset_note:offset_note + len(self.notes)] = self.notes
        return bytes(head)


class FlatStream:
    """makedumpfile's flattened stream onto ``out``: :meth:`record` writes ``data`` for ``offset``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        #: bytes of flattened stream written
        self.bytes_written = 0
        #: end of the real file as far as written
        self.file_size = 0
        header = bytearray(HEADER_SIZE)
        header[:16] = SIGNATURE.ljust(16, b"\0")
        struct.pack_into(">qq", header, 16, TYPE_FLAT_HEADER, 1)
        self._write(bytes(header))

    def _write(self, data: bytes) -> None:
        try:
            self._out.write(data)
        except OSError as exc:
            raise KdumpWriteError(f"cannot write the dump stream: {exc.strerror or exc}") from None
        self.bytes_written += len(data)

    def record(self, offset: int, data: "bytes | bytearray") -> None:
        """Write ``data`` (any bytes-like object, written as it is) for ``offset`` of the real file."""
        if not data:
            return
        self._write(RECORD_HEADER.pack(offset, len(data)))
        self._write(data)
        self.file_size = max(self.file_size, offset + len(data))

    def end(self) -> None:
        self._write(RECORD_HEADER.pack(END_MARKER, END_MARKER))
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            try:
                flush()
            except OSError as exc:
                raise KdumpWriteError(f"cannot write the dump stream: {exc.strerror or exc}") from None


class KdumpStreamWriter:
    """Writes one kdump-compressed dump as a flattened stream.

    The constructor writes the headers and both bitmaps (the 1st given in pieces); :attr:`coding` says
    how to compress pages for :meth:`add`, which takes them in page-frame
    order (exactly ``num_dumpable`` of them in all); :meth:`finish` writes
    what is buffered and the end marker.
    """

    def __init__(self, out: BinaryIO, header: DumpHeader, present: Iterable["bytes | bytearray"],
                 dumpable: "bytes | bytearray", num_dumpable: int) -> None:
        size = len(dumpable)
        if size % header.page_size:
            raise KdumpWriteError("a bitmap must be a whole number of pages")
        self.header = header
        self.num_dumpable = num_dumpable
        self.stream = FlatStream(out)
        bs = header.page_size
        self.stream.record(0, header.encode(size))
        bitmap_offset = (1 + header.sub_header_blocks) * bs
        at = bitmap_offset
        for piece in present:
            self.stream.record(at, piece)
            at += len(piece)
        if at != bitmap_offset + size:
            raise KdumpWriteError(f"the 1st bitmap has {at - bitmap_offset} bytes, the 2nd {size}")
        self.stream.record(bitmap_offset + size, dumpable)
        self.desc_offset = bitmap_offset + header.bitmap_blocks(size) * bs
        self.data_offset = self.desc_offset + num_dumpable * PAGE_DESC_SIZE
        self._desc_buf = bytearray()
        self._desc_at = self.desc_offset
        self._next_data = self.data_offset
        self.pages_written = 0
        self.zero_pages = 0
        zero_at = None
        if header.dump_level & 1:
            zero_at = self._next_data
            self.stream.record(zero_at, bytes(bs))
            self._next_data += bs
        self.coding = PageCoding(header.compression, bs, zero_at)

    def add(self, batch: CompressedPages) -> None:
        """Append ``batch``, the next pages in frame order, compressed with :attr:`coding`."""
        if self.pages_written + batch.count > self.num_dumpable:
            raise KdumpWriteError(f"more pages than the bitmap marks dumpable ({self.num_dumpable})")
        self._desc_buf += batch.rebase(self._next_data)
        self.stream.record(self._next_data, batch.data)
        self._next_data += len(batch.data)
        self.pages_written += batch.count
        self.zero_pages += batch.zero_pages
        if len(self._desc_buf) >= RECORD_BYTES:
            self._flush_desc()

    def _flush_desc(self) -> None:
        self.stream.record(self._desc_at, bytes(self._desc_buf))
        self._desc_at += len(self._desc_buf)
        self._desc_buf.clear()

    def finish(self) -> int:
        """Write the rest and the end marker; returns the size of the real (rebuilt) file."""
        if self.pages_written != self.num_dumpable:
            raise KdumpWriteError(f"wrote {self.pages_written} pages, the bitmap marks {self.num_dumpable}")
        self._flush_desc()
        self.stream.end()
        return self._next_data
