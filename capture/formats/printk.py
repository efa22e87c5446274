"""The crashed kernel's log (what ``dmesg`` showed), read straight from an ELF vmcore.

:func:`extract_dmesg` needs nothing but the dump: the VMCOREINFO note names
the printk symbols and exports the offsets and sizes of the structures, and
the memory is read through the PT_LOAD segments (:meth:`ElfCore.read_virtual`).
Two layouts are understood:

- the lockless ring buffer ``prb`` (Linux 5.10 and later): a descriptor ring,
  an info array and a text data ring;
- the older ``log_buf`` of variable-length ``struct printk_log`` records
  (Linux 3.5 to 5.9; the structure was called ``log`` before 3.11).

The output is byte for byte what ``makedumpfile --dump-dmesg`` writes: one
``[sssss.uuuuuu] text`` line per record, a newline inside a record followed
by as many spaces as the prefix is wide, ``\\t \\v \\f \\r`` and printable
ASCII kept, every other byte written as ``\\xNN``, and bytes of 0x80 and above
as ``\\xffffffNN`` on architectures whose C ``char`` is signed (makedumpfile
passes a plain ``char`` to ``printf("%02x")``).  Records that makedumpfile
skips (not committed, or without text) are skipped too.  makedumpfile 1.7.5
and later put the caller (``[    T123] ``) after the time when the kernel
exports ``printk_info.caller_id``; ``caller_id=True`` does the same.

Where makedumpfile would read outside a buffer on corrupt data, the text is
cut at the end of the buffer instead.  Every size the dump declares is
checked against the ceilings below before anything is read, the buffers are
read a chunk at a time, and a walk never visits more records than the
buffers can hold, so hostile data costs bounded memory and time.
"""
from __future__ import annotations

import logging
import operator
import re
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from capture.formats.elfcore import ElfCore
from capture.errors import DumpFormatError

log = logging.getLogger(__name__)

#: largest text ring / log_buf believed (twice the largest CONFIG_LOG_BUF_SHIFT)
MAX_LOG_BYTES = 1 << 26
#: largest descriptor ring believed (the kernel makes one descriptor per 32 bytes of text)
MAX_DESC_COUNT = MAX_LOG_BYTES >> 5
#: largest printk structure believed (the real ones are below 100 bytes)
MAX_STRUCT_SIZE = 512
#: output beyond this is not legitimate: a full text ring renders to about its own size
MAX_OUTPUT_BYTES = 1 << 27
#: buffers up to this size are read whole, larger ones a chunk at a time
WHOLE_WINDOW = 4 << 20
CHUNK = 1 << 20

# kernel/printk/printk_ringbuffer.h: the top two bits of a descriptor's state_var are its state
DESC_FLAGS_SHIFT = 62
DESC_ID_MASK = (1 << DESC_FLAGS_SHIFT) - 1
DESC_COMMITTED, DESC_FINALIZED = 1, 2
_READABLE = (DESC_COMMITTED, DESC_FINALIZED)
#: a data block starts with the id of its descriptor (an unsigned long)
BLOCK_ID_SIZE = 8
#: printk_info.caller_id: the top bit says "CPU number", otherwise it is a thread id
CALLER_CPU = 0x80000000

#: architectures whose C ``char`` is unsigned; makedumpfile escapes high bytes as \xNN there
UNSIGNED_CHAR_MACHINES = frozenset({"aarch64", "arm", "ppc64", "ppc64le", "s390x", "riscv64"})

_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x7e\t\x0b\x0c\r]")


