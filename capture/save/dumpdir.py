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
from capture.errors import KdumpError
from capture.formats import INCOMPLETE
from capture.formats.untrusted import printable
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
    """``YYYY-MM-DD-HH-MM`` on local targets, ``HOSTNAME-YYYY-MM-DD-HH-MM`` on remote ones
    (the host name with anything but letters, digits, ``.``, ``-`` and ``_`` as ``_``)."""
    return f"{name_part(hostname)}-{stamp(crash_time)}" if remote else stamp(crash_time)


def name_part(text: str) -> str:
    """``text`` (from the vmcore or the configuration) made safe as part of a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64].lstrip(".")
    return safe or "unknown"


def facts_text(value: str) -> str:
    """The one gate for a value that came from the vmcore (host name, kernel release,
    panic line) or from an error on its way into README.txt, the marker, ``info`` or
    the log: one line, control characters escaped, bounded length."""
    return printable(value)


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
    for seq in range(1, MAX_SEQ + 1):
        name = base if seq == 1 else f"{base}.{seq}"
        if name in avoid:
            continue
        try:
            target.mkdir(name)
            return name
        except FileExistsError:
            continue
    raise KdumpError(f"cannot create a dump directory: {base} and {base}.2 to {base}.{MAX_SEQ} all exist "
                     f"on {target.url.masked()}; move old dumps away")


#: the most dump directories of one minute (``base``, ``base.2`` ... ``base.MAX_SEQ``)
MAX_SEQ = 999


def own_files() -> Tuple[str, ...]:
    """Every name the saver (and ``kdump-saver notify``) may write into a dump
    directory, partial names included: what retention may delete there."""
    finals = (README, MARKER, DMESG, NOTIFIED, "vmcore")
    return tuple(sorted({*finals, *VMCORE_NAMES, *(n + SMALL_FILE_PARTIAL for n in finals),
                         DMESG + INCOMPLETE, "vmcore" + INCOMPLETE}))


def marker_bytes(hostname: str, created: datetime, state: str = WRITING) -> bytes:
    return (json.dumps({"tool": TOOL, "version": __version__, "host": facts_text(hostname),
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


#: KDUMP_DUMPFORMAT as SUSE's README writes it, by our format name
SUSE_FORMAT_NAMES = {"elf": "ELF"}
SUSE_TIME = "%Y-%m-%dT%H:%M:%S"
"""SUSE's ``date +%Y-%m-%dT%H:%M:%S``: local time, no zone."""


@dataclass
class DumpFacts:
    """What the README reports.

    :meth:`render` writes our lines (``vmcore status:`` first), then the block
    SUSE's kdump-save writes at the end of a save (``Kernel crashdump``,
    ``dmesg status:``, ``Kernel version:``, ``Crash time:``, ``Dump time:``,
    ``Host:``, ``Dump level:``, ``Dump format:``), with SUSE's value formats,
    so that supportconfig and administrators' scripts that read SUSE's
    README.txt read ours."""

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
    dmesg_status: str = ""
    """SUSE's ``dmesg status``: ``saved successfully`` once dmesg.txt is written."""
    crashed_at: Optional[datetime] = None
    dump_started: Optional[datetime] = None
    format_name: str = ""
    """The KDUMP_DUMPFORMAT value used (none, elf, compressed, lzo, snappy, zstd, raw)."""
    configured_dump_level: Optional[int] = None

    def render(self, final: bool = True) -> str:
        """The README; ``final`` when the save is complete (see :meth:`suse_lines`)."""
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
        lines = [f"{k}: {printable(v, 4096)}" for k, v in rows if v]
        if self.notes:
            lines.append("")
            lines += [f"note: {printable(n, 4096)}" for n in self.notes]
        if self.open_command:
            lines += ["", "To open it:", f"  {printable(self.open_command, 4096)}"]
        lines += [""] + self.suse_lines(final)
        return "\n".join(lines) + "\n"

    def suse_lines(self, final: bool = True) -> List[str]:
        """The lines of SUSE's README.txt (openSUSE/kdump dracut/kdump-save), same keys and
        value formats; ``vmcore status`` is our first line already.  Like SUSE's temporary
        README, one that is not ``final`` has no ``Kernel crashdump`` header and no
        ``dmesg status``, so that no "saved successfully" is read from an incomplete dump."""
        level = self.dump_level if self.dump_level is not None else self.configured_dump_level
        rows = [
            ("dmesg status", self.dmesg_status or "not saved"),
            ("Kernel version", "" if self.kernel_release == "unknown" else self.kernel_release),
            ("Crash time", _suse_time(self.crashed_at)),
            ("Dump time", _suse_time(self.dump_started)),
            ("Host", "" if self.hostname == "unknown" else self.hostname),
            ("Dump level", "" if level is None else str(level)),
            ("Dump format", SUSE_FORMAT_NAMES.get(self.format_name, self.format_name)),
        ]
        if not final:
            rows = rows[1:]
        lines = (["Kernel crashdump", "----------------"] if final else []) + [f"{k}: {v}" for k, v in rows if v]
        if self.vmcore_name == "vmcore.flat":
            lines.append("Note: vmcore saved in makedumpfile flattened format")
        return lines


def incomplete_readme(facts: DumpFacts) -> str:
    head = ("THIS DUMP IS INCOMPLETE.\n"
            "kdump-saver was still writing it, or stopped before it finished.\n"
            "If this text is still here, the save did not complete: files ending in\n"
            f"'{INCOMPLETE}' hold only part of the data.\n\n")
    return head + facts.render(final=False)


def _suse_time(moment: Optional[datetime]) -> str:
    return moment.astimezone().strftime(SUSE_TIME) if moment is not None else ""


def _size(n: Optional[int]) -> str:
    if n is None:
        return ""
    return f"{n} bytes ({n / 2**20:.1f} MiB)"
