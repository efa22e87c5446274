"""Classifying every page frame of a vmcore like makedumpfile's dump levels.

The dump level is a bit mask of what to leave out: 1 pages full of zeros
(decided while writing, see :mod:`capture.formats.kdumpwriter`), 2 page cache
without private data, 4 page cache with or without it, 8 user process data
(anonymous pages and hugetlbfs pages), 16 free pages.  Pages are classified
from the crashed kernel's ``struct page`` array, found and read with nothing
but VMCOREINFO: ``mem_section`` (or ``SYMBOL(vmemmap)``) gives the array, the
kernel's page tables translate its virtual addresses (x86_64 only), and
``OFFSET(page.*)``, ``NUMBER(PG_*)`` and the ``*_MAPCOUNT_VALUE`` page types
say what each page is.

The rules are makedumpfile's (``__exclude_unnecessary_pages``), with one
deliberate difference: a slab page is never user data.  Since Linux 6.10 a
slab page is marked by its ``page_type`` (``NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)``)
instead of ``PG_slab``, and the word where an anonymous page keeps its
``PAGE_MAPPING_ANON`` bit holds slab bookkeeping, so a classifier that looks
only at that bit (makedumpfile 1.7.2) throws live slab pages away.  When
VMCOREINFO allows no way to tell slab pages apart, user data is not excluded
at all.  Any other page that carries a page type (buddy, page table,
offline, ...) is never user data either.

Work is done one chunk of :data:`CHUNK_PAGES` page frames at a time with
whole-chunk byte operations (``bytes.translate`` and big-integer logic), so a
terabyte of memory costs a few megabytes of bitmaps and no per-page Python
objects.
"""
from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from capture.formats.dumplevel import CACHE, CACHE_PRIVATE, FREE, USER, ZERO
from capture.formats.elfcore import PT_LOAD, ElfCore
from capture.errors import DumpFormatError
from capture.formats.kmem import PhysicalMemory, UnreadableMemory, X86_64AddressSpace

log = logging.getLogger(__name__)

KEEP = 0
HWPOISON = 32
OFFLINE = 64

CLASS_NAMES = {CACHE: "cache", CACHE_PRIVATE: "cache with private data", USER: "user data", FREE: "free",
               HWPOISON: "hardware-poisoned", OFFLINE: "offline"}

#: page frames classified at once (a quarter of a 4 KiB bitmap block): their struct pages
#: (512 KiB) and what is derived from them are the classification's peak memory, which
#: the capture kernel's small reservation must hold; 32768 took 3 MB more and was no faster
CHUNK_PAGES = 8192
#: low bits of mem_section.section_mem_map that are flags, not address
SECTION_MAP_FLAG_BITS = 6
SECTION_MARKED_PRESENT = 1
PAGE_MAPPING_ANON = 1
#: a buddy order at or above this is not believed when VMCOREINFO has no LENGTH(zone.free_area)
FALLBACK_MAX_ORDER = 20
#: a compound order at or above this is not believed (1 GiB pages are order 18 with 4 KiB pages)
MAX_COMPOUND_ORDER = 30
PAGE_TYPE_NAMES = ("BUDDY", "SLAB", "HUGETLB", "OFFLINE", "UNACCEPTED", "TABLE", "GUARD", "ZSMALLOC")


class PageClassError(DumpFormatError):
    """VMCOREINFO or the dump does not allow pages to be classified."""


# -- whole-chunk byte helpers -------------------------------------------------------------

_BIT = [bytes((x >> j) & 1 for x in range(256)) for j in range(8)]
_SHIFT_IN = [bytes((1 << k) if x else 0 for x in range(256)) for k in range(8)]
_TYPED_BYTE = bytes(1 if 0xF0 <= x <= 0xFE else 0 for x in range(256))
_EQ: Dict[int, bytes] = {}


def _eq_table(value: int) -> bytes:
    table = _EQ.get(value)
    if table is None:
        table = _EQ[value] = bytes(1 if x == value else 0 for x in range(256))
    return table


def unpack_bits(bitmap: bytes) -> bytes:
    """One byte (0 or 1) per bit of ``bitmap``, least significant bit first."""
    out = bytearray(len(bitmap) * 8)
    for k in range(8):
        out[k::8] = bitmap.translate(_BIT[k])
    return bytes(out)


