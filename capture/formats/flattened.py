"""makedumpfile's flattened format (``makedumpfile -F``): reading and reassembling.

The flattened format is what makedumpfile writes to a pipe: a 4096-byte header
starting with the NUL-padded signature ``makedumpfile`` followed by two
big-endian int64 (type = 1, version = 1), then records of two big-endian int64
``(offset, size)`` each followed by ``size`` bytes that belong at ``offset`` of
the real dump file.  Records come in any order (makedumpfile rewrites headers
and interleaves page descriptors with page data).  A record with offset and
size both -1 ends the stream.

:class:`FlatReader` reads such a stream strictly sequentially (it works on a
pipe), :func:`reassemble` rebuilds the real file like ``makedumpfile -R`` does,
and :class:`FlatIndex` maps a flattened *file* so the real file's bytes can be
read at random offsets without rebuilding it.
"""
from __future__ import annotations

import errno
import logging
import os
import struct
from array import array
from bisect import bisect_left
from typing import BinaryIO, Callable, Iterator, Optional, Tuple

from capture.errors import DumpFormatError, KdumpError
from capture.formats import INCOMPLETE

log = logging.getLogger(__name__)

SIGNATURE = b"makedumpfile"
HEADER_SIZE = 4096
TYPE_FLAT_HEADER = 1
RECORD_HEADER = struct.Struct(">qq")
END_MARKER = -1
#: data is handed out in pieces of at most this many bytes
CHUNK_SIZE = 1 << 20
#: a record claiming more than this is treated as corruption
MAX_RECORD_SIZE = 1 << 40
#: holes allowed in the real file beyond the amount of data stored: makedumpfile
#: writes each area once and in order, leaving holes of a few MB at most (the page
#: descriptor table, written after the data behind it); a reader never goes further
#: than twice the data stored plus this
MAX_HOLE = 256 << 20


def extent_problem(extent: int, data: int) -> Optional[str]:
    """Why a real file reaching byte ``extent`` cannot come from ``data`` bytes of records, or None."""
    if extent <= 2 * data + MAX_HOLE:
        return None
    return (f"a record reaches byte {extent} of the real file, but the stream so far holds only {data} "
            "bytes of data (corrupt record header)")

RawSink = Callable[[bytes], None]


def check_header(header: bytes, name: str = "input") -> None:
    """Raise DumpFormatError unless ``header`` (the first bytes of a stream) is a flattened header."""
    if len(header) < 32 or header[:16] != SIGNATURE.ljust(16, b"\0"):
        raise DumpFormatError(f"{name}: not a flattened makedumpfile stream (no 'makedumpfile' signature)")
    htype, version = struct.unpack(">qq", header[16:32])
    if htype != TYPE_FLAT_HEADER:
        raise DumpFormatError(f"{name}: not a flattened makedumpfile stream (header type {htype}, expected 1)")
    if version < 1:
        raise DumpFormatError(f"{name}: not a flattened makedumpfile stream (header version {version})")


def is_flattened(header: bytes) -> bool:
    """True when ``header`` starts like a flattened makedumpfile stream."""
    try:
        check_header(header)
    except DumpFormatError:
        return False
    return True


def _check_record(offset: int, size: int, stream_pos: int, name: str) -> None:
    if offset < 0 or size < 0:
        raise DumpFormatError(
            f"{name}: corrupt flattened record at stream offset {stream_pos}: "
            f"offset {offset}, size {size}")
    if size > MAX_RECORD_SIZE:
        raise DumpFormatError(
            f"{name}: corrupt flattened record at stream offset {stream_pos}: "
            f"size {size} is absurd (more than 1 TiB)")
    if offset > (1 << 62):
        raise DumpFormatError(
            f"{name}: corrupt flattened record at stream offset {stream_pos}: offset {offset} is absurd")


