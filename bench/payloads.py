"""What the transport benchmarks send: the fixture's flattened stream and the file it rebuilds to."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from capture.formats.flattened import FlatReader  # noqa: E402
from conftest import CACHE  # noqa: E402

BLOCK = 1 << 20


def flattened_stream(vmcore: Path) -> Path:
    """The fixture's flattened -l -d 31 stream, made once (shared cache with the tests)."""
    out = CACHE / "reference" / "flat-l-d31"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            subprocess.run(["makedumpfile", "-F", "-l", "-d", "31", str(vmcore)], check=True, stdout=f,
                           stderr=subprocess.DEVNULL)
        tmp.rename(out)
    return out


def rebuilt(flat: Path, workdir: Path) -> Path:
    """The real file ``makedumpfile -R`` makes of ``flat``."""
    out = workdir / "rebuilt"
    with open(flat, "rb") as f:
        subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, check=True, capture_output=True)
    return out


def records(flat: Path) -> Iterator[Tuple[int, bytes]]:
    with open(flat, "rb") as f:
        yield from FlatReader(f).records()


def blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(BLOCK), b"")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    for b in blocks(path):
        h.update(b)
    return h.hexdigest()
