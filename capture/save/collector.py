"""The collector: what filters the vmcore, what to ask of it, and the stream it produces.

Every format except ``raw`` and ``none`` is produced as makedumpfile's
flattened stream (``-F``) on a pipe, so every target receives one stream;
the saver rebuilds the real file from it where the target can write at an
offset.  The collector is makedumpfile, or kdump-saver's own
(:mod:`capture.save.pycollector`, lzo or zlib) when makedumpfile is missing,
is known to mis-filter this kernel at this dump level, or fails, and when
KDUMP_CPUS asks for more than one CPU but makedumpfile is too old to use
``--num-threads`` safely: kdump-saver's collector then reads and compresses
in worker processes (:mod:`capture.save.pyworkers`).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Tuple

from capture.config import verbose
from capture.config.options import Config
from capture.formats.dumplevel import makedumpfile_misfilters
from capture.errors import KdumpError
from capture.save.progress import Progress, pump_stderr

log = logging.getLogger(__name__)

FORMAT_FLAGS = {"compressed": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z", "elf": "-E"}
MAKEDUMPFILE = "makedumpfile"
OWN = "kdump-saver"
"""The collector of :mod:`capture.save.pycollector`."""
OWN_FORMATS = ("lzo", "compressed")
PIPE_BYTES = 1 << 20
THREADS_SAFE_FROM = (1, 7, 8)
"""makedumpfile before 1.7.8 can corrupt dumps written with --num-threads."""


class CollectorError(KdumpError):
    """makedumpfile failed or is unusable."""


@dataclass(frozen=True)
class Makedumpfile:
    """The makedumpfile binary and what it was built with."""

    path: str
    version: Tuple[int, ...]
    features: Dict[str, bool] = field(default_factory=dict)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def supports(self, fmt: str) -> bool:
        """Whether this build can write ``fmt`` (snappy and zstd are optional)."""
        if fmt in ("snappy", "zstd", "lzo"):
            return self.features.get(fmt, False)
        return True


def probe(binary: str = "makedumpfile") -> Makedumpfile:
    """Find makedumpfile and read its version and compiled-in compressors."""
    path = shutil.which(binary)
    if path is None:
        raise CollectorError(f"{binary} not found on PATH; it is needed to filter the dump")
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CollectorError(f"cannot run {path} -v: {exc}") from None
    text = out.stdout + out.stderr
    m = re.search(r"version\s+(\d+(?:\.\d+)*)", text)
    if not m:
        raise CollectorError(f"cannot read the version of {path}: {text.strip()[:200]!r}")
    features = {name: state == "enabled"
                for name, state in re.findall(r"^(lzo|snappy|zstd)\s+(enabled|disabled)", text, re.M)}
    return Makedumpfile(path, tuple(int(x) for x in m.group(1).split(".")), features)


@dataclass(frozen=True)
class DumpPlan:
    """What the saver will produce, decided before anything is written."""

    requested_format: str
    format: str
    dump_level: int
    threads: int
    notes: Tuple[str, ...] = ()
    """Decisions the administrator should read (fallbacks, thread limits)."""
    collector: str = MAKEDUMPFILE
    collector_reason: str = ""
    """Why kdump-saver's own collector is used (empty for makedumpfile)."""
    message_level: int = 7
    """makedumpfile --message-level (KDUMP_VERBOSE 8 adds its debug messages)."""
    for_parallel: bool = False
    """kdump-saver's collector was chosen only to work in parallel: makedumpfile is the fallback."""

    @property
    def uses_collector(self) -> bool:
        return self.format not in ("raw", "none")


def plan(config: Config, mdf: Optional[Makedumpfile], vmcoreinfo: Optional[Mapping[str, str]] = None,
         cpus_online: Optional[int] = None, mdf_problem: str = "") -> DumpPlan:
    """Choose the collector, the format and the thread count for ``config``
    (``mdf`` None: makedumpfile is unusable, ``mdf_problem`` says why)."""
    if config.dumpformat in FORMAT_FLAGS:
        reason = mdf_problem or "makedumpfile is not available"
        if mdf is not None:
            reason = makedumpfile_misfilters(vmcoreinfo or {}, mdf.version, config.dumplevel) or ""
        if reason:
            return own_plan(config, reason, cpus_online)
    return _makedumpfile_plan(config, mdf, cpus_online)


