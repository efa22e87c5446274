"""makedumpfile's kdump-compressed format (``KDUMP   `` signature): header parsing.

The layout follows makedumpfile's diskdump_mod.h: block 0 holds struct
disk_dump_header (signature, header_version, the crashed kernel's utsname,
a timestamp, status flags, block size, and the sizes of the following
areas); the next ``sub_hdr_size`` blocks hold struct kdump_sub_header
(phys_base, dump_level, split range, and where the VMCOREINFO text, the ELF
notes and the erase info are stored); then ``bitmap_blocks`` blocks of two
page bitmaps (the second one marks the pages that were dumped); then one
24-byte page descriptor (data offset, size, flags, page flags) per dumped
page; then the page data.

Fields are in the byte order of the machine that wrote the dump; both are
accepted.  Only 64-bit writers' layouts are understood.
"""
from __future__ import annotations

import logging
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from capture.formats.elfcore import parse_vmcoreinfo, split_utsname
from capture.formats.readat import MAX_OFFSET, ReadAt
from capture.formats.untrusted import MAX_TIME, bounded_int
from capture.errors import DumpFormatError

log = logging.getLogger(__name__)

SIGNATURE = b"KDUMP   "
#: the 64-bit struct disk_dump_header
HEADER_SIZE = 464
UTS_OFFSET = 12
UTS_SIZE = 6 * 65
TIMESTAMP_OFFSET = 408
FIELDS_OFFSET = 424
SUB_HEADER_SIZE = 104
PAGE_DESC = struct.Struct("qIIQ")
PAGE_DESC_SIZE = 24

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20

COMPRESSION_FLAGS = [
    (DUMP_DH_COMPRESSED_ZLIB, "zlib"),
    (DUMP_DH_COMPRESSED_LZO, "lzo"),
    (DUMP_DH_COMPRESSED_SNAPPY, "snappy"),
    (DUMP_DH_COMPRESSED_ZSTD, "zstd"),
]
#: the newest header_version makedumpfile writes today is 6; allow some headroom
MAX_HEADER_VERSION = 64
#: page descriptors are read and checked this many at a time
DESC_BATCH = 1 << 16
#: bitmap bytes read at a time when counting the dumped pages
BITMAP_CHUNK = 1 << 20
#: page flags makedumpfile may set in a page descriptor (the compression of the page)
PAGE_FLAGS = DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD


@dataclass
class KdumpHeader:
    """The disk_dump_header and kdump_sub_header of a kdump-compressed dump."""
    header_version: int
    little_endian: bool
    utsname: Dict[str, str]
    timestamp: int
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    phys_base: int = 0
    dump_level: Optional[int] = None
    split: bool = False
    start_pfn: int = 0
    end_pfn: int = 0
    offset_vmcoreinfo: int = 0
    size_vmcoreinfo: int = 0
    offset_note: int = 0
    size_note: int = 0
    vmcoreinfo: Dict[str, str] = field(default_factory=dict)
    #: the dump ends before its sub header (dump level and VMCOREINFO are unknown)
    sub_header_missing: bool = False

    @property
    def compression(self) -> str:
        names = [name for flag, name in COMPRESSION_FLAGS if self.status & flag]
        return "+".join(names) if names else "none"

    @property
    def incomplete_flag(self) -> bool:
        """makedumpfile marks a dump it could not finish (e.g. disk full) with this flag."""
        return bool(self.status & DUMP_DH_COMPRESSED_INCOMPLETE)

    @property
    def machine(self) -> str:
        return self.utsname.get("machine", "")

    @property
    def release(self) -> str:
        return self.vmcoreinfo.get("OSRELEASE") or self.utsname.get("release", "")

    @property
    def page_size(self) -> int:
        value = bounded_int(self.vmcoreinfo.get("PAGESIZE"), 1, 1 << 30)
        return value if value is not None else self.block_size

    @property
    def crash_time(self) -> Optional[int]:
        """CRASHTIME from VMCOREINFO, or None (also when it is not a plausible time)."""
        return bounded_int(self.vmcoreinfo.get("CRASHTIME"), 0, MAX_TIME)

    @property
    def header_time(self) -> Optional[int]:
        """The dump header's time stamp, or None when it is not a plausible time."""
        return self.timestamp if 0 < self.timestamp <= MAX_TIME else None

    @property
    def bitmap_offset(self) -> int:
        return (1 + self.sub_hdr_size) * self.block_size

    @property
    def bitmap_size(self) -> int:
        return self.bitmap_blocks * self.block_size

    @property
    def descriptors_offset(self) -> int:
        return self.bitmap_offset + self.bitmap_size