class FlatReader:
    """Sequential reader of a flattened makedumpfile stream.

    Reads ``stream`` (anything with ``read``; a pipe is fine, nothing seeks)
    and yields ``(offset, data)`` pieces of the real file via :meth:`records`,
    each ``data`` at most :data:`CHUNK_SIZE` bytes (large records are split,
    offsets adjusted).  ``data`` is an immutable ``bytes`` object.

    Errors (:class:`DumpFormatError`): a stream that is not flattened, a
    corrupt record header, and a stream ending before the end marker (the
    message names the stream offset where it ended).
    """

    def __init__(self, stream: BinaryIO, name: str = "input") -> None:
        self._stream = stream
        self._name = name
        #: True once the end marker (offset = size = -1) was read
        self.complete = False
        #: bytes consumed from the stream so far
        self.bytes_read = 0
        #: number of records read (not counting the end marker)
        self.record_count = 0
        #: end of the real file as far as known: max(offset + size) over the non-empty records read
        self.file_size = 0
        self._started = False

    def _read(self, size: int) -> bytes:
        """Read up to ``size`` bytes, fewer only at end of stream."""
        data = self._stream.read(size)
        if data is None:
            data = b""
        if len(data) < size and data:
            parts = bytearray(data)
            while len(parts) < size:
                more = self._stream.read(size - len(parts))
                if not more:
                    break
                parts += more
            data = bytes(parts)
        self.bytes_read += len(data)
        return data

    def _truncated(self, what: str) -> DumpFormatError:
        return DumpFormatError(
            f"{self._name}: flattened stream truncated at stream offset {self.bytes_read} "
            f"({what}; no end marker)")

    def read_header(self) -> None:
        """Read and validate the 4096-byte stream header (done by :meth:`records` if not yet)."""
        if self._started:
            return
        self._started = True
        header = self._read(HEADER_SIZE)
        if not header:
            raise DumpFormatError(f"{self._name}: not a flattened makedumpfile stream (empty input)")
        signature = SIGNATURE.ljust(16, b"\0")
        seen = min(len(header), 16)
        if header[:seen] != signature[:seen]:
            raise DumpFormatError(f"{self._name}: not a flattened makedumpfile stream (no 'makedumpfile' signature)")
        if len(header) >= 32:
            check_header(header, self._name)
        if len(header) < HEADER_SIZE:
            raise self._truncated("inside the 4096-byte header")

    def records(self) -> Iterator[Tuple[int, bytes]]:
        """Yield ``(offset, data)`` until the end marker; see the class documentation."""
        self.read_header()
        rec = RECORD_HEADER
        while True:
            pos = self.bytes_read
            head = self._read(16)
            if len(head) < 16:
                raise self._truncated("expected a record header")
            offset, size = rec.unpack(head)
            if offset == END_MARKER and size == END_MARKER:
                self.complete = True
                return
            _check_record(offset, size, pos, self._name)
            self.record_count += 1
            end = offset + size
            if size and end > self.file_size:
                self.file_size = end
            record_offset = offset
            left = size
            while left:
                want = left if left < CHUNK_SIZE else CHUNK_SIZE
                data = self._read(want)
                if data:
                    yield offset, data
                if len(data) < want:
                    raise self._truncated(f"inside the {size}-byte record for offset {record_offset}")
                offset += want
                left -= want

    def drain(self) -> None:
        """Consume the rest of the stream (records are discarded)."""
        for _ in self.records():
            pass