def own_plan(config: Config, reason: str, cpus_online: Optional[int] = None,
             notes: Tuple[str, ...] = ()) -> DumpPlan:
    """kdump-saver's own collector for ``config``, because of ``reason``."""
    notes += (f"the dump is written by kdump-saver's own collector: {reason}",)
    fmt = config.dumpformat if config.dumpformat in OWN_FORMATS else "lzo"
    if fmt != config.dumpformat:
        notes += (f"kdump-saver's collector writes lzo or zlib, not {config.dumpformat}; using lzo",)
    threads = wanted_cpus(config, cpus_online)
    if threads > 1:
        notes += (f"collecting with {threads} worker processes (KDUMP_CPUS={config.cpus})",)
    return DumpPlan(config.dumpformat, fmt, config.dumplevel, threads, notes, OWN, reason)


def wanted_cpus(config: Config, cpus_online: Optional[int] = None) -> int:
    """Processes KDUMP_CPUS asks for on this machine: all online CPUs for 0, never more than are online."""
    online = cpus_online or os.cpu_count() or 1
    return online if config.cpus == 0 else max(1, min(config.cpus, online))


def fallback(dump: DumpPlan, config: Config, why: str, mdf: Optional[Makedumpfile] = None) -> Optional[DumpPlan]:
    """The plan to retry with after the collector failed (``why``), or None when there is none:
    kdump-saver's collector after makedumpfile, single-threaded makedumpfile (``mdf``) after
    kdump-saver's parallel collector."""
    if not dump.uses_collector:
        return None
    if dump.collector == OWN:
        if not dump.for_parallel or mdf is None:
            return None
        single = _makedumpfile_plan(replace(config, cpus=1), mdf, 1)
        return replace(single, notes=dump.notes + (f"{why}; the dump was written again by makedumpfile "
                                                   f"with one thread",))
    return own_plan(config, why, notes=dump.notes)


def _makedumpfile_plan(config: Config, mdf: Optional[Makedumpfile], cpus_online: Optional[int]) -> DumpPlan:
    notes: List[str] = []
    fmt = config.dumpformat
    if fmt in FORMAT_FLAGS and mdf is not None and not mdf.supports(fmt):
        fallback = "lzo" if mdf.supports("lzo") else "compressed"
        notes.append(f"makedumpfile {mdf.version_text} was built without {fmt}; using {fallback} instead")
        fmt = fallback
    threads = 1
    if fmt in FORMAT_FLAGS and fmt != "elf" and mdf is not None:
        wanted = wanted_cpus(config, cpus_online)
        unsafe = f"makedumpfile {mdf.version_text} can corrupt dumps with --num-threads (fixed in 1.7.8)"
        if wanted > 1 and mdf.version < THREADS_SAFE_FROM:
            if fmt in OWN_FORMATS and not config.makedumpfile_options.strip():
                return replace(own_plan(config, f"{unsafe}; kdump-saver's collector works in parallel",
                                        cpus_online, tuple(notes)), for_parallel=True)
            why = (f"kdump-saver's parallel collector writes lzo or zlib, not {fmt}" if fmt not in OWN_FORMATS
                   else "kdump-saver's parallel collector cannot apply MAKEDUMPFILE_OPTIONS")
            notes.append(f"{unsafe} and {why}; using one thread instead of {wanted}")
        elif wanted > 1:
            threads = wanted
    return DumpPlan(config.dumpformat, fmt, config.dumplevel, threads, tuple(notes),
                    message_level=verbose.makedumpfile_message_level(config.verbose))


def command(mdf: Optional[Makedumpfile], dump: DumpPlan, vmcore: str, extra_options: str = "") -> List[str]:
    """The command writing ``dump`` as a flattened stream to stdout."""
    if dump.collector == OWN:
        # the interpreter's own start-up flags (the capture initrd's launcher runs it with -S -s)
        flags = [flag for flag, on in (("-S", sys.flags.no_site), ("-s", sys.flags.no_user_site)) if on]
        return [sys.executable, *flags, "-m", "capture.save.pycollector", "-d", str(dump.dump_level),
                "--cpus", str(dump.threads), *(["--zlib"] if dump.format == "compressed" else []), vmcore]
    assert mdf is not None
    cmd = [mdf.path, "-F", FORMAT_FLAGS[dump.format], "-d", str(dump.dump_level),
           "--message-level", str(dump.message_level)]
    if dump.threads > 1:
        cmd += ["--num-threads", str(dump.threads)]
    try:
        cmd += shlex.split(extra_options)
    except ValueError as exc:
        raise CollectorError(f"MAKEDUMPFILE_OPTIONS={extra_options!r} cannot be split: {exc}") from None
    cmd.append(vmcore)
    return cmd


