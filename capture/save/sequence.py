"""The save: from /proc/vmcore to a finished dump directory on the target.

:func:`save` is the whole sequence, step by step; each step's details live
in the module named after what it handles.  A caller that must act between
the complete vmcore and the final README (capture-boot runs
KDUMP_POSTSCRIPT there) uses the same steps through :func:`begin`::

    with begin(config, vmcore) as dump:
        dump.save_files()
        dump.notes.append("...")
        result = dump.finish()
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from capture.config.options import Config
from capture.config.targeturl import TargetURL
from capture.config.targeturl import parse_list as parse_targets
from capture.errors import DumpFormatError, KdumpError
from capture.formats import INCOMPLETE
from capture.formats.elfcore import ElfCore
from capture.save import collector, dumpdir, retention
from capture.save.dumpdir import MARKER, README, DumpFacts
from capture.save.dumpwriter import Written, compress_raw, rebuild_flattened, store_flattened
from capture.save.progress import Progress
from capture.save.space import SpaceGuard
from transports import open_target
from transports.base import Transport, TransportOptions

log = logging.getLogger(__name__)

DEBUG_VMLINUX = "/usr/lib/debug/boot/vmlinux-{release}"


@dataclass
class SaveResult:
    """Where the dump went and what it holds."""

    url: TargetURL
    directory: str
    files: List[str] = field(default_factory=list)
    facts: Optional[DumpFacts] = None


def save(config: Config, vmcore: str = "/proc/vmcore", savedir: Union[str, TargetURL, None] = None,
         notes: Sequence[str] = ()) -> SaveResult:
    """Save ``vmcore`` as ``config`` says (to ``savedir`` instead of
    KDUMP_SAVEDIR when given); raise :class:`KdumpError` unless the vmcore
    (for format ``none``, the kernel log) was saved completely.  ``notes`` go
    into the README.  Several targets are tried in order until one takes
    the whole dump; its README lists the ones that failed."""
    urls = targets(config, savedir)
    failed: List[str] = []
    for url in urls:
        try:
            with begin(config, vmcore, url, [*notes, *failed]) as dump:
                dump.save_files()
                return dump.finish()
        except KdumpError as exc:
            failed.append(next_target(url, exc, urls, failed))
    raise AssertionError("unreachable: the last target's failure is raised")


def targets(config: Config, savedir: Union[str, TargetURL, None] = None) -> Tuple[TargetURL, ...]:
    """The targets to try in order: ``savedir`` when given, else KDUMP_SAVEDIR
    (one or more URLs separated by spaces)."""
    if isinstance(savedir, TargetURL):
        return (savedir,)
    return parse_targets(savedir or config.savedir)


def next_target(url: TargetURL, exc: KdumpError, urls: Sequence[TargetURL], failed: Sequence[str]) -> str:
    """After ``url`` failed with ``exc``: the README note naming the failure
    when another target follows; otherwise raise (``exc`` itself when there
    was only one target, else an error naming every failure)."""
    note = f"target {url.masked()} failed: {exc}"
    if url is not urls[-1]:
        log.error("%s; trying the next target", note)
        return note
    if len(urls) == 1:
        raise exc
    raise KdumpError(f"no target took the dump: {'; '.join([*failed, note])}") from exc


@contextmanager
def begin(config: Config, vmcore: str = "/proc/vmcore", savedir: Union[str, TargetURL, None] = None,
          notes: Sequence[str] = ()) -> Iterator["DumpInProgress"]:
    """The steps up to an empty dump directory marked incomplete; the block
    then saves the files and finishes.  An exception in the block leaves the
    README saying INCOMPLETE and why, and propagates."""
    started = time.monotonic()
    url = targets(config, savedir)[0]
    crashed = read_crashed_kernel(vmcore)
    mdf = collector.probe()
    plan = collector.plan(config, mdf)
    for note in plan.notes:
        log.info("%s", note)
    hostname = config.hostname or crashed.nodename or "unknown"
    log.info("saving the dump of %s (kernel %s, crashed %s) to %s", hostname, crashed.release,
             crashed.crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"), url.masked())

    with open_target(url, TransportOptions.from_config(config)) as target:
        guard = SpaceGuard(target, config.free_disk_size << 20)
        deleted = make_room(target, guard, hostname, config.keep_old_dumps)
        guard.start()
        name = dumpdir.create_unique(target, dumpdir.base_name(crashed.crash_time, hostname, url.is_remote),
                                     avoid=deleted)
        facts = DumpFacts(
            status="being written", target=url.masked(), directory=name, hostname=hostname,
            kernel_release=crashed.release, crash_time=crashed.crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"),
            dump_level=None if plan.format in ("raw", "none") else plan.dump_level,
            dump_format=_format_label(plan), memory_size=crashed.memory_size,
            notes=list(plan.notes) + list(notes))
        target.write_small(f"{name}/{MARKER}", dumpdir.marker_bytes(hostname, datetime.now(timezone.utc)))
        target.write_small(f"{name}/{README}", dumpdir.incomplete_readme(facts).encode())
        dump = DumpInProgress(config, vmcore, url, target, guard, mdf, plan, facts, started)
        try:
            yield dump
        except BaseException as exc:
            if not dump.finished:
                _record_failure(target, facts, dump.progress, exc, started)
            raise


@dataclass
class DumpInProgress:
    """A dump directory being written: :meth:`save_files`, then :meth:`finish`."""

    config: Config
    vmcore: str
    url: TargetURL
    target: Transport
    guard: SpaceGuard
    mdf: collector.Makedumpfile
    plan: collector.DumpPlan
    facts: DumpFacts
    started: float
    progress: Progress = field(default_factory=lambda: Progress(interval=5.0))
    finished: bool = False
    """Whether the README says the dump is complete."""

    @property
    def notes(self) -> List[str]:
        """The README's notes; append to add one before :meth:`finish`."""
        return self.facts.notes

    def save_files(self) -> None:
        """The kernel log, then the vmcore (unless the format is ``none``)."""
        name, facts = self.facts.directory, self.facts
        dmesg = _save_dmesg(self.target, name, self.mdf, self.vmcore, self.guard)
        facts.panic = collector.panic_line(dmesg) or facts.panic
        if self.plan.format != "none":
            facts.vmcore_name, written = _save_vmcore(self.target, name, self.plan, self.mdf, self.config,
                                                      self.vmcore, self.guard, self.progress)
            facts.saved_bytes = written.size
            facts.sha256 = written.sha256 or self.target.sha256(f"{name}/{facts.vmcore_name}")

    def finish(self) -> SaveResult:
        """The final README, then KDUMP_KEEP_OLD_DUMPS."""
        name, facts, keep = self.facts.directory, self.facts, self.config.keep_old_dumps
        facts.status = "saved successfully"
        facts.duration = time.monotonic() - self.started
        facts.free_space = self.guard.describe()
        facts.open_command = _open_command(facts, self.url)
        self.target.write_small(f"{name}/{README}", facts.render().encode())
        self.finished = True
        old = retention.own_dumps(self.target, facts.hostname, exclude=name)
        retention.delete(self.target, retention.surplus(old, keep), f"KDUMP_KEEP_OLD_DUMPS={keep}")
        log.info("dump saved: %s/%s (%s, %.1f MB, %.1f s)", self.url.masked().rstrip("/"), name,
                 facts.vmcore_name or "dmesg.txt", facts.saved_bytes / 1e6, facts.duration)
        return SaveResult(self.url, name, [f for f in (facts.vmcore_name, "dmesg.txt", README) if f], facts)


