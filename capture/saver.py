"""The save: from /proc/vmcore to a finished dump directory on the target.

:func:`save` is the whole sequence, step by step; each step's details live
in the module named after what it handles.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, List, Optional, Sequence

from capture import collector, dumpdir, retention, targeturl
from capture.config import Config
from capture.dumpdir import INCOMPLETE, MARKER, README, DumpFacts
from capture.dumpwriter import compress_raw, rebuild_flattened, store_flattened
from capture.elfcore import ElfCore
from capture.errors import DumpFormatError, KdumpError
from capture.progress import Progress
from capture.space import SpaceGuard
from capture.targeturl import TargetURL
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


def transport_options(config: Config) -> TransportOptions:
    return TransportOptions(
        net_timeout=config.net_timeout, host_key=config.host_key,
        known_hosts=config.known_hosts or None, ssh_identity=config.ssh_identity,
        ca_file=config.ca_file or None, mount_options=config.nfs_options)


def save(config: Config, vmcore: str = "/proc/vmcore", savedir: Optional[str] = None,
         notes: Sequence[str] = (), after_vmcore: Optional[Callable[[], Optional[str]]] = None) -> SaveResult:
    """Save ``vmcore`` as ``config`` says; raise :class:`KdumpError` unless the
    vmcore (for format ``none``, the kernel log) was saved completely.

    ``notes`` go into the README; ``after_vmcore`` runs once the vmcore is
    complete, before the final README, and may return one more note."""
    started = time.monotonic()
    url = targeturl.parse(savedir or config.savedir)
    crashed = read_crashed_kernel(vmcore)
    mdf = collector.probe()
    plan = collector.plan(config, mdf)
    for note in plan.notes:
        log.info("%s", note)
    hostname = config.hostname or crashed.nodename or "unknown"
    crash_time = crashed.crash_time
    log.info("saving the dump of %s (kernel %s, crashed %s) to %s",
             hostname, crashed.release, crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"), url.masked())

    with open_target(url, transport_options(config)) as target:
        guard = SpaceGuard(target, config.free_disk_size << 20,
                           make_room=lambda: _make_room(target, hostname, config.keep_old_dumps))
        guard.start()
        name = dumpdir.create_unique(target, dumpdir.base_name(crash_time, hostname, url.is_remote))
        facts = DumpFacts(
            status="being written", target=url.masked(), directory=name, hostname=hostname,
            kernel_release=crashed.release,
            crash_time=crash_time.strftime("%Y-%m-%d %H:%M:%S UTC"),
            dump_level=None if plan.format in ("raw", "none") else plan.dump_level,
            dump_format=_format_label(plan), memory_size=crashed.memory_size, notes=list(plan.notes) + list(notes))
        target.write_small(f"{name}/{MARKER}", dumpdir.marker_bytes(hostname, datetime.now(timezone.utc)))
        target.write_small(f"{name}/{README}", dumpdir.incomplete_readme(facts).encode())
        progress = Progress(interval=5.0)
        try:
            dmesg = _save_dmesg(target, name, mdf, vmcore, guard)
            facts.panic = collector.panic_line(dmesg) or facts.panic
            if plan.format != "none":
                facts.vmcore_name, written = _save_vmcore(target, name, plan, mdf, config, vmcore,
                                                          guard, progress)
                facts.saved_bytes = written.size
                facts.sha256 = written.sha256 or target.sha256(f"{name}/{facts.vmcore_name}")
            if after_vmcore is not None:
                facts.notes += [n for n in [after_vmcore()] if n]
            facts.status = "saved successfully"
            facts.duration = time.monotonic() - started
            facts.free_space = guard.describe()
            facts.open_command = _open_command(facts, url)
            target.write_small(f"{name}/{README}", facts.render().encode())
        except BaseException as exc:
            _record_failure(target, facts, progress, exc, started)
            raise
        old = retention.own_dumps(target, hostname, exclude=name)
        retention.delete(target, retention.surplus(old, config.keep_old_dumps),
                         f"KDUMP_KEEP_OLD_DUMPS={config.keep_old_dumps}")
    log.info("dump saved: %s/%s (%s, %.1f MB, %.1f s)", url.masked().rstrip("/"), name,
             facts.vmcore_name or "dmesg.txt", facts.saved_bytes / 1e6, facts.duration)
    return SaveResult(url, name, [f for f in (facts.vmcore_name, "dmesg.txt", README) if f], facts)


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
                 config: Config, vmcore: str, guard: SpaceGuard, progress: Progress):
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


def _make_room(target: Transport, hostname: str, keep: int) -> bool:
    """Delete the oldest dump retention allows to go early; False when none may go."""
    candidates = retention.expendable_before_success(retention.own_dumps(target, hostname), keep)
    if not candidates:
        return False
    retention.delete(target, candidates[:1], "to make room for the new dump")
    return True


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