def parse_header(read_at: ReadAt, name: str) -> KdumpHeader:
    """Read the headers (and the VMCOREINFO text) of the kdump-compressed dump ``read_at`` reads."""
    raw = read_at(0, HEADER_SIZE)
    if not raw.startswith(SIGNATURE):
        raise DumpFormatError(f"{name} is not a kdump-compressed dump (no 'KDUMP' signature)")
    if len(raw) < HEADER_SIZE:
        raise DumpFormatError(f"{name}: truncated kdump header ({len(raw)} of {HEADER_SIZE} bytes)")
    for bo in ("<", ">"):
        version = struct.unpack_from(bo + "i", raw, 8)[0]
        if 0 < version <= MAX_HEADER_VERSION:
            break
    else:
        raise DumpFormatError(f"{name}: kdump header with an implausible header_version")
    timestamp = struct.unpack_from(bo + "q", raw, TIMESTAMP_OFFSET)[0]
    (status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, _total_ram, _device, _written,
     _cpu, nr_cpus) = struct.unpack_from(bo + "IiiIIIIIIi", raw, FIELDS_OFFSET)
    if block_size <= 0 or block_size & (block_size - 1) or block_size > (1 << 20):
        raise DumpFormatError(f"{name}: kdump header with an implausible block size {block_size}")
    if sub_hdr_size < 0 or bitmap_blocks == 0 or bitmap_blocks % 2:
        raise DumpFormatError(f"{name}: kdump header with implausible sizes "
                              f"(sub header {sub_hdr_size} blocks, bitmap {bitmap_blocks} blocks)")
    hdr = KdumpHeader(header_version=version, little_endian=bo == "<",
                      utsname=split_utsname(raw[UTS_OFFSET:UTS_OFFSET + UTS_SIZE]),
                      timestamp=timestamp, status=status, block_size=block_size, sub_hdr_size=sub_hdr_size,
                      bitmap_blocks=bitmap_blocks, max_mapnr=max_mapnr, nr_cpus=nr_cpus)
    if sub_hdr_size > 0:
        sub = read_at(block_size, SUB_HEADER_SIZE)
        if len(sub) < 16:
            log.debug("%s: the kdump sub header is missing", name)
            hdr.sub_header_missing = True
            return hdr
        sub = sub.ljust(SUB_HEADER_SIZE, b"\0")
        (hdr.phys_base, dump_level, split, start_pfn, end_pfn, hdr.offset_vmcoreinfo, hdr.size_vmcoreinfo,
         hdr.offset_note, hdr.size_note, _off_erase, _size_erase, start_pfn_64, end_pfn_64,
         max_mapnr_64) = struct.unpack_from(bo + "QiiQQqQqQqQQQQ", sub, 0)
        if version >= 1:
            hdr.dump_level = dump_level
        if version >= 2:
            hdr.split = bool(split)
            hdr.start_pfn, hdr.end_pfn = start_pfn, end_pfn
        if version >= 6:
            hdr.max_mapnr = max_mapnr_64 or hdr.max_mapnr
            hdr.start_pfn, hdr.end_pfn = start_pfn_64, end_pfn_64
        if hdr.split and hdr.end_pfn and not 0 <= hdr.start_pfn < hdr.end_pfn <= hdr.bitmap_size // 2 * 8:
            raise DumpFormatError(f"{name}: kdump header with an implausible split range "
                                  f"(pfn {hdr.start_pfn}..{hdr.end_pfn}, the bitmap has "
                                  f"{hdr.bitmap_size // 2 * 8} bits)")
        if version >= 3 and hdr.offset_vmcoreinfo > 0 and 0 < hdr.size_vmcoreinfo < (1 << 20):
            text = read_at(hdr.offset_vmcoreinfo, hdr.size_vmcoreinfo)
            if len(text) == hdr.size_vmcoreinfo:
                hdr.vmcoreinfo = parse_vmcoreinfo(text)
    return hdr


