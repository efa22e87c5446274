"""ELF core dumps of a whole kernel (``/proc/vmcore``, ``makedumpfile -E``).

:class:`ElfCore` reads the ELF header, the program headers and the PT_NOTE
notes (among them the VMCOREINFO note of ``KEY=VALUE`` lines) and nothing else
up front; memory is read on demand through the PT_LOAD segments' virtual
addresses.  Both byte orders are understood; only 64-bit ELF is.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from capture.errors import DumpFormatError, KdumpError
from capture.formats.readat import FileReader, ReadAt
from capture.formats.untrusted import MAX_TIME, bounded_int, printable

log = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EHDR_SIZE = 64
PHDR_SIZE = 56
#: notes larger than this are not believed (a real PT_NOTE of a big machine is a few MB); also
#: the limit of all PT_NOTE segments together
MAX_NOTES_SIZE = 64 << 20
#: more program headers than this are not believed (a real vmcore has a few hundred)
MAX_PHNUM = 1 << 20

#: e_machine -> architecture name; ppc64 is told apart by byte order
MACHINES = {3: "i386", 62: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x", 40: "arm",
            243: "riscv64", 258: "loongarch64", 8: "mips64"}

UTS_FIELD = 65
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

@dataclass(frozen=True)
class Segment:
    """One program header."""
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Note:
    """One ELF note: owner name (without the NUL), type, descriptor bytes."""
    name: str
    type: int
    desc: bytes


def parse_vmcoreinfo(text: bytes) -> Dict[str, str]:
    """``KEY=VALUE`` lines (VMCOREINFO note or kdump sub header block) -> dict; junk lines are skipped."""
    info: Dict[str, str] = {}
    for line in text.split(b"\0", 1)[0].decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            info[printable(key.strip())] = printable(value.strip(), 4096)
    return info


def split_utsname(raw: bytes) -> Dict[str, str]:
    """struct new_utsname (6 NUL-terminated fields of 65 bytes) -> dict."""
    out = {}
    for i, field in enumerate(UTS_FIELDS):
        chunk = raw[i * UTS_FIELD:(i + 1) * UTS_FIELD]
        out[field] = printable(chunk.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return out


class NotACoreError(DumpFormatError):
    """An ELF file that is not a core dump at all (a program, a library, ...)."""

    def __init__(self, message: str, e_type: int) -> None:
        super().__init__(message)
        self.e_type = e_type


class ElfCore:
    """A parsed ELF core dump; build it with :meth:`open` or :meth:`from_reader`.

    ``size`` is the size of the file (None when unknown, e.g. inside an lz4
    stream); ``expected_size`` is where the last segment's data ends, so a
    file shorter than that is truncated.
    """

    def __init__(self, name: str, read_at: ReadAt, size: Optional[int], machine: str, little_endian: bool,
                 segments: List[Segment], notes: List[Note]) -> None:
        self.name = name
        self._read_at = read_at
        self.size = size
        self.machine = machine
        self.little_endian = little_endian
        self.segments = segments
        self.notes = notes
        self._closer: Optional[Callable[[], None]] = None
        self.vmcoreinfo: Dict[str, str] = {}
        for note in notes:
            if note.name == "VMCOREINFO":
                self.vmcoreinfo = parse_vmcoreinfo(note.desc)
                break

    @classmethod
    def open(cls, path: str) -> "ElfCore":
        """Parse the ELF core at ``path``; the file stays open for :meth:`read_virtual` until :meth:`close`."""
        reader = FileReader(path)
        try:
            core = cls.from_reader(reader, reader.size, path)
        except BaseException:
            reader.close()
            raise
        core._closer = reader.close
        return core

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> "ElfCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_reader(cls, read_at: ReadAt, size: Optional[int], name: str) -> "ElfCore":
        """Parse the headers and notes of the ELF core that ``read_at`` reads."""
        ehdr = read_at(0, EHDR_SIZE)
        if not ehdr.startswith(ELF_MAGIC):
            raise DumpFormatError(f"{name} is not an ELF file")
        if len(ehdr) < EHDR_SIZE:
            raise DumpFormatError(f"{name}: truncated ELF header ({len(ehdr)} of {EHDR_SIZE} bytes)")
        if ehdr[4] == ELFCLASS32:
            raise DumpFormatError(f"{name}: 32-bit ELF cores are not supported")
        if ehdr[4] != ELFCLASS64 or ehdr[5] not in (ELFDATA2LSB, ELFDATA2MSB):
            raise DumpFormatError(f"{name}: unknown ELF class {ehdr[4]} / byte order {ehdr[5]}")
        little = ehdr[5] == ELFDATA2LSB
        bo = "<" if little else ">"
        (e_type, e_machine, _version, _entry, e_phoff, e_shoff, _flags, _ehsize, e_phentsize, e_phnum,
         e_shentsize, _shnum, _shstrndx) = struct.unpack_from(bo + "HHIQQQIHHHHHH", ehdr, 16)
        if e_type != ET_CORE:
            raise NotACoreError(f"{name} is an ELF file but not a core dump (e_type {e_type})", e_type)
        machine = MACHINES.get(e_machine, f"unknown (e_machine {e_machine})")
        if machine == "ppc64" and little:
            machine = "ppc64le"
        if e_phnum == PN_XNUM:
            shdr = read_at(e_shoff, 64)
            if len(shdr) < 64:
                raise DumpFormatError(f"{name}: truncated ELF section header 0 (needed for the segment count)")
            e_phnum = struct.unpack_from(bo + "I", shdr, 44)[0]
        if e_phnum == 0 or e_phentsize != PHDR_SIZE:
            raise DumpFormatError(f"{name}: ELF core without usable program headers "
                                  f"({e_phnum} headers of {e_phentsize} bytes)")
        if e_phnum > MAX_PHNUM:
            raise DumpFormatError(f"{name}: implausible number of ELF program headers ({e_phnum})")
        table_size = e_phnum * PHDR_SIZE
        if size is not None and e_phoff + table_size > size:
            raise DumpFormatError(f"{name}: truncated ELF program headers (need bytes {e_phoff}.."
                                  f"{e_phoff + table_size}, the file has {size})")
        table = read_at(e_phoff, table_size)
        if len(table) < table_size:
            raise DumpFormatError(f"{name}: truncated ELF program headers (need bytes {e_phoff}..{e_phoff + table_size}, "
                                  f"the file has {e_phoff + len(table)})")
        segments = []
        for i in range(e_phnum):
            p_type, _pflags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
                bo + "IIQQQQQQ", table, i * PHDR_SIZE)
            segments.append(Segment(p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz))
        notes: List[Note] = []
        notes_total = 0
        for seg in segments:
            if seg.type != PT_NOTE:
                continue
            notes_total += seg.filesz
            if notes_total > MAX_NOTES_SIZE:
                raise DumpFormatError(f"{name}: implausible PT_NOTE size {seg.filesz}")
            if size is not None and seg.offset + seg.filesz > size:
                raise DumpFormatError(f"{name}: truncated ELF notes (need bytes {seg.offset}.."
                                      f"{seg.offset + seg.filesz}, the file has {size})")
            data = read_at(seg.offset, seg.filesz)
            if len(data) < seg.filesz:
                raise DumpFormatError(f"{name}: truncated ELF notes (need bytes {seg.offset}..{seg.offset + seg.filesz}, "
                                      f"the file has {seg.offset + len(data)})")
            notes.extend(_parse_notes(data, bo))
        return cls(name, read_at, size, machine, little, segments, notes)

    # -- what the headers say ------------------------------------------------------------

    @property
    def loads(self) -> List[Segment]:
        return [s for s in self.segments if s.type == PT_LOAD]

    @property
    def osrelease(self) -> Optional[str]:
        return self.vmcoreinfo.get("OSRELEASE")

    @property
    def page_size(self) -> Optional[int]:
        return bounded_int(self.vmcoreinfo.get("PAGESIZE"), 1, 1 << 30)

    @property
    def crash_time(self) -> Optional[int]:
        """CRASHTIME from VMCOREINFO: seconds since the epoch, or None (also when not a plausible time)."""
        return bounded_int(self.vmcoreinfo.get("CRASHTIME"), 0, MAX_TIME)

    @property
    def memory_size(self) -> int:
        """Bytes of physical memory the PT_LOAD segments describe.

        The sum of p_memsz, except that physical ranges described twice count
        once: /proc/vmcore maps the kernel image both as its own segment and
        inside the direct map.
        """
        total = 0
        covered_to = -1
        for start, end in sorted((s.paddr, s.paddr + s.memsz) for s in self.loads):
            if end <= covered_to:
                continue
            total += end - max(start, covered_to)
            covered_to = end
        return total

    @property
    def memory_size_sum(self) -> int:
        """Plain sum of the PT_LOAD p_memsz (counts doubly mapped memory twice)."""
        return sum(s.memsz for s in self.loads)

    @property
    def expected_size(self) -> int:
        """Where the last segment's file data ends: max(p_offset + p_filesz)."""
        return max((s.offset + s.filesz for s in self.segments), default=EHDR_SIZE)

    @property
    def truncated(self) -> bool:
        """True when the file is known to be shorter than :attr:`expected_size`."""
        return self.size is not None and self.size < self.expected_size

    # -- memory ----------------------------------------------------------------------------

    def read_virtual(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes of the crashed kernel's memory at virtual address ``vaddr``.

        Uses the PT_LOAD segments' p_vaddr mapping (kernel text/data and the
        direct map).  Parts of a segment beyond its file data read as zeros.
        An address no segment maps, or data missing from a truncated file,
        raises :class:`DumpFormatError`.
        """
        out = bytearray()
        while size > 0:
            seg = self._segment_for(vaddr)
            if seg is None:
                raise DumpFormatError(f"{self.name}: virtual address {vaddr:#x} is not in the dump")
            within = vaddr - seg.vaddr
            n = min(size, seg.memsz - within)
            in_file = max(0, min(n, seg.filesz - within))
            if in_file:
                data = self._read_at(seg.offset + within, in_file)
                if len(data) < in_file:
                    raise DumpFormatError(f"{self.name}: truncated; the data for {vaddr:#x} is missing")
                out += data
            out += bytes(n - in_file)
            vaddr += n
            size -= n
        return bytes(out)

    def _segment_for(self, vaddr: int) -> Optional[Segment]:
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.memsz:
                return seg
        return None

    def utsname(self) -> Optional[Dict[str, str]]:
        """The crashed kernel's ``init_uts_ns.name`` (sysname, nodename, ...), or None if not found.

        Needs SYMBOL(init_uts_ns) in VMCOREINFO.  The offset of ``name`` in
        struct uts_namespace comes from OFFSET(uts_namespace.name) when the
        kernel exports it; otherwise the known layouts are tried (0 since
        Linux 5.11, 4 before: a struct kref came first).  A candidate is only
        accepted when sysname is "Linux" and release equals OSRELEASE.
        """
        symbol = self.vmcoreinfo.get("SYMBOL(init_uts_ns)")
        if not symbol:
            return None
        base = bounded_int(symbol, 0, (1 << 64) - 1, base=16)
        if base is None:
            return None
        exported = bounded_int(self.vmcoreinfo.get("OFFSET(uts_namespace.name)"), 0, 1 << 20)
        candidates = [exported] if exported is not None else [0, 4, 8]
        for offset in candidates:
            try:
                raw = self.read_virtual(base + offset, UTS_FIELD * len(UTS_FIELDS))
            except DumpFormatError as exc:
                log.debug("utsname at %#x: %s", base + offset, exc)
                continue
            uts = split_utsname(raw)
            if uts["sysname"] == "Linux" and (self.osrelease is None or uts["release"] == self.osrelease):
                return uts
        return None

    def nodename(self) -> Optional[str]:
        """The crashed kernel's host name (utsname nodename), or None when it cannot be found."""
        uts = self.utsname()
        return uts["nodename"] if uts else None


def _parse_notes(data: bytes, bo: str) -> List[Note]:
    notes = []
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(bo + "III", data, pos)
        if namesz == 0 and descsz == 0:
            break
        name_at = pos + 12
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(data):
            log.debug("note at %d runs past the PT_NOTE segment; ignoring the rest", pos)
            break
        name = data[name_at:name_at + namesz].split(b"\0", 1)[0].decode("ascii", "replace")
        notes.append(Note(name, ntype, data[desc_at:desc_at + descsz]))
        pos = end
    return notes


def _align4(n: int) -> int:
    return (n + 3) & ~3