def copy_flattened(stream: BinaryIO, sink: RawSink, name: str = "input", block_size: int = CHUNK_SIZE) -> int:
    """Pass a flattened stream to ``sink`` as it is, up to and including its
    end marker, in blocks of up to ``block_size`` bytes as ``stream.read``
    returns them; return the number of bytes passed.

    The stream is checked as :class:`FlatReader` checks it (header, each
    record header, an end marker before the end of input), with the same
    :class:`DumpFormatError` messages, but its data is never cut into
    records: a block is handed on whole (cut only after the end marker),
    once every record header in it was checked."""
    signature = SIGNATURE.ljust(16, b"\0")
    rec = RECORD_HEADER
    header = bytearray()
    pending = bytearray()  # a record header cut by the end of a block
    skip = 0  # data bytes of the current record still to come
    size = offset = 0  # the current record's, for the messages
    done = 0  # bytes passed to the sink

    def truncated(what: str, at: int) -> DumpFormatError:
        return DumpFormatError(f"{name}: flattened stream truncated at stream offset {at} ({what}; no end marker)")

    while True:
        block = stream.read(block_size)
        if not block:
            if done == 0 and not header:
                raise DumpFormatError(f"{name}: not a flattened makedumpfile stream (empty input)")
            if len(header) < HEADER_SIZE:
                raise truncated("inside the 4096-byte header", len(header))
            if skip:
                raise truncated(f"inside the {size}-byte record for offset {offset}", done)
            raise truncated("expected a record header", done)
        view = memoryview(block)
        n = len(view)
        i = 0
        if len(header) < HEADER_SIZE:
            i = min(HEADER_SIZE - len(header), n)
            header += view[:i]
            seen = min(len(header), 16)
            if header[:seen] != signature[:seen]:
                raise DumpFormatError(f"{name}: not a flattened makedumpfile stream (no 'makedumpfile' signature)")
            if len(header) >= 32:
                check_header(bytes(header[:32]), name)
        while i < n:
            if skip:
                step = skip if skip < n - i else n - i
                skip -= step
                i += step
                continue
            if pending or n - i < 16:
                step = min(16 - len(pending), n - i)
                pending += view[i:i + step]
                i += step
                if len(pending) < 16:
                    break
                offset, size = rec.unpack(pending)
                pending.clear()
            else:
                offset, size = rec.unpack_from(view, i)
                i += 16
            if offset == END_MARKER and size == END_MARKER:
                sink(block[:i] if i < n else block)
                return done + i
            _check_record(offset, size, done + i - 16, name)
            skip = size
        sink(block)
        done += n


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out`` without ever replacing an existing ``out``."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise KdumpError(f"{out} already exists; not overwriting it (the result is in {tmp})") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(out):
            raise KdumpError(f"{out} already exists; not overwriting it (the result is in {tmp})") from None
        os.rename(tmp, out)
    else:
        os.unlink(tmp)
    _fsync_dir(out)


def reassemble(flat_path: str, out_path: str) -> int:
    """Rebuild the real dump file from the flattened file ``flat_path``, like ``makedumpfile -R``.

    Writes ``OUT.incomplete`` (mode 0600), fsyncs it and renames it to
    ``out_path`` only when the end marker was reached.  An existing
    ``out_path`` is never overwritten (:class:`KdumpError`).  A corrupt or
    truncated input raises :class:`DumpFormatError` and leaves the partial
    ``OUT.incomplete`` behind (the message says so).  Returns the size of the
    rebuilt file.
    """
    if os.path.lexists(out_path):
        raise KdumpError(f"{out_path} already exists; not overwriting it")
    try:
        src = open(flat_path, "rb", buffering=CHUNK_SIZE)
    except OSError as exc:
        raise KdumpError(f"cannot open {flat_path}: {exc.strerror}") from None
    with src:
        return reassemble_stream(src, out_path, flat_path)