@dataclass(frozen=True)
class CrashedKernel:
    """What the vmcore's headers say about the kernel that crashed."""

    release: str
    crash_time: datetime
    nodename: Optional[str]
    memory_size: int


def read_crashed_kernel(vmcore: str) -> CrashedKernel:
    """Read the vmcore's headers; refuse a truncated or foreign file."""
    with ElfCore.open(vmcore) as core:
        size = os.path.getsize(vmcore)
        if size < core.expected_size:
            raise DumpFormatError(f"{vmcore} is truncated: {size} bytes, its headers describe "
                                  f"{core.expected_size}")
        if core.crash_time is not None:
            crash_time = datetime.fromtimestamp(core.crash_time, timezone.utc)
        else:
            log.warning("the vmcore has no CRASHTIME; naming the dump after the current clock")
            crash_time = datetime.now(timezone.utc)
        return CrashedKernel(core.osrelease or "unknown", crash_time, core.nodename(), core.memory_size)


def _save_dmesg(target: Transport, name: str, mdf: collector.Makedumpfile, vmcore: str,
                guard: SpaceGuard) -> bytes:
    log.info("extracting the kernel log")
    dmesg = collector.dump_dmesg(mdf, vmcore)
    guard.claim(len(dmesg))
    target.write_small(f"{name}/dmesg.txt", dmesg, partial_suffix=INCOMPLETE)
    return dmesg