class PrintkCorruptError(DumpFormatError):
    """The log's structures are inconsistent; ``partial`` holds the lines decoded before the damage."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


def extract_dmesg(core: ElfCore, *, caller_id: bool = False) -> bytes:
    """The crashed kernel's log as ``makedumpfile --dump-dmesg`` writes it.

    ``caller_id`` adds the ``[    T123] `` column of makedumpfile 1.7.5+
    (only when the kernel exports ``printk_info.caller_id``).  Raises
    :class:`DumpFormatError` when VMCOREINFO lacks what is needed, a
    structure is not in the dump or a value is implausible;
    :class:`PrintkCorruptError` (a DumpFormatError) when the records are
    inconsistent, with the lines decoded up to there.  An I/O error on the
    file is the reader's :class:`KdumpError`.
    """
    if not core.vmcoreinfo:
        raise DumpFormatError(f"{core.name}: no VMCOREINFO note, so the kernel log cannot be found")
    info = _VmcoreInfo(core.name, core.vmcoreinfo)
    lines = _LineFormat(signed_char=core.machine not in UNSIGNED_CHAR_MACHINES)
    memory = _Memory(core)
    if info.has("SYMBOL(prb)"):
        return _read_ringbuffer(memory, info, lines, caller_id)
    if info.has("SYMBOL(log_buf)"):
        return _read_log_buf(memory, info, lines, caller_id)
    raise DumpFormatError(f"{core.name}: VMCOREINFO names neither prb (Linux 5.10+) nor log_buf "
                          "(older kernels), so the kernel log cannot be found")


# -- VMCOREINFO ------------------------------------------------------------------------

@dataclass(frozen=True)
class _VmcoreInfo:
    """Typed, checked access to the VMCOREINFO values the log needs."""
    name: str
    values: Dict[str, str]

    def has(self, key: str) -> bool:
        return key in self.values

    def _value(self, key: str, base: int) -> int:
        raw = self.values.get(key)
        if raw is None:
            raise DumpFormatError(f"{self.name}: VMCOREINFO lacks {key}, needed to read the kernel log")
        try:
            return int(raw, base)
        except ValueError:
            try:
                return int(raw, 0)
            except ValueError:
                raise DumpFormatError(f"{self.name}: VMCOREINFO {key}={raw!r} is not a number") from None

    def symbol(self, name: str) -> int:
        value = self._value(f"SYMBOL({name})", 16)
        if not 0 < value < 1 << 64:
            raise DumpFormatError(f"{self.name}: VMCOREINFO SYMBOL({name}) = {value:#x} is not an address")
        return value

    def size(self, name: str) -> int:
        value = self._value(f"SIZE({name})", 10)
        if not 0 < value <= MAX_STRUCT_SIZE:
            raise DumpFormatError(f"{self.name}: VMCOREINFO SIZE({name}) = {value} is implausible")
        return value

    def offset(self, name: str) -> int:
        value = self._value(f"OFFSET({name})", 10)
        if not 0 <= value < MAX_STRUCT_SIZE:
            raise DumpFormatError(f"{self.name}: VMCOREINFO OFFSET({name}) = {value} is implausible")
        return value

    def optional_offset(self, name: str) -> Optional[int]:
        return self.offset(name) if self.has(f"OFFSET({name})") else None


# -- memory ----------------------------------------------------------------------------

class _Memory:
    """Integers and byte ranges of the crashed kernel's virtual memory, in the dump's byte order."""

    def __init__(self, core: ElfCore) -> None:
        self.core = core
        bo = "<" if core.little_endian else ">"
        #: the struct module's byte order character
        self.order = bo
        self.u32 = struct.Struct(bo + "I")
        self.u64 = struct.Struct(bo + "Q")

    def read(self, vaddr: int, size: int, what: str) -> bytes:
        if not 0 <= vaddr < 1 << 64 or vaddr + size > 1 << 64:
            raise DumpFormatError(f"{self.core.name}: {what} would be at {vaddr:#x}, not a kernel address")
        try:
            return self.core.read_virtual(vaddr, size)
        except DumpFormatError as exc:
            raise DumpFormatError(f"cannot read the kernel log: {what} ({size} bytes at {vaddr:#x}): {exc}") from None

    def word(self, vaddr: int, st: struct.Struct, what: str) -> int:
        return st.unpack(self.read(vaddr, st.size, what))[0]


class _Window:
    """``size`` bytes of kernel memory from ``base``: read whole when small, else a :data:`CHUNK` at a
    time with one chunk kept.  Records are visited in ring order, so a chunked window reads its
    bytes about once; reading more than twice the window means corrupt records that jump back
    and forth, and raises :class:`PrintkCorruptError` instead of thrashing.
    """

    def __init__(self, memory: _Memory, base: int, size: int, what: str) -> None:
        if base + size > 1 << 64:
            raise DumpFormatError(f"{memory.core.name}: {what} ({size} bytes at {base:#x}) "
                                  "runs past the end of the address space")
        self._memory = memory
        self._base = base
        self._size = size
        self._what = what
        self._chunk = size if size <= WHOLE_WINDOW else CHUNK
        self._budget = 2 * size + 2 * CHUNK
        self._start = -1
        self._data = b""

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset .. offset+length`` of the window (nothing when ``length`` <= 0)."""
        if length <= 0:
            return b""
        if offset < 0 or offset + length > self._size:
            raise DumpFormatError(f"{self._memory.core.name}: bytes {offset}..{offset + length} "
                                  f"are outside {self._what} ({self._size} bytes)")
        parts = []
        while length > 0:
            start = offset - offset % self._chunk
            if start != self._start:
                size = min(self._chunk, self._size - start)
                self._budget -= size
                if self._budget < 0:
                    raise PrintkCorruptError(f"{self._memory.core.name}: the kernel log is corrupt: its records "
                                             f"jump back and forth in {self._what}")
                self._data = self._memory.read(self._base + start, size, self._what)
                self._start = start
            piece = self._data[offset - start:offset - start + length]
            parts.append(piece)
            offset += len(piece)
            length -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def view(self, offset: int, length: int) -> Tuple[bytes, int]:
        """Like :meth:`read`, as (buffer, position in it), without copying when one chunk holds the bytes."""
        at = offset - self._start
        if self._start >= 0 and at >= 0 and at + length <= len(self._data) and offset + length <= self._size:
            return self._data, at
        return self.read(offset, length), 0