def reassemble_stream(stream: BinaryIO, out_path: str, name: str = "input") -> int:
    """:func:`reassemble` reading the flattened stream from ``stream`` (a pipe is fine)."""
    if os.path.lexists(out_path):
        raise KdumpError(f"{out_path} already exists; not overwriting it")
    tmp = out_path + INCOMPLETE
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KdumpError(f"cannot create {tmp}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        reader = FlatReader(stream, name=name)
        records = reader.records()
        stored = 0
        while True:
            try:
                offset, data = next(records)
            except StopIteration:
                break
            except DumpFormatError as exc:
                raise DumpFormatError(f"{exc}; the partial result stays in {tmp}") from None
            except OSError as exc:
                raise KdumpError(f"cannot read {name}: {exc.strerror}; the partial result stays in {tmp}") from None
            stored += len(data)
            problem = extent_problem(offset + len(data), stored)
            if problem:
                raise DumpFormatError(f"{name}: stream offset {reader.bytes_read}: {problem}; "
                                      f"the partial result stays in {tmp}")
            view = memoryview(data)
            try:
                while view:
                    written = os.pwrite(fd, view, offset)
                    view = view[written:]
                    offset += written
            except OSError as exc:
                raise KdumpError(f"cannot write {tmp}: {exc.strerror}") from None
        size = os.fstat(fd).st_size
        try:
            os.fsync(fd)
        except OSError as exc:
            raise KdumpError(f"cannot write {tmp}: {exc.strerror}") from None
    finally:
        os.close(fd)
    _publish(tmp, out_path)
    log.debug("reassembled %s (%d records) into %s, %d bytes", name, reader.record_count, out_path, size)
    return size


class FlatIndex:
    """Random access to the real file inside a flattened stream that can itself be read at any offset.

    :meth:`scan` reads the record headers once (skipping over the data) from
    ``stream_read_at(offset, size)``, a reader of the flattened stream's bytes;
    :meth:`read_at` then reads the real file without rebuilding it.  Later
    records win where records overlap, as when the real file is rebuilt.
    ``complete`` tells whether the end marker was found; ``truncated_at`` is
    the stream offset where an unfinished stream ends, or where a corrupt
    record header stops the scan (``corruption`` then says what is wrong);
    None when complete.
    """

    def __init__(self, name: str, stream_read_at: Callable[[int, int], bytes]) -> None:
        self.name = name
        self._stream_read_at = stream_read_at
        self.complete = False
        self.truncated_at: Optional[int] = None
        #: why the scan stopped at a corrupt record header (None: it did not)
        self.corruption: Optional[str] = None
        #: max(offset + size) over the records present: the rebuilt file's size
        self.file_size = 0
        self.record_count = 0
        self._starts = array("q")
        self._ends = array("q")
        self._positions = array("q")
        self._by_start: Optional[array] = None
        self._sorted_starts = array("q")
        self._longest = 0

    @classmethod
    def scan(cls, stream_read_at: Callable[[int, int], bytes], stream_size: Optional[int],
             name: str) -> "FlatIndex":
        """Index the flattened stream; ``stream_size`` None means: read until the data ends."""
        index = cls(name, stream_read_at)
        header = stream_read_at(0, HEADER_SIZE)
        check_header(header, name)
        if len(header) < HEADER_SIZE:
            index.truncated_at = len(header)
            return index
        pos = HEADER_SIZE
        stored = 0
        while True:
            head = stream_read_at(pos, 16)
            if len(head) < 16:
                index.truncated_at = pos + len(head)
                return index
            offset, size = RECORD_HEADER.unpack(head)
            if offset == END_MARKER and size == END_MARKER:
                index.complete = True
                return index
            try:
                _check_record(offset, size, pos, name)
            except DumpFormatError as exc:
                index.corruption = str(exc)
                index.truncated_at = pos
                return index
            data_pos = pos + 16
            if stream_size is not None:
                available = min(size, max(0, stream_size - data_pos))
            elif size and len(stream_read_at(data_pos + size - 1, 1)) < 1:
                available = 0
            else:
                available = size
            if available:
                stored += available
                problem = extent_problem(offset + available, stored)
                if problem:
                    index.corruption = f"{name}: stream offset {pos}: {problem}"
                    index.truncated_at = pos
                    return index
                index._starts.append(offset)
                index._ends.append(offset + available)
                index._positions.append(data_pos)
                index.file_size = max(index.file_size, offset + available)
            index.record_count += 1
            if available < size:
                index.truncated_at = data_pos + available
                return index
            pos = data_pos + size

    def _sort(self) -> None:
        if self._by_start is None:
            starts = self._starts
            self._by_start = array("q", sorted(range(len(starts)), key=starts.__getitem__))
            self._sorted_starts = array("q", (starts[i] for i in self._by_start))
            self._longest = max((e - s for s, e in zip(self._starts, self._ends)), default=0)

    def first_hole(self, start: int, end: int) -> Optional[int]:
        """The first byte of ``start..end`` of the real file that no record holds, or None."""
        self._sort()
        assert self._by_start is not None
        covered = start
        for i in self._by_start:
            if covered >= end:
                return None
            s, e = self._starts[i], self._ends[i]
            if s > covered:
                return covered
            covered = max(covered, e)
        return covered if covered < end else None

    def read_at(self, offset: int, size: int) -> bytes:
        """The real file's bytes at ``offset`` (holes read as zeros; short at the end of the file)."""
        size = max(0, min(size, self.file_size - offset))
        if offset < 0:
            return b""
        buf = bytearray(size)
        if not size:
            return bytes(buf)
        end = offset + size
        self._sort()
        assert self._by_start is not None
        first = bisect_left(self._sorted_starts, offset - self._longest + 1)
        last = bisect_left(self._sorted_starts, end)
        # apply in stream order: a later record overwrites an earlier one
        for i in sorted(self._by_start[first:last]):
            s, e = self._starts[i], self._ends[i]
            if e <= offset or s >= end:
                continue
            lo, hi = max(s, offset), min(e, end)
            data = self._stream_read_at(self._positions[i] + (lo - s), hi - lo)
            buf[lo - offset:lo - offset + len(data)] = data
        return bytes(buf)
