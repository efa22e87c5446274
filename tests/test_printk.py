"""capture/formats/printk.py: the kernel log read from a vmcore, byte for byte `makedumpfile --dump-dmesg`.

The lockless ring buffer is checked on both real fixtures (and on copies whose
text ring is overwritten with random bytes, against makedumpfile itself); the
older log_buf of struct printk_log records on buffers built here, both in a
small ELF core made by the test and inside a copy of the 6.1 fixture whose
VMCOREINFO is rewritten to describe it, again against makedumpfile.
Hypothesis then feeds corrupt VMCOREINFO values and corrupt ring data: the
answer must be bytes or DumpFormatError, never another exception.
"""
from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capture.formats.elfcore import ElfCore, Note
from capture.errors import DumpFormatError
from capture.formats.printk import MAX_OUTPUT_BYTES, PrintkCorruptError, extract_dmesg
from conftest import FIXTURE_SIZES, cached_fixture, shared_dir

PT_LOAD, PT_NOTE = 1, 4
#: a prefix "[sssss.uuuuuu] " is 15 bytes wide, so continuation lines are indented by 15
INDENT = b"\n" + b" " * 15

HYPOTHESIS = settings(max_examples=120, deadline=timedelta(seconds=20), database=None,
                      suppress_health_check=[HealthCheck.too_slow])


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def vmcore_612() -> Path:
    """The 6.12 fixture vmcore (a kernel newer than Debian 12's makedumpfile knows)."""
    return cached_fixture("vmcore-6.12-cloud-512M")


@pytest.fixture(scope="session")
def vmcore_61() -> Path:
    return cached_fixture("vmcore-6.1-cloud-512M")


