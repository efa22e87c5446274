"""A QEMU guest whose serial console the harness reads and types on.

Unlike :func:`qharness.guest.boot` (which only watches), :class:`Console`
keeps QEMU's stdin open: :meth:`Console.send` types on the guest's ttyS0 (a
login shell, or a capture kernel's emergency shell) and :meth:`Console.expect`
waits for a pattern in what the guest printed since a given point, including
a prompt that has no newline yet.  Every line is stored with the host time it
arrived and written to a log file as it comes; ANSI colours and carriage
returns are removed first.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class ConsoleTimeout(RuntimeError):
    """The pattern did not appear in time (or QEMU ended first)."""


@dataclass(frozen=True)
class Seen:
    """Where :meth:`Console.expect` found its pattern."""

    index: int                 # the line's index (len(lines) for the unfinished last line)
    at: float                  # seconds since the start
    match: "re.Match[str]"


class Console:
    """QEMU running ``cmd`` (which must use ``-serial stdio``); a context manager."""

    def __init__(self, cmd: Sequence[str], log_path: Path) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self.lines: List[Tuple[float, str]] = []
        self.partial = ""
        self.started = 0.0
        self._cond = threading.Condition()
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def __enter__(self) -> "Console":
        log.info("qemu: %s", " ".join(self.cmd))
        self.started = time.monotonic()
        self._proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, bufsize=0)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as out:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                text = chunk.decode("utf-8", "replace")
                with self._cond:
                    now = time.monotonic()
                    pieces = (self.partial + text).split("\n")
                    self.partial = pieces.pop()   # raw: an escape sequence may be cut in two
                    for raw in pieces:
                        line = _ANSI.sub("", raw)
                        self.lines.append((now, line))
                        out.write(line + "\n")
                    out.flush()
                    self._cond.notify_all()
            with self._cond:
                if self.partial:
                    line = _ANSI.sub("", self.partial)
                    self.lines.append((time.monotonic(), line))
                    out.write(line + "\n")
                    self.partial = ""
                self._cond.notify_all()

    def mark(self) -> int:
        """The index of the next line: expect from here to see only what comes after now."""
        with self._cond:
            return len(self.lines)

    def expect(self, pattern: str, timeout: float, since: int = 0, partial: bool = False) -> Seen:
        """Wait for the first line from index ``since`` matching ``pattern``
        (``partial``: the unfinished last line counts too, for prompts)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.lines):
                    at, line = self.lines[index]
                    m = rx.search(line)
                    if m:
                        return Seen(index, at - self.started, m)
                    index += 1
                if partial and self.partial:
                    m = rx.search(_ANSI.sub("", self.partial))
                    if m:
                        return Seen(len(self.lines), time.monotonic() - self.started, m)
                if self.returncode is not None and (self._reader is None or not self._reader.is_alive()):
                    raise ConsoleTimeout(f"QEMU exited ({self.returncode}) before {pattern!r} appeared")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConsoleTimeout(f"{pattern!r} did not appear within {timeout:.0f} s")
                self._cond.wait(min(left, 1.0))

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console, slowly enough for a 16550 UART."""
        assert self._proc is not None and self._proc.stdin is not None
        log.info("typing %r", text)
        for i in range(0, len(text), 16):
            self._proc.stdin.write(text[i:i + 16].encode())
            self._proc.stdin.flush()
            time.sleep(0.05)

    def text(self, since: int = 0, until: Optional[int] = None) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[since:until])

    def wait_exit(self, timeout: float) -> bool:
        """Whether QEMU ended by itself within ``timeout`` seconds."""
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if self._reader:
            self._reader.join(10)
