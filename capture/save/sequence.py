"""The save: from /proc/vmcore to a finished dump directory on the target.

:func:`save` is the whole sequence, step by step; each step's details live
in the module named after what it handles.  What needs only the vmcore
(its headers, the collector's plan, the kernel log) is
:func:`prepare`, done once for every target; capture-boot runs it while the
network comes up.  A caller that must act between the complete vmcore and
the final README (capture-boot runs KDUMP_POSTSCRIPT there) uses the same
steps through :func:`begin`::

    with begin(config, vmcore) as dump:
        dump.save_files()
        dump.notes.append("...")
        result = dump.finish()
"""
from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from capture import __version__
from capture.config import verbose
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
from transports.base import NoSpaceError, Transport, TransportOptions

log = logging.getLogger(__name__)

DEBUG_VMLINUX = "/usr/lib/debug/boot/vmlinux-{release}"
NO_SHA256 = ("not computed (the file was written at offsets and the server cannot hash it; "
             "reading the dump back would send it over the network twice)")


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
    prepared = prepare(config, vmcore, start_collector=True)
    failed: List[str] = []
    try:
        for url in urls:
            try:
                with begin(config, vmcore, url, [*notes, *failed], prepared) as dump:
                    dump.save_files()
                    return dump.finish()
            except KdumpError as exc:
                failed.append(next_target(url, exc, urls, failed))
    finally:
        prepared.discard()
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


@dataclass(frozen=True)
class KernelLog:
    """The crashed kernel's log as dmesg.txt will hold it (empty when
    unreadable), and the README notes on how it was read."""

    text: bytes
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """Everything the save needs that comes from the vmcore alone."""

    crashed: "CrashedKernel"
    mdf: Optional[collector.Makedumpfile]
    plan: collector.DumpPlan
    kernel_log: KernelLog
    early: Optional[collector.EarlyStart] = None
    """The collector started by ``prepare(start_collector=True)``; the first vmcore written takes it."""

    def discard(self) -> None:
        """Stop the early collector when no target took it; never raises."""
        if self.early is not None:
            self.early.discard()


def prepare(config: Config, vmcore: str = "/proc/vmcore", start_collector: bool = False) -> Prepared:
    """Read the vmcore's headers, choose the collector and read the kernel
    log; raise :class:`KdumpError` for a vmcore
    that cannot be saved.  ``start_collector`` starts the collector first,
    so that its start-up overlaps the rest; its stream waits in the pipe
    until a vmcore is written, and the caller must :meth:`Prepared.discard`
    it when the save ends."""
    crashed = read_crashed_kernel(vmcore)
    mdf, mdf_problem = _probe_makedumpfile()
    plan = collector.plan(config, mdf, crashed.vmcoreinfo, mdf_problem=mdf_problem)
    for note in plan.notes:
        log.info("%s", note)
    early = collector.EarlyStart.start(mdf, plan, vmcore, config.makedumpfile_options) if start_collector else None
    try:
        return Prepared(crashed, mdf, plan, read_dmesg(mdf, vmcore), early)
    except BaseException:
        if early is not None:
            early.discard()
        raise


