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
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from capture.formats.elfcore import parse_vmcoreinfo, split_utsname
from capture.formats.readat import ReadAt
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
#: how far back from the last page descriptor to look for the end of the page data
DESC_SCAN_LIMIT = 1 << 22


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
        value = self.vmcoreinfo.get("PAGESIZE")
        return int(value) if value and value.isdigit() else self.block_size

    @property
    def crash_time(self) -> Optional[int]:
        value = self.vmcoreinfo.get("CRASHTIME")
        return int(value) if value and value.isdigit() else None

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
    if sub_hdr_size < 0 or bitmap_blocks == 0:
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
        if version >= 3 and hdr.offset_vmcoreinfo > 0 and 0 < hdr.size_vmcoreinfo < (1 << 20):
            text = read_at(hdr.offset_vmcoreinfo, hdr.size_vmcoreinfo)
            if len(text) == hdr.size_vmcoreinfo:
                hdr.vmcoreinfo = parse_vmcoreinfo(text)
    return hdr


def _popcount(data: bytes) -> int:
    count = 0
    bit_count = getattr(int, "bit_count", None)
    for i in range(0, len(data), 1 << 16):
        value = int.from_bytes(data[i:i + (1 << 16)], "little")
        count += bit_count(value) if bit_count else bin(value).count("1")
    return count


def count_dumped_pages(hdr: KdumpHeader, read_at: ReadAt, name: str) -> int:
    """Number of pages the second bitmap marks as dumped (= number of page descriptors)."""
    half = hdr.bitmap_size // 2
    start_pfn, end_pfn = (hdr.start_pfn, hdr.end_pfn) if hdr.split and hdr.end_pfn else (0, half * 8)
    first_byte, last_byte = start_pfn // 8, min(half, (end_pfn + 7) // 8)
    bitmap = read_at(hdr.bitmap_offset + half + first_byte, last_byte - first_byte)
    if len(bitmap) < last_byte - first_byte:
        raise DumpFormatError(f"{name}: truncated inside the page bitmap")
    value = int.from_bytes(bitmap, "little")
    value >>= start_pfn - first_byte * 8
    value &= (1 << (end_pfn - start_pfn)) - 1
    return _popcount(value.to_bytes((end_pfn - start_pfn + 7) // 8, "little"))


def completeness_problems(hdr: KdumpHeader, read_at: ReadAt, size: int, name: str) -> List[str]:
    """Reasons to believe the dump is incomplete (empty when it looks complete).

    Checks the INCOMPLETE flag, that the file holds the bitmaps and all page
    descriptors, and that it reaches the end of the last page's data (found by
    scanning the descriptor table backwards past descriptors that share the
    first data block, like the zero page does).
    """
    problems: List[str] = []
    if hdr.incomplete_flag:
        problems.append("makedumpfile marked it incomplete (it could not write all pages, e.g. the disk was full)")
    if size < hdr.descriptors_offset:
        problems.append(f"the dump ends at byte {size}, before the page descriptors (byte {hdr.descriptors_offset})")
        return problems
    pages = count_dumped_pages(hdr, read_at, name)
    table_end = hdr.descriptors_offset + pages * PAGE_DESC_SIZE
    if size < table_end:
        problems.append(f"the dump ends at byte {size}, inside the page descriptors of {pages} pages "
                        f"(they end at byte {table_end})")
        return problems
    data_end = _page_data_end(hdr, read_at, pages)
    if data_end > size:
        problems.append(f"the dump ends at byte {size}, before the last page's data (it ends at byte {data_end})")
    return problems


def _page_data_end(hdr: KdumpHeader, read_at: ReadAt, pages: int) -> int:
    """End of the page data as the descriptors tell (the table's end when there are no pages)."""
    table = hdr.descriptors_offset
    data_start = table + pages * PAGE_DESC_SIZE
    bo = "<" if hdr.little_endian else ">"
    desc = struct.Struct(bo + "qIIQ")
    end = data_start
    index = pages
    scanned = 0
    while index > 0 and scanned < DESC_SCAN_LIMIT:
        first = max(0, index - 4096)
        block = read_at(table + first * PAGE_DESC_SIZE, (index - first) * PAGE_DESC_SIZE)
        for offset, size, _flags, _pflags in reversed(list(desc.iter_unpack(block))):
            end = max(end, offset + size)
            if offset > data_start:
                return end
        scanned += len(block)
        index = first
    return end