@pytest.fixture
def scratch_copy(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Copies of fixture vmcores to patch, removed afterwards (400 MB each)."""
    made: List[Path] = []

    def copy(src: Path) -> Path:
        dst = tmp_path / f"copy{len(made)}-{src.name}"
        shutil.copyfile(src, dst)
        made.append(dst)
        return dst
    yield copy
    for path in made:
        path.unlink(missing_ok=True)


def dump_dmesg(makedumpfile: str, vmcore: Path, out: Path) -> bytes:
    res = subprocess.run([makedumpfile, "--dump-dmesg", str(vmcore), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return out.read_bytes()


# -- where things are in a real vmcore -------------------------------------------------------------

def file_offset(core: ElfCore, vaddr: int) -> int:
    for seg in core.loads:
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return seg.offset + vaddr - seg.vaddr
    raise AssertionError(f"{vaddr:#x} is not in the file")


@dataclass(frozen=True)
class Ring:
    """The file ranges (offset, length) of a real vmcore's printk ring buffer, found through VMCOREINFO."""
    prb: Tuple[int, int]
    descs: Tuple[int, int]
    infos: Tuple[int, int]
    text: Tuple[int, int]
    prb_vaddr: int
    descs_vaddr: int
    infos_vaddr: int
    text_vaddr: int


def locate_ring(core: ElfCore) -> Ring:
    vi = {k: int(v, 16) if k.startswith("SYMBOL") else int(v) for k, v in core.vmcoreinfo.items()
          if k.startswith(("SYMBOL(", "SIZE(", "OFFSET("))}
    prb_vaddr = struct.unpack("<Q", core.read_virtual(vi["SYMBOL(prb)"], 8))[0]
    prb = core.read_virtual(prb_vaddr, vi["SIZE(printk_ringbuffer)"])
    desc_ring, text_ring = vi["OFFSET(printk_ringbuffer.desc_ring)"], vi["OFFSET(printk_ringbuffer.text_data_ring)"]
    count = 1 << struct.unpack_from("<I", prb, desc_ring + vi["OFFSET(prb_desc_ring.count_bits)"])[0]
    descs = struct.unpack_from("<Q", prb, desc_ring + vi["OFFSET(prb_desc_ring.descs)"])[0]
    infos = struct.unpack_from("<Q", prb, desc_ring + vi["OFFSET(prb_desc_ring.infos)"])[0]
    size = 1 << struct.unpack_from("<I", prb, text_ring + vi["OFFSET(prb_data_ring.size_bits)"])[0]
    data = struct.unpack_from("<Q", prb, text_ring + vi["OFFSET(prb_data_ring.data)"])[0]
    return Ring(prb=(file_offset(core, prb_vaddr), len(prb)),
                descs=(file_offset(core, descs), count * vi["SIZE(prb_desc)"]),
                infos=(file_offset(core, infos), count * vi["SIZE(printk_info)"]),
                text=(file_offset(core, data), size), prb_vaddr=prb_vaddr, descs_vaddr=descs, infos_vaddr=infos,
                text_vaddr=data)


def patch_file(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def overlay(read_at: Callable[[int, int], bytes], patches: Sequence[Tuple[int, bytes]]) -> Callable[[int, int], bytes]:
    """``read_at`` with ``patches`` (file offset, bytes) laid over its data."""
    def read(offset: int, length: int) -> bytes:
        data = bytearray(read_at(offset, length))
        for at, patch in patches:
            lo, hi = max(offset, at), min(offset + len(data), at + len(patch))
            if lo < hi:
                data[lo - offset:hi - offset] = patch[lo - at:hi - at]
        return bytes(data)
    return read


def with_vmcoreinfo(core: ElfCore, info: Dict[str, str]) -> ElfCore:
    text = "".join(f"{k}={v}\n" for k, v in info.items()).encode()
    notes = [n for n in core.notes if n.name != "VMCOREINFO"] + [Note("VMCOREINFO", 0, text)]
    return ElfCore(core.name, core._read_at, core.size, core.machine, core.little_endian, core.segments, notes)


# -- small ELF cores built here ------------------------------------------------------------------

def synthetic_core(vmcoreinfo: Dict[str, str], regions: Dict[int, bytes], *, machine: int = 62,
                   little: bool = True) -> ElfCore:
    """An ELF64 core with a VMCOREINFO note and one PT_LOAD per region (virtual address -> bytes)."""
    bo = "<" if little else ">"
    name = b"VMCOREINFO\0"
    desc = "".join(f"{k}={v}\n" for k, v in vmcoreinfo.items()).encode()
    note = struct.pack(bo + "III", len(name), len(desc), 0) + name.ljust(12, b"\0") + desc + bytes(-len(desc) % 4)
    phnum = 1 + len(regions)
    data_at = 64 + 56 * phnum
    ehdr = b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9) + struct.pack(
        bo + "HHIQQQIHHHHHH", 4, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack(bo + "IIQQQQQQ", PT_NOTE, 0, data_at, 0, 0, len(note), len(note), 4)
    body = note
    for vaddr, blob in regions.items():
        phdrs += struct.pack(bo + "IIQQQQQQ", PT_LOAD, 7, data_at + len(body), vaddr, 0, len(blob), len(blob), 4096)
        body += blob
    image = ehdr + phdrs + body
    return ElfCore.from_reader(lambda off, n: image[off:off + n], len(image), "synthetic")


def printk_log(ts_nsec: int, text: bytes, *, dict_: bytes = b"", caller: Optional[int] = None,
               little: bool = True) -> bytes:
    """One struct printk_log record as Linux 3.11-5.9 stores it (packed, aligned to 4, len covering all)."""
    bo = "<" if little else ">"
    header = 16 if caller is None else 20
    size = header + len(text) + len(dict_)
    size += -size % 4
    head = struct.pack(bo + "QHHHBB", ts_nsec, size, len(text), len(dict_), 0, 6 << 5)
    if caller is not None:
        head += struct.pack(bo + "I", caller)
    return (head + text + dict_).ljust(size, b"\0")


def log_buf_info(with_caller: bool = False, name: str = "printk_log") -> Dict[str, str]:
    """The VMCOREINFO a 3.11-5.9 kernel exports for struct printk_log (3.5-3.10: ``name="log"``)."""
    info = {f"SIZE({name})": "20" if with_caller else "16",
            f"OFFSET({name}.ts_nsec)": "0", f"OFFSET({name}.len)": "8",
            f"OFFSET({name}.text_len)": "10", f"OFFSET({name}.dict_len)": "12"}
    if with_caller:
        info[f"OFFSET({name}.caller_id)"] = "16"
    return info


VARS = 0xFFFFFFFF81000000
BUF = 0xFFFF888000100000


def log_buf_core(buf: bytes, first: int, next_idx: int, info: Dict[str, str], *, little: bool = True,
                 machine: int = 62, buf_len: Optional[int] = None) -> ElfCore:
    """A core holding ``buf`` as log_buf with the given indexes (the kernel's variables at VARS)."""
    bo = "<" if little else ">"
    variables = struct.pack(bo + "QIIII", BUF, len(buf) if buf_len is None else buf_len, first, next_idx, first)
    info = dict(info, **{"SYMBOL(log_buf)": f"{VARS:x}", "SYMBOL(log_buf_len)": f"{VARS + 8:x}",
                         "SYMBOL(log_first_idx)": f"{VARS + 12:x}", "SYMBOL(log_next_idx)": f"{VARS + 16:x}",
                         "SYMBOL(clear_idx)": f"{VARS + 20:x}"})
    return synthetic_core(info, {VARS: variables, BUF: buf}, machine=machine, little=little)


def wrapped_log_buf(records_end: List[bytes], records_start: List[bytes], buf_len: int,
                    first: int) -> Tuple[bytes, int, int]:
    """A log_buf from ``first``: ``records_end``, then (when ``records_start`` is not empty) the
    zero-length marker of a wrap and ``records_start`` from offset 0."""
    buf = bytearray(buf_len)
    at = 0
    for rec in records_start:
        buf[at:at + len(rec)] = rec
        at += len(rec)
    next_idx = at
    at = first
    for rec in records_end:
        buf[at:at + len(rec)] = rec
        at += len(rec)
    if not records_start:
        return bytes(buf), first, at
    assert at + 16 <= buf_len and first >= next_idx
    buf[at:at + 16] = bytes(16)
    return bytes(buf), first, next_idx


# -- lockless rings built here (the layout of Linux 5.10+) ---------------------------------------

#: the VMCOREINFO Linux 5.10+ exports on x86_64 for the ring buffer (the fixtures' values)
PRB_INFO = {
    "SIZE(printk_ringbuffer)": "88", "OFFSET(printk_ringbuffer.desc_ring)": "0",
    "OFFSET(printk_ringbuffer.text_data_ring)": "48", "OFFSET(printk_ringbuffer.fail)": "80",
    "SIZE(prb_desc_ring)": "48", "OFFSET(prb_desc_ring.count_bits)": "0", "OFFSET(prb_desc_ring.descs)": "8",
    "OFFSET(prb_desc_ring.infos)": "16", "OFFSET(prb_desc_ring.head_id)": "24", "OFFSET(prb_desc_ring.tail_id)": "32",
    "SIZE(prb_desc)": "24", "OFFSET(prb_desc.state_var)": "0", "OFFSET(prb_desc.text_blk_lpos)": "8",
    "SIZE(prb_data_blk_lpos)": "16", "OFFSET(prb_data_blk_lpos.begin)": "0", "OFFSET(prb_data_blk_lpos.next)": "8",
    "SIZE(printk_info)": "88", "OFFSET(printk_info.seq)": "0", "OFFSET(printk_info.ts_nsec)": "8",
    "OFFSET(printk_info.text_len)": "16", "OFFSET(printk_info.caller_id)": "20", "OFFSET(printk_info.dev_info)": "24",
    "SIZE(prb_data_ring)": "32", "OFFSET(prb_data_ring.size_bits)": "0", "OFFSET(prb_data_ring.data)": "8",
    "OFFSET(prb_data_ring.head_lpos)": "16", "OFFSET(prb_data_ring.tail_lpos)": "24",
    "SIZE(atomic_long_t)": "8", "OFFSET(atomic_long_t.counter)": "0",
}
ID_MASK = (1 << 62) - 1
RESERVED, COMMITTED, FINALIZED, REUSABLE = range(4)
FAILED_LPOS = 0x1


@dataclass(frozen=True)
class Rec:
    """One record to put in a built ring: its text, what printk_info says, its descriptor state."""
    text: bytes
    ts: int = 0
    state: int = FINALIZED
    caller: int = 1
    text_len: Optional[int] = None
    dataless: bool = False


@dataclass(frozen=True)
class PrbImage:
    descs: bytes
    infos: bytes
    text: bytes
    count_bits: int
    size_bits: int
    head_id: int
    tail_id: int
    head_lpos: int
    tail_lpos: int

    def prb(self, descs: int, infos: int, text: int) -> bytes:
        """struct printk_ringbuffer pointing at the three arrays."""
        return struct.pack("<IIQQQQQ", self.count_bits, 0, descs, infos, self.head_id, self.tail_id, 0) + \
            struct.pack("<IIQQQ", self.size_bits, 0, text, self.head_lpos, self.tail_lpos) + bytes(8)


def build_prb(recs: Sequence[Rec], count_bits: int, size_bits: int, first_id: int, first_lpos: int) -> PrbImage:
    """Records stored the way the kernel's data_alloc() does: a block that would cross the end of
    the ring starts over at offset 0, its begin staying in the previous wrap."""
    count, ring = 1 << count_bits, 1 << size_bits
    descs, infos, text = bytearray(count * 24), bytearray(count * 88), bytearray(ring)
    lpos = first_lpos
    for i, rec in enumerate(recs):
        desc_id = (first_id + i) & ID_MASK
        slot = desc_id % count
        if rec.dataless:
            begin = end = FAILED_LPOS
        else:
            size = 8 + len(rec.text) + (-len(rec.text) % 8)
            begin, end = lpos, lpos + size
            if begin // ring != end // ring:
                end = end // ring * ring + size
            at = (end - size) % ring
            text[at:at + 8 + len(rec.text)] = struct.pack("<Q", desc_id) + rec.text
            lpos = end
        struct.pack_into("<QQQ", descs, slot * 24, rec.state << 62 | desc_id, begin, end)
        text_len = len(rec.text) if rec.text_len is None else rec.text_len
        struct.pack_into("<QQHBBI", infos, slot * 88, i, rec.ts, text_len, 0, 0, rec.caller)
    return PrbImage(bytes(descs), bytes(infos), bytes(text), count_bits, size_bits,
                    (first_id + len(recs) - 1) & ID_MASK, first_id, lpos, first_lpos)


PRB_VAR, PRB, DESCS, INFOS, TEXT = (0xFFFFFFFF82000000, 0xFFFFFFFF82001000, 0xFFFF888001000000,
                                    0xFFFF888002000000, 0xFFFF888004000000)


def prb_core(image: PrbImage, info: Optional[Dict[str, str]] = None) -> ElfCore:
    info = dict(PRB_INFO if info is None else info, **{"SYMBOL(prb)": f"{PRB_VAR:x}"})
    return synthetic_core(info, {PRB_VAR: struct.pack("<Q", PRB), PRB: image.prb(DESCS, INFOS, TEXT),
                                 DESCS: image.descs, INFOS: image.infos, TEXT: image.text})


#: a wrapped text block, a data-less record, unfinished and reusable descriptors, a text_len longer
#: than its block (makedumpfile cuts it at the block's end, padding included), ids crossing the mask
WRAPPING_RECORDS = [
    Rec(b"oldest", ts=1_000_000_000),
    Rec(b"x" * 40, ts=1_500_000_000, caller=0x80000001),
    Rec(b"wraps to the start", ts=2_000_000_000, caller=42),
    Rec(b"", ts=2_100_000_000, dataless=True),
    Rec(b"being written", ts=2_200_000_000, state=RESERVED),
    Rec(b"committed\nsecond line", ts=2_300_000_000, state=COMMITTED),
    Rec(b"gone", ts=2_400_000_000, state=REUSABLE),
    Rec(b"cut", ts=2_500_000_000, text_len=200),
    Rec(b"newest \xe2\x80\x94 \x07", ts=3_000_000_000),
]
WRAPPING_DMESG = (b"[    1.000000] oldest\n"
                  b"[    1.500000] " + b"x" * 40 + b"\n"
                  b"[    2.000000] wraps to the start\n"
                  b"[    2.300000] committed" + INDENT + b"second line\n"
                  b"[    2.500000] cut\\x00\\x00\\x00\\x00\\x00\n"
                  b"[    3.000000] newest \\xffffffe2\\xffffff80\\xffffff94 \\x07\n")


def wrapping_image() -> PrbImage:
    return build_prb(WRAPPING_RECORDS, count_bits=4, size_bits=8, first_id=ID_MASK - 3, first_lpos=(5 << 8) + 176)


# -- the real fixtures ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURE_SIZES))
def test_fixture_log_equals_makedumpfile(name: str) -> None:
    vmcore = cached_fixture(name)
    expected = (shared_dir() / "fixtures" / f"{name}.dmesg.txt").read_bytes()
    with ElfCore.open(str(vmcore)) as core:
        assert "SYMBOL(prb)" in core.vmcoreinfo
        assert extract_dmesg(core) == expected


def test_6_12_log_has_the_marker_and_the_panic(vmcore_612: Path) -> None:
    with ElfCore.open(str(vmcore_612)) as core:
        lines = extract_dmesg(core).splitlines()
    assert len(lines) == 401
    assert any(line.endswith(b"] newkernel-marker-readers") for line in lines)
    assert any(line.endswith(b"] Kernel panic - not syncing: sysrq triggered crash") for line in lines)
    assert all(re.match(rb"\[ *\d+\.\d{6}\] ", line) for line in lines)


def test_caller_id_column(vmcore_612: Path) -> None:
    """makedumpfile 1.7.5+ style: the same lines with [    T123] / [     C1] after the time."""
    with ElfCore.open(str(vmcore_612)) as core:
        plain = extract_dmesg(core).splitlines()
        callers = extract_dmesg(core, caller_id=True).splitlines()
    assert len(plain) == len(callers)
    for a, b in zip(plain, callers):
        m = re.match(rb"(\[ *\d+\.\d{6}\] )\[ *[TC]\d+\] (.*)", b, re.S)
        assert m, b
        assert m.group(1) + m.group(2) == a
    assert callers[0].startswith(b"[    0.000000] [      T0] Linux version 6.12.117")
    # init (pid 1) wrote the marker and triggered the crash through sysrq
    assert b"[    6.457774] [      T1] newkernel-marker-readers" in callers
    assert b"[    7.501854] [      T1] Kernel panic - not syncing: sysrq triggered crash" in callers


def test_random_text_bytes_escaped_like_makedumpfile(vmcore_612: Path, makedumpfile: str, scratch_copy,
                                                    tmp_path: Path) -> None:
    """Every byte value, newlines included, written into the text ring: our lines equal makedumpfile's."""
    copy = scratch_copy(vmcore_612)
    with ElfCore.open(str(copy)) as core:
        text_at, text_size = locate_ring(core).text
    with open(copy, "rb") as f:
        f.seek(text_at)
        original = f.read(text_size)
    for seed in range(3):
        rng = random.Random(seed)
        ring = bytearray(original)
        for i in range(len(ring)):
            if rng.random() < 0.2:
                ring[i] = rng.randrange(256) if seed else rng.choice(b"\n\t\x0b\x0c\r\x00\x7f\x80\xff")
        patch_file(copy, text_at, bytes(ring))
        expected = dump_dmesg(makedumpfile, copy, tmp_path / f"dmesg-{seed}.txt")
        assert b"\\xffffff" in expected and b"\\x0" in expected and INDENT in expected
        with ElfCore.open(str(copy)) as core:
            assert extract_dmesg(core) == expected


def test_ring_layout_synthetic() -> None:
    image = wrapping_image()
    begin, end = struct.unpack_from("<QQ", image.descs, ((ID_MASK - 1) % 16) * 24 + 8)
    assert begin % 256 > end % 256 and image.text[8:26] == b"wraps to the start"  # the third block wrapped
    assert extract_dmesg(prb_core(image)) == WRAPPING_DMESG
    with_callers = extract_dmesg(prb_core(image), caller_id=True)
    assert with_callers.startswith(b"[    1.000000] [      T1] oldest\n[    1.500000] [      C1] xxx")
    assert b"[    2.000000] [     T42] wraps to the start\n" in with_callers
    assert extract_dmesg(prb_core(build_prb([], 4, 8, 0, 0))) == b""


def test_ring_layout_equals_makedumpfile(vmcore_612: Path, makedumpfile: str, scratch_copy, tmp_path: Path) -> None:
    """The wrapping ring written over the 6.12 fixture's own ring: makedumpfile agrees byte for byte."""
    copy = scratch_copy(vmcore_612)
    with ElfCore.open(str(copy)) as core:
        ring = locate_ring(core)
    image = wrapping_image()
    patch_file(copy, ring.prb[0], image.prb(ring.descs_vaddr, ring.infos_vaddr, ring.text_vaddr))
    patch_file(copy, ring.descs[0], image.descs)
    patch_file(copy, ring.infos[0], image.infos)
    patch_file(copy, ring.text[0], image.text)
    assert dump_dmesg(makedumpfile, copy, tmp_path / "dmesg.txt") == WRAPPING_DMESG
    with ElfCore.open(str(copy)) as core:
        assert extract_dmesg(core) == WRAPPING_DMESG


def test_ring_text_beyond_the_ring_is_corrupt(vmcore_612: Path) -> None:
    """Every record claiming the whole ring: stopped once the text exceeds the ring, partial log kept."""
    with ElfCore.open(str(vmcore_612)) as core:
        ring = locate_ring(core)
        descs = bytearray(core._read_at(*ring.descs))
        infos = bytearray(core._read_at(*ring.infos))
        size = ring.text[1]
        for slot in range(len(descs) // 24):
            state_var, begin, _ = struct.unpack_from("<QQQ", descs, slot * 24)
            struct.pack_into("<QQ", descs, slot * 24 + 8, begin - begin % size, begin - begin % size + size - 8)
            struct.pack_into("<H", infos, slot * 88 + 16, 0xFFFF)
        hostile = ElfCore(core.name, overlay(core._read_at, [(ring.descs[0], bytes(descs)), (ring.infos[0], bytes(infos))]),
                          core.size, core.machine, core.little_endian, core.segments, core.notes)
        with pytest.raises(PrintkCorruptError, match="more text than the 131072-byte ring") as err:
            extract_dmesg(hostile)
    assert err.value.partial.startswith(b"[    0.000000] Linux version 6.12.117")


def test_ring_tail_too_far_from_head_reads_the_last_ring_full(vmcore_612: Path, caplog) -> None:
    """A tail id a million ids behind the head (more than the 4096 descriptors): the last 4096 ids are
    read, which still holds every record, with a warning."""
    with ElfCore.open(str(vmcore_612)) as core:
        ring = locate_ring(core)
        prb = core._read_at(*ring.prb)
        head_id = struct.unpack_from("<Q", prb, 24)[0]
        hostile = ElfCore(core.name, overlay(core._read_at, [(ring.prb[0] + 32, struct.pack("<Q", head_id - 10**6))]),
                          core.size, core.machine, core.little_endian, core.segments, core.notes)
        with caplog.at_level("WARNING", logger="capture.formats.printk"):
            out = extract_dmesg(hostile)
    assert out == (shared_dir() / "fixtures" / "vmcore-6.12-cloud-512M.dmesg.txt").read_bytes()
    assert "are 1000000 apart in a ring of 4096; reading the last 4096" in caplog.text


def test_ring_records_jumping_around_a_big_ring_are_corrupt() -> None:
    """A ring too big to read whole, whose records alternate between its two ends: not read over and over."""
    image = build_prb([Rec(b"a")] * 64, count_bits=6, size_bits=23, first_id=0, first_lpos=0)
    descs = bytearray(image.descs)
    for slot in range(64):
        begin = (slot % 2) * (7 << 20) + slot * 64
        struct.pack_into("<QQ", descs, slot * 24 + 8, begin, begin + 16)
    image = PrbImage(bytes(descs), image.infos, image.text, 6, 23, 63, 0, 0, 0)
    with pytest.raises(PrintkCorruptError, match="jump back and forth in the printk text ring"):
        extract_dmesg(prb_core(image))


# -- the log_buf of struct printk_log (Linux 3.5-5.9) -----------------------------------------------

def test_log_buf_layout_synthetic() -> None:
    buf, first, next_idx = wrapped_log_buf(
        [printk_log(1_500_000_000, b"first"),
         printk_log(2_000_001_999, b"second", dict_=b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0")],
        [printk_log(12_345_678_000, b"wrapped\nline two"),
         printk_log(123_456_000_000_000, b"esc \x01\x7f\xe2\t end\nwide")],
        buf_len=512, first=300)
    core = log_buf_core(buf, first, next_idx, log_buf_info())
    assert extract_dmesg(core) == (
        b"[    1.500000] first\n"
        b"[    2.000001] second\n"
        b"[   12.345678] wrapped" + INDENT + b"line two\n"
        b"[123456.000000] esc \\x01\\x7f\\xffffffe2\t end\n                wide\n")


def test_log_buf_big_endian_unsigned_char_and_old_struct_name() -> None:
    """ppc64 (big-endian, unsigned char: makedumpfile writes \\xe2) and the 3.5-3.10 name `log`."""
    recs = [printk_log(5_000_000, b"be \xe2", little=False), printk_log(6_000_000, b"two", little=False)]
    buf = b"".join(recs).ljust(256, b"\0")
    core = log_buf_core(buf, 0, sum(map(len, recs)), log_buf_info(name="log"), little=False, machine=21)
    assert core.machine == "ppc64"
    assert extract_dmesg(core) == b"[    0.005000] be \\xe2\n[    0.006000] two\n"


def test_log_buf_caller_id() -> None:
    recs = [printk_log(1_000, b"task", caller=123), printk_log(2_000, b"cpu", caller=0x80000001)]
    buf = b"".join(recs).ljust(128, b"\0")
    core = log_buf_core(buf, 0, sum(map(len, recs)), log_buf_info(with_caller=True))
    assert extract_dmesg(core, caller_id=True) == (b"[    0.000001] [    T123] task\n"
                                                   b"[    0.000002] [      C1] cpu\n")
    assert extract_dmesg(core) == b"[    0.000001] task\n[    0.000002] cpu\n"


def test_log_buf_empty_and_errors() -> None:
    info = log_buf_info()
    assert extract_dmesg(log_buf_core(bytes(64), 0, 0, info)) == b""
    # a loop: the record at 0 says the next one is at 0 again
    loop = printk_log(1, b"again").ljust(64, b"\0")
    looping = bytearray(loop)
    looping[8:10] = struct.pack("<H", 0)
    with pytest.raises(PrintkCorruptError, match="loop back") as err:
        extract_dmesg(log_buf_core(bytes(looping), 0, 32, info))
    assert err.value.partial == b"[    0.000000] again\n"
    far = bytearray(loop)
    far[8:10] = struct.pack("<H", 60)
    with pytest.raises(PrintkCorruptError, match="points to offset 60, outside the 64-byte log_buf"):
        extract_dmesg(log_buf_core(bytes(far), 0, 48, info))
    with pytest.raises(PrintkCorruptError, match="log_first_idx 50 is outside"):
        extract_dmesg(log_buf_core(loop, 50, 0, info))
    with pytest.raises(DumpFormatError, match="implausible log_buf_len"):
        extract_dmesg(log_buf_core(loop, 0, 32, info, buf_len=1 << 30))
    with pytest.raises(DumpFormatError, match="older than 3.5"):
        extract_dmesg(synthetic_core({"SYMBOL(log_buf)": f"{VARS:x}"}, {VARS: bytes(8)}))
    with pytest.raises(DumpFormatError, match="lacks OFFSET\\(printk_log.text_len\\)"):
        extract_dmesg(log_buf_core(loop, 0, 32, {k: v for k, v in info.items() if "text_len" not in k}))


def test_log_buf_layout_equals_makedumpfile(vmcore_61: Path, makedumpfile: str, scratch_copy, tmp_path: Path) -> None:
    """The 6.1 fixture rewritten to hold a wrapped log_buf instead of prb: makedumpfile's old path agrees."""
    copy = scratch_copy(vmcore_61)
    with ElfCore.open(str(copy)) as core:
        ring = locate_ring(core)
        note = next(s for s in core.segments if s.type == PT_NOTE)
        old_info = next(n.desc for n in core.notes if n.name == "VMCOREINFO")
        kept = {k: v for k, v in core.vmcoreinfo.items()
                if not re.search(r"prb|printk|clear_seq|latched_seq|atomic_long_t", k)}
    with open(copy, "rb") as f:
        f.seek(note.offset)
        info_at = note.offset + f.read(note.filesz).index(old_info)
    rng = random.Random(7)
    words = [b"usb", b"pci 0000:00:01.0:", b"eth0: link up", b"\xe2\x80\x94", b"\x1b[0m", b"a\nb", b"\t"]

    def random_record(ts: int) -> bytes:
        text = b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 8)))
        return printk_log(ts, text, dict_=b"DEVICE=+usb:1-1" if rng.random() < 0.3 else b"")
    buf_len = 8192
    records = [random_record(ts * 1_000_003) for ts in range(400)]
    end, start, at = [], [], 5000
    for rec in records:
        if at + len(rec) + 16 <= buf_len and not start:
            end.append(rec)
            at += len(rec)
        elif sum(map(len, start)) + len(rec) < 4900:
            start.append(rec)
    buf, first, next_idx = wrapped_log_buf(end, start, buf_len, 5000)
    assert end and start

    a = ring.prb_vaddr
    new_info = dict(kept, **{"SYMBOL(log_buf)": f"{a:x}", "SYMBOL(log_buf_len)": f"{a + 8:x}",
                             "SYMBOL(log_first_idx)": f"{a + 12:x}", "SYMBOL(log_next_idx)": f"{a + 16:x}",
                             "SYMBOL(clear_idx)": f"{a + 20:x}"}, **log_buf_info())
    text = "".join(f"{k}={v}\n" for k, v in new_info.items()).encode()
    assert len(text) <= len(old_info)
    patch_file(copy, info_at, text.ljust(len(old_info), b"\n"))
    patch_file(copy, ring.prb[0], struct.pack("<QIIII", ring.text_vaddr, buf_len, first, next_idx, first))
    patch_file(copy, ring.text[0], buf)

    expected = dump_dmesg(makedumpfile, copy, tmp_path / "dmesg.txt")
    assert expected.count(b"\n[") == len(end) + len(start) - 1
    with ElfCore.open(str(copy)) as core:
        assert "SYMBOL(prb)" not in core.vmcoreinfo
        assert extract_dmesg(core) == expected


# -- errors ---------------------------------------------------------------------------------------

def test_missing_vmcoreinfo_pieces(vmcore_612: Path) -> None:
    with ElfCore.open(str(vmcore_612)) as core:
        info = dict(core.vmcoreinfo)
        with pytest.raises(DumpFormatError, match="no VMCOREINFO"):
            extract_dmesg(ElfCore(core.name, core._read_at, core.size, core.machine, core.little_endian,
                                  core.segments, [n for n in core.notes if n.name != "VMCOREINFO"]))
        with pytest.raises(DumpFormatError, match="neither prb"):
            extract_dmesg(with_vmcoreinfo(core, {k: v for k, v in info.items() if k != "SYMBOL(prb)"}))
        with pytest.raises(DumpFormatError, match=r"lacks OFFSET\(prb_desc.state_var\)"):
            extract_dmesg(with_vmcoreinfo(core, {k: v for k, v in info.items() if k != "OFFSET(prb_desc.state_var)"}))
        with pytest.raises(DumpFormatError, match="the pointer prb .* is not in the dump"):
            extract_dmesg(with_vmcoreinfo(core, dict(info, **{"SYMBOL(prb)": "1000"})))
        with pytest.raises(DumpFormatError, match="outside its 24-byte structure prb_desc"):
            extract_dmesg(with_vmcoreinfo(core, dict(info, **{"OFFSET(prb_desc.text_blk_lpos)": "20"})))
        with pytest.raises(DumpFormatError, match="printk_info.ts_nsec and printk_info.text_len at overlapping"):
            extract_dmesg(with_vmcoreinfo(core, dict(info, **{"OFFSET(printk_info.text_len)": "12"})))


def test_implausible_ring_sizes(vmcore_612: Path) -> None:
    with ElfCore.open(str(vmcore_612)) as core:
        ring = locate_ring(core)
        for at, value, message in ((0, 30, "descriptor ring of 2\\^30"), (48, 40, "text ring of 2\\^40")):
            hostile = ElfCore(core.name, overlay(core._read_at, [(ring.prb[0] + at, struct.pack("<I", value))]),
                              core.size, core.machine, core.little_endian, core.segments, core.notes)
            with pytest.raises(DumpFormatError, match=message):
                extract_dmesg(hostile)


# -- properties -------------------------------------------------------------------------------------

PRINTK_KEY = re.compile(r"prb|printk|atomic_long_t|clear_seq|latched_seq")


@pytest.fixture(scope="session")
def core_612(vmcore_612: Path) -> Iterator[ElfCore]:
    with ElfCore.open(str(vmcore_612)) as core:
        yield core


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-8, 300).map(str), st.integers(-(1 << 70), 1 << 70).map(str),
                     st.integers(0, (1 << 64) - 1).map(lambda n: f"{n:x}"), st.text(max_size=6))


