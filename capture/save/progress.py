"""Progress of a long save, on the console at a calm pace.

makedumpfile writes lines like ``Copying data   : [ 42.0 %] /  eta: 3s``
to stderr, separated by carriage returns.  :class:`Progress` keeps the
latest phase and percentage, counts the bytes we write, and logs one line at
most every ``interval`` seconds, so a serial console is never flooded.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from typing import Callable, Deque, Optional

log = logging.getLogger(__name__)

_LINE = re.compile(
    r"^\s*(?P<phase>[A-Za-z][A-Za-z ()/-]*?)\s*:\s*\[\s*(?P<pct>\d+(?:\.\d+)?)\s*%\s*\]"
    r"(?:.*?eta:\s*(?P<eta>\S+))?")


def parse_progress(line: str) -> Optional[tuple]:
    """``(phase, percent, eta or None)`` for a makedumpfile progress line, else None."""
    m = _LINE.match(line)
    if not m:
        return None
    return m.group("phase").strip(), float(m.group("pct")), m.group("eta")


class Progress:
    """Collects progress from makedumpfile and from our own byte counter."""

    def __init__(self, total_hint: Optional[int] = None, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, stdout: bool = False) -> None:
        self.total_hint = total_hint
        self.interval = interval
        self.stdout = stdout
        """KDUMP_VERBOSE bit 2: also write the progress to standard output, once a second."""
        self._last_stdout = -1e9
        self._clock = clock
        self._start = clock()
        self._last_report = self._start
        self._lock = threading.Lock()
        self.phase = "starting"
        self.percent: Optional[float] = None
        self.eta: Optional[str] = None
        self.bytes_written = 0
        self.messages: Deque[str] = deque(maxlen=20)
        """makedumpfile's last lines that were not progress."""

    def elapsed(self) -> float:
        return self._clock() - self._start

    def feed_line(self, line: str) -> None:
        """One line (or carriage-return segment) of makedumpfile's stderr."""
        line = line.strip()
        if not line:
            return
        parsed = parse_progress(line)
        with self._lock:
            if parsed is None:
                self.messages.append(line)
                log.debug("makedumpfile: %s", line)
            else:
                phase, self.percent, self.eta = parsed
                if phase != self.phase:
                    self.phase = phase
                    self._last_report = -1e9  # announce a new phase at once
        self.maybe_report()

    def add_bytes(self, n: int, source_fraction: Optional[float] = None) -> None:
        """Count ``n`` bytes written; ``source_fraction`` is our own percentage
        when we read the source ourselves (raw copies)."""
        self.bytes_written += n
        if source_fraction is not None:
            self.percent = 100.0 * source_fraction
        self.maybe_report()

    def maybe_report(self, force: bool = False) -> None:
        now = self._clock()
        if self.stdout and (force or now - self._last_stdout >= 1.0):
            with self._lock:
                self._last_stdout = now
                text = self.describe(now)
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        with self._lock:
            if not force and now - self._last_report < self.interval:
                return
            self._last_report = now
            text = self.describe(now)
        log.info("%s", text)

    def describe(self, now: Optional[float] = None) -> str:
        elapsed = (now if now is not None else self._clock()) - self._start
        mb = self.bytes_written / 1e6
        rate = mb / elapsed if elapsed > 0 else 0.0
        parts = [self.phase]
        if self.percent is not None:
            parts.append(f"{self.percent:5.1f} %")
        parts.append(f"{mb:.1f} MB written, {rate:.1f} MB/s")
        eta = self.eta or self._own_eta(elapsed)
        if eta:
            parts.append(f"ETA {eta}")
        return "progress: " + ", ".join(parts)

    def _own_eta(self, elapsed: float) -> Optional[str]:
        if self.percent is None or self.percent <= 0 or self.percent >= 100:
            return None
        remaining = elapsed * (100 - self.percent) / self.percent
        return f"{remaining:.0f}s"


def pump_stderr(stream, progress: Progress) -> threading.Thread:
    """Start a thread feeding ``stream`` (makedumpfile's stderr) to ``progress``."""

    def run() -> None:
        pending = b""
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                progress.feed_line(raw.decode("utf-8", "replace"))
        if pending:
            progress.feed_line(pending.decode("utf-8", "replace"))

    thread = threading.Thread(target=run, name="makedumpfile-stderr", daemon=True)
    thread.start()
    return thread