class _Members:
    """Integer members of one structure (name, offset, struct code), unpacked by one call in the
    order given; VMCOREINFO decides the offsets, so each is checked against the structure's size."""

    def __init__(self, dump: str, struct_name: str, struct_size: int, order: str,
                 members: Sequence[Tuple[str, int, str]]) -> None:
        for name, offset, code in members:
            if offset + struct.calcsize(code) > struct_size:
                raise DumpFormatError(f"{dump}: VMCOREINFO puts {name} at byte {offset}, outside "
                                      f"its {struct_size}-byte structure {struct_name}")
        by_offset = sorted(range(len(members)), key=lambda i: members[i][1])
        fmt, end, previous = order, 0, ""
        for i in by_offset:
            name, offset, code = members[i]
            if offset < end:
                raise DumpFormatError(f"{dump}: VMCOREINFO puts {previous} and {name} at overlapping bytes "
                                      f"of {struct_name}")
            fmt += f"{offset - end}x{code}"
            end, previous = offset + struct.calcsize(code), name
        whole = struct.Struct(fmt).unpack_from
        if by_offset == sorted(by_offset):
            self.unpack = whole
        else:
            pick = operator.itemgetter(*[by_offset.index(i) for i in range(len(members))])
            self.unpack = lambda buf, pos=0: pick(whole(buf, pos))


# -- lines -----------------------------------------------------------------------------