@HYPOTHESIS
@given(data=st.data())
def test_mutated_vmcoreinfo_gives_bytes_or_dump_format_error(core_612: ElfCore, data: st.DataObject) -> None:
    info = dict(core_612.vmcoreinfo)
    keys = sorted(k for k in info if PRINTK_KEY.search(k))
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(keys))
        value = data.draw(st.one_of(st.none(), numbers()))
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    try:
        out = extract_dmesg(with_vmcoreinfo(core_612, info))
    except DumpFormatError as exc:
        assert str(exc)
        event(f"{type(exc).__name__}: {re.sub(r'0x[0-9a-f]+|[0-9]+', 'N', str(exc).split(': ', 1)[-1])[:70]}")
        return
    event("bytes")
    assert isinstance(out, bytes) and len(out) <= MAX_OUTPUT_BYTES


@HYPOTHESIS
@given(data=st.data())
def test_corrupt_ring_data_gives_bytes_or_dump_format_error(core_612: ElfCore, data: st.DataObject) -> None:
    ring = locate_ring(core_612)
    regions = [ring.prb, ring.descs, ring.infos, ring.text]
    big = max(core_612.loads, key=lambda s: s.memsz)
    values = st.one_of(
        st.binary(min_size=1, max_size=16),
        st.integers(0, (1 << 64) - 1).map(lambda n: struct.pack("<Q", n)),
        st.integers(0, 40).map(lambda n: struct.pack("<I", n)),
        st.integers(0, big.memsz - 1).map(lambda n: struct.pack("<Q", big.vaddr + n)))
    patches = []
    for _ in range(data.draw(st.integers(1, 8))):
        start, length = data.draw(st.sampled_from(regions))
        patches.append((start + data.draw(st.integers(0, length - 1)), data.draw(values)))
    hostile = ElfCore(core_612.name, overlay(core_612._read_at, patches), core_612.size, core_612.machine,
                      core_612.little_endian, core_612.segments, core_612.notes)
    try:
        out = extract_dmesg(hostile, caller_id=data.draw(st.booleans()))
    except DumpFormatError as exc:
        assert str(exc)
        event(f"{type(exc).__name__}: {re.sub(r'0x[0-9a-f]+|[0-9]+', 'N', str(exc).split(': ', 1)[-1])[:70]}")
        return
    event("bytes")
    assert isinstance(out, bytes) and len(out) <= MAX_OUTPUT_BYTES


