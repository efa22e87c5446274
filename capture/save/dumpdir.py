"""The dump directory on the target: its name, our marker, and its README.

A directory is ours when its name has our form and it holds :data:`MARKER`,
a small JSON file naming the tool, the host whose dump it is, the files the
saver may write there (:func:`own_files`) and the state of the save
(``writing``, then ``complete`` or ``failed``).  Retention touches nothing
else: only those files, in only such directories.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Collection, List, Optional, Tuple

from capture import __version__
from capture.formats import INCOMPLETE
from transports.base import Transport

MARKER = ".kdump-saver"
TOOL = "kdump-saver"
README = "README.txt"
NOTIFIED = ".kdump-saver-notified"
"""Written by ``kdump-saver notify`` once the dump was announced."""
DMESG = "dmesg.txt"
VMCORE_NAMES = ("vmcore", "vmcore.flat", "vmcore.lz4")
SMALL_FILE_PARTIAL = ".tmp"
"""The suffix :meth:`transports.base.Transport.write_small` writes under first."""

WRITING, COMPLETE, FAILED = "writing", "complete", "failed"

_NAME = re.compile(r"^(?:(?P<host>.+)-)?(?P<stamp>\d{4}-\d{2}-\d{2}-\d{2}-\d{2})(?:\.(?P<seq>\d+))?$")


def stamp(crash_time: datetime) -> str:
    """``YYYY-MM-DD-HH-MM`` in UTC."""
    return crash_time.astimezone(timezone.utc).strftime("%Y-%m-%d-%H-%M")


def base_name(crash_time: datetime, hostname: str, remote: bool) -> str:
    """``YYYY-MM-DD-HH-MM`` on local targets, ``HOSTNAME-YYYY-MM-DD-HH-MM`` on remote ones."""
    return f"{hostname}-{stamp(crash_time)}" if remote else stamp(crash_time)


@dataclass(frozen=True)
class DirName:
    """A directory name of our form, split into its parts."""

    name: str
    host: Optional[str]
    stamp: str
    seq: int

    @property
    def sort_key(self) -> tuple:
        return (self.stamp, self.seq)


def parse_name(name: str) -> Optional[DirName]:
    m = _NAME.match(name)
    if not m:
        return None
    return DirName(name, m.group("host"), m.group("stamp"), int(m.group("seq") or 1))


def create_unique(target: Transport, base: str, avoid: Collection[str] = ()) -> str:
    """Create ``base`` (0700), or ``base.2``, ``base.3`` … if taken or in
    ``avoid`` (names of dumps just deleted); never reuse one."""
    for seq in range(1, 1000):
        name = base if seq == 1 else f"{base}.{seq}"
        if name in avoid:
            continue
        try:
            target.mkdir(name)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: a thousand dumps in the same minute")


def own_files() -> Tuple[str, ...]:
    """Every name the saver (and ``kdump-saver notify``) may write into a dump
    directory, partial names included: what retention may delete there."""
    finals = (README, MARKER, DMESG, NOTIFIED, "vmcore")
    return tuple(sorted({*finals, *VMCORE_NAMES, *(n + SMALL_FILE_PARTIAL for n in finals),
                         DMESG + INCOMPLETE, "vmcore" + INCOMPLETE}))


def marker_bytes(hostname: str, created: datetime, state: str = WRITING) -> bytes:
    return (json.dumps({"tool": TOOL, "version": __version__, "host": hostname,
                        "created": created.astimezone(timezone.utc).isoformat(),
                        "state": state, "files": list(own_files())}, sort_keys=True)
            + "\n").encode()


def read_marker(target: Transport, dirname: str) -> Optional[dict]:
    """Our marker in ``dirname``, or None if there is none or it is not ours."""
    raw = target.read_small(f"{dirname}/{MARKER}", limit=65536)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL or not isinstance(data.get("host"), str):
        return None
    return data


@dataclass
class DumpFacts:
    """What the README reports."""

    status: str
    target: str
    directory: str
    kernel_release: str = "unknown"
    crash_time: str = "unknown"
    hostname: str = "unknown"
    panic: str = "not found in the kernel log"
    dump_level: Optional[int] = None
    dump_format: str = ""
    collector: str = ""
    memory_size: Optional[int] = None
    saved_bytes: int = 0
    duration: Optional[float] = None
    sha256: str = ""
    vmcore_name: str = ""
    open_command: str = ""
    free_space: str = ""
    notes: List[str] = field(default_factory=list)

    def render(self) -> str:
        rows = [
            ("vmcore status", self.status),
            ("target", self.target),
            ("directory", self.directory),
            ("host", self.hostname),
            ("kernel release", self.kernel_release),
            ("crash time", self.crash_time),
            ("panic", self.panic),
            ("dump level", "" if self.dump_level is None else str(self.dump_level)),
            ("dump format", self.dump_format),
            ("collector", self.collector),
            ("memory size", _size(self.memory_size)),
            ("saved", f"{self.vmcore_name} {_size(self.saved_bytes)}".strip() if self.vmcore_name
             else _size(self.saved_bytes)),
            ("duration", "" if self.duration is None else f"{self.duration:.1f} s"),
            ("sha256", self.sha256),
            ("free space", self.free_space),
        ]
        lines = [f"{k}: {v}" for k, v in rows if v]
        if self.notes:
            lines.append("")
            lines += [f"note: {n}" for n in self.notes]
        if self.open_command:
            lines += ["", "To open it:", f"  {self.open_command}"]
        return "\n".join(lines) + "\n"


def incomplete_readme(facts: DumpFacts) -> str:
    head = ("THIS DUMP IS INCOMPLETE.\n"
            "kdump-saver was still writing it, or stopped before it finished.\n"
            "If this text is still here, the save did not complete: files ending in\n"
            f"'{INCOMPLETE}' hold only part of the data.\n\n")
    return head + facts.render()


def _size(n: Optional[int]) -> str:
    if n is None:
        return ""
    return f"{n} bytes ({n / 2**20:.1f} MiB)"
