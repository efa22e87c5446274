"""What a dump file is: format, kernel, crash time, dump level, and whether it is complete.

:func:`describe` recognises, by content and never by name alone:

- an ELF core (``/proc/vmcore`` copied raw, ``makedumpfile -E``),
- a kdump-compressed dump (``makedumpfile -c/-l/-p/-z``),
- makedumpfile's flattened stream (``-F``) of either, read in place,
- an lz4 frame (the raw format of this saver) holding any of the above.

It reads headers, notes, bitmaps and page descriptors, not the page data,
except that an lz4 frame must be decompressed up to the parts it reads.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, List, Optional

from capture.formats import flattened
from capture.formats import kdumpfile
from capture.formats import INCOMPLETE
from capture.formats.elfcore import ELF_MAGIC, ElfCore, NotACoreError
from capture.formats.readat import FileReader, ReadAt
from capture.formats.untrusted import MAX_TIME, printable
from capture.errors import DumpFormatError, KdumpError

log = logging.getLogger(__name__)

LZ4_MAGIC = 0x184D2204
LZ4_SKIPPABLE = range(0x184D2A50, 0x184D2A60)
NT_PRPSINFO = 3
NT_FILE = 0x46494C45


@dataclass
class DumpInfo:
    """What :func:`describe` found out about one file."""
    path: str
    file_size: int
    #: "ELF" or "kdump-compressed": the dump itself
    format: str = ""
    #: wrappers around the dump, outermost first: "lz4 frame", "flattened"
    containers: List[str] = field(default_factory=list)
    #: page compression of a kdump-compressed dump ("zlib", "lzo", "snappy", "zstd", "none"); None for ELF
    compression: Optional[str] = None
    architecture: Optional[str] = None
    kernel_release: Optional[str] = None
    nodename: Optional[str] = None
    #: seconds since the epoch (VMCOREINFO CRASHTIME)
    crash_time: Optional[int] = None
    page_size: Optional[int] = None
    #: makedumpfile -d level; None when the format does not record it
    dump_level: Optional[int] = None
    #: bytes of physical memory an ELF dump describes
    memory_size: Optional[int] = None
    #: pages stored in a kdump-compressed dump
    dumped_pages: Optional[int] = None
    #: flattened streams: whether the end marker is there (None: not flattened)
    end_marker: Optional[bool] = None
    #: size of the dump inside its containers (None when not known without reading it all)
    dump_size: Optional[int] = None
    complete: bool = True
    #: why the dump is incomplete (empty when complete)
    problems: List[str] = field(default_factory=list)
    #: other observations worth telling
    remarks: List[str] = field(default_factory=list)
    #: what wrote the dump (makedumpfile or kdump-saver's collector), from the
    #: kdump-saver README beside it; None when there is none to tell
    collector: Optional[str] = None

    @property
    def format_description(self) -> str:
        text = self.format
        if self.format == "kdump-compressed" and self.compression:
            text += f", {self.compression}" if self.compression != "none" else ", uncompressed pages"
        for container in reversed(self.containers):
            if container == "flattened":
                text = f"flattened {text} (makedumpfile -F; `kdump-saver reassemble` rebuilds the real file)"
            else:
                text = f"{container} containing {text}"
        return text

    def format_text(self) -> str:
        """A human-readable report, one ``label: value`` line each."""
        def size_text(n: Optional[int]) -> str:
            return "unknown" if n is None else f"{n} bytes ({n / (1 << 20):.1f} MiB)"

        if self.crash_time is not None and 0 <= self.crash_time <= MAX_TIME:
            crash = datetime.fromtimestamp(self.crash_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            crash = "unknown"
        if self.dump_level is not None:
            level = str(self.dump_level)
        else:
            level = "not recorded" if self.format == "ELF" else "unknown"
        rows = [
            ("file", self.path),
            ("format", self.format_description),
            ("architecture", self.architecture or "unknown"),
            ("kernel release", self.kernel_release or "unknown"),
            ("host name", self.nodename or "unknown"),
            ("crash time", crash),
            ("page size", str(self.page_size) if self.page_size else "unknown"),
            ("dump level", level),
        ]
        if self.memory_size is not None:
            rows.append(("memory in dump", size_text(self.memory_size)))
        if self.dumped_pages is not None:
            rows.append(("pages in dump", str(self.dumped_pages)))
        if self.collector:
            rows.append(("collector", self.collector))
        rows.append(("file size", size_text(self.file_size)))
        if self.containers:
            rows.append(("dump size", size_text(self.dump_size)))
        if self.end_marker is not None:
            rows.append(("end marker", "present" if self.end_marker else "MISSING"))
        rows.append(("status", "complete" if self.complete else "INCOMPLETE"))
        width = max(len(label) for label, _ in rows) + 1
        lines = [f"{label + ':':<{width}} {printable(value, 4096)}" for label, value in rows]
        lines += [f"  INCOMPLETE: {printable(p, 4096)}" for p in self.problems]
        lines += [f"  note: {printable(r, 4096)}" for r in self.remarks]
        return "\n".join(lines) + "\n"


def describe(path: str) -> DumpInfo:
    """Tell what the dump at ``path`` is.

    Raises :class:`DumpFormatError` ("PATH is not a kernel dump (...)") for a
    file that is none of the known formats, and for a dump too damaged to
    read its headers; :class:`KdumpError` when the file cannot be read.  An
    incomplete dump is not an error: ``complete`` is False and ``problems``
    says why.
    """
    if os.path.isdir(path):
        raise DumpFormatError(f"{path} is not a kernel dump (it is a directory)")
    with FileReader(path) as reader:
        info = DumpInfo(path=path, file_size=reader.size)
        head = reader(0, 8)
        if not head:
            raise DumpFormatError(f"{path} is not a kernel dump (the file is empty)")
        if len(head) >= 4 and struct.unpack_from("<I", head)[0] == LZ4_MAGIC:
            _describe_lz4(path, reader, info)
        else:
            _describe_content(reader, reader.size, path, info, allow_flattened=True)
    info.collector = collector_from_readme(path)
    if path.endswith(INCOMPLETE):
        info.problems.append(f"the name ends in '{INCOMPLETE}': whoever wrote it did not finish")
    info.complete = not info.problems
    return info


def collector_from_readme(path: str) -> Optional[str]:
    """The ``collector:`` line of the kdump-saver README.txt beside ``path``,
    when that README is about this file (its ``saved:`` line names it)."""
    readme = os.path.join(os.path.dirname(os.path.abspath(path)), "README.txt")
    try:
        with open(readme, "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return None
    rows = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    saved = rows.get("saved", "").split()
    name = os.path.basename(path)
    if not saved or saved[0] not in (name, name[:-len(INCOMPLETE)] if name.endswith(INCOMPLETE) else name):
        return None
    value = rows.get("collector", "").strip()
    return "".join(c for c in value if c.isprintable())[:200] or None


def _describe_content(read_at: ReadAt, size: Optional[int], name: str, info: DumpInfo,
                      allow_flattened: bool) -> None:
    """Fill ``info`` from the dump ``read_at`` reads (``size`` None: not known)."""
    head = read_at(0, 32)
    if head.startswith(ELF_MAGIC):
        _describe_elf(read_at, size, name, info)
    elif head.startswith(kdumpfile.SIGNATURE):
        _describe_kdump(read_at, size, name, info)
    elif allow_flattened and head.startswith(flattened.SIGNATURE):
        _describe_flattened(read_at, size, name, info)
    else:
        raise DumpFormatError(f"{name} is not a kernel dump (no ELF, kdump-compressed, flattened or lz4 signature)")


def _describe_elf(read_at: ReadAt, size: Optional[int], name: str, info: DumpInfo) -> None:
    try:
        core = ElfCore.from_reader(read_at, size, name)
    except NotACoreError as exc:
        kinds = {1: "a relocatable object", 2: "an executable", 3: "a shared object or executable"}
        kind = kinds.get(exc.e_type, f"ELF type {exc.e_type}")
        raise DumpFormatError(f"{name} is not a kernel dump (an ELF file, but {kind}, not a core dump)") from None
    if not core.vmcoreinfo and any(n.type in (NT_PRPSINFO, NT_FILE) for n in core.notes):
        raise DumpFormatError(f"{name} is not a kernel dump (it is the core dump of a process)")
    info.format = "ELF"
    info.architecture = core.machine
    info.kernel_release = core.osrelease
    info.crash_time = core.crash_time
    info.page_size = core.page_size
    info.memory_size = core.memory_size
    info.dump_size = size
    if not core.vmcoreinfo:
        info.remarks.append("no VMCOREINFO note: kernel release and crash time are not recorded")
    if size is None:
        info.remarks.append(f"the ELF headers describe {core.expected_size} bytes; how many are stored is not known")
    elif size < core.expected_size:
        info.problems.append(f"the dump has {size} bytes, its ELF headers describe {core.expected_size}")
    try:
        info.nodename = core.nodename()
    except KdumpError as exc:
        log.debug("%s: host name not readable: %s", name, exc)


def _describe_kdump(read_at: ReadAt, size: Optional[int], name: str, info: DumpInfo) -> None:
    hdr = kdumpfile.parse_header(read_at, name)
    info.format = "kdump-compressed"
    info.compression = hdr.compression
    info.architecture = hdr.machine or None
    info.kernel_release = hdr.release or None
    info.nodename = hdr.utsname.get("nodename") or None
    info.page_size = hdr.page_size
    info.dump_level = hdr.dump_level
    info.dump_size = size
    info.crash_time = hdr.crash_time
    if info.crash_time is None and hdr.header_time is not None:
        info.crash_time = hdr.header_time
        info.remarks.append("no CRASHTIME in VMCOREINFO; the crash time is the dump header's time stamp")
    if hdr.sub_header_missing:
        info.remarks.append("the dump ends before its sub header: dump level and VMCOREINFO are unknown")
    if hdr.split:
        info.remarks.append(f"one part of a split dump (pfn {hdr.start_pfn}..{hdr.end_pfn})")
    if size is None:
        if hdr.incomplete_flag:
            info.problems.append("makedumpfile marked it incomplete")
        info.remarks.append("how many bytes are stored is not known")
        return
    info.problems.extend(kdumpfile.completeness_problems(hdr, read_at, size, name))
    if size >= hdr.descriptors_offset:
        try:
            info.dumped_pages = kdumpfile.count_dumped_pages(hdr, read_at, name)
        except DumpFormatError:
            pass


def _describe_flattened(read_at: ReadAt, size: Optional[int], name: str, info: DumpInfo) -> None:
    index = flattened.FlatIndex.scan(read_at, size, name)
    info.containers.append("flattened")
    info.end_marker = index.complete
    if index.corruption:
        info.problems.append(f"{index.corruption}; nothing after it is readable")
    elif not index.complete:
        info.problems.append(f"the flattened stream has no end marker (it ends at stream offset "
                             f"{index.truncated_at})")
    inner = index.read_at(0, 8)
    if not (inner.startswith(ELF_MAGIC) or inner.startswith(kdumpfile.SIGNATURE)):
        if index.complete:
            raise DumpFormatError(f"{name} is not a kernel dump (a flattened stream holding neither "
                                  "an ELF nor a kdump-compressed dump)")
        info.format = "unknown (the stream ends before the dump header was written)"
        return
    _describe_content(index.read_at, index.file_size, name, info, allow_flattened=False)
    if info.format == "kdump-compressed" and info.dumped_pages is not None:
        hdr = kdumpfile.parse_header(index.read_at, name)
        half = hdr.bitmap_size // 2
        used = min(half, (hdr.max_mapnr + 7) // 8) if hdr.max_mapnr else 0  # makedumpfile writes no more
        areas = (("the dump header", 0, kdumpfile.HEADER_SIZE),
                 ("the first page bitmap", hdr.bitmap_offset, hdr.bitmap_offset + used),
                 ("the second page bitmap", hdr.bitmap_offset + half, hdr.bitmap_offset + half + used),
                 ("the page descriptors", hdr.descriptors_offset,
                  hdr.descriptors_offset + info.dumped_pages * kdumpfile.PAGE_DESC_SIZE))
        for what, start, end in areas:
            hole = index.first_hole(start, end)
            if hole is not None:
                info.problems.append(f"the stream holds no data for byte {hole} of the real file ({what})")
                break


class _Lz4Content:
    """Random reads of an lz4 file's decompressed content (rewinds for backward reads)."""

    def __init__(self, path: str) -> None:
        import lz4.frame
        self._file = lz4.frame.open(path, "rb")

    def __call__(self, offset: int, length: int) -> bytes:
        try:
            self._file.seek(offset)
            return self._file.read(length)
        except (RuntimeError, EOFError, OSError) as exc:
            # a damaged or truncated frame: what was decompressed so far is all there is
            log.debug("lz4 content at %d: %s", offset, exc)
            return b""

    def verify(self) -> "tuple[Optional[int], Optional[str]]":
        """Decompress the whole content, which checks the frame's block and
        content checksums where the frame has them: (size, None), or (None, what is wrong)."""
        try:
            self._file.seek(0)
            total = 0
            while True:
                chunk = self._file.read(1 << 20)
                if not chunk:
                    return total, None
                total += len(chunk)
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            log.debug("lz4 content: %s", exc)
            why = str(exc)
            for word, text in (("checksum", "a checksum does not match"), ("ERROR_", why.split("ERROR_", 1)[-1])):
                if word in why:
                    return None, f"the lz4 data is damaged ({text})"
            return None, f"the lz4 data cannot be decompressed at byte {total} of its content"

    def close(self) -> None:
        self._file.close()