class Preparation:
    """:func:`prepare` in a thread, so that it overlaps other waiting (the
    network coming up); :meth:`result` waits for it and returns it or
    raises what it raised."""

    def __init__(self, config: Config, vmcore: str = "/proc/vmcore", start_collector: bool = False) -> None:
        self._outcome: List[Union[Prepared, BaseException]] = []
        self._thread = threading.Thread(target=self._run, args=(config, vmcore, start_collector),
                                        name="kdump-saver-prepare", daemon=True)
        self._thread.start()

    def _run(self, config: Config, vmcore: str, start_collector: bool) -> None:
        try:
            self._outcome.append(prepare(config, vmcore, start_collector))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._outcome.append(exc)

    def discard(self) -> None:
        """After the save (or instead of it): wait for the preparation and stop
        a collector no target took; never raises."""
        self._thread.join()
        outcome = self._outcome[0] if self._outcome else None
        if isinstance(outcome, Prepared):
            outcome.discard()

    def result(self) -> Prepared:
        self._thread.join()
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@contextmanager
def begin(config: Config, vmcore: str = "/proc/vmcore", savedir: Union[str, TargetURL, None] = None,
          notes: Sequence[str] = (), prepared: Optional[Prepared] = None) -> Iterator["DumpInProgress"]:
    """The steps up to an empty dump directory marked incomplete (after
    :func:`prepare`, unless ``prepared`` is its result); the block then saves
    the files and finishes.  An exception in the block leaves the README
    saying INCOMPLETE and why, and propagates."""
    started = time.monotonic()
    url = targets(config, savedir)[0]
    ready = prepared or prepare(config, vmcore)
    crashed, mdf, plan = ready.crashed, ready.mdf, ready.plan
    hostname = dumpdir.facts_text(config.hostname or crashed.nodename or "unknown")
    log.info("saving the dump of %s (kernel %s, crashed %s) to %s", hostname, crashed.release,
             crashed.crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"), url.masked())

    with open_target(url, TransportOptions.from_config(config)) as target:
        guard = SpaceGuard(target, config.free_disk_size << 20)
        room = guard.room()
        expected = size_if_needed(vmcore, plan, crashed.memory_size, room)
        base = dumpdir.base_name(crashed.crash_time, hostname, url.is_remote)
        # (nothing to make room for on a target that cannot tell its space or has room for the
        # worst case: one listing and two free-space queries less, each a process for ssh://)
        deleted = (make_room(target, guard, hostname, config.keep_old_dumps, base, expected, room=room)
                   if room is not None and room < worst_case_size(crashed.memory_size) else [])
        guard.start(reuse_room=not deleted)
        name = dumpdir.create_unique(target, base, avoid=deleted)
        facts = DumpFacts(
            status="being written", target=url.masked(), directory=name, hostname=hostname,
            kernel_release=crashed.release, crash_time=crashed.crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"),
            dump_level=None if plan.format in ("raw", "none") else plan.dump_level,
            dump_format=_format_label(plan), memory_size=crashed.memory_size,
            notes=list(plan.notes) + list(notes), crashed_at=crashed.crash_time,
            dump_started=datetime.now(timezone.utc), format_name=plan.format, configured_dump_level=plan.dump_level)
        facts.collector = _collector_label(plan, mdf)
        if expected is not None:
            facts.notes.append(f"expected size before saving: {expected} bytes")
        created = datetime.now(timezone.utc)
        try:
            target.write_small(f"{name}/{MARKER}", dumpdir.marker_bytes(hostname, created))
            target.write_small(f"{name}/{README}", dumpdir.incomplete_readme(facts).encode())
        except KdumpError as exc:
            _remove_new_directory(target, name)
            why = "the target is full" if isinstance(exc, NoSpaceError) else "cannot start the dump"
            raise KdumpError(f"{why}: {exc}") from None
        dump = DumpInProgress(config, vmcore, url, target, guard, mdf, plan, facts, started, created,
                              ready.kernel_log,
                              Progress(interval=5.0, stdout=bool(config.verbose & verbose.PROGRESS)),
                              early=ready.early)
        try:
            yield dump
        except BaseException as exc:
            if not dump.finished:
                _record_failure(target, facts, dump.progress, exc, started, created)
            raise


@dataclass
class DumpInProgress:
    """A dump directory being written: :meth:`save_files`, then :meth:`finish`."""

    config: Config
    vmcore: str
    url: TargetURL
    target: Transport
    guard: SpaceGuard
    mdf: Optional[collector.Makedumpfile]
    plan: collector.DumpPlan
    facts: DumpFacts
    started: float
    created: datetime
    """When the directory was made (the marker's lease starts then)."""
    kernel_log: KernelLog
    progress: Progress = field(default_factory=lambda: Progress(interval=5.0))
    has_dmesg: bool = False
    finished: bool = False
    """Whether the README says the dump is complete."""
    early: Optional[collector.EarlyStart] = None
    """A collector already running for this vmcore (see :func:`prepare`)."""

    @property
    def notes(self) -> List[str]:
        """The README's notes; append to add one before :meth:`finish`."""
        return self.facts.notes

    def save_files(self) -> None:
        """The kernel log, then the vmcore (unless the format is ``none``)."""
        name, facts = self.facts.directory, self.facts
        dmesg = _save_dmesg(self.target, name, self.kernel_log, self.guard, facts.notes)
        facts.dmesg_status = "saved successfully" if dmesg else "error while saving, see the notes"
        panic = collector.panic_line(dmesg)
        facts.panic = dumpdir.facts_text(panic) if panic else facts.panic
        self.has_dmesg = bool(dmesg)
        if self.plan.format == "none" and not dmesg:
            raise KdumpError("KDUMP_DUMPFORMAT=none saves only the kernel log, and it could not be read")
        if self.plan.format != "none":
            facts.vmcore_name, written = _save_vmcore(self.target, name, self.plan, self.mdf, self.config,
                                                      self.vmcore, self.guard, self.progress, facts, self.early)
            facts.saved_bytes = written.size
            facts.sha256 = written.sha256 or self.target.server_sha256(f"{name}/{facts.vmcore_name}") \
                or NO_SHA256

    def finish(self) -> SaveResult:
        """The final README, then KDUMP_KEEP_OLD_DUMPS."""
        name, facts, keep = self.facts.directory, self.facts, self.config.keep_old_dumps
        facts.status = "saved successfully"
        facts.duration = time.monotonic() - self.started
        facts.free_space = self.guard.describe()
        facts.open_command = _open_command(facts, self.url)
        self.target.write_small(f"{name}/{README}", facts.render().encode())
        self.finished = True
        self.target.write_small(f"{name}/{MARKER}", dumpdir.marker_bytes(facts.hostname, self.created,
                                                                         dumpdir.COMPLETE))
        try:
            old = retention.own_dumps(self.target, facts.hostname, older_than=dumpdir.parse_name(name).sort_key)
            _, problems = retention.delete(self.target, retention.surplus(old, keep),
                                           f"KDUMP_KEEP_OLD_DUMPS={keep}")
        except KdumpError as exc:
            # the dump is complete: a failure to list old ones must not turn it into a failed save
            problems = [f"KDUMP_KEEP_OLD_DUMPS={keep}: could not delete old dumps: {exc}"]
            log.error("the dump is saved, but %s", problems[0])
        if problems:
            facts.notes.extend(problems)
            try:
                self.target.write_small(f"{name}/{README}", facts.render().encode())
            except KdumpError as readme_exc:
                log.error("could not add that to README.txt: %s", readme_exc)
        log.info("dump saved: %s/%s (%s, %.1f MB, %.1f s)", self.url.masked().rstrip("/"), name,
                 facts.vmcore_name or "dmesg.txt", facts.saved_bytes / 1e6, facts.duration)
        files = [facts.vmcore_name, dumpdir.DMESG if self.has_dmesg else "", README]
        return SaveResult(self.url, name, [f for f in files if f], facts)


@dataclass(frozen=True)
class CrashedKernel:
    """What the vmcore's headers say about the kernel that crashed."""

    release: str
    crash_time: datetime
    nodename: Optional[str]
    memory_size: int
    vmcoreinfo: Dict[str, str] = field(default_factory=dict)


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
        nodename = core.nodename()
        return CrashedKernel(dumpdir.facts_text(core.osrelease or "unknown"), crash_time,
                             dumpdir.facts_text(nodename) if nodename is not None else None, core.memory_size,
                             dict(core.vmcoreinfo))


def read_dmesg(mdf: Optional[collector.Makedumpfile], vmcore: str) -> KernelLog:
    """The kernel log from makedumpfile, else from our own reader of the log
    in the vmcore; when neither works, an empty log and a note saying why
    (the vmcore is saved all the same)."""
    log.info("extracting the kernel log")
    try:
        return KernelLog(collector.dump_dmesg(mdf, vmcore))
    except KdumpError as exc:
        log.warning("%s; reading the kernel log from the vmcore itself", exc)
        try:
            text = read_kernel_log(vmcore)
        except KdumpError as own_exc:
            log.error("no kernel log: %s", own_exc)
            return KernelLog(b"", (f"no dmesg.txt: {exc}; kdump-saver's own reader: {own_exc}",))
        return KernelLog(text, (f"dmesg.txt was read by kdump-saver from the vmcore ({exc})",))


def _save_dmesg(target: Transport, name: str, kernel_log: KernelLog, guard: SpaceGuard,
                notes: List[str]) -> bytes:
    """``dmesg.txt`` (nothing when the log could not be read); the log's notes go into ``notes``."""
    notes.extend(kernel_log.notes)
    if not kernel_log.text:
        return b""
    guard.claim(len(kernel_log.text))
    target.write_small(f"{name}/{dumpdir.DMESG}", kernel_log.text, partial_suffix=INCOMPLETE)
    return kernel_log.text


def read_kernel_log(vmcore: str) -> bytes:
    """The kernel log from the vmcore's printk buffer, as makedumpfile --dump-dmesg prints it;
    what was readable before damage when the buffer is corrupt."""
    from capture.formats import printk  # only when makedumpfile cannot read the log

    with ElfCore.open(vmcore) as core:
        try:
            return printk.extract_dmesg(core)
        except printk.PrintkCorruptError as exc:
            if not exc.partial:
                raise
            log.warning("the kernel log is damaged; keeping what was readable: %s", exc)
            return exc.partial


def _save_vmcore(target: Transport, name: str, plan: collector.DumpPlan, mdf: Optional[collector.Makedumpfile],
                 config: Config, vmcore: str, guard: SpaceGuard, progress: Progress,
                 facts: DumpFacts, early: Optional[collector.EarlyStart] = None) -> Tuple[str, Written]:
    """Stream the vmcore into ``vmcore.incomplete``, then rename it to its final
    name: ``vmcore`` (rebuilt at offsets), ``vmcore.flat`` (append-only
    targets) or ``vmcore.lz4`` (raw).  When makedumpfile fails, the file is
    started again with kdump-saver's own collector; when kdump-saver's parallel
    collector fails, with single-threaded makedumpfile."""
    partial = f"{name}/vmcore{INCOMPLETE}"
    try:
        final, written = _write_vmcore(target, partial, plan, mdf, config, vmcore, guard, progress, early)
    except collector.CollectorError as exc:
        retry = collector.fallback(plan, config, f"makedumpfile failed: {exc}" if plan.collector != collector.OWN
                                   else str(exc), mdf)
        if retry is None:
            raise
        again = "kdump-saver's own collector" if retry.collector == collector.OWN else "makedumpfile"
        log.warning("%s; starting the vmcore again with %s", exc, again)
        retry_mdf = mdf if retry.collector == collector.MAKEDUMPFILE else None
        facts.notes.append(retry.notes[-1])
        facts.collector = _collector_label(retry, retry_mdf)
        facts.dump_format = _format_label(retry)
        guard.remeasure()
        final, written = _write_vmcore(target, partial, retry, retry_mdf, config, vmcore, guard, progress)
    progress.maybe_report(force=True)
    target.rename(partial, f"{name}/{final}")
    return final, written


def _write_vmcore(target: Transport, partial: str, plan: collector.DumpPlan,
                  mdf: Optional[collector.Makedumpfile], config: Config, vmcore: str, guard: SpaceGuard,
                  progress: Progress, early: Optional[collector.EarlyStart] = None) -> Tuple[str, Written]:
    """Write ``partial`` completely (durable, hashed where it can be); return its final name
    (the collection comes from ``early`` when it runs the same command)."""
    out = target.create(partial)
    final = "vmcore.lz4" if plan.format == "raw" else "vmcore" if out.seekable else "vmcore.flat"
    try:
        if plan.format == "raw":
            written = compress_raw(vmcore, out, guard, progress)
        else:
            cmd = collector.command(mdf, plan, vmcore, config.makedumpfile_options)
            run = (early.take(cmd, progress) if early else None) or collector.Collection(cmd, progress)
            try:
                writer = rebuild_flattened if out.seekable else store_flattened
                written = writer(run.stdout, out, guard, progress)
            except DumpFormatError:
                run.finish(timeout=10)  # the collector's own failure explains a broken stream best
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
    return final, written


def _probe_makedumpfile() -> Tuple[Optional[collector.Makedumpfile], str]:
    """makedumpfile, or None and why it cannot be used."""
    try:
        return collector.probe(), ""
    except collector.CollectorError as exc:
        log.warning("%s", exc)
        return None, str(exc)


def worst_case_size(memory_size: int) -> int:
    """More than a kdump-compressed dump of ``memory_size`` bytes of memory can
    take: every page stored uncompressed, plus its 24-byte descriptor, the two
    bitmaps and the headers."""
    return memory_size + memory_size // 128 + (1 << 20)


def size_if_needed(vmcore: str, plan: collector.DumpPlan, memory_size: int, room: Optional[int]) -> Optional[int]:
    """The dump's expected size (:func:`expected_size`) when the target's room
    beyond KDUMP_FREE_DISK_SIZE may be too small for it; None, without
    reading the vmcore, when the room is unknown (nothing could be done about
    it) or holds even :func:`worst_case_size` (the estimate costs CPU time the
    collector needs, and a capture kernel often has one CPU)."""
    if room is None:
        log.info("the target cannot tell its free space: the dump's size is not estimated")
        return None
    if room >= worst_case_size(memory_size):
        log.info("the target has room for %.1f MB more before KDUMP_FREE_DISK_SIZE, more than the dump "
                 "of %.1f MB of memory can take", room / 1e6, memory_size / 1e6)
        return None
    expected = expected_size(vmcore, plan)
    if expected is not None:
        log.info("the dump is expected to take about %.1f MB; the target has room for %.1f MB more "
                 "before KDUMP_FREE_DISK_SIZE", expected / 1e6, max(room, 0) / 1e6)
    return expected


def expected_size(vmcore: str, plan: collector.DumpPlan) -> Optional[int]:
    """The dump's expected size from the page classification and a sample of
    compressed pages (lzo or zlib, as kdump-saver's collector would write
    it); None for the formats it cannot predict or when the vmcore does not tell."""
    if plan.format not in ("lzo", "compressed"):
        return None
    from capture.save.pycollector import estimate_size

    try:
        return estimate_size(vmcore, plan.dump_level, compression="zlib" if plan.format == "compressed"
                             else "lzo").size
    except KdumpError as exc:
        log.info("no size estimate: %s", exc)
        return None


def make_room(target: Transport, guard: SpaceGuard, hostname: str, keep: int, new_name: str,
              expected: Optional[int] = None, room: Optional[int] = None) -> List[str]:
    """Before anything is written: when the room beyond KDUMP_FREE_DISK_SIZE
    (``room`` as :meth:`SpaceGuard.room` just measured it, else measured here)
    is less than the new dump is expected to take (``expected``, else what
    this host's newest complete dump took), delete old dumps retention would
    delete after a success anyway, oldest first, until it is enough.  Never
    the newest complete dump, never one being written; nothing at all when
    no size is known, and none that sorts after ``new_name`` (the new dump's
    base name).  Returns the names deleted."""
    # the new dump will take a sequence number after every existing one of its minute
    newest_possible = (dumpdir.parse_name(new_name).stamp, float("inf"))
    old = retention.own_dumps(target, hostname, older_than=newest_possible)
    candidates = retention.expendable_before_success(old, keep)
    if expected is None:
        expected = next((d.saved_bytes for d in reversed(old) if d.complete and d.saved_bytes), None)
    if room is None:
        room = guard.room()
    if not candidates or room is None or expected is None or room >= expected:
        return []
    reclaimable = sum(d.saved_bytes or 0 for d in candidates)
    if room + reclaimable < expected:
        log.warning("the dump may take %d MB and deleting every old dump KDUMP_KEEP_OLD_DUMPS=%d allows to "
                    "go would free only about %d MB: keeping them", expected >> 20, keep, reclaimable >> 20)
        return []
    log.info("the target has room for %d MB more and the dump may take %d MB: deleting old dumps "
             "KDUMP_KEEP_OLD_DUMPS=%d allows to go", max(room, 0) >> 20, expected >> 20, keep)
    deleted: List[str] = []
    for dump in candidates:
        gone, problems = retention.delete(target, [dump], "to make room for the new dump")
        deleted += gone
        room = guard.room()
        if room is None or room >= expected:
            break
    return deleted


def _record_failure(target: Transport, facts: DumpFacts, progress: Progress, exc: BaseException,
                    started: float, created: datetime) -> None:
    """Leave a README that says the dump is incomplete, why, and how much was saved,
    and a marker that says the save is over (so retention may count it)."""
    reason = str(exc) if isinstance(exc, KdumpError) else f"{type(exc).__name__}: {exc}"
    facts.status = f"INCOMPLETE: {reason}"
    facts.saved_bytes = progress.bytes_written
    facts.duration = time.monotonic() - started
    readme = f"{facts.directory}/{README}"
    data = dumpdir.incomplete_readme(facts).encode()
    try:
        target.write_small(readme, data)
        target.write_small(f"{facts.directory}/{MARKER}",
                           dumpdir.marker_bytes(facts.hostname, created, dumpdir.FAILED))
    except Exception as readme_exc:  # noqa: BLE001 - the original failure is what matters
        log.warning("could not replace README.txt after the failure (%s); overwriting it in place", readme_exc)
        _overwrite_in_place(target, readme, data)


def _overwrite_in_place(target: Transport, path: str, data: bytes) -> None:
    """Write ``data`` over ``path`` itself, on a target too full for a second file:
    the partial ``path.tmp`` first replaces ``path`` (so none is left behind), then
    truncating it frees the blocks the new text reuses."""
    try:
        target.rename(path + ".tmp", path)
    except Exception as exc:  # noqa: BLE001 - there may be no partial file
        log.debug("no partial %s.tmp to move away: %s", path, exc)
    try:
        target.write_whole(path, data)
    except Exception as exc:  # noqa: BLE001 - the original failure is what matters
        log.error("could not update README.txt after the failure: %s", exc)


def _remove_new_directory(target: Transport, name: str) -> None:
    """Delete the dump directory just created when not even its marker and README fit."""
    try:
        target.remove_tree(name)
    except Exception as exc:  # noqa: BLE001 - the original failure is what matters
        log.error("could not remove the unusable dump directory %s: %s", name, exc)


def _collector_label(plan: collector.DumpPlan, mdf: Optional[collector.Makedumpfile]) -> str:
    if not plan.uses_collector:
        return ""
    if plan.collector == collector.OWN:
        return f"kdump-saver {__version__} ({plan.collector_reason})"
    return f"makedumpfile {mdf.version_text}" if mdf else "makedumpfile"


def _format_label(plan: collector.DumpPlan) -> str:
    labels = {"compressed": "kdump-compressed (zlib)", "lzo": "kdump-compressed (lzo)",
              "snappy": "kdump-compressed (snappy)", "zstd": "kdump-compressed (zstd)",
              "elf": "ELF", "raw": "raw /proc/vmcore in an LZ4 frame", "none": "none (kernel log only)"}
    label = labels[plan.format]
    if plan.format != plan.requested_format:
        label += f" (KDUMP_DUMPFORMAT={plan.requested_format} not available)"
    return label


def _open_command(facts: DumpFacts, url: TargetURL) -> str:
    vmlinux = shlex.quote(DEBUG_VMLINUX.format(release=facts.kernel_release))
    where = shlex.quote(f"{url.path.rstrip('/')}/{facts.directory}" if not url.is_remote else facts.directory)
    if facts.vmcore_name == "vmcore":
        return f"crash {vmlinux} {where}/vmcore"
    if facts.vmcore_name == "vmcore.flat":
        return (f"kdump-saver reassemble {where}/vmcore.flat vmcore && crash {vmlinux} vmcore"
                "   (crash also reads vmcore.flat directly)")
    if facts.vmcore_name == "vmcore.lz4":
        return f"lz4 -d {where}/vmcore.lz4 vmcore && crash {vmlinux} vmcore"
    return f"less {where}/dmesg.txt"
