"""Streaming a dump onto a target file.

The flattened stream from makedumpfile is either rebuilt into the real file
on the fly (targets that write at offsets) or stored as it comes
(``vmcore.flat`` on append-only targets).  The raw format is /proc/vmcore
itself, compressed into a standard LZ4 frame as it streams.  Every write is
first claimed from the :class:`~capture.save.space.SpaceGuard`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Optional

from capture.formats.flattened import FlatReader, copy_flattened
from capture.save.progress import Progress
from capture.save.space import SpaceGuard
from transports.base import DumpFile

RAW_BLOCK = 4 << 20


@dataclass(frozen=True)
class Written:
    size: int
    """Bytes in the file on the target."""
    sha256: Optional[str]
    """Computed while streaming, when the file was written in order."""


def rebuild_flattened(stream: BinaryIO, out: DumpFile, guard: SpaceGuard, progress: Progress) -> Written:
    """Write the real file from a flattened stream, each record at its offset."""
    extent = 0
    for offset, data in FlatReader(stream).records():
        end = offset + len(data)
        if end > extent:
            guard.claim(end - extent)
            extent = end
        out.pwrite(data, offset)
        progress.add_bytes(len(data))
    return Written(extent, None)


def store_flattened(stream: BinaryIO, out: DumpFile, guard: SpaceGuard, progress: Progress) -> Written:
    """Append the flattened stream as it is, checking that it is whole."""
    import hashlib  # imported by the writers that hash (it loads libcrypto): rebuild_flattened does not

    digest = hashlib.sha256()
    size = 0

    def sink(block: bytes) -> None:
        nonlocal size
        guard.claim(len(block))
        out.write(block)
        digest.update(block)
        size += len(block)
        progress.add_bytes(len(block))

    copy_flattened(stream, sink)
    return Written(size, digest.hexdigest())


def compress_raw(vmcore: str, out: DumpFile, guard: SpaceGuard, progress: Progress) -> Written:
    """Copy ``vmcore`` byte for byte into an LZ4 frame."""
    import hashlib
    import lz4.frame  # only the raw format needs it

    digest = hashlib.sha256()
    size = 0
    total = os.path.getsize(vmcore) or 1
    done = 0
    progress.phase = "Copying raw memory"

    def emit(block: bytes) -> None:
        nonlocal size
        if block:
            guard.claim(len(block))
            out.write(block)
            digest.update(block)
            size += len(block)
            progress.add_bytes(len(block), source_fraction=done / total)

    compressor = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB, content_checksum=True)
    with open(vmcore, "rb", buffering=0) as src:
        emit(compressor.begin(source_size=total))
        while True:
            block = src.read(RAW_BLOCK)
            if not block:
                break
            done += len(block)
            emit(compressor.compress(block))
        emit(compressor.flush())
    return Written(size, digest.hexdigest())