def _popcount(value: int) -> int:
    return value.bit_count() if hasattr(value, "bit_count") else bin(value).count("1")


def count_dumped_pages(hdr: KdumpHeader, read_at: ReadAt, name: str) -> int:
    """Number of pages the second bitmap marks as dumped (= number of page descriptors).

    Reads the bitmap :data:`BITMAP_CHUNK` bytes at a time (memory stays bounded)."""
    half = hdr.bitmap_size // 2
    start_pfn, end_pfn = (hdr.start_pfn, hdr.end_pfn) if hdr.split and hdr.end_pfn else (0, half * 8)
    end_pfn = min(end_pfn, half * 8)
    if end_pfn <= start_pfn:
        return 0
    first_byte, last_byte = start_pfn // 8, (end_pfn + 7) // 8
    base = hdr.bitmap_offset + half
    count = 0
    for at in range(first_byte, last_byte, BITMAP_CHUNK):
        want = min(BITMAP_CHUNK, last_byte - at)
        chunk = read_at(base + at, want)
        if len(chunk) < want:
            raise DumpFormatError(f"{name}: truncated inside the page bitmap")
        value = int.from_bytes(chunk, "little")
        if at == first_byte:
            value >>= start_pfn - first_byte * 8
            value <<= start_pfn - first_byte * 8
        if at + want == last_byte and end_pfn % 8:
            value &= (1 << ((want - 1) * 8 + end_pfn % 8)) - 1
        count += _popcount(value)
    return count


def structure_problems(hdr: KdumpHeader, size: int) -> List[str]:
    """What the header declares that cannot be true of a file of ``size`` bytes."""
    problems: List[str] = []
    bits = hdr.bitmap_size // 2 * 8
    if hdr.max_mapnr and not hdr.split and bits < hdr.max_mapnr:
        problems.append(f"the header is damaged: its page bitmap has {bits} bits for {hdr.max_mapnr} pages")
    if hdr.descriptors_offset >= MAX_OFFSET:
        problems.append(f"the header is damaged: it puts the page descriptors at byte {hdr.descriptors_offset}")
    return problems


def completeness_problems(hdr: KdumpHeader, read_at: ReadAt, size: int, name: str) -> List[str]:
    """Reasons to believe the dump is incomplete or damaged (empty when it looks complete).

    Checks the INCOMPLETE flag, that the header's areas fit the file, that
    the file holds the bitmaps and all page descriptors, that every page
    descriptor points into the page data with a plausible size and flags,
    and that the file reaches the end of the last page's data.  Memory is
    bounded (the bitmap and the descriptors are read in pieces); time grows
    with the size of the file, never with what the header claims beyond it.
    """
    problems: List[str] = []
    if hdr.incomplete_flag:
        problems.append("makedumpfile marked it incomplete (it could not write all pages, e.g. the disk was full)")
    problems += structure_problems(hdr, size)
    if problems and not hdr.incomplete_flag:
        return problems
    if size < hdr.descriptors_offset:
        problems.append(f"the dump ends at byte {size}, before the page descriptors (byte {hdr.descriptors_offset})")
        return problems
    pages = count_dumped_pages(hdr, read_at, name)
    table_end = hdr.descriptors_offset + pages * PAGE_DESC_SIZE
    if size < table_end:
        problems.append(f"the dump ends at byte {size}, inside the page descriptors of {pages} pages "
                        f"(they end at byte {table_end})")
        return problems
    data_end, damage = check_descriptors(hdr, read_at, pages, size)
    if damage:
        problems.append(damage)
    elif data_end > size:
        problems.append(f"the dump ends at byte {size}, before the last page's data (it ends at byte {data_end})")
    return problems