class _LineFormat:
    """makedumpfile's rendering of one record."""

    def __init__(self, signed_char: bool) -> None:
        high = "\\xffffff%02x" if signed_char else "\\x%02x"
        self._escape = [(("\\x%02x" if b < 0x80 else high) % b).encode() for b in range(256)]

    def line(self, ts_nsec: int, caller: Optional[int], text: bytes) -> bytes:
        seconds, nanos = divmod(ts_nsec, 1_000_000_000)
        head = b"[%5d.%06d] " % (seconds, nanos // 1000)
        if caller is not None:
            who = b"%c%d" % (b"C" if caller & CALLER_CPU else b"T", caller & ~CALLER_CPU)
            head += b"[%8s] " % who
        if _NEEDS_ESCAPE.search(text) is None:
            return head + text + b"\n"
        indent = b"\n" + b" " * len(head)
        escape = self._escape

        def replace(m: "re.Match[bytes]") -> bytes:
            byte = m.group()[0]
            return indent if byte == 0x0A else escape[byte]
        return head + _NEEDS_ESCAPE.sub(replace, text) + b"\n"


class _Output:
    """The lines so far, with the ceiling on their total size."""

    def __init__(self, dump: str) -> None:
        self.dump = dump
        self.text = bytearray()
        self.records = 0

    def add(self, line: bytes) -> None:
        if len(self.text) + len(line) > MAX_OUTPUT_BYTES:
            raise self.corrupt(f"the kernel log would exceed {MAX_OUTPUT_BYTES >> 20} MiB")
        self.text += line
        self.records += 1

    def corrupt(self, why: str) -> PrintkCorruptError:
        return PrintkCorruptError(f"{self.dump}: the kernel log is corrupt: {why}; "
                                  f"{self.records} records were read before", bytes(self.text))

    def result(self) -> bytes:
        return bytes(self.text)


# -- the lockless ring buffer (Linux 5.10+) --------------------------------------------

def _read_ringbuffer(mem: _Memory, info: _VmcoreInfo, lines: _LineFormat, caller_id: bool) -> bytes:
    dump = info.name
    prb_addr = mem.word(info.symbol("prb"), mem.u64, "the pointer prb")
    prb_size = info.size("printk_ringbuffer")
    prb = mem.read(prb_addr, prb_size, "struct printk_ringbuffer")
    counter = info.offset("atomic_long_t.counter")
    desc_ring = info.offset("printk_ringbuffer.desc_ring")
    text_ring = info.offset("printk_ringbuffer.text_data_ring")

    def member(name: str, base: int, code: str, extra: int = 0) -> Tuple[str, int, str]:
        return name, base + info.offset(name) + extra, code
    (count_bits, descs_addr, infos_addr, head_id, tail_id, size_bits, data_addr) = _Members(
        dump, "printk_ringbuffer", prb_size, mem.order,
        [member("prb_desc_ring.count_bits", desc_ring, "I"), member("prb_desc_ring.descs", desc_ring, "Q"),
         member("prb_desc_ring.infos", desc_ring, "Q"), member("prb_desc_ring.head_id", desc_ring, "Q", counter),
         member("prb_desc_ring.tail_id", desc_ring, "Q", counter),
         member("prb_data_ring.size_bits", text_ring, "I"), member("prb_data_ring.data", text_ring, "Q")]).unpack(prb)
    if count_bits >= 32 or 1 << count_bits > MAX_DESC_COUNT:
        raise DumpFormatError(f"{dump}: implausible printk descriptor ring of 2^{count_bits} entries")
    if size_bits >= 64 or 1 << size_bits > MAX_LOG_BYTES:
        raise DumpFormatError(f"{dump}: implausible printk text ring of 2^{size_bits} bytes")
    count = 1 << count_bits
    ring_size = 1 << size_bits

    desc_size = info.size("prb_desc")
    lpos = info.offset("prb_desc.text_blk_lpos")
    desc_unpack = _Members(dump, "prb_desc", desc_size, mem.order, [
        ("prb_desc.state_var", info.offset("prb_desc.state_var") + counter, "Q"),
        ("prb_data_blk_lpos.begin", lpos + info.offset("prb_data_blk_lpos.begin"), "Q"),
        ("prb_data_blk_lpos.next", lpos + info.offset("prb_data_blk_lpos.next"), "Q")]).unpack
    info_size = info.size("printk_info")
    caller_at = info.optional_offset("printk_info.caller_id") if caller_id else None
    info_unpack = _Members(dump, "printk_info", info_size, mem.order, [
        ("printk_info.ts_nsec", info.offset("printk_info.ts_nsec"), "Q"),
        ("printk_info.text_len", info.offset("printk_info.text_len"), "H")]
        + ([] if caller_at is None else [("printk_info.caller_id", caller_at, "I")])).unpack

    descs = _Window(mem, descs_addr, count * desc_size, "the printk descriptors")
    infos = _Window(mem, infos_addr, count * info_size, "the printk infos")
    text = _Window(mem, data_addr, ring_size, "the printk text ring")

    span = (head_id - tail_id) & DESC_ID_MASK
    if span >= count:
        log.warning("%s: printk tail id %#x and head id %#x are %d apart in a ring of %d; "
                    "reading the last %d", dump, tail_id, head_id, span, count, count)
        tail_id = (head_id - count + 1) & DESC_ID_MASK
        span = count - 1
    out = _Output(dump)
    text_total = 0
    for step in range(span + 1):
        desc_id = (tail_id + step) & DESC_ID_MASK
        slot = desc_id & (count - 1)
        state_var, begin, end = desc_unpack(*descs.view(slot * desc_size, desc_size))
        if state_var & DESC_ID_MASK != desc_id or state_var >> DESC_FLAGS_SHIFT not in _READABLE:
            continue
        begin %= ring_size
        end %= ring_size
        if begin == end:
            continue
        fields = info_unpack(*infos.view(slot * info_size, info_size))
        ts_nsec, length = fields[0], fields[1]
        if begin > end:
            begin = 0
        begin += BLOCK_ID_SIZE
        if end >= begin:
            length = min(length, end - begin)
        length = max(0, min(length, ring_size - begin))
        text_total += length
        if text_total > ring_size:
            raise out.corrupt(f"the records hold more text than the {ring_size}-byte ring")
        out.add(lines.line(ts_nsec, None if caller_at is None else fields[2], text.read(begin, length)))
    return out.result()


# -- log_buf of struct printk_log records (Linux 3.5 to 5.9) ------------------------------

def _read_log_buf(mem: _Memory, info: _VmcoreInfo, lines: _LineFormat, caller_id: bool) -> bytes:
    dump = info.name
    for symbol in ("log_buf_len", "log_first_idx", "log_next_idx"):
        if not info.has(f"SYMBOL({symbol})"):
            raise DumpFormatError(f"{dump}: VMCOREINFO has log_buf but not {symbol}: a kernel older than 3.5, "
                                  "whose plain-text log is not supported")
    name = "printk_log" if info.has("SIZE(printk_log)") else "log"
    header = info.size(name)
    u32, u64 = mem.u32, mem.u64
    caller_at = info.optional_offset(f"{name}.caller_id") if caller_id else None
    entry_unpack = _Members(dump, name, header, mem.order, [
        (f"{name}.len", info.offset(f"{name}.len"), "H"),
        (f"{name}.text_len", info.offset(f"{name}.text_len"), "H"),
        (f"{name}.ts_nsec", info.offset(f"{name}.ts_nsec"), "Q")]
        + ([] if caller_at is None else [(f"{name}.caller_id", caller_at, "I")])).unpack

    buf_addr = mem.word(info.symbol("log_buf"), u64, "the pointer log_buf")
    buf_len = mem.word(info.symbol("log_buf_len"), u32, "log_buf_len")
    first = mem.word(info.symbol("log_first_idx"), u32, "log_first_idx")
    stop = mem.word(info.symbol("log_next_idx"), u32, "log_next_idx")
    if not header <= buf_len <= MAX_LOG_BYTES:
        raise DumpFormatError(f"{dump}: implausible log_buf_len {buf_len}")
    last = buf_len - header
    buf = _Window(mem, buf_addr, buf_len, "log_buf")
    out = _Output(dump)
    if first != stop and first > last:
        raise out.corrupt(f"log_first_idx {first} is outside the {buf_len}-byte log_buf")
    visited = bytearray((buf_len + 7) // 8)
    at = first
    while at != stop:
        if visited[at >> 3] & 1 << (at & 7):
            raise out.corrupt(f"the records loop back to offset {at}")
        visited[at >> 3] |= 1 << (at & 7)
        size = entry_unpack(*buf.view(at, header))[0]
        # a record of length 0 marks the end of the buffer: the next record is at its start
        record = at if size else 0
        fields = entry_unpack(*buf.view(record, header))
        length = min(fields[1], buf_len - record - header)
        caller = None if caller_at is None else fields[3]
        out.add(lines.line(fields[2], caller, buf.read(record + header, length)))
        following = at + size if size else fields[0]
        if following > last:
            raise out.corrupt(f"a record at offset {record} points to offset {following}, "
                              f"outside the {buf_len}-byte log_buf")
        at = following
    return out.result()
