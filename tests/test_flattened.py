"""makedumpfile's flattened format: FlatReader and reassemble against makedumpfile's own output."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from capture.errors import DumpFormatError, KdumpError
from capture.formats.flattened import CHUNK_SIZE, HEADER_SIZE, FlatIndex, FlatReader, copy_flattened, reassemble
from conftest import REPO, sha256_of

FORMATS = [("-l", 31), ("-c", 1), ("-E", 31)]


def kdump_saver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capture.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def flat_header() -> bytes:
    return b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1) + bytes(HEADER_SIZE - 32)


def flat_record(offset: int, data: bytes) -> bytes:
    return struct.pack(">qq", offset, len(data)) + data


END = struct.pack(">qq", -1, -1)


@pytest.mark.parametrize("flag,level", FORMATS)
def test_reassemble_equals_makedumpfile_direct_output(reference_dumps, tmp_path: Path, flag: str, level: int) -> None:
    flat = reference_dumps.flattened(flag, level)
    direct = reference_dumps.direct(flag, level)
    out = tmp_path / "vmcore"
    size = reassemble(str(flat), str(out))
    assert size == direct.stat().st_size == out.stat().st_size
    assert sha256_of(out) == sha256_of(direct)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not (tmp_path / "vmcore.incomplete").exists()


@pytest.mark.parametrize("buffering", [0, -1])
def test_reader_on_a_pipe_rebuilds_the_file(reference_dumps, buffering: int) -> None:
    """Read from a real pipe (unbuffered: short reads happen) and rebuild in memory."""
    flat = reference_dumps.flattened("-l", 31)
    direct = reference_dumps.direct("-l", 31)
    proc = subprocess.Popen(["cat", str(flat)], stdout=subprocess.PIPE, bufsize=buffering)
    assert proc.stdout is not None
    image = bytearray()
    reader = FlatReader(proc.stdout)
    for offset, data in reader.records():
        assert 0 < len(data) <= CHUNK_SIZE
        if len(image) < offset + len(data):
            image.extend(bytes(offset + len(data) - len(image)))
        image[offset:offset + len(data)] = data
    proc.wait()
    assert reader.complete
    assert reader.bytes_read == flat.stat().st_size
    assert reader.file_size == direct.stat().st_size
    assert hashlib.sha256(image).hexdigest() == sha256_of(direct)


@pytest.mark.parametrize("flag,level", FORMATS)
def test_reader_consumes_exactly_the_stream(reference_dumps, flag: str, level: int) -> None:
    flat = reference_dumps.flattened(flag, level)
    with open(flat, "rb") as f:
        reader = FlatReader(f)
        pieces = sum(1 for _ in reader.records())
    assert pieces > 100
    assert reader.complete
    assert reader.bytes_read == flat.stat().st_size


def test_large_records_are_split_and_match_makedumpfile_R(fixture_vmcore: Path, makedumpfile: str,
                                                         tmp_path: Path) -> None:
    """A stream of 2.5 MiB records in reverse order: pieces <= 1 MiB, same result as makedumpfile -R."""
    with open(fixture_vmcore, "rb") as f:
        original = f.read(8 << 20)
    size = len(original)
    step = (5 << 20) // 2
    stream = bytearray(flat_header())
    for offset in reversed(range(0, size, step)):
        stream += flat_record(offset, original[offset:offset + step])
    stream += END
    flat = tmp_path / "big.flat"
    flat.write_bytes(stream)

    pieces: List[Tuple[int, int]] = []
    rebuilt = bytearray(size)
    for offset, data in FlatReader(io.BytesIO(bytes(stream))).records():
        pieces.append((offset, len(data)))
        rebuilt[offset:offset + len(data)] = data
    assert max(n for _, n in pieces) == CHUNK_SIZE
    assert len(pieces) == sum(-(-min(step, size - o) // CHUNK_SIZE) for o in range(0, size, step))
    assert bytes(rebuilt) == original

    ours = tmp_path / "ours"
    assert reassemble(str(flat), str(ours)) == size
    theirs = tmp_path / "theirs"
    with open(flat, "rb") as stdin:
        subprocess.run([makedumpfile, "-R", str(theirs)], stdin=stdin, check=True, capture_output=True)
    assert sha256_of(ours) == sha256_of(theirs) == hashlib.sha256(original).hexdigest()


@pytest.mark.parametrize("cut", ["header", "record-header", "data", "end-marker"])
def test_truncated_stream_is_an_error_naming_the_offset(reference_dumps, cut: str) -> None:
    full = reference_dumps.flattened("-l", 31).read_bytes()
    first_size = struct.unpack_from(">qq", full, HEADER_SIZE)[1]
    length = {"header": 100,
              "record-header": HEADER_SIZE + 8,
              "data": HEADER_SIZE + 16 + first_size // 2,
              "end-marker": len(full) - 8}[cut]
    reader = FlatReader(io.BytesIO(full[:length]))
    got = 0
    with pytest.raises(DumpFormatError, match=f"truncated at stream offset {length}\\b"):
        for _offset, data in reader.records():
            got += len(data)
    assert not reader.complete
    assert reader.bytes_read == length
    if cut == "data":
        assert got == first_size // 2


def test_corrupt_record_headers_are_rejected(reference_dumps) -> None:
    full = bytearray(reference_dumps.flattened("-l", 31).read_bytes())
    negative = bytearray(full)
    struct.pack_into(">q", negative, HEADER_SIZE + 8, -5)
    with pytest.raises(DumpFormatError, match=f"corrupt flattened record at stream offset {HEADER_SIZE}:"):
        list(FlatReader(io.BytesIO(bytes(negative))).records())
    absurd = bytearray(full)
    struct.pack_into(">q", absurd, HEADER_SIZE + 8, 1 << 41)
    with pytest.raises(DumpFormatError, match="absurd"):
        list(FlatReader(io.BytesIO(bytes(absurd))).records())
    half_marker = bytearray(full)
    struct.pack_into(">q", half_marker, HEADER_SIZE, -1)
    with pytest.raises(DumpFormatError, match="corrupt"):
        list(FlatReader(io.BytesIO(bytes(half_marker))).records())


def test_non_flattened_inputs_are_rejected(reference_dumps, fixture_vmcore: Path) -> None:
    for path in (reference_dumps.direct("-l", 31), fixture_vmcore):
        with open(path, "rb") as f:
            with pytest.raises(DumpFormatError, match="not a flattened makedumpfile stream"):
                list(FlatReader(f).records())
    with pytest.raises(DumpFormatError, match="not a flattened makedumpfile stream"):
        list(FlatReader(io.BytesIO(b"")).records())
    wrong_type = bytearray(flat_header())
    struct.pack_into(">q", wrong_type, 16, 2)
    with pytest.raises(DumpFormatError, match="header type 2"):
        list(FlatReader(io.BytesIO(bytes(wrong_type) + END)).records())


def test_reassemble_truncated_input_keeps_the_incomplete_file(reference_dumps, tmp_path: Path) -> None:
    flat = reference_dumps.flattened("-c", 1)
    part = tmp_path / "part.flat"
    with open(flat, "rb") as src, open(part, "wb") as dst:
        dst.write(src.read(flat.stat().st_size // 2))
    out = tmp_path / "vmcore"
    with pytest.raises(DumpFormatError) as err:
        reassemble(str(part), str(out))
    message = str(err.value)
    assert "truncated at stream offset" in message and "vmcore.incomplete" in message
    assert not out.exists()
    partial = tmp_path / "vmcore.incomplete"
    assert partial.exists() and stat.S_IMODE(partial.stat().st_mode) == 0o600
    # what was written agrees with the real file where it was written: the header block
    direct = reference_dumps.direct("-c", 1)
    with open(partial, "rb") as a, open(direct, "rb") as b:
        assert a.read(4096) == b.read(4096)


def test_reassemble_never_overwrites(reference_dumps, tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    out.write_bytes(b"precious")
    with pytest.raises(KdumpError, match="already exists"):
        reassemble(str(reference_dumps.flattened("-l", 31)), str(out))
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "vmcore.incomplete").exists()


def test_output_appearing_during_reassembly_is_not_replaced(reference_dumps, tmp_path: Path) -> None:
    """Someone else creates OUT while we write: ours stays in OUT.incomplete."""
    flat = reference_dumps.flattened("-l", 31)
    out = tmp_path / "vmcore"
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(flat, "rb") as src, open(write_end, "wb") as dst:
            dst.write(src.read(HEADER_SIZE + 1000))
            dst.flush()
            for _ in range(600):
                if (tmp_path / "vmcore.incomplete").exists():
                    break
                time.sleep(0.05)
            out.write_bytes(b"theirs")
            shutil.copyfileobj(src, dst)

    fifo_path = f"/proc/self/fd/{read_end}"
    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with pytest.raises(KdumpError, match="already exists"):
            reassemble(fifo_path, str(out))
    finally:
        writer.join()
        os.close(read_end)
    assert out.read_bytes() == b"theirs"
    assert sha256_of(tmp_path / "vmcore.incomplete") == sha256_of(reference_dumps.direct("-l", 31))


def test_flat_index_reads_the_real_file_in_place(reference_dumps) -> None:
    flat = reference_dumps.flattened("-E", 31)
    direct = reference_dumps.direct("-E", 31).read_bytes()
    with open(flat, "rb") as f:
        def read_at(offset: int, size: int) -> bytes:
            f.seek(offset)
            return f.read(size)
        index = FlatIndex.scan(read_at, flat.stat().st_size, str(flat))
        assert index.complete and index.truncated_at is None
        assert index.file_size == len(direct)
        for offset, size in [(0, 4096), (64, 1512), (5000, 300000), (len(direct) - 70000, 100000)]:
            assert index.read_at(offset, size) == direct[offset:offset + size]


def test_cli_reassemble(reference_dumps, tmp_path: Path) -> None:
    flat = reference_dumps.flattened("-l", 31)
    out = tmp_path / "vmcore"
    done = kdump_saver("reassemble", str(flat), str(out))
    assert done.returncode == 0, done.stderr
    assert sha256_of(out) == sha256_of(reference_dumps.direct("-l", 31))

    again = kdump_saver("reassemble", str(flat), str(out))
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr

    part = tmp_path / "part.flat"
    part.write_bytes(flat.read_bytes()[:HEADER_SIZE + 5000])
    broken = kdump_saver("reassemble", str(part), str(tmp_path / "other"))
    assert broken.returncode == 1
    assert "truncated at stream offset" in broken.stderr and "Traceback" not in broken.stderr

    piped = tmp_path / "piped"
    with open(flat, "rb") as stdin:
        from_pipe = subprocess.run([sys.executable, "-m", "capture.cli", "reassemble", "-", str(piped)],
                                   cwd=REPO, stdin=stdin, capture_output=True, text=True, timeout=120)
    assert from_pipe.returncode == 0, from_pipe.stderr
    assert sha256_of(piped) == sha256_of(out)

    notflat = kdump_saver("reassemble", str(reference_dumps.direct("-l", 31)), str(tmp_path / "x"))
    assert notflat.returncode == 1
    assert "not a flattened makedumpfile stream" in notflat.stderr and "Traceback" not in notflat.stderr


# -- copy_flattened: the stream passed on whole, checked as FlatReader checks it ---------

class Chunked(io.RawIOBase):
    """A stream whose reads return at most the next of ``sizes`` bytes (as a pipe does)."""

    def __init__(self, data: bytes, sizes: List[int]) -> None:
        self._data = data
        self._sizes = sizes or [1 << 20]
        self._pos = 0
        self._turn = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        step = max(1, self._sizes[self._turn % len(self._sizes)])
        self._turn += 1
        out = self._data[self._pos:self._pos + min(size, step)]
        self._pos += len(out)
        return out


def by_reader(data: bytes, sizes: List[int]) -> Tuple[bytes, str]:
    """What FlatReader consumes of ``data`` (the stream up to its end marker), or its error."""
    reader = FlatReader(Chunked(data, sizes))
    try:
        reader.drain()
    except DumpFormatError as exc:
        return b"", str(exc)
    return data[:reader.bytes_read], ""


def by_copy(data: bytes, sizes: List[int], block_size: int = CHUNK_SIZE) -> Tuple[bytes, str]:
    seen = bytearray()
    try:
        n = copy_flattened(Chunked(data, sizes), seen.extend, block_size=block_size)
    except DumpFormatError as exc:
        return b"", str(exc)
    assert n == len(seen)
    return bytes(seen), ""


@pytest.mark.parametrize("flag,level", FORMATS)
def test_copy_passes_makedumpfiles_stream_whole_in_large_blocks(reference_dumps, flag: str, level: int) -> None:
    flat = reference_dumps.flattened(flag, level)
    digest = hashlib.sha256()
    blocks = []

    def sink(block: bytes) -> None:
        digest.update(block)
        blocks.append(len(block))

    with open(flat, "rb", buffering=0) as f:
        assert copy_flattened(f, sink) == flat.stat().st_size
    assert digest.hexdigest() == sha256_of(flat)
    with open(flat, "rb") as f:
        records = sum(1 for _ in FlatReader(f).records())
    assert len(blocks) < records / 4, "blocks, not records, are passed on"


@pytest.mark.parametrize("cut", ["header", "record-header", "data", "end-marker"])
def test_copy_of_a_truncated_stream_is_the_readers_error(reference_dumps, cut: str) -> None:
    full = reference_dumps.flattened("-l", 31).read_bytes()
    first_size = struct.unpack_from(">qq", full, HEADER_SIZE)[1]
    length = {"header": 100, "record-header": HEADER_SIZE + 8, "data": HEADER_SIZE + 16 + first_size // 2,
              "end-marker": len(full) - 8}[cut]
    got, error = by_copy(full[:length], [65536])
    assert error == by_reader(full[:length], [65536])[1]
    assert f"truncated at stream offset {length} " in error


def test_copy_stops_at_the_end_marker() -> None:
    stream = flat_header() + flat_record(0, b"a" * 100) + END
    got, error = by_copy(stream + b"trailing bytes", [50, 7, 5000])
    assert error == "" and got == stream


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.tuples(st.integers(-2, 1 << 20), st.integers(0, 300)), max_size=8),
       end=st.booleans(), cut=st.integers(0, 1 << 13), edits=st.lists(st.tuples(st.integers(0, 1 << 13),
                                                                                 st.integers(0, 255)), max_size=3),
       sizes=st.lists(st.integers(1, 5000), max_size=5), block=st.integers(1, 1 << 14))
def test_copy_agrees_with_the_reader_on_any_stream(records, end, cut, edits, sizes, block) -> None:
    stream = bytearray(flat_header())
    for offset, size in records:
        stream += flat_record(offset, bytes([size % 251]) * size)
    if end:
        stream += END
    for at, value in edits:
        if at < len(stream):
            stream[at] = value
    data = bytes(stream[:len(stream) - cut % (len(stream) + 1)]) if cut % 3 == 0 else bytes(stream)
    assert by_copy(data, sizes, block) == by_reader(data, sizes)
