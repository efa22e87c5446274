"""KDUMP_FREE_DISK_SIZE on small real file systems (size-limited tmpfs)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from capture.config.options import Config
from capture.save.sequence import save
from capture.save.space import SpaceLimitReached
from conftest import sha256_of


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def test_dump_that_does_not_fit_stops_before_the_limit(small_fs, fixture_vmcore):
    fs = small_fs(16)
    with pytest.raises(SpaceLimitReached) as err:
        save(Config(dumpformat="lzo", free_disk_size=2), vmcore=str(fixture_vmcore), savedir=str(fs))
    assert "KDUMP_FREE_DISK_SIZE requires 2 MB" in str(err.value)
    assert free_mb(fs) >= 2
    (d,) = [p for p in fs.iterdir()]
    assert sorted(p.name for p in d.iterdir()) == [".kdump-saver", "README.txt", "dmesg.txt", "vmcore.incomplete"]
    readme = (d / "README.txt").read_text()
    assert readme.startswith("THIS DUMP IS INCOMPLETE.")
    assert "INCOMPLETE: the target has" in readme
    saved = int(readme.split("saved: ")[1].split(" bytes")[0])
    assert saved > 8 << 20  # it wrote what fitted before stopping


def test_no_room_at_all_is_refused_before_creating_anything(small_fs, fixture_vmcore):
    fs = small_fs(16)
    with pytest.raises(SpaceLimitReached):
        save(Config(dumpformat="lzo", free_disk_size=64), vmcore=str(fixture_vmcore), savedir=str(fs))
    assert list(fs.iterdir()) == []


def test_retention_makes_room_by_deleting_the_oldest_own_dump(small_fs, fixture_vmcore, reference_dumps):
    fs = small_fs(56)
    (fs / "unrelated").mkdir()
    (fs / "unrelated" / "keep").write_text("x")
    first = save(Config(dumpformat="lzo", free_disk_size=4), vmcore=str(fixture_vmcore), savedir=str(fs)).directory
    second = save(Config(dumpformat="lzo", free_disk_size=4), vmcore=str(fixture_vmcore), savedir=str(fs)).directory
    third = save(Config(dumpformat="lzo", free_disk_size=4, keep_old_dumps=1), vmcore=str(fixture_vmcore),
                 savedir=str(fs)).directory
    assert not (fs / first).exists()
    assert sha256_of(fs / second / "vmcore") == sha256_of(fs / third / "vmcore") \
        == sha256_of(reference_dumps.direct("-l", 31))
    assert (fs / "unrelated" / "keep").read_text() == "x"
    assert free_mb(fs) >= 4


def test_without_retention_old_dumps_are_never_deleted_for_room(small_fs, fixture_vmcore):
    fs = small_fs(56)
    first = save(Config(dumpformat="lzo", free_disk_size=4), vmcore=str(fixture_vmcore), savedir=str(fs)).directory
    second = save(Config(dumpformat="lzo", free_disk_size=4), vmcore=str(fixture_vmcore), savedir=str(fs)).directory
    with pytest.raises(SpaceLimitReached):
        save(Config(dumpformat="lzo", free_disk_size=4, keep_old_dumps=0), vmcore=str(fixture_vmcore),
             savedir=str(fs))
    assert (fs / first / "vmcore").exists() and (fs / second / "vmcore").exists()
    assert free_mb(fs) >= 4