@HYPOTHESIS
@given(texts=st.lists(st.binary(max_size=24), max_size=12), slack=st.integers(0, 64),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=12),
       first=st.integers(0, 1 << 16), next_idx=st.integers(0, 1 << 16), caller=st.booleans(), little=st.booleans())
def test_corrupt_log_buf_gives_bytes_or_dump_format_error(texts: List[bytes], slack: int, flips: List[Tuple[int, int]],
                                                         first: int, next_idx: int, caller: bool, little: bool) -> None:
    """Well-formed records with bytes overwritten anywhere (lengths included) and arbitrary indexes."""
    recs = [printk_log(i * 1_000_000, t, caller=i if caller else None, little=little) for i, t in enumerate(texts)]
    buf = bytearray(b"".join(recs) + bytes(max(slack, 24)))
    for pos, value in flips:
        buf[pos % len(buf)] = value
    core = log_buf_core(bytes(buf), first % (len(buf) + 8), next_idx % (len(buf) + 8),
                        log_buf_info(with_caller=caller), little=little)
    try:
        out = extract_dmesg(core, caller_id=caller)
    except DumpFormatError as exc:
        assert str(exc)
        event(f"{type(exc).__name__}: {re.sub(r'0x[0-9a-f]+|[0-9]+', 'N', str(exc).split(': ', 1)[-1])[:70]}")
        return
    event("bytes")
    assert isinstance(out, bytes)


@HYPOTHESIS
@given(texts=st.lists(st.binary(max_size=40), min_size=1, max_size=30), wrap=st.integers(0, 29))
def test_well_formed_log_buf_gives_one_line_per_record(texts: List[bytes], wrap: int) -> None:
    """Records laid out as the kernel does, wrapped anywhere: one line each, in order, timestamps intact."""
    recs = [printk_log((i + 1) * 1_000_000_000, t) for i, t in enumerate(texts)]
    wrap = min(wrap, len(recs))
    tail_part, head_part = recs[wrap:], recs[:wrap]
    before = sum(map(len, head_part))
    buf, first, next_idx = wrapped_log_buf(tail_part, head_part, before + sum(map(len, tail_part)) + 64, before + 8)
    out = extract_dmesg(log_buf_core(buf, first, next_idx, log_buf_info()))
    order = list(range(wrap, len(recs))) + list(range(wrap))
    stamps = [int(m) for m in re.findall(rb"^\[ *(\d+)\.000000\] ", out, re.M)]
    assert stamps == [i + 1 for i in order]
    assert out.count(b"\n") == len(recs) + sum(t.count(b"\n") for t in texts)