class Collection:
    """A running makedumpfile: read the flattened stream from ``stdout``,
    then call :meth:`finish`, which raises with makedumpfile's last messages
    when it failed.  Started without ``progress``, its messages wait in
    their pipe until :meth:`attach`."""

    def __init__(self, cmd: List[str], progress: Optional[Progress] = None) -> None:
        log.info("running %s", " ".join(shlex.quote(c) for c in cmd))
        self.cmd = cmd
        self.progress = progress or Progress()
        self._stderr_thread: Optional[threading.Thread] = None
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise CollectorError(f"cannot start {cmd[0]}: {exc}") from None
        self.stdout = self.proc.stdout
        _widen_pipe(self.stdout)
        if progress is not None:
            self.attach(progress)

    def attach(self, progress: Progress) -> None:
        """Feed the collector's messages to ``progress`` from now on."""
        self.progress = progress
        self._stderr_thread = pump_stderr(self.proc.stderr, progress)

    def _join_stderr(self, timeout: float) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=timeout)

    def finish(self, timeout: Optional[float] = None) -> None:
        """Wait for makedumpfile (killing it after ``timeout`` seconds); raise
        :class:`CollectorError` unless it succeeded."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            status = self.proc.returncode
        self._join_stderr(10)
        self._close_pipes()
        if status != 0:
            last = "; ".join(list(self.progress.messages)[-6:]) or "no messages"
            meaning = {1: "failed", 2: "the vmcore and its VMCOREINFO do not match"}.get(status, "failed")
            who = "kdump-saver's collector" if "capture.save.pycollector" in self.cmd else "makedumpfile"
            raise CollectorError(f"{who} {meaning} (exit status {status}): {last}")
        for line in self.progress.messages:
            if "not supported" in line or "warning" in line.lower():
                log.info("makedumpfile: %s", line)

    def abort(self) -> None:
        """Stop makedumpfile after a failure on our side; never raises."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._join_stderr(2)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


class EarlyStart:
    """A collection started before the dump directory exists, so that the
    collector's own start-up (reading headers, classifying pages, the first
    MiB of its stream) overlaps the saver's size estimate and kernel log.
    Nothing reaches a target before :meth:`take` hands it to the writer;
    :meth:`discard` stops it when no target took it."""

    def __init__(self, run: Collection) -> None:
        self._run: Optional[Collection] = run

    @classmethod
    def start(cls, mdf: Optional[Makedumpfile], dump: DumpPlan, vmcore: str,
              extra_options: str = "") -> Optional["EarlyStart"]:
        """The collection of ``dump`` started now; None when the plan has no
        collector or it cannot start (the write then fails with the reason)."""
        if not dump.uses_collector:
            return None
        try:
            return cls(Collection(command(mdf, dump, vmcore, extra_options)))
        except CollectorError as exc:
            log.debug("collector not started early: %s", exc)
            return None

    def take(self, cmd: List[str], progress: Progress) -> Optional[Collection]:
        """The running collection when it runs ``cmd`` (once), reporting to
        ``progress``; else None (and a collection of another command is stopped)."""
        run, self._run = self._run, None
        if run is None:
            return None
        if run.cmd != cmd:
            run.abort()
            return None
        run.attach(progress)
        return run

    def discard(self) -> None:
        """Stop the collection unless it was taken; never raises."""
        run, self._run = self._run, None
        if run is not None:
            run.abort()


def _widen_pipe(pipe) -> None:
    """Let makedumpfile run up to PIPE_BYTES ahead of the writer instead of the default 64 KiB."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):  # an unprivileged user over /proc/sys/fs/pipe-max-size
        pass


def dump_dmesg(mdf: Optional[Makedumpfile], vmcore: str) -> bytes:
    """The crashed kernel's log, extracted with ``makedumpfile --dump-dmesg``."""
    if mdf is None:
        raise CollectorError("makedumpfile is not available")
    with tempfile.TemporaryDirectory(prefix="kdump-saver-") as tmp:
        out = os.path.join(tmp, "dmesg.txt")
        try:
            res = subprocess.run([mdf.path, "--dump-dmesg", vmcore, out], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CollectorError(f"makedumpfile --dump-dmesg could not run: {exc}") from None
        if res.returncode != 0 or not os.path.exists(out):
            tail = " ".join((res.stdout + res.stderr).split()[-40:])
            raise CollectorError(
                f"makedumpfile --dump-dmesg failed (exit status {res.returncode}): {tail}")
        with open(out, "rb") as f:
            return f.read()


def panic_line(dmesg: bytes) -> Optional[str]:
    """The line that says why the kernel died, if the log has one."""
    text = dmesg.decode("utf-8", "replace")
    for pattern in (r"Kernel panic - not syncing:.*", r"BUG: .*", r"Oops: .*", r"general protection fault.*"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip()
    return None