def _save_vmcore(target: Transport, name: str, plan: collector.DumpPlan, mdf: collector.Makedumpfile,
                 config: Config, vmcore: str, guard: SpaceGuard, progress: Progress) -> Tuple[str, Written]:
    """Stream the vmcore into ``vmcore.incomplete``, then rename it to its final
    name: ``vmcore`` (rebuilt at offsets), ``vmcore.flat`` (append-only
    targets) or ``vmcore.lz4`` (raw)."""
    partial = f"{name}/vmcore{INCOMPLETE}"
    out = target.create(partial)
    final = "vmcore.lz4" if plan.format == "raw" else "vmcore" if out.seekable else "vmcore.flat"
    try:
        if plan.format == "raw":
            written = compress_raw(vmcore, out, guard, progress)
        else:
            run = collector.Collection(collector.command(mdf, plan, vmcore, config.makedumpfile_options),
                                       progress)
            try:
                writer = rebuild_flattened if out.seekable else store_flattened
                written = writer(run.stdout, out, guard, progress)
            except DumpFormatError:
                run.finish(timeout=10)  # makedumpfile's own failure explains a broken stream best
                raise
            except BaseException:
                run.abort()
                raise
            run.finish()
        if written.sha256 is None:
            written = replace(written, sha256=out.close_and_hash())
        else:
            out.close()
    except BaseException:
        out.abort()
        raise
    progress.maybe_report(force=True)
    target.rename(partial, f"{name}/{final}")
    return final, written


def make_room(target: Transport, guard: SpaceGuard, hostname: str, keep: int) -> List[str]:
    """Before anything is written: delete the old dumps retention would delete
    after a success anyway (never the newest), oldest first, while the room
    beyond KDUMP_FREE_DISK_SIZE is less than this host's last dump took."""
    old = retention.own_dumps(target, hostname)
    candidates = retention.expendable_before_success(old, keep)
    if not candidates:
        return []
    expected = retention.saved_size(target, old[-1])
    deleted: List[str] = []
    for dump in candidates:
        room = guard.room()
        if room is None or expected is None or room >= expected:
            break
        deleted += retention.delete(target, [dump], "to make room for the new dump")
    return deleted


def _record_failure(target: Transport, facts: DumpFacts, progress: Progress, exc: BaseException,
                    started: float) -> None:
    """Leave a README that says the dump is incomplete, why, and how much was saved."""
    reason = str(exc) if isinstance(exc, KdumpError) else f"{type(exc).__name__}: {exc}"
    facts.status = f"INCOMPLETE: {reason}"
    facts.saved_bytes = progress.bytes_written
    facts.duration = time.monotonic() - started
    try:
        target.write_small(f"{facts.directory}/{README}", dumpdir.incomplete_readme(facts).encode())
    except Exception as readme_exc:  # noqa: BLE001 - the original failure is what matters
        log.error("could not update README.txt after the failure: %s", readme_exc)


def _format_label(plan: collector.DumpPlan) -> str:
    labels = {"compressed": "kdump-compressed (zlib)", "lzo": "kdump-compressed (lzo)",
              "snappy": "kdump-compressed (snappy)", "zstd": "kdump-compressed (zstd)",
              "elf": "ELF", "raw": "raw /proc/vmcore in an LZ4 frame", "none": "none (kernel log only)"}
    label = labels[plan.format]
    if plan.format != plan.requested_format:
        label += f" (KDUMP_DUMPFORMAT={plan.requested_format} not available)"
    return label


def _open_command(facts: DumpFacts, url: TargetURL) -> str:
    vmlinux = DEBUG_VMLINUX.format(release=facts.kernel_release)
    where = f"{url.path.rstrip('/')}/{facts.directory}" if not url.is_remote else facts.directory
    if facts.vmcore_name == "vmcore":
        return f"crash {vmlinux} {where}/vmcore"
    if facts.vmcore_name == "vmcore.flat":
        return (f"kdump-saver reassemble {where}/vmcore.flat vmcore && crash {vmlinux} vmcore"
                "   (crash also reads vmcore.flat directly)")
    if facts.vmcore_name == "vmcore.lz4":
        return f"lz4 -d {where}/vmcore.lz4 vmcore && crash {vmlinux} vmcore"
    return f"less {where}/dmesg.txt"
