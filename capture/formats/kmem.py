"""A crashed kernel's memory inside an ELF vmcore, by physical and by kernel virtual address.

:class:`PhysicalMemory` reads physical addresses through the PT_LOAD segments
(it holds only the file name and the segment table, so it can be handed to
worker processes; each process opens the file itself).
:class:`X86_64AddressSpace` translates kernel virtual addresses by walking the
crashed kernel's own page tables (4- or 5-level) from ``SYMBOL(init_top_pgt)``,
placed in physical memory with ``NUMBER(phys_base)``; this reaches the direct
map, the kernel image and the vmemmap alike.
"""
from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from capture.formats.elfcore import PT_LOAD, ElfCore
from capture.errors import DumpFormatError, KdumpError

START_KERNEL_MAP = 0xFFFFFFFF80000000
PAGE_PRESENT = 1 << 0
PAGE_PSE = 1 << 7
ENTRY_ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
U64 = (1 << 64) - 1
#: page-table pages kept in memory while walking (4 KiB each)
TABLE_CACHE = 256


class UnreadableMemory(DumpFormatError):
    """An address the vmcore does not hold, or a kernel virtual address that does not translate."""


@dataclass(frozen=True)
class Extent:
    """Physical ``[start, end)`` whose bytes are in the file at ``offset``; ``data_end`` is where file data stops."""
    start: int
    end: int
    offset: int
    data_end: int


def _extents(segments: Sequence[Tuple[int, int, int, int]]) -> List[Extent]:
    """Non-overlapping physical extents from (paddr, memsz, offset, filesz); earlier segments win overlaps."""
    out: List[Extent] = []
    for paddr, memsz, offset, filesz in segments:
        pieces = [(paddr, paddr + memsz)]
        for ext in out:
            nxt = []
            for s, e in pieces:
                if e <= ext.start or s >= ext.end:
                    nxt.append((s, e))
                    continue
                if s < ext.start:
                    nxt.append((s, ext.start))
                if e > ext.end:
                    nxt.append((ext.end, e))
            pieces = nxt
        for s, e in pieces:
            out.append(Extent(s, e, offset + (s - paddr), min(e, paddr + filesz)))
    return sorted(out, key=lambda x: x.start)