def check_descriptors(hdr: KdumpHeader, read_at: ReadAt, pages: int, size: int) -> Tuple[int, Optional[str]]:
    """Read all ``pages`` page descriptors; return (end of the page data, the
    first damage found or None).

    A descriptor is sound when its data starts after the descriptor table,
    its size is 1..block size and its flags name at most known compressions.
    A descriptor pointing past the end of the file is not damage (the file
    may be cut off); the returned end tells."""
    table = hdr.descriptors_offset
    data_start = table + pages * PAGE_DESC_SIZE
    end = data_start
    native = (sys.byteorder == "little") == hdr.little_endian
    for first in range(0, pages, DESC_BATCH):
        count = min(DESC_BATCH, pages - first)
        block = read_at(table + first * PAGE_DESC_SIZE, count * PAGE_DESC_SIZE)
        if len(block) < count * PAGE_DESC_SIZE:
            return end, f"the page descriptors are unreadable from descriptor {first + len(block) // PAGE_DESC_SIZE}"
        words = array("q", block)
        halves = array("I", block)
        if not native:
            words.byteswap()
            halves.byteswap()
        offsets = words[0::3]
        # each descriptor: offset (8 bytes), size (4), flags (4), page flags (8)
        sizes, flags = halves[2::6], halves[3::6]
        low, high = min(offsets), max(offsets)
        if low < data_start or max(sizes) > hdr.block_size or min(sizes) == 0 or set(flags) - _ALLOWED_FLAGS:
            return end, _first_bad_descriptor(first, offsets, sizes, flags, data_start, hdr.block_size)
        last = offsets.index(high)
        end = max(end, high + sizes[last])
        if DUMP_DH_COMPRESSED_ZLIB in flags:
            damage = _check_zlib_pages(first, offsets, sizes, flags, hdr.block_size, read_at, size)
            if damage:
                return end, damage
    return end, None


class _Window:
    """Reads of page data through a window of a few MB (pages are stored in order)."""

    SIZE = 4 << 20

    def __init__(self, read_at: ReadAt) -> None:
        self._read_at = read_at
        self._start = 0
        self._data = b""

    def __call__(self, offset: int, length: int) -> bytes:
        if not (self._start <= offset and offset + length <= self._start + len(self._data)):
            self._start = offset
            self._data = self._read_at(offset, max(length, self.SIZE))
        at = offset - self._start
        return self._data[at:at + length]


def _check_zlib_pages(first: int, offsets, sizes, flags, page_size: int, read_at: ReadAt,
                      size: int) -> Optional[str]:
    """Inflate each zlib page of one batch (the zlib stream's checksum finds a changed byte)."""
    window = _Window(read_at)
    checked = set()
    for i, (offset, length, flag) in enumerate(zip(offsets, sizes, flags)):
        if flag != DUMP_DH_COMPRESSED_ZLIB or offset + length > size or offset in checked:
            continue
        checked.add(offset)
        try:
            page = zlib.decompress(window(offset, length))
        except zlib.error as exc:
            return f"the data of page descriptor {first + i} (byte {offset}) is damaged: {exc}"
        if len(page) != page_size:
            return (f"the data of page descriptor {first + i} (byte {offset}) is damaged: it inflates to "
                    f"{len(page)} bytes, not {page_size}")
    return None


_ALLOWED_FLAGS = {0, DUMP_DH_COMPRESSED_ZLIB, DUMP_DH_COMPRESSED_LZO, DUMP_DH_COMPRESSED_SNAPPY,
                  DUMP_DH_COMPRESSED_ZSTD}


def _first_bad_descriptor(first: int, offsets, sizes, flags, data_start: int, block_size: int) -> str:
    for i, (offset, length, flag) in enumerate(zip(offsets, sizes, flags)):
        if offset < data_start:
            why = f"its data offset {offset} lies before the page data (byte {data_start})"
        elif not 0 < length <= block_size:
            why = f"its data size {length} is not 1..{block_size}"
        elif flag not in _ALLOWED_FLAGS:
            why = f"its flags {flag:#x} name no known compression"
        else:
            continue
        return f"page descriptor {first + i} is damaged: {why}"
    return f"page descriptors from {first} are damaged"