def pack_bits(flags: bytes) -> bytes:
    """The inverse of :func:`unpack_bits` (any nonzero byte is a set bit); ``len(flags)`` a multiple of 8."""
    acc = 0
    for k in range(8):
        acc |= int.from_bytes(flags[k::8].translate(_SHIFT_IN[k]), "little")
    return acc.to_bytes(len(flags) // 8, "little")


def _ints(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _positions(flags: bytes) -> Iterator[int]:
    """Indexes of the nonzero bytes of a 0/1 byte string."""
    find = flags.find
    i = find(1)
    while i >= 0:
        yield i
        i = find(1, i + 1)


# -- what VMCOREINFO says -----------------------------------------------------------------

class _Info:
    """Typed, validated access to VMCOREINFO values; every problem is a :class:`PageClassError`."""

    def __init__(self, info: Mapping[str, str]) -> None:
        self.raw = info

    def _get(self, key: str) -> Optional[str]:
        value = self.raw.get(key)
        return None if value is None else str(value).strip()

    def number(self, key: str, low: int, high: int) -> Optional[int]:
        value = self._get(key)
        if value is None:
            return None
        try:
            n = int(value, 16) if value.lower().startswith(("0x", "-0x")) else int(value, 10)
        except ValueError:
            raise PageClassError(f"VMCOREINFO {key}={value!r} is not a number") from None
        if not low <= n <= high:
            raise PageClassError(f"VMCOREINFO {key}={value} is out of range ({low}..{high})")
        return n

    def address(self, key: str) -> Optional[int]:
        value = self._get(key)
        if value is None:
            return None
        try:
            n = int(value, 16)
        except ValueError:
            raise PageClassError(f"VMCOREINFO {key}={value!r} is not a hexadecimal address") from None
        if not 0 < n < (1 << 64):
            raise PageClassError(f"VMCOREINFO {key}={value} is not a 64-bit address")
        return n

    def required(self, key: str, low: int, high: int) -> int:
        n = self.number(key, low, high)
        if n is None:
            raise PageClassError(f"VMCOREINFO has no {key}; pages cannot be classified")
        return n


def kernel_version(osrelease: Optional[str]) -> Tuple[int, int, int]:
    """(major, minor, patch) of an OSRELEASE like ``6.1.0-56-cloud-amd64``; (0, 0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", osrelease or "")
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class PageLayout:
    """Everything the classifier takes from VMCOREINFO, checked for sanity.

    Optional fields are None when the kernel does not export them; the
    classifier then skips the test that needs them, always towards keeping a
    page (``notes`` says what was skipped).
    """
    page_size: int
    struct_size: int
    off_flags: int
    off_mapping: int
    off_mapcount: Optional[int]
    off_private: Optional[int]
    off_compound_head: Optional[int]
    pg_lru: int
    pg_private: Optional[int]
    pg_swapcache: Optional[int]
    pg_swapbacked: Optional[int]
    pg_slab: Optional[int]
    pg_hwpoison: Optional[int]
    pg_head: Optional[int]
    pg_hugetlb: Optional[int]
    #: page type name ("BUDDY", "SLAB", ...) -> 32-bit value of page_type/_mapcount
    page_types: Dict[str, int]
    #: True for the one-byte page type of Linux 6.12 and later (type in bits 24..31, the rest free)
    type_in_top_byte: bool
    #: offset inside the first tail page of the byte holding the compound order (folio._flags_1 & 0xff
    #: is the low byte of its flags word), or None when unknown
    order_offset: Optional[int]
    #: (offset inside the first tail page, value) of a hugetlb compound_dtor, or None
    hugetlb_dtor: Optional[Tuple[int, int]]
    #: buddy orders are below this (LENGTH(zone.free_area), or FALLBACK_MAX_ORDER when not exported)
    max_free_order: int
    #: LENGTH(zone.free_area) as exported (unaccepted pages come in blocks of its largest order)
    free_area_length: Optional[int]
    section_size_bits: int
    max_physmem_bits: int
    mem_section: Optional[int]
    mem_section_length: int
    mem_section_size: int
    off_section_mem_map: int
    vmemmap: Optional[int]
    notes: Tuple[str, ...] = ()

    @property
    def can_tell_slab(self) -> bool:
        return self.pg_slab is not None or ("SLAB" in self.page_types and self.off_mapcount is not None)

    @property
    def can_find_buddies(self) -> bool:
        return "BUDDY" in self.page_types and self.off_mapcount is not None and self.off_private is not None

    @classmethod
    def from_vmcoreinfo(cls, info: Mapping[str, str]) -> "PageLayout":
        """Read and check the layout; raises :class:`PageClassError` with the offending key."""
        v = _Info(info)
        page_size = v.required("PAGESIZE", 1024, 1 << 20)
        if page_size & (page_size - 1):
            raise PageClassError(f"VMCOREINFO PAGESIZE={page_size} is not a power of two")
        size = v.required("SIZE(page)", 16, 1024)

        def offset(name: str, width: int, required: bool = False) -> Optional[int]:
            key = f"OFFSET(page.{name})"
            off = (v.required if required else v.number)(key, 0, size - width)
            return off

        def bit(name: str) -> Optional[int]:
            return v.number(f"NUMBER({name})", 0, 63)

        notes: List[str] = []
        off_flags = offset("flags", 8, True)
        off_mapping = offset("mapping", 8, True)
        off_mapcount = offset("_mapcount", 4)
        if off_mapcount is None:
            off_mapcount = offset("page_type", 4)
        off_private = offset("private", 8)
        off_head = offset("compound_head", 8)
        if off_head is None:  # renamed in Linux 7.1
            off_head = offset("compound_info", 8)
        pg_lru = v.number("NUMBER(PG_lru)", 0, 63)
        if pg_lru is None:
            raise PageClassError("VMCOREINFO has no NUMBER(PG_lru); pages cannot be classified")
        head_mask = v.number("NUMBER(PG_head_mask)", 1, (1 << 64) - 1)
        if head_mask is not None and head_mask & (head_mask - 1):
            raise PageClassError(f"VMCOREINFO NUMBER(PG_head_mask)={head_mask} is not a single bit")
        pg_head = head_mask.bit_length() - 1 if head_mask else None

        page_types: Dict[str, int] = {}
        for name in PAGE_TYPE_NAMES:
            value = v.number(f"NUMBER(PAGE_{name}_MAPCOUNT_VALUE)", -(1 << 31), (1 << 32) - 1)
            if value is not None:
                page_types[name] = value & 0xFFFFFFFF
        type_in_top_byte = bool(page_types) and all(t & 0x00FFFFFF == 0 and t >> 24 >= 0xF0
                                                    for t in page_types.values())

        version = kernel_version(v._get("OSRELEASE"))
        struct_end = size - 1
        order_offset: Optional[int] = None
        hugetlb_dtor: Optional[Tuple[int, int]] = None
        if "HUGETLB" in page_types or v.number("NUMBER(PG_hugetlb)", 0, 63) is not None:
            order_offset = off_flags
        else:
            folio_order = v.number("OFFSET(folio._folio_order)", size, 2 * size - 1)
            order_off = (folio_order - size) if folio_order is not None else \
                v.number("OFFSET(page.compound_order)", 0, struct_end)
            if order_off is not None and version >= (4, 16, 0):
                order_offset = order_off
            dtor_value = v.number("NUMBER(HUGETLB_PAGE_DTOR)", 0, 255)
            folio_dtor = v.number("OFFSET(folio._folio_dtor)", size, 2 * size - 1)
            dtor_off = (folio_dtor - size) if folio_dtor is not None else \
                v.number("OFFSET(page.compound_dtor)", 0, struct_end)
            if dtor_off is not None and dtor_value is not None:
                hugetlb_dtor = (dtor_off, dtor_value)
        if order_offset is None:
            notes.append("compound page orders unknown: only head pages of large folios are classified")

        free_len = v.number("LENGTH(zone.free_area)", 1, 64)
        ssb = v.required("NUMBER(SECTION_SIZE_BITS)", max(20, page_size.bit_length() - 1), 46)
        mpb = v.required("NUMBER(MAX_PHYSMEM_BITS)", ssb + 1, 60)
        mem_section = v.address("SYMBOL(mem_section)")
        vmemmap = v.address("SYMBOL(vmemmap)")
        ms_size = v.number("SIZE(mem_section)", 8, 256) or 16
        ms_off = v.number("OFFSET(mem_section.section_mem_map)", 0, ms_size - 8) or 0
        ms_len = v.number("LENGTH(mem_section)", 1, 1 << (mpb - ssb)) or 0
        if mem_section is None and vmemmap is None:
            raise PageClassError("VMCOREINFO has neither SYMBOL(mem_section) nor SYMBOL(vmemmap); "
                                 "the struct page array cannot be found")
        if mem_section is not None and ms_len == 0 and vmemmap is None:
            raise PageClassError("VMCOREINFO has SYMBOL(mem_section) but no LENGTH(mem_section)")

        layout = cls(page_size=page_size, struct_size=size, off_flags=off_flags, off_mapping=off_mapping,
                     off_mapcount=off_mapcount, off_private=off_private, off_compound_head=off_head,
                     pg_lru=pg_lru, pg_private=bit("PG_private"), pg_swapcache=bit("PG_swapcache"),
                     pg_swapbacked=bit("PG_swapbacked"), pg_slab=bit("PG_slab"), pg_hwpoison=bit("PG_hwpoison"),
                     pg_head=pg_head, pg_hugetlb=bit("PG_hugetlb"), page_types=page_types,
                     type_in_top_byte=type_in_top_byte, order_offset=order_offset, hugetlb_dtor=hugetlb_dtor,
                     max_free_order=free_len if free_len is not None else FALLBACK_MAX_ORDER,
                     free_area_length=free_len,
                     section_size_bits=ssb, max_physmem_bits=mpb, mem_section=mem_section,
                     mem_section_length=ms_len, mem_section_size=ms_size, off_section_mem_map=ms_off,
                     vmemmap=vmemmap)
        if off_head is None and pg_head is not None:
            notes.append("VMCOREINFO has no OFFSET(page.compound_head): tail pages are classified on their own")
        if not layout.can_tell_slab:
            notes.append("VMCOREINFO tells slab pages neither by PG_slab nor by page type: user data is kept")
        if not layout.can_find_buddies:
            notes.append("VMCOREINFO does not mark buddy pages (PAGE_BUDDY_MAPCOUNT_VALUE, _mapcount, private): "
                         "free pages are kept")
        if notes:
            layout = _replace_notes(layout, tuple(notes))
        return layout


def _replace_notes(layout: PageLayout, notes: Tuple[str, ...]) -> PageLayout:
    values = {f: getattr(layout, f) for f in layout.__dataclass_fields__}
    values["notes"] = notes
    return PageLayout(**values)


# -- where the struct pages are -------------------------------------------------------------

class MemMap:
    """Page frame number -> address of its ``struct page``, section by section (SPARSEMEM)."""

    def __init__(self, layout: PageLayout, bases: Dict[int, int], pfns_per_section: int) -> None:
        self.layout = layout
        #: section number -> base such that struct page of pfn is at base + pfn * SIZE(page)
        self.bases = bases
        self.pfns_per_section = pfns_per_section

    @property
    def end_pfn(self) -> int:
        """One past the last page frame with a struct page (0 when none)."""
        return (max(self.bases) + 1) * self.pfns_per_section if self.bases else 0

    @classmethod
    def read(cls, aspace: X86_64AddressSpace, layout: PageLayout, max_pfn: int) -> "MemMap":
        page_shift = layout.page_size.bit_length() - 1
        per_section = 1 << (layout.section_size_bits - page_shift)
        nr_sections = -(-max_pfn // per_section)
        bases: Dict[int, int] = {}
        if layout.mem_section is not None and layout.mem_section_length:
            try:
                bases = cls._from_mem_section(aspace, layout, nr_sections, per_section)
            except UnreadableMemory as exc:
                if layout.vmemmap is None:
                    raise PageClassError(f"cannot read the mem_section array: {exc}") from None
                log.debug("mem_section unreadable (%s); using SYMBOL(vmemmap)", exc)
        if not bases and layout.vmemmap is not None:
            bases = {nr: layout.vmemmap for nr in range(nr_sections)}
        if not bases:
            raise PageClassError("mem_section marks no memory section present; the struct page array "
                                 "cannot be found")
        if layout.vmemmap is not None and any(b != layout.vmemmap for b in bases.values()):
            log.debug("mem_section disagrees with SYMBOL(vmemmap)=%#x; following mem_section", layout.vmemmap)
        return cls(layout, bases, per_section)

    @staticmethod
    def _from_mem_section(aspace: X86_64AddressSpace, layout: PageLayout, nr_sections: int,
                          per_section: int) -> Dict[int, int]:
        size = layout.mem_section_size
        per_root = layout.page_size // size
        total_sections = 1 << (layout.max_physmem_bits - layout.section_size_bits)
        extreme = per_root > 0 and layout.mem_section_length == -(-total_sections // per_root)
        mask = ~((1 << SECTION_MAP_FLAG_BITS) - 1) & ((1 << 64) - 1)
        wanted = min(nr_sections, total_sections)
        roots: List[Tuple[int, int]] = []
        if extreme:
            nr_roots = min(layout.mem_section_length, -(-wanted // per_root))
            table = aspace.read(layout.mem_section, nr_roots * 8)
            for i, (ptr,) in enumerate(struct.iter_unpack("<Q", table)):
                if ptr:
                    roots.append((i * per_root, ptr))
        else:
            per_root = min(wanted, layout.mem_section_length)
            roots.append((0, layout.mem_section))
        bases: Dict[int, int] = {}
        for first, ptr in roots:
            count = min(per_root, wanted - first)
            if count <= 0:
                continue
            try:
                entries = aspace.read(ptr, count * size)
            except UnreadableMemory as exc:
                log.debug("mem_section root for sections %d..: %s", first, exc)
                continue
            for i in range(count):
                word = struct.unpack_from("<Q", entries, i * size + layout.off_section_mem_map)[0]
                coded = word & mask
                if word & SECTION_MARKED_PRESENT and coded:
                    bases[first + i] = coded
        return bases

    def struct_pages(self, aspace: X86_64AddressSpace, start_pfn: int, count: int) -> Tuple[bytes, int]:
        """``(raw, unreadable)``: the struct pages of ``count`` frames from ``start_pfn`` (zeros where
        there is none or it cannot be read) and how many frames had an unreadable struct page."""
        size = self.layout.struct_size
        section = start_pfn // self.pfns_per_section
        base = self.bases.get(section)
        if base is not None and start_pfn + count <= (section + 1) * self.pfns_per_section:
            try:  # the common case, one section: no copy
                return aspace.read((base + start_pfn * size) & ((1 << 64) - 1), count * size), 0
            except UnreadableMemory:
                pass  # frame by frame below, which logs it
        out = bytearray(count * size)
        unreadable = 0
        pfn = start_pfn
        end = start_pfn + count
        while pfn < end:
            section = pfn // self.pfns_per_section
            stop = min(end, (section + 1) * self.pfns_per_section)
            base = self.bases.get(section)
            if base is not None:
                vaddr = (base + pfn * size) & ((1 << 64) - 1)
                try:
                    out[(pfn - start_pfn) * size:(stop - start_pfn) * size] = aspace.read(vaddr, (stop - pfn) * size)
                except UnreadableMemory as exc:
                    log.debug("struct pages of pfn %d..%d: %s", pfn, stop, exc)
                    unreadable += stop - pfn
            pfn = stop
        return bytes(out), unreadable


# -- the classifier --------------------------------------------------------------------------

@dataclass
class ClassCounts:
    """Page frames per class (only frames present in the dump are counted)."""
    by_class: Dict[int, int] = field(default_factory=lambda: {c: 0 for c in CLASS_NAMES})
    unreadable_struct_pages: int = 0

    def add(self, codes: bytes) -> None:
        for c in self.by_class:
            self.by_class[c] += codes.count(c)


class PageClassifier:
    """Classifies page frames of one vmcore; build it with :meth:`open`."""

    def __init__(self, layout: PageLayout, aspace: X86_64AddressSpace, memmap: MemMap) -> None:
        self.layout = layout
        self.aspace = aspace
        self.memmap = memmap
        self.counts = ClassCounts()

    @classmethod
    def open(cls, core: ElfCore, memory: PhysicalMemory) -> "PageClassifier":
        """Read the layout, the page tables and the mem_section array; :class:`PageClassError` when the
        vmcore's architecture or VMCOREINFO does not allow classification."""
        if core.machine != "x86_64" or not core.little_endian:
            raise PageClassError(f"classifying pages of a {core.machine} kernel is not supported (x86_64 only)")
        layout = PageLayout.from_vmcoreinfo(core.vmcoreinfo)
        kernel_segments = [(s.vaddr, s.paddr) for s in core.segments if s.type == PT_LOAD]
        try:
            aspace = X86_64AddressSpace.from_vmcoreinfo(memory, core.vmcoreinfo, kernel_segments)
        except DumpFormatError as exc:
            raise PageClassError(str(exc)) from None
        memmap = MemMap.read(aspace, layout, memory.max_pfn(layout.page_size))
        return cls(layout, aspace, memmap)

    def classify(self, start_pfn: int, end_pfn: int,
                 present: Optional[Callable[[int, int], bytes]] = None) -> Iterator[Tuple[int, bytearray]]:
        """Yield ``(first_pfn, codes)`` for ``[start_pfn, end_pfn)`` in ascending chunks of at most
        :data:`CHUNK_PAGES`; ``codes`` holds one class (KEEP, CACHE, ...) per frame.

        Chunks must be consumed in order: a compound page or a free block that
        starts in one chunk carries its class into the next.  ``present(first_pfn,
        count)`` gives one byte (0 or 1) per frame telling whether the dump holds
        it; like makedumpfile, a compound page or free block is only followed
        from a head the dump holds.
        """
        carry_end, carry_code = start_pfn, KEEP
        pfn = start_pfn
        while pfn < end_pfn:
            n = min(CHUNK_PAGES - pfn % CHUNK_PAGES, end_pfn - pfn)
            raw, unreadable = self.memmap.struct_pages(self.aspace, pfn, n)
            self.counts.unreadable_struct_pages += unreadable
            held = present(pfn, n) if present is not None else None
            codes, carry_end, carry_code = self._chunk(raw, pfn, n, carry_end, carry_code, held)
            yield pfn, codes
            pfn += n

    def _chunk(self, raw: bytes, base: int, n: int, carry_end: int, carry_code: int,
               held: Optional[bytes]) -> Tuple[bytearray, int, int]:
        L = self.layout
        S = L.struct_size
        ones = _ints(b"\x01" * n)

        def column(offset: int) -> bytes:
            return raw[offset::S]

        def flag(bit: Optional[int]) -> int:
            if bit is None:
                return 0
            return _ints(column(L.off_flags + bit // 8).translate(_BIT[bit % 8]))

        def page_type(name: str) -> int:
            value = L.page_types.get(name)
            if value is None or L.off_mapcount is None:
                return 0
            if L.type_in_top_byte:
                return _ints(column(L.off_mapcount + 3).translate(_eq_table(value >> 24)))
            acc = ones
            for k in range(4):
                acc &= _ints(column(L.off_mapcount + k).translate(_eq_table((value >> (8 * k)) & 0xFF)))
            return acc

        lru = flag(L.pg_lru)
        private = flag(L.pg_private) if L.pg_private is not None else ones
        swapcache = flag(L.pg_swapcache)
        swapbacked = flag(L.pg_swapbacked) if L.pg_swapbacked is not None else ones
        cache = lru | (swapcache & swapbacked)
        head = flag(L.pg_head)
        tail = _ints(column(L.off_compound_head).translate(_BIT[0])) if L.off_compound_head is not None else 0
        anon = _ints(column(L.off_mapping).translate(_BIT[0]))
        slab = flag(L.pg_slab) | page_type("SLAB")
        hugetlb = page_type("HUGETLB")
        if L.pg_hugetlb is not None:
            hugetlb |= _ints((column(S + L.off_flags + L.pg_hugetlb // 8) + b"\0").translate(_BIT[L.pg_hugetlb % 8]))
        if L.hugetlb_dtor is not None:
            off, value = L.hugetlb_dtor
            hugetlb |= _ints((column(S + off) + b"\0").translate(_eq_table(value)))
        hugetlb &= head
        typed = 0
        if L.type_in_top_byte and L.off_mapcount is not None:
            typed = _ints(column(L.off_mapcount + 3).translate(_TYPED_BYTE))
        buddy = page_type("BUDDY") & ~slab if L.can_find_buddies else 0
        unaccepted = page_type("UNACCEPTED")
        offline = page_type("OFFLINE") & ~slab
        hwpoison = flag(L.pg_hwpoison)
        anon &= ~slab & ~(typed & ~hugetlb)

        rem = ones & ~tail
        free = (buddy | unaccepted) & rem
        rem ^= free
        cache_np = cache & ~private & ~anon & rem
        rem ^= cache_np
        cache_p = cache & ~anon & rem
        rem ^= cache_p
        user = (anon | hugetlb) & rem if L.can_tell_slab else 0
        rem ^= user
        poisoned = hwpoison & rem
        rem ^= poisoned
        off_line = offline & rem
        total = (free * FREE + cache_np * CACHE + cache_p * CACHE_PRIVATE + user * USER
                 + poisoned * HWPOISON + off_line * OFFLINE)
        codes = bytearray(total.to_bytes(n, "little"))

        skip = 0
        if carry_end > base:
            skip = min(carry_end - base, n)
            codes[:skip] = bytes([carry_code]) * skip
        ranged = free | (head & (cache_np | cache_p | user | poisoned | off_line))
        if not ranged:
            return codes, carry_end, carry_code
        buddy_b = buddy.to_bytes(n, "little") if buddy else b""
        unacc_b = unaccepted.to_bytes(n, "little") if unaccepted else b""
        for i in _positions(ranged.to_bytes(n, "little")):
            if i < skip or (held is not None and not held[i]):
                continue
            code = codes[i]
            if buddy_b and buddy_b[i]:
                order = struct.unpack_from("<Q", raw, i * S + L.off_private)[0]  # type: ignore[operator]
                if order >= L.max_free_order:
                    codes[i] = KEEP
                    continue
            elif unacc_b and unacc_b[i]:
                order = L.free_area_length - 1 if L.free_area_length else 0
            else:
                order = self._compound_order(raw, i, n, base + i)
            if not order:
                continue
            end = i + (1 << order)
            if end > n:
                carry_end, carry_code = base + end, code
                end = n
            codes[i:end] = bytes([code]) * (end - i)
            skip = end
        return codes, carry_end, carry_code

    def _compound_order(self, raw: bytes, i: int, n: int, pfn: int) -> int:
        """Order of the compound page whose head is frame ``i`` of the chunk (0 when unknown or invalid)."""
        L = self.layout
        if L.order_offset is None or i + 1 >= n:
            return 0
        order = raw[(i + 1) * L.struct_size + L.order_offset]
        if order >= MAX_COMPOUND_ORDER or pfn & ((1 << order) - 1):
            return 0
        return order


# -- bitmaps ---------------------------------------------------------------------------------

def exclusion_table(dump_level: int, layout: Optional[PageLayout]) -> bytes:
    """``codes.translate(table)``: 1 for the classes ``dump_level`` leaves out, else 0.

    Hardware-poisoned and offline pages are left out whenever makedumpfile
    would look at struct pages at all: for levels with any of the bits 2, 4,
    8, 16, and on kernels exporting PG_hwpoison.
    """
    excluded = set()
    if dump_level & (CACHE | CACHE_PRIVATE):
        excluded.add(CACHE)
    if dump_level & CACHE_PRIVATE:
        excluded.add(CACHE_PRIVATE)
    if dump_level & USER:
        excluded.add(USER)
    if dump_level & FREE:
        excluded.add(FREE)
    scans = bool(dump_level & (CACHE | CACHE_PRIVATE | USER | FREE)) or (
        layout is not None and layout.pg_hwpoison is not None)
    if scans:
        excluded.update((HWPOISON, OFFLINE))
    return bytes(1 if x in excluded else 0 for x in range(256))


@dataclass
class Bitmaps:
    """makedumpfile's two page bitmaps, one bit per frame, least significant bit first, each
    ``size`` bytes (a whole number of pages).

    The 1st bitmap (frames the vmcore holds) follows from the PT_LOAD
    segments, so only its ``ranges`` are kept and :meth:`present_pieces`
    renders it; ``dumpable`` (the 2nd, the frames written) is held whole:
    32 MiB for a terabyte of 4 KiB pages.
    """
    max_mapnr: int
    size: int
    ranges: List[Tuple[int, int]]
    dumpable: bytearray
    counts: ClassCounts
    notes: Tuple[str, ...] = ()

    @property
    def num_dumpable(self) -> int:
        return popcount(self.dumpable)

    @property
    def pages_present(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def is_dumpable(self, pfn: int) -> bool:
        return bool(self.dumpable[pfn >> 3] >> (pfn & 7) & 1)

    def present_pieces(self, piece: int = 1 << 20) -> Iterator[bytes]:
        """The 1st bitmap in consecutive pieces of at most ``piece`` bytes."""
        for lo in range(0, self.size, piece):
            hi = min(self.size, lo + piece)
            out = bytearray(hi - lo)
            for start, end in self.ranges:
                start, end = max(start, lo * 8), min(end, hi * 8)
                if start < end:
                    _fill(out, start - lo * 8, end - lo * 8, True)
            yield bytes(out)


def popcount(bitmap: "bytes | bytearray") -> int:
    """Number of set bits."""
    step = 1 << 16
    return sum(bin(int.from_bytes(bitmap[i:i + step], "little")).count("1") for i in range(0, len(bitmap), step))


def bitmap_bytes(max_mapnr: int, page_size: int) -> int:
    """Size of one bitmap: enough bits for ``max_mapnr`` frames, rounded up to whole pages."""
    return -(-(-(-max_mapnr // 8)) // page_size) * page_size


def _merged(ranges: List[Tuple[int, int]], limit: int) -> List[Tuple[int, int]]:
    out: List[Tuple[int, int]] = []
    for start, end in sorted((s, min(e, limit)) for s, e in ranges):
        if start >= end:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def build_bitmaps(memory: PhysicalMemory, page_size: int, dump_level: int,
                  classifier: Optional[PageClassifier], progress: Optional[object] = None) -> Bitmaps:
    """The two bitmaps for ``dump_level``; without a classifier only memory holes (and pages without
    file data) are left out."""
    max_mapnr = memory.max_pfn(page_size)
    if classifier is not None and classifier.memmap.end_pfn:
        max_mapnr = min(max_mapnr, classifier.memmap.end_pfn)
    size = bitmap_bytes(max_mapnr, page_size)
    ranges = _merged(memory.pfn_ranges(page_size), max_mapnr)
    dumpable = bytearray(size)
    for start, end in ranges:
        _fill(dumpable, start, end, True)
    for start, end in memory.nodata_pfn_ranges(page_size):
        _fill(dumpable, start, min(end, max_mapnr), False)
    counts = classifier.counts if classifier is not None else ClassCounts()
    if classifier is None:
        return Bitmaps(max_mapnr, size, ranges, dumpable, counts)
    table = exclusion_table(dump_level, classifier.layout)
    total = max(1, max_mapnr)
    def held(first: int, n: int) -> bytes:
        return unpack_bits(bytes(dumpable[first // 8:first // 8 + -(-n // 8)]))[:n]

    for first, codes in classifier.classify(0, max_mapnr, held):
        n = len(codes)
        lo = first // 8
        span = -(-n // 8)
        here = held(first, n)
        present_codes = (_ints(bytes(codes)) & (_ints(here) * 0xFF)).to_bytes(n, "little")
        counts.add(present_codes)
        excluded = _ints(present_codes.translate(table))
        keep = (_ints(here) & ~excluded).to_bytes(n, "little") + bytes(span * 8 - n)
        dumpable[lo:lo + span] = pack_bits(keep)
        if progress is not None:
            report_progress(progress, "Excluding unnecessary pages", 100.0 * (first + n) / total)
    return Bitmaps(max_mapnr, size, ranges, dumpable, counts, classifier.layout.notes)


def report_progress(progress: object, phase: str, percent: float) -> None:
    """Set ``phase`` and ``percent`` on a progress object and let it report (any object with those)."""
    setattr(progress, "phase", phase)
    setattr(progress, "percent", percent)
    report = getattr(progress, "maybe_report", None)
    if report is not None:
        report()


def _fill(bitmap: bytearray, start: int, end: int, value: bool) -> None:
    if start >= end:
        return
    first_full = -(-start // 8)
    last_full = end // 8
    if first_full >= last_full:
        for pfn in range(start, end):
            _put(bitmap, pfn, value)
        return
    for pfn in range(start, first_full * 8):
        _put(bitmap, pfn, value)
    bitmap[first_full:last_full] = (b"\xff" if value else b"\0") * (last_full - first_full)
    for pfn in range(last_full * 8, end):
        _put(bitmap, pfn, value)


def _put(bitmap: bytearray, pfn: int, value: bool) -> None:
    if value:
        bitmap[pfn >> 3] |= 1 << (pfn & 7)
    else:
        bitmap[pfn >> 3] &= ~(1 << (pfn & 7)) & 0xFF