class PhysicalMemory:
    """Physical memory of the vmcore at ``path`` as its PT_LOAD segments describe it."""

    def __init__(self, path: str, segments: Sequence[Tuple[int, int, int, int]]) -> None:
        #: (paddr, memsz, file offset, filesz) of each PT_LOAD, in file order
        self.segments = [tuple(s) for s in segments]
        self.path = path
        self.extents = _extents(self.segments)
        self._starts = [e.start for e in self.extents]
        self._fd: Optional[int] = None

    @classmethod
    def from_core(cls, core: ElfCore, path: str) -> "PhysicalMemory":
        return cls(path, [(s.paddr, s.memsz, s.offset, s.filesz) for s in core.segments if s.type == PT_LOAD])

    def __getstate__(self) -> Dict[str, object]:
        return {"path": self.path, "segments": self.segments}

    def __setstate__(self, state: Dict[str, object]) -> None:
        self.__init__(state["path"], state["segments"])  # type: ignore[misc, arg-type]

    def _file(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise KdumpError(f"cannot open {self.path}: {exc.strerror}") from None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the vmcore file at ``offset`` (raises when the file is shorter)."""
        fd = self._file()
        parts = []
        want = size
        while want > 0:
            try:
                data = os.pread(fd, want, offset)
            except OSError as exc:
                raise KdumpError(f"cannot read {self.path}: {exc.strerror}") from None
            if not data:
                raise UnreadableMemory(f"{self.path}: truncated; {want} bytes missing at file offset {offset}")
            parts.append(data)
            offset += len(data)
            want -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def extent_of(self, paddr: int) -> Optional[Extent]:
        lo, hi = 0, len(self._starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._starts[mid] <= paddr:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return None
        ext = self.extents[lo - 1]
        return ext if paddr < ext.end else None

    def read(self, paddr: int, size: int, holes_as_zeros: bool = False) -> bytes:
        """``size`` bytes at physical address ``paddr``; memory without file data reads as zeros.

        An address outside every PT_LOAD raises :class:`UnreadableMemory`, or
        reads as zeros with ``holes_as_zeros``.
        """
        out = []
        while size > 0:
            ext = self.extent_of(paddr)
            if ext is None:
                if not holes_as_zeros:
                    raise UnreadableMemory(f"physical address {paddr:#x} is not in the dump")
                nxt = next((e.start for e in self.extents if e.start > paddr), paddr + size)
                n = min(size, nxt - paddr)
                out.append(bytes(n))
                paddr += n
                size -= n
                continue
            n = min(size, ext.end - paddr)
            in_file = max(0, min(n, ext.data_end - paddr))
            if in_file:
                out.append(self.pread(ext.offset + (paddr - ext.start), in_file))
            if n > in_file:
                out.append(bytes(n - in_file))
            paddr += n
            size -= n
        return out[0] if len(out) == 1 else b"".join(out)

    def max_pfn(self, page_size: int) -> int:
        """One past the highest page frame any PT_LOAD reaches (its last page counted when partial)."""
        end = max((e.end for e in self.extents), default=0)
        return (end + page_size - 1) // page_size

    def pfn_ranges(self, page_size: int) -> List[Tuple[int, int]]:
        """``[start, end)`` page frames present in the dump, as makedumpfile's first bitmap counts them
        (a segment's partial first page counts, its partial last page does not)."""
        return [(s.paddr // page_size, (s.paddr + s.memsz) // page_size) for s in
                (_Seg(*seg) for seg in self.segments)]

    def nodata_pfn_ranges(self, page_size: int) -> List[Tuple[int, int]]:
        """Page frames of segments whose file data stops early (p_filesz < p_memsz): not dumpable."""
        out = []
        for seg in (_Seg(*s) for s in self.segments):
            start = -(-(seg.paddr + seg.filesz) // page_size)
            end = -(-(seg.paddr + seg.memsz) // page_size)
            if start < end:
                out.append((start, end))
        return out


@dataclass(frozen=True)
class _Seg:
    paddr: int
    memsz: int
    offset: int
    filesz: int


class X86_64AddressSpace:
    """Kernel virtual addresses of a crashed x86_64 kernel, translated through its page tables."""

    def __init__(self, memory: PhysicalMemory, top_table_paddr: int, levels: int, sme_mask: int = 0) -> None:
        if levels not in (4, 5):
            raise DumpFormatError(f"x86_64 paging with {levels} levels is not supported")
        self.memory = memory
        self.top = top_table_paddr
        self.levels = levels
        self.address_mask = ENTRY_ADDRESS_MASK & ~sme_mask
        self._tables: "OrderedDict[int, bytes]" = OrderedDict()

    @classmethod
    def from_vmcoreinfo(cls, memory: PhysicalMemory, info: Dict[str, str],
                        kernel_segments: Sequence[Tuple[int, int]] = ()) -> "X86_64AddressSpace":
        """Find the top page table from VMCOREINFO (``SYMBOL(init_top_pgt)`` or ``swapper_pg_dir``,
        ``NUMBER(phys_base)``, ``NUMBER(pgtable_l5_enabled)``, ``NUMBER(sme_mask)``).

        ``kernel_segments`` are (vaddr, paddr) of PT_LOADs in the kernel image mapping, used to
        derive phys_base when VMCOREINFO lacks it.  Raises :class:`DumpFormatError` when the
        information is missing or malformed.
        """
        top_name = "SYMBOL(init_top_pgt)" if "SYMBOL(init_top_pgt)" in info else "SYMBOL(swapper_pg_dir)"
        top = _hex(info, top_name)
        if top is None:
            raise DumpFormatError("VMCOREINFO has neither SYMBOL(init_top_pgt) nor SYMBOL(swapper_pg_dir); "
                                  "kernel virtual addresses cannot be translated")
        phys_base = _dec(info, "NUMBER(phys_base)")
        if phys_base is None:
            for vaddr, paddr in kernel_segments:
                if vaddr >= START_KERNEL_MAP:
                    phys_base = paddr - (vaddr - START_KERNEL_MAP)
                    break
        if phys_base is None:
            raise DumpFormatError("VMCOREINFO has no NUMBER(phys_base) and no PT_LOAD maps the kernel image; "
                                  "the page tables cannot be located")
        if not START_KERNEL_MAP <= top < U64:
            raise DumpFormatError(f"VMCOREINFO {top_name}={top:#x} is not a kernel image address")
        l5 = _dec(info, "NUMBER(pgtable_l5_enabled)") or 0
        sme = (_dec(info, "NUMBER(sme_mask)") or 0) & U64
        paddr = (top - START_KERNEL_MAP + phys_base) & U64
        return cls(memory, paddr, 5 if l5 == 1 else 4, sme)

    def _table(self, paddr: int) -> bytes:
        table = self._tables.get(paddr)
        if table is None:
            table = self.memory.read(paddr, 4096)
            self._tables[paddr] = table
            if len(self._tables) > TABLE_CACHE:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(paddr)
        return table

    def translate(self, vaddr: int) -> Tuple[int, int]:
        """``(paddr, bytes left in this mapping)`` for the kernel virtual address ``vaddr``."""
        vaddr &= U64
        width = 57 if self.levels == 5 else 48
        top_bits = vaddr >> (width - 1)
        if top_bits not in (0, (1 << (65 - width)) - 1):
            raise UnreadableMemory(f"{vaddr:#x} is not a canonical address")
        table = self.top
        shift = 12 + 9 * self.levels
        for level in range(self.levels, 0, -1):
            shift -= 9
            index = (vaddr >> shift) & 0x1FF
            try:
                entry = struct.unpack_from("<Q", self._table(table), index * 8)[0]
            except UnreadableMemory:
                raise UnreadableMemory(f"{vaddr:#x}: the level-{level} page table at {table:#x} is not in the dump") \
                    from None
            if not entry & PAGE_PRESENT:
                raise UnreadableMemory(f"{vaddr:#x} is not mapped (level-{level} entry not present)")
            if level in (2, 3) and entry & PAGE_PSE:
                size = 1 << shift
                base = entry & self.address_mask & ~(size - 1)
                within = vaddr & (size - 1)
                return base + within, size - within
            table = entry & self.address_mask
        within = vaddr & 0xFFF
        return table + within, 4096 - within

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at the kernel virtual address ``vaddr``."""
        out = []
        while size > 0:
            paddr, left = self.translate(vaddr)
            n = min(size, left)
            out.append(self.memory.read(paddr, n))
            vaddr += n
            size -= n
        return out[0] if len(out) == 1 else b"".join(out)


def _hex(info: Dict[str, str], key: str) -> Optional[int]:
    value = info.get(key)
    if value is None:
        return None
    try:
        return int(value, 16)
    except ValueError:
        raise DumpFormatError(f"VMCOREINFO {key}={value!r} is not a hexadecimal address") from None


def _dec(info: Dict[str, str], key: str) -> Optional[int]:
    value = info.get(key)
    if value is None:
        return None
    try:
        return int(value, 0) if value.lower().startswith(("0x", "-0x")) else int(value)
    except ValueError:
        raise DumpFormatError(f"VMCOREINFO {key}={value!r} is not a number") from None