def _describe_lz4(path: str, reader: FileReader, info: DumpInfo) -> None:
    info.containers.append("lz4 frame")
    complete, content_size, problem = lz4_frames(reader)
    if problem:
        info.problems.append(problem)
    content = _Lz4Content(path)
    try:
        if not content(0, 8):
            raise DumpFormatError(f"{path}: the lz4 frame holds no readable data")
        measured, damage = content.verify()
        if damage and not problem:
            info.problems.append(damage)
        elif complete and content_size is not None and measured != content_size:
            info.problems.append(f"the lz4 frame declares {content_size} bytes of content but holds {measured}")
        _describe_content(content, measured if complete and not damage else None, path, info,
                          allow_flattened=True)
    finally:
        content.close()


def lz4_frames(read_at: ReadAt) -> "tuple[bool, Optional[int], Optional[str]]":
    """Walk the lz4 frames' block headers (no decompression).

    Returns (complete, content size or None when a frame does not record
    it, problem or None).  Complete means every frame reached its end mark
    (and content checksum) within the file.
    """
    pos = 0
    frames = 0
    content_size: Optional[int] = 0
    while True:
        head = read_at(pos, 8)
        if not head:
            break
        if len(head) < 4:
            return False, None, f"the lz4 data ends in a frame header (byte {pos})"
        magic = struct.unpack_from("<I", head)[0]
        if magic in LZ4_SKIPPABLE:
            if len(head) < 8:
                return False, None, f"the lz4 data ends in a skippable frame (byte {pos})"
            pos += 8 + struct.unpack_from("<I", head, 4)[0]
            continue
        if magic != LZ4_MAGIC:
            if frames:
                return True, content_size, f"unexpected data after the lz4 frame (byte {pos})"
            return False, None, "not an lz4 frame"
        descriptor = read_at(pos + 4, 15)
        if len(descriptor) < 3:
            return False, None, f"the lz4 data ends in a frame header (byte {pos})"
        flg = descriptor[0]
        if flg >> 6 != 1:
            return False, None, f"unknown lz4 frame version {flg >> 6} (byte {pos})"
        has_block_checksum, has_size, has_checksum, has_dict = flg & 0x10, flg & 0x08, flg & 0x04, flg & 0x01
        header_len = 4 + 2 + (8 if has_size else 0) + (4 if has_dict else 0) + 1
        if has_size and len(descriptor) >= 10:
            if content_size is not None:
                content_size += struct.unpack_from("<Q", descriptor, 2)[0]
        else:
            content_size = None
        pos += header_len
        while True:
            raw = read_at(pos, 4)
            if len(raw) < 4:
                return False, None, "the lz4 frame is truncated (its end mark is missing)"
            block = struct.unpack("<I", raw)[0]
            pos += 4
            if block == 0:
                break
            pos += (block & 0x7FFFFFFF) + (4 if has_block_checksum else 0)
        if has_checksum:
            if len(read_at(pos, 4)) < 4:
                return False, None, "the lz4 frame is truncated: its content checksum is missing"
            pos += 4
        frames += 1
    if not frames:
        return False, None, "no lz4 frame"
    return True, content_size, None
