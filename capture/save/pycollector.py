"""Our own dump collector, for when makedumpfile is missing, fails, is killed or cannot be trusted.

:func:`collect` reads an ELF vmcore (``/proc/vmcore``), leaves out the pages
the dump level names (:mod:`capture.formats.pageclass`), and writes a
kdump-compressed dump as makedumpfile's flattened stream
(:mod:`capture.formats.kdumpwriter`), so whatever consumes ``makedumpfile -F``
consumes it unchanged.  Pages can be read and compressed by worker processes
(:mod:`capture.save.pyworkers`); the output is the same, in the same order.

:func:`estimate_size` predicts the size of the dump before it is written
(when makedumpfile's own filtering cannot be trusted is
:func:`capture.formats.dumplevel.makedumpfile_misfilters`).

Run as a program it behaves like ``makedumpfile -F``: the stream on stdout,
makedumpfile-style progress lines on stderr::

    python -m capture.save.pycollector [-d LEVEL] [--cpus N] [--zlib] VMCORE > vmcore.flat
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple

from capture.formats.elfcore import PT_NOTE, ElfCore
from capture.errors import DumpFormatError, KdumpError
from capture.formats.kdumpwriter import (CompressedPages, DumpHeader, KdumpStreamWriter, PageCoding,
                                         available_compression, compress_pages)
from capture.formats.kmem import PhysicalMemory
from capture.save.pyworkers import affordable_workers, parallel_batches
from capture.formats.pageclass import (CACHE, CACHE_PRIVATE, CLASS_NAMES, FREE, USER, Bitmaps,
                                       PageClassifier, bitmap_bytes, build_bitmaps, report_progress, unpack_bits)
from capture.formats.kdumpfile import PAGE_DESC_SIZE

log = logging.getLogger(__name__)

#: pages read and compressed as one task (1 MiB: a worker's private memory stays near 7 MB, measured)
TASK_PAGES = 256

#: pages compressed for the size estimate: within 5 % of 4096 on the fixtures and the 1.1 GB vmcore,
#: in a tenth of the time (bench/save_local.py --big)
ESTIMATE_SAMPLE_PAGES = 512

#: one read: (physical address, pages, file offset or -1 when the page must be read piecewise)
Run = Tuple[int, int, int]


class CollectError(KdumpError):
    """The vmcore could not be collected."""


@dataclass
class CollectResult:
    """What :func:`collect` wrote."""
    requested_level: int
    dump_level: int
    """The level actually applied (bits the vmcore does not allow are dropped; see ``notes``)."""
    compression: str
    pages_present: int
    pages_dumped: int
    zero_pages: int
    excluded: Dict[str, int]
    file_size: int
    """Size of the real kdump-compressed file the stream rebuilds into."""
    stream_bytes: int
    seconds: float
    notes: Tuple[str, ...] = ()


# -- the plan: which pages, which header ----------------------------------------------------------

@dataclass
class _Plan:
    core: ElfCore
    memory: PhysicalMemory
    page_size: int
    bitmaps: Bitmaps
    dump_level: int
    notes: List[str] = field(default_factory=list)


def _plan(vmcore_path: str, dump_level: int, progress: Optional[object]) -> _Plan:
    if not 0 <= dump_level <= 31:
        raise CollectError(f"dump level {dump_level} is outside 0..31")
    core = ElfCore.open(vmcore_path)
    try:
        memory = PhysicalMemory.from_core(core, vmcore_path)
        if not memory.extents:
            raise CollectError(f"{vmcore_path} has no PT_LOAD segments: no memory to save")
        notes: List[str] = []
        page_size = core.page_size or 4096
        if core.page_size is None:
            notes.append("VMCOREINFO has no PAGESIZE; assuming 4096")
        if page_size & (page_size - 1) or not 1024 <= page_size <= (1 << 20):
            raise CollectError(f"VMCOREINFO PAGESIZE={page_size} is not a usable page size")
        wants_struct_pages = dump_level & (CACHE | CACHE_PRIVATE | USER | FREE) or \
            "NUMBER(PG_hwpoison)" in core.vmcoreinfo
        classifier = None
        level = dump_level
        if wants_struct_pages:
            try:
                classifier = PageClassifier.open(core, memory)
            except DumpFormatError as exc:
                if dump_level & (CACHE | CACHE_PRIVATE | USER | FREE):
                    notes.append(f"pages cannot be classified ({exc}); only zero pages are left out")
                level = dump_level & 1
        if classifier is not None:
            if not classifier.layout.can_tell_slab:
                level &= ~USER
            if not classifier.layout.can_find_buddies:
                level &= ~FREE
            notes.extend(classifier.layout.notes)
        bitmaps = build_bitmaps(memory, page_size, level, classifier, progress)
        if bitmaps.counts.unreadable_struct_pages:
            notes.append(f"{bitmaps.counts.unreadable_struct_pages} page frames had unreadable struct pages "
                         f"and were kept")
        return _Plan(core, memory, page_size, bitmaps, level, notes)
    except BaseException:
        core.close()
        raise


def _utsname(core: ElfCore) -> bytes:
    uts = core.utsname() or {"sysname": "Linux", "release": core.osrelease or "", "machine": core.machine}
    fields = ("sysname", "nodename", "release", "version", "machine", "domainname")
    return b"".join(uts.get(f, "").encode("utf-8", "replace")[:64].ljust(65, b"\0") for f in fields)


def _phys_base(core: ElfCore) -> int:
    value = core.vmcoreinfo.get("NUMBER(phys_base)")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _notes(core: ElfCore, memory: PhysicalMemory) -> bytes:
    return b"".join(memory.pread(s.offset, s.filesz) for s in core.segments if s.type == PT_NOTE and s.filesz)


def _header(plan: _Plan, compression: str) -> DumpHeader:
    return DumpHeader(utsname=_utsname(plan.core), timestamp=plan.core.crash_time or 0,
                      page_size=plan.page_size, max_mapnr=plan.bitmaps.max_mapnr, dump_level=plan.dump_level,
                      phys_base=_phys_base(plan.core), notes=_notes(plan.core, plan.memory),
                      compression=compression)


# -- reading pages --------------------------------------------------------------------------------

def dumpable_runs(dumpable: bytes) -> Iterator[Tuple[int, int]]:
    """``[start, end)`` runs of consecutive set bits of a page bitmap, in order."""
    block = 4096
    pending: Optional[List[int]] = None
    for lo in range(0, len(dumpable), block):
        chunk = bytes(dumpable[lo:lo + block])
        if chunk.count(0) == len(chunk):
            continue
        flags = unpack_bits(chunk)
        base = lo * 8
        pos = flags.find(1)
        while pos >= 0:
            end = flags.find(0, pos)
            if end < 0:
                end = len(flags)
            if pending is not None and pending[1] == base + pos:
                pending[1] = base + end
            else:
                if pending is not None:
                    yield pending[0], pending[1]
                pending = [base + pos, base + end]
            pos = flags.find(1, end)
    if pending is not None:
        yield pending[0], pending[1]


def page_tasks(memory: PhysicalMemory, dumpable: bytes, page_size: int,
               task_pages: int = TASK_PAGES) -> Iterator[List[Run]]:
    """The dumpable pages as lists of reads of at most ``task_pages`` pages in all, in frame order."""
    task: List[Run] = []
    size = 0
    for start, end in dumpable_runs(dumpable):
        pfn = start
        while pfn < end:
            paddr = pfn * page_size
            ext = memory.extent_of(paddr)
            whole = ext is not None and paddr + page_size <= ext.data_end
            if whole:
                n = min(end - pfn, (ext.data_end - paddr) // page_size, task_pages - size)  # type: ignore[union-attr]
                task.append((paddr, n, ext.offset + (paddr - ext.start)))  # type: ignore[union-attr]
            else:
                n = 1
                task.append((paddr, 1, -1))
            pfn += n
            size += n
            if size >= task_pages:
                yield task
                task, size = [], 0
    if task:
        yield task


def read_and_compress(memory: PhysicalMemory, runs: List[Run], coding: PageCoding,
                      close: bool = False) -> CompressedPages:
    """Read the pages of ``runs`` and compress them (a worker process's task)."""
    size = coding.page_size
    try:
        pieces = [memory.pread(off, n * size) if off >= 0 else
                  memory.read(paddr, n * size, holes_as_zeros=True) for paddr, n, off in runs]
        return compress_pages(pieces, coding)
    finally:
        if close:
            memory.close()


def _batches(memory: PhysicalMemory, dumpable: bytes, coding: PageCoding, cpus: int,
             cpu_seconds: Optional[List[float]] = None) -> Iterator[CompressedPages]:
    """Compressed batches in frame order; with ``cpus`` > 1 worker processes read and compress
    them (:mod:`capture.save.pyworkers`) while this process only writes."""
    def tasks() -> Iterator[List[Run]]:
        return page_tasks(memory, dumpable, coding.page_size)

    def compress(runs: List[Run]) -> CompressedPages:
        return read_and_compress(memory, runs, coding)

    if cpus <= 1:
        return map(compress, tasks())
    return parallel_batches(tasks, compress, cpus, cpu_seconds)


# -- the collector --------------------------------------------------------------------------------

def collect(vmcore_path: str, dump_level: int, out_fileobj: BinaryIO, cpus: int = 1,
            progress: Optional[object] = None, compression: str = "lzo") -> CollectResult:
    """Write the kdump-compressed dump of ``vmcore_path`` at ``dump_level`` to ``out_fileobj``
    as makedumpfile's flattened stream (``makedumpfile -F -l -d LEVEL`` equivalent).

    ``cpus`` > 1 reads and compresses pages in ``cpus`` worker processes (fewer when the
    available memory does not allow them) while this process writes; a worker that fails is
    replaced by this process, the output is the same.
    ``compression`` is "lzo" (falls back to "zlib" without python-lzo) or "zlib".
    ``progress`` (a :class:`capture.save.progress.Progress` or anything with ``phase``,
    ``percent`` and ``maybe_report()``) is told the phase and percentage.

    Levels the vmcore's VMCOREINFO cannot support are reduced, never guessed:
    the dump then keeps more, and ``notes`` says why.  Raises
    :class:`KdumpError` subclasses for unreadable or malformed input and for
    write errors; the stream then has no end marker, so readers see it as
    incomplete.
    """
    started = time.monotonic()
    method = available_compression(compression)
    plan = _plan(vmcore_path, dump_level, progress)
    try:
        header = _header(plan, method)
        bitmaps = plan.bitmaps
        total = bitmaps.num_dumpable
        writer = KdumpStreamWriter(out_fileobj, header, bitmaps.present_pieces(), bitmaps.dumpable, total)
        workers = affordable_workers(cpus) if cpus > 1 else 1
        if workers > 1:
            log.info("collecting with %d worker processes", workers)
        elif cpus > 1:
            log.warning("warning: memory for %d worker processes is not available; collecting in one process",
                        cpus)
        worker_cpu: List[float] = []
        serial_cpu = time.process_time()
        for batch in _batches(plan.memory, bitmaps.dumpable, writer.coding, workers, worker_cpu):
            writer.add(batch)
            if progress is not None:
                report_progress(progress, "Copying data", 100.0 * writer.pages_written / max(1, total))
        file_size = writer.finish()
        if worker_cpu:
            log.info("CPU seconds: %.2f in this process before the workers started, %.2f writing; "
                     "worker processes used %s", serial_cpu, time.process_time() - serial_cpu,
                     ", ".join(f"{s:.2f}" for s in worker_cpu))
        for note in plan.notes:
            log.warning("pycollector: %s", note)
        return CollectResult(
            requested_level=dump_level, dump_level=plan.dump_level, compression=method,
            pages_present=bitmaps.pages_present, pages_dumped=total, zero_pages=writer.zero_pages,
            excluded={CLASS_NAMES[c]: n for c, n in bitmaps.counts.by_class.items() if n},
            file_size=file_size, stream_bytes=writer.stream.bytes_written,
            seconds=time.monotonic() - started, notes=tuple(plan.notes))
    finally:
        plan.memory.close()
        plan.core.close()


# -- estimating the size --------------------------------------------------------------------------

@dataclass(frozen=True)
class SizeEstimate:
    """Expected size of the dump :func:`collect` would write."""
    dump_level: int
    pages_dumped: int
    sampled_pages: int
    bytes_per_page: float
    """Mean stored bytes per dumped page in the sample (a shared zero page stores none)."""
    size: int
    """Expected size of the kdump-compressed file, headers and descriptors included."""


def estimate_size(vmcore_path: str, dump_level: int, sample_pages: int = ESTIMATE_SAMPLE_PAGES,
                  compression: str = "lzo") -> SizeEstimate:
    """Predict the dump's size from the page classification and the compression of an evenly
    spread sample of the dumpable pages (``sample_pages`` of them at most)."""
    method = available_compression(compression)
    plan = _plan(vmcore_path, dump_level, None)
    try:
        bitmaps = plan.bitmaps
        total = bitmaps.num_dumpable
        stride = max(1, total // max(1, sample_pages))
        picked: List[Run] = []
        index = 0
        for runs in page_tasks(plan.memory, bitmaps.dumpable, plan.page_size):
            for paddr, n, off in runs:
                for k in range(-index % stride, n, stride):
                    picked.append((paddr + k * plan.page_size, 1, off + k * plan.page_size if off >= 0 else -1))
                index += n
        stored = 0
        bs = plan.page_size
        coding = PageCoding(method, bs, 0 if plan.dump_level & 1 else None)
        for lo in range(0, len(picked), TASK_PAGES):
            stored += len(read_and_compress(plan.memory, picked[lo:lo + TASK_PAGES], coding).data)
        per_page = stored / len(picked) if picked else 0.0
        header = _header(plan, method)
        fixed = (1 + header.sub_header_blocks) * bs + 2 * bitmap_bytes(bitmaps.max_mapnr, bs)
        zero_page = bs if plan.dump_level & 1 else 0
        size = fixed + total * PAGE_DESC_SIZE + zero_page + round(per_page * total)
        return SizeEstimate(plan.dump_level, total, len(picked), per_page, size)
    finally:
        plan.memory.close()
        plan.core.close()


# -- command line ---------------------------------------------------------------------------------

class _StderrProgress:
    """makedumpfile-style progress lines on stderr, at most once a second."""

    def __init__(self) -> None:
        self.phase = ""
        self.percent = 0.0
        self._last = 0.0

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0 or self.percent >= 100.0:
            self._last = now
            sys.stderr.write(f"{self.phase:<15}: [{self.percent:5.1f} %] \r")
            sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="pycollector", description="kdump-compressed flattened dump on stdout")
    parser.add_argument("-d", "--dump-level", type=int, default=31)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--zlib", action="store_true", help="compress pages with zlib instead of lzo")
    parser.add_argument("vmcore")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    progress = _StderrProgress()
    try:
        result = collect(args.vmcore, args.dump_level, sys.stdout.buffer, cpus=args.cpus, progress=progress,
                         compression="zlib" if args.zlib else "lzo")
    except KdumpError as exc:
        sys.stderr.write(f"\npycollector: {exc}\npycollector Failed.\n")
        return 1
    except BrokenPipeError:
        sys.stderr.write("\npycollector: the reader of the stream went away\npycollector Failed.\n")
        return 1
    sys.stderr.write(f"\nThe dumpfile is saved to STDOUT ({result.pages_dumped} pages, level {result.dump_level}, "
                     f"{result.compression}).\npycollector Completed.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
