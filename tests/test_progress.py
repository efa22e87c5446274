"""Progress lines from makedumpfile's real stderr, reported at a calm pace."""
from __future__ import annotations

import logging
import re
import subprocess

from capture.save.progress import Progress, parse_progress


def test_parse_real_makedumpfile_progress(fixture_vmcore, makedumpfile):
    err = subprocess.run([makedumpfile, "-F", "-l", "-d", "31", str(fixture_vmcore)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).stderr.decode()
    segments = [s for s in re.split(r"[\r\n]", err) if s.strip()]
    parsed = [p for p in map(parse_progress, segments) if p]
    phases = {phase for phase, _, _ in parsed}
    assert "Copying data" in phases and "Excluding unnecessary pages" in phases
    assert all(0 <= pct <= 100 for _, pct, _ in parsed)
    assert any(pct == 100.0 for phase, pct, _ in parsed if phase == "Copying data")
    assert "makedumpfile Completed." in segments


def test_reports_are_rate_limited_and_phases_announced(caplog):
    now = [0.0]
    progress = Progress(interval=5.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="capture.save.progress")
    for i in range(600):  # a minute of progress lines, ten a second
        now[0] = i / 10
        progress.feed_line(f"Copying data                 : [{i / 6:5.1f} %] /  eta: {60 - i // 10}s")
        progress.add_bytes(1_000_000)
    reports = [r.getMessage() for r in caplog.records]
    assert 10 <= len(reports) <= 14
    assert reports[-1].startswith("progress: Copying data,")
    assert "MB/s" in reports[-1] and "ETA" in reports[-1]


def test_other_lines_are_kept_for_error_reports():
    progress = Progress()
    progress.feed_line("The kernel version is not supported.")
    progress.feed_line("Copying data : [ 10.0 %] | eta: 3s")
    progress.feed_line("makedumpfile Failed.")
    assert list(progress.messages) == ["The kernel version is not supported.", "makedumpfile Failed."]
