"""Never lose a dump: retention and make-room delete only what is provably
ours, complete or abandoned, and not being written; the kernel log never
blocks the vmcore.  Each case was measured losing a dump on the old main."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capture.config.options import Config
from capture.errors import KdumpError
from capture.save.dumpdir import MARKER
from capture.save.sequence import save
from capture.save.space import SpaceLimitReached
from conftest import REPO, require, require_program, sha256_of

HOST = "fixture-host"


def good_dump(root: Path, name: str, fixture_vmcore: Path) -> Path:
    """A complete dump of this host named ``name`` (the saver's own, renamed)."""
    made = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0), vmcore=str(fixture_vmcore),
                savedir=str(root))
    path = root / name
    (root / made.directory).rename(path)
    return path


def readme(d: Path) -> str:
    return (d / "README.txt").read_text()


def test_make_room_never_deletes_the_only_good_dump(small_fs, fixture_vmcore):
    fs = small_fs(40)
    good = good_dump(fs, "2026-01-01-00-00", fixture_vmcore)
    before = sha256_of(good / "vmcore")
    with pytest.raises(SpaceLimitReached):
        save(Config(dumpformat="lzo", dumplevel=1, free_disk_size=2, keep_old_dumps=1),
             vmcore=str(fixture_vmcore), savedir=str(fs))
    assert sha256_of(good / "vmcore") == before and "saved successfully" in readme(good)
    (new,) = [d for d in fs.iterdir() if d.name != good.name]
    assert readme(new).startswith("THIS DUMP IS INCOMPLETE.") and "INCOMPLETE: the target has" in readme(new)


def test_make_room_keeps_the_newest_good_dump_with_an_older_incomplete_one(small_fs, fixture_vmcore):
    fs = small_fs(48)
    broken = good_dump(fs, "2025-06-01-00-00", fixture_vmcore)
    (broken / "vmcore").rename(broken / "vmcore.incomplete")
    (broken / "README.txt").write_text("THIS DUMP IS INCOMPLETE.\n\nvmcore status: INCOMPLETE: cut\n")
    good = good_dump(fs, "2026-01-01-00-00", fixture_vmcore)
    with pytest.raises(SpaceLimitReached):
        save(Config(dumpformat="lzo", dumplevel=1, free_disk_size=2, keep_old_dumps=1),
             vmcore=str(fixture_vmcore), savedir=str(fs))
    assert "saved successfully" in readme(good) and (good / "vmcore").exists()


def test_a_dump_named_after_the_crash_is_never_the_one_deleted(small_fs, fixture_vmcore):
    """An old dump newer than the crash time must not make the saver delete its own new directory."""
    fs = small_fs(40)
    future = good_dump(fs, "2027-01-01-00-00", fixture_vmcore)
    with pytest.raises(SpaceLimitReached):
        save(Config(dumpformat="lzo", dumplevel=1, free_disk_size=2, keep_old_dumps=1),
             vmcore=str(fixture_vmcore), savedir=str(fs))
    assert "saved successfully" in readme(future)
    (new,) = [d for d in fs.iterdir() if d.name != future.name]
    assert "INCOMPLETE: the target has" in readme(new) and (new / MARKER).exists()


def test_concurrent_saves_do_not_delete_each_other(tmp_path, fixture_vmcore):
    """Three savers on one target with KDUMP_KEEP_OLD_DUMPS=-1: each one's
    retention leaves alone what the others are still writing."""
    target = tmp_path / "shared"
    conf = tmp_path / "kdump.conf"
    conf.write_text(f'KDUMP_SAVEDIR="{target}"\nKDUMP_DUMPFORMAT=lzo\nKDUMP_DUMPLEVEL=0\n'
                    'KDUMP_KEEP_OLD_DUMPS=-1\nKDUMP_FREE_DISK_SIZE=0\n')
    cmd = [sys.executable, "-m", "capture.cli", "save", "--config", str(conf), "--vmcore", str(fixture_vmcore)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert not [line for out in outputs for line in out.splitlines() if "cannot" in line]
    remaining = sorted(d for d in target.iterdir())
    assert remaining, "every dump was deleted"
    for d in remaining:
        assert "saved successfully" in readme(d)
        assert not [f for f in d.iterdir() if f.name.endswith(".incomplete")]


def test_retention_deletes_only_the_files_the_saver_wrote(tmp_path, fixture_vmcore, caplog):
    root = tmp_path / "crash"
    annotated = good_dump(root, "2025-01-01-00-00", fixture_vmcore)
    (annotated / "analysis-notes.txt").write_text("the admin's notes")
    copied = root / "2025-02-01-00-00"
    copied.mkdir()
    shutil.copy(annotated / MARKER, copied / MARKER)
    (copied / "mine.txt").write_text("not kdump-saver's")
    (copied / "vmcore-analysis").mkdir()
    save(Config(dumpformat="lzo", dumplevel=31, keep_old_dumps=-1, free_disk_size=0),
         vmcore=str(fixture_vmcore), savedir=str(root))
    assert sorted(p.name for p in annotated.iterdir()) == ["analysis-notes.txt"]
    assert (annotated / "analysis-notes.txt").read_text() == "the admin's notes"
    assert sorted(p.name for p in copied.iterdir()) == ["mine.txt", "vmcore-analysis"]
    assert "holds files kdump-saver did not write: analysis-notes.txt" in caplog.text
    newest = max(root.iterdir())
    assert "analysis-notes.txt" in readme(newest)  # the README says what was left


def test_a_dump_that_cannot_be_deleted_leaves_the_save_complete(tmp_path, fixture_vmcore):
    require_program("chattr")
    root = tmp_path / "crash"
    old = good_dump(root, "2025-01-01-00-00", fixture_vmcore)
    locked = subprocess.run(["chattr", "+i", str(old / "vmcore")], capture_output=True, text=True)
    require(locked.returncode == 0, f"chattr +i is not supported on {tmp_path}: {locked.stderr.strip()}")
    try:
        result = save(Config(dumpformat="lzo", dumplevel=31, keep_old_dumps=-1, free_disk_size=0),
                      vmcore=str(fixture_vmcore), savedir=str(root))
    finally:
        subprocess.run(["chattr", "-i", str(old / "vmcore")], check=False)
    new = root / result.directory
    assert "vmcore status: saved successfully" in readme(new)
    assert "could not be deleted" in readme(new)
    # still ours and whole (nothing else was deleted first), retried next time
    assert sorted(p.name for p in old.iterdir()) == [MARKER, "README.txt", "dmesg.txt", "vmcore"]


def fake_makedumpfile(tmp_path: Path, fail_dmesg_only: bool) -> Path:
    real = shutil.which("makedumpfile") or "/usr/sbin/makedumpfile"
    wrapper = tmp_path / "bin" / "makedumpfile"
    wrapper.parent.mkdir()
    body = ('case " $* " in *" --dump-dmesg "*) echo "makedumpfile: dump-dmesg failed" >&2; exit 1;; esac\n'
            f'exec {real} "$@"\n') if fail_dmesg_only else 'echo "makedumpfile: broken" >&2; exit 1\n'
    wrapper.write_text("#!/bin/sh\n" + body)
    wrapper.chmod(0o755)
    return wrapper.parent


def test_a_failed_kernel_log_extraction_does_not_sink_the_vmcore(tmp_path, fixture_vmcore, fixture_dmesg,
                                                                  reference_dumps, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_makedumpfile(tmp_path, True)}:{os.environ['PATH']}")
    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path / "crash"))
    d = tmp_path / "crash" / result.directory
    assert "vmcore status: saved successfully" in readme(d)
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))
    assert (d / "dmesg.txt").read_bytes() == fixture_dmesg.read_bytes()
    assert "read by kdump-saver from the vmcore" in readme(d)
    assert "sysrq triggered crash" in readme(d)  # the panic line still comes from the log


