"""Small dump files built byte by byte for hostile-input tests and the fuzz suite.

Each builder writes what the real writer would (the layouts of
capture/formats), so that an unmodified result reads as complete; tests then
break one field at a time.
"""
from __future__ import annotations

import struct
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

PAGE = 4096


def vmcoreinfo_text(info: Dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in info.items()).encode()


def elf_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def elf_core(notes: bytes, loads: Iterable[Tuple[int, bytes]] = (), note_offset: Optional[int] = None,
             phnum: Optional[int] = None) -> bytes:
    """A 64-bit little-endian x86_64 ELF core: one PT_NOTE, then one PT_LOAD per
    ``(vaddr, data)``; ``note_offset`` overrides the PT_NOTE's p_offset."""
    loads = list(loads)
    count = 1 + len(loads)
    phoff = 64
    data_at = phoff + count * 56
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, count if phnum is None else phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, data_at if note_offset is None else note_offset, 0, 0,
                        len(notes), len(notes), 4)
    body = notes
    at = data_at + len(notes)
    for vaddr, data in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, at, vaddr, vaddr - 0xffff888000000000 if vaddr > 1 << 63 else vaddr,
                             len(data), len(data), PAGE)
        body += data
        at += len(data)
    return ehdr + phdrs + body


def utsname(nodename: bytes, release: bytes = b"6.1.0-test") -> bytes:
    fields = [b"Linux", nodename, release, b"#1 SMP", b"x86_64", b"(none)"]
    return b"".join(f[:64].ljust(65, b"\0") for f in fields)


def kdump_file(pages: List[bytes], info: Optional[Dict[str, str]] = None, nodename: bytes = b"crafted",
               max_mapnr: int = 64) -> bytes:
    """A kdump-compressed dump (header version 6, zlib pages) holding ``pages``
    as pfn 0, 1, ...; every page is ``PAGE`` bytes."""
    info = info or {"OSRELEASE": "6.1.0-test", "PAGESIZE": str(PAGE), "CRASHTIME": "1700000000"}
    vmcoreinfo = vmcoreinfo_text(info)
    sub_hdr_size = 1
    bitmap_blocks = 2 * max(1, -(-max_mapnr // (8 * PAGE)))
    header = bytearray(PAGE)
    header[0:8] = b"KDUMP   "
    struct.pack_into("<i", header, 8, 6)
    header[12:12 + 390] = utsname(nodename)
    struct.pack_into("<qq", header, 408, 1700000000, 0)
    struct.pack_into("<IiiIIIIIIi", header, 424, 0x1, PAGE, sub_hdr_size, bitmap_blocks, max_mapnr,
                     0, 0, 0, 0, 1)
    sub = bytearray(PAGE)
    vmcoreinfo_at = PAGE + 104
    struct.pack_into("<QiiQQqQqQqQQQQ", sub, 0, 0, 31, 0, 0, 0, vmcoreinfo_at, len(vmcoreinfo), 0, 0, 0, 0,
                     0, 0, max_mapnr)
    sub[104:104 + len(vmcoreinfo)] = vmcoreinfo
    half = bitmap_blocks // 2 * PAGE
    bitmap = bytearray(2 * half)
    for pfn in range(max_mapnr):
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    for pfn in range(len(pages)):
        bitmap[half + pfn // 8] |= 1 << (pfn % 8)
    table_at = PAGE * (1 + sub_hdr_size) + len(bitmap)
    data_at = table_at + 24 * len(pages)
    descriptors = b""
    data = b""
    for page in pages:
        packed = zlib.compress(page)
        descriptors += struct.pack("<qIIQ", data_at + len(data), len(packed), 0x1, 0)
        data += packed
    return bytes(header) + bytes(sub) + bytes(bitmap) + descriptors + data


def flattened(records: Iterable[Tuple[int, bytes]], end_marker: bool = True) -> bytes:
    """makedumpfile's flattened stream of ``(offset, data)`` records."""
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out += b"\0" * (4096 - len(out))
    for offset, data in records:
        out += struct.pack(">qq", offset, len(data)) + data
    if end_marker:
        out += struct.pack(">qq", -1, -1)
    return bytes(out)


def flatten_file(real: bytes, piece: int = 8192) -> bytes:
    """``real`` as a flattened stream, in ``piece``-byte records."""
    return flattened((at, real[at:at + piece]) for at in range(0, len(real), piece))