def test_an_unreadable_kernel_log_still_saves_the_vmcore(tmp_path, fixture_vmcore, monkeypatch):
    """makedumpfile cannot read the log and our reader finds no VMCOREINFO:
    the vmcore is saved anyway and the README says why dmesg.txt is missing."""
    vmcore = tmp_path / "vmcore"
    data = bytearray(fixture_vmcore.read_bytes())
    at = data.find(b"SYMBOL(prb)=")
    assert at > 0
    data[at:at + 11] = b"SYMBOL(xyz)"
    vmcore.write_bytes(bytes(data))
    monkeypatch.setenv("PATH", f"{fake_makedumpfile(tmp_path, True)}:{os.environ['PATH']}")
    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0), vmcore=str(vmcore),
                  savedir=str(tmp_path / "crash"))
    d = tmp_path / "crash" / result.directory
    assert "vmcore status: saved successfully" in readme(d)
    assert "no dmesg.txt" in readme(d) and not (d / "dmesg.txt").exists()
    assert (d / "vmcore").stat().st_size > 1 << 20
    assert json.loads((d / MARKER).read_text())["state"] == "complete"


def test_format_none_without_a_kernel_log_is_a_failure(tmp_path, fixture_vmcore, monkeypatch):
    vmcore = tmp_path / "vmcore"
    data = bytearray(fixture_vmcore.read_bytes())
    at = data.find(b"SYMBOL(prb)=")
    data[at:at + 11] = b"SYMBOL(xyz)"
    vmcore.write_bytes(bytes(data))
    monkeypatch.setenv("PATH", f"{fake_makedumpfile(tmp_path, True)}:{os.environ['PATH']}")
    with pytest.raises(KdumpError, match="only the kernel log"):
        save(Config(dumpformat="none", free_disk_size=0), vmcore=str(vmcore), savedir=str(tmp_path / "crash"))


def test_a_makedumpfile_that_always_fails_still_gives_a_complete_dump(tmp_path, fixture_vmcore, fixture_dmesg,
                                                                       reference_dumps, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_makedumpfile(tmp_path, False)}:{os.environ['PATH']}")
    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path / "crash"))
    d = tmp_path / "crash" / result.directory
    assert "vmcore status: saved successfully" in readme(d) and "collector: kdump-saver" in readme(d)
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))
    assert (d / "dmesg.txt").read_bytes() == fixture_dmesg.read_bytes()


def test_a_killed_makedumpfile_is_replaced_by_our_collector(tmp_path, fixture_vmcore, reference_dumps,
                                                            monkeypatch):
    """makedumpfile dies of SIGKILL in the middle of the stream: the vmcore is started again."""
    real = shutil.which("makedumpfile") or "/usr/sbin/makedumpfile"
    wrapper = tmp_path / "bin" / "makedumpfile"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n"
                       'case " $* " in *" -F "*) ' f'{real} "$@" | head -c 3000000; kill -9 $$;; esac\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    result = save(Config(dumpformat="lzo", dumplevel=31, free_disk_size=0, cpus=1), vmcore=str(fixture_vmcore),
                  savedir=str(tmp_path / "crash"))
    d = tmp_path / "crash" / result.directory
    assert "collector: kdump-saver" in readme(d) and "makedumpfile failed" in readme(d)
    assert sha256_of(d / "vmcore") == sha256_of(reference_dumps.direct("-l", 31))
